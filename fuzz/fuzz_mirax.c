/* Fuzz target: MIRAX's three kinds of file, as a slide reaches them. The input is split into
 * Slidedat.ini, Index.dat and one data file:
 *
 *   [INI length, 16-bit little-endian][INI][index length, 16 bits][Index.dat][data file]
 *
 * (lengths larger than what follows are cut to it). The data file is written as both
 * Data0000.dat and Data0001.dat. The files go to a folder of this process's own (made once,
 * rewritten for each input) beside an empty slide.mrxs, which is opened with tessera_open,
 * read at every level (up to 4) and in every associated image, and closed. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tessera.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char folder[256], slide[300];

static const char *const FILES[] = {"Slidedat.ini", "Index.dat", "Data0000.dat", "Data0001.dat"};

/* The folder goes when the process ends (a replay leaves nothing behind). */
static void clean_up(void) {
  char path[400];
  for (size_t i = 0; i < sizeof FILES / sizeof FILES[0]; i++) {
    snprintf(path, sizeof path, "%s/%s", folder, FILES[i]);
    unlink(path);
  }
  rmdir(folder);
  unlink(slide);
  char *slash = strrchr(folder, '/');
  if (slash) {
    *slash = '\0';
    rmdir(folder);
  }
}

static int write_file(const char *name, const uint8_t *p, size_t n) {
  char path[400];
  snprintf(path, sizeof path, "%s/%s", folder, name);
  FILE *f = fopen(path, "wb");
  if (!f)
    return -1;
  size_t done = n ? fwrite(p, 1, n, f) : 0;
  return fclose(f) == 0 && done == n ? 0 : -1;
}

/* A 16-bit length at *p, cut to what follows it. */
static size_t take(const uint8_t **p, size_t *left) {
  if (*left < 2) {
    *p += *left;
    *left = 0;
    return 0;
  }
  size_t n = (size_t)(*p)[0] | (size_t)(*p)[1] << 8;
  *p += 2;
  *left -= 2;
  return n < *left ? n : *left;
}

static void read_slide(tessera_slide *s) {
  static uint8_t px[256 * 256 * 4];
  tessera_read_options o;
  tessera_read_options_init(&o);
  o.channels = 4;
  for (int32_t l = 0; l < tessera_level_count(s) && l < 4; l++) {
    tessera_read_region(s, 0, 0, l, 64, 64, &o, px, sizeof px);
    tessera_read_region(s, 100, 70, l, 200, 150, NULL, px, sizeof px);
  }
  for (size_t i = 0; i < tessera_associated_image_count(s); i++) {
    const char *name = tessera_associated_image_name(s, i);
    int64_t w, h;
    if (tessera_associated_image_dimensions(s, name, &w, &h) == TESSERA_OK && w > 0 && h > 0 &&
        w <= 256 && h <= 256)
      tessera_read_associated_image(s, name, NULL, px, sizeof px);
  }
  for (size_t i = 0; i < tessera_property_count(s); i++)
    (void)strlen(tessera_property_value(s, tessera_property_key(s, i)));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!folder[0]) {
    const char *tmp = getenv("TMPDIR");
    snprintf(folder, sizeof folder, "%s/tessera-fuzz-mirax-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    size_t n = strlen(folder);
    if (n < 6 || !mkdtemp(folder)) {
      folder[0] = '\0';
      return 0;
    }
    /* slide.mrxs beside its folder: the folder is slide/ inside the temporary one */
    snprintf(slide, sizeof slide, "%s/slide.mrxs", folder);
    FILE *f = fopen(slide, "wb");
    if (!f)
      return 0;
    fclose(f);
    strncat(folder, "/slide", sizeof folder - strlen(folder) - 1);
    if (mkdir(folder, 0700) != 0)
      return 0;
    atexit(clean_up);
  }
  const uint8_t *p = data;
  size_t left = size;
  size_t ini = take(&p, &left);
  const uint8_t *ini_at = p;
  p += ini;
  left -= ini;
  size_t index = take(&p, &left);
  const uint8_t *index_at = p;
  p += index;
  left -= index;
  if (write_file(FILES[0], ini_at, ini) || write_file(FILES[1], index_at, index) ||
      write_file(FILES[2], p, left) || write_file(FILES[3], p, left))
    return 0;
  tessera_slide *s = NULL;
  if (tessera_open(slide, &s) == TESSERA_OK) {
    read_slide(s);
    tessera_close(s);
  }
  return 0;
}
