/* Tiles to a region: clipping to the level, fill outside, channel conversion into the
 * caller's buffer. */
#include <math.h>
#include <string.h>

#include "alloc.h"
#include "error.h"
#include "slide_internal.h"
#include "thread_slot.h"
#include "tile.h"

/* Buffers a thread reuses from read to read, so a steady stream of reads allocates nothing:
 * the decoded tile and the compressed bytes. Only their own thread touches them. */
struct read_buffers {
  uint8_t *tile;
  size_t tile_cap;
  struct tsr_scratch compressed;
};

/* Larger buffers (a whole-level strip) are given back after the read instead of being kept
 * for the thread's life. */
#define TSR_KEEP_BUFFER_BYTES ((size_t)64 << 20)

static void destroy_buffers(void *p) {
  struct read_buffers *b = p;
  tsr_free(b->tile);
  tsr_scratch_free(&b->compressed);
  tsr_free(b);
}

static void *create_buffers(void) { return tsr_calloc(1, sizeof(struct read_buffers)); }

static struct tsr_thread_slot buffers_slot = TSR_THREAD_SLOT_INIT(destroy_buffers);

static void trim_buffers(struct read_buffers *b) {
  if (b->tile_cap > TSR_KEEP_BUFFER_BYTES) {
    tsr_free(b->tile);
    b->tile = NULL;
    b->tile_cap = 0;
  }
  if (b->compressed.cap > TSR_KEEP_BUFFER_BYTES)
    tsr_scratch_free(&b->compressed);
}

/* Widest region one call accepts on either side, so size arithmetic stays far from overflow. */
#define TSR_MAX_REGION_SIDE ((int64_t)1 << 31)

TESSERA_API void tessera_read_options_init(tessera_read_options *o) {
  if (!o)
    return;
  memset(o, 0, sizeof *o);
  o->struct_size = sizeof *o;
  o->channels = 3;
  o->fill = -1;
  o->stride = 0;
}

struct region {
  int64_t lx, ly; /* level origin of the region */
  int64_t width, height;
  unsigned channels;
  uint8_t fill;
  size_t stride;
  uint8_t *dst;
};

static void fill_region(const struct region *r) {
  size_t row = (size_t)r->width * r->channels;
  for (int64_t y = 0; y < r->height; y++) {
    uint8_t *p = r->dst + (size_t)y * r->stride;
    if (r->channels == 3) {
      memset(p, r->fill, row);
    } else {
      for (int64_t x = 0; x < r->width; x++, p += 4) {
        p[0] = p[1] = p[2] = r->fill;
        p[3] = 0;
      }
    }
  }
}

/* Copies n pixels of `src_ch` decoded channels into `dst_ch` output channels. */
static void convert_row(const uint8_t *src, unsigned src_ch, bool alpha, uint8_t *dst,
                        unsigned dst_ch, size_t n) {
  if (src_ch == dst_ch && (alpha || src_ch == 3)) {
    memcpy(dst, src, n * src_ch);
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

static void copy_tile(const struct region *r, const struct tsr_level *lv, const uint8_t *tile,
                      int64_t tx, int64_t ty, uint32_t tw, uint32_t th) {
  int64_t x0 = tx > r->lx ? tx : r->lx,
          x1 = tx + tw < r->lx + r->width ? tx + tw : r->lx + r->width;
  int64_t y0 = ty > r->ly ? ty : r->ly,
          y1 = ty + th < r->ly + r->height ? ty + th : r->ly + r->height;
  unsigned sc = lv->fmt.decoded_channels;
  size_t src_row = (size_t)lv->tile_w * sc;
  for (int64_t y = y0; y < y1; y++) {
    const uint8_t *src = tile + (size_t)(y - ty) * src_row + (size_t)(x0 - tx) * sc;
    uint8_t *dst = r->dst + (size_t)(y - r->ly) * r->stride + (size_t)(x0 - r->lx) * r->channels;
    convert_row(src, sc, lv->fmt.alpha, dst, r->channels, (size_t)(x1 - x0));
  }
}

static tessera_status paint(tessera_slide *s, int32_t level, const struct region *r) {
  const struct tsr_level *lv = &s->levels[level];
  int64_t x0 = r->lx > 0 ? r->lx : 0, y0 = r->ly > 0 ? r->ly : 0;
  int64_t x1 = r->lx + r->width < lv->width ? r->lx + r->width : lv->width;
  int64_t y1 = r->ly + r->height < lv->height ? r->ly + r->height : lv->height;
  if (x0 >= x1 || y0 >= y1)
    return TESSERA_OK;
  if (lv->fmt.unsupported[0])
    return tsr_error(TESSERA_E_UNSUPPORTED, "%s in level %d", lv->fmt.unsupported, level);
  size_t tile_bytes = tsr_tile_buffer_size(lv);
  if (tile_bytes == 0 || tile_bytes > s->limits.max_decoded_tile_bytes)
    return tsr_error(TESSERA_E_LIMIT, "level %d: a decoded %s of %ux%u exceeds the limit", level,
                     lv->tiled ? "tile" : "strip", lv->tile_w, lv->tile_h);
  struct read_buffers *b = tsr_thread_slot_get(&buffers_slot, create_buffers);
  if (!b)
    return tsr_error(TESSERA_E_NOMEM, "out of memory for read buffers");
  if (b->tile_cap < tile_bytes) {
    uint8_t *t = tsr_realloc(b->tile, tile_bytes);
    if (!t)
      return tsr_error(TESSERA_E_NOMEM, "out of memory for a %zu-byte tile", tile_bytes);
    b->tile = t;
    b->tile_cap = tile_bytes;
  }
  uint8_t *tile = b->tile;
  tessera_status st = TESSERA_OK;
  for (int64_t ty = y0 / lv->tile_h; ty <= (y1 - 1) / lv->tile_h && st == TESSERA_OK; ty++) {
    for (int64_t tx = x0 / lv->tile_w; tx <= (x1 - 1) / lv->tile_w; tx++) {
      uint64_t index = (uint64_t)ty * lv->across + (uint64_t)tx;
      bool missing;
      if ((st = tsr_tile_decode(s, level, index, &b->compressed, tile, &missing)) != TESSERA_OK)
        break;
      if (missing)
        continue; /* stays background, alpha 0: nothing was scanned there */
      int64_t ox, oy;
      uint32_t w, h;
      tsr_tile_extent(lv, index, &ox, &oy, &w, &h);
      copy_tile(r, lv, tile, ox, oy, w, h);
    }
  }
  trim_buffers(b);
  return st;
}

TESSERA_API tessera_status tessera_read_region(tessera_slide *s, int64_t x, int64_t y,
                                               int32_t level, int64_t width, int64_t height,
                                               const tessera_read_options *options, uint8_t *dst,
                                               size_t dst_size) {
  tessera_read_options o;
  tessera_read_options_init(&o);
  if (options) {
    if (options->struct_size < sizeof(size_t))
      return tsr_error(TESSERA_E_ARGUMENT, "read options without struct_size");
    memcpy(&o, options, options->struct_size < sizeof o ? options->struct_size : sizeof o);
  }
  if (!s || !dst)
    return tsr_error(TESSERA_E_ARGUMENT, "NULL slide or destination");
  if (level < 0 || level >= s->nlevels)
    return tsr_error(TESSERA_E_ARGUMENT, "level %d does not exist (the slide has %d)", level,
                     s->nlevels);
  if (width < 1 || height < 1 || width > TSR_MAX_REGION_SIDE || height > TSR_MAX_REGION_SIDE)
    return tsr_error(TESSERA_E_ARGUMENT, "region size %lldx%lld is not between 1 and 2^31",
                     (long long)width, (long long)height);
  if (o.channels != 3 && o.channels != 4)
    return tsr_error(TESSERA_E_ARGUMENT, "channels must be 3 or 4, not %d", o.channels);
  if (o.fill < -1 || o.fill > 255)
    return tsr_error(TESSERA_E_ARGUMENT, "fill must be 0..255 or -1, not %d", o.fill);
  size_t row, need;
  if (!tsr_mul2((size_t)width, (size_t)o.channels, &row))
    return tsr_error(TESSERA_E_ARGUMENT, "region too large");
  size_t stride = o.stride ? o.stride : row;
  if (stride < row)
    return tsr_error(TESSERA_E_ARGUMENT, "stride %zu is less than a row (%zu bytes)", stride, row);
  if (!tsr_mul2(stride, (size_t)height - 1, &need) || __builtin_add_overflow(need, row, &need))
    return tsr_error(TESSERA_E_ARGUMENT, "region too large");
  if (dst_size < need)
    return tsr_error(TESSERA_E_ARGUMENT, "destination holds %zu bytes, the region needs %zu",
                     dst_size, need);
  const struct tsr_level *lv = &s->levels[level];
  struct region r = {
      .lx = level == 0 ? x : (int64_t)floor((double)x / lv->downsample),
      .ly = level == 0 ? y : (int64_t)floor((double)y / lv->downsample),
      .width = width,
      .height = height,
      .channels = (unsigned)o.channels,
      .fill = (uint8_t)(o.fill < 0 ? s->background : o.fill),
      .stride = stride,
      .dst = dst,
  };
  fill_region(&r);
  /* Regions wholly beyond +-2^62 cannot touch a level (at most 2^24 wide): skip the sums. */
  if (r.lx > INT64_MAX / 4 || r.lx < INT64_MIN / 4 || r.ly > INT64_MAX / 4 || r.ly < INT64_MIN / 4)
    return TESSERA_OK;
  tessera_status st = paint(s, level, &r);
  if (st != TESSERA_OK)
    fill_region(&r);
  return st;
}
