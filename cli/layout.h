/* Where the patches of a benchmark workload lie. `tessera bench` and bench/compare both build
 * this file, so the same arguments give the same locations in both, on every platform: the
 * random layout draws from splitmix64, never from the C library's rand(). It depends on the C
 * library alone. */
#ifndef TESSERA_LAYOUT_H
#define TESSERA_LAYOUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum layout_kind {
  LAYOUT_GRID,   /* patches side by side on a W x H grid, row-major */
  LAYOUT_RANDOM, /* uniformly random positions, seeded */
  LAYOUT_SLIDING /* windows every stride pixels, row after row */
} layout_kind;

/* The kind named "grid", "random" or "sliding"; false for any other name. */
bool layout_kind_parse(const char *name, layout_kind *out);
const char *layout_kind_name(layout_kind kind);

/* A workload on one level. Every patch of every layout lies wholly inside the level. */
typedef struct layout_spec {
  layout_kind kind;
  int64_t level_width, level_height; /* pixels of the level */
  double downsample;                 /* tessera_level_info's: level-0 pixels per level pixel */
  int64_t patch_width, patch_height; /* pixels of the level, >= 1 */
  int64_t stride_x, stride_y;        /* sliding only, pixels of the level; 0 means half the
                                        patch side (at least 1) */
  uint64_t count;                    /* patches wanted; 0 means all of them (not for random) */
  uint64_t seed;                     /* random only */
} layout_spec;

/* The steps between neighbouring patches of a grid or sliding layout, in pixels of the level:
 * the patch size for a grid, the stride (or its default) for a sliding window. */
void layout_steps(const layout_spec *spec, int64_t *sx, int64_t *sy);

/* How many patches the grid or sliding layout of spec holds (count ignored); 0 when the
 * patch is larger than the level. UINT64_MAX for random, which never runs out. */
uint64_t layout_capacity(const layout_spec *spec);

/* Makes the locations: *out_xy gets 2n int64 values, (x, y) top-left corners in level-0
 * pixels, allocated with malloc (the caller frees it), and *out_n gets n. Each corner maps
 * back onto its level position exactly as tessera maps it (floor(x / downsample)). On failure
 * returns false with a one-line reason in why (no trailing period). */
bool layout_generate(const layout_spec *spec, int64_t **out_xy, size_t *out_n, char *why,
                     size_t why_size);

/* Formats a one-line reason into why (why_size bytes) and returns false, so a failure reads
 * `return layout_fail(why, why_size, "...", ...);`. bench/ uses it for its own reasons too. */
bool layout_fail(char *why, size_t why_size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The smallest level-0 coordinate v with floor(v / downsample) == level_v (level_v * downsample
 * when that is a whole number); the nearest one when rounding leaves none. */
int64_t layout_to_level0(int64_t level_v, double downsample);

/* The next value of the splitmix64 sequence whose state is *state (Steele, Lea and Flood,
 * "Fast splittable pseudorandom number generators", 2014). */
uint64_t layout_splitmix64(uint64_t *state);

#endif
