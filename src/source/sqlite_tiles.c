/* Tiles kept as blobs in an SQLite database (source/sqlite_tiles.h): the connection pool and
 * the tile source. A blob is read by rowid with SQLite's incremental blob API, which says its
 * size before anything is read, so a hostile size is refused before any allocation. */
#include "source/sqlite_tiles.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <tiff.h>

#include "error.h"
#include "per_thread.h"

struct tsr_sqlite_db {
  struct tsr_byte_source *source; /* the database's bytes (owned); fixed at open */
  char name[48];                  /* what SQLite is told to open: names source to the VFS */
  int value_limit;                /* SQLITE_LIMIT_LENGTH of every connection; fixed at open */
  pthread_mutex_t lock;
  pthread_cond_t returned;
  /* Under lock: the connections not lent, how many exist, and the references. */
  sqlite3 *idle[TSR_SQLITE_MAX_CONNECTIONS];
  int nidle, nopen;
  int refs;
};

/* ---- an SQLite VFS over a byte source ----
 * SQLite reads the database through this VFS ("tessera-bytes"), not through its own file
 * I/O: the bytes come from a tsr_byte_source (pread on the slide's file today; any byte
 * source later), whatever the path looks like (/proc/self/fd/N, names with '?' or '#').
 * Nothing can be written: every write, truncation or delete fails, the file says it is
 * immutable (so SQLite takes no lock and looks for no journal), and no other file exists
 * (temporary tables live in memory). The name SQLite opens is "tessera-bytes:" and the
 * source's address, made by tsr_sqlite_open; nothing else opens through this VFS. */

#define VFS_NAME "tessera-bytes"

struct source_file {
  sqlite3_file base;
  const struct tsr_byte_source *source;
};

static int file_close(sqlite3_file *f) {
  (void)f;
  return SQLITE_OK;
}

static int file_read(sqlite3_file *f, void *buf, int amount, sqlite3_int64 offset) {
  const struct source_file *sf = (const struct source_file *)f;
  size_t got = 0;
  if (offset < 0 || amount < 0 ||
      tsr_bytes_read_at(sf->source, (uint64_t)offset, (size_t)amount, buf, &got) != TESSERA_OK)
    return SQLITE_IOERR_READ;
  if (got < (size_t)amount) { /* SQLite asks for the rest to be zeros */
    memset((uint8_t *)buf + got, 0, (size_t)amount - got);
    return SQLITE_IOERR_SHORT_READ;
  }
  return SQLITE_OK;
}

static int file_write(sqlite3_file *f, const void *buf, int amount, sqlite3_int64 offset) {
  (void)f, (void)buf, (void)amount, (void)offset;
  return SQLITE_READONLY;
}

static int file_truncate(sqlite3_file *f, sqlite3_int64 size) {
  (void)f, (void)size;
  return SQLITE_READONLY;
}

static int file_sync(sqlite3_file *f, int flags) {
  (void)f, (void)flags;
  return SQLITE_OK;
}

static int file_size(sqlite3_file *f, sqlite3_int64 *size) {
  const struct source_file *sf = (const struct source_file *)f;
  *size = (sqlite3_int64)sf->source->ops->size(sf->source);
  return SQLITE_OK;
}

static int file_lock(sqlite3_file *f, int level) {
  (void)f, (void)level;
  return SQLITE_OK;
}

static int file_reserved(sqlite3_file *f, int *out) {
  (void)f;
  *out = 0;
  return SQLITE_OK;
}

static int file_control(sqlite3_file *f, int op, void *arg) {
  (void)f, (void)op, (void)arg;
  return SQLITE_NOTFOUND;
}

static int file_sector(sqlite3_file *f) {
  (void)f;
  return 0;
}

static int file_characteristics(sqlite3_file *f) {
  (void)f;
  return SQLITE_IOCAP_IMMUTABLE;
}

static const sqlite3_io_methods source_methods = {
    .iVersion = 1,
    .xClose = file_close,
    .xRead = file_read,
    .xWrite = file_write,
    .xTruncate = file_truncate,
    .xSync = file_sync,
    .xFileSize = file_size,
    .xLock = file_lock,
    .xUnlock = file_lock,
    .xCheckReservedLock = file_reserved,
    .xFileControl = file_control,
    .xSectorSize = file_sector,
    .xDeviceCharacteristics = file_characteristics,
};

static int vfs_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f, int flags,
                    int *out_flags) {
  (void)vfs;
  f->pMethods = NULL;
  unsigned long long address = 0;
  if (!name || !(flags & SQLITE_OPEN_MAIN_DB) || (flags & SQLITE_OPEN_READWRITE) ||
      sscanf(name, VFS_NAME ":%llx", &address) != 1 || address == 0)
    return SQLITE_CANTOPEN;
  struct source_file *sf = (struct source_file *)f;
  sf->source = (const struct tsr_byte_source *)(uintptr_t)address;
  f->pMethods = &source_methods;
  if (out_flags)
    *out_flags = SQLITE_OPEN_READONLY;
  return SQLITE_OK;
}

static int vfs_delete(sqlite3_vfs *vfs, const char *name, int sync) {
  (void)vfs, (void)name, (void)sync;
  return SQLITE_IOERR_DELETE;
}

static int vfs_access(sqlite3_vfs *vfs, const char *name, int flags, int *out) {
  (void)vfs, (void)name, (void)flags;
  *out = 0; /* no journal, WAL or other file beside the database */
  return SQLITE_OK;
}

static int vfs_full_pathname(sqlite3_vfs *vfs, const char *name, int n, char *out) {
  (void)vfs;
  if ((int)strlen(name) >= n)
    return SQLITE_CANTOPEN;
  memcpy(out, name, strlen(name) + 1);
  return SQLITE_OK;
}

/* Randomness, sleeping and time are the default VFS's (pAppData). */
static int vfs_randomness(sqlite3_vfs *vfs, int n, char *out) {
  sqlite3_vfs *d = vfs->pAppData;
  return d->xRandomness(d, n, out);
}

static int vfs_sleep(sqlite3_vfs *vfs, int us) {
  sqlite3_vfs *d = vfs->pAppData;
  return d->xSleep(d, us);
}

static int vfs_time(sqlite3_vfs *vfs, double *out) {
  sqlite3_vfs *d = vfs->pAppData;
  return d->xCurrentTime(d, out);
}

static int vfs_last_error(sqlite3_vfs *vfs, int n, char *out) {
  (void)vfs;
  if (n > 0)
    out[0] = '\0';
  return 0;
}

static sqlite3_vfs source_vfs = {
    .iVersion = 1,
    .szOsFile = sizeof(struct source_file),
    .mxPathname = 64,
    .zName = VFS_NAME,
    .xOpen = vfs_open,
    .xDelete = vfs_delete,
    .xAccess = vfs_access,
    .xFullPathname = vfs_full_pathname,
    .xRandomness = vfs_randomness,
    .xSleep = vfs_sleep,
    .xCurrentTime = vfs_time,
    .xGetLastError = vfs_last_error,
};

static pthread_once_t vfs_once = PTHREAD_ONCE_INIT;
static int vfs_registered; /* written once under vfs_once, read after it */

static void register_vfs(void) {
  source_vfs.pAppData = sqlite3_vfs_find(NULL);
  vfs_registered = sqlite3_initialize() == SQLITE_OK && source_vfs.pAppData &&
                   sqlite3_vfs_register(&source_vfs, 0) == SQLITE_OK;
}

static tessera_status connect(const struct tsr_sqlite_db *db, sqlite3 **out) {
  sqlite3 *conn = NULL;
  int rc = sqlite3_open_v2(db->name, &conn, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX,
                           VFS_NAME);
  /* temporary tables and indexes in memory: the VFS opens no file but the database */
  if (rc == SQLITE_OK)
    rc = sqlite3_exec(conn, "PRAGMA temp_store = MEMORY; PRAGMA query_only = 1", NULL, NULL,
                      NULL);
  if (rc != SQLITE_OK) {
    tessera_status st = tsr_error(rc == SQLITE_NOMEM ? TESSERA_E_NOMEM : TESSERA_E_IO,
                                  "SQLite cannot open the database: %s",
                                  conn ? sqlite3_errmsg(conn) : sqlite3_errstr(rc));
    sqlite3_close(conn);
    return st;
  }
  /* A hostile schema must not run code or make any value larger than a tile may be. */
  sqlite3_limit(conn, SQLITE_LIMIT_LENGTH, db->value_limit);
  sqlite3_db_config(conn, SQLITE_DBCONFIG_DEFENSIVE, 1, NULL);
  sqlite3_db_config(conn, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, NULL);
  sqlite3_db_config(conn, SQLITE_DBCONFIG_ENABLE_TRIGGER, 0, NULL);
  sqlite3_db_config(conn, SQLITE_DBCONFIG_ENABLE_VIEW, 0, NULL);
  *out = conn;
  return TESSERA_OK;
}

tessera_status tsr_sqlite_open(const char *path, uint64_t max_value_bytes,
                               struct tsr_sqlite_db **out, sqlite3 **db_out) {
  *out = NULL;
  *db_out = NULL;
  pthread_once(&vfs_once, register_vfs);
  if (!vfs_registered)
    return tsr_error(TESSERA_E_IO, "SQLite cannot start");
  struct tsr_sqlite_db *db = tsr_calloc(1, sizeof *db);
  if (!db)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  tessera_status st = tsr_file_source_open(path, &db->source);
  if (st != TESSERA_OK) {
    tsr_free(db);
    return st;
  }
  snprintf(db->name, sizeof db->name, VFS_NAME ":%llx",
           (unsigned long long)(uintptr_t)db->source);
  db->value_limit = max_value_bytes > 0x7FFFFFFE ? 0x7FFFFFFE : (int)max_value_bytes;
  pthread_mutex_init(&db->lock, NULL);
  pthread_cond_init(&db->returned, NULL);
  db->refs = 1;
  if ((st = connect(db, db_out)) != TESSERA_OK) {
    tsr_sqlite_unref(db);
    return st;
  }
  db->nopen = 1;
  *out = db;
  return TESSERA_OK;
}

void tsr_sqlite_ref(struct tsr_sqlite_db *db) {
  pthread_mutex_lock(&db->lock);
  db->refs++;
  pthread_mutex_unlock(&db->lock);
}

void tsr_sqlite_unref(struct tsr_sqlite_db *db) {
  if (!db)
    return;
  pthread_mutex_lock(&db->lock);
  bool last = --db->refs == 0;
  pthread_mutex_unlock(&db->lock);
  if (!last)
    return;
  for (int i = 0; i < db->nidle; i++)
    sqlite3_close(db->idle[i]);
  pthread_mutex_destroy(&db->lock);
  pthread_cond_destroy(&db->returned);
  tsr_byte_source_close(db->source);
  tsr_free(db);
}

tessera_status tsr_sqlite_take(struct tsr_sqlite_db *db, sqlite3 **out) {
  pthread_mutex_lock(&db->lock);
  while (db->nidle == 0 && db->nopen == TSR_SQLITE_MAX_CONNECTIONS)
    pthread_cond_wait(&db->returned, &db->lock);
  if (db->nidle > 0) {
    *out = db->idle[--db->nidle];
    pthread_mutex_unlock(&db->lock);
    return TESSERA_OK;
  }
  db->nopen++; /* a place kept for the connection opened outside the lock */
  pthread_mutex_unlock(&db->lock);
  tessera_status st = connect(db, out);
  if (st != TESSERA_OK) {
    pthread_mutex_lock(&db->lock);
    db->nopen--;
    pthread_cond_signal(&db->returned);
    pthread_mutex_unlock(&db->lock);
  }
  return st;
}

void tsr_sqlite_give(struct tsr_sqlite_db *db, sqlite3 *conn) {
  pthread_mutex_lock(&db->lock);
  db->idle[db->nidle++] = conn;
  pthread_cond_signal(&db->returned);
  pthread_mutex_unlock(&db->lock);
}

void tsr_sqlite_tiles_free(struct tsr_sqlite_tiles *t) {
  if (!t)
    return;
  tsr_sqlite_unref(t->db);
  tsr_free(t->table);
  tsr_free(t->column);
  tsr_free(t->rowids);
  tsr_free(t);
}

tessera_status tsr_sqlite_read_blob(sqlite3 *conn, const char *table, const char *column,
                                    int64_t rowid, uint64_t limit, struct tsr_scratch *buf,
                                    size_t *len) {
  sqlite3_blob *blob = NULL;
  if (sqlite3_blob_open(conn, "main", table, column, rowid, 0, &blob) != SQLITE_OK) {
    tessera_status st = tsr_error(TESSERA_E_CORRUPT, "SQLite cannot read %s.%s of row %lld: %s",
                                  table, column, (long long)rowid, sqlite3_errmsg(conn));
    sqlite3_blob_close(blob);
    return st;
  }
  int n = sqlite3_blob_bytes(blob);
  tessera_status st = TESSERA_OK;
  if (n <= 0)
    st = tsr_error(TESSERA_E_CORRUPT, "%s.%s of row %lld is empty", table, column,
                   (long long)rowid);
  else if ((uint64_t)n > limit)
    st = tsr_error(TESSERA_E_LIMIT, "%s.%s of row %lld holds %d bytes, over the %llu allowed",
                   table, column, (long long)rowid, n, (unsigned long long)limit);
  else if (!tsr_scratch_reserve(buf, (size_t)n))
    st = tsr_error(TESSERA_E_NOMEM, "out of memory for %d bytes", n);
  else if (sqlite3_blob_read(blob, buf->data, n, 0) != SQLITE_OK)
    st = tsr_error(TESSERA_E_IO, "SQLite cannot read %s.%s of row %lld: %s", table, column,
                   (long long)rowid, sqlite3_errmsg(conn));
  sqlite3_blob_close(blob);
  *len = (size_t)n;
  return st;
}

/* ---- the tile source ---- */

struct plane_buffers {
  struct tsr_scratch bytes; /* a plane's JPEG */
  struct tsr_scratch gray;  /* a plane decoded */
};

static void destroy_buffers(void *p) {
  struct plane_buffers *b = p;
  tsr_scratch_free(&b->bytes);
  tsr_scratch_free(&b->gray);
  tsr_free(b);
}

static void *create_buffers(void) { return tsr_calloc(1, sizeof(struct plane_buffers)); }

static struct tsr_per_thread buffers = TSR_PER_THREAD_INIT(destroy_buffers);

static bool sqlite_missing(const struct tsr_level *lv, uint64_t index) {
  return lv->bytecounts[index] == 0;
}

/* The three planes of tile index, each a JPEG of side x side decoded to one channel (a colour
 * JPEG to its luma, as OpenSlide's grayscale decode makes it), interleaved into RGB in dst. */
static tessera_status read_planes(const tessera_slide *s, const struct tsr_sqlite_tiles *t,
                                  sqlite3 *conn, uint64_t index, uint8_t *dst) {
  static const char *const names[3] = {"red", "green", "blue"};
  struct plane_buffers *b = tsr_per_thread_get(&buffers, create_buffers);
  size_t plane = (size_t)t->side * t->side;
  if (!b || !tsr_scratch_reserve(&b->gray, plane))
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a %ux%u plane", t->side, t->side);
  struct tsr_pixel_format fmt = {.compression = COMPRESSION_JPEG,
                                 .photometric = PHOTOMETRIC_MINISBLACK,
                                 .spp = 1,
                                 .decoded_channels = 1,
                                 .jpeg_luma = true};
  struct tsr_tile_out out = {.pixels = b->gray.data,
                             .width = t->side,
                             .height = t->side,
                             .need_w = t->side,
                             .need_h = t->side,
                             .stride = t->side,
                             .crop_w = t->side,
                             .crop_h = t->side};
  for (int c = 0; c < 3; c++) {
    size_t len;
    tessera_status st = tsr_sqlite_read_blob(conn, t->table, t->column, t->rowids[3 * index + c],
                                             s->limits.max_tile_bytes, &b->bytes, &len);
    if (st == TESSERA_OK)
      st = tsr_decode_jpeg(&fmt, b->bytes.data, len, &out);
    if (st != TESSERA_OK)
      return tsr_error_prefix(st, "its %s plane: ", names[c]);
    for (size_t i = 0; i < plane; i++)
      dst[3 * i + (size_t)c] = b->gray.data[i];
  }
  /* A plane's bytes can be large; the thread keeps only modest buffers. */
  if (b->bytes.cap > ((size_t)16 << 20))
    tsr_scratch_free(&b->bytes);
  if (b->gray.cap > ((size_t)16 << 20))
    tsr_scratch_free(&b->gray);
  return TESSERA_OK;
}

static tessera_status sqlite_stream(const tessera_slide *s, const struct tsr_level *lv,
                                    uint64_t index, struct tsr_scratch *buf,
                                    struct tsr_stream *out) {
  const struct tsr_sqlite_tiles *t = lv->source_data;
  sqlite3 *conn;
  tessera_status st = tsr_sqlite_take(t->db, &conn);
  if (st != TESSERA_OK)
    return st;
  size_t len = 0;
  if (t->channels) {
    if (!tsr_mul3(t->side, t->side, 3, &len) || !tsr_scratch_reserve(buf, len))
      st = tsr_error(TESSERA_E_NOMEM, "out of memory for a %ux%u tile", t->side, t->side);
    else
      st = read_planes(s, t, conn, index, buf->data);
  } else {
    st = tsr_sqlite_read_blob(conn, t->table, t->column, t->rowids[index],
                              s->limits.max_tile_bytes, buf, &len);
  }
  tsr_sqlite_give(t->db, conn);
  if (st != TESSERA_OK)
    return st;
  out->data = buf->data;
  out->len = len;
  return TESSERA_OK;
}

static void sqlite_free(void *data) { tsr_sqlite_tiles_free(data); }

const struct tsr_tile_source tsr_sqlite_tiles = {
    .unit = "tile",
    .missing = sqlite_missing,
    .stream = sqlite_stream,
    .free = sqlite_free,
};
