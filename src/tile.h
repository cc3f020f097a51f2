/* One tile (or strip, or restart interval) to decoded samples: its stream from the level's
 * tile source (source/tile_source.h), the codec, then predictor and inversion. No libtiff, no lock:
 * any number of threads may call it. */
#ifndef TSR_TILE_H
#define TSR_TILE_H

#include "codec/codec.h"
#include "slide_internal.h"
#include "source/tile_source.h"

/* Buffers a thread reuses from tile to tile, so a steady stream of reads allocates nothing:
 * compressed bytes, a whole decoded tile, and a decoded rectangle awaiting conversion. Only
 * their own thread touches them. */
struct tsr_tile_buffers {
  struct tsr_scratch compressed;
  struct tsr_scratch tile;
  struct tsr_scratch rect;
  struct tsr_scratch cached; /* a tile copied out of (or on its way into) a shared cache */
};

/* This thread's buffers (made on first use, freed when the thread exits); NULL when out of
 * memory. */
struct tsr_tile_buffers *tsr_tile_buffers_get(void);

/* Gives back buffers grown beyond what is worth keeping for the thread's life (a whole-level
 * strip), so one huge read does not pin its memory. */
void tsr_tile_buffers_trim(struct tsr_tile_buffers *b);

/* The part of tile `index` that lies inside the image, in level pixels. */
void tsr_tile_extent(const struct tsr_level *lv, uint64_t index, int64_t *x, int64_t *y,
                     uint32_t *w, uint32_t *h);

/* Bytes a decoded tile of lv occupies (tile_w x tile_h x decoded channels); 0 on overflow. */
size_t tsr_tile_buffer_size(const struct tsr_level *lv);

/* Bytes of scratch that decoding a tile of lv allocates besides its destination: a whole
 * decoded tile for codecs that cannot decode part of one, 0 for those that decode straight
 * into the destination. */
size_t tsr_tile_decode_bytes(const struct tsr_level *lv);

/* A rectangle of one tile, in pixels from the tile's top-left corner and inside its extent,
 * and where its decoded samples go: lv->fmt.decoded_channels bytes per pixel, rows `stride`
 * bytes apart. */
struct tsr_tile_rect {
  uint32_t x, y, w, h;
  uint8_t *dst;
  size_t stride;
};

/* Decodes rect of tile `index` of `level`. Codecs that can (JPEG) decode only the rows and
 * columns the rectangle needs; the others decode the whole tile and copy the rectangle out.
 * A tile that the file leaves out (tsr_tile_missing) sets *missing and writes nothing.
 * On failure the message names the level and tile. */
tessera_status tsr_tile_read(const tessera_slide *s, int32_t level, uint64_t index,
                             const struct tsr_tile_rect *rect, struct tsr_tile_buffers *b,
                             bool *missing);

#endif
