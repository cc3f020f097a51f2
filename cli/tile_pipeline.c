/* A ring of `slots` buffers: item i lives in slot i % slots. A worker may start item i once
 * the consumer has released item i - slots, so at most `slots` items exist at a time and
 * memory stays bounded whatever the image size. */
#include "tile_pipeline.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

struct tile_pipeline {
  /* Set before the threads start, then read-only. */
  uint64_t count;
  size_t item_bytes;
  int slots;
  uint8_t *buffers;
  tile_make_fn make;
  void *context;
  pthread_t *threads;
  int workers;

  pthread_mutex_t lock;
  pthread_cond_t made;     /* signalled when a slot gets its item */
  pthread_cond_t released; /* signalled when the consumer frees a slot, or on stop */
  /* The fields below are guarded by lock. */
  uint64_t next;   /* next item a worker will start */
  uint64_t freed;  /* items 0 .. freed-1 are released by the consumer */
  uint64_t *holds; /* per slot: the item it holds complete, or UINT64_MAX */
  bool stop;
};

static uint8_t *slot_buffer(const tile_pipeline *p, uint64_t index) {
  return p->buffers + (size_t)(index % (uint64_t)p->slots) * p->item_bytes;
}

static void *worker_main(void *arg) {
  tile_pipeline *p = arg;
  pthread_mutex_lock(&p->lock);
  for (;;) {
    while (!p->stop && p->next < p->count && p->next >= p->freed + (uint64_t)p->slots)
      pthread_cond_wait(&p->released, &p->lock);
    if (p->stop || p->next >= p->count)
      break;
    uint64_t index = p->next++;
    pthread_mutex_unlock(&p->lock);
    p->make(p->context, index, slot_buffer(p, index));
    pthread_mutex_lock(&p->lock);
    p->holds[index % (uint64_t)p->slots] = index;
    pthread_cond_broadcast(&p->made);
  }
  pthread_mutex_unlock(&p->lock);
  return NULL;
}

tile_pipeline *tile_pipeline_create(uint64_t count, size_t item_bytes, int workers, int slots,
                                    tile_make_fn make, void *context) {
  if (workers < 0)
    workers = 0;
  if (slots < 1)
    slots = 1;
  tile_pipeline *p = calloc(1, sizeof *p);
  if (!p)
    return NULL;
  p->count = count;
  p->item_bytes = item_bytes;
  p->slots = slots;
  p->make = make;
  p->context = context;
  p->buffers = malloc((size_t)slots * item_bytes);
  p->holds = malloc((size_t)slots * sizeof p->holds[0]);
  p->threads = calloc(workers > 0 ? (size_t)workers : 1, sizeof p->threads[0]);
  if (!p->buffers || !p->holds || !p->threads) {
    free(p->buffers);
    free(p->holds);
    free(p->threads);
    free(p);
    return NULL;
  }
  for (int i = 0; i < slots; i++)
    p->holds[i] = UINT64_MAX;
  pthread_mutex_init(&p->lock, NULL);
  pthread_cond_init(&p->made, NULL);
  pthread_cond_init(&p->released, NULL);
  for (int i = 0; i < workers; i++) {
    if (pthread_create(&p->threads[p->workers], NULL, worker_main, p) != 0)
      break;
    p->workers++;
  }
  return p;
}

const uint8_t *tile_pipeline_take(tile_pipeline *p, uint64_t index) {
  uint8_t *buffer = slot_buffer(p, index);
  if (p->workers == 0) {
    p->make(p->context, index, buffer);
    return buffer;
  }
  pthread_mutex_lock(&p->lock);
  while (p->holds[index % (uint64_t)p->slots] != index)
    pthread_cond_wait(&p->made, &p->lock);
  pthread_mutex_unlock(&p->lock);
  return buffer;
}

void tile_pipeline_release(tile_pipeline *p, uint64_t index) {
  pthread_mutex_lock(&p->lock);
  p->freed = index + 1;
  pthread_cond_broadcast(&p->released);
  pthread_mutex_unlock(&p->lock);
}

void tile_pipeline_destroy(tile_pipeline *p) {
  if (!p)
    return;
  pthread_mutex_lock(&p->lock);
  p->stop = true;
  pthread_cond_broadcast(&p->released);
  pthread_mutex_unlock(&p->lock);
  for (int i = 0; i < p->workers; i++)
    pthread_join(p->threads[i], NULL);
  pthread_cond_destroy(&p->released);
  pthread_cond_destroy(&p->made);
  pthread_mutex_destroy(&p->lock);
  free(p->buffers);
  free(p->holds);
  free(p->threads);
  free(p);
}
