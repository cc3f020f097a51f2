/* A block cache under a slow source (HTTP): the source's bytes in aligned blocks, the least
 * recently used evicted past a byte budget. A read missing blocks fetches each run of adjacent
 * missing blocks in one inner read, so the TIFF walk at open (a header, then directories and
 * their tag arrays scattered through the file) takes a few large requests instead of hundreds
 * of small ones, and neighbouring tiles read later come from blocks already held.
 *
 * `lock` guards the index, the LRU list and the bytes held; block data is copied out under it
 * (blocks are a few hundred KiB, so this is short). Inner reads happen without it: two threads
 * missing one block may both fetch it, and the second insert is dropped. */
#include "source/byte_source.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "error.h"

struct block {
  uint64_t index;
  uint8_t *data;
  size_t len;                /* block_bytes, less for the source's last block */
  struct block *prev, *next; /* LRU: head is the most recent */
  struct block *chain;       /* the hash bucket's next */
};

struct block_source {
  struct tsr_byte_source pub; /* first: the interface leads back here */
  struct tsr_byte_source *inner;
  uint64_t size;
  size_t block_bytes;
  uint64_t capacity; /* bytes of blocks held at most */
  pthread_mutex_t lock;
  struct block **buckets; /* nbuckets, a power of two; under lock */
  size_t nbuckets;
  struct block *head, *tail; /* under lock */
  uint64_t held;             /* bytes of blocks, under lock */
};

static struct block **bucket(struct block_source *b, uint64_t index) {
  return &b->buckets[(index * 0x9e3779b97f4a7c15ull >> 20) & (b->nbuckets - 1)];
}

static struct block *find(struct block_source *b, uint64_t index) {
  for (struct block *k = *bucket(b, index); k; k = k->chain)
    if (k->index == index)
      return k;
  return NULL;
}

static void unlink_lru(struct block_source *b, struct block *k) {
  if (k->prev)
    k->prev->next = k->next;
  else
    b->head = k->next;
  if (k->next)
    k->next->prev = k->prev;
  else
    b->tail = k->prev;
  k->prev = k->next = NULL;
}

static void push_front(struct block_source *b, struct block *k) {
  k->next = b->head;
  k->prev = NULL;
  if (b->head)
    b->head->prev = k;
  b->head = k;
  if (!b->tail)
    b->tail = k;
}

static void drop(struct block_source *b, struct block *k) {
  unlink_lru(b, k);
  for (struct block **p = bucket(b, k->index); *p; p = &(*p)->chain)
    if (*p == k) {
      *p = k->chain;
      break;
    }
  b->held -= k->len;
  tsr_free(k->data);
  tsr_free(k);
}

/* Keeps a copy of a fetched block (under lock); out of memory just keeps nothing. */
static void insert(struct block_source *b, uint64_t index, const uint8_t *data, size_t len) {
  if (find(b, index) || len > b->capacity)
    return;
  struct block *k = tsr_calloc(1, sizeof *k);
  uint8_t *copy = k ? tsr_malloc(len) : NULL;
  if (!copy) {
    tsr_free(k);
    return;
  }
  memcpy(copy, data, len);
  *k = (struct block){.index = index, .data = copy, .len = len};
  struct block **p = bucket(b, index);
  k->chain = *p;
  *p = k;
  push_front(b, k);
  b->held += len;
  while (b->held > b->capacity && b->tail && b->tail != k)
    drop(b, b->tail);
}

/* The bytes of block i in the source (the last block is short). */
static size_t block_len(const struct block_source *b, uint64_t i) {
  uint64_t start = i * b->block_bytes;
  return start >= b->size ? 0
         : b->size - start < b->block_bytes ? (size_t)(b->size - start)
                                            : b->block_bytes;
}

static tessera_status block_read_at(const struct tsr_byte_source *src, uint64_t offset,
                                    size_t length, void *buffer, size_t *got) {
  struct block_source *b = (struct block_source *)src;
  *got = 0;
  if (offset >= b->size || length == 0)
    return TESSERA_OK;
  if (length > b->size - offset)
    length = (size_t)(b->size - offset);
  uint64_t first = offset / b->block_bytes, last = (offset + length - 1) / b->block_bytes;
  /* A read larger than half the cache would evict what it is about to use: read it directly. */
  if ((last - first + 1) * b->block_bytes > b->capacity / 2)
    return tsr_bytes_read_at(b->inner, offset, length, buffer, got);
  uint8_t *out = buffer;
  uint64_t nblocks = last - first + 1;
  /* Which blocks are missing: one bit each (a read spans at most capacity / 2 / block). */
  uint8_t small[64];
  uint8_t *missing = nblocks <= sizeof small * 8 ? small : tsr_calloc((nblocks + 7) / 8, 1);
  if (!missing)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  memset(missing, 0, (nblocks + 7) / 8);
  bool any_missing = false;
  pthread_mutex_lock(&b->lock);
  for (uint64_t i = first; i <= last; i++) {
    struct block *k = find(b, i);
    if (!k) {
      missing[(i - first) / 8] |= (uint8_t)(1u << ((i - first) % 8));
      any_missing = true;
      continue;
    }
    uint64_t start = i * b->block_bytes;
    uint64_t lo = offset > start ? offset : start;
    uint64_t hi = offset + length < start + k->len ? offset + length : start + k->len;
    memcpy(out + (lo - offset), k->data + (lo - start), (size_t)(hi - lo));
    unlink_lru(b, k);
    push_front(b, k);
  }
  pthread_mutex_unlock(&b->lock);
  tessera_status st = TESSERA_OK;
  if (!any_missing)
    tsr_count(&src->counters.cache_hits, 1);
  for (uint64_t i = first; any_missing && i <= last && st == TESSERA_OK;) {
    if (!(missing[(i - first) / 8] & (1u << ((i - first) % 8)))) {
      i++;
      continue;
    }
    uint64_t j = i;
    while (j + 1 <= last && (missing[(j + 1 - first) / 8] & (1u << ((j + 1 - first) % 8))))
      j++;
    /* Blocks i..j in one request. */
    uint64_t start = i * b->block_bytes;
    size_t want = 0;
    for (uint64_t k = i; k <= j; k++)
      want += block_len(b, k);
    uint8_t *run = tsr_malloc(want);
    size_t have = 0;
    if (!run)
      st = tsr_error(TESSERA_E_NOMEM, "out of memory");
    else if ((st = tsr_bytes_read_at(b->inner, start, want, run, &have)) == TESSERA_OK &&
             have != want)
      st = tsr_error(TESSERA_E_IO, "the source ended at %llu, before its size %llu",
                     (unsigned long long)(start + have), (unsigned long long)b->size);
    if (st == TESSERA_OK) {
      uint64_t lo = offset > start ? offset : start;
      uint64_t hi = offset + length < start + want ? offset + length : start + want;
      memcpy(out + (lo - offset), run + (lo - start), (size_t)(hi - lo));
      pthread_mutex_lock(&b->lock);
      for (uint64_t k = i, at = 0; k <= j; at += block_len(b, k), k++)
        insert(b, k, run + at, block_len(b, k));
      pthread_mutex_unlock(&b->lock);
    }
    tsr_free(run);
    i = j + 1;
  }
  if (missing != small)
    tsr_free(missing);
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

static void block_close(struct tsr_byte_source *src) {
  struct block_source *b = (struct block_source *)src;
  while (b->head)
    drop(b, b->head);
  tsr_free(b->buckets);
  pthread_mutex_destroy(&b->lock);
  tsr_byte_source_close(b->inner);
  tsr_free(b);
}

static const struct tsr_byte_source_ops block_ops = {block_read_at, block_size, block_identity,
                                                     block_close};

tessera_status tsr_block_cache_open(struct tsr_byte_source *inner, size_t block_bytes,
                                    uint64_t capacity_bytes, uint8_t *head, size_t head_len,
                                    struct tsr_byte_source **out) {
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
  b->nbuckets = nbuckets;
  pthread_mutex_init(&b->lock, NULL);
  for (uint64_t i = 0; head && (i + 1) * block_bytes <= head_len; i++)
    insert(b, i, head + i * block_bytes, block_len(b, i));
  if (head && head_len == b->size && head_len % block_bytes)
    insert(b, head_len / block_bytes, head + head_len / block_bytes * block_bytes,
           block_len(b, head_len / block_bytes));
  tsr_free(head);
  *out = &b->pub;
  return TESSERA_OK;
}
