/* `tessera read`: one region of one level, written as PNG, PPM or raw bytes. */
#include "cli.h"
#include "image_write.h"
#include "tessera.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* The largest buffer `read` will allocate; a region is held in memory whole. */
#define MAX_REGION_BYTES ((uint64_t)4 << 30)

enum {
  OPT_LOCATION = 1,
  OPT_SIZE,
  OPT_LEVEL,
  OPT_CHANNELS,
  OPT_FILL,
  OPT_OUTPUT,
  OPT_ASSOCIATED,
  OPT_MPP,
  OPT_FAST,
  OPT_HELP
};

static const cli_option options[] = {
    {"location", 'l', true, OPT_LOCATION},
    {"size", 's', true, OPT_SIZE},
    {"level", 'L', true, OPT_LEVEL},
    {"channels", 'c', true, OPT_CHANNELS},
    {"fill", 'f', true, OPT_FILL},
    {"output", 'o', true, OPT_OUTPUT},
    {"associated", 'a', true, OPT_ASSOCIATED},
    {"mpp", 'm', true, OPT_MPP},
    {"fast", 0, false, OPT_FAST},
    {"help", 'h', false, OPT_HELP},
};

void cmd_read_help(FILE *out) {
  fputs("Usage: tessera read SLIDE --location X,Y --size W,H [--level L | --mpp M [--fast]]\n"
        "                    [--channels 3|4] [--fill V] --output FILE\n"
        "       tessera read SLIDE --associated NAME [--channels 3|4] --output FILE\n"
        "\n"
        "Read a W x H region of level L whose top-left corner is (X, Y) in level-0\n"
        "pixels, and write it to FILE. The region may reach past the edges of the image\n"
        "(X and Y may be negative); pixels outside the image get the fill value (and\n"
        "alpha 0). With --associated, read the whole associated image NAME instead (a\n"
        "label, macro, thumbnail...: 'tessera info' lists them).\n"
        "\n"
        "Options:\n"
        "  -l, --location X,Y  top-left corner in level-0 pixels (required)\n"
        "  -s, --size W,H      size in pixels of the requested level, each >= 1\n"
        "                      (required)\n"
        "  -L, --level L       pyramid level, 0 (the largest, default) .. levels-1\n"
        "  -m, --mpp M         read at M micrometres per pixel instead (W,H in pixels at\n"
        "                      M): the coarsest level at most that fine, each pixel the\n"
        "                      exact area average of the level pixels it covers\n"
        "                      (docs/RESOLUTION.md); the slide must say its mpp\n"
        "      --fast          with --mpp: decode JPEG tiles at 1/2, 1/4 or 1/8 by the\n"
        "                      reduced-size IDCT: faster, close to but not the exact\n"
        "                      average\n"
        "  -c, --channels C    3 for RGB (default) or 4 for RGBA\n"
        "  -f, --fill V        value 0..255 for pixels outside the image (default: the\n"
        "                      slide's background, see 'tessera info')\n"
        "  -a, --associated NAME\n"
        "                      the associated image NAME, whole (no --location,\n"
        "                      --size, --level or --fill with it)\n"
        "  -o, --output FILE   the output; its extension picks the format:\n"
        "                        .png  8-bit RGB or RGBA PNG\n"
        "                        .ppm  binary PPM (P6), RGB only\n"
        "                        .raw  the bare H x W x C bytes, rows top to bottom\n"
        "  -h, --help          show this help\n"
        "\n"
        "The region is held in memory whole, so W x H x C may be at most 4 GiB. FILE is\n"
        "written to a temporary file beside it and renamed into place on success, so a\n"
        "failed read never leaves a partial FILE.\n"
        "\n"
        "Examples:\n"
        "  tessera read slide.svs --location 1000,2000 --size 512,512 --output patch.png\n"
        "  tessera read slide.svs --location 0,0 --size 1024,768 --level 2 -o view.ppm\n"
        "  tessera read slide.tif --location -100,-100 --size 256,256 --channels 4 \\\n"
        "      --fill 255 --output corner.raw\n"
        "  tessera read slide.svs --associated label --output label.png\n"
        "  tessera read slide.svs --location 1000,2000 --size 224,224 --mpp 0.5 -o p.png\n",
        out);
}

typedef struct read_args {
  const char *slide;
  const char *output;
  const char *associated;
  image_format format;
  int64_t x, y, width, height, level, channels, fill;
  double mpp; /* 0: read the level as it is */
  bool have_location, have_size, have_level, have_fill, fast;
} read_args;

/* The region (or associated image) must fit in memory and in the output format. */
static int check_size(const read_args *a) {
  uint64_t bytes;
  if (__builtin_mul_overflow((uint64_t)a->width, (uint64_t)a->height, &bytes) ||
      __builtin_mul_overflow(bytes, (uint64_t)a->channels, &bytes) || bytes > MAX_REGION_BYTES ||
      bytes > SIZE_MAX)
    return cli_usage("read",
                     "%" PRId64 " x %" PRId64 " pixels with %" PRId64
                     " channels is more than the 4 GiB a region may take",
                     a->width, a->height, a->channels);
  char why[256];
  if (!image_format_accepts(a->format, a->width, a->height, (int)a->channels, why, sizeof why))
    return cli_usage("read", "%s: %s", a->output, why);
  return CLI_EXIT_OK;
}

static int parse_args(int argc, char **argv, read_args *a) {
  memset(a, 0, sizeof *a);
  a->channels = 3;
  a->fill = -1;
  cli_parser p;
  cli_parser_init(&p, "read", argc, argv, options, (int)(sizeof options / sizeof options[0]));
  int id, r;
  const char *v;
  bool ok = true;
  while (ok && (r = cli_next(&p, &id, &v)) > 0) {
    switch (id) {
    case CLI_POSITIONAL:
      if (a->slide)
        return cli_usage("read", "more than one SLIDE given ('%s' and '%s')", a->slide, v);
      a->slide = v;
      break;
    case OPT_LOCATION:
      ok = cli_parse_pair("read", "--location", v, INT64_MIN, INT64_MAX, &a->x, &a->y);
      a->have_location = true;
      break;
    case OPT_SIZE:
      ok = cli_parse_pair("read", "--size", v, 1, INT64_MAX, &a->width, &a->height);
      a->have_size = true;
      break;
    case OPT_LEVEL:
      ok = cli_parse_int64("read", "--level", v, 0, INT32_MAX, &a->level);
      a->have_level = true;
      break;
    case OPT_CHANNELS: ok = cli_parse_int64("read", "--channels", v, 3, 4, &a->channels); break;
    case OPT_FILL:
      ok = cli_parse_int64("read", "--fill", v, 0, 255, &a->fill);
      a->have_fill = true;
      break;
    case OPT_OUTPUT: a->output = v; break;
    case OPT_ASSOCIATED: a->associated = v; break;
    case OPT_MPP: ok = cli_parse_double("read", "--mpp", v, 1e-6, 1e6, &a->mpp); break;
    case OPT_FAST: a->fast = true; break;
    }
  }
  if (!ok || r < 0)
    return CLI_EXIT_USAGE;
  if (!a->slide)
    return cli_usage("read", "no SLIDE given");
  if (a->associated && (a->have_location || a->have_size || a->have_level || a->have_fill))
    return cli_usage("read", "--associated reads a whole image: no --location, --size, --level "
                             "or --fill with it");
  if (a->mpp > 0 && (a->have_level || a->associated))
    return cli_usage("read", "--mpp picks the level itself: no --level or --associated with it");
  if (a->fast && a->mpp <= 0)
    return cli_usage("read", "--fast goes with --mpp");
  if (!a->associated && !a->have_location)
    return cli_usage("read", "--location X,Y is required");
  if (!a->associated && !a->have_size)
    return cli_usage("read", "--size W,H is required");
  if (!a->output)
    return cli_usage("read", "--output FILE is required");
  if (!image_format_from_path(a->output, &a->format))
    return cli_usage("read", "%s: unknown output format; the name must end in .png, .ppm or .raw",
                     a->output);
  return a->associated ? CLI_EXIT_OK : check_size(a);
}

/* Writes the pixels through a temporary file; prints the error on failure. */
static bool write_output(const read_args *a, const uint8_t *pixels) {
  return image_write_path(a->output, pixels, a->width, a->height, (int)a->channels);
}

int cmd_read(int argc, char **argv) {
  if (cli_wants_help(argc, argv)) {
    cmd_read_help(stdout);
    return CLI_EXIT_OK;
  }
  read_args a;
  int rc = parse_args(argc, argv, &a);
  if (rc != CLI_EXIT_OK)
    return rc;

  tessera_slide *slide = NULL;
  if (tessera_open(a.slide, &slide) != TESSERA_OK) {
    cli_error(a.slide, "%s", tessera_error_message());
    return CLI_EXIT_ERROR;
  }
  if (a.associated) {
    if (tessera_associated_image_dimensions(slide, a.associated, &a.width, &a.height) !=
        TESSERA_OK) {
      cli_error(a.slide, "%s", tessera_error_message());
      tessera_close(slide);
      return CLI_EXIT_ERROR;
    }
    if ((rc = check_size(&a)) != CLI_EXIT_OK) {
      tessera_close(slide);
      return rc;
    }
  }
  int32_t levels = tessera_level_count(slide);
  if (a.level >= levels) {
    cli_error(a.slide, "level %" PRId64 " does not exist (the slide has %" PRId32 " level%s)",
              a.level, levels, levels == 1 ? "" : "s");
    tessera_close(slide);
    return CLI_EXIT_ERROR;
  }
  size_t size = (size_t)a.width * (size_t)a.height * (size_t)a.channels;
  uint8_t *pixels = malloc(size);
  if (!pixels) {
    cli_error(a.slide, "out of memory for a %zu-byte region", size);
    tessera_close(slide);
    return CLI_EXIT_ERROR;
  }
  tessera_read_options ro;
  tessera_read_options_init(&ro);
  ro.channels = (int32_t)a.channels;
  ro.fill = (int32_t)a.fill;
  ro.fast_jpeg = a.fast;
  rc = CLI_EXIT_OK;
  tessera_status st;
  int32_t level = (int32_t)a.level;
  double scale = 1.0;
  if (a.associated)
    st = tessera_read_associated_image(slide, a.associated, &ro, pixels, size);
  else if (a.mpp > 0 && (st = tessera_level_for_mpp(slide, a.mpp, &level, &scale)) != TESSERA_OK)
    ;
  else if (a.mpp > 0)
    st = tessera_read_region_scaled(slide, a.x, a.y, level, scale, scale, a.width, a.height, &ro,
                                    pixels, size);
  else
    st = tessera_read_region(slide, a.x, a.y, level, a.width, a.height, &ro, pixels, size);
  if (st != TESSERA_OK) {
    cli_error(a.slide, "%s", tessera_error_message());
    rc = CLI_EXIT_ERROR;
  }
  tessera_close(slide);
  if (rc == CLI_EXIT_OK && !write_output(&a, pixels))
    rc = CLI_EXIT_ERROR;
  free(pixels);
  return rc;
}
