#include "gpu/cuda_loader.h"

#include <dlfcn.h>
#include <limits.h>
#include <link.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "pool.h"

/* Newest first: a machine with several toolkits gets the newest runtime, and nvJPEG is then
 * looked for with that runtime's major version first. */
static const char *const cudart_names[] = {"libcudart.so.13", "libcudart.so.12",
                                           "libcudart.so.11.0", "libcudart.so", NULL};
static const char *const nvjpeg_names[] = {"libnvjpeg.so.13", "libnvjpeg.so.12", "libnvjpeg.so.11",
                                           "libnvjpeg.so", NULL};

#if defined(__x86_64__)
#define TSR_CUDA_TARGET "x86_64-linux"
#define TSR_MULTIARCH "x86_64-linux-gnu"
#elif defined(__aarch64__)
#define TSR_CUDA_TARGET "sbsa-linux"
#define TSR_MULTIARCH "aarch64-linux-gnu"
#endif

/* Folders searched after the dynamic loader's own search: the toolkit's (which ldconfig often
 * does not know), the distributions', and the pip wheels' (nvidia-cuda-runtime-cu12 and
 * friends) beside the tessera Python package. Filled once by find_folders. */
#define MAX_WHEEL_FOLDERS 3
static const char *folders[8 + MAX_WHEEL_FOLDERS];
static char wheel_folders[MAX_WHEEL_FOLDERS][PATH_MAX];
static pthread_once_t folders_once = PTHREAD_ONCE_INIT;

static int is_directory(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* The site-packages folder holding this code when it is the Python extension
 * (site-packages/tessera/_tessera*.so), where pip puts NVIDIA's wheels under nvidia/. */
static size_t find_wheel_folders(void) {
  static const char anchor = 0;
  Dl_info info;
  char where[PATH_MAX];
  if (!dladdr(&anchor, &info) || !info.dli_fname || !realpath(info.dli_fname, where))
    return 0;
  for (int up = 0; up < 2; up++) {
    char *slash = strrchr(where, '/');
    if (!slash || slash == where)
      return 0;
    *slash = '\0';
  }
  static const char *const below[MAX_WHEEL_FOLDERS] = {"nvidia/cu13/lib", "nvidia/cuda_runtime/lib",
                                                       "nvidia/nvjpeg/lib"};
  size_t n = 0;
  for (size_t i = 0; i < MAX_WHEEL_FOLDERS; i++) {
    int len = snprintf(wheel_folders[n], PATH_MAX, "%s/%s", where, below[i]);
    if (len > 0 && len < PATH_MAX && is_directory(wheel_folders[n]))
      n++;
  }
  return n;
}

static void find_folders(void) {
  size_t n = 0;
  folders[n++] = "/usr/local/cuda/lib64";
#ifdef TSR_CUDA_TARGET
  folders[n++] = "/usr/local/cuda/targets/" TSR_CUDA_TARGET "/lib";
#endif
#ifdef TSR_MULTIARCH
  folders[n++] = "/usr/lib/" TSR_MULTIARCH;
#endif
  folders[n++] = "/usr/lib64";
  folders[n++] = "/opt/cuda/lib64"; /* Arch Linux's toolkit */
  size_t wheels = find_wheel_folders();
  for (size_t i = 0; i < wheels; i++)
    folders[n++] = wheel_folders[i];
  folders[n] = NULL;
}

void tsr_cuda_default_search(struct tsr_cuda_search *search) {
  pthread_once(&folders_once, find_folders);
  search->override = getenv("TESSERA_CUDA_PATH");
  search->folders = folders;
}

/* A message under construction; what does not fit is cut off. */
struct text {
  char s[TSR_MESSAGE_MAX];
  size_t len;
};

__attribute__((format(printf, 2, 3))) static void add(struct text *t, const char *fmt, ...) {
  if (t->len >= sizeof t->s - 1)
    return;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(t->s + t->len, sizeof t->s - t->len, fmt, ap);
  va_end(ap);
  if (n > 0)
    t->len += (size_t)n < sizeof t->s - t->len ? (size_t)n : sizeof t->s - 1 - t->len;
}

/* dlopen, keeping the loader's reason when the file is there but cannot be loaded (wrong
 * architecture, missing dependency): "not found" alone would hide it. */
static void *open_one(const char *file, struct text *failures, char *path, size_t path_size) {
  void *h = dlopen(file, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    const char *why = dlerror();
    if (why && !strstr(why, "No such file"))
      add(failures, "; %s", why);
    return NULL;
  }
  /* The file the loader settled on (a bare soname becomes a full path), for messages. */
  struct link_map *map = NULL;
  if (dlinfo(h, RTLD_DI_LINKMAP, &map) == 0 && map && map->l_name && map->l_name[0])
    file = map->l_name;
  snprintf(path, path_size, "%s", file);
  return h;
}

static void *open_in(const char *folder, size_t folder_len, const char *name, struct text *failures,
                     char *path, size_t path_size) {
  char file[PATH_MAX];
  int n = snprintf(file, sizeof file, "%.*s/%s", (int)folder_len, folder, name);
  if (n <= 0 || (size_t)n >= sizeof file || access(file, F_OK) != 0)
    return NULL;
  return open_one(file, failures, path, path_size);
}

/* Tries every name in one folder, then the next folder. `list` is one folder, or several
 * separated by ':' (empty pieces skipped). */
static void *open_in_folders(const char *list, const char *const *names, struct text *failures,
                             char *path, size_t path_size) {
  for (const char *p = list; *p;) {
    size_t len = strcspn(p, ":");
    for (size_t i = 0; len && names[i]; i++) {
      void *h = open_in(p, len, names[i], failures, path, path_size);
      if (h)
        return h;
    }
    p += len + (p[len] == ':');
  }
  return NULL;
}

void *tsr_cuda_open_library(const char *what, const char *const *names,
                            const struct tsr_cuda_search *search, char *path, size_t path_size) {
  struct text failures = {.len = 0};
  const char *override = search->override && search->override[0] ? search->override : NULL;
  void *h = NULL;
  if (override) {
    h = open_in_folders(override, names, &failures, path, path_size);
  } else {
    for (size_t i = 0; !h && names[i]; i++)
      h = open_one(names[i], &failures, path, path_size);
    for (size_t f = 0; !h && search->folders && search->folders[f]; f++)
      h = open_in_folders(search->folders[f], names, &failures, path, path_size);
  }
  if (h)
    return h;
  struct text m = {.len = 0};
  add(&m, "%s not found (tried ", what);
  for (size_t i = 0; names[i]; i++)
    add(&m, "%s%s", i ? ", " : "", names[i]);
  if (override) {
    add(&m, " in %s, the folders TESSERA_CUDA_PATH names)", override);
  } else {
    add(&m, " through the dynamic loader (LD_LIBRARY_PATH, the ld.so cache), then in");
    for (size_t f = 0; search->folders && search->folders[f]; f++)
      add(&m, "%s %s", f ? "," : "", search->folders[f]);
    add(&m, "; set TESSERA_CUDA_PATH to the folder that holds it)");
  }
  add(&m, "%s", failures.s);
  path[0] = '\0';
  tsr_error(TESSERA_E_UNSUPPORTED, "%s", m.s);
  return NULL;
}

/* Each looks up every function of its library; NULL when all are there, else the first name
 * missing. dlsym's void * becomes a function pointer as POSIX specifies. */
#define TSR_CUDA_RESOLVE(name)                                                                     \
  if (!(api->name = (tsr_##name##_fn)dlsym(h, #name)))                                             \
    return #name;

static const char *resolve_cudart(void *h, struct tsr_cudart *api) {
  TSR_CUDART_FUNCTIONS(TSR_CUDA_RESOLVE)
  return NULL;
}

static const char *resolve_nvjpeg(void *h, struct tsr_nvjpeg *api) {
  TSR_NVJPEG_FUNCTIONS(TSR_CUDA_RESOLVE)
  return NULL;
}

static tessera_status no_device(const struct tsr_cuda *c, cudaError_t error, int count) {
  char driver[64];
  if (c->driver_version > 0)
    snprintf(driver, sizeof driver, "the driver supports CUDA %d.%d", c->driver_version / 1000,
             c->driver_version % 1000 / 10);
  else
    snprintf(driver, sizeof driver, "no NVIDIA driver found");
  char runtime[64];
  snprintf(runtime, sizeof runtime, "CUDA runtime %d.%d", c->runtime_version / 1000,
           c->runtime_version % 1000 / 10);
  if (error == cudaSuccess)
    return tsr_error(TESSERA_E_UNSUPPORTED,
                     "no CUDA device: cudaGetDeviceCount found %d (%s from %s; %s)", count, runtime,
                     c->cudart_path, driver);
  const char *text = c->rt.cudaGetErrorString(error);
  return tsr_error(TESSERA_E_UNSUPPORTED,
                   "no CUDA device: %s (cudaGetDeviceCount returned error %d; %s from %s; %s)",
                   text ? text : "unknown error", (int)error, runtime, c->cudart_path, driver);
}

/* nvJPEG's major version follows the toolkit's: the one matching the runtime comes first. */
static void *open_nvjpeg(const struct tsr_cuda_search *search, struct tsr_cuda *c) {
  char matching[32];
  const char *names[8];
  size_t n = 0;
  snprintf(matching, sizeof matching, "libnvjpeg.so.%d", c->runtime_version / 1000);
  if (c->runtime_version >= 1000)
    names[n++] = matching;
  for (size_t i = 0; nvjpeg_names[i]; i++)
    if (strcmp(nvjpeg_names[i], matching) != 0)
      names[n++] = nvjpeg_names[i];
  names[n] = NULL;
  return tsr_cuda_open_library("nvJPEG", names, search, c->nvjpeg_path, sizeof c->nvjpeg_path);
}

static tessera_status load(struct tsr_cuda *c) {
  c->generation = tsr_pool_generation();
  struct tsr_cuda_search search;
  tsr_cuda_default_search(&search);
  void *rt = tsr_cuda_open_library("CUDA runtime", cudart_names, &search, c->cudart_path,
                                   sizeof c->cudart_path);
  if (!rt)
    return TESSERA_E_UNSUPPORTED;
  const char *missing = resolve_cudart(rt, &c->rt);
  if (missing) {
    dlclose(rt); /* nothing in it has run yet, so it can go */
    return tsr_error(TESSERA_E_UNSUPPORTED, "CUDA runtime %s lacks %s", c->cudart_path, missing);
  }
  /* From here the runtime stays loaded even on failure: once it has run it may have set up
   * exit handlers and threads that must not outlive its code. */
  if (c->rt.cudaRuntimeGetVersion(&c->runtime_version) != cudaSuccess)
    c->runtime_version = 0;
  if (c->rt.cudaDriverGetVersion(&c->driver_version) != cudaSuccess)
    c->driver_version = 0;
  cudaError_t error = c->rt.cudaGetDeviceCount(&c->device_count);
  if (error != cudaSuccess || c->device_count <= 0)
    return no_device(c, error, c->device_count);

  void *jpeg = open_nvjpeg(&search, c);
  if (!jpeg)
    return TESSERA_E_UNSUPPORTED;
  missing = resolve_nvjpeg(jpeg, &c->jpeg);
  if (missing) {
    dlclose(jpeg);
    return tsr_error(TESSERA_E_UNSUPPORTED, "nvJPEG %s lacks %s", c->nvjpeg_path, missing);
  }
  static const libraryPropertyType parts[3] = {MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL};
  for (int i = 0; i < 3; i++)
    if (c->jpeg.nvjpegGetProperty(parts[i], &c->nvjpeg_version[i]) != NVJPEG_STATUS_SUCCESS)
      c->nvjpeg_version[i] = -1;
  return TESSERA_OK;
}

/* Written inside cuda_once only; read-only once pthread_once has returned. */
static struct tsr_cuda cuda;
static tessera_status cuda_status;
static char cuda_message[TSR_MESSAGE_MAX];
static pthread_once_t cuda_once = PTHREAD_ONCE_INIT;

static void load_cuda(void) {
  cuda_status = load(&cuda);
  if (cuda_status != TESSERA_OK)
    snprintf(cuda_message, sizeof cuda_message, "%s", tessera_error_message());
}

tessera_status tsr_cuda_load(const struct tsr_cuda **out) {
  pthread_once(&cuda_once, load_cuda);
  if (cuda_status != TESSERA_OK) {
    *out = NULL;
    return tsr_error(cuda_status, "%s", cuda_message);
  }
  *out = &cuda;
  return TESSERA_OK;
}

TESSERA_API tessera_status tessera_cuda_status(void) {
  const struct tsr_cuda *c;
  return tsr_cuda_load(&c);
}
