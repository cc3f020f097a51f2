/* The property table an OpenSlide handle shows, computed as OpenSlide computes it from what
 * tessera opened, and the slide's ICC profile. */
#ifndef TSR_COMPAT_OPENSLIDE_PROPERTIES_H
#define TSR_COMPAT_OPENSLIDE_PROPERTIES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "props.h"
#include "tessera.h"

/* Fills *out (sorted by key) as OpenSlide `version` gives it (3: 3.4, 4: 4.0, which adds
 * openslide.icc-size and openslide.associated.* and a generic TIFF's mpp), and *icc / *icc_size with a
 * copy of level 0's ICC profile where OpenSlide would report one (NULL / 0 otherwise). On
 * failure the message is tessera_error_message()'s. */
tessera_status tsr_os_properties(tessera_slide *s, int version, struct tsr_props *out,
                                 uint8_t **icc, size_t *icc_size);

/* NULL, or why a level of s cannot be decoded at all (a compression tessera does not read):
 * OpenSlide refuses such a slide at open, where tessera fails its reads. */
const char *tsr_os_unreadable(const tessera_slide *s);

/* Whether OpenSlide shows the associated image `name` of s: all that tessera finds but NDPI's
 * "map", which OpenSlide does not read. */
bool tsr_os_associated_shown(tessera_slide *s, const char *name);

#endif
