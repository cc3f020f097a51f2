/* Tiles to a region: clipping to the level, fill outside, channel conversion into the
 * caller's buffer; large regions are split by tile over worker threads. */
#include "region.h"

#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "abi.h"
#include "alloc.h"
#include "budget.h"
#include "cache/cache.h"
#include "error.h"
#include "pool.h"

/* Widest region one call accepts on either side, so size arithmetic stays far from overflow. */
#define TSR_MAX_REGION_SIDE ((int64_t)1 << 31)

TESSERA_API void tessera_read_options_init_sized(tessera_read_options *o, size_t size) {
  static const tessera_read_options defaults = {
      .struct_size = sizeof defaults, .channels = 3, .fill = -1, .stride = 0, .num_workers = 0};
  tsr_abi_init(o, size, &defaults, sizeof defaults);
}

/* Fills canvas columns [x0, x1) of rows [y0, y1), counted from the canvas's top-left pixel
 * (not in level pixels, which may be near the ends of int64 for a patch far outside). */
static void fill_part(const struct tsr_canvas *c, int64_t x0, int64_t y0, int64_t x1, int64_t y1) {
  size_t n = (size_t)(x1 - x0);
  for (int64_t y = y0; y < y1; y++) {
    uint8_t *p = c->dst + (size_t)y * c->stride + (size_t)x0 * c->channels;
    if (c->channels == 3) {
      memset(p, c->fill, n * 3);
    } else {
      for (size_t x = 0; x < n; x++, p += 4) {
        p[0] = p[1] = p[2] = c->fill;
        p[3] = 0;
      }
    }
  }
}

/* Fills level rectangle [x0, x1) x [y0, y1), which lies inside the canvas. */
static void fill_rect(const struct tsr_canvas *c, int64_t x0, int64_t y0, int64_t x1, int64_t y1) {
  fill_part(c, x0 - c->lx, y0 - c->ly, x1 - c->lx, y1 - c->ly);
}

void tsr_canvas_fill(const struct tsr_canvas *c) { fill_part(c, 0, 0, c->width, c->height); }

/* The canvas clipped to the level's stored image (the level, but for a placed image), in level
 * pixels. */
static bool inside(const struct tsr_canvas *c, const struct tsr_level *lv, int64_t *x0, int64_t *y0,
                   int64_t *x1, int64_t *y1) {
  int64_t ix0, iy0, ix1, iy1;
  tsr_level_image(lv, &ix0, &iy0, &ix1, &iy1);
  *x0 = c->lx > ix0 ? c->lx : ix0;
  *y0 = c->ly > iy0 ? c->ly : iy0;
  *x1 = c->lx + c->width < ix1 ? c->lx + c->width : ix1;
  *y1 = c->ly + c->height < iy1 ? c->ly + c->height : iy1;
  return *x0 < *x1 && *y0 < *y1;
}

bool tsr_canvas_fill_outside(const struct tsr_canvas *c, const struct tsr_level *lv) {
  int64_t x0, y0, x1, y1;
  if (!inside(c, lv, &x0, &y0, &x1, &y1)) {
    tsr_canvas_fill(c);
    return false;
  }
  int64_t cx1 = c->lx + c->width, cy1 = c->ly + c->height;
  if (y0 > c->ly)
    fill_rect(c, c->lx, c->ly, cx1, y0);
  if (y1 < cy1)
    fill_rect(c, c->lx, y1, cx1, cy1);
  if (x0 > c->lx)
    fill_rect(c, c->lx, y0, x0, y1);
  if (x1 < cx1)
    fill_rect(c, x1, y0, cx1, y1);
  return true;
}

/* The images of a composite level, in the order they are painted (its chain reversed: the
 * image first in the chain is painted last, over the others); returns how many (at most
 * max; a level that is not composite is its own one image). */
static size_t area_order(const tessera_slide *s, int32_t level, int32_t *order, size_t max) {
  size_t n = 0;
  for (int32_t i = level; n < max; i = s->levels[i].next_area) {
    order[n++] = i;
    if (!s->levels[i].next_area)
      break;
  }
  for (size_t a = 0, b = n - 1; a < b; a++, b--) {
    int32_t t = order[a];
    order[a] = order[b];
    order[b] = t;
  }
  return n;
}

#define MAX_AREAS 256

bool tsr_canvas_prepare(const tessera_slide *s, int32_t level, const struct tsr_canvas *c) {
  const struct tsr_level *lv = &s->levels[level];
  if (!tsr_level_composite(lv))
    return tsr_canvas_fill_outside(c, lv);
  tsr_canvas_fill(c);
  int64_t x0, y0, x1, y1;
  int32_t i = level;
  do {
    if (inside(c, &s->levels[i], &x0, &y0, &x1, &y1))
      return true;
  } while ((i = s->levels[i].next_area) != 0);
  return false;
}

bool tsr_canvas_tiles(const struct tsr_canvas *c, const struct tsr_level *lv, int64_t *tx0,
                      int64_t *ty0, int64_t *tx1, int64_t *ty1) {
  int64_t x0, y0, x1, y1;
  if (!inside(c, lv, &x0, &y0, &x1, &y1))
    return false;
  *tx0 = (x0 - lv->origin_x) / lv->tile_w;
  *ty0 = (y0 - lv->origin_y) / lv->tile_h;
  *tx1 = (x1 - 1 - lv->origin_x) / lv->tile_w;
  *ty1 = (y1 - 1 - lv->origin_y) / lv->tile_h;
  return true;
}

/* Copies n pixels of `src_ch` decoded channels into `dst_ch` output channels. */
static void convert_row(const uint8_t *src, unsigned src_ch, bool alpha, uint8_t *dst,
                        unsigned dst_ch, size_t n) {
  if (src_ch == dst_ch && (alpha || src_ch == 3)) {
    memcpy(dst, src, n * src_ch);
    return;
  }
  if (src_ch == 4 && dst_ch == 3) { /* RGBA tiles (MIRAX's, alpha TIFFs) into RGB */
    for (size_t i = 0; i < n; i++, src += 4, dst += 3) {
      dst[0] = src[0];
      dst[1] = src[1];
      dst[2] = src[2];
    }
    return;
  }
  for (size_t i = 0; i < n; i++, src += src_ch, dst += dst_ch) {
    if (src_ch <= 2)
      dst[0] = dst[1] = dst[2] = src[0];
    else
      memcpy(dst, src, 3);
    if (dst_ch == 4)
      dst[3] = alpha ? src[src_ch - 1] : 255;
  }
}

/* Whether decoded samples can go into the canvas as they are. */
static bool takes_decoded(const struct tsr_canvas *c, const struct tsr_pixel_format *f) {
  return f->decoded_channels == c->channels && (f->alpha || c->channels == 3) &&
         !f->transparent_is_fill;
}

/* Pixels a tile leaves transparent (alpha 0 in src, n pixels of 4 channels) take the read's
 * fill, as pixels outside the level do. */
static void fill_transparent(const uint8_t *src, uint8_t *dst, unsigned dst_ch, uint8_t fill,
                             size_t n) {
  for (size_t i = 0; i < n; i++, src += 4, dst += dst_ch)
    if (src[3] == 0)
      dst[0] = dst[1] = dst[2] = fill;
}

/* A rectangle in level pixels. */
struct span {
  int64_t x0, y0, x1, y1;
};

static bool overlap(const struct tsr_canvas *c, const struct span *t, struct span *o) {
  o->x0 = t->x0 > c->lx ? t->x0 : c->lx;
  o->y0 = t->y0 > c->ly ? t->y0 : c->ly;
  o->x1 = t->x1 < c->lx + c->width ? t->x1 : c->lx + c->width;
  o->y1 = t->y1 < c->ly + c->height ? t->y1 : c->ly + c->height;
  return o->x0 < o->x1 && o->y0 < o->y1;
}

static uint8_t *canvas_at(const struct tsr_canvas *c, int64_t x, int64_t y) {
  return c->dst + (size_t)(y - c->ly) * c->stride + (size_t)(x - c->lx) * c->channels;
}

/* Copies the decoded pixels of union u (row i of u starting at rows[i], or with rows NULL
 * at src + i * stride) into the part of the tile each canvas overlaps; fill (alpha 0) for a
 * missing tile. */
static void put_tile(const struct tsr_pixel_format *f, const struct span *tile,
                     const struct span *u, const uint8_t *src, size_t stride,
                     const uint8_t *const *rows, bool missing,
                     const struct tsr_canvas *const *canvases, size_t n) {
  struct span o;
  for (size_t i = 0; i < n; i++) {
    const struct tsr_canvas *c = canvases[i];
    if (!overlap(c, tile, &o))
      continue;
    if (missing) {
      fill_rect(c, o.x0, o.y0, o.x1, o.y1);
      continue;
    }
    for (int64_t y = o.y0; y < o.y1; y++) {
      const uint8_t *row = (rows ? rows[y - u->y0] : src + (size_t)(y - u->y0) * stride) +
                           (size_t)(o.x0 - u->x0) * f->decoded_channels;
      convert_row(row, f->decoded_channels, f->alpha, canvas_at(c, o.x0, y), c->channels,
                  (size_t)(o.x1 - o.x0));
      if (f->transparent_is_fill)
        fill_transparent(row, canvas_at(c, o.x0, y), c->channels, c->fill, (size_t)(o.x1 - o.x0));
    }
  }
}

/* Gives back a reservation of the decode budget, after the buffers grown beyond what a thread
 * keeps (a huge tile's) are freed: the budget bounds memory, not just decoding. */
static void budget_done(struct tsr_tile_buffers *b, uint64_t reserved) {
  if (reserved == 0)
    return;
  tsr_tile_buffers_trim(b);
  tsr_budget_release(reserved);
}

/* Paints from the process's tile cache, decoding the whole tile into it on a miss the cache
 * admits. Returns false when the cache does not hold the tile and does not take it (painting
 * nothing), or when the tile changed while it was painted from (a shared cache's hit, read
 * without a lock, whose entry was evicted and reused meanwhile): the caller reads it as if
 * there were no cache, painting over every pixel painted here. */
static bool paint_cached(struct tsr_cache *cache, const tessera_slide *s, int32_t level,
                         uint64_t index, const struct span *tile, const struct span *u,
                         const struct tsr_canvas *const *canvases, size_t n,
                         struct tsr_tile_buffers *b, tessera_status *st) {
  const struct tsr_level *lv = &s->levels[level];
  size_t bytes = tsr_tile_buffer_size(lv);
  if (lv->fmt.unsupported[0] || lv->offsets[index] == 0 || lv->bytecounts[index] == 0 ||
      bytes == 0 || bytes > s->limits.max_decoded_tile_bytes)
    return false; /* errors and missing tiles are the plain path's business */
  /* The cache keeps a tile as its directory holds it (whole within its image), the same
   * wherever the directory is placed: a tile the level cuts short, of an image placed
   * reaching past the level's edge, is the plain path's too. A directory may be placed twice
   * (Leica main images naming the same one), cut at one place and whole at the other, under
   * one key. */
  if (lv->image_w > 0) {
    int64_t ex = lv->origin_x + lv->image_w, ey = lv->origin_y + lv->image_h;
    int64_t full_x1 = tile->x0 + lv->tile_w < ex ? tile->x0 + lv->tile_w : ex;
    int64_t full_y1 = tile->y0 + lv->tile_h < ey ? tile->y0 + lv->tile_h : ey;
    if (tile->x1 < full_x1 || tile->y1 < full_y1)
      return false;
  }
  size_t stride = (size_t)lv->tile_w * lv->fmt.decoded_channels;
  struct tsr_cache_access a = {.key = {s->id, lv->directory, tsr_level_cache_index(lv, index)},
                               .bytes = bytes,
                               .offset = (size_t)(u->y0 - tile->y0) * stride +
                                         (size_t)(u->x0 - tile->x0) * lv->fmt.decoded_channels,
                               .stride = stride,
                               .row_bytes = (size_t)(u->x1 - u->x0) * lv->fmt.decoded_channels,
                               .rows = (uint32_t)(u->y1 - u->y0),
                               .scratch = &b->cached};
  /* Of the tile's extent (an edge tile decodes no more): the destinations' union, painted
   * in part, costs about a whole decode when it holds most of it. */
  uint64_t part = (uint64_t)(u->x1 - u->x0) * (uint64_t)(u->y1 - u->y0);
  uint64_t extent = (uint64_t)(tile->x1 - tile->x0) * (uint64_t)(tile->y1 - tile->y0);
  a.covers = part * TSR_CACHE_COVERS_DEN >= extent * TSR_CACHE_COVERS_NUM;
  a.level_tiles = (uint64_t)lv->across * lv->down;
  a.region = &s->regions[level];
  a.x = (uint32_t)(index % lv->across);
  a.y = (uint32_t)(index / lv->across);
  enum tsr_cache_result r = tsr_cache_lookup(cache, &a);
  if (r == TSR_CACHE_MISS || r == TSR_CACHE_BYPASS)
    return false; /* decoded in part, as without a cache */
  if (r == TSR_CACHE_LOAD) {
    struct tsr_tile_rect whole = {
        0, 0, (uint32_t)(tile->x1 - tile->x0), (uint32_t)(tile->y1 - tile->y0), a.load, stride};
    bool missing;
    /* Decoded into the cache's memory, through a whole tile of scratch for some codecs. */
    uint64_t scratch = tsr_tile_decode_bytes(lv);
    tsr_budget_reserve(scratch);
    *st = tsr_tile_read(s, level, index, &whole, b, &missing);
    budget_done(b, scratch);
    if (*st != TESSERA_OK) {
      tsr_cache_abandon(cache, &a);
      return true;
    }
    tsr_cache_publish(cache, &a);
  }
  put_tile(&lv->fmt, tile, u, a.src, stride, a.row_list, false, canvases, n);
  if (!tsr_cache_done(cache, &a))
    return false;
  *st = TESSERA_OK;
  return true;
}

tessera_status tsr_paint_tile(const tessera_slide *s, int32_t level, uint64_t index,
                              const struct tsr_canvas *const *canvases, size_t n,
                              struct tsr_tile_buffers *b) {
  const struct tsr_level *lv = &s->levels[level];
  const struct tsr_pixel_format *f = &lv->fmt;
  struct span tile, u = {INT64_MAX, INT64_MAX, INT64_MIN, INT64_MIN}, o;
  uint32_t tw, th;
  tsr_tile_extent(lv, index, &tile.x0, &tile.y0, &tw, &th);
  tile.x1 = tile.x0 + tw;
  tile.y1 = tile.y0 + th;
  for (size_t i = 0; i < n; i++) {
    if (!overlap(canvases[i], &tile, &o))
      continue;
    u.x0 = o.x0 < u.x0 ? o.x0 : u.x0;
    u.y0 = o.y0 < u.y0 ? o.y0 : u.y0;
    u.x1 = o.x1 > u.x1 ? o.x1 : u.x1;
    u.y1 = o.y1 > u.y1 ? o.y1 : u.y1;
  }
  if (u.x0 >= u.x1)
    return TESSERA_OK;
  struct tsr_cache *cache = tsr_cache_acquire();
  tessera_status st = TESSERA_OK;
  bool cached = cache && paint_cached(cache, s, level, index, &tile, &u, canvases, n, b, &st);
  tsr_cache_release(cache);
  if (cached)
    return st;
  struct tsr_tile_rect rect = {(uint32_t)(u.x0 - tile.x0), (uint32_t)(u.y0 - tile.y0),
                               (uint32_t)(u.x1 - u.x0), (uint32_t)(u.y1 - u.y0)};
  bool direct = n == 1 && takes_decoded(canvases[0], f);
  /* The decoded part of the tile, unless it goes straight into the canvas, and the codec's
   * scratch; a tile the file leaves out decodes nothing. */
  uint64_t reserved = 0;
  if (!tsr_tile_missing(lv, index))
    reserved =
        (direct ? 0 : (uint64_t)rect.w * rect.h * f->decoded_channels) + tsr_tile_decode_bytes(lv);
  tsr_budget_reserve(reserved);
  if (direct) {
    rect.dst = canvas_at(canvases[0], u.x0, u.y0);
    rect.stride = canvases[0]->stride;
  } else {
    rect.stride = (size_t)rect.w * f->decoded_channels;
    if (!tsr_scratch_reserve(&b->rect, rect.stride * rect.h)) {
      tsr_budget_release(reserved);
      return tsr_error(TESSERA_E_NOMEM, "out of memory for a %ux%u part of a tile", rect.w, rect.h);
    }
    rect.dst = b->rect.data;
  }
  bool missing;
  st = tsr_tile_read(s, level, index, &rect, b, &missing);
  /* A tile one of a composite level's images leaves out shows what lies beneath it (the
   * canvas was filled before its images were painted) */
  bool beneath =
      missing && (tsr_level_composite(lv) || level >= s->nlevels + (int32_t)s->nassociated);
  if (st == TESSERA_OK && !(direct && !missing) && !beneath)
    put_tile(f, &tile, &u, rect.dst, rect.stride, NULL, missing, canvases, n);
  budget_done(b, reserved);
  return st;
}

/* Paints every tile of one image (level `level` itself, not its chain). */
static tessera_status paint_image(const tessera_slide *s, int32_t level, const struct tsr_canvas *c,
                                  struct tsr_tile_buffers *b) {
  const struct tsr_level *lv = &s->levels[level];
  int64_t tx0, ty0, tx1, ty1;
  if (!tsr_canvas_tiles(c, lv, &tx0, &ty0, &tx1, &ty1))
    return TESSERA_OK;
  for (int64_t ty = ty0; ty <= ty1; ty++) {
    for (int64_t tx = tx0; tx <= tx1; tx++) {
      tessera_status st =
          tsr_paint_tile(s, level, (uint64_t)ty * lv->across + (uint64_t)tx, &c, 1, b);
      if (st != TESSERA_OK)
        return st;
    }
  }
  return TESSERA_OK;
}

tessera_status tsr_paint_canvas(const tessera_slide *s, int32_t level, const struct tsr_canvas *c,
                                struct tsr_tile_buffers *b) {
  int32_t order[MAX_AREAS];
  size_t n = area_order(s, level, order, MAX_AREAS);
  for (size_t i = 0; i < n; i++) {
    tessera_status st = paint_image(s, order[i], c, b);
    if (st != TESSERA_OK)
      return st;
  }
  return TESSERA_OK;
}

/* Where OpenSlide 3.4.1 starts an image placed at `origin` for a region from level coordinate
 * l (its Leica paint_region: (l - origin) truncated toward zero, past the origin); false for
 * a start so far off that the image cannot be in the region. */
static bool placed_start(double l, int64_t origin, int64_t *start) {
  double d = l - (double)origin;
  if (!(d > -0x1p61 && d < 0x1p61))
    return false;
  *start = origin + (int64_t)d;
  return true;
}

tessera_status tsr_paint_placed_openslide(const tessera_slide *s, int32_t level, double lx,
                                          double ly, int64_t w, int64_t h, uint8_t *rgba,
                                          size_t stride) {
  if (!s || level < 0 || level >= s->nlevels || w < 1 || h < 1 || w > TSR_MAX_REGION_SIDE ||
      h > TSR_MAX_REGION_SIDE || stride < (size_t)w * 4)
    return tsr_error(TESSERA_E_ARGUMENT, "level %d, a %lldx%lld region", level, (long long)w,
                     (long long)h);
  struct tsr_canvas c = {.width = w, .height = h, .channels = 4, .fill = 0, .stride = stride,
                         .dst = rgba};
  tsr_canvas_fill(&c);
  /* The images as levels whose extent is the image's whole (a copy of the slide's levels, for
   * this read): OpenSlide paints an image past the level's edge. A widened image's edge tiles
   * then decode further than tessera's own reads of them: the cache keeps them apart. */
  size_t count = (size_t)s->nlevels + s->nassociated + s->nareas;
  struct tsr_level *levels = tsr_malloc(count * sizeof *levels);
  if (!levels)
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a region's levels");
  memcpy(levels, s->levels, count * sizeof *levels);
  tessera_slide wide = *s;
  wide.levels = levels;
  int32_t order[MAX_AREAS];
  size_t n = area_order(s, level, order, MAX_AREAS);
  struct tsr_tile_buffers *b = tsr_tile_buffers_get();
  tessera_status st =
      b ? TESSERA_OK : tsr_error(TESSERA_E_NOMEM, "out of memory for tile buffers");
  for (size_t i = 0; i < n && st == TESSERA_OK; i++) {
    struct tsr_level *lv = &levels[order[i]];
    if (lv->image_w > 0) {
      int64_t ex = lv->origin_x + lv->image_w, ey = lv->origin_y + lv->image_h;
      bool widened = ex > lv->width || ey > lv->height;
      lv->width = ex > lv->width ? ex : lv->width;
      lv->height = ey > lv->height ? ey : lv->height;
      if (widened)
        lv->directory ^= 0x80000000u;
    }
    /* each image from its own start, painted over the images after it in the chain */
    if (!placed_start(lx, lv->origin_x, &c.lx) || !placed_start(ly, lv->origin_y, &c.ly))
      continue;
    st = paint_image(&wide, order[i], &c, b);
  }
  if (b)
    tsr_tile_buffers_trim(b);
  tsr_free(levels);
  return st;
}

/* The tiles of one region, shared by the caller and the pool tasks of its group. Tiles are
 * claimed through `next` without a lock; each lands in its own part of the canvas. The job
 * lives on the heap and is freed by the last of the caller and the group's tasks to let go:
 * the caller cancels the group and waits only for items that are painting, never for tasks
 * still queued behind other work, which touch nothing but the group when they start. */
struct region_job {
  const tessera_slide *s; /* these are set before the group's tasks are queued, then only read */
  int32_t level;
  const struct tsr_canvas *canvas;
  int64_t tx0, ty0, across;
  uint64_t ntiles;
  struct tsr_group *group;
  atomic_uint_fast64_t next; /* the next tile number to claim */
  atomic_bool stop;          /* a tile failed: claim no more */
  pthread_mutex_t lock;      /* guards failure */
  struct tsr_failure failure;
};

static void keep_failure(struct region_job *j, tessera_status st) {
  pthread_mutex_lock(&j->lock);
  tsr_failure_keep(&j->failure, st);
  pthread_mutex_unlock(&j->lock);
  atomic_store(&j->stop, true);
}

/* Claims and paints one tile; false when none is left to claim. */
static bool paint_one(struct region_job *j, struct tsr_tile_buffers **b) {
  uint64_t i;
  if (atomic_load_explicit(&j->stop, memory_order_relaxed) ||
      (i = atomic_fetch_add(&j->next, 1)) >= j->ntiles)
    return false;
  if (!*b && !(*b = tsr_tile_buffers_get())) {
    keep_failure(j, tsr_error(TESSERA_E_NOMEM, "out of memory for tile buffers"));
    return false;
  }
  const struct tsr_level *lv = &j->s->levels[j->level];
  int64_t tx = j->tx0 + (int64_t)(i % (uint64_t)j->across);
  int64_t ty = j->ty0 + (int64_t)(i / (uint64_t)j->across);
  uint64_t index = (uint64_t)ty * lv->across + (uint64_t)tx;
  tessera_status st = tsr_paint_tile(j->s, j->level, index, &j->canvas, 1, *b);
  if (st != TESSERA_OK)
    keep_failure(j, st);
  return true;
}

/* The group's item: one tile, painted with the thread's buffers. */
static bool region_item(void *arg) {
  struct tsr_tile_buffers *b = NULL;
  bool painted = paint_one(arg, &b);
  if (b)
    tsr_tile_buffers_trim(b);
  return painted;
}

static void free_job(void *arg) {
  struct region_job *j = arg;
  pthread_mutex_destroy(&j->lock);
  tsr_free(j);
}

/* Paints every tile the canvas overlaps, with up to num_workers threads (the caller one of
 * them). */
static tessera_status paint(tessera_slide *s, int32_t level, const struct tsr_canvas *c,
                            int32_t num_workers) {
  const struct tsr_level *lv = &s->levels[level];
  int64_t tx0, ty0, tx1, ty1;
  if (!tsr_canvas_tiles(c, lv, &tx0, &ty0, &tx1, &ty1))
    return TESSERA_OK;
  if (lv->fmt.unsupported[0])
    return level < s->nlevels + (int32_t)s->nassociated
               ? tsr_error(TESSERA_E_UNSUPPORTED, "%s in level %d", lv->fmt.unsupported, level)
               : tsr_error(TESSERA_E_UNSUPPORTED, "%s in directory %u, an image placed in a level",
                           lv->fmt.unsupported, lv->directory);
  struct region_job *j = tsr_calloc(1, sizeof *j);
  if (!j)
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a region read");
  *j = (struct region_job){.s = s,
                           .level = level,
                           .canvas = c,
                           .tx0 = tx0,
                           .ty0 = ty0,
                           .across = tx1 - tx0 + 1};
  j->ntiles = (uint64_t)j->across * (uint64_t)(ty1 - ty0 + 1);
  atomic_init(&j->next, 0);
  atomic_init(&j->stop, false);
  pthread_mutex_init(&j->lock, NULL);
  uint64_t helpers = num_workers > 1 ? (uint64_t)num_workers - 1 : 0;
  if (helpers > j->ntiles - 1)
    helpers = j->ntiles - 1;
  if (helpers > 0 && !(j->group = tsr_group_create(region_item, free_job, j))) {
    free_job(j);
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a region read");
  }
  if (helpers > 0)
    tsr_group_post(j->group, (unsigned)(helpers < UINT_MAX ? helpers : UINT_MAX));
  struct tsr_tile_buffers *b = NULL;
  while (paint_one(j, &b))
    ;
  if (b)
    tsr_tile_buffers_trim(b);
  /* Every tile is claimed now: wait for those being painted by the group's tasks. */
  if (j->group) {
    tsr_group_cancel(j->group);
    tsr_group_wait_idle(j->group);
  }
  pthread_mutex_lock(&j->lock);
  tessera_status st = j->failure.status == TESSERA_OK ? TESSERA_OK : tsr_failure_raise(&j->failure);
  pthread_mutex_unlock(&j->lock);
  if (j->group)
    tsr_group_let_go(j->group);
  else
    free_job(j);
  return st;
}

tessera_status tsr_read_args(const tessera_slide *s, int64_t width, int64_t height,
                             const tessera_read_options *options, const uint8_t *dst,
                             size_t dst_size, tessera_read_options *o, size_t *stride) {
  tessera_read_options_init(o);
  tessera_status st = tsr_abi_copy_in(o, sizeof *o, options, "read options");
  if (st != TESSERA_OK)
    return st;
  if (!s || !dst)
    return tsr_error(TESSERA_E_ARGUMENT, "NULL slide or destination");
  if (width < 1 || height < 1 || width > TSR_MAX_REGION_SIDE || height > TSR_MAX_REGION_SIDE)
    return tsr_error(TESSERA_E_ARGUMENT, "region size %lldx%lld is not between 1 and 2^31",
                     (long long)width, (long long)height);
  if (o->channels != 3 && o->channels != 4)
    return tsr_error(TESSERA_E_ARGUMENT, "channels must be 3 or 4, not %d", o->channels);
  if (o->fill < -1 || o->fill > 255)
    return tsr_error(TESSERA_E_ARGUMENT, "fill must be 0..255 or -1, not %d", o->fill);
  if (o->num_workers < 0)
    return tsr_error(TESSERA_E_ARGUMENT, "num_workers must be 0 or more, not %d",
                     o->num_workers);
  size_t row, need;
  if (!tsr_mul2((size_t)width, (size_t)o->channels, &row))
    return tsr_error(TESSERA_E_ARGUMENT, "region too large");
  *stride = o->stride ? o->stride : row;
  if (*stride < row)
    return tsr_error(TESSERA_E_ARGUMENT, "stride %zu is less than a row (%zu bytes)", *stride,
                     row);
  if (!tsr_mul2(*stride, (size_t)height - 1, &need) || __builtin_add_overflow(need, row, &need))
    return tsr_error(TESSERA_E_ARGUMENT, "region too large");
  size_t pixels_bytes;
  if (!tsr_mul2(row, (size_t)height, &pixels_bytes) || pixels_bytes > s->limits.max_read_bytes)
    return tsr_error(TESSERA_E_LIMIT,
                     "a %lldx%lld region of %d channels is over the limit of %llu bytes for one "
                     "read (max_read_bytes)",
                     (long long)width, (long long)height, o->channels,
                     (unsigned long long)s->limits.max_read_bytes);
  if (dst_size < need)
    return tsr_error(TESSERA_E_ARGUMENT, "destination holds %zu bytes, the region needs %zu",
                     dst_size, need);
  return TESSERA_OK;
}

/* Reads the region whose top-left pixel is level pixel (lx, ly). */
static tessera_status read_into(tessera_slide *s, int64_t lx, int64_t ly, int32_t level,
                                int64_t width, int64_t height, const tessera_read_options *options,
                                uint8_t *dst, size_t dst_size) {
  tessera_read_options o;
  size_t stride;
  tessera_status st = tsr_read_args(s, width, height, options, dst, dst_size, &o, &stride);
  if (st != TESSERA_OK)
    return st;
  struct tsr_canvas c = {
      .lx = lx,
      .ly = ly,
      .width = width,
      .height = height,
      .channels = (unsigned)o.channels,
      .fill = (uint8_t)(o.fill < 0 ? s->background : o.fill),
      .stride = stride,
      .dst = dst,
  };
  /* Regions wholly beyond +-2^62 cannot touch a level (at most 2^24 wide): skip the sums. */
  if (c.lx > INT64_MAX / 4 || c.lx < INT64_MIN / 4 || c.ly > INT64_MAX / 4 ||
      c.ly < INT64_MIN / 4) {
    tsr_canvas_fill(&c);
    return TESSERA_OK;
  }
  if (!tsr_canvas_prepare(s, level, &c))
    return TESSERA_OK;
  /* A composite level's images one after another, each over the ones painted before it */
  int32_t order[MAX_AREAS];
  size_t n = area_order(s, level, order, MAX_AREAS);
  st = TESSERA_OK;
  for (size_t i = 0; i < n && st == TESSERA_OK; i++)
    st = paint(s, order[i], &c, o.num_workers);
  if (st != TESSERA_OK)
    tsr_canvas_fill(&c);
  return st;
}

TESSERA_API tessera_status tessera_read_region(tessera_slide *s, int64_t x, int64_t y,
                                               int32_t level, int64_t width, int64_t height,
                                               const tessera_read_options *options, uint8_t *dst,
                                               size_t dst_size) {
  if (s && (level < 0 || level >= s->nlevels))
    return tsr_error(TESSERA_E_ARGUMENT, "level %d does not exist (the slide has %d)", level,
                     s->nlevels);
  return read_into(s, s ? tsr_level_coord(&s->levels[level], x) : 0,
                   s ? tsr_level_coord(&s->levels[level], y) : 0, level, width, height, options,
                   dst, dst_size);
}

tessera_status tsr_read_level_rect(tessera_slide *s, int32_t level, int64_t lx, int64_t ly,
                                   int64_t width, int64_t height,
                                   const tessera_read_options *options, uint8_t *dst,
                                   size_t dst_size) {
  if (!s || level < 0 || level >= s->nlevels)
    return tsr_error(TESSERA_E_ARGUMENT, "NULL slide or level %d does not exist", level);
  return read_into(s, lx, ly, level, width, height, options, dst, dst_size);
}

/* The associated image of that name: its index among the slide's levels (they follow the
 * pyramid's), or -1. */
static int32_t associated_level(const tessera_slide *s, const char *name) {
  for (size_t i = 0; s && name && i < s->nassociated; i++)
    if (strcmp(s->associated[i], name) == 0)
      return s->nlevels + (int32_t)i;
  return -1;
}

static tessera_status no_associated(const tessera_slide *s, const char *name) {
  if (!s || !name)
    return tsr_error(TESSERA_E_ARGUMENT, "NULL slide or associated image name");
  return tsr_error(TESSERA_E_ARGUMENT, "the slide has no associated image named '%s'", name);
}

TESSERA_API tessera_status tessera_associated_image_dimensions(const tessera_slide *s,
                                                               const char *name, int64_t *width,
                                                               int64_t *height) {
  int32_t level = associated_level(s, name);
  if (level < 0)
    return no_associated(s, name);
  if (!width || !height)
    return tsr_error(TESSERA_E_ARGUMENT, "NULL width or height");
  *width = s->levels[level].width;
  *height = s->levels[level].height;
  return TESSERA_OK;
}

TESSERA_API tessera_status tessera_read_associated_image(tessera_slide *s, const char *name,
                                                         const tessera_read_options *options,
                                                         uint8_t *dst, size_t dst_size) {
  int32_t level = associated_level(s, name);
  if (level < 0)
    return no_associated(s, name);
  return read_into(s, 0, 0, level, s->levels[level].width, s->levels[level].height, options, dst,
                   dst_size);
}

TESSERA_API tessera_status tessera_read_level(tessera_slide *s, int32_t level,
                                              const tessera_read_options *options, uint8_t *dst,
                                              size_t dst_size) {
  if (!s)
    return tsr_error(TESSERA_E_ARGUMENT, "NULL slide");
  if (level < 0 || level >= s->nlevels)
    return tsr_error(TESSERA_E_ARGUMENT, "level %d does not exist (the slide has %d)", level,
                     s->nlevels);
  return read_into(s, 0, 0, level, s->levels[level].width, s->levels[level].height, options, dst,
                   dst_size);
}
