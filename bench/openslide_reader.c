/* The workload read with OpenSlide as its C users read it: one handle shared by all the
 * threads, openslide_read_region into premultiplied ARGB, then un-premultiplied into RGB.
 * OpenSlide keeps its own cache of decoded tiles (30 MiB by default in 3.4.1); it is left as
 * it is, as users run it. */
#include "bench.h"
#include "checksum.h"

#include <openslide.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct shared {
  const workload *w;
  openslide_t *osr;     /* thread-safe, as OpenSlide promises for all but close */
  atomic_size_t next;   /* the next patch to take */
  atomic_bool failed;   /* set once any thread fails; the others then stop */
  pthread_mutex_t lock; /* guards checksum and error */
  uint64_t checksum;    /* sum of the threads' sums */
  char error[512];      /* the first failure */
} shared;

/* OpenSlide hands out 0xAARRGGBB words with the colour premultiplied by alpha. Inside the
 * image alpha is 255 and this is a plain unpacking; at the edges it is not. */
static void argb_to_rgb(const uint32_t *argb, size_t pixels, uint8_t *rgb) {
  for (size_t i = 0; i < pixels; i++) {
    uint32_t p = argb[i];
    uint32_t a = p >> 24, r = (p >> 16) & 0xff, g = (p >> 8) & 0xff, b = p & 0xff;
    if (a != 255) {
      if (a == 0) {
        r = g = b = 0;
      } else {
        r = (r * 255 + a / 2) / a;
        g = (g * 255 + a / 2) / a;
        b = (b * 255 + a / 2) / a;
      }
    }
    rgb[3 * i] = (uint8_t)r;
    rgb[3 * i + 1] = (uint8_t)g;
    rgb[3 * i + 2] = (uint8_t)b;
  }
}

static void fail(shared *s, const char *message) {
  pthread_mutex_lock(&s->lock);
  if (!atomic_load(&s->failed))
    snprintf(s->error, sizeof s->error, "%s", message);
  atomic_store(&s->failed, true);
  pthread_mutex_unlock(&s->lock);
}

static void *reader(void *arg) {
  shared *s = arg;
  const workload *w = s->w;
  size_t pixels = (size_t)w->width * (size_t)w->height;
  uint32_t *argb = malloc(pixels * sizeof *argb);
  uint8_t *rgb = malloc(pixels * 3);
  uint64_t sum = 0;
  if (!argb || !rgb)
    fail(s, "out of memory for a patch");
  while (!atomic_load(&s->failed)) {
    size_t i = atomic_fetch_add(&s->next, 1);
    if (i >= w->n)
      break;
    openslide_read_region(s->osr, argb, w->xy[2 * i], w->xy[2 * i + 1], w->level, w->width,
                          w->height);
    const char *error = openslide_get_error(s->osr);
    if (error) {
      fail(s, error);
      break;
    }
    argb_to_rgb(argb, pixels, rgb);
    sum += checksum_pixels(rgb, pixels * 3, 3);
  }
  pthread_mutex_lock(&s->lock);
  s->checksum += sum;
  pthread_mutex_unlock(&s->lock);
  free(argb);
  free(rgb);
  return NULL;
}

bool openslide_run(const workload *w, run_result *r) {
  /* A fresh handle each run, so each starts with an empty cache, as tessera's does. */
  openslide_t *osr = openslide_open(w->path);
  if (!osr || openslide_get_error(osr)) {
    bench_error("OpenSlide: %s: %s", w->path, osr ? openslide_get_error(osr) : "not a slide");
    if (osr)
      openslide_close(osr);
    return false;
  }
  shared s = {.w = w, .osr = osr};
  atomic_init(&s.next, 0);
  atomic_init(&s.failed, false);
  pthread_mutex_init(&s.lock, NULL);
  pthread_t *threads = calloc((size_t)w->threads, sizeof *threads);
  int started = 0;
  double start = bench_now();
  for (; threads && started < w->threads; started++) {
    if (pthread_create(&threads[started], NULL, reader, &s) != 0) {
      fail(&s, "cannot start a thread");
      break;
    }
  }
  for (int i = 0; i < started; i++)
    pthread_join(threads[i], NULL);
  r->seconds = bench_now() - start;
  r->checksum = s.checksum;
  bool ok = threads && !atomic_load(&s.failed);
  if (!ok)
    bench_error("OpenSlide: %s: %s", w->path, threads ? s.error : "out of memory");
  free(threads);
  pthread_mutex_destroy(&s.lock);
  openslide_close(osr);
  return ok;
}
