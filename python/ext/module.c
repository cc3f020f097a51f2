/* tessera._tessera: the module, its errors and its small functions. The Python package
 * (python/tessera/) builds the cuCIM-style API on top of these types. */
#include "pytessera.h"

#include "checksum.h"

PyObject *pyt_Error;
pyt_counts pyt_live;

PyObject *pyt_raise(tessera_status status) {
  const char *msg = tessera_error_message();
  if (!msg || !*msg)
    msg = tessera_status_string(status);
  PyObject *type;
  switch (status) {
  case TESSERA_E_ARGUMENT: type = PyExc_ValueError; break;
  case TESSERA_E_IO: type = PyExc_OSError; break;
  case TESSERA_E_NOMEM: type = PyExc_MemoryError; break;
  default: type = pyt_Error; break;
  }
  if (type != pyt_Error) {
    PyErr_SetString(type, msg);
    return NULL;
  }
  /* tessera.TesseraError carries the status (its `status` attribute: 3 a malformed file, 4
   * unsupported, 5 corrupt, 7 over a limit), for callers that tell them apart. */
  PyObject *e = PyObject_CallFunction(type, "s", msg);
  PyObject *code = e ? PyLong_FromLong((long)status) : NULL;
  if (code && PyObject_SetAttrString(e, "status", code) == 0)
    PyErr_SetObject(type, e);
  Py_XDECREF(code);
  Py_XDECREF(e);
  return NULL;
}

PyDoc_STRVAR(checksum_doc,
             "checksum(array, channels=3) -> int\n\n"
             "The sum modulo 2**64 of every colour byte of a uint8 buffer of interleaved pixels "
             "(alpha left out when channels is 4): the number `tessera bench` prints, for "
             "comparing streams.");

static PyObject *checksum(PyObject *self, PyObject *args) {
  (void)self;
  Py_buffer view;
  int channels = 3;
  if (!PyArg_ParseTuple(args, "y*|i:checksum", &view, &channels))
    return NULL;
  if (channels != 3 && channels != 4) {
    PyBuffer_Release(&view);
    return PyErr_Format(PyExc_ValueError, "channels must be 3 or 4, not %d", channels);
  }
  uint64_t sum;
  Py_BEGIN_ALLOW_THREADS
  sum = checksum_pixels(view.buf, (size_t)view.len, channels);
  Py_END_ALLOW_THREADS
  PyBuffer_Release(&view);
  return PyLong_FromUnsignedLongLong(sum);
}

PyDoc_STRVAR(live_doc, "_live() -> dict: the extension's objects alive now (for leak tests).");

static PyObject *live(PyObject *self, PyObject *unused) {
  (void)self, (void)unused;
  return Py_BuildValue("{s:n,s:n,s:n,s:n}", "slides", pyt_live.slides, "iterators",
                       pyt_live.iterators, "arrays", pyt_live.arrays, "batches_held",
                       pyt_live.batches_held);
}

PyDoc_STRVAR(array_from_bytes_doc,
             "_array_from_bytes(data, shape) -> Array: a copy of data as an Array (unpickling).");

static PyObject *array_from_bytes(PyObject *self, PyObject *args) {
  (void)self;
  Py_buffer view;
  PyObject *shape_obj;
  if (!PyArg_ParseTuple(args, "y*O!:_array_from_bytes", &view, &PyTuple_Type, &shape_obj))
    return NULL;
  Py_ssize_t shape[4], ndim = PyTuple_GET_SIZE(shape_obj), total = 1;
  if (ndim < 1 || ndim > 4) {
    PyBuffer_Release(&view);
    return PyErr_Format(PyExc_ValueError, "an Array has 1 to 4 dimensions, not %zd", ndim);
  }
  for (Py_ssize_t i = 0; i < ndim; i++) {
    shape[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(shape_obj, i));
    if (shape[i] < 0 || (shape[i] && total > PY_SSIZE_T_MAX / shape[i])) {
      PyBuffer_Release(&view);
      if (!PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "bad Array shape");
      return NULL;
    }
    total *= shape[i];
  }
  if (total != view.len) {
    PyBuffer_Release(&view);
    return PyErr_Format(PyExc_ValueError, "%zd bytes do not make an Array of %zd", view.len,
                        total);
  }
  void *copy = malloc(total ? (size_t)total : 1);
  if (!copy) {
    PyBuffer_Release(&view);
    return PyErr_NoMemory();
  }
  memcpy(copy, view.buf, (size_t)total);
  PyBuffer_Release(&view);
  return pyt_array_from_owned(copy, (int)ndim, shape);
}

PyDoc_STRVAR(cuda_status_doc,
             "cuda_status() -> None\n\n"
             "Returns when the CUDA runtime, a CUDA device and nvJPEG are all there; raises "
             "RuntimeError with the library's message saying what is missing otherwise. The "
             "libraries are looked for once per process (see tessera_cuda_status in tessera.h).");

static PyObject *cuda_status(PyObject *self, PyObject *unused) {
  (void)self, (void)unused;
  tessera_status status;
  /* The first call loads the CUDA runtime, which may take a while on a machine with GPUs. */
  Py_BEGIN_ALLOW_THREADS
  status = tessera_cuda_status();
  Py_END_ALLOW_THREADS
  if (status != TESSERA_OK) {
    PyErr_SetString(PyExc_RuntimeError, tessera_error_message());
    return NULL;
  }
  Py_RETURN_NONE;
}

PyDoc_STRVAR(resample_doc,
             "resample(buffer, count, src_height, src_width, channels, width, height, scale_x, "
             "scale_y) -> Array\n\n"
             "count images of src_height x src_width x channels uint8 (C-contiguous in buffer), "
             "each area-averaged (tessera_resample_area) to height x width: an Array (count, "
             "height, width, channels). The GIL is released while resampling.");

static PyObject *resample(PyObject *self, PyObject *args) {
  (void)self;
  PyObject *obj;
  long long count, sh, sw, w, h;
  int channels;
  double sx, sy;
  if (!PyArg_ParseTuple(args, "OLLLiLLdd:resample", &obj, &count, &sh, &sw, &channels, &w, &h,
                        &sx, &sy))
    return NULL;
  if (count < 0 || sh < 1 || sw < 1 || w < 1 || h < 1 || (channels != 3 && channels != 4))
    return PyErr_Format(PyExc_ValueError, "resample: bad sizes");
  Py_buffer view;
  if (PyObject_GetBuffer(obj, &view, PyBUF_C_CONTIGUOUS) < 0)
    return NULL;
  size_t in_one = (size_t)sh * (size_t)sw * (size_t)channels;
  size_t out_one = (size_t)h * (size_t)w * (size_t)channels;
  if ((size_t)view.len != in_one * (size_t)count) {
    PyBuffer_Release(&view);
    return PyErr_Format(PyExc_ValueError, "resample: the buffer holds %zd bytes, not %zu",
                        view.len, in_one * (size_t)count);
  }
  uint8_t *out = malloc(out_one * (size_t)(count ? count : 1));
  if (!out) {
    PyBuffer_Release(&view);
    return PyErr_NoMemory();
  }
  tessera_status st = TESSERA_OK;
  Py_BEGIN_ALLOW_THREADS
  for (long long i = 0; i < count && st == TESSERA_OK; i++)
    st = tessera_resample_area((const uint8_t *)view.buf + (size_t)i * in_one, sw, sh,
                               (size_t)sw * (size_t)channels, channels, sx, sy, w, h,
                               out + (size_t)i * out_one, (size_t)w * (size_t)channels);
  Py_END_ALLOW_THREADS
  PyBuffer_Release(&view);
  if (st != TESSERA_OK) {
    free(out);
    return pyt_raise(st);
  }
  Py_ssize_t shape[4] = {(Py_ssize_t)count, (Py_ssize_t)h, (Py_ssize_t)w, channels};
  return pyt_array_from_owned(out, 4, shape);
}

static PyMethodDef module_methods[] = {
    {"cache_configure", (PyCFunction)(void (*)(void))pyt_cache_configure,
     METH_VARARGS | METH_KEYWORDS,
     "cache_configure(type, memory_capacity_mib, item_capacity=0, record_stats=False, "
     "name=None)\n\nConfigures the process's decoded-tile cache; type is 'nocache', "
     "'per_process' or 'shared_memory'."},
    {"cache_stats", pyt_cache_stats, METH_NOARGS,
     "cache_stats() -> dict: type, hits, misses, evictions, items, bytes, item_capacity, "
     "memory_capacity (bytes), record_stats."},
    {"cache_reset", pyt_cache_reset, METH_O,
     "cache_reset(record_stats): zeroes the statistics and turns recording on or off."},
    {"cache_reserve", pyt_cache_reserve, METH_VARARGS,
     "cache_reserve(memory_capacity_mib, item_capacity): grows the per-process cache in place "
     "(keeping its tiles); a value below the present one leaves that limit."},
    {"shared_cache_list", pyt_shared_cache_list, METH_NOARGS,
     "shared_cache_list() -> list of dict: the shared-memory caches of this machine."},
    {"shared_cache_remove", (PyCFunction)(void (*)(void))pyt_shared_cache_remove,
     METH_VARARGS | METH_KEYWORDS,
     "shared_cache_remove(name, force=False): removes a shared-memory cache's segment."},
    {"cuda_status", cuda_status, METH_NOARGS, cuda_status_doc},
    {"checksum", checksum, METH_VARARGS, checksum_doc},
    {"resample", resample, METH_VARARGS, resample_doc},
    {"_live", live, METH_NOARGS, live_doc},
    {"_array_from_bytes", array_from_bytes, METH_VARARGS, array_from_bytes_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "tessera._tessera",
    .m_doc = "The C core of the tessera package: Slide, Array, BatchIter and the cache.",
    .m_size = -1,
    .m_methods = module_methods,
};

static int add_type(PyObject *m, PyTypeObject *type, const char *name) {
  if (PyType_Ready(type) < 0)
    return -1;
  Py_INCREF(type);
  if (PyModule_AddObject(m, name, (PyObject *)type) < 0) {
    Py_DECREF(type);
    return -1;
  }
  return 0;
}

PyMODINIT_FUNC PyInit__tessera(void) {
  PyObject *m = PyModule_Create(&module_def);
  if (!m)
    return NULL;
  pyt_Error = PyErr_NewExceptionWithDoc(
      "tessera.TesseraError",
      "A slide the library cannot read: unknown format, unsupported codec, damaged data, or a "
      "limit exceeded. The message is the library's.",
      PyExc_RuntimeError, NULL);
  if (!pyt_Error || PyModule_AddObjectRef(m, "TesseraError", pyt_Error) < 0 ||
      add_type(m, &pyt_SlideType, "Slide") < 0 || add_type(m, &pyt_ArrayType, "Array") < 0 ||
      add_type(m, &pyt_BatchIterType, "BatchIter") < 0 ||
      PyModule_AddStringConstant(m, "library_version", tessera_version()) < 0) {
    Py_DECREF(m);
    return NULL;
  }
  return m;
}
