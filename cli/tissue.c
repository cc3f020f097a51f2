/* The picture behind `tessera sample`.
 *
 * Layers, all functions of the level-0 position:
 *  - glass: near-white with a little per-pixel grain;
 *  - tissue islands: where a few octaves of smooth value noise (a coarse random lattice,
 *    interpolated) rise above a threshold, pushed down near the border so islands keep off
 *    the edges;
 *  - stroma: eosin pink modulated by fine value noise, some of it with long sheared cells
 *    (fibres running one of two ways), with pale holes (lumens) where a middle-scale noise
 *    is high;
 *  - nuclei: dark purple ellipses, at most one per cell of a fixed grid, whose presence,
 *    centre, radii and angle come from an integer hash of the cell; crowded where a
 *    "cellularity" noise is high.
 *
 * Speed matters (a default sample is ~400 million samples): pixels are painted a row at a
 * time, and each noise keeps the lattice values of the cell it is in, so most samples cost
 * a few multiplications; the hash runs only when a row crosses a lattice line. Edges of
 * islands and nuclei are smoothed over the sample spacing, which keeps small levels from
 * aliasing without more samples; and a tile that no island can reach is known to be glass
 * before any sample is taken (see area_is_glass).
 *
 * No libm function whose result may differ between C libraries is used on values, so the
 * picture is the same wherever the same code is compiled the same way. */
#include "tissue.h"

#include <math.h>
#include <string.h>

/* The per-sample helpers must be inlined into the row loop; at -O2 GCC would rather call
 * them, which costs a third of the painting time. */
#if defined(__GNUC__)
#define HOT_INLINE static inline __attribute__((always_inline))
#else
#define HOT_INLINE static inline
#endif

#define NUCLEUS_CELL 26.0 /* level-0 pixels */
#define ISLAND_THRESHOLD 0.53f

/* One seed per noise field, so the fields are independent. */
enum {
  SEED_ISLAND0 = 0x3c6ef372,
  SEED_ISLAND1 = 0x1f83d9ab,
  SEED_ISLAND2 = 0x5be0cd19,
  SEED_EDGE = 0x2d358dcc,
  SEED_LUMEN = 0x137e2179,
  SEED_BLOTCH = 0x6a09e667,
  SEED_FIBRE_A = 0x510e527f,
  SEED_FIBRE_B = 0x1d8e4e27,
  SEED_CELLULARITY = 0x0b7c1d5f,
  SEED_NUCLEUS = 0x243f6a88,
  SEED_GRAIN = 0x7b4a9e21
};

/* An integer finaliser (murmur3's): every input bit affects every output bit. */
static inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x85ebca6bu;
  x ^= x >> 13;
  x *= 0xc2b2ae35u;
  x ^= x >> 16;
  return x;
}

/* seed must already be mixed. Coordinates wrap to 32 bits, far beyond any slide. */
static inline uint32_t hash2(uint32_t seed, int64_t ix, int64_t iy) {
  return mix32((uint32_t)ix + mix32((uint32_t)iy + seed));
}

static inline float unit(uint32_t h) { return (float)(h >> 8) * (1.0f / 16777216.0f); }

static inline int64_t floor_i64(double v) {
  int64_t i = (int64_t)v;
  return i - (v < (double)i);
}

static inline float smooth(float t) { return t * t * (3.0f - 2.0f * t); }

static inline float clamp01(float v) { return v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v; }

static inline float lerp(float a, float b, float t) { return a + (b - a) * t; }

static inline double min_d(double a, double b) { return a < b ? a : b; }

/* Value noise in [0, 1) along one row: the two lattice columns around the current x are
 * kept, so moving right within a cell costs no hashing. Cells may be longer one way than the
 * other, and sheared (x + shear * y), which gives streaks: fibres. */
typedef struct noise_row {
  double inv_cell;   /* 1 / cell width */
  double inv_cell_y; /* 1 / cell height */
  double shear;
  double offset; /* shear * y of this row */
  uint32_t seed;
  int64_t iy;
  float wy;   /* smoothed vertical weight of this row */
  int64_t ix; /* cell column whose edges v0, v1 hold */
  float v0, v1;
} noise_row;

static void noise_row_init_streaks(noise_row *n, double cell_w, double cell_h, double shear,
                                   uint32_t seed) {
  n->inv_cell = 1.0 / cell_w;
  n->inv_cell_y = 1.0 / cell_h;
  n->shear = shear;
  n->seed = mix32(seed);
}

static void noise_row_init(noise_row *n, double cell, uint32_t seed) {
  noise_row_init_streaks(n, cell, cell, 0.0, seed);
}

static void noise_row_begin(noise_row *n, double y) {
  double fy = y * n->inv_cell_y;
  n->offset = n->shear * y;
  n->iy = floor_i64(fy);
  n->wy = smooth((float)(fy - (double)n->iy));
  n->ix = INT64_MIN;
}

HOT_INLINE float noise_column(const noise_row *n, int64_t ix) {
  float a = unit(hash2(n->seed, ix, n->iy));
  float b = unit(hash2(n->seed, ix, n->iy + 1));
  return lerp(a, b, n->wy);
}

HOT_INLINE float noise_row_at(noise_row *n, double x) {
  double fx = (x + n->offset) * n->inv_cell;
  int64_t ix = floor_i64(fx);
  if (ix != n->ix) {
    n->v0 = ix == n->ix + 1 ? n->v1 : noise_column(n, ix);
    n->v1 = noise_column(n, ix + 1);
    n->ix = ix;
  }
  return lerp(n->v0, n->v1, smooth((float)(fx - (double)ix)));
}

/* The same noise at one point, for values needed once per nucleus cell. */
static float noise_at(uint32_t seed, double cell, double x, double y) {
  double fx = x / cell, fy = y / cell;
  int64_t ix = floor_i64(fx), iy = floor_i64(fy);
  float tx = smooth((float)(fx - (double)ix)), ty = smooth((float)(fy - (double)iy));
  float top = lerp(unit(hash2(seed, ix, iy)), unit(hash2(seed, ix + 1, iy)), tx);
  float bottom = lerp(unit(hash2(seed, ix, iy + 1)), unit(hash2(seed, ix + 1, iy + 1)), tx);
  return lerp(top, bottom, ty);
}

void tissue_scene_init(tissue_scene *scene, int64_t width, int64_t height) {
  double side = (double)(width < height ? width : height);
  scene->width = (double)width;
  scene->height = (double)height;
  scene->island_cell = fmax(48.0, side / 4.0);
  scene->lumen_cell = fmax(120.0, fmin(scene->island_cell / 8.0, 360.0));
  scene->cellularity_cell = fmax(60.0, scene->island_cell / 5.0);
  scene->margin = side * 0.08;
}

/* The island field from its three octaves and the distance to the nearest border: it grows
 * with each octave and shrinks near the border, so an upper bound of each input (and of the
 * distance) gives an upper bound of the field. */
static inline float island_field(const tissue_scene *s, float octave0, float octave1, float octave2,
                                 double border) {
  float fade = border >= s->margin ? 0.0f
               : border <= 0.0     ? 1.0f
                                   : (float)(1.0 - border / s->margin);
  return 0.55f * octave0 + 0.30f * octave1 + 0.15f * octave2 - 0.45f * fade * fade;
}

/* Everything one thread needs to paint rows: the noises and the nucleus cell it is in. */
typedef struct painter {
  const tissue_scene *scene;
  noise_row island[3], edge, lumen[2], blotch, fibre_a, fibre_b;
  uint32_t cellularity_seed, nucleus_seed, grain_seed;
  float edge_width; /* noise units over which an island edge goes from glass to tissue */
  float inv_edge_width;
  float edge_rough;     /* noise units of the fine wobble of island edges */
  float nucleus_gain;   /* how fast a nucleus edge fades, relative to its radius */
  float fibre_contrast; /* fibres fade when the sample spacing is coarser than they are */
  double y;             /* the row being painted */
  double border_y;      /* distance from y to the top or bottom edge */
  uint32_t grain_row;   /* grain hash input of this row */
  int64_t cell_row;     /* nucleus cell row of y */
  double cell_shift;    /* x offset of this cell row, so cells do not line up in columns */
  int64_t cell_col;     /* nucleus cell the fields below describe */
  int present;          /* whether that cell has a nucleus */
  int all_glass;        /* the whole tile is known to hold no tissue */
  float centre_x, qa, qb, qc, edge_scale, shade;
} painter;

static void painter_init(painter *p, const tissue_scene *s, double spacing) {
  p->scene = s;
  noise_row_init(&p->island[0], s->island_cell, SEED_ISLAND0);
  noise_row_init(&p->island[1], s->island_cell / 2.0, SEED_ISLAND1);
  noise_row_init(&p->island[2], s->island_cell / 4.0, SEED_ISLAND2);
  noise_row_init(&p->edge, 24.0, SEED_EDGE);
  noise_row_init(&p->lumen[0], s->lumen_cell, SEED_LUMEN);
  noise_row_init(&p->lumen[1], s->lumen_cell / 2.3, SEED_LUMEN + 1);
  noise_row_init(&p->blotch, 28.0, SEED_BLOTCH);
  noise_row_init_streaks(&p->fibre_a, 5.0, 30.0, 0.45, SEED_FIBRE_A);
  noise_row_init_streaks(&p->fibre_b, 30.0, 5.0, 0.0, SEED_FIBRE_B);
  p->cellularity_seed = mix32(SEED_CELLULARITY);
  p->nucleus_seed = mix32(SEED_NUCLEUS);
  p->grain_seed = mix32(SEED_GRAIN);
  /* The island noise changes by roughly 0.6 per island_cell pixels; an edge a few pixels
   * (or one sample spacing) wide and a wobble of about a dozen pixels follow from that. */
  double per_pixel = 0.6 / s->island_cell;
  p->edge_width = (float)(per_pixel * fmax(4.0, 1.5 * spacing));
  p->inv_edge_width = 1.0f / p->edge_width;
  p->edge_rough = (float)(per_pixel * 14.0);
  p->nucleus_gain = (float)(0.5 / fmax(1.0, spacing));
  p->fibre_contrast = (float)fmin(1.0, 10.0 / spacing);
}

static void painter_begin_row(painter *p, double y) {
  p->y = y;
  p->border_y = min_d(y, p->scene->height - y);
  p->grain_row = mix32((uint32_t)floor_i64(y) + p->grain_seed);
  noise_row_begin(&p->island[0], y);
  noise_row_begin(&p->island[1], y);
  noise_row_begin(&p->island[2], y);
  noise_row_begin(&p->edge, y);
  noise_row_begin(&p->lumen[0], y);
  noise_row_begin(&p->lumen[1], y);
  noise_row_begin(&p->blotch, y);
  noise_row_begin(&p->fibre_a, y);
  noise_row_begin(&p->fibre_b, y);
  p->cell_row = floor_i64(y / NUCLEUS_CELL);
  p->cell_shift = NUCLEUS_CELL * unit(hash2(p->nucleus_seed, -1, p->cell_row));
  p->cell_col = INT64_MIN;
}

/* Draws the nucleus (if any) of cell (col, cell_row): a rotated ellipse kept inside its
 * cell, so no sample needs to look at neighbouring cells. */
static void painter_enter_cell(painter *p, int64_t col) {
  p->cell_col = col;
  double cell_x = (double)col * NUCLEUS_CELL - p->cell_shift,
         cell_y = (double)p->cell_row * NUCLEUS_CELL;
  float crowd = noise_at(p->cellularity_seed, p->scene->cellularity_cell, cell_x + NUCLEUS_CELL / 2,
                         cell_y + NUCLEUS_CELL / 2);
  float density = 0.08f + 0.9f * crowd * crowd;
  uint32_t h = hash2(p->nucleus_seed, col, p->cell_row);
  p->present = unit(h) < density;
  if (!p->present)
    return;
  uint32_t h2 = mix32(h ^ 0x9e3779b9u), h3 = mix32(h2 ^ 0x9e3779b9u);
  float rx = 3.5f + 4.0f * unit(h2);
  float ry = rx * (0.55f + 0.45f * unit(h3));
  float room = (float)NUCLEUS_CELL - 2.0f * (rx + 1.0f);
  float cx = rx + 1.0f + room * (float)(h2 & 0xff) / 255.0f;
  float cy = rx + 1.0f + room * (float)(h3 & 0xff) / 255.0f;
  /* The direction of the long axis, as a unit vector in the upper half plane. */
  float c = 2.0f * unit(mix32(h3 ^ 0x85ebca6bu)) - 1.0f;
  float s = sqrtf(1.0f - c * c);
  float ix2 = 1.0f / (rx * rx), iy2 = 1.0f / (ry * ry);
  float dy = (float)(p->y - cell_y) - cy;
  /* q(dx) = qa dx^2 + qb dx + qc is the ellipse's (distance / radius)^2 along this row. */
  p->qa = c * c * ix2 + s * s * iy2;
  p->qb = 2.0f * c * s * (ix2 - iy2) * dy;
  p->qc = (s * s * ix2 + c * c * iy2) * dy * dy;
  p->centre_x = (float)cell_x + cx;
  p->edge_scale = p->nucleus_gain * 0.5f * (rx + ry);
  p->shade = 0.8f + 0.35f * unit(mix32(h3));
}

/* Coverage in [0, 1] of the nucleus of x's cell; near 1 - q the edge is a ramp about one
 * sample spacing wide ((1 - q) / 2 approximates the distance to the edge over the radius). */
HOT_INLINE float painter_nucleus(painter *p, double x) {
  int64_t col = floor_i64((x + p->cell_shift) * (1.0 / NUCLEUS_CELL));
  if (col != p->cell_col)
    painter_enter_cell(p, col);
  if (!p->present)
    return 0.0f;
  float dx = (float)(x - (double)p->centre_x);
  float q = (p->qa * dx + p->qb) * dx + p->qc;
  return clamp01(0.5f + (1.0f - q) * p->edge_scale);
}

HOT_INLINE void painter_sample(painter *p, double x, float rgb[3]) {
  const tissue_scene *s = p->scene;
  float grain = unit(mix32((uint32_t)floor_i64(x) * 0x9e3779b1u ^ p->grain_row)) - 0.5f;
  float glass = 241.0f + 4.0f * grain;

  if (p->all_glass) {
    rgb[0] = rgb[1] = rgb[2] = glass;
    return;
  }
  float t =
      island_field(s, noise_row_at(&p->island[0], x), noise_row_at(&p->island[1], x),
                   noise_row_at(&p->island[2], x), min_d(min_d(x, s->width - x), p->border_y));
  if (t < ISLAND_THRESHOLD - p->edge_rough - p->edge_width) {
    rgb[0] = rgb[1] = rgb[2] = glass;
    return;
  }
  t += p->edge_rough * (2.0f * noise_row_at(&p->edge, x) - 1.0f);
  float tissue = clamp01((t - ISLAND_THRESHOLD) * p->inv_edge_width + 0.5f);
  if (tissue <= 0.0f) {
    rgb[0] = rgb[1] = rgb[2] = glass;
    return;
  }
  tissue = smooth(tissue);

  float lumen_fine = noise_row_at(&p->lumen[1], x);
  float lumen_noise = 0.65f * noise_row_at(&p->lumen[0], x) + 0.35f * lumen_fine;
  /* Fibres run one of two ways, switching where the second lumen octave crosses 0.5. */
  float way = clamp01((lumen_fine - 0.5f) * 6.0f + 0.5f);
  float streak = lerp(noise_row_at(&p->fibre_a, x), noise_row_at(&p->fibre_b, x), way);
  float fibre = 0.55f * noise_row_at(&p->blotch, x) + 0.45f * streak;
  fibre = clamp01(0.5f + (fibre - 0.5f) * 1.5f * p->fibre_contrast + (lumen_noise - 0.5f) * 0.6f);
  float r = lerp(242.0f, 212.0f, fibre) + 6.0f * grain;
  float g = lerp(190.0f, 112.0f, fibre) + 6.0f * grain;
  float b = lerp(216.0f, 168.0f, fibre) + 6.0f * grain;

  float lumen = clamp01((lumen_noise - 0.74f) * 30.0f);
  if (lumen > 0.0f) {
    r = lerp(r, 244.0f, lumen);
    g = lerp(g, 232.0f, lumen);
    b = lerp(b, 240.0f, lumen);
  }
  float nucleus = painter_nucleus(p, x) * (1.0f - lumen);
  if (nucleus > 0.0f) {
    float dark = p->shade + 0.3f * grain;
    r = lerp(r, 84.0f * dark, nucleus);
    g = lerp(g, 50.0f * dark, nucleus);
    b = lerp(b, 136.0f * dark, nucleus);
  }
  rgb[0] = lerp(glass, r, tissue);
  rgb[1] = lerp(glass, g, tissue);
  rgb[2] = lerp(glass, b, tissue);
}

/* The x (or y) positions where the maximum of a noise over [a, b] can lie: the ends and
 * every lattice line between them. Returns the count, or 0 when there are too many. */
static int breakpoints(double a, double b, double inv_cell, double out[18]) {
  int64_t first = floor_i64(a * inv_cell) + 1, last = floor_i64(b * inv_cell);
  if (last - first > 15)
    return 0;
  int n = 0;
  out[n++] = a;
  for (int64_t i = first; i <= last; i++)
    out[n++] = (double)i / inv_cell;
  out[n++] = b;
  return n;
}

/* The maximum of a noise over [x0, x1] x [y0, y1]. Within one lattice cell the noise is
 * bilinear in (smooth(tx), smooth(ty)), and smooth is monotonic, so over any rectangle
 * inside a cell it peaks at a corner; so the maximum is at a pair of breakpoints. Returns
 * 1 (no bound) when the area spans too many cells to be worth the look. Square,
 * unsheared noises only. */
static float noise_max(const noise_row *n, double x0, double x1, double y0, double y1) {
  double xs[18], ys[18];
  double cell = 1.0 / n->inv_cell;
  int nx = breakpoints(x0, x1, n->inv_cell, xs), ny = breakpoints(y0, y1, n->inv_cell, ys);
  if (nx == 0 || ny == 0)
    return 1.0f;
  float m = 0.0f;
  for (int j = 0; j < ny; j++) {
    for (int i = 0; i < nx; i++) {
      float v = noise_at(n->seed, cell, xs[i], ys[j]);
      m = v > m ? v : m;
    }
  }
  return m;
}

/* The largest of min(v, size - v) over v in [a, b]: how far from the border an area can be. */
static double max_inset(double a, double b, double size) {
  double mid = size / 2.0;
  double v = a > mid ? a : b < mid ? b : mid;
  return min_d(v, size - v);
}

/* Whether no island can reach into the area, so its samples are all glass. Most of a slide
 * is glass, and this makes painting it several times cheaper. */
static int area_is_glass(const painter *p, double x0, double x1, double y0, double y1) {
  const tissue_scene *s = p->scene;
  float t = island_field(s, noise_max(&p->island[0], x0, x1, y0, y1),
                         noise_max(&p->island[1], x0, x1, y0, y1),
                         noise_max(&p->island[2], x0, x1, y0, y1),
                         min_d(max_inset(x0, x1, s->width), max_inset(y0, y1, s->height)));
  return t < ISLAND_THRESHOLD - p->edge_rough - p->edge_width;
}

static inline uint8_t to_byte(float v) {
  return v <= 0.0f ? 0 : v >= 255.0f ? 255 : (uint8_t)(v + 0.5f);
}

void tissue_paint(const tissue_scene *scene, double scale_x, double scale_y, int samples,
                  int64_t x0, int64_t y0, int tile_w, int tile_h, uint8_t *rgb, size_t stride) {
  float acc[TISSUE_MAX_TILE * 3];
  if (samples < 1)
    samples = 1;
  if (tile_w > TISSUE_MAX_TILE)
    tile_w = TISSUE_MAX_TILE;
  double dx = scale_x / samples, dy = scale_y / samples;
  painter p;
  painter_init(&p, scene, fmax(dx, dy));
  float norm = 1.0f / (float)(samples * samples);
  p.all_glass = area_is_glass(&p, (double)x0 * scale_x, (double)(x0 + tile_w) * scale_x,
                              (double)y0 * scale_y, (double)(y0 + tile_h) * scale_y);
  for (int row = 0; row < tile_h; row++) {
    memset(acc, 0, (size_t)tile_w * 3 * sizeof acc[0]);
    for (int j = 0; j < samples; j++) {
      painter_begin_row(&p, ((double)((y0 + row) * samples + j) + 0.5) * dy);
      int64_t first = x0 * samples;
      for (int col = 0; col < tile_w; col++) {
        float *a = acc + 3 * col;
        for (int i = 0; i < samples; i++) {
          float c[3];
          painter_sample(&p, ((double)(first + (int64_t)col * samples + i) + 0.5) * dx, c);
          a[0] += c[0];
          a[1] += c[1];
          a[2] += c[2];
        }
      }
    }
    uint8_t *out = rgb + (size_t)row * stride;
    for (int k = 0; k < 3 * tile_w; k++)
      out[k] = to_byte(acc[k] * norm);
  }
}

void tissue_truth(const tissue_scene *scene, double scale_x, double scale_y, int64_t x0, int64_t y0,
                  int mask_w, int mask_h, uint8_t *mask, size_t stride) {
  if (mask_w > TISSUE_MAX_TILE)
    mask_w = TISSUE_MAX_TILE;
  painter p;
  /* The spacing changes only how wide the edge ramp is, not where its midline lies. */
  painter_init(&p, scene, fmax(scale_x, scale_y));
  for (int row = 0; row < mask_h; row++) {
    double y = ((double)(y0 + row) + 0.5) * scale_y;
    painter_begin_row(&p, y);
    uint8_t *out = mask + (size_t)row * stride;
    for (int col = 0; col < mask_w; col++) {
      double x = ((double)(x0 + col) + 0.5) * scale_x;
      float t = island_field(scene, noise_row_at(&p.island[0], x), noise_row_at(&p.island[1], x),
                             noise_row_at(&p.island[2], x),
                             min_d(min_d(x, scene->width - x), p.border_y));
      t += p.edge_rough * (2.0f * noise_row_at(&p.edge, x) - 1.0f);
      out[col] = t >= ISLAND_THRESHOLD ? 255 : 0;
    }
  }
}
