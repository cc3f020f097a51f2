/* The S3-FIFO eviction policy (process.c says why this one), used by both kinds of cache: the
 * per-process one (entries in the heap, addressed by pointer, some pinned) and the shared one
 * (entries in a segment, addressed by index, none pinned, nothing in it trusted). Each kind
 * keeps its own queues, a small one and a main one, newest first, and hands the policy an
 * entry as an opaque handle through the operations below. The policy keeps no state of its
 * own: everything it touches is the caller's shard, under the caller's shard lock. */
#ifndef TSR_CACHE_S3FIFO_H
#define TSR_CACHE_S3FIFO_H

#include <stdbool.h>
#include <stdint.h>

#include "cache/cache.h"

/* Each operation returns false when it finds the shard inconsistent. */
struct tsr_s3fifo_ops {
  /* Sets *e to the oldest entry of the small queue (small) or the main one that may be
   * evicted; *found false if there is none. */
  bool (*oldest)(void *shard, bool small, uintptr_t *e, bool *found);
  /* Where entry e counts its reads. */
  uint8_t *(*freq)(void *shard, uintptr_t e);
  /* Moves e from its queue (the small one if small) to the head of the main queue. */
  bool (*to_main)(void *shard, uintptr_t e, bool small);
  /* Takes e out of its queue and of the cache, freeing what it holds. */
  bool (*evict)(void *shard, uintptr_t e, bool small);
};

enum tsr_s3fifo_result {
  TSR_S3FIFO_EVICTED, /* one entry was evicted */
  TSR_S3FIFO_NONE,    /* nothing can be evicted (the queues are empty, or all pinned) */
  TSR_S3FIFO_BROKEN   /* an operation found the shard inconsistent, or the queues never ran
                         out of second chances (they loop) */
};

/* Evicts one entry of a shard holding at most `entries` entries, whose small queue holds
 * *small_bytes of a budget of `budget` bytes. */
enum tsr_s3fifo_result tsr_s3fifo_evict_one(const struct tsr_s3fifo_ops *ops, void *shard,
                                            const uint64_t *small_bytes, uint64_t budget,
                                            uint64_t entries);

/* An entry was read: one more second chance, up to TSR_CACHE_MAX_FREQ. */
static inline void tsr_s3fifo_read(uint8_t *freq) {
  if (*freq < TSR_CACHE_MAX_FREQ)
    (*freq)++;
}

#endif
