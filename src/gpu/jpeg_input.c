#include "gpu/jpeg_input.h"

#include <string.h>
#include <tiff.h>

bool tsr_gpu_level_decodable(const struct tsr_level *lv) {
  const struct tsr_pixel_format *f = &lv->fmt;
  return f->compression == COMPRESSION_JPEG && f->photometric == PHOTOMETRIC_YCBCR &&
         f->spp == 3 && f->decoded_channels == 3 && !f->alpha && !f->invert &&
         !f->unsupported[0] && f->jpeg_scale <= 1 && lv->tiled;
}

static uint32_t be16(const uint8_t *p) { return (uint32_t)p[0] << 8 | p[1]; }

/* A start-of-frame segment's body (after its length): what nvJPEG and libjpeg agree on. */
static bool frame_ok(const uint8_t *p, uint32_t n, uint32_t tile_w, uint32_t tile_h,
                     bool subsampled) {
  if (n < 6 || p[0] != 8)
    return false;
  uint32_t height = be16(p + 1), width = be16(p + 3), components = p[5];
  if (height != tile_h || width != tile_w || components != 3 || n < 6 + 3 * components)
    return false;
  for (uint32_t c = 0; c < components; c++) {
    uint32_t h = p[6 + 3 * c + 1] >> 4, v = p[6 + 3 * c + 1] & 15;
    bool ok = c == 0 ? (h == 1 && v == 1) || (subsampled && (h == 1 || h == 2) &&
                                               (v == 1 || v == 2))
                     : h == 1 && v == 1;
    if (!ok)
      return false;
  }
  return true;
}

bool tsr_gpu_jpeg_supported(const uint8_t *s, size_t len, uint32_t tile_w, uint32_t tile_h,
                            bool subsampled) {
  if (len < 4 || s[0] != 0xFF || s[1] != 0xD8)
    return false;
  bool frame = false;
  for (size_t i = 2;;) {
    if (i + 4 > len || s[i] != 0xFF)
      return false;
    while (i + 4 <= len && s[i + 1] == 0xFF) /* fill bytes before a marker */
      i++;
    if (i + 4 > len)
      return false;
    uint8_t m = s[i + 1];
    uint32_t seg = be16(s + i + 2);
    if (seg < 2 || i + 2 + seg > len)
      return false;
    const uint8_t *body = s + i + 4;
    uint32_t body_len = seg - 2;
    if (m == 0xDA) /* the scan: all three components, interleaved */
      return frame && body_len >= 1 && body[0] == 3;
    bool ok;
    switch (m) {
    case 0xC0: /* baseline */
      ok = !frame && frame_ok(body, body_len, tile_w, tile_h, subsampled);
      frame = true;
      break;
    case 0xC4: /* DHT */
    case 0xDB: /* DQT */
    case 0xDD: /* DRI */
    case 0xFE: /* COM */
      ok = true;
      break;
    default: /* APPn but Adobe's; anything else (other frames, JPG, DNL, ...) is the CPU's */
      ok = m >= 0xE0 && m <= 0xEF &&
           !(m == 0xEE && body_len >= 5 && memcmp(body, "Adobe", 5) == 0);
    }
    if (!ok)
      return false;
    i += 2 + seg;
  }
}
