#include <string.h>

#include "codec/codec.h"
#include "error.h"

tessera_status tsr_decode_raw(const struct tsr_pixel_format *fmt, const uint8_t *src, size_t len,
                              const struct tsr_tile_out *out) {
  size_t need = tsr_codec_needed_bytes(fmt, out), cap = tsr_codec_capacity(fmt, out);
  if (len < need)
    return tsr_error(TESSERA_E_CORRUPT, "uncompressed data holds %zu bytes, %zu needed", len, need);
  memcpy(out->pixels, src, len < cap ? len : cap);
  return TESSERA_OK;
}
