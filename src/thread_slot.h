/* A per-thread object (a decoder context) created on first use in each thread and destroyed
 * when that thread exits, so worker threads neither reallocate it per tile nor leak it. */
#ifndef TSR_THREAD_SLOT_H
#define TSR_THREAD_SLOT_H

#include <pthread.h>
#include <stdatomic.h>

struct tsr_thread_slot {
  atomic_int ready; /* set once key exists; creation is serialised by a global mutex */
  pthread_key_t key;
  void (*destroy)(void *);
};

#define TSR_THREAD_SLOT_INIT(destroy_fn)                                                           \
  { 0, 0, destroy_fn }

/* This thread's object, made by create() the first time; NULL if create() fails. */
void *tsr_thread_slot_get(struct tsr_thread_slot *slot, void *(*create)(void));

#endif
