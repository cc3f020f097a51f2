/* Opening and closing slides, and what an open slide tells about itself. */
#include <inttypes.h>
#include <math.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "abi.h"
#include "alloc.h"
#include "error.h"
#include "format/format.h"
#include "props.h"
#include "slide_internal.h"
#include "source/tile_source.h"
#include "tiff/walk.h"

TESSERA_API const char *tessera_version(void) { return TESSERA_VERSION_STRING; }

TESSERA_API void tessera_open_options_init_sized(tessera_open_options *o, size_t size) {
  static const tessera_open_options defaults = {
      .struct_size = sizeof defaults,
      .max_directories = 4096,
      .max_dimension = (int64_t)1 << 24,
      .max_tile_bytes = (uint64_t)256 << 20,
      .max_decoded_tile_bytes = (uint64_t)1 << 30,
      .max_read_bytes = (uint64_t)4 << 30,
      .remote_timeout_ms = -1,
      .remote_retries = -1,
      .remote_requests = -1,
      .remote_block_kib = -1,
      .remote_cache_mib = -1,
  };
  tsr_abi_init(o, size, &defaults, sizeof defaults);
}

TESSERA_API tessera_status tessera_slide_limits(const tessera_slide *s, tessera_open_options *out) {
  if (!s || !out)
    return tsr_error(TESSERA_E_ARGUMENT, "NULL slide or limits");
  tessera_status st = tsr_abi_check(out, "limits");
  if (st == TESSERA_OK)
    tsr_abi_copy_out(out, &s->limits, sizeof s->limits);
  return st;
}

void tsr_level_free(struct tsr_level *lv) {
  tsr_free(lv->offsets);
  tsr_free(lv->bytecounts);
  tsr_free(lv->fmt.jpeg_tables);
  lv->offsets = lv->bytecounts = NULL;
  lv->fmt.jpeg_tables = NULL;
  if (lv->source && lv->source->free)
    lv->source->free(lv->source_data);
  lv->source_data = NULL;
}

TESSERA_API void tessera_close(tessera_slide *s) {
  if (!s)
    return;
  tsr_byte_source_close(s->source);
  for (size_t i = 0; s->levels && i < (size_t)s->nlevels + s->nassociated + s->nareas; i++)
    tsr_level_free(&s->levels[i]);
  tsr_free(s->levels);
  tsr_free(s->regions);
  for (size_t i = 0; i < s->nprops; i++) {
    tsr_free(s->props[i].key);
    tsr_free(s->props[i].value);
  }
  tsr_free(s->props);
  for (size_t i = 0; i < s->nassociated; i++)
    tsr_free(s->associated[i]);
  tsr_free(s->associated);
  tsr_free(s->path);
  tsr_free(s->icc);
  tsr_free(s);
}

/* d0: the first TIFF directory, or NULL for a format that is no TIFF. */
static tessera_status collect_properties(tessera_slide *s, const struct tsr_dir *d0,
                                         bool hide_description, struct tsr_props *vendor) {
  struct tsr_props p = {0};
  if (!d0)
    goto vendor_keys;
  if (!hide_description)
    tsr_props_add_string(&p, "tiff.ImageDescription", d0->description);
  tsr_props_add_string(&p, "tiff.Software", d0->software);
  tsr_props_add_string(&p, "tiff.Make", d0->make);
  tsr_props_add_string(&p, "tiff.Model", d0->model);
  tsr_props_add_string(&p, "tiff.DateTime", d0->datetime);
  tsr_props_add_string(&p, "tiff.Artist", d0->artist);
  tsr_props_add_string(&p, "tiff.Copyright", d0->copyright);
  tsr_props_add_string(&p, "tiff.HostComputer", d0->host);
  if (d0->has_resolution) {
    tsr_props_add(&p, "tiff.XResolution", "%g", (double)d0->xres);
    tsr_props_add(&p, "tiff.YResolution", "%g", (double)d0->yres);
  }
  /* The unit has a default (inch), so like OpenSlide we always report it. */
  tsr_props_add_string(&p, "tiff.ResolutionUnit",
                       d0->resolution_unit == 3   ? "centimeter"
                       : d0->resolution_unit == 1 ? "none"
                                                  : "inch");
vendor_keys:
  tsr_props_take(&p, vendor);
  tsr_props_add_string(&p, "tessera.vendor", s->vendor);
  tsr_props_add(&p, "tessera.background", "%u", s->background);
  tsr_props_add(&p, "tessera.level-count", "%d", s->nlevels);
  for (int32_t i = 0; i < s->nlevels; i++) {
    const struct tsr_level *lv = &s->levels[i];
    char key[64];
    snprintf(key, sizeof key, "tessera.level[%d].width", i);
    tsr_props_add(&p, key, "%" PRId64, lv->width);
    snprintf(key, sizeof key, "tessera.level[%d].height", i);
    tsr_props_add(&p, key, "%" PRId64, lv->height);
    snprintf(key, sizeof key, "tessera.level[%d].downsample", i);
    tsr_props_add(&p, key, "%.17g", lv->downsample);
    snprintf(key, sizeof key, "tessera.level[%d].tile-width", i);
    tsr_props_add(&p, key, "%u", lv->tile_w);
    snprintf(key, sizeof key, "tessera.level[%d].tile-height", i);
    tsr_props_add(&p, key, "%u", lv->tile_h);
  }
  tsr_props_sort(&p);
  s->props = p.items;
  s->nprops = p.n;
  if (p.failed)
    return tsr_error(TESSERA_E_NOMEM, "out of memory for properties");
  return TESSERA_OK;
}

/* Level i, a stored level (taken already: it is larger, so earlier) decoded at a JPEG scale:
 * its tables are copied, for every level owns its own. */
static tessera_status take_scaled_level(tessera_slide *s, const struct tsr_findings *found,
                                        int32_t i) {
  const struct tsr_level *stored = NULL;
  for (int32_t j = 0; j < i; j++)
    if (found->level_dirs[j] == found->level_dirs[i] && found->level_scale[j] <= 1)
      stored = &s->levels[j];
  if (!stored || (stored->source_data && stored->source != &tsr_ndpi_intervals))
    return tsr_error(TESSERA_E_FORMAT, "a scaled level has no stored level it can scale");
  uint32_t k = found->level_scale[i];
  struct tsr_level *lv = &s->levels[i];
  *lv = *stored;
  lv->width = stored->width / k;
  lv->height = stored->height / k;
  lv->tile_w = stored->tile_w / k;
  lv->tile_h = stored->tile_h / k;
  lv->fmt.jpeg_scale = (uint8_t)k;
  size_t bytes = (size_t)stored->ntiles * sizeof *stored->offsets;
  lv->offsets = tsr_malloc(bytes);
  lv->bytecounts = tsr_malloc(bytes);
  lv->fmt.jpeg_tables = stored->fmt.jpeg_tables_len ? tsr_malloc(stored->fmt.jpeg_tables_len) : NULL;
  lv->source_data = NULL;
  const struct tsr_ndpi_header *h = stored->source_data;
  size_t hbytes = h ? sizeof *h + h->len : 0;
  if (h)
    lv->source_data = tsr_malloc(hbytes);
  if (!lv->offsets || !lv->bytecounts || (stored->fmt.jpeg_tables_len && !lv->fmt.jpeg_tables) ||
      (h && !lv->source_data)) {
    tsr_level_free(lv);
    return tsr_error(TESSERA_E_NOMEM, "out of memory for level %d", i);
  }
  memcpy(lv->offsets, stored->offsets, bytes);
  memcpy(lv->bytecounts, stored->bytecounts, bytes);
  if (lv->fmt.jpeg_tables)
    memcpy(lv->fmt.jpeg_tables, stored->fmt.jpeg_tables, stored->fmt.jpeg_tables_len);
  if (h)
    memcpy(lv->source_data, h, hbytes);
  return TESSERA_OK;
}

/* The pyramid's levels, then the associated images as levels of their own after them (at
 * s->levels[s->nlevels + i], downsample 1), so that they read through the same code. */
static tessera_status take_levels(tessera_slide *s, struct tsr_dirs *dirs,
                                  const struct tsr_findings *found) {
  size_t n = (size_t)found->nlevels + found->nassociated + found->nareas;
  s->levels = tsr_calloc(n, sizeof *s->levels);
  s->regions = tsr_calloc(n, sizeof *s->regions);
  if (!s->levels || !s->regions)
    return tsr_error(TESSERA_E_NOMEM, "out of memory for levels");
  if (found->levels) { /* a format that is no TIFF made its levels whole */
    for (int32_t i = 0; i < found->nlevels; i++) {
      s->levels[i] = found->levels[i];
      memset(&found->levels[i], 0, sizeof found->levels[i]);
      s->nlevels++;
    }
    return TESSERA_OK;
  }
  const struct tsr_level *first = &dirs->dir[found->level_dirs[0]].level;
  double w0 = (double)first->width, h0 = (double)first->height;
  for (int32_t i = 0; i < found->nlevels; i++) {
    if (found->level_scale && found->level_scale[i] > 1) {
      tessera_status st = take_scaled_level(s, found, i);
      if (st != TESSERA_OK)
        return st;
      s->levels[i].downsample = (w0 / (double)s->levels[i].width +
                                 h0 / (double)s->levels[i].height) / 2.0;
      s->nlevels++;
      continue;
    }
    struct tsr_level *lv = &dirs->dir[found->level_dirs[i]].level;
    s->levels[i] = *lv;
    s->levels[i].downsample =
        i == 0 ? 1.0 : (w0 / (double)lv->width + h0 / (double)lv->height) / 2.0;
    if (found->level_origin) {
      s->levels[i].image_w = found->level_origin[i].image_w ? found->level_origin[i].image_w
                                                            : lv->width;
      s->levels[i].image_h = found->level_origin[i].image_h ? found->level_origin[i].image_h
                                                            : lv->height;
      s->levels[i].origin_x = found->level_origin[i].x;
      s->levels[i].origin_y = found->level_origin[i].y;
    }
    if (found->level_sizes) {
      s->levels[i].width = found->level_sizes[i].width;
      s->levels[i].height = found->level_sizes[i].height;
      s->levels[i].downsample = found->level_sizes[i].downsample;
    }
    memset(lv, 0, sizeof *lv); /* ownership of the tables moved to the slide */
    s->nlevels++;
  }
  return TESSERA_OK;
}

static tessera_status take_associated(tessera_slide *s, struct tsr_dirs *dirs,
                                      const struct tsr_findings *found) {
  if (found->nassociated == 0)
    return TESSERA_OK;
  s->associated = tsr_calloc(found->nassociated, sizeof *s->associated);
  if (!s->associated)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  for (size_t i = 0; i < found->nassociated; i++) {
    struct tsr_level *lv = found->associated[i].level ? found->associated[i].level
                                                      : &dirs->dir[found->associated[i].dir].level;
    if (!lv->offsets)
      continue; /* taken already (a vendor named one directory twice) */
    if (!(s->associated[s->nassociated] = tsr_strdup(found->associated[i].name)))
      return tsr_error(TESSERA_E_NOMEM, "out of memory");
    s->levels[s->nlevels + (int32_t)s->nassociated] = *lv;
    s->levels[s->nlevels + (int32_t)s->nassociated].downsample = 1.0;
    memset(lv, 0, sizeof *lv);
    s->nassociated++;
  }
  return TESSERA_OK;
}

/* The images placed in composite levels beyond each level's first, after the associated
 * images, each chained behind the images of its level before it. Each is a copy of its
 * directory's tables (a directory may be placed twice, or be a level too: OpenSlide lets
 * several main images name one). */
static tessera_status take_areas(tessera_slide *s, struct tsr_dirs *dirs,
                                 const struct tsr_findings *found) {
  for (size_t i = 0; i < found->nareas; i++) {
    const struct tsr_level_area *a = &found->areas[i];
    const struct tsr_level *from = a->dir < dirs->n ? &dirs->dir[a->dir].level : NULL;
    /* a directory some level took already: that level's tables */
    size_t taken = (size_t)s->nlevels + s->nassociated + s->nareas;
    for (size_t j = 0; from && !from->offsets && j < taken; j++)
      if (s->levels[j].directory == a->dir && s->levels[j].offsets &&
          s->levels[j].fmt.jpeg_scale <= 1)
        from = &s->levels[j];
    if (a->level < 0 || a->level >= s->nlevels || !from || !from->offsets || from->source_data)
      return tsr_error(TESSERA_E_FORMAT, "directory %zu is no image to place in level %d", a->dir,
                       a->level);
    int32_t at = (int32_t)taken;
    const struct tsr_level *owner = &s->levels[a->level];
    struct tsr_level *area = &s->levels[at];
    *area = *from;
    size_t bytes = (size_t)from->ntiles * sizeof *from->offsets;
    area->offsets = tsr_malloc(bytes ? bytes : 1);
    area->bytecounts = tsr_malloc(bytes ? bytes : 1);
    area->fmt.jpeg_tables =
        from->fmt.jpeg_tables_len ? tsr_malloc(from->fmt.jpeg_tables_len) : NULL;
    s->nareas++; /* freed with the slide from here on */
    if (!area->offsets || !area->bytecounts ||
        (from->fmt.jpeg_tables_len && !area->fmt.jpeg_tables))
      return tsr_error(TESSERA_E_NOMEM, "out of memory for an image of level %d", a->level);
    memcpy(area->offsets, from->offsets, bytes);
    memcpy(area->bytecounts, from->bytecounts, bytes);
    if (area->fmt.jpeg_tables)
      memcpy(area->fmt.jpeg_tables, from->fmt.jpeg_tables, from->fmt.jpeg_tables_len);
    /* its own size (a level copied from keeps it as image_w/h) */
    area->image_w = from->image_w ? from->image_w : from->width;
    area->image_h = from->image_h ? from->image_h : from->height;
    area->width = owner->width;
    area->height = owner->height;
    area->downsample = owner->downsample;
    area->origin_x = a->x;
    area->origin_y = a->y;
    area->next_area = 0;
    struct tsr_level *last = &s->levels[a->level];
    while (last->next_area)
      last = &s->levels[last->next_area];
    last->next_area = at;
  }
  return TESSERA_OK;
}

tessera_status tsr_slide_open_source(struct tsr_byte_source *src, const char *name,
                                     const tessera_open_options *options, tessera_slide **out) {
  *out = NULL;
  tessera_open_options limits;
  tessera_open_options_init(&limits);
  tessera_status st = tsr_abi_copy_in(&limits, sizeof limits, options, "open options");
  if (st != TESSERA_OK) {
    tsr_byte_source_close(src);
    return st;
  }
  tessera_slide *s = tsr_calloc(1, sizeof *s);
  if (!s) {
    tsr_byte_source_close(src);
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  }
  s->source = src;
  s->file_size = src->ops->size(src);
  src->ops->identity(src, &s->id);
  s->limits = limits;
  struct tsr_dirs dirs = {0};
  struct tsr_findings found = {0};
  tsr_source_failure_clear();
  if (!(s->path = tsr_strdup(name)))
    st = tsr_error(TESSERA_E_NOMEM, "out of memory");
  else if ((st = tsr_tiff_walk(s->source, &s->limits, &dirs)) == TESSERA_OK &&
           (st = tsr_format_detect(&dirs, &found)) == TESSERA_OK) {
    s->vendor = found.vendor;
    s->background = found.background;
    s->quickhash_dir = found.quickhash_dir;
    /* The profile of the directory the slide's pixels come from, taken over from the walk. */
    struct tsr_dir *d0 = &dirs.dir[found.level_dirs[0]];
    s->icc = d0->icc;
    s->icc_size = d0->icc_len;
    d0->icc = NULL;
    if ((st = take_levels(s, &dirs, &found)) == TESSERA_OK &&
        (st = take_associated(s, &dirs, &found)) == TESSERA_OK &&
        (st = take_areas(s, &dirs, &found)) == TESSERA_OK)
      st = collect_properties(s, &dirs.dir[found.props_dir], found.hide_description,
                              &found.props);
  }
  tsr_findings_free(&found);
  tsr_tiff_dirs_free(&dirs);
  /* A read that failed in the source (a network error, a caller's callback) is the cause,
   * whatever libtiff or a vendor made of the bytes missing. */
  if (st != TESSERA_OK && st != TESSERA_E_NOMEM && tsr_source_failure_raise() != TESSERA_OK)
    st = tsr_source_failure_raise();
  if (st != TESSERA_OK) {
    tessera_close(s);
    return st;
  }
  if (src->ops->opened)
    src->ops->opened(src);
  *out = s;
  return TESSERA_OK;
}

/* A slide of a format that is no TIFF (format.h's tsr_path_format). */
static tessera_status open_path_format(const struct tsr_path_format *format, const char *path,
                                       const tessera_open_options *options, tessera_slide **out) {
  tessera_open_options limits;
  tessera_open_options_init(&limits);
  tessera_status st = tsr_abi_copy_in(&limits, sizeof limits, options, "open options");
  if (st != TESSERA_OK)
    return st;
  tessera_slide *s = tsr_calloc(1, sizeof *s);
  if (!s)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  s->limits = limits;
  struct tsr_findings found = {0};
  if (!(s->path = tsr_strdup(path))) {
    st = tsr_error(TESSERA_E_NOMEM, "out of memory");
  } else if ((st = format->open(path, &s->limits, &found, &s->source)) == TESSERA_OK) {
    if (found.props.failed)
      st = tsr_error(TESSERA_E_NOMEM, "out of memory for properties");
    s->file_size = s->source->ops->size(s->source);
    s->source->ops->identity(s->source, &s->id);
    s->vendor = format->name;
    s->background = found.background;
    s->icc = found.icc;
    s->icc_size = found.icc_size;
    found.icc = NULL;
    if (st == TESSERA_OK && (st = take_levels(s, NULL, &found)) == TESSERA_OK &&
        (st = take_associated(s, NULL, &found)) == TESSERA_OK)
      st = collect_properties(s, NULL, false, &found.props);
  }
  tsr_findings_free(&found);
  if (st != TESSERA_OK) {
    tessera_close(s);
    return st;
  }
  *out = s;
  return TESSERA_OK;
}

TESSERA_API tessera_status tessera_open_ex(const char *path, const tessera_open_options *options,
                                           tessera_slide **out) {
  if (!out)
    return tsr_error(TESSERA_E_ARGUMENT, "no place to return the slide");
  *out = NULL;
  if (!path || !path[0])
    return tsr_error(TESSERA_E_ARGUMENT, "no file name");
  /* Refused before the file is opened; tsr_slide_open_source copies them in. */
  tessera_status st = options ? tsr_abi_check(options, "open options") : TESSERA_OK;
  if (st != TESSERA_OK)
    return st;
  const struct tsr_path_format *format = tsr_format_detect_path(path);
  if (format)
    return open_path_format(format, path, options, out);
  struct tsr_byte_source *src;
  st = tsr_is_url(path) ? tsr_remote_source_open(path, options, &src)
                        : tsr_file_source_open(path, &src);
  return st == TESSERA_OK ? tsr_slide_open_source(src, path, options, out) : st;
}

TESSERA_API void tessera_source_init_sized(tessera_source *source, size_t size) {
  static const tessera_source defaults = {.struct_size = sizeof defaults};
  tsr_abi_init(source, size, &defaults, sizeof defaults);
}

TESSERA_API tessera_status tessera_open_source(const tessera_source *source,
                                               const tessera_open_options *options,
                                               tessera_slide **out) {
  if (!out)
    return tsr_error(TESSERA_E_ARGUMENT, "no place to return the slide");
  *out = NULL;
  if (!source)
    return tsr_error(TESSERA_E_ARGUMENT, "no source");
  tessera_source copy;
  tessera_source_init(&copy);
  tessera_status st = tsr_abi_copy_in(&copy, sizeof copy, source, "source");
  if (st == TESSERA_OK && options)
    st = tsr_abi_check(options, "open options");
  if (st != TESSERA_OK) {
    /* The promise: close is called whatever the failure, once the source was given. */
    if (source->struct_size >= offsetof(tessera_source, close) + sizeof source->close &&
        source->close)
      source->close(source->user_data);
    return st;
  }
  struct tsr_byte_source *src;
  if ((st = tsr_callback_source_open(&copy, &src)) != TESSERA_OK)
    return st;
  return tsr_slide_open_source(src, copy.name ? copy.name : "source", options, out);
}

TESSERA_API tessera_status tessera_slide_io_stats(const tessera_slide *s, tessera_io_stats *out) {
  if (!s || !out)
    return tsr_error(TESSERA_E_ARGUMENT, "NULL slide or I/O statistics");
  tessera_status st = tsr_abi_check(out, "I/O statistics");
  if (st != TESSERA_OK)
    return st;
  tessera_io_stats full = {.struct_size = sizeof full};
  tsr_byte_source_stats(s->source, &full);
  full.struct_size = sizeof full;
  tsr_abi_copy_out(out, &full, sizeof full);
  return TESSERA_OK;
}

TESSERA_API tessera_status tessera_open(const char *path, tessera_slide **out) {
  return tessera_open_ex(path, NULL, out);
}

TESSERA_API int32_t tessera_level_count(const tessera_slide *s) { return s ? s->nlevels : 0; }

TESSERA_API tessera_status tessera_level_info_get(const tessera_slide *s, int32_t level,
                                                  tessera_level_info *info) {
  if (!s || !info)
    return tsr_error(TESSERA_E_ARGUMENT, "NULL slide or level info");
  tessera_status st = tsr_abi_check(info, "level info");
  if (st != TESSERA_OK)
    return st;
  if (level < 0 || level >= s->nlevels)
    return tsr_error(TESSERA_E_ARGUMENT, "level %d does not exist (the slide has %d)", level,
                     s->nlevels);
  const struct tsr_level *lv = &s->levels[level];
  tessera_level_info full = {
      .struct_size = sizeof full,
      .width = lv->width,
      .height = lv->height,
      .downsample = lv->downsample,
      .tile_width = (int32_t)lv->tile_w,
      .tile_height = (int32_t)lv->tile_h,
      .tiled = lv->tiled,
      .compression = lv->fmt.compression,
      .samples_per_pixel = lv->fmt.spp,
      .alpha = !lv->fmt.alpha            ? TESSERA_ALPHA_NONE
               : lv->fmt.premultiplied ? TESSERA_ALPHA_ASSOCIATED
                                       : TESSERA_ALPHA_UNASSOCIATED,
  };
  tsr_abi_copy_out(info, &full, sizeof full);
  return TESSERA_OK;
}

TESSERA_API const char *tessera_vendor(const tessera_slide *s) { return s ? s->vendor : NULL; }

TESSERA_API uint8_t tessera_background(const tessera_slide *s) { return s ? s->background : 0; }

TESSERA_API size_t tessera_property_count(const tessera_slide *s) { return s ? s->nprops : 0; }

TESSERA_API const char *tessera_property_key(const tessera_slide *s, size_t i) {
  return s && i < s->nprops ? s->props[i].key : NULL;
}

TESSERA_API const char *tessera_property_value(const tessera_slide *s, const char *key) {
  if (!s || !key)
    return NULL;
  struct tsr_property probe = {(char *)key, NULL};
  const struct tsr_property *hit =
      bsearch(&probe, s->props, s->nprops, sizeof *s->props, tsr_props_compare);
  return hit ? hit->value : NULL;
}

TESSERA_API size_t tessera_icc_profile_size(const tessera_slide *s) { return s ? s->icc_size : 0; }

TESSERA_API tessera_status tessera_icc_profile_read(const tessera_slide *s, void *dst,
                                                    size_t dst_size) {
  if (!s || !dst)
    return tsr_error(TESSERA_E_ARGUMENT, "NULL slide or destination");
  if (!s->icc)
    return tsr_error(TESSERA_E_ARGUMENT, "%s has no ICC profile", s->path);
  if (dst_size < s->icc_size)
    return tsr_error(TESSERA_E_ARGUMENT, "the ICC profile is %zu bytes, the buffer holds %zu",
                     s->icc_size, dst_size);
  memcpy(dst, s->icc, s->icc_size);
  return TESSERA_OK;
}

TESSERA_API size_t tessera_associated_image_count(const tessera_slide *s) {
  return s ? s->nassociated : 0;
}

TESSERA_API const char *tessera_associated_image_name(const tessera_slide *s, size_t i) {
  return s && i < s->nassociated ? s->associated[i] : NULL;
}
