/* The data files of a slide made of several files (MIRAX's Data*.dat), each read through a
 * byte source of its own. Descriptors stay bounded however many files a slide names: a file
 * is opened on first use and kept open while fewer than TSR_FILE_SET_KEEP files are; reads of
 * the others open, read and close it each time. Kept sources are installed once (by compare
 * and swap) and closed only with the set, so any number of threads read without a lock. */
#ifndef TSR_SOURCE_FILE_SET_H
#define TSR_SOURCE_FILE_SET_H

#include <stddef.h>
#include <stdint.h>

#include "tessera.h"

#define TSR_FILE_SET_KEEP 32

struct tsr_file_set;

/* A set of n files (paths copied); refs is 1. */
tessera_status tsr_file_set_new(const char *const *paths, size_t n, struct tsr_file_set **out);
/* One more owner (only while the slide is being opened: not thread-safe). */
void tsr_file_set_ref(struct tsr_file_set *fs);
/* Drops an owner; the last closes the files. NULL does nothing. */
void tsr_file_set_unref(struct tsr_file_set *fs);

size_t tsr_file_set_count(const struct tsr_file_set *fs);
/* The file's name after its folder, for messages. */
const char *tsr_file_set_name(const struct tsr_file_set *fs, size_t i);
/* Opens file i (if it is not open) and gives its size. */
tessera_status tsr_file_set_size(struct tsr_file_set *fs, size_t i, uint64_t *size);
/* Reads exactly count bytes at offset of file i into dst; bytes past its end fail with a
 * message that names the file. */
tessera_status tsr_file_set_read(struct tsr_file_set *fs, size_t i, uint64_t offset, size_t count,
                                 void *dst);

#endif
