/* The queue of tile jobs that both batch back ends work from (batch/cpu.c, gpu/gpu_batch.c):
 * one job per tile that the batches in flight need, listing every patch (destination) that
 * needs it, so that a tile shared by patches of several batches is read, and decoded, once.
 *
 * Scheduling a batch asks for each tile its patches overlap (tsr_tile_jobs_need_tile): a tile
 * already waiting in the queue gains the new destination instead of a second job. A job taken
 * off the queue (tsr_tile_jobs_pop) is no longer found, so a later batch needing its tile makes
 * a new one. Jobs and their lists of destinations are recycled, so a long stream allocates
 * nothing once warm.
 *
 * Locking: a struct tsr_tile_jobs and the jobs queued in it are guarded by the iterator's lock
 * (every call here is made with it held); a popped job belongs to the thread that popped it
 * until it is recycled. */
#ifndef TSR_BATCH_TILE_JOBS_H
#define TSR_BATCH_TILE_JOBS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "batch/engine.h"

/* One patch that needs a tile. */
struct tsr_tile_dest {
  struct tsr_batch_slot *slot;
  uint32_t patch;
};

/* One tile to read and paint into its destinations (by_patch: one patch, whose tiles are
 * painted one after another; `tile` is then unused). */
struct tsr_tile_job {
  uint64_t tile;
  struct tsr_tile_job *next; /* queue or free list */
  struct tsr_tile_dest *dests;
  const struct tsr_canvas **canvases; /* n of them: the runner's, filled from dests */
  size_t n, cap;
};

struct tsr_tile_jobs {
  size_t table_size; /* a power of two; set at init */
  struct tsr_tile_job *queue_head, *queue_tail;
  struct tsr_tile_job *free_jobs;
  /* Destinations the lists of the jobs on free_jobs have room for, and the most they may keep:
   * what tsr_batch_schedule_bytes counts for the jobs that can be queued at once. Without it,
   * jobs reused for tiles shared by many patches would each keep the longest list they had. */
  size_t spare_dests, spare_limit;
  struct tsr_tile_job **table; /* queued jobs by tile, open addressing */
  size_t table_count;
};

/* Sized for `patches` queued at once at most, each needing per_patch jobs at most. */
tessera_status tsr_tile_jobs_init(struct tsr_tile_jobs *w, size_t per_patch, size_t patches);
void tsr_tile_jobs_free(struct tsr_tile_jobs *w);

/* Patch `patch` of the slot needs tile `tile`: a destination added to the tile's queued job,
 * or a new job queued; counted in slot->pending. */
tessera_status tsr_tile_jobs_need_tile(struct tsr_tile_jobs *w, uint64_t tile,
                                       struct tsr_batch_slot *slot, uint32_t patch);

/* A job of its own painting all of the patch (by_patch); counted in slot->pending. */
tessera_status tsr_tile_jobs_need_patch(struct tsr_tile_jobs *w, struct tsr_batch_slot *slot,
                                        uint32_t patch);

/* The first queued job, taken off the queue, or NULL. */
struct tsr_tile_job *tsr_tile_jobs_pop(struct tsr_tile_jobs *w);

static inline bool tsr_tile_jobs_queued(const struct tsr_tile_jobs *w) {
  return w->queue_head != NULL;
}

/* Counts each of the job's destinations done in its slot (tsr_batch_done, status st), then
 * recycles the job. */
void tsr_tile_jobs_done(struct tessera_batch_iter *it, struct tsr_tile_jobs *w,
                        struct tsr_tile_job *j, tessera_status st);

/* Drops every queued job (destroy). */
void tsr_tile_jobs_drop(struct tsr_tile_jobs *w);

#endif
