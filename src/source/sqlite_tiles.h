/* Tiles kept as blobs in an SQLite database (Sakura SVSlide). SQLite reads the database
 * through a VFS of ours over a byte source (the slide's file, opened once more for the
 * pool), not through its own file I/O.
 *
 * Every connection is read-only and the file immutable to SQLite (no journal, no locks, no
 * write ever: the VFS refuses them), views, triggers and untrusted schema functions are off,
 * and no value SQLite hands out may be larger than the slide's max_tile_bytes
 * (SQLITE_LIMIT_LENGTH). Connections are not shared between threads: a small pool lends each
 * reading thread one of its own (opened on first need, at most TSR_SQLITE_MAX_CONNECTIONS; a
 * thread finding all lent waits for one), so tiles are read in parallel with no lock held
 * while SQLite reads. */
#ifndef TSR_SOURCE_SQLITE_TILES_H
#define TSR_SOURCE_SQLITE_TILES_H

#include <sqlite3.h>

#include "source/tile_source.h"

#define TSR_SQLITE_MAX_CONNECTIONS 16

struct tsr_sqlite_db;

/* Opens the first connection of a pool over the database at path (kept for the caller, who
 * may run its queries on it: *db_out, lent until tsr_sqlite_give). */
tessera_status tsr_sqlite_open(const char *path, uint64_t max_value_bytes,
                               struct tsr_sqlite_db **out, sqlite3 **db_out);
void tsr_sqlite_ref(struct tsr_sqlite_db *db);
void tsr_sqlite_unref(struct tsr_sqlite_db *db);
/* Lends a connection (waiting while all are lent), and takes it back. */
tessera_status tsr_sqlite_take(struct tsr_sqlite_db *db, sqlite3 **out);
void tsr_sqlite_give(struct tsr_sqlite_db *db, sqlite3 *conn);

/* A level's data for tsr_sqlite_tiles. With channels, tile i is three grayscale JPEGs, the
 * red, green and blue planes, in rowids[3 i ...], combined into RGB (the level's samples are
 * then uncompressed RGB); without, it is the one JPEG in rowids[i], decoded by the level's
 * codec. A tile whose bytecount is 0 is missing. */
struct tsr_sqlite_tiles {
  struct tsr_sqlite_db *db; /* a reference */
  char *table, *column;     /* owned: where the blobs lie */
  bool channels;
  uint32_t side; /* channels: each plane's width and height */
  int64_t *rowids;
};

void tsr_sqlite_tiles_free(struct tsr_sqlite_tiles *t);

/* Reads the blob of column at rowid of table into buf (grown to hold it), after checking its
 * size against limit; *len is its length. */
tessera_status tsr_sqlite_read_blob(sqlite3 *conn, const char *table, const char *column,
                                    int64_t rowid, uint64_t limit, struct tsr_scratch *buf,
                                    size_t *len);

#endif
