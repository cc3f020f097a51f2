/* s3://bucket/key: the https:// URL to fetch and how to sign its requests (AWS Signature
 * Version 4, made by libcurl's CURLOPT_AWS_SIGV4), from the environment and the shared
 * credentials file as the AWS tools read them. Stateless: resolved once per open. */
#include "source/byte_source.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "error.h"

/* The SHA-256 of no bytes: the payload hash of a GET. */
#define EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

static const char *env(const char *name) {
  const char *v = getenv(name);
  return v && v[0] ? v : NULL;
}

/* text with every byte but the unreserved ones and '/' percent-encoded (S3's object keys). */
static char *encode_key(const char *text) {
  char *out = tsr_malloc(strlen(text) * 3 + 1), *o = out;
  if (!out)
    return NULL;
  for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
    if (isalnum(*p) || strchr("-._~/", *p))
      *o++ = (char)*p;
    else
      o += sprintf(o, "%%%02X", *p);
  }
  *o = '\0';
  return out;
}

static char *trimmed(char *s) {
  while (isspace((unsigned char)*s))
    s++;
  size_t n = strlen(s);
  while (n && isspace((unsigned char)s[n - 1]))
    s[--n] = '\0';
  return s;
}

/* The key id, secret and token of `profile` in the shared credentials file, if it has one. */
static void read_credentials_file(const char *profile, char *id, char *secret, char *token,
                                  size_t size) {
  char path[4096];
  const char *file = env("AWS_SHARED_CREDENTIALS_FILE");
  if (!file) {
    const char *home = env("HOME");
    if (!home)
      return;
    snprintf(path, sizeof path, "%s/.aws/credentials", home);
    file = path;
  }
  FILE *f = fopen(file, "r");
  if (!f)
    return;
  char line[4096];
  bool in_profile = false;
  while (fgets(line, sizeof line, f)) {
    char *l = trimmed(line);
    if (l[0] == '[') {
      char *end = strchr(l, ']');
      if (end)
        *end = '\0';
      in_profile = strcmp(trimmed(l + 1), profile) == 0;
      continue;
    }
    char *eq = strchr(l, '=');
    if (!in_profile || !eq || l[0] == '#' || l[0] == ';')
      continue;
    *eq = '\0';
    const char *k = trimmed(l), *v = trimmed(eq + 1);
    char *dst = strcmp(k, "aws_access_key_id") == 0       ? id
                : strcmp(k, "aws_secret_access_key") == 0 ? secret
                : strcmp(k, "aws_session_token") == 0     ? token
                                                          : NULL;
    if (dst)
      snprintf(dst, size, "%s", v);
  }
  fclose(f);
}

void tsr_s3_free(struct tsr_s3 *s3) {
  if (s3->userpwd) /* a secret: not left in freed memory */
    memset(s3->userpwd, 0, strlen(s3->userpwd));
  if (s3->token)
    memset(s3->token, 0, strlen(s3->token));
  tsr_free(s3->url);
  tsr_free(s3->shown);
  tsr_free(s3->sigv4);
  tsr_free(s3->userpwd);
  tsr_free(s3->token);
  tsr_free(s3->sha);
  *s3 = (struct tsr_s3){0};
}

tessera_status tsr_s3_resolve(const char *s3_url, struct tsr_s3 *s3, struct tsr_http_auth *auth) {
  *s3 = (struct tsr_s3){0};
  *auth = (struct tsr_http_auth){0};
  const char *bucket = s3_url + 5, *slash = strchr(bucket, '/');
  if (!slash || slash == bucket || !slash[1])
    return tsr_error(TESSERA_E_ARGUMENT, "%s: an S3 URL is s3://BUCKET/KEY", s3_url);
  size_t blen = (size_t)(slash - bucket);
  const char *region = env("AWS_REGION") ? env("AWS_REGION") : env("AWS_DEFAULT_REGION");
  if (!region)
    region = "us-east-1";
  const char *endpoint =
      env("AWS_ENDPOINT_URL_S3") ? env("AWS_ENDPOINT_URL_S3") : env("AWS_ENDPOINT_URL");
  char *key = encode_key(slash + 1);
  size_t n = strlen(s3_url) * 3 + (endpoint ? strlen(endpoint) : 0) + strlen(region) + 64;
  s3->url = tsr_malloc(n);
  s3->shown = tsr_strdup(s3_url);
  s3->sha = tsr_strdup("x-amz-content-sha256: " EMPTY_SHA256);
  if (!key || !s3->url || !s3->shown || !s3->sha) {
    tsr_free(key);
    tsr_s3_free(s3);
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  }
  s3->shown[strcspn(s3->shown, "?#")] = '\0';
  if (endpoint) /* path-style: S3-compatible stores, and buckets whose names hold dots */
    snprintf(s3->url, n, "%s%s%.*s/%s", endpoint, endpoint[strlen(endpoint) - 1] == '/' ? "" : "/",
             (int)blen, bucket, key);
  else
    snprintf(s3->url, n, "https://%.*s.s3.%s.amazonaws.com/%s", (int)blen, bucket, region, key);
  tsr_free(key);
  char id[512] = "", secret[512] = "", token[4096] = "";
  if (env("AWS_ACCESS_KEY_ID") && env("AWS_SECRET_ACCESS_KEY")) {
    snprintf(id, sizeof id, "%s", env("AWS_ACCESS_KEY_ID"));
    snprintf(secret, sizeof secret, "%s", env("AWS_SECRET_ACCESS_KEY"));
    if (env("AWS_SESSION_TOKEN"))
      snprintf(token, sizeof token, "%s", env("AWS_SESSION_TOKEN"));
  } else {
    read_credentials_file(env("AWS_PROFILE") ? env("AWS_PROFILE") : "default", id, secret, token,
                          sizeof id);
  }
  auth->shown = s3->shown;
  auth->headers[0] = s3->sha;
  if (id[0] && secret[0]) {
    size_t m = strlen(region) + 32;
    s3->sigv4 = tsr_malloc(m);
    s3->userpwd = tsr_malloc(strlen(id) + strlen(secret) + 2);
    s3->token = token[0] ? tsr_malloc(strlen(token) + 32) : NULL;
    if (!s3->sigv4 || !s3->userpwd || (token[0] && !s3->token)) {
      memset(secret, 0, sizeof secret);
      tsr_s3_free(s3);
      return tsr_error(TESSERA_E_NOMEM, "out of memory");
    }
    snprintf(s3->sigv4, m, "aws:amz:%s:s3", region);
    sprintf(s3->userpwd, "%s:%s", id, secret);
    if (token[0])
      sprintf(s3->token, "x-amz-security-token: %s", token);
    auth->sigv4 = s3->sigv4;
    auth->userpwd = s3->userpwd;
    auth->headers[1] = s3->token;
  }
  memset(secret, 0, sizeof secret);
  memset(token, 0, sizeof token);
  return TESSERA_OK;
}
