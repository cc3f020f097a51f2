/* The per-process tile cache: shards, each a hash table with its own lock, byte budget and
 * S3-FIFO queues.
 *
 * Why S3-FIFO (Yang et al., SOSP 2023) and not cuCIM's FIFO or CLOCK: a training epoch streams
 * through far more tiles than fit, while the tiles under overlapping patches are read again
 * soon. FIFO and CLOCK let such a scan push every tile out; S3-FIFO admits new tiles to a small
 * queue (a tenth of the budget) and promotes to the main queue only those read again while
 * there, so the scan passes through the small queue and the main one keeps the tiles in
 * repeated use. Main-queue tiles get a second chance per read (up to 3), as in CLOCK. The
 * paper's ghost queue (re-admitting tiles evicted from the small queue straight to main) is
 * left out here: it needs a second index for little gain on tile streams. (cache.c keeps a
 * ghost of its own, of fingerprints only, to decide which tiles to admit at all.)
 *
 * Sharding keeps threads on different tiles off each other's locks; each shard's budget is an
 * equal part of the total, so the total is never exceeded. A shard counts all the memory it
 * takes against its budget: each entry's pixels, its bookkeeping and what malloc adds to them,
 * and its hash table as it doubles with the entries (a table sized for large tiles made the
 * chains of 16 x 16 tiles hundreds long, while their overhead went uncounted). Single flight:
 * the first thread to miss reserves the entry (its bytes counted at once) and decodes; the
 * others wait on the shard's condition variable. Pinned entries (being copied from, or
 * loading) are never evicted or freed. Which tiles are admitted at all is decided above the
 * kinds, in cache.c. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "alloc.h"
#include "cache/cache.h"
#include "cache/s3fifo.h"
#include "error.h"

enum queue { Q_NONE, Q_SMALL, Q_MAIN };

struct chunk;

struct tsr_cache_entry {
  struct tsr_cache_key key;
  uint8_t *pixels;
  struct chunk *chunk;                 /* the pixels' chunk, or NULL: malloc'd */
  size_t bytes;                        /* of the pixels */
  size_t cost;                         /* of the entry and its pixels, as counted */
  struct tsr_cache_entry *hnext;       /* hash chain */
  struct tsr_cache_entry *prev, *next; /* queue: next is older */
  unsigned pins;                       /* readers copying from it, or its loader */
  uint8_t freq;                        /* reads since admission or last second chance */
  uint8_t queue;                       /* enum queue; Q_NONE while loading */
  bool loading;
};

struct fifo {
  struct tsr_cache_entry *head, *tail; /* head newest */
  uint64_t bytes;                      /* the entries' costs */
};

/* Tiles of 64 KiB and more live in chunks: 2 MiB-aligned mappings (a multiple of 2 MiB) cut
 * into equal slots, with transparent huge pages asked for. Memory new to a process costs a
 * fault on each 4 KiB page as it is first written, and on a paravirtualised guest (this
 * project's machines: shadow page tables) a trip to the hypervisor too, even for pages the
 * kernel mapped in beforehand: decoding shuffled sliding windows into fresh malloc'd tiles
 * spent about half its samples there (the colour conversion's stores into the new pages 31 %,
 * MADV_POPULATE_WRITE 18 %). A 2 MiB page is mapped at once, and a slot freed by an eviction
 * is reused by the next tile of its size without touching the kernel.
 *
 * The chunks are the cache's, not a shard's (chunks per shard would leave up to a partly
 * filled chunk in each of 16 shards: 27 MB held for 33 NDPI strips of 95 KB). Each entry in
 * a chunk is counted as its slot's share of the chunk (the chunk's bytes over its slots), so
 * full chunks are counted exactly; a chunk's free slots are not counted: those of the chunk
 * being filled for each tile size, and slots freed by evictions until the next tile of that
 * size takes them (a chunk whose last slot is freed is unmapped). */
#define CHUNK_ALIGN TSR_HUGE_PAGE
#define CHUNK_MAX_SLOTS 64

struct chunk {
  struct chunk *next; /* the shard's chunks */
  uint8_t *base;
  size_t map_bytes, slot;
  unsigned nslots;
  uint64_t used;    /* a bit per slot holding a tile (or one being loaded) */
  uint64_t touched; /* a bit per slot written at least once (populate() needed no more) */
};

/* Chunks mapped and faulted in ahead of need. On this project's VMs the kernel's zeroing of a
 * new huge page (and the host's part in it) was a third of a cold cached run's samples (NDPI
 * 34 %, shuffled sliding windows 40 %), paid by the reader decoding into the chunk while the
 * other core sat idle. So when a reader maps a chunk, the pool's thread maps the next one or
 * two of that size and faults their pages in (MADV_POPULATE_WRITE, else a write to each
 * page), and the next reader to need a chunk of that size takes one ready. The thread prepares
 * a chunk only while what the cache holds stays within its capacity with it: the bytes the
 * shards count, the chunks' slots not counted (free ones), the spares and the new chunk
 * (checked as each is started; a spare is not an entry and is not in the stats' bytes). It
 * is started at the first chunk, and stopped and joined when the cache is destroyed, its
 * spares unmapped. */
#define PREFAULT_AHEAD 2

struct spare {
  uint8_t *base;
  size_t map;
};

struct process_cache;

/* The cache's chunks; its lock is taken inside a shard's, never the other way. */
struct pool {
  pthread_mutex_t lock;
  struct chunk *chunks;
  uint64_t mapped;     /* bytes of the chunks */
  uint64_t used_share; /* their used slots' shares (map bytes / slots each) */
  /* The prefault thread's, under the same lock. */
  struct process_cache *cache;
  pthread_cond_t wake, idle;
  pthread_t thread;
  pid_t thread_pid; /* the process that started it (0: none): a forked child's copy has none */
  bool thread_failed, stop;
  bool release;     /* a shard evicted: the spares are to be unmapped, none made */
  size_t want;      /* map bytes of the chunks readers took last; 0: nothing to prepare */
  size_t preparing; /* map bytes of the chunk being prepared now, unlocked */
  struct spare spare[PREFAULT_AHEAD];
  unsigned nspare;
  uint64_t prepared, taken; /* chunks prefaulted, and taken by readers */
};

/* Every field after lock is guarded by it. */
struct shard {
  struct pool *pool; /* the cache's; set at creation */
  pthread_mutex_t lock;
  pthread_cond_t loaded; /* an entry finished loading or was abandoned */
  struct tsr_cache_entry **table;
  size_t buckets; /* a power of two; doubled when the entries outnumber it */
  struct fifo small, main;
  uint64_t bytes, items; /* bytes: entries' costs (loading ones included) and the table's
                            growth past FIRST_BUCKETS */
  uint64_t hits, misses, evictions;
  uint64_t finds, steps; /* lookups in the table, and the entries they compared */
};


struct process_cache {
  struct tsr_cache base;
  /* The capacities and each shard's budget (items 0: none). Set at creation; reserve() raises
   * them holding every shard's lock, so a shard's lock is enough to read them. */
  uint64_t memory_capacity, item_capacity;
  uint64_t shard_bytes, shard_items;
  unsigned nshards;
  struct shard shards[TSR_CACHE_MAX_SHARDS];
  struct pool pool;
  tessera_cache_options options; /* what made it, for a forked child's */
};

/* Each shard's table to begin with; its 128 bytes are not counted, so that an empty cache
 * holds 0 bytes, as before the table grew. */
#define FIRST_BUCKETS 16

/* Tiles from this size on have their pages mapped in by populate(). */
#define POPULATE_MIN_BYTES ((size_t)64 << 10)

/* Slots of a chunk of `map` bytes for tiles of `bytes`. */
static size_t slots_in(size_t map, size_t bytes) {
  size_t n = map / bytes;
  return n > CHUNK_MAX_SLOTS ? CHUNK_MAX_SLOTS : n;
}

/* What a chunk for tiles of `bytes` maps: the smallest multiple of 2 MiB, up to 16 MiB, that
 * the slots fill but for 1/64 of it (192 KB tiles: 4 MiB of 21; 768 KB: 6 MiB of 8, where 2
 * MiB would hold 2 and waste a quarter), else the one they fill best; 0 when even that wastes
 * more than an eighth (such tiles are malloc'd, as smaller caches' are). */
static size_t chunk_map_bytes(size_t bytes) {
  size_t best = 0;
  uint64_t best_waste = 0;
  for (size_t map = CHUNK_ALIGN; map <= 8 * CHUNK_ALIGN; map += CHUNK_ALIGN) {
    size_t n = slots_in(map, bytes);
    if (n == 0)
      continue;
    uint64_t waste = map - n * bytes;
    if (waste * 64 <= map)
      return map;
    /* waste / map below best_waste / best */
    if (!best || waste * best < best_waste * map) {
      best = map;
      best_waste = waste;
    }
  }
  return best && best_waste * 8 <= best ? best : 0;
}

/* What an allocation of n bytes takes from the system, as glibc's malloc gives it: an 8-byte
 * header, rounded up to 16; large blocks come from mmap, in whole pages with a 16-byte header.
 * Overestimated where malloc's mmap threshold has moved up (it serves such blocks from the
 * heap then), never under. */
static uint64_t allocation_cost(uint64_t n) {
  if (n >= ((uint64_t)128 << 10))
    return (n + 16 + 4095) & ~(uint64_t)4095;
  n = (n + 8 + 15) & ~(uint64_t)15;
  return n < 32 ? 32 : n;
}

/* The entry and its pixels are two allocations: in one, the pixels at an offset from the
 * start of the pages malloc maps for large blocks, libjpeg's whole-tile decodes into the cache
 * ran about half again as long (shuffled sliding windows: 0.27 s against 0.21 s). */
static uint64_t entry_cost(size_t bytes) {
  return allocation_cost(sizeof(struct tsr_cache_entry)) + allocation_cost(bytes);
}

/* ---- queues and table (shard lock held) ---- */

static void fifo_push(struct fifo *q, struct tsr_cache_entry *e) {
  e->prev = NULL;
  e->next = q->head;
  if (q->head)
    q->head->prev = e;
  else
    q->tail = e;
  q->head = e;
  q->bytes += e->cost;
}

static void fifo_unlink(struct fifo *q, struct tsr_cache_entry *e) {
  if (e->prev)
    e->prev->next = e->next;
  else
    q->head = e->next;
  if (e->next)
    e->next->prev = e->prev;
  else
    q->tail = e->prev;
  q->bytes -= e->cost;
}

static struct fifo *queue_of(struct shard *sh, const struct tsr_cache_entry *e) {
  return e->queue == Q_SMALL ? &sh->small : e->queue == Q_MAIN ? &sh->main : NULL;
}

static struct tsr_cache_entry **bucket(struct shard *sh, uint64_t hash) {
  return &sh->table[(hash >> 4) & (sh->buckets - 1)];
}

static struct tsr_cache_entry *find(struct shard *sh, const struct tsr_cache_key *k,
                                    uint64_t hash) {
  sh->finds++;
  for (struct tsr_cache_entry *e = *bucket(sh, hash); e; e = e->hnext) {
    sh->steps++;
    if (tsr_cache_key_equal(&e->key, k))
      return e;
  }
  return NULL;
}

static uint64_t table_cost(size_t buckets) {
  return allocation_cost(buckets * sizeof(struct tsr_cache_entry *));
}

/* What one more entry adds to the table's cost: the doubling it would bring on. */
static uint64_t table_growth(const struct shard *sh) {
  return sh->items + 1 > sh->buckets ? table_cost(sh->buckets * 2) - table_cost(sh->buckets) : 0;
}

/* Doubles the table when the entries outnumber its buckets, so chains stay about one long;
 * out of memory, the old table stays (longer chains, still correct). */
static void grow_table(struct shard *sh) {
  if (sh->items <= sh->buckets)
    return;
  size_t n = sh->buckets * 2;
  struct tsr_cache_entry **t = tsr_calloc(n, sizeof *t);
  if (!t)
    return;
  for (size_t b = 0; b < sh->buckets; b++) {
    for (struct tsr_cache_entry *e = sh->table[b], *next; e; e = next) {
      next = e->hnext;
      struct tsr_cache_entry **to = &t[(tsr_cache_key_hash(&e->key) >> 4) & (n - 1)];
      e->hnext = *to;
      *to = e;
    }
  }
  tsr_free(sh->table);
  sh->bytes += table_cost(n) - table_cost(sh->buckets);
  sh->table = t;
  sh->buckets = n;
}

static uint64_t chunk_cost(size_t map) {
  return map + allocation_cost(sizeof(struct chunk));
}

static unsigned chunk_slots(size_t bytes) {
  return (unsigned)slots_in(chunk_map_bytes(bytes), bytes);
}

/* What an entry whose pixels are in a chunk is counted: its bookkeeping and its slot's share
 * of the chunk, rounded up. */
static uint64_t chunked_entry_cost(size_t bytes) {
  unsigned n = chunk_slots(bytes);
  return allocation_cost(sizeof(struct tsr_cache_entry)) +
         (chunk_cost(chunk_map_bytes(bytes)) + n - 1) / n;
}

/* Whether tiles of `bytes` go into chunks: they are large enough for the page faults to
 * matter (and at most 16 MiB), they fill a chunk but for an eighth at most, and a chunk is a
 * small part of the cache (an eighth at most). */
static bool chunked(const struct process_cache *c, size_t bytes) {
  if (bytes < POPULATE_MIN_BYTES || bytes > 8 * CHUNK_ALIGN)
    return false;
  size_t map = chunk_map_bytes(bytes);
  return map && (uint64_t)map * 8 <= c->memory_capacity;
}

/* A free slot of this size in one of the pool's chunks, marked used (pool lock held); NULL if
 * none. *fresh: never written before. */
static uint8_t *chunk_take(struct pool *pl, size_t bytes, struct chunk **out, bool *fresh) {
  for (struct chunk *k = pl->chunks; k; k = k->next) {
    if (k->slot != bytes)
      continue;
    uint64_t all = k->nslots == 64 ? ~(uint64_t)0 : ((uint64_t)1 << k->nslots) - 1;
    uint64_t free_slots = ~k->used & all;
    if (!free_slots)
      continue;
    unsigned i = (unsigned)__builtin_ctzll(free_slots);
    k->used |= (uint64_t)1 << i;
    pl->used_share += k->map_bytes / k->nslots;
    *fresh = !(k->touched & ((uint64_t)1 << i));
    k->touched |= (uint64_t)1 << i;
    *out = k;
    return k->base + (size_t)i * bytes;
  }
  return NULL;
}

static void chunk_unmap(struct chunk *k) {
  tsr_unmap_huge(k->base, k->map_bytes);
  tsr_free(k);
}

static uint64_t spare_bytes(const struct pool *pl) {
  uint64_t n = pl->preparing;
  for (unsigned i = 0; i < pl->nspare; i++)
    n += pl->spare[i].map;
  return n;
}

/* Faults in a chunk's pages, from the prefault thread, before any reader sees it. */
static void prefault(uint8_t *base, size_t map) {
#ifdef MADV_POPULATE_WRITE
  if (madvise(base, map, MADV_POPULATE_WRITE) == 0)
    return;
#endif
  for (size_t i = 0; i < map; i += 4096)
    ((volatile uint8_t *)base)[i] = 0;
}

/* What the shards count, and the capacity, each shard's lock taken in turn (the pool's not
 * held). */
static uint64_t counted_bytes(struct process_cache *c, uint64_t *capacity) {
  uint64_t n = 0;
  for (unsigned i = 0; i < c->nshards; i++) {
    struct shard *sh = &c->shards[i];
    pthread_mutex_lock(&sh->lock);
    if (i == 0)
      *capacity = c->memory_capacity;
    n += sh->bytes;
    pthread_mutex_unlock(&sh->lock);
  }
  return n;
}

/* The prefault thread: while readers want chunks and there is room for spares, maps one and
 * faults it in with the pool unlocked, then files it as a spare. */
static void *prefault_main(void *arg) {
  struct process_cache *c = arg;
  struct pool *pl = &c->pool;
  pthread_mutex_lock(&pl->lock);
  while (!pl->stop) {
    if (pl->release) {
      struct spare gone[PREFAULT_AHEAD];
      unsigned n = pl->nspare;
      memcpy(gone, pl->spare, sizeof gone);
      pl->nspare = 0;
      pl->release = false;
      pthread_mutex_unlock(&pl->lock);
      for (unsigned i = 0; i < n; i++)
        tsr_unmap_huge(gone[i].base, gone[i].map);
      pthread_mutex_lock(&pl->lock);
      continue;
    }
    if (!pl->want || pl->nspare >= PREFAULT_AHEAD) {
      pthread_cond_broadcast(&pl->idle);
      pthread_cond_wait(&pl->wake, &pl->lock);
      continue;
    }
    pthread_mutex_unlock(&pl->lock);
    uint64_t capacity = 0, counted = counted_bytes(c, &capacity);
    pthread_mutex_lock(&pl->lock);
    size_t map = pl->want;
    if (pl->stop || !map || pl->nspare >= PREFAULT_AHEAD)
      continue;
    /* Within the capacity with it: what the shards count, the chunks' slots they do not (free
     * ones), the spares and this one. */
    if (counted + (pl->mapped - pl->used_share) + spare_bytes(pl) + map > capacity) {
      pl->want = 0; /* full: asked again when a reader maps a chunk */
      continue;
    }
    pl->preparing = map;
    pthread_mutex_unlock(&pl->lock);
    uint8_t *base = tsr_map_huge(map);
    if (base)
      prefault(base, map);
    pthread_mutex_lock(&pl->lock);
    pl->preparing = 0;
    if (!base) {
      pl->want = 0;
    } else if (pl->stop || pl->release) {
      tsr_unmap_huge(base, map);
    } else {
      pl->spare[pl->nspare++] = (struct spare){.base = base, .map = map};
      pl->prepared++;
    }
  }
  pthread_cond_broadcast(&pl->idle);
  pthread_mutex_unlock(&pl->lock);
  return NULL;
}

/* A shard evicted to make room (its lock held): the cache is at its capacity, so the
 * spares are given back, by the thread, and none are made until a reader maps a chunk again
 * (then only within the capacity). */
static void prefault_full(struct pool *pl) {
  pthread_mutex_lock(&pl->lock);
  if (pl->nspare || pl->preparing) {
    pl->release = true;
    pthread_cond_signal(&pl->wake);
  }
  pl->want = 0;
  pthread_mutex_unlock(&pl->lock);
}

/* Asks the prefault thread for chunks of `map` bytes (pool lock held), starting it the first
 * time. */
static void prefault_ask(struct pool *pl, size_t map) {
  pl->want = map;
  if (!pl->thread_pid && !pl->thread_failed) {
    if (pthread_create(&pl->thread, NULL, prefault_main, pl->cache) == 0) {
      pl->thread_pid = getpid();
      (void)pthread_setname_np(pl->thread, "tsr-prefault");
    } else
      pl->thread_failed = true;
  }
  pthread_cond_signal(&pl->wake);
}

/* A spare chunk of `map` bytes, taken from the pool (its lock held); NULL if none. Spares of
 * another size, left when the readers' tile size changed, are unmapped when they fill the
 * pool's room for spares. */
static uint8_t *spare_take(struct pool *pl, size_t map) {
  for (unsigned i = 0; i < pl->nspare; i++) {
    if (pl->spare[i].map == map) {
      uint8_t *b = pl->spare[i].base;
      pl->spare[i] = pl->spare[--pl->nspare];
      pl->taken++;
      return b;
    }
  }
  if (pl->nspare == PREFAULT_AHEAD) {
    tsr_unmap_huge(pl->spare[0].base, pl->spare[0].map);
    pl->spare[0] = pl->spare[--pl->nspare];
  }
  return NULL;
}

/* Maps a new chunk for tiles of `bytes` into the pool (its lock held), a spare one if the
 * prefault thread has one ready; false if the system gives no memory. */
static bool chunk_add(struct pool *pl, size_t bytes) {
  size_t map = chunk_map_bytes(bytes);
  struct chunk *k = tsr_malloc(sizeof *k);
  if (!k)
    return false;
  uint8_t *base = spare_take(pl, map);
  bool ready = base != NULL;
  if (!base)
    base = tsr_map_huge(map);
  if (!base) {
    tsr_free(k);
    return false;
  }
  unsigned n = chunk_slots(bytes);
  *k = (struct chunk){.next = pl->chunks,
                      .base = base,
                      .map_bytes = map,
                      .slot = bytes,
                      .nslots = n,
                      .touched = !ready ? 0 : n == 64 ? ~(uint64_t)0 : ((uint64_t)1 << n) - 1};
  pl->chunks = k;
  pl->mapped += map;
  prefault_ask(pl, map);
  return true;
}

/* Pixels for a new tile of `bytes` in a chunk (one mapped if none has a free slot); NULL if
 * the system gives no memory. */
static uint8_t *chunk_alloc(struct pool *pl, size_t bytes, struct chunk **k, bool *fresh) {
  pthread_mutex_lock(&pl->lock);
  uint8_t *p = chunk_take(pl, bytes, k, fresh);
  if (!p && chunk_add(pl, bytes))
    p = chunk_take(pl, bytes, k, fresh);
  pthread_mutex_unlock(&pl->lock);
  return p;
}

/* Gives an entry's pixels back: a chunk's slot (the chunk unmapped when it was its last), or
 * malloc's block. */
static void free_pixels(struct pool *pl, struct tsr_cache_entry *e) {
  struct chunk *k = e->chunk;
  if (!k) {
    tsr_free(e->pixels);
    return;
  }
  pthread_mutex_lock(&pl->lock);
  k->used &= ~((uint64_t)1 << ((size_t)(e->pixels - k->base) / k->slot));
  pl->used_share -= k->map_bytes / k->nslots;
  if (!k->used) {
    struct chunk **p = &pl->chunks;
    while (*p != k)
      p = &(*p)->next;
    *p = k->next;
    pl->mapped -= k->map_bytes;
    chunk_unmap(k);
  }
  pthread_mutex_unlock(&pl->lock);
}

/* Takes e out of the table and its queue and frees it (it is not pinned). */
static void drop(struct shard *sh, struct tsr_cache_entry *e) {
  struct tsr_cache_entry **p = bucket(sh, tsr_cache_key_hash(&e->key));
  while (*p != e)
    p = &(*p)->hnext;
  *p = e->hnext;
  struct fifo *q = queue_of(sh, e);
  if (q)
    fifo_unlink(q, e);
  sh->bytes -= e->cost;
  sh->items--;
  free_pixels(sh->pool, e);
  tsr_free(e);
}

/* The shard's side of the eviction policy (s3fifo.h): entries by pointer, pinned ones passed
 * over where they are. */
static bool oldest_unpinned(void *shard, bool small, uintptr_t *out, bool *found) {
  struct shard *sh = shard;
  struct tsr_cache_entry *e = small ? sh->small.tail : sh->main.tail;
  while (e && e->pins > 0)
    e = e->prev;
  *out = (uintptr_t)e;
  *found = e != NULL;
  return true;
}

static uint8_t *entry_freq(void *shard, uintptr_t e) {
  (void)shard;
  return &((struct tsr_cache_entry *)e)->freq;
}

static bool to_main(void *shard, uintptr_t entry, bool small) {
  struct shard *sh = shard;
  struct tsr_cache_entry *e = (struct tsr_cache_entry *)entry;
  fifo_unlink(small ? &sh->small : &sh->main, e);
  e->queue = Q_MAIN;
  fifo_push(&sh->main, e);
  return true;
}

static bool evict(void *shard, uintptr_t e, bool small) {
  (void)small; /* drop takes it out of its queue */
  drop(shard, (struct tsr_cache_entry *)e);
  return true;
}

static const struct tsr_s3fifo_ops s3fifo_ops = {
    .oldest = oldest_unpinned, .freq = entry_freq, .to_main = to_main, .evict = evict};

/* Evicts one entry; false when every entry is pinned. */
static bool evict_one(struct process_cache *c, struct shard *sh) {
  if (tsr_s3fifo_evict_one(&s3fifo_ops, sh, &sh->small.bytes, c->shard_bytes, sh->items) !=
      TSR_S3FIFO_EVICTED)
    return false;
  sh->evictions++;
  return true;
}

/* Whether one more entry of this cost fits, with the table growth it brings. */
static bool fits(const struct process_cache *c, const struct shard *sh, uint64_t cost) {
  return sh->bytes + cost + table_growth(sh) <= c->shard_bytes &&
         (!c->shard_items || sh->items < c->shard_items);
}

/* Maps in the whole pages of a new tile's pixels at once, before the decode writes them: a
 * fresh tile's memory is new to the process (malloc maps blocks this large, or grows the heap),
 * and one call costs less than a fault on each page as the decode writes it (shuffled sliding
 * windows: 35252 faults, 16 % of the run's samples; with the call 5738, and mapping the pages
 * 11 %). Best effort: without MADV_POPULATE_WRITE (Linux 5.14) the decode faults as before. */
static void populate(uint8_t *pixels, size_t bytes) {
#ifdef MADV_POPULATE_WRITE
  long page = sysconf(_SC_PAGESIZE);
  if (bytes < POPULATE_MIN_BYTES || page <= 0)
    return;
  uintptr_t mask = (uintptr_t)page - 1;
  uintptr_t start = ((uintptr_t)pixels + mask) & ~mask, end = ((uintptr_t)pixels + bytes) & ~mask;
  if (end > start)
    (void)madvise((void *)start, end - start, MADV_POPULATE_WRITE);
#else
  (void)pixels;
  (void)bytes;
#endif
}

/* Whether the system gives transparent huge pages to a mapping that asks (its setting is
 * "always" or "madvise"): then a chunk's pages are faulted in 2 MiB at a time, and populating
 * them one slot at a time would split nothing but cost a call. Read once. */
static bool hugepages(void) {
  static _Atomic int known = -1;
  int v = known;
  if (v < 0) {
    v = 0;
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "re");
    if (f) {
      char line[128] = "";
      if (fgets(line, sizeof line, f))
        v = strstr(line, "[never]") == NULL;
      fclose(f);
    }
    known = v;
  }
  return v != 0;
}

/* ---- the interface of cache.h ---- */

static struct shard *shard_of(struct process_cache *c, uint64_t hash) {
  return &c->shards[hash % c->nshards];
}

static enum tsr_cache_result lookup(struct tsr_cache *base, struct tsr_cache_access *a) {
  struct process_cache *c = (struct process_cache *)base;
  uint64_t hash = tsr_cache_key_hash(&a->key);
  struct shard *sh = shard_of(c, hash);
  bool count = base->record_stats;
  size_t bytes = a->bytes;
  pthread_mutex_lock(&sh->lock);
  struct tsr_cache_entry *e;
  while ((e = find(sh, &a->key, hash)) != NULL && e->loading)
    pthread_cond_wait(&sh->loaded, &sh->lock);
  if (e && e->bytes != bytes) {
    /* Same key, other geometry: a file rewritten in place within one ctime tick, say. The
     * entry cannot serve this read; it is left to age out. */
    pthread_mutex_unlock(&sh->lock);
    return TSR_CACHE_BYPASS;
  }
  if (e) {
    e->pins++;
    tsr_s3fifo_read(&e->freq);
    if (count)
      sh->hits++;
    pthread_mutex_unlock(&sh->lock);
    a->entry = e;
    a->src = e->pixels + a->offset;
    return TSR_CACHE_HIT;
  }
  if (count)
    sh->misses++;
  bool in_chunk = chunked(c, bytes);
  uint64_t cost = in_chunk ? chunked_entry_cost(bytes) : entry_cost(bytes);
  if (!a->admit || cost + table_cost(sh->buckets) > c->shard_bytes) {
    pthread_mutex_unlock(&sh->lock);
    return a->admit ? TSR_CACHE_BYPASS : TSR_CACHE_MISS;
  }
  while (!fits(c, sh, cost)) {
    if (!evict_one(c, sh)) {
      pthread_mutex_unlock(&sh->lock);
      return TSR_CACHE_BYPASS;
    }
    a->evicted = true;
  }
  if (a->evicted && in_chunk)
    prefault_full(&c->pool);
  struct chunk *k = NULL;
  bool fresh = true;
  e = tsr_malloc(sizeof *e);
  uint8_t *pixels = !e ? NULL : in_chunk ? chunk_alloc(&c->pool, bytes, &k, &fresh) : NULL;
  if (e && !pixels && (!in_chunk || (cost = entry_cost(bytes), fits(c, sh, cost))))
    pixels = tsr_malloc(bytes); /* no chunk to be had: malloc's block, counted as such */
  if (!pixels) {
    tsr_free(e);
    pthread_mutex_unlock(&sh->lock);
    return TSR_CACHE_BYPASS;
  }
  *e = (struct tsr_cache_entry){.key = a->key,
                                .pixels = pixels,
                                .chunk = k,
                                .bytes = bytes,
                                .cost = cost,
                                .pins = 1,
                                .queue = Q_NONE,
                                .loading = true};
  sh->items++;
  sh->bytes += cost;
  grow_table(sh);
  struct tsr_cache_entry **b = bucket(sh, hash);
  e->hnext = *b;
  *b = e;
  pthread_mutex_unlock(&sh->lock);
  if (!k)
    populate(pixels, bytes);
  else if (fresh && !hugepages())
    populate(pixels, bytes);
  a->entry = e;
  a->load = e->pixels;
  return TSR_CACHE_LOAD;
}

static void publish(struct tsr_cache *base, struct tsr_cache_access *a) {
  struct process_cache *c = (struct process_cache *)base;
  struct tsr_cache_entry *e = a->entry;
  struct shard *sh = shard_of(c, tsr_cache_key_hash(&e->key));
  pthread_mutex_lock(&sh->lock);
  e->loading = false;
  e->queue = Q_SMALL;
  fifo_push(&sh->small, e);
  pthread_cond_broadcast(&sh->loaded);
  pthread_mutex_unlock(&sh->lock);
  a->src = e->pixels + a->offset; /* still pinned by the loader */
}

static void abandon(struct tsr_cache *base, struct tsr_cache_access *a) {
  struct process_cache *c = (struct process_cache *)base;
  struct tsr_cache_entry *e = a->entry;
  struct shard *sh = shard_of(c, tsr_cache_key_hash(&e->key));
  pthread_mutex_lock(&sh->lock);
  drop(sh, e);
  pthread_cond_broadcast(&sh->loaded);
  pthread_mutex_unlock(&sh->lock);
}

/* Always true: a pinned entry is never freed. */
static bool done(struct tsr_cache *base, struct tsr_cache_access *a) {
  struct process_cache *c = (struct process_cache *)base;
  struct tsr_cache_entry *e = a->entry;
  struct shard *sh = shard_of(c, tsr_cache_key_hash(&e->key));
  pthread_mutex_lock(&sh->lock);
  e->pins--;
  pthread_mutex_unlock(&sh->lock);
  return true;
}

static void stats(struct tsr_cache *base, tessera_cache_stats *t) {
  struct process_cache *c = (struct process_cache *)base;
  for (unsigned i = 0; i < c->nshards; i++) {
    struct shard *sh = &c->shards[i];
    pthread_mutex_lock(&sh->lock);
    if (i == 0) {
      t->memory_capacity = c->memory_capacity;
      t->item_capacity = c->item_capacity;
    }
    t->hits += sh->hits;
    t->misses += sh->misses;
    t->evictions += sh->evictions;
    t->items += sh->items;
    t->bytes += sh->bytes;
    pthread_mutex_unlock(&sh->lock);
  }
}

void tsr_process_cache_lookup_work(struct tsr_cache *base, uint64_t *finds, uint64_t *steps) {
  struct process_cache *c = (struct process_cache *)base;
  *finds = *steps = 0;
  for (unsigned i = 0; i < c->nshards; i++) {
    struct shard *sh = &c->shards[i];
    pthread_mutex_lock(&sh->lock);
    *finds += sh->finds;
    *steps += sh->steps;
    pthread_mutex_unlock(&sh->lock);
  }
}

static void reset_stats(struct tsr_cache *base) {
  struct process_cache *c = (struct process_cache *)base;
  for (unsigned i = 0; i < c->nshards; i++) {
    struct shard *sh = &c->shards[i];
    pthread_mutex_lock(&sh->lock);
    sh->hits = sh->misses = sh->evictions = 0;
    pthread_mutex_unlock(&sh->lock);
  }
}

/* Grows the budgets in place. The shards stay as many as the first size made them: each just
 * gets a larger part (their count matters for lock contention, not for what they can hold).
 * The options a forked child's cache is made from grow too. */
static void reserve(struct tsr_cache *base, uint64_t memory_capacity, uint64_t item_capacity) {
  struct process_cache *c = (struct process_cache *)base;
  for (unsigned i = 0; i < c->nshards; i++)
    pthread_mutex_lock(&c->shards[i].lock);
  if (memory_capacity > c->memory_capacity) {
    c->memory_capacity = memory_capacity;
    c->shard_bytes = memory_capacity / c->nshards;
    c->options.memory_capacity_mib = memory_capacity >> 20;
  }
  if (c->item_capacity && item_capacity > c->item_capacity) {
    c->item_capacity = item_capacity;
    c->shard_items = item_capacity / c->nshards;
    c->options.item_capacity = item_capacity;
  }
  for (unsigned i = c->nshards; i-- > 0;)
    pthread_mutex_unlock(&c->shards[i].lock);
}

/* Stops the prefault thread (started by this process) and unmaps its spares. */
static void prefault_stop(struct pool *pl) {
  pthread_mutex_lock(&pl->lock);
  pl->stop = true;
  pthread_cond_broadcast(&pl->wake);
  bool join = pl->thread_pid && pl->thread_pid == getpid();
  pthread_mutex_unlock(&pl->lock);
  if (join)
    pthread_join(pl->thread, NULL);
  pl->thread_pid = 0;
  for (unsigned i = 0; i < pl->nspare; i++)
    tsr_unmap_huge(pl->spare[i].base, pl->spare[i].map);
  pl->nspare = 0;
}

void tsr_process_cache_pool_state(struct tsr_cache *base, struct tsr_process_cache_pool *out,
                                  bool wait_idle) {
  struct process_cache *c = (struct process_cache *)base;
  struct pool *pl = &c->pool;
  pthread_mutex_lock(&pl->lock);
  while (wait_idle && pl->thread_pid && !pl->stop &&
         (pl->preparing || pl->release || (pl->want && pl->nspare < PREFAULT_AHEAD)))
    pthread_cond_wait(&pl->idle, &pl->lock);
  *out = (struct tsr_process_cache_pool){.mapped = pl->mapped,
                                         .unused = pl->mapped - pl->used_share,
                                         .spare = spare_bytes(pl),
                                         .prepared = pl->prepared,
                                         .taken = pl->taken,
                                         .thread = pl->thread_pid != 0};
  pthread_mutex_unlock(&pl->lock);
}

static void destroy(struct tsr_cache *base) {
  struct process_cache *c = (struct process_cache *)base;
  prefault_stop(&c->pool);
  for (unsigned i = 0; i < c->nshards; i++) {
    struct shard *sh = &c->shards[i];
    for (size_t b = 0; sh->table && b < sh->buckets; b++) {
      for (struct tsr_cache_entry *e = sh->table[b], *next; e; e = next) {
        next = e->hnext;
        if (!e->chunk)
          tsr_free(e->pixels);
        tsr_free(e);
      }
    }
    tsr_free(sh->table);
    pthread_mutex_destroy(&sh->lock);
    pthread_cond_destroy(&sh->loaded);
  }
  for (struct chunk *k = c->pool.chunks, *next; k; k = next) {
    next = k->next;
    chunk_unmap(k);
  }
  pthread_mutex_destroy(&c->pool.lock);
  pthread_cond_destroy(&c->pool.wake);
  pthread_cond_destroy(&c->pool.idle);
  tsr_free(c);
}

/* A per-process cache is the process's own: a forked child (a DataLoader worker, say) starts
 * with an empty one made the same way. The parent's copy is left alone, not freed: its
 * memory is shared copy-on-write, and the parent's threads may have been inside it (pinning
 * entries, holding shard locks) when the fork happened. */
static struct tsr_cache *fork_child(struct tsr_cache *base) {
  struct process_cache *c = (struct process_cache *)base;
  c->options.record_stats = base->record_stats;
  return tsr_process_cache_create(&c->options);
}

static const struct tsr_cache_ops process_ops = {
    .lookup = lookup,
    .publish = publish,
    .abandon = abandon,
    .done = done,
    .stats = stats,
    .reset_stats = reset_stats,
    .reserve = reserve,
    .fork_child = fork_child,
    .exiting = NULL,
    .destroy = destroy,
};

struct tsr_cache *tsr_process_cache_create(const tessera_cache_options *o) {
  struct process_cache *c = tsr_calloc(1, sizeof *c);
  if (!c)
    return NULL;
  c->base.ops = &process_ops;
  c->base.refs = 1;
  c->base.type = TESSERA_CACHE_PER_PROCESS;
  c->base.record_stats = o->record_stats != 0;
  c->options = *o;
  c->options.name = NULL;
  c->memory_capacity = o->memory_capacity_mib << 20;
  c->item_capacity = o->item_capacity;
  c->nshards = tsr_cache_shard_count(c->memory_capacity, c->item_capacity);
  c->shard_bytes = c->memory_capacity / c->nshards;
  c->shard_items = c->item_capacity / c->nshards;
  pthread_mutex_init(&c->pool.lock, NULL);
  pthread_cond_init(&c->pool.wake, NULL);
  pthread_cond_init(&c->pool.idle, NULL);
  c->pool.cache = c;
  for (unsigned i = 0; i < c->nshards; i++) {
    struct shard *sh = &c->shards[i];
    sh->pool = &c->pool;
    pthread_mutex_init(&sh->lock, NULL);
    pthread_cond_init(&sh->loaded, NULL);
    sh->buckets = FIRST_BUCKETS;
    if (!(sh->table = tsr_calloc(FIRST_BUCKETS, sizeof *sh->table))) {
      c->nshards = i + 1;
      destroy(&c->base);
      return NULL;
    }
  }
  return &c->base;
}
