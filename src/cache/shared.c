/* The shared-memory tile cache: one named POSIX shared-memory segment (/dev/shm/NAME) holding
 * the index and the decoded tiles, used by every process attached to it.
 *
 * Layout: a header (geometry, a table of the processes using it), then up to 16 shards, each
 * with its own robust process-shared mutex, hash table, S3-FIFO queues (as in process.c) and
 * its own part of the tile memory, cut into 64 KiB chunks. A tile takes the chunks its bytes
 * need, chained through a per-chunk `next` array, so memory never fragments and the byte
 * budget is the chunk memory itself. Everything is addressed by index, never by pointer:
 * each process maps the segment at its own address.
 *
 * A process may be killed at any moment, so nothing it holds may outlive it:
 * - Readers paint from a tile in place while holding its shard's lock, instead of pinning
 *   it (a pin would outlive a killed reader; a lock does not). The lock is held for the
 *   copy into the caller's buffers only, never across a decode.
 * - A miss reserves the entry (LOADING, stamped with the loader's pid and start time) under
 *   the lock, decodes without the lock, then copies into its chunks and publishes it under
 *   the lock. Others wanting it poll; if its loader has died they drop the entry and load it
 *   themselves. An eviction that finds no room sweeps out entries of dead loaders.
 * - A process killed while holding a shard lock leaves it to the next locker as EOWNERDEAD.
 *   The lists of a shard (hash chains, queues, free lists) are derived data; an entry's state,
 *   key, size and chunk chain are the truth. The next locker rebuilds the lists from the
 *   entries, keeping the ready tiles whose chunk chains hold together and the tiles of live
 *   loaders, and drops the rest: whatever the dead process was writing.
 *
 * The segment lives as long as some process uses it: each attachment takes a slot in the
 * header's user table; the last one to detach removes the name. Slots of processes that died
 * without detaching are pruned whenever a process attaches or detaches. */
#include <dirent.h>
#include <errno.h>
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

#include "alloc.h"
#include "cache/cache.h"
#include "error.h"

#define SEGMENT_MAGIC 0x3145484341435354ull /* "TSCACHE1" read little-endian */
#define SEGMENT_VERSION 2u
#define CHUNK_BYTES ((uint64_t)64 << 10)
#define NIL UINT32_MAX
#define MAX_USERS 1024
#define SHM_DIR "/dev/shm"
/* How long a reader waits for a live process loading the tile it wants before decoding it
 * itself; how long an attacher waits for a segment nobody has locked to be made, and for
 * its maker (who reserves all its memory first) to finish. */
#define LOAD_WAIT_NS (10ull * 1000000000ull)
#define READY_WAIT_NS (2ull * 1000000000ull)
#define MAKER_WAIT_NS (120ull * 1000000000ull)

enum state { FREE, LOADING, READY };
enum queue { Q_NONE, Q_SMALL, Q_MAIN };

struct user {
  int32_t pid; /* 0: free slot */
  uint32_t pad;
  uint64_t start; /* the process's start time (clock ticks after boot), against pid reuse */
};

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
  pthread_mutex_t users_lock;
  struct user users[MAX_USERS];
};

/* Every field after lock is guarded by it. */
struct shard {
  pthread_mutex_t lock;
  uint64_t hits, misses, evictions, items, bytes;
  uint64_t small_bytes, main_bytes;
  uint32_t small_head, small_tail, main_head, main_tail; /* head newest */
  uint32_t free_entries, free_chunks, nfree_chunks, pad;
  uint64_t entries_off, buckets_off, next_off, owner_off, data_off;
};

struct entry {
  struct tsr_cache_key key;
  uint64_t bytes;
  uint64_t loader_start;
  int32_t loader_pid;
  uint32_t ticket;                   /* bumped each time the entry is reserved */
  uint32_t hnext, prev, next, first; /* hash chain (or free list), queue (next older), chunks */
  uint8_t state, queue, freq, pad;
};

struct shared_cache {
  struct tsr_cache base;
  uint8_t *addr;
  size_t size;
  struct header *h;
  int slot;               /* this attachment's user slot (-1: none); guarded by the users lock */
  bool detached;          /* guarded by the users lock */
  atomic_bool registered; /* a slot was taken (or need not be) */
  int32_t pid;            /* this process */
  uint64_t start;         /* and its start time */
  uint64_t dev, ino;      /* the segment's file, to tell it from a newer one of that name */
  char name[TESSERA_SHARED_CACHE_NAME_MAX + 2];
};

/* Whether this process (this incarnation of its pid) is e's loader: a thread of it is. */
static bool loaded_by_me(const struct shared_cache *c, const struct entry *e) {
  return e->loader_pid == c->pid && e->loader_start == c->start;
}

/* ---- processes ---- */

/* Reads the state letter and start time of a process from /proc; false if it has none. */
static bool proc_stat(int32_t pid, char *state, uint64_t *start) {
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return false;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0)
    return false;
  buf[n] = 0;
  char *p = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
  if (!p || p[1] != ' ')
    return false;
  p += 2;
  *state = *p;
  /* Fields 3 (state) .. 22 (start time): skip 19 more. */
  for (int i = 0; i < 19 && p; i++) {
    p = strchr(p, ' ');
    if (p)
      p++;
  }
  if (!p)
    return false;
  *start = strtoull(p, NULL, 10);
  return true;
}

static uint64_t own_start(void) {
  char state;
  uint64_t start = 0;
  return proc_stat((int32_t)getpid(), &state, &start) ? start : 0;
}

/* Threads the process has, from /proc/PID/status; 0 if unknown. */
static long thread_count(int32_t pid) {
  char path[64], buf[2048];
  snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0)
    return 0;
  buf[n] = 0;
  const char *t = strstr(buf, "\nThreads:");
  return t ? strtol(t + 9, NULL, 10) : 0;
}

/* Whether process pid, started at `start` (0: unknown), is running. A zombie is not (it was
 * killed and awaits its parent's wait), unless only its main thread ended and others run. */
static bool alive(int32_t pid, uint64_t start) {
  if (pid <= 0)
    return false;
  if (kill(pid, 0) == -1 && errno == ESRCH)
    return false;
  char state;
  uint64_t now;
  if (!proc_stat(pid, &state, &now))
    return true; /* no /proc: trust kill */
  if (start && now != start)
    return false; /* the pid was reused */
  if (state == 'X' || (state == 'Z' && thread_count(pid) <= 1))
    return false;
  return true;
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

/* ---- the test hook ---- */

/* TESSERA_TEST_CACHE_STALL=POINT:N:PATH, read when a shared cache is configured: the N-th
 * tile this process publishes (POINT "locked": holding the shard lock, halfway through
 * linking the tile) or reserves (POINT "loading": the lock let go, before decoding) stalls
 * for good, after writing the pid to PATH. Tests kill it there. */
enum hook_point { HOOK_NONE, HOOK_LOCKED, HOOK_LOADING };
static struct {
  atomic_int point;
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
  atomic_store(&hook.count, 0);
  atomic_store(&hook.point, strcmp(point, "locked") == 0    ? HOOK_LOCKED
                            : strcmp(point, "loading") == 0 ? HOOK_LOADING
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
  for (;;)
    pause();
}

/* ---- layout ---- */

static uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

/* Places the shards' arrays after the header; returns the segment's size (0 on overflow). */
static uint64_t layout(uint32_t nshards, uint32_t chunks, uint32_t entries, uint32_t buckets,
                       struct shard *shards /* NULL: size only */) {
  uint64_t off = align_up(sizeof(struct header), 64) + align_up(sizeof(struct shard), 64) * nshards;
  uint64_t data_bytes = (uint64_t)chunks * CHUNK_BYTES;
  for (uint32_t i = 0; i < nshards; i++) {
    struct shard sh = {0};
    sh.entries_off = off = align_up(off, 64);
    off += (uint64_t)entries * sizeof(struct entry);
    sh.buckets_off = off = align_up(off, 64);
    off += (uint64_t)buckets * 4;
    sh.next_off = off = align_up(off, 64);
    off += (uint64_t)chunks * 4;
    sh.owner_off = off = align_up(off, 64);
    off += (uint64_t)chunks * 4;
    sh.data_off = off = align_up(off, 4096);
    off += data_bytes;
    if (shards) {
      shards[i].entries_off = sh.entries_off;
      shards[i].buckets_off = sh.buckets_off;
      shards[i].next_off = sh.next_off;
      shards[i].owner_off = sh.owner_off;
      shards[i].data_off = sh.data_off;
    }
  }
  return off;
}

static struct shard *shard_at(const struct shared_cache *c, uint32_t i) {
  return (struct shard *)(c->addr + align_up(sizeof(struct header), 64) +
                          align_up(sizeof(struct shard), 64) * i);
}
static struct entry *entries_of(const struct shared_cache *c, const struct shard *sh) {
  return (struct entry *)(c->addr + sh->entries_off);
}
static uint32_t *buckets_of(const struct shared_cache *c, const struct shard *sh) {
  return (uint32_t *)(c->addr + sh->buckets_off);
}
static uint32_t *next_of(const struct shared_cache *c, const struct shard *sh) {
  return (uint32_t *)(c->addr + sh->next_off);
}
static uint32_t *owner_of(const struct shared_cache *c, const struct shard *sh) {
  return (uint32_t *)(c->addr + sh->owner_off);
}
static uint8_t *chunk_data(const struct shared_cache *c, const struct shard *sh, uint32_t k) {
  return c->addr + sh->data_off + (uint64_t)k * CHUNK_BYTES;
}

static uint32_t chunks_for(uint64_t bytes) {
  return (uint32_t)((bytes + CHUNK_BYTES - 1) / CHUNK_BYTES);
}

/* ---- one shard's index (its lock held) ---- */

static uint32_t *bucket(const struct shared_cache *c, const struct shard *sh, uint64_t hash) {
  return &buckets_of(c, sh)[(hash >> 4) & (c->h->buckets - 1)];
}

static uint32_t find(const struct shared_cache *c, const struct shard *sh,
                     const struct tsr_cache_key *k, uint64_t hash) {
  struct entry *E = entries_of(c, sh);
  for (uint32_t i = *bucket(c, sh, hash); i != NIL; i = E[i].hnext)
    if (tsr_cache_key_equal(&E[i].key, k))
      return i;
  return NIL;
}

static void queue_push(const struct shared_cache *c, struct shard *sh, uint32_t i, int q) {
  struct entry *E = entries_of(c, sh);
  uint32_t *head = q == Q_SMALL ? &sh->small_head : &sh->main_head;
  uint32_t *tail = q == Q_SMALL ? &sh->small_tail : &sh->main_tail;
  E[i].queue = (uint8_t)q;
  E[i].prev = NIL;
  E[i].next = *head;
  if (*head != NIL)
    E[*head].prev = i;
  else
    *tail = i;
  *head = i;
  *(q == Q_SMALL ? &sh->small_bytes : &sh->main_bytes) += E[i].bytes;
}

static void queue_unlink(const struct shared_cache *c, struct shard *sh, uint32_t i) {
  struct entry *E = entries_of(c, sh);
  int q = E[i].queue;
  if (q == Q_NONE)
    return;
  uint32_t *head = q == Q_SMALL ? &sh->small_head : &sh->main_head;
  uint32_t *tail = q == Q_SMALL ? &sh->small_tail : &sh->main_tail;
  if (E[i].prev != NIL)
    E[E[i].prev].next = E[i].next;
  else
    *head = E[i].next;
  if (E[i].next != NIL)
    E[E[i].next].prev = E[i].prev;
  else
    *tail = E[i].prev;
  *(q == Q_SMALL ? &sh->small_bytes : &sh->main_bytes) -= E[i].bytes;
  E[i].queue = Q_NONE;
}

/* Frees entry i (ready or loading): its chunks and slot go back to the free lists. Its state
 * changes first, so a process killed halfway leaves nothing that a rebuild would keep. */
static void free_entry(const struct shared_cache *c, struct shard *sh, uint32_t i) {
  struct entry *E = entries_of(c, sh);
  uint32_t *next = next_of(c, sh);
  struct entry *e = &E[i];
  e->state = FREE;
  atomic_signal_fence(memory_order_seq_cst); /* FREE before the lists change */
  uint32_t *p = bucket(c, sh, tsr_cache_key_hash(&e->key));
  while (*p != NIL && *p != i)
    p = &E[*p].hnext;
  if (*p == i)
    *p = e->hnext;
  queue_unlink(c, sh, i);
  uint32_t n = chunks_for(e->bytes), last = e->first;
  for (uint32_t k = 1; k < n; k++)
    last = next[last];
  next[last] = sh->free_chunks;
  sh->free_chunks = e->first;
  sh->nfree_chunks += n;
  sh->items--;
  sh->bytes -= e->bytes;
  e->hnext = sh->free_entries;
  sh->free_entries = i;
}

/* Evicts one tile, S3-FIFO style (see process.c); false when the queues are empty. Tiles
 * being loaded are in no queue and never evicted. */
static bool evict_one(const struct shared_cache *c, struct shard *sh) {
  struct entry *E = entries_of(c, sh);
  uint64_t budget = (uint64_t)c->h->chunks * CHUNK_BYTES;
  uint64_t steps = (TSR_CACHE_MAX_FREQ + 2) * (sh->items + 1);
  while (steps-- > 0) {
    bool from_small = sh->small_bytes * TSR_CACHE_SMALL_PART > budget || sh->main_tail == NIL;
    uint32_t i = from_small ? sh->small_tail : sh->main_tail;
    if (i == NIL) {
      from_small = !from_small;
      i = from_small ? sh->small_tail : sh->main_tail;
      if (i == NIL)
        return false;
    }
    queue_unlink(c, sh, i);
    if (E[i].freq > 0) {
      if (from_small)
        E[i].freq = 0; /* read again while new: it is worth keeping */
      else
        E[i].freq--;
      queue_push(c, sh, i, Q_MAIN);
      continue;
    }
    free_entry(c, sh, i);
    sh->evictions++;
    return true;
  }
  return false;
}

/* Frees the entries whose loaders died while decoding; returns how many. */
static unsigned sweep_dead_loaders(const struct shared_cache *c, struct shard *sh) {
  struct entry *E = entries_of(c, sh);
  unsigned n = 0;
  for (uint32_t i = 0; i < c->h->entries; i++)
    if (E[i].state == LOADING && !loaded_by_me(c, &E[i]) &&
        !alive(E[i].loader_pid, E[i].loader_start)) {
      free_entry(c, sh, i);
      n++;
    }
  return n;
}

/* Claims entry i's chain of chunks in the owner array; false (claiming nothing) if the chain
 * runs out of range or into a chunk already claimed. */
static bool claim_chain(const struct shared_cache *c, const struct shard *sh, uint32_t i) {
  struct entry *e = &entries_of(c, sh)[i];
  uint32_t *next = next_of(c, sh), *owner = owner_of(c, sh);
  uint32_t n = chunks_for(e->bytes), k = e->first, claimed = 0;
  bool ok = true;
  for (; claimed < n; claimed++) {
    if (k >= c->h->chunks || owner[k] != 0) {
      ok = false;
      break;
    }
    owner[k] = i + 1;
    if (claimed + 1 < n)
      k = next[k];
  }
  if (!ok)
    for (uint32_t s = 0, j = e->first; s < claimed; s++, j = next[j])
      owner[j] = 0;
  return ok;
}

/* After a process died holding the shard's lock: rebuilds the lists from the entries. */
static void rebuild(const struct shared_cache *c, struct shard *sh) {
  const struct header *h = c->h;
  struct entry *E = entries_of(c, sh);
  uint32_t *B = buckets_of(c, sh), *next = next_of(c, sh), *owner = owner_of(c, sh);
  for (uint32_t b = 0; b < h->buckets; b++)
    B[b] = NIL;
  memset(owner, 0, (size_t)h->chunks * sizeof *owner);
  sh->small_head = sh->small_tail = sh->main_head = sh->main_tail = NIL;
  sh->small_bytes = sh->main_bytes = 0;
  sh->items = sh->bytes = 0;
  sh->free_entries = NIL;
  uint64_t max_bytes = (uint64_t)h->chunks * CHUNK_BYTES;
  for (uint32_t i = h->entries; i-- > 0;) {
    struct entry *e = &E[i];
    bool keep =
        e->state == READY ||
        (e->state == LOADING && (loaded_by_me(c, e) || alive(e->loader_pid, e->loader_start)));
    keep = keep && e->bytes > 0 && e->bytes <= max_bytes;
    uint64_t hash = tsr_cache_key_hash(&e->key);
    if (keep && find(c, sh, &e->key, hash) != NIL)
      keep = false; /* a duplicate: the first one found stays */
    if (keep && !claim_chain(c, sh, i))
      keep = false;
    if (keep) {
      e->queue = Q_NONE;
      e->hnext = *bucket(c, sh, hash);
      *bucket(c, sh, hash) = i;
      if (e->state == READY) {
        e->freq = 0;
        queue_push(c, sh, i, Q_MAIN);
      }
      sh->items++;
      sh->bytes += e->bytes;
    } else {
      e->state = FREE;
      e->queue = Q_NONE;
      e->hnext = sh->free_entries;
      sh->free_entries = i;
    }
  }
  sh->free_chunks = NIL;
  sh->nfree_chunks = 0;
  for (uint32_t k = h->chunks; k-- > 0;)
    if (owner[k] == 0) {
      next[k] = sh->free_chunks;
      sh->free_chunks = k;
      sh->nfree_chunks++;
    }
}

/* Locks a shard, repairing it if its last holder died; false if it cannot be locked. */
static bool lock_shard(const struct shared_cache *c, struct shard *sh) {
  int r = pthread_mutex_lock(&sh->lock);
  if (r == EOWNERDEAD) {
    rebuild(c, sh);
    pthread_mutex_consistent(&sh->lock);
    return true;
  }
  return r == 0;
}

static void unlock_shard(struct shard *sh) { pthread_mutex_unlock(&sh->lock); }

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

/* Points a->row_list at the rows asked for, in place in entry e's chunks, copying only the
 * rows that straddle two chunks into the scratch. The shard stays locked while they are
 * read. */
static void map_rows(const struct shared_cache *c, const struct shard *sh, const struct entry *e,
                     struct tsr_cache_access *a) {
  const uint32_t *next = next_of(c, sh);
  const uint8_t **list = (const uint8_t **)(void *)a->scratch->data;
  uint8_t *spill = a->scratch->data + list_bytes(a);
  uint32_t k = e->first;
  uint64_t chunk_start = 0;
  for (uint32_t i = 0; i < a->rows; i++) {
    uint64_t at = a->offset + (uint64_t)i * a->stride;
    while (at >= chunk_start + CHUNK_BYTES) {
      k = next[k];
      chunk_start += CHUNK_BYTES;
    }
    uint64_t in = at - chunk_start;
    if (in + a->row_bytes <= CHUNK_BYTES) {
      list[i] = chunk_data(c, sh, k) + in;
      continue;
    }
    size_t head = (size_t)(CHUNK_BYTES - in);
    memcpy(spill, chunk_data(c, sh, k) + in, head);
    memcpy(spill + head, chunk_data(c, sh, next[k]), a->row_bytes - head);
    list[i] = spill;
    spill += a->row_bytes;
  }
  a->row_list = list;
}

static void copy_in(const struct shared_cache *c, const struct shard *sh, const struct entry *e,
                    const uint8_t *src) {
  const uint32_t *next = next_of(c, sh);
  uint32_t k = e->first;
  for (size_t left = e->bytes; left > 0;) {
    size_t n = left < CHUNK_BYTES ? left : CHUNK_BYTES;
    memcpy(chunk_data(c, sh, k), src, n);
    src += n;
    left -= n;
    if (left > 0)
      k = next[k];
  }
}

/* ---- the interface of cache.h ---- */

static void register_user(struct shared_cache *c);

static enum tsr_cache_result lookup(struct tsr_cache *base, struct tsr_cache_access *a) {
  struct shared_cache *c = (struct shared_cache *)base;
  const struct header *h = c->h;
  register_user(c);
  size_t want = hit_bytes(a) > a->bytes ? hit_bytes(a) : a->bytes;
  if (!tsr_scratch_reserve(a->scratch, want))
    return TSR_CACHE_BYPASS;
  a->entry = NULL;
  uint64_t hash = tsr_cache_key_hash(&a->key);
  uint32_t si = (uint32_t)(hash % h->nshards);
  struct shard *sh = shard_at(c, si);
  struct entry *E = entries_of(c, sh);
  bool count = base->record_stats;
  uint64_t waiting_since = 0, pause_ns = 20000;
  unsigned polls = 0;
  if (!lock_shard(c, sh))
    return TSR_CACHE_BYPASS;
  uint32_t i;
  while ((i = find(c, sh, &a->key, hash)) != NIL) {
    struct entry *e = &E[i];
    if (e->state == READY) {
      if (e->bytes != a->bytes) {
        unlock_shard(sh); /* same key, other geometry: left to age out (see process.c) */
        return TSR_CACHE_BYPASS;
      }
      if (e->freq < TSR_CACHE_MAX_FREQ)
        e->freq++;
      if (count)
        sh->hits++;
      map_rows(c, sh, e, a);
      a->entry = sh; /* locked until tsr_cache_done */
      return TSR_CACHE_HIT;
    }
    /* Being loaded by another thread or process: wait for it, unless its loader is gone (the
     * check reads /proc, so not at every poll). A live loader taking too long is left to
     * finish; this thread decodes the tile itself. */
    if (polls++ % 8 == 7 && !loaded_by_me(c, e) && !alive(e->loader_pid, e->loader_start)) {
      free_entry(c, sh, i);
      continue;
    }
    uint64_t now = monotonic_ns();
    if (!waiting_since)
      waiting_since = now;
    else if (now - waiting_since > LOAD_WAIT_NS) {
      unlock_shard(sh);
      return TSR_CACHE_BYPASS;
    }
    unlock_shard(sh);
    sleep_ns(pause_ns);
    pause_ns = pause_ns < 500000 ? pause_ns * 2 : pause_ns;
    if (!lock_shard(c, sh))
      return TSR_CACHE_BYPASS;
  }
  if (count)
    sh->misses++;
  uint32_t n = chunks_for(a->bytes);
  if (n > h->chunks) {
    unlock_shard(sh);
    return TSR_CACHE_BYPASS;
  }
  bool swept = false;
  while (sh->nfree_chunks < n || sh->free_entries == NIL) {
    if (evict_one(c, sh))
      continue;
    if (swept || sweep_dead_loaders(c, sh) == 0) {
      unlock_shard(sh); /* every chunk is being loaded into */
      return TSR_CACHE_BYPASS;
    }
    swept = true;
  }
  uint32_t *next = next_of(c, sh);
  i = sh->free_entries;
  struct entry *e = &E[i];
  sh->free_entries = e->hnext;
  uint32_t first = sh->free_chunks, last = first;
  for (uint32_t k = 1; k < n; k++)
    last = next[last];
  sh->free_chunks = next[last];
  next[last] = NIL;
  sh->nfree_chunks -= n;
  e->key = a->key;
  e->bytes = a->bytes;
  e->first = first;
  e->loader_pid = c->pid;
  e->loader_start = c->start;
  e->ticket++;
  e->queue = Q_NONE;
  e->freq = 0;
  /* The entry is whole before it says LOADING: a process killed here leaves a FREE entry or
   * one a rebuild can judge (only the compiler could reorder; the CPU's stores reach the
   * shared memory in order, or all of them do). */
  atomic_signal_fence(memory_order_seq_cst);
  e->state = LOADING;
  e->hnext = *bucket(c, sh, hash);
  *bucket(c, sh, hash) = i;
  sh->items++;
  sh->bytes += a->bytes;
  a->shard = si;
  a->slot = i;
  a->ticket = e->ticket;
  unlock_shard(sh);
  if (hook_due(HOOK_LOADING))
    hook_stall();
  a->load = a->scratch->data;
  return TSR_CACHE_LOAD;
}

/* Whether the caller's reservation still stands (shard lock held). Only a loader thought dead
 * loses it, which a live process never is; the check keeps it from touching a reused slot. */
static bool still_ours(const struct shared_cache *c, const struct entry *e,
                       const struct tsr_cache_access *a) {
  return e->state == LOADING && e->ticket == a->ticket && loaded_by_me(c, e);
}

static void publish(struct tsr_cache *base, struct tsr_cache_access *a) {
  struct shared_cache *c = (struct shared_cache *)base;
  struct shard *sh = shard_at(c, a->shard);
  struct entry *e = &entries_of(c, sh)[a->slot];
  a->src = a->load + a->offset;
  if (!lock_shard(c, sh))
    return;
  /* Copied in under the lock, after checking the reservation still stands: were this process
   * ever taken for dead, its chunks might be someone else's by now. */
  if (still_ours(c, e, a)) {
    copy_in(c, sh, e, a->load);
    if (hook_due(HOOK_LOCKED)) {
      /* Halfway through linking it into the small queue (head set; its neighbour's link,
       * the tail and the byte count not), for the test that kills it here. */
      e->queue = Q_SMALL;
      e->prev = NIL;
      e->next = sh->small_head;
      sh->small_head = a->slot;
      hook_stall();
    }
    queue_push(c, sh, a->slot, Q_SMALL);
    atomic_signal_fence(memory_order_seq_cst); /* the bytes are in before it says READY */
    e->state = READY;
  }
  unlock_shard(sh);
}

static void abandon(struct tsr_cache *base, struct tsr_cache_access *a) {
  struct shared_cache *c = (struct shared_cache *)base;
  struct shard *sh = shard_at(c, a->shard);
  struct entry *e = &entries_of(c, sh)[a->slot];
  if (!lock_shard(c, sh))
    return;
  if (still_ours(c, e, a))
    free_entry(c, sh, a->slot);
  unlock_shard(sh);
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
  for (uint32_t i = 0; i < c->h->nshards; i++) {
    struct shard *sh = shard_at(c, i);
    if (!lock_shard(c, sh))
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
  for (uint32_t i = 0; i < c->h->nshards; i++) {
    struct shard *sh = shard_at(c, i);
    if (!lock_shard(c, sh))
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
  return stat(path, &st) == 0 && (uint64_t)st.st_dev == dev && (uint64_t)st.st_ino == ino;
}

static bool lock_users(struct header *h) {
  int r = pthread_mutex_lock(&h->users_lock);
  if (r == EOWNERDEAD) {
    pthread_mutex_consistent(&h->users_lock); /* slots are written whole: nothing to repair */
    return true;
  }
  return r == 0;
}

/* Frees the slots of processes that are gone; returns how many live users remain. */
static unsigned prune_users(struct header *h) {
  unsigned live = 0;
  for (unsigned i = 0; i < MAX_USERS; i++) {
    if (!h->users[i].pid)
      continue;
    if (alive(h->users[i].pid, h->users[i].start))
      live++;
    else
      h->users[i].pid = 0;
  }
  return live;
}

/* Takes a user slot; -1 if the table is full. The caller holds the users lock. */
static int take_slot(struct shared_cache *c) {
  struct header *h = c->h;
  prune_users(h);
  for (int i = 0; i < MAX_USERS; i++)
    if (!h->users[i].pid) {
      h->users[i].start = c->start;
      h->users[i].pid = c->pid;
      return i;
    }
  return -1;
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

/* Gives up this attachment's slot; the last live user removes the segment's name. */
static void detach_user(struct shared_cache *c) {
  struct header *h = c->h;
  if (!lock_users(h))
    return;
  if (!c->detached) {
    c->detached = true;
    if (c->slot >= 0 && h->users[c->slot].pid == c->pid)
      h->users[c->slot].pid = 0;
    c->slot = -1;
    if (prune_users(h) == 0 && !atomic_load(&h->unlinked)) {
      atomic_store(&h->unlinked, 1);
      if (names_file(c->name, c->dev, c->ino))
        shm_unlink(c->name);
    }
  }
  pthread_mutex_unlock(&h->users_lock);
}

static void destroy(struct tsr_cache *base) {
  struct shared_cache *c = (struct shared_cache *)base;
  detach_user(c);
  munmap(c->addr, c->size);
  tsr_free(c);
}

static void exiting(struct tsr_cache *base) { detach_user((struct shared_cache *)base); }

static const struct tsr_cache_ops shared_ops;

static struct shared_cache *new_attachment(int fd, uint8_t *addr, size_t size, const char *name,
                                           int record_stats) {
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
  c->slot = -1;
  c->pid = (int32_t)getpid();
  c->start = own_start();
  struct stat st;
  if (fstat(fd, &st) == 0) {
    c->dev = (uint64_t)st.st_dev;
    c->ino = (uint64_t)st.st_ino;
  }
  snprintf(c->name, sizeof c->name, "%s", name);
  return c;
}

/* A forked child shares the parent's mapping, and takes over the parent's attachment record
 * (its own copy): the references in it belong to threads the child does not have, and the
 * locks a parent's thread may hold live in the segment, where that thread releases them. The
 * child becomes a user of the segment in its own name when it first reads (register_user). */
static struct tsr_cache *fork_child(struct tsr_cache *base) {
  struct shared_cache *c = (struct shared_cache *)base;
  c->base.refs = 1;
  c->slot = -1;
  c->detached = false;
  c->pid = (int32_t)getpid();
  c->start = own_start();
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

/* "/name" from "name" or "/name"; false if it is not a valid segment name. */
static bool normalize_name(const char *in, char *out, size_t cap) {
  if (!in)
    return false;
  if (in[0] == '/')
    in++;
  size_t n = strlen(in);
  if (n == 0 || n > TESSERA_SHARED_CACHE_NAME_MAX || strchr(in, '/') || strcmp(in, ".") == 0 ||
      strcmp(in, "..") == 0 || n + 2 > cap)
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
      h->chunks < 1 || h->entries < 1 || h->entries > h->chunks || h->buckets < 1 ||
      (h->buckets & (h->buckets - 1)) != 0)
    return false;
  return layout(h->nshards, h->chunks, h->entries, h->buckets, NULL) == h->segment_bytes &&
         h->segment_bytes == size;
}

/* Makes the segment behind fd (just created, empty), holding an exclusive flock on it so
 * attachers wait until it is ready. */
static tessera_status make_segment(int fd, const char *name, const tessera_cache_options *o,
                                   struct shared_cache **out) {
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
  if (flock(fd, LOCK_EX) != 0)
    return tsr_error(TESSERA_E_IO, "cannot lock shared memory %s: %s", name, strerror(errno));
  /* The magic goes in first, so that `tessera cache list` recognises a segment whose maker
   * died before finishing it. */
  uint64_t magic = SEGMENT_MAGIC;
  int err = ftruncate(fd, (off_t)total) != 0 ? errno : 0;
  if (!err && pwrite(fd, &magic, sizeof magic, 0) != (ssize_t)sizeof magic)
    err = errno ? errno : EIO;
  /* Reserve the memory now: a tmpfs that runs out later would kill a reader with SIGBUS. */
  if (!err)
    err = posix_fallocate(fd, 0, (off_t)total);
  if (err)
    return tsr_error(err == ENOSPC ? TESSERA_E_NOMEM : TESSERA_E_IO,
                     "cannot make a %llu MiB shared cache %s in " SHM_DIR ": %s%s",
                     (unsigned long long)o->memory_capacity_mib, name, strerror(err),
                     err == ENOSPC ? " (a container may need a larger --shm-size)" : "");
  uint8_t *addr = mmap(NULL, (size_t)total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (addr == MAP_FAILED)
    return tsr_error(TESSERA_E_NOMEM, "cannot map shared cache %s: %s", name, strerror(errno));
  struct shared_cache *c = new_attachment(fd, addr, (size_t)total, name, o->record_stats != 0);
  if (!c) {
    munmap(addr, (size_t)total);
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a cache");
  }
  struct header *h = c->h;
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
  init_robust_mutex(&h->users_lock);
  struct shard places[TSR_CACHE_MAX_SHARDS];
  layout(nshards, h->chunks, h->entries, h->buckets, places);
  for (uint32_t s = 0; s < nshards; s++) {
    struct shard *sh = shard_at(c, s);
    init_robust_mutex(&sh->lock);
    sh->entries_off = places[s].entries_off;
    sh->buckets_off = places[s].buckets_off;
    sh->next_off = places[s].next_off;
    sh->owner_off = places[s].owner_off;
    sh->data_off = places[s].data_off;
    sh->small_head = sh->small_tail = sh->main_head = sh->main_tail = NIL;
    struct entry *E = entries_of(c, sh);
    for (uint32_t i = 0; i < h->entries; i++)
      E[i].hnext = i + 1 < h->entries ? i + 1 : NIL;
    sh->free_entries = 0;
    uint32_t *next = next_of(c, sh);
    for (uint32_t k = 0; k < h->chunks; k++)
      next[k] = k + 1 < h->chunks ? k + 1 : NIL;
    sh->free_chunks = 0;
    sh->nfree_chunks = h->chunks;
    uint32_t *B = buckets_of(c, sh);
    for (uint32_t b = 0; b < h->buckets; b++)
      B[b] = NIL;
  }
  c->slot = 0;
  atomic_store(&c->registered, true);
  h->users[0].pid = c->pid;
  h->users[0].start = c->start;
  h->magic = SEGMENT_MAGIC;
  atomic_store(&h->ready, 1);
  flock(fd, LOCK_UN);
  *out = c;
  return TESSERA_OK;
}

/* Whether every shard's arrays lie where the segment's geometry puts them: the index is
 * followed without further checks. */
static bool offsets_sane(const struct shared_cache *c) {
  struct shard places[TSR_CACHE_MAX_SHARDS];
  const struct header *h = c->h;
  layout(h->nshards, h->chunks, h->entries, h->buckets, places);
  for (uint32_t i = 0; i < h->nshards; i++) {
    const struct shard *sh = shard_at(c, i);
    if (sh->entries_off != places[i].entries_off || sh->buckets_off != places[i].buckets_off ||
        sh->next_off != places[i].next_off || sh->owner_off != places[i].owner_off ||
        sh->data_off != places[i].data_off)
      return false;
  }
  return true;
}

/* Whether fd is still the segment the name refers to. */
static bool still_named(int fd, const char *name) {
  struct stat st;
  return fstat(fd, &st) == 0 && names_file(name, (uint64_t)st.st_dev, (uint64_t)st.st_ino);
}

/* Attaches to the existing segment behind fd. *again: it was removed meanwhile (make a new
 * one). Its maker holds an exclusive flock on it until it is ready, so a segment that can be
 * locked but is not ready was left half-made by a process that died. */
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
      /* Not locked by a maker yet: only for the moment between its open and its flock. */
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
  struct shared_cache *c = new_attachment(fd, addr, (size_t)st.st_size, name, record_stats);
  if (!c) {
    munmap(addr, (size_t)st.st_size);
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a cache");
  }
  if (!offsets_sane(c)) {
    c->slot = -1;
    c->detached = true; /* not a user: leave its name alone */
    destroy(&c->base);
    return tsr_error(TESSERA_E_ARGUMENT,
                     "shared cache %s is damaged (its shards lie elsewhere than its geometry "
                     "says); remove it with `tessera cache remove %s`",
                     name, name + 1);
  }
  if (!lock_users(c->h)) {
    destroy(&c->base);
    return tsr_error(TESSERA_E_IO, "shared cache %s: its user table cannot be locked", name);
  }
  if (atomic_load(&c->h->unlinked)) {
    /* Removed: make a new one. If the name is still there, whoever removed it died between
     * the flag and the unlink; finish the job. */
    if (still_named(fd, name))
      shm_unlink(name);
    pthread_mutex_unlock(&c->h->users_lock);
    destroy(&c->base);
    *again = true;
    return TESSERA_OK;
  }
  c->slot = take_slot(c);
  atomic_store(&c->registered, true);
  pthread_mutex_unlock(&c->h->users_lock);
  if (c->slot < 0) {
    destroy(&c->base);
    return tsr_error(TESSERA_E_LIMIT, "shared cache %s already has %d processes using it", name,
                     MAX_USERS);
  }
  *out = c;
  return TESSERA_OK;
}

tessera_status tsr_shared_cache_create(const tessera_cache_options *o, struct tsr_cache **out) {
  static atomic_uint made;
  char name[TESSERA_SHARED_CACHE_NAME_MAX + 2];
  if (o->name) {
    if (!normalize_name(o->name, name, sizeof name))
      return tsr_error(TESSERA_E_ARGUMENT,
                       "'%s' is not a shared cache name: 1 to %d characters, no '/' but a "
                       "leading one",
                       o->name, TESSERA_SHARED_CACHE_NAME_MAX);
  } else {
    snprintf(name, sizeof name, "/tessera-%d-%u", (int)getpid(), atomic_fetch_add(&made, 1));
  }
  hook_read_env();
  for (int attempt = 0; attempt < 100; attempt++) {
    int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd >= 0) {
      struct shared_cache *c = NULL;
      tessera_status st = make_segment(fd, name, o, &c);
      close(fd);
      if (st != TESSERA_OK) {
        shm_unlink(name);
        return st;
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
    fd = shm_open(name, O_RDWR | O_CLOEXEC, 0);
    if (fd < 0) {
      if (errno == ENOENT)
        continue; /* removed between the two opens */
      return tsr_error(TESSERA_E_IO, "cannot open shared cache %s: %s", name, strerror(errno));
    }
    struct shared_cache *c = NULL;
    bool again;
    tessera_status st = attach_segment(fd, name, o->record_stats != 0, &c, &again);
    close(fd);
    if (st != TESSERA_OK)
      return st;
    if (again)
      continue;
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

/* Walks queue q of shard sh, checking its links, entries and byte count. */
static bool verify_queue(const struct shared_cache *c, const struct shard *sh, int q,
                         uint32_t *count, char *why, size_t n) {
  const struct entry *E = entries_of(c, sh);
  uint32_t i = q == Q_SMALL ? sh->small_head : sh->main_head, prev = NIL, steps = 0;
  uint64_t bytes = 0;
  for (; i != NIL; prev = i, i = E[i].next) {
    VERIFY(i < c->h->entries && steps++ < c->h->entries, "queue %d runs out of range or loops", q);
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

static bool verify_shard(const struct shared_cache *c, const struct shard *sh, uint8_t *mark,
                         char *why, size_t n) {
  const struct header *h = c->h;
  const struct entry *E = entries_of(c, sh);
  const uint32_t *next = next_of(c, sh);
  memset(mark, 0, h->chunks);
  uint64_t items = 0, bytes = 0, ready = 0, free_entries = 0;
  for (uint32_t i = 0; i < h->entries; i++) {
    if (E[i].state == FREE)
      continue;
    VERIFY(E[i].state == READY || E[i].state == LOADING, "entry %u in state %d", i, E[i].state);
    items++;
    bytes += E[i].bytes;
    ready += E[i].state == READY;
    uint32_t found = 0, steps = 0;
    for (uint32_t j = *bucket(c, sh, tsr_cache_key_hash(&E[i].key)); j != NIL; j = E[j].hnext) {
      VERIFY(j < h->entries && steps++ < h->entries, "a hash chain runs out of range or loops");
      found += j == i;
    }
    VERIFY(found == 1, "entry %u is in its hash chain %u times", i, found);
    uint32_t k = E[i].first;
    for (uint32_t s = 0; s < chunks_for(E[i].bytes); s++, k = next[k]) {
      VERIFY(k < h->chunks && !mark[k], "entry %u's chunks run out of range or overlap", i);
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
    VERIFY(i < h->entries && steps++ < h->entries, "the free entries run out of range or loop");
    VERIFY(E[i].state == FREE, "free list holds entry %u in state %d", i, E[i].state);
  }
  VERIFY(free_entries + items == h->entries, "%llu free entries and %llu in use, of %u",
         (unsigned long long)free_entries, (unsigned long long)items, h->entries);
  uint32_t in_small, in_main;
  if (!verify_queue(c, sh, Q_SMALL, &in_small, why, n) ||
      !verify_queue(c, sh, Q_MAIN, &in_main, why, n))
    return false;
  VERIFY(in_small + in_main == ready, "%u queued, %llu ready", in_small + in_main,
         (unsigned long long)ready);
  uint32_t free_chunks = 0;
  for (uint32_t k = sh->free_chunks; k != NIL; k = next[k], free_chunks++) {
    VERIFY(k < h->chunks && !mark[k], "free chunk %u out of range or in use", k);
    mark[k] = 1;
  }
  VERIFY(free_chunks == sh->nfree_chunks, "%u free chunks listed, %u counted", free_chunks,
         sh->nfree_chunks);
  for (uint32_t k = 0; k < h->chunks; k++)
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
  uint8_t *mark = tsr_malloc(c->h->chunks);
  bool ok = mark != NULL;
  for (uint32_t i = 0; ok && i < c->h->nshards; i++) {
    struct shard *sh = shard_at(c, i);
    if (!lock_shard(c, sh)) {
      snprintf(why, n, "shard %u cannot be locked", i);
      ok = false;
      break;
    }
    ok = verify_shard(c, sh, mark, why, n);
    unlock_shard(sh);
  }
  tsr_free(mark);
  tsr_cache_release(base);
  return ok;
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
    for (unsigned i = 0; i < MAX_USERS; i++)
      if (h->users[i].pid && alive(h->users[i].pid, h->users[i].start))
        t.users++;
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
  size_t n = info->struct_size < sizeof t ? info->struct_size : sizeof t;
  memcpy(info, &t, n);
  info->struct_size = n;
}

TESSERA_API tessera_status tessera_shared_cache_list(tessera_shared_cache_info *infos,
                                                     size_t capacity, size_t *count) {
  if (!count || (capacity && !infos))
    return tsr_error(TESSERA_E_ARGUMENT, "NULL count, or NULL infos with a capacity");
  for (size_t i = 0; i < capacity; i++)
    if (infos[i].struct_size < sizeof(size_t))
      return tsr_error(TESSERA_E_ARGUMENT, "infos[%zu] has no struct_size", i);
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
  tessera_status st = TESSERA_OK;
  if (ready) {
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
      unsigned live = prune_users(m);
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
