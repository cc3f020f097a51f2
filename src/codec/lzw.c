/* TIFF LZW (compression 5): MSB-first codes of 9 to 12 bits with the "early change" that
 * TIFF 6.0 specifies (the code width grows one code before the table fills the width). */
#include <string.h>

#include "codec/codec.h"
#include "error.h"

enum { LZW_CLEAR = 256, LZW_EOI = 257, LZW_FIRST = 258, LZW_MAX = 4096 };

struct lzw_table {
  uint16_t prefix[LZW_MAX];
  uint16_t length[LZW_MAX];
  uint8_t suffix[LZW_MAX];
  uint8_t first[LZW_MAX];
};

/* Writes the string of `code` at dst[o...], clipped to cap; returns its full length. */
static size_t emit(const struct lzw_table *t, uint16_t code, uint8_t *dst, size_t o, size_t cap) {
  size_t n = t->length[code];
  for (size_t i = n; i-- > 0;) {
    if (o + i < cap)
      dst[o + i] = t->suffix[code];
    code = t->prefix[code];
  }
  return n;
}

tessera_status tsr_decode_lzw(const struct tsr_pixel_format *fmt, const uint8_t *src, size_t len,
                              const struct tsr_tile_out *out) {
  size_t need = tsr_codec_needed_bytes(fmt, out), cap = tsr_codec_capacity(fmt, out);
  if (len >= 2 && src[0] == 0 && (src[1] & 1))
    return tsr_error(TESSERA_E_UNSUPPORTED, "unsupported old-style (pre-TIFF 6.0) LZW data");
  static _Thread_local struct lzw_table t; /* 24 KiB: too big for some thread stacks */
  for (int i = 0; i < 256; i++) {
    t.prefix[i] = 0;
    t.length[i] = 1;
    t.suffix[i] = t.first[i] = (uint8_t)i;
  }
  uint8_t *dst = out->pixels;
  size_t o = 0, bitpos = 0, totalbits = len * 8;
  unsigned width = 9, next = LZW_FIRST;
  int prev = -1;
  while (o < cap && bitpos + width <= totalbits) {
    unsigned code = 0;
    for (unsigned b = 0; b < width; b++, bitpos++)
      code = (code << 1) | ((src[bitpos >> 3] >> (7 - (bitpos & 7))) & 1);
    if (code == LZW_EOI)
      break;
    if (code == LZW_CLEAR) {
      width = 9;
      next = LZW_FIRST;
      prev = -1;
      continue;
    }
    if (prev < 0) {
      if (code > 255)
        return tsr_error(TESSERA_E_CORRUPT, "invalid LZW code %u after a clear code", code);
      dst[o++] = (uint8_t)code;
      prev = (int)code;
      continue;
    }
    uint8_t first;
    if (code < next) {
      first = t.first[code];
      o += emit(&t, (uint16_t)code, dst, o, cap);
    } else if (code == next) {
      first = t.first[prev];
      size_t n = emit(&t, (uint16_t)prev, dst, o, cap);
      if (o + n < cap)
        dst[o + n] = first;
      o += n + 1;
    } else {
      return tsr_error(TESSERA_E_CORRUPT, "invalid LZW code %u (next free code is %u)", code, next);
    }
    if (next < LZW_MAX) {
      t.prefix[next] = (uint16_t)prev;
      t.suffix[next] = first;
      t.first[next] = t.first[prev];
      t.length[next] = (uint16_t)(t.length[prev] + 1);
      next++;
      if (next + 1 >= (1u << width) && width < 12)
        width++;
    }
    prev = (int)code;
  }
  if (o < need)
    return tsr_error(TESSERA_E_CORRUPT, "LZW data ends after %zu of %zu bytes", o, need);
  return TESSERA_OK;
}
