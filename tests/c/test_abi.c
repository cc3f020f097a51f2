/* The struct_size rule (tessera.h, Conventions) as a program built against another version of
 * tessera.h sees it. The *_v0 structs are the first release's, byte for byte (git log -p
 * include/tessera.h): a program built then has only that many bytes. Each struct lives in a
 * buffer followed by guard bytes, so a write past its end (what *_init did while it wrote the
 * library's whole struct) fails a check in every build, and the guard bytes stand where a
 * library reading past the end would find its missing fields: garbage that would fail the
 * call (a device, num_workers or name of 0xA5 bytes), where the defaults must be used. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "tessera.h"

/* Before max_read_bytes. */
struct open_options_v0 {
  size_t struct_size;
  uint32_t max_directories;
  int64_t max_dimension;
  uint64_t max_tile_bytes;
  uint64_t max_decoded_tile_bytes;
};

/* Before num_workers. */
struct read_options_v0 {
  size_t struct_size;
  int32_t channels;
  int32_t fill;
  size_t stride;
};

/* Before device and device_id. */
struct batch_options_v0 {
  size_t struct_size;
  int32_t batch_size;
  int32_t num_workers;
  int32_t drop_last;
  int32_t prefetch_factor;
  int32_t shuffle;
  uint64_t seed;
  int32_t channels;
  int32_t fill;
};

/* Before name. */
struct cache_options_v0 {
  size_t struct_size;
  tessera_cache_type type;
  uint64_t memory_capacity_mib;
  uint64_t item_capacity;
  int32_t record_stats;
};

/* Each old struct is the start of today's, up to the first field added since. */
_Static_assert(sizeof(struct open_options_v0) == offsetof(tessera_open_options, max_read_bytes),
               "open options v0");
_Static_assert(sizeof(struct read_options_v0) == offsetof(tessera_read_options, num_workers),
               "read options v0");
_Static_assert(sizeof(struct batch_options_v0) == offsetof(tessera_batch_options, device),
               "batch options v0");
_Static_assert(sizeof(struct cache_options_v0) == offsetof(tessera_cache_options, name),
               "cache options v0");

#define GUARD 64
#define GUARD_BYTE 0xA5

/* A struct of `size` bytes at the start of buf, guard bytes after it (and in it, until
 * written). Aligned for any of the structs. */
typedef union guarded {
  max_align_t align;
  unsigned char bytes[sizeof(tessera_shared_cache_info) + 2 * GUARD];
} guarded;

static void *guard(guarded *g) {
  memset(g->bytes, GUARD_BYTE, sizeof g->bytes);
  return g->bytes;
}

static int guard_intact(const guarded *g, size_t size) {
  for (size_t i = size; i < size + GUARD; i++)
    if (g->bytes[i] != GUARD_BYTE)
      return 0;
  return 1;
}

static size_t size_of(const void *s) {
  size_t n;
  memcpy(&n, s, sizeof n);
  return n;
}

static void test_open_options(const char *path) {
  guarded g;
  struct open_options_v0 *old = guard(&g);
  tessera_open_options_init_sized((tessera_open_options *)old, sizeof *old);
  CHECK(guard_intact(&g, sizeof *old), "init wrote past an old open options struct");
  CHECK(old->struct_size == sizeof *old && old->max_directories == 4096 &&
            old->max_dimension == (int64_t)1 << 24 && old->max_tile_bytes == (uint64_t)256 << 20 &&
            old->max_decoded_tile_bytes == (uint64_t)1 << 30,
        "old open options defaults");
  old->max_dimension = 100000;
  tessera_slide *s = NULL;
  tessera_status st = tessera_open_ex(path, (tessera_open_options *)old, &s);
  CHECK(st == TESSERA_OK, "open with old options: %s", tessera_error_message());
  if (st != TESSERA_OK)
    return;
  tessera_open_options now;
  tessera_open_options_init(&now);
  CHECK(tessera_slide_limits(s, &now) == TESSERA_OK && now.max_dimension == 100000 &&
            now.max_read_bytes == (uint64_t)4 << 30 && now.struct_size == sizeof now,
        "an old caller's slide has its max_dimension and the default max_read_bytes (%llu)",
        (unsigned long long)now.max_read_bytes);
  old = guard(&g);
  old->struct_size = sizeof *old;
  CHECK(tessera_slide_limits(s, (tessera_open_options *)old) == TESSERA_OK &&
            guard_intact(&g, sizeof *old) && old->struct_size == sizeof *old &&
            old->max_dimension == 100000,
        "limits into an old struct");
  tessera_close(s);
}

static void test_read_options(tessera_slide *s) {
  guarded g;
  struct read_options_v0 *old = guard(&g);
  tessera_read_options_init_sized((tessera_read_options *)old, sizeof *old);
  CHECK(guard_intact(&g, sizeof *old), "init wrote past an old read options struct");
  CHECK(old->struct_size == sizeof *old && old->channels == 3 && old->fill == -1 &&
            old->stride == 0,
        "old read options defaults");
  old->channels = 4;
  tessera_read_options now;
  tessera_read_options_init(&now);
  now.channels = 4;
  static uint8_t got[40 * 30 * 4], want[40 * 30 * 4];
  CHECK(tessera_read_region(s, 100, 50, 0, 40, 30, (tessera_read_options *)old, got, sizeof got) ==
            TESSERA_OK,
        "read with old options: %s", tessera_error_message());
  CHECK(tessera_read_region(s, 100, 50, 0, 40, 30, &now, want, sizeof want) == TESSERA_OK,
        "read: %s", tessera_error_message());
  CHECK(memcmp(got, want, sizeof got) == 0, "old options read other pixels");
}

static void test_batch_options(tessera_slide *s) {
  guarded g;
  struct batch_options_v0 *old = guard(&g);
  tessera_batch_options_init_sized((tessera_batch_options *)old, sizeof *old);
  CHECK(guard_intact(&g, sizeof *old), "init wrote past an old batch options struct");
  CHECK(old->struct_size == sizeof *old && old->batch_size == 1 && old->num_workers == 0 &&
            old->prefetch_factor == 2 && old->channels == 3 && old->fill == -1,
        "old batch options defaults");
  old->batch_size = 2;
  const int64_t xy[4] = {0, 0, 300, 200};
  tessera_batch_iter *it = NULL;
  tessera_status st =
      tessera_batch_iter_create(s, xy, 2, 32, 24, 0, (tessera_batch_options *)old, &it);
  CHECK(st == TESSERA_OK, "iterator with old options: %s", tessera_error_message());
  if (st == TESSERA_OK) {
    CHECK(strcmp(tessera_batch_iter_decoder(it), "cpu") == 0, "an old caller's device: %s",
          tessera_batch_iter_decoder(it));
    tessera_batch *b = NULL;
    CHECK(tessera_batch_iter_next(it, &b) == TESSERA_OK && b && b->count == 2 &&
              b->device == TESSERA_DEVICE_CPU,
          "batch: %s", tessera_error_message());
    uint8_t want[32 * 24 * 3];
    for (size_t i = 0; b && i < b->count; i++) {
      CHECK(tessera_read_region(s, xy[2 * i], xy[2 * i + 1], 0, 32, 24, NULL, want, sizeof want) ==
                TESSERA_OK,
            "read: %s", tessera_error_message());
      CHECK(memcmp(b->data + i * sizeof want, want, sizeof want) == 0, "patch %zu differs", i);
    }
    tessera_batch_release(b);
  }
  tessera_batch_iter_destroy(it);
}

/* A shared-memory cache with no name: an old caller's name is NULL, not the guard's bytes. */
static void test_cache_options(void) {
  guarded g;
  struct cache_options_v0 *old = guard(&g);
  tessera_cache_options_init_sized((tessera_cache_options *)old, sizeof *old);
  CHECK(guard_intact(&g, sizeof *old), "init wrote past an old cache options struct");
  CHECK(old->struct_size == sizeof *old && old->type == TESSERA_CACHE_NONE &&
            old->memory_capacity_mib == 1024 && old->item_capacity == 0 && !old->record_stats,
        "old cache options defaults");
  old->type = TESSERA_CACHE_SHARED_MEMORY;
  old->memory_capacity_mib = 4;
  CHECK(tessera_cache_configure((tessera_cache_options *)old) == TESSERA_OK,
        "shared cache from old options: %s", tessera_error_message());
  guard(&g);
  size_t small = offsetof(tessera_cache_stats, record_stats);
  memcpy(g.bytes, &small, sizeof small);
  CHECK(tessera_cache_stats_get((tessera_cache_stats *)g.bytes) == TESSERA_OK &&
            guard_intact(&g, small) && size_of(g.bytes) == small,
        "stats into a shorter struct");
  tessera_cache_stats full = {.struct_size = sizeof full};
  CHECK(tessera_cache_stats_get(&full) == TESSERA_OK && full.type == TESSERA_CACHE_SHARED_MEMORY &&
            full.memory_capacity == 4 << 20,
        "stats of the old caller's cache: type %d, %llu bytes", (int)full.type,
        (unsigned long long)full.memory_capacity);
  tessera_cache_options none;
  tessera_cache_options_init(&none);
  CHECK(tessera_cache_configure(&none) == TESSERA_OK, "no cache: %s", tessera_error_message());
}

/* A program built against a newer tessera.h, whose structs are larger: the library reads and
 * writes its own size and says so in struct_size. */
static void test_newer_caller(tessera_slide *s, const char *path) {
  size_t big = sizeof(tessera_level_info) + 16;
  guarded g;
  guard(&g);
  memcpy(g.bytes, &big, sizeof big);
  tessera_level_info *info = (tessera_level_info *)g.bytes;
  CHECK(tessera_level_info_get(s, 0, info) == TESSERA_OK && info->struct_size == sizeof *info &&
            info->width > 0 && guard_intact(&g, sizeof *info),
        "level info into a larger struct: struct_size %zu", info->struct_size);

  big = sizeof(tessera_batch_options) + 16;
  tessera_batch_options_init_sized((tessera_batch_options *)guard(&g), big);
  CHECK(size_of(g.bytes) == sizeof(tessera_batch_options) &&
            guard_intact(&g, sizeof(tessera_batch_options)),
        "init of a larger struct: struct_size %zu", size_of(g.bytes));
  tessera_open_options *oo = guard(&g);
  tessera_open_options_init_sized(oo, sizeof *oo);
  oo->struct_size = sizeof *oo + 16;
  tessera_slide *other = NULL;
  CHECK(tessera_open_ex(path, oo, &other) == TESSERA_OK, "open with a larger struct: %s",
        tessera_error_message());
  tessera_close(other);
}

/* A struct_size that cannot even hold itself is refused everywhere; init writes nothing. */
static void test_no_size(tessera_slide *s, const char *path) {
  guarded g;
  size_t four = 4;
  memcpy(guard(&g), &four, sizeof four);
  tessera_read_options_init_sized((tessera_read_options *)g.bytes, 4);
  CHECK(size_of(g.bytes) == 4 && guard_intact(&g, sizeof(size_t)), "init with size 4 wrote");
  tessera_read_options_init_sized(NULL, sizeof(tessera_read_options)); /* must do nothing */
  tessera_slide *other = NULL;
  CHECK(tessera_open_ex(path, (tessera_open_options *)g.bytes, &other) == TESSERA_E_ARGUMENT &&
            !other,
        "open options of size 4");
  CHECK(strstr(tessera_error_message(), "open options without struct_size"), "message: %s",
        tessera_error_message());
  CHECK(tessera_cache_configure((tessera_cache_options *)g.bytes) == TESSERA_E_ARGUMENT,
        "cache options of size 4");
  CHECK(tessera_cache_stats_get((tessera_cache_stats *)g.bytes) == TESSERA_E_ARGUMENT,
        "cache stats of size 4");
  size_t count = 0;
  CHECK(tessera_shared_cache_list((tessera_shared_cache_info *)g.bytes, 1, &count) ==
            TESSERA_E_ARGUMENT,
        "shared cache info of size 4");
  tessera_batch_iter *it = NULL;
  const int64_t xy[2] = {0, 0};
  CHECK(tessera_batch_iter_create(s, xy, 1, 8, 8, 0, (tessera_batch_options *)g.bytes, &it) ==
            TESSERA_E_ARGUMENT,
        "batch options of size 4");
  uint8_t px[8 * 8 * 3];
  CHECK(tessera_read_region(s, 0, 0, 0, 8, 8, (tessera_read_options *)g.bytes, px, sizeof px) ==
            TESSERA_E_ARGUMENT,
        "read options of size 4");
  CHECK(tessera_level_info_get(s, 0, (tessera_level_info *)g.bytes) == TESSERA_E_ARGUMENT,
        "level info of size 4");
  CHECK(tessera_slide_limits(s, (tessera_open_options *)g.bytes) == TESSERA_E_ARGUMENT,
        "limits of size 4");
  CHECK(guard_intact(&g, sizeof(size_t)), "a refused call wrote");
}

int main(int argc, char **argv) {
  char path[4096];
  snprintf(path, sizeof path, "%s/generic-jpeg-ycbcr-128tiles.tiff", testdata_dir(argc, argv));
  test_open_options(path);
  test_cache_options();
  tessera_slide *s = NULL;
  if (tessera_open(path, &s) != TESSERA_OK) {
    CHECK(0, "cannot open %s: %s", path, tessera_error_message());
    return check_finish("test_abi");
  }
  test_read_options(s);
  test_batch_options(s);
  test_newer_caller(s, path);
  test_no_size(s, path);
  tessera_close(s);
  return check_finish("test_abi");
}
