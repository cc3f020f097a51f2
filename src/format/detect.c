/* Which vendor's conventions a file follows: each is asked in turn; generic TIFF takes the
 * rest. */
#include <string.h>

#include "alloc.h"
#include "error.h"
#include "format/format.h"

static const struct tsr_vendor *const vendors[] = {
    &tsr_vendor_aperio, &tsr_vendor_hamamatsu, &tsr_vendor_philips,
    &tsr_vendor_ome,    &tsr_vendor_leica,     &tsr_vendor_ventana, &tsr_vendor_generic,
};

tessera_status tsr_format_detect(struct tsr_dirs *dirs, struct tsr_findings *out) {
  memset(out, 0, sizeof *out);
  if (dirs->n == 0)
    return tsr_error(TESSERA_E_FORMAT, "the file has no image directory");
  for (size_t i = 0; i < sizeof vendors / sizeof vendors[0]; i++) {
    const struct tsr_vendor *v = vendors[i];
    if (v->detect && !v->detect(dirs))
      continue;
    out->vendor = v->name;
    tessera_status st = v->open(dirs, out);
    if (st == TESSERA_OK && out->props.failed)
      st = tsr_error(TESSERA_E_NOMEM, "out of memory for properties");
    if (st != TESSERA_OK) {
      tsr_findings_free(out);
      return st;
    }
    return TESSERA_OK;
  }
  return tsr_error(TESSERA_E_FORMAT, "no reader for this file"); /* generic takes all */
}

static const struct tsr_path_format *const path_formats[] = {&tsr_format_mirax, &tsr_format_sakura,
                                                             &tsr_format_vms, &tsr_format_dicom};

const struct tsr_path_format *tsr_format_detect_path(const char *path) {
  for (size_t i = 0; i < sizeof path_formats / sizeof path_formats[0]; i++)
    if (path_formats[i]->detect(path))
      return path_formats[i];
  return NULL;
}

void tsr_findings_free(struct tsr_findings *found) {
  tsr_free(found->level_dirs);
  found->level_dirs = NULL;
  tsr_free(found->is_level);
  found->is_level = NULL;
  tsr_free(found->level_sizes);
  found->level_sizes = NULL;
  tsr_free(found->level_scale);
  found->level_scale = NULL;
  tsr_free(found->level_origin);
  found->level_origin = NULL;
  tsr_free(found->areas);
  found->areas = NULL;
  found->nareas = 0;
  for (size_t i = 0; i < found->nassociated; i++) {
    if (found->associated[i].level) {
      tsr_level_free(found->associated[i].level);
      tsr_free(found->associated[i].level);
      found->associated[i].level = NULL;
    }
  }
  for (int32_t i = 0; found->levels && i < found->nlevels; i++)
    tsr_level_free(&found->levels[i]);
  tsr_free(found->levels);
  found->levels = NULL;
  tsr_free(found->icc);
  found->icc = NULL;
  tsr_props_free(&found->props);
}
