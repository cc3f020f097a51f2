/* tessera._tessera.Slide: an open slide. Reads run with the GIL released; each holds a use
 * of the slide, as does each live batch iterator, and close() frees the C slide only once the
 * last use is given back, so closing from one thread while another reads is safe. */
#include "pytessera.h"

#include "fractional.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* In a child forked while other threads were reading, nobody will give their uses back. */
static void forget_parent_uses(pyt_slide *s) {
  long pid = (long)getpid();
  if (s->pid != pid) {
    s->pid = pid;
    s->uses = 0;
  }
}

int pyt_slide_acquire(pyt_slide *s) {
  forget_parent_uses(s);
  if (!s->slide || s->closing) {
    PyErr_SetString(PyExc_ValueError, "I/O operation on a closed slide");
    return -1;
  }
  s->uses++;
  return 0;
}

static void free_slide(pyt_slide *s) {
  tessera_slide *slide = s->slide;
  s->slide = NULL;
  if (slide) {
    Py_BEGIN_ALLOW_THREADS
    tessera_close(slide);
    Py_END_ALLOW_THREADS
  }
}

void pyt_slide_release(pyt_slide *s) {
  forget_parent_uses(s);
  if (s->uses > 0 && --s->uses == 0 && s->closing)
    free_slide(s);
}

/* ---- a Python file object as the slide's bytes --------------------------------------------
 *
 * Slide(fileobj) reads through tessera_open_source with the callback below. The library calls
 * it from its own threads (and from the caller's, which has released the GIL), so it takes the
 * GIL for the seek and read only. A file object has one position, so seek+read pairs from
 * several threads are serialised by `lock`, which is taken before the GIL and never while
 * holding it: every tessera call that can read runs with the GIL released, so no thread
 * holding the GIL ever waits for `lock`. */
struct pyfile {
  PyObject *file; /* a strong reference, touched with the GIL held */
  pthread_mutex_t lock;
};

/* The current exception as "Type: message" into buf, cleared. GIL held. */
static void exception_text(char *buf, size_t size) {
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  PyErr_NormalizeException(&type, &value, &tb);
  PyObject *text = value ? PyObject_Str(value) : NULL;
  const char *msg = text ? PyUnicode_AsUTF8(text) : NULL;
  snprintf(buf, size, "%s: %s", type ? ((PyTypeObject *)type)->tp_name : "error",
           msg ? msg : "?");
  PyErr_Clear();
  Py_XDECREF(text);
  Py_XDECREF(type);
  Py_XDECREF(value);
  Py_XDECREF(tb);
}

static int64_t pyfile_read_at(void *user, uint64_t offset, size_t length, void *buffer,
                              char *message, size_t message_size) {
  struct pyfile *p = user;
  int64_t done = 0;
  pthread_mutex_lock(&p->lock);
  PyGILState_STATE g = PyGILState_Ensure();
  PyObject *r = PyObject_CallMethod(p->file, "seek", "K", (unsigned long long)offset);
  if (!r)
    done = -1;
  Py_XDECREF(r);
  while (done >= 0 && (size_t)done < length) {
    PyObject *data = PyObject_CallMethod(p->file, "read", "n", (Py_ssize_t)(length - done));
    Py_buffer view;
    if (!data || PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
      Py_XDECREF(data);
      done = -1;
      break;
    }
    size_t n = (size_t)view.len <= length - (size_t)done ? (size_t)view.len : length - (size_t)done;
    memcpy((uint8_t *)buffer + done, view.buf, n);
    PyBuffer_Release(&view);
    Py_DECREF(data);
    if (n == 0)
      break; /* the end */
    done += (int64_t)n;
  }
  if (done < 0)
    exception_text(message, message_size);
  PyGILState_Release(g);
  pthread_mutex_unlock(&p->lock);
  return done;
}

static void pyfile_close(void *user) {
  struct pyfile *p = user;
  PyGILState_STATE g = PyGILState_Ensure();
  Py_DECREF(p->file);
  PyGILState_Release(g);
  pthread_mutex_destroy(&p->lock);
  PyMem_RawFree(p);
}

/* Whether obj is a file object to read through (not a path: str, bytes, os.PathLike). */
static int is_file_object(PyObject *obj) {
  if (PyUnicode_Check(obj) || PyBytes_Check(obj) || PyObject_HasAttrString(obj, "__fspath__"))
    return 0;
  return PyObject_HasAttrString(obj, "read") && PyObject_HasAttrString(obj, "seek");
}

/* A name for the file object in messages and Slide.path: its path or name, else its repr. */
static PyObject *file_object_name(PyObject *file) {
  static const char *attrs[] = {"full_name", "path", "name"};
  for (size_t i = 0; i < sizeof attrs / sizeof *attrs; i++) {
    PyObject *v = PyObject_GetAttrString(file, attrs[i]);
    if (v && PyUnicode_Check(v))
      return v;
    Py_XDECREF(v);
    PyErr_Clear();
  }
  return PyObject_Repr(file);
}

static int open_file_object(pyt_slide *self, PyObject *file, PyObject *identity,
                            const tessera_open_options *oo) {
  if (identity != Py_None && !PyUnicode_Check(identity)) {
    PyErr_SetString(PyExc_TypeError, "identity must be a str");
    return -1;
  }
  PyObject *end = PyObject_CallMethod(file, "seek", "ii", 0, 2);
  Py_XDECREF(end);
  PyObject *size_obj = end ? PyObject_CallMethod(file, "tell", NULL) : NULL;
  unsigned long long size = size_obj ? PyLong_AsUnsignedLongLong(size_obj) : 0;
  Py_XDECREF(size_obj);
  if (PyErr_Occurred())
    return -1;
  PyObject *name = file_object_name(file);
  if (!name)
    return -1;
  /* Without an identity from the caller, one unique to this open: nothing tells whether the
   * object behind a file object is the same as another's, so its tiles are never shared. */
  static unsigned long long opens;
  PyObject *id = identity != Py_None
                     ? PyUnicode_FromFormat("fileobj:%U", identity)
                     : PyUnicode_FromFormat("fileobj-open:%ld:%llu:%p", (long)getpid(), ++opens,
                                            (void *)file);
  const char *id_text = id ? PyUnicode_AsUTF8(id) : NULL;
  const char *name_text = PyUnicode_AsUTF8(name);
  struct pyfile *p = id_text && name_text ? PyMem_RawMalloc(sizeof *p) : NULL;
  if (!p) {
    Py_XDECREF(id);
    Py_DECREF(name);
    if (!PyErr_Occurred())
      PyErr_NoMemory();
    return -1;
  }
  p->file = Py_NewRef(file);
  pthread_mutex_init(&p->lock, NULL);
  tessera_source src;
  tessera_source_init(&src);
  src.read_at = pyfile_read_at;
  src.user_data = p;
  src.size = size;
  src.identity = id_text;
  src.name = name_text;
  src.close = pyfile_close;
  tessera_slide *slide = NULL;
  tessera_status st;
  Py_BEGIN_ALLOW_THREADS
  st = tessera_open_source(&src, oo, &slide);
  Py_END_ALLOW_THREADS
  Py_DECREF(id);
  if (st != TESSERA_OK) {
    Py_DECREF(name);
    pyt_raise(st);
    return -1;
  }
  Py_XSETREF(self->path, name);
  self->slide = slide;
  self->closing = 0;
  self->pid = (long)getpid();
  return 0;
}

/* A keyword limit: None keeps the default; otherwise an int >= 1 that fits. */
static int limit_arg(PyObject *obj, const char *name, uint64_t max, uint64_t *out) {
  if (obj == Py_None)
    return 0;
  unsigned long long v = PyLong_Check(obj) && !PyBool_Check(obj) ? PyLong_AsUnsignedLongLong(obj)
                                                                  : (unsigned long long)-1;
  if (PyErr_Occurred() || v == 0 || v > max || !PyLong_Check(obj) || PyBool_Check(obj)) {
    PyErr_Clear();
    PyErr_Format(PyExc_ValueError, "%s must be an integer from 1 to %llu, not %R", name,
                 (unsigned long long)max, obj);
    return -1;
  }
  *out = v;
  return 0;
}

static int slide_init(pyt_slide *self, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"path", "max_directories", "max_dimension", "max_tile_bytes",
                           "max_decoded_tile_bytes", "max_read_bytes", "identity", NULL};
  PyObject *path_obj, *encoded = NULL, *identity = Py_None;
  PyObject *lim[5] = {Py_None, Py_None, Py_None, Py_None, Py_None};
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|$OOOOOO:Slide", kwlist, &path_obj, &lim[0],
                                   &lim[1], &lim[2], &lim[3], &lim[4], &identity))
    return -1;
  tessera_open_options oo;
  tessera_open_options_init(&oo);
  uint64_t dirs = oo.max_directories, dim = (uint64_t)oo.max_dimension;
  if (limit_arg(lim[0], "max_directories", UINT32_MAX, &dirs) < 0 ||
      limit_arg(lim[1], "max_dimension", INT64_MAX, &dim) < 0 ||
      limit_arg(lim[2], "max_tile_bytes", UINT64_MAX, &oo.max_tile_bytes) < 0 ||
      limit_arg(lim[3], "max_decoded_tile_bytes", UINT64_MAX, &oo.max_decoded_tile_bytes) < 0 ||
      limit_arg(lim[4], "max_read_bytes", UINT64_MAX, &oo.max_read_bytes) < 0)
    return -1;
  oo.max_directories = (uint32_t)dirs;
  oo.max_dimension = (int64_t)dim;
  forget_parent_uses(self);
  if (self->slide || self->uses) {
    PyErr_SetString(PyExc_RuntimeError, "Slide.__init__ called on an open slide");
    return -1;
  }
  if (is_file_object(path_obj))
    return open_file_object(self, path_obj, identity, &oo);
  if (identity != Py_None) {
    PyErr_SetString(PyExc_TypeError, "identity= is for file objects (a path or URL has its own)");
    return -1;
  }
  if (!PyUnicode_FSConverter(path_obj, &encoded))
    return -1;
  const char *path = PyBytes_AS_STRING(encoded);
  int url = strstr(path, "://") != NULL;
  tessera_slide *slide = NULL;
  tessera_status st;
  int missing = 0;
  Py_BEGIN_ALLOW_THREADS
  st = tessera_open_ex(path, &oo, &slide);
  if (st == TESSERA_E_IO && !url && access(path, F_OK) != 0 && errno == ENOENT)
    missing = 1;
  Py_END_ALLOW_THREADS
  if (st != TESSERA_OK) {
    if (missing) {
      PyObject *args = Py_BuildValue("(isN)", ENOENT, tessera_error_message(),
                                     PyUnicode_DecodeFSDefault(path));
      if (args) {
        PyErr_SetObject(PyExc_FileNotFoundError, args);
        Py_DECREF(args);
      }
    } else {
      pyt_raise(st);
    }
    Py_DECREF(encoded);
    return -1;
  }
  Py_DECREF(encoded);
  PyObject *fspath = PyOS_FSPath(path_obj);
  if (!fspath) {
    tessera_close(slide);
    return -1;
  }
  Py_XSETREF(self->path, fspath);
  self->slide = slide;
  self->closing = 0;
  self->pid = (long)getpid();
  return 0;
}

static PyObject *slide_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
  (void)args, (void)kwargs;
  pyt_slide *self = (pyt_slide *)type->tp_alloc(type, 0);
  if (self)
    pyt_live.slides++;
  return (PyObject *)self;
}

static void slide_dealloc(pyt_slide *self) {
  if (self->weakrefs)
    PyObject_ClearWeakRefs((PyObject *)self);
  /* uses is 0 here: iterators hold a reference to their slide */
  free_slide(self);
  Py_CLEAR(self->path);
  pyt_live.slides--;
  Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *slide_close(pyt_slide *self, PyObject *unused) {
  (void)unused;
  forget_parent_uses(self);
  self->closing = 1;
  if (self->uses == 0)
    free_slide(self);
  Py_RETURN_NONE;
}

/* The slide for a metadata call, with a use taken: Python code can run during the call (an
 * argument's __index__, a garbage collection running __del__ methods, which may release the
 * GIL) and call close(). Give it back with pyt_slide_release. */
static tessera_slide *use_slide(pyt_slide *self) {
  return pyt_slide_acquire(self) < 0 ? NULL : self->slide;
}

static PyObject *get_closed(pyt_slide *self, void *c) {
  (void)c;
  return PyBool_FromLong(!self->slide || self->closing);
}

static PyObject *get_path(pyt_slide *self, void *c) {
  (void)c;
  if (!self->path)
    Py_RETURN_NONE;
  return Py_NewRef(self->path);
}

static PyObject *get_level_count(pyt_slide *self, void *c) {
  (void)c;
  tessera_slide *s = use_slide(self);
  if (!s)
    return NULL;
  PyObject *r = PyLong_FromLong(tessera_level_count(s));
  pyt_slide_release(self);
  return r;
}

static PyObject *get_vendor(pyt_slide *self, void *c) {
  (void)c;
  tessera_slide *s = use_slide(self);
  if (!s)
    return NULL;
  PyObject *r = PyUnicode_FromString(tessera_vendor(s));
  pyt_slide_release(self);
  return r;
}

static PyObject *get_background(pyt_slide *self, void *c) {
  (void)c;
  tessera_slide *s = use_slide(self);
  if (!s)
    return NULL;
  PyObject *r = PyLong_FromLong(tessera_background(s));
  pyt_slide_release(self);
  return r;
}

static PyObject *get_icc_profile(pyt_slide *self, void *c) {
  (void)c;
  tessera_slide *s = use_slide(self);
  if (!s)
    return NULL;
  size_t n = tessera_icc_profile_size(s);
  PyObject *r;
  if (n == 0) {
    r = Py_NewRef(Py_None);
  } else if ((r = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n)) &&
             tessera_icc_profile_read(s, PyBytes_AS_STRING(r), n) != TESSERA_OK) {
    Py_DECREF(r);
    r = pyt_raise(TESSERA_E_ARGUMENT);
  }
  pyt_slide_release(self);
  return r;
}

static int level_arg(PyObject *obj, int32_t *level) {
  long v = PyLong_AsLong(obj);
  if (v == -1 && PyErr_Occurred())
    return 0;
  if (v < INT32_MIN || v > INT32_MAX) {
    PyErr_Format(PyExc_ValueError, "level %ld does not exist", v);
    return 0;
  }
  *level = (int32_t)v;
  return 1;
}

static PyObject *slide_level_info(pyt_slide *self, PyObject *arg) {
  int32_t level;
  if (!level_arg(arg, &level))
    return NULL;
  tessera_slide *s = use_slide(self);
  if (!s)
    return NULL;
  tessera_level_info li = {.struct_size = sizeof li};
  tessera_status st = tessera_level_info_get(s, level, &li);
  PyObject *r = NULL;
  if (st != TESSERA_OK) {
    pyt_raise(st);
  } else {
    const char *codec = tessera_compression_name(li.compression);
    static const char *const alpha[] = {"none", "associated", "unassociated"};
    r = Py_BuildValue("{s:L,s:L,s:d,s:i,s:i,s:O,s:I,s:s,s:i,s:s}", "width", (long long)li.width,
                      "height", (long long)li.height, "downsample", li.downsample,
                      "tile_width", li.tile_width, "tile_height", li.tile_height, "tiled",
                      li.tiled ? Py_True : Py_False, "compression", li.compression,
                      "compression_name", codec ? codec : "unknown", "samples_per_pixel",
                      li.samples_per_pixel, "alpha",
                      li.alpha >= 0 && li.alpha <= 2 ? alpha[li.alpha] : "none");
  }
  pyt_slide_release(self);
  return r;
}

static PyObject *slide_properties(pyt_slide *self, PyObject *unused) {
  (void)unused;
  tessera_slide *s = use_slide(self);
  if (!s)
    return NULL;
  PyObject *d = PyDict_New();
  size_t n = tessera_property_count(s);
  for (size_t i = 0; d && i < n; i++) {
    const char *key = tessera_property_key(s, i);
    const char *value = tessera_property_value(s, key);
    PyObject *v = PyUnicode_DecodeUTF8(value, (Py_ssize_t)strlen(value), "replace");
    if (!v || PyDict_SetItemString(d, key, v) < 0)
      Py_CLEAR(d);
    Py_XDECREF(v);
  }
  pyt_slide_release(self);
  return d;
}

/* OpenSlide's table, made by the core (tessera_openslide_properties) with the GIL released:
 * it reads the smallest level's tiles for the quickhash. */
static PyObject *slide_openslide_properties(pyt_slide *self, PyObject *arg) {
  long version = PyLong_AsLong(arg);
  if (version == -1 && PyErr_Occurred())
    return NULL;
  if (version != 3 && version != 4) {
    PyErr_Format(PyExc_ValueError, "OpenSlide version %ld: 3 or 4 expected", version);
    return NULL;
  }
  tessera_slide *s = use_slide(self);
  if (!s)
    return NULL;
  tessera_property_table *t = NULL;
  tessera_status st;
  Py_BEGIN_ALLOW_THREADS
  st = tessera_openslide_properties(s, (int32_t)version, &t);
  Py_END_ALLOW_THREADS
  pyt_slide_release(self);
  if (st != TESSERA_OK)
    return pyt_raise(st);
  PyObject *d = PyDict_New();
  size_t n = tessera_property_table_count(t);
  for (size_t i = 0; d && i < n; i++) {
    const char *value = tessera_property_table_value(t, i);
    PyObject *v = PyUnicode_DecodeUTF8(value, (Py_ssize_t)strlen(value), "replace");
    if (!v || PyDict_SetItemString(d, tessera_property_table_key(t, i), v) < 0)
      Py_CLEAR(d);
    Py_XDECREF(v);
  }
  tessera_property_table_free(t);
  return d;
}

static PyObject *slide_associated_names(pyt_slide *self, PyObject *unused) {
  (void)unused;
  tessera_slide *s = use_slide(self);
  if (!s)
    return NULL;
  size_t n = tessera_associated_image_count(s);
  PyObject *list = PyList_New((Py_ssize_t)n);
  for (size_t i = 0; list && i < n; i++) {
    PyObject *name = PyUnicode_FromString(tessera_associated_image_name(s, i));
    if (!name) {
      Py_CLEAR(list);
      break;
    }
    PyList_SET_ITEM(list, (Py_ssize_t)i, name);
  }
  pyt_slide_release(self);
  return list;
}

static PyObject *slide_limits(pyt_slide *self, PyObject *unused) {
  (void)unused;
  tessera_slide *s = use_slide(self);
  if (!s)
    return NULL;
  tessera_open_options o = {.struct_size = sizeof o};
  tessera_status st = tessera_slide_limits(s, &o);
  pyt_slide_release(self);
  if (st != TESSERA_OK)
    return pyt_raise(st);
  return Py_BuildValue("{s:I,s:L,s:K,s:K,s:K}", "max_directories", o.max_directories,
                       "max_dimension", (long long)o.max_dimension, "max_tile_bytes",
                       (unsigned long long)o.max_tile_bytes, "max_decoded_tile_bytes",
                       (unsigned long long)o.max_decoded_tile_bytes, "max_read_bytes",
                       (unsigned long long)o.max_read_bytes);
}

static PyObject *slide_associated_dimensions(pyt_slide *self, PyObject *args) {
  const char *name;
  if (!PyArg_ParseTuple(args, "s:associated_dimensions", &name))
    return NULL;
  tessera_slide *s = use_slide(self);
  if (!s)
    return NULL;
  int64_t w, h;
  tessera_status st = tessera_associated_image_dimensions(s, name, &w, &h);
  pyt_slide_release(self);
  if (st != TESSERA_OK)
    return pyt_raise(st);
  return Py_BuildValue("(LL)", (long long)w, (long long)h);
}

static int channels_ok(int channels) {
  if (channels == 3 || channels == 4)
    return 1;
  PyErr_Format(PyExc_ValueError, "channels must be 3 (RGB) or 4 (RGBA), not %d", channels);
  return 0;
}

/* width x height x channels bytes, or -1 with an exception: over the slide's max_read_bytes
 * the read is refused here, as the library would refuse it, before anything is allocated. */
static Py_ssize_t image_bytes(const tessera_slide *slide, int64_t width, int64_t height,
                              int channels) {
  int64_t n;
  if (width < 1 || height < 1)
    return PyErr_Format(PyExc_ValueError, "size must be at least 1 x 1, not %lld x %lld",
                        (long long)width, (long long)height),
           -1;
  tessera_open_options lim = {.struct_size = sizeof lim};
  tessera_slide_limits(slide, &lim);
  if (__builtin_mul_overflow(width, height, &n) || __builtin_mul_overflow(n, channels, &n) ||
      (uint64_t)n > lim.max_read_bytes || n > PY_SSIZE_T_MAX)
    return PyErr_Format(pyt_Error,
                        "a %lldx%lld region of %d channels is over the limit of %llu bytes "
                        "for one read (max_read_bytes)",
                        (long long)width, (long long)height, channels,
                        (unsigned long long)lim.max_read_bytes),
           -1;
  return (Py_ssize_t)n;
}

/* Ends a read into buf (malloc'd, taken): gives the slide's use back and wraps the pixels,
 * or frees them and raises. */
static PyObject *read_done(pyt_slide *self, tessera_status st, uint8_t *buf, int64_t width,
                           int64_t height, int channels) {
  pyt_slide_release(self);
  if (st != TESSERA_OK) {
    free(buf);
    return pyt_raise(st);
  }
  Py_ssize_t shape[3] = {(Py_ssize_t)height, (Py_ssize_t)width, channels};
  return pyt_array_from_owned(buf, 3, shape);
}

static PyObject *slide_read_associated(pyt_slide *self, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"name", "channels", NULL};
  const char *name;
  int channels = 3;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "s|i:read_associated", kwlist, &name,
                                   &channels) ||
      !channels_ok(channels) || pyt_slide_acquire(self) < 0)
    return NULL;
  int64_t w = 0, h = 0;
  tessera_status st = tessera_associated_image_dimensions(self->slide, name, &w, &h);
  Py_ssize_t size = st == TESSERA_OK ? image_bytes(self->slide, w, h, channels) : 0;
  uint8_t *buf = size > 0 ? malloc((size_t)size) : NULL;
  if (st != TESSERA_OK || size < 0 || !buf) {
    pyt_slide_release(self);
    if (st != TESSERA_OK)
      return pyt_raise(st);
    return size < 0 ? NULL : PyErr_NoMemory();
  }
  tessera_read_options ro;
  tessera_read_options_init(&ro);
  ro.channels = channels;
  Py_BEGIN_ALLOW_THREADS
  st = tessera_read_associated_image(self->slide, name, &ro, buf, (size_t)size);
  Py_END_ALLOW_THREADS
  return read_done(self, st, buf, w, h, channels);
}

PyDoc_STRVAR(read_region_doc,
             "read_region(x, y, width, height, level=0, channels=3, fill=-1, num_workers=0)"
             " -> Array\n\n"
             "A (height, width, channels) uint8 Array of `level` whose top-left corner is "
             "(x, y) in level-0 pixels. fill -1 means the slide's background; num_workers > 1 "
             "decodes the region's tiles on that many threads. The GIL is released while "
             "reading.");

static PyObject *slide_read_region(pyt_slide *self, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"x",        "y",    "width",       "height", "level",
                           "channels", "fill", "num_workers", NULL};
  long long x, y, width, height;
  int level = 0, channels = 3, fill = -1, workers = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "LLLL|iiii:read_region", kwlist, &x, &y,
                                   &width, &height, &level, &channels, &fill, &workers) ||
      !channels_ok(channels))
    return NULL;
  if (fill < -1 || fill > 255)
    return PyErr_Format(PyExc_ValueError, "fill must be 0..255 (or -1: the background), not %d",
                        fill);
  if (workers < 0)
    return PyErr_Format(PyExc_ValueError, "num_workers must be >= 0, not %d", workers);
  if (pyt_slide_acquire(self) < 0)
    return NULL;
  Py_ssize_t size = image_bytes(self->slide, width, height, channels);
  if (size < 0) {
    pyt_slide_release(self);
    return NULL;
  }
  uint8_t *buf = malloc((size_t)size);
  if (!buf) {
    pyt_slide_release(self);
    return PyErr_NoMemory();
  }
  tessera_read_options ro;
  tessera_read_options_init(&ro);
  ro.channels = channels;
  ro.fill = fill;
  ro.num_workers = workers;
  tessera_status st;
  Py_BEGIN_ALLOW_THREADS
  st = tessera_read_region(self->slide, x, y, level, width, height, &ro, buf, (size_t)size);
  Py_END_ALLOW_THREADS
  return read_done(self, st, buf, width, height, channels);
}

/* OpenSlide's premultiplied ARGB to the RGBA openslide-python makes of it, in place: colour
 * divided by alpha, rounded down; a pixel of alpha 0 is left as OpenSlide's uint32 is in
 * memory, as openslide-python leaves it. */
static void argb_to_openslide_python(uint8_t *px, size_t n) {
  for (size_t i = 0; i < n; i++, px += 4) {
    uint32_t v;
    memcpy(&v, px, 4);
    uint32_t a = v >> 24, r = (v >> 16) & 255, g = (v >> 8) & 255, b = v & 255;
    if (a == 0) {
      px[0] = (uint8_t)b, px[1] = (uint8_t)g, px[2] = (uint8_t)r, px[3] = 0;
      continue;
    }
    if (a != 255) {
      r = 255 * r / a;
      g = 255 * g / a;
      b = 255 * b / a;
    }
    px[0] = (uint8_t)r, px[1] = (uint8_t)g, px[2] = (uint8_t)b, px[3] = (uint8_t)a;
  }
}

PyDoc_STRVAR(read_region_openslide_doc,
             "read_region_openslide(x, y, width, height, level, associated_alpha=False) -> Array"
             "\n\n"
             "A (height, width, 4) uint8 Array: the region of `level` whose top-left corner is "
             "(x, y) in level-0 pixels as openslide-python's read_region returns it over "
             "OpenSlide 3.4 (RGBA, colour divided by alpha again), by libtessera-openslide's "
             "code: where the origin falls between the level's pixels, resampled as OpenSlide's "
             "cairo does. Transparent outside the level. associated_alpha: the level's alpha is "
             "stored premultiplied (ExtraSamples 1). The GIL is released while reading.");

static PyObject *slide_read_region_openslide(pyt_slide *self, PyObject *args,
                                             PyObject *kwargs) {
  static char *kwlist[] = {"x", "y", "width", "height", "level", "associated_alpha", NULL};
  long long x, y, width, height;
  int level, associated = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "LLLLi|p:read_region_openslide", kwlist, &x,
                                   &y, &width, &height, &level, &associated) ||
      pyt_slide_acquire(self) < 0)
    return NULL;
  tessera_level_info li = {.struct_size = sizeof li};
  tessera_status st = tessera_level_info_get(self->slide, level, &li);
  if (st != TESSERA_OK) {
    pyt_slide_release(self);
    return pyt_raise(st);
  }
  Py_ssize_t size = image_bytes(self->slide, width, height, 4);
  uint8_t *buf = size > 0 ? calloc(1, (size_t)size) : NULL; /* OpenSlide paints on zero */
  if (!buf) {
    pyt_slide_release(self);
    return size < 0 ? NULL : PyErr_NoMemory();
  }
  struct tsr_os_grid grid = {li.width, li.height, (uint32_t)li.tile_width,
                             (uint32_t)li.tile_height, li.downsample};
  Py_BEGIN_ALLOW_THREADS
  st = tsr_os_read_region(self->slide, level, &grid, associated, x, y, width, height,
                          (uint32_t *)buf);
  if (st == TESSERA_OK)
    argb_to_openslide_python(buf, (size_t)width * (size_t)height);
  Py_END_ALLOW_THREADS
  return read_done(self, st, buf, width, height, 4);
}

PyDoc_STRVAR(read_region_scaled_doc,
             "read_region_scaled(x, y, width, height, level, scale_x, scale_y, channels=3, "
             "fill=-1, num_workers=0, fast=False) -> Array\n\n"
             "A (height, width, channels) uint8 Array whose pixels are each the exact area "
             "average of scale_x by scale_y pixels of `level` (tessera_read_region_scaled), "
             "starting at the level pixel (floor(x / downsample), floor(y / downsample)). The "
             "GIL is released while reading.");

static PyObject *slide_read_region_scaled(pyt_slide *self, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"x",        "y",       "width",    "height", "level",       "scale_x",
                           "scale_y",  "channels", "fill",    "num_workers", "fast", NULL};
  long long x, y, width, height;
  int level, channels = 3, fill = -1, workers = 0, fast = 0;
  double sx, sy;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "LLLLidd|iiip:read_region_scaled", kwlist, &x,
                                   &y, &width, &height, &level, &sx, &sy, &channels, &fill,
                                   &workers, &fast) ||
      !channels_ok(channels))
    return NULL;
  if (pyt_slide_acquire(self) < 0)
    return NULL;
  Py_ssize_t size = image_bytes(self->slide, width, height, channels);
  uint8_t *buf = size > 0 ? malloc((size_t)size) : NULL;
  if (!buf) {
    pyt_slide_release(self);
    return size < 0 ? NULL : PyErr_NoMemory();
  }
  tessera_read_options ro;
  tessera_read_options_init(&ro);
  ro.channels = channels;
  ro.fill = fill;
  ro.num_workers = workers;
  ro.fast_jpeg = fast;
  tessera_status st;
  Py_BEGIN_ALLOW_THREADS
  st = tessera_read_region_scaled(self->slide, x, y, level, sx, sy, width, height, &ro, buf,
                                  (size_t)size);
  Py_END_ALLOW_THREADS
  return read_done(self, st, buf, width, height, channels);
}

PyDoc_STRVAR(tissue_mask_doc,
             "tissue_mask(mpp=0.0, downsample=0.0, mode=0, background_tolerance=10, "
             "black_max=40, pen_min_saturation=110, pen_hue_min=70.0, pen_hue_max=250.0, "
             "min_threshold=12, min_tissue_area=10000.0, max_hole_area=40000.0, "
             "num_workers=0) -> (Array, dict)\n\n"
             "The slide's tissue mask (tessera_tissue_mask): a (height, width) uint8 Array, "
             "1 tissue and 0 not (the library's 255 and 0), and a dict: downsample, mpp, "
             "level, darkfield, threshold, "
             "tissue_fraction. The GIL is released while computing.");

static PyObject *slide_tissue_mask(pyt_slide *self, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"mpp",           "downsample",    "mode",
                           "background_tolerance", "black_max", "pen_min_saturation",
                           "pen_hue_min",   "pen_hue_max",   "min_threshold",
                           "min_tissue_area", "max_hole_area", "num_workers", NULL};
  tessera_tissue_options o;
  tessera_tissue_options_init(&o);
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$ddiiiiddiddi:tissue_mask", kwlist, &o.mpp,
                                   &o.downsample, &o.mode, &o.background_tolerance, &o.black_max,
                                   &o.pen_min_saturation, &o.pen_hue_min, &o.pen_hue_max,
                                   &o.min_threshold, &o.min_tissue_area, &o.max_hole_area,
                                   &o.num_workers))
    return NULL;
  if (pyt_slide_acquire(self) < 0)
    return NULL;
  tessera_mask *m = NULL;
  tessera_status st;
  Py_BEGIN_ALLOW_THREADS
  st = tessera_tissue_mask(self->slide, &o, &m);
  Py_END_ALLOW_THREADS
  pyt_slide_release(self);
  if (st != TESSERA_OK)
    return pyt_raise(st);
  /* The mask's bytes become the array's without a copy: the extension is built with the
   * library's sources, whose allocations are malloc's (src/alloc.c), as the array's are. */
  uint8_t *copy = m->data;
  m->data = NULL;
  /* 255 to 1, so that Python views the bytes as bools without another array. */
  size_t n = (size_t)m->width * (size_t)m->height, i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t x;
    memcpy(&x, copy + i, 8);
    x &= 0x0101010101010101u;
    memcpy(copy + i, &x, 8);
  }
  for (; i < n; i++)
    copy[i] &= 1;
  Py_ssize_t shape[2] = {(Py_ssize_t)m->height, (Py_ssize_t)m->width};
  PyObject *info = Py_BuildValue("{s:d,s:d,s:i,s:O,s:i,s:d}", "downsample", m->downsample, "mpp",
                                 m->mpp, "level", m->level, "darkfield",
                                 m->darkfield ? Py_True : Py_False, "threshold", m->threshold,
                                 "tissue_fraction", m->tissue_fraction);
  tessera_mask_free(m);
  PyObject *array = pyt_array_from_owned(copy, 2, shape);
  if (!info || !array) {
    Py_XDECREF(info);
    Py_XDECREF(array);
    return NULL;
  }
  return Py_BuildValue("(NN)", array, info);
}

PyDoc_STRVAR(patch_grid_doc,
             "patch_grid(width, height, mpp=0.0, level=0, stride_x=0, stride_y=0, "
             "min_tissue=0.0, **mask) -> (bytes, bytes, dict)\n\n"
             "tessera_patch_grid: the locations (int64 x, y pairs, level-0) and the tissue "
             "fractions (float32) as bytes, and a dict: level, read_width, read_height, "
             "width, height, scale, mpp, stride_x, stride_y, mask_downsample. mask: the "
             "keywords of tissue_mask. The GIL is released while computing.");

static PyObject *slide_patch_grid(pyt_slide *self, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"width",           "height",        "mpp",
                           "level",           "stride_x",      "stride_y",
                           "min_tissue",      "mask_mpp",      "mask_downsample",
                           "mode",            "background_tolerance", "black_max",
                           "pen_min_saturation", "pen_hue_min", "pen_hue_max",
                           "min_threshold",   "min_tissue_area", "max_hole_area",
                           "num_workers",     NULL};
  tessera_grid_options g;
  tessera_grid_options_init(&g);
  tessera_tissue_options o;
  tessera_tissue_options_init(&o);
  long long width, height, sx = 0, sy = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "LL|$diLLdddiiiiddiddi:patch_grid", kwlist,
                                   &width, &height, &g.mpp, &g.level, &sx, &sy, &g.min_tissue,
                                   &o.mpp, &o.downsample, &o.mode, &o.background_tolerance,
                                   &o.black_max, &o.pen_min_saturation, &o.pen_hue_min,
                                   &o.pen_hue_max, &o.min_threshold, &o.min_tissue_area,
                                   &o.max_hole_area, &o.num_workers))
    return NULL;
  g.width = width;
  g.height = height;
  g.stride_x = sx;
  g.stride_y = sy;
  g.tissue = &o;
  if (pyt_slide_acquire(self) < 0)
    return NULL;
  tessera_grid *grid = NULL;
  tessera_status st;
  Py_BEGIN_ALLOW_THREADS
  st = tessera_patch_grid(self->slide, &g, &grid);
  Py_END_ALLOW_THREADS
  pyt_slide_release(self);
  if (st != TESSERA_OK)
    return pyt_raise(st);
  PyObject *res = Py_BuildValue(
      "(y#y#{s:i,s:L,s:L,s:L,s:L,s:d,s:d,s:L,s:L,s:d})", (const char *)grid->locations,
      (Py_ssize_t)(grid->count * 2 * sizeof(int64_t)), (const char *)grid->tissue,
      (Py_ssize_t)(grid->count * sizeof(float)), "level", grid->level, "read_width",
      (long long)grid->read_width, "read_height", (long long)grid->read_height, "width",
      (long long)grid->width, "height", (long long)grid->height, "scale", grid->scale, "mpp",
      grid->mpp, "stride_x", (long long)grid->stride_x, "stride_y", (long long)grid->stride_y,
      "mask_downsample", grid->mask_downsample);
  tessera_grid_free(grid);
  return res;
}

PyDoc_STRVAR(level_for_mpp_doc,
             "level_for_mpp(mpp) -> (level, scale): tessera_level_for_mpp.");

static PyObject *slide_level_for_mpp(pyt_slide *self, PyObject *arg) {
  double mpp = PyFloat_AsDouble(arg);
  if (mpp == -1.0 && PyErr_Occurred())
    return NULL;
  if (pyt_slide_acquire(self) < 0)
    return NULL;
  int32_t level = 0;
  double scale = 1.0;
  tessera_status st = tessera_level_for_mpp(self->slide, mpp, &level, &scale);
  pyt_slide_release(self);
  if (st != TESSERA_OK)
    return pyt_raise(st);
  return Py_BuildValue("(id)", level, scale);
}

PyDoc_STRVAR(batches_doc,
             "batches(locations, width, height, level=0, batch_size=1, num_workers=0, "
             "drop_last=False, prefetch_factor=2, shuffle=False, seed=0, channels=3, fill=-1, "
             "device=0, device_id=0) -> BatchIter\n\n"
             "An iterator of batches of width x height patches of `level` at `locations` "
             "((n, 2) integers of any kind, an iterable of (x, y) pairs, or flat x0, y0, x1, "
             "y1, ...; converted to int64 once). Each batch is an Array (count, height, "
             "width, channels), or (height, width, channels) when batch_size is 1. device 1 (CUDA) makes "
             "batches in the memory of CUDA device device_id.");

static PyObject *slide_batches(pyt_slide *self, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"locations", "width",   "height",  "level",   "batch_size",
                           "num_workers", "drop_last", "prefetch_factor", "shuffle", "seed",
                           "channels",  "fill",    "device",  "device_id", NULL};
  PyObject *locs;
  long long width, height;
  int level = 0, drop_last = 0, shuffle = 0;
  unsigned long long seed = 0;
  tessera_batch_options bo;
  tessera_batch_options_init(&bo);
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OLL|iiipipKiiii:batches", kwlist, &locs,
                                   &width, &height, &level, &bo.batch_size, &bo.num_workers,
                                   &drop_last, &bo.prefetch_factor, &shuffle, &seed,
                                   &bo.channels, &bo.fill, &bo.device, &bo.device_id) ||
      !channels_ok(bo.channels))
    return NULL;
  bo.drop_last = drop_last;
  bo.shuffle = shuffle;
  bo.seed = seed;
  int64_t *xy = NULL;
  size_t n = 0;
  int single = 0; /* one (x, y) is a stream of one patch here */
  if (pyt_locations(locs, &xy, &n, &single) < 0)
    return NULL;
  PyObject *it = pyt_batches_new(self, xy, n, width, height, level, &bo);
  PyMem_Free(xy);
  return it;
}

static PyObject *slide_enter(PyObject *self, PyObject *unused) {
  (void)unused;
  return Py_NewRef(self);
}

static PyObject *slide_exit(pyt_slide *self, PyObject *args) {
  (void)args;
  return slide_close(self, NULL);
}

static PyObject *slide_repr(pyt_slide *self) {
  return PyUnicode_FromFormat("<%s %R%s>", Py_TYPE(self)->tp_name,
                              self->path ? self->path : Py_None,
                              (!self->slide || self->closing) ? " (closed)" : "");
}

static PyObject *slide_io_stats(pyt_slide *self, PyObject *unused) {
  (void)unused;
  tessera_slide *s = use_slide(self);
  if (!s)
    return NULL;
  tessera_io_stats io = {.struct_size = sizeof io};
  tessera_status st = tessera_slide_io_stats(s, &io);
  pyt_slide_release(self);
  if (st != TESSERA_OK)
    return pyt_raise(st);
  return Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:K}", "requests", (unsigned long long)io.requests,
                       "bytes", (unsigned long long)io.bytes, "retries",
                       (unsigned long long)io.retries, "cache_hits",
                       (unsigned long long)io.cache_hits, "remote_cache_held",
                       (unsigned long long)io.remote_cache_held, "remote_cache_budget",
                       (unsigned long long)io.remote_cache_budget);
}

static PyMethodDef slide_methods[] = {
    {"io_stats", (PyCFunction)slide_io_stats, METH_NOARGS,
     "io_stats() -> dict: what reading the slide's bytes has cost so far: requests (HTTP "
     "requests with retries, file-object reads, preads), bytes, retries, cache_hits (reads "
     "served by a remote slide's block cache), and, for the whole process, remote_cache_held "
     "and remote_cache_budget (bytes all open remote slides' block caches hold, and the "
     "budget they share)."},
    {"close", (PyCFunction)slide_close, METH_NOARGS,
     "close(): closes the slide once reads and iterators in flight are done with it. Arrays "
     "already read stay valid."},
    {"level_info", (PyCFunction)slide_level_info, METH_O,
     "level_info(level) -> dict: width, height, downsample, tile_width, tile_height, tiled, "
     "compression, compression_name, samples_per_pixel, alpha ('none', 'associated' or "
     "'unassociated': how the file stores its alpha; reads give straight alpha)."},
    {"properties", (PyCFunction)slide_properties, METH_NOARGS,
     "properties() -> dict of str: the slide's properties (tiff.*, tessera.*, vendor keys)."},
    {"openslide_properties", (PyCFunction)slide_openslide_properties, METH_O,
     "openslide_properties(version) -> dict of str: the properties as OpenSlide `version` (3: "
     "3.4, 4: 4.0) computes them (openslide.*, tiff.* as OpenSlide prints them, "
     "openslide.quickhash-1, vendor keys)."},
    {"associated_names", (PyCFunction)slide_associated_names, METH_NOARGS,
     "associated_names() -> list of str: label, macro, thumbnail, ..."},
    {"limits", (PyCFunction)slide_limits, METH_NOARGS,
     "limits() -> dict: the limits the slide was opened with (max_directories, "
     "max_dimension, max_tile_bytes, max_decoded_tile_bytes, max_read_bytes)."},
    {"associated_dimensions", (PyCFunction)slide_associated_dimensions, METH_VARARGS,
     "associated_dimensions(name) -> (width, height)"},
    {"read_associated", (PyCFunction)(void (*)(void))slide_read_associated,
     METH_VARARGS | METH_KEYWORDS,
     "read_associated(name, channels=3) -> Array (height, width, channels)"},
    {"read_region", (PyCFunction)(void (*)(void))slide_read_region, METH_VARARGS | METH_KEYWORDS,
     read_region_doc},
    {"read_region_openslide", (PyCFunction)(void (*)(void))slide_read_region_openslide,
     METH_VARARGS | METH_KEYWORDS, read_region_openslide_doc},
    {"batches", (PyCFunction)(void (*)(void))slide_batches, METH_VARARGS | METH_KEYWORDS,
     batches_doc},
    {"read_region_scaled", (PyCFunction)(void (*)(void))slide_read_region_scaled,
     METH_VARARGS | METH_KEYWORDS, read_region_scaled_doc},
    {"tissue_mask", (PyCFunction)(void (*)(void))slide_tissue_mask, METH_VARARGS | METH_KEYWORDS,
     tissue_mask_doc},
    {"patch_grid", (PyCFunction)(void (*)(void))slide_patch_grid, METH_VARARGS | METH_KEYWORDS,
     patch_grid_doc},
    {"level_for_mpp", (PyCFunction)slide_level_for_mpp, METH_O, level_for_mpp_doc},
    {"__enter__", slide_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)slide_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef slide_getset[] = {
    {"closed", (getter)get_closed, NULL, "True once close() was called.", NULL},
    {"path", (getter)get_path, NULL, "The path the slide was opened with.", NULL},
    {"level_count", (getter)get_level_count, NULL, "Number of pyramid levels.", NULL},
    {"vendor", (getter)get_vendor, NULL, "The vendor that wrote the slide.", NULL},
    {"background", (getter)get_background, NULL, "Fill value outside the image.", NULL},
    {"icc_profile", (getter)get_icc_profile, NULL,
     "The slide's ICC colour profile (bytes, as the file holds it), or None. Reads do not "
     "apply it.",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject pyt_SlideType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tessera._tessera.Slide",
    .tp_doc = "Slide(path): an open whole-slide image. Thread-safe: reads may run from many "
              "threads at once.",
    .tp_basicsize = sizeof(pyt_slide),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = slide_new,
    .tp_init = (initproc)slide_init,
    .tp_dealloc = (destructor)slide_dealloc,
    .tp_repr = (reprfunc)slide_repr,
    .tp_methods = slide_methods,
    .tp_getset = slide_getset,
    .tp_weaklistoffset = offsetof(pyt_slide, weakrefs),
};
