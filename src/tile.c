#include "tile.h"

#include <errno.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#include "alloc.h"
#include "error.h"
#include "thread_slot.h"

/* Buffers larger than this (a whole-level strip) are given back after the read instead of
 * being kept for the thread's life. */
#define TSR_KEEP_BUFFER_BYTES ((size_t)64 << 20)

void tsr_scratch_free(struct tsr_scratch *scratch) {
  tsr_free(scratch->data);
  scratch->data = NULL;
  scratch->cap = 0;
}

bool tsr_scratch_reserve(struct tsr_scratch *scratch, size_t n) {
  if (n <= scratch->cap)
    return true;
  uint8_t *d = tsr_realloc(scratch->data, n);
  if (!d)
    return false;
  scratch->data = d;
  scratch->cap = n;
  return true;
}

/* Relaxed: a statistic, ordered with nothing. */
static atomic_uint_fast64_t tile_reads;

uint64_t tsr_tile_reads(void) { return atomic_load_explicit(&tile_reads, memory_order_relaxed); }

static void destroy_buffers(void *p) {
  struct tsr_tile_buffers *b = p;
  tsr_scratch_free(&b->compressed);
  tsr_scratch_free(&b->tile);
  tsr_scratch_free(&b->rect);
  tsr_scratch_free(&b->cached);
  tsr_free(b);
}

static void *create_buffers(void) { return tsr_calloc(1, sizeof(struct tsr_tile_buffers)); }

static struct tsr_thread_slot buffers_slot = TSR_THREAD_SLOT_INIT(destroy_buffers);

struct tsr_tile_buffers *tsr_tile_buffers_get(void) {
  return tsr_thread_slot_get(&buffers_slot, create_buffers);
}

void tsr_tile_buffers_trim(struct tsr_tile_buffers *b) {
  struct tsr_scratch *all[] = {&b->compressed, &b->tile, &b->rect, &b->cached};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
    if (all[i]->cap > TSR_KEEP_BUFFER_BYTES)
      tsr_scratch_free(all[i]);
}

void tsr_tile_extent(const struct tsr_level *lv, uint64_t index, int64_t *x, int64_t *y,
                     uint32_t *w, uint32_t *h) {
  *x = (int64_t)(index % lv->across) * lv->tile_w;
  *y = (int64_t)(index / lv->across) * lv->tile_h;
  int64_t rw = lv->width - *x, rh = lv->height - *y;
  *w = rw < lv->tile_w ? (uint32_t)rw : lv->tile_w;
  *h = rh < lv->tile_h ? (uint32_t)rh : lv->tile_h;
}

size_t tsr_tile_buffer_size(const struct tsr_level *lv) {
  size_t n;
  return tsr_mul3(lv->tile_w, lv->tile_h, lv->fmt.decoded_channels, &n) ? n : 0;
}

size_t tsr_tile_decode_bytes(const struct tsr_level *lv) {
  return tsr_codec_crops(lv->fmt.compression) ? 0 : tsr_tile_buffer_size(lv);
}

/* count bytes of a tile at offset, from the file (within max_tile_bytes and the file's size)
 * or from the image held in memory (lv->blob: small associated images, read rarely), into dst,
 * which holds them, or into scratch (grown to hold them) when dst is NULL. */
static tessera_status fetch(const tessera_slide *s, const struct tsr_level *lv, uint64_t offset,
                            uint64_t count, uint8_t *dst, struct tsr_scratch *scratch) {
  if (lv->blob && (offset > lv->blob_size || count > lv->blob_size - offset))
    return tsr_error(TESSERA_E_CORRUPT, "its %llu bytes lie outside the %zu bytes held",
                     (unsigned long long)count, lv->blob_size);
  if (!lv->blob && count > s->limits.max_tile_bytes)
    return tsr_error(TESSERA_E_LIMIT, "%llu bytes, more than the limit of %llu",
                     (unsigned long long)count, (unsigned long long)s->limits.max_tile_bytes);
  if (!lv->blob && (offset > s->file_size || count > s->file_size - offset))
    return tsr_error(TESSERA_E_CORRUPT,
                     "its %llu bytes at offset %llu lie past the end of the file (%llu bytes)",
                     (unsigned long long)count, (unsigned long long)offset,
                     (unsigned long long)s->file_size);
  if (!dst) {
    if (!tsr_scratch_reserve(scratch, (size_t)count))
      return tsr_error(TESSERA_E_NOMEM, "out of memory for %llu bytes",
                       (unsigned long long)count);
    dst = scratch->data;
  }
  if (lv->blob) {
    memcpy(dst, lv->blob + offset, (size_t)count);
    return TESSERA_OK;
  }
  size_t done = 0;
  while (done < count) {
    ssize_t r = pread(s->fd, dst + done, (size_t)count - done, (off_t)(offset + done));
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0)
      return tsr_error(TESSERA_E_IO, "read failed: %s", strerror(errno));
    if (r == 0)
      return tsr_error(TESSERA_E_CORRUPT, "the file ends inside it (was it truncated?)");
    done += (size_t)r;
  }
  return TESSERA_OK;
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

/* An NDPI restart interval's bytes (tiff/ndpi.h) run from the marker that ends the interval
 * before it (RSTn, n counting 0 to 7 over and over; none before the first) to the one that
 * ends it (the strip's EOI after the last; OpenSlide asks only for its 0xFF). Finding both
 * where they belong catches a McuStarts tag that points elsewhere. The codec gets the
 * interval's entropy-coded bytes and the marker after them. */
static tessera_status interval_bytes(const struct tsr_level *lv, uint64_t index,
                                     const uint8_t **src, size_t *len) {
  const uint8_t *p = *src;
  size_t n = *len, lead = index > 0 ? 2 : 0;
  if (n < lead + 3)
    return tsr_error(TESSERA_E_CORRUPT, "%zu bytes are too few for a restart interval", n);
  if (lead && (p[0] != 0xFF || p[1] != 0xD0 + (unsigned)((index - 1) & 7)))
    return tsr_error(TESSERA_E_CORRUPT,
                     "no restart marker RST%u where McuStarts says the interval starts",
                     (unsigned)((index - 1) & 7));
  if (index + 1 == lv->ntiles) {
    if (p[n - 2] != 0xFF)
      return tsr_error(TESSERA_E_CORRUPT, "the strip does not end with a JPEG marker");
  } else if (p[n - 2] != 0xFF || p[n - 1] != 0xD0 + (unsigned)(index & 7)) {
    return tsr_error(TESSERA_E_CORRUPT,
                     "no restart marker RST%u where McuStarts says the next interval starts",
                     (unsigned)(index & 7));
  }
  *src = p + lead;
  *len = n - lead;
  return TESSERA_OK;
}

tessera_status tsr_tile_read(const tessera_slide *s, int32_t level, uint64_t index,
                             const struct tsr_tile_rect *rect, struct tsr_tile_buffers *b,
                             bool *missing) {
  const struct tsr_level *lv = &s->levels[level];
  const char *unit = lv->fmt.jpeg_header ? "restart interval" : lv->tiled ? "tile" : "strip";
  *missing = false;
  if (lv->fmt.unsupported[0])
    return tsr_error(TESSERA_E_UNSUPPORTED, "%s in level %d", lv->fmt.unsupported, level);
  size_t tile_bytes = tsr_tile_buffer_size(lv);
  if (tile_bytes == 0 || tile_bytes > s->limits.max_decoded_tile_bytes)
    return tsr_error(TESSERA_E_LIMIT, "level %d: a decoded %s of %ux%u exceeds the limit", level,
                     unit, lv->tile_w, lv->tile_h);
  uint64_t offset = lv->offsets[index], count = lv->bytecounts[index];
  if ((offset == 0 && !lv->blob) || count == 0) {
    *missing = true;
    return TESSERA_OK;
  }
  atomic_fetch_add_explicit(&tile_reads, 1, memory_order_relaxed);
  tessera_status st = fetch(s, lv, offset, count, NULL, &b->compressed);
  const uint8_t *src = b->compressed.data;
  size_t len = (size_t)count;
  if (st == TESSERA_OK && lv->fmt.jpeg_header)
    st = interval_bytes(lv, index, &src, &len);
  if (st != TESSERA_OK)
    return tsr_error_prefix(st, "level %d, %s %llu: ", level, unit, (unsigned long long)index);
  int64_t x, y;
  struct tsr_tile_out out = {.width = lv->tile_w, .height = lv->tile_h};
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

tessera_status tsr_tile_raw(const tessera_slide *s, int32_t level, uint64_t index, uint8_t *dst,
                            bool *missing) {
  const struct tsr_level *lv = &s->levels[level];
  uint64_t offset = lv->offsets[index], count = lv->bytecounts[index];
  *missing = (offset == 0 && !lv->blob) || count == 0;
  if (*missing)
    return TESSERA_OK;
  atomic_fetch_add_explicit(&tile_reads, 1, memory_order_relaxed);
  tessera_status st = fetch(s, lv, offset, count, dst, NULL);
  if (st != TESSERA_OK)
    return tsr_error_prefix(st, "level %d, tile %llu: ", level, (unsigned long long)index);
  return TESSERA_OK;
}
