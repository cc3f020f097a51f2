/* Exact area averages of a level (resample.h). Everything is integer once the output pixels'
 * edges are placed on the 1/TSR_AREA_UNIT sub-pixel lattice, so a NumPy transcription of the
 * rule gives the same bytes. Separable: each band of level rows is first summed across (per
 * output column, weighted by the covered width), then down (per output row, weighted by the
 * covered height). */
#include "resample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "abi.h"
#include "alloc.h"
#include "error.h"
#include "region.h"

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
    a->edge[i] = origin * TSR_AREA_UNIT + (int64_t)floor((double)i * q + 0.5);
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

/* Sums one level row across: out[i * ch + c] = sum of w * row pixel, per output column. */
static void sum_across(const struct axis *x, const uint8_t *row, int ch, uint32_t *out) {
  for (int64_t i = 0; i < x->n; i++) {
    const uint8_t *p = row + (size_t)(x->src0[i] - x->lo) * (size_t)ch;
    uint32_t s[4] = {0, 0, 0, 0};
    for (size_t j = x->first[i]; j < x->first[i + 1]; j++, p += ch) {
      uint32_t w = x->w[j];
      s[0] += w * p[0];
      s[1] += w * p[1];
      s[2] += w * p[2];
      if (ch == 4)
        s[3] += w * p[3];
    }
    memcpy(out + (size_t)i * (size_t)ch, s, (size_t)ch * sizeof s[0]);
  }
}

tessera_status tsr_read_area(tessera_slide *s, int32_t level, int64_t lx0, int64_t ly0, double sx,
                             double sy, int64_t out_w, int64_t out_h, int channels, int fill,
                             int num_workers, uint8_t *dst, size_t stride) {
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
  if (sx == 1.0 && sy == 1.0) { /* every output pixel is one level pixel */
    tessera_read_options ro;
    tessera_read_options_init(&ro);
    ro.channels = channels;
    ro.fill = fill;
    ro.num_workers = num_workers;
    ro.stride = stride;
    return tsr_read_level_rect(s, level, lx0, ly0, out_w, out_h, &ro, dst,
                               stride * (size_t)(out_h - 1) + (size_t)out_w * (size_t)channels);
  }
  struct axis x, y;
  tessera_status st = axis_plan(&x, lx0, sx, out_w);
  if (st != TESSERA_OK)
    return st;
  st = axis_plan(&y, ly0, sy, out_h);
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
  int64_t max_src_rows = outs_per_band * per_out + 1;
  uint8_t *band = NULL;
  uint32_t *across = NULL;
  uint64_t *acc = tsr_malloc(acc_row * sizeof *acc);
  size_t band_bytes;
  if (!tsr_mul2(src_row, (size_t)max_src_rows, &band_bytes) || !acc ||
      !(band = tsr_malloc(band_bytes)) ||
      !(across = tsr_malloc(acc_row * (size_t)max_src_rows * sizeof *across))) {
    st = tsr_error(TESSERA_E_NOMEM, "out of memory for a resampled read");
    goto done;
  }
  tessera_read_options ro;
  tessera_read_options_init(&ro);
  ro.channels = channels;
  ro.fill = fill;
  ro.num_workers = num_workers;
  for (int64_t j0 = 0; j0 < out_h; j0 += outs_per_band) {
    int64_t j1 = j0 + outs_per_band < out_h ? j0 + outs_per_band : out_h;
    int64_t r0 = y.src0[j0];
    int64_t r1 = floor_div(y.edge[j1] - 1, TSR_AREA_UNIT) + 1;
    st = tsr_read_level_rect(s, level, x.lo, r0, src_w, r1 - r0, &ro, band,
                             src_row * (size_t)(r1 - r0));
    if (st != TESSERA_OK)
      goto done;
    for (int64_t r = r0; r < r1; r++)
      sum_across(&x, band + (size_t)(r - r0) * src_row, channels,
                 across + (size_t)(r - r0) * acc_row);
    for (int64_t j = j0; j < j1; j++) {
      memset(acc, 0, acc_row * sizeof *acc);
      for (size_t k = y.first[j]; k < y.first[j + 1]; k++) {
        uint64_t w = y.w[k];
        const uint32_t *a = across + (size_t)(y.src0[j] + (int64_t)(k - y.first[j]) - r0) * acc_row;
        for (size_t c = 0; c < acc_row; c++)
          acc[c] += w * a[c];
      }
      uint8_t *out = dst + (size_t)j * stride;
      for (int64_t i = 0; i < out_w; i++) {
        uint64_t den = (uint64_t)x.span[i] * y.span[j];
        /* (acc + den / 2) / den without a 64-bit division per sample (which would cost more
         * than the sums): the quotient through a double reciprocal, then corrected by one
         * step either way; sums stay below 2^53, so the estimate is never off by more. */
        double inv = 1.0 / (double)den;
        for (int c = 0; c < channels; c++) {
          size_t at = (size_t)i * (size_t)channels + (size_t)c;
          uint64_t num = acc[at] + den / 2;
          uint64_t q = (uint64_t)((double)num * inv);
          if (q * den > num)
            q--;
          else if ((q + 1) * den <= num)
            q++;
          out[at] = (uint8_t)q;
        }
      }
    }
  }
done:
  tsr_free(acc);
  tsr_free(band);
  tsr_free(across);
  axis_free(&x);
  axis_free(&y);
  return st;
}

TESSERA_API tessera_status tessera_read_region_scaled(tessera_slide *s, int64_t x, int64_t y,
                                                      int32_t level, double scale_x,
                                                      double scale_y, int64_t width,
                                                      int64_t height,
                                                      const tessera_read_options *options,
                                                      uint8_t *dst, size_t dst_size) {
  tessera_read_options o;
  tessera_read_options_init(&o);
  tessera_status st = tsr_abi_copy_in(&o, sizeof o, options, "read options");
  if (st != TESSERA_OK)
    return st;
  if (!s || !dst)
    return tsr_error(TESSERA_E_ARGUMENT, "NULL slide or destination");
  if (level < 0 || level >= s->nlevels)
    return tsr_error(TESSERA_E_ARGUMENT, "level %d does not exist (the slide has %d)", level,
                     s->nlevels);
  if (width < 1 || height < 1 || width > ((int64_t)1 << 31) || height > ((int64_t)1 << 31))
    return tsr_error(TESSERA_E_ARGUMENT, "region size %lldx%lld is not between 1 and 2^31",
                     (long long)width, (long long)height);
  if (o.channels != 3 && o.channels != 4)
    return tsr_error(TESSERA_E_ARGUMENT, "channels must be 3 or 4, not %d", o.channels);
  if (o.fill < -1 || o.fill > 255)
    return tsr_error(TESSERA_E_ARGUMENT, "fill must be 0..255 or -1, not %d", o.fill);
  size_t row, need, pixels;
  if (!tsr_mul2((size_t)width, (size_t)o.channels, &row))
    return tsr_error(TESSERA_E_ARGUMENT, "region too large");
  size_t stride = o.stride ? o.stride : row;
  if (stride < row)
    return tsr_error(TESSERA_E_ARGUMENT, "stride %zu is less than a row (%zu bytes)", stride, row);
  if (!tsr_mul2(stride, (size_t)height - 1, &need) || __builtin_add_overflow(need, row, &need))
    return tsr_error(TESSERA_E_ARGUMENT, "region too large");
  if (!tsr_mul2(row, (size_t)height, &pixels) || pixels > s->limits.max_read_bytes)
    return tsr_error(TESSERA_E_LIMIT,
                     "a %lldx%lld region of %d channels is over the limit of %llu bytes for one "
                     "read (max_read_bytes)",
                     (long long)width, (long long)height, o.channels,
                     (unsigned long long)s->limits.max_read_bytes);
  if (dst_size < need)
    return tsr_error(TESSERA_E_ARGUMENT, "destination holds %zu bytes, the region needs %zu",
                     dst_size, need);
  const struct tsr_level *lv = &s->levels[level];
  st = tsr_read_area(s, level, tsr_level_coord(lv, x), tsr_level_coord(lv, y), scale_x, scale_y,
                     width, height, o.channels, o.fill, o.num_workers, dst, stride);
  if (st != TESSERA_OK && st != TESSERA_E_ARGUMENT) {
    uint8_t fill = (uint8_t)(o.fill < 0 ? s->background : o.fill);
    for (int64_t j = 0; j < height; j++) {
      uint8_t *p = dst + (size_t)j * stride;
      for (int64_t i = 0; i < width; i++, p += o.channels) {
        memset(p, fill, 3);
        if (o.channels == 4)
          p[3] = 0;
      }
    }
  }
  return st;
}
