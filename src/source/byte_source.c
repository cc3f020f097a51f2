/* The file byte source: pread on a descriptor opened for the slide alone. Its fields are
 * written once by tsr_file_source_open and only read afterwards, so any number of threads
 * may read through it; pread keeps no position, so they share nothing but the descriptor. */
#include "source/byte_source.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "alloc.h"
#include "error.h"
#include "mix.h"

struct file_source {
  struct tsr_byte_source pub; /* first: the interface leads back here */
  int fd;
  uint64_t size;
  struct tsr_file_id id;
};

static tessera_status file_read_at(const struct tsr_byte_source *src, uint64_t offset,
                                   size_t length, void *buffer, size_t *got) {
  const struct file_source *f = (const struct file_source *)src;
  size_t done = 0;
  while (done < length) {
    ssize_t r = pread(f->fd, (uint8_t *)buffer + done, length - done, (off_t)(offset + done));
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0) {
      *got = done;
      return tsr_source_failed(tsr_error(TESSERA_E_IO, "read failed: %s", strerror(errno)));
    }
    if (r == 0)
      break;
    done += (size_t)r;
  }
  tsr_count(&src->counters.requests, 1);
  tsr_count(&src->counters.bytes, done);
  *got = done;
  return TESSERA_OK;
}

static uint64_t file_size(const struct tsr_byte_source *src) {
  return ((const struct file_source *)src)->size;
}

static void file_identity(const struct tsr_byte_source *src, struct tsr_file_id *id) {
  *id = ((const struct file_source *)src)->id;
}

static void file_close(struct tsr_byte_source *src) {
  struct file_source *f = (struct file_source *)src;
  if (f->fd >= 0)
    close(f->fd);
  tsr_free(f);
}

static const struct tsr_byte_source_ops file_ops = {file_read_at, file_size, file_identity,
                                                    file_close};

/* What a path that is no regular file is, for the message that refuses it. */
static const char *file_kind(mode_t mode) {
  if (S_ISDIR(mode))
    return "a directory";
  if (S_ISFIFO(mode))
    return "a FIFO (named pipe)";
  if (S_ISSOCK(mode))
    return "a socket";
  if (S_ISCHR(mode))
    return "a character device";
  if (S_ISBLK(mode))
    return "a block device";
  return "a special file";
}

static tessera_status open_file(struct file_source *f, const char *path) {
  /* O_NONBLOCK: without it, opening a FIFO waits for a writer, for ever if none comes, before
   * fstat can tell it is no slide. A regular file ignores the flag; it is cleared below. */
  f->fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (f->fd < 0) {
    int e = errno;
    struct stat st;
    /* A socket cannot be opened at all (ENXIO, "No such device or address"): say what it is. */
    if (e == ENXIO && stat(path, &st) == 0 && !S_ISREG(st.st_mode))
      return tsr_error(TESSERA_E_IO, "is %s, not a slide file", file_kind(st.st_mode));
    return tsr_error(TESSERA_E_IO, "cannot open: %s", strerror(e));
  }
  struct stat st;
  if (fstat(f->fd, &st) != 0)
    return tsr_error(TESSERA_E_IO, "cannot stat: %s", strerror(errno));
  if (!S_ISREG(st.st_mode))
    return tsr_error(TESSERA_E_IO, "is %s, not a slide file", file_kind(st.st_mode));
  int flags = fcntl(f->fd, F_GETFL);
  if (flags < 0 || fcntl(f->fd, F_SETFL, flags & ~O_NONBLOCK) != 0)
    return tsr_error(TESSERA_E_IO, "cannot set up the file: %s", strerror(errno));
  f->size = (uint64_t)st.st_size;
  f->id = (struct tsr_file_id){(uint64_t)st.st_dev, (uint64_t)st.st_ino, (uint64_t)st.st_size,
                               (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec,
                               (int64_t)st.st_ctim.tv_sec * 1000000000 + st.st_ctim.tv_nsec};
  return TESSERA_OK;
}

tessera_status tsr_file_source_open(const char *path, struct tsr_byte_source **out) {
  *out = NULL;
  struct file_source *f = tsr_calloc(1, sizeof *f);
  if (!f)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  f->pub.ops = &file_ops;
  tessera_status st = open_file(f, path);
  if (st != TESSERA_OK) {
    file_close(&f->pub);
    return st;
  }
  *out = &f->pub;
  return TESSERA_OK;
}

void tsr_byte_source_close(struct tsr_byte_source *src) {
  if (src)
    src->ops->close(src);
}

void tsr_byte_source_stats(const struct tsr_byte_source *src, tessera_io_stats *out) {
  out->requests = out->bytes = out->retries = out->cache_hits = 0;
  for (; src; src = src->inner) {
    out->requests += atomic_load_explicit(&src->counters.requests, memory_order_relaxed);
    out->bytes += atomic_load_explicit(&src->counters.bytes, memory_order_relaxed);
    out->retries += atomic_load_explicit(&src->counters.retries, memory_order_relaxed);
    out->cache_hits += atomic_load_explicit(&src->counters.cache_hits, memory_order_relaxed);
  }
  tsr_block_cache_usage(&out->remote_cache_held, &out->remote_cache_budget);
}

/* FNV-1a over text from a seed, finished by splitmix64's mixer so that the three seeds give
 * independent-looking words. Not cryptographic: identities are chosen by the slide's owner,
 * and a deliberate collision could only make the owner's own slides share tiles. */
static uint64_t hash_text(const char *text, uint64_t seed) {
  uint64_t h = 0xcbf29ce484222325ull ^ seed;
  for (const unsigned char *p = (const unsigned char *)text; *p; p++)
    h = (h ^ *p) * 0x100000001b3ull;
  return tsr_mix64(h);
}

void tsr_identity_from_text(uint64_t kind, const char *text, uint64_t size,
                            struct tsr_file_id *id) {
  *id = (struct tsr_file_id){.device = kind,
                             .inode = hash_text(text, 0x9e3779b97f4a7c15ull),
                             .size = size,
                             .mtime_ns = (int64_t)hash_text(text, 0x6a09e667f3bcc909ull),
                             .ctime_ns = (int64_t)hash_text(text, 0xbb67ae8584caa73bull)};
}

bool tsr_is_url(const char *name) {
  return strncasecmp(name, "http://", 7) == 0 || strncasecmp(name, "https://", 8) == 0 ||
         strncmp(name, "s3://", 5) == 0;
}

/* Each thread's own: the open that reads it runs in one thread. */
static _Thread_local struct tsr_failure source_failure;

tessera_status tsr_source_failed(tessera_status status) {
  source_failure.status = TESSERA_OK;
  tsr_failure_keep(&source_failure, status);
  return status;
}

void tsr_source_failure_clear(void) { source_failure.status = TESSERA_OK; }

tessera_status tsr_source_failure_raise(void) {
  return source_failure.status == TESSERA_OK ? TESSERA_OK : tsr_failure_raise(&source_failure);
}

/* The registered locks; `guards_lock` guards the list. */
static pthread_mutex_t guards_lock = PTHREAD_MUTEX_INITIALIZER;
static struct tsr_fork_guard *guards;
static pthread_once_t guards_once = PTHREAD_ONCE_INIT;

static void before_fork(void) {
  pthread_mutex_lock(&guards_lock);
  for (struct tsr_fork_guard *g = guards; g; g = g->next)
    pthread_mutex_lock(g->lock);
}

static void after_fork_parent(void) {
  for (struct tsr_fork_guard *g = guards; g; g = g->next)
    pthread_mutex_unlock(g->lock);
  pthread_mutex_unlock(&guards_lock);
}

static void after_fork_child(void) {
  for (struct tsr_fork_guard *g = guards; g; g = g->next) {
    pthread_mutex_init(g->lock, NULL);
    if (g->child)
      g->child(g->arg);
  }
  pthread_mutex_init(&guards_lock, NULL);
}

static void guards_init(void) { pthread_atfork(before_fork, after_fork_parent, after_fork_child); }

void tsr_fork_guard_add(struct tsr_fork_guard *g) {
  pthread_once(&guards_once, guards_init);
  pthread_mutex_lock(&guards_lock);
  g->next = guards;
  guards = g;
  pthread_mutex_unlock(&guards_lock);
}

void tsr_fork_guard_remove(struct tsr_fork_guard *g) {
  pthread_mutex_lock(&guards_lock);
  for (struct tsr_fork_guard **p = &guards; *p; p = &(*p)->next)
    if (*p == g) {
      *p = g->next;
      break;
    }
  pthread_mutex_unlock(&guards_lock);
}
