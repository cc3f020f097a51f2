/* The smallest complete use of libtessera: open a slide, print its levels, read one region
 * and write it as a binary PPM on stdout.
 *
 *   cc read_region.c $(pkg-config --cflags --libs tessera) -o read_region
 *   ./read_region slide.svs 1000 2000 0 512 512 > patch.ppm
 */
#include <stdio.h>
#include <stdlib.h>

#include <tessera.h>

int main(int argc, char **argv) {
  if (argc != 7) {
    fprintf(stderr, "usage: %s SLIDE X Y LEVEL W H > out.ppm\n", argv[0]);
    return 2;
  }
  int64_t x = atoll(argv[2]), y = atoll(argv[3]), w = atoll(argv[5]), h = atoll(argv[6]);
  int32_t level = atoi(argv[4]);
  tessera_slide *slide;
  if (tessera_open(argv[1], &slide) != TESSERA_OK) {
    fprintf(stderr, "%s: %s\n", argv[1], tessera_error_message());
    return 1;
  }
  for (int32_t i = 0; i < tessera_level_count(slide); i++) {
    tessera_level_info info = {.struct_size = sizeof info};
    tessera_level_info_get(slide, i, &info);
    fprintf(stderr, "level %d: %lldx%lld, downsample %g\n", i, (long long)info.width,
            (long long)info.height, info.downsample);
  }
  size_t size = (size_t)w * (size_t)h * 3;
  uint8_t *rgb = malloc(size);
  tessera_status st = rgb ? tessera_read_region(slide, x, y, level, w, h, NULL, rgb, size)
                          : TESSERA_E_NOMEM;
  if (st != TESSERA_OK) {
    fprintf(stderr, "%s: %s\n", argv[1], rgb ? tessera_error_message() : "out of memory");
  } else {
    printf("P6\n%lld %lld\n255\n", (long long)w, (long long)h);
    fwrite(rgb, 1, size, stdout);
  }
  free(rgb);
  tessera_close(slide);
  return st == TESSERA_OK ? 0 : 1;
}
