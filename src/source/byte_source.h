/* A byte source: where an open slide's bytes come from. Every read of the slide's bytes (the
 * TIFF walk through libtiff, NDPI's JPEG headers, every tile on both devices) goes through
 * one, so another kind of source (HTTP range reads, a caller's read callback) needs no change
 * to the TIFF walk, the vendors, the tile sources or the codecs. Today there is one kind, a
 * file read with pread on its own descriptor (tsr_file_source_open).
 *
 * A source is immutable once made: read_at keeps no position and takes no lock, so any
 * number of threads may read at once; only close must wait until no one else uses it. */
#ifndef TSR_SOURCE_BYTE_SOURCE_H
#define TSR_SOURCE_BYTE_SOURCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tessera.h"

/* What tells one source from another for the tile cache, taken when the source is made. For a
 * file: the status-change time is there because the others can all stay the same across a
 * rewrite in place (cp -p, rsync -t --inplace and tar x set the modification time back); no
 * writer can set ctime. Plain data, so the shared cache can keep it in its segment. */
struct tsr_file_id {
  uint64_t device, inode, size;
  int64_t mtime_ns, ctime_ns;
};

struct tsr_byte_source;

struct tsr_byte_source_ops {
  /* Reads up to length bytes at offset into buffer and says in *got how many it read: fewer
   * than length only where the source ends. A failure (not the end) returns a status with
   * the calling thread's message set. */
  tessera_status (*read_at)(const struct tsr_byte_source *src, uint64_t offset, size_t length,
                            void *buffer, size_t *got);
  /* Bytes in the source, fixed when it was made. */
  uint64_t (*size)(const struct tsr_byte_source *src);
  /* The source's identity for the tile cache. */
  void (*identity)(const struct tsr_byte_source *src, struct tsr_file_id *id);
  /* Frees the source. */
  void (*close)(struct tsr_byte_source *src);
};

/* Each kind of source starts with this. */
struct tsr_byte_source {
  const struct tsr_byte_source_ops *ops;
};

static inline tessera_status tsr_bytes_read_at(const struct tsr_byte_source *src, uint64_t offset,
                                               size_t length, void *buffer, size_t *got) {
  return src->ops->read_at(src, offset, length, buffer, got);
}

/* Whether exactly length bytes at offset could be read; for readers whose failures the caller
 * reports in its own words (libtiff's, the header checks). */
static inline bool tsr_bytes_read_all(const struct tsr_byte_source *src, uint64_t offset,
                                      size_t length, void *buffer) {
  size_t got;
  return tsr_bytes_read_at(src, offset, length, buffer, &got) == TESSERA_OK && got == length;
}

/* Opens the regular file at path as a byte source (read with pread on its own descriptor).
 * A path that is no regular file (a directory, a FIFO, a socket, a device) is refused with a
 * message that says what it is. */
tessera_status tsr_file_source_open(const char *path, struct tsr_byte_source **out);

/* Frees src (NULL does nothing). */
void tsr_byte_source_close(struct tsr_byte_source *src);

#endif
