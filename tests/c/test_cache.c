/* The per-process tile cache: exact statistics on scripted sequences, reads through the cache
 * equal to reads without it (regions, whole levels, batches, from several threads), budgets
 * of bytes and items never exceeded under concurrent load, admission (a tile is cached when
 * missed a second time while the ghost remembers it, so a scan read once leaves the cache
 * alone), a hot set kept through a long scan, one decode for threads missing the same
 * admitted tile together, no collision between files or levels with equal tile indices, and
 * with 16 x 16 tiles, short hash chains and memory counted as the process spends it. Runs
 * plain, under ASan+UBSan and under TSan. */
#include <dirent.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/wait.h>
#include <tiffio.h>
#include <unistd.h>

#include "cache/cache.h"
#include "check.h"
#include "tessera.h"
#include "tile.h"

static void configure(tessera_cache_type type, uint64_t mib, uint64_t items, int stats) {
  tessera_cache_options o;
  tessera_cache_options_init(&o);
  o.type = type;
  o.memory_capacity_mib = mib;
  o.item_capacity = items;
  o.record_stats = stats;
  CHECK(tessera_cache_configure(&o) == TESSERA_OK, "configure: %s", tessera_error_message());
}

static tessera_cache_stats stats(void) {
  tessera_cache_stats t = {.struct_size = sizeof t};
  CHECK(tessera_cache_stats_get(&t) == TESSERA_OK, "stats: %s", tessera_error_message());
  return t;
}

static tessera_slide *open_testdata(const char *dir, const char *name) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  tessera_slide *s = NULL;
  if (tessera_open(path, &s) != TESSERA_OK)
    CHECK(0, "%s: %s", path, tessera_error_message());
  return s;
}

static tessera_level_info level_info(tessera_slide *s, int32_t level) {
  tessera_level_info info = {.struct_size = sizeof info};
  tessera_level_info_get(s, level, &info);
  return info;
}

/* A region read into a fresh buffer (caller frees). */
static uint8_t *read_patch(tessera_slide *s, int64_t x, int64_t y, int32_t level, int64_t w,
                           int64_t h, int channels) {
  size_t size = (size_t)(w * h * channels);
  uint8_t *buf = malloc(size);
  tessera_read_options o;
  tessera_read_options_init(&o);
  o.channels = channels;
  tessera_status st = tessera_read_region(s, x, y, level, w, h, &o, buf, size);
  CHECK(st == TESSERA_OK, "read: %s", tessera_error_message());
  return buf;
}

/* Scripted: tiles 0, 0, 1, 0, then a region over tiles 0, 1, 4, 5 twice; each step's hits,
 * misses and items are known exactly. A first miss of a corner only leaves the tile in the
 * ghost; the second is admitted (a miss that fills the cache); hits follow. A first miss of a
 * whole tile is admitted at once. Each tile held costs the cache the same bytes: its pixels and
 * a little bookkeeping. */
static void test_exact_stats(const char *dir) {
  tessera_slide *s = open_testdata(dir, "generic-jpeg-ycbcr-128tiles.tiff");
  if (!s)
    return;
  /* 1 MiB: the level (590 KB) is not within a tenth of it, which would admit every miss. */
  configure(TESSERA_CACHE_PER_PROCESS, 1, 0, 1);
  tessera_level_info info = level_info(s, 0);
  int64_t tw = info.tile_width, th = info.tile_height;
  uint64_t tile_bytes = (uint64_t)(tw * th * 3);
  struct {
    int64_t x, y, w, h;
    uint64_t hits, misses, items;
  } steps[] = {
      {0, 0, 10, 10, 0, 1, 0},         /* tile 0: first miss, not cached */
      {5, 5, 20, 20, 0, 2, 1},         /* tile 0: second miss, cached */
      {tw, 0, 10, 10, 0, 3, 1},        /* tile 1: first miss */
      {0, 0, tw, th, 1, 3, 1},         /* tile 0: hit */
      {0, 0, 2 * tw, 2 * th, 2, 6, 4}, /* 0 hits, 1 cached; 4, 5 read whole: cached at once */
      {0, 0, 2 * tw, 2 * th, 6, 6, 4}, /* all four hit */
  };
  uint64_t empty = stats().bytes, per_tile = 0;
  for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
    free(read_patch(s, steps[i].x, steps[i].y, 0, steps[i].w, steps[i].h, 3));
    tessera_cache_stats t = stats();
    if (!per_tile && t.items)
      per_tile = (t.bytes - empty) / t.items;
    CHECK(t.hits == steps[i].hits && t.misses == steps[i].misses && t.items == steps[i].items &&
              t.bytes == empty + t.items * per_tile && t.evictions == 0,
          "step %zu: hits %llu misses %llu items %llu bytes %llu", i, (unsigned long long)t.hits,
          (unsigned long long)t.misses, (unsigned long long)t.items, (unsigned long long)t.bytes);
  }
  CHECK(per_tile > tile_bytes && per_tile < tile_bytes + 256,
        "a %llu-byte tile is counted as %llu bytes", (unsigned long long)tile_bytes,
        (unsigned long long)per_tile);
  tessera_cache_stats t = stats();
  CHECK(t.type == TESSERA_CACHE_PER_PROCESS && t.memory_capacity == (uint64_t)1 << 20 &&
            t.record_stats == 1,
        "configuration not reported");
  tessera_cache_stats_reset(0);
  free(read_patch(s, 0, 0, 0, 10, 10, 3));
  t = stats();
  CHECK(t.hits == 0 && t.misses == 0 && t.items == 4, "after reset with counting off: %llu %llu",
        (unsigned long long)t.hits, (unsigned long long)t.misses);
  configure(TESSERA_CACHE_NONE, 0, 0, 0);
  t = stats();
  CHECK(t.type == TESSERA_CACHE_NONE && t.items == 0 && t.bytes == 0, "nocache holds tiles");
  tessera_close(s);
}

static uint64_t read_tile(tessera_slide *s, int64_t tw, int64_t th, int64_t across, int64_t t) {
  free(read_patch(s, t % across * tw, t / across * th, 0, 1, 1, 3));
  return stats().items;
}

/* What the ghost admits: a scan read once is missed and decoded once a tile, and leaves the
 * cache empty; a tile missed a second time while the ghost remembers it is cached, and then
 * hit without a decode; the ghost forgets a tile after more than a tenth of the capacity's
 * worth of other misses (here 0.8 MiB: 4 tiles of 240 x 240), so a tile read again only
 * after 12 others (the scan: 129) is missed and not cached, while one read again after 3
 * others is cached. 8 MiB, so that neither the level (22.5 MB) nor the rows an epoch of the
 * scan's misses falls in (4 rows, 6.9 MB) is small enough to be admitted for (see
 * test_admission_region). */
static void test_admission(const char *dir) {
  tessera_slide *s = open_testdata(dir, "aperio-jpeg-CMU-1-Small-Region.svs");
  if (!s)
    return;
  tessera_level_info info = level_info(s, 0);
  int64_t tw = info.tile_width, th = info.tile_height;
  int64_t across = (info.width + tw - 1) / tw, n = across * ((info.height + th - 1) / th);
  configure(TESSERA_CACHE_PER_PROCESS, 8, 0, 1);
  uint64_t reads = tsr_tile_reads();
  for (int64_t t = 0; t < n; t++)
    read_tile(s, tw, th, across, t);
  tessera_cache_stats st = stats();
  CHECK(st.items == 0 && st.misses == (uint64_t)n && st.hits == 0 &&
            tsr_tile_reads() - reads == (uint64_t)n,
        "a scan read once: %llu items, %llu misses, %llu decodes of %lld tiles",
        (unsigned long long)st.items, (unsigned long long)st.misses,
        (unsigned long long)(tsr_tile_reads() - reads), (long long)n);
  CHECK(read_tile(s, tw, th, across, 7) == 0, "the ghost remembered a tile 129 misses back");
  CHECK(read_tile(s, tw, th, across, 7) == 1, "a tile read twice in a row is not cached");
  reads = tsr_tile_reads();
  CHECK(read_tile(s, tw, th, across, 7) == 1 && tsr_tile_reads() == reads && stats().hits == 1,
        "a cached tile was decoded again");

  configure(TESSERA_CACHE_PER_PROCESS, 8, 0, 1);
  read_tile(s, tw, th, across, 0);
  for (int64_t t = 1; t <= 12; t++)
    read_tile(s, tw, th, across, t);
  CHECK(read_tile(s, tw, th, across, 0) == 0, "the ghost remembered a tile 12 misses back");
  CHECK(read_tile(s, tw, th, across, 0) == 1, "a tile missed just before is not cached");
  read_tile(s, tw, th, across, 20);
  for (int64_t t = 21; t <= 23; t++)
    read_tile(s, tw, th, across, t);
  CHECK(read_tile(s, tw, th, across, 20) == 2, "the ghost forgot a tile 3 misses back");
  configure(TESSERA_CACHE_NONE, 0, 0, 0);
  tessera_close(s);
}

/* A use that covers at least three quarters of a tile admits it at its first miss (decoding the
 * part would cost about a whole decode), and a corner does not: a 240 x 180 region of a 240 x
 * 240 tile is cached at once, 240 x 179 is not, nor is 10 x 10; two patches of one batch
 * whose union (rows 0 to 100 and 140 to 240) spans the tile are too. Each tile is decoded once
 * when cached at once, and pixels equal a read without the cache. */
static void test_admission_covers(const char *dir) {
  tessera_slide *s = open_testdata(dir, "aperio-jpeg-CMU-1-Small-Region.svs");
  if (!s)
    return;
  tessera_level_info info = level_info(s, 0);
  int64_t tw = info.tile_width, th = info.tile_height;
  CHECK(tw == 240 && th == 240 && info.width > 4 * tw, "the test expects 240 x 240 tiles");
  configure(TESSERA_CACHE_NONE, 0, 0, 0);
  uint8_t *want = read_patch(s, 0, 0, 0, tw, th, 3);
  configure(TESSERA_CACHE_PER_PROCESS, 64, 0, 1);
  struct {
    int64_t x, w, h;
    uint64_t items;
    const char *what;
  } cases[] = {{0, tw, th * 3 / 4, 1, "three quarters of a tile"},
               {tw, tw, th * 3 / 4 - 1, 0, "less than three quarters"},
               {2 * tw, 10, 10, 0, "a corner"}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    uint64_t items = stats().items, reads = tsr_tile_reads();
    uint8_t *got = read_patch(s, cases[i].x, 0, 0, cases[i].w, cases[i].h, 3);
    for (int64_t y = 0; y < cases[i].h; y++)
      CHECK(i > 0 || memcmp(got + y * cases[i].w * 3, want + y * tw * 3, (size_t)tw * 3) == 0,
            "%s: row %lld differs", cases[i].what, (long long)y);
    free(got);
    CHECK(stats().items - items == cases[i].items && tsr_tile_reads() - reads == 1,
          "%s, read once: %llu tiles cached, %llu decodes", cases[i].what,
          (unsigned long long)(stats().items - items),
          (unsigned long long)(tsr_tile_reads() - reads));
  }
  uint64_t hits = stats().hits, reads = tsr_tile_reads();
  free(read_patch(s, 0, 0, 0, tw, th, 3));
  CHECK(stats().hits == hits + 1 && tsr_tile_reads() == reads, "the covered tile was not hit");

  int64_t xy[4] = {3 * tw, 0, 3 * tw, 140};
  tessera_batch_options o;
  tessera_batch_options_init(&o);
  o.batch_size = 2;
  tessera_batch_iter *it = NULL;
  uint64_t items = stats().items;
  reads = tsr_tile_reads();
  CHECK(tessera_batch_iter_create(s, xy, 2, tw, 100, 0, &o, &it) == TESSERA_OK, "%s",
        tessera_error_message());
  tessera_batch *b = NULL;
  CHECK(tessera_batch_iter_next(it, &b) == TESSERA_OK && b && b->count == 2, "no batch");
  if (b)
    tessera_batch_release(b);
  tessera_batch_iter_destroy(it);
  CHECK(stats().items == items + 1 && tsr_tile_reads() == reads + 1,
        "a batch covering a tile: %llu cached, %llu decodes",
        (unsigned long long)(stats().items - items),
        (unsigned long long)(tsr_tile_reads() - reads));
  free(want);
  configure(TESSERA_CACHE_NONE, 0, 0, 0);
  tessera_close(s);
}

/* Reads tile t, then tiles `from` .. `to` once each, then t again; whether that cached t (the
 * read after it is a hit). */
static bool cached_after(tessera_slide *s, int64_t tw, int64_t th, int64_t across, int64_t t,
                         int64_t from, int64_t to) {
  read_tile(s, tw, th, across, t);
  for (int64_t o = from; o <= to; o++)
    read_tile(s, tw, th, across, o);
  read_tile(s, tw, th, across, t);
  uint64_t hits = stats().hits;
  read_tile(s, tw, th, across, t);
  return stats().hits == hits + 1;
}

/* The ghost's window adapts. With 2 MiB (12 tiles of 240 x 240), a new cache takes a tile
 * missed again after 3 others only within a tenth of that; once 256 misses were mostly of
 * tiles back within the 12 (10 tiles read in turn), it takes them within the 12; once 256
 * were mostly not (a scan of 110 tiles, three times), within a tenth again. */
static void test_admission_window(const char *dir) {
  tessera_slide *s = open_testdata(dir, "aperio-jpeg-CMU-1-Small-Region.svs");
  if (!s)
    return;
  tessera_level_info info = level_info(s, 0);
  int64_t tw = info.tile_width, th = info.tile_height, across = (info.width + tw - 1) / tw;
  configure(TESSERA_CACHE_PER_PROCESS, 2, 0, 1);
  CHECK(!cached_after(s, tw, th, across, 100, 101, 103), "a new cache's window is wide");
  for (int i = 0; i < 300; i++)
    read_tile(s, tw, th, across, i % 10);
  uint64_t hits = stats().hits;
  for (int i = 0; i < 10; i++)
    read_tile(s, tw, th, across, i);
  CHECK(stats().hits == hits + 10, "tiles back after 9 others are not cached");
  CHECK(cached_after(s, tw, th, across, 110, 111, 113), "the window did not widen");
  for (int pass = 0; pass < 3; pass++)
    for (int64_t t = 20; t < 130; t++)
      read_tile(s, tw, th, across, t);
  CHECK(!cached_after(s, tw, th, across, 50, 51, 53), "the window did not narrow");
  configure(TESSERA_CACHE_NONE, 0, 0, 0);
  tessera_close(s);
}

/* A level within a tenth of the capacity is admitted at its first miss, unless the cache
 * evicted to load a tile within the capacity's span of misses. CMU-1-Small-Region's level 0
 * (130 tiles of 240 x 240, 22.5 MB): a corner of a tile is cached at its first miss with 256
 * MiB (one decode, then hits), not with 128 MiB. With 8 MiB, the 12 tiles of
 * generic-jpeg-ycbcr-128tiles (590 KB) fit a tenth; once the third whole 1024 x 1024 tile of
 * the zstd pyramid (3 MB each, cached at once: they are read whole) evicts, its corner is not
 * cached at a first miss, until more than 8 MiB of misses later (three corners of other zstd
 * tiles, not cached: their level is 157 MB). */
static void test_admission_level(const char *dir) {
  tessera_slide *s = open_testdata(dir, "aperio-jpeg-CMU-1-Small-Region.svs");
  tessera_slide *a = open_testdata(dir, "generic-jpeg-ycbcr-128tiles.tiff");
  tessera_slide *b = open_testdata(dir, "generic-zstd-1024tiles-pyramid.tiff");
  if (!s || !a || !b)
    return;
  tessera_level_info info = level_info(s, 0);
  int64_t tw = info.tile_width, th = info.tile_height;
  CHECK(tw == 240 && th == 240 && info.width <= 2400 && info.height <= 3120,
        "the test expects at most 130 tiles of 240 x 240");
  configure(TESSERA_CACHE_PER_PROCESS, 256, 0, 1);
  uint64_t reads = tsr_tile_reads();
  for (int k = 0; k < 3; k++)
    free(read_patch(s, 5 * tw, 5 * th, 0, 1, 1, 3));
  tessera_cache_stats st = stats();
  CHECK(st.items == 1 && st.misses == 1 && st.hits == 2 && tsr_tile_reads() - reads == 1,
        "a tile of a level within a tenth, read 3 times: %llu cached, %llu misses, %llu decodes",
        (unsigned long long)st.items, (unsigned long long)st.misses,
        (unsigned long long)(tsr_tile_reads() - reads));
  configure(TESSERA_CACHE_PER_PROCESS, 128, 0, 1);
  free(read_patch(s, 5 * tw, 5 * th, 0, 1, 1, 3));
  CHECK(stats().items == 0, "a tile of a level over a tenth was cached at its first miss");

  configure(TESSERA_CACHE_PER_PROCESS, 8, 0, 1);
  enum { T = 1024 };
  free(read_patch(a, 0, 0, 0, 1, 1, 3));
  CHECK(stats().items == 1, "a's tile was not cached at its first miss");
  for (int i = 0; i < 3; i++)
    free(read_patch(b, i * T, 0, 0, T, T, 3));
  st = stats();
  CHECK(st.evictions > 0, "three 3 MB tiles in 8 MiB evicted nothing");
  uint64_t items = st.items;
  free(read_patch(a, 128, 0, 0, 1, 1, 3));
  CHECK(stats().items == items, "cached at a first miss just after an eviction");
  for (int i = 0; i < 3; i++)
    free(read_patch(b, i * T, T, 0, 1, 1, 3));
  st = stats();
  CHECK(st.items == items, "b's corners were cached (%llu tiles, not %llu)",
        (unsigned long long)st.items, (unsigned long long)items);
  free(read_patch(a, 256, 0, 0, 1, 1, 3));
  CHECK(stats().items == items + 1, "not cached at a first miss long after an eviction");
  configure(TESSERA_CACHE_NONE, 0, 0, 0);
  tessera_close(s);
  tessera_close(a);
  tessera_close(b);
}

/* Tiles the cache has loaded so far: those it holds and those it evicted. */
static uint64_t loads(void) {
  tessera_cache_stats t = stats();
  return t.items + t.evictions;
}

/* Reads the whole tile t of level 0 (tw x th tiles, `across` whole ones a row). */
static void read_whole(tessera_slide *s, int64_t tw, int64_t th, int64_t across, int64_t t) {
  free(read_patch(s, t % across * tw, t / across * th, 0, tw, th, 3));
}

/* Admissions that are not read again are thinned. With 8 MiB (neither CMU-1-Small-Region's
 * level nor an epoch's rows of a scan small beside it), a corner of each tile read once, three
 * times over, admits nothing and sets the ghost's window, measured narrow (cache.c's
 * GHOST_EPOCH: thinning waits for it). Then each whole tile read is admitted at its first
 * miss (its use covers it): a scan of the 108 whole tiles loads 64 without a hit
 * (YIELD_EPOCH), and then one tile in 8 (THIN_SAMPLE, a random draw: of the 44 left, 5.5 on
 * average; the bound, 20, is far in the tail). Then 4 tiles read 100 times each are loaded (a
 * draw each miss: 32 misses in all on average, and the bound, 160, far in the tail) and hit,
 * which ends the thinning:
 * the next 8 tiles missed are each loaded at that miss. The draws mix the tile's key, which
 * holds the file's identity: bounds, not counts. A child forked while the cache is thin
 * starts with an empty cache and yield. */
static void test_admission_yield(const char *dir) {
  tessera_slide *s = open_testdata(dir, "aperio-jpeg-CMU-1-Small-Region.svs");
  if (!s)
    return;
  tessera_level_info info = level_info(s, 0);
  int64_t tw = info.tile_width, th = info.tile_height;
  int64_t across = info.width / tw, down = info.height / th; /* whole tiles */
  CHECK(tw == 240 && across * down == 108, "the test expects 108 whole tiles of 240 x 240");
  configure(TESSERA_CACHE_PER_PROCESS, 8, 0, 1);
  for (int64_t t = 0; t < 108 * 3; t++)
    free(read_patch(s, t % 108 % across * tw, t % 108 / across * th, 0, 1, 1, 3));
  CHECK(loads() == 0 && stats().misses == 324, "corners read once each: %llu loads",
        (unsigned long long)loads());
  for (int64_t t = 0; t < 108; t++)
    read_whole(s, tw, th, across, t);
  uint64_t scan = loads();
  CHECK(scan >= 64 && scan <= 64 + 20,
        "a scan of 108 whole tiles read once loaded %llu (64, then one in 8 of 44)",
        (unsigned long long)scan);
  /* A forked child's cache starts empty, and so does its yield: its first whole tiles are
   * all loaded (thinned, about 1 in 8 would be). */
  pid_t pid = fork();
  if (pid == 0) {
    alarm(20);
    for (int64_t t = 0; t < 20; t++)
      read_whole(s, tw, th, across, t);
    _exit(loads() == 20 ? 0 : 1);
  }
  int status = 0;
  CHECK(pid > 0 && waitpid(pid, &status, 0) == pid, "fork/wait failed");
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
        "a forked child's first 20 whole tiles were not all loaded (status %d)", status);
  uint64_t hits = stats().hits;
  for (int i = 0; i < 400; i++)
    read_whole(s, tw, th, across, i % 4);
  CHECK(stats().hits - hits >= 400 - 160, "4 tiles read 100 times: %llu hits",
        (unsigned long long)(stats().hits - hits));
  int missed = 0;
  for (int64_t t = 4; t < across * down && missed < 8; t++) {
    uint64_t was = stats().hits, before = loads();
    read_whole(s, tw, th, across, t);
    if (stats().hits != was)
      continue;
    missed++;
    CHECK(loads() == before + 1, "after the hits, tile %lld missed and not loaded",
          (long long)t);
  }
  CHECK(missed == 8, "only %d of the tiles missed", missed);
  configure(TESSERA_CACHE_NONE, 0, 0, 0);
  tessera_close(s);
}

/* A stream read in rounds is not thinned: its hits come a round after its loads. The 108
 * whole tiles of CMU-1-Small-Region's level 0 (18.7 MB), read once a round in a fixed order
 * spread over the level (so neither the level nor an epoch's rectangle of misses is small
 * beside 32 MiB), fit the cache. Read by corners, the second round's misses all come back
 * within the capacity's span, the window widens within the third (after 256 misses), the
 * rest of that round and the fourth admit every miss (68 loads before any hit would have
 * made the cache thin), and the fifth round hits every tile. Read whole (each use covers its
 * tile), the first round admits every tile (thinning waits for the ghost's first 256
 * misses) and the second hits them all. */
static void test_admission_rounds(const char *dir) {
  tessera_slide *s = open_testdata(dir, "aperio-jpeg-CMU-1-Small-Region.svs");
  if (!s)
    return;
  tessera_level_info info = level_info(s, 0);
  int64_t tw = info.tile_width, th = info.tile_height, across = info.width / tw;
  CHECK(tw == 240 && across * (info.height / th) == 108, "the test expects 108 whole tiles");
  for (int whole = 0; whole <= 1; whole++) {
    configure(TESSERA_CACHE_PER_PROCESS, 32, 0, 1);
    tessera_cache_stats st = stats();
    int last = whole ? 2 : 5;
    for (int round = 1; round <= last; round++) {
      tessera_cache_stats was = st;
      for (int64_t i = 0; i < 108; i++) {
        int64_t t = i * 37 % 108; /* 37 and 108 are coprime: each tile once */
        if (whole)
          read_whole(s, tw, th, across, t);
        else
          free(read_patch(s, t % across * tw + 5, t / across * th + 5, 0, 1, 1, 3));
      }
      st = stats();
      if (round == last)
        CHECK(st.misses == was.misses && st.hits - was.hits == 108 && st.evictions == 0,
              "read %s, round %d: %llu misses, %llu hits, %llu evictions",
              whole ? "whole" : "by corners", round,
              (unsigned long long)(st.misses - was.misses),
              (unsigned long long)(st.hits - was.hits), (unsigned long long)st.evictions);
    }
  }
  configure(TESSERA_CACHE_NONE, 0, 0, 0);
  tessera_close(s);
}

/* Reads a corner of each listed tile of level 0 in turn, `times` tiles in all. */
static void read_corners(tessera_slide *s, const int64_t *tiles, size_t n, size_t times) {
  enum { T = 1024, ACROSS = 10 };
  for (size_t i = 0; i < times; i++)
    free(read_patch(s, tiles[i % n] % ACROSS * T, tiles[i % n] / ACROSS * T, 0, 1, 1, 3));
}

/* A tile is admitted at its first miss once the level's last 32 misses fell in a rectangle of
 * tiles within half the capacity. The zstd pyramid's level 0 is 10 x 5 tiles of 1024 x 1024
 * (3 MB each, 157 MB) and the cache 128 MiB (its tenth holds 4 tiles, so the ghost forgets a
 * tile read again 6 misses later, and the level is over a tenth): corners of 6 tiles in 3
 * columns and 2 rows read in turn, 32 misses and none cached, then make a first miss of
 * another tile admitted (one decode, then hits); corners of 32 tiles all over the level do not
 * (with the slide opened again, so that no earlier rectangle counts). */
static void test_admission_region(const char *dir) {
  static const int64_t near[] = {0, 1, 2, 10, 11, 12};
  static const int64_t spread[] = {0,  49, 9,  40, 4,  45, 20, 29, 13, 36, 7, 42, 31, 18, 2, 47,
                                   25, 34, 11, 38, 16, 26, 5,  44, 27, 32, 1, 48, 19, 30, 8, 41};
  tessera_slide *s = open_testdata(dir, "generic-zstd-1024tiles-pyramid.tiff");
  if (!s)
    return;
  tessera_level_info info = level_info(s, 0);
  CHECK(info.tile_width == 1024 && info.width == 10000 && info.height == 5000,
        "the test expects 10 x 5 tiles of 1024 x 1024");
  configure(TESSERA_CACHE_PER_PROCESS, 128, 0, 1);
  read_corners(s, near, 6, 32);
  tessera_cache_stats st = stats();
  CHECK(st.items == 0 && st.misses == 32, "6 tiles read in turn: %llu cached, %llu misses",
        (unsigned long long)st.items, (unsigned long long)st.misses);
  uint64_t reads = tsr_tile_reads();
  static const int64_t other[] = {23};
  read_corners(s, other, 1, 3);
  st = stats();
  CHECK(st.items == 1 && st.hits == 2 && tsr_tile_reads() - reads == 1,
        "a first miss after misses in 6 MB: %llu cached, %llu hits, %llu decodes",
        (unsigned long long)st.items, (unsigned long long)st.hits,
        (unsigned long long)(tsr_tile_reads() - reads));
  tessera_close(s);

  s = open_testdata(dir, "generic-zstd-1024tiles-pyramid.tiff");
  configure(TESSERA_CACHE_PER_PROCESS, 128, 0, 1);
  read_corners(s, spread, 32, 32);
  read_corners(s, other, 1, 1);
  st = stats();
  CHECK(st.items == 0 && st.misses == 33, "misses all over the level: %llu cached, %llu misses",
        (unsigned long long)st.items, (unsigned long long)st.misses);
  configure(TESSERA_CACHE_NONE, 0, 0, 0);
  tessera_close(s);
}

/* Whole levels read through a cache equal the same reads without one, for every level of every
 * file of the test data, in three passes: misses (each tile read whole, so decoded whole into
 * the cache at its first miss), then hits twice. */
static void test_same_pixels(const char *dir) {
  DIR *d = opendir(dir);
  for (struct dirent *e; d && (e = readdir(d)) != NULL;) {
    if (e->d_name[0] == '.' || strstr(e->d_name, ".md"))
      continue;
    tessera_slide *s = open_testdata(dir, e->d_name);
    if (!s)
      continue;
    for (int32_t level = 0; level < tessera_level_count(s); level++) {
      tessera_level_info info = level_info(s, level);
      if (info.width * info.height > 12000000)
        continue;
      size_t size = (size_t)(info.width * info.height * 4);
      uint8_t *plain = malloc(size), *cached = malloc(size);
      tessera_read_options o;
      tessera_read_options_init(&o);
      o.channels = 4;
      configure(TESSERA_CACHE_NONE, 0, 0, 0);
      CHECK(tessera_read_level(s, level, &o, plain, size) == TESSERA_OK, "%s", e->d_name);
      /* a tenth of it, what the ghost remembers, holds the level */
      configure(TESSERA_CACHE_PER_PROCESS, 1024, 0, 1);
      for (int pass = 0; pass < 3; pass++) {
        o.num_workers = pass ? 3 : 0;
        memset(cached, 0x5A, size);
        CHECK(tessera_read_level(s, level, &o, cached, size) == TESSERA_OK, "%s", e->d_name);
        CHECK(memcmp(plain, cached, size) == 0, "%s level %d pass %d: cached read differs",
              e->d_name, level, pass);
      }
      tessera_cache_stats t = stats();
      CHECK(t.misses > 0 && t.hits == 2 * t.misses, "%s level %d: %llu hits, %llu misses", e->d_name,
            level, (unsigned long long)t.hits, (unsigned long long)t.misses);
      free(plain);
      free(cached);
    }
    tessera_close(s);
  }
  if (d)
    closedir(d);
}

struct hammer {
  tessera_slide *s;
  unsigned long long seed;
  int failures;
  atomic_int *stop;
};

/* Random regions and batch streams through the cache, each compared with a read of the
 * level made without it. */
static const uint8_t *reference;
static tessera_level_info reference_info;

static int compare_with_reference(const uint8_t *got, int64_t lx, int64_t ly, int64_t w,
                                  int64_t h) {
  for (int64_t y = 0; y < h; y++) {
    for (int64_t x = 0; x < w; x++) {
      int64_t rx = lx + x, ry = ly + y;
      const uint8_t *g = got + (size_t)(y * w + x) * 3;
      if (rx < 0 || ry < 0 || rx >= reference_info.width || ry >= reference_info.height)
        continue;
      if (memcmp(g, reference + (size_t)(ry * reference_info.width + rx) * 3, 3) != 0)
        return 1;
    }
  }
  return 0;
}

static void *hammer_thread(void *arg) {
  struct hammer *h = arg;
  for (int i = 0; i < 60; i++) {
    int64_t w = 1 + (int64_t)(test_rand(&h->seed) % 400),
            hh = 1 + (int64_t)(test_rand(&h->seed) % 400);
    int64_t x = (int64_t)(test_rand(&h->seed) % (uint64_t)(reference_info.width + 100)) - 50;
    int64_t y = (int64_t)(test_rand(&h->seed) % (uint64_t)(reference_info.height + 100)) - 50;
    for (int k = 0; k < 2; k++) { /* the second time, some of its tiles are cached */
      uint8_t *got = read_patch(h->s, x, y, 0, w, hh, 3);
      h->failures += compare_with_reference(got, x, y, w, hh);
      free(got);
    }
  }
  int64_t xy[64];
  for (int i = 0; i < 32; i++) {
    xy[2 * i] = (int64_t)(test_rand(&h->seed) % (uint64_t)reference_info.width);
    xy[2 * i + 1] = (int64_t)(test_rand(&h->seed) % (uint64_t)reference_info.height);
  }
  tessera_batch_options o;
  tessera_batch_options_init(&o);
  o.batch_size = 4;
  o.num_workers = 2;
  tessera_batch_iter *it = NULL;
  if (tessera_batch_iter_create(h->s, xy, 32, 200, 200, 0, &o, &it) == TESSERA_OK) {
    for (tessera_batch *b; tessera_batch_iter_next(it, &b) == TESSERA_OK && b;) {
      for (size_t p = 0; p < b->count; p++)
        h->failures += compare_with_reference(b->data + p * 200 * 200 * 3, xy[2 * b->indices[p]],
                                              xy[2 * b->indices[p] + 1], 200, 200);
      tessera_batch_release(b);
    }
  }
  tessera_batch_iter_destroy(it);
  return NULL;
}

static void *monitor_thread(void *arg) {
  struct hammer *h = arg;
  while (!atomic_load(h->stop)) {
    tessera_cache_stats t = {.struct_size = sizeof t};
    if (tessera_cache_stats_get(&t) != TESSERA_OK)
      h->failures++;
    if (t.bytes > t.memory_capacity || (t.item_capacity && t.items > t.item_capacity))
      h->failures++;
  }
  return NULL;
}

/* Four threads read at random through a cache far smaller than the slide (bytes, then items
 * limited, then 16 MiB: tiles in chunks, their slots reused) while a fifth checks the budgets
 * all along. */
static void test_budgets_under_load(const char *dir) {
  tessera_slide *s = open_testdata(dir, "aperio-jpeg-CMU-1-Small-Region.svs");
  if (!s)
    return;
  reference_info = level_info(s, 0);
  size_t size = (size_t)(reference_info.width * reference_info.height * 3);
  uint8_t *ref = malloc(size);
  configure(TESSERA_CACHE_NONE, 0, 0, 0);
  CHECK(tessera_read_level(s, 0, NULL, ref, size) == TESSERA_OK, "reference read");
  reference = ref;
  for (int round = 0; round < 3; round++) {
    configure(TESSERA_CACHE_PER_PROCESS, round == 2 ? 16 : 2, round == 1 ? 5 : 0, 1);
    atomic_int stop = 0;
    struct hammer hs[5];
    pthread_t t[5];
    for (int i = 0; i < 5; i++) {
      hs[i] = (struct hammer){s, 100u + (unsigned)i + 10u * (unsigned)round, 0, &stop};
      pthread_create(&t[i], NULL, i < 4 ? hammer_thread : monitor_thread, &hs[i]);
    }
    int failures = 0;
    for (int i = 0; i < 4; i++) {
      pthread_join(t[i], NULL);
      failures += hs[i].failures;
    }
    atomic_store(&stop, 1);
    pthread_join(t[4], NULL);
    CHECK(failures == 0, "round %d: %d reads through the cache differ", round, failures);
    CHECK(hs[4].failures == 0, "round %d: the budget was exceeded %d times", round, hs[4].failures);
    tessera_cache_stats st = stats();
    CHECK(st.evictions > 0 && st.bytes <= st.memory_capacity, "round %d: no evictions", round);
  }
  configure(TESSERA_CACHE_NONE, 0, 0, 0);
  free(ref);
  tessera_close(s);
}

/* A hot set, each tile read three times in a row (missed, cached, hit), then a scan of every
 * other tile: read once, the scan is not admitted and evicts nothing; each tile read twice in
 * a row, it is cached, far more than fits (in a per-process cache, more than it holds: once
 * the ghost's window is measured narrow and 64 tiles are loaded without a hit, never read
 * again, its admissions are thinned, see test_admission_yield), and passes through
 * S3-FIFO's small queue. The hot set hits after both. Both kinds of cache, which evict
 * through the one policy. */
static void test_hot_set_survives_scan(const char *dir, tessera_cache_type type) {
  tessera_slide *s = open_testdata(dir, "aperio-jpeg-CMU-1-Small-Region.svs");
  if (!s)
    return;
  tessera_level_info info = level_info(s, 0);
  int64_t tw = info.tile_width, th = info.tile_height;
  int64_t across = (info.width + tw - 1) / tw, down = (info.height + th - 1) / th;
  uint64_t tile_bytes = (uint64_t)(tw * th * 3);
  /* Room for about a fifth of the tiles. */
  uint64_t mib = ((uint64_t)(across * down) * tile_bytes / 5 >> 20) + 1;
  configure(type, mib, 0, 1);
  enum { HOT = 4 };
  for (int i = 0; i < HOT; i++)
    for (int k = 0; k < 3; k++)
      free(read_patch(s, i * tw, 0, 0, 1, 1, 3));
  for (int twice = 0; twice < 2; twice++) {
    for (int64_t ty = 1; ty < down; ty++)
      for (int64_t tx = 0; tx < across; tx++)
        for (int k = 0; k <= twice; k++)
          free(read_patch(s, tx * tw, ty * th, 0, 1, 1, 3));
    tessera_cache_stats before = stats();
    if (!twice)
      CHECK(before.evictions == 0 && before.items == HOT,
            "a scan read once: %llu evictions, %llu items", (unsigned long long)before.evictions,
            (unsigned long long)before.items);
    else /* thinned in a per-process cache, not in a shared one */
      CHECK(before.evictions > (uint64_t)(across * (type == TESSERA_CACHE_SHARED_MEMORY
                                                        ? (down - 1) / 2
                                                        : down / 5)),
            "cache type %d: the scan evicted too little (%llu)", (int)type,
            (unsigned long long)before.evictions);
    for (int i = 0; i < HOT; i++)
      free(read_patch(s, i * tw, 0, 0, 1, 1, 3));
    tessera_cache_stats after = stats();
    CHECK(after.hits - before.hits == HOT && after.misses == before.misses,
          "cache type %d: hot set after the scan (read %d times): %llu hits, %llu misses",
          (int)type, twice + 1, (unsigned long long)(after.hits - before.hits),
          (unsigned long long)(after.misses - before.misses));
  }
  configure(TESSERA_CACHE_NONE, 0, 0, 0);
  tessera_close(s);
}

struct racer {
  tessera_slide *s;
  pthread_barrier_t *start;
  uint8_t *out;
};

static void *racer_thread(void *arg) {
  struct racer *r = arg;
  pthread_barrier_wait(r->start);
  r->out = read_patch(r->s, 3, 3, 0, 50, 50, 3);
  return NULL;
}

/* Threads missing the same admitted tile together decode it once: one miss, the rest hits.
 * The tile is read once first, so that the ghost admits it (two misses in all). The slide is
 * opened again each round: with the misses of earlier rounds all on that tile, its level's
 * region would admit it at its first miss. */
static void test_single_flight(const char *dir) {
  enum { N = 6 };
  for (int round = 0; round < 20; round++) {
    tessera_slide *s = open_testdata(dir, "generic-jpeg-ycbcr-128tiles.tiff");
    if (!s)
      return;
    configure(TESSERA_CACHE_PER_PROCESS, 1, 0, 1); /* the level is not within a tenth */
    free(read_patch(s, 3, 3, 0, 50, 50, 3));
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, N);
    struct racer rs[N];
    pthread_t t[N];
    uint64_t reads = tsr_tile_reads();
    for (int i = 0; i < N; i++) {
      rs[i] = (struct racer){s, &start, NULL};
      pthread_create(&t[i], NULL, racer_thread, &rs[i]);
    }
    for (int i = 0; i < N; i++)
      pthread_join(t[i], NULL);
    pthread_barrier_destroy(&start);
    tessera_cache_stats st = stats();
    CHECK(tsr_tile_reads() - reads == 1 && st.misses == 2 && st.hits == N - 1,
          "round %d: %llu tile reads, %llu misses, %llu hits", round,
          (unsigned long long)(tsr_tile_reads() - reads), (unsigned long long)st.misses,
          (unsigned long long)st.hits);
    for (int i = 1; i < N; i++)
      CHECK(memcmp(rs[0].out, rs[i].out, 50 * 50 * 3) == 0, "racers disagree");
    for (int i = 0; i < N; i++)
      free(rs[i].out);
    tessera_close(s);
  }
  configure(TESSERA_CACHE_NONE, 0, 0, 0);
}

/* Tile 0 of two files, and tile 0 of three levels, are four different tiles (the second
 * file's reads are its whole 1024 x 1024 tile 0 at each level). */
static void test_no_collisions(const char *dir) {
  tessera_slide *a = open_testdata(dir, "generic-jpeg-ycbcr-128tiles.tiff");
  tessera_slide *b = open_testdata(dir, "generic-zstd-1024tiles-pyramid.tiff");
  if (!a || !b)
    return;
  enum { T = 1024 };
  uint8_t *want[4];
  configure(TESSERA_CACHE_NONE, 0, 0, 0);
  want[0] = read_patch(a, 0, 0, 0, 64, 64, 3);
  for (int l = 0; l < 3; l++)
    want[1 + l] = read_patch(b, 0, 0, l, T, T, 3);
  CHECK(memcmp(want[1], want[2], T * T * 3) != 0 && memcmp(want[2], want[3], T * T * 3) != 0,
        "levels alike there: a useless test");
  configure(TESSERA_CACHE_PER_PROCESS, 256, 0, 1); /* the ghost remembers a pass: 25.6 MiB */
  for (int pass = 0; pass < 3; pass++) {
    uint8_t *got[4] = {read_patch(a, 0, 0, 0, 64, 64, 3), read_patch(b, 900, 900, 0, 64, 64, 3),
                       read_patch(b, 1800, 1800, 1, 64, 64, 3),
                       read_patch(b, 3600, 3600, 2, 64, 64, 3)};
    for (int i = 0; i < 4; i++) {
      CHECK(memcmp(got[i], want[i], 64 * 64 * 3) == 0, "pass %d read %d took another tile", pass,
            i);
      free(got[i]);
    }
  }
  tessera_cache_stats st = stats();
  /* a's level (590 KB) and b's level 2 (19 MB) are within a tenth of the cache: cached at their
   * first miss, then hit twice; b's levels 0 and 1 missed twice (the second time cached), then
   * hit */
  CHECK(st.items == 4 && st.misses == 6 && st.hits == 6, "items %llu misses %llu hits %llu",
        (unsigned long long)st.items, (unsigned long long)st.misses, (unsigned long long)st.hits);
  /* With room for one tile, each tile admitted evicts the one before it: the reads of each after
   * it was cached hit the tile just cached, never the one before. The 64 x 64 corner is cached
   * at its second miss (one hit), each whole 1024 x 1024 tile of b at its first (two). */
  configure(TESSERA_CACHE_PER_PROCESS, 64, 1, 1);
  for (int i = 0; i < 4; i++) {
    for (int k = 0; k < 3; k++) {
      uint8_t *got = i ? read_patch(b, 0, 0, i - 1, T, T, 3) : read_patch(a, 0, 0, 0, 64, 64, 3);
      CHECK(memcmp(got, want[i], i ? T * T * 3 : 64 * 64 * 3) == 0,
            "one-tile cache: read %d took another tile", i);
      free(got);
    }
  }
  st = stats();
  CHECK(st.items == 1 && st.evictions == 3 && st.hits == 7,
        "one-tile cache: items %llu evictions %llu hits %llu", (unsigned long long)st.items,
        (unsigned long long)st.evictions, (unsigned long long)st.hits);
  configure(TESSERA_CACHE_NONE, 0, 0, 0);
  for (int i = 0; i < 4; i++)
    free(want[i]);
  tessera_close(a);
  tessera_close(b);
}

/* A forked child gets a per-process cache of its own: empty, made the same way, working. It
 * takes over the parent's ghost, so the tiles the parent had cached (read twice there) are
 * admitted at the child's first miss. */
static void test_fork(const char *dir) {
  tessera_slide *s = open_testdata(dir, "generic-jpeg-ycbcr-128tiles.tiff");
  if (!s)
    return;
  configure(TESSERA_CACHE_PER_PROCESS, 32, 0, 1);
  free(read_patch(s, 0, 0, 0, 300, 300, 3));
  uint8_t *want = read_patch(s, 0, 0, 0, 300, 300, 3);
  pid_t pid = fork();
  if (pid == 0) {
    alarm(20);
    tessera_cache_stats t = stats();
    int ok = t.type == TESSERA_CACHE_PER_PROCESS && t.items == 0 && t.hits == 0 &&
             t.memory_capacity == (uint64_t)32 << 20;
    for (int pass = 0; pass < 2; pass++) {
      uint8_t *got = read_patch(s, 0, 0, 0, 300, 300, 3);
      ok = ok && memcmp(got, want, 300 * 300 * 3) == 0;
      free(got);
    }
    t = stats();
    ok = ok && t.misses == 9 && t.hits == 9;
    _exit(ok ? 0 : 1);
  }
  int status = 0;
  CHECK(pid > 0 && waitpid(pid, &status, 0) == pid, "fork/wait failed");
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child's cache failed (status %d)",
        status);
  tessera_cache_stats t = stats();
  CHECK(t.items == 9, "the parent's cache changed: %llu items", (unsigned long long)t.items);
  configure(TESSERA_CACHE_NONE, 0, 0, 0);
  free(want);
  tessera_close(s);
}

struct reader_loop {
  tessera_slide *s;
  atomic_int *stop;
  unsigned long long seed;
};

static void *reader_loop_thread(void *arg) {
  struct reader_loop *r = arg;
  while (!atomic_load(r->stop)) {
    int64_t x = (int64_t)(test_rand(&r->seed) % 1800), y = (int64_t)(test_rand(&r->seed) % 2500);
    free(read_patch(r->s, x, y, 0, 400, 400, 3));
  }
  return NULL;
}

/* Reconfiguring the cache and forking must not wait for reads to pause: with three threads
 * reading back to back, each returns promptly (a watchdog turns a hang into a failure). */
static void test_configure_and_fork_during_reads(const char *dir) {
  tessera_slide *s = open_testdata(dir, "aperio-jpeg-CMU-1-Small-Region.svs");
  if (!s)
    return;
  configure(TESSERA_CACHE_PER_PROCESS, 2, 0, 1);
  atomic_int stop = 0;
  struct reader_loop rs[3];
  pthread_t t[3];
  for (int i = 0; i < 3; i++) {
    rs[i] = (struct reader_loop){s, &stop, 50u + (unsigned)i};
    pthread_create(&t[i], NULL, reader_loop_thread, &rs[i]);
  }
  alarm(60);
  for (int i = 0; i < 10; i++) {
    configure(TESSERA_CACHE_PER_PROCESS, 2 + (uint64_t)(i % 3), 0, 1);
    pid_t pid = fork();
    if (pid == 0)
      _exit(0);
    int status = 0;
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status), "fork %d", i);
  }
  alarm(0);
  atomic_store(&stop, 1);
  for (int i = 0; i < 3; i++)
    pthread_join(t[i], NULL);
  configure(TESSERA_CACHE_NONE, 0, 0, 0);
  tessera_close(s);
}

/* Resident memory of this process in bytes, after giving free heap memory back, so that what
 * is allocated next shows as growth. */
static uint64_t resident_bytes(void) {
  malloc_trim(0);
  unsigned long pages = 0, resident = 0;
  FILE *f = fopen("/proc/self/statm", "r");
  CHECK(f && fscanf(f, "%lu %lu", &pages, &resident) == 2, "no /proc/self/statm");
  if (f)
    fclose(f);
  return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* A 4096 x 4096 grey image in 16 x 16 uncompressed tiles (65536 of 256 bytes): the tiles a
 * cache counts least and holds most of. */
static bool write_small_tiles(const char *path) {
  TIFF *t = TIFFOpen(path, "w8");
  if (!t)
    return false;
  enum { SIDE = 4096, TILE = 16 };
  TIFFSetField(t, TIFFTAG_IMAGEWIDTH, SIDE);
  TIFFSetField(t, TIFFTAG_IMAGELENGTH, SIDE);
  TIFFSetField(t, TIFFTAG_TILEWIDTH, TILE);
  TIFFSetField(t, TIFFTAG_TILELENGTH, TILE);
  TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, 8);
  TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, 1);
  TIFFSetField(t, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_MINISBLACK);
  TIFFSetField(t, TIFFTAG_COMPRESSION, COMPRESSION_NONE);
  TIFFSetField(t, TIFFTAG_PLANARCONFIG, PLANARCONFIG_CONTIG);
  uint8_t tile[TILE * TILE];
  bool ok = true;
  for (uint32_t y = 0; ok && y < SIDE; y += TILE) {
    for (uint32_t x = 0; ok && x < SIDE; x += TILE) {
      for (int i = 0; i < TILE * TILE; i++)
        tile[i] = (uint8_t)((x + (unsigned)i % TILE) * 7 + (y + (unsigned)i / TILE) * 13);
      ok = TIFFWriteTile(t, tile, x, y, 0, 0) >= 0;
    }
  }
  TIFFClose(t);
  return ok;
}

/* Reads the whole level in bands of 16 rows, each `times` times in a row, checking the byte
 * budget after each band. */
static void read_small_tiles(tessera_slide *s, int times, uint8_t *buf) {
  tessera_read_options o;
  tessera_read_options_init(&o);
  for (int64_t y = 0; y < 4096; y += 16) {
    for (int k = 0; k < times; k++)
      CHECK(tessera_read_region(s, 0, y, 0, 4096, 16, &o, buf, 4096 * 16 * 3) == TESSERA_OK,
            "read: %s", tessera_error_message());
    tessera_cache_stats t = stats();
    CHECK(t.bytes <= t.memory_capacity, "%llu bytes counted over a capacity of %llu",
          (unsigned long long)t.bytes, (unsigned long long)t.memory_capacity);
  }
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define MEASURES_RESIDENT 0 /* the sanitizers' allocators keep freed memory, and shadow it */
#else
#define MEASURES_RESIDENT 1
#endif

/* With 16 x 16 tiles: the bytes a cache reports are what the process spends on it (within a
 * quarter either way), never above its capacity, and the process stays within it when the
 * tiles far outnumber what fits; lookups compare about one entry each, however many entries
 * there are. */
static void test_small_tiles(void) {
  char path[] = "/tmp/tessera-test-small-tiles-XXXXXX";
  int fd = mkstemp(path);
  CHECK(fd >= 0, "mkstemp");
  if (fd < 0)
    return;
  close(fd);
  tessera_slide *s = NULL;
  if (!write_small_tiles(path) || tessera_open(path, &s) != TESSERA_OK) {
    CHECK(0, "writing or opening %s: %s", path, tessera_error_message());
    unlink(path);
    return;
  }
  uint8_t *buf = malloc(4096 * 16 * 3);
  /* 8 MiB, about a third of the tiles: each band read twice, so that it is admitted. */
  uint64_t before = resident_bytes();
  configure(TESSERA_CACHE_PER_PROCESS, 8, 0, 1);
  read_small_tiles(s, 2, buf);
  uint64_t grown = resident_bytes() - before;
  tessera_cache_stats t = stats();
  CHECK(t.evictions > 0, "nothing evicted");
  if (MEASURES_RESIDENT)
    CHECK(grown <= t.memory_capacity + t.memory_capacity / 4,
          "an 8 MiB cache grew the process by %.1f MiB", grown / 1048576.0);
  /* 64 MiB: every tile fits. */
  configure(TESSERA_CACHE_NONE, 0, 0, 0);
  before = resident_bytes();
  configure(TESSERA_CACHE_PER_PROCESS, 64, 0, 1);
  read_small_tiles(s, 2, buf);
  t = stats();
  grown = resident_bytes() - before;
  CHECK(t.items == 65536 && t.evictions == 0, "%llu of 65536 tiles held, %llu evictions",
        (unsigned long long)t.items, (unsigned long long)t.evictions);
  if (MEASURES_RESIDENT)
    CHECK(t.bytes * 4 >= grown * 3 && t.bytes * 3 <= grown * 4,
          "%.1f MiB counted, the process grew by %.1f MiB", t.bytes / 1048576.0, grown / 1048576.0);
  struct tsr_cache *c = tsr_cache_acquire();
  uint64_t finds0, steps0, finds, steps;
  uint64_t hits = stats().hits;
  tsr_process_cache_lookup_work(c, &finds0, &steps0);
  read_small_tiles(s, 1, buf);
  tsr_process_cache_lookup_work(c, &finds, &steps);
  tsr_cache_release(c);
  CHECK(stats().hits - hits == 65536, "a third pass did not hit every tile");
  CHECK(finds - finds0 == 65536 && steps - steps0 <= 2 * (finds - finds0),
        "%llu lookups compared %llu entries", (unsigned long long)(finds - finds0),
        (unsigned long long)(steps - steps0));
  configure(TESSERA_CACHE_NONE, 0, 0, 0);
  free(buf);
  tessera_close(s);
  unlink(path);
}

/* Tiles of 64 KiB and more (the Aperio slide's 240 x 240, 173 KB) share 2 MiB chunks in a
 * cache of 16 MiB or more, a slot freed by an eviction taken by the next tile: the whole level
 * (130 tiles, 22 MB) read three times through a 16 MiB cache (about 95 fit), then regions at
 * random, each equal to the reference read without a cache, with evictions; the bytes counted
 * never exceed the capacity, each tile is counted at least its pixels and at most its share
 * of a chunk and its bookkeeping, and the process grows by what is counted plus at most one
 * chunk's free slots (the slots are reused, not mapped anew). */
static void test_chunked_tiles(const char *dir) {
  tessera_slide *s = open_testdata(dir, "aperio-jpeg-CMU-1-Small-Region.svs");
  if (!s)
    return;
  tessera_level_info info = level_info(s, 0);
  size_t size = (size_t)(info.width * info.height * 3);
  uint64_t tile_bytes = (uint64_t)(info.tile_width * info.tile_height * 3);
  CHECK(tile_bytes >= (64 << 10) && tile_bytes <= (1 << 20), "tiles of %llu bytes",
        (unsigned long long)tile_bytes);
  uint8_t *ref = malloc(size), *got = malloc(size);
  configure(TESSERA_CACHE_NONE, 0, 0, 0);
  CHECK(ref && got && tessera_read_level(s, 0, NULL, ref, size) == TESSERA_OK, "reference read");
  memset(got, 0, size); /* its pages resident before the growth is measured */
  uint64_t before = resident_bytes();
  configure(TESSERA_CACHE_PER_PROCESS, 16, 0, 1);
  for (int k = 0; k < 3; k++) {
    memset(got, 0, size);
    CHECK(tessera_read_level(s, 0, NULL, got, size) == TESSERA_OK, "read %d", k);
    CHECK(memcmp(got, ref, size) == 0, "level read %d through the cache differs", k);
    tessera_cache_stats t = stats();
    CHECK(t.bytes <= t.memory_capacity && t.items > 0, "read %d: %llu bytes, %llu items", k,
          (unsigned long long)t.bytes, (unsigned long long)t.items);
  }
  unsigned long long seed = 7;
  for (int i = 0; i < 200; i++) {
    int64_t w = 1 + (int64_t)(test_rand(&seed) % 600), h = 1 + (int64_t)(test_rand(&seed) % 600);
    int64_t x = (int64_t)(test_rand(&seed) % (uint64_t)info.width) - 100;
    int64_t y = (int64_t)(test_rand(&seed) % (uint64_t)info.height) - 100;
    uint8_t *p = read_patch(s, x, y, 0, w, h, 3);
    bool same = true;
    for (int64_t r = 0; r < h && same; r++) {
      for (int64_t c = 0; c < w && same; c++) {
        int64_t rx = x + c, ry = y + r;
        if (rx >= 0 && ry >= 0 && rx < info.width && ry < info.height)
          same = memcmp(p + (size_t)(r * w + c) * 3, ref + (size_t)(ry * info.width + rx) * 3,
                        3) == 0;
      }
    }
    free(p);
    CHECK(same, "region %d (%lld, %lld, %lld x %lld) through the cache differs", i, (long long)x,
          (long long)y, (long long)w, (long long)h);
  }
  tessera_cache_stats t = stats();
  CHECK(t.evictions > 0 && t.bytes <= t.memory_capacity, "%llu evictions, %llu bytes",
        (unsigned long long)t.evictions, (unsigned long long)t.bytes);
  uint64_t per_tile = t.items ? t.bytes / t.items : 0;
  CHECK(per_tile >= tile_bytes && per_tile <= tile_bytes + tile_bytes / 8,
        "a %llu-byte tile is counted as %llu bytes", (unsigned long long)tile_bytes,
        (unsigned long long)per_tile);
  if (MEASURES_RESIDENT) {
    uint64_t grown = resident_bytes() - before, chunk = (uint64_t)2 << 20;
    CHECK(grown <= t.bytes + chunk + (4 << 20), "%.1f MiB counted, the process grew by %.1f MiB",
          t.bytes / 1048576.0, grown / 1048576.0);
  }
  configure(TESSERA_CACHE_NONE, 0, 0, 0);
  free(ref);
  free(got);
  tessera_close(s);
}

/* Threads of this process named `name` (/proc/self/task/<tid>/comm). */
static int threads_named(const char *name) {
  int n = 0;
  DIR *d = opendir("/proc/self/task");
  struct dirent *de;
  while (d && (de = readdir(d)) != NULL) {
    if (de->d_name[0] == '.')
      continue;
    char path[300], comm[64] = "";
    snprintf(path, sizeof path, "/proc/self/task/%s/comm", de->d_name);
    FILE *f = fopen(path, "r");
    if (f && fgets(comm, sizeof comm, f)) {
      comm[strcspn(comm, "\n")] = '\0';
      n += strcmp(comm, name) == 0;
    }
    if (f)
      fclose(f);
  }
  if (d)
    closedir(d);
  return n;
}

/* The pool's state once its prefault thread has nothing left to do. */
static struct tsr_process_cache_pool pool_state(void) {
  struct tsr_process_cache_pool p = {0};
  struct tsr_cache *c = tsr_cache_acquire();
  CHECK(c != NULL, "no cache");
  if (c) {
    tsr_process_cache_pool_state(c, &p, true);
    tsr_cache_release(c);
  }
  return p;
}

/* The chunk pool's prefault thread: it starts with the first chunk, prepares chunks that
 * readers then take (the pixels the same), never takes the cache past its capacity (what the
 * shards count, the chunks' free slots and its spares: a 16 MiB cache read through three times
 * over by a 22 MB level; before the bound it kept 4 MiB of spares there), and stops when the
 * cache is closed. */
static void test_prefault(const char *dir) {
  tessera_slide *s = open_testdata(dir, "aperio-jpeg-CMU-1-Small-Region.svs");
  if (!s)
    return;
  tessera_level_info info = level_info(s, 0);
  size_t size = (size_t)(info.width * info.height * 3);
  uint8_t *ref = malloc(size), *got = malloc(size);
  configure(TESSERA_CACHE_NONE, 0, 0, 0);
  CHECK(ref && got && tessera_read_level(s, 0, NULL, ref, size) == TESSERA_OK, "reference read");
  CHECK(threads_named("tsr-prefault") == 0, "a prefault thread without a cache");
  configure(TESSERA_CACHE_PER_PROCESS, 64, 0, 1);
  /* The top half of the level, then the rest once spares are ready. */
  int64_t half = info.height / 2;
  uint8_t *top = read_patch(s, 0, 0, 0, info.width, half, 3);
  CHECK(memcmp(top, ref, (size_t)(info.width * half * 3)) == 0, "top half differs");
  free(top);
  struct tsr_process_cache_pool p = pool_state();
  tessera_cache_stats t = stats();
  CHECK(p.thread && threads_named("tsr-prefault") == 1, "thread %d, %d named", p.thread,
        threads_named("tsr-prefault"));
  CHECK(p.prepared >= 1 && p.spare > 0, "%llu chunks prepared, %llu bytes spare",
        (unsigned long long)p.prepared, (unsigned long long)p.spare);
  CHECK(t.bytes + p.unused + p.spare <= t.memory_capacity, "64 MiB: %llu + %llu + %llu bytes",
        (unsigned long long)t.bytes, (unsigned long long)p.unused, (unsigned long long)p.spare);
  memset(got, 0, size);
  CHECK(tessera_read_level(s, 0, NULL, got, size) == TESSERA_OK, "level read");
  CHECK(memcmp(got, ref, size) == 0, "level read through prefaulted chunks differs");
  p = pool_state();
  CHECK(p.taken >= 1, "no prefaulted chunk taken (%llu prepared)", (unsigned long long)p.prepared);
  /* 16 MiB, the level read three times: full, evicting. */
  configure(TESSERA_CACHE_PER_PROCESS, 16, 0, 1);
  for (int k = 0; k < 3; k++) {
    memset(got, 0, size);
    CHECK(tessera_read_level(s, 0, NULL, got, size) == TESSERA_OK, "read %d", k);
    CHECK(memcmp(got, ref, size) == 0, "16 MiB: read %d differs", k);
    p = pool_state();
    t = stats();
    CHECK(p.spare == 0 || t.bytes + p.unused + p.spare <= t.memory_capacity,
          "16 MiB, read %d: %llu counted + %llu free in chunks + %llu spare", k,
          (unsigned long long)t.bytes, (unsigned long long)p.unused,
          (unsigned long long)p.spare);
    CHECK(p.mapped + p.spare <= t.memory_capacity + ((uint64_t)2 << 20),
          "16 MiB, read %d: %llu bytes of chunks, %llu spare", k, (unsigned long long)p.mapped,
          (unsigned long long)p.spare);
  }
  CHECK(t.evictions > 0, "the 16 MiB cache never filled");
  configure(TESSERA_CACHE_NONE, 0, 0, 0);
  CHECK(threads_named("tsr-prefault") == 0, "the prefault thread outlived its cache");
  free(ref);
  free(got);
  tessera_close(s);
}

/* tessera_cache_reserve grows a per-process cache in place: the tiles it held stay (hits after
 * the call, no decode), the statistics go on, and the larger budget takes a tile the smaller
 * one could not (a whole 1024 x 1024 tile of the zstd pyramid, 3 MB, in a 1 MiB cache); it
 * never shrinks, keeps "no item limit", and is refused for a shared-memory cache. */
static void test_reserve(const char *dir) {
  tessera_slide *a = open_testdata(dir, "generic-jpeg-ycbcr-128tiles.tiff");
  tessera_slide *b = open_testdata(dir, "generic-zstd-1024tiles-pyramid.tiff");
  if (!a || !b)
    return;
  enum { T = 1024 };
  CHECK(tessera_cache_reserve(64, 0) == TESSERA_OK && stats().type == TESSERA_CACHE_NONE,
        "reserve without a cache made one");
  configure(TESSERA_CACHE_PER_PROCESS, 1, 0, 1);
  free(read_patch(a, 3, 3, 0, 50, 50, 3));
  free(read_patch(a, 3, 3, 0, 50, 50, 3)); /* missed twice: cached */
  free(read_patch(b, 0, 0, 0, T, T, 3));   /* too large for 1 MiB */
  tessera_cache_stats st = stats();
  CHECK(st.items == 1 && st.misses == 3 && st.hits == 0, "before: %llu items, %llu misses",
        (unsigned long long)st.items, (unsigned long long)st.misses);
  uint64_t reads = tsr_tile_reads();
  CHECK(tessera_cache_reserve(16, 0) == TESSERA_OK, "reserve: %s", tessera_error_message());
  st = stats();
  CHECK(st.memory_capacity == (uint64_t)16 << 20 && st.item_capacity == 0 && st.items == 1 &&
            st.misses == 3,
        "after reserve: %llu bytes capacity, %llu item capacity, %llu items, %llu misses",
        (unsigned long long)st.memory_capacity, (unsigned long long)st.item_capacity,
        (unsigned long long)st.items, (unsigned long long)st.misses);
  free(read_patch(a, 3, 3, 0, 50, 50, 3));
  CHECK(stats().hits == 1 && tsr_tile_reads() == reads, "the tile held before was decoded again");
  free(read_patch(b, 0, 0, 0, T, T, 3));
  free(read_patch(b, 0, 0, 0, T, T, 3));
  st = stats();
  CHECK(st.items == 2 && st.hits == 2 && tsr_tile_reads() == reads + 1,
        "a 3 MB tile in the grown cache: %llu items, %llu hits, %llu decodes",
        (unsigned long long)st.items, (unsigned long long)st.hits,
        (unsigned long long)(tsr_tile_reads() - reads));
  CHECK(tessera_cache_reserve(2, 0) == TESSERA_OK && stats().memory_capacity == (uint64_t)16 << 20,
        "reserve shrank the cache");
  CHECK(tessera_cache_reserve((uint64_t)1 << 31, 0) == TESSERA_E_ARGUMENT, "2^31 MiB accepted");

  configure(TESSERA_CACHE_PER_PROCESS, 8, 40, 1);
  CHECK(tessera_cache_reserve(8, 100) == TESSERA_OK && stats().item_capacity == 100 &&
            stats().memory_capacity == (uint64_t)8 << 20,
        "the item capacity did not grow alone");
  configure(TESSERA_CACHE_SHARED_MEMORY, 8, 0, 1);
  CHECK(tessera_cache_reserve(16, 0) == TESSERA_E_UNSUPPORTED &&
            strstr(tessera_error_message(), "shared-memory") &&
            stats().memory_capacity == (uint64_t)8 << 20,
        "a shared-memory cache grew or failed otherwise: %s", tessera_error_message());
  configure(TESSERA_CACHE_NONE, 0, 0, 0);
  tessera_close(a);
  tessera_close(b);
}

static void test_arguments(void) {
  tessera_cache_options o;
  tessera_cache_options_init(&o);
  CHECK(o.type == TESSERA_CACHE_NONE && o.memory_capacity_mib == 1024 && !o.record_stats,
        "defaults");
  o.type = TESSERA_CACHE_PER_PROCESS;
  o.memory_capacity_mib = 0;
  CHECK(tessera_cache_configure(&o) == TESSERA_E_ARGUMENT, "0 MiB accepted");
  o.type = (tessera_cache_type)7;
  o.memory_capacity_mib = 8;
  CHECK(tessera_cache_configure(&o) == TESSERA_E_ARGUMENT, "type 7 accepted");
  CHECK(tessera_cache_configure(NULL) == TESSERA_E_ARGUMENT, "NULL accepted");
  tessera_cache_stats t = {.struct_size = 0};
  CHECK(tessera_cache_stats_get(&t) == TESSERA_E_ARGUMENT, "stats without struct_size");
}

int main(int argc, char **argv) {
  const char *dir = testdata_dir(argc, argv);
  test_arguments();
  test_small_tiles();
  test_chunked_tiles(dir);
  test_prefault(dir);
  test_exact_stats(dir);
  test_admission(dir);
  test_admission_covers(dir);
  test_admission_yield(dir);
  test_admission_rounds(dir);
  test_admission_window(dir);
  test_admission_level(dir);
  test_admission_region(dir);
  test_reserve(dir);
  test_same_pixels(dir);
  test_budgets_under_load(dir);
  test_hot_set_survives_scan(dir, TESSERA_CACHE_PER_PROCESS);
  test_hot_set_survives_scan(dir, TESSERA_CACHE_SHARED_MEMORY);
  test_single_flight(dir);
  test_no_collisions(dir);
  test_fork(dir);
  test_configure_and_fork_during_reads(dir);
  return check_finish("test_cache");
}
