/* The process's current cache, which tiles it admits, and the public calls that configure it
 * and read its statistics; the kinds themselves live in process.c and shared.c. */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "abi.h"
#include "alloc.h"
#include "cache/cache.h"
#include "error.h"
#include "mix.h"

uint64_t tsr_cache_key_hash(const struct tsr_cache_key *k) {
  uint64_t h = 0x9E3779B97F4A7C15u;
  const uint64_t parts[] = {k->file.device,
                            k->file.inode,
                            k->file.size,
                            (uint64_t)k->file.mtime_ns,
                            (uint64_t)k->file.ctime_ns,
                            k->directory,
                            k->tile};
  for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
    h ^= parts[i] + 0x9E3779B97F4A7C15u + (h << 6) + (h >> 2);
    h *= 0xBF58476D1CE4E5B9u;
  }
  return h ^ (h >> 31);
}

bool tsr_cache_key_equal(const struct tsr_cache_key *a, const struct tsr_cache_key *b) {
  return a->file.device == b->file.device && a->file.inode == b->file.inode &&
         a->file.size == b->file.size && a->file.mtime_ns == b->file.mtime_ns &&
         a->file.ctime_ns == b->file.ctime_ns && a->directory == b->directory && a->tile == b->tile;
}

/* A shard too small to hold several tiles would work as a direct-mapped cache and thrash. */
unsigned tsr_cache_shard_count(uint64_t memory_capacity, uint64_t item_capacity) {
  uint64_t n = memory_capacity / TSR_CACHE_SHARD_MIN_BYTES;
  if (item_capacity && n > item_capacity / TSR_CACHE_SHARD_MIN_ITEMS)
    n = item_capacity / TSR_CACHE_SHARD_MIN_ITEMS;
  return n < 1 ? 1 : n > TSR_CACHE_MAX_SHARDS ? TSR_CACHE_MAX_SHARDS : (unsigned)n;
}

/* ---- admission ----
 *
 * A tile is cached only when it is read again, or when its first use covers most of it (see
 * tsr_cache_lookup). A miss that fills the cache decodes the whole tile, where a read without
 * the cache decodes only the rows and columns it needs (JPEG), and the tile then holds memory
 * other tiles could use. Patches at random over a large slide seldom come back to a tile
 * before it would be evicted: caching every miss made such a stream 2.6x slower than no
 * cache. So a first miss decodes as if there were no cache and leaves the tile's fingerprint
 * in a ghost; a miss on a tile whose fingerprint is still there is admitted if it was missed
 * within the window, a span of the latest missed bytes.
 *
 * The window is a tenth of the capacity (the span of S3-FIFO's small queue, whose test this
 * is: a tile not read again while it would be there is seldom read again) while fewer than
 * half the misses are of tiles missed within the capacity's span before, and the capacity
 * (the test of S3-FIFO's ghost queue: a tile missed again while it would still be cached had
 * it been admitted then) while at least half are. With a share f of misses coming back
 * within the span, a tile admitted is hit about f / (1 - f) times before it goes; an
 * admission costs about one partial decode more than a miss (the tile decoded whole, new
 * memory faulted in) and a hit saves about one, so caching pays from f = 1/2 on. Shuffled
 * sliding windows and NDPI patches come back soon (f near 1 once their tiles have been seen);
 * random patches over a large slide come back at random (f about 0.2 to 0.3 with 1 GiB), and
 * with the whole capacity as window a third of their second misses were admitted, most never
 * read a third time (0.5x the speed of no cache). The share is counted over each 256 misses
 * and sets the window for the next ones; a new cache starts narrow.
 *
 * The ghost is a table of sets of 8 cells, each cell a fingerprint and the clock (bytes missed
 * so far) when it was put there; a tile goes into its set in place of the oldest. So the ghost
 * is bounded, 8 bytes per 4 KiB of capacity (outside the capacity), and forgets a tile early
 * only when 8 tiles of one set were missed since: that tile then costs one more partial
 * decode (with one cell a set, two tiles read in turn would push each other out forever).
 * A cell is taken by compare-and-swap, so two threads noting two tiles of one set at once both
 * keep theirs (the neighbouring tiles of a patch are missed together, on different threads);
 * the clock and counts are atomics used relaxed: a race changes one setting of the window at
 * most. The ghost is the process's own, even for a shared cache: a
 * shared tile is admitted when one process misses it twice, and then every process hits it.
 *
 * A tile is admitted at its first miss too when what it is read from is small beside the
 * cache, while the cache has not evicted to make room for this process's tiles within the
 * capacity's span of misses:
 * - its level, within a tenth of the capacity (in bytes, and in tiles where items are
 *   limited). Read once, it takes a tenth of the cache at most; read again, every tile is a
 *   hit, where the ghost would have each decoded twice first (in part, then whole: NDPI
 *   patches, whose level of 608 restart intervals is 58 MB, decoded 314 of them twice with
 *   1 GiB);
 * - the rectangle of tiles that the level's last REGION_EPOCH misses in this process fell
 *   in, within half the capacity: the reads keep to a part of the level that the cache can
 *   hold whole, with as much again to spare. Shuffled sliding windows over a band of a large
 *   slide (628 tiles, 123 MB) decoded 515 tiles twice; random patches over the slide miss
 *   all over it (3.8 GB), so this admits none of theirs after the first epoch.
 * Neither can thrash the cache. What they cost where the tiles are not read again (a scan
 * read once, many small slides read in turn) is a whole decode where a part would have done,
 * for at most half the cache's worth of tiles, until the evictions hand admission back to the
 * ghost; a tile read in a region's first epoch waits for the ghost as before. Per-process
 * caches only: a shared cache's capacity is shared with processes this one cannot see, which
 * may each take such a part of it, so there the ghost alone decides. (Tiles beside a
 * tile admitted lately were tried as a sign of such streams too: they would have admitted 48
 * of the sliding windows' 515, and any tile missed beside it 206.)
 *
 * Tiles admitted by their return within a narrow window or by their first use's cover must
 * then be read again: a per-process cache counts its hits (all of them) and such admissions
 * (loads), and when the loads reach YIELD_EPOCH before the hits do (an admitted tile is read
 * again less than once: the break-even above) it is thin, admitting one such tile in
 * THIN_SAMPLE, until the hits reach YIELD_EPOCH first (both counts halved at each decision).
 * Random patches over the large sample (1 GiB) admitted about 250 tiles so, and got 145 hits
 * from them: about 0.6 a tile, each admission a whole decode and new memory (on the 2-vCPU VM
 * of bench/RESULTS.md, whose first write to a page is slow, 5 to 10 % of the run); thinned,
 * about 90 and 58 there. A thin cache's admissions keep sampling the stream, and a stream
 * that turns local ends the thinning within YIELD_EPOCH hits. Hits come after loads, so
 * counts taken too early read as a poor yield; thinning therefore waits for evidence:
 * - not for tiles admitted as small beside the cache: a stream filling an empty cache with
 *   them (NDPI patches, sliding windows over a band) has few hits while its first loads go
 *   in and tens a load after (thinning those too cost NDPI patches 1939 misses where 608 do);
 * - not before the first GHOST_EPOCH misses have set the window, nor while it is wide: most
 *   misses then come back within the capacity's span, so admitting pays (above), and a
 *   stream read in rounds (a training set's tiles read once an epoch, the cache holding
 *   them all) has its hits a round after its loads. What this still costs such a stream: a
 *   round of more than GHOST_EPOCH misses, read in uses that cover whole tiles, has the
 *   covered tiles past the first YIELD_EPOCH loads after that epoch thinned in its first
 *   round, so seven in eight of them are cached a round later (at their return).
 * Per-process caches only: a shared tile's hits are mostly other processes', which this one
 * cannot count. */
#define GHOST_STAMP_SHIFT 12 /* stamps count 4 KiB */
#define GHOST_WAYS 8         /* cells of a set (64 bytes) */
#define GHOST_MIN_CELLS ((size_t)1 << 12)
#define GHOST_MAX_CELLS ((size_t)1 << 22)
#define GHOST_EPOCH 256 /* misses between two settings of the window */
#define REGION_EPOCH 32 /* a level's misses between two settings of its region */
#define YIELD_EPOCH 64  /* hits or loads that decide whether the cache is thin */
#define THIN_SAMPLE 8   /* a thin cache admits one tile in this many */

struct tsr_ghost {
  /* The cache's capacities (bytes; tiles, 0: none, which may narrow the window): atomic
   * because tessera_cache_reserve raises them while reads use them. */
  atomic_uint_fast64_t capacity, item_capacity;
  size_t set_mask;            /* sets - 1 */
  atomic_uint_fast64_t clock; /* bytes missed so far */
  /* Since the window was last set: misses, and those of tiles missed within the capacity's
   * span before. Reset by the thread whose miss ends the epoch. */
  atomic_uint_fast64_t misses, returns;
  atomic_bool wide;        /* the window is the capacity's span, not a tenth of it */
  atomic_bool measured;    /* an epoch has set the window */
  /* The clock + 1 at the latest miss whose load evicted a tile; 0: none yet. */
  atomic_uint_fast64_t evicted_at;
  /* The yield (yield_note), 64 bytes apart from the fields around it (a calloc'd ghost
   * cannot be over-aligned), so that every hit of a per-process cache, which
   * counts there, shares no cache line with what misses write. hits and loads, halved at each
   * decision; thin: the loads reached YIELD_EPOCH first at the last one; passed: admissions
   * a thin cache has weighed. */
  char apart[64];
  struct {
    atomic_uint_fast64_t hits, loads, passed;
    atomic_bool thin;
  } yield;
  char apart_too[64];
  _Atomic uint64_t cell[]; /* fingerprint << 32 | the clock's stamp */
};

static struct tsr_ghost *ghost_create(uint64_t memory_capacity, uint64_t item_capacity) {
  size_t cells = GHOST_MIN_CELLS;
  while (cells < GHOST_MAX_CELLS && cells < memory_capacity >> GHOST_STAMP_SHIFT)
    cells *= 2;
  struct tsr_ghost *g = tsr_calloc(1, sizeof *g + cells * sizeof g->cell[0]);
  if (!g)
    return NULL;
  g->capacity = memory_capacity;
  g->item_capacity = item_capacity;
  g->set_mask = cells / GHOST_WAYS - 1;
  return g;
}

static uint64_t ghost_capacity(struct tsr_ghost *g) {
  return atomic_load_explicit(&g->capacity, memory_order_relaxed);
}

static uint64_t ghost_item_capacity(struct tsr_ghost *g) {
  return atomic_load_explicit(&g->item_capacity, memory_order_relaxed);
}

static _Atomic uint64_t *ghost_set(struct tsr_ghost *g, uint64_t hash) {
  return &g->cell[(hash & g->set_mask) * GHOST_WAYS];
}

/* Never 0, so an empty cell matches no tile. */
static uint32_t fingerprint(uint64_t hash) { return (uint32_t)(hash >> 32) | 1; }

static uint32_t stamp(uint64_t clock) { return (uint32_t)(clock >> GHOST_STAMP_SHIFT); }

/* Whether a tile of this many bytes was missed within the capacity's span (*returns) and
 * within the window (the result). The span is the capacity, or the item capacity's worth of
 * such tiles if that is less. */
static bool ghost_admits(struct tsr_ghost *g, uint64_t hash, size_t bytes, bool *returns) {
  uint64_t span = ghost_capacity(g), item_capacity = ghost_item_capacity(g), items;
  if (item_capacity && !__builtin_mul_overflow(item_capacity, bytes, &items) && items < span)
    span = items;
  span >>= GHOST_STAMP_SHIFT;
  if (span > UINT32_MAX / 2)
    span = UINT32_MAX / 2;
  uint64_t window =
      atomic_load_explicit(&g->wide, memory_order_relaxed) ? span : span / TSR_CACHE_SMALL_PART;
  uint32_t now = stamp(atomic_load_explicit(&g->clock, memory_order_relaxed));
  _Atomic uint64_t *set = ghost_set(g, hash);
  *returns = false;
  for (unsigned i = 0; i < GHOST_WAYS; i++) {
    uint64_t s = atomic_load_explicit(&set[i], memory_order_relaxed);
    if ((uint32_t)(s >> 32) == fingerprint(hash)) {
      uint32_t age = now - (uint32_t)s;
      *returns = age <= span + 1; /* + 1: stamps are rounded down */
      return age <= window + 1;
    }
  }
  return false;
}

/* Whether `tiles` tiles of this many bytes fit in a part (1 / den) of the cache. */
static bool fits_part(struct tsr_ghost *g, uint64_t tiles, size_t bytes, unsigned den) {
  uint64_t total, item_capacity = ghost_item_capacity(g);
  return !__builtin_mul_overflow(tiles, (uint64_t)bytes, &total) &&
         total <= ghost_capacity(g) / den && (!item_capacity || tiles <= item_capacity / den);
}

/* Whether the tile's level, or the rectangle its last epoch of misses fell in, is small beside
 * the cache, which has not evicted to load a tile within the capacity's span of misses. */
static bool ghost_small_beside(struct tsr_ghost *g, const struct tsr_cache_access *a) {
  uint64_t lo = atomic_load_explicit(&a->region->last_lo, memory_order_relaxed);
  uint64_t hi = atomic_load_explicit(&a->region->last_hi, memory_order_relaxed);
  uint64_t w = (hi >> 32) - (lo >> 32), h = (hi & UINT32_MAX) - (lo & UINT32_MAX), tiles;
  /* Read apart from each other, the two may come from two epochs: then w or h may wrap. */
  bool region =
      hi != 0 && !__builtin_mul_overflow(w, h, &tiles) && fits_part(g, tiles, a->bytes, 2);
  if (!region && !fits_part(g, a->level_tiles, a->bytes, TSR_CACHE_SMALL_PART))
    return false;
  uint64_t at = atomic_load_explicit(&g->evicted_at, memory_order_relaxed);
  return at == 0 || atomic_load_explicit(&g->clock, memory_order_relaxed) - (at - 1) > ghost_capacity(g);
}

static void atomic_raise(atomic_uint_fast64_t *a, uint64_t v) {
  uint64_t was = atomic_load_explicit(a, memory_order_relaxed);
  while (was < v && !atomic_compare_exchange_weak_explicit(a, &was, v, memory_order_relaxed,
                                                           memory_order_relaxed)) {
  }
}

/* A miss of tile (x, y) of the region's level: widens the epoch's rectangle; the epoch's last
 * miss makes it the region's. */
static void region_note(struct tsr_miss_region *r, uint32_t x, uint32_t y) {
  atomic_raise(&r->lo_x, UINT32_MAX - x);
  atomic_raise(&r->lo_y, UINT32_MAX - y);
  atomic_raise(&r->hi_x, (uint64_t)x + 1);
  atomic_raise(&r->hi_y, (uint64_t)y + 1);
  if (atomic_fetch_add_explicit(&r->misses, 1, memory_order_relaxed) + 1 < REGION_EPOCH)
    return;
  atomic_store_explicit(&r->misses, 0, memory_order_relaxed);
  uint64_t lx = atomic_exchange_explicit(&r->lo_x, 0, memory_order_relaxed);
  uint64_t ly = atomic_exchange_explicit(&r->lo_y, 0, memory_order_relaxed);
  uint64_t hx = atomic_exchange_explicit(&r->hi_x, 0, memory_order_relaxed);
  uint64_t hy = atomic_exchange_explicit(&r->hi_y, 0, memory_order_relaxed);
  if (lx == 0 || ly == 0 || hx == 0 || hy == 0)
    return; /* another thread's reset came between: this epoch is lost */
  atomic_store_explicit(&r->last_lo, (UINT32_MAX - lx) << 32 | (UINT32_MAX - ly),
                        memory_order_relaxed);
  atomic_store_explicit(&r->last_hi, hx << 32 | hy, memory_order_relaxed);
}

/* A miss of a tile of this many bytes; remember: the tile was not admitted, so the ghost
 * takes it, in place of its own older record or of the set's oldest. returns: as
 * ghost_admits said; the miss that ends an epoch sets the window. evicted: the cache evicted
 * to make room for this tile. */
static void ghost_note(struct tsr_ghost *g, uint64_t hash, size_t bytes, bool remember,
                       bool returns, bool evicted) {
  uint64_t clock = atomic_fetch_add_explicit(&g->clock, bytes, memory_order_relaxed) + bytes;
  uint32_t now = stamp(clock);
  if (evicted)
    atomic_store_explicit(&g->evicted_at, clock + 1, memory_order_relaxed);
  if (returns)
    atomic_fetch_add_explicit(&g->returns, 1, memory_order_relaxed);
  if (atomic_fetch_add_explicit(&g->misses, 1, memory_order_relaxed) + 1 >= GHOST_EPOCH) {
    atomic_store_explicit(&g->misses, 0, memory_order_relaxed);
    uint64_t back = atomic_exchange_explicit(&g->returns, 0, memory_order_relaxed);
    atomic_store_explicit(&g->wide, back * 2 >= GHOST_EPOCH, memory_order_relaxed);
    atomic_store_explicit(&g->measured, true, memory_order_relaxed);
  }
  if (!remember)
    return;
  _Atomic uint64_t *set = ghost_set(g, hash);
  uint64_t cell = (uint64_t)fingerprint(hash) << 32 | now;
  /* The cell is taken by compare-and-swap: two threads noting two tiles of one set at once
   * (neighbouring tiles of one patch are) would otherwise both take its first empty cell,
   * and one tile would be forgotten. A few tries; past them another thread's note stands. */
  for (int attempt = 0; attempt < 4; attempt++) {
    unsigned victim = 0;
    uint32_t oldest = 0;
    uint64_t seen = 0;
    for (unsigned i = 0; i < GHOST_WAYS; i++) {
      /* Cells fill in order and are never emptied: past an empty one, all are empty. */
      uint64_t s = atomic_load_explicit(&set[i], memory_order_relaxed);
      if (s == 0 || (uint32_t)(s >> 32) == fingerprint(hash)) {
        victim = i;
        seen = s;
        break;
      }
      if (i == 0 || now - (uint32_t)s > oldest) {
        oldest = now - (uint32_t)s;
        victim = i;
        seen = s;
      }
    }
    if (atomic_compare_exchange_strong_explicit(&set[victim], &seen, cell, memory_order_relaxed,
                                                memory_order_relaxed))
      return;
  }
}

/* A lookup's result, for the yield: every hit counts, and the loads of tiles admitted by
 * their return or cover alone (sampled), the admissions thinning can hold back. Whichever
 * count reaches YIELD_EPOCH first decides: the loads, thin; the hits, not; and both are
 * halved (a race may lose a count or two: they steer, nothing depends on them exactly). */
static void yield_note(struct tsr_ghost *g, enum tsr_cache_result r, bool sampled) {
  bool hit = r == TSR_CACHE_HIT;
  if (!hit && (r != TSR_CACHE_LOAD || !sampled))
    return;
  if (atomic_fetch_add_explicit(hit ? &g->yield.hits : &g->yield.loads, 1, memory_order_relaxed) + 1 <
      YIELD_EPOCH)
    return;
  atomic_store_explicit(&g->yield.thin, !hit, memory_order_relaxed);
  uint64_t hits = atomic_load_explicit(&g->yield.hits, memory_order_relaxed);
  uint64_t loads = atomic_load_explicit(&g->yield.loads, memory_order_relaxed);
  atomic_store_explicit(&g->yield.hits, hits / 2, memory_order_relaxed);
  atomic_store_explicit(&g->yield.loads, loads / 2, memory_order_relaxed);
}

/* Whether an admission stands: always, unless the cache is thin; then one in THIN_SAMPLE,
 * drawn from a mix of the tile and a count of the draws. (The count alone aliased with
 * cycles: asked before the lookup, the draw is made for hits too, and 4 tiles read in turn,
 * one held, gave every eighth draw to that one.) */
static bool yield_admits(struct tsr_ghost *g, uint64_t hash) {
  if (!atomic_load_explicit(&g->yield.thin, memory_order_relaxed))
    return true;
  uint64_t draw = atomic_fetch_add_explicit(&g->yield.passed, 1, memory_order_relaxed);
  return tsr_mix64(hash + draw * TSR_MIX_GOLDEN) % THIN_SAMPLE == 0;
}

/* A use that paints most of a tile (a->covers) is admitted at its first miss: partial
 * decoding would save little there (a JPEG part decode skips the rows below the part and the
 * IDCT of the columns beside it), so the whole decode costs about what the miss would, and a
 * tile read in most of its area is the tile of a grid, of a level read whole, of the patches of
 * a batch that share it, or of overlapping windows, all likely read again. Shuffled sliding
 * windows then decoded 113 of their 628 tiles once where they were decoded twice (the NDPI
 * level's restart intervals: 294 of 608), while of random 224 x 224 patches over the large
 * sample 129 tiles in 9986 were admitted so, 41 of them read again. */
enum tsr_cache_result tsr_cache_lookup(struct tsr_cache *c, struct tsr_cache_access *a) {
  uint64_t hash = tsr_cache_key_hash(&a->key);
  /* The ghost's sets and fingerprints come from a mix of the key's hash, whose low bits follow
   * the tile's index: neighbouring tiles, missed together, fell in one set or near ones. */
  uint64_t ghost_key = tsr_mix64(hash);
  bool returns;
  bool back = ghost_admits(c->ghost, ghost_key, a->bytes, &returns);
  bool own = c->type == TESSERA_CACHE_PER_PROCESS, by_use = back || a->covers;
  bool small = own && ghost_small_beside(c->ghost, a);
  /* admitted to a per-process cache by its return or its cover alone, while the window is
   * measured narrow: these may be thinned */
  bool sampled = own && !small && by_use &&
                 atomic_load_explicit(&c->ghost->measured, memory_order_relaxed) &&
                 !atomic_load_explicit(&c->ghost->wide, memory_order_relaxed);
  a->admit = small || (by_use && (!sampled || yield_admits(c->ghost, hash)));
  a->evicted = false;
  enum tsr_cache_result r = c->ops->lookup(c, a);
  if (own)
    yield_note(c->ghost, r, sampled);
  if (r == TSR_CACHE_MISS || r == TSR_CACHE_LOAD) {
    ghost_note(c->ghost, ghost_key, a->bytes, r == TSR_CACHE_MISS, returns, a->evicted);
    region_note(a->region, a->x, a->y);
  }
  return r;
}

/* Frees a cache that is no longer current and that no reader holds. */
static void cache_destroy(struct tsr_cache *c) {
  tsr_free(c->ghost);
  c->ops->destroy(c);
}

/* ---- the current cache ----
 *
 * The process's cache. A reader takes a reference under `current_lock` (held only for that,
 * never across a decode, so configure and fork never wait for reads); configure swaps the
 * pointer, and whoever drops the last reference to the old cache destroys it. */
static pthread_mutex_t current_lock = PTHREAD_MUTEX_INITIALIZER;
static struct tsr_cache *current;
/* Whether current is set, read without the lock: with no cache (the default) a tile costs no
 * lock at all. A reader that misses a change made meanwhile reads that tile the other way. */
static atomic_bool have_cache;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

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
    cache_destroy(c);
}

static void before_fork(void) { pthread_mutex_lock(&current_lock); }
static void after_fork_parent(void) { pthread_mutex_unlock(&current_lock); }

/* A forked child (a DataLoader worker, say) gets the cache its kind gives it: a fresh empty
 * per-process cache, or its own attachment to the same shared segment. It takes over the
 * parent's ghost (copied with the fork, and lock-free, so no thread of the parent can have
 * left it half-changed): the parent's cache is never destroyed in the child. */
static void after_fork_child(void) {
  pthread_mutex_unlock(&current_lock); /* taken by this thread in before_fork */
  if (current) {
    struct tsr_cache *child = current->ops->fork_child(current);
    if (child) {
      child->ghost = current->ghost;
      if (child->type == TESSERA_CACHE_PER_PROCESS) {
        /* the child's cache starts empty: so does its yield (the ghost is the child's copy) */
        struct tsr_ghost *g = child->ghost;
        atomic_store(&g->yield.hits, 0);
        atomic_store(&g->yield.loads, 0);
        atomic_store(&g->yield.thin, false);
      }
    }
    current = child;
    atomic_store(&have_cache, current != NULL);
  }
}

static void register_atfork(void) {
  pthread_atfork(before_fork, after_fork_parent, after_fork_child);
}

/* At exit a shared cache tells the other processes this one is gone (and the last one
 * removes the segment). Nothing is freed: pool threads may still be reading. */
__attribute__((destructor)) static void cache_at_exit(void) {
  pthread_mutex_lock(&current_lock);
  if (current && current->ops->exiting)
    current->ops->exiting(current);
  pthread_mutex_unlock(&current_lock);
}

TESSERA_API void tessera_cache_options_init_sized(tessera_cache_options *o, size_t size) {
  static const tessera_cache_options defaults = {
      .struct_size = sizeof defaults,
      .type = TESSERA_CACHE_NONE,
      .memory_capacity_mib = 1024,
      .item_capacity = 0,
      .record_stats = 0,
      .name = NULL,
  };
  tsr_abi_init(o, size, &defaults, sizeof defaults);
}

TESSERA_API tessera_status tessera_cache_configure(const tessera_cache_options *options) {
  if (!options)
    return tsr_error(TESSERA_E_ARGUMENT, "NULL cache options");
  tessera_cache_options o;
  tessera_cache_options_init(&o);
  tessera_status st = tsr_abi_copy_in(&o, sizeof o, options, "cache options");
  if (st != TESSERA_OK)
    return st;
  if (o.type != TESSERA_CACHE_NONE && o.type != TESSERA_CACHE_PER_PROCESS &&
      o.type != TESSERA_CACHE_SHARED_MEMORY)
    return tsr_error(TESSERA_E_ARGUMENT, "unknown cache type %d", (int)o.type);
  if (o.type != TESSERA_CACHE_NONE &&
      (o.memory_capacity_mib < 1 || o.memory_capacity_mib > ((uint64_t)1 << 30)))
    return tsr_error(TESSERA_E_ARGUMENT, "memory_capacity_mib must be 1 .. 2^30, not %llu",
                     (unsigned long long)o.memory_capacity_mib);
  pthread_once(&atfork_once, register_atfork);
  struct tsr_cache *fresh = NULL;
  if (o.type == TESSERA_CACHE_PER_PROCESS && !(fresh = tsr_process_cache_create(&o)))
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a cache");
  if (o.type == TESSERA_CACHE_SHARED_MEMORY &&
      (st = tsr_shared_cache_create(&o, &fresh)) != TESSERA_OK)
    return st;
  /* Sized by the capacities asked for, which an attached segment may not have (it keeps its
   * own): its stats would mean taking the shard locks, which a stopped process may hold. */
  if (fresh && !(fresh->ghost = ghost_create(o.memory_capacity_mib << 20, o.item_capacity))) {
    cache_destroy(fresh);
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a cache");
  }
  pthread_mutex_lock(&current_lock);
  struct tsr_cache *old = current;
  current = fresh;
  atomic_store(&have_cache, fresh != NULL);
  bool last = old && --old->refs == 0;
  pthread_mutex_unlock(&current_lock);
  if (last)
    cache_destroy(old);
  return TESSERA_OK;
}

TESSERA_API tessera_status tessera_cache_reserve(uint64_t memory_capacity_mib,
                                                 uint64_t item_capacity) {
  if (memory_capacity_mib > ((uint64_t)1 << 30))
    return tsr_error(TESSERA_E_ARGUMENT, "memory_capacity_mib must be at most 2^30, not %llu",
                     (unsigned long long)memory_capacity_mib);
  struct tsr_cache *c = tsr_cache_acquire();
  tessera_status st = TESSERA_OK;
  if (c && !c->ops->reserve)
    st = tsr_error(TESSERA_E_UNSUPPORTED,
                   "a shared-memory cache cannot grow: its segment is sized when it is made "
                   "(configure a larger one)");
  else if (c) {
    /* The ghost's capacities grow only: its window and its parts follow the cache's. */
    uint64_t bytes = memory_capacity_mib << 20;
    atomic_raise(&c->ghost->capacity, bytes);
    if (ghost_item_capacity(c->ghost)) /* none stays none */
      atomic_raise(&c->ghost->item_capacity, item_capacity);
    c->ops->reserve(c, bytes, item_capacity);
  }
  tsr_cache_release(c);
  return st;
}

TESSERA_API tessera_status tessera_cache_stats_get(tessera_cache_stats *stats) {
  tessera_status st = tsr_abi_check(stats, "cache stats");
  if (st != TESSERA_OK)
    return st;
  tessera_cache_stats t = {.struct_size = sizeof t, .type = TESSERA_CACHE_NONE};
  struct tsr_cache *c = tsr_cache_acquire();
  if (c) {
    t.type = c->type;
    t.record_stats = c->record_stats;
    c->ops->stats(c, &t);
  }
  tsr_cache_release(c);
  tsr_abi_copy_out(stats, &t, sizeof t);
  return TESSERA_OK;
}

TESSERA_API void tessera_cache_stats_reset(int32_t record_stats) {
  struct tsr_cache *c = tsr_cache_acquire();
  if (!c)
    return;
  if (record_stats >= 0)
    c->record_stats = record_stats != 0;
  c->ops->reset_stats(c);
  tsr_cache_release(c);
}
