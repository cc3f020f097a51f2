/* Patch grids at a physical resolution (tessera.h, "Patch grids"; docs/RESOLUTION.md): the
 * level and scale for an mpp, the grid's positions, and each patch's tissue fraction from a
 * summed-area table of the mask. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "abi.h"
#include "alloc.h"
#include "error.h"
#include "mpp.h"
#include "slide_internal.h"

#define MPP_SLACK 0.01 /* 0.499 means 0.5: levels and scales within 1 % */
#define MAX_PATCHES ((uint64_t)1 << 32)

double tsr_slide_mpp(const tessera_slide *s) {
  const char *x = tessera_property_value(s, "tessera.mpp-x");
  const char *y = tessera_property_value(s, "tessera.mpp-y");
  if (!x || !y)
    return 0.0;
  double vx = strtod(x, NULL), vy = strtod(y, NULL);
  return vx > 0.0 && vy > 0.0 && isfinite(vx) && isfinite(vy) ? (vx + vy) / 2.0 : 0.0;
}

TESSERA_API tessera_status tessera_level_for_mpp(const tessera_slide *s, double mpp,
                                                 int32_t *level, double *scale) {
  if (!s || !level || !scale)
    return tsr_error(TESSERA_E_ARGUMENT, "NULL slide, level or scale");
  if (!(mpp > 0.0 && isfinite(mpp)))
    return tsr_error(TESSERA_E_ARGUMENT, "mpp must be a number > 0, not %g", mpp);
  double mpp0 = tsr_slide_mpp(s);
  if (mpp0 <= 0.0)
    return tsr_error(TESSERA_E_ARGUMENT,
                     "the slide does not say its microns per pixel (no tessera.mpp-x/y): read "
                     "at %g um/px needs it; give a level or downsample instead",
                     mpp);
  int32_t best = 0;
  for (int32_t i = 1; i < s->nlevels; i++)
    if (mpp0 * s->levels[i].downsample <= mpp * (1.0 + MPP_SLACK))
      best = i;
  double sc = mpp / (mpp0 * s->levels[best].downsample);
  double whole = floor(sc + 0.5);
  if (whole >= 1.0 && fabs(sc - whole) <= MPP_SLACK * sc)
    sc = whole;
  if (sc < 1.0 / 1024.0 || sc > 1024.0)
    return tsr_error(TESSERA_E_ARGUMENT,
                     "%g um/px is %g pixels of level %d (%g um/px) a pixel: not within 1/1024 "
                     ".. 1024",
                     mpp, sc, best, mpp0 * s->levels[best].downsample);
  *level = best;
  *scale = sc;
  return TESSERA_OK;
}

TESSERA_API void tessera_grid_options_init_sized(tessera_grid_options *o, size_t size) {
  static const tessera_grid_options defaults = {.struct_size = sizeof defaults};
  tsr_abi_init(o, size, &defaults, sizeof defaults);
}

TESSERA_API void tessera_grid_free(tessera_grid *g) {
  if (!g)
    return;
  tsr_free(g->locations);
  tsr_free(g->tissue);
  tsr_free(g);
}

/* The smallest level-0 coordinate v with floor(v / d) == lv (the nearest when rounding leaves
 * none), as the batch reader maps it back. */
static int64_t to_level0(int64_t lv, double d) {
  if (d == 1.0)
    return lv;
  int64_t v = (int64_t)ceil((double)lv * d);
  for (int i = 0; i < 4 && floor((double)v / d) < (double)lv; i++)
    v++;
  for (int i = 0; i < 4 && floor((double)(v - 1) / d) >= (double)lv; i++)
    v--;
  return v;
}

/* First mask index whose pixel centre (i + 0.5) * md is >= v (level-0), clamped to [0, n]. */
static int64_t first_centre_at(double v, double md, int64_t n) {
  double i = ceil(v / md - 0.5);
  return i < 0 ? 0 : i > (double)n ? n : (int64_t)i;
}

/* The share of tissue of level-0 rectangle [x0, x1) x [y0, y1) by the mask (sat: its
 * (w + 1) x (h + 1) summed-area table of tissue pixels). */
static float fraction(const tessera_mask *m, const uint32_t *sat, double x0, double y0, double x1,
                      double y1) {
  int64_t w = m->width, h = m->height;
  int64_t i0 = first_centre_at(x0, m->downsample, w), i1 = first_centre_at(x1, m->downsample, w);
  int64_t j0 = first_centre_at(y0, m->downsample, h), j1 = first_centre_at(y1, m->downsample, h);
  if (i1 <= i0 || j1 <= j0) { /* no centre inside: the pixel under the patch's centre */
    int64_t i = (int64_t)floor((x0 + x1) / 2.0 / m->downsample);
    int64_t j = (int64_t)floor((y0 + y1) / 2.0 / m->downsample);
    if (i < 0 || j < 0 || i >= w || j >= h)
      return 0.0f;
    return m->data[(size_t)j * (size_t)w + (size_t)i] ? 1.0f : 0.0f;
  }
  size_t W = (size_t)w + 1;
  uint64_t t = (uint64_t)sat[(size_t)j1 * W + (size_t)i1] - sat[(size_t)j0 * W + (size_t)i1] -
               sat[(size_t)j1 * W + (size_t)i0] + sat[(size_t)j0 * W + (size_t)i0];
  return (float)((double)t / (double)((i1 - i0) * (j1 - j0)));
}

TESSERA_API tessera_status tessera_patch_grid(tessera_slide *s, const tessera_grid_options *options,
                                              tessera_grid **out) {
  if (out)
    *out = NULL;
  tessera_grid_options o;
  tessera_grid_options_init(&o);
  tessera_status st = tsr_abi_copy_in(&o, sizeof o, options, "grid options");
  if (st != TESSERA_OK)
    return st;
  if (!s || !out)
    return tsr_error(TESSERA_E_ARGUMENT, "NULL slide or grid");
  if (o.width < 1 || o.height < 1 || o.width > ((int64_t)1 << 24) || o.height > ((int64_t)1 << 24))
    return tsr_error(TESSERA_E_ARGUMENT, "patch size %lldx%lld is not between 1 and 2^24",
                     (long long)o.width, (long long)o.height);
  if (o.stride_x < 0 || o.stride_y < 0 || o.stride_x > ((int64_t)1 << 24) ||
      o.stride_y > ((int64_t)1 << 24))
    return tsr_error(TESSERA_E_ARGUMENT, "stride must be 0 (the patch size) .. 2^24");
  if (!(o.min_tissue >= 0.0 && o.min_tissue <= 1.0))
    return tsr_error(TESSERA_E_ARGUMENT, "min_tissue must be within 0 .. 1, not %g",
                     o.min_tissue);
  if (!(o.mpp >= 0.0 && isfinite(o.mpp)))
    return tsr_error(TESSERA_E_ARGUMENT, "mpp must be >= 0, not %g", o.mpp);
  int32_t level = o.level;
  double scale = 1.0;
  if (o.mpp > 0.0) {
    if ((st = tessera_level_for_mpp(s, o.mpp, &level, &scale)) != TESSERA_OK)
      return st;
  } else if (level < 0 || level >= s->nlevels) {
    return tsr_error(TESSERA_E_ARGUMENT, "level %d does not exist (the slide has %d)", level,
                     s->nlevels);
  }
  const struct tsr_level *lv = &s->levels[level];
  int64_t sx = o.stride_x ? o.stride_x : o.width, sy = o.stride_y ? o.stride_y : o.height;
  int64_t rw = (int64_t)ceil((double)o.width * scale - 1e-9);
  int64_t rh = (int64_t)ceil((double)o.height * scale - 1e-9);
  double step_x = (double)sx * scale, step_y = (double)sy * scale;
  int64_t across = rw > lv->width ? 0 : (int64_t)floor((double)(lv->width - rw) / step_x) + 1;
  int64_t down = rh > lv->height ? 0 : (int64_t)floor((double)(lv->height - rh) / step_y) + 1;
  /* floor(k * step) may land one past the last fitting k when step is not whole. */
  while (across > 0 && (int64_t)floor((double)(across - 1) * step_x) + rw > lv->width)
    across--;
  while (down > 0 && (int64_t)floor((double)(down - 1) * step_y) + rh > lv->height)
    down--;
  /* A location and a fraction per patch: bounded by max_read_bytes, as any read. */
  uint64_t patches = (uint64_t)across * (uint64_t)down;
  if (patches > MAX_PATCHES ||
      patches * (2 * sizeof(int64_t) + sizeof(float)) > s->limits.max_read_bytes)
    return tsr_error(TESSERA_E_LIMIT,
                     "a grid of %lld x %lld patches is over the limit of %llu bytes for one read "
                     "(max_read_bytes)",
                     (long long)across, (long long)down,
                     (unsigned long long)s->limits.max_read_bytes);
  tessera_mask *m = NULL;
  if ((st = tessera_tissue_mask(s, o.tissue, &m)) != TESSERA_OK)
    return tsr_error_prefix(st, "the grid's tissue mask: ");
  size_t n = (size_t)across * (size_t)down;
  size_t W = (size_t)m->width + 1;
  uint32_t *sat = tsr_calloc(W * ((size_t)m->height + 1), sizeof *sat);
  tessera_grid *g = tsr_calloc(1, sizeof *g);
  if (g) {
    g->locations = tsr_malloc((n ? n : 1) * 2 * sizeof *g->locations);
    g->tissue = tsr_malloc((n ? n : 1) * sizeof *g->tissue);
  }
  if (!sat || !g || !g->locations || !g->tissue) {
    st = tsr_error(TESSERA_E_NOMEM, "out of memory for a grid of %zu patches", n);
    goto done;
  }
  for (int64_t j = 0; j < m->height; j++) {
    uint32_t row = 0;
    for (int64_t i = 0; i < m->width; i++) {
      row += m->data[(size_t)j * (size_t)m->width + (size_t)i] != 0;
      sat[(size_t)(j + 1) * W + (size_t)(i + 1)] = sat[(size_t)j * W + (size_t)(i + 1)] + row;
    }
  }
  double d = lv->downsample;
  size_t kept = 0;
  for (int64_t j = 0; j < down; j++) {
    int64_t ly = (int64_t)floor((double)j * step_y);
    int64_t y0 = to_level0(ly, d);
    for (int64_t i = 0; i < across; i++) {
      int64_t lx = (int64_t)floor((double)i * step_x);
      int64_t x0 = to_level0(lx, d);
      float f = fraction(m, sat, (double)lx * d, (double)ly * d, (double)(lx + rw) * d,
                         (double)(ly + rh) * d);
      if ((double)f < o.min_tissue)
        continue;
      g->locations[2 * kept] = x0;
      g->locations[2 * kept + 1] = y0;
      g->tissue[kept] = f;
      kept++;
    }
  }
  g->count = kept;
  g->level = level;
  g->read_width = rw;
  g->read_height = rh;
  g->width = o.width;
  g->height = o.height;
  g->scale = scale;
  double mpp0 = tsr_slide_mpp(s);
  g->mpp = mpp0 > 0.0 ? mpp0 * d * scale : 0.0;
  g->stride_x = sx;
  g->stride_y = sy;
  g->mask_downsample = m->downsample;
  *out = g;
  g = NULL;
done:
  tessera_grid_free(g);
  tsr_free(sat);
  tessera_mask_free(m);
  return st;
}
