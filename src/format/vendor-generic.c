/* Generic tiled (or stripped) TIFF: the pyramid of the first image, and the physical pixel
 * size its resolution tags give (in centimetres or inches, as OpenSlide 4 reads them). */
#include "alloc.h"
#include "error.h"
#include "format/format.h"

static tessera_status generic_open(struct tsr_dirs *dirs, struct tsr_findings *out) {
  tessera_status st = tsr_findings_pyramid(dirs, out);
  out->background = 0;
  tsr_findings_common_props(dirs, out);
  tsr_findings_resolution_mpp(dirs, out, true);
  return st;
}

const struct tsr_vendor tsr_vendor_generic = {"generic-tiff", NULL, generic_open};
