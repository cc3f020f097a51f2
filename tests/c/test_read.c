/* Region reads agree with a crop of the whole level, for every level of every file in the
 * test data, at seeded random positions, sizes, channel counts, fills and strides, from one
 * thread and from several at once. The byte-exact comparison with OpenSlide and libvips is
 * in tests/test_differential.py; this program is what runs under the sanitizers. */
#include <dirent.h>
#include <pthread.h>
#include <string.h>

#include "check.h"
#include "tessera.h"

struct level_image {
  int64_t w, h;
  double ds;
  uint8_t *rgba; /* whole level, 4 channels */
};

/* The expected pixel of a region at level coordinates (x, y). */
static void expected_pixel(const struct level_image *li, int64_t x, int64_t y, int channels,
                           uint8_t fill, uint8_t out[4]) {
  if (x < 0 || y < 0 || x >= li->w || y >= li->h) {
    out[0] = out[1] = out[2] = fill;
    out[3] = 0;
    return;
  }
  memcpy(out, li->rgba + ((size_t)y * li->w + x) * 4, 4);
  (void)channels;
}

static int compare_region(tessera_slide *s, int32_t level, const struct level_image *li, int64_t lx,
                          int64_t ly, int64_t w, int64_t h, int channels, int fill, size_t pad) {
  tessera_read_options o;
  tessera_read_options_init(&o);
  o.channels = channels;
  o.fill = fill;
  size_t row = (size_t)w * channels;
  o.stride = row + pad;
  size_t size = o.stride * (size_t)h;
  uint8_t *buf = malloc(size);
  memset(buf, 0xA5, size);
  int64_t x = (int64_t)(lx * li->ds), y = (int64_t)(ly * li->ds);
  /* Level origin is floor(x / ds): pick level-0 coordinates that map back to lx exactly. */
  while ((int64_t)__builtin_floor((double)x / li->ds) < lx)
    x++;
  while ((int64_t)__builtin_floor((double)y / li->ds) < ly)
    y++;
  while ((int64_t)__builtin_floor((double)x / li->ds) > lx)
    x--;
  while ((int64_t)__builtin_floor((double)y / li->ds) > ly)
    y--;
  tessera_status st = tessera_read_region(s, x, y, level, w, h, &o, buf, size);
  int bad = 0;
  if (st != TESSERA_OK) {
    CHECK(0, "read failed: %s", tessera_error_message());
    free(buf);
    return 1;
  }
  uint8_t f = (uint8_t)(fill < 0 ? tessera_background(s) : fill);
  for (int64_t yy = 0; yy < h && !bad; yy++) {
    for (int64_t xx = 0; xx < w && !bad; xx++) {
      uint8_t e[4];
      expected_pixel(li, lx + xx, ly + yy, channels, f, e);
      const uint8_t *p = buf + (size_t)yy * o.stride + (size_t)xx * channels;
      if (memcmp(p, e, (size_t)channels) != 0) {
        CHECK(
            0,
            "level %d region %lld,%lld %lldx%lld ch %d: pixel %lld,%lld is %u,%u,%u want %u,%u,%u",
            level, (long long)lx, (long long)ly, (long long)w, (long long)h, channels,
            (long long)xx, (long long)yy, p[0], p[1], p[2], e[0], e[1], e[2]);
        bad = 1;
      }
    }
    for (size_t i = row; i < o.stride && !bad; i++)
      if (buf[(size_t)yy * o.stride + i] != 0xA5) {
        CHECK(0, "stride padding overwritten at row %lld", (long long)yy);
        bad = 1;
      }
  }
  check_count++;
  free(buf);
  return bad;
}

struct thread_job {
  tessera_slide *s;
  int32_t level;
  const struct level_image *li;
  unsigned long long seed;
  int failures;
};

static int random_regions(tessera_slide *s, int32_t level, const struct level_image *li,
                          unsigned long long *rng, int count) {
  int fails = 0;
  for (int i = 0; i < count; i++) {
    int64_t w = 1 + (int64_t)(test_rand(rng) % 300), h = 1 + (int64_t)(test_rand(rng) % 300);
    int64_t lx = (int64_t)(test_rand(rng) % (uint64_t)(li->w + 200)) - 100;
    int64_t ly = (int64_t)(test_rand(rng) % (uint64_t)(li->h + 200)) - 100;
    int channels = test_rand(rng) % 2 ? 3 : 4;
    int fill = test_rand(rng) % 2 ? -1 : (int)(test_rand(rng) % 256);
    size_t pad = test_rand(rng) % 3 == 0 ? 7 : 0;
    fails += compare_region(s, level, li, lx, ly, w, h, channels, fill, pad);
  }
  return fails;
}

static void *thread_main(void *arg) {
  struct thread_job *j = arg;
  j->failures = random_regions(j->s, j->level, j->li, &j->seed, 12);
  return NULL;
}

static void test_file(const char *path) {
  tessera_slide *s = NULL;
  if (tessera_open(path, &s) != TESSERA_OK) {
    CHECK(0, "%s: %s", path, tessera_error_message());
    return;
  }
  unsigned long long rng = 42;
  for (int32_t level = 0; level < tessera_level_count(s); level++) {
    tessera_level_info info = {.struct_size = sizeof info};
    tessera_level_info_get(s, level, &info);
    if (info.width * info.height > 12000000)
      continue; /* the biggest test-data level would take minutes under the sanitizers */
    struct level_image li = {info.width, info.height, info.downsample, NULL};
    size_t size = (size_t)info.width * info.height * 4;
    li.rgba = malloc(size);
    tessera_read_options o;
    tessera_read_options_init(&o);
    o.channels = 4;
    int64_t x0 = 0;
    tessera_status st =
        tessera_read_region(s, x0, 0, level, info.width, info.height, &o, li.rgba, size);
    CHECK(st == TESSERA_OK, "%s level %d whole: %s", path, level, tessera_error_message());
    if (st == TESSERA_OK) {
      int fails = random_regions(s, level, &li, &rng, 25);
      CHECK(fails == 0, "%s level %d: %d regions differ from the whole-level read", path, level,
            fails);
      struct thread_job jobs[4];
      pthread_t t[4];
      for (int i = 0; i < 4; i++) {
        jobs[i] = (struct thread_job){s, level, &li, 1000 + (unsigned long long)i, 0};
        pthread_create(&t[i], NULL, thread_main, &jobs[i]);
      }
      for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        CHECK(jobs[i].failures == 0, "%s level %d thread %d: %d regions differ", path, level, i,
              jobs[i].failures);
      }
    }
    free(li.rgba);
  }
  tessera_close(s);
}

static int test_path(const char *path) {
  DIR *d = opendir(path);
  if (!d) {
    test_file(path);
    return 1;
  }
  int files = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.' || strstr(e->d_name, ".md"))
      continue;
    char sub[4096];
    snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
    test_file(sub);
    files++;
  }
  closedir(d);
  return files;
}

/* Arguments: the test-data directory, then optionally more slide files or directories (the
 * Python suite passes its generated fixtures to the sanitized build this way). */
int main(int argc, char **argv) {
  int files = 0;
  if (argc > 2) {
    for (int i = 2; i < argc; i++)
      files += test_path(argv[i]);
  } else {
    files = test_path(testdata_dir(argc, argv));
    CHECK(files >= 6, "only %d files in the test data", files);
  }
  CHECK(files > 0, "no slide read");
  return check_finish("test_read");
}
