/* Tile sources: how the stored bytes of one tile of a level are fetched (through the slide's
 * byte source, source/byte_source.h) and made the stream a codec decodes. A level's source is
 * chosen when the slide is opened, by what its directory and vendor say, and kept in
 * tsr_level.source; reading never branches on a vendor, only through this table:
 *  - tsr_tiff_tiles, tsr_tiff_strips (source/tiff_tiles.c): a TIFF tile or strip, its bytes at the
 *    offset and of the byte count the TIFF gives (the default, set by the TIFF walk);
 *  - tsr_ndpi_intervals (source/ndpi_intervals.c): a Hamamatsu NDPI restart interval, made a JPEG
 * of its own with the strip's header (set by the Hamamatsu vendor, format/ndpi.c, when the
 *    McuStarts tag fits);
 *  - tsr_memory_tiles (source/memory_tiles.c): a tile of an image held in memory, with no
 *    directory behind it (a Philips label in the XML; set by format/vendor-philips.c);
 *  - tsr_mosaic_tiles (source/mosaic_tiles.c): a tile of a regular grid laid over images
 *    placed at positions of their own, which may overlap (MIRAX's camera images, in data
 *    files of their own; set by format/vendor-mirax.c): the stream is the parts of the images
 *    the tile covers with their bytes, which the mosaic codec paints (codec/mosaic.c);
 *  - a Hamamatsu VMS restart interval of one of the slide's JPEG files, or a tile of a VMU
 *    slide's NGR columns (kept in format/vendor-vms.c, the one vendor that uses them);
 *  - tsr_sqlite_tiles (source/sqlite_tiles.c): a blob, or three (a tile's colour planes,
 *    made RGB), of an SQLite database, read through SQLite (Sakura; format/vendor-sakura.c).
 *  - tsr_dicom_frames (source/dicom_frames.c): a DICOM frame, native or one or more
 *    encapsulated fragments (set by format/vendor-dicom.c).
 * The CPU's codecs get a tile's stream from tsr_tile_stream; the CUDA back end gets the whole
 * JPEG stream nvJPEG takes from tsr_tile_source_stream. Everything here reads only tables
 * fixed at open: any number of threads may call it, with no lock. */
#ifndef TSR_SOURCE_TILE_SOURCE_H
#define TSR_SOURCE_TILE_SOURCE_H

#include "alloc.h"
#include "codec/codec.h"
#include "slide_internal.h"

/* A tile's stream, for its codec: data holds len bytes (in the caller's scratch, or in memory
 * the level holds). */
struct tsr_stream {
  const uint8_t *data;
  size_t len;
  struct tsr_jpeg_hints jpeg;
};

struct tsr_tile_source {
  const char *unit; /* what one tile is called in messages: "tile", "strip", ... */
  /* Whether the file leaves tile index out: there is nothing to read, and the tile is
   * painted as background. */
  bool (*missing)(const struct tsr_level *lv, uint64_t index);
  /* The stream of tile index (not missing) for the level's codec, in buf (grown to hold it)
   * or in memory the level holds. */
  tessera_status (*stream)(const tessera_slide *s, const struct tsr_level *lv, uint64_t index,
                           struct tsr_scratch *buf, struct tsr_stream *out);
  /* For nvJPEG, a whole JPEG stream (no tables kept apart): the bytes it takes at most, 0 when
   * the tile has none to give; and writing it into dst, which holds that many, its length
   * in *len (0 when the tile's bytes cannot be made one: the CPU decodes it then). NULL where
   * the source gives the GPU nothing (its tiles are decoded on the CPU). */
  size_t (*device_stream_size)(const tessera_slide *s, const struct tsr_level *lv, uint64_t index);
  tessera_status (*device_stream)(const tessera_slide *s, const struct tsr_level *lv,
                                  uint64_t index, uint8_t *dst, size_t *len);
  /* Frees the level's source_data; NULL where the source keeps none. */
  void (*free)(void *data);
};

extern const struct tsr_tile_source tsr_tiff_tiles;
extern const struct tsr_tile_source tsr_tiff_strips;
extern const struct tsr_tile_source tsr_ndpi_intervals;
extern const struct tsr_tile_source tsr_memory_tiles;
extern const struct tsr_tile_source tsr_mosaic_tiles;
extern const struct tsr_tile_source tsr_sqlite_tiles;
extern const struct tsr_tile_source tsr_dicom_frames;

/* ---- for the readers ---- */

static inline bool tsr_tile_missing(const struct tsr_level *lv, uint64_t index) {
  return lv->source->missing(lv, index);
}

/* The stream of tile index (not missing) of lv, for its codec; counts a read. */
tessera_status tsr_tile_stream(const tessera_slide *s, const struct tsr_level *lv, uint64_t index,
                               struct tsr_scratch *buf, struct tsr_stream *out);

/* The CUDA back end's: bytes the whole JPEG stream of tile index of level takes at most (0:
 * none to give, the CPU decodes the tile), and the stream itself into dst, which holds that
 * many. *len is its length, 0 when the tile's bytes cannot be made a whole stream; a tile the
 * file leaves out sets *missing. On failure the message names the level and tile. */
size_t tsr_tile_source_stream_size(const tessera_slide *s, int32_t level, uint64_t index);
tessera_status tsr_tile_source_stream(const tessera_slide *s, int32_t level, uint64_t index,
                                      uint8_t *dst, size_t *len, bool *missing);

/* Tiles read so far by this process (missing tiles not counted), on either device, for tests
 * that check a tile needed by several patches is read once. */
uint64_t tsr_tile_reads(void);

/* ---- for the tile sources ---- */

/* A TIFF tile's bytes are missing when its offset or byte count is 0. */
bool tsr_tiff_tile_missing(const struct tsr_level *lv, uint64_t index);

/* Reads count bytes at offset of the slide's byte source into dst, which holds them, after
 * checking them against max_tile_bytes and the source's size. */
tessera_status tsr_tile_fetch(const tessera_slide *s, uint64_t offset, uint64_t count,
                              uint8_t *dst);
/* The same into buf, grown (after the checks) to hold `before` bytes and then them; *at is
 * where they start (buf->data + before). */
tessera_status tsr_tile_fetch_into(const tessera_slide *s, uint64_t offset, uint64_t count,
                                   struct tsr_scratch *buf, size_t before, uint8_t **at);

/* A level's data for tsr_ndpi_intervals: the JPEG header that starts its strip, SOI up to and
 * including SOS, with the DRI left out (each interval is decoded as a whole image, which also
 * lets libjpeg-turbo use its faster Huffman decoder); each tile's entropy-coded bytes follow
 * it. size_at is where in it the frame's height and width lie: each tile is decoded as a
 * JPEG of the tile's size. */
struct tsr_ndpi_header {
  size_t len, size_at;
  /* The stored level's size: an interval of a level decoded at a JPEG scale is decoded at its
   * stored size, which that level's (divided, rounded down) cannot give at a partial edge. */
  int64_t width, height;
  uint8_t bytes[];
};

/* A level's data for tsr_memory_tiles: the image's bytes, tile i at offsets[i] of them. */
struct tsr_memory_image {
  uint8_t *bytes; /* owned */
  size_t size;
};

/* A level's data for tsr_dicom_frames (NULL: every frame lies whole): a bit per frame, set
 * where the frame spans several fragments (its range then holds their items' headers). */
struct tsr_dicom_frames {
  uint8_t *fragmented; /* owned */
};

/* A level's data for tsr_mosaic_tiles. The level's tiles are tile_w x tile_h RGBA (alpha
 * associated) of the mosaic codec (codec/codec.h); tile i is painted from
 * pieces[offsets[i] - 1] onwards, bytecounts[i] of them, in order, each over those before it
 * (so the last wins where they overlap); a tile no image covers has bytecount 0 (missing: the
 * reader fills it). */
struct tsr_mosaic_image {
  uint64_t offset;
  uint32_t length;
  uint32_t file; /* in the mosaic's file set */
};

/* The part w x h of an image at (src_x, src_y), its top-left corner at (pos_x, pos_y) of the
 * tile in 1/65536 pixel, touching the tile's pixels foot_w x foot_h from (dst_x, dst_y) (see
 * struct tsr_mosaic_part, codec/codec.h). */
struct tsr_mosaic_piece {
  uint32_t image;
  uint32_t src_x, src_y, dst_x, dst_y, w, h;
  uint32_t foot_w, foot_h;
  int64_t pos_x, pos_y;
};

struct tsr_mosaic {
  struct tsr_file_set *files; /* a reference: the slide's levels share the set */
  uint32_t image_w, image_h;  /* every image's size: an image of another size fails */
  enum tsr_mosaic_format format;
  uint8_t background; /* the colour (alpha 0) of the pixels no image covers */
  struct tsr_mosaic_image *images;
  size_t nimages;
  struct tsr_mosaic_piece *pieces;
  size_t npieces;
  /* For OpenSlide's API (compat/openslide_properties.c): whether OpenSlide gives the level a
   * tile size (the same as tessera's). */
  bool openslide_tile_size;
  /* format TSR_MOSAIC_TIFF (Ventana BIF): the images are tiles of a TIFF directory, read
   * from the slide's byte source (files NULL) and decoded with tiff_fmt (its tables owned). */
  struct tsr_pixel_format tiff_fmt;
  /* Every rectangle placed (tsr_mosaic_lay keeps a copy), for regions painted as OpenSlide
   * paints one (tsr_mosaic_paint_region). */
  struct tsr_mosaic_placed *placed;
  size_t nplaced;
  /* OpenSlide hands cairo the level's images whole and without alpha (RGB24: MIRAX levels
   * whose images are not cut into subtiles). */
  bool whole_rgb24;
};

void tsr_mosaic_free(struct tsr_mosaic *m);

/* Makes lv a level of the mosaic codec read through tsr_mosaic_tiles: RGBA of associated
 * alpha, pixels of alpha 0 taking the read's fill. */
void tsr_mosaic_level_format(struct tsr_level *lv);

/* An image's w x h rectangle at (src_x, src_y) placed with its top-left corner at (fixed_x,
 * fixed_y) of the level in 1/65536 pixel (cairo's 16.16 fixed point). */
struct tsr_mosaic_placed {
  uint32_t image, src_x, src_y, w, h;
  int64_t fixed_x, fixed_y;
};

/* Lays lv's grid of tile_w x tile_h tiles over its width x height and hands each tile the
 * pieces of the n placed rectangles it touches, in their order (the last painted over the
 * others, as OpenSlide shows them: placed is sorted so); sets lv's tiling and the mosaic's
 * pieces. A rectangle between pixels touches the pixels from the one its corner lies in to
 * the one its far edge lies in. */
tessera_status tsr_mosaic_lay(struct tsr_mosaic *mo, struct tsr_level *lv, uint32_t tile_w,
                              uint32_t tile_h, const struct tsr_mosaic_placed *placed, size_t n,
                              uint64_t max_tiles);

/* The w x h region of a mosaic level whose top-left corner is (x, y) in level pixels (a
 * fraction kept), painted as OpenSlide 3.4.1 paints that region (one of its read_region's
 * pieces): every placed rectangle that reaches it (past the level's edge too), translated by
 * its position less (x, y), and pixman's 8-bit path for a whole image without alpha whose
 * samples all lie inside it. Into rgba (premultiplied RGBA, rows stride bytes apart), zero
 * where nothing is painted. For the OpenSlide fronts (openslide/fractional.c). */
tessera_status tsr_mosaic_paint_region(const tessera_slide *s, int32_t level, double x, double y,
                                       int64_t w, int64_t h, uint8_t *rgba, size_t stride);

#endif
