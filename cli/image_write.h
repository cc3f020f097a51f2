/* Writing an interleaved 8-bit RGB or RGBA buffer as PNG, PPM or raw bytes, and an 8-bit gray
 * one (a mask: 1 channel) as PNG or raw bytes. */
#ifndef TESSERA_CLI_IMAGE_WRITE_H
#define TESSERA_CLI_IMAGE_WRITE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum image_format {
  IMAGE_PNG, /* 8-bit RGB or RGBA, libpng */
  IMAGE_PPM, /* binary P6; RGB only, PPM has no alpha */
  IMAGE_RAW  /* the bare height x width x channels bytes */
} image_format;

/* The format named by path's extension (.png, .ppm, .raw; any letter case). */
bool image_format_from_path(const char *path, image_format *format);

/* Whether the format can hold a width x height image of `channels` channels; if not, sets
 * a message in why. */
bool image_format_accepts(image_format format, int64_t width, int64_t height, int channels,
                          char *why, size_t why_size);

/* Writes the image, rows top to bottom, each width * channels bytes, to out. On failure
 * returns false with a message in error; out may then hold part of the image. */
bool image_write(FILE *out, image_format format, const uint8_t *pixels, int64_t width,
                 int64_t height, int channels, char *error, size_t error_size);

/* Writes the image to `path` (format from its extension) through a temporary file renamed
 * into place, so it appears whole or not at all. Prints the error and returns false on
 * failure. */
bool image_write_path(const char *path, const uint8_t *pixels, int64_t width, int64_t height,
                      int channels);

#endif
