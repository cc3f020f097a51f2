/* Sakura SVSlide (.svslide): an SQLite database, read as OpenSlide 3.4.1 reads it.
 *
 * A table named by DataManagerSQLiteConfigXPO.TableName (the "unique table") holds rows of
 * (id, data): "++MagicBytes" says SVGigaPixelImage, "Header" is a little-endian blob (tile
 * side at 0, width at 4, height at 8, focal planes at 16), and each tile plane is a
 * JPEG of tile side x side whose id is "T;x|y;downsample;colour;plane" (x, y in level-0
 * pixels; colour 0 red, 1 green, 2 blue), decoded to one channel as OpenSlide decodes it
 * (libjpeg's grayscale output: a grayscale JPEG as it is, a colour one's luma). A level is each power-of-two downsample
 * that some tile of plane 0 has, its size the image's divided by it (rounded down); the
 * planes shown are the middle focal plane's, and a tile any of whose three planes is absent
 * is missing. Other tables give the sakura.* properties and the label, macro and thumbnail.
 *
 * Everything is read through SQLite (source/sqlite_tiles.h), read-only and immutable; every
 * query at open runs under an instruction budget, so a hostile database cannot hang it. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <tiff.h>
#include <unistd.h>

#include "alloc.h"
#include "codec/codec.h"
#include "compat/sha256.h"
#include "error.h"
#include "format/format.h"
#include "source/sqlite_tiles.h"

#define MAGIC "SVGigaPixelImage"
#define MAX_LEVELS 63               /* power-of-two downsamples of an int64 */
#define MAX_TILES ((uint64_t)1 << 22) /* grid tiles of all levels together */
#define MAX_HASHED_TILES (1 << 20)  /* tiles of the smallest level hashed for quickhash-1 */
#define STEP_BUDGET 400000          /* progress callbacks (of 1000 instructions) per query */

struct hashed_tile {
  char *id;
  int64_t rowid;
};

struct sakura {
  sqlite3 *conn;
  const tessera_open_options *limits;
  char *table;  /* the unique table's name, */
  char *quoted; /* and as an SQL identifier */
  uint32_t tile;
  int64_t width, height;
  int32_t plane; /* the focal plane shown */
  int64_t ds[MAX_LEVELS];
  int nlevels;
  /* quickhash-1's tiles: those of the largest downsample any tile has */
  int64_t hash_ds;
  struct hashed_tile *hashed;
  size_t nhashed, hashed_cap;
  bool hash_too_many;
  int budget; /* progress callbacks left to the query under way */
  /* The magic was found: failures from here on are a damaged Sakura slide, no longer a file
   * of some other kind (OpenSlide too claims the file then, and fails its open). */
  bool claimed;
};

static tessera_status not_sakura(const struct sakura *k) {
  return k->claimed ? TESSERA_E_CORRUPT : TESSERA_E_FORMAT;
}

static const char *what(const struct sakura *k) {
  return k->claimed ? "damaged Sakura slide" : "not a Sakura slide";
}

static int over_budget(void *arg) {
  struct sakura *k = arg;
  return --k->budget < 0;
}

static tessera_status prepare(struct sakura *k, const char *sql, sqlite3_stmt **stmt) {
  k->budget = STEP_BUDGET;
  if (sqlite3_prepare_v2(k->conn, sql, -1, stmt, NULL) != SQLITE_OK) {
    sqlite3_finalize(*stmt);
    *stmt = NULL;
    return tsr_error(not_sakura(k), "%s: %s (in \"%.80s\")", what(k), sqlite3_errmsg(k->conn),
                     sql);
  }
  return TESSERA_OK;
}

/* A query that fails while it runs: a database SQLite finds malformed before the magic is
 * no Sakura slide (OpenSlide claims no such file either). */
static tessera_status step_failed(struct sakura *k, sqlite3_stmt *stmt, int rc) {
  tessera_status st = rc == SQLITE_INTERRUPT || rc == SQLITE_TOOBIG ? TESSERA_E_LIMIT
                      : rc == SQLITE_NOMEM                          ? TESSERA_E_NOMEM
                                                                    : not_sakura(k);
  return tsr_error(st, "%s: SQLite fails on \"%.80s\": %s%s", what(k), sqlite3_sql(stmt),
                   sqlite3_errmsg(k->conn),
                   rc == SQLITE_INTERRUPT ? " (the query ran past its budget)" : "");
}

/* The first row of a query that must give one. */
static tessera_status first_row(struct sakura *k, const char *sql, sqlite3_stmt **stmt) {
  tessera_status st = prepare(k, sql, stmt);
  if (st != TESSERA_OK)
    return st;
  int rc = sqlite3_step(*stmt);
  if (rc == SQLITE_ROW)
    return TESSERA_OK;
  st = rc == SQLITE_DONE ? tsr_error(not_sakura(k), "%s: no row for \"%.80s\"", what(k), sql)
                         : step_failed(k, *stmt, rc);
  sqlite3_finalize(*stmt);
  *stmt = NULL;
  return st;
}

static char *printf_sql(const char *fmt, const char *name) {
  size_t n = strlen(fmt) + strlen(name) + 1;
  char *sql = tsr_malloc(n);
  if (sql)
    snprintf(sql, n, fmt, name);
  return sql;
}

/* ---- detection and the unique table ---- */

/* An SQLite database by its first 16 bytes. Only a regular file is looked at, without
 * blocking (a FIFO must not hang the open; the byte source refuses it with a message). */
static bool sakura_detect(const char *path) {
  struct stat info;
  if (stat(path, &info) != 0 || !S_ISREG(info.st_mode))
    return false;
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0)
    return false;
  char head[16];
  bool sqlite = pread(fd, head, sizeof head, 0) == (ssize_t)sizeof head &&
                memcmp(head, "SQLite format 3", 16) == 0;
  close(fd);
  return sqlite;
}

static tessera_status unique_table(struct sakura *k) {
  sqlite3_stmt *stmt;
  tessera_status st = first_row(k, "SELECT TableName FROM DataManagerSQLiteConfigXPO", &stmt);
  if (st != TESSERA_OK)
    return st;
  const char *name = (const char *)sqlite3_column_text(stmt, 0);
  if (sqlite3_column_type(stmt, 0) != SQLITE_TEXT || !name || !*name)
    st = tsr_error(TESSERA_E_FORMAT, "not a Sakura slide: its TableName is no name");
  else if (!(k->table = tsr_strdup(name)))
    st = tsr_error(TESSERA_E_NOMEM, "out of memory");
  int rc = st == TESSERA_OK ? sqlite3_step(stmt) : SQLITE_DONE;
  if (rc == SQLITE_ROW)
    st = tsr_error(TESSERA_E_FORMAT, "not a Sakura slide: DataManagerSQLiteConfigXPO names more "
                   "than one table");
  else if (rc != SQLITE_DONE)
    st = step_failed(k, stmt, rc);
  sqlite3_finalize(stmt);
  if (st != TESSERA_OK)
    return st;
  size_t quotes = 0;
  for (const char *p = k->table; *p; p++)
    quotes += *p == '"';
  char *q = tsr_malloc(strlen(k->table) + quotes + 3);
  if (!(k->quoted = q))
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  *q++ = '"';
  for (const char *p = k->table; *p; p++) {
    if (*p == '"')
      *q++ = '"';
    *q++ = *p;
  }
  *q++ = '"';
  *q = '\0';
  return TESSERA_OK;
}

/* The first row of the unique table's data with the given id (an SQL literal, quotes
 * included), stepped onto: the caller finalizes *stmt. */
static tessera_status unique_data(struct sakura *k, const char *id, sqlite3_stmt **stmt) {
  char fmt[96];
  snprintf(fmt, sizeof fmt, "SELECT data FROM %%s WHERE id = %s", id);
  char *sql = printf_sql(fmt, k->quoted);
  if (!sql)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  tessera_status st = first_row(k, sql, stmt);
  tsr_free(sql);
  return st;
}

static tessera_status check_magic(struct sakura *k) {
  sqlite3_stmt *stmt;
  tessera_status st = unique_data(k, "'++MagicBytes'", &stmt);
  if (st != TESSERA_OK)
    return st;
  const char *magic = (const char *)sqlite3_column_text(stmt, 0);
  if (!magic || strcmp(magic, MAGIC) != 0)
    st = tsr_error(TESSERA_E_FORMAT, "not a Sakura slide: its ++MagicBytes are not " MAGIC);
  sqlite3_finalize(stmt);
  k->claimed = st == TESSERA_OK;
  return st;
}

static uint32_t le32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static tessera_status read_header(struct sakura *k) {
  sqlite3_stmt *stmt;
  tessera_status st = unique_data(k, "'Header'", &stmt);
  if (st != TESSERA_OK)
    return st;
  const uint8_t *h = sqlite3_column_blob(stmt, 0);
  int len = sqlite3_column_bytes(stmt, 0);
  if (!h || len < 20) {
    sqlite3_finalize(stmt);
    return tsr_error(TESSERA_E_CORRUPT, "the Sakura Header is %d bytes, 20 expected", len);
  }
  uint32_t tile = le32(h), w = le32(h + 4), ht = le32(h + 8), planes = le32(h + 16);
  sqlite3_finalize(stmt);
  if (tile == 0 || tile > TSR_JPEG_MAX_SIDE)
    return tsr_error(TESSERA_E_CORRUPT, "the Sakura Header's tile size %u is not 1 to %d", tile,
                     TSR_JPEG_MAX_SIDE);
  size_t bytes;
  if (!tsr_mul3(tile, tile, 3, &bytes) || bytes > k->limits->max_decoded_tile_bytes)
    return tsr_error(TESSERA_E_LIMIT, "Sakura tiles of %ux%u are over the %llu bytes a decoded "
                     "tile may take", tile, tile,
                     (unsigned long long)k->limits->max_decoded_tile_bytes);
  k->tile = tile;
  k->width = w;
  k->height = ht;
  /* The middle focal plane, counted as OpenSlide counts it: the count is a signed 32-bit
   * number there, so a huge one picks a plane no tile has. */
  int32_t n = (int32_t)planes;
  k->plane = n / 2 + n % 2 - 1;
  return TESSERA_OK;
}

/* ---- tile ids ---- */

enum parsed { NOT_A_TILE, TILE, BAD_TILE };

struct tile_id {
  int64_t x, y, ds, color, plane;
};

/* A field of decimal digits as the id's writer prints it: no sign, no leading zero. */
static bool field(const char **p, char end, int64_t max, int64_t *out) {
  const char *s = *p;
  if (*s < '0' || *s > '9' || (s[0] == '0' && s[1] >= '0' && s[1] <= '9'))
    return false;
  int64_t v = 0;
  for (; *s >= '0' && *s <= '9'; s++) {
    if (v > (INT64_MAX - (*s - '0')) / 10)
      return false;
    v = v * 10 + (*s - '0');
    if (v > max)
      return false;
  }
  if (*s != end)
    return false;
  *p = end ? s + 1 : s;
  *out = v;
  return true;
}

/* "T;x|y;downsample;colour;plane": what OpenSlide accepts is exactly what it would print back
 * from the numbers, with downsample at least 1, colour below 3 and plane a 32-bit number. */
static enum parsed parse_id(const char *id, struct tile_id *t) {
  size_t n = strlen(id);
  if (strncmp(id, "T;", 2) != 0 || (n > 0 && id[n - 1] == '#'))
    return NOT_A_TILE; /* not a tile, or a tile's hash */
  const char *p = id + 2;
  if (!field(&p, '|', INT64_MAX, &t->x) || !field(&p, ';', INT64_MAX, &t->y) ||
      !field(&p, ';', INT64_MAX, &t->ds) || !field(&p, ';', 2, &t->color) ||
      !field(&p, '\0', INT32_MAX, &t->plane) || t->ds < 1)
    return BAD_TILE;
  return TILE;
}

static tessera_status keep_hashed(struct sakura *k, const char *id, const struct tile_id *t,
                                  int64_t rowid) {
  if (t->ds > k->hash_ds) {
    for (size_t i = 0; i < k->nhashed; i++)
      tsr_free(k->hashed[i].id);
    k->nhashed = 0;
    k->hash_too_many = false;
    k->hash_ds = t->ds;
  }
  if (t->ds != k->hash_ds || k->hash_too_many)
    return TESSERA_OK;
  if (k->nhashed == MAX_HASHED_TILES) {
    k->hash_too_many = true; /* no quickhash-1 rather than unbounded memory */
    return TESSERA_OK;
  }
  if (k->nhashed == k->hashed_cap) {
    size_t cap = k->hashed_cap ? 2 * k->hashed_cap : 64;
    struct hashed_tile *h = tsr_realloc(k->hashed, cap * sizeof *h);
    if (!h)
      return tsr_error(TESSERA_E_NOMEM, "out of memory");
    k->hashed = h;
    k->hashed_cap = cap;
  }
  if (!(k->hashed[k->nhashed].id = tsr_strdup(id)))
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  k->hashed[k->nhashed++].rowid = rowid;
  return TESSERA_OK;
}

static int compare_ds(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return x < y ? -1 : x > y;
}

/* Calls fn for every tile id of the unique table (rows whose id is no tile skipped); a bad id
 * fails the slide, as it fails OpenSlide's open. */
static tessera_status each_tile(struct sakura *k, void *arg,
                                tessera_status (*fn)(struct sakura *, void *, const char *,
                                                     const struct tile_id *, int64_t)) {
  char *sql = printf_sql("SELECT rowid, id FROM %s", k->quoted);
  if (!sql)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  sqlite3_stmt *stmt;
  tessera_status st = prepare(k, sql, &stmt);
  tsr_free(sql);
  if (st != TESSERA_OK)
    return st;
  int rc;
  while (st == TESSERA_OK && (rc = sqlite3_step(stmt)) == SQLITE_ROW) {
    const char *id = (const char *)sqlite3_column_text(stmt, 1);
    struct tile_id t;
    enum parsed p = id ? parse_id(id, &t) : NOT_A_TILE;
    if (p == BAD_TILE)
      st = tsr_error(TESSERA_E_CORRUPT, "bad Sakura tile id \"%.60s\"", id);
    else if (p == TILE)
      st = fn(k, arg, id, &t, sqlite3_column_int64(stmt, 0));
  }
  if (st == TESSERA_OK && rc != SQLITE_DONE)
    st = step_failed(k, stmt, rc);
  sqlite3_finalize(stmt);
  return st;
}

static tessera_status find_level(struct sakura *k, void *arg, const char *id,
                                 const struct tile_id *t, int64_t rowid) {
  (void)arg;
  bool known = false;
  for (int i = 0; i < k->nlevels && !known; i++)
    known = k->ds[i] == t->ds;
  if (!known && t->plane == 0) {
    if (t->ds & (t->ds - 1))
      return tsr_error(TESSERA_E_CORRUPT, "Sakura tile \"%.60s\": downsample %lld is not a "
                       "power of two", id, (long long)t->ds);
    k->ds[k->nlevels++] = t->ds; /* at most 63 powers of two fit */
  }
  return keep_hashed(k, id, t, rowid);
}

/* ---- levels ---- */

static void plane_format(struct tsr_level *lv) {
  lv->fmt.compression = COMPRESSION_NONE;
  lv->fmt.photometric = PHOTOMETRIC_RGB;
  lv->fmt.spp = 3;
  lv->fmt.predictor = 1;
  tsr_codec_resolve(&lv->fmt, 8, SAMPLEFORMAT_UINT, PLANARCONFIG_CONTIG, 0,
                    EXTRASAMPLE_UNSPECIFIED);
  lv->tiled = true;
  lv->source = &tsr_sqlite_tiles;
}

static tessera_status new_tiles(struct sakura *k, struct tsr_sqlite_db *db, const char *column,
                                bool channels, uint64_t rows, struct tsr_sqlite_tiles **out) {
  struct tsr_sqlite_tiles *t = tsr_calloc(1, sizeof *t);
  if (!t)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  tsr_sqlite_ref(db);
  t->db = db;
  t->channels = channels;
  t->side = k->tile;
  t->table = tsr_strdup(k->table);
  t->column = tsr_strdup(column);
  t->rowids = tsr_malloc((size_t)rows * sizeof *t->rowids);
  if (!t->table || !t->column || !t->rowids) {
    tsr_sqlite_tiles_free(t);
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  }
  *out = t;
  return TESSERA_OK;
}

static tessera_status make_levels(struct sakura *k, struct tsr_sqlite_db *db,
                                  struct tsr_findings *out) {
  qsort(k->ds, (size_t)k->nlevels, sizeof k->ds[0], compare_ds);
  if (!(out->levels = tsr_calloc((size_t)k->nlevels, sizeof *out->levels)))
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  out->nlevels = k->nlevels;
  uint64_t total = 0;
  for (int i = 0; i < k->nlevels; i++) {
    struct tsr_level *lv = &out->levels[i];
    lv->width = k->width / k->ds[i];
    lv->height = k->height / k->ds[i];
    if (lv->width < 1 || lv->height < 1)
      return tsr_error(TESSERA_E_CORRUPT, "the Sakura level of downsample %lld is empty "
                       "(%lldx%lld of a %lldx%lld image)", (long long)k->ds[i],
                       (long long)lv->width, (long long)lv->height, (long long)k->width,
                       (long long)k->height);
    if (lv->width > k->limits->max_dimension || lv->height > k->limits->max_dimension)
      return tsr_error(TESSERA_E_LIMIT, "the Sakura level of downsample %lld is %lldx%lld, over "
                       "the %lld pixels a side may have", (long long)k->ds[i],
                       (long long)lv->width, (long long)lv->height,
                       (long long)k->limits->max_dimension);
    lv->downsample = (double)k->ds[i];
    lv->tile_w = lv->tile_h = k->tile;
    lv->across = (uint32_t)((lv->width + k->tile - 1) / k->tile);
    lv->down = (uint32_t)((lv->height + k->tile - 1) / k->tile);
    lv->ntiles = (uint64_t)lv->across * lv->down;
    total += lv->ntiles;
    if (total > MAX_TILES)
      return tsr_error(TESSERA_E_LIMIT, "the Sakura slide's levels have more than %llu tiles "
                       "(%ux%u tiles of %u pixels at downsample %lld)",
                       (unsigned long long)MAX_TILES, lv->across, lv->down, k->tile,
                       (long long)k->ds[i]);
    lv->directory = (uint32_t)i; /* keys the level's tiles in the caches */
    plane_format(lv);
    lv->offsets = tsr_calloc(lv->ntiles, sizeof *lv->offsets);
    lv->bytecounts = tsr_calloc(lv->ntiles, sizeof *lv->bytecounts);
    if (!lv->offsets || !lv->bytecounts)
      return tsr_error(TESSERA_E_NOMEM, "out of memory");
    struct tsr_sqlite_tiles *t;
    tessera_status st = new_tiles(k, db, "data", true, 3 * lv->ntiles, &t);
    if (st != TESSERA_OK)
      return st;
    lv->source_data = t;
  }
  return TESSERA_OK;
}

/* Places a tile plane of the shown focal plane in its level's grid; where an id is given
 * twice, the first row's is read (as OpenSlide's query by id finds it). */
static tessera_status place_tile(struct sakura *k, void *arg, const char *id,
                                 const struct tile_id *t, int64_t rowid) {
  (void)id;
  struct tsr_findings *out = arg;
  if (t->plane != k->plane)
    return TESSERA_OK;
  int i = 0;
  while (i < k->nlevels && k->ds[i] != t->ds)
    i++;
  int64_t step;
  if (i == k->nlevels || __builtin_mul_overflow((int64_t)k->tile, t->ds, &step) ||
      t->x % step || t->y % step)
    return TESSERA_OK; /* not where the level's tile ids lie */
  struct tsr_level *lv = &out->levels[i];
  int64_t col = t->x / step, row = t->y / step;
  if (col >= lv->across || row >= lv->down)
    return TESSERA_OK;
  uint64_t index = (uint64_t)row * lv->across + (uint64_t)col;
  struct tsr_sqlite_tiles *tiles = lv->source_data;
  uint64_t bit = (uint64_t)1 << t->color;
  if (!(lv->offsets[index] & bit) || rowid < tiles->rowids[3 * index + t->color])
    tiles->rowids[3 * index + t->color] = rowid;
  lv->offsets[index] |= bit;
  return TESSERA_OK;
}

/* A tile is there when all three of its planes are; offsets and bytecounts say so to the
 * reader (nonzero: there). */
static void finish_levels(struct tsr_findings *out) {
  for (int32_t i = 0; i < out->nlevels; i++) {
    struct tsr_level *lv = &out->levels[i];
    for (uint64_t j = 0; j < lv->ntiles; j++) {
      bool whole = lv->offsets[j] == 7;
      lv->offsets[j] = whole ? j + 1 : 0;
      lv->bytecounts[j] = whole;
    }
  }
}

/* ---- properties ---- */

static const struct {
  const char *table, *column;
  bool number;
} PROPERTIES[] = {
    {"SVSlideDataXPO", "SlideId", false},
    {"SVSlideDataXPO", "Date", false},
    {"SVSlideDataXPO", "Description", false},
    {"SVSlideDataXPO", "Creator", false},
    {"SVSlideDataXPO", "DiagnosisCode", false},
    {"SVSlideDataXPO", "Keywords", false},
    {"SVHRScanDataXPO", "ScanId", false},
    {"SVHRScanDataXPO", "ResolutionMmPerPix", true},
    {"SVHRScanDataXPO", "NominalLensMagnification", true},
    {"SVHRScanDataXPO", "FocussingMethod", false},
};

#define NPROPERTIES (sizeof PROPERTIES / sizeof PROPERTIES[0])

/* A double as OpenSlide writes one (GLib's g_ascii_dtostr: 17 significant digits). */
static void add_number(struct tsr_props *p, const char *key, double v) {
  char buf[64];
  snprintf(buf, sizeof buf, "%.17g", v);
  for (char *c = buf; *c; c++)
    if (*c == ',')
      *c = '.'; /* whatever the locale */
  tsr_props_add_string(p, key, buf);
}

/* The properties OpenSlide gives; a query that fails (a table or column the file lacks) gives
 * none of its keys, as in OpenSlide. */
static void add_properties(struct sakura *k, struct tsr_props *p) {
  char sql[1024] = "SELECT ";
  for (size_t i = 0; i < NPROPERTIES; i++)
    snprintf(sql + strlen(sql), sizeof sql - strlen(sql), "%s%s.%s", i ? ", " : "",
             PROPERTIES[i].table, PROPERTIES[i].column);
  snprintf(sql + strlen(sql), sizeof sql - strlen(sql),
           " FROM SVSlideDataXPO JOIN SVHRScanDataXPO ON "
           "SVHRScanDataXPO.ParentSlide == SVSlideDataXPO.OID");
  sqlite3_stmt *stmt = NULL;
  k->budget = STEP_BUDGET;
  if (sqlite3_prepare_v2(k->conn, sql, -1, &stmt, NULL) == SQLITE_OK &&
      sqlite3_step(stmt) == SQLITE_ROW) {
    for (size_t i = 0; i < NPROPERTIES; i++) {
      char key[64];
      snprintf(key, sizeof key, "sakura.%s", PROPERTIES[i].column);
      if (PROPERTIES[i].number) {
        add_number(p, key, sqlite3_column_double(stmt, (int)i));
      } else {
        /* OpenSlide adds non-empty text (and would fail on NULL: tessera leaves it out) */
        const char *v = (const char *)sqlite3_column_text(stmt, (int)i);
        if (v && *v)
          tsr_props_add_string(p, key, v);
      }
    }
  }
  sqlite3_finalize(stmt);
  stmt = NULL;
  k->budget = STEP_BUDGET;
  if (sqlite3_prepare_v2(k->conn,
                         "SELECT ResolutionMmPerPix FROM SVHRScanDataXPO JOIN SVSlideDataXPO ON "
                         "SVHRScanDataXPO.ParentSlide = SVSlideDataXPO.OID",
                         -1, &stmt, NULL) == SQLITE_OK &&
      sqlite3_step(stmt) == SQLITE_ROW) {
    double mm = sqlite3_column_double(stmt, 0);
    add_number(p, "tessera.mpp-x", mm * 1000);
    add_number(p, "tessera.mpp-y", mm * 1000);
  }
  sqlite3_finalize(stmt);
  const char *mag = tsr_props_get(p, "sakura.NominalLensMagnification");
  if (mag) {
    char *end;
    double v = strtod(mag, &end);
    if (*mag && !*end && v == v)
      add_number(p, "tessera.objective-power", v);
  }
  char *vsql = printf_sql("SELECT data FROM %s WHERE id = '++VersionBytes'", k->quoted);
  stmt = NULL;
  k->budget = STEP_BUDGET;
  if (vsql && sqlite3_prepare_v2(k->conn, vsql, -1, &stmt, NULL) == SQLITE_OK &&
      sqlite3_step(stmt) == SQLITE_ROW)
    tsr_props_add_string(p, "sakura.VersionBytes", (const char *)sqlite3_column_text(stmt, 0));
  sqlite3_finalize(stmt);
  tsr_free(vsql);
}

/* ---- associated images ---- */

static const struct {
  const char *name, *table, *column, *join;
} ASSOCIATED[] = {
    {"label", "SVScannedImageDataXPO", "Image",
     "SVSlideDataXPO.m_labelScan = SVScannedImageDataXPO.OID"},
    {"macro", "SVScannedImageDataXPO", "Image",
     "SVSlideDataXPO.m_overviewScan = SVScannedImageDataXPO.OID"},
    {"thumbnail", "SVHRScanDataXPO", "ThumbnailImage",
     "SVHRScanDataXPO.ParentSlide = SVSlideDataXPO.OID"},
};

/* The one row an associated image's query gives, or false (no image: OpenSlide leaves out an
 * image it cannot find or whose query gives several rows). */
static bool associated_row(struct sakura *k, int which, int64_t *rowid) {
  char sql[512];
  snprintf(sql, sizeof sql, "SELECT %s.rowid, typeof(%s.%s) FROM %s JOIN SVSlideDataXPO ON %s",
           ASSOCIATED[which].table, ASSOCIATED[which].table, ASSOCIATED[which].column,
           ASSOCIATED[which].table, ASSOCIATED[which].join);
  sqlite3_stmt *stmt = NULL;
  k->budget = STEP_BUDGET;
  bool one = sqlite3_prepare_v2(k->conn, sql, -1, &stmt, NULL) == SQLITE_OK &&
             sqlite3_step(stmt) == SQLITE_ROW;
  if (one) {
    *rowid = sqlite3_column_int64(stmt, 0);
    one = sqlite3_step(stmt) == SQLITE_DONE;
  }
  sqlite3_finalize(stmt);
  return one;
}

/* An associated image whose JPEG header can be read, as a level of one tile; errors leave
 * the image out (OpenSlide's are not fatal either), except running out of memory. */
static tessera_status add_associated(struct sakura *k, struct tsr_sqlite_db *db, int which,
                                     struct tsr_findings *out) {
  int64_t rowid;
  if (!associated_row(k, which, &rowid))
    return TESSERA_OK;
  struct tsr_scratch bytes = {0};
  size_t len;
  struct tsr_jpeg_geometry g;
  tessera_status st = tsr_sqlite_read_blob(k->conn, ASSOCIATED[which].table,
                                           ASSOCIATED[which].column, rowid,
                                           k->limits->max_tile_bytes, &bytes, &len);
  if (st == TESSERA_OK)
    st = tsr_jpeg_read_geometry(bytes.data, len, &g);
  tsr_scratch_free(&bytes);
  if (st == TESSERA_E_NOMEM)
    return st;
  if (st != TESSERA_OK || (g.components != 1 && g.components != 3)) {
    tsr_error_clear();
    return TESSERA_OK;
  }
  struct tsr_level *lv = tsr_calloc(1, sizeof *lv);
  struct tsr_sqlite_tiles *t = NULL;
  if (!lv)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  out->associated[out->nassociated].level = lv;
  out->associated[out->nassociated].name = ASSOCIATED[which].name;
  out->nassociated++;
  if ((st = new_tiles(k, db, ASSOCIATED[which].column, false, 1, &t)) != TESSERA_OK)
    return st;
  lv->source = &tsr_sqlite_tiles; /* frees t with the level */
  lv->source_data = t;
  tsr_free(t->table);
  if (!(t->table = tsr_strdup(ASSOCIATED[which].table)))
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  t->rowids[0] = rowid;
  lv->fmt.compression = COMPRESSION_JPEG;
  lv->fmt.photometric = g.components == 1 ? PHOTOMETRIC_MINISBLACK : PHOTOMETRIC_YCBCR;
  lv->fmt.spp = g.components;
  lv->fmt.predictor = 1;
  tsr_codec_resolve(&lv->fmt, 8, SAMPLEFORMAT_UINT, PLANARCONFIG_CONTIG, 0,
                    EXTRASAMPLE_UNSPECIFIED);
  lv->tiled = true;
  lv->width = lv->tile_w = g.width;
  lv->height = lv->tile_h = g.height;
  lv->downsample = 1.0;
  lv->across = lv->down = 1;
  lv->ntiles = 1;
  lv->directory = (uint32_t)(MAX_LEVELS + 1 + which);
  lv->offsets = tsr_malloc(sizeof *lv->offsets);
  lv->bytecounts = tsr_malloc(sizeof *lv->bytecounts);
  if (!lv->offsets || !lv->bytecounts)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  lv->offsets[0] = lv->bytecounts[0] = 1;
  return TESSERA_OK;
}

/* ---- quickhash-1 ---- */

static bool hash_query(struct sakura *k, struct tsr_sha256 *h, const char *sql) {
  sqlite3_stmt *stmt = NULL;
  k->budget = STEP_BUDGET;
  if (sqlite3_prepare_v2(k->conn, sql, -1, &stmt, NULL) != SQLITE_OK) {
    sqlite3_finalize(stmt);
    return false;
  }
  int rc;
  while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
    for (int i = 0; i < sqlite3_column_count(stmt); i++) {
      const void *data = sqlite3_column_blob(stmt, i);
      tsr_sha256_update(h, data, data ? (size_t)sqlite3_column_bytes(stmt, i) : 0);
      tsr_sha256_update(h, "", 1);
    }
  }
  sqlite3_finalize(stmt);
  return rc == SQLITE_DONE;
}

static int compare_hashed(const void *a, const void *b) {
  return strcmp(((const struct hashed_tile *)a)->id, ((const struct hashed_tile *)b)->id);
}

/* OpenSlide's quickhash-1 of a Sakura slide: the slide's and the scans' describing columns,
 * the Header rows, and the blobs of the smallest level's tiles (every plane and colour), in
 * the order of their ids. Nothing when OpenSlide would hash nothing (a query fails). */
static tessera_status add_quickhash(struct sakura *k, struct tsr_props *p) {
  if (k->hash_too_many)
    return TESSERA_OK;
  struct tsr_sha256 h;
  tsr_sha256_init(&h);
  char *sql = printf_sql("SELECT data FROM %s WHERE id = 'Header' ORDER BY rowid", k->quoted);
  if (!sql)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  bool ok = hash_query(k, &h, "SELECT SlideId, Date, Creator, Description, Keywords FROM "
                              "SVSlideDataXPO ORDER BY OID") &&
            hash_query(k, &h, "SELECT ScanId, Date, Name, Description FROM SVHRScanDataXPO "
                              "ORDER BY OID") &&
            hash_query(k, &h, sql);
  tsr_free(sql);
  if (!ok)
    return TESSERA_OK;
  qsort(k->hashed, k->nhashed, sizeof *k->hashed, compare_hashed);
  /* An id given twice is hashed twice, each time with the first row's blob. */
  for (size_t i = 1; i < k->nhashed; i++)
    if (strcmp(k->hashed[i].id, k->hashed[i - 1].id) == 0) {
      int64_t r = k->hashed[i].rowid < k->hashed[i - 1].rowid ? k->hashed[i].rowid
                                                              : k->hashed[i - 1].rowid;
      for (size_t j = i; j > 0 && strcmp(k->hashed[j - 1].id, k->hashed[i].id) == 0; j--)
        k->hashed[j - 1].rowid = r;
      k->hashed[i].rowid = r;
    }
  struct tsr_scratch bytes = {0};
  tessera_status st = TESSERA_OK;
  for (size_t i = 0; i < k->nhashed && st == TESSERA_OK; i++) {
    size_t len;
    st = tsr_sqlite_read_blob(k->conn, k->table, "data", k->hashed[i].rowid,
                              k->limits->max_tile_bytes, &bytes, &len);
    if (st == TESSERA_OK)
      tsr_sha256_update(&h, bytes.data, len);
  }
  tsr_scratch_free(&bytes);
  if (st == TESSERA_E_NOMEM)
    return st;
  if (st != TESSERA_OK) {
    tsr_error_clear();
    return TESSERA_OK;
  }
  char hex[65];
  tsr_sha256_hex(&h, hex);
  tsr_props_add_string(p, "tessera.quickhash-1", hex);
  return TESSERA_OK;
}

/* ---- open ---- */

static tessera_status sakura_read(struct sakura *k, struct tsr_sqlite_db *db,
                                  struct tsr_findings *out) {
  tessera_status st;
  if ((st = unique_table(k)) != TESSERA_OK || (st = check_magic(k)) != TESSERA_OK ||
      (st = read_header(k)) != TESSERA_OK || (st = each_tile(k, NULL, find_level)) != TESSERA_OK)
    return st;
  if (k->nlevels == 0)
    return tsr_error(TESSERA_E_CORRUPT, "the Sakura slide has no tiles");
  if ((st = make_levels(k, db, out)) != TESSERA_OK ||
      (st = each_tile(k, out, place_tile)) != TESSERA_OK)
    return st;
  finish_levels(out);
  add_properties(k, &out->props);
  for (int i = 0; i < 3; i++)
    if ((st = add_associated(k, db, i, out)) != TESSERA_OK)
      return st;
  return add_quickhash(k, &out->props);
}

static tessera_status sakura_open(const char *path, const tessera_open_options *limits,
                                  struct tsr_findings *out, struct tsr_byte_source **source) {
  struct sakura k = {.limits = limits};
  struct tsr_sqlite_db *db = NULL;
  /* The file's byte source is the slide's identity in the caches; SQLite reads the rest. */
  tessera_status st = tsr_file_source_open(path, source);
  if (st != TESSERA_OK)
    return st;
  if ((st = tsr_sqlite_open(path, limits->max_tile_bytes, &db, &k.conn)) == TESSERA_OK) {
    sqlite3_progress_handler(k.conn, 1000, over_budget, &k);
    st = sakura_read(&k, db, out);
    sqlite3_progress_handler(k.conn, 0, NULL, NULL);
    tsr_sqlite_give(db, k.conn);
  }
  tsr_sqlite_unref(db);
  tsr_free(k.table);
  tsr_free(k.quoted);
  for (size_t i = 0; i < k.nhashed; i++)
    tsr_free(k.hashed[i].id);
  tsr_free(k.hashed);
  if (st != TESSERA_OK) {
    (*source)->ops->close(*source);
    *source = NULL;
    return st;
  }
  out->background = 255; /* white glass; OpenSlide leaves missing tiles transparent */
  return TESSERA_OK;
}

const struct tsr_path_format tsr_format_sakura = {
    .name = "sakura",
    .detect = sakura_detect,
    .open = sakura_open,
};
