/* nvJPEG's decoder for a device, shared by every CUDA batch iterator on it. */
#ifndef TSR_GPU_NVJPEG_DECODER_H
#define TSR_GPU_NVJPEG_DECODER_H

#include <stdbool.h>

#include "error.h"
#include "gpu/cuda_loader.h"
#include "tessera.h"

#define TSR_GPU_MAX_DEVICES 64

/* nvJPEG, once per device for the process's life. */
struct tsr_nvjpeg_decoder {
  bool made;
  tessera_status status;
  char message[TSR_MESSAGE_MAX];
  nvjpegHandle_t handle;
  const char *name;  /* "nvjpeg-hardware", ... */
  bool interpolates; /* chroma upsampled as libjpeg does: subsampled tiles may go to it */
};

/* The device's decoder, made on first use (the device must be current; device below
 * TSR_GPU_MAX_DEVICES); its failure, every time, if it could not be made. */
tessera_status tsr_nvjpeg_decoder_get(const struct tsr_cuda *c, int device,
                                      struct tsr_nvjpeg_decoder **out);

/* nvJPEG's status in words. */
const char *tsr_nvjpeg_status_name(nvjpegStatus_t s);

#endif
