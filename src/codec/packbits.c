/* PackBits (TIFF compression 32773): a run-length code of literal and repeated bytes. */
#include <string.h>

#include "codec/codec.h"
#include "error.h"

tessera_status tsr_decode_packbits(const struct tsr_pixel_format *fmt, const uint8_t *src,
                                   size_t len, const struct tsr_tile_out *out) {
  size_t need = tsr_codec_needed_bytes(fmt, out), cap = tsr_codec_capacity(fmt, out);
  uint8_t *dst = out->pixels;
  size_t i = 0, o = 0;
  while (i < len && o < cap) {
    int8_t n = (int8_t)src[i++];
    if (n >= 0) {
      size_t count = (size_t)n + 1;
      if (count > len - i)
        count = len - i;
      if (count > cap - o)
        count = cap - o;
      memcpy(dst + o, src + i, count);
      i += count;
      o += count;
    } else if (n != -128) {
      if (i >= len)
        break;
      size_t count = (size_t)(1 - n);
      if (count > cap - o)
        count = cap - o;
      memset(dst + o, src[i++], count);
      o += count;
    }
  }
  if (o < need)
    return tsr_error(TESSERA_E_CORRUPT, "PackBits data ends after %zu of %zu bytes", o, need);
  return TESSERA_OK;
}
