/* The workload read with tessera's batch iterator: num_workers = the thread count, so that
 * many of the library's pool threads decode while the calling thread takes the batches and
 * sums them. Pixels outside the image are filled with 0, as OpenSlide's transparent ones
 * become 0 once un-premultiplied, so the checksums can be compared anywhere. */
#include "bench.h"
#include "checksum.h"

#include <tessera.h>

static bool read_all(tessera_slide *slide, const workload *w, run_result *r) {
  tessera_batch_options bo;
  tessera_batch_options_init(&bo);
  bo.batch_size = w->batch_size;
  bo.num_workers = w->threads;
  bo.prefetch_factor = w->prefetch;
  bo.fill = 0;
  uint64_t sum = 0;
  double start = bench_now();
  tessera_batch_iter *it = NULL;
  if (tessera_batch_iter_create(slide, w->xy, w->n, w->width, w->height, w->level, &bo, &it) !=
      TESSERA_OK) {
    bench_error("tessera: %s: %s", w->path, tessera_error_message());
    return false;
  }
  for (;;) {
    tessera_batch *b = NULL;
    if (tessera_batch_iter_next(it, &b) != TESSERA_OK) {
      bench_error("tessera: %s: %s", w->path, tessera_error_message());
      tessera_batch_iter_destroy(it);
      return false;
    }
    if (!b)
      break;
    sum += checksum_pixels(b->data, b->size, b->channels);
    tessera_batch_release(b);
  }
  tessera_batch_iter_destroy(it);
  r->seconds = bench_now() - start;
  r->checksum = sum;
  return true;
}

bool tessera_run(const workload *w, run_result *r) {
  tessera_slide *slide = NULL;
  if (tessera_open(w->path, &slide) != TESSERA_OK) {
    bench_error("tessera: %s: %s", w->path, tessera_error_message());
    return false;
  }
  bool ok = read_all(slide, w, r);
  tessera_close(slide);
  return ok;
}

static bool set_cache(tessera_cache_type type, int mib) {
  tessera_cache_options co;
  tessera_cache_options_init(&co);
  co.type = type;
  co.memory_capacity_mib = mib > 0 ? (uint64_t)mib : 1;
  if (tessera_cache_configure(&co) != TESSERA_OK) {
    bench_error("tessera: cache: %s", tessera_error_message());
    return false;
  }
  return true;
}

bool tessera_run_cached(const workload *w, tessera_cache_type type, run_result *r) {
  bool ok = set_cache(type, w->cache_mib) && tessera_run(w, r);
  return set_cache(TESSERA_CACHE_NONE, 0) && ok;
}
