/* MIRAX (3DHistech .mrxs): no TIFF, but a folder beside the .mrxs file (of the same name less
 * the extension) holding Slidedat.ini (the layout: camera images across and down, each zoom
 * level's image size, overlap, format, resolution, the data files), Index.dat (where each
 * stored image's bytes lie, by level) and Data*.dat (the images' bytes). Read as OpenSlide
 * 3.4.1 reads it, so that the pixels are OpenSlide's:
 *
 * - The scanner's camera takes one picture per position, cut into divisions^2 images (level
 *   0). Each higher level halves the images and joins 2 x 2 of them into one image of the same
 *   size (IMAGE_CONCAT_FACTOR); once an image holds pictures of several positions, it is cut
 *   into subtiles, one per position, each placed at its position's place (positions may come
 *   from a table in a data file, VIMSLIDE_POSITION_BUFFER or zlib-compressed
 *   StitchingIntensityLayer; else from the nominal grid less the overlap).
 * - OpenSlide keys each placed (sub)tile by a grid cell (a later one on the same cell replaces
 *   it) and paints the cells in reverse row-major order, where painted pixels are not painted
 *   again: where tiles overlap, the one of the greatest (row, column) shows.
 * - Only positions with a level-0 image are painted at higher levels.
 *
 * tessera lays a regular grid over each level and hands each grid tile the parts of the placed
 * tiles it covers, in OpenSlide's order (source/mosaic_tiles.c makes the stream, the mosaic
 * codec paints it). Positions that are not whole pixels (odd camera positions or overlaps on
 * the levels above 0, where a position is divided by 2^level) are kept in 16.16 fixed point,
 * as cairo rounds them; a tile there touches the pixels from the one its corner lies in to the
 * one its far edge lies in, and is painted as OpenSlide paints it, bilinear and SATURATE in
 * pixman's arithmetic (codec/mosaic.c), partly covered pixels keeping their partial alpha (the
 * level's alpha is associated); a whole image without alpha on whole pixels in pixman's 8-bit
 * arithmetic, as pixman paints it. Not equal in tessera's own reads (the OpenSlide fronts
 * paint each region as OpenSlide does, source/mosaic_tiles.c): where a read's region lies
 * inside an image between pixels that OpenSlide hands cairo without alpha (whole images:
 * levels not cut into subtiles, with 2 x 2 or more camera images a picture), pixman computes
 * in 8 bits instead and its pixels differ from tessera's by 1 at most (README.md). A subtile
 * whose width or height is not whole (images of a size not divisible by the subtiles across)
 * starts at the pixel below.
 *
 * Every count, offset and length read from the three files is bounded before it is used: the
 * INI to 1 MiB (as OpenSlide), camera images to TSR_MIRAX_MAX_IMAGES, levels to 31 (the image
 * concatenation must fit an int), data files to TSR_MIRAX_MAX_FILES, the pages of Index.dat
 * to what its size can hold (so a loop of pages ends), each image's bytes to max_tile_bytes. */
#include <libdeflate.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <tiff.h>

#include "alloc.h"
#include "compat/sha256.h"
#include "error.h"
#include "format/format.h"
#include "format/ini.h"
#include "source/file_set.h"
#include "source/tile_source.h"

#define TSR_MIRAX_INI_MAX (1 << 20)
#define TSR_MIRAX_MAX_IMAGES ((int64_t)1 << 21)
#define TSR_MIRAX_MAX_FILES 65536
#define TSR_MIRAX_MAX_LEVELS 31
/* Grid tiles a level may have (their tables take 16 bytes each): 2^22 tiles of 256 x 256
 * pixels are 2.7 * 10^11 pixels, beyond any slide. */
#define TSR_MIRAX_MAX_GRID_TILES ((uint64_t)1 << 22)
#define POSITION_RECORD 9

static const char GENERAL[] = "GENERAL", HIERARCHICAL[] = "HIERARCHICAL", DATAFILE[] = "DATAFILE";

/* One zoom level's section of the INI. */
struct section {
  int32_t concat_exponent;
  double overlap_x, overlap_y, mpp_x, mpp_y;
  uint32_t fill_rgb;
  enum tsr_mosaic_format format;
  int32_t image_w, image_h;
};

/* What OpenSlide derives per level (its slide_zoom_level_params and tile sizes). */
struct level_params {
  int32_t image_concat, tile_count_divisor, tiles_per_image, positions_per_tile;
  double tile_w, tile_h, advance_x, advance_y;
  int64_t width, height;
};

/* A (sub)tile placed on a level. */
struct placed {
  int64_t col, row;
  uint64_t seq; /* insertion order: a later tile on the same cell replaces an earlier one */
  uint32_t image, src_x, src_y, w, h;
  int64_t x, y;             /* level pixels (the position's integer part) */
  int64_t fixed_x, fixed_y; /* the position in 1/65536 level pixel */
};

struct placed_list {
  struct placed *item;
  size_t n, cap, max;
};

/* Everything one open works with; freed by done(). */
struct mirax {
  char *folder; /* the path less ".mrxs" */
  const tessera_open_options *limits;
  struct tsr_ini ini;
  struct tsr_byte_source *index;
  uint64_t index_size;
  struct tsr_file_set *files;
  int32_t nfiles;
  const char *slide_id;
  int32_t images_x, images_y, divisions, magnification;
  int32_t nlevels;
  struct section sec[TSR_MIRAX_MAX_LEVELS];
  struct level_params lp[TSR_MIRAX_MAX_LEVELS];
  int32_t *positions; /* x, y per camera position (level-0 pixels) */
  int64_t npositions;
  uint8_t *active; /* by position: a level-0 image lies there */
  int32_t position_vimslide, position_stitching, record[3]; /* nonhier records, -1: none */
  /* Level 0's placed tiles' extent (every tile placed, as OpenSlide's grid counts them);
   * left > right while there is none. */
  double left, top, right, bottom;
  /* Whether OpenSlide gives its levels a tile size: only where every level's tiles advance by
   * their whole size in whole pixels, none off its grid cell (then tessera's grid tiles, the
   * images' size, are the same tiles). */
  bool tile_hints;
  struct tsr_sha256 quickhash; /* OpenSlide's quickhash-1, as far as it is made */
};

static const char *const ASSOCIATED[3] = {"macro", "label", "thumbnail"};
static const char *const ASSOCIATED_VALUE[3] = {
    "ScanDataLayer_SlideThumbnail", "ScanDataLayer_SlideBarcode", "ScanDataLayer_SlidePreview"};
static const char *const ASSOCIATED_FORMAT_KEY[3] = {"THUMBNAIL_IMAGE_TYPE", "BARCODE_IMAGE_TYPE",
                                                     "PREVIEW_IMAGE_TYPE"};

static bool ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && strcmp(s + n - k, suffix) == 0;
}

static char *join(const char *folder, const char *name) {
  size_t n = strlen(folder) + strlen(name) + 2;
  char *p = tsr_malloc(n);
  if (p)
    snprintf(p, n, "%s/%s", folder, name);
  return p;
}

static bool mirax_detect(const char *path) {
  if (!ends_with(path, ".mrxs"))
    return false;
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* ---- the INI ---- */

static tessera_status need_value(const struct mirax *m, const char *group, const char *key,
                                 const char **out) {
  *out = tsr_ini_get(&m->ini, group, key);
  if (!*out)
    return tsr_error(TESSERA_E_FORMAT, "Slidedat.ini: no key %s in group [%s]", key, group);
  return TESSERA_OK;
}

static tessera_status need_int(const struct mirax *m, const char *group, const char *key,
                               int32_t *out) {
  const char *v;
  tessera_status st = need_value(m, group, key, &v);
  if (st == TESSERA_OK && !tsr_ini_int(v, out))
    st = tsr_error(TESSERA_E_FORMAT, "Slidedat.ini: [%s] %s is \"%.40s\", not an integer", group,
                   key, v);
  return st;
}

static tessera_status need_double(const struct mirax *m, const char *group, const char *key,
                                  double *out) {
  const char *v;
  tessera_status st = need_value(m, group, key, &v);
  if (st == TESSERA_OK && (!tsr_ini_double(v, out) || !isfinite(*out)))
    st = tsr_error(TESSERA_E_FORMAT, "Slidedat.ini: [%s] %s is \"%.40s\", not a number", group, key,
                   v);
  return st;
}

static tessera_status in_range(const char *what, int64_t v, int64_t lo, int64_t hi) {
  if (v < lo || v > hi)
    return tsr_error(TESSERA_E_FORMAT, "Slidedat.ini: %s is %lld, outside %lld..%lld", what,
                     (long long)v, (long long)lo, (long long)hi);
  return TESSERA_OK;
}

static tessera_status read_ini(struct mirax *m) {
  char *path = join(m->folder, "Slidedat.ini");
  if (!path)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  struct tsr_byte_source *src;
  tessera_status st = tsr_file_source_open(path, &src);
  tsr_free(path);
  if (st != TESSERA_OK)
    return tsr_error_prefix(st, "Slidedat.ini: ");
  uint64_t size = src->ops->size(src);
  uint8_t *text = NULL;
  if (size == 0)
    st = tsr_error(TESSERA_E_FORMAT, "Slidedat.ini is empty");
  else if (size > TSR_MIRAX_INI_MAX)
    st = tsr_error(TESSERA_E_LIMIT, "Slidedat.ini is %llu bytes, over the %d allowed",
                   (unsigned long long)size, TSR_MIRAX_INI_MAX);
  else if (!(text = tsr_malloc((size_t)size)))
    st = tsr_error(TESSERA_E_NOMEM, "out of memory for Slidedat.ini");
  else if (!tsr_bytes_read_all(src, 0, (size_t)size, text))
    st = tsr_error(TESSERA_E_IO, "cannot read Slidedat.ini");
  else
    st = tsr_ini_parse(text, (size_t)size, "Slidedat.ini", &m->ini);
  if (st == TESSERA_OK) /* OpenSlide's quickhash-1 starts with the whole file */
    tsr_sha256_update(&m->quickhash, text, (size_t)size);
  tsr_free(text);
  tsr_byte_source_close(src);
  return st;
}

static tessera_status image_format(const char *v, enum tsr_mosaic_format *out) {
  if (strcmp(v, "JPEG") == 0)
    *out = TSR_MOSAIC_JPEG;
  else if (strcmp(v, "PNG") == 0)
    *out = TSR_MOSAIC_PNG;
  else if (strcmp(v, "BMP24") == 0)
    *out = TSR_MOSAIC_BMP;
  else
    return tsr_error(TESSERA_E_UNSUPPORTED, "Slidedat.ini: unknown image format \"%.40s\"", v);
  return TESSERA_OK;
}

/* The record offset of the non-hierarchical value named name (and, with value, of that
 * value in it: *section its section); -1 when there is none. As OpenSlide: every name before
 * it must be there, with a nonzero count. The loops end at the first key that is missing, so
 * they are bounded by the INI's size whatever the counts say. */
static tessera_status nonhier_offset(const struct mirax *m, int32_t count, const char *name,
                                     const char *value, const char **section, int32_t *out) {
  *out = -1;
  int64_t offset = 0;
  char key[64];
  for (int32_t i = 0; i < count; i++) {
    const char *v;
    int32_t n;
    snprintf(key, sizeof key, "NONHIER_%d_NAME", i);
    tessera_status st = need_value(m, HIERARCHICAL, key, &v);
    if (st != TESSERA_OK)
      return st;
    snprintf(key, sizeof key, "NONHIER_%d_COUNT", i);
    if ((st = need_int(m, HIERARCHICAL, key, &n)) != TESSERA_OK)
      return st;
    if (n == 0)
      return tsr_error(TESSERA_E_FORMAT, "Slidedat.ini: NONHIER_%d_COUNT is 0", i);
    if (strcmp(v, name) != 0) {
      offset += n;
      if (offset > INT32_MAX || offset < INT32_MIN)
        return tsr_error(TESSERA_E_FORMAT, "Slidedat.ini: NONHIER counts overflow");
      continue;
    }
    if (offset < 0)
      return tsr_error(TESSERA_E_FORMAT, "Slidedat.ini: NONHIER counts before %s are negative",
                       name);
    if (!value) {
      *out = (int32_t)offset;
      return TESSERA_OK;
    }
    for (int32_t j = 0; j < n; j++) {
      snprintf(key, sizeof key, "NONHIER_%d_VAL_%d", i, j);
      if ((st = need_value(m, HIERARCHICAL, key, &v)) != TESSERA_OK)
        return st;
      if (strcmp(v, value) == 0) {
        snprintf(key, sizeof key, "NONHIER_%d_VAL_%d_SECTION", i, j);
        if ((st = need_value(m, HIERARCHICAL, key, section)) != TESSERA_OK)
          return st;
        *out = (int32_t)offset;
        return TESSERA_OK;
      }
      if (++offset > INT32_MAX)
        return tsr_error(TESSERA_E_FORMAT, "Slidedat.ini: NONHIER counts overflow");
    }
    return TESSERA_OK;
  }
  return TESSERA_OK;
}

static tessera_status read_layout(struct mirax *m) {
  const char *v;
  tessera_status st;
  int32_t hier_count, nonhier_count, zoom_at = -1;
  char key[64];
  if ((st = need_value(m, GENERAL, "SLIDE_VERSION", &v)) != TESSERA_OK ||
      (st = need_value(m, GENERAL, "SLIDE_ID", &m->slide_id)) != TESSERA_OK ||
      (st = need_int(m, GENERAL, "IMAGENUMBER_X", &m->images_x)) != TESSERA_OK ||
      (st = need_int(m, GENERAL, "IMAGENUMBER_Y", &m->images_y)) != TESSERA_OK)
    return st;
  /* As OpenSlide 4 (3.4 requires an integer): missing, blank, not a number or not positive
   * gives no objective power; some old files end it in "x". */
  const char *mag = tsr_ini_get(&m->ini, GENERAL, "OBJECTIVE_MAGNIFICATION");
  m->magnification = 0;
  if (mag) {
    char digits[32];
    size_t n = strlen(mag);
    if (n > 0 && n < sizeof digits) {
      memcpy(digits, mag, n + 1);
      if (digits[n - 1] == 'x')
        digits[n - 1] = '\0';
      if (!tsr_ini_int(digits, &m->magnification) || m->magnification < 0)
        m->magnification = 0;
    }
  }
  if (!tsr_ini_int(tsr_ini_get(&m->ini, GENERAL, "CameraImageDivisionsPerSide"), &m->divisions))
    m->divisions = 1;
  if ((st = in_range("IMAGENUMBER_X", m->images_x, 1, INT32_MAX)) != TESSERA_OK ||
      (st = in_range("IMAGENUMBER_Y", m->images_y, 1, INT32_MAX)) != TESSERA_OK ||
      (st = in_range("CameraImageDivisionsPerSide", m->divisions, 1, 64)) != TESSERA_OK)
    return st;
  if ((int64_t)m->images_x * m->images_y > TSR_MIRAX_MAX_IMAGES)
    return tsr_error(TESSERA_E_LIMIT, "Slidedat.ini: %d x %d camera images, more than %lld",
                     m->images_x, m->images_y, (long long)TSR_MIRAX_MAX_IMAGES);
  if ((st = need_int(m, HIERARCHICAL, "HIER_COUNT", &hier_count)) != TESSERA_OK ||
      (st = need_int(m, HIERARCHICAL, "NONHIER_COUNT", &nonhier_count)) != TESSERA_OK ||
      (st = in_range("HIER_COUNT", hier_count, 1, INT32_MAX)) != TESSERA_OK ||
      (st = in_range("NONHIER_COUNT", nonhier_count, 0, INT32_MAX)) != TESSERA_OK)
    return st;
  for (int32_t i = 0; i < hier_count && zoom_at < 0; i++) {
    snprintf(key, sizeof key, "HIER_%d_NAME", i);
    if ((st = need_value(m, HIERARCHICAL, key, &v)) != TESSERA_OK)
      return st;
    if (strcmp(v, "Slide zoom level") == 0)
      zoom_at = i;
  }
  if (zoom_at < 0)
    return tsr_error(TESSERA_E_FORMAT, "Slidedat.ini: no HIER_n_NAME is \"Slide zoom level\"");
  if (zoom_at != 0)
    return tsr_error(TESSERA_E_UNSUPPORTED, "Slidedat.ini: the slide zoom level is not HIER_0");
  if ((st = need_int(m, HIERARCHICAL, "HIER_0_COUNT", &m->nlevels)) != TESSERA_OK ||
      (st = in_range("HIER_0_COUNT (levels)", m->nlevels, 1, TSR_MIRAX_MAX_LEVELS)) != TESSERA_OK)
    return st;
  /* data files: names inside the folder only */
  if ((st = need_int(m, DATAFILE, "FILE_COUNT", &m->nfiles)) != TESSERA_OK ||
      (st = in_range("FILE_COUNT", m->nfiles, 1, TSR_MIRAX_MAX_FILES)) != TESSERA_OK)
    return st;
  char **paths = tsr_calloc((size_t)m->nfiles, sizeof *paths);
  if (!paths)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  for (int32_t i = 0; i < m->nfiles && st == TESSERA_OK; i++) {
    snprintf(key, sizeof key, "FILE_%d", i);
    if ((st = need_value(m, DATAFILE, key, &v)) != TESSERA_OK)
      break;
    if (!*v || strchr(v, '/') || strcmp(v, ".") == 0 || strcmp(v, "..") == 0)
      st = tsr_error(TESSERA_E_FORMAT,
                     "Slidedat.ini: data file %s \"%.60s\" is not a name in "
                     "the slide's folder",
                     key, v);
    else if (!(paths[i] = join(m->folder, v)))
      st = tsr_error(TESSERA_E_NOMEM, "out of memory");
  }
  if (st == TESSERA_OK)
    st = tsr_file_set_new((const char *const *)paths, (size_t)m->nfiles, &m->files);
  for (int32_t i = 0; i < m->nfiles; i++)
    tsr_free(paths[i]);
  tsr_free(paths);
  if (st != TESSERA_OK)
    return st;
  /* each level's section */
  for (int32_t i = 0; i < m->nlevels; i++) {
    struct section *s = &m->sec[i];
    const char *group;
    int32_t bgr;
    snprintf(key, sizeof key, "HIER_0_VAL_%d_SECTION", i);
    if ((st = need_value(m, HIERARCHICAL, key, &group)) != TESSERA_OK)
      return st;
    if ((st = need_int(m, group, "IMAGE_CONCAT_FACTOR", &s->concat_exponent)) != TESSERA_OK ||
        (st = need_double(m, group, "OVERLAP_X", &s->overlap_x)) != TESSERA_OK ||
        (st = need_double(m, group, "OVERLAP_Y", &s->overlap_y)) != TESSERA_OK ||
        (st = need_double(m, group, "MICROMETER_PER_PIXEL_X", &s->mpp_x)) != TESSERA_OK ||
        (st = need_double(m, group, "MICROMETER_PER_PIXEL_Y", &s->mpp_y)) != TESSERA_OK ||
        (st = need_int(m, group, "IMAGE_FILL_COLOR_BGR", &bgr)) != TESSERA_OK ||
        (st = need_int(m, group, "DIGITIZER_WIDTH", &s->image_w)) != TESSERA_OK ||
        (st = need_int(m, group, "DIGITIZER_HEIGHT", &s->image_h)) != TESSERA_OK ||
        (st = need_value(m, group, "IMAGE_FORMAT", &v)) != TESSERA_OK ||
        (st = image_format(v, &s->format)) != TESSERA_OK)
      return st;
    if ((st = in_range("IMAGE_CONCAT_FACTOR", s->concat_exponent, i == 0 ? 0 : 1, 30)) !=
            TESSERA_OK ||
        (st = in_range("DIGITIZER_WIDTH", s->image_w, 1, 65500)) != TESSERA_OK ||
        (st = in_range("DIGITIZER_HEIGHT", s->image_h, 1, 65500)) != TESSERA_OK)
      return st;
    uint32_t b = (uint32_t)bgr;
    s->fill_rgb = (b << 16 & 0xFF0000) | (b & 0xFF00) | (b >> 16 & 0xFF);
  }
  /* where the camera positions and the associated images are */
  if ((st = nonhier_offset(m, nonhier_count, "VIMSLIDE_POSITION_BUFFER", NULL, NULL,
                           &m->position_vimslide)) != TESSERA_OK)
    return st;
  m->position_stitching = -1;
  if (m->position_vimslide < 0 &&
      (st = nonhier_offset(m, nonhier_count, "StitchingIntensityLayer", NULL, NULL,
                           &m->position_stitching)) != TESSERA_OK)
    return st;
  for (int i = 0; i < 3; i++) {
    const char *section = NULL;
    if ((st = nonhier_offset(m, nonhier_count, "Scan data layer", ASSOCIATED_VALUE[i], &section,
                             &m->record[i])) != TESSERA_OK)
      return st;
    if (m->record[i] < 0)
      continue;
    if ((st = need_value(m, section, ASSOCIATED_FORMAT_KEY[i], &v)) != TESSERA_OK)
      return st;
    if (strcmp(v, "JPEG") != 0)
      return tsr_error(TESSERA_E_UNSUPPORTED, "Slidedat.ini: the %s image is %.40s, not JPEG",
                       ASSOCIATED[i], v);
  }
  return TESSERA_OK;
}

static uint32_t grid_side(int32_t image_side) {
  return image_side < 64 ? 64 : image_side > 4096 ? 4096 : (uint32_t)image_side;
}

/* OpenSlide's level geometry: sizes from level 0's image size and overlap, and how each
 * level's images are cut into tiles and advance across the grid. */
static tessera_status level_geometry(struct mirax *m) {
  const struct section *s0 = &m->sec[0];
  int64_t base_w = 0, base_h = 0;
  /* As OpenSlide sums them: each step truncated to an integer. */
  for (int32_t i = 0; i < m->images_x; i++)
    base_w =
        (int64_t)((double)base_w + (i % m->divisions != m->divisions - 1 || i == m->images_x - 1
                                        ? (double)s0->image_w
                                        : s0->image_w - s0->overlap_x));
  for (int32_t i = 0; i < m->images_y; i++)
    base_h =
        (int64_t)((double)base_h + (i % m->divisions != m->divisions - 1 || i == m->images_y - 1
                                        ? (double)s0->image_h
                                        : s0->image_h - s0->overlap_y));
  bool subtiles = m->position_vimslide >= 0 || m->position_stitching >= 0 || s0->overlap_x != 0 ||
                  s0->overlap_y != 0;
  int32_t total = 0;
  for (int32_t i = 0; i < m->nlevels; i++) {
    struct level_params *p = &m->lp[i];
    const struct section *s = &m->sec[i];
    total += s->concat_exponent;
    if (total > 30)
      return tsr_error(TESSERA_E_FORMAT, "Slidedat.ini: image concatenation 2^%d is too large",
                       total);
    p->image_concat = (int32_t)1 << total;
    int32_t per_image = p->image_concat / m->divisions > 1 ? p->image_concat / m->divisions : 1;
    if (subtiles) {
      p->tile_count_divisor = p->image_concat < m->divisions ? p->image_concat : m->divisions;
      p->tiles_per_image = per_image;
      p->positions_per_tile = 1;
    } else {
      p->tile_count_divisor = p->image_concat;
      p->tiles_per_image = 1;
      p->positions_per_tile = per_image;
    }
    p->tile_w = (double)s->image_w / p->tiles_per_image;
    p->tile_h = (double)s->image_h / p->tiles_per_image;
    int32_t images_per_position =
        m->divisions / p->image_concat > 1 ? m->divisions / p->image_concat : 1;
    p->advance_x = p->tile_w - s->overlap_x / images_per_position;
    p->advance_y = p->tile_h - s->overlap_y / images_per_position;
    p->width = base_w / p->image_concat;
    p->height = base_h / p->image_concat;
    if (p->advance_x != floor(p->advance_x) || p->advance_y != floor(p->advance_y) ||
        p->advance_x != p->tile_w || p->advance_y != p->tile_h ||
        p->tile_w != grid_side(s->image_w) || p->tile_h != grid_side(s->image_h))
      m->tile_hints = false;
    if (p->width <= 0 || p->height <= 0 || p->width > m->limits->max_dimension ||
        p->height > m->limits->max_dimension)
      return tsr_error(TESSERA_E_LIMIT, "level %d is %lldx%lld pixels, outside 1..%lld", i,
                       (long long)p->width, (long long)p->height,
                       (long long)m->limits->max_dimension);
  }
  return TESSERA_OK;
}

/* ---- Index.dat ---- */

static tessera_status index_i32(const struct mirax *m, int64_t at, int32_t *out) {
  uint8_t b[4];
  if (at < 0 || (uint64_t)at + 4 > m->index_size ||
      !tsr_bytes_read_all(m->index, (uint64_t)at, 4, b))
    return tsr_error(TESSERA_E_CORRUPT,
                     "Index.dat: a value at offset %lld lies outside its %llu bytes (was it "
                     "truncated?)",
                     (long long)at, (unsigned long long)m->index_size);
  *out =
      (int32_t)((uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24);
  return TESSERA_OK;
}

static int64_t hier_root(const struct mirax *m) { return 5 + (int64_t)strlen(m->slide_id); }

static tessera_status check_index_header(struct mirax *m) {
  size_t n = strlen(m->slide_id);
  if (m->index_size < 5 + n + 8)
    return tsr_error(TESSERA_E_CORRUPT, "Index.dat is too short (%llu bytes)",
                     (unsigned long long)m->index_size);
  char *head = tsr_malloc(5 + n);
  if (!head)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  tessera_status st = TESSERA_OK;
  if (!tsr_bytes_read_all(m->index, 0, 5 + n, head))
    st = tsr_error(TESSERA_E_IO, "cannot read Index.dat");
  else if (memcmp(head, "01.02", 5) != 0)
    st = tsr_error(TESSERA_E_FORMAT, "Index.dat is not of version 01.02");
  else if (memcmp(head + 5, m->slide_id, n) != 0)
    st = tsr_error(TESSERA_E_FORMAT, "Index.dat is of another slide (its SLIDE_ID differs)");
  tsr_free(head);
  return st;
}

/* Non-hierarchical record recno: its offset, length and data file. */
static tessera_status nonhier_record(const struct mirax *m, int32_t recno, int32_t *offset,
                                     int32_t *length, int32_t *file) {
  int32_t table, ptr, page, v;
  tessera_status st;
  if ((st = index_i32(m, hier_root(m) + 4, &table)) != TESSERA_OK ||
      (st = index_i32(m, (int64_t)table + 4 * (int64_t)recno, &ptr)) != TESSERA_OK ||
      (st = index_i32(m, ptr, &v)) != TESSERA_OK)
    return st;
  if (v != 0)
    return tsr_error(TESSERA_E_FORMAT, "Index.dat: record %d does not start with 0", recno);
  if ((st = index_i32(m, (int64_t)ptr + 4, &page)) != TESSERA_OK ||
      (st = index_i32(m, page, &v)) != TESSERA_OK)
    return st;
  /* OpenSlide 3.4 wants exactly 1; some slides hold more (OpenSlide 4 reads the first). */
  if (v < 1)
    return tsr_error(TESSERA_E_FORMAT, "Index.dat: record %d's page holds no item", recno);
  int32_t z1, z2;
  if ((st = index_i32(m, (int64_t)page + 8, &z1)) != TESSERA_OK ||
      (st = index_i32(m, (int64_t)page + 12, &z2)) != TESSERA_OK)
    return st;
  if (z1 != 0 || z2 != 0)
    return tsr_error(TESSERA_E_FORMAT, "Index.dat: record %d's page is not as expected", recno);
  if ((st = index_i32(m, (int64_t)page + 16, offset)) != TESSERA_OK ||
      (st = index_i32(m, (int64_t)page + 20, length)) != TESSERA_OK ||
      (st = index_i32(m, (int64_t)page + 24, file)) != TESSERA_OK)
    return st;
  if (*offset < 0 || *length < 0 || *file < 0 || *file >= m->nfiles)
    return tsr_error(TESSERA_E_FORMAT,
                     "Index.dat: record %d has offset %d, length %d, data file %d (of %d)", recno,
                     *offset, *length, *file, m->nfiles);
  return TESSERA_OK;
}

/* The length bytes of a record, read whole (bounded by max_tile_bytes). */
static tessera_status read_record(const struct mirax *m, int32_t recno, const char *what,
                                  uint8_t **out, size_t *len) {
  int32_t offset, length, file;
  *out = NULL;
  tessera_status st = nonhier_record(m, recno, &offset, &length, &file);
  if (st != TESSERA_OK)
    return tsr_error_prefix(st, "the %s: ", what);
  if ((uint64_t)length > m->limits->max_tile_bytes)
    return tsr_error(TESSERA_E_LIMIT, "the %s is %d bytes, over the limit of %llu", what, length,
                     (unsigned long long)m->limits->max_tile_bytes);
  *len = (size_t)length;
  if (!(*out = tsr_malloc(*len ? *len : 1)))
    return tsr_error(TESSERA_E_NOMEM, "out of memory for the %s", what);
  st = tsr_file_set_read(m->files, (size_t)file, (uint64_t)offset, *len, *out);
  if (st != TESSERA_OK) {
    tsr_free(*out);
    *out = NULL;
    return tsr_error_prefix(st, "the %s: ", what);
  }
  return TESSERA_OK;
}

static tessera_status read_positions(struct mirax *m) {
  int64_t px = m->images_x / m->divisions, py = m->images_y / m->divisions;
  m->npositions = px * py;
  m->positions = tsr_calloc((size_t)(m->npositions ? m->npositions : 1) * 2, sizeof(int32_t));
  m->active = tsr_calloc((size_t)(m->npositions ? m->npositions : 1), 1);
  if (!m->positions || !m->active)
    return tsr_error(TESSERA_E_NOMEM, "out of memory for %lld camera positions",
                     (long long)m->npositions);
  int32_t recno = m->position_vimslide >= 0 ? m->position_vimslide : m->position_stitching;
  if (recno < 0) {
    /* none recorded: the nominal grid less the overlap (truncated as OpenSlide does) */
    const struct section *s0 = &m->sec[0];
    for (int64_t i = 0; i < m->npositions; i++) {
      m->positions[2 * i] =
          (int32_t)((double)(i % px) * (s0->image_w * (double)m->divisions - s0->overlap_x));
      m->positions[2 * i + 1] =
          (int32_t)((double)(i / px) * (s0->image_h * (double)m->divisions - s0->overlap_y));
    }
    return TESSERA_OK;
  }
  size_t want = (size_t)m->npositions * POSITION_RECORD, len = 0;
  uint8_t *buf, *plain = NULL;
  tessera_status st = read_record(m, recno, "camera positions", &buf, &len);
  if (st != TESSERA_OK)
    return st;
  if (recno == m->position_stitching) {
    plain = tsr_malloc(want ? want : 1);
    struct libdeflate_decompressor *d = libdeflate_alloc_decompressor();
    if (!plain || !d)
      st = tsr_error(TESSERA_E_NOMEM, "out of memory for the camera positions");
    else if (libdeflate_zlib_decompress(d, buf, len, plain, want, NULL) != LIBDEFLATE_SUCCESS)
      st = tsr_error(TESSERA_E_CORRUPT, "the camera positions do not inflate to %zu bytes", want);
    if (d)
      libdeflate_free_decompressor(d);
    tsr_free(buf);
    buf = plain;
    len = want;
  } else if (len != want) {
    st = tsr_error(TESSERA_E_FORMAT, "the camera positions are %zu bytes, %lld positions need %zu",
                   len, (long long)m->npositions, want);
  }
  for (int64_t i = 0; st == TESSERA_OK && i < m->npositions; i++) {
    const uint8_t *r = buf + i * POSITION_RECORD;
    if (r[0] & 0xFE) {
      st = tsr_error(TESSERA_E_FORMAT, "camera position %lld has flag %u", (long long)i, r[0]);
      break;
    }
    int64_t concat0 = m->lp[0].image_concat;
    int32_t x = (int32_t)((uint32_t)r[1] | (uint32_t)r[2] << 8 | (uint32_t)r[3] << 16 |
                          (uint32_t)r[4] << 24);
    int32_t y = (int32_t)((uint32_t)r[5] | (uint32_t)r[6] << 8 | (uint32_t)r[7] << 16 |
                          (uint32_t)r[8] << 24);
    /* OpenSlide multiplies in int (wrapping); a position that far off is no slide's. */
    if ((int64_t)x * concat0 > INT32_MAX || (int64_t)x * concat0 < INT32_MIN ||
        (int64_t)y * concat0 > INT32_MAX || (int64_t)y * concat0 < INT32_MIN) {
      st = tsr_error(TESSERA_E_FORMAT, "camera position %lld is out of range", (long long)i);
      break;
    }
    m->positions[2 * i] = (int32_t)(x * concat0);
    m->positions[2 * i + 1] = (int32_t)(y * concat0);
  }
  tsr_free(buf);
  return st;
}

static tessera_status add_placed(struct placed_list *l, const struct placed *p, int32_t level) {
  if (l->n == l->max)
    return tsr_error(TESSERA_E_FORMAT,
                     "Index.dat: level %d places more tiles than the slide has positions", level);
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 256;
    if (cap > l->max)
      cap = l->max;
    struct placed *grown = tsr_realloc(l->item, cap * sizeof *grown);
    if (!grown)
      return tsr_error(TESSERA_E_NOMEM, "out of memory for level %d's tiles", level);
    l->item = grown;
    l->cap = cap;
  }
  l->item[l->n++] = *p;
  return TESSERA_OK;
}

/* Whether the (sub)tile of level-0 image column xx, row yy is painted on level, and its
 * level-0 position (OpenSlide's get_tile_position). */
static bool tile_position(struct mirax *m, int32_t level, int64_t xx, int64_t yy, int64_t *x0,
                          int64_t *y0) {
  int64_t px = m->images_x / m->divisions;
  int64_t xp = xx / m->divisions, yp = yy / m->divisions, cp = yp * px + xp;
  if (cp < 0 || cp >= m->npositions)
    return false;
  *x0 = m->positions[2 * cp] + (int64_t)m->sec[0].image_w * (xx - xp * m->divisions);
  *y0 = m->positions[2 * cp + 1] + (int64_t)m->sec[0].image_h * (yy - yp * m->divisions);
  if (level == 0) {
    /* Images that join active and inactive positions may give the inactive ones (0, 0); only
     * position (0, 0) is taken to lie there. */
    if (m->positions[2 * cp] == 0 && m->positions[2 * cp + 1] == 0 && (xp != 0 || yp != 0))
      return false;
    m->active[cp] = 1;
    return true;
  }
  int32_t n = m->lp[level].positions_per_tile;
  for (int64_t ypp = yp; ypp < yp + n; ypp++)
    for (int64_t xpp = xp; xpp < xp + n; xpp++) {
      int64_t cpp = ypp * px + xpp;
      if (cpp >= 0 && cpp < m->npositions && m->active[cpp])
        return true;
    }
  return false;
}

static int compare_placed(const void *a, const void *b) {
  const struct placed *x = a, *y = b;
  if (x->row != y->row)
    return x->row < y->row ? -1 : 1;
  if (x->col != y->col)
    return x->col < y->col ? -1 : 1;
  return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Level level's images from Index.dat (into *images) and the tiles they place (into *l). */
static tessera_status read_level_index(struct mirax *m, int32_t level, int32_t table,
                                       struct tsr_mosaic_image **images, size_t *nimages,
                                       struct placed_list *l) {
  const struct level_params *p = &m->lp[level];
  int32_t ptr, v, page;
  tessera_status st;
  if ((st = index_i32(m, (int64_t)table + 4 * (int64_t)level, &ptr)) != TESSERA_OK ||
      (st = index_i32(m, ptr, &v)) != TESSERA_OK)
    return st;
  if (v != 0)
    return tsr_error(TESSERA_E_FORMAT, "Index.dat: level %d's list does not start with 0", level);
  if ((st = index_i32(m, (int64_t)ptr + 4, &page)) != TESSERA_OK)
    return st;
  /* A chain of pages cannot visit more pages, nor list more images, than the file could hold
   * once each: more means a loop. */
  uint64_t pages = 0, max_pages = m->index_size / 8 + 1, entries = 0,
           max_entries = m->index_size / 16 + 1;
  /* nor list more images than the slide has camera images (each once) */
  uint64_t max_images = (uint64_t)m->images_x * (uint64_t)m->images_y + 64;
  size_t cap = 0;
  uint64_t seq = 0;
  do {
    int32_t count, next;
    if (++pages > max_pages)
      return tsr_error(TESSERA_E_FORMAT, "Index.dat: level %d's pages form a loop", level);
    if ((st = index_i32(m, page, &count)) != TESSERA_OK ||
        (st = index_i32(m, (int64_t)page + 4, &next)) != TESSERA_OK)
      return st;
    if (count < 0 || (uint64_t)page + 8 + 16 * (uint64_t)count > m->index_size)
      return tsr_error(TESSERA_E_CORRUPT,
                       "Index.dat: level %d's page at %d lists %d images past the file's end "
                       "(was it truncated?)",
                       level, page, count);
    entries += (uint64_t)count;
    if (entries > max_entries)
      return tsr_error(TESSERA_E_FORMAT, "Index.dat: level %d's pages form a loop", level);
    if (entries > max_images)
      return tsr_error(TESSERA_E_FORMAT,
                       "Index.dat: level %d lists more images than the slide has (%d x %d)", level,
                       m->images_x, m->images_y);
    uint8_t *raw = tsr_malloc((size_t)count * 16 + 1);
    if (!raw)
      return tsr_error(TESSERA_E_NOMEM, "out of memory");
    if (!tsr_bytes_read_all(m->index, (uint64_t)page + 8, (size_t)count * 16, raw)) {
      tsr_free(raw);
      return tsr_error(TESSERA_E_IO, "cannot read Index.dat");
    }
    for (int32_t e = 0; e < count && st == TESSERA_OK; e++) {
      int32_t f[4];
      for (int k = 0; k < 4; k++) {
        const uint8_t *b = raw + e * 16 + k * 4;
        f[k] = (int32_t)((uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
                         (uint32_t)b[3] << 24);
      }
      int32_t index = f[0], offset = f[1], length = f[2], file = f[3];
      if (index < 0 || offset < 0 || length < 0 || file < 0 || file >= m->nfiles) {
        st = tsr_error(TESSERA_E_FORMAT,
                       "Index.dat: level %d lists image %d at offset %d, length %d, data file "
                       "%d (of %d)",
                       level, index, offset, length, file, m->nfiles);
        break;
      }
      int64_t x = index % m->images_x, y = index / m->images_x;
      if (y >= m->images_y || x % p->image_concat || y % p->image_concat) {
        st = tsr_error(TESSERA_E_FORMAT,
                       "Index.dat: level %d lists image (%lld, %lld), which "
                       "is outside the slide or not on the level's grid",
                       level, (long long)x, (long long)y);
        break;
      }
      if ((uint64_t)length > m->limits->max_tile_bytes) {
        st = tsr_error(TESSERA_E_LIMIT,
                       "Index.dat: level %d's image %d is %d bytes, over the "
                       "limit of %llu",
                       level, index, length, (unsigned long long)m->limits->max_tile_bytes);
        break;
      }
      if (*nimages == cap) {
        cap = cap ? cap * 2 : 64;
        struct tsr_mosaic_image *grown = tsr_realloc(*images, cap * sizeof *grown);
        if (!grown) {
          st = tsr_error(TESSERA_E_NOMEM, "out of memory for level %d's images", level);
          break;
        }
        *images = grown;
      }
      uint32_t image = (uint32_t)*nimages;
      (*images)[(*nimages)++] =
          (struct tsr_mosaic_image){(uint64_t)offset, (uint32_t)length, (uint32_t)file};
      /* the image's subtiles, one per position it holds */
      for (int32_t yi = 0; yi < p->tiles_per_image && st == TESSERA_OK; yi++) {
        int64_t yy = y + (int64_t)yi * m->divisions;
        if (yy >= m->images_y)
          break;
        for (int32_t xi = 0; xi < p->tiles_per_image; xi++) {
          int64_t xx = x + (int64_t)xi * m->divisions, x0, y0;
          if (xx >= m->images_x)
            break;
          if (!tile_position(m, level, xx, yy, &x0, &y0))
            continue;
          double src_x = p->tile_w * xi, src_y = p->tile_h * yi;
          const struct section *s = &m->sec[level];
          bool part = s->image_w > p->tile_w || s->image_h > p->tile_h;
          struct placed t = {
              .col = x / p->tile_count_divisor + xi,
              .row = y / p->tile_count_divisor + yi,
              .seq = seq++,
              .image = image,
              .src_x = part ? (uint32_t)floor(src_x) : 0,
              .src_y = part ? (uint32_t)floor(src_y) : 0,
              .w = part ? (uint32_t)ceil(p->tile_w) : (uint32_t)s->image_w,
              .h = part ? (uint32_t)ceil(p->tile_h) : (uint32_t)s->image_h,
              .x = (int64_t)floor((double)x0 / p->image_concat),
              .y = (int64_t)floor((double)y0 / p->image_concat),
          };
          double pos_x = (double)x0 / p->image_concat, pos_y = (double)y0 / p->image_concat;
          /* cairo's 16.16 fixed point (exact: a level-0 position over a power of 2 up to
           * 2^30 has at most 30 bits after the point, and those below 2^-16 round as cairo
           * rounds them, to nearest) */
          t.fixed_x = (int64_t)nearbyint(pos_x * 65536.0);
          t.fixed_y = (int64_t)nearbyint(pos_y * 65536.0);
          if (pos_x - (double)t.col * p->advance_x != 0 ||
              pos_y - (double)t.row * p->advance_y != 0)
            m->tile_hints = false;
          if (level == 0) {
            double fx = pos_x, fy = pos_y;
            m->left = fx < m->left ? fx : m->left;
            m->top = fy < m->top ? fy : m->top;
            m->right = fx + p->tile_w > m->right ? fx + p->tile_w : m->right;
            m->bottom = fy + p->tile_h > m->bottom ? fy + p->tile_h : m->bottom;
          }
          if (t.src_x >= (uint32_t)s->image_w || t.src_y >= (uint32_t)s->image_h)
            continue;
          if (t.w > (uint32_t)s->image_w - t.src_x)
            t.w = (uint32_t)s->image_w - t.src_x;
          if (t.h > (uint32_t)s->image_h - t.src_y)
            t.h = (uint32_t)s->image_h - t.src_y;
          if ((st = add_placed(l, &t, level)) != TESSERA_OK)
            break;
        }
      }
    }
    tsr_free(raw);
    if (st != TESSERA_OK)
      return st;
    page = next;
  } while (page != 0);
  /* One tile per cell, the last placed; then in painting order. */
  if (l->n > 1)
    qsort(l->item, l->n, sizeof *l->item, compare_placed);
  size_t kept = 0;
  for (size_t i = 0; i < l->n; i++) {
    if (kept > 0 && l->item[kept - 1].row == l->item[i].row &&
        l->item[kept - 1].col == l->item[i].col)
      kept--;
    l->item[kept++] = l->item[i];
  }
  l->n = kept;
  return TESSERA_OK;
}

/* ---- levels ---- */

/* Level level as a grid of tiles, each with the parts of the placed tiles it covers. */
static tessera_status make_level(struct mirax *m, int32_t level, uint8_t background,
                                 struct tsr_mosaic_image *images, size_t nimages,
                                 const struct placed_list *l, struct tsr_level *lv) {
  const struct level_params *p = &m->lp[level];
  struct tsr_mosaic *mo = tsr_calloc(1, sizeof *mo);
  if (!mo) {
    tsr_free(images);
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  }
  mo->images = images;
  mo->nimages = nimages;
  mo->files = m->files;
  tsr_file_set_ref(m->files);
  mo->image_w = (uint32_t)m->sec[level].image_w;
  mo->image_h = (uint32_t)m->sec[level].image_h;
  mo->format = m->sec[level].format;
  /* OpenSlide copies a subtile out into ARGB32, and paints a whole image as RGB24 */
  mo->whole_rgb24 = !(m->sec[level].image_w > p->tile_w || m->sec[level].image_h > p->tile_h);
  mo->background = background;
  lv->source_data = mo;
  tsr_mosaic_level_format(lv);
  lv->width = p->width;
  lv->height = p->height;
  lv->downsample = (double)(p->image_concat / m->lp[0].image_concat);
  lv->directory = (uint32_t)level;
  struct tsr_mosaic_placed *placed = tsr_malloc((l->n ? l->n : 1) * sizeof *placed);
  if (!placed)
    return tsr_error(TESSERA_E_NOMEM, "out of memory for level %d's tiles", level);
  for (size_t i = 0; i < l->n; i++) {
    const struct placed *t = &l->item[i];
    placed[i] = (struct tsr_mosaic_placed){t->image, t->src_x,   t->src_y,  t->w,
                                           t->h,     t->fixed_x, t->fixed_y};
  }
  tessera_status st =
      tsr_mosaic_lay(mo, lv, grid_side(m->sec[level].image_w), grid_side(m->sec[level].image_h),
                     placed, l->n, TSR_MIRAX_MAX_GRID_TILES);
  tsr_free(placed);
  return st == TESSERA_OK ? st : tsr_error_prefix(st, "level %d: ", level);
}

/* An associated image: one JPEG, one tile. */
static tessera_status make_associated(struct mirax *m, int which, uint8_t background,
                                      struct tsr_level **out) {
  int32_t offset, length, file;
  *out = NULL;
  tessera_status st = nonhier_record(m, m->record[which], &offset, &length, &file);
  if (st != TESSERA_OK)
    return tsr_error_prefix(st, "the %s image: ", ASSOCIATED[which]);
  if ((uint64_t)length > m->limits->max_tile_bytes)
    return tsr_error(TESSERA_E_LIMIT, "the %s image is %d bytes, over the limit", ASSOCIATED[which],
                     length);
  /* Its size, from the JPEG header (within the first 64 KiB, or all of it). */
  size_t head = length < 65536 ? (size_t)length : 65536;
  uint8_t *bytes = tsr_malloc(head ? head : 1);
  if (!bytes)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  struct tsr_jpeg_geometry g;
  st = tsr_file_set_read(m->files, (size_t)file, (uint64_t)offset, head, bytes);
  if (st == TESSERA_OK)
    st = tsr_jpeg_read_geometry(bytes, head, &g);
  tsr_free(bytes);
  if (st != TESSERA_OK)
    return tsr_error_prefix(st, "the %s image: ", ASSOCIATED[which]);
  if (g.components != 3)
    return tsr_error(TESSERA_E_UNSUPPORTED, "the %s image has %u colour components, not 3",
                     ASSOCIATED[which], g.components);
  struct tsr_level *lv = tsr_calloc(1, sizeof *lv);
  struct tsr_mosaic *mo = tsr_calloc(1, sizeof *mo);
  if (lv)
    lv->source_data = mo;
  if (mo) {
    mo->files = m->files;
    tsr_file_set_ref(m->files);
    mo->images = tsr_malloc(sizeof *mo->images);
    mo->pieces = tsr_malloc(sizeof *mo->pieces);
  }
  if (lv)
    tsr_mosaic_level_format(lv);
  if (lv)
    lv->ntiles = 1;
  if (lv) {
    lv->offsets = tsr_calloc(1, sizeof *lv->offsets);
    lv->bytecounts = tsr_calloc(1, sizeof *lv->bytecounts);
  }
  if (!lv || !mo || !mo->images || !mo->pieces || !lv->offsets || !lv->bytecounts) {
    if (lv) {
      tsr_level_free(lv);
      tsr_free(lv);
    } else {
      tsr_mosaic_free(mo);
    }
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  }
  mo->image_w = g.width;
  mo->image_h = g.height;
  mo->format = TSR_MOSAIC_JPEG;
  mo->background = background;
  mo->images[0] = (struct tsr_mosaic_image){(uint64_t)offset, (uint32_t)length, (uint32_t)file};
  mo->nimages = 1;
  mo->pieces[0] =
      (struct tsr_mosaic_piece){.w = g.width, .h = g.height, .foot_w = g.width, .foot_h = g.height};
  mo->npieces = 1;
  lv->width = g.width;
  lv->height = g.height;
  lv->downsample = 1.0;
  lv->tile_w = g.width;
  lv->tile_h = g.height;
  lv->across = lv->down = 1;
  lv->offsets[0] = 1;
  lv->bytecounts[0] = 1;
  lv->directory = (uint32_t)(TSR_MIRAX_MAX_LEVELS + which);
  *out = lv;
  return TESSERA_OK;
}

static void add_properties(const struct mirax *m, struct tsr_findings *out) {
  for (size_t i = 0; i < m->ini.n; i++) {
    const struct tsr_ini_entry *e = &m->ini.entry[i];
    size_t n = strlen(e->group) + strlen(e->key) + 8;
    char *key = tsr_malloc(n);
    if (!key) {
      out->props.failed = true;
      return;
    }
    snprintf(key, n, "mirax.%s.%s", e->group, e->key);
    tsr_props_add_string(&out->props, key, e->value);
    tsr_free(key);
  }
  const struct section *s0 = &m->sec[0];
  tsr_props_add_double(&out->props, "tessera.mpp-x", s0->mpp_x);
  tsr_props_add_double(&out->props, "tessera.mpp-y", s0->mpp_y);
  if (m->magnification > 0)
    tsr_props_add(&out->props, "tessera.objective-power", "%d", m->magnification);
  tsr_props_add(&out->props, "tessera.background-color", "%06X", s0->fill_rgb);
  /* The slide's non-empty area as OpenSlide gives it: whole pixels around the tiles. */
  double x = 0, y = 0, w = 0, h = 0;
  if (m->left <= m->right) {
    x = m->left;
    y = m->top;
    w = m->right - m->left;
    h = m->bottom - m->top;
  }
  tsr_props_add(&out->props, "tessera.bounds-x", "%lld", (long long)floor(x));
  tsr_props_add(&out->props, "tessera.bounds-y", "%lld", (long long)floor(y));
  tsr_props_add(&out->props, "tessera.bounds-width", "%lld", (long long)(ceil(x + w) - floor(x)));
  tsr_props_add(&out->props, "tessera.bounds-height", "%lld", (long long)(ceil(y + h) - floor(y)));
}

/* What OpenSlide's API shows (compat/openslide_properties.c): whether its levels have a tile
 * size (read from the levels' mosaics), and tessera.quickhash-1, OpenSlide's quickhash-1: the
 * SHA-256 of Slidedat.ini and then of the smallest level's images in Index.dat's order (none
 * when one cannot be read: the reads that need it fail then). */
static void openslide_extras(struct mirax *m, struct tsr_findings *out) {
  struct tsr_mosaic *last = out->levels[m->nlevels - 1].source_data;
  for (int32_t i = 0; i < m->nlevels; i++)
    ((struct tsr_mosaic *)out->levels[i].source_data)->openslide_tile_size = m->tile_hints;
  struct tsr_scratch buf = {0};
  for (size_t i = 0; i < last->nimages; i++) {
    const struct tsr_mosaic_image *img = &last->images[i];
    if (!tsr_scratch_reserve(&buf, img->length ? img->length : 1) ||
        tsr_file_set_read(m->files, img->file, img->offset, img->length, buf.data) != TESSERA_OK) {
      tsr_scratch_free(&buf);
      return;
    }
    tsr_sha256_update(&m->quickhash, buf.data, img->length);
  }
  tsr_scratch_free(&buf);
  char hex[65];
  tsr_sha256_hex(&m->quickhash, hex);
  tsr_props_add_string(&out->props, "tessera.quickhash-1", hex);
}

static void done(struct mirax *m) {
  tsr_free(m->folder);
  tsr_ini_free(&m->ini);
  tsr_file_set_unref(m->files);
  tsr_free(m->positions);
  tsr_free(m->active);
}

static tessera_status mirax_open(const char *path, const tessera_open_options *limits,
                                 struct tsr_findings *out, struct tsr_byte_source **source) {
  struct mirax m = {.limits = limits,
                    .left = INFINITY,
                    .top = INFINITY,
                    .right = -INFINITY,
                    .bottom = -INFINITY,
                    .tile_hints = true};
  tsr_sha256_init(&m.quickhash);
  *source = NULL;
  tessera_status st = TESSERA_OK;
  if (!(m.folder = tsr_strndup(path, strlen(path) - strlen(".mrxs"))))
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  if ((st = read_ini(&m)) != TESSERA_OK || (st = read_layout(&m)) != TESSERA_OK ||
      (st = level_geometry(&m)) != TESSERA_OK)
    goto fail;
  const char *index_name;
  if ((st = need_value(&m, HIERARCHICAL, "INDEXFILE", &index_name)) != TESSERA_OK)
    goto fail;
  if (!*index_name || strchr(index_name, '/') || strcmp(index_name, "..") == 0) {
    st = tsr_error(TESSERA_E_FORMAT,
                   "Slidedat.ini: INDEXFILE \"%.60s\" is not a name in the "
                   "slide's folder",
                   index_name);
    goto fail;
  }
  char *index_path = join(m.folder, index_name);
  if (!index_path) {
    st = tsr_error(TESSERA_E_NOMEM, "out of memory");
    goto fail;
  }
  /* Index.dat is the slide's byte source: its identity keys the slide's tiles in the caches
   * (a slide rewritten gets a new index). */
  st = tsr_file_source_open(index_path, source);
  tsr_free(index_path);
  if (st != TESSERA_OK) {
    st = tsr_error_prefix(st, "%s: ", index_name);
    goto fail;
  }
  m.index = *source;
  m.index_size = m.index->ops->size(m.index);
  if ((st = check_index_header(&m)) != TESSERA_OK || (st = read_positions(&m)) != TESSERA_OK)
    goto fail;
  uint32_t fill = m.sec[0].fill_rgb;
  uint8_t r = fill >> 16 & 0xFF, g = fill >> 8 & 0xFF, b = fill & 0xFF;
  out->background = r == g && g == b ? r : 255;
  out->levels = tsr_calloc((size_t)m.nlevels, sizeof *out->levels);
  if (!out->levels) {
    st = tsr_error(TESSERA_E_NOMEM, "out of memory");
    goto fail;
  }
  int32_t table;
  if ((st = index_i32(&m, hier_root(&m), &table)) != TESSERA_OK)
    goto fail;
  struct placed_list l = {0};
  for (int32_t i = 0; i < m.nlevels && st == TESSERA_OK; i++) {
    struct tsr_mosaic_image *images = NULL;
    size_t nimages = 0;
    l.n = 0;
    l.max = (size_t)m.images_x * (size_t)m.images_y + 64; /* one tile per image or position */
    st = read_level_index(&m, i, table, &images, &nimages, &l);
    if (st == TESSERA_OK) {
      st = make_level(&m, i, out->background, images, nimages, &l, &out->levels[i]);
      out->nlevels = i + 1; /* freed by the caller from here on */
    } else {
      tsr_free(images);
    }
  }
  tsr_free(l.item);
  if (st != TESSERA_OK)
    goto fail;
  openslide_extras(&m, out);
  for (int i = 0; i < 3; i++) {
    if (m.record[i] < 0)
      continue;
    struct tsr_level *lv;
    if ((st = make_associated(&m, i, out->background, &lv)) != TESSERA_OK)
      goto fail;
    out->associated[out->nassociated].level = lv;
    out->associated[out->nassociated].name = ASSOCIATED[i];
    out->nassociated++;
  }
  add_properties(&m, out);
  done(&m);
  return TESSERA_OK;
fail:
  done(&m);
  tsr_byte_source_close(*source);
  *source = NULL;
  return st;
}

const struct tsr_path_format tsr_format_mirax = {
    .name = "mirax",
    .detect = mirax_detect,
    .open = mirax_open,
};
