/* The shared-memory tile cache: one named POSIX shared-memory segment (/dev/shm/NAME) holding
 * the index and the decoded tiles, used by every process attached to it.
 *
 * In memory: a header (geometry, a table of user seats), then up to 16 shards, each with its
 * own robust process-shared mutex, hash table, S3-FIFO queues (as in process.c) and its own
 * part of the tile memory, cut into 64 KiB chunks. A tile takes the chunks its bytes need,
 * chained through a per-chunk `next` array, so memory never fragments and the byte budget is
 * the chunk memory itself. Everything is addressed by index, never by pointer: each process
 * maps the segment at its own address.
 *
 * Nothing read from the segment is trusted. Only its owner may attach, and only to a segment
 * closed to group and others; the geometry is copied at attach and the shards' arrays placed
 * from that copy; every index taken from the segment is range-checked and every walk bounded
 * before it is followed. An entry carries a seal (a hash of its key, size, chain head, state
 * and loader), and each chunk in use names its entry and its place in that entry's chain, so
 * a hit reads only chunks that are provably the tile's. A shard found inconsistent is rebuilt
 * from what still checks out; the read goes around the cache.
 *
 * A process may be killed or stopped at any moment, so nothing it holds may cost others more
 * than a bounded wait:
 * - A hit looks its tile up under the shard's lock, notes where its chunks are and the
 *   entry's count of frees, and lets the lock go; the caller then paints from the chunks in
 *   place, with no lock and no pin (a pin would outlive a killed reader), and checks at
 *   tsr_cache_done that the count has not moved. If it has, the tile was evicted while it
 *   was read and its chunks may hold another's pixels: the caller paints again without the
 *   cache. A reader stopped while it paints thus holds nothing: a hit holds the lock only
 *   for index work, whose length is bounded by the shard's size. (lookup says why the check
 *   suffices.)
 * - Every wait for a shard lock is bounded (LOCK_WAIT_NS). A wait that runs out marks the
 *   shard stuck for this process for STUCK_NS, during which it only tries the lock, and goes
 *   around the cache: a process stopped holding a lock (SIGSTOP, a debugger, a frozen cgroup)
 *   costs the others one wait per shard, not a hang.
 * - A miss reserves the entry and its chunks (LOADING, stamped with the loader's user seat and
 *   that seat's incarnation, and a ticket) under the lock, noting where the chunks lie; then,
 *   without the lock, it decodes and copies the tile into them; then it takes the lock again
 *   only to publish it (READY, sealed, queued), if its ticket still stands. The chunks are the
 *   reservation's alone until then: others wanting the tile poll; if its loader has died (or
 *   gave the entry up, not able to lock the shard) they free the entry and load the tile
 *   themselves; if it is alive but has not published after LOAD_WAIT_NS, they detach the
 *   entry (OVERTAKEN: out of the index, its chunks still its loader's, counted against the
 *   shard's room) and load the tile into chunks of their own. A stopped loader thus costs
 *   one wait, once, and pins one tile per thread of it that was loading; when it goes on, it
 *   finishes its copy into its own chunks, finds itself overtaken and frees them; if it dies
 *   first, the sweep of dead loaders frees them. A rebuild keeps a live loader's chunks too.
 *   A process detaching (at exit, say) lets its seat, and with it its chunks, go only once
 *   none of its threads is copying.
 * - A process killed while holding a shard lock leaves it to the next locker as EOWNERDEAD.
 *   The lists of a shard (hash chains, queues, free lists) are derived data; an entry's state,
 *   key, size, seal and chunk chain are the truth. The next locker rebuilds the lists from the
 *   entries, keeping the sealed ready tiles whose chunk chains check out and the tiles of live
 *   loaders, and drops the rest: whatever the dead process was writing.
 *
 * Liveness is what the kernel says, not /proc: each attachment holds an open file description
 * of the segment and on it an OFD lock of one byte, at the offset of its user seat. The
 * kernel drops the lock when the process dies, in whatever pid namespace either process runs
 * (two containers sharing /dev/shm see each other's pids as nothing, or as others). A forked
 * child opens its own description before it takes a seat: the one it inherits is its
 * parent's, and its locks with it.
 *
 * The segment lives as long as some process uses it: the last attachment to detach removes
 * the name. A maker holds an exclusive flock on the segment until it is ready; a segment that
 * has tessera's magic, is not ready, and can be locked was left by a maker that died: the
 * next process to want the name removes it and makes a new one.
 *
 * The files: this one holds each shard's index (hash chains, queues, chunk chains, repair)
 * and the cache operations of cache.h; segment.h the segment's parts and an attachment;
 * segment.c making, attaching, users, liveness and listing; shared_hooks.c the test hooks,
 * built only with the test_hooks option. This one is over 800 lines: who may write a chunk
 * when (reserve, copy_in, detach, free_entry, rebuild) and what a hit may then trust
 * (lookup, done) are one argument, best read in one file. */
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "cache/s3fifo.h"
#include "cache/segment.h"
#include "cache/shared_hooks.h"
#include "cache/shared_index.h"

#if TSR_TSAN
/* ThreadSanitizer's runtime: the calling thread's memory accesses go unchecked between these. */
void __tsan_ignore_thread_begin(void);
void __tsan_ignore_thread_end(void);
#endif

/* A hit's bytes are read without the lock, and may race with a write that reuses their chunks:
 * such a read is thrown away (done), which ThreadSanitizer cannot know. Its checks are off
 * from the hit's lookup to its done, in this thread only (which paints the caller's canvases
 * meanwhile: those writes go unchecked too; they are checked on every read without a cache). */
static inline void ignore_racy_reads(bool on) {
#if TSR_TSAN
  if (on)
    __tsan_ignore_thread_begin();
  else
    __tsan_ignore_thread_end();
#else
  (void)on;
#endif
}

/* ---- one shard's index (its lock held) ----
 * A function returning bool returns false when it finds the shard inconsistent (an index out
 * of range, a link that does not lead back, a walk longer than the shard): the caller
 * rebuilds it and goes around the cache. */

/* An overtaken entry seals as a loading one: detach makes it so with one store, which leaves
 * it sealed whatever point its maker dies at (detach says why that matters). */
static uint32_t seal_of(const struct entry *e, uint32_t i) {
  uint64_t x = tsr_cache_key_hash(&e->key);
  uint64_t state = e->state == OVERTAKEN ? LOADING : e->state;
  const uint64_t parts[] = {e->bytes, ((uint64_t)e->first << 32) | e->ticket,
                            ((uint64_t)e->loader_seat << 32) | e->loader_incarnation,
                            (state << 32) | i};
  for (size_t p = 0; p < sizeof parts / sizeof parts[0]; p++) {
    x ^= parts[p] + 0x9E3779B97F4A7C15u + (x << 6) + (x >> 2);
    x *= 0xBF58476D1CE4E5B9u;
  }
  return (uint32_t)((x ^ (x >> 31)) >> 16);
}

void tsr_shared_seal(struct entry *e, uint32_t i) { e->seal = seal_of(e, i); }

/* Sets *at to the entry holding key k, or NIL. */
static bool find(const struct view *v, const struct tsr_cache_key *k, uint64_t hash, uint32_t *at) {
  uint32_t steps = 0;
  for (uint32_t i = once32(bucket(v, hash)); i != NIL; i = once32(&v->E[i].hnext)) {
    if (i >= v->entries || steps++ >= v->entries)
      return false;
    if (tsr_cache_key_equal(&v->E[i].key, k)) {
      *at = i;
      return true;
    }
  }
  *at = NIL;
  return true;
}

static bool queue_push(const struct view *v, uint32_t i, int q) {
  struct shard *sh = v->sh;
  uint32_t *head = q == Q_SMALL ? &sh->small_head : &sh->main_head;
  uint32_t *tail = q == Q_SMALL ? &sh->small_tail : &sh->main_tail;
  uint32_t old = once32(head);
  if (old != NIL && old >= v->entries)
    return false;
  struct entry *e = &v->E[i];
  e->queue = (uint8_t)q;
  e->prev = NIL;
  e->next = old;
  if (old != NIL)
    v->E[old].prev = i;
  else
    *tail = i;
  *head = i;
  *(q == Q_SMALL ? &sh->small_bytes : &sh->main_bytes) += e->bytes;
  return true;
}

static bool queue_unlink(const struct view *v, uint32_t i) {
  struct shard *sh = v->sh;
  struct entry *e = &v->E[i];
  int q = e->queue;
  if (q == Q_NONE)
    return true;
  if (q != Q_SMALL && q != Q_MAIN)
    return false;
  uint32_t *head = q == Q_SMALL ? &sh->small_head : &sh->main_head;
  uint32_t *tail = q == Q_SMALL ? &sh->small_tail : &sh->main_tail;
  uint32_t prev = once32(&e->prev), next = once32(&e->next);
  if ((prev != NIL && (prev >= v->entries || v->E[prev].next != i)) ||
      (next != NIL && (next >= v->entries || v->E[next].prev != i)) ||
      (prev == NIL && *head != i) || (next == NIL && *tail != i))
    return false;
  if (prev != NIL)
    v->E[prev].next = next;
  else
    *head = next;
  if (next != NIL)
    v->E[next].prev = prev;
  else
    *tail = prev;
  *(q == Q_SMALL ? &sh->small_bytes : &sh->main_bytes) -= e->bytes;
  e->queue = Q_NONE;
  return true;
}

/* Follows entry i's chain of chunks to its s-th chunk's successor: k is its s-th chunk. */
static bool chain_next(const struct view *v, uint32_t i, uint32_t s, uint32_t k, uint32_t *out) {
  uint32_t n = once32(&v->next[k]);
  if (n >= v->chunks || v->owner[n] != owner_tag(i, s + 1))
    return false;
  *out = n;
  return true;
}

/* Whether k, read as entry i's first chunk, is tagged so. */
static bool chain_head(const struct view *v, uint32_t i, uint32_t k) {
  return k < v->chunks && v->owner[k] == owner_tag(i, 0);
}

/* Marks entry e FREE, counting the free first: a hit still reading its chunks sees the count
 * moved before anyone can write them (lookup says why). */
static void vacate(struct entry *e) {
  atomic_fetch_add_explicit(&e->frees, 1, memory_order_relaxed);
  e->state = FREE;
}

/* Takes entry i out of its hash chain, if it is in it. */
static bool unhash(const struct view *v, uint32_t i, uint64_t hash) {
  uint32_t *p = bucket(v, hash), j;
  for (uint32_t steps = 0; (j = once32(p)) != i && j != NIL; p = &v->E[j].hnext)
    if (j >= v->entries || steps++ >= v->entries)
      return false;
  if (j == i)
    *p = v->E[i].hnext;
  return true;
}

/* Frees entry i (ready, loading or overtaken): its chunks and entry go back to the free lists.
 * Its state changes first, so a process killed halfway leaves nothing that a rebuild would
 * keep. */
static bool free_entry(const struct view *v, uint32_t i) {
  struct shard *sh = v->sh;
  struct entry *e = &v->E[i];
  const struct entry s = snapshot(e);
  if (s.seal != seal_of(&s, i))
    return false; /* its size and chain cannot be believed */
  vacate(e);
  atomic_signal_fence(memory_order_seq_cst); /* FREE before the lists change */
  if (!unhash(v, i, tsr_cache_key_hash(&s.key)) || !queue_unlink(v, i))
    return false;
  uint64_t n = chunks_for(s.bytes);
  uint32_t last = s.first;
  if (n == 0 || n > v->chunks || !chain_head(v, i, last))
    return false;
  /* Each chunk's successor is checked to be the entry's before its tag is cleared; a chain
   * found broken halfway leaves chunks tagged free but unlisted, which the rebuild lists. */
  for (uint32_t at = 0; at + 1 < n; at++) {
    uint32_t after;
    if (!chain_next(v, i, at, last, &after))
      return false;
    v->owner[last] = 0;
    last = after;
  }
  v->owner[last] = 0;
  v->next[last] = sh->free_chunks;
  sh->free_chunks = s.first;
  sh->nfree_chunks += (uint32_t)n;
  sh->items--;
  sh->bytes -= s.bytes;
  e->hnext = sh->free_entries;
  sh->free_entries = i;
  return true;
}

/* The shard's side of the eviction policy (s3fifo.h): entries by index, each checked before
 * it is used. Tiles being loaded are in no queue and never evicted. */
static bool oldest(void *view, bool small, uintptr_t *out, bool *found) {
  const struct view *v = view;
  uint32_t i = once32(small ? &v->sh->small_tail : &v->sh->main_tail);
  *found = i != NIL;
  *out = i;
  return i == NIL || (i < v->entries && v->E[i].queue == (small ? Q_SMALL : Q_MAIN));
}

static uint8_t *entry_freq(void *view, uintptr_t i) {
  return &((const struct view *)view)->E[i].freq;
}

static bool to_main(void *view, uintptr_t i, bool small) {
  (void)small; /* the entry says which queue it is in */
  return queue_unlink(view, (uint32_t)i) && queue_push(view, (uint32_t)i, Q_MAIN);
}

static bool evict(void *view, uintptr_t i, bool small) {
  (void)small;
  return queue_unlink(view, (uint32_t)i) && free_entry(view, (uint32_t)i);
}

static const struct tsr_s3fifo_ops s3fifo_ops = {
    .oldest = oldest, .freq = entry_freq, .to_main = to_main, .evict = evict};

/* Evicts one tile; *evicted false when the queues are empty. */
static bool evict_one(const struct view *v, bool *evicted) {
  enum tsr_s3fifo_result r = tsr_s3fifo_evict_one(&s3fifo_ops, (void *)v, &v->sh->small_bytes,
                                                  (uint64_t)v->chunks * CHUNK_BYTES, v->entries);
  *evicted = r == TSR_S3FIFO_EVICTED;
  if (*evicted)
    v->sh->evictions++;
  return r != TSR_S3FIFO_BROKEN;
}

/* Whether entry i (loading or overtaken) is being loaded by nobody: its loader gave it up
 * (acquire: the loader's writes to its chunks come before), or died (asking the kernel, with
 * ask). */
static bool loader_gone(const struct shared_cache *c, const struct entry *e, bool ask) {
  return atomic_load_explicit(&e->given_up, memory_order_acquire) == e->ticket ||
         (ask && !tsr_segment_loader_alive(c, e));
}

static bool in_flight(const struct entry *e) {
  return e->state == LOADING || e->state == OVERTAKEN;
}

/* Frees the entries whose loaders died or gave them up while decoding or copying; *n: how
 * many. With nothing left to evict, some entry must be in flight: if none is, the shard's
 * counts are wrong. */
static bool sweep_dead_loaders(const struct shared_cache *c, const struct view *v, unsigned *n) {
  unsigned loading = 0;
  *n = 0;
  for (uint32_t i = 0; i < v->entries; i++)
    if (in_flight(&v->E[i])) {
      loading++;
      if (!loader_gone(c, &v->E[i], true))
        continue;
      if (!free_entry(v, i))
        return false;
      (*n)++;
    }
  return loading > 0;
}

/* Whether entry i is whole: sealed, of a sane size, its chain in range and each chunk tagged
 * as its own, at its place. */
bool tsr_shared_entry_whole(const struct view *v, uint32_t i) {
  const struct entry e = snapshot(&v->E[i]);
  uint64_t n = chunks_for(e.bytes);
  if (e.seal != seal_of(&e, i) || e.bytes == 0 || n > v->chunks || !chain_head(v, i, e.first))
    return false;
  for (uint32_t s = 0, k = e.first; s + 1 < n; s++)
    if (!chain_next(v, i, s, k, &k))
      return false;
  return true;
}

/* After a process died holding the shard's lock, or the shard was found inconsistent:
 * rebuilds the lists from the entries that are whole. Reads only indices it checks. A live
 * loader's reservation is never freed here (it may be copying into its chunks, without the
 * lock): one found beside another entry of its key is made overtaken instead. Only one whose
 * seal or chain was written over by another process is lost: such a writer can put any pixels
 * in the chunks anyway. */
static void rebuild(const struct shared_cache *c, const struct view *v) {
  struct shard *sh = v->sh;
  struct entry *E = v->E;
  for (uint32_t b = 0; b < v->buckets; b++)
    v->B[b] = NIL;
  sh->small_head = sh->small_tail = sh->main_head = sh->main_tail = NIL;
  sh->small_bytes = sh->main_bytes = 0;
  sh->items = sh->bytes = 0;
  sh->free_entries = NIL;
  for (uint32_t i = v->entries; i-- > 0;) {
    struct entry *e = &E[i];
    bool keep = (e->state == READY || (in_flight(e) && !loader_gone(c, e, true))) &&
                tsr_shared_entry_whole(v, i);
    uint64_t hash = tsr_cache_key_hash(&e->key);
    uint32_t dup = NIL;
    if (keep && e->state != OVERTAKEN && (!find(v, &e->key, hash, &dup) || dup != NIL)) {
      if (e->state == READY)
        keep = false; /* a duplicate: the first one found stays */
      else
        e->state = OVERTAKEN; /* one store: sealed as it was */
    }
    e->queue = Q_NONE;
    if (keep) {
      if (e->state != OVERTAKEN) {
        e->hnext = *bucket(v, hash);
        *bucket(v, hash) = i;
      }
      if (e->state == READY) {
        e->freq = 0;
        queue_push(v, i, Q_MAIN); /* cannot fail: the queue was built here */
      }
      sh->items++;
      sh->bytes += e->bytes;
    } else {
      vacate(e); /* its chunks may be freed below: a hit reading them must know */
      e->hnext = sh->free_entries;
      sh->free_entries = i;
    }
  }
  /* A chunk stays in use if its tag names a kept entry's place; the rest are free. */
  sh->free_chunks = NIL;
  sh->nfree_chunks = 0;
  for (uint32_t k = v->chunks; k-- > 0;) {
    uint64_t t = once64(&v->owner[k]);
    uint32_t i = (uint32_t)(t >> 32) - 1, s = (uint32_t)t;
    if (t != 0 && i < v->entries && E[i].state != FREE && s < chunks_for(E[i].bytes))
      continue;
    v->owner[k] = 0;
    v->next[k] = sh->free_chunks;
    sh->free_chunks = k;
    sh->nfree_chunks++;
  }
}

/* Locks shard si, repairing it if its last holder died; false if it cannot be locked within
 * LOCK_WAIT_NS, or at once while the shard is marked stuck. */
bool tsr_shared_lock_shard(struct shared_cache *c, uint32_t si) {
  struct shard *sh = shard_at(c, si);
  uint64_t now = monotonic_ns();
  bool stuck = now < atomic_load_explicit(&c->stuck_until[si], memory_order_relaxed);
  int r = lock_within(&sh->lock, stuck ? 0 : LOCK_WAIT_NS);
  if (r == ETIMEDOUT || r == EBUSY) {
    if (!stuck)
      atomic_store_explicit(&c->stuck_until[si], monotonic_ns() + STUCK_NS, memory_order_relaxed);
    return false;
  }
  if (stuck && (r == 0 || r == EOWNERDEAD))
    atomic_store_explicit(&c->stuck_until[si], 0, memory_order_relaxed);
  if (r == EOWNERDEAD) {
    struct view v = view_of(c, si);
    rebuild(c, &v);
    pthread_mutex_consistent(&sh->lock);
    return true;
  }
  return r == 0;
}

/* The shard was found inconsistent: rebuilt, and let go. */
static void repair_and_unlock(const struct shared_cache *c, const struct view *v) {
  rebuild(c, v);
  unlock_shard(v->sh);
}

/* Bytes of scratch a hit needs: the row pointers, the chunks' addresses, then room for the
 * rows that straddle chunks (at most one per chunk boundary, since rows do not overlap, and no
 * more than the rows asked for: a wide strip has few rows over many chunks). */
static size_t list_bytes(const struct tsr_cache_access *a) {
  return (size_t)align_up((uint64_t)a->rows * sizeof(uint8_t *), 64);
}
static size_t chain_bytes(const struct tsr_cache_access *a) {
  return (size_t)align_up(chunks_for(a->bytes) * sizeof(uint8_t *), 64);
}
static size_t hit_bytes(const struct tsr_cache_access *a) {
  uint64_t chunks = chunks_for(a->bytes);
  return list_bytes(a) + chain_bytes(a) +
         (size_t)(chunks < a->rows ? chunks : a->rows) * a->row_bytes;
}

/* Bytes of scratch a load needs: the tile, then the addresses of its chunks (load_chain). */
static size_t load_bytes(const struct tsr_cache_access *a) {
  return (size_t)align_up(a->bytes, 64) + (size_t)chunks_for(a->bytes) * sizeof(uint8_t *);
}
static uint8_t **load_chain(const struct tsr_cache_access *a) {
  return (uint8_t **)(void *)(a->scratch->data + align_up(a->bytes, 64));
}

/* Notes in chain[] where entry i's first n chunks lie, each checked to be the entry's, at its
 * place. Index work only, under the shard's lock: no pixel is read here. */
static bool note_chunks(const struct view *v, uint32_t i, uint64_t n, uint8_t **chain) {
  uint32_t k = once32(&v->E[i].first);
  if (!chain_head(v, i, k))
    return false;
  chain[0] = chunk_data(v, k);
  for (uint32_t s = 0; s + 1 < n; s++) {
    if (!chain_next(v, i, s, k, &k))
      return false;
    chain[s + 1] = chunk_data(v, k);
  }
  return true;
}

/* Notes in chain[] where entry i's chunks lie, up to the one holding the last byte asked for. */
static bool map_chain(const struct view *v, uint32_t i, const struct tsr_cache_access *a,
                      uint8_t **chain) {
  if (a->rows == 0)
    return false;
  uint64_t end = a->offset + (uint64_t)(a->rows - 1) * a->stride + a->row_bytes;
  if (end > a->bytes)
    return false; /* not a part of a tile of a->bytes (the entry's size) */
  return note_chunks(v, i, chunks_for(end), chain);
}

/* Points a->row_list at the rows asked for, in place in the chunks chain[] notes, copying the
 * rows that straddle chunks into the scratch. No lock is held: the chunks may be written
 * meanwhile, which done() finds out; every address was checked under the lock, and stays in
 * the segment whatever the chunks or the index hold now. */
static void place_rows(struct tsr_cache_access *a, uint8_t *const *chain) {
  const uint8_t **list = (const uint8_t **)(void *)a->scratch->data;
  uint8_t *spill = a->scratch->data + list_bytes(a) + chain_bytes(a);
  for (uint32_t r = 0; r < a->rows; r++) {
    uint64_t at = a->offset + (uint64_t)r * a->stride, s = at / CHUNK_BYTES;
    size_t in = (size_t)(at % CHUNK_BYTES);
    if (in + a->row_bytes <= CHUNK_BYTES) {
      list[r] = chain[s] + in;
      continue;
    }
    list[r] = spill;
    for (size_t left = a->row_bytes; left > 0; s++, in = 0) {
      size_t part = left < CHUNK_BYTES - in ? left : CHUNK_BYTES - in;
      memcpy(spill, chain[s] + in, part);
      spill += part;
      left -= part;
    }
  }
  a->row_list = list;
}

/* Copies the loaded tile into its reservation's chunks, where lookup noted them under the
 * lock (load_chain), with no lock held. The chunks are the reservation's alone until its
 * loader publishes or abandons it, or dies: an overtaken one is detached, its chunks kept
 * (detach), and a rebuild keeps a live loader's (rebuild); so nobody else writes them, and no
 * hit reads them but one still painting the tile they held before, which finds out (lookup).
 * That tile was freed, its entry's count of frees bumped, before the chunks were reserved:
 * the fence orders that bump (seen through the lock) before these writes.
 * False, copying nothing, if the attachment is detaching: its seat, and so its chunks, may
 * be let go as soon as no copy is counted in flight (segment.c's release_seat). */
static bool copy_in(struct shared_cache *c, const struct tsr_cache_access *a) {
  atomic_fetch_add(&c->copying, 1);
  bool seated = atomic_load(&c->seat) >= 0;
  if (seated) {
    atomic_thread_fence(memory_order_release);
    uint8_t *const *chain = load_chain(a);
    const uint8_t *src = a->load;
    bool stall = tsr_hook_due(TSR_HOOK_COPYING);
    for (size_t s = 0, left = a->bytes; left > 0; s++) {
      size_t n = left < CHUNK_BYTES ? left : CHUNK_BYTES;
      memcpy(chain[s], src, n);
      src += n;
      left -= n;
      if (s == 0 && stall)
        tsr_hook_stall(); /* halfway (after the first chunk), for the tests that stop it */
    }
  }
  atomic_fetch_sub(&c->copying, 1);
  return seated;
}

/* Takes an entry and n chunks off the free lists for key a->key: *at, LOADING for this
 * attachment. NIL in *at (and true) when there is no room. Sets a->evicted when it evicts. */
static bool reserve(const struct shared_cache *c, const struct view *v, struct tsr_cache_access *a,
                    uint64_t hash, uint32_t *at) {
  struct shard *sh = v->sh;
  uint32_t n = (uint32_t)chunks_for(a->bytes); /* no more than the shard's chunks: see lookup */
  bool swept = false;
  *at = NIL;
  while (sh->nfree_chunks < n || sh->free_entries == NIL) {
    bool evicted;
    unsigned dead;
    if (!evict_one(v, &evicted))
      return false;
    a->evicted |= evicted;
    if (evicted)
      continue;
    if (swept)
      return true; /* every chunk is being loaded into */
    if (!sweep_dead_loaders(c, v, &dead))
      return false;
    if (dead == 0)
      return true;
    swept = true;
  }
  uint32_t i = once32(&sh->free_entries);
  if (i >= v->entries || v->E[i].state != FREE)
    return false;
  struct entry *e = &v->E[i];
  uint32_t first = once32(&sh->free_chunks), last = first;
  for (uint32_t s = 0;; s++) {
    if (last >= v->chunks || v->owner[last] != 0)
      return false; /* the free list is not what its count says */
    v->owner[last] = owner_tag(i, s);
    if (s + 1 == n)
      break;
    last = once32(&v->next[last]);
  }
  sh->free_entries = e->hnext;
  sh->free_chunks = v->next[last];
  v->next[last] = NIL;
  sh->nfree_chunks -= n;
  e->key = a->key;
  e->bytes = a->bytes;
  e->first = first;
  e->loader_seat = (uint32_t)c->seat;
  e->loader_incarnation = c->incarnation;
  e->ticket = e->ticket + 1 ? e->ticket + 1 : 1; /* never 0, which given_up starts at */
  atomic_store_explicit(&e->given_up, 0, memory_order_relaxed);
  e->queue = Q_NONE;
  e->freq = 0;
  e->state = LOADING;
  tsr_shared_seal(e, i);
  /* The entry is whole and sealed before it is linked: a process killed here leaves an
   * entry a rebuild can judge (only the compiler could reorder; the CPU's stores reach the
   * shared memory in order, or all of them do). */
  atomic_signal_fence(memory_order_seq_cst);
  e->hnext = *bucket(v, hash);
  *bucket(v, hash) = i;
  sh->items++;
  sh->bytes += a->bytes;
  *at = i;
  return true;
}

/* Entry i, LOADING by a live loader that has not published in time (stopped, or just slow),
 * is taken out of the index, so that its key can be loaded again into chunks of its own: the
 * old loader may still be copying into its chunks, without the lock (copy_in), whenever it
 * goes on, so they stay its own, counted against the shard's capacity, until it publishes or
 * abandons (and, finding it overtaken, frees it) or dies (swept). One store makes it
 * OVERTAKEN, which seals as LOADING: a process killed at any point here leaves an entry a
 * rebuild keeps, unlinked, while its loader lives. So a stopped process pins at most one
 * tile per thread of it that was loading one, never more: it reserves nothing while
 * stopped. */
static bool detach(const struct view *v, uint32_t i, uint64_t hash) {
  v->E[i].state = OVERTAKEN;
  atomic_signal_fence(memory_order_seq_cst); /* out of the index's reach before unlinked */
  return unhash(v, i, hash);
}
/* ---- the interface of cache.h ---- */

static enum tsr_cache_result lookup(struct tsr_cache *base, struct tsr_cache_access *a) {
  struct shared_cache *c = (struct shared_cache *)base;
  tsr_segment_register(c);
  size_t want = hit_bytes(a) > load_bytes(a) ? hit_bytes(a) : load_bytes(a);
  if (!tsr_scratch_reserve(a->scratch, want))
    return TSR_CACHE_BYPASS;
  a->entry = NULL;
  uint64_t hash = tsr_cache_key_hash(&a->key);
  uint32_t si = (uint32_t)(hash % c->nshards);
  struct view v = view_of(c, si);
  struct shard *sh = v.sh;
  bool count = base->record_stats;
  uint64_t waiting_since = 0, pause_ns = 20000;
  unsigned polls = 0;
  if (!tsr_shared_lock_shard(c, si))
    return TSR_CACHE_BYPASS;
  uint32_t i;
  bool overtook = false;
  for (;;) {
    if (!find(&v, &a->key, hash, &i))
      goto damaged;
    if (i == NIL)
      break;
    struct entry *e = &v.E[i];
    if (e->seal != seal_of(e, i))
      goto damaged;
    if (e->bytes == 0 || chunks_for(e->bytes) > v.chunks)
      goto damaged; /* sealed, and yet of no size a tile here can have: as good as unsealed */
    if (e->bytes != a->bytes) {
      unlock_shard(sh); /* same key, other geometry: left to age out (see process.c) */
      return TSR_CACHE_BYPASS;
    }
    if (e->state == READY) {
      uint8_t **chain = (uint8_t **)(void *)(a->scratch->data + list_bytes(a));
      if (!map_chain(&v, i, a, chain))
        goto damaged;
      tsr_s3fifo_read(&e->freq);
      if (count)
        sh->hits++;
      /* The tile is read with the lock let go, a seqlock's read: its entry's count of frees
       * now (the lock makes it the latest), then the bytes, then the count again (done). A
       * tile is only written into chunks taken off the free lists, after the entry that held
       * them was freed and counted so (vacate), and then only by copy_in, by the loader that
       * reserved them under the lock (which orders it after the free), behind a release
       * fence: if any byte read here came from such a write, the acquire
       * fence in done orders the bump before done's load, which sees the count moved; so an
       * unmoved count means every byte was the tile's. (In C's model the bytes would have to
       * be read as relaxed atomics; plain reads are what seqlocks do, and the fences keep
       * the compiler from moving them across the loads of the count.) */
      a->frees = atomic_load_explicit(&e->frees, memory_order_relaxed);
      a->entry = e;
      unlock_shard(sh);
      ignore_racy_reads(true);
      place_rows(a, chain);
      if (tsr_hook_due(TSR_HOOK_READING))
        tsr_hook_stall();
      return TSR_CACHE_HIT;
    }
    if (e->state != LOADING)
      goto damaged;
    /* Being loaded by another thread or process: wait for it, unless its loader is gone
     * (asking the kernel, so not at every poll). A loader taking too long, stopped or just
     * slow, loses the key: its entry is detached, and the tile loaded here as a miss. */
    if (loader_gone(c, e, polls++ % 8 == 7)) {
      if (!free_entry(&v, i))
        goto damaged;
      continue;
    }
    uint64_t now = monotonic_ns();
    if (!waiting_since)
      waiting_since = now;
    else if (now - waiting_since > LOAD_WAIT_NS) {
      if (!detach(&v, i, hash))
        goto damaged;
      overtook = true;
      break;
    }
    unlock_shard(sh);
    sleep_ns(pause_ns);
    pause_ns = pause_ns < 500000 ? pause_ns * 2 : pause_ns;
    if (!tsr_shared_lock_shard(c, si))
      return TSR_CACHE_BYPASS;
  }
  if (count)
    sh->misses++;
  if (!a->admit && !overtook) { /* an overtaken tile was admitted by its first loader */
    unlock_shard(sh);
    return TSR_CACHE_MISS;
  }
  if (c->seat < 0 || chunks_for(a->bytes) > v.chunks) {
    unlock_shard(sh); /* no user seat to load under, or too big */
    return TSR_CACHE_BYPASS;
  }
  if (!reserve(c, &v, a, hash, &i))
    goto damaged;
  if (i == NIL) {
    unlock_shard(sh);
    return TSR_CACHE_BYPASS;
  }
  if (!note_chunks(&v, i, chunks_for(a->bytes), load_chain(a)))
    goto damaged;
  a->shard = si;
  a->index = i;
  a->ticket = v.E[i].ticket;
  unlock_shard(sh);
  if (tsr_hook_due(TSR_HOOK_LOADING))
    tsr_hook_stall();
  a->load = a->scratch->data;
  return TSR_CACHE_LOAD;
damaged:
  repair_and_unlock(c, &v);
  return TSR_CACHE_BYPASS;
}

/* Whether the caller's reservation still stands (shard lock held), loading or overtaken: not
 * if its loader was taken for dead (it is detaching); the check keeps it from touching a
 * reused entry. */
static bool still_ours(const struct shared_cache *c, const struct view *v,
                       const struct tsr_cache_access *a) {
  const struct entry *e = &v->E[a->index];
  return in_flight(e) && e->ticket == a->ticket && loaded_by_me(c, e) &&
         e->seal == seal_of(e, a->index) && e->bytes == a->bytes;
}

/* The shard cannot be locked (held by a stopped process, say): the reservation is given up,
 * for the next lock holder to free (loader_gone). */
static void give_up(const struct view *v, const struct tsr_cache_access *a) {
  atomic_store_explicit(&v->E[a->index].given_up, a->ticket, memory_order_release);
}

/* The copy, the work whose length depends on this process being scheduled, is made without
 * the lock (copy_in says why that is safe); the lock is held only to publish. */
static void publish(struct tsr_cache *base, struct tsr_cache_access *a) {
  struct shared_cache *c = (struct shared_cache *)base;
  struct view v = view_of(c, a->shard);
  struct shard *sh = v.sh;
  struct entry *e = &v.E[a->index];
  a->src = a->load + a->offset;
  if (!copy_in(c, a))
    return; /* detaching: the entry goes once its seat is let go */
  if (!tsr_shared_lock_shard(c, a->shard)) {
    give_up(&v, a);
    return;
  }
  if (still_ours(c, &v, a) && e->state == OVERTAKEN) {
    /* Another took the key over meanwhile: the copy goes, and the chunks with it. */
    if (!free_entry(&v, a->index)) {
      repair_and_unlock(c, &v);
      return;
    }
  } else if (still_ours(c, &v, a)) {
#if TSR_TEST_HOOKS
    if (tsr_hook_due(TSR_HOOK_LOCKED)) {
      /* Halfway through linking it into the small queue (head set; its neighbour's link,
       * the tail and the byte count not), for the test that kills it here. */
      e->queue = Q_SMALL;
      e->prev = NIL;
      e->next = sh->small_head;
      sh->small_head = a->index;
      tsr_hook_stall();
    }
#endif
    if (!queue_push(&v, a->index, Q_SMALL)) {
      repair_and_unlock(c, &v);
      return;
    }
    atomic_signal_fence(memory_order_seq_cst); /* the bytes are in before it says READY */
    e->state = READY;
    tsr_shared_seal(e, a->index);
  }
  unlock_shard(sh);
}

static void abandon(struct tsr_cache *base, struct tsr_cache_access *a) {
  struct shared_cache *c = (struct shared_cache *)base;
  struct view v = view_of(c, a->shard);
  if (!tsr_shared_lock_shard(c, a->shard)) {
    give_up(&v, a);
    return;
  }
  if (still_ours(c, &v, a) && !free_entry(&v, a->index)) {
    repair_and_unlock(c, &v);
    return;
  }
  unlock_shard(v.sh);
}

/* After a hit: whether its entry was not freed while the caller read it (lookup says why that
 * is enough). A hit found overwritten stays counted as a hit: its lookup was one. */
static bool done(struct tsr_cache *base, struct tsr_cache_access *a) {
  (void)base;
  struct entry *e = a->entry;
  if (!e)
    return true; /* after publishing: the caller read its own copy */
  atomic_thread_fence(memory_order_acquire);
  bool stood = atomic_load_explicit(&e->frees, memory_order_relaxed) == a->frees;
  ignore_racy_reads(false);
  a->entry = NULL;
  if (!stood)
    tsr_hook_count_overwritten();
  return stood;
}

static void stats(struct tsr_cache *base, tessera_cache_stats *t) {
  struct shared_cache *c = (struct shared_cache *)base;
  t->memory_capacity = c->h->memory_capacity;
  t->item_capacity = c->h->item_capacity;
  for (uint32_t i = 0; i < c->nshards; i++) {
    struct shard *sh = shard_at(c, i);
    if (!tsr_shared_lock_shard(c, i))
      continue;
    t->hits += sh->hits;
    t->misses += sh->misses;
    t->evictions += sh->evictions;
    t->items += sh->items;
    t->bytes += sh->bytes;
    unlock_shard(sh);
  }
}

static void reset_stats(struct tsr_cache *base) {
  struct shared_cache *c = (struct shared_cache *)base;
  for (uint32_t i = 0; i < c->nshards; i++) {
    struct shard *sh = shard_at(c, i);
    if (!tsr_shared_lock_shard(c, i))
      continue;
    sh->hits = sh->misses = sh->evictions = 0;
    unlock_shard(sh);
  }
}
static const struct tsr_cache_ops shared_ops = {
    .lookup = lookup,
    .publish = publish,
    .abandon = abandon,
    .done = done,
    .stats = stats,
    .reset_stats = reset_stats,
    .fork_child = tsr_segment_fork_child,
    .exiting = tsr_segment_exiting,
    .destroy = tsr_segment_destroy,
};

tessera_status tsr_shared_cache_create(const tessera_cache_options *o, struct tsr_cache **out) {
  tsr_hook_read_env();
  struct shared_cache *c = NULL;
  tessera_status st = tsr_segment_open(o, &c);
  if (st != TESSERA_OK)
    return st;
  c->base.ops = &shared_ops;
  *out = &c->base;
  return TESSERA_OK;
}
