/* `tessera tissue SLIDE --output MASK.png`: the slide's tissue mask (tessera_tissue_mask), and
 * the mask options that `tessera grid` shares. */
#include "cli.h"
#include "image_write.h"
#include "tessera.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum {
  OPT_OUTPUT = 1,
  OPT_HELP,
};

const cli_option tissue_mask_options[TISSUE_MASK_OPTION_COUNT] = {
    {"mask-mpp", 0, true, TOPT_MPP},
    {"mask-downsample", 0, true, TOPT_DOWNSAMPLE},
    {"mode", 0, true, TOPT_MODE},
    {"background-tolerance", 0, true, TOPT_BACKGROUND},
    {"black-max", 0, true, TOPT_BLACK},
    {"pen-min-saturation", 0, true, TOPT_PEN_SATURATION},
    {"pen-hue", 0, true, TOPT_PEN_HUE},
    {"min-threshold", 0, true, TOPT_MIN_THRESHOLD},
    {"min-tissue-area", 0, true, TOPT_MIN_TISSUE},
    {"max-hole-area", 0, true, TOPT_MAX_HOLE},
    {"workers", 'w', true, TOPT_WORKERS},
};

void tissue_mask_options_help(FILE *out) {
  tessera_tissue_options d;
  tessera_tissue_options_init(&d);
  fprintf(out,
          "Mask options (docs/TISSUE.md):\n"
          "      --mask-mpp M      micrometres per mask pixel (the slide must say its mpp)\n"
          "      --mask-downsample D\n"
          "                        level-0 pixels per mask pixel (default: 8 um per\n"
          "                        pixel, or 32 when the slide gives no mpp)\n"
          "      --mode MODE       auto (default), brightfield or darkfield: auto takes a\n"
          "                        slide whose median brightness is below 64 as dark-field\n"
          "                        (fluorescence): tissue is then what is bright\n"
          "      --background-tolerance T\n"
          "                        pixels within T of the slide's background value on\n"
          "                        every channel are background (default %d)\n"
          "      --black-max V     brightest channel <= V: black border or ink, not tissue;\n"
          "                        -1: no such rule (default %d)\n"
          "      --pen-min-saturation S\n"
          "                        saturation (0..255) from which a pixel of pen hue is\n"
          "                        ink; 256: no pen rule (default %d)\n"
          "      --pen-hue MIN,MAX pen hues in degrees (default %g,%g: green to blue)\n"
          "      --min-threshold T the least saturation taken as tissue, whatever Otsu\n"
          "                        says (default %d)\n"
          "      --min-tissue-area A\n"
          "                        drop tissue pieces smaller than A square micrometres\n"
          "                        (square level-0 pixels without mpp; default %g)\n"
          "      --max-hole-area A fill holes smaller than A (same units; default %g)\n"
          "  -w, --workers W       threads reading the level (default 0: this one)\n",
          d.background_tolerance, d.black_max, d.pen_min_saturation, d.pen_hue_min,
          d.pen_hue_max, d.min_threshold, d.min_tissue_area, d.max_hole_area);
}

bool cli_parse_double(const char *command, const char *what, const char *text, double min,
                      double max, double *out) {
  char *end;
  errno = 0;
  double v = strtod(text, &end);
  if (end == text || *end != '\0' || errno != 0 || !isfinite(v) || v < min || v > max) {
    cli_usage(command, "%s: expected a number from %g to %g, not '%s'", what, min, max, text);
    return false;
  }
  *out = v;
  return true;
}

bool tissue_mask_option(const char *command, int id, const char *v, tessera_tissue_options *o) {
  int64_t i;
  double a, b;
  switch (id) {
  case TOPT_MPP: return cli_parse_double(command, "--mask-mpp", v, 1e-6, 1e6, &o->mpp);
  case TOPT_DOWNSAMPLE:
    return cli_parse_double(command, "--mask-downsample", v, 1e-3, 1e9, &o->downsample);
  case TOPT_MODE:
    if (strcmp(v, "auto") == 0)
      o->mode = TESSERA_TISSUE_AUTO;
    else if (strcmp(v, "brightfield") == 0)
      o->mode = TESSERA_TISSUE_BRIGHTFIELD;
    else if (strcmp(v, "darkfield") == 0)
      o->mode = TESSERA_TISSUE_DARKFIELD;
    else {
      cli_usage(command, "--mode: auto, brightfield or darkfield, not '%s'", v);
      return false;
    }
    return true;
  case TOPT_BACKGROUND:
    if (!cli_parse_int64(command, "--background-tolerance", v, 0, 255, &i))
      return false;
    o->background_tolerance = (int32_t)i;
    return true;
  case TOPT_BLACK:
    if (!cli_parse_int64(command, "--black-max", v, -1, 255, &i))
      return false;
    o->black_max = (int32_t)i;
    return true;
  case TOPT_PEN_SATURATION:
    if (!cli_parse_int64(command, "--pen-min-saturation", v, 0, 256, &i))
      return false;
    o->pen_min_saturation = (int32_t)i;
    return true;
  case TOPT_PEN_HUE: {
    const char *comma = strchr(v, ',');
    char first[64];
    if (!comma || (size_t)(comma - v) >= sizeof first) {
      cli_usage(command, "--pen-hue: expected MIN,MAX in degrees, not '%s'", v);
      return false;
    }
    memcpy(first, v, (size_t)(comma - v));
    first[comma - v] = '\0';
    if (!cli_parse_double(command, "--pen-hue MIN", first, 0, 360, &a) ||
        !cli_parse_double(command, "--pen-hue MAX", comma + 1, 0, 360, &b))
      return false;
    if (a > b) {
      cli_usage(command, "--pen-hue: MIN %g is above MAX %g", a, b);
      return false;
    }
    o->pen_hue_min = a;
    o->pen_hue_max = b;
    return true;
  }
  case TOPT_MIN_THRESHOLD:
    if (!cli_parse_int64(command, "--min-threshold", v, 0, 255, &i))
      return false;
    o->min_threshold = (int32_t)i;
    return true;
  case TOPT_MIN_TISSUE:
    return cli_parse_double(command, "--min-tissue-area", v, 0, 1e18, &o->min_tissue_area);
  case TOPT_MAX_HOLE:
    return cli_parse_double(command, "--max-hole-area", v, 0, 1e18, &o->max_hole_area);
  case TOPT_WORKERS:
    if (!cli_parse_int64(command, "--workers", v, 0, 1024, &i))
      return false;
    o->num_workers = (int32_t)i;
    return true;
  }
  cli_usage(command, "unknown mask option");
  return false;
}

void cmd_tissue_help(FILE *out) {
  fputs("Usage: tessera tissue SLIDE --output MASK.png [--mask-mpp M | --mask-downsample D]\n"
        "                      [mask options]\n"
        "\n"
        "Find the tissue on a slide and write it as a binary mask: an 8-bit gray PNG (or\n"
        ".raw bytes), 255 where there is tissue and 0 elsewhere. Mask pixel (i, j) covers\n"
        "level-0 pixels [i*D, (i+1)*D) x [j*D, (j+1)*D), D being the mask's downsample.\n"
        "The mask is computed from the coarsest level at least as fine as the mask,\n"
        "area-averaged to the mask's pixels: background (the slide's fill colour), black\n"
        "(borders, ink) and pen-coloured (blue, green) pixels are left out; the rest is\n"
        "tissue where its saturation is above Otsu's threshold of theirs; then small\n"
        "tissue specks are dropped and small holes filled.\n"
        "\n"
        "Prints, one 'key: value' a line: mask (W x H), downsample, mpp (0 when the\n"
        "slide gives none), level, mode, threshold and tissue_fraction.\n"
        "\n"
        "Options:\n"
        "  -o, --output FILE     the mask, .png or .raw (required)\n"
        "  -h, --help            show this help\n"
        "\n",
        out);
  tissue_mask_options_help(out);
  fputs("\n"
        "Examples:\n"
        "  tessera tissue slide.svs --output mask.png\n"
        "  tessera tissue slide.svs --output mask.png --mask-mpp 16 --max-hole-area 1e5\n"
        "  tessera tissue scan.ndpi --output mask.png --mode darkfield\n",
        out);
}

void tissue_mask_print(FILE *out, const tessera_mask *m) {
  fprintf(out,
          "mask: %lld x %lld\ndownsample: %.17g\nmpp: %.17g\nlevel: %d\nmode: %s\n"
          "threshold: %d\ntissue_fraction: %.17g\n",
          (long long)m->width, (long long)m->height, m->downsample, m->mpp, m->level,
          m->darkfield ? "darkfield" : "brightfield", m->threshold, m->tissue_fraction);
}

int cmd_tissue(int argc, char **argv) {
  if (cli_wants_help(argc, argv)) {
    cmd_tissue_help(stdout);
    return CLI_EXIT_OK;
  }
  cli_option opts[TISSUE_MASK_OPTION_COUNT + 2] = {
      {"output", 'o', true, OPT_OUTPUT},
      {"help", 'h', false, OPT_HELP},
  };
  memcpy(opts + 2, tissue_mask_options, sizeof tissue_mask_options);
  const char *slide_path = NULL, *output = NULL;
  tessera_tissue_options to;
  tessera_tissue_options_init(&to);
  cli_parser p;
  cli_parser_init(&p, "tissue", argc, argv, opts, (int)(sizeof opts / sizeof opts[0]));
  int id, r;
  const char *v;
  bool ok = true;
  while (ok && (r = cli_next(&p, &id, &v)) > 0) {
    if (id == CLI_POSITIONAL) {
      if (slide_path)
        return cli_usage("tissue", "more than one slide given ('%s' and '%s')", slide_path, v);
      slide_path = v;
    } else if (id == OPT_OUTPUT) {
      output = v;
    } else {
      ok = tissue_mask_option("tissue", id, v, &to);
    }
  }
  if (!ok || r < 0)
    return CLI_EXIT_USAGE;
  if (!slide_path)
    return cli_usage("tissue", "no SLIDE given");
  if (!output)
    return cli_usage("tissue", "--output MASK.png is required");
  if (to.mpp > 0 && to.downsample > 0)
    return cli_usage("tissue", "--mask-mpp and --mask-downsample are alternatives; give one");
  tessera_slide *slide = NULL;
  if (tessera_open(slide_path, &slide) != TESSERA_OK) {
    cli_error(slide_path, "%s", tessera_error_message());
    return CLI_EXIT_ERROR;
  }
  tessera_mask *m = NULL;
  if (tessera_tissue_mask(slide, &to, &m) != TESSERA_OK) {
    cli_error(slide_path, "%s", tessera_error_message());
    tessera_close(slide);
    return CLI_EXIT_ERROR;
  }
  ok = image_write_path(output, m->data, m->width, m->height, 1);
  if (ok)
    tissue_mask_print(stdout, m);
  tessera_mask_free(m);
  tessera_close(slide);
  return ok ? CLI_EXIT_OK : CLI_EXIT_ERROR;
}
