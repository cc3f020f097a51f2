/* Philips TIFF: Software "Philips ...", and an ImageDescription that is a DICOM-like XML tree
 * (<DataObject ObjectType="DPUfsImport"> of <Attribute Name="..."> elements). Glass is white.
 *
 * The pyramid is every tiled directory of the main chain, largest first, each after the first
 * marked reduced-resolution. Philips pads the smaller levels to whole tiles, so their
 * directories' sizes are too large: the true downsample of level i is the ratio of its
 * DICOM_PIXEL_SPACING (in the WSI image's PIIM_PIXEL_DATA_REPRESENTATION_SEQUENCE) to level
 * 0's, rounded to an integer, and its size is level 0's divided by that (as OpenSlide does).
 * Tiles with byte count 0 (slides scanned as several regions are sparse) read as background.
 * The label and macro are stripped directories whose description begins "Label" / "Macro",
 * or else JPEGs in base64 in the XML (PIM_DP_IMAGE_DATA of the LABELIMAGE / MACROIMAGE
 * image); one that cannot be decoded is left out, as OpenSlide leaves it out.
 *
 * Properties are OpenSlide's philips.* keys: philips.NAME for each leaf attribute of the
 * document and of its WSI image, philips.PIIM_PIXEL_DATA_REPRESENTATION_SEQUENCE[i].NAME for
 * each level's. tessera.mpp-x/y come from DICOM_PIXEL_SPACING (millimetres, row then column).
 *
 * A file that says Philips but whose description is not XML, or is XML of another kind, is
 * read as generic TIFF (as OpenSlide reads it); XML that cannot be parsed, or that lacks or
 * contradicts what the levels need, fails the open with a message saying so. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <tiff.h>

#include "alloc.h"
#include "codec/codec.h"
#include "error.h"
#include "format/format.h"
#include "format/xml.h"
#include "source/tile_source.h"

#define SCANNED_IMAGES "PIM_DP_SCANNED_IMAGES"
#define REPRESENTATIONS "PIIM_PIXEL_DATA_REPRESENTATION_SEQUENCE"
/* More vendor keys than this is no scanner's metadata; it bounds the work a hostile XML can
 * ask of the property list. */
#define MAX_PHILIPS_PROPS 4096
#define MAX_NAME 200

static const char *skip_space(const char *s) {
  while (s && (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n'))
    s++;
  return s;
}

static bool philips_detect(const struct tsr_dirs *dirs) {
  const char *d = dirs->dir[0].description;
  if (d && strncmp(d, "\xEF\xBB\xBF", 3) == 0)
    d += 3;
  return tsr_starts_with(dirs->dir[0].software, "Philips") && d && *skip_space(d) == '<';
}

/* ---- the XML tree ---- */

static const struct tsr_xml_node *attribute_named(const struct tsr_xml_node *n, const char *name) {
  for (const struct tsr_xml_node *a = tsr_xml_child(n, "Attribute"); a;
       a = tsr_xml_next(a, "Attribute")) {
    const char *an = tsr_xml_attr(a, "Name");
    if (an && strcmp(an, name) == 0)
      return a;
  }
  return NULL;
}

/* Calls fn for each DataObject in the Arrays of attribute a, in order, until it returns
 * false. */
static void each_array_object(const struct tsr_xml_node *a,
                              bool (*fn)(const struct tsr_xml_node *obj, void *ctx), void *ctx) {
  for (const struct tsr_xml_node *arr = tsr_xml_child(a, "Array"); arr;
       arr = tsr_xml_next(arr, "Array"))
    for (const struct tsr_xml_node *o = tsr_xml_child(arr, "DataObject"); o;
         o = tsr_xml_next(o, "DataObject"))
      if (!fn(o, ctx))
        return;
}

struct image_search {
  const char *type;
  const struct tsr_xml_node *first;
  size_t count;
};

static bool match_image(const struct tsr_xml_node *obj, void *ctx) {
  struct image_search *q = ctx;
  const struct tsr_xml_node *t = attribute_named(obj, "PIM_DP_IMAGE_TYPE");
  if (t && strcmp(t->text, q->type) == 0 && q->count++ == 0)
    q->first = obj;
  return true;
}

/* The scanned images (DataObjects of PIM_DP_SCANNED_IMAGES) of that PIM_DP_IMAGE_TYPE. */
static struct image_search find_images(const struct tsr_xml_node *root, const char *type) {
  struct image_search q = {type, NULL, 0};
  for (const struct tsr_xml_node *a = tsr_xml_child(root, "Attribute"); a;
       a = tsr_xml_next(a, "Attribute")) {
    const char *an = tsr_xml_attr(a, "Name");
    if (an && strcmp(an, SCANNED_IMAGES) == 0)
      each_array_object(a, match_image, &q);
  }
  return q;
}

/* ---- properties ---- */

struct prop_walk {
  struct tsr_props *props;
  size_t count;
  tessera_status st;
  const char *prefix;
  size_t index;
};

static tessera_status add_properties(struct prop_walk *w, const struct tsr_xml_node *obj,
                                     const char *prefix);

static bool add_representation(const struct tsr_xml_node *obj, void *ctx) {
  struct prop_walk *w = ctx;
  char sub[2 * MAX_NAME + 64];
  snprintf(sub, sizeof sub, "%s.%s[%zu]", w->prefix, REPRESENTATIONS, w->index++);
  struct prop_walk inner = {w->props, w->count, TESSERA_OK, NULL, 0};
  w->st = add_properties(&inner, obj, sub);
  w->count = inner.count;
  return w->st == TESSERA_OK;
}

/* OpenSlide's walk: leaf attributes become PREFIX.NAME (a later one of a name replaces an
 * earlier); the scanned images contribute their first WSI image's attributes under the same
 * prefix; each pixel data representation its own under PREFIX.SEQUENCE[i]. */
static tessera_status add_properties(struct prop_walk *w, const struct tsr_xml_node *obj,
                                     const char *prefix) {
  for (const struct tsr_xml_node *a = tsr_xml_child(obj, "Attribute"); a;
       a = tsr_xml_next(a, "Attribute")) {
    const char *name = tsr_xml_attr(a, "Name");
    if (!name)
      continue;
    if (strlen(name) > MAX_NAME)
      return tsr_error(TESSERA_E_FORMAT, "an attribute name of %zu characters", strlen(name));
    tessera_status st = TESSERA_OK;
    if (strcmp(name, SCANNED_IMAGES) == 0) {
      struct image_search q = {"WSI", NULL, 0};
      each_array_object(a, match_image, &q);
      if (q.first)
        st = add_properties(w, q.first, prefix);
    } else if (strcmp(name, REPRESENTATIONS) == 0) {
      struct prop_walk sub = {w->props, w->count, TESSERA_OK, prefix, 0};
      each_array_object(a, add_representation, &sub);
      w->count = sub.count;
      st = sub.st;
    } else if (!a->first_child) {
      if (++w->count > MAX_PHILIPS_PROPS)
        return tsr_error(TESSERA_E_LIMIT, "more than %d metadata attributes", MAX_PHILIPS_PROPS);
      char key[2 * MAX_NAME + 64];
      snprintf(key, sizeof key, "%s.%s", prefix, name);
      tsr_props_set_bytes(w->props, key, a->text, a->text_len);
    }
    if (st != TESSERA_OK)
      return st;
  }
  return TESSERA_OK;
}

/* ---- pixel spacing ---- */

/* A number as Philips writes it, perhaps in quotes, perhaps with a decimal comma. */
static bool parse_number(const char *b, const char *e, double *out) {
  while (b < e && (*b == '"' || *b == ' ' || *b == '\t'))
    b++;
  while (e > b && (e[-1] == '"' || e[-1] == ' ' || e[-1] == '\t'))
    e--;
  char buf[64];
  if (e <= b || (size_t)(e - b) >= sizeof buf)
    return false;
  memcpy(buf, b, (size_t)(e - b));
  buf[e - b] = 0;
  for (char *c = buf; *c; c++)
    if (*c == ',')
      *c = '.';
  char *end;
  *out = strtod(buf, &end);
  return *end == 0 && isfinite(*out);
}

/* "ROW COL" spacing (millimetres) as column (x) and row (y) spacing. */
static bool parse_spacing(const char *s, double *x, double *y) {
  const char *space = strchr(s, ' ');
  if (!space || strchr(space + 1, ' '))
    return false;
  return parse_number(s, space, y) && parse_number(space + 1, s + strlen(s), x) && *x > 0 && *y > 0;
}

struct spacing_list {
  const char *text[64];
  size_t n;
  bool too_many;
};

static bool collect_spacing(const struct tsr_xml_node *obj, void *ctx) {
  struct spacing_list *l = ctx;
  const char *type = tsr_xml_attr(obj, "ObjectType");
  const struct tsr_xml_node *a = attribute_named(obj, "DICOM_PIXEL_SPACING");
  if (!type || strcmp(type, "PixelDataRepresentation") != 0 || !a)
    return true;
  if (l->n == sizeof l->text / sizeof l->text[0]) {
    l->too_many = true;
    return false;
  }
  l->text[l->n++] = a->text;
  return true;
}

/* The levels' true sizes from the spacing of each pixel data representation of the WSI. */
static tessera_status correct_levels(const struct tsr_dirs *dirs, const struct tsr_xml_node *wsi,
                                     struct tsr_findings *out) {
  struct spacing_list l = {.n = 0};
  const struct tsr_xml_node *seq = attribute_named(wsi, REPRESENTATIONS);
  if (seq)
    each_array_object(seq, collect_spacing, &l);
  if (l.too_many || l.n != (size_t)out->nlevels)
    return tsr_error(TESSERA_E_FORMAT,
                     "the XML gives the pixel spacing of %s%zu levels, the file has %d",
                     l.too_many ? "more than " : "", l.n, out->nlevels);
  out->level_sizes = tsr_calloc((size_t)out->nlevels, sizeof *out->level_sizes);
  if (!out->level_sizes)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  const struct tsr_level *l0 = &dirs->dir[out->level_dirs[0]].level;
  double x0 = 0, y0 = 0;
  for (int32_t i = 0; i < out->nlevels; i++) {
    const struct tsr_level *lv = &dirs->dir[out->level_dirs[i]].level;
    double x, y;
    if (!parse_spacing(l.text[i], &x, &y))
      return tsr_error(TESSERA_E_FORMAT, "level %d: cannot read the pixel spacing \"%.64s\"", i,
                       l.text[i]);
    struct tsr_level_size *sz = &out->level_sizes[i];
    if (i == 0) {
      x0 = x;
      y0 = y;
      *sz = (struct tsr_level_size){lv->width, lv->height, 1.0};
      continue;
    }
    /* Downsamples are integers in every Philips file seen; rounding keeps float error out. */
    double ds = round((x / x0 + y / y0) / 2);
    if (!(ds >= 1 && ds <= (double)l0->width))
      return tsr_error(TESSERA_E_FORMAT, "level %d: the pixel spacing gives a downsample of %g", i,
                       ds);
    *sz = (struct tsr_level_size){(int64_t)((double)l0->width / ds),
                                  (int64_t)((double)l0->height / ds), ds};
    if (sz->width < 1 || sz->height < 1 || sz->width > lv->width || sz->height > lv->height)
      return tsr_error(TESSERA_E_FORMAT,
                       "level %d: the pixel spacing makes it %lldx%lld, but its directory "
                       "holds %lldx%lld",
                       i, (long long)sz->width, (long long)sz->height, (long long)lv->width,
                       (long long)lv->height);
  }
  return TESSERA_OK;
}

/* ---- levels and associated images ---- */

static tessera_status find_directories(const struct tsr_dirs *dirs, struct tsr_findings *out) {
  out->level_dirs = tsr_calloc(dirs->n, sizeof *out->level_dirs);
  if (!out->level_dirs)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  for (size_t i = 0; i < dirs->n; i++) {
    const struct tsr_dir *d = &dirs->dir[i];
    if (d->parent >= 0)
      continue;
    if (d->level.tiled) {
      if (out->nlevels > 0) {
        const struct tsr_level *prev = &dirs->dir[out->level_dirs[out->nlevels - 1]].level;
        if (!(d->subfile_type & FILETYPE_REDUCEDIMAGE))
          return tsr_error(TESSERA_E_FORMAT, "directory %zu is tiled but not reduced-resolution",
                           i);
        if (d->level.width > prev->width || d->level.height > prev->height)
          return tsr_error(TESSERA_E_FORMAT, "directory %zu is larger than the level before it", i);
      }
      out->level_dirs[out->nlevels++] = i;
    } else if (tsr_starts_with(d->description, "Label")) {
      tsr_findings_add_associated(out, i, "label");
    } else if (tsr_starts_with(d->description, "Macro")) {
      tsr_findings_add_associated(out, i, "macro");
    }
  }
  if (out->nlevels == 0)
    return tsr_error(TESSERA_E_FORMAT, "no tiled directory holds the slide");
  return TESSERA_OK;
}

struct jpeg_info {
  uint32_t width, height;
  uint8_t components;
  int adobe_transform; /* -1: no Adobe marker */
};

/* The frame header of a JPEG held in memory, found by walking its markers. */
static bool read_jpeg_info(const uint8_t *d, size_t n, struct jpeg_info *ji) {
  ji->adobe_transform = -1;
  if (n < 4 || d[0] != 0xFF || d[1] != 0xD8)
    return false;
  for (size_t p = 2; p + 4 <= n;) {
    if (d[p] != 0xFF)
      return false;
    uint8_t m = d[p + 1];
    if (m == 0xFF) {
      p++; /* fill byte */
      continue;
    }
    if (m == 0x01 || (m >= 0xD0 && m <= 0xD7)) {
      p += 2;
      continue;
    }
    size_t len = (size_t)d[p + 2] << 8 | d[p + 3];
    if (m == 0xD8 || m == 0xD9 || m == 0xDA || len < 2 || len > n - p - 2)
      return false; /* no frame header before the image data */
    const uint8_t *seg = d + p + 4;
    size_t seg_len = len - 2;
    if (m == 0xEE && seg_len >= 12 && memcmp(seg, "Adobe", 5) == 0)
      ji->adobe_transform = seg[11];
    if (m == 0xC0 || m == 0xC1 || m == 0xC2) {
      if (seg_len < 6 || seg[0] != 8)
        return false;
      ji->height = (uint32_t)seg[1] << 8 | seg[2];
      ji->width = (uint32_t)seg[3] << 8 | seg[4];
      ji->components = seg[5];
      return ji->width > 0 && ji->height > 0 && (ji->components == 1 || ji->components == 3);
    }
    if (m >= 0xC3 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC)
      return false; /* lossless, hierarchical or arithmetic: not for this reader */
    p += 2 + len;
  }
  return false;
}

/* A level of one tile whose bytes are the JPEG (taken over), held in memory and read by
 * tsr_memory_tiles. */
static struct tsr_level *jpeg_level(uint8_t *jpeg, size_t len, const struct jpeg_info *ji,
                                    uint32_t directory) {
  struct tsr_level *lv = tsr_calloc(1, sizeof *lv);
  struct tsr_memory_image *image = tsr_malloc(sizeof *image);
  if (!lv || !image || !(lv->offsets = tsr_calloc(1, sizeof *lv->offsets)) ||
      !(lv->bytecounts = tsr_calloc(1, sizeof *lv->bytecounts))) {
    if (lv)
      tsr_level_free(lv);
    tsr_free(lv);
    tsr_free(image);
    tsr_free(jpeg);
    return NULL;
  }
  *image = (struct tsr_memory_image){jpeg, len};
  lv->source = &tsr_memory_tiles;
  lv->source_data = image;
  lv->width = lv->tile_w = ji->width;
  lv->height = lv->tile_h = ji->height;
  lv->tiled = true;
  lv->across = lv->down = 1;
  lv->ntiles = 1;
  lv->bytecounts[0] = len;
  lv->directory = directory;
  struct tsr_pixel_format *f = &lv->fmt;
  f->compression = COMPRESSION_JPEG;
  f->spp = ji->components;
  f->photometric = ji->components == 1        ? PHOTOMETRIC_MINISBLACK
                   : ji->adobe_transform == 0 ? PHOTOMETRIC_RGB
                                              : PHOTOMETRIC_YCBCR;
  f->predictor = 1;
  f->ycbcr_sub[0] = f->ycbcr_sub[1] = 1;
  tsr_codec_resolve(f, 8, SAMPLEFORMAT_UINT, PLANARCONFIG_CONTIG, 0, EXTRASAMPLE_UNSPECIFIED);
  return lv;
}

/* The label or macro from the XML, unless a directory gave it already. One that is not
 * there or cannot be decoded is left out (the slide is still readable without it). */
static void add_xml_image(const struct tsr_dirs *dirs, const struct tsr_xml_node *root,
                          const char *type, const char *name, struct tsr_findings *out) {
  for (size_t i = 0; i < out->nassociated; i++)
    if (strcmp(out->associated[i].name, name) == 0)
      return;
  if (out->nassociated == TSR_MAX_ASSOCIATED)
    return;
  const struct tsr_xml_node *data =
      attribute_named(find_images(root, type).first, "PIM_DP_IMAGE_DATA");
  unsigned char *jpeg;
  size_t len;
  struct jpeg_info ji;
  if (!data || !tsr_base64_decode(data->text, data->text_len, &jpeg, &len))
    return;
  if (!read_jpeg_info(jpeg, len, &ji)) {
    tsr_free(jpeg);
    return;
  }
  /* A directory number no TIFF directory has, so the tile cache keys it apart. */
  struct tsr_level *lv = jpeg_level(jpeg, len, &ji, (uint32_t)(dirs->n + out->nassociated));
  if (!lv)
    return;
  size_t k = out->nassociated;
  tsr_findings_add_associated(out, dirs->n, name);
  if (out->nassociated > k) {
    out->associated[k].level = lv;
  } else {
    tsr_level_free(lv);
    tsr_free(lv);
  }
}

static void add_mpp(struct tsr_props *props) {
  const char *spacing = tsr_props_get(props, "philips.DICOM_PIXEL_SPACING");
  double x, y;
  if (spacing && parse_spacing(spacing, &x, &y)) {
    tsr_props_add_double(props, "tessera.mpp-x", 1e3 * x);
    tsr_props_add_double(props, "tessera.mpp-y", 1e3 * y);
  }
}

static tessera_status open_document(const struct tsr_dirs *dirs, const struct tsr_xml_node *root,
                                    struct tsr_findings *out) {
  struct image_search wsi = find_images(root, "WSI");
  if (wsi.count != 1)
    return tsr_error(TESSERA_E_FORMAT, "the XML describes %zu WSI images, not one", wsi.count);
  tessera_status st = find_directories(dirs, out);
  if (st == TESSERA_OK)
    st = correct_levels(dirs, wsi.first, out);
  struct prop_walk w = {&out->props, 0, TESSERA_OK, NULL, 0};
  if (st == TESSERA_OK)
    st = add_properties(&w, root, "philips");
  if (st != TESSERA_OK)
    return st;
  add_mpp(&out->props);
  add_xml_image(dirs, root, "LABELIMAGE", "label", out);
  add_xml_image(dirs, root, "MACROIMAGE", "macro", out);
  out->background = 255;
  tsr_props_add_string(&out->props, "tessera.background-color", "FFFFFF");
  return TESSERA_OK;
}

static tessera_status philips_open(struct tsr_dirs *dirs, struct tsr_findings *out) {
  const char *desc = dirs->dir[0].description;
  struct tsr_xml_doc *doc;
  tessera_status st = tsr_xml_parse(desc, strlen(desc), &doc);
  if (st != TESSERA_OK)
    return tsr_error_prefix(st, "Philips ImageDescription: ");
  const struct tsr_xml_node *root = tsr_xml_root(doc);
  const char *type = tsr_xml_attr(root, "ObjectType");
  if (!tsr_xml_is(root, "DataObject") || !type || strcmp(type, "DPUfsImport") != 0) {
    tsr_xml_free(doc);
    out->vendor = tsr_vendor_generic.name;
    return tsr_vendor_generic.open(dirs, out);
  }
  st = open_document(dirs, root, out);
  tsr_xml_free(doc);
  return st == TESSERA_OK ? st : tsr_error_prefix(st, "Philips: ");
}

const struct tsr_vendor tsr_vendor_philips = {"philips", philips_detect, philips_open};
