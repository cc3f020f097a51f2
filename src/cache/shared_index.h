/* What shared.c's index of a shard offers the shared cache's other files (shared_hooks.c's
 * checks): each with the shard's lock held, as in shared.c, but tsr_shared_lock_shard. */
#ifndef TSR_CACHE_SHARED_INDEX_H
#define TSR_CACHE_SHARED_INDEX_H

#include "cache/segment.h"

static inline uint32_t *bucket(const struct view *v, uint64_t hash) {
  return &v->B[(hash >> 4) & (v->buckets - 1)];
}

static inline void unlock_shard(struct shard *sh) { pthread_mutex_unlock(&sh->lock); }

/* Locks shard si, repairing it if its last holder died; false if it cannot be locked within
 * LOCK_WAIT_NS, or at once while the shard is marked stuck. */
bool tsr_shared_lock_shard(struct shared_cache *c, uint32_t si);
/* Whether entry i is whole: sealed, of a sane size, its chain in range and its own. */
bool tsr_shared_entry_whole(const struct view *v, uint32_t i);
/* Seals entry i as it now stands. */
void tsr_shared_seal(struct entry *e, uint32_t i);

#endif
