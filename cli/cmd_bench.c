/* `tessera bench`: reads a stream of patches through the batch iterator, as a training loop
 * would, throws them away and reports the rate. The locations come from a file or from one of
 * the layouts of layout.c, which bench/compare shares so both measure the same workload. */
#include "checksum.h"
#include "cli.h"
#include "layout.h"
#include "tessera.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_BATCH 32
#define DEFAULT_PREFETCH 2
#define MAX_WORKERS 1024
#define MAX_PROCESSES 256
#define MAX_BATCH ((int64_t)1 << 20)
#define MAX_COUNT ((int64_t)1 << 30)
#define MAX_SIDE INT32_MAX
/* One batch buffer; up to prefetch + 1 of them are alive at once. */
#define MAX_BATCH_BYTES ((uint64_t)4 << 30)
#define PROGRESS_DELAY 0.5    /* seconds before a run is long enough to show progress */
#define PROGRESS_INTERVAL 0.1 /* seconds between redraws */
#define PROGRESS_BAR 30
/* distinct_tiles is left out (null) for a level of more tiles than this: its bitmap would
 * take more than 512 MiB. No level a scanner writes comes near. */
#define MAX_COUNTED_TILES ((uint64_t)1 << 32)

enum {
  OPT_LOCATIONS = 1,
  OPT_LAYOUT,
  OPT_COUNT,
  OPT_STRIDE,
  OPT_SIZE,
  OPT_LEVEL,
  OPT_BATCH,
  OPT_WORKERS,
  OPT_PREFETCH,
  OPT_SHUFFLE,
  OPT_SEED,
  OPT_CHANNELS,
  OPT_CACHE,
  OPT_PROCESSES,
  OPT_JSON,
  OPT_DEVICE,
  OPT_NO_CHECKSUM,
  OPT_COMPARE,
  OPT_MPP,
  OPT_FAST,
  OPT_HELP
};

static const cli_option options[] = {
    {"locations", 'i', true, OPT_LOCATIONS},
    {"layout", 0, true, OPT_LAYOUT},
    {"count", 'n', true, OPT_COUNT},
    {"stride", 0, true, OPT_STRIDE},
    {"size", 's', true, OPT_SIZE},
    {"level", 'L', true, OPT_LEVEL},
    {"batch-size", 'b', true, OPT_BATCH},
    {"workers", 'w', true, OPT_WORKERS},
    {"prefetch", 0, true, OPT_PREFETCH},
    {"shuffle", 0, false, OPT_SHUFFLE},
    {"seed", 0, true, OPT_SEED},
    {"channels", 'c', true, OPT_CHANNELS},
    {"cache", 0, true, OPT_CACHE},
    {"processes", 'P', true, OPT_PROCESSES},
    {"json", 'j', false, OPT_JSON},
    {"device", 'd', true, OPT_DEVICE},
    {"no-checksum", 0, false, OPT_NO_CHECKSUM},
    {"compare", 0, false, OPT_COMPARE},
    {"mpp", 'm', true, OPT_MPP},
    {"fast", 0, false, OPT_FAST},
    {"help", 'h', false, OPT_HELP},
};

void cmd_bench_help(FILE *out) {
  fprintf(out,
          "Usage: tessera bench SLIDE (--locations FILE | --layout grid|random|sliding\n"
          "                     [--count N] [--stride S]) --size W,H [--level L]\n"
          "                     [--batch-size B] [--workers W] [--prefetch F]\n"
          "                     [--shuffle] [--seed S] [--channels 3|4]\n"
          "                     [--cache TYPE[:MIB]] [--processes P] [--json]\n"
          "                     [--device cpu|cuda[:N]] [--no-checksum] [--compare]\n"
          "                     [--mpp M [--fast]]\n"
          "\n"
          "Read W x H patches of level L through the batch iterator, as a training or\n"
          "inference loop would, discard them and report the rate: patches, seconds,\n"
          "patches/s, megapixels/s, the reads of the slide's bytes (requests made and\n"
          "bytes fetched: HTTP requests for a URL, reads for a file; opening counted\n"
          "apart), the peak resident memory of the process and a\n"
          "checksum (the sum of every R, G and B byte of every patch, as an unsigned\n"
          "64-bit number; alpha is left out, so --channels 4 gives the same sum).\n"
          "\n"
          "The time runs from creating the iterator to destroying it; opening the slide\n"
          "and making the locations are not counted. Nothing is written but the report.\n"
          "\n"
          "Where the patches are (one of):\n"
          "  -i, --locations FILE  one 'x y' pair per line: the top-left corner in\n"
          "                        level-0 pixels (may be negative or past the edge);\n"
          "                        a comma may stand between them; blank lines and\n"
          "                        '#' comments are allowed; lines of at most 4096\n"
          "                        bytes\n"
          "      --layout KIND     patches that lie wholly inside level L, in its\n"
          "                        pixels, turned into level-0 corners with the\n"
          "                        level's downsample:\n"
          "                          grid     side by side on a W x H grid, row by row\n"
          "                          random   uniformly random, from a splitmix64\n"
          "                                   generator seeded with --seed: the same\n"
          "                                   on every machine\n"
          "                          sliding  a window every S pixels across each row,\n"
          "                                   rows S pixels apart\n"
          "  -n, --count N         the first N patches of the layout, 1..%" PRId64 "\n"
          "                        (default: all of a grid or sliding layout; random\n"
          "                        needs it)\n"
          "      --stride S        sliding only: the step in pixels of level L, S or\n"
          "                        SX,SY (default W/2,H/2)\n"
          "\n"
          "Options:\n"
          "  -s, --size W,H        patch size in pixels of level L (required)\n"
          "  -L, --level L         pyramid level (default 0)\n"
          "  -m, --mpp M           instead of --level: W x H patches at M micrometres per\n"
          "                        pixel, as read_region(..., mpp=M) reads them: the\n"
          "                        level and scale of tessera_level_for_mpp, each patch\n"
          "                        read at that level as ceil(W * scale) + 1 pixels a side\n"
          "                        through the batch iterator and area-averaged to W x H\n"
          "                        (tessera_resample_area; the checksum is of the W x H\n"
          "                        patches, the same as tessera read --mpp gives one by\n"
          "                        one). Layouts place those read patches in the level.\n"
          "      --fast            with --mpp: each patch read on its own by\n"
          "                        tessera_read_region_scaled with the reduced-size JPEG\n"
          "                        decode (tessera read --mpp --fast), on --workers\n"
          "                        threads taking patches in turn (0: the calling\n"
          "                        thread); not the exact pixels\n"
          "  -b, --batch-size B    patches per batch, 1..%" PRId64 " (default %d)\n"
          "  -w, --workers W       worker threads decoding ahead, 0..%d (default: one\n"
          "                        per processor; 0 decodes in the calling thread)\n"
          "      --prefetch F      batches decoded ahead, >= 1 (default %d)\n"
          "      --shuffle         visit the patches in a random order (seeded by --seed)\n"
          "      --seed S          seed of the random layout and of --shuffle (default 0)\n"
          "  -c, --channels C      3 for RGB (default) or 4 for RGBA\n"
          "      --cache TYPE[:MIB]\n"
          "                        the decoded-tile cache: nocache (default),\n"
          "                        per_process:MIB (each process its own) or\n"
          "                        shared_memory:MIB (one shared-memory segment for\n"
          "                        all the processes, made before they start and\n"
          "                        removed at the end); hits and misses are reported\n"
          "  -P, --processes P     fork P processes that split the locations between\n"
          "                        them, in order (default 1); the checksum is summed\n"
          "                        over them, and so are hits and misses of\n"
          "                        per_process caches (a shared_memory cache counts\n"
          "                        every process's itself); the time runs from the\n"
          "                        first fork to the last exit\n"
          "  -j, --json            print one JSON object: the parameters (slide, level,\n"
          "                        size, channels, batch_size, workers, prefetch,\n"
          "                        shuffle, seed, layout, locations, stride, count,\n"
          "                        cache, cache_mib, processes) and the results\n"
          "                        (patches, batches, seconds, patches_per_s,\n"
          "                        megapixels_per_s, peak_rss_mib, cache_hits,\n"
          "                        cache_misses, distinct_tiles, checksum)\n"
          "  -d, --device D        where batches are made: cpu (default), or cuda or\n"
          "                        cuda:N (the CUDA device N): tiles decoded by nvJPEG\n"
          "                        into GPU memory (the report names the decoder)\n"
          "      --no-checksum     skip the checksum (with cuda it copies every batch back\n"
          "                        to the host): time the reading alone\n"
          "      --compare         with cuda: read every batch on the CPU too and report\n"
          "                        the largest and mean absolute difference per sample\n"
          "                        (the timing then includes the CPU's reading)\n"
          "  -h, --help            show this help\n"
          "\n"
          "distinct_tiles is the number of tiles (or strips) of level L that the patches\n"
          "touch, counted from the locations (a patch partly outside the level touches\n"
          "only the tiles inside it). A cache takes a tile at its first miss when the\n"
          "patches being read cover three quarters of it, else at the second miss of it\n"
          "by one process, if the misses between are less than a tenth of its capacity\n"
          "(the first is decoded in part, as without a cache); a per_process cache also at\n"
          "the first miss when the level, or the rectangle of tiles its last 32 misses fell\n"
          "in, is small beside it (a tenth, a half of it): with a cache that holds them\n"
          "all, cache_misses is at least distinct_tiles, and each tile read again soon\n"
          "is decoded whole once, whatever the number of processes sharing the cache.\n"
          "A run killed midway leaves its shared_memory segment behind: 'tessera cache\n"
          "list' shows it and 'tessera cache remove' removes it.\n"
          "\n"
          "On a terminal, a run longer than half a second shows its progress on stderr;\n"
          "with --json, or when stderr is not a terminal, it does not. A batch that fails\n"
          "stops the run with its error (exit status 1).\n"
          "\n"
          "Examples:\n"
          "  tessera bench slide.tiff --layout grid --size 256,256\n"
          "  tessera bench slide.tiff --layout random --count 5000 --size 224,224 \\\n"
          "      --batch-size 64 --workers 8 --seed 7\n"
          "  tessera bench slide.tiff --layout sliding --stride 112 --size 224,224 \\\n"
          "      --level 1 --json\n"
          "  tessera bench slide.svs --locations patches.txt --size 512,512 --shuffle\n"
          "  tessera bench slide.tiff --layout sliding --stride 112 --size 224,224 \\\n"
          "      --shuffle --workers 1 --cache per_process:512\n"
          "  tessera bench slide.tiff --layout random --count 20000 --size 224,224 \\\n"
          "      --processes 4 --workers 2 --cache shared_memory:2048\n"
          "  tessera bench slide.tiff --layout random --count 20000 --size 224,224 \\\n"
          "      --batch-size 64 --device cuda --no-checksum\n",
          MAX_COUNT, MAX_BATCH, DEFAULT_BATCH, MAX_WORKERS, DEFAULT_PREFETCH);
}

typedef struct bench_args {
  const char *slide;
  const char *locations; /* the file, or NULL for a layout */
  bool have_layout, have_size, have_stride, shuffle, json;
  layout_kind layout;
  int64_t count; /* 0: all */
  int64_t stride_x, stride_y;
  int64_t width, height, level, batch_size, workers, prefetch, seed, channels;
  tessera_cache_type cache;
  int64_t cache_mib, processes;
  bool cuda, no_checksum, compare;
  int64_t device_id;
  bool have_level, fast;
  double mpp;                    /* 0: patches of the level as they are */
  double scale;                  /* with mpp: level pixels per output pixel */
  int64_t out_width, out_height; /* the patches made: --size (width x height is what is read) */
} bench_args;

/* "cpu", "cuda" or "cuda:N". */
static bool parse_device(const char *v, bench_args *a) {
  if (strcmp(v, "cpu") == 0) {
    a->cuda = false;
    return true;
  }
  if (strncmp(v, "cuda", 4) == 0 && (v[4] == '\0' || v[4] == ':')) {
    a->cuda = true;
    a->device_id = 0;
    return v[4] == '\0' || cli_parse_int64("bench", "--device cuda:N", v + 5, 0, 1023,
                                            &a->device_id);
  }
  cli_usage("bench", "--device: '%s' is not cpu, cuda or cuda:N", v);
  return false;
}

/* "nocache", or "per_process:MIB" / "shared_memory:MIB". */
static bool parse_cache(const char *v, bench_args *a) {
  static const struct {
    const char *name;
    tessera_cache_type type;
  } types[] = {{"nocache", TESSERA_CACHE_NONE},
               {"per_process", TESSERA_CACHE_PER_PROCESS},
               {"shared_memory", TESSERA_CACHE_SHARED_MEMORY}};
  size_t len = strcspn(v, ":");
  for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
    if (strlen(types[i].name) != len || strncmp(v, types[i].name, len) != 0)
      continue;
    a->cache = types[i].type;
    if (a->cache == TESSERA_CACHE_NONE)
      return v[len] == '\0' ||
             (cli_usage("bench", "--cache nocache takes no size ('%s')", v), false);
    if (v[len] != ':')
      return cli_usage("bench", "--cache %s needs a size in MiB: %s:MIB", types[i].name,
                       types[i].name),
             false;
    return cli_parse_int64("bench", "--cache", v + len + 1, 1, (int64_t)1 << 30, &a->cache_mib);
  }
  cli_usage("bench", "--cache: '%s' is not nocache, per_process:MIB or shared_memory:MIB", v);
  return false;
}

static int default_workers(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n < 1 ? 1 : n > MAX_WORKERS ? MAX_WORKERS : (int)n;
}

/* "S" (both directions) or "SX,SY". */
static bool parse_stride(const char *v, bench_args *a) {
  if (strchr(v, ','))
    return cli_parse_pair("bench", "--stride", v, 1, MAX_SIDE, &a->stride_x, &a->stride_y);
  if (!cli_parse_int64("bench", "--stride", v, 1, MAX_SIDE, &a->stride_x))
    return false;
  a->stride_y = a->stride_x;
  return true;
}

static bool parse_option(int id, const char *v, bench_args *a) {
  switch (id) {
  case OPT_LOCATIONS: a->locations = v; return true;
  case OPT_LAYOUT:
    if (!layout_kind_parse(v, &a->layout)) {
      cli_usage("bench", "--layout: '%s' is not grid, random or sliding", v);
      return false;
    }
    a->have_layout = true;
    return true;
  case OPT_COUNT: return cli_parse_int64("bench", "--count", v, 1, MAX_COUNT, &a->count);
  case OPT_STRIDE: a->have_stride = true; return parse_stride(v, a);
  case OPT_SIZE:
    a->have_size = true;
    return cli_parse_pair("bench", "--size", v, 1, MAX_SIDE, &a->width, &a->height);
  case OPT_LEVEL:
    a->have_level = true;
    return cli_parse_int64("bench", "--level", v, 0, INT32_MAX, &a->level);
  case OPT_MPP: return cli_parse_double("bench", "--mpp", v, 1e-6, 1e6, &a->mpp);
  case OPT_FAST: a->fast = true; return true;
  case OPT_BATCH: return cli_parse_int64("bench", "--batch-size", v, 1, MAX_BATCH, &a->batch_size);
  case OPT_WORKERS: return cli_parse_int64("bench", "--workers", v, 0, MAX_WORKERS, &a->workers);
  case OPT_PREFETCH: return cli_parse_int64("bench", "--prefetch", v, 1, 1024, &a->prefetch);
  case OPT_SHUFFLE: a->shuffle = true; return true;
  case OPT_SEED: return cli_parse_int64("bench", "--seed", v, 0, INT64_MAX, &a->seed);
  case OPT_CHANNELS: return cli_parse_int64("bench", "--channels", v, 3, 4, &a->channels);
  case OPT_CACHE: return parse_cache(v, a);
  case OPT_PROCESSES:
    return cli_parse_int64("bench", "--processes", v, 1, MAX_PROCESSES, &a->processes);
  case OPT_JSON: a->json = true; return true;
  case OPT_DEVICE: return parse_device(v, a);
  case OPT_NO_CHECKSUM: a->no_checksum = true; return true;
  case OPT_COMPARE: a->compare = true; return true;
  }
  return true;
}

/* The rules that tie options together. */
static int check_args(const bench_args *a) {
  if (!a->slide)
    return cli_usage("bench", "no SLIDE given");
  if (!a->locations && !a->have_layout)
    return cli_usage("bench", "say where the patches are: --locations FILE or --layout KIND");
  if (a->locations && a->have_layout)
    return cli_usage("bench", "--locations and --layout are alternatives; give one");
  if (a->locations && a->count)
    return cli_usage("bench", "--count goes with --layout; a locations file is read whole");
  if (a->have_stride && !(a->have_layout && a->layout == LAYOUT_SLIDING))
    return cli_usage("bench", "--stride goes with --layout sliding");
  if (a->have_layout && a->layout == LAYOUT_RANDOM && a->count == 0)
    return cli_usage("bench", "--layout random needs --count N");
  if (!a->have_size)
    return cli_usage("bench", "--size W,H is required");
  if (a->compare && !a->cuda)
    return cli_usage("bench", "--compare goes with --device cuda");
  if (a->mpp > 0 && (a->have_level || a->cuda))
    return cli_usage("bench", "--mpp picks the level itself and reads on the CPU: no --level or "
                              "--device cuda with it");
  if (a->fast && a->mpp <= 0)
    return cli_usage("bench", "--fast goes with --mpp");
  if (a->cuda && a->processes > 1)
    return cli_usage("bench", "--device cuda reads in one process; leave out --processes");
  uint64_t bytes;
  if (__builtin_mul_overflow((uint64_t)a->width, (uint64_t)a->height, &bytes) ||
      __builtin_mul_overflow(bytes, (uint64_t)a->channels, &bytes) ||
      __builtin_mul_overflow(bytes, (uint64_t)a->batch_size, &bytes) || bytes > MAX_BATCH_BYTES ||
      bytes > SIZE_MAX)
    return cli_usage("bench",
                     "a batch of %" PRId64 " patches of %" PRId64 " x %" PRId64 " x %" PRId64
                     " bytes is more than the 4 GiB a batch may take",
                     a->batch_size, a->width, a->height, a->channels);
  return CLI_EXIT_OK;
}

static int parse_args(int argc, char **argv, bench_args *a) {
  memset(a, 0, sizeof *a);
  a->batch_size = DEFAULT_BATCH;
  a->workers = default_workers();
  a->prefetch = DEFAULT_PREFETCH;
  a->channels = 3;
  a->processes = 1;
  a->cache = TESSERA_CACHE_NONE;
  cli_parser p;
  cli_parser_init(&p, "bench", argc, argv, options, (int)(sizeof options / sizeof options[0]));
  int id, r;
  const char *v;
  bool ok = true;
  while (ok && (r = cli_next(&p, &id, &v)) > 0) {
    if (id == CLI_POSITIONAL) {
      if (a->slide)
        return cli_usage("bench", "more than one SLIDE given ('%s' and '%s')", a->slide, v);
      a->slide = v;
    } else {
      ok = parse_option(id, v, a);
    }
  }
  if (!ok || r < 0)
    return CLI_EXIT_USAGE;
  return check_args(a);
}

/* ---- the locations file --------------------------------------------------------------- */

typedef struct xy_list {
  int64_t *xy; /* 2n values */
  size_t n, cap;
} xy_list;

static bool xy_push(xy_list *l, int64_t x, int64_t y) {
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 1024;
    int64_t *xy = cap <= SIZE_MAX / (2 * sizeof *xy) ? realloc(l->xy, cap * 2 * sizeof *xy) : NULL;
    if (!xy)
      return false;
    l->xy = xy;
    l->cap = cap;
  }
  l->xy[2 * l->n] = x;
  l->xy[2 * l->n + 1] = y;
  l->n++;
  return true;
}

static const char *skip_blanks(const char *s) {
  while (*s == ' ' || *s == '\t' || *s == '\r')
    s++;
  return s;
}

/* An optionally signed decimal integer at *s; advances *s past it. */
static bool take_int(const char **s, int64_t *out) {
  const char *p = *s;
  const char *digits = (*p == '-' || *p == '+') ? p + 1 : p;
  if (*digits < '0' || *digits > '9')
    return false;
  char *end;
  errno = 0;
  long long v = strtoll(p, &end, 10);
  if (errno != 0)
    return false;
  *out = (int64_t)v;
  *s = end;
  return true;
}

/* "x y" or "x,y", blanks around either, then nothing but blanks. The line has had its
 * comment and newline cut off. */
static bool parse_pair_line(const char *line, int64_t *x, int64_t *y) {
  const char *s = skip_blanks(line);
  if (!take_int(&s, x))
    return false;
  const char *after = s;
  s = skip_blanks(s);
  if (*s == ',')
    s = skip_blanks(s + 1);
  else if (s == after)
    return false; /* "12-3": the numbers must be apart */
  if (!take_int(&s, y))
    return false;
  return *skip_blanks(s) == '\0';
}

/* The longest line a locations file may have, comments included: a pair needs 41 bytes at
 * most, and a line must not cost memory without bound (/dev/zero is one endless line). */
#define LOCATIONS_LINE_MAX 4096

enum line_read { LINE_END, LINE_OK, LINE_TOO_LONG, LINE_NUL };

/* Reads the next line into line[LOCATIONS_LINE_MAX + 1] without its newline, and with its
 * comment cut off; stops reading at a line that is too long. getc_unlocked: only this
 * thread reads the file. */
static enum line_read read_line(FILE *f, char *line) {
  size_t n = 0;
  bool nul = false;
  int c;
  while ((c = getc_unlocked(f)) != EOF && c != '\n') {
    if (n == LOCATIONS_LINE_MAX)
      return LINE_TOO_LONG;
    nul |= c == '\0';
    line[n++] = (char)c;
  }
  if (c == EOF && (n == 0 || ferror(f)))
    return LINE_END; /* a read error is the caller's to report, not a short last line */
  line[n] = '\0';
  if (nul)
    return LINE_NUL; /* a pair followed by "\0junk" must not pass as the pair */
  line[strcspn(line, "#")] = '\0';
  return LINE_OK;
}

/* Prints the error (naming the file and the line) and returns false on failure. */
static bool read_locations(const char *path, xy_list *out) {
  memset(out, 0, sizeof *out);
  FILE *f = fopen(path, "r");
  if (!f) {
    cli_error(path, "cannot open the locations: %s", strerror(errno));
    return false;
  }
  char line[LOCATIONS_LINE_MAX + 1];
  uint64_t number = 0;
  bool ok = true;
  enum line_read got;
  while (ok && (got = read_line(f, line)) != LINE_END) {
    number++;
    int64_t x, y;
    if (got == LINE_TOO_LONG) {
      cli_error(path, "line %" PRIu64 ": longer than %d bytes (one 'x y' pair a line)", number,
                LOCATIONS_LINE_MAX);
      ok = false;
    } else if (got == LINE_NUL) {
      cli_error(path, "line %" PRIu64 ": holds a NUL byte (one 'x y' pair a line, as text)",
                number);
      ok = false;
    } else if (*skip_blanks(line) == '\0') {
      continue;
    } else if (!parse_pair_line(line, &x, &y)) {
      cli_error(path, "line %" PRIu64 ": expected two integers 'x y', found '%.60s'", number,
                skip_blanks(line));
      ok = false;
    } else if (!xy_push(out, x, y)) {
      cli_error(path, "line %" PRIu64 ": out of memory", number);
      ok = false;
    }
  }
  if (ok && ferror(f)) {
    cli_error(path, "cannot read the locations: %s", strerror(errno));
    ok = false;
  }
  if (ok && out->n == 0) {
    cli_error(path, "no locations in the file");
    ok = false;
  }
  fclose(f);
  if (!ok) {
    free(out->xy);
    memset(out, 0, sizeof *out);
  }
  return ok;
}

/* ---- the layouts ---------------------------------------------------------------------- */

static bool make_layout(const bench_args *a, const tessera_level_info *info, xy_list *out) {
  layout_spec spec = {.kind = a->layout,
                      .level_width = info->width,
                      .level_height = info->height,
                      .downsample = info->downsample,
                      .patch_width = a->width,
                      .patch_height = a->height,
                      .stride_x = a->stride_x,
                      .stride_y = a->stride_y,
                      .count = (uint64_t)a->count,
                      .seed = (uint64_t)a->seed};
  char why[256];
  memset(out, 0, sizeof *out);
  if (!layout_generate(&spec, &out->xy, &out->n, why, sizeof why)) {
    cli_error(a->slide, "level %" PRId64 ", --layout %s: %s", a->level, layout_kind_name(a->layout),
              why);
    return false;
  }
  out->cap = out->n;
  return true;
}

/* ---- progress ------------------------------------------------------------------------- */

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct progress {
  bool enabled; /* stderr is a terminal and the output is not JSON */
  bool line_open;
  double start, last_drawn;
  size_t total;
} progress;

static void progress_update(progress *pr, size_t done) {
  if (!pr->enabled)
    return;
  double t = now_seconds();
  if (t - pr->start < PROGRESS_DELAY || t - pr->last_drawn < PROGRESS_INTERVAL)
    return;
  pr->last_drawn = t;
  double fraction = pr->total ? (double)done / (double)pr->total : 1.0;
  int filled = (int)(fraction * PROGRESS_BAR);
  char bar[PROGRESS_BAR + 1];
  memset(bar, '#', (size_t)filled);
  memset(bar + filled, '.', (size_t)(PROGRESS_BAR - filled));
  bar[PROGRESS_BAR] = '\0';
  fprintf(stderr, "\rtessera: bench [%s] %3d%%  %zu/%zu patches  %.0f patches/s\033[K", bar,
          (int)(fraction * 100.0), done, pr->total, (double)done / (t - pr->start));
  fflush(stderr);
  pr->line_open = true;
}

/* Clears the redrawn line, so the report or an error follows on a clean screen. */
static void progress_end(progress *pr) {
  if (pr->line_open) {
    fputs("\r\033[K", stderr);
    fflush(stderr);
    pr->line_open = false;
  }
}

/* ---- the run -------------------------------------------------------------------------- */

typedef struct bench_result {
  size_t patches, batches;
  double seconds;
  uint64_t checksum;
  double peak_rss_mib; /* the largest of the processes' */
  uint64_t cache_hits, cache_misses;
  bool have_distinct_tiles; /* false when the level has too many tiles to count them */
  uint64_t distinct_tiles;
  char decoder[32];         /* tessera_batch_iter_decoder's */
  bool compared;            /* --compare: the differences from the CPU's batches */
  unsigned max_difference;
  double mean_difference;
  uint64_t differing; /* samples that differ at all */
  /* Reads of the slide's bytes during the run (tessera_slide_io_stats): HTTP requests for a
   * URL, preads for a file; and at open, in the parent. */
  uint64_t requests, bytes_fetched, retries;
  uint64_t open_requests, open_bytes;
} bench_result;

static tessera_io_stats io_now(const tessera_slide *slide) {
  tessera_io_stats io = {.struct_size = sizeof io};
  tessera_slide_io_stats(slide, &io);
  return io;
}

static void read_cache_stats(bench_result *res);
static double peak_rss_mib(void);

/* What a run's end adds to its result: the requests, bytes and retries of the slide's source
 * since `start`, the peak memory and the cache's counters. */
static void end_result(bench_result *res, const tessera_slide *slide,
                       const tessera_io_stats *start) {
  tessera_io_stats end = io_now(slide);
  res->requests = end.requests - start->requests;
  res->bytes_fetched = end.bytes - start->bytes;
  res->retries = end.retries - start->retries;
  res->peak_rss_mib = peak_rss_mib();
  read_cache_stats(res);
}

/* --compare: adds the differences of one batch's samples from the CPU's. */
static void add_differences(const uint8_t *gpu, const uint8_t *cpu, size_t n, bench_result *res,
                            double *sum) {
  for (size_t i = 0; i < n; i++) {
    unsigned d = gpu[i] > cpu[i] ? (unsigned)(gpu[i] - cpu[i]) : (unsigned)(cpu[i] - gpu[i]);
    *sum += d;
    res->differing += d != 0;
    if (d > res->max_difference)
      res->max_difference = d;
  }
}

/* Makes the process's tile cache the one asked for, counting hits and misses. */
static bool configure_cache(const bench_args *a) {
  if (a->cache == TESSERA_CACHE_NONE)
    return true;
  tessera_cache_options co;
  tessera_cache_options_init(&co);
  co.type = a->cache;
  co.memory_capacity_mib = (uint64_t)a->cache_mib;
  co.record_stats = 1;
  if (tessera_cache_configure(&co) != TESSERA_OK) {
    cli_error(a->slide, "--cache: %s", tessera_error_message());
    return false;
  }
  return true;
}

/* A shared segment goes away when its last user lets go of it; a process that leaves
 * through _exit (a child) or ends the run lets go here rather than rely on exit doing it. */
static void release_cache(const bench_args *a) {
  if (a->cache != TESSERA_CACHE_SHARED_MEMORY)
    return;
  tessera_cache_options co;
  tessera_cache_options_init(&co);
  co.type = TESSERA_CACHE_NONE;
  tessera_cache_configure(&co);
}

/* The cache's hits and misses since it was configured. */
static void read_cache_stats(bench_result *res) {
  tessera_cache_stats st = {.struct_size = sizeof st};
  if (tessera_cache_stats_get(&st) == TESSERA_OK) {
    res->cache_hits = st.hits;
    res->cache_misses = st.misses;
  }
}

static double peak_rss_mib(void) {
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) != 0)
    return 0.0;
  return (double)ru.ru_maxrss / 1024.0; /* Linux gives KiB */
}

/* --mpp --fast: each patch read on its own by tessera_read_region_scaled with the
 * reduced-size JPEG decode, on --workers threads taking patches in turn (the calling thread
 * with --workers 0), as the batch iterator reads the exact mode's patches side by side. */
struct fast_run {
  tessera_slide *slide;
  const bench_args *a;
  const int64_t *xy;
  size_t n;
  _Atomic size_t next, done;
  _Atomic uint64_t checksum;
  pthread_mutex_t lock;
  size_t failed;      /* the first failing patch's index (guarded by lock); n: none */
  char message[512];  /* its error */
  _Atomic bool stop;
};

static void *fast_worker(void *arg) {
  struct fast_run *r = arg;
  const bench_args *a = r->a;
  tessera_read_options ro;
  tessera_read_options_init(&ro);
  ro.channels = (int32_t)a->channels;
  ro.fast_jpeg = 1;
  size_t out_bytes = (size_t)(a->out_width * a->out_height * a->channels);
  uint8_t *out = malloc(out_bytes);
  uint64_t sum = 0;
  for (size_t i; out && !atomic_load(&r->stop) && (i = atomic_fetch_add(&r->next, 1)) < r->n;) {
    if (tessera_read_region_scaled(r->slide, r->xy[2 * i], r->xy[2 * i + 1], (int32_t)a->level,
                                   a->scale, a->scale, a->out_width, a->out_height, &ro, out,
                                   out_bytes) != TESSERA_OK) {
      pthread_mutex_lock(&r->lock);
      if (i < r->failed) {
        r->failed = i;
        snprintf(r->message, sizeof r->message, "%s", tessera_error_message());
      }
      pthread_mutex_unlock(&r->lock);
      atomic_store(&r->stop, true);
      break;
    }
    if (!a->no_checksum)
      sum += checksum_pixels(out, out_bytes, (int)a->channels);
    atomic_fetch_add(&r->done, 1);
  }
  if (!out) {
    pthread_mutex_lock(&r->lock);
    if (r->failed == r->n) {
      r->failed = atomic_load(&r->next);
      snprintf(r->message, sizeof r->message, "out of memory for a patch");
    }
    pthread_mutex_unlock(&r->lock);
    atomic_store(&r->stop, true);
  }
  atomic_fetch_add(&r->checksum, sum);
  free(out);
  return NULL;
}

static bool run_fast(tessera_slide *slide, const bench_args *a, const int64_t *xy, size_t n,
                     bool show_progress, bench_result *res) {
  memset(res, 0, sizeof *res);
  snprintf(res->decoder, sizeof res->decoder, "cpu");
  struct fast_run r = {.slide = slide, .a = a, .xy = xy, .n = n, .failed = n};
  pthread_mutex_init(&r.lock, NULL);
  size_t threads = a->workers > 0 ? (size_t)a->workers : 0;
  pthread_t *tid = threads ? calloc(threads, sizeof *tid) : NULL;
  tessera_io_stats io_start = io_now(slide);
  progress pr = {.enabled = show_progress && !a->json && isatty(STDERR_FILENO), .total = n};
  double start = pr.start = now_seconds();
  size_t started = 0;
  if (threads && !tid) {
    r.failed = 0;
    snprintf(r.message, sizeof r.message, "out of memory for %zu threads", threads);
    atomic_store(&r.stop, true);
  }
  while (tid && started < threads && pthread_create(&tid[started], NULL, fast_worker, &r) == 0)
    started++;
  if (started == 0 && r.failed == n) {
    fast_worker(&r); /* --workers 0, or no thread could start: the calling thread reads */
  } else {
    struct timespec tick = {0, 50 * 1000 * 1000};
    while (atomic_load(&r.done) < n && !atomic_load(&r.stop)) {
      progress_update(&pr, atomic_load(&r.done));
      nanosleep(&tick, NULL);
    }
  }
  for (size_t t = 0; t < started; t++)
    pthread_join(tid[t], NULL);
  free(tid);
  pthread_mutex_destroy(&r.lock);
  res->seconds = now_seconds() - start;
  progress_end(&pr);
  if (r.failed < n) {
    cli_error(a->slide, "patch %zu of %zu: %s", r.failed + 1, n, r.message);
    return false;
  }
  res->patches = n;
  res->checksum = a->no_checksum ? 0 : atomic_load(&r.checksum);
  res->batches = (n + (size_t)a->batch_size - 1) / (size_t)a->batch_size;
  end_result(res, slide, &io_start);
  return true;
}

/* Reads every batch of the n locations at xy. Prints the error and returns false when one
 * fails. */
static bool run(tessera_slide *slide, const bench_args *a, const int64_t *xy, size_t n,
                bool show_progress, bench_result *res) {
  if (a->fast)
    return run_fast(slide, a, xy, n, show_progress, res);
  tessera_batch_options bo;
  tessera_batch_options_init(&bo);
  bo.batch_size = (int32_t)a->batch_size;
  bo.num_workers = (int32_t)a->workers;
  bo.prefetch_factor = (int32_t)a->prefetch;
  bo.shuffle = a->shuffle;
  bo.seed = (uint64_t)a->seed;
  bo.channels = (int32_t)a->channels;
  bo.device = a->cuda ? TESSERA_DEVICE_CUDA : TESSERA_DEVICE_CPU;
  bo.device_id = (int32_t)a->device_id;

  memset(res, 0, sizeof *res);
  tessera_io_stats io_start = io_now(slide);
  progress pr = {.enabled = show_progress && !a->json && isatty(STDERR_FILENO), .total = n};
  double start = pr.start = now_seconds();
  tessera_batch_iter *it = NULL;
  if (tessera_batch_iter_create(slide, xy, n, a->width, a->height, (int32_t)a->level, &bo, &it) !=
      TESSERA_OK) {
    cli_error(a->slide, "%s", tessera_error_message());
    return false;
  }
  snprintf(res->decoder, sizeof res->decoder, "%s", tessera_batch_iter_decoder(it));
  /* The CPU's batches for --compare, and a host copy of CUDA batches to sum or compare. */
  tessera_batch_iter *cpu = NULL;
  bo.device = TESSERA_DEVICE_CPU;
  bool ok = !a->compare || tessera_batch_iter_create(slide, xy, n, a->width, a->height,
                                                     (int32_t)a->level, &bo, &cpu) == TESSERA_OK;
  bool host_copy = a->cuda && (a->compare || !a->no_checksum);
  size_t batch_bytes = (size_t)(a->batch_size * a->width * a->height * a->channels);
  uint8_t *host = host_copy ? malloc(batch_bytes) : NULL;
  if (!ok || (host_copy && !host))
    cli_error(a->slide, "%s", ok ? "out of memory for a batch" : tessera_error_message());
  ok = ok && (!host_copy || host);
  size_t total_batches = tessera_batch_iter_length(it);
  double sum = 0.0;
  /* --mpp at a scale other than 1: each patch area-averaged to the output size. */
  bool resample = a->mpp > 0 && a->scale != 1.0;
  size_t out_bytes = (size_t)(a->out_width * a->out_height * a->channels);
  uint8_t *out = resample ? malloc(out_bytes) : NULL;
  if (resample && !out) {
    cli_error(a->slide, "out of memory for a patch");
    ok = false;
  }
  while (ok) {
    tessera_batch *b = NULL, *c = NULL;
    if (tessera_batch_iter_next(it, &b) != TESSERA_OK ||
        (b && cpu && (tessera_batch_iter_next(cpu, &c) != TESSERA_OK || !c)) ||
        (b && host && tessera_batch_copy_to_host(b, host, batch_bytes) != TESSERA_OK)) {
      progress_end(&pr);
      cli_error(a->slide, "batch %zu of %zu: %s", res->batches + 1, total_batches,
                tessera_error_message());
      tessera_batch_release(b);
      tessera_batch_release(c);
      ok = false;
      break;
    }
    if (!b)
      break;
    const uint8_t *pixels = host ? host : b->data;
    size_t patch_bytes = (size_t)(b->width * b->height * b->channels);
    for (size_t j = 0; resample && j < b->count; j++) {
      if (tessera_resample_area(pixels + j * patch_bytes, b->width, b->height,
                                (size_t)(b->width * b->channels), b->channels, a->scale, a->scale,
                                a->out_width, a->out_height, out,
                                (size_t)(a->out_width * b->channels)) != TESSERA_OK) {
        cli_error(a->slide, "resampling a patch: %s", tessera_error_message());
        ok = false;
        break;
      }
      if (!a->no_checksum)
        res->checksum += checksum_pixels(out, out_bytes, b->channels);
    }
    if (!ok) {
      progress_end(&pr);
      tessera_batch_release(b);
      break;
    }
    if (!a->no_checksum && !resample)
      res->checksum += checksum_pixels(pixels, b->size, b->channels);
    if (c)
      add_differences(pixels, c->data, b->size, res, &sum);
    res->patches += b->count;
    res->batches++;
    tessera_batch_release(b);
    tessera_batch_release(c);
    progress_update(&pr, res->patches);
  }
  tessera_batch_iter_destroy(it);
  tessera_batch_iter_destroy(cpu);
  free(host);
  free(out);
  if (!ok)
    return false;
  if (a->compare) {
    uint64_t samples = (uint64_t)res->patches * (uint64_t)(a->width * a->height * a->channels);
    res->compared = true;
    res->mean_difference = samples ? sum / (double)samples : 0.0;
  }
  res->seconds = now_seconds() - start;
  progress_end(&pr);
  end_result(res, slide, &io_start);
  return true;
}

static bool read_all(int fd, void *buf, size_t size) {
  uint8_t *p = buf;
  while (size > 0) {
    ssize_t r = read(fd, p, size);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      return false;
    p += r;
    size -= (size_t)r;
  }
  return true;
}

/* One child of run_processes: its share of the locations, its own pool and (per_process)
 * cache, or the parent's shared one; the result goes back through the pipe. Never returns. */
static void child_main(tessera_slide *slide, const bench_args *a, const int64_t *xy, size_t n,
                       int out) {
  bench_result r;
  bool ok = (a->cache != TESSERA_CACHE_PER_PROCESS || configure_cache(a)) &&
            run(slide, a, xy, n, false, &r);
  release_cache(a);
  ssize_t w = ok ? write(out, &r, sizeof r) : 0;
  _exit(ok && w == (ssize_t)sizeof r ? 0 : 1);
}

/* Forks a->processes processes that split the locations between them (in order, in equal
 * shares) and adds up what they read; seconds run from the first fork to the last exit.
 * A shared cache's statistics already count every process, so they are read once, here,
 * after the last one ended; summing the children's would count each access many times. */
static bool run_processes(tessera_slide *slide, const bench_args *a, const xy_list *loc,
                          bench_result *res) {
  size_t p = (size_t)a->processes;
  pid_t *pids = calloc(p, sizeof *pids);
  int *fds = calloc(p, sizeof *fds);
  bool ok = pids && fds;
  memset(res, 0, sizeof *res);
  /* A shared cache is made once, before the fork, for all of them. */
  if (ok && a->cache == TESSERA_CACHE_SHARED_MEMORY)
    ok = configure_cache(a);
  fflush(stdout);
  fflush(stderr);
  double start = now_seconds();
  size_t started = 0;
  for (; ok && started < p; started++) {
    size_t lo = loc->n * started / p, hi = loc->n * (started + 1) / p;
    int pipefd[2];
    if (pipe(pipefd) != 0 || (pids[started] = fork()) < 0) {
      cli_error(a->slide, "cannot start process %zu: %s", started + 1, strerror(errno));
      ok = false;
      break;
    }
    if (pids[started] == 0) {
      close(pipefd[0]);
      child_main(slide, a, loc->xy + 2 * lo, hi - lo, pipefd[1]);
    }
    close(pipefd[1]);
    fds[started] = pipefd[0];
  }
  for (size_t k = 0; k < started; k++) {
    bench_result r;
    bool got = read_all(fds[k], &r, sizeof r);
    close(fds[k]);
    int status = 0;
    waitpid(pids[k], &status, 0);
    if (!got || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      if (ok)
        cli_error(a->slide, "process %zu of %zu failed", k + 1, p);
      ok = false;
      continue;
    }
    res->patches += r.patches;
    res->batches += r.batches;
    res->checksum += r.checksum;
    res->requests += r.requests;
    res->bytes_fetched += r.bytes_fetched;
    res->retries += r.retries;
    if (a->cache == TESSERA_CACHE_PER_PROCESS) {
      res->cache_hits += r.cache_hits;
      res->cache_misses += r.cache_misses;
    }
    if (r.peak_rss_mib > res->peak_rss_mib)
      res->peak_rss_mib = r.peak_rss_mib;
  }
  res->seconds = now_seconds() - start;
  if (a->cache == TESSERA_CACHE_SHARED_MEMORY)
    read_cache_stats(res);
  free(pids);
  free(fds);
  return ok;
}

/* ---- the tiles touched ------------------------------------------------------------------ */

/* The level pixels [*lo, *hi) that a patch of `side` pixels at level-0 coordinate v covers
 * along one axis of `size` pixels, clipped to the level; false when it misses the level. The
 * level position is found as the library finds it (floor(v / downsample), v itself at level
 * 0), and kept in double until it is known to lie near the level, so no cast overflows. */
static bool level_span(int64_t v, int64_t level, double downsample, int64_t side, int64_t size,
                       int64_t *lo, int64_t *hi) {
  int64_t lv = v;
  if (level != 0) {
    double d = floor((double)v / downsample);
    if (!(d > -(double)side && d < (double)size))
      return false;
    lv = (int64_t)d;
  }
  if (lv >= size || lv <= -side)
    return false;
  *lo = lv < 0 ? 0 : lv;
  *hi = lv + side > size ? size : lv + side; /* lv < size, so no overflow */
  return true;
}

/* How many distinct tiles of the level the patches touch, through a bitmap over the level's
 * tiles. res->have_distinct_tiles stays false for a level of too many tiles to count. */
static bool count_distinct_tiles(const bench_args *a, const tessera_level_info *info,
                                 const xy_list *loc, bench_result *res) {
  res->have_distinct_tiles = false;
  res->distinct_tiles = 0;
  if (info->tile_width <= 0 || info->tile_height <= 0 || info->width <= 0 || info->height <= 0)
    return true;
  uint64_t tw = (uint64_t)info->tile_width, th = (uint64_t)info->tile_height;
  uint64_t across = ((uint64_t)info->width + tw - 1) / tw;
  uint64_t down = ((uint64_t)info->height + th - 1) / th;
  uint64_t tiles;
  if (__builtin_mul_overflow(across, down, &tiles) || tiles > MAX_COUNTED_TILES)
    return true;
  uint64_t *seen = calloc((size_t)((tiles + 63) / 64), sizeof *seen);
  if (!seen) {
    cli_error(a->slide, "out of memory counting the tiles of level %" PRId64, a->level);
    return false;
  }
  for (size_t i = 0; i < loc->n; i++) {
    int64_t x0, x1, y0, y1;
    if (!level_span(loc->xy[2 * i], a->level, info->downsample, a->width, info->width, &x0, &x1) ||
        !level_span(loc->xy[2 * i + 1], a->level, info->downsample, a->height, info->height, &y0,
                    &y1))
      continue;
    for (uint64_t ty = (uint64_t)y0 / th; ty <= (uint64_t)(y1 - 1) / th; ty++) {
      for (uint64_t tx = (uint64_t)x0 / tw; tx <= (uint64_t)(x1 - 1) / tw; tx++) {
        uint64_t k = ty * across + tx;
        uint64_t bit = (uint64_t)1 << (k % 64);
        if (!(seen[k / 64] & bit)) {
          seen[k / 64] |= bit;
          res->distinct_tiles++;
        }
      }
    }
  }
  free(seen);
  res->have_distinct_tiles = true;
  return true;
}

/* ---- the report ----------------------------------------------------------------------- */

static double per_second(double amount, double seconds) {
  return seconds > 0.0 ? amount / seconds : 0.0;
}

static double megapixels(const bench_args *a, size_t patches) {
  return (double)patches * (double)a->out_width * (double)a->out_height / 1e6;
}

static const char *layout_text(const bench_args *a) {
  return a->locations ? "file" : layout_kind_name(a->layout);
}

/* The steps of a sliding layout; false for any other. */
static bool sliding_steps(const bench_args *a, int64_t *sx, int64_t *sy) {
  if (!a->have_layout || a->layout != LAYOUT_SLIDING)
    return false;
  layout_spec spec = {.kind = LAYOUT_SLIDING,
                      .patch_width = a->width,
                      .patch_height = a->height,
                      .stride_x = a->stride_x,
                      .stride_y = a->stride_y};
  layout_steps(&spec, sx, sy);
  return true;
}

static const char *cache_name(tessera_cache_type t) {
  return t == TESSERA_CACHE_PER_PROCESS     ? "per_process"
         : t == TESSERA_CACHE_SHARED_MEMORY ? "shared_memory"
                                            : "nocache";
}

static void print_json_pair(FILE *out, const char *key, int64_t first, int64_t second) {
  fprintf(out, "  \"%s\": [%" PRId64 ", %" PRId64 "],\n", key, first, second);
}

static void print_json(const bench_args *a, const tessera_level_info *info, const xy_list *loc,
                       const bench_result *r) {
  FILE *out = stdout;
  fputs("{\n  \"slide\": ", out);
  json_write_string(out, a->slide);
  fprintf(out, ",\n  \"level\": %" PRId64 ",\n", a->level);
  print_json_pair(out, "level_size", info->width, info->height);
  print_json_pair(out, "size", a->out_width, a->out_height);
  if (a->mpp > 0) {
    fputs("  \"mpp\": ", out);
    json_write_number(out, a->mpp);
    fputs(",\n  \"scale\": ", out);
    json_write_number(out, a->scale);
    fprintf(out, ",\n  \"fast\": %s,\n", a->fast ? "true" : "false");
    print_json_pair(out, "read_size", a->width, a->height);
  }
  fprintf(out,
          "  \"channels\": %" PRId64 ",\n  \"batch_size\": %" PRId64 ",\n  \"workers\": %" PRId64
          ",\n  \"prefetch\": %" PRId64 ",\n  \"shuffle\": %s,\n  \"seed\": %" PRId64 ",\n",
          a->channels, a->batch_size, a->workers, a->prefetch, a->shuffle ? "true" : "false",
          a->seed);
  fprintf(out, "  \"layout\": \"%s\",\n  \"locations\": ", layout_text(a));
  if (a->locations)
    json_write_string(out, a->locations);
  else
    fputs("null", out);
  fputs(",\n", out);
  int64_t sx, sy;
  if (sliding_steps(a, &sx, &sy))
    print_json_pair(out, "stride", sx, sy);
  else
    fputs("  \"stride\": null,\n", out);
  fprintf(out,
          "  \"count\": %zu,\n  \"patches\": %zu,\n  \"batches\": %zu,\n  \"seconds\": ", loc->n,
          r->patches, r->batches);
  json_write_number(out, r->seconds);
  fputs(",\n  \"patches_per_s\": ", out);
  json_write_number(out, per_second((double)r->patches, r->seconds));
  fputs(",\n  \"megapixels_per_s\": ", out);
  json_write_number(out, per_second(megapixels(a, r->patches), r->seconds));
  fputs(",\n  \"peak_rss_mib\": ", out);
  json_write_number(out, r->peak_rss_mib);
  fprintf(out,
          ",\n  \"cache\": \"%s\",\n  \"cache_mib\": %" PRId64 ",\n  \"processes\": %" PRId64
          ",\n  \"cache_hits\": %" PRIu64 ",\n  \"cache_misses\": %" PRIu64,
          cache_name(a->cache), a->cache_mib, a->processes, r->cache_hits, r->cache_misses);
  fprintf(out,
          ",\n  \"requests\": %" PRIu64 ",\n  \"bytes_fetched\": %" PRIu64
          ",\n  \"retries\": %" PRIu64 ",\n  \"open_requests\": %" PRIu64
          ",\n  \"open_bytes\": %" PRIu64,
          r->requests, r->bytes_fetched, r->retries, r->open_requests, r->open_bytes);
  if (r->have_distinct_tiles)
    fprintf(out, ",\n  \"distinct_tiles\": %" PRIu64, r->distinct_tiles);
  else
    fputs(",\n  \"distinct_tiles\": null", out);
  fprintf(out, ",\n  \"device\": \"%s\",\n  \"device_id\": %" PRId64 ",\n  \"decoder\": ",
          a->cuda ? "cuda" : "cpu", a->device_id);
  json_write_string(out, r->decoder);
  if (r->compared) {
    fprintf(out, ",\n  \"max_difference\": %u,\n  \"mean_difference\": ", r->max_difference);
    json_write_number(out, r->mean_difference);
    fprintf(out, ",\n  \"differing_samples\": %" PRIu64, r->differing);
  }
  if (a->no_checksum)
    fputs(",\n  \"checksum\": null\n}\n", out);
  else
    fprintf(out, ",\n  \"checksum\": %" PRIu64 "\n}\n", r->checksum);
}

static void print_table(const bench_args *a, const tessera_level_info *info,
                        const bench_result *r) {
  FILE *out = stdout;
  fputs("slide:          ", out);
  text_write_escaped(out, a->slide);
  fprintf(out, "\nlevel:          %" PRId64 " (%" PRId64 " x %" PRId64 ")\n", a->level, info->width,
          info->height);
  if (a->mpp > 0)
    fprintf(out,
            "mpp:            %g (%" PRId64 " x %" PRId64 " patches, %" PRId64 " x %" PRId64
            " of the level read for each, scale %g%s)\n",
            a->mpp, a->out_width, a->out_height, a->width, a->height, a->scale,
            a->fast ? ", fast" : "");
  fputs("layout:         ", out);
  if (a->locations)
    text_write_escaped(out, a->locations);
  else
    fputs(layout_kind_name(a->layout), out);
  int64_t sx, sy;
  if (sliding_steps(a, &sx, &sy))
    fprintf(out, " (stride %" PRId64 ",%" PRId64 ")", sx, sy);
  fprintf(out, ", %" PRId64 " x %" PRId64 " patches%s, %s\n", a->width, a->height,
          a->shuffle ? ", shuffled" : "", a->channels == 4 ? "RGBA" : "RGB");
  fprintf(out,
          "batches:        %zu of up to %" PRId64 "; %" PRId64 " worker%s, prefetch %" PRId64 "\n",
          r->batches, a->batch_size, a->workers, a->workers == 1 ? "" : "s", a->prefetch);
  fprintf(out, "patches:        %zu\n", r->patches);
  fprintf(out, "seconds:        %.4f\n", r->seconds);
  fprintf(out, "patches/s:      %.1f\n", per_second((double)r->patches, r->seconds));
  fprintf(out, "megapixels/s:   %.1f\n", per_second(megapixels(a, r->patches), r->seconds));
  fprintf(out,
          "requests:       %" PRIu64 " made, %.2f MiB fetched, %" PRIu64
          " retried (opening: %" PRIu64 " requests, %.2f MiB)\n",
          r->requests, (double)r->bytes_fetched / 1048576.0, r->retries, r->open_requests,
          (double)r->open_bytes / 1048576.0);
  fprintf(out, "peak RSS:       %.1f MiB%s\n", r->peak_rss_mib,
          a->processes > 1 ? " (the largest process)" : "");
  if (a->processes > 1)
    fprintf(out, "processes:      %" PRId64 "\n", a->processes);
  if (a->cache != TESSERA_CACHE_NONE)
    fprintf(out, "cache:          %s, %" PRId64 " MiB: %" PRIu64 " hits, %" PRIu64 " misses\n",
            cache_name(a->cache), a->cache_mib, r->cache_hits, r->cache_misses);
  if (r->have_distinct_tiles)
    fprintf(out, "tiles:          %" PRIu64 " distinct touched\n", r->distinct_tiles);
  fprintf(out, "device:         %s", a->cuda ? "cuda" : "cpu");
  if (a->cuda)
    fprintf(out, ":%" PRId64, a->device_id);
  fprintf(out, " (decoder: %s)\n", r->decoder);
  if (r->compared)
    fprintf(out,
            "vs the CPU:     largest difference %u, mean %.4f, %" PRIu64 " samples differ\n",
            r->max_difference, r->mean_difference, r->differing);
  if (a->no_checksum)
    fputs("checksum:       (not computed: --no-checksum)\n", out);
  else
    fprintf(out, "checksum:       %" PRIu64 "\n", r->checksum);
}

/* ---- the command ---------------------------------------------------------------------- */

static bool open_level(const bench_args *a, tessera_slide **slide, tessera_level_info *info) {
  if (tessera_open(a->slide, slide) != TESSERA_OK) {
    cli_error(a->slide, "%s", tessera_error_message());
    return false;
  }
  int32_t levels = tessera_level_count(*slide);
  if (a->level >= levels) {
    cli_error(a->slide, "level %" PRId64 " does not exist (the slide has %" PRId32 " level%s)",
              a->level, levels, levels == 1 ? "" : "s");
    return false;
  }
  memset(info, 0, sizeof *info);
  info->struct_size = sizeof *info;
  if (tessera_level_info_get(*slide, (int32_t)a->level, info) != TESSERA_OK) {
    cli_error(a->slide, "level %" PRId64 ": %s", a->level, tessera_error_message());
    return false;
  }
  return true;
}

int cmd_bench(int argc, char **argv) {
  if (cli_wants_help(argc, argv)) {
    cmd_bench_help(stdout);
    return CLI_EXIT_OK;
  }
  bench_args a;
  int rc = parse_args(argc, argv, &a);
  if (rc != CLI_EXIT_OK)
    return rc;

  tessera_slide *slide = NULL;
  tessera_level_info info;
  xy_list loc = {0};
  bench_result res;
  bool ok = open_level(&a, &slide, &info);
  a.out_width = a.width;
  a.out_height = a.height;
  a.scale = 1.0;
  if (ok && a.mpp > 0) {
    int32_t level = 0;
    if (tessera_level_for_mpp(slide, a.mpp, &level, &a.scale) != TESSERA_OK ||
        tessera_level_info_get(slide, level, &info) != TESSERA_OK) {
      cli_error(a.slide, "--mpp %g: %s", a.mpp, tessera_error_message());
      ok = false;
    }
    a.level = level;
    if (a.scale != 1.0) { /* what is read of the level for each patch */
      a.width = (int64_t)ceil((double)a.out_width * a.scale) + 1;
      a.height = (int64_t)ceil((double)a.out_height * a.scale) + 1;
    }
  }
  tessera_io_stats opened = ok ? io_now(slide) : (tessera_io_stats){0};
  ok = ok &&
            (a.locations ? read_locations(a.locations, &loc) : make_layout(&a, &info, &loc)) &&
            (a.processes > 1 ? run_processes(slide, &a, &loc, &res)
                             : configure_cache(&a) && run(slide, &a, loc.xy, loc.n, true, &res)) &&
            count_distinct_tiles(&a, &info, &loc, &res);
  res.open_requests = opened.requests;
  res.open_bytes = opened.bytes;
  release_cache(&a);
  tessera_close(slide);
  if (ok) {
    if (a.json)
      print_json(&a, &info, &loc, &res);
    else
      print_table(&a, &info, &res);
  }
  free(loc.xy);
  if (!ok)
    return CLI_EXIT_ERROR;
  if (fflush(stdout) != 0 || ferror(stdout)) {
    cli_error(NULL, "cannot write to standard output");
    return CLI_EXIT_ERROR;
  }
  return CLI_EXIT_OK;
}
