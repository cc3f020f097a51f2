/* The CUDA batch iterator, run against the CUDA simulator (sim_cuda.c, built as libcudart and
 * libnvjpeg in the folder given as argv[2]): every batch equals the CPU iterator's batch for the
 * same locations and options, byte for byte (the simulator decodes with libjpeg as the CPU
 * path does), over every edge and fill case, also where a patch takes tiles from nvJPEG and
 * from the CPU; a tile needed by batches in flight is read once; device memory stays flat over a
 * long stream and comes back to nothing when iterators end, are abandoned or fail; the
 * simulator saw no misuse (host touching device memory, copies outside allocations or from
 * unpinned memory). */
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <tiffio.h>
#include <unistd.h>

#include "batch/engine.h"
#include "check.h"
#include "damage.h"
#include "gpu/jpeg_input.h"
#include "slide_internal.h"
#include "source/byte_source.h"
#include "source/tile_source.h"
#include "tessera.h"

static bool (*sim_peek)(void *dst, const void *src, size_t n);
static size_t (*sim_device_bytes)(void);
static size_t (*sim_pinned_bytes)(void);
static long (*sim_live_streams)(void);
static long (*sim_live_events)(void);
static long (*sim_failures)(void);
static long (*sim_decoded_images)(void);

static bool load_sim(const char *folder) {
  char path[4096];
  snprintf(path, sizeof path, "%s/libcudart.so.12", folder);
  void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
  if (!h)
    return false;
#define SIM(name) (*(void **)&name = dlsym(h, #name)) != NULL
  return SIM(sim_peek) && SIM(sim_device_bytes) && SIM(sim_pinned_bytes) &&
         SIM(sim_live_streams) && SIM(sim_live_events) && SIM(sim_failures) &&
         SIM(sim_decoded_images);
}

static tessera_slide *open_testdata(const char *dir, const char *name) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  tessera_slide *s = NULL;
  if (tessera_open(path, &s) != TESSERA_OK)
    CHECK(0, "%s: %s", path, tessera_error_message());
  return s;
}

/* Locations in level-0 pixels: inside, on tile seams, across every edge, wholly outside,
 * negative, and far away. */
static int64_t *locations(tessera_slide *s, int32_t level, size_t n, int64_t w, int64_t h,
                          unsigned long long *rng) {
  tessera_level_info info = {.struct_size = sizeof info};
  tessera_level_info_get(s, level, &info);
  int64_t *xy = malloc(2 * n * sizeof *xy + 1);
  for (size_t i = 0; i < n; i++) {
    int64_t lx, ly;
    switch (test_rand(rng) % 6) {
    case 0: /* wholly inside where it fits */
    case 1:
      lx = info.width > w ? (int64_t)(test_rand(rng) % (uint64_t)(info.width - w + 1)) : 0;
      ly = info.height > h ? (int64_t)(test_rand(rng) % (uint64_t)(info.height - h + 1)) : 0;
      break;
    case 2: /* on a tile corner */
      lx = (int64_t)(test_rand(rng) % (uint64_t)(info.width / info.tile_width + 1)) *
               info.tile_width - w / 2;
      ly = (int64_t)(test_rand(rng) % (uint64_t)(info.height / info.tile_height + 1)) *
               info.tile_height - h / 2;
      break;
    case 3: /* anywhere near */
      lx = (int64_t)(test_rand(rng) % (uint64_t)(info.width + 2 * w)) - w;
      ly = (int64_t)(test_rand(rng) % (uint64_t)(info.height + 2 * h)) - h;
      break;
    case 4: /* wholly outside */
      lx = -3 * w;
      ly = info.height + 5;
      break;
    default: /* far: beyond the 2^62 clamp */
      lx = INT64_MAX / 2;
      ly = INT64_MIN / 2;
    }
    if (lx > INT64_MAX / 4 || lx < INT64_MIN / 4) {
      xy[2 * i] = lx;
      xy[2 * i + 1] = ly;
    } else {
      xy[2 * i] = (int64_t)((double)lx * info.downsample);
      xy[2 * i + 1] = (int64_t)((double)ly * info.downsample);
    }
  }
  return xy;
}

/* Streams the same locations through a CPU and a CUDA iterator and compares every batch. */
/* Destroy waits only for work items already running: the iterator's tasks still queued in the
 * pool let go as they come up, and the last one frees the iterator. Waits (at most a minute)
 * for the simulator's counts to come back to the given ones; the caller then checks them. */
static void settle(size_t device, size_t pinned, long streams, long events) {
  for (int i = 0; i < 60000 && (sim_device_bytes() != device || sim_pinned_bytes() != pinned ||
                                sim_live_streams() != streams || sim_live_events() != events);
       i++)
    usleep(1000);
}

/* Every batch of a CUDA iterator over the n locations xy equals the CPU iterator's. */
static void compare_locations(tessera_slide *s, const char *name, int32_t level, const int64_t *xy,
                              size_t n, int64_t w, int64_t h, const tessera_batch_options *base,
                              const char *decoder) {
  tessera_batch_options o = *base;
  tessera_batch_iter *cpu = NULL, *gpu = NULL;
  o.device = TESSERA_DEVICE_CPU;
  CHECK(tessera_batch_iter_create(s, xy, n, w, h, level, &o, &cpu) == TESSERA_OK, "%s: %s", name,
        tessera_error_message());
  o.device = TESSERA_DEVICE_CUDA;
  CHECK(tessera_batch_iter_create(s, xy, n, w, h, level, &o, &gpu) == TESSERA_OK, "%s: %s", name,
        tessera_error_message());
  if (!cpu || !gpu) {
    tessera_batch_iter_destroy(cpu);
    tessera_batch_iter_destroy(gpu);
    return;
  }
  if (decoder)
    CHECK(strcmp(tessera_batch_iter_decoder(gpu), decoder) == 0, "%s: decoder %s, expected %s",
          name, tessera_batch_iter_decoder(gpu), decoder);
  CHECK(tessera_batch_iter_length(gpu) == tessera_batch_iter_length(cpu), "%s: lengths", name);
  uint8_t *got = malloc((size_t)base->batch_size * (size_t)(w * h * 4));
  size_t batches = 0;
  for (;;) {
    tessera_batch *a = NULL, *b = NULL;
    tessera_status sa = tessera_batch_iter_next(cpu, &a);
    tessera_status sb = tessera_batch_iter_next(gpu, &b);
    CHECK(sa == TESSERA_OK && sb == TESSERA_OK, "%s level %d: next: %d %d %s", name, level, sa,
          sb, tessera_error_message());
    if (!a || !b) {
      CHECK(!a && !b, "%s: the CUDA iterator ended at another batch", name);
      tessera_batch_release(a);
      tessera_batch_release(b);
      break;
    }
    CHECK(b->device == TESSERA_DEVICE_CUDA && b->device_id == 0 && b->stream != NULL,
          "%s: batch device %d", name, b->device);
    CHECK(b->count == a->count && b->size == a->size && b->number == a->number &&
              b->width == a->width && b->height == a->height && b->channels == a->channels,
          "%s: batch %zu: layout differs", name, batches);
    CHECK(memcmp(a->indices, b->indices, a->count * sizeof *a->indices) == 0,
          "%s: batch %zu: indices differ", name, batches);
    CHECK(sim_peek(got, b->data, b->size), "%s: batch data is not device memory", name);
    size_t pb = (size_t)(w * h * base->channels);
    for (size_t p = 0; p < a->count; p++)
      CHECK(memcmp(got + p * pb, a->data + p * pb, pb) == 0,
            "%s level %d batch %zu patch %zu (location %llu: %lld, %lld, %lldx%lld, channels %d, "
            "fill %d): pixels differ from the CPU's",
            name, level, batches, p, (unsigned long long)a->indices[p],
            (long long)xy[2 * a->indices[p]], (long long)xy[2 * a->indices[p] + 1], (long long)w,
            (long long)h, base->channels, base->fill);
    tessera_batch_release(a);
    tessera_batch_release(b);
    batches++;
  }
  tessera_batch_iter_destroy(cpu);
  tessera_batch_iter_destroy(gpu);
  free(got);
}

static void compare_stream(tessera_slide *s, const char *name, int32_t level, size_t n, int64_t w,
                           int64_t h, const tessera_batch_options *base, unsigned long long *rng,
                           const char *decoder) {
  int64_t *xy = locations(s, level, n, w, h, rng);
  compare_locations(s, name, level, xy, n, w, h, base, decoder);
  free(xy);
}

static void test_equal_to_cpu(const char *dir) {
  static const struct {
    const char *name, *decoder;
  } files[] = {
      {"generic-jpeg-ycbcr-128tiles.tiff", "nvjpeg-default"},
      {"aperio-jpeg-CMU-1-Small-Region.svs", "cpu+copy"}, /* RGB samples: the CPU's */
      {"generic-zstd-1024tiles-pyramid.tiff", "cpu+copy"},
      {"generic-webp-rgba-pyramid.tif", "cpu+copy"},
      {"hamamatsu-ndpi-DAPI.ndpi", "cpu+copy"},
  };
  unsigned long long rng = 42;
  for (size_t f = 0; f < sizeof files / sizeof files[0]; f++) {
    tessera_slide *s = open_testdata(dir, files[f].name);
    if (!s)
      continue;
    int32_t levels = tessera_level_count(s);
    for (int32_t level = 0; level < levels && level < 3; level++) {
      for (int k = 0; k < 6; k++) {
        tessera_batch_options o;
        tessera_batch_options_init(&o);
        o.batch_size = 1 + (int)(test_rand(&rng) % 9);
        o.num_workers = k % 3;
        o.prefetch_factor = 1 + (int)(test_rand(&rng) % 3);
        o.channels = k % 2 ? 4 : 3;
        o.fill = k >= 4 ? 7 : -1;
        o.shuffle = k == 5;
        o.drop_last = k == 3;
        int64_t side[] = {224, 64, 300, 17, 1, 512};
        int64_t w = side[k], h = side[(k + 2) % 6];
        compare_stream(s, files[f].name, level, 23, w, h, &o, &rng,
                       level == 0 ? files[f].decoder : NULL);
      }
    }
    tessera_close(s);
  }
}

/* Device memory does not grow over a long stream, and comes back when the iterator ends. */
static void test_flat_memory(const char *dir) {
  tessera_slide *s = open_testdata(dir, "generic-jpeg-ycbcr-128tiles.tiff");
  if (!s)
    return;
  size_t before = sim_device_bytes(), pinned_before = sim_pinned_bytes();
  long streams = sim_live_streams(), events = sim_live_events();
  unsigned long long rng = 7;
  enum { N = 10000 };
  int64_t *xy = locations(s, 0, N, 64, 64, &rng);
  tessera_batch_options o;
  tessera_batch_options_init(&o);
  o.batch_size = 50;
  o.num_workers = 2;
  o.device = TESSERA_DEVICE_CUDA;
  tessera_batch_iter *it = NULL;
  CHECK(tessera_batch_iter_create(s, xy, N, 64, 64, 0, &o, &it) == TESSERA_OK, "%s",
        tessera_error_message());
  size_t warm = 0, pinned_warm = 0, patches = 0, most = 0;
  for (size_t i = 0; it; i++) {
    tessera_batch *b = NULL;
    CHECK(tessera_batch_iter_next(it, &b) == TESSERA_OK, "%s", tessera_error_message());
    if (!b)
      break;
    patches += b->count;
    tessera_batch_release(b);
    if (i == 10) {
      warm = sim_device_bytes();
      pinned_warm = sim_pinned_bytes();
    }
    if (i > 10 && sim_device_bytes() > most)
      most = sim_device_bytes();
  }
  CHECK(patches == N, "%zu patches", patches);
  CHECK(most <= warm, "device memory grew from %zu to %zu bytes over the stream", warm, most);
  CHECK(sim_pinned_bytes() <= pinned_warm + pinned_warm / 2 + 65536,
        "pinned memory grew from %zu to %zu bytes", pinned_warm, sim_pinned_bytes());
  tessera_batch_iter_destroy(it);
  settle(before, pinned_before, streams, events);
  CHECK(sim_device_bytes() == before && sim_pinned_bytes() == pinned_before,
        "after the stream: %zu device bytes (before: %zu), %zu pinned (before: %zu)",
        sim_device_bytes(), before, sim_pinned_bytes(), pinned_before);
  free(xy);
  tessera_close(s);
}

/* No locations: an iterator of no batches, which takes no device memory it keeps. */
static void test_no_locations(const char *dir) {
  tessera_slide *s = open_testdata(dir, "generic-jpeg-ycbcr-128tiles.tiff");
  if (!s)
    return;
  size_t before = sim_device_bytes();
  tessera_batch_options o;
  tessera_batch_options_init(&o);
  o.batch_size = 16;
  o.num_workers = 2;
  o.device = TESSERA_DEVICE_CUDA;
  tessera_batch_iter *it = NULL;
  CHECK(tessera_batch_iter_create(s, NULL, 0, 64, 64, 0, &o, &it) == TESSERA_OK && it, "%s",
        tessera_error_message());
  CHECK(tessera_batch_iter_length(it) == 0, "%zu batches", tessera_batch_iter_length(it));
  tessera_batch *b = (tessera_batch *)1;
  CHECK(tessera_batch_iter_next(it, &b) == TESSERA_OK && !b, "a batch of no locations");
  tessera_batch_iter_destroy(it);
  CHECK(sim_device_bytes() == before, "%zu device bytes left (before: %zu)", sim_device_bytes(),
        before);
  tessera_close(s);
}

/* Iterators abandoned at every point free their device memory; a batch held past destroy
 * stays readable until released. */
static void test_abandoned(const char *dir) {
  tessera_slide *s = open_testdata(dir, "generic-jpeg-ycbcr-128tiles.tiff");
  if (!s)
    return;
  size_t before = sim_device_bytes(), pinned = sim_pinned_bytes();
  long streams = sim_live_streams(), events = sim_live_events();
  unsigned long long rng = 9;
  int64_t *xy = locations(s, 0, 40, 100, 100, &rng);
  for (int taken = 0; taken < 4; taken++) {
    for (int workers = 0; workers <= 2; workers += 2) {
      tessera_batch_options o;
      tessera_batch_options_init(&o);
      o.batch_size = 4;
      o.num_workers = workers;
      o.prefetch_factor = 3;
      o.device = TESSERA_DEVICE_CUDA;
      tessera_batch_iter *it = NULL;
      CHECK(tessera_batch_iter_create(s, xy, 40, 100, 100, 0, &o, &it) == TESSERA_OK, "%s",
            tessera_error_message());
      tessera_batch *held = NULL;
      for (int i = 0; i < taken && it; i++) {
        tessera_batch *b = NULL;
        CHECK(tessera_batch_iter_next(it, &b) == TESSERA_OK && b, "%s", tessera_error_message());
        if (held)
          tessera_batch_release(held);
        held = b;
      }
      uint8_t *copy = held ? malloc(held->size) : NULL;
      if (held)
        sim_peek(copy, held->data, held->size);
      tessera_batch_iter_destroy(it);
      if (held) {
        uint8_t *again = malloc(held->size);
        CHECK(sim_peek(again, held->data, held->size) && memcmp(copy, again, held->size) == 0,
              "a batch held past destroy changed or was freed");
        tessera_batch_release(held);
        free(again);
        free(copy);
      }
      settle(before, pinned, streams, events);
      CHECK(sim_device_bytes() == before, "abandoned after %d batches (workers %d): %zu device "
            "bytes left (before: %zu)", taken, workers, sim_device_bytes(), before);
      CHECK(sim_live_streams() == streams && sim_live_events() == events,
            "streams %ld (before %ld), events %ld (before %ld)", sim_live_streams(), streams,
            sim_live_events(), events);
    }
  }
  free(xy);
  tessera_close(s);
}

/* A damaged tile fails the CUDA batch that needs it with the CPU's message, and only it; so
 * does nvJPEG failing (the CPU decodes then); and running out of device memory fails cleanly. */
static void test_failures(const char *dir) {
  char src[4096], tmp[] = "/tmp/tessera-gpu-XXXXXX.tiff";
  snprintf(src, sizeof src, "%s/generic-jpeg-ycbcr-128tiles.tiff", dir);
  tessera_slide *s = NULL;
  int fd = mkstemps(tmp, 5);
  if (fd >= 0)
    close(fd);
  bool ok = fd >= 0 && test_copy_file(src, tmp) && test_damage_tile(tmp, 5) &&
            tessera_open(tmp, &s) == TESSERA_OK;
  CHECK(ok, "a damaged copy: %s", tessera_error_message());
  if (!ok) {
    unlink(tmp);
    return;
  }
  tessera_level_info info = {.struct_size = sizeof info};
  tessera_level_info_get(s, 0, &info);
  int64_t tw = info.tile_width, th = info.tile_height;
  /* Batches of 2: (tile 0, tile 1), (tile 5, tile 6), (tile 2, tile 3). */
  int64_t xy[] = {0, 0, tw, 0, tw, th, 2 * tw, th, 2 * tw, 0, 3 * tw, 0};
  for (int device = 0; device <= 1; device++) {
    tessera_batch_options o;
    tessera_batch_options_init(&o);
    o.batch_size = 2;
    o.device = device;
    tessera_batch_iter *it = NULL;
    CHECK(tessera_batch_iter_create(s, xy, 6, tw, th, 0, &o, &it) == TESSERA_OK, "%s",
          tessera_error_message());
    for (int b = 0; b < 3 && it; b++) {
      tessera_batch *batch = NULL;
      tessera_status st = tessera_batch_iter_next(it, &batch);
      if (b == 1)
        CHECK(st == TESSERA_E_CORRUPT && !batch && strstr(tessera_error_message(), "tile 5"),
              "device %d: the batch with the damaged tile: %d, %s", device, st,
              tessera_error_message());
      else
        CHECK(st == TESSERA_OK && batch, "device %d batch %d: %s", device, b,
              tessera_error_message());
      tessera_batch_release(batch);
    }
    tessera_batch_iter_destroy(it);
  }
  tessera_close(s);
  unlink(tmp);

  /* nvJPEG failing: the CPU paints every patch, and the pixels are still right. */
  s = open_testdata(dir, "generic-jpeg-ycbcr-128tiles.tiff");
  if (!s)
    return;
  long decoded = sim_decoded_images();
  setenv("SIM_NVJPEG_FAIL", "1", 1);
  tessera_batch_options o;
  tessera_batch_options_init(&o);
  o.batch_size = 5;
  unsigned long long rng = 3;
  compare_stream(s, "nvJPEG failing", 0, 20, 120, 90, &o, &rng, "nvjpeg-default");
  unsetenv("SIM_NVJPEG_FAIL");
  CHECK(sim_decoded_images() == decoded, "nvJPEG failed, yet %ld tiles were decoded on the GPU",
        sim_decoded_images() - decoded);

  /* Out of device memory: the batch fails with CUDA's reason; nothing is left behind. */
  size_t before = sim_device_bytes();
  setenv("SIM_CUDA_MALLOC_LIMIT", "1000", 1);
  o.device = TESSERA_DEVICE_CUDA;
  tessera_batch_iter *it = NULL;
  int64_t one[] = {0, 0, 10, 10};
  CHECK(tessera_batch_iter_create(s, one, 2, 64, 64, 0, &o, &it) == TESSERA_OK, "%s",
        tessera_error_message());
  tessera_batch *b = NULL;
  tessera_status st = it ? tessera_batch_iter_next(it, &b) : TESSERA_E_ARGUMENT;
  CHECK(st == TESSERA_E_NOMEM && !b && strstr(tessera_error_message(), "cudaMalloc") &&
            strstr(tessera_error_message(), "out of memory"),
        "out of device memory: %d %s", st, tessera_error_message());
  tessera_batch_iter_destroy(it);
  unsetenv("SIM_CUDA_MALLOC_LIMIT");
  CHECK(sim_device_bytes() == before, "%zu device bytes left", sim_device_bytes() - before);

  /* A device that is not there. */
  o.device_id = 1;
  it = NULL;
  st = tessera_batch_iter_create(s, one, 2, 64, 64, 0, &o, &it);
  CHECK(st == TESSERA_E_ARGUMENT && !it && strstr(tessera_error_message(), "1 CUDA devices"),
        "device_id 1: %d %s", st, tessera_error_message());
  o.device_id = 0;
  o.device = 7;
  st = tessera_batch_iter_create(s, one, 2, 64, 64, 0, &o, &it);
  CHECK(st == TESSERA_E_ARGUMENT && !it, "device 7: %d", st);
  tessera_close(s);
}

/* Batches needing more tiles than the tile buffer holds decode them in chunks, each waited for
 * before the next reuses the buffers: still equal to the CPU's. */
static void test_chunks(const char *dir) {
  tessera_slide *s = open_testdata(dir, "generic-jpeg-ycbcr-128tiles.tiff");
  if (!s)
    return;
  size_t saved = tsr_gpu_tile_budget;
  unsigned long long rng = 11;
  for (size_t tiles = 1; tiles <= 5; tiles += 2) {
    tsr_gpu_tile_budget = tiles * 128 * 128 * 3;
    for (int workers = 0; workers <= 1; workers++) {
      tessera_batch_options o;
      tessera_batch_options_init(&o);
      o.batch_size = 6;
      o.num_workers = workers;
      o.channels = 3 + workers;
      compare_stream(s, "chunks", 0, 30, 200, 150, &o, &rng, NULL);
    }
  }
  tsr_gpu_tile_budget = saved;
  tessera_close(s);
}

/* Tile reads and GPU decodes of a CUDA iterator over the n locations xy, run alone (a CPU
 * iterator beside it would read tiles too). */
static void count_reads(tessera_slide *s, const int64_t *xy, size_t n, int64_t w, int64_t h,
                        const tessera_batch_options *base, uint64_t *reads, long *decoded) {
  tessera_batch_options o = *base;
  o.device = TESSERA_DEVICE_CUDA;
  tessera_batch_iter *it = NULL;
  uint64_t reads_before = tsr_tile_reads();
  long decoded_before = sim_decoded_images();
  CHECK(tessera_batch_iter_create(s, xy, n, w, h, 0, &o, &it) == TESSERA_OK, "%s",
        tessera_error_message());
  for (tessera_batch *b = NULL; it && tessera_batch_iter_next(it, &b) == TESSERA_OK && b;)
    tessera_batch_release(b);
  tessera_batch_iter_destroy(it);
  *reads = tsr_tile_reads() - reads_before;
  *decoded = sim_decoded_images() - decoded_before;
}

/* Batches of the same locations: a tile shared by patches of batches in flight is read and
 * decoded on the GPU once, whatever the number of workers, also when a batch's tiles are
 * decoded in chunks; pixels stay the CPU's. With all 12 batches in flight, the 144 times
 * patches of the 12 batches need one of the 12 tiles come to 12 reads. With two batches ahead
 * of the consumer (prefetch_factor 2), tiles the GPU still holds from an earlier batch are
 * copied on the GPU, not read again: without workers, each tile is decoded exactly once. */
static void test_shared_tiles(const char *dir) {
  tessera_slide *s = open_testdata(dir, "generic-jpeg-ycbcr-128tiles.tiff");
  if (!s)
    return;
  enum { PER_BATCH = 8, BATCHES = 12, TILES = 12 };
  int64_t xy[2 * PER_BATCH * BATCHES];
  for (size_t i = 0; i < PER_BATCH * BATCHES; i++) { /* each patch across 2 x 2 tiles */
    xy[2 * i] = (int64_t)(i % PER_BATCH % 4) * 128 + 70;
    xy[2 * i + 1] = (int64_t)(i % PER_BATCH / 4) * 128 + 90;
  }
  size_t saved = tsr_gpu_tile_budget;
  for (size_t chunk = 4; chunk <= TILES; chunk += TILES - 4) {
    tsr_gpu_tile_budget = chunk * 128 * 128 * 3;
    for (int workers = 0; workers <= 2; workers++) {
      tessera_batch_options o;
      tessera_batch_options_init(&o);
      o.batch_size = PER_BATCH;
      o.num_workers = workers;
      o.prefetch_factor = BATCHES - 1;
      uint64_t reads;
      long decoded;
      count_reads(s, xy, PER_BATCH * BATCHES, 100, 100, &o, &reads, &decoded);
      CHECK(reads == TILES && decoded == TILES,
            "all batches in flight, workers %d, chunks of %zu tiles: %llu tile reads and %ld GPU "
            "decodes for %d batches of the same %d tiles (expected %d)",
            workers, chunk, (unsigned long long)reads, decoded, BATCHES, TILES, TILES);
      compare_locations(s, "shared tiles", 0, xy, PER_BATCH * BATCHES, 100, 100, &o, NULL);
    }
  }
  tsr_gpu_tile_budget = saved;
  for (int workers = 0; workers <= 2; workers += 2) {
    tessera_batch_options o;
    tessera_batch_options_init(&o);
    o.batch_size = PER_BATCH;
    o.num_workers = workers;
    o.prefetch_factor = 2;
    long before = sim_decoded_images();
    compare_locations(s, "one batch", 0, xy, PER_BATCH, 100, 100, &o, NULL);
    long tiles = sim_decoded_images() - before; /* tiles of one batch: each decoded once */
    CHECK(tiles == TILES, "%ld tiles decoded on the GPU for one batch of %d", tiles, TILES);
    before = sim_decoded_images();
    compare_locations(s, "shared tiles", 0, xy, PER_BATCH * BATCHES, 100, 100, &o, NULL);
    long decoded = sim_decoded_images() - before;
    long most = workers == 0 ? tiles : tiles * BATCHES / 2;
    CHECK(decoded <= most,
          "workers %d: %ld tiles decoded for %d batches of the same %ld tiles (at most %ld)",
          workers, decoded, BATCHES, tiles, most);
    /* The batches made in order: each tile read once, too, also when the tile buffers hold a
     * third of the tiles each (the lanes, one per batch in flight, hold them all). */
    for (size_t chunk = TILES / 3; workers == 0 && chunk <= TILES; chunk += 2 * TILES / 3) {
      uint64_t reads;
      tsr_gpu_tile_budget = chunk * 128 * 128 * 3;
      count_reads(s, xy, PER_BATCH * BATCHES, 100, 100, &o, &reads, &decoded);
      CHECK(reads == TILES && decoded == TILES,
            "two batches ahead, chunks of %zu tiles: %llu tile reads and %ld GPU decodes for %d "
            "batches of the same %d tiles (expected %d)",
            chunk, (unsigned long long)reads, decoded, BATCHES, TILES, TILES);
      tsr_gpu_tile_budget = saved;
    }
  }
  tessera_close(s);
}

/* Tiles the CUDA back end decodes on the CPU (zstd here) go through the decoded-tile cache, of
 * either kind: a first stream of the CUDA iterator alone reads each tile once and puts it in
 * the cache (whole tiles: not only remembered), a second is served from it (hits, no new
 * misses, no tile read), and its batches are still the CPU's. */
static void test_cached_cpu_tiles(const char *dir, tessera_cache_type type) {
  tessera_slide *s = open_testdata(dir, "generic-zstd-1024tiles-pyramid.tiff");
  if (!s)
    return;
  tessera_cache_options co;
  tessera_cache_options_init(&co);
  co.type = type;
  co.record_stats = 1;
  CHECK(tessera_cache_configure(&co) == TESSERA_OK, "%s", tessera_error_message());
  enum { N = 8 };
  int64_t xy[2 * N];
  for (size_t i = 0; i < N; i++) { /* whole tiles (a partial first read is only remembered) */
    xy[2 * i] = (int64_t)(i % 4) * 1024;
    xy[2 * i + 1] = (int64_t)(i / 4) * 1024;
  }
  tessera_batch_options o;
  tessera_batch_options_init(&o);
  o.batch_size = 4;
  o.num_workers = 1;
  tessera_cache_stats first = {.struct_size = sizeof first}, second = first;
  uint64_t reads;
  long decoded;
  count_reads(s, xy, N, 1024, 1024, &o, &reads, &decoded);
  CHECK(reads == N && decoded == 0, "cache type %d: first pass: %llu tile reads, %ld on the GPU",
        (int)type, (unsigned long long)reads, decoded);
  CHECK(tessera_cache_stats_get(&first) == TESSERA_OK, "%s", tessera_error_message());
  count_reads(s, xy, N, 1024, 1024, &o, &reads, &decoded);
  CHECK(tessera_cache_stats_get(&second) == TESSERA_OK, "%s", tessera_error_message());
  CHECK(second.hits - first.hits >= N && second.misses == first.misses && reads == 0,
        "cache type %d: the CUDA iterator's CPU tiles: %llu cache hits, %llu misses, %llu tile "
        "reads on a second pass",
        (int)type, (unsigned long long)(second.hits - first.hits),
        (unsigned long long)(second.misses - first.misses), (unsigned long long)reads);
  compare_locations(s, "cached", 0, xy, N, 1024, 1024, &o, "cpu+copy");
  co.type = TESSERA_CACHE_NONE;
  tessera_cache_configure(&co);
  tessera_close(s);
}

/* Writes a 512 x 384 JPEG (YCbCr 4:2:0) pyramid of one level in 128 x 128 tiles, leaving out
 * tile `missing` (offset and byte count 0); 1 on success. */
static int write_jpeg_without_tile(const char *path, uint32_t missing) {
  TIFF *t = TIFFOpen(path, "w");
  if (!t)
    return 0;
  TIFFSetField(t, TIFFTAG_IMAGEWIDTH, 512);
  TIFFSetField(t, TIFFTAG_IMAGELENGTH, 384);
  TIFFSetField(t, TIFFTAG_TILEWIDTH, 128);
  TIFFSetField(t, TIFFTAG_TILELENGTH, 128);
  TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, 3);
  TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, 8);
  TIFFSetField(t, TIFFTAG_PLANARCONFIG, PLANARCONFIG_CONTIG);
  TIFFSetField(t, TIFFTAG_COMPRESSION, COMPRESSION_JPEG);
  TIFFSetField(t, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_YCBCR);
  TIFFSetField(t, TIFFTAG_YCBCRSUBSAMPLING, 2, 2);
  TIFFSetField(t, TIFFTAG_JPEGQUALITY, 90);
  TIFFSetField(t, TIFFTAG_JPEGCOLORMODE, JPEGCOLORMODE_RGB);
  uint8_t tile[128 * 128 * 3];
  int ok = 1;
  for (uint32_t i = 0; i < 12 && ok; i++) {
    if (i == missing)
      continue;
    for (size_t p = 0; p < sizeof tile; p++) /* varied, so that every tile decodes apart */
      tile[p] = (uint8_t)((p * 7 + i * 31 + (p / 384) * 3) & 0xFF);
    ok = TIFFWriteEncodedTile(t, i, tile, sizeof tile) >= 0;
  }
  ok = ok && TIFFWriteDirectory(t);
  TIFFClose(t);
  return ok;
}

/* A patch may take tiles from nvJPEG and from the CPU at once: here the level's missing tile
 * (fill, alpha 0) beside tiles nvJPEG decodes, in patches inside the level and across its
 * edges; every batch is the CPU's, with 3 and 4 channels, any fill and workers. */
static void test_mixed_tiles(void) {
  char tmp[] = "/tmp/tessera-gpu-mixed-XXXXXX.tiff";
  int fd = mkstemps(tmp, 5);
  if (fd >= 0)
    close(fd);
  tessera_slide *s = NULL;
  bool ok = fd >= 0 && write_jpeg_without_tile(tmp, 5) && tessera_open(tmp, &s) == TESSERA_OK;
  CHECK(ok, "a JPEG pyramid with a missing tile: %s", tessera_error_message());
  if (!ok) {
    unlink(tmp);
    return;
  }
  /* Tile 5 is column 1, row 1: patches over it and its neighbours, and across the edges. */
  int64_t xy[] = {100, 100, 60, 200, 200, 60, 150, 150, -30, 90, 430, 300, 128, 128, 0, 0};
  size_t n = sizeof xy / sizeof xy[0] / 2;
  long decoded = sim_decoded_images();
  for (int k = 0; k < 4; k++) {
    tessera_batch_options o;
    tessera_batch_options_init(&o);
    o.batch_size = 3;
    o.num_workers = k % 2 ? 2 : 0;
    o.channels = k < 2 ? 3 : 4;
    o.fill = k == 3 ? 7 : -1;
    compare_locations(s, "mixed tiles", 0, xy, n, 120, 110, &o, "nvjpeg-default");
  }
  CHECK(sim_decoded_images() > decoded, "no tile of the mixed patches was decoded on the GPU");
  tessera_close(s);
  unlink(tmp);
}

/* tessera_batch_iter_next in a thread of its own. */
struct next_call {
  tessera_batch_iter *it;
  tessera_batch *batch;
  tessera_status status;
  atomic_int done;
};

static void *call_next(void *arg) {
  struct next_call *c = arg;
  c->status = tessera_batch_iter_next(c->it, &c->batch);
  atomic_store(&c->done, 1);
  return NULL;
}

/* Whether the call is done within 30 s (a hang guard: it is done at once or never). */
static bool finishes(struct next_call *c) {
  for (int i = 0; i < 30000 && !atomic_load(&c->done); i++)
    usleep(1000);
  return atomic_load(&c->done);
}

/* With TESSERA_POOL_THREADS=1: while the (simulated) GPU holds a CUDA batch's chunk, the one
 * pool thread is not kept waiting for it between chunks but given back, so a CPU batch
 * iterator's work runs meanwhile; then both batches are the CPU's pixels. */
static void test_thread_given_back(const char *dir, const char *sim) {
  char path[4096];
  snprintf(path, sizeof path, "%s/libcudart.so.12", sim);
  void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
  void (*sim_hold)(bool) = NULL;
  long (*sim_held_waits)(void) = NULL;
  if (!h || !(SIM(sim_hold) && SIM(sim_held_waits))) {
    CHECK(0, "the simulator's hold: %s", dlerror());
    return;
  }
  tessera_slide *s = open_testdata(dir, "generic-jpeg-ycbcr-128tiles.tiff");
  if (!s)
    return;
  size_t saved = tsr_gpu_tile_budget;
  tsr_gpu_tile_budget = 128 * 128 * 3; /* a tile a chunk: chunks wait for the ones before */
  enum { N = 4 };
  int64_t xy[2 * N];
  for (size_t i = 0; i < N; i++) {
    xy[2 * i] = (int64_t)i * 128 + 70;
    xy[2 * i + 1] = 90;
  }
  tessera_batch_options o;
  tessera_batch_options_init(&o);
  o.batch_size = N;
  o.num_workers = 1;
  o.prefetch_factor = 1;
  struct next_call gpu = {0}, cpu = {0};
  o.device = TESSERA_DEVICE_CUDA;
  CHECK(tessera_batch_iter_create(s, xy, N, 200, 150, 0, &o, &gpu.it) == TESSERA_OK, "%s",
        tessera_error_message());
  o.device = TESSERA_DEVICE_CPU;
  CHECK(tessera_batch_iter_create(s, xy, N, 200, 150, 0, &o, &cpu.it) == TESSERA_OK, "%s",
        tessera_error_message());
  sim_hold(true);
  long waits = sim_held_waits();
  pthread_t g, c;
  pthread_create(&g, NULL, call_next, &gpu);
  for (int i = 0; i < 30000 && sim_held_waits() == waits; i++)
    usleep(1000);
  CHECK(sim_held_waits() > waits, "the CUDA batch never waited for the held GPU");
  pthread_create(&c, NULL, call_next, &cpu);
  CHECK(finishes(&cpu), "a CPU batch made no progress while a CUDA chunk was in flight on the "
                        "one pool thread");
  sim_hold(false);
  pthread_join(c, NULL);
  pthread_join(g, NULL);
  CHECK(gpu.status == TESSERA_OK && cpu.status == TESSERA_OK && gpu.batch && cpu.batch,
        "next: %d %d", gpu.status, cpu.status);
  if (gpu.batch && cpu.batch) {
    uint8_t *got = malloc(gpu.batch->size);
    CHECK(sim_peek(got, gpu.batch->data, gpu.batch->size) &&
              memcmp(got, cpu.batch->data, cpu.batch->size) == 0,
          "the CUDA batch's pixels differ from the CPU's");
    free(got);
  }
  tessera_batch_release(gpu.batch);
  tessera_batch_release(cpu.batch);
  tessera_batch_iter_destroy(gpu.it);
  tessera_batch_iter_destroy(cpu.it);
  tsr_gpu_tile_budget = saved;
  tessera_close(s);
}

/* A JPEG header, built up segment by segment, for the eligibility check. */
struct stream {
  uint8_t b[512];
  size_t n;
};

static void put(struct stream *s, const uint8_t *bytes, size_t n) {
  memcpy(s->b + s->n, bytes, n);
  s->n += n;
}

static void segment(struct stream *s, uint8_t marker, const uint8_t *body, size_t n) {
  uint8_t head[4] = {0xFF, marker, (uint8_t)((n + 2) >> 8), (uint8_t)(n + 2)};
  put(s, head, 4);
  put(s, body, n);
}

/* SOI, what `before` adds, a frame (marker sof, w x h, luma sampling hv), tables, then a scan
 * of `scan` components. */
static bool eligible(uint8_t sof, uint32_t w, uint32_t h, uint8_t hv, uint8_t chroma,
                     uint8_t scan, void (*before)(struct stream *), bool subsampled) {
  struct stream s = {.n = 0};
  static const uint8_t soi[2] = {0xFF, 0xD8}, table[5] = {0};
  put(&s, soi, 2);
  if (before)
    before(&s);
  segment(&s, 0xDB, table, sizeof table);
  uint8_t frame[15] = {8, (uint8_t)(h >> 8), (uint8_t)h, (uint8_t)(w >> 8), (uint8_t)w, 3,
                       1, hv, 0, 2, chroma, 1, 3, chroma, 1};
  segment(&s, sof, frame, sizeof frame);
  segment(&s, 0xC4, table, sizeof table);
  uint8_t sos[10] = {scan, 1, 0, 2, 0x11, 3, 0x11, 0, 63, 0};
  segment(&s, 0xDA, sos, sizeof sos);
  return tsr_gpu_jpeg_supported(s.b, s.n, 256, 128, subsampled);
}

static void adobe(struct stream *s) {
  static const uint8_t body[12] = {'A', 'd', 'o', 'b', 'e', 0, 100, 0, 0, 0, 0, 0};
  segment(s, 0xEE, body, sizeof body);
}
static void app14_other(struct stream *s) {
  static const uint8_t body[6] = {'O', 't', 'h', 'e', 'r', 0};
  segment(s, 0xEE, body, sizeof body);
}
static void jfif_and_fill(struct stream *s) {
  static const uint8_t body[14] = {'J', 'F', 'I', 'F', 0, 1, 1, 0, 0, 1, 0, 1, 0, 0};
  static const uint8_t fill[2] = {0xFF, 0xFF};
  segment(s, 0xE0, body, sizeof body);
  put(s, fill, 2); /* fill bytes before the next marker are allowed */
  s->n--;          /* ... as FF FF FF xx: the marker's own FF follows */
}
static void dri_and_comment(struct stream *s) {
  static const uint8_t dri[2] = {0, 4}, com[3] = {'h', 'i', 0};
  segment(s, 0xDD, dri, sizeof dri);
  segment(s, 0xFE, com, sizeof com);
}
static void jpg_marker(struct stream *s) {
  static const uint8_t body[2] = {0, 0};
  segment(s, 0xC8, body, sizeof body);
}
static void jpgn_marker(struct stream *s) {
  static const uint8_t body[2] = {0, 0};
  segment(s, 0xF3, body, sizeof body);
}

/* Which streams nvJPEG gets: only those it decodes as libjpeg does, on every back end. */
static void test_eligibility(void) {
  CHECK(eligible(0xC0, 256, 128, 0x11, 0x11, 3, NULL, false), "4:4:4 baseline");
  CHECK(eligible(0xC0, 256, 128, 0x22, 0x11, 3, NULL, true), "4:2:0 with interpolation");
  CHECK(!eligible(0xC0, 256, 128, 0x22, 0x11, 3, NULL, false), "4:2:0 without interpolation");
  CHECK(eligible(0xC0, 256, 128, 0x21, 0x11, 3, NULL, true), "4:2:2");
  CHECK(!eligible(0xC0, 256, 128, 0x41, 0x11, 3, NULL, true), "4:1:1 (libjpeg and nvJPEG "
                                                                "upsample it differently)");
  CHECK(!eligible(0xC0, 256, 128, 0x22, 0x21, 3, NULL, true), "subsampled chroma factors");
  CHECK(!eligible(0xC1, 256, 128, 0x11, 0x11, 3, NULL, true), "extended (SOF1): the CPU's");
  CHECK(!eligible(0xC2, 256, 128, 0x11, 0x11, 3, NULL, true), "progressive: the CPU's");
  CHECK(!eligible(0xC9, 256, 128, 0x11, 0x11, 3, NULL, true), "arithmetic: the CPU's");
  CHECK(!eligible(0xC0, 240, 128, 0x11, 0x11, 3, NULL, true), "a size other than the tile's");
  CHECK(!eligible(0xC0, 256, 128, 0x11, 0x11, 1, NULL, true), "a scan of one component");
  CHECK(!eligible(0xC0, 256, 128, 0x11, 0x11, 3, adobe, true), "an Adobe marker");
  CHECK(eligible(0xC0, 256, 128, 0x11, 0x11, 3, app14_other, true), "another APP14");
  CHECK(eligible(0xC0, 256, 128, 0x11, 0x11, 3, jfif_and_fill, true), "JFIF, fill bytes");
  CHECK(eligible(0xC0, 256, 128, 0x11, 0x11, 3, dri_and_comment, true), "DRI and COM");
  CHECK(!eligible(0xC0, 256, 128, 0x11, 0x11, 3, jpg_marker, true), "a JPG marker");
  CHECK(!eligible(0xC0, 256, 128, 0x11, 0x11, 3, jpgn_marker, true), "a JPGn marker");
  /* Every truncation of a good stream is refused, and none reads past its end (ASan). */
  struct stream s = {.n = 0};
  static const uint8_t soi[2] = {0xFF, 0xD8};
  put(&s, soi, 2);
  uint8_t frame[15] = {8, 0, 128, 1, 0, 3, 1, 0x11, 0, 2, 0x11, 1, 3, 0x11, 1};
  segment(&s, 0xC0, frame, sizeof frame);
  uint8_t sos[10] = {3, 1, 0, 2, 0x11, 3, 0x11, 0, 63, 0};
  segment(&s, 0xDA, sos, sizeof sos);
  CHECK(tsr_gpu_jpeg_supported(s.b, s.n, 256, 128, true), "the whole stream");
  for (size_t n = 0; n < s.n; n++) {
    uint8_t *copy = malloc(n ? n : 1);
    memcpy(copy, s.b, n);
    CHECK(!tsr_gpu_jpeg_supported(copy, n, 256, 128, true), "cut at %zu bytes", n);
    free(copy);
  }
}

/* A remote slide's source as the batch engine sees it: bytes in memory behind the hint
 * interface of a block cache (room for 1 GiB of hints, 4 KiB blocks), recording in one
 * sequence when each offset was first hinted at and first read. */
enum { REC_MAX = 1 << 14 };
struct recording_source {
  struct tsr_byte_source pub;
  uint8_t *bytes;
  uint64_t size;
  pthread_mutex_t lock;
  uint64_t offsets[REC_MAX]; /* under lock */
  long hinted_at[REC_MAX], read_at[REC_MAX], n, seq;
};

static long *rec_slot(struct recording_source *r, uint64_t offset, long **read) {
  for (long i = 0; i < r->n; i++)
    if (r->offsets[i] == offset) {
      *read = &r->read_at[i];
      return &r->hinted_at[i];
    }
  if (r->n == REC_MAX)
    return *read = NULL;
  r->offsets[r->n] = offset;
  r->hinted_at[r->n] = r->read_at[r->n] = -1;
  *read = &r->read_at[r->n];
  return &r->hinted_at[r->n++];
}

static tessera_status rec_read_at(const struct tsr_byte_source *src, uint64_t offset, size_t length,
                                  void *buffer, size_t *got) {
  struct recording_source *r = (struct recording_source *)src;
  pthread_mutex_lock(&r->lock);
  long *read;
  if (rec_slot(r, offset, &read) && *read < 0)
    *read = r->seq++;
  pthread_mutex_unlock(&r->lock);
  *got = offset >= r->size ? 0 : length < r->size - offset ? length : (size_t)(r->size - offset);
  memcpy(buffer, r->bytes + offset, *got);
  return TESSERA_OK;
}

static void rec_hint(const struct tsr_byte_source *src, uint64_t offset, uint64_t length) {
  (void)length;
  struct recording_source *r = (struct recording_source *)src;
  pthread_mutex_lock(&r->lock);
  long *read, *hinted = rec_slot(r, offset, &read);
  if (hinted && *hinted < 0)
    *hinted = r->seq++;
  pthread_mutex_unlock(&r->lock);
}

static uint64_t rec_size(const struct tsr_byte_source *src) {
  return ((const struct recording_source *)src)->size;
}

static void rec_identity(const struct tsr_byte_source *src, struct tsr_file_id *id) {
  const struct recording_source *r = (const struct recording_source *)src;
  *id = (struct tsr_file_id){.device = UINT64_MAX - 11, .inode = (uint64_t)(uintptr_t)r,
                             .size = r->size};
}

static void rec_close(struct tsr_byte_source *src) {
  struct recording_source *r = (struct recording_source *)src;
  pthread_mutex_destroy(&r->lock);
  free(r->bytes);
  free(r);
}

static uint64_t rec_hint_room(const struct tsr_byte_source *src, uint64_t *granule) {
  (void)src;
  *granule = 4096;
  return (uint64_t)1 << 30;
}

static const struct tsr_byte_source_ops rec_ops = {rec_read_at, rec_size,     rec_identity,
                                                   rec_close,   rec_hint,     NULL,
                                                   rec_hint_room};

/* The CUDA back end hints a remote slide's tiles ahead through the batch engine as the CPU
 * back end does (issue 19: the compressed tiles of batches in flight fetched as concurrent
 * requests while earlier ones decode): one patch a batch inside tile k of the Aperio slide's
 * level 0, batch size 1, prefetch 2 and room for 16 batches more, so the first batch asked for
 * has tiles 0-18 hinted and no other; every tile is hinted before it is read; and the batches
 * over that source equal the CPU iterator's. */
static void test_remote_hints(const char *dir) {
  char path[4096];
  snprintf(path, sizeof path, "%s/aperio-jpeg-CMU-1-Small-Region.svs", dir);
  FILE *f = fopen(path, "rb");
  CHECK(f != NULL, "%s: cannot open it", path);
  if (!f)
    return;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  struct recording_source *r = calloc(1, sizeof *r);
  r->pub.ops = &rec_ops;
  r->bytes = malloc((size_t)n);
  r->size = (uint64_t)n;
  pthread_mutex_init(&r->lock, NULL);
  CHECK(fread(r->bytes, 1, (size_t)n, f) == (size_t)n, "%s: cannot read it", path);
  fclose(f);
  tessera_slide *s;
  tessera_status st = tsr_slide_open_source(&r->pub, "aperio", NULL, &s);
  CHECK(st == TESSERA_OK, "aperio over a recording source: %s", tessera_error_message());
  if (st != TESSERA_OK)
    return;
  const struct tsr_level *lv = &s->levels[0];
  enum { NB = 40 };
  CHECK(lv->ntiles >= NB, "%llu tiles", (unsigned long long)lv->ntiles);
  int64_t xy[2 * NB];
  for (int k = 0; k < NB; k++) {
    xy[2 * k] = (int64_t)(k % lv->across) * lv->tile_w + 8;
    xy[2 * k + 1] = (int64_t)(k / lv->across) * lv->tile_h + 8;
  }
  tessera_batch_options o;
  tessera_batch_options_init(&o);
  o.batch_size = 1;
  o.num_workers = 1;
  o.prefetch_factor = 2;
  o.device = TESSERA_DEVICE_CUDA;
  pthread_mutex_lock(&r->lock);
  r->n = 0; /* what the open read is not counted */
  pthread_mutex_unlock(&r->lock);
  tessera_batch_iter *it;
  CHECK(tessera_batch_iter_create(s, xy, NB, 64, 64, 0, &o, &it) == TESSERA_OK, "iterator: %s",
        tessera_error_message());
  tessera_batch *b = NULL;
  CHECK(tessera_batch_iter_next(it, &b) == TESSERA_OK && b && b->device == TESSERA_DEVICE_CUDA,
        "first batch: %s", tessera_error_message());
  tessera_batch_release(b);
  int wrong = 0;
  pthread_mutex_lock(&r->lock);
  for (int k = 0; k < NB; k++) {
    long *read, *hinted = rec_slot(r, lv->offsets[k], &read);
    wrong += (hinted && *hinted >= 0) != (k <= 18);
  }
  pthread_mutex_unlock(&r->lock);
  CHECK(wrong == 0, "CUDA: %d tiles hinted or not against batches 0-18", wrong);
  for (;;) {
    st = tessera_batch_iter_next(it, &b);
    CHECK(st == TESSERA_OK, "next: %s", tessera_error_message());
    if (st != TESSERA_OK || !b)
      break;
    tessera_batch_release(b);
  }
  tessera_batch_iter_destroy(it);
  int unhinted = 0, tiles_read = 0;
  pthread_mutex_lock(&r->lock);
  for (int k = 0; k < NB; k++) {
    long *read, *hinted = rec_slot(r, lv->offsets[k], &read);
    if (read && *read >= 0) {
      tiles_read++;
      unhinted += *hinted < 0 || *hinted > *read;
    }
  }
  pthread_mutex_unlock(&r->lock);
  CHECK(tiles_read == NB && unhinted == 0, "CUDA: %d tiles read, %d of them before a hint",
        tiles_read, unhinted);
  tessera_batch_options_init(&o);
  o.batch_size = 4;
  o.num_workers = 2;
  o.channels = 3;
  compare_locations(s, "aperio over a hinted source", 0, xy, NB, 300, 200, &o, NULL);
  tessera_close(s);
}

int main(int argc, char **argv) {
  const char *dir = testdata_dir(argc, argv);
  if (argc < 3) {
    fprintf(stderr, "usage: test_gpu_batch TESTDATA SIM_FOLDER\n");
    return 2;
  }
  setenv("TESSERA_CUDA_PATH", argv[2], 1);
  CHECK(tessera_cuda_status() == TESSERA_OK, "the simulator: %s", tessera_error_message());
  if (!load_sim(argv[2])) {
    CHECK(0, "the simulator's counters: %s", dlerror());
    return check_finish("test_gpu_batch");
  }
  if (argc > 3 && strcmp(argv[3], "one-thread") == 0) { /* run with TESSERA_POOL_THREADS=1 */
    test_thread_given_back(dir, argv[2]);
    return check_finish("test_gpu_batch one-thread");
  }
  test_eligibility();
  test_equal_to_cpu(dir);
  test_chunks(dir);
  test_shared_tiles(dir);
  test_remote_hints(dir);
  test_mixed_tiles();
  test_cached_cpu_tiles(dir, TESSERA_CACHE_PER_PROCESS);
  test_cached_cpu_tiles(dir, TESSERA_CACHE_SHARED_MEMORY);
  test_flat_memory(dir);
  test_abandoned(dir);
  test_no_locations(dir);
  test_failures(dir);
  CHECK(sim_failures() == 0, "the simulator saw %ld misuses (see stderr)", sim_failures());
  CHECK(sim_decoded_images() > 0, "no tile was decoded on the (simulated) GPU");
  return check_finish("test_gpu_batch");
}
