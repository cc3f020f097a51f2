/* Tiles of a regular grid painted from images placed at positions of their own (MIRAX). The
 * tile pipeline (cache, batch engine, regions) knows only regular grids of tiles that each
 * decode on their own; placed images that overlap, at positions off any grid, do not fit it.
 * So each level gets a grid of its own, and this source paints one of its tiles: it decodes
 * the part of each image the tile covers (JPEG decodes just that part) and paints the parts
 * in the order the vendor gave (the last wins where they overlap), into RGBA whose alpha is 0
 * where no image lies. The codec then takes the tile as uncompressed samples. The level's
 * tables are written at open and only read afterwards; each thread decodes into buffers of
 * its own. */
#include <png.h>
#include <string.h>
#include <tiff.h>

#include "alloc.h"
#include "error.h"
#include "per_thread.h"
#include "source/file_set.h"
#include "source/tile_source.h"

struct mosaic_buffers {
  struct tsr_scratch bytes;  /* an image's stored bytes */
  struct tsr_scratch pixels; /* its decoded part (RGB; PNG and BMP) */
};

static void destroy_buffers(void *p) {
  struct mosaic_buffers *b = p;
  tsr_scratch_free(&b->bytes);
  tsr_scratch_free(&b->pixels);
  tsr_free(b);
}

static void *create_buffers(void) { return tsr_calloc(1, sizeof(struct mosaic_buffers)); }

static struct tsr_per_thread buffers = TSR_PER_THREAD_INIT(destroy_buffers);

void tsr_mosaic_free(struct tsr_mosaic *m) {
  if (!m)
    return;
  tsr_file_set_unref(m->files);
  tsr_free(m->images);
  tsr_free(m->pieces);
  tsr_free(m);
}

static bool mosaic_missing(const struct tsr_level *lv, uint64_t index) {
  return lv->bytecounts[index] == 0;
}

/* JPEG: just the piece's part decoded, straight into the tile (opaque RGBA rows of stride
 * bytes at dst). */
static tessera_status decode_jpeg(const struct tsr_mosaic *m, const uint8_t *src, size_t len,
                                  const struct tsr_mosaic_piece *p, uint8_t *dst, size_t stride) {
  struct tsr_pixel_format fmt = {.compression = COMPRESSION_JPEG,
                                 .photometric = PHOTOMETRIC_YCBCR,
                                 .spp = 3,
                                 .decoded_channels = 4,
                                 .jpeg_rgba = true};
  struct tsr_tile_out out = {.pixels = dst,
                             .width = m->image_w,
                             .height = m->image_h,
                             .need_w = m->image_w,
                             .need_h = m->image_h,
                             .stride = stride,
                             .crop_x = p->src_x,
                             .crop_y = p->src_y,
                             .crop_w = p->w,
                             .crop_h = p->h};
  return tsr_decode_jpeg(&fmt, src, len, &out);
}

/* The part of a whole decoded image (RGB rows of image_w) the piece takes, to dst. */
static void crop(const struct tsr_mosaic *m, const uint8_t *whole,
                 const struct tsr_mosaic_piece *p, uint8_t *dst) {
  for (uint32_t y = 0; y < p->h; y++)
    memcpy(dst + (size_t)y * p->w * 3,
           whole + ((size_t)(p->src_y + y) * m->image_w + p->src_x) * 3, (size_t)p->w * 3);
}

/* PNG: the whole image decoded (libpng's simplified reader has no crop), within limit
 * bytes, and the piece's part taken from it. */
static tessera_status decode_png(const struct tsr_mosaic *m, const uint8_t *src, size_t len,
                                 const struct tsr_mosaic_piece *p, uint8_t *dst,
                                 struct tsr_scratch *whole, uint64_t limit) {
  png_image img;
  memset(&img, 0, sizeof img);
  img.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_memory(&img, src, len))
    return tsr_error(TESSERA_E_CORRUPT, "corrupt PNG data: %s", img.message);
  /* libpng's simplified reader would convert 16-bit samples and composite alpha in ways of
   * its own; scanners write 8-bit RGB. */
  if (img.format & (PNG_FORMAT_FLAG_LINEAR | PNG_FORMAT_FLAG_ALPHA)) {
    png_image_free(&img);
    return tsr_error(TESSERA_E_UNSUPPORTED, "unsupported PNG: 16-bit samples or alpha");
  }
  if (img.width != m->image_w || img.height != m->image_h) {
    png_image_free(&img);
    return tsr_error(TESSERA_E_CORRUPT, "PNG image is %ux%u, the slide says %ux%u", img.width,
                     img.height, m->image_w, m->image_h);
  }
  img.format = PNG_FORMAT_RGB;
  uint64_t bytes = (uint64_t)m->image_w * m->image_h * 3;
  if (bytes > limit) {
    png_image_free(&img);
    return tsr_error(TESSERA_E_LIMIT, "a decoded PNG image of %ux%u exceeds the limit",
                     m->image_w, m->image_h);
  }
  if (!tsr_scratch_reserve(whole, (size_t)bytes)) {
    png_image_free(&img);
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a %ux%u image", m->image_w, m->image_h);
  }
  if (!png_image_finish_read(&img, NULL, whole->data, 0, NULL))
    return tsr_error(TESSERA_E_CORRUPT, "corrupt PNG data: %s", img.message);
  crop(m, whole->data, p, dst);
  return TESSERA_OK;
}

static uint32_t le32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Uncompressed 24- or 32-bit BMP (BITMAPINFOHEADER or later), bottom-up or top-down: the
 * piece's rows are taken straight from the stored rows. */
static tessera_status decode_bmp(const struct tsr_mosaic *m, const uint8_t *src, size_t len,
                                 const struct tsr_mosaic_piece *p, uint8_t *dst) {
  if (len < 54 || src[0] != 'B' || src[1] != 'M')
    return tsr_error(TESSERA_E_CORRUPT, "not BMP data");
  uint32_t data_at = le32(src + 10), header = le32(src + 14);
  int32_t w = (int32_t)le32(src + 18), h = (int32_t)le32(src + 22);
  unsigned bpp = src[28] | src[29] << 8;
  uint32_t compression = le32(src + 30);
  if (header < 40 || (bpp != 24 && bpp != 32) || compression != 0)
    return tsr_error(TESSERA_E_UNSUPPORTED,
                     "unsupported BMP: %u bits a pixel, compression %u (24 or 32, none read)",
                     bpp, compression);
  bool top_down = h < 0;
  int64_t height = top_down ? -(int64_t)h : h;
  if (w != (int64_t)m->image_w || height != m->image_h)
    return tsr_error(TESSERA_E_CORRUPT, "BMP image is %dx%lld, the slide says %ux%u", w,
                     (long long)height, m->image_w, m->image_h);
  size_t px = bpp / 8, row = ((size_t)m->image_w * px + 3) & ~(size_t)3;
  if (data_at > len || row * m->image_h > len - data_at)
    return tsr_error(TESSERA_E_CORRUPT, "BMP data ends inside its pixels");
  for (uint32_t y = 0; y < p->h; y++) {
    uint32_t sy = p->src_y + y;
    const uint8_t *s = src + data_at + row * (top_down ? sy : m->image_h - 1 - sy) +
                       (size_t)p->src_x * px;
    uint8_t *d = dst + (size_t)y * p->w * 3;
    for (uint32_t x = 0; x < p->w; x++, s += px, d += 3) {
      d[0] = s[2];
      d[1] = s[1];
      d[2] = s[0];
    }
  }
  return TESSERA_OK;
}

static tessera_status paint_piece(const tessera_slide *s, const struct tsr_mosaic *m,
                                  const struct tsr_mosaic_piece *p, struct mosaic_buffers *b,
                                  uint8_t *tile, uint32_t tile_w) {
  const struct tsr_mosaic_image *img = &m->images[p->image];
  bool rgb = m->format != TSR_MOSAIC_JPEG; /* decoded to RGB, then made RGBA below */
  if (!tsr_scratch_reserve(&b->bytes, img->length) ||
      (rgb && !tsr_scratch_reserve(&b->pixels, (size_t)p->w * p->h * 3)))
    return tsr_error(TESSERA_E_NOMEM, "out of memory for an image of %u bytes", img->length);
  tessera_status st = tsr_file_set_read(m->files, img->file, img->offset, img->length,
                                        b->bytes.data);
  if (st != TESSERA_OK)
    return st;
  struct tsr_scratch whole = {0};
  uint8_t *at = tile + ((size_t)p->dst_y * tile_w + p->dst_x) * 4;
  switch (m->format) {
  case TSR_MOSAIC_JPEG:
    st = decode_jpeg(m, b->bytes.data, img->length, p, at, (size_t)tile_w * 4);
    break;
  case TSR_MOSAIC_PNG:
    st = decode_png(m, b->bytes.data, img->length, p, b->pixels.data, &whole,
                    s->limits.max_decoded_tile_bytes);
    break;
  case TSR_MOSAIC_BMP:
    st = decode_bmp(m, b->bytes.data, img->length, p, b->pixels.data);
    break;
  }
  tsr_scratch_free(&whole);
  if (st != TESSERA_OK)
    return tsr_error_prefix(st, "image %u (data file %s, offset %llu): ", p->image,
                            tsr_file_set_name(m->files, img->file),
                            (unsigned long long)img->offset);
  /* Opaque RGBA, a pixel at a time as one 32-bit word (in memory order R, G, B, A). */
  for (uint32_t y = 0; rgb && y < p->h; y++) {
    const uint8_t *s = b->pixels.data + (size_t)y * p->w * 3;
    uint8_t *d = tile + ((size_t)(p->dst_y + y) * tile_w + p->dst_x) * 4;
    for (uint32_t x = 0; x < p->w; x++, s += 3, d += 4) {
      uint8_t px[4] = {s[0], s[1], s[2], 255};
      memcpy(d, px, 4);
    }
  }
  return TESSERA_OK;
}

static tessera_status mosaic_stream(const tessera_slide *s, const struct tsr_level *lv,
                                    uint64_t index, struct tsr_scratch *buf,
                                    struct tsr_stream *out) {
  const struct tsr_mosaic *m = lv->source_data;
  size_t bytes;
  if (!tsr_mul3(lv->tile_w, lv->tile_h, 4, &bytes) || !tsr_scratch_reserve(buf, bytes))
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a %ux%u tile", lv->tile_w, lv->tile_h);
  struct mosaic_buffers *b = tsr_per_thread_get(&buffers, create_buffers);
  if (!b)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  uint64_t first = lv->offsets[index] - 1, n = lv->bytecounts[index];
  /* Pixels no piece covers are the background with alpha 0; a tile one piece covers whole
   * (images on the grid, the usual case) needs none. */
  bool whole = false;
  for (uint64_t k = 0; k < n && !whole; k++) {
    const struct tsr_mosaic_piece *p = &m->pieces[first + k];
    whole = p->dst_x == 0 && p->dst_y == 0 && p->w == lv->tile_w && p->h == lv->tile_h;
  }
  if (!whole) {
    uint8_t px[4] = {m->background, m->background, m->background, 0};
    for (size_t i = 0; i < bytes; i += 4)
      memcpy(buf->data + i, px, 4);
  }
  for (uint64_t k = 0; k < n; k++) {
    tessera_status st = paint_piece(s, m, &m->pieces[first + k], b, buf->data, lv->tile_w);
    if (st != TESSERA_OK)
      return st;
  }
  /* A tile's stored bytes can be large (a whole label); the thread keeps only modest ones. */
  if (b->bytes.cap > ((size_t)16 << 20))
    tsr_scratch_free(&b->bytes);
  if (b->pixels.cap > ((size_t)16 << 20))
    tsr_scratch_free(&b->pixels);
  out->data = buf->data;
  out->len = bytes;
  return TESSERA_OK;
}

static void mosaic_free(void *data) { tsr_mosaic_free(data); }

const struct tsr_tile_source tsr_mosaic_tiles = {
    .unit = "tile",
    .missing = mosaic_missing,
    .stream = mosaic_stream,
    .free = mosaic_free,
};
