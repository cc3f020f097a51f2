/* The batch iterator: patch locations in, batches of patches out, decoded by the pool's
 * workers up to prefetch_factor batches ahead of the consumer.
 *
 * Work is scheduled by tile. Scheduling a batch makes, for each tile its patches overlap, a
 * job listing the patches (destinations) that need it; a tile already waiting in the queue
 * for an earlier batch gains the new destinations instead of a second job, so it is read and
 * decoded once. The iterator's task group (at most num_workers pool tasks) takes jobs off the
 * queue in order, one job an item, and paints each tile into all its destinations; a batch is
 * ready when its last destination is painted. The group's references are the iterator's
 * handle and each batch handed out: the last to let go frees the iterator. Batch buffers, jobs and their destination lists are recycled,
 * so a long stream allocates nothing once warm. */
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <string.h>

#include "abi.h"
#include "alloc.h"
#include "error.h"
#include "pool.h"
#include "batch_internal.h"
#include "region.h"

#define TSR_MAX_PATCH_SIDE ((int64_t)1 << 31)
/* Largest table of queued jobs used to find a tile already waiting; past half full, new jobs
 * are simply not shared (correct, just less thrifty). */
#define TSR_MAX_TABLE ((size_t)1 << 16)

struct slot;

/* One patch that needs a tile. */
struct dest {
  struct slot *slot;
  uint32_t patch;
};

/* One tile to read and paint into its destinations (with by_patch: one patch, whose tiles are
 * painted one after another; `tile` is then unused). While queued it belongs to the iterator
 * (guarded by its lock); once a runner takes it off the queue, to that runner alone. */
struct job {
  uint64_t tile;
  struct job *next; /* queue or free list */
  struct dest *dests;
  const struct tsr_canvas **canvases; /* filled by the runner from dests */
  size_t n, cap;
};

/* The least memory scheduling one tile for one patch costs: a job and the smallest lists of
 * destinations and canvases it carries (the table's slots and malloc's headers come on top). */
#define TSR_JOB_BYTES                                                                              \
  (sizeof(struct job) + 4 * (sizeof(struct dest) + sizeof(const struct tsr_canvas *)))

/* Scheduling a patch tile by tile may always cost this much, so that small patches share the
 * tiles of scanner files (256 x 256 and the like) with the patches beside them; beyond it, and
 * beyond the patch's own pixels, tiles are too small to be worth it (by_patch). */
#define TSR_SCHEDULE_FLOOR ((size_t)64 << 10)

/* A batch buffer and what is known about the batch it holds. */
struct slot {
  tessera_batch pub; /* first, so a released tessera_batch leads back here */
  struct tessera_batch_iter *it;
  uint8_t *data;               /* batch_cap patches */
  uint64_t *indices;           /* batch_cap entries */
  struct tsr_canvas *canvases; /* one per patch; set when scheduled, then read-only */
  size_t pending;              /* destinations not yet painted; guarded by it->lock */
  struct tsr_failure failure;  /* the first tile that failed; guarded by it->lock */
  struct slot *next;           /* free list; guarded by it->lock */
};

struct tessera_batch_iter {
  struct tsr_batch_layout L; /* first: set at creation, then only read */
  /* Set at creation, then only read. */
  size_t ahead;     /* batches scheduled beyond the one being waited for */
  size_t ring_size;
  size_t table_size; /* a power of two */

  struct tsr_group *group; /* set at creation; runs the jobs, counts the references */

  pthread_mutex_t lock;
  pthread_cond_t changed; /* a batch became ready */
  /* Everything below is guarded by lock. */
  size_t scheduled;   /* batches scheduled so far */
  size_t returned;    /* batches handed out (or failed) so far */
  struct slot **ring; /* slots of batches returned .. scheduled-1, by number % ring_size */
  struct slot *free_slots;
  struct job *queue_head, *queue_tail;
  struct job *free_jobs;
  /* Destinations the lists of the jobs on free_jobs have room for, and the most they may keep:
   * what TSR_JOB_BYTES counts for the jobs that can be queued at once. Without it, jobs reused
   * for tiles shared by many patches would each keep the longest list they ever had. */
  size_t spare_dests, spare_limit;
  struct job **table; /* queued jobs by tile, open addressing */
  size_t table_count;
  bool no_pool;        /* the pool could not be started: the consumer decodes */
};

TESSERA_API void tessera_batch_options_init_sized(tessera_batch_options *o, size_t size) {
  static const tessera_batch_options defaults = {
      .struct_size = sizeof defaults,
      .batch_size = 1,
      .num_workers = 0,
      .drop_last = 0,
      .prefetch_factor = 2,
      .shuffle = 0,
      .seed = 0,
      .channels = 3,
      .fill = -1,
      .device = TESSERA_DEVICE_CPU,
      .device_id = 0,
  };
  tsr_abi_init(o, size, &defaults, sizeof defaults);
}

/* splitmix64: a small generator whose output is the same on every platform, so a seed gives
 * the same order everywhere. */
static uint64_t next_random(uint64_t *state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15u);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
  return z ^ (z >> 31);
}

/* Fisher-Yates from the last element down, each index drawn without modulo bias. */
static void shuffle(uint64_t *order, size_t n, uint64_t seed) {
  uint64_t state = seed;
  for (size_t i = n; i > 1; i--) {
    uint64_t bound = i, threshold = (0 - bound) % bound, r;
    do
      r = next_random(&state);
    while (r < threshold);
    size_t j = (size_t)(r % bound);
    uint64_t t = order[i - 1];
    order[i - 1] = order[j];
    order[j] = t;
  }
}

/* ---- the table of queued jobs, by tile (lock held) ---- */

static size_t table_home(const struct tessera_batch_iter *it, uint64_t tile) {
  return (size_t)((tile * 0x9E3779B97F4A7C15u) >> 7) & (it->table_size - 1);
}

static struct job *table_find(const struct tessera_batch_iter *it, uint64_t tile) {
  for (size_t i = table_home(it, tile);; i = (i + 1) & (it->table_size - 1)) {
    if (!it->table[i] || it->table[i]->tile == tile)
      return it->table[i];
  }
}

static void table_insert(struct tessera_batch_iter *it, struct job *j) {
  size_t i = table_home(it, j->tile);
  while (it->table[i])
    i = (i + 1) & (it->table_size - 1);
  it->table[i] = j;
  it->table_count++;
}

/* Removal by shifting later entries of the same probe run back, so no tombstones pile up. */
static void table_remove(struct tessera_batch_iter *it, const struct job *j) {
  size_t mask = it->table_size - 1, i = table_home(it, j->tile);
  while (it->table[i] != j) {
    if (!it->table[i])
      return; /* never shared, so never inserted */
    i = (i + 1) & mask;
  }
  it->table[i] = NULL;
  it->table_count--;
  for (size_t k = (i + 1) & mask; it->table[k]; k = (k + 1) & mask) {
    size_t home = table_home(it, it->table[k]->tile);
    /* Move entry k into the hole unless its home lies cyclically in (i, k]. */
    bool stays = i <= k ? (home > i && home <= k) : (home > i || home <= k);
    if (!stays) {
      it->table[i] = it->table[k];
      it->table[k] = NULL;
      i = k;
    }
  }
}

/* ---- scheduling (lock held) ---- */

static void free_slot(struct slot *sl) {
  if (!sl)
    return;
  tsr_free(sl->data);
  tsr_free(sl->indices);
  tsr_free(sl->canvases);
  tsr_free(sl);
}

static struct slot *take_slot(struct tessera_batch_iter *it) {
  struct slot *sl = it->free_slots;
  if (sl) {
    it->free_slots = sl->next;
    return sl;
  }
  sl = tsr_calloc(1, sizeof *sl);
  if (!sl)
    return NULL;
  sl->it = it;
  sl->data = tsr_malloc(it->L.batch_bytes);
  sl->indices = tsr_malloc(it->L.batch_cap * sizeof *sl->indices);
  sl->canvases = tsr_malloc(it->L.batch_cap * sizeof *sl->canvases);
  if (!sl->data || !sl->indices || !sl->canvases) {
    free_slot(sl);
    return NULL;
  }
  return sl;
}

/* Puts a job on the free list, its lists freed if keeping them would exceed spare_limit. */
static void recycle_job(struct tessera_batch_iter *it, struct job *j) {
  if (j->cap > 4 && it->spare_dests + j->cap > it->spare_limit) {
    tsr_free(j->dests);
    tsr_free(j->canvases);
    j->dests = NULL;
    j->canvases = NULL;
    j->cap = 0;
  }
  it->spare_dests += j->cap;
  j->next = it->free_jobs;
  it->free_jobs = j;
}

static struct job *take_job(struct tessera_batch_iter *it, uint64_t tile) {
  struct job *j = it->free_jobs;
  if (j) {
    it->free_jobs = j->next;
    it->spare_dests -= j->cap;
  } else if (!(j = tsr_calloc(1, sizeof *j)))
    return NULL;
  j->tile = tile;
  j->n = 0;
  j->next = NULL;
  return j;
}

static bool add_dest(struct job *j, struct slot *sl, uint32_t patch) {
  if (j->n == j->cap) {
    size_t cap = j->cap ? j->cap * 2 : 4;
    struct dest *d = tsr_realloc(j->dests, cap * sizeof *d);
    if (!d)
      return false;
    j->dests = d;
    const struct tsr_canvas **c = tsr_realloc(j->canvases, cap * sizeof *c);
    if (!c)
      return false;
    j->canvases = c;
    j->cap = cap;
  }
  j->dests[j->n++] = (struct dest){sl, patch};
  return true;
}

static void enqueue(struct tessera_batch_iter *it, struct job *j) {
  if (it->queue_tail)
    it->queue_tail->next = j;
  else
    it->queue_head = j;
  it->queue_tail = j;
}

/* Adds a destination to the queued job of a tile, or queues a new job for it. */
static tessera_status need_tile(struct tessera_batch_iter *it, uint64_t tile, struct slot *sl,
                                uint32_t patch) {
  struct job *j = table_find(it, tile);
  bool fresh = !j;
  if (fresh && !(j = take_job(it, tile)))
    return tsr_error(TESSERA_E_NOMEM, "out of memory scheduling a batch");
  if (!add_dest(j, sl, patch)) {
    if (fresh)
      recycle_job(it, j);
    return tsr_error(TESSERA_E_NOMEM, "out of memory scheduling a batch");
  }
  sl->pending++;
  if (fresh) {
    enqueue(it, j);
    if (2 * (it->table_count + 1) <= it->table_size)
      table_insert(it, j);
  }
  return TESSERA_OK;
}

size_t tsr_batch_count(const struct tsr_batch_layout *l, size_t number) {
  size_t first = number * l->batch_size;
  return l->n - first < l->batch_size ? l->n - first : l->batch_size;
}

bool tsr_batch_patch(const struct tsr_batch_layout *l, size_t number, size_t p, uint8_t *dst,
                     struct tsr_canvas *c, uint64_t *index) {
  const struct tsr_level *lv = &l->s->levels[l->level];
  *index = l->order[number * l->batch_size + p];
  int64_t x = l->xy[2 * *index], y = l->xy[2 * *index + 1];
  *c = (struct tsr_canvas){
      .lx = tsr_level_coord(lv, x),
      .ly = tsr_level_coord(lv, y),
      .width = l->width,
      .height = l->height,
      .channels = l->channels,
      .fill = l->fill,
      .stride = (size_t)l->width * l->channels,
      .dst = dst,
  };
  /* Patches wholly beyond +-2^62 cannot touch a level (at most 2^24 wide). */
  return !(c->lx > INT64_MAX / 4 || c->lx < INT64_MIN / 4 || c->ly > INT64_MAX / 4 ||
           c->ly < INT64_MIN / 4);
}

void tsr_batch_layout_free(struct tsr_batch_layout *l) {
  tsr_free(l->xy);
  tsr_free(l->order);
  l->xy = NULL;
  l->order = NULL;
}

/* Queues a job painting all of patch p (by_patch). */
static tessera_status need_patch(struct tessera_batch_iter *it, struct slot *sl, uint32_t patch) {
  struct job *j = take_job(it, 0);
  if (!j)
    return tsr_error(TESSERA_E_NOMEM, "out of memory scheduling a batch");
  if (!add_dest(j, sl, patch)) {
    recycle_job(it, j);
    return tsr_error(TESSERA_E_NOMEM, "out of memory scheduling a batch");
  }
  sl->pending++;
  enqueue(it, j);
  return TESSERA_OK;
}

/* Lays out batch `number` in a slot and queues its tiles. */
static tessera_status schedule(struct tessera_batch_iter *it, size_t number) {
  struct slot *sl = take_slot(it);
  if (!sl)
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a %zu-byte batch", it->L.batch_bytes);
  size_t count = tsr_batch_count(&it->L, number);
  sl->pub = (tessera_batch){.data = sl->data,
                            .size = count * it->L.patch_bytes,
                            .count = count,
                            .number = number,
                            .indices = sl->indices,
                            .width = it->L.width,
                            .height = it->L.height,
                            .channels = (int32_t)it->L.channels,
                            .device = TESSERA_DEVICE_CPU};
  sl->pending = 0;
  sl->failure.status = TESSERA_OK;
  sl->next = NULL;
  it->ring[number % it->ring_size] = sl;
  const struct tsr_level *lv = &it->L.s->levels[it->L.level];
  for (size_t p = 0; p < count; p++) {
    struct tsr_canvas *c = &sl->canvases[p];
    if (!tsr_batch_patch(&it->L, number, p, sl->data + p * it->L.patch_bytes, c,
                         &sl->indices[p])) {
      tsr_canvas_fill(c);
      continue;
    }
    int64_t tx0, ty0, tx1, ty1;
    if (!tsr_canvas_fill_outside(c, lv) || !tsr_canvas_tiles(c, lv, &tx0, &ty0, &tx1, &ty1))
      continue;
    if (it->L.by_patch) {
      tessera_status st = need_patch(it, sl, (uint32_t)p);
      if (st != TESSERA_OK) {
        tsr_failure_keep(&sl->failure, st);
        return TESSERA_OK;
      }
      continue;
    }
    for (int64_t ty = ty0; ty <= ty1; ty++) {
      for (int64_t tx = tx0; tx <= tx1; tx++) {
        tessera_status st =
            need_tile(it, (uint64_t)ty * lv->across + (uint64_t)tx, sl, (uint32_t)p);
        if (st != TESSERA_OK) {
          /* The destinations already queued still count down; the batch then fails. */
          tsr_failure_keep(&sl->failure, st);
          return TESSERA_OK;
        }
      }
    }
  }
  return TESSERA_OK;
}

/* ---- running jobs ---- */

/* Takes the next queued job to run, or NULL (lock held). */
static struct job *pop_job(struct tessera_batch_iter *it) {
  struct job *j = it->queue_head;
  if (!j)
    return NULL;
  it->queue_head = j->next;
  if (!it->queue_head)
    it->queue_tail = NULL;
  table_remove(it, j);
  return j;
}

/* Paints one job's tile (lock not held) and then, with the lock, counts its destinations
 * done and recycles it. */
static void run_job(struct tessera_batch_iter *it, struct job *j) {
  for (size_t i = 0; i < j->n; i++)
    j->canvases[i] = &j->dests[i].slot->canvases[j->dests[i].patch];
  struct tsr_tile_buffers *b = tsr_tile_buffers_get();
  tessera_status st;
  if (!b)
    st = tsr_error(TESSERA_E_NOMEM, "out of memory for tile buffers");
  else if (it->L.by_patch)
    st = tsr_paint_canvas(it->L.s, it->L.level, j->canvases[0], b);
  else
    st = tsr_paint_tile(it->L.s, it->L.level, j->tile, j->canvases, j->n, b);
  if (b)
    tsr_tile_buffers_trim(b);
  pthread_mutex_lock(&it->lock);
  bool done = false;
  for (size_t i = 0; i < j->n; i++) {
    struct slot *sl = j->dests[i].slot;
    tsr_failure_keep(&sl->failure, st);
    done |= --sl->pending == 0;
  }
  recycle_job(it, j);
  if (done)
    pthread_cond_broadcast(&it->changed);
}

/* The group's item: one queued job. */
static bool run_one(void *arg) {
  struct tessera_batch_iter *it = arg;
  pthread_mutex_lock(&it->lock);
  struct job *j = pop_job(it);
  if (j) {
    pthread_mutex_unlock(&it->lock);
    run_job(it, j); /* returns with the lock held */
  }
  bool more = it->queue_head != NULL;
  pthread_mutex_unlock(&it->lock);
  return j && more;
}

/* Asks for up to num_workers tasks for the queued jobs (lock held on entry and exit; released
 * while posting, since a full pool queue makes that wait). */
static void start_runners(struct tessera_batch_iter *it) {
  if (it->L.workers == 0 || it->no_pool || !it->queue_head)
    return;
  pthread_mutex_unlock(&it->lock);
  bool pool = tsr_group_post(it->group, it->L.workers);
  pthread_mutex_lock(&it->lock);
  if (!pool) {
    it->no_pool = true;
    pthread_cond_broadcast(&it->changed);
  }
}

/* ---- the public calls ---- */

static void free_iter(void *arg) {
  struct tessera_batch_iter *it = arg;
  for (struct slot *sl = it->free_slots, *next; sl; sl = next) {
    next = sl->next;
    free_slot(sl);
  }
  for (struct job *j = it->free_jobs, *next; j; j = next) {
    next = j->next;
    tsr_free(j->dests);
    tsr_free(j->canvases);
    tsr_free(j);
  }
  pthread_mutex_destroy(&it->lock);
  pthread_cond_destroy(&it->changed);
  tsr_free(it->table);
  tsr_free(it->ring);
  tsr_batch_layout_free(&it->L);
  tsr_free(it);
}

static tessera_status check_options(const tessera_batch_options *o) {
  if (o->batch_size < 1)
    return tsr_error(TESSERA_E_ARGUMENT, "batch_size must be 1 or more, not %d", o->batch_size);
  if (o->num_workers < 0)
    return tsr_error(TESSERA_E_ARGUMENT, "num_workers must be 0 or more, not %d", o->num_workers);
  if (o->prefetch_factor < 1)
    return tsr_error(TESSERA_E_ARGUMENT, "prefetch_factor must be 1 or more, not %d",
                     o->prefetch_factor);
  if (o->channels != 3 && o->channels != 4)
    return tsr_error(TESSERA_E_ARGUMENT, "channels must be 3 or 4, not %d", o->channels);
  if (o->fill < -1 || o->fill > 255)
    return tsr_error(TESSERA_E_ARGUMENT, "fill must be 0..255 or -1, not %d", o->fill);
  if (o->device != TESSERA_DEVICE_CPU && o->device != TESSERA_DEVICE_CUDA)
    return tsr_error(TESSERA_E_ARGUMENT, "device must be TESSERA_DEVICE_CPU or _CUDA, not %d",
                     o->device);
  if (o->device_id < 0)
    return tsr_error(TESSERA_E_ARGUMENT, "device_id must be 0 or more, not %d", o->device_id);
  return TESSERA_OK;
}

static size_t table_size_for(size_t jobs) {
  size_t size = 64;
  while (size < 2 * jobs && size < TSR_MAX_TABLE)
    size *= 2;
  return size;
}

/* The buffers an iterator fills at once (one, plus prefetch_factor ahead with workers), each
 * as large as a batch can be for n locations, with the memory that scheduling their patches
 * takes (patch_overhead each), within the slide's max_read_bytes. */
static tessera_status check_read_bytes(const tessera_slide *s, const tessera_batch_options *o,
                                       size_t n, size_t patch_bytes, size_t patch_overhead) {
  size_t per_batch = n < (size_t)o->batch_size ? n : (size_t)o->batch_size;
  /* The CUDA iterator prepares prefetch_factor batches ahead even without workers. */
  bool ahead = o->num_workers > 0 || o->device == TESSERA_DEVICE_CUDA;
  size_t buffers = (ahead ? (size_t)o->prefetch_factor : 0) + 1;
  size_t nbatches = n / (per_batch ? per_batch : 1);
  if (buffers > nbatches + 1)
    buffers = nbatches + 1;
  size_t total;
  if (__builtin_add_overflow(patch_bytes, patch_overhead, &total) ||
      !tsr_mul3(per_batch, total, buffers, &total) || total > s->limits.max_read_bytes)
    return tsr_error(TESSERA_E_LIMIT,
                     "%zu batch buffers of %zu patches of %zu bytes (and %zu bytes each to "
                     "schedule) are over the limit of %llu bytes for one read (max_read_bytes)",
                     buffers, per_batch, patch_bytes, patch_overhead,
                     (unsigned long long)s->limits.max_read_bytes);
  return TESSERA_OK;
}

TESSERA_API tessera_status tessera_batch_iter_create(tessera_slide *s, const int64_t *locations,
                                                     size_t n, int64_t width, int64_t height,
                                                     int32_t level,
                                                     const tessera_batch_options *options,
                                                     tessera_batch_iter **out) {
  if (!out)
    return tsr_error(TESSERA_E_ARGUMENT, "NULL result pointer");
  *out = NULL;
  tessera_batch_options o;
  tessera_batch_options_init(&o);
  tessera_status st = tsr_abi_copy_in(&o, sizeof o, options, "batch options");
  if (st != TESSERA_OK)
    return st;
  if (!s || (!locations && n > 0))
    return tsr_error(TESSERA_E_ARGUMENT, "NULL slide or locations");
  if (level < 0 || level >= s->nlevels)
    return tsr_error(TESSERA_E_ARGUMENT, "level %d does not exist (the slide has %d)", level,
                     s->nlevels);
  if (width < 1 || height < 1 || width > TSR_MAX_PATCH_SIDE || height > TSR_MAX_PATCH_SIDE)
    return tsr_error(TESSERA_E_ARGUMENT, "patch size %lldx%lld is not between 1 and 2^31",
                     (long long)width, (long long)height);
  st = check_options(&o);
  if (st != TESSERA_OK)
    return st;
  size_t batch_cap = n < (size_t)o.batch_size ? n : (size_t)o.batch_size;
  size_t patch_bytes, batch_bytes, xy_bytes, order_bytes;
  if (!tsr_mul3((size_t)width, (size_t)height, (size_t)o.channels, &patch_bytes) ||
      !tsr_mul2(patch_bytes, batch_cap, &batch_bytes) ||
      !tsr_mul3(n, 2, sizeof(int64_t), &xy_bytes) || !tsr_mul2(n, sizeof(uint64_t), &order_bytes))
    return tsr_error(TESSERA_E_ARGUMENT, "batches of %d patches of %lldx%lld are too large",
                     o.batch_size, (long long)width, (long long)height);
  /* Tiles a patch overlaps at most (each side's count is at most 2^31 + 1: no overflow). */
  const struct tsr_level *lv = &s->levels[level];
  size_t per_patch = (size_t)((width + lv->tile_w - 1) / lv->tile_w + 1) *
                     (size_t)((height + lv->tile_h - 1) / lv->tile_h + 1);
  size_t tile_jobs;
  bool by_patch = !tsr_mul2(per_patch, TSR_JOB_BYTES, &tile_jobs) ||
                  (tile_jobs > patch_bytes && tile_jobs > TSR_SCHEDULE_FLOOR);
  size_t overhead =
      sizeof(struct tsr_canvas) + sizeof(uint64_t) + (by_patch ? TSR_JOB_BYTES : tile_jobs);
  if ((st = check_read_bytes(s, &o, n, patch_bytes, overhead)) != TESSERA_OK)
    return st;
  struct tsr_batch_layout L = {
      .cuda = o.device == TESSERA_DEVICE_CUDA,
      .s = s,
      .level = level,
      .width = width,
      .height = height,
      .channels = (unsigned)o.channels,
      .fill = (uint8_t)(o.fill < 0 ? s->background : o.fill),
      .n = n,
      .batch_size = (size_t)o.batch_size,
      .batch_cap = batch_cap,
      .nbatches = o.drop_last ? n / (size_t)o.batch_size
                              : (n + (size_t)o.batch_size - 1) / (size_t)o.batch_size,
      .patch_bytes = patch_bytes,
      .batch_bytes = batch_bytes,
      .by_patch = by_patch,
      .workers = (unsigned)o.num_workers,
      .prefetch_factor = (size_t)o.prefetch_factor,
      .device_id = o.device_id,
      .generation = tsr_pool_generation(),
      .xy = tsr_malloc(xy_bytes ? xy_bytes : 1),
      .order = tsr_malloc(order_bytes ? order_bytes : 1),
  };
  if (!L.xy || !L.order) {
    tsr_batch_layout_free(&L);
    return tsr_error(TESSERA_E_NOMEM, "out of memory for %zu locations", n);
  }
  if (n > 0)
    memcpy(L.xy, locations, xy_bytes);
  for (size_t i = 0; i < n; i++)
    L.order[i] = i;
  if (o.shuffle)
    shuffle(L.order, n, o.seed);
  if (L.cuda)
    return tsr_gpu_iter_create(&L, out);

  struct tessera_batch_iter *it = tsr_calloc(1, sizeof *it);
  if (!it) {
    tsr_batch_layout_free(&L);
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a batch iterator");
  }
  it->L = L;
  it->ahead = o.num_workers > 0 ? (size_t)o.prefetch_factor : 0;
  if (it->ahead > it->L.nbatches)
    it->ahead = it->L.nbatches; /* never more slots than batches */
  it->ring_size = it->ahead + 1;
  /* Jobs per patch at most, times the patches that can be queued at once. */
  size_t queued;
  if (!tsr_mul3(by_patch ? 1 : per_patch, it->L.batch_cap, it->ring_size, &queued))
    queued = TSR_MAX_TABLE;
  it->table_size = table_size_for(queued);
  if (!tsr_mul2(queued, 4, &it->spare_limit))
    it->spare_limit = SIZE_MAX;
  pthread_mutex_init(&it->lock, NULL);
  pthread_cond_init(&it->changed, NULL);
  it->ring = tsr_calloc(it->ring_size, sizeof *it->ring);
  it->table = tsr_calloc(it->table_size, sizeof *it->table);
  it->group = tsr_group_create(run_one, free_iter, it);
  if (!it->ring || !it->table || !it->group) {
    if (it->group)
      tsr_group_let_go(it->group);
    else
      free_iter(it);
    return tsr_error(TESSERA_E_NOMEM, "out of memory for %zu locations", n);
  }
  *out = it;
  return TESSERA_OK;
}

TESSERA_API size_t tessera_batch_iter_length(const tessera_batch_iter *it) {
  return it ? ((const struct tsr_batch_layout *)it)->nbatches : 0;
}

/* Whether the consumer must decode itself: no workers asked for, or none to be had. */
static bool consumer_decodes(const struct tessera_batch_iter *it) {
  return it->L.workers == 0 || it->no_pool;
}

TESSERA_API tessera_status tessera_batch_iter_next(tessera_batch_iter *it, tessera_batch **out) {
  if (!out)
    return tsr_error(TESSERA_E_ARGUMENT, "NULL result pointer");
  *out = NULL;
  if (!it)
    return tsr_error(TESSERA_E_ARGUMENT, "NULL iterator");
  if (it->L.generation != tsr_pool_generation())
    return tsr_error(TESSERA_E_ARGUMENT, "the batch iterator was made before fork(); make a new "
                                         "one in this process");
  if (it->L.cuda)
    return tsr_gpu_iter_next(it, out);
  pthread_mutex_lock(&it->lock);
  if (it->returned == it->L.nbatches) {
    pthread_mutex_unlock(&it->lock);
    return TESSERA_OK;
  }
  size_t limit = it->returned + 1 + it->ahead;
  if (limit > it->L.nbatches)
    limit = it->L.nbatches;
  tessera_status st = TESSERA_OK;
  while (it->scheduled < limit && (st = schedule(it, it->scheduled)) == TESSERA_OK)
    it->scheduled++;
  if (st != TESSERA_OK && it->scheduled == it->returned) {
    /* Not even the awaited batch could be laid out: it fails, like a batch with a bad tile,
     * and the next call goes on with the following one. */
    it->scheduled++;
    it->returned++;
    pthread_mutex_unlock(&it->lock);
    return st;
  }
  start_runners(it);
  struct slot *sl = it->ring[it->returned % it->ring_size];
  while (sl->pending > 0) {
    struct job *j = consumer_decodes(it) ? pop_job(it) : NULL;
    if (j) {
      pthread_mutex_unlock(&it->lock);
      run_job(it, j);
    } else {
      pthread_cond_wait(&it->changed, &it->lock);
    }
  }
  it->ring[it->returned % it->ring_size] = NULL;
  it->returned++;
  if (sl->failure.status != TESSERA_OK) {
    sl->next = it->free_slots;
    it->free_slots = sl;
    st = tsr_failure_raise(&sl->failure);
    pthread_mutex_unlock(&it->lock);
    return st;
  }
  pthread_mutex_unlock(&it->lock);
  tsr_group_hold(it->group);
  *out = &sl->pub;
  return TESSERA_OK;
}

TESSERA_API void tessera_batch_release(tessera_batch *batch) {
  if (!batch)
    return;
  if (batch->device == TESSERA_DEVICE_CUDA) {
    tsr_gpu_batch_release(batch);
    return;
  }
  struct slot *sl = (struct slot *)((char *)batch - offsetof(struct slot, pub));
  struct tessera_batch_iter *it = sl->it;
  if (it->L.generation != tsr_pool_generation())
    return; /* made before fork(): its lock may be held by a thread gone with the parent */
  pthread_mutex_lock(&it->lock);
  sl->next = it->free_slots;
  it->free_slots = sl;
  pthread_mutex_unlock(&it->lock);
  tsr_group_let_go(it->group);
}

TESSERA_API void tessera_batch_iter_destroy(tessera_batch_iter *it) {
  if (!it)
    return;
  /* Made before fork(): the parent's runners and any lock they held are not here. Its memory
   * is left alone (a small leak in the child) rather than touched in an unknown state. */
  if (it->L.generation != tsr_pool_generation())
    return;
  if (it->L.cuda) {
    tsr_gpu_iter_destroy(it);
    return;
  }
  /* Queued jobs are dropped. Jobs being painted touch the slide, which the caller may close
   * as soon as this returns, so they are waited for; tasks still queued in the pool are not:
   * the cancelled group ends them, and the last reference to go frees the iterator. */
  tsr_group_cancel(it->group);
  pthread_mutex_lock(&it->lock);
  while (it->queue_head) {
    struct job *j = it->queue_head;
    it->queue_head = j->next;
    table_remove(it, j);
    recycle_job(it, j);
  }
  it->queue_tail = NULL;
  pthread_mutex_unlock(&it->lock);
  tsr_group_wait_idle(it->group);
  pthread_mutex_lock(&it->lock);
  /* Batches scheduled but not handed out go back to the free list. */
  for (size_t b = it->returned; b < it->scheduled; b++) {
    struct slot *sl = it->ring[b % it->ring_size];
    sl->next = it->free_slots;
    it->free_slots = sl;
  }
  it->returned = it->scheduled;
  pthread_mutex_unlock(&it->lock);
  tsr_group_let_go(it->group);
}
