/* Fuzz target: the vendors' metadata parsers, reached as a slide reaches them. The first byte
 * chooses a vendor (modulo 4); the rest is spliced into a small valid TIFF built in memory for
 * that vendor, which is written to a memfd, opened with tessera_open, read at every level (up
 * to 4) and in every associated image, and closed.
 *
 *   0  Aperio:  the rest is the first ImageDescription ("Aperio " is put before it unless it
 *               begins "Aperio"); a thumbnail, a second level, a label and a macro follow.
 *   1  Philips: Software "Philips", the rest is the ImageDescription (the XML); two tiled
 *               levels (the second reduced-resolution) and a "Label" strip.
 *   2  OME:     the rest is the ImageDescription (OME-XML); the first directory has two
 *               SubIFDs, and a second directory can be named as the label.
 *   3  NDPI:    Make "Hamamatsu"; the rest up to its first NUL is the property map tag. The
 *               first directory is one JPEG strip with restart markers and a McuStarts tag, a
 *               macro (SourceLens -1) follows. After the NUL, when at least 6 bytes follow:
 *               width and height (16-bit little-endian, 1 to 512), the number of McuStarts
 *               values (16 bits: the low 15 the count; the top bit adds a McuStartsHigh tag of
 *               as many values) and the values (32-bit little-endian), then the strip's bytes.
 *               Otherwise a 128x32 JPEG made here, with its own McuStarts, is the strip.
 * A first byte of 0xF0 or more picks the vendors added since (so that the seeds above keep
 * their meaning):
 *   0xF0 Leica: the rest is the first directory's ImageDescription (the SCN XML); tiled
 *               directories of 64x48 (0 and 1), 32x24 (2) and 16x12 (3) and a 20x16 strip (4)
 *               are there for its dimensions to name.
 *   0xF1 Ventana: the rest up to its first NUL is the first directory's XMLPacket (the iScan
 *               XML), on a "Label_Image" strip; after the NUL, level 0's XMLPacket (a BIF's
 *               EncodeInfo), when anything follows. Level 0 is 64x48 in 16x16 tiles ("level=0
 *               mag=40"), level 1 32x24 ("level=1 mag=20"); a "Thumbnail" strip follows.
 */
#include <stdint.h>
#include <stdio.h> /* before jpeglib.h, which needs FILE and size_t */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <jpeglib.h>

#include "tessera.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* ---- a TIFF writer (classic, little-endian) ---- */

struct buf {
  uint8_t *b;
  size_t n, cap;
  int failed;
};

static void put(struct buf *o, const void *p, size_t n) {
  if (o->failed)
    return;
  if (o->n + n > o->cap) {
    size_t cap = (o->n + n) * 2;
    uint8_t *b = realloc(o->b, cap);
    if (!b) {
      o->failed = 1;
      return;
    }
    o->b = b;
    o->cap = cap;
  }
  if (n)
    memcpy(o->b + o->n, p, n);
  o->n += n;
}

static void le16(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
}

static void le32(uint8_t *p, uint32_t v) {
  le16(p, v);
  le16(p + 2, v >> 16);
}

static void put32(struct buf *o, uint32_t v) {
  uint8_t b[4];
  le32(b, v);
  put(o, b, 4);
}

enum { BYTE = 1, ASCII = 2, SHORT = 3, LONG = 4, SLONG = 9, FLOAT = 11 };

struct entry {
  uint16_t tag, type;
  uint32_t count;
  uint8_t *val; /* count values, little-endian (owned) */
  size_t len;
};

struct ifd {
  struct entry e[40];
  int n;
};

static uint8_t *tag_add(struct ifd *d, uint16_t tag, uint16_t type, uint32_t count, size_t len) {
  uint8_t *v = calloc(1, len ? len : 1);
  if (!v || d->n == (int)(sizeof d->e / sizeof d->e[0])) {
    free(v);
    return NULL;
  }
  d->e[d->n++] = (struct entry){tag, type, count, v, len};
  return v;
}

static void tag_longs(struct ifd *d, uint16_t tag, uint16_t type, uint32_t n, const uint32_t *vals,
                      uint32_t fill) {
  uint8_t *v = tag_add(d, tag, type, n, (size_t)n * 4);
  for (uint32_t i = 0; v && i < n; i++)
    le32(v + 4 * i, vals ? vals[i] : fill);
}

static void tag_long(struct ifd *d, uint16_t tag, uint32_t value) {
  tag_longs(d, tag, LONG, 1, NULL, value);
}

static void tag_shorts(struct ifd *d, uint16_t tag, uint32_t n, uint16_t value) {
  uint8_t *v = tag_add(d, tag, SHORT, n, (size_t)n * 2);
  for (uint32_t i = 0; v && i < n; i++)
    le16(v + 2 * i, value);
}

static void tag_ascii(struct ifd *d, uint16_t tag, const void *s, size_t len) {
  uint8_t *v = tag_add(d, tag, ASCII, (uint32_t)len + 1, len + 1);
  if (v)
    memcpy(v, s, len); /* and the NUL calloc put there */
}

static void tag_bytes(struct ifd *d, uint16_t tag, const void *s, size_t len) {
  uint8_t *v = tag_add(d, tag, BYTE, (uint32_t)len, len);
  if (v)
    memcpy(v, s, len);
}

static void tag_string(struct ifd *d, uint16_t tag, const char *s) {
  tag_ascii(d, tag, s, strlen(s));
}

static void tag_float(struct ifd *d, uint16_t tag, float f) {
  uint32_t bits;
  memcpy(&bits, &f, 4);
  tag_longs(d, tag, FLOAT, 1, NULL, bits);
}

static void ifd_free(struct ifd *d) {
  for (int i = 0; i < d->n; i++)
    free(d->e[i].val);
  d->n = 0;
}

/* Writes the directory's long values, then the directory (entries sorted by tag); returns its
 * offset, and in *next_at where its next-directory offset is. Frees the entries. */
static uint32_t ifd_write(struct buf *o, struct ifd *d, size_t *next_at) {
  for (int i = 1; i < d->n; i++)
    for (int j = i; j > 0 && d->e[j - 1].tag > d->e[j].tag; j--) {
      struct entry t = d->e[j];
      d->e[j] = d->e[j - 1];
      d->e[j - 1] = t;
    }
  uint32_t where[40];
  for (int i = 0; i < d->n; i++) {
    if (d->e[i].len <= 4)
      continue;
    put(o, "", o->n & 1);
    where[i] = (uint32_t)o->n;
    put(o, d->e[i].val, d->e[i].len);
  }
  put(o, "", o->n & 1);
  uint32_t at = (uint32_t)o->n;
  uint8_t h[2];
  le16(h, (uint32_t)d->n);
  put(o, h, 2);
  for (int i = 0; i < d->n; i++) {
    uint8_t e[12] = {0};
    le16(e, d->e[i].tag);
    le16(e + 2, d->e[i].type);
    le32(e + 4, d->e[i].count);
    if (d->e[i].len <= 4)
      memcpy(e + 8, d->e[i].val, d->e[i].len);
    else
      le32(e + 8, where[i]);
    put(o, e, 12);
  }
  *next_at = o->n;
  put32(o, 0);
  ifd_free(d);
  return at;
}

/* Writes a directory of the main chain and links it after the one whose next-directory
 * offset is at *link. */
static void chain(struct buf *o, size_t *link, struct ifd *d) {
  size_t next;
  uint32_t at = ifd_write(o, d, &next);
  if (!o->failed)
    le32(o->b + *link, at);
  *link = next;
}

/* ---- images ---- */

#define BLOB_W 64
#define BLOB_H 48

/* An uncompressed RGB image whose every tile (or its one strip) is the pixels at blob. */
static void raw_image(struct ifd *d, uint32_t w, uint32_t h, int tiled, uint32_t blob) {
  tag_long(d, 256, w);
  tag_long(d, 257, h);
  tag_shorts(d, 258, 3, 8);
  tag_shorts(d, 259, 1, 1);
  tag_shorts(d, 262, 1, 2);
  tag_shorts(d, 277, 1, 3);
  tag_shorts(d, 284, 1, 1);
  if (tiled) {
    uint32_t n = ((w + 15) / 16) * ((h + 15) / 16);
    tag_long(d, 322, 16);
    tag_long(d, 323, 16);
    tag_longs(d, 324, LONG, n, NULL, blob);
    tag_longs(d, 325, LONG, n, NULL, 16 * 16 * 3);
  } else {
    tag_long(d, 273, blob);
    tag_long(d, 278, h);
    tag_long(d, 279, w * h * 3);
  }
}

/* The file header and the pixels every raw image shares; returns the pixels' offset. */
static uint32_t begin(struct buf *o) {
  put(o, "II*\0\0\0\0\0", 8);
  uint32_t at = (uint32_t)o->n;
  uint8_t row[BLOB_W * 3];
  for (int y = 0; y < BLOB_H; y++) {
    for (int x = 0; x < BLOB_W; x++) {
      row[3 * x] = (uint8_t)(x * 4);
      row[3 * x + 1] = (uint8_t)(y * 5);
      row[3 * x + 2] = (uint8_t)(128 + x - y);
    }
    put(o, row, sizeof row);
  }
  return at;
}

static void build_aperio(struct buf *o, const uint8_t *p, size_t n) {
  uint32_t blob = begin(o);
  size_t link = 4;
  struct ifd d = {0};
  raw_image(&d, 64, 48, 1, blob);
  char *desc = malloc(n + 8);
  if (desc) {
    size_t k = n >= 6 && memcmp(p, "Aperio", 6) == 0 ? 0 : 7;
    memcpy(desc, "Aperio ", k);
    memcpy(desc + k, p, n);
    tag_ascii(&d, 270, desc, n + k);
    free(desc);
  }
  chain(o, &link, &d);
  raw_image(&d, 16, 12, 0, blob);
  tag_string(&d, 270, "Aperio Image Library v10.0.51\r\n64x48 -> 16x12");
  chain(o, &link, &d);
  raw_image(&d, 32, 24, 1, blob);
  tag_string(&d, 270, "Aperio Image Library v10.0.51\r\n64x48 [0,0 64x48] (16x16) -> 32x24");
  chain(o, &link, &d);
  raw_image(&d, 20, 16, 0, blob);
  tag_long(&d, 254, 1);
  tag_string(&d, 270, "Aperio Image Library v10.0.51\r\nlabel 20x16");
  chain(o, &link, &d);
  raw_image(&d, 32, 12, 0, blob);
  tag_long(&d, 254, 9);
  tag_string(&d, 270, "Aperio Image Library v10.0.51\r\nmacro 32x12");
  chain(o, &link, &d);
}

static void build_philips(struct buf *o, const uint8_t *p, size_t n) {
  uint32_t blob = begin(o);
  size_t link = 4;
  struct ifd d = {0};
  raw_image(&d, 64, 48, 1, blob);
  tag_string(&d, 305, "Philips DP v1.0");
  tag_ascii(&d, 270, p, n);
  chain(o, &link, &d);
  raw_image(&d, 32, 32, 1, blob); /* padded to whole tiles, as Philips pads */
  tag_long(&d, 254, 1);
  tag_string(&d, 305, "Philips DP v1.0");
  chain(o, &link, &d);
  raw_image(&d, 20, 16, 0, blob);
  tag_string(&d, 305, "Philips DP v1.0");
  tag_string(&d, 270, "Label");
  chain(o, &link, &d);
}

static void build_ome(struct buf *o, const uint8_t *p, size_t n) {
  uint32_t blob = begin(o);
  size_t link = 4;
  struct ifd d = {0};
  uint32_t sub[2];
  size_t next;
  raw_image(&d, 32, 24, 1, blob);
  tag_long(&d, 254, 1);
  sub[0] = ifd_write(o, &d, &next);
  raw_image(&d, 16, 12, 1, blob);
  tag_long(&d, 254, 1);
  sub[1] = ifd_write(o, &d, &next);
  raw_image(&d, 64, 48, 1, blob);
  tag_ascii(&d, 270, p, n);
  tag_longs(&d, 330, LONG, 2, sub, 0);
  chain(o, &link, &d);
  raw_image(&d, 20, 16, 0, blob);
  chain(o, &link, &d);
}

static void build_leica(struct buf *o, const uint8_t *p, size_t n) {
  uint32_t blob = begin(o);
  size_t link = 4;
  struct ifd d = {0};
  raw_image(&d, 64, 48, 1, blob);
  tag_ascii(&d, 270, p, n);
  chain(o, &link, &d);
  static const uint32_t sizes[][3] = {{64, 48, 1}, {32, 24, 1}, {16, 12, 1}, {20, 16, 0}};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    raw_image(&d, sizes[i][0], sizes[i][1], (int)sizes[i][2], blob);
    chain(o, &link, &d);
  }
}

static void build_ventana(struct buf *o, const uint8_t *p, size_t n) {
  uint32_t blob = begin(o);
  size_t link = 4;
  struct ifd d = {0};
  const uint8_t *nul = memchr(p, 0, n);
  size_t iscan = nul ? (size_t)(nul - p) : n;
  raw_image(&d, 20, 16, 0, blob);
  tag_string(&d, 270, "Label_Image");
  if (iscan)
    tag_bytes(&d, 700, p, iscan);
  chain(o, &link, &d);
  raw_image(&d, 64, 48, 1, blob);
  tag_string(&d, 270, "level=0 mag=40 quality=90");
  if (nul && n - iscan > 1)
    tag_bytes(&d, 700, nul + 1, n - iscan - 1);
  chain(o, &link, &d);
  raw_image(&d, 32, 24, 1, blob);
  tag_string(&d, 270, "level=1 mag=20 quality=90");
  chain(o, &link, &d);
  raw_image(&d, 16, 12, 0, blob);
  tag_string(&d, 270, "Thumbnail");
  chain(o, &link, &d);
}

/* ---- the NDPI strip ---- */

struct strip {
  uint8_t *jpeg;
  unsigned long len;
  uint32_t w, h, nstarts;
  uint32_t starts[64];
};

/* A 128x32 YCbCr 4:4:4 JPEG with a restart marker every 4 MCUs (tiles of 32x8, as NDPI's
 * intervals are), and the McuStarts NDPI would write for it: where the first interval's
 * data begins, then where each later one's begins (just after its RST marker). */
static const struct strip *template_strip(void) {
  static struct strip s;
  if (s.jpeg)
    return &s;
  struct jpeg_compress_struct c;
  struct jpeg_error_mgr err;
  c.err = jpeg_std_error(&err);
  jpeg_create_compress(&c);
  jpeg_mem_dest(&c, &s.jpeg, &s.len);
  c.image_width = s.w = 128;
  c.image_height = s.h = 32;
  c.input_components = 3;
  c.in_color_space = JCS_RGB;
  jpeg_set_defaults(&c);
  jpeg_set_quality(&c, 60, TRUE);
  c.comp_info[0].h_samp_factor = c.comp_info[0].v_samp_factor = 1;
  c.restart_interval = 4;
  jpeg_start_compress(&c, TRUE);
  uint8_t row[128 * 3];
  for (uint32_t y = 0; y < s.h; y++) {
    for (uint32_t x = 0; x < s.w; x++) {
      row[3 * x] = (uint8_t)(x * 2);
      row[3 * x + 1] = (uint8_t)(y * 8);
      row[3 * x + 2] = (uint8_t)((x ^ y) * 3);
    }
    JSAMPROW r = row;
    jpeg_write_scanlines(&c, &r, 1);
  }
  jpeg_finish_compress(&c);
  jpeg_destroy_compress(&c);
  /* The entropy-coded data begins after SOS; no segment before it holds FF D0..D7. */
  size_t i = 2;
  while (i + 4 <= s.len && s.jpeg[i + 1] != 0xDA)
    i += 2 + ((size_t)s.jpeg[i + 2] << 8 | s.jpeg[i + 3]);
  i += 2 + ((size_t)s.jpeg[i + 2] << 8 | s.jpeg[i + 3]);
  s.starts[s.nstarts++] = (uint32_t)i;
  for (; i + 1 < s.len && s.nstarts < 64; i++)
    if (s.jpeg[i] == 0xFF && s.jpeg[i + 1] >= 0xD0 && s.jpeg[i + 1] <= 0xD7)
      s.starts[s.nstarts++] = (uint32_t)(i + 2);
  return &s;
}

static uint32_t rd16(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }

static uint32_t rd32(const uint8_t *p) { return rd16(p) | rd16(p + 2) << 16; }

static void build_ndpi(struct buf *o, const uint8_t *p, size_t n) {
  const uint8_t *nul = memchr(p, 0, n);
  size_t map_len = nul ? (size_t)(nul - p) : n;
  const uint8_t *rest = nul ? nul + 1 : p + n;
  size_t rest_len = (size_t)(p + n - rest);
  const struct strip *t = template_strip();
  uint32_t w = t->w, h = t->h, nstarts = t->nstarts;
  const uint8_t *jpeg = t->jpeg, *starts = NULL, *high = NULL;
  size_t jpeg_len = t->len;
  if (rest_len >= 6) {
    w = 1 + (rd16(rest) - 1) % 512;
    h = 1 + (rd16(rest + 2) - 1) % 512;
    uint32_t want = rd16(rest + 4);
    nstarts = want & 0x7FFF;
    rest += 6;
    rest_len -= 6;
    size_t arrays = want & 0x8000 ? 2 : 1;
    if (nstarts > rest_len / 4 / arrays)
      nstarts = (uint32_t)(rest_len / 4 / arrays);
    starts = rest;
    high = want & 0x8000 ? rest + 4 * (size_t)nstarts : NULL;
    rest += 4 * arrays * nstarts;
    rest_len -= 4 * arrays * nstarts;
    jpeg = rest;
    jpeg_len = rest_len;
  }
  uint32_t blob = begin(o), at = (uint32_t)o->n;
  put(o, jpeg, jpeg_len);
  size_t link = 4;
  struct ifd d = {0};
  tag_long(&d, 256, w);
  tag_long(&d, 257, h);
  tag_shorts(&d, 258, 3, 8);
  tag_shorts(&d, 259, 1, 7);
  tag_shorts(&d, 262, 1, 6);
  tag_string(&d, 271, "Hamamatsu");
  tag_string(&d, 272, "C13210");
  tag_long(&d, 273, at);
  tag_shorts(&d, 277, 1, 3);
  tag_long(&d, 278, h);
  tag_long(&d, 279, (uint32_t)jpeg_len);
  tag_string(&d, 305, "NDP.scan 3.2.4");
  tag_shorts(&d, 530, 2, 1);
  tag_float(&d, 65421, 20);
  tag_longs(&d, 65422, SLONG, 1, NULL, 1234567);
  tag_longs(&d, 65423, SLONG, 1, NULL, (uint32_t)-7654);
  if (nstarts > 0) {
    uint8_t *v = tag_add(&d, 65426, LONG, nstarts, 4 * (size_t)nstarts);
    for (uint32_t i = 0; v && i < nstarts; i++)
      le32(v + 4 * i, starts ? rd32(starts + 4 * i) : t->starts[i]);
  }
  if (high && nstarts > 0) {
    uint8_t *v = tag_add(&d, 65432, LONG, nstarts, 4 * (size_t)nstarts);
    if (v)
      memcpy(v, high, 4 * (size_t)nstarts);
  }
  tag_string(&d, 65427, "ABCDEF-0001");
  if (map_len > 0)
    tag_ascii(&d, 65449, p, map_len);
  chain(o, &link, &d);
  raw_image(&d, 32, 12, 0, blob);
  tag_string(&d, 271, "Hamamatsu");
  tag_float(&d, 65421, -1);
  chain(o, &link, &d);
  raw_image(&d, 16, 8, 0, blob);
  tag_string(&d, 271, "Hamamatsu");
  tag_float(&d, 65421, -2);
  chain(o, &link, &d);
}

/* ---- the target ---- */

typedef void builder(struct buf *o, const uint8_t *payload, size_t len);

static void read_slide(tessera_slide *s) {
  static uint8_t px[256 * 256 * 4];
  tessera_read_options o;
  tessera_read_options_init(&o);
  o.channels = 4;
  for (int32_t l = 0; l < tessera_level_count(s) && l < 4; l++) {
    tessera_read_region(s, 0, 0, l, 64, 64, &o, px, sizeof px);
    tessera_read_region(s, -8, 20, l, 40, 24, NULL, px, sizeof px);
  }
  for (size_t i = 0; i < tessera_associated_image_count(s); i++) {
    const char *name = tessera_associated_image_name(s, i);
    int64_t w, h;
    if (tessera_associated_image_dimensions(s, name, &w, &h) == TESSERA_OK && w > 0 && h > 0 &&
        w <= 256 && h <= 256)
      tessera_read_associated_image(s, name, NULL, px, sizeof px);
  }
  for (size_t i = 0; i < tessera_property_count(s); i++)
    (void)strlen(tessera_property_value(s, tessera_property_key(s, i)));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int fd = -1;
  static char path[64];
  if (size < 1)
    return 0;
  if (fd < 0) {
    fd = memfd_create("tessera-fuzz-vendor", 0);
    if (fd < 0)
      return 0;
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  }
  static builder *const build[] = {build_aperio, build_philips, build_ome, build_ndpi};
  static builder *const added[] = {build_leica, build_ventana};
  struct buf o = {0};
  if (data[0] >= 0xF0)
    added[(data[0] - 0xF0) % (sizeof added / sizeof added[0])](&o, data + 1, size - 1);
  else
    build[data[0] % 4](&o, data + 1, size - 1);
  if (!o.failed && ftruncate(fd, 0) == 0 && pwrite(fd, o.b, o.n, 0) == (ssize_t)o.n) {
    tessera_slide *s = NULL;
    if (tessera_open(path, &s) == TESSERA_OK) {
      read_slide(s);
      tessera_close(s);
    }
  }
  free(o.b);
  return 0;
}
