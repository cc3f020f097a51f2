/* The shared cache's segment: its parts (a header, then per shard a header, entries, hash
 * buckets, chunk links, chunk tags and chunk memory), one process's attachment to it, and the
 * small helpers every file of the shared cache uses to read it (shared.c's index and cache
 * operations, segment.c's making, attaching, users and listing, shared_hooks.c's test hooks).
 *
 * What guards what: the segment header's users_lock orders attaching against the last detach;
 * each shard's robust mutex guards that shard's fields, entries (but the atomic given_up and
 * count of frees), buckets, links and chunk tags, and who owns each chunk: chunks reserved
 * for a tile under the mutex are written, without it, only by the loader that reserved them,
 * until it publishes the tile under the mutex or its reservation is freed under it (shared.c's
 * copy_in); a hit reads a published tile's chunks without it, checking its entry's atomic
 * count of frees before and after (shared.c's lookup says why that suffices); the user seat
 * incarnations are atomic; an attachment's own fields say below. Nothing read
 * from the segment is trusted (see shared.c): read indices once (once32), check, then use. */
#ifndef TSR_CACHE_SEGMENT_H
#define TSR_CACHE_SEGMENT_H

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

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

#include "cache/cache.h"

#define SEGMENT_MAGIC 0x3145484341435354ull /* "TSCACHE1" read little-endian */
#define SEGMENT_VERSION 6u
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

/* OVERTAKEN: a reservation whose loader did not publish in time, taken out of the index
 * (shared.c's detach); its chunks stay its loader's until it comes back or dies. */
enum state { FREE, LOADING, READY, OVERTAKEN };
enum queue { Q_NONE, Q_SMALL, Q_MAIN };

struct header {
  uint64_t magic;
  uint32_t version;
  uint32_t header_bytes; /* sizeof(struct header): a check that the segment is this build's */
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
  /* Bumped by whoever takes seat i, which it does by winning the seat's OFD lock: a loader
   * is alive while its seat is locked and still of its incarnation. */
  _Atomic uint32_t incarnation[MAX_USERS];
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
  /* Bumped, under the lock, each time the entry is freed, before its chunks can hold another
   * tile; read by a hit without the lock, before and after it reads the chunks: atomic. 64
   * bits: a reader stopped for any time cannot see it wrap back to the count it saw. */
  _Atomic uint64_t frees;
  uint32_t loader_seat;        /* LOADING: the user seat loading it, */
  uint32_t loader_incarnation; /* and that seat's incarnation then */
  uint32_t ticket;             /* bumped each time the entry is reserved or taken over */
  uint32_t seal;               /* seal_of(the entry) while not FREE */
  /* The ticket of the reservation its loader gave up on without the lock (it could not lock
   * the shard to publish or abandon it, and touches the entry no more): lock holders free it.
   * Written by the loader without the lock, after its last write to the chunks, so atomic,
   * stored with release and loaded with acquire; set to 0 at each reservation. */
  _Atomic uint32_t given_up;
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
  int fd; /* this attachment's open file description of the segment: its seat's lock is on it */
  /* The segment's geometry as checked at attach; constant. */
  uint32_t nshards, chunks, entries, buckets;
  struct place place[TSR_CACHE_MAX_SHARDS];
  _Atomic int seat;      /* this attachment's user seat (-1: none, or detaching); written under
                            the users lock */
  _Atomic int held_seat; /* the seat whose lock this attachment holds, until it lets it go
                            (after seat, once no copy is in flight); written under the users
                            lock */
  /* Copies into reserved chunks in flight, made without the shard lock (shared.c's copy_in):
   * a detach waits for them before it lets the seat go, and with it the chunks. */
  atomic_uint copying;
  uint32_t incarnation;   /* the seat's incarnation; written with seat, before registered */
  bool detached;          /* guarded by the users lock */
  atomic_bool registered; /* a seat was taken (or need not be) */
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

static inline uint64_t owner_tag(uint32_t i, uint32_t s) { return ((uint64_t)(i + 1) << 32) | s; }

/* 64 bits wide: a size read from the segment may be anything, and must not wrap to a few. */
static inline uint64_t chunks_for(uint64_t bytes) {
  return bytes / CHUNK_BYTES + (bytes % CHUNK_BYTES != 0);
}

/* Another process may write the segment at any moment, lock or no lock. An index or size
 * taken from it is read once, through these, into a local that is checked and then used: a
 * plain read could be made again by the compiler, after the check. */
static inline uint32_t once32(const uint32_t *p) { return *(const volatile uint32_t *)p; }
static inline uint64_t once64(const uint64_t *p) { return *(const volatile uint64_t *)p; }

/* An entry as it stands now, to check and use as one copy. */
static inline struct entry snapshot(const struct entry *e) {
  struct entry s;
  memcpy(&s, e, sizeof s);
  atomic_signal_fence(memory_order_seq_cst); /* s is not to be read again from e */
  return s;
}

/* Whether this attachment is e's loader: a thread of this process is. */
static inline bool loaded_by_me(const struct shared_cache *c, const struct entry *e) {
  return c->seat >= 0 && e->loader_seat == (uint32_t)c->seat &&
         e->loader_incarnation == c->incarnation;
}

static inline uint64_t monotonic_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static inline void sleep_ns(uint64_t ns) {
  struct timespec t = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
  nanosleep(&t, NULL);
}

/* Locks a robust process-shared mutex, waiting at most ns (0: only trying). Returns 0,
 * EOWNERDEAD (locked; its last holder died), or an error (ETIMEDOUT, EBUSY, ...). */
static inline int lock_within(pthread_mutex_t *m, uint64_t ns) {
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

static inline uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

static inline struct shard *shard_at(const struct shared_cache *c, uint32_t i) {
  return (struct shard *)(c->addr + align_up(sizeof(struct header), 64) +
                          align_up(sizeof(struct shard), 64) * i);
}

static inline struct view view_of(const struct shared_cache *c, uint32_t si) {
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

static inline uint8_t *chunk_data(const struct view *v, uint32_t k) {
  return v->data + (uint64_t)k * CHUNK_BYTES;
}

/* Whether e's loader (a LOADING entry's) is alive: this attachment, or a live one whose user
 * seat still has the incarnation e names. */
bool tsr_segment_loader_alive(const struct shared_cache *c, const struct entry *e);

/* A forked child becomes a user when it first reads through the cache (segment.c says why):
 * takes a user seat on the first call. */
void tsr_segment_register_slow(struct shared_cache *c);
static inline void tsr_segment_register(struct shared_cache *c) {
  if (!atomic_load_explicit(&c->registered, memory_order_acquire))
    tsr_segment_register_slow(c);
}

/* Makes the segment o names (or a new name), or attaches to it; the attachment's base.ops is
 * the caller's to set. */
tessera_status tsr_segment_open(const tessera_cache_options *o, struct shared_cache **out);
/* Gives up this attachment's user seat, and frees it (destroy) or not (exiting). */
void tsr_segment_destroy(struct tsr_cache *base);
void tsr_segment_exiting(struct tsr_cache *base);
/* In a forked child: the attachment, made the child's (cache.h's fork_child). */
struct tsr_cache *tsr_segment_fork_child(struct tsr_cache *base);

#endif
