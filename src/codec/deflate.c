/* Deflate (TIFF compression 8 and 32946): zlib streams, decoded by libdeflate. */
#include <libdeflate.h>

#include "codec/codec.h"
#include "error.h"
#include "per_thread.h"

/* One decompressor per thread, kept for the thread's life: allocating one costs more than
 * decoding a small tile. */
static void destroy(void *d) { libdeflate_free_decompressor(d); }
static void *create(void) { return libdeflate_alloc_decompressor(); }
static struct tsr_per_thread decompressors = TSR_PER_THREAD_INIT(destroy);

tessera_status tsr_decode_deflate(const struct tsr_pixel_format *fmt, const uint8_t *src,
                                  size_t len, const struct tsr_tile_out *out) {
  size_t need = tsr_codec_needed_bytes(fmt, out), cap = tsr_codec_capacity(fmt, out), got = 0;
  struct libdeflate_decompressor *decompressor = tsr_per_thread_get(&decompressors, create);
  if (!decompressor)
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a deflate decompressor");
  enum libdeflate_result r =
      libdeflate_zlib_decompress(decompressor, src, len, out->pixels, cap, &got);
  /* A stream longer than the tile is damaged (and its checksum would go unchecked). */
  if (r == LIBDEFLATE_INSUFFICIENT_SPACE)
    return tsr_error(TESSERA_E_CORRUPT, "deflate data holds more than the %zu bytes of a tile",
                     cap);
  if (r != LIBDEFLATE_SUCCESS)
    return tsr_error(TESSERA_E_CORRUPT, "invalid deflate data");
  if (got < need)
    return tsr_error(TESSERA_E_CORRUPT, "deflate data ends after %zu of %zu bytes", got, need);
  return TESSERA_OK;
}
