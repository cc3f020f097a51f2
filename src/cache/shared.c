/* The shared-memory tile cache: one named POSIX shared-memory segment (/dev/shm/NAME) holding
 * the index and the decoded tiles, used by every process attached to it.
 *
 * Layout: a header (geometry, a table of user slots), then up to 16 shards, each with its
 * own robust process-shared mutex, hash table, S3-FIFO queues (as in process.c) and its own
 * part of the tile memory, cut into 64 KiB chunks. A tile takes the chunks its bytes need,
 * chained through a per-chunk `next` array, so memory never fragments and the byte budget is
 * the chunk memory itself. Everything is addressed by index, never by pointer: each process
 * maps the segment at its own address.
 *
 * Nothing read from the segment is trusted. Only its owner may attach, and only to a segment
 * closed to group and others; the geometry is copied at attach and the shards' arrays placed
 * from that copy; every index taken from the segment is range-checked and every walk bounded
 * before it is followed. An entry carries a seal (a hash of its key, size, chain head, state
 * and loader), and each chunk in use names its entry and its place in that entry's chain, so
 * a hit reads only chunks that are provably the tile's. A shard found inconsistent is rebuilt
 * from what still checks out; the read goes around the cache.
 *
 * A process may be killed or stopped at any moment, so nothing it holds may cost others more
 * than a bounded wait:
 * - Readers paint from a tile in place while holding its shard's lock, instead of pinning
 *   it (a pin would outlive a killed reader; a lock does not). The lock is held for the
 *   copy into the caller's buffers only, never across a decode.
 * - Every wait for a shard lock is bounded (LOCK_WAIT_NS). A wait that runs out marks the
 *   shard stuck for this process for STUCK_NS, during which it only tries the lock, and goes
 *   around the cache: a process stopped holding a lock (SIGSTOP, a debugger, a frozen cgroup)
 *   costs the others one wait per shard, not a hang.
 * - A miss reserves the entry (LOADING, stamped with the loader's user slot and that slot's
 *   generation) under the lock, decodes without the lock, then copies into its chunks and
 *   publishes it under the lock, if its ticket still stands. Others wanting it poll; if its
 *   loader has died they drop the entry and load it themselves; if it is alive but has not
 *   published after LOAD_WAIT_NS, they take the entry over (a new ticket): a stopped loader
 *   costs one wait, once.
 * - A process killed while holding a shard lock leaves it to the next locker as EOWNERDEAD.
 *   The lists of a shard (hash chains, queues, free lists) are derived data; an entry's state,
 *   key, size, seal and chunk chain are the truth. The next locker rebuilds the lists from the
 *   entries, keeping the sealed ready tiles whose chunk chains check out and the tiles of live
 *   loaders, and drops the rest: whatever the dead process was writing.
 *
 * Liveness is what the kernel says, not /proc: each attachment holds an open file description
 * of the segment and on it an OFD lock of one byte, at the offset of its user slot. The
 * kernel drops the lock when the process dies, in whatever pid namespace either process runs
 * (two containers sharing /dev/shm see each other's pids as nothing, or as others). A forked
 * child opens its own description before it takes a slot: the one it inherits is its
 * parent's, and its locks with it.
 *
 * The segment lives as long as some process uses it: the last attachment to detach removes
 * the name. A maker holds an exclusive flock on the segment until it is ready; a segment that
 * has tessera's magic, is not ready, and can be locked was left by a maker that died: the
 * next process to want the name removes it and makes a new one. */
#include <dirent.h>
#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#if defined(__SANITIZE_THREAD__)
#define TSR_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TSR_TSAN 1
#endif
#endif
#if TSR_TSAN
#include <sanitizer/tsan_interface.h>
#endif

#include "abi.h"
#include "alloc.h"
#include "cache/cache.h"
#include "error.h"

#define SEGMENT_MAGIC 0x3145484341435354ull /* "TSCACHE1" read little-endian */
#define SEGMENT_VERSION 4u
#define CHUNK_BYTES ((uint64_t)64 << 10)
#define NIL UINT32_MAX
#define MAX_USERS 1024
#define SHM_DIR "/dev/shm"
/* How long a reader waits for a live process loading the tile it wants before taking the
 * entry over; how long a shard lock is waited for, and how long after such a wait ran out the
 * shard is only tried; how long the user table's lock is waited for; how long an attacher
 * waits for a segment nobody has locked to be made (and a maker for the lock on the segment it
 * has just made, which an attacher holds for a moment), and for its maker (who reserves all
 * its memory first) to finish. */
#define LOAD_WAIT_NS (2ull * 1000000000ull)
#define LOCK_WAIT_NS (1ull * 1000000000ull)
#define STUCK_NS (10ull * 1000000000ull)
#define USERS_WAIT_NS (5ull * 1000000000ull)
#define READY_WAIT_NS (2ull * 1000000000ull)
#define MAKER_WAIT_NS (120ull * 1000000000ull)

enum state { FREE, LOADING, READY };
enum queue { Q_NONE, Q_SMALL, Q_MAIN };

struct header {
  uint64_t magic;
  uint32_t version;
  uint32_t header_bytes; /* sizeof(struct header): a check on the layout */
  _Atomic uint32_t ready;
  _Atomic uint32_t unlinked; /* the name was removed: attachers must make a new segment */
  uint32_t nshards;
  uint32_t chunk_bytes;
  uint32_t chunks, entries, buckets;   /* per shard */
  uint32_t shard_struct, entry_struct; /* sizeof(struct shard), sizeof(struct entry) */
  uint32_t pad;
  uint64_t segment_bytes, memory_capacity, item_capacity;
  pthread_mutex_t users_lock; /* orders attaching (which checks unlinked) against the last
                                 detach (which sets it) */
  /* Bumped by whoever takes slot i, which it does by winning the slot's OFD lock: a loader
   * is alive while its slot is locked and still of its generation. */
  _Atomic uint32_t generation[MAX_USERS];
};

/* Every field after lock is guarded by it. */
struct shard {
  pthread_mutex_t lock;
  uint64_t hits, misses, evictions, items, bytes;
  uint64_t small_bytes, main_bytes;
  uint32_t small_head, small_tail, main_head, main_tail; /* head newest */
  uint32_t free_entries, free_chunks, nfree_chunks, pad;
};

struct entry {
  struct tsr_cache_key key;
  uint64_t bytes;
  uint32_t loader_slot, loader_gen;  /* LOADING: the user slot loading it, and its generation */
  uint32_t ticket;                   /* bumped each time the entry is reserved or taken over */
  uint32_t seal;                     /* seal_of(the entry) while LOADING or READY */
  uint32_t hnext, prev, next, first; /* hash chain (or free list), queue (next older), chunks */
  uint8_t state, queue, freq, pad;
};

/* Where one shard's arrays lie, from the geometry copied at attach (never from the segment). */
struct place {
  uint64_t entries_off, buckets_off, next_off, owner_off, data_off;
};

struct shared_cache {
  struct tsr_cache base;
  uint8_t *addr;
  size_t size;
  struct header *h;
  int fd; /* this attachment's open file description of the segment: its slot's lock is on it */
  /* The segment's geometry as checked at attach; constant. */
  uint32_t nshards, chunks, entries, buckets;
  struct place place[TSR_CACHE_MAX_SHARDS];
  _Atomic int slot;       /* this attachment's user slot (-1: none); written under the users
                             lock */
  uint32_t gen;           /* the slot's generation; written with slot, before registered */
  bool detached;          /* guarded by the users lock */
  atomic_bool registered; /* a slot was taken (or need not be) */
  _Atomic uint64_t stuck_until[TSR_CACHE_MAX_SHARDS]; /* monotonic ns: only try the lock */
  uint64_t dev, ino; /* the segment's file, to tell it from a newer one of that name */
  char name[TESSERA_SHARED_CACHE_NAME_MAX + 2];
};

/* Everything a shard operation needs, its arrays placed and its bounds at hand. */
struct view {
  struct shard *sh;
  struct entry *E;
  uint32_t *B, *next;
  uint64_t *owner; /* chunk k: 0 if free, else owner_tag(its entry, its place in the chain) */
  uint8_t *data;
  uint32_t entries, chunks, buckets;
};

static uint64_t owner_tag(uint32_t i, uint32_t s) { return ((uint64_t)(i + 1) << 32) | s; }

/* 64 bits wide: a size read from the segment may be anything, and must not wrap to a few. */
static uint64_t chunks_for(uint64_t bytes) {
  return bytes / CHUNK_BYTES + (bytes % CHUNK_BYTES != 0);
}

/* Another process may write the segment at any moment, lock or no lock. An index or size
 * taken from it is read once, through these, into a local that is checked and then used: a
 * plain read could be made again by the compiler, after the check. */
static uint32_t once32(const uint32_t *p) { return *(const volatile uint32_t *)p; }
static uint64_t once64(const uint64_t *p) { return *(const volatile uint64_t *)p; }

/* An entry as it stands now, to check and use as one copy. */
static struct entry snapshot(const struct entry *e) {
  struct entry s;
  memcpy(&s, e, sizeof s);
  atomic_signal_fence(memory_order_seq_cst); /* s is not to be read again from e */
  return s;
}

/* ---- processes ---- */

/* Whether user slot `slot` is held by a live attachment other than the one behind fd. */
static bool slot_locked(int fd, uint32_t slot) {
  struct flock l = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = slot, .l_len = 1};
  if (fd < 0 || fcntl(fd, F_OFD_GETLK, &l) != 0)
    return true; /* cannot tell: taken for alive, the safe side */
  return l.l_type != F_UNLCK;
}

/* Whether this attachment is e's loader: a thread of this process is. */
static bool loaded_by_me(const struct shared_cache *c, const struct entry *e) {
  return c->slot >= 0 && e->loader_slot == (uint32_t)c->slot && e->loader_gen == c->gen;
}

static bool loader_alive(const struct shared_cache *c, const struct entry *e) {
  uint32_t slot = once32(&e->loader_slot), gen = once32(&e->loader_gen);
  if (c->slot >= 0 && slot == (uint32_t)c->slot && gen == c->gen)
    return true;
  return slot < MAX_USERS &&
         atomic_load_explicit(&c->h->generation[slot], memory_order_relaxed) == gen &&
         slot_locked(c->fd, slot);
}

static uint64_t monotonic_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static void sleep_ns(uint64_t ns) {
  struct timespec t = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
  nanosleep(&t, NULL);
}

/* Locks a robust process-shared mutex, waiting at most ns (0: only trying). Returns 0,
 * EOWNERDEAD (locked; its last holder died), or an error (ETIMEDOUT, EBUSY, ...). */
static int lock_within(pthread_mutex_t *m, uint64_t ns) {
  if (ns == 0)
    return pthread_mutex_trylock(m);
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t); /* pthread_mutex_timedlock's clock */
  uint64_t at = (uint64_t)t.tv_nsec + ns;
  t.tv_sec += (time_t)(at / 1000000000ull);
  t.tv_nsec = (long)(at % 1000000000ull);
  int r = pthread_mutex_timedlock(m, &t);
#if TSR_TSAN
  /* ThreadSanitizer's interceptor records a timed lock only when it returns 0; one whose
   * holder died is this thread's all the same. */
  if (r == EOWNERDEAD) {
    __tsan_mutex_pre_lock(m, __tsan_mutex_try_lock);
    __tsan_mutex_post_lock(m, __tsan_mutex_try_lock, 0);
  }
#endif
  return r;
}

/* ---- the test hook ---- */

/* TESSERA_TEST_CACHE_STALL=POINT:N:PATH, read when a shared cache is configured: the N-th
 * tile this process publishes (POINT "locked": holding the shard lock, halfway through
 * linking the tile) or reserves (POINT "loading": the lock let go, before decoding), or the
 * N-th segment it makes (POINT "making": locked, its magic written, not ready; POINT
 * "created": the file just created, not yet locked), stalls for good, after writing the pid
 * to PATH; with "stop" before POINT it stops itself (SIGSTOP) instead, to go on when
 * continued. Tests stop, continue or kill it there. */
enum hook_point { HOOK_NONE, HOOK_LOCKED, HOOK_LOADING, HOOK_MAKING, HOOK_CREATED };
static struct {
  atomic_int point;
  bool stop;
  long n;
  char path[512];
  atomic_long count;
} hook;

static void hook_read_env(void) {
  const char *v = getenv("TESSERA_TEST_CACHE_STALL");
  atomic_store(&hook.point, HOOK_NONE);
  if (!v)
    return;
  char point[16];
  long n;
  int used = 0;
  if (sscanf(v, "%15[a-z]:%ld:%n", point, &n, &used) != 2 || used == 0 || n < 1)
    return;
  snprintf(hook.path, sizeof hook.path, "%s", v + used);
  hook.n = n;
  hook.stop = strncmp(point, "stop", 4) == 0; /* not at "locked": it would go on halfway */
  const char *p = point + (hook.stop ? 4 : 0);
  atomic_store(&hook.count, 0);
  atomic_store(&hook.point, strcmp(p, "locked") == 0    ? (hook.stop ? HOOK_NONE : HOOK_LOCKED)
                            : strcmp(p, "loading") == 0 ? HOOK_LOADING
                            : strcmp(p, "making") == 0  ? HOOK_MAKING
                            : strcmp(p, "created") == 0 ? HOOK_CREATED
                                                        : HOOK_NONE);
}

/* Whether this is the time to stall at point (counts the calls at that point). */
static bool hook_due(int point) {
  return atomic_load_explicit(&hook.point, memory_order_relaxed) == point &&
         atomic_fetch_add(&hook.count, 1) + 1 == hook.n;
}

static void hook_stall(void) {
  int fd = open(hook.path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd >= 0) {
    char buf[32];
    int len = snprintf(buf, sizeof buf, "%d\n", (int)getpid());
    if (write(fd, buf, (size_t)len) < 0)
      (void)0;
    close(fd);
  }
  if (hook.stop) {
    raise(SIGSTOP);
    return;
  }
  for (;;)
    pause();
}

/* ---- layout ---- */

static uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

/* Places the shards' arrays after the header; returns the segment's size. The sizes are
 * bounded (chunks < 2^32 per shard, 16 shards), so nothing overflows. */
static uint64_t layout(uint32_t nshards, uint32_t chunks, uint32_t entries, uint32_t buckets,
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

static struct shard *shard_at(const struct shared_cache *c, uint32_t i) {
  return (struct shard *)(c->addr + align_up(sizeof(struct header), 64) +
                          align_up(sizeof(struct shard), 64) * i);
}

static struct view view_of(const struct shared_cache *c, uint32_t si) {
  const struct place *p = &c->place[si];
  return (struct view){.sh = shard_at(c, si),
                       .E = (struct entry *)(c->addr + p->entries_off),
                       .B = (uint32_t *)(c->addr + p->buckets_off),
                       .next = (uint32_t *)(c->addr + p->next_off),
                       .owner = (uint64_t *)(c->addr + p->owner_off),
                       .data = c->addr + p->data_off,
                       .entries = c->entries,
                       .chunks = c->chunks,
                       .buckets = c->buckets};
}

static uint8_t *chunk_data(const struct view *v, uint32_t k) {
  return v->data + (uint64_t)k * CHUNK_BYTES;
}

/* ---- one shard's index (its lock held) ----
 * A function returning bool returns false when it finds the shard inconsistent (an index out
 * of range, a link that does not lead back, a walk longer than the shard): the caller
 * rebuilds it and goes around the cache. */

static uint32_t seal_of(const struct entry *e, uint32_t i) {
  uint64_t x = tsr_cache_key_hash(&e->key);
  const uint64_t parts[] = {e->bytes, ((uint64_t)e->first << 32) | e->ticket,
                            ((uint64_t)e->loader_slot << 32) | e->loader_gen,
                            ((uint64_t)e->state << 32) | i};
  for (size_t p = 0; p < sizeof parts / sizeof parts[0]; p++) {
    x ^= parts[p] + 0x9E3779B97F4A7C15u + (x << 6) + (x >> 2);
    x *= 0xBF58476D1CE4E5B9u;
  }
  return (uint32_t)((x ^ (x >> 31)) >> 16);
}

static void seal(struct entry *e, uint32_t i) { e->seal = seal_of(e, i); }

static uint32_t *bucket(const struct view *v, uint64_t hash) {
  return &v->B[(hash >> 4) & (v->buckets - 1)];
}

/* Sets *at to the entry holding key k, or NIL. */
static bool find(const struct view *v, const struct tsr_cache_key *k, uint64_t hash, uint32_t *at) {
  uint32_t steps = 0;
  for (uint32_t i = once32(bucket(v, hash)); i != NIL; i = once32(&v->E[i].hnext)) {
    if (i >= v->entries || steps++ >= v->entries)
      return false;
    if (tsr_cache_key_equal(&v->E[i].key, k)) {
      *at = i;
      return true;
    }
  }
  *at = NIL;
  return true;
}

static bool queue_push(const struct view *v, uint32_t i, int q) {
  struct shard *sh = v->sh;
  uint32_t *head = q == Q_SMALL ? &sh->small_head : &sh->main_head;
  uint32_t *tail = q == Q_SMALL ? &sh->small_tail : &sh->main_tail;
  uint32_t old = once32(head);
  if (old != NIL && old >= v->entries)
    return false;
  struct entry *e = &v->E[i];
  e->queue = (uint8_t)q;
  e->prev = NIL;
  e->next = old;
  if (old != NIL)
    v->E[old].prev = i;
  else
    *tail = i;
  *head = i;
  *(q == Q_SMALL ? &sh->small_bytes : &sh->main_bytes) += e->bytes;
  return true;
}

static bool queue_unlink(const struct view *v, uint32_t i) {
  struct shard *sh = v->sh;
  struct entry *e = &v->E[i];
  int q = e->queue;
  if (q == Q_NONE)
    return true;
  if (q != Q_SMALL && q != Q_MAIN)
    return false;
  uint32_t *head = q == Q_SMALL ? &sh->small_head : &sh->main_head;
  uint32_t *tail = q == Q_SMALL ? &sh->small_tail : &sh->main_tail;
  uint32_t prev = once32(&e->prev), next = once32(&e->next);
  if ((prev != NIL && (prev >= v->entries || v->E[prev].next != i)) ||
      (next != NIL && (next >= v->entries || v->E[next].prev != i)) ||
      (prev == NIL && *head != i) || (next == NIL && *tail != i))
    return false;
  if (prev != NIL)
    v->E[prev].next = next;
  else
    *head = next;
  if (next != NIL)
    v->E[next].prev = prev;
  else
    *tail = prev;
  *(q == Q_SMALL ? &sh->small_bytes : &sh->main_bytes) -= e->bytes;
  e->queue = Q_NONE;
  return true;
}

/* Follows entry i's chain of chunks to its s-th chunk's successor: k is its s-th chunk. */
static bool chain_next(const struct view *v, uint32_t i, uint32_t s, uint32_t k, uint32_t *out) {
  uint32_t n = once32(&v->next[k]);
  if (n >= v->chunks || v->owner[n] != owner_tag(i, s + 1))
    return false;
  *out = n;
  return true;
}

/* Whether k, read as entry i's first chunk, is tagged so. */
static bool chain_head(const struct view *v, uint32_t i, uint32_t k) {
  return k < v->chunks && v->owner[k] == owner_tag(i, 0);
}

/* Frees entry i (ready or loading): its chunks and slot go back to the free lists. Its state
 * changes first, so a process killed halfway leaves nothing that a rebuild would keep. */
static bool free_entry(const struct view *v, uint32_t i) {
  struct shard *sh = v->sh;
  struct entry *e = &v->E[i];
  const struct entry s = snapshot(e);
  if (s.seal != seal_of(&s, i))
    return false; /* its size and chain cannot be believed */
  e->state = FREE;
  atomic_signal_fence(memory_order_seq_cst); /* FREE before the lists change */
  uint32_t *p = bucket(v, tsr_cache_key_hash(&s.key)), j;
  for (uint32_t steps = 0; (j = once32(p)) != i && j != NIL; p = &v->E[j].hnext)
    if (j >= v->entries || steps++ >= v->entries)
      return false;
  if (j == i)
    *p = e->hnext;
  if (!queue_unlink(v, i))
    return false;
  uint64_t n = chunks_for(s.bytes);
  uint32_t last = s.first;
  if (n == 0 || n > v->chunks || !chain_head(v, i, last))
    return false;
  /* Each chunk's successor is checked to be the entry's before its tag is cleared; a chain
   * found broken halfway leaves chunks tagged free but unlisted, which the rebuild lists. */
  for (uint32_t at = 0; at + 1 < n; at++) {
    uint32_t after;
    if (!chain_next(v, i, at, last, &after))
      return false;
    v->owner[last] = 0;
    last = after;
  }
  v->owner[last] = 0;
  v->next[last] = sh->free_chunks;
  sh->free_chunks = s.first;
  sh->nfree_chunks += (uint32_t)n;
  sh->items--;
  sh->bytes -= s.bytes;
  e->hnext = sh->free_entries;
  sh->free_entries = i;
  return true;
}

/* Evicts one tile, S3-FIFO style (see process.c); *evicted false when the queues are empty.
 * Tiles being loaded are in no queue and never evicted. */
static bool evict_one(const struct view *v, bool *evicted) {
  struct shard *sh = v->sh;
  uint64_t budget = (uint64_t)v->chunks * CHUNK_BYTES;
  uint64_t steps = (TSR_CACHE_MAX_FREQ + 2) * ((uint64_t)v->entries + 1);
  *evicted = false;
  while (steps-- > 0) {
    bool from_small = sh->small_bytes * TSR_CACHE_SMALL_PART > budget || sh->main_tail == NIL;
    uint32_t i = once32(from_small ? &sh->small_tail : &sh->main_tail);
    if (i == NIL) {
      from_small = !from_small;
      i = once32(from_small ? &sh->small_tail : &sh->main_tail);
      if (i == NIL)
        return true;
    }
    if (i >= v->entries || v->E[i].queue != (from_small ? Q_SMALL : Q_MAIN) || !queue_unlink(v, i))
      return false;
    struct entry *e = &v->E[i];
    if (e->freq > 0) {
      if (from_small || e->freq > TSR_CACHE_MAX_FREQ)
        e->freq = 0; /* read again while new: it is worth keeping */
      else
        e->freq--;
      if (!queue_push(v, i, Q_MAIN))
        return false;
      continue;
    }
    if (!free_entry(v, i))
      return false;
    sh->evictions++;
    *evicted = true;
    return true;
  }
  return false; /* queues that never run out loop */
}

/* Frees the entries whose loaders died while decoding; *n: how many. With nothing left to
 * evict, some entry must be loading: if none is, the shard's counts are wrong. */
static bool sweep_dead_loaders(const struct shared_cache *c, const struct view *v, unsigned *n) {
  unsigned loading = 0;
  *n = 0;
  for (uint32_t i = 0; i < v->entries; i++)
    if (v->E[i].state == LOADING) {
      loading++;
      if (loader_alive(c, &v->E[i]))
        continue;
      if (!free_entry(v, i))
        return false;
      (*n)++;
    }
  return loading > 0;
}

/* Whether entry i is whole: sealed, of a sane size, its chain in range and each chunk tagged
 * as its own, at its place. */
static bool entry_whole(const struct view *v, uint32_t i) {
  const struct entry e = snapshot(&v->E[i]);
  uint64_t n = chunks_for(e.bytes);
  if (e.seal != seal_of(&e, i) || e.bytes == 0 || n > v->chunks || !chain_head(v, i, e.first))
    return false;
  for (uint32_t s = 0, k = e.first; s + 1 < n; s++)
    if (!chain_next(v, i, s, k, &k))
      return false;
  return true;
}

/* After a process died holding the shard's lock, or the shard was found inconsistent:
 * rebuilds the lists from the entries that are whole. Reads only indices it checks. */
static void rebuild(const struct shared_cache *c, const struct view *v) {
  struct shard *sh = v->sh;
  struct entry *E = v->E;
  for (uint32_t b = 0; b < v->buckets; b++)
    v->B[b] = NIL;
  sh->small_head = sh->small_tail = sh->main_head = sh->main_tail = NIL;
  sh->small_bytes = sh->main_bytes = 0;
  sh->items = sh->bytes = 0;
  sh->free_entries = NIL;
  for (uint32_t i = v->entries; i-- > 0;) {
    struct entry *e = &E[i];
    bool keep =
        (e->state == READY || (e->state == LOADING && loader_alive(c, e))) && entry_whole(v, i);
    uint64_t hash = tsr_cache_key_hash(&e->key);
    uint32_t dup = NIL;
    if (keep && (!find(v, &e->key, hash, &dup) || dup != NIL))
      keep = false; /* a duplicate: the first one found stays */
    e->queue = Q_NONE;
    if (keep) {
      e->hnext = *bucket(v, hash);
      *bucket(v, hash) = i;
      if (e->state == READY) {
        e->freq = 0;
        queue_push(v, i, Q_MAIN); /* cannot fail: the queue was built here */
      }
      sh->items++;
      sh->bytes += e->bytes;
    } else {
      e->state = FREE;
      e->hnext = sh->free_entries;
      sh->free_entries = i;
    }
  }
  /* A chunk stays in use if its tag names a kept entry's place; the rest are free. */
  sh->free_chunks = NIL;
  sh->nfree_chunks = 0;
  for (uint32_t k = v->chunks; k-- > 0;) {
    uint64_t t = once64(&v->owner[k]);
    uint32_t i = (uint32_t)(t >> 32) - 1, s = (uint32_t)t;
    if (t != 0 && i < v->entries && E[i].state != FREE && s < chunks_for(E[i].bytes))
      continue;
    v->owner[k] = 0;
    v->next[k] = sh->free_chunks;
    sh->free_chunks = k;
    sh->nfree_chunks++;
  }
}

/* Locks shard si, repairing it if its last holder died; false if it cannot be locked within
 * LOCK_WAIT_NS, or at once while the shard is marked stuck. */
static bool lock_shard(struct shared_cache *c, uint32_t si) {
  struct shard *sh = shard_at(c, si);
  uint64_t now = monotonic_ns();
  bool stuck = now < atomic_load_explicit(&c->stuck_until[si], memory_order_relaxed);
  int r = lock_within(&sh->lock, stuck ? 0 : LOCK_WAIT_NS);
  if (r == ETIMEDOUT || r == EBUSY) {
    if (!stuck)
      atomic_store_explicit(&c->stuck_until[si], monotonic_ns() + STUCK_NS, memory_order_relaxed);
    return false;
  }
  if (stuck && (r == 0 || r == EOWNERDEAD))
    atomic_store_explicit(&c->stuck_until[si], 0, memory_order_relaxed);
  if (r == EOWNERDEAD) {
    struct view v = view_of(c, si);
    rebuild(c, &v);
    pthread_mutex_consistent(&sh->lock);
    return true;
  }
  return r == 0;
}

static void unlock_shard(struct shard *sh) { pthread_mutex_unlock(&sh->lock); }

/* The shard was found inconsistent: rebuilt, and let go. */
static void repair_and_unlock(const struct shared_cache *c, const struct view *v) {
  rebuild(c, v);
  unlock_shard(v->sh);
}

/* Bytes of scratch a hit needs: the row pointers, then room for the rows that straddle two
 * chunks (at most one per chunk boundary, since rows do not overlap, and no more than the
 * rows asked for: a wide strip has few rows over many chunks). */
static size_t list_bytes(const struct tsr_cache_access *a) {
  return (size_t)align_up((uint64_t)a->rows * sizeof(uint8_t *), 64);
}
static size_t hit_bytes(const struct tsr_cache_access *a) {
  uint64_t chunks = chunks_for(a->bytes);
  return list_bytes(a) + (size_t)(chunks < a->rows ? chunks : a->rows) * a->row_bytes;
}

/* Points a->row_list at the rows asked for, in place in entry i's chunks, copying only the
 * rows that straddle two chunks into the scratch. Each chunk is checked to be the entry's,
 * at its place, before it is read. The shard stays locked while they are read. */
static bool map_rows(const struct view *v, uint32_t i, struct tsr_cache_access *a) {
  const uint8_t **list = (const uint8_t **)(void *)a->scratch->data;
  uint8_t *spill = a->scratch->data + list_bytes(a);
  uint32_t k = once32(&v->E[i].first), s = 0;
  if (!chain_head(v, i, k))
    return false;
  uint64_t chunk_start = 0;
  for (uint32_t r = 0; r < a->rows; r++) {
    uint64_t at = a->offset + (uint64_t)r * a->stride;
    for (; at >= chunk_start + CHUNK_BYTES; s++, chunk_start += CHUNK_BYTES)
      if (!chain_next(v, i, s, k, &k))
        return false;
    uint64_t in = at - chunk_start;
    if (in + a->row_bytes <= CHUNK_BYTES) {
      list[r] = chunk_data(v, k) + in;
      continue;
    }
    uint32_t after;
    if (!chain_next(v, i, s, k, &after))
      return false;
    size_t head = (size_t)(CHUNK_BYTES - in);
    memcpy(spill, chunk_data(v, k) + in, head);
    memcpy(spill + head, chunk_data(v, after), a->row_bytes - head);
    list[r] = spill;
    spill += a->row_bytes;
  }
  a->row_list = list;
  return true;
}

/* Copies the loaded tile, of `bytes`, into entry i's chunks (its chain checked as it goes). */
static bool copy_in(const struct view *v, uint32_t i, const uint8_t *src, size_t bytes) {
  uint32_t k = once32(&v->E[i].first);
  if (!chain_head(v, i, k))
    return false;
  uint32_t s = 0;
  for (size_t left = bytes; left > 0; s++) {
    size_t n = left < CHUNK_BYTES ? left : CHUNK_BYTES;
    memcpy(chunk_data(v, k), src, n);
    src += n;
    left -= n;
    if (left > 0 && !chain_next(v, i, s, k, &k))
      return false;
  }
  return true;
}

/* Takes an entry and n chunks off the free lists for key a->key: *at, LOADING for this
 * attachment. NIL in *at (and true) when there is no room. */
static bool reserve(const struct shared_cache *c, const struct view *v,
                    const struct tsr_cache_access *a, uint64_t hash, uint32_t *at) {
  struct shard *sh = v->sh;
  uint32_t n = (uint32_t)chunks_for(a->bytes); /* no more than the shard's chunks: see lookup */
  bool swept = false;
  *at = NIL;
  while (sh->nfree_chunks < n || sh->free_entries == NIL) {
    bool evicted;
    unsigned dead;
    if (!evict_one(v, &evicted))
      return false;
    if (evicted)
      continue;
    if (swept)
      return true; /* every chunk is being loaded into */
    if (!sweep_dead_loaders(c, v, &dead))
      return false;
    if (dead == 0)
      return true;
    swept = true;
  }
  uint32_t i = once32(&sh->free_entries);
  if (i >= v->entries || v->E[i].state != FREE)
    return false;
  struct entry *e = &v->E[i];
  uint32_t first = once32(&sh->free_chunks), last = first;
  for (uint32_t s = 0;; s++) {
    if (last >= v->chunks || v->owner[last] != 0)
      return false; /* the free list is not what its count says */
    v->owner[last] = owner_tag(i, s);
    if (s + 1 == n)
      break;
    last = once32(&v->next[last]);
  }
  sh->free_entries = e->hnext;
  sh->free_chunks = v->next[last];
  v->next[last] = NIL;
  sh->nfree_chunks -= n;
  e->key = a->key;
  e->bytes = a->bytes;
  e->first = first;
  e->loader_slot = (uint32_t)c->slot;
  e->loader_gen = c->gen;
  e->ticket++;
  e->queue = Q_NONE;
  e->freq = 0;
  e->state = LOADING;
  seal(e, i);
  /* The entry is whole and sealed before it is linked: a process killed here leaves an
   * entry a rebuild can judge (only the compiler could reorder; the CPU's stores reach the
   * shared memory in order, or all of them do). */
  atomic_signal_fence(memory_order_seq_cst);
  e->hnext = *bucket(v, hash);
  *bucket(v, hash) = i;
  sh->items++;
  sh->bytes += a->bytes;
  *at = i;
  return true;
}

/* Entry i, LOADING by a loader that has not published in time (stopped, or just slow), is
 * made this attachment's: the old loader's publish will find its ticket gone. */
static void take_over(const struct shared_cache *c, const struct view *v, uint32_t i) {
  struct entry *e = &v->E[i];
  e->state = FREE; /* unsealed while it changes hands */
  atomic_signal_fence(memory_order_seq_cst);
  e->loader_slot = (uint32_t)c->slot;
  e->loader_gen = c->gen;
  e->ticket++;
  e->state = LOADING;
  seal(e, i);
}

/* ---- the interface of cache.h ---- */

static void register_user(struct shared_cache *c);

static enum tsr_cache_result lookup(struct tsr_cache *base, struct tsr_cache_access *a) {
  struct shared_cache *c = (struct shared_cache *)base;
  register_user(c);
  size_t want = hit_bytes(a) > a->bytes ? hit_bytes(a) : a->bytes;
  if (!tsr_scratch_reserve(a->scratch, want))
    return TSR_CACHE_BYPASS;
  a->entry = NULL;
  uint64_t hash = tsr_cache_key_hash(&a->key);
  uint32_t si = (uint32_t)(hash % c->nshards);
  struct view v = view_of(c, si);
  struct shard *sh = v.sh;
  bool count = base->record_stats;
  uint64_t waiting_since = 0, pause_ns = 20000;
  unsigned polls = 0;
  if (!lock_shard(c, si))
    return TSR_CACHE_BYPASS;
  uint32_t i;
  for (;;) {
    if (!find(&v, &a->key, hash, &i))
      goto damaged;
    if (i == NIL)
      break;
    struct entry *e = &v.E[i];
    if (e->seal != seal_of(e, i))
      goto damaged;
    if (e->bytes == 0 || chunks_for(e->bytes) > v.chunks)
      goto damaged; /* sealed, and yet of no size a tile here can have: as good as unsealed */
    if (e->bytes != a->bytes) {
      unlock_shard(sh); /* same key, other geometry: left to age out (see process.c) */
      return TSR_CACHE_BYPASS;
    }
    if (e->state == READY) {
      if (!map_rows(&v, i, a))
        goto damaged;
      if (e->freq < TSR_CACHE_MAX_FREQ)
        e->freq++;
      if (count)
        sh->hits++;
      a->entry = sh; /* locked until tsr_cache_done */
      return TSR_CACHE_HIT;
    }
    if (e->state != LOADING)
      goto damaged;
    /* Being loaded by another thread or process: wait for it, unless its loader is gone (the
     * check asks the kernel, so not at every poll). A loader taking too long, stopped or
     * just slow, loses the entry to this thread. */
    if (polls++ % 8 == 7 && !loader_alive(c, e)) {
      if (!free_entry(&v, i))
        goto damaged;
      continue;
    }
    uint64_t now = monotonic_ns();
    if (!waiting_since)
      waiting_since = now;
    else if (now - waiting_since > LOAD_WAIT_NS) {
      if (c->slot < 0) {
        unlock_shard(sh);
        return TSR_CACHE_BYPASS;
      }
      take_over(c, &v, i);
      if (count)
        sh->misses++;
      goto loading;
    }
    unlock_shard(sh);
    sleep_ns(pause_ns);
    pause_ns = pause_ns < 500000 ? pause_ns * 2 : pause_ns;
    if (!lock_shard(c, si))
      return TSR_CACHE_BYPASS;
  }
  if (count)
    sh->misses++;
  if (!a->admit) {
    unlock_shard(sh);
    return TSR_CACHE_MISS;
  }
  if (c->slot < 0 || chunks_for(a->bytes) > v.chunks) {
    unlock_shard(sh); /* no user slot to load under, or too big */
    return TSR_CACHE_BYPASS;
  }
  if (!reserve(c, &v, a, hash, &i))
    goto damaged;
  if (i == NIL) {
    unlock_shard(sh);
    return TSR_CACHE_BYPASS;
  }
loading:
  a->shard = si;
  a->slot = i;
  a->ticket = v.E[i].ticket;
  unlock_shard(sh);
  if (hook_due(HOOK_LOADING))
    hook_stall();
  a->load = a->scratch->data;
  return TSR_CACHE_LOAD;
damaged:
  repair_and_unlock(c, &v);
  return TSR_CACHE_BYPASS;
}

/* Whether the caller's reservation still stands (shard lock held): not if its loader was
 * taken for dead, or overtaken; the check keeps it from touching a reused entry. */
static bool still_ours(const struct shared_cache *c, const struct view *v,
                       const struct tsr_cache_access *a) {
  const struct entry *e = &v->E[a->slot];
  return e->state == LOADING && e->ticket == a->ticket && loaded_by_me(c, e) &&
         e->seal == seal_of(e, a->slot) && e->bytes == a->bytes;
}

static void publish(struct tsr_cache *base, struct tsr_cache_access *a) {
  struct shared_cache *c = (struct shared_cache *)base;
  struct view v = view_of(c, a->shard);
  struct shard *sh = v.sh;
  struct entry *e = &v.E[a->slot];
  a->src = a->load + a->offset;
  if (!lock_shard(c, a->shard))
    return; /* left LOADING: a waiter takes it over */
  /* Copied in under the lock, after checking the reservation still stands: were this process
   * ever taken for dead, or overtaken, its chunks might be someone else's by now. */
  if (still_ours(c, &v, a)) {
    if (!copy_in(&v, a->slot, a->load, a->bytes)) {
      repair_and_unlock(c, &v);
      return;
    }
    if (hook_due(HOOK_LOCKED)) {
      /* Halfway through linking it into the small queue (head set; its neighbour's link,
       * the tail and the byte count not), for the test that kills it here. */
      e->queue = Q_SMALL;
      e->prev = NIL;
      e->next = sh->small_head;
      sh->small_head = a->slot;
      hook_stall();
    }
    if (!queue_push(&v, a->slot, Q_SMALL)) {
      repair_and_unlock(c, &v);
      return;
    }
    atomic_signal_fence(memory_order_seq_cst); /* the bytes are in before it says READY */
    e->state = READY;
    seal(e, a->slot);
  }
  unlock_shard(sh);
}

static void abandon(struct tsr_cache *base, struct tsr_cache_access *a) {
  struct shared_cache *c = (struct shared_cache *)base;
  struct view v = view_of(c, a->shard);
  if (!lock_shard(c, a->shard))
    return;
  if (still_ours(c, &v, a) && !free_entry(&v, a->slot)) {
    repair_and_unlock(c, &v);
    return;
  }
  unlock_shard(v.sh);
}

static void done(struct tsr_cache *base, struct tsr_cache_access *a) {
  (void)base;
  if (a->entry) /* a hit: its shard was kept locked while the caller read the rows */
    unlock_shard(a->entry);
  a->entry = NULL;
}

static void stats(struct tsr_cache *base, tessera_cache_stats *t) {
  struct shared_cache *c = (struct shared_cache *)base;
  t->memory_capacity = c->h->memory_capacity;
  t->item_capacity = c->h->item_capacity;
  for (uint32_t i = 0; i < c->nshards; i++) {
    struct shard *sh = shard_at(c, i);
    if (!lock_shard(c, i))
      continue;
    t->hits += sh->hits;
    t->misses += sh->misses;
    t->evictions += sh->evictions;
    t->items += sh->items;
    t->bytes += sh->bytes;
    unlock_shard(sh);
  }
}

static void reset_stats(struct tsr_cache *base) {
  struct shared_cache *c = (struct shared_cache *)base;
  for (uint32_t i = 0; i < c->nshards; i++) {
    struct shard *sh = shard_at(c, i);
    if (!lock_shard(c, i))
      continue;
    sh->hits = sh->misses = sh->evictions = 0;
    unlock_shard(sh);
  }
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

/* How many user slots are held by attachments other than fd's (MAX_USERS if it cannot
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

/* Takes a free user slot by locking its byte: -1 if all are taken. The caller holds the
 * users lock. */
static int take_slot(struct shared_cache *c) {
  for (uint32_t i = 0; c->fd >= 0 && i < MAX_USERS; i++) {
    struct flock l = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = i, .l_len = 1};
    if (fcntl(c->fd, F_OFD_SETLK, &l) == 0) {
      c->gen = atomic_fetch_add(&c->h->generation[i], 1) + 1;
      return (int)i;
    }
  }
  return -1;
}

static void release_slot(struct shared_cache *c) {
  struct flock l = {.l_type = F_UNLCK, .l_whence = SEEK_SET, .l_start = c->slot, .l_len = 1};
  fcntl(c->fd, F_OFD_SETLK, &l);
}

/* A forked child becomes a user when it first reads through the cache, not at the fork: a
 * child that goes on to exec another program (a subprocess) must not keep the segment
 * alive. */
static void register_user(struct shared_cache *c) {
  if (atomic_load_explicit(&c->registered, memory_order_acquire))
    return;
  if (lock_users(c->h)) {
    if (c->slot < 0 && !c->detached)
      c->slot = take_slot(c);
    pthread_mutex_unlock(&c->h->users_lock);
  }
  atomic_store_explicit(&c->registered, true, memory_order_release);
}

/* Gives up this attachment's slot; the last live user removes the segment's name. If the
 * users lock cannot be had, the slot goes when the descriptor is closed. */
static void detach_user(struct shared_cache *c) {
  struct header *h = c->h;
  if (!lock_users(h))
    return;
  if (!c->detached) {
    c->detached = true;
    if (c->slot >= 0)
      release_slot(c);
    c->slot = -1;
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

static void destroy(struct tsr_cache *base) {
  struct shared_cache *c = (struct shared_cache *)base;
  detach_user(c);
  discard(c);
}

static void exiting(struct tsr_cache *base) { detach_user((struct shared_cache *)base); }

static const struct tsr_cache_ops shared_ops;

/* An attachment to the segment mapped at addr, of the geometry in h (checked), owning fd. */
static struct shared_cache *new_attachment(int fd, uint8_t *addr, size_t size, const char *name,
                                           int record_stats, const struct header *h) {
  struct shared_cache *c = tsr_calloc(1, sizeof *c);
  if (!c)
    return NULL;
  c->base.ops = &shared_ops;
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
  layout(c->nshards, c->chunks, c->entries, c->buckets, c->place);
  c->slot = -1;
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
 * the inherited one is the parent's, and so are the slot locks on it. -1 if the segment
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
static struct tsr_cache *fork_child(struct tsr_cache *base) {
  struct shared_cache *c = (struct shared_cache *)base;
  c->base.refs = 1;
  c->slot = -1;
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

static const struct tsr_cache_ops shared_ops = {
    .lookup = lookup,
    .publish = publish,
    .abandon = abandon,
    .done = done,
    .stats = stats,
    .reset_stats = reset_stats,
    .fork_child = fork_child,
    .exiting = exiting,
    .destroy = destroy,
};

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

/* Checks a header read from a segment of `size` bytes; the layout must be this build's. */
static bool header_sane(const struct header *h, uint64_t size) {
  if (h->version != SEGMENT_VERSION || h->header_bytes != sizeof(struct header) ||
      h->shard_struct != sizeof(struct shard) || h->entry_struct != sizeof(struct entry) ||
      h->chunk_bytes != CHUNK_BYTES || h->nshards < 1 || h->nshards > TSR_CACHE_MAX_SHARDS ||
      h->chunks < 1 || h->chunks >= NIL || h->entries < 1 || h->entries > h->chunks ||
      h->buckets < 1 || (h->buckets & (h->buckets - 1)) != 0)
    return false;
  return layout(h->nshards, h->chunks, h->entries, h->buckets, NULL) == h->segment_bytes &&
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
  uint64_t total = layout(nshards, (uint32_t)chunks, (uint32_t)entries, (uint32_t)buckets, NULL);
  if (hook_due(HOOK_CREATED))
    hook_stall();
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
  if (hook_due(HOOK_MAKING))
    hook_stall();
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
  c->slot = take_slot(c); /* slot 0: nobody else has the segment yet */
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
  c->slot = take_slot(c);
  atomic_store(&c->registered, true);
  pthread_mutex_unlock(&c->h->users_lock);
  if (c->slot < 0) {
    c->fd = -1;
    discard(c);
    return tsr_error(TESSERA_E_LIMIT, "shared cache %s already has %d processes using it", name,
                     MAX_USERS);
  }
  *out = c;
  return TESSERA_OK;
}

tessera_status tsr_shared_cache_create(const tessera_cache_options *o, struct tsr_cache **out) {
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
  hook_read_env();
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
      *out = &c->base;
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
    *out = &c->base;
    return TESSERA_OK;
  }
  return tsr_error(TESSERA_E_IO, "shared cache %s keeps being removed while attaching", name);
}

/* ---- a consistency check, for tests ---- */

#define VERIFY(cond, ...)                                                                          \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      snprintf(why, n, __VA_ARGS__);                                                               \
      return false;                                                                                \
    }                                                                                              \
  } while (0)

/* Walks queue q of the shard, checking its links, entries and byte count. */
static bool verify_queue(const struct view *v, int q, uint32_t *count, char *why, size_t n) {
  const struct shard *sh = v->sh;
  const struct entry *E = v->E;
  uint32_t i = q == Q_SMALL ? sh->small_head : sh->main_head, prev = NIL, steps = 0;
  uint64_t bytes = 0;
  for (; i != NIL; prev = i, i = E[i].next) {
    VERIFY(i < v->entries && steps++ < v->entries, "queue %d runs out of range or loops", q);
    VERIFY(E[i].prev == prev, "queue %d: entry %u's back link is wrong", q, i);
    VERIFY(E[i].state == READY && E[i].queue == q, "queue %d holds entry %u in state %d", q, i,
           E[i].state);
    bytes += E[i].bytes;
  }
  VERIFY(prev == (q == Q_SMALL ? sh->small_tail : sh->main_tail), "queue %d: wrong tail", q);
  VERIFY(bytes == (q == Q_SMALL ? sh->small_bytes : sh->main_bytes),
         "queue %d counts %llu bytes, holds %llu", q,
         (unsigned long long)(q == Q_SMALL ? sh->small_bytes : sh->main_bytes),
         (unsigned long long)bytes);
  *count = steps;
  return true;
}

static bool verify_shard(const struct view *v, uint8_t *mark, char *why, size_t n) {
  const struct shard *sh = v->sh;
  const struct entry *E = v->E;
  memset(mark, 0, v->chunks);
  uint64_t items = 0, bytes = 0, ready = 0, free_entries = 0;
  for (uint32_t i = 0; i < v->entries; i++) {
    if (E[i].state == FREE)
      continue;
    VERIFY(E[i].state == READY || E[i].state == LOADING, "entry %u in state %d", i, E[i].state);
    VERIFY(entry_whole(v, i), "entry %u is not whole (seal or chunk chain)", i);
    items++;
    bytes += E[i].bytes;
    ready += E[i].state == READY;
    uint32_t found = 0, steps = 0;
    for (uint32_t j = *bucket(v, tsr_cache_key_hash(&E[i].key)); j != NIL; j = E[j].hnext) {
      VERIFY(j < v->entries && steps++ < v->entries, "a hash chain runs out of range or loops");
      found += j == i;
    }
    VERIFY(found == 1, "entry %u is in its hash chain %u times", i, found);
    uint32_t k = E[i].first;
    for (uint32_t s = 0; s < chunks_for(E[i].bytes); s++, k = v->next[k]) {
      VERIFY(k < v->chunks && !mark[k], "entry %u's chunks run out of range or overlap", i);
      mark[k] = 1;
      if (s + 1 == chunks_for(E[i].bytes))
        break;
    }
  }
  VERIFY(items == sh->items && bytes == sh->bytes,
         "the shard counts %llu items of %llu bytes, "
         "its entries %llu of %llu",
         (unsigned long long)sh->items, (unsigned long long)sh->bytes, (unsigned long long)items,
         (unsigned long long)bytes);
  for (uint32_t i = sh->free_entries, steps = 0; i != NIL; i = E[i].hnext, free_entries++) {
    VERIFY(i < v->entries && steps++ < v->entries, "the free entries run out of range or loop");
    VERIFY(E[i].state == FREE, "free list holds entry %u in state %d", i, E[i].state);
  }
  VERIFY(free_entries + items == v->entries, "%llu free entries and %llu in use, of %u",
         (unsigned long long)free_entries, (unsigned long long)items, v->entries);
  uint32_t in_small, in_main;
  if (!verify_queue(v, Q_SMALL, &in_small, why, n) || !verify_queue(v, Q_MAIN, &in_main, why, n))
    return false;
  VERIFY(in_small + in_main == ready, "%u queued, %llu ready", in_small + in_main,
         (unsigned long long)ready);
  uint32_t free_chunks = 0;
  for (uint32_t k = sh->free_chunks; k != NIL; k = v->next[k], free_chunks++) {
    VERIFY(k < v->chunks && !mark[k], "free chunk %u out of range or in use", k);
    VERIFY(v->owner[k] == 0, "free chunk %u is tagged as an entry's", k);
    mark[k] = 1;
  }
  VERIFY(free_chunks == sh->nfree_chunks, "%u free chunks listed, %u counted", free_chunks,
         sh->nfree_chunks);
  for (uint32_t k = 0; k < v->chunks; k++)
    VERIFY(mark[k], "chunk %u is neither used nor free", k);
  return true;
}

bool tsr_shared_cache_verify(char *why, size_t n) {
  snprintf(why, n, "no shared cache");
  struct tsr_cache *base = tsr_cache_acquire();
  if (!base || base->type != TESSERA_CACHE_SHARED_MEMORY) {
    tsr_cache_release(base);
    return false;
  }
  struct shared_cache *c = (struct shared_cache *)base;
  uint8_t *mark = tsr_malloc(c->chunks);
  bool ok = mark != NULL;
  for (uint32_t i = 0; ok && i < c->nshards; i++) {
    if (!lock_shard(c, i)) {
      snprintf(why, n, "shard %u cannot be locked", i);
      ok = false;
      break;
    }
    struct view v = view_of(c, i);
    ok = verify_shard(&v, mark, why, n);
    unlock_shard(v.sh);
  }
  tsr_free(mark);
  tsr_cache_release(base);
  return ok;
}

/* For tests: writes n values over the current shared cache's index, where any process with
 * write access could: the header (not its lock), the shards' fields (not their locks), their
 * entries, hash buckets, chunk links and chunk tags. Each shard's part under its lock, as a
 * buggy user of the segment would; values are random, or indices of the right size. */
bool tsr_shared_cache_scribble(uint64_t *seed, unsigned n) {
  struct tsr_cache *base = tsr_cache_acquire();
  if (!base || base->type != TESSERA_CACHE_SHARED_MEMORY) {
    tsr_cache_release(base);
    return false;
  }
  struct shared_cache *c = (struct shared_cache *)base;
  for (unsigned w = 0; w < n; w++) {
    uint64_t r = *seed = *seed * 6364136223846793005ull + 1442695040888963407ull;
    uint64_t pick = r >> 33;
    uint32_t value = (uint32_t)(r >> 7) % 4 == 0   ? NIL
                     : (uint32_t)(r >> 9) % 2 == 0 ? (uint32_t)(r >> 11) % (c->entries + 2)
                                                   : (uint32_t)(r >> 20);
    uint32_t si = (uint32_t)(pick % c->nshards);
    struct view v = view_of(c, si);
    uint8_t *at;
    switch ((pick >> 8) % 6) {
    case 0: { /* the header's fields before its lock, and the slot generations */
      size_t before = offsetof(struct header, users_lock);
      size_t gens = offsetof(struct header, generation);
      size_t span = before + sizeof c->h->generation;
      size_t off = (pick >> 12) % span / 4 * 4;
      at = (uint8_t *)c->h + (off < before ? off : gens + (off - before));
      if (off < 8)
        continue; /* the magic: listings would lose it */
      break;
    }
    case 1: {
      size_t first = align_up(sizeof(pthread_mutex_t), 8);
      at = (uint8_t *)v.sh + first + (pick >> 12) % ((sizeof *v.sh - first) / 4) * 4;
      break;
    }
    case 2: at = (uint8_t *)v.E + (pick >> 12) % ((uint64_t)v.entries * sizeof *v.E / 4) * 4; break;
    case 3: at = (uint8_t *)&v.B[(pick >> 12) % v.buckets]; break;
    case 4: at = (uint8_t *)&v.next[(pick >> 12) % v.chunks]; break;
    default: at = (uint8_t *)v.owner + (pick >> 12) % ((uint64_t)v.chunks * 2) * 4; break;
    }
    bool shard_part = ((pick >> 8) % 6) != 0;
    if (shard_part && !lock_shard(c, si))
      continue;
    memcpy(at, &value, sizeof value);
    if (shard_part)
      unlock_shard(v.sh);
  }
  tsr_cache_release(base);
  return true;
}

/* For tests: a word of the most read ready tile of the current shared cache, which another
 * process could write at any moment: its chain head (which 0) or the link after its first
 * chunk (1); or the loader's user slot of a tile being loaded (2). NULL if there is no such
 * tile. */
uint32_t *tsr_shared_cache_hot_word(int which) {
  struct tsr_cache *base = tsr_cache_acquire();
  if (!base || base->type != TESSERA_CACHE_SHARED_MEMORY) {
    tsr_cache_release(base);
    return NULL;
  }
  struct shared_cache *c = (struct shared_cache *)base;
  uint32_t *word = NULL;
  unsigned best = 0;
  for (uint32_t si = 0; si < c->nshards; si++) {
    if (!lock_shard(c, si))
      continue;
    struct view v = view_of(c, si);
    for (uint32_t i = 0; i < v.entries; i++) {
      if (which == 2) {
        if (v.E[i].state == LOADING)
          word = &v.E[i].loader_slot;
        continue;
      }
      uint32_t first = once32(&v.E[i].first);
      if (v.E[i].state == READY && v.E[i].freq + 1u > best && first < v.chunks) {
        best = v.E[i].freq + 1u;
        word = which == 0 ? &v.E[i].first : &v.next[first];
      }
    }
    unlock_shard(v.sh);
  }
  tsr_cache_release(base); /* the segment stays mapped while it is configured */
  return word;
}

/* For tests: gives the most read ready tile of the current shared cache a size of `bytes`,
 * sealed again, as a writer that knows how to seal could. False if there is no such tile. */
bool tsr_shared_cache_hot_resize(uint64_t bytes) {
  struct tsr_cache *base = tsr_cache_acquire();
  if (!base || base->type != TESSERA_CACHE_SHARED_MEMORY) {
    tsr_cache_release(base);
    return false;
  }
  struct shared_cache *c = (struct shared_cache *)base;
  struct entry *hot = NULL;
  uint32_t hot_si = 0, hot_i = 0;
  unsigned best = 0;
  for (uint32_t si = 0; si < c->nshards; si++) {
    struct view v = view_of(c, si);
    for (uint32_t i = 0; i < v.entries; i++)
      if (v.E[i].state == READY && v.E[i].freq + 1u > best) {
        best = v.E[i].freq + 1u;
        hot = &v.E[i];
        hot_si = si;
        hot_i = i;
      }
  }
  if (hot && lock_shard(c, hot_si)) {
    hot->bytes = bytes;
    seal(hot, hot_i);
    unlock_shard(shard_at(c, hot_si));
  }
  tsr_cache_release(base);
  return hot != NULL;
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
