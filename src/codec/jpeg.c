/* JPEG (TIFF compression 7) through the libjpeg API of libjpeg-turbo, with its defaults: the
 * accurate integer IDCT and fancy upsampling, so pixels equal OpenSlide's and libvips'. */
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
/* jpeglib.h needs FILE and size_t declared first. */
#include <jerror.h>
#include <jpeglib.h>
#include <tiff.h>

#include "alloc.h"
#include "codec/codec.h"
#include "error.h"
#include "per_thread.h"

_Static_assert(TSR_JPEG_MAX_SIDE == JPEG_MAX_DIMENSION, "libjpeg's size limit");

struct jpeg_failure {
  struct jpeg_error_mgr mgr;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
  bool exact_end; /* no bytes may follow the image's last MCU (tsr_jpeg_hints) */
};

/* Progressive (multi-scan) tiles: libjpeg keeps every coefficient of the tile while it reads
 * the scans (2 bytes a sample, whatever part of the tile is wanted). Real slides' progressive
 * tiles are far below this. */
#define TSR_JPEG_MAX_COEF_BYTES ((uint64_t)256 << 20)

static void on_jpeg_error(j_common_ptr cinfo) {
  struct jpeg_failure *f = (struct jpeg_failure *)cinfo->err;
  cinfo->err->format_message(cinfo, f->message);
  longjmp(f->jump, 1);
}

/* libjpeg "warnings" mean corrupt entropy data that it papers over with grey; a reader that
 * must never pass off a damaged tile as good treats them as errors. One is harmless: stray
 * bytes between the last scan and EOI (some scanners pad tiles so), after the whole image has
 * been decoded. A stream its tile source knows to end there has none: there they mean its
 * bytes hold more than one image (tsr_jpeg_hints.exact_end). */
static void on_jpeg_message(j_common_ptr cinfo, int level) {
  if (level >= 0)
    return;
  const struct jpeg_failure *f = (const struct jpeg_failure *)cinfo->err;
  const struct jpeg_error_mgr *e = cinfo->err;
  if (e->msg_code == JWRN_EXTRANEOUS_DATA && e->msg_parm.i[1] == 0xD9 && !f->exact_end)
    return;
  on_jpeg_error(cinfo);
}

/* Rows decoded per jpeg_read_scanlines call, and the most bytes a thread keeps for them. */
#define TSR_JPEG_ROWS 16
#define TSR_JPEG_ROWS_BYTES ((size_t)1 << 20)

/* Rows of decoded samples for cropped reads, one buffer per thread, kept across tiles. */
struct row_buffer {
  uint8_t *data;
  size_t cap;
};

static void destroy_row(void *p) {
  struct row_buffer *r = p;
  tsr_free(r->data);
  tsr_free(r);
}

static void *create_row(void) { return tsr_calloc(1, sizeof(struct row_buffer)); }

static struct tsr_per_thread row_buffers = TSR_PER_THREAD_INIT(destroy_row);

static uint8_t *row_buffer(size_t n) {
  struct row_buffer *r = tsr_per_thread_get(&row_buffers, create_row);
  if (!r)
    return NULL;
  if (r->cap < n) {
    uint8_t *d = tsr_realloc(r->data, n);
    if (!d)
      return NULL;
    r->data = d;
    r->cap = n;
  }
  return r->data;
}

/* A stream whose frame header gets a narrower width is handed to libjpeg in pieces, none of
 * them copied: the stream up to the frame's height and width, the new height and width, and
 * the rest of the stream. */
#define TSR_JPEG_PIECES 3

struct pieces {
  struct jpeg_source_mgr pub;
  const JOCTET *data[TSR_JPEG_PIECES];
  size_t len[TSR_JPEG_PIECES];
  int next; /* the piece fill_input_buffer hands out next */
};

static const JOCTET eoi[2] = {0xFF, JPEG_EOI};

static void pieces_init(j_decompress_ptr cinfo) { (void)cinfo; }

static boolean pieces_fill(j_decompress_ptr cinfo) {
  struct pieces *p = (struct pieces *)cinfo->src;
  while (p->next < TSR_JPEG_PIECES && p->len[p->next] == 0)
    p->next++;
  if (p->next == TSR_JPEG_PIECES) {
    /* Past the end: what jpeg_mem_src does, an EOI after the warning (our error). */
    WARNMS(cinfo, JWRN_JPEG_EOF);
    p->pub.next_input_byte = eoi;
    p->pub.bytes_in_buffer = sizeof eoi;
    return TRUE;
  }
  p->pub.next_input_byte = p->data[p->next];
  p->pub.bytes_in_buffer = p->len[p->next];
  p->next++;
  return TRUE;
}

static void pieces_skip(j_decompress_ptr cinfo, long n) {
  struct jpeg_source_mgr *src = cinfo->src;
  while (n > 0) {
    if (src->bytes_in_buffer == 0)
      pieces_fill(cinfo);
    size_t k = (size_t)n < src->bytes_in_buffer ? (size_t)n : src->bytes_in_buffer;
    src->next_input_byte += k;
    src->bytes_in_buffer -= k;
    n -= (long)k;
  }
}

static void pieces_term(j_decompress_ptr cinfo) { (void)cinfo; }

/* Sets cinfo to read stream src as a JPEG of w x h pixels, the frame's size lying at size_at.
 * dims (4 bytes) must live as long as the decode. */
static void resized_source(struct jpeg_decompress_struct *cinfo, struct pieces *p, JOCTET *dims,
                           const uint8_t *src, size_t len, size_t size_at, uint32_t w, uint32_t h) {
  dims[0] = (JOCTET)(h >> 8);
  dims[1] = (JOCTET)h;
  dims[2] = (JOCTET)(w >> 8);
  dims[3] = (JOCTET)w;
  *p = (struct pieces){
      .pub = {.init_source = pieces_init,
              .fill_input_buffer = pieces_fill,
              .skip_input_data = pieces_skip,
              .resync_to_restart = jpeg_resync_to_restart,
              .term_source = pieces_term},
      .data = {src, dims, src + size_at + 4},
      .len = {size_at, 4, len - size_at - 4},
  };
  cinfo->src = &p->pub;
}

/* Restricts decoding to the columns the crop needs. jpeg_crop_scanline widens the range to
 * whole iMCUs, but fancy upsampling treats the range's edges as the image's edges, which
 * changes the outermost chroma samples; one extra iMCU on each side keeps every pixel we
 * hand out equal to a whole-tile decode. Returns the first decoded column. */
static JDIMENSION crop_columns(struct jpeg_decompress_struct *cinfo,
                               const struct tsr_tile_out *out) {
  JDIMENSION margin = (JDIMENSION)cinfo->max_h_samp_factor * DCTSIZE;
  JDIMENSION x0 = out->crop_x > margin ? out->crop_x - margin : 0;
  JDIMENSION x1 = out->crop_x + out->crop_w + margin;
  if (x1 > cinfo->output_width)
    x1 = cinfo->output_width;
  if (x0 == 0 && x1 == cinfo->output_width)
    return 0;
  JDIMENSION width = x1 - x0;
  jpeg_crop_scanline(cinfo, &x0, &width);
  return x0;
}

static tessera_status decode(struct jpeg_decompress_struct *cinfo,
                             const struct tsr_pixel_format *fmt, const uint8_t *src, size_t len,
                             const struct tsr_tile_out *out) {
  struct pieces pieces;
  JOCTET dims[4];
  uint32_t need_w = out->need_w; /* columns the data must provide */
  if (fmt->jpeg_tables && fmt->jpeg_tables_len > 0) {
    jpeg_mem_src(cinfo, fmt->jpeg_tables, (unsigned long)fmt->jpeg_tables_len);
    if (jpeg_read_header(cinfo, FALSE) != JPEG_HEADER_TABLES_ONLY)
      return tsr_error(TESSERA_E_CORRUPT, "JPEGTables holds image data");
  }
  /* One row of MCUs, decoded left to right: the MCUs right of the crop (and of the margin
   * crop_columns keeps for chroma upsampling) need not be decoded at all. */
  uint32_t right = out->crop_x + out->crop_w + MAX_SAMP_FACTOR * DCTSIZE;
  size_t at = out->jpeg.size_at;
  unsigned scale = fmt->jpeg_scale > 1 ? fmt->jpeg_scale : 1;
  if (at != 0 && right < need_w && at + 4 <= len && scale == 1) {
    need_w = right;
    resized_source(cinfo, &pieces, dims, src, len, at, need_w, out->need_h);
  } else {
    jpeg_mem_src(cinfo, src, (unsigned long)len);
  }
  if (jpeg_read_header(cinfo, TRUE) != JPEG_HEADER_OK)
    return tsr_error(TESSERA_E_CORRUPT, "JPEG data has no image");
  unsigned channels = fmt->decoded_channels;
  if (fmt->jpeg_luma && channels == 1) {
    /* libjpeg picks the stream's colour space from its markers, and fails a conversion to
     * grayscale it does not make (CMYK, YCCK) */
    if (cinfo->num_components != 1 && cinfo->num_components != 3)
      return tsr_error(TESSERA_E_UNSUPPORTED,
                       "JPEG data has %d components; one channel is made of 1 or 3",
                       cinfo->num_components);
  } else if ((unsigned)cinfo->num_components != (fmt->jpeg_rgba ? 3u : channels))
    return tsr_error(TESSERA_E_CORRUPT, "JPEG data has %d components, the TIFF says %u",
                     cinfo->num_components, fmt->jpeg_rgba ? 3u : channels);
  if (fmt->jpeg_rgba) {
    cinfo->jpeg_color_space = fmt->photometric == PHOTOMETRIC_RGB ? JCS_RGB : JCS_YCbCr;
    cinfo->out_color_space = JCS_EXT_RGBA;
  } else if (channels == 3) {
    /* The TIFF's photometric tag, not markers inside the stream, says what the samples are:
     * Aperio writes RGB samples in JPEG streams that carry no Adobe marker. */
    cinfo->jpeg_color_space = fmt->photometric == PHOTOMETRIC_RGB ? JCS_RGB : JCS_YCbCr;
    cinfo->out_color_space = JCS_RGB;
  } else {
    cinfo->out_color_space = JCS_GRAYSCALE;
  }
  cinfo->dct_method = JDCT_ISLOW;
  cinfo->do_fancy_upsampling = TRUE;
  cinfo->scale_num = 1;
  cinfo->scale_denom = scale;
  jpeg_calc_output_dimensions(cinfo);
  /* Checked before decompression starts: a progressive stream allocates and fills a buffer
   * for its whole image inside jpeg_start_decompress. */
  uint32_t w = cinfo->output_width, h = cinfo->output_height;
  if (w < need_w || h < out->need_h || w > out->width || h > out->height)
    return tsr_error(TESSERA_E_CORRUPT, "JPEG data is %ux%u, the tile is %ux%u and needs %ux%u", w,
                     h, out->width, out->height, need_w, out->need_h);
  if (jpeg_has_multiple_scans(cinfo)) {
    uint64_t coefficients = 0;
    for (int c = 0; c < cinfo->num_components; c++)
      coefficients += (uint64_t)cinfo->comp_info[c].width_in_blocks *
                      cinfo->comp_info[c].height_in_blocks * DCTSIZE2 * sizeof(JCOEF);
    if (coefficients > TSR_JPEG_MAX_COEF_BYTES)
      return tsr_error(TESSERA_E_LIMIT,
                       "a progressive JPEG tile of %ux%u needs %llu MiB for its coefficients, "
                       "over the %llu MiB allowed",
                       w, h, (unsigned long long)(coefficients >> 20),
                       (unsigned long long)(TSR_JPEG_MAX_COEF_BYTES >> 20));
  }
  jpeg_start_decompress(cinfo);
  JDIMENSION first = crop_columns(cinfo, out);
  size_t want = (size_t)out->crop_w * channels;
  size_t skip = (size_t)(out->crop_x - first) * channels;
  size_t row_bytes = (size_t)cinfo->output_width * channels;
  /* Rows go straight to the destination when they are exactly what it wants. Several rows
   * per call: libjpeg-turbo's per-call overhead is worth ~10% of a 256 x 256 tile. */
  bool direct = skip == 0 && cinfo->output_width == out->crop_w;
  size_t batch = TSR_JPEG_ROWS_BYTES / row_bytes;
  batch = batch < 1 ? 1 : batch > TSR_JPEG_ROWS ? TSR_JPEG_ROWS : batch;
  uint8_t *rows = direct ? NULL : row_buffer(batch * row_bytes);
  if (!direct && !rows) {
    jpeg_abort_decompress(cinfo);
    return tsr_error(TESSERA_E_NOMEM, "out of memory for %zu rows of %u pixels", batch,
                     cinfo->output_width);
  }
  if (out->crop_y > 0 && jpeg_skip_scanlines(cinfo, out->crop_y) != out->crop_y) {
    jpeg_abort_decompress(cinfo);
    return tsr_error(TESSERA_E_CORRUPT, "JPEG data ends before row %u", out->crop_y);
  }
  JSAMPROW lines[TSR_JPEG_ROWS];
  for (uint32_t y = 0; y < out->crop_h;) {
    uint32_t n = out->crop_h - y < batch ? out->crop_h - y : (uint32_t)batch;
    for (uint32_t k = 0; k < n; k++)
      lines[k] = direct ? out->pixels + (y + k) * out->stride : rows + k * row_bytes;
    JDIMENSION got = jpeg_read_scanlines(cinfo, lines, n);
    if (got == 0) {
      jpeg_abort_decompress(cinfo);
      return tsr_error(TESSERA_E_CORRUPT, "JPEG data ends at row %u", out->crop_y + y);
    }
    if (!direct)
      for (JDIMENSION k = 0; k < got; k++)
        memcpy(out->pixels + (y + k) * out->stride, rows + k * row_bytes + skip, want);
    y += got;
  }
  /* A whole tile is read to its end, so damage after the last row is noticed too. */
  if (cinfo->output_scanline == cinfo->output_height && first == 0 &&
      cinfo->output_width == w && need_w == out->need_w)
    jpeg_finish_decompress(cinfo);
  else
    jpeg_abort_decompress(cinfo);
  return TESSERA_OK;
}

/* Routes libjpeg's errors and warnings to fail (the caller then sets fail->jump). */
static void catch_failures(struct jpeg_decompress_struct *cinfo, struct jpeg_failure *fail,
                           bool exact_end) {
  cinfo->err = jpeg_std_error(&fail->mgr);
  fail->mgr.error_exit = on_jpeg_error;
  fail->mgr.emit_message = on_jpeg_message;
  fail->message[0] = '\0';
  fail->exact_end = exact_end;
}

tessera_status tsr_decode_jpeg(const struct tsr_pixel_format *fmt, const uint8_t *src, size_t len,
                               const struct tsr_tile_out *out) {
  struct jpeg_decompress_struct cinfo;
  struct jpeg_failure fail;
  catch_failures(&cinfo, &fail, out->jpeg.exact_end);
  tessera_status st;
  if (setjmp(fail.jump)) {
    jpeg_destroy_decompress(&cinfo);
    return tsr_error(TESSERA_E_CORRUPT, "corrupt JPEG data: %s", fail.message);
  }
  jpeg_create_decompress(&cinfo);
  st = decode(&cinfo, fmt, src, len, out);
  jpeg_destroy_decompress(&cinfo);
  return st;
}

static tessera_status read_geometry(struct jpeg_decompress_struct *cinfo, const uint8_t *header,
                                    size_t len, struct tsr_jpeg_geometry *out) {
  jpeg_mem_src(cinfo, header, (unsigned long)len);
  if (jpeg_read_header(cinfo, TRUE) != JPEG_HEADER_OK)
    return tsr_error(TESSERA_E_FORMAT, "the JPEG header has no image");
  /* A scan of more than one component interleaves them in MCUs of the largest sampling
   * factors; a scan of one is made of single blocks. */
  bool interleaved = cinfo->comps_in_scan > 1;
  *out = (struct tsr_jpeg_geometry){
      .width = cinfo->image_width,
      .height = cinfo->image_height,
      .restart_interval = cinfo->restart_interval,
      .mcu_w = (uint32_t)(interleaved ? cinfo->max_h_samp_factor : 1) * DCTSIZE,
      .mcu_h = (uint32_t)(interleaved ? cinfo->max_v_samp_factor : 1) * DCTSIZE,
      .components = (uint8_t)cinfo->num_components,
      .one_scan = !cinfo->progressive_mode && !cinfo->arith_code &&
                  cinfo->comps_in_scan == cinfo->num_components,
  };
  return TESSERA_OK;
}

tessera_status tsr_jpeg_read_geometry(const uint8_t *header, size_t len,
                                      struct tsr_jpeg_geometry *out) {
  struct jpeg_decompress_struct cinfo;
  struct jpeg_failure fail;
  catch_failures(&cinfo, &fail, false);
  tessera_status st;
  if (setjmp(fail.jump)) {
    jpeg_destroy_decompress(&cinfo);
    return tsr_error(TESSERA_E_FORMAT, "unreadable JPEG header: %s", fail.message);
  }
  jpeg_create_decompress(&cinfo);
  st = read_geometry(&cinfo, header, len, out);
  jpeg_destroy_decompress(&cinfo);
  return st;
}
