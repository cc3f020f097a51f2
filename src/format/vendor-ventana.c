/* Ventana (Roche) BIF and Ventana TIFF: the first directory's XMLPacket (tag 700) holds an
 * <iScan> element (as the root, or a child of <Metadata>) whose attributes describe the scan.
 * The levels are the directories whose ImageDescription holds "level=N mag=M" (space-separated
 * key=value pairs), in order 0, 1, 2 ... with decreasing magnification; a level's downsample
 * is level 0's magnification over its own. "Label Image" (or "Label_Image") is the macro,
 * "Thumbnail" the thumbnail. Glass is white.
 *
 * A BIF's level 0 carries a second XMLPacket, <EncodeInfo>: the scanned areas (AOIs) with
 * their first tile in the level-0 tile grid, tile counts and positions, and between each pair
 * of neighbouring tiles a joint (OverlapX/Y with a confidence). OpenSlide 3.4.1 places every
 * tile at its area's position plus a fixed advance per tile, the tile size less the
 * confidence-weighted mean overlap, and the tiles of a smaller level as 1/downsample subtiles
 * of its tiles; the level is as large as those tiles reach. Where the tiles land on one
 * whole-pixel grid at every level (no mean overlap, the areas on one grid that covers every
 * tile of level 0), the slide is that grid placed at its origin: the directories' tiles as
 * they are. Otherwise (tiles that overlap, by a mean that may be fractional, areas off one
 * grid, tiles in no area) each level is a mosaic (source/mosaic_tiles.c, as MIRAX's): every
 * (sub)tile placed where OpenSlide places it, in 16.16 fixed point, and painted as OpenSlide
 * paints it, between pixels included (codec/mosaic.c), byte for byte. Refused: a level whose
 * downsample does not cut level 0's tiles into whole subtiles.
 * A Ventana TIFF (level 0 without EncodeInfo) is its levels' tile grids as they are.
 *
 * Properties are OpenSlide's: ventana.NAME for each non-empty attribute of <iScan>;
 * tessera.objective-power from Magnification (an integer), tessera.mpp-x/y from ScanRes;
 * tessera.region[i].* for a BIF's scanned areas (OpenSlide's numbers); tiff.* and
 * tessera.comment from level 0's directory. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "error.h"
#include "format/format.h"
#include "format/xml.h"
#include "source/tile_source.h"

#define MAX_AREAS 4096
#define MAX_VENTANA_PROPS 4096

static bool ventana_detect(const struct tsr_dirs *dirs) {
  return dirs->dir[0].xmp && strstr(dirs->dir[0].xmp, "iScan") != NULL;
}

/* <iScan>, the root or a child of a <Metadata> root; NULL when the document has neither. */
static const struct tsr_xml_node *find_iscan(const struct tsr_xml_node *root) {
  if (strcmp(root->name, "iScan") == 0)
    return root;
  if (strcmp(root->name, "Metadata") != 0)
    return NULL;
  for (const struct tsr_xml_node *c = root->first_child; c; c = c->next_sibling)
    if (strcmp(c->name, "iScan") == 0)
      return c;
  return NULL;
}

/* A number as OpenSlide reads one: all of the text, a decimal comma taken for a point. */
static bool parse_double(const char *s, double *out) {
  char buf[64];
  size_t n = strlen(s);
  if (n == 0 || n >= sizeof buf)
    return false;
  for (size_t i = 0; i <= n; i++)
    buf[i] = s[i] == ',' ? '.' : s[i];
  char *end;
  errno = 0;
  *out = strtod(buf, &end);
  return *end == 0 && errno != ERANGE;
}

static bool parse_int(const char *s, int64_t *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (!s[0] || *end || errno == ERANGE)
    return false;
  *out = v;
  return true;
}

static tessera_status add_iscan_props(const struct tsr_xml_node *iscan, struct tsr_findings *out) {
  if (iscan->nattrs > MAX_VENTANA_PROPS)
    return tsr_error(TESSERA_E_LIMIT, "<iScan> has %zu attributes", iscan->nattrs);
  for (size_t i = 0; i < iscan->nattrs; i++) {
    const struct tsr_xml_attr *a = &iscan->attrs[i];
    if (!a->value[0] || strlen(a->name) > 200)
      continue;
    char key[220];
    snprintf(key, sizeof key, "ventana.%s", a->name);
    tsr_props_add_string(&out->props, key, a->value);
  }
  const char *mag = tsr_props_get(&out->props, "ventana.Magnification");
  int64_t power;
  if (mag && parse_int(mag, &power))
    tsr_props_add(&out->props, "tessera.objective-power", "%lld", (long long)power);
  const char *res = tsr_props_get(&out->props, "ventana.ScanRes");
  double mpp;
  if (res && parse_double(res, &mpp) && !isnan(mpp)) {
    tsr_props_add_double(&out->props, "tessera.mpp-x", mpp);
    tsr_props_add_double(&out->props, "tessera.mpp-y", mpp);
  }
  return TESSERA_OK;
}

/* "level=N mag=M ...": the value of key (the last pair of that key wins), copied into buf. */
static bool level_field(const char *desc, const char *key, char *buf, size_t cap) {
  bool found = false;
  size_t klen = strlen(key);
  for (const char *p = desc; *p;) {
    const char *end = strchr(p, ' ');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    if (len > klen && strncmp(p, key, klen) == 0 && p[klen] == '=') {
      size_t vlen = len - klen - 1;
      if (vlen >= cap)
        vlen = cap - 1;
      memcpy(buf, p + klen + 1, vlen);
      buf[vlen] = 0;
      found = true;
    }
    p += len + (end ? 1 : 0);
  }
  return found;
}

/* ---- a BIF's areas ---- */

struct area {
  int64_t start_col, start_row, across, down;
  double x, y;
};

struct bif {
  struct area *areas; /* owned */
  size_t n;
  double advance_x, advance_y;
};

static const char *need_attr(const struct tsr_xml_node *n, const char *name, tessera_status *st) {
  const char *v = tsr_xml_attr(n, name);
  if (!v && *st == TESSERA_OK)
    *st = tsr_error(TESSERA_E_FORMAT, "<%s> has no %s", n->name, name);
  return v;
}

static tessera_status int_attr(const struct tsr_xml_node *n, const char *name, int64_t *out) {
  tessera_status st = TESSERA_OK;
  const char *v = need_attr(n, name, &st);
  if (st == TESSERA_OK && !parse_int(v, out))
    st = tsr_error(TESSERA_E_FORMAT, "<%s %s=\"%.40s\">: not an integer", n->name, name, v);
  return st;
}

static tessera_status double_attr(const struct tsr_xml_node *n, const char *name, double *out) {
  tessera_status st = TESSERA_OK;
  const char *v = need_attr(n, name, &st);
  if (st == TESSERA_OK && (!parse_double(v, out) || isnan(*out)))
    st = tsr_error(TESSERA_E_FORMAT, "<%s %s=\"%.40s\">: not a number", n->name, name, v);
  return st;
}

/* Tile number t (1-based, as the joints count them: rows from the bottom, every other row
 * right to left) as a column and row of the area. */
static tessera_status tile_position(const struct area *a, const struct tsr_xml_node *joint,
                                    const char *name, int64_t *col, int64_t *row) {
  int64_t t;
  tessera_status st = int_attr(joint, name, &t);
  if (st != TESSERA_OK)
    return st;
  if (t < 1 || t > a->across * a->down)
    return tsr_error(TESSERA_E_FORMAT, "a joint names tile %lld of %lld", (long long)t,
                     (long long)(a->across * a->down));
  t--;
  int64_t c = t % a->across, r = t / a->across;
  if (r % 2)
    c = a->across - 1 - c;
  *col = c;
  *row = a->down - 1 - r;
  return TESSERA_OK;
}

struct joint_sums {
  double x, y;
  int64_t wx, wy;
};

static tessera_status read_joints(const struct tsr_xml_node *info, const struct area *a,
                                  struct joint_sums *sum) {
  const struct tsr_xml_node *j = tsr_xml_child(info, "TileJointInfo");
  if (!j)
    return tsr_error(TESSERA_E_FORMAT, "an area has no TileJointInfo");
  for (; j; j = tsr_xml_next(j, "TileJointInfo")) {
    int64_t c1, r1, c2, r2, confidence;
    double ox, oy;
    tessera_status st;
    if ((st = tile_position(a, j, "Tile1", &c1, &r1)) != TESSERA_OK ||
        (st = tile_position(a, j, "Tile2", &c2, &r2)) != TESSERA_OK)
      return st;
    const char *dir = tsr_xml_attr(j, "Direction");
    bool right = dir && strcmp(dir, "RIGHT") == 0, up = dir && strcmp(dir, "UP") == 0;
    if (!right && !up)
      return tsr_error(TESSERA_E_FORMAT, "a joint's Direction is \"%.20s\"", dir ? dir : "");
    if ((right && !(c2 == c1 + 1 && r2 == r1)) || (up && !(c2 == c1 && r2 == r1 - 1)))
      return tsr_error(TESSERA_E_FORMAT, "a joint %s joins tiles that are not neighbours", dir);
    if ((st = double_attr(j, "OverlapX", &ox)) != TESSERA_OK ||
        (st = double_attr(j, "OverlapY", &oy)) != TESSERA_OK ||
        (st = int_attr(j, "Confidence", &confidence)) != TESSERA_OK)
      return st;
    if (confidence < 0 || confidence > (1 << 20))
      return tsr_error(TESSERA_E_FORMAT, "a joint's confidence is %lld", (long long)confidence);
    /* (an overlap is a few pixels; an infinite one would make every position NaN) */
    if (!(fabs(ox) <= 0x1p20 && fabs(oy) <= 0x1p20))
      return tsr_error(TESSERA_E_FORMAT, "a joint's overlap is %g,%g", ox, oy);
    if (up) {
      sum->y += (double)confidence * -oy;
      sum->wy += confidence;
    } else {
      sum->x += (double)confidence * -ox;
      sum->wx += confidence;
    }
  }
  return TESSERA_OK;
}

static tessera_status read_bif(const char *xml, int64_t tile_w, int64_t tile_h, struct bif *bif) {
  struct tsr_xml_doc *doc;
  tessera_status st = tsr_xml_parse(xml, strlen(xml), &doc);
  if (st != TESSERA_OK)
    return tsr_error_prefix(st, "level 0's XMLPacket: ");
  const struct tsr_xml_node *root = tsr_xml_root(doc);
  size_t ninfo = 0, norigin = 0;
  if (strcmp(root->name, "EncodeInfo") == 0) {
    for (const struct tsr_xml_node *s = tsr_xml_child(root, "SlideStitchInfo"); s;
         s = tsr_xml_next(s, "SlideStitchInfo"))
      for (const struct tsr_xml_node *i = tsr_xml_child(s, "ImageInfo"); i;
           i = tsr_xml_next(i, "ImageInfo"))
        ninfo++;
    for (const struct tsr_xml_node *o = tsr_xml_child(root, "AoiOrigin"); o;
         o = tsr_xml_next(o, "AoiOrigin"))
      for (const struct tsr_xml_node *i = o->first_child; i; i = i->next_sibling)
        norigin++;
  }
  if (ninfo == 0 || ninfo != norigin || ninfo > MAX_AREAS) {
    tsr_xml_free(doc);
    return tsr_error(TESSERA_E_FORMAT,
                     "level 0's EncodeInfo describes %zu areas and gives %zu origins", ninfo,
                     norigin);
  }
  if (!(bif->areas = tsr_calloc(ninfo, sizeof *bif->areas))) {
    tsr_xml_free(doc);
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  }
  struct joint_sums sum = {0};
  const struct tsr_xml_node *stitch = tsr_xml_child(root, "SlideStitchInfo");
  const struct tsr_xml_node *info = tsr_xml_child(stitch, "ImageInfo");
  while (!info && (stitch = tsr_xml_next(stitch, "SlideStitchInfo")))
    info = tsr_xml_child(stitch, "ImageInfo");
  const struct tsr_xml_node *origins = tsr_xml_child(root, "AoiOrigin");
  const struct tsr_xml_node *origin = origins->first_child;
  while (!origin && (origins = tsr_xml_next(origins, "AoiOrigin")))
    origin = origins->first_child;
  for (size_t k = 0; k < ninfo && st == TESSERA_OK; k++) {
    int64_t scanned, ox, oy, w, h;
    st = int_attr(info, "AOIScanned", &scanned);
    if (st == TESSERA_OK && scanned) {
      struct area *a = &bif->areas[bif->n++];
      if ((st = int_attr(origin, "OriginX", &ox)) == TESSERA_OK &&
          (st = int_attr(origin, "OriginY", &oy)) == TESSERA_OK &&
          (st = int_attr(info, "Width", &w)) == TESSERA_OK &&
          (st = int_attr(info, "Height", &h)) == TESSERA_OK &&
          (st = int_attr(info, "NumCols", &a->across)) == TESSERA_OK &&
          (st = int_attr(info, "NumRows", &a->down)) == TESSERA_OK &&
          (st = double_attr(info, "Pos-X", &a->x)) == TESSERA_OK &&
          (st = double_attr(info, "Pos-Y", &a->y)) == TESSERA_OK) {
        if (w != tile_w || h != tile_h)
          st = tsr_error(TESSERA_E_FORMAT, "an area's tiles are %lldx%lld, level 0's %lldx%lld",
                         (long long)w, (long long)h, (long long)tile_w, (long long)tile_h);
        else if (ox < 0 || oy < 0 || ox % tile_w || oy % tile_h)
          st = tsr_error(TESSERA_E_FORMAT, "an area's origin %lld,%lld is not on a tile",
                         (long long)ox, (long long)oy);
        else if (ox / tile_w > (1 << 20) || oy / tile_h > (1 << 20))
          /* (a level's tiles number below 2^20 a side; further, positions would overflow) */
          st = tsr_error(TESSERA_E_FORMAT, "an area's origin %lld,%lld is past 2^20 tiles",
                         (long long)ox, (long long)oy);
        else if (a->across < 1 || a->down < 1 || a->across > (1 << 20) || a->down > (1 << 20) ||
                 fabs(a->x) > 0x1p40 || fabs(a->y) > 0x1p40)
          st = tsr_error(TESSERA_E_FORMAT, "an area of %lldx%lld tiles at %g,%g",
                         (long long)a->across, (long long)a->down, a->x, a->y);
        else
          st = read_joints(info, a, &sum);
        a->start_col = ox / tile_w;
        a->start_row = oy / tile_h;
        /* OpenSlide keeps positions in whole pixels */
        a->x = trunc(a->x);
        a->y = trunc(a->y);
      }
    }
    /* the next ImageInfo (across SlideStitchInfo elements) and the next origin */
    info = tsr_xml_next(info, "ImageInfo");
    while (!info && stitch && (stitch = tsr_xml_next(stitch, "SlideStitchInfo")))
      info = tsr_xml_child(stitch, "ImageInfo");
    origin = origin->next_sibling;
    while (!origin && origins && (origins = tsr_xml_next(origins, "AoiOrigin")))
      origin = origins->first_child;
  }
  tsr_xml_free(doc);
  if (st != TESSERA_OK)
    return st;
  if (bif->n == 0)
    return tsr_error(TESSERA_E_FORMAT, "level 0's EncodeInfo has no scanned area");
  if (sum.wx == 0 || sum.wy == 0)
    return tsr_error(TESSERA_E_FORMAT, "no joint across or down has a confidence");
  bif->advance_x = (double)tile_w + sum.x / (double)sum.wx;
  bif->advance_y = (double)tile_h + sum.y / (double)sum.wy;
  /* Pos-Y is the distance from an area's bottom to below every area: turned downward. */
  double top = 0;
  for (size_t i = 0; i < bif->n; i++) {
    const struct area *a = &bif->areas[i];
    double h = trunc((double)(a->down - 1) * bif->advance_y + (double)tile_h);
    top = fmax(top, a->y + h);
  }
  for (size_t i = 0; i < bif->n; i++) {
    struct area *a = &bif->areas[i];
    double h = trunc((double)(a->down - 1) * bif->advance_y + (double)tile_h);
    a->y = top - a->y - h;
  }
  return TESSERA_OK;
}

/* Whether level 0's tiles all fall on one whole-pixel grid, and where it lies: no mean
 * overlap, one origin for every area, every tile of the directory in an area (and none past
 * it). Otherwise the tiles are placed one by one (placed_level). */
static bool grid_origin(const struct bif *bif, const struct tsr_level *l0, int64_t *ox,
                        int64_t *oy) {
  if (bif->advance_x != (double)l0->tile_w || bif->advance_y != (double)l0->tile_h)
    return false;
  uint64_t cells = (uint64_t)l0->across * l0->down;
  uint8_t *seen = tsr_calloc(cells ? cells : 1, 1);
  if (!seen)
    return false;
  bool on_grid = true;
  uint64_t covered = 0;
  for (size_t i = 0; i < bif->n && on_grid; i++) {
    const struct area *a = &bif->areas[i];
    double x = a->x - (double)a->start_col * l0->tile_w;
    double y = a->y - (double)a->start_row * l0->tile_h;
    if (i == 0) {
      *ox = (int64_t)x;
      *oy = (int64_t)y;
    }
    if (x != (double)*ox || y != (double)*oy ||
        a->start_col + a->across > l0->across || a->start_row + a->down > l0->down) {
      on_grid = false;
      break;
    }
    for (int64_t r = a->start_row; r < a->start_row + a->down; r++)
      for (int64_t c = a->start_col; c < a->start_col + a->across; c++)
        if (!seen[(uint64_t)r * l0->across + (uint64_t)c]++)
          covered++;
  }
  tsr_free(seen);
  return on_grid && covered == cells;
}

static void add_area_props(const struct bif *bif, const struct tsr_level *l0,
                           struct tsr_findings *out) {
  char key[64];
  for (size_t i = 0; i < bif->n; i++) {
    const struct area *a = &bif->areas[i];
    snprintf(key, sizeof key, "tessera.region[%zu].x", i);
    tsr_props_add(&out->props, key, "%lld",
                  (long long)(bif->advance_x * (double)a->start_col));
    snprintf(key, sizeof key, "tessera.region[%zu].y", i);
    tsr_props_add(&out->props, key, "%lld",
                  (long long)(bif->advance_y * (double)a->start_row));
    snprintf(key, sizeof key, "tessera.region[%zu].width", i);
    tsr_props_add(&out->props, key, "%lld",
                  (long long)ceil(bif->advance_x * (double)(a->across - 1) + l0->tile_w));
    snprintf(key, sizeof key, "tessera.region[%zu].height", i);
    tsr_props_add(&out->props, key, "%lld",
                  (long long)ceil(bif->advance_y * (double)(a->down - 1) + l0->tile_h));
  }
}

/* ---- a BIF whose tiles do not lie on one whole-pixel grid ---- */

/* A (sub)tile as OpenSlide's tilemap keys it. */
struct bif_tile {
  int64_t col, row;
  size_t seq;
  double x, y; /* its position in the level */
  size_t area;
};

static int compare_bif_tiles(const void *a, const void *b) {
  const struct bif_tile *p = a, *q = b;
  if (p->row != q->row)
    return p->row < q->row ? -1 : 1;
  if (p->col != q->col)
    return p->col < q->col ? -1 : 1;
  return p->seq < q->seq ? -1 : p->seq > q->seq;
}

/* Level i of a BIF whose tiles overlap or whose areas are off one grid, as OpenSlide 3.4.1
 * places them: level 0's tile (col, row) of an area at col * advance + the area's offset
 * (its position less start_col * advance), over downsample d on level i, whose TIFF tile
 * (col / d, row / d) holds it as one of d x d subtiles; a tile of a later area replaces one
 * on the same (col, row); painted with the greater (row, col) first (codec/mosaic.c paints
 * between pixels as OpenSlide does). The level is as large as its tiles reach. */
static tessera_status placed_level(const struct bif *bif, struct tsr_level *dl, uint32_t dir,
                                   double d, struct tsr_level *lv) {
  int64_t k = (int64_t)d;
  if ((double)k != d || k < 1 || dl->tile_w % (uint32_t)k || dl->tile_h % (uint32_t)k)
    return tsr_error(TESSERA_E_UNSUPPORTED,
                     "BIF: level %u's downsample %g does not cut its tiles into whole pixels; "
                     "tessera does not read such BIF files",
                     dir, d);
  uint32_t sw = dl->tile_w / (uint32_t)k, sh = dl->tile_h / (uint32_t)k;
  double adv_x = bif->advance_x / d, adv_y = bif->advance_y / d;
  uint64_t total = 0;
  for (size_t i = 0; i < bif->n; i++)
    total += (uint64_t)bif->areas[i].across * (uint64_t)bif->areas[i].down;
  /* Areas place level 0's tiles, each in one area or a few where they overlap: far more is
   * no BIF (and would only cost memory). */
  if (total > 16 * (uint64_t)dl->ntiles * (uint64_t)k * (uint64_t)k + 65536)
    return tsr_error(TESSERA_E_FORMAT, "BIF: its areas hold %llu tiles, level %u %llu",
                     (unsigned long long)total, dir, (unsigned long long)dl->ntiles);
  struct bif_tile *t = tsr_malloc((total ? total : 1) * sizeof *t);
  struct tsr_mosaic_placed *placed = tsr_malloc((total ? total : 1) * sizeof *placed);
  struct tsr_mosaic *mo = tsr_calloc(1, sizeof *mo);
  struct tsr_mosaic_image *images = tsr_calloc(dl->ntiles ? dl->ntiles : 1, sizeof *images);
  if (!t || !placed || !mo || !images) {
    tsr_free(t);
    tsr_free(placed);
    tsr_free(mo);
    tsr_free(images);
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  }
  size_t n = 0;
  double left = INFINITY, right = -INFINITY, top = INFINITY, bottom = -INFINITY;
  for (size_t i = 0; i < bif->n; i++) {
    const struct area *a = &bif->areas[i];
    double off_x = (a->x - (double)a->start_col * bif->advance_x) / d;
    double off_y = (a->y - (double)a->start_row * bif->advance_y) / d;
    for (int64_t row = a->start_row; row < a->start_row + a->down; row++)
      for (int64_t col = a->start_col; col < a->start_col + a->across; col++) {
        t[n] = (struct bif_tile){
            col, row, n, (double)col * adv_x + off_x, (double)row * adv_y + off_y, i};
        /* OpenSlide's grid bounds, every tile counted */
        left = fmin(left, t[n].x);
        top = fmin(top, t[n].y);
        right = fmax(right, (double)col * adv_x + off_x + (double)sw);
        bottom = fmax(bottom, (double)row * adv_y + off_y + (double)sh);
        n++;
      }
  }
  if (n > 1)
    qsort(t, n, sizeof *t, compare_bif_tiles);
  size_t kept = 0;
  for (size_t i = 0; i < n; i++) {
    if (kept > 0 && t[kept - 1].row == t[i].row && t[kept - 1].col == t[i].col)
      kept--;
    t[kept++] = t[i];
  }
  n = kept;
  /* The level: OpenSlide's ceil(x + w) of its grid's bounds. */
  double w = right - left, h = bottom - top;
  double width = ceil(left + w), height = ceil(top + h);
  lv->downsample = d;
  lv->directory = dir;
  tessera_status st = TESSERA_OK;
  /* (and every position finite: left and top are the least of them) */
  if (!(width >= 1 && height >= 1 && width <= 0x1p31 && height <= 0x1p31 && left >= -0x1p40 &&
        top >= -0x1p40)) {
    st = tsr_error(TESSERA_E_FORMAT, "BIF: level %u would be %gx%g pixels", dir, left + w, top + h);
  } else {
    lv->width = (int64_t)width;
    lv->height = (int64_t)height;
  }
  size_t np = 0;
  for (size_t i = 0; i < n && st == TESSERA_OK; i++) {
    int64_t tc = t[i].col / k, tr = t[i].row / k;
    if (t[i].col < 0 || t[i].row < 0 || tc >= dl->across || tr >= dl->down)
      continue; /* no such TIFF tile: nothing OpenSlide could paint */
    uint64_t index = (uint64_t)tr * dl->across + (uint64_t)tc;
    if (dl->bytecounts[index] == 0 || dl->offsets[index] == 0)
      continue;
    if (dl->bytecounts[index] > UINT32_MAX) {
      st = tsr_error(TESSERA_E_LIMIT, "BIF: level %u's tile %llu is %llu bytes", dir,
                     (unsigned long long)index, (unsigned long long)dl->bytecounts[index]);
      break;
    }
    images[index] =
        (struct tsr_mosaic_image){dl->offsets[index], (uint32_t)dl->bytecounts[index], 0};
    /* the subtile, less what lies past the directory's image (transparent, as OpenSlide
     * clips a tile) */
    int64_t sx = (t[i].col % k) * sw, sy = (t[i].row % k) * sh;
    int64_t vw = dl->width - tc * (int64_t)dl->tile_w - sx;
    int64_t vh = dl->height - tr * (int64_t)dl->tile_h - sy;
    vw = vw < (int64_t)sw ? vw : (int64_t)sw;
    vh = vh < (int64_t)sh ? vh : (int64_t)sh;
    if (vw <= 0 || vh <= 0)
      continue;
    placed[np++] = (struct tsr_mosaic_placed){(uint32_t)index,
                                              (uint32_t)sx,
                                              (uint32_t)sy,
                                              (uint32_t)vw,
                                              (uint32_t)vh,
                                              (int64_t)nearbyint(t[i].x * 65536.0),
                                              (int64_t)nearbyint(t[i].y * 65536.0)};
  }
  tsr_free(t);
  mo->images = images;
  mo->nimages = dl->ntiles;
  mo->image_w = dl->tile_w;
  mo->image_h = dl->tile_h;
  mo->format = TSR_MOSAIC_TIFF;
  mo->background = 255;
  /* the directory's pixel format (and its JPEG tables) move to the mosaic */
  mo->tiff_fmt = dl->fmt;
  dl->fmt.jpeg_tables = NULL;
  dl->fmt.jpeg_tables_len = 0;
  lv->source_data = mo;
  tsr_mosaic_level_format(lv);
  if (st == TESSERA_OK)
    st = tsr_mosaic_lay(mo, lv, dl->tile_w, dl->tile_h, placed, np, (uint64_t)1 << 22);
  tsr_free(placed);
  return st;
}

/* ---- levels ---- */

struct found_level {
  size_t dir;
  double downsample;
};

static tessera_status find_levels(const struct tsr_dirs *dirs, struct found_level *levels,
                                  int32_t *n, struct tsr_findings *out) {
  double prev_mag = INFINITY, mag0 = 0;
  for (size_t i = 0; i < dirs->n; i++) {
    const struct tsr_dir *d = &dirs->dir[i];
    if (d->parent >= 0 || !d->description)
      continue;
    const char *desc = d->description;
    if (strstr(desc, "level=")) {
      char lbuf[32], mbuf[64];
      int64_t level;
      double mag;
      if (!level_field(desc, "level", lbuf, sizeof lbuf) ||
          !level_field(desc, "mag", mbuf, sizeof mbuf))
        return tsr_error(TESSERA_E_FORMAT, "directory %zu: no level or mag in \"%.60s\"", i,
                         desc);
      if (!parse_int(lbuf, &level))
        return tsr_error(TESSERA_E_FORMAT, "directory %zu: level \"%s\"", i, lbuf);
      if (!parse_double(mbuf, &mag) || isnan(mag))
        return tsr_error(TESSERA_E_FORMAT, "directory %zu: magnification \"%s\"", i, mbuf);
      if (level != *n)
        return tsr_error(TESSERA_E_FORMAT, "directory %zu is level %lld, level %d was expected",
                         i, (long long)level, *n);
      if (!(mag < prev_mag) || !(mag > 0))
        return tsr_error(TESSERA_E_FORMAT, "directory %zu: level %lld's magnification %g "
                                           "does not decrease",
                         i, (long long)level, mag);
      prev_mag = mag;
      if (level == 0)
        mag0 = mag;
      if (!d->level.tiled)
        return tsr_error(TESSERA_E_FORMAT, "directory %zu, level %lld, is not tiled", i,
                         (long long)level);
      if (level > 0 && (d->level.tile_w != dirs->dir[levels[0].dir].level.tile_w ||
                        d->level.tile_h != dirs->dir[levels[0].dir].level.tile_h))
        return tsr_error(TESSERA_E_FORMAT, "level %lld's tiles are not level 0's size",
                         (long long)level);
      levels[*n].dir = i;
      levels[*n].downsample = mag0 / mag;
      (*n)++;
    } else if (strcmp(desc, "Label Image") == 0 || strcmp(desc, "Label_Image") == 0) {
      tsr_findings_add_associated(out, i, "macro");
    } else if (strcmp(desc, "Thumbnail") == 0) {
      tsr_findings_add_associated(out, i, "thumbnail");
    }
  }
  if (*n == 0)
    return tsr_error(TESSERA_E_FORMAT, "no directory is a level (\"level=N mag=M\")");
  /* Widest first, as OpenSlide orders them (a stable sort: equal widths keep their order). */
  for (int32_t i = 1; i < *n; i++) {
    struct found_level l = levels[i];
    int32_t j = i;
    for (; j > 0 && dirs->dir[levels[j - 1].dir].level.width < dirs->dir[l.dir].level.width; j--)
      levels[j] = levels[j - 1];
    levels[j] = l;
  }
  return TESSERA_OK;
}

static tessera_status place_levels(const struct tsr_dirs *dirs, const struct found_level *lv,
                                   int32_t n, const struct bif *bif, struct tsr_findings *out) {
  out->level_dirs = tsr_calloc((size_t)n, sizeof *out->level_dirs);
  out->level_sizes = tsr_calloc((size_t)n, sizeof *out->level_sizes);
  if (!out->level_dirs || !out->level_sizes)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  const struct tsr_level *l0 = &dirs->dir[lv[0].dir].level;
  int64_t ox = 0, oy = 0;
  /* On one grid, each level's tiles 1/d of level 0's, side by side from the origin / d, on
   * whole pixels? Else every (sub)tile is placed on its own. */
  bool aligned = !bif || grid_origin(bif, l0, &ox, &oy);
  for (int32_t i = 0; bif && aligned && i < n; i++) {
    double d = lv[i].downsample;
    int64_t k = (int64_t)d;
    aligned = (double)k == d && k >= 1 && l0->tile_w % k == 0 && l0->tile_h % k == 0 &&
              ox % k == 0 && oy % k == 0;
  }
  if (!aligned) {
    /* tiles placed between pixels, or areas off one grid: mosaic levels (as MIRAX's) */
    if (!(out->levels = tsr_calloc((size_t)n, sizeof *out->levels)))
      return tsr_error(TESSERA_E_NOMEM, "out of memory");
    for (int32_t i = 0; i < n; i++) {
      out->level_dirs[i] = lv[i].dir;
      out->nlevels = i + 1;
      tessera_status st = placed_level(bif, &dirs->dir[lv[i].dir].level, (uint32_t)lv[i].dir,
                                       lv[i].downsample, &out->levels[i]);
      if (st != TESSERA_OK)
        return st;
      out->level_sizes[i] =
          (struct tsr_level_size){out->levels[i].width, out->levels[i].height, lv[i].downsample};
    }
    return TESSERA_OK;
  }
  if (bif) {
    if (!(out->level_origin = tsr_calloc((size_t)n, sizeof *out->level_origin)))
      return tsr_error(TESSERA_E_NOMEM, "out of memory");
  }
  for (int32_t i = 0; i < n; i++) {
    const struct tsr_level *l = &dirs->dir[lv[i].dir].level;
    out->level_dirs[i] = lv[i].dir;
    out->level_sizes[i] = (struct tsr_level_size){l->width, l->height, lv[i].downsample};
    if (!bif)
      continue;
    /* Level i's tiles are level 0's, 1/d the size, side by side from the grid's origin / d. */
    double d = lv[i].downsample;
    int64_t k = (int64_t)d;
    int64_t grid_w = (int64_t)l0->across * (l0->tile_w / k);
    int64_t grid_h = (int64_t)l0->down * (l0->tile_h / k);
    out->level_origin[i] = (struct tsr_level_origin){
        ox / k, oy / k, grid_w < l->width ? grid_w : l->width,
        grid_h < l->height ? grid_h : l->height};
    out->level_sizes[i].width = ox / k + grid_w;
    out->level_sizes[i].height = oy / k + grid_h;
    if (out->level_sizes[i].width < 1 || out->level_sizes[i].height < 1)
      return tsr_error(TESSERA_E_FORMAT, "level %d has no pixels", i);
  }
  out->nlevels = n;
  return TESSERA_OK;
}

static tessera_status open_iscan(struct tsr_dirs *dirs, const struct tsr_xml_node *iscan,
                                 struct tsr_findings *out) {
  tessera_status st = add_iscan_props(iscan, out);
  if (st != TESSERA_OK)
    return st;
  struct found_level *levels = tsr_calloc(dirs->n, sizeof *levels);
  if (!levels)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  int32_t n = 0;
  struct bif bif = {0};
  st = find_levels(dirs, levels, &n, out);
  const struct tsr_dir *d0 = st == TESSERA_OK ? &dirs->dir[levels[0].dir] : NULL;
  if (st == TESSERA_OK && d0->xmp)
    st = read_bif(d0->xmp, d0->level.tile_w, d0->level.tile_h, &bif);
  if (st == TESSERA_OK)
    st = place_levels(dirs, levels, n, d0->xmp ? &bif : NULL, out);
  if (st == TESSERA_OK) {
    if (d0->xmp)
      add_area_props(&bif, &d0->level, out);
    tsr_props_add_string(&out->props, "tessera.comment", d0->description);
    out->props_dir = levels[0].dir;
    out->background = 255;
  }
  tsr_free(bif.areas);
  tsr_free(levels);
  return st;
}

static tessera_status ventana_open(struct tsr_dirs *dirs, struct tsr_findings *out) {
  const char *xml = dirs->dir[0].xmp;
  struct tsr_xml_doc *doc;
  tessera_status st = tsr_xml_parse(xml, strlen(xml), &doc);
  if (st != TESSERA_OK)
    return tsr_error_prefix(st, "Ventana XMLPacket: ");
  const struct tsr_xml_node *iscan = find_iscan(tsr_xml_root(doc));
  if (!iscan) {
    /* OpenSlide reads it as a plain TIFF */
    tsr_xml_free(doc);
    out->vendor = tsr_vendor_generic.name;
    return tsr_vendor_generic.open(dirs, out);
  }
  st = open_iscan(dirs, iscan, out);
  tsr_xml_free(doc);
  return st == TESSERA_OK ? st : tsr_error_prefix(st, "Ventana: ");
}

const struct tsr_vendor tsr_vendor_ventana = {"ventana", ventana_detect, ventana_open};
