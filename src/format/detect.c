#include "format/detect.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "error.h"

static bool starts_with(const char *s, const char *prefix) {
  return s && strncmp(s, prefix, strlen(prefix)) == 0;
}

static void detect_vendor(const struct tsr_dir *first, struct tsr_layout *out) {
  out->vendor = "generic-tiff";
  out->background = 0;
  if (starts_with(first->description, "Aperio")) {
    out->vendor = "aperio";
    out->background = 255;
  } else if (starts_with(first->make, "Hamamatsu")) {
    out->vendor = "hamamatsu";
  } else if (starts_with(first->software, "Philips")) {
    out->vendor = "philips";
    out->background = 255;
  }
}

/* A reduced copy of the base image keeps its aspect ratio up to rounding at each halving;
 * a label or macro photograph does not. */
static bool same_aspect(const struct tsr_level *base, const struct tsr_level *lv) {
  double rw = (double)base->width / (double)lv->width;
  double rh = (double)base->height / (double)lv->height;
  double h_expected = (double)base->height / rw, w_expected = (double)base->width / rh;
  return fabs((double)lv->height - h_expected) <= 1.0 + 0.02 * (double)lv->height ||
         fabs((double)lv->width - w_expected) <= 1.0 + 0.02 * (double)lv->width;
}

static bool is_level(const struct tsr_dirs *dirs, size_t i) {
  const struct tsr_level *base = &dirs->dir[0].level, *lv = &dirs->dir[i].level;
  if (i == 0)
    return true;
  if (dirs->dir[i].parent > 0)
    return false; /* SubIFDs of another page belong to that page */
  /* Smaller on one side at least: a 300x1 image has a 150x1 level. */
  bool smaller = lv->width <= base->width && lv->height <= base->height &&
                 (lv->width < base->width || lv->height < base->height);
  return lv->tiled == base->tiled && smaller && same_aspect(base, lv);
}

static int cmp_levels(const void *a, const void *b, void *ctx) {
  const struct tsr_dirs *dirs = ctx;
  const struct tsr_level *la = &dirs->dir[*(const size_t *)a].level;
  const struct tsr_level *lb = &dirs->dir[*(const size_t *)b].level;
  if (la->width != lb->width)
    return la->width > lb->width ? -1 : 1;
  return *(const size_t *)a < *(const size_t *)b ? -1 : 1;
}

static void add_associated(struct tsr_layout *out, size_t dir, const char *name) {
  if (out->nassociated < TSR_MAX_ASSOCIATED) {
    out->associated[out->nassociated].dir = dir;
    out->associated[out->nassociated].name = name;
    out->nassociated++;
  }
}

/* NDPI marks its macro photograph with a source lens of -1 (and its map with -2, which
 * OpenSlide does not list; the vendor issue decides whether we do). */
static void name_ndpi_associated(const struct tsr_dirs *dirs, const bool *level,
                                 struct tsr_layout *out) {
  for (size_t i = 1; i < dirs->n; i++)
    if (!level[i] && dirs->dir[i].has_ndpi_source_lens && dirs->dir[i].ndpi_source_lens == -1.0)
      add_associated(out, i, "macro");
}

static void name_associated(const struct tsr_dirs *dirs, const bool *level,
                            struct tsr_layout *out) {
  if (strcmp(out->vendor, "hamamatsu") == 0)
    name_ndpi_associated(dirs, level, out);
  if (strcmp(out->vendor, "aperio") != 0)
    return;
  for (size_t i = 1; i < dirs->n; i++) {
    const struct tsr_dir *d = &dirs->dir[i];
    const char *name = NULL;
    if (level[i] || d->parent >= 0)
      continue;
    if (i == 1 && !d->level.tiled)
      name = "thumbnail";
    else if (d->description && strstr(d->description, "label"))
      name = "label";
    else if (d->description && strstr(d->description, "macro"))
      name = "macro";
    if (name)
      add_associated(out, i, name);
  }
}

tessera_status tsr_format_detect(const struct tsr_dirs *dirs, struct tsr_layout *out) {
  memset(out, 0, sizeof *out);
  if (dirs->n == 0)
    return tsr_error(TESSERA_E_FORMAT, "the file has no image directory");
  bool *level = tsr_calloc(dirs->n, sizeof *level);
  out->level_dirs = tsr_calloc(dirs->n, sizeof *out->level_dirs);
  if (!level || !out->level_dirs) {
    tsr_free(level);
    tsr_layout_free(out);
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  }
  for (size_t i = 0; i < dirs->n; i++)
    if ((level[i] = is_level(dirs, i)))
      out->level_dirs[out->nlevels++] = i;
  qsort_r(out->level_dirs, (size_t)out->nlevels, sizeof *out->level_dirs, cmp_levels, (void *)dirs);
  /* Two directories of one size (a SubIFD copy of a chain level) make one level. */
  int32_t kept = 0;
  for (int32_t i = 0; i < out->nlevels; i++) {
    const struct tsr_level *lv = &dirs->dir[out->level_dirs[i]].level;
    if (kept > 0) {
      const struct tsr_level *prev = &dirs->dir[out->level_dirs[kept - 1]].level;
      if (prev->width == lv->width && prev->height == lv->height) {
        level[out->level_dirs[i]] = false;
        continue;
      }
    }
    out->level_dirs[kept++] = out->level_dirs[i];
  }
  out->nlevels = kept;
  detect_vendor(&dirs->dir[0], out);
  name_associated(dirs, level, out);
  tsr_free(level);
  return TESSERA_OK;
}

void tsr_layout_free(struct tsr_layout *layout) {
  tsr_free(layout->level_dirs);
  layout->level_dirs = NULL;
}
