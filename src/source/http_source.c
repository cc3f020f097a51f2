/* The HTTP(S) byte source: every read is a range request made with libcurl.
 *
 * Each thread keeps one curl easy handle (thread-specific data), reused for every request it
 * makes to any slide, so its connections (and TLS sessions) are reused; a process forked while
 * holding one leaves it to the parent and makes its own. The first request, at open, learns the
 * object's size (Content-Range), ETag and Last-Modified, which become the source's identity;
 * every later request carries If-Match (or If-Unmodified-Since) so that an object replaced
 * while open fails with 412 instead of mixing two objects' bytes, and each response's
 * Content-Range total and ETag are compared again for servers that ignore those headers.
 *
 * The source's fields are written at open and only read afterwards, except the count of
 * requests in flight (under `lock`, with `room` signalled when one ends) and the counters
 * (atomics). */
#include "source/byte_source.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "alloc.h"
#include "error.h"

#ifdef TSR_HAVE_CURL

#include <curl/curl.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

/* Not a device number a file can have, nor the callback sources' kind. */
#define HTTP_IDENTITY_KIND 0xfffffffffffff002ull

struct http_source {
  struct tsr_byte_source pub; /* first: the interface leads back here */
  char *url;
  char *shown; /* the URL for messages: no user:password@, no ?query (it may be a signature) */
  uint64_t size;
  char etag[256];
  char last_modified[128];
  struct curl_slist *conditions; /* If-Match or If-Unmodified-Since, for every request after
                                    open, with the signing headers */
  struct curl_slist *signing;    /* the signing headers alone (S3's), for the first request */
  char *sigv4;                   /* CURLOPT_AWS_SIGV4's provider string, or NULL */
  char *userpwd;                 /* the signing key id and secret, or NULL */
  struct tsr_file_id id;
  char *ca_bundle; /* TESSERA_CA_BUNDLE at open: certificates to trust instead of the system's */
  long timeout_ms;
  int retries;
  int max_in_flight;
  pthread_mutex_t lock;
  pthread_cond_t room;
  int in_flight; /* under lock */
  struct tsr_fork_guard guard;
};

/* ---- one handle per thread ------------------------------------------------------------- */

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_status = CURLE_FAILED_INIT;
static pthread_key_t handle_key;

struct thread_handle {
  CURL *curl;
  pid_t pid; /* the process that made it: a forked child shares its sockets with the parent */
};

static void free_handle(void *p) {
  struct thread_handle *t = p;
  if (t->pid == getpid())
    curl_easy_cleanup(t->curl);
  free(t);
}

static void global_init(void) {
  global_status = curl_global_init(CURL_GLOBAL_DEFAULT);
  if (pthread_key_create(&handle_key, free_handle) != 0)
    global_status = CURLE_FAILED_INIT;
}

/* The calling thread's handle, reset to no options (its connections kept), or NULL. */
static CURL *thread_curl(void) {
  struct thread_handle *t = pthread_getspecific(handle_key);
  if (t && t->pid != getpid()) {
    free(t); /* the parent's: its connections are not ours to use or close */
    t = NULL;
    pthread_setspecific(handle_key, NULL);
  }
  if (!t) {
    t = malloc(sizeof *t);
    if (!t || !(t->curl = curl_easy_init())) {
      free(t);
      return NULL;
    }
    t->pid = getpid();
    pthread_setspecific(handle_key, t);
  } else {
    curl_easy_reset(t->curl);
  }
  return t->curl;
}

/* ---- one request ------------------------------------------------------------------------ */

struct transfer {
  uint8_t *buf;
  size_t cap, got;
  bool too_much;  /* the server sent more than the range asked for */
  long status;    /* of the latest status line */
  size_t ignored; /* bytes of a body other than 206's, thrown away but for their start: */
  char error_body[256];
  char etag[256], last_modified[128];
  bool have_range, total_known;
  uint64_t first, last, total;
};

static void copy_value(char *dst, size_t size, const char *v, size_t n) {
  while (n && (v[n - 1] == '\r' || v[n - 1] == '\n' || v[n - 1] == ' '))
    n--;
  if (n >= size)
    n = size - 1;
  memcpy(dst, v, n);
  dst[n] = '\0';
}

static size_t on_header(char *line, size_t size, size_t n, void *user) {
  struct transfer *t = user;
  size_t len = size * n;
  if (len >= 5 && strncmp(line, "HTTP/", 5) == 0) {
    /* A new response (after a redirect, or a 100): forget the previous one's headers. */
    t->etag[0] = t->last_modified[0] = '\0';
    t->have_range = t->total_known = false;
    const char *sp = memchr(line, ' ', len);
    t->status = sp ? strtol(sp + 1, NULL, 10) : 0;
    return len;
  }
  const char *colon = memchr(line, ':', len);
  if (!colon)
    return len;
  size_t name = (size_t)(colon - line);
  const char *v = colon + 1;
  while (v < line + len && *v == ' ')
    v++;
  size_t vlen = (size_t)(line + len - v);
  if (name == 4 && strncasecmp(line, "etag", 4) == 0)
    copy_value(t->etag, sizeof t->etag, v, vlen);
  else if (name == 13 && strncasecmp(line, "last-modified", 13) == 0)
    copy_value(t->last_modified, sizeof t->last_modified, v, vlen);
  else if (name == 13 && strncasecmp(line, "content-range", 13) == 0) {
    char text[128];
    copy_value(text, sizeof text, v, vlen);
    unsigned long long a, b;
    char total[32];
    if (sscanf(text, "bytes %llu-%llu/%31s", &a, &b, total) == 3) {
      t->have_range = true;
      t->first = a;
      t->last = b;
    } else if (sscanf(text, "bytes */%31s", total) != 1) {
      return len;
    }
    char *end;
    errno = 0;
    unsigned long long tot = strtoull(total, &end, 10);
    t->total_known = total[0] != '*' && !errno && !*end;
    t->total = tot;
  }
  return len;
}

static size_t on_body(char *data, size_t size, size_t n, void *user) {
  struct transfer *t = user;
  size_t len = size * n;
  if (t->status != 206) {
    if (t->status == 200)
      return 0; /* the whole object is coming: stop it at once */
    /* An error page: its start may say why (S3's <Code>); read a little of it so that the
     * connection stays usable. */
    size_t have = strlen(t->error_body), room = sizeof t->error_body - 1 - have;
    memcpy(t->error_body + have, data, len < room ? len : room);
    t->error_body[have + (len < room ? len : room)] = '\0';
    t->ignored += len;
    return t->ignored > 65536 ? 0 : len;
  }
  if (len > t->cap - t->got) {
    t->too_much = true;
    return 0;
  }
  memcpy(t->buf + t->got, data, len);
  t->got += len;
  return len;
}

enum outcome { DONE, RETRY, FAIL };

/* What an error page says, for the message: S3's <Code>, or a first line of plain text made of
 * printable characters; "" if neither. */
static void error_reason(const char *body, char *out, size_t size) {
  out[0] = '\0';
  const char *code = strstr(body, "<Code>"), *end = code ? strstr(code, "</Code>") : NULL;
  size_t n;
  if (code && end) {
    code += 6;
    n = (size_t)(end - code);
  } else if (body[0] != '<') {
    code = body;
    n = strcspn(body, "\r\n");
  } else {
    return;
  }
  if (n == 0 || n > 100)
    return;
  for (size_t i = 0; i < n; i++)
    if (code[i] < 0x20 || code[i] > 0x7e)
      return;
  snprintf(out, size, ": %.*s", (int)n, code);
}

static const char *status_text(long status) {
  switch (status) {
  case 400: return " Bad Request";
  case 401: return " Unauthorized (credentials needed)";
  case 403: return " Forbidden (access denied)";
  case 404: return " Not Found";
  case 410: return " Gone";
  case 429: return " Too Many Requests";
  case 500: return " Internal Server Error";
  case 502: return " Bad Gateway";
  case 503: return " Service Unavailable";
  case 504: return " Gateway Timeout";
  default: return "";
  }
}

static bool transient(CURLcode rc) {
  switch (rc) {
  case CURLE_OPERATION_TIMEDOUT:
  case CURLE_COULDNT_CONNECT:
  case CURLE_SEND_ERROR:
  case CURLE_RECV_ERROR:
  case CURLE_GOT_NOTHING:
  case CURLE_PARTIAL_FILE:
  case CURLE_HTTP2:
  case CURLE_HTTP2_STREAM:
  case CURLE_SSL_CONNECT_ERROR: return true;
  default: return false;
  }
}

/* One attempt at bytes [offset, offset + length) (open: at the object's first bytes, its size
 * not yet known). Sets the thread's message (without the URL) unless DONE. */
static enum outcome attempt(const struct http_source *h, bool opening, uint64_t offset,
                            size_t length, struct transfer *t, tessera_status *st) {
  CURL *c = thread_curl();
  if (!c) {
    *st = tsr_error(TESSERA_E_NOMEM, "cannot make a libcurl handle");
    return FAIL;
  }
  char range[64], errbuf[CURL_ERROR_SIZE] = "";
  snprintf(range, sizeof range, "%llu-%llu", (unsigned long long)offset,
           (unsigned long long)(offset + length - 1));
  curl_easy_setopt(c, CURLOPT_URL, h->url);
  curl_easy_setopt(c, CURLOPT_RANGE, range);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, h->timeout_ms);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, h->timeout_ms < 10000 ? h->timeout_ms : 10000L);
  curl_easy_setopt(c, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(c, CURLOPT_MAXREDIRS, 5L);
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_USERAGENT, "tessera/" TESSERA_VERSION_STRING);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, t);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, t);
  if (h->ca_bundle)
    curl_easy_setopt(c, CURLOPT_CAINFO, h->ca_bundle);
  if (h->sigv4) {
    curl_easy_setopt(c, CURLOPT_AWS_SIGV4, h->sigv4);
    curl_easy_setopt(c, CURLOPT_USERPWD, h->userpwd);
  }
  if (!opening && h->conditions)
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h->conditions);
  else if (h->signing)
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h->signing);
  t->got = t->ignored = 0;
  t->error_body[0] = '\0';
  t->too_much = false;
  t->status = 0;
  CURLcode rc = curl_easy_perform(c);
  long status = 0;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  if (status)
    t->status = status;
  if (t->status == 200 && (rc == CURLE_OK || rc == CURLE_WRITE_ERROR)) {
    *st = tsr_error(TESSERA_E_UNSUPPORTED,
                    "the server ignores Range requests (it answered 200 with the whole object, "
                    "not 206 with the bytes asked for): remote slides are read by ranges");
    return FAIL;
  }
  if (rc != CURLE_OK && !(rc == CURLE_WRITE_ERROR && (t->too_much || t->status != 206))) {
    *st = tsr_error(TESSERA_E_IO, "%s", errbuf[0] ? errbuf : curl_easy_strerror(rc));
    return transient(rc) ? RETRY : FAIL;
  }
  if (t->too_much) {
    *st = tsr_error(TESSERA_E_IO, "the server sent more bytes than the range %s asked for", range);
    return FAIL;
  }
  if (t->status == 412) {
    *st = tsr_error(TESSERA_E_IO,
                    "the object changed since the slide was opened (HTTP 412: "
                    "it no longer has ETag %s)",
                    h->etag[0] ? h->etag : h->last_modified);
    return FAIL;
  }
  if (t->status == 416 && opening && t->total_known && t->total == 0) {
    *st = tsr_error(TESSERA_E_FORMAT, "the object is empty (0 bytes)");
    return FAIL;
  }
  if (t->status != 206) {
    char why[128];
    error_reason(t->error_body, why, sizeof why);
    *st = tsr_error(TESSERA_E_IO, "HTTP %ld%s%s", t->status, status_text(t->status), why);
    return t->status >= 500 || t->status == 429 || t->status == 408 ? RETRY : FAIL;
  }
  if (!t->have_range || t->first != offset || (!opening && !t->total_known)) {
    *st = tsr_error(TESSERA_E_IO,
                    "the server answered the range %s with another (Content-Range "
                    "%llu-%llu)",
                    range, (unsigned long long)t->first, (unsigned long long)t->last);
    return FAIL;
  }
  if (!opening && (t->total != h->size || (h->etag[0] && t->etag[0] && strcmp(h->etag, t->etag)) ||
                   (!h->etag[0] && h->last_modified[0] && t->last_modified[0] &&
                    strcmp(h->last_modified, t->last_modified)))) {
    *st = tsr_error(TESSERA_E_IO,
                    "the object changed since the slide was opened (now %llu bytes%s%s)",
                    (unsigned long long)t->total, t->etag[0] ? ", ETag " : "", t->etag);
    return FAIL;
  }
  uint64_t want = t->last - t->first + 1;
  if (t->got != want || want > length) {
    *st = tsr_error(TESSERA_E_IO, "truncated body: %zu of the %llu bytes of range %s", t->got,
                    (unsigned long long)want, range);
    return RETRY;
  }
  return DONE;
}

static void backoff(int attempt_number) {
  static _Thread_local unsigned seed;
  if (!seed)
    seed = (unsigned)time(NULL) ^ (unsigned)(uintptr_t)&seed;
  long ms = 100L << (attempt_number < 5 ? attempt_number : 5);
  if (ms > 2000)
    ms = 2000;
  ms = ms / 2 + rand_r(&seed) % (ms / 2 + 1);
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
    ;
}

/* Fetches [offset, offset + length) with retries, at most max_in_flight at once. */
static tessera_status fetch(struct http_source *h, bool opening, uint64_t offset, size_t length,
                            struct transfer *t) {
  tessera_status st = TESSERA_OK;
  enum outcome out = FAIL;
  int tries = 0;
  for (; tries <= h->retries; tries++) {
    if (tries) {
      tsr_count(&h->pub.counters.retries, 1);
      backoff(tries - 1);
    }
    pthread_mutex_lock(&h->lock);
    while (h->in_flight >= h->max_in_flight)
      pthread_cond_wait(&h->room, &h->lock);
    h->in_flight++;
    pthread_mutex_unlock(&h->lock);
    out = attempt(h, opening, offset, length, t, &st);
    pthread_mutex_lock(&h->lock);
    h->in_flight--;
    pthread_cond_signal(&h->room);
    pthread_mutex_unlock(&h->lock);
    tsr_count(&h->pub.counters.requests, 1);
    tsr_count(&h->pub.counters.bytes, t->got);
    if (out != RETRY)
      break;
  }
  if (out == DONE)
    return TESSERA_OK;
  if (out == RETRY)
    return tsr_source_failed(
        tsr_error_prefix(TESSERA_E_IO, "%s: %d attempts failed; the last: ", h->shown, tries));
  return tsr_source_failed(tsr_error_prefix(st, "%s: ", h->shown));
}

/* In a forked child: the parent's requests in flight are not this process's; the condition
 * variable may have had the parent's waiters. */
static void http_forked(void *arg) {
  struct http_source *h = arg;
  h->in_flight = 0;
  pthread_cond_init(&h->room, NULL);
}

static tessera_status http_read_at(const struct tsr_byte_source *src, uint64_t offset,
                                   size_t length, void *buffer, size_t *got) {
  struct http_source *h = (struct http_source *)src;
  *got = 0;
  if (offset >= h->size || length == 0)
    return TESSERA_OK;
  if (length > h->size - offset)
    length = (size_t)(h->size - offset);
  struct transfer t = {.buf = buffer, .cap = length};
  tessera_status st = fetch(h, false, offset, length, &t);
  if (st == TESSERA_OK)
    *got = t.got;
  return st;
}

static uint64_t http_size(const struct tsr_byte_source *src) {
  return ((const struct http_source *)src)->size;
}

static void http_identity(const struct tsr_byte_source *src, struct tsr_file_id *id) {
  *id = ((const struct http_source *)src)->id;
}

static void http_close(struct tsr_byte_source *src) {
  struct http_source *h = (struct http_source *)src;
  if (h->guard.lock)
    tsr_fork_guard_remove(&h->guard);
  curl_slist_free_all(h->conditions);
  curl_slist_free_all(h->signing);
  if (h->userpwd) /* a secret: not left in freed memory */
    memset(h->userpwd, 0, strlen(h->userpwd));
  tsr_free(h->userpwd);
  tsr_free(h->sigv4);
  pthread_mutex_destroy(&h->lock);
  pthread_cond_destroy(&h->room);
  tsr_free(h->url);
  tsr_free(h->shown);
  tsr_free(h->ca_bundle);
  tsr_free(h);
}

static const struct tsr_byte_source_ops http_ops = {http_read_at, http_size, http_identity,
                                                    http_close};

/* url without user:password@ and without ?query or #fragment. */
static char *shown_url(const char *url) {
  char *s = tsr_strdup(url);
  if (!s)
    return NULL;
  s[strcspn(s, "?#")] = '\0';
  char *host = strstr(s, "://");
  if (host) {
    host += 3;
    char *at = strchr(host, '@'), *slash = strchr(host, '/');
    if (at && (!slash || at < slash))
      memmove(host, at + 1, strlen(at + 1) + 1);
  }
  return s;
}

static tessera_status set_identity(struct http_source *h) {
  /* The identity is what the object is: without ETag or Last-Modified nothing says that, so
   * the key is made unique to this open (no tile is shared with another open of the URL). */
  static atomic_uint_fast64_t opens;
  char text[4096];
  int n = snprintf(text, sizeof text, "%s\n%s\n%s", h->url, h->etag, h->last_modified);
  if (!h->etag[0] && !h->last_modified[0] && n >= 0 && (size_t)n < sizeof text) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(text + n, sizeof text - (size_t)n, "\n%ld:%llu:%lld.%ld", (long)getpid(),
             (unsigned long long)atomic_fetch_add(&opens, 1), (long long)ts.tv_sec, ts.tv_nsec);
  }
  tsr_identity_from_text(HTTP_IDENTITY_KIND, text, h->size, &h->id);
  char header[300];
  if (h->etag[0] && strncmp(h->etag, "W/", 2) != 0)
    snprintf(header, sizeof header, "If-Match: %s", h->etag);
  else if (h->last_modified[0])
    snprintf(header, sizeof header, "If-Unmodified-Since: %s", h->last_modified);
  else
    header[0] = '\0';
  for (struct curl_slist *l = h->signing; l; l = l->next)
    if (!(h->conditions = curl_slist_append(h->conditions, l->data)))
      return tsr_error(TESSERA_E_NOMEM, "out of memory");
  if (header[0] && !(h->conditions = curl_slist_append(h->conditions, header)))
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  return TESSERA_OK;
}

tessera_status tsr_http_source_open(const char *url, const struct tsr_http_auth *auth,
                                    const tessera_open_options *o, size_t head_bytes,
                                    struct tsr_byte_source **out, uint8_t **head,
                                    size_t *head_len) {
  *out = NULL;
  *head = NULL;
  *head_len = 0;
  pthread_once(&global_once, global_init);
  if (global_status != CURLE_OK)
    return tsr_error(TESSERA_E_IO, "%s: libcurl cannot start: %s", url,
                     curl_easy_strerror(global_status));
  struct http_source *h = tsr_calloc(1, sizeof *h);
  uint8_t *buf = tsr_malloc(head_bytes);
  if (!h || !buf) {
    tsr_free(h);
    tsr_free(buf);
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  }
  h->pub.ops = &http_ops;
  pthread_mutex_init(&h->lock, NULL);
  pthread_cond_init(&h->room, NULL);
  h->guard = (struct tsr_fork_guard){.lock = &h->lock, .child = http_forked, .arg = h};
  tsr_fork_guard_add(&h->guard);
  h->timeout_ms = o->remote_timeout_ms;
  h->retries = o->remote_retries;
  h->max_in_flight = o->remote_requests;
  tessera_status st = TESSERA_OK;
  h->url = tsr_strdup(url);
  h->shown = auth && auth->shown ? tsr_strdup(auth->shown) : shown_url(url);
  if (auth && auth->sigv4 &&
      (!(h->sigv4 = tsr_strdup(auth->sigv4)) || !(h->userpwd = tsr_strdup(auth->userpwd))))
    st = tsr_error(TESSERA_E_NOMEM, "out of memory");
  for (size_t i = 0; auth && i < 2 && st == TESSERA_OK; i++)
    if (auth->headers[i] && !(h->signing = curl_slist_append(h->signing, auth->headers[i])))
      st = tsr_error(TESSERA_E_NOMEM, "out of memory");
  const char *ca = getenv("TESSERA_CA_BUNDLE");
  if (ca && ca[0] && !(h->ca_bundle = tsr_strdup(ca)))
    st = tsr_error(TESSERA_E_NOMEM, "out of memory");
  if (!h->url || !h->shown)
    st = tsr_error(TESSERA_E_NOMEM, "out of memory");
  struct transfer t = {.buf = buf, .cap = head_bytes};
  if (st == TESSERA_OK && (st = fetch(h, true, 0, head_bytes, &t)) == TESSERA_OK) {
    if (!t.total_known)
      st = tsr_error(TESSERA_E_IO, "%s: the server did not say the object's size", h->shown);
    else if (t.got < head_bytes && t.got != t.total)
      st = tsr_error(TESSERA_E_IO, "%s: truncated body: %zu bytes of the first %zu", h->shown,
                     t.got, head_bytes);
  }
  if (st == TESSERA_OK) {
    h->size = t.total;
    memcpy(h->etag, t.etag, sizeof h->etag);
    memcpy(h->last_modified, t.last_modified, sizeof h->last_modified);
    st = set_identity(h);
  }
  if (st != TESSERA_OK) {
    tsr_free(buf);
    http_close(&h->pub);
    return st;
  }
  *out = &h->pub;
  *head = buf;
  *head_len = t.got;
  return TESSERA_OK;
}

#else /* no libcurl */

tessera_status tsr_http_source_open(const char *url, const struct tsr_http_auth *auth,
                                    const tessera_open_options *options, size_t head_bytes,
                                    struct tsr_byte_source **out, uint8_t **head,
                                    size_t *head_len) {
  (void)options, (void)head_bytes;
  if (auth && auth->shown)
    url = auth->shown;
  *out = NULL;
  *head = NULL;
  *head_len = 0;
  return tsr_error(TESSERA_E_UNSUPPORTED,
                   "%s: this build of tessera has no HTTP support (it was built without libcurl)",
                   url);
}

#endif
