/* Hamamatsu NDPI: TIFF written by NDP.scan, Make "Hamamatsu". Every directory carries the
 * objective of its image in the NDPI SourceLens tag: the magnification for the pyramid's
 * levels, -1 for the macro photograph of the slide, -2 for the map of the scanned area. */
#include <stdio.h>
#include <string.h>
#include <tiff.h>

#include "alloc.h"
#include "error.h"
#include "format/format.h"
#include "format/ndpi.h"

static bool hamamatsu_detect(const struct tsr_dirs *dirs) {
  return tsr_starts_with(dirs->dir[0].make, "Hamamatsu");
}

/* The NDPI property map: "key=value" records separated by CR LF, each hamamatsu.KEY (a record
 * with an empty key or value is skipped; a key given twice keeps its last value, as OpenSlide
 * keeps it). */
static void add_property_map(const char *map, struct tsr_props *props) {
  for (const char *rec = map; *rec;) {
    const char *end = strstr(rec, "\r\n");
    size_t len = end ? (size_t)(end - rec) : strlen(rec);
    const char *eq = memchr(rec, '=', len);
    if (eq && eq > rec && (size_t)(eq - rec) + 1 < len && eq - rec < 200) {
      char key[216];
      int klen = snprintf(key, sizeof key, "hamamatsu.%.*s", (int)(eq - rec), rec);
      if (klen > 0 && (size_t)klen < sizeof key)
        tsr_props_set_bytes(props, key, eq + 1, len - (size_t)(eq - rec) - 1);
    }
    rec += len;
    if (end)
      rec += 2;
  }
}

/* Each directory that is one JPEG strip with McuStarts becomes a grid of restart intervals. */
static tessera_status tile_by_interval(struct tsr_dirs *dirs) {
  uint64_t size = dirs->source->ops->size(dirs->source);
  for (size_t i = 0; i < dirs->n; i++) {
    tessera_status st = tsr_ndpi_tile_level(dirs->source, size, &dirs->table_budget, &dirs->dir[i]);
    if (st != TESSERA_OK)
      return st;
  }
  return TESSERA_OK;
}

/* Whether a stored level can be decoded at 1/k by libjpeg's scaled IDCT, tile by tile: tiles
 * (restart intervals, or the one strip) that k divides, as OpenSlide asks. The level's size
 * need not be whole tiles: the scaled level is the stored size divided and rounded down, as
 * OpenSlide's, and a partial interval at its edge is decoded at its stored size (its last
 * scaled pixel, from fewer than k stored ones, falls outside when the division drops it). */
static bool scalable(const struct tsr_level *lv, uint32_t k) {
  return lv->fmt.compression == COMPRESSION_JPEG && !lv->fmt.unsupported[0] &&
         lv->tile_w % k == 0 && lv->tile_h % k == 0 && lv->width / k > 0 && lv->height / k > 0;
}

/* OpenSlide shows each stored level also decoded at 1/2, 1/4 and 1/8 (the JPEG decoder's
 * scaled IDCT: a cheap, fast smaller level), wherever that gives a width no stored level has;
 * a width two stored levels could give comes from the smaller one. The same levels here, in
 * the same order (largest first), so that a program sees the same pyramid through either. */
static tessera_status add_scaled_levels(const struct tsr_dirs *dirs, struct tsr_findings *out) {
  int32_t n = out->nlevels, cap = 4 * n;
  size_t *level_dirs = tsr_calloc((size_t)cap, sizeof *level_dirs);
  uint8_t *scale = tsr_calloc((size_t)cap, sizeof *scale);
  int64_t *widths = tsr_calloc((size_t)cap, sizeof *widths);
  tessera_status st = TESSERA_OK;
  if (!level_dirs || !scale || !widths) {
    st = tsr_error(TESSERA_E_NOMEM, "out of memory for levels");
    goto out;
  }
  int32_t m = 0;
  for (int32_t i = 0; i < n; i++) { /* the stored levels claim their widths first */
    level_dirs[m] = out->level_dirs[i];
    scale[m] = 1;
    widths[m++] = dirs->dir[out->level_dirs[i]].level.width;
  }
  for (int32_t i = n - 1; i >= 0; i--) { /* then the smallest stored level's scales first */
    const struct tsr_level *lv = &dirs->dir[out->level_dirs[i]].level;
    for (uint32_t k = 2; k <= 8; k *= 2) {
      if (!scalable(lv, k))
        continue;
      bool taken = false;
      for (int32_t j = 0; j < m; j++)
        taken = taken || widths[j] == lv->width / k;
      if (taken)
        continue;
      level_dirs[m] = out->level_dirs[i];
      scale[m] = (uint8_t)k;
      widths[m++] = lv->width / k;
    }
  }
  /* largest first: insertion sort, the lists being short */
  for (int32_t i = 1; i < m; i++)
    for (int32_t j = i; j > 0 && widths[j - 1] < widths[j]; j--) {
      int64_t w = widths[j];
      widths[j] = widths[j - 1];
      widths[j - 1] = w;
      size_t d = level_dirs[j];
      level_dirs[j] = level_dirs[j - 1];
      level_dirs[j - 1] = d;
      uint8_t k = scale[j];
      scale[j] = scale[j - 1];
      scale[j - 1] = k;
    }
  tsr_free(out->level_dirs);
  out->level_dirs = level_dirs;
  out->level_scale = scale;
  out->nlevels = m;
  level_dirs = NULL;
  scale = NULL;
out:
  tsr_free(level_dirs);
  tsr_free(scale);
  tsr_free(widths);
  return st;
}

static tessera_status hamamatsu_open(struct tsr_dirs *dirs, struct tsr_findings *out) {
  tessera_status st = tile_by_interval(dirs);
  if (st == TESSERA_OK)
    st = tsr_findings_pyramid(dirs, out);
  if (st == TESSERA_OK)
    st = add_scaled_levels(dirs, out);
  for (size_t i = 1; st == TESSERA_OK && i < dirs->n; i++) {
    const struct tsr_dir *d = &dirs->dir[i];
    if (out->is_level[i] || !d->has_ndpi_source_lens)
      continue;
    if (d->ndpi_source_lens == -1.0)
      tsr_findings_add_associated(out, i, "macro");
    else if (d->ndpi_source_lens == -2.0)
      tsr_findings_add_associated(out, i, "map");
  }
  out->background = 0;
  const struct tsr_dir *d0 = &dirs->dir[0];
  if (d0->has_ndpi_source_lens && d0->ndpi_source_lens > 0) {
    tsr_props_add_double(&out->props, "hamamatsu.SourceLens", d0->ndpi_source_lens);
    tsr_props_add_double(&out->props, "tessera.objective-power", d0->ndpi_source_lens);
  }
  if (d0->has_ndpi_x_offset)
    tsr_props_add_double(&out->props, "hamamatsu.XOffsetFromSlideCentre", d0->ndpi_x_offset);
  if (d0->has_ndpi_y_offset)
    tsr_props_add_double(&out->props, "hamamatsu.YOffsetFromSlideCentre", d0->ndpi_y_offset);
  tsr_props_add_string(&out->props, "hamamatsu.Reference", d0->ndpi_reference);
  if (d0->ndpi_property_map)
    add_property_map(d0->ndpi_property_map, &out->props);
  /* centimetres only: an NDPI resolution in inches would be a writer default, not a scan */
  tsr_findings_resolution_mpp(dirs, out, false);
  tsr_findings_common_props(dirs, out);
  return st;
}

const struct tsr_vendor tsr_vendor_hamamatsu = {"hamamatsu", hamamatsu_detect, hamamatsu_open};
