/* Reading a level at another scale: each output pixel is the exact area average of the level
 * pixels it covers (docs/RESOLUTION.md defines it to the bit). Used by
 * tessera_read_region_scaled and by the tissue mask. */
#ifndef TSR_RESAMPLE_H
#define TSR_RESAMPLE_H

#include <stddef.h>
#include <stdint.h>

#include "tessera.h"

/* Sub-pixel unit of the output pixels' edges: an edge lies on a multiple of 1/TSR_AREA_UNIT of a
 * level pixel, so the weights are integers and the result is the same on every machine. */
#define TSR_AREA_UNIT 4096
/* Scales (level pixels per output pixel) accepted: the sums then fit their integers. */
#define TSR_SCALE_MIN (1.0 / 1024.0)
#define TSR_SCALE_MAX 1024.0

/* Writes an out_w x out_h image of `channels` (3 or 4) into dst (rows `stride` bytes apart):
 * output pixel (i, j) is the area average of level `level` over
 * [lx0 + e(i, sx), lx0 + e(i + 1, sx)) x [ly0 + e(j, sy), ly0 + e(j + 1, sy)), where
 * e(i, s) = floor(i * (s * TSR_AREA_UNIT) + 0.5) / TSR_AREA_UNIT, rounded half up to a byte.
 * Pixels outside the level count as `fill` (alpha 0). The level is read in bands of rows (with
 * num_workers threads), so memory stays bounded by the output and one band. Thread-safe. */
tessera_status tsr_read_area(tessera_slide *s, int32_t level, int64_t lx0, int64_t ly0, double sx,
                             double sy, int64_t out_w, int64_t out_h, int channels, int fill,
                             int num_workers, uint8_t *dst, size_t stride);

#endif
