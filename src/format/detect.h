/* Vendor conventions on top of the TIFF container: which directories form the pyramid, which
 * are associated images, who wrote the file and what colour its glass is. */
#ifndef TSR_FORMAT_DETECT_H
#define TSR_FORMAT_DETECT_H

#include "tiff/walk.h"

#define TSR_MAX_ASSOCIATED 16

struct tsr_layout {
  size_t *level_dirs; /* indices into dirs, largest level first */
  int32_t nlevels;
  const char *vendor;
  uint8_t background;
  struct {
    size_t dir;
    const char *name;
  } associated[TSR_MAX_ASSOCIATED];
  size_t nassociated;
};

tessera_status tsr_format_detect(const struct tsr_dirs *dirs, struct tsr_layout *out);
void tsr_layout_free(struct tsr_layout *layout);

#endif
