/* libtiff over the slide's byte source (source/byte_source.h): the walk sees exactly the bytes the
 * slide reads, no offset state is shared, nothing is memory-mapped (a file truncated under us
 * gives an error, not SIGBUS), and libtiff's messages are kept per open instead of printed. */
#ifndef TSR_TIFF_CLIENT_H
#define TSR_TIFF_CLIENT_H

#include <stdbool.h>
#include <stdint.h>
#include <tiffio.h>

#include "source/byte_source.h"
#include "tessera.h"

struct tsr_tiff_file {
  const struct tsr_byte_source *src;
  uint64_t pos, size;    /* libtiff's position, and the file's size */
  char first_error[512]; /* libtiff's first error message, without the file name */
  bool failed;           /* libtiff reported an error */
};

/* Opens src for reading with libtiff; libtiff allocates at most max_alloc bytes at once. The
 * TIFF lives no longer than *f, which lives no longer than src. */
tessera_status tsr_tiff_client_open(struct tsr_tiff_file *f, const struct tsr_byte_source *src,
                                    uint64_t max_alloc, TIFF **out);

/* Checks, from the file itself and before libtiff reads the directory at offset, that its
 * entries do not point at more data than the file holds: libtiff copies every tag's values
 * (known or not) into memory, and entries sharing one block of the file would multiply it.
 * An unreadable directory passes (libtiff reports it). */
tessera_status tsr_tiff_check_ifd_data(const struct tsr_tiff_file *f, bool big, bool be,
                                       uint64_t offset);

/* The next-IFD pointer of the directory libtiff has current, read from the file itself:
 * libtiff stops at a directory loop without an error, so the walk checks for one. */
bool tsr_tiff_next_ifd_offset(TIFF *tif, const struct tsr_tiff_file *f, uint64_t *next);

/* The values of a tag libtiff does not know (a vendor's private tag), which libtiff keeps as
 * a counted array of the type the file gives; false when the directory has none. */
bool tsr_tiff_private_tag(TIFF *tif, uint32_t tag, TIFFDataType *type, const void **data,
                          uint64_t *count);

#endif
