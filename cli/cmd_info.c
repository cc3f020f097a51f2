/* `tessera info SLIDE [--json]`: what a slide holds, as a table or as one JSON object. */
#include "cli.h"
#include "tessera.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

enum { OPT_JSON = 1, OPT_HELP };

static const cli_option options[] = {
    {"json", 'j', false, OPT_JSON},
    {"help", 'h', false, OPT_HELP},
};

void cmd_info_help(FILE *out) {
  fputs("Usage: tessera info SLIDE [--json]\n"
        "\n"
        "Describe a slide: its pyramid levels (size, downsample, tile size, compression),\n"
        "the vendor that wrote it, the fill value used outside the image, every property\n"
        "(TIFF tags and vendor metadata), its associated images (label, macro,\n"
        "thumbnail, ...) with their sizes ('tessera read --associated' reads them), and\n"
        "whether the file gives an ICC colour profile (its size; reads never apply it).\n"
        "\n"
        "Options:\n"
        "  -j, --json   print one JSON object instead of a table: {\"vendor\",\n"
        "               \"background\", \"icc_profile_size\" (0: none), \"levels\":\n"
        "               [{\"width\", \"height\", \"downsample\",\n"
        "               \"tile_width\", \"tile_height\", \"tiled\", \"compression\",\n"
        "               \"samples_per_pixel\"}], \"properties\": {key: value},\n"
        "               \"associated_images\": [names], \"associated_image_sizes\":\n"
        "               {name: [width, height]}}\n"
        "  -h, --help   show this help\n"
        "\n"
        "Strings are printed as UTF-8; bytes of a property that are not valid UTF-8\n"
        "become U+FFFD. In the table, control characters are shown as escapes (\\n, \\t,\n"
        "\\x1b).\n"
        "\n"
        "Examples:\n"
        "  tessera info slide.svs\n"
        "  tessera info slide.tiff --json | python3 -m json.tool\n",
        out);
}

/* The compression's name, or its number when tessera has no name for it. */
static const char *compression_text(uint32_t compression, char *buf, size_t size) {
  const char *name = tessera_compression_name(compression);
  if (name)
    return name;
  snprintf(buf, size, "%" PRIu32, compression);
  return buf;
}

static bool get_level(tessera_slide *slide, const char *path, int32_t level,
                      tessera_level_info *info) {
  memset(info, 0, sizeof *info);
  info->struct_size = sizeof *info;
  if (tessera_level_info_get(slide, level, info) != TESSERA_OK) {
    cli_error(path, "level %" PRId32 ": %s", level, tessera_error_message());
    return false;
  }
  return true;
}

static const char *or_empty(const char *s) { return s ? s : ""; }

static bool print_json(tessera_slide *slide, const char *path) {
  char buf[32];
  int32_t levels = tessera_level_count(slide);
  /* Everything that can fail is looked up first, so a failure prints no half object. */
  tessera_level_info *info = calloc(levels > 0 ? (size_t)levels : 1, sizeof *info);
  if (!info) {
    cli_error(path, "out of memory");
    return false;
  }
  for (int32_t i = 0; i < levels; i++) {
    if (!get_level(slide, path, i, &info[i])) {
      free(info);
      return false;
    }
  }
  FILE *out = stdout;
  fputs("{\n  \"vendor\": ", out);
  json_write_string(out, or_empty(tessera_vendor(slide)));
  fprintf(out, ",\n  \"background\": %u,\n  \"icc_profile_size\": %zu,\n  \"levels\": [",
          (unsigned)tessera_background(slide), tessera_icc_profile_size(slide));
  for (int32_t i = 0; i < levels; i++) {
    const tessera_level_info *l = &info[i];
    fprintf(out, "%s\n    {\"width\": %" PRId64 ", \"height\": %" PRId64 ", \"downsample\": ",
            i ? "," : "", l->width, l->height);
    json_write_number(out, l->downsample);
    fprintf(out,
            ", \"tile_width\": %" PRId32 ", \"tile_height\": %" PRId32
            ", \"tiled\": %s, \"compression\": ",
            l->tile_width, l->tile_height, l->tiled ? "true" : "false");
    json_write_string(out, compression_text(l->compression, buf, sizeof buf));
    fprintf(out, ", \"samples_per_pixel\": %" PRId32 "}", l->samples_per_pixel);
  }
  free(info);
  fputs(levels ? "\n  ],\n  \"properties\": {" : "],\n  \"properties\": {", out);
  size_t count = tessera_property_count(slide);
  for (size_t i = 0; i < count; i++) {
    const char *key = or_empty(tessera_property_key(slide, i));
    fputs(i ? ",\n    " : "\n    ", out);
    json_write_string(out, key);
    fputs(": ", out);
    json_write_string(out, or_empty(tessera_property_value(slide, key)));
  }
  fputs(count ? "\n  },\n  \"associated_images\": [" : "},\n  \"associated_images\": [", out);
  size_t images = tessera_associated_image_count(slide);
  for (size_t i = 0; i < images; i++) {
    if (i)
      fputs(", ", out);
    json_write_string(out, or_empty(tessera_associated_image_name(slide, i)));
  }
  fputs("],\n  \"associated_image_sizes\": {", out);
  for (size_t i = 0; i < images; i++) {
    const char *name = or_empty(tessera_associated_image_name(slide, i));
    int64_t w = 0, h = 0;
    tessera_associated_image_dimensions(slide, name, &w, &h);
    fputs(i ? ",\n    " : "\n    ", out);
    json_write_string(out, name);
    fprintf(out, ": [%" PRId64 ", %" PRId64 "]", w, h);
  }
  fputs(images ? "\n  }\n}\n" : "}\n}\n", out);
  return true;
}

static bool print_table(tessera_slide *slide, const char *path) {
  char buf[32];
  FILE *out = stdout;
  int32_t levels = tessera_level_count(slide);
  fputs("slide:       ", out);
  text_write_escaped(out, path);
  fputs("\nvendor:      ", out);
  text_write_escaped(out, or_empty(tessera_vendor(slide)));
  fprintf(out, "\nbackground:  %u\n", (unsigned)tessera_background(slide));
  size_t icc = tessera_icc_profile_size(slide);
  if (icc)
    fprintf(out, "icc profile: %zu bytes\n", icc);
  else
    fputs("icc profile: none\n", out);
  fprintf(out, "levels:      %" PRId32 "\n", levels);
  fprintf(out, "  %5s  %10s  %10s  %12s  %-19s  %s\n", "level", "width", "height", "downsample",
          "tile", "compression");
  for (int32_t i = 0; i < levels; i++) {
    tessera_level_info l;
    if (!get_level(slide, path, i, &l))
      return false;
    char tile[48];
    snprintf(tile, sizeof tile, "%" PRId32 "x%" PRId32 "%s", l.tile_width, l.tile_height,
             l.tiled ? "" : " strips");
    fprintf(out, "  %5" PRId32 "  %10" PRId64 "  %10" PRId64 "  %12.4f  %-19s  %s\n", i, l.width,
            l.height, l.downsample, tile, compression_text(l.compression, buf, sizeof buf));
  }
  size_t count = tessera_property_count(slide);
  fprintf(out, "properties:  %zu\n", count);
  for (size_t i = 0; i < count; i++) {
    const char *key = or_empty(tessera_property_key(slide, i));
    fputs("  ", out);
    text_write_escaped(out, key);
    fputs(" = ", out);
    text_write_escaped(out, or_empty(tessera_property_value(slide, key)));
    fputc('\n', out);
  }
  size_t images = tessera_associated_image_count(slide);
  fputs("associated images:", out);
  if (images == 0)
    fputs(" (none)", out);
  for (size_t i = 0; i < images; i++) {
    const char *name = or_empty(tessera_associated_image_name(slide, i));
    int64_t w = 0, h = 0;
    tessera_associated_image_dimensions(slide, name, &w, &h);
    fputs(i ? ", " : " ", out);
    text_write_escaped(out, name);
    fprintf(out, " (%" PRId64 "x%" PRId64 ")", w, h);
  }
  fputc('\n', out);
  return true;
}

int cmd_info(int argc, char **argv) {
  if (cli_wants_help(argc, argv)) {
    cmd_info_help(stdout);
    return CLI_EXIT_OK;
  }
  cli_parser p;
  cli_parser_init(&p, "info", argc, argv, options, (int)(sizeof options / sizeof options[0]));
  const char *path = NULL;
  bool json = false;
  int id, r;
  const char *value;
  while ((r = cli_next(&p, &id, &value)) > 0) {
    if (id == OPT_JSON) {
      json = true;
    } else if (id == CLI_POSITIONAL) {
      if (path)
        return cli_usage("info", "more than one SLIDE given ('%s' and '%s')", path, value);
      path = value;
    }
  }
  if (r < 0)
    return CLI_EXIT_USAGE;
  if (!path)
    return cli_usage("info", "no SLIDE given");

  tessera_slide *slide = NULL;
  if (tessera_open(path, &slide) != TESSERA_OK) {
    cli_error(path, "%s", tessera_error_message());
    return CLI_EXIT_ERROR;
  }
  bool ok = json ? print_json(slide, path) : print_table(slide, path);
  tessera_close(slide);
  if (!ok)
    return CLI_EXIT_ERROR;
  if (fflush(stdout) != 0 || ferror(stdout)) {
    cli_error(NULL, "cannot write to standard output");
    return CLI_EXIT_ERROR;
  }
  return CLI_EXIT_OK;
}
