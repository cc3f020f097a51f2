/* A region whose origin falls between two pixels of its level, painted as OpenSlide 3.4
 * paints it (read for the semantics: openslide-grid.c, and what cairo and pixman do with it).
 *
 * OpenSlide divides the level-0 origin by the downsample and keeps the fraction: each tile of
 * the level is painted with cairo into a transparent group, translated by a fractional offset,
 * with the SATURATE operator, last tile first. cairo rounds the translation to 1/65536 and asks
 * pixman for its bilinear filter, transparent outside the tile. SATURATE divides by the
 * source's alpha, so pixman computes it on its general path only, in floats (its SIMD code is
 * never used here, so OpenSlide's bytes do not depend on the CPU): the four pixels and the
 * weights as floats, SATURATE in floats, back to 8 bits by pixman's truncating conversion,
 * once per tile. The exception is a tile without alpha (Hamamatsu's, which OpenSlide hands
 * cairo as RGB24) whose samples all lie inside it: pixman knows it opaque, makes SATURATE the
 * OVER_REVERSE it then equals, and computes that in 8 bits (7-bit weights, sums floored). Here
 * the same arithmetic on tessera's decoded pixels, so the bytes are OpenSlide's
 * (test_openslide_c.py's test_fractional_regions_equal). It assumes C's float arithmetic is
 * IEEE single precision, as it is wherever SSE or any 64-bit FPU does it (not x87).
 *
 * A level of placed images (MIRAX, a Ventana BIF placed tile by tile) is not resampled from
 * tessera's tiles: each piece of a region is painted image by image as OpenSlide paints it,
 * from whole pixels and between them (tsr_mosaic_paint_region, source/mosaic_tiles.c). Nor is
 * a Leica level: OpenSlide paints each of its images from the region's origin truncated to a
 * whole pixel of that image, past the level's edge too (tsr_paint_placed_openslide, region.c).
 *
 * Also here, tsr_os_read_region: OpenSlide's whole read_region (its 4096-pixel pieces, whole
 * and fractional), which libtessera-openslide and the Python extension (tessera.openslide) both
 * call, so the two fronts share one implementation. It uses tessera's public API, tsr_malloc
 * and the two painters of placed images above (internal to libtessera), so it builds wherever
 * the static libtessera is linked. */
#include "fractional.h"

#include <float.h>
#include <math.h>
#include <string.h>

#include "alloc.h"
#include "compat/pixman.h"
#include "slide_internal.h"
#include "region.h"
#include "source/tile_source.h"

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

/* pixman's 8-bit channel to float and back (compat/pixman.h, shared with the mosaic
 * codec). For 255 the float is exactly 1.0f, so an opaque pixel is the same whether cairo hands
 * pixman its tile as a8r8g8b8 (most formats) or x8r8g8b8 (NDPI). */
static float unorm8_to_float(uint32_t v) { return tsr_pixman_unorm8_to_float(v); }

static uint32_t float_to_unorm8(float f) { return tsr_pixman_float_to_unorm8(f); }

/* The floats of one premultiplied ARGB pixel, alpha first as pixman's argb_t. */
static void expand(uint32_t px, float out[4]) {
  for (int c = 0; c < 4; c++)
    out[c] = unorm8_to_float((px >> (24 - 8 * c)) & 255);
}

/* Pixel x of a tile's row as floats, or transparent black where the row or x is outside the
 * tile (cairo's EXTEND_NONE). */
static void texel(const uint32_t *row, bool in, int64_t x, float out[4]) {
  if (row && in)
    expand(row[x], out);
  else
    out[0] = out[1] = out[2] = out[3] = 0.0f;
}

/* pixman's bilinear_interpolation_float, with its weights and its order of sums. Every product
 * and sum is a statement of its own so that no compiler fuses them into one rounding (C11 lets
 * it contract only within an expression); pixman, built for baseline x86-64, rounds each. */
static void bilinear(const float tl[4], const float tr[4], const float bl[4], const float br[4],
                     float distx, float disty, float out[4]) {
  float ix = 1.0f - distx, iy = 1.0f - disty;
  float wxy = distx * disty, wxiy = distx * iy, wixy = ix * disty, wixiy = ix * iy;
  for (int c = 0; c < 4; c++) {
    float acc = tl[c] * wixiy;
    float t = tr[c] * wxiy;
    acc = acc + t;
    t = bl[c] * wixy;
    acc = acc + t;
    t = br[c] * wxy;
    out[c] = acc + t;
  }
}

/* pixman's float SATURATE (pixman-combine-float.c): d + s * min(1, (1 - da) / sa), each channel
 * at most 1, then back to 8 bits as pixman stores its wide scanlines. */
static uint32_t saturate(const float s[4], uint32_t dst) {
  float d[4];
  expand(dst, d);
  float f = 1.0f;
  if (s[0] >= FLT_MIN) {
    f = (1.0f - d[0]) / s[0];
    if (f < 0.0f)
      f = 0.0f;
    else if (f > 1.0f)
      f = 1.0f;
  }
  uint32_t out = 0;
  for (int c = 0; c < 4; c++) {
    float v = s[c] * f;
    v = v + d[c];
    out |= float_to_unorm8(v < 1.0f ? v : 1.0f) << (24 - 8 * c);
  }
  return out;
}

/* pixman's 8-bit bilinear_interpolation: weights of 7 bits made 8, each channel's sum floored. */
static uint32_t bilinear8(uint32_t tl, uint32_t tr, uint32_t bl, uint32_t br, uint32_t dx,
                          uint32_t dy) {
  return tsr_pixman_bilinear8(tl, tr, bl, br, dx, dy);
}

static uint32_t over_reverse8(uint32_t s, uint32_t d) { return tsr_pixman_over_reverse8(s, d); }

/* The span [*b0, *b1) of destination pixels cairo hands pixman for a tile that starts at
 * fixed-point device position -f (16.16) and is n pixels long, within [0, len): from the pixel
 * holding its start to the one holding its end, that one included. Returns whether pixman then
 * finds every bilinear sample of the span inside the tile (its COVER_CLIP_BILINEAR). */
static bool span(int64_t f, uint32_t n, int64_t len, int64_t *b0, int64_t *b1) {
  *b0 = (-f) >> 16;
  *b1 = ((-f + (int64_t)n * 65536) >> 16) + 1;
  if (*b0 < 0)
    *b0 = 0;
  if (*b1 > len)
    *b1 = len;
  return *b0 < *b1 && ((*b0 * 65536 + f) >> 16) >= 0 &&
         (((*b1 - 1) * 65536 + f) >> 16) + 1 < (int64_t)n;
}

/* One tile (its pixels at src, rows src_stride apart, tw x th) painted into the group g (w x h,
 * rows stride apart) at the device offset (ox, oy) = its top-left corner. */
static void paint_tile(const uint32_t *src, size_t src_stride, uint32_t tw, uint32_t th,
                       bool opaque, double ox, double oy, uint32_t *g, size_t stride, int64_t w,
                       int64_t h) {
  /* pixman samples dest pixel i at i + 0.5 - ox, less half a pixel for the bilinear filter,
   * in 16.16 fixed point; cairo rounds the translation to it (to nearest, ties to even) */
  int64_t fx = (int64_t)rint(-ox * 65536.0), fy = (int64_t)rint(-oy * 65536.0);
  int64_t bx0, bx1, by0, by1;
  bool cover_x = span(fx, tw, w, &bx0, &bx1), cover_y = span(fy, th, h, &by0, &by1);
  if (opaque && cover_x && cover_y) {
    /* A tile without alpha whose samples all fall inside it is opaque to pixman, which then
     * makes SATURATE the OVER_REVERSE it equals for an opaque source, and computes that in
     * 8 bits. */
    for (int64_t j = by0; j < by1; j++) {
      int64_t py = j * 65536 + fy;
      const uint32_t *r0 = src + (size_t)(py >> 16) * src_stride, *r1 = r0 + src_stride;
      for (int64_t i = bx0; i < bx1; i++) {
        int64_t px = i * 65536 + fx, c = px >> 16;
        uint32_t s = bilinear8(r0[c] | 0xff000000u, r0[c + 1] | 0xff000000u, r1[c] | 0xff000000u,
                               r1[c + 1] | 0xff000000u, (uint32_t)(px >> 9) & 0x7f,
                               (uint32_t)(py >> 9) & 0x7f);
        uint32_t *d = &g[(size_t)j * stride + (size_t)i];
        *d = over_reverse8(s, *d);
      }
    }
    return;
  }
  /* Otherwise SATURATE divides, which pixman does only on its general path, in floats. */
  for (int64_t j = 0; j < h; j++) {
    int64_t py = j * 65536 + fy, y1 = py >> 16;
    if (y1 < -1 || y1 >= (int64_t)th)
      continue;
    float disty = (float)(py & 0xffff) / 65536.0f;
    const uint32_t *r0 = y1 >= 0 ? src + (size_t)y1 * src_stride : NULL;
    const uint32_t *r1 = y1 + 1 < (int64_t)th ? src + (size_t)(y1 + 1) * src_stride : NULL;
    for (int64_t i = 0; i < w; i++) {
      int64_t px = i * 65536 + fx, x1 = px >> 16;
      if (x1 < -1 || x1 >= (int64_t)tw)
        continue;
      float distx = (float)(px & 0xffff) / 65536.0f;
      bool in0 = x1 >= 0, in1 = x1 + 1 < (int64_t)tw;
      float tl[4], tr[4], bl[4], br[4], s[4];
      texel(r0, in0, x1, tl);
      texel(r0, in1, x1 + 1, tr);
      texel(r1, in0, x1, bl);
      texel(r1, in1, x1 + 1, br);
      bilinear(tl, tr, bl, br, distx, disty, s);
      uint32_t *d = &g[(size_t)j * stride + (size_t)i];
      *d = saturate(s, *d);
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
  /* OpenSlide hands cairo Hamamatsu's tiles as RGB24 (x8r8g8b8: no alpha), the others' as
   * ARGB32 */
  bool opaque = strcmp(tessera_vendor(s), "hamamatsu") == 0;
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
      paint_tile(band + (size_t)(tx - sx) * tw, band_w, tw, th, opaque,
                 (double)(tx - sx) * tw - offx, (double)(ty - sy) * th - offy, dst, stride, w, h);
  }
  tsr_free(band);
  return st;
}

/* RGBA as tessera reads a level of associated alpha into OpenSlide's ARGB. tessera divides the
 * stored colour p by alpha a, rounding down (c = floor(p * 255 / a)); OpenSlide (libtiff's RGBA
 * reader) returns p as stored. p is the one integer in [c * a / 255, (c + 1) * a / 255), an
 * interval no wider than 1, so ceil(c * a / 255) gives it back exactly wherever p <= a (colour
 * stored above its alpha is not a premultiplied value; tessera clamps it, and it comes back as
 * a). Premultiplying c again, as for straight alpha, would round some p one off. */
static void associated_to_argb(uint32_t *px, size_t stride, int64_t w, int64_t h) {
  for (int64_t y = 0; y < h; y++) {
    uint32_t *row = px + (size_t)y * stride;
    for (int64_t x = 0; x < w; x++) {
      const uint8_t *b = (const uint8_t *)&row[x];
      uint32_t r = b[0], g = b[1], bl = b[2], a = b[3];
      if (a != 255) {
        r = (r * a + 254) / 255;
        g = (g * a + 254) / 255;
        bl = (bl * a + 254) / 255;
      }
      row[x] = a << 24 | r << 16 | g << 8 | bl;
    }
  }
}

/* One piece of a region (OpenSlide paints a region in pieces of at most 4096 x 4096, each on
 * its own), its origin (x, y) in level-0 pixels, into dest, rows stride pixels apart. */
static tessera_status paint_piece(tessera_slide *s, int32_t level, const struct tsr_os_grid *g,
                                  bool associated_alpha, int64_t x, int64_t y, int64_t w,
                                  int64_t h, uint32_t *dest, size_t stride) {
  /* A piece starting left of or above the slide is painted from level pixel 0, at the output
   * pixel (-x / downsample) rounded toward zero; tessera would floor instead. */
  int64_t tx = 0, ty = 0;
  if (x < 0) {
    tx = (int64_t)((double)-x / g->downsample);
    x = 0;
  }
  if (y < 0) {
    ty = (int64_t)((double)-y / g->downsample);
    y = 0;
  }
  if (tx >= w || ty >= h)
    return TESSERA_OK;
  dest += (size_t)ty * stride + (size_t)tx;
  w -= tx;
  h -= ty;
  double lx = (double)x / g->downsample, ly = (double)y / g->downsample;
  bool mosaic = s->levels[level].source == &tsr_mosaic_tiles;
  if (mosaic || strcmp(tessera_vendor(s), "leica") == 0) {
    /* Placed images (MIRAX, a BIF placed tile by tile): OpenSlide paints each from its own
     * position, past the level's edge too, and how pixman computes an image depends on the
     * region (source/mosaic_tiles.c); from whole pixels and between them alike. Leica's
     * images (one or several a level): each from its own whole pixel, the region's origin
     * truncated image by image, past the level's edge too (region.c). */
    uint8_t *px = tsr_malloc((size_t)w * (size_t)h * 4);
    if (!px)
      return TESSERA_E_NOMEM;
    tessera_status st =
        mosaic ? tsr_mosaic_paint_region(s, level, lx, ly, w, h, px, (size_t)w * 4)
               : tsr_paint_placed_openslide(s, level, lx, ly, w, h, px, (size_t)w * 4);
    for (int64_t j = 0; st == TESSERA_OK && j < h; j++)
      for (int64_t i = 0; i < w; i++) {
        const uint8_t *q = px + ((size_t)j * (size_t)w + (size_t)i) * 4;
        dest[(size_t)j * stride + (size_t)i] =
            (uint32_t)q[3] << 24 | (uint32_t)q[0] << 16 | (uint32_t)q[1] << 8 | q[2];
      }
    tsr_free(px);
    return st;
  }
  if (lx != floor(lx) || ly != floor(ly)) /* between pixels: OpenSlide's cairo resamples */
    return tsr_os_paint_fractional(s, level, g, lx, ly, w, h, dest, stride);
  /* on whole pixels: the pixels as stored */
  tessera_read_options o;
  tessera_read_options_init(&o);
  o.channels = 4;
  o.fill = 0;
  o.stride = stride * 4;
  tessera_status st = tessera_read_region(s, x, y, level, w, h, &o, (uint8_t *)dest,
                                          ((size_t)(h - 1) * stride + (size_t)w) * 4);
  if (st == TESSERA_OK && associated_alpha)
    associated_to_argb(dest, stride, w, h);
  else if (st == TESSERA_OK)
    tsr_os_rgba_to_argb(dest, stride, w, h);
  return st;
}

tessera_status tsr_os_read_region(tessera_slide *s, int32_t level, const struct tsr_os_grid *grid,
                                  bool associated_alpha, int64_t x, int64_t y, int64_t w,
                                  int64_t h, uint32_t *dest) {
  const int64_t d = 4096;
  for (int64_t row = 0; row < (h + d - 1) / d; row++)
    for (int64_t col = 0; col < (w + d - 1) / d; col++) {
      /* as OpenSlide: the piece's level-0 origin truncated to a whole pixel */
      int64_t sx = (int64_t)((double)x + (double)(col * d) * grid->downsample);
      int64_t sy = (int64_t)((double)y + (double)(row * d) * grid->downsample);
      int64_t sw = w - col * d < d ? w - col * d : d, sh = h - row * d < d ? h - row * d : d;
      tessera_status st =
          paint_piece(s, level, grid, associated_alpha, sx, sy, sw, sh,
                      dest + (size_t)(row * d) * (size_t)w + (size_t)(col * d), (size_t)w);
      if (st != TESSERA_OK)
        return st;
    }
  return TESSERA_OK;
}
