/* Hamamatsu NDPI stores each level as one JPEG strip with restart markers, and records in
 * private tags (McuStarts, kept by the TIFF walk in tsr_dir) where each restart interval's
 * entropy-coded bytes begin. The Hamamatsu vendor makes such a level a grid of tiles, one per
 * restart interval (interval x MCU width by one MCU high, as OpenSlide tiles it), read by the
 * tile source tsr_ndpi_intervals (source/tile_source.h), so a small region decodes only the
 * intervals it covers instead of the whole level. */
#ifndef TSR_FORMAT_NDPI_H
#define TSR_FORMAT_NDPI_H

#include "tiff/walk.h"

/* Makes the level of directory d a grid of restart-interval tiles when it is a single JPEG
 * strip whose McuStarts agree with its JPEG header (read from src, of file_size bytes). A
 * level without McuStarts stays one strip. So does one whose tag or header does not fit its
 * data (a damaged file): it is then decoded whole, as before, and the message of the failed
 * check is dropped. Only running out of memory or failing to read the file fails. *budget is
 * the number of table entries the file's size still allows (tsr_dirs.table_budget). */
tessera_status tsr_ndpi_tile_level(const struct tsr_byte_source *src, uint64_t file_size,
                                   uint64_t *budget, struct tsr_dir *d);

#endif
