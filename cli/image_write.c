/* Image files for `tessera read`, `tessera tissue` and `tessera sample --tissue-mask`.
 * image_write's caller owns the FILE and checks its close; image_write_path does it all. */
#include "image_write.h"

#include "cli.h"

#include <errno.h>
#include <png.h>
#include <setjmp.h>
#include <string.h>
#include <strings.h>

bool image_format_from_path(const char *path, image_format *format) {
  static const struct {
    const char *ext;
    image_format format;
  } table[] = {{".png", IMAGE_PNG}, {".ppm", IMAGE_PPM}, {".raw", IMAGE_RAW}};
  const char *slash = strrchr(path, '/');
  const char *dot = strrchr(slash ? slash + 1 : path, '.');
  if (!dot)
    return false;
  for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
    if (strcasecmp(dot, table[i].ext) == 0) {
      *format = table[i].format;
      return true;
    }
  }
  return false;
}

bool image_format_accepts(image_format format, int64_t width, int64_t height, int channels,
                          char *why, size_t why_size) {
  switch (format) {
  case IMAGE_PPM:
    if (channels != 3) {
      if (channels == 1) {
        snprintf(why, why_size, "a mask is written as .png (8-bit gray) or .raw");
        return false;
      }
      snprintf(why, why_size,
               "PPM has no alpha channel; use --channels 3, or a .png or .raw "
               "output for RGBA");
      return false;
    }
    return true;
  case IMAGE_PNG:
    if (width > PNG_UINT_31_MAX || height > PNG_UINT_31_MAX) {
      snprintf(why, why_size, "PNG cannot hold an image wider or taller than %lu pixels",
               (unsigned long)PNG_UINT_31_MAX);
      return false;
    }
    return true;
  case IMAGE_RAW: return true;
  }
  return false;
}

/* libpng reports errors through a callback that must not return. */
typedef struct png_failure {
  jmp_buf jump;
  char *message;
  size_t message_size;
} png_failure;

static void png_on_error(png_structp png, png_const_charp msg) {
  png_failure *f = png_get_error_ptr(png);
  snprintf(f->message, f->message_size, "PNG: %s", msg);
  longjmp(f->jump, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) {
  (void)png;
  (void)msg;
}

static bool write_png(FILE *out, const uint8_t *pixels, int64_t width, int64_t height, int channels,
                      char *error, size_t error_size) {
  png_failure failure = {.message = error, .message_size = error_size};
  png_structp png =
      png_create_write_struct(PNG_LIBPNG_VER_STRING, &failure, png_on_error, png_on_warning);
  if (!png) {
    snprintf(error, error_size, "PNG: out of memory");
    return false;
  }
  png_infop info = png_create_info_struct(png);
  if (!info) {
    png_destroy_write_struct(&png, NULL);
    snprintf(error, error_size, "PNG: out of memory");
    return false;
  }
  if (setjmp(failure.jump)) {
    /* libpng's stdio writer only says "Write Error"; errno says why. */
    if (ferror(out) && errno != 0)
      snprintf(error, error_size, "write failed: %s", strerror(errno));
    png_destroy_write_struct(&png, &info);
    return false;
  }
  png_init_io(png, out);
  /* The default limits (1e6 pixels a side) are meant for reading untrusted files. */
  png_set_user_limits(png, PNG_UINT_31_MAX, PNG_UINT_31_MAX);
  png_set_IHDR(png, info, (png_uint_32)width, (png_uint_32)height, 8,
               channels == 4   ? PNG_COLOR_TYPE_RGB_ALPHA
               : channels == 1 ? PNG_COLOR_TYPE_GRAY
                               : PNG_COLOR_TYPE_RGB,
               PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  size_t row_bytes = (size_t)width * (size_t)channels;
  for (int64_t y = 0; y < height; y++)
    png_write_row(png, pixels + (size_t)y * row_bytes);
  png_write_end(png, info);
  png_destroy_write_struct(&png, &info);
  return true;
}

static bool write_bytes(FILE *out, const uint8_t *pixels, size_t size, char *error,
                        size_t error_size) {
  errno = 0;
  if (fwrite(pixels, 1, size, out) != size) {
    snprintf(error, error_size, "write failed: %s", errno ? strerror(errno) : "short write");
    return false;
  }
  return true;
}

bool image_write(FILE *out, image_format format, const uint8_t *pixels, int64_t width,
                 int64_t height, int channels, char *error, size_t error_size) {
  size_t size = (size_t)width * (size_t)height * (size_t)channels;
  switch (format) {
  case IMAGE_PNG: return write_png(out, pixels, width, height, channels, error, error_size);
  case IMAGE_PPM:
    if (fprintf(out, "P6\n%lld %lld\n255\n", (long long)width, (long long)height) < 0) {
      snprintf(error, error_size, "write failed: %s", strerror(errno));
      return false;
    }
    return write_bytes(out, pixels, size, error, error_size);
  case IMAGE_RAW: return write_bytes(out, pixels, size, error, error_size);
  }
  snprintf(error, error_size, "unknown image format");
  return false;
}

bool image_write_path(const char *path, const uint8_t *pixels, int64_t width, int64_t height,
                      int channels) {
  image_format format;
  char error[512];
  if (!image_format_from_path(path, &format)) {
    cli_error(path, "unknown image format; the name must end in .png, .ppm or .raw");
    return false;
  }
  if (!image_format_accepts(format, width, height, channels, error, sizeof error)) {
    cli_error(path, "%s", error);
    return false;
  }
  cli_outfile f;
  if (!cli_outfile_open(&f, path))
    return false;
  FILE *out = fdopen(f.fd, "wb");
  if (!out) {
    cli_error(path, "cannot write: %s", strerror(errno));
    cli_outfile_abort(&f);
    return false;
  }
  f.fd = -1; /* fclose owns it now */
  bool ok = image_write(out, format, pixels, width, height, channels, error, sizeof error);
  if (ok && fflush(out) != 0) {
    snprintf(error, sizeof error, "write failed: %s", strerror(errno));
    ok = false;
  }
  if (fclose(out) != 0 && ok) {
    snprintf(error, sizeof error, "write failed: %s", strerror(errno));
    ok = false;
  }
  if (!ok) {
    cli_error(path, "%s", error);
    cli_outfile_abort(&f);
    return false;
  }
  return cli_outfile_commit(&f);
}
