/* s3://bucket/key: the https:// URL to fetch and how to sign its requests (AWS Signature
 * Version 4, made by libcurl's CURLOPT_AWS_SIGV4), from the environment, the shared
 * credentials file and the config file as the AWS CLI reads them. Stateless: resolved once per open. */
#include "source/byte_source.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

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

/* The shared files' path: the variable's, else ~/.aws/NAME; false if neither. */
static bool aws_file(const char *var, const char *name, char *path, size_t size) {
  if (env(var)) {
    snprintf(path, size, "%s", env(var));
    return true;
  }
  if (!env("HOME"))
    return false;
  snprintf(path, size, "%s/.aws/%s", env("HOME"), name);
  return true;
}

/* The settings of one profile in an AWS INI file, as the AWS CLI reads them: in the
 * credentials file the section is [NAME]; in the config file it is [profile NAME], or
 * [default] for "default" ([profile default] too). Keys are matched case-insensitively, a
 * later line replacing an earlier one; nested sub-sections (indented lines after "s3 =") are
 * not settings of the profile. */
struct profile_values {
  char id[512], secret[512], token[4096], region[128], endpoint[1024];
};

static void read_profile(const char *file, bool config, const char *profile,
                         struct profile_values *v) {
  FILE *f = fopen(file, "r");
  if (!f)
    return;
  char line[8192];
  bool in_profile = false, nested = false;
  while (fgets(line, sizeof line, f)) {
    bool indented = line[0] == ' ' || line[0] == '\t';
    char *l = trimmed(line);
    if (!l[0] || l[0] == '#' || l[0] == ';')
      continue;
    if (l[0] == '[') {
      char *end = strchr(l, ']');
      if (end)
        *end = '\0';
      char *name = trimmed(l + 1);
      if (config && strncmp(name, "profile", 7) == 0 && isspace((unsigned char)name[7]))
        in_profile = strcmp(trimmed(name + 8), profile) == 0;
      else
        in_profile = (!config || strcmp(name, "default") == 0) && strcmp(name, profile) == 0;
      nested = false;
      continue;
    }
    char *eq = strchr(l, '=');
    if (!in_profile || !eq)
      continue;
    if (indented && nested) /* a line of a sub-section (s3 = ...) */
      continue;
    *eq = '\0';
    const char *k = trimmed(l), *val = trimmed(eq + 1);
    nested = !val[0];
    char *dst = strcasecmp(k, "aws_access_key_id") == 0       ? v->id
                : strcasecmp(k, "aws_secret_access_key") == 0 ? v->secret
                : strcasecmp(k, "aws_session_token") == 0     ? v->token
                : !config                                     ? NULL
                : strcasecmp(k, "region") == 0                ? v->region
                : strcasecmp(k, "endpoint_url") == 0          ? v->endpoint
                                                              : NULL;
    size_t size = dst == v->token ? sizeof v->token
                  : dst == v->region ? sizeof v->region
                  : dst == v->endpoint ? sizeof v->endpoint
                                       : sizeof v->id;
    if (dst)
      snprintf(dst, size, "%s", val);
  }
  fclose(f);
}

/* The profiles read (secrets among them) wiped and freed. */
static void wipe_free(struct profile_values *v) {
  memset(v, 0, 2 * sizeof *v);
  tsr_free(v);
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
  /* The AWS CLI's order: the environment, then the profile's credentials in the shared
   * credentials file, then the profile in the config file (its region and endpoint too). */
  const char *profile = env("AWS_PROFILE") ? env("AWS_PROFILE") : env("AWS_DEFAULT_PROFILE");
  if (!profile)
    profile = "default";
  struct profile_values *cred = tsr_calloc(2, sizeof *cred), *conf = cred + 1;
  if (!cred)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  char path[4096];
  if (aws_file("AWS_CONFIG_FILE", "config", path, sizeof path))
    read_profile(path, true, profile, conf);
  const char *region = env("AWS_REGION")           ? env("AWS_REGION")
                       : env("AWS_DEFAULT_REGION") ? env("AWS_DEFAULT_REGION")
                       : conf->region[0]           ? conf->region
                                                   : "us-east-1";
  const char *endpoint = env("AWS_ENDPOINT_URL_S3") ? env("AWS_ENDPOINT_URL_S3")
                         : env("AWS_ENDPOINT_URL")  ? env("AWS_ENDPOINT_URL")
                         : conf->endpoint[0]        ? conf->endpoint
                                                    : NULL;
  char *key = encode_key(slash + 1);
  size_t n = strlen(s3_url) * 3 + (endpoint ? strlen(endpoint) : 0) + strlen(region) + 64;
  s3->url = tsr_malloc(n);
  s3->shown = tsr_strdup(s3_url);
  s3->sha = tsr_strdup("x-amz-content-sha256: " EMPTY_SHA256);
  if (!key || !s3->url || !s3->shown || !s3->sha) {
    tsr_free(key);
    tsr_s3_free(s3);
    wipe_free(cred);
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  }
  s3->shown[strcspn(s3->shown, "?#")] = '\0';
  if (endpoint) /* path-style: S3-compatible stores, and buckets whose names hold dots */
    snprintf(s3->url, n, "%s%s%.*s/%s", endpoint, endpoint[strlen(endpoint) - 1] == '/' ? "" : "/",
             (int)blen, bucket, key);
  else
    snprintf(s3->url, n, "https://%.*s.s3.%s.amazonaws.com/%s", (int)blen, bucket, region, key);
  tsr_free(key);
  const char *id = "", *secret = "", *token = "";
  if (env("AWS_ACCESS_KEY_ID") && env("AWS_SECRET_ACCESS_KEY")) {
    id = env("AWS_ACCESS_KEY_ID");
    secret = env("AWS_SECRET_ACCESS_KEY");
    token = env("AWS_SESSION_TOKEN") ? env("AWS_SESSION_TOKEN") : "";
  } else {
    if (aws_file("AWS_SHARED_CREDENTIALS_FILE", "credentials", path, sizeof path))
      read_profile(path, false, profile, cred);
    const struct profile_values *from = cred->id[0] && cred->secret[0]   ? cred
                                        : conf->id[0] && conf->secret[0] ? conf
                                                                         : NULL;
    if (from) {
      id = from->id;
      secret = from->secret;
      token = from->token;
    }
  }
  auth->shown = s3->shown;
  auth->headers[0] = s3->sha;
  if (id[0] && secret[0]) {
    size_t m = strlen(region) + 32;
    s3->sigv4 = tsr_malloc(m);
    s3->userpwd = tsr_malloc(strlen(id) + strlen(secret) + 2);
    s3->token = token[0] ? tsr_malloc(strlen(token) + 32) : NULL;
    if (!s3->sigv4 || !s3->userpwd || (token[0] && !s3->token)) {
      tsr_s3_free(s3);
      wipe_free(cred);
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
  wipe_free(cred);
  return TESSERA_OK;
}
