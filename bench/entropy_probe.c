/* entropy_probe: how much of decoding a level's JPEG tiles is entropy (Huffman) decoding, and
 * whether a plain decoder of our own reads that entropy data faster than libjpeg-turbo.
 *
 *   build/bench/entropy_probe SLIDE [--level D] [--tiles N] [--repeat R]
 *
 * The tiles of TIFF directory D (default 0; JPEG, tiled) are read into memory with libtiff
 * first (at most N, default 1024). Then, R times over (default 5), each way below decodes
 * every tile, and the table gives each way's median microseconds per tile:
 *
 *   libjpeg 1/1, 1/2, 1/8   jpeg_read_scanlines to RGB at that scale (accurate integer IDCT,
 *                           fancy upsampling: what tessera's exact and fast modes ask for;
 *                           at 1/8 the IDCT is one term a block, so that row is about the
 *                           entropy decoding and colour conversion of a tile)
 *   plain, kept             this file's baseline Huffman decoder, each block's 64
 *                           coefficients written out (checked equal to libjpeg's first)
 *   plain, skimmed          the same decoder, coefficients decoded and dropped: the least
 *                           any decoder must do to cross a tile's entropy data
 *
 * The libjpeg rows include creating the decompressor and reading the tables and the tile's
 * header, as tessera's reads do (about 3 us a tile); the plain rows parse the headers before
 * the clock starts, which favours them.
 *
 * Issue 21 asks the fast mode (the 1/2 decode) to be twice as fast as the exact one; both
 * entropy-decode the same tiles, so what that decoding costs beside the rest bounds the ratio
 * (bench/RESULTS.md). The plain decoder is a measuring stick only: tessera decodes with
 * libjpeg-turbo. It reads sequential Huffman JPEG of 8-bit samples, any sampling factors,
 * restart intervals included, and fails cleanly on anything else. */
#include <errno.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
/* jpeglib.h needs FILE and size_t declared first. */
#include <jpeglib.h>
#include <tiffio.h>

/* ---- the plain decoder ------------------------------------------------------------------ */

#define LOOKAHEAD 10 /* bits a table lookup decodes at once */

struct huffman {
  uint16_t fast[1 << LOOKAHEAD];    /* code length << 8 | symbol; 0: longer code */
  int16_t fast_ac[1 << LOOKAHEAD];  /* value << 8 | run << 4 | bits, for AC symbols whose
                                     * code and value fit the lookahead; 0: not so */
  int32_t maxcode[18], mincode[17]; /* canonical codes of each length */
  int32_t first[17];                /* index in symbols of each length's first code */
  uint8_t symbols[256];
  bool defined;
};

struct component {
  int id, h, v, quant, dc, ac;
  int32_t pred;
};

struct plain_jpeg {
  struct huffman dc[4], ac[4];
  int width, height, ncomp, restart, hmax, vmax;
  struct component comp[4];
  int order[4]; /* the scan's components, in its order */
  const uint8_t *data, *end;
};

/* zigzag position -> natural (row-major) position; 16 extra entries absorb a run past 63 */
static const uint8_t natural[64 + 16] = {
    0,  1,  8,  16, 9,  2,  3,  10, 17, 24, 32, 25, 18, 11, 4,  5,  12, 19, 26, 33,
    40, 48, 41, 34, 27, 20, 13, 6,  7,  14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36,
    29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54,
    47, 55, 62, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63};

static int extend(int bits, int s) { return bits < (1 << (s - 1)) ? bits - (1 << s) + 1 : bits; }

static bool build_huffman(struct huffman *h, const uint8_t counts[16], const uint8_t *symbols,
                          bool ac) {
  memset(h, 0, sizeof *h);
  int code = 0, k = 0;
  int length[256], codes[256];
  for (int l = 1; l <= 16; l++) {
    h->first[l] = k;
    h->mincode[l] = code;
    for (int i = 0; i < counts[l - 1]; i++) {
      if (k == 256 || code >= (1 << l))
        return false; /* more codes than the length allows */
      length[k] = l;
      codes[k++] = code++;
    }
    h->maxcode[l] = counts[l - 1] ? code - 1 : -1;
    code <<= 1;
  }
  h->maxcode[17] = INT32_MAX;
  memcpy(h->symbols, symbols, (size_t)k);
  for (int i = 0; i < k; i++) {
    int l = length[i];
    if (l > LOOKAHEAD)
      continue;
    int base = codes[i] << (LOOKAHEAD - l);
    for (int j = 0; j < 1 << (LOOKAHEAD - l); j++) {
      h->fast[base + j] = (uint16_t)(l << 8 | symbols[i]);
      int r = symbols[i] >> 4, s = symbols[i] & 15;
      if (!ac || s == 0 || l + s > LOOKAHEAD)
        continue;
      int v = extend(((base + j) >> (LOOKAHEAD - l - s)) & ((1 << s) - 1), s);
      if (v >= -128 && v <= 127)
        h->fast_ac[base + j] = (int16_t)(v * 256 + (r << 4) + l + s);
    }
  }
  h->defined = true;
  return true;
}

static uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

/* Reads the markers of stream p (SOI first) up to SOS; tables_only: a JPEGTables stream. */
static bool plain_parse(struct plain_jpeg *j, const uint8_t *p, size_t n, bool tables_only) {
  const uint8_t *e = p + n;
  if (n < 4 || p[0] != 0xFF || p[1] != 0xD8)
    return false;
  p += 2;
  while (e - p >= 2) {
    if (p[0] != 0xFF)
      return false;
    int marker = p[1];
    if (marker == 0xD9)
      return tables_only;
    if (e - p < 4)
      return false;
    const uint8_t *s = p + 4, *next = p + 2 + be16(p + 2);
    if (next > e || next < s)
      return false;
    if (marker == 0xC4) {
      while (next - s >= 17) {
        int tc = s[0] >> 4, th = s[0] & 15, count = 0;
        for (int i = 0; i < 16; i++)
          count += s[1 + i];
        if (tc > 1 || th > 3 || next - s < 17 + count ||
            !build_huffman(tc ? &j->ac[th] : &j->dc[th], s + 1, s + 17, tc))
          return false;
        s += 17 + count;
      }
    } else if (marker == 0xC0 || marker == 0xC1) {
      if (next - s < 6 || s[0] != 8)
        return false;
      j->height = be16(s + 1);
      j->width = be16(s + 3);
      j->ncomp = s[5];
      if (j->ncomp < 1 || j->ncomp > 4 || next - s < 6 + 3 * j->ncomp || !j->width || !j->height)
        return false;
      for (int i = 0; i < j->ncomp; i++) {
        struct component *c = &j->comp[i];
        c->id = s[6 + 3 * i];
        c->h = s[7 + 3 * i] >> 4;
        c->v = s[7 + 3 * i] & 15;
        if (c->h < 1 || c->h > 4 || c->v < 1 || c->v > 4)
          return false;
        j->hmax = c->h > j->hmax ? c->h : j->hmax;
        j->vmax = c->v > j->vmax ? c->v : j->vmax;
      }
    } else if (marker == 0xDD) {
      if (next - s < 2)
        return false;
      j->restart = be16(s);
    } else if (marker == 0xDA) {
      if (next - s < 1 || s[0] != j->ncomp || next - s < 1 + 2 * j->ncomp)
        return false; /* one interleaved scan of every component */
      for (int i = 0; i < j->ncomp; i++) {
        int k = 0;
        while (k < j->ncomp && j->comp[k].id != s[1 + 2 * i])
          k++;
        if (k == j->ncomp)
          return false;
        j->order[i] = k;
        j->comp[k].dc = s[2 + 2 * i] >> 4;
        j->comp[k].ac = s[2 + 2 * i] & 15;
        if (j->comp[k].dc > 3 || j->comp[k].ac > 3 || !j->dc[j->comp[k].dc].defined ||
            !j->ac[j->comp[k].ac].defined)
          return false;
      }
      j->data = next;
      j->end = e;
      return !tables_only;
    } else if ((marker >= 0xC2 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 &&
                marker != 0xCC)) {
      return false; /* progressive, lossless, arithmetic */
    }
    p = next;
  }
  return false;
}

/* Bits of entropy-coded data, most significant first in buf. At a marker (or the end) zeros
 * are fed and `beyond` counts them. */
struct bits {
  const uint8_t *p, *end;
  uint64_t buf;
  int n, beyond;
};

static void refill_slow(struct bits *b) {
  while (b->n <= 56) {
    unsigned c = 0;
    if (b->p < b->end && b->p[0] != 0xFF) {
      c = *b->p++;
    } else if (b->end - b->p >= 2 && b->p[1] == 0) {
      c = 0xFF;
      b->p += 2;
    } else {
      b->end = b->p; /* a marker: nothing more of this interval */
      b->beyond++;
    }
    b->buf |= (uint64_t)c << (56 - b->n);
    b->n += 8;
  }
}

static inline void refill(struct bits *b) {
  if (b->n > 56)
    return;
  if (b->end - b->p >= 8) {
    uint64_t v;
    memcpy(&v, b->p, 8);
    v = __builtin_bswap64(v);
    uint64_t x = ~v; /* a zero byte of x is an 0xFF of the data */
    if (!((x - 0x0101010101010101ull) & ~x & 0x8080808080808080ull)) {
      int k = (64 - b->n) >> 3;
      b->buf |= (v >> (64 - 8 * k)) << (64 - 8 * k - b->n);
      b->n += 8 * k;
      b->p += k;
      return;
    }
  }
  refill_slow(b);
}

static inline int symbol(struct bits *b, const struct huffman *h) {
  unsigned e = h->fast[b->buf >> (64 - LOOKAHEAD)];
  if (e) {
    b->buf <<= e >> 8;
    b->n -= (int)(e >> 8);
    return (int)(e & 255);
  }
  for (int l = LOOKAHEAD + 1; l <= 16; l++) {
    int32_t code = (int32_t)(b->buf >> (64 - l));
    if (code <= h->maxcode[l]) {
      b->buf <<= l;
      b->n -= l;
      return h->symbols[h->first[l] + code - h->mincode[l]];
    }
  }
  return -1;
}

static inline int take(struct bits *b, int s) {
  int v = (int)(b->buf >> (64 - s));
  b->buf <<= s;
  b->n -= s;
  return v;
}

/* One block: its coefficients into block (zigzag order undone) when block is not NULL. */
static bool plain_block(struct bits *b, const struct huffman *dc, const struct huffman *ac,
                        int32_t *pred, int16_t *block) {
  refill(b);
  int s = symbol(b, dc);
  if (s < 0 || s > 11)
    return false;
  if (s)
    *pred += extend(take(b, s), s);
  if (block)
    block[0] = (int16_t)*pred;
  int k = 1;
  while (k < 64) {
    if (b->n < 32)
      refill(b);
    int c = ac->fast_ac[b->buf >> (64 - LOOKAHEAD)];
    if (c) {
      k += (c >> 4) & 15;
      b->buf <<= c & 15;
      b->n -= c & 15;
      if (block)
        block[natural[k]] = (int16_t)(c >> 8);
      k++;
      continue;
    }
    int rs = symbol(b, ac);
    if (rs < 0)
      return false;
    int r = rs >> 4;
    s = rs & 15;
    if (s) {
      k += r;
      int v = extend(take(b, s), s);
      if (block)
        block[natural[k]] = (int16_t)v;
      k++;
    } else if (r == 15) {
      k += 16;
    } else {
      break;
    }
  }
  return k <= 64; /* a run past the last coefficient is corrupt (natural[] absorbs it) */
}

/* Decodes every MCU of the scan; each block's coefficients go to visit (if given). */
typedef void (*block_visitor)(void *ctx, int comp, int bx, int by, const int16_t *block);

static bool plain_decode(struct plain_jpeg *j, block_visitor visit, void *ctx) {
  int mcu_w = 8 * j->hmax, mcu_h = 8 * j->vmax;
  int across = (j->width + mcu_w - 1) / mcu_w, down = (j->height + mcu_h - 1) / mcu_h;
  struct bits b = {.p = j->data, .end = j->end};
  for (int i = 0; i < j->ncomp; i++)
    j->comp[i].pred = 0;
  int16_t block[64];
  long mcus = (long)across * down, left = j->restart;
  for (long m = 0; m < mcus; m++) {
    if (j->restart && left-- == 0) {
      /* a restart marker: byte boundary, then FF D0+n, predictions from zero */
      if (b.beyond > (b.n >> 3) || j->end - b.p < 2 || b.p[0] != 0xFF || (b.p[1] & 0xF8) != 0xD0)
        return false;
      b = (struct bits){.p = b.p + 2, .end = j->end};
      for (int i = 0; i < j->ncomp; i++)
        j->comp[i].pred = 0;
      left = j->restart - 1;
    }
    for (int i = 0; i < j->ncomp; i++) {
      struct component *c = &j->comp[j->order[i]];
      for (int v = 0; v < c->v; v++) {
        for (int h = 0; h < c->h; h++) {
          if (visit)
            memset(block, 0, sizeof block);
          if (!plain_block(&b, &j->dc[c->dc], &j->ac[c->ac], &c->pred, visit ? block : NULL))
            return false;
          if (visit)
            visit(ctx, j->order[i], (int)(m % across) * c->h + h, (int)(m / across) * c->v + v,
                  block);
        }
      }
    }
  }
  /* the bits used must all be data, none of the zeros fed past the end */
  return b.beyond * 8 <= b.n;
}

/* ---- libjpeg ----------------------------------------------------------------------------- */

struct failure {
  struct jpeg_error_mgr mgr;
  jmp_buf jump;
};

static void on_error(j_common_ptr cinfo) { longjmp(((struct failure *)cinfo->err)->jump, 1); }

static void on_message(j_common_ptr cinfo, int level) {
  if (level < 0)
    on_error(cinfo); /* corrupt data is an error, as in tessera */
}

static void catch_errors(struct jpeg_decompress_struct *ci, struct failure *f) {
  ci->err = jpeg_std_error(&f->mgr);
  f->mgr.error_exit = on_error;
  f->mgr.emit_message = on_message;
}

struct tiles {
  uint8_t *tables;
  uint32_t tables_len;
  uint8_t **data;
  size_t *len;
  int count;
  uint32_t tile_w, tile_h;
  J_COLOR_SPACE color;
};

static bool libjpeg_open(struct jpeg_decompress_struct *ci, const struct tiles *t, int i) {
  if (t->tables) {
    jpeg_mem_src(ci, t->tables, t->tables_len);
    jpeg_read_header(ci, FALSE);
  }
  jpeg_mem_src(ci, t->data[i], (unsigned long)t->len[i]);
  if (jpeg_read_header(ci, TRUE) != JPEG_HEADER_OK)
    return false;
  ci->jpeg_color_space = t->color;
  return true;
}

/* Decodes tile i at 1/scale to RGB. Returns false on a decoding error. */
static bool libjpeg_tile(const struct tiles *t, int i, int scale, uint8_t *rgb, long *sum) {
  struct jpeg_decompress_struct ci;
  struct failure f;
  catch_errors(&ci, &f);
  if (setjmp(f.jump)) {
    jpeg_destroy_decompress(&ci);
    return false;
  }
  jpeg_create_decompress(&ci);
  if (!libjpeg_open(&ci, t, i)) {
    jpeg_destroy_decompress(&ci);
    return false;
  }
  ci.out_color_space = JCS_RGB;
  ci.dct_method = JDCT_ISLOW;
  ci.scale_num = 1;
  ci.scale_denom = (unsigned)scale;
  jpeg_start_decompress(&ci);
  if (ci.output_width > t->tile_w || ci.output_height > t->tile_h) {
    /* a stream larger than its tile: rgb holds only the tile */
    jpeg_destroy_decompress(&ci);
    return false;
  }
  while (ci.output_scanline < ci.output_height) {
    JSAMPROW r = rgb + (size_t)ci.output_scanline * ci.output_width * 3;
    jpeg_read_scanlines(&ci, &r, 1);
  }
  *sum += rgb[0];
  jpeg_finish_decompress(&ci);
  jpeg_destroy_decompress(&ci);
  return true;
}

/* ---- checking the plain decoder against libjpeg ------------------------------------------ */

struct check {
  struct jpeg_decompress_struct *ci;
  jvirt_barray_ptr *coef;
  long differ;
};

static void compare_block(void *ctx, int comp, int bx, int by, const int16_t *block) {
  struct check *c = ctx;
  jpeg_component_info *info = &c->ci->comp_info[comp];
  if ((JDIMENSION)bx >= info->width_in_blocks || (JDIMENSION)by >= info->height_in_blocks)
    return; /* padding blocks of the last MCUs: libjpeg keeps none */
  JBLOCKARRAY row =
      c->ci->mem->access_virt_barray((j_common_ptr)c->ci, c->coef[comp], (JDIMENSION)by, 1, FALSE);
  if (memcmp(row[0][bx], block, 64 * sizeof(JCOEF)) != 0)
    c->differ++;
}

static bool same_coefficients(const struct tiles *t, int i, struct plain_jpeg *j) {
  struct jpeg_decompress_struct ci;
  struct failure f;
  catch_errors(&ci, &f);
  if (setjmp(f.jump)) {
    jpeg_destroy_decompress(&ci);
    return false;
  }
  jpeg_create_decompress(&ci);
  bool ok = libjpeg_open(&ci, t, i);
  struct check c = {.ci = &ci};
  if (ok) {
    c.coef = jpeg_read_coefficients(&ci);
    ok = plain_decode(j, compare_block, &c) && c.differ == 0;
  }
  jpeg_destroy_decompress(&ci);
  return ok;
}

/* ---- timing -------------------------------------------------------------------------------- */

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static void discard(void *ctx, int comp, int bx, int by, const int16_t *block) {
  (void)comp, (void)bx, (void)by;
  *(long *)ctx += block[1];
}

enum { LIB1, LIB2, LIB8, KEPT, SKIMMED, WAYS };
static const char *const names[WAYS] = {"libjpeg 1/1", "libjpeg 1/2", "libjpeg 1/8",
                                        "plain decoder, kept", "plain decoder, skimmed"};

static bool run_way(int way, const struct tiles *t, struct plain_jpeg *parsed, uint8_t *rgb,
                    long *sum) {
  static const int scale[] = {1, 2, 8};
  for (int i = 0; i < t->count; i++) {
    if (way <= LIB8) {
      if (!libjpeg_tile(t, i, scale[way], rgb, sum))
        return false;
    } else if (!plain_decode(&parsed[i], way == KEPT ? discard : NULL, sum)) {
      return false;
    }
  }
  return true;
}

static int usage(void) {
  fprintf(stderr, "usage: entropy_probe SLIDE [--level D] [--tiles N] [--repeat R]\n"
                  "  D: the TIFF directory (JPEG, tiled; default 0); N: tiles read (default "
                  "1024); R: passes (default 5)\n");
  return 2;
}

int main(int argc, char **argv) {
  if (argc < 2 || argv[1][0] == '-')
    return usage();
  long dir = 0, want = 1024, repeat = 5;
  for (int a = 2; a < argc; a += 2) {
    char *end;
    if (a + 1 >= argc)
      return usage();
    long v = strtol(argv[a + 1], &end, 10);
    if (*end || v < 0 || (v == 0 && strcmp(argv[a], "--level")))
      return usage();
    if (!strcmp(argv[a], "--level"))
      dir = v;
    else if (!strcmp(argv[a], "--tiles"))
      want = v;
    else if (!strcmp(argv[a], "--repeat"))
      repeat = v > 99 ? 99 : v;
    else
      return usage();
  }
  TIFFSetWarningHandler(NULL); /* vendors' private tags */
  TIFF *tif = TIFFOpen(argv[1], "r");
  if (!tif)
    return fprintf(stderr, "entropy_probe: cannot open %s\n", argv[1]), 1;
  uint16_t compression = 0, photometric = 0;
  if (!TIFFSetDirectory(tif, (tdir_t)dir) || !TIFFIsTiled(tif) ||
      !TIFFGetField(tif, TIFFTAG_COMPRESSION, &compression) || compression != COMPRESSION_JPEG)
    return fprintf(stderr, "entropy_probe: directory %ld is not tiled JPEG\n", dir), 1;
  TIFFGetFieldDefaulted(tif, TIFFTAG_PHOTOMETRIC, &photometric);
  uint32_t tw = 0, th = 0, tables_len = 0;
  void *tables = NULL;
  TIFFGetField(tif, TIFFTAG_TILEWIDTH, &tw);
  TIFFGetField(tif, TIFFTAG_TILELENGTH, &th);
  struct tiles t = {
      .color = photometric == PHOTOMETRIC_RGB ? JCS_RGB : JCS_YCbCr, .tile_w = tw, .tile_h = th};
  if (TIFFGetField(tif, TIFFTAG_JPEGTABLES, &tables_len, &tables) && tables_len > 0) {
    t.tables = malloc(tables_len);
    memcpy(t.tables, tables, tables_len);
    t.tables_len = tables_len;
  }
  uint64_t *counts = NULL;
  TIFFGetField(tif, TIFFTAG_TILEBYTECOUNTS, &counts);
  int total = (int)TIFFNumberOfTiles(tif);
  t.count = want < total ? (int)want : total;
  t.data = calloc((size_t)t.count, sizeof *t.data);
  t.len = calloc((size_t)t.count, sizeof *t.len);
  struct plain_jpeg *parsed = calloc((size_t)t.count, sizeof *parsed);
  uint8_t *rgb = malloc((size_t)tw * th * 4 + 64);
  if (!counts || !t.data || !t.len || !parsed || !rgb || tw == 0 || th == 0)
    return fprintf(stderr, "entropy_probe: cannot read the tiles\n"), 1;
  int checked = 0;
  for (int i = 0; i < t.count; i++) {
    if (counts[i] == 0 || counts[i] > ((uint64_t)64 << 20))
      return fprintf(stderr, "entropy_probe: tile %d has %llu bytes\n", i,
                     (unsigned long long)counts[i]),
             1;
    t.data[i] = malloc(counts[i]);
    tmsize_t got =
        t.data[i] ? TIFFReadRawTile(tif, (uint32_t)i, t.data[i], (tmsize_t)counts[i]) : -1;
    if (got <= 0)
      return fprintf(stderr, "entropy_probe: cannot read tile %d\n", i), 1;
    t.len[i] = (size_t)got;
    struct plain_jpeg *j = &parsed[i];
    if ((t.tables && !plain_parse(j, t.tables, t.tables_len, true)) ||
        !plain_parse(j, t.data[i], t.len[i], false))
      return fprintf(stderr, "entropy_probe: tile %d is not sequential Huffman JPEG\n", i), 1;
    if (!same_coefficients(&t, i, j))
      return fprintf(stderr,
                     "entropy_probe: tile %d: the plain decoder's coefficients differ "
                     "from libjpeg's (or a decoder failed)\n",
                     i),
             1;
    checked++;
  }
  TIFFClose(tif);

  double times[WAYS][99];
  long sum = 0;
  for (long r = 0; r < repeat; r++) {
    for (int w = 0; w < WAYS; w++) {
      double t0 = now();
      if (!run_way(w, &t, parsed, rgb, &sum))
        return fprintf(stderr, "entropy_probe: %s failed\n", names[w]), 1;
      times[w][r] = (now() - t0) / t.count * 1e6;
    }
  }
  printf("%s, directory %ld: %d tiles of %ux%u, %d checked: the plain decoder's coefficients "
         "equal libjpeg-turbo's (%d)\n\n",
         argv[1], dir, t.count, tw, th, checked, LIBJPEG_TURBO_VERSION_NUMBER);
  printf("| way | us per tile (median of %ld) | / libjpeg 1/2 |\n|---|---|---|\n", repeat);
  double median[WAYS];
  for (int w = 0; w < WAYS; w++) {
    qsort(times[w], (size_t)repeat, sizeof times[w][0], by_value);
    median[w] = times[w][repeat / 2];
  }
  for (int w = 0; w < WAYS; w++)
    printf("| %s | %.1f | %.2f |\n", names[w], median[w], median[w] / median[LIB2]);
  printf("\n(checksum %ld)\n", sum);
  return 0;
}
