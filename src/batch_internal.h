/* What the CPU batch iterator (batch.c) and the CUDA one (gpu/gpu_batch.c) share: the layout
 * of an iterator's batches, fixed at creation. Both iterator structs begin with it, and its
 * `cuda` flag tells the public calls which one a tessera_batch_iter is. */
#ifndef TSR_BATCH_INTERNAL_H
#define TSR_BATCH_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "region.h"
#include "tessera.h"

struct tsr_batch_layout {
  bool cuda; /* the iterator is gpu/gpu_batch.c's */
  tessera_slide *s;
  int32_t level;
  int64_t width, height;
  unsigned channels;
  uint8_t fill;
  size_t n, batch_size, nbatches;
  /* Patches a batch buffer holds: batch_size, or n when fewer (a huge batch_size over a few
   * locations must not reserve memory for patches that do not exist). */
  size_t batch_cap;
  int64_t *xy;     /* 2n level-0 coordinates (owned) */
  uint64_t *order; /* the visiting order of the n locations (owned) */
  size_t patch_bytes, batch_bytes; /* batch_bytes: batch_cap patches */
  /* Tiles so small (a few pixels) that scheduling each for every patch would cost more memory
   * than the patches' pixels: each patch is instead painted tile after tile by one piece of
   * work, as a region is (tsr_paint_canvas), without the bookkeeping of sharing tiles. */
  bool by_patch;
  unsigned workers;       /* num_workers */
  size_t prefetch_factor; /* as asked (>= 1) */
  int32_t device_id;
  unsigned generation; /* the pool's fork generation at creation */
};

/* Patches of batch `number` (batch_size, or fewer for the last). */
size_t tsr_batch_count(const struct tsr_batch_layout *l, size_t number);

/* Patch p of batch `number`: its location index and its canvas, writing to dst. Returns false
 * when the patch lies so far outside (beyond +-2^62) that it cannot touch the level; the
 * canvas is then still set (and all fill). */
bool tsr_batch_patch(const struct tsr_batch_layout *l, size_t number, size_t p, uint8_t *dst,
                     struct tsr_canvas *canvas, uint64_t *index);

/* Frees what the layout owns. */
void tsr_batch_layout_free(struct tsr_batch_layout *l);

/* The CUDA iterator (gpu/gpu_batch.c). Create takes over the layout's memory, on failure too;
 * the others are the public calls for an iterator whose layout says cuda. */
tessera_status tsr_gpu_iter_create(const struct tsr_batch_layout *layout, tessera_batch_iter **out);
tessera_status tsr_gpu_iter_next(tessera_batch_iter *it, tessera_batch **out);
void tsr_gpu_batch_release(tessera_batch *batch);
void tsr_gpu_iter_destroy(tessera_batch_iter *it);

/* Device bytes of decoded tiles one batch in preparation holds (256 MiB); a batch needing more
 * tiles decodes them in chunks. Read when an iterator is made; tests lower it. */
extern size_t tsr_gpu_tile_budget;

#endif
