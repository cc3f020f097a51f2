/* Walks every TIFF directory of a file with libtiff (at open time only) and copies what the
 * read path needs into plain tables, so that reading never calls libtiff. */
#ifndef TSR_TIFF_WALK_H
#define TSR_TIFF_WALK_H

#include "slide_internal.h"

#define TSR_NDPI_SOURCE_LENS 65421
#define TSR_NDPI_X_OFFSET 65422
#define TSR_NDPI_Y_OFFSET 65423
#define TSR_NDPI_REFERENCE 65427
#define TSR_NDPI_PROPERTY_MAP 65449
/* Offsets of the restart intervals from the start of the strip: their low 32 bits, and in
 * files over 4 GiB their high 32 bits (format/ndpi.h). */
#define TSR_NDPI_MCU_STARTS 65426
#define TSR_NDPI_MCU_STARTS_HIGH 65432

struct tsr_dir {
  struct tsr_level level; /* candidate level; downsample is set later */
  uint32_t subfile_type;
  int32_t parent;  /* SubIFD: index of the directory it hangs from; main chain: -1 */
  uint64_t offset; /* of the IFD in the file (main chain), for loop detection */
  uint16_t resolution_unit;
  bool has_resolution;
  float xres, yres;
  double ndpi_source_lens; /* Hamamatsu: objective magnification, -1 macro, -2 map */
  bool has_ndpi_source_lens;
  bool has_ndpi_x_offset, has_ndpi_y_offset;
  double ndpi_x_offset, ndpi_y_offset; /* of the image from the slide's centre, nm */
  char *ndpi_reference;                /* NDPI Reference tag */
  char *ndpi_property_map;             /* "key=value\r\n..." */
  /* NDPI McuStarts and their high words, widened, of a directory that is one JPEG strip;
   * none (NULL, 0) when absent or not arrays of offsets. Owned. */
  uint64_t *ndpi_mcu_starts, *ndpi_mcu_starts_high;
  uint64_t ndpi_mcu_starts_n, ndpi_mcu_starts_high_n;
  uint8_t *icc; /* ICC profile (tag 34675), owned; NULL when none */
  char *xmp;    /* XMLPacket (tag 700) up to its first NUL, owned; NULL when none (Ventana) */
  uint32_t icc_len;
  char *description, *software, *make, *model, *datetime, *artist, *copyright, *host;
};

struct tsr_dirs {
  struct tsr_dir *dir;
  size_t n;
  /* The file the directories describe, for vendors that read more of it at open (NDPI's JPEG
   * headers), and how many more table entries its size allows them (see walk.c). */
  const struct tsr_byte_source *source;
  uint64_t table_budget;
};

/* Reads all directories (main chain and SubIFDs) of the TIFF in src. */
tessera_status tsr_tiff_walk(const struct tsr_byte_source *src, const tessera_open_options *limits,
                             struct tsr_dirs *out);

/* Frees what tsr_tiff_walk allocated; a level the caller took must be zeroed first. */
void tsr_tiff_dirs_free(struct tsr_dirs *dirs);

#endif
