/* DLPack export of an Array (torch.from_dlpack, cupy.from_dlpack, np.from_dlpack). The
 * structs are declared here from the DLPack specification (dlpack.h, ABI version 0.x, the
 * unversioned "dltensor" capsule that every consumer accepts): only their layout matters. */
#include "pytessera.h"

enum { DL_CPU = 1, DL_CUDA = 2 }; /* DLDeviceType kDLCPU, kDLCUDA */
enum { DL_UINT = 1 }; /* DLDataTypeCode kDLUInt */

typedef struct {
  int32_t device_type; /* DLDeviceType, an int-sized enum */
  int32_t device_id;
} dl_device;

typedef struct {
  uint8_t code, bits;
  uint16_t lanes;
} dl_data_type;

typedef struct {
  void *data;
  dl_device device;
  int32_t ndim;
  dl_data_type dtype;
  int64_t *shape;
  int64_t *strides; /* in elements */
  uint64_t byte_offset;
} dl_tensor;

typedef struct dl_managed_tensor {
  dl_tensor dl_tensor;
  void *manager_ctx;
  void (*deleter)(struct dl_managed_tensor *self);
} dl_managed_tensor;

/* What one export owns: the tensor description and a reference to the array. */
typedef struct {
  dl_managed_tensor managed;
  int64_t shape[4], strides[4];
  PyObject *owner;
} export_ctx;

/* Called by the consumer, from any thread, when it is done with the memory. */
static void export_delete(dl_managed_tensor *m) {
  export_ctx *ctx = m->manager_ctx;
  if (Py_IsInitialized()) { /* a consumer may free after the interpreter has gone */
    PyGILState_STATE g = PyGILState_Ensure();
    Py_DECREF(ctx->owner);
    PyGILState_Release(g);
  }
  PyMem_RawFree(ctx);
}

/* A capsule dropped without being consumed still owns its export. */
static void capsule_destructor(PyObject *capsule) {
  if (!PyCapsule_IsValid(capsule, "dltensor"))
    return; /* consumed: renamed "used_dltensor", the consumer calls the deleter */
  dl_managed_tensor *m = PyCapsule_GetPointer(capsule, "dltensor");
  if (m && m->deleter)
    m->deleter(m);
}

PyObject *pyt_array_dlpack(PyObject *self, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"stream", "max_version", "dl_device", "copy", NULL};
  PyObject *stream = Py_None, *max_version = Py_None, *dl_dev = Py_None, *copy = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O$OOO:__dlpack__", kwlist, &stream,
                                   &max_version, &dl_dev, &copy))
    return NULL;
  pyt_array *a = (pyt_array *)self;
  const tessera_batch *cuda = pyt_array_cuda(a);
  int type = cuda ? DL_CUDA : DL_CPU, id = cuda ? cuda->device_id : 0;
  if (stream != Py_None && !cuda) {
    PyErr_SetString(PyExc_ValueError, "a CPU array takes no stream in __dlpack__");
    return NULL;
  }
  if (stream != Py_None) {
    /* The consumer's stream (DLPack: 1 the legacy default, 2 the per-thread default, -1 no
     * synchronization, else a cudaStream_t). The batch is complete already; the stream is
     * where the consumer's work reads it, which its release then waits for. */
    long long v = PyLong_AsLongLong(stream);
    if (v == -1 && PyErr_Occurred())
      return NULL;
    if (v == 0 || v < -1) {
      PyErr_Format(PyExc_ValueError, "__dlpack__: stream %lld is not a CUDA stream", v);
      return NULL;
    }
    if (v != -1)
      ((tessera_batch *)cuda)->consumer_stream = v == 1 ? NULL : (void *)(intptr_t)v;
  }
  if (copy == Py_True) {
    PyErr_SetString(PyExc_BufferError, "__dlpack__(copy=True) is not supported: the export "
                                       "shares the array's memory");
    return NULL;
  }
  if (dl_dev != Py_None) {
    int want_type = -1, want_id = -1;
    if (!PyArg_ParseTuple(dl_dev, "ii", &want_type, &want_id))
      return NULL;
    if (want_type != type || want_id != id) {
      PyErr_Format(PyExc_BufferError, "the array is on device (%d, %d); it cannot be exported "
                                      "to device (%d, %d) without a copy", type, id, want_type,
                   want_id);
      return NULL;
    }
  }
  export_ctx *ctx = PyMem_RawCalloc(1, sizeof *ctx);
  if (!ctx)
    return PyErr_NoMemory();
  for (int i = 0; i < a->ndim; i++) {
    ctx->shape[i] = a->shape[i];
    ctx->strides[i] = a->strides[i];
  }
  ctx->owner = Py_NewRef(self);
  ctx->managed.manager_ctx = ctx;
  ctx->managed.deleter = export_delete;
  ctx->managed.dl_tensor = (dl_tensor){
      .data = a->data,
      .device = {type, id},
      .ndim = a->ndim,
      .dtype = {DL_UINT, 8, 1},
      .shape = ctx->shape,
      .strides = ctx->strides,
  };
  PyObject *capsule = PyCapsule_New(&ctx->managed, "dltensor", capsule_destructor);
  if (!capsule) {
    Py_DECREF(self);
    PyMem_RawFree(ctx);
  }
  return capsule;
}

PyObject *pyt_array_dlpack_device(PyObject *self, PyObject *unused) {
  (void)unused;
  const tessera_batch *cuda = pyt_array_cuda((pyt_array *)self);
  return cuda ? Py_BuildValue("(ii)", DL_CUDA, (int)cuda->device_id)
              : Py_BuildValue("(ii)", DL_CPU, 0);
}
