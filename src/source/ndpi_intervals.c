/* Hamamatsu NDPI restart intervals as tiles (format/ndpi.h plans them at open, for the Hamamatsu
 * vendor): each is made a JPEG of its own, the strip's header (the level's tsr_ndpi_header, written
 * at open and only read afterwards) with the tile's size in its frame, then the interval's
 * entropy-coded bytes, then an EOI. The interval's bytes are read straight into their place after
 * the header; only the header is copied. Intervals go to the CPU. */
#include <string.h>

#include "error.h"
#include "source/tile_source.h"
#include "tile.h"

/* An interval's bytes run from the marker that ends the interval before it (RSTn, n counting
 * 0 to 7 over and over; none before the first) to the one that ends it (the strip's EOI after
 * the last; OpenSlide asks only for its 0xFF). Finding both where they belong catches a
 * McuStarts tag that points elsewhere. */
static tessera_status check_markers(const struct tsr_level *lv, uint64_t index, const uint8_t *p,
                                    size_t n, size_t lead) {
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
  return TESSERA_OK;
}

static tessera_status ndpi_stream(const tessera_slide *s, const struct tsr_level *lv,
                                  uint64_t index, struct tsr_scratch *buf, struct tsr_stream *out) {
  const struct tsr_ndpi_header *h = lv->source_data;
  size_t lead = index > 0 ? 2 : 0, n = (size_t)lv->bytecounts[index];
  /* The marker before the interval lands on the header's last two bytes, checked first. */
  uint8_t *p = NULL;
  tessera_status st =
      tsr_tile_fetch_into(s, lv->offsets[index], lv->bytecounts[index], buf, h->len - lead, &p);
  if (st == TESSERA_OK)
    st = check_markers(lv, index, p, n, lead);
  if (st != TESSERA_OK)
    return st;
  int64_t x, y;
  uint32_t w, ht;
  tsr_tile_extent(lv, index, &x, &y, &w, &ht);
  if (lv->fmt.jpeg_scale > 1) { /* the interval holds the stored level's pixels: its extent there */
    int64_t k = lv->fmt.jpeg_scale, sw = (int64_t)lv->tile_w * k, sh = (int64_t)lv->tile_h * k;
    int64_t sx = (int64_t)(index % lv->across) * sw, sy = (int64_t)(index / lv->across) * sh;
    w = (uint32_t)(h->width - sx < sw ? h->width - sx : sw);
    ht = (uint32_t)(h->height - sy < sh ? h->height - sy : sh);
  }
  uint8_t *d = buf->data;
  memcpy(d, h->bytes, h->len);
  d[h->size_at] = (uint8_t)(ht >> 8);
  d[h->size_at + 1] = (uint8_t)ht;
  d[h->size_at + 2] = (uint8_t)(w >> 8);
  d[h->size_at + 3] = (uint8_t)w;
  out->data = d;
  out->len = h->len + n - lead;
  d[out->len - 2] = 0xFF; /* an EOI in place of the marker that ends the interval */
  d[out->len - 1] = 0xD9;
  out->jpeg = (struct tsr_jpeg_hints){.size_at = h->size_at, .exact_end = true};
  return TESSERA_OK;
}

const struct tsr_tile_source tsr_ndpi_intervals = {
    .unit = "restart interval",
    .missing = tsr_tiff_tile_missing,
    .stream = ndpi_stream,
    .free = tsr_free,
};
