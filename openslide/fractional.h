/* Regions of a level painted from a fractional origin, as OpenSlide paints them (cairo's
 * bilinear filter and SATURATE between tiles, in pixman's arithmetic), and the pixel
 * conversion both paths share. */
#ifndef TSR_OPENSLIDE_FRACTIONAL_H
#define TSR_OPENSLIDE_FRACTIONAL_H

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

#endif
