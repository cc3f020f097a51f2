/* The CPython extension tessera._tessera: the types and helpers its files share.
 *
 * Every object here is touched only with the GIL held, except the C calls that read pixels,
 * which run with the GIL released and hold a "use" of their slide (Slide.uses) so that a close()
 * from another thread waits for them instead of freeing the slide under them. */
#ifndef PYTESSERA_H
#define PYTESSERA_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>

#include "tessera.h"

/* ---- errors (module.c) ---- */

/* tessera.TesseraError, a RuntimeError: a file the library cannot read. */
extern PyObject *pyt_Error;

/* Raises the exception that `status` maps to, with the calling thread's library message:
 * E_ARGUMENT -> ValueError, E_IO -> OSError, E_NOMEM -> MemoryError, the others ->
 * TesseraError. Returns NULL. */
PyObject *pyt_raise(tessera_status status);

/* Objects alive, for the tests' leak checks (module.c). Changed with the GIL held. */
typedef struct pyt_counts {
  Py_ssize_t slides, iterators, arrays, batches_held;
} pyt_counts;
extern pyt_counts pyt_live;

/* ---- Slide (slide.c) ---- */

typedef struct pyt_slide {
  PyObject_HEAD
  tessera_slide *slide; /* NULL once closed and no longer used */
  PyObject *path;       /* str (or bytes, as given) */
  int closing;          /* close() was called: no new uses; freed when uses drops to 0 */
  Py_ssize_t uses;      /* reads in flight (GIL released) and live iterators */
  long pid;             /* the process `uses` counts in: a forked child starts again at 0,
                           the threads holding the parent's uses are not in it */
  PyObject *weakrefs;
} pyt_slide;

extern PyTypeObject pyt_SlideType;

/* Takes a use of the slide for a read or an iterator; raises ValueError when it is closed. */
int pyt_slide_acquire(pyt_slide *s);
/* Gives a use back; the last one of a closed slide closes it. GIL held. */
void pyt_slide_release(pyt_slide *s);

/* ---- Array (array.c) ---- */

/* A uint8 array of pixels whose memory belongs to the object: a malloc'd buffer, a batch of
 * the library (released when the array goes), or a part of another Array (kept alive). */
typedef struct pyt_array {
  PyObject_HEAD
  uint8_t *data;
  int ndim;
  Py_ssize_t shape[4];
  Py_ssize_t strides[4];
  void *owned;            /* freed with free(), or NULL */
  tessera_batch *batch;   /* released, or NULL */
  PyObject *base;         /* the Array this one is part of, or NULL */
  PyObject *weakrefs;
} pyt_array;

extern PyTypeObject pyt_ArrayType;

/* An Array over `owned` (taken: freed on failure too), C-contiguous with the given shape. */
PyObject *pyt_array_from_owned(void *owned, int ndim, const Py_ssize_t *shape);
/* An Array over a batch (taken: released on failure too); squeeze drops the batch axis of a
 * batch of one. */
PyObject *pyt_array_from_batch(tessera_batch *batch, int squeeze);

/* The CUDA batch an Array (or an item of one) shows, or NULL when it is in host memory. */
const tessera_batch *pyt_array_cuda(const pyt_array *a);

/* ---- BatchIter (iter.c) ---- */

extern PyTypeObject pyt_BatchIterType;

/* Slide.batches(): see the docstring in slide.c. */
PyObject *pyt_batches_new(pyt_slide *s, int64_t *xy, size_t n, int64_t width, int64_t height,
                          int32_t level, const tessera_batch_options *bo);

/* ---- locations (locations.c) ---- */

/* Converts any Python description of locations to int64 (x, y) pairs, once: a buffer (NumPy
 * array) of shape (n, 2) or flat (2n,) of integers, or a sequence or any iterable whose items
 * are (x, y) pairs, or a flat run of numbers x0, y0, x1, y1, ... *xy is PyMem_Malloc'd (NULL
 * when n = 0); *single says the object was one flat (x, y). Returns -1 with ValueError or
 * TypeError set. */
int pyt_locations(PyObject *obj, int64_t **xy, size_t *n, int *single);

/* ---- cache functions (cache.c) ---- */

PyObject *pyt_cache_configure(PyObject *self, PyObject *args, PyObject *kwargs);
PyObject *pyt_cache_stats(PyObject *self, PyObject *unused);
PyObject *pyt_cache_reset(PyObject *self, PyObject *arg);
PyObject *pyt_cache_reserve(PyObject *self, PyObject *args);
PyObject *pyt_shared_cache_list(PyObject *self, PyObject *unused);
PyObject *pyt_shared_cache_remove(PyObject *self, PyObject *args, PyObject *kwargs);

/* ---- DLPack (dlpack.c) ---- */

/* array.__dlpack__(stream=None): a "dltensor" capsule over the array's memory (CPU), keeping
 * the array alive until the consumer's deleter runs. */
PyObject *pyt_array_dlpack(PyObject *self, PyObject *args, PyObject *kwargs);
PyObject *pyt_array_dlpack_device(PyObject *self, PyObject *unused);

#endif
