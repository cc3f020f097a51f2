/* A bounded reader of DICOM Part 10 files: the preamble and DICM, the file meta group, and the
 * data set in explicit or implicit VR little endian, up to its Pixel Data. It keeps what a
 * whole-slide image instance says about itself (identity, image type, pixel description, tile
 * positions, where each frame's bytes lie) and, when asked, the dicom.* properties.
 *
 * Every byte is hostile: each length is checked against the data set or item holding it and
 * against the file's size, sequences nest at most TSR_DICOM_MAX_DEPTH deep, per-frame and
 * fragment tables at most TSR_DICOM_MAX_FRAMES entries, and values are read through a
 * bounded window (a value longer than it is skipped, never read whole). */
#ifndef TSR_FORMAT_DICOM_H
#define TSR_FORMAT_DICOM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "props.h"
#include "source/byte_source.h"

#define TSR_DICOM_MAX_DEPTH 12
#define TSR_DICOM_MAX_FRAMES ((size_t)1 << 22)

/* One element of the standard's data dictionary (format/dicom_dict.c, generated). */
struct tsr_dicom_dict_entry {
  uint32_t tag;
  char vr[3];
  const char *keyword;
};

extern const struct tsr_dicom_dict_entry tsr_dicom_dict[];
extern const size_t tsr_dicom_dict_len;

/* The dictionary's entry for tag, or NULL. */
const struct tsr_dicom_dict_entry *tsr_dicom_lookup(uint32_t tag);

/* An encapsulated fragment: its item header at item, its len bytes at data (= item + 8). */
struct tsr_dicom_fragment {
  uint64_t item;
  uint32_t len;
};

#define TSR_DICOM_UID 68

/* What one instance says. Integers the file leaves out are -1. */
struct tsr_dicom_instance {
  char syntax[TSR_DICOM_UID], sop_class[TSR_DICOM_UID], sop_instance[TSR_DICOM_UID];
  char series[TSR_DICOM_UID], concatenation[TSR_DICOM_UID];
  char flavor[20];      /* ImageType's third value: VOLUME, LABEL, OVERVIEW, THUMBNAIL */
  char photometric[20]; /* PhotometricInterpretation */
  char organization[20];
  int64_t rows, columns, samples, planar, bits_allocated, bits_stored, high_bit,
      pixel_representation, frames, total_columns, total_rows, focal_planes, concat_number,
      concat_total, concat_frame_offset;
  bool implicit_vr;
  /* Per-frame Plane Position (Slide), 1-based; npositions frames have one (0 where the
   * frame's item gave none). */
  int64_t *column_pos, *row_pos;
  size_t npositions;
  /* Pixel Data: native (offset, length), or encapsulated: its fragments, and the Basic and
   * Extended Offset Tables' frame offsets (from the first fragment's item), if any. */
  bool has_pixels, encapsulated;
  uint64_t pixel_offset, pixel_length;
  struct tsr_dicom_fragment *fragments;
  size_t nfragments;
  uint64_t *offset_table;
  size_t noffsets;
  uint64_t eot_at, eot_len; /* where the Extended Offset Table's value lies (0: none) */
  /* The ICC Profile of the first optical path (length 0: none). */
  uint64_t icc_offset, icc_length;
};

/* Whether src starts as a DICOM Part 10 file: 128 bytes, then DICM. */
bool tsr_dicom_sniff(const struct tsr_byte_source *src);

/* Reads the instance in src. With props, only the dicom.* properties (and the walk stops
 * where they end: the frame tables and Pixel Data are left unread), named as OpenSlide 4 names
 * them:
 * every element the dictionary names (file meta group included), before the first of the
 * tags that start the bulky part of a WSI instance (ReferencedImageNavigationSequence,
 * PerFrameFunctionalGroupsSequence, the offset tables, Pixel Data); a sequence's items as
 * Keyword[i].Inner, a value of several parts as Keyword[i]. Fails with a message that says
 * what is damaged and where. */
tessera_status tsr_dicom_parse(const struct tsr_byte_source *src, struct tsr_dicom_instance *out,
                               struct tsr_props *props);

void tsr_dicom_instance_free(struct tsr_dicom_instance *inst);

#endif
