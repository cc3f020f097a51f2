/* The pool, whole-level reads and the batch iterator, from several threads at once: every
 * patch of every batch equals a single tessera_read_region of its location, whatever the
 * options; iterators destroyed at random points with work in flight leak nothing and leave
 * handed-out batches valid; a damaged tile fails exactly the batches that need it; a forked
 * child gets a working pool. This program runs plain, under ASan+UBSan and under TSan. */
#include <dirent.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/wait.h>
#include <tiffio.h>
#include <unistd.h>

#include "alloc.h"
#include "budget.h"
#include "check.h"
#include "damage.h"
#include "tessera.h"
#include "tile.h"

struct level_size {
  int64_t w, h;
  double ds;
};

static struct level_size level_size(tessera_slide *s, int32_t level) {
  tessera_level_info info = {.struct_size = sizeof info};
  tessera_level_info_get(s, level, &info);
  return (struct level_size){info.width, info.height, info.downsample};
}

/* Random locations in level-0 pixels: inside, straddling tile edges, outside, negative. */
static int64_t *random_locations(tessera_slide *s, int32_t level, size_t n, int64_t pw, int64_t ph,
                                 unsigned long long *rng) {
  struct level_size ls = level_size(s, level);
  int64_t *xy = malloc(2 * n * sizeof *xy + 1);
  for (size_t i = 0; i < n; i++) {
    int64_t lx = (int64_t)(test_rand(rng) % (uint64_t)(ls.w + 2 * pw)) - pw;
    int64_t ly = (int64_t)(test_rand(rng) % (uint64_t)(ls.h + 2 * ph)) - ph;
    if (test_rand(rng) % 8 == 0)
      lx = -3 * pw; /* wholly outside */
    xy[2 * i] = (int64_t)((double)lx * ls.ds);
    xy[2 * i + 1] = (int64_t)((double)ly * ls.ds);
  }
  return xy;
}

/* Compares one patch with a single region read of the same location. */
static int check_patch(tessera_slide *s, int32_t level, const int64_t *xy, int64_t w, int64_t h,
                       int channels, int fill, const uint8_t *patch) {
  size_t size = (size_t)(w * h * channels);
  uint8_t *want = malloc(size);
  tessera_read_options o;
  tessera_read_options_init(&o);
  o.channels = channels;
  o.fill = fill;
  tessera_status st = tessera_read_region(s, xy[0], xy[1], level, w, h, &o, want, size);
  int bad = st != TESSERA_OK || memcmp(want, patch, size) != 0;
  free(want);
  return bad;
}

struct stream_case {
  tessera_slide *s;
  const char *path;
  int32_t level;
  unsigned long long seed;
  int failures;
};

/* One iterator with options drawn from the seed, drained to the end and checked. */
static int stream_and_check(tessera_slide *s, const char *path, int32_t level,
                            unsigned long long *rng) {
  size_t n = (size_t)(test_rand(rng) % 40);
  int64_t w = 1 + (int64_t)(test_rand(rng) % 300), h = 1 + (int64_t)(test_rand(rng) % 300);
  tessera_batch_options o;
  tessera_batch_options_init(&o);
  o.batch_size = 1 + (int)(test_rand(rng) % 7);
  o.num_workers = (int)(test_rand(rng) % 4);
  o.prefetch_factor = 1 + (int)(test_rand(rng) % 3);
  o.drop_last = test_rand(rng) % 2 == 0;
  o.shuffle = test_rand(rng) % 2 == 0;
  o.seed = test_rand(rng);
  o.channels = test_rand(rng) % 2 ? 3 : 4;
  o.fill = test_rand(rng) % 2 ? -1 : (int)(test_rand(rng) % 256);
  int64_t *xy = random_locations(s, level, n, w, h, rng);
  tessera_batch_iter *it = NULL;
  tessera_status st = tessera_batch_iter_create(s, xy, n, w, h, level, &o, &it);
  CHECK(st == TESSERA_OK, "%s: create: %s", path, tessera_error_message());
  int fails = 0;
  size_t expect = o.drop_last ? n / (size_t)o.batch_size
                              : (n + (size_t)o.batch_size - 1) / (size_t)o.batch_size;
  CHECK(tessera_batch_iter_length(it) == expect, "%s: length %zu, expected %zu", path,
        tessera_batch_iter_length(it), expect);
  char *seen = calloc(n + 1, 1);
  size_t batches = 0, patches = 0;
  for (tessera_batch *b; it;) {
    st = tessera_batch_iter_next(it, &b);
    if (st != TESSERA_OK) {
      CHECK(0, "%s level %d: next: %s", path, level, tessera_error_message());
      break;
    }
    if (!b)
      break;
    CHECK(b->number == batches, "batch number %zu, expected %zu", b->number, batches);
    size_t want = n - batches * (size_t)o.batch_size;
    if (want > (size_t)o.batch_size)
      want = (size_t)o.batch_size;
    CHECK(b->count == want, "batch of %zu, expected %zu", b->count, want);
    CHECK(b->size == b->count * (size_t)(w * h * o.channels), "batch size %zu", b->size);
    for (size_t p = 0; p < b->count; p++) {
      uint64_t index = b->indices[p];
      CHECK(index < n && !seen[index], "index %llu repeated or out of range",
            (unsigned long long)index);
      if (index >= n)
        continue;
      seen[index] = 1;
      if (!o.shuffle)
        CHECK(index == batches * (size_t)o.batch_size + p, "unshuffled order broken");
      fails += check_patch(s, level, &xy[2 * index], w, h, o.channels, o.fill,
                           b->data + p * (size_t)(w * h * o.channels));
    }
    patches += b->count;
    batches++;
    tessera_batch_release(b);
  }
  CHECK(batches == expect, "%s: %zu batches, expected %zu", path, batches, expect);
  CHECK(patches == (o.drop_last ? expect * (size_t)o.batch_size : n), "%s: %zu patches", path,
        patches);
  tessera_batch_iter_destroy(it);
  free(seen);
  free(xy);
  return fails;
}

static void *stream_thread(void *arg) {
  struct stream_case *c = arg;
  for (int i = 0; i < 4; i++)
    c->failures += stream_and_check(c->s, c->path, c->level, &c->seed);
  return NULL;
}

/* Whole-level reads over workers equal the same read in the calling thread. */
static void check_whole_level(tessera_slide *s, const char *path, int32_t level) {
  struct level_size ls = level_size(s, level);
  size_t size = (size_t)(ls.w * ls.h * 4);
  uint8_t *one = malloc(size), *many = malloc(size);
  tessera_read_options o;
  tessera_read_options_init(&o);
  o.channels = 4;
  tessera_status a = tessera_read_level(s, level, &o, one, size);
  o.num_workers = 4;
  memset(many, 0x5A, size);
  tessera_status b = tessera_read_level(s, level, &o, many, size);
  CHECK(a == TESSERA_OK && b == TESSERA_OK, "%s level %d: %s", path, level,
        tessera_error_message());
  CHECK(memcmp(one, many, size) == 0, "%s level %d: 4 workers differ from 1", path, level);
  CHECK(tessera_read_level(s, level, &o, many, size - 1) == TESSERA_E_ARGUMENT,
        "short destination accepted");
  free(one);
  free(many);
}

/* Iterators destroyed after a random number of batches, some batches still held; those stay
 * valid after the destroy until released. */
static void destroy_midway(tessera_slide *s, const char *path, unsigned long long *rng) {
  for (int round = 0; round < 12; round++) {
    size_t n = 20 + (size_t)(test_rand(rng) % 60);
    int64_t w = 64 + (int64_t)(test_rand(rng) % 200);
    tessera_batch_options o;
    tessera_batch_options_init(&o);
    o.batch_size = 1 + (int)(test_rand(rng) % 5);
    o.num_workers = 1 + (int)(test_rand(rng) % 3);
    o.prefetch_factor = 1 + (int)(test_rand(rng) % 4);
    int64_t *xy = random_locations(s, 0, n, w, w, rng);
    tessera_batch_iter *it = NULL;
    if (tessera_batch_iter_create(s, xy, n, w, w, 0, &o, &it) != TESSERA_OK) {
      CHECK(0, "%s: create: %s", path, tessera_error_message());
      free(xy);
      continue;
    }
    size_t take = (size_t)(test_rand(rng) % (tessera_batch_iter_length(it) + 1));
    tessera_batch *held[4] = {0};
    size_t nheld = 0;
    for (size_t i = 0; i < take; i++) {
      tessera_batch *b = NULL;
      if (tessera_batch_iter_next(it, &b) != TESSERA_OK || !b)
        break;
      if (nheld < 4 && test_rand(rng) % 2)
        held[nheld++] = b;
      else
        tessera_batch_release(b);
    }
    tessera_batch_iter_destroy(it);
    for (size_t i = 0; i < nheld; i++) {
      tessera_batch *b = held[i];
      for (size_t p = 0; p < b->count; p++)
        CHECK(!check_patch(s, 0, &xy[2 * b->indices[p]], w, w, 3, -1,
                           b->data + p * (size_t)(w * w * 3)),
              "%s: a batch held across destroy changed", path);
      tessera_batch_release(b);
    }
    free(xy);
  }
}

static void test_file(const char *path) {
  tessera_slide *s = NULL;
  if (tessera_open(path, &s) != TESSERA_OK) {
    CHECK(0, "%s: %s", path, tessera_error_message());
    return;
  }
  unsigned long long rng = 7;
  for (int32_t level = 0; level < tessera_level_count(s); level++) {
    struct level_size ls = level_size(s, level);
    if (ls.w * ls.h > 12000000)
      continue; /* the biggest test-data level would take minutes under the sanitizers */
    check_whole_level(s, path, level);
    struct stream_case cases[3];
    pthread_t t[3];
    for (int i = 0; i < 3; i++) {
      cases[i] = (struct stream_case){s, path, level, rng + 100u * (unsigned)i, 0};
      pthread_create(&t[i], NULL, stream_thread, &cases[i]);
    }
    int fails = stream_and_check(s, path, level, &rng);
    for (int i = 0; i < 3; i++) {
      pthread_join(t[i], NULL);
      fails += cases[i].failures;
    }
    CHECK(fails == 0, "%s level %d: %d patches differ from single reads", path, level, fails);
  }
  destroy_midway(s, path, &rng);
  tessera_close(s);
}

/* Opens a file of the test data (its path left in path); NULL, with a failed check, if it
 * cannot be opened. */
static tessera_slide *open_testdata(const char *dir, const char *name, char *path, size_t size) {
  snprintf(path, size, "%s/%s", dir, name);
  tessera_slide *s = NULL;
  if (tessera_open(path, &s) != TESSERA_OK)
    CHECK(0, "%s: %s", path, tessera_error_message());
  return s;
}

/* A damaged tile fails the batches that need it with its message, and only those. */
static void test_damaged_tile(const char *dir) {
  char src[4096], tmp[] = "/tmp/tessera-batch-XXXXXX.tiff";
  snprintf(src, sizeof src, "%s/generic-jpeg-ycbcr-128tiles.tiff", dir);
  int fd = mkstemps(tmp, 5);
  CHECK(fd >= 0, "mkstemps");
  if (fd < 0)
    return;
  close(fd);
  tessera_slide *s = NULL;
  int ok = test_copy_file(src, tmp) && test_damage_tile(tmp, 5) && tessera_open(tmp, &s) == TESSERA_OK;
  CHECK(ok, "could not make a damaged copy of %s: %s", src, tessera_error_message());
  tessera_level_info info = {.struct_size = sizeof info};
  if (ok)
    tessera_level_info_get(s, 0, &info);
  int64_t tw = info.tile_width, th = info.tile_height;
  /* The level is 4 x 3 tiles. Batches of 2: (tile 0, tile 1), (tile 5, tile 6), (tile 2,
   * tile 3). */
  CHECK(!ok || info.width == 4 * tw, "the test expects 4 tiles across");
  int64_t xy[] = {0, 0, tw, 0, tw, th, 2 * tw, th, 2 * tw, 0, 3 * tw, 0};
  for (int workers = 0; ok && workers <= 2; workers += 2) {
    tessera_batch_options o;
    tessera_batch_options_init(&o);
    o.batch_size = 2;
    o.num_workers = workers;
    tessera_batch_iter *it = NULL;
    CHECK(tessera_batch_iter_create(s, xy, 6, tw, th, 0, &o, &it) == TESSERA_OK, "create");
    tessera_status st[3];
    tessera_batch *b[3];
    char message[3][1024];
    for (int i = 0; i < 3; i++) {
      st[i] = tessera_batch_iter_next(it, &b[i]);
      snprintf(message[i], sizeof message[i], "%s", tessera_error_message());
    }
    tessera_batch *end = (tessera_batch *)1;
    CHECK(tessera_batch_iter_next(it, &end) == TESSERA_OK && end == NULL, "no end after 3");
    CHECK(st[0] == TESSERA_OK && b[0] && b[0]->number == 0, "batch 0 failed");
    CHECK(st[1] == TESSERA_E_CORRUPT && b[1] == NULL, "batch 1 status %d", st[1]);
    CHECK(strstr(message[1], "tile 5") != NULL, "message does not name the tile: %s", message[1]);
    CHECK(st[2] == TESSERA_OK && b[2] && b[2]->number == 2, "batch 2 failed");
    for (int i = 0; i < 3; i += 2)
      if (b[i])
        for (size_t p = 0; p < 2; p++)
          CHECK(!check_patch(s, 0, &xy[2 * b[i]->indices[p]], tw, th, 3, -1,
                             b[i]->data + p * (size_t)(tw * th * 3)),
                "batch %d differs", i);
    tessera_batch_release(b[0]);
    tessera_batch_release(b[2]);
    tessera_batch_iter_destroy(it);
  }
  tessera_close(s);
  unlink(tmp);
}

/* The pool is started in the parent; the child, which has none of its threads, must get its
 * own on first use instead of waiting forever on the parent's. */
static void test_fork(const char *dir) {
  char path[4096];
  tessera_slide *s = open_testdata(dir, "generic-jpeg-ycbcr-128tiles.tiff", path, sizeof path);
  if (!s)
    return;
  unsigned long long rng = 99;
  int fails = stream_and_check(s, path, 0, &rng);
  pid_t pid = fork();
  if (pid == 0) {
    int bad = 0, before = check_failures;
    for (int i = 0; i < 3; i++)
      bad += stream_and_check(s, path, 0, &rng);
    _exit(bad || check_failures != before ? 1 : 0);
  }
  int status = 0;
  CHECK(pid > 0 && waitpid(pid, &status, 0) == pid, "fork/wait failed");
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the forked child failed (status %d)",
        status);
  CHECK(fails == 0, "parent patches differ");
  tessera_close(s);
}

static void test_arguments(const char *dir) {
  char path[4096];
  tessera_slide *s = open_testdata(dir, "generic-jpeg-ycbcr-128tiles.tiff", path, sizeof path);
  if (!s)
    return;
  int64_t xy[2] = {0, 0};
  tessera_batch_iter *it = (tessera_batch_iter *)1;
  tessera_batch_options o;
  struct {
    const char *what;
    int field, value;
  } bad[] = {{"batch_size", 0, 0}, {"num_workers", 1, -1}, {"prefetch_factor", 2, 0},
             {"channels", 3, 5},   {"fill", 4, 256},       {"fill", 4, -2}};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    tessera_batch_options_init(&o);
    int32_t *f[] = {&o.batch_size, &o.num_workers, &o.prefetch_factor, &o.channels, &o.fill};
    *f[bad[i].field] = bad[i].value;
    CHECK(tessera_batch_iter_create(s, xy, 1, 8, 8, 0, &o, &it) == TESSERA_E_ARGUMENT && !it,
          "%s = %d accepted", bad[i].what, bad[i].value);
    CHECK(strstr(tessera_error_message(), bad[i].what) != NULL, "message: %s",
          tessera_error_message());
  }
  CHECK(tessera_batch_iter_create(s, xy, 1, 0, 8, 0, NULL, &it) == TESSERA_E_ARGUMENT, "width 0");
  CHECK(tessera_batch_iter_create(s, xy, 1, 8, 8, 99, NULL, &it) == TESSERA_E_ARGUMENT, "level 99");
  CHECK(tessera_batch_iter_create(s, NULL, 1, 8, 8, 0, NULL, &it) == TESSERA_E_ARGUMENT,
        "NULL locations");
  CHECK(tessera_batch_iter_create(s, NULL, 0, 8, 8, 0, NULL, &it) == TESSERA_OK && it,
        "n = 0 refused: %s", tessera_error_message());
  tessera_batch *b = (tessera_batch *)1;
  CHECK(tessera_batch_iter_length(it) == 0, "n = 0 has batches");
  CHECK(tessera_batch_iter_next(it, &b) == TESSERA_OK && !b, "n = 0 gave a batch");
  tessera_batch_iter_destroy(it);
  /* ... with workers, shuffling, drop_last and a location array all the same */
  tessera_batch_options_init(&o);
  o.batch_size = 32;
  o.num_workers = 3;
  o.prefetch_factor = 4;
  o.shuffle = 1;
  o.drop_last = 1;
  o.channels = 4;
  CHECK(tessera_batch_iter_create(s, xy, 0, 224, 224, 0, &o, &it) == TESSERA_OK && it,
        "n = 0 with workers refused: %s", tessera_error_message());
  CHECK(tessera_batch_iter_length(it) == 0, "n = 0 with workers has batches");
  for (int i = 0; i < 2; i++)
    CHECK(tessera_batch_iter_next(it, &b) == TESSERA_OK && !b, "n = 0 with workers: a batch");
  tessera_batch_iter_destroy(it);
  tessera_batch_iter_destroy(NULL);
  tessera_batch_release(NULL);
  tessera_close(s);
}

/* Overlapping patches (a sliding window at half a tile) in one batch: each tile is read once,
 * however many patches need it; with one patch per batch and no workers, tiles shared by
 * consecutive patches are read again (nothing is cached across batches). */
static void test_tile_sharing(const char *dir) {
  char path[4096];
  tessera_slide *s = open_testdata(dir, "generic-jpeg-ycbcr-128tiles.tiff", path, sizeof path);
  if (!s)
    return;
  /* 512 x 384 in 128 x 128 tiles; 128 x 128 patches every 64 pixels: 7 x 5 patches. */
  int64_t xy[2 * 35];
  for (int i = 0; i < 35; i++) {
    xy[2 * i] = 64 * (i % 7);
    xy[2 * i + 1] = 64 * (i / 7);
  }
  for (int batch_size = 1; batch_size <= 35; batch_size += 34) {
    for (int workers = 0; workers <= 1; workers++) {
      tessera_batch_options o;
      tessera_batch_options_init(&o);
      o.batch_size = batch_size;
      o.num_workers = workers;
      tessera_batch_iter *it = NULL;
      CHECK(tessera_batch_iter_create(s, xy, 35, 128, 128, 0, &o, &it) == TESSERA_OK, "create");
      /* Every batch is held until the end, so only the iterator reads tiles meanwhile. */
      tessera_batch *held[35];
      size_t nheld = 0;
      uint64_t before = tsr_tile_reads();
      for (tessera_batch *b; nheld < 35 && tessera_batch_iter_next(it, &b) == TESSERA_OK && b;)
        held[nheld++] = b;
      uint64_t reads = tsr_tile_reads() - before;
      int fails = 0;
      for (size_t i = 0; i < nheld; i++) {
        for (size_t p = 0; p < held[i]->count; p++)
          fails += check_patch(s, 0, &xy[2 * held[i]->indices[p]], 128, 128, 3, -1,
                               held[i]->data + p * 128 * 128 * 3);
        tessera_batch_release(held[i]);
      }
      tessera_batch_iter_destroy(it);
      CHECK(fails == 0, "sliding patches differ from single reads");
      /* A patch at an odd multiple of 64 overlaps 2 tiles per odd coordinate. */
      uint64_t per_patch = 0;
      for (int i = 0; i < 35; i++)
        per_patch += (uint64_t)((i % 7) % 2 ? 2 : 1) * ((i / 7) % 2 ? 2 : 1);
      if (batch_size == 35)
        CHECK(reads == 12, "batch of 35: %llu tile reads, the patches touch 12 tiles",
              (unsigned long long)reads);
      else if (workers == 0)
        CHECK(reads == per_patch, "one by one: %llu tile reads, expected %llu",
              (unsigned long long)reads, (unsigned long long)per_patch);
    }
  }
  tessera_close(s);
}

/* Once warm, a long stream allocates nothing through the library's allocator: batch buffers,
 * jobs and per-thread tile buffers are all reused. (libjpeg's own per-image memory is not
 * ours to pool.) No workers, so every allocation happens in this thread, in a fixed order. */
static void test_no_allocation_when_warm(const char *dir) {
  char path[4096];
  tessera_slide *s = open_testdata(dir, "aperio-jpeg-CMU-1-Small-Region.svs", path, sizeof path);
  if (!s)
    return;
  enum { N = 400 };
  static int64_t xy[2 * N];
  unsigned long long rng = 5;
  for (int i = 0; i < N; i++) {
    xy[2 * i] = (int64_t)(test_rand(&rng) % 2000);
    xy[2 * i + 1] = (int64_t)(test_rand(&rng) % 1500);
  }
  tessera_batch_options o;
  tessera_batch_options_init(&o);
  o.batch_size = 8;
  tessera_batch_iter *it = NULL;
  CHECK(tessera_batch_iter_create(s, xy, N, 224, 224, 0, &o, &it) == TESSERA_OK, "create");
  unsigned long warm = 0;
  size_t batches = 0;
  for (tessera_batch *b; tessera_batch_iter_next(it, &b) == TESSERA_OK && b; batches++) {
    if (batches == 10)
      warm = tsr_alloc_count();
    tessera_batch_release(b);
  }
  unsigned long after = tsr_alloc_count();
  CHECK(batches == N / 8, "%zu batches", batches);
  CHECK(after == warm, "%lu allocations in %zu batches after warm-up", after - warm, batches - 10);
  tessera_batch_iter_destroy(it);
  tessera_close(s);
}

struct release_job {
  tessera_batch *batch;
};

static void *release_thread(void *arg) {
  tessera_batch_release(((struct release_job *)arg)->batch);
  return NULL;
}

/* The last batch released by another thread while destroy runs (and while runners still
 * decode prefetched batches): whichever lets go last frees the iterator, exactly once. */
static void test_release_races_destroy(const char *dir) {
  char path[4096];
  tessera_slide *s = open_testdata(dir, "aperio-jpeg-CMU-1-Small-Region.svs", path, sizeof path);
  if (!s)
    return;
  unsigned long long rng = 11;
  int64_t *xy = random_locations(s, 0, 64, 200, 200, &rng);
  for (int round = 0; round < 150; round++) {
    tessera_batch_options o;
    tessera_batch_options_init(&o);
    o.batch_size = 2;
    o.num_workers = 2;
    o.prefetch_factor = 4;
    tessera_batch_iter *it = NULL;
    tessera_batch *b = NULL;
    if (tessera_batch_iter_create(s, xy, 64, 200, 200, 0, &o, &it) != TESSERA_OK ||
        tessera_batch_iter_next(it, &b) != TESSERA_OK || !b) {
      CHECK(0, "stream: %s", tessera_error_message());
      tessera_batch_iter_destroy(it);
      break;
    }
    struct release_job r = {b};
    pthread_t t;
    pthread_create(&t, NULL, release_thread, &r);
    tessera_batch_iter_destroy(it);
    pthread_join(t, NULL);
  }
  free(xy);
  tessera_close(s);
}

struct endless_stream {
  tessera_slide *s;
  atomic_int stop;
  int batches;
};

static void *endless_stream_thread(void *arg) {
  struct endless_stream *e = arg;
  unsigned long long rng = 3;
  int64_t *xy = random_locations(e->s, 0, 4096, 256, 256, &rng);
  tessera_batch_options o;
  tessera_batch_options_init(&o);
  o.batch_size = 4;
  o.num_workers = 64; /* every thread of the pool, and more */
  o.prefetch_factor = 8;
  tessera_batch_iter *it = NULL;
  if (tessera_batch_iter_create(e->s, xy, 4096, 256, 256, 0, &o, &it) == TESSERA_OK) {
    for (tessera_batch *b;
         !atomic_load(&e->stop) && tessera_batch_iter_next(it, &b) == TESSERA_OK && b;) {
      e->batches++;
      tessera_batch_release(b);
    }
  }
  tessera_batch_iter_destroy(it);
  free(xy);
  return NULL;
}

/* A stream that keeps every pool thread busy must not starve a parallel region read made
 * meanwhile in another thread (its helpers queue behind the stream's runners, which give
 * their threads up after each tile), nor a second iterator. */
static void test_no_starvation(const char *dir) {
  char path[4096];
  tessera_slide *s = open_testdata(dir, "aperio-jpeg-CMU-1-Small-Region.svs", path, sizeof path);
  if (!s)
    return;
  struct endless_stream e = {s, 0, 0};
  pthread_t t;
  pthread_create(&t, NULL, endless_stream_thread, &e);
  tessera_level_info info = {.struct_size = sizeof info};
  tessera_level_info_get(s, 0, &info);
  size_t size = (size_t)(info.width * info.height * 3);
  uint8_t *a = malloc(size), *b = malloc(size);
  tessera_read_options o;
  tessera_read_options_init(&o);
  tessera_status sa = tessera_read_level(s, 0, &o, a, size);
  o.num_workers = 3;
  for (int i = 0; i < 3; i++) {
    tessera_status sb = tessera_read_level(s, 0, &o, b, size);
    CHECK(sa == TESSERA_OK && sb == TESSERA_OK && memcmp(a, b, size) == 0,
          "a parallel read during a stream differs or failed: %s", tessera_error_message());
  }
  unsigned long long rng = 21;
  CHECK(stream_and_check(s, path, 0, &rng) == 0, "a second stream differs");
  atomic_store(&e.stop, 1);
  pthread_join(t, NULL);
  CHECK(e.batches > 0, "the endless stream made no progress");
  free(a);
  free(b);
  tessera_close(s);
}

/* An iterator with work in flight when the process forks: in the child it fails clearly
 * instead of waiting forever for runners that stayed with the parent, and destroying it
 * there returns. */
static void test_fork_with_iterator_in_flight(const char *dir) {
  char path[4096];
  tessera_slide *s = open_testdata(dir, "aperio-jpeg-CMU-1-Small-Region.svs", path, sizeof path);
  if (!s)
    return;
  unsigned long long rng = 17;
  int64_t *xy = random_locations(s, 0, 200, 256, 256, &rng);
  tessera_batch_options o;
  tessera_batch_options_init(&o);
  o.batch_size = 4;
  o.num_workers = 2;
  o.prefetch_factor = 6;
  tessera_batch_iter *it = NULL;
  tessera_batch *b = NULL;
  CHECK(tessera_batch_iter_create(s, xy, 200, 256, 256, 0, &o, &it) == TESSERA_OK &&
            tessera_batch_iter_next(it, &b) == TESSERA_OK && b,
        "stream: %s", tessera_error_message());
  pid_t pid = fork();
  if (pid == 0) {
    alarm(20); /* a hang is a failure, not a stuck test */
    tessera_batch *c = NULL;
    tessera_status st = tessera_batch_iter_next(it, &c);
    int ok = st == TESSERA_E_ARGUMENT && !c && strstr(tessera_error_message(), "fork");
    tessera_batch_iter_destroy(it);
    _exit(ok ? 0 : 1);
  }
  int status = 0;
  CHECK(pid > 0 && waitpid(pid, &status, 0) == pid, "fork/wait failed");
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
        "the child with an inherited iterator failed or hung (status %d)", status);
  tessera_batch_release(b);
  tessera_batch_iter_destroy(it);
  free(xy);
  tessera_close(s);
}

/* Reads level `level` of s whole with 4 workers into a new buffer (NULL on failure). */
static uint8_t *read_whole(tessera_slide *s, int32_t level, size_t *size) {
  struct level_size ls = level_size(s, level);
  *size = (size_t)(ls.w * ls.h * 3);
  uint8_t *buf = malloc(*size);
  tessera_read_options o;
  tessera_read_options_init(&o);
  o.num_workers = 4;
  tessera_status st = tessera_read_level(s, level, &o, buf, *size);
  CHECK(st == TESSERA_OK, "read level %d: %s", level, tessera_error_message());
  if (st != TESSERA_OK) {
    free(buf);
    return NULL;
  }
  return buf;
}

struct holder {
  pthread_mutex_t lock;
  pthread_cond_t changed;
  int state; /* 0 starting, 1 holding the whole budget, 2 told to let go */
};

static void *hold_budget(void *arg) {
  struct holder *h = arg;
  tsr_budget_reserve(tessera_decode_budget_get());
  pthread_mutex_lock(&h->lock);
  h->state = 1;
  pthread_cond_broadcast(&h->changed);
  while (h->state != 2)
    pthread_cond_wait(&h->changed, &h->lock);
  pthread_mutex_unlock(&h->lock);
  tsr_budget_release(tessera_decode_budget_get());
  return NULL;
}

/* The process-wide decode budget: reads with 4 workers never hold more decoded scratch at
 * once than it allows (zstd decodes whole 1024 x 1024 tiles: 3 MiB each), a tile larger than
 * the whole budget is decoded alone rather than refused, batches of patches sharing tiles
 * under a budget smaller than one tile finish (no wait closes a cycle), pixels stay those of
 * the default budget, and a child forked while another thread holds the whole budget does
 * not wait for that thread's release, which will never come there. */
static void test_decode_budget(const char *dir) {
  char path[4096];
  tessera_slide *s = open_testdata(dir, "generic-zstd-1024tiles-pyramid.tiff", path, sizeof path);
  if (!s)
    return;
  const uint64_t tile = 1024 * 1024 * 3, mib = 1 << 20;
  uint64_t initial = tessera_decode_budget_get();
  CHECK(initial == (uint64_t)1 << 30, "default decode budget %llu", (unsigned long long)initial);
  CHECK(tessera_decode_budget_set(0) == TESSERA_E_ARGUMENT, "a budget of 0 accepted");
  size_t size;
  uint8_t *want = read_whole(s, 2, &size);
  for (int k = 0; want && k < 2; k++) {
    uint64_t budget = k == 0 ? 4 * mib : 1 * mib; /* room for one tile, then for none */
    CHECK(tessera_decode_budget_set(budget) == TESSERA_OK, "set: %s", tessera_error_message());
    CHECK(tessera_decode_budget_get() == budget, "get after set");
    tsr_budget_peak_take();
    uint8_t *got = read_whole(s, 2, &size);
    uint64_t peak = tsr_budget_peak_take();
    CHECK(got && memcmp(got, want, size) == 0, "budget %llu: pixels differ",
          (unsigned long long)budget);
    CHECK(peak == tile, "budget %llu: %llu bytes decoding at once, not one tile's %llu",
          (unsigned long long)budget, (unsigned long long)peak, (unsigned long long)tile);
    free(got);
  }
  /* Patches sharing tiles: each tile is decoded into scratch and copied to several. */
  unsigned long long rng = 5;
  size_t n = 40;
  int64_t *xy = random_locations(s, 2, n, 300, 300, &rng);
  tessera_batch_options bo;
  tessera_batch_options_init(&bo);
  bo.batch_size = 8;
  bo.num_workers = 4;
  tessera_batch_iter *it = NULL;
  CHECK(tessera_batch_iter_create(s, xy, n, 300, 300, 2, &bo, &it) == TESSERA_OK, "create: %s",
        tessera_error_message());
  int bad = 0;
  for (tessera_batch *b; it && tessera_batch_iter_next(it, &b) == TESSERA_OK && b;) {
    for (size_t p = 0; p < b->count; p++)
      bad +=
          check_patch(s, 2, &xy[2 * b->indices[p]], 300, 300, 3, -1, b->data + p * 300 * 300 * 3);
    tessera_batch_release(b);
  }
  tessera_batch_iter_destroy(it);
  CHECK(bad == 0, "%d patches differ under a budget smaller than a tile", bad);
  free(xy);
  /* fork() while another thread holds the whole budget. */
  struct holder h = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
  pthread_t t;
  pthread_create(&t, NULL, hold_budget, &h);
  pthread_mutex_lock(&h.lock);
  while (h.state != 1)
    pthread_cond_wait(&h.changed, &h.lock);
  pthread_mutex_unlock(&h.lock);
  pid_t pid = fork();
  if (pid == 0) {
    alarm(120); /* a child waiting for the parent's reservation would wait forever */
    size_t child_size;
    uint8_t *got = read_whole(s, 2, &child_size);
    _exit(got && want && memcmp(got, want, size) == 0 ? 0 : 1);
  }
  int status = 0;
  CHECK(pid > 0 && waitpid(pid, &status, 0) == pid, "fork/wait failed");
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
        "the child forked while the budget was held failed (status %d)", status);
  pthread_mutex_lock(&h.lock);
  h.state = 2;
  pthread_cond_broadcast(&h.changed);
  pthread_mutex_unlock(&h.lock);
  pthread_join(t, NULL);
  tessera_decode_budget_set(initial);
  free(want);
  tessera_close(s);
}

static void put16(FILE *f, unsigned v) {
  uint8_t b[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
  fwrite(b, 1, 2, f);
}
static void put32(FILE *f, uint32_t v) {
  uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
  fwrite(b, 1, 4, f);
}

/* An uncompressed RGB side x side TIFF of tile x tile tiles, which libtiff will not write
 * (TIFF asks for multiples of 16): header, tiles (row by row), their offset and byte count
 * arrays, BitsPerSample, then the directory. Pixels from test_rand. */
static bool write_tiny_tiff(const char *path, uint32_t side, uint32_t tile) {
  FILE *f = fopen(path, "wb");
  if (!f)
    return false;
  uint32_t across = (side + tile - 1) / tile, ntiles = across * across;
  uint32_t tile_bytes = tile * tile * 3;
  fwrite("II*\0", 1, 4, f);
  put32(f, 0); /* the directory's offset, written last */
  unsigned long long rng = side * 31 + tile;
  for (uint32_t i = 0; i < ntiles * tile_bytes; i++)
    fputc((int)(test_rand(&rng) & 0xFF), f);
  uint32_t offsets = 8 + ntiles * tile_bytes, counts = offsets + 4 * ntiles;
  for (uint32_t i = 0; i < ntiles; i++)
    put32(f, 8 + i * tile_bytes);
  for (uint32_t i = 0; i < ntiles; i++)
    put32(f, tile_bytes);
  uint32_t bits = counts + 4 * ntiles, ifd = bits + 6;
  for (int i = 0; i < 3; i++)
    put16(f, 8); /* BitsPerSample */
  put16(f, 10);
  const uint32_t entries[10][4] = {
      {256, 4, 1, side},       {257, 4, 1, side}, {258, 3, 3, bits},
      {259, 3, 1, 1},          {262, 3, 1, 2},    {277, 3, 1, 3},
      {322, 4, 1, tile},       {323, 4, 1, tile}, {324, 4, ntiles, offsets},
      {325, 4, ntiles, counts}};
  for (int i = 0; i < 10; i++) {
    put16(f, entries[i][0]);
    put16(f, entries[i][1]);
    put32(f, entries[i][2]);
    put32(f, entries[i][3]); /* SHORT values sit in the low bytes (little-endian) */
  }
  put32(f, 0);
  fseek(f, 4, SEEK_SET);
  put32(f, ifd);
  return fclose(f) == 0;
}

/* Tiles of 1 and 2 pixels are painted patch by patch (no memory per tile), 4 by tile; every
 * patch of every batch equals a single region read, with and without workers. */
static void test_tiny_tiles(void) {
  char path[] = "/tmp/tessera-tiny-XXXXXX.tiff";
  int fd = mkstemps(path, 5);
  CHECK(fd >= 0, "mkstemps");
  if (fd < 0)
    return;
  close(fd);
  const uint32_t tiles[] = {1, 2, 4};
  for (int t = 0; t < 3; t++) {
    CHECK(write_tiny_tiff(path, 160, tiles[t]), "writing %s", path);
    tessera_slide *s = NULL;
    if (tessera_open(path, &s) != TESSERA_OK) {
      CHECK(0, "%s: %s", path, tessera_error_message());
      continue;
    }
    unsigned long long rng = 17;
    size_t n = 19;
    int64_t *xy = random_locations(s, 0, n, 97, 61, &rng);
    for (int workers = 0; workers <= 2; workers += 2) {
      tessera_batch_options bo;
      tessera_batch_options_init(&bo);
      bo.batch_size = 4;
      bo.num_workers = workers;
      tessera_batch_iter *it = NULL;
      CHECK(tessera_batch_iter_create(s, xy, n, 97, 61, 0, &bo, &it) == TESSERA_OK, "create: %s",
            tessera_error_message());
      size_t seen = 0;
      int bad = 0;
      for (tessera_batch *b; it && tessera_batch_iter_next(it, &b) == TESSERA_OK && b;) {
        for (size_t p = 0; p < b->count; p++, seen++)
          bad +=
              check_patch(s, 0, &xy[2 * b->indices[p]], 97, 61, 3, -1, b->data + p * 97 * 61 * 3);
        tessera_batch_release(b);
      }
      tessera_batch_iter_destroy(it);
      CHECK(seen == n && bad == 0, "%ux%u tiles, %d workers: %zu patches, %d differ", tiles[t],
            tiles[t], workers, seen, bad);
    }
    free(xy);
    tessera_close(s);
  }
  unlink(path);
}

/* Jobs go back to a free list with their lists of destinations. A job reused for a tile shared
 * by a whole batch grows its list to the batch; batches that share tiles less and less bring
 * the other jobs to the top of the list in turn, so that before, every job ended up keeping a
 * list as long as a batch (quadratic in batch_size). The room kept is now bounded by what
 * scheduling is counted for. Measured with malloc's bytes in use (mallinfo2; 0 under ASan,
 * which replaces malloc: the path still runs there). */
static void test_job_lists_bounded(const char *dir) {
  char path[4096];
  tessera_slide *s = open_testdata(dir, "aperio-jpeg-CMU-1-Small-Region.svs", path, sizeof path);
  if (!s)
    return;
  enum { B = 128, BATCHES = 2 * (B - 1) };
  /* Batch 2(k-2): B patches over k tiles; the batch after it: all B on tile 0. */
  int64_t *xy = malloc(2 * sizeof *xy * B * BATCHES);
  for (int b = 0; b < BATCHES; b++) {
    int k = b % 2 ? 1 : b / 2 + 2;
    for (int p = 0; p < B; p++) {
      int t = p % k;
      xy[2 * (b * B + p)] = (t % 10) * 240 + 8; /* 10 x 13 tiles of 240 */
      xy[2 * (b * B + p) + 1] = (t / 10) * 240 + 8;
    }
  }
  tessera_batch_options o;
  tessera_batch_options_init(&o);
  o.batch_size = B;
  tessera_batch_iter *it = NULL;
  CHECK(tessera_batch_iter_create(s, xy, (size_t)B * BATCHES, 16, 16, 0, &o, &it) == TESSERA_OK,
        "create: %s", tessera_error_message());
  size_t warm = 0, batches = 0;
  int bad = 0;
  for (tessera_batch *b; it && tessera_batch_iter_next(it, &b) == TESSERA_OK && b; batches++) {
    if (batches % 37 == 0)
      bad += check_patch(s, 0, &xy[2 * b->indices[B - 1]], 16, 16, 3, -1,
                         b->data + (B - 1) * 16 * 16 * 3);
    if (batches == 2)
      warm = mallinfo2().uordblks;
    tessera_batch_release(b);
  }
  size_t end = mallinfo2().uordblks;
  CHECK(batches == BATCHES && bad == 0, "%zu batches, %d patches differ", batches, bad);
  /* 127 jobs x 128 destinations x 24 bytes (390 KiB) before; at most 4 x 4 x 128 now. */
  CHECK(end < warm + (128 << 10), "%zu bytes more in use after the stream than when warm",
        end - warm);
  tessera_batch_iter_destroy(it);
  free(xy);
  tessera_close(s);
}

int main(int argc, char **argv) {
  const char *dir = testdata_dir(argc, argv);
  DIR *d = opendir(dir);
  CHECK(d != NULL, "no test data at %s", dir);
  int files = 0;
  for (struct dirent *e; d && (e = readdir(d)) != NULL;) {
    if (e->d_name[0] == '.' || strstr(e->d_name, ".md"))
      continue;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    test_file(path);
    files++;
  }
  if (d)
    closedir(d);
  CHECK(files >= 6, "only %d files in the test data", files);
  test_arguments(dir);
  test_tile_sharing(dir);
  test_no_allocation_when_warm(dir);
  test_damaged_tile(dir);
  test_fork(dir);
  test_release_races_destroy(dir);
  test_no_starvation(dir);
  test_fork_with_iterator_in_flight(dir);
  test_decode_budget(dir);
  test_tiny_tiles();
  test_job_lists_bounded(dir);
  return check_finish("test_batch");
}
