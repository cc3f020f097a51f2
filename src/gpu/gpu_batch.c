/* The batch iterator with device CUDA: patches assembled in GPU memory from tiles nvJPEG
 * decodes there.
 *
 * A batch is made by one host pass (items of the iterator's task group, run by at most
 * num_workers pool tasks, when num_workers > 0; else in the consumer's thread): a first
 * item, one per chunk of tiles, and a last one. A chunk that must wait for the GPU to finish
 * the one before does not wait: its item ends and the pass is queued again (cudaEventQuery
 * tells when), so the thread is given back meanwhile. Everything it asks of the GPU is queued
 * on the batch's stream:
 *  1. Patches wholly inside the level are the GPU's. The tiles they cover (each once per
 *     batch) are read from the file into pinned host memory, made whole JPEG streams (the
 *     level's JPEGTables spliced in), checked to be streams nvJPEG decodes as the CPU path
 *     does (gpu/jpeg_input.h), and decoded by nvJPEG's batched decoder into a device buffer of
 *     tiles; the part of each tile a patch needs is then copied into the patch
 *     (cudaMemcpy2DAsync). With more tiles than the tile buffer holds, this goes in chunks.
 *     A tile that the slot last to decode a chunk (the iterator's lender) still holds is not
 *     read and decoded again but copied from that slot's tile buffer on the GPU, so a tile
 *     shared by batches in flight is decoded once, with no device memory beyond the slots'.
 *  2. Every other patch (touching the level's edge or beyond, or needing a tile that is
 *     missing, unreadable, of another codec, or that nvJPEG should not or could not decode)
 *     is painted on the CPU exactly as a CPU batch (region.c) into pinned host memory and
 *     copied to its place asynchronously. So fill, alpha and errors are the CPU path's, and a
 *     bad tile fails its batch with the CPU's message.
 *  3. An event recorded after the batch's work marks it done; tessera_batch_iter_next waits
 *     for it, so a batch handed out is complete. prefetch_factor batches are in preparation
 *     beyond it (even without workers: the GPU works while the consumer does).
 * Batch buffers are recycled; releasing one records an event on the consumer's stream that
 * the next batch written there waits for. Channels 4: patches are assembled as RGB, widened
 * with one strided copy and given opaque alpha with one strided set (both on the GPU).
 *
 * Over 800 lines: the host pass's steps, the slots whose buffers they fill and the lending of
 * tiles between slots all work on struct gslot, which stays private to this file. */
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "batch/engine.h"
#include "error.h"
#include "gpu/cuda_loader.h"
#include "gpu/jpeg_input.h"
#include "gpu/nvjpeg_decoder.h"
#include "pool.h"
#include "source/tile_source.h"
#include "tile.h"

size_t tsr_gpu_tile_budget = (size_t)256 << 20;

/* One patch that needs a tile. */
struct pair {
  uint64_t tile;
  uint32_t patch;
};

/* A batch buffer. Apart from base and todo, it belongs to the thread making its host pass,
 * and then (read-only) to the consumer holding the batch. */
struct gslot {
  struct tsr_batch_slot base; /* first */
  struct gslot *todo;         /* host passes to make; guarded by the iterator's lock */
  uint8_t *dev;               /* the batch: batch_bytes (batch_cap patches) of device memory */
  uint8_t *dev_rgb;           /* channels 4: the GPU's patches as RGB first (device); else NULL */
  uint8_t *tiles;             /* tile_cap decoded tiles (device) */
  uint8_t *host;              /* batch_bytes of pinned memory for patches painted on the CPU */
  uint8_t *staging;           /* pinned: whole JPEG streams of the chunk being decoded */
  size_t staging_cap;
  uint64_t *indices;
  struct tsr_canvas *canvases;        /* batch_cap */
  const struct tsr_canvas **painting; /* batch_cap: the canvases one CPU tile paints */
  bool *on_cpu;                       /* batch_cap */
  struct pair *pairs;
  size_t pairs_cap;
  /* tile_cap each: the chunk's tiles and what nvJPEG is given. */
  uint64_t *chunk_tiles;
  size_t *chunk_at; /* where each tile's stream starts in staging */
  int *chunk_index; /* its place in the tile buffer, or -1: the CPU's */
  const unsigned char **data;
  size_t *lengths;
  nvjpegImage_t *images;
  nvjpegJpegState_t state;
  int initialized;      /* the batch size `state` was initialized for; 0: none */
  cudaStream_t stream;  /* where the batch's work is queued (the batch's `stream`) */
  cudaEvent_t done;     /* recorded after the batch's work */
  cudaEvent_t released; /* recorded on the consumer's stream at release */
  cudaEvent_t lent;     /* recorded on a lender's stream after its tiles were copied here */
  cudaEvent_t mark;     /* recorded here before tiles are copied into `tiles` from elsewhere */
  bool wait_released;   /* the next batch made here must wait for `released` */
  /* The host pass's progress, from one of its items to the next. */
  size_t npairs, next_pair; /* the GPU's (tile, patch) pairs; the next chunk's first */
  bool gpu_patches;         /* some patches are the GPU's */
  bool started;             /* the pass's first step is done */
  bool chunk_queued;        /* `done` was recorded after a chunk the next one must wait for */
  /* The chunk whose tiles `tiles` holds: chunk_tiles[0 .. held) at chunk_index (>= 0), which
   * later batches may copy rather than decode while this slot is the iterator's lender.
   * Written by the host pass only while the slot is not the lender; guarded by the iterator's
   * lock. */
  size_t held;
};

/* The back end's state: set at creation, then only read, but for the queue of host passes. */
struct gpu_iter {
  const struct tsr_batch_plan *L; /* the engine's */
  const struct tsr_cuda *cuda;
  struct tsr_nvjpeg_decoder *decoder;
  bool gpu_level;                 /* the level's tiles may go to nvJPEG */
  size_t tile_bytes;              /* a decoded tile: tile_w x tile_h x 3 */
  size_t tile_cap;                /* tiles the tile buffer holds; 0 when !gpu_level */
  struct gslot *todo, *todo_tail; /* slots waiting for their host pass, in batch order;
                                     guarded by the iterator's lock */
  pthread_mutex_t *lock;          /* the iterator's */
  /* The slot whose tile buffer last received a decoded chunk: a tile that a chunk of another
   * batch needs and that it holds is copied from there on the GPU instead of being read and
   * decoded again (a tile shared by batches in flight is decoded once). Guarded by lock. */
  struct gslot *lender;
};

/* ---- CUDA helpers ---- */

static tessera_status cuda_failed(const struct tsr_cuda *c, cudaError_t e, const char *what) {
  const char *text = c->rt.cudaGetErrorString(e);
  return tsr_error(e == cudaErrorMemoryAllocation ? TESSERA_E_NOMEM : TESSERA_E_IO,
                   "CUDA: %s failed: %s (error %d)", what, text ? text : "unknown error", (int)e);
}

#define CUDA_TRY(it, call, what)                                                                   \
  do {                                                                                             \
    cudaError_t e_ = (call);                                                                       \
    if (e_ != cudaSuccess)                                                                         \
      return cuda_failed((it)->cuda, e_, what);                                                    \
  } while (0)

/* The consumer's thread may have another device current: set ours, and put theirs back. */
struct device_scope {
  int previous;
};

static void enter_device(const struct gpu_iter *it, struct device_scope *d) {
  d->previous = -1;
  if (it->cuda->rt.cudaGetDevice(&d->previous) != cudaSuccess)
    d->previous = -1;
  if (d->previous != it->L->device_id)
    it->cuda->rt.cudaSetDevice(it->L->device_id);
}

static void leave_device(const struct gpu_iter *it, const struct device_scope *d) {
  if (d->previous >= 0 && d->previous != it->L->device_id)
    it->cuda->rt.cudaSetDevice(d->previous);
}

/* ---- slots ---- */

static void free_slot(struct gpu_iter *it, struct gslot *sl) {
  const struct tsr_cudart *rt = &it->cuda->rt;
  if (sl->wait_released)
    rt->cudaEventSynchronize(sl->released);
  rt->cudaFree(sl->dev);
  rt->cudaFree(sl->dev_rgb);
  rt->cudaFree(sl->tiles);
  rt->cudaFreeHost(sl->host);
  rt->cudaFreeHost(sl->staging);
  if (sl->done)
    rt->cudaEventDestroy(sl->done);
  if (sl->released)
    rt->cudaEventDestroy(sl->released);
  if (sl->lent)
    rt->cudaEventDestroy(sl->lent);
  if (sl->mark)
    rt->cudaEventDestroy(sl->mark);
  if (sl->state)
    it->cuda->jpeg.nvjpegJpegStateDestroy(sl->state);
  if (sl->stream)
    rt->cudaStreamDestroy(sl->stream);
  tsr_free(sl->indices);
  tsr_free(sl->canvases);
  tsr_free(sl->painting);
  tsr_free(sl->on_cpu);
  tsr_free(sl->pairs);
  tsr_free(sl->chunk_tiles);
  tsr_free(sl->chunk_at);
  tsr_free(sl->chunk_index);
  tsr_free(sl->data);
  tsr_free(sl->lengths);
  tsr_free(sl->images);
  tsr_free(sl);
}

/* Allocates a slot's buffers (device current, lock held). */
static tessera_status fill_slot(struct gpu_iter *it, struct gslot *sl) {
  const struct tsr_cudart *rt = &it->cuda->rt;
  size_t b = it->L->batch_cap, cap = it->tile_cap;
  sl->indices = tsr_malloc(b * sizeof *sl->indices);
  sl->canvases = tsr_malloc(b * sizeof *sl->canvases);
  sl->painting = tsr_malloc(b * sizeof *sl->painting);
  sl->on_cpu = tsr_malloc(b * sizeof *sl->on_cpu);
  if (!sl->indices || !sl->canvases || !sl->painting || !sl->on_cpu)
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a batch");
  /* A stream per batch buffer, so batches in preparation overlap on the GPU. */
  CUDA_TRY(it, rt->cudaStreamCreateWithFlags(&sl->stream, cudaStreamNonBlocking),
           "cudaStreamCreateWithFlags");
  CUDA_TRY(it,
           rt->cudaEventCreateWithFlags(&sl->done, cudaEventDisableTiming | cudaEventBlockingSync),
           "cudaEventCreateWithFlags");
  CUDA_TRY(it, rt->cudaEventCreateWithFlags(&sl->released, cudaEventDisableTiming),
           "cudaEventCreateWithFlags");
  CUDA_TRY(it, rt->cudaEventCreateWithFlags(&sl->lent, cudaEventDisableTiming),
           "cudaEventCreateWithFlags");
  CUDA_TRY(it, rt->cudaEventCreateWithFlags(&sl->mark, cudaEventDisableTiming),
           "cudaEventCreateWithFlags");
  CUDA_TRY(it, rt->cudaMalloc((void **)&sl->dev, it->L->batch_bytes), "cudaMalloc (a batch)");
  if (cap == 0)
    return TESSERA_OK;
  if (it->L->channels == 4)
    CUDA_TRY(it,
             rt->cudaMalloc((void **)&sl->dev_rgb, b * (size_t)it->L->width * it->L->height * 3),
             "cudaMalloc (RGB patches)");
  CUDA_TRY(it, rt->cudaMalloc((void **)&sl->tiles, cap * it->tile_bytes), "cudaMalloc (tiles)");
  sl->chunk_tiles = tsr_malloc(cap * sizeof *sl->chunk_tiles);
  sl->chunk_at = tsr_malloc(cap * sizeof *sl->chunk_at);
  sl->chunk_index = tsr_malloc(cap * sizeof *sl->chunk_index);
  sl->data = tsr_malloc(cap * sizeof *sl->data);
  sl->lengths = tsr_malloc(cap * sizeof *sl->lengths);
  sl->images = tsr_calloc(cap, sizeof *sl->images);
  if (!sl->chunk_tiles || !sl->chunk_at || !sl->chunk_index || !sl->data || !sl->lengths ||
      !sl->images)
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a batch");
  nvjpegStatus_t s = it->cuda->jpeg.nvjpegJpegStateCreate(it->decoder->handle, &sl->state);
  if (s != NVJPEG_STATUS_SUCCESS) {
    sl->state = NULL;
    return tsr_error(TESSERA_E_NOMEM, "nvjpegJpegStateCreate failed: %s (%d)",
                     tsr_nvjpeg_status_name(s), (int)s);
  }
  return TESSERA_OK;
}

/* A new slot (lock held). */
static tessera_status gpu_new_slot(struct tessera_batch_iter *engine, struct tsr_batch_slot **out) {
  struct gpu_iter *it = engine->backend;
  struct gslot *sl = tsr_calloc(1, sizeof *sl);
  if (!sl)
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a batch");
  struct device_scope d;
  enter_device(it, &d);
  tessera_status st = fill_slot(it, sl);
  if (st != TESSERA_OK)
    free_slot(it, sl);
  leave_device(it, &d);
  if (st == TESSERA_OK)
    *out = &sl->base;
  return st;
}

/* ---- one batch's host pass ---- */

static int pair_order(const void *a, const void *b) {
  const struct pair *p = a, *q = b;
  if (p->tile != q->tile)
    return p->tile < q->tile ? -1 : 1;
  return p->patch < q->patch ? -1 : p->patch > q->patch;
}

static bool add_pair(struct gslot *sl, size_t *n, uint64_t tile, uint32_t patch) {
  if (*n == sl->pairs_cap) {
    size_t cap = sl->pairs_cap ? sl->pairs_cap * 2 : 64;
    struct pair *p = tsr_realloc(sl->pairs, cap * sizeof *p);
    if (!p)
      return false;
    sl->pairs = p;
    sl->pairs_cap = cap;
  }
  sl->pairs[(*n)++] = (struct pair){tile, patch};
  return true;
}

/* Adds a (tile, patch) pair for every tile the canvas of patch p covers. */
static bool add_patch_tiles(const struct gpu_iter *it, struct gslot *sl, size_t *n, size_t p) {
  const struct tsr_level *lv = &it->L->s->levels[it->L->level];
  int64_t tx0, ty0, tx1, ty1;
  if (!tsr_canvas_tiles(&sl->canvases[p], lv, &tx0, &ty0, &tx1, &ty1))
    return true;
  for (int64_t ty = ty0; ty <= ty1; ty++)
    for (int64_t tx = tx0; tx <= tx1; tx++)
      if (!add_pair(sl, n, (uint64_t)ty * lv->across + (uint64_t)tx, (uint32_t)p))
        return false;
  return true;
}

/* Makes the pinned staging buffer hold n bytes. Its old contents are no longer needed: the
 * work that read them is done (the batch before finished, or the chunk before is done). */
static tessera_status reserve_staging(struct gpu_iter *it, struct gslot *sl, size_t n) {
  if (n <= sl->staging_cap)
    return TESSERA_OK;
  const struct tsr_cudart *rt = &it->cuda->rt;
  rt->cudaFreeHost(sl->staging);
  sl->staging = NULL;
  sl->staging_cap = 0;
  size_t cap = n + n / 2;
  CUDA_TRY(it, rt->cudaHostAlloc((void **)&sl->staging, cap, cudaHostAllocDefault),
           "cudaHostAlloc (compressed tiles)");
  sl->staging_cap = cap;
  return TESSERA_OK;
}

/* Reads the chunk's tiles not copied from a lender (chunk_index -1) into staging as whole
 * streams; those fit for nvJPEG get a place in the tile buffer (from 0 up: below the places
 * of copied tiles, which count down from k - 1), the others keep -1. Returns how many have a
 * place. */
static tessera_status read_chunk(struct gpu_iter *it, struct gslot *sl, size_t k, size_t *good) {
  const tessera_slide *s = it->L->s;
  const struct tsr_level *lv = &s->levels[it->L->level];
  size_t need = 0;
  for (size_t i = 0; i < k; i++) {
    sl->chunk_at[i] = need;
    /* None to give (too large for a read, say): the CPU gives the tile, or the error. */
    if (sl->chunk_index[i] < 0)
      need += tsr_tile_source_stream_size(s, it->L->level, sl->chunk_tiles[i]);
  }
  tessera_status st = reserve_staging(it, sl, need ? need : 1);
  if (st != TESSERA_OK)
    return st;
  *good = 0;
  for (size_t i = 0; i < k; i++) {
    uint64_t tile = sl->chunk_tiles[i];
    if (sl->chunk_index[i] >= 0) /* copied from a lender */
      continue;
    if (tsr_tile_source_stream_size(s, it->L->level, tile) == 0)
      continue;
    uint8_t *at = sl->staging + sl->chunk_at[i];
    bool missing;
    size_t len;
    /* A tile that cannot be read is left to the CPU, which reports it as every read does. */
    if (tsr_tile_source_stream(s, it->L->level, tile, at, &len, &missing) != TESSERA_OK ||
        missing || len == 0 ||
        !tsr_gpu_jpeg_supported(at, len, lv->tile_w, lv->tile_h, it->decoder->interpolates))
      continue;
    size_t g = (*good)++;
    sl->chunk_index[i] = (int)g;
    sl->data[g] = at;
    sl->lengths[g] = len;
    memset(&sl->images[g], 0, sizeof sl->images[g]);
    sl->images[g].channel[0] = sl->tiles + g * it->tile_bytes;
    sl->images[g].pitch[0] = (size_t)lv->tile_w * 3;
  }
  return TESSERA_OK;
}

/* Queues the copy of tile `slot_index`'s part of patch p into the patch (RGB). */
static tessera_status copy_part(struct gpu_iter *it, struct gslot *sl, uint64_t tile, size_t g,
                                size_t p) {
  const struct tsr_level *lv = &it->L->s->levels[it->L->level];
  const struct tsr_canvas *c = &sl->canvases[p];
  int64_t x0 = (int64_t)(tile % lv->across) * lv->tile_w;
  int64_t y0 = (int64_t)(tile / lv->across) * lv->tile_h;
  int64_t ix0 = x0 > c->lx ? x0 : c->lx, iy0 = y0 > c->ly ? y0 : c->ly;
  int64_t ix1 = x0 + lv->tile_w, iy1 = y0 + lv->tile_h;
  if (ix1 > c->lx + c->width)
    ix1 = c->lx + c->width;
  if (iy1 > c->ly + c->height)
    iy1 = c->ly + c->height;
  if (ix1 <= ix0 || iy1 <= iy0)
    return TESSERA_OK;
  size_t w = (size_t)it->L->width, patch_rgb = w * (size_t)it->L->height * 3;
  uint8_t *base = it->L->channels == 3 ? sl->dev : sl->dev_rgb;
  uint8_t *dst = base + p * patch_rgb + ((size_t)(iy0 - c->ly) * w + (size_t)(ix0 - c->lx)) * 3;
  const uint8_t *src =
      sl->tiles + g * it->tile_bytes + ((size_t)(iy0 - y0) * lv->tile_w + (size_t)(ix0 - x0)) * 3;
  CUDA_TRY(it,
           it->cuda->rt.cudaMemcpy2DAsync(dst, w * 3, src, (size_t)lv->tile_w * 3,
                                          (size_t)(ix1 - ix0) * 3, (size_t)(iy1 - iy0),
                                          cudaMemcpyDeviceToDevice, sl->stream),
           "cudaMemcpy2DAsync (a tile into a patch)");
  return TESSERA_OK;
}

static int tile_order(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

/* The chunk's tiles that the lender holds are copied from its tile buffer into the top places
 * of ours, on the lender's stream (so that its next chunk cannot overwrite them first) after
 * what other batches queued on ours to copy from our buffer (mark); our stream waits for the
 * copies (lent). The other tiles get chunk_index -1, to be read. Lock held. */
static tessera_status borrow(struct gpu_iter *it, struct gslot *sl, size_t k) {
  const struct tsr_cudart *rt = &it->cuda->rt;
  const struct gslot *from = it->lender;
  for (size_t i = 0; i < k; i++)
    sl->chunk_index[i] = -1;
  if (!from || from == sl)
    return TESSERA_OK;
  cudaError_t e = cudaSuccess;
  const char *what = NULL;
  size_t top = k;
  for (size_t i = 0; i < k && e == cudaSuccess; i++) {
    const uint64_t *at =
        bsearch(&sl->chunk_tiles[i], from->chunk_tiles, from->held, sizeof *at, tile_order);
    int g = at ? from->chunk_index[at - from->chunk_tiles] : -1;
    if (g < 0)
      continue;
    if (top == k) {
      what = "cudaEventRecord (before copying tiles from another batch)";
      e = rt->cudaEventRecord(sl->mark, sl->stream);
      if (e == cudaSuccess)
        e = rt->cudaStreamWaitEvent(from->stream, sl->mark, 0);
      if (e != cudaSuccess)
        break;
    }
    what = "cudaMemcpyAsync (a tile decoded for another batch)";
    e = rt->cudaMemcpyAsync(sl->tiles + (top - 1) * it->tile_bytes,
                            from->tiles + (size_t)g * it->tile_bytes, it->tile_bytes,
                            cudaMemcpyDeviceToDevice, from->stream);
    if (e == cudaSuccess)
      sl->chunk_index[i] = (int)--top;
  }
  if (top < k) { /* even after a failure: what was queued is waited for before tiles is reused */
    cudaError_t r = rt->cudaEventRecord(sl->lent, from->stream);
    if (r == cudaSuccess)
      r = rt->cudaStreamWaitEvent(sl->stream, sl->lent, 0);
    if (r != cudaSuccess) {
      rt->cudaStreamSynchronize(from->stream);
      if (e == cudaSuccess) {
        e = r;
        what = "cudaStreamWaitEvent (tiles copied from another batch)";
      }
    }
  }
  return e == cudaSuccess ? TESSERA_OK : cuda_failed(it->cuda, e, what);
}

/* Makes the slot the iterator's lender of the chunk just queued (or, publish false, no longer
 * the lender: its tile buffer is about to change). */
static void lend(struct gpu_iter *it, struct gslot *sl, bool publish, size_t k) {
  pthread_mutex_lock(it->lock);
  if (publish) {
    sl->held = k;
    it->lender = sl;
  } else if (it->lender == sl) {
    it->lender = NULL;
  }
  pthread_mutex_unlock(it->lock);
}

/* The GPU's patches: the tiles of the chunk starting at pair next_pair (pairs sorted) decoded
 * by nvJPEG, or copied from a lender, and copied into them; next_pair moves past the chunk.
 * Patches needing a tile nvJPEG does not get are moved to the CPU. */
static tessera_status decode_chunk(struct gpu_iter *it, struct gslot *sl) {
  const struct tsr_nvjpeg *jp = &it->cuda->jpeg;
  size_t n = sl->npairs, i = sl->next_pair;
  lend(it, sl, false, 0);
  size_t k = 0, end = i;
  while (end < n && k < it->tile_cap) {
    uint64_t tile = sl->pairs[end].tile;
    sl->chunk_tiles[k++] = tile;
    while (end < n && sl->pairs[end].tile == tile)
      end++;
  }
  pthread_mutex_lock(it->lock);
  tessera_status st = borrow(it, sl, k);
  pthread_mutex_unlock(it->lock);
  size_t good = 0;
  if (st == TESSERA_OK)
    st = read_chunk(it, sl, k, &good);
  if (st != TESSERA_OK)
    return st;
  if (good > 0) {
    /* Initialized again when the batch size changes, and after a failure (which nvJPEG's
     * header says the call also resets). */
    nvjpegStatus_t s = NVJPEG_STATUS_SUCCESS;
    if (sl->initialized != (int)good) {
      s = jp->nvjpegDecodeBatchedInitialize(it->decoder->handle, sl->state, (int)good, 1,
                                            NVJPEG_OUTPUT_RGBI);
      sl->initialized = s == NVJPEG_STATUS_SUCCESS ? (int)good : 0;
    }
    if (s == NVJPEG_STATUS_SUCCESS)
      s = jp->nvjpegDecodeBatched(it->decoder->handle, sl->state, sl->data, sl->lengths, sl->images,
                                  sl->stream);
    if (s != NVJPEG_STATUS_SUCCESS) { /* the CPU decodes them instead, and judges them */
      sl->initialized = 0;
      for (size_t t = 0; t < k; t++)
        if (sl->chunk_index[t] < (int)good) /* not one copied from a lender */
          sl->chunk_index[t] = -1;
    }
  }
  bool any = false;
  for (size_t t = 0; t < k && !any; t++)
    any = sl->chunk_index[t] >= 0;
  if (any)
    lend(it, sl, true, k);
  for (size_t t = 0, j = i; t < k; t++) {
    for (; j < end && sl->pairs[j].tile == sl->chunk_tiles[t]; j++) {
      uint32_t p = sl->pairs[j].patch;
      if (sl->chunk_index[t] < 0)
        sl->on_cpu[p] = true;
      else if (!sl->on_cpu[p] && (st = copy_part(it, sl, sl->chunk_tiles[t],
                                                 (size_t)sl->chunk_index[t], p)) != TESSERA_OK)
        return st;
    }
  }
  sl->next_pair = end;
  return TESSERA_OK;
}

/* Channels 4: the RGB patches widened to RGBA, alpha 255 (the CPU's patches come after). */
static tessera_status widen(struct gpu_iter *it, struct gslot *sl, size_t count) {
  const struct tsr_cudart *rt = &it->cuda->rt;
  size_t pixels = count * (size_t)it->L->width * (size_t)it->L->height;
  CUDA_TRY(it,
           rt->cudaMemcpy2DAsync(sl->dev, 4, sl->dev_rgb, 3, 3, pixels, cudaMemcpyDeviceToDevice,
                                 sl->stream),
           "cudaMemcpy2DAsync (RGB to RGBA)");
  CUDA_TRY(it, rt->cudaMemset2DAsync(sl->dev + 3, 4, 255, 1, pixels, sl->stream),
           "cudaMemset2DAsync (alpha)");
  return TESSERA_OK;
}

/* The CPU's patches: painted as a CPU batch paints them, each tile decoded once for all the
 * patches that need it (with by_patch, each patch's tiles one after another), then copied to
 * their places (consecutive patches in one copy). */
static tessera_status paint_on_cpu(struct gpu_iter *it, struct gslot *sl, size_t count) {
  const struct tsr_cudart *rt = &it->cuda->rt;
  const struct tsr_level *lv = &it->L->s->levels[it->L->level];
  size_t pb = it->L->patch_bytes, n = 0, m = 0;
  bool any = false;
  for (size_t p = 0; p < count && !any; p++)
    any = sl->on_cpu[p];
  if (!any)
    return TESSERA_OK;
  if (!sl->host)
    CUDA_TRY(it, rt->cudaHostAlloc((void **)&sl->host, it->L->batch_bytes, cudaHostAllocDefault),
             "cudaHostAlloc (patches painted on the CPU)");
  for (size_t p = 0; p < count; p++) {
    if (!sl->on_cpu[p])
      continue;
    struct tsr_canvas *c = &sl->canvases[p];
    c->dst = sl->host + p * pb;
    uint64_t index;
    if (!tsr_batch_patch(it->L, sl->base.pub.number, p, c->dst, c, &index)) {
      tsr_canvas_fill(c);
      continue;
    }
    if (!tsr_canvas_fill_outside(c, lv))
      continue;
    if (it->L->by_patch)
      sl->painting[m++] = c; /* tiles too small to list: painted patch by patch below */
    else if (!add_patch_tiles(it, sl, &n, p))
      return tsr_error(TESSERA_E_NOMEM, "out of memory scheduling a batch");
  }
  if (n > 1)
    qsort(sl->pairs, n, sizeof *sl->pairs, pair_order);
  struct tsr_tile_buffers *b = tsr_tile_buffers_get();
  if (!b)
    return tsr_error(TESSERA_E_NOMEM, "out of memory for tile buffers");
  tessera_status st = TESSERA_OK;
  for (size_t i = 0; i < m && st == TESSERA_OK; i++)
    st = tsr_paint_canvas(it->L->s, it->L->level, sl->painting[i], b);
  for (size_t i = 0; i < n && st == TESSERA_OK;) {
    size_t k = 0;
    uint64_t tile = sl->pairs[i].tile;
    for (; i < n && sl->pairs[i].tile == tile; i++)
      sl->painting[k++] = &sl->canvases[sl->pairs[i].patch];
    st = tsr_paint_tile(it->L->s, it->L->level, tile, sl->painting, k, b);
  }
  tsr_tile_buffers_trim(b);
  if (st != TESSERA_OK)
    return st;
  for (size_t p = 0; p < count;) {
    if (!sl->on_cpu[p]) {
      p++;
      continue;
    }
    size_t q = p;
    while (q < count && sl->on_cpu[q])
      q++;
    CUDA_TRY(it,
             rt->cudaMemcpyAsync(sl->dev + p * pb, sl->host + p * pb, (q - p) * pb,
                                 cudaMemcpyHostToDevice, sl->stream),
             "cudaMemcpyAsync (patches painted on the CPU)");
    p = q;
  }
  return TESSERA_OK;
}

/* The first step of batch sl->base.pub.number's host pass: its patches laid out, the GPU's
 * tile pairs listed (device current). */
static tessera_status begin_pass(struct gpu_iter *it, struct gslot *sl) {
  const struct tsr_level *lv = &it->L->s->levels[it->L->level];
  size_t count = sl->base.pub.count, n = 0;
  sl->npairs = sl->next_pair = 0;
  sl->gpu_patches = false;
  if (sl->wait_released) {
    CUDA_TRY(it, it->cuda->rt.cudaStreamWaitEvent(sl->stream, sl->released, 0),
             "cudaStreamWaitEvent");
    sl->wait_released = false;
  }
  for (size_t p = 0; p < count; p++) {
    struct tsr_canvas *c = &sl->canvases[p];
    bool near = tsr_batch_patch(it->L, sl->base.pub.number, p, NULL, c, &sl->indices[p]);
    bool inside = near && it->gpu_level && c->lx >= 0 && c->ly >= 0 &&
                  c->lx + c->width <= lv->width && c->ly + c->height <= lv->height;
    sl->on_cpu[p] = !inside;
    if (inside && !add_patch_tiles(it, sl, &n, p))
      return tsr_error(TESSERA_E_NOMEM, "out of memory scheduling a batch");
    sl->gpu_patches |= inside;
  }
  if (n > 1)
    qsort(sl->pairs, n, sizeof *sl->pairs, pair_order);
  sl->npairs = n;
  return TESSERA_OK;
}

/* The last step of the host pass (st: how the steps before went): the CPU's patches, then
 * `done` recorded (or, if that cannot be, everything queued waited for), so the slot is never
 * reused under the GPU's feet. */
static tessera_status end_pass(struct gpu_iter *it, struct gslot *sl, tessera_status st) {
  if (st == TESSERA_OK && sl->gpu_patches && it->L->channels == 4)
    st = widen(it, sl, sl->base.pub.count);
  if (st == TESSERA_OK)
    st = paint_on_cpu(it, sl, sl->base.pub.count);
  cudaError_t e = it->cuda->rt.cudaEventRecord(sl->done, sl->stream);
  if (e != cudaSuccess) {
    tessera_status recorded = cuda_failed(it->cuda, e, "cudaEventRecord");
    if (st == TESSERA_OK)
      st = recorded;
    it->cuda->rt.cudaStreamSynchronize(sl->stream);
  }
  return st;
}

/* One work item of the host pass: its first step, one chunk, or its last step. A chunk after
 * the first reuses staging and the tile buffer, so it waits until the GPU is done with the
 * chunk before (`done`, recorded after it); until then the item ends unfinished and the pass
 * is queued again, so the worker gives its thread back meanwhile. Returns whether the pass is
 * finished, with its status in *st. */
static bool pass_step(struct gpu_iter *it, struct gslot *sl, bool alone, tessera_status *st) {
  const struct tsr_cudart *rt = &it->cuda->rt;
  *st = TESSERA_OK;
  if (!sl->started) {
    sl->started = true;
    sl->chunk_queued = false;
    *st = begin_pass(it, sl);
  } else if (sl->chunk_queued) {
    cudaError_t e = rt->cudaEventQuery(sl->done);
    /* With no other pass queued: the consumer (no workers) has nothing else to do here and
     * waits, as it would for the batch; a pool task lets other threads run first. */
    if (e == cudaErrorNotReady && alone && it->L->workers == 0)
      e = rt->cudaEventSynchronize(sl->done);
    else if (e == cudaErrorNotReady && alone)
      sched_yield();
    if (e == cudaErrorNotReady)
      return false;
    sl->chunk_queued = false;
    if (e != cudaSuccess)
      *st = cuda_failed(it->cuda, e, "cudaEventQuery");
  }
  if (*st == TESSERA_OK && sl->next_pair < sl->npairs) {
    *st = decode_chunk(it, sl);
    if (*st == TESSERA_OK && sl->next_pair < sl->npairs) {
      cudaError_t e = rt->cudaEventRecord(sl->done, sl->stream);
      if (e == cudaSuccess) {
        sl->chunk_queued = true;
        return false;
      }
      *st = cuda_failed(it->cuda, e, "cudaEventRecord");
    }
  }
  sl->started = false;
  *st = end_pass(it, sl, *st);
  return true;
}

/* ---- the back end's operations ---- */

static tessera_status gpu_init(struct tessera_batch_iter *engine) {
  const struct tsr_batch_plan *L = &engine->L;
  const struct tsr_cuda *cuda;
  tessera_status st = tsr_cuda_load(&cuda);
  if (st == TESSERA_OK && cuda->generation != tsr_pool_generation())
    st = tsr_error(TESSERA_E_UNSUPPORTED,
                   "CUDA was started in this process's parent before it forked, and CUDA cannot "
                   "be used in such a child: make CUDA iterators in processes started afresh "
                   "(multiprocessing's 'spawn'), or start CUDA only after forking");
  if (st == TESSERA_OK &&
      (L->device_id >= cuda->device_count || L->device_id >= TSR_GPU_MAX_DEVICES))
    st = tsr_error(TESSERA_E_ARGUMENT, "device_id %d: there are %d CUDA devices (0 .. %d)",
                   L->device_id, cuda->device_count, cuda->device_count - 1);
  if (st != TESSERA_OK)
    return st;
  struct gpu_iter *it = tsr_calloc(1, sizeof *it);
  if (!it)
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a batch iterator");
  engine->backend = it;
  it->L = L;
  it->lock = &engine->lock;
  it->cuda = cuda;
  struct device_scope d;
  enter_device(it, &d);
  st = tsr_nvjpeg_decoder_get(cuda, L->device_id, &it->decoder);
  leave_device(it, &d);
  if (st != TESSERA_OK)
    return st;
  const struct tsr_level *lv = &L->s->levels[L->level];
  size_t tile_bytes;
  /* Tiles too small to schedule one by one are too small for nvJPEG's batches too. */
  it->gpu_level = !L->by_patch && tsr_gpu_level_decodable(lv) &&
                  tsr_mul3(lv->tile_w, lv->tile_h, 3, &tile_bytes) &&
                  tile_bytes <= L->s->limits.max_decoded_tile_bytes;
  if (it->gpu_level) {
    it->tile_bytes = tile_bytes;
    size_t per_patch = (size_t)((L->width + lv->tile_w - 1) / lv->tile_w + 1) *
                       (size_t)((L->height + lv->tile_h - 1) / lv->tile_h + 1);
    size_t most;
    if (!tsr_mul2(per_patch, L->batch_cap, &most) || most > lv->ntiles)
      most = (size_t)lv->ntiles;
    size_t budget = tsr_gpu_tile_budget / tile_bytes;
    it->tile_cap = most < budget ? most : budget;
    if (it->tile_cap == 0)
      it->tile_cap = 1;
  }
  return TESSERA_OK;
}

/* Queues the rest of the slot's host pass, after the passes queued before (lock held). */
static void queue_pass(struct gpu_iter *it, struct gslot *sl) {
  sl->todo = NULL;
  if (it->todo_tail)
    it->todo_tail->todo = sl;
  else
    it->todo = sl;
  it->todo_tail = sl;
}

/* Queues the slot's host pass, made by a worker or the consumer. */
static tessera_status gpu_schedule(struct tessera_batch_iter *engine, struct tsr_batch_slot *base) {
  struct gpu_iter *it = engine->backend;
  struct gslot *sl = (struct gslot *)base;
  base->pub.data = sl->dev;
  base->pub.indices = sl->indices;
  base->pub.device = TESSERA_DEVICE_CUDA;
  base->pub.device_id = it->L->device_id;
  base->pub.stream = sl->stream;
  base->pub.consumer_stream = NULL;
  base->pending = 1;
  sl->started = false;
  queue_pass(it, sl);
  return TESSERA_OK;
}

static void *gpu_pop(struct tessera_batch_iter *engine) {
  struct gpu_iter *it = engine->backend;
  struct gslot *sl = it->todo;
  if (sl && !(it->todo = sl->todo))
    it->todo_tail = NULL;
  return sl;
}

static void gpu_run(struct tessera_batch_iter *engine, void *item) {
  struct gpu_iter *it = engine->backend;
  struct gslot *sl = item;
  struct device_scope d;
  pthread_mutex_lock(&engine->lock);
  bool alone = it->todo == NULL;
  pthread_mutex_unlock(&engine->lock);
  enter_device(it, &d);
  tessera_status st;
  bool finished = pass_step(it, sl, alone, &st);
  leave_device(it, &d);
  pthread_mutex_lock(&engine->lock);
  if (finished)
    tsr_batch_done(engine, &sl->base, st);
  else
    queue_pass(it, sl);
}

static bool gpu_queued(const struct tessera_batch_iter *engine) {
  const struct gpu_iter *it = engine->backend;
  return it->todo != NULL;
}

static void gpu_drop(struct tessera_batch_iter *engine) {
  struct gpu_iter *it = engine->backend;
  it->todo = it->todo_tail = NULL;
}

/* The batch is complete when its `done` event is. */
static tessera_status gpu_complete(struct tessera_batch_iter *engine, struct tsr_batch_slot *base) {
  struct gpu_iter *it = engine->backend;
  struct gslot *sl = (struct gslot *)base;
  struct device_scope d;
  enter_device(it, &d);
  cudaError_t e = it->cuda->rt.cudaEventSynchronize(sl->done);
  leave_device(it, &d);
  return e == cudaSuccess ? TESSERA_OK : cuda_failed(it->cuda, e, "cudaEventSynchronize");
}

static void gpu_released(struct tessera_batch_iter *engine, struct tsr_batch_slot *base) {
  struct gpu_iter *it = engine->backend;
  struct gslot *sl = (struct gslot *)base;
  cudaStream_t consumer = (cudaStream_t)base->pub.consumer_stream;
  struct device_scope d;
  enter_device(it, &d);
  /* The consumer's queued work must read the batch before anything overwrites it. */
  sl->wait_released = it->cuda->rt.cudaEventRecord(sl->released, consumer) == cudaSuccess;
  if (!sl->wait_released) /* then wait for all of the device's work before reuse */
    it->cuda->rt.cudaStreamSynchronize(consumer);
  leave_device(it, &d);
}

static tessera_status gpu_copy_to_host(struct tessera_batch_iter *engine,
                                       const struct tsr_batch_slot *sl, void *dst) {
  struct gpu_iter *it = engine->backend;
  const tessera_batch *batch = &sl->pub;
  if (it->L->generation != tsr_pool_generation())
    return tsr_error(TESSERA_E_ARGUMENT, "the batch was made before fork(); CUDA memory of the "
                                         "parent cannot be read in the child");
  /* On the consumer's stream, after the work it queued (which may have changed the batch). */
  cudaStream_t stream = (cudaStream_t)batch->consumer_stream;
  struct device_scope d;
  enter_device(it, &d);
  cudaError_t e =
      it->cuda->rt.cudaMemcpyAsync(dst, batch->data, batch->size, cudaMemcpyDeviceToHost, stream);
  if (e == cudaSuccess)
    e = it->cuda->rt.cudaStreamSynchronize(stream);
  leave_device(it, &d);
  return e == cudaSuccess ? TESSERA_OK : cuda_failed(it->cuda, e, "copying a batch to the host");
}

static const char *gpu_decoder(const struct tessera_batch_iter *engine) {
  const struct gpu_iter *it = engine->backend;
  return it->gpu_level ? it->decoder->name : "cpu+copy";
}

static void gpu_free_slot(struct tessera_batch_iter *engine, struct tsr_batch_slot *base) {
  struct gpu_iter *it = engine->backend;
  struct gslot *sl = (struct gslot *)base;
  struct device_scope d;
  enter_device(it, &d);
  if (sl->stream) /* no work may still use what is freed */
    it->cuda->rt.cudaStreamSynchronize(sl->stream);
  free_slot(it, sl);
  leave_device(it, &d);
}

static void gpu_free(struct tessera_batch_iter *engine) { tsr_free(engine->backend); }

const struct tsr_batch_backend tsr_gpu_batch_backend = {
    .ahead_without_workers = true,
    .init = gpu_init,
    .new_slot = gpu_new_slot,
    .schedule = gpu_schedule,
    .pop = gpu_pop,
    .run = gpu_run,
    .queued = gpu_queued,
    .drop = gpu_drop,
    .complete = gpu_complete,
    .released = gpu_released,
    .copy_to_host = gpu_copy_to_host,
    .decoder = gpu_decoder,
    .free_slot = gpu_free_slot,
    .free = gpu_free,
};
