/* API contract: arguments, status codes, per-thread messages, options with struct_size. */
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "check.h"
#include "tessera.h"

static char slide_path[4096], aperio_path[4096];

static void test_version_and_status(void) {
  char macros[64];
  snprintf(macros, sizeof macros, "%d.%d.%d", TESSERA_VERSION_MAJOR, TESSERA_VERSION_MINOR,
           TESSERA_VERSION_PATCH);
  CHECK(strcmp(tessera_version(), TESSERA_VERSION_STRING) == 0 &&
            strcmp(tessera_version(), macros) == 0,
        "version %s, header %s (%s)", tessera_version(), TESSERA_VERSION_STRING, macros);
  for (int s = 0; s <= TESSERA_E_LIMIT; s++)
    CHECK(tessera_status_string((tessera_status)s)[0] != '\0', "status %d has no name", s);
  CHECK(strcmp(tessera_compression_name(7), "jpeg") == 0, "jpeg name");
  CHECK(tessera_compression_name(12345) == NULL, "unknown compression has a name");
}

static void test_open_errors(void) {
  tessera_slide *s = (tessera_slide *)0x1;
  CHECK(tessera_open("/nonexistent/slide.tif", &s) == TESSERA_E_IO, "missing file");
  CHECK(s == NULL, "out not cleared on failure");
  CHECK(strstr(tessera_error_message(), "No such file") != NULL, "message: %s",
        tessera_error_message());
  CHECK(tessera_open(NULL, &s) == TESSERA_E_ARGUMENT, "NULL path");
  CHECK(tessera_open(slide_path, NULL) == TESSERA_E_ARGUMENT, "NULL out");
  CHECK(tessera_open("/", &s) == TESSERA_E_IO, "directory");
  CHECK(strstr(tessera_error_message(), "directory") != NULL, "message: %s",
        tessera_error_message());
  CHECK(tessera_open("/proc/self/status", &s) != TESSERA_OK, "not a TIFF");
  tessera_close(NULL); /* must do nothing */
}

static void open_hung(int sig) {
  (void)sig;
  static const char text[] = "test_api: tessera_open of a FIFO hangs\n";
  if (write(2, text, sizeof text - 1) < 0)
    _exit(1);
  _exit(1);
}

/* A path that is no regular file is refused with a message saying what it is; a FIFO with no
 * writer must not block the open (it used to, for ever: open(2) ran before the check). */
static void expect_not_a_file(const char *path, const char *kind) {
  tessera_slide *s = (tessera_slide *)0x1;
  signal(SIGALRM, open_hung);
  alarm(60); /* a hang guard only */
  tessera_status st = tessera_open(path, &s);
  alarm(0);
  CHECK(st == TESSERA_E_IO && s == NULL, "%s: status %d", path, (int)st);
  CHECK(strstr(tessera_error_message(), kind) != NULL, "%s: message: %s", path,
        tessera_error_message());
}

static void test_open_special_files(void) {
  char dir[] = "/tmp/tessera-test-api-XXXXXX";
  CHECK(mkdtemp(dir) != NULL, "mkdtemp");
  char fifo[sizeof dir + 16], sock[sizeof dir + 16];
  snprintf(fifo, sizeof fifo, "%s/fifo", dir);
  snprintf(sock, sizeof sock, "%s/sock", dir);
  CHECK(mkfifo(fifo, 0600) == 0, "mkfifo");
  expect_not_a_file(fifo, "FIFO");
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  snprintf(addr.sun_path, sizeof addr.sun_path, "%s", sock);
  CHECK(fd >= 0 && bind(fd, (struct sockaddr *)&addr, sizeof addr) == 0, "bind a socket");
  expect_not_a_file(sock, "socket");
  close(fd);
  expect_not_a_file("/dev/zero", "character device");
  expect_not_a_file(dir, "directory");
  unlink(fifo);
  unlink(sock);
  rmdir(dir);
}

struct thread_result {
  const char *path;
  tessera_status status;
  char message[1024];
};

static void *open_in_thread(void *arg) {
  struct thread_result *r = arg;
  tessera_slide *s = NULL;
  r->status = tessera_open(r->path, &s);
  strncpy(r->message, tessera_error_message(), sizeof r->message - 1);
  tessera_close(s);
  return NULL;
}

static void test_messages_are_per_thread(void) {
  tessera_slide *s = NULL;
  CHECK(tessera_open("/nonexistent/a.tif", &s) == TESSERA_E_IO, "main fails");
  char mine[1024];
  strncpy(mine, tessera_error_message(), sizeof mine - 1);
  mine[sizeof mine - 1] = '\0';
  struct thread_result r = {.path = "/"};
  pthread_t t;
  pthread_create(&t, NULL, open_in_thread, &r);
  pthread_join(t, NULL);
  CHECK(r.status == TESSERA_E_IO && strstr(r.message, "directory"), "thread: %s", r.message);
  CHECK(strcmp(mine, tessera_error_message()) == 0, "main's message changed to %s",
        tessera_error_message());
}

static void test_read_arguments(void) {
  tessera_slide *s = NULL;
  if (tessera_open(slide_path, &s) != TESSERA_OK) {
    CHECK(0, "cannot open %s: %s", slide_path, tessera_error_message());
    return;
  }
  uint8_t buf[64 * 64 * 4];
  tessera_read_options o;
  tessera_read_options_init(&o);
  CHECK(o.channels == 3 && o.fill == -1 && o.stride == 0 && o.struct_size == sizeof o, "init");
  CHECK(tessera_read_region(s, 0, 0, -1, 8, 8, &o, buf, sizeof buf) == TESSERA_E_ARGUMENT,
        "level -1");
  CHECK(tessera_read_region(s, 0, 0, tessera_level_count(s), 8, 8, &o, buf, sizeof buf) ==
            TESSERA_E_ARGUMENT,
        "level past the end");
  CHECK(strstr(tessera_error_message(), "does not exist"), "%s", tessera_error_message());
  CHECK(tessera_read_region(s, 0, 0, 0, 0, 8, &o, buf, sizeof buf) == TESSERA_E_ARGUMENT, "w 0");
  CHECK(tessera_read_region(s, 0, 0, 0, 8, -1, &o, buf, sizeof buf) == TESSERA_E_ARGUMENT, "h -1");
  CHECK(tessera_read_region(s, 0, 0, 0, 64, 64, &o, buf, 100) == TESSERA_E_ARGUMENT, "small dst");
  CHECK(tessera_read_region(s, 0, 0, 0, 8, 8, &o, NULL, 0) == TESSERA_E_ARGUMENT, "NULL dst");
  CHECK(tessera_read_region(NULL, 0, 0, 0, 8, 8, &o, buf, sizeof buf) == TESSERA_E_ARGUMENT,
        "NULL slide");
  o.channels = 5;
  CHECK(tessera_read_region(s, 0, 0, 0, 8, 8, &o, buf, sizeof buf) == TESSERA_E_ARGUMENT,
        "channels 5");
  o.channels = 3;
  o.fill = 256;
  CHECK(tessera_read_region(s, 0, 0, 0, 8, 8, &o, buf, sizeof buf) == TESSERA_E_ARGUMENT,
        "fill 256");
  o.fill = -1;
  o.stride = 8 * 3 - 1;
  CHECK(tessera_read_region(s, 0, 0, 0, 8, 8, &o, buf, sizeof buf) == TESSERA_E_ARGUMENT, "stride");
  o.stride = 0;
  o.struct_size = 0;
  CHECK(tessera_read_region(s, 0, 0, 0, 8, 8, &o, buf, sizeof buf) == TESSERA_E_ARGUMENT,
        "no size");
  /* A caller built against an older, shorter options struct gets defaults for the rest. */
  o.struct_size = offsetof(tessera_read_options, fill);
  o.channels = 4;
  o.fill = 999;
  CHECK(tessera_read_region(s, 0, 0, 0, 8, 8, &o, buf, sizeof buf) == TESSERA_OK,
        "short struct: %s", tessera_error_message());
  CHECK(tessera_read_region(s, INT64_MAX, INT64_MIN, 0, 8, 8, NULL, buf, sizeof buf) == TESSERA_OK,
        "far outside: %s", tessera_error_message());
  CHECK(buf[0] == tessera_background(s), "far outside is background");
  tessera_level_info li = {.struct_size = sizeof li};
  CHECK(tessera_level_info_get(s, 0, &li) == TESSERA_OK && li.width > 0 && li.downsample == 1.0,
        "level info");
  CHECK(tessera_level_info_get(s, 99, &li) == TESSERA_E_ARGUMENT, "level info 99");
  CHECK(tessera_property_value(s, "tessera.vendor") != NULL, "vendor property");
  CHECK(tessera_property_value(s, "no.such.key") == NULL, "missing key");
  for (size_t i = 1; i < tessera_property_count(s); i++)
    CHECK(strcmp(tessera_property_key(s, i - 1), tessera_property_key(s, i)) < 0, "sorted keys");
  CHECK(tessera_property_key(s, tessera_property_count(s)) == NULL, "key past the end");
  tessera_close(s);
}

/* max_read_bytes refuses regions, levels and batch iterators whose output is larger, before
 * writing anything; tessera_slide_limits gives back what the slide was opened with. */
static void test_read_limit(void) {
  tessera_open_options oo;
  tessera_open_options_init(&oo);
  CHECK(oo.max_read_bytes == (uint64_t)4 << 30, "default max_read_bytes %llu",
        (unsigned long long)oo.max_read_bytes);
  oo.max_read_bytes = 64 * 64 * 3;
  tessera_slide *s = NULL;
  if (tessera_open_ex(slide_path, &oo, &s) != TESSERA_OK) {
    CHECK(0, "cannot open %s: %s", slide_path, tessera_error_message());
    return;
  }
  tessera_open_options got = {.struct_size = sizeof got};
  CHECK(tessera_slide_limits(s, &got) == TESSERA_OK && got.max_read_bytes == 64 * 64 * 3 &&
            got.max_dimension == oo.max_dimension && got.struct_size == sizeof got,
        "limits read back");
  size_t small = offsetof(tessera_open_options, max_read_bytes);
  tessera_open_options part = {.struct_size = small, .max_read_bytes = 7};
  CHECK(tessera_slide_limits(s, &part) == TESSERA_OK && part.max_read_bytes == 7 &&
            part.struct_size == small && part.max_dimension == oo.max_dimension,
        "an older, shorter struct is filled up to its size only");
  static uint8_t buf[65 * 64 * 4];
  memset(buf, 0xAB, sizeof buf);
  CHECK(tessera_read_region(s, 0, 0, 0, 64, 64, NULL, buf, sizeof buf) == TESSERA_OK,
        "64x64 RGB is at the limit: %s", tessera_error_message());
  memset(buf, 0xAB, sizeof buf);
  CHECK(tessera_read_region(s, 0, 0, 0, 65, 64, NULL, buf, sizeof buf) == TESSERA_E_LIMIT,
        "65x64 RGB is over");
  CHECK(strstr(tessera_error_message(), "max_read_bytes") != NULL, "message: %s",
        tessera_error_message());
  CHECK(buf[0] == 0xAB && buf[sizeof buf - 1] == 0xAB, "a refused read wrote");
  tessera_read_options ro;
  tessera_read_options_init(&ro);
  ro.channels = 4;
  CHECK(tessera_read_region(s, 0, 0, 0, 64, 64, &ro, buf, sizeof buf) == TESSERA_E_LIMIT,
        "64x64 RGBA is over");
  CHECK(tessera_read_level(s, 0, NULL, buf, sizeof buf) == TESSERA_E_LIMIT,
        "a whole level is over (before its destination is found too small)");
  int64_t xy[2 * 8] = {0};
  tessera_batch_options bo;
  tessera_batch_options_init(&bo);
  tessera_batch_iter *it = NULL;
  /* A batch buffer counts with the memory that scheduling its patches' tiles takes: one of
   * 60x60 (10800 bytes, and a few hundred to schedule) fits, 64x64 does not. */
  CHECK(tessera_batch_iter_create(s, xy, 8, 64, 64, 0, &bo, &it) == TESSERA_E_LIMIT && !it,
        "64x64 and its scheduling are over");
  CHECK(strstr(tessera_error_message(), "schedule") != NULL, "message: %s",
        tessera_error_message());
  CHECK(tessera_batch_iter_create(s, xy, 8, 60, 60, 0, &bo, &it) == TESSERA_OK,
        "one 60x60 buffer fits: %s", tessera_error_message());
  tessera_batch_iter_destroy(it);
  it = NULL;
  bo.batch_size = 2;
  CHECK(tessera_batch_iter_create(s, xy, 8, 60, 60, 0, &bo, &it) == TESSERA_E_LIMIT && !it,
        "batches of two are over");
  bo.batch_size = 1;
  bo.num_workers = 2;
  CHECK(tessera_batch_iter_create(s, xy, 8, 60, 60, 0, &bo, &it) == TESSERA_E_LIMIT && !it,
        "prefetched buffers count");
  CHECK(strstr(tessera_error_message(), "max_read_bytes") != NULL, "message: %s",
        tessera_error_message());
  bo.batch_size = 100;
  bo.num_workers = 0;
  CHECK(tessera_batch_iter_create(s, xy, 1, 60, 60, 0, &bo, &it) == TESSERA_OK,
        "a batch holds no more patches than there are locations: %s", tessera_error_message());
  tessera_batch_iter_destroy(it);
  CHECK(tessera_slide_limits(NULL, &got) == TESSERA_E_ARGUMENT, "NULL slide");
  tessera_close(s);
}

/* OpenSlide's table from the core: its arguments, and that the two versions differ where
 * OpenSlide 3.4 and 4.0 do (4.0 describes the Aperio file's associated images among its
 * properties). Its values are held against real OpenSlide by tests/test_openslide_c.py and
 * tests/test_python_openslide.py. */
static void test_openslide_properties(void) {
  tessera_slide *s = NULL;
  if (tessera_open(aperio_path, &s) != TESSERA_OK) {
    CHECK(0, "cannot open %s: %s", aperio_path, tessera_error_message());
    return;
  }
  tessera_property_table *t = (tessera_property_table *)1;
  CHECK(tessera_openslide_properties(s, 5, &t) == TESSERA_E_ARGUMENT && t == NULL, "version 5");
  CHECK(strstr(tessera_error_message(), "OpenSlide version 5"), "%s", tessera_error_message());
  CHECK(tessera_openslide_properties(NULL, 3, &t) == TESSERA_E_ARGUMENT, "NULL slide");
  CHECK(tessera_openslide_properties(s, 3, NULL) == TESSERA_E_ARGUMENT, "NULL out");
  tessera_property_table *t3 = NULL, *t4 = NULL;
  CHECK(tessera_openslide_properties(s, 3, &t3) == TESSERA_OK, "3: %s", tessera_error_message());
  CHECK(tessera_openslide_properties(s, 4, &t4) == TESSERA_OK, "4: %s", tessera_error_message());
  size_t n3 = tessera_property_table_count(t3), n4 = tessera_property_table_count(t4);
  bool vendor = false, hash = false, assoc3 = false, assoc4 = false, native = false, sorted = true;
  for (size_t i = 0; i < n3; i++) {
    const char *k = tessera_property_table_key(t3, i), *v = tessera_property_table_value(t3, i);
    vendor = vendor || (strcmp(k, "openslide.vendor") == 0 && strcmp(v, "aperio") == 0);
    hash = hash || (strcmp(k, "openslide.quickhash-1") == 0 && strlen(v) == 64);
    assoc3 = assoc3 || strcmp(k, "openslide.associated.label.width") == 0;
    native = native || strncmp(k, "tessera.", 8) == 0;
    sorted = sorted && (i == 0 || strcmp(tessera_property_table_key(t3, i - 1), k) < 0);
  }
  for (size_t i = 0; i < n4; i++)
    assoc4 = assoc4 || strcmp(tessera_property_table_key(t4, i), "openslide.associated.label.width") == 0;
  CHECK(vendor && hash && !native && sorted, "3.4's table: vendor %d hash %d native %d sorted %d",
        vendor, hash, native, sorted);
  CHECK(!assoc3 && assoc4, "openslide.associated.label.width: 3.4 %d, 4.0 %d", assoc3, assoc4);
  CHECK(tessera_property_table_key(t3, n3) == NULL && tessera_property_table_value(t3, n3) == NULL,
        "past the end");
  CHECK(tessera_property_table_count(NULL) == 0, "NULL table count");
  tessera_property_table_free(t3);
  tessera_property_table_free(t4);
  tessera_property_table_free(NULL);
  tessera_close(s);
}

int main(int argc, char **argv) {
  snprintf(slide_path, sizeof slide_path, "%s/generic-jpeg-ycbcr-128tiles.tiff",
           testdata_dir(argc, argv));
  snprintf(aperio_path, sizeof aperio_path, "%s/aperio-jpeg-CMU-1-Small-Region.svs",
           testdata_dir(argc, argv));
  test_version_and_status();
  test_open_errors();
  test_open_special_files();
  test_messages_are_per_thread();
  test_read_arguments();
  test_read_limit();
  test_openslide_properties();
  return check_finish("test_api");
}
