/* Tiles of a regular grid painted from images placed at positions of their own (MIRAX). The
 * tile pipeline (cache, batch engine, regions) knows only regular grids of tiles that each
 * decode on their own; placed images that overlap, at positions off any grid, do not fit it.
 * So each level gets a grid of its own (format/vendor-mirax.c), and this source makes a grid
 * tile's stream: the parts of the images it covers, in painting order, each with its image's
 * bytes read from its data file. The mosaic codec (codec/mosaic.c) then decodes just what the
 * read needs of each, into RGBA. The level's tables are written at open and only read
 * afterwards; the data files are read through the slide's file set (thread-safe). */
#include <string.h>

#include "alloc.h"
#include "error.h"
#include "source/file_set.h"
#include "source/tile_source.h"

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
  struct tsr_mosaic_stream head = {
      .n = (uint32_t)n, .background = m->background, .png_limit = s->limits.max_decoded_tile_bytes};
  memcpy(buf->data, &head, sizeof head);
  size_t parts_at = sizeof head, at = parts_at + (size_t)n * sizeof(struct tsr_mosaic_part);
  for (uint64_t k = 0; k < n; k++) {
    const struct tsr_mosaic_piece *p = &m->pieces[first + k];
    const struct tsr_mosaic_image *img = &m->images[p->image];
    struct tsr_mosaic_part part = {.src_x = p->src_x,
                                   .src_y = p->src_y,
                                   .dst_x = p->dst_x,
                                   .dst_y = p->dst_y,
                                   .w = p->w,
                                   .h = p->h,
                                   .image_w = m->image_w,
                                   .image_h = m->image_h,
                                   .length = img->length,
                                   .format = m->format,
                                   .image = p->image,
                                   .file = img->file,
                                   .file_offset = img->offset,
                                   .pos_x = p->pos_x,
                                   .pos_y = p->pos_y,
                                   .foot_w = p->foot_w,
                                   .foot_h = p->foot_h};
    memcpy(buf->data + parts_at + k * sizeof part, &part, sizeof part);
    tessera_status st =
        tsr_file_set_read(m->files, img->file, img->offset, img->length, buf->data + at);
    if (st != TESSERA_OK)
      return tsr_error_prefix(st, "image %u: ", p->image);
    at += img->length;
  }
  out->data = buf->data;
  out->len = at;
  return TESSERA_OK;
}

static void mosaic_free(void *data) { tsr_mosaic_free(data); }

const struct tsr_tile_source tsr_mosaic_tiles = {
    .unit = "tile",
    .missing = mosaic_missing,
    .stream = mosaic_stream,
    .free = mosaic_free,
};
