/* Tiles of a regular grid painted from images placed at positions of their own (MIRAX). The
 * tile pipeline (cache, batch engine, regions) knows only regular grids of tiles that each
 * decode on their own; placed images that overlap, at positions off any grid, do not fit it.
 * So each level gets a grid of its own (format/vendor-mirax.c), and this source makes a grid
 * tile's stream: the parts of the images it covers, in painting order, each with its image's
 * bytes read from its data file. The mosaic codec (codec/mosaic.c) then decodes just what the
 * read needs of each, into RGBA. The level's tables are written at open and only read
 * afterwards; the data files are read through the slide's file set (thread-safe). */
#include <string.h>
#include <tiff.h>

#include "alloc.h"
#include "codec/codec.h"
#include "error.h"
#include "source/file_set.h"
#include "source/tile_source.h"

void tsr_mosaic_free(struct tsr_mosaic *m) {
  if (!m)
    return;
  tsr_file_set_unref(m->files);
  tsr_free(m->tiff_fmt.jpeg_tables);
  tsr_free(m->placed);
  tsr_free(m->images);
  tsr_free(m->pieces);
  tsr_free(m);
}

static bool mosaic_missing(const struct tsr_level *lv, uint64_t index) {
  return lv->bytecounts[index] == 0;
}

/* A part of image `image` of m, its placement left for the caller to set. */
static struct tsr_mosaic_part image_part(const struct tsr_mosaic *m, uint32_t image) {
  const struct tsr_mosaic_image *img = &m->images[image];
  return (struct tsr_mosaic_part){.image_w = m->image_w,
                                  .image_h = m->image_h,
                                  .length = img->length,
                                  .format = m->format,
                                  .image = image,
                                  .file = img->file,
                                  .file_offset = img->offset,
                                  .opaque = m->whole_rgb24 && m->format != TSR_MOSAIC_TIFF};
}

/* Puts part at byte `slot` of a mosaic stream being built in buf, and its image's bytes at
 * *at, which then moves past them. */
static tessera_status add_part(const tessera_slide *s, const struct tsr_mosaic *m, uint8_t *buf,
                               size_t slot, const struct tsr_mosaic_part *part, size_t *at) {
  memcpy(buf + slot, part, sizeof *part);
  tessera_status st =
      m->files ? tsr_file_set_read(m->files, part->file, part->file_offset, part->length, buf + *at)
               : tsr_tile_fetch(s, part->file_offset, part->length, buf + *at);
  if (st != TESSERA_OK)
    return tsr_error_prefix(st, "image %u: ", part->image);
  *at += part->length;
  return TESSERA_OK;
}

static tessera_status mosaic_stream(const tessera_slide *s, const struct tsr_level *lv,
                                    uint64_t index, struct tsr_scratch *buf,
                                    struct tsr_stream *out) {
  const struct tsr_mosaic *m = lv->source_data;
  uint64_t first = lv->offsets[index] - 1, n = lv->bytecounts[index];
  /* [header][parts][bytes of each part's image]: sized first, and held to max_tile_bytes
   * like any tile's stored bytes. */
  uint64_t total = sizeof(struct tsr_mosaic_stream) + n * sizeof(struct tsr_mosaic_part);
  for (uint64_t k = 0; k < n; k++)
    total += m->images[m->pieces[first + k].image].length;
  if (total > s->limits.max_tile_bytes)
    return tsr_error(TESSERA_E_LIMIT,
                     "the images of the tile take %llu bytes, over the limit "
                     "of %llu",
                     (unsigned long long)total, (unsigned long long)s->limits.max_tile_bytes);
  if (!tsr_scratch_reserve(buf, (size_t)total))
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a tile's %llu bytes of images",
                     (unsigned long long)total);
  struct tsr_mosaic_stream head = {.n = (uint32_t)n,
                                   .background = m->background,
                                   .png_limit = s->limits.max_decoded_tile_bytes,
                                   .tiff_fmt = &m->tiff_fmt};
  memcpy(buf->data, &head, sizeof head);
  size_t parts_at = sizeof head, at = parts_at + (size_t)n * sizeof(struct tsr_mosaic_part);
  for (uint64_t k = 0; k < n; k++) {
    const struct tsr_mosaic_piece *p = &m->pieces[first + k];
    struct tsr_mosaic_part part = image_part(m, p->image);
    part.src_x = p->src_x;
    part.src_y = p->src_y;
    part.dst_x = p->dst_x;
    part.dst_y = p->dst_y;
    part.w = p->w;
    part.h = p->h;
    part.pos_x = p->pos_x;
    part.pos_y = p->pos_y;
    part.foot_w = p->foot_w;
    part.foot_h = p->foot_h;
    tessera_status st = add_part(s, m, buf->data, parts_at + k * sizeof part, &part, &at);
    if (st != TESSERA_OK)
      return st;
  }
  out->data = buf->data;
  out->len = at;
  return TESSERA_OK;
}

static void mosaic_free(void *data) { tsr_mosaic_free(data); }

void tsr_mosaic_level_format(struct tsr_level *lv) {
  lv->fmt.compression = TSR_COMPRESSION_MOSAIC;
  lv->fmt.photometric = PHOTOMETRIC_RGB;
  lv->fmt.spp = 4;
  lv->fmt.predictor = 1;
  /* associated alpha: pixels partly covered by images between pixels are premultiplied, as
   * OpenSlide's (codec/mosaic.c); the OpenSlide fronts give them back as it does */
  tsr_codec_resolve(&lv->fmt, 8, SAMPLEFORMAT_UINT, PLANARCONFIG_CONTIG, 1, EXTRASAMPLE_ASSOCALPHA);
  lv->fmt.transparent_is_fill = true;
  lv->tiled = true;
  lv->source = &tsr_mosaic_tiles;
}

tessera_status tsr_mosaic_lay(struct tsr_mosaic *mo, struct tsr_level *lv, uint32_t tile_w,
                              uint32_t tile_h, const struct tsr_mosaic_placed *placed, size_t n,
                              uint64_t max_tiles) {
  lv->tile_w = tile_w;
  lv->tile_h = tile_h;
  if (!(mo->placed = tsr_malloc((n ? n : 1) * sizeof *mo->placed)))
    return tsr_error(TESSERA_E_NOMEM, "out of memory for the level's images");
  if (n)
    memcpy(mo->placed, placed, n * sizeof *placed);
  mo->nplaced = n;
  uint64_t across = ((uint64_t)lv->width + lv->tile_w - 1) / lv->tile_w;
  uint64_t down = ((uint64_t)lv->height + lv->tile_h - 1) / lv->tile_h;
  if (across * down > max_tiles)
    return tsr_error(TESSERA_E_LIMIT, "the level would be %llu tiles, more than %llu",
                     (unsigned long long)(across * down), (unsigned long long)max_tiles);
  lv->across = (uint32_t)across;
  lv->down = (uint32_t)down;
  lv->ntiles = across * down;
  lv->offsets = tsr_calloc(lv->ntiles, sizeof *lv->offsets);
  lv->bytecounts = tsr_calloc(lv->ntiles, sizeof *lv->bytecounts);
  if (!lv->offsets || !lv->bytecounts)
    return tsr_error(TESSERA_E_NOMEM, "out of memory for the level's tiles");
  /* Two passes over the placed rectangles (in painting order): count each grid tile's
   * pieces, then write them where the counts say. */
  for (int pass = 0; pass < 2; pass++) {
    for (size_t i = 0; i < n; i++) {
      const struct tsr_mosaic_placed *t = &placed[i];
      /* The pixels it touches: from the one its corner lies in to the one its far edge lies
       * in (one more across and down where it lies between pixels). */
      int64_t tx = t->fixed_x >> 16, ty = t->fixed_y >> 16;
      int64_t tx1 = (t->fixed_x + (int64_t)t->w * 65536 + 65535) >> 16;
      int64_t ty1 = (t->fixed_y + (int64_t)t->h * 65536 + 65535) >> 16;
      int64_t x0 = tx > 0 ? tx : 0, y0 = ty > 0 ? ty : 0;
      int64_t x1 = tx1 < lv->width ? tx1 : lv->width;
      int64_t y1 = ty1 < lv->height ? ty1 : lv->height;
      bool between = t->fixed_x % 65536 != 0 || t->fixed_y % 65536 != 0;
      if (x0 >= x1 || y0 >= y1 || t->w == 0 || t->h == 0)
        continue;
      for (int64_t gr = y0 / lv->tile_h; gr <= (y1 - 1) / lv->tile_h; gr++) {
        for (int64_t gc = x0 / lv->tile_w; gc <= (x1 - 1) / lv->tile_w; gc++) {
          uint64_t idx = (uint64_t)gr * across + (uint64_t)gc;
          if (pass == 0) {
            mo->npieces++;
            lv->bytecounts[idx]++;
            continue;
          }
          int64_t gx = gc * lv->tile_w, gy = gr * lv->tile_h;
          int64_t px0 = x0 > gx ? x0 : gx, py0 = y0 > gy ? y0 : gy;
          int64_t px1 = x1 < gx + lv->tile_w ? x1 : gx + lv->tile_w;
          int64_t py1 = y1 < gy + lv->tile_h ? y1 : gy + lv->tile_h;
          struct tsr_mosaic_piece *pc = &mo->pieces[lv->offsets[idx] - 1 + lv->bytecounts[idx]++];
          pc->image = t->image;
          pc->dst_x = (uint32_t)(px0 - gx);
          pc->dst_y = (uint32_t)(py0 - gy);
          pc->foot_w = (uint32_t)(px1 - px0);
          pc->foot_h = (uint32_t)(py1 - py0);
          if (between) {
            /* the whole rectangle, placed where it lies relative to the grid tile */
            pc->src_x = t->src_x;
            pc->src_y = t->src_y;
            pc->w = t->w;
            pc->h = t->h;
            pc->pos_x = t->fixed_x - gx * 65536;
            pc->pos_y = t->fixed_y - gy * 65536;
          } else {
            pc->src_x = (uint32_t)(t->src_x + (px0 - tx));
            pc->src_y = (uint32_t)(t->src_y + (py0 - ty));
            pc->w = pc->foot_w;
            pc->h = pc->foot_h;
            pc->pos_x = (int64_t)pc->dst_x * 65536;
            pc->pos_y = (int64_t)pc->dst_y * 65536;
          }
        }
      }
    }
    if (pass == 0) {
      mo->pieces = tsr_malloc((mo->npieces ? mo->npieces : 1) * sizeof *mo->pieces);
      if (!mo->pieces)
        return tsr_error(TESSERA_E_NOMEM, "out of memory for the level's tiles");
      uint64_t at = 0;
      for (uint64_t i = 0; i < lv->ntiles; i++) {
        lv->offsets[i] = at + 1;
        at += lv->bytecounts[i];
        lv->bytecounts[i] = 0;
      }
    }
  }
  return TESSERA_OK;
}

const struct tsr_tile_source tsr_mosaic_tiles = {
    .unit = "tile",
    .missing = mosaic_missing,
    .stream = mosaic_stream,
    .free = mosaic_free,
};

/* The pixels a rectangle of n pixels at fixed-point position pos (16.16) touches, within
 * [0, len): [*a, *b). */
static bool touches(int64_t pos, uint32_t n, int64_t len, int64_t *a, int64_t *b) {
  *a = pos >> 16;
  *b = (pos + (int64_t)n * 65536 + 65535) >> 16;
  if (*a < 0)
    *a = 0;
  if (*b > len)
    *b = len;
  return *a < *b;
}

tessera_status tsr_mosaic_paint_region(const tessera_slide *s, int32_t level, double x, double y,
                                       int64_t w, int64_t h, uint8_t *rgba, size_t stride) {
  const struct tsr_level *lv = &s->levels[level];
  if (lv->source != &tsr_mosaic_tiles || w < 1 || h < 1 || w > 1 << 16 || h > 1 << 16)
    return tsr_error(TESSERA_E_ARGUMENT, "not a mosaic level, or a region of %lldx%lld",
                     (long long)w, (long long)h);
  const struct tsr_mosaic *m = lv->source_data;
  /* cairo's translation of each image, rounded to 1/65536 (x * 65536 is whole wherever the
   * downsample is a power of 2 up to 65536) */
  int64_t x0 = (int64_t)nearbyint(x * 65536.0), y0 = (int64_t)nearbyint(y * 65536.0);
  uint32_t n = 0;
  uint64_t total = sizeof(struct tsr_mosaic_stream);
  for (size_t i = 0; i < m->nplaced; i++) {
    const struct tsr_mosaic_placed *p = &m->placed[i];
    int64_t a, b, c, d;
    if (touches(p->fixed_x - x0, p->w, w, &a, &b) && touches(p->fixed_y - y0, p->h, h, &c, &d)) {
      n++;
      total += sizeof(struct tsr_mosaic_part) + m->images[p->image].length;
    }
  }
  if (total > s->limits.max_read_bytes)
    return tsr_error(TESSERA_E_LIMIT, "the region's images take %llu bytes, over the limit",
                     (unsigned long long)total);
  uint8_t *buf = tsr_malloc((size_t)total);
  if (!buf)
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a region's images");
  struct tsr_mosaic_stream head = {.n = n,
                                   .background = 0,
                                   .png_limit = s->limits.max_decoded_tile_bytes,
                                   .tiff_fmt = &m->tiff_fmt,
                                   .region = true};
  memcpy(buf, &head, sizeof head);
  size_t parts_at = sizeof head, at = parts_at + (size_t)n * sizeof(struct tsr_mosaic_part);
  uint32_t k = 0;
  tessera_status st = TESSERA_OK;
  for (size_t i = 0; i < m->nplaced && st == TESSERA_OK; i++) {
    const struct tsr_mosaic_placed *p = &m->placed[i];
    int64_t a, b, c, d;
    if (!touches(p->fixed_x - x0, p->w, w, &a, &b) || !touches(p->fixed_y - y0, p->h, h, &c, &d))
      continue;
    struct tsr_mosaic_part part = image_part(m, p->image);
    part.src_x = p->src_x;
    part.src_y = p->src_y;
    part.dst_x = (uint32_t)a;
    part.dst_y = (uint32_t)c;
    part.w = p->w;
    part.h = p->h;
    part.pos_x = p->fixed_x - x0;
    part.pos_y = p->fixed_y - y0;
    part.foot_w = (uint32_t)(b - a);
    part.foot_h = (uint32_t)(d - c);
    if (part.pos_x % 65536 == 0 && part.pos_y % 65536 == 0) {
      /* on whole pixels: the part is the pixels it touches (as in a level's tiles) */
      part.src_x += (uint32_t)(a - (part.pos_x >> 16));
      part.src_y += (uint32_t)(c - (part.pos_y >> 16));
      part.w = part.foot_w;
      part.h = part.foot_h;
      part.pos_x = a * 65536;
      part.pos_y = c * 65536;
    }
    st = add_part(s, m, buf, parts_at + (size_t)k++ * sizeof part, &part, &at);
  }
  if (st == TESSERA_OK) {
    struct tsr_tile_out out = {.pixels = rgba,
                               .width = (uint32_t)w,
                               .height = (uint32_t)h,
                               .need_w = (uint32_t)w,
                               .need_h = (uint32_t)h,
                               .stride = stride,
                               .crop_w = (uint32_t)w,
                               .crop_h = (uint32_t)h};
    st = tsr_decode_mosaic(&lv->fmt, buf, at, &out);
  }
  tsr_free(buf);
  return st;
}
