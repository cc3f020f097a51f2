/* bench/compare: one workload of patches read three ways in one run, on the same file,
 * locations, patch size and thread count: with OpenSlide, with tessera's batch iterator, and
 * as the decode limit (the same JPEG tiles through a bare libjpeg-turbo loop). Prints one
 * table; exits 1 if tessera's pixels do not sum to OpenSlide's. */
#include "bench.h"
#include "layout.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <openslide.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <tessera.h>
#include <tiffio.h>
#include <time.h>
#include <unistd.h>
/* jpeglib.h needs FILE and size_t declared first. */
#include <jpeglib.h>

#define MAX_THREADS 1024
#define MAX_COUNT ((int64_t)1 << 30)
#define MAX_REPEAT 1000

#define STR_(x) #x
#define STR(x) STR_(x)

enum { EXIT_USAGE = 2 };

void bench_error(const char *fmt, ...) {
  char message[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(message, sizeof message, fmt, ap);
  va_end(ap);
  for (char *c = message; *c; c++) {
    if ((unsigned char)*c < 0x20)
      *c = ' ';
  }
  fprintf(stderr, "compare: %s\n", message);
}

double bench_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- the command line ----------------------------------------------------------------- */

typedef struct args {
  const char *path;
  layout_kind layout;
  bool have_layout, have_stride;
  int64_t count, width, height, level, threads, batch_size, prefetch, seed, repeat;
  int64_t stride_x, stride_y;
  int64_t cache_mib; /* 0: no cached tessera row */
  bool shuffle;
} args;

static void usage(FILE *out) {
  fputs("Usage: compare SLIDE --layout grid|random|sliding --size W,H [--count N]\n"
        "               [--level L] [--threads T] [--batch-size B] [--prefetch F]\n"
        "               [--stride S|SX,SY] [--seed S] [--repeat R] [--shuffle]\n"
        "               [--cache MIB]\n"
        "\n"
        "Read one workload of W x H patches of level L three ways, on T threads each:\n"
        "OpenSlide (one handle shared by T threads, ARGB un-premultiplied to RGB),\n"
        "tessera's batch iterator (num_workers T, batches of B, F batches ahead) and the\n"
        "decode limit (the JPEG tiles the patches overlap, each once per patch that\n"
        "needs it, decoded by a bare libjpeg-turbo loop from memory). Each runs R times\n"
        "(default 3), interleaved; the table shows the medians. The layouts are those of\n"
        "'tessera bench' (cli/layout.c): grid and sliding default to every patch,\n"
        "random needs --count. Defaults: level 0, 1 thread, batch size 32, prefetch 2,\n"
        "seed 0, stride W/2,H/2. --shuffle visits the patches in an order drawn from\n"
        "--seed (the same for every reader); --cache MIB adds rows for tessera with a\n"
        "per-process and with a shared-memory tile cache of MIB MiB, each made afresh\n"
        "(empty) for each run.\n"
        "\n"
        "Example:\n"
        "  compare slide.tiff --layout random --count 3000 --size 224,224 --threads 2\n"
        "\n"
        "Exit status: 0, 1 when a reader fails or the checksums of tessera and OpenSlide\n"
        "differ, 2 for a wrong command line.\n",
        out);
}

/* Prints a usage error; returns false, for the parsers to pass on. */
static bool reject(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static bool reject(const char *fmt, ...) {
  char message[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(message, sizeof message, fmt, ap);
  va_end(ap);
  bench_error("%s (see 'compare --help')", message);
  return false;
}

/* A whole-string decimal integer in [min, max]. */
static bool parse_int(const char *name, const char *text, int64_t min, int64_t max, int64_t *out) {
  char *end = NULL;
  errno = 0;
  long long v = strtoll(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || v < min || v > max)
    return reject("%s: '%s' is not an integer in %" PRId64 "..%" PRId64, name, text, min, max);
  *out = (int64_t)v;
  return true;
}

/* "A,B", or "A" for both when single is allowed. */
static bool parse_two(const char *name, const char *text, bool single, int64_t *a, int64_t *b) {
  const char *comma = strchr(text, ',');
  if (!comma) {
    if (!single)
      return reject("%s: '%s' is not two integers A,B", name, text);
    if (!parse_int(name, text, 1, INT32_MAX, a))
      return false;
    *b = *a;
    return true;
  }
  char first[64];
  size_t len = (size_t)(comma - text);
  if (len >= sizeof first)
    return reject("%s: '%s' is not two integers A,B", name, text);
  memcpy(first, text, len);
  first[len] = '\0';
  return parse_int(name, first, 1, INT32_MAX, a) && parse_int(name, comma + 1, 1, INT32_MAX, b);
}

/* The value of option argv[*i]: "--name=value" or "--name value". NULL if it is not name. */
static const char *option_value(int argc, char **argv, int *i, const char *name, bool *missing) {
  const char *arg = argv[*i];
  size_t len = strlen(name);
  if (strncmp(arg, name, len) != 0)
    return NULL;
  if (arg[len] == '=')
    return arg + len + 1;
  if (arg[len] != '\0')
    return NULL;
  if (*i + 1 >= argc) {
    *missing = true;
    return NULL;
  }
  return argv[++*i];
}

static bool parse_option(const char *name, const char *v, args *a) {
  if (strcmp(name, "--layout") == 0) {
    a->have_layout = layout_kind_parse(v, &a->layout);
    return a->have_layout || reject("--layout: '%s' is not grid, random or sliding", v);
  }
  if (strcmp(name, "--size") == 0)
    return parse_two(name, v, false, &a->width, &a->height);
  if (strcmp(name, "--stride") == 0) {
    a->have_stride = true;
    return parse_two(name, v, true, &a->stride_x, &a->stride_y);
  }
  if (strcmp(name, "--count") == 0)
    return parse_int(name, v, 1, MAX_COUNT, &a->count);
  if (strcmp(name, "--level") == 0)
    return parse_int(name, v, 0, INT32_MAX, &a->level);
  if (strcmp(name, "--threads") == 0)
    return parse_int(name, v, 1, MAX_THREADS, &a->threads);
  if (strcmp(name, "--batch-size") == 0)
    return parse_int(name, v, 1, 1 << 20, &a->batch_size);
  if (strcmp(name, "--prefetch") == 0)
    return parse_int(name, v, 1, 1024, &a->prefetch);
  if (strcmp(name, "--seed") == 0)
    return parse_int(name, v, 0, INT64_MAX, &a->seed);
  if (strcmp(name, "--cache") == 0)
    return parse_int(name, v, 1, (int64_t)1 << 30, &a->cache_mib);
  return parse_int(name, v, 1, MAX_REPEAT, &a->repeat); /* --repeat */
}

static const char *const option_names[] = {"--layout", "--size",    "--stride",     "--count",
                                           "--level",  "--threads", "--batch-size", "--prefetch",
                                           "--seed",   "--repeat",  "--cache"};

/* argv[*i] as an option, or as the slide; moves *i past an option's value. */
static bool parse_one(int argc, char **argv, int *i, args *a) {
  if (strcmp(argv[*i], "--shuffle") == 0) {
    a->shuffle = true;
    return true;
  }
  for (size_t k = 0; k < sizeof option_names / sizeof option_names[0]; k++) {
    bool missing = false;
    const char *v = option_value(argc, argv, i, option_names[k], &missing);
    if (missing)
      return reject("%s needs a value", option_names[k]);
    if (v)
      return parse_option(option_names[k], v, a);
  }
  if (argv[*i][0] == '-')
    return reject("unknown option '%s'", argv[*i]);
  if (a->path)
    return reject("more than one SLIDE given ('%s' and '%s')", a->path, argv[*i]);
  a->path = argv[*i];
  return true;
}

/* The rules that tie options together. */
static bool check_args(const args *a) {
  if (!a->path)
    return reject("no SLIDE given");
  if (!a->have_layout)
    return reject("--layout is required");
  if (a->width == 0)
    return reject("--size W,H is required");
  if (a->layout == LAYOUT_RANDOM && a->count == 0)
    return reject("--layout random needs --count N");
  if (a->have_stride && a->layout != LAYOUT_SLIDING)
    return reject("--stride goes with --layout sliding");
  return true;
}

/* Returns 0, EXIT_USAGE, or -1 after printing the help. */
static int parse_args(int argc, char **argv, args *a) {
  memset(a, 0, sizeof *a);
  a->threads = 1;
  a->batch_size = 32;
  a->prefetch = 2;
  a->repeat = 3;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage(stdout);
      return -1;
    }
  }
  for (int i = 1; i < argc; i++) {
    if (!parse_one(argc, argv, &i, a))
      return EXIT_USAGE;
  }
  return check_args(a) ? 0 : EXIT_USAGE;
}

/* ---- the machine and the file --------------------------------------------------------- */

static void cpu_model(char *out, size_t size) {
  snprintf(out, size, "unknown CPU");
  FILE *f = fopen("/proc/cpuinfo", "r");
  if (!f)
    return;
  char line[512];
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, "model name", 10) == 0) {
      const char *colon = strchr(line, ':');
      if (colon) {
        colon += strspn(colon + 1, " \t") + 1;
        snprintf(out, size, "%.*s", (int)strcspn(colon, "\n"), colon);
      }
      break;
    }
  }
  fclose(f);
}

/* Reads the file once, so every reader finds it in the page cache. */
static bool warm_page_cache(const char *path) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) {
    bench_error("%s: %s", path, strerror(errno));
    return false;
  }
  static char buf[1 << 20];
  ssize_t got;
  while ((got = read(fd, buf, sizeof buf)) > 0) {
  }
  close(fd);
  if (got < 0)
    bench_error("%s: %s", path, strerror(errno));
  return got == 0;
}

/* The level as tessera sees it, checked against OpenSlide's view of the same level. */
static bool describe_level(const args *a, tessera_level_info *info, char *vendor,
                           size_t vendor_size) {
  tessera_slide *slide = NULL;
  if (tessera_open(a->path, &slide) != TESSERA_OK) {
    bench_error("tessera: %s: %s", a->path, tessera_error_message());
    return false;
  }
  memset(info, 0, sizeof *info);
  info->struct_size = sizeof *info;
  bool ok = a->level < tessera_level_count(slide) &&
            tessera_level_info_get(slide, (int32_t)a->level, info) == TESSERA_OK;
  if (!ok)
    bench_error("tessera: %s: no level %" PRId64, a->path, a->level);
  snprintf(vendor, vendor_size, "%s", tessera_vendor(slide));
  tessera_close(slide);
  if (!ok)
    return false;

  openslide_t *osr = openslide_open(a->path);
  if (!osr || openslide_get_error(osr)) {
    bench_error("OpenSlide: %s: %s", a->path, osr ? openslide_get_error(osr) : "not a slide");
    if (osr)
      openslide_close(osr);
    return false;
  }
  int64_t w = -1, h = -1;
  if (a->level < openslide_get_level_count(osr))
    openslide_get_level_dimensions(osr, (int32_t)a->level, &w, &h);
  openslide_close(osr);
  if (w != info->width || h != info->height) {
    bench_error("level %" PRId64 " is %" PRId64 " x %" PRId64 " for tessera but %" PRId64
                " x %" PRId64 " for OpenSlide",
                a->level, info->width, info->height, w, h);
    return false;
  }
  return true;
}

/* ---- the runs ------------------------------------------------------------------------- */

enum { READER_OPENSLIDE, READER_TESSERA, READER_CACHED, READER_SHARED, READER_DECODE, READERS };

static const char *const reader_names[READERS] = {"OpenSlide", "tessera", "tessera+cache",
                                                  "tessera+shm", "decode limit"};

typedef struct series {
  double *seconds; /* one per repeat */
  uint64_t checksum;
  bool ran, consistent; /* every run gave the same checksum */
} series;

static int compare_doubles(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(const double *v, int n) {
  double *sorted = malloc((size_t)n * sizeof *sorted);
  if (!sorted)
    return v[0];
  memcpy(sorted, v, (size_t)n * sizeof *sorted);
  qsort(sorted, (size_t)n, sizeof *sorted, compare_doubles);
  double m = n % 2 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0;
  free(sorted);
  return m;
}

static bool run_once(int reader, const workload *w, const decode_plan *plan, run_result *r) {
  switch (reader) {
  case READER_OPENSLIDE: return openslide_run(w, r);
  case READER_TESSERA: return tessera_run(w, r);
  case READER_CACHED: return tessera_run_cached(w, TESSERA_CACHE_PER_PROCESS, r);
  case READER_SHARED: return tessera_run_cached(w, TESSERA_CACHE_SHARED_MEMORY, r);
  default: return decode_plan_run(plan, w->threads, r);
  }
}

/* Runs the readers in turn, repeat times over, so that a drift of the machine's speed falls
 * on all of them alike. */
static bool run_all(const workload *w, const decode_plan *plan, int repeat, series *s) {
  for (int k = 0; k < READERS; k++) {
    s[k].seconds = calloc((size_t)repeat, sizeof *s[k].seconds);
    s[k].ran = (k != READER_DECODE || plan) &&
               ((k != READER_CACHED && k != READER_SHARED) || w->cache_mib > 0) && s[k].seconds;
    s[k].consistent = true;
  }
  for (int i = 0; i < repeat; i++) {
    for (int k = 0; k < READERS; k++) {
      if (!s[k].ran)
        continue;
      run_result r;
      if (!run_once(k, w, plan, &r))
        return false;
      s[k].seconds[i] = r.seconds;
      if (i > 0 && r.checksum != s[k].checksum)
        s[k].consistent = false;
      s[k].checksum = r.checksum;
    }
  }
  return true;
}

/* ---- the report ----------------------------------------------------------------------- */

static void print_header(const args *a, const workload *w, const tessera_level_info *info,
                         const char *vendor, const decode_plan *plan, const char *plan_why) {
  char cpu[256];
  cpu_model(cpu, sizeof cpu);
  struct utsname u;
  if (uname(&u) != 0)
    memset(&u, 0, sizeof u);
  const char *tiff = TIFFGetVersion();
  double mp = (double)w->n * (double)w->width * (double)w->height / 1e6;

  const char *codec = tessera_compression_name(info->compression);
  printf("slide:        %s (%s), level %d: %" PRId64 " x %" PRId64 ", ", w->path, vendor, w->level,
         info->width, info->height);
  if (info->tiled)
    printf("%dx%d %s tiles\n", info->tile_width, info->tile_height, codec ? codec : "?");
  else
    printf("%s strips of %d rows\n", codec ? codec : "?", info->tile_height);
  printf("workload:     %s, %zu patches of %" PRId64 " x %" PRId64 " (%.1f megapixels), %d "
         "thread%s, median of %" PRId64 " run%s\n",
         layout_kind_name(a->layout), w->n, w->width, w->height, mp, w->threads,
         w->threads == 1 ? "" : "s", a->repeat, a->repeat == 1 ? "" : "s");
  printf("OpenSlide:    one handle shared by the threads, opened afresh for each run; its own\n"
         "              tile cache left at its default (1024 x 1024 x 30 bytes in 3.4.1)\n");
  printf("tessera:      batch iterator, num_workers %d, batch size %d, prefetch %d; the\n"
         "              calling thread takes the batches and sums them\n",
         w->threads, w->batch_size, w->prefetch);
  if (w->cache_mib > 0)
    printf("tessera+cache: the same with a per-process tile cache of %d MiB, empty at the start\n"
           "              of each run\n"
           "tessera+shm:  the same with a shared-memory tile cache of %d MiB (one process)\n",
           w->cache_mib, w->cache_mib);
  if (a->shuffle)
    printf("order:        shuffled with seed %" PRId64 ", the same for every reader\n", a->seed);
  if (plan)
    printf("decode limit: %zu %s JPEG tile decodes (each tile once per patch that needs it;\n"
           "              %zu distinct tiles, %.1f MiB compressed, read into memory first)\n",
           decode_plan_decodes(plan), decode_plan_colors(plan), decode_plan_distinct(plan),
           (double)decode_plan_compressed(plan) / (1024.0 * 1024.0));
  else
    printf("decode limit: not measured: %s\n", plan_why);
  printf("machine:      %s, %ld online CPUs, %s %s %s\n", cpu, sysconf(_SC_NPROCESSORS_ONLN),
         u.sysname, u.release, u.machine);
  printf("libraries:    OpenSlide %s, tessera %s, libjpeg-turbo %s (headers), %.*s\n",
         openslide_get_version(), tessera_version(),
#ifdef LIBJPEG_TURBO_VERSION
         STR(LIBJPEG_TURBO_VERSION),
#else
         "? (not libjpeg-turbo)",
#endif
         (int)strcspn(tiff, "\n"), tiff);
  printf("\n");
}

/* Where OpenSlide cannot give tessera's pixels, whatever tessera does, say so beside the
 * verdict. */
static void print_caveats(const workload *w, const tessera_level_info *info) {
  if (w->level > 0 && w->downsample != floor(w->downsample))
    printf("note: the downsample of level %d (%.4f) is not a whole number; OpenSlide 3.4.1 then\n"
           "      draws patches at fractional offsets (cairo resampling), so its pixels and\n"
           "      checksum may differ from tessera's\n",
           w->level, w->downsample);
  if (info->samples_per_pixel == 2 || info->samples_per_pixel == 4)
    printf("note: the level has alpha; OpenSlide premultiplies colour by it, which blacks out\n"
           "      pixels of alpha 0 and rounds those below 255, while tessera's RGB keeps the\n"
           "      stored colour, so the checksums may differ\n");
}

/* Prints the table; returns false when the checksums of tessera and OpenSlide differ or a
 * reader's runs disagree with each other. */
static bool print_table(const args *a, const workload *w, const tessera_level_info *info,
                        const series *s) {
  double mp = (double)w->n * (double)w->width * (double)w->height / 1e6;
  double med[READERS] = {0};
  for (int k = 0; k < READERS; k++)
    med[k] = s[k].ran ? median(s[k].seconds, (int)a->repeat) : 0.0;
  printf("%-13s %9s %11s %9s %13s %9s  %s\n", "reader", "seconds", "patches/s", "MP/s",
         "vs OpenSlide", "of limit", "checksum");
  for (int k = 0; k < READERS; k++) {
    if (!s[k].ran) {
      printf("%-13s %9s %11s %9s %13s %9s  %s\n", reader_names[k], "-", "-", "-", "-", "-", "-");
      continue;
    }
    printf("%-13s %9.3f %11.1f %9.1f %12.2fx ", reader_names[k], med[k], (double)w->n / med[k],
           mp / med[k], med[READER_OPENSLIDE] / med[k]);
    if (s[READER_DECODE].ran)
      printf("%8.1f%%", 100.0 * med[READER_DECODE] / med[k]);
    else
      printf("%9s", "-");
    printf("  %" PRIu64 "%s\n", s[k].checksum, s[k].consistent ? "" : " (VARIES between runs)");
  }
  printf("\nruns (s):");
  for (int k = 0; k < READERS; k++) {
    if (!s[k].ran)
      continue;
    printf("%s %s", k ? ";" : "", reader_names[k]);
    for (int i = 0; i < (int)a->repeat; i++)
      printf(" %.3f", s[k].seconds[i]);
  }
  printf("\n");
  if (s[READER_DECODE].ran)
    printf("(the decode limit's checksum sums whole decoded tiles: it equals the others only\n"
           " when every patch is exactly one tile)\n");
  print_caveats(w, info);
  bool agree = s[READER_TESSERA].checksum == s[READER_OPENSLIDE].checksum &&
               s[READER_TESSERA].consistent && s[READER_OPENSLIDE].consistent &&
               (!s[READER_CACHED].ran || (s[READER_CACHED].checksum == s[READER_TESSERA].checksum &&
                                          s[READER_CACHED].consistent));
  printf("%s\n", agree ? "checksums agree" : "CHECKSUMS DIFFER");
  return agree;
}

/* ---- main ----------------------------------------------------------------------------- */

static bool make_workload(const args *a, const tessera_level_info *info, workload *w,
                          int64_t **xy) {
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
  size_t n = 0;
  if (!layout_generate(&spec, xy, &n, why, sizeof why)) {
    bench_error("%s: level %" PRId64 ", --layout %s: %s", a->path, a->level,
                layout_kind_name(a->layout), why);
    return false;
  }
  *w = (workload){.path = a->path,
                  .level = (int32_t)a->level,
                  .level_width = info->width,
                  .level_height = info->height,
                  .downsample = info->downsample,
                  .width = a->width,
                  .height = a->height,
                  .xy = *xy,
                  .n = n,
                  .threads = (int)a->threads,
                  .batch_size = (int)a->batch_size,
                  .prefetch = (int)a->prefetch,
                  .cache_mib = (int)a->cache_mib};
  if (a->shuffle) {
    /* Fisher-Yates over the pairs, drawn from splitmix64 without modulo bias. */
    uint64_t state = (uint64_t)a->seed;
    for (size_t i = n; i > 1; i--) {
      uint64_t bound = i, threshold = (0 - bound) % bound, r;
      do
        r = layout_splitmix64(&state);
      while (r < threshold);
      size_t j = (size_t)(r % bound);
      int64_t tx = (*xy)[2 * (i - 1)], ty = (*xy)[2 * (i - 1) + 1];
      (*xy)[2 * (i - 1)] = (*xy)[2 * j];
      (*xy)[2 * (i - 1) + 1] = (*xy)[2 * j + 1];
      (*xy)[2 * j] = tx;
      (*xy)[2 * j + 1] = ty;
    }
  }
  return true;
}

int main(int argc, char **argv) {
  args a;
  int rc = parse_args(argc, argv, &a);
  if (rc != 0)
    return rc < 0 ? 0 : rc;
  /* libtiff, here and inside OpenSlide, would print its complaints (an unknown tag, say)
   * through the table; every failure that matters is reported by its reader instead. */
  TIFFSetWarningHandler(NULL);
  TIFFSetErrorHandler(NULL);
  tessera_level_info info;
  char vendor[64];
  workload w;
  int64_t *xy = NULL;
  if (!warm_page_cache(a.path) || !describe_level(&a, &info, vendor, sizeof vendor) ||
      !make_workload(&a, &info, &w, &xy))
    return 1;
  char why[256] = "";
  decode_plan *plan = decode_plan_create(&w, why, sizeof why);
  print_header(&a, &w, &info, vendor, plan, why);
  fflush(stdout);

  series s[READERS] = {0};
  bool ok = run_all(&w, plan, (int)a.repeat, s) && print_table(&a, &w, &info, s);
  for (int k = 0; k < READERS; k++)
    free(s[k].seconds);
  decode_plan_destroy(plan);
  free(xy);
  return ok ? 0 : 1;
}
