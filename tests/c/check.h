/* A minimal test harness: CHECK records a failure with its place and goes on; each test
 * program exits non-zero if any check failed. */
#ifndef TSR_TEST_CHECK_H
#define TSR_TEST_CHECK_H

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

/* Atomic: checks run in several threads at once in the threaded tests. */
static _Atomic int check_failures;
static _Atomic int check_count;

#define CHECK(cond, ...)                                                                           \
  do {                                                                                             \
    check_count++;                                                                                 \
    if (!(cond)) {                                                                                 \
      check_failures++;                                                                            \
      fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);                     \
      fprintf(stderr, __VA_ARGS__);                                                                \
      fputc('\n', stderr);                                                                         \
    }                                                                                              \
  } while (0)

static inline int check_finish(const char *name) {
  printf("%s: %d checks, %d failed\n", name, (int)check_count, (int)check_failures);
  return check_failures ? 1 : 0;
}

/* Test data directory: $TESSERA_TESTDATA or the path meson passes as argv[1]. */
static inline const char *testdata_dir(int argc, char **argv) {
  const char *env = getenv("TESSERA_TESTDATA");
  if (env && env[0])
    return env;
  return argc > 1 ? argv[1] : "../shared/testdata";
}

/* A small PRNG (splitmix64) so test positions are the same on every platform. */
static inline unsigned long long test_rand(unsigned long long *state) {
  unsigned long long z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

#endif
