/* Fuzz target: open a slide from arbitrary bytes, then read regions at every level (up to 4),
 * in and out of the image, with 3 and 4 channels. The bytes are written to a memfd so the
 * library opens them through its ordinary path-based entry point. */
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#include "tessera.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int fd = -1;
  static char path[64];
  if (fd < 0) {
    fd = memfd_create("tessera-fuzz", 0);
    if (fd < 0)
      return 0;
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  }
  if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != (ssize_t)size)
    return 0;
  tessera_slide *s = NULL;
  if (tessera_open(path, &s) != TESSERA_OK)
    return 0;
  static uint8_t buf[300 * 300 * 4];
  tessera_read_options o;
  tessera_read_options_init(&o);
  o.channels = 4;
  for (int32_t l = 0; l < tessera_level_count(s) && l < 4; l++) {
    tessera_read_region(s, 0, 0, l, 300, 300, &o, buf, sizeof buf);
    tessera_read_region(s, -100, 50, l, 64, 64, NULL, buf, sizeof buf);
  }
  tessera_close(s);
  return 0;
}
