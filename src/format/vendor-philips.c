/* Philips TIFF: Software "Philips", an XML ImageDescription (DICOM-like attributes). Glass is
 * white. */
#include "alloc.h"
#include "error.h"
#include "format/format.h"

static bool philips_detect(const struct tsr_dirs *dirs) {
  return tsr_starts_with(dirs->dir[0].software, "Philips");
}

static tessera_status philips_open(const struct tsr_dirs *dirs, struct tsr_layout *out) {
  bool *level = tsr_calloc(dirs->n, sizeof *level);
  if (!level)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  tessera_status st = tsr_layout_pyramid(dirs, out, level);
  tsr_free(level);
  out->background = 255;
  tsr_props_add_string(&out->props, "tessera.background-color", "FFFFFF");
  return st;
}

const struct tsr_vendor tsr_vendor_philips = {"philips", philips_detect, philips_open};
