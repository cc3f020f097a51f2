/* `tessera sample OUT.tiff`: writes a synthetic pyramidal slide, JPEG-compressed in tiles,
 * that looks like an H&E section (see tissue.c). Every level is painted straight from the
 * procedural picture, a tile at a time, so memory stays small for any size; worker threads
 * paint while the main thread, the only one touching the libtiff handle, compresses and
 * writes the tiles in order. */
#include "cli.h"
#include "image_write.h"
#include "tessera.h"
#include "tile_pipeline.h"
#include "tissue.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <inttypes.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <tiffio.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_WIDTH 20000
#define DEFAULT_HEIGHT 15000
#define DEFAULT_TILE 256
#define DEFAULT_QUALITY 90
#define MAX_DIMENSION ((int64_t)1 << 24) /* tessera's default open limit */
#define MAX_LEVELS 64
#define MAX_WORKERS 64
#define MPP_LEVEL0 0.5 /* microns per pixel written in the resolution tags: a 20x scan */
/* Classic TIFF offsets are 32-bit; past this much raw data, write BigTIFF to be safe (JPEG
 * makes the file far smaller, but a noisy picture at quality 100 would not be). */
#define BIGTIFF_THRESHOLD ((uint64_t)3 << 30)
#define RING_BYTES_MAX ((size_t)256 << 20)
#define GLASS_PADDING 241 /* the value of edge tiles past the image */

#define DEFAULT_MASK_DOWNSAMPLE 32.0
#define MASK_SIDE_MAX ((int64_t)1 << 20) /* a truth mask wider or taller than this is refused */

enum {
  OPT_WIDTH = 1,
  OPT_HEIGHT,
  OPT_TILE,
  OPT_QUALITY,
  OPT_THREADS,
  OPT_QUIET,
  OPT_TISSUE_MASK,
  OPT_MASK_DOWNSAMPLE,
  OPT_HELP
};

static const cli_option options[] = {
    {"width", 'W', true, OPT_WIDTH},     {"height", 'H', true, OPT_HEIGHT},
    {"tile", 't', true, OPT_TILE},       {"quality", 'Q', true, OPT_QUALITY},
    {"threads", 'j', true, OPT_THREADS}, {"quiet", 'q', false, OPT_QUIET},
    {"tissue-mask", 0, true, OPT_TISSUE_MASK}, {"mask-downsample", 0, true, OPT_MASK_DOWNSAMPLE},
    {"help", 'h', false, OPT_HELP},
};

void cmd_sample_help(FILE *out) {
  fprintf(out,
          "Usage: tessera sample [OUT.tiff] [--width W] [--height H] [--tile N]\n"
          "                      [--quality Q] [--threads T] [--quiet]\n"
          "                      [--tissue-mask MASK.png [--mask-downsample D]]\n"
          "\n"
          "Write a synthetic whole-slide image for tests and benchmarks: a pyramidal TIFF\n"
          "of JPEG-compressed tiles (YCbCr, 2x2 chroma subsampling) showing tissue-like\n"
          "islands on white glass: pink stroma with fibres and pale lumens, and dark purple\n"
          "nuclei, like an H&E stain. Level 0 is W x H; each further level (a reduced-\n"
          "resolution image in the main IFD chain) is half the previous one, rounded up,\n"
          "down to the first that fits in one tile. The picture is deterministic: the same\n"
          "arguments give the same file. BigTIFF is written when the pixels would take more\n"
          "than 3 GiB uncompressed.\n"
          "\n"
          "Options:\n"
          "  -W, --width W     level-0 width, 1..%" PRId64 " (default %d)\n"
          "  -H, --height H    level-0 height, 1..%" PRId64 " (default %d)\n"
          "  -t, --tile N      tile side, a multiple of 16 in 16..%d (default %d)\n"
          "  -Q, --quality Q   JPEG quality 1..100 (default %d)\n"
          "  -j, --threads T   painting threads, 0..%d (default: one per processor; 0\n"
          "                    paints in the thread that writes)\n"
          "  -q, --quiet       print nothing unless something fails\n"
          "      --tissue-mask MASK.png\n"
          "                    also (or, without OUT.tiff, only) write where the picture\n"
          "                    has tissue: an 8-bit gray PNG (or .raw), 255 for tissue and\n"
          "                    0 for glass, computed from the drawing's own noise fields at\n"
          "                    the centre of each mask pixel (tissue: the island coverage\n"
          "                    is at least one half; lumens count as tissue), not from the\n"
          "                    image: the truth for checking a tissue detector\n"
          "      --mask-downsample D\n"
          "                    level-0 pixels per mask pixel, > 0 (default %g): the mask\n"
          "                    is ceil(W/D) x ceil(H/D)\n"
          "  -h, --help        show this help\n"
          "\n"
          "Progress goes to stderr, then one summary line. OUT.tiff is written to a\n"
          "temporary file beside it and renamed into place on success.\n"
          "\n"
          "Examples:\n"
          "  tessera sample slide.tiff\n"
          "  tessera sample small.tiff --width 4000 --height 3000 --tile 512 -Q 80\n"
          "  tessera info small.tiff\n"
          "  tessera sample --width 4000 --height 3000 --tissue-mask truth.png \\\n"
          "      --mask-downsample 16\n",
          MAX_DIMENSION, DEFAULT_WIDTH, MAX_DIMENSION, DEFAULT_HEIGHT, TISSUE_MAX_TILE,
          DEFAULT_TILE, DEFAULT_QUALITY, MAX_WORKERS, DEFAULT_MASK_DOWNSAMPLE);
}

typedef struct sample_args {
  const char *output;
  const char *tissue_mask; /* NULL: none */
  double mask_downsample;
  bool have_mask_downsample;
  int64_t width, height, tile, quality, threads;
  bool quiet;
} sample_args;

/* A finite number > 0, the whole string. */
static bool parse_positive(const char *what, const char *text, double *out) {
  char *end;
  errno = 0;
  double v = strtod(text, &end);
  if (end == text || *end != '\0' || errno != 0 || !isfinite(v) || v <= 0.0) {
    cli_usage("sample", "%s: expected a number > 0, not '%s'", what, text);
    return false;
  }
  *out = v;
  return true;
}

static int default_threads(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n < 1 ? 1 : n > MAX_WORKERS ? MAX_WORKERS : (int)n;
}

static int parse_args(int argc, char **argv, sample_args *a) {
  memset(a, 0, sizeof *a);
  a->width = DEFAULT_WIDTH;
  a->height = DEFAULT_HEIGHT;
  a->tile = DEFAULT_TILE;
  a->quality = DEFAULT_QUALITY;
  a->threads = default_threads();
  a->mask_downsample = DEFAULT_MASK_DOWNSAMPLE;
  cli_parser p;
  cli_parser_init(&p, "sample", argc, argv, options, (int)(sizeof options / sizeof options[0]));
  int id, r;
  const char *v;
  bool ok = true;
  while (ok && (r = cli_next(&p, &id, &v)) > 0) {
    switch (id) {
    case CLI_POSITIONAL:
      if (a->output)
        return cli_usage("sample", "more than one output given ('%s' and '%s')", a->output, v);
      a->output = v;
      break;
    case OPT_WIDTH:
      ok = cli_parse_int64("sample", "--width", v, 1, MAX_DIMENSION, &a->width);
      break;
    case OPT_HEIGHT:
      ok = cli_parse_int64("sample", "--height", v, 1, MAX_DIMENSION, &a->height);
      break;
    case OPT_TILE:
      ok = cli_parse_int64("sample", "--tile", v, 16, TISSUE_MAX_TILE, &a->tile);
      if (ok && a->tile % 16 != 0)
        return cli_usage("sample", "--tile: %" PRId64 " is not a multiple of 16", a->tile);
      break;
    case OPT_QUALITY: ok = cli_parse_int64("sample", "--quality", v, 1, 100, &a->quality); break;
    case OPT_THREADS:
      ok = cli_parse_int64("sample", "--threads", v, 0, MAX_WORKERS, &a->threads);
      break;
    case OPT_QUIET: a->quiet = true; break;
    case OPT_TISSUE_MASK: a->tissue_mask = v; break;
    case OPT_MASK_DOWNSAMPLE:
      ok = parse_positive("--mask-downsample", v, &a->mask_downsample);
      a->have_mask_downsample = true;
      break;
    }
  }
  if (!ok || r < 0)
    return CLI_EXIT_USAGE;
  if (!a->output && !a->tissue_mask)
    return cli_usage("sample", "no OUT.tiff (or --tissue-mask MASK.png) given");
  if (a->have_mask_downsample && !a->tissue_mask)
    return cli_usage("sample", "--mask-downsample goes with --tissue-mask");
  if (a->tissue_mask) {
    double w = ceil((double)a->width / a->mask_downsample);
    double h = ceil((double)a->height / a->mask_downsample);
    if (w > (double)MASK_SIDE_MAX || h > (double)MASK_SIDE_MAX)
      return cli_usage("sample", "--mask-downsample %g makes a %.0f x %.0f mask (at most %" PRId64
                       " a side)", a->mask_downsample, w, h, MASK_SIDE_MAX);
  }
  return CLI_EXIT_OK;
}

/* ---- the pyramid ---------------------------------------------------------------------- */

typedef struct level_plan {
  uint32_t width, height;
  uint32_t tiles_across, tiles_down;
  uint64_t first_tile;     /* index of its first tile in the whole sequence */
  double scale_x, scale_y; /* level-0 pixels per pixel of this level */
  int samples;             /* per axis, per pixel */
} level_plan;

typedef struct pyramid {
  tissue_scene scene;
  uint32_t tile;
  int level_count;
  level_plan levels[MAX_LEVELS];
  uint64_t tile_count;
  uint64_t raw_bytes; /* uncompressed size of all tiles */
} pyramid;

static void pyramid_plan(pyramid *py, int64_t width, int64_t height, int64_t tile) {
  memset(py, 0, sizeof *py);
  tissue_scene_init(&py->scene, width, height);
  py->tile = (uint32_t)tile;
  uint64_t w = (uint64_t)width, h = (uint64_t)height;
  for (;;) {
    level_plan *l = &py->levels[py->level_count];
    l->width = (uint32_t)w;
    l->height = (uint32_t)h;
    l->tiles_across = (uint32_t)((w + (uint64_t)tile - 1) / (uint64_t)tile);
    l->tiles_down = (uint32_t)((h + (uint64_t)tile - 1) / (uint64_t)tile);
    l->first_tile = py->tile_count;
    l->scale_x = (double)width / (double)w;
    l->scale_y = (double)height / (double)h;
    /* One sample at full resolution; 2 x 2 below it, where a pixel covers several. */
    l->samples = py->level_count == 0 ? 1 : 2;
    uint64_t tiles = (uint64_t)l->tiles_across * l->tiles_down;
    py->tile_count += tiles;
    py->raw_bytes += tiles * (uint64_t)tile * (uint64_t)tile * 3;
    py->level_count++;
    if ((w <= (uint64_t)tile && h <= (uint64_t)tile) || py->level_count == MAX_LEVELS)
      break;
    w = (w + 1) / 2;
    h = (h + 1) / 2;
  }
}

/* Which level and position the n-th tile of the whole sequence is. */
static const level_plan *pyramid_locate(const pyramid *py, uint64_t index, uint32_t *tx,
                                        uint32_t *ty) {
  int i = py->level_count - 1;
  while (i > 0 && py->levels[i].first_tile > index)
    i--;
  const level_plan *l = &py->levels[i];
  uint64_t k = index - l->first_tile;
  *tx = (uint32_t)(k % l->tiles_across);
  *ty = (uint32_t)(k / l->tiles_across);
  return l;
}

/* Runs in worker threads; reads only the pyramid, which does not change while they run.
 * Only the part of an edge tile inside the image is painted (a 100000 x 1 image would
 * otherwise cost as much as 100000 x 256); the rest is plain glass, cheap to compress. */
static void paint_tile(void *context, uint64_t index, uint8_t *buffer) {
  const pyramid *py = context;
  uint32_t tx, ty;
  const level_plan *l = pyramid_locate(py, index, &tx, &ty);
  uint32_t x0 = tx * py->tile, y0 = ty * py->tile;
  uint32_t w = l->width - x0 < py->tile ? l->width - x0 : py->tile;
  uint32_t h = l->height - y0 < py->tile ? l->height - y0 : py->tile;
  size_t stride = (size_t)py->tile * 3;
  if (w < py->tile || h < py->tile)
    memset(buffer, GLASS_PADDING, stride * py->tile);
  tissue_paint(&py->scene, l->scale_x, l->scale_y, l->samples, x0, y0, (int)w, (int)h, buffer,
               stride);
}

/* ---- libtiff's messages ------------------------------------------------------------- */

/* libtiff reports through process-wide handlers; only the main thread calls libtiff here. */
static char tiff_message[512];
static bool tiff_failed;

/* Keeps the first message: it names the cause, later ones are its consequences. */
/* The writes clear errno first, so a value here came from the failed system call, which
 * libtiff's own message ("Write error at ...") does not name. */
static void record_failure(const char *module, const char *fmt, va_list ap) {
  int system_error = errno;
  char text[400];
  vsnprintf(text, sizeof text, fmt, ap);
  if (!tiff_failed)
    snprintf(tiff_message, sizeof tiff_message, "%s%s%s%s%s", module ? module : "",
             module ? ": " : "", text, system_error ? ": " : "",
             system_error ? strerror(system_error) : "");
  tiff_failed = true;
}

static void on_tiff_error(const char *module, const char *fmt, va_list ap) {
  record_failure(module, fmt, ap);
}

/* A failure found by this file rather than by libtiff. */
static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...) {
  errno = 0;
  va_list ap;
  va_start(ap, fmt);
  record_failure(NULL, fmt, ap);
  va_end(ap);
}

static void on_tiff_warning(const char *module, const char *fmt, va_list ap) {
  (void)module;
  (void)fmt;
  (void)ap;
}

static const char *tiff_reason(const char *fallback) {
  return tiff_failed ? tiff_message : fallback;
}

/* ---- progress ------------------------------------------------------------------------ */

typedef struct progress {
  bool quiet;
  bool terminal; /* stderr is a terminal: one line redrawn in place */
  const char *path;
  double start, last_shown;
  int last_percent;
  bool line_open; /* a redrawn line is on screen without its newline */
} progress;

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void progress_update(progress *pr, double fraction, int level) {
  if (pr->quiet)
    return;
  int percent = (int)(fraction * 100.0);
  double t = now_seconds();
  if (pr->terminal) {
    if (percent == pr->last_percent)
      return;
    fprintf(stderr, "\rtessera: writing %s: %3d%% (level %d)\033[K", pr->path, percent, level);
    pr->line_open = true;
  } else {
    /* A log gets a line now and then, not a flood. */
    if (t - pr->last_shown < 10.0)
      return;
    fprintf(stderr, "tessera: writing %s: %d%% (level %d)\n", pr->path, percent, level);
    pr->last_shown = t;
  }
  pr->last_percent = percent;
  fflush(stderr);
}

/* Clears the redrawn line, so that what follows (summary or error) is the only line. */
static void progress_end(progress *pr) {
  if (pr->line_open) {
    fputs("\r\033[K", stderr);
    fflush(stderr);
    pr->line_open = false;
  }
}

/* ---- writing ----------------------------------------------------------------------- */

static bool set_level_fields(TIFF *tif, const pyramid *py, int index, const sample_args *a,
                             const char *description, const char *software) {
  const level_plan *l = &py->levels[index];
  bool ok = TIFFSetField(tif, TIFFTAG_SUBFILETYPE, index ? FILETYPE_REDUCEDIMAGE : 0) &&
            TIFFSetField(tif, TIFFTAG_IMAGEWIDTH, l->width) &&
            TIFFSetField(tif, TIFFTAG_IMAGELENGTH, l->height) &&
            TIFFSetField(tif, TIFFTAG_TILEWIDTH, py->tile) &&
            TIFFSetField(tif, TIFFTAG_TILELENGTH, py->tile) &&
            TIFFSetField(tif, TIFFTAG_BITSPERSAMPLE, 8) &&
            TIFFSetField(tif, TIFFTAG_SAMPLESPERPIXEL, 3) &&
            TIFFSetField(tif, TIFFTAG_PLANARCONFIG, PLANARCONFIG_CONTIG) &&
            TIFFSetField(tif, TIFFTAG_COMPRESSION, COMPRESSION_JPEG) &&
            TIFFSetField(tif, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_YCBCR) &&
            TIFFSetField(tif, TIFFTAG_YCBCRSUBSAMPLING, 2, 2) &&
            /* libtiff takes RGB and has libjpeg convert it to YCbCr. */
            TIFFSetField(tif, TIFFTAG_JPEGCOLORMODE, JPEGCOLORMODE_RGB) &&
            TIFFSetField(tif, TIFFTAG_JPEGQUALITY, (int)a->quality) &&
            TIFFSetField(tif, TIFFTAG_RESOLUTIONUNIT, RESUNIT_CENTIMETER) &&
            TIFFSetField(tif, TIFFTAG_XRESOLUTION, 1e4 / (MPP_LEVEL0 * l->scale_x)) &&
            TIFFSetField(tif, TIFFTAG_YRESOLUTION, 1e4 / (MPP_LEVEL0 * l->scale_y)) &&
            TIFFSetField(tif, TIFFTAG_SOFTWARE, software);
  if (ok && index == 0)
    ok = TIFFSetField(tif, TIFFTAG_IMAGEDESCRIPTION, description);
  if (!ok)
    return false;
  /* With JPEGCOLORMODE_RGB a tile is taken as full RGB, not subsampled YCbCr. */
  uint64_t expected = (uint64_t)py->tile * py->tile * 3;
  if (TIFFTileSize64(tif) != expected) {
    fail("libtiff expects %" PRIu64 "-byte tiles, not %" PRIu64, TIFFTileSize64(tif), expected);
    return false;
  }
  return true;
}

/* Paints and writes every tile of every level. Prints nothing on failure; the caller
 * reports tiff_reason(). */
static bool write_pyramid(TIFF *tif, const pyramid *py, const sample_args *a, progress *pr) {
  char description[128], software[64];
  snprintf(description, sizeof description, "tessera sample %" PRIu32 "x%" PRIu32 " (%d levels)",
           py->levels[0].width, py->levels[0].height, py->level_count);
  snprintf(software, sizeof software, "tessera %s", tessera_version());

  size_t tile_bytes = (size_t)py->tile * py->tile * 3;
  /* A few tiles in flight per worker keep them busy while the writer catches up; with big
   * tiles, fewer workers and slots keep the memory bounded. */
  size_t max_slots = RING_BYTES_MAX / tile_bytes < 2 ? 2 : RING_BYTES_MAX / tile_bytes;
  int workers = (int)a->threads;
  if ((size_t)workers > max_slots - 1)
    workers = (int)(max_slots - 1);
  int slots = workers * 4 + 2;
  if ((size_t)slots > max_slots)
    slots = (int)max_slots;
  tile_pipeline *pipe =
      tile_pipeline_create(py->tile_count, tile_bytes, workers, slots, paint_tile, (void *)py);
  if (!pipe) {
    fail("out of memory");
    return false;
  }
  /* Progress counts samples painted, since a tile below level 0 costs four times more. */
  double total_work = 0.0, done_work = 0.0;
  for (int i = 0; i < py->level_count; i++) {
    const level_plan *l = &py->levels[i];
    total_work += (double)((uint64_t)l->tiles_across * l->tiles_down) * l->samples * l->samples;
  }
  bool ok = true;
  for (int i = 0; ok && i < py->level_count; i++) {
    const level_plan *l = &py->levels[i];
    ok = set_level_fields(tif, py, i, a, description, software);
    uint64_t tiles = (uint64_t)l->tiles_across * l->tiles_down;
    for (uint64_t k = 0; ok && k < tiles; k++) {
      uint64_t index = l->first_tile + k;
      const uint8_t *pixels = tile_pipeline_take(pipe, index);
      errno = 0;
      ok = TIFFWriteEncodedTile(tif, (uint32_t)k, (void *)pixels, (tmsize_t)tile_bytes) >= 0;
      tile_pipeline_release(pipe, index);
      done_work += (double)(l->samples * l->samples);
      progress_update(pr, done_work / total_work, i);
    }
    errno = 0;
    if (ok)
      ok = TIFFWriteDirectory(tif) != 0;
  }
  tile_pipeline_destroy(pipe);
  return ok && !tiff_failed;
}

static void print_summary(const sample_args *a, const pyramid *py, const char *path,
                          double seconds) {
  struct stat st;
  double mib = stat(path, &st) == 0 ? (double)st.st_size / (1024.0 * 1024.0) : 0.0;
  fprintf(stderr,
          "tessera: wrote %s: %" PRIu32 "x%" PRIu32 ", %d level%s, %" PRIu32 "x%" PRIu32
          " JPEG tiles (quality %d)%s, %.1f MiB in %.1f s\n",
          path, py->levels[0].width, py->levels[0].height, py->level_count,
          py->level_count == 1 ? "" : "s", py->tile, py->tile, (int)a->quality,
          py->raw_bytes > BIGTIFF_THRESHOLD ? ", BigTIFF" : "", mib, seconds);
}

/* Writes the drawn-tissue truth of the picture (see tissue_truth). */
static bool write_tissue_mask(const sample_args *a, const tissue_scene *scene) {
  int64_t w = (int64_t)ceil((double)a->width / a->mask_downsample);
  int64_t h = (int64_t)ceil((double)a->height / a->mask_downsample);
  uint8_t *mask = malloc((size_t)w * (size_t)h);
  if (!mask) {
    cli_error(a->tissue_mask, "out of memory for a %" PRId64 " x %" PRId64 " mask", w, h);
    return false;
  }
  for (int64_t x0 = 0; x0 < w; x0 += TISSUE_MAX_TILE) {
    int cols = (int)(w - x0 < TISSUE_MAX_TILE ? w - x0 : TISSUE_MAX_TILE);
    tissue_truth(scene, a->mask_downsample, a->mask_downsample, x0, 0, cols, (int)h, mask + x0,
                 (size_t)w);
  }
  bool ok = image_write_path(a->tissue_mask, mask, w, h, 1);
  free(mask);
  if (ok && !a->quiet)
    fprintf(stderr, "tessera: wrote %s: %" PRId64 "x%" PRId64 " tissue mask, %g level-0 pixels a "
            "pixel\n", a->tissue_mask, w, h, a->mask_downsample);
  return ok;
}

int cmd_sample(int argc, char **argv) {
  if (cli_wants_help(argc, argv)) {
    cmd_sample_help(stdout);
    return CLI_EXIT_OK;
  }
  sample_args a;
  int rc = parse_args(argc, argv, &a);
  if (rc != CLI_EXIT_OK)
    return rc;

  static pyramid py; /* large (MAX_LEVELS levels): keep it off the stack */
  pyramid_plan(&py, a.width, a.height, a.tile);
  if (a.tissue_mask && !write_tissue_mask(&a, &py.scene))
    return CLI_EXIT_ERROR;
  if (!a.output)
    return CLI_EXIT_OK;

  TIFFSetErrorHandler(on_tiff_error);
  TIFFSetWarningHandler(on_tiff_warning);
  progress pr = {.quiet = a.quiet,
                 .terminal = isatty(STDERR_FILENO) != 0,
                 .path = a.output,
                 .last_percent = -1};
  pr.start = pr.last_shown = now_seconds();

  cli_outfile out;
  if (!cli_outfile_open(&out, a.output))
    return CLI_EXIT_ERROR;
  errno = 0;
  TIFF *tif = TIFFFdOpen(out.fd, a.output, py.raw_bytes > BIGTIFF_THRESHOLD ? "w8" : "w");
  if (!tif) {
    cli_error(a.output, "cannot start the TIFF: %s", tiff_reason("libtiff failed"));
    cli_outfile_abort(&out);
    return CLI_EXIT_ERROR;
  }
  out.fd = -1; /* TIFFClose closes it */
  bool ok = write_pyramid(tif, &py, &a, &pr);
  errno = 0;
  TIFFClose(tif);
  ok = ok && !tiff_failed;
  progress_end(&pr);
  if (!ok) {
    cli_error(a.output, "%s", tiff_reason("writing the TIFF failed"));
    cli_outfile_abort(&out);
    return CLI_EXIT_ERROR;
  }
  if (!cli_outfile_commit(&out))
    return CLI_EXIT_ERROR;
  if (!a.quiet)
    print_summary(&a, &py, a.output, now_seconds() - pr.start);
  return CLI_EXIT_OK;
}
