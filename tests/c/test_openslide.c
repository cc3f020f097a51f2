/* libopenslide.so.1 (openslide/) in C, for the sanitizer builds: every test data slide read
 * through OpenSlide's API equals tessera's own read made premultiplied ARGB (regions on and
 * off the slide, whole small levels, associated images); two threads reading one handle while
 * a third changes the cache; two threads failing on one handle at once keep exactly one
 * message (and leak none). The byte-for-byte proof against OpenSlide itself is
 * test_openslide_c.py. */
#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "openslide.h"
#include "tessera.h"

static uint32_t argb(const uint8_t *p) {
  uint32_t a = p[3], r = p[0], g = p[1], b = p[2];
  if (a != 255) {
    r = (r * a + 127) / 255;
    g = (g * a + 127) / 255;
    b = (b * a + 127) / 255;
  }
  return a << 24 | r << 16 | g << 8 | b;
}

/* The region through OpenSlide's API against tessera's own RGBA read; x, y >= 0 (OpenSlide
 * truncates negative origins its own way, checked against OpenSlide by the Python test). An
 * origin between the level's pixels is resampled as OpenSlide resamples it: read (for the
 * sanitizers), not compared. */
static void compare_region(openslide_t *osr, tessera_slide *ts, const char *name, int64_t x,
                           int64_t y, int32_t level, int64_t w, int64_t h) {
  uint32_t *got = malloc((size_t)(w * h) * 4);
  uint8_t *rgba = malloc((size_t)(w * h) * 4);
  CHECK(got && rgba, "out of memory");
  if (!got || !rgba)
    goto out;
  openslide_read_region(osr, got, x, y, level, w, h);
  CHECK(openslide_get_error(osr) == NULL, "%s: %s", name, openslide_get_error(osr));
  double ds = openslide_get_level_downsample(osr, level);
  if ((double)x / ds != floor((double)x / ds) || (double)y / ds != floor((double)y / ds))
    goto out;
  tessera_read_options o;
  tessera_read_options_init(&o);
  o.channels = 4;
  o.fill = 0;
  CHECK(tessera_read_region(ts, x, y, level, w, h, &o, rgba, (size_t)(w * h) * 4) == TESSERA_OK,
        "%s: %s", name, tessera_error_message());
  int64_t bad = 0;
  for (int64_t i = 0; i < w * h; i++)
    bad += got[i] != argb(rgba + 4 * i);
  CHECK(bad == 0, "%s level %d (%lld, %lld) %lldx%lld: %lld pixels differ", name, level,
        (long long)x, (long long)y, (long long)w, (long long)h, (long long)bad);
out:
  free(got);
  free(rgba);
}

static void check_slide(const char *path, const char *name) {
  openslide_t *osr = openslide_open(path);
  tessera_slide *ts;
  CHECK(osr && !openslide_get_error(osr), "%s: %s", name, osr ? openslide_get_error(osr) : "NULL");
  CHECK(tessera_open(path, &ts) == TESSERA_OK, "%s: %s", name, tessera_error_message());
  if (!osr || openslide_get_error(osr) || !ts) {
    openslide_close(osr);
    return;
  }
  unsigned long long seed = 7;
  for (int32_t level = 0; level < openslide_get_level_count(osr); level++) {
    int64_t w, h;
    openslide_get_level_dimensions(osr, level, &w, &h);
    double ds = openslide_get_level_downsample(osr, level);
    for (int i = 0; i < 6; i++) {
      int64_t rw = 1 + (int64_t)(test_rand(&seed) % 200), rh = 1 + (int64_t)(test_rand(&seed) % 200);
      int64_t lx = (int64_t)(test_rand(&seed) % (uint64_t)(w + 50));
      int64_t ly = (int64_t)(test_rand(&seed) % (uint64_t)(h + 50));
      compare_region(osr, ts, name, (int64_t)(lx * ds), (int64_t)(ly * ds), level, rw, rh);
      if (level > 0) /* between pixels */
        compare_region(osr, ts, name, (int64_t)(lx * ds) + 1, (int64_t)(ly * ds) + 1, level, rw,
                       rh);
    }
    if (w * h <= 1 << 22)
      compare_region(osr, ts, name, 0, 0, level, w, h);
  }
  for (const char *const *p = openslide_get_property_names(osr); *p; p++)
    CHECK(openslide_get_property_value(osr, *p) != NULL, "%s: %s has no value", name, *p);
  for (const char *const *a = openslide_get_associated_image_names(osr); *a; a++) {
    int64_t w, h;
    openslide_get_associated_image_dimensions(osr, *a, &w, &h);
    uint32_t *px = malloc((size_t)(w * h) * 4);
    uint8_t *rgba = malloc((size_t)(w * h) * 4);
    if (px && rgba) {
      openslide_read_associated_image(osr, *a, px);
      tessera_read_options o;
      tessera_read_options_init(&o);
      o.channels = 4;
      CHECK(tessera_read_associated_image(ts, *a, &o, rgba, (size_t)(w * h) * 4) == TESSERA_OK,
            "%s", tessera_error_message());
      int64_t bad = 0;
      for (int64_t i = 0; i < w * h; i++)
        bad += px[i] != argb(rgba + 4 * i);
      CHECK(bad == 0, "%s associated %s: %lld pixels differ", name, *a, (long long)bad);
    }
    free(px);
    free(rgba);
  }
  tessera_close(ts);
  openslide_close(osr);
}

struct reader {
  openslide_t *osr;
  int64_t x;
  uint32_t first;
  int same; /* every read equal to the first */
};

static void *read_loop(void *arg) {
  struct reader *r = arg;
  uint32_t px[64 * 64];
  r->same = 1;
  for (int i = 0; i < 200; i++) {
    openslide_read_region(r->osr, px, r->x + (i % 7) * 240, (i % 5) * 240, 0, 64, 64);
    if (i == 0)
      r->first = px[100];
    else if (i % 35 == 0 && px[100] == 0)
      r->same = 0;
  }
  return NULL;
}

static void *cache_loop(void *arg) {
  openslide_t *osr = arg;
  for (int i = 0; i < 20; i++) {
    openslide_cache_t *c = openslide_cache_create((size_t)(1 + i % 3) << 20);
    openslide_set_cache(osr, c);
    openslide_cache_release(c);
  }
  return NULL;
}

static void *fail_loop(void *arg) {
  openslide_read_region(arg, NULL, 0, 0, 0, -1, -1);
  return NULL;
}

static void test_threads(const char *path) {
  openslide_t *osr = openslide_open(path);
  if (!osr)
    return;
  struct reader r[2] = {{osr, 0, 0, 0}, {osr, 100, 0, 0}};
  pthread_t t[3];
  pthread_create(&t[0], NULL, read_loop, &r[0]);
  pthread_create(&t[1], NULL, read_loop, &r[1]);
  pthread_create(&t[2], NULL, cache_loop, osr);
  for (int i = 0; i < 3; i++)
    pthread_join(t[i], NULL);
  CHECK(openslide_get_error(osr) == NULL, "threads: %s", openslide_get_error(osr));
  CHECK(r[0].same && r[1].same, "a threaded read came back empty");
  pthread_create(&t[0], NULL, fail_loop, osr);
  pthread_create(&t[1], NULL, fail_loop, osr);
  pthread_join(t[0], NULL);
  pthread_join(t[1], NULL);
  CHECK(openslide_get_error(osr) && strstr(openslide_get_error(osr), "negative"), "error: %s",
        openslide_get_error(osr));
  openslide_close(osr);
}

int main(int argc, char **argv) {
  const char *dir = testdata_dir(argc, argv);
  DIR *d = opendir(dir);
  CHECK(d != NULL, "no test data at %s", dir);
  struct dirent *e;
  while (d && (e = readdir(d))) {
    size_t n = strlen(e->d_name);
    if (n < 4 || strcmp(e->d_name + n - 3, ".md") == 0 || e->d_name[0] == '.')
      continue;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    check_slide(path, e->d_name);
  }
  if (d)
    closedir(d);
  char path[4096];
  snprintf(path, sizeof path, "%s/aperio-jpeg-CMU-1-Small-Region.svs", dir);
  test_threads(path);
  return check_finish("test_openslide");
}
