/* The tissue mask's and the scaled read's C contract: arguments, struct_size, limits, and the
 * scaled read's arithmetic on real files (scale 1 is the plain read; scale 2 the rounded mean
 * of each 2 x 2 block). Python's tests/test_tissue.py and test_resolution.py check the masks
 * and the area average against NumPy; these run under the sanitizers too. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "tessera.h"

static char cmu_path[4096], ndpi_path[4096], generic_path[4096];

static tessera_slide *open_or_die(const char *path) {
  tessera_slide *s = NULL;
  CHECK(tessera_open(path, &s) == TESSERA_OK, "open %s: %s", path, tessera_error_message());
  if (!s)
    exit(check_finish("test_tissue"));
  return s;
}

static void test_mask_arguments(void) {
  tessera_slide *s = open_or_die(cmu_path);
  tessera_mask *m = (tessera_mask *)0x1;
  CHECK(tessera_tissue_mask(NULL, NULL, &m) == TESSERA_E_ARGUMENT && m == NULL, "NULL slide");
  CHECK(tessera_tissue_mask(s, NULL, NULL) == TESSERA_E_ARGUMENT, "NULL out");
  tessera_tissue_options o;
  tessera_tissue_options_init(&o);
  CHECK(o.struct_size == sizeof o && o.background_tolerance == 10 && o.max_hole_area == 40000.0,
        "defaults");
  o.mode = 7;
  CHECK(tessera_tissue_mask(s, &o, &m) == TESSERA_E_ARGUMENT, "bad mode");
  tessera_tissue_options_init(&o);
  o.pen_hue_min = 300;
  o.pen_hue_max = 100;
  CHECK(tessera_tissue_mask(s, &o, &m) == TESSERA_E_ARGUMENT, "pen hues reversed");
  tessera_tissue_options_init(&o);
  o.downsample = 1e-6;
  CHECK(tessera_tissue_mask(s, &o, &m) != TESSERA_OK, "a mask far finer than level 0");
  o.struct_size = 1;
  CHECK(tessera_tissue_mask(s, &o, &m) == TESSERA_E_ARGUMENT, "struct_size too small");
  /* An older caller's struct, cut after the mode: the rest keeps the defaults. */
  tessera_tissue_options_init(&o);
  o.downsample = 32;
  o.black_max = 300; /* past the short struct: must not be read */
  o.struct_size = offsetof(tessera_tissue_options, background_tolerance);
  CHECK(tessera_tissue_mask(s, &o, &m) == TESSERA_OK && m, "short struct: %s",
        tessera_error_message());
  if (m) {
    CHECK(m->width == (2220 + 31) / 32 && m->height == (2967 + 31) / 32, "size %lldx%lld",
          (long long)m->width, (long long)m->height);
    CHECK(m->downsample == 32 && m->level == 0 && !m->darkfield, "mask info");
    size_t tissue = 0;
    for (int64_t i = 0; i < m->width * m->height; i++) {
      CHECK(m->data[i] == 0 || m->data[i] == 255, "mask byte %d", m->data[i]);
      tissue += m->data[i] != 0;
    }
    CHECK(tissue > 0 && (double)tissue / (double)(m->width * m->height) == m->tissue_fraction,
          "tissue fraction");
  }
  tessera_mask_free(m);
  tessera_mask_free(NULL);
  tessera_close(s);

  s = open_or_die(generic_path);
  tessera_tissue_options_init(&o);
  o.mpp = 4;
  CHECK(tessera_tissue_mask(s, &o, &m) == TESSERA_E_ARGUMENT &&
            strstr(tessera_error_message(), "microns per pixel"),
        "mpp on a slide without one: %s", tessera_error_message());
  tessera_close(s);

  s = open_or_die(ndpi_path);
  CHECK(tessera_tissue_mask(s, NULL, &m) == TESSERA_OK && m && m->darkfield, "ndpi: %s",
        tessera_error_message());
  tessera_mask_free(m);
  tessera_close(s);
}

static void test_scaled_read(void) {
  tessera_slide *s = open_or_die(cmu_path);
  enum { W = 100, H = 70 };
  uint8_t *plain = malloc(2 * W * 2 * H * 3), *one = malloc(W * H * 3), *two = malloc(W * H * 3);
  CHECK(tessera_read_region(s, 301, 402, 0, 2 * W, 2 * H, NULL, plain, 2 * W * 2 * H * 3) ==
            TESSERA_OK,
        "plain read");
  CHECK(tessera_read_region_scaled(s, 301, 402, 0, 1.0, 1.0, W, H, NULL, one, W * H * 3) ==
            TESSERA_OK,
        "scale 1: %s", tessera_error_message());
  int same = 1, exact = 1;
  for (int y = 0; y < H; y++)
    same &= memcmp(one + y * W * 3, plain + y * 2 * W * 3, W * 3) == 0;
  CHECK(same, "scale 1 differs from the plain read");
  CHECK(tessera_read_region_scaled(s, 301, 402, 0, 2.0, 2.0, W, H, NULL, two, W * H * 3) ==
            TESSERA_OK,
        "scale 2: %s", tessera_error_message());
  for (int y = 0; y < H; y++)
    for (int x = 0; x < W; x++)
      for (int c = 0; c < 3; c++) {
        const uint8_t *p = plain + ((2 * y) * 2 * W + 2 * x) * 3 + c;
        unsigned sum = p[0] + p[3] + p[2 * W * 3] + p[2 * W * 3 + 3];
        exact &= two[(y * W + x) * 3 + c] == (sum + 2) / 4;
      }
  CHECK(exact, "scale 2 is not the rounded 2x2 mean");
  CHECK(tessera_read_region_scaled(s, 0, 0, 0, 0.0, 1.0, W, H, NULL, two, W * H * 3) ==
            TESSERA_E_ARGUMENT,
        "scale 0");
  CHECK(tessera_read_region_scaled(s, 0, 0, 0, 2000.0, 1.0, W, H, NULL, two, W * H * 3) ==
            TESSERA_E_ARGUMENT,
        "scale 2000");
  CHECK(tessera_read_region_scaled(s, 0, 0, 1, 1.0, 1.0, W, H, NULL, two, W * H * 3) ==
            TESSERA_E_ARGUMENT,
        "missing level");
  CHECK(tessera_read_region_scaled(s, 0, 0, 0, 1.0, 1.0, W, H, NULL, two, W * H * 3 - 1) ==
            TESSERA_E_ARGUMENT,
        "small destination");
  /* Fast mode (Aperio's 240 x 240 JPEG tiles at 1/2 and 1/8, odd origins and the edge):
   * close to the exact result, never far from it. */
  /* Bounds: the fast mode's own error on this quality-30 file, well below what a tile placed
   * one reduced pixel off gives (26 at the first case, 12 at the last). */
  static const struct {
    int64_t x, y;
    double scale, bound;
  } fast_cases[] = {{1000, 2200, 2.0, 1.0},  /* on the reduced grid: no averaging */
                    {1101, 1801, 2.0, 8.0},  /* half a reduced pixel off: a wider box */
                    {1, 1, 2.0, 3.0},        /* past the top-left */
                    {2100, 2900, 2.0, 3.0},  /* past the bottom-right */
                    {333, 555, 9.5, 6.0}};   /* at 1/8, then by 1.1875 */
  for (size_t c = 0; c < sizeof fast_cases / sizeof fast_cases[0]; c++) {
    tessera_read_options fo;
    tessera_read_options_init(&fo);
    fo.fast_jpeg = 1;
    CHECK(tessera_read_region_scaled(s, fast_cases[c].x, fast_cases[c].y, 0, fast_cases[c].scale,
                                     fast_cases[c].scale, W, H, NULL, two, W * H * 3) ==
              TESSERA_OK,
          "exact");
    CHECK(tessera_read_region_scaled(s, fast_cases[c].x, fast_cases[c].y, 0, fast_cases[c].scale,
                                     fast_cases[c].scale, W, H, &fo, one, W * H * 3) ==
              TESSERA_OK,
          "fast: %s", tessera_error_message());
    double total = 0;
    for (int i = 0; i < W * H * 3; i++)
      total += abs((int)one[i] - (int)two[i]);
    CHECK(total / (W * H * 3) < fast_cases[c].bound, "fast case %zu: mean difference %g", c,
          total / (W * H * 3));
  }
  /* tessera_resample_area over a patch of ceil(W * scale) + 1 pixels read plainly equals the
   * scaled read, at a scale that is not a whole number; a source too small is refused. */
  {
    double sc = 2.37;
    int64_t rw = (int64_t)(W * sc) + 2, rh = (int64_t)(H * sc) + 2;
    uint8_t *patch = malloc((size_t)(rw * rh * 3));
    CHECK(tessera_read_region(s, 777, 1234, 0, rw, rh, NULL, patch, (size_t)(rw * rh * 3)) ==
              TESSERA_OK,
          "patch");
    CHECK(tessera_read_region_scaled(s, 777, 1234, 0, sc, sc, W, H, NULL, two, W * H * 3) ==
              TESSERA_OK,
          "scaled");
    CHECK(tessera_resample_area(patch, rw, rh, (size_t)rw * 3, 3, sc, sc, W, H, one, W * 3) ==
              TESSERA_OK,
          "resample: %s", tessera_error_message());
    CHECK(memcmp(one, two, W * H * 3) == 0, "resample_area differs from the scaled read");
    CHECK(tessera_resample_area(patch, 10, 10, 30, 3, sc, sc, W, H, one, W * 3) ==
              TESSERA_E_ARGUMENT,
          "a source too small");
    CHECK(tessera_resample_area(patch, rw, rh, 2, 3, sc, sc, W, H, one, W * 3) ==
              TESSERA_E_ARGUMENT,
          "a stride too small");
    free(patch);
  }
  /* Far outside: all fill, no crash. */
  CHECK(tessera_read_region_scaled(s, -100000, -100000, 0, 3.5, 3.5, W, H, NULL, two,
                                   W * H * 3) == TESSERA_OK && two[0] == 255 &&
            two[W * H * 3 - 1] == 255,
        "outside");
  free(plain);
  free(one);
  free(two);
  tessera_close(s);
}

static void test_grid(void) {
  tessera_slide *s = open_or_die(cmu_path);
  tessera_grid *g = (tessera_grid *)0x1;
  tessera_grid_options o;
  tessera_grid_options_init(&o);
  CHECK(tessera_patch_grid(s, &o, &g) == TESSERA_E_ARGUMENT && g == NULL, "no size");
  o.width = o.height = 224;
  o.min_tissue = 1.5;
  CHECK(tessera_patch_grid(s, &o, &g) == TESSERA_E_ARGUMENT, "min_tissue 1.5");
  o.min_tissue = 0.5;
  o.mpp = 1.0; /* CMU is 0.499 um/px, one level: level 0 at scale 2 (within 1 %) */
  CHECK(tessera_patch_grid(s, &o, &g) == TESSERA_OK && g, "grid: %s", tessera_error_message());
  if (g) {
    CHECK(g->level == 0 && g->scale == 2.0 && g->read_width == 448 && g->read_height == 448,
          "level %d scale %g read %lld", g->level, g->scale, (long long)g->read_width);
    CHECK(g->count > 0 && g->count < (2220 / 448) * (2967 / 448), "count %zu", g->count);
    for (size_t i = 0; i < g->count; i++)
      CHECK(g->tissue[i] >= 0.5f && g->tissue[i] <= 1.0f && g->locations[2 * i] % 448 == 0 &&
                g->locations[2 * i] + 448 <= 2220 && g->locations[2 * i + 1] + 448 <= 2967,
            "patch %zu", i);
  }
  tessera_grid_free(g);
  tessera_grid_free(NULL);
  int32_t level = -1;
  double scale = 0;
  CHECK(tessera_level_for_mpp(s, 0.5, &level, &scale) == TESSERA_OK && level == 0 &&
            scale == 1.0,
        "0.5 on a 0.499 slide: level %d scale %g", level, scale);
  CHECK(tessera_level_for_mpp(s, 0.7, &level, &scale) == TESSERA_OK && scale > 1.39 &&
            scale < 1.41,
        "0.7: scale %g", scale);
  CHECK(tessera_level_for_mpp(s, -1, &level, &scale) == TESSERA_E_ARGUMENT, "mpp -1");
  tessera_close(s);
  s = open_or_die(generic_path);
  CHECK(tessera_level_for_mpp(s, 0.5, &level, &scale) == TESSERA_E_ARGUMENT, "no mpp");
  tessera_close(s);
}

int main(int argc, char **argv) {
  const char *dir = testdata_dir(argc, argv);
  snprintf(cmu_path, sizeof cmu_path, "%s/aperio-jpeg-CMU-1-Small-Region.svs", dir);
  snprintf(ndpi_path, sizeof ndpi_path, "%s/hamamatsu-ndpi-DAPI.ndpi", dir);
  snprintf(generic_path, sizeof generic_path, "%s/generic-jpeg-ycbcr-128tiles.tiff", dir);
  test_mask_arguments();
  test_scaled_read();
  test_grid();
  return check_finish("test_tissue");
}
