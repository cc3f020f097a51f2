#include "tile.h"

#include <string.h>

#include "alloc.h"
#include "error.h"
#include "per_thread.h"

/* Buffers larger than this (a whole-level strip) are given back after the read instead of
 * being kept for the thread's life. */
#define TSR_KEEP_BUFFER_BYTES ((size_t)64 << 20)

static void destroy_buffers(void *p) {
  struct tsr_tile_buffers *b = p;
  tsr_scratch_free(&b->compressed);
  tsr_scratch_free(&b->tile);
  tsr_scratch_free(&b->rect);
  tsr_scratch_free(&b->cached);
  tsr_free(b);
}

static void *create_buffers(void) { return tsr_calloc(1, sizeof(struct tsr_tile_buffers)); }

static struct tsr_per_thread tile_buffers = TSR_PER_THREAD_INIT(destroy_buffers);

struct tsr_tile_buffers *tsr_tile_buffers_get(void) {
  return tsr_per_thread_get(&tile_buffers, create_buffers);
}

void tsr_tile_buffers_trim(struct tsr_tile_buffers *b) {
  struct tsr_scratch *all[] = {&b->compressed, &b->tile, &b->rect, &b->cached};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
    if (all[i]->cap > TSR_KEEP_BUFFER_BYTES)
      tsr_scratch_free(all[i]);
}

void tsr_tile_extent(const struct tsr_level *lv, uint64_t index, int64_t *x, int64_t *y,
                     uint32_t *w, uint32_t *h) {
  *x = (int64_t)(index % lv->across) * lv->tile_w + lv->origin_x;
  *y = (int64_t)(index / lv->across) * lv->tile_h + lv->origin_y;
  int64_t x0, y0, x1, y1;
  tsr_level_image(lv, &x0, &y0, &x1, &y1);
  int64_t rw = x1 - *x, rh = y1 - *y;
  *w = rw < lv->tile_w ? (rw > 0 ? (uint32_t)rw : 0) : lv->tile_w;
  *h = rh < lv->tile_h ? (rh > 0 ? (uint32_t)rh : 0) : lv->tile_h;
}

size_t tsr_tile_buffer_size(const struct tsr_level *lv) {
  size_t n;
  return tsr_mul3(lv->tile_w, lv->tile_h, lv->fmt.decoded_channels, &n) ? n : 0;
}

size_t tsr_tile_decode_bytes(const struct tsr_level *lv) {
  return tsr_codec_crops(lv->fmt.compression) ? 0 : tsr_tile_buffer_size(lv);
}

/* Codecs that cannot decode a part decode the whole tile into b->tile; the rectangle is then
 * copied out. */
static tessera_status decode_whole(const struct tsr_level *lv, const uint8_t *src, size_t len,
                                   const struct tsr_tile_rect *rect, struct tsr_tile_buffers *b,
                                   struct tsr_tile_out *out) {
  size_t ch = lv->fmt.decoded_channels, tile_row = (size_t)lv->tile_w * ch;
  if (!tsr_scratch_reserve(&b->tile, tsr_tile_buffer_size(lv)))
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a %zu-byte tile",
                     tsr_tile_buffer_size(lv));
  out->pixels = b->tile.data;
  out->stride = tile_row;
  out->crop_x = out->crop_y = 0;
  out->crop_w = out->need_w;
  out->crop_h = out->need_h;
  tessera_status st = tsr_codec_find(lv->fmt.compression)(&lv->fmt, src, len, out);
  if (st != TESSERA_OK)
    return st;
  tsr_codec_postprocess(&lv->fmt, out->pixels, tile_row, lv->tile_w, out->need_h);
  const uint8_t *from = b->tile.data + (size_t)rect->y * tile_row + (size_t)rect->x * ch;
  for (uint32_t y = 0; y < rect->h; y++)
    memcpy(rect->dst + y * rect->stride, from + y * tile_row, (size_t)rect->w * ch);
  return TESSERA_OK;
}

tessera_status tsr_tile_read(const tessera_slide *s, int32_t level, uint64_t index,
                             const struct tsr_tile_rect *rect, struct tsr_tile_buffers *b,
                             bool *missing) {
  const struct tsr_level *lv = &s->levels[level];
  const char *unit = lv->source->unit;
  *missing = false;
  if (lv->fmt.unsupported[0])
    return tsr_error(TESSERA_E_UNSUPPORTED, "%s in level %d", lv->fmt.unsupported, level);
  size_t tile_bytes = tsr_tile_buffer_size(lv);
  if (tile_bytes == 0 || tile_bytes > s->limits.max_decoded_tile_bytes)
    return tsr_error(TESSERA_E_LIMIT, "level %d: a decoded %s of %ux%u exceeds the limit", level,
                     unit, lv->tile_w, lv->tile_h);
  if (tsr_tile_missing(lv, index)) {
    *missing = true;
    return TESSERA_OK;
  }
  struct tsr_stream in;
  tessera_status st = tsr_tile_stream(s, lv, index, &b->compressed, &in);
  if (st != TESSERA_OK)
    return tsr_error_prefix(st, "level %d, %s %llu: ", level, unit, (unsigned long long)index);
  const uint8_t *src = in.data;
  size_t len = in.len;
  int64_t x, y;
  struct tsr_tile_out out = {.width = lv->tile_w, .height = lv->tile_h, .jpeg = in.jpeg};
  tsr_tile_extent(lv, index, &x, &y, &out.need_w, &out.need_h);
  if (tsr_codec_crops(lv->fmt.compression)) {
    out.pixels = rect->dst;
    out.stride = rect->stride;
    out.crop_x = rect->x;
    out.crop_y = rect->y;
    out.crop_w = rect->w;
    out.crop_h = rect->h;
    st = tsr_codec_find(lv->fmt.compression)(&lv->fmt, src, len, &out);
    if (st == TESSERA_OK)
      tsr_codec_postprocess(&lv->fmt, rect->dst, rect->stride, rect->w, rect->h);
  } else {
    st = decode_whole(lv, src, len, rect, b, &out);
  }
  if (st != TESSERA_OK)
    return tsr_error_prefix(st, "level %d, %s %llu: ", level, unit, (unsigned long long)index);
  return TESSERA_OK;
}
