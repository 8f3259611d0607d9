/* libFuzzer target: any bytes as an archive (tar, any compression, zip)
 * through the tar plugin's own code (plugins/tar/tar.c is compiled into
 * this file): the bytes sit in a memfd served by the file backend
 * (/proc/self/fd/N: no file is left behind), a fresh backend opens
 * "model.safetensors" in it (a compressed tar's one-pass scan), lists every
 * member (the full index: names normalised, duplicates, files that are also
 * folders, link targets) and opens, stats and reads each listed member
 * (links followed inside the archive only).  The input as a C string also
 * goes through normalise() directly.  An archive kaun refuses must say
 * why; names it lists must be relative, without "", "." or ".."
 * components.  Build and run: scripts/dev.sh fuzz [SECONDS] tar_names. */
#include "../../plugins/tar/tar.c"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../../core/storage_internal.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_LISTED 16
#define READ_MAX (256u << 10)

static kaun_context *ctx;
static int fd = -1;
static char outer[64], list_uri[80];
static char *buf;

static void cleanup(void) {
  kaun_context_free(ctx);
  close(fd);
  free(buf);
}

static void setup(void) {
  ctx = fuzz_context_and_memfd("fuzz_tar_names", &fd);
  if (!(buf = malloc(READ_MAX))) abort();
  snprintf(outer, sizeof outer, "/proc/self/fd/%d", fd);
  snprintf(list_uri, sizeof list_uri, "::%s", outer);
  atexit(cleanup);
}

/* A name as the index holds it: relative, no empty, "." or ".." part. */
static void check_name(const char *n) {
  if (!n[0] || n[0] == '/' || n[strlen(n) - 1] == '/' || strstr(n, "//")) abort();
  for (const char *p = n; *p;) {
    size_t c = strcspn(p, "/");
    if ((c == 1 && p[0] == '.') || (c == 2 && p[0] == '.' && p[1] == '.')) abort();
    p += c;
    if (*p) p++;
  }
}

static void check_normalise(const uint8_t *data, size_t size) {
  char *in = strndup((const char *)data, size);
  if (!in) return;
  for (int up = 0; up < 2; up++) {
    char *out;
    int r = normalise(in, up, &out);
    if (r == 0) {
      if (out[0]) check_name(out);
      if (strlen(out) > strlen(in)) abort();
      free(out);
    } else if (out || (r != -1 && r != -2 && r != -3) || (r == -1) != (in[0] == '/')) {
      abort();
    }
  }
  free(in);
}

typedef struct listed {
  char *name[MAX_LISTED];
  size_t n;
} listed;

static int on_member(const char *name, uint64_t size, void *context) {
  (void)size;
  listed *l = context;
  check_name(name);
  if (l->n < MAX_LISTED) l->name[l->n++] = strdup(name);
  return 0;
}

static void failed(int rc, const kaun_error *err) {
  if (rc >= 0 || err->code != rc || !err->message[0]) abort(); /* every failure explains itself */
}

/* Opens `name` in the archive and reads it (a bounded part of it). */
static void open_member(backend *be, const char *name) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_object *inner;
  if (kaun_object_open(ctx, outer, &inner, &err) != KAUN_OK) {
    fprintf(stderr, "fuzz_tar_names: %s\n", err.message);
    abort();
  }
  void *ob;
  int rc = t_open(be, name, inner, &ob, &err);
  if (rc) {
    failed(rc, &err);
    kaun_object_close(inner);
    return;
  }
  object *o = ob;
  check_name(o->mem->name);
  kaun_stat st = {.struct_size = sizeof st};
  if (t_stat(ob, &st, &err) != KAUN_OK) abort();
  size_t n = st.size < READ_MAX ? (size_t)st.size : READ_MAX;
  rc = t_read(ob, 0, buf, n, &err);
  if (rc) failed(rc, &err);
  if (o->ix->raw && n) { /* members of a plain tar: ranges of the memfd */
    const void *p;
    void *cookie;
    rc = t_map_range(ob, st.size - n, n, &p, &cookie, &err);
    if (rc)
      failed(rc, &err);
    else
      t_unmap(be, cookie);
    if ((rc = t_read(ob, st.size - 1, buf, 1, &err))) failed(rc, &err);
  }
  if (t_read(ob, st.size, buf, 1, &err) == KAUN_OK) abort(); /* past the end */
  t_close(ob);
  kaun_object_close(inner);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!ctx) setup();
  check_normalise(data, size);
  if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != (ssize_t)size) abort();

  kaun_options opts = {.specs = options, .count = 0, .names = NULL, .values = NULL};
  kaun_error err = KAUN_ERROR_INIT;
  void *b;
  if (t_create(ctx, "tar", &opts, &b, &err) != KAUN_OK) abort();
  backend *be = b;
  be->max_ratio = 64; /* a bomb is caught after a few MiB, not 600 */
  open_member(be, "model.safetensors");

  t_destroy(b); /* a fresh index: a compressed tar's one-pass open above, the full scan below */
  if (t_create(ctx, "tar", &opts, &b, &err) != KAUN_OK) abort();
  be = b;
  be->max_ratio = 64;
  listed l = {.n = 0};
  int rc = t_list(be, list_uri, on_member, &l, &err);
  if (rc) failed(rc, &err);
  for (size_t i = 0; i < l.n; i++) {
    if (l.name[i]) open_member(be, l.name[i]);
    free(l.name[i]);
  }
  t_destroy(b);
  return 0;
}
