/* SHA-256 (FIPS 180-4), for openslide.quickhash-1: OpenSlide defines that hash as a SHA-256 and
 * the compat library links nothing that offers one. */
#ifndef TSR_OPENSLIDE_SHA256_H
#define TSR_OPENSLIDE_SHA256_H

#include <stddef.h>
#include <stdint.h>

struct tsr_sha256 {
  uint32_t h[8];
  uint64_t length; /* bytes hashed so far */
  uint8_t block[64];
  size_t used; /* bytes of block filled */
};

void tsr_sha256_init(struct tsr_sha256 *s);
void tsr_sha256_update(struct tsr_sha256 *s, const void *data, size_t len);
/* Writes the digest as 64 lowercase hex digits and a NUL into hex. */
void tsr_sha256_hex(struct tsr_sha256 *s, char hex[65]);

#endif
