/* Stand-ins for libcudart and libnvjpeg, built as small shared libraries for
 * test_cuda_loader (and compiled by tests/test_cuda_loader.py), so the loader's answers can
 * be checked on a machine without CUDA. One source, several libraries:
 *   -DFAKE_CUDART   the runtime: cudaGetDeviceCount answers from TESSERA_FAKE_CUDA_DEVICES
 *                   (N >= 0: N devices; -E: error E), the driver version is
 *                   TESSERA_FAKE_CUDA_DRIVER (default 0: no driver), the runtime is 12.4
 *   -DFAKE_NVJPEG   nvJPEG 12.4.0
 *   -DFAKE_PARTIAL  leaves out one function the loader needs: cudaGetDeviceCount or
 *                   nvjpegDecodeBatched.
 * Nothing here is ever asked to do GPU work: the other functions only fail. Each is declared
 * with the type the loader calls it through, so a signature that disagrees does not compile. */
#include <stdlib.h>

#include "gpu/cuda_loader.h"

#define FAKE_DECLARE(name) __typeof__(*(tsr_##name##_fn)0) name;

#ifdef FAKE_CUDART
TSR_CUDART_FUNCTIONS(FAKE_DECLARE)

static int env_int(const char *name, int fallback) {
  const char *v = getenv(name);
  return v && *v ? atoi(v) : fallback;
}

/* How often cudaGetDeviceCount ran: the loader asks once per process however many threads
 * ask it. Read by the test through dlsym. */
int fake_device_count_calls;

#ifndef FAKE_PARTIAL
cudaError_t cudaGetDeviceCount(int *count) {
  __atomic_add_fetch(&fake_device_count_calls, 1, __ATOMIC_SEQ_CST);
  int devices = env_int("TESSERA_FAKE_CUDA_DEVICES", 0);
  if (devices < 0) {
    *count = 0;
    return (cudaError_t)-devices;
  }
  *count = devices;
  return cudaSuccess;
}
#endif

const char *cudaGetErrorString(cudaError_t error) {
  switch (error) {
  case cudaSuccess: return "no error";
  case cudaErrorInsufficientDriver:
    return "CUDA driver version is insufficient for CUDA runtime version";
  case cudaErrorNoDevice: return "no CUDA-capable device is detected";
  default: return "unrecognized error code";
  }
}

cudaError_t cudaRuntimeGetVersion(int *version) {
  *version = 12040;
  return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int *version) {
  *version = env_int("TESSERA_FAKE_CUDA_DRIVER", 0);
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  (void)device;
  return cudaErrorNoDevice;
}

cudaError_t cudaMalloc(void **ptr, size_t size) {
  (void)size;
  *ptr = NULL;
  return cudaErrorNoDevice;
}

cudaError_t cudaFree(void *ptr) {
  (void)ptr;
  return cudaErrorNoDevice;
}

cudaError_t cudaMallocHost(void **ptr, size_t size) {
  (void)size;
  *ptr = NULL;
  return cudaErrorNoDevice;
}

cudaError_t cudaHostAlloc(void **ptr, size_t size, unsigned int flags) {
  (void)size, (void)flags;
  *ptr = NULL;
  return cudaErrorNoDevice;
}

cudaError_t cudaFreeHost(void *ptr) {
  (void)ptr;
  return cudaErrorNoDevice;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind,
                            cudaStream_t stream) {
  (void)dst, (void)src, (void)count, (void)kind, (void)stream;
  return cudaErrorNoDevice;
}

cudaError_t cudaStreamCreate(cudaStream_t *stream) {
  *stream = NULL;
  return cudaErrorNoDevice;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  (void)stream;
  return cudaErrorNoDevice;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  (void)stream;
  return cudaErrorNoDevice;
}

cudaError_t cudaMemcpy2DAsync(void *dst, size_t dpitch, const void *src, size_t spitch,
                              size_t width, size_t height, enum cudaMemcpyKind kind,
                              cudaStream_t stream) {
  (void)dst, (void)dpitch, (void)src, (void)spitch, (void)width, (void)height, (void)kind;
  (void)stream;
  return cudaErrorNoDevice;
}

cudaError_t cudaMemset2DAsync(void *ptr, size_t pitch, int value, size_t width, size_t height,
                              cudaStream_t stream) {
  (void)ptr, (void)pitch, (void)value, (void)width, (void)height, (void)stream;
  return cudaErrorNoDevice;
}

cudaError_t cudaGetDevice(int *device) {
  *device = 0;
  return cudaErrorNoDevice;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned int flags) {
  (void)flags;
  *stream = NULL;
  return cudaErrorNoDevice;
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags) {
  (void)stream, (void)event, (void)flags;
  return cudaErrorNoDevice;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned int flags) {
  (void)flags;
  *event = NULL;
  return cudaErrorNoDevice;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  (void)event, (void)stream;
  return cudaErrorNoDevice;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  (void)event;
  return cudaErrorNoDevice;
}

cudaError_t cudaEventQuery(cudaEvent_t event) {
  (void)event;
  return cudaErrorNoDevice;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  (void)event;
  return cudaErrorNoDevice;
}
#endif

#ifdef FAKE_NVJPEG
TSR_NVJPEG_FUNCTIONS(FAKE_DECLARE)

nvjpegStatus_t nvjpegGetProperty(libraryPropertyType type, int *value) {
  static const int version[3] = {12, 4, 0};
  if ((int)type < 0 || (int)type > 2)
    return NVJPEG_STATUS_INVALID_PARAMETER;
  *value = version[type];
  return NVJPEG_STATUS_SUCCESS;
}

nvjpegStatus_t nvjpegCreateEx(nvjpegBackend_t backend, nvjpegDevAllocator_t *dev_allocator,
                              nvjpegPinnedAllocator_t *pinned_allocator, unsigned int flags,
                              nvjpegHandle_t *handle) {
  (void)backend, (void)dev_allocator, (void)pinned_allocator, (void)flags;
  *handle = NULL;
  return NVJPEG_STATUS_NOT_INITIALIZED;
}

nvjpegStatus_t nvjpegDestroy(nvjpegHandle_t handle) {
  (void)handle;
  return NVJPEG_STATUS_NOT_INITIALIZED;
}

nvjpegStatus_t nvjpegJpegStateCreate(nvjpegHandle_t handle, nvjpegJpegState_t *state) {
  (void)handle;
  *state = NULL;
  return NVJPEG_STATUS_NOT_INITIALIZED;
}

nvjpegStatus_t nvjpegJpegStateDestroy(nvjpegJpegState_t state) {
  (void)state;
  return NVJPEG_STATUS_NOT_INITIALIZED;
}

nvjpegStatus_t nvjpegDecodeBatchedInitialize(nvjpegHandle_t handle, nvjpegJpegState_t state,
                                             int batch_size, int max_cpu_threads,
                                             nvjpegOutputFormat_t output_format) {
  (void)handle, (void)state, (void)batch_size, (void)max_cpu_threads, (void)output_format;
  return NVJPEG_STATUS_NOT_INITIALIZED;
}

#ifndef FAKE_PARTIAL
nvjpegStatus_t nvjpegDecodeBatched(nvjpegHandle_t handle, nvjpegJpegState_t state,
                                   const unsigned char *const *data, const size_t *lengths,
                                   nvjpegImage_t *destinations, cudaStream_t stream) {
  (void)handle, (void)state, (void)data, (void)lengths, (void)destinations, (void)stream;
  return NVJPEG_STATUS_NOT_INITIALIZED;
}
#endif
#endif
