/* pixman's conversions between 8-bit channels and its floating-point pipeline, which OpenSlide's
 * painting through cairo goes by where tiles lie between pixels: the mosaic codec
 * (codec/mosaic.c) and the OpenSlide fronts' fractional regions (openslide/fractional.c) both
 * repeat that arithmetic and must round alike. */
#ifndef TESSERA_COMPAT_PIXMAN_FLOAT_H
#define TESSERA_COMPAT_PIXMAN_FLOAT_H

#include <stdint.h>

/* pixman_expand_to_float for 8 bits: times the float nearest 1/255 (255 gives exactly 1.0f). */
static inline float tsr_pixman_unorm8_to_float(uint32_t v) { return (float)v * (1.0f / 255); }

/* pixman's float_to_unorm for 8 bits: clamped to [0, 1], scaled by 256, truncated, 256 folded
 * to 255. */
static inline uint8_t tsr_pixman_float_to_unorm8(float f) {
  if (f > 1.0f)
    f = 1.0f;
  if (f < 0.0f)
    f = 0.0f;
  uint32_t u = (uint32_t)(f * 256.0f);
  return (uint8_t)(u - (u >> 8));
}

#endif
