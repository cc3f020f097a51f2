/*
 * tessera — fast, byte-exact reading of tiled pyramidal TIFF whole-slide images.
 *
 * This is the only public header (with tessera_version.h, generated, which it includes). Every
 * other file of the library is private.
 *
 * Conventions
 *  - Every call that can fail returns a tessera_status. When it is not TESSERA_OK, the
 *    message of that failure can be read with tessera_error_message() from the thread that
 *    made the call, until that thread's next failing call.
 *  - Objects come in create/destroy pairs; destroying NULL does nothing.
 *  - Option and result structs begin with their own size (struct_size), so they can grow
 *    without breaking programs built against an older (smaller) or newer (larger) copy of
 *    this header. Fill an option struct with its *_init() macro first: it passes
 *    sizeof *options, and the library writes defaults into that many bytes and no more. A
 *    call reads only the first struct_size bytes of an option struct (the fields past them
 *    keep their defaults) and writes only the first struct_size bytes of a result struct,
 *    setting its struct_size to the bytes it wrote (fewer than the caller's when the library
 *    is older than the caller's header). A struct_size too small to hold struct_size itself
 *    is refused (TESSERA_E_ARGUMENT).
 *  - Coordinates: x, y are in level-0 pixels (they may be negative or past the edge);
 *    width and height are in pixels of the requested level.
 *
 * Thread safety
 *  - tessera_slide: every function except tessera_close() may be called on the same slide
 *    from many threads at once. An open slide is immutable; reads share one file descriptor
 *    through pread() and take no lock.
 *  - tessera_batch_iter: belongs to one consumer thread (its worker threads are the
 *    library's own). Different iterators, on the same slide or not, may be used from
 *    different threads at once.
 *  - tessera_error_message() is per thread.
 *
 * Threads
 *  - Parallel reads and batch iterators use one pool of worker threads owned by the library:
 *    started on first use, one per online CPU, shared by every slide and call, never spawned
 *    per call. A request's num_workers caps how many of them it uses; a long stream gives
 *    its threads up between tiles, so other requests are not starved. A process that forks
 *    gets a fresh pool in the child on first use there. An iterator made before fork() is
 *    not usable in the child (next fails with TESSERA_E_ARGUMENT; destroy and release do
 *    nothing there); make iterators in the process that uses them.
 */
#ifndef TESSERA_H
#define TESSERA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(TESSERA_BUILDING) && defined(__GNUC__)
#define TESSERA_API __attribute__((visibility("default")))
#else
#define TESSERA_API
#endif

/* TESSERA_VERSION_MAJOR, _MINOR, _PATCH and TESSERA_VERSION_STRING ("MAJOR.MINOR.PATCH"): the
 * version of this header, generated from the build file. */
#include "tessera_version.h"

/* The library's version as "MAJOR.MINOR.PATCH" (TESSERA_VERSION_STRING of the header it was
 * built with). Thread-safe. */
TESSERA_API const char *tessera_version(void);

typedef enum tessera_status {
  TESSERA_OK = 0,
  TESSERA_E_ARGUMENT = 1,    /* the caller passed a bad argument */
  TESSERA_E_IO = 2,          /* the operating system failed to open or read the file */
  TESSERA_E_FORMAT = 3,      /* not a TIFF, or its structure is malformed */
  TESSERA_E_UNSUPPORTED = 4, /* a valid TIFF feature tessera does not read (e.g. a codec) */
  TESSERA_E_CORRUPT = 5,     /* tile data that cannot be decoded */
  TESSERA_E_NOMEM = 6,       /* out of memory */
  TESSERA_E_LIMIT = 7        /* the file asks for more than a configured limit allows */
} tessera_status;

/* A short constant name for a status, e.g. "corrupt data". Thread-safe. */
TESSERA_API const char *tessera_status_string(tessera_status status);

/* The message of the last failed call made by the calling thread ("" if none). The pointer
 * stays valid until this thread's next tessera call. */
TESSERA_API const char *tessera_error_message(void);

/* ---------------------------------------------------------------------------------------
 * Opening slides
 */

typedef struct tessera_slide tessera_slide;

/* Limits applied to every size taken from the file, and to what one read may produce.
 * Defaults are safe for scanner files. A limit exceeded fails with TESSERA_E_LIMIT and a
 * message naming it. */
typedef struct tessera_open_options {
  size_t struct_size;              /* sizeof(tessera_open_options) */
  uint32_t max_directories;        /* TIFF directories (IFDs and SubIFDs) followed; 4096 */
  int64_t max_dimension;           /* largest level width or height; 1 << 24 */
  uint64_t max_tile_bytes;         /* largest compressed tile or strip; 256 MiB */
  uint64_t max_decoded_tile_bytes; /* largest decoded tile or strip; 1 GiB */
  uint64_t max_read_bytes;         /* largest output of one read: a region, level or
                                      associated image (width x height x channels), or the
                                      buffers of a batch iterator (min(batch_size, n) patches
                                      x (prefetch_factor + 1), with the memory that scheduling
                                      their tiles takes); 4 GiB. Guards callers that size
                                      their buffers from a level's dimensions (a hostile file
                                      may declare 2^24 x 2^24). */
  /* Remote slides (http://, https:// URLs; see "Remote slides" below). -1 (the default)
   * takes the environment variable named, else the value after it. */
  int32_t remote_timeout_ms;  /* one request's time limit, connection included;
                                 TESSERA_REMOTE_TIMEOUT_MS, else 30000 */
  int32_t remote_retries;     /* retries of a request that failed for a reason that may pass
                                 (5xx, 429, reset, timeout, truncated body);
                                 TESSERA_REMOTE_RETRIES, else 4 */
  int32_t remote_requests;    /* requests in flight at once for the slide;
                                 TESSERA_REMOTE_REQUESTS, else 32 */
  int32_t remote_block_kib;   /* the block cache's block: bytes are fetched in aligned blocks
                                 of this many KiB; TESSERA_REMOTE_BLOCK_KIB, else 64 */
  int64_t remote_cache_mib;   /* the block cache of fetched bytes (LRU), MiB, a budget per
                                 process: the remote slides open share the largest of theirs,
                                 each holding at most an even share; 0: none for this slide
                                 (one request per read, no read-ahead);
                                 TESSERA_REMOTE_CACHE_MIB, else 64 */
} tessera_open_options;

/* Fills the first struct_size bytes of *options with the defaults, and sets its struct_size
 * (see Conventions). Called through tessera_open_options_init(options), which passes
 * sizeof *options. Thread-safe. */
TESSERA_API void tessera_open_options_init_sized(tessera_open_options *options, size_t struct_size);
#define tessera_open_options_init(options)                                                         \
  tessera_open_options_init_sized((options), sizeof *(options))

/* Opens a slide with default options. On success *out holds the slide; on failure *out is
 * NULL. Thread-safe: any number of threads may open slides (the same file too) at once. */
TESSERA_API tessera_status tessera_open(const char *path, tessera_slide **out);

/* As tessera_open, with options (NULL means the defaults). Thread-safe. */
TESSERA_API tessera_status tessera_open_ex(const char *path, const tessera_open_options *options,
                                           tessera_slide **out);

/* Remote slides. tessera_open and tessera_open_ex take http:// and https:// URLs (presigned
 * object-store URLs included) and s3://bucket/key (signed with AWS Signature Version 4 from
 * the AWS_* environment variables or ~/.aws/credentials, endpoint and region from
 * AWS_ENDPOINT_URL and AWS_REGION; unsigned without credentials: README, "Remote slides") as
 * well as paths, in a build with libcurl (otherwise they fail
 * with TESSERA_E_UNSUPPORTED saying the build has no HTTP support). Bytes are fetched with
 * HTTP range requests: the first (which also learns the size, ETag and Last-Modified) at open,
 * then aligned blocks through the slide's block cache (remote_block_kib, remote_cache_mib), a
 * read missing several adjacent blocks fetching them in one request, so that opening a slide
 * takes a few requests, not one per TIFF directory. Each thread keeps one connection handle,
 * reused across requests and slides; HTTP/2 is used where the server offers it over TLS.
 * Requests failing for a reason that may pass (HTTP 5xx or 429, a reset or dropped
 * connection, a timeout, a body shorter than asked for) are retried remote_retries times with
 * exponential backoff (100 ms doubling, at most 2 s, jittered); a retry that succeeds is
 * invisible. Every failure is TESSERA_E_IO (TESSERA_E_UNSUPPORTED for a server that ignores
 * ranges) with a message naming the URL (without its query string, which may hold a
 * signature) and the cause: the HTTP status (403, 404, ...), "the server ignores Range
 * requests", "the object changed since the slide was opened" (every request after the first
 * carries If-Match with the ETag, or If-Unmodified-Since with Last-Modified; a 412, another
 * ETag or another size is that failure), a truncated body, a timeout. The tile cache keys a
 * remote slide by a hash of its URL, ETag, Last-Modified and size, so a changed object never
 * shares tiles with the old one; an object with neither ETag nor Last-Modified gets a key of
 * its own each time it is opened. TESSERA_CA_BUNDLE (a PEM file), when set at open, replaces
 * the system's certificate authorities for HTTPS. */

/* A caller's byte source, for tessera_open_source: the slide's bytes come from read_at. */
typedef struct tessera_source {
  size_t struct_size; /* sizeof(tessera_source) */
  /* Reads up to length bytes at offset into buffer and returns how many it read: fewer than
   * length only where the source ends. On failure returns -1 after writing a message (a
   * NUL-terminated string of at most message_size bytes, e.g. "connection reset") into
   * message; the read fails with TESSERA_E_IO and that message. Called from any number of
   * threads at once (the library's workers too), until close is called. Required. */
  int64_t (*read_at)(void *user_data, uint64_t offset, size_t length, void *buffer,
                     char *message, size_t message_size);
  void *user_data; /* passed to read_at and close */
  uint64_t size;   /* bytes in the source */
  /* What the source holds, for the tile cache's key (with size): two sources with the same
   * identity must hold the same bytes, so that a changed object never serves tiles of the old
   * one: e.g. a URL with its ETag. Hashed (the key keeps 192 bits of it). Required, not
   * empty; copied. */
  const char *identity;
  const char *name; /* the slide's name in messages; NULL: "source". Copied */
  /* Called once when the library is done with user_data: when the slide is closed, or before
   * tessera_open_source returns when it fails (for any reason but a NULL source or out).
   * Optional. */
  void (*close)(void *user_data);
} tessera_source;

/* Fills the first struct_size bytes of *source with the defaults (all NULL and 0) and sets
 * its struct_size. Called through tessera_source_init(source). Thread-safe. */
TESSERA_API void tessera_source_init_sized(tessera_source *source, size_t struct_size);
#define tessera_source_init(source) tessera_source_init_sized((source), sizeof *(source))

/* Opens the slide whose bytes *source gives, with options (NULL for the defaults; the remote_*
 * ones do not apply). *source is copied. Thread-safe. */
TESSERA_API tessera_status tessera_open_source(const tessera_source *source,
                                               const tessera_open_options *options,
                                               tessera_slide **out);

/* What reading a slide's bytes has cost so far, counted by its byte source. */
typedef struct tessera_io_stats {
  size_t struct_size;   /* sizeof(tessera_io_stats) */
  uint64_t requests;    /* reads made from the source: HTTP requests (retries included),
                           read_at callbacks, pread calls */
  uint64_t bytes;       /* bytes those reads brought */
  uint64_t retries;     /* requests made again after a failure that may pass */
  uint64_t cache_hits;  /* reads served wholly by the slide's block cache (remote slides) */
  /* Process-wide, whatever the slide: the bytes the block caches of all open remote slides
   * hold now, and the budget they share (the largest remote_cache_mib among them, split
   * evenly between them). */
  uint64_t remote_cache_held;
  uint64_t remote_cache_budget;
} tessera_io_stats;

/* Fills *stats (its struct_size must be set; see Conventions). Thread-safe. */
TESSERA_API tessera_status tessera_slide_io_stats(const tessera_slide *slide,
                                                  tessera_io_stats *stats);

/* The limits the slide was opened with, into *out (its struct_size must be set; see
 * Conventions). Thread-safe. */
TESSERA_API tessera_status tessera_slide_limits(const tessera_slide *slide,
                                                tessera_open_options *out);

/* Process-wide, for every slide and thread together: the most bytes that decoding may hold
 * at once in buffers of its own (whole decoded tiles for every codec but JPEG, which decodes
 * just the part needed, and a tile's decoded part shared by several patches). A slide's limits
 * apply to each read, so without it N threads decoding a decompression bomb (under 1 MB of deflate
 * that inflates to max_decoded_tile_bytes) would hold N times its decoded size. A thread about to
 * decode a tile waits, in arrival order, until the other threads' decoding leaves room for it, and
 * gives its share back once the tile is painted. A tile needing more than the whole budget is not
 * refused (a slide's max_decoded_tile_bytes decides what one tile may cost): it waits until nothing
 * else is being decoded and is decoded alone. Decoding straight into the caller's buffer or into
 * the tile cache costs nothing here. Default 1 GiB; 0 is refused (TESSERA_E_ARGUMENT). Takes effect
 * at once, for threads already waiting too. Thread-safe. */
TESSERA_API tessera_status tessera_decode_budget_set(uint64_t bytes);

/* The decode budget now, in bytes. Thread-safe. */
TESSERA_API uint64_t tessera_decode_budget_get(void);

/* Closes a slide. Not thread-safe with respect to that slide: no other call on it may be in
 * progress or follow. NULL is ignored. */
TESSERA_API void tessera_close(tessera_slide *slide);

/* ---------------------------------------------------------------------------------------
 * What a slide holds. All of these are thread-safe; returned strings live as long as the
 * slide.
 */

/* Number of pyramid levels (>= 1); level 0 is the largest. */
TESSERA_API int32_t tessera_level_count(const tessera_slide *slide);

typedef struct tessera_level_info {
  size_t struct_size;    /* sizeof(tessera_level_info) */
  int64_t width, height; /* pixels */
  double downsample;     /* mean of level-0/level width and height ratios */
  int32_t tile_width;    /* for strip images: the image width */
  int32_t tile_height;   /* for strip images: rows per strip */
  int32_t tiled;         /* 1 for tiles, 0 for strips */
  uint32_t compression;  /* the TIFF Compression tag value; 0x10001 ("mosaic"): MIRAX tiles
                          * painted from the camera images they cover (4 samples: RGBA) */
  int32_t samples_per_pixel;
  /* What the level's last sample is (ExtraSamples): TESSERA_ALPHA_NONE (no alpha; a fourth
   * sample of unspecified meaning is not alpha), TESSERA_ALPHA_ASSOCIATED (stored
   * premultiplied: tessera divides it out) or TESSERA_ALPHA_UNASSOCIATED. Reads always give
   * straight alpha; this says how the file stores it (OpenSlide's readers round by it). */
  int32_t alpha;
} tessera_level_info;

#define TESSERA_ALPHA_NONE 0
#define TESSERA_ALPHA_ASSOCIATED 1
#define TESSERA_ALPHA_UNASSOCIATED 2

/* Fills *info (its struct_size must be set; see Conventions) for level 0 .. level_count-1. */
TESSERA_API tessera_status tessera_level_info_get(const tessera_slide *slide, int32_t level,
                                                  tessera_level_info *info);

/* A name for a TIFF compression code ("jpeg", "zstd", ...), or NULL if unknown. Thread-safe;
 * the string is static. */
TESSERA_API const char *tessera_compression_name(uint32_t compression);

/* The vendor that wrote the slide: "generic-tiff", "aperio", "hamamatsu", "philips", "mirax",
 * ... */
TESSERA_API const char *tessera_vendor(const tessera_slide *slide);

/* The fill value used outside the image when the caller sets none (0, or 255 for vendors
 * that scan on white glass). */
TESSERA_API uint8_t tessera_background(const tessera_slide *slide);

/* Properties as key/value strings, e.g. "tiff.ImageDescription", "tiff.Software",
 * "tiff.XResolution", "tiff.ResolutionUnit", "tessera.vendor". Keys are sorted. */
TESSERA_API size_t tessera_property_count(const tessera_slide *slide);
TESSERA_API const char *tessera_property_key(const tessera_slide *slide, size_t index);
/* The value of a key, or NULL when the slide has no such property. */
TESSERA_API const char *tessera_property_value(const tessera_slide *slide, const char *key);

/* The property table OpenSlide computes for the slide, made here once for every OpenSlide
 * front built on tessera (libtessera-openslide, Python's tessera.openslide): tessera's
 * standard keys named openslide.* (tessera.background and background-color left out), the tiff.*
 * tags of the first directory as OpenSlide prints them, openslide.comment, and
 * openslide.quickhash-1 by OpenSlide's definition (a SHA-256 of the smallest stored level's
 * tiles as stored and of nine string tags; absent when those tiles hold over 5 MiB), plus the
 * vendor's keys. `version` 3 gives it as OpenSlide 3.4 does; 4 as OpenSlide 4.0 does, which adds
 * openslide.icc-size, openslide.associated.NAME.width/height and a generic TIFF's mpp. Reads the
 * file (the smallest level's tiles): the caller frees the table with
 * tessera_property_table_free. Keys are sorted. Thread-safe. */
typedef struct tessera_property_table tessera_property_table;
TESSERA_API tessera_status tessera_openslide_properties(tessera_slide *slide, int32_t version,
                                                        tessera_property_table **out);
TESSERA_API size_t tessera_property_table_count(const tessera_property_table *table);
/* The key or value of entry index (NULL past the end); valid until the table is freed. */
TESSERA_API const char *tessera_property_table_key(const tessera_property_table *table,
                                                   size_t index);
TESSERA_API const char *tessera_property_table_value(const tessera_property_table *table,
                                                     size_t index);
TESSERA_API void tessera_property_table_free(tessera_property_table *table);

/* Names of associated (non-pyramid) images, such as "thumbnail", "label", "macro". */
TESSERA_API size_t tessera_associated_image_count(const tessera_slide *slide);
TESSERA_API const char *tessera_associated_image_name(const tessera_slide *slide, size_t index);

/* The ICC colour profile the file gives the slide's pixels (TIFF tag 34675 of level 0's
 * directory), as the file holds it: its size in bytes, 0 when there is none. Reading pixels
 * never applies it; it is there for the caller's colour management. Thread-safe. */
TESSERA_API size_t tessera_icc_profile_size(const tessera_slide *slide);
/* Copies the profile into dst, which holds dst_size bytes (at least
 * tessera_icc_profile_size). TESSERA_E_ARGUMENT when the slide has none or dst is too
 * small (dst is then not touched). Thread-safe. */
TESSERA_API tessera_status tessera_icc_profile_read(const tessera_slide *slide, void *dst,
                                                    size_t dst_size);

/* ---------------------------------------------------------------------------------------
 * Reading regions
 */

typedef struct tessera_read_options {
  size_t struct_size;  /* sizeof(tessera_read_options) */
  int32_t channels;    /* 3 (RGB, default) or 4 (RGBA: alpha 0 outside the image) */
  int32_t fill;        /* 0..255, or -1 (default) for the slide's background */
  size_t stride;       /* bytes between destination rows; 0 means width * channels */
  int32_t num_workers; /* threads decoding one region's tiles, the caller being one of them:
                          0 or 1 (default 0) reads in the calling thread only */
  int32_t fast_jpeg;   /* tessera_read_region_scaled only: nonzero lets a JPEG level be
                          decoded at 1/2, 1/4 or 1/8 (the largest not above the scale) by
                          libjpeg's reduced-size IDCT, then area-averaged by what remains of
                          the scale: faster, and close to the exact mode but not equal to it
                          (docs/RESOLUTION.md gives the error); levels it cannot take (other
                          codecs, tiles not a whole number of blocks, regions over 64 MiB)
                          are read exactly. Default 0 */
} tessera_read_options;

/* Fills the first struct_size bytes of *options with the defaults (3 channels, the slide's
 * background, packed rows) and sets its struct_size (see Conventions). Called through
 * tessera_read_options_init(options), which passes sizeof *options. Thread-safe. */
TESSERA_API void tessera_read_options_init_sized(tessera_read_options *options, size_t struct_size);
#define tessera_read_options_init(options)                                                         \
  tessera_read_options_init_sized((options), sizeof *(options))

/* Reads a width x height region of `level` whose top-left corner is (x, y) in level-0
 * pixels; the level's origin is (floor(x / downsample), floor(y / downsample)). Writes
 * interleaved 8-bit pixels, rows top to bottom, into dst, which holds dst_size bytes (at
 * least stride * (height - 1) + width * channels). Pixels outside the image get the fill
 * value (and alpha 0). A read that fails on the file's data leaves dst filled with the fill
 * value and alpha 0, so no half-decoded region can pass for a good one; a call rejected for
 * its arguments (TESSERA_E_ARGUMENT) does not touch dst. A corrupt tile fails only the reads
 * that need it. Thread-safe. */
TESSERA_API tessera_status tessera_read_region(tessera_slide *slide, int64_t x, int64_t y,
                                               int32_t level, int64_t width, int64_t height,
                                               const tessera_read_options *options, uint8_t *dst,
                                               size_t dst_size);

/* Reads all of `level` (level_width x level_height pixels) as tessera_read_region would with
 * x = y = 0. With options->num_workers > 1 its tiles are decoded in parallel, each straight
 * into its place in dst. Thread-safe. */
TESSERA_API tessera_status tessera_read_level(tessera_slide *slide, int32_t level,
                                              const tessera_read_options *options, uint8_t *dst,
                                              size_t dst_size);

/* The size of the associated image `name` (one of tessera_associated_image_name's).
 * TESSERA_E_ARGUMENT when the slide has none by that name. */
TESSERA_API tessera_status tessera_associated_image_dimensions(const tessera_slide *slide,
                                                               const char *name, int64_t *width,
                                                               int64_t *height);

/* Reads the whole associated image `name` into dst as tessera_read_level reads a level
 * (options: channels 3 or 4, stride; NULL for RGB, rows packed). Thread-safe. */
TESSERA_API tessera_status tessera_read_associated_image(tessera_slide *slide, const char *name,
                                                         const tessera_read_options *options,
                                                         uint8_t *dst, size_t dst_size);

/* Reads a width x height image whose pixels are each the exact area average of `scale_x` by
 * `scale_y` pixels of `level` (level pixels per output pixel, each 1/1024 .. 1024), the image's
 * top-left corner being the level pixel tessera_read_region would start at: (floor(x /
 * downsample), floor(y / downsample)). Output pixel (i, j) covers the level's
 * [X + e(i, scale_x), X + e(i + 1, scale_x)) x [Y + e(j, scale_y), Y + e(j + 1, scale_y)),
 * with e(i, s) = floor(i * (s * 4096) + 0.5) / 4096 (edges on a 1/4096-pixel lattice), and is
 * the mean of the level pixels under it weighted by the area each has inside it (pixels outside
 * the level count as the fill value, alpha 0), rounded half up: (sum + total / 2) / total in
 * integers. docs/RESOLUTION.md shows it in NumPy. scale 1 is tessera_read_region. options as
 * tessera_read_region's (channels, fill, stride, num_workers). Thread-safe. */
TESSERA_API tessera_status tessera_read_region_scaled(tessera_slide *slide, int64_t x, int64_t y,
                                                      int32_t level, double scale_x,
                                                      double scale_y, int64_t width,
                                                      int64_t height,
                                                      const tessera_read_options *options,
                                                      uint8_t *dst, size_t dst_size);

/* The same area average over an image in memory: src is src_width x src_height pixels of
 * `channels` (3 or 4) bytes, rows src_stride bytes apart, its top-left pixel being the
 * origin; the width x height result goes to dst (rows dst_stride bytes apart). The source
 * must reach the output's last edge (TESSERA_E_ARGUMENT names the size it needs):
 * ceil(floor(width * (scale_x * 4096) + 0.5) / 4096) columns, and so for rows. With a patch
 * of ceil(width * scale) + 1 pixels read at (x, y) by tessera_read_region or a batch
 * iterator, it gives what tessera_read_region_scaled gives at (x, y). Thread-safe. */
TESSERA_API tessera_status tessera_resample_area(const uint8_t *src, int64_t src_width,
                                                 int64_t src_height, size_t src_stride,
                                                 int32_t channels, double scale_x,
                                                 double scale_y, int64_t width, int64_t height,
                                                 uint8_t *dst, size_t dst_stride);

/* ---------------------------------------------------------------------------------------
 * Tissue masks
 *
 * Where the tissue is, as a binary mask at a low resolution, for choosing the patches worth
 * reading (docs/TISSUE.md says it at length). The mask is computed from the coarsest level at
 * least as fine as the mask, area-averaged (as tessera_read_region_scaled) to the mask's
 * pixels; then, per mask pixel:
 *  - background: every channel within background_tolerance of the slide's background value
 *    (tessera_background: the fill outside the scan, white glass for Aperio): never tissue;
 *  - black: the brightest channel <= black_max (black borders, black ink): never tissue;
 *  - pen: HSV saturation >= pen_min_saturation and hue within [pen_hue_min, pen_hue_max]
 *    degrees (blue and green ink; H&E is pink to purple): never tissue;
 *  - the rest is tissue where its saturation (255 * (max - min) / max of R, G, B) is above
 *    the Otsu threshold of their saturations (at least min_threshold);
 *  - then tissue specks smaller than min_tissue_area are removed (8-connected) and holes (4-
 *    connected runs of non-tissue not touching the mask's edge) smaller than max_hole_area are
 *    filled (their background, not their pen or black pixels).
 * Areas are in square micrometres where the slide gives its mpp (tessera.mpp-x/y), else in
 * square level-0 pixels. A dark-field slide (fluorescence: the median brightest channel of
 * every 7th mask pixel below 64, or mode TESSERA_TISSUE_DARKFIELD) is tissue where its log
 * brightness, round(255 ln(1 + max) / ln 256), is above the Otsu threshold of all its pixels'
 * instead (background still never tissue), with no pen or black rule.
 */

typedef enum tessera_tissue_mode {
  TESSERA_TISSUE_AUTO = 0,        /* dark-field when the slide is mostly dark */
  TESSERA_TISSUE_BRIGHTFIELD = 1, /* stained tissue on white glass (H&E, IHC) */
  TESSERA_TISSUE_DARKFIELD = 2    /* signal on black (fluorescence) */
} tessera_tissue_mode;

typedef struct tessera_tissue_options {
  size_t struct_size;           /* sizeof(tessera_tissue_options) */
  double mpp;                   /* micrometres per mask pixel; 0 (default): downsample decides.
                                   Refused (TESSERA_E_ARGUMENT) for a slide without an mpp */
  double downsample;            /* level-0 pixels per mask pixel, when mpp is 0; 0 (default):
                                   8 micrometres per mask pixel, or 32 without an mpp */
  int32_t mode;                 /* a tessera_tissue_mode; default TESSERA_TISSUE_AUTO */
  int32_t background_tolerance; /* 0..255; default 10 */
  int32_t black_max;            /* 0..255, -1 for no black rule; default 40 */
  int32_t pen_min_saturation;   /* 0..256 (256: no pen rule); default 110 */
  double pen_hue_min, pen_hue_max; /* degrees 0..360; default 70 and 250 */
  int32_t min_threshold;        /* 0..255: the least saturation (brightness) taken as tissue;
                                   default 12 */
  double min_tissue_area;       /* >= 0; default 10000 (a 100 um square) */
  double max_hole_area;         /* >= 0; default 40000 (a 200 um square) */
  int32_t num_workers;          /* threads reading the level, as tessera_read_options'; 0 */
} tessera_tissue_options;

/* Fills the first struct_size bytes of *options with the defaults and sets its struct_size
 * (see Conventions). Called through tessera_tissue_options_init(options). Thread-safe. */
TESSERA_API void tessera_tissue_options_init_sized(tessera_tissue_options *options,
                                                   size_t struct_size);
#define tessera_tissue_options_init(options)                                                       \
  tessera_tissue_options_init_sized((options), sizeof *(options))

/* A mask made by tessera_tissue_mask, owned by the library until tessera_mask_free. Mask pixel
 * (i, j) covers level-0 [i * downsample, (i + 1) * downsample) x [j * downsample, ...). */
typedef struct tessera_mask {
  uint8_t *data;          /* height rows of width bytes: 255 tissue, 0 not */
  int64_t width, height;  /* ceil(level-0 width / downsample), ceil(height / downsample) */
  double downsample;      /* level-0 pixels per mask pixel */
  double mpp;             /* micrometres per mask pixel; 0 when the slide gives none */
  int32_t level;          /* the level it was computed from */
  int32_t darkfield;      /* 1 when the dark-field rule was used */
  int32_t threshold;      /* the saturation (dark-field: brightness) threshold used */
  double tissue_fraction; /* tissue pixels / all pixels */
} tessera_mask;

/* Computes the tissue mask of a slide (options NULL: the defaults) into *out (NULL on
 * failure). TESSERA_E_LIMIT when the mask would exceed max_read_bytes or 2^31 a side.
 * Thread-safe. */
TESSERA_API tessera_status tessera_tissue_mask(tessera_slide *slide,
                                               const tessera_tissue_options *options,
                                               tessera_mask **out);

/* Frees a mask; NULL is ignored. */
TESSERA_API void tessera_mask_free(tessera_mask *mask);

/* The level and scale that give `mpp` micrometres per output pixel: the coarsest level whose
 * pixels are at most mpp (the finest needed: no level coarser than asked is ever upsampled),
 * and scale = mpp / that level's mpp (level-0 mpp, the mean of tessera.mpp-x and -y, times
 * its downsample). Scanners write 0.499 for 0.5: a level within 1 % above mpp still counts,
 * and a scale within 1 % of a whole number is that number. TESSERA_E_ARGUMENT for a slide
 * that gives no mpp (read by level or downsample instead), or mpp <= 0. Thread-safe. */
TESSERA_API tessera_status tessera_level_for_mpp(const tessera_slide *slide, double mpp,
                                                 int32_t *level, double *scale);

/* ---------------------------------------------------------------------------------------
 * Patch grids
 *
 * The patches worth reading: a grid of width x height patches at a physical resolution (or a
 * level), each placed where the batch reader reads it, with the share of it that the tissue
 * mask calls tissue. docs/RESOLUTION.md gives the rules.
 */

typedef struct tessera_grid_options {
  size_t struct_size;          /* sizeof(tessera_grid_options) */
  int64_t width, height;       /* patch size in output pixels (at mpp, or of the level); >= 1 */
  double mpp;                  /* micrometres per output pixel (tessera_level_for_mpp); 0
                                  (default): pixels of `level` */
  int32_t level;               /* with mpp 0: the level read (default 0) */
  int64_t stride_x, stride_y;  /* output pixels from one patch to the next; 0 (default): the
                                  patch size (side by side) */
  double min_tissue;           /* keep patches whose tissue fraction is >= this (0..1);
                                  default 0: every patch */
  const tessera_tissue_options *tissue; /* the mask's options (NULL: defaults) */
} tessera_grid_options;

/* Fills the first struct_size bytes of *options with the defaults and sets its struct_size.
 * Thread-safe. */
TESSERA_API void tessera_grid_options_init_sized(tessera_grid_options *options,
                                                 size_t struct_size);
#define tessera_grid_options_init(options)                                                         \
  tessera_grid_options_init_sized((options), sizeof *(options))

/* A grid made by tessera_patch_grid, owned by the library until tessera_grid_free. */
typedef struct tessera_grid {
  size_t count;             /* patches kept */
  int64_t *locations;       /* 2 * count: each patch's top-left (x, y) in level-0 pixels, row
                               by row; the batch reader's locations for `level`, read_width,
                               read_height */
  float *tissue;            /* count tissue fractions, 0..1 */
  int32_t level;            /* the level to read */
  int64_t read_width, read_height; /* pixels of `level` a patch covers: ceil(width * scale) */
  int64_t width, height;    /* the patch in output pixels, as asked */
  double scale;             /* level pixels per output pixel (1: read as is) */
  double mpp;               /* micrometres per output pixel; 0 when the slide gives none */
  int64_t stride_x, stride_y; /* output pixels */
  double mask_downsample;   /* the mask the fractions come from */
} tessera_grid;

/* Lays the grid over the whole level: patch (i, j) starts at level pixel (floor(i * stride_x *
 * scale), floor(j * stride_y * scale)), every patch lying wholly inside the level, and maps it
 * to level 0 as the smallest x with floor(x / downsample) equal to it. Its tissue fraction is
 * the share of tissue among the mask pixels whose centres lie inside the patch's level-0
 * footprint (or the mask pixel under the patch's centre, when no centre does). Deterministic.
 * Thread-safe. */
TESSERA_API tessera_status tessera_patch_grid(tessera_slide *slide,
                                              const tessera_grid_options *options,
                                              tessera_grid **out);

/* Frees a grid; NULL is ignored. */
TESSERA_API void tessera_grid_free(tessera_grid *grid);

/* ---------------------------------------------------------------------------------------
 * Batches of patches
 *
 * An iterator over n patch locations that hands back batches of equal-sized patches, decoded
 * by the library's worker threads ahead of the consumer. The names and defaults of the options
 * are cuCIM's. Batches come in location order (after the optional seeded shuffle, which gives
 * the same order on every platform); each is one contiguous N x height x width x channels
 * buffer; the last is short unless drop_last. Up to prefetch_factor batches are decoded ahead.
 * The unit of work is a tile: a tile needed by several patches in flight is read and decoded
 * once; a patch needing only part of a JPEG tile decodes only that part. Tiles of a few pixels
 * (TIFF asks for multiples of 16; tessera reads others, as libtiff does), whose scheduling
 * would cost more memory than the patches' pixels, are read patch by patch instead: slowly
 * (a tile shared by patches is read for each), in memory bounded by the patches.
 */

typedef struct tessera_batch_options {
  size_t struct_size;      /* sizeof(tessera_batch_options) */
  int32_t batch_size;      /* patches per batch, >= 1; default 1 */
  int32_t num_workers;     /* worker threads decoding ahead; 0 (default) decodes each batch
                              in the calling thread inside tessera_batch_iter_next */
  int32_t drop_last;       /* nonzero: drop a short last batch; default 0 */
  int32_t prefetch_factor; /* batches decoded ahead when num_workers > 0 (with device CUDA,
                              always), >= 1; default 2 */
  int32_t shuffle;         /* nonzero: visit the locations in a random order; default 0 */
  uint64_t seed;           /* seed of that order; default 0 */
  int32_t channels;        /* 3 (RGB, default) or 4 (RGBA: alpha 0 outside the image) */
  int32_t fill;            /* 0..255, or -1 (default) for the slide's background */
  int32_t device;          /* where batches are made: TESSERA_DEVICE_CPU (default) or
                              TESSERA_DEVICE_CUDA (see "The GPU path" below) */
  int32_t device_id;       /* the CUDA device, 0 (default) .. count - 1 */
} tessera_batch_options;

/* Where a batch's memory lives. */
typedef enum tessera_device {
  TESSERA_DEVICE_CPU = 0, /* host memory */
  TESSERA_DEVICE_CUDA = 1 /* memory of a CUDA device */
} tessera_device;

/* Fills the first struct_size bytes of *options with the defaults and sets its struct_size
 * (see Conventions). Called through tessera_batch_options_init(options), which passes
 * sizeof *options. Thread-safe. */
TESSERA_API void tessera_batch_options_init_sized(tessera_batch_options *options,
                                                  size_t struct_size);
#define tessera_batch_options_init(options)                                                        \
  tessera_batch_options_init_sized((options), sizeof *(options))

typedef struct tessera_batch_iter tessera_batch_iter;

/* One batch, owned by the library until given back with tessera_batch_release. */
typedef struct tessera_batch {
  uint8_t *data;           /* count x height x width x channels bytes, rows packed */
  size_t size;             /* bytes in data */
  size_t count;            /* patches in this batch (batch_size, or fewer for the last) */
  size_t number;           /* 0 for the first batch, then 1, 2, ... */
  const uint64_t *indices; /* count entries: which of the n locations each patch shows */
  int64_t width, height;
  int32_t channels;
  int32_t device;    /* TESSERA_DEVICE_CPU, or TESSERA_DEVICE_CUDA: data is device memory */
  int32_t device_id; /* the CUDA device holding data */
  void *stream;      /* CUDA: the cudaStream_t on which the batch was made. The
                        batch is complete when tessera_batch_iter_next returns it: no stream
                        needs to wait for it */
  void *consumer_stream; /* CUDA, set by the caller (NULL by default: the legacy default
                            stream): the cudaStream_t whose work reads the batch. Releasing
                            the batch makes the next write into its memory wait for the work
                            queued on that stream before the release, so a buffer is never
                            overwritten while kernels queued to read it have yet to run */
} tessera_batch;

/* Makes an iterator over n (x, y) pairs in `locations` (2n int64 values, level-0 pixels; they
 * are copied), each the top-left corner of a width x height patch of `level`. options may be
 * NULL for the defaults. The slide must stay open until the iterator is destroyed. n = 0 is
 * allowed and gives no batches. Thread-safe with respect to the slide. */
TESSERA_API tessera_status tessera_batch_iter_create(tessera_slide *slide, const int64_t *locations,
                                                     size_t n, int64_t width, int64_t height,
                                                     int32_t level,
                                                     const tessera_batch_options *options,
                                                     tessera_batch_iter **out);

/* Number of batches the iterator yields in all. */
TESSERA_API size_t tessera_batch_iter_length(const tessera_batch_iter *iter);

/* The next batch, in order. At the end, returns TESSERA_OK with *out = NULL. If the batch
 * cannot be made (a tile it needs cannot be read, or its memory cannot be had), returns that
 * status and message (for a tile, naming its level and number) with *out = NULL; that batch
 * is skipped and the next call goes on with the following one. */
TESSERA_API tessera_status tessera_batch_iter_next(tessera_batch_iter *iter, tessera_batch **out);

/* Gives a batch's buffer back for reuse; it must not be touched afterwards. May be called
 * after the iterator is destroyed (the batch stays valid until then). NULL is ignored. */
TESSERA_API void tessera_batch_release(tessera_batch *batch);

/* Cancels the work not yet started, waits for the tiles being decoded, and frees the
 * iterator. Batches handed out and not yet released stay valid until released. May be
 * called at any point; NULL is ignored. */
TESSERA_API void tessera_batch_iter_destroy(tessera_batch_iter *iter);

/* ---------------------------------------------------------------------------------------
 * The GPU path
 *
 * Nothing from CUDA is linked: the CUDA runtime (libcudart) and nvJPEG (libnvjpeg) are opened
 * with dlopen when first needed, so the library builds and runs on machines without them.
 * They are looked for by soname (newest toolkit first: libcudart.so.13, .so.12, .so.11.0,
 * then libcudart.so) through the dynamic loader (LD_LIBRARY_PATH, the ld.so cache), then in
 * /usr/local/cuda/lib64, /usr/local/cuda/targets/<arch>/lib, the distribution's library
 * folders, /opt/cuda/lib64 and NVIDIA's pip wheels beside the tessera Python package. The environment variable
 * TESSERA_CUDA_PATH, a folder (or folders separated by ':'), replaces that whole search when
 * set. The search happens once per process; the libraries then stay loaded.
 *
 * A batch iterator made with device TESSERA_DEVICE_CUDA hands out batches in the memory of
 * that CUDA device, in the same layout, order and values as the CPU's (JPEG tiles decoded by
 * nvJPEG differ from libjpeg-turbo's by rounding: a level or two). What is made where:
 *  - Patches are assembled on the GPU from the parts of their tiles. Tiles that are JPEG
 *    (TIFF compression 7, photometric YCbCr, baseline 8-bit, 3 components) are decoded by
 *    nvJPEG's batched decoder: its hardware back end where the GPU has one (A100, H100),
 *    else its default. TESSERA_NVJPEG_BACKEND (hardware, gpu, hybrid, default) forces one.
 *  - Every other tile (missing or damaged, of another codec, or JPEG that nvJPEG would read
 *    differently, such as Aperio's RGB samples), and the fill beyond the level's edge, is
 *    painted on the CPU exactly as for a CPU batch, and copied to the device asynchronously.
 *    Errors are therefore the CPU's: a tile the CPU cannot decode fails the batches that need
 *    it. (Damage that nvJPEG decodes without complaint cannot be noticed on the GPU.)
 *  - A tile needed by patches of several batches in preparation is read once.
 * Compressed tiles are staged in pinned host memory. Each batch buffer of an iterator has its
 * own CUDA stream (the batch's `stream`), so the batches in preparation overlap on the GPU.
 * tessera_batch_iter_next returns a batch once it is complete. Releasing it records an event
 * on its consumer_stream that later writes into its memory wait for. Device
 * buffers are recycled like host ones; destroying the iterator frees them (at once, or at the
 * release of the last batch held). A process that forks cannot use its parent's iterators.
 */

/* What decodes an iterator's tiles: "cpu" (a CPU iterator), "nvjpeg-hardware",
 * "nvjpeg-default", "nvjpeg-gpu-hybrid" or "nvjpeg-hybrid" (a CUDA iterator whose level
 * nvJPEG can decode), or "cpu+copy" (a CUDA iterator whose level it cannot: every tile is
 * painted on the CPU and copied). The string is static. */
TESSERA_API const char *tessera_batch_iter_decoder(const tessera_batch_iter *iter);

/* Copies a batch's bytes (all of batch->size) into host memory dst of dst_size bytes, from the
 * host or from a CUDA device, waiting for the copy. A CUDA batch is copied on its
 * consumer_stream, after the work queued there. For checks and debugging: a CUDA batch is
 * meant to be used where it is. TESSERA_E_ARGUMENT when dst_size < batch->size. */
TESSERA_API tessera_status tessera_batch_copy_to_host(const tessera_batch *batch, void *dst,
                                                      size_t dst_size);

/* TESSERA_OK when the CUDA runtime, at least one CUDA device and nvJPEG are all there.
 * Otherwise TESSERA_E_UNSUPPORTED, with tessera_error_message() saying what is missing:
 * "CUDA runtime not found (tried ...)", "CUDA runtime PATH lacks FUNCTION", "no CUDA device:
 * REASON (...)" (REASON is CUDA's own, e.g. "CUDA driver version is insufficient for CUDA
 * runtime version" where no NVIDIA driver is installed), "nvJPEG not found (tried ...)" or
 * "nvJPEG PATH lacks FUNCTION". The first call looks (loading the libraries and asking the
 * runtime for devices); later calls give the same answer at once. Thread-safe. */
TESSERA_API tessera_status tessera_cuda_status(void);

/* ---------------------------------------------------------------------------------------
 * The decoded-tile cache
 *
 * One cache per process, used by every read (regions, whole levels, batch iterators) of every
 * slide without further code from the caller. A tile is kept decoded, whole; its key is the
 * file's identity (device, inode, size, modification time), the directory and the tile index,
 * compared in full. The byte budget (and item budget, when set) is never exceeded. Threads
 * missing the same tile decode it once. Eviction is S3-FIFO: new tiles enter a small queue
 * and move to the main one only if read again, so a long scan passes through without
 * evicting the tiles in repeated use.
 *
 * TESSERA_CACHE_SHARED_MEMORY keeps the tiles in a named POSIX shared-memory segment that
 * many processes use at once: made before fork (children share it) or attached by name from
 * unrelated processes (the first to configure a name creates it; the others attach to it as
 * it is, with its capacities). Processes missing the same tile decode it once. Its locks are
 * robust: a process killed at any point (even holding one) leaves the cache usable, and what
 * it was writing is dropped. The segment is removed when the last process using it detaches
 * (configures another cache, or exits); a segment whose users were all killed stays until
 * removed with tessera_shared_cache_remove (or `tessera cache remove NAME`). Statistics of a
 * shared cache count the accesses of every process using it. The processes sharing a segment
 * must see one another's process ids (one PID namespace).
 */

typedef enum tessera_cache_type {
  TESSERA_CACHE_NONE = 0,         /* no cache (default) */
  TESSERA_CACHE_PER_PROCESS = 1,  /* shared by the threads of this process */
  TESSERA_CACHE_SHARED_MEMORY = 2 /* shared between processes: a POSIX shared-memory segment */
} tessera_cache_type;

typedef struct tessera_cache_options {
  size_t struct_size;           /* sizeof(tessera_cache_options) */
  tessera_cache_type type;      /* default TESSERA_CACHE_NONE */
  uint64_t memory_capacity_mib; /* byte budget in MiB; default 1024 */
  uint64_t item_capacity;       /* most tiles held; 0 (default): no limit but the bytes */
  int32_t record_stats;         /* nonzero: count hits and misses; default 0 */
  /* TESSERA_CACHE_SHARED_MEMORY: the segment's name, with or without a leading '/' (no other
   * '/', not beginning with '.', at most TESSERA_SHARED_CACHE_NAME_MAX bytes), e.g.
   * "tessera-training"; an existing segment of that name that is not a tessera cache, is
   * another user's, or is open to other users, is refused. NULL (default) makes a new
   * segment named after the process ("/tessera-PID-N"), for the children forked after this
   * call. Copied; need not outlive the call. */
  const char *name;
} tessera_cache_options;

#define TESSERA_SHARED_CACHE_NAME_MAX 200

/* Fills the first struct_size bytes of *options with the defaults and sets its struct_size
 * (see Conventions). Called through tessera_cache_options_init(options), which passes
 * sizeof *options. Thread-safe. */
TESSERA_API void tessera_cache_options_init_sized(tessera_cache_options *options,
                                                  size_t struct_size);
#define tessera_cache_options_init(options)                                                        \
  tessera_cache_options_init_sized((options), sizeof *(options))

/* Replaces the process's cache (dropping the tiles of the old one) with one made from options.
 * Thread-safe: reads in progress finish with the cache they started with. */
TESSERA_API tessera_status tessera_cache_configure(const tessera_cache_options *options);

typedef struct tessera_cache_stats {
  size_t struct_size; /* sizeof(tessera_cache_stats) */
  tessera_cache_type type;
  uint64_t hits, misses;    /* since configure or reset; 0 unless record_stats */
  uint64_t evictions;       /* tiles evicted to make room, since configure or reset */
  uint64_t items, bytes;    /* held now (tiles being loaded included) */
  uint64_t item_capacity;   /* 0: no limit */
  uint64_t memory_capacity; /* bytes */
  int32_t record_stats;
} tessera_cache_stats;

/* Fills *stats (its struct_size must be set; see Conventions). Thread-safe. */
TESSERA_API tessera_status tessera_cache_stats_get(tessera_cache_stats *stats);

/* Grows the process's per-process cache in place, keeping its tiles and statistics: its byte
 * capacity to memory_capacity_mib MiB and its tile capacity to item_capacity (0 there, or a
 * value below the present one, leaves that limit as it is; a cache without a tile limit keeps
 * none). Never shrinks. No cache: nothing is done. A shared-memory cache's segment is sized
 * when it is made: TESSERA_E_UNSUPPORTED (configure a larger one instead). Thread-safe:
 * reads in progress see either size. */
TESSERA_API tessera_status tessera_cache_reserve(uint64_t memory_capacity_mib,
                                                 uint64_t item_capacity);

/* Sets hits, misses and evictions back to 0 (for a shared cache, the segment's: for every
 * process using it); record_stats >= 0 also turns this process's counting on (1) or off (0),
 * -1 leaves it. Thread-safe. */
TESSERA_API void tessera_cache_stats_reset(int32_t record_stats);

/* A shared-memory cache segment of this machine, as tessera_shared_cache_list finds it. */
typedef struct tessera_shared_cache_info {
  size_t struct_size;                             /* sizeof(tessera_shared_cache_info) */
  char name[TESSERA_SHARED_CACHE_NAME_MAX + 2];   /* with its leading '/' */
  int32_t ready;            /* 0: its creator has not finished setting it up (or died doing so) */
  uint32_t users;           /* processes using it that are alive */
  uint64_t segment_bytes;   /* size of the segment, index included */
  uint64_t memory_capacity; /* bytes for tiles */
  uint64_t item_capacity;   /* 0: no limit */
  uint64_t items, bytes;    /* held now (tiles being loaded included) */
  uint64_t hits, misses, evictions;
} tessera_shared_cache_info;

/* Lists the tessera segments in /dev/shm: fills up to `capacity` entries of infos (each
 * with struct_size set; see Conventions) and sets *count to the number found (which may
 * exceed capacity). infos may be NULL when capacity is 0. */
TESSERA_API tessera_status tessera_shared_cache_list(tessera_shared_cache_info *infos,
                                                     size_t capacity, size_t *count);

/* Removes the named segment (with or without its leading '/'); processes attached keep using
 * it until they detach. Refuses (TESSERA_E_ARGUMENT) a segment that is not tessera's, and
 * one with live users unless force is nonzero. TESSERA_E_IO if there is none by that name.
 * A segment of another user, or open to others, is removed without locking anything in it:
 * whoever may write it could make a process that locks it write where they chose. */
TESSERA_API tessera_status tessera_shared_cache_remove(const char *name, int32_t force);

#ifdef __cplusplus
}
#endif

#endif /* TESSERA_H */
