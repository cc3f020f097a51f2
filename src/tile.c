#include "tile.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "alloc.h"
#include "error.h"

void tsr_scratch_free(struct tsr_scratch *scratch) {
  tsr_free(scratch->data);
  scratch->data = NULL;
  scratch->cap = 0;
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

static tessera_status read_bytes(const tessera_slide *s, uint64_t offset, uint64_t count,
                                 struct tsr_scratch *scratch) {
  if (count > s->limits.max_tile_bytes)
    return tsr_error(TESSERA_E_LIMIT, "%llu bytes, more than the limit of %llu",
                     (unsigned long long)count, (unsigned long long)s->limits.max_tile_bytes);
  if (offset > s->file_size || count > s->file_size - offset)
    return tsr_error(TESSERA_E_CORRUPT,
                     "its %llu bytes at offset %llu lie past the end of the file (%llu bytes)",
                     (unsigned long long)count, (unsigned long long)offset,
                     (unsigned long long)s->file_size);
  if (count > scratch->cap) {
    uint8_t *d = tsr_realloc(scratch->data, (size_t)count);
    if (!d)
      return tsr_error(TESSERA_E_NOMEM, "out of memory for %llu bytes", (unsigned long long)count);
    scratch->data = d;
    scratch->cap = (size_t)count;
  }
  size_t done = 0;
  while (done < count) {
    ssize_t r = pread(s->fd, scratch->data + done, (size_t)count - done, (off_t)(offset + done));
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

tessera_status tsr_tile_decode(const tessera_slide *s, int32_t level, uint64_t index,
                               struct tsr_scratch *scratch, uint8_t *pixels, bool *missing) {
  const struct tsr_level *lv = &s->levels[level];
  const char *unit = lv->tiled ? "tile" : "strip";
  *missing = false;
  if (lv->fmt.unsupported[0])
    return tsr_error(TESSERA_E_UNSUPPORTED, "%s in level %d", lv->fmt.unsupported, level);
  uint64_t offset = lv->offsets[index], count = lv->bytecounts[index];
  if (offset == 0 || count == 0) {
    *missing = true;
    return TESSERA_OK;
  }
  tessera_status st = read_bytes(s, offset, count, scratch);
  if (st != TESSERA_OK)
    return tsr_error_prefix(st, "level %d, %s %llu: ", level, unit, (unsigned long long)index);
  int64_t x, y;
  struct tsr_tile_out out = {pixels, lv->tile_w, lv->tile_h, 0, 0};
  tsr_tile_extent(lv, index, &x, &y, &out.need_w, &out.need_h);
  st = tsr_codec_find(lv->fmt.compression)(&lv->fmt, scratch->data, (size_t)count, &out);
  if (st != TESSERA_OK)
    return tsr_error_prefix(st, "level %d, %s %llu: ", level, unit, (unsigned long long)index);
  tsr_codec_postprocess(&lv->fmt, &out);
  return TESSERA_OK;
}
