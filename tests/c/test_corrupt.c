/* A corrupt tile fails only the reads that need it: other tiles of the same open slide still
 * read, the failed read leaves only fill in the destination, and the message names the tile.
 * Uses the private tables to find the tile's bytes in a copy of a test-data file. */
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "slide_internal.h"
#include "tessera.h"

static int copy_file(const char *from, const char *to) {
  FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
  if (!in || !out)
    return -1;
  char buf[65536];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, in)) > 0)
    fwrite(buf, 1, n, out);
  fclose(in);
  return fclose(out);
}

static void patch(const char *path, uint64_t offset, const uint8_t *bytes, size_t n) {
  FILE *f = fopen(path, "r+b");
  fseek(f, (long)offset, SEEK_SET);
  fwrite(bytes, 1, n, f);
  fclose(f);
}

static int read_tile_area(tessera_slide *s, int tile, uint8_t *buf, int fill) {
  tessera_read_options o;
  tessera_read_options_init(&o);
  o.fill = fill;
  const struct tsr_level *lv = &s->levels[0];
  int64_t x = (tile % lv->across) * lv->tile_w, y = (tile / lv->across) * lv->tile_h;
  return tessera_read_region(s, x + 10, y + 10, 0, 50, 50, &o, buf, 50 * 50 * 3);
}

static void corrupt_and_check(const char *orig, const char *copy, const uint8_t *bytes, size_t n,
                              uint64_t where_in_tile, const char *what) {
  tessera_slide *good = NULL, *bad = NULL;
  copy_file(orig, copy);
  if (tessera_open(orig, &good) != TESSERA_OK) {
    CHECK(0, "open %s: %s", orig, tessera_error_message());
    return;
  }
  const int victim = 5;
  uint64_t off = good->levels[0].offsets[victim];
  uint64_t len = good->levels[0].bytecounts[victim];
  patch(copy, off + (where_in_tile == UINT64_MAX ? len / 2 : where_in_tile), bytes, n);
  CHECK(tessera_open(copy, &bad) == TESSERA_OK, "%s: open: %s", what, tessera_error_message());
  if (!bad) {
    tessera_close(good);
    return;
  }
  uint8_t a[50 * 50 * 3], b[50 * 50 * 3];
  memset(b, 0x11, sizeof b);
  tessera_status st = read_tile_area(bad, victim, b, 77);
  CHECK(st == TESSERA_E_CORRUPT, "%s: status %d (%s)", what, st, tessera_error_message());
  CHECK(strstr(tessera_error_message(), "tile 5") != NULL, "%s: message %s", what,
        tessera_error_message());
  int all_fill = 1;
  for (size_t i = 0; i < sizeof b; i++)
    all_fill &= b[i] == 77;
  CHECK(all_fill, "%s: a failed read left decoded pixels in the buffer", what);
  for (int t = 0; t < (int)bad->levels[0].ntiles; t++) {
    if (t == victim)
      continue;
    CHECK(read_tile_area(good, t, a, 0) == TESSERA_OK, "good tile %d", t);
    CHECK(read_tile_area(bad, t, b, 0) == TESSERA_OK, "%s: tile %d after the error: %s", what, t,
          tessera_error_message());
    CHECK(memcmp(a, b, sizeof a) == 0, "%s: tile %d differs", what, t);
  }
  /* The same failure again: the slide is not left in an error state by the first one. */
  CHECK(read_tile_area(bad, victim, b, 0) == TESSERA_E_CORRUPT, "%s: second read", what);
  tessera_close(bad);
  tessera_close(good);
}

int main(int argc, char **argv) {
  char orig[4096], copy[4096];
  snprintf(orig, sizeof orig, "%s/generic-jpeg-ycbcr-128tiles.tiff", testdata_dir(argc, argv));
  snprintf(copy, sizeof copy, "/tmp/tessera-corrupt-%d.tiff", (int)getpid());
  static const uint8_t zeros[4] = {0, 0, 0, 0};
  static const uint8_t eoi[2] = {0xFF, 0xD9};
  static const uint8_t bad_marker[2] = {0xFF, 0xD3};
  corrupt_and_check(orig, copy, zeros, sizeof zeros, 0, "no SOI");
  corrupt_and_check(orig, copy, eoi, sizeof eoi, UINT64_MAX, "early EOI");
  corrupt_and_check(orig, copy, bad_marker, sizeof bad_marker, UINT64_MAX, "stray marker");
  unlink(copy);
  return check_finish("test_corrupt");
}
