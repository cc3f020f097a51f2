/* Exact area averages of a level (resample.h). Everything is integer once the output pixels'
 * edges are placed on the 1/TSR_AREA_UNIT sub-pixel lattice, so a NumPy transcription of the
 * rule gives the same bytes. Separable: for each output row, its level rows are summed down
 * (weighted by the covered height), then each output pixel's columns across (weighted by the
 * covered width); the sums are integers below 2^53, held exactly in doubles. A whole-number
 * scale on the pixel lattice (every weight one whole pixel) sums k x k blocks instead. */
#include "resample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "abi.h"
#include "alloc.h"
#include "error.h"
#include "codec/codec.h"
#include "region.h"
#include "source/tile_source.h"
#include "tile.h"

/* Loops the compiler should do many bytes at a time: GCC's default at -O2 vectorises only
 * loops that need no remainder handling, so these ask for its usual cost model. */
#if defined(__GNUC__) && !defined(__clang__)
#define TSR_VECTORISE __attribute__((optimize("vect-cost-model=dynamic")))
#else
#define TSR_VECTORISE
#endif

/* Level bytes read at once, at least one output row's worth. */
#define BAND_BYTES ((size_t)16 << 20)

/* Where the output pixels' edges fall along one axis, and the weights of the level pixels
 * under each output pixel. Weights of pixel i are w[first[i] .. first[i + 1]), for the level
 * pixels from src0[i] on; its total is span[i]. */
struct axis {
  int64_t n;          /* output pixels */
  int64_t *edge;      /* n + 1 edges, in 1/TSR_AREA_UNIT level pixels, from the level's origin */
  int64_t *src0;      /* first level pixel of each output pixel */
  size_t *first;      /* n + 1 offsets into w */
  uint32_t *w;        /* weights */
  uint32_t *span;     /* edge[i + 1] - edge[i] */
  int64_t lo, hi;     /* level pixels [lo, hi) under the whole output */
};

static void axis_free(struct axis *a) {
  tsr_free(a->edge);
  tsr_free(a->src0);
  tsr_free(a->first);
  tsr_free(a->w);
  tsr_free(a->span);
}

static int64_t floor_div(int64_t a, int64_t b) { return a / b - (a % b != 0 && (a < 0) != (b < 0)); }

/* origin: in 1/TSR_AREA_UNIT level pixels. */
static tessera_status axis_plan(struct axis *a, int64_t origin, double scale, int64_t n) {
  memset(a, 0, sizeof *a);
  a->n = n;
  double q = scale * TSR_AREA_UNIT;
  a->edge = tsr_malloc((size_t)(n + 1) * sizeof *a->edge);
  a->src0 = tsr_malloc((size_t)n * sizeof *a->src0);
  a->first = tsr_malloc((size_t)(n + 1) * sizeof *a->first);
  a->span = tsr_malloc((size_t)n * sizeof *a->span);
  if (!a->edge || !a->src0 || !a->first || !a->span)
    goto nomem;
  for (int64_t i = 0; i <= n; i++)
    a->edge[i] = origin + (int64_t)floor((double)i * q + 0.5);
  size_t total = 0;
  for (int64_t i = 0; i < n; i++) {
    int64_t k0 = floor_div(a->edge[i], TSR_AREA_UNIT);
    int64_t k1 = floor_div(a->edge[i + 1] - 1, TSR_AREA_UNIT);
    a->src0[i] = k0;
    a->first[i] = total;
    total += (size_t)(k1 - k0 + 1);
  }
  a->first[n] = total;
  a->w = tsr_malloc(total * sizeof *a->w);
  if (!a->w)
    goto nomem;
  for (int64_t i = 0; i < n; i++) {
    int64_t e0 = a->edge[i], e1 = a->edge[i + 1];
    a->span[i] = (uint32_t)(e1 - e0);
    for (size_t j = a->first[i]; j < a->first[i + 1]; j++) {
      int64_t k = a->src0[i] + (int64_t)(j - a->first[i]);
      int64_t lo = k * TSR_AREA_UNIT > e0 ? k * TSR_AREA_UNIT : e0;
      int64_t hi = (k + 1) * TSR_AREA_UNIT < e1 ? (k + 1) * TSR_AREA_UNIT : e1;
      a->w[j] = (uint32_t)(hi - lo);
    }
  }
  a->lo = a->src0[0];
  a->hi = floor_div(a->edge[n] - 1, TSR_AREA_UNIT) + 1;
  return TESSERA_OK;
nomem:
  axis_free(a);
  return tsr_error(TESSERA_E_NOMEM, "out of memory planning a %lld-pixel resampled axis",
                   (long long)n);
}

/* One output row's level rows summed down with their weights: out[b] = sum over the taps of
 * w[t] * rows[t * row_bytes + b], for the n samples of a row. Every term and sum is an integer
 * below 255 times the output row's span (at most 2^22 lattice units at the largest scale), so
 * the doubles hold them exactly. */
TSR_VECTORISE static void weighted_down(const uint8_t *rows, size_t row_bytes, const uint32_t *w,
                                        size_t taps, size_t n, double *restrict out) {
  double w0 = w[0];
  for (size_t b = 0; b < n; b++)
    out[b] = w0 * rows[b];
  for (size_t t = 1; t < taps; t++) {
    const uint8_t *restrict p = rows + t * row_bytes;
    double wt = w[t];
    for (size_t b = 0; b < n; b++)
      out[b] += wt * p[b];
  }
}

/* (sum + den / 2) / den for a sum and den (an integer) held exactly in doubles: the quotient
 * through the reciprocal, then corrected by one step either way, all in doubles (every
 * product is an integer below 2^53), so no 64-bit division or conversion per sample. */
static inline double rounded_quotient(double sum, double den, double half, double inv) {
  double num = sum + half;
  double q = (double)(int32_t)(num * inv);
  double t = q * den;
  q -= t > num;
  q += t + den <= num;
  return q;
}

/* The output row from its level rows' sums down: each pixel's weighted sum across them (exact
 * in doubles: below 255 * span_x * span_y <= 2^52), then its rounded quotient by the pixel's
 * area in lattice units squared. Inlined once per channel count. */
static inline __attribute__((always_inline)) void
weighted_across(const struct axis *x, const double *down, int ch, uint64_t span_y, uint8_t *out) {
  for (int64_t i = 0; i < x->n; i++, out += ch) {
    const double *p = down + (size_t)(x->src0[i] - x->lo) * (size_t)ch;
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t j = x->first[i]; j < x->first[i + 1]; j++, p += ch) {
      double w = x->w[j];
      s0 += w * p[0];
      s1 += w * p[1];
      s2 += w * p[2];
      if (ch == 4)
        s3 += w * p[3];
    }
    uint64_t den = (uint64_t)x->span[i] * span_y;
    double d = (double)den, half = (double)(den / 2), inv = 1.0 / d;
    out[0] = (uint8_t)rounded_quotient(s0, d, half, inv);
    out[1] = (uint8_t)rounded_quotient(s1, d, half, inv);
    out[2] = (uint8_t)rounded_quotient(s2, d, half, inv);
    if (ch == 4)
      out[3] = (uint8_t)rounded_quotient(s3, d, half, inv);
  }
}

/* Where the level's pixels come from: a rectangle of them (fill outside) into dst. */
struct source {
  tessera_status (*fetch)(const struct source *src, int64_t lx, int64_t ly, int64_t w, int64_t h,
                          uint8_t *dst);
  tessera_slide *s;
  int32_t level;
  tessera_read_options ro;
  /* fast mode: an image of the level decoded at a reduced scale, held whole */
  const uint8_t *image;
  int64_t ix, iy, iw, ih; /* its top-left level pixel and size */
  uint8_t fill;
};

static tessera_status fetch_level(const struct source *src, int64_t lx, int64_t ly, int64_t w,
                                  int64_t h, uint8_t *dst) {
  return tsr_read_level_rect(src->s, src->level, lx, ly, w, h, &src->ro, dst,
                             (size_t)w * (size_t)h * (size_t)src->ro.channels);
}

/* The whole-number scale k whose output pixels are k x k blocks of level pixels (the origin on
 * a level pixel, both axes scaled by k), or 0. Every weight is then one whole pixel, and the
 * average is the block's rounded-half-up mean: box_rows gives average()'s bytes without its
 * weights. */
static int box_scale(int64_t ox, int64_t oy, double sx, double sy) {
  if (sx != sy || sx < 2.0 || sx > 64.0 || sx != floor(sx) || ox % TSR_AREA_UNIT != 0 ||
      oy % TSR_AREA_UNIT != 0)
    return 0;
  return (int)sx;
}

/* Scale 2's horizontal step: out[i] = (the sums of two neighbouring pixels' sample + 2) / 4,
 * for the m samples of a row (inlined once per channel count). */
static inline __attribute__((always_inline)) void pair_means(const uint32_t *restrict col, size_t m,
                                                             size_t ch, uint8_t *restrict out) {
  for (size_t i = 0; i < m; i += ch, col += 2 * ch)
    for (size_t c = 0; c < ch; c++)
      out[i + c] = (uint8_t)((col[c] + col[c + ch] + 2) >> 2);
}

/* Output rows [j0, j1) at whole-number scale k from band (its rows src_row bytes apart, the
 * first the level row of output row j0's first): each sample (2 * sum + k * k) / (2 * k * k),
 * which is floor((sum + k * k / 2) / (k * k)) for the block's sum. col holds a row's column
 * sums (out_w * k * channels). */
TSR_VECTORISE static void box_rows(const uint8_t *band, size_t src_row, int k, int64_t j0,
                                   int64_t j1, int64_t out_w, int channels, uint32_t *restrict col,
                                   uint8_t *dst, size_t stride) {
  size_t n = (size_t)out_w * (size_t)k * (size_t)channels, ch = (size_t)channels;
  uint32_t kk = (uint32_t)(k * k);
  for (int64_t j = j0; j < j1; j++) {
    const uint8_t *rows = band + (size_t)((j - j0) * k) * src_row;
    for (size_t b = 0; b < n; b++)
      col[b] = rows[b];
    for (int r = 1; r < k; r++) {
      const uint8_t *restrict p = rows + (size_t)r * src_row;
      for (size_t b = 0; b < n; b++)
        col[b] += p[b];
    }
    uint8_t *out = dst + (size_t)j * stride;
    size_t m = (size_t)out_w * ch;
    if (k == 2) {
      if (ch == 3)
        pair_means(col, m, 3, out);
      else
        pair_means(col, m, 4, out);
      continue;
    }
    for (size_t i = 0; i < m; i += ch) {
      const uint32_t *p = col + i * (size_t)k;
      for (size_t c = 0; c < ch; c++) {
        uint32_t sum = 0;
        for (int t = 0; t < k; t++)
          sum += p[(size_t)t * ch + c];
        out[i + c] = (uint8_t)((2 * sum + kk) / (2 * kk));
      }
    }
  }
}

/* The area average of an origin in lattice units (see resample.h), from src. */
static tessera_status average(const struct source *src, int64_t ox, int64_t oy, double sx,
                              double sy, int64_t out_w, int64_t out_h, int channels,
                              uint8_t *dst, size_t stride) {
  struct axis x, y;
  tessera_status st = axis_plan(&x, ox, sx, out_w);
  if (st != TESSERA_OK)
    return st;
  st = axis_plan(&y, oy, sy, out_h);
  if (st != TESSERA_OK) {
    axis_free(&x);
    return st;
  }
  int64_t src_w = x.hi - x.lo;
  size_t src_row = (size_t)src_w * (size_t)channels;
  size_t acc_row = (size_t)out_w * (size_t)channels;
  /* Bands of output rows whose level rows fit BAND_BYTES (at least one output row). */
  int64_t band_rows = (int64_t)(BAND_BYTES / src_row);
  int64_t per_out = (int64_t)ceil(sy) + 1;
  int64_t outs_per_band = band_rows / per_out > 0 ? band_rows / per_out : 1;
  if (outs_per_band > out_h) /* a small read allocates for itself only */
    outs_per_band = out_h;
  int64_t max_src_rows = outs_per_band * per_out + 1;
  uint8_t *band = NULL;
  int box = box_scale(ox, oy, sx, sy);
  /* the box's column sums of a row, or a row's weighted sums down */
  void *row = box ? tsr_malloc(acc_row * (size_t)box * sizeof(uint32_t))
                  : tsr_malloc(src_row * sizeof(double));
  size_t band_bytes;
  if (!tsr_mul2(src_row, (size_t)max_src_rows, &band_bytes) || !row ||
      !(band = tsr_malloc(band_bytes))) {
    st = tsr_error(TESSERA_E_NOMEM, "out of memory for a resampled read");
    goto done;
  }
  for (int64_t j0 = 0; j0 < out_h; j0 += outs_per_band) {
    int64_t j1 = j0 + outs_per_band < out_h ? j0 + outs_per_band : out_h;
    int64_t r0 = y.src0[j0];
    int64_t r1 = floor_div(y.edge[j1] - 1, TSR_AREA_UNIT) + 1;
    st = src->fetch(src, x.lo, r0, src_w, r1 - r0, band);
    if (st != TESSERA_OK)
      goto done;
    if (box) {
      box_rows(band, src_row, box, j0, j1, out_w, channels, row, dst, stride);
      continue;
    }
    for (int64_t j = j0; j < j1; j++) {
      weighted_down(band + (size_t)(y.src0[j] - r0) * src_row, src_row, y.w + y.first[j],
                    y.first[j + 1] - y.first[j], src_row, row);
      if (channels == 4)
        weighted_across(&x, row, 4, y.span[j], dst + (size_t)j * stride);
      else
        weighted_across(&x, row, 3, y.span[j], dst + (size_t)j * stride);
    }
  }
done:
  tsr_free(row);
  tsr_free(band);
  axis_free(&x);
  axis_free(&y);
  return st;
}

static tessera_status check_area_args(int64_t lx0, int64_t ly0, double sx, double sy,
                                      int64_t out_w, int64_t out_h) {
  if (!(sx >= TSR_SCALE_MIN && sx <= TSR_SCALE_MAX && sy >= TSR_SCALE_MIN && sy <= TSR_SCALE_MAX))
    return tsr_error(TESSERA_E_ARGUMENT,
                     "scale %g x %g (level pixels per output pixel) is not within %g .. %g", sx,
                     sy, TSR_SCALE_MIN, TSR_SCALE_MAX);
  if (out_w < 1 || out_h < 1 || out_w > ((int64_t)1 << 31) || out_h > ((int64_t)1 << 31))
    return tsr_error(TESSERA_E_ARGUMENT, "output size %lldx%lld is not between 1 and 2^31",
                     (long long)out_w, (long long)out_h);
  if (lx0 > ((int64_t)1 << 40) || lx0 < -((int64_t)1 << 40) || ly0 > ((int64_t)1 << 40) ||
      ly0 < -((int64_t)1 << 40))
    return tsr_error(TESSERA_E_ARGUMENT, "origin %lld,%lld is too far outside the level",
                     (long long)lx0, (long long)ly0);
  return TESSERA_OK;
}

tessera_status tsr_read_area(tessera_slide *s, int32_t level, int64_t lx0, int64_t ly0, double sx,
                             double sy, int64_t out_w, int64_t out_h, int channels, int fill,
                             int num_workers, uint8_t *dst, size_t stride) {
  tessera_status st = check_area_args(lx0, ly0, sx, sy, out_w, out_h);
  if (st != TESSERA_OK)
    return st;
  struct source src = {.fetch = fetch_level, .s = s, .level = level};
  tessera_read_options_init(&src.ro);
  src.ro.channels = channels;
  src.ro.fill = fill;
  src.ro.num_workers = num_workers;
  if (sx == 1.0 && sy == 1.0) { /* every output pixel is one level pixel */
    tessera_read_options ro = src.ro;
    ro.stride = stride;
    return tsr_read_level_rect(s, level, lx0, ly0, out_w, out_h, &ro, dst,
                               stride * (size_t)(out_h - 1) + (size_t)out_w * (size_t)channels);
  }
  return average(&src, lx0 * TSR_AREA_UNIT, ly0 * TSR_AREA_UNIT, sx, sy, out_w, out_h, channels,
                 dst, stride);
}

/* ---- fast mode: JPEG tiles decoded at 1/k by libjpeg's reduced-size IDCT --------------- */

/* Whether level's tiles can be decoded at 1/k: baseline JPEG to RGB, not already scaled, its
 * tiles a whole number of k-pixel blocks, the image the whole level. */
static bool fast_ok(const struct tsr_level *lv, unsigned k) {
  /* (a level with an image placed in it is read as regions are: origins, composites) */
  return lv->image_w == 0 && lv->fmt.compression == 7 && lv->fmt.jpeg_scale <= 1 &&
         lv->fmt.decoded_channels == 3 &&
         !lv->fmt.unsupported[0] && lv->tile_w % k == 0 && lv->tile_h % k == 0;
}

/* Fills n pixels of `channels` with fill (alpha 0). */
static void fill_pixels(uint8_t *p, int64_t n, unsigned ch, uint8_t fill) {
  memset(p, fill, (size_t)n * ch);
  if (ch == 4)
    for (int64_t i = 0; i < n; i++)
      p[4 * i + 3] = 0;
}

static tessera_status fetch_image(const struct source *src, int64_t lx, int64_t ly, int64_t w,
                                  int64_t h, uint8_t *dst) {
  unsigned ch = (unsigned)src->ro.channels;
  /* the columns inside the image: [x0, x1) of the level */
  int64_t x0 = lx > src->ix ? lx : src->ix;
  int64_t x1 = lx + w < src->ix + src->iw ? lx + w : src->ix + src->iw;
  if (x1 < x0)
    x1 = x0;
  for (int64_t r = 0; r < h; r++) {
    uint8_t *row = dst + (size_t)r * (size_t)w * ch;
    int64_t y = ly + r - src->iy;
    if (y < 0 || y >= src->ih || x1 == x0) {
      fill_pixels(row, w, ch, src->fill);
      continue;
    }
    fill_pixels(row, x0 - lx, ch, src->fill);
    const uint8_t *in = src->image + ((size_t)y * (size_t)src->iw + (size_t)(x0 - src->ix)) * 3;
    uint8_t *out = row + (size_t)(x0 - lx) * ch;
    if (ch == 3) {
      memcpy(out, in, (size_t)(x1 - x0) * 3);
    } else {
      for (int64_t i = 0; i < x1 - x0; i++) {
        memcpy(out + 4 * i, in + 3 * i, 3);
        out[4 * i + 3] = 255;
      }
    }
    fill_pixels(row + (size_t)(x1 - lx) * ch, lx + w - x1, ch, src->fill);
  }
  return TESSERA_OK;
}

/* Decodes the tiles of lv under reduced-scale rectangle [x0, x1) x [y0, y1) (pixels of the
 * level at 1/k) at 1/k into img (RGB, (x1 - x0) x (y1 - y0); fill where outside or missing). */
static tessera_status decode_reduced(tessera_slide *s, int32_t level, unsigned k, int64_t x0,
                                     int64_t y0, int64_t x1, int64_t y1, uint8_t fill,
                                     uint8_t *img) {
  const struct tsr_level *lv = &s->levels[level];
  int64_t iw = x1 - x0, ih = y1 - y0;
  memset(img, fill, (size_t)iw * (size_t)ih * 3);
  int64_t tw = lv->tile_w / k, th = lv->tile_h / k;
  int64_t lw = lv->width / k, lh = lv->height / k;
  int64_t cx0 = x0 > 0 ? x0 : 0, cy0 = y0 > 0 ? y0 : 0;
  int64_t cx1 = x1 < lw ? x1 : lw, cy1 = y1 < lh ? y1 : lh;
  if (cx0 >= cx1 || cy0 >= cy1)
    return TESSERA_OK;
  /* The limit a full decode of these tiles would be held to (tsr_tile_read's). */
  size_t tile_bytes = tsr_tile_buffer_size(lv);
  if (tile_bytes == 0 || tile_bytes > s->limits.max_decoded_tile_bytes)
    return tsr_error(TESSERA_E_LIMIT, "level %d: a decoded tile of %ux%u exceeds the limit",
                     level, lv->tile_w, lv->tile_h);
  struct tsr_pixel_format fmt = lv->fmt;
  fmt.jpeg_scale = (uint8_t)k;
  struct tsr_scratch compressed = {0};
  tessera_status st = TESSERA_OK;
  for (int64_t ty = cy0 / th; st == TESSERA_OK && ty <= (cy1 - 1) / th; ty++) {
    for (int64_t tx = cx0 / tw; st == TESSERA_OK && tx <= (cx1 - 1) / tw; tx++) {
      uint64_t index = (uint64_t)ty * lv->across + (uint64_t)tx;
      if (tsr_tile_missing(lv, index))
        continue;
      struct tsr_stream in;
      st = tsr_tile_stream(s, lv, index, &compressed, &in);
      if (st != TESSERA_OK)
        break;
      int64_t ex, ey;
      uint32_t ew, eh;
      tsr_tile_extent(lv, index, &ex, &ey, &ew, &eh);
      /* The part of this tile inside the rectangle, in reduced pixels. */
      int64_t px0 = tx * tw > cx0 ? tx * tw : cx0, py0 = ty * th > cy0 ? ty * th : cy0;
      int64_t px1 = (tx + 1) * tw < cx1 ? (tx + 1) * tw : cx1;
      int64_t py1 = (ty + 1) * th < cy1 ? (ty + 1) * th : cy1;
      struct tsr_tile_out out = {
          .pixels = img + ((size_t)(py0 - y0) * (size_t)iw + (size_t)(px0 - x0)) * 3,
          .width = (uint32_t)tw,
          .height = (uint32_t)th,
          .need_w = (uint32_t)((ew + k - 1) / k),
          .need_h = (uint32_t)((eh + k - 1) / k),
          .stride = (size_t)iw * 3,
          .crop_x = (uint32_t)(px0 - tx * tw),
          .crop_y = (uint32_t)(py0 - ty * th),
          .crop_w = (uint32_t)(px1 - px0),
          .crop_h = (uint32_t)(py1 - py0),
          .jpeg = in.jpeg,
      };
      st = tsr_codec_find(fmt.compression)(&fmt, in.data, in.len, &out);
      if (st == TESSERA_OK)
        tsr_codec_postprocess(&fmt, out.pixels, out.stride, out.crop_w, out.crop_h);
      else
        st = tsr_error_prefix(st, "level %d, tile %llu (at 1/%u): ", level,
                              (unsigned long long)index, k);
    }
  }
  tsr_scratch_free(&compressed);
  return st;
}

/* Output pixel (i, j) = the rounded-half-up mean of reduced pixels (i .. i + ax, j .. j + ay)
 * of img (RGB, rows `row` bytes apart): the exact area average where the output's edges fall
 * on reduced pixels' middles (weights 1/2 each way). Each is written as the mean of four
 * terms, (p + q + r + s + 2) >> 2, with the terms repeated along an axis without an offset
 * ((2a + 2b + 2) >> 2 is (a + b + 1) >> 1). Alpha, where asked, is 255: every pixel averaged
 * lies inside img. */
TSR_VECTORISE static void half_average(const uint8_t *restrict img, size_t row, bool ax,
                                       bool ay, int64_t out_w, int64_t out_h, int channels,
                                       uint8_t *restrict dst, size_t stride) {
  size_t dx = ax ? 3 : 0, dy = ay ? row : 0, n = (size_t)out_w * 3;
  for (int64_t j = 0; j < out_h; j++) {
    const uint8_t *p = img + (size_t)j * row, *q = p + dx, *r = p + dy, *t = r + dx;
    uint8_t *out = dst + (size_t)j * stride;
    if (channels == 3) {
      for (size_t i = 0; i < n; i++)
        out[i] = (uint8_t)((p[i] + q[i] + r[i] + t[i] + 2) >> 2);
    } else {
      for (int64_t i = 0; i < out_w; i++) {
        for (size_t c = 0; c < 3; c++) {
          size_t k = 3 * (size_t)i + c;
          out[4 * i + (int64_t)c] = (uint8_t)((p[k] + q[k] + r[k] + t[k] + 2) >> 2);
        }
        out[4 * i + 3] = 255;
      }
    }
  }
}

/* The fast mode's read: true in *done when it applied (the scale reaches 2 and the level's
 * tiles allow it), else the caller reads exactly. */
static tessera_status read_fast(tessera_slide *s, int32_t level, int64_t lx0, int64_t ly0,
                                double sx, double sy, int64_t out_w, int64_t out_h, int channels,
                                uint8_t fill, uint8_t *dst, size_t stride, bool *done) {
  *done = false;
  const struct tsr_level *lv = &s->levels[level];
  double m = sx < sy ? sx : sy;
  unsigned k = m >= 8.0 ? 8 : m >= 4.0 ? 4 : m >= 2.0 ? 2 : 1;
  while (k > 1 && !fast_ok(lv, k))
    k /= 2;
  if (k == 1)
    return TESSERA_OK;
  /* The reduced level: origin lx0 / k exactly on the lattice (k divides TSR_AREA_UNIT). */
  int64_t ox = lx0 * (TSR_AREA_UNIT / k), oy = ly0 * (TSR_AREA_UNIT / k);
  double rsx = sx / k, rsy = sy / k;
  int64_t x0 = floor_div(ox, TSR_AREA_UNIT), y0 = floor_div(oy, TSR_AREA_UNIT);
  int64_t x1 = floor_div(ox + (int64_t)floor((double)out_w * rsx * TSR_AREA_UNIT + 0.5) - 1,
                         TSR_AREA_UNIT) + 1;
  int64_t y1 = floor_div(oy + (int64_t)floor((double)out_h * rsy * TSR_AREA_UNIT + 0.5) - 1,
                         TSR_AREA_UNIT) + 1;
  size_t bytes;
  if (!tsr_mul3((size_t)(x1 - x0), (size_t)(y1 - y0), 3, &bytes) || bytes > BAND_BYTES * 4)
    return TESSERA_OK; /* large reads go the exact way, in bands */
  uint8_t *img = tsr_malloc(bytes);
  if (!img)
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a fast resampled read");
  tessera_status st = decode_reduced(s, level, k, x0, y0, x1, y1, fill, img);
  if (st == TESSERA_OK && rsx == 1.0 && rsy == 1.0 && ox % TSR_AREA_UNIT == 0 &&
      oy % TSR_AREA_UNIT == 0) {
    /* The reduced pixels are the output's: copied, not averaged. */
    struct source src = {.image = img, .ix = x0, .iy = y0, .iw = x1 - x0, .ih = y1 - y0,
                         .fill = fill};
    src.ro.channels = channels;
    if (stride == (size_t)out_w * (size_t)channels && channels == 3) {
      memcpy(dst, img, (size_t)out_w * (size_t)out_h * 3);
    } else {
      for (int64_t r = 0; r < out_h; r++)
        fetch_image(&src, x0, y0 + r, out_w, 1, dst + (size_t)r * stride);
    }
  } else if (st == TESSERA_OK && rsx == 1.0 && rsy == 1.0 &&
             (ox - x0 * TSR_AREA_UNIT) % (TSR_AREA_UNIT / 2) == 0 &&
             (oy - y0 * TSR_AREA_UNIT) % (TSR_AREA_UNIT / 2) == 0) {
    /* Half a reduced pixel off (an odd level corner at 1/2): the area average of two or four
     * reduced pixels with equal weights, done directly; the same bytes as average(). */
    half_average(img, (size_t)(x1 - x0) * 3, ox != x0 * TSR_AREA_UNIT,
                 oy != y0 * TSR_AREA_UNIT, out_w, out_h, channels, dst, stride);
  } else if (st == TESSERA_OK) {
    struct source src = {.fetch = fetch_image, .image = img, .ix = x0, .iy = y0,
                         .iw = x1 - x0, .ih = y1 - y0, .fill = fill};
    src.ro.channels = channels;
    st = average(&src, ox, oy, rsx, rsy, out_w, out_h, channels, dst, stride);
  }
  tsr_free(img);
  *done = st == TESSERA_OK;
  return st;
}

TESSERA_API tessera_status tessera_read_region_scaled(tessera_slide *s, int64_t x, int64_t y,
                                                      int32_t level, double scale_x,
                                                      double scale_y, int64_t width,
                                                      int64_t height,
                                                      const tessera_read_options *options,
                                                      uint8_t *dst, size_t dst_size) {
  tessera_read_options o;
  size_t stride;
  tessera_status st = tsr_read_args(s, width, height, options, dst, dst_size, &o, &stride);
  if (st != TESSERA_OK)
    return st;
  if (level < 0 || level >= s->nlevels)
    return tsr_error(TESSERA_E_ARGUMENT, "level %d does not exist (the slide has %d)", level,
                     s->nlevels);
  const struct tsr_level *lv = &s->levels[level];
  int64_t lx = tsr_level_coord(lv, x), ly = tsr_level_coord(lv, y);
  bool done = false;
  if (o.fast_jpeg) {
    if ((st = check_area_args(lx, ly, scale_x, scale_y, width, height)) != TESSERA_OK)
      return st;
    st = read_fast(s, level, lx, ly, scale_x, scale_y, width, height, o.channels,
                   (uint8_t)(o.fill < 0 ? s->background : o.fill), dst, stride, &done);
  }
  if (!done && st == TESSERA_OK)
    st = tsr_read_area(s, level, lx, ly, scale_x, scale_y, width, height, o.channels, o.fill,
                       o.num_workers, dst, stride);
  if (st != TESSERA_OK && st != TESSERA_E_ARGUMENT) {
    struct tsr_canvas c = {.width = width,
                           .height = height,
                           .channels = (unsigned)o.channels,
                           .fill = (uint8_t)(o.fill < 0 ? s->background : o.fill),
                           .stride = stride,
                           .dst = dst};
    tsr_canvas_fill(&c);
  }
  return st;
}

/* An image in memory as a source: its pixels, channels as the output's. */
struct memory_source {
  struct source base;
  const uint8_t *pixels;
  int64_t w, h;
  size_t stride;
};

static tessera_status fetch_memory(const struct source *src, int64_t lx, int64_t ly, int64_t w,
                                   int64_t h, uint8_t *dst) {
  const struct memory_source *m = (const struct memory_source *)src;
  size_t ch = (size_t)src->ro.channels;
  /* the columns inside the image (past it: the edge pixels' fill, alpha too) */
  int64_t x0 = lx > 0 ? lx : 0, x1 = lx + w < m->w ? lx + w : m->w;
  if (x1 < x0)
    x1 = x0;
  size_t before = (size_t)(x0 - lx) * ch, inside = (size_t)(x1 - x0) * ch;
  size_t row_bytes = (size_t)w * ch;
  for (int64_t r = 0; r < h; r++) {
    uint8_t *row = dst + (size_t)r * row_bytes;
    int64_t y = ly + r;
    if (y < 0 || y >= m->h || inside == 0) {
      memset(row, src->fill, row_bytes);
      continue;
    }
    memset(row, src->fill, before);
    memcpy(row + before, m->pixels + (size_t)y * m->stride + (size_t)x0 * ch, inside);
    memset(row + before + inside, src->fill, row_bytes - before - inside);
  }
  return TESSERA_OK;
}

TESSERA_API tessera_status tessera_resample_area(const uint8_t *src, int64_t src_width,
                                                 int64_t src_height, size_t src_stride,
                                                 int32_t channels, double scale_x,
                                                 double scale_y, int64_t width, int64_t height,
                                                 uint8_t *dst, size_t dst_stride) {
  if (!src || !dst)
    return tsr_error(TESSERA_E_ARGUMENT, "NULL source or destination");
  if (channels != 3 && channels != 4)
    return tsr_error(TESSERA_E_ARGUMENT, "channels must be 3 or 4, not %d", channels);
  if (src_width < 1 || src_height < 1 || src_stride < (size_t)src_width * (size_t)channels ||
      dst_stride < (size_t)width * (size_t)channels)
    return tsr_error(TESSERA_E_ARGUMENT, "bad source size or strides");
  tessera_status st = check_area_args(0, 0, scale_x, scale_y, width, height);
  if (st != TESSERA_OK)
    return st;
  /* The source must hold every pixel the output covers: up to its last edge. */
  int64_t last_x = (int64_t)floor((double)width * (scale_x * TSR_AREA_UNIT) + 0.5);
  int64_t last_y = (int64_t)floor((double)height * (scale_y * TSR_AREA_UNIT) + 0.5);
  int64_t need_w = (last_x + TSR_AREA_UNIT - 1) / TSR_AREA_UNIT;
  int64_t need_h = (last_y + TSR_AREA_UNIT - 1) / TSR_AREA_UNIT;
  if (src_width < need_w || src_height < need_h)
    return tsr_error(TESSERA_E_ARGUMENT,
                     "a %lldx%lld image at scale %g x %g needs a source of %lldx%lld, not "
                     "%lldx%lld",
                     (long long)width, (long long)height, scale_x, scale_y, (long long)need_w,
                     (long long)need_h, (long long)src_width, (long long)src_height);
  struct memory_source m = {.base = {.fetch = fetch_memory, .fill = 0},
                            .pixels = src, .w = src_width, .h = src_height, .stride = src_stride};
  m.base.ro.channels = channels;
  return average(&m.base, 0, 0, scale_x, scale_y, width, height, channels, dst, dst_stride);
}
