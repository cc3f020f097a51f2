/* A region whose origin falls between two pixels of its level, painted as OpenSlide 3.4
 * paints it (read for the semantics: openslide-grid.c, and what cairo and pixman do with it).
 *
 * OpenSlide divides the level-0 origin by the downsample and keeps the fraction: each tile of
 * the level is painted into a transparent group with cairo, translated by a fractional offset,
 * so cairo samples it with pixman's bilinear filter (weights of 7 bits, the fraction rounded to
 * 1/65536 first, transparent outside the tile), and the tiles are combined with the SATURATE
 * operator, last tile first. Here the same arithmetic (pixman's C bilinear and SATURATE), on
 * tessera's decoded pixels. pixman's SIMD fetchers round their products otherwise, so the
 * result comes close to OpenSlide's, not equal to it (test_openslide_c.py's
 * test_fractional_regions_close says how close). */
#include "fractional.h"

#include <math.h>
#include <string.h>

#include "alloc.h"

void tsr_os_rgba_to_argb(uint32_t *px, size_t stride_px, int64_t w, int64_t h) {
  for (int64_t y = 0; y < h; y++) {
    uint32_t *row = px + (size_t)y * stride_px;
    for (int64_t x = 0; x < w; x++) {
      const uint8_t *b = (const uint8_t *)&row[x];
      uint32_t r = b[0], g = b[1], bl = b[2], a = b[3];
      if (a != 255) {
        r = (r * a + 127) / 255;
        g = (g * a + 127) / 255;
        bl = (bl * a + 127) / 255;
      }
      row[x] = a << 24 | r << 16 | g << 8 | bl;
    }
  }
}


/* The level-0 coordinate whose level coordinate (floor(v / ds), as tessera computes it) is l. */
static int64_t level0_of(int64_t l, double ds) {
  int64_t v = (int64_t)ceil((double)l * ds);
  while (v > 0 && floor((double)(v - 1) / ds) >= (double)l)
    v--;
  while (floor((double)v / ds) < (double)l)
    v++;
  return v;
}

/* pixman's bilinear_interpolation, channel by channel: weights of 8 bits made from 7. */
static uint32_t bilinear(uint32_t tl, uint32_t tr, uint32_t bl, uint32_t br, uint32_t dx,
                         uint32_t dy) {
  dx <<= 1;
  dy <<= 1;
  uint64_t wtl = (uint64_t)(256 - dx) * (256 - dy), wtr = (uint64_t)dx * (256 - dy);
  uint64_t wbl = (uint64_t)(256 - dx) * dy, wbr = (uint64_t)dx * dy;
  uint32_t out = 0;
  for (int shift = 0; shift < 32; shift += 8) {
    uint64_t f = ((tl >> shift) & 255) * wtl + ((tr >> shift) & 255) * wtr +
                 ((bl >> shift) & 255) * wbl + ((br >> shift) & 255) * wbr;
    out |= (uint32_t)(f >> 16) << shift;
  }
  return out;
}

/* pixman's SATURATE of premultiplied s onto d. */
static uint32_t saturate(uint32_t s, uint32_t d) {
  uint32_t sa = s >> 24, da = 255 - (d >> 24);
  if (sa > da) {
    uint32_t f = (da * 255 + sa / 2) / sa;
    uint32_t scaled = 0;
    for (int shift = 0; shift < 32; shift += 8) {
      uint32_t t = ((s >> shift) & 255) * f + 0x80;
      scaled |= (((t >> 8) + t) >> 8) << shift;
    }
    s = scaled;
  }
  uint32_t out = 0;
  for (int shift = 0; shift < 32; shift += 8) {
    uint32_t c = ((s >> shift) & 255) + ((d >> shift) & 255);
    out |= (c > 255 ? 255 : c) << shift;
  }
  return out;
}

/* One tile (its pixels at src, rows src_stride apart, tw x th) painted into the group g (w x h,
 * rows stride apart) at the device offset (ox, oy) = its top-left corner. */
static void paint_tile(const uint32_t *src, size_t src_stride, uint32_t tw, uint32_t th,
                       double ox, double oy, uint32_t *g, size_t stride, int64_t w, int64_t h) {
  /* pixman samples dest pixel i at i + 0.5 - ox, less half a pixel for the bilinear filter,
   * in 16.16 fixed point; cairo rounds the translation to it (to nearest, ties to even) */
  int64_t fx = (int64_t)rint(-ox * 65536.0), fy = (int64_t)rint(-oy * 65536.0);
  for (int64_t j = 0; j < h; j++) {
    int64_t py = j * 65536 + fy, y1 = py >> 16;
    if (y1 < -1 || y1 >= (int64_t)th)
      continue;
    uint32_t dy = (uint32_t)(py >> 9) & 0x7f;
    const uint32_t *r0 = y1 >= 0 ? src + (size_t)y1 * src_stride : NULL;
    const uint32_t *r1 = y1 + 1 < (int64_t)th ? src + (size_t)(y1 + 1) * src_stride : NULL;
    for (int64_t i = 0; i < w; i++) {
      int64_t px = i * 65536 + fx, x1 = px >> 16;
      if (x1 < -1 || x1 >= (int64_t)tw)
        continue;
      uint32_t dx = (uint32_t)(px >> 9) & 0x7f;
      bool in0 = x1 >= 0, in1 = x1 + 1 < (int64_t)tw;
      uint32_t tl = r0 && in0 ? r0[x1] : 0, tr = r0 && in1 ? r0[x1 + 1] : 0;
      uint32_t bl = r1 && in0 ? r1[x1] : 0, br = r1 && in1 ? r1[x1 + 1] : 0;
      uint32_t *d = &g[(size_t)j * stride + (size_t)i];
      *d = saturate(bilinear(tl, tr, bl, br, dx, dy), *d);
    }
  }
}

tessera_status tsr_os_paint_fractional(tessera_slide *s, int32_t level,
                                       const struct tsr_os_grid *grid, double x, double y,
                                       int64_t w, int64_t h, uint32_t *dst, size_t stride) {
  uint32_t tw = grid->tile_w, th = grid->tile_h;
  int64_t across = (grid->width + tw - 1) / tw, down = (grid->height + th - 1) / th;
  int64_t sx = (int64_t)(x / tw), sy = (int64_t)(y / th);
  int64_t ex = (int64_t)ceil((x + (double)w) / tw), ey = (int64_t)ceil((y + (double)h) / th);
  if (ex > across)
    ex = across;
  if (ey > down)
    ey = down;
  if (sx >= ex || sy >= ey)
    return TESSERA_OK;
  double offx = x - (double)sx * tw, offy = y - (double)sy * th;
  /* one row of tiles at a time, from the last: SATURATE is not commutative in its rounding */
  size_t band_w = (size_t)(ex - sx) * tw;
  uint32_t *band = tsr_malloc(band_w * th * 4);
  if (!band)
    return TESSERA_E_NOMEM;
  tessera_read_options o;
  tessera_read_options_init(&o);
  o.channels = 4;
  o.fill = 0;
  tessera_status st = TESSERA_OK;
  for (int64_t ty = ey - 1; ty >= sy && st == TESSERA_OK; ty--) {
    st = tessera_read_region(s, level0_of(sx * tw, grid->downsample),
                             level0_of(ty * th, grid->downsample), level, (int64_t)band_w, th, &o,
                             (uint8_t *)band, band_w * th * 4);
    if (st != TESSERA_OK)
      break;
    tsr_os_rgba_to_argb(band, band_w, (int64_t)band_w, th);
    for (int64_t tx = ex - 1; tx >= sx; tx--)
      paint_tile(band + (size_t)(tx - sx) * tw, band_w, tw, th,
                 (double)(tx - sx) * tw - offx, (double)(ty - sy) * th - offy, dst, stride, w,
                 h);
  }
  tsr_free(band);
  return st;
}
