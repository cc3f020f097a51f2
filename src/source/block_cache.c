/* A block cache under a slow source (HTTP): the source's bytes in aligned blocks, the least
 * recently used evicted past a byte budget. A read missing blocks fetches each run of adjacent
 * missing blocks in one inner read, so the TIFF walk at open (a header, then directories and
 * their tag arrays scattered through the file) takes a few large requests instead of hundreds
 * of small ones, and neighbouring tiles read later come from blocks already held.
 *
 * Prefetch: tsr_bytes_hint (the batch reader, for the tiles of the batches it schedules)
 * queues the missing blocks of a range; up to `nthreads` fetch threads of the cache's own
 * (started on the first hint) take queued blocks, each with the queued blocks that follow it
 * (one request for adjacent tiles), so that many requests are in flight while the decoding
 * threads decode what has arrived. A reader needing a queued block takes it off the queue and
 * fetches it itself; one needing a block being fetched waits for it.
 *
 * One budget per process: the caches of all open remote slides hold together at most the
 * largest capacity among them (remote_cache_mib), each at most an even share of it (the budget
 * over the number of caches open). Opening a cache lowers the others' shares and trims them
 * to it before the new cache holds anything; a block that cannot be kept within its cache's
 * share is not kept (the read that fetched it still has its bytes). So N open remote slides
 * cost one budget, not N. The registry of caches has its own lock, always taken before a
 * cache's lock.
 *
 * Locking: `lock` guards the index, the states, the queue, the LRU list and the bytes held;
 * block data is copied out under it (blocks are a few hundred KiB). Inner reads happen without
 * it, on blocks marked LOADING by the thread fetching them, which no one else fetches or
 * evicts; a thread waits for LOADING blocks only while it has claimed none, so no two threads
 * wait for each other. */
#include "source/byte_source.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "alloc.h"
#include "error.h"

enum state { READY, QUEUED, LOADING };

struct block {
  uint64_t index;
  enum state state;
  pid_t loader;              /* LOADING: the process fetching it (a forked child's are none) */
  const void *owner;         /* LOADING: the call fetching it (an address on its stack): only
                                it publishes or drops the block */
  uint8_t *data;             /* READY: block_len bytes */
  struct block *prev, *next; /* READY: the LRU list (head the most recent); QUEUED: the queue */
  struct block *chain;       /* the hash bucket's next */
};

/* Most blocks one prefetch request takes (merging adjacent tiles' blocks). */
#define RUN_MAX 8
/* Largest cache whose blocks live in one reserved mapping (see `arena`); past it, each block
 * is allocated by itself. */
#define ARENA_MAX ((uint64_t)16 << 30)

struct block_source {
  struct tsr_byte_source pub; /* first: the interface leads back here */
  struct tsr_byte_source *inner;
  uint64_t size;
  size_t block_bytes;
  uint64_t capacity; /* bytes of blocks held at most (remote_cache_mib); see share() */
  int nthreads;      /* prefetch threads to start; 0: no prefetch */
  /* Blocks fetched past a miss, while the slide is being opened (the TIFF walk reads forward
   * through directories and their arrays); 0 once open (block_opened), when reads are tiles
   * wherever the caller looks. Atomic: read by any reader, written once. */
  atomic_uint readahead;
  pthread_mutex_t lock;
  pthread_cond_t changed; /* a LOADING block became READY or was dropped */
  pthread_cond_t work;    /* the queue has blocks, or stop */
  struct block **buckets; /* nbuckets, a power of two; under lock */
  size_t nbuckets;
  struct block *head, *tail;   /* LRU of READY blocks, under lock */
  struct block *qhead, *qtail; /* QUEUED blocks, oldest first, under lock */
  size_t queued;               /* under lock */
  uint64_t held;               /* bytes of READY blocks, under lock */
  /* The blocks' memory: one mapping reserved for the whole capacity (nslots slots of
   * block_bytes; pages are only resident once touched, so never more than the blocks held),
   * asked for as transparent huge pages. Blocks allocated one by one cost a page fault per
   * 4 KiB on first touch, and malloc gives freed blocks back to the kernel and faults them in
   * again: a third of the fetch threads' time in a 20 ms-latency benchmark. Free slots are a
   * stack, lowest first, so the touched part grows from the start. NULL: malloc per block. */
  uint8_t *arena, *arena_map;
  size_t arena_map_len;
  uint32_t *free_slots, nfree; /* under lock */
  pthread_t threads[64];
  int started; /* threads running in process `threads_pid`, under lock */
  pid_t threads_pid;
  bool stop; /* under lock */
  struct tsr_fork_guard guard;
  struct block_source *reg_next; /* the registry's list, under registry_lock */
};

/* The process's caches, their budget and each one's share of it. */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct block_source *registry; /* under registry_lock */
static size_t registered;             /* under registry_lock */
static atomic_uint_fast64_t budget;   /* the largest capacity among the caches open */
static atomic_uint_fast64_t share_of; /* budget / registered */
static atomic_uint_fast64_t held_all; /* bytes all caches hold together */

/* The bytes b may hold now: its share of the process's budget, at most its own capacity. */
static uint64_t share(const struct block_source *b) {
  uint64_t s = atomic_load_explicit(&share_of, memory_order_relaxed);
  return s < b->capacity ? s : b->capacity;
}

static void count_held(struct block_source *b, int64_t delta) {
  b->held += (uint64_t)delta;
  atomic_fetch_add_explicit(&held_all, (uint64_t)delta, memory_order_relaxed);
}

void tsr_block_cache_usage(uint64_t *held, uint64_t *budget_bytes) {
  *held = atomic_load_explicit(&held_all, memory_order_relaxed);
  *budget_bytes = atomic_load_explicit(&budget, memory_order_relaxed);
}

static struct block **bucket(struct block_source *b, uint64_t index) {
  return &b->buckets[(index * 0x9e3779b97f4a7c15ull >> 20) & (b->nbuckets - 1)];
}

static struct block *find(struct block_source *b, uint64_t index) {
  for (struct block *k = *bucket(b, index); k; k = k->chain)
    if (k->index == index)
      return k;
  return NULL;
}

/* The bytes of block i in the source (the last block is short). */
static size_t block_len(const struct block_source *b, uint64_t i) {
  uint64_t start = i * b->block_bytes;
  return start >= b->size                   ? 0
         : b->size - start < b->block_bytes ? (size_t)(b->size - start)
                                            : b->block_bytes;
}

static void unlink_from(struct block **head, struct block **tail, struct block *k) {
  if (k->prev)
    k->prev->next = k->next;
  else
    *head = k->next;
  if (k->next)
    k->next->prev = k->prev;
  else
    *tail = k->prev;
  k->prev = k->next = NULL;
}

static void push_front(struct block **head, struct block **tail, struct block *k) {
  k->next = *head;
  k->prev = NULL;
  if (*head)
    (*head)->prev = k;
  *head = k;
  if (!*tail)
    *tail = k;
}

static void push_back(struct block **head, struct block **tail, struct block *k) {
  k->prev = *tail;
  k->next = NULL;
  if (*tail)
    (*tail)->next = k;
  *tail = k;
  if (!*head)
    *head = k;
}

static uint8_t *alloc_data(struct block_source *b, size_t len) {
  if (!b->arena)
    return tsr_malloc(len);
  return b->nfree ? b->arena + (size_t)b->free_slots[--b->nfree] * b->block_bytes : NULL;
}

static void free_data(struct block_source *b, uint8_t *data) {
  if (!b->arena)
    tsr_free(data);
  else if (data)
    b->free_slots[b->nfree++] = (uint32_t)((size_t)(data - b->arena) / b->block_bytes);
}

/* Takes k out of the index and frees it, from whichever list its state puts it on. */
static void drop(struct block_source *b, struct block *k) {
  if (k->state == READY) {
    unlink_from(&b->head, &b->tail, k);
  } else if (k->state == QUEUED) {
    unlink_from(&b->qhead, &b->qtail, k);
    b->queued--;
  }
  if (k->data) /* READY, or LOADING and reserved */
    count_held(b, -(int64_t)block_len(b, k->index));
  for (struct block **p = bucket(b, k->index); *p; p = &(*p)->chain)
    if (*p == k) {
      *p = k->chain;
      break;
    }
  free_data(b, k->data);
  tsr_free(k);
}

static struct block *add(struct block_source *b, uint64_t index, enum state state) {
  struct block *k = tsr_calloc(1, sizeof *k);
  if (!k)
    return NULL;
  k->index = index;
  k->state = state;
  k->loader = getpid();
  struct block **p = bucket(b, index);
  k->chain = *p;
  *p = k;
  return k;
}

/* Gives k (LOADING, no data yet) its memory, evicting the least recently used past the
 * cache's share, and counts it held; a block that does not fit the share (the others are being
 * fetched) or out of memory drops it and returns false. Under lock. */
static bool reserve(struct block_source *b, struct block *k) {
  if (k->data) /* reserved by a process that forked this one mid-copy: held already */
    return true;
  size_t len = block_len(b, k->index);
  uint64_t most = share(b);
  while (b->held + len > most && b->tail) /* evicted first: its memory may serve k */
    drop(b, b->tail);
  k->data = b->held + len <= most ? alloc_data(b, len) : NULL;
  if (!k->data) {
    drop(b, k); /* LOADING: on no list, only in the index */
    return false;
  }
  count_held(b, (int64_t)len);
  return true;
}

/* Evicts b's least recently used blocks past its share, and gives their pages back (a cache
 * whose share fell must not keep the memory of its larger one). Under b's lock. */
static void trim(struct block_source *b) {
  uint64_t most = share(b);
  while (b->held > most && b->tail) {
    struct block *k = b->tail;
    uint8_t *data = k->data;
    size_t len = block_len(b, k->index);
    drop(b, k);
    if (b->arena && data) {
      long page = sysconf(_SC_PAGESIZE);
      uintptr_t lo = ((uintptr_t)data + (uintptr_t)page - 1) & ~((uintptr_t)page - 1);
      uintptr_t hi = ((uintptr_t)data + len) & ~((uintptr_t)page - 1);
      if (hi > lo)
        madvise((void *)lo, hi - lo, MADV_DONTNEED);
    }
  }
}

/* Sets the budget and the share after the registry changed, and trims every cache to its
 * share. Under registry_lock. */
static void rebalance(void) {
  uint64_t most = 0;
  for (struct block_source *c = registry; c; c = c->reg_next)
    if (c->capacity > most)
      most = c->capacity;
  atomic_store(&budget, most);
  atomic_store(&share_of, registered ? most / registered : 0);
  for (struct block_source *c = registry; c; c = c->reg_next) {
    pthread_mutex_lock(&c->lock);
    trim(c);
    pthread_mutex_unlock(&c->lock);
  }
}

/* The registry's lock across fork: taken before any cache's (pthread_atfork runs the prepare
 * handlers registered last first, and this is registered after the fork guards'). */
static void registry_prepare(void) { pthread_mutex_lock(&registry_lock); }
static void registry_parent(void) { pthread_mutex_unlock(&registry_lock); }
static void registry_child(void) { pthread_mutex_init(&registry_lock, NULL); }
static void registry_init(void) {
  pthread_atfork(registry_prepare, registry_parent, registry_child);
}

/* Makes k (reserved, its data copied in) READY. Under lock. */
static void make_ready(struct block_source *b, struct block *k) {
  k->state = READY;
  push_front(&b->head, &b->tail, k);
}

/* Fetches blocks first..last (LOADING, claimed by the caller) in one inner read into run. */
static tessera_status fetch_run(struct block_source *b, uint64_t first, uint64_t last, uint8_t *run,
                                size_t *want) {
  *want = 0;
  for (uint64_t k = first; k <= last; k++)
    *want += block_len(b, k);
  size_t have = 0;
  tessera_status st = tsr_bytes_read_at(b->inner, first * b->block_bytes, *want, run, &have);
  if (st == TESSERA_OK && have != *want)
    st =
        tsr_error(TESSERA_E_IO, "the source ended at %llu, before its size %llu",
                  (unsigned long long)(first * b->block_bytes + have), (unsigned long long)b->size);
  return st;
}

/* Publishes the blocks of a fetched run that `owner` claimed (st OK: READY; else dropped) and
 * wakes the waiters. Under lock, which is let go while the bytes are copied into the blocks
 * (a block's memory touched the first time faults its pages in, which must not hold up every
 * other reader and fetcher): claimed blocks are the owner's alone, so they stay put. */
static void publish(struct block_source *b, uint64_t first, uint64_t last, const uint8_t *run,
                    tessera_status st, const void *owner) {
  enum { CHUNK = 16 };
  uint64_t i = first;
  size_t at = 0;
  while (i <= last) {
    struct block *mine[CHUNK];
    size_t from[CHUNK], n = 0;
    for (; i <= last && n < CHUNK; at += block_len(b, i), i++) {
      struct block *k = find(b, i);
      if (!k || k->state != LOADING || k->owner != owner)
        continue;
      if (st != TESSERA_OK)
        drop(b, k);
      else if (reserve(b, k)) {
        mine[n] = k;
        from[n++] = at;
      }
    }
    if (n) {
      pthread_mutex_unlock(&b->lock);
      for (size_t x = 0; x < n; x++)
        memcpy(mine[x]->data, run + from[x], block_len(b, mine[x]->index));
      pthread_mutex_lock(&b->lock);
      for (size_t x = 0; x < n; x++)
        make_ready(b, mine[x]);
    }
  }
  pthread_cond_broadcast(&b->changed);
}

static void *prefetch_main(void *arg) {
  struct block_source *b = arg;
  const void *me = &b; /* this thread's stack: no other call has it */
  /* The run buffer is kept from one request to the next while there is work (fresh memory
   * costs page faults on first touch), and freed before the thread waits for more. */
  uint8_t *run = NULL;
  size_t run_cap = 0;
  pthread_mutex_lock(&b->lock);
  while (!b->stop) {
    if (!b->qhead) {
      if (run) {
        pthread_mutex_unlock(&b->lock);
        tsr_free(run);
        run = NULL;
        run_cap = 0;
        pthread_mutex_lock(&b->lock);
        continue; /* the queue may have filled meanwhile */
      }
      pthread_cond_wait(&b->work, &b->lock);
      continue;
    }
    struct block *k = b->qhead;
    unlink_from(&b->qhead, &b->qtail, k);
    b->queued--;
    k->state = LOADING;
    k->loader = getpid();
    k->owner = me;
    uint64_t first = k->index, last = first;
    struct block *n;
    while (last - first + 1 < RUN_MAX && (n = find(b, last + 1)) && n->state == QUEUED) {
      unlink_from(&b->qhead, &b->qtail, n);
      b->queued--;
      n->state = LOADING;
      n->loader = getpid();
      n->owner = me;
      last++;
    }
    pthread_mutex_unlock(&b->lock);
    size_t want = 0;
    for (uint64_t i = first; i <= last; i++)
      want += block_len(b, i);
    if (want > run_cap) {
      tsr_free(run);
      run_cap = (run = tsr_malloc(want)) ? want : 0;
    }
    tessera_status st = run ? fetch_run(b, first, last, run, &want) : TESSERA_E_NOMEM;
    pthread_mutex_lock(&b->lock);
    publish(b, first, last, run, st, me);
  }
  pthread_mutex_unlock(&b->lock);
  tsr_free(run);
  return NULL;
}

/* Starts the prefetch threads in this process if they are not running. Under lock. */
static void start_threads(struct block_source *b) {
  if (b->threads_pid != getpid()) { /* none yet, or the parent's: they are not in this child */
    b->started = 0;
    b->threads_pid = getpid();
  }
  while (b->started < b->nthreads &&
         pthread_create(&b->threads[b->started], NULL, prefetch_main, b) == 0)
    b->started++;
}

static void block_hint(const struct tsr_byte_source *src, uint64_t offset, uint64_t length) {
  struct block_source *b = (struct block_source *)src;
  if (!b->nthreads || offset >= b->size || length == 0)
    return;
  if (length > b->size - offset)
    length = b->size - offset;
  uint64_t first = offset / b->block_bytes, last = (offset + length - 1) / b->block_bytes;
  /* Queued blocks are bounded by what the cache could hold once fetched. */
  uint64_t most = share(b) / b->block_bytes;
  pthread_mutex_lock(&b->lock);
  bool queued = false;
  for (uint64_t i = first; i <= last && b->queued < most; i++) {
    struct block *k = find(b, i);
    if (k && k->state == READY) { /* to be read soon: the last to evict */
      unlink_from(&b->head, &b->tail, k);
      push_front(&b->head, &b->tail, k);
    }
    if (k)
      continue;
    if (!(k = add(b, i, QUEUED)))
      break;
    push_back(&b->qhead, &b->qtail, k);
    b->queued++;
    queued = true;
  }
  if (queued) {
    start_threads(b);
    pthread_cond_broadcast(&b->work);
  }
  pthread_mutex_unlock(&b->lock);
}

static tessera_status block_read_at(const struct tsr_byte_source *src, uint64_t offset,
                                    size_t length, void *buffer, size_t *got) {
  struct block_source *b = (struct block_source *)src;
  const void *me = &b; /* this call's stack: the owner of the blocks it claims */
  *got = 0;
  if (offset >= b->size || length == 0)
    return TESSERA_OK;
  if (length > b->size - offset)
    length = (size_t)(b->size - offset);
  uint64_t first = offset / b->block_bytes, last = (offset + length - 1) / b->block_bytes;
  /* A read larger than half the cache would evict what it is about to use: read it directly. */
  if ((last - first + 1) * b->block_bytes > share(b) / 2)
    return tsr_bytes_read_at(b->inner, offset, length, buffer, got);
  uint8_t *out = buffer;
  bool any_claimed = false, waited = false;
  pthread_mutex_lock(&b->lock);
  for (;;) {
    /* Wait while another call fetches a block of ours: then nothing is claimed yet. */
    bool busy = false;
    for (uint64_t i = first; i <= last && !busy; i++) {
      struct block *k = find(b, i);
      busy = k && k->state == LOADING && k->loader == getpid();
    }
    if (!busy)
      break;
    waited = true;
    pthread_cond_wait(&b->changed, &b->lock);
  }
  /* READY blocks are copied now; the others are claimed (LOADING, owner me), and stay ours
   * until published below: nobody else fetches, publishes, drops or evicts them. */
  for (uint64_t i = first; i <= last; i++) {
    struct block *k = find(b, i);
    if (k && k->state == READY) {
      uint64_t start = i * b->block_bytes;
      uint64_t lo = offset > start ? offset : start;
      uint64_t end = start + block_len(b, i);
      uint64_t hi = offset + length < end ? offset + length : end;
      memcpy(out + (lo - offset), k->data + (lo - start), (size_t)(hi - lo));
      unlink_from(&b->head, &b->tail, k);
      push_front(&b->head, &b->tail, k);
      continue;
    }
    if (k && k->state == QUEUED) { /* needed now: ours to fetch */
      unlink_from(&b->qhead, &b->qtail, k);
      b->queued--;
    } else if (!k && !(k = add(b, i, LOADING))) {
      publish(b, first, last, NULL, TESSERA_E_NOMEM, me); /* the claims made so far */
      pthread_mutex_unlock(&b->lock);
      return tsr_error(TESSERA_E_NOMEM, "out of memory");
    }
    /* (or LOADING in the process that forked us: it never finishes here) */
    k->state = LOADING;
    k->loader = getpid();
    k->owner = me;
    any_claimed = true;
  }
  uint64_t fetch_last = last;
  unsigned ahead = atomic_load_explicit(&b->readahead, memory_order_relaxed);
  for (uint64_t i = last + 1; any_claimed && i <= last + ahead && block_len(b, i) > 0; i++) {
    struct block *k = find(b, i);
    if (k || !(k = add(b, i, LOADING)))
      break;
    k->owner = me;
    fetch_last = i;
  }
  pthread_mutex_unlock(&b->lock);
  if (!any_claimed && !waited)
    tsr_count(&src->counters.cache_hits, 1);
  tessera_status st = TESSERA_OK;
  /* Each run of our claimed blocks in one request. */
  for (uint64_t i = first; any_claimed && i <= fetch_last;) {
    pthread_mutex_lock(&b->lock);
    struct block *k = find(b, i), *n;
    bool mine = k && k->state == LOADING && k->owner == me;
    uint64_t j = i;
    while (mine && j + 1 <= fetch_last && (n = find(b, j + 1)) && n->state == LOADING &&
           n->owner == me)
      j++;
    if (mine && st != TESSERA_OK) /* a run before failed: give the claims back */
      publish(b, i, j, NULL, st, me);
    pthread_mutex_unlock(&b->lock);
    if (!mine || st != TESSERA_OK) {
      i = j + 1;
      continue;
    }
    size_t want = 0;
    for (uint64_t x = i; x <= j; x++)
      want += block_len(b, x);
    uint8_t *run = tsr_malloc(want);
    tessera_status rs =
        run ? fetch_run(b, i, j, run, &want) : tsr_error(TESSERA_E_NOMEM, "out of memory");
    if (rs != TESSERA_OK && run && j > last && i <= last) {
      /* The read-ahead may be what failed (a damaged range past what was asked for): give it
       * up and fetch what was asked for alone. */
      pthread_mutex_lock(&b->lock);
      publish(b, last + 1, j, NULL, rs, me);
      pthread_mutex_unlock(&b->lock);
      j = last;
      rs = fetch_run(b, i, j, run, &want);
    }
    if (rs == TESSERA_OK) {
      uint64_t start = i * b->block_bytes;
      uint64_t lo = offset > start ? offset : start;
      uint64_t hi = offset + length < start + want ? offset + length : start + want;
      if (hi > lo) /* a run of read-ahead blocks alone holds none of the read */
        memcpy(out + (lo - offset), run + (lo - start), (size_t)(hi - lo));
    }
    pthread_mutex_lock(&b->lock);
    publish(b, i, j, run, rs, me);
    pthread_mutex_unlock(&b->lock);
    tsr_free(run);
    if (rs != TESSERA_OK && i <= last)
      st = rs; /* a failed read-ahead alone fails nothing */
    i = j + 1;
  }
  if (st == TESSERA_OK)
    *got = length;
  return st;
}

static uint64_t block_size(const struct tsr_byte_source *src) {
  return ((const struct block_source *)src)->size;
}

static void block_identity(const struct tsr_byte_source *src, struct tsr_file_id *id) {
  const struct block_source *b = (const struct block_source *)src;
  b->inner->ops->identity(b->inner, id);
}

/* In a forked child: the condition variables may have had the parent's waiters; its fetch
 * threads are not here (start_threads starts this process's own on the next hint). */
static void block_forked(void *arg) {
  struct block_source *b = arg;
  pthread_cond_init(&b->changed, NULL);
  pthread_cond_init(&b->work, NULL);
}

static void block_close(struct tsr_byte_source *src) {
  struct block_source *b = (struct block_source *)src;
  tsr_fork_guard_remove(&b->guard);
  pthread_mutex_lock(&registry_lock);
  for (struct block_source **p = &registry; *p; p = &(*p)->reg_next)
    if (*p == b) {
      *p = b->reg_next;
      registered--;
      break;
    }
  pthread_mutex_unlock(&registry_lock);
  pthread_mutex_lock(&b->lock);
  b->stop = true;
  pthread_cond_broadcast(&b->work);
  int started = b->threads_pid == getpid() ? b->started : 0;
  pthread_mutex_unlock(&b->lock);
  for (int i = 0; i < started; i++)
    pthread_join(b->threads[i], NULL);
  for (size_t i = 0; i < b->nbuckets; i++)
    while (b->buckets[i])
      drop(b, b->buckets[i]);
  /* Its blocks gone, the others' shares grow (or shrink, with the budget, if it had the
   * largest capacity). */
  pthread_mutex_lock(&registry_lock);
  rebalance();
  pthread_mutex_unlock(&registry_lock);
  if (b->arena_map)
    munmap(b->arena_map, b->arena_map_len);
  tsr_free(b->free_slots);
  tsr_free(b->buckets);
  pthread_mutex_destroy(&b->lock);
  pthread_cond_destroy(&b->changed);
  pthread_cond_destroy(&b->work);
  tsr_byte_source_close(b->inner);
  tsr_free(b);
}

static void block_opened(struct tsr_byte_source *src) {
  atomic_store(&((struct block_source *)src)->readahead, 0);
}

static uint64_t block_hint_room(const struct tsr_byte_source *src, uint64_t *granule) {
  const struct block_source *b = (const struct block_source *)src;
  *granule = b->block_bytes;
  return b->nthreads ? share(b) : 0;
}

static const struct tsr_byte_source_ops block_ops = {
    block_read_at, block_size, block_identity, block_close, block_hint, block_opened,
    block_hint_room};

/* Reserves the arena, if the capacity is not too large for one mapping; else blocks are
 * malloc'd one by one. */
static void map_arena(struct block_source *b) {
#if defined(__SANITIZE_ADDRESS__)
  return; /* each block its own allocation, so that AddressSanitizer sees a block's bounds */
#endif
  uint64_t nslots = b->capacity / b->block_bytes + 1; /* + the short last block */
  const size_t huge = (size_t)2 << 20;
  if (b->capacity > ARENA_MAX || nslots > UINT32_MAX ||
      !(b->free_slots = tsr_malloc((size_t)nslots * sizeof *b->free_slots)))
    return;
  size_t len = (size_t)nslots * b->block_bytes;
  b->arena_map_len = len + huge; /* room to start on a huge page's boundary */
  void *map = mmap(NULL, b->arena_map_len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (map == MAP_FAILED) {
    tsr_free(b->free_slots);
    b->free_slots = NULL;
    return;
  }
  b->arena_map = map;
  b->arena = (uint8_t *)(((uintptr_t)map + huge - 1) & ~(uintptr_t)(huge - 1));
#ifdef MADV_HUGEPAGE
  madvise(b->arena, len, MADV_HUGEPAGE); /* a hint: without it, 4 KiB pages */
#endif
  for (uint64_t i = 0; i < nslots; i++)
    b->free_slots[i] = (uint32_t)(nslots - 1 - i); /* slot 0 on top */
  b->nfree = (uint32_t)nslots;
}

tessera_status tsr_block_cache_open(struct tsr_byte_source *inner, size_t block_bytes,
                                    uint64_t capacity_bytes, int prefetch_threads, uint8_t *head,
                                    size_t head_len, struct tsr_byte_source **out) {
  *out = NULL;
  struct block_source *b = tsr_calloc(1, sizeof *b);
  size_t nbuckets = 64;
  while (nbuckets < capacity_bytes / block_bytes && nbuckets < ((size_t)1 << 20))
    nbuckets *= 2;
  if (b)
    b->buckets = tsr_calloc(nbuckets, sizeof *b->buckets);
  if (!b || !b->buckets) {
    tsr_free(b);
    tsr_free(head);
    tsr_byte_source_close(inner);
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  }
  b->pub.ops = &block_ops;
  b->pub.inner = inner;
  b->inner = inner;
  b->size = inner->ops->size(inner);
  b->block_bytes = block_bytes;
  b->capacity = capacity_bytes;
  b->nthreads = prefetch_threads < 0 ? 0 : prefetch_threads > 64 ? 64 : prefetch_threads;
  b->nbuckets = nbuckets;
  map_arena(b);
  /* 256 KiB a miss at open: a directory and the arrays after it, in one request. */
  atomic_init(&b->readahead,
              block_bytes < (256u << 10) ? (unsigned)((256u << 10) / block_bytes) - 1 : 0);
  pthread_mutex_init(&b->lock, NULL);
  pthread_cond_init(&b->changed, NULL);
  pthread_cond_init(&b->work, NULL);
  b->guard = (struct tsr_fork_guard){.lock = &b->lock, .child = block_forked, .arg = b};
  tsr_fork_guard_add(&b->guard);
  static pthread_once_t registry_once = PTHREAD_ONCE_INIT;
  pthread_once(&registry_once, registry_init); /* after the fork guards' own */
  pthread_mutex_lock(&registry_lock);
  b->reg_next = registry;
  registry = b;
  registered++;
  rebalance(); /* the others trimmed to their new shares before this one holds anything */
  pthread_mutex_unlock(&registry_lock);
  for (uint64_t i = 0; head && i * block_bytes < head_len; i++) {
    /* Whole blocks of the head only (the last one whole where the head is the object). */
    if ((i + 1) * block_bytes > head_len && head_len != b->size)
      break;
    struct block *k = add(b, i, LOADING);
    if (k && reserve(b, k)) {
      memcpy(k->data, head + i * block_bytes, block_len(b, i));
      make_ready(b, k);
    }
  }
  tsr_free(head);
  *out = &b->pub;
  return TESSERA_OK;
}
