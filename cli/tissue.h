/* A procedural picture that looks like an H&E-stained tissue section on glass, defined at
 * every level-0 point, so any tile of any pyramid level can be painted on its own, in any
 * order and from any thread, without the rest of the image. Deterministic: the same size
 * always gives the same picture. */
#ifndef TESSERA_CLI_TISSUE_H
#define TESSERA_CLI_TISSUE_H

#include <stddef.h>
#include <stdint.h>

/* Widest tile tissue_paint accepts. */
#define TISSUE_MAX_TILE 4096

/* Immutable once made; shared read-only by the painting threads. */
typedef struct tissue_scene {
  double width, height;    /* level-0 size, in pixels */
  double island_cell;      /* lattice spacing of the coarsest tissue-outline noise */
  double lumen_cell;       /* spacing of the noise that opens empty spaces in tissue */
  double cellularity_cell; /* spacing of the noise that sets how crowded nuclei are */
  double margin;           /* distance from the border over which tissue fades out */
} tissue_scene;

void tissue_scene_init(tissue_scene *scene, int64_t width, int64_t height);

/* Paints a tile_w x tile_h block of RGB pixels whose top-left pixel is (x0, y0) on a level
 * where one pixel spans scale_x by scale_y level-0 pixels. Each pixel is the mean of
 * samples x samples points spread over its area (1 <= samples <= 8). Rows are `stride`
 * bytes apart. tile_w <= TISSUE_MAX_TILE. Thread-safe. */
void tissue_paint(const tissue_scene *scene, double scale_x, double scale_y, int samples,
                  int64_t x0, int64_t y0, int tile_w, int tile_h, uint8_t *rgb, size_t stride);

/* The drawn-tissue truth behind the picture, for checking tissue detectors: a mask_w x mask_h
 * block of a mask whose pixel (i, j) spans scale_x by scale_y level-0 pixels, the top-left one
 * being (x0, y0); each byte is 255 where the point at the pixel's centre is tissue and 0 where
 * it is glass. Tissue is where tissue_paint's island coverage is at least one half (the edges
 * fade over a few pixels; their midline is the border), lumens included: they are pale spaces
 * inside the section, as a hole-filling detector is meant to report them. Rows are `stride`
 * bytes apart; mask_w <= TISSUE_MAX_TILE. Computed from the same noises as the picture, never
 * from its pixels. Thread-safe. */
void tissue_truth(const tissue_scene *scene, double scale_x, double scale_y, int64_t x0, int64_t y0,
                  int mask_w, int mask_h, uint8_t *mask, size_t stride);

#endif
