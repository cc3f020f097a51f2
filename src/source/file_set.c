/* A bounded set of lazily opened files (source/file_set.h). */
#include "source/file_set.h"

#include <stdatomic.h>
#include <string.h>

#include "alloc.h"
#include "error.h"
#include "source/byte_source.h"

struct set_file {
  char *path;
  /* NULL until a thread keeps it open; set once by compare and swap, freed with the set. */
  _Atomic(struct tsr_byte_source *) kept;
};

struct tsr_file_set {
  size_t n;
  int refs;            /* changed only while the slide is opened or closed */
  atomic_size_t nkept; /* kept sources, and reservations for them (relaxed: a bound only) */
  struct set_file file[];
};

tessera_status tsr_file_set_new(const char *const *paths, size_t n, struct tsr_file_set **out) {
  *out = NULL;
  struct tsr_file_set *fs = tsr_calloc(1, sizeof *fs + n * sizeof fs->file[0]);
  if (!fs)
    return tsr_error(TESSERA_E_NOMEM, "out of memory for %zu data files", n);
  fs->refs = 1;
  fs->n = n;
  for (size_t i = 0; i < n; i++) {
    atomic_init(&fs->file[i].kept, NULL);
    if (!(fs->file[i].path = tsr_strdup(paths[i]))) {
      tsr_file_set_unref(fs);
      return tsr_error(TESSERA_E_NOMEM, "out of memory for %zu data files", n);
    }
  }
  *out = fs;
  return TESSERA_OK;
}

void tsr_file_set_ref(struct tsr_file_set *fs) { fs->refs++; }

void tsr_file_set_unref(struct tsr_file_set *fs) {
  if (!fs || --fs->refs > 0)
    return;
  for (size_t i = 0; i < fs->n; i++) {
    tsr_byte_source_close(atomic_load(&fs->file[i].kept));
    tsr_free(fs->file[i].path);
  }
  tsr_free(fs);
}

size_t tsr_file_set_count(const struct tsr_file_set *fs) { return fs->n; }

const char *tsr_file_set_name(const struct tsr_file_set *fs, size_t i) {
  const char *slash = strrchr(fs->file[i].path, '/');
  return slash ? slash + 1 : fs->file[i].path;
}

/* File i's source: the kept one, or one just opened, kept if there is room (*own false), else
 * the caller's to close (*own true). */
static tessera_status get(struct tsr_file_set *fs, size_t i, struct tsr_byte_source **src,
                          bool *own) {
  *own = false;
  *src = atomic_load_explicit(&fs->file[i].kept, memory_order_acquire);
  if (*src)
    return TESSERA_OK;
  struct tsr_byte_source *opened;
  tessera_status st = tsr_file_source_open(fs->file[i].path, &opened);
  if (st != TESSERA_OK)
    return tsr_error_prefix(st, "data file %s: ", tsr_file_set_name(fs, i));
  if (atomic_fetch_add_explicit(&fs->nkept, 1, memory_order_relaxed) < TSR_FILE_SET_KEEP) {
    struct tsr_byte_source *none = NULL;
    if (atomic_compare_exchange_strong_explicit(&fs->file[i].kept, &none, opened,
                                                memory_order_acq_rel, memory_order_acquire)) {
      *src = opened;
      return TESSERA_OK;
    }
    /* Another thread kept its own first: use that one. */
    atomic_fetch_sub_explicit(&fs->nkept, 1, memory_order_relaxed);
    tsr_byte_source_close(opened);
    *src = none;
    return TESSERA_OK;
  }
  atomic_fetch_sub_explicit(&fs->nkept, 1, memory_order_relaxed);
  *src = opened;
  *own = true;
  return TESSERA_OK;
}

tessera_status tsr_file_set_size(struct tsr_file_set *fs, size_t i, uint64_t *size) {
  struct tsr_byte_source *src;
  bool own;
  tessera_status st = get(fs, i, &src, &own);
  if (st != TESSERA_OK)
    return st;
  *size = src->ops->size(src);
  if (own)
    tsr_byte_source_close(src);
  return TESSERA_OK;
}

tessera_status tsr_file_set_read(struct tsr_file_set *fs, size_t i, uint64_t offset, size_t count,
                                 void *dst) {
  struct tsr_byte_source *src;
  bool own;
  tessera_status st = get(fs, i, &src, &own);
  if (st != TESSERA_OK)
    return st;
  uint64_t size = src->ops->size(src);
  size_t got = 0;
  if (offset > size || count > size - offset)
    st = tsr_error(TESSERA_E_CORRUPT,
                   "data file %s: %zu bytes at offset %llu lie past its end (%llu bytes; was it "
                   "truncated?)",
                   tsr_file_set_name(fs, i), count, (unsigned long long)offset,
                   (unsigned long long)size);
  else if ((st = tsr_bytes_read_at(src, offset, count, dst, &got)) != TESSERA_OK)
    st = tsr_error_prefix(st, "data file %s: ", tsr_file_set_name(fs, i));
  else if (got < count)
    st = tsr_error(TESSERA_E_CORRUPT, "data file %s ends inside an image (was it truncated?)",
                   tsr_file_set_name(fs, i));
  if (own)
    tsr_byte_source_close(src);
  return st;
}
