/* OpenSlide's C API over tessera (openslide.h says what it promises). Compiled twice:
 * TSR_OPENSLIDE_ABI_MAJOR 0 gives OpenSlide 3.4's ABI (libopenslide.so.0), 1 gives 4.0's
 * (libopenslide.so.1). Only the functions of the chosen ABI are exported (a version script).
 *
 * The sticky error lives here and only here: tessera's own calls keep their per-call errors,
 * and this layer turns the first failure on a handle into the handle's death, as OpenSlide
 * documents. */
#include "openslide.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "alloc.h"
#include "fractional.h"
#include "compat/openslide_properties.h"
#include "format/format.h"
#include "slide_internal.h"
#include "tessera.h"

#if TSR_OPENSLIDE_ABI_MAJOR == 0
#define OPENSLIDE_VERSION "3.4.1"
#else
#define OPENSLIDE_VERSION "4.0.0"
#endif

#define EXPORT __attribute__((visibility("default")))

struct os_level {
  int64_t w, h;
  double downsample;
  uint32_t tile_w, tile_h;
  bool associated_alpha; /* stored premultiplied (ExtraSamples 1), which OpenSlide returns as is */
};

struct _openslide {
  tessera_slide *slide; /* NULL for a handle that failed to open */
  /* NULL, or the first error's message (owned). Set once, by compare-and-swap from NULL, by
   * whichever thread fails first; read by any thread; freed by close. */
  _Atomic(char *) error;
  struct os_level *levels;
  int32_t nlevels;
  struct tsr_props props; /* sorted by key */
  const char **property_names;   /* NULL-terminated, pointing into props */
  const char **associated_names; /* NULL-terminated, tessera's strings */
  uint8_t *icc;                  /* level 0's ICC profile (ABI 1), or NULL */
  size_t icc_size;
};

struct _openslide_cache {
  uint64_t capacity_mib;
};

static const char *const no_names[] = {NULL};

/* The error of a handle whose message could not be copied: the handle is dead whatever it
 * says. Never freed. */
static char out_of_memory[] = "out of memory";

/* Keeps msg as the handle's error unless it already has one. */
static void fail(openslide_t *osr, const char *msg) {
  char *copy = tsr_strdup(msg && *msg ? msg : "unknown error");
  if (!copy)
    copy = out_of_memory;
  char *expected = NULL;
  if (!atomic_compare_exchange_strong(&osr->error, &expected, copy) && copy != out_of_memory)
    tsr_free(copy);
}

EXPORT const char *openslide_get_error(openslide_t *osr) { return atomic_load(&osr->error); }

static bool dead(openslide_t *osr) { return atomic_load(&osr->error) != NULL; }

/* OpenSlide keeps a 32 MiB decoded-tile cache per slide; tessera's one cache per process
 * starts with that capacity, made when the first slide opens. */
#define DEFAULT_CACHE_MIB 32

static pthread_once_t cache_once = PTHREAD_ONCE_INIT;

static void configure_cache(uint64_t mib) {
  tessera_cache_options o;
  tessera_cache_options_init(&o);
  o.type = TESSERA_CACHE_PER_PROCESS;
  o.memory_capacity_mib = mib;
  tessera_cache_configure(&o); /* without a cache reads are only slower */
}

static void default_cache(void) { configure_cache(DEFAULT_CACHE_MIB); }

/* OpenSlide claims files by their format; tessera reads TIFF-based ones and Sakura's SQLite
 * databases, so a file that is neither at all (or not there, or no regular file: a FIFO must not block the open) is "not
 * a slide" (NULL), and so is a TIFF whose structure tessera finds malformed (see
 * openslide_open); a TIFF that fails to open otherwise is a slide in error state. */
static bool looks_like_tiff(const char *filename) {
  struct stat st;
  if (stat(filename, &st) != 0 || !S_ISREG(st.st_mode))
    return false;
  /* A format that is no TIFF, which tessera claims by its path (MIRAX's .mrxs, Sakura's
   * database); DICOM is looks_like_dicom's, for OpenSlide 4's ABI only */
  const struct tsr_path_format *format = tsr_format_detect_path(filename);
  if (format)
    return format != &tsr_format_dicom;
  FILE *f = fopen(filename, "rb");
  if (!f)
    return false;
  unsigned char m[4];
  unsigned char sqlite[16];
  bool tiff = fread(m, 1, 4, f) == 4 &&
              ((m[0] == 'I' && m[1] == 'I' && (m[2] == 42 || m[2] == 43) && m[3] == 0) ||
               (m[0] == 'M' && m[1] == 'M' && m[2] == 0 && (m[3] == 42 || m[3] == 43)));
  /* and an SQLite database, which may be a Sakura slide (tessera tells: E_FORMAT if not) */
  bool db = !tiff && memcmp(m, "SQLi", 4) == 0 && fread(sqlite, 1, 12, f) == 12 &&
            memcmp(sqlite, "te format 3", 12) == 0;
  fclose(f);
  return tiff || db;
}

/* OpenSlide 4 also claims DICOM files (128 bytes, then DICM: format/vendor-dicom.c); 3.4
 * reads no DICOM. */
static bool looks_like_dicom(const char *filename) {
  if (TSR_OPENSLIDE_ABI_MAJOR + 3 < 4)
    return false;
  struct stat st;
  if (stat(filename, &st) != 0 || !S_ISREG(st.st_mode))
    return false;
  FILE *f = fopen(filename, "rb");
  if (!f)
    return false;
  unsigned char m[132];
  bool dicom = fread(m, 1, sizeof m, f) == sizeof m && memcmp(m + 128, "DICM", 4) == 0;
  fclose(f);
  return dicom;
}

static bool claimed(const char *filename) {
  return looks_like_tiff(filename) || looks_like_dicom(filename);
}

static tessera_status fill_handle(openslide_t *osr) {
  tessera_slide *s = osr->slide;
  osr->nlevels = tessera_level_count(s);
  osr->levels = tsr_calloc((size_t)osr->nlevels, sizeof *osr->levels);
  if (!osr->levels)
    return TESSERA_E_NOMEM;
  for (int32_t i = 0; i < osr->nlevels; i++) {
    tessera_level_info info;
    info.struct_size = sizeof info;
    tessera_status st = tessera_level_info_get(s, i, &info);
    if (st != TESSERA_OK)
      return st;
    osr->levels[i] = (struct os_level){info.width, info.height, info.downsample,
                                       (uint32_t)info.tile_width, (uint32_t)info.tile_height,
                                       info.alpha == TESSERA_ALPHA_ASSOCIATED};
  }
  tessera_status st =
      tsr_os_properties(s, TSR_OPENSLIDE_ABI_MAJOR + 3, &osr->props, &osr->icc, &osr->icc_size);
  if (st != TESSERA_OK)
    return st;
  osr->property_names = tsr_calloc(osr->props.n + 1, sizeof *osr->property_names);
  size_t nassoc = tessera_associated_image_count(s);
  osr->associated_names = tsr_calloc(nassoc + 1, sizeof *osr->associated_names);
  if (!osr->property_names || !osr->associated_names)
    return TESSERA_E_NOMEM;
  for (size_t i = 0; i < osr->props.n; i++)
    osr->property_names[i] = osr->props.items[i].key;
  size_t n = 0;
  for (size_t i = 0; i < nassoc; i++)
    if (tsr_os_associated_shown(s, tessera_associated_image_name(s, i)))
      osr->associated_names[n++] = tessera_associated_image_name(s, i);
  /* OpenSlide lists associated images sorted by name. */
  for (size_t i = 1; i < n; i++)
    for (size_t j = i; j > 0 && strcmp(osr->associated_names[j - 1], osr->associated_names[j]) > 0;
         j--) {
      const char *t = osr->associated_names[j];
      osr->associated_names[j] = osr->associated_names[j - 1];
      osr->associated_names[j - 1] = t;
    }
  return TESSERA_OK;
}

EXPORT openslide_t *openslide_open(const char *filename) {
  if (!filename || !claimed(filename))
    return NULL;
  pthread_once(&cache_once, default_cache);
  openslide_t *osr = tsr_calloc(1, sizeof *osr);
  if (!osr)
    return NULL;
  atomic_init(&osr->error, NULL);
  tessera_status st = tessera_open(filename, &osr->slide);
  if (st == TESSERA_E_FORMAT) {
    /* OpenSlide (3.4 and 4.0) parses a TIFF's directories before any format claims it, so a
     * TIFF whose structure is malformed (truncated, a directory out of the file) is claimed
     * by none: NULL, not a handle in error state. */
    tsr_free(osr);
    return NULL;
  }
  if (st == TESSERA_OK && tsr_os_unreadable(osr->slide)) {
    fail(osr, tsr_os_unreadable(osr->slide));
    return osr;
  }
  if (st == TESSERA_OK)
    st = fill_handle(osr);
  if (st != TESSERA_OK)
    fail(osr, st == TESSERA_E_NOMEM ? out_of_memory : tessera_error_message());
  return osr;
}

EXPORT void openslide_close(openslide_t *osr) {
  if (!osr)
    return;
  tessera_close(osr->slide);
  tsr_free(osr->levels);
  tsr_props_free(&osr->props);
  tsr_free(osr->property_names);
  tsr_free(osr->associated_names);
  tsr_free(osr->icc);
  char *e = atomic_load(&osr->error);
  if (e != out_of_memory)
    tsr_free(e);
  tsr_free(osr);
}

/* Vendor names as static strings: OpenSlide's detect_vendor returns one that outlives any
 * handle, and tessera's lives only as long as its slide. */
static const char *const vendors[] = {"aperio", "generic-tiff", "hamamatsu", "philips", "ome",
                                       "leica",  "ventana",      "sakura",    "mirax",   "dicom"};

EXPORT const char *openslide_detect_vendor(const char *filename) {
  if (!filename || !claimed(filename))
    return NULL;
  tessera_slide *s;
  if (tessera_open(filename, &s) != TESSERA_OK)
    return NULL;
  const char *found = NULL;
  for (size_t i = 0; i < sizeof vendors / sizeof vendors[0]; i++)
    if (strcmp(vendors[i], tessera_vendor(s)) == 0)
      found = vendors[i];
  tessera_close(s);
  return found;
}

EXPORT int32_t openslide_get_level_count(openslide_t *osr) {
  return dead(osr) ? -1 : osr->nlevels;
}

static bool level_ok(openslide_t *osr, int32_t level) {
  return !dead(osr) && level >= 0 && level < osr->nlevels;
}

EXPORT void openslide_get_level_dimensions(openslide_t *osr, int32_t level, int64_t *w,
                                           int64_t *h) {
  *w = *h = -1;
  if (level_ok(osr, level)) {
    *w = osr->levels[level].w;
    *h = osr->levels[level].h;
  }
}

EXPORT void openslide_get_level0_dimensions(openslide_t *osr, int64_t *w, int64_t *h) {
  openslide_get_level_dimensions(osr, 0, w, h);
}

EXPORT double openslide_get_level_downsample(openslide_t *osr, int32_t level) {
  return level_ok(osr, level) ? osr->levels[level].downsample : -1.0;
}

EXPORT int32_t openslide_get_best_level_for_downsample(openslide_t *osr, double downsample) {
  if (dead(osr))
    return -1;
  if (downsample < osr->levels[0].downsample)
    return 0;
  for (int32_t i = 1; i < osr->nlevels; i++)
    if (downsample < osr->levels[i].downsample)
      return i - 1;
  return osr->nlevels - 1;
}

EXPORT void openslide_read_region(openslide_t *osr, uint32_t *dest, int64_t x, int64_t y,
                                  int32_t level, int64_t w, int64_t h) {
  if (w < 0 || h < 0) {
    char msg[128];
    snprintf(msg, sizeof msg, "negative width (%lld) or negative height (%lld) not allowed",
             (long long)w, (long long)h);
    fail(osr, msg);
    return;
  }
  size_t npx;
  if (__builtin_mul_overflow((size_t)w, (size_t)h, &npx) || npx > SIZE_MAX / 4) {
    fail(osr, "region too large");
    return;
  }
  if (dest)
    memset(dest, 0, npx * 4);
  if (!dest || npx == 0 || !level_ok(osr, level))
    return;
  const struct os_level *l = &osr->levels[level];
  struct tsr_os_grid grid = {l->w, l->h, l->tile_w, l->tile_h, l->downsample};
  tessera_status st =
      tsr_os_read_region(osr->slide, level, &grid, l->associated_alpha, x, y, w, h, dest);
  if (st != TESSERA_OK) {
    fail(osr, st == TESSERA_E_NOMEM ? out_of_memory : tessera_error_message());
    memset(dest, 0, npx * 4); /* no partial result, as OpenSlide */
  }
}

static int compare_key(const void *key, const void *item) {
  return strcmp(key, ((const struct tsr_property *)item)->key);
}

EXPORT const char *const *openslide_get_property_names(openslide_t *osr) {
  return dead(osr) ? no_names : (const char *const *)osr->property_names;
}

EXPORT const char *openslide_get_property_value(openslide_t *osr, const char *name) {
  if (dead(osr) || !name)
    return NULL;
  const struct tsr_property *p =
      bsearch(name, osr->props.items, osr->props.n, sizeof *osr->props.items, compare_key);
  return p ? p->value : NULL;
}

EXPORT const char *const *openslide_get_associated_image_names(openslide_t *osr) {
  return dead(osr) ? no_names : (const char *const *)osr->associated_names;
}

EXPORT void openslide_get_associated_image_dimensions(openslide_t *osr, const char *name,
                                                      int64_t *w, int64_t *h) {
  *w = *h = -1;
  if (dead(osr) || !name || !tsr_os_associated_shown(osr->slide, name) ||
      tessera_associated_image_dimensions(osr->slide, name, w, h) != TESSERA_OK)
    *w = *h = -1;
}

EXPORT void openslide_read_associated_image(openslide_t *osr, const char *name, uint32_t *dest) {
  int64_t w, h;
  openslide_get_associated_image_dimensions(osr, name, &w, &h);
  if (w < 0)
    return;
  size_t npx = (size_t)w * (size_t)h;
  if (dest)
    memset(dest, 0, npx * 4);
  if (!dest)
    return;
  tessera_read_options o;
  tessera_read_options_init(&o);
  o.channels = 4;
  o.fill = 0;
  if (tessera_read_associated_image(osr->slide, name, &o, (uint8_t *)dest, npx * 4) !=
      TESSERA_OK) {
    fail(osr, tessera_error_message());
    memset(dest, 0, npx * 4);
    return;
  }
  tsr_os_rgba_to_argb(dest, (size_t)w, w, h);
}

EXPORT const char *openslide_get_version(void) {
  return OPENSLIDE_VERSION "+tessera-" TESSERA_VERSION_STRING;
}

#if TSR_OPENSLIDE_ABI_MAJOR >= 1

EXPORT int64_t openslide_get_icc_profile_size(openslide_t *osr) {
  return dead(osr) ? -1 : (int64_t)osr->icc_size;
}

EXPORT void openslide_read_icc_profile(openslide_t *osr, void *dest) {
  if (dead(osr)) {
    memset(dest, 0, osr->icc_size);
    return;
  }
  if (osr->icc_size)
    memcpy(dest, osr->icc, osr->icc_size);
}

/* tessera reads no ICC profile of an associated image (neither does OpenSlide 4.0 for the
 * formats tessera reads). */
EXPORT int64_t openslide_get_associated_image_icc_profile_size(openslide_t *osr,
                                                               const char *name) {
  int64_t w, h;
  openslide_get_associated_image_dimensions(osr, name, &w, &h);
  return w < 0 ? -1 : 0;
}

EXPORT void openslide_read_associated_image_icc_profile(openslide_t *osr, const char *name,
                                                        void *dest) {
  (void)osr;
  (void)name;
  (void)dest;
}

EXPORT openslide_cache_t *openslide_cache_create(size_t capacity) {
  openslide_cache_t *c = tsr_calloc(1, sizeof *c);
  if (c) /* tessera sizes its cache in MiB: round up, and keep at least one */
    c->capacity_mib = capacity == 0 ? 1 : ((uint64_t)capacity + (1u << 20) - 1) >> 20;
  return c;
}

/* The capacity of the process's cache now, set under cache_lock so that two threads giving
 * slides caches of different sizes configure it once each, in order. */
static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t cache_mib = DEFAULT_CACHE_MIB;

EXPORT void openslide_set_cache(openslide_t *osr, openslide_cache_t *cache) {
  if (dead(osr) || !cache)
    return;
  pthread_once(&cache_once, default_cache);
  pthread_mutex_lock(&cache_lock);
  if (cache->capacity_mib != cache_mib) {
    configure_cache(cache->capacity_mib);
    cache_mib = cache->capacity_mib;
  }
  pthread_mutex_unlock(&cache_lock);
}

EXPORT void openslide_cache_release(openslide_cache_t *cache) { tsr_free(cache); }

#else /* OpenSlide 3.4's deprecated functions */

EXPORT bool openslide_can_open(const char *filename) {
  openslide_t *osr = openslide_open(filename);
  bool ok = osr && !dead(osr);
  openslide_close(osr);
  return ok;
}

EXPORT int32_t openslide_get_layer_count(openslide_t *osr) {
  return openslide_get_level_count(osr);
}

EXPORT void openslide_get_layer0_dimensions(openslide_t *osr, int64_t *w, int64_t *h) {
  openslide_get_level0_dimensions(osr, w, h);
}

EXPORT void openslide_get_layer_dimensions(openslide_t *osr, int32_t level, int64_t *w,
                                           int64_t *h) {
  openslide_get_level_dimensions(osr, level, w, h);
}

EXPORT double openslide_get_layer_downsample(openslide_t *osr, int32_t level) {
  return openslide_get_level_downsample(osr, level);
}

EXPORT int32_t openslide_get_best_layer_for_downsample(openslide_t *osr, double downsample) {
  return openslide_get_best_level_for_downsample(osr, downsample);
}

EXPORT const char *openslide_get_comment(openslide_t *osr) {
  return openslide_get_property_value(osr, "openslide.comment");
}

/* Never implemented by OpenSlide either: a hint that does nothing. */
EXPORT int openslide_give_prefetch_hint(openslide_t *osr, int64_t x, int64_t y, int32_t level,
                                        int64_t w, int64_t h) {
  (void)osr, (void)x, (void)y, (void)level, (void)w, (void)h;
  return 0;
}

EXPORT void openslide_cancel_prefetch_hint(openslide_t *osr, int prefetch_id) {
  (void)osr, (void)prefetch_id;
}

#endif
