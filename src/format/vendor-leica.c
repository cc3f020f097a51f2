/* Leica SCN: a BigTIFF whose first directory is tiled and whose ImageDescription is an XML
 * document in the Leica SCN namespace (2010/03/10 or 2010/10/01):
 *   <scn xmlns="..."><collection sizeX sizeY (nm)><barcode/>
 *     <image><creationDate/><device model version/>
 *       <pixels><dimension sizeX sizeY ifd [z]/>...</pixels>
 *       <view sizeX sizeY offsetX offsetY (nm)/>
 *       <scanSettings><objectiveSettings><objective/></objectiveSettings>
 *         <illuminationSettings><numericalAperture/><illuminationSource/></...></scanSettings>
 *     </image>...</collection></scn>
 *
 * The slide is the collection (the glass): an image whose view is the whole collection is the
 * macro (its largest dimension is the "macro" associated image); the other images lit by
 * "brightfield" are the main images (others are passed over), and their dimensions of z-plane
 * 0, largest first, are the levels: level i holds dimension i of every main image. Its pixel
 * is the least of their sizes in nm divided by that dimension's width; the level is the
 * collection at that scale (rounded up), with each image's directory placed at its view's
 * offset (truncated to whole pixels; the first at level_origin, the others as areas) and
 * background (white glass) around and between them; where they overlap the first image in
 * the document shows. That is how OpenSlide 3.4.1 composites them (painting each in turn with
 * cairo's SATURATE, which leaves what is painted already). Main images of another objective
 * or number of dimensions than the first's, or whose dimension's resolution is more than 2 %
 * from the first's, fail the open in OpenSlide's words. OpenSlide paints an image that
 * reaches past the collection beyond the level's edge too; tessera cuts it at the edge. A
 * tile an image leaves out (byte count 0; OpenSlide fails to read it) shows what lies beneath
 * it: another image, or background.
 *
 * Properties are OpenSlide's: leica.barcode (base64-decoded in the 2010/10/01 namespace),
 * leica.aperture, leica.creation-date, leica.device-model, leica.device-version,
 * leica.illumination-source, leica.objective of the main image; tessera.objective-power (the
 * objective when it is an integer), tessera.mpp-x/y from the first main image's level-0
 * directory's resolution in centimetres, tessera.region[n].x/y/width/height (each main image
 * in level-0 pixels) and tessera.bounds-* (their bounds). quickhash-1 (libtessera-openslide)
 * hashes the smallest macro directory unless the slide is one brightfield main image, no
 * other main image and at most one macro; a slide that needs the macro and has none fails.
 *
 * XML that cannot be parsed, or an SCN document without what the levels need, fails the open
 * with a message saying so; well-formed XML in another default namespace is read as generic
 * TIFF, as OpenSlide reads it. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "error.h"
#include "format/format.h"
#include "format/xml.h"

static const char *const namespaces[] = {
    "http://www.leica-microsystems.com/scn/2010/03/10",
    "http://www.leica-microsystems.com/scn/2010/10/01",
};
#define MAX_IMAGES 256
#define MAX_DIMENSIONS 64

static bool leica_detect(const struct tsr_dirs *dirs) {
  const char *d = dirs->dir[0].description;
  return dirs->dir[0].level.tiled && d &&
         (strstr(d, namespaces[0]) != NULL || strstr(d, namespaces[1]) != NULL);
}

/* ---- the document: elements in Leica's namespace, as OpenSlide's XPath finds them ---- */

/* The length of the namespace prefix of a name, its ':' included (0: none). */
static size_t prefix_len(const char *name) {
  const char *colon = strchr(name, ':');
  return colon ? (size_t)(colon - name) + 1 : 0;
}

/* Whether element e is called local in the document's namespace: written with the root's
 * prefix (none for a default namespace), which binds Leica's namespace (a child that binds
 * the prefix again is not looked for). */
static bool named(const struct tsr_xml_node *e, const char *local) {
  const struct tsr_xml_node *root = e;
  while (root->parent)
    root = root->parent;
  size_t n = prefix_len(root->name);
  return strncmp(e->name, root->name, n) == 0 && strcmp(e->name + n, local) == 0;
}

static const struct tsr_xml_node *child(const struct tsr_xml_node *n, const char *name) {
  for (const struct tsr_xml_node *c = n ? n->first_child : NULL; c; c = c->next_sibling)
    if (named(c, name))
      return c;
  return NULL;
}

static const struct tsr_xml_node *next(const struct tsr_xml_node *after, const char *name) {
  for (const struct tsr_xml_node *c = after->next_sibling; c; c = c->next_sibling)
    if (named(c, name))
      return c;
  return NULL;
}

/* The exact attribute name (no prefix set aside: "xmlns" must not match "xmlns:x"). */
static const char *attr(const struct tsr_xml_node *n, const char *name) {
  for (size_t i = 0; n && i < n->nattrs; i++)
    if (strcmp(n->attrs[i].name, name) == 0)
      return n->attrs[i].value;
  return NULL;
}

/* The text of the first element, in document order, at path (names separated by '/') below
 * n that has any: OpenSlide's "a/b/c/text()". NULL when none has. */
static const char *path_text(const struct tsr_xml_node *n, const char *path) {
  const char *slash = strchr(path, '/');
  size_t len = slash ? (size_t)(slash - path) : strlen(path);
  char local[64];
  if (len >= sizeof local)
    return NULL;
  memcpy(local, path, len);
  local[len] = 0;
  for (const struct tsr_xml_node *c = child(n, local); c; c = next(c, local)) {
    const char *t = slash ? path_text(c, slash + 1) : (c->text_len ? c->text : NULL);
    if (t)
      return t;
  }
  return NULL;
}

/* The attribute name of the first child element called element that has it. */
static const char *child_attr(const struct tsr_xml_node *n, const char *element,
                              const char *name) {
  for (const struct tsr_xml_node *c = child(n, element); c; c = next(c, element)) {
    const char *v = attr(c, name);
    if (v)
      return v;
  }
  return NULL;
}

/* An integer attribute as OpenSlide reads one: all of the value, in base 10. */
static tessera_status int_attr(const struct tsr_xml_node *n, const char *name, int64_t *out) {
  const char *v = attr(n, name);
  if (!v)
    return tsr_error(TESSERA_E_FORMAT, "<%s> has no %s", n->name, name);
  char *end;
  errno = 0;
  long long x = strtoll(v, &end, 10);
  if (!v[0] || *end || errno == ERANGE)
    return tsr_error(TESSERA_E_FORMAT, "<%s %s=\"%.40s\">: not an integer", n->name, name, v);
  *out = x;
  return TESSERA_OK;
}

struct dimension {
  int64_t dir, width, height;
  double nm_per_pixel;
};

struct image {
  const struct tsr_xml_node *node;
  const char *illumination;
  int64_t nm_across, nm_down, nm_x, nm_y;
  bool is_macro, brightfield;
  struct dimension dims[MAX_DIMENSIONS];
  size_t ndims;
};

struct collection {
  int64_t nm_across, nm_down;
  struct image *images; /* owned */
  size_t nimages;
};

/* Largest first; equal widths keep their order in the document (OpenSlide's sort is
 * stable). */
static void sort_dimensions(struct image *im) {
  for (size_t i = 1; i < im->ndims; i++) {
    struct dimension d = im->dims[i];
    size_t j = i;
    for (; j > 0 && im->dims[j - 1].width < d.width; j--)
      im->dims[j] = im->dims[j - 1];
    im->dims[j] = d;
  }
}

static tessera_status read_image(const struct tsr_xml_node *node, const struct collection *col,
                                 struct image *im) {
  im->node = node;
  const struct tsr_xml_node *view = child(node, "view");
  if (!view)
    return tsr_error(TESSERA_E_FORMAT, "an <image> has no <view>");
  tessera_status st;
  if ((st = int_attr(view, "sizeX", &im->nm_across)) != TESSERA_OK ||
      (st = int_attr(view, "sizeY", &im->nm_down)) != TESSERA_OK ||
      (st = int_attr(view, "offsetX", &im->nm_x)) != TESSERA_OK ||
      (st = int_attr(view, "offsetY", &im->nm_y)) != TESSERA_OK)
    return st;
  im->is_macro = im->nm_x == 0 && im->nm_y == 0 && im->nm_across == col->nm_across &&
                 im->nm_down == col->nm_down;
  im->illumination =
      path_text(node, "scanSettings/illuminationSettings/illuminationSource");
  im->brightfield = im->illumination && strcmp(im->illumination, "brightfield") == 0;
  for (const struct tsr_xml_node *px = child(node, "pixels"); px; px = next(px, "pixels")) {
    for (const struct tsr_xml_node *d = child(px, "dimension"); d; d = next(d, "dimension")) {
      const char *z = attr(d, "z");
      if (z && strcmp(z, "0") != 0)
        continue; /* another focal plane */
      if (im->ndims == MAX_DIMENSIONS)
        return tsr_error(TESSERA_E_LIMIT, "an image has more than %d dimensions",
                         MAX_DIMENSIONS);
      struct dimension *dim = &im->dims[im->ndims++];
      if ((st = int_attr(d, "ifd", &dim->dir)) != TESSERA_OK ||
          (st = int_attr(d, "sizeX", &dim->width)) != TESSERA_OK ||
          (st = int_attr(d, "sizeY", &dim->height)) != TESSERA_OK)
        return st;
      if (dim->width <= 0 || dim->height <= 0)
        return tsr_error(TESSERA_E_FORMAT, "a dimension of %lldx%lld pixels",
                         (long long)dim->width, (long long)dim->height);
      dim->nm_per_pixel = (double)im->nm_across / (double)dim->width;
    }
  }
  if (im->ndims == 0)
    return tsr_error(TESSERA_E_FORMAT, "an <image> has no dimension");
  sort_dimensions(im);
  return TESSERA_OK;
}

static tessera_status read_collection(const struct tsr_xml_node *c, struct collection *col) {
  tessera_status st;
  if ((st = int_attr(c, "sizeX", &col->nm_across)) != TESSERA_OK ||
      (st = int_attr(c, "sizeY", &col->nm_down)) != TESSERA_OK)
    return st;
  if (col->nm_across <= 0 || col->nm_down <= 0)
    return tsr_error(TESSERA_E_FORMAT, "the collection is %lldx%lld nm",
                     (long long)col->nm_across, (long long)col->nm_down);
  size_t n = 0;
  for (const struct tsr_xml_node *im = child(c, "image"); im; im = next(im, "image"))
    n++;
  if (n == 0)
    return tsr_error(TESSERA_E_FORMAT, "the collection has no image");
  if (n > MAX_IMAGES)
    return tsr_error(TESSERA_E_LIMIT, "the collection has %zu images (at most %d)", n,
                     MAX_IMAGES);
  if (!(col->images = tsr_calloc(n, sizeof *col->images)))
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  for (const struct tsr_xml_node *im = child(c, "image"); im; im = next(im, "image"))
    if ((st = read_image(im, col, &col->images[col->nimages++])) != TESSERA_OK)
      return st;
  return TESSERA_OK;
}

/* ---- properties ---- */

/* The barcode: the base64 text of <barcode> (2010/10/01), decoded (up to a NUL, as OpenSlide
 * keeps it a C string); else the collection's barcode attribute (2010/03/10) as written.
 * Characters outside the base64 alphabet are passed over, as GLib's decoder passes them. */
static void add_barcode(const struct tsr_xml_node *c, struct tsr_findings *out) {
  const char *text = path_text(c, "barcode");
  if (!text) {
    tsr_props_add_string(&out->props, "leica.barcode", attr(c, "barcode"));
    return;
  }
  size_t n = strlen(text), k = 0;
  char *clean = tsr_malloc(n + 1);
  if (!clean) {
    out->props.failed = true;
    return;
  }
  for (size_t i = 0; i < n; i++) {
    char ch = text[i];
    if ((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
        ch == '+' || ch == '/' || ch == '=')
      clean[k++] = ch;
  }
  unsigned char *bytes;
  size_t len;
  if (tsr_base64_decode(clean, k, &bytes, &len)) {
    tsr_props_add_bytes(&out->props, "leica.barcode", (const char *)bytes,
                        strnlen((const char *)bytes, len));
    tsr_free(bytes);
  }
  tsr_free(clean);
}

static void add_image_props(const struct image *im, struct tsr_findings *out) {
  struct tsr_props *p = &out->props;
  const struct tsr_xml_node *n = im->node;
  const char *objective = path_text(n, "scanSettings/objectiveSettings/objective");
  tsr_props_add_string(p, "leica.aperture",
                       path_text(n, "scanSettings/illuminationSettings/numericalAperture"));
  tsr_props_add_string(p, "leica.creation-date", path_text(n, "creationDate"));
  tsr_props_add_string(p, "leica.device-model", child_attr(n, "device", "model"));
  tsr_props_add_string(p, "leica.device-version", child_attr(n, "device", "version"));
  tsr_props_add_string(p, "leica.illumination-source", im->illumination);
  tsr_props_add_string(p, "leica.objective", objective);
  if (objective && objective[0]) {
    char *end;
    errno = 0;
    long long power = strtoll(objective, &end, 10);
    if (!*end && errno != ERANGE)
      tsr_props_add(p, "tessera.objective-power", "%lld", power);
  }
}

/* ---- levels ---- */

/* Checks that dimension d of a main image names a tiled directory; used (NULL for the
 * images after the first, which may name any: their levels are copies) holds the first
 * image's directories, each a level of its own. */
static tessera_status check_dir(const struct tsr_dirs *dirs, const struct dimension *d,
                                bool *used) {
  if (d->dir < 0 || (uint64_t)d->dir >= dirs->n || dirs->dir[d->dir].parent >= 0)
    return tsr_error(TESSERA_E_FORMAT, "a dimension names directory %lld; the file has %zu",
                     (long long)d->dir, dirs->n);
  if (!dirs->dir[d->dir].level.tiled)
    return tsr_error(TESSERA_E_FORMAT, "directory %lld, a level, is not tiled",
                     (long long)d->dir);
  if (!used)
    return TESSERA_OK;
  if (used[d->dir])
    return tsr_error(TESSERA_E_FORMAT, "directory %lld is named by two dimensions",
                     (long long)d->dir);
  used[d->dir] = true;
  return TESSERA_OK;
}

/* A number of pixels or a position at a level's scale, as OpenSlide converts it (ceil for a
 * size, truncation toward zero for an offset), checked to be a slide's: past 2^40 pixels a
 * side is no slide (and keeps the sums far from overflow). */
static tessera_status scaled(double v, bool size, int64_t *out) {
  if (!(fabs(v) <= 0x1p40) || (size && !(v >= 1)))
    return tsr_error(TESSERA_E_FORMAT, "the collection at a level's scale: %s %g pixels",
                     size ? "a size of" : "an image at", v);
  *out = (int64_t)v;
  return TESSERA_OK;
}

/* Each level of the main images together: level i is the collection at the finest scale of
 * their dimensions i (nm_per_pixel, the least), with each image's dimension i placed at its
 * view's offset, the first image's at level_origin[i], the others' in areas. As OpenSlide
 * 3.4.1 composites them (create_levels_from_collection). */
static tessera_status place_levels(const struct tsr_dirs *dirs, const struct collection *col,
                                   const struct image *const *mains, size_t nmains,
                                   struct tsr_findings *out) {
  const struct image *first = mains[0];
  size_t n = first->ndims;
  out->level_dirs = tsr_calloc(n, sizeof *out->level_dirs);
  out->level_sizes = tsr_calloc(n, sizeof *out->level_sizes);
  out->level_origin = tsr_calloc(n, sizeof *out->level_origin);
  double *nm_per_pixel = tsr_calloc(n, sizeof *nm_per_pixel);
  bool *used = tsr_calloc(dirs->n, sizeof *used);
  if (nmains > 1)
    out->areas = tsr_calloc(n * (nmains - 1), sizeof *out->areas);
  tessera_status st = TESSERA_OK;
  if (!out->level_dirs || !out->level_sizes || !out->level_origin || !nm_per_pixel || !used ||
      (nmains > 1 && !out->areas))
    st = tsr_error(TESSERA_E_NOMEM, "out of memory");
  for (size_t i = 0; st == TESSERA_OK && i < n; i++) {
    nm_per_pixel[i] = first->dims[i].nm_per_pixel;
    out->level_dirs[i] = (size_t)first->dims[i].dir;
    st = check_dir(dirs, &first->dims[i], used);
  }
  for (size_t m = 1; st == TESSERA_OK && m < nmains; m++) {
    const struct image *im = mains[m];
    for (size_t i = 0; st == TESSERA_OK && i < n; i++) {
      const struct dimension *d = &im->dims[i];
      if (d->nm_per_pixel < nm_per_pixel[i])
        nm_per_pixel[i] = d->nm_per_pixel;
      /* the same resolution as the first image's, within 2 % */
      double f = first->dims[i].nm_per_pixel;
      if (1 - fabs(d->nm_per_pixel - f) / f < 0.98)
        st = tsr_error(TESSERA_E_UNSUPPORTED,
                       "Inconsistent main image resolutions (directory %lld and %lld)",
                       (long long)first->dims[i].dir, (long long)d->dir);
      else
        st = check_dir(dirs, d, NULL);
    }
  }
  for (size_t i = 0; st == TESSERA_OK && i < n; i++) {
    struct tsr_level_size *sz = &out->level_sizes[i];
    if ((st = scaled(ceil((double)col->nm_across / nm_per_pixel[i]), true, &sz->width)) !=
            TESSERA_OK ||
        (st = scaled(ceil((double)col->nm_down / nm_per_pixel[i]), true, &sz->height)) !=
            TESSERA_OK)
      break;
    for (size_t m = 0; st == TESSERA_OK && m < nmains; m++) {
      int64_t x = 0, y = 0;
      if ((st = scaled((double)mains[m]->nm_x / nm_per_pixel[i], false, &x)) != TESSERA_OK ||
          (st = scaled((double)mains[m]->nm_y / nm_per_pixel[i], false, &y)) != TESSERA_OK)
        break;
      if (m == 0) {
        out->level_origin[i].x = x;
        out->level_origin[i].y = y;
      } else {
        out->areas[out->nareas++] = (struct tsr_level_area){
            .dir = (size_t)mains[m]->dims[i].dir, .level = (int32_t)i, .x = x, .y = y};
      }
    }
  }
  tsr_free(nm_per_pixel);
  tsr_free(used);
  if (st != TESSERA_OK)
    return st;
  out->nlevels = (int32_t)n;
  double w0 = (double)out->level_sizes[0].width, h0 = (double)out->level_sizes[0].height;
  for (size_t i = 0; i < n; i++)
    out->level_sizes[i].downsample =
        i == 0 ? 1.0
               : (w0 / (double)out->level_sizes[i].width +
                  h0 / (double)out->level_sizes[i].height) / 2.0;
  return TESSERA_OK;
}

/* The images of level 0 (each main image's largest dimension, at its place) as
 * tessera.region[n].*, and their bounds as tessera.bounds-*. */
static void add_region_props(const struct tsr_dirs *dirs, struct tsr_findings *out) {
  struct tsr_props *p = &out->props;
  int64_t x0 = INT64_MAX, y0 = INT64_MAX, x1 = INT64_MIN, y1 = INT64_MIN;
  size_t n = 0;
  for (size_t k = 0; k <= out->nareas; k++) {
    size_t dir;
    int64_t x, y;
    if (k == 0) {
      dir = out->level_dirs[0];
      x = out->level_origin[0].x;
      y = out->level_origin[0].y;
    } else if (out->areas[k - 1].level == 0) {
      dir = out->areas[k - 1].dir;
      x = out->areas[k - 1].x;
      y = out->areas[k - 1].y;
    } else {
      continue;
    }
    const struct tsr_level *lv = &dirs->dir[dir].level;
    const char *names[4] = {"x", "y", "width", "height"};
    int64_t values[4] = {x, y, lv->width, lv->height};
    for (int v = 0; v < 4; v++) {
      char key[64];
      snprintf(key, sizeof key, "tessera.region[%zu].%s", n, names[v]);
      tsr_props_add(p, key, "%lld", (long long)values[v]);
    }
    n++;
    x0 = x < x0 ? x : x0;
    y0 = y < y0 ? y : y0;
    x1 = x + lv->width > x1 ? x + lv->width : x1;
    y1 = y + lv->height > y1 ? y + lv->height : y1;
  }
  tsr_props_add(p, "tessera.bounds-x", "%lld", (long long)x0);
  tsr_props_add(p, "tessera.bounds-y", "%lld", (long long)y0);
  tsr_props_add(p, "tessera.bounds-width", "%lld", (long long)(x1 - x0));
  tsr_props_add(p, "tessera.bounds-height", "%lld", (long long)(y1 - y0));
}

/* Micrometres per pixel from the level-0 directory's resolution, in centimetres only. */
static void add_mpp(const struct tsr_dirs *dirs, struct tsr_findings *out) {
  const struct tsr_dir *d = &dirs->dir[out->level_dirs[0]];
  if (d->resolution_unit != 3 || !d->has_resolution)
    return;
  if (d->xres != 0)
    tsr_props_add_double(&out->props, "tessera.mpp-x", 10000.0 / (double)d->xres);
  if (d->yres != 0)
    tsr_props_add_double(&out->props, "tessera.mpp-y", 10000.0 / (double)d->yres);
}

/* Whether two main images may be composited, as OpenSlide asks: the same objective (both
 * without one alike) and as many dimensions. */
static bool similar(const struct image *a, const struct image *b) {
  const char *oa = path_text(a->node, "scanSettings/objectiveSettings/objective");
  const char *ob = path_text(b->node, "scanSettings/objectiveSettings/objective");
  return (oa == ob || (oa && ob && strcmp(oa, ob) == 0)) && a->ndims == b->ndims;
}

static tessera_status open_collection(const struct tsr_dirs *dirs, const struct tsr_xml_node *c,
                                      struct collection *col, struct tsr_findings *out) {
  tessera_status st = read_collection(c, col);
  if (st != TESSERA_OK)
    return st;
  const struct image *macro = NULL;
  const struct image **mains = tsr_calloc(col->nimages, sizeof *mains);
  if (!mains)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  size_t nmains = 0, macros = 0;
  bool other_main = false;
  for (size_t i = 0; i < col->nimages; i++) {
    const struct image *im = &col->images[i];
    if (im->is_macro) {
      macros++;
      if (im->brightfield) {
        if (macro) {
          tsr_free(mains);
          return tsr_error(TESSERA_E_FORMAT, "the collection has several brightfield macro "
                                             "images");
        }
        macro = im;
      }
    } else if (im->brightfield) {
      if (nmains > 0 && !similar(mains[0], im)) {
        tsr_free(mains);
        return tsr_error(TESSERA_E_UNSUPPORTED,
                         "Slides with dissimilar main images are not supported (main image "
                         "%zu: another objective or number of levels than the first's)",
                         nmains + 1);
      }
      mains[nmains++] = im;
    } else {
      other_main = true;
    }
  }
  if (nmains == 0) {
    tsr_free(mains);
    return tsr_error(TESSERA_E_FORMAT, "the collection has no brightfield main image");
  }
  /* OpenSlide identifies a slide by its smallest macro directory unless the slide is one
   * brightfield image with at most one macro (then by the smallest level, as for other
   * formats); a slide it cannot identify it does not open. */
  bool legacy_hash = !other_main && nmains == 1 && macros <= 1;
  if (!legacy_hash && !macro) {
    tsr_free(mains);
    return tsr_error(TESSERA_E_FORMAT, "the collection has no brightfield macro image");
  }
  st = place_levels(dirs, col, mains, nmains, out);
  const struct image *main = mains[0];
  tsr_free(mains);
  if (st != TESSERA_OK)
    return st;
  if (macro) {
    int64_t dir = macro->dims[0].dir, smallest = macro->dims[macro->ndims - 1].dir;
    if (dir < 0 || (uint64_t)dir >= dirs->n || dirs->dir[dir].parent >= 0 || smallest < 0 ||
        (uint64_t)smallest >= dirs->n)
      return tsr_error(TESSERA_E_FORMAT, "the macro names directory %lld; the file has %zu",
                       (long long)(dir < 0 || (uint64_t)dir >= dirs->n ? dir : smallest),
                       dirs->n);
    tsr_findings_add_associated(out, (size_t)dir, "macro");
    if (!legacy_hash)
      out->quickhash_dir = (size_t)smallest + 1;
  }
  add_image_props(main, out);
  add_region_props(dirs, out);
  add_mpp(dirs, out);
  /* tiff.* from the level-0 directory, without the XML, as OpenSlide shows them */
  out->props_dir = out->level_dirs[0];
  out->hide_description = true;
  out->background = 255;
  return TESSERA_OK;
}

/* Whether the root element is in Leica's namespace (what OpenSlide checks before it takes a
 * file as Leica's; the root must then be <scn>, or the open fails). */
static bool is_scn_root(const struct tsr_xml_node *root) {
  size_t n = prefix_len(root->name);
  char decl[80] = "xmlns";
  if (n > 0 && n < sizeof decl - 6)
    snprintf(decl, sizeof decl, "xmlns:%.*s", (int)(n - 1), root->name);
  else if (n > 0)
    return false;
  const char *xmlns = attr(root, decl);
  if (!xmlns)
    return false;
  for (size_t i = 0; i < sizeof namespaces / sizeof namespaces[0]; i++)
    if (strcmp(xmlns, namespaces[i]) == 0)
      return true;
  return false;
}

static tessera_status leica_open(struct tsr_dirs *dirs, struct tsr_findings *out) {
  const char *desc = dirs->dir[0].description;
  struct tsr_xml_doc *doc;
  tessera_status st = tsr_xml_parse(desc, strlen(desc), &doc);
  if (st != TESSERA_OK)
    return tsr_error_prefix(st, "Leica ImageDescription: ");
  const struct tsr_xml_node *root = tsr_xml_root(doc);
  if (!is_scn_root(root)) {
    tsr_xml_free(doc);
    out->vendor = tsr_vendor_generic.name;
    return tsr_vendor_generic.open(dirs, out);
  }
  struct collection col = {0};
  const struct tsr_xml_node *c = named(root, "scn") ? child(root, "collection") : NULL;
  if (!c) {
    st = tsr_error(TESSERA_E_FORMAT, "the document has no <collection>");
  } else {
    add_barcode(c, out);
    st = open_collection(dirs, c, &col, out);
  }
  tsr_free(col.images);
  tsr_xml_free(doc);
  return st == TESSERA_OK ? st : tsr_error_prefix(st, "Leica: ");
}

const struct tsr_vendor tsr_vendor_leica = {"leica", leica_detect, leica_open};
