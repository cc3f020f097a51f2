/* The queue of tile jobs shared by the batches in flight (see batch/tile_jobs.h). Everything
 * here is called with the iterator's lock held. */
#include "batch/tile_jobs.h"

#include <stddef.h>

#include "alloc.h"
#include "error.h"

/* Largest table of queued jobs used to find a tile already waiting; past half full, new jobs
 * are simply not shared (correct, just less thrifty). */
#define TSR_MAX_TABLE ((size_t)1 << 16)

/* The least memory scheduling one tile for one patch costs: a job and the smallest lists of
 * destinations and canvases it carries (the table's slots and malloc's headers come on top). */
#define TSR_JOB_BYTES                                                                              \
  (sizeof(struct tsr_tile_job) +                                                                   \
   4 * (sizeof(struct tsr_tile_dest) + sizeof(const struct tsr_canvas *)))

/* Scheduling a patch tile by tile may always cost this much, so that small patches share the
 * tiles of scanner files (256 x 256 and the like) with the patches beside them; beyond it, and
 * beyond the patch's own pixels, tiles are too small to be worth it (by_patch). */
#define TSR_SCHEDULE_FLOOR ((size_t)64 << 10)

size_t tsr_batch_schedule_bytes(size_t per_patch, size_t patch_bytes, bool *by_patch) {
  size_t tile_jobs;
  *by_patch = !tsr_mul2(per_patch, TSR_JOB_BYTES, &tile_jobs) ||
              (tile_jobs > patch_bytes && tile_jobs > TSR_SCHEDULE_FLOOR);
  return *by_patch ? TSR_JOB_BYTES : tile_jobs;
}

tessera_status tsr_tile_jobs_init(struct tsr_tile_jobs *w, size_t per_patch, size_t patches) {
  size_t queued;
  if (!tsr_mul2(per_patch, patches, &queued))
    queued = TSR_MAX_TABLE;
  size_t size = 64;
  while (size < 2 * queued && size < TSR_MAX_TABLE)
    size *= 2;
  w->table_size = size;
  if (!tsr_mul2(queued, 4, &w->spare_limit))
    w->spare_limit = SIZE_MAX;
  if (!(w->table = tsr_calloc(w->table_size, sizeof *w->table)))
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a batch iterator's table of tiles");
  return TESSERA_OK;
}

void tsr_tile_jobs_free(struct tsr_tile_jobs *w) {
  for (struct tsr_tile_job *j = w->free_jobs, *next; j; j = next) {
    next = j->next;
    tsr_free(j->dests);
    tsr_free(j->canvases);
    tsr_free(j);
  }
  w->free_jobs = NULL;
  tsr_free(w->table);
  w->table = NULL;
}

/* ---- the table of queued jobs, by tile ---- */

static size_t table_home(const struct tsr_tile_jobs *w, uint64_t tile) {
  return (size_t)((tile * 0x9E3779B97F4A7C15u) >> 7) & (w->table_size - 1);
}

static struct tsr_tile_job *table_find(const struct tsr_tile_jobs *w, uint64_t tile) {
  for (size_t i = table_home(w, tile);; i = (i + 1) & (w->table_size - 1)) {
    if (!w->table[i] || w->table[i]->tile == tile)
      return w->table[i];
  }
}

static void table_insert(struct tsr_tile_jobs *w, struct tsr_tile_job *j) {
  size_t i = table_home(w, j->tile);
  while (w->table[i])
    i = (i + 1) & (w->table_size - 1);
  w->table[i] = j;
  w->table_count++;
}

/* Removal by shifting later entries of the same probe run back, so no tombstones pile up. */
static void table_remove(struct tsr_tile_jobs *w, const struct tsr_tile_job *j) {
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

/* ---- jobs ---- */

static void recycle_job(struct tsr_tile_jobs *w, struct tsr_tile_job *j) {
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

static struct tsr_tile_job *take_job(struct tsr_tile_jobs *w, uint64_t tile) {
  struct tsr_tile_job *j = w->free_jobs;
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

static bool add_dest(struct tsr_tile_job *j, struct tsr_batch_slot *sl, uint32_t patch) {
  if (j->n == j->cap) {
    size_t cap = j->cap ? j->cap * 2 : 4;
    struct tsr_tile_dest *d = tsr_realloc(j->dests, cap * sizeof *d);
    if (!d)
      return false;
    j->dests = d;
    const struct tsr_canvas **c = tsr_realloc(j->canvases, cap * sizeof *c);
    if (!c)
      return false;
    j->canvases = c;
    j->cap = cap;
  }
  j->dests[j->n++] = (struct tsr_tile_dest){sl, patch};
  return true;
}

static void enqueue(struct tsr_tile_jobs *w, struct tsr_tile_job *j) {
  if (w->queue_tail)
    w->queue_tail->next = j;
  else
    w->queue_head = j;
  w->queue_tail = j;
}

tessera_status tsr_tile_jobs_need_tile(struct tsr_tile_jobs *w, uint64_t tile,
                                       struct tsr_batch_slot *sl, uint32_t patch) {
  struct tsr_tile_job *j = table_find(w, tile);
  bool fresh = !j;
  if (fresh && !(j = take_job(w, tile)))
    return tsr_error(TESSERA_E_NOMEM, "out of memory scheduling a batch");
  if (!add_dest(j, sl, patch)) {
    if (fresh)
      recycle_job(w, j);
    return tsr_error(TESSERA_E_NOMEM, "out of memory scheduling a batch");
  }
  sl->pending++;
  if (fresh) {
    enqueue(w, j);
    if (2 * (w->table_count + 1) <= w->table_size)
      table_insert(w, j);
  }
  return TESSERA_OK;
}

tessera_status tsr_tile_jobs_need_patch(struct tsr_tile_jobs *w, struct tsr_batch_slot *sl,
                                        uint32_t patch) {
  struct tsr_tile_job *j = take_job(w, 0);
  if (!j)
    return tsr_error(TESSERA_E_NOMEM, "out of memory scheduling a batch");
  if (!add_dest(j, sl, patch)) {
    recycle_job(w, j);
    return tsr_error(TESSERA_E_NOMEM, "out of memory scheduling a batch");
  }
  sl->pending++;
  enqueue(w, j);
  return TESSERA_OK;
}

struct tsr_tile_job *tsr_tile_jobs_pop(struct tsr_tile_jobs *w) {
  struct tsr_tile_job *j = w->queue_head;
  if (!j)
    return NULL;
  w->queue_head = j->next;
  if (!w->queue_head)
    w->queue_tail = NULL;
  table_remove(w, j);
  return j;
}

void tsr_tile_jobs_done(struct tessera_batch_iter *it, struct tsr_tile_jobs *w,
                        struct tsr_tile_job *j, tessera_status st) {
  for (size_t i = 0; i < j->n; i++)
    tsr_batch_done(it, j->dests[i].slot, st);
  recycle_job(w, j);
}

void tsr_tile_jobs_drop(struct tsr_tile_jobs *w) {
  for (struct tsr_tile_job *j; (j = tsr_tile_jobs_pop(w)) != NULL;)
    recycle_job(w, j);
}
