/* OME-TIFF: OME-XML (schema 2016-06) in the first directory's ImageDescription. Each <Image>
 * is a series whose planes are TIFF directories (<TiffData IFD="n">, IFD 0 when not given);
 * its smaller resolutions are SubIFDs of its first plane's directory (the OME-TIFF pyramid
 * convention).
 *
 * The slide is the first image whose first plane is stored as RGB (3 or 4 samples per pixel
 * in one directory), or the first image when no image is: a fluorescence stack then shows its
 * first plane. Other images named "label", "macro" or "thumbnail" are associated images.
 *
 * Properties (our own design; OpenSlide 3.4.1 does not know OME-TIFF):
 *   ome.<attribute>              every attribute of the slide image's <Pixels> as written
 *                                (ome.PhysicalSizeX, ome.PhysicalSizeXUnit, ome.SizeC, ...)
 *   ome.image.name, .id, .acquisition-date, .description
 *   ome.image-index, ome.image-count   which <Image> is the slide, of how many
 *   ome.channel-count, ome.channel[i].name, .id, .samples-per-pixel, .color
 *                                (the first 256 channels)
 *   ome.creator                  the Creator attribute of <OME>
 *   ome.objective.nominal-magnification   of the objective the image's settings name
 * tessera.mpp-x/y come from PhysicalSizeX/Y in any length unit of the schema from pm to m
 * (micrometres when no unit is given); a size that is not a positive number, or in another
 * unit, gives no mpp. tessera.objective-power is the nominal magnification; tessera.comment
 * the image's description. The background is unknown (0, as generic TIFF).
 *
 * A description that is not well-formed XML, an image without pixels, a TiffData that points
 * past the file's directories, or pixel sizes that disagree with the directory's fail the open
 * with a message saying so. An OME document with no image at all (BinaryOnly: the metadata
 * lives in a companion file) is read as generic TIFF. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <tiff.h>

#include "alloc.h"
#include "error.h"
#include "format/format.h"
#include "format/xml.h"

#define MAX_CHANNEL_PROPS 256

/* Skips white space, the XML declaration, processing instructions, comments and a document
 * type declaration (which the parser then refuses, with a message, as an OME document's). */
static const char *skip_prolog(const char *s) {
  if (strncmp(s, "\xEF\xBB\xBF", 3) == 0)
    s += 3;
  for (;;) {
    while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n')
      s++;
    const char *close = NULL;
    if (strncmp(s, "<?", 2) == 0) {
      close = "?>";
    } else if (strncmp(s, "<!--", 4) == 0) {
      close = "-->";
    } else if (strncmp(s, "<!DOCTYPE", 9) == 0) {
      const char *subset = strpbrk(s, "[>");
      close = subset && *subset == '[' ? "]>" : ">";
    }
    if (!close)
      return s;
    const char *e = strstr(s + 2, close);
    if (!e)
      return s;
    s = e + strlen(close);
  }
}

/* The root element is OME (perhaps with a namespace prefix). */
static bool ome_detect(const struct tsr_dirs *dirs) {
  const char *d = dirs->dir[0].description;
  if (!d)
    return false;
  d = skip_prolog(d);
  if (*d++ != '<')
    return false;
  size_t n = strcspn(d, " \t\r\n/>");
  const char *colon = memchr(d, ':', n);
  const char *local = colon ? colon + 1 : d;
  return (size_t)(d + n - local) == 3 && memcmp(local, "OME", 3) == 0;
}

/* A non-negative decimal integer, strictly. */
static bool parse_index(const char *s, uint64_t *out) {
  if (!s || *s < '0' || *s > '9')
    return false;
  uint64_t v = 0;
  for (; *s >= '0' && *s <= '9'; s++) {
    if (v > (UINT64_MAX - 9) / 10)
      return false;
    v = v * 10 + (uint64_t)(*s - '0');
  }
  *out = v;
  return *s == 0;
}

static bool parse_positive(const char *s, double *out) {
  if (!s || !*s)
    return false;
  char *end;
  *out = strtod(s, &end);
  return *end == 0 && isfinite(*out) && *out > 0;
}

/* ---- images and their directories ---- */

struct image {
  const struct tsr_xml_node *node, *pixels;
  size_t dir; /* index into dirs of its first plane */
};

/* The directory of the image's first plane (C, Z and T all 0); im->dir is SIZE_MAX when the
 * image has no plane in this file (MetadataOnly, or BinData). */
static tessera_status first_plane(const struct tsr_dirs *dirs, size_t index, struct image *im) {
  im->dir = SIZE_MAX;
  const struct tsr_xml_node *td = tsr_xml_child(im->pixels, "TiffData");
  for (; td; td = tsr_xml_next(td, "TiffData")) {
    const char *c = tsr_xml_attr(td, "FirstC"), *z = tsr_xml_attr(td, "FirstZ"),
               *t = tsr_xml_attr(td, "FirstT");
    if ((!c || strcmp(c, "0") == 0) && (!z || strcmp(z, "0") == 0) && (!t || strcmp(t, "0") == 0))
      break;
  }
  if (!td)
    return TESSERA_OK;
  const char *ifd_attr = tsr_xml_attr(td, "IFD");
  uint64_t ifd = 0;
  if (ifd_attr && !parse_index(ifd_attr, &ifd))
    return tsr_error(TESSERA_E_FORMAT, "image %zu: TiffData IFD \"%.32s\" is not a number", index,
                     ifd_attr);
  /* The main chain's directories come first in dirs, in file order. */
  uint64_t chain = 0;
  while (chain < dirs->n && dirs->dir[chain].parent < 0)
    chain++;
  if (ifd >= chain)
    return tsr_error(TESSERA_E_FORMAT,
                     "image %zu: its TiffData names IFD %llu, but the file has %llu", index,
                     (unsigned long long)ifd, (unsigned long long)chain);
  im->dir = (size_t)ifd;
  return TESSERA_OK;
}

/* The size the XML gives must be the size of the directory (a lying size is damage). */
static tessera_status check_size(const struct tsr_dirs *dirs, size_t index,
                                 const struct image *im) {
  uint64_t w, h;
  const char *sw = tsr_xml_attr(im->pixels, "SizeX"), *sh = tsr_xml_attr(im->pixels, "SizeY");
  if (!parse_index(sw, &w) || !parse_index(sh, &h))
    return tsr_error(TESSERA_E_FORMAT, "image %zu: Pixels has no valid SizeX and SizeY", index);
  const struct tsr_level *lv = &dirs->dir[im->dir].level;
  if (w != (uint64_t)lv->width || h != (uint64_t)lv->height)
    return tsr_error(TESSERA_E_FORMAT,
                     "image %zu is %llux%llu in the XML, but its directory %zu is %lldx%lld", index,
                     (unsigned long long)w, (unsigned long long)h, im->dir, (long long)lv->width,
                     (long long)lv->height);
  return TESSERA_OK;
}

static bool is_rgb(const struct tsr_dirs *dirs, const struct image *im) {
  const struct tsr_pixel_format *f = &dirs->dir[im->dir].level.fmt;
  return (f->spp == 3 || f->spp == 4) &&
         (f->photometric == PHOTOMETRIC_RGB || f->photometric == PHOTOMETRIC_YCBCR);
}

static int cmp_width(const void *a, const void *b, void *ctx) {
  const struct tsr_dirs *dirs = ctx;
  int64_t wa = dirs->dir[*(const size_t *)a].level.width;
  int64_t wb = dirs->dir[*(const size_t *)b].level.width;
  if (wa != wb)
    return wa > wb ? -1 : 1;
  return *(const size_t *)a < *(const size_t *)b ? -1 : 1;
}

/* The image's directory and those of its SubIFDs that are smaller, largest first, one per
 * size. */
static tessera_status pyramid(const struct tsr_dirs *dirs, size_t base, struct tsr_findings *out) {
  out->level_dirs = tsr_calloc(dirs->n, sizeof *out->level_dirs);
  if (!out->level_dirs)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  const struct tsr_level *b = &dirs->dir[base].level;
  size_t n = 0;
  out->level_dirs[n++] = base;
  for (size_t i = 0; i < dirs->n; i++) {
    const struct tsr_level *lv = &dirs->dir[i].level;
    if (dirs->dir[i].parent == (int32_t)base && lv->width <= b->width && lv->height <= b->height &&
        (lv->width < b->width || lv->height < b->height))
      out->level_dirs[n++] = i;
  }
  qsort_r(out->level_dirs + 1, n - 1, sizeof *out->level_dirs, cmp_width, (void *)dirs);
  size_t kept = 1;
  for (size_t i = 1; i < n; i++) {
    const struct tsr_level *prev = &dirs->dir[out->level_dirs[kept - 1]].level;
    const struct tsr_level *lv = &dirs->dir[out->level_dirs[i]].level;
    if (lv->width == prev->width || lv->height > prev->height)
      continue; /* a second copy of one size, or not a reduction of the level above */
    out->level_dirs[kept++] = out->level_dirs[i];
  }
  out->nlevels = (int32_t)kept;
  return TESSERA_OK;
}

/* ---- properties ---- */

static const char *child_text(const struct tsr_xml_node *n, const char *name) {
  const struct tsr_xml_node *c = tsr_xml_child(n, name);
  return c ? c->text : NULL;
}

/* Micrometres per unit of the OME length units a pixel can be measured in; 0 if unknown. */
static double micrometres_per(const char *unit) {
  static const struct {
    const char *unit;
    double um;
  } units[] = {{"\xC2\xB5m", 1}, {"\xCE\xBCm", 1},      {"um", 1},
               {"pm", 1e-6},     {"\xC3\x85", 1e-4},    {"nm", 1e-3},
               {"mm", 1e3},      {"cm", 1e4},           {"dm", 1e5},
               {"m", 1e6},       {"\xE2\x84\xAB", 1e-4}};
  if (!unit)
    return 1; /* the schema's default */
  for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
    if (strcmp(unit, units[i].unit) == 0)
      return units[i].um;
  return 0;
}

static void add_mpp(struct tsr_props *p, const struct tsr_xml_node *pixels, const char *axis) {
  char size_key[32], unit_key[32];
  snprintf(size_key, sizeof size_key, "PhysicalSize%s", axis);
  snprintf(unit_key, sizeof unit_key, "PhysicalSize%sUnit", axis);
  double v, per = micrometres_per(tsr_xml_attr(pixels, unit_key));
  if (per > 0 && parse_positive(tsr_xml_attr(pixels, size_key), &v)) {
    char key[32];
    snprintf(key, sizeof key, "tessera.mpp-%c", axis[0] == 'X' ? 'x' : 'y');
    tsr_props_add_double(p, key, v * per);
  }
}

static void add_channels(struct tsr_props *p, const struct tsr_xml_node *pixels) {
  static const struct {
    const char *attr, *key;
  } fields[] = {
      {"Name", "name"}, {"ID", "id"}, {"SamplesPerPixel", "samples-per-pixel"}, {"Color", "color"}};
  size_t i = 0;
  for (const struct tsr_xml_node *c = tsr_xml_child(pixels, "Channel"); c;
       c = tsr_xml_next(c, "Channel"), i++) {
    if (i >= MAX_CHANNEL_PROPS)
      continue;
    for (size_t f = 0; f < sizeof fields / sizeof fields[0]; f++) {
      char key[64];
      snprintf(key, sizeof key, "ome.channel[%zu].%s", i, fields[f].key);
      tsr_props_add_string(p, key, tsr_xml_attr(c, fields[f].attr));
    }
  }
  tsr_props_add(p, "ome.channel-count", "%zu", i);
}

/* The nominal magnification of the objective the image's ObjectiveSettings name. */
static const char *magnification(const struct tsr_xml_node *root,
                                 const struct tsr_xml_node *image) {
  const char *id = tsr_xml_attr(tsr_xml_child(image, "ObjectiveSettings"), "ID");
  if (!id)
    return NULL;
  for (const struct tsr_xml_node *ins = tsr_xml_child(root, "Instrument"); ins;
       ins = tsr_xml_next(ins, "Instrument"))
    for (const struct tsr_xml_node *o = tsr_xml_child(ins, "Objective"); o;
         o = tsr_xml_next(o, "Objective")) {
      const char *oid = tsr_xml_attr(o, "ID");
      if (oid && strcmp(oid, id) == 0)
        return tsr_xml_attr(o, "NominalMagnification");
    }
  return NULL;
}

static void add_properties(struct tsr_props *p, const struct tsr_xml_node *root,
                           const struct image *im, size_t index, size_t count) {
  for (size_t i = 0; i < im->pixels->nattrs; i++) {
    const char *name = im->pixels->attrs[i].name, *colon = strchr(name, ':');
    if (colon)
      continue; /* xmlns:... and other namespaced attributes are not the pixels' */
    char key[300];
    if (strlen(name) < 256) {
      snprintf(key, sizeof key, "ome.%s", name);
      tsr_props_add_string(p, key, im->pixels->attrs[i].value);
    }
  }
  tsr_props_add_string(p, "ome.image.name", tsr_xml_attr(im->node, "Name"));
  tsr_props_add_string(p, "ome.image.id", tsr_xml_attr(im->node, "ID"));
  tsr_props_add_string(p, "ome.image.acquisition-date", child_text(im->node, "AcquisitionDate"));
  tsr_props_add_string(p, "ome.image.description", child_text(im->node, "Description"));
  tsr_props_add(p, "ome.image-index", "%zu", index);
  tsr_props_add(p, "ome.image-count", "%zu", count);
  tsr_props_add_string(p, "ome.creator", tsr_xml_attr(root, "Creator"));
  add_channels(p, im->pixels);
  const char *mag = magnification(root, im->node);
  double m;
  tsr_props_add_string(p, "ome.objective.nominal-magnification", mag);
  if (parse_positive(mag, &m))
    tsr_props_add_double(p, "tessera.objective-power", m);
  add_mpp(p, im->pixels, "X");
  add_mpp(p, im->pixels, "Y");
  tsr_props_add_string(p, "tessera.comment", child_text(im->node, "Description"));
}

/* ---- open ---- */

static bool named(const struct tsr_xml_node *image, const char *name) {
  const char *n = tsr_xml_attr(image, "Name");
  return n && strcasecmp(n, name) == 0;
}

static tessera_status open_document(struct tsr_dirs *dirs, const struct tsr_xml_node *root,
                                    struct tsr_findings *out) {
  struct image slide = {0};
  size_t count = 0, chosen = 0;
  bool have = false;
  for (const struct tsr_xml_node *n = tsr_xml_child(root, "Image"); n;
       n = tsr_xml_next(n, "Image"), count++) {
    struct image im = {n, tsr_xml_child(n, "Pixels"), 0};
    if (!im.pixels)
      return tsr_error(TESSERA_E_FORMAT, "image %zu has no Pixels", count);
    tessera_status st = first_plane(dirs, count, &im);
    if (st == TESSERA_OK && im.dir != SIZE_MAX)
      st = check_size(dirs, count, &im);
    if (st != TESSERA_OK)
      return st;
    if (im.dir == SIZE_MAX)
      continue;
    bool take = !have || (!is_rgb(dirs, &slide) && is_rgb(dirs, &im));
    if (take) {
      slide = im;
      chosen = count;
      have = true;
    }
  }
  if (!have) {
    if (tsr_xml_child(root, "BinaryOnly")) {
      out->vendor = tsr_vendor_generic.name;
      return tsr_vendor_generic.open(dirs, out);
    }
    return tsr_error(TESSERA_E_FORMAT, "the OME-XML describes no image stored in this file");
  }
  tessera_status st = pyramid(dirs, slide.dir, out);
  if (st != TESSERA_OK)
    return st;
  static const char *const associated[] = {"label", "macro", "thumbnail"};
  size_t index = 0;
  for (const struct tsr_xml_node *n = tsr_xml_child(root, "Image"); n;
       n = tsr_xml_next(n, "Image"), index++) {
    for (size_t a = 0; a < sizeof associated / sizeof associated[0]; a++) {
      struct image im = {n, tsr_xml_child(n, "Pixels"), 0};
      if (index != chosen && named(n, associated[a]) &&
          first_plane(dirs, index, &im) == TESSERA_OK && im.dir != SIZE_MAX && im.dir != slide.dir)
        tsr_findings_add_associated(out, im.dir, associated[a]);
    }
  }
  add_properties(&out->props, root, &slide, chosen, count);
  out->background = 0;
  return TESSERA_OK;
}

static tessera_status ome_open(struct tsr_dirs *dirs, struct tsr_findings *out) {
  const char *desc = dirs->dir[0].description;
  struct tsr_xml_doc *doc;
  tessera_status st = tsr_xml_parse(desc, strlen(desc), &doc);
  if (st != TESSERA_OK)
    return tsr_error_prefix(st, "OME-TIFF ImageDescription: ");
  st = open_document(dirs, tsr_xml_root(doc), out);
  tsr_xml_free(doc);
  return st == TESSERA_OK ? st : tsr_error_prefix(st, "OME-TIFF: ");
}

const struct tsr_vendor tsr_vendor_ome = {"ome-tiff", ome_detect, ome_open};
