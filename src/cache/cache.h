/* The decoded-tile cache of the process (DESIGN §3), used by every reader through
 * tsr_paint_tile. One cache at a time, configured with tessera_cache_configure. Two kinds sit
 * behind one interface: per_process (process.c: tiles in this process's heap, handed out in
 * place while pinned) and shared_memory (shared.c: tiles in a POSIX shared-memory segment
 * used by many processes, read in place with no lock held and checked afterwards, since a
 * process may die or be stopped at any moment and must leave neither pins nor a held lock
 * behind). cache.c owns the process's current cache. */
#ifndef TSR_CACHE_H
#define TSR_CACHE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "slide_internal.h"
#include "tile.h"

/* A tile, compared in full: the file (device, inode, size, modification and status-change
 * times), the directory and the tile index. */
struct tsr_cache_key {
  struct tsr_file_id file;
  uint32_t directory;
  uint64_t tile;
};

uint64_t tsr_cache_key_hash(const struct tsr_cache_key *k);
bool tsr_cache_key_equal(const struct tsr_cache_key *a, const struct tsr_cache_key *b);

/* S3-FIFO, shared by both kinds (see process.c for why): the small queue holds a tenth of
 * the budget; a main-queue tile gets up to this many second chances. */
#define TSR_CACHE_SMALL_PART 10
#define TSR_CACHE_MAX_FREQ 3
/* A use covering at least this part (3/4) of a tile's pixels admits it at its first miss. */
#define TSR_CACHE_COVERS_NUM 3
#define TSR_CACHE_COVERS_DEN 4
/* Shards of at least 16 MiB (and 64 items when items are limited), at most 16. */
#define TSR_CACHE_MAX_SHARDS 16
#define TSR_CACHE_SHARD_MIN_BYTES ((uint64_t)16 << 20)
#define TSR_CACHE_SHARD_MIN_ITEMS 64
unsigned tsr_cache_shard_count(uint64_t memory_capacity, uint64_t item_capacity);

enum tsr_cache_result {
  TSR_CACHE_HIT,   /* a->src (a->row_list) gives the bytes asked for, until tsr_cache_done,
                      which says whether they stood while they were read */
  TSR_CACHE_LOAD,  /* the tile is reserved for the caller, who decodes it whole into a->load
                      and then publishes or abandons it; others wanting it wait meanwhile */
  TSR_CACHE_MISS,  /* not held, and not admitted (a->admit false): decode only the part
                      needed, without the cache; nothing is reserved */
  TSR_CACHE_BYPASS /* the tile cannot be cached now (too big, no room, no memory): decode
                      it without the cache */
};

/* One use of one tile: filled in by the caller, then by the cache. The caller paints from
 * `rows` rows of `row_bytes` bytes, the first at byte `offset` of the tile, `stride` apart. */
struct tsr_cache_access {
  struct tsr_cache_key key;
  size_t bytes; /* the whole decoded tile */
  size_t offset, stride, row_bytes;
  uint32_t rows;
  struct tsr_scratch *scratch; /* the caller's thread's, for the cache's use */
  bool covers;          /* the caller paints most of the tile (TSR_CACHE_COVERS_*): decoding that
                           part costs about what decoding the whole tile does */
  uint64_t level_tiles; /* of the tile's level: with a->bytes, what the whole level takes */
  struct tsr_miss_region *region; /* the level's, where its misses fell lately */
  uint32_t x, y;                  /* the tile's column and row in its level */
  bool evicted; /* set by the kind's lookup: it evicted a tile to make room for this one */
  bool admit;   /* set by tsr_cache_lookup: a miss may reserve the tile (LOAD), or with false
                   returns TSR_CACHE_MISS; a miss is counted either way */
  /* HIT, and LOAD once published: row i of the part asked for begins at row_list[i], or with
   * row_list NULL at src + i * stride. */
  const uint8_t *src;
  const uint8_t *const *row_list;
  uint8_t *load;                 /* LOAD: where the whole tile is to be decoded */
  void *entry;                   /* the cache's own from here on */
  uint32_t shard, index, ticket; /* index: the entry reserved in the shard */
  uint64_t frees;                /* a shared hit: its entry's count of frees then */
};

struct tsr_cache;

struct tsr_cache_ops {
  enum tsr_cache_result (*lookup)(struct tsr_cache *c, struct tsr_cache_access *a);
  void (*publish)(struct tsr_cache *c, struct tsr_cache_access *a);
  void (*abandon)(struct tsr_cache *c, struct tsr_cache_access *a);
  bool (*done)(struct tsr_cache *c, struct tsr_cache_access *a);
  /* Fills hits, misses, evictions, items, bytes and the capacities. */
  void (*stats)(struct tsr_cache *c, tessera_cache_stats *t);
  void (*reset_stats)(struct tsr_cache *c);
  /* Raises the capacities to at least these (bytes; tiles, 0 leaving it), keeping the tiles;
   * NULL where the kind cannot grow. */
  void (*reserve)(struct tsr_cache *c, uint64_t memory_capacity, uint64_t item_capacity);
  /* In a forked child: a cache to use there in place of c (which is left alone: the parent's
   * threads may have been inside it); NULL for none. */
  struct tsr_cache *(*fork_child)(struct tsr_cache *c);
  /* The process is exiting: let others know, free nothing (threads may still read). */
  void (*exiting)(struct tsr_cache *c);
  void (*destroy)(struct tsr_cache *c);
};

struct tsr_ghost;

/* What both kinds start with. */
struct tsr_cache {
  const struct tsr_cache_ops *ops;
  unsigned refs; /* 1 while it is the process's cache, plus readers using it; guarded by
                    cache.c's lock */
  tessera_cache_type type;
  _Atomic int record_stats; /* this process counts its hits and misses */
  struct tsr_ghost *ghost;  /* cache.c's admission record; set before the cache is current,
                               its cells atomic */
};

struct tsr_cache *tsr_process_cache_create(const tessera_cache_options *o);
tessera_status tsr_shared_cache_create(const tessera_cache_options *o, struct tsr_cache **out);

/* For tests: the lookups a per-process cache has made in its hash tables, and the entries
 * they compared on the way (the chains' length, in effect). */
void tsr_process_cache_lookup_work(struct tsr_cache *c, uint64_t *finds, uint64_t *steps);

/* Tests: a per-process cache's chunk pool and its prefault thread. mapped: bytes of the chunks
 * holding (or free for) tiles; unused: their free slots' bytes (not counted in the stats);
 * spare: chunks prefaulted and not yet taken, and one being prepared; prepared, taken: chunks
 * prefaulted so far, and taken by readers; thread: the prefault thread runs. With wait_idle,
 * first waits until the thread has nothing left to prepare. */
struct tsr_process_cache_pool {
  uint64_t mapped, unused, spare, prepared, taken;
  bool thread;
};
void tsr_process_cache_pool_state(struct tsr_cache *c, struct tsr_process_cache_pool *out,
                                  bool wait_idle);

#if TSR_TEST_HOOKS /* shared_hooks.c, built with the test_hooks option */
/* For tests: checks the lists of every shard of the current shared cache against its
 * entries (repairing first what a dead lock holder left); false with the reason in why. */
bool tsr_shared_cache_verify(char *why, size_t n);
/* For tests: writes n garbage values (from *seed) over the current shared cache's index. */
bool tsr_shared_cache_scribble(uint64_t *seed, unsigned n);
/* For tests: the chain head (which 0) or the link after the first chunk (1) of the current
 * shared cache's most read ready tile, or the loader's seat of a tile being loaded (2); NULL
 * if there is none. */
uint32_t *tsr_shared_cache_hot_word(int which);
/* For tests: gives the current shared cache's most read ready tile a size of `bytes`, sealed. */
bool tsr_shared_cache_hot_resize(uint64_t bytes);
/* For tests: how many shared-cache hits this process found overwritten once read (their
 * tiles were evicted and their chunks reused meanwhile), and read again without the cache. */
unsigned long tsr_shared_cache_overwritten(void);
/* For tests: how many entries of the current shared cache are reserved for loading (loading
 * or overtaken), each shard locked (and so repaired) first; UINT_MAX if one cannot be. */
unsigned tsr_shared_cache_in_flight(void);
#endif

/* The current cache, held until tsr_cache_release; NULL (and nothing to release) when the
 * process has none. */
struct tsr_cache *tsr_cache_acquire(void);
void tsr_cache_release(struct tsr_cache *c);

/* Looks a->key up (a->bytes, a->offset, a->length, a->covers, a->level_tiles, a->region,
 * a->x, a->y and a->scratch set). A tile not held is admitted (TSR_CACHE_LOAD) only when this
 * use covers most of it, this process missed it recently, or its level, or the part of it
 * its misses keep to, is small beside a cache that has not been evicting (cache.c says why);
 * otherwise the result is TSR_CACHE_MISS. */
enum tsr_cache_result tsr_cache_lookup(struct tsr_cache *c, struct tsr_cache_access *a);
/* The loader decoded a->load: the tile becomes visible to all; a->src is set. */
static inline void tsr_cache_publish(struct tsr_cache *c, struct tsr_cache_access *a) {
  c->ops->publish(c, a);
}
/* The loader failed: the entry goes away, and a waiting thread may try in its turn. */
static inline void tsr_cache_abandon(struct tsr_cache *c, struct tsr_cache_access *a) {
  c->ops->abandon(c, a);
}
/* The caller is done with the bytes (after a hit, or after publishing). False when they may
 * have changed while they were read (a shared hit whose tile was evicted meanwhile): whatever
 * was made from them is wrong, and is to be made again without the cache. */
static inline bool tsr_cache_done(struct tsr_cache *c, struct tsr_cache_access *a) {
  return c->ops->done(c, a);
}

#endif
