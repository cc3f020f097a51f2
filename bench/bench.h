/* What the files of bench/compare share: the workload every reader runs, what a run gives
 * back, and the three readers. */
#ifndef TESSERA_BENCH_H
#define TESSERA_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tessera.h"

/* One workload, the same for every reader. */
typedef struct workload {
  const char *path;
  int32_t level;
  int64_t level_width, level_height;
  double downsample;     /* tessera's for the level */
  int64_t width, height; /* patch size, pixels of the level */
  const int64_t *xy;     /* 2n level-0 top-left corners */
  size_t n;
  int threads;
  int batch_size, prefetch; /* tessera's batch iterator only */
  int cache_mib;            /* tessera_run_cached only */
} workload;

/* One timed run of one reader. */
typedef struct run_result {
  double seconds;
  uint64_t checksum; /* checksum_pixels over the RGB bytes of what was read */
} run_result;

/* Prints "compare: MESSAGE" on stderr as one line. */
void bench_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

double bench_now(void);

/* Each reads every patch of w on w->threads threads, timing only the reading (and turning
 * the pixels into RGB, and the checksum); opening and closing the slide are not timed. They
 * print the error and return false when a read fails. */
bool openslide_run(const workload *w, run_result *r);
bool tessera_run(const workload *w, run_result *r);
/* tessera_run with a per-process tile cache of w->cache_mib MiB, made empty for the run and
 * removed after it. */
/* tessera_run with a fresh (empty) cache of the type and w->cache_mib, removed after. */
bool tessera_run_cached(const workload *w, tessera_cache_type type, run_result *r);

/* The decode limit: the JPEG tiles that w's patches overlap, each decoded once per patch that
 * needs it, with a bare libjpeg-turbo loop on the compressed bytes read into memory
 * beforehand. */
typedef struct decode_plan decode_plan;

/* Reads the compressed tiles. Returns NULL with a one-line reason in why when the level is
 * not one the decode limit can measure (not JPEG, say) or the file cannot be read. */
decode_plan *decode_plan_create(const workload *w, char *why, size_t why_size);
size_t decode_plan_decodes(const decode_plan *p);      /* tile decodes per run */
size_t decode_plan_distinct(const decode_plan *p);     /* distinct tiles among them */
uint64_t decode_plan_compressed(const decode_plan *p); /* bytes of those distinct tiles */
const char *decode_plan_colors(const decode_plan *p);  /* "YCbCr" or "RGB" */
bool decode_plan_run(const decode_plan *p, int threads, run_result *r);
void decode_plan_destroy(decode_plan *p);

#endif
