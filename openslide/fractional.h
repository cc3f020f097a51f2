/* Regions of a level as OpenSlide's read_region paints them: from a fractional origin with
 * cairo's bilinear filter and SATURATE between tiles, in pixman's arithmetic, and the pixel
 * conversion both paths share. Used by libtessera-openslide and by the Python extension
 * (tessera.openslide), so both give OpenSlide's bytes from one implementation. */
#ifndef TSR_OPENSLIDE_FRACTIONAL_H
#define TSR_OPENSLIDE_FRACTIONAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tessera.h"

/* What OpenSlide's grid of a level is made of. */
struct tsr_os_grid {
  int64_t width, height;
  uint32_t tile_w, tile_h;
  double downsample;
};

/* tessera's RGBA (straight alpha) to OpenSlide's premultiplied ARGB, in place, w x h pixels
 * whose rows are stride pixels apart. Premultiplication rounds as libtiff's RGBA reader does,
 * which is what OpenSlide hands back for images with alpha. */
void tsr_os_rgba_to_argb(uint32_t *px, size_t stride, int64_t w, int64_t h);

/* Paints w x h pixels of `level` whose origin is (x, y) in the level's pixels (fractions kept)
 * into dst (premultiplied ARGB, zero, rows stride pixels apart), byte for byte as OpenSlide
 * 3.4 (through cairo and pixman) would. */
tessera_status tsr_os_paint_fractional(tessera_slide *s, int32_t level,
                                       const struct tsr_os_grid *grid, double x, double y,
                                       int64_t w, int64_t h, uint32_t *dst, size_t stride);

/* A w x h region of `level` whose origin is (x, y) in level-0 pixels, as OpenSlide 3.4's
 * read_region paints it, into dest (premultiplied ARGB, w x h, zeroed by the caller): in pieces
 * of at most 4096 x 4096, each from its origin truncated to a level-0 pixel, resampled where
 * that falls between the level's pixels. associated_alpha: the level's alpha is stored
 * premultiplied (ExtraSamples 1), which OpenSlide returns as stored. On failure dest holds
 * part of the region. */
tessera_status tsr_os_read_region(tessera_slide *s, int32_t level, const struct tsr_os_grid *grid,
                                  bool associated_alpha, int64_t x, int64_t y, int64_t w,
                                  int64_t h, uint32_t *dest);

#endif
