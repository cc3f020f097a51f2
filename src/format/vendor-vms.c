/* Hamamatsu VMS and VMU: a key file (.vms, .vmu: INI text as GLib reads it) naming image files
 * beside it. A VMS slide's main image is a grid of JPEG files (ImageFile, ImageFile(x,y)),
 * each one scan with restart markers; its map (MapFile) is one more JPEG, the second level. As
 * in OpenSlide 3.4.1, each file's tiles are its restart intervals (restart interval x MCU
 * width, one MCU high), only whole ones (a file's partial interval column and MCU row are not
 * shown: the level's pixels beyond its tiles are background), tile number n of a file being its
 * n-th interval in file order; and each level is also offered decoded at 1/2, 1/4 and 1/8 by
 * libjpeg's scaled IDCT where the tile's sides divide, a level of a width given twice taking
 * the later one (the map's over the main image's). A VMU slide's two levels (ImageFile, MapFile)
 * are NGR files: 16-bit RGB samples in columns of a fixed width, shown as tiles of that width
 * and 64 rows, each sample shifted down by 4 bits and kept to its low 8 (OpenSlide's 12-bit
 * reading). The macro image (MacroImage) is one JPEG. Everything the group holds is a
 * hamamatsu.* property. The restart markers are found at open, by reading each JPEG through;
 * the OptimisationFile (where OpenSlide starts its search) is not needed for that. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <tiff.h>

#include "alloc.h"
#include "codec/codec.h"
#include "compat/sha256.h"
#include "error.h"
#include "format/format.h"
#include "format/ini.h"
#include "source/byte_source.h"
#include "source/file_set.h"
#include "source/tile_source.h"

#define GROUP_VMS "Virtual Microscope Specimen"
#define GROUP_VMU "Uncompressed Virtual Microscope Specimen"
#define KEY_FILE_MAX (64 << 10) /* OpenSlide's limit on the key file's size */
#define MAX_JPEGS 4096          /* image files of a grid */
#define MAX_HEADER (1 << 20)    /* bytes of a JPEG header (SOI to SOS) */
#define MAX_TILES ((uint64_t)1 << 26)
#define NGR_ROWS 64
#define NGR_HEADER 32

/* ---- restart intervals of the JPEG files, as tiles ---- */

/* A JPEG file's header, kept without its DRI (each interval is decoded as an image of its
 * own); size_at: where its frame's height and width lie. */
struct vms_header {
  size_t len, size_at;
  uint8_t bytes[];
};

/* What a stored level and the levels scaled from it share (freed with the last). */
struct vms_jpegs {
  int refs;
  struct tsr_file_set *files;
  size_t n;
  struct vms_header **headers; /* by file */
  uint32_t *file_of_tile;      /* by tile: the file its interval lies in */
  uint32_t tile_w, tile_h;     /* a stored tile's size: every interval is decoded at it */
};

static void vms_jpegs_free(void *data) {
  struct vms_jpegs *j = data;
  if (!j || --j->refs > 0)
    return;
  for (size_t i = 0; j->headers && i < j->n; i++)
    tsr_free(j->headers[i]);
  tsr_free(j->headers);
  tsr_free(j->file_of_tile);
  tsr_file_set_unref(j->files);
  tsr_free(j);
}

static bool vms_missing(const struct tsr_level *lv, uint64_t index) {
  return lv->bytecounts[index] == 0;
}

/* Tile index: the file's header, then the interval's bytes (from the first byte after the
 * marker before it to the two bytes of the marker that ends it, made an EOI). */
static tessera_status vms_stream(const tessera_slide *s, const struct tsr_level *lv, uint64_t index,
                                 struct tsr_scratch *buf, struct tsr_stream *out) {
  const struct vms_jpegs *j = lv->source_data;
  uint32_t file = j->file_of_tile[index];
  const struct vms_header *h = j->headers[file];
  uint64_t n = lv->bytecounts[index];
  if (n > s->limits.max_tile_bytes)
    return tsr_error(TESSERA_E_LIMIT, "%llu bytes, over the limit of %llu", (unsigned long long)n,
                     (unsigned long long)s->limits.max_tile_bytes);
  if (n < 3)
    return tsr_error(TESSERA_E_CORRUPT, "%llu bytes are too few for a restart interval",
                     (unsigned long long)n);
  if (!tsr_scratch_reserve(buf, h->len + (size_t)n))
    return tsr_error(TESSERA_E_NOMEM, "out of memory for %llu bytes", (unsigned long long)n);
  uint8_t *d = buf->data;
  memcpy(d, h->bytes, h->len);
  tessera_status st = tsr_file_set_read(j->files, file, lv->offsets[index], (size_t)n, d + h->len);
  if (st != TESSERA_OK)
    return st;
  out->len = h->len + (size_t)n;
  if (d[out->len - 2] != 0xFF)
    return tsr_error(TESSERA_E_CORRUPT, "%s: the restart interval does not end with a marker",
                     tsr_file_set_name(j->files, file));
  d[out->len - 1] = 0xD9;
  d[h->size_at] = (uint8_t)(j->tile_h >> 8);
  d[h->size_at + 1] = (uint8_t)j->tile_h;
  d[h->size_at + 2] = (uint8_t)(j->tile_w >> 8);
  d[h->size_at + 3] = (uint8_t)j->tile_w;
  out->data = d;
  out->jpeg = (struct tsr_jpeg_hints){.size_at = h->size_at, .exact_end = false};
  return TESSERA_OK;
}

static const struct tsr_tile_source vms_intervals = {
    .unit = "restart interval",
    .missing = vms_missing,
    .stream = vms_stream,
    .free = vms_jpegs_free,
};

/* ---- NGR columns, as tiles ---- */

struct vms_ngr {
  struct tsr_file_set *files;
  size_t file; /* the level's, in files */
  uint32_t column_w;
  uint64_t start; /* of the samples */
};

static void vms_ngr_free(void *data) {
  struct vms_ngr *g = data;
  if (g)
    tsr_file_set_unref(g->files);
  tsr_free(g);
}

/* Tile index: its rows of 16-bit samples, made 8-bit RGB (a whole tile: rows below the image
 * are zero). */
static tessera_status ngr_stream(const tessera_slide *s, const struct tsr_level *lv, uint64_t index,
                                 struct tsr_scratch *buf, struct tsr_stream *out) {
  (void)s;
  const struct vms_ngr *g = lv->source_data;
  uint64_t tx = index % lv->across, ty = index / lv->across;
  uint64_t rows = (uint64_t)lv->height - ty * NGR_ROWS;
  if (rows > NGR_ROWS)
    rows = NGR_ROWS;
  size_t pixels = (size_t)g->column_w * rows, whole = (size_t)g->column_w * NGR_ROWS;
  uint64_t offset = g->start + (ty * NGR_ROWS + tx * (uint64_t)lv->height) * g->column_w * 6;
  if (!tsr_scratch_reserve(buf, pixels * 6 > whole * 3 ? pixels * 6 : whole * 3))
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a column's tile");
  tessera_status st = tsr_file_set_read(g->files, g->file, offset, pixels * 6, buf->data);
  if (st != TESSERA_OK)
    return st;
  uint8_t *d = buf->data;
  for (size_t i = 0; i < pixels * 3; i++) /* in place: each sample's two bytes come first */
    d[i] = (uint8_t)((d[2 * i] | d[2 * i + 1] << 8) >> 4);
  memset(d + pixels * 3, 0, (whole - pixels) * 3);
  out->data = d;
  out->len = whole * 3;
  return TESSERA_OK;
}

static const struct tsr_tile_source vms_ngr_columns = {
    .unit = "tile",
    .missing = vms_missing,
    .stream = ngr_stream,
    .free = vms_ngr_free,
};

/* ---- the key file ---- */

struct vms {
  const tessera_open_options *limits;
  char *folder;
  struct tsr_ini ini;
  const char *group;
  bool vmu;
  int32_t cols, rows;
  char **paths; /* cols * rows image files, then the map */
  size_t npaths;
  struct tsr_file_set *files;
  char *comment;
  struct tsr_sha256 quickhash; /* OpenSlide's quickhash-1: the key file, then the map file */
  uint8_t *opt;                /* the optimisation file, or NULL */
  size_t opt_len, opt_at;
};

static bool ends_with(const char *s, const char *tail) {
  size_t n = strlen(s), m = strlen(tail);
  return n >= m && strcmp(s + n - m, tail) == 0;
}

static bool vms_detect(const char *path) {
  if (!ends_with(path, ".vms") && !ends_with(path, ".vmu"))
    return false;
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static char *join(const char *folder, const char *name) {
  size_t a = strlen(folder), b = strlen(name);
  char *p = tsr_malloc(a + b + 2);
  if (p) {
    memcpy(p, folder, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
  }
  return p;
}

/* A file name the key file gives: one in the slide's folder (no path, no "..": a key file
 * cannot send the reader elsewhere). */
static tessera_status file_path(const struct vms *v, const char *key, const char *name,
                                char **out) {
  *out = NULL;
  if (!*name || strchr(name, '/') || strcmp(name, "..") == 0 || strcmp(name, ".") == 0)
    return tsr_error(TESSERA_E_FORMAT, "key file: %s \"%.60s\" is not a file in the slide's folder",
                     key, name);
  if (!(*out = join(v->folder, name)))
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  return TESSERA_OK;
}

static tessera_status read_all(const struct tsr_byte_source *src, size_t n, uint8_t *dst) {
  size_t got = 0;
  tessera_status st = tsr_bytes_read_at(src, 0, n, dst, &got);
  if (st == TESSERA_OK && got != n)
    st = tsr_error(TESSERA_E_CORRUPT, "the file ends early");
  return st;
}

static tessera_status read_key_file(struct vms *v, const char *path) {
  struct tsr_byte_source *src;
  tessera_status st = tsr_file_source_open(path, &src);
  if (st != TESSERA_OK)
    return st;
  uint64_t size = src->ops->size(src);
  uint8_t *text = NULL;
  if (size > KEY_FILE_MAX)
    st = tsr_error(TESSERA_E_FORMAT, "the key file is %llu bytes, more than %d",
                   (unsigned long long)size, KEY_FILE_MAX);
  else if (!(text = tsr_malloc(size ? (size_t)size : 1)))
    st = tsr_error(TESSERA_E_NOMEM, "out of memory");
  else
    st = read_all(src, (size_t)size, text);
  if (st == TESSERA_OK) {
    tsr_sha256_update(&v->quickhash, text, (size_t)size);
    st = tsr_ini_parse(text, (size_t)size, "key file", &v->ini);
  }
  tsr_free(text);
  tsr_byte_source_close(src);
  return st;
}

/* Whether the group has any key (an INI group with no keys is not distinguishable here from a
 * missing one, and gives no slide either way). */
static bool has_group(const struct tsr_ini *ini, const char *group) {
  for (size_t i = 0; i < ini->n; i++)
    if (strcmp(ini->entry[i].group, group) == 0)
      return true;
  return false;
}

/* "ImageFile", "ImageFile(z)", "ImageFile(x,y)", "ImageFile(z,x,y)": layer, column, row as
 * OpenSlide reads them (strtol after each separator). False: more parts than three. */
static bool image_key(const char *suffix, long *layer, long *col, long *row) {
  long part[3] = {0, 0, 0};
  int n = 0;
  if (*suffix) {
    const char *p = suffix;
    for (;;) {
      if (n == 3)
        return false;
      part[n++] = strtol(p + 1, NULL, 10); /* the first skips '(', the others ',' */
      const char *c = strchr(p + 1, ',');
      if (!c)
        break;
      p = c;
    }
  }
  *layer = n == 1 || n == 3 ? part[0] : 0;
  *col = n == 2 ? part[0] : n == 3 ? part[1] : 0;
  *row = n == 2 ? part[1] : n == 3 ? part[2] : 0;
  return true;
}

static tessera_status read_names(struct vms *v) {
  const char *value;
  if (has_group(&v->ini, GROUP_VMS)) {
    v->group = GROUP_VMS;
    if (!(value = tsr_ini_get(&v->ini, v->group, "NoJpegColumns")) ||
        !tsr_ini_int(value, &v->cols) || !(value = tsr_ini_get(&v->ini, v->group, "NoJpegRows")) ||
        !tsr_ini_int(value, &v->rows))
      return tsr_error(TESSERA_E_FORMAT, "key file: NoJpegColumns or NoJpegRows missing");
  } else if (has_group(&v->ini, GROUP_VMU)) {
    v->group = GROUP_VMU;
    v->vmu = true;
    v->cols = v->rows = 1;
    int32_t bits;
    value = tsr_ini_get(&v->ini, v->group, "BitsPerPixel");
    if (!value || !tsr_ini_int(value, &bits) || bits != 36)
      return tsr_error(TESSERA_E_FORMAT, "key file: BitsPerPixel must be 36");
    value = tsr_ini_get(&v->ini, v->group, "PixelOrder");
    if (!value || strcmp(value, "RGB") != 0)
      return tsr_error(TESSERA_E_FORMAT, "key file: PixelOrder must be RGB");
  } else {
    return tsr_error(TESSERA_E_FORMAT, "key file: no [%s] or [%s] group", GROUP_VMS, GROUP_VMU);
  }
  if (v->cols < 1 || v->rows < 1 || (int64_t)v->cols * v->rows > MAX_JPEGS)
    return tsr_error(TESSERA_E_FORMAT, "key file: a grid of %d x %d image files", (int)v->cols,
                     (int)v->rows);
  v->npaths = (size_t)v->cols * (size_t)v->rows + 1;
  if (!(v->paths = tsr_calloc(v->npaths, sizeof *v->paths)))
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  if (!(value = tsr_ini_get(&v->ini, v->group, "MapFile")) || !*value)
    return tsr_error(TESSERA_E_FORMAT, "key file: no MapFile");
  tessera_status st = file_path(v, "MapFile", value, &v->paths[v->npaths - 1]);
  for (size_t i = 0; st == TESSERA_OK && i < v->ini.n; i++) {
    const struct tsr_ini_entry *e = &v->ini.entry[i];
    if (strcmp(e->group, v->group) != 0 || strncmp(e->key, "ImageFile", 9) != 0)
      continue;
    long layer, col, row;
    if (!image_key(e->key + 9, &layer, &col, &row))
      return tsr_error(TESSERA_E_FORMAT, "key file: %.40s has more than three dimensions", e->key);
    if (layer != 0)
      continue; /* other focal planes are not shown, as OpenSlide shows none */
    if (col < 0 || row < 0 || col >= v->cols || row >= v->rows)
      return tsr_error(TESSERA_E_FORMAT, "key file: image file (%ld,%ld) outside the %dx%d grid",
                       col, row, (int)v->cols, (int)v->rows);
    size_t k = (size_t)row * (size_t)v->cols + (size_t)col;
    if (v->paths[k])
      return tsr_error(TESSERA_E_FORMAT, "key file: two image files for (%ld,%ld)", col, row);
    st = file_path(v, e->key, e->value, &v->paths[k]);
  }
  for (size_t i = 0; st == TESSERA_OK && i < v->npaths; i++)
    if (!v->paths[i])
      st = tsr_error(TESSERA_E_FORMAT, "key file: no image file for (%zu,%zu)", i % (size_t)v->cols,
                     i / (size_t)v->cols);
  if (st == TESSERA_OK)
    st = tsr_file_set_new((const char *const *)v->paths, v->npaths, &v->files);
  return st;
}

/* ---- the JPEG files ---- */

struct jpeg_file {
  struct vms_header *header;
  uint32_t width, height, tile_w, tile_h, across, down;
  uint64_t per_row, mcu_rows; /* restart intervals in a row of MCUs; rows of MCUs */
  uint64_t size, data_start;  /* the file's size; where its entropy-coded data starts */
};

static tessera_status read_bytes(struct vms *v, size_t file, uint64_t at, size_t n, uint8_t *dst) {
  return tsr_file_set_read(v->files, file, at, n, dst);
}

/* The header (SOI to SOS), its geometry, and the first file's comment. */
static tessera_status read_jpeg_header(struct vms *v, size_t file, struct jpeg_file *jf) {
  tessera_status st = tsr_file_set_size(v->files, file, &jf->size);
  if (st != TESSERA_OK)
    return st;
  size_t cap = jf->size < MAX_HEADER ? (size_t)jf->size : MAX_HEADER;
  uint8_t *h = tsr_malloc(sizeof(struct vms_header) + (cap ? cap : 1));
  if (!h)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  jf->header = (struct vms_header *)h;
  uint8_t *b = jf->header->bytes;
  if ((st = read_bytes(v, file, 0, cap, b)) != TESSERA_OK)
    return st;
  if (cap < 4 || b[0] != 0xFF || b[1] != 0xD8)
    return tsr_error(TESSERA_E_FORMAT, "not a JPEG file");
  size_t pos = 2, sof = 0, dri = 0, end = 0;
  while (!end) {
    if (pos + 4 > cap || b[pos] != 0xFF)
      return tsr_error(TESSERA_E_FORMAT, "no image data in the first %zu bytes", cap);
    uint8_t m = b[pos + 1];
    size_t len = (size_t)b[pos + 2] << 8 | b[pos + 3];
    if (m == 0xFF) { /* fill byte */
      pos++;
      continue;
    }
    if (len < 2 || pos + 2 + len > cap)
      return tsr_error(TESSERA_E_FORMAT, "a JPEG segment runs past the header's end");
    if (m == 0xC0 || m == 0xC1)
      sof = pos;
    else if (m >= 0xC2 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC)
      return tsr_error(TESSERA_E_UNSUPPORTED, "not a baseline Huffman-coded JPEG");
    else if (m == 0xDD && len != 4)
      return tsr_error(TESSERA_E_FORMAT, "a restart interval segment of %zu bytes", len);
    else if (m == 0xDD)
      dri = pos;
    else if (m == 0xFE && file == 0 && !v->comment)
      v->comment = tsr_strndup((const char *)b + pos + 4, len - 2);
    pos += 2 + len;
    if (m == 0xDA)
      end = pos;
  }
  if (!sof)
    return tsr_error(TESSERA_E_FORMAT, "no frame header");
  struct tsr_jpeg_geometry g;
  if ((st = tsr_jpeg_read_geometry(b, end, &g)) != TESSERA_OK)
    return st;
  if (g.components != 3)
    return tsr_error(TESSERA_E_UNSUPPORTED, "the JPEG has %u colour components, not 3",
                     g.components);
  if (!dri || g.restart_interval == 0)
    return tsr_error(TESSERA_E_FORMAT, "the JPEG has no restart markers");
  if (!g.one_scan || g.width == 0 || g.height == 0)
    return tsr_error(TESSERA_E_UNSUPPORTED, "the JPEG is not one scan of a sized image");
  uint64_t per_row = ((uint64_t)g.width + g.mcu_w - 1) / g.mcu_w;
  if (g.restart_interval > per_row || per_row % g.restart_interval != 0)
    return tsr_error(TESSERA_E_FORMAT, "restart interval of %u MCUs does not divide a row of %llu",
                     g.restart_interval, (unsigned long long)per_row);
  uint64_t tw = (uint64_t)g.mcu_w * g.restart_interval;
  if (tw > 65500)
    return tsr_error(TESSERA_E_UNSUPPORTED, "restart intervals %llu pixels wide",
                     (unsigned long long)tw);
  jf->width = g.width;
  jf->height = g.height;
  jf->tile_w = (uint32_t)tw;
  jf->tile_h = g.mcu_h;
  jf->across = (uint32_t)(g.width / tw);
  jf->down = g.height / g.mcu_h;
  jf->per_row = per_row / g.restart_interval;
  jf->mcu_rows = ((uint64_t)g.height + g.mcu_h - 1) / g.mcu_h;
  /* every interval but the last ends with a two-byte marker: a header claiming more than the
   * file can hold allocates nothing */
  if (jf->per_row * jf->mcu_rows > MAX_TILES ||
      jf->per_row * jf->mcu_rows > (jf->size - end) / 2 + 1)
    return tsr_error(TESSERA_E_FORMAT, "%llu restart intervals cannot fit in %llu bytes",
                     (unsigned long long)(jf->per_row * jf->mcu_rows),
                     (unsigned long long)jf->size);
  jf->data_start = end;
  jf->header->size_at = sof + 5;
  jf->header->len = end;
  if (dri < sof)
    jf->header->size_at -= 6;
  memmove(b + dri, b + dri + 6, end - dri - 6); /* the DRI (6 bytes) left out */
  jf->header->len -= 6;
  return TESSERA_OK;
}

/* The data offsets of the file's restart intervals, in file order (the first right after the
 * header, each other right after the marker that ends the one before), at most max of them,
 * found by reading the file through. */
static tessera_status find_starts(struct vms *v, size_t file, const struct jpeg_file *jf,
                                  uint64_t max, uint64_t *starts, uint64_t *found) {
  enum { CHUNK = 1 << 20 };
  uint8_t *chunk = tsr_malloc(CHUNK + 1);
  if (!chunk)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  tessera_status st = TESSERA_OK;
  uint64_t n_found = 1;
  bool ended = false;
  starts[0] = jf->data_start;
  for (uint64_t at = jf->data_start; at + 1 < jf->size && n_found < max && !ended;) {
    /* windows overlap by one byte: a marker may straddle two */
    size_t n = jf->size - at < CHUNK + 1 ? (size_t)(jf->size - at) : CHUNK + 1;
    if ((st = read_bytes(v, file, at, n, chunk)) != TESSERA_OK)
      break;
    for (size_t i = 0; i + 1 < n && n_found < max; i++) {
      if (chunk[i] != 0xFF)
        continue;
      uint8_t m = chunk[i + 1];
      if (m >= 0xD0 && m <= 0xD7) {
        starts[n_found++] = at + i + 2;
        i++;
      } else if (m == 0xD9) {
        ended = true;
        break;
      }
    }
    at += n - 1;
  }
  tsr_free(chunk);
  *found = n_found;
  return st;
}

/* The optimisation file's record for each of the file's tile rows (-1: none), read on from
 * where the previous file's ended, as OpenSlide reads it: 40 bytes a row, the first 8 the
 * offset of the row's first interval; a file whose first record is missing ends its use. */
static void opt_records(struct vms *v, uint32_t rows, int64_t *rec) {
  for (uint32_t r = 0; r < rows; r++)
    rec[r] = -1;
  if (!v->opt)
    return;
  for (uint32_t r = 0; r < rows; r++) {
    if (v->opt_at + 40 > v->opt_len) {
      if (r == 0) {
        tsr_free(v->opt);
        v->opt = NULL;
      }
      v->opt_at = v->opt_len;
      return;
    }
    const uint8_t *p = v->opt + v->opt_at;
    uint64_t x = 0;
    for (int k = 7; k >= 0; k--)
      x = x << 8 | p[k];
    rec[r] = (int64_t)x;
    v->opt_at += 40;
  }
}

/* Where tile t of the file starts, as OpenSlide finds it: counting intervals on from the
 * nearest tile before it whose start is known (tile 0: after the header; the first tile of a
 * row the optimisation file gives, once the marker before it is checked). */
static tessera_status tile_start(const struct jpeg_file *jf, const uint64_t *starts,
                                 uint64_t nstarts, const int64_t *rec, uint64_t t, uint64_t *out,
                                 uint64_t *end) {
  uint64_t row = t / jf->across, anchor = 0, index = 0;
  for (uint64_t r = row; r >= 1; r--) {
    if (rec[r] < 0)
      continue;
    uint64_t want = (uint64_t)rec[r], lo = 0, hi = nstarts;
    while (lo < hi) {
      uint64_t mid = lo + (hi - lo) / 2;
      if (starts[mid] < want)
        lo = mid + 1;
      else
        hi = mid;
    }
    if (lo == 0 || lo >= nstarts || starts[lo] != want)
      return tsr_error(TESSERA_E_FORMAT,
                       "the optimisation file's offset %llu for tile row %llu is no restart "
                       "interval's",
                       (unsigned long long)want, (unsigned long long)r);
    anchor = r * jf->across;
    index = lo;
    break;
  }
  index += t - anchor;
  if (index >= nstarts)
    return tsr_error(TESSERA_E_FORMAT, "%llu restart intervals, tile %llu needs more",
                     (unsigned long long)nstarts, (unsigned long long)t);
  *out = starts[index];
  *end = index + 1 < nstarts ? starts[index + 1] : jf->size;
  return TESSERA_OK;
}

/* Each of the file's tiles: where its bytes start, and how many there are through the marker
 * that ends its interval (the file's end for the last interval). OpenSlide reads on to the next
 * tile's start, which is the same place unless the tile is the last of a row whose file has
 * intervals beyond its whole tiles; the bytes past the interval are not decoded either way. */
static tessera_status find_intervals(struct vms *v, size_t file, const struct jpeg_file *jf,
                                     uint64_t count, uint64_t *offsets, uint64_t *counts) {
  uint64_t max = jf->per_row * jf->mcu_rows, nstarts = 0;
  uint64_t *starts = tsr_calloc(max ? max : 1, sizeof *starts);
  int64_t *rec = tsr_calloc(jf->down ? jf->down : 1, sizeof *rec);
  tessera_status st = TESSERA_OK;
  if (!starts || !rec)
    st = tsr_error(TESSERA_E_NOMEM, "out of memory for %llu restart intervals",
                   (unsigned long long)max);
  if (st == TESSERA_OK) {
    opt_records(v, jf->down, rec);
    st = find_starts(v, file, jf, max, starts, &nstarts);
  }
  for (uint64_t t = 0; t < count && st == TESSERA_OK; t++) {
    uint64_t end = 0;
    st = tile_start(jf, starts, nstarts, rec, t, &offsets[t], &end);
    if (st == TESSERA_OK && end < offsets[t] + 3)
      st = tsr_error(TESSERA_E_FORMAT, "the restart interval of tile %llu has %llu bytes",
                     (unsigned long long)t, (unsigned long long)(end - offsets[t]));
    if (st == TESSERA_OK)
      counts[t] = end - offsets[t];
  }
  tsr_free(starts);
  tsr_free(rec);
  return st;
}

static void jpeg_format(struct tsr_level *lv) {
  struct tsr_pixel_format *f = &lv->fmt;
  f->compression = COMPRESSION_JPEG;
  f->spp = 3;
  f->photometric = PHOTOMETRIC_YCBCR;
  f->predictor = 1;
  f->ycbcr_sub[0] = f->ycbcr_sub[1] = 1;
  tsr_codec_resolve(f, 8, SAMPLEFORMAT_UINT, PLANARCONFIG_CONTIG, 0, EXTRASAMPLE_UNSPECIFIED);
  lv->tiled = true;
}

/* A stored level from files first .. first + cols * rows - 1 (a grid, row by row). */
static tessera_status jpeg_level(struct vms *v, size_t first, int32_t cols, int32_t rows,
                                 uint32_t directory, struct tsr_level *lv) {
  size_t n = (size_t)cols * (size_t)rows;
  struct jpeg_file *jf = tsr_calloc(n, sizeof *jf);
  struct vms_jpegs *j = tsr_calloc(1, sizeof *j);
  tessera_status st = TESSERA_OK;
  if (!jf || !j || !(j->headers = tsr_calloc(n, sizeof *j->headers))) {
    tsr_free(jf);
    if (j)
      tsr_free(j->headers);
    tsr_free(j);
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  }
  j->refs = 1;
  j->n = n;
  j->files = v->files;
  tsr_file_set_ref(v->files);
  lv->source = &vms_intervals;
  lv->source_data = j;
  jpeg_format(lv);
  lv->directory = directory;
  for (size_t i = 0; i < n && st == TESSERA_OK; i++) {
    st = read_jpeg_header(v, first + i, &jf[i]);
    j->headers[i] = jf[i].header;
    if (st != TESSERA_OK)
      st = tsr_error_prefix(st, "%s: ", tsr_file_set_name(v->files, first + i));
  }
  uint64_t across = 0, down = 0;
  if (st == TESSERA_OK) {
    /* The grid's files share the first's tile size, and all but the last column and row its
     * tile counts (OpenSlide's conditions: tile positions follow from them). */
    for (size_t i = 1; i < n && st == TESSERA_OK; i++) {
      bool last_col = i % (size_t)cols == (size_t)cols - 1,
           last_row = i / (size_t)cols == (size_t)rows - 1;
      if (jf[i].tile_w != jf[0].tile_w || jf[i].tile_h != jf[0].tile_h ||
          (!last_col && jf[i].across != jf[0].across) || (!last_row && jf[i].down != jf[0].down))
        st = tsr_error(TESSERA_E_FORMAT, "%s: tiles of %ux%u, %u x %u, unlike the first file's",
                       tsr_file_set_name(v->files, first + i), jf[i].tile_w, jf[i].tile_h,
                       jf[i].across, jf[i].down);
    }
    for (int32_t x = 0; x < cols; x++) {
      lv->width += jf[x].width;
      across += jf[x].across;
    }
    for (int32_t y = 0; y < rows; y++) {
      lv->height += jf[(size_t)y * (size_t)cols].height;
      down += jf[(size_t)y * (size_t)cols].down;
    }
    uint64_t bytes = 0; /* the level's tiles must fit in its files (2 bytes a marker) */
    for (size_t i = 0; i < n; i++)
      bytes += jf[i].size / 2 + 1;
    if (st == TESSERA_OK &&
        (across == 0 || down == 0 || across * down > MAX_TILES || across * down > bytes))
      st = tsr_error(TESSERA_E_FORMAT, "%llu x %llu whole restart intervals",
                     (unsigned long long)across, (unsigned long long)down);
  }
  if (st == TESSERA_OK) {
    lv->tile_w = j->tile_w = jf[0].tile_w;
    lv->tile_h = j->tile_h = jf[0].tile_h;
    lv->across = (uint32_t)across;
    lv->down = (uint32_t)down;
    lv->ntiles = across * down;
    /* Pixels beyond the whole tiles are no image's: the read's fill, as OpenSlide leaves
     * them transparent. */
    if ((int64_t)(across * lv->tile_w) < lv->width || (int64_t)(down * lv->tile_h) < lv->height) {
      lv->image_w =
          (int64_t)(across * lv->tile_w) < lv->width ? (int64_t)(across * lv->tile_w) : lv->width;
      lv->image_h =
          (int64_t)(down * lv->tile_h) < lv->height ? (int64_t)(down * lv->tile_h) : lv->height;
    }
    lv->downsample = 1.0;
    lv->offsets = tsr_calloc(lv->ntiles, sizeof *lv->offsets);
    lv->bytecounts = tsr_calloc(lv->ntiles, sizeof *lv->bytecounts);
    j->file_of_tile = tsr_calloc(lv->ntiles, sizeof *j->file_of_tile);
    if (!lv->offsets || !lv->bytecounts || !j->file_of_tile)
      st = tsr_error(TESSERA_E_NOMEM, "out of memory for %llu tiles",
                     (unsigned long long)lv->ntiles);
  }
  uint64_t *offs = NULL, *cnts = NULL;
  for (size_t i = 0; i < n && st == TESSERA_OK; i++) {
    uint64_t count = (uint64_t)jf[i].across * jf[i].down;
    if (count == 0)
      continue;
    offs = tsr_calloc(count, sizeof *offs);
    cnts = tsr_calloc(count, sizeof *cnts);
    if (!offs || !cnts) {
      st = tsr_error(TESSERA_E_NOMEM, "out of memory");
      break;
    }
    st = find_intervals(v, first + i, &jf[i], count, offs, cnts);
    if (st != TESSERA_OK) {
      st = tsr_error_prefix(st, "%s: ", tsr_file_set_name(v->files, first + i));
      break;
    }
    /* The file's tile t is at (t % its across, t / its across) of the file, whose first tile
     * is placed by the first file's tile counts (OpenSlide's placement). */
    uint64_t c0 = (uint64_t)(i % (size_t)cols) * jf[0].across;
    uint64_t r0 = (uint64_t)(i / (size_t)cols) * jf[0].down;
    for (uint64_t t = 0; t < count; t++) {
      uint64_t gx = c0 + t % jf[i].across, gy = r0 + t / jf[i].across;
      if (gx >= across || gy >= down)
        continue;
      uint64_t k = gy * across + gx;
      lv->offsets[k] = offs[t];
      lv->bytecounts[k] = cnts[t];
      j->file_of_tile[k] = (uint32_t)(first + i);
    }
    tsr_free(offs);
    tsr_free(cnts);
    offs = cnts = NULL;
  }
  tsr_free(offs);
  tsr_free(cnts);
  /* headers index by file number in the set: move them to their place */
  if (st == TESSERA_OK && first != 0) {
    struct vms_header **all = tsr_calloc(first + n, sizeof *all);
    if (!all) {
      st = tsr_error(TESSERA_E_NOMEM, "out of memory");
    } else {
      memcpy(all + first, j->headers, n * sizeof *all);
      tsr_free(j->headers);
      j->headers = all;
      j->n = first + n;
    }
  }
  tsr_free(jf);
  return st;
}

/* The level of stored level `stored` decoded at 1/k: its tables copied, its files shared. */
static tessera_status scaled_level(const struct tsr_level *stored, uint32_t k,
                                   struct tsr_level *lv) {
  *lv = *stored;
  lv->width = stored->width / k;
  lv->height = stored->height / k;
  lv->tile_w = stored->tile_w / k;
  lv->tile_h = stored->tile_h / k;
  lv->image_w = stored->image_w / k;
  lv->image_h = stored->image_h / k;
  lv->fmt.jpeg_scale = (uint8_t)k;
  lv->offsets = tsr_malloc(stored->ntiles * sizeof *lv->offsets);
  lv->bytecounts = tsr_malloc(stored->ntiles * sizeof *lv->bytecounts);
  ((struct vms_jpegs *)lv->source_data)->refs++;
  if (!lv->offsets || !lv->bytecounts)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  memcpy(lv->offsets, stored->offsets, stored->ntiles * sizeof *lv->offsets);
  memcpy(lv->bytecounts, stored->bytecounts, stored->ntiles * sizeof *lv->bytecounts);
  return TESSERA_OK;
}

/* OpenSlide's levels: the main image, its 1/2, 1/4, 1/8 (where the tile's sides divide), the
 * map and its; a width given twice keeps the later; largest first. */
static tessera_status vms_levels(struct vms *v, struct tsr_findings *out) {
  struct tsr_level stored[2];
  memset(stored, 0, sizeof stored);
  tessera_status st = jpeg_level(v, 0, v->cols, v->rows, 0, &stored[0]);
  if (st == TESSERA_OK)
    st = jpeg_level(v, v->npaths - 1, 1, 1, 1, &stored[1]);
  if (st != TESSERA_OK) {
    tsr_level_free(&stored[0]);
    tsr_level_free(&stored[1]);
    return st;
  }
  if (!(out->levels = tsr_calloc(8, sizeof *out->levels))) {
    tsr_level_free(&stored[0]);
    tsr_level_free(&stored[1]);
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  }
  int32_t m = 0;
  for (int s = 0; s < 2 && st == TESSERA_OK; s++) {
    int32_t at = -1; /* where the stored level went */
    for (uint32_t k = 1; k <= 8 && st == TESSERA_OK; k *= 2) {
      const struct tsr_level *b = k == 1 ? &stored[s] : at >= 0 ? &out->levels[at] : NULL;
      if (!b)
        break;
      if (b->tile_w % k || b->tile_h % k || b->width / k == 0 || b->height / k == 0)
        continue;
      struct tsr_level lv;
      if (k == 1) {
        lv = *b;
        memset(&stored[s], 0, sizeof stored[s]); /* moved */
      } else if ((st = scaled_level(&out->levels[at], k, &lv)) != TESSERA_OK) {
        tsr_level_free(&lv);
        break;
      }
      int32_t same = -1;
      for (int32_t i = 0; i < m; i++)
        if (out->levels[i].width == lv.width)
          same = i;
      if (same >= 0) {
        tsr_level_free(&out->levels[same]);
        out->levels[same] = lv;
      } else {
        same = m++;
        out->levels[same] = lv;
        out->nlevels = m;
      }
      if (k == 1)
        at = same;
    }
  }
  /* largest first (insertion sort: at most eight) */
  for (int32_t i = 1; i < m; i++)
    for (int32_t k = i; k > 0 && out->levels[k - 1].width < out->levels[k].width; k--) {
      struct tsr_level t = out->levels[k];
      out->levels[k] = out->levels[k - 1];
      out->levels[k - 1] = t;
    }
  tsr_level_free(&stored[0]);
  tsr_level_free(&stored[1]);
  return st;
}

/* ---- VMU ---- */

static uint32_t le32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static tessera_status ngr_level(struct vms *v, size_t file, struct tsr_level *lv) {
  uint8_t h[NGR_HEADER];
  uint64_t size;
  tessera_status st = tsr_file_set_size(v->files, file, &size);
  if (st == TESSERA_OK && size < NGR_HEADER)
    st = tsr_error(TESSERA_E_FORMAT, "%llu bytes, too few for an NGR header",
                   (unsigned long long)size);
  if (st == TESSERA_OK)
    st = tsr_file_set_read(v->files, file, 0, NGR_HEADER, h);
  if (st == TESSERA_OK && (h[0] != 'G' || h[1] != 'N'))
    st = tsr_error(TESSERA_E_FORMAT, "not an NGR file");
  int32_t w = (int32_t)le32(h + 4), ht = (int32_t)le32(h + 8), cw = (int32_t)le32(h + 12),
          start = (int32_t)le32(h + 24);
  if (st == TESSERA_OK && (w <= 0 || ht <= 0 || cw <= 0 || start <= 0))
    st = tsr_error(TESSERA_E_FORMAT, "NGR header gives %d x %d, columns %d wide, data at %d", w, ht,
                   cw, start);
  if (st == TESSERA_OK && w % cw != 0)
    st = tsr_error(TESSERA_E_FORMAT, "width %d is no multiple of the column width %d", w, cw);
  if (st == TESSERA_OK && (uint64_t)cw * NGR_ROWS * 6 > v->limits->max_tile_bytes)
    st = tsr_error(TESSERA_E_LIMIT, "columns %d wide make tiles over the limit", cw);
  if (st == TESSERA_OK &&
      ((uint64_t)start > size || (uint64_t)w * (uint64_t)ht * 6 > size - (uint64_t)start))
    st = tsr_error(TESSERA_E_FORMAT, "%d x %d samples do not fit in the file's %llu bytes", w, ht,
                   (unsigned long long)size);
  if (st == TESSERA_OK &&
      (uint64_t)(w / cw) * (((uint64_t)ht + NGR_ROWS - 1) / NGR_ROWS) > MAX_TILES)
    st = tsr_error(TESSERA_E_FORMAT, "too many tiles");
  if (st != TESSERA_OK)
    return tsr_error_prefix(st, "%s: ", tsr_file_set_name(v->files, file));
  struct vms_ngr *g = tsr_calloc(1, sizeof *g);
  if (!g)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  g->files = v->files;
  tsr_file_set_ref(v->files);
  g->file = file;
  g->column_w = (uint32_t)cw;
  g->start = (uint64_t)start;
  lv->source = &vms_ngr_columns;
  lv->source_data = g;
  lv->width = w;
  lv->height = ht;
  lv->downsample = 1.0;
  lv->directory = (uint32_t)file;
  lv->tiled = true;
  lv->tile_w = (uint32_t)cw;
  lv->tile_h = NGR_ROWS;
  lv->across = (uint32_t)(w / cw);
  lv->down = (uint32_t)(((uint64_t)ht + NGR_ROWS - 1) / NGR_ROWS);
  lv->ntiles = (uint64_t)lv->across * lv->down;
  lv->offsets = tsr_calloc(lv->ntiles, sizeof *lv->offsets);
  lv->bytecounts = tsr_calloc(lv->ntiles, sizeof *lv->bytecounts);
  if (!lv->offsets || !lv->bytecounts)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  for (uint64_t i = 0; i < lv->ntiles; i++)
    lv->bytecounts[i] = 1; /* present: the stream finds its bytes by position */
  struct tsr_pixel_format *f = &lv->fmt;
  f->compression = COMPRESSION_NONE;
  f->spp = 3;
  f->photometric = PHOTOMETRIC_RGB;
  f->predictor = 1;
  tsr_codec_resolve(f, 8, SAMPLEFORMAT_UINT, PLANARCONFIG_CONTIG, 0, EXTRASAMPLE_UNSPECIFIED);
  return TESSERA_OK;
}

static tessera_status vmu_levels(struct vms *v, struct tsr_findings *out) {
  if (!(out->levels = tsr_calloc(2, sizeof *out->levels)))
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  for (size_t i = 0; i < 2; i++) {
    out->nlevels = (int32_t)i + 1;
    tessera_status st = ngr_level(v, i, &out->levels[i]);
    if (st != TESSERA_OK)
      return st;
  }
  return TESSERA_OK;
}

/* ---- the rest ---- */

static tessera_status add_macro(struct vms *v, struct tsr_findings *out) {
  const char *name = tsr_ini_get(&v->ini, v->group, "MacroImage");
  if (!name || !*name)
    return TESSERA_OK;
  char *path;
  tessera_status st = file_path(v, "MacroImage", name, &path);
  if (st != TESSERA_OK)
    return st;
  struct tsr_byte_source *src = NULL;
  uint8_t *bytes = NULL;
  uint64_t size = 0;
  struct tsr_jpeg_geometry g;
  st = tsr_file_source_open(path, &src);
  tsr_free(path);
  if (st == TESSERA_OK) {
    size = src->ops->size(src);
    if (size > v->limits->max_tile_bytes)
      st = tsr_error(TESSERA_E_LIMIT, "%llu bytes, over the limit", (unsigned long long)size);
    else if (!(bytes = tsr_malloc(size ? (size_t)size : 1)))
      st = tsr_error(TESSERA_E_NOMEM, "out of memory");
    else
      st = read_all(src, (size_t)size, bytes);
  }
  tsr_byte_source_close(src);
  if (st == TESSERA_OK)
    st = tsr_jpeg_read_geometry(bytes, (size_t)size, &g);
  if (st == TESSERA_OK && g.components != 3)
    st = tsr_error(TESSERA_E_UNSUPPORTED, "%u colour components, not 3", g.components);
  struct tsr_memory_image *image = NULL;
  struct tsr_level *lv = NULL;
  if (st == TESSERA_OK) {
    image = tsr_malloc(sizeof *image);
    lv = tsr_calloc(1, sizeof *lv);
    if (!image || !lv || !(lv->offsets = tsr_calloc(1, sizeof *lv->offsets)) ||
        !(lv->bytecounts = tsr_calloc(1, sizeof *lv->bytecounts)))
      st = tsr_error(TESSERA_E_NOMEM, "out of memory");
  }
  if (st != TESSERA_OK) {
    if (lv) {
      tsr_free(lv->offsets);
      tsr_free(lv->bytecounts);
    }
    tsr_free(lv);
    tsr_free(image);
    tsr_free(bytes);
    return tsr_error_prefix(st, "the macro image %.60s: ", name);
  }
  *image = (struct tsr_memory_image){bytes, (size_t)size};
  lv->source = &tsr_memory_tiles;
  lv->source_data = image;
  lv->width = lv->tile_w = g.width;
  lv->height = lv->tile_h = g.height;
  lv->across = lv->down = 1;
  lv->ntiles = 1;
  lv->bytecounts[0] = size;
  lv->downsample = 1.0;
  lv->directory = 1000;
  jpeg_format(lv);
  out->associated[out->nassociated].level = lv;
  out->associated[out->nassociated].name = "macro";
  out->nassociated++;
  return TESSERA_OK;
}

/* tessera.quickhash-1: OpenSlide's, the key file's bytes and then the map file's. */
static tessera_status add_quickhash(struct vms *v, struct tsr_findings *out) {
  size_t map = v->npaths - 1;
  uint64_t size;
  tessera_status st = tsr_file_set_size(v->files, map, &size);
  if (st != TESSERA_OK || size > v->limits->max_tile_bytes)
    return st; /* a map over the limit: no quickhash */
  uint8_t *bytes = tsr_malloc(size ? (size_t)size : 1);
  if (!bytes)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  st = tsr_file_set_read(v->files, map, 0, (size_t)size, bytes);
  if (st == TESSERA_OK) {
    char hex[65];
    tsr_sha256_update(&v->quickhash, bytes, (size_t)size);
    tsr_sha256_hex(&v->quickhash, hex);
    tsr_props_add_string(&out->props, "tessera.quickhash-1", hex);
  }
  tsr_free(bytes);
  return st;
}

static void add_properties(struct vms *v, struct tsr_findings *out) {
  char key[256];
  for (size_t i = 0; i < v->ini.n; i++) {
    const struct tsr_ini_entry *e = &v->ini.entry[i];
    if (strcmp(e->group, v->group) != 0)
      continue;
    int n = snprintf(key, sizeof key, "hamamatsu.%s", e->key);
    if (n > 0 && (size_t)n < sizeof key)
      tsr_props_add_string(&out->props, key, e->value);
  }
  double lens;
  const char *value = tsr_ini_get(&v->ini, v->group, "SourceLens");
  if (value && tsr_ini_double(value, &lens))
    tsr_props_add_double(&out->props, "tessera.objective-power", lens);
  const char *keys[2] = {"PhysicalWidth", "PhysicalHeight"};
  const char *names[2] = {"tessera.mpp-x", "tessera.mpp-y"};
  int64_t sides[2] = {out->levels[0].width, out->levels[0].height};
  for (int i = 0; i < 2; i++) {
    int32_t nm;
    value = tsr_ini_get(&v->ini, v->group, keys[i]);
    if (value && tsr_ini_int(value, &nm) && nm > 0)
      tsr_props_add_double(&out->props, names[i], nm / (1000.0 * (double)sides[i]));
  }
  if (v->comment) {
    tsr_props_add_string(&out->props, "tessera.comment", v->comment);
  }
}

static void done(struct vms *v) {
  tsr_free(v->folder);
  tsr_ini_free(&v->ini);
  for (size_t i = 0; v->paths && i < v->npaths; i++)
    tsr_free(v->paths[i]);
  tsr_free(v->paths);
  tsr_file_set_unref(v->files);
  tsr_free(v->comment);
  tsr_free(v->opt);
}

/* The optimisation file, if the key file names one that can be read (OpenSlide reads the
 * slide without it otherwise). */
static void read_opt(struct vms *v) {
  const char *name = tsr_ini_get(&v->ini, v->group, "OptimisationFile");
  char *path = NULL;
  if (!name || file_path(v, "OptimisationFile", name, &path) != TESSERA_OK) {
    tsr_error_clear();
    return;
  }
  struct tsr_byte_source *src = NULL;
  if (tsr_file_source_open(path, &src) == TESSERA_OK) {
    uint64_t size = src->ops->size(src);
    if (size <= ((uint64_t)MAX_TILES * 40) && (v->opt = tsr_malloc(size ? (size_t)size : 1)) &&
        read_all(src, (size_t)size, v->opt) == TESSERA_OK) {
      v->opt_len = (size_t)size;
    } else {
      tsr_free(v->opt);
      v->opt = NULL;
    }
  }
  tsr_error_clear();
  tsr_byte_source_close(src);
  tsr_free(path);
}

static tessera_status vms_open(const char *path, const tessera_open_options *limits,
                               struct tsr_findings *out, struct tsr_byte_source **source) {
  struct vms v = {.limits = limits};
  tsr_sha256_init(&v.quickhash);
  *source = NULL;
  const char *slash = strrchr(path, '/');
  v.folder = slash ? tsr_strndup(path, (size_t)(slash - path)) : tsr_strdup(".");
  if (!v.folder)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  tessera_status st = read_key_file(&v, path);
  if (st == TESSERA_OK)
    st = read_names(&v);
  if (st == TESSERA_OK && !v.vmu)
    read_opt(&v);
  if (st == TESSERA_OK)
    st = v.vmu ? vmu_levels(&v, out) : vms_levels(&v, out);
  if (st == TESSERA_OK) {
    double w0 = (double)out->levels[0].width, h0 = (double)out->levels[0].height;
    for (int32_t i = 1; i < out->nlevels; i++)
      out->levels[i].downsample =
          (w0 / (double)out->levels[i].width + h0 / (double)out->levels[i].height) / 2.0;
    st = add_macro(&v, out);
  }
  if (st == TESSERA_OK)
    st = add_quickhash(&v, out);
  /* The key file is the slide's byte source: its identity keys the slide's tiles in the
   * caches. */
  if (st == TESSERA_OK)
    st = tsr_file_source_open(path, source);
  if (st == TESSERA_OK) {
    out->background = 255;
    add_properties(&v, out);
  }
  done(&v);
  return st;
}

const struct tsr_path_format tsr_format_vms = {
    .name = "hamamatsu",
    .detect = vms_detect,
    .open = vms_open,
};
