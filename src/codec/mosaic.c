/* The "mosaic" codec: a grid tile painted from parts of placed images (MIRAX). Its stream,
 * made by source/mosaic_tiles.c, is a struct tsr_mosaic_stream, its parts, then each part's
 * image bytes (JPEG, PNG or BMP). It crops: only the parts of the images that fall inside the
 * rectangle asked for are decoded (JPEG decodes no more than that part's rows and columns),
 * straight into the destination as opaque RGBA; the rest of the rectangle is the background
 * with alpha 0. Its alpha is associated (premultiplied colour, for partly covered pixels). Parts at
 * whole pixels are painted in order, each over those before it; a tile with a part placed between
 * pixels is painted as OpenSlide paints it (below). */
#include <float.h>
#include <png.h>
#include <pthread.h>
#include <string.h>
#include <tiff.h>

#include "alloc.h"
#include "codec/codec.h"
#include "compat/pixman.h"
#include "error.h"

/* JPEG: rows and columns of the image decoded straight into RGBA rows stride bytes apart. */
static tessera_status part_jpeg(const struct tsr_mosaic_part *p, const uint8_t *src, uint32_t sx,
                                uint32_t sy, uint32_t w, uint32_t h, uint8_t *dst, size_t stride) {
  struct tsr_pixel_format fmt = {.compression = COMPRESSION_JPEG,
                                 .photometric = PHOTOMETRIC_YCBCR,
                                 .spp = 3,
                                 .decoded_channels = 4,
                                 .jpeg_rgba = true};
  struct tsr_tile_out out = {.pixels = dst,
                             .width = p->image_w,
                             .height = p->image_h,
                             .need_w = p->image_w,
                             .need_h = p->image_h,
                             .stride = stride,
                             .crop_x = sx,
                             .crop_y = sy,
                             .crop_w = w,
                             .crop_h = h};
  return tsr_decode_jpeg(&fmt, src, p->length, &out);
}

/* RGB rows (of width image pixels, stride row bytes) to opaque RGBA. */
static void put_rgb(const uint8_t *rgb, size_t row, size_t px, uint32_t w, uint32_t h, uint8_t *dst,
                    size_t stride, bool bgr, bool bottom_up, uint32_t image_h, uint32_t sy) {
  for (uint32_t y = 0; y < h; y++) {
    const uint8_t *s = rgb + row * (bottom_up ? image_h - 1 - (sy + y) : sy + y);
    uint8_t *d = dst + y * stride;
    for (uint32_t x = 0; x < w; x++, s += px, d += 4) {
      uint8_t q[4] = {bgr ? s[2] : s[0], s[1], bgr ? s[0] : s[2], 255};
      memcpy(d, q, 4);
    }
  }
}

static tessera_status part_png(const struct tsr_mosaic_part *p, const uint8_t *src, uint32_t sx,
                               uint32_t sy, uint32_t w, uint32_t h, uint8_t *dst, size_t stride,
                               uint64_t limit) {
  png_image img;
  memset(&img, 0, sizeof img);
  img.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_memory(&img, src, p->length))
    return tsr_error(TESSERA_E_CORRUPT, "corrupt PNG data: %s", img.message);
  /* libpng's simplified reader would convert 16-bit samples and composite alpha in ways of
   * its own; scanners write 8-bit RGB. */
  if (img.format & (PNG_FORMAT_FLAG_LINEAR | PNG_FORMAT_FLAG_ALPHA)) {
    png_image_free(&img);
    return tsr_error(TESSERA_E_UNSUPPORTED, "unsupported PNG: 16-bit samples or alpha");
  }
  if (img.width != p->image_w || img.height != p->image_h) {
    png_image_free(&img);
    return tsr_error(TESSERA_E_CORRUPT, "PNG image is %ux%u, the slide says %ux%u", img.width,
                     img.height, p->image_w, p->image_h);
  }
  /* No crop in libpng's simplified reader: the whole image, within the limit. */
  uint64_t bytes = (uint64_t)p->image_w * p->image_h * 3;
  if (bytes > limit) {
    png_image_free(&img);
    return tsr_error(TESSERA_E_LIMIT, "a decoded PNG image of %ux%u exceeds the limit", p->image_w,
                     p->image_h);
  }
  img.format = PNG_FORMAT_RGB;
  uint8_t *whole = tsr_malloc((size_t)bytes);
  if (!whole) {
    png_image_free(&img);
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a %ux%u image", p->image_w, p->image_h);
  }
  tessera_status st = TESSERA_OK;
  if (!png_image_finish_read(&img, NULL, whole, 0, NULL))
    st = tsr_error(TESSERA_E_CORRUPT, "corrupt PNG data: %s", img.message);
  else
    put_rgb(whole + (size_t)sx * 3, (size_t)p->image_w * 3, 3, w, h, dst, stride, false, false,
            p->image_h, sy);
  tsr_free(whole);
  return st;
}

static uint32_t le32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Uncompressed 24- or 32-bit BMP (BITMAPINFOHEADER or later), bottom-up or top-down: the
 * part's rows are taken straight from the stored rows. */
static tessera_status part_bmp(const struct tsr_mosaic_part *p, const uint8_t *src, uint32_t sx,
                               uint32_t sy, uint32_t w, uint32_t h, uint8_t *dst, size_t stride) {
  size_t len = p->length;
  if (len < 54 || src[0] != 'B' || src[1] != 'M')
    return tsr_error(TESSERA_E_CORRUPT, "not BMP data");
  uint32_t data_at = le32(src + 10), header = le32(src + 14);
  int32_t bw = (int32_t)le32(src + 18), bh = (int32_t)le32(src + 22);
  unsigned bpp = src[28] | src[29] << 8;
  uint32_t compression = le32(src + 30);
  if (header < 40 || (bpp != 24 && bpp != 32) || compression != 0)
    return tsr_error(TESSERA_E_UNSUPPORTED,
                     "unsupported BMP: %u bits a pixel, compression %u (24 or 32, none read)", bpp,
                     compression);
  bool top_down = bh < 0;
  int64_t height = top_down ? -(int64_t)bh : bh;
  if (bw != (int64_t)p->image_w || height != p->image_h)
    return tsr_error(TESSERA_E_CORRUPT, "BMP image is %dx%lld, the slide says %ux%u", bw,
                     (long long)height, p->image_w, p->image_h);
  size_t px = bpp / 8, row = ((size_t)p->image_w * px + 3) & ~(size_t)3;
  if (data_at > len || row * p->image_h > len - data_at)
    return tsr_error(TESSERA_E_CORRUPT, "BMP data ends inside its pixels");
  put_rgb(src + data_at + (size_t)sx * px, row, px, w, h, dst, stride, true, !top_down, p->image_h,
          sy);
  return TESSERA_OK;
}

/* A TIFF directory's tile (Ventana BIF), decoded whole with the directory's pixel format
 * (within the decoded-tile limit), its w x h rectangle at (sx, sy) as opaque RGBA. The tiles
 * are RGB (or gray); one with alpha is refused (OpenSlide would paint it premultiplied). */
static tessera_status part_tiff(const struct tsr_mosaic_part *p, const uint8_t *src,
                                const struct tsr_pixel_format *fmt, uint32_t sx, uint32_t sy,
                                uint32_t w, uint32_t h, uint8_t *dst, size_t stride,
                                uint64_t limit) {
  if (!fmt || fmt->unsupported[0] || fmt->alpha)
    return tsr_error(TESSERA_E_UNSUPPORTED, "tiles of this kind are not placed between pixels%s%s",
                     fmt && fmt->unsupported[0] ? ": " : "",
                     fmt && fmt->unsupported[0] ? fmt->unsupported : "");
  tsr_decode_fn decode = tsr_codec_find(fmt->compression);
  size_t ch = fmt->decoded_channels;
  uint64_t bytes = (uint64_t)p->image_w * p->image_h * ch;
  if (!decode || (ch != 1 && ch != 3))
    return tsr_error(TESSERA_E_UNSUPPORTED, "no decoder for compression %u", fmt->compression);
  if (bytes > limit)
    return tsr_error(TESSERA_E_LIMIT, "a decoded tile of %ux%u exceeds the limit", p->image_w,
                     p->image_h);
  uint8_t *whole = tsr_malloc((size_t)bytes);
  if (!whole)
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a %ux%u tile", p->image_w, p->image_h);
  struct tsr_tile_out out = {.pixels = whole,
                             .width = p->image_w,
                             .height = p->image_h,
                             .need_w = p->image_w,
                             .need_h = p->image_h,
                             .stride = (size_t)p->image_w * ch,
                             .crop_w = p->image_w,
                             .crop_h = p->image_h};
  tessera_status st = decode(fmt, src, p->length, &out);
  if (st == TESSERA_OK) {
    tsr_codec_postprocess(fmt, whole, out.stride, p->image_w, p->image_h);
    for (uint32_t y = 0; y < h; y++) {
      const uint8_t *s = whole + (size_t)(sy + y) * out.stride + (size_t)sx * ch;
      uint8_t *d = dst + y * stride;
      for (uint32_t x = 0; x < w; x++, s += ch, d += 4) {
        d[0] = s[0];
        d[1] = ch == 3 ? s[1] : s[0];
        d[2] = ch == 3 ? s[2] : s[0];
        d[3] = 255;
      }
    }
  }
  tsr_free(whole);
  return st;
}

/* Decodes the w x h rectangle at (sx, sy) of the part's image into opaque RGBA rows stride
 * bytes apart at dst. */
static tessera_status decode_rect(const struct tsr_mosaic_part *p, const uint8_t *bytes,
                                  uint32_t sx, uint32_t sy, uint32_t w, uint32_t h, uint8_t *dst,
                                  size_t stride, const struct tsr_mosaic_stream *head) {
  uint64_t png_limit = head->png_limit;
  tessera_status st;
  switch (p->format) {
  case TSR_MOSAIC_TIFF:
    st = part_tiff(p, bytes, head->tiff_fmt, sx, sy, w, h, dst, stride, png_limit);
    break;
  case TSR_MOSAIC_JPEG: st = part_jpeg(p, bytes, sx, sy, w, h, dst, stride); break;
  case TSR_MOSAIC_PNG: st = part_png(p, bytes, sx, sy, w, h, dst, stride, png_limit); break;
  case TSR_MOSAIC_BMP: st = part_bmp(p, bytes, sx, sy, w, h, dst, stride); break;
  default: st = tsr_error(TESSERA_E_CORRUPT, "mosaic part of unknown format %u", p->format);
  }
  if (st != TESSERA_OK)
    return tsr_error_prefix(st, "image %u (offset %llu of data file %u): ", p->image,
                            (unsigned long long)p->file_offset, p->file);
  return TESSERA_OK;
}

/* ---- parts between pixels, painted as OpenSlide 3.4.1 paints them ----
 *
 * OpenSlide paints each placed image with cairo (1.16): the image surface translated by its
 * position, under CAIRO_OPERATOR_SATURATE, into a cleared ARGB32 group, images of the
 * greatest (row, column) first. cairo gives pixman a bilinear filter for a translation that
 * is not whole pixels (the translation rounded to 16.16 fixed point) and nearest for one that
 * is; pixman composites SATURATE in its floating-point pipeline (the operator divides): the
 * source sampled bilinearly in single precision from samples c / 255 (alpha 1, and 0 outside
 * the image), SATURATE's factor min(1, (1 - da) / sa), the sum clamped to 1, and each channel
 * stored as floor(f * 256) less one at 256. The arithmetic below is that, step by step in
 * the same order in float (so the file is built without contraction into fused multiply-adds,
 * src/meson.build). A whole-pixel part samples its pixels exactly (weights 1 and 0), so it is
 * painted by the same code. The group is then copied out unchanged: premultiplied, as this
 * codec gives it (the level's alpha is associated); tsr_codec_postprocess divides colour by
 * alpha rounding down, as openslide-python does. */

static float unorm8(uint8_t v) { return tsr_pixman_unorm8_to_float(v); }

static uint8_t to_unorm8(float f) { return tsr_pixman_float_to_unorm8(f); }

static int64_t floor_fixed(int64_t v) { return v >= 0 ? v / 65536 : -((-v + 65535) / 65536); }

/* A decoded rectangle of a part's source: rows stride bytes apart, opaque RGBA, covering
 * columns [x0, x1) and rows [y0, y1) of the part (the rest of the part is not needed; outside
 * the part is transparent). */
struct window {
  const uint8_t *px;
  size_t stride;
  int64_t x0, y0, x1, y1, w, h;
};

/* unorm8 of every byte: the same floats, looked up */
static float unorm8_table[256];
static pthread_once_t unorm8_once = PTHREAD_ONCE_INIT;

static void unorm8_init(void) {
  for (int v = 0; v < 256; v++)
    unorm8_table[v] = unorm8((uint8_t)v);
}

static void sample(const struct window *win, int64_t i, int64_t j, float out[4]) {
  if (i < 0 || j < 0 || i >= win->h || j >= win->w) {
    out[0] = out[1] = out[2] = out[3] = 0.0f;
    return;
  }
  const uint8_t *q = win->px + (size_t)(i - win->y0) * win->stride + (size_t)(j - win->x0) * 4;
  out[0] = unorm8_table[q[0]];
  out[1] = unorm8_table[q[1]];
  out[2] = unorm8_table[q[2]];
  out[3] = 1.0f;
}

/* SATURATE of the part's bilinear sample at the tap (x1, y1) with weights distx, disty onto
 * acc (premultiplied RGBA). Where acc is opaque already the result is acc (SATURATE's factor
 * is 0, and 8 bits go to float and back unchanged): the caller skips those pixels. */
static void saturate_pixel(const struct window *win, int64_t x1, int64_t y1, float distx,
                           float disty, uint8_t acc[4]) {
  float tl[4], tr[4], bl[4], br[4], s[4], d[4];
  sample(win, y1, x1, tl);
  sample(win, y1, x1 + 1, tr);
  sample(win, y1 + 1, x1, bl);
  sample(win, y1 + 1, x1 + 1, br);
  float distxy = distx * disty;
  float distxiy = distx * (1.0f - disty);
  float distixy = (1.0f - distx) * disty;
  float distixiy = (1.0f - distx) * (1.0f - disty);
  for (int c = 0; c < 4; c++) {
    s[c] = tl[c] * distixiy + tr[c] * distxiy + bl[c] * distixy + br[c] * distxy;
    d[c] = unorm8_table[acc[c]];
  }
  float sa = s[3], da = d[3], fa;
  if (-FLT_MIN < sa && sa < FLT_MIN) {
    fa = 1.0f;
  } else {
    float q = (1.0f - da) / sa;
    fa = q < 0 ? 0.0f : q > 1.0 ? 1.0f : q;
  }
  for (int c = 0; c < 4; c++) {
    float r = s[c] * fa + d[c] * 1.0f;
    acc[c] = to_unorm8(1.0f < r ? 1.0f : r);
  }
}

/* pixman's 8-bit path, for an image without alpha whose samples over the whole region all
 * lie inside it: pixman then knows the source opaque, makes SATURATE the OVER_REVERSE it
 * equals there, and computes it in 8 bits: bilinear with 7-bit weights made 8, each sum
 * floored; then d + s * (255 - da) / 255 rounded as its MUL_UN8, saturated. Channels are
 * bytes of a little-endian word, alpha the top one. */
static uint32_t bilinear8(uint32_t tl, uint32_t tr, uint32_t bl, uint32_t br, uint32_t dx,
                          uint32_t dy) {
  return tsr_pixman_bilinear8(tl, tr, bl, br, dx, dy);
}

static uint32_t over_reverse8(uint32_t s, uint32_t d) { return tsr_pixman_over_reverse8(s, d); }

/* Whether every bilinear sample pixman takes for the pixels cairo hands it (from the one
 * holding the part's start to the one holding its end, that one included, within [0, len))
 * lies inside the part's n pixels, along one axis; pos: the part's start (16.16). */
static bool covers(int64_t pos, uint32_t n, int64_t len) {
  int64_t b0 = pos >> 16, b1 = ((pos + (int64_t)n * 65536) >> 16) + 1;
  if (b0 < 0)
    b0 = 0;
  if (b1 > len)
    b1 = len;
  return b0 < b1 && ((b0 * 65536 - pos) >> 16) >= 0 && (((b1 - 1) * 65536 - pos) >> 16) + 1 < n;
}

static uint32_t word(const uint8_t *q) {
  return (uint32_t)q[0] | (uint32_t)q[1] << 8 | (uint32_t)q[2] << 16 | 0xff000000u;
}

/* Paints the crop rectangle from all parts in OpenSlide's order (the last part first) into a
 * premultiplied accumulator, then writes it out as straight RGBA, the background where
 * nothing was painted. at[i]: where part i's image bytes start in src. */
static tessera_status paint_between(const struct tsr_mosaic_stream *head, const uint8_t *src,
                                    size_t parts_at, const size_t *at,
                                    const struct tsr_tile_out *out) {
  uint32_t cx0 = out->crop_x, cy0 = out->crop_y, cw = out->crop_w, chh = out->crop_h;
  pthread_once(&unorm8_once, unorm8_init);
  uint8_t *acc = tsr_calloc((size_t)cw * chh, 4);
  if (!acc)
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a %ux%u tile", cw, chh);
  uint8_t *scratch = NULL;
  size_t scratch_size = 0;
  tessera_status st = TESSERA_OK;
  for (uint32_t k = head->n; k-- > 0 && st == TESSERA_OK;) {
    struct tsr_mosaic_part p;
    memcpy(&p, src + parts_at + k * sizeof p, sizeof p);
    /* the pixels it touches, within the crop */
    int64_t fx0 = p.dst_x > cx0 ? p.dst_x : cx0, fy0 = p.dst_y > cy0 ? p.dst_y : cy0;
    int64_t fx1 = (int64_t)p.dst_x + p.foot_w < (int64_t)cx0 + cw ? (int64_t)p.dst_x + p.foot_w
                                                                  : (int64_t)cx0 + cw;
    int64_t fy1 = (int64_t)p.dst_y + p.foot_h < (int64_t)cy0 + chh ? (int64_t)p.dst_y + p.foot_h
                                                                   : (int64_t)cy0 + chh;
    if (fx0 >= fx1 || fy0 >= fy1)
      continue;
    /* Nothing to do where every pixel it touches is opaque already (painted by the parts
     * before it in OpenSlide's order): not even decoding it. */
    bool open = false;
    for (int64_t Y = fy0; Y < fy1 && !open; Y++)
      for (int64_t X = fx0; X < fx1 && !open; X++)
        open = acc[((size_t)(Y - cy0) * cw + (size_t)(X - cx0)) * 4 + 3] != 255;
    if (!open)
      continue;
    /* the part's columns and rows those pixels sample, within the part */
    struct window win = {.w = p.w, .h = p.h};
    win.x0 = floor_fixed(fx0 * 65536 - p.pos_x);
    win.x1 = floor_fixed((fx1 - 1) * 65536 - p.pos_x) + 2;
    win.y0 = floor_fixed(fy0 * 65536 - p.pos_y);
    win.y1 = floor_fixed((fy1 - 1) * 65536 - p.pos_y) + 2;
    win.x0 = win.x0 < 0 ? 0 : win.x0;
    win.y0 = win.y0 < 0 ? 0 : win.y0;
    win.x1 = win.x1 > win.w ? win.w : win.x1;
    win.y1 = win.y1 > win.h ? win.h : win.y1;
    if (win.x0 < win.x1 && win.y0 < win.y1) {
      size_t ww = (size_t)(win.x1 - win.x0), wh = (size_t)(win.y1 - win.y0);
      if (ww * wh * 4 > scratch_size) {
        tsr_free(scratch);
        scratch_size = ww * wh * 4;
        scratch = tsr_malloc(scratch_size);
        if (!scratch) {
          st = tsr_error(TESSERA_E_NOMEM, "out of memory for a %zux%zu image part", ww, wh);
          break;
        }
      }
      win.px = scratch;
      win.stride = ww * 4;
      st = decode_rect(&p, src + at[k], p.src_x + (uint32_t)win.x0, p.src_y + (uint32_t)win.y0,
                       (uint32_t)ww, (uint32_t)wh, scratch, win.stride, head);
      if (st != TESSERA_OK)
        break;
    }
    /* An image without alpha on whole pixels: cairo asks for no filter, every sample lies
     * inside, so pixman paints it in 8 bits (the bilinear weights below are then 0). Between
     * pixels, the same where the region holds all its samples (only a region of OpenSlide's
     * knows: a level's tile takes the floating-point path, README.md). */
    bool whole = p.pos_x % 65536 == 0 && p.pos_y % 65536 == 0;
    if (p.opaque && (whole || (head->region && covers(p.pos_x - (int64_t)cx0 * 65536, p.w, cw) &&
                               covers(p.pos_y - (int64_t)cy0 * 65536, p.h, chh)))) {
      for (int64_t Y = fy0; Y < fy1; Y++) {
        int64_t sy = Y * 65536 - p.pos_y, y1 = sy >> 16;
        const uint8_t *r0 = win.px + (size_t)(y1 - win.y0) * win.stride;
        uint8_t *row = acc + (size_t)(Y - cy0) * cw * 4;
        for (int64_t X = fx0; X < fx1; X++) {
          uint8_t *a = row + (size_t)(X - cx0) * 4;
          if (a[3] == 255)
            continue;
          int64_t sx = X * 65536 - p.pos_x, x1 = sx >> 16;
          const uint8_t *q = r0 + (size_t)(x1 - win.x0) * 4;
          uint32_t s = whole ? word(q)
                             : bilinear8(word(q), word(q + 4), word(q + win.stride),
                                         word(q + win.stride + 4), (uint32_t)(sx >> 9) & 0x7f,
                                         (uint32_t)(sy >> 9) & 0x7f);
          uint32_t d =
              (uint32_t)a[0] | (uint32_t)a[1] << 8 | (uint32_t)a[2] << 16 | (uint32_t)a[3] << 24;
          d = over_reverse8(s, d);
          a[0] = (uint8_t)d;
          a[1] = (uint8_t)(d >> 8);
          a[2] = (uint8_t)(d >> 16);
          a[3] = (uint8_t)(d >> 24);
        }
      }
      continue;
    }
    for (int64_t Y = fy0; Y < fy1; Y++) {
      int64_t sy = Y * 65536 - p.pos_y, y1 = floor_fixed(sy);
      float disty = (float)(sy - y1 * 65536) / 65536.0f;
      uint8_t *row = acc + (size_t)(Y - cy0) * cw * 4;
      for (int64_t X = fx0; X < fx1; X++) {
        uint8_t *a = row + (size_t)(X - cx0) * 4;
        if (a[3] == 255)
          continue;
        int64_t sx = X * 65536 - p.pos_x, x1 = floor_fixed(sx);
        float distx = (float)(sx - x1 * 65536) / 65536.0f;
        saturate_pixel(&win, x1, y1, distx, disty, a);
      }
    }
  }
  tsr_free(scratch);
  if (st == TESSERA_OK) {
    for (uint32_t y = 0; y < chh; y++) {
      uint8_t *d = out->pixels + y * out->stride;
      const uint8_t *a = acc + (size_t)y * cw * 4;
      for (uint32_t x = 0; x < cw; x++, a += 4, d += 4) {
        memcpy(d, a, 4);
        if (a[3] == 0)
          d[0] = d[1] = d[2] = head->background;
      }
    }
  }
  tsr_free(acc);
  return st;
}

static bool between_pixels(const struct tsr_mosaic_part *p) {
  return p->pos_x % 65536 != 0 || p->pos_y % 65536 != 0;
}

tessera_status tsr_decode_mosaic(const struct tsr_pixel_format *fmt, const uint8_t *src, size_t len,
                                 const struct tsr_tile_out *out) {
  (void)fmt;
  struct tsr_mosaic_stream head;
  if (len < sizeof head)
    return tsr_error(TESSERA_E_CORRUPT, "mosaic stream too short");
  memcpy(&head, src, sizeof head);
  size_t parts_at = sizeof head, bytes_at;
  if (head.n > (len - parts_at) / sizeof(struct tsr_mosaic_part))
    return tsr_error(TESSERA_E_CORRUPT, "mosaic stream too short for its parts");
  bytes_at = parts_at + head.n * sizeof(struct tsr_mosaic_part);
  uint32_t cx0 = out->crop_x, cy0 = out->crop_y, cx1 = cx0 + out->crop_w, cy1 = cy0 + out->crop_h;
  /* Every part checked first: its image bytes within the stream, its rectangle within its
   * image, its position and footprint bounded; whether one lies between pixels. */
  bool between = false;
  size_t at = bytes_at;
  for (uint32_t i = 0; i < head.n; i++) {
    struct tsr_mosaic_part p;
    memcpy(&p, src + parts_at + i * sizeof p, sizeof p);
    if (p.length > len - at)
      return tsr_error(TESSERA_E_CORRUPT, "mosaic stream too short for its images");
    at += p.length;
    if (p.w > p.image_w || p.src_x > p.image_w - p.w || p.h > p.image_h ||
        p.src_y > p.image_h - p.h || p.pos_x < -((int64_t)1 << 44) ||
        p.pos_x > ((int64_t)1 << 44) || p.pos_y < -((int64_t)1 << 44) ||
        p.pos_y > ((int64_t)1 << 44) || p.foot_w > (uint32_t)1 << 24 ||
        p.foot_h > (uint32_t)1 << 24)
      return tsr_error(TESSERA_E_CORRUPT, "mosaic part %u lies outside its image", i);
    if (between_pixels(&p) && p.dst_x < cx1 && p.dst_y < cy1 &&
        (uint64_t)p.dst_x + p.foot_w > cx0 && (uint64_t)p.dst_y + p.foot_h > cy0)
      between = true;
  }
  if (between) {
    size_t *starts = tsr_malloc((head.n ? head.n : 1) * sizeof *starts);
    if (!starts)
      return tsr_error(TESSERA_E_NOMEM, "out of memory");
    at = bytes_at;
    for (uint32_t i = 0; i < head.n; i++) {
      struct tsr_mosaic_part p;
      memcpy(&p, src + parts_at + i * sizeof p, sizeof p);
      starts[i] = at;
      at += p.length;
    }
    tessera_status st = paint_between(&head, src, parts_at, starts, out);
    tsr_free(starts);
    return st;
  }
  /* Every part touching the rectangle lies on whole pixels (a part between pixels elsewhere
   * in the tile does not touch it). The background (alpha 0) first, unless one part covers
   * the whole rectangle. */
  bool covered = false;
  for (uint32_t i = 0; i < head.n && !covered; i++) {
    struct tsr_mosaic_part p;
    memcpy(&p, src + parts_at + i * sizeof p, sizeof p);
    covered = !between_pixels(&p) && p.dst_x <= cx0 && p.dst_y <= cy0 && p.dst_x + p.w >= cx1 &&
              p.dst_y + p.h >= cy1;
  }
  if (!covered) {
    uint8_t px[4] = {head.background, head.background, head.background, 0};
    for (uint32_t y = 0; y < out->crop_h; y++)
      for (uint32_t x = 0; x < out->crop_w; x++)
        memcpy(out->pixels + y * out->stride + (size_t)x * 4, px, 4);
  }
  at = bytes_at;
  for (uint32_t i = 0; i < head.n; i++) {
    struct tsr_mosaic_part p;
    memcpy(&p, src + parts_at + i * sizeof p, sizeof p);
    const uint8_t *bytes = src + at;
    at += p.length;
    if (between_pixels(&p))
      continue;
    uint32_t x0 = p.dst_x > cx0 ? p.dst_x : cx0, y0 = p.dst_y > cy0 ? p.dst_y : cy0;
    uint32_t x1 = p.dst_x + p.w < cx1 ? p.dst_x + p.w : cx1;
    uint32_t y1 = p.dst_y + p.h < cy1 ? p.dst_y + p.h : cy1;
    if (x0 >= x1 || y0 >= y1)
      continue;
    uint32_t sx = p.src_x + (x0 - p.dst_x), sy = p.src_y + (y0 - p.dst_y);
    uint8_t *dst = out->pixels + (size_t)(y0 - cy0) * out->stride + (size_t)(x0 - cx0) * 4;
    tessera_status st = decode_rect(&p, bytes, sx, sy, x1 - x0, y1 - y0, dst, out->stride, &head);
    if (st != TESSERA_OK)
      return st;
  }
  return TESSERA_OK;
}
