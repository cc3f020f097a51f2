#include "format/ndpi.h"

#include <string.h>
#include <tiff.h>

#include "alloc.h"
#include "codec/codec.h"
#include "error.h"
#include "source/tile_source.h"

/* Most bytes a strip's JPEG header (SOI to SOS) may take: quantisation and Huffman tables,
 * a comment and an APP segment or two are a few kilobytes. */
#define TSR_NDPI_MAX_HEADER ((uint64_t)1 << 20)
/* Most tiles a level may have, as for TIFF tile tables (walk.c). */
#define TSR_NDPI_MAX_TILES ((uint64_t)1 << 26)

/* The checks below fail with TESSERA_E_FORMAT when the file's description of its restart
 * intervals does not fit its JPEG data; the level is then read as one strip. */
#define MISFIT(...) tsr_error(TESSERA_E_FORMAT, __VA_ARGS__)

static tessera_status read_exact(const struct tsr_byte_source *src, uint64_t offset, void *dst,
                                 size_t n) {
  size_t got;
  tessera_status st = tsr_bytes_read_at(src, offset, n, dst, &got);
  if (st == TESSERA_OK && got < n)
    return MISFIT("the file ends inside the JPEG header");
  return st;
}

/* SOF markers of every coding process (not DHT, JPG or DAC, which share the range). */
static bool is_sof(uint8_t m) {
  return m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC;
}

/* Where the parts of a strip's JPEG header lie, in bytes from the strip's start. */
struct header_map {
  size_t len; /* SOI up to the end of SOS */
  size_t sof; /* the SOF segment */
  size_t dri; /* the DRI segment (DRI_BYTES long); 0 if none */
};

#define DRI_BYTES 6

/* Maps the JPEG header at the start of the strip [start, end): SOI, segments, SOS. */
static tessera_status find_header(const struct tsr_byte_source *src, uint64_t start, uint64_t end,
                                  struct header_map *map) {
  uint64_t limit = end - start < TSR_NDPI_MAX_HEADER ? end : start + TSR_NDPI_MAX_HEADER;
  uint8_t b[4];
  tessera_status st;
  if (limit - start < 2 || (st = read_exact(src, start, b, 2)) != TESSERA_OK)
    return limit - start < 2 ? MISFIT("the strip is too short for a JPEG header") : st;
  if (b[0] != 0xFF || b[1] != 0xD8)
    return MISFIT("the strip does not start with a JPEG SOI marker");
  bool have_sof = false;
  for (uint64_t pos = start + 2;;) {
    if (limit - pos < 4)
      return MISFIT("no SOS marker in the first %llu bytes of the strip",
                    (unsigned long long)(limit - start));
    if ((st = read_exact(src, pos, b, 4)) != TESSERA_OK)
      return st;
    if (b[0] != 0xFF)
      return MISFIT("no JPEG marker at byte %llu of the strip", (unsigned long long)(pos - start));
    if (b[1] == 0xFF) { /* a fill byte before the marker */
      pos++;
      continue;
    }
    unsigned seg = (unsigned)b[2] << 8 | b[3];
    if (seg < 2 || b[1] == 0xD8 || b[1] == 0xD9 || (b[1] >= 0xD0 && b[1] <= 0xD7))
      return MISFIT("JPEG marker 0x%02X at byte %llu of the strip is out of place", b[1],
                    (unsigned long long)(pos - start));
    if (is_sof(b[1])) {
      if (have_sof || seg < 8)
        return MISFIT("a second or short SOF in the JPEG header");
      have_sof = true;
      map->sof = (size_t)(pos - start);
    } else if (b[1] == 0xDD) {
      if (map->dri || seg != DRI_BYTES - 2)
        return MISFIT("a second or odd DRI in the JPEG header");
      map->dri = (size_t)(pos - start);
    }
    pos += 2 + (uint64_t)seg;
    if (pos > limit)
      return MISFIT("a JPEG marker segment runs past the header's room");
    if (b[1] == 0xDA) {
      if (!have_sof)
        return MISFIT("SOS before any SOF in the JPEG header");
      map->len = (size_t)(pos - start);
      return TESSERA_OK;
    }
  }
}

/* Everything a tiled level needs, built aside so that a misfit leaves the level as it was. */
struct plan {
  uint32_t tile_w, tile_h, across, down;
  uint64_t ntiles;
  struct tsr_ndpi_header *header; /* as kept: without DRI */
  size_t data_start;              /* where the entropy-coded data starts in the strip */
  uint64_t *offsets, *counts;
};

/* The grid OpenSlide uses: a tile is one restart interval, interval x MCU width by one MCU
 * high; a row of MCUs must hold a whole number of intervals. */
static tessera_status plan_grid(const struct tsr_level *lv, const struct tsr_jpeg_geometry *j,
                                struct plan *g) {
  if (!j->one_scan)
    return MISFIT("the JPEG is not one sequential Huffman-coded scan");
  if (j->restart_interval == 0)
    return MISFIT("the JPEG has no restart markers");
  if (j->components != lv->fmt.decoded_channels)
    return MISFIT("the JPEG has %u components, the TIFF says %u", j->components,
                  lv->fmt.decoded_channels);
  uint64_t per_row = ((uint64_t)lv->width + j->mcu_w - 1) / j->mcu_w;
  if (j->restart_interval > per_row || per_row % j->restart_interval != 0)
    return MISFIT("restart interval of %u MCUs does not divide a row of %llu", j->restart_interval,
                  (unsigned long long)per_row);
  uint64_t tile_w = (uint64_t)j->mcu_w * j->restart_interval;
  /* Each tile is decoded as a JPEG of its own, whose size has JPEG's limits. */
  if (tile_w > TSR_JPEG_MAX_SIDE)
    return MISFIT("restart intervals %llu pixels wide", (unsigned long long)tile_w);
  g->tile_w = (uint32_t)tile_w;
  g->tile_h = j->mcu_h;
  g->across = (uint32_t)(per_row / j->restart_interval);
  g->down = (uint32_t)(((uint64_t)lv->height + j->mcu_h - 1) / j->mcu_h);
  g->ntiles = (uint64_t)g->across * g->down;
  if (g->ntiles > TSR_NDPI_MAX_TILES)
    return MISFIT("%llu restart intervals", (unsigned long long)g->ntiles);
  return TESSERA_OK;
}

/* Offsets and byte counts of the tiles, from McuStarts (relative to the strip's start). A
 * tile's bytes run from the marker that ends the interval before it (none for the first,
 * which starts right after the header) to the one that ends it, both included, so that
 * reading a tile can check that both are where the tag says. */
static tessera_status plan_tables(const uint64_t *low, const uint64_t *high, uint64_t n,
                                  uint64_t start, uint64_t end, size_t header_len,
                                  uint64_t *offsets, uint64_t *counts) {
  uint64_t prev = start + header_len; /* where the previous interval's data begins */
  offsets[0] = prev;
  for (uint64_t i = 1; i < n; i++) {
    if ((high && high[i] > UINT32_MAX) || low[i] > UINT32_MAX)
      return MISFIT("McuStarts value %llu is not a 32-bit half", (unsigned long long)i);
    uint64_t rel = low[i] | (high ? high[i] << 32 : 0);
    /* At least one byte of data and a two-byte marker for the interval before. */
    if (rel > end - start || start + rel < prev + 3)
      return MISFIT("restart interval %llu starts at %llu, after %llu (strip of %llu bytes)",
                    (unsigned long long)i, (unsigned long long)rel,
                    (unsigned long long)(prev - start), (unsigned long long)(end - start));
    prev = start + rel;
    offsets[i] = prev - 2;
    counts[i - 1] = prev - offsets[i - 1];
  }
  if (end < prev + 3)
    return MISFIT("the last restart interval starts %llu bytes before the strip's end",
                  (unsigned long long)(end - prev));
  counts[n - 1] = end - offsets[n - 1];
  return TESSERA_OK;
}

/* The strip's header, checked against the TIFF, and its geometry. The header kept leaves out
 * the DRI (each interval is decoded as a whole image, with libjpeg's faster decoder for data
 * without restart markers) and has the SOF's size made one libjpeg takes (NDPI writes 0 for
 * a side over JPEG's limit); each tile's decode puts its own size there. */
static tessera_status read_header(const struct tsr_byte_source *src, const struct tsr_level *lv,
                                  uint64_t start, uint64_t end, struct plan *p,
                                  struct tsr_jpeg_geometry *geometry) {
  struct header_map map = {0};
  tessera_status st = find_header(src, start, end, &map);
  if (st != TESSERA_OK)
    return st;
  if (!(p->header = tsr_malloc(sizeof *p->header + map.len)))
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a JPEG header of %zu bytes", map.len);
  uint8_t *h = p->header->bytes;
  if ((st = read_exact(src, start, h, map.len)) != TESSERA_OK)
    return st;
  uint8_t *dims = h + map.sof + 5;
  uint32_t sof_h = (uint32_t)dims[0] << 8 | dims[1], sof_w = (uint32_t)dims[2] << 8 | dims[3];
  if ((sof_w != 0 && sof_w <= TSR_JPEG_MAX_SIDE && sof_w != lv->width) ||
      (sof_h != 0 && sof_h <= TSR_JPEG_MAX_SIDE && sof_h != lv->height))
    return MISFIT("the JPEG is %ux%u, the TIFF says %lldx%lld", sof_w, sof_h, (long long)lv->width,
                  (long long)lv->height);
  dims[0] = dims[2] = 0;
  dims[1] = dims[3] = 8;
  if ((st = tsr_jpeg_read_geometry(h, map.len, geometry)) != TESSERA_OK)
    return st;
  p->data_start = map.len;
  p->header->len = map.len;
  p->header->size_at = map.sof + 5;
  p->header->width = lv->width;
  p->header->height = lv->height;
  if (map.dri) {
    memmove(h + map.dri, h + map.dri + DRI_BYTES, map.len - map.dri - DRI_BYTES);
    p->header->len -= DRI_BYTES;
    if (map.dri < map.sof)
      p->header->size_at -= DRI_BYTES;
  }
  return TESSERA_OK;
}

static tessera_status plan(const struct tsr_byte_source *src, uint64_t file_size,
                           const struct tsr_dir *d, uint64_t *budget, struct plan *p) {
  const struct tsr_level *lv = &d->level;
  uint64_t nlow = d->ndpi_mcu_starts_n, nhigh = d->ndpi_mcu_starts_high_n;
  tessera_status st;
  uint64_t start = lv->offsets[0], count = lv->bytecounts[0];
  if (start == 0 || count == 0 || start > file_size || count > file_size - start)
    return MISFIT("the strip lies outside the file");
  struct tsr_jpeg_geometry geometry;
  if ((st = read_header(src, lv, start, start + count, p, &geometry)) != TESSERA_OK ||
      (st = plan_grid(lv, &geometry, p)) != TESSERA_OK)
    return st;
  uint64_t n = p->ntiles;
  if (n <= 1)
    return TESSERA_OK; /* one interval: the strip is the tile */
  if (nlow != n || (nhigh != 0 && nhigh != n))
    return MISFIT("McuStarts lists %llu and %llu offsets for %llu restart intervals",
                  (unsigned long long)nlow, (unsigned long long)nhigh, (unsigned long long)n);
  if (n > *budget)
    return MISFIT("%llu restart intervals, more than the file's size can hold",
                  (unsigned long long)n);
  p->offsets = tsr_calloc((size_t)n, sizeof *p->offsets);
  p->counts = tsr_calloc((size_t)n, sizeof *p->counts);
  if (!p->offsets || !p->counts)
    return tsr_error(TESSERA_E_NOMEM, "out of memory for %llu restart intervals",
                     (unsigned long long)n);
  if ((st = plan_tables(d->ndpi_mcu_starts, nhigh ? d->ndpi_mcu_starts_high : NULL, n, start,
                        start + count, p->data_start, p->offsets, p->counts)) != TESSERA_OK)
    return st;
  *budget -= n;
  return TESSERA_OK;
}

tessera_status tsr_ndpi_tile_level(const struct tsr_byte_source *src, uint64_t file_size,
                                   uint64_t *budget, struct tsr_dir *d) {
  struct tsr_level *lv = &d->level;
  if (d->ndpi_mcu_starts_n == 0 || lv->tiled || lv->ntiles != 1 ||
      lv->fmt.compression != COMPRESSION_JPEG || lv->fmt.unsupported[0])
    return TESSERA_OK;
  struct plan p = {0};
  tessera_status st = plan(src, file_size, d, budget, &p);
  if (st == TESSERA_OK && p.offsets) {
    tsr_free(lv->offsets);
    tsr_free(lv->bytecounts);
    lv->offsets = p.offsets;
    lv->bytecounts = p.counts;
    lv->source = &tsr_ndpi_intervals;
    lv->source_data = p.header;
    /* Each interval is a whole JPEG with the strip's own tables: a JPEGTables tag beside
     * them is not read. */
    tsr_free(lv->fmt.jpeg_tables);
    lv->fmt.jpeg_tables = NULL;
    lv->fmt.jpeg_tables_len = 0;
    lv->tile_w = p.tile_w;
    lv->tile_h = p.tile_h;
    lv->across = p.across;
    lv->down = p.down;
    lv->ntiles = p.ntiles;
    p.offsets = p.counts = NULL;
    p.header = NULL;
  } else if (st == TESSERA_E_FORMAT) {
    tsr_error_clear(); /* a misfit: the level stays one strip */
    st = TESSERA_OK;
  } else if (st != TESSERA_OK) {
    st = tsr_error_prefix(st, "directory %u, NDPI restart intervals: ", lv->directory);
  }
  tsr_free(p.header);
  tsr_free(p.offsets);
  tsr_free(p.counts);
  return st;
}
