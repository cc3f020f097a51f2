/* The decode limit: what reading the workload would cost if decoding JPEG were the only
 * cost. The tiles each patch overlaps are listed, a tile once per patch that needs it (what a
 * reader without a cache must decode; a tile shared by two patches counts twice), their
 * compressed bytes are read into memory with libtiff before any timing, and the list is
 * decoded by a bare libjpeg-turbo loop: accurate integer IDCT, fancy upsampling, RGB out, the
 * settings under which tessera and OpenSlide give the same pixels. Every decoded byte is
 * summed, as the readers sum theirs. */
#include "bench.h"
#include "checksum.h"
#include "layout.h"

#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
/* jpeglib.h needs FILE and size_t declared first. */
#include <jpeglib.h>
#include <tiffio.h>

#define MAX_TILES ((uint64_t)1 << 28)
#define MAX_TILE_BYTES ((uint64_t)256 << 20)
#define ROWS_PER_CALL 16

struct decode_plan {
  J_COLOR_SPACE color; /* how the tiles' three components are coded */
  uint8_t *tables;     /* JPEGTables, or NULL when each tile carries its own */
  size_t tables_size;
  uint8_t *bytes; /* the distinct tiles' compressed bytes, one after another */
  size_t *offset; /* distinct + 1 entries: tile k is bytes[offset[k] .. offset[k+1]) */
  size_t distinct;
  uint32_t *decodes; /* the distinct tile of each decode, in workload order */
  size_t decode_count;
};

/* ---- finding the level's directory ---------------------------------------------------- */

static bool is_level(TIFF *tif, const workload *w) {
  uint32_t width = 0, height = 0;
  return TIFFIsTiled(tif) && TIFFGetField(tif, TIFFTAG_IMAGEWIDTH, &width) &&
         TIFFGetField(tif, TIFFTAG_IMAGELENGTH, &height) && width == w->level_width &&
         height == w->level_height;
}

/* The SubIFDs of the current directory, tried in turn; leaves the matching one current. */
static bool find_in_subifds(TIFF *tif, const workload *w) {
  uint16_t count = 0;
  uint64_t *offsets = NULL;
  if (!TIFFGetField(tif, TIFFTAG_SUBIFD, &count, &offsets) || count == 0)
    return false;
  uint64_t *copy = malloc(count * sizeof *copy);
  if (!copy)
    return false;
  memcpy(copy, offsets, count * sizeof *copy);
  bool found = false;
  for (uint16_t i = 0; !found && i < count; i++)
    found = TIFFSetSubDirectory(tif, copy[i]) && is_level(tif, w);
  free(copy);
  return found;
}

/* The directory holding level w->level: the first tiled one of its size, in the main chain
 * or else among SubIFDs, as pyramids are stored one way or the other. */
static bool find_level(TIFF *tif, const workload *w) {
  tdir_t main_count = 0;
  do {
    if (is_level(tif, w))
      return true;
    main_count++;
  } while (TIFFReadDirectory(tif));
  for (tdir_t d = 0; d < main_count; d++) {
    if (TIFFSetDirectory(tif, d) && find_in_subifds(tif, w))
      return true;
  }
  return false;
}

/* ---- the plan ------------------------------------------------------------------------- */

static bool read_format(TIFF *tif, decode_plan *p, char *why, size_t why_size) {
  uint16_t compression = 0, photometric = 0, samples = 0;
  TIFFGetField(tif, TIFFTAG_COMPRESSION, &compression);
  TIFFGetField(tif, TIFFTAG_PHOTOMETRIC, &photometric);
  TIFFGetFieldDefaulted(tif, TIFFTAG_SAMPLESPERPIXEL, &samples);
  if (compression != COMPRESSION_JPEG)
    return layout_fail(why, why_size, "the level is not JPEG-compressed (compression %u)",
                       compression);
  if (samples != 3 || (photometric != PHOTOMETRIC_YCBCR && photometric != PHOTOMETRIC_RGB))
    return layout_fail(why, why_size, "only 3-sample YCbCr or RGB JPEG tiles are measured");
  p->color = photometric == PHOTOMETRIC_YCBCR ? JCS_YCbCr : JCS_RGB;
  uint32_t size = 0;
  void *tables = NULL;
  if (TIFFGetField(tif, TIFFTAG_JPEGTABLES, &size, &tables) && size > 0) {
    p->tables = malloc(size);
    if (!p->tables)
      return layout_fail(why, why_size, "out of memory");
    memcpy(p->tables, tables, size);
    p->tables_size = size;
  }
  return true;
}

static int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

static int64_t level_coordinate(const workload *w, int64_t v) {
  return w->level == 0 ? v : (int64_t)floor((double)v / w->downsample);
}

/* Lists the decodes, giving each new tile the next distinct number; *tiles gets the TIFF
 * tile of each distinct number. */
static bool list_decodes(const workload *w, uint32_t tile_w, uint32_t tile_h, decode_plan *p,
                         uint32_t **tiles, char *why, size_t why_size) {
  int64_t across = (w->level_width + tile_w - 1) / tile_w;
  int64_t down = (w->level_height + tile_h - 1) / tile_h;
  if ((uint64_t)across * (uint64_t)down > MAX_TILES)
    return layout_fail(why, why_size, "the level has too many tiles");
  int64_t *distinct_of = malloc((size_t)(across * down) * sizeof *distinct_of);
  *tiles = malloc((size_t)(across * down) * sizeof **tiles);
  size_t cap = w->n < ((size_t)1 << 20) ? 4 * w->n + 16 : (size_t)4 << 20, count = 0;
  uint32_t *decodes = malloc(cap * sizeof *decodes);
  bool ok = distinct_of && *tiles && decodes;
  if (ok)
    memset(distinct_of, 0xff, (size_t)(across * down) * sizeof *distinct_of);
  for (size_t i = 0; ok && i < w->n; i++) {
    int64_t lx = level_coordinate(w, w->xy[2 * i]), ly = level_coordinate(w, w->xy[2 * i + 1]);
    int64_t tx0 = floor_div(lx, tile_w), tx1 = floor_div(lx + w->width - 1, tile_w);
    int64_t ty0 = floor_div(ly, tile_h), ty1 = floor_div(ly + w->height - 1, tile_h);
    tx0 = tx0 < 0 ? 0 : tx0;
    ty0 = ty0 < 0 ? 0 : ty0;
    tx1 = tx1 >= across ? across - 1 : tx1;
    ty1 = ty1 >= down ? down - 1 : ty1;
    for (int64_t ty = ty0; ok && ty <= ty1; ty++) {
      for (int64_t tx = tx0; ok && tx <= tx1; tx++) {
        int64_t tile = ty * across + tx;
        if (distinct_of[tile] < 0) {
          distinct_of[tile] = (int64_t)p->distinct;
          (*tiles)[p->distinct++] = (uint32_t)tile;
        }
        if (count == cap) {
          uint32_t *bigger = realloc(decodes, 2 * cap * sizeof *decodes);
          ok = bigger != NULL;
          decodes = ok ? bigger : decodes;
          cap *= 2;
        }
        if (ok)
          decodes[count++] = (uint32_t)distinct_of[tile];
      }
    }
  }
  free(distinct_of);
  p->decodes = decodes;
  p->decode_count = count;
  return ok ? true : layout_fail(why, why_size, "out of memory");
}

static bool read_tiles(TIFF *tif, const uint32_t *tiles, decode_plan *p, char *why,
                       size_t why_size) {
  p->offset = malloc((p->distinct + 1) * sizeof *p->offset);
  if (!p->offset)
    return layout_fail(why, why_size, "out of memory");
  size_t total = 0;
  for (size_t k = 0; k < p->distinct; k++) {
    uint64_t size = TIFFGetStrileByteCount(tif, tiles[k]);
    if (size == 0 || size > MAX_TILE_BYTES)
      return layout_fail(why, why_size, "tile %u has %llu compressed bytes", tiles[k],
                         (unsigned long long)size);
    p->offset[k] = total;
    total += (size_t)size;
  }
  p->offset[p->distinct] = total;
  p->bytes = malloc(total ? total : 1);
  if (!p->bytes)
    return layout_fail(why, why_size, "out of memory for %zu bytes of tiles", total);
  for (size_t k = 0; k < p->distinct; k++) {
    tmsize_t size = (tmsize_t)(p->offset[k + 1] - p->offset[k]);
    if (TIFFReadRawTile(tif, tiles[k], p->bytes + p->offset[k], size) != size)
      return layout_fail(why, why_size, "cannot read tile %u", tiles[k]);
  }
  return true;
}

decode_plan *decode_plan_create(const workload *w, char *why, size_t why_size) {
  TIFF *tif = TIFFOpen(w->path, "r");
  if (!tif) {
    layout_fail(why, why_size, "libtiff cannot open the file");
    return NULL;
  }
  decode_plan *p = calloc(1, sizeof *p);
  uint32_t *tiles = NULL;
  uint32_t tile_w = 0, tile_h = 0;
  bool ok = p != NULL;
  if (!ok)
    layout_fail(why, why_size, "out of memory");
  if (ok && !find_level(tif, w))
    ok = layout_fail(why, why_size, "libtiff finds no tiled directory of the level's size");
  ok = ok && read_format(tif, p, why, why_size);
  if (ok && (!TIFFGetField(tif, TIFFTAG_TILEWIDTH, &tile_w) ||
             !TIFFGetField(tif, TIFFTAG_TILELENGTH, &tile_h) || tile_w == 0 || tile_h == 0))
    ok = layout_fail(why, why_size, "the level has no tile size");
  ok = ok && list_decodes(w, tile_w, tile_h, p, &tiles, why, why_size) &&
       read_tiles(tif, tiles, p, why, why_size);
  free(tiles);
  TIFFClose(tif);
  if (!ok) {
    decode_plan_destroy(p);
    return NULL;
  }
  return p;
}

size_t decode_plan_decodes(const decode_plan *p) { return p->decode_count; }
size_t decode_plan_distinct(const decode_plan *p) { return p->distinct; }
uint64_t decode_plan_compressed(const decode_plan *p) { return p->offset[p->distinct]; }
const char *decode_plan_colors(const decode_plan *p) {
  return p->color == JCS_YCbCr ? "YCbCr" : "RGB";
}

void decode_plan_destroy(decode_plan *p) {
  if (!p)
    return;
  free(p->tables);
  free(p->bytes);
  free(p->offset);
  free(p->decodes);
  free(p);
}

/* ---- decoding ------------------------------------------------------------------------- */

typedef struct shared {
  const decode_plan *p;
  atomic_size_t next;   /* the next decode to take */
  atomic_bool failed;   /* set once any thread fails; the others then stop */
  pthread_mutex_t lock; /* guards checksum and error */
  uint64_t checksum;
  char error[JMSG_LENGTH_MAX + 64];
} shared;

typedef struct decoder {
  struct jpeg_decompress_struct cinfo;
  struct jpeg_error_mgr jerr;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
  uint8_t *pixels;
  size_t capacity;
} decoder;

static void on_error(j_common_ptr cinfo) {
  decoder *d = (decoder *)cinfo->client_data;
  cinfo->err->format_message(cinfo, d->message);
  longjmp(d->jump, 1);
}

/* Warnings (a short tile, say) are not this loop's business; tessera reports its own. */
static void on_message(j_common_ptr cinfo) { (void)cinfo; }

static bool grow(decoder *d, size_t size) {
  if (size <= d->capacity)
    return true;
  uint8_t *bigger = realloc(d->pixels, size);
  if (!bigger)
    return false;
  d->pixels = bigger;
  d->capacity = size;
  return true;
}

/* Decodes one tile and adds its bytes to *sum. On failure d->message says why. */
static bool decode_tile(decoder *d, J_COLOR_SPACE color, const uint8_t *data, size_t size,
                        uint64_t *sum) {
  struct jpeg_decompress_struct *c = &d->cinfo;
  if (setjmp(d->jump)) {
    jpeg_abort_decompress(c);
    return false;
  }
  jpeg_mem_src(c, data, (unsigned long)size);
  jpeg_read_header(c, TRUE);
  c->jpeg_color_space = color;
  c->out_color_space = JCS_RGB;
  c->dct_method = JDCT_ISLOW;
  c->do_fancy_upsampling = TRUE;
  jpeg_start_decompress(c);
  size_t stride = (size_t)c->output_width * 3;
  size_t bytes = stride * c->output_height;
  if (!grow(d, bytes)) {
    jpeg_abort_decompress(c);
    snprintf(d->message, sizeof d->message, "out of memory");
    return false;
  }
  while (c->output_scanline < c->output_height) {
    JSAMPROW rows[ROWS_PER_CALL];
    JDIMENSION n = c->output_height - c->output_scanline;
    n = n > ROWS_PER_CALL ? ROWS_PER_CALL : n;
    for (JDIMENSION k = 0; k < n; k++)
      rows[k] = d->pixels + (c->output_scanline + k) * stride;
    jpeg_read_scanlines(c, rows, n);
  }
  jpeg_finish_decompress(c);
  *sum += checksum_pixels(d->pixels, bytes, 3);
  return true;
}

static void fail_run(shared *s, const char *message) {
  pthread_mutex_lock(&s->lock);
  if (!atomic_load(&s->failed))
    snprintf(s->error, sizeof s->error, "%s", message);
  atomic_store(&s->failed, true);
  pthread_mutex_unlock(&s->lock);
}

/* Loads JPEGTables once; libjpeg keeps them for every abbreviated tile that follows. */
static bool start_decoder(decoder *d, const decode_plan *p) {
  d->cinfo.err = jpeg_std_error(&d->jerr);
  d->jerr.error_exit = on_error;
  d->jerr.output_message = on_message;
  jpeg_create_decompress(&d->cinfo);
  d->cinfo.client_data = d;
  if (!p->tables)
    return true;
  if (setjmp(d->jump))
    return false;
  jpeg_mem_src(&d->cinfo, p->tables, (unsigned long)p->tables_size);
  return jpeg_read_header(&d->cinfo, FALSE) == JPEG_HEADER_TABLES_ONLY;
}

static void *decode_thread(void *arg) {
  shared *s = arg;
  const decode_plan *p = s->p;
  decoder *d = calloc(1, sizeof *d);
  uint64_t sum = 0;
  if (!d) {
    fail_run(s, "out of memory");
    return NULL;
  }
  if (!start_decoder(d, p)) {
    char message[JMSG_LENGTH_MAX + 32];
    snprintf(message, sizeof message, "JPEGTables: %s", d->message);
    fail_run(s, message);
  }
  while (!atomic_load(&s->failed)) {
    size_t i = atomic_fetch_add(&s->next, 1);
    if (i >= p->decode_count)
      break;
    uint32_t k = p->decodes[i];
    if (!decode_tile(d, p->color, p->bytes + p->offset[k], p->offset[k + 1] - p->offset[k], &sum)) {
      fail_run(s, d->message);
      break;
    }
  }
  pthread_mutex_lock(&s->lock);
  s->checksum += sum;
  pthread_mutex_unlock(&s->lock);
  jpeg_destroy_decompress(&d->cinfo);
  free(d->pixels);
  free(d);
  return NULL;
}

bool decode_plan_run(const decode_plan *p, int threads, run_result *r) {
  shared s = {.p = p};
  atomic_init(&s.next, 0);
  atomic_init(&s.failed, false);
  pthread_mutex_init(&s.lock, NULL);
  pthread_t *ids = calloc((size_t)threads, sizeof *ids);
  int started = 0;
  double start = bench_now();
  for (; ids && started < threads; started++) {
    if (pthread_create(&ids[started], NULL, decode_thread, &s) != 0) {
      fail_run(&s, "cannot start a thread");
      break;
    }
  }
  for (int i = 0; i < started; i++)
    pthread_join(ids[i], NULL);
  r->seconds = bench_now() - start;
  r->checksum = s.checksum;
  bool ok = ids && !atomic_load(&s.failed);
  if (!ok)
    bench_error("decode limit: %s", ids ? s.error : "out of memory");
  free(ids);
  pthread_mutex_destroy(&s.lock);
  return ok;
}
