/* A URL's byte source: the protocol's source under a block cache, with the remote_* options
 * resolved (the caller's, else the environment's, else the defaults). */
#include "source/byte_source.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "abi.h"
#include "alloc.h"
#include "error.h"

/* An option left at -1 takes the environment variable env (a whole number in [lo, hi]), else
 * fallback. A variable that is set but no such number is refused, naming it: a typo must not
 * silently give the default. */
static tessera_status resolve(int64_t *value, const char *env, int64_t lo, int64_t hi,
                              int64_t fallback) {
  if (*value != -1) {
    if (*value < lo || *value > hi)
      return tsr_error(TESSERA_E_ARGUMENT,
                       "open options: %s-like setting %lld is outside %lld .. %lld", env,
                       (long long)*value, (long long)lo, (long long)hi);
    return TESSERA_OK;
  }
  const char *text = getenv(env);
  if (!text || !text[0]) {
    *value = fallback;
    return TESSERA_OK;
  }
  char *end;
  errno = 0;
  long long v = strtoll(text, &end, 10);
  if (errno || *end || v < lo || v > hi)
    return tsr_error(TESSERA_E_ARGUMENT, "%s=%s: expected a whole number from %lld to %lld", env,
                     text, (long long)lo, (long long)hi);
  *value = v;
  return TESSERA_OK;
}

tessera_status tsr_remote_source_open(const char *url, const tessera_open_options *options,
                                      struct tsr_byte_source **out) {
  *out = NULL;
  tessera_open_options o;
  tessera_open_options_init(&o);
  tessera_status st = tsr_abi_copy_in(&o, sizeof o, options, "open options");
  if (st != TESSERA_OK)
    return st;
  int64_t timeout = o.remote_timeout_ms, retries = o.remote_retries, requests = o.remote_requests,
          block = o.remote_block_kib, cache = o.remote_cache_mib;
  if ((st = resolve(&timeout, "TESSERA_REMOTE_TIMEOUT_MS", 1, INT32_MAX, 30000)) != TESSERA_OK ||
      (st = resolve(&retries, "TESSERA_REMOTE_RETRIES", 0, 100, 4)) != TESSERA_OK ||
      (st = resolve(&requests, "TESSERA_REMOTE_REQUESTS", 1, 4096, 32)) != TESSERA_OK ||
      (st = resolve(&block, "TESSERA_REMOTE_BLOCK_KIB", 4, 64 * 1024, 64)) != TESSERA_OK ||
      (st = resolve(&cache, "TESSERA_REMOTE_CACHE_MIB", 0, (int64_t)1 << 40, 64)) != TESSERA_OK)
    return st;
  o.remote_timeout_ms = (int32_t)timeout;
  o.remote_retries = (int32_t)retries;
  o.remote_requests = (int32_t)requests;
  o.remote_block_kib = (int32_t)block;
  o.remote_cache_mib = cache;
  size_t block_bytes = (size_t)block << 10;
  uint64_t cache_bytes = (uint64_t)cache << 20;
  /* No cache: the first request reads only the TIFF header; the walk reads the rest itself. */
  struct tsr_byte_source *http;
  uint8_t *head = NULL;
  size_t head_len = 0;
  /* The first request reads 256 KiB (or a block, if larger): the header and, in most files,
   * the first directories. */
  size_t head_bytes = block_bytes > (256u << 10) ? block_bytes : (256u << 10);
  struct tsr_http_auth auth = {0};
  struct tsr_s3 s3 = {0};
  bool is_s3 = strncmp(url, "s3://", 5) == 0;
  if (is_s3 && (st = tsr_s3_resolve(url, &s3, &auth)) != TESSERA_OK)
    return st;
  st = tsr_http_source_open(is_s3 ? s3.url : url, is_s3 ? &auth : NULL, &o,
                            cache_bytes ? head_bytes : 16, &http, &head, &head_len);
  tsr_s3_free(&s3);
  if (st != TESSERA_OK)
    return st;
  if (!cache_bytes || cache_bytes < 2 * (uint64_t)block_bytes) {
    tsr_free(head);
    *out = http;
    return TESSERA_OK;
  }
  return tsr_block_cache_open(http, block_bytes, cache_bytes, (int)requests, head, head_len, out);
}
