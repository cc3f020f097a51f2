/* The batch engine: the one lifecycle of a batch iterator, whatever the device, and the table
 * of operations through which it drives a back end (batch/cpu.c: patches painted on the CPU;
 * gpu/gpu_batch.c: patches assembled in CUDA memory).
 *
 * The engine (batch/engine.c) owns the ring of batch slots in flight, their free list, the
 * scheduling of prefetch_factor batches ahead of the consumer, skipping a batch that could
 * not be laid out, and the task group whose at most num_workers pool tasks run the back
 * end's work items; the group's references are the iterator's handle and each batch handed
 * out, and the last to let go frees the iterator. A back end lays out a batch's work as
 * items in queues of its own, runs one item at a time, and counts each slot's items done.
 *
 * Locking: the iterator's `lock` guards the engine's fields below it and the back end's
 * queues (operations say whether they are called with it). Work items run without it. */
#ifndef TSR_BATCH_ENGINE_H
#define TSR_BATCH_ENGINE_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "pool.h"
#include "region.h"
#include "tessera.h"

/* The plan of an iterator's batches, fixed at creation. */
struct tsr_batch_plan {
  tessera_slide *s;
  int32_t level;
  int64_t width, height;
  unsigned channels;
  uint8_t fill;
  size_t n, batch_size, nbatches;
  /* Patches a batch buffer holds: batch_size, or n when fewer (a huge batch_size over a few
   * locations must not reserve memory for patches that do not exist). */
  size_t batch_cap;
  int64_t *xy;                     /* 2n level-0 coordinates (owned) */
  uint64_t *order;                 /* the visiting order of the n locations (owned) */
  size_t patch_bytes, batch_bytes; /* batch_bytes: batch_cap patches */
  /* Tiles so small (a few pixels) that scheduling each for every patch would cost more memory
   * than the patches' pixels: each patch is instead painted tile after tile by one piece of
   * work, as a region is (tsr_paint_canvas), without the bookkeeping of sharing tiles. */
  bool by_patch;
  unsigned workers;       /* num_workers: pool threads the iterator may use at once */
  size_t prefetch_factor; /* as asked (>= 1) */
  int32_t device_id;
  unsigned generation; /* the pool's fork generation at creation */
};

/* Patches of batch `number` (batch_size, or fewer for the last). */
size_t tsr_batch_count(const struct tsr_batch_plan *l, size_t number);

/* Patch p of batch `number`: its location index and its canvas, writing to dst. Returns false
 * when the patch lies so far outside (beyond +-2^62) that it cannot touch the level; the
 * canvas is then still set (and all fill). */
bool tsr_batch_patch(const struct tsr_batch_plan *l, size_t number, size_t p, uint8_t *dst,
                     struct tsr_canvas *canvas, uint64_t *index);

/* The start of every back end's batch slot. */
struct tsr_batch_slot {
  tessera_batch pub; /* first, so a tessera_batch handed out leads back here */
  struct tessera_batch_iter *it;
  struct tsr_batch_slot *next; /* the free list; guarded by it->lock */
  size_t pending;              /* pieces of work not yet done; guarded by it->lock */
  struct tsr_failure failure;  /* the first failure; guarded by it->lock */
};

/* A back end. Work items are opaque to the engine. */
struct tsr_batch_backend {
  /* Batches are made ahead of the consumer even without workers (the GPU works meanwhile):
   * the consumer, making them itself, makes every one scheduled before it waits. */
  bool ahead_without_workers;
  /* Sets it->backend (lock not yet made). */
  tessera_status (*init)(struct tessera_batch_iter *it);
  /* A new slot, with buffers for batch_cap patches (lock held). */
  tessera_status (*new_slot)(struct tessera_batch_iter *it, struct tsr_batch_slot **out);
  /* Lays out the batch sl->pub.number (its count, size and number set) in sl: data, indices
   * and the device fields of pub; queues its work, counted in sl->pending (lock held). An
   * error fails the batch once the work already queued is done. */
  tessera_status (*schedule)(struct tessera_batch_iter *it, struct tsr_batch_slot *sl);
  /* The next queued work item, or NULL (lock held). */
  void *(*pop)(struct tessera_batch_iter *it);
  /* Runs a popped item (lock not held), then takes the lock and counts its slots' items done
   * with tsr_batch_done; returns with the lock held. */
  void (*run)(struct tessera_batch_iter *it, void *item);
  /* Whether work is queued (lock held). */
  bool (*queued)(const struct tessera_batch_iter *it);
  /* Drops every queued item (lock held: destroy). */
  void (*drop)(struct tessera_batch_iter *it);
  /* A slot whose items are done, before its batch is handed out (lock not held); or NULL. */
  tessera_status (*complete)(struct tessera_batch_iter *it, struct tsr_batch_slot *sl);
  /* A batch handed out is released, before its slot is reused (lock not held); or NULL. */
  void (*released)(struct tessera_batch_iter *it, struct tsr_batch_slot *sl);
  /* tessera_batch_copy_to_host, dst holding sl->pub.size bytes. */
  tessera_status (*copy_to_host)(struct tessera_batch_iter *it, const struct tsr_batch_slot *sl,
                                 void *dst);
  /* tessera_batch_iter_decoder. */
  const char *(*decoder)(const struct tessera_batch_iter *it);
  /* Frees a slot (the last reference has gone), and then the back end's state. */
  void (*free_slot)(struct tessera_batch_iter *it, struct tsr_batch_slot *sl);
  void (*free)(struct tessera_batch_iter *it);
};

extern const struct tsr_batch_backend tsr_cpu_batch_backend, tsr_gpu_batch_backend;

/* The engine; the iterator a caller holds. */
struct tessera_batch_iter {
  /* Set at creation, then only read. */
  struct tsr_batch_plan L;
  const struct tsr_batch_backend *ops;
  void *backend; /* the back end's state (its queues guarded by lock) */
  size_t ahead;  /* batches scheduled beyond the one being waited for */
  size_t ring_size;
  bool hints;        /* the source takes hints (tsr_batch_hints) */
  size_t hint_ahead; /* batches hinted beyond those scheduled */
  struct tsr_group *group; /* runs the back end's items; counts the references */

  pthread_mutex_t lock;
  pthread_cond_t changed; /* a slot's last item was done */
  /* Guarded by lock. */
  size_t scheduled; /* batches scheduled so far */
  size_t returned;  /* batches handed out (or failed) so far */
  size_t hinted;    /* batches whose tiles the source was told of (tsr_batch_hint) so far */
  struct tsr_batch_slot *
      *ring; /* slots of batches returned .. scheduled-1, by number % ring_size */
  struct tsr_batch_slot *free_slots;
  bool no_pool; /* the pool could not be started: the consumer runs the items */
};

/* Counts one of sl's items done, keeping st if it is the batch's first failure (lock held). */
void tsr_batch_done(struct tessera_batch_iter *it, struct tsr_batch_slot *sl, tessera_status st);

/* Whether the plan's slide is read from a source that takes hints (a URL's block cache) in a
 * level whose tiles' bytes are known (TIFF tiles and strips). */
bool tsr_batch_hints(const struct tsr_batch_plan *l);

/* Hints the source at the bytes of every tile the patches of batch `number` overlap. */
void tsr_batch_hint(const struct tsr_batch_plan *l, size_t number);

/* The tiles of the level a width x height patch overlaps at most (each side's count is at most
 * 2^31 + 1: no overflow). */
size_t tsr_batch_tiles_per_patch(const struct tsr_level *lv, int64_t width, int64_t height);

/* The memory scheduling one patch costs (per_patch tiles, each a job of batch/tile_jobs.h),
 * and whether its tiles are too small for that, so that patches are painted whole
 * (by_patch). */
size_t tsr_batch_schedule_bytes(size_t per_patch, size_t patch_bytes, bool *by_patch);

/* Device bytes of decoded tiles a lane of the CUDA back end holds (256 MiB, or one batch's
 * tiles when fewer): a work item decodes at most that many tiles at once (a chunk), and as
 * many lanes are made as slots in flight. Read when an iterator is made; tests lower it. */
extern size_t tsr_gpu_tile_budget;

#endif
