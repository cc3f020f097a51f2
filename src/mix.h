/* splitmix64's finaliser: a 64-bit word mixed so that every input bit moves about half the
 * output bits. The same on every platform (seeded orders, identities and draws rely on it);
 * not cryptographic. */
#ifndef TSR_MIX_H
#define TSR_MIX_H

#include <stdint.h>

/* splitmix64's increment: the generator's state steps by this. */
#define TSR_MIX_GOLDEN 0x9E3779B97F4A7C15u

static inline uint64_t tsr_mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
  return z ^ (z >> 31);
}

#endif
