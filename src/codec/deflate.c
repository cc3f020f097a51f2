/* Deflate (TIFF compression 8 and 32946): zlib streams, decoded by libdeflate. */
#include <libdeflate.h>

#include "codec/codec.h"
#include "error.h"

/* One decompressor per thread, kept for the thread's life: allocating one costs more than
 * decoding a small tile. Only its own thread touches it. */
static _Thread_local struct libdeflate_decompressor *decompressor;

tessera_status tsr_decode_deflate(const struct tsr_pixel_format *fmt, const uint8_t *src,
                                  size_t len, const struct tsr_tile_out *out) {
  size_t need = tsr_codec_needed_bytes(fmt, out), cap = tsr_codec_capacity(fmt, out), got = 0;
  if (!decompressor && !(decompressor = libdeflate_alloc_decompressor()))
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a deflate decompressor");
  enum libdeflate_result r =
      libdeflate_zlib_decompress(decompressor, src, len, out->pixels, cap, &got);
  if (r == LIBDEFLATE_INSUFFICIENT_SPACE)
    got = cap; /* more data than the tile holds: the tile is complete, the rest is padding */
  else if (r != LIBDEFLATE_SUCCESS)
    return tsr_error(TESSERA_E_CORRUPT, "invalid deflate data");
  if (got < need)
    return tsr_error(TESSERA_E_CORRUPT, "deflate data ends after %zu of %zu bytes", got, need);
  return TESSERA_OK;
}
