/* The "mosaic" codec: a grid tile painted from parts of placed images (MIRAX). Its stream,
 * made by source/mosaic_tiles.c, is a struct tsr_mosaic_stream, its parts, then each part's
 * image bytes (JPEG, PNG or BMP). It crops: only the parts of the images that fall inside the
 * rectangle asked for are decoded (JPEG decodes no more than that part's rows and columns),
 * straight into the destination as opaque RGBA; the rest of the rectangle is the background
 * with alpha 0. Parts are painted in order, each over those before it. */
#include <png.h>
#include <string.h>
#include <tiff.h>

#include "alloc.h"
#include "codec/codec.h"
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
  /* The background (alpha 0) first, unless one part covers the whole rectangle. */
  bool covered = false;
  for (uint32_t i = 0; i < head.n && !covered; i++) {
    struct tsr_mosaic_part p;
    memcpy(&p, src + parts_at + i * sizeof p, sizeof p);
    covered = p.dst_x <= cx0 && p.dst_y <= cy0 && p.dst_x + p.w >= cx1 && p.dst_y + p.h >= cy1;
  }
  if (!covered) {
    uint8_t px[4] = {head.background, head.background, head.background, 0};
    for (uint32_t y = 0; y < out->crop_h; y++)
      for (uint32_t x = 0; x < out->crop_w; x++)
        memcpy(out->pixels + y * out->stride + (size_t)x * 4, px, 4);
  }
  size_t at = bytes_at;
  for (uint32_t i = 0; i < head.n; i++) {
    struct tsr_mosaic_part p;
    memcpy(&p, src + parts_at + i * sizeof p, sizeof p);
    if (p.length > len - at)
      return tsr_error(TESSERA_E_CORRUPT, "mosaic stream too short for its images");
    const uint8_t *bytes = src + at;
    at += p.length;
    uint32_t x0 = p.dst_x > cx0 ? p.dst_x : cx0, y0 = p.dst_y > cy0 ? p.dst_y : cy0;
    uint32_t x1 = p.dst_x + p.w < cx1 ? p.dst_x + p.w : cx1;
    uint32_t y1 = p.dst_y + p.h < cy1 ? p.dst_y + p.h : cy1;
    if (x0 >= x1 || y0 >= y1)
      continue;
    uint32_t sx = p.src_x + (x0 - p.dst_x), sy = p.src_y + (y0 - p.dst_y);
    uint8_t *dst = out->pixels + (size_t)(y0 - cy0) * out->stride + (size_t)(x0 - cx0) * 4;
    tessera_status st;
    switch (p.format) {
    case TSR_MOSAIC_JPEG:
      st = part_jpeg(&p, bytes, sx, sy, x1 - x0, y1 - y0, dst, out->stride);
      break;
    case TSR_MOSAIC_PNG:
      st = part_png(&p, bytes, sx, sy, x1 - x0, y1 - y0, dst, out->stride, head.png_limit);
      break;
    case TSR_MOSAIC_BMP:
      st = part_bmp(&p, bytes, sx, sy, x1 - x0, y1 - y0, dst, out->stride);
      break;
    default: st = tsr_error(TESSERA_E_CORRUPT, "mosaic part of unknown format %u", p.format);
    }
    if (st != TESSERA_OK)
      return tsr_error_prefix(st, "image %u (offset %llu of data file %u): ", p.image,
                              (unsigned long long)p.file_offset, p.file);
  }
  return TESSERA_OK;
}
