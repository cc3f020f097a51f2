/* Every allocation the library makes may fail: with the n-th allocation failing, for every n
 * an open + reads + close needs, each call returns TESSERA_OK or TESSERA_E_NOMEM (never
 * crashes, never reports success with a wrong picture) and, under the sanitizers, nothing
 * leaks. Allocation goes through src/alloc.c, which can inject the failure. */
#include <string.h>

#include "alloc.h"
#include "check.h"
#include "tessera.h"

static const char *files[] = {"generic-jpeg-ycbcr-128tiles.tiff", "generic-webp-rgba-pyramid.tif",
                              "generic-zstd-1024tiles-pyramid.tiff", "aperio-jpeg-tiny-16x16.svs",
                              /* restart intervals, and levels decoded from one at a JPEG scale */
                              "hamamatsu-ndpi-DAPI.ndpi"};

enum { W = 200, H = 150 };

/* Streams 6 patches of level 0 in batches of 2 with one worker into out; returns how it
 * went (the first failure stops it). */
static tessera_status stream(tessera_slide *s, uint8_t *out) {
  static const int64_t xy[] = {0, 0, 100, 50, -30, 20, 150, 150, 5000, 5000, 64, 64};
  tessera_batch_options o;
  tessera_batch_options_init(&o);
  o.batch_size = 2;
  o.num_workers = 1;
  o.channels = 4;
  tessera_batch_iter *it = NULL;
  tessera_status st = tessera_batch_iter_create(s, xy, 6, 40, 30, 0, &o, &it);
  tessera_batch *b;
  while (st == TESSERA_OK && (st = tessera_batch_iter_next(it, &b)) == TESSERA_OK && b) {
    memcpy(out + b->number * b->size, b->data, b->size);
    tessera_batch_release(b);
  }
  tessera_batch_iter_destroy(it);
  return st;
}

/* Opens, reads two regions of each level, streams a few batches and closes; returns how the
 * reads went. */
static tessera_status exercise(const char *path, uint8_t *out, int *opened) {
  tessera_slide *s = NULL;
  tessera_status st = tessera_open(path, &s);
  *opened = st == TESSERA_OK;
  if (st != TESSERA_OK)
    return st;
  tessera_read_options o;
  tessera_read_options_init(&o);
  o.channels = 4;
  tessera_status worst = TESSERA_OK;
  for (int32_t l = 0; l < tessera_level_count(s); l++) {
    st = tessera_read_region(s, 100, 50, l, W, H, &o, out + (size_t)l * W * H * 4, W * H * 4);
    if (st != TESSERA_OK)
      worst = st;
  }
  st = stream(s, out + (size_t)tessera_level_count(s) * W * H * 4);
  if (st != TESSERA_OK)
    worst = st;
  tessera_close(s);
  return worst;
}

static void test_file(const char *dir, const char *name) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  /* Up to 8 levels, then the streamed batches. */
  static uint8_t good[9 * W * H * 4], got[9 * W * H * 4];
  int opened;
  memset(good, 0, sizeof good);
  tsr_alloc_fail_after(-1);
  CHECK(exercise(path, good, &opened) == TESSERA_OK, "%s without failures: %s", name,
        tessera_error_message());
  int failures_seen = 0;
  for (long n = 0; n < 260; n++) {
    memset(got, 0, sizeof got);
    tsr_alloc_fail_after(n);
    tessera_status st = exercise(path, got, &opened);
    tsr_alloc_fail_after(-1);
    if (st == TESSERA_OK) {
      CHECK(memcmp(got, good, sizeof got) == 0, "%s: n=%ld read OK but differs", name, n);
      continue;
    }
    failures_seen++;
    CHECK(st == TESSERA_E_NOMEM, "%s: n=%ld status %d (%s)", name, n, st, tessera_error_message());
    CHECK(strstr(tessera_error_message(), "memory") != NULL, "%s: n=%ld message %s", name, n,
          tessera_error_message());
  }
  CHECK(failures_seen > 5, "%s: only %d injected failures surfaced", name, failures_seen);
}

int main(int argc, char **argv) {
  const char *dir = testdata_dir(argc, argv);
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
    test_file(dir, files[i]);
  return check_finish("test_alloc");
}
