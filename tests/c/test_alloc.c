/* Every allocation the library makes may fail: with the n-th allocation failing, for every n
 * an open + reads + close needs, each call returns TESSERA_OK or TESSERA_E_NOMEM (never
 * crashes, never reports success with a wrong picture) and, under the sanitizers, nothing
 * leaks. Allocation goes through src/alloc.c, which can inject the failure. */
#include <string.h>

#include "alloc.h"
#include "check.h"
#include "tessera.h"

static const char *files[] = {"generic-jpeg-ycbcr-128tiles.tiff", "generic-webp-rgba-pyramid.tif",
                              "generic-zstd-1024tiles-pyramid.tiff", "aperio-jpeg-tiny-16x16.svs"};

enum { W = 200, H = 150 };

/* Opens, reads two regions of each level and closes; returns how the reads went. */
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
  tessera_close(s);
  return worst;
}

static void test_file(const char *dir, const char *name) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  static uint8_t good[8 * W * H * 4], got[8 * W * H * 4];
  int opened;
  memset(good, 0, sizeof good);
  tsr_alloc_fail_after(-1);
  CHECK(exercise(path, good, &opened) == TESSERA_OK, "%s without failures: %s", name,
        tessera_error_message());
  int failures_seen = 0;
  for (long n = 0; n < 200; n++) {
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
