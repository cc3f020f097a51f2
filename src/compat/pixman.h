/* pixman's arithmetic where OpenSlide's painting through cairo goes by it for tiles between
 * pixels (its float conversions and its 8-bit bilinear and OVER_REVERSE): the mosaic codec
 * (codec/mosaic.c) and the OpenSlide fronts' fractional regions (openslide/fractional.c) both
 * repeat it and must round alike. */
#ifndef TESSERA_COMPAT_PIXMAN_H
#define TESSERA_COMPAT_PIXMAN_H

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

/* pixman's 8-bit bilinear_interpolation: weights of 7 bits made 8, each channel's sum floored.
 * Channels are the bytes of a 32-bit word. */
static inline uint32_t tsr_pixman_bilinear8(uint32_t tl, uint32_t tr, uint32_t bl, uint32_t br,
                                            uint32_t dx, uint32_t dy) {
  dx <<= 1;
  dy <<= 1;
  uint64_t wtl = (uint64_t)(256 - dx) * (256 - dy), wtr = (uint64_t)dx * (256 - dy);
  uint64_t wbl = (uint64_t)(256 - dx) * dy, wbr = (uint64_t)dx * dy;
  uint32_t out = 0;
  for (int shift = 0; shift < 32; shift += 8) {
    uint64_t f = ((tl >> shift) & 255) * wtl + ((tr >> shift) & 255) * wtr +
                 ((bl >> shift) & 255) * wbl + ((br >> shift) & 255) * wbr;
    out |= (uint32_t)(f >> 16) << shift;
  }
  return out;
}

/* pixman's 8-bit OVER_REVERSE: d + s * (255 - da) / 255, rounded as its MUL_UN8, saturated;
 * alpha is the top byte. */
static inline uint32_t tsr_pixman_over_reverse8(uint32_t s, uint32_t d) {
  uint32_t ia = 255 - (d >> 24), out = 0;
  for (int shift = 0; shift < 32; shift += 8) {
    uint32_t t = ((s >> shift) & 255) * ia + 0x80;
    uint32_t c = ((d >> shift) & 255) + (((t >> 8) + t) >> 8);
    out |= (c > 255 ? 255 : c) << shift;
  }
  return out;
}

#endif
