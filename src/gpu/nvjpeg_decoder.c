/* nvJPEG's decoder, made once per device for the process's life on first use (the CUDA batch
 * back end's), with the back end TESSERA_NVJPEG_BACKEND asks for. decoders_lock guards the
 * table of decoders; a decoder, once made, is only read. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "gpu/nvjpeg_decoder.h"

const char *tsr_nvjpeg_status_name(nvjpegStatus_t s) {
  static const char *const names[] = {"success",
                                      "not initialized",
                                      "invalid parameter",
                                      "bad JPEG",
                                      "JPEG not supported",
                                      "allocator failure",
                                      "execution failed",
                                      "architecture mismatch",
                                      "internal error",
                                      "implementation not supported",
                                      "incomplete bitstream"};
  return (unsigned)s < sizeof names / sizeof names[0] ? names[s] : "unknown status";
}

/* TESSERA_NVJPEG_BACKEND picks nvJPEG's back end: "hardware" (the A100/H100 JPEG engines),
 * "gpu" (GPU_HYBRID: Huffman on the GPU), "hybrid" (Huffman on the CPU) or "default"; unset,
 * the hardware engines where the GPU has them, else nvJPEG's default. */
static void make_decoder(const struct tsr_cuda *c, struct tsr_nvjpeg_decoder *d) {
  static const struct {
    const char *env, *name;
    nvjpegBackend_t backend;
  } kinds[] = {{"hardware", "nvjpeg-hardware", NVJPEG_BACKEND_HARDWARE},
               {"default", "nvjpeg-default", NVJPEG_BACKEND_DEFAULT},
               {"gpu", "nvjpeg-gpu-hybrid", NVJPEG_BACKEND_GPU_HYBRID},
               {"hybrid", "nvjpeg-hybrid", NVJPEG_BACKEND_HYBRID}};
  const char *want = getenv("TESSERA_NVJPEG_BACKEND");
  size_t first = 0, last = 1; /* unset: hardware, then default */
  if (want && *want) {
    for (first = 0; first < 4 && strcmp(kinds[first].env, want) != 0; first++)
      ;
    if (first == 4) {
      d->status = tsr_error(TESSERA_E_ARGUMENT,
                            "TESSERA_NVJPEG_BACKEND is \"%s\", not hardware, gpu, hybrid or "
                            "default",
                            want);
      return;
    }
    last = first;
  }
  /* Interpolated chroma upsampling came with nvJPEG 12.1; without it, only tiles without
   * chroma subsampling are decoded there (replicated chroma would differ from the CPU's). */
  bool interpolation =
      c->nvjpeg_version[0] > 12 || (c->nvjpeg_version[0] == 12 && c->nvjpeg_version[1] >= 1);
  nvjpegStatus_t s = NVJPEG_STATUS_NOT_INITIALIZED;
  for (size_t k = first; k <= last; k++) {
    for (int with = interpolation; with >= 0; with--) {
      s = c->jpeg.nvjpegCreateEx(
          kinds[k].backend, NULL, NULL,
          with ? NVJPEG_FLAGS_UPSAMPLING_WITH_INTERPOLATION : NVJPEG_FLAGS_DEFAULT, &d->handle);
      if (s == NVJPEG_STATUS_SUCCESS) {
        d->name = kinds[k].name;
        d->interpolates = with;
        d->status = TESSERA_OK;
        return;
      }
    }
  }
  d->status = tsr_error(TESSERA_E_UNSUPPORTED, "nvJPEG could not start (%s back end): %s (%d)",
                        kinds[last].env, tsr_nvjpeg_status_name(s), (int)s);
}

static pthread_mutex_t decoders_lock = PTHREAD_MUTEX_INITIALIZER;
/* Guarded by decoders_lock; an entry, once made, is only read. */
static struct tsr_nvjpeg_decoder decoders[TSR_GPU_MAX_DEVICES];

tessera_status tsr_nvjpeg_decoder_get(const struct tsr_cuda *c, int device,
                                      struct tsr_nvjpeg_decoder **out) {
  pthread_mutex_lock(&decoders_lock);
  struct tsr_nvjpeg_decoder *d = &decoders[device];
  if (!d->made) {
    d->made = true;
    make_decoder(c, d);
    if (d->status != TESSERA_OK)
      snprintf(d->message, sizeof d->message, "%s", tessera_error_message());
  }
  pthread_mutex_unlock(&decoders_lock);
  *out = d;
  if (d->status != TESSERA_OK)
    return tsr_error(d->status, "%s", d->message);
  return TESSERA_OK;
}
