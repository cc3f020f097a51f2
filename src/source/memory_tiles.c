/* Tiles of an image held in memory, with no directory behind it (a Philips label or macro
 * stored as base64 in the XML): tile i's bytes lie at offsets[i] of the level's
 * tsr_memory_image, which is written at open and only read afterwards. They are read rarely
 * and go to the CPU. */
#include "error.h"
#include "source/tile_source.h"

static bool memory_missing(const struct tsr_level *lv, uint64_t index) {
  return lv->bytecounts[index] == 0;
}

static tessera_status memory_stream(const tessera_slide *s, const struct tsr_level *lv,
                                    uint64_t index, struct tsr_scratch *buf,
                                    struct tsr_stream *out) {
  (void)s, (void)buf;
  const struct tsr_memory_image *m = lv->source_data;
  uint64_t offset = lv->offsets[index], count = lv->bytecounts[index];
  if (offset > m->size || count > m->size - offset)
    return tsr_error(TESSERA_E_CORRUPT, "its %llu bytes lie outside the %zu bytes held",
                     (unsigned long long)count, m->size);
  out->data = m->bytes + offset;
  out->len = (size_t)count;
  return TESSERA_OK;
}

static void memory_free(void *data) {
  struct tsr_memory_image *m = data;
  if (m)
    tsr_free(m->bytes);
  tsr_free(m);
}

const struct tsr_tile_source tsr_memory_tiles = {
    .unit = "tile",
    .missing = memory_missing,
    .stream = memory_stream,
    .free = memory_free,
};
