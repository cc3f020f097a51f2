/* Zstandard (TIFF compression 50000). */
#include <zstd.h>

#include "codec/codec.h"
#include "error.h"
#include "per_thread.h"

/* One context per thread, reused across tiles. */
static void destroy(void *c) { ZSTD_freeDCtx(c); }
static void *create(void) { return ZSTD_createDCtx(); }
static struct tsr_per_thread contexts = TSR_PER_THREAD_INIT(destroy);

tessera_status tsr_decode_zstd(const struct tsr_pixel_format *fmt, const uint8_t *src, size_t len,
                               const struct tsr_tile_out *out) {
  size_t need = tsr_codec_needed_bytes(fmt, out), cap = tsr_codec_capacity(fmt, out);
  ZSTD_DCtx *context = tsr_per_thread_get(&contexts, create);
  if (!context)
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a zstd context");
  /* One frame per tile; writers may pad after it, as libtiff tolerates. */
  size_t frame = ZSTD_findFrameCompressedSize(src, len);
  if (ZSTD_isError(frame))
    return tsr_error(TESSERA_E_CORRUPT, "invalid zstd data: %s", ZSTD_getErrorName(frame));
  size_t got = ZSTD_decompressDCtx(context, out->pixels, cap, src, frame);
  if (ZSTD_isError(got))
    return tsr_error(TESSERA_E_CORRUPT, "invalid zstd data: %s", ZSTD_getErrorName(got));
  if (got < need)
    return tsr_error(TESSERA_E_CORRUPT, "zstd data ends after %zu of %zu bytes", got, need);
  return TESSERA_OK;
}
