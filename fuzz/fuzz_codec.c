/* Fuzz target: one codec on arbitrary tile bytes. The first five bytes choose the codec,
 * the tile size, the samples per pixel, the photometric interpretation, the predictor, the
 * kind of alpha, how much of the tile is needed and (for codecs that crop) which part; the
 * rest is the tile. */
#include <stdlib.h>
#include <string.h>

#include "codec/codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint32_t codes[] = {1, 5, 32773, 8, 50000, 7, 50001, 33003, 33004, 33005};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 5)
    return 0;
  struct tsr_pixel_format f;
  memset(&f, 0, sizeof f);
  f.compression = codes[data[0] % (sizeof codes / sizeof codes[0])];
  f.spp = (uint16_t)(1 + data[3] % 4);
  f.photometric = f.spp >= 3 ? (data[4] & 1 ? 6 : 2) : (data[4] & 1 ? 0 : 1);
  f.predictor = data[4] & 2 ? 2 : 1;
  tsr_codec_resolve(&f, 8, 1, 1, f.spp == 2 || f.spp == 4, data[4] & 4 ? 1 : 2);
  if (f.unsupported[0])
    return 0;
  struct tsr_tile_out out = {0};
  out.width = 1u + data[1] % 80;
  out.height = 1u + data[2] % 80;
  out.need_w = out.width - (uint32_t)(data[4] >> 4) % out.width;
  out.need_h = out.height;
  out.stride = (size_t)out.width * f.decoded_channels;
  /* Codecs that crop get a rectangle chosen by the same bits. */
  out.crop_x = (uint32_t)(data[1] >> 4) % out.need_w;
  out.crop_y = (uint32_t)(data[2] >> 4) % out.need_h;
  out.crop_w = out.need_w - out.crop_x;
  out.crop_h = out.need_h - out.crop_y;
  out.pixels = malloc((size_t)out.width * out.height * f.decoded_channels);
  if (out.pixels && tsr_codec_find(f.compression)(&f, data + 5, size - 5, &out) == TESSERA_OK)
    tsr_codec_postprocess(&f, out.pixels, out.stride, out.width, out.need_h);
  free(out.pixels);
  return 0;
}
