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
 * left out: it needs a second index for little gain on tile streams.
 *
 * Sharding keeps threads on different tiles off each other's locks; each shard's budget is an
 * equal part of the total, so the total is never exceeded. Single flight: the first thread to
 * miss reserves the entry (its bytes counted at once) and decodes; the others wait on the
 * shard's condition variable. Pinned entries (being copied from, or loading) are never
 * evicted or freed. */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "alloc.h"
#include "cache/cache.h"
#include "error.h"

#define TSR_CACHE_MAX_SHARDS 16
#define TSR_CACHE_SHARD_MIN_BYTES ((uint64_t)16 << 20)
#define TSR_CACHE_SHARD_MIN_ITEMS 64
#define TSR_CACHE_MAX_FREQ 3

enum queue { Q_NONE, Q_SMALL, Q_MAIN };

struct tsr_cache_entry {
  struct tsr_cache_key key;
  uint8_t *pixels;
  size_t bytes;
  struct tsr_cache_entry *hnext;       /* hash chain */
  struct tsr_cache_entry *prev, *next; /* queue: next is older */
  unsigned pins;                       /* readers copying from it, or its loader */
  uint8_t freq;                        /* reads since admission or last second chance */
  uint8_t queue;                       /* enum queue; Q_NONE while loading */
  bool loading;
};

struct fifo {
  struct tsr_cache_entry *head, *tail; /* head newest */
  uint64_t bytes;
};

/* Every field after lock is guarded by it. */
struct shard {
  pthread_mutex_t lock;
  pthread_cond_t loaded; /* an entry finished loading or was abandoned */
  struct tsr_cache_entry **table;
  size_t buckets; /* a power of two */
  struct fifo small, main;
  uint64_t bytes, items; /* loading entries included */
  uint64_t hits, misses, evictions;
};

struct tsr_cache {
  unsigned refs; /* 1 while it is the process's cache, plus readers using it; guarded by
                    current_lock */
  tessera_cache_type type;
  uint64_t memory_capacity, item_capacity;
  uint64_t shard_bytes, shard_items; /* each shard's budget (items 0: none) */
  _Atomic int record_stats;
  unsigned nshards;
  struct shard shards[TSR_CACHE_MAX_SHARDS];
};

/* The process's cache. A reader takes a reference under `current_lock` (held only for that,
 * never across a decode, so configure and fork never wait for reads); configure swaps the
 * pointer, and whoever drops the last reference to the old cache frees it. */
static pthread_mutex_t current_lock = PTHREAD_MUTEX_INITIALIZER;
static struct tsr_cache *current;
/* Whether current is set, read without the lock: with no cache (the default) a tile costs no
 * lock at all. A reader that misses a change made meanwhile reads that tile the other way. */
static atomic_bool have_cache;
static tessera_cache_options current_options; /* what made it; guarded by current_lock */
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static uint64_t key_hash(const struct tsr_cache_key *k) {
  uint64_t h = 0x9E3779B97F4A7C15u;
  const uint64_t parts[] = {k->file.device, k->file.inode, k->file.size, (uint64_t)k->file.mtime_ns,
                            k->directory,   k->tile};
  for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
    h ^= parts[i] + 0x9E3779B97F4A7C15u + (h << 6) + (h >> 2);
    h *= 0xBF58476D1CE4E5B9u;
  }
  return h ^ (h >> 31);
}

static bool key_equal(const struct tsr_cache_key *a, const struct tsr_cache_key *b) {
  return a->file.device == b->file.device && a->file.inode == b->file.inode &&
         a->file.size == b->file.size && a->file.mtime_ns == b->file.mtime_ns &&
         a->directory == b->directory && a->tile == b->tile;
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
  q->bytes += e->bytes;
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
  q->bytes -= e->bytes;
}

static struct fifo *queue_of(struct shard *sh, const struct tsr_cache_entry *e) {
  return e->queue == Q_SMALL ? &sh->small : e->queue == Q_MAIN ? &sh->main : NULL;
}

static struct tsr_cache_entry **bucket(struct shard *sh, uint64_t hash) {
  return &sh->table[(hash >> 4) & (sh->buckets - 1)];
}

static struct tsr_cache_entry *find(struct shard *sh, const struct tsr_cache_key *k,
                                    uint64_t hash) {
  for (struct tsr_cache_entry *e = *bucket(sh, hash); e; e = e->hnext)
    if (key_equal(&e->key, k))
      return e;
  return NULL;
}

/* Takes e out of the table and its queue and frees it (it is not pinned). */
static void drop(struct shard *sh, struct tsr_cache_entry *e) {
  struct tsr_cache_entry **p = bucket(sh, key_hash(&e->key));
  while (*p != e)
    p = &(*p)->hnext;
  *p = e->hnext;
  struct fifo *q = queue_of(sh, e);
  if (q)
    fifo_unlink(q, e);
  sh->bytes -= e->bytes;
  sh->items--;
  tsr_free(e->pixels);
  tsr_free(e);
}

/* The oldest entry of q that is not pinned, or NULL. */
static struct tsr_cache_entry *oldest_unpinned(const struct fifo *q) {
  struct tsr_cache_entry *e = q->tail;
  while (e && e->pins > 0)
    e = e->prev;
  return e;
}

/* Evicts one entry, S3-FIFO style; false when every entry is pinned. Pinned entries stay
 * where they are and are passed over. */
static bool evict_one(struct tsr_cache *c, struct shard *sh) {
  /* Each step evicts, promotes (once per entry) or uses up one of an entry's second chances
   * (at most 3), so this many steps always reach an eviction when one is possible. */
  uint64_t steps = (TSR_CACHE_MAX_FREQ + 2) * (sh->items + 1);
  while (steps-- > 0) {
    bool from_small = sh->small.bytes * 10 > c->shard_bytes || !sh->main.tail;
    struct tsr_cache_entry *e = oldest_unpinned(from_small ? &sh->small : &sh->main);
    if (!e) {
      from_small = !from_small;
      e = oldest_unpinned(from_small ? &sh->small : &sh->main);
      if (!e)
        return false;
    }
    struct fifo *q = from_small ? &sh->small : &sh->main;
    fifo_unlink(q, e);
    if (from_small && e->freq > 0) {
      e->freq = 0;
      e->queue = Q_MAIN; /* read again while new: it is worth keeping */
      fifo_push(&sh->main, e);
      continue;
    }
    if (!from_small && e->freq > 0) {
      e->freq--;
      fifo_push(&sh->main, e);
      continue;
    }
    e->queue = Q_NONE;
    drop(sh, e);
    sh->evictions++;
    return true;
  }
  return false;
}

static bool fits(const struct tsr_cache *c, const struct shard *sh, size_t bytes) {
  return sh->bytes + bytes <= c->shard_bytes && (!c->shard_items || sh->items < c->shard_items);
}

/* ---- the internal interface ---- */

static void destroy_cache(struct tsr_cache *c);

struct tsr_cache *tsr_cache_acquire(void) {
  if (!atomic_load_explicit(&have_cache, memory_order_relaxed))
    return NULL;
  pthread_mutex_lock(&current_lock);
  struct tsr_cache *c = current;
  if (c)
    c->refs++;
  pthread_mutex_unlock(&current_lock);
  return c;
}

void tsr_cache_release(struct tsr_cache *c) {
  if (!c)
    return;
  pthread_mutex_lock(&current_lock);
  bool last = --c->refs == 0;
  pthread_mutex_unlock(&current_lock);
  if (last)
    destroy_cache(c);
}

static struct shard *shard_of(struct tsr_cache *c, uint64_t hash) {
  return &c->shards[hash % c->nshards];
}

enum tsr_cache_result tsr_cache_lookup(struct tsr_cache *c, const struct tsr_cache_key *key,
                                       size_t bytes, struct tsr_cache_entry **out) {
  uint64_t hash = key_hash(key);
  struct shard *sh = shard_of(c, hash);
  bool count = c->record_stats;
  pthread_mutex_lock(&sh->lock);
  struct tsr_cache_entry *e;
  while ((e = find(sh, key, hash)) != NULL && e->loading)
    pthread_cond_wait(&sh->loaded, &sh->lock);
  if (e && e->bytes != bytes) {
    /* Same key, other geometry: a file rewritten in place within one mtime tick, say. The
     * entry cannot serve this read; it is left to age out. */
    pthread_mutex_unlock(&sh->lock);
    return TSR_CACHE_BYPASS;
  }
  if (e) {
    e->pins++;
    if (e->freq < TSR_CACHE_MAX_FREQ)
      e->freq++;
    if (count)
      sh->hits++;
    pthread_mutex_unlock(&sh->lock);
    *out = e;
    return TSR_CACHE_HIT;
  }
  if (count)
    sh->misses++;
  if (bytes > c->shard_bytes) {
    pthread_mutex_unlock(&sh->lock);
    return TSR_CACHE_BYPASS;
  }
  while (!fits(c, sh, bytes))
    if (!evict_one(c, sh)) {
      pthread_mutex_unlock(&sh->lock);
      return TSR_CACHE_BYPASS;
    }
  e = tsr_calloc(1, sizeof *e);
  uint8_t *pixels = e ? tsr_malloc(bytes) : NULL;
  if (!pixels) {
    tsr_free(e);
    pthread_mutex_unlock(&sh->lock);
    return TSR_CACHE_BYPASS;
  }
  *e = (struct tsr_cache_entry){
      .key = *key, .pixels = pixels, .bytes = bytes, .pins = 1, .queue = Q_NONE, .loading = true};
  struct tsr_cache_entry **b = bucket(sh, hash);
  e->hnext = *b;
  *b = e;
  sh->bytes += bytes;
  sh->items++;
  pthread_mutex_unlock(&sh->lock);
  *out = e;
  return TSR_CACHE_LOAD;
}

uint8_t *tsr_cache_pixels(struct tsr_cache_entry *e) { return e->pixels; }

void tsr_cache_publish(struct tsr_cache *c, struct tsr_cache_entry *e) {
  struct shard *sh = shard_of(c, key_hash(&e->key));
  pthread_mutex_lock(&sh->lock);
  e->loading = false;
  e->queue = Q_SMALL;
  fifo_push(&sh->small, e);
  pthread_cond_broadcast(&sh->loaded);
  pthread_mutex_unlock(&sh->lock);
}

void tsr_cache_abandon(struct tsr_cache *c, struct tsr_cache_entry *e) {
  struct shard *sh = shard_of(c, key_hash(&e->key));
  pthread_mutex_lock(&sh->lock);
  drop(sh, e);
  pthread_cond_broadcast(&sh->loaded);
  pthread_mutex_unlock(&sh->lock);
}

void tsr_cache_unpin(struct tsr_cache *c, struct tsr_cache_entry *e) {
  struct shard *sh = shard_of(c, key_hash(&e->key));
  pthread_mutex_lock(&sh->lock);
  e->pins--;
  pthread_mutex_unlock(&sh->lock);
}

/* ---- the public calls ---- */

static struct tsr_cache *create_cache(const tessera_cache_options *o);

static void before_fork(void) { pthread_mutex_lock(&current_lock); }
static void after_fork_parent(void) { pthread_mutex_unlock(&current_lock); }

/* A per-process cache is the process's own: a forked child (a DataLoader worker, say) starts
 * with an empty one made the same way. The parent's copy is left alone, not freed: its
 * memory is shared copy-on-write, and the parent's threads may have been inside it (pinning
 * entries, holding shard locks) when the fork happened. */
static void after_fork_child(void) {
  pthread_mutex_init(&current_lock, NULL);
  if (current) {
    current_options.record_stats = current->record_stats;
    current = create_cache(&current_options);
    atomic_store(&have_cache, current != NULL);
  }
}

static void register_atfork(void) {
  pthread_atfork(before_fork, after_fork_parent, after_fork_child);
}

static void destroy_cache(struct tsr_cache *c) {
  if (!c)
    return;
  for (unsigned i = 0; i < c->nshards; i++) {
    struct shard *sh = &c->shards[i];
    for (size_t b = 0; sh->table && b < sh->buckets; b++) {
      for (struct tsr_cache_entry *e = sh->table[b], *next; e; e = next) {
        next = e->hnext;
        tsr_free(e->pixels);
        tsr_free(e);
      }
    }
    tsr_free(sh->table);
    pthread_mutex_destroy(&sh->lock);
    pthread_cond_destroy(&sh->loaded);
  }
  tsr_free(c);
}

static struct tsr_cache *create_cache(const tessera_cache_options *o) {
  struct tsr_cache *c = tsr_calloc(1, sizeof *c);
  if (!c)
    return NULL;
  c->refs = 1;
  c->type = o->type;
  c->memory_capacity = o->memory_capacity_mib << 20;
  c->item_capacity = o->item_capacity;
  c->record_stats = o->record_stats != 0;
  /* Shards of at least 16 MiB and, with an item budget, 64 items: a shard too small to hold
   * several tiles would work as a direct-mapped cache and thrash. */
  uint64_t n = c->memory_capacity / TSR_CACHE_SHARD_MIN_BYTES;
  if (c->item_capacity && n > c->item_capacity / TSR_CACHE_SHARD_MIN_ITEMS)
    n = c->item_capacity / TSR_CACHE_SHARD_MIN_ITEMS;
  c->nshards = n < 1 ? 1 : n > TSR_CACHE_MAX_SHARDS ? TSR_CACHE_MAX_SHARDS : (unsigned)n;
  c->shard_bytes = c->memory_capacity / c->nshards;
  c->shard_items = c->item_capacity / c->nshards;
  /* Buckets for the tiles a shard can hold, at 64 KiB a tile at the smallest. */
  uint64_t want = c->shard_bytes / 65536 + 16;
  if (c->shard_items && want > c->shard_items)
    want = c->shard_items;
  size_t buckets = 1;
  while (buckets < want && buckets < ((size_t)1 << 20))
    buckets *= 2;
  for (unsigned i = 0; i < c->nshards; i++) {
    struct shard *sh = &c->shards[i];
    pthread_mutex_init(&sh->lock, NULL);
    pthread_cond_init(&sh->loaded, NULL);
    sh->buckets = buckets;
    if (!(sh->table = tsr_calloc(buckets, sizeof *sh->table))) {
      c->nshards = i + 1;
      destroy_cache(c);
      return NULL;
    }
  }
  return c;
}

TESSERA_API void tessera_cache_options_init(tessera_cache_options *o) {
  if (!o)
    return;
  memset(o, 0, sizeof *o);
  o->struct_size = sizeof *o;
  o->type = TESSERA_CACHE_NONE;
  o->memory_capacity_mib = 1024;
  o->item_capacity = 0;
  o->record_stats = 0;
}

TESSERA_API tessera_status tessera_cache_configure(const tessera_cache_options *options) {
  tessera_cache_options o;
  tessera_cache_options_init(&o);
  if (!options || options->struct_size < sizeof(size_t))
    return tsr_error(TESSERA_E_ARGUMENT, "NULL cache options, or options without struct_size");
  memcpy(&o, options, options->struct_size < sizeof o ? options->struct_size : sizeof o);
  if (o.type == TESSERA_CACHE_SHARED_MEMORY)
    return tsr_error(TESSERA_E_UNSUPPORTED, "the shared_memory cache is not available yet");
  if (o.type != TESSERA_CACHE_NONE && o.type != TESSERA_CACHE_PER_PROCESS)
    return tsr_error(TESSERA_E_ARGUMENT, "unknown cache type %d", (int)o.type);
  if (o.type != TESSERA_CACHE_NONE &&
      (o.memory_capacity_mib < 1 || o.memory_capacity_mib > ((uint64_t)1 << 30)))
    return tsr_error(TESSERA_E_ARGUMENT, "memory_capacity_mib must be 1 .. 2^30, not %llu",
                     (unsigned long long)o.memory_capacity_mib);
  pthread_once(&atfork_once, register_atfork);
  struct tsr_cache *fresh = NULL;
  if (o.type != TESSERA_CACHE_NONE && !(fresh = create_cache(&o)))
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a cache");
  pthread_mutex_lock(&current_lock);
  struct tsr_cache *old = current;
  current = fresh;
  atomic_store(&have_cache, fresh != NULL);
  current_options = o;
  bool last = old && --old->refs == 0;
  pthread_mutex_unlock(&current_lock);
  if (last)
    destroy_cache(old);
  return TESSERA_OK;
}

TESSERA_API tessera_status tessera_cache_stats_get(tessera_cache_stats *stats) {
  if (!stats || stats->struct_size < sizeof(size_t))
    return tsr_error(TESSERA_E_ARGUMENT, "NULL stats, or stats without struct_size");
  tessera_cache_stats t = {.struct_size = sizeof t, .type = TESSERA_CACHE_NONE};
  struct tsr_cache *c = tsr_cache_acquire();
  if (c) {
    t.type = c->type;
    t.memory_capacity = c->memory_capacity;
    t.item_capacity = c->item_capacity;
    t.record_stats = c->record_stats;
    for (unsigned i = 0; i < c->nshards; i++) {
      struct shard *sh = &c->shards[i];
      pthread_mutex_lock(&sh->lock);
      t.hits += sh->hits;
      t.misses += sh->misses;
      t.evictions += sh->evictions;
      t.items += sh->items;
      t.bytes += sh->bytes;
      pthread_mutex_unlock(&sh->lock);
    }
  }
  tsr_cache_release(c);
  size_t n = stats->struct_size < sizeof t ? stats->struct_size : sizeof t;
  memcpy(stats, &t, n);
  stats->struct_size = n;
  return TESSERA_OK;
}

TESSERA_API void tessera_cache_stats_reset(int32_t record_stats) {
  struct tsr_cache *c = tsr_cache_acquire();
  if (!c)
    return;
  if (record_stats >= 0)
    c->record_stats = record_stats != 0;
  for (unsigned i = 0; i < c->nshards; i++) {
    struct shard *sh = &c->shards[i];
    pthread_mutex_lock(&sh->lock);
    sh->hits = sh->misses = sh->evictions = 0;
    pthread_mutex_unlock(&sh->lock);
  }
  tsr_cache_release(c);
}
