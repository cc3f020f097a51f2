/* The immutable tables an open slide is made of. Everything here is written once by
 * tessera_open_ex and only read afterwards, so any number of threads may read it without a
 * lock. */
#ifndef TSR_SLIDE_INTERNAL_H
#define TSR_SLIDE_INTERNAL_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>

#include "tessera.h"

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
  /* Hamamatsu NDPI restart intervals as tiles (tiff/ndpi.h): the JPEG header that starts the
   * level's strip, SOI up to and including SOS (owned), which each tile's entropy-coded bytes
   * follow; NULL for every other level. jpeg_sof_size is where in it the SOF's height and
   * width lie: each tile is decoded as a JPEG of the tile's size. */
  uint8_t *jpeg_header;
  size_t jpeg_header_len;
  size_t jpeg_sof_size;
  char unsupported[96]; /* non-empty: why this level cannot be decoded */
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
  /* An image with no directory behind it (a Philips label stored as base64 in the XML): the
   * tiles' bytes, at offsets[i] of this buffer instead of the file. Owned; NULL otherwise. */
  const uint8_t *blob;
  size_t blob_size;
};

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

/* Frees the tables a level owns. */
void tsr_level_free(struct tsr_level *lv);

struct tsr_property {
  char *key;
  char *value;
};

/* What tells one file from another for the tile cache, taken at open. The status-change
 * time is there because the others can all stay the same across a rewrite in place (cp -p,
 * rsync -t --inplace and tar x set the modification time back); no writer can set ctime. */
struct tsr_file_id {
  uint64_t device, inode, size;
  int64_t mtime_ns, ctime_ns;
};

struct tessera_slide {
  int fd; /* shared by all readers through pread(): no seek state */
  char *path;
  uint64_t file_size;
  struct tsr_file_id id;
  tessera_open_options limits;
  struct tsr_level *levels;
  int32_t nlevels;
  struct tsr_property *props; /* sorted by key */
  size_t nprops;
  char **associated;
  size_t nassociated;
  const char *vendor;
  uint8_t background;
};

#endif
