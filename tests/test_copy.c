/* kaun_storage_copy: byte for byte, progress, cancellation, errors. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "unit.h"

typedef struct progress_log {
  int calls;
  uint64_t done, total, object_total;
  char uri[512];
  uint64_t cancel_at; /* cancel once this many bytes are done (0: never) */
} progress_log;

static int on_progress(const kaun_progress *p, void *user) {
  progress_log *log = user;
  log->calls++;
  log->done = p->done;
  log->total = p->total;
  log->object_total = p->object_total;
  snprintf(log->uri, sizeof log->uri, "%s", p->uri);
  return log->cancel_at && p->done >= log->cancel_at;
}

/* A fresh folder for one test, and a file name in it. */
static void fresh_dir(const char *name, char *dir, size_t n) {
  snprintf(dir, n, "%s", tmp_path(name));
  CU_ASSERT_FATAL(mkdir(dir, 0755) == 0);
}

static void in_dir(char *out, size_t n, const char *dir, const char *name) {
  snprintf(out, n, "%s/%s", dir, name);
}

static unsigned char *pattern(size_t n) {
  unsigned char *p = malloc(n ? n : 1);
  for (size_t i = 0; i < n; i++) p[i] = (unsigned char)((i * 2654435761u) >> 13);
  return p;
}

static bool same_file(const char *path, const void *want, size_t n) {
  size_t len;
  unsigned char *got = read_all(path, &len);
  bool same = got && len == n && memcmp(got, want, n) == 0;
  free(got);
  return same;
}

static bool temp_left(const char *dir) {
  DIR *d = opendir(dir);
  bool found = false;
  struct dirent *e;
  while (d && (e = readdir(d)))
    if (strstr(e->d_name, "kaun-tmp")) found = true;
  if (d) closedir(d);
  return found;
}

static void test_copy_bytes_and_progress(void) {
  kaun_error err = KAUN_ERROR_INIT;
  char dir[4096], src[4200], dst[4200], empty[4200];
  fresh_dir("copy-bytes", dir, sizeof dir);
  in_dir(src, sizeof src, dir, "src.bin");
  in_dir(dst, sizeof dst, dir, "dst.bin");
  in_dir(empty, sizeof empty, dir, "empty.bin");
  const size_t n = ((size_t)5 << 20) + 3; /* not a SafeTensors file: bytes are bytes */
  unsigned char *data = pattern(n);
  write_all(src, data, n);
  write_all(dst, "old", 3);
  progress_log log = {0};
  kaun_io *io;
  ASSERT_OK(kaun_io_new(on_progress, &log, &io, &err), err);
  ASSERT_OK(kaun_storage_copy(NULL, src, dst, io, &err), err);
  CU_ASSERT_TRUE(same_file(dst, data, n));
  CU_ASSERT_TRUE(log.calls >= 2); /* the start, and the end */
  CU_ASSERT_EQUAL(log.done, n);
  CU_ASSERT_EQUAL(log.total, n);
  CU_ASSERT_EQUAL(log.object_total, n);
  CU_ASSERT_STRING_EQUAL(log.uri, src);
  kaun_io_free(io);
  /* no io, an empty object, a context of our own */
  kaun_context *ctx;
  ASSERT_OK(kaun_context_new(NULL, &ctx, &err), err);
  write_all(empty, "", 0);
  ASSERT_OK(kaun_storage_copy(ctx, empty, dst, NULL, &err), err);
  CU_ASSERT_TRUE(same_file(dst, "", 0));
  ASSERT_OK(kaun_storage_copy(ctx, src, dst, NULL, &err), err);
  CU_ASSERT_TRUE(same_file(dst, data, n));
  kaun_context_free(ctx);
  CU_ASSERT_FALSE(temp_left(dir));
  free(data);
}

static void test_copy_cancel(void) {
  kaun_error err = KAUN_ERROR_INIT;
  char dir[4096], src[4200], dst[4200];
  fresh_dir("copy-cancel", dir, sizeof dir);
  in_dir(src, sizeof src, dir, "src.bin");
  in_dir(dst, sizeof dst, dir, "dst.bin");
  const size_t n = (size_t)1 << 20;
  unsigned char *data = pattern(n);
  write_all(src, data, n);
  write_all(dst, "old", 3);
  /* canceled once bytes have moved: the destination is left as it was */
  progress_log log = {.cancel_at = 1};
  kaun_io *io;
  ASSERT_OK(kaun_io_new(on_progress, &log, &io, &err), err);
  ASSERT_FAILS(kaun_storage_copy(NULL, src, dst, io, &err), err, KAUN_ECANCELED, "src.bin");
  CU_ASSERT_TRUE(kaun_io_canceled(io));
  CU_ASSERT_TRUE(same_file(dst, "old", 3));
  CU_ASSERT_FALSE(temp_left(dir));
  kaun_io_free(io);
  /* canceled before it starts */
  ASSERT_OK(kaun_io_new(NULL, NULL, &io, &err), err);
  kaun_io_cancel(io);
  ASSERT_FAILS(kaun_storage_copy(NULL, src, dst, io, &err), err, KAUN_ECANCELED, "src.bin");
  CU_ASSERT_TRUE(same_file(dst, "old", 3));
  CU_ASSERT_FALSE(temp_left(dir));
  kaun_io_free(io);
  free(data);
}

static void test_copy_errors(void) {
  kaun_error err = KAUN_ERROR_INIT;
  char dir[4096], src[4200], dst[4200], missing[4200], nodir[4200];
  fresh_dir("copy-errors", dir, sizeof dir);
  in_dir(src, sizeof src, dir, "src.bin");
  in_dir(dst, sizeof dst, dir, "dst.bin");
  in_dir(missing, sizeof missing, dir, "missing.bin");
  in_dir(nodir, sizeof nodir, dir, "no-such-dir/dst.bin");
  write_all(src, "abc", 3);
  write_all(dst, "old", 3);
  ASSERT_FAILS(kaun_storage_copy(NULL, missing, dst, NULL, &err), err, KAUN_ENOENT, "missing.bin");
  ASSERT_FAILS(kaun_storage_copy(NULL, dir, dst, NULL, &err), err, KAUN_EISDIR, "copy-errors");
  ASSERT_FAILS(kaun_storage_copy(NULL, src, nodir, NULL, &err), err, KAUN_ENOENT, "no-such-dir");
  ASSERT_FAILS(kaun_storage_copy(NULL, NULL, dst, NULL, &err), err, KAUN_EINVAL, "source");
  ASSERT_FAILS(kaun_storage_copy(NULL, src, "nosuch://x", NULL, &err), err, KAUN_EBACKEND,
               "nosuch");
  CU_ASSERT_TRUE(same_file(dst, "old", 3));
  CU_ASSERT_FALSE(temp_left(dir));
}

/* Parallel parts: never more than KAUN_HTTP_MAX_PARTS requests, whatever
 * size a header claims, and the parts cover the object exactly. */
static void test_parts_plan(void) {
  const uint64_t mib = (uint64_t)1 << 20;
  uint64_t part;
  size_t n;
  kaun__http_parts_plan(0, 0, &part, &n);
  CU_ASSERT_EQUAL(n, 0);
  kaun__http_parts_plan(1, 0, &part, &n);
  CU_ASSERT(part == 8 * mib && n == 1);
  kaun__http_parts_plan(100 * mib + 1, 8 * mib, &part, &n);
  CU_ASSERT(part == 8 * mib && n == 13);
  kaun__http_parts_plan(9999 * 8 * mib, 8 * mib, &part, &n); /* the most at that size */
  CU_ASSERT(part == 8 * mib && n == 9999);
  kaun__http_parts_plan(10000 * 8 * mib, 8 * mib, &part, &n); /* one more would pass it */
  CU_ASSERT(part == 9 * mib && n == 8889);
  const uint64_t sizes[] = {10000 * mib + 1, (uint64_t)16 << 40,          UINT64_MAX,
                            UINT64_MAX - 1,  ((uint64_t)1 << 63) + 12345, 123456789012345ull};
  const uint64_t asks[] = {1, 4096, mib, 8 * mib, 0};
  for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++)
    for (size_t k = 0; k < sizeof asks / sizeof *asks; k++) {
      kaun__http_parts_plan(sizes[i], asks[k], &part, &n);
      CU_ASSERT(n >= 1 && n <= KAUN_HTTP_MAX_PARTS);
      CU_ASSERT((sizes[i] - 1) / part == n - 1);        /* covered, and no empty part */
      CU_ASSERT(part >= (asks[k] ? asks[k] : 8 * mib)); /* never smaller than asked */
    }
}

void register_copy_tests(void) {
  static const unit_test tests[] = {
      {"a copy is byte for byte and reports its progress", test_copy_bytes_and_progress},
      {"a canceled copy leaves the destination as it was", test_copy_cancel},
      {"copy errors name the object at fault", test_copy_errors},
      {"parallel parts: at most KAUN_HTTP_MAX_PARTS, the object covered", test_parts_plan},
      {NULL, NULL}};
  add_suite("copy", tests);
}
