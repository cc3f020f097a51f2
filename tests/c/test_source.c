/* The byte-source seam (src/source/byte_source.h): every slide in the test data opened through
 * a caller's in-memory byte source, under a name that is no file, reads the same pixels (every
 * level, every associated image) as the same file opened by its path; every tile read goes
 * through the source, one read_at a tile; and a failure the source reports reaches the caller
 * with its message. */
#include <dirent.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "error.h"
#include "slide_internal.h"
#include "source/tile_source.h"
#include "tessera.h"

/* A source over bytes in memory, counting its reads. Fields are written before the slide is
 * opened, except the counters and the failure switch (atomics: reads come from any thread). */
struct memory_source {
  struct tsr_byte_source pub;
  uint8_t *bytes;
  uint64_t size;
  struct tsr_file_id id;
  atomic_ulong reads;
  atomic_bool fail;
};

static tessera_status memory_read_at(const struct tsr_byte_source *src, uint64_t offset,
                                     size_t length, void *buffer, size_t *got) {
  struct memory_source *m = (struct memory_source *)src;
  m->reads++;
  *got = 0;
  if (m->fail)
    return tsr_error(TESSERA_E_IO, "the test's source refuses to read");
  if (offset < m->size) {
    *got = length < m->size - offset ? length : (size_t)(m->size - offset);
    memcpy(buffer, m->bytes + offset, *got);
  }
  return TESSERA_OK;
}

static uint64_t memory_size(const struct tsr_byte_source *src) {
  return ((const struct memory_source *)src)->size;
}

static void memory_identity(const struct tsr_byte_source *src, struct tsr_file_id *id) {
  *id = ((const struct memory_source *)src)->id;
}

static void memory_close(struct tsr_byte_source *src) {
  struct memory_source *m = (struct memory_source *)src;
  free(m->bytes);
  free(m);
}

static const struct tsr_byte_source_ops memory_ops = {memory_read_at, memory_size, memory_identity,
                                                      memory_close};

/* The file's bytes as a source of their own, with an identity no file has. */
static struct memory_source *memory_source(const char *path) {
  static uint64_t made;
  FILE *f = fopen(path, "rb");
  if (!f)
    return NULL;
  struct memory_source *m = calloc(1, sizeof *m);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  m->bytes = malloc(n > 0 ? (size_t)n : 1);
  if (fread(m->bytes, 1, (size_t)n, f) != (size_t)n)
    n = 0;
  fclose(f);
  m->pub.ops = &memory_ops;
  m->size = (uint64_t)n;
  m->id = (struct tsr_file_id){.device = UINT64_MAX, .inode = ++made, .size = m->size};
  return m;
}

/* Reads level (or, with name, the associated image) from both slides and compares. */
static void compare_image(tessera_slide *a, tessera_slide *b, int32_t level, const char *name,
                          const char *file) {
  int64_t w, h;
  if (name) {
    CHECK(tessera_associated_image_dimensions(a, name, &w, &h) == TESSERA_OK, "%s %s", file, name);
  } else {
    tessera_level_info info = {.struct_size = sizeof info};
    CHECK(tessera_level_info_get(a, level, &info) == TESSERA_OK, "%s level %d", file, level);
    w = info.width;
    h = info.height;
  }
  if (w * h > ((int64_t)1 << 24))
    return; /* the largest levels: their tiles are read at the lower ones too */
  size_t size = (size_t)(w * h * 4);
  uint8_t *pa = malloc(size), *pb = malloc(size);
  tessera_read_options o;
  tessera_read_options_init(&o);
  o.channels = 4;
  tessera_status sa = name ? tessera_read_associated_image(a, name, &o, pa, size)
                           : tessera_read_level(a, level, &o, pa, size);
  tessera_status sb = name ? tessera_read_associated_image(b, name, &o, pb, size)
                           : tessera_read_level(b, level, &o, pb, size);
  CHECK(sa == sb, "%s %s %d: by path %d, through the source %d (%s)", file, name ? name : "level",
        level, sa, sb, tessera_error_message());
  CHECK(sa != TESSERA_OK || memcmp(pa, pb, size) == 0, "%s %s %d: different pixels", file,
        name ? name : "level", level);
  free(pa);
  free(pb);
}

/* One read_at call per tile read: no read of a tile's bytes bypasses the source. */
static void count_reads(tessera_slide *s, struct memory_source *m, const char *file) {
  tessera_level_info info = {.struct_size = sizeof info};
  int32_t level = tessera_level_count(s) - 1;
  tessera_level_info_get(s, level, &info);
  size_t size = (size_t)(info.width * info.height * 3);
  uint8_t *px = malloc(size);
  unsigned long reads = m->reads;
  uint64_t tiles = tsr_tile_reads();
  tessera_status st = tessera_read_level(s, level, NULL, px, size);
  CHECK(st == TESSERA_OK, "%s: %s", file, tessera_error_message());
  tiles = tsr_tile_reads() - tiles;
  CHECK(tiles > 0 && m->reads - reads == tiles, "%s: %llu tiles read, %lu reads through the source",
        file, (unsigned long long)tiles, m->reads - reads);
  /* The source's failure, and its message, are the read's. */
  m->fail = true;
  st = tessera_read_level(s, level, NULL, px, size);
  CHECK(st == TESSERA_E_IO && strstr(tessera_error_message(), "the test's source refuses"),
        "%s: a failing source gave %d: %s", file, st, tessera_error_message());
  m->fail = false;
  free(px);
}

static void check_file(const char *dir, const char *file) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, file);
  tessera_slide *a, *b;
  if (tessera_open(path, &a) != TESSERA_OK)
    return; /* not a slide (the README) */
  struct memory_source *m = memory_source(path);
  CHECK(m != NULL, "%s: cannot read it", path);
  if (!m) {
    tessera_close(a);
    return;
  }
  char name[4200];
  snprintf(name, sizeof name, "no file here: %s", file);
  tessera_status st = tsr_slide_open_source(&m->pub, name, NULL, &b);
  CHECK(st == TESSERA_OK, "%s through a memory source: %s", file, tessera_error_message());
  if (st != TESSERA_OK) {
    tessera_close(a);
    return;
  }
  CHECK(m->reads > 0, "%s: opened without reading the source", file);
  CHECK(tessera_level_count(a) == tessera_level_count(b) &&
            strcmp(tessera_vendor(a), tessera_vendor(b)) == 0 &&
            tessera_property_count(a) == tessera_property_count(b) &&
            tessera_associated_image_count(a) == tessera_associated_image_count(b),
        "%s: another slide through the source", file);
  for (int32_t level = 0; level < tessera_level_count(a); level++)
    compare_image(a, b, level, NULL, file);
  for (size_t i = 0; i < tessera_associated_image_count(a); i++)
    compare_image(a, b, 0, tessera_associated_image_name(a, i), file);
  count_reads(b, m, file);
  tessera_close(a);
  tessera_close(b);
}

int main(int argc, char **argv) {
  const char *dir = testdata_dir(argc, argv);
  DIR *d = opendir(dir);
  CHECK(d != NULL, "cannot list %s", dir);
  int files = 0;
  for (struct dirent *e; d && (e = readdir(d));) {
    if (e->d_name[0] == '.')
      continue;
    check_file(dir, e->d_name);
    files++;
  }
  if (d)
    closedir(d);
  CHECK(files > 1, "no test data in %s", dir);
  return check_finish("test_source");
}
