/* A byte sum fast enough not to show in a benchmark: on x86-64, PSADBW adds 16 (SSE2) or 32
 * (AVX2, chosen at run time) bytes per instruction; elsewhere eight bytes at a time in 16-bit
 * lanes (SWAR). The consumer of a batch pays for it while workers decode, so it must cost
 * far less than decoding the same pixels. */
#include "checksum.h"

#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define LOW_BYTES UINT64_C(0x00ff00ff00ff00ff)
/* Each word adds at most 2 x 255 to a 16-bit lane; 128 words stay below 65536. */
#define WORDS_PER_FLUSH 128

/* With 4 channels, a mask built from bytes (so right on either byte order) that keeps the
 * colour of the pixels a block holds when it starts on a pixel. */
static const uint8_t rgba_keep[32] = {255, 255, 255, 0,   255, 255, 255, 0,   255, 255, 255,
                                      0,   255, 255, 255, 0,   255, 255, 255, 0,   255, 255,
                                      255, 0,   255, 255, 255, 0,   255, 255, 255, 0};

static uint64_t lanes_total(uint64_t lanes) {
  return (lanes & 0xffff) + ((lanes >> 16) & 0xffff) + ((lanes >> 32) & 0xffff) + (lanes >> 48);
}

static uint64_t sum_words(const uint8_t *data, size_t words, int channels) {
  uint64_t keep = UINT64_MAX;
  if (channels == 4)
    memcpy(&keep, rgba_keep, sizeof keep);
  uint64_t total = 0;
  size_t i = 0;
  while (i < words) {
    size_t end = words - i > WORDS_PER_FLUSH ? i + WORDS_PER_FLUSH : words;
    uint64_t lanes = 0;
    for (; i < end; i++) {
      uint64_t w;
      memcpy(&w, data + 8 * i, sizeof w);
      w &= keep;
      lanes += (w & LOW_BYTES) + ((w >> 8) & LOW_BYTES);
    }
    total += lanes_total(lanes);
  }
  return total;
}

#if defined(__x86_64__)
static uint64_t sum_sse2(const uint8_t *data, size_t blocks, int channels) {
  __m128i keep = channels == 4 ? _mm_loadu_si128((const __m128i *)rgba_keep) : _mm_set1_epi8(-1);
  __m128i zero = _mm_setzero_si128(), acc = zero;
  for (size_t i = 0; i < blocks; i++) {
    __m128i v = _mm_and_si128(_mm_loadu_si128((const __m128i *)(data + 16 * i)), keep);
    acc = _mm_add_epi64(acc, _mm_sad_epu8(v, zero));
  }
  return (uint64_t)_mm_cvtsi128_si64(acc) +
         (uint64_t)_mm_cvtsi128_si64(_mm_unpackhi_epi64(acc, acc));
}

__attribute__((target("avx2"))) static uint64_t sum_avx2(const uint8_t *data, size_t blocks,
                                                         int channels) {
  __m256i keep =
      channels == 4 ? _mm256_loadu_si256((const __m256i *)rgba_keep) : _mm256_set1_epi8(-1);
  __m256i zero = _mm256_setzero_si256(), acc = zero;
  for (size_t i = 0; i < blocks; i++) {
    __m256i v = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(data + 32 * i)), keep);
    acc = _mm256_add_epi64(acc, _mm256_sad_epu8(v, zero));
  }
  uint64_t lane[4];
  _mm256_storeu_si256((__m256i *)lane, acc);
  return lane[0] + lane[1] + lane[2] + lane[3];
}
#endif

uint64_t checksum_pixels(const uint8_t *data, size_t size, int channels) {
  size_t done;
  uint64_t total;
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx2")) {
    total = sum_avx2(data, size / 32, channels);
    done = size / 32 * 32;
  } else {
    total = sum_sse2(data, size / 16, channels);
    done = size / 16 * 16;
  }
#else
  total = sum_words(data, size / 8, channels);
  done = size / 8 * 8;
#endif
  /* Blocks are multiples of 8 bytes, so the rest still starts on a pixel boundary of RGBA. */
  total += sum_words(data + done, (size - done) / 8, channels);
  for (size_t b = done + (size - done) / 8 * 8; b < size; b++) {
    if (channels != 4 || b % 4 != 3)
      total += data[b];
  }
  return total;
}
