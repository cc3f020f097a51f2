/* The process's decoded-tile cache, as module functions; tessera.CuImage.cache() builds the
 * cuCIM-style object over them. */
#include "pytessera.h"

static const char *const type_names[] = {"nocache", "per_process", "shared_memory"};

static int cache_type(PyObject *obj, tessera_cache_type *out) {
  if (!PyUnicode_Check(obj)) {
    PyErr_Format(PyExc_TypeError, "the cache type is a str, not %s", Py_TYPE(obj)->tp_name);
    return -1;
  }
  const char *s = PyUnicode_AsUTF8(obj);
  if (!s)
    return -1;
  for (int i = 0; i < 3; i++)
    if (strcmp(s, type_names[i]) == 0) {
      *out = (tessera_cache_type)i;
      return 0;
    }
  PyErr_Format(PyExc_ValueError,
               "unknown cache type %R: use 'nocache', 'per_process' or 'shared_memory'", obj);
  return -1;
}

PyObject *pyt_cache_configure(PyObject *self, PyObject *args, PyObject *kwargs) {
  (void)self;
  static char *kwlist[] = {"type", "memory_capacity_mib", "item_capacity", "record_stats",
                           "name", NULL};
  PyObject *type_obj, *name_obj = Py_None;
  long long mib, items = 0;
  int record = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OL|LpO:cache_configure", kwlist, &type_obj,
                                   &mib, &items, &record, &name_obj))
    return NULL;
  tessera_cache_options co;
  tessera_cache_options_init(&co);
  if (cache_type(type_obj, &co.type) < 0)
    return NULL;
  if (mib < 0)
    return PyErr_Format(PyExc_ValueError, "memory_capacity must be >= 0 MiB, not %lld", mib);
  if (items < 0)
    return PyErr_Format(PyExc_ValueError, "capacity must be >= 0 tiles, not %lld", items);
  co.memory_capacity_mib = (uint64_t)mib;
  co.item_capacity = (uint64_t)items;
  co.record_stats = record;
  if (name_obj != Py_None) {
    if (!PyUnicode_Check(name_obj))
      return PyErr_Format(PyExc_TypeError, "the cache name is a str, not %s",
                          Py_TYPE(name_obj)->tp_name);
    co.name = PyUnicode_AsUTF8(name_obj);
    if (!co.name)
      return NULL;
  }
  tessera_status st;
  Py_BEGIN_ALLOW_THREADS
  st = tessera_cache_configure(&co);
  Py_END_ALLOW_THREADS
  if (st != TESSERA_OK)
    return pyt_raise(st);
  Py_RETURN_NONE;
}

PyObject *pyt_cache_stats(PyObject *self, PyObject *unused) {
  (void)self, (void)unused;
  tessera_cache_stats s = {.struct_size = sizeof s};
  tessera_status st;
  /* Without the GIL: a shared cache's statistics are read under its shard locks, which another
   * process may hold (stopped, say) for a while. */
  Py_BEGIN_ALLOW_THREADS
  st = tessera_cache_stats_get(&s);
  Py_END_ALLOW_THREADS
  if (st != TESSERA_OK)
    return pyt_raise(st);
  return Py_BuildValue("{s:s,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:O}", "type", type_names[s.type],
                       "hits", (unsigned long long)s.hits, "misses",
                       (unsigned long long)s.misses, "evictions",
                       (unsigned long long)s.evictions, "items", (unsigned long long)s.items,
                       "bytes", (unsigned long long)s.bytes, "item_capacity",
                       (unsigned long long)s.item_capacity, "memory_capacity",
                       (unsigned long long)s.memory_capacity, "record_stats",
                       s.record_stats ? Py_True : Py_False);
}

PyObject *pyt_cache_reset(PyObject *self, PyObject *arg) {
  (void)self;
  int record = PyObject_IsTrue(arg);
  if (record < 0)
    return NULL;
  Py_BEGIN_ALLOW_THREADS /* it takes the shard locks too (see pyt_cache_stats) */
  tessera_cache_stats_reset(record);
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

PyObject *pyt_cache_reserve(PyObject *self, PyObject *args) {
  (void)self;
  unsigned long long mib, items;
  if (!PyArg_ParseTuple(args, "KK", &mib, &items))
    return NULL;
  tessera_status st;
  Py_BEGIN_ALLOW_THREADS /* it takes every shard lock */
  st = tessera_cache_reserve(mib, items);
  Py_END_ALLOW_THREADS
  if (st != TESSERA_OK)
    return pyt_raise(st);
  Py_RETURN_NONE;
}

PyObject *pyt_shared_cache_list(PyObject *self, PyObject *unused) {
  (void)self, (void)unused;
  size_t cap = 16, n = 0;
  tessera_shared_cache_info *infos = NULL;
  for (;;) {
    PyMem_Free(infos);
    infos = PyMem_Calloc(cap, sizeof *infos);
    if (!infos)
      return PyErr_NoMemory();
    for (size_t i = 0; i < cap; i++)
      infos[i].struct_size = sizeof *infos;
    tessera_status st;
    Py_BEGIN_ALLOW_THREADS
    st = tessera_shared_cache_list(infos, cap, &n);
    Py_END_ALLOW_THREADS
    if (st != TESSERA_OK) {
      PyMem_Free(infos);
      return pyt_raise(st);
    }
    if (n <= cap)
      break;
    cap = n + 16; /* more appeared than there was room for: ask again */
  }
  PyObject *list = PyList_New(0);
  for (size_t i = 0; list && i < n; i++) {
    const tessera_shared_cache_info *c = &infos[i];
    PyObject *d = Py_BuildValue(
        "{s:s,s:O,s:I,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K}", "name", c->name, "ready",
        c->ready ? Py_True : Py_False, "users", c->users, "segment_bytes",
        (unsigned long long)c->segment_bytes, "memory_capacity",
        (unsigned long long)c->memory_capacity, "item_capacity",
        (unsigned long long)c->item_capacity, "items", (unsigned long long)c->items, "bytes",
        (unsigned long long)c->bytes, "hits", (unsigned long long)c->hits, "misses",
        (unsigned long long)c->misses, "evictions", (unsigned long long)c->evictions);
    if (!d || PyList_Append(list, d) < 0)
      Py_CLEAR(list);
    Py_XDECREF(d);
  }
  PyMem_Free(infos);
  return list;
}

PyObject *pyt_shared_cache_remove(PyObject *self, PyObject *args, PyObject *kwargs) {
  (void)self;
  static char *kwlist[] = {"name", "force", NULL};
  const char *name;
  int force = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "s|p:shared_cache_remove", kwlist, &name,
                                   &force))
    return NULL;
  tessera_status st;
  Py_BEGIN_ALLOW_THREADS
  st = tessera_shared_cache_remove(name, force);
  Py_END_ALLOW_THREADS
  if (st != TESSERA_OK)
    return pyt_raise(st);
  Py_RETURN_NONE;
}
