/* Tiles to pixels in a caller's buffer: clipping, fill outside the image, channel conversion.
 * Used by single reads, whole-level reads and the batch iterator alike. */
#ifndef TSR_REGION_H
#define TSR_REGION_H

#include "slide_internal.h"
#include "tile.h"

/* A destination image: width x height pixels of `channels` (3 or 4) bytes, rows stride bytes
 * apart, whose top-left pixel is level pixel (lx, ly). */
struct tsr_canvas {
  int64_t lx, ly;
  int64_t width, height;
  unsigned channels;
  uint8_t fill;
  size_t stride;
  uint8_t *dst;
};

/* Fills the canvas with the fill value (alpha 0). */
void tsr_canvas_fill(const struct tsr_canvas *c);

/* Fills the parts of the canvas that lie outside the level; returns whether any of it lies
 * inside. */
bool tsr_canvas_fill_outside(const struct tsr_canvas *c, const struct tsr_level *lv);

/* What a read does before painting level `level` into the canvas: fills the parts no image of
 * the level covers (a composite level's whole canvas, its images painted over it); returns
 * whether any of the canvas lies on an image of the level (else there is nothing to paint). */
bool tsr_canvas_prepare(const tessera_slide *s, int32_t level, const struct tsr_canvas *c);

/* The tiles a canvas overlaps, as an inclusive range of columns and rows; false when it
 * overlaps none. */
bool tsr_canvas_tiles(const struct tsr_canvas *c, const struct tsr_level *lv, int64_t *tx0,
                      int64_t *ty0, int64_t *tx1, int64_t *ty1);

/* Reads tile `index` once and paints its part of each of n canvases. A single canvas taking
 * the decoded channels as they are is decoded into directly; otherwise the part of the tile
 * that the canvases need (their union) is decoded once and copied into each. A tile the file
 * leaves out paints fill (alpha 0). */
tessera_status tsr_paint_tile(const tessera_slide *s, int32_t level, uint64_t index,
                              const struct tsr_canvas *const *canvases, size_t n,
                              struct tsr_tile_buffers *b);

/* Paints every tile the canvas overlaps, one after another in the calling thread, with no
 * memory per tile; stops at the first tile that fails. A composite level's images are
 * painted each in turn (the last in its chain first, so that the first shows where they
 * overlap). */
tessera_status tsr_paint_canvas(const tessera_slide *s, int32_t level, const struct tsr_canvas *c,
                                struct tsr_tile_buffers *b);

/* The checks every read of a width x height region into dst (dst_size bytes) makes of its
 * arguments: *o gets the caller's options laid over the defaults, *stride the row stride the
 * region is written with. The slide's max_read_bytes bounds the region's pixels. */
tessera_status tsr_read_args(const tessera_slide *s, int64_t width, int64_t height,
                             const tessera_read_options *options, const uint8_t *dst,
                             size_t dst_size, tessera_read_options *o, size_t *stride);

/* tessera_read_region with the top-left corner given in pixels of the level (lx, ly) rather
 * than of level 0: for reads that lay their own grid over a level (resample.c). */
tessera_status tsr_read_level_rect(tessera_slide *s, int32_t level, int64_t lx, int64_t ly,
                                   int64_t width, int64_t height,
                                   const tessera_read_options *options, uint8_t *dst,
                                   size_t dst_size);

/* For the OpenSlide fronts (openslide/fractional.c): w x h pixels of a level of placed images
 * (Leica's, composite or not) as OpenSlide 3.4.1 paints them from level coordinate (lx, ly),
 * into RGBA rows stride bytes apart. OpenSlide starts each image at its own whole pixel,
 * origin + (lx - origin) truncated toward zero, and paints it whole, past the level's edge
 * too; the first image of the chain shows where they overlap; transparent (0, 0, 0, 0) where
 * none lies. tessera's own reads keep to the level (outside it is background). */
tessera_status tsr_paint_placed_openslide(const tessera_slide *s, int32_t level, double lx,
                                          double ly, int64_t w, int64_t h, uint8_t *rgba,
                                          size_t stride);

#endif
