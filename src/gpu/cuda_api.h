/* The part of the CUDA runtime and nvJPEG C APIs that tessera calls, declared here from
 * NVIDIA's public API references (CUDA Runtime API, nvJPEG) so that nothing
 * from CUDA is needed to build tessera: the libraries are opened with dlopen at run time
 * (gpu/cuda_loader.c) and these are the types of the functions looked up in them.
 *
 * The names are NVIDIA's, so code reads like their documentation; this header takes the place
 * of cuda_runtime_api.h and nvjpeg.h and must not be mixed with them in one file.
 * Only what a batched nvJPEG decode into device memory needs is here: a device, device and
 * pinned host memory, a stream, asynchronous copies and the batched decoder.
 * Every enum keeps the documented numeric values; the ABI of each function (argument types,
 * by-value structs) is that of the documented C signature on LP64 Linux. */
#ifndef TSR_GPU_CUDA_API_H
#define TSR_GPU_CUDA_API_H

#include <stddef.h>

/* ---- CUDA runtime (libcudart) ---------------------------------------------------------- */

/* cudaError_t: an int-sized enum; only the codes tessera tells apart are named. */
typedef enum cudaError {
  cudaSuccess = 0,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInitializationError = 3,
  cudaErrorStubLibrary = 34,        /* the driver found is the toolkit's link stub */
  cudaErrorInsufficientDriver = 35, /* no driver, or one older than the runtime */
  cudaErrorNoDevice = 100,
  cudaErrorNotReady = 600, /* cudaEventQuery: the work before the event is not done yet */
} cudaError_t;

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

/* Flags of cudaHostAlloc. */
#define cudaHostAllocDefault 0x00u
#define cudaHostAllocPortable 0x01u /* pinned for every CUDA context, not only the caller's */

typedef struct CUstream_st *cudaStream_t; /* opaque; NULL is the legacy default stream */
typedef struct CUevent_st *cudaEvent_t;   /* opaque */

/* Flags of cudaStreamCreateWithFlags and cudaEventCreateWithFlags. */
#define cudaStreamNonBlocking 0x01u  /* no implicit ordering with the legacy default stream */
#define cudaEventBlockingSync 0x01u  /* a thread waiting for it sleeps instead of spinning */
#define cudaEventDisableTiming 0x02u /* an event used only to order and wait: cheaper */

typedef cudaError_t (*tsr_cudaGetDeviceCount_fn)(int *count);
typedef const char *(*tsr_cudaGetErrorString_fn)(cudaError_t error);
typedef cudaError_t (*tsr_cudaSetDevice_fn)(int device);
typedef cudaError_t (*tsr_cudaMalloc_fn)(void **dev_ptr, size_t size);
typedef cudaError_t (*tsr_cudaFree_fn)(void *dev_ptr);
typedef cudaError_t (*tsr_cudaMallocHost_fn)(void **ptr, size_t size);
typedef cudaError_t (*tsr_cudaHostAlloc_fn)(void **ptr, size_t size, unsigned int flags);
typedef cudaError_t (*tsr_cudaFreeHost_fn)(void *ptr);
typedef cudaError_t (*tsr_cudaMemcpyAsync_fn)(void *dst, const void *src, size_t count,
                                              enum cudaMemcpyKind kind, cudaStream_t stream);
/* Copies height rows of width bytes, rows dpitch (spitch) bytes apart in dst (src). */
typedef cudaError_t (*tsr_cudaMemcpy2DAsync_fn)(void *dst, size_t dpitch, const void *src,
                                                size_t spitch, size_t width, size_t height,
                                                enum cudaMemcpyKind kind, cudaStream_t stream);
/* Sets height rows of width bytes, pitch bytes apart, to value (device memory). */
typedef cudaError_t (*tsr_cudaMemset2DAsync_fn)(void *dev_ptr, size_t pitch, int value,
                                                size_t width, size_t height, cudaStream_t stream);
typedef cudaError_t (*tsr_cudaGetDevice_fn)(int *device);
typedef cudaError_t (*tsr_cudaStreamCreate_fn)(cudaStream_t *stream);
typedef cudaError_t (*tsr_cudaStreamCreateWithFlags_fn)(cudaStream_t *stream, unsigned int flags);
typedef cudaError_t (*tsr_cudaStreamWaitEvent_fn)(cudaStream_t stream, cudaEvent_t event,
                                                  unsigned int flags);
typedef cudaError_t (*tsr_cudaEventCreateWithFlags_fn)(cudaEvent_t *event, unsigned int flags);
typedef cudaError_t (*tsr_cudaEventRecord_fn)(cudaEvent_t event, cudaStream_t stream);
typedef cudaError_t (*tsr_cudaEventSynchronize_fn)(cudaEvent_t event);
typedef cudaError_t (*tsr_cudaEventQuery_fn)(cudaEvent_t event);
typedef cudaError_t (*tsr_cudaEventDestroy_fn)(cudaEvent_t event);
typedef cudaError_t (*tsr_cudaStreamDestroy_fn)(cudaStream_t stream);
typedef cudaError_t (*tsr_cudaStreamSynchronize_fn)(cudaStream_t stream);
/* Versions are 1000 * major + 10 * minor (12040 is 12.4); the driver's is 0 without one. */
typedef cudaError_t (*tsr_cudaRuntimeGetVersion_fn)(int *version);
typedef cudaError_t (*tsr_cudaDriverGetVersion_fn)(int *version);

/* ---- nvJPEG (libnvjpeg) ---------------------------------------------------------------- */

typedef enum nvjpegStatus_t {
  NVJPEG_STATUS_SUCCESS = 0,
  NVJPEG_STATUS_NOT_INITIALIZED = 1,
  NVJPEG_STATUS_INVALID_PARAMETER = 2,
  NVJPEG_STATUS_BAD_JPEG = 3,
  NVJPEG_STATUS_JPEG_NOT_SUPPORTED = 4,
  NVJPEG_STATUS_ALLOCATOR_FAILURE = 5,
  NVJPEG_STATUS_EXECUTION_FAILED = 6,
  NVJPEG_STATUS_ARCH_MISMATCH = 7,
  NVJPEG_STATUS_INTERNAL_ERROR = 8,
  NVJPEG_STATUS_IMPLEMENTATION_NOT_SUPPORTED = 9,
  NVJPEG_STATUS_INCOMPLETE_BITSTREAM = 10,
} nvjpegStatus_t;

typedef enum nvjpegBackend_t {
  NVJPEG_BACKEND_DEFAULT = 0,
  NVJPEG_BACKEND_HYBRID = 1,     /* Huffman decoding on the CPU */
  NVJPEG_BACKEND_GPU_HYBRID = 2, /* Huffman decoding on the GPU (batched API) */
  NVJPEG_BACKEND_HARDWARE = 3,   /* the A100/H100 JPEG engine (batched API, baseline only) */
  NVJPEG_BACKEND_GPU_HYBRID_DEVICE = 4,
  NVJPEG_BACKEND_HARDWARE_DEVICE = 5,
  NVJPEG_BACKEND_LOSSLESS_JPEG = 6,
} nvjpegBackend_t;

typedef enum nvjpegOutputFormat_t {
  NVJPEG_OUTPUT_UNCHANGED = 0,
  NVJPEG_OUTPUT_YUV = 1,
  NVJPEG_OUTPUT_Y = 2,
  NVJPEG_OUTPUT_RGB = 3, /* planar */
  NVJPEG_OUTPUT_BGR = 4,
  NVJPEG_OUTPUT_RGBI = 5, /* interleaved: channel[0] only, pitch[0] bytes a row */
  NVJPEG_OUTPUT_BGRI = 6,
} nvjpegOutputFormat_t;

/* libraryPropertyType, as nvjpegGetProperty takes it. */
typedef enum libraryPropertyType_t {
  MAJOR_VERSION = 0,
  MINOR_VERSION = 1,
  PATCH_LEVEL = 2,
} libraryPropertyType;

#define NVJPEG_MAX_COMPONENT 4
#define NVJPEG_FLAGS_DEFAULT 0u
/* Chroma upsampled by interpolation, as libjpeg's "fancy upsampling" (nvJPEG 12.1 and later);
 * without it nvJPEG replicates chroma samples. */
#define NVJPEG_FLAGS_UPSAMPLING_WITH_INTERPOLATION 32u

/* Where a decoded image goes: device pointers and row pitches, one per plane. */
typedef struct nvjpegImage_t {
  unsigned char *channel[NVJPEG_MAX_COMPONENT];
  size_t pitch[NVJPEG_MAX_COMPONENT];
} nvjpegImage_t;

/* Allocators nvjpegCreateEx may take instead of cudaMalloc / cudaHostAlloc (NULL: those). */
typedef struct nvjpegDevAllocator_t {
  int (*dev_malloc)(void **ptr, size_t size);
  int (*dev_free)(void *ptr);
} nvjpegDevAllocator_t;

typedef struct nvjpegPinnedAllocator_t {
  int (*pinned_malloc)(void **ptr, size_t size, unsigned int flags);
  int (*pinned_free)(void *ptr);
} nvjpegPinnedAllocator_t;

typedef struct nvjpegHandle *nvjpegHandle_t;       /* opaque */
typedef struct nvjpegJpegState *nvjpegJpegState_t; /* opaque */

typedef nvjpegStatus_t (*tsr_nvjpegGetProperty_fn)(libraryPropertyType type, int *value);
typedef nvjpegStatus_t (*tsr_nvjpegCreateEx_fn)(nvjpegBackend_t backend,
                                                nvjpegDevAllocator_t *dev_allocator,
                                                nvjpegPinnedAllocator_t *pinned_allocator,
                                                unsigned int flags, nvjpegHandle_t *handle);
typedef nvjpegStatus_t (*tsr_nvjpegDestroy_fn)(nvjpegHandle_t handle);
typedef nvjpegStatus_t (*tsr_nvjpegJpegStateCreate_fn)(nvjpegHandle_t handle,
                                                       nvjpegJpegState_t *state);
typedef nvjpegStatus_t (*tsr_nvjpegJpegStateDestroy_fn)(nvjpegJpegState_t state);
typedef nvjpegStatus_t (*tsr_nvjpegDecodeBatchedInitialize_fn)(nvjpegHandle_t handle,
                                                               nvjpegJpegState_t state,
                                                               int batch_size, int max_cpu_threads,
                                                               nvjpegOutputFormat_t output_format);
/* data[i] (lengths[i] bytes, host memory) decodes into destinations[i] (device memory), in
 * stream; the batch size and output format are those given to the initialize call. */
typedef nvjpegStatus_t (*tsr_nvjpegDecodeBatched_fn)(nvjpegHandle_t handle, nvjpegJpegState_t state,
                                                     const unsigned char *const *data,
                                                     const size_t *lengths,
                                                     nvjpegImage_t *destinations,
                                                     cudaStream_t stream);

#endif
