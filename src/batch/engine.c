/* The batch engine (see batch/engine.h): the public batch calls, the options and plan of
 * an iterator, and the lifecycle of its batches, driving the back end chosen by the device
 * through its table of operations. The iterator's lock guards what engine.h says. */
#include "batch/engine.h"

#include <stddef.h>
#include <string.h>

#include "abi.h"
#include "alloc.h"
#include "error.h"
#include "mix.h"

#define TSR_MAX_PATCH_SIDE ((int64_t)1 << 31)

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
static uint64_t next_random(uint64_t *state) { return tsr_mix64(*state += TSR_MIX_GOLDEN); }

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

size_t tsr_batch_count(const struct tsr_batch_plan *l, size_t number) {
  size_t first = number * l->batch_size;
  return l->n - first < l->batch_size ? l->n - first : l->batch_size;
}

bool tsr_batch_patch(const struct tsr_batch_plan *l, size_t number, size_t p, uint8_t *dst,
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

bool tsr_batch_hints(const struct tsr_batch_plan *l) {
  const struct tsr_level *lv = &l->s->levels[l->level];
  return l->s->source->ops->hint &&
         (lv->source == &tsr_tiff_tiles || lv->source == &tsr_tiff_strips);
}

void tsr_batch_hint(const struct tsr_batch_plan *l, size_t number) {
  const struct tsr_level *lv = &l->s->levels[l->level];
  size_t count = tsr_batch_count(l, number);
  for (size_t p = 0; p < count; p++) {
    struct tsr_canvas c;
    uint64_t index;
    int64_t tx0, ty0, tx1, ty1;
    if (!tsr_batch_patch(l, number, p, NULL, &c, &index) ||
        !tsr_canvas_tiles(&c, lv, &tx0, &ty0, &tx1, &ty1))
      continue;
    for (int64_t ty = ty0; ty <= ty1; ty++)
      for (int64_t tx = tx0; tx <= tx1; tx++) {
        uint64_t tile = (uint64_t)ty * lv->across + (uint64_t)tx;
        tsr_bytes_hint(l->s->source, lv->offsets[tile], lv->bytecounts[tile]);
      }
  }
}

size_t tsr_batch_tiles_per_patch(const struct tsr_level *lv, int64_t width, int64_t height) {
  return (size_t)((width + lv->tile_w - 1) / lv->tile_w + 1) *
         (size_t)((height + lv->tile_h - 1) / lv->tile_h + 1);
}

static void plan_free(struct tsr_batch_plan *l) {
  tsr_free(l->xy);
  tsr_free(l->order);
  l->xy = NULL;
  l->order = NULL;
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

/* ---- the lifecycle ---- */

/* The group's release: every reference has gone, so every slot is on the free list. */
static void free_iter(void *arg) {
  struct tessera_batch_iter *it = arg;
  for (struct tsr_batch_slot *sl = it->free_slots, *next; sl; sl = next) {
    next = sl->next;
    it->ops->free_slot(it, sl);
  }
  if (it->backend)
    it->ops->free(it);
  pthread_mutex_destroy(&it->lock);
  pthread_cond_destroy(&it->changed);
  tsr_free(it->ring);
  plan_free(&it->L);
  tsr_free(it);
}

void tsr_batch_done(struct tessera_batch_iter *it, struct tsr_batch_slot *sl, tessera_status st) {
  tsr_failure_keep(&sl->failure, st);
  if (--sl->pending == 0)
    pthread_cond_broadcast(&it->changed);
}

/* The group's item: one of the back end's. */
static bool run_one(void *arg) {
  struct tessera_batch_iter *it = arg;
  pthread_mutex_lock(&it->lock);
  void *item = it->ops->pop(it);
  if (item) {
    pthread_mutex_unlock(&it->lock);
    it->ops->run(it, item); /* returns with the lock held */
  }
  bool more = it->ops->queued(it);
  pthread_mutex_unlock(&it->lock);
  return item && more;
}

/* Most batches hinted beyond those scheduled. */
#define HINT_AHEAD_MAX 16

/* How many batches beyond the `scheduled` in flight a hinted source is told of: as many as
 * its room holds three quarters of (the rest is what the scheduled batches are read from), at
 * what a patch is likely to fetch: each row of tiles it overlaps (1 + (height - 1) / tile_h
 * on average, where it falls at random) costs its tiles' bytes (at the level's mean) and one
 * block more, the block a run of tiles starts and ends in. Random patches over a slide share
 * blocks, so fewer are fetched (a third as many in bench/remote.py's run). */
static size_t hint_depth(const struct tsr_batch_plan *L, size_t scheduled) {
  const struct tsr_byte_source *src = L->s->source;
  const struct tsr_level *lv = &L->s->levels[L->level];
  uint64_t granule = 0, room = src->ops->hint_room ? src->ops->hint_room(src, &granule) : 0;
  if (!room || !granule || !lv->ntiles)
    return 0;
  uint64_t bytes = 0;
  for (uint64_t i = 0; i < lv->ntiles; i++)
    bytes += lv->bytecounts[i];
  double mean = (double)bytes / (double)lv->ntiles;
  double rows = 1.0 + (double)(L->height - 1) / lv->tile_h;
  double cols = 1.0 + (double)(L->width - 1) / lv->tile_w;
  double per_batch =
      (double)L->batch_cap * rows * ((double)granule + cols * mean); /* bytes at most, likely */
  double batches = 0.75 * (double)room / per_batch - (double)scheduled;
  return batches < 1 ? 0 : batches > HINT_AHEAD_MAX ? HINT_AHEAD_MAX : (size_t)batches;
}

/* Takes over the plan's memory, on failure too. */
static tessera_status make_iter(struct tsr_batch_plan *L, const struct tsr_batch_backend *ops,
                                tessera_batch_iter **out) {
  struct tessera_batch_iter *it = tsr_calloc(1, sizeof *it);
  if (!it) {
    plan_free(L);
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a batch iterator");
  }
  it->L = *L;
  it->ops = ops;
  it->ahead = L->workers > 0 || ops->ahead_without_workers ? L->prefetch_factor : 0;
  if (it->ahead > L->nbatches)
    it->ahead = L->nbatches; /* never more slots than batches */
  it->ring_size = it->ahead + 1;
  if ((it->hints = tsr_batch_hints(L)) && it->ahead)
    it->hint_ahead = hint_depth(L, it->ahead + 1);
  pthread_mutex_init(&it->lock, NULL);
  pthread_cond_init(&it->changed, NULL);
  tessera_status st = ops->init(it);
  if (st == TESSERA_OK && (!(it->ring = tsr_calloc(it->ring_size, sizeof *it->ring)) ||
                           !(it->group = tsr_group_create(run_one, free_iter, it))))
    st = tsr_error(TESSERA_E_NOMEM, "out of memory for a batch iterator");
  if (st != TESSERA_OK) {
    free_iter(it);
    return st;
  }
  *out = it;
  return TESSERA_OK;
}

static tessera_status check_read_bytes(const tessera_slide *s, const tessera_batch_options *o,
                                       const struct tsr_batch_backend *ops, size_t n,
                                       size_t patch_bytes, size_t patch_overhead) {
  size_t per_batch = n < (size_t)o->batch_size ? n : (size_t)o->batch_size;
  bool ahead = o->num_workers > 0 || ops->ahead_without_workers;
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
  size_t per_patch = tsr_batch_tiles_per_patch(&s->levels[level], width, height);
  bool by_patch;
  size_t overhead = sizeof(struct tsr_canvas) + sizeof(uint64_t) +
                    tsr_batch_schedule_bytes(per_patch, patch_bytes, &by_patch);
  /* A composite level's images are painted one after another into each patch (their tiles
   * are no one grid to share) */
  if (tsr_level_composite(&s->levels[level]))
    by_patch = true;
  const struct tsr_batch_backend *ops =
      o.device == TESSERA_DEVICE_CUDA ? &tsr_gpu_batch_backend : &tsr_cpu_batch_backend;
  if ((st = check_read_bytes(s, &o, ops, n, patch_bytes, overhead)) != TESSERA_OK)
    return st;
  struct tsr_batch_plan L = {
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
    plan_free(&L);
    return tsr_error(TESSERA_E_NOMEM, "out of memory for %zu locations", n);
  }
  if (n > 0)
    memcpy(L.xy, locations, xy_bytes);
  for (size_t i = 0; i < n; i++)
    L.order[i] = i;
  if (o.shuffle)
    shuffle(L.order, n, o.seed);
  return make_iter(&L, ops, out);
}

TESSERA_API size_t tessera_batch_iter_length(const tessera_batch_iter *it) {
  return it ? it->L.nbatches : 0;
}

/* Lays out batch `number` in a slot and has the back end queue its work (lock held). Fails
 * only when no slot can be had. */
static tessera_status schedule(struct tessera_batch_iter *it, size_t number) {
  struct tsr_batch_slot *sl = it->free_slots;
  if (sl) {
    it->free_slots = sl->next;
  } else {
    tessera_status st = it->ops->new_slot(it, &sl);
    if (st != TESSERA_OK)
      return st;
    sl->it = it;
  }
  size_t count = tsr_batch_count(&it->L, number);
  sl->pub = (tessera_batch){.size = count * it->L.patch_bytes,
                            .count = count,
                            .number = number,
                            .width = it->L.width,
                            .height = it->L.height,
                            .channels = (int32_t)it->L.channels};
  sl->pending = 0;
  sl->failure.status = TESSERA_OK;
  sl->next = NULL;
  it->ring[number % it->ring_size] = sl;
  tessera_status st = it->ops->schedule(it, sl);
  if (st != TESSERA_OK)
    tsr_failure_keep(&sl->failure, st); /* the items already queued still count down */
  return TESSERA_OK;
}

/* Asks for up to num_workers tasks for the queued items (lock held on entry and exit; released
 * while posting, since a full pool queue makes that wait). */
static void start_workers(struct tessera_batch_iter *it) {
  if (it->L.workers == 0 || it->no_pool || !it->ops->queued(it))
    return;
  pthread_mutex_unlock(&it->lock);
  bool pool = tsr_group_post(it->group, it->L.workers);
  pthread_mutex_lock(&it->lock);
  it->no_pool |= !pool;
}

/* Whether the consumer must run the items itself: no workers asked for, or none to be had. */
static bool consumer_runs(const struct tessera_batch_iter *it) {
  return it->L.workers == 0 || it->no_pool;
}

/* Puts a slot on the free list (lock held). */
static void free_later(struct tessera_batch_iter *it, struct tsr_batch_slot *sl) {
  sl->next = it->free_slots;
  it->free_slots = sl;
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
  pthread_mutex_lock(&it->lock);
  if (it->returned == it->L.nbatches) {
    pthread_mutex_unlock(&it->lock);
    return TESSERA_OK;
  }
  size_t limit = it->returned + 1 + it->ahead;
  if (limit > it->L.nbatches)
    limit = it->L.nbatches;
  tessera_status st = TESSERA_OK;
  /* A slow source (a URL's block cache) is told of the tiles of the batches about to be
   * scheduled and of hint_ahead more, before their work is queued: its requests are in flight
   * well before the workers reach those tiles, while the workers decode what has arrived. */
  if (it->hints) {
    size_t upto = limit + it->hint_ahead < it->L.nbatches ? limit + it->hint_ahead
                                                          : it->L.nbatches;
    for (; it->hinted < upto; it->hinted++)
      tsr_batch_hint(&it->L, it->hinted);
  }
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
  start_workers(it);
  struct tsr_batch_slot *sl = it->ring[it->returned % it->ring_size];
  /* A back end that works ahead without workers has the consumer make every batch scheduled
   * before it waits for the first. */
  while (sl->pending > 0 ||
         (it->ops->ahead_without_workers && consumer_runs(it) && it->ops->queued(it))) {
    void *item = consumer_runs(it) ? it->ops->pop(it) : NULL;
    if (item) {
      pthread_mutex_unlock(&it->lock);
      it->ops->run(it, item);
    } else {
      pthread_cond_wait(&it->changed, &it->lock);
    }
  }
  it->ring[it->returned % it->ring_size] = NULL;
  it->returned++;
  if (it->ops->complete) {
    pthread_mutex_unlock(&it->lock);
    st = it->ops->complete(it, sl);
    pthread_mutex_lock(&it->lock);
    if (st != TESSERA_OK)
      tsr_failure_keep(&sl->failure, st);
  }
  if (sl->failure.status != TESSERA_OK) {
    free_later(it, sl);
    st = tsr_failure_raise(&sl->failure);
    pthread_mutex_unlock(&it->lock);
    return st;
  }
  pthread_mutex_unlock(&it->lock);
  tsr_group_hold(it->group);
  *out = &sl->pub;
  return TESSERA_OK;
}

static struct tsr_batch_slot *slot_of(const tessera_batch *batch) {
  return (struct tsr_batch_slot *)((char *)batch - offsetof(struct tsr_batch_slot, pub));
}

TESSERA_API void tessera_batch_release(tessera_batch *batch) {
  if (!batch)
    return;
  struct tsr_batch_slot *sl = slot_of(batch);
  struct tessera_batch_iter *it = sl->it;
  if (it->L.generation != tsr_pool_generation())
    return; /* made before fork(): its lock may be held by a thread gone with the parent */
  if (it->ops->released)
    it->ops->released(it, sl);
  pthread_mutex_lock(&it->lock);
  free_later(it, sl);
  pthread_mutex_unlock(&it->lock);
  tsr_group_let_go(it->group);
}

TESSERA_API void tessera_batch_iter_destroy(tessera_batch_iter *it) {
  if (!it)
    return;
  /* Made before fork(): the parent's workers and any lock they held are not here. Its memory
   * is left alone (a small leak in the child) rather than touched in an unknown state. */
  if (it->L.generation != tsr_pool_generation())
    return;
  /* Queued items are dropped. Items running touch the slide, which the caller may close as
   * soon as this returns, so they are waited for; tasks still queued in the pool are not: the
   * cancelled group ends them, and the last reference to go frees the iterator. */
  tsr_group_cancel(it->group);
  pthread_mutex_lock(&it->lock);
  it->ops->drop(it);
  pthread_mutex_unlock(&it->lock);
  tsr_group_wait_idle(it->group);
  pthread_mutex_lock(&it->lock);
  /* Batches scheduled but not handed out go back to the free list. */
  for (size_t b = it->returned; b < it->scheduled; b++)
    free_later(it, it->ring[b % it->ring_size]);
  it->returned = it->scheduled;
  pthread_mutex_unlock(&it->lock);
  tsr_group_let_go(it->group);
}

TESSERA_API const char *tessera_batch_iter_decoder(const tessera_batch_iter *it) {
  return it ? it->ops->decoder(it) : "";
}

TESSERA_API tessera_status tessera_batch_copy_to_host(const tessera_batch *batch, void *dst,
                                                      size_t dst_size) {
  if (!batch || !dst)
    return tsr_error(TESSERA_E_ARGUMENT, "NULL batch or destination");
  if (dst_size < batch->size)
    return tsr_error(TESSERA_E_ARGUMENT, "%zu bytes cannot hold a batch of %zu", dst_size,
                     batch->size);
  const struct tsr_batch_slot *sl = slot_of(batch);
  return sl->it->ops->copy_to_host(sl->it, sl, dst);
}
