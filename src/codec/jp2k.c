/* JPEG 2000 (TIFF compression 33003, 33004, 33005) through OpenJPEG. 33003 and 33004 hold
 * YCbCr components that are converted to RGB here; 33005 holds RGB as it is. */
#include <math.h>
#include <openjpeg.h>
#include <string.h>

#include "codec/codec.h"
#include "error.h"

struct memory_stream {
  const uint8_t *data;
  size_t len, pos;
};

static OPJ_SIZE_T stream_read(void *buf, OPJ_SIZE_T n, void *user) {
  struct memory_stream *m = user;
  if (m->pos >= m->len)
    return (OPJ_SIZE_T)-1;
  size_t left = m->len - m->pos;
  if (n > left)
    n = left;
  memcpy(buf, m->data + m->pos, n);
  m->pos += n;
  return n;
}

static OPJ_OFF_T stream_skip(OPJ_OFF_T n, void *user) {
  struct memory_stream *m = user;
  if (n < 0) {
    if ((size_t)-n > m->pos)
      n = -(OPJ_OFF_T)m->pos;
  } else if ((size_t)n > m->len - m->pos) {
    n = (OPJ_OFF_T)(m->len - m->pos);
  }
  m->pos = (size_t)((OPJ_OFF_T)m->pos + n);
  return n;
}

static OPJ_BOOL stream_seek(OPJ_OFF_T n, void *user) {
  struct memory_stream *m = user;
  if (n < 0 || (size_t)n > m->len)
    return OPJ_FALSE;
  m->pos = (size_t)n;
  return OPJ_TRUE;
}

static void ignore_message(const char *msg, void *user) { (void)msg, (void)user; }

static void keep_error(const char *msg, void *user) {
  char *dst = user;
  if (!dst[0]) {
    strncpy(dst, msg, 199);
    dst[199] = '\0';
    size_t n = strlen(dst);
    if (n && dst[n - 1] == '\n')
      dst[n - 1] = '\0';
  }
}

/* Tiles of one JPEG 2000 codestream: encoders cut a slide tile into a handful at most. */
#define TSR_JP2K_MAX_TILES 4096

static uint32_t be32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Checks a raw codestream's image, components and tile grid (its SIZ marker) before OpenJPEG
 * sees it: OpenJPEG allocates per-tile, per-component state while reading the header, so a
 * few hostile bytes could otherwise cost gigabytes before any size can be checked. A slide's
 * tile is one image of at most four components, cut into a few JPEG 2000 tiles at most. */
static tessera_status check_siz(const uint8_t *src, size_t len, const struct tsr_tile_out *out) {
  if (len < 4 + 38 || src[0] != 0xFF || src[1] != 0x4F || src[2] != 0xFF || src[3] != 0x51)
    return tsr_error(TESSERA_E_CORRUPT, "JPEG 2000 data does not start with SOC and SIZ");
  const uint8_t *siz = src + 6; /* after the marker and its length */
  uint32_t xs = be32(siz + 2), ys = be32(siz + 6), xo = be32(siz + 10), yo = be32(siz + 14);
  uint32_t xt = be32(siz + 18), yt = be32(siz + 22), xto = be32(siz + 26), yto = be32(siz + 30);
  unsigned components = (unsigned)siz[34] << 8 | siz[35];
  if (xs <= xo || ys <= yo || xt == 0 || yt == 0 || xto > xo || yto > yo)
    return tsr_error(TESSERA_E_CORRUPT, "JPEG 2000 image or tile grid is malformed");
  if (components < 1 || components > 4)
    return tsr_error(TESSERA_E_CORRUPT, "JPEG 2000 image has %u components (1 to 4 expected)",
                     components);
  if (xs - xo > out->width || ys - yo > out->height)
    return tsr_error(TESSERA_E_CORRUPT, "JPEG 2000 image is %ux%u, the tile is %ux%u", xs - xo,
                     ys - yo, out->width, out->height);
  uint64_t tiles = ((uint64_t)(xs - xto) + xt - 1) / xt * (((uint64_t)(ys - yto) + yt - 1) / yt);
  if (tiles > (uint64_t)out->width * out->height || tiles > TSR_JP2K_MAX_TILES)
    return tsr_error(TESSERA_E_CORRUPT, "JPEG 2000 data has %llu tiles in a %ux%u image",
                     (unsigned long long)tiles, xs - xo, ys - yo);
  return TESSERA_OK;
}

/* The codestream inside a JP2 file (its contiguous codestream box), or NULL. */
static const uint8_t *jp2_codestream(const uint8_t *src, size_t len, size_t *cs_len) {
  size_t at = 0;
  while (len - at >= 8) {
    uint64_t box = be32(src + at), header = 8;
    if (box == 1) { /* a 64-bit length follows the type */
      if (len - at < 16)
        return NULL;
      box = (uint64_t)be32(src + at + 8) << 32 | be32(src + at + 12);
      header = 16;
    } else if (box == 0) { /* to the end of the file */
      box = len - at;
    }
    if (box < header || box > len - at)
      return NULL;
    if (memcmp(src + at + 4, "jp2c", 4) == 0) {
      *cs_len = (size_t)(box - header);
      return src + at + header;
    }
    at += (size_t)box;
  }
  return NULL;
}

static uint8_t clamp8(int v) { return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v); }

/* The sample of component c at pixel (x, y), honouring component subsampling. */
static int sample_at(const opj_image_comp_t *c, uint32_t x, uint32_t y) {
  uint32_t cx = x / (c->dx ? c->dx : 1), cy = y / (c->dy ? c->dy : 1);
  if (cx >= c->w)
    cx = c->w - 1;
  if (cy >= c->h)
    cy = c->h - 1;
  int v = c->data[(size_t)cy * c->w + cx];
  if (c->sgnd)
    v += 1 << (c->prec - 1);
  if (c->prec > 8)
    v >>= c->prec - 8;
  else if (c->prec < 8)
    v <<= 8 - c->prec;
  return v;
}

/* Which YCbCr to RGB arithmetic a tile's components need; each is the one of the reader that
 * tessera must equal on such files. */
enum ycbcr_rule {
  YCBCR_NONE,      /* the components are RGB (33005), or not three */
  YCBCR_OPENSLIDE, /* Aperio's 33003, read by OpenSlide: rounded fixed-point products */
  YCBCR_LIBVIPS,   /* 33004, and 33003 written by others, read by libvips: truncated products */
};

/* Aperio stores 33003 as plain YCbCr components, without a multiple-component transform
 * (their chroma is often halved, which rules a transform out); OpenSlide reads those files.
 * A 33003 codestream that signals a transform comes from another writer (libvips' own
 * output relabelled), which only libvips reads; libvips converts every 3-component 33003 and
 * 33004 tile, after OpenJPEG has undone the transform. */
static enum ycbcr_rule ycbcr_rule_of(const struct tsr_pixel_format *fmt, const opj_image_t *img,
                                     bool mct) {
  if (img->numcomps != 3)
    return YCBCR_NONE;
  if (fmt->compression == 33003)
    return mct ? YCBCR_LIBVIPS : YCBCR_OPENSLIDE;
  return fmt->compression == 33004 ? YCBCR_LIBVIPS : YCBCR_NONE;
}

/* OpenSlide's conversion, by chroma value: JPEG's full-range constants, each product rounded
 * half away from zero, green's two summed in 16.16 fixed point (the 0.5 in one rounds the sum)
 * and floored. The doubles are the ones OpenSlide rounds, so every rounding is the same. */
struct openslide_ycbcr {
  int r_cr[256], b_cb[256];
  int32_t g_cb[256], g_cr[256];
};

static void openslide_ycbcr_init(struct openslide_ycbcr *t) {
  for (int i = 0; i < 256; i++) {
    int c = i - 128;
    t->r_cr[i] = (int)round(1.402 * c);
    t->b_cb[i] = (int)round(1.772 * c);
    t->g_cb[i] = (int32_t)round(65536 * (0.5 - 0.34414 * c));
    t->g_cr[i] = (int32_t)round(65536 * -0.71414 * c);
  }
}

/* v / 65536 rounded toward minus infinity (an arithmetic shift, without relying on one). */
static int floor_div_65536(int32_t v) {
  return (int)(v >= 0 ? v / 65536 : -((-v + 65535) / 65536));
}

static tessera_status copy_image(const struct tsr_pixel_format *fmt, const opj_image_t *img,
                                 bool mct, const struct tsr_tile_out *out) {
  unsigned ch = fmt->decoded_channels;
  if (img->numcomps != ch)
    return tsr_error(TESSERA_E_CORRUPT, "JPEG 2000 data has %u components, the TIFF says %u",
                     img->numcomps, ch);
  uint32_t w = img->x1 - img->x0, h = img->y1 - img->y0;
  if (w < out->need_w || h < out->need_h)
    return tsr_error(TESSERA_E_CORRUPT, "JPEG 2000 image is %ux%u, the tile needs %ux%u", w, h,
                     out->need_w, out->need_h);
  for (unsigned c = 0; c < ch; c++)
    if (!img->comps[c].data || img->comps[c].w == 0 || img->comps[c].h == 0 ||
        img->comps[c].prec == 0 || img->comps[c].prec > 16)
      return tsr_error(TESSERA_E_CORRUPT, "JPEG 2000 component %u is empty or malformed", c);
  enum ycbcr_rule rule = ycbcr_rule_of(fmt, img, mct);
  struct openslide_ycbcr os;
  if (rule == YCBCR_OPENSLIDE)
    openslide_ycbcr_init(&os);
  uint32_t cw = w < out->width ? w : out->width, chh = h < out->height ? h : out->height;
  for (uint32_t y = 0; y < chh; y++) {
    uint8_t *p = out->pixels + (size_t)y * out->width * ch;
    for (uint32_t x = 0; x < cw; x++, p += ch) {
      if (rule == YCBCR_NONE) {
        for (unsigned c = 0; c < ch; c++)
          p[c] = clamp8(sample_at(&img->comps[c], x, y));
        continue;
      }
      int Y = clamp8(sample_at(&img->comps[0], x, y));
      int cb = clamp8(sample_at(&img->comps[1], x, y)),
          cr = clamp8(sample_at(&img->comps[2], x, y));
      if (rule == YCBCR_OPENSLIDE) {
        p[0] = clamp8(Y + os.r_cr[cr]);
        p[1] = clamp8(Y + floor_div_65536(os.g_cb[cb] + os.g_cr[cr]));
        p[2] = clamp8(Y + os.b_cb[cb]);
      } else {
        cb -= 128, cr -= 128;
        p[0] = clamp8(Y + (int)(1.402 * cr));
        p[1] = clamp8(Y - (int)(0.344 * cb + 0.714 * cr));
        p[2] = clamp8(Y + (int)(1.772 * cb));
      }
    }
  }
  return TESSERA_OK;
}

/* Whether the main header asks for a multiple-component transform (OpenJPEG then undoes it
 * while decoding). */
static tessera_status signals_mct(opj_codec_t *codec, bool *mct) {
  opj_codestream_info_v2_t *info = opj_get_cstr_info(codec);
  if (!info)
    return tsr_error(TESSERA_E_NOMEM, "out of memory for JPEG 2000 header information");
  *mct = info->m_default_tile_info.mct != 0;
  opj_destroy_cstr_info(&info);
  return TESSERA_OK;
}

tessera_status tsr_decode_jp2k(const struct tsr_pixel_format *fmt, const uint8_t *src, size_t len,
                               const struct tsr_tile_out *out) {
  static const uint8_t jp2_signature[] = {0, 0, 0, 0x0c, 'j', 'P', ' ', ' '};
  bool jp2 = len >= sizeof jp2_signature && memcmp(src, jp2_signature, sizeof jp2_signature) == 0;
  size_t cs_len = len;
  const uint8_t *cs = jp2 ? jp2_codestream(src, len, &cs_len) : src;
  if (!cs)
    return tsr_error(TESSERA_E_CORRUPT, "JPEG 2000 file without a codestream box");
  tessera_status checked = check_siz(cs, cs_len, out);
  if (checked != TESSERA_OK)
    return checked;
  struct memory_stream m = {src, len, 0};
  char error[200] = "";
  opj_codec_t *codec = opj_create_decompress(jp2 ? OPJ_CODEC_JP2 : OPJ_CODEC_J2K);
  opj_stream_t *stream = opj_stream_default_create(OPJ_TRUE);
  opj_image_t *img = NULL;
  tessera_status st = TESSERA_OK;
  bool mct = false;
  if (!codec || !stream) {
    st = tsr_error(TESSERA_E_NOMEM, "out of memory for a JPEG 2000 decoder");
    goto out;
  }
  opj_set_info_handler(codec, ignore_message, NULL);
  opj_set_warning_handler(codec, ignore_message, NULL);
  opj_set_error_handler(codec, keep_error, error);
  opj_stream_set_user_data(stream, &m, NULL);
  opj_stream_set_user_data_length(stream, len);
  opj_stream_set_read_function(stream, stream_read);
  opj_stream_set_skip_function(stream, stream_skip);
  opj_stream_set_seek_function(stream, stream_seek);
  opj_dparameters_t params;
  opj_set_default_decoder_parameters(&params);
  if (!opj_setup_decoder(codec, &params) || !opj_read_header(stream, codec, &img)) {
    st = tsr_error(TESSERA_E_CORRUPT, "corrupt JPEG 2000 header%s%s", error[0] ? ": " : "", error);
    goto out;
  }
  /* Bounded before decoding, so a small codestream cannot make us decode a huge image. */
  if (img->x1 <= img->x0 || img->y1 <= img->y0 || img->x1 - img->x0 > out->width ||
      img->y1 - img->y0 > out->height) {
    st = tsr_error(TESSERA_E_CORRUPT, "JPEG 2000 image is %ux%u, the tile is %ux%u",
                   img->x1 - img->x0, img->y1 - img->y0, out->width, out->height);
    goto out;
  }
  st = signals_mct(codec, &mct);
  if (st != TESSERA_OK)
    goto out;
  if (!opj_decode(codec, stream, img) || !opj_end_decompress(codec, stream)) {
    st = tsr_error(TESSERA_E_CORRUPT, "corrupt JPEG 2000 data%s%s", error[0] ? ": " : "", error);
    goto out;
  }
  st = copy_image(fmt, img, mct, out);
out:
  opj_image_destroy(img);
  opj_stream_destroy(stream);
  opj_destroy_codec(codec);
  return st;
}
