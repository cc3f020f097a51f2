/* A per-thread object (a decoder context) created on first use in each thread and destroyed
 * when that thread exits, so worker threads neither reallocate it per tile nor leak it. */
#ifndef TSR_PER_THREAD_H
#define TSR_PER_THREAD_H

#include <pthread.h>
#include <stdatomic.h>

struct tsr_per_thread {
  atomic_int ready; /* set once key exists; creation is serialised by a global mutex */
  pthread_key_t key;
  void (*destroy)(void *);
};

#define TSR_PER_THREAD_INIT(destroy_fn)                                                            \
  { 0, 0, destroy_fn }

/* This thread's object, made by create() the first time; NULL if create() fails. */
void *tsr_per_thread_get(struct tsr_per_thread *obj, void *(*create)(void));

#endif
