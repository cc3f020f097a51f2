#include "thread_slot.h"

static pthread_mutex_t key_lock = PTHREAD_MUTEX_INITIALIZER;

void *tsr_thread_slot_get(struct tsr_thread_slot *slot, void *(*create)(void)) {
  if (!atomic_load_explicit(&slot->ready, memory_order_acquire)) {
    pthread_mutex_lock(&key_lock);
    int ok = slot->ready || pthread_key_create(&slot->key, slot->destroy) == 0;
    if (ok)
      atomic_store_explicit(&slot->ready, 1, memory_order_release);
    pthread_mutex_unlock(&key_lock);
    if (!ok)
      return NULL;
  }
  void *p = pthread_getspecific(slot->key);
  if (!p && (p = create()) != NULL && pthread_setspecific(slot->key, p) != 0) {
    slot->destroy(p);
    p = NULL;
  }
  return p;
}
