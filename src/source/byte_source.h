/* A byte source: where an open slide's bytes come from. Every read of the slide's bytes (the
 * TIFF walk through libtiff, NDPI's JPEG headers, every tile on both devices) goes through
 * one, so another kind of source (HTTP range reads, a caller's read callback) needs no change
 * to the TIFF walk, the vendors, the tile sources or the codecs. Today there is one kind, a
 * file read with pread on its own descriptor (tsr_file_source_open).
 *
 * A source is immutable once made: read_at keeps no position and takes no lock, so any
 * number of threads may read at once; only close must wait until no one else uses it. */
#ifndef TSR_SOURCE_BYTE_SOURCE_H
#define TSR_SOURCE_BYTE_SOURCE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tessera.h"

/* What tells one source from another for the tile cache, taken when the source is made. For a
 * file: the status-change time is there because the others can all stay the same across a
 * rewrite in place (cp -p, rsync -t --inplace and tar x set the modification time back); no
 * writer can set ctime. Plain data, so the shared cache can keep it in its segment. */
struct tsr_file_id {
  uint64_t device, inode, size;
  int64_t mtime_ns, ctime_ns;
};

struct tsr_byte_source;

struct tsr_byte_source_ops {
  /* Reads up to length bytes at offset into buffer and says in *got how many it read: fewer
   * than length only where the source ends. A failure (not the end) returns a status with
   * the calling thread's message set. */
  tessera_status (*read_at)(const struct tsr_byte_source *src, uint64_t offset, size_t length,
                            void *buffer, size_t *got);
  /* Bytes in the source, fixed when it was made. */
  uint64_t (*size)(const struct tsr_byte_source *src);
  /* The source's identity for the tile cache. */
  void (*identity)(const struct tsr_byte_source *src, struct tsr_file_id *id);
  /* Frees the source. */
  void (*close)(struct tsr_byte_source *src);
  /* Optional (NULL: nothing): bytes [offset, offset + length) will be read soon, so a source
   * over a slow store may start fetching them now. Returns at once; takes no lock of the
   * caller's and never fails (a fetch that fails is made again by the read). */
  void (*hint)(const struct tsr_byte_source *src, uint64_t offset, uint64_t length);
  /* Optional: the slide is open (its directories walked); reads from now on are its tiles. */
  void (*opened)(struct tsr_byte_source *src);
  /* Optional, with hint: how many bytes of what was hinted at the source can hold until it is
   * read (its cache's capacity), and in *granule the unit it fetches (a block), so that a
   * reader knows how far ahead hints may go before the first are evicted unread. */
  uint64_t (*hint_room)(const struct tsr_byte_source *src, uint64_t *granule);
};

/* What reading through a source has cost; relaxed atomics, added to by any reading thread
 * (a count read while reads go on may be a read behind). */
struct tsr_io_counters {
  atomic_uint_fast64_t requests, bytes, retries, cache_hits;
};

/* Each kind of source starts with this. */
struct tsr_byte_source {
  const struct tsr_byte_source_ops *ops;
  struct tsr_io_counters counters; /* zeroed when the source is made (calloc) */
  /* The source this one reads through (a block cache's), whose counters are added to this
   * one's in tsr_byte_source_stats; NULL for none. Written when made. */
  const struct tsr_byte_source *inner;
};

/* Counters change under a const source: they are the one thing about it that does. */
static inline void tsr_count(const atomic_uint_fast64_t *counter, uint64_t n) {
  atomic_fetch_add_explicit((atomic_uint_fast64_t *)counter, n, memory_order_relaxed);
}

/* The counters of src and of the sources under it, added up. */
void tsr_byte_source_stats(const struct tsr_byte_source *src, tessera_io_stats *out);

static inline tessera_status tsr_bytes_read_at(const struct tsr_byte_source *src, uint64_t offset,
                                               size_t length, void *buffer, size_t *got) {
  return src->ops->read_at(src, offset, length, buffer, got);
}

static inline void tsr_bytes_hint(const struct tsr_byte_source *src, uint64_t offset,
                                  uint64_t length) {
  if (src->ops->hint)
    src->ops->hint(src, offset, length);
}

/* Whether exactly length bytes at offset could be read; for readers whose failures the caller
 * reports in its own words (libtiff's, the header checks). */
static inline bool tsr_bytes_read_all(const struct tsr_byte_source *src, uint64_t offset,
                                      size_t length, void *buffer) {
  size_t got;
  return tsr_bytes_read_at(src, offset, length, buffer, &got) == TESSERA_OK && got == length;
}

/* Opens the regular file at path as a byte source (read with pread on its own descriptor).
 * A path that is no regular file (a directory, a FIFO, a socket, a device) is refused with a
 * message that says what it is. */
tessera_status tsr_file_source_open(const char *path, struct tsr_byte_source **out);

/* A caller's source (tessera_open_source), *source already checked for its struct_size and
 * copied in full. On failure the caller's close has been called. */
tessera_status tsr_callback_source_open(const tessera_source *source, struct tsr_byte_source **out);

/* An HTTP(S) URL read with range requests (source/http_source.c). options holds the resolved
 * remote_* settings. *head receives the bytes of the first request (the object's first
 * head_bytes bytes, or all of it if shorter; malloc'd, the caller frees) so that a block cache
 * can keep them. Without libcurl in the build: TESSERA_E_UNSUPPORTED. */
struct tsr_http_auth {
  const char *shown;      /* the name in messages (s3://bucket/key), or NULL: the URL's */
  const char *sigv4;      /* CURLOPT_AWS_SIGV4 ("aws:amz:REGION:s3"), or NULL: unsigned */
  const char *userpwd;    /* "KEY_ID:SECRET" with sigv4 */
  const char *headers[2]; /* extra headers for every request (x-amz-...), or NULL */
};
tessera_status tsr_http_source_open(const char *url, const struct tsr_http_auth *auth,
                                    const tessera_open_options *options, size_t head_bytes,
                                    struct tsr_byte_source **out, uint8_t **head,
                                    size_t *head_len);

/* An s3://bucket/key URL as the https:// URL to fetch (AWS_ENDPOINT_URL_S3,
 * AWS_ENDPOINT_URL or the profile's endpoint_url, path-style, else
 * https://bucket.s3.REGION.amazonaws.com/key; REGION from AWS_REGION, AWS_DEFAULT_REGION or
 * the profile's region in AWS_CONFIG_FILE or ~/.aws/config, else us-east-1) and how to sign its
 * requests (credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN, else
 * the profile (AWS_PROFILE, AWS_DEFAULT_PROFILE or "default") of AWS_SHARED_CREDENTIALS_FILE
 * or ~/.aws/credentials, else of the config file; none: unsigned, for public buckets), in the
 * AWS CLI's order. Everything made is in *s3 (free with tsr_s3_free). */
struct tsr_s3 {
  char *url, *shown, *sigv4, *userpwd, *token, *sha;
};
tessera_status tsr_s3_resolve(const char *s3_url, struct tsr_s3 *s3, struct tsr_http_auth *auth);
void tsr_s3_free(struct tsr_s3 *s3);

/* Whether name is a URL of a scheme tsr_remote_source_open reads (http://, https://). */
bool tsr_is_url(const char *name);

/* The URL's source: HTTP under a block cache as options (remote_*, -1 resolved from the
 * environment here) say. */
tessera_status tsr_remote_source_open(const char *url, const tessera_open_options *options,
                                      struct tsr_byte_source **out);

/* A cache of aligned blocks of block_bytes over inner (taken over: closed with it), holding at
 * most capacity_bytes of them (least recently used evicted), with up to prefetch_threads
 * threads fetching the blocks hinted at (tsr_bytes_hint); head (taken over, may be NULL)
 * holds the first head_len bytes of inner, kept as its first blocks. */
/* The bytes all the process's block caches hold now, and the budget they share (the largest
 * capacity among those open; each holds at most budget / caches open). */
void tsr_block_cache_usage(uint64_t *held, uint64_t *budget);

tessera_status tsr_block_cache_open(struct tsr_byte_source *inner, size_t block_bytes,
                                    uint64_t capacity_bytes, int prefetch_threads, uint8_t *head,
                                    size_t head_len, struct tsr_byte_source **out);

/* A 192-bit hash of text folded into a cache identity, under kind (a value no device number
 * takes), with size. */
void tsr_identity_from_text(uint64_t kind, const char *text, uint64_t size, struct tsr_file_id *id);

/* A read that failed in the source itself (a callback's failure, an HTTP error) is noted for
 * the calling thread, because libtiff, which reads the directories at open, turns every failed
 * read into a short one and reports a malformed file: the open then reports the source's
 * failure instead. tsr_source_failure_clear forgets it; tsr_source_failure_raise makes it the
 * thread's message and returns its status (TESSERA_OK when there is none). */
tessera_status tsr_source_failed(tessera_status status);
void tsr_source_failure_clear(void);
tessera_status tsr_source_failure_raise(void);

/* A source's lock made safe across fork(): a thread of the parent holding it when another
 * forks would leave it locked for ever in the child (a DataLoader worker forked while the
 * block cache's fetch threads work). Registered locks are all taken before fork and given
 * back after it in the parent; in the child they are made anew, unlocked, and `child` (may be
 * NULL) resets what the parent's threads were doing (requests in flight). */
struct tsr_fork_guard {
  pthread_mutex_t *lock;
  void (*child)(void *arg);
  void *arg;
  struct tsr_fork_guard *next; /* the registry's, under its own mutex */
};
void tsr_fork_guard_add(struct tsr_fork_guard *g);
void tsr_fork_guard_remove(struct tsr_fork_guard *g);

/* Frees src (NULL does nothing). */
void tsr_byte_source_close(struct tsr_byte_source *src);

#endif
