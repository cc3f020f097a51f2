/* WebP (TIFF compression 50001): each tile is one WebP image of the tile's size. */
#include <webp/decode.h>

#include "codec/codec.h"
#include "error.h"

tessera_status tsr_decode_webp(const struct tsr_pixel_format *fmt, const uint8_t *src, size_t len,
                               const struct tsr_tile_out *out) {
  int w = 0, h = 0;
  if (!WebPGetInfo(src, len, &w, &h))
    return tsr_error(TESSERA_E_CORRUPT, "invalid WebP data");
  if ((uint32_t)w < out->need_w || (uint32_t)h < out->need_h || (uint32_t)w > out->width ||
      (uint32_t)h > out->height)
    return tsr_error(TESSERA_E_CORRUPT, "WebP image is %dx%d, the tile is %ux%u", w, h, out->width,
                     out->height);
  size_t cap = tsr_codec_capacity(fmt, out);
  int stride = (int)(out->width * fmt->decoded_channels);
  uint8_t *ok = fmt->decoded_channels == 4 ? WebPDecodeRGBAInto(src, len, out->pixels, cap, stride)
                                           : WebPDecodeRGBInto(src, len, out->pixels, cap, stride);
  if (!ok)
    return tsr_error(TESSERA_E_CORRUPT, "corrupt WebP data");
  return TESSERA_OK;
}
