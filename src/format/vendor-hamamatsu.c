/* Hamamatsu NDPI: TIFF written by NDP.scan, Make "Hamamatsu". Every directory carries the
 * objective of its image in the NDPI SourceLens tag: the magnification for the pyramid's
 * levels, -1 for the macro photograph of the slide, -2 for the map of the scanned area. */
#include "alloc.h"
#include "error.h"
#include "format/format.h"

static bool hamamatsu_detect(const struct tsr_dirs *dirs) {
  return tsr_starts_with(dirs->dir[0].make, "Hamamatsu");
}

static tessera_status hamamatsu_open(const struct tsr_dirs *dirs, struct tsr_layout *out) {
  bool *level = tsr_calloc(dirs->n, sizeof *level);
  if (!level)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  tessera_status st = tsr_layout_pyramid(dirs, out, level);
  for (size_t i = 1; st == TESSERA_OK && i < dirs->n; i++) {
    const struct tsr_dir *d = &dirs->dir[i];
    if (level[i] || !d->has_ndpi_source_lens)
      continue;
    if (d->ndpi_source_lens == -1.0)
      tsr_layout_add_associated(out, i, "macro");
    else if (d->ndpi_source_lens == -2.0)
      tsr_layout_add_associated(out, i, "map");
  }
  tsr_free(level);
  out->background = 0;
  const struct tsr_dir *d0 = &dirs->dir[0];
  if (d0->has_ndpi_source_lens && d0->ndpi_source_lens > 0) {
    tsr_props_add_double(&out->props, "hamamatsu.SourceLens", d0->ndpi_source_lens);
    tsr_props_add_double(&out->props, "tessera.objective-power", d0->ndpi_source_lens);
  }
  tsr_layout_resolution_mpp(dirs, out);
  tsr_layout_common_props(dirs, out);
  return st;
}

const struct tsr_vendor tsr_vendor_hamamatsu = {"hamamatsu", hamamatsu_detect, hamamatsu_open};
