/* The decoded-tile cache of the process (DESIGN §3), used by every reader through
 * tsr_paint_tile. One cache at a time, configured with tessera_cache_configure; readers hold
 * it (a read lock) only while they look a tile up and copy from it. */
#ifndef TSR_CACHE_H
#define TSR_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "slide_internal.h"

/* A tile, compared in full: the file (device, inode, size, modification time), the directory
 * and the tile index. */
struct tsr_cache_key {
  struct tsr_file_id file;
  uint32_t directory;
  uint64_t tile;
};

struct tsr_cache;
struct tsr_cache_entry;

/* The current cache, held until tsr_cache_release; NULL (and nothing to release) when the
 * process has none. */
struct tsr_cache *tsr_cache_acquire(void);
void tsr_cache_release(struct tsr_cache *c);

enum tsr_cache_result {
  TSR_CACHE_HIT,   /* *e is pinned and its pixels are ready */
  TSR_CACHE_LOAD,  /* *e is reserved for the caller, who decodes into its pixels and then
                      publishes or abandons it; other threads wanting it wait meanwhile */
  TSR_CACHE_BYPASS /* the tile cannot be cached now (too big, no memory, all pinned):
                      decode it without the cache */
};

/* Looks up a decoded tile of `bytes` bytes. */
enum tsr_cache_result tsr_cache_lookup(struct tsr_cache *c, const struct tsr_cache_key *key,
                                       size_t bytes, struct tsr_cache_entry **e);
uint8_t *tsr_cache_pixels(struct tsr_cache_entry *e);
/* The loader's entry becomes visible to all, still pinned by the loader. */
void tsr_cache_publish(struct tsr_cache *c, struct tsr_cache_entry *e);
/* The loader failed: the entry goes away, and a waiting thread may try in its turn. */
void tsr_cache_abandon(struct tsr_cache *c, struct tsr_cache_entry *e);
/* Lets go of a hit or a published entry. */
void tsr_cache_unpin(struct tsr_cache *c, struct tsr_cache_entry *e);

#endif
