/* Fuzz target: a Hamamatsu VMS or VMU slide's files, as a slide reaches them. The input is
 * split into the key file, one image file, the map file and the optimisation file:
 *
 *   [key length, 16-bit little-endian][key file][image length, 32 bits][image][map length,
 *   32 bits][map][optimisation file]
 *
 * (lengths larger than what follows are cut to it). The files go to a folder of this
 * process's own (made once, rewritten for each input) as slide.vms, image.jpg (also written as
 * image.ngr), map.jpg (map.ngr) and slide.opt; the key file names whichever it likes. The
 * slide is opened with tessera_open, read at every level (up to 4) and in every associated
 * image, and closed. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tessera.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char folder[256], slide[300];

static const char *const FILES[] = {"slide.vms", "image.jpg", "image.ngr",
                                    "map.jpg",   "map.ngr",   "slide.opt"};

/* The folder goes when the process ends (a replay leaves nothing behind). */
static void clean_up(void) {
  char path[400];
  for (size_t i = 0; i < sizeof FILES / sizeof FILES[0]; i++) {
    snprintf(path, sizeof path, "%s/%s", folder, FILES[i]);
    unlink(path);
  }
  rmdir(folder);
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

/* A little-endian length of `bytes` bytes at *p, cut to what follows it. */
static size_t take(const uint8_t **p, size_t *left, size_t bytes) {
  if (*left < bytes) {
    *p += *left;
    *left = 0;
    return 0;
  }
  size_t n = 0;
  for (size_t i = bytes; i-- > 0;)
    n = n << 8 | (*p)[i];
  *p += bytes;
  *left -= bytes;
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
    snprintf(folder, sizeof folder, "%s/tessera-fuzz-vms-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    size_t n = strlen(folder);
    if (n < 6 || !mkdtemp(folder)) {
      folder[0] = '\0';
      return 0;
    }
    snprintf(slide, sizeof slide, "%s/slide.vms", folder);
    atexit(clean_up);
  }
  const uint8_t *p = data;
  size_t left = size;
  const uint8_t *at[3];
  size_t len[3];
  for (int i = 0; i < 3; i++) {
    len[i] = take(&p, &left, i == 0 ? 2 : 4);
    at[i] = p;
    p += len[i];
    left -= len[i];
  }
  if (write_file(FILES[0], at[0], len[0]) || write_file(FILES[1], at[1], len[1]) ||
      write_file(FILES[2], at[1], len[1]) || write_file(FILES[3], at[2], len[2]) ||
      write_file(FILES[4], at[2], len[2]) || write_file(FILES[5], p, left))
    return 0;
  tessera_slide *s = NULL;
  if (tessera_open(slide, &s) == TESSERA_OK) {
    read_slide(s);
    tessera_close(s);
  }
  return 0;
}
