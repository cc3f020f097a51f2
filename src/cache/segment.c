/* The shared cache's segments (see shared.c for the design): naming, making and attaching
 * (owner and mode checks, the maker's flock, healing what a dead maker left), the user seats
 * and the liveness they give (OFD locks), a forked child's attachment, and listing and
 * removing segments (tessera_shared_cache_list/remove). The index inside a segment is
 * shared.c's.
 *
 * State: an attachment's seat, detached flag and registration are written under the
 * segment's users_lock (segment.h says which are atomic); the segment's header fields are
 * written by its maker before it is ready, the incarnations atomically by a seat's taker. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "abi.h"
#include "alloc.h"
#include "cache/segment.h"
#include "cache/shared_hooks.h"
#include "error.h"

/* ---- liveness ---- */

/* Whether user seat `seat` is held by a live attachment other than the one behind fd. */
static bool seat_locked(int fd, uint32_t seat) {
  struct flock l = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = seat, .l_len = 1};
  if (fd < 0 || fcntl(fd, F_OFD_GETLK, &l) != 0)
    return true; /* cannot tell: taken for alive, the safe side */
  return l.l_type != F_UNLCK;
}

bool tsr_segment_loader_alive(const struct shared_cache *c, const struct entry *e) {
  uint32_t seat = once32(&e->loader_seat), incarnation = once32(&e->loader_incarnation);
  /* Held, not taken: a detaching attachment is alive until its copies are done (detach_user),
   * and the kernel cannot say so (F_OFD_GETLK does not see its own description's lock). */
  int held = atomic_load(&c->held_seat);
  if (held >= 0 && seat == (uint32_t)held && incarnation == c->incarnation)
    return true;
  return seat < MAX_USERS &&
         atomic_load_explicit(&c->h->incarnation[seat], memory_order_relaxed) == incarnation &&
         seat_locked(c->fd, seat);
}

/* ---- placing the shards ---- */

/* Places the shards' arrays after the header; returns the segment's size. The sizes are
 * bounded (chunks < 2^32 per shard, 16 shards), so nothing overflows. */
static uint64_t place_shards(uint32_t nshards, uint32_t chunks, uint32_t entries, uint32_t buckets,
                             struct place *places /* NULL: size only */) {
  uint64_t off = align_up(sizeof(struct header), 64) + align_up(sizeof(struct shard), 64) * nshards;
  uint64_t data_bytes = (uint64_t)chunks * CHUNK_BYTES;
  for (uint32_t i = 0; i < nshards; i++) {
    struct place p;
    p.entries_off = off = align_up(off, 64);
    off += (uint64_t)entries * sizeof(struct entry);
    p.buckets_off = off = align_up(off, 64);
    off += (uint64_t)buckets * 4;
    p.next_off = off = align_up(off, 64);
    off += (uint64_t)chunks * 4;
    p.owner_off = off = align_up(off, 64);
    off += (uint64_t)chunks * 8;
    p.data_off = off = align_up(off, 4096);
    off += data_bytes;
    if (places)
      places[i] = p;
  }
  return off;
}

/* ---- users ---- */

/* Whether /dev/shm/NAME is still the file (dev, ino): the name may have been removed and
 * given to a newer segment meanwhile. */
static bool names_file(const char *name, uint64_t dev, uint64_t ino) {
  char path[sizeof SHM_DIR + TESSERA_SHARED_CACHE_NAME_MAX + 2];
  snprintf(path, sizeof path, SHM_DIR "%s", name);
  struct stat st;
  return lstat(path, &st) == 0 && (uint64_t)st.st_dev == dev && (uint64_t)st.st_ino == ino;
}

static bool lock_users(struct header *h) {
  int r = lock_within(&h->users_lock, USERS_WAIT_NS);
  if (r == EOWNERDEAD) {
    pthread_mutex_consistent(&h->users_lock); /* it guards no data of its own */
    return true;
  }
  return r == 0;
}

/* How many user seats are held by attachments other than fd's (MAX_USERS if it cannot
 * tell: taken as in use, the safe side). */
static unsigned live_users(int fd) {
  unsigned n = 0;
  for (off_t at = 0; at < MAX_USERS;) {
    struct flock l = {
        .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = at, .l_len = MAX_USERS - at};
    if (fd < 0 || fcntl(fd, F_OFD_GETLK, &l) != 0)
      return MAX_USERS;
    if (l.l_type == F_UNLCK)
      break;
    off_t from = l.l_start > at ? l.l_start : at;
    off_t end = l.l_len == 0 || l.l_start + l.l_len > MAX_USERS ? MAX_USERS : l.l_start + l.l_len;
    n += (unsigned)(end - from);
    at = end;
  }
  return n;
}

/* Takes a free user seat by locking its byte: -1 if all are taken. The caller holds the
 * users lock. */
static int take_seat(struct shared_cache *c) {
  for (uint32_t i = 0; c->fd >= 0 && i < MAX_USERS; i++) {
    struct flock l = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = i, .l_len = 1};
    if (fcntl(c->fd, F_OFD_SETLK, &l) == 0) {
      c->incarnation = atomic_fetch_add(&c->h->incarnation[i], 1) + 1;
      atomic_store(&c->held_seat, (int)i);
      return (int)i;
    }
  }
  return -1;
}

/* Lets the seat go, once no copy into reserved chunks is in flight: a loader copies without
 * the shard lock, into chunks that are its own only while its seat is held (shared.c's
 * copy_in). The caller has set seat to -1, so no copy starts after this looks (both sides
 * are sequentially consistent: a copier either sees -1 or is counted here). A copy is a
 * memcpy of one tile; one not done within LOCK_WAIT_NS is a thread stopped alone (a
 * debugger): the seat then goes when the process dies or closes the descriptor. */
static void release_seat(struct shared_cache *c, int seat) {
  for (uint64_t began = monotonic_ns(); atomic_load(&c->copying) != 0; sleep_ns(100000))
    if (monotonic_ns() - began > LOCK_WAIT_NS)
      return;
  struct flock l = {.l_type = F_UNLCK, .l_whence = SEEK_SET, .l_start = seat, .l_len = 1};
  fcntl(c->fd, F_OFD_SETLK, &l);
  atomic_store(&c->held_seat, -1);
}

/* A forked child becomes a user when it first reads through the cache, not at the fork: a
 * child that goes on to exec another program (a subprocess) must not keep the segment
 * alive. */
void tsr_segment_register_slow(struct shared_cache *c) {
  if (lock_users(c->h)) {
    if (c->seat < 0 && !c->detached)
      c->seat = take_seat(c);
    pthread_mutex_unlock(&c->h->users_lock);
  }
  atomic_store_explicit(&c->registered, true, memory_order_release);
}

/* Gives up this attachment's seat; the last live user removes the segment's name. If the
 * users lock cannot be had, the seat goes when the descriptor is closed. */
static void detach_user(struct shared_cache *c) {
  struct header *h = c->h;
  if (!lock_users(h))
    return;
  if (!c->detached) {
    c->detached = true;
    int seat = c->seat;
    c->seat = -1;
    if (seat >= 0)
      release_seat(c, seat);
    if (live_users(c->fd) == 0 && !atomic_load(&h->unlinked)) {
      atomic_store(&h->unlinked, 1);
      if (names_file(c->name, c->dev, c->ino))
        shm_unlink(c->name);
    }
  }
  pthread_mutex_unlock(&h->users_lock);
}

/* Frees an attachment without detaching (it never became a user). */
static void discard(struct shared_cache *c) {
  munmap(c->addr, c->size);
  if (c->fd >= 0)
    close(c->fd);
  tsr_free(c);
}

void tsr_segment_destroy(struct tsr_cache *base) {
  struct shared_cache *c = (struct shared_cache *)base;
  detach_user(c);
  discard(c);
}

void tsr_segment_exiting(struct tsr_cache *base) { detach_user((struct shared_cache *)base); }

/* An attachment to the segment mapped at addr, of the geometry in h (checked), owning fd. */
static struct shared_cache *new_attachment(int fd, uint8_t *addr, size_t size, const char *name,
                                           int record_stats, const struct header *h) {
  struct shared_cache *c = tsr_calloc(1, sizeof *c);
  if (!c)
    return NULL;
  c->base.refs = 1;
  c->base.type = TESSERA_CACHE_SHARED_MEMORY;
  c->base.record_stats = record_stats;
  c->addr = addr;
  c->size = size;
  c->h = (struct header *)addr;
  c->fd = fd;
  c->nshards = h->nshards;
  c->chunks = h->chunks;
  c->entries = h->entries;
  c->buckets = h->buckets;
  place_shards(c->nshards, c->chunks, c->entries, c->buckets, c->place);
  c->seat = -1;
  c->held_seat = -1;
  struct stat st;
  if (fstat(fd, &st) == 0) {
    c->dev = (uint64_t)st.st_dev;
    c->ino = (uint64_t)st.st_ino;
  }
  snprintf(c->name, sizeof c->name, "%s", name);
  return c;
}

/* The path of segment name ("/..."). */
static void shm_path(const char *name, char *path, size_t n) {
  snprintf(path, n, SHM_DIR "%s", name);
}

/* A descriptor of the segment of its own (a new open file description), for a forked child:
 * the inherited one is the parent's, and so are the seat locks on it. -1 if the segment
 * cannot be opened again (the child then reads through the cache without loading into it). */
static int reopen(const struct shared_cache *c) {
  char path[sizeof SHM_DIR + TESSERA_SHARED_CACHE_NAME_MAX + 2];
  snprintf(path, sizeof path, "/proc/self/fd/%d", c->fd);
  for (int attempt = 0; attempt < 2; attempt++) {
    if (attempt == 1)
      shm_path(c->name, path, sizeof path); /* no /proc: by name, if it is still this file */
    int fd = open(path, O_RDWR | O_CLOEXEC | (attempt ? O_NOFOLLOW : 0));
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) == 0 && (uint64_t)st.st_dev == c->dev &&
        (uint64_t)st.st_ino == c->ino)
      return fd;
    if (fd >= 0)
      close(fd);
  }
  return -1;
}

/* A forked child shares the parent's mapping, and takes over the parent's attachment record
 * (its own copy): the references in it belong to threads the child does not have, and the
 * locks a parent's thread may hold live in the segment, where that thread releases them. The
 * child becomes a user of the segment in its own name when it first reads (register_user),
 * on a descriptor of its own. */
struct tsr_cache *tsr_segment_fork_child(struct tsr_cache *base) {
  struct shared_cache *c = (struct shared_cache *)base;
  c->base.refs = 1;
  c->seat = -1;
  c->held_seat = -1; /* the parent's: its lock is on the parent's description */
  c->copying = 0;    /* the parent's threads' */
  c->detached = false;
  int fd = c->fd >= 0 ? reopen(c) : -1;
  if (fd >= 0) {
    dup3(fd, c->fd, O_CLOEXEC);
    close(fd);
  } else if (c->fd >= 0) {
    close(c->fd);
    c->fd = -1;
  }
  for (uint32_t i = 0; i < TSR_CACHE_MAX_SHARDS; i++)
    atomic_store(&c->stuck_until[i], 0);
  atomic_store(&c->registered, false);
  return &c->base;
}

/* ---- making and attaching segments ---- */

/* "/name" from "name" or "/name"; false if it is not a valid segment name. A leading '.' is
 * refused: such names are hidden from listings (and are what other programs' temporary files
 * in /dev/shm look like). */
static bool normalize_name(const char *in, char *out, size_t cap) {
  if (!in)
    return false;
  if (in[0] == '/')
    in++;
  size_t n = strlen(in);
  if (n == 0 || n > TESSERA_SHARED_CACHE_NAME_MAX || strchr(in, '/') || in[0] == '.' || n + 2 > cap)
    return false;
  for (const char *p = in; *p; p++)
    if ((unsigned char)*p < 0x20 || *p == 0x7f)
      return false;
  snprintf(out, cap, "/%s", in);
  return true;
}

static void init_robust_mutex(pthread_mutex_t *m) {
  pthread_mutexattr_t a;
  pthread_mutexattr_init(&a);
  pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
  pthread_mutex_init(m, &a);
  pthread_mutexattr_destroy(&a);
}

/* Checks a header read from a segment of `size` bytes; its parts must lie where this build places
 * them. */
static bool header_sane(const struct header *h, uint64_t size) {
  if (h->version != SEGMENT_VERSION || h->header_bytes != sizeof(struct header) ||
      h->shard_struct != sizeof(struct shard) || h->entry_struct != sizeof(struct entry) ||
      h->chunk_bytes != CHUNK_BYTES || h->nshards < 1 || h->nshards > TSR_CACHE_MAX_SHARDS ||
      h->chunks < 1 || h->chunks >= NIL || h->entries < 1 || h->entries > h->chunks ||
      h->buckets < 1 || (h->buckets & (h->buckets - 1)) != 0)
    return false;
  return place_shards(h->nshards, h->chunks, h->entries, h->buckets, NULL) == h->segment_bytes &&
         h->segment_bytes == size;
}

/* Whether fd is still the segment the name refers to. */
static bool still_named(int fd, const char *name) {
  struct stat st;
  return fstat(fd, &st) == 0 && names_file(name, (uint64_t)st.st_dev, (uint64_t)st.st_ino);
}

/* Refuses a segment that this process's user could not have made alone: not a regular
 * file, someone else's, or open to others. Its owner, or anyone who may write it, could
 * feed this process any pixels. */
static tessera_status check_owner(int fd, const char *name) {
  struct stat st;
  if (fstat(fd, &st) != 0)
    return tsr_error(TESSERA_E_IO, "cannot stat shared cache %s: %s", name, strerror(errno));
  if (!S_ISREG(st.st_mode))
    return tsr_error(TESSERA_E_ARGUMENT, "%s exists in " SHM_DIR " and is not a tessera cache",
                     name);
  if (st.st_uid != geteuid())
    return tsr_error(TESSERA_E_ARGUMENT,
                     "shared cache %s belongs to another user (uid %u, this process runs as "
                     "uid %u): refused, its owner could feed this process any pixels; use "
                     "another name",
                     name, (unsigned)st.st_uid, (unsigned)geteuid());
  if (st.st_mode & 077)
    return tsr_error(TESSERA_E_ARGUMENT,
                     "shared cache %s is open to other users (mode %03o, not 600): refused, "
                     "any of them could feed this process any pixels; remove it or use "
                     "another name",
                     name, (unsigned)(st.st_mode & 0777));
  return TESSERA_OK;
}

/* Whether this process uses a shared cache now (one that is let go only once a new one is
 * made). */
static bool have_shared_cache(void) {
  struct tsr_cache *cur = tsr_cache_acquire();
  bool shared = cur && cur->type == TESSERA_CACHE_SHARED_MEMORY;
  tsr_cache_release(cur);
  return shared;
}

/* Makes the segment behind fd (just created, empty), holding an exclusive flock on it so
 * attachers wait until it is ready. *again: the name was taken from it before it was locked
 * (an attacher took it for a dead maker's): make another. On success the attachment owns fd. */
static tessera_status make_segment(int fd, const char *name, const tessera_cache_options *o,
                                   struct shared_cache **out, bool *again) {
  *again = false;
  uint64_t capacity = o->memory_capacity_mib << 20;
  uint32_t nshards = tsr_cache_shard_count(capacity, o->item_capacity);
  uint64_t chunks = capacity / nshards / CHUNK_BYTES;
  if (chunks < 1)
    chunks = 1;
  if (chunks >= NIL)
    return tsr_error(TESSERA_E_LIMIT, "a shared cache of %llu MiB is too large",
                     (unsigned long long)o->memory_capacity_mib);
  uint64_t entries = chunks;
  if (o->item_capacity) {
    uint64_t per = o->item_capacity / nshards;
    entries = per < 1 ? 1 : per < chunks ? per : chunks;
  }
  uint64_t buckets = 1;
  while (buckets < entries && buckets < ((uint64_t)1 << 22))
    buckets *= 2;
  uint64_t total =
      place_shards(nshards, (uint32_t)chunks, (uint32_t)entries, (uint32_t)buckets, NULL);
  if (tsr_hook_due(TSR_HOOK_CREATED))
    tsr_hook_stall();
  /* An attacher that opened the file meanwhile holds a lock on it only while it looks; one
   * that holds it longer is stopped (or not tessera), and is not waited for without end. */
  for (uint64_t began = monotonic_ns(); flock(fd, LOCK_EX | LOCK_NB) != 0; sleep_ns(1000000)) {
    int err = errno;
    if (err != EWOULDBLOCK)
      return tsr_error(TESSERA_E_IO, "cannot lock shared memory %s: %s", name, strerror(err));
    if (monotonic_ns() - began > READY_WAIT_NS)
      return tsr_error(TESSERA_E_IO,
                       "cannot lock the new shared cache %s: another process holds a lock on "
                       "it (a stopped one?)",
                       name);
  }
  if (!still_named(fd, name)) {
    *again = true;
    return TESSERA_OK;
  }
  /* The magic goes in first, so that `tessera cache list` recognises a segment whose maker
   * died before finishing it, and the next process to want the name replaces it. */
  uint64_t magic = SEGMENT_MAGIC;
  int err = fchmod(fd, 0600) != 0 || ftruncate(fd, (off_t)total) != 0 ? errno : 0;
  if (!err && pwrite(fd, &magic, sizeof magic, 0) != (ssize_t)sizeof magic)
    err = errno ? errno : EIO;
  /* Reserve the memory now: a tmpfs that runs out later would kill a reader with SIGBUS. */
  if (!err)
    err = posix_fallocate(fd, 0, (off_t)total);
  if (err)
    return tsr_error(err == ENOSPC ? TESSERA_E_NOMEM : TESSERA_E_IO,
                     "cannot make a %llu MiB shared cache %s in " SHM_DIR ": %s%s%s",
                     (unsigned long long)o->memory_capacity_mib, name, strerror(err),
                     err == ENOSPC ? " (a container may need a larger --shm-size)" : "",
                     err == ENOSPC && have_shared_cache()
                         ? "; the shared cache this process uses is let go only once the new "
                           "one is made, so both need room: configure no cache first to let "
                           "it go"
                         : "");
  if (tsr_hook_due(TSR_HOOK_MAKING))
    tsr_hook_stall();
  uint8_t *addr = mmap(NULL, (size_t)total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (addr == MAP_FAILED)
    return tsr_error(TESSERA_E_NOMEM, "cannot map shared cache %s: %s", name, strerror(errno));
  struct header *h = (struct header *)addr;
  h->version = SEGMENT_VERSION;
  h->header_bytes = sizeof *h;
  h->shard_struct = sizeof(struct shard);
  h->entry_struct = sizeof(struct entry);
  h->nshards = nshards;
  h->chunk_bytes = CHUNK_BYTES;
  h->chunks = (uint32_t)chunks;
  h->entries = (uint32_t)entries;
  h->buckets = (uint32_t)buckets;
  h->segment_bytes = total;
  h->memory_capacity = capacity;
  h->item_capacity = o->item_capacity;
  struct shared_cache *c = new_attachment(fd, addr, (size_t)total, name, o->record_stats != 0, h);
  if (!c) {
    munmap(addr, (size_t)total);
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a cache");
  }
  init_robust_mutex(&h->users_lock);
  for (uint32_t s = 0; s < nshards; s++) {
    struct view v = view_of(c, s);
    struct shard *sh = v.sh;
    init_robust_mutex(&sh->lock);
    sh->small_head = sh->small_tail = sh->main_head = sh->main_tail = NIL;
    for (uint32_t i = 0; i < v.entries; i++)
      v.E[i].hnext = i + 1 < v.entries ? i + 1 : NIL;
    sh->free_entries = 0;
    for (uint32_t k = 0; k < v.chunks; k++)
      v.next[k] = k + 1 < v.chunks ? k + 1 : NIL;
    sh->free_chunks = 0;
    sh->nfree_chunks = v.chunks;
    for (uint32_t b = 0; b < v.buckets; b++)
      v.B[b] = NIL;
  }
  c->seat = take_seat(c); /* seat 0: nobody else has the segment yet */
  atomic_store(&c->registered, true);
  h->magic = SEGMENT_MAGIC;
  atomic_store(&h->ready, 1);
  flock(fd, LOCK_UN);
  *out = c;
  return TESSERA_OK;
}

/* A segment with tessera's magic that is not ready and whose maker's lock is free was left
 * by a maker that died: removes its name (if it still is this segment's). True if removed,
 * or removed meanwhile by another: make a new one. */
static bool remove_half_made(int fd, const char *name) {
  if (flock(fd, LOCK_EX | LOCK_NB) != 0)
    return false; /* a maker or another attacher has it: look again */
  struct header h;
  memset(&h, 0, sizeof h);
  bool ready = pread(fd, &h, sizeof h, 0) >= (ssize_t)sizeof h && atomic_load(&h.ready);
  bool gone = !ready && (!still_named(fd, name) || shm_unlink(name) == 0);
  flock(fd, LOCK_UN);
  return gone;
}

/* Attaches to the existing segment behind fd. *again: it was removed meanwhile (make a new
 * one). Its maker holds an exclusive flock on it until it is ready, so a segment that can be
 * locked but is not ready was left half-made by a process that died. On success the
 * attachment owns fd. */
static tessera_status attach_segment(int fd, const char *name, int record_stats,
                                     struct shared_cache **out, bool *again) {
  *again = false;
  uint64_t began = monotonic_ns();
  struct header h;
  struct stat st;
  for (;;) {
    if (flock(fd, LOCK_SH | LOCK_NB) == 0) {
      memset(&h, 0, sizeof h);
      bool stated = fstat(fd, &st) == 0;
      ssize_t n = stated && st.st_size > 0 ? pread(fd, &h, sizeof h, 0) : 0;
      if (n >= (ssize_t)sizeof h && h.magic == SEGMENT_MAGIC && atomic_load(&h.ready))
        break;
      flock(fd, LOCK_UN);
      if (!still_named(fd, name)) {
        *again = true;
        return TESSERA_OK;
      }
      if (n >= (ssize_t)sizeof h.magic && h.magic != SEGMENT_MAGIC && h.magic != 0)
        return tsr_error(TESSERA_E_ARGUMENT, "%s exists in " SHM_DIR " and is not a tessera cache",
                         name);
      if (n >= (ssize_t)sizeof h.magic && h.magic == SEGMENT_MAGIC && remove_half_made(fd, name)) {
        *again = true;
        return TESSERA_OK;
      }
      /* No magic and not locked by a maker yet: only for the moment between its open and its
       * flock, unless it is not tessera's. */
      if (monotonic_ns() - began > READY_WAIT_NS)
        return tsr_error(TESSERA_E_IO,
                         "shared cache %s is not ready and nobody is making it (a process died "
                         "making it, or it is not tessera's); remove it with `tessera cache "
                         "remove %s`",
                         name, name + 1);
    } else if (monotonic_ns() - began > MAKER_WAIT_NS) {
      return tsr_error(TESSERA_E_IO, "shared cache %s: its maker has been at it for %llu s", name,
                       (unsigned long long)(MAKER_WAIT_NS / 1000000000ull));
    }
    sleep_ns(1000000);
  }
  if (!header_sane(&h, (uint64_t)st.st_size)) {
    flock(fd, LOCK_UN);
    return tsr_error(TESSERA_E_ARGUMENT,
                     "shared cache %s was made by another version of tessera; remove it with "
                     "`tessera cache remove %s`",
                     name, name + 1);
  }
  uint8_t *addr = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  flock(fd, LOCK_UN);
  if (addr == MAP_FAILED)
    return tsr_error(TESSERA_E_NOMEM, "cannot map shared cache %s: %s", name, strerror(errno));
  /* The geometry is the copy checked above, not the mapping's (which anyone may write). */
  struct shared_cache *c = new_attachment(fd, addr, (size_t)st.st_size, name, record_stats, &h);
  if (!c) {
    munmap(addr, (size_t)st.st_size);
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a cache");
  }
  if (!lock_users(c->h)) {
    c->fd = -1; /* the caller's to close */
    discard(c);
    return tsr_error(TESSERA_E_IO,
                     "shared cache %s: its user table cannot be locked (a process holding it "
                     "is stopped?)",
                     name);
  }
  if (atomic_load(&c->h->unlinked)) {
    /* Removed: make a new one. If the name is still there, whoever removed it died between
     * the flag and the unlink; finish the job. */
    if (still_named(fd, name))
      shm_unlink(name);
    pthread_mutex_unlock(&c->h->users_lock);
    c->fd = -1;
    discard(c);
    *again = true;
    return TESSERA_OK;
  }
  c->seat = take_seat(c);
  atomic_store(&c->registered, true);
  pthread_mutex_unlock(&c->h->users_lock);
  if (c->seat < 0) {
    c->fd = -1;
    discard(c);
    return tsr_error(TESSERA_E_LIMIT, "shared cache %s already has %d processes using it", name,
                     MAX_USERS);
  }
  *out = c;
  return TESSERA_OK;
}

tessera_status tsr_segment_open(const tessera_cache_options *o, struct shared_cache **out) {
  static atomic_uint made;
  char name[TESSERA_SHARED_CACHE_NAME_MAX + 2], path[sizeof SHM_DIR + sizeof name];
  if (o->name) {
    if (!normalize_name(o->name, name, sizeof name))
      return tsr_error(TESSERA_E_ARGUMENT,
                       "'%s' is not a shared cache name: 1 to %d characters, no '/' but a "
                       "leading one, not beginning with '.'",
                       o->name, TESSERA_SHARED_CACHE_NAME_MAX);
  } else {
    snprintf(name, sizeof name, "/tessera-%d-%u", (int)getpid(), atomic_fetch_add(&made, 1));
  }
  /* Opened as files of /dev/shm (which shm_open is): never through a symbolic link, never
   * blocking on a FIFO. */
  const int flags = O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK;
  for (int attempt = 0; attempt < 100; attempt++) {
    shm_path(name, path, sizeof path);
    int fd = open(path, flags | O_CREAT | O_EXCL, 0600);
    if (fd >= 0) {
      struct shared_cache *c = NULL;
      bool again;
      tessera_status st = make_segment(fd, name, o, &c, &again);
      if (st != TESSERA_OK || again) {
        if (st != TESSERA_OK && still_named(fd, name))
          shm_unlink(name);
        close(fd);
        if (st != TESSERA_OK)
          return st;
        continue;
      }
      *out = c;
      return TESSERA_OK;
    }
    if (errno != EEXIST)
      return tsr_error(TESSERA_E_IO, "cannot make shared cache %s: %s", name, strerror(errno));
    if (!o->name) {
      /* A name of our own making is taken (left by a dead process whose pid this one got):
       * never attach to it; take the next. */
      snprintf(name, sizeof name, "/tessera-%d-%u", (int)getpid(), atomic_fetch_add(&made, 1));
      continue;
    }
    fd = open(path, flags);
    if (fd < 0) {
      if (errno == ENOENT)
        continue; /* removed between the two opens */
      return tsr_error(errno == ELOOP ? TESSERA_E_ARGUMENT : TESSERA_E_IO,
                       "cannot open shared cache %s: %s", name,
                       errno == ELOOP ? "it is a symbolic link (refused)" : strerror(errno));
    }
    struct shared_cache *c = NULL;
    bool again = false;
    tessera_status st = check_owner(fd, name);
    if (st == TESSERA_OK)
      st = attach_segment(fd, name, o->record_stats != 0, &c, &again);
    if (st != TESSERA_OK || again) {
      close(fd);
      if (st != TESSERA_OK)
        return st;
      continue;
    }
    *out = c;
    return TESSERA_OK;
  }
  return tsr_error(TESSERA_E_IO, "shared cache %s keeps being removed while attaching", name);
}

/* ---- listing and removing segments ---- */

/* Reads the header of segment `name` ("/..."): 1 if it is tessera's, 0 if not, -1 if it
 * cannot be read. */
static int read_header(int fd, struct header *h, uint64_t *size) {
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
    return -1;
  *size = (uint64_t)st.st_size;
  memset(h, 0, sizeof *h);
  ssize_t n = pread(fd, h, sizeof *h, 0);
  if (n < (ssize_t)sizeof h->magic)
    return 0;
  if (h->magic != SEGMENT_MAGIC)
    return 0;
  if (n < (ssize_t)sizeof *h)
    atomic_store(&h->ready, 0);
  return 1;
}

static void describe(int fd, const char *name, const struct header *h, uint64_t size,
                     tessera_shared_cache_info *info) {
  tessera_shared_cache_info t = {.struct_size = sizeof t};
  snprintf(t.name, sizeof t.name, "%s", name);
  t.segment_bytes = size;
  t.ready = atomic_load(&h->ready) && header_sane(h, size);
  if (t.ready) {
    t.memory_capacity = h->memory_capacity;
    t.item_capacity = h->item_capacity;
    t.users = live_users(fd);
    /* The shards' counters, read without their locks: a snapshot for a listing. */
    for (uint32_t s = 0; s < h->nshards; s++) {
      struct shard sh;
      off_t at =
          (off_t)(align_up(sizeof(struct header), 64) + align_up(sizeof(struct shard), 64) * s);
      if (pread(fd, &sh, sizeof sh, at) != (ssize_t)sizeof sh)
        continue;
      t.hits += sh.hits;
      t.misses += sh.misses;
      t.evictions += sh.evictions;
      t.items += sh.items;
      t.bytes += sh.bytes;
    }
  }
  tsr_abi_copy_out(info, &t, sizeof t);
}

TESSERA_API tessera_status tessera_shared_cache_list(tessera_shared_cache_info *infos,
                                                     size_t capacity, size_t *count) {
  if (!count || (capacity && !infos))
    return tsr_error(TESSERA_E_ARGUMENT, "NULL count, or NULL infos with a capacity");
  for (size_t i = 0; i < capacity; i++) {
    char what[48];
    snprintf(what, sizeof what, "infos[%zu]", i);
    tessera_status st = tsr_abi_check(&infos[i], what);
    if (st != TESSERA_OK)
      return st;
  }
  *count = 0;
  DIR *d = opendir(SHM_DIR);
  if (!d)
    return tsr_error(TESSERA_E_IO, "cannot list " SHM_DIR ": %s", strerror(errno));
  struct header *h = tsr_malloc(sizeof *h);
  if (!h) {
    closedir(d);
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  }
  struct dirent *de;
  while ((de = readdir(d)) != NULL) {
    char name[TESSERA_SHARED_CACHE_NAME_MAX + 2];
    if (de->d_name[0] == '.' || !normalize_name(de->d_name, name, sizeof name))
      continue;
    int fd = openat(dirfd(d), de->d_name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
      continue;
    uint64_t size;
    if (read_header(fd, h, &size) == 1) {
      if (*count < capacity)
        describe(fd, name, h, size, &infos[*count]);
      (*count)++;
    }
    close(fd);
  }
  closedir(d);
  tsr_free(h);
  return TESSERA_OK;
}

TESSERA_API tessera_status tessera_shared_cache_remove(const char *name, int32_t force) {
  char full[TESSERA_SHARED_CACHE_NAME_MAX + 2];
  if (!normalize_name(name, full, sizeof full))
    return tsr_error(TESSERA_E_ARGUMENT, "'%s' is not a shared cache name", name ? name : "(null)");
  int fd = shm_open(full, O_RDWR | O_CLOEXEC, 0);
  if (fd < 0)
    return tsr_error(TESSERA_E_IO, "%s: %s", full,
                     errno == ENOENT ? "no such shared cache" : strerror(errno));
  struct header *h = tsr_malloc(sizeof *h);
  if (!h) {
    close(fd);
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  }
  uint64_t size = 0;
  int kind = read_header(fd, h, &size);
  bool ready = kind == 1 && atomic_load(&h->ready) && header_sane(h, size);
  tsr_free(h);
  if (kind != 1) {
    close(fd);
    return tsr_error(TESSERA_E_ARGUMENT, "%s is not a tessera cache; left alone", full);
  }
  /* A robust mutex keeps the links of its locker's list of held mutexes in itself, and the
   * unlock writes through them: whoever else may write the segment could make this process
   * write where they chose. The lock of a segment this user could not have made alone is
   * left alone (no attacher of this user's would use such a segment anyway). */
  struct stat sb;
  bool trusted = fstat(fd, &sb) == 0 && sb.st_uid == geteuid() && (sb.st_mode & 077) == 0;
  tessera_status st = TESSERA_OK;
  if (ready && !trusted) {
    unsigned live = live_users(fd);
    if (live && !force)
      st = tsr_error(TESSERA_E_ARGUMENT,
                     "%s is in use by %u process%s; force removes it anyway (they keep "
                     "using it until they detach)",
                     full, live, live == 1 ? "" : "es");
    else if (!still_named(fd, full))
      st = tsr_error(TESSERA_E_IO, "%s: no such shared cache (removed meanwhile)", full);
    else if (shm_unlink(full) != 0)
      st = tsr_error(TESSERA_E_IO, "cannot remove %s: %s", full, strerror(errno));
  } else if (ready) {
    /* Under the user table's lock, so no process attaches meanwhile; and only if the name
     * still is this segment's (its last user may have removed it, and another process made a
     * new one of that name, since it was opened here). */
    struct header *m = mmap(NULL, sizeof *m, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
      close(fd);
      return tsr_error(TESSERA_E_IO, "cannot map %s: %s", full, strerror(errno));
    }
    if (!lock_users(m)) {
      st = tsr_error(TESSERA_E_IO, "%s: its user table cannot be locked", full);
    } else {
      unsigned live = live_users(fd);
      if (atomic_load(&m->unlinked) || !still_named(fd, full))
        st = tsr_error(TESSERA_E_IO, "%s: no such shared cache (removed meanwhile)", full);
      else if (live && !force)
        st = tsr_error(TESSERA_E_ARGUMENT,
                       "%s is in use by %u process%s; force removes it anyway (they keep "
                       "using it until they detach)",
                       full, live, live == 1 ? "" : "es");
      else {
        atomic_store(&m->unlinked, 1);
        if (shm_unlink(full) != 0)
          st = tsr_error(TESSERA_E_IO, "cannot remove %s: %s", full, strerror(errno));
      }
      pthread_mutex_unlock(&m->users_lock);
    }
    munmap(m, sizeof *m);
  } else if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    /* Its maker holds the lock while it makes it: not stale. */
    st = tsr_error(TESSERA_E_ARGUMENT, "%s is being made by a live process; left alone", full);
  } else {
    if (!still_named(fd, full))
      st = tsr_error(TESSERA_E_IO, "%s: no such shared cache (removed meanwhile)", full);
    else if (shm_unlink(full) != 0)
      st = tsr_error(TESSERA_E_IO, "cannot remove %s: %s", full, strerror(errno));
    flock(fd, LOCK_UN);
  }
  close(fd);
  return st;
}
