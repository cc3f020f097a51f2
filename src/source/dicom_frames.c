/* DICOM frames: a frame's bytes lie at the offset and are of the byte count the level's tables
 * give, in the slide's byte source (a DICOM series' instances side by side: format/
 * vendor-dicom.c). A frame that is one fragment, or native pixels, is taken as it lies; a
 * frame the file cut into several fragments is read whole with the items' headers between
 * them, which are then squeezed out (the level's source data marks those frames). The tables
 * are written at open and only read afterwards. */
#include <string.h>

#include "error.h"
#include "source/tile_source.h"

static bool frame_missing(const struct tsr_level *lv, uint64_t index) {
  return lv->bytecounts[index] == 0;
}

static bool fragmented(const struct tsr_level *lv, uint64_t index) {
  const struct tsr_dicom_frames *f = lv->source_data;
  return f && f->fragmented && (f->fragmented[index / 8] >> (index % 8) & 1);
}

/* The fragments' data, in place: the items' headers removed; *len is what is left. */
static tessera_status join_fragments(uint8_t *data, size_t *len) {
  size_t in = 0, out = 0;
  while (in < *len) {
    if (*len - in < 8 || memcmp(data + in, "\xFE\xFF\x00\xE0", 4) != 0)
      return tsr_error(TESSERA_E_CORRUPT, "its fragments are no DICOM items");
    uint32_t n = (uint32_t)data[in + 4] | (uint32_t)data[in + 5] << 8 |
                 (uint32_t)data[in + 6] << 16 | (uint32_t)data[in + 7] << 24;
    in += 8;
    if (n > *len - in)
      return tsr_error(TESSERA_E_CORRUPT, "a fragment's length reaches past the frame");
    memmove(data + out, data + in, n);
    in += n;
    out += n;
  }
  *len = out;
  return TESSERA_OK;
}

static tessera_status frame_stream(const tessera_slide *s, const struct tsr_level *lv,
                                   uint64_t index, struct tsr_scratch *buf,
                                   struct tsr_stream *out) {
  uint8_t *at = NULL;
  tessera_status st =
      tsr_tile_fetch_into(s, lv->offsets[index], lv->bytecounts[index], buf, 0, &at);
  out->data = at;
  out->len = (size_t)lv->bytecounts[index];
  if (st == TESSERA_OK && fragmented(lv, index))
    st = join_fragments(at, &out->len);
  return st;
}

static size_t frame_device_stream_size(const tessera_slide *s, const struct tsr_level *lv,
                                       uint64_t index) {
  uint64_t count = lv->bytecounts[index];
  return count > s->limits.max_tile_bytes ? 0 : (size_t)count;
}

static tessera_status frame_device_stream(const tessera_slide *s, const struct tsr_level *lv,
                                          uint64_t index, uint8_t *dst, size_t *len) {
  *len = 0;
  size_t count = (size_t)lv->bytecounts[index];
  tessera_status st = tsr_tile_fetch(s, lv->offsets[index], count, dst);
  if (st == TESSERA_OK && fragmented(lv, index))
    st = join_fragments(dst, &count);
  if (st == TESSERA_OK)
    *len = count;
  return st;
}

static void frames_free(void *data) {
  struct tsr_dicom_frames *f = data;
  if (f)
    tsr_free(f->fragmented);
  tsr_free(f);
}

const struct tsr_tile_source tsr_dicom_frames = {
    .unit = "frame",
    .missing = frame_missing,
    .stream = frame_stream,
    .device_stream_size = frame_device_stream_size,
    .device_stream = frame_device_stream,
    .free = frames_free,
};
