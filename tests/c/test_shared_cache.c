/* The shared-memory tile cache across processes: forked children, each with several threads,
 * read random regions and batch streams through one segment (too small for the slide, limited
 * in items, and big enough for all of it); every patch equals a read made without a cache,
 * and the budgets hold all along. With room for everything, each tile touched is decoded
 * once by all the processes together (once each process's ghost knows the tiles, so that the
 * cache admits them at their first miss). A child killed (SIGKILL) while it holds a shard's lock
 * midway through publishing a tile (the test hook TESSERA_TEST_CACHE_STALL) leaves the cache
 * usable: the other processes, blocked or not, carry on with correct pixels. Hits paused in
 * the middle (the hook again) while the others evict and reuse their chunks find it out and
 * read again, and so do loads paused in their copies. One stopped (SIGSTOP) holding a lock,
 * or while loading a tile, costs the others a bounded wait; one stopped in the middle of a
 * hit holds no lock at all, and finds its tile overwritten when it goes on if the tile was
 * evicted meanwhile; one stopped in the middle of copying a tile into the cache holds no lock
 * either, and its chunks stay its own while others take its tile over, load and evict; one
 * that cannot lock the shard to publish gives its reservation up, to be freed. Segments go
 * away when their last user detaches. A segment open to others or of another user, a link,
 * a FIFO, a hidden name are refused; garbage written over a live index gives right pixels or
 * errors, never a crash, and so does an index word that changes between any two reads, or a
 * sealed size no tile can have; a maker killed halfway is replaced, one whose new segment
 * another process holds locked gives up in bounded time. Runs plain, under ASan+UBSan and
 * under TSan. One file, over 800 lines: its cases share the board, the forked readers and the
 * stopped children above. */
#include <errno.h>
#include <fcntl.h>
#include <linux/hw_breakpoint.h>
#include <linux/perf_event.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cache/cache.h"
#include "check.h"
#include "tessera.h"

enum { PROCESSES = 3, THREADS = 3, MAX_TILES = 4096, CHILD_ALARM_S = 400 };

static const char *slide_path;
static uint8_t *reference; /* level 0 read without a cache, RGB */
static tessera_level_info info;
static int64_t across, down;
static uint64_t tile_bytes;

/* Shared by the test's processes (an anonymous shared mapping made before the forks). */
struct board {
  atomic_uchar touched[MAX_TILES]; /* tiles some read looked up */
  atomic_int stop;                 /* the stalled child was killed: finish up */
  atomic_int warmed;               /* children that have read the level once */
  atomic_int go;                   /* the parent has reset the statistics after that */
  atomic_ulong overwritten;        /* hits the children found overwritten once read */
  atomic_int loaded;               /* the locked-out loader has read its tile (-1: wrong) */
};
static struct board *board;

static void configure(tessera_cache_type type, uint64_t mib, uint64_t items, const char *name) {
  tessera_cache_options o;
  tessera_cache_options_init(&o);
  o.type = type;
  o.memory_capacity_mib = mib;
  o.item_capacity = items;
  o.record_stats = 1;
  o.name = name;
  CHECK(tessera_cache_configure(&o) == TESSERA_OK, "configure: %s", tessera_error_message());
}

static tessera_cache_stats stats(void) {
  tessera_cache_stats t = {.struct_size = sizeof t};
  CHECK(tessera_cache_stats_get(&t) == TESSERA_OK, "stats: %s", tessera_error_message());
  return t;
}

static tessera_slide *open_slide(void) {
  tessera_slide *s = NULL;
  if (tessera_open(slide_path, &s) != TESSERA_OK) {
    CHECK(0, "%s: %s", slide_path, tessera_error_message());
    return NULL;
  }
  return s;
}

static int shm_exists(const char *name) {
  char path[512];
  snprintf(path, sizeof path, "/dev/shm/%s", name[0] == '/' ? name + 1 : name);
  return access(path, F_OK) == 0;
}

/* The name of this process's one unnamed segment ("/tessera-PID-N"), or "" if none. */
static void own_segment(char *out, size_t size) {
  char prefix[64];
  snprintf(prefix, sizeof prefix, "/tessera-%d-", (int)getpid());
  out[0] = 0;
  size_t count = 0;
  CHECK(tessera_shared_cache_list(NULL, 0, &count) == TESSERA_OK, "list: %s",
        tessera_error_message());
  size_t cap = count + 8, found = 0;
  tessera_shared_cache_info *v = calloc(cap, sizeof *v);
  for (size_t i = 0; i < cap; i++)
    v[i].struct_size = sizeof v[i];
  CHECK(tessera_shared_cache_list(v, cap, &count) == TESSERA_OK, "list: %s",
        tessera_error_message());
  for (size_t i = 0; i < count && i < cap; i++) {
    if (strncmp(v[i].name, prefix, strlen(prefix)) == 0) {
      snprintf(out, size, "%s", v[i].name);
      found++;
    }
  }
  CHECK(found == 1, "%zu segments named %s*", found, prefix);
  free(v);
}

static void mark(int64_t x, int64_t y, int64_t w, int64_t h) {
  int64_t x0 = x < 0 ? 0 : x, y0 = y < 0 ? 0 : y;
  int64_t x1 = x + w > info.width ? info.width : x + w;
  int64_t y1 = y + h > info.height ? info.height : y + h;
  if (x0 >= x1 || y0 >= y1)
    return;
  for (int64_t ty = y0 / info.tile_height; ty <= (y1 - 1) / info.tile_height; ty++)
    for (int64_t tx = x0 / info.tile_width; tx <= (x1 - 1) / info.tile_width; tx++)
      atomic_store(&board->touched[ty * across + tx], 1);
}

static uint64_t touched_count(void) {
  uint64_t n = 0;
  for (int64_t i = 0; i < across * down; i++)
    n += atomic_load(&board->touched[i]);
  return n;
}

/* Nonzero if the patch (RGB, w x h at x, y of level 0) differs from the reference. */
static int differs(const uint8_t *got, int64_t lx, int64_t ly, int64_t w, int64_t h) {
  for (int64_t y = 0; y < h; y++) {
    for (int64_t x = 0; x < w; x++) {
      int64_t rx = lx + x, ry = ly + y;
      if (rx < 0 || ry < 0 || rx >= info.width || ry >= info.height)
        continue;
      if (memcmp(got + (size_t)(y * w + x) * 3, reference + (size_t)(ry * info.width + rx) * 3,
                 3) != 0)
        return 1;
    }
  }
  return 0;
}

static int read_and_compare(tessera_slide *s, unsigned long long *seed) {
  int64_t w = 1 + (int64_t)(test_rand(seed) % 300), h = 1 + (int64_t)(test_rand(seed) % 300);
  int64_t x = (int64_t)(test_rand(seed) % (uint64_t)(info.width + 80)) - 40;
  int64_t y = (int64_t)(test_rand(seed) % (uint64_t)(info.height + 80)) - 40;
  size_t size = (size_t)(w * h * 3);
  uint8_t *buf = malloc(size);
  mark(x, y, w, h);
  int bad = 0;
  for (int k = 0; k < 2; k++) /* the second time, tiles just missed are cached */
    bad += tessera_read_region(s, x, y, 0, w, h, NULL, buf, size) != TESSERA_OK ||
           differs(buf, x, y, w, h);
  free(buf);
  return bad;
}

static int batches_and_compare(tessera_slide *s, unsigned long long *seed) {
  enum { N = 16, W = 160, H = 120 };
  int64_t xy[2 * N];
  for (int i = 0; i < N; i++) {
    xy[2 * i] = (int64_t)(test_rand(seed) % (uint64_t)info.width) - 20;
    xy[2 * i + 1] = (int64_t)(test_rand(seed) % (uint64_t)info.height) - 20;
    mark(xy[2 * i], xy[2 * i + 1], W, H);
  }
  tessera_batch_options o;
  tessera_batch_options_init(&o);
  o.batch_size = 4;
  o.num_workers = 2;
  tessera_batch_iter *it = NULL;
  if (tessera_batch_iter_create(s, xy, N, W, H, 0, &o, &it) != TESSERA_OK)
    return 1;
  int bad = 0;
  size_t seen = 0;
  for (;;) {
    tessera_batch *b = NULL;
    if (tessera_batch_iter_next(it, &b) != TESSERA_OK) {
      bad++;
      continue;
    }
    if (!b)
      break;
    for (size_t p = 0; p < b->count; p++)
      bad +=
          differs(b->data + p * W * H * 3, xy[2 * b->indices[p]], xy[2 * b->indices[p] + 1], W, H);
    seen += b->count;
    tessera_batch_release(b);
  }
  tessera_batch_iter_destroy(it);
  return bad + (seen != N);
}

struct worker {
  tessera_slide *s;
  unsigned long long seed;
  int rounds;     /* reads, or reads after the stop flag when until_stop */
  int until_stop; /* keep reading until board->stop, then `rounds` more */
  int failures;
  atomic_int *done;
};

static void *hammer_thread(void *arg) {
  struct worker *w = arg;
  int after = 0;
  for (int i = 0;; i++) {
    if (w->until_stop ? (atomic_load(&board->stop) && after++ >= w->rounds) || i > 20000
                      : i >= w->rounds)
      break;
    w->failures += read_and_compare(w->s, &w->seed);
    if (i % 16 == 7)
      w->failures += batches_and_compare(w->s, &w->seed);
  }
  w->failures += batches_and_compare(w->s, &w->seed);
  return NULL;
}

static void *monitor_thread(void *arg) {
  struct worker *w = arg;
  while (!atomic_load(w->done)) {
    tessera_cache_stats t = {.struct_size = sizeof t};
    if (tessera_cache_stats_get(&t) != TESSERA_OK || t.type != TESSERA_CACHE_SHARED_MEMORY)
      w->failures++;
    if (t.bytes > t.memory_capacity || (t.item_capacity && t.items > t.item_capacity))
      w->failures++;
    struct timespec ts = {0, 2000000};
    nanosleep(&ts, NULL);
  }
  return NULL;
}

/* A child's work: THREADS readers and a monitor of the budgets; exits 0 if all was right.
 * It detaches by configuring no cache, or just ends (_exit: a user that is gone, as if
 * killed). Not exit(): LeakSanitizer would count what the parent's threads owned. With warm,
 * it first reads the level once, in this thread (first misses: nothing is cached, but its
 * ghost will admit each tile at its next miss), and waits for the parent's go. */
static void child_hammer(unsigned long long seed, int rounds, int until_stop, int detach,
                         int warm) {
  alarm(CHILD_ALARM_S);
  tessera_slide *s = open_slide();
  if (!s)
    _exit(2);
  if (warm) {
    size_t size = (size_t)(info.width * info.height * 3);
    uint8_t *buf = malloc(size);
    CHECK(tessera_read_level(s, 0, NULL, buf, size) == TESSERA_OK, "warm: %s",
          tessera_error_message());
    free(buf);
    atomic_fetch_add(&board->warmed, 1);
    while (!atomic_load(&board->go)) {
      struct timespec ts = {0, 1000000};
      nanosleep(&ts, NULL);
    }
  }
  atomic_int done = 0;
  struct worker ws[THREADS + 1];
  pthread_t t[THREADS + 1];
  for (int i = 0; i <= THREADS; i++) {
    ws[i] = (struct worker){s, seed * 1000 + (unsigned)i, rounds, until_stop, 0, &done};
    pthread_create(&t[i], NULL, i < THREADS ? hammer_thread : monitor_thread, &ws[i]);
  }
  int failures = 0;
  for (int i = 0; i < THREADS; i++) {
    pthread_join(t[i], NULL);
    failures += ws[i].failures;
  }
  atomic_store(&done, 1);
  pthread_join(t[THREADS], NULL);
  CHECK(failures == 0, "child %d: %d reads differ or failed", (int)getpid(), failures);
  CHECK(ws[THREADS].failures == 0, "child %d: the budget was exceeded %d times", (int)getpid(),
        ws[THREADS].failures);
  atomic_fetch_add(&board->overwritten, tsr_shared_cache_overwritten());
  tessera_close(s);
  if (detach)
    configure(TESSERA_CACHE_NONE, 0, 0, NULL);
  fflush(stderr);
  _exit(check_failures ? 1 : 0);
}

static pid_t fork_child(void) {
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  CHECK(pid >= 0, "fork: %s", strerror(errno));
  if (pid == 0)
    check_failures = 0; /* a child's exit status is its own checks, not the parent's so far */
  return pid;
}

static int wait_child(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

/* The whole level through the cache equals the reference. One thread: the parent starts no
 * pool threads, which a child forked later would inherit as ghosts (ThreadSanitizer cannot
 * tell its new threads from them). */
static void check_whole_level(const char *what) {
  tessera_slide *s = open_slide();
  if (!s)
    return;
  size_t size = (size_t)(info.width * info.height * 3);
  uint8_t *buf = malloc(size);
  CHECK(tessera_read_level(s, 0, NULL, buf, size) == TESSERA_OK, "%s: %s", what,
        tessera_error_message());
  CHECK(memcmp(buf, reference, size) == 0, "%s: the level read through the cache differs", what);
  free(buf);
  tessera_close(s);
}

/* PROCESSES forked children share the parent's unnamed segment. With room for the level, the
 * children read it once first, which caches it (each tile is read whole, so it is admitted at
 * its first miss, and one process decodes it), and their hits and misses are counted from then
 * on: hits only. */
static void test_processes(uint64_t mib, uint64_t items, const char *hook) {
  if (hook)
    setenv("TESSERA_TEST_CACHE_STALL", hook, 1); /* read when configured; the children fork */
  configure(TESSERA_CACHE_SHARED_MEMORY, mib, items, NULL);
  unsetenv("TESSERA_TEST_CACHE_STALL");
  char name[TESSERA_SHARED_CACHE_NAME_MAX + 2];
  own_segment(name, sizeof name);
  memset(board->touched, 0, sizeof board->touched);
  int warm = !items && (uint64_t)(across * down) * tile_bytes <= mib << 20;
  atomic_store(&board->warmed, 0);
  atomic_store(&board->go, 0);
  atomic_store(&board->overwritten, 0);
  pid_t pids[PROCESSES];
  for (int i = 0; i < PROCESSES; i++) {
    pids[i] = fork_child();
    if (pids[i] == 0)
      child_hammer(7 + (unsigned long long)i + 100 * mib + items, 40, 0, i == 0, warm);
  }
  while (warm && atomic_load(&board->warmed) < PROCESSES) {
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  tessera_cache_stats t = stats();
  CHECK(!warm || (t.items == (uint64_t)(across * down) && t.evictions == 0),
        "%llu MiB: reading the level once cached %llu tiles of %lld, evicted %llu",
        (unsigned long long)mib, (unsigned long long)t.items, (long long)(across * down),
        (unsigned long long)t.evictions);
  tessera_cache_stats_reset(-1);
  atomic_store(&board->go, 1);
  for (int i = 0; i < PROCESSES; i++) {
    int status = wait_child(pids[i]);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "%llu MiB, %llu items: child %d failed (status %#x)", (unsigned long long)mib,
          (unsigned long long)items, i, status);
  }
  t = stats();
  CHECK(t.type == TESSERA_CACHE_SHARED_MEMORY && t.memory_capacity == mib << 20 &&
            t.item_capacity == items,
        "%llu MiB: the configuration is not reported", (unsigned long long)mib);
  CHECK(t.bytes <= t.memory_capacity && (!items || t.items <= items),
        "%llu MiB %llu items: holds %llu bytes, %llu items", (unsigned long long)mib,
        (unsigned long long)items, (unsigned long long)t.bytes, (unsigned long long)t.items);
  CHECK(t.bytes == t.items * tile_bytes, "%llu bytes for %llu items of %llu",
        (unsigned long long)t.bytes, (unsigned long long)t.items, (unsigned long long)tile_bytes);
  uint64_t touched = touched_count();
  if (touched * tile_bytes <= t.memory_capacity && !items) {
    /* room for everything: the level was cached while warming, so no more misses */
    CHECK(warm && t.misses == 0 && t.items == (uint64_t)(across * down) && t.evictions == 0,
          "%llu MiB: %llu tiles touched, %llu misses, %llu items, %llu evictions",
          (unsigned long long)mib, (unsigned long long)touched, (unsigned long long)t.misses,
          (unsigned long long)t.items, (unsigned long long)t.evictions);
    CHECK(t.hits > 0, "no hits");
  } else {
    CHECK(t.evictions > 0, "%llu MiB %llu items: no evictions", (unsigned long long)mib,
          (unsigned long long)items);
  }
  /* Hits read while others evict and reuse their chunks: every read was compared above; this
   * says how often a hit was caught overwritten (and read again without the cache). */
  printf("%llu MiB, %llu items: %llu hits, %lu found overwritten once read\n",
         (unsigned long long)mib, (unsigned long long)items, (unsigned long long)t.hits,
         atomic_load(&board->overwritten));
  CHECK(!hook || !strstr(hook, "reading") || atomic_load(&board->overwritten) > 0,
        "hits paused while others evict: none found overwritten (the race was not run)");
  char why[256];
  CHECK(tsr_shared_cache_verify(why, sizeof why), "after the children, the index: %s", why);
  check_whole_level("after the children");
  t = stats();
  CHECK(t.bytes <= t.memory_capacity && (!items || t.items <= items), "budget after the level");
  CHECK(shm_exists(name), "%s went away while this process uses it", name);
  configure(TESSERA_CACHE_NONE, 0, 0, NULL);
  CHECK(!shm_exists(name), "%s is still there after its last user detached", name);
}

/* A child stalls holding a shard's lock while publishing its third tile; the others read on
 * (and block on that lock); it is killed; they carry on; so does the parent. */
static void test_kill_holding_lock(void) {
  char name[64], pidfile[128];
  snprintf(name, sizeof name, "/tessera-ctest-%d-locked", (int)getpid());
  snprintf(pidfile, sizeof pidfile, "/tmp/tessera-ctest-%d-stalled.pid", (int)getpid());
  unlink(pidfile);
  configure(TESSERA_CACHE_SHARED_MEMORY, 8, 0, name);
  memset(board->touched, 0, sizeof board->touched);
  atomic_store(&board->stop, 0);
  pid_t staller = fork_child();
  if (staller == 0) {
    alarm(CHILD_ALARM_S);
    char hook[256];
    snprintf(hook, sizeof hook, "locked:3:%s", pidfile);
    setenv("TESSERA_TEST_CACHE_STALL", hook, 1);
    configure(TESSERA_CACHE_SHARED_MEMORY, 8, 0, name); /* attaches again, reading the hook */
    tessera_slide *s = open_slide();
    unsigned long long seed = 4242;
    for (int i = 0; s && i < 2000; i++)
      read_and_compare(s, &seed);
    _exit(5); /* it never stalled */
  }
  pid_t others[PROCESSES - 1];
  for (int i = 0; i < PROCESSES - 1; i++) {
    others[i] = fork_child();
    if (others[i] == 0)
      child_hammer(900 + (unsigned long long)i, 30, 1, i == 0, 0);
  }
  /* wait for the staller's pid in the file */
  int stalled = 0;
  for (int tries = 0; tries < 6000 && !stalled; tries++) {
    FILE *f = fopen(pidfile, "r");
    int pid = 0;
    if (f) {
      stalled = fscanf(f, "%d", &pid) == 1 && pid == staller;
      fclose(f);
    }
    int status;
    if (!stalled && waitpid(staller, &status, WNOHANG) == staller) {
      CHECK(0, "the staller ended (status %#x) without stalling", status);
      staller = -1;
      break;
    }
    if (!stalled) {
      struct timespec ts = {0, 10000000};
      nanosleep(&ts, NULL);
    }
  }
  CHECK(stalled, "no pid in %s", pidfile);
  if (staller > 0) {
    struct timespec ts = {0, 300000000}; /* let the others run into the held lock */
    nanosleep(&ts, NULL);
    kill(staller, SIGKILL);
    int status = wait_child(staller);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "staller status %#x", status);
  }
  atomic_store(&board->stop, 1);
  for (int i = 0; i < PROCESSES - 1; i++) {
    int status = wait_child(others[i]);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "a reader failed after the kill (status %#x)", status);
  }
  unlink(pidfile);
  char why[256];
  CHECK(tsr_shared_cache_verify(why, sizeof why), "after the kill, the index: %s", why);
  check_whole_level("after the kill");
  tessera_cache_stats t = stats();
  CHECK(t.bytes <= t.memory_capacity && t.bytes == t.items * tile_bytes,
        "after the kill: %llu bytes, %llu items", (unsigned long long)t.bytes,
        (unsigned long long)t.items);
  /* four tiles read again and again: cached by the second read (if not before), and from then
   * on all hits. A pass after the second may still miss where a bounded lock wait ran out on
   * a starved machine (that read goes around the cache), so up to six passes are allowed for
   * one of all hits; a cache the kill had broken gives none. */
  tessera_slide *s = open_slide();
  if (s) {
    size_t size = (size_t)(info.tile_width * info.tile_height * 4 * 3);
    uint8_t *buf = malloc(size);
    tessera_cache_stats before = {0};
    bool all_hits = false;
    for (int pass = 0; pass < 6 && !all_hits; pass++) {
      before = stats();
      CHECK(tessera_read_region(s, info.tile_width, info.tile_height, 0, 2 * info.tile_width,
                                2 * info.tile_height, NULL, buf, size) == TESSERA_OK,
            "read: %s", tessera_error_message());
      CHECK(!differs(buf, info.tile_width, info.tile_height, 2 * info.tile_width,
                     2 * info.tile_height),
            "pass %d differs", pass);
      t = stats();
      all_hits = pass >= 2 && t.hits - before.hits == 4 && t.misses == before.misses;
    }
    CHECK(all_hits,
          "after the kill, no read of four cached tiles was all hits: the last %llu hits, "
          "%llu misses",
          (unsigned long long)(t.hits - before.hits),
          (unsigned long long)(t.misses - before.misses));
    free(buf);
    tessera_close(s);
  }
  configure(TESSERA_CACHE_NONE, 0, 0, NULL);
  CHECK(!shm_exists(name), "%s is still there after its last live user detached", name);
  if (shm_exists(name))
    tessera_shared_cache_remove(name, 1);
}

static void test_arguments(void) {
  tessera_cache_options o;
  tessera_cache_options_init(&o);
  CHECK(o.name == NULL, "default name");
  o.type = TESSERA_CACHE_SHARED_MEMORY;
  o.memory_capacity_mib = 8;
  char longname[TESSERA_SHARED_CACHE_NAME_MAX + 2];
  memset(longname, 'x', sizeof longname - 1);
  longname[sizeof longname - 1] = 0;
  const char *bad[] = {"", "/", "a/b", "/a/b", "x/", longname};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    o.name = bad[i];
    CHECK(tessera_cache_configure(&o) == TESSERA_E_ARGUMENT, "name \"%.20s\" accepted", bad[i]);
  }
  o.name = NULL;
  o.memory_capacity_mib = 0;
  CHECK(tessera_cache_configure(&o) == TESSERA_E_ARGUMENT, "0 MiB accepted");
  size_t count = 99;
  CHECK(tessera_shared_cache_list(NULL, 0, &count) == TESSERA_OK && count != 99, "list: %s",
        tessera_error_message());
  char missing[64];
  snprintf(missing, sizeof missing, "tessera-ctest-%d-missing", (int)getpid());
  CHECK(tessera_shared_cache_remove(missing, 0) == TESSERA_E_IO, "removed a missing segment");
  CHECK(tessera_shared_cache_remove(NULL, 0) == TESSERA_E_ARGUMENT, "removed NULL");
  tessera_cache_stats t = stats();
  CHECK(t.type == TESSERA_CACHE_NONE, "a refused configure left a cache");
}

static void *sleep_forever(void *arg) {
  (void)arg;
  for (;;)
    pause();
  return NULL;
}

/* The state letter of a process, from /proc. */
static char proc_state(pid_t pid) {
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f)
    return 0;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  char *p = strrchr(buf, ')');
  return p && p[1] == ' ' ? p[2] : 0;
}

static unsigned users_of(const char *name) {
  tessera_shared_cache_info v[64];
  for (size_t i = 0; i < 64; i++)
    v[i].struct_size = sizeof v[i];
  size_t count = 0;
  CHECK(tessera_shared_cache_list(v, 64, &count) == TESSERA_OK, "list: %s",
        tessera_error_message());
  for (size_t i = 0; i < count && i < 64; i++)
    if (strcmp(v[i].name, name) == 0)
      return v[i].users;
  return 0;
}

/* A user whose main thread has ended while another thread of it runs shows as a zombie in
 * /proc, yet is alive: it stays a user, and a remove without force is refused. */
static void test_user_whose_main_thread_ended(void) {
  char name[64];
  snprintf(name, sizeof name, "/tessera-ctest-%d-zleader", (int)getpid());
  configure(TESSERA_CACHE_SHARED_MEMORY, 8, 0, name);
  pid_t pid = fork_child();
  if (pid == 0) {
    tessera_slide *s = open_slide();
    uint8_t px[3];
    tessera_read_region(s, 0, 0, 0, 1, 1, NULL, px, 3); /* becomes a user by reading */
    pthread_t t;
    pthread_create(&t, NULL, sleep_forever, NULL);
    pthread_exit(NULL);
  }
  char state = 0;
  for (int i = 0; i < 2000 && (state = proc_state(pid)) != 'Z'; i++) {
    struct timespec ts = {0, 5000000};
    nanosleep(&ts, NULL);
  }
  CHECK(state == 'Z', "the child's main thread did not end (state %c)", state ? state : '?');
  CHECK(users_of(name) == 2, "%u users listed, the parent and the child expected", users_of(name));
  CHECK(tessera_shared_cache_remove(name, 0) == TESSERA_E_ARGUMENT,
        "removed without force while the child uses it");
  kill(pid, SIGKILL);
  wait_child(pid);
  CHECK(users_of(name) == 1, "the killed child is still counted");
  configure(TESSERA_CACHE_NONE, 0, 0, NULL);
  CHECK(!shm_exists(name), "%s is still there after its last user detached", name);
}

/* Waits until the child `pid` has stalled at the test hook (its pid in pidfile); false if it
 * ended first. */
static int wait_for_stall(const char *pidfile, pid_t pid) {
  for (int tries = 0; tries < 6000; tries++) {
    FILE *f = fopen(pidfile, "r");
    int got = 0;
    if (f) {
      int ok = fscanf(f, "%d", &got) == 1 && got == pid;
      fclose(f);
      if (ok)
        return 1;
    }
    int status;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      CHECK(0, "the child ended (status %#x) without stalling", status);
      return 0;
    }
    struct timespec ts = {0, 10000000};
    nanosleep(&ts, NULL);
  }
  CHECK(0, "no pid in %s", pidfile);
  return 0;
}

/* A child that attaches to `name` with the stall hook set to `hook` (POINT:N) and reads the
 * region (x, y, w, h) until it stalls there (twice: the second miss of a tile loads it);
 * returns its pid once it has, stopped with SIGSTOP as a debugger or Ctrl-Z would (-1 if it
 * never stalled). */
static pid_t stopped_child(const char *name, const char *hook, int64_t x, int64_t y, int64_t w,
                           int64_t h, const char *pidfile) {
  unlink(pidfile);
  pid_t pid = fork_child();
  if (pid == 0) {
    alarm(CHILD_ALARM_S);
    char v[256];
    snprintf(v, sizeof v, "%s:%s", hook, pidfile);
    setenv("TESSERA_TEST_CACHE_STALL", v, 1);
    configure(TESSERA_CACHE_SHARED_MEMORY, 8, 0, name); /* attaches again, reading the hook */
    tessera_slide *s = open_slide();
    uint8_t *buf = malloc((size_t)(w * h * 3));
    for (int k = 0; s && k < 2; k++)
      tessera_read_region(s, x, y, 0, w, h, NULL, buf, (size_t)(w * h * 3));
    _exit(5); /* it never stalled */
  }
  if (!wait_for_stall(pidfile, pid))
    return -1;
  kill(pid, SIGSTOP);
  return pid;
}

static void end_child(pid_t pid, const char *pidfile) {
  if (pid > 0) {
    kill(pid, SIGKILL);
    wait_child(pid);
  }
  unlink(pidfile);
}

/* A process stopped while it holds a shard's lock (the one shard of an 8 MiB cache, so every
 * tile needs it): another process reads the whole level, correctly, without hanging (its
 * alarm is the hang guard: before, it waited for the lock forever). */
static void test_stopped_lock_holder(void) {
  char name[64], pidfile[128];
  snprintf(name, sizeof name, "/tessera-ctest-%d-stoplock", (int)getpid());
  snprintf(pidfile, sizeof pidfile, "/tmp/tessera-ctest-%d-stoplock.pid", (int)getpid());
  configure(TESSERA_CACHE_SHARED_MEMORY, 8, 0, name);
  pid_t staller = stopped_child(name, "locked:1", 10, 10, 100, 100, pidfile);
  pid_t reader = fork_child();
  if (reader == 0) {
    alarm(60);
    check_whole_level("with a stopped lock holder");
    fflush(stderr);
    _exit(check_failures ? 1 : 0);
  }
  int status = wait_child(reader);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
        "a reader beside a stopped lock holder failed or hung (status %#x)", status);
  end_child(staller, pidfile);
  configure(TESSERA_CACHE_NONE, 0, 0, NULL);
  CHECK(!shm_exists(name), "%s is still there after its last live user detached", name);
}

/* A loader stopped after reserving a tile: another process reading it takes the entry over
 * after a bounded wait and publishes it, so its second read is a hit (before, each read
 * waited 10 s for the stopped loader and went around the cache). */
static void test_stopped_loader(void) {
  char name[64], pidfile[128];
  snprintf(name, sizeof name, "/tessera-ctest-%d-stopload", (int)getpid());
  snprintf(pidfile, sizeof pidfile, "/tmp/tessera-ctest-%d-stopload.pid", (int)getpid());
  configure(TESSERA_CACHE_SHARED_MEMORY, 8, 0, name);
  pid_t staller = stopped_child(name, "loading:1", 10, 20, 100, 90, pidfile);
  pid_t reader = fork_child();
  if (reader == 0) {
    alarm(60);
    tessera_slide *s = open_slide();
    uint8_t buf[100 * 90 * 3];
    /* The first read waits for the stopped loader, takes its entry over and publishes the
     * tile; a later read is then a hit. Up to three later reads are allowed, for a bounded
     * lock wait that ran out on a starved machine; before, no read ever hit (each waited 10 s
     * and went around the cache). */
    tessera_cache_stats before = {0}, after = {0};
    for (int pass = 0; s && pass < 4; pass++) {
      before = stats();
      CHECK(tessera_read_region(s, 10, 20, 0, 100, 90, NULL, buf, sizeof buf) == TESSERA_OK,
            "read beside a stopped loader: %s", tessera_error_message());
      CHECK(!differs(buf, 10, 20, 100, 90), "pass %d beside a stopped loader differs", pass);
      after = stats();
      if (pass && after.hits == before.hits + 1 && after.misses == before.misses)
        break;
    }
    CHECK(after.hits == before.hits + 1 && after.misses == before.misses,
          "the stopped loader's tile was not taken over: a second read made %llu hits, %llu "
          "misses",
          (unsigned long long)(after.hits - before.hits),
          (unsigned long long)(after.misses - before.misses));
    if (s)
      tessera_close(s);
    fflush(stderr);
    _exit(check_failures ? 1 : 0);
  }
  int status = wait_child(reader);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
        "a reader beside a stopped loader failed or hung (status %#x)", status);
  end_child(staller, pidfile);
  configure(TESSERA_CACHE_NONE, 0, 0, NULL);
}

/* A process stopped (SIGSTOP) in the middle of a hit on tile 0, its rows mapped in the
 * segment and not yet painted. Another process reads that tile: every read is a hit, served at
 * once (before, the stopped reader held the shard's lock, the one shard of a 2 MiB cache:
 * each read waited for it, gave up and went around the cache, and no hit was counted). That
 * process then reads every tile of the level twice in a row, so that the cache, a sixth of
 * the level, evicts tile 0 and gives its chunks to other tiles. The stopped reader, continued,
 * paints from chunks that now hold other pixels: it must find its hit overwritten and read
 * the tile again, right. */
static void test_stopped_reader(void) {
  char name[64], pidfile[128];
  snprintf(name, sizeof name, "/tessera-ctest-%d-stopread", (int)getpid());
  snprintf(pidfile, sizeof pidfile, "/tmp/tessera-ctest-%d-stopread.pid", (int)getpid());
  unlink(pidfile);
  configure(TESSERA_CACHE_SHARED_MEMORY, 2, 0, name);
  int64_t w = info.tile_width, h = info.tile_height;
  pid_t staller = fork_child();
  if (staller == 0) {
    alarm(CHILD_ALARM_S);
    char v[256];
    snprintf(v, sizeof v, "stopreading:1:%s", pidfile);
    setenv("TESSERA_TEST_CACHE_STALL", v, 1);
    configure(TESSERA_CACHE_SHARED_MEMORY, 2, 0, name); /* attaches again, reading the hook */
    tessera_slide *s = open_slide();
    uint8_t *buf = malloc((size_t)(w * h * 3));
    /* the whole tile: cached at its first read; the second, a hit, stops at the hook */
    for (int k = 0; s && k < 2; k++)
      CHECK(tessera_read_region(s, 0, 0, 0, w, h, NULL, buf, (size_t)(w * h * 3)) == TESSERA_OK,
            "the stopped reader's read %d: %s", k, tessera_error_message());
    CHECK(!differs(buf, 0, 0, w, h), "the stopped reader painted another tile's pixels");
    CHECK(tsr_shared_cache_overwritten() == 1,
          "the stopped reader found %lu hits overwritten, not its one",
          tsr_shared_cache_overwritten());
    fflush(stderr);
    _exit(check_failures ? 1 : 0);
  }
  char state = 0;
  if (wait_for_stall(pidfile, staller))
    for (int i = 0; i < 2000 && (state = proc_state(staller)) != 'T'; i++) {
      struct timespec ts = {0, 5000000};
      nanosleep(&ts, NULL);
    }
  CHECK(state == 'T', "the reader did not stop in its hit (state %c)", state ? state : '?');
  pid_t reader = fork_child();
  if (reader == 0) {
    alarm(120);
    tessera_slide *s = open_slide();
    uint8_t *buf = malloc((size_t)(w * h * 3));
    tessera_cache_stats before = stats();
    for (int k = 0; s && k < 5; k++)
      CHECK(tessera_read_region(s, 0, 0, 0, w, h, NULL, buf, (size_t)(w * h * 3)) == TESSERA_OK &&
                !differs(buf, 0, 0, w, h),
            "read %d of the tile the stopped reader hit", k);
    tessera_cache_stats after = stats();
    CHECK(after.hits - before.hits == 5 && after.misses == before.misses,
          "5 reads of a cached tile beside a reader stopped in its hit: %llu hits, %llu misses",
          (unsigned long long)(after.hits - before.hits),
          (unsigned long long)(after.misses - before.misses));
    for (int64_t t = 0; s && t < 2 * across * down; t++) {
      int64_t x = t % (across * down) % across * w, y = t % (across * down) / across * h;
      for (int k = 0; k < 2; k++)
        CHECK(tessera_read_region(s, x, y, 0, w, h, NULL, buf, (size_t)(w * h * 3)) == TESSERA_OK &&
                  !differs(buf, x, y, w, h),
              "tile %lld beside a reader stopped in its hit", (long long)t);
    }
    CHECK(stats().evictions > 0, "nothing was evicted");
    free(buf);
    if (s)
      tessera_close(s);
    fflush(stderr);
    _exit(check_failures ? 1 : 0);
  }
  int status = wait_child(reader);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
        "a reader beside one stopped in its hit failed or hung (status %#x)", status);
  if (staller > 0) {
    kill(staller, SIGCONT);
    status = wait_child(staller);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "the reader stopped in its hit failed, once continued (status %#x)", status);
  }
  unlink(pidfile);
  char why[256];
  CHECK(tsr_shared_cache_verify(why, sizeof why), "after the stopped reader, the index: %s", why);
  configure(TESSERA_CACHE_NONE, 0, 0, NULL);
  CHECK(!shm_exists(name), "%s is still there after its last user detached", name);
}

/* Reads every tile of level 0 whole, through the cache, in order or backwards, each `times`
 * in a row, comparing each with the reference. */
static void read_tiles(tessera_slide *s, int backwards, int times, const char *what) {
  int64_t w = info.tile_width, h = info.tile_height, n = across * down;
  uint8_t *buf = malloc((size_t)(w * h * 3));
  for (int64_t k = 0; s && k < n; k++) {
    int64_t t = backwards ? n - 1 - k : k, x = t % across * w, y = t / across * h;
    for (int r = 0; r < times; r++)
      CHECK(tessera_read_region(s, x, y, 0, w, h, NULL, buf, (size_t)(w * h * 3)) == TESSERA_OK &&
                !differs(buf, x, y, w, h),
            "%s: tile %lld, read %d", what, (long long)t, r);
  }
  free(buf);
}

/* The middle tile of level 0, at (*x, *y): tissue, unlike the blank tiles at the edges, so
 * its pixels written into another tile's chunks would show. */
static void middle_tile(int64_t *x, int64_t *y) {
  *x = across / 2 * info.tile_width;
  *y = down / 2 * info.tile_height;
  const uint8_t *first = reference + (size_t)(*y * info.width + *x) * 3;
  int uniform = 1;
  for (int64_t r = 0; r < info.tile_height; r++)
    for (int64_t c = 0; c < info.tile_width; c++)
      uniform &= memcmp(first, reference + (size_t)((*y + r) * info.width + *x + c) * 3, 3) == 0;
  CHECK(!uniform, "the middle tile is all one colour");
}

/* A child that attaches to `name` (mib) and loads the middle tile (read whole, cached at its
 * first miss) until it stops (SIGSTOP) halfway through copying it into its chunks, with no
 * lock held (the test hook "stopcopying"). Continued, it finishes, and reads every tile
 * backwards (the ones read last by others first, while they are still cached), comparing
 * each. Returns its pid once it has stopped, -1 if it never did. */
static pid_t stopped_copier(const char *name, uint64_t mib, const char *pidfile) {
  unlink(pidfile);
  int64_t w = info.tile_width, h = info.tile_height, x, y;
  middle_tile(&x, &y);
  pid_t pid = fork_child();
  if (pid == 0) {
    alarm(CHILD_ALARM_S);
    char v[256];
    snprintf(v, sizeof v, "stopcopying:1:%s", pidfile);
    setenv("TESSERA_TEST_CACHE_STALL", v, 1);
    configure(TESSERA_CACHE_SHARED_MEMORY, mib, 0, name); /* attaches again, reading the hook */
    tessera_slide *s = open_slide();
    uint8_t *buf = malloc((size_t)(w * h * 3));
    CHECK(s &&
              tessera_read_region(s, x, y, 0, w, h, NULL, buf, (size_t)(w * h * 3)) == TESSERA_OK &&
              !differs(buf, x, y, w, h),
          "the loader stopped in its copy read its tile wrong, once continued");
    read_tiles(s, 1, 1, "the loader stopped in its copy, continued");
    free(buf);
    if (s)
      tessera_close(s);
    fflush(stderr);
    _exit(check_failures ? 1 : 0);
  }
  char state = 0;
  if (wait_for_stall(pidfile, pid))
    for (int i = 0; i < 2000 && (state = proc_state(pid)) != 'T'; i++) {
      struct timespec ts = {0, 5000000};
      nanosleep(&ts, NULL);
    }
  CHECK(state == 'T', "the loader did not stop in its copy (state %c)", state ? state : '?');
  return state == 'T' ? pid : -1;
}

/* Continues the stopped copier and checks that it ended well. */
static void continue_copier(pid_t pid, const char *pidfile) {
  if (pid > 0) {
    kill(pid, SIGCONT);
    int status = wait_child(pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "the loader stopped in its copy failed, once continued (status %#x)", status);
  }
  unlink(pidfile);
}

/* A loader stopped (SIGSTOP) halfway through copying a tile into its chunks, in the one shard
 * of an 8 MiB cache. Another process reads every tile twice in a row: the cache serves it, its
 * misses loaded and its second reads hits (before, the stopped loader copied under the shard
 * lock: the reader's wait for it ran out, and every read went around the cache, no hit
 * counted; the statistics could not lock the shard either). Its read of that tile waits for the
 * stopped loader once, takes the key over and loads the tile into chunks of its own. The
 * loader, continued, finishes its copy into its own chunks and frees them; then everything
 * either reads equals the reference, and the index checks out. */
static void test_stopped_copier(void) {
  char name[64], pidfile[128];
  snprintf(name, sizeof name, "/tessera-ctest-%d-stopcopy", (int)getpid());
  snprintf(pidfile, sizeof pidfile, "/tmp/tessera-ctest-%d-stopcopy.pid", (int)getpid());
  configure(TESSERA_CACHE_SHARED_MEMORY, 8, 0, name);
  pid_t copier = stopped_copier(name, 8, pidfile);
  pid_t reader = fork_child();
  if (reader == 0) {
    alarm(120);
    tessera_slide *s = open_slide();
    tessera_cache_stats before = stats();
    read_tiles(s, 0, 2, "beside a loader stopped in its copy");
    tessera_cache_stats after = stats();
    CHECK(after.hits - before.hits >= (uint64_t)(across * down) / 2,
          "%lld tiles read twice beside a loader stopped in its copy: %llu hits, %llu misses",
          (long long)(across * down), (unsigned long long)(after.hits - before.hits),
          (unsigned long long)(after.misses - before.misses));
    if (s)
      tessera_close(s);
    fflush(stderr);
    _exit(check_failures ? 1 : 0);
  }
  int status = wait_child(reader);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
        "a reader beside a loader stopped in its copy failed or hung (status %#x)", status);
  continue_copier(copier, pidfile);
  char why[256];
  CHECK(tsr_shared_cache_verify(why, sizeof why), "after the stopped copier, the index: %s", why);
  check_whole_level("after the loader stopped in its copy went on");
  configure(TESSERA_CACHE_NONE, 0, 0, NULL);
  CHECK(!shm_exists(name), "%s is still there after its last user detached", name);
}

/* A loader stopped halfway through copying the middle tile into its chunks, in a 2 MiB cache
 * (a fraction of the level). Another process takes the tile over (after one bounded wait), loads
 * and publishes it, and reads the level twice, so that every chunk not pinned is evicted and
 * given to other tiles, again and again. Meanwhile the stopped loader's chunks stay its own
 * (the index checks out: no chunk is both its and another tile's). Continued, it writes the
 * rest of its tile into them: if they had been given to another tile, that tile's pixels would
 * now be wrong; the continued loader reads the cached tiles first, and the level is read
 * through the cache again: no pixel differs, and the index checks out. */
static void test_overtaken_copier(void) {
  char name[64], pidfile[128];
  snprintf(name, sizeof name, "/tessera-ctest-%d-overcopy", (int)getpid());
  snprintf(pidfile, sizeof pidfile, "/tmp/tessera-ctest-%d-overcopy.pid", (int)getpid());
  configure(TESSERA_CACHE_SHARED_MEMORY, 2, 0, name);
  pid_t copier = stopped_copier(name, 2, pidfile);
  pid_t reader = fork_child();
  if (reader == 0) {
    alarm(120);
    tessera_slide *s = open_slide();
    int64_t w = info.tile_width, h = info.tile_height, x, y;
    middle_tile(&x, &y);
    uint8_t *buf = malloc((size_t)(w * h * 3));
    tessera_cache_stats before = stats();
    for (int k = 0; s && k < 2; k++)
      CHECK(tessera_read_region(s, x, y, 0, w, h, NULL, buf, (size_t)(w * h * 3)) == TESSERA_OK &&
                !differs(buf, x, y, w, h),
            "read %d of the tile of the loader stopped in its copy", k);
    tessera_cache_stats after = stats();
    CHECK(after.hits - before.hits == 1 && after.misses - before.misses == 1,
          "the tile of a loader stopped in its copy was not taken over: 2 reads made %llu hits, "
          "%llu misses",
          (unsigned long long)(after.hits - before.hits),
          (unsigned long long)(after.misses - before.misses));
    for (int round = 0; round < 2; round++)
      read_tiles(s, 0, 2, "beside an overtaken loader stopped in its copy");
    CHECK(stats().evictions > 0, "nothing was evicted");
    free(buf);
    if (s)
      tessera_close(s);
    fflush(stderr);
    _exit(check_failures ? 1 : 0);
  }
  int status = wait_child(reader);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
        "a reader beside an overtaken loader stopped in its copy failed or hung (status %#x)",
        status);
  char why[256];
  CHECK(tsr_shared_cache_verify(why, sizeof why), "beside the overtaken copier, the index: %s",
        why);
  continue_copier(copier, pidfile);
  CHECK(tsr_shared_cache_verify(why, sizeof why), "after the overtaken copier, the index: %s", why);
  check_whole_level("after the overtaken loader went on");
  configure(TESSERA_CACHE_NONE, 0, 0, NULL);
  CHECK(!shm_exists(name), "%s is still there after its last user detached", name);
}

/* A loader that cannot lock the shard to publish its tile (another process stopped holding
 * the lock, and killed later) gives its reservation up, and the next lock holder frees it,
 * though the loader lives on: before, it stayed reserved for a live loader that would never
 * come back to it, pinning its chunks (one tile per such failure) until another process
 * took it over, or for good now that an overtaken loader's chunks stay its own. */
static void test_loader_locked_out(void) {
  char name[64], loader_pid[128], holder_pid[128];
  snprintf(name, sizeof name, "/tessera-ctest-%d-lockedout", (int)getpid());
  snprintf(loader_pid, sizeof loader_pid, "/tmp/tessera-ctest-%d-lockedout.pid", (int)getpid());
  snprintf(holder_pid, sizeof holder_pid, "/tmp/tessera-ctest-%d-lockholder.pid", (int)getpid());
  unlink(loader_pid);
  configure(TESSERA_CACHE_SHARED_MEMORY, 8, 0, name);
  atomic_store(&board->loaded, 0);
  int64_t w = info.tile_width, h = info.tile_height, x, y;
  middle_tile(&x, &y);
  pid_t loader = fork_child();
  if (loader == 0) {
    alarm(CHILD_ALARM_S);
    char v[256];
    snprintf(v, sizeof v, "stoploading:1:%s", loader_pid);
    setenv("TESSERA_TEST_CACHE_STALL", v, 1);
    configure(TESSERA_CACHE_SHARED_MEMORY, 8, 0, name); /* attaches again, reading the hook */
    tessera_slide *s = open_slide();
    uint8_t *buf = malloc((size_t)(w * h * 3));
    /* the whole tile: reserved at its first miss; the hook stops it there */
    CHECK(s &&
              tessera_read_region(s, x, y, 0, w, h, NULL, buf, (size_t)(w * h * 3)) == TESSERA_OK &&
              !differs(buf, x, y, w, h),
          "the locked-out loader read its tile wrong");
    atomic_store(&board->loaded, check_failures ? -1 : 1);
    for (;;)
      pause(); /* alive, never to come back to its reservation */
  }
  char state = 0;
  if (wait_for_stall(loader_pid, loader))
    for (int i = 0; i < 2000 && (state = proc_state(loader)) != 'T'; i++) {
      struct timespec ts = {0, 5000000};
      nanosleep(&ts, NULL);
    }
  CHECK(state == 'T', "the loader did not stop after reserving (state %c)", state ? state : '?');
  /* tile 0, whole: this one stalls holding the (one) shard's lock while it publishes */
  pid_t holder = stopped_child(name, "locked:1", 0, 0, w, h, holder_pid);
  kill(loader, SIGCONT);
  for (int i = 0; i < 12000 && atomic_load(&board->loaded) == 0; i++) {
    struct timespec ts = {0, 5000000};
    nanosleep(&ts, NULL);
  }
  CHECK(atomic_load(&board->loaded) == 1, "the locked-out loader did not read its tile");
  end_child(holder, holder_pid); /* the lock's holder dies: the next locker rebuilds */
  unsigned in_flight = tsr_shared_cache_in_flight();
  CHECK(in_flight == 0, "%u entries still reserved for loading once the lock came free", in_flight);
  char why[256];
  CHECK(tsr_shared_cache_verify(why, sizeof why), "after the locked-out loader, the index: %s",
        why);
  check_whole_level("after the locked-out loader");
  end_child(loader, loader_pid);
  configure(TESSERA_CACHE_NONE, 0, 0, NULL);
  CHECK(!shm_exists(name), "%s is still there after its last user detached", name);
}

/* A maker killed while it makes a named segment (locked, its magic written, not ready):
 * the next process configuring the name gets a new segment, without a manual remove. */
static void test_killed_maker(void) {
  char name[64], pidfile[128];
  snprintf(name, sizeof name, "/tessera-ctest-%d-maker", (int)getpid());
  snprintf(pidfile, sizeof pidfile, "/tmp/tessera-ctest-%d-maker.pid", (int)getpid());
  unlink(pidfile);
  pid_t maker = fork_child();
  if (maker == 0) {
    alarm(CHILD_ALARM_S);
    char v[256];
    snprintf(v, sizeof v, "making:1:%s", pidfile);
    setenv("TESSERA_TEST_CACHE_STALL", v, 1);
    configure(TESSERA_CACHE_SHARED_MEMORY, 8, 0, name);
    _exit(5);
  }
  if (wait_for_stall(pidfile, maker)) {
    kill(maker, SIGKILL);
    wait_child(maker);
    CHECK(shm_exists(name), "the killed maker left nothing to heal");
    tessera_cache_options o;
    tessera_cache_options_init(&o);
    o.type = TESSERA_CACHE_SHARED_MEMORY;
    o.memory_capacity_mib = 16;
    o.name = name;
    CHECK(tessera_cache_configure(&o) == TESSERA_OK, "configure after a maker was killed: %s",
          tessera_error_message());
    CHECK(stats().memory_capacity == (uint64_t)16 << 20, "not a segment of its own making");
    CHECK(users_of(name) == 1, "%u users of the new segment", users_of(name));
    check_whole_level("after a maker was killed");
  }
  unlink(pidfile);
  configure(TESSERA_CACHE_NONE, 0, 0, NULL);
  CHECK(!shm_exists(name), "%s is still there after its last user detached", name);
  if (shm_exists(name))
    tessera_shared_cache_remove(name, 1);
}

/* A lock held on a segment its maker has just created and not yet locked (by an attacher
 * stopped in the moment it looks at it, or any process of the user): the maker gives up after
 * a bounded wait, saying why (before, it waited for the lock for good: its alarm, the hang
 * guard, killed it). */
static void test_maker_lock_held(void) {
  char name[64], path[96], pidfile[128];
  snprintf(name, sizeof name, "/tessera-ctest-%d-makerlock", (int)getpid());
  snprintf(path, sizeof path, "/dev/shm%s", name);
  snprintf(pidfile, sizeof pidfile, "/tmp/tessera-ctest-%d-makerlock.pid", (int)getpid());
  unlink(pidfile);
  pid_t maker = fork_child();
  if (maker == 0) {
    alarm(30);
    char v[256];
    snprintf(v, sizeof v, "stopcreated:1:%s", pidfile);
    setenv("TESSERA_TEST_CACHE_STALL", v, 1);
    tessera_cache_options o;
    tessera_cache_options_init(&o);
    o.type = TESSERA_CACHE_SHARED_MEMORY;
    o.memory_capacity_mib = 8;
    o.name = name;
    tessera_status st = tessera_cache_configure(&o);
    _exit(st == TESSERA_E_IO && strstr(tessera_error_message(), "holds a lock") ? 3 : 4);
  }
  if (wait_for_stall(pidfile, maker)) {
    for (int tries = 0; tries < 6000 && proc_state(maker) != 'T'; tries++) {
      struct timespec ts = {0, 10000000};
      nanosleep(&ts, NULL);
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    CHECK(fd >= 0 && flock(fd, LOCK_SH) == 0, "cannot lock %s: %s", path, strerror(errno));
    kill(maker, SIGCONT);
    int status = wait_child(maker);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 3,
          "a maker whose segment another process holds locked hung or did not say why "
          "(status %#x)",
          status);
    if (fd >= 0)
      close(fd);
  } else {
    end_child(maker, pidfile);
  }
  unlink(pidfile);
  CHECK(!shm_exists(name), "the maker that gave up left %s", name);
  if (shm_exists(name))
    unlink(path);
}

/* Configures `name`, expecting a refusal (TESSERA_E_ARGUMENT) whose message says `why`. */
static void refused(const char *name, const char *why) {
  tessera_cache_options o;
  tessera_cache_options_init(&o);
  o.type = TESSERA_CACHE_SHARED_MEMORY;
  o.memory_capacity_mib = 8;
  o.name = name;
  tessera_status st = tessera_cache_configure(&o);
  CHECK(st == TESSERA_E_ARGUMENT && strstr(tessera_error_message(), why),
        "%s: status %d, \"%s\", not a refusal saying \"%s\"", name, (int)st,
        st ? tessera_error_message() : "", why);
}

/* A segment open to others, one owned by another user, a link, a FIFO, a hidden name: each
 * refused with a message saying why (before, the first two were used silently). */
static void test_foreign_segments(void) {
  char name[64], path[128], other[80], opath[144];
  snprintf(name, sizeof name, "/tessera-ctest-%d-owner", (int)getpid());
  snprintf(path, sizeof path, "/dev/shm%s", name);
  configure(TESSERA_CACHE_SHARED_MEMORY, 8, 0, name);
  struct stat st;
  CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600, "made with mode %03o",
        (unsigned)(st.st_mode & 0777));
  CHECK(chmod(path, 0666) == 0, "chmod: %s", strerror(errno));
  refused(name, "open to other users");
  chmod(path, 0600);
  if (geteuid() == 0) {
    CHECK(chown(path, 65534, 65534) == 0, "chown: %s", strerror(errno));
    refused(name, "belongs to another user");
    CHECK(chown(path, 0, 0) == 0, "chown back: %s", strerror(errno));
  } else {
    printf("not root: a segment of another user is not tried\n");
  }
  snprintf(other, sizeof other, "%s-link", name);
  snprintf(opath, sizeof opath, "/dev/shm%s", other);
  CHECK(symlink(path, opath) == 0, "symlink: %s", strerror(errno));
  refused(other, "symbolic link");
  unlink(opath);
  snprintf(other, sizeof other, "%s-fifo", name);
  snprintf(opath, sizeof opath, "/dev/shm%s", other);
  CHECK(mkfifo(opath, 0600) == 0, "mkfifo: %s", strerror(errno));
  refused(other, "not a tessera cache");
  unlink(opath);
  refused(".tessera-hidden", "not beginning with '.'");
  CHECK(stats().type == TESSERA_CACHE_SHARED_MEMORY, "a refusal dropped the cache in use");
  configure(TESSERA_CACHE_NONE, 0, 0, NULL);
  CHECK(!shm_exists(name), "%s is still there after its last user detached", name);
}

/* Garbage written over a live segment's index (header, shards, entries, buckets, chunk links
 * and tags) between reads: every read is right or fails, none crashes or writes out of
 * bounds (run under ASan), and once the writing stops the cache serves hits again. */
static void test_scribbled(void) {
  char name[64];
  snprintf(name, sizeof name, "/tessera-ctest-%d-scribble", (int)getpid());
  configure(TESSERA_CACHE_SHARED_MEMORY, 4, 0, name); /* a third of the level */
  tessera_slide *s = open_slide();
  if (!s)
    return;
  unsigned long long seed = 2024;
  uint64_t scribble = 7;
  int wrong = 0, failed = 0;
  uint8_t *buf = malloc(300 * 300 * 3);
  for (int round = 0; round < 400; round++) {
    CHECK(tsr_shared_cache_scribble(&scribble, 1 + (unsigned)round % 6), "no cache to scribble");
    int64_t w = 1 + (int64_t)(test_rand(&seed) % 300), h = 1 + (int64_t)(test_rand(&seed) % 300);
    int64_t x = (int64_t)(test_rand(&seed) % (uint64_t)info.width) - 20;
    int64_t y = (int64_t)(test_rand(&seed) % (uint64_t)info.height) - 20;
    if (tessera_read_region(s, x, y, 0, w, h, NULL, buf, (size_t)(w * h * 3)) != TESSERA_OK)
      failed++;
    else
      wrong += differs(buf, x, y, w, h);
  }
  CHECK(wrong == 0, "%d reads through a scribbled cache gave wrong pixels", wrong);
  printf("scribbled: 400 reads, %d failed, %d wrong\n", failed, wrong);
  /* a region inside tile 0, read four times in a row: the first read may find the last
   * scribble and go around the cache, then missed, cached, hit (a region over several tiles
   * might not be cached: with 4 MiB, the ghost may remember only 2 tiles back) */
  tessera_cache_stats before = {0};
  for (int pass = 0; pass < 4; pass++) {
    if (pass == 3)
      before = stats();
    CHECK(tessera_read_region(s, 0, 0, 0, 200, 200, NULL, buf, 200 * 200 * 3) == TESSERA_OK &&
              !differs(buf, 0, 0, 200, 200),
          "after the scribbling, pass %d", pass);
  }
  tessera_cache_stats after = stats();
  CHECK(after.hits - before.hits == 1 && after.misses == before.misses,
        "after the scribbling, a region read again: %llu hits, %llu misses",
        (unsigned long long)(after.hits - before.hits),
        (unsigned long long)(after.misses - before.misses));
  free(buf);
  tessera_close(s);
  configure(TESSERA_CACHE_NONE, 0, 0, NULL);
  if (shm_exists(name))
    tessera_shared_cache_remove(name, 1);
}

/* A word of the segment that changes after each access this thread makes to it, as if
 * another process wrote it between any two reads: a hardware watchpoint (perf_event_open)
 * traps each access, and the handler turns the word out of range, or back. With watch_seed
 * nonzero, after some accesses only, in a pseudo-random pattern (seeded: the same each run)
 * rather than after every one. */
static volatile uint32_t *watched;
static int watch_fd = -1;
static atomic_int watch_hits;
static uint32_t watch_seed;

static void on_watched_access(int sig, siginfo_t *info, void *context) {
  (void)sig, (void)info, (void)context;
  ioctl(watch_fd, PERF_EVENT_IOC_DISABLE, 0); /* its own access is not to trap */
  bool flip = true;
  if (watch_seed) {
    watch_seed ^= watch_seed << 13, watch_seed ^= watch_seed >> 17, watch_seed ^= watch_seed << 5;
    flip = watch_seed & 1;
  }
  if (flip)
    *watched ^= 0x40000000u;
  atomic_fetch_add(&watch_hits, 1);
  ioctl(watch_fd, PERF_EVENT_IOC_ENABLE, 0);
}

/* Watches `at` for this thread; false if the kernel offers no watchpoints here. */
static bool watch(uint32_t *at) {
  struct perf_event_attr a;
  memset(&a, 0, sizeof a);
  a.type = PERF_TYPE_BREAKPOINT;
  a.size = sizeof a;
  a.bp_type = HW_BREAKPOINT_RW;
  a.bp_addr = (uintptr_t)at;
  a.bp_len = HW_BREAKPOINT_LEN_4;
  a.sample_period = 1;
  a.sigtrap = 1;
  a.remove_on_exec = 1;
  a.exclude_kernel = 1;
  a.exclude_hv = 1;
  watched = at;
  watch_fd = (int)syscall(SYS_perf_event_open, &a, 0, -1, -1, PERF_FLAG_FD_CLOEXEC);
  return watch_fd >= 0;
}

static void unwatch(void) {
  close(watch_fd);
  watch_fd = -1;
}

/* Another process may write the segment between any two reads this one makes. A reader
 * must read each index it takes from there once, check that copy and use it, never read it
 * again after the check. The chain head of the most read tile, or the link after its first
 * chunk, changes after every access,
 * while that tile and others are read, and while it is evicted and its entry used again: every
 * read is right or fails, none crashes or reads or writes out of bounds (before, a hit read the
 * head, then checked a second read of it, and followed the first: a read 2^46 bytes past the
 * chunks; an eviction checked a chain, then cleared the tags of a second walk of it). */
static void test_changed_between_reads(void) {
  char name[64];
  snprintf(name, sizeof name, "/tessera-ctest-%d-toctou", (int)getpid());
  configure(TESSERA_CACHE_SHARED_MEMORY, 4, 0, name); /* a third of the level */
  tessera_slide *s = open_slide();
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_watched_access;
  sa.sa_flags = SA_SIGINFO;
  sigaction(SIGTRAP, &sa, NULL);
  unsigned long long seed = 31;
  int wrong = 0, failed = 0, rounds = 0;
  uint8_t *buf = malloc((size_t)(info.width * info.height * 3));
  /* Some virtual machines accept a watchpoint and never deliver its trap: a read of a word
   * of our own tells whether this one does, before the rounds count on it. */
  static uint32_t probe;
  bool fires = false;
  if (watch(&probe)) {
    uint32_t seen = *(volatile uint32_t *)&probe;
    (void)seen;
    fires = atomic_load(&watch_hits) > 0;
    unwatch();
    atomic_store(&watch_hits, 0);
  }
  if (!fires)
    printf("hardware watchpoints do not trap here: not tried\n");
  for (; s && fires && rounds < 40; rounds++) {
    int64_t hx = rounds % 16, hy = rounds / 16;
    for (int i = 0; i < 3; i++) /* missed, loaded, then read again: the most read tile */
      CHECK(tessera_read_region(s, hx, hy, 0, 1, 1, NULL, buf, 3) == TESSERA_OK, "read");
    uint32_t *word = tsr_shared_cache_hot_word(rounds / 2 % 2); /* its head, or a link */
    CHECK(word != NULL, "no tile in the cache");
    if (!word)
      break;
    if (!watch(word)) {
      printf("no hardware watchpoints here (%s): not tried\n", strerror(errno));
      break;
    }
    /* Odd rounds: every tile of the level, each read twice in a row so that it is cached:
     * three times the cache, so that the tile is evicted (freed, its entry reserved again
     * for another, copied into, published). Even rounds: the tile (a hit), and a region
     * anywhere. */
    int64_t tiles = across * down;
    for (int64_t r = 0; r < (rounds % 2 ? 2 * tiles : 4); r++) {
      bool hot = r % 2 == 0, all = rounds % 2;
      int64_t t = r / 2;
      int64_t w = all ? info.tile_width : hot ? 1 : 1 + (int64_t)(test_rand(&seed) % 300);
      int64_t h = all ? info.tile_height : hot ? 1 : 1 + (int64_t)(test_rand(&seed) % 300);
      int64_t x = all   ? t % across * info.tile_width
                  : hot ? hx
                        : (int64_t)(test_rand(&seed) % (uint64_t)info.width) - 20;
      int64_t y = all   ? t / across * info.tile_height
                  : hot ? hy
                        : (int64_t)(test_rand(&seed) % (uint64_t)info.height) - 20;
      if (tessera_read_region(s, x, y, 0, w, h, NULL, buf, (size_t)(w * h * 3)) != TESSERA_OK)
        failed++;
      else
        wrong += differs(buf, x, y, w, h);
    }
    unwatch(); /* the word is left as the last access made it: the cache repairs itself */
  }
  signal(SIGTRAP, SIG_DFL);
  CHECK(wrong == 0, "%d reads of a cache changing under them gave wrong pixels", wrong);
  CHECK(rounds == 0 || atomic_load(&watch_hits) > 0, "the watched word was never read");
  printf("changed between reads: %d rounds, %d reads failed, %d wrong, %d accesses trapped\n",
         rounds, failed, wrong, atomic_load(&watch_hits));
  free(buf);
  if (s)
    tessera_close(s);
  configure(TESSERA_CACHE_NONE, 0, 0, NULL);
  if (shm_exists(name))
    tessera_shared_cache_remove(name, 1);
}

/* The loader's user seat of a tile being loaded by a stopped process changes after each
 * access, while this process waits for the tile, finds its loader alive (or not), and takes
 * it over: the read is right, and nothing is read out of bounds (before, loader_alive indexed
 * the table of seat incarnations by a second read of the seat it had checked). */
static void test_loader_seat_changed(void) {
  char name[64], pidfile[128];
  snprintf(name, sizeof name, "/tessera-ctest-%d-seat", (int)getpid());
  snprintf(pidfile, sizeof pidfile, "/tmp/tessera-ctest-%d-seat.pid", (int)getpid());
  configure(TESSERA_CACHE_SHARED_MEMORY, 8, 0, name);
  tessera_slide *s = open_slide();
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_watched_access;
  sa.sa_flags = SA_SIGINFO;
  sigaction(SIGTRAP, &sa, NULL);
  atomic_store(&watch_hits, 0);
  watch_seed = 12345;
  for (int round = 0; s && round < 12; round++) {
    int64_t x = 10 + round % 6 * 300, y = 20 + round / 6 * 300;
    pid_t staller = stopped_child(name, "loading:1", x, y, 1, 1, pidfile);
    uint32_t *word = tsr_shared_cache_hot_word(2);
    CHECK(word != NULL, "no tile being loaded");
    if (staller < 0 || !word) {
      end_child(staller, pidfile);
      break;
    }
    if (!watch(word)) {
      printf("no hardware watchpoints here (%s): not tried\n", strerror(errno));
      end_child(staller, pidfile);
      break;
    }
    uint8_t px[3];
    CHECK(tessera_read_region(s, x, y, 0, 1, 1, NULL, px, 3) == TESSERA_OK &&
              !differs(px, x, y, 1, 1),
          "read beside a stopped loader whose seat changes, round %d", round);
    unwatch();
    end_child(staller, pidfile);
  }
  signal(SIGTRAP, SIG_DFL);
  watch_seed = 0;
  printf("loader seat changed between reads: %d accesses trapped\n", atomic_load(&watch_hits));
  if (s)
    tessera_close(s);
  configure(TESSERA_CACHE_NONE, 0, 0, NULL);
}

/* A tile's size, sealed, of 2^48 bytes or more (what a writer that knows the seal could
 * write): the cache takes the entry for damaged, not for a tile of a few chunks, and drops it.
 * Before, the chunk count wrapped (2^48 bytes: 0 chunks), the entry was kept through every
 * repair, and the cache counted 256 TiB in use. */
static void test_sealed_sizes(void) {
  char name[64];
  snprintf(name, sizeof name, "/tessera-ctest-%d-sizes", (int)getpid());
  tessera_slide *s = open_slide();
  uint8_t *buf = malloc((size_t)(info.width * info.height * 3));
  const uint64_t sizes[] = {(uint64_t)1 << 48, UINT64_MAX - 2, ((uint64_t)1 << 48) + tile_bytes};
  for (size_t t = 0; s && t < sizeof sizes / sizeof sizes[0]; t++) {
    configure(TESSERA_CACHE_SHARED_MEMORY, 4, 0, name); /* a third of the level */
    for (int i = 0; i < 2; i++)
      CHECK(tessera_read_region(s, 0, 0, 0, 1, 1, NULL, buf, 3) == TESSERA_OK, "read");
    CHECK(tsr_shared_cache_hot_resize(sizes[t]), "no tile to resize");
    for (int pass = 0; pass < 2; pass++) /* three times the cache: every tile evicted */
      CHECK(tessera_read_region(s, 0, 0, 0, info.width, info.height, NULL, buf,
                                (size_t)(info.width * info.height * 3)) == TESSERA_OK &&
                !differs(buf, 0, 0, info.width, info.height),
            "the level, size %llu, pass %d", (unsigned long long)sizes[t], pass);
    tessera_cache_stats st = stats();
    CHECK(st.bytes <= st.memory_capacity, "size %llu: %llu bytes counted in a cache of %llu",
          (unsigned long long)sizes[t], (unsigned long long)st.bytes,
          (unsigned long long)st.memory_capacity);
    char why[200];
    CHECK(tsr_shared_cache_verify(why, sizeof why), "size %llu: %s", (unsigned long long)sizes[t],
          why);
    configure(TESSERA_CACHE_NONE, 0, 0, NULL);
  }
  free(buf);
  if (s)
    tessera_close(s);
}

int main(int argc, char **argv) {
  const char *dir = testdata_dir(argc, argv);
  static char path[4096];
  snprintf(path, sizeof path, "%s/aperio-jpeg-CMU-1-Small-Region.svs", dir);
  slide_path = path;
  tessera_slide *s = open_slide();
  if (!s)
    return check_finish("test_shared_cache");
  info = (tessera_level_info){.struct_size = sizeof info};
  tessera_level_info_get(s, 0, &info);
  across = (info.width + info.tile_width - 1) / info.tile_width;
  down = (info.height + info.tile_height - 1) / info.tile_height;
  CHECK(across * down <= MAX_TILES, "too many tiles");
  size_t size = (size_t)(info.width * info.height * 3);
  reference = malloc(size);
  CHECK(tessera_read_level(s, 0, NULL, reference, size) == TESSERA_OK, "reference read");
  /* what a tile costs a shared cache: read twice, it is cached */
  configure(TESSERA_CACHE_SHARED_MEMORY, 64, 0, NULL);
  uint8_t px[3];
  for (int k = 0; k < 2; k++)
    tessera_read_region(s, 0, 0, 0, 1, 1, NULL, px, 3);
  tile_bytes = stats().bytes;
  CHECK(stats().items == 1 && tile_bytes >= (uint64_t)(info.tile_width * info.tile_height * 3),
        "tile bytes");
  configure(TESSERA_CACHE_NONE, 0, 0, NULL);
  tessera_close(s);
  board = mmap(NULL, sizeof *board, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  CHECK(board != MAP_FAILED, "mmap");
  if (board == MAP_FAILED)
    return check_finish("test_shared_cache");

  test_arguments();
  test_processes(2, 0, NULL);   /* a twelfth of the level: evictions all along */
  test_processes(64, 5, NULL);  /* five tiles at most */
  test_processes(512, 0, NULL); /* room for every tile: cached while warming */
  /* Each hit pauses between mapping its rows and painting them: others evict and reuse its
   * chunks meanwhile, which it must find out. */
  test_processes(64, 5, "pausereading:1:");
  /* Each load pauses halfway through copying its tile into its chunks, with no lock held:
   * others hit, evict and load beside it. */
  test_processes(2, 0, "pausecopying:1:");
  test_kill_holding_lock();
  test_user_whose_main_thread_ended();
  test_foreign_segments();
  test_scribbled();
  test_changed_between_reads();
  test_sealed_sizes();
  test_loader_seat_changed();
  test_killed_maker();
  test_maker_lock_held();
  test_stopped_loader();
  test_stopped_lock_holder();
  test_stopped_reader();
  test_stopped_copier();
  test_overtaken_copier();
  test_loader_locked_out();
  munmap(board, sizeof *board);
  free(reference);
  return check_finish("test_shared_cache");
}
