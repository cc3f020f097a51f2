/* Vendor conventions on top of the TIFF container: which directories form the pyramid, which
 * are associated images, who wrote the file, what colour its glass is and what it says about
 * itself. Each vendor lives in its own vendor-*.c behind struct tsr_vendor; detect.c asks
 * them in turn, and generic TIFF takes what nobody claims. */
#ifndef TSR_FORMAT_FORMAT_H
#define TSR_FORMAT_FORMAT_H

#include "props.h"
#include "tiff/walk.h"

#define TSR_MAX_ASSOCIATED 16

struct tsr_level_size {
  int64_t width, height;
  double downsample;
};

/* What a vendor found in the directories: the levels, the associated images, who wrote the
 * file, its background and its properties. */
struct tsr_findings {
  size_t *level_dirs; /* indices into dirs, largest level first */
  int32_t nlevels;
  bool *is_level; /* by directory: one of the levels (set by tsr_findings_pyramid; owned) */
  const char *vendor;
  uint8_t background;
  /* NULL, or nlevels sizes and downsamples that correct the directories' (Philips pads its
   * levels to whole tiles; its XML knows their true sizes). Owned. */
  struct tsr_level_size *level_sizes;
  /* NULL, or nlevels positions: level i is then level_sizes[i] large (set with this), and
   * its directory's image lies in it with its top-left pixel at (x, y), background around it
   * (Leica: the slide's collection, with the scanned image placed in it). Owned. */
  struct tsr_level_origin {
    int64_t x, y;
    int64_t image_w, image_h; /* of the image placed there; 0: its directory's size */
  } *level_origin;
  /* NULL, or nareas more images placed in the levels of level_origin, in the order they are
   * painted (after each level's own, the first shown where they overlap): directory dir's
   * image at (x, y) of level `level` (Leica: the collection's further main images). A level
   * with any is composite (slide_internal.h's tsr_level.next_area). Owned. */
  struct tsr_level_area {
    size_t dir;
    int32_t level;
    int64_t x, y;
  } *areas;
  size_t nareas;
  /* The directory whose tags are the tiff.* properties (OpenSlide takes level 0's), and
   * whether its ImageDescription is left out of them (Leica's: the XML). */
  size_t props_dir;
  bool hide_description;
  /* The directory OpenSlide's quickhash-1 hashes when it is not the last level's (Leica's
   * smallest macro); 0: the last level's. Kept for libtessera-openslide. Index + 1. */
  size_t quickhash_dir;
  /* NULL, or nlevels JPEG scales: a level whose scale is 2, 4 or 8 is its directory's stored
   * level decoded at that fraction (NDPI; the stored level is one of the levels too). Owned. */
  uint8_t *level_scale;
  struct {
    size_t dir;
    const char *name;
    struct tsr_level *level; /* NULL, or an image with no directory behind it (owned) */
  } associated[TSR_MAX_ASSOCIATED];
  size_t nassociated;
  struct tsr_props props; /* tessera.mpp-x and the like, and the vendor's own keys */
  /* NULL, or nlevels levels with no TIFF directory behind them (a format that is no TIFF
   * makes them whole; level_dirs is then unused). Owned. */
  struct tsr_level *levels;
  /* NULL, or the ICC profile of a format that is no TIFF, as its file holds it (the TIFF walk
   * keeps a TIFF's). Owned. */
  uint8_t *icc;
  size_t icc_size;
};

struct tsr_vendor {
  const char *name;
  /* Whether the file follows this vendor's conventions (from its directories alone). */
  bool (*detect)(const struct tsr_dirs *dirs);
  /* Fills out: levels, associated images, properties. A vendor's metadata that cannot be
   * understood fails with a message that says what is wrong. A vendor whose levels are read
   * otherwise than as TIFF tiles or strips gives them their tile source here
   * (source/tile_source.h), reading what it needs through dirs->source. */
  tessera_status (*open)(struct tsr_dirs *dirs, struct tsr_findings *out);
};

extern const struct tsr_vendor tsr_vendor_aperio;
extern const struct tsr_vendor tsr_vendor_hamamatsu;
extern const struct tsr_vendor tsr_vendor_philips;
extern const struct tsr_vendor tsr_vendor_leica;
extern const struct tsr_vendor tsr_vendor_ventana;
extern const struct tsr_vendor tsr_vendor_ome;
extern const struct tsr_vendor tsr_vendor_generic;

tessera_status tsr_format_detect(struct tsr_dirs *dirs, struct tsr_findings *out);

/* Formats that are no TIFF, found by the slide's path (MIRAX: a .mrxs file beside a folder of
 * files). open fills out (levels in out->levels, associated images as levels of their own)
 * and *source, the byte source whose identity keys the slide's tiles in the caches; limits are
 * the caller's open options. */
struct tsr_path_format {
  const char *name;
  bool (*detect)(const char *path);
  tessera_status (*open)(const char *path, const tessera_open_options *limits,
                         struct tsr_findings *out, struct tsr_byte_source **source);
};

extern const struct tsr_path_format tsr_format_mirax;
extern const struct tsr_path_format tsr_format_sakura;
extern const struct tsr_path_format tsr_format_vms;
extern const struct tsr_path_format tsr_format_dicom;

/* The format that claims path by its name and the files beside it, or NULL (then it is read
 * as a TIFF). */
const struct tsr_path_format *tsr_format_detect_path(const char *path);
void tsr_findings_free(struct tsr_findings *found);

/* ---- for the vendors (pyramid.c) ---- */

/* The pyramid of the main image: directory 0 and the smaller tiled copies of it, largest
 * first, one per size; out->is_level[i] tells which directories it took. */
tessera_status tsr_findings_pyramid(const struct tsr_dirs *dirs, struct tsr_findings *out);
void tsr_findings_add_associated(struct tsr_findings *out, size_t dir, const char *name);
/* tessera.comment from the first ImageDescription. */
void tsr_findings_common_props(const struct tsr_dirs *dirs, struct tsr_findings *out);
/* tessera.mpp-x/y from the first directory's resolution when in centimetres, and when inches
 * is set in inches too (the TIFF default unit, which a missing ResolutionUnit means): OpenSlide
 * 4 reads a generic TIFF's so, and cuCIM converts both units. No unit, or a zero or negative
 * resolution, gives none. */
void tsr_findings_resolution_mpp(const struct tsr_dirs *dirs, struct tsr_findings *out,
                                 bool inches);
/* Whether s begins with prefix (s may be NULL). */
bool tsr_starts_with(const char *s, const char *prefix);

#endif
