/* The CPU back end of the batch engine (batch/engine.h): patches painted in host memory.
 *
 * Work is scheduled by tile, in the queue of tile jobs (batch/tile_jobs.h) shared by the
 * batches in flight: a tile several of them need is read and decoded once. A work item is one
 * job: its tile painted into all its destinations, each counted done in its slot. Slot buffers
 * and jobs are recycled, so a long stream allocates nothing once warm. The queue is guarded by
 * the iterator's lock; a job taken off the queue belongs to the thread running it. */
#include <stddef.h>
#include <string.h>

#include "alloc.h"
#include "batch/engine.h"
#include "batch/tile_jobs.h"
#include "source/tile_source.h"
#include "error.h"
#include "region.h"

/* Batch buffers of 2 MiB and more are mappings of their own with huge pages asked for
 * (tsr_map_huge): the 3 buffers of 32 NDPI patches of 256 x 256 are 18 MiB of memory new to
 * the process, about 4600 page faults per iterator otherwise, which a cached stream (every
 * patch a copy from the cache) spent about a tenth of its time on. Not under AddressSanitizer,
 * which checks the bounds of malloc's blocks only. */
#if defined(__SANITIZE_ADDRESS__)
#define HUGE_BATCHES 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HUGE_BATCHES 0
#endif
#endif
#ifndef HUGE_BATCHES
#define HUGE_BATCHES 1
#endif

/* A batch buffer. */
struct slot {
  struct tsr_batch_slot base;  /* first */
  uint8_t *data;               /* batch_cap patches */
  bool mapped;                 /* data is tsr_map_huge's, else malloc's */
  uint64_t *indices;           /* batch_cap entries */
  struct tsr_canvas *canvases; /* one per patch; set when scheduled, then read-only */
};

/* ---- the back end's operations ---- */

static tessera_status cpu_init(struct tessera_batch_iter *it) {
  struct tsr_tile_jobs *w = tsr_calloc(1, sizeof *w);
  if (!w)
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a batch iterator");
  it->backend = w;
  size_t per_patch = it->L.by_patch ? 1
                                    : tsr_batch_tiles_per_patch(&it->L.s->levels[it->L.level],
                                                                it->L.width, it->L.height);
  return tsr_tile_jobs_init(w, per_patch, it->L.batch_cap * it->ring_size);
}

static void cpu_free_slot(struct tessera_batch_iter *it, struct tsr_batch_slot *base) {
  struct slot *sl = (struct slot *)base;
  if (sl->mapped)
    tsr_unmap_huge(sl->data, it->L.batch_bytes);
  else
    tsr_free(sl->data);
  tsr_free(sl->indices);
  tsr_free(sl->canvases);
  tsr_free(sl);
}

static tessera_status cpu_new_slot(struct tessera_batch_iter *it, struct tsr_batch_slot **out) {
  struct slot *sl = tsr_calloc(1, sizeof *sl);
  if (!sl)
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a %zu-byte batch", it->L.batch_bytes);
  if (HUGE_BATCHES && it->L.batch_bytes >= TSR_HUGE_PAGE)
    sl->mapped = (sl->data = tsr_map_huge(it->L.batch_bytes)) != NULL;
  if (!sl->data)
    sl->data = tsr_malloc(it->L.batch_bytes);
  sl->indices = tsr_malloc(it->L.batch_cap * sizeof *sl->indices);
  sl->canvases = tsr_malloc(it->L.batch_cap * sizeof *sl->canvases);
  if (!sl->data || !sl->indices || !sl->canvases) {
    cpu_free_slot(it, &sl->base);
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a %zu-byte batch", it->L.batch_bytes);
  }
  *out = &sl->base;
  return TESSERA_OK;
}

/* Lays out the slot's batch and queues its tiles (or, by_patch, its patches). */
static tessera_status cpu_schedule(struct tessera_batch_iter *it, struct tsr_batch_slot *base) {
  struct slot *sl = (struct slot *)base;
  struct tsr_tile_jobs *w = it->backend;
  size_t number = base->pub.number;
  base->pub.data = sl->data;
  base->pub.indices = sl->indices;
  base->pub.device = TESSERA_DEVICE_CPU;
  const struct tsr_level *lv = &it->L.s->levels[it->L.level];
  for (size_t p = 0; p < base->pub.count; p++) {
    struct tsr_canvas *c = &sl->canvases[p];
    if (!tsr_batch_patch(&it->L, number, p, sl->data + p * it->L.patch_bytes, c, &sl->indices[p])) {
      tsr_canvas_fill(c);
      continue;
    }
    if (!tsr_canvas_prepare(it->L.s, it->L.level, c))
      continue;
    if (it->L.by_patch) {
      tessera_status st = tsr_tile_jobs_need_patch(w, base, (uint32_t)p);
      if (st != TESSERA_OK)
        return st;
      continue;
    }
    int64_t tx0, ty0, tx1, ty1;
    if (!tsr_canvas_tiles(c, lv, &tx0, &ty0, &tx1, &ty1))
      continue;
    for (int64_t ty = ty0; ty <= ty1; ty++) {
      for (int64_t tx = tx0; tx <= tx1; tx++) {
        uint64_t tile = (uint64_t)ty * lv->across + (uint64_t)tx;
        tessera_status st = tsr_tile_jobs_need_tile(w, tile, base, (uint32_t)p);
        if (st != TESSERA_OK)
          return st;
      }
    }
  }
  return TESSERA_OK;
}

static void *cpu_pop(struct tessera_batch_iter *it) { return tsr_tile_jobs_pop(it->backend); }

/* Paints one job's tile (lock not held) and then, with the lock, counts its destinations
 * done. */
static void cpu_run(struct tessera_batch_iter *it, void *item) {
  struct tsr_tile_job *j = item;
  for (size_t i = 0; i < j->n; i++)
    j->canvases[i] = &((struct slot *)j->dests[i].slot)->canvases[j->dests[i].patch];
  struct tsr_tile_buffers *b = tsr_tile_buffers_get();
  tessera_status st;
  if (!b)
    st = tsr_error(TESSERA_E_NOMEM, "out of memory for tile buffers");
  else if (it->L.by_patch)
    st = tsr_paint_canvas(it->L.s, it->L.level, j->canvases[0], b);
  else
    st = tsr_paint_tile(it->L.s, it->L.level, j->tile, j->canvases, j->n, b);
  if (b)
    tsr_tile_buffers_trim(b);
  pthread_mutex_lock(&it->lock);
  tsr_tile_jobs_done(it, it->backend, j, st);
}

static bool cpu_queued(const struct tessera_batch_iter *it) {
  return tsr_tile_jobs_queued(it->backend);
}

static void cpu_drop(struct tessera_batch_iter *it) { tsr_tile_jobs_drop(it->backend); }

static tessera_status cpu_copy_to_host(struct tessera_batch_iter *it,
                                       const struct tsr_batch_slot *sl, void *dst) {
  (void)it;
  memcpy(dst, sl->pub.data, sl->pub.size);
  return TESSERA_OK;
}

static const char *cpu_decoder(const struct tessera_batch_iter *it) {
  (void)it;
  return "cpu";
}

static void cpu_free(struct tessera_batch_iter *it) {
  tsr_tile_jobs_free(it->backend);
  tsr_free(it->backend);
}

const struct tsr_batch_backend tsr_cpu_batch_backend = {
    .ahead_without_workers = false,
    .init = cpu_init,
    .new_slot = cpu_new_slot,
    .schedule = cpu_schedule,
    .pop = cpu_pop,
    .run = cpu_run,
    .queued = cpu_queued,
    .drop = cpu_drop,
    .copy_to_host = cpu_copy_to_host,
    .decoder = cpu_decoder,
    .free_slot = cpu_free_slot,
    .free = cpu_free,
};
