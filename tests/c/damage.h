/* Damaged copies of test files, for the tests of what a bad tile does to a read. */
#ifndef TSR_TEST_DAMAGE_H
#define TSR_TEST_DAMAGE_H

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <tiffio.h>
#include <unistd.h>

/* Copies a file; 1 on success. */
static inline int test_copy_file(const char *from, const char *to) {
  FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
  int ok = in && out;
  char buf[65536];
  size_t n;
  while (ok && (n = fread(buf, 1, sizeof buf, in)) > 0)
    ok = fwrite(buf, 1, n, out) == n;
  if (in)
    fclose(in);
  if (out && fclose(out) != 0)
    ok = 0;
  return ok;
}

/* Zeroes the first bytes of tile `tile` of the first directory, so it cannot decode; 1 on
 * success. */
static inline int test_damage_tile(const char *path, uint32_t tile) {
  TIFF *t = TIFFOpen(path, "r");
  if (!t)
    return 0;
  uint64_t *offsets = NULL;
  int ok = TIFFGetField(t, TIFFTAG_TILEOFFSETS, &offsets) && tile < TIFFNumberOfTiles(t);
  uint64_t at = ok ? offsets[tile] : 0;
  TIFFClose(t);
  int fd = ok ? open(path, O_WRONLY) : -1;
  static const uint8_t zeros[16];
  ok = fd >= 0 && pwrite(fd, zeros, sizeof zeros, (off_t)at) == (ssize_t)sizeof zeros;
  if (fd >= 0)
    close(fd);
  return ok;
}

#endif
