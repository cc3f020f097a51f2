/* The CPU back end of the batch engine (batch/engine.h): patches painted in host memory.
 *
 * Work is scheduled by tile. Scheduling a batch makes, for each tile its patches overlap, a
 * job listing the patches (destinations) that need it; a tile already waiting in the queue
 * for an earlier batch gains the new destinations instead of a second job, so it is read and
 * decoded once. A work item is one job: its tile painted into all its destinations, each
 * counted done in its slot. Slot buffers, jobs and their destination lists are recycled, so a
 * long stream allocates nothing once warm. The queue, the table and the free jobs are guarded
 * by the iterator's lock; a job taken off the queue belongs to the thread running it. */
#include <stddef.h>
#include <string.h>

#include "alloc.h"
#include "batch/engine.h"
#include "error.h"
#include "region.h"

/* Largest table of queued jobs used to find a tile already waiting; past half full, new jobs
 * are simply not shared (correct, just less thrifty). */
#define TSR_MAX_TABLE ((size_t)1 << 16)

struct slot;

/* One patch that needs a tile. */
struct dest {
  struct slot *slot;
  uint32_t patch;
};

/* One tile to read and paint into its destinations (with by_patch: one patch, whose tiles are
 * painted one after another; `tile` is then unused). While queued it belongs to the iterator
 * (guarded by its lock); once a thread takes it off the queue, to that thread alone. */
struct job {
  uint64_t tile;
  struct job *next; /* queue or free list */
  struct dest *dests;
  const struct tsr_canvas **canvases; /* filled by the runner from dests */
  size_t n, cap;
};

/* The least memory scheduling one tile for one patch costs: a job and the smallest lists of
 * destinations and canvases it carries (the table's slots and malloc's headers come on top). */
#define TSR_JOB_BYTES                                                                              \
  (sizeof(struct job) + 4 * (sizeof(struct dest) + sizeof(const struct tsr_canvas *)))

/* Scheduling a patch tile by tile may always cost this much, so that small patches share the
 * tiles of scanner files (256 x 256 and the like) with the patches beside them; beyond it, and
 * beyond the patch's own pixels, tiles are too small to be worth it (by_patch). */
#define TSR_SCHEDULE_FLOOR ((size_t)64 << 10)

/* A batch buffer. */
struct slot {
  struct tsr_batch_slot base;  /* first */
  uint8_t *data;               /* batch_cap patches */
  uint64_t *indices;           /* batch_cap entries */
  struct tsr_canvas *canvases; /* one per patch; set when scheduled, then read-only */
};

/* The queued work of one iterator: everything guarded by the iterator's lock, but the sizes,
 * set at creation. */
struct work {
  size_t table_size; /* a power of two */
  struct job *queue_head, *queue_tail;
  struct job *free_jobs;
  /* Destinations the lists of the jobs on free_jobs have room for, and the most they may keep:
   * what TSR_JOB_BYTES counts for the jobs that can be queued at once. Without it, jobs reused
   * for tiles shared by many patches would each keep the longest list they ever had. */
  size_t spare_dests, spare_limit;
  struct job **table; /* queued jobs by tile, open addressing */
  size_t table_count;
};

size_t tsr_batch_schedule_bytes(size_t per_patch, size_t patch_bytes, bool *by_patch) {
  size_t tile_jobs;
  *by_patch = !tsr_mul2(per_patch, TSR_JOB_BYTES, &tile_jobs) ||
              (tile_jobs > patch_bytes && tile_jobs > TSR_SCHEDULE_FLOOR);
  return *by_patch ? TSR_JOB_BYTES : tile_jobs;
}

/* ---- the table of queued jobs, by tile (lock held) ---- */

static size_t table_home(const struct work *w, uint64_t tile) {
  return (size_t)((tile * 0x9E3779B97F4A7C15u) >> 7) & (w->table_size - 1);
}

static struct job *table_find(const struct work *w, uint64_t tile) {
  for (size_t i = table_home(w, tile);; i = (i + 1) & (w->table_size - 1)) {
    if (!w->table[i] || w->table[i]->tile == tile)
      return w->table[i];
  }
}

static void table_insert(struct work *w, struct job *j) {
  size_t i = table_home(w, j->tile);
  while (w->table[i])
    i = (i + 1) & (w->table_size - 1);
  w->table[i] = j;
  w->table_count++;
}

/* Removal by shifting later entries of the same probe run back, so no tombstones pile up. */
static void table_remove(struct work *w, const struct job *j) {
  size_t mask = w->table_size - 1, i = table_home(w, j->tile);
  while (w->table[i] != j) {
    if (!w->table[i])
      return; /* never shared, so never inserted */
    i = (i + 1) & mask;
  }
  w->table[i] = NULL;
  w->table_count--;
  for (size_t k = (i + 1) & mask; w->table[k]; k = (k + 1) & mask) {
    size_t home = table_home(w, w->table[k]->tile);
    /* Move entry k into the hole unless its home lies cyclically in (i, k]. */
    bool stays = i <= k ? (home > i && home <= k) : (home > i || home <= k);
    if (!stays) {
      w->table[i] = w->table[k];
      w->table[k] = NULL;
      i = k;
    }
  }
}

static void recycle_job(struct work *w, struct job *j) {
  if (j->cap > 4 && w->spare_dests + j->cap > w->spare_limit) {
    tsr_free(j->dests);
    tsr_free(j->canvases);
    j->dests = NULL;
    j->canvases = NULL;
    j->cap = 0;
  }
  w->spare_dests += j->cap;
  j->next = w->free_jobs;
  w->free_jobs = j;
}

static struct job *take_job(struct work *w, uint64_t tile) {
  struct job *j = w->free_jobs;
  if (j) {
    w->free_jobs = j->next;
    w->spare_dests -= j->cap;
  } else if (!(j = tsr_calloc(1, sizeof *j)))
    return NULL;
  j->tile = tile;
  j->n = 0;
  j->next = NULL;
  return j;
}

static bool add_dest(struct job *j, struct slot *sl, uint32_t patch) {
  if (j->n == j->cap) {
    size_t cap = j->cap ? j->cap * 2 : 4;
    struct dest *d = tsr_realloc(j->dests, cap * sizeof *d);
    if (!d)
      return false;
    j->dests = d;
    const struct tsr_canvas **c = tsr_realloc(j->canvases, cap * sizeof *c);
    if (!c)
      return false;
    j->canvases = c;
    j->cap = cap;
  }
  j->dests[j->n++] = (struct dest){sl, patch};
  return true;
}

static void enqueue(struct work *w, struct job *j) {
  if (w->queue_tail)
    w->queue_tail->next = j;
  else
    w->queue_head = j;
  w->queue_tail = j;
}

/* Adds a destination to the queued job of a tile, or queues a new job for it. */
static tessera_status need_tile(struct work *w, uint64_t tile, struct slot *sl, uint32_t patch) {
  struct job *j = table_find(w, tile);
  bool fresh = !j;
  if (fresh && !(j = take_job(w, tile)))
    return tsr_error(TESSERA_E_NOMEM, "out of memory scheduling a batch");
  if (!add_dest(j, sl, patch)) {
    if (fresh)
      recycle_job(w, j);
    return tsr_error(TESSERA_E_NOMEM, "out of memory scheduling a batch");
  }
  sl->base.pending++;
  if (fresh) {
    enqueue(w, j);
    if (2 * (w->table_count + 1) <= w->table_size)
      table_insert(w, j);
  }
  return TESSERA_OK;
}

/* Queues a job painting all of patch p (by_patch). */
static tessera_status need_patch(struct work *w, struct slot *sl, uint32_t patch) {
  struct job *j = take_job(w, 0);
  if (!j)
    return tsr_error(TESSERA_E_NOMEM, "out of memory scheduling a batch");
  if (!add_dest(j, sl, patch)) {
    recycle_job(w, j);
    return tsr_error(TESSERA_E_NOMEM, "out of memory scheduling a batch");
  }
  sl->base.pending++;
  enqueue(w, j);
  return TESSERA_OK;
}

/* Lays out batch `number` in a slot and queues its tiles. */
/* ---- the back end's operations ---- */

static size_t table_size_for(size_t jobs) {
  size_t size = 64;
  while (size < 2 * jobs && size < TSR_MAX_TABLE)
    size *= 2;
  return size;
}

static tessera_status cpu_init(struct tessera_batch_iter *it) {
  const struct tsr_level *lv = &it->L.s->levels[it->L.level];
  size_t per_patch = (size_t)((it->L.width + lv->tile_w - 1) / lv->tile_w + 1) *
                     (size_t)((it->L.height + lv->tile_h - 1) / lv->tile_h + 1);
  struct work *w = tsr_calloc(1, sizeof *w);
  if (!w)
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a batch iterator");
  it->backend = w;
  /* Jobs per patch at most, times the patches that can be queued at once. */
  size_t queued;
  if (!tsr_mul3(it->L.by_patch ? 1 : per_patch, it->L.batch_cap, it->ring_size, &queued))
    queued = TSR_MAX_TABLE;
  w->table_size = table_size_for(queued);
  if (!tsr_mul2(queued, 4, &w->spare_limit))
    w->spare_limit = SIZE_MAX;
  if (!(w->table = tsr_calloc(w->table_size, sizeof *w->table)))
    return tsr_error(TESSERA_E_NOMEM, "out of memory for %zu locations", it->L.n);
  return TESSERA_OK;
}

static void cpu_free_slot(struct tessera_batch_iter *it, struct tsr_batch_slot *base) {
  (void)it;
  struct slot *sl = (struct slot *)base;
  tsr_free(sl->data);
  tsr_free(sl->indices);
  tsr_free(sl->canvases);
  tsr_free(sl);
}

static tessera_status cpu_new_slot(struct tessera_batch_iter *it, struct tsr_batch_slot **out) {
  struct slot *sl = tsr_calloc(1, sizeof *sl);
  if (!sl)
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a %zu-byte batch", it->L.batch_bytes);
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
  struct work *w = it->backend;
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
    int64_t tx0, ty0, tx1, ty1;
    if (!tsr_canvas_fill_outside(c, lv) || !tsr_canvas_tiles(c, lv, &tx0, &ty0, &tx1, &ty1))
      continue;
    if (it->L.by_patch) {
      tessera_status st = need_patch(w, sl, (uint32_t)p);
      if (st != TESSERA_OK)
        return st;
      continue;
    }
    for (int64_t ty = ty0; ty <= ty1; ty++) {
      for (int64_t tx = tx0; tx <= tx1; tx++) {
        tessera_status st = need_tile(w, (uint64_t)ty * lv->across + (uint64_t)tx, sl, (uint32_t)p);
        if (st != TESSERA_OK)
          return st;
      }
    }
  }
  return TESSERA_OK;
}

static void *cpu_pop(struct tessera_batch_iter *it) {
  struct work *w = it->backend;
  struct job *j = w->queue_head;
  if (!j)
    return NULL;
  w->queue_head = j->next;
  if (!w->queue_head)
    w->queue_tail = NULL;
  table_remove(w, j);
  return j;
}

/* Paints one job's tile (lock not held) and then, with the lock, counts its destinations
 * done and recycles it. */
static void cpu_run(struct tessera_batch_iter *it, void *item) {
  struct job *j = item;
  for (size_t i = 0; i < j->n; i++)
    j->canvases[i] = &j->dests[i].slot->canvases[j->dests[i].patch];
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
  for (size_t i = 0; i < j->n; i++)
    tsr_batch_done(it, &j->dests[i].slot->base, st);
  recycle_job(it->backend, j);
}

static bool cpu_queued(const struct tessera_batch_iter *it) {
  const struct work *w = it->backend;
  return w->queue_head != NULL;
}

static void cpu_drop(struct tessera_batch_iter *it) {
  for (struct job *j; (j = cpu_pop(it)) != NULL;)
    recycle_job(it->backend, j);
}

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
  struct work *w = it->backend;
  for (struct job *j = w->free_jobs, *next; j; j = next) {
    next = j->next;
    tsr_free(j->dests);
    tsr_free(j->canvases);
    tsr_free(j);
  }
  tsr_free(w->table);
  tsr_free(w);
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
