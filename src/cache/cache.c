/* The process's current cache and the public calls that configure it and read its
 * statistics; the kinds themselves live in process.c and shared.c. */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "cache/cache.h"
#include "error.h"

uint64_t tsr_cache_key_hash(const struct tsr_cache_key *k) {
  uint64_t h = 0x9E3779B97F4A7C15u;
  const uint64_t parts[] = {k->file.device,
                            k->file.inode,
                            k->file.size,
                            (uint64_t)k->file.mtime_ns,
                            (uint64_t)k->file.ctime_ns,
                            k->directory,
                            k->tile};
  for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
    h ^= parts[i] + 0x9E3779B97F4A7C15u + (h << 6) + (h >> 2);
    h *= 0xBF58476D1CE4E5B9u;
  }
  return h ^ (h >> 31);
}

bool tsr_cache_key_equal(const struct tsr_cache_key *a, const struct tsr_cache_key *b) {
  return a->file.device == b->file.device && a->file.inode == b->file.inode &&
         a->file.size == b->file.size && a->file.mtime_ns == b->file.mtime_ns &&
         a->file.ctime_ns == b->file.ctime_ns && a->directory == b->directory && a->tile == b->tile;
}

/* A shard too small to hold several tiles would work as a direct-mapped cache and thrash. */
unsigned tsr_cache_shard_count(uint64_t memory_capacity, uint64_t item_capacity) {
  uint64_t n = memory_capacity / TSR_CACHE_SHARD_MIN_BYTES;
  if (item_capacity && n > item_capacity / TSR_CACHE_SHARD_MIN_ITEMS)
    n = item_capacity / TSR_CACHE_SHARD_MIN_ITEMS;
  return n < 1 ? 1 : n > TSR_CACHE_MAX_SHARDS ? TSR_CACHE_MAX_SHARDS : (unsigned)n;
}

/* The process's cache. A reader takes a reference under `current_lock` (held only for that,
 * never across a decode, so configure and fork never wait for reads); configure swaps the
 * pointer, and whoever drops the last reference to the old cache destroys it. */
static pthread_mutex_t current_lock = PTHREAD_MUTEX_INITIALIZER;
static struct tsr_cache *current;
/* Whether current is set, read without the lock: with no cache (the default) a tile costs no
 * lock at all. A reader that misses a change made meanwhile reads that tile the other way. */
static atomic_bool have_cache;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

struct tsr_cache *tsr_cache_acquire(void) {
  if (!atomic_load_explicit(&have_cache, memory_order_relaxed))
    return NULL;
  pthread_mutex_lock(&current_lock);
  struct tsr_cache *c = current;
  if (c)
    c->refs++;
  pthread_mutex_unlock(&current_lock);
  return c;
}

void tsr_cache_release(struct tsr_cache *c) {
  if (!c)
    return;
  pthread_mutex_lock(&current_lock);
  bool last = --c->refs == 0;
  pthread_mutex_unlock(&current_lock);
  if (last)
    c->ops->destroy(c);
}

static void before_fork(void) { pthread_mutex_lock(&current_lock); }
static void after_fork_parent(void) { pthread_mutex_unlock(&current_lock); }

/* A forked child (a DataLoader worker, say) gets the cache its kind gives it: a fresh empty
 * per-process cache, or its own attachment to the same shared segment. */
static void after_fork_child(void) {
  pthread_mutex_unlock(&current_lock); /* taken by this thread in before_fork */
  if (current) {
    current = current->ops->fork_child(current);
    atomic_store(&have_cache, current != NULL);
  }
}

static void register_atfork(void) {
  pthread_atfork(before_fork, after_fork_parent, after_fork_child);
}

/* At exit a shared cache tells the other processes this one is gone (and the last one
 * removes the segment). Nothing is freed: pool threads may still be reading. */
__attribute__((destructor)) static void cache_at_exit(void) {
  pthread_mutex_lock(&current_lock);
  if (current && current->ops->exiting)
    current->ops->exiting(current);
  pthread_mutex_unlock(&current_lock);
}

TESSERA_API void tessera_cache_options_init(tessera_cache_options *o) {
  if (!o)
    return;
  memset(o, 0, sizeof *o);
  o->struct_size = sizeof *o;
  o->type = TESSERA_CACHE_NONE;
  o->memory_capacity_mib = 1024;
  o->item_capacity = 0;
  o->record_stats = 0;
  o->name = NULL;
}

TESSERA_API tessera_status tessera_cache_configure(const tessera_cache_options *options) {
  tessera_cache_options o;
  tessera_cache_options_init(&o);
  if (!options || options->struct_size < sizeof(size_t))
    return tsr_error(TESSERA_E_ARGUMENT, "NULL cache options, or options without struct_size");
  memcpy(&o, options, options->struct_size < sizeof o ? options->struct_size : sizeof o);
  o.struct_size = sizeof o;
  if (o.type != TESSERA_CACHE_NONE && o.type != TESSERA_CACHE_PER_PROCESS &&
      o.type != TESSERA_CACHE_SHARED_MEMORY)
    return tsr_error(TESSERA_E_ARGUMENT, "unknown cache type %d", (int)o.type);
  if (o.type != TESSERA_CACHE_NONE &&
      (o.memory_capacity_mib < 1 || o.memory_capacity_mib > ((uint64_t)1 << 30)))
    return tsr_error(TESSERA_E_ARGUMENT, "memory_capacity_mib must be 1 .. 2^30, not %llu",
                     (unsigned long long)o.memory_capacity_mib);
  pthread_once(&atfork_once, register_atfork);
  struct tsr_cache *fresh = NULL;
  if (o.type == TESSERA_CACHE_PER_PROCESS && !(fresh = tsr_process_cache_create(&o)))
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a cache");
  if (o.type == TESSERA_CACHE_SHARED_MEMORY) {
    tessera_status st = tsr_shared_cache_create(&o, &fresh);
    if (st != TESSERA_OK)
      return st;
  }
  pthread_mutex_lock(&current_lock);
  struct tsr_cache *old = current;
  current = fresh;
  atomic_store(&have_cache, fresh != NULL);
  bool last = old && --old->refs == 0;
  pthread_mutex_unlock(&current_lock);
  if (last)
    old->ops->destroy(old);
  return TESSERA_OK;
}

TESSERA_API tessera_status tessera_cache_stats_get(tessera_cache_stats *stats) {
  if (!stats || stats->struct_size < sizeof(size_t))
    return tsr_error(TESSERA_E_ARGUMENT, "NULL stats, or stats without struct_size");
  tessera_cache_stats t = {.struct_size = sizeof t, .type = TESSERA_CACHE_NONE};
  struct tsr_cache *c = tsr_cache_acquire();
  if (c) {
    t.type = c->type;
    t.record_stats = c->record_stats;
    c->ops->stats(c, &t);
  }
  tsr_cache_release(c);
  size_t n = stats->struct_size < sizeof t ? stats->struct_size : sizeof t;
  memcpy(stats, &t, n);
  stats->struct_size = n;
  return TESSERA_OK;
}

TESSERA_API void tessera_cache_stats_reset(int32_t record_stats) {
  struct tsr_cache *c = tsr_cache_acquire();
  if (!c)
    return;
  if (record_stats >= 0)
    c->record_stats = record_stats != 0;
  c->ops->reset_stats(c);
  tsr_cache_release(c);
}
