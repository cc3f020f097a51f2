/* Hamamatsu NDPI stores each level as one JPEG strip with restart markers, and records in
 * private tags where each restart interval's entropy-coded bytes begin. Such a level is read
 * as a grid of tiles, one per restart interval (interval x MCU width by one MCU high, as
 * OpenSlide tiles it), so a small region decodes only the intervals it covers instead of
 * the whole level. */
#ifndef TSR_TIFF_NDPI_H
#define TSR_TIFF_NDPI_H

#include <tiffio.h>

#include "slide_internal.h"

/* Offsets of the restart intervals from the start of the strip: their low 32 bits, and in
 * files over 4 GiB their high 32 bits. */
#define TSR_NDPI_MCU_STARTS 65426
#define TSR_NDPI_MCU_STARTS_HIGH 65432

/* Makes lv, the level of directory `index` (libtiff's current one), a grid of restart-
 * interval tiles read by tsr_ndpi_intervals (source/tile_source.h) when it is a single JPEG strip whose McuStarts tag agrees with its JPEG
 * header. A level without the tag stays one strip. So does one whose tag or header does not
 * fit its data (a damaged file): it is then decoded whole, as before, and the message of
 * the failed check is dropped. Only running out of memory or failing to read the file fails.
 * *budget is the number of table entries the file's size still allows (see walk.c). */
tessera_status tsr_ndpi_tile_level(TIFF *tif, const struct tsr_byte_source *src,
                                   uint64_t file_size, uint32_t index, uint64_t *budget,
                                   struct tsr_level *lv);

#endif
