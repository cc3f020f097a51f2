/* tessera._tessera.Array: pixels that belong to the object, shown to NumPy, PyTorch and the
 * buffer protocol without a copy. A batch's memory goes back to its iterator's free list when
 * the last Array (or NumPy array, memoryview, tensor) over it goes, not when the next batch
 * comes: an array stays valid while referenced. */
#include "pytessera.h"

static pyt_array *array_alloc(void) {
  pyt_array *a = PyObject_New(pyt_array, &pyt_ArrayType);
  if (!a)
    return NULL;
  a->data = NULL;
  a->ndim = 0;
  a->owned = NULL;
  a->batch = NULL;
  a->base = NULL;
  a->weakrefs = NULL;
  pyt_live.arrays++;
  return a;
}

static void set_contiguous(pyt_array *a, int ndim, const Py_ssize_t *shape) {
  a->ndim = ndim;
  Py_ssize_t stride = 1;
  for (int i = ndim - 1; i >= 0; i--) {
    a->shape[i] = shape[i];
    a->strides[i] = stride;
    stride *= shape[i];
  }
}

PyObject *pyt_array_from_owned(void *owned, int ndim, const Py_ssize_t *shape) {
  pyt_array *a = array_alloc();
  if (!a) {
    free(owned);
    return NULL;
  }
  a->owned = owned;
  a->data = owned;
  set_contiguous(a, ndim, shape);
  return (PyObject *)a;
}

PyObject *pyt_array_from_batch(tessera_batch *batch, int squeeze) {
  pyt_array *a = array_alloc();
  if (!a) {
    tessera_batch_release(batch);
    return NULL;
  }
  a->batch = batch;
  a->data = batch->data;
  pyt_live.batches_held++;
  Py_ssize_t shape[4] = {(Py_ssize_t)batch->count, (Py_ssize_t)batch->height,
                         (Py_ssize_t)batch->width, batch->channels};
  if (squeeze && batch->count == 1)
    set_contiguous(a, 3, shape + 1);
  else
    set_contiguous(a, 4, shape);
  return (PyObject *)a;
}

static void array_dealloc(pyt_array *a) {
  PyTypeObject *type = Py_TYPE(a);
  if (a->weakrefs)
    PyObject_ClearWeakRefs((PyObject *)a);
  if (a->batch) {
    tessera_batch_release(a->batch);
    pyt_live.batches_held--;
  }
  free(a->owned);
  Py_XDECREF(a->base);
  pyt_live.arrays--;
  /* A subclass's (tessera.CuImage's region) instance was made by its tp_alloc; a subclass
   * defined in Python drops its reference to the type after this returns. */
  type->tp_free((PyObject *)a);
}

/* Array(other): a view of other's pixels, as an instance of the class called: how a subclass
 * (the region CuImage.read_region returns) shows pixels the library read, without a copy. */
static PyObject *array_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
  PyObject *src;
  if (!PyArg_ParseTuple(args, "O!:Array", &pyt_ArrayType, &src))
    return NULL;
  if (kwargs && PyDict_Size(kwargs) > 0) {
    PyErr_SetString(PyExc_TypeError, "Array() takes no keyword arguments");
    return NULL;
  }
  const pyt_array *from = (const pyt_array *)src;
  pyt_array *a = (pyt_array *)type->tp_alloc(type, 0);
  if (!a)
    return NULL;
  a->data = from->data;
  a->ndim = from->ndim;
  for (int i = 0; i < from->ndim; i++) {
    a->shape[i] = from->shape[i];
    a->strides[i] = from->strides[i];
  }
  a->owned = NULL;
  a->batch = NULL;
  a->base = Py_NewRef(from->base ? from->base : src);
  a->weakrefs = NULL;
  pyt_live.arrays++;
  return (PyObject *)a;
}

static const pyt_array *root_of(const pyt_array *a) {
  return a->base ? (const pyt_array *)a->base : a;
}

/* The CUDA batch an Array shows, or NULL for host memory. */
const tessera_batch *pyt_array_cuda(const pyt_array *a) {
  const tessera_batch *b = root_of(a)->batch;
  return b && b->device == TESSERA_DEVICE_CUDA ? b : NULL;
}

static int refuse_host_access(const pyt_array *a, PyObject *kind) {
  const tessera_batch *b = pyt_array_cuda(a);
  PyErr_Format(kind,
               "this Array is in the memory of CUDA device %d: use cupy.asarray(a) or "
               "torch.from_dlpack(a) there, or a.cpu() for a copy in host memory",
               b ? b->device_id : 0);
  return -1;
}

static Py_ssize_t array_nbytes(const pyt_array *a) {
  Py_ssize_t n = 1;
  for (int i = 0; i < a->ndim; i++)
    n *= a->shape[i];
  return n;
}

/* ---- the buffer protocol ---- */

/* Arrays are C-contiguous (items of a batch are too), so every request but a Fortran-order
 * one of a multi-dimensional array can be met. */
static int array_getbuffer(pyt_array *a, Py_buffer *view, int flags) {
  if (pyt_array_cuda(a)) {
    view->obj = NULL;
    return refuse_host_access(a, PyExc_BufferError);
  }
  int multi = 0;
  for (int i = 0; i < a->ndim; i++)
    multi += a->shape[i] > 1;
  if ((flags & PyBUF_F_CONTIGUOUS) == PyBUF_F_CONTIGUOUS && multi > 1) {
    PyErr_SetString(PyExc_BufferError, "a tessera Array is C-contiguous, not Fortran-ordered");
    view->obj = NULL;
    return -1;
  }
  view->obj = Py_NewRef(a);
  view->buf = a->data;
  view->len = array_nbytes(a);
  view->readonly = 0;
  view->itemsize = 1;
  view->format = (flags & PyBUF_FORMAT) ? "B" : NULL;
  if ((flags & PyBUF_ND) == PyBUF_ND) {
    view->ndim = a->ndim;
    view->shape = a->shape;
    view->strides = (flags & PyBUF_STRIDES) == PyBUF_STRIDES ? a->strides : NULL;
  } else { /* PyBUF_SIMPLE: the bytes, one dimension */
    view->ndim = 1;
    view->shape = NULL;
    view->strides = NULL;
  }
  view->suboffsets = NULL;
  view->internal = NULL;
  return 0;
}

static PyBufferProcs array_as_buffer = {
    .bf_getbuffer = (getbufferproc)array_getbuffer,
};

/* ---- indexing: an int gives the item (a view); anything else goes to NumPy ---- */

static PyObject *array_item(pyt_array *a, Py_ssize_t i) {
  if (a->ndim == 0 || i < 0 || i >= a->shape[0]) {
    PyErr_SetString(PyExc_IndexError, "Array index out of range");
    return NULL;
  }
  if (a->ndim == 1) {
    if (pyt_array_cuda(a))
      return refuse_host_access(a, PyExc_TypeError), NULL;
    return PyLong_FromLong(a->data[i * a->strides[0]]);
  }
  pyt_array *v = array_alloc();
  if (!v)
    return NULL;
  v->data = a->data + i * a->strides[0];
  v->ndim = a->ndim - 1;
  for (int d = 1; d < a->ndim; d++) {
    v->shape[d - 1] = a->shape[d];
    v->strides[d - 1] = a->strides[d];
  }
  v->base = Py_NewRef(a->base ? a->base : (PyObject *)a);
  return (PyObject *)v;
}

static Py_ssize_t array_length(pyt_array *a) {
  if (a->ndim == 0) {
    PyErr_SetString(PyExc_TypeError, "len() of a 0-d Array");
    return -1;
  }
  return a->shape[0];
}

static PyObject *numpy_view(PyObject *a) {
  PyObject *np = PyImport_ImportModule("numpy");
  if (!np)
    return NULL;
  PyObject *arr = PyObject_CallMethod(np, "asarray", "O", a);
  Py_DECREF(np);
  return arr;
}

static PyObject *array_subscript(pyt_array *a, PyObject *key) {
  if (PyIndex_Check(key)) {
    Py_ssize_t i = PyNumber_AsSsize_t(key, PyExc_IndexError);
    if (i == -1 && PyErr_Occurred())
      return NULL;
    if (i < 0 && a->ndim > 0)
      i += a->shape[0];
    return array_item(a, i);
  }
  PyObject *arr = numpy_view((PyObject *)a);
  if (!arr)
    return NULL;
  PyObject *r = PyObject_GetItem(arr, key);
  Py_DECREF(arr);
  return r;
}

static PySequenceMethods array_as_sequence = {
    .sq_length = (lenfunc)array_length,
    .sq_item = (ssizeargfunc)array_item,
};

static PyMappingMethods array_as_mapping = {
    .mp_length = (lenfunc)array_length,
    .mp_subscript = (binaryfunc)array_subscript,
};

/* ---- attributes ---- */

/* A tuple of n Python ints. */
static PyObject *ssize_tuple(const Py_ssize_t *v, int n) {
  PyObject *t = PyTuple_New(n);
  for (int i = 0; t && i < n; i++) {
    PyObject *x = PyLong_FromSsize_t(v[i]);
    if (!x) {
      Py_CLEAR(t);
      break;
    }
    PyTuple_SET_ITEM(t, i, x);
  }
  return t;
}

static PyObject *shape_tuple(const pyt_array *a) { return ssize_tuple(a->shape, a->ndim); }

static PyObject *get_shape(pyt_array *a, void *c) {
  (void)c;
  return shape_tuple(a);
}

static PyObject *get_ndim(pyt_array *a, void *c) {
  (void)c;
  return PyLong_FromLong(a->ndim);
}

static PyObject *get_nbytes(pyt_array *a, void *c) {
  (void)c;
  return PyLong_FromSsize_t(array_nbytes(a));
}

static PyObject *get_dtype(pyt_array *a, void *c) {
  (void)a, (void)c;
  PyObject *np = PyImport_ImportModule("numpy");
  if (!np) {
    PyErr_Clear();
    return PyUnicode_FromString("uint8");
  }
  PyObject *dt = PyObject_CallMethod(np, "dtype", "s", "uint8");
  Py_DECREF(np);
  return dt;
}

static PyObject *get_typestr(pyt_array *a, void *c) {
  (void)a, (void)c;
  return PyUnicode_FromString("|u1");
}

static PyObject *get_device(pyt_array *a, void *c) {
  (void)c;
  const tessera_batch *b = pyt_array_cuda(a);
  return b ? PyUnicode_FromFormat("cuda:%d", (int)b->device_id) : PyUnicode_FromString("cpu");
}

static PyObject *get_batch_number(pyt_array *a, void *c) {
  (void)c;
  const tessera_batch *b = root_of(a)->batch;
  if (!b)
    Py_RETURN_NONE;
  return PyLong_FromSize_t(b->number);
}

/* Which locations the array shows: all of a batch's, or the one of a batch's item. */
static PyObject *get_indices(pyt_array *a, void *c) {
  (void)c;
  const pyt_array *root = root_of(a);
  const tessera_batch *b = root->batch;
  if (!b)
    Py_RETURN_NONE;
  size_t first = 0, count = b->count;
  if (a != root) { /* an item, or a part of one: one patch */
    size_t patch = (size_t)b->width * (size_t)b->height * (size_t)b->channels;
    first = (size_t)(a->data - root->data) / patch;
    count = 1;
  }
  PyObject *t = PyTuple_New((Py_ssize_t)count);
  for (size_t i = 0; t && i < count; i++) {
    PyObject *v = PyLong_FromUnsignedLongLong(b->indices[first + i]);
    if (!v) {
      Py_CLEAR(t);
      break;
    }
    PyTuple_SET_ITEM(t, (Py_ssize_t)i, v);
  }
  return t;
}

/* NumPy's (host memory) or CUDA's array interface. strides is None, which the protocol reads
 * as C-contiguous: every Array is (see array_getbuffer). The CUDA one's stream is None: a
 * batch is complete when handed out, so nothing need wait. */
static PyObject *interface(pyt_array *a, int cuda) {
  PyObject *shape = shape_tuple(a);
  PyObject *d = NULL;
  if (shape)
    d = Py_BuildValue(cuda ? "{s:O,s:s,s:[(ss)],s:(NO),s:O,s:i,s:O,s:O}"
                           : "{s:O,s:s,s:[(ss)],s:(NO),s:O,s:i}",
                      "shape", shape, "typestr", "|u1", "descr", "", "|u1", "data",
                      PyLong_FromVoidPtr(a->data), Py_False, "strides", Py_None, "version", 3,
                      "mask", Py_None, "stream", Py_None);
  Py_XDECREF(shape);
  return d;
}

static PyObject *get_cuda_array_interface(pyt_array *a, void *c) {
  (void)c;
  if (!pyt_array_cuda(a)) {
    PyErr_SetString(PyExc_AttributeError,
                    "__cuda_array_interface__: this Array is in host memory (device='cpu')");
    return NULL;
  }
  return interface(a, 1);
}

static PyObject *get_array_interface(pyt_array *a, void *c) {
  (void)c;
  if (pyt_array_cuda(a))
    return refuse_host_access(a, PyExc_TypeError), NULL;
  return interface(a, 0);
}

/* a.cpu(): a copy in host memory (for a CUDA Array), or a itself. */
static PyObject *array_cpu(pyt_array *a, PyObject *unused) {
  (void)unused;
  const tessera_batch *b = pyt_array_cuda(a);
  if (!b)
    return Py_NewRef(a);
  uint8_t *all = malloc(b->size ? b->size : 1);
  if (!all)
    return PyErr_NoMemory();
  tessera_status st;
  Py_BEGIN_ALLOW_THREADS
  st = tessera_batch_copy_to_host(b, all, b->size);
  Py_END_ALLOW_THREADS
  if (st != TESSERA_OK) {
    free(all);
    return pyt_raise(st);
  }
  /* An item (or part) of a batch: its bytes only; the views are C-contiguous. */
  size_t offset = (size_t)(a->data - root_of(a)->data), n = (size_t)array_nbytes(a);
  if (offset > 0 || n < b->size)
    memmove(all, all + offset, n);
  return pyt_array_from_owned(all, a->ndim, a->shape);
}

static PyObject *array_reduce(pyt_array *a, PyObject *unused) {
  (void)unused;
  if (pyt_array_cuda(a)) {
    PyErr_SetString(PyExc_TypeError, "an Array in CUDA memory is not pickled: pickle a.cpu()");
    return NULL;
  }
  PyObject *mod = PyImport_ImportModule("tessera._tessera");
  if (!mod)
    return NULL;
  PyObject *rebuild = PyObject_GetAttrString(mod, "_array_from_bytes");
  Py_DECREF(mod);
  PyObject *arr = rebuild ? numpy_view((PyObject *)a) : NULL;
  PyObject *bytes = arr ? PyObject_CallMethod(arr, "tobytes", NULL) : NULL;
  PyObject *shape = bytes ? shape_tuple(a) : NULL;
  PyObject *r = shape ? Py_BuildValue("(O(OO))", rebuild, bytes, shape) : NULL;
  Py_XDECREF(rebuild);
  Py_XDECREF(arr);
  Py_XDECREF(bytes);
  Py_XDECREF(shape);
  return r;
}

static PyObject *array_repr(pyt_array *a) {
  PyObject *shape = shape_tuple(a);
  if (!shape)
    return NULL;
  const tessera_batch *b = pyt_array_cuda(a);
  PyObject *r = b ? PyUnicode_FromFormat("<tessera.Array shape=%R dtype=uint8 device=cuda:%d>",
                                         shape, (int)b->device_id)
                  : PyUnicode_FromFormat("<tessera.Array shape=%R dtype=uint8>", shape);
  Py_DECREF(shape);
  return r;
}

static PyGetSetDef array_getset[] = {
    {"shape", (getter)get_shape, NULL, "The shape, as a tuple.", NULL},
    {"ndim", (getter)get_ndim, NULL, "Number of dimensions.", NULL},
    {"nbytes", (getter)get_nbytes, NULL, "Bytes of pixels.", NULL},
    {"dtype", (getter)get_dtype, NULL, "numpy.dtype('uint8').", NULL},
    {"typestr", (getter)get_typestr, NULL, "The array interface's type string, '|u1'.", NULL},
    {"device", (getter)get_device, NULL, "Where the pixels are: 'cpu', or 'cuda:N'.", NULL},
    {"batch_number", (getter)get_batch_number, NULL,
     "For a batch: 0 for the first, then 1, 2, ...; None otherwise.", NULL},
    {"indices", (getter)get_indices, NULL,
     "For a batch: which of the locations each patch shows (a tuple); None otherwise.", NULL},
    {"__array_interface__", (getter)get_array_interface, NULL,
     "NumPy's array interface (version 3): the array's own memory, no copy (host memory "
     "only).",
     NULL},
    {"__cuda_array_interface__", (getter)get_cuda_array_interface, NULL,
     "CUDA's array interface (version 3), for an Array in CUDA memory: CuPy, Numba and "
     "PyTorch take it without a copy. Its stream is None: the batch is complete.",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef array_methods[] = {
    {"__dlpack__", (PyCFunction)(void (*)(void))pyt_array_dlpack, METH_VARARGS | METH_KEYWORDS,
     "__dlpack__(stream=None): a DLPack capsule over the array's memory (no copy)."},
    {"__dlpack_device__", pyt_array_dlpack_device, METH_NOARGS,
     "__dlpack_device__() -> (1, 0) for the CPU, (2, N) for CUDA device N."},
    {"cpu", (PyCFunction)array_cpu, METH_NOARGS,
     "cpu() -> the Array itself if in host memory, else a copy of it in host memory."},
    {"__reduce__", (PyCFunction)array_reduce, METH_NOARGS,
     "Pickles the pixels (a copy: the receiver gets its own Array)."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject pyt_ArrayType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tessera.Array",
    .tp_doc = "uint8 pixels, (height, width, channels) or (count, height, width, channels); "
              "Array(other) is a view of another Array's pixels. "
              "np.asarray(a) and torch.from_dlpack(a) use its memory without a copy; the "
              "memory lives as long as anything refers to it.",
    .tp_basicsize = sizeof(pyt_array),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = array_new,
    .tp_free = PyObject_Free,
    .tp_dealloc = (destructor)array_dealloc,
    .tp_repr = (reprfunc)array_repr,
    .tp_as_buffer = &array_as_buffer,
    .tp_as_sequence = &array_as_sequence,
    .tp_as_mapping = &array_as_mapping,
    .tp_getset = array_getset,
    .tp_methods = array_methods,
    .tp_weaklistoffset = offsetof(pyt_array, weakrefs),
};
