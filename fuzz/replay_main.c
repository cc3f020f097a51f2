/* Builds a fuzz target as a plain program: every file named (or found in a directory named)
 * on the command line is passed to LLVMFuzzerTestOneInput once. The test command replays the
 * test data and tests/crashers this way, in the plain and sanitized builds. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

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
  LLVMFuzzerTestOneInput(data ? data : (const uint8_t *)"", size);
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
  int count = 0;
  for (int i = 1; i < argc; i++)
    count += replay(argv[i]);
  printf("replayed %d inputs\n", count);
  return count > 0 ? 0 : 1;
}
