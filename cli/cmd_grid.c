/* `tessera grid SLIDE --size 224 --mpp 0.5 > locations.txt`: the patch locations worth reading
 * (tessera_patch_grid), in the format `tessera bench --locations` takes. */
#include "cli.h"
#include "tessera.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

enum {
  OPT_SIZE = 1,
  OPT_MPP,
  OPT_LEVEL,
  OPT_STRIDE,
  OPT_MIN_TISSUE,
  OPT_HELP,
};

void cmd_grid_help(FILE *out) {
  fputs("Usage: tessera grid SLIDE --size W[,H] (--mpp M | --level L) [--stride S[,SY]]\n"
        "                    [--min-tissue F] [mask options] > locations.txt\n"
        "\n"
        "Lay a grid of W x H patches over the slide at M micrometres per pixel (or over\n"
        "level L as it is) and print the top-left corner of each patch in level-0 pixels,\n"
        "row by row: one 'x y' line each, followed by '# ' and the patch's tissue\n"
        "fraction by the slide's tissue mask (docs/TISSUE.md). Only patches with at least\n"
        "F tissue are printed. The output is what 'tessera bench --locations' and the\n"
        "Python batch reader take (np.loadtxt(path, dtype=np.int64) reads the pairs).\n"
        "\n"
        "The header lines (starting with '#') give the level to read and the size to read\n"
        "there: with --mpp, the coarsest level whose pixels are at most M um (within 1 %),\n"
        "and the read size ceil(W * scale), scale being M / that level's mpp (a scale\n"
        "within 1 % of a whole number is that number); a reader then resamples each patch\n"
        "by the scale (Python: read_region(..., mpp=M) does it exactly). Patches lie\n"
        "wholly inside the level; patch (i, j) starts at level pixel (floor(i * SX *\n"
        "scale), floor(j * SY * scale)). The same arguments give the same output.\n"
        "\n"
        "Options:\n"
        "  -s, --size W[,H]      patch size in output pixels (required)\n"
        "  -m, --mpp M           micrometres per output pixel (the slide must say its mpp)\n"
        "  -L, --level L         without --mpp: patches of level L as it is (default 0)\n"
        "      --stride S[,SY]   output pixels from one patch to the next (default: the\n"
        "                        patch size)\n"
        "  -t, --min-tissue F    keep patches with a tissue fraction >= F, 0..1 (default 0)\n"
        "  -h, --help            show this help\n"
        "\n",
        out);
  tissue_mask_options_help(out);
  fputs("\n"
        "Examples:\n"
        "  tessera grid slide.svs --size 224 --mpp 0.5 --min-tissue 0.5 > locations.txt\n"
        "  tessera bench slide.svs --locations locations.txt --level 0 --size 448,448\n",
        out);
}

int cmd_grid(int argc, char **argv) {
  if (cli_wants_help(argc, argv)) {
    cmd_grid_help(stdout);
    return CLI_EXIT_OK;
  }
  cli_option opts[TISSUE_MASK_OPTION_COUNT + 6] = {
      {"size", 's', true, OPT_SIZE},         {"mpp", 'm', true, OPT_MPP},
      {"level", 'L', true, OPT_LEVEL},       {"stride", 0, true, OPT_STRIDE},
      {"min-tissue", 't', true, OPT_MIN_TISSUE}, {"help", 'h', false, OPT_HELP},
  };
  memcpy(opts + 6, tissue_mask_options, sizeof tissue_mask_options);
  const char *slide_path = NULL;
  tessera_grid_options go;
  tessera_grid_options_init(&go);
  tessera_tissue_options to;
  tessera_tissue_options_init(&to);
  go.tissue = &to;
  bool have_size = false, have_level = false;
  cli_parser p;
  cli_parser_init(&p, "grid", argc, argv, opts, (int)(sizeof opts / sizeof opts[0]));
  int id, r;
  const char *v;
  bool ok = true;
  int64_t level = 0;
  while (ok && (r = cli_next(&p, &id, &v)) > 0) {
    switch (id) {
    case CLI_POSITIONAL:
      if (slide_path)
        return cli_usage("grid", "more than one slide given ('%s' and '%s')", slide_path, v);
      slide_path = v;
      break;
    case OPT_SIZE:
      have_size = true;
      if (strchr(v, ','))
        ok = cli_parse_pair("grid", "--size", v, 1, (int64_t)1 << 24, &go.width, &go.height);
      else if ((ok = cli_parse_int64("grid", "--size", v, 1, (int64_t)1 << 24, &go.width)))
        go.height = go.width;
      break;
    case OPT_MPP: ok = cli_parse_double("grid", "--mpp", v, 1e-6, 1e6, &go.mpp); break;
    case OPT_LEVEL:
      have_level = true;
      ok = cli_parse_int64("grid", "--level", v, 0, 1 << 20, &level);
      break;
    case OPT_STRIDE:
      if (strchr(v, ','))
        ok = cli_parse_pair("grid", "--stride", v, 1, (int64_t)1 << 24, &go.stride_x,
                            &go.stride_y);
      else if ((ok = cli_parse_int64("grid", "--stride", v, 1, (int64_t)1 << 24, &go.stride_x)))
        go.stride_y = go.stride_x;
      break;
    case OPT_MIN_TISSUE:
      ok = cli_parse_double("grid", "--min-tissue", v, 0.0, 1.0, &go.min_tissue);
      break;
    default: ok = tissue_mask_option("grid", id, v, &to); break;
    }
  }
  if (!ok || r < 0)
    return CLI_EXIT_USAGE;
  if (!slide_path)
    return cli_usage("grid", "no SLIDE given");
  if (!have_size)
    return cli_usage("grid", "--size W[,H] is required");
  if (go.mpp > 0 && have_level)
    return cli_usage("grid", "--mpp picks the level itself; give --mpp or --level, not both");
  if (to.mpp > 0 && to.downsample > 0)
    return cli_usage("grid", "--mask-mpp and --mask-downsample are alternatives; give one");
  go.level = (int32_t)level;
  tessera_slide *slide = NULL;
  if (tessera_open(slide_path, &slide) != TESSERA_OK) {
    cli_error(slide_path, "%s", tessera_error_message());
    return CLI_EXIT_ERROR;
  }
  tessera_grid *g = NULL;
  if (tessera_patch_grid(slide, &go, &g) != TESSERA_OK) {
    cli_error(slide_path, "%s", tessera_error_message());
    tessera_close(slide);
    return CLI_EXIT_ERROR;
  }
  printf("# tessera grid %s\n", slide_path);
  printf("# level %d read_size %" PRId64 ",%" PRId64 " scale %.17g size %" PRId64 ",%" PRId64
         " stride %" PRId64 ",%" PRId64 " mpp %.17g min_tissue %.17g patches %zu\n",
         g->level, g->read_width, g->read_height, g->scale, g->width, g->height, g->stride_x,
         g->stride_y, g->mpp, go.min_tissue, g->count);
  printf("# read with: tessera bench SLIDE --locations FILE --level %d --size %" PRId64
         ",%" PRId64 "\n",
         g->level, g->read_width, g->read_height);
  printf("# x y # tissue fraction (mask downsample %.17g)\n", g->mask_downsample);
  for (size_t i = 0; i < g->count; i++)
    printf("%" PRId64 " %" PRId64 " # %.4f\n", g->locations[2 * i], g->locations[2 * i + 1],
           (double)g->tissue[i]);
  tessera_grid_free(g);
  tessera_close(slide);
  if (fflush(stdout) != 0 || ferror(stdout)) {
    cli_error(NULL, "writing the locations failed");
    return CLI_EXIT_ERROR;
  }
  return CLI_EXIT_OK;
}
