#include "tiff/client.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "error.h"

/* The name libtiff is given for the file; stripped from its messages. */
#define TSR_TIFF_NAME "slide"

static int on_error(TIFF *tif, void *user, const char *module, const char *fmt, va_list ap) {
  (void)tif, (void)module;
  struct tsr_tiff_file *f = user;
  if (!f->failed) {
    char m[sizeof f->first_error];
    vsnprintf(m, sizeof m, fmt, ap);
    const char *start = strncmp(m, TSR_TIFF_NAME ": ", sizeof TSR_TIFF_NAME + 1) == 0
                            ? m + sizeof TSR_TIFF_NAME + 1
                            : m;
    snprintf(f->first_error, sizeof f->first_error, "%s", start);
    f->failed = true;
  }
  return 1;
}

static int on_warning(TIFF *tif, void *user, const char *module, const char *fmt, va_list ap) {
  (void)tif, (void)user, (void)module, (void)fmt, (void)ap;
  return 1;
}

static tmsize_t client_read(thandle_t h, void *buf, tmsize_t n) {
  struct tsr_tiff_file *f = (struct tsr_tiff_file *)h;
  size_t done = 0;
  /* A failed read reads as a short one: libtiff reports what it could not read. */
  if (n > 0)
    tsr_bytes_read_at(f->src, f->pos, (size_t)n, buf, &done);
  f->pos += (uint64_t)done;
  return (tmsize_t)done;
}

static tmsize_t client_write(thandle_t h, void *buf, tmsize_t n) {
  (void)h, (void)buf, (void)n;
  return -1;
}

static toff_t client_seek(thandle_t h, toff_t off, int whence) {
  struct tsr_tiff_file *f = (struct tsr_tiff_file *)h;
  uint64_t base = whence == SEEK_CUR ? f->pos : whence == SEEK_END ? f->size : 0;
  if (off > UINT64_MAX - base)
    return (toff_t)-1;
  f->pos = base + off;
  return f->pos;
}

static int client_close(thandle_t h) {
  (void)h;
  return 0;
}

static toff_t client_size(thandle_t h) { return ((struct tsr_tiff_file *)h)->size; }

static int client_map(thandle_t h, void **base, toff_t *size) {
  (void)h, (void)base, (void)size;
  return 0;
}

static void client_unmap(thandle_t h, void *base, toff_t size) { (void)h, (void)base, (void)size; }

/* An unsigned integer of n bytes in the file's byte order. */
static uint64_t file_uint(const uint8_t *b, size_t n, bool big_endian) {
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++)
    v |= (uint64_t)b[big_endian ? i : n - 1 - i] << (8 * (n - 1 - i));
  return v;
}

/* Bytes of each TIFF field type (1 BYTE .. 18 IFD8); unknown types count as one. */
static uint64_t type_size(uint16_t type) {
  static const uint8_t sizes[19] = {0, 1, 1, 2, 4, 8, 1, 1, 2, 4, 8, 4, 8, 4, 0, 0, 8, 8, 8};
  return type < 19 && sizes[type] ? sizes[type] : 1;
}

tessera_status tsr_tiff_check_ifd_data(const struct tsr_tiff_file *f, bool big, bool be,
                                       uint64_t offset) {
  size_t count_size = big ? 8 : 2, entry = big ? 20 : 12, inline_size = big ? 8 : 4;
  uint8_t head[8];
  if (offset >= f->size || !tsr_bytes_read_all(f->src, offset, count_size, head))
    return TESSERA_OK; /* libtiff reports the unreadable directory itself */
  uint64_t count = file_uint(head, count_size, be);
  if (count > 1u << 20 || count * entry > f->size - offset)
    return TESSERA_OK;
  uint8_t chunk[20 * 256];
  uint64_t total = 0, limit = f->size + ((uint64_t)1 << 20);
  for (uint64_t done = 0; done < count;) {
    uint64_t n = count - done < 256 ? count - done : 256;
    uint64_t at = offset + count_size + done * entry;
    if (!tsr_bytes_read_all(f->src, at, n * entry, chunk))
      return TESSERA_OK;
    for (uint64_t i = 0; i < n; i++) {
      const uint8_t *e = chunk + i * entry;
      uint16_t type = (uint16_t)file_uint(e + 2, 2, be);
      uint64_t values = file_uint(e + 4, big ? 8 : 4, be), bytes;
      if (__builtin_mul_overflow(values, type_size(type), &bytes) || bytes > limit)
        bytes = limit + 1;
      if (bytes > inline_size)
        total += bytes;
      if (total > limit)
        return tsr_error(TESSERA_E_FORMAT,
                         "the directory at offset %llu points at more tag data than the file "
                         "holds (%llu bytes)",
                         (unsigned long long)offset, (unsigned long long)f->size);
    }
    done += n;
  }
  return TESSERA_OK;
}

/* The header's byte order, kind and first directory, or false when it is not TIFF's. */
static bool read_header(const struct tsr_tiff_file *f, bool *big, bool *be, uint64_t *first) {
  uint8_t h[16] = {0};
  size_t got;
  if (tsr_bytes_read_at(f->src, 0, sizeof h, h, &got) != TESSERA_OK || got < 8)
    return false;
  if ((h[0] != 'I' || h[1] != 'I') && (h[0] != 'M' || h[1] != 'M'))
    return false;
  *be = h[0] == 'M';
  uint64_t version = file_uint(h + 2, 2, *be);
  *big = version == 43;
  if (version != 42 && version != 43)
    return false;
  *first = *big ? file_uint(h + 8, 8, *be) : file_uint(h + 4, 4, *be);
  return true;
}

tessera_status tsr_tiff_client_open(struct tsr_tiff_file *f, const struct tsr_byte_source *src,
                                    uint64_t max_alloc, TIFF **out) {
  memset(f, 0, sizeof *f);
  f->src = src;
  f->size = src->ops->size(src);
  *out = NULL;
  bool big, be;
  uint64_t first;
  if (read_header(f, &big, &be, &first)) { /* libtiff reads the first directory at open */
    tessera_status st = tsr_tiff_check_ifd_data(f, big, be, first);
    if (st != TESSERA_OK)
      return st;
  }
  TIFFOpenOptions *opts = TIFFOpenOptionsAlloc();
  if (!opts)
    return tsr_error(TESSERA_E_NOMEM, "out of memory");
  TIFFOpenOptionsSetErrorHandlerExtR(opts, on_error, f);
  TIFFOpenOptionsSetWarningHandlerExtR(opts, on_warning, f);
  TIFFOpenOptionsSetMaxSingleMemAlloc(opts, (tmsize_t)max_alloc);
  *out = TIFFClientOpenExt(TSR_TIFF_NAME, "rm", (thandle_t)f, client_read, client_write,
                           client_seek, client_close, client_size, client_map, client_unmap, opts);
  TIFFOpenOptionsFree(opts);
  if (!*out)
    return tsr_error(TESSERA_E_FORMAT, "not a readable TIFF file%s%s", f->failed ? ": " : "",
                     f->failed ? f->first_error : "");
  return TESSERA_OK;
}

bool tsr_tiff_next_ifd_offset(TIFF *tif, const struct tsr_tiff_file *f, uint64_t *next) {
  uint64_t here = TIFFCurrentDirOffset(tif);
  bool big = TIFFIsBigTIFF(tif), be = TIFFIsBigEndian(tif);
  size_t count_size = big ? 8 : 2, entry = big ? 20 : 12, ptr_size = big ? 8 : 4;
  uint8_t buf[8];
  if (!tsr_bytes_read_all(f->src, here, count_size, buf))
    return false;
  uint64_t count = file_uint(buf, count_size, be);
  if (count > 1u << 20)
    return false;
  if (!tsr_bytes_read_all(f->src, here + count_size + count * entry, ptr_size, buf))
    return false;
  *next = file_uint(buf, ptr_size, be);
  return true;
}

bool tsr_tiff_private_tag(TIFF *tif, uint32_t tag, TIFFDataType *type, const void **data,
                          uint64_t *count) {
  const TIFFField *f = TIFFFindField(tif, tag, TIFF_ANY);
  if (!f || !TIFFFieldPassCount(f))
    return false;
  uint32_t count32 = 0;
  uint16_t count16 = 0;
  *data = NULL;
  int ok = TIFFFieldReadCount(f) == TIFF_VARIABLE2 ? TIFFGetField(tif, tag, &count32, data)
                                                   : TIFFGetField(tif, tag, &count16, data);
  *count = count32 ? count32 : count16;
  *type = TIFFFieldDataType(f);
  return ok && *data && *count > 0;
}
