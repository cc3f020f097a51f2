/* The block cache under remote slides (src/source/block_cache.c): many threads reading random
 * ranges and hinting others, through a cache far smaller than the source (so blocks are
 * evicted, fetched again, queued, taken off the queue by readers, fetched by the prefetch
 * threads), always read the source's bytes; a failing range fails only the reads that need it,
 * and the cache recovers; and every slide of the test data opened through a block cache over an
 * in-memory source (the batch reader's hints on) reads the pixels of its file. Run under
 * ThreadSanitizer too (dev.sh). */
#include <dirent.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "error.h"
#include "slide_internal.h"
#include "source/byte_source.h"
#include "tessera.h"

/* Bytes in memory; reads of [bad_lo, bad_hi) fail. The fields are set before any read, except
 * bad_lo/bad_hi and the counters (atomics). */
struct memory_source {
  struct tsr_byte_source pub;
  uint8_t *bytes;
  uint64_t size;
  struct tsr_file_id id;
  atomic_uint_fast64_t bad_lo, bad_hi;
  atomic_int in_flight, most_in_flight;
};

static tessera_status mem_read_at(const struct tsr_byte_source *src, uint64_t offset, size_t length,
                                  void *buffer, size_t *got) {
  struct memory_source *m = (struct memory_source *)src;
  int now = ++m->in_flight;
  for (int most = m->most_in_flight; now > most;)
    if (atomic_compare_exchange_weak(&m->most_in_flight, &most, now))
      break;
  tsr_count(&src->counters.requests, 1);
  *got = 0;
  tessera_status st = TESSERA_OK;
  if (offset < m->bad_hi && offset + length > m->bad_lo)
    st = tsr_error(TESSERA_E_IO, "the test's source refuses %llu", (unsigned long long)offset);
  else if (offset < m->size) {
    *got = length < m->size - offset ? length : (size_t)(m->size - offset);
    memcpy(buffer, m->bytes + offset, *got);
  }
  m->in_flight--;
  return st;
}

static uint64_t mem_size(const struct tsr_byte_source *src) {
  return ((const struct memory_source *)src)->size;
}

static void mem_identity(const struct tsr_byte_source *src, struct tsr_file_id *id) {
  *id = ((const struct memory_source *)src)->id;
}

static void mem_close(struct tsr_byte_source *src) {
  struct memory_source *m = (struct memory_source *)src;
  free(m->bytes);
  free(m);
}

static const struct tsr_byte_source_ops mem_ops = {mem_read_at, mem_size, mem_identity, mem_close};

static struct memory_source *memory_source(uint8_t *bytes, uint64_t size) {
  static uint64_t made;
  struct memory_source *m = calloc(1, sizeof *m);
  m->pub.ops = &mem_ops;
  m->bytes = bytes;
  m->size = size;
  m->id = (struct tsr_file_id){.device = UINT64_MAX - 7, .inode = ++made, .size = size};
  return m;
}

struct reader {
  struct tsr_byte_source *cache;
  struct memory_source *mem;
  unsigned long long seed;
  int failures_expected, failures_seen, wrong;
};

static void *read_randomly(void *arg) {
  struct reader *r = arg;
  uint8_t *buf = malloc(40000);
  for (int i = 0; i < 3000; i++) {
    uint64_t off = test_rand(&r->seed) % (r->mem->size + 100);
    size_t len = 1 + (size_t)(test_rand(&r->seed) % 30000);
    if (test_rand(&r->seed) % 4 == 0)
      tsr_bytes_hint(r->cache, test_rand(&r->seed) % r->mem->size, 1 + test_rand(&r->seed) % 50000);
    size_t got = 0;
    tessera_status st = tsr_bytes_read_at(r->cache, off, len, buf, &got);
    bool bad = off < r->mem->bad_hi && off + len > r->mem->bad_lo && off < r->mem->size;
    if (st != TESSERA_OK) {
      r->failures_seen++;
      if (!bad || !strstr(tessera_error_message(), "the test's source refuses")) {
        if (r->wrong++ < 3)
          fprintf(stderr, "read %llu+%zu failed (%s), bad %d\n", (unsigned long long)off, len,
                  tessera_error_message(), bad);
      }
      continue;
    }
    size_t want = off >= r->mem->size ? 0 : len < r->mem->size - off ? len : r->mem->size - off;
    /* A read clear of the bad range succeeds (a read over it might, from blocks held). */
    if (got != want || (want && memcmp(buf, r->mem->bytes + off, want) != 0)) {
      if (r->wrong++ < 3)
        fprintf(stderr, "read %llu+%zu: got %zu of %zu, bytes %s\n", (unsigned long long)off, len,
                got, want, got == want ? "differ" : "-");
    }
  }
  free(buf);
  return NULL;
}

static void random_reads(void) {
  uint64_t size = 3 * 1000 * 1000 + 17;
  uint8_t *bytes = malloc(size);
  unsigned long long s = 42;
  for (uint64_t i = 0; i < size; i++)
    bytes[i] = (uint8_t)(test_rand(&s) >> 24);
  struct memory_source *m = memory_source(bytes, size);
  /* The bad range: inside the source, hit by some reads; whole blocks (the cache fetches
   * blocks: a read touching a block with a bad byte fails, whatever bytes it wants). */
  m->bad_lo = 1500000 / 4096 * 4096;
  m->bad_hi = m->bad_lo + 3 * 4096;
  struct tsr_byte_source *cache;
  tessera_status st = tsr_block_cache_open(&m->pub, 4096, 256 << 10, 4, NULL, 0, &cache);
  CHECK(st == TESSERA_OK, "block cache: %s", tessera_error_message());
  if (st != TESSERA_OK)
    return;
  enum { N = 8 };
  struct reader r[N];
  pthread_t t[N];
  for (int i = 0; i < N; i++) {
    r[i] = (struct reader){.cache = cache, .mem = m, .seed = 1000 + (unsigned long long)i};
    pthread_create(&t[i], NULL, read_randomly, &r[i]);
  }
  int failures = 0;
  for (int i = 0; i < N; i++) {
    pthread_join(t[i], NULL);
    CHECK(r[i].wrong == 0, "reader %d: %d reads wrong", i, r[i].wrong);
    failures += r[i].failures_seen;
  }
  CHECK(failures > 0, "no read met the failing range: the test tests nothing of failures");
  /* It recovers: with the source mended, every byte reads right, in one read. */
  m->bad_lo = m->bad_hi = 0;
  uint8_t *all = malloc(size);
  size_t got = 0;
  for (uint64_t off = 0; off < size; off += 30000) {
    size_t len = size - off < 30000 ? (size_t)(size - off) : 30000;
    st = tsr_bytes_read_at(cache, off, len, all + off, &got);
    CHECK(st == TESSERA_OK && got == len, "mended read at %llu: %s", (unsigned long long)off,
          tessera_error_message());
  }
  CHECK(memcmp(all, bytes, size) == 0, "the mended cache reads other bytes");
  tessera_io_stats io;
  tsr_byte_source_stats(cache, &io);
  CHECK(io.requests > 0 && io.cache_hits > 0, "requests %llu, hits %llu",
        (unsigned long long)io.requests, (unsigned long long)io.cache_hits);
  free(all);
  tsr_byte_source_close(cache);
}

struct sampler {
  atomic_bool stop;
  uint64_t most; /* the most bytes all caches held together at any sample */
};

static void *sample_usage(void *arg) {
  struct sampler *w = arg;
  while (!atomic_load(&w->stop)) {
    uint64_t held, budget;
    tsr_block_cache_usage(&held, &budget);
    if (held > w->most)
      w->most = held;
  }
  return NULL;
}

/* One budget per process (issue 19: the compressed-byte cache "bounded, per process"): caches
 * open together share the largest capacity among them, evenly, so N remote slides cost one
 * budget and not N. A cache that filled its capacity alone is trimmed when others open;
 * reading all of them at once from many threads never holds more than the budget, and reads
 * the right bytes; closing the others gives the first its whole capacity back. */
static void shared_budget(void) {
  enum { N = 4, BLOCK = 4096 };
  const uint64_t cap = 256 << 10, size = 1000 * 1000 + 3;
  uint64_t held, budget;
  tsr_block_cache_usage(&held, &budget);
  CHECK(held == 0 && budget == 0, "no cache open, yet %llu held of %llu",
        (unsigned long long)held, (unsigned long long)budget);
  struct memory_source *m[N];
  struct tsr_byte_source *c[N];
  unsigned long long s = 9;
  for (int i = 0; i < N; i++) {
    uint8_t *bytes = malloc(size);
    for (uint64_t k = 0; k < size; k++)
      bytes[k] = (uint8_t)(test_rand(&s) >> 24);
    m[i] = memory_source(bytes, size);
  }
  uint8_t *buf = malloc(20000);
  /* The first, alone, fills its capacity. */
  CHECK(tsr_block_cache_open(&m[0]->pub, BLOCK, cap, 2, NULL, 0, &c[0]) == TESSERA_OK, "open");
  for (uint64_t off = 0; off < size; off += 20000) {
    size_t got;
    CHECK(tsr_bytes_read_at(c[0], off, 20000, buf, &got) == TESSERA_OK, "read");
  }
  tsr_block_cache_usage(&held, &budget);
  CHECK(budget == cap && held > cap - 2 * BLOCK && held <= cap,
        "one cache: %llu held of %llu", (unsigned long long)held, (unsigned long long)budget);
  /* The others open (one with a smaller capacity: the budget stays the largest): the first is
   * trimmed to its share before they hold anything. */
  for (int i = 1; i < N; i++) {
    CHECK(tsr_block_cache_open(&m[i]->pub, BLOCK, i == 2 ? cap / 2 : cap, 2, NULL, 0, &c[i]) ==
              TESSERA_OK,
          "open");
    tsr_block_cache_usage(&held, &budget);
    CHECK(budget == cap && held <= cap / (uint64_t)(i + 1),
          "%d caches: %llu held of %llu", i + 1, (unsigned long long)held,
          (unsigned long long)budget);
  }
  /* All read at once, two threads each, hinting too: never more than the budget held. */
  struct sampler w = {.most = 0};
  atomic_init(&w.stop, false);
  pthread_t ws;
  pthread_create(&ws, NULL, sample_usage, &w);
  struct reader r[2 * N];
  pthread_t t[2 * N];
  for (int i = 0; i < 2 * N; i++) {
    r[i] = (struct reader){.cache = c[i % N], .mem = m[i % N], .seed = 77 + (unsigned long long)i};
    pthread_create(&t[i], NULL, read_randomly, &r[i]);
  }
  for (int i = 0; i < 2 * N; i++) {
    pthread_join(t[i], NULL);
    CHECK(r[i].wrong == 0 && r[i].failures_seen == 0, "reader %d: %d wrong, %d failed", i,
          r[i].wrong, r[i].failures_seen);
  }
  atomic_store(&w.stop, true);
  pthread_join(ws, NULL);
  tsr_block_cache_usage(&held, &budget);
  CHECK(w.most <= cap && held <= cap, "%d caches held %llu at most (now %llu) of a budget of %llu",
        N, (unsigned long long)w.most, (unsigned long long)held, (unsigned long long)cap);
  CHECK(held > cap / 2, "the caches hold only %llu of %llu: they do not use their shares",
        (unsigned long long)held, (unsigned long long)cap);
  /* The others closed, the first has the whole budget again. */
  for (int i = 1; i < N; i++)
    tsr_byte_source_close(c[i]);
  for (uint64_t off = 0; off < size; off += 20000) {
    size_t got;
    CHECK(tsr_bytes_read_at(c[0], off, 20000, buf, &got) == TESSERA_OK &&
              memcmp(buf, m[0]->bytes + off, got) == 0,
          "read");
  }
  tsr_block_cache_usage(&held, &budget);
  CHECK(budget == cap && held > cap - 2 * BLOCK && held <= cap,
        "one cache again: %llu held of %llu", (unsigned long long)held,
        (unsigned long long)budget);
  tsr_byte_source_close(c[0]);
  tsr_block_cache_usage(&held, &budget);
  CHECK(held == 0 && budget == 0, "all closed, yet %llu held of %llu", (unsigned long long)held,
        (unsigned long long)budget);
  free(buf);
}

/* A block hinted at is about to be read: it counts as just used, so the blocks fetched before
 * the reader reaches it do not evict it (they did when the batch reader hinted batches far
 * ahead, and the workers fetched those blocks again themselves, one round trip each). */
static void hinted_block_stays(void) {
  enum { BLOCK = 4096, HELD = 8 };
  uint64_t size = 64 * BLOCK;
  uint8_t *bytes = malloc(size);
  for (uint64_t i = 0; i < size; i++)
    bytes[i] = (uint8_t)(i * 7 + i / BLOCK);
  struct memory_source *m = memory_source(bytes, size);
  struct tsr_byte_source *cache;
  tessera_status st = tsr_block_cache_open(&m->pub, BLOCK, HELD * BLOCK, 2, NULL, 0, &cache);
  CHECK(st == TESSERA_OK, "block cache: %s", tessera_error_message());
  if (st != TESSERA_OK)
    return;
  cache->ops->opened(cache); /* no read-ahead: one block a miss */
  uint64_t granule = 0;
  CHECK(cache->ops->hint_room(cache, &granule) == HELD * BLOCK && granule == BLOCK,
        "hint_room: %llu in %llu", (unsigned long long)cache->ops->hint_room(cache, &granule),
        (unsigned long long)granule);
  uint8_t buf[BLOCK];
  size_t got;
  for (uint64_t i = 0; i < HELD; i++) /* full: block 0 the least recently used */
    tsr_bytes_read_at(cache, i * BLOCK, BLOCK, buf, &got);
  tsr_bytes_hint(cache, 100, 10); /* block 0, held: nothing to fetch, but read soon */
  tsr_bytes_read_at(cache, HELD * BLOCK, BLOCK, buf, &got); /* evicts one block */
  uint64_t before = m->pub.counters.requests;
  st = tsr_bytes_read_at(cache, 0, BLOCK, buf, &got);
  CHECK(st == TESSERA_OK && got == BLOCK && memcmp(buf, bytes, BLOCK) == 0, "block 0 reads wrong");
  CHECK(m->pub.counters.requests == before, "the hinted block was evicted: read again (%llu "
        "requests)", (unsigned long long)(m->pub.counters.requests - before));
  st = tsr_bytes_read_at(cache, BLOCK, BLOCK, buf, &got); /* block 1 was evicted instead */
  CHECK(st == TESSERA_OK && m->pub.counters.requests == before + 1,
        "block 1, the least recently used, was not the one evicted");
  tsr_byte_source_close(cache);
}

/* A source over memory that records the ranges hinted at, and says it holds `room` bytes of
 * them (the batch engine hints that many batches ahead). */
static uint64_t hinted[4096];
static atomic_int nhinted;
static uint64_t hint_room_bytes;

static void rec_hint(const struct tsr_byte_source *src, uint64_t offset, uint64_t length) {
  (void)src;
  (void)length;
  int i = nhinted++;
  if (i < 4096)
    hinted[i] = offset;
}

static uint64_t rec_hint_room(const struct tsr_byte_source *src, uint64_t *granule) {
  (void)src;
  *granule = 4096;
  return hint_room_bytes;
}

static const struct tsr_byte_source_ops rec_ops = {
    mem_read_at, mem_size, mem_identity, mem_close, rec_hint, NULL, rec_hint_room};

static bool was_hinted(uint64_t offset) {
  int n = nhinted < 4096 ? nhinted : 4096;
  for (int i = 0; i < n; i++)
    if (hinted[i] == offset)
      return true;
  return false;
}

/* The batch reader hints the tiles of the batches it schedules, and, on a source with room for
 * them, of up to 16 batches more: one patch a batch inside tile k of the Aperio slide's level 0,
 * so batch k hints tile k alone. The first batch asked for schedules batches 0-2 (prefetch 2),
 * so tiles 0-18 are hinted with room, 0-2 without, and no other tile either way. */
static void hints_run_ahead(const char *dir) {
  char path[4096];
  snprintf(path, sizeof path, "%s/aperio-jpeg-CMU-1-Small-Region.svs", dir);
  FILE *f = fopen(path, "rb");
  CHECK(f != NULL, "%s: cannot open it", path);
  if (!f)
    return;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  for (int with_room = 0; with_room < 2; with_room++) {
    uint8_t *bytes = malloc((size_t)n);
    CHECK(fread(bytes, 1, (size_t)n, f) == (size_t)n, "%s: cannot read it", path);
    fseek(f, 0, SEEK_SET);
    struct memory_source *m = memory_source(bytes, (uint64_t)n);
    m->pub.ops = &rec_ops;
    hint_room_bytes = with_room ? (uint64_t)1 << 30 : 0;
    tessera_slide *s;
    tessera_status st = tsr_slide_open_source(&m->pub, "aperio", NULL, &s);
    CHECK(st == TESSERA_OK, "aperio over a recording source: %s", tessera_error_message());
    if (st != TESSERA_OK)
      continue;
    const struct tsr_level *lv = &s->levels[0];
    enum { NB = 40 };
    CHECK(lv->ntiles >= NB, "%llu tiles", (unsigned long long)lv->ntiles);
    int64_t xy[2 * NB];
    for (int k = 0; k < NB; k++) {
      xy[2 * k] = (int64_t)(k % lv->across) * lv->tile_w + 8;
      xy[2 * k + 1] = (int64_t)(k / lv->across) * lv->tile_h + 8;
    }
    tessera_batch_options o;
    tessera_batch_options_init(&o);
    o.batch_size = 1;
    o.num_workers = 1;
    o.prefetch_factor = 2;
    nhinted = 0;
    tessera_batch_iter *it;
    CHECK(tessera_batch_iter_create(s, xy, NB, 64, 64, 0, &o, &it) == TESSERA_OK, "iterator");
    tessera_batch *b = NULL;
    CHECK(tessera_batch_iter_next(it, &b) == TESSERA_OK && b, "first batch");
    tessera_batch_release(b);
    int last = with_room ? 18 : 2, wrong = 0;
    for (int k = 0; k < NB; k++)
      wrong += was_hinted(lv->offsets[k]) != (k <= last);
    CHECK(wrong == 0, "room %d: %d tiles hinted or not against batches 0-%d", with_room, wrong,
          last);
    tessera_batch_iter_destroy(it);
    tessera_close(s);
  }
  fclose(f);
}

/* Every slide of the test data through a block cache over memory: the pixels of its file, in
 * whole levels (small ones) and in batches (whose scheduling hints the tiles' bytes). */
static void check_slide(const char *dir, const char *file) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, file);
  tessera_slide *a, *b;
  if (tessera_open(path, &a) != TESSERA_OK)
    return; /* not a slide (the README) */
  FILE *f = fopen(path, "rb");
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *bytes = malloc((size_t)n);
  CHECK(fread(bytes, 1, (size_t)n, f) == (size_t)n, "%s: cannot read it", path);
  fclose(f);
  struct memory_source *m = memory_source(bytes, (uint64_t)n);
  struct tsr_byte_source *cache;
  CHECK(tsr_block_cache_open(&m->pub, 8192, 128 << 10, 6, NULL, 0, &cache) == TESSERA_OK, "%s",
        file);
  tessera_status st = tsr_slide_open_source(cache, file, NULL, &b);
  CHECK(st == TESSERA_OK, "%s through a block cache: %s", file, tessera_error_message());
  if (st != TESSERA_OK) {
    tessera_close(a);
    return;
  }
  for (int32_t level = 0; level < tessera_level_count(a); level++) {
    tessera_level_info info = {.struct_size = sizeof info};
    tessera_level_info_get(a, level, &info);
    enum { PW = 96, PH = 80, NP = 40 };
    int64_t xy[2 * NP];
    unsigned long long s = 7 + (unsigned long long)level;
    int64_t w0 = (int64_t)((double)info.width * info.downsample);
    int64_t h0 = (int64_t)((double)info.height * info.downsample);
    for (int i = 0; i < NP; i++) {
      xy[2 * i] = (int64_t)(test_rand(&s) % (unsigned long long)(w0 + 1));
      xy[2 * i + 1] = (int64_t)(test_rand(&s) % (unsigned long long)(h0 + 1));
    }
    tessera_batch_options o;
    tessera_batch_options_init(&o);
    o.batch_size = 8;
    o.num_workers = 3;
    tessera_batch_iter *ia, *ib;
    CHECK(tessera_batch_iter_create(a, xy, NP, PW, PH, level, &o, &ia) == TESSERA_OK, "%s", file);
    CHECK(tessera_batch_iter_create(b, xy, NP, PW, PH, level, &o, &ib) == TESSERA_OK, "%s", file);
    for (;;) {
      tessera_batch *ba = NULL, *bb = NULL;
      tessera_status sa = tessera_batch_iter_next(ia, &ba);
      tessera_status sb = tessera_batch_iter_next(ib, &bb);
      CHECK(sa == sb, "%s level %d: %d and %d", file, level, sa, sb);
      CHECK((ba == NULL) == (bb == NULL), "%s level %d: batch counts differ", file, level);
      if (ba && bb)
        CHECK(ba->size == bb->size && memcmp(ba->data, bb->data, ba->size) == 0,
              "%s level %d batch %zu differs", file, level, ba->number);
      tessera_batch_release(ba);
      tessera_batch_release(bb);
      if (!ba || !bb)
        break;
    }
    tessera_batch_iter_destroy(ia);
    tessera_batch_iter_destroy(ib);
  }
  tessera_close(a);
  tessera_close(b);
}

int main(int argc, char **argv) {
  random_reads();
  hinted_block_stays();
  shared_budget();
  const char *dir = testdata_dir(argc, argv);
  hints_run_ahead(dir);
  DIR *d = opendir(dir);
  CHECK(d != NULL, "cannot list %s", dir);
  int files = 0;
  for (struct dirent *e; d && (e = readdir(d));) {
    if (e->d_name[0] == '.')
      continue;
    check_slide(dir, e->d_name);
    files++;
  }
  if (d)
    closedir(d);
  CHECK(files > 1, "no test data in %s", dir);
  return check_finish("test_block_cache");
}
