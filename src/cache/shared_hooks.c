/* The shared cache's test hooks, built only with the test_hooks build option (meson
 * -Dtest_hooks=true; dev.sh's builds): a release library never reads
 * TESSERA_TEST_CACHE_STALL, and has no routine that checks or scribbles over a segment.
 * The hook's settings are read once when a shared cache is configured, and then only read
 * (its point and count are atomic). */
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "alloc.h"
#include "cache/segment.h"
#include "cache/shared_hooks.h"
#include "cache/shared_index.h"

/* TESSERA_TEST_CACHE_STALL=POINT:N:PATH, read when a shared cache is configured: the N-th
 * tile this process publishes (POINT "locked": holding the shard lock, halfway through
 * linking the tile; POINT "copying": before that, no lock held, halfway through copying the
 * tile into its chunks), reserves (POINT "loading": the lock let go, before decoding) or hits
 * (POINT "reading": the lock let go, its rows mapped, before they are painted), or the N-th
 * segment it makes (POINT "making": locked, its magic written, not ready; POINT "created":
 * the file just created, not yet locked), stalls for good, after writing the pid to PATH;
 * with "stop" before POINT it stops itself (SIGSTOP) instead, to go on when continued.
 * Tests stop, continue or kill it there. With "pause" before POINT, every N-th call there
 * pauses for PAUSE_NS and goes on (PATH unused): a window for others to race into. */
#define PAUSE_NS 2000000ull
static struct {
  atomic_int point;
  bool stop, pause;
  long n;
  char path[512];
  atomic_long count;
  atomic_ulong overwritten; /* hits found overwritten after they were read */
} hook;

void tsr_hook_read_env(void) {
  const char *v = secure_getenv("TESSERA_TEST_CACHE_STALL");
  atomic_store(&hook.point, TSR_HOOK_NONE);
  if (!v)
    return;
  char point[16];
  long n;
  int used = 0;
  if (sscanf(v, "%15[a-z]:%ld:%n", point, &n, &used) != 2 || used == 0 || n < 1)
    return;
  snprintf(hook.path, sizeof hook.path, "%s", v + used);
  hook.n = n;
  hook.stop = strncmp(point, "stop", 4) == 0; /* not at "locked": it would go on halfway */
  hook.pause = strncmp(point, "pause", 5) == 0;
  const char *p = point + (hook.stop ? 4 : hook.pause ? 5 : 0);
  atomic_store(&hook.count, 0);
  bool locked = strcmp(p, "locked") == 0 && !hook.stop && !hook.pause;
  atomic_store(&hook.point, locked                      ? TSR_HOOK_LOCKED
                            : strcmp(p, "loading") == 0 ? TSR_HOOK_LOADING
                            : strcmp(p, "making") == 0  ? TSR_HOOK_MAKING
                            : strcmp(p, "created") == 0 ? TSR_HOOK_CREATED
                            : strcmp(p, "reading") == 0 ? TSR_HOOK_READING
                            : strcmp(p, "copying") == 0 ? TSR_HOOK_COPYING
                                                        : TSR_HOOK_NONE);
}

bool tsr_hook_due(enum tsr_hook_point point) {
  if (atomic_load_explicit(&hook.point, memory_order_relaxed) != (int)point)
    return false;
  long count = atomic_fetch_add(&hook.count, 1) + 1;
  return hook.pause ? count % hook.n == 0 : count == hook.n;
}

void tsr_hook_stall(void) {
  if (hook.pause) {
    sleep_ns(PAUSE_NS);
    return;
  }
  int fd = open(hook.path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd >= 0) {
    char buf[32];
    int len = snprintf(buf, sizeof buf, "%d\n", (int)getpid());
    if (write(fd, buf, (size_t)len) < 0)
      (void)0;
    close(fd);
  }
  if (hook.stop) {
    raise(SIGSTOP);
    return;
  }
  for (;;)
    pause();
}

void tsr_hook_count_overwritten(void) { atomic_fetch_add(&hook.overwritten, 1); }

unsigned long tsr_shared_cache_overwritten(void) { return atomic_load(&hook.overwritten); }

/* ---- a consistency check, and writers that break the index, for tests ---- */

#define VERIFY(cond, ...)                                                                          \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      snprintf(why, n, __VA_ARGS__);                                                               \
      return false;                                                                                \
    }                                                                                              \
  } while (0)

/* Walks queue q of the shard, checking its links, entries and byte count. */
static bool verify_queue(const struct view *v, int q, uint32_t *count, char *why, size_t n) {
  const struct shard *sh = v->sh;
  const struct entry *E = v->E;
  uint32_t i = q == Q_SMALL ? sh->small_head : sh->main_head, prev = NIL, steps = 0;
  uint64_t bytes = 0;
  for (; i != NIL; prev = i, i = E[i].next) {
    VERIFY(i < v->entries && steps++ < v->entries, "queue %d runs out of range or loops", q);
    VERIFY(E[i].prev == prev, "queue %d: entry %u's back link is wrong", q, i);
    VERIFY(E[i].state == READY && E[i].queue == q, "queue %d holds entry %u in state %d", q, i,
           E[i].state);
    bytes += E[i].bytes;
  }
  VERIFY(prev == (q == Q_SMALL ? sh->small_tail : sh->main_tail), "queue %d: wrong tail", q);
  VERIFY(bytes == (q == Q_SMALL ? sh->small_bytes : sh->main_bytes),
         "queue %d counts %llu bytes, holds %llu", q,
         (unsigned long long)(q == Q_SMALL ? sh->small_bytes : sh->main_bytes),
         (unsigned long long)bytes);
  *count = steps;
  return true;
}

static bool verify_shard(const struct view *v, uint8_t *mark, char *why, size_t n) {
  const struct shard *sh = v->sh;
  const struct entry *E = v->E;
  memset(mark, 0, v->chunks);
  uint64_t items = 0, bytes = 0, ready = 0, free_entries = 0;
  for (uint32_t i = 0; i < v->entries; i++) {
    if (E[i].state == FREE)
      continue;
    VERIFY(E[i].state == READY || E[i].state == LOADING || E[i].state == OVERTAKEN,
           "entry %u in state %d", i, E[i].state);
    VERIFY(tsr_shared_entry_whole(v, i), "entry %u is not whole (seal or chunk chain)", i);
    items++;
    bytes += E[i].bytes;
    ready += E[i].state == READY;
    uint32_t found = 0, steps = 0;
    for (uint32_t j = *bucket(v, tsr_cache_key_hash(&E[i].key)); j != NIL; j = E[j].hnext) {
      VERIFY(j < v->entries && steps++ < v->entries, "a hash chain runs out of range or loops");
      found += j == i;
    }
    /* an overtaken entry is out of the index, its chunks still its loader's */
    VERIFY(found == (E[i].state != OVERTAKEN), "entry %u (state %d) is in its hash chain %u times",
           i, E[i].state, found);
    uint32_t k = E[i].first;
    for (uint32_t s = 0; s < chunks_for(E[i].bytes); s++, k = v->next[k]) {
      VERIFY(k < v->chunks && !mark[k], "entry %u's chunks run out of range or overlap", i);
      mark[k] = 1;
      if (s + 1 == chunks_for(E[i].bytes))
        break;
    }
  }
  VERIFY(items == sh->items && bytes == sh->bytes,
         "the shard counts %llu items of %llu bytes, "
         "its entries %llu of %llu",
         (unsigned long long)sh->items, (unsigned long long)sh->bytes, (unsigned long long)items,
         (unsigned long long)bytes);
  for (uint32_t i = sh->free_entries, steps = 0; i != NIL; i = E[i].hnext, free_entries++) {
    VERIFY(i < v->entries && steps++ < v->entries, "the free entries run out of range or loop");
    VERIFY(E[i].state == FREE, "free list holds entry %u in state %d", i, E[i].state);
  }
  VERIFY(free_entries + items == v->entries, "%llu free entries and %llu in use, of %u",
         (unsigned long long)free_entries, (unsigned long long)items, v->entries);
  uint32_t in_small, in_main;
  if (!verify_queue(v, Q_SMALL, &in_small, why, n) || !verify_queue(v, Q_MAIN, &in_main, why, n))
    return false;
  VERIFY(in_small + in_main == ready, "%u queued, %llu ready", in_small + in_main,
         (unsigned long long)ready);
  uint32_t free_chunks = 0;
  for (uint32_t k = sh->free_chunks; k != NIL; k = v->next[k], free_chunks++) {
    VERIFY(k < v->chunks && !mark[k], "free chunk %u out of range or in use", k);
    VERIFY(v->owner[k] == 0, "free chunk %u is tagged as an entry's", k);
    mark[k] = 1;
  }
  VERIFY(free_chunks == sh->nfree_chunks, "%u free chunks listed, %u counted", free_chunks,
         sh->nfree_chunks);
  for (uint32_t k = 0; k < v->chunks; k++)
    VERIFY(mark[k], "chunk %u is neither used nor free", k);
  return true;
}

bool tsr_shared_cache_verify(char *why, size_t n) {
  snprintf(why, n, "no shared cache");
  struct tsr_cache *base = tsr_cache_acquire();
  if (!base || base->type != TESSERA_CACHE_SHARED_MEMORY) {
    tsr_cache_release(base);
    return false;
  }
  struct shared_cache *c = (struct shared_cache *)base;
  uint8_t *mark = tsr_malloc(c->chunks);
  bool ok = mark != NULL;
  for (uint32_t i = 0; ok && i < c->nshards; i++) {
    if (!tsr_shared_lock_shard(c, i)) {
      snprintf(why, n, "shard %u cannot be locked", i);
      ok = false;
      break;
    }
    struct view v = view_of(c, i);
    ok = verify_shard(&v, mark, why, n);
    unlock_shard(v.sh);
  }
  tsr_free(mark);
  tsr_cache_release(base);
  return ok;
}

unsigned tsr_shared_cache_in_flight(void) {
  struct tsr_cache *base = tsr_cache_acquire();
  if (!base || base->type != TESSERA_CACHE_SHARED_MEMORY) {
    tsr_cache_release(base);
    return UINT_MAX;
  }
  struct shared_cache *c = (struct shared_cache *)base;
  unsigned n = 0;
  for (uint32_t si = 0; si < c->nshards; si++) {
    if (!tsr_shared_lock_shard(c, si)) {
      n = UINT_MAX;
      break;
    }
    struct view v = view_of(c, si);
    for (uint32_t i = 0; i < v.entries; i++)
      n += v.E[i].state == LOADING || v.E[i].state == OVERTAKEN;
    unlock_shard(v.sh);
  }
  tsr_cache_release(base);
  return n;
}

/* For tests: writes n values over the current shared cache's index, where any process with
 * write access could: the header (not its lock), the shards' fields (not their locks), their
 * entries, hash buckets, chunk links and chunk tags. Each shard's part under its lock, as a
 * buggy user of the segment would; values are random, or indices of the right size. */
bool tsr_shared_cache_scribble(uint64_t *seed, unsigned n) {
  struct tsr_cache *base = tsr_cache_acquire();
  if (!base || base->type != TESSERA_CACHE_SHARED_MEMORY) {
    tsr_cache_release(base);
    return false;
  }
  struct shared_cache *c = (struct shared_cache *)base;
  for (unsigned w = 0; w < n; w++) {
    uint64_t r = *seed = *seed * 6364136223846793005ull + 1442695040888963407ull;
    uint64_t pick = r >> 33;
    uint32_t value = (uint32_t)(r >> 7) % 4 == 0   ? NIL
                     : (uint32_t)(r >> 9) % 2 == 0 ? (uint32_t)(r >> 11) % (c->entries + 2)
                                                   : (uint32_t)(r >> 20);
    uint32_t si = (uint32_t)(pick % c->nshards);
    struct view v = view_of(c, si);
    uint8_t *at;
    switch ((pick >> 8) % 6) {
    case 0: { /* the header's fields before its lock, and the seat incarnations */
      size_t before = offsetof(struct header, users_lock);
      size_t incarnations = offsetof(struct header, incarnation);
      size_t span = before + sizeof c->h->incarnation;
      size_t off = (pick >> 12) % span / 4 * 4;
      at = (uint8_t *)c->h + (off < before ? off : incarnations + (off - before));
      if (off < 8)
        continue; /* the magic: listings would lose it */
      break;
    }
    case 1: {
      size_t first = align_up(sizeof(pthread_mutex_t), 8);
      at = (uint8_t *)v.sh + first + (pick >> 12) % ((sizeof *v.sh - first) / 4) * 4;
      break;
    }
    case 2: at = (uint8_t *)v.E + (pick >> 12) % ((uint64_t)v.entries * sizeof *v.E / 4) * 4; break;
    case 3: at = (uint8_t *)&v.B[(pick >> 12) % v.buckets]; break;
    case 4: at = (uint8_t *)&v.next[(pick >> 12) % v.chunks]; break;
    default: at = (uint8_t *)v.owner + (pick >> 12) % ((uint64_t)v.chunks * 2) * 4; break;
    }
    bool shard_part = ((pick >> 8) % 6) != 0;
    if (shard_part && !tsr_shared_lock_shard(c, si))
      continue;
    memcpy(at, &value, sizeof value);
    if (shard_part)
      unlock_shard(v.sh);
  }
  tsr_cache_release(base);
  return true;
}

/* For tests: a word of the most read ready tile of the current shared cache, which another
 * process could write at any moment: its chain head (which 0) or the link after its first
 * chunk (1); or the loader's user seat of a tile being loaded (2). NULL if there is no such
 * tile. */
uint32_t *tsr_shared_cache_hot_word(int which) {
  struct tsr_cache *base = tsr_cache_acquire();
  if (!base || base->type != TESSERA_CACHE_SHARED_MEMORY) {
    tsr_cache_release(base);
    return NULL;
  }
  struct shared_cache *c = (struct shared_cache *)base;
  uint32_t *word = NULL;
  unsigned best = 0;
  for (uint32_t si = 0; si < c->nshards; si++) {
    if (!tsr_shared_lock_shard(c, si))
      continue;
    struct view v = view_of(c, si);
    for (uint32_t i = 0; i < v.entries; i++) {
      if (which == 2) {
        if (v.E[i].state == LOADING)
          word = &v.E[i].loader_seat;
        continue;
      }
      uint32_t first = once32(&v.E[i].first);
      if (v.E[i].state == READY && v.E[i].freq + 1u > best && first < v.chunks) {
        best = v.E[i].freq + 1u;
        word = which == 0 ? &v.E[i].first : &v.next[first];
      }
    }
    unlock_shard(v.sh);
  }
  tsr_cache_release(base); /* the segment stays mapped while it is configured */
  return word;
}

/* For tests: gives the most read ready tile of the current shared cache a size of `bytes`,
 * sealed again, as a writer that knows how to seal could. False if there is no such tile. */
bool tsr_shared_cache_hot_resize(uint64_t bytes) {
  struct tsr_cache *base = tsr_cache_acquire();
  if (!base || base->type != TESSERA_CACHE_SHARED_MEMORY) {
    tsr_cache_release(base);
    return false;
  }
  struct shared_cache *c = (struct shared_cache *)base;
  struct entry *hot = NULL;
  uint32_t hot_si = 0, hot_i = 0;
  unsigned best = 0;
  for (uint32_t si = 0; si < c->nshards; si++) {
    struct view v = view_of(c, si);
    for (uint32_t i = 0; i < v.entries; i++)
      if (v.E[i].state == READY && v.E[i].freq + 1u > best) {
        best = v.E[i].freq + 1u;
        hot = &v.E[i];
        hot_si = si;
        hot_i = i;
      }
  }
  if (hot && tsr_shared_lock_shard(c, hot_si)) {
    hot->bytes = bytes;
    tsr_shared_seal(hot, hot_i);
    unlock_shard(shard_at(c, hot_si));
  }
  tsr_cache_release(base);
  return hot != NULL;
}
