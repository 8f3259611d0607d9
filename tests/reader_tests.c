/* The lazy reader: headers only on open, single tensors, slices, many at
 * once, streaming, progress and cancellation; on a backend that maps (the
 * file backend) and on one that does not (the testmem plugin), where the
 * progress the core reports counts every byte read through it.
 * Linked against libkaun.so and its public headers only. */
#include <CUnit/Basic.h>
#include <kaun.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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
  kaun_load_options copy = {sizeof copy, KAUN_LOAD_COPY, NULL, NULL, NULL};
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
  kaun_load_options opts = {sizeof opts, 0, NULL, on_tensor, &s};
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
  /* a column: 16 runs of one float */
  c.done = 0;
  kaun_range col[] = {{0, 16}, {3, 4}};
  ASSERT_OK(kaun_reader_get_slice(r, "t9", 2, col, NULL, &t, &err), err);
  CU_ASSERT_EQUAL(c.done, 16 * 4);
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
  kaun_load_options opts = {sizeof opts, 0, io, NULL, NULL};
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
  CU_basic_set_mode(CU_BRM_VERBOSE);
  CU_basic_run_tests();
  unsigned failed = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
  CU_cleanup_registry();
  char cmd[8400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_root);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmp_root);
  return failed ? 1 : 0;
}
