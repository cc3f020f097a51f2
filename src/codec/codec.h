/* One decode interface for every TIFF compression. A codec turns one tile's (or strip's)
 * compressed bytes into 8-bit interleaved samples; it knows nothing of levels, regions or
 * batches. */
#ifndef TSR_CODEC_H
#define TSR_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "slide_internal.h"

/* What a tile source knows of a JPEG stream that the stream itself cannot say (zero for any
 * other stream, and for a JPEG the source knows nothing more of). */
struct tsr_jpeg_hints {
  /* Nonzero: the stream is one row of MCUs with no restart markers, and its frame header's
   * height and width (4 bytes) lie at this offset. Its MCUs are then decoded left to right
   * and no further than a crop needs: the codec may lower that width. */
  size_t size_at;
  /* No byte may lie between the image's last MCU and the EOI: the stream holds exactly one
   * image's data, and more means the source cut it in the wrong place. (Other streams may
   * carry padding there, which some scanners write.) */
  bool exact_end;
};

/* Where a codec writes. The tile is width x height pixels of fmt->decoded_channels bytes; its
 * first need_w x need_h pixels (the part inside the image) must be decodable, and codecs fail
 * if the data cannot provide them.
 *  - Codecs that crop (tsr_codec_crops) write only the crop rectangle (inside need_w x
 *    need_h): tile pixel (crop_x + i, crop_y + j) goes to pixels + j * stride + i * channels.
 *  - The others write the whole tile to pixels, rows width * channels apart (stride), which
 *    holds width x height pixels; crop is ignored. */
struct tsr_tile_out {
  uint8_t *pixels;
  uint32_t width, height;
  uint32_t need_w, need_h;
  size_t stride;
  uint32_t crop_x, crop_y, crop_w, crop_h;
  struct tsr_jpeg_hints jpeg; /* read by the JPEG codec only */
};

typedef tessera_status (*tsr_decode_fn)(const struct tsr_pixel_format *fmt, const uint8_t *src,
                                        size_t len, const struct tsr_tile_out *out);

/* Sets fmt->decoded_channels, alpha, premultiplied, invert and unsupported from the way the
 * samples are stored; first_extra is the ExtraSamples type of the first extra sample. */
void tsr_codec_resolve(struct tsr_pixel_format *fmt, uint16_t bits_per_sample,
                       uint16_t sample_format, uint16_t planar, uint16_t extra_samples,
                       uint16_t first_extra);

/* The decoder of a compression, or NULL. */
tsr_decode_fn tsr_codec_find(uint32_t compression);

/* Whether the decoder of a compression decodes just a crop rectangle. */
bool tsr_codec_crops(uint32_t compression);

/* Undoes the horizontal predictor (lossless codecs, whose rows then start at the tile's left
 * edge), MinIsWhite inversion and associated (premultiplied) alpha, in place, on w x h decoded
 * pixels whose rows are stride bytes apart. */
void tsr_codec_postprocess(const struct tsr_pixel_format *fmt, uint8_t *pixels, size_t stride,
                           uint32_t w, uint32_t h);

/* The codecs. Lossless ones (raw, lzw, packbits, deflate, zstd) produce stored samples. */
tessera_status tsr_decode_raw(const struct tsr_pixel_format *, const uint8_t *, size_t,
                              const struct tsr_tile_out *);
tessera_status tsr_decode_lzw(const struct tsr_pixel_format *, const uint8_t *, size_t,
                              const struct tsr_tile_out *);
tessera_status tsr_decode_packbits(const struct tsr_pixel_format *, const uint8_t *, size_t,
                                   const struct tsr_tile_out *);
tessera_status tsr_decode_deflate(const struct tsr_pixel_format *, const uint8_t *, size_t,
                                  const struct tsr_tile_out *);
tessera_status tsr_decode_zstd(const struct tsr_pixel_format *, const uint8_t *, size_t,
                               const struct tsr_tile_out *);
/* JPEG: a whole stream, or one abbreviated by the level's JPEGTables (fmt->jpeg_tables). */
tessera_status tsr_decode_jpeg(const struct tsr_pixel_format *, const uint8_t *, size_t,
                               const struct tsr_tile_out *);
tessera_status tsr_decode_webp(const struct tsr_pixel_format *, const uint8_t *, size_t,
                               const struct tsr_tile_out *);
tessera_status tsr_decode_jp2k(const struct tsr_pixel_format *, const uint8_t *, size_t,
                               const struct tsr_tile_out *);

/* The mosaic codec (codec/mosaic.c): a grid tile painted from parts of placed images
 * (MIRAX; made by source/mosaic_tiles.c). No TIFF compression: above the 16-bit codes. Its
 * stream is a struct tsr_mosaic_stream, n struct tsr_mosaic_part, then each part's image
 * bytes in turn; it decodes to RGBA (4 channels, alpha associated), alpha 0 where no part
 * lies, alpha between 0 and 255 where parts placed between pixels leave pixels partly
 * covered (as OpenSlide 3.4.1 leaves them). */
#define TSR_COMPRESSION_MOSAIC 0x10001u

/* TSR_MOSAIC_TIFF: an image is a tile of a TIFF directory (Ventana BIF), decoded with the
 * stream's tiff_fmt (that directory's pixel format, which the level keeps). */
enum tsr_mosaic_format { TSR_MOSAIC_JPEG, TSR_MOSAIC_PNG, TSR_MOSAIC_BMP, TSR_MOSAIC_TIFF };

struct tsr_mosaic_stream {
  uint32_t n;
  uint8_t background;                      /* the colour of pixels no part covers */
  uint64_t png_limit;                      /* bytes a whole decoded PNG image may take */
  const struct tsr_pixel_format *tiff_fmt; /* TSR_MOSAIC_TIFF's parts: how to decode them */
  /* The rectangle decoded is one of OpenSlide's regions (tsr_mosaic_paint_region), not a
   * level's tile: how pixman paints an opaque part between pixels depends on it. */
  bool region;
};

/* The part w x h at (src_x, src_y) of an image_w x image_h image of length bytes, its top-left
 * corner at (pos_x, pos_y) of the tile in 1/65536 pixel (16.16 fixed point); it touches the
 * tile's pixels foot_w x foot_h from (dst_x, dst_y). A part at whole pixels (both positions
 * multiples of 65536) is the pixels it touches: foot_w == w, foot_h == h, pos = dst * 65536;
 * one between pixels is painted as OpenSlide 3.4.1 paints it (codec/mosaic.c). image, file
 * and file_offset only name it in messages. */
struct tsr_mosaic_part {
  uint32_t src_x, src_y, dst_x, dst_y, w, h, image_w, image_h, length, format, image, file;
  uint64_t file_offset;
  int64_t pos_x, pos_y;
  uint32_t foot_w, foot_h;
  /* An image OpenSlide hands cairo without alpha (RGB24): on whole pixels, and in one of
   * OpenSlide's regions where all its samples lie inside it, pixman paints it in 8 bits
   * (codec/mosaic.c). */
  uint32_t opaque;
};

tessera_status tsr_decode_mosaic(const struct tsr_pixel_format *, const uint8_t *, size_t,
                                 const struct tsr_tile_out *);

/* The largest width or height libjpeg decodes (its JPEG_MAX_DIMENSION). */
#define TSR_JPEG_MAX_SIDE 65500

/* What a JPEG header (SOI up to and including SOS, no entropy-coded data) says about how its
 * image can be split at restart markers. */
struct tsr_jpeg_geometry {
  uint32_t width, height;    /* of the SOF */
  uint32_t restart_interval; /* MCUs from one restart marker to the next; 0 without DRI */
  uint32_t mcu_w, mcu_h;     /* pixels one MCU covers */
  uint8_t components;
  bool one_scan; /* sequential Huffman coding with every component in the one scan, so each
                  * restart interval can be decoded on its own */
};

/* Reads the geometry of a JPEG header; fails if libjpeg cannot read it. */
tessera_status tsr_jpeg_read_geometry(const uint8_t *header, size_t len,
                                      struct tsr_jpeg_geometry *out);

/* Bytes a lossless codec must produce for out (need_h full rows), and the buffer capacity. */
size_t tsr_codec_needed_bytes(const struct tsr_pixel_format *fmt, const struct tsr_tile_out *out);
size_t tsr_codec_capacity(const struct tsr_pixel_format *fmt, const struct tsr_tile_out *out);

#endif
