/*
 * tessera's OpenSlide compatibility library (libtessera-openslide): OpenSlide's C API, as
 * OpenSlide 4.0 declares it, answered by tessera. Built twice from one source: as
 * libopenslide.so.1 (OpenSlide 4.0's ABI: this header) and as libopenslide.so.0 (OpenSlide
 * 3.4's ABI, which has no cache or ICC functions and adds the deprecated "layer" functions,
 * openslide_can_open, openslide_get_comment and the prefetch hints). Programs built against
 * OpenSlide's own header run on either unchanged; this header is for programs that want to
 * build against the library itself.
 *
 * Semantics are OpenSlide's: an error is sticky (the first one is kept, and every later call
 * on that handle returns its "no value" answer), read_region writes premultiplied ARGB with
 * 0 (transparent) outside the slide, and the openslide.* properties are computed as OpenSlide
 * computes them. Every function except openslide_close may be called on one handle from many
 * threads at once.
 *
 * What differs from OpenSlide (see README.md, "OpenSlide's API over tessera"): one decoded-tile
 * cache per process (openslide_set_cache sizes it). Regions of levels above 0 whose origin
 * falls between two pixels of the level are resampled as OpenSlide resamples them, to the byte.
 */
#ifndef TESSERA_OPENSLIDE_H
#define TESSERA_OPENSLIDE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _openslide openslide_t;
typedef struct _openslide_cache openslide_cache_t;

/* The vendor of a file tessera opens ("aperio", "generic-tiff", "hamamatsu", ...), or NULL. */
const char *openslide_detect_vendor(const char *filename);

/* A handle, or NULL for a file no format claims (not a TIFF, not there, or a TIFF whose
 * structure is malformed: truncated, a directory outside the file). A TIFF that is well formed
 * but fails to open (e.g. a compression tessera does not decode) gives a handle in error
 * state: openslide_get_error says why. */
openslide_t *openslide_open(const char *filename);

int32_t openslide_get_level_count(openslide_t *osr);
void openslide_get_level0_dimensions(openslide_t *osr, int64_t *w, int64_t *h);
void openslide_get_level_dimensions(openslide_t *osr, int32_t level, int64_t *w, int64_t *h);
double openslide_get_level_downsample(openslide_t *osr, int32_t level);
int32_t openslide_get_best_level_for_downsample(openslide_t *osr, double downsample);

/* w x h premultiplied ARGB pixels of `level`, whose top-left corner is (x, y) in level-0
 * pixels, into dest (w * h * 4 bytes). Outside the slide: 0. On error dest is all 0 and the
 * handle is in error state. */
void openslide_read_region(openslide_t *osr, uint32_t *dest, int64_t x, int64_t y, int32_t level,
                           int64_t w, int64_t h);

/* The slide's ICC profile (0 bytes when it has none). */
int64_t openslide_get_icc_profile_size(openslide_t *osr);
void openslide_read_icc_profile(openslide_t *osr, void *dest);

/* NULL-terminated, sorted; lives as long as the handle. */
const char *const *openslide_get_property_names(openslide_t *osr);
const char *openslide_get_property_value(openslide_t *osr, const char *name);

const char *const *openslide_get_associated_image_names(openslide_t *osr);
void openslide_get_associated_image_dimensions(openslide_t *osr, const char *name, int64_t *w,
                                               int64_t *h);
void openslide_read_associated_image(openslide_t *osr, const char *name, uint32_t *dest);
int64_t openslide_get_associated_image_icc_profile_size(openslide_t *osr, const char *name);
void openslide_read_associated_image_icc_profile(openslide_t *osr, const char *name, void *dest);

/* NULL, or the message of the handle's first error. */
const char *openslide_get_error(openslide_t *osr);

/* Caches. tessera keeps one decoded-tile cache per process: openslide_set_cache gives the
 * process's cache the capacity of `cache` (dropping the tiles it held when that changes). */
openslide_cache_t *openslide_cache_create(size_t capacity);
void openslide_set_cache(openslide_t *osr, openslide_cache_t *cache);
void openslide_cache_release(openslide_cache_t *cache);

void openslide_close(openslide_t *osr);

/* OpenSlide's version whose API this is, with tessera's: "4.0.0+tessera-X.Y.Z". */
const char *openslide_get_version(void);

#define OPENSLIDE_PROPERTY_NAME_COMMENT "openslide.comment"
#define OPENSLIDE_PROPERTY_NAME_VENDOR "openslide.vendor"
#define OPENSLIDE_PROPERTY_NAME_QUICKHASH1 "openslide.quickhash-1"
#define OPENSLIDE_PROPERTY_NAME_BACKGROUND_COLOR "openslide.background-color"
#define OPENSLIDE_PROPERTY_NAME_OBJECTIVE_POWER "openslide.objective-power"
#define OPENSLIDE_PROPERTY_NAME_MPP_X "openslide.mpp-x"
#define OPENSLIDE_PROPERTY_NAME_MPP_Y "openslide.mpp-y"
#define OPENSLIDE_PROPERTY_NAME_BOUNDS_X "openslide.bounds-x"
#define OPENSLIDE_PROPERTY_NAME_BOUNDS_Y "openslide.bounds-y"
#define OPENSLIDE_PROPERTY_NAME_BOUNDS_WIDTH "openslide.bounds-width"
#define OPENSLIDE_PROPERTY_NAME_BOUNDS_HEIGHT "openslide.bounds-height"
#define OPENSLIDE_PROPERTY_NAME_ICC_SIZE "openslide.icc-size"

#ifdef __cplusplus
}
#endif

#endif
