/* The S3-FIFO eviction policy of both caches (s3fifo.h). Stateless: the shard it works on is
 * the caller's, locked by the caller. */
#include "cache/s3fifo.h"

enum tsr_s3fifo_result tsr_s3fifo_evict_one(const struct tsr_s3fifo_ops *ops, void *shard,
                                            const uint64_t *small_bytes, uint64_t budget,
                                            uint64_t entries) {
  /* Each step evicts, promotes (once per entry) or uses up one of an entry's second chances
   * (at most TSR_CACHE_MAX_FREQ), so this many steps always reach an eviction when one is
   * possible. */
  uint64_t steps = (TSR_CACHE_MAX_FREQ + 2) * (entries + 1);
  while (steps-- > 0) {
    /* From the small queue while it holds more than its part of the budget, else from the
     * main one; from the other when the one chosen has nothing to evict. */
    bool small = *small_bytes * TSR_CACHE_SMALL_PART > budget, found;
    uintptr_t e;
    if (!ops->oldest(shard, small, &e, &found))
      return TSR_S3FIFO_BROKEN;
    if (!found) {
      small = !small;
      if (!ops->oldest(shard, small, &e, &found))
        return TSR_S3FIFO_BROKEN;
      if (!found)
        return TSR_S3FIFO_NONE;
    }
    uint8_t *freq = ops->freq(shard, e);
    if (*freq > 0) {
      /* Read again while in the small queue: worth keeping, promoted with no chances yet; in
       * the main queue, one chance used up (a count above the most, which only a damaged
       * shared segment holds, counts as none left). */
      *freq = small || *freq > TSR_CACHE_MAX_FREQ ? 0 : (uint8_t)(*freq - 1);
      if (!ops->to_main(shard, e, small))
        return TSR_S3FIFO_BROKEN;
      continue;
    }
    return ops->evict(shard, e, small) ? TSR_S3FIFO_EVICTED : TSR_S3FIFO_BROKEN;
  }
  return TSR_S3FIFO_BROKEN;
}
