#include "per_thread.h"

static pthread_mutex_t key_lock = PTHREAD_MUTEX_INITIALIZER;

void *tsr_per_thread_get(struct tsr_per_thread *obj, void *(*create)(void)) {
  if (!atomic_load_explicit(&obj->ready, memory_order_acquire)) {
    pthread_mutex_lock(&key_lock);
    int ok = obj->ready || pthread_key_create(&obj->key, obj->destroy) == 0;
    if (ok)
      atomic_store_explicit(&obj->ready, 1, memory_order_release);
    pthread_mutex_unlock(&key_lock);
    if (!ok)
      return NULL;
  }
  void *p = pthread_getspecific(obj->key);
  if (!p && (p = create()) != NULL && pthread_setspecific(obj->key, p) != 0) {
    obj->destroy(p);
    p = NULL;
  }
  return p;
}
