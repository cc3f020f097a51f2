/* JPEG (TIFF compression 7) through the libjpeg API of libjpeg-turbo, with its defaults: the
 * accurate integer IDCT and fancy upsampling, so pixels equal OpenSlide's and libvips'. */
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
/* jpeglib.h needs FILE and size_t declared first. */
#include <jerror.h>
#include <jpeglib.h>
#include <tiff.h>

#include "codec/codec.h"
#include "error.h"

struct jpeg_failure {
  struct jpeg_error_mgr mgr;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

static void on_jpeg_error(j_common_ptr cinfo) {
  struct jpeg_failure *f = (struct jpeg_failure *)cinfo->err;
  cinfo->err->format_message(cinfo, f->message);
  longjmp(f->jump, 1);
}

/* libjpeg "warnings" mean corrupt entropy data that it papers over with grey; a reader that
 * must never pass off a damaged tile as good treats them as errors. One is harmless: stray
 * bytes between the last scan and EOI (some scanners pad tiles so), after the whole image has
 * been decoded. */
static void on_jpeg_message(j_common_ptr cinfo, int level) {
  if (level >= 0)
    return;
  const struct jpeg_error_mgr *e = cinfo->err;
  if (e->msg_code == JWRN_EXTRANEOUS_DATA && e->msg_parm.i[1] == 0xD9)
    return;
  on_jpeg_error(cinfo);
}

static tessera_status decode(struct jpeg_decompress_struct *cinfo,
                             const struct tsr_pixel_format *fmt, const uint8_t *src, size_t len,
                             const struct tsr_tile_out *out) {
  if (fmt->jpeg_tables && fmt->jpeg_tables_len > 0) {
    jpeg_mem_src(cinfo, fmt->jpeg_tables, (unsigned long)fmt->jpeg_tables_len);
    if (jpeg_read_header(cinfo, FALSE) != JPEG_HEADER_TABLES_ONLY)
      return tsr_error(TESSERA_E_CORRUPT, "JPEGTables holds image data");
  }
  jpeg_mem_src(cinfo, src, (unsigned long)len);
  if (jpeg_read_header(cinfo, TRUE) != JPEG_HEADER_OK)
    return tsr_error(TESSERA_E_CORRUPT, "JPEG data has no image");
  unsigned channels = fmt->decoded_channels;
  if ((unsigned)cinfo->num_components != channels)
    return tsr_error(TESSERA_E_CORRUPT, "JPEG data has %d components, the TIFF says %u",
                     cinfo->num_components, channels);
  if (channels == 3) {
    /* The TIFF's photometric tag, not markers inside the stream, says what the samples are:
     * Aperio writes RGB samples in JPEG streams that carry no Adobe marker. */
    cinfo->jpeg_color_space = fmt->photometric == PHOTOMETRIC_RGB ? JCS_RGB : JCS_YCbCr;
    cinfo->out_color_space = JCS_RGB;
  } else {
    cinfo->out_color_space = JCS_GRAYSCALE;
  }
  cinfo->dct_method = JDCT_ISLOW;
  cinfo->do_fancy_upsampling = TRUE;
  /* Checked before decompression starts: a progressive stream allocates and fills a buffer
   * for its whole image inside jpeg_start_decompress. */
  uint32_t w = cinfo->image_width, h = cinfo->image_height;
  if (w < out->need_w || h < out->need_h || w > out->width || h > out->height)
    return tsr_error(TESSERA_E_CORRUPT, "JPEG data is %ux%u, the tile is %ux%u and needs %ux%u", w,
                     h, out->width, out->height, out->need_w, out->need_h);
  jpeg_start_decompress(cinfo);
  size_t row = (size_t)out->width * channels;
  while (cinfo->output_scanline < cinfo->output_height) {
    JSAMPROW line = out->pixels + (size_t)cinfo->output_scanline * row;
    jpeg_read_scanlines(cinfo, &line, 1);
  }
  jpeg_finish_decompress(cinfo);
  return TESSERA_OK;
}

tessera_status tsr_decode_jpeg(const struct tsr_pixel_format *fmt, const uint8_t *src, size_t len,
                               const struct tsr_tile_out *out) {
  struct jpeg_decompress_struct cinfo;
  struct jpeg_failure fail;
  cinfo.err = jpeg_std_error(&fail.mgr);
  fail.mgr.error_exit = on_jpeg_error;
  fail.mgr.emit_message = on_jpeg_message;
  fail.message[0] = '\0';
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
