/* The CUDA back end of the batch engine (batch/engine.h): patches assembled in GPU memory from
 * tiles nvJPEG decodes there.
 *
 * Work is scheduled by tile, as on the CPU: scheduling a batch lays out its patches and asks
 * the queue of tile jobs shared by the batches in flight (batch/tile_jobs.h) for each tile they
 * overlap, so a tile needed by patches of several batches is one job, read once. A work item
 * takes up to `cap` queued jobs (a chunk) and a lane: the device buffer of decoded tiles,
 * pinned staging for their streams, nvJPEG's state, a CUDA stream and an event, which items use
 * one after another. Everything the item asks of the GPU is queued on the lane's stream:
 *  1. The chunk's tiles that the lane itself or another idle lane still holds from an earlier
 *     chunk are not read again but copied from where they are (another lane is pinned
 *     meanwhile, and its stream then waits for the copies, so that its next chunk cannot
 *     overwrite them first). Lanes are taken least recently used first, so the lanes, one
 *     per batch in flight, keep the tiles of the latest chunks for the batches that follow.
 *  2. The other tiles are read from the file into staging as whole JPEG streams (the level's
 *     JPEGTables spliced in), checked to be streams nvJPEG decodes as the CPU path does
 *     (gpu/jpeg_input.h), and decoded by nvJPEG's batched decoder into the tile buffer
 *     (channels 4: then widened to RGBA, alpha 255, into a second buffer).
 *  3. The part of each tile every destination patch needs is copied into it
 *     (cudaMemcpy2DAsync), whatever batch it belongs to.
 *  4. Tiles nvJPEG does not get (a level of another codec or photometric, a missing, unreadable
 *     or unusual tile, nvJPEG failing) are painted on the CPU exactly as a CPU batch paints
 *     them (tsr_paint_tile: the decoded-tile cache first) into the batch's pinned host copy,
 *     and each destination's part is copied to the device. So alpha and errors are the CPU
 *     path's, and a bad tile fails the batches that need it with the CPU's message.
 * Fill (the parts of patches outside the level) is painted on the CPU when the batch is
 * scheduled and copied on the batch's stream, before an event (`ready`) that lanes wait for
 * before writing into the batch; the batch's stream in turn waits for every lane's event after
 * it wrote there, and `done`, recorded there by the consumer once the last job is done, is
 * waited for before the batch is handed out. A worker never waits for the GPU: a lane whose staging
 * the GPU may still read is not taken (when none is free, the item ends and the thread is given
 * back); only the consumer, running items itself, waits for one.
 *
 * Locking: the iterator's lock guards the queue of jobs and the lanes' fields marked so; a lane
 * taken by a work item (busy) is otherwise that item's alone; a slot's buffers belong to the
 * thread scheduling it, then to the items writing their disjoint parts, then (read-only) to
 * the consumer holding the batch.
 *
 * Over 800 lines: slots, lanes and the work item all work on struct gslot and struct lane,
 * which stay private to this file rather than become a header's for one user. */
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "batch/engine.h"
#include "batch/tile_jobs.h"
#include "error.h"
#include "gpu/cuda_loader.h"
#include "gpu/jpeg_input.h"
#include "gpu/nvjpeg_decoder.h"
#include "pool.h"
#include "source/tile_source.h"
#include "tile.h"

size_t tsr_gpu_tile_budget = (size_t)256 << 20;

/* A batch buffer. */
struct gslot {
  struct tsr_batch_slot base;  /* first */
  uint8_t *dev;                /* the batch: batch_bytes (batch_cap patches) of device memory */
  uint8_t *host;               /* batch_bytes pinned: fill and tiles painted on the CPU */
  uint64_t *indices;           /* batch_cap */
  struct tsr_canvas *canvases; /* batch_cap, into host; set when scheduled, then read-only */
  cudaStream_t stream;         /* the batch's `stream`: its fill, then waits for the lanes */
  cudaEvent_t ready;           /* recorded after the fill: lanes write into the batch after it */
  cudaEvent_t done;            /* recorded after everything written into the batch */
  cudaEvent_t released;        /* recorded on the consumer's stream at release */
  /* The next batch made here must wait for `released`: written at release, read when the
   * slot is scheduled again (ordered by the lock, which puts it on the free list between). */
  bool wait_released;
};

/* A decoded tile in a lane's tile buffer. */
struct placed {
  uint64_t tile;
  uint32_t place;
};

/* Where chunks of tiles are decoded, one after another. */
struct lane {
  /* Guarded by the iterator's lock. */
  bool busy;       /* a work item has it */
  unsigned pins;   /* work items copying tiles out of it: it is not taken meanwhile */
  bool in_flight;  /* the GPU may still read its staging, until `event` */
  uint64_t filled; /* the iterator's count of chunks, when its tiles were last used */
  size_t held;     /* holds[0 .. held), by tile: the tiles `tiles` holds, for other items */
  struct placed *holds;
  /* The rest belongs to the work item that has it. */
  cudaStream_t stream;
  cudaEvent_t event; /* recorded after an item's work */
  uint8_t *tiles;    /* cap decoded tiles, RGB (device) */
  uint8_t *rgba;     /* channels 4: the tiles widened to RGBA (device); else NULL */
  uint8_t *staging;  /* pinned: whole JPEG streams of the chunk being decoded */
  size_t staging_cap;
  nvjpegJpegState_t state;
  int initialized; /* the batch size `state` was initialized for; 0: none */
  size_t decoded;  /* holds[0 .. decoded): the item's tiles, to offer once it is done */
  /* cap each: the item's jobs, their status, their place in `tiles` (-1: none), the lane they
   * are copied from instead (or NULL) and their place there, where their stream lies in
   * staging, and what nvJPEG is given. */
  struct tsr_tile_job **jobs;
  tessera_status *status;
  int *place;
  struct lane **from;
  uint32_t *from_place;
  bool *kept; /* places in `tiles` the item copies from rather than decodes into */
  size_t *at;
  const unsigned char **data;
  size_t *lengths;
  nvjpegImage_t *images;
  struct lane **sources; /* the lanes copied from (pinned), nsources of max_lanes */
  size_t nsources;
  struct gslot **touched; /* the slots the item writes into */
  size_t ntouched, touched_cap;
};

/* The back end's state: set at creation, then only read, but where marked. */
struct gpu_iter {
  const struct tsr_batch_plan *L; /* the engine's */
  const struct tsr_cuda *cuda;
  struct tsr_nvjpeg_decoder *decoder;
  bool gpu_level;        /* the level's tiles may go to nvJPEG */
  size_t tile_bytes;     /* a decoded tile: tile_w x tile_h x channels */
  size_t cap;            /* jobs a work item takes at most: tiles a lane's buffer holds */
  size_t max_lanes;      /* ring_size: the device memory of the slots' tile buffers before */
  pthread_mutex_t *lock; /* the iterator's */
  /* Guarded by lock. */
  struct tsr_tile_jobs jobs;
  struct lane **lanes;
  size_t nlanes;
  uint64_t fills; /* chunks done with tiles so far (the clock of `filled`) */
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

/* ---- slots and lanes ---- */

/* Waits for the stream's work, then destroys it (if made). */
static void drop_stream(const struct tsr_cudart *rt, cudaStream_t stream) {
  if (stream) {
    rt->cudaStreamSynchronize(stream);
    rt->cudaStreamDestroy(stream);
  }
}

static void drop_event(const struct tsr_cudart *rt, cudaEvent_t event) {
  if (event)
    rt->cudaEventDestroy(event);
}

static void free_slot(struct gpu_iter *it, struct gslot *sl) {
  const struct tsr_cudart *rt = &it->cuda->rt;
  if (sl->stream) /* no work may still use what is freed */
    rt->cudaStreamSynchronize(sl->stream);
  if (sl->wait_released)
    rt->cudaEventSynchronize(sl->released);
  rt->cudaFree(sl->dev);
  rt->cudaFreeHost(sl->host);
  drop_event(rt, sl->ready);
  drop_event(rt, sl->done);
  drop_event(rt, sl->released);
  drop_stream(rt, sl->stream);
  tsr_free(sl->indices);
  tsr_free(sl->canvases);
  tsr_free(sl);
}

/* Allocates a slot's buffers (device current). */
static tessera_status fill_slot(struct gpu_iter *it, struct gslot *sl) {
  const struct tsr_cudart *rt = &it->cuda->rt;
  sl->indices = tsr_malloc(it->L->batch_cap * sizeof *sl->indices);
  sl->canvases = tsr_malloc(it->L->batch_cap * sizeof *sl->canvases);
  if (!sl->indices || !sl->canvases)
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a batch");
  /* A stream per batch buffer, so batches in preparation overlap on the GPU. */
  CUDA_TRY(it, rt->cudaStreamCreateWithFlags(&sl->stream, cudaStreamNonBlocking),
           "cudaStreamCreateWithFlags");
  CUDA_TRY(it,
           rt->cudaEventCreateWithFlags(&sl->done, cudaEventDisableTiming | cudaEventBlockingSync),
           "cudaEventCreateWithFlags");
  CUDA_TRY(it, rt->cudaEventCreateWithFlags(&sl->ready, cudaEventDisableTiming),
           "cudaEventCreateWithFlags");
  CUDA_TRY(it, rt->cudaEventCreateWithFlags(&sl->released, cudaEventDisableTiming),
           "cudaEventCreateWithFlags");
  CUDA_TRY(it, rt->cudaMalloc((void **)&sl->dev, it->L->batch_bytes), "cudaMalloc (a batch)");
  CUDA_TRY(it, rt->cudaHostAlloc((void **)&sl->host, it->L->batch_bytes, cudaHostAllocDefault),
           "cudaHostAlloc (patches painted on the CPU)");
  return TESSERA_OK;
}

static void free_lane(struct gpu_iter *it, struct lane *l) {
  const struct tsr_cudart *rt = &it->cuda->rt;
  if (l->stream) /* no work may still use what is freed */
    rt->cudaStreamSynchronize(l->stream);
  rt->cudaFree(l->tiles);
  rt->cudaFree(l->rgba);
  rt->cudaFreeHost(l->staging);
  drop_event(rt, l->event);
  if (l->state)
    it->cuda->jpeg.nvjpegJpegStateDestroy(l->state);
  drop_stream(rt, l->stream);
  tsr_free(l->holds);
  tsr_free(l->jobs);
  tsr_free(l->status);
  tsr_free(l->place);
  tsr_free(l->from);
  tsr_free(l->from_place);
  tsr_free(l->kept);
  tsr_free(l->at);
  tsr_free(l->data);
  tsr_free(l->lengths);
  tsr_free(l->images);
  tsr_free(l->sources);
  tsr_free(l->touched);
  tsr_free(l);
}

/* Allocates a lane's buffers (device current). */
static tessera_status fill_lane(struct gpu_iter *it, struct lane *l) {
  const struct tsr_cudart *rt = &it->cuda->rt;
  size_t cap = it->cap;
  l->jobs = tsr_malloc(cap * sizeof *l->jobs);
  l->status = tsr_malloc(cap * sizeof *l->status);
  l->place = tsr_malloc(cap * sizeof *l->place);
  l->from = tsr_malloc(cap * sizeof *l->from);
  l->from_place = tsr_malloc(cap * sizeof *l->from_place);
  l->sources = tsr_malloc(it->max_lanes * sizeof *l->sources);
  if (!l->jobs || !l->status || !l->place || !l->from || !l->from_place || !l->sources)
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a batch");
  CUDA_TRY(it, rt->cudaStreamCreateWithFlags(&l->stream, cudaStreamNonBlocking),
           "cudaStreamCreateWithFlags");
  CUDA_TRY(it, rt->cudaEventCreateWithFlags(&l->event, cudaEventDisableTiming),
           "cudaEventCreateWithFlags");
  if (!it->gpu_level)
    return TESSERA_OK;
  CUDA_TRY(it, rt->cudaMalloc((void **)&l->tiles, cap * it->tile_bytes), "cudaMalloc (tiles)");
  if (it->L->channels == 4)
    CUDA_TRY(it, rt->cudaMalloc((void **)&l->rgba, cap * it->tile_bytes / 3 * 4),
             "cudaMalloc (RGBA tiles)");
  l->holds = tsr_malloc(cap * sizeof *l->holds);
  l->kept = tsr_malloc(cap * sizeof *l->kept);
  l->at = tsr_malloc(cap * sizeof *l->at);
  l->data = tsr_malloc(cap * sizeof *l->data);
  l->lengths = tsr_malloc(cap * sizeof *l->lengths);
  l->images = tsr_calloc(cap, sizeof *l->images);
  if (!l->holds || !l->kept || !l->at || !l->data || !l->lengths || !l->images)
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a batch");
  nvjpegStatus_t s = it->cuda->jpeg.nvjpegJpegStateCreate(it->decoder->handle, &l->state);
  if (s != NVJPEG_STATUS_SUCCESS) {
    l->state = NULL;
    return tsr_error(TESSERA_E_NOMEM, "nvjpegJpegStateCreate failed: %s (%d)",
                     tsr_nvjpeg_status_name(s), (int)s);
  }
  return TESSERA_OK;
}

/* A new slot, and with each of the first slots a lane, so that the device memory of an
 * iterator is made as its first batches are; lanes with no tile buffers (the CPU's tiles) are
 * made all at once (lock held). */
static tessera_status gpu_new_slot(struct tessera_batch_iter *engine, struct tsr_batch_slot **out) {
  struct gpu_iter *it = engine->backend;
  struct gslot *sl = tsr_calloc(1, sizeof *sl);
  if (!sl)
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a batch");
  struct device_scope d;
  enter_device(it, &d);
  tessera_status st = fill_slot(it, sl);
  size_t want = it->gpu_level ? it->nlanes + 1 : it->max_lanes;
  while (st == TESSERA_OK && it->nlanes < want && it->nlanes < it->max_lanes) {
    struct lane *l = tsr_calloc(1, sizeof *l);
    if (!l)
      st = tsr_error(TESSERA_E_NOMEM, "out of memory for a batch");
    else if ((st = fill_lane(it, l)) != TESSERA_OK)
      free_lane(it, l);
    else
      it->lanes[it->nlanes++] = l;
  }
  if (st != TESSERA_OK)
    free_slot(it, sl);
  leave_device(it, &d);
  if (st == TESSERA_OK)
    *out = &sl->base;
  return st;
}

/* ---- copies into a batch ---- */

/* A rectangle in level pixels. */
struct rect {
  int64_t x0, y0, x1, y1;
};

/* Queues on `stream` the copy of the part of patch p within r, from src, where level pixel
 * (sx, sy) lies and rows are pitch bytes apart (channels as the patch). */
static tessera_status copy_part(struct gpu_iter *it, cudaStream_t stream, struct gslot *sl,
                                size_t p, struct rect r, const uint8_t *src, int64_t sx, int64_t sy,
                                size_t pitch, enum cudaMemcpyKind kind) {
  const struct tsr_canvas *c = &sl->canvases[p];
  int64_t x0 = r.x0 > c->lx ? r.x0 : c->lx, y0 = r.y0 > c->ly ? r.y0 : c->ly;
  int64_t x1 = r.x1 < c->lx + c->width ? r.x1 : c->lx + c->width;
  int64_t y1 = r.y1 < c->ly + c->height ? r.y1 : c->ly + c->height;
  if (x1 <= x0 || y1 <= y0)
    return TESSERA_OK;
  size_t ch = c->channels;
  uint8_t *dst = sl->dev + p * it->L->patch_bytes + (size_t)(y0 - c->ly) * c->stride +
                 (size_t)(x0 - c->lx) * ch;
  src += (size_t)(y0 - sy) * pitch + (size_t)(x0 - sx) * ch;
  CUDA_TRY(it,
           it->cuda->rt.cudaMemcpy2DAsync(dst, c->stride, src, pitch, (size_t)(x1 - x0) * ch,
                                          (size_t)(y1 - y0), kind, stream),
           kind == cudaMemcpyHostToDevice ? "cudaMemcpy2DAsync (pixels painted on the CPU)"
                                          : "cudaMemcpy2DAsync (a tile into a patch)");
  return TESSERA_OK;
}

/* Queues on `stream` the copy of the part r of patch p that the CPU painted in host memory. */
static tessera_status copy_painted(struct gpu_iter *it, cudaStream_t stream, struct gslot *sl,
                                   size_t p, struct rect r) {
  const struct tsr_canvas *c = &sl->canvases[p];
  return copy_part(it, stream, sl, p, r, c->dst, c->lx, c->ly, c->stride, cudaMemcpyHostToDevice);
}

/* Queues the copy of patch p's fill (its parts outside the level, painted by
 * tsr_canvas_fill_outside or tsr_canvas_fill) on the slot's stream. `inside`: whether any of
 * it lies inside. */
static tessera_status copy_fill(struct gpu_iter *it, struct gslot *sl, size_t p, bool inside) {
  const struct tsr_canvas *c = &sl->canvases[p];
  const struct tsr_level *lv = &it->L->s->levels[it->L->level];
  int64_t cx1 = c->lx + c->width, cy1 = c->ly + c->height;
  if (!inside)
    return copy_painted(it, sl->stream, sl, p, (struct rect){c->lx, c->ly, cx1, cy1});
  int64_t ix0, iy0, ix1, iy1;
  tsr_level_image(lv, &ix0, &iy0, &ix1, &iy1);
  int64_t x0 = c->lx > ix0 ? c->lx : ix0, y0 = c->ly > iy0 ? c->ly : iy0;
  int64_t x1 = cx1 < ix1 ? cx1 : ix1, y1 = cy1 < iy1 ? cy1 : iy1;
  const struct rect bands[4] = {
      {c->lx, c->ly, cx1, y0}, {c->lx, y1, cx1, cy1}, {c->lx, y0, x0, y1}, {x1, y0, cx1, y1}};
  tessera_status st = TESSERA_OK;
  for (int b = 0; b < 4 && st == TESSERA_OK; b++)
    st = copy_painted(it, sl->stream, sl, p, bands[b]);
  return st;
}

/* ---- scheduling ---- */

/* Lays out the slot's batch: every patch's canvas in host memory, its fill painted and copied
 * to the device, then `ready` recorded; its tiles (or, by_patch, the patch) queued as jobs
 * (lock held). */
static tessera_status gpu_schedule(struct tessera_batch_iter *engine, struct tsr_batch_slot *base) {
  struct gpu_iter *it = engine->backend;
  struct gslot *sl = (struct gslot *)base;
  const struct tsr_level *lv = &it->L->s->levels[it->L->level];
  base->pub.data = sl->dev;
  base->pub.indices = sl->indices;
  base->pub.device = TESSERA_DEVICE_CUDA;
  base->pub.device_id = it->L->device_id;
  base->pub.stream = sl->stream;
  base->pub.consumer_stream = NULL;
  struct device_scope d;
  enter_device(it, &d);
  tessera_status st = TESSERA_OK;
  if (sl->wait_released) {
    cudaError_t e = it->cuda->rt.cudaStreamWaitEvent(sl->stream, sl->released, 0);
    if (e != cudaSuccess)
      st = cuda_failed(it->cuda, e, "cudaStreamWaitEvent");
  }
  for (size_t p = 0; p < base->pub.count && st == TESSERA_OK; p++) {
    struct tsr_canvas *c = &sl->canvases[p];
    uint8_t *host = sl->host + p * it->L->patch_bytes;
    bool near = tsr_batch_patch(it->L, base->pub.number, p, host, c, &sl->indices[p]);
    if (tsr_level_composite(lv)) {
      /* painted on the CPU, patch by patch (by_patch), and copied whole: its fill first, for
       * a patch that lies on none of the level's images */
      bool some = near && tsr_canvas_prepare(it->L->s, it->L->level, c);
      if (!near)
        tsr_canvas_fill(c);
      if ((st = copy_fill(it, sl, p, false)) == TESSERA_OK && some)
        st = tsr_tile_jobs_need_patch(&it->jobs, base, (uint32_t)p);
      continue;
    }
    int64_t ix0, iy0, ix1, iy1;
    tsr_level_image(lv, &ix0, &iy0, &ix1, &iy1);
    bool inside = near && c->lx >= ix0 && c->ly >= iy0 && c->lx + c->width <= ix1 &&
                  c->ly + c->height <= iy1;
    int64_t tx0, ty0, tx1, ty1;
    if (!near)
      tsr_canvas_fill(c);
    if (!inside) {
      bool some = near && tsr_canvas_fill_outside(c, lv);
      if ((st = copy_fill(it, sl, p, some)) != TESSERA_OK || !some)
        continue;
    }
    if (!tsr_canvas_tiles(c, lv, &tx0, &ty0, &tx1, &ty1))
      continue;
    if (it->L->by_patch) {
      st = tsr_tile_jobs_need_patch(&it->jobs, base, (uint32_t)p);
      continue;
    }
    for (int64_t ty = ty0; ty <= ty1 && st == TESSERA_OK; ty++)
      for (int64_t tx = tx0; tx <= tx1 && st == TESSERA_OK; tx++)
        st = tsr_tile_jobs_need_tile(&it->jobs, (uint64_t)ty * lv->across + (uint64_t)tx, base,
                                     (uint32_t)p);
  }
  cudaError_t e = it->cuda->rt.cudaEventRecord(sl->ready, sl->stream);
  if (e != cudaSuccess) { /* lanes then wait for nothing: make the fill complete now */
    it->cuda->rt.cudaStreamSynchronize(sl->stream);
    if (st == TESSERA_OK)
      st = cuda_failed(it->cuda, e, "cudaEventRecord");
  }
  leave_device(it, &d);
  return st;
}

/* ---- a work item: a chunk of jobs in a lane ---- */

static int placed_order(const void *a, const void *b) {
  const struct placed *p = a, *q = b;
  return p->tile < q->tile ? -1 : p->tile > q->tile;
}

/* A lane for the next item (lock held), or NULL when each is busy, pinned or, unless `wait`,
 * still read by the GPU. Prefers one holding no tiles, then the one whose tiles were used
 * longest ago, so that tiles used lately stay to be copied. */
static struct lane *take_lane(struct gpu_iter *it, bool wait) {
  struct lane *best = NULL;
  bool best_ready = false;
  for (size_t i = 0; i < it->nlanes; i++) {
    struct lane *l = it->lanes[i];
    if (l->busy || l->pins > 0)
      continue;
    bool ready = !l->in_flight || it->cuda->rt.cudaEventQuery(l->event) != cudaErrorNotReady;
    if (!ready && !wait)
      continue;
    uint64_t used = l->held ? l->filled + 1 : 0;
    if (!best || (ready && !best_ready) ||
        (ready == best_ready && used < (best->held ? best->filled + 1 : 0))) {
      best = l;
      best_ready = ready;
    }
  }
  if (best)
    best->busy = true;
  return best;
}

/* The lane holding tile, l itself first, and its place there (lock held). */
static struct lane *holder(const struct gpu_iter *it, struct lane *l, uint64_t tile,
                           uint32_t *place) {
  struct placed key = {tile, 0}, *at;
  if (l->held > 0 && (at = bsearch(&key, l->holds, l->held, sizeof key, placed_order)) != NULL) {
    *place = at->place;
    return l;
  }
  for (size_t i = 0; i < it->nlanes; i++) {
    const struct lane *m = it->lanes[i];
    if (m != l && m->held > 0 &&
        (at = bsearch(&key, m->holds, m->held, sizeof key, placed_order)) != NULL) {
      *place = at->place;
      return it->lanes[i];
    }
  }
  return NULL;
}

/* Takes up to cap queued jobs into the lane; those whose tile it holds already are copied
 * from where it is, those whose tile another lane holds from there, and that lane is pinned
 * (lock held). Returns how many. */
static size_t take_jobs(struct gpu_iter *it, struct lane *l) {
  size_t k = 0;
  l->nsources = 0;
  for (struct tsr_tile_job *j; k < it->cap && (j = tsr_tile_jobs_pop(&it->jobs)) != NULL; k++) {
    l->jobs[k] = j;
    l->status[k] = TESSERA_OK;
    l->place[k] = -1;
    l->from[k] = it->gpu_level ? holder(it, l, j->tile, &l->from_place[k]) : NULL;
    struct lane *m = l->from[k];
    size_t s = 0;
    while (m && s < l->nsources && l->sources[s] != m)
      s++;
    if (m && m != l && s == l->nsources) {
      l->sources[l->nsources++] = m;
      m->pins++;
    }
  }
  return k;
}

/* Adds a slot the item writes into (each once). */
static bool touch(struct lane *l, struct gslot *sl) {
  for (size_t i = 0; i < l->ntouched; i++)
    if (l->touched[i] == sl)
      return true;
  if (l->ntouched == l->touched_cap) {
    size_t cap = l->touched_cap ? 2 * l->touched_cap : 8;
    struct gslot **t = tsr_realloc(l->touched, cap * sizeof *t);
    if (!t)
      return false;
    l->touched = t;
    l->touched_cap = cap;
  }
  l->touched[l->ntouched++] = sl;
  return true;
}

/* Makes the pinned staging buffer hold n bytes. Its old contents are no longer needed: the
 * GPU is done reading them (the lane was taken ready, or waited for). */
static tessera_status reserve_staging(struct gpu_iter *it, struct lane *l, size_t n) {
  if (n <= l->staging_cap)
    return TESSERA_OK;
  const struct tsr_cudart *rt = &it->cuda->rt;
  rt->cudaFreeHost(l->staging);
  l->staging = NULL;
  l->staging_cap = 0;
  size_t cap = n + n / 2;
  CUDA_TRY(it, rt->cudaHostAlloc((void **)&l->staging, cap, cudaHostAllocDefault),
           "cudaHostAlloc (compressed tiles)");
  l->staging_cap = cap;
  return TESSERA_OK;
}

/* Reads the chunk's tiles not copied from a lane into staging as whole streams; those fit for
 * nvJPEG get a place in the tile buffer, one the chunk does not copy from. Returns how many
 * have one, and the end of the places given. */
static tessera_status read_tiles(struct gpu_iter *it, struct lane *l, size_t k, size_t *good,
                                 size_t *top) {
  const tessera_slide *s = it->L->s;
  const struct tsr_level *lv = &s->levels[it->L->level];
  size_t need = 0;
  for (size_t t = 0; t < k; t++) {
    l->at[t] = need;
    /* None to give (too large for a read, say): the CPU gives the tile, or the error. */
    if (!l->from[t])
      need += tsr_tile_source_stream_size(s, it->L->level, l->jobs[t]->tile);
  }
  tessera_status st = reserve_staging(it, l, need ? need : 1);
  if (st != TESSERA_OK)
    return st;
  memset(l->kept, 0, it->cap * sizeof *l->kept);
  for (size_t t = 0; t < k; t++)
    if (l->from[t] == l)
      l->kept[l->from_place[t]] = true;
  *good = *top = 0;
  for (size_t t = 0; t < k; t++) {
    uint64_t tile = l->jobs[t]->tile;
    if (l->from[t] || tsr_tile_source_stream_size(s, it->L->level, tile) == 0)
      continue;
    uint8_t *at = l->staging + l->at[t];
    bool missing;
    size_t len;
    /* A tile that cannot be read is left to the CPU, which reports it as every read does. */
    if (tsr_tile_source_stream(s, it->L->level, tile, at, &len, &missing) != TESSERA_OK ||
        missing || len == 0 ||
        !tsr_gpu_jpeg_supported(at, len, lv->tile_w, lv->tile_h, it->decoder->interpolates))
      continue;
    while (l->kept[*top])
      ++*top; /* there is room: k places at most are kept or given */
    size_t g = (*good)++;
    l->place[t] = (int)(*top)++;
    l->data[g] = at;
    l->lengths[g] = len;
    memset(&l->images[g], 0, sizeof l->images[g]);
    l->images[g].channel[0] = l->tiles + (size_t)l->place[t] * it->tile_bytes;
    l->images[g].pitch[0] = (size_t)lv->tile_w * 3;
  }
  return TESSERA_OK;
}

/* nvJPEG decodes the `good` tiles with a place (below top); if it cannot, they go to the CPU.
 * Channels 4: the places below top widened to RGBA, alpha 255 (those kept again, unchanged). */
static tessera_status decode_tiles(struct gpu_iter *it, struct lane *l, size_t k, size_t good,
                                   size_t top) {
  const struct tsr_nvjpeg *jp = &it->cuda->jpeg;
  const struct tsr_cudart *rt = &it->cuda->rt;
  if (good == 0)
    return TESSERA_OK;
  /* Initialized again when the batch size changes, and after a failure (which nvJPEG's
   * header says the call also resets). */
  nvjpegStatus_t s = NVJPEG_STATUS_SUCCESS;
  if (l->initialized != (int)good) {
    s = jp->nvjpegDecodeBatchedInitialize(it->decoder->handle, l->state, (int)good, 1,
                                          NVJPEG_OUTPUT_RGBI);
    l->initialized = s == NVJPEG_STATUS_SUCCESS ? (int)good : 0;
  }
  if (s == NVJPEG_STATUS_SUCCESS)
    s = jp->nvjpegDecodeBatched(it->decoder->handle, l->state, l->data, l->lengths, l->images,
                                l->stream);
  if (s != NVJPEG_STATUS_SUCCESS) { /* the CPU decodes them instead, and judges them */
    l->initialized = 0;
    for (size_t t = 0; t < k; t++)
      l->place[t] = -1;
    return TESSERA_OK;
  }
  if (it->L->channels == 4) {
    size_t pixels = top * (it->tile_bytes / 3);
    CUDA_TRY(it,
             rt->cudaMemcpy2DAsync(l->rgba, 4, l->tiles, 3, 3, pixels, cudaMemcpyDeviceToDevice,
                                   l->stream),
             "cudaMemcpy2DAsync (RGB to RGBA)");
    CUDA_TRY(it, rt->cudaMemset2DAsync(l->rgba + 3, 4, 255, 1, pixels, l->stream),
             "cudaMemset2DAsync (alpha)");
  }
  return TESSERA_OK;
}

/* Queues the copies of job t's tile, decoded at `place` in lane `in`, into its destinations. */
static tessera_status copy_tile(struct gpu_iter *it, struct lane *l, size_t t,
                                const struct lane *in, uint32_t place) {
  const struct tsr_level *lv = &it->L->s->levels[it->L->level];
  const struct tsr_tile_job *j = l->jobs[t];
  unsigned ch = it->L->channels;
  size_t bytes = it->tile_bytes / 3 * ch;
  const uint8_t *src = (ch == 4 ? in->rgba : in->tiles) + (size_t)place * bytes;
  struct rect r;
  uint32_t tw, th;
  tsr_tile_extent(lv, j->tile, &r.x0, &r.y0, &tw, &th);
  r.x1 = r.x0 + tw;
  r.y1 = r.y0 + th;
  for (size_t i = 0; i < j->n; i++) {
    tessera_status st =
        copy_part(it, l->stream, (struct gslot *)j->dests[i].slot, j->dests[i].patch, r, src, r.x0,
                  r.y0, (size_t)lv->tile_w * ch, cudaMemcpyDeviceToDevice);
    if (st != TESSERA_OK)
      return st;
  }
  return TESSERA_OK;
}

/* Paints job t on the CPU, as a CPU batch does, into its destinations' host canvases, and
 * queues the copies of their parts; the job's own failure is kept in its status. */
static tessera_status paint_tile(struct gpu_iter *it, struct lane *l, size_t t,
                                 struct tsr_tile_buffers *b) {
  const struct tsr_level *lv = &it->L->s->levels[it->L->level];
  struct tsr_tile_job *j = l->jobs[t];
  for (size_t i = 0; i < j->n; i++)
    j->canvases[i] = &((struct gslot *)j->dests[i].slot)->canvases[j->dests[i].patch];
  struct rect r;
  if (it->L->by_patch) {
    l->status[t] = tsr_paint_canvas(it->L->s, it->L->level, j->canvases[0], b);
    r = (struct rect){INT64_MIN / 2, INT64_MIN / 2, INT64_MAX / 2, INT64_MAX / 2};
  } else {
    l->status[t] = tsr_paint_tile(it->L->s, it->L->level, j->tile, j->canvases, j->n, b);
    uint32_t tw, th;
    tsr_tile_extent(lv, j->tile, &r.x0, &r.y0, &tw, &th);
    r.x1 = r.x0 + tw;
    r.y1 = r.y0 + th;
  }
  for (size_t i = 0; i < j->n && l->status[t] == TESSERA_OK; i++) {
    tessera_status st =
        copy_painted(it, l->stream, (struct gslot *)j->dests[i].slot, j->dests[i].patch, r);
    if (st != TESSERA_OK)
      return st;
  }
  return TESSERA_OK;
}

/* Queues the chunk's work on the lane's stream: after the fill of every batch it writes into
 * and the tiles of the lanes it copies from; its tiles decoded, copied or painted, and copied
 * into their patches. */
static tessera_status queue_chunk(struct gpu_iter *it, struct lane *l, size_t k) {
  const struct tsr_cudart *rt = &it->cuda->rt;
  l->ntouched = 0;
  for (size_t t = 0; t < k; t++)
    for (size_t i = 0; i < l->jobs[t]->n; i++)
      if (!touch(l, (struct gslot *)l->jobs[t]->dests[i].slot))
        return tsr_error(TESSERA_E_NOMEM, "out of memory for a batch");
  for (size_t i = 0; i < l->ntouched; i++)
    CUDA_TRY(it, rt->cudaStreamWaitEvent(l->stream, l->touched[i]->ready, 0),
             "cudaStreamWaitEvent (a batch's fill)");
  for (size_t i = 0; i < l->nsources; i++)
    CUDA_TRY(it, rt->cudaStreamWaitEvent(l->stream, l->sources[i]->event, 0),
             "cudaStreamWaitEvent (tiles decoded for another chunk)");
  size_t good = 0, top = 0;
  tessera_status st = TESSERA_OK;
  if (it->gpu_level) {
    if ((st = read_tiles(it, l, k, &good, &top)) != TESSERA_OK ||
        (st = decode_tiles(it, l, k, good, top)) != TESSERA_OK)
      return st;
  }
  struct tsr_tile_buffers *b = NULL;
  size_t held = 0;
  for (size_t t = 0; t < k && st == TESSERA_OK; t++) {
    if (l->place[t] >= 0) {
      l->holds[held++] = (struct placed){l->jobs[t]->tile, (uint32_t)l->place[t]};
      st = copy_tile(it, l, t, l, (uint32_t)l->place[t]);
    } else if (l->from[t]) {
      if (l->from[t] == l)
        l->holds[held++] = (struct placed){l->jobs[t]->tile, l->from_place[t]};
      st = copy_tile(it, l, t, l->from[t], l->from_place[t]);
    } else if (b || (b = tsr_tile_buffers_get()) != NULL) {
      st = paint_tile(it, l, t, b);
    } else {
      st = tsr_error(TESSERA_E_NOMEM, "out of memory for tile buffers");
    }
  }
  if (b)
    tsr_tile_buffers_trim(b);
  if (held > 1)
    qsort(l->holds, held, sizeof *l->holds, placed_order);
  l->decoded = held; /* offered to other items once the lane is given back */
  return st;
}

/* One work item: a lane and up to cap queued jobs. A pool task that finds no lane free gives
 * its thread back instead of waiting for the GPU. Returns with the lock held. */
static void gpu_run(struct tessera_batch_iter *engine, void *item) {
  (void)item; /* the queue is the back end's: the item only says there is work */
  struct gpu_iter *it = engine->backend;
  const struct tsr_cudart *rt = &it->cuda->rt;
  struct device_scope d;
  enter_device(it, &d);
  pthread_mutex_lock(&engine->lock);
  struct lane *l = take_lane(it, it->L->workers == 0 || engine->no_pool);
  size_t k = l ? take_jobs(it, l) : 0;
  if (k == 0) {
    if (l)
      l->busy = false;
    pthread_mutex_unlock(&engine->lock);
    sched_yield(); /* the GPU (or another item) first */
    leave_device(it, &d);
    pthread_mutex_lock(&engine->lock);
    return;
  }
  l->held = 0; /* overwritten from now on, but those the chunk keeps (offered again after) */
  bool in_flight = l->in_flight;
  pthread_mutex_unlock(&engine->lock);
  tessera_status st = TESSERA_OK;
  cudaError_t e = in_flight ? rt->cudaEventSynchronize(l->event) : cudaSuccess;
  if (e != cudaSuccess)
    st = cuda_failed(it->cuda, e, "cudaEventSynchronize");
  l->decoded = 0;
  l->ntouched = 0;
  if (st == TESSERA_OK)
    st = queue_chunk(it, l, k);
  /* The batches written into wait for the lane's work before they are done. */
  e = rt->cudaEventRecord(l->event, l->stream);
  for (size_t i = 0; i < l->ntouched && e == cudaSuccess; i++)
    e = rt->cudaStreamWaitEvent(l->touched[i]->stream, l->event, 0);
  if (e != cudaSuccess && st == TESSERA_OK)
    st = cuda_failed(it->cuda, e, "cudaEventRecord");
  if (st != TESSERA_OK) /* nothing queued may outlive the batches' failure */
    rt->cudaStreamSynchronize(l->stream);
  pthread_mutex_lock(&engine->lock);
  for (size_t i = 0; i < l->nsources; i++) {
    /* The lane copied from decodes its next chunk only after the copies. */
    if (st != TESSERA_OK ||
        rt->cudaStreamWaitEvent(l->sources[i]->stream, l->event, 0) != cudaSuccess)
      rt->cudaStreamSynchronize(l->stream);
    l->sources[i]->pins--;
  }
  l->in_flight = st == TESSERA_OK && it->gpu_level; /* only tile buffers' lanes stage */
  if (st == TESSERA_OK && l->decoded > 0) {
    l->held = l->decoded;
    l->filled = ++it->fills;
  }
  l->busy = false;
  for (size_t t = 0; t < k; t++)
    tsr_tile_jobs_done(engine, &it->jobs, l->jobs[t], st != TESSERA_OK ? st : l->status[t]);
  leave_device(it, &d);
}

/* Whether an item could run now: jobs are queued and a lane is neither busy nor pinned. When
 * every lane is, the items that have them look again when they are done, so the tasks of the
 * other workers end rather than spin (lock held). */
static bool gpu_queued(const struct tessera_batch_iter *engine) {
  const struct gpu_iter *it = engine->backend;
  if (!tsr_tile_jobs_queued(&it->jobs))
    return false;
  for (size_t i = 0; i < it->nlanes; i++)
    if (!it->lanes[i]->busy && it->lanes[i]->pins == 0)
      return true;
  return false;
}

/* A token: the jobs are taken from the queue when the item runs and has a lane. */
static void *gpu_pop(struct tessera_batch_iter *engine) {
  return gpu_queued(engine) ? engine->backend : NULL;
}

static void gpu_drop(struct tessera_batch_iter *engine) {
  struct gpu_iter *it = engine->backend;
  tsr_tile_jobs_drop(&it->jobs);
}

/* The batch is complete when everything written into it is: `done`, recorded after the waits
 * for the lanes that wrote there. */
static tessera_status gpu_complete(struct tessera_batch_iter *engine, struct tsr_batch_slot *base) {
  struct gpu_iter *it = engine->backend;
  struct gslot *sl = (struct gslot *)base;
  struct device_scope d;
  enter_device(it, &d);
  cudaError_t e = it->cuda->rt.cudaEventRecord(sl->done, sl->stream);
  const char *what = "cudaEventRecord";
  if (e == cudaSuccess) {
    e = it->cuda->rt.cudaEventSynchronize(sl->done);
    what = "cudaEventSynchronize";
  } else {
    it->cuda->rt.cudaStreamSynchronize(sl->stream);
  }
  leave_device(it, &d);
  return e == cudaSuccess ? TESSERA_OK : cuda_failed(it->cuda, e, what);
}

/* ---- the rest of the back end's operations ---- */

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
  size_t tile_bytes, per_patch = tsr_batch_tiles_per_patch(lv, L->width, L->height);
  /* Tiles too small to schedule one by one are too small for nvJPEG's batches too. */
  it->gpu_level = !L->by_patch && tsr_gpu_level_decodable(lv) &&
                  tsr_mul3(lv->tile_w, lv->tile_h, 3, &tile_bytes) &&
                  tile_bytes <= L->s->limits.max_decoded_tile_bytes;
  it->cap = 1; /* tiles painted on the CPU: one a work item, so that workers share them */
  if (it->gpu_level) {
    it->tile_bytes = tile_bytes;
    /* A lane holds the tiles of one batch at most, as each slot held before. */
    size_t most;
    if (!tsr_mul2(per_patch, L->batch_cap, &most) || most > lv->ntiles)
      most = (size_t)lv->ntiles;
    size_t budget = tsr_gpu_tile_budget / tile_bytes;
    it->cap = most < budget ? most : budget;
    if (it->cap == 0)
      it->cap = 1;
  }
  /* Lanes with tile buffers: as many as slots in flight, the device memory of the tile buffers
   * each slot held before; without: one for each worker too. */
  it->max_lanes = engine->ring_size;
  if (!it->gpu_level && it->max_lanes < L->workers)
    it->max_lanes = L->workers;
  if (!(it->lanes = tsr_calloc(it->max_lanes, sizeof *it->lanes)))
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a batch iterator");
  return tsr_tile_jobs_init(&it->jobs, L->by_patch ? 1 : per_patch,
                            L->batch_cap * engine->ring_size);
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
  struct device_scope d;
  enter_device(it, &d);
  free_slot(it, (struct gslot *)base);
  leave_device(it, &d);
}

static void gpu_free(struct tessera_batch_iter *engine) {
  struct gpu_iter *it = engine->backend;
  struct device_scope d;
  enter_device(it, &d);
  for (size_t i = 0; i < it->nlanes; i++)
    free_lane(it, it->lanes[i]);
  leave_device(it, &d);
  tsr_tile_jobs_free(&it->jobs);
  tsr_free(it->lanes);
  tsr_free(it);
}

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
