/* One tile (or strip) from the file to decoded samples: pread of its bytes, the codec, then
 * predictor and inversion. No libtiff, no lock: any number of threads may call it. */
#ifndef TSR_TILE_H
#define TSR_TILE_H

#include "codec/codec.h"
#include "slide_internal.h"

/* A growable buffer for compressed bytes, owned by one caller and reused across tiles. */
struct tsr_scratch {
  uint8_t *data;
  size_t cap;
};

void tsr_scratch_free(struct tsr_scratch *scratch);

/* The part of tile `index` that lies inside the image, in level pixels. */
void tsr_tile_extent(const struct tsr_level *lv, uint64_t index, int64_t *x, int64_t *y,
                     uint32_t *w, uint32_t *h);

/* Bytes a decoded tile of lv occupies (tile_w x tile_h x decoded channels); 0 on overflow. */
size_t tsr_tile_buffer_size(const struct tsr_level *lv);

/* Decodes tile `index` of level `level` into out->pixels (tsr_tile_buffer_size bytes). A tile
 * that the file leaves out (offset or byte count 0) sets *missing and decodes nothing. */
tessera_status tsr_tile_decode(const tessera_slide *s, int32_t level, uint64_t index,
                               struct tsr_scratch *scratch, uint8_t *pixels, bool *missing);

#endif
