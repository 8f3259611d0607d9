/* The lazy reader: headers only on open, single tensors, slices, many at
 * once, streaming, progress and cancellation; on a backend that maps (the
 * file backend) and on one that does not (the testmem plugin), where the
 * progress the core reports counts every byte read through it.
 * Linked against libkaun.so and its public headers only. */
#include <CUnit/Basic.h>
#include <kaun.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

static char tmp_root[4096];

static const char *tmp(const char *name) {
  static char buf[4][8300];
  static int k;
  char *b = buf[k++ % 4];
  snprintf(b, 8300, "%s/%s", tmp_root, name);
  return b;
}

/* A model of `n` tensors "t0".."t{n-1}", each F32[rows, cols] holding
 * 1000*i + its element index, saved at `uri`. */
static void save_grid(kaun_context *ctx, const char *uri, int n, uint64_t rows, uint64_t cols) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_flat *flat;
  ASSERT_OK(kaun_flat_new(&flat, &err), err);
  const uint64_t shape[] = {rows, cols};
  float *v = malloc(rows * cols * sizeof *v);
  for (int i = 0; i < n; i++) {
    for (uint64_t k = 0; k < rows * cols; k++) v[k] = (float)(1000 * i + (int)k);
    kaun_tensor *t;
    ASSERT_OK(kaun_tensor_new_copy(KAUN_DTYPE_F32, 2, shape, v, rows * cols * sizeof *v, &t, &err),
              err);
    char name[32];
    snprintf(name, sizeof name, "t%d", i);
    ASSERT_OK(kaun_flat_add(flat, name, t, &err), err);
  }
  free(v);
  ASSERT_OK(kaun_flat_set_metadata(flat, "format", "pt", &err), err);
  ASSERT_OK(kaun_safetensors_save(ctx, uri, flat, &err), err);
  kaun_flat_free(flat);
}

static float at(const kaun_tensor *t, size_t i) { return ((const float *)kaun_tensor_data(t))[i]; }

/* Counts what the core reports. */
typedef struct counter {
  uint64_t done, total;
  int calls;
  int cancel_after; /* cancel once this many bytes are done (0: never) */
} counter;

static int count_progress(const kaun_progress *p, void *user) {
  counter *c = user;
  c->done = p->done;
  c->total = p->total;
  c->calls++;
  return c->cancel_after && p->done >= (uint64_t)c->cancel_after;
}

static kaun_context *mem_context(void) {
  char path[8192];
  snprintf(path, sizeof path, "%s", getenv("KAUN_TEST_PLUGINS"));
  setenv("KAUN_PLUGIN_PATH", path, 1);
  mkdir(tmp("mem"), 0755);
  FILE *f = fopen(tmp("mem.json"), "w");
  fprintf(f, "{\"backends\": {\"mem\": {\"plugin\": \"testmem\", \"dir\": \"%s\"}}}", tmp("mem"));
  fclose(f);
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx;
  ASSERT_OK(kaun_context_new(tmp("mem.json"), &ctx, &err), err);
  return ctx;
}

/* ---- a backend that maps: views ------------------------------------------------ */

static void test_reader_on_mapped_files(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx;
  ASSERT_OK(kaun_context_new(NULL, &ctx, &err), err);
  save_grid(ctx, tmp("grid.safetensors"), 3, 4, 6);
  kaun_reader *r;
  ASSERT_OK(kaun_reader_open(ctx, tmp("grid.safetensors"), &r, &err), err);
  CU_ASSERT_EQUAL(kaun_reader_count(r), 3);
  CU_ASSERT_EQUAL(kaun_reader_data_bytes(r), 3 * 4 * 6 * 4);
  CU_ASSERT_EQUAL(kaun_reader_metadata_count(r), 1);
  CU_ASSERT_STRING_EQUAL(kaun_reader_metadata_value(r, 0), "pt");
  long i = kaun_reader_find(r, "t1");
  CU_ASSERT(i >= 0);
  kaun_reader_tensor info;
  ASSERT_OK(kaun_reader_info(r, (size_t)i, &info), err);
  CU_ASSERT_STRING_EQUAL(info.name, "t1");
  CU_ASSERT_EQUAL(info.ndim, 2);
  CU_ASSERT_EQUAL(info.shape[1], 6);
  CU_ASSERT_EQUAL(kaun_reader_info(r, 99, &info), KAUN_EINVAL);

  kaun_tensor *t;
  ASSERT_OK(kaun_reader_get(r, "t1", KAUN_DTYPE_COUNT_, NULL, &t, &err), err);
  CU_ASSERT_TRUE(kaun_tensor_is_view(t));
  CU_ASSERT_EQUAL(at(t, 7), 1007.0f);
  kaun_tensor_free(t);
  ASSERT_OK(kaun_reader_get(r, "t2", KAUN_DTYPE_F64, NULL, &t, &err), err);
  CU_ASSERT_EQUAL(kaun_tensor_dtype(t), KAUN_DTYPE_F64);
  CU_ASSERT_EQUAL(((const double *)kaun_tensor_data(t))[5], 2005.0);
  kaun_tensor_free(t);
  kaun_load_options copy = {.struct_size = sizeof copy, .flags = KAUN_LOAD_COPY};
  ASSERT_OK(kaun_reader_get(r, "t0", KAUN_DTYPE_COUNT_, &copy, &t, &err), err);
  CU_ASSERT_FALSE(kaun_tensor_is_view(t));
  CU_ASSERT_EQUAL(at(t, 23), 23.0f);
  kaun_tensor_free(t);

  /* rows 1..3: one contiguous run of a mapping, a view */
  kaun_range rows[] = {{1, 3}};
  ASSERT_OK(kaun_reader_get_slice(r, "t1", 1, rows, NULL, &t, &err), err);
  CU_ASSERT_TRUE(kaun_tensor_is_view(t));
  CU_ASSERT_EQUAL(kaun_tensor_shape(t)[0], 2);
  CU_ASSERT_EQUAL(kaun_tensor_shape(t)[1], 6);
  CU_ASSERT_EQUAL(at(t, 0), 1006.0f);
  CU_ASSERT_EQUAL(at(t, 11), 1017.0f);
  kaun_tensor_free(t);
  /* columns 2..5 of rows 0..4: strided, copied */
  kaun_range cols[] = {{0, 4}, {2, 5}};
  ASSERT_OK(kaun_reader_get_slice(r, "t2", 2, cols, NULL, &t, &err), err);
  CU_ASSERT_FALSE(kaun_tensor_is_view(t));
  CU_ASSERT_EQUAL(kaun_tensor_shape(t)[1], 3);
  CU_ASSERT_EQUAL(at(t, 0), 2002.0f);
  CU_ASSERT_EQUAL(at(t, 3), 2008.0f);
  CU_ASSERT_EQUAL(at(t, 11), 2022.0f);
  kaun_tensor_free(t);
  /* an empty slice */
  kaun_range none[] = {{2, 2}};
  ASSERT_OK(kaun_reader_get_slice(r, "t0", 1, none, NULL, &t, &err), err);
  CU_ASSERT_EQUAL(kaun_tensor_nbytes(t), 0);
  kaun_tensor_free(t);

  kaun_range bad[] = {{0, 4}, {5, 7}};
  ASSERT_FAILS(kaun_reader_get_slice(r, "t0", 2, bad, NULL, &t, &err), err, KAUN_EINVAL,
               "tensor 't0': range 5:7 is outside dimension 1 (size 6)");
  CU_ASSERT_PTR_NOT_NULL(strstr(err.message, tmp("grid.safetensors"))); /* the reader's URI */
  kaun_range reversed[] = {{3, 1}};
  ASSERT_FAILS(kaun_reader_get_slice(r, "t0", 1, reversed, NULL, &t, &err), err, KAUN_EINVAL,
               "range 3:1");
  kaun_range three[] = {{0, 1}, {0, 1}, {0, 1}};
  ASSERT_FAILS(kaun_reader_get_slice(r, "t0", 3, three, NULL, &t, &err), err, KAUN_EINVAL,
               "tensor 't0' has 2 dimensions; 3 ranges given");
  ASSERT_FAILS(kaun_reader_get(r, "nope", KAUN_DTYPE_COUNT_, NULL, &t, &err), err, KAUN_EKEY,
               "no tensor 'nope'");
  CU_ASSERT_PTR_NULL(t);
  kaun_reader_close(r);
  ASSERT_FAILS(kaun_reader_open(ctx, tmp("absent.safetensors"), &r, &err), err, KAUN_ENOENT,
               "absent.safetensors");
  CU_ASSERT_PTR_NULL(r);
  kaun_context_free(ctx);
}

static void test_slice_parse(void) {
  kaun_error err = KAUN_ERROR_INIT;
  const uint64_t shape[] = {10, 8, 3};
  kaun_range g[3];
  size_t n;
  ASSERT_OK(kaun_slice_parse("0:4,:", 3, shape, g, 3, &n, &err), err);
  CU_ASSERT_EQUAL(n, 2);
  CU_ASSERT(g[0].start == 0 && g[0].stop == 4 && g[1].start == 0 && g[1].stop == 8);
  ASSERT_OK(kaun_slice_parse("3", 3, shape, g, 3, &n, &err), err);
  CU_ASSERT(n == 1 && g[0].start == 3 && g[0].stop == 4);
  ASSERT_OK(kaun_slice_parse(":,2:,:1", 3, shape, g, 3, &n, &err), err);
  CU_ASSERT(n == 3 && g[1].start == 2 && g[1].stop == 8 && g[2].stop == 1);
  ASSERT_FAILS(kaun_slice_parse("0:11", 3, shape, g, 3, &n, &err), err, KAUN_EINVAL,
               "part 1 ('0:11') is outside dimension 0 of size 10");
  ASSERT_FAILS(kaun_slice_parse("5:2", 3, shape, g, 3, &n, &err), err, KAUN_EINVAL,
               "part 1 ('5:2') stops before it starts (5 > 2)");
  ASSERT_OK(kaun_slice_parse("-1,-3:,:-2", 3, shape, g, 3, &n, &err), err); /* as in Python */
  CU_ASSERT(n == 3 && g[0].start == 9 && g[0].stop == 10 && g[1].start == 5 && g[1].stop == 8 &&
            g[2].start == 0 && g[2].stop == 1);
  ASSERT_FAILS(kaun_slice_parse("-11", 3, shape, g, 3, &n, &err), err, KAUN_EINVAL,
               "part 1 ('-11') is outside dimension 0 of size 10");
  ASSERT_FAILS(kaun_slice_parse("a:b", 3, shape, g, 3, &n, &err), err, KAUN_EINVAL,
               "part 1 ('a:b')");
  ASSERT_FAILS(kaun_slice_parse(":,:,:,:", 3, shape, g, 3, &n, &err), err, KAUN_EINVAL,
               "more parts than the 3 dimensions");
}

/* ---- a backend that does not map: ranged reads, counted -------------------------- */

typedef struct seen {
  int calls;
  char names[8][16];
} seen;

static int on_tensor(const char *name, const kaun_tensor *t, void *user) {
  seen *s = user;
  CU_ASSERT_PTR_NOT_NULL(kaun_tensor_data(t));
  if (s->calls < 8) snprintf(s->names[s->calls], 16, "%s", name);
  s->calls++;
  return 0;
}

static int stop_at_first(const char *name, const kaun_tensor *t, void *user) {
  (void)name;
  (void)t;
  (void)user;
  return 1;
}

static void test_reader_reads_only_what_is_asked(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx = mem_context();
  save_grid(ctx, "mem://many.safetensors", 100, 16, 16); /* 100 tensors of 1 KiB */
  counter c = {0, 0, 0, 0};
  kaun_context_set_progress(ctx, count_progress, &c);
  kaun_reader *r;
  ASSERT_OK(kaun_reader_open(ctx, "mem://many.safetensors", &r, &err), err);
  CU_ASSERT_EQUAL(c.done, 0); /* opening reads the header, not counted as data */
  /* a template-like subset: 2 tensors out of 100 read exactly their bytes */
  const char *names[] = {"t17", "t83"};
  kaun_tensor *out[2];
  seen s = {0, {{0}}};
  kaun_load_options opts = {.struct_size = sizeof opts, .on_tensor = on_tensor, .user = &s};
  ASSERT_OK(kaun_reader_get_many(r, 2, names, NULL, &opts, out, &err), err);
  CU_ASSERT_EQUAL(c.done, 2 * 16 * 16 * 4);
  CU_ASSERT_EQUAL(c.total, 2 * 16 * 16 * 4);
  CU_ASSERT_EQUAL(s.calls, 2);
  CU_ASSERT_FALSE(kaun_tensor_is_view(out[0]));
  CU_ASSERT_EQUAL(at(out[0], 255), 17255.0f);
  CU_ASSERT_EQUAL(at(out[1], 1), 83001.0f);
  kaun_tensor_free(out[0]);
  kaun_tensor_free(out[1]);

  /* rows 10..12 of one tensor: 2 rows of 16 floats are all that is read */
  c.done = c.total = 0;
  kaun_tensor *t;
  kaun_range rows[] = {{10, 12}};
  ASSERT_OK(kaun_reader_get_slice(r, "t5", 1, rows, NULL, &t, &err), err);
  CU_ASSERT_EQUAL(c.done, 2 * 16 * 4);
  CU_ASSERT_EQUAL(at(t, 0), 5160.0f);
  kaun_tensor_free(t);
  /* a column: 16 runs of one float, close together: one read of the span
   * from the first to the last, counted as read */
  c.done = c.total = 0;
  kaun_range col[] = {{0, 16}, {3, 4}};
  ASSERT_OK(kaun_reader_get_slice(r, "t9", 2, col, NULL, &t, &err), err);
  CU_ASSERT_EQUAL(c.done, 15 * 16 * 4 + 4);
  CU_ASSERT_EQUAL(c.total, c.done);
  CU_ASSERT_EQUAL(at(t, 1), 9019.0f);
  CU_ASSERT_EQUAL(at(t, 15), 9243.0f);
  kaun_tensor_free(t);
  /* a cast while reading */
  c.done = 0;
  ASSERT_OK(kaun_reader_get(r, "t2", KAUN_DTYPE_BF16, NULL, &t, &err), err);
  CU_ASSERT_EQUAL(kaun_tensor_dtype(t), KAUN_DTYPE_BF16);
  CU_ASSERT_EQUAL(c.done, 16 * 16 * 4);
  kaun_tensor_free(t);
  kaun_reader_close(r);

  /* a whole load reads each byte once */
  c.done = c.total = 0;
  kaun_flat *flat;
  ASSERT_OK(kaun_checkpoint_load_flat(ctx, "mem://many.safetensors", 0, &flat, &err), err);
  CU_ASSERT_EQUAL(c.done, 100 * 16 * 16 * 4);
  CU_ASSERT_EQUAL(kaun_flat_count(flat), 100);
  CU_ASSERT_EQUAL(at(kaun_flat_find(flat, "t99"), 3), 99003.0f);
  kaun_flat_free(flat);
  /* verify --data reads every data byte once and keeps nothing, in
   * many small reads */
  kaun_context_set_io(ctx, 4096, 3);
  c.done = 0;
  ASSERT_OK(kaun_reader_open(ctx, "mem://many.safetensors", &r, &err), err);
  ASSERT_OK(kaun_reader_check_data(r, NULL, &err), err);
  CU_ASSERT_EQUAL(c.done, 100 * 16 * 16 * 4);
  kaun_reader_close(r);
  kaun_context_free(ctx);
}

static void test_cancel_from_progress(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx = mem_context();
  save_grid(ctx, "mem://big.safetensors", 4, 1024, 512); /* 4 x 2 MiB */
  kaun_context_set_io(ctx, 64 << 10, 2);                 /* small reads: many chances to stop */
  counter c = {0, 0, 0, 1 << 20};
  kaun_context_set_progress(ctx, count_progress, &c);
  kaun_flat *flat = NULL;
  ASSERT_FAILS(kaun_checkpoint_load_flat(ctx, "mem://big.safetensors", 0, &flat, &err), err,
               KAUN_ECANCELED, "mem://big.safetensors");
  CU_ASSERT_PTR_NULL(flat);
  CU_ASSERT(c.done < 4u * 1024 * 512 * 4);
  /* an io canceled before the call: nothing is read */
  kaun_io *io;
  ASSERT_OK(kaun_io_new(NULL, NULL, &io, &err), err);
  kaun_io_cancel(io);
  CU_ASSERT_TRUE(kaun_io_canceled(io));
  kaun_reader *r;
  ASSERT_OK(kaun_reader_open(ctx, "mem://big.safetensors", &r, &err), err);
  kaun_load_options opts = {.struct_size = sizeof opts, .io = io};
  kaun_tensor *t = NULL;
  ASSERT_FAILS(kaun_reader_get(r, "t1", KAUN_DTYPE_COUNT_, &opts, &t, &err), err, KAUN_ECANCELED,
               "canceled");
  CU_ASSERT_PTR_NULL(t);
  kaun_io_free(io);
  kaun_reader_close(r);
  kaun_context_free(ctx);
}

/* The template load: only the template's tensors, cast as it asks. */
static void test_template_subset(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx = mem_context();
  save_grid(ctx, "mem://tpl.safetensors", 50, 8, 8);
  counter c = {0, 0, 0, 0};
  kaun_context_set_progress(ctx, count_progress, &c);
  kaun_ptree *like, *got;
  ASSERT_OK(kaun_ptree_new_record(&like, &err), err);
  const uint64_t shape[] = {8, 8};
  kaun_tensor *a, *b;
  ASSERT_OK(kaun_tensor_new(KAUN_DTYPE_F32, 2, shape, &a, &err), err);
  ASSERT_OK(kaun_tensor_new(KAUN_DTYPE_F16, 2, shape, &b, &err), err);
  ASSERT_OK(kaun_ptree_set(like, "t3", a, &err), err);
  ASSERT_OK(kaun_ptree_set(like, "t40", b, &err), err);
  ASSERT_OK(kaun_checkpoint_load(ctx, "mem://tpl.safetensors", like, 0, &got, &err), err);
  CU_ASSERT_EQUAL(c.done, 2 * 8 * 8 * 4);
  kaun_ptree *leaf;
  ASSERT_OK(kaun_ptree_get(got, "t40", &leaf, &err), err);
  CU_ASSERT_EQUAL(kaun_tensor_dtype(kaun_ptree_tensor(leaf)), KAUN_DTYPE_F16);
  kaun_ptree_free(got);
  kaun_ptree_free(like);
  kaun_context_free(ctx);
}

/* ---- shard names in an index ---------------------------------------------------- */

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  fputs(text, f);
  fclose(f);
}

/* Names of one file open it once; names a server could read as another
 * file ('%2e%2e', '?', '#') are refused; the shards are bounded. */
static void test_index_shard_names(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx;
  ASSERT_OK(kaun_context_new(NULL, &ctx, &err), err);
  mkdir(tmp("idx"), 0755);
  mkdir(tmp("idx/sub"), 0755);
  save_grid(ctx, tmp("idx/a.safetensors"), 3, 2, 2);
  char index[8300];
  snprintf(index, sizeof index, "%s", tmp("idx/model.safetensors.index.json"));
  write_file(index,
             "{\"weight_map\": {\"t0\": \"a.safetensors\", \"t1\": \"./a.safetensors\",\n"
             "  \"t2\": \"././a.safetensors\"}}");
  kaun_reader *r;
  ASSERT_OK(kaun_reader_open(ctx, index, &r, &err), err);
  CU_ASSERT_EQUAL(kaun_reader_count(r), 3);
  kaun_reader_tensor a, b, c;
  ASSERT_OK(kaun_reader_info(r, 0, &a), err);
  ASSERT_OK(kaun_reader_info(r, 1, &b), err);
  ASSERT_OK(kaun_reader_info(r, 2, &c), err);
  CU_ASSERT_PTR_EQUAL(a.uri, b.uri); /* one shard, opened once */
  CU_ASSERT_PTR_EQUAL(a.uri, c.uri);
  CU_ASSERT_PTR_NULL(strstr(a.uri, "/./"));
  kaun_tensor *t;
  ASSERT_OK(kaun_reader_get(r, "t2", KAUN_DTYPE_COUNT_, NULL, &t, &err), err);
  CU_ASSERT_EQUAL(at(t, 3), 2003.0f);
  kaun_tensor_free(t);
  kaun_reader_close(r);
  /* a name in a folder, with "." components, is the same file */
  save_grid(ctx, tmp("idx/sub/b.safetensors"), 1, 2, 2);
  write_file(index, "{\"weight_map\": {\"t0\": \"sub/./b.safetensors\"}}");
  ASSERT_OK(kaun_reader_open(ctx, index, &r, &err), err);
  ASSERT_OK(kaun_reader_info(r, 0, &a), err);
  CU_ASSERT_PTR_NOT_NULL(strstr(a.uri, "idx/sub/b.safetensors"));
  kaun_reader_close(r);
  /* percent-escapes (most servers decode them), queries and fragments */
  static const char *const odd[] = {"%2e%2e/%2e%2e/private/x.safetensors",
                                    "a.safetensors?v=1",
                                    "a.safetensors#2",
                                    "sub\\\\..\\\\a.safetensors",
                                    "./",
                                    "."};
  for (size_t i = 0; i < sizeof odd / sizeof *odd; i++) {
    char text[512], want[512];
    snprintf(text, sizeof text, "{\"weight_map\": {\"t0\": \"%s\"}}", odd[i]);
    write_file(index, text);
    ASSERT_FAILS(kaun_reader_open(ctx, index, &r, &err), err, KAUN_EINDEX,
                 "the shard of tensor 't0' must be a file name relative to the index");
    CU_ASSERT_PTR_NULL(r);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, index));
    snprintf(want, sizeof want, "not '%s'", odd[i]); /* escaped as JSON escapes it */
    if (!strstr(err.message, want)) fprintf(stderr, "\n  [%s] not in [%s]\n", want, err.message);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, want));
  }
  /* more shard files than kaun opens for one index: refused before any is opened */
  FILE *f = fopen(index, "w");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  fputs("{\"weight_map\": {", f);
  for (int i = 0; i <= 10000; i++)
    fprintf(f, "%s\"t%d\": \"s%d.safetensors\"", i ? ", " : "", i, i);
  fputs("}}", f);
  fclose(f);
  ASSERT_FAILS(kaun_reader_open(ctx, index, &r, &err), err, KAUN_EINDEX,
               "names 10001 shard files, more than the 10000 kaun opens for one index");
  CU_ASSERT_PTR_NOT_NULL(strstr(err.message, index));
  kaun_context_free(ctx);
}

/* ---- failures and the caller's io ------------------------------------------------ */

/* A read that fails leaves the caller's io as it was: later calls with it
 * work (it used to be canceled for good). */
static void test_failed_read_leaves_the_io(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx = mem_context();
  save_grid(ctx, "mem://io.safetensors", 2, 64, 64);
  kaun_context_free(ctx);
  kaun_io *io;
  ASSERT_OK(kaun_io_new(NULL, NULL, &io, &err), err);
  kaun_load_options opts = {.struct_size = sizeof opts, .io = io};
  int failed = 0;
  for (int n = 1; n < 40 && !failed; n++) { /* the first call number that is a data read */
    FILE *f = fopen(tmp("memfail.json"), "w");
    fprintf(
        f, "{\"backends\": {\"mem\": {\"plugin\": \"testmem\", \"dir\": \"%s\", \"fail_at\": %d}}}",
        tmp("mem"), n);
    fclose(f);
    ASSERT_OK(kaun_context_new(tmp("memfail.json"), &ctx, &err), err);
    kaun_reader *r;
    if (kaun_reader_open(ctx, "mem://io.safetensors", &r, &err) == KAUN_OK) {
      kaun_tensor *t = NULL;
      if (kaun_reader_get(r, "t1", KAUN_DTYPE_COUNT_, &opts, &t, &err) != KAUN_OK) {
        failed = 1;
        CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "injected failure"));
        CU_ASSERT_FALSE(kaun_io_canceled(io));
        ASSERT_OK(kaun_reader_get(r, "t1", KAUN_DTYPE_COUNT_, &opts, &t, &err), err);
        CU_ASSERT_EQUAL(at(t, 5), 1005.0f);
      }
      kaun_tensor_free(t);
      kaun_reader_close(r);
    }
    kaun_context_free(ctx);
  }
  CU_ASSERT_TRUE(failed);
  /* a tensor callback that stops one call: the next one runs */
  ctx = mem_context();
  kaun_reader *r;
  ASSERT_OK(kaun_reader_open(ctx, "mem://io.safetensors", &r, &err), err);
  kaun_load_options stop = {.struct_size = sizeof stop, .io = io, .on_tensor = stop_at_first};
  const char *names[] = {"t0", "t1"};
  kaun_tensor *out[2];
  ASSERT_FAILS(kaun_reader_get_many(r, 2, names, NULL, &stop, out, &err), err, KAUN_ECANCELED,
               "canceled by the tensor callback");
  CU_ASSERT_FALSE(kaun_io_canceled(io));
  ASSERT_OK(kaun_reader_get_many(r, 2, names, NULL, &opts, out, &err), err);
  kaun_tensor_free(out[0]);
  kaun_tensor_free(out[1]);
  /* and the caller's own cancel still stops it */
  kaun_io_cancel(io);
  ASSERT_FAILS(kaun_reader_get_many(r, 2, names, NULL, &opts, out, &err), err, KAUN_ECANCELED,
               "canceled");
  kaun_reader_close(r);
  kaun_io_free(io);
  kaun_context_free(ctx);
}

/* ---- memory for a check of a huge object ----------------------------------------- */

/* verify --data of an object that claims 64 GiB, read in 4 KiB chunks and
 * canceled after 1 MiB: the reads start at once, with memory for the
 * reads in flight (a plan of every chunk would be 16M entries). */
static int check_huge_child(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx = mem_context();
  kaun_context_set_io(ctx, 4096, 2);
  counter c = {0, 0, 0, 1 << 20};
  kaun_context_set_progress(ctx, count_progress, &c);
  kaun_reader *r;
  if (kaun_reader_open(ctx, "mem://huge.safetensors", &r, &err)) {
    fprintf(stderr, "%s\n", err.message);
    return 2;
  }
  int rc = kaun_reader_check_data(r, NULL, &err);
  kaun_reader_close(r);
  kaun_context_free(ctx);
  if (rc != KAUN_ECANCELED) fprintf(stderr, "check_data: %s\n", err.message);
  return rc == KAUN_ECANCELED && c.done < (8u << 20) ? 0 : 3;
}

static void test_check_data_of_a_huge_claim(void) {
  const uint64_t size = (uint64_t)1 << 36;
  char header[256];
  int n = snprintf(header, sizeof header,
                   "{\"x\":{\"dtype\":\"U8\",\"shape\":[%llu],\"data_offsets\":[0,%llu]}}",
                   (unsigned long long)size, (unsigned long long)size);
  while (n % 8) header[n++] = ' ';
  kaun_context_free(mem_context()); /* makes the folder */
  FILE *f = fopen(tmp("mem/huge.safetensors"), "wb");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  unsigned char len[8] = {(unsigned char)n};
  fwrite(len, 1, 8, f);
  fwrite(header, 1, (size_t)n, f);
  fclose(f);
  if (truncate(tmp("mem/huge.safetensors"), (off_t)(8 + n + size)) != 0) {
    fprintf(stderr, "SKIPPED: no sparse file of 64 GiB here ");
    return;
  }
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) _exit(check_huge_child());
  int status;
  struct rusage ru;
  CU_ASSERT_EQUAL_FATAL(wait4(pid, &status, 0, &ru), pid);
  CU_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
  fprintf(stderr, "(peak RSS %ld KiB) ", ru.ru_maxrss);
  CU_ASSERT(ru.ru_maxrss < 200 * 1024);
#endif
  unlink(tmp("mem/huge.safetensors"));
}

/* ---- one reader, several threads (the header's promise; TSan runs this) --- */

enum { SHARED_TENSORS = 32, SHARED_THREADS = 4 };

typedef struct shared_job {
  kaun_reader *r;
  int first;    /* this thread takes tensors first, first + SHARED_THREADS, ... */
  int failures; /* counted here, asserted by the main thread (CUnit is not thread-safe) */
} shared_job;

static void *shared_worker(void *arg) {
  shared_job *j = arg;
  kaun_error err = KAUN_ERROR_INIT;
  for (int round = 0; round < 3; round++) {
    for (int i = j->first; i < SHARED_TENSORS; i += SHARED_THREADS) {
      char name[16], next[16];
      snprintf(name, sizeof name, "t%d", i);
      snprintf(next, sizeof next, "t%d", (i + 1) % SHARED_TENSORS);
      kaun_tensor *t = NULL;
      /* kept: a view where the backend maps */
      if (kaun_reader_get(j->r, name, KAUN_DTYPE_COUNT_, NULL, &t, &err) != 0 ||
          at(t, 37) != (float)(1000 * i + 37))
        j->failures++;
      kaun_tensor_free(t);
      /* cast while reading */
      t = NULL;
      if (kaun_reader_get(j->r, name, KAUN_DTYPE_F64, NULL, &t, &err) != 0 ||
          ((const double *)kaun_tensor_data(t))[255] != (double)(1000 * i + 255))
        j->failures++;
      kaun_tensor_free(t);
      /* rows 3..5 */
      t = NULL;
      kaun_range rows[] = {{3, 5}};
      if (kaun_reader_get_slice(j->r, name, 1, rows, NULL, &t, &err) != 0 ||
          at(t, 0) != (float)(1000 * i + 48) || at(t, 31) != (float)(1000 * i + 79))
        j->failures++;
      kaun_tensor_free(t);
      /* two at once, one of them another thread's */
      const char *names[] = {name, next};
      kaun_tensor *out[2] = {NULL, NULL};
      kaun_load_options copy = {.struct_size = sizeof copy, .flags = KAUN_LOAD_COPY};
      if (kaun_reader_get_many(j->r, 2, names, NULL, &copy, out, &err) != 0 ||
          at(out[0], 1) != (float)(1000 * i + 1) ||
          at(out[1], 2) != (float)(1000 * ((i + 1) % SHARED_TENSORS) + 2))
        j->failures++;
      kaun_tensor_free(out[0]);
      kaun_tensor_free(out[1]);
      /* a name no one has: an error of this thread only */
      t = NULL;
      if (kaun_reader_get(j->r, "missing", KAUN_DTYPE_COUNT_, NULL, &t, &err) != KAUN_EKEY ||
          !strstr(err.message, "missing"))
        j->failures++;
    }
  }
  return NULL;
}

static void shared_reader_on(kaun_context *ctx, const char *uri) {
  kaun_error err = KAUN_ERROR_INIT;
  save_grid(ctx, uri, SHARED_TENSORS, 16, 16);
  kaun_reader *r;
  ASSERT_OK(kaun_reader_open(ctx, uri, &r, &err), err);
  pthread_t th[SHARED_THREADS];
  shared_job jobs[SHARED_THREADS];
  for (int k = 0; k < SHARED_THREADS; k++) {
    jobs[k] = (shared_job){r, k, 0};
    CU_ASSERT_EQUAL_FATAL(pthread_create(&th[k], NULL, shared_worker, &jobs[k]), 0);
  }
  for (int k = 0; k < SHARED_THREADS; k++) {
    pthread_join(th[k], NULL);
    if (jobs[k].failures)
      fprintf(stderr, "\n%s: thread %d: %d failures\n", uri, k, jobs[k].failures);
    CU_ASSERT_EQUAL(jobs[k].failures, 0);
  }
  kaun_reader_close(r);
}

static void test_one_reader_many_threads(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx;
  ASSERT_OK(kaun_context_new(NULL, &ctx, &err), err);
  shared_reader_on(ctx, tmp("shared.safetensors")); /* maps: views */
  kaun_context_free(ctx);
  ctx = mem_context();
  shared_reader_on(ctx, "mem://shared.safetensors"); /* ranged reads */
  kaun_context_free(ctx);
}

int main(void) {
  snprintf(tmp_root, sizeof tmp_root, "%s/kaun-reader-XXXXXX",
           getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  if (!mkdtemp(tmp_root)) return 1;
  if (CU_initialize_registry() != CUE_SUCCESS) return 1;
  CU_pSuite s = CU_add_suite("reader", NULL, NULL);
  CU_add_test(s, "a mapped file: views, casts, slices, errors", test_reader_on_mapped_files);
  CU_add_test(s, "slices written as text", test_slice_parse);
  CU_add_test(s, "ranged reads: only the bytes asked for, each once",
              test_reader_reads_only_what_is_asked);
  CU_add_test(s, "cancellation from progress and from the io", test_cancel_from_progress);
  CU_add_test(s, "a template loads only its tensors", test_template_subset);
  CU_add_test(s, "an index's shard names: one file once, odd names refused, bounded",
              test_index_shard_names);
  CU_add_test(s, "a failed read leaves the caller's io usable", test_failed_read_leaves_the_io);
  CU_add_test(s, "verify --data of a 64 GiB claim: memory for the reads in flight",
              test_check_data_of_a_huge_claim);
  CU_add_test(s, "one reader used by 4 threads at once (views, casts, slices, many, errors)",
              test_one_reader_many_threads);
  int rc = check_run_all();
  check_remove_tree(tmp_root);
  return rc;
}
