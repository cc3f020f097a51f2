/* Tissue masks (tessera.h, "Tissue masks"; docs/TISSUE.md). One pass reads the chosen level
 * area-averaged to the mask's pixels (resample.c); everything after works on the mask's few
 * pixels: classes, an Otsu threshold from a 256-bin histogram, and two connected-component
 * sweeps (specks, then holes) over runs of rows. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "abi.h"
#include "alloc.h"
#include "error.h"
#include "mpp.h"
#include "resample.h"
#include "slide_internal.h"

#define MASK_SIDE_MAX ((int64_t)1 << 31)
#define DEFAULT_MASK_MPP 8.0
#define DEFAULT_MASK_DOWNSAMPLE 32.0
#define DARKFIELD_MEDIAN 64 /* below this median brightness a slide is taken as dark-field */

/* PEN_CANDIDATE lasts only within classify. */
enum pixel_class { NOT_TISSUE = 0, TISSUE = 1, EXCLUDED = 2, PEN_CANDIDATE = 3 };
/* A tissue pixel's byte in the mask (from the threshold on; anything else is 0). */
#define ON 255

TESSERA_API void tessera_tissue_options_init_sized(tessera_tissue_options *o, size_t size) {
  static const tessera_tissue_options defaults = {
      .struct_size = sizeof defaults,
      .mpp = 0.0,
      .downsample = 0.0,
      .mode = TESSERA_TISSUE_AUTO,
      .background_tolerance = 10,
      .black_max = 40,
      .pen_min_saturation = 110,
      .pen_hue_min = 70.0,
      .pen_hue_max = 250.0,
      .min_threshold = 12,
      .min_tissue_area = 10000.0,
      .max_hole_area = 40000.0,
      .num_workers = 0,
  };
  tsr_abi_init(o, size, &defaults, sizeof defaults);
}

TESSERA_API void tessera_mask_free(tessera_mask *m) {
  if (!m)
    return;
  tsr_free(m->data);
  tsr_free(m);
}

static tessera_status check_options(const tessera_tissue_options *o) {
  if (!(o->mpp >= 0.0 && isfinite(o->mpp)) || !(o->downsample >= 0.0 && isfinite(o->downsample)))
    return tsr_error(TESSERA_E_ARGUMENT, "tissue mask: mpp and downsample must be >= 0");
  if (o->mode < TESSERA_TISSUE_AUTO || o->mode > TESSERA_TISSUE_DARKFIELD)
    return tsr_error(TESSERA_E_ARGUMENT, "tissue mask: unknown mode %d", o->mode);
  if (o->background_tolerance < 0 || o->background_tolerance > 255 || o->black_max < -1 ||
      o->black_max > 255 || o->pen_min_saturation < 0 || o->pen_min_saturation > 256 ||
      o->min_threshold < 0 || o->min_threshold > 255)
    return tsr_error(TESSERA_E_ARGUMENT,
                     "tissue mask: background_tolerance, black_max (or -1), pen_min_saturation "
                     "(or 256) and min_threshold are 0..255");
  if (!(o->pen_hue_min >= 0.0 && o->pen_hue_max <= 360.0 && o->pen_hue_min <= o->pen_hue_max))
    return tsr_error(TESSERA_E_ARGUMENT,
                     "tissue mask: the pen hues must satisfy 0 <= pen_hue_min <= pen_hue_max "
                     "<= 360");
  if (!(o->min_tissue_area >= 0.0 && isfinite(o->min_tissue_area)) ||
      !(o->max_hole_area >= 0.0 && isfinite(o->max_hole_area)))
    return tsr_error(TESSERA_E_ARGUMENT, "tissue mask: areas must be finite and >= 0");
  if (o->num_workers < 0)
    return tsr_error(TESSERA_E_ARGUMENT, "tissue mask: num_workers must be >= 0");
  return TESSERA_OK;
}

/* Otsu's threshold over a 256-bin histogram: the t maximising the between-class variance of
 * {v <= t} and {v > t}; the first such t. 0 when the histogram is empty. */
static int otsu(const uint64_t hist[256]) {
  double total = 0.0, sum = 0.0;
  for (int v = 0; v < 256; v++) {
    total += (double)hist[v];
    sum += (double)v * (double)hist[v];
  }
  double w0 = 0.0, sum0 = 0.0, best = -1.0;
  int t_best = 0;
  for (int t = 0; t < 255; t++) {
    w0 += (double)hist[t];
    sum0 += (double)t * (double)hist[t];
    double w1 = total - w0;
    if (w0 == 0.0 || w1 == 0.0)
      continue;
    double d = sum0 * total - sum * w0; /* (mean0 - mean) * w0 * total */
    double between = d * d / (w0 * w1);
    if (between > best) {
      best = between;
      t_best = t;
    }
  }
  return t_best;
}

/* Hue in degrees [0, 360) of an RGB pixel with max > min. */
static double hue(int r, int g, int b, int mx, int mn) {
  double d = (double)(mx - mn), h;
  if (mx == r)
    h = (double)(g - b) / d;
  else if (mx == g)
    h = (double)(b - r) / d + 2.0;
  else
    h = (double)(r - g) / d + 4.0;
  h *= 60.0;
  return h < 0.0 ? h + 360.0 : h;
}

#if defined(__GNUC__)
#define TSR_INLINE static inline __attribute__((always_inline))
#else
#define TSR_INLINE static inline
#endif

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ && defined(__GNUC__)
#define SWAR 1 /* eight bytes a step, the first of them in the word's low byte */
static const uint64_t ONES = 0x0101010101010101u, HIGHS = 0x8080808080808080u;
#endif

/* Loops the compiler should do many pixels at a time: GCC's default at -O2 vectorises only
 * loops that need no remainder handling, so these ask for its usual cost model. */
#if defined(__GNUC__) && !defined(__clang__)
#define TSR_VECTORISE __attribute__((optimize("vect-cost-model=dynamic")))
#else
#define TSR_VECTORISE
#endif

/* The mask's bytes from the values and the excluded pixels' bits (bit i & 7 of bits[i >> 3]):
 * ON (255) where the value is above t and the pixel is not excluded, else 0; in place. `on`
 * says how many values are above t (the histogram knows); returns how many are ON. */
TSR_VECTORISE static void above(uint8_t *restrict value, size_t n, uint8_t t) {
  for (size_t i = 0; i < n; i++)
    value[i] = (uint8_t) - (value[i] > t);
}

static size_t threshold(uint8_t *value, const uint8_t *bits, size_t n, uint8_t t, size_t on) {
  size_t i = 0;
  above(value, n, t);
#ifdef SWAR
  for (; i + 8 <= n; i += 8) {
    if (!bits[i >> 3]) /* none excluded: most of them */
      continue;
    /* Bit k of the byte to byte k (0 or 0xff). */
    uint64_t x, spread = ((uint64_t)bits[i >> 3] * ONES) & 0x8040201008040201u;
    uint64_t ex = (((spread + 0x7f7f7f7f7f7f7f7fu) & HIGHS) >> 7) * 0xff;
    memcpy(&x, value + i, 8);
    on -= (size_t)__builtin_popcountll(x & ex) >> 3;
    x &= ~ex;
    memcpy(value + i, &x, 8);
  }
#endif
  for (; i < n; i++)
    if (bits[i >> 3] >> (i & 7) & 1) {
      on -= value[i] == ON;
      value[i] = 0;
    }
  return on;
}

/* The first i from i (or n) with p[i] == v: eight bytes a step (no byte of the word equal to v
 * leaves no zero byte in word ^ v, and the lowest flagged byte of the zero-byte test is
 * exact). */
TSR_INLINE int next_byte(const uint8_t *p, int i, int n, uint8_t v) {
#ifdef SWAR
  for (; i + 8 <= n; i += 8) {
    uint64_t x;
    memcpy(&x, p + i, 8);
    x ^= ONES * v;
    uint64_t zero = (x - ONES) & ~x & HIGHS;
    if (zero)
      return i + (__builtin_ctzll(zero) >> 3);
  }
#endif
  while (i < n && p[i] != v)
    i++;
  return i;
}

/* Pixels classified at once: copied apart into one array per channel first, so the classes
 * and saturations of a block are plain loops over bytes that the compiler does many at a time
 * (the interleaved RGB would not let it). */
#define BLOCK 256

/* One pixel's class and saturation, in bytes where the values allow (so that the compiler
 * does as many pixels at once as a vector has bytes) and in floats for the quotient. The
 * parameters are bytes with on/off flags: black_on (black_max >= 0), pen_on
 * (pen_min_saturation <= 255). */
#define CLASSIFY_PIXEL(rr, gg, bb)                                                            \
  do {                                                                                      \
    uint8_t r_ = (rr), g_ = (gg), b_ = (bb);                                                \
    uint8_t mx = r_ > g_ ? r_ : g_;                                                         \
    mx = mx > b_ ? mx : b_;                                                                 \
    uint8_t mn = r_ < g_ ? r_ : g_;                                                         \
    mn = mn < b_ ? mn : b_;                                                                 \
    int den = mx > 1 ? mx : 1; /* (a conditional inside the cast stops GCC vectorising) */ \
    uint8_t s_ = (uint8_t)(int)((float)(255 * (mx - mn)) / (float)den);                   \
    uint8_t dr = r_ > bg ? r_ - bg : bg - r_;                                               \
    uint8_t dg = g_ > bg ? g_ - bg : bg - g_;                                               \
    uint8_t db = b_ > bg ? b_ - bg : bg - b_;                                               \
    uint8_t d = dr > dg ? dr : dg;                                                          \
    d = d > db ? d : db;                                                                    \
    uint8_t excluded = (uint8_t)((d <= tol) | ((mx <= black) & black_on));                  \
    uint8_t pen = (uint8_t)((excluded ^ 1) & (s_ >= pen_sat) & pen_on & (s_ > 0));          \
    pen_any |= pen;                                                                         \
    dim += (uint8_t)((mx < DARKFIELD_MEDIAN) & w7[i]);                                      \
    excluded_any |= excluded;                                                               \
    sat[i] = (uint8_t)(s_ & (uint8_t)((excluded & zero_ex) - 1));                           \
    cls[i] = (uint8_t)(excluded * EXCLUDED + pen * PEN_CANDIDATE);                          \
  } while (0)

/* Saturation floor(255 * (max - min) / max) as a float quotient: both operands are exact in a
 * float, the quotient is below 256 so its rounding error is under 2^-16, and a quotient that
 * is not a whole number is at least 1 / max >= 1 / 255 from one; so the truncation is the
 * exact floor, the same as the integer division's. */
TSR_VECTORISE static void classify_block(const uint8_t *restrict r, const uint8_t *restrict g,
                                         const uint8_t *restrict b, int nb, uint8_t bg,
                                         uint8_t tol, uint8_t black, uint8_t black_on,
                                         uint8_t pen_sat, uint8_t pen_on,
                                         uint8_t zero_ex, uint8_t *restrict cls, uint8_t *restrict sat,
                                         const uint8_t *restrict w7, uint8_t *dims, uint8_t *any_pen,
    uint8_t *any_excluded) {
  uint8_t pen_any = 0, excluded_any = 0, dim = 0;
  for (int i = 0; i < nb; i++)
    CLASSIFY_PIXEL(r[i], g[i], b[i]);
  *dims = dim;
  *any_pen = pen_any;
  *any_excluded = excluded_any;
}

#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#define TSR_CLASSIFY_AVX2 1
/* classify_block over interleaved RGB, for processors with AVX2 (chosen at run time): its
 * shuffles take the channels apart, which SSE2 cannot do well, so the baseline build copies
 * them apart first. The same arithmetic. */
TSR_VECTORISE __attribute__((target("avx2"))) static void classify_rgb_avx2(
    const uint8_t *restrict rgb, int nb, uint8_t bg, uint8_t tol, uint8_t black,
    uint8_t black_on, uint8_t pen_sat, uint8_t pen_on, uint8_t zero_ex, uint8_t *restrict cls,
    uint8_t *restrict sat, const uint8_t *restrict w7, uint8_t *dims, uint8_t *any_pen,
    uint8_t *any_excluded) {
  uint8_t pen_any = 0, excluded_any = 0, dim = 0;
  for (int i = 0; i < nb; i++)
    CLASSIFY_PIXEL(rgb[3 * i], rgb[3 * i + 1], rgb[3 * i + 2]);
  *dims = dim;
  *any_pen = pen_any;
  *any_excluded = excluded_any;
}
#endif

/* What a block of n RGB pixels (bytes p[0 .. 3n)) holds, in one vectorised look: the largest
 * and smallest difference of a byte from bg, the smallest byte, and whether any pixel is not
 * grey (R, G and B not all equal). Blocks of glass, all background or all one grey, then need
 * no classifying. Reads the byte after the block too (RGB_SLACK). */
struct block_look {
  uint8_t far, near, low, colour;
};

/* Constant tables (no set-up to race over between threads). SAME_PIXEL[j]: 0xff where bytes
 * j and j + 1 of interleaved RGB are of one pixel, else 0; SEVENTHS[j]: 1 where j is a multiple
 * of 7. */
#define X4(a) a, a, a, a
#define X10(a) a, a, a, a, a, a, a, a, a, a
_Static_assert(BLOCK == 256, "SAME_PIXEL holds 256 pixels");
#define PIXEL 0xff, 0xff, 0
#define WEEK 1, 0, 0, 0, 0, 0, 0
static const uint8_t SAME_PIXEL[3 * BLOCK] = {X4(X4(X4(X4(PIXEL))))};
static const uint8_t SEVENTHS[280] = {X4(X10(WEEK))}; /* >= BLOCK + 7 */
#undef X4
#undef X10
#undef PIXEL
#undef WEEK

#define LOOK_BODY                                                                           \
  uint8_t far = 0, near = 255, low = 255, colour = 0;                                       \
  for (int j = 0; j < n3; j++) {                                                            \
    uint8_t v = p[j], d = v > bg ? v - bg : bg - v;                                         \
    far = far > d ? far : d;                                                                \
    near = near < d ? near : d;                                                             \
    low = low < v ? low : v;                                                                \
  }                                                                                         \
  for (int j = 0; j < n3; j++) /* (p[n3] is read, but same[n3 - 1] is 0) */               \
    colour |= (uint8_t)((p[j] ^ p[j + 1]) & same[j]);                                       \
  out->far = far;                                                                           \
  out->near = near;                                                                         \
  out->low = low;                                                                           \
  out->colour = colour;

TSR_VECTORISE static void look(const uint8_t *restrict p, int n3, uint8_t bg,
                               const uint8_t *restrict same, struct block_look *out) {
  LOOK_BODY
}

#ifdef TSR_CLASSIFY_AVX2
TSR_VECTORISE __attribute__((target("avx2"))) static void look_avx2(
    const uint8_t *restrict p, int n3, uint8_t bg, const uint8_t *restrict same,
    struct block_look *out) {
  LOOK_BODY
}
#endif

/* Bits [i, i + n) set. */
static void set_bits(uint8_t *bits, size_t i, size_t n) {
  for (; n && i % 8; i++, n--)
    bits[i >> 3] |= (uint8_t)(1u << (i & 7));
  memset(bits + (i >> 3), 0xff, n >> 3);
  i += n & ~(size_t)7;
  for (n &= 7; n; i++, n--)
    bits[i >> 3] |= (uint8_t)(1u << (i & 7));
}

struct hist8 {
  uint32_t h[8][256]; /* n < 2^32 (the mask's limit) */
};

/* Classifies pixels as they are read (a band at a time, or all at once), gathering Otsu's
 * histogram and, for mode auto, the brightness of every 7th pixel that says whether the slide
 * is dark-field. */
struct classifier {
  const tessera_tissue_options *o;
  bool dark, avx2;
  uint8_t bg, tol, black, black_on, pen_sat, pen_on;
  uint8_t log_scale[256];
  /* Otsu's histogram, eight interleaved. Bright-field leaves the excluded pixels out of it
   * (glass would swamp it); dark-field keeps them in: the black is the dark class Otsu is to
   * split from the signal. */
  struct hist8 h;
  /* The brightness sample, pixels 0, 7, 14, ...: how many have a brightness (max of R, G,
   * B) below DARKFIELD_MEDIAN. */
  size_t dim;
};

static void classifier_init(struct classifier *k, const tessera_tissue_options *o, uint8_t bg,
                            bool dark) {
  memset(k, 0, sizeof *k);
  k->o = o;
  k->dark = dark;
  k->bg = bg;
  k->tol = (uint8_t)o->background_tolerance;
  /* Dark-field has no black or pen rule. */
  int black = dark ? -1 : o->black_max, pen_sat = dark ? 256 : o->pen_min_saturation;
  k->black = (uint8_t)(black < 0 ? 0 : black);
  k->black_on = black >= 0;
  k->pen_sat = (uint8_t)(pen_sat > 255 ? 255 : pen_sat);
  k->pen_on = pen_sat <= 255;
  /* Dark-field brightness on a log scale: a sparse stain (DAPI's nuclei) averaged over a mask
   * pixel is dim, and on a linear scale Otsu would split the bright nuclei from the dim tissue
   * rather than the tissue from the black. */
  for (int v = 0; v < 256; v++)
    k->log_scale[v] = (uint8_t)floor(255.0 * log1p((double)v) / log(256.0) + 0.5);
#ifdef TSR_CLASSIFY_AVX2
  k->avx2 = __builtin_cpu_supports("avx2");
#if TSR_TEST_HOOKS
  /* Test builds only: TESSERA_TEST_NO_AVX2 makes the tests take the baseline path too. */
  if (getenv("TESSERA_TEST_NO_AVX2"))
    k->avx2 = false;
#endif
#endif
}

/* Pixels [i0, i0 + count) of the mask, RGB at rgb: their values (saturation, or dark-field
 * log brightness) into value[i0 ..], and whether each is excluded (background, black, pen)
 * as bits (bit i & 7 of bits[i >> 3], which start cleared): no pixel is tissue before the
 * threshold. */
static void classify_pixels(struct classifier *k, const uint8_t *rgb, size_t i0, size_t count,
                            uint8_t *restrict bits, uint8_t *restrict value) {
  const tessera_tissue_options *o = k->o;
  uint8_t r[BLOCK], g[BLOCK], b[BLOCK], c[BLOCK];
  uint32_t(*hist)[256] = k->h.h;
  const uint8_t *same = SAME_PIXEL, *sevenths = SEVENTHS;
  for (size_t at = 0; at < count; at += BLOCK) {
    int nb = count - at < BLOCK ? (int)(count - at) : BLOCK;
    const uint8_t *p = rgb + 3 * at;
    uint8_t *sat = value + i0 + at, any_pen, any_excluded, dims;
    /* The brightness sample's pixels in this block: w7[i] is 1 where i0 + at + i is a
     * multiple of 7. */
    const uint8_t *w7 = sevenths + (i0 + at) % 7;
    if (!k->dark) {
      /* Bright-field's blocks of glass (every channel of every pixel within the tolerance of
       * the background): all excluded, with the value 0 that the histogram skips. Blocks of
       * one grey, none of it near the background or black: saturation 0, none excluded. */
      struct block_look l;
#ifdef TSR_CLASSIFY_AVX2
      if (k->avx2)
        look_avx2(p, 3 * nb, k->bg, same, &l);
      else
#endif
        look(p, 3 * nb, k->bg, same, &l);
      bool glass = l.far <= k->tol;
      if (glass || (!l.colour && l.near > k->tol && !(k->black_on && l.low <= k->black))) {
        memset(sat, 0, (size_t)nb);
        if (glass)
          set_bits(bits, i0 + at, (size_t)nb);
        if (l.low < DARKFIELD_MEDIAN) /* (else none is dim) */
          for (int i = (int)((7 - (i0 + at) % 7) % 7); i < nb; i += 7)
            k->dim += (p[3 * i] | p[3 * i + 1] | p[3 * i + 2]) < DARKFIELD_MEDIAN;
        continue;
      }
    }
#ifdef TSR_CLASSIFY_AVX2
    if (k->avx2) {
      classify_rgb_avx2(p, nb, k->bg, k->tol, k->black, k->black_on, k->pen_sat, k->pen_on,
                        !k->dark, c, sat, w7, &dims, &any_pen, &any_excluded);
    } else
#endif
    {
      for (int i = 0; i < nb; i++) {
        r[i] = p[3 * i];
        g[i] = p[3 * i + 1];
        b[i] = p[3 * i + 2];
      }
      classify_block(r, g, b, nb, k->bg, k->tol, k->black, k->black_on, k->pen_sat, k->pen_on,
                     !k->dark, c, sat, w7, &dims, &any_pen, &any_excluded);
    }
    k->dim += dims;
    /* Pen hues, only for the few pixels saturated enough to be ink. */
    for (int i = 0; any_pen && (i = next_byte(c, i, nb, PEN_CANDIDATE)) < nb; i++) {
      int rr = p[3 * i], gg = p[3 * i + 1], bb = p[3 * i + 2];
      int mx = rr > gg ? (rr > bb ? rr : bb) : (gg > bb ? gg : bb);
      int mn = rr < gg ? (rr < bb ? rr : bb) : (gg < bb ? gg : bb);
      double h = hue(rr, gg, bb, mx, mn);
      bool pen = h >= o->pen_hue_min && h <= o->pen_hue_max;
      c[i] = pen ? EXCLUDED : NOT_TISSUE;
      if (pen && !k->dark)
        sat[i] = 0;
      any_excluded |= pen;
    }
    if (k->dark) /* brightness instead of saturation */
      for (int i = 0; i < nb; i++) {
        int mx = p[3 * i] > p[3 * i + 1] ? p[3 * i] : p[3 * i + 1];
        sat[i] = k->log_scale[mx > p[3 * i + 2] ? mx : p[3 * i + 2]];
      }
    /* The values into the histogram, but for the 0s (bin 0 is made up at the threshold from
     * the pixels counted): bright-field's excluded pixels are 0 here (glass would swamp the
     * histogram), and the glass's words of eight 0s are skipped. */
    int i = 0;
#define BIN(j) hist[j][sat[i + j]]++
    for (; i + 8 <= nb; i += 8) {
      uint64_t x;
      memcpy(&x, sat + i, 8);
      if (!x)
        continue;
      BIN(0);
      BIN(1);
      BIN(2);
      BIN(3);
      BIN(4);
      BIN(5);
      BIN(6);
      BIN(7);
    }
    for (; i < nb; i++)
      hist[i & 7][sat[i]]++;
#undef BIN
    if (!any_excluded) /* the bits stay cleared */
      continue;
    /* The block's classes (EXCLUDED or NOT_TISSUE) to bits: eight at a time where aligned. */
    size_t g0 = i0 + at;
    i = 0;
    for (; i < nb && (g0 + (size_t)i) % 8; i++)
      bits[(g0 + (size_t)i) >> 3] |= (uint8_t)((c[i] == EXCLUDED) << ((g0 + (size_t)i) & 7));
#ifdef SWAR
    for (; i + 8 <= nb; i += 8) {
      uint64_t x;
      memcpy(&x, c + i, 8);
      x = (x >> 1) & ONES; /* EXCLUDED (2) to 1, NOT_TISSUE to 0 */
      bits[(g0 + (size_t)i) >> 3] = (uint8_t)((x * 0x0102040810204080u) >> 56);
    }
#endif
    for (; i < nb; i++)
      bits[(g0 + (size_t)i) >> 3] |= (uint8_t)((c[i] == EXCLUDED) << ((g0 + (size_t)i) & 7));
  }
}

/* Whether the sampled brightness says dark-field: its median below DARKFIELD_MEDIAN. */
static bool sampled_dark(const struct classifier *k, size_t n) {
  /* The median is below it when at least half the sample is. */
  return 2 * k->dim >= (n + 6) / 7;
}

/* How many values are above t: every pixel's value is in the histogram, but for
 * bright-field's excluded pixels, whose value is 0. */
static size_t count_above(const struct classifier *k, int t) {
  size_t above = 0;
  for (int v = t + 1; v < 256; v++)
    for (int j = 0; j < 8; j++)
      above += k->h.h[j][v];
  return above;
}

/* Otsu's threshold of the histogram, at least min_threshold. */
static int classifier_threshold(const struct classifier *k, size_t n, const uint8_t *bits) {
  uint64_t hist[256], counted = n, rest = 0;
  if (!k->dark) { /* bright-field counts the pixels not excluded */
    size_t i = 0, nbits = n / 8 + 1;
    for (; i + 8 <= nbits; i += 8) {
      uint64_t x;
      memcpy(&x, bits + i, 8);
      counted -= (uint64_t)__builtin_popcountll(x);
    }
    for (; i < nbits; i++)
      counted -= (uint64_t)__builtin_popcount(bits[i]);
  }
  for (int v = 1; v < 256; v++) {
    hist[v] = 0;
    for (int j = 0; j < 8; j++)
      hist[v] += k->h.h[j][v];
    rest += hist[v];
  }
  hist[0] = counted - rest;
  int t = otsu(hist);
  return t < k->o->min_threshold ? k->o->min_threshold : t;
}

/* Level rows classified at a time where the mask has the level's resolution (so the rows are
 * classified while in the cache, and the level is never held whole): a row of tiles (of
 * strips), or as many rows as fit this many bytes where that is more. */
#define BAND_BYTES ((size_t)1 << 20)
#define RGB_SLACK 64 /* bytes after the pixels, which look() may read */

/* Reads the mask's pixels (level `level` at `scale`) and classifies them. */
static tessera_status read_and_classify(tessera_slide *s, int32_t level, double scale,
                                        int64_t w, int64_t h, int workers, uint8_t **rgb,
                                        struct classifier *k, uint8_t *bits, uint8_t *value) {
  size_t row = (size_t)w * 3;
  if (scale != 1.0) { /* the area average, held whole (it is the mask's size) */
    tessera_status st = TESSERA_OK;
    if (!*rgb) {
      if (!(*rgb = tsr_malloc(row * (size_t)h + RGB_SLACK)))
        return tsr_error(TESSERA_E_NOMEM, "out of memory for a %lld x %lld tissue mask",
                         (long long)w, (long long)h);
      st = tsr_read_area(s, level, 0, 0, scale, scale, w, h, 3, -1, workers, *rgb, row);
    }
    if (st == TESSERA_OK) {
      memset(*rgb + row * (size_t)h, 0, RGB_SLACK);
      classify_pixels(k, *rgb, 0, (size_t)w * (size_t)h, bits, value);
    }
    return st;
  }
  int64_t tile_h = s->levels[level].tile_h ? s->levels[level].tile_h : 1;
  int64_t rows = (int64_t)(BAND_BYTES / row) / tile_h * tile_h;
  if (rows < tile_h)
    rows = tile_h;
  if (rows > h)
    rows = h;
  if (!*rgb && !(*rgb = tsr_malloc(row * (size_t)rows + RGB_SLACK)))
    return tsr_error(TESSERA_E_NOMEM, "out of memory for a tissue mask's band of rows");
  memset(*rgb + row * (size_t)rows, 0, RGB_SLACK);
  for (int64_t y = 0; y < h; y += rows) {
    int64_t n = h - y < rows ? h - y : rows;
    tessera_status st = tsr_read_area(s, level, 0, y, 1.0, 1.0, w, n, 3, -1, workers, *rgb, row);
    if (st != TESSERA_OK)
      return st;
    classify_pixels(k, *rgb, (size_t)y * (size_t)w, (size_t)n * (size_t)w, bits, value);
  }
  return TESSERA_OK;
}

/* A run of pixels of one row on the same side (tissue or not): [x0, x1) of row y. */
struct run {
  uint32_t x0, x1, y;
  uint32_t parent; /* union-find */
  uint64_t area;   /* of the component, at its root */
  uint32_t edge;   /* the component touches the mask's edge (at its root) */
};

/* The runs of one sweep, grown as needed (a mask has far fewer runs than pixels). */
struct runs {
  struct run *r;
  size_t n, cap;
};

static uint32_t find(struct run *r, uint32_t i) {
  while (r[i].parent != i) {
    r[i].parent = r[r[i].parent].parent;
    i = r[i].parent;
  }
  return i;
}

/* The first x from x0 (or w) where (row[x] == ON) != tissue: eight pixels a step where
 * they are all alike (glass, or a tissue's inside), pixel by pixel near a change. */
TSR_INLINE int64_t scan(const uint8_t *row, int64_t x, int64_t w, bool tissue) {
#ifdef SWAR
  const uint64_t ones = ONES, highs = HIGHS;
  /* 32 pixels a step while none ends the run (the test below, on four words at once). */
  for (; x + 32 <= w; x += 32) {
    uint64_t v[4], stop = 0;
    memcpy(v, row + x, 32);
    for (int j = 0; j < 4; j++) {
      uint64_t t = ~v[j];
      stop |= tissue ? t : (t - ones) & ~t & highs;
    }
    if (stop)
      break;
  }
  for (; x + 8 <= w; x += 8) {
    uint64_t v;
    memcpy(&v, row + x, 8);
    v = ~v; /* bytes of tissue are now 0 */
    /* Bytes that end the run: non-zero ones for tissue, zero ones (their high bit set here,
     * exact for the lowest such byte) otherwise. */
    uint64_t stop = tissue ? v : (v - ones) & ~v & highs;
    if (stop)
      return x + (__builtin_ctzll(stop) >> 3);
  }
#endif
  while (x < w && (row[x] == ON) == tissue)
    x++;
  return x;
}

/* Connected components of the mask's pixels that are (or are not, when `of_tissue` is false)
 * ON: a component smaller than min_pixels is flipped (tissue specks dropped; holes, not
 * touching the edge, filled where they are not excluded by `bits`), *on counting the ON
 * pixels. 8-connected for tissue, 4 for holes,
 * so a diagonal line of tissue closes a hole. Works on runs of rows joined by union-find, so
 * the wide glass costs a few runs, not a visit per pixel. False when out of memory. */
TSR_INLINE bool sweep_of(uint8_t *cls, const uint8_t *bits, int64_t w, int64_t h, bool of_tissue,
                         double min_pixels, struct runs *rs, size_t *on) {
  uint32_t n = 0, prev0 = 0, prev1 = 0; /* runs of the previous row: [prev0, prev1) */
  struct run *runs = rs->r;
  int64_t reach = of_tissue ? 1 : 0;     /* diagonal neighbours join tissue */
  for (int64_t y = 0; y < h; y++) {
    const uint8_t *row = cls + (size_t)y * (size_t)w;
    uint32_t first = n, p = prev0;
    for (int64_t x = scan(row, 0, w, !of_tissue); x < w; x = scan(row, x, w, !of_tissue)) {
      int64_t x0 = x;
      x = scan(row, x, w, of_tissue);
      if (n == rs->cap) {
        size_t cap = rs->cap ? 2 * rs->cap : 4096;
        struct run *grown = tsr_realloc(rs->r, cap * sizeof *grown);
        if (!grown)
          return false;
        rs->r = runs = grown;
        rs->cap = cap;
      }
      struct run *r = &runs[n];
      r->x0 = (uint32_t)x0;
      r->x1 = (uint32_t)x;
      r->y = (uint32_t)y;
      r->parent = n;
      r->area = (uint64_t)(x - x0);
      r->edge = y == 0 || y == h - 1 || x0 == 0 || x == w;
      /* Runs of the row above overlapping [x0 - reach, x + reach). */
      while (p < prev1 && (int64_t)runs[p].x1 + reach <= x0)
        p++;
      for (uint32_t q = p; q < prev1 && (int64_t)runs[q].x0 < x + reach; q++) {
        uint32_t a = find(runs, n), b = find(runs, q);
        if (a != b) {
          if (a < b) {
            uint32_t t = a;
            a = b;
            b = t;
          }
          runs[a].parent = b;
          runs[b].area += runs[a].area;
          runs[b].edge |= runs[a].edge;
        }
      }
      n++;
    }
    prev0 = first;
    prev1 = n;
  }
  for (uint32_t i = 0; i < n; i++) {
    uint32_t root = find(runs, i);
    if ((double)runs[root].area >= min_pixels || (!of_tissue && runs[root].edge))
      continue;
    size_t at = (size_t)runs[i].y * (size_t)w;
    if (of_tissue) {
      memset(cls + at + runs[i].x0, 0, runs[i].x1 - runs[i].x0);
      *on -= runs[i].x1 - runs[i].x0;
    } else {
      for (size_t x = at + runs[i].x0; x < at + runs[i].x1; x++)
        if (!(bits[x >> 3] >> (x & 7) & 1)) {
          cls[x] = ON;
          ++*on;
        }
    }
  }
  return true;
}

/* sweep_of for each value of of_tissue, so that its scans test no flag. */
static bool sweep(uint8_t *cls, const uint8_t *bits, int64_t w, int64_t h, bool of_tissue,
                  double min_pixels, struct runs *rs, size_t *on) {
  return of_tissue ? sweep_of(cls, bits, w, h, true, min_pixels, rs, on)
                   : sweep_of(cls, bits, w, h, false, min_pixels, rs, on);
}

TESSERA_API tessera_status tessera_tissue_mask(tessera_slide *s,
                                               const tessera_tissue_options *options,
                                               tessera_mask **out) {
  if (out)
    *out = NULL;
  tessera_tissue_options o;
  tessera_tissue_options_init(&o);
  tessera_status st = tsr_abi_copy_in(&o, sizeof o, options, "tissue options");
  if (st != TESSERA_OK)
    return st;
  if (!s || !out)
    return tsr_error(TESSERA_E_ARGUMENT, "NULL slide or mask");
  if ((st = check_options(&o)) != TESSERA_OK)
    return st;
  double mpp0 = tsr_slide_mpp(s), d;
  if (o.mpp > 0.0) {
    if (mpp0 <= 0.0)
      return tsr_error(TESSERA_E_ARGUMENT,
                       "tissue mask at %g um/px: the slide does not say its microns per pixel "
                       "(no tessera.mpp-x/y); give a downsample instead",
                       o.mpp);
    d = o.mpp / mpp0;
  } else if (o.downsample > 0.0) {
    d = o.downsample;
  } else {
    d = mpp0 > 0.0 ? DEFAULT_MASK_MPP / mpp0 : DEFAULT_MASK_DOWNSAMPLE;
  }
  const struct tsr_level *l0 = &s->levels[0];
  double wd = ceil((double)l0->width / d), hd = ceil((double)l0->height / d);
  if (!(wd >= 1.0 && hd >= 1.0 && wd <= (double)MASK_SIDE_MAX && hd <= (double)MASK_SIDE_MAX) ||
      wd * hd * 3.0 > (double)s->limits.max_read_bytes)
    return tsr_error(TESSERA_E_LIMIT,
                     "a tissue mask at downsample %g would be %.0f x %.0f pixels, over the "
                     "limits (2^31 a side, max_read_bytes for its RGB)",
                     d, wd, hd);
  int64_t w = (int64_t)wd, h = (int64_t)hd;
  if ((uint64_t)w * (uint64_t)h >= UINT32_MAX) /* the sweeps' runs are counted in 32 bits */
    return tsr_error(TESSERA_E_LIMIT, "a %lld x %lld tissue mask has too many pixels",
                     (long long)w, (long long)h);
  /* The coarsest level at least as fine as the mask (a hair of slack for downsamples such as
   * 3.9999 that mean 4). */
  int32_t level = 0;
  for (int32_t i = 1; i < s->nlevels; i++)
    if (s->levels[i].downsample <= d * (1.0 + 1e-6))
      level = i;
  double scale = d / s->levels[level].downsample;
  if (scale < TSR_SCALE_MIN || scale > TSR_SCALE_MAX)
    return tsr_error(TESSERA_E_ARGUMENT,
                     "a tissue mask at downsample %g is %g pixels of level %d a pixel, not "
                     "within %g .. %g",
                     d, scale, level, TSR_SCALE_MIN, TSR_SCALE_MAX);
  size_t n = (size_t)w * (size_t)h;
  /* The values become the classes, then the mask's bytes. */
  uint8_t *rgb = NULL, *cls = tsr_malloc(n), *bits = tsr_calloc(n / 8 + 1, 1);
  struct runs runs = {0};
  tessera_mask *m = tsr_calloc(1, sizeof *m);
  struct classifier *k = tsr_malloc(sizeof *k);
  if (!cls || !bits || !m || !k) {
    st = tsr_error(TESSERA_E_NOMEM, "out of memory for a %lld x %lld tissue mask", (long long)w,
                   (long long)h);
    goto done;
  }
  /* Mode auto classifies as bright-field while it reads, and again as dark-field (reading
   * the level again where it was read in bands) when the sampled brightness says so. */
  bool dark = o.mode == TESSERA_TISSUE_DARKFIELD;
  classifier_init(k, &o, s->background, dark);
  st = read_and_classify(s, level, scale, w, h, o.num_workers, &rgb, k, bits, cls);
  if (st == TESSERA_OK && o.mode == TESSERA_TISSUE_AUTO && sampled_dark(k, n)) {
    dark = true;
    classifier_init(k, &o, s->background, dark);
    memset(bits, 0, n / 8 + 1);
    st = read_and_classify(s, level, scale, w, h, o.num_workers, &rgb, k, bits, cls);
  }
  if (st != TESSERA_OK)
    goto done;
  m->threshold = classifier_threshold(k, n, bits);
  size_t tissue =
      threshold(cls, bits, n, (uint8_t)m->threshold, count_above(k, m->threshold));
  /* Mask pixels per unit of area: square micrometres, or square level-0 pixels. */
  double unit = mpp0 > 0.0 ? (d * mpp0) * (d * mpp0) : d * d;
  if (!sweep(cls, bits, w, h, true, o.min_tissue_area / unit, &runs, &tissue) ||
      !sweep(cls, bits, w, h, false, o.max_hole_area / unit, &runs, &tissue)) {
    st = tsr_error(TESSERA_E_NOMEM, "out of memory for a %lld x %lld tissue mask", (long long)w,
                   (long long)h);
    goto done;
  }
  m->data = cls;
  cls = NULL;
  m->width = w;
  m->height = h;
  m->downsample = d;
  m->mpp = mpp0 > 0.0 ? d * mpp0 : 0.0;
  m->level = level;
  m->darkfield = dark;
  m->tissue_fraction = (double)tissue / (double)n;
  *out = m;
  m = NULL;
done:
  tsr_free(rgb);
  tsr_free(bits);
  tsr_free(k);
  tsr_free(cls);
  tsr_free(runs.r);
  tessera_mask_free(m);
  return st;
}
