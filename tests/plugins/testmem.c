/* A real test plugin: serves the files of a directory (option `dir`),
 * without map, so the core's read path is exercised; counts its
 * operation calls and fails the Nth one when `fail_at` is N, so tests can
 * check that every failure propagates with its message and leaks nothing. */
#include <kaun/plugin.h>

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef TESTMEM_NAME
#define TESTMEM_NAME "testmem"
#endif

typedef struct backend {
  char dir[2048];
  long fail_at;
  atomic_long calls;
} backend;

typedef struct object {
  backend *b;
  int fd;
  uint64_t size;
  char path[4096];
} object;

static const kaun_option_spec options[] = {
    {"dir", KAUN_OPTION_STRING, NULL, 1, 0, "the directory whose files are served"},
    {"fail_at", KAUN_OPTION_INT, "0", 0, 0, "fail the Nth operation call (0: never)"},
    {"token", KAUN_OPTION_STRING, NULL, 0, 1, "a secret, to test masking"},
    {"create_log", KAUN_OPTION_STRING, NULL, 0, 0, "a file create appends one line to"},
    {"create_delay_ms", KAUN_OPTION_INT, "0", 0, 0, "how long create takes (a slow backend)"},
    {"create_open", KAUN_OPTION_STRING, NULL, 0, 0,
     "a URI create opens (a backend that needs another to start: cycles)"},
    {NULL, 0, NULL, 0, 0, NULL}};

static int injected(backend *b, const char *what, const char *path, kaun_error *err) {
  long n = atomic_fetch_add(&b->calls, 1) + 1;
  if (b->fail_at && n == b->fail_at)
    return kaun_error_set(err, KAUN_EIO, "testmem: injected failure on call %ld (%s of '%s')", n,
                          what, path);
  return KAUN_OK;
}

static int t_create(kaun_context *ctx, const char *instance, const kaun_options *opts, void **out,
                    kaun_error *err) {
  (void)instance;
  const char *token = kaun_options_get(opts, "token");
  if (token && strcmp(token, "bad") == 0)
    return kaun_error_set(err, KAUN_ECONFIG, "testmem: the token was refused");
  const char *log = kaun_options_get(opts, "create_log");
  if (log) {
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd >= 0) {
      if (write(fd, "create\n", 7) != 7) { /* counted by the test: a short write shows */
      }
      close(fd);
    }
  }
  long delay = (long)kaun_options_get_int(opts, "create_delay_ms", 0);
  if (delay > 0) usleep((useconds_t)delay * 1000);
  const char *needs = kaun_options_get(opts, "create_open");
  if (needs) {
    kaun_object *o;
    int rc = kaun_object_open(ctx, needs, &o, err);
    if (rc) return rc;
    kaun_object_close(o);
  }
  backend *b = calloc(1, sizeof *b);
  if (!b) return kaun_error_set(err, KAUN_ENOMEM, "testmem: out of memory");
  snprintf(b->dir, sizeof b->dir, "%s", kaun_options_get(opts, "dir"));
  b->fail_at = (long)kaun_options_get_int(opts, "fail_at", 0);
  *out = b;
  return KAUN_OK;
}

static void t_destroy(void *b) { free(b); }

static int t_open(void *be, const char *path, kaun_object *inner, void **out, kaun_error *err) {
  (void)inner;
  backend *b = be;
  int rc = injected(b, "open", path, err);
  if (rc) return rc;
  object *o = calloc(1, sizeof *o);
  if (!o) return kaun_error_set(err, KAUN_ENOMEM, "testmem: out of memory");
  snprintf(o->path, sizeof o->path, "%s/%s", b->dir, path);
  o->b = b;
  o->fd = open(o->path, O_RDONLY);
  struct stat sb;
  if (o->fd < 0 || fstat(o->fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
    int dir = o->fd >= 0 && S_ISDIR(sb.st_mode);
    if (o->fd >= 0) close(o->fd);
    rc = kaun_error_set(err, dir ? KAUN_EISDIR : KAUN_ENOENT, "testmem://%s: %s", path,
                        dir ? "a folder" : "no such object");
    free(o);
    return rc;
  }
  o->size = (uint64_t)sb.st_size;
  *out = o;
  return KAUN_OK;
}

static void t_close(void *obj) {
  object *o = obj;
  close(o->fd);
  free(o);
}

static int t_stat(void *obj, kaun_stat *out, kaun_error *err) {
  object *o = obj;
  int rc = injected(o->b, "stat", o->path, err);
  if (rc) return rc;
  out->size = o->size;
  snprintf(out->etag, sizeof out->etag, "testmem-%llu", (unsigned long long)o->size);
  return KAUN_OK;
}

static int t_read(void *obj, uint64_t off, void *dst, size_t len, kaun_error *err) {
  object *o = obj;
  int rc = injected(o->b, "read", o->path, err);
  if (rc) return rc;
  if (off > o->size || len > o->size - off)
    return kaun_error_set(err, KAUN_EIO, "testmem: read past the end of '%s'", o->path);
  ssize_t n = pread(o->fd, dst, len, (off_t)off);
  if (n < 0 || (size_t)n != len)
    return kaun_error_set(err, KAUN_EIO, "testmem: short read of '%s'", o->path);
  return KAUN_OK;
}

static int t_put(void *be, const char *path, const kaun_put_source *src, kaun_error *err) {
  backend *b = be;
  int rc = injected(b, "put", path, err);
  if (rc) return rc;
  char full[4096];
  snprintf(full, sizeof full, "%s/%s", b->dir, path);
  return kaun_file_put_atomic(full, src, err);
}

static const kaun_plugin descriptor = {
    .abi_major = KAUN_PLUGIN_ABI_MAJOR,
    /* built as an ABI 1.0 plugin would be: 1.1 plugins must keep loading it */
    .abi_minor = 0,
    .struct_size = KAUN_PLUGIN_SIZE_1_0,
    .name = TESTMEM_NAME,
    .version = "test-1",
    .description = "test plugin: a directory, read without map, with injected failures",
    .options = options,
    .capabilities = KAUN_CAP_READ | KAUN_CAP_PUT,
    .create = t_create,
    .destroy = t_destroy,
    .open = t_open,
    .close = t_close,
    .stat = t_stat,
    .read = t_read,
    .put = t_put,
};

KAUN_PLUGIN_DEFINE(descriptor)
