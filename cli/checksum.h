/* The checksum that `tessera bench` and bench/compare print, so that two readers of the same
 * patches can be seen to agree: the sum of every colour byte, alpha left out, so RGB and RGBA
 * reads of the same pixels give the same number. */
#ifndef TESSERA_CHECKSUM_H
#define TESSERA_CHECKSUM_H

#include <stddef.h>
#include <stdint.h>

/* The sum, modulo 2^64, of the bytes of `size` bytes of interleaved pixels with `channels`
 * (3 or 4) samples each, leaving out every fourth byte (alpha) when channels is 4. data must
 * start on a pixel. */
uint64_t checksum_pixels(const uint8_t *data, size_t size, int channels);

#endif
