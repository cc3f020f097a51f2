/* TIFF tiles and strips: a tile's stored bytes lie at the offset and are of the byte count the
 * TIFF's tables give. The CPU's codec takes them as they are (a JPEG tile with the level's
 * JPEGTables kept apart, as TIFF compression 7 defines it); nvJPEG takes whole streams, so
 * for it the tables are spliced in. Stateless. */
#include <string.h>

#include "source/tile_source.h"

static tessera_status tiff_stream(const tessera_slide *s, const struct tsr_level *lv,
                                  uint64_t index, struct tsr_scratch *buf, struct tsr_stream *out) {
  uint8_t *at = NULL;
  tessera_status st =
      tsr_tile_fetch_into(s, lv->offsets[index], lv->bytecounts[index], buf, 0, &at);
  out->data = at;
  out->len = (size_t)lv->bytecounts[index];
  return st;
}

/* The tables' body: JPEGTables without its SOI and EOI; empty when there are none. */
static bool tables_body(const struct tsr_pixel_format *fmt, const uint8_t **body, size_t *len) {
  *body = NULL;
  *len = 0;
  if (!fmt->jpeg_tables || fmt->jpeg_tables_len == 0)
    return true;
  const uint8_t *t = fmt->jpeg_tables;
  size_t n = fmt->jpeg_tables_len;
  if (n < 4 || t[0] != 0xFF || t[1] != 0xD8 || t[n - 2] != 0xFF || t[n - 1] != 0xD9)
    return false;
  *body = t + 2;
  *len = n - 4;
  return true;
}

static size_t tiff_device_stream_size(const tessera_slide *s, const struct tsr_level *lv,
                                      uint64_t index) {
  uint64_t count = lv->bytecounts[index];
  const uint8_t *body;
  size_t body_len;
  /* Too large for a read, or tables that cannot be spliced: the CPU gives the tile. */
  if (count > s->limits.max_tile_bytes || !tables_body(&lv->fmt, &body, &body_len))
    return 0;
  return body_len + (size_t)count;
}

static tessera_status tiff_device_stream(const tessera_slide *s, const struct tsr_level *lv,
                                         uint64_t index, uint8_t *dst, size_t *len) {
  const uint8_t *body;
  size_t body_len, count = (size_t)lv->bytecounts[index];
  *len = 0;
  if (!tables_body(&lv->fmt, &body, &body_len))
    return TESSERA_OK;
  /* [SOI][tables' body][tile after its SOI]: the tile is read straight into its place, its
   * own SOI just before it where the splice then writes the stream's; nothing is moved. */
  uint8_t *tile = dst + body_len;
  tessera_status st = tsr_tile_fetch(s, lv->offsets[index], count, tile);
  if (st != TESSERA_OK || count < 4 || tile[0] != 0xFF || tile[1] != 0xD8)
    return st;
  if (body_len > 0) {
    memcpy(dst + 2, body, body_len);
    dst[0] = 0xFF;
    dst[1] = 0xD8;
  }
  *len = body_len + count;
  return TESSERA_OK;
}

const struct tsr_tile_source tsr_tiff_tiles = {
    .unit = "tile",
    .missing = tsr_tiff_tile_missing,
    .stream = tiff_stream,
    .device_stream_size = tiff_device_stream_size,
    .device_stream = tiff_device_stream,
};

const struct tsr_tile_source tsr_tiff_strips = {
    .unit = "strip",
    .missing = tsr_tiff_tile_missing,
    .stream = tiff_stream,
    .device_stream_size = tiff_device_stream_size,
    .device_stream = tiff_device_stream,
};
