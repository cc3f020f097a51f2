#include "codec/codec.h"

#include <stdio.h>
#include <string.h>
#include <tiff.h>

enum { COMPRESSION_ZSTD_ = 50000, COMPRESSION_WEBP_ = 50001 };

static bool is_lossless_family(uint32_t c) {
  return c == COMPRESSION_NONE || c == COMPRESSION_LZW || c == COMPRESSION_PACKBITS ||
         c == COMPRESSION_ADOBE_DEFLATE || c == COMPRESSION_DEFLATE || c == COMPRESSION_ZSTD_;
}

static bool is_jp2k(uint32_t c) { return c == 33003 || c == 33004 || c == 33005; }

#define UNSUPPORTED(...) snprintf(f->unsupported, sizeof f->unsupported, __VA_ARGS__)

void tsr_codec_resolve(struct tsr_pixel_format *f, uint16_t bps, uint16_t sample_format,
                       uint16_t planar, uint16_t extra_samples, uint16_t first_extra) {
  f->unsupported[0] = '\0';
  f->decoded_channels = 0;
  f->alpha = false;
  f->premultiplied = false;
  f->invert = false;
  f->lossless_family = is_lossless_family(f->compression);
  if (!tsr_codec_find(f->compression)) {
    if (f->compression == COMPRESSION_OJPEG)
      UNSUPPORTED("unsupported compression 6 (old-style JPEG)");
    else
      UNSUPPORTED("unsupported compression %u", f->compression);
    return;
  }
  if (bps != 8) {
    UNSUPPORTED("unsupported %u bits per sample", bps);
    return;
  }
  if (sample_format != SAMPLEFORMAT_UINT) {
    UNSUPPORTED("unsupported sample format %u", sample_format);
    return;
  }
  if (planar != PLANARCONFIG_CONTIG && f->spp > 1) {
    UNSUPPORTED("unsupported separate colour planes");
    return;
  }
  if (f->lossless_family && f->predictor != 1 && f->predictor != 2) {
    UNSUPPORTED("unsupported predictor %u", f->predictor);
    return;
  }
  uint16_t ph = f->photometric, spp = f->spp;
  bool gray = ph == PHOTOMETRIC_MINISBLACK || ph == PHOTOMETRIC_MINISWHITE;
  bool rgb = ph == PHOTOMETRIC_RGB;
  if (f->compression == COMPRESSION_JPEG) {
    if (gray && spp == 1)
      f->decoded_channels = 1;
    else if ((rgb || ph == PHOTOMETRIC_YCBCR) && spp == 3)
      f->decoded_channels = 3;
  } else if (f->compression == COMPRESSION_WEBP_) {
    if (rgb && (spp == 3 || spp == 4))
      f->decoded_channels = (uint8_t)spp;
  } else if (is_jp2k(f->compression)) {
    if ((gray && spp == 1) || ((rgb || ph == PHOTOMETRIC_YCBCR) && (spp == 3 || spp == 4)))
      f->decoded_channels = (uint8_t)spp;
  } else {
    if ((gray && (spp == 1 || spp == 2)) || (rgb && (spp == 3 || spp == 4)))
      f->decoded_channels = (uint8_t)spp;
  }
  f->invert = ph == PHOTOMETRIC_MINISWHITE;
  if (!f->decoded_channels) {
    UNSUPPORTED("unsupported photometric interpretation %u with %u samples per pixel", ph, spp);
    return;
  }
  /* An extra sample of unspecified meaning is carried but not treated as alpha. */
  f->alpha = (spp == 2 || spp == 4) && extra_samples == 1 &&
             (first_extra == EXTRASAMPLE_ASSOCALPHA || first_extra == EXTRASAMPLE_UNASSALPHA);
  f->premultiplied = f->alpha && first_extra == EXTRASAMPLE_ASSOCALPHA;
}

tsr_decode_fn tsr_codec_find(uint32_t compression) {
  switch (compression) {
  case COMPRESSION_NONE: return tsr_decode_raw;
  case COMPRESSION_LZW: return tsr_decode_lzw;
  case COMPRESSION_PACKBITS: return tsr_decode_packbits;
  case COMPRESSION_ADOBE_DEFLATE:
  case COMPRESSION_DEFLATE: return tsr_decode_deflate;
  case COMPRESSION_ZSTD_: return tsr_decode_zstd;
  case COMPRESSION_JPEG: return tsr_decode_jpeg;
  case COMPRESSION_WEBP_: return tsr_decode_webp;
  case 33003:
  case 33004:
  case 33005: return tsr_decode_jp2k;
  case TSR_COMPRESSION_MOSAIC: return tsr_decode_mosaic;
  default: return NULL;
  }
}

size_t tsr_codec_needed_bytes(const struct tsr_pixel_format *fmt, const struct tsr_tile_out *out) {
  return (size_t)out->width * out->need_h * fmt->decoded_channels;
}

size_t tsr_codec_capacity(const struct tsr_pixel_format *fmt, const struct tsr_tile_out *out) {
  return (size_t)out->width * out->height * fmt->decoded_channels;
}

bool tsr_codec_crops(uint32_t compression) {
  return compression == COMPRESSION_JPEG || compression == TSR_COMPRESSION_MOSAIC;
}

void tsr_codec_postprocess(const struct tsr_pixel_format *fmt, uint8_t *pixels, size_t stride,
                           uint32_t w, uint32_t h) {
  size_t ch = fmt->decoded_channels, row = (size_t)w * ch;
  for (uint32_t y = 0; y < h; y++) {
    uint8_t *p = pixels + y * stride;
    if (fmt->lossless_family && fmt->predictor == 2)
      for (size_t i = ch; i < row; i++)
        p[i] = (uint8_t)(p[i] + p[i - ch]);
    /* Only the gray sample is inverted; an alpha sample stays as stored. */
    if (fmt->invert)
      for (size_t i = 0; i < row; i += ch)
        p[i] = (uint8_t)(255 - p[i]);
    /* Straight alpha out, as OpenSlide's un-premultiplied reads give it: c * 255 / a, rounded
     * down; colour 0 where alpha is 0. */
    if (fmt->premultiplied) {
      for (size_t i = 0; i < row; i += ch) {
        unsigned a = p[i + ch - 1];
        for (size_t c = 0; c + 1 < ch; c++) {
          unsigned v = a ? p[i + c] * 255u / a : 0;
          p[i + c] = (uint8_t)(v > 255 ? 255 : v);
        }
      }
    }
  }
}

TESSERA_API const char *tessera_compression_name(uint32_t compression) {
  switch (compression) {
  case COMPRESSION_NONE: return "none";
  case TSR_COMPRESSION_MOSAIC: return "mosaic";
  case COMPRESSION_CCITTRLE: return "ccitt-rle";
  case COMPRESSION_CCITTFAX3: return "ccitt-fax3";
  case COMPRESSION_CCITTFAX4: return "ccitt-fax4";
  case COMPRESSION_LZW: return "lzw";
  case COMPRESSION_OJPEG: return "old-jpeg";
  case COMPRESSION_JPEG: return "jpeg";
  case COMPRESSION_ADOBE_DEFLATE: return "deflate";
  case COMPRESSION_DEFLATE: return "deflate-pkzip";
  case COMPRESSION_PACKBITS: return "packbits";
  case 33003: return "jpeg2000-ycbcr";
  case 33004: return "jpeg2000";
  case 33005: return "jpeg2000-rgb";
  case 34712: return "jpeg2000-jp2000";
  case 34887: return "lerc";
  case 34925: return "lzma";
  case COMPRESSION_ZSTD_: return "zstd";
  case COMPRESSION_WEBP_: return "webp";
  case 50002: return "jpegxl";
  default: return NULL;
  }
}
