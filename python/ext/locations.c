/* Patch locations from Python, converted to int64 (x, y) pairs once, before any reading:
 * NumPy arrays (any integer type, or floats holding whole numbers) through the buffer
 * protocol without a Python object per value; lists, tuples, generators and other iterables
 * of pairs item by item. As in cuCIM, a flat run of numbers x0, y0, x1, y1, ... is taken
 * too; one kind or the other, not both mixed. */
#include "pytessera.h"

#include <math.h>

typedef struct {
  int64_t *v;
  size_t n, cap; /* values, not pairs */
} int64_list;

static int push(int64_list *l, int64_t v) {
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 64;
    int64_t *p = PyMem_Realloc(l->v, cap * sizeof *p);
    if (!p) {
      PyErr_NoMemory();
      return -1;
    }
    l->v = p;
    l->cap = cap;
  }
  l->v[l->n++] = v;
  return 0;
}

static int from_double(double d, int64_t *out) {
  if (!isfinite(d) || d != floor(d) || d < -9.2e18 || d > 9.2e18) {
    char text[40];
    snprintf(text, sizeof text, "%.17g", d);
    PyErr_Format(PyExc_ValueError, "a location must be whole pixels, not %s", text);
    return -1;
  }
  *out = (int64_t)d;
  return 0;
}

/* One coordinate: an int (or anything with __index__), or a float holding a whole number. */
static int coordinate(PyObject *obj, int64_t *out) {
  if (PyBool_Check(obj)) {
    PyErr_SetString(PyExc_TypeError, "a location coordinate must be an integer, not bool");
    return -1;
  }
  if (PyFloat_Check(obj))
    return from_double(PyFloat_AS_DOUBLE(obj), out);
  if (!PyIndex_Check(obj)) {
    PyErr_Format(PyExc_TypeError, "a location coordinate must be an integer, not %s",
                 Py_TYPE(obj)->tp_name);
    return -1;
  }
  PyObject *i = PyNumber_Index(obj);
  if (!i)
    return -1;
  int overflow = 0;
  long long v = PyLong_AsLongLongAndOverflow(i, &overflow);
  Py_DECREF(i);
  if (overflow) {
    PyErr_SetString(PyExc_ValueError, "a location coordinate does not fit in 64 bits");
    return -1;
  }
  if (v == -1 && PyErr_Occurred())
    return -1;
  *out = v;
  return 0;
}

/* ---- buffers (NumPy arrays) ---- */

static int read_value(const char *p, char kind, Py_ssize_t size, int64_t *out) {
  switch (kind) {
  case 'b': *out = *(const signed char *)p; return 0;
  case 'B': *out = *(const unsigned char *)p; return 0;
  case 'h': *out = *(const short *)p; return 0;
  case 'H': *out = *(const unsigned short *)p; return 0;
  case 'i': *out = *(const int *)p; return 0;
  case 'I': *out = *(const unsigned int *)p; return 0;
  case 'l': *out = *(const long *)p; return 0;
  case 'q': *out = *(const long long *)p; return 0;
  case 'n': *out = *(const Py_ssize_t *)p; return 0;
  case 'L':
  case 'Q':
  case 'N': {
    unsigned long long u = size == 8 ? *(const unsigned long long *)p : *(const unsigned *)p;
    if (u > INT64_MAX) {
      PyErr_SetString(PyExc_ValueError, "a location coordinate does not fit in 64 bits");
      return -1;
    }
    *out = (int64_t)u;
    return 0;
  }
  case 'f': return from_double(*(const float *)p, out);
  case 'd': return from_double(*(const double *)p, out);
  }
  return -1;
}

static int from_buffer(PyObject *obj, int64_t **xy, size_t *n, int *single) {
  Py_buffer view;
  if (PyObject_GetBuffer(obj, &view, PyBUF_RECORDS_RO) < 0)
    return -1;
  int rc = -1;
  const char *fmt = view.format ? view.format : "B";
  if (*fmt == '@' || *fmt == '=' || *fmt == '<')
    fmt++;
  char kind = fmt[0];
  if (!kind || fmt[1] || !strchr("bBhHiIlLqQnNfd", kind)) {
    PyErr_Format(PyExc_TypeError,
                 "locations must hold integers in native byte order, not buffer format '%s'",
                 view.format ? view.format : "B");
    goto done;
  }
  /* (n, 2), or flat (2n,) as cuCIM takes it: x0, y0, x1, y1, ... */
  Py_ssize_t rows;
  if (view.ndim == 1 && view.shape[0] % 2 == 0) {
    rows = view.shape[0] / 2;
    *single = rows == 1;
  } else if (view.ndim == 2 && view.shape[1] == 2) {
    rows = view.shape[0];
    *single = 0;
  } else {
    PyErr_SetString(PyExc_ValueError, "locations must have shape (n, 2), or (2n,) for x0, y0, "
                                      "x1, y1, ...");
    goto done;
  }
  int64_t *out = rows ? PyMem_Malloc((size_t)rows * 2 * sizeof *out) : NULL;
  if (rows && !out) {
    PyErr_NoMemory();
    goto done;
  }
  Py_ssize_t col_stride = view.strides[view.ndim - 1];
  Py_ssize_t row_stride = view.ndim == 2 ? view.strides[0] : 2 * col_stride;
  if ((kind == 'q' || kind == 'l') && view.itemsize == 8 && col_stride == 8 &&
      (rows <= 1 || row_stride == 16)) {
    if (rows)
      memcpy(out, view.buf, (size_t)rows * 16);
  } else {
    for (Py_ssize_t r = 0; r < rows; r++)
      for (int c = 0; c < 2; c++)
        if (read_value((const char *)view.buf + r * row_stride + c * col_stride, kind,
                       view.itemsize, &out[r * 2 + c]) < 0) {
          PyMem_Free(out);
          goto done;
        }
  }
  *xy = out;
  *n = (size_t)rows;
  rc = 0;
done:
  PyBuffer_Release(&view);
  return rc;
}

/* ---- sequences and iterables ---- */

static int pair(PyObject *item, int64_list *l) {
  if (PyUnicode_Check(item) || PyBytes_Check(item))
    goto bad;
  PyObject *seq = PySequence_Fast(item, "");
  if (!seq) {
    PyErr_Clear();
    goto bad;
  }
  int rc = -1;
  int64_t x, y;
  if (PySequence_Fast_GET_SIZE(seq) != 2)
    PyErr_Format(PyExc_ValueError, "a location is an (x, y) pair, not %zd values",
                 PySequence_Fast_GET_SIZE(seq));
  else if (coordinate(PySequence_Fast_GET_ITEM(seq, 0), &x) == 0 &&
           coordinate(PySequence_Fast_GET_ITEM(seq, 1), &y) == 0)
    rc = push(l, x) < 0 || push(l, y) < 0 ? -1 : 0;
  Py_DECREF(seq);
  return rc;
bad:
  PyErr_Format(PyExc_TypeError, "a location is an (x, y) pair, not %s", Py_TYPE(item)->tp_name);
  return -1;
}

static int from_iterable(PyObject *obj, int64_t **xy, size_t *n, int *single) {
  PyObject *it = PyObject_GetIter(obj);
  if (!it) {
    PyErr_Format(PyExc_TypeError,
                 "locations must be an (x, y) pair or an iterable of them, not %s",
                 Py_TYPE(obj)->tp_name);
    return -1;
  }
  int64_list l = {0};
  int scalars = -1; /* decided by the first item: 1 for one (x, y) pair of numbers */
  PyObject *item;
  while ((item = PyIter_Next(it))) {
    /* a NumPy or tensor row has __index__ too, but also a length: a pair */
    if (scalars < 0) {
      int sized = PyObject_Length(item) >= 0;
      if (!sized)
        PyErr_Clear();
      scalars = !sized && (PyIndex_Check(item) || PyFloat_Check(item));
    }
    int rc;
    if (scalars) {
      int64_t v;
      rc = coordinate(item, &v);
      if (rc == 0)
        rc = push(&l, v);
    } else {
      rc = pair(item, &l);
    }
    Py_DECREF(item);
    if (rc < 0)
      goto fail;
  }
  if (PyErr_Occurred())
    goto fail;
  if (scalars == 1 && l.n % 2) {
    PyErr_Format(PyExc_ValueError, "flat locations are x0, y0, x1, y1, ...: an even number of "
                                   "values, not %zu", l.n);
    goto fail;
  }
  Py_DECREF(it);
  *xy = l.v;
  *n = l.n / 2;
  *single = scalars == 1 && l.n == 2;
  return 0;
fail:
  Py_DECREF(it);
  PyMem_Free(l.v);
  return -1;
}

int pyt_locations(PyObject *obj, int64_t **xy, size_t *n, int *single) {
  *xy = NULL;
  *n = 0;
  *single = 0;
  if (PyUnicode_Check(obj) || PyBytes_Check(obj) || PyByteArray_Check(obj)) {
    PyErr_Format(PyExc_TypeError, "locations must be (x, y) pairs, not %s",
                 Py_TYPE(obj)->tp_name);
    return -1;
  }
  if (PyObject_CheckBuffer(obj) && !PyList_Check(obj) && !PyTuple_Check(obj))
    return from_buffer(obj, xy, n, single);
  return from_iterable(obj, xy, n, single);
}
