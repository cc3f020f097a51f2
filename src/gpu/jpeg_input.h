/* Deciding which tiles nvJPEG may take (their whole streams come from the level's tile
 * source, source/tile_source.h, with a TIFF JPEG tile's JPEGTables spliced in).
 *
 * nvJPEG must decode a tile as the CPU path does, within rounding: only the streams whose
 * meaning both agree on go to the GPU. The CPU path takes the colour space from the TIFF's
 * photometric tag (Aperio writes RGB samples with no Adobe marker); nvJPEG reads it from the
 * stream, so only YCbCr tiles whose streams say nothing else qualify. Everything else is
 * decoded on the CPU. No CUDA here: these are plain functions, tested without a GPU. */
#ifndef TSR_GPU_JPEG_INPUT_H
#define TSR_GPU_JPEG_INPUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "slide_internal.h"

/* Whether a level's tiles can go to nvJPEG at all: JPEG (TIFF compression 7) with photometric
 * YCbCr, three samples, TIFF tiles (not strips, nor NDPI restart intervals), nothing to
 * invert. */
bool tsr_gpu_level_decodable(const struct tsr_level *lv);

/* Whether nvJPEG decodes this whole stream as the CPU path would, on any of its back ends
 * (the hardware one takes baseline single-scan streams only): baseline (SOF0) 8-bit, three
 * components with chroma 1x1 and luma 1x1 or, when `subsampled` (nvJPEG interpolates chroma
 * as libjpeg does), 2x1, 1x2 or 2x2; one scan of all three; exactly tile_w x tile_h pixels;
 * before the scan only tables (DQT, DHT), DRI, comments and APPn segments other than Adobe's
 * (which could say RGB). Reads markers up to the scan only. */
bool tsr_gpu_jpeg_supported(const uint8_t *stream, size_t len, uint32_t tile_w, uint32_t tile_h,
                            bool subsampled);

#endif
