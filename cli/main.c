/* The `tessera` command: picks the subcommand; everything else lives in cmd_*.c. */
#include "cli.h"
#include "tessera.h"

#include <png.h>
#include <string.h>
#include <tiffio.h>

typedef struct command {
  const char *name;
  int (*run)(int argc, char **argv);
  void (*help)(FILE *out);
  const char *summary;
} command;

static const command commands[] = {
    {"info", cmd_info, cmd_info_help, "describe a slide: levels, vendor, properties (--json)"},
    {"read", cmd_read, cmd_read_help, "read a region of a level into a PNG, PPM or raw file"},
    {"sample", cmd_sample, cmd_sample_help, "write a synthetic H&E-like pyramidal JPEG TIFF"},
    {"tissue", cmd_tissue, cmd_tissue_help, "find the tissue: write a binary mask PNG"},
    {"grid", cmd_grid, cmd_grid_help, "patch locations at a resolution, on tissue"},
    {"bench", cmd_bench, cmd_bench_help, "read a stream of patches in batches and time it"},
    {"cache", cmd_cache, cmd_cache_help, "list or remove the shared-memory tile caches"},
    {"view", cmd_view, cmd_view_help, "serve a web page that pans and zooms the slide"},
};

#define COMMAND_COUNT (sizeof commands / sizeof commands[0])

static const command *find_command(const char *name) {
  for (size_t i = 0; i < COMMAND_COUNT; i++) {
    if (strcmp(commands[i].name, name) == 0)
      return &commands[i];
  }
  return NULL;
}

static void print_help(FILE *out) {
  fputs("Usage: tessera COMMAND [ARGUMENTS]\n"
        "\n"
        "Read whole-slide images: tiled pyramidal TIFF (generic, Aperio SVS, Hamamatsu NDPI,\n"
        "Philips, Leica SCN, Ventana BIF, OME-TIFF), Hamamatsu VMS/VMU, MIRAX (.mrxs),\n"
        "Sakura SVSlide and DICOM WSI (a .dcm file, or a folder of one series' instances:\n"
        "give the folder as SLIDE). A SLIDE may also be an http://, https:// or\n"
        "s3://BUCKET/KEY URL, read with range requests (README: \"Remote slides\").\n"
        "\n"
        "Commands:\n",
        out);
  for (size_t i = 0; i < COMMAND_COUNT; i++)
    fprintf(out, "  %-8s %s\n", commands[i].name, commands[i].summary);
  fputs("  help     show this help; 'tessera help COMMAND' shows a command's own\n"
        "\n"
        "Options:\n"
        "  -h, --help     show this help\n"
        "  -V, --version  show the version of tessera and of the libraries it uses\n"
        "\n"
        "Examples:\n"
        "  tessera info slide.svs\n"
        "  tessera info slide.svs --json\n"
        "  tessera read slide.svs --location 1000,2000 --size 512,512 --output patch.png\n"
        "  tessera sample synthetic.tiff --width 8000 --height 6000\n"
        "  tessera bench synthetic.tiff --layout random --count 2000 --size 224,224\n"
        "  tessera bench https://example.org/slide.svs --layout random --count 2000 --size 224,224\n"
        "  tessera tissue slide.svs --output mask.png\n"
        "  tessera grid slide.svs --size 224 --mpp 0.5 --min-tissue 0.5 > locations.txt\n"
        "  tessera cache list\n"
        "  tessera view slide.svs --locations patches.txt --size 224,224\n"
        "\n"
        "Exit status: 0 on success, 1 when the command fails, 2 when the command line is\n"
        "wrong; a failure prints one line on stderr.\n",
        out);
}

/* libtiff's version string runs over several lines; its first is enough. */
static void print_version(void) {
  const char *tiff = TIFFGetVersion();
  size_t tiff_len = strcspn(tiff, "\n");
  printf("tessera " TESSERA_VERSION_STRING " (library %s; %.*s; libpng %s)\n", tessera_version(),
         (int)tiff_len, tiff, png_get_libpng_ver(NULL));
}

int main(int argc, char **argv) {
  if (argc < 2)
    return cli_usage(NULL, "no command given");
  const char *name = argv[1];
  if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0) {
    print_help(stdout);
    return CLI_EXIT_OK;
  }
  if (strcmp(name, "--version") == 0 || strcmp(name, "-V") == 0) {
    print_version();
    return CLI_EXIT_OK;
  }
  if (strcmp(name, "help") == 0) {
    if (argc < 3 || strcmp(argv[2], "help") == 0) {
      print_help(stdout);
      return CLI_EXIT_OK;
    }
    const command *c = find_command(argv[2]);
    if (!c)
      return cli_usage(NULL, "no command named '%s'", argv[2]);
    c->help(stdout);
    return CLI_EXIT_OK;
  }
  const command *c = find_command(name);
  if (!c) {
    if (name[0] == '-')
      return cli_usage(NULL, "unknown option '%s'", name);
    return cli_usage(NULL, "no command named '%s'", name);
  }
  return c->run(argc - 2, argv + 2);
}
