/* Patch layouts: grid, random and sliding window, as level-0 corners. Positions are chosen in
 * pixels of the level, where the layouts are defined, and only then mapped to level 0. */
#include "layout.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const kind_names[] = {"grid", "random", "sliding"};

bool layout_kind_parse(const char *name, layout_kind *out) {
  for (size_t i = 0; i < sizeof kind_names / sizeof kind_names[0]; i++) {
    if (strcmp(name, kind_names[i]) == 0) {
      *out = (layout_kind)i;
      return true;
    }
  }
  return false;
}

const char *layout_kind_name(layout_kind kind) {
  return (size_t)kind < sizeof kind_names / sizeof kind_names[0] ? kind_names[kind] : "?";
}

uint64_t layout_splitmix64(uint64_t *state) {
  uint64_t z = (*state += UINT64_C(0x9e3779b97f4a7c15));
  z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
  return z ^ (z >> 31);
}

/* Uniform in [0, range), range >= 1, without the bias of a bare modulo: draws below
 * 2^64 mod range are thrown away, so every residue is equally likely. */
static uint64_t uniform_below(uint64_t *state, uint64_t range) {
  uint64_t threshold = (0 - range) % range;
  for (;;) {
    uint64_t r = layout_splitmix64(state);
    if (r >= threshold)
      return r % range;
  }
}

static int64_t level_of(int64_t v0, double downsample) {
  return (int64_t)floor((double)v0 / downsample);
}

int64_t layout_to_level0(int64_t level_v, double downsample) {
  if (downsample == 1.0)
    return level_v;
  /* The product is exact for the usual power-of-two downsamples; otherwise rounding may put
   * it one off, which the two loops mend. They stop after a few steps in any case, so a
   * downsample below 1 (some levels cannot be hit at all) still ends. */
  int64_t v = (int64_t)ceil((double)level_v * downsample);
  for (int i = 0; i < 4 && level_of(v, downsample) < level_v; i++)
    v++;
  for (int i = 0; i < 4 && level_of(v - 1, downsample) >= level_v; i++)
    v--;
  return v;
}

/* Windows of side `patch` every `step` pixels that fit in `extent`. */
static uint64_t positions(int64_t extent, int64_t patch, int64_t step) {
  return extent < patch ? 0 : (uint64_t)((extent - patch) / step) + 1;
}

static int64_t step_or_half(int64_t step, int64_t patch) {
  if (step > 0)
    return step;
  return patch / 2 > 0 ? patch / 2 : 1;
}

void layout_steps(const layout_spec *spec, int64_t *sx, int64_t *sy) {
  if (spec->kind == LAYOUT_SLIDING) {
    *sx = step_or_half(spec->stride_x, spec->patch_width);
    *sy = step_or_half(spec->stride_y, spec->patch_height);
  } else {
    *sx = spec->patch_width;
    *sy = spec->patch_height;
  }
}

uint64_t layout_capacity(const layout_spec *spec) {
  if (spec->kind == LAYOUT_RANDOM)
    return UINT64_MAX;
  int64_t sx, sy;
  layout_steps(spec, &sx, &sy);
  uint64_t across = positions(spec->level_width, spec->patch_width, sx);
  uint64_t down = positions(spec->level_height, spec->patch_height, sy);
  uint64_t total;
  return __builtin_mul_overflow(across, down, &total) ? UINT64_MAX : total;
}

bool layout_fail(char *why, size_t why_size, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, why_size, fmt, ap);
  va_end(ap);
  return false;
}

/* How many patches to make, or 0 after writing why there is none. */
static uint64_t patch_count(const layout_spec *spec, char *why, size_t why_size) {
  const char *name = layout_kind_name(spec->kind);
  if (spec->patch_width > spec->level_width || spec->patch_height > spec->level_height) {
    layout_fail(why, why_size,
                "a %" PRId64 " x %" PRId64 " patch does not fit in the %" PRId64 " x %" PRId64
                " level",
                spec->patch_width, spec->patch_height, spec->level_width, spec->level_height);
    return 0;
  }
  uint64_t capacity = layout_capacity(spec);
  if (spec->count == 0) {
    if (spec->kind == LAYOUT_RANDOM)
      layout_fail(why, why_size, "the random layout needs a count of patches");
    return spec->kind == LAYOUT_RANDOM ? 0 : capacity;
  }
  if (spec->count > capacity) {
    layout_fail(why, why_size,
                "%" PRIu64 " patches asked for, but the %s layout holds only %" PRIu64, spec->count,
                name, capacity);
    return 0;
  }
  return spec->count;
}

bool layout_generate(const layout_spec *spec, int64_t **out_xy, size_t *out_n, char *why,
                     size_t why_size) {
  *out_xy = NULL;
  *out_n = 0;
  if (spec->level_width < 1 || spec->level_height < 1 || spec->patch_width < 1 ||
      spec->patch_height < 1 || !(spec->downsample > 0.0))
    return layout_fail(why, why_size, "the level or the patch size is empty");
  uint64_t n = patch_count(spec, why, why_size);
  if (n == 0)
    return false;
  size_t bytes;
  int64_t *xy = NULL;
  if (n <= SIZE_MAX && !__builtin_mul_overflow((size_t)n, 2 * sizeof *xy, &bytes))
    xy = malloc(bytes);
  if (!xy)
    return layout_fail(why, why_size, "out of memory for %" PRIu64 " locations", n);

  int64_t sx, sy;
  layout_steps(spec, &sx, &sy);
  uint64_t across = positions(spec->level_width, spec->patch_width, sx);
  uint64_t state = spec->seed;
  uint64_t range_x = (uint64_t)(spec->level_width - spec->patch_width) + 1;
  uint64_t range_y = (uint64_t)(spec->level_height - spec->patch_height) + 1;
  for (uint64_t i = 0; i < n; i++) {
    int64_t lx, ly;
    if (spec->kind == LAYOUT_RANDOM) {
      lx = (int64_t)uniform_below(&state, range_x);
      ly = (int64_t)uniform_below(&state, range_y);
    } else {
      lx = (int64_t)(i % across) * sx;
      ly = (int64_t)(i / across) * sy;
    }
    xy[2 * i] = layout_to_level0(lx, spec->downsample);
    xy[2 * i + 1] = layout_to_level0(ly, spec->downsample);
  }
  *out_xy = xy;
  *out_n = (size_t)n;
  return true;
}
