/* The immutable tables an open slide is made of. Everything here is written once by
 * tessera_open_ex and only read afterwards, so any number of threads may read it without a
 * lock. */
#ifndef TSR_SLIDE_INTERNAL_H
#define TSR_SLIDE_INTERNAL_H

#include <math.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "source/byte_source.h"
#include "tessera.h"

struct tsr_tile_source;

/* How a level's stored bytes become pixels; fixed at open. */
struct tsr_pixel_format {
  uint32_t compression;
  uint16_t photometric;
  uint16_t spp;             /* samples per pixel as stored */
  uint16_t predictor;       /* 1 none, 2 horizontal */
  uint16_t ycbcr_sub[2];    /* YCbCr subsampling factors (JPEG) */
  uint8_t decoded_channels; /* what the decoder writes: 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA */
  bool alpha;               /* the last decoded channel is alpha (else: ignored, opaque) */
  bool premultiplied;       /* that alpha is associated: colour is divided by it on decode */
  bool lossless_family;     /* codec yields stored samples: the predictor applies */
  bool invert;              /* MinIsWhite: decoded samples are inverted after decoding */
  uint8_t *jpeg_tables;     /* JPEGTables tag (owned), or NULL */
  size_t jpeg_tables_len;
  char unsupported[96]; /* non-empty: why this level cannot be decoded */
  /* JPEG decoded at 1 / jpeg_scale by libjpeg's scaled IDCT (2, 4 or 8: NDPI levels made from
   * a stored one, as OpenSlide makes them); 0 or 1: as stored. */
  uint8_t jpeg_scale;
  /* JPEG of 3 components decoded straight to opaque RGBA (libjpeg-turbo's JCS_EXT_RGBA;
   * decoded_channels 4): MIRAX's images painted into RGBA grid tiles. */
  bool jpeg_rgba;
  /* Decoded pixels of alpha 0 are none of the image's (MIRAX: where no camera image lies):
   * they take the read's fill, as pixels outside the level do (decoded_channels 4). */
  bool transparent_is_fill;
  /* JPEG of any colour space libjpeg converts to grayscale (1 or 3 components) decoded to one
   * channel as its JCS_GRAYSCALE output makes it: Y of YCbCr, the luma of RGB (decoded_channels
   * 1). Sakura's tile planes, which OpenSlide decodes so. */
  bool jpeg_luma;
};

struct tsr_level {
  int64_t width, height;
  double downsample;
  uint32_t tile_w, tile_h; /* strips: image width x rows per strip */
  bool tiled;
  uint32_t across, down; /* tiles (or strips) per row and column */
  uint64_t ntiles;
  uint64_t *offsets; /* ntiles entries each */
  uint64_t *bytecounts;
  struct tsr_pixel_format fmt;
  uint32_t directory; /* index of its TIFF directory, for messages */
  /* How a tile's stored bytes are fetched and made the stream a codec decodes (a TIFF tile or
   * strip, an NDPI restart interval, a tile of an image held in memory: source/tile_source.h),
   * chosen at open, and what that source keeps for the level (owned; NULL for TIFF tiles). */
  const struct tsr_tile_source *source;
  void *source_data;
  /* Where the stored image (its tiles) lies in the level: its top-left pixel at (origin_x,
   * origin_y), image_w x image_h pixels; image_w 0: the image is the whole level (all but
   * Leica's levels, which are the slide's collection with the scanned image placed in it,
   * background around it). */
  int64_t origin_x, origin_y;
  int64_t image_w, image_h;
  /* 0, or the index in the slide's levels of another image placed in this level (a Leica
   * level composited from several main images): a level of the same size and downsample
   * holding that image's tiles, origin and extent, whose own next_area names the next (0
   * ends the chain). Such areas lie after the associated images (tessera_slide.nareas).
   * A composite level is its background with each image painted where it lies; where they
   * overlap, the image earlier in the chain shows (OpenSlide's order: it paints them one by
   * one with cairo's SATURATE operator, which leaves a pixel already painted as it is). */
  int32_t next_area;
};

/* Whether the level is composited from several placed images (next_area). */
static inline bool tsr_level_composite(const struct tsr_level *lv) { return lv->next_area != 0; }

/* The part of the level that the stored image covers, clipped to the level: [x0, x1) x
 * [y0, y1) in level pixels (empty when x0 >= x1 or y0 >= y1). */
static inline void tsr_level_image(const struct tsr_level *lv, int64_t *x0, int64_t *y0,
                                   int64_t *x1, int64_t *y1) {
  if (lv->image_w == 0) {
    *x0 = *y0 = 0;
    *x1 = lv->width;
    *y1 = lv->height;
    return;
  }
  *x0 = lv->origin_x > 0 ? lv->origin_x : 0;
  *y0 = lv->origin_y > 0 ? lv->origin_y : 0;
  int64_t ex = lv->origin_x + lv->image_w, ey = lv->origin_y + lv->image_h;
  *x1 = ex < lv->width ? ex : lv->width;
  *y1 = ey < lv->height ? ey : lv->height;
}

/* The level coordinate of level-0 coordinate v: floor(v / downsample), as the design says.
 * Far outside the level (beyond +-2^62, where a downsample near 1 could not even be converted
 * back to an integer) it is clamped to +-2^62, still wholly outside. */
static inline int64_t tsr_level_coord(const struct tsr_level *lv, int64_t v) {
  if (lv->downsample == 1.0)
    return v;
  double q = floor((double)v / lv->downsample);
  if (q >= 0x1p62)
    return (int64_t)1 << 62;
  if (q <= -0x1p62)
    return -((int64_t)1 << 62);
  return (int64_t)q;
}

/* The index under which the cache keeps tile `index` of lv: levels decoded at a JPEG scale
 * share their stored level's directory, and must not share its tiles. */
static inline uint64_t tsr_level_cache_index(const struct tsr_level *lv, uint64_t index) {
  return lv->fmt.jpeg_scale > 1 ? index | (uint64_t)lv->fmt.jpeg_scale << 56 : index;
}

/* Opens the slide whose bytes src gives (taken over: closed with the slide, or at once on
 * failure); name is what tessera_open_ex was given, for the slide's path. tessera_open_ex is
 * this over a file's byte source; tests open slides through other sources with it. */
tessera_status tsr_slide_open_source(struct tsr_byte_source *src, const char *name,
                                     const tessera_open_options *options, tessera_slide **out);

/* Frees the tables a level owns. */
void tsr_level_free(struct tsr_level *lv);

struct tsr_property {
  char *key;
  char *value;
};

/* Where a level's latest misses in the tile cache fell, for cache.c's admission: the tile
 * bounds of the misses of the epoch under way, and of the last whole epoch. Relaxed atomics:
 * a race moves one bound, or ends an epoch a miss early or late, and so changes an admission
 * at most. */
struct tsr_miss_region {
  atomic_uint_fast64_t misses; /* in the epoch under way */
  /* Under way: UINT32_MAX - the least column and row, the greatest + 1; 0 for none. */
  atomic_uint_fast64_t lo_x, lo_y, hi_x, hi_y;
  /* The last whole epoch's: first column << 32 | first row, and last + 1 alike; 0: none. */
  atomic_uint_fast64_t last_lo, last_hi;
};

struct tessera_slide {
  struct tsr_byte_source *source; /* every read of the slide's bytes: no seek state, no lock */
  char *path;
  uint64_t file_size;    /* the source's size, */
  struct tsr_file_id id; /* and its identity for the tile cache, both taken at open */
  tessera_open_options limits;
  struct tsr_level *levels;
  struct tsr_miss_region *regions; /* one a level (associated images too), zeroed at open */
  int32_t nlevels;
  struct tsr_property *props; /* sorted by key */
  size_t nprops;
  char **associated;
  size_t nassociated;
  /* Images placed in composite levels beyond each level's first (tsr_level.next_area), at
   * levels[nlevels + nassociated ...] */
  size_t nareas;
  const char *vendor;
  uint8_t background;
  uint8_t *icc; /* level 0's ICC profile (owned), or NULL */
  size_t icc_size;
  /* 0, or 1 + the directory OpenSlide's quickhash-1 hashes instead of the last level's
   * (format.h's quickhash_dir), for libtessera-openslide */
  size_t quickhash_dir;
};

#endif
