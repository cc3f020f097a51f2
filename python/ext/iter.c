/* tessera._tessera.BatchIter: the library's batch iterator as a Python iterator. Each batch
 * is handed out as an Array that owns it; the iterator itself can go (exhausted, closed,
 * abandoned mid-stream) while its batches are still in use. */
#include "pytessera.h"

typedef struct {
  PyObject_HEAD
  tessera_batch_iter *it; /* NULL once exhausted or closed */
  pyt_slide *slide;       /* holds a use of the slide while `it` is set */
  size_t length;          /* batches in all */
  int squeeze;            /* batch_size 1: hand out (H, W, C) items */
  int busy;               /* a __next__ runs with the GIL released */
  int close_pending;      /* close() came during it */
  const char *decoder;    /* tessera_batch_iter_decoder's (static) */
} pyt_iter;

/* Cancels what is queued, waits for tiles being decoded and gives the slide's use back.
 * Batches handed out stay valid. The wait runs without the GIL: a tile being decoded may
 * wait on a cache lock held by another process, or be slow, and the other Python threads
 * must go on meanwhile (one of them may be what ends the wait). `it` is taken from the object
 * first, so another thread finds the iterator closed instead of using it while it goes;
 * during a dealloc nobody else can reach the object at all. */
static void finish(pyt_iter *self) {
  tessera_batch_iter *it = self->it;
  if (!it)
    return;
  self->it = NULL;
  Py_BEGIN_ALLOW_THREADS
  tessera_batch_iter_destroy(it);
  Py_END_ALLOW_THREADS
  pyt_live.iterators--;
  pyt_slide_release(self->slide);
}

PyObject *pyt_batches_new(pyt_slide *s, int64_t *xy, size_t n, int64_t width, int64_t height,
                          int32_t level, const tessera_batch_options *bo) {
  if (pyt_slide_acquire(s) < 0)
    return NULL;
  tessera_batch_iter *it = NULL;
  tessera_status st;
  Py_BEGIN_ALLOW_THREADS
  st = tessera_batch_iter_create(s->slide, xy, n, width, height, level, bo, &it);
  Py_END_ALLOW_THREADS
  if (st != TESSERA_OK) {
    pyt_slide_release(s);
    return pyt_raise(st);
  }
  pyt_iter *self = PyObject_GC_New(pyt_iter, &pyt_BatchIterType);
  if (!self) {
    /* Without the GIL: its workers may be reading through a file object's callback. */
    Py_BEGIN_ALLOW_THREADS
    tessera_batch_iter_destroy(it);
    Py_END_ALLOW_THREADS
    pyt_slide_release(s);
    return NULL;
  }
  self->it = it;
  self->slide = (pyt_slide *)Py_NewRef(s);
  self->length = tessera_batch_iter_length(it);
  self->squeeze = bo->batch_size == 1;
  self->decoder = tessera_batch_iter_decoder(it);
  self->busy = 0;
  self->close_pending = 0;
  pyt_live.iterators++;
  PyObject_GC_Track(self);
  return (PyObject *)self;
}

static PyObject *iter_next(pyt_iter *self) {
  if (!self->it)
    return NULL;
  if (self->busy) {
    PyErr_SetString(PyExc_RuntimeError,
                    "this batch iterator is being advanced by another thread; give each thread "
                    "its own iterator");
    return NULL;
  }
  tessera_batch *b = NULL;
  tessera_status st;
  self->busy = 1;
  Py_BEGIN_ALLOW_THREADS
  st = tessera_batch_iter_next(self->it, &b);
  Py_END_ALLOW_THREADS
  self->busy = 0;
  if (self->close_pending) {
    tessera_batch_release(b);
    finish(self);
    return NULL;
  }
  if (st != TESSERA_OK)
    return pyt_raise(st); /* that batch is skipped: the next call goes on */
  if (!b) {
    finish(self);
    return NULL;
  }
  return pyt_array_from_batch(b, self->squeeze);
}

static PyObject *iter_close(pyt_iter *self, PyObject *unused) {
  (void)unused;
  if (self->busy)
    self->close_pending = 1;
  else
    finish(self);
  Py_RETURN_NONE;
}

static Py_ssize_t iter_len(pyt_iter *self) {
  return (Py_ssize_t)self->length;
}

static int iter_traverse(pyt_iter *self, visitproc visit, void *arg) {
  Py_VISIT(self->slide);
  return 0;
}

static int iter_clear(pyt_iter *self) {
  if (!self->busy) {
    finish(self);
    Py_CLEAR(self->slide);
  }
  return 0;
}

static void iter_dealloc(pyt_iter *self) {
  PyObject_GC_UnTrack(self);
  finish(self);
  Py_CLEAR(self->slide);
  PyObject_GC_Del(self);
}

static PyObject *iter_enter(PyObject *self, PyObject *unused) {
  (void)unused;
  return Py_NewRef(self);
}

static PyObject *iter_exit(pyt_iter *self, PyObject *args) {
  (void)args;
  return iter_close(self, NULL);
}

static PyMethodDef iter_methods[] = {
    {"close", (PyCFunction)iter_close, METH_NOARGS,
     "close(): stops the stream: queued work is cancelled, batches already handed out stay "
     "valid. Also done when the iterator is exhausted or garbage collected."},
    {"__enter__", iter_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)iter_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyObject *iter_get_decoder(pyt_iter *self, void *c) {
  (void)c;
  return PyUnicode_FromString(self->decoder);
}

static PyGetSetDef iter_getset[] = {
    {"decoder", (getter)iter_get_decoder, NULL,
     "What decodes the tiles: 'cpu'; for device='cuda', 'nvjpeg-hardware' (the GPU's JPEG "
     "engines), 'nvjpeg-default' and the like, or 'cpu+copy' (a level nvJPEG cannot decode: "
     "patches are made on the CPU and copied).",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods iter_as_sequence = {
    .sq_length = (lenfunc)iter_len,
};

PyTypeObject pyt_BatchIterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tessera.BatchIter",
    .tp_doc = "An iterator of batches (Arrays), decoded ahead by the library's threads; len() "
              "is the number of batches in all.",
    .tp_basicsize = sizeof(pyt_iter),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_dealloc = (destructor)iter_dealloc,
    .tp_getset = iter_getset,
    .tp_traverse = (traverseproc)iter_traverse,
    .tp_clear = (inquiry)iter_clear,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)iter_next,
    .tp_methods = iter_methods,
    .tp_as_sequence = &iter_as_sequence,
};
