/* What every tile source shares: reading a tile's bytes through the slide's byte source, the
 * count of tiles read, and the entry points the CPU and CUDA readers call. No state but that
 * count (an atomic). */
#include "source/tile_source.h"

#include <stdatomic.h>

#include "error.h"

/* Relaxed: a statistic, ordered with nothing. */
static atomic_uint_fast64_t tile_reads;

uint64_t tsr_tile_reads(void) { return atomic_load_explicit(&tile_reads, memory_order_relaxed); }

/* Whether count bytes at offset may be read: within max_tile_bytes and the source's size.
 * Checked before anything is allocated for them. */
static tessera_status check_bytes(const tessera_slide *s, uint64_t offset, uint64_t count) {
  if (count > s->limits.max_tile_bytes)
    return tsr_error(TESSERA_E_LIMIT, "%llu bytes, more than the limit of %llu",
                     (unsigned long long)count, (unsigned long long)s->limits.max_tile_bytes);
  if (offset > s->file_size || count > s->file_size - offset)
    return tsr_error(TESSERA_E_CORRUPT,
                     "its %llu bytes at offset %llu lie past the end of the file (%llu bytes)",
                     (unsigned long long)count, (unsigned long long)offset,
                     (unsigned long long)s->file_size);
  return TESSERA_OK;
}

static tessera_status read_bytes(const tessera_slide *s, uint64_t offset, uint64_t count,
                                 uint8_t *dst) {
  size_t got;
  tessera_status st = tsr_bytes_read_at(s->source, offset, (size_t)count, dst, &got);
  if (st != TESSERA_OK)
    return st;
  if (got < count)
    return tsr_error(TESSERA_E_CORRUPT, "the file ends inside it (was it truncated?)");
  return TESSERA_OK;
}

tessera_status tsr_tile_fetch(const tessera_slide *s, uint64_t offset, uint64_t count,
                              uint8_t *dst) {
  tessera_status st = check_bytes(s, offset, count);
  return st == TESSERA_OK ? read_bytes(s, offset, count, dst) : st;
}

tessera_status tsr_tile_fetch_into(const tessera_slide *s, uint64_t offset, uint64_t count,
                                   struct tsr_scratch *buf, size_t before, uint8_t **at) {
  tessera_status st = check_bytes(s, offset, count);
  if (st != TESSERA_OK)
    return st;
  if (!tsr_scratch_reserve(buf, before + (size_t)count))
    return tsr_error(TESSERA_E_NOMEM, "out of memory for %llu bytes", (unsigned long long)count);
  *at = buf->data + before;
  return read_bytes(s, offset, count, *at);
}

bool tsr_tiff_tile_missing(const struct tsr_level *lv, uint64_t index) {
  return lv->offsets[index] == 0 || lv->bytecounts[index] == 0;
}

tessera_status tsr_tile_stream(const tessera_slide *s, const struct tsr_level *lv, uint64_t index,
                               struct tsr_scratch *buf, struct tsr_stream *out) {
  atomic_fetch_add_explicit(&tile_reads, 1, memory_order_relaxed);
  *out = (struct tsr_stream){0};
  return lv->source->stream(s, lv, index, buf, out);
}

size_t tsr_tile_source_stream_size(const tessera_slide *s, int32_t level, uint64_t index) {
  const struct tsr_level *lv = &s->levels[level];
  return lv->source->device_stream_size ? lv->source->device_stream_size(s, lv, index) : 0;
}

tessera_status tsr_tile_source_stream(const tessera_slide *s, int32_t level, uint64_t index,
                                      uint8_t *dst, size_t *len, bool *missing) {
  const struct tsr_level *lv = &s->levels[level];
  *len = 0;
  *missing = tsr_tile_missing(lv, index);
  if (*missing)
    return TESSERA_OK;
  atomic_fetch_add_explicit(&tile_reads, 1, memory_order_relaxed);
  tessera_status st = lv->source->device_stream(s, lv, index, dst, len);
  if (st != TESSERA_OK)
    return tsr_error_prefix(st, "level %d, %s %llu: ", level, lv->source->unit,
                            (unsigned long long)index);
  return TESSERA_OK;
}
