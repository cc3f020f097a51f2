/* Builds a fuzz target as a plain program: every file named (or found in a directory named)
 * on the command line is passed to LLVMFuzzerTestOneInput once. The test command replays the
 * test data, tests/crashers and the corpora this way, in the plain and sanitized builds.
 *
 * Each input has FUZZ_REPLAY_TIMEOUT seconds (default 30): past that the program names the
 * input on stderr and aborts, so a hang fails the replay with the input that hung. With
 * FUZZ_REPLAY_VERBOSE set, each input's name is printed on stderr before it is replayed. */
#include <dirent.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Written by main's thread before alarm() is armed, read by the SIGALRM handler. */
static char current[4096];
static unsigned timeout_s = 30;
static int verbose;

static void write_all(const char *s) {
  size_t n = strlen(s);
  while (n > 0) {
    ssize_t k = write(STDERR_FILENO, s, n);
    if (k <= 0)
      return;
    s += k;
    n -= (size_t)k;
  }
}

/* Only async-signal-safe calls: write and abort. */
static void on_alarm(int sig) {
  (void)sig;
  write_all("replay: timeout: ");
  write_all(current);
  write_all(" ran longer than the time limit (FUZZ_REPLAY_TIMEOUT)\n");
  abort();
}

static int replay_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return 0;
  uint8_t *data = NULL;
  size_t size = 0, cap = 0, n;
  uint8_t chunk[65536];
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
    if (size + n > cap) {
      cap = (size + n) * 2;
      uint8_t *d = realloc(data, cap);
      if (!d)
        break;
      data = d;
    }
    memcpy(data + size, chunk, n);
    size += n;
  }
  fclose(f);
  snprintf(current, sizeof current, "%s", path);
  if (verbose) {
    write_all("replay: ");
    write_all(current);
    write_all("\n");
  }
  alarm(timeout_s);
  LLVMFuzzerTestOneInput(data ? data : (const uint8_t *)"", size);
  alarm(0);
  free(data);
  return 1;
}

static int replay(const char *path) {
  struct stat st;
  if (stat(path, &st) != 0)
    return 0;
  if (!S_ISDIR(st.st_mode))
    return replay_file(path);
  DIR *d = opendir(path);
  if (!d)
    return 0;
  int count = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.')
      continue;
    char sub[4096];
    snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
    count += replay(sub);
  }
  closedir(d);
  return count;
}

int main(int argc, char **argv) {
  const char *t = getenv("FUZZ_REPLAY_TIMEOUT");
  if (t && atoi(t) > 0)
    timeout_s = (unsigned)atoi(t);
  verbose = getenv("FUZZ_REPLAY_VERBOSE") != NULL;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_alarm;
  sigaction(SIGALRM, &sa, NULL);
  int count = 0;
  for (int i = 1; i < argc; i++)
    count += replay(argv[i]);
  printf("replayed %d inputs\n", count);
  return count > 0 ? 0 : 1;
}
