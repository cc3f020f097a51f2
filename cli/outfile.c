/* Output files appear whole or not at all: everything is written to a hidden temporary file
 * in the destination's directory (so the final rename stays on one file system and is
 * atomic), and renamed into place only after the last byte was written and closed. */
#include "cli.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The temporary file a signal handler must remove. Written only by the main thread while
 * armed == 0; the handler reads it only while armed == 1. */
static char pending_path[PATH_MAX];
static volatile sig_atomic_t armed;
static bool handlers_installed;

static void on_fatal_signal(int sig) {
  if (armed)
    unlink(pending_path);
  signal(sig, SIG_DFL);
  raise(sig);
}

static void install_handlers(void) {
  if (handlers_installed)
    return;
  static const int signals[] = {SIGINT, SIGTERM, SIGHUP};
  for (size_t i = 0; i < sizeof signals / sizeof signals[0]; i++) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_fatal_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(signals[i], &sa, NULL);
  }
  handlers_installed = true;
}

static void arm(const char *path) {
  armed = 0;
  if (strlen(path) < sizeof pending_path) {
    memcpy(pending_path, path, strlen(path) + 1);
    armed = 1;
  }
}

/* "dir/name" -> "dir/.name.XXXXXX"; "name" -> ".name.XXXXXX". */
static char *temp_template(const char *path) {
  const char *slash = strrchr(path, '/');
  size_t dir_len = slash ? (size_t)(slash - path) + 1 : 0;
  const char *base = path + dir_len;
  size_t size = dir_len + 1 + strlen(base) + sizeof ".XXXXXX";
  char *t = malloc(size);
  if (!t)
    return NULL;
  snprintf(t, size, "%.*s.%s.XXXXXX", (int)dir_len, path, base);
  return t;
}

static void outfile_free(cli_outfile *f) {
  free(f->final_path);
  free(f->temp_path);
  f->final_path = NULL;
  f->temp_path = NULL;
}

bool cli_outfile_open(cli_outfile *f, const char *path) {
  f->fd = -1;
  f->temp_path = NULL;
  f->final_path = NULL;
  size_t len = strlen(path);
  if (len == 0 || path[len - 1] == '/') {
    cli_error(path, "output path names a directory, not a file");
    return false;
  }
  struct stat st;
  if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
    cli_error(path, "output path is a directory");
    return false;
  }
  f->final_path = strdup(path);
  f->temp_path = temp_template(path);
  if (!f->final_path || !f->temp_path) {
    outfile_free(f);
    cli_error(path, "out of memory");
    return false;
  }
  install_handlers();
  f->fd = mkstemp(f->temp_path);
  if (f->fd < 0) {
    int e = errno;
    outfile_free(f);
    cli_error(path, "cannot create a temporary file beside it: %s", strerror(e));
    return false;
  }
  arm(f->temp_path);
  return true;
}

bool cli_outfile_commit(cli_outfile *f) {
  mode_t mask = umask(0);
  umask(mask);
  if (chmod(f->temp_path, 0666 & ~mask) != 0 || rename(f->temp_path, f->final_path) != 0) {
    int e = errno;
    cli_error(f->final_path, "cannot put the output in place: %s", strerror(e));
    cli_outfile_abort(f);
    return false;
  }
  armed = 0;
  outfile_free(f);
  return true;
}

void cli_outfile_abort(cli_outfile *f) {
  if (f->fd >= 0) {
    close(f->fd);
    f->fd = -1;
  }
  if (f->temp_path)
    unlink(f->temp_path);
  armed = 0;
  outfile_free(f);
}
