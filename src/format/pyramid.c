/* What the vendors share: finding the pyramid among the directories, and the properties
 * every TIFF can give. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "error.h"
#include "format/format.h"

bool tsr_starts_with(const char *s, const char *prefix) {
  return s && strncmp(s, prefix, strlen(prefix)) == 0;
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

tessera_status tsr_findings_pyramid(const struct tsr_dirs *dirs, struct tsr_findings *out) {
  out->level_dirs = tsr_calloc(dirs->n, sizeof *out->level_dirs);
  bool *level = out->is_level = tsr_calloc(dirs->n, sizeof *out->is_level);
  if (!out->level_dirs || !level)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  out->nlevels = 0;
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
  return TESSERA_OK;
}

void tsr_findings_add_associated(struct tsr_findings *out, size_t dir, const char *name) {
  for (size_t i = 0; i < out->nassociated; i++)
    if (strcmp(out->associated[i].name, name) == 0)
      return; /* the first of a name wins */
  if (out->nassociated < TSR_MAX_ASSOCIATED) {
    out->associated[out->nassociated].dir = dir;
    out->associated[out->nassociated].name = name;
    out->nassociated++;
  }
}

void tsr_findings_common_props(const struct tsr_dirs *dirs, struct tsr_findings *out) {
  tsr_props_add_string(&out->props, "tessera.comment", dirs->dir[0].description);
}

void tsr_findings_resolution_mpp(const struct tsr_dirs *dirs, struct tsr_findings *out,
                                 bool inches) {
  const struct tsr_dir *d0 = &dirs->dir[0];
  if (!d0->has_resolution || !(d0->xres > 0) || !(d0->yres > 0))
    return;
  /* Micrometres per pixel from pixels per centimetre (or inch). */
  double um_per_unit;
  if (d0->resolution_unit == 3)
    um_per_unit = 10000.0;
  else if (d0->resolution_unit == 2 && inches)
    um_per_unit = 25400.0;
  else
    return;
  tsr_props_add_double(&out->props, "tessera.mpp-x", um_per_unit / (double)d0->xres);
  tsr_props_add_double(&out->props, "tessera.mpp-y", um_per_unit / (double)d0->yres);
}
