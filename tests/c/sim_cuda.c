/* A CUDA runtime and nvJPEG that run on the CPU, for testing tessera's GPU path on machines
 * without a GPU. Built at test time as libcudart.so.12 (-DSIM_CUDART) and libnvjpeg.so.12
 * (-DSIM_NVJPEG) in one folder, which TESSERA_CUDA_PATH names; tessera loads them as it would
 * NVIDIA's. It models what tessera must get right, strictly:
 *  - Device memory is mapped PROT_NONE: the host touching it (instead of copying) crashes.
 *    Every copy, set and decode checks that its ranges lie inside allocations of the right
 *    kind, and host-to-device copies must come from pinned memory (cudaHostAlloc).
 *  - Work queued on a stream runs only when something waits for it (an event or stream
 *    synchronize, a stream waiting on an event, cudaFree). So host memory changed or reused
 *    before the work reading it was waited for shows up as wrong pixels, not luck.
 *  - nvJPEG decodes with libjpeg-turbo as tessera's CPU path does (so pixels are equal, which
 *    makes any misplaced one visible), except that, as nvJPEG, it replicates chroma unless the
 *    handle was made with NVJPEG_FLAGS_UPSAMPLING_WITH_INTERPOLATION (which a version before
 *    12.1, SIM_NVJPEG_VERSION=12.0, refuses); bitstreams are read when the work runs, not at
 *    the call. Headers are parsed at the call (as nvJPEG does), failing with BAD_JPEG.
 * Knobs (environment): SIM_NVJPEG_HARDWARE=1 accepts the hardware back end (else it answers
 * "architecture mismatch", as on GPUs without JPEG engines); SIM_NVJPEG_FAIL=1 fails every
 * nvjpegDecodeBatched; SIM_CUDA_MALLOC_LIMIT=N fails cudaMalloc beyond N bytes in use.
 * Counters for the tests (sim_*) are read through ctypes or dlsym. */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "gpu/cuda_loader.h"

#define SIM_DECLARE(name) __typeof__(*(tsr_##name##_fn)0) name;
#define SIM_API __attribute__((visibility("default")))

/* Shared between the two libraries: nvJPEG's part calls these in the runtime's. */
struct sim_image {
  const unsigned char *data;
  size_t length;
  unsigned char *dst;
  size_t pitch;
  bool interpolate; /* chroma upsampling: libjpeg's fancy one, or replication */
};
SIM_API bool sim_device_range(const void *p, size_t n);
typedef void (*sim_decode_fn)(const struct sim_image *image);
/* Queues decode(images[i]) for each i on stream (nvJPEG's part hands its decoder over: the
 * runtime is loaded first and cannot name a function of a library loaded after it). */
SIM_API void sim_enqueue_decode(cudaStream_t stream, const struct sim_image *images, size_t n,
                                sim_decode_fn decode);
SIM_API void sim_fail(const char *what);

#ifdef SIM_CUDART
TSR_CUDART_FUNCTIONS(SIM_DECLARE)

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

enum kind { DEVICE, PINNED };

struct alloc {
  uint8_t *p;
  size_t size, mapped;
  enum kind kind;
  struct alloc *next;
};

static struct alloc *allocs;
static size_t device_bytes, pinned_bytes, device_peak;
static long live_streams, live_events, decoded_images, copies, failures;
static char last_failure[256];

/* A misuse that real CUDA would answer with an error or undefined behaviour: counted and
 * remembered for the tests, and reported on stderr. */
SIM_API void sim_fail(const char *what) {
  failures++;
  snprintf(last_failure, sizeof last_failure, "%s", what);
  fprintf(stderr, "sim_cuda: %s\n", what);
}

static struct alloc *find(const void *p, size_t n, enum kind kind) {
  const uint8_t *b = p;
  for (struct alloc *a = allocs; a; a = a->next)
    if (a->kind == kind && b >= a->p && b <= a->p + a->size && n <= (size_t)(a->p + a->size - b))
      return a;
  return NULL;
}

SIM_API bool sim_device_range(const void *p, size_t n) {
  pthread_mutex_lock(&lock);
  bool ok = find(p, n, DEVICE) != NULL;
  pthread_mutex_unlock(&lock);
  return ok;
}

static void protect(struct alloc *a, int prot) {
  if (a && a->kind == DEVICE)
    mprotect(a->p, a->mapped, prot);
}

/* ---- streams: queues of work run when waited for ---- */

enum op_kind { COPY, SET, DECODE, WAIT };

struct op {
  enum op_kind kind;
  uint64_t seq;
  struct op *next;
  uint8_t *dst;
  const uint8_t *src;
  size_t dpitch, spitch, width, height;
  int value;
  struct sim_image *images;
  size_t nimages;
  sim_decode_fn decode;
  struct CUstream_st *wait_stream;
  uint64_t wait_seq;
};

struct CUstream_st {
  struct op *head, *tail;
  uint64_t queued, done; /* sequence numbers */
};

struct CUevent_st {
  struct CUstream_st *stream; /* NULL: complete */
  uint64_t seq;
};

static void run_until(struct CUstream_st *s, uint64_t seq);
static struct CUstream_st *live(struct CUstream_st *s);

/* Span of a 2D region: pitch * (height - 1) + width. */
static size_t span(size_t pitch, size_t width, size_t height) {
  return height ? pitch * (height - 1) + width : 0;
}

static void run_op(struct op *o) {
  switch (o->kind) {
  case COPY:
  case SET: {
    struct alloc *d = find(o->dst, span(o->dpitch, o->width, o->height), DEVICE);
    struct alloc *s =
        o->kind == COPY ? find(o->src, span(o->spitch, o->width, o->height), DEVICE) : NULL;
    protect(d, PROT_READ | PROT_WRITE);
    protect(s, PROT_READ | PROT_WRITE);
    for (size_t y = 0; y < o->height; y++) {
      if (o->kind == COPY)
        memmove(o->dst + y * o->dpitch, o->src + y * o->spitch, o->width);
      else
        memset(o->dst + y * o->dpitch, o->value, o->width);
    }
    protect(s, PROT_NONE);
    protect(d, PROT_NONE);
    copies++;
    break;
  }
  case DECODE:
    for (size_t i = 0; i < o->nimages; i++) {
      struct alloc *d = find(o->images[i].dst, 1, DEVICE);
      protect(d, PROT_READ | PROT_WRITE);
      o->decode(&o->images[i]);
      protect(d, PROT_NONE);
      decoded_images++;
    }
    free(o->images);
    break;
  case WAIT: run_until(live(o->wait_stream), o->wait_seq); break;
  }
}

static void run_until(struct CUstream_st *s, uint64_t seq) {
  while (s && s->head && s->head->seq <= seq) {
    struct op *o = s->head;
    s->head = o->next;
    if (!s->head)
      s->tail = NULL;
    run_op(o);
    s->done = o->seq;
    free(o);
  }
}

#define MAX_STREAMS 256
static struct CUstream_st *streams[MAX_STREAMS];

/* s, or NULL when it was destroyed: its work has all run (cudaStreamDestroy runs it), so an
 * event or a wait on it is complete. */
static struct CUstream_st *live(struct CUstream_st *s) {
  for (size_t i = 0; s && i < MAX_STREAMS; i++)
    if (streams[i] == s)
      return s;
  return NULL;
}

static void run_all(void) {
  for (size_t i = 0; i < MAX_STREAMS; i++)
    if (streams[i])
      run_until(streams[i], UINT64_MAX);
}

static cudaError_t enqueue(struct CUstream_st *s, struct op *o) {
  if (!s) { /* the legacy default stream: tessera queues nothing there; run at once */
    run_op(o);
    free(o);
    return cudaSuccess;
  }
  o->seq = ++s->queued;
  o->next = NULL;
  if (s->tail)
    s->tail->next = o;
  else
    s->head = o;
  s->tail = o;
  return cudaSuccess;
}

SIM_API void sim_enqueue_decode(cudaStream_t stream, const struct sim_image *images, size_t n,
                                sim_decode_fn decode) {
  struct op *o = calloc(1, sizeof *o);
  o->kind = DECODE;
  o->decode = decode;
  o->images = malloc(n * sizeof *images);
  memcpy(o->images, images, n * sizeof *images);
  o->nimages = n;
  pthread_mutex_lock(&lock);
  enqueue(stream, o);
  pthread_mutex_unlock(&lock);
}

/* ---- the runtime's functions ---- */

cudaError_t cudaGetDeviceCount(int *count) {
  *count = 1;
  return cudaSuccess;
}

const char *cudaGetErrorString(cudaError_t error) {
  switch (error) {
  case cudaSuccess: return "no error";
  case cudaErrorMemoryAllocation: return "out of memory";
  default: return "invalid argument (simulated)";
  }
}

cudaError_t cudaRuntimeGetVersion(int *version) {
  *version = 12040;
  return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int *version) {
  *version = 12040;
  return cudaSuccess;
}

static __thread int current_device;

cudaError_t cudaSetDevice(int device) {
  if (device != 0) {
    sim_fail("cudaSetDevice: no such device");
    return (cudaError_t)101;
  }
  current_device = device;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int *device) {
  *device = current_device;
  return cudaSuccess;
}

static size_t page_round(size_t n) {
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  return (n + page - 1) / page * page;
}

cudaError_t cudaMalloc(void **ptr, size_t size) {
  const char *limit = getenv("SIM_CUDA_MALLOC_LIMIT");
  pthread_mutex_lock(&lock);
  cudaError_t e = cudaSuccess;
  if (limit && *limit && device_bytes + size > (size_t)strtoull(limit, NULL, 10)) {
    e = cudaErrorMemoryAllocation;
  } else {
    struct alloc *a = calloc(1, sizeof *a);
    a->size = size;
    a->mapped = page_round(size ? size : 1);
    a->p = mmap(NULL, a->mapped, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    a->kind = DEVICE;
    a->next = allocs;
    allocs = a;
    device_bytes += size;
    if (device_bytes > device_peak)
      device_peak = device_bytes;
    *ptr = a->p;
  }
  pthread_mutex_unlock(&lock);
  if (e != cudaSuccess)
    *ptr = NULL;
  return e;
}

static cudaError_t release(void *ptr, enum kind kind, const char *what) {
  if (!ptr)
    return cudaSuccess;
  pthread_mutex_lock(&lock);
  run_all(); /* cudaFree and cudaFreeHost wait for the device */
  struct alloc **pp = &allocs;
  while (*pp && !((*pp)->p == ptr && (*pp)->kind == kind))
    pp = &(*pp)->next;
  struct alloc *a = *pp;
  cudaError_t e = cudaSuccess;
  if (!a) {
    sim_fail(what);
    e = (cudaError_t)1;
  } else {
    *pp = a->next;
    if (kind == DEVICE) {
      device_bytes -= a->size;
      munmap(a->p, a->mapped);
    } else {
      pinned_bytes -= a->size;
      free(a->p);
    }
    free(a);
  }
  pthread_mutex_unlock(&lock);
  return e;
}

cudaError_t cudaFree(void *ptr) { return release(ptr, DEVICE, "cudaFree of no device allocation"); }

cudaError_t cudaHostAlloc(void **ptr, size_t size, unsigned int flags) {
  (void)flags;
  struct alloc *a = calloc(1, sizeof *a);
  a->p = malloc(size ? size : 1);
  a->size = size;
  a->kind = PINNED;
  pthread_mutex_lock(&lock);
  a->next = allocs;
  allocs = a;
  pinned_bytes += size;
  pthread_mutex_unlock(&lock);
  *ptr = a->p;
  return cudaSuccess;
}

cudaError_t cudaMallocHost(void **ptr, size_t size) { return cudaHostAlloc(ptr, size, 0); }

cudaError_t cudaFreeHost(void *ptr) {
  return release(ptr, PINNED, "cudaFreeHost of no pinned allocation");
}

/* Checks a copy's ranges as its kind says; false (and a failure) when they are wrong. */
static bool copy_ok(const void *dst, size_t dspan, const void *src, size_t sspan,
                    enum cudaMemcpyKind kind) {
  bool ok;
  switch (kind) {
  case cudaMemcpyHostToDevice: ok = find(dst, dspan, DEVICE) && find(src, sspan, PINNED); break;
  case cudaMemcpyDeviceToDevice: ok = find(dst, dspan, DEVICE) && find(src, sspan, DEVICE); break;
  case cudaMemcpyDeviceToHost: ok = !find(dst, 1, DEVICE) && find(src, sspan, DEVICE); break;
  default: ok = false; /* tessera never lets CUDA guess */
  }
  if (!ok)
    sim_fail(kind == cudaMemcpyHostToDevice
                 ? "host-to-device copy outside a device allocation or not from pinned memory"
                 : "device copy outside device allocations, or of a kind tessera never uses");
  return ok;
}

cudaError_t cudaMemcpy2DAsync(void *dst, size_t dpitch, const void *src, size_t spitch,
                              size_t width, size_t height, enum cudaMemcpyKind kind,
                              cudaStream_t stream) {
  pthread_mutex_lock(&lock);
  cudaError_t e = (cudaError_t)1;
  if (width > dpitch || width > spitch) {
    sim_fail("cudaMemcpy2DAsync: width beyond a pitch");
  } else if (copy_ok(dst, span(dpitch, width, height), src, span(spitch, width, height), kind)) {
    struct op *o = calloc(1, sizeof *o);
    *o = (struct op){.kind = COPY,
                     .dst = dst,
                     .src = src,
                     .dpitch = dpitch,
                     .spitch = spitch,
                     .width = width,
                     .height = height};
    e = enqueue(stream, o);
  }
  pthread_mutex_unlock(&lock);
  return e;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind,
                            cudaStream_t stream) {
  return cudaMemcpy2DAsync(dst, count, src, count, count, 1, kind, stream);
}

cudaError_t cudaMemset2DAsync(void *ptr, size_t pitch, int value, size_t width, size_t height,
                              cudaStream_t stream) {
  pthread_mutex_lock(&lock);
  cudaError_t e = (cudaError_t)1;
  if (width > pitch || !find(ptr, span(pitch, width, height), DEVICE)) {
    sim_fail("cudaMemset2DAsync outside a device allocation");
  } else {
    struct op *o = calloc(1, sizeof *o);
    *o = (struct op){
        .kind = SET, .dst = ptr, .dpitch = pitch, .width = width, .height = height, .value = value};
    e = enqueue(stream, o);
  }
  pthread_mutex_unlock(&lock);
  return e;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned int flags) {
  (void)flags;
  struct CUstream_st *s = calloc(1, sizeof *s);
  pthread_mutex_lock(&lock);
  size_t i = 0;
  while (i < MAX_STREAMS && streams[i])
    i++;
  cudaError_t e = cudaSuccess;
  if (i == MAX_STREAMS) {
    free(s);
    s = NULL;
    e = cudaErrorMemoryAllocation;
  } else {
    streams[i] = s;
    live_streams++;
  }
  pthread_mutex_unlock(&lock);
  *stream = s;
  return e;
}

cudaError_t cudaStreamCreate(cudaStream_t *stream) { return cudaStreamCreateWithFlags(stream, 0); }

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  pthread_mutex_lock(&lock);
  run_until(stream, UINT64_MAX);
  for (size_t i = 0; i < MAX_STREAMS; i++)
    if (streams[i] == stream)
      streams[i] = NULL;
  live_streams--;
  pthread_mutex_unlock(&lock);
  free(stream);
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  pthread_mutex_lock(&lock);
  if (stream)
    run_until(stream, UINT64_MAX);
  else
    run_all();
  pthread_mutex_unlock(&lock);
  return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned int flags) {
  (void)flags;
  *event = calloc(1, sizeof **event);
  pthread_mutex_lock(&lock);
  live_events++;
  pthread_mutex_unlock(&lock);
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  pthread_mutex_lock(&lock);
  live_events--;
  pthread_mutex_unlock(&lock);
  free(event);
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  pthread_mutex_lock(&lock);
  event->stream = stream;
  event->seq = stream ? stream->queued : 0;
  pthread_mutex_unlock(&lock);
  return cudaSuccess;
}

/* sim_hold(true) stands for a GPU that is busy for as long as the test wants: work before an
 * event not yet complete does not run, cudaEventQuery says it is not ready and
 * cudaEventSynchronize waits, until sim_hold(false). Guarded by lock. */
static bool held;
static long held_waits; /* queries and synchronizations that found the GPU held */
static pthread_cond_t unheld = PTHREAD_COND_INITIALIZER;

static bool event_done(cudaEvent_t event) {
  struct CUstream_st *s = live(event->stream);
  return !s || s->done >= event->seq;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  pthread_mutex_lock(&lock);
  if (held && !event_done(event)) {
    held_waits++;
    while (held)
      pthread_cond_wait(&unheld, &lock);
  }
  run_until(live(event->stream), event->seq);
  pthread_mutex_unlock(&lock);
  return cudaSuccess;
}

/* Without sim_hold, the work before the event runs now (the simulator's GPU runs work when
 * something waits for it), so the event is complete. */
cudaError_t cudaEventQuery(cudaEvent_t event) {
  pthread_mutex_lock(&lock);
  cudaError_t e = cudaSuccess;
  if (held && !event_done(event)) {
    held_waits++;
    e = cudaErrorNotReady;
  } else {
    run_until(live(event->stream), event->seq);
  }
  pthread_mutex_unlock(&lock);
  return e;
}

SIM_API void sim_hold(bool on) {
  pthread_mutex_lock(&lock);
  held = on;
  pthread_cond_broadcast(&unheld);
  pthread_mutex_unlock(&lock);
}

SIM_API long sim_held_waits(void) {
  pthread_mutex_lock(&lock);
  long n = held_waits;
  pthread_mutex_unlock(&lock);
  return n;
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags) {
  (void)flags;
  struct op *o = calloc(1, sizeof *o);
  pthread_mutex_lock(&lock);
  *o = (struct op){.kind = WAIT, .wait_stream = event->stream, .wait_seq = event->seq};
  cudaError_t e = enqueue(stream, o);
  pthread_mutex_unlock(&lock);
  return e;
}

/* A device of 80 GiB, of which what tessera holds is used. */
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total);
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total) {
  *total = (size_t)80 << 30;
  pthread_mutex_lock(&lock);
  *free_bytes = *total - device_bytes;
  pthread_mutex_unlock(&lock);
  return cudaSuccess;
}

/* ---- for the tests ---- */

/* The counts are read under the lock: a test polls them while pool threads free what a
 * destroyed iterator held. */
#define SIM_COUNT(type, name, var)                                                                 \
  SIM_API type name(void) {                                                                        \
    pthread_mutex_lock(&lock);                                                                     \
    type v = var;                                                                                  \
    pthread_mutex_unlock(&lock);                                                                   \
    return v;                                                                                      \
  }
SIM_COUNT(size_t, sim_device_bytes, device_bytes)
SIM_COUNT(size_t, sim_device_peak, device_peak)
SIM_COUNT(size_t, sim_pinned_bytes, pinned_bytes)
SIM_COUNT(long, sim_live_streams, live_streams)
SIM_COUNT(long, sim_live_events, live_events)
SIM_COUNT(long, sim_decoded_images, decoded_images)
SIM_COUNT(long, sim_copies, copies)
SIM_COUNT(long, sim_failures, failures)
SIM_API const char *sim_last_failure(void) { return last_failure; }

/* Copies n bytes of device memory at src out to host dst as it is now: work queued and not
 * yet waited for has not happened (so a batch handed out before its work was waited for
 * reads wrong). Returns false if [src, src + n) is not device memory. */
SIM_API bool sim_peek(void *dst, const void *src, size_t n) {
  pthread_mutex_lock(&lock);
  struct alloc *a = find(src, n, DEVICE);
  if (a) {
    protect(a, PROT_READ);
    memcpy(dst, src, n);
    protect(a, PROT_NONE);
  }
  pthread_mutex_unlock(&lock);
  return a != NULL;
}
#endif

#ifdef SIM_NVJPEG
#include <setjmp.h>
/* jpeglib.h needs FILE and size_t first. */
#include <jpeglib.h>

TSR_NVJPEG_FUNCTIONS(SIM_DECLARE)

struct nvjpegHandle {
  nvjpegBackend_t backend;
  bool interpolate; /* NVJPEG_FLAGS_UPSAMPLING_WITH_INTERPOLATION: else chroma is replicated */
};

/* SIM_NVJPEG_VERSION=MAJOR.MINOR (default 12.4): before 12.1 there is no interpolated
 * upsampling, and asking for it fails as an unknown flag. */
static void version(int v[3]) {
  const char *e = getenv("SIM_NVJPEG_VERSION");
  v[0] = 12, v[1] = 4, v[2] = 0;
  if (e && *e && sscanf(e, "%d.%d", &v[0], &v[1]) != 2)
    v[0] = 12, v[1] = 4;
}

struct nvjpegJpegState {
  int batch_size; /* 0 until nvjpegDecodeBatchedInitialize */
  nvjpegOutputFormat_t format;
};

nvjpegStatus_t nvjpegGetProperty(libraryPropertyType type, int *value) {
  int v[3];
  version(v);
  if ((int)type < 0 || (int)type > 2)
    return NVJPEG_STATUS_INVALID_PARAMETER;
  *value = v[type];
  return NVJPEG_STATUS_SUCCESS;
}

nvjpegStatus_t nvjpegCreateEx(nvjpegBackend_t backend, nvjpegDevAllocator_t *dev_allocator,
                              nvjpegPinnedAllocator_t *pinned_allocator, unsigned int flags,
                              nvjpegHandle_t *handle) {
  (void)dev_allocator, (void)pinned_allocator;
  const char *hw = getenv("SIM_NVJPEG_HARDWARE");
  if (backend == NVJPEG_BACKEND_HARDWARE && !(hw && *hw == '1'))
    return NVJPEG_STATUS_ARCH_MISMATCH;
  int v[3];
  version(v);
  bool interpolate = flags & NVJPEG_FLAGS_UPSAMPLING_WITH_INTERPOLATION;
  if ((flags & ~NVJPEG_FLAGS_UPSAMPLING_WITH_INTERPOLATION) ||
      (interpolate && (v[0] < 12 || (v[0] == 12 && v[1] < 1))))
    return NVJPEG_STATUS_INVALID_PARAMETER;
  *handle = calloc(1, sizeof **handle);
  (*handle)->backend = backend;
  (*handle)->interpolate = interpolate;
  return NVJPEG_STATUS_SUCCESS;
}

nvjpegStatus_t nvjpegDestroy(nvjpegHandle_t handle) {
  free(handle);
  return NVJPEG_STATUS_SUCCESS;
}

nvjpegStatus_t nvjpegJpegStateCreate(nvjpegHandle_t handle, nvjpegJpegState_t *state) {
  if (!handle)
    return NVJPEG_STATUS_INVALID_PARAMETER;
  *state = calloc(1, sizeof **state);
  return NVJPEG_STATUS_SUCCESS;
}

nvjpegStatus_t nvjpegJpegStateDestroy(nvjpegJpegState_t state) {
  free(state);
  return NVJPEG_STATUS_SUCCESS;
}

nvjpegStatus_t nvjpegDecodeBatchedInitialize(nvjpegHandle_t handle, nvjpegJpegState_t state,
                                             int batch_size, int max_cpu_threads,
                                             nvjpegOutputFormat_t output_format) {
  if (!handle || !state || batch_size < 1 || max_cpu_threads < 1)
    return NVJPEG_STATUS_INVALID_PARAMETER;
  state->batch_size = batch_size;
  state->format = output_format;
  return NVJPEG_STATUS_SUCCESS;
}

struct failure {
  struct jpeg_error_mgr mgr;
  jmp_buf jump;
};

static void on_error(j_common_ptr cinfo) { longjmp(((struct failure *)cinfo->err)->jump, 1); }

static void quiet(j_common_ptr cinfo, int level) { (void)cinfo, (void)level; }

/* Reads a stream's header: its size; false if libjpeg cannot. */
static bool header(const unsigned char *data, size_t len, unsigned *w, unsigned *h) {
  struct jpeg_decompress_struct cinfo;
  struct failure f;
  cinfo.err = jpeg_std_error(&f.mgr);
  f.mgr.error_exit = on_error;
  if (setjmp(f.jump)) {
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, (unsigned long)len);
  bool ok = jpeg_read_header(&cinfo, TRUE) == JPEG_HEADER_OK;
  *w = cinfo.image_width;
  *h = cinfo.image_height;
  jpeg_destroy_decompress(&cinfo);
  return ok;
}

/* Decodes as the GPU would: into interleaved RGB rows `pitch` apart. Damage is decoded
 * through (libjpeg's grey), as a GPU decoder does without complaint. */
static void sim_decode_one(const struct sim_image *im) {
  struct jpeg_decompress_struct cinfo;
  struct failure f;
  cinfo.err = jpeg_std_error(&f.mgr);
  f.mgr.error_exit = on_error;
  f.mgr.emit_message = quiet;
  if (setjmp(f.jump)) {
    jpeg_destroy_decompress(&cinfo);
    sim_fail("nvjpegDecodeBatched: a stream libjpeg cannot decode");
    return;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, im->data, (unsigned long)im->length);
  jpeg_read_header(&cinfo, TRUE);
  cinfo.out_color_space = JCS_RGB;
  cinfo.dct_method = JDCT_ISLOW;
  cinfo.do_fancy_upsampling = im->interpolate;
  jpeg_start_decompress(&cinfo);
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = im->dst + cinfo.output_scanline * im->pitch;
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
}

nvjpegStatus_t nvjpegDecodeBatched(nvjpegHandle_t handle, nvjpegJpegState_t state,
                                   const unsigned char *const *data, const size_t *lengths,
                                   nvjpegImage_t *destinations, cudaStream_t stream) {
  const char *fail = getenv("SIM_NVJPEG_FAIL");
  if (fail && *fail == '1')
    return NVJPEG_STATUS_EXECUTION_FAILED;
  if (!handle || !state || state->batch_size < 1) {
    sim_fail("nvjpegDecodeBatched before nvjpegDecodeBatchedInitialize");
    return NVJPEG_STATUS_NOT_INITIALIZED;
  }
  if (state->format != NVJPEG_OUTPUT_RGBI) {
    sim_fail("nvjpegDecodeBatched: the simulator decodes RGBI only");
    return NVJPEG_STATUS_INVALID_PARAMETER;
  }
  size_t n = (size_t)state->batch_size;
  struct sim_image *images = malloc(n * sizeof *images);
  for (size_t i = 0; i < n; i++) {
    unsigned w, h;
    if (!header(data[i], lengths[i], &w, &h)) {
      free(images);
      return NVJPEG_STATUS_BAD_JPEG;
    }
    images[i] = (struct sim_image){data[i], lengths[i], destinations[i].channel[0],
                                   destinations[i].pitch[0], handle->interpolate};
    if (images[i].pitch < (size_t)w * 3 ||
        !sim_device_range(images[i].dst, images[i].pitch * (h - 1) + (size_t)w * 3)) {
      sim_fail("nvjpegDecodeBatched: a destination outside device memory or too narrow");
      free(images);
      return NVJPEG_STATUS_INVALID_PARAMETER;
    }
  }
  sim_enqueue_decode(stream, images, n, sim_decode_one);
  free(images);
  return NVJPEG_STATUS_SUCCESS;
}
#endif
