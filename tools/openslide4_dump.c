/* openslide4_dump: prints what OpenSlide 4.0's C API says about slides, one fact per line, so
 * that two runs (real OpenSlide 4 and tessera's libopenslide.so.1, chosen by LD_LIBRARY_PATH)
 * can be diffed. Pixels are printed as 64-bit FNV-1a hashes of the ARGB words. Built and run by
 * tools/check_openslide4.sh; compiled against OpenSlide 4's own openslide.h.
 *
 * usage: openslide4_dump FILE...      (each file: everything the API gives)
 *        openslide4_dump --sticky FILE (the handle after an error) */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openslide.h>

static uint64_t fnv(const void *p, size_t n) {
  const unsigned char *b = p;
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++)
    h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

/* Every line says its file first, so a diff names it. */
static const char *cur;

static void error_line(openslide_t *osr, const char *what) {
  const char *e = openslide_get_error(osr);
  /* The message goes on a line of its own ("msg"): its wording may differ where the state
   * does not. */
  printf("%s\t%s\terror=%s\n", cur, what, e ? "yes" : "no");
  if (e)
    printf("%s\t%s\tmsg=%s\n", cur, what, e);
}

static void region(openslide_t *osr, int32_t level, int64_t x, int64_t y, int64_t w, int64_t h) {
  size_t n = (size_t)w * (size_t)h;
  uint32_t *buf = calloc(n + 1, 4); /* what a call leaves untouched hashes the same */
  if (!buf) {
    printf("%s\tregion skipped: no memory\n", cur);
    return;
  }
  openslide_read_region(osr, buf, x, y, level, w, h);
  uint64_t nonzero = 0;
  for (size_t i = 0; i < n; i++)
    nonzero += buf[i] != 0;
  printf("%s\tregion L%d (%" PRId64 ",%" PRId64 ") %" PRId64 "x%" PRId64 "\t%016" PRIx64
         " nonzero=%" PRIu64 "\n",
         cur, level, x, y, w, h, fnv(buf, n * 4), nonzero);
  free(buf);
  if (openslide_get_error(osr))
    error_line(osr, "after region");
}

static void regions(openslide_t *osr, int32_t level) {
  int64_t w, h;
  openslide_get_level_dimensions(osr, level, &w, &h);
  if (w < 0) { /* the handle died earlier: its error is printed already */
    printf("%s\tno level %d\n", cur, level);
    return;
  }
  double ds = openslide_get_level_downsample(osr, level);
  int64_t W = (int64_t)((double)w * ds), H = (int64_t)((double)h * ds); /* level-0 extent */
  int64_t s = 200;
  region(osr, level, 0, 0, s, s);
  region(osr, level, W / 2, H / 2, s, s);           /* inside */
  region(osr, level, W - (int64_t)(50 * ds), H - (int64_t)(70 * ds), s, s); /* over the corner */
  region(osr, level, -(int64_t)(60 * ds), -(int64_t)(30 * ds), s, s);      /* left of, above */
  region(osr, level, -7, H / 3, 50, 50);            /* a few level-0 pixels to the left */
  region(osr, level, W + 10, H + 10, 30, 30);       /* wholly outside */
  region(osr, level, -1000000, -1000000, 16, 16);
  region(osr, level, 1, 3, 64, 48);                 /* fractional on levels > 0 */
  region(osr, level, W / 3 + 1, H / 5 + 2, 77, 91);
  if (w * h <= 4000000)
    region(osr, level, 0, 0, w, h);                 /* the whole level */
  else
    region(osr, level, 0, 0, 1500, 1100);
}

static void dump(const char *file) {
  cur = file;
  const char *vendor = openslide_detect_vendor(file);
  printf("%s\tvendor=%s\n", cur, vendor ? vendor : "(null)");
  openslide_t *osr = openslide_open(file);
  if (!osr) {
    printf("%s\topen=NULL\n", cur);
    return;
  }
  error_line(osr, "open");
  int32_t n = openslide_get_level_count(osr);
  printf("%s\tlevel_count=%d\n", cur, n);
  for (int32_t i = -1; i <= n; i++) {
    int64_t w, h;
    openslide_get_level_dimensions(osr, i, &w, &h);
    printf("%s\tlevel %d: %" PRId64 "x%" PRId64 " downsample=%.17g\n", cur, i, w, h,
           openslide_get_level_downsample(osr, i));
  }
  const double ds[] = {-1, 0, 0.5, 1, 1.5, 2, 3.9999, 4, 4.0001, 7, 16, 31.9, 32, 64, 1000, 1e9};
  for (size_t i = 0; i < sizeof ds / sizeof ds[0]; i++)
    printf("%s\tbest(%g)=%d\n", cur, ds[i], openslide_get_best_level_for_downsample(osr, ds[i]));

  const char *const *names = openslide_get_property_names(osr);
  for (size_t i = 0; names[i]; i++)
    printf("%s\tprop %s=%s\n", cur, names[i], openslide_get_property_value(osr, names[i]));
  printf("%s\tprop (missing)=%s\n", cur,
         openslide_get_property_value(osr, "no.such") ? "set" : "NULL");

  int64_t icc = openslide_get_icc_profile_size(osr);
  printf("%s\ticc size=%" PRId64, cur, icc);
  if (icc > 0) {
    void *b = calloc(1, (size_t)icc);
    openslide_read_icc_profile(osr, b);
    printf(" hash=%016" PRIx64, fnv(b, (size_t)icc));
    free(b);
  }
  printf("\n");

  const char *const *assoc = openslide_get_associated_image_names(osr);
  for (size_t i = 0; assoc[i]; i++) {
    int64_t w, h;
    openslide_get_associated_image_dimensions(osr, assoc[i], &w, &h);
    uint32_t *b = calloc((size_t)w * (size_t)h + 1, 4);
    openslide_read_associated_image(osr, assoc[i], b);
    int64_t aicc = openslide_get_associated_image_icc_profile_size(osr, assoc[i]);
    printf("%s\tassociated %s %" PRId64 "x%" PRId64 " %016" PRIx64 " icc=%" PRId64, cur,
           assoc[i], w, h, fnv(b, (size_t)w * (size_t)h * 4), aicc);
    free(b);
    if (aicc > 0) {
      void *p = calloc(1, (size_t)aicc);
      openslide_read_associated_image_icc_profile(osr, assoc[i], p);
      printf(" icchash=%016" PRIx64, fnv(p, (size_t)aicc));
      free(p);
    }
    printf("\n");
  }
  int64_t w, h;
  openslide_get_associated_image_dimensions(osr, "no-such-image", &w, &h);
  printf("%s\tassociated (missing) %" PRId64 "x%" PRId64 " icc=%" PRId64 "\n", cur, w, h,
         openslide_get_associated_image_icc_profile_size(osr, "no-such-image"));

  for (int32_t i = 0; i < n; i++)
    regions(osr, i);

  /* the cache API: a slide given a small cache, then one shared by a second handle, reads the
   * same pixels; releasing the cache while handles use it is allowed */
  openslide_cache_t *c = openslide_cache_create(1 << 20);
  openslide_set_cache(osr, c);
  openslide_t *osr2 = openslide_open(file);
  if (osr2)
    openslide_set_cache(osr2, c);
  openslide_cache_release(c);
  region(osr, 0, 0, 0, 300, 300);
  if (osr2) {
    cur = "(second handle)";
    region(osr2, 0, 0, 0, 300, 300);
    cur = file;
    openslide_close(osr2);
  }
  openslide_cache_t *z = openslide_cache_create(0);
  openslide_set_cache(osr, z);
  openslide_cache_release(z);
  region(osr, n - 1, 0, 0, 100, 100);
  error_line(osr, "end");
  openslide_close(osr);
}

/* The handle after an error: every call answers "no value". */
static void sticky(const char *file) {
  cur = file;
  openslide_t *osr = openslide_open(file);
  if (!osr) {
    printf("%s\tsticky: open=NULL\n", cur);
    return;
  }
  uint32_t px[4] = {1, 1, 1, 1};
  openslide_read_region(osr, px, 0, 0, 0, -1, 2);
  error_line(osr, "negative size");
  int64_t w, h;
  openslide_get_level0_dimensions(osr, &w, &h);
  printf("%s\tdead: level_count=%d dims=%" PRId64 "x%" PRId64 " downsample=%g best=%d"
         " props=%s assoc=%s icc=%" PRId64 "\n",
         cur, openslide_get_level_count(osr), w, h, openslide_get_level_downsample(osr, 0),
         openslide_get_best_level_for_downsample(osr, 1),
         openslide_get_property_names(osr)[0] ? "some" : "none",
         openslide_get_associated_image_names(osr)[0] ? "some" : "none",
         openslide_get_icc_profile_size(osr));
  openslide_read_region(osr, px, 0, 0, 0, 2, 2);
  printf("%s\tdead region %08x %08x %08x %08x\n", cur, px[0], px[1], px[2], px[3]);
  openslide_close(osr);
}

int main(int argc, char **argv) {
  if (argc > 2 && strcmp(argv[1], "--sticky") == 0) {
    for (int i = 2; i < argc; i++)
      sticky(argv[i]);
    return 0;
  }
  for (int i = 1; i < argc; i++)
    dump(argv[i]);
  return 0;
}
