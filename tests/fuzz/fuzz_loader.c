/* libFuzzer target: any bytes as a whole checkpoint file, loaded the way
 * users load one.  The bytes sit in a memfd served by the file backend
 * (/proc/self/fd/N: no file is left behind between runs or after a
 * crash).  kaun_checkpoint_load_flat loads every tensor as zero-copy views
 * and again with KAUN_LOAD_COPY; the reader gets every tensor by its
 * whole name (views and copies), casts each to F32 and checks the data.
 * A file kaun refuses must say why; what it accepts must load the same
 * tensors, with the same bytes, every way.
 * Build and run: scripts/dev.sh fuzz [SECONDS] loader. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../../core/storage_internal.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static kaun_context *ctx;
static int fd = -1;
static char uri[64];

static void cleanup(void) {
  kaun_context_free(ctx);
  close(fd);
}

static void setup(void) {
  ctx = fuzz_context_and_memfd("fuzz_loader", &fd);
  snprintf(uri, sizeof uri, "/proc/self/fd/%d", fd);
  atexit(cleanup);
}

static void failed(int rc, const kaun_error *err) {
  if (rc >= 0 || err->code != rc || !err->message[0]) abort(); /* every failure explains itself */
}

static int same(const kaun_tensor *a, const kaun_tensor *b) {
  size_t n = kaun_tensor_nbytes(a);
  return kaun_tensor_dtype(a) == kaun_tensor_dtype(b) && n == kaun_tensor_nbytes(b) &&
         (n == 0 || memcmp(kaun_tensor_data(a), kaun_tensor_data(b), n) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!ctx) setup();
  if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != (ssize_t)size) abort();

  kaun_error err = KAUN_ERROR_INIT;
  kaun_flat *views = NULL, *copies = NULL;
  int rc = kaun_checkpoint_load_flat(ctx, uri, 0, &views, &err);
  if (rc) failed(rc, &err);
  int rc2 = kaun_checkpoint_load_flat(ctx, uri, KAUN_LOAD_COPY, &copies, &err);
  if (rc2) failed(rc2, &err);
  if ((rc == 0) != (rc2 == 0)) abort(); /* a copy loads what a view loads */
  if (!rc) {
    size_t n = kaun_flat_count(views);
    if (kaun_flat_count(copies) != n) abort();
    for (size_t i = 0; i < n; i++)
      if (kaun_flat_name_length(views, i) != kaun_flat_name_length(copies, i) ||
          !same(kaun_flat_tensor(views, i), kaun_flat_tensor(copies, i)))
        abort();
  }

  kaun_reader *r;
  int rr = kaun_reader_open(ctx, uri, &r, &err);
  if (rr) {
    failed(rr, &err);
    if (!rc) abort(); /* what loads, opens */
  } else {
    size_t n = kaun_reader_count(r);
    if (!rc && n != kaun_flat_count(views)) abort();
    for (size_t i = 0; i < n; i++) {
      kaun_reader_tensor info;
      if (kaun_reader_info(r, i, &info) != KAUN_OK) abort();
      size_t len = kaun_reader_name_length(r, i);
      if (kaun_reader_find_n(r, info.name, len) != (long)i) abort();
      if (len != strlen(info.name)) continue; /* a name with a NUL: reachable by _n calls only */
      kaun_load_options copy = {.struct_size = sizeof copy, .flags = KAUN_LOAD_COPY};
      kaun_tensor *v = NULL, *c = NULL, *f = NULL;
      int a = kaun_reader_get(r, info.name, KAUN_DTYPE_COUNT_, NULL, &v, &err);
      if (a) failed(a, &err);
      int b = kaun_reader_get(r, info.name, KAUN_DTYPE_COUNT_, &copy, &c, &err);
      if (b) failed(b, &err);
      if (!a && !b && (!same(v, c) || kaun_tensor_nbytes(v) != info.nbytes)) abort();
      if (!a && !rc) { /* the flat load found the same bytes under that name */
        for (size_t j = 0; j < kaun_flat_count(views); j++)
          if (kaun_flat_name_length(views, j) == len &&
              memcmp(kaun_flat_name(views, j), info.name, len) == 0 &&
              !same(v, kaun_flat_tensor(views, j)))
            abort();
      }
      int k = kaun_reader_get(r, info.name, KAUN_DTYPE_F32, NULL, &f, &err);
      if (k) failed(k, &err);
      kaun_tensor_free(v);
      kaun_tensor_free(c);
      kaun_tensor_free(f);
    }
    int d = kaun_reader_check_data(r, NULL, &err);
    if (d) failed(d, &err);
    kaun_reader_close(r);
  }
  kaun_flat_free(views);
  kaun_flat_free(copies);
  return 0;
}
