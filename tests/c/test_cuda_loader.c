/* The CUDA loader on a machine without a GPU: every failure path gives its documented message,
 * with stand-in libraries (fake_cuda.c, built beside this test) placed where the search looks:
 * no runtime, a runtime lacking a function, a file that is not a library, no device, no
 * nvJPEG, nvJPEG lacking a function; and the search itself (TESSERA_CUDA_PATH
 * replacing it, LD_LIBRARY_PATH, the usual folders). The library is searched once per
 * process, so each case runs this program again (`--probe`) in a child with its own
 * environment and reads back what it reported.
 *
 * Arguments: the fake libraries, in the order of `fakes` below. */
#include <errno.h>
#include <dlfcn.h>
#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "error.h"
#include "gpu/cuda_loader.h"
#include "tessera.h"

extern char **environ;

enum { CUDART, CUDART_PARTIAL, NVJPEG, NVJPEG_PARTIAL, FAKES };
static const char *fakes[FAKES];
static char scratch[] = "/tmp/tessera-cuda-XXXXXX";

/* ---- the child: report what the loader says ------------------------------------------- */

#define PROBE_THREADS 8

struct thread_answer {
  tessera_status status;
  char message[TSR_MESSAGE_MAX];
};

static void *ask_in_thread(void *arg) {
  struct thread_answer *a = arg;
  a->status = tessera_cuda_status();
  snprintf(a->message, sizeof a->message, "%s", tessera_error_message());
  return NULL;
}

/* Asks from PROBE_THREADS threads at once (all must get one answer), then reports on stdout:
 *   cuda STATUS / message / calls N /
 *   info DEVICES RUNTIME DRIVER NVJPEG_MAJOR NVJPEG_MINOR NVJPEG_PATCH / cudart path /
 *   nvjpeg path
 * calls is how often the runtime's cudaGetDeviceCount ran (-1: no runtime loaded). */
static int probe(void) {
  pthread_t threads[PROBE_THREADS];
  struct thread_answer answers[PROBE_THREADS];
  for (int i = 0; i < PROBE_THREADS; i++)
    if (pthread_create(&threads[i], NULL, ask_in_thread, &answers[i]) != 0)
      return 3;
  for (int i = 0; i < PROBE_THREADS; i++)
    pthread_join(threads[i], NULL);
  for (int i = 1; i < PROBE_THREADS; i++)
    if (answers[i].status != answers[0].status || strcmp(answers[i].message, answers[0].message))
      return 4; /* a thread got another answer */
  const struct tsr_cuda *cuda = NULL;
  tessera_status st = tsr_cuda_load(&cuda);
  if (st != answers[0].status ||
      (st != TESSERA_OK && strcmp(answers[0].message, tessera_error_message())))
    return 5; /* the main thread, asking later, got another answer */
  printf("cuda %d\n%s\n", (int)st, st == TESSERA_OK ? "" : tessera_error_message());
  if ((st == TESSERA_OK) != (cuda != NULL))
    return 6;
  int calls = -1;
  const char *cudart = cuda ? cuda->cudart_path : getenv("TESSERA_PROBE_CUDART");
  void *h = cudart ? dlopen(cudart, RTLD_NOW | RTLD_NOLOAD) : NULL;
  if (h) {
    int *counter = dlsym(h, "fake_device_count_calls");
    calls = counter ? *counter : -1;
    dlclose(h);
  }
  printf("calls %d\n", calls);
  if (cuda)
    printf("info %d %d %d %d %d %d\n%s\n%s\n", cuda->device_count, cuda->runtime_version,
           cuda->driver_version, cuda->nvjpeg_version[0], cuda->nvjpeg_version[1],
           cuda->nvjpeg_version[2], cuda->cudart_path, cuda->nvjpeg_path);
  return 0;
}

/* ---- the parent: set up a case, run the probe, read its report ------------------------ */

struct report {
  int ran; /* the probe ran and exited 0 */
  int cuda_status, calls;
  char cuda_message[TSR_MESSAGE_MAX];
  int devices, runtime, driver, nvjpeg[3];
  char cudart_path[TSR_CUDA_PATH_MAX], nvjpeg_path[TSR_CUDA_PATH_MAX];
};

static void read_line(FILE *f, char *buf, size_t size) {
  buf[0] = '\0';
  if (fgets(buf, (int)size, f))
    buf[strcspn(buf, "\n")] = '\0';
}

/* Runs the probe with the environment, minus anything CUDA-related of ours, plus `env`
 * (NULL-terminated "NAME=value" strings). */
static struct report run_probe(const char *const *env) {
  static const char *const drop[] = {"TESSERA_CUDA_PATH=", "LD_LIBRARY_PATH=", "TESSERA_FAKE_CUDA_",
                                     "TESSERA_PROBE_"};
  struct report r = {.cuda_status = -1};
  char *envp[512];
  size_t n = 0;
  for (char **e = environ; *e && n < 480; e++) {
    int keep = 1;
    for (size_t d = 0; d < sizeof drop / sizeof *drop; d++)
      keep &= strncmp(*e, drop[d], strlen(drop[d])) != 0;
    if (keep)
      envp[n++] = *e;
  }
  for (size_t i = 0; env[i]; i++)
    envp[n++] = (char *)env[i];
  envp[n] = NULL;

  int fds[2];
  if (pipe(fds) != 0)
    return r;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, fds[0]);
  posix_spawn_file_actions_addclose(&actions, fds[1]);
  char self[] = "/proc/self/exe", flag[] = "--probe";
  char *argv[] = {self, flag, NULL};
  pid_t pid;
  int spawned = posix_spawn(&pid, "/proc/self/exe", &actions, NULL, argv, envp);
  posix_spawn_file_actions_destroy(&actions);
  close(fds[1]);
  FILE *f = fdopen(fds[0], "r");
  if (spawned != 0 || !f) {
    CHECK(0, "cannot run the probe: %s", strerror(spawned ? spawned : errno));
    if (f)
      fclose(f);
    else
      close(fds[0]);
    return r;
  }
  char line[TSR_CUDA_PATH_MAX];
  read_line(f, line, sizeof line);
  sscanf(line, "cuda %d", &r.cuda_status);
  read_line(f, r.cuda_message, sizeof r.cuda_message);
  read_line(f, line, sizeof line);
  sscanf(line, "calls %d", &r.calls);
  read_line(f, line, sizeof line);
  sscanf(line, "info %d %d %d %d %d %d", &r.devices, &r.runtime, &r.driver, &r.nvjpeg[0],
         &r.nvjpeg[1], &r.nvjpeg[2]);
  read_line(f, r.cudart_path, sizeof r.cudart_path);
  read_line(f, r.nvjpeg_path, sizeof r.nvjpeg_path);
  fclose(f);
  int wstatus = 0;
  waitpid(pid, &wstatus, 0);
  r.ran = WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0;
  CHECK(r.ran, "the probe failed: wait status %#x (4: threads disagreed, 5: a later call did)",
        wstatus);
  return r;
}

/* A new empty folder under the scratch folder. */
static const char *folder(const char *name) {
  static char paths[32][512];
  static int used;
  char *p = paths[used++ % 32];
  snprintf(p, sizeof paths[0], "%s/%s", scratch, name);
  CHECK(mkdir(p, 0755) == 0, "mkdir %s: %s", p, strerror(errno));
  return p;
}

/* Puts fake library `which` into dir under the file name `as`. */
static void place(const char *dir, int which, const char *as) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, as);
  CHECK(symlink(fakes[which], path) == 0, "symlink %s: %s", path, strerror(errno));
}

static char env_buf[16][1200];
static int env_used;

/* "NAME=value" in a buffer that lives until the end of the test. */
static const char *setting(const char *name, const char *value) {
  char *p = env_buf[env_used++ % 16];
  int n = snprintf(p, sizeof env_buf[0], "%s=%s", name, value);
  CHECK(n > 0 && (size_t)n < sizeof env_buf[0], "setting %s is too long", name);
  return p;
}

#define HAS(text, part) CHECK(strstr((text), (part)) != NULL, "%s lacks \"%s\"", (text), (part))

static void test_no_runtime_in_the_override(void) {
  const char *empty = folder("empty");
  const char *env[] = {setting("TESSERA_CUDA_PATH", empty), NULL};
  struct report r = run_probe(env);
  char expected[1024];
  snprintf(expected, sizeof expected,
           "CUDA runtime not found (tried libcudart.so.13, libcudart.so.12, libcudart.so.11.0, "
           "libcudart.so in %s, the folders TESSERA_CUDA_PATH names)",
           empty);
  CHECK(r.cuda_status == TESSERA_E_UNSUPPORTED, "status %d", r.cuda_status);
  CHECK(strcmp(r.cuda_message, expected) == 0, "message: %s", r.cuda_message);
}

/* The real search (the dynamic loader, then the usual folders) finding nothing, shown with a
 * library name no machine has: the message names every place looked in. */
static void test_the_usual_search_finding_nothing(void) {
  unsetenv("TESSERA_CUDA_PATH");
  struct tsr_cuda_search search;
  tsr_cuda_default_search(&search);
  CHECK(search.override == NULL, "override %s", search.override);
  static const char *const names[] = {"libtessera-absent.so.7", "libtessera-absent.so", NULL};
  char path[TSR_CUDA_PATH_MAX] = "untouched";
  void *h = tsr_cuda_open_library("Test library", names, &search, path, sizeof path);
  CHECK(h == NULL, "found an absent library at %s", path);
  CHECK(path[0] == '\0', "path %s", path);
  const char *m = tessera_error_message();
  HAS(m, "Test library not found (tried libtessera-absent.so.7, libtessera-absent.so through "
         "the dynamic loader (LD_LIBRARY_PATH, the ld.so cache), then in /usr/local/cuda/lib64,");
#ifdef __x86_64__
  HAS(m, "/usr/local/cuda/targets/x86_64-linux/lib, /usr/lib/x86_64-linux-gnu, /usr/lib64, "
         "/opt/cuda/lib64");
#endif
  HAS(m, "; set TESSERA_CUDA_PATH to the folder that holds it)");

  /* the same names in a folder given as the override are found there */
  const char *dir = folder("named");
  place(dir, CUDART, "libtessera-absent.so");
  search.override = dir;
  h = tsr_cuda_open_library("Test library", names, &search, path, sizeof path);
  char expected[1024];
  snprintf(expected, sizeof expected, "%s/libtessera-absent.so", dir);
  CHECK(h != NULL && strcmp(path, expected) == 0, "path %s", path);
  if (h)
    dlclose(h);
}

static void test_runtime_lacking_a_function(void) {
  /* the first runtime found is the one used: a complete one later in the order does not
   * stand in for it (nor does the machine's own, which the override hides) */
  const char *dir = folder("partial");
  place(dir, CUDART_PARTIAL, "libcudart.so.12");
  place(dir, CUDART, "libcudart.so.11.0");
  const char *env[] = {setting("TESSERA_CUDA_PATH", dir), setting("TESSERA_FAKE_CUDA_DEVICES", "1"),
                       NULL};
  struct report r = run_probe(env);
  char expected[1024];
  snprintf(expected, sizeof expected, "CUDA runtime %s/libcudart.so.12 lacks cudaGetDeviceCount",
           dir);
  CHECK(r.cuda_status == TESSERA_E_UNSUPPORTED, "status %d", r.cuda_status);
  CHECK(strcmp(r.cuda_message, expected) == 0, "message: %s", r.cuda_message);
}

static void test_a_file_that_is_not_a_library(void) {
  const char *dir = folder("garbage");
  char path[1024];
  snprintf(path, sizeof path, "%s/libcudart.so.13", dir);
  FILE *f = fopen(path, "w");
  CHECK(f != NULL, "cannot write %s", path);
  if (!f)
    return;
  for (int i = 0; i < 16; i++)
    fputs("not an ELF file at all\n", f);
  fclose(f);
  const char *env[] = {setting("TESSERA_CUDA_PATH", dir), NULL};
  struct report r = run_probe(env);
  CHECK(r.cuda_status == TESSERA_E_UNSUPPORTED, "status %d", r.cuda_status);
  HAS(r.cuda_message, "CUDA runtime not found (tried libcudart.so.13,");
  char reason[1100];
  snprintf(reason, sizeof reason, "; %s: invalid ELF header", path);
  HAS(r.cuda_message, reason);
}

static void test_no_device(void) {
  const char *dir = folder("nodevice");
  place(dir, CUDART, "libcudart.so.12");
  place(dir, NVJPEG, "libnvjpeg.so.12");
  char cudart[1024];
  snprintf(cudart, sizeof cudart, "%s/libcudart.so.12", dir);
  const char *env[] = {setting("TESSERA_CUDA_PATH", dir),
                       setting("TESSERA_FAKE_CUDA_DEVICES", "-100"),
                       setting("TESSERA_PROBE_CUDART", cudart), NULL};
  struct report r = run_probe(env);
  char expected[1024];
  snprintf(expected, sizeof expected,
           "no CUDA device: no CUDA-capable device is detected (cudaGetDeviceCount returned "
           "error 100; CUDA runtime 12.4 from %s/libcudart.so.12; no NVIDIA driver found)",
           dir);
  CHECK(r.cuda_status == TESSERA_E_UNSUPPORTED, "status %d", r.cuda_status);
  CHECK(strcmp(r.cuda_message, expected) == 0, "message: %s", r.cuda_message);
  CHECK(r.calls == 1, "cudaGetDeviceCount ran %d times for %d threads", r.calls, PROBE_THREADS);

  /* a driver too old for the runtime, and a runtime that finds no device without an error */
  const char *env2[] = {setting("TESSERA_CUDA_PATH", dir),
                        setting("TESSERA_FAKE_CUDA_DEVICES", "-35"),
                        setting("TESSERA_FAKE_CUDA_DRIVER", "11080"), NULL};
  r = run_probe(env2);
  HAS(r.cuda_message, "no CUDA device: CUDA driver version is insufficient for CUDA runtime "
                      "version (cudaGetDeviceCount returned error 35; CUDA runtime 12.4 from ");
  HAS(r.cuda_message, "; the driver supports CUDA 11.8)");
  const char *env3[] = {setting("TESSERA_CUDA_PATH", dir),
                        setting("TESSERA_FAKE_CUDA_DEVICES", "0"), NULL};
  r = run_probe(env3);
  HAS(r.cuda_message, "no CUDA device: cudaGetDeviceCount found 0 (CUDA runtime 12.4 from ");
}

static void test_no_nvjpeg(void) {
  const char *dir = folder("nonvjpeg");
  place(dir, CUDART, "libcudart.so.12");
  const char *env[] = {setting("TESSERA_CUDA_PATH", dir), setting("TESSERA_FAKE_CUDA_DEVICES", "1"),
                       NULL};
  struct report r = run_probe(env);
  char expected[1024];
  /* the runtime's major version first */
  snprintf(expected, sizeof expected,
           "nvJPEG not found (tried libnvjpeg.so.12, libnvjpeg.so.13, libnvjpeg.so.11, "
           "libnvjpeg.so in %s, the folders TESSERA_CUDA_PATH names)",
           dir);
  CHECK(r.cuda_status == TESSERA_E_UNSUPPORTED, "status %d", r.cuda_status);
  CHECK(strcmp(r.cuda_message, expected) == 0, "message: %s", r.cuda_message);

  const char *partial = folder("partialnvjpeg");
  place(partial, CUDART, "libcudart.so.12");
  place(partial, NVJPEG_PARTIAL, "libnvjpeg.so.12");
  const char *env2[] = {setting("TESSERA_CUDA_PATH", partial),
                        setting("TESSERA_FAKE_CUDA_DEVICES", "1"), NULL};
  r = run_probe(env2);
  snprintf(expected, sizeof expected, "nvJPEG %s/libnvjpeg.so.12 lacks nvjpegDecodeBatched",
           partial);
  CHECK(strcmp(r.cuda_message, expected) == 0, "message: %s", r.cuda_message);
}

static void test_everything_there(void) {
  /* two folders in the override, the first empty */
  const char *empty = folder("first");
  const char *dir = folder("complete");
  place(dir, CUDART, "libcudart.so.12");
  place(dir, NVJPEG, "libnvjpeg.so.12");
  char list[1200];
  snprintf(list, sizeof list, "%s::%s", empty, dir);
  const char *env[] = {setting("TESSERA_CUDA_PATH", list),
                       setting("TESSERA_FAKE_CUDA_DEVICES", "2"),
                       setting("TESSERA_FAKE_CUDA_DRIVER", "12080"), NULL};
  struct report r = run_probe(env);
  char cudart[1024], nvjpeg[1024];
  snprintf(cudart, sizeof cudart, "%s/libcudart.so.12", dir);
  snprintf(nvjpeg, sizeof nvjpeg, "%s/libnvjpeg.so.12", dir);
  CHECK(r.cuda_status == TESSERA_OK, "status %d: %s", r.cuda_status, r.cuda_message);
  CHECK(r.devices == 2 && r.runtime == 12040 && r.driver == 12080,
        "devices %d runtime %d driver %d", r.devices, r.runtime, r.driver);
  CHECK(r.nvjpeg[0] == 12 && r.nvjpeg[1] == 4 && r.nvjpeg[2] == 0, "nvJPEG %d.%d.%d", r.nvjpeg[0],
        r.nvjpeg[1], r.nvjpeg[2]);
  CHECK(strcmp(r.cudart_path, cudart) == 0, "runtime from %s", r.cudart_path);
  CHECK(strcmp(r.nvjpeg_path, nvjpeg) == 0, "nvJPEG from %s", r.nvjpeg_path);
  CHECK(r.calls == 1, "cudaGetDeviceCount ran %d times", r.calls);
}

/* Without TESSERA_CUDA_PATH the runtime is looked for by soname first, so LD_LIBRARY_PATH
 * (ahead of the ld.so cache and the machine's own toolkit) decides. */
static void test_ld_library_path(void) {
  const char *dir = folder("ldpath");
  place(dir, CUDART, "libcudart.so.13");
  const char *env[] = {setting("LD_LIBRARY_PATH", dir),
                       setting("TESSERA_FAKE_CUDA_DEVICES", "-100"), NULL};
  struct report r = run_probe(env);
  char expected[1024];
  snprintf(expected, sizeof expected,
           "(cudaGetDeviceCount returned error 100; CUDA runtime 12.4 "
           "from %s/libcudart.so.13; no NVIDIA driver found)",
           dir);
  CHECK(r.cuda_status == TESSERA_E_UNSUPPORTED, "status %d", r.cuda_status);
  HAS(r.cuda_message, "no CUDA device: no CUDA-capable device is detected ");
  HAS(r.cuda_message, expected);
}

/* What this machine's own search says. The Python test (test_cuda_loader.py) checks it
 * against what is installed; here it must at least be one of the documented answers, the
 * same from every thread. */
static void test_this_machine(void) {
  const char *env[] = {NULL};
  struct report r = run_probe(env);
  printf("this machine: %s\n", r.cuda_status == TESSERA_OK ? "CUDA is available" : r.cuda_message);
  static const char *const answers[] = {"CUDA runtime not found (tried ",
                                        "no CUDA device: ", "nvJPEG not found (tried ",
                                        "CUDA runtime /", "nvJPEG /"};
  int known = r.cuda_status == TESSERA_OK && r.cuda_message[0] == '\0';
  for (size_t i = 0; i < sizeof answers / sizeof *answers; i++)
    known |= r.cuda_status == TESSERA_E_UNSUPPORTED &&
             strncmp(r.cuda_message, answers[i], strlen(answers[i])) == 0;
  CHECK(known, "status %d: %s", r.cuda_status, r.cuda_message);
}

static int remove_tree(const char *dir) {
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  return system(cmd);
}

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "--probe") == 0)
    return probe();
  if (argc != 1 + FAKES) {
    fprintf(stderr, "usage: %s CUDART CUDART_PARTIAL NVJPEG NVJPEG_PARTIAL (the fake libraries)\n",
            argv[0]);
    return 2;
  }
  for (int i = 0; i < FAKES; i++) {
    fakes[i] = realpath(argv[1 + i], NULL);
    if (!fakes[i]) {
      fprintf(stderr, "%s: %s\n", argv[1 + i], strerror(errno));
      return 2;
    }
  }
  if (!mkdtemp(scratch)) {
    perror("mkdtemp");
    return 2;
  }
  test_no_runtime_in_the_override();
  test_the_usual_search_finding_nothing();
  test_runtime_lacking_a_function();
  test_a_file_that_is_not_a_library();
  test_no_device();
  test_no_nvjpeg();
  test_everything_there();
  test_ld_library_path();
  test_this_machine();
  CHECK(remove_tree(scratch) == 0, "cannot remove %s", scratch);
  for (int i = 0; i < FAKES; i++)
    free((void *)fakes[i]);
  return check_finish("test_cuda_loader");
}
