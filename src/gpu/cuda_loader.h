/* Finds and opens the CUDA runtime and nvJPEG at run time (dlopen), once per process.
 * Nothing from CUDA is linked: a machine without it builds and runs tessera, and asking for
 * the GPU there fails with a message saying what is missing. */
#ifndef TSR_GPU_CUDA_LOADER_H
#define TSR_GPU_CUDA_LOADER_H

#include <stddef.h>

#include "gpu/cuda_api.h"
#include "tessera.h"

/* The functions looked up in each library, by name. Every one must be there, or the library
 * is refused naming the first one missing. */
#define TSR_CUDART_FUNCTIONS(X)                                                                    \
  X(cudaGetDeviceCount)                                                                            \
  X(cudaGetErrorString)                                                                            \
  X(cudaRuntimeGetVersion)                                                                         \
  X(cudaDriverGetVersion)                                                                          \
  X(cudaSetDevice)                                                                                 \
  X(cudaMalloc)                                                                                    \
  X(cudaFree)                                                                                      \
  X(cudaMallocHost)                                                                                \
  X(cudaHostAlloc)                                                                                 \
  X(cudaFreeHost)                                                                                  \
  X(cudaMemcpyAsync)                                                                               \
  X(cudaMemcpy2DAsync)                                                                             \
  X(cudaMemset2DAsync)                                                                             \
  X(cudaGetDevice)                                                                                 \
  X(cudaStreamCreate)                                                                              \
  X(cudaStreamCreateWithFlags)                                                                     \
  X(cudaStreamWaitEvent)                                                                           \
  X(cudaStreamDestroy)                                                                             \
  X(cudaStreamSynchronize)                                                                         \
  X(cudaEventCreateWithFlags)                                                                      \
  X(cudaEventRecord)                                                                               \
  X(cudaEventSynchronize)                                                                          \
  X(cudaEventQuery)                                                                                \
  X(cudaEventDestroy)

#define TSR_NVJPEG_FUNCTIONS(X)                                                                    \
  X(nvjpegGetProperty)                                                                             \
  X(nvjpegCreateEx)                                                                                \
  X(nvjpegDestroy)                                                                                 \
  X(nvjpegJpegStateCreate)                                                                         \
  X(nvjpegJpegStateDestroy)                                                                        \
  X(nvjpegDecodeBatchedInitialize)                                                                 \
  X(nvjpegDecodeBatched)

#define TSR_CUDA_FIELD(name) tsr_##name##_fn name;

struct tsr_cudart {
  TSR_CUDART_FUNCTIONS(TSR_CUDA_FIELD)
};

struct tsr_nvjpeg {
  TSR_NVJPEG_FUNCTIONS(TSR_CUDA_FIELD)
};

#define TSR_CUDA_PATH_MAX 4096

/* What was loaded. Written once, before tsr_cuda_load first returns (pthread_once), and only
 * read afterwards, so any thread may read it without a lock. */
struct tsr_cuda {
  struct tsr_cudart rt;
  struct tsr_nvjpeg jpeg;
  int runtime_version;   /* 1000 * major + 10 * minor */
  int driver_version;    /* the same form */
  int device_count;      /* >= 1 */
  int nvjpeg_version[3]; /* major, minor, patch; -1 where nvjpegGetProperty failed */
  unsigned generation;   /* the process's fork generation (tsr_pool_generation) at loading:
                            CUDA, started then, cannot be used in a child forked later */
  char cudart_path[TSR_CUDA_PATH_MAX];
  char nvjpeg_path[TSR_CUDA_PATH_MAX];
};

/* Loads libcudart and libnvjpeg and checks for a device, the first time it is called (from any
 * thread; the others wait); every later call gives the same answer. TESSERA_OK with *out set,
 * or TESSERA_E_UNSUPPORTED with *out NULL and a message: "CUDA runtime not found (tried ...)",
 * "CUDA runtime PATH lacks NAME", "no CUDA device: ...", "nvJPEG not found (tried ...)".
 * The environment variable TESSERA_CUDA_PATH, read at that first call, is a folder (or
 * folders separated by ':') searched instead of every usual place. Libraries stay loaded for
 * the life of the process. */
tessera_status tsr_cuda_load(const struct tsr_cuda **out);

/* Where libraries are looked for: `override` (folders separated by ':'; when non-empty, the
 * only places searched) or else the dynamic loader's own search (LD_LIBRARY_PATH, the ld.so
 * cache, the system folders) followed by `folders`. */
struct tsr_cuda_search {
  const char *override;
  const char *const *folders; /* NULL-terminated */
};

/* The search tsr_cuda_load uses: TESSERA_CUDA_PATH, then the usual CUDA folders. The strings
 * are static (the environment variable's value is read at this call). */
void tsr_cuda_default_search(struct tsr_cuda_search *search);

/* Opens the first of `names` (NULL-terminated) found by `search`, with dlopen(RTLD_NOW |
 * RTLD_LOCAL), and writes the path it was loaded from into path. NULL with
 * TESSERA_E_UNSUPPORTED's message "WHAT not found (tried ...)" when none is found; files that
 * exist but cannot be loaded are named there with the loader's reason. (The tests call it to
 * see the real search come back empty-handed.) */
void *tsr_cuda_open_library(const char *what, const char *const *names,
                            const struct tsr_cuda_search *search, char *path, size_t path_size);

#endif
