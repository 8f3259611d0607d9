/* Sharded saves (kaun_checkpoint_save_ex with max_shard_size) and
 * whole-model copies (kaun_reader_copy_model) on the file backend and the
 * testmem test plugin: split points, the index's exact bytes, read-back,
 * parallel shards, failures half-way, cancels.  Public API only. */
#include <CUnit/Basic.h>
#include <kaun.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"

static char tmp_root[4096];

#define tmp(...) check_path(tmp_root, __VA_ARGS__)

static bool exists(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0;
}

static char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *p = malloc((size_t)n + 1);
  if (p && fread(p, 1, (size_t)n, f) != (size_t)n) {
    free(p);
    p = NULL;
  }
  if (p) p[n] = '\0';
  fclose(f);
  if (len) *len = (size_t)n;
  return p;
}

static bool same_file(const char *a, const char *b) {
  size_t la, lb;
  char *x = slurp(a, &la), *y = slurp(b, &lb);
  bool same = x && y && la == lb && memcmp(x, y, la) == 0;
  free(x);
  free(y);
  return same;
}

/* The names of the files in `dir`, sorted, as one string "a,b,c". */
static void listing(const char *dir, char *out, size_t size) {
  char cmd[8400];
  snprintf(cmd, sizeof cmd, "ls -A '%s' 2>/dev/null | tr '\\n' ','", dir);
  FILE *p = popen(cmd, "r");
  size_t n = p ? fread(out, 1, size - 1, p) : 0;
  out[n] = '\0';
  if (p) pclose(p);
}

/* A tensor of `dtype` and `count` elements whose bytes are seed, seed+1... */
static kaun_tensor *pattern(kaun_dtype dtype, uint64_t count, unsigned seed) {
  kaun_error err = KAUN_ERROR_INIT;
  size_t bytes = (size_t)(count * kaun_dtype_bits(dtype) / 8);
  unsigned char *data = malloc(bytes ? bytes : 1);
  for (size_t i = 0; i < bytes; i++) data[i] = (unsigned char)(seed + i * 7);
  if (dtype == KAUN_DTYPE_F32) /* finite floats, so a cast round-trips */
    for (size_t i = 0; i < count; i++) ((float *)data)[i] = (float)(seed + i) / 4.0f;
  kaun_tensor *t;
  const uint64_t shape[] = {count};
  ASSERT_OK(kaun_tensor_new_copy(dtype, 1, shape, data, bytes, &t, &err), err);
  free(data);
  return t;
}

/* {a: F32[8], b: F32[8], c: F32[8], d: F32[40], e: F32[4]}: 32, 32, 32,
 * 160 and 16 bytes, in that order. */
static kaun_ptree *five(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_ptree *t;
  ASSERT_OK(kaun_ptree_new_record(&t, &err), err);
  const char *names[] = {"a", "b", "c", "d", "e"};
  const uint64_t counts[] = {8, 8, 8, 40, 4};
  for (int i = 0; i < 5; i++)
    ASSERT_OK(kaun_ptree_set(t, names[i], pattern(KAUN_DTYPE_F32, counts[i], (unsigned)i), &err),
              err);
  return t;
}

static kaun_save_options save_opts(uint64_t max) {
  kaun_save_options o;
  memset(&o, 0, sizeof o);
  o.struct_size = sizeof o;
  o.max_shard_size = max;
  return o;
}

/* Every tensor of `a` is in `b` with the same dtype, shape and bytes. */
static void assert_same_flat(const kaun_flat *a, const kaun_flat *b) {
  CU_ASSERT_EQUAL_FATAL(kaun_flat_count(a), kaun_flat_count(b));
  for (size_t i = 0; i < kaun_flat_count(a); i++) {
    const kaun_tensor *x = kaun_flat_tensor(a, i);
    const kaun_tensor *y = kaun_flat_find(b, kaun_flat_name(a, i));
    CU_ASSERT_PTR_NOT_NULL_FATAL(y);
    CU_ASSERT_EQUAL(kaun_tensor_dtype(x), kaun_tensor_dtype(y));
    CU_ASSERT_EQUAL_FATAL(kaun_tensor_nbytes(x), kaun_tensor_nbytes(y));
    CU_ASSERT_EQUAL(kaun_tensor_ndim(x), kaun_tensor_ndim(y));
    CU_ASSERT(memcmp(kaun_tensor_data(x), kaun_tensor_data(y), kaun_tensor_nbytes(x)) == 0);
  }
}

static kaun_flat *leaves(const kaun_ptree *tree) {
  kaun_error err = KAUN_ERROR_INIT;
  const char *dir = tmp("leaves");
  mkdir(dir, 0777);
  char path[8400];
  snprintf(path, sizeof path, "%s/all.safetensors", dir);
  ASSERT_OK(kaun_checkpoint_save(NULL, path, tree, NULL, &err), err);
  kaun_flat *f;
  ASSERT_OK(kaun_checkpoint_load_flat(NULL, path, KAUN_LOAD_COPY, &f, &err), err);
  return f;
}

/* ---- split points and the index ------------------------------------------------------ */

static void test_split_points(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_ptree *t = five();
  const char *dir = tmp("split");
  mkdir(dir, 0777);
  /* a+b+c is exactly 96: one shard; d (160) is larger than the limit: its
   * own; e starts a third */
  kaun_save_options o = save_opts(96);
  ASSERT_OK(kaun_checkpoint_save_ex(NULL, dir, t, &o, &err), err);
  char names[4096];
  listing(dir, names, sizeof names);
  CU_ASSERT_STRING_EQUAL(names,
                         "model-00001-of-00003.safetensors,model-00002-of-00003.safetensors,"
                         "model-00003-of-00003.safetensors,model.safetensors.index.json,");
  char *index = slurp(tmp("split/model.safetensors.index.json"), NULL);
  CU_ASSERT_PTR_NOT_NULL_FATAL(index);
  /* as json.dumps(index, indent=2, sort_keys=True) + "\n" */
  CU_ASSERT_STRING_EQUAL(index,
                         "{\n"
                         "  \"metadata\": {\n"
                         "    \"total_size\": 272\n"
                         "  },\n"
                         "  \"weight_map\": {\n"
                         "    \"a\": \"model-00001-of-00003.safetensors\",\n"
                         "    \"b\": \"model-00001-of-00003.safetensors\",\n"
                         "    \"c\": \"model-00001-of-00003.safetensors\",\n"
                         "    \"d\": \"model-00002-of-00003.safetensors\",\n"
                         "    \"e\": \"model-00003-of-00003.safetensors\"\n"
                         "  }\n"
                         "}\n");
  free(index);
  /* each shard holds what the index says */
  kaun_reader *r;
  ASSERT_OK(kaun_reader_open(NULL, tmp("split/model-00001-of-00003.safetensors"), &r, &err), err);
  CU_ASSERT_EQUAL(kaun_reader_count(r), 3);
  CU_ASSERT_EQUAL(kaun_reader_data_bytes(r), 96);
  kaun_reader_close(r);
  ASSERT_OK(kaun_reader_open(NULL, tmp("split/model-00002-of-00003.safetensors"), &r, &err), err);
  CU_ASSERT_EQUAL(kaun_reader_count(r), 1);
  CU_ASSERT(kaun_reader_find(r, "d") == 0);
  kaun_reader_close(r);
  /* one byte less: c moves to the second shard, d to the third */
  const char *dir2 = tmp("split95");
  mkdir(dir2, 0777);
  o = save_opts(95);
  ASSERT_OK(kaun_checkpoint_save_ex(NULL, dir2, t, &o, &err), err);
  listing(dir2, names, sizeof names);
  CU_ASSERT(strstr(names, "model-00004-of-00004.safetensors") != NULL);
  ASSERT_OK(kaun_reader_open(NULL, tmp("split95/model-00002-of-00004.safetensors"), &r, &err), err);
  CU_ASSERT_EQUAL(kaun_reader_count(r), 1);
  CU_ASSERT(kaun_reader_find(r, "c") == 0);
  kaun_reader_close(r);
  kaun_ptree_free(t);
}

static void test_index_names_escaped(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_flat *f;
  ASSERT_OK(kaun_flat_new(&f, &err), err);
  /* sorted by code point: "A\"q" < "b\\n" < "z\xc3\xa9" (U+00E9) < U+1F600 */
  ASSERT_OK(kaun_flat_add(f, "z\xc3\xa9", pattern(KAUN_DTYPE_U8, 4, 1), &err), err);
  ASSERT_OK(kaun_flat_add(f, "\xf0\x9f\x98\x80", pattern(KAUN_DTYPE_U8, 4, 2), &err), err);
  ASSERT_OK(kaun_flat_add(f, "b\\n", pattern(KAUN_DTYPE_U8, 4, 3), &err), err);
  ASSERT_OK(kaun_flat_add(f, "A\"q", pattern(KAUN_DTYPE_U8, 4, 4), &err), err);
  const char *dir = tmp("escaped");
  mkdir(dir, 0777);
  kaun_save_options o = save_opts(4);
  ASSERT_OK(kaun_checkpoint_save_flat_ex(NULL, dir, f, &o, &err), err);
  char *index = slurp(tmp("escaped/model.safetensors.index.json"), NULL);
  CU_ASSERT_PTR_NOT_NULL_FATAL(index);
  CU_ASSERT_STRING_EQUAL(index,
                         "{\n"
                         "  \"metadata\": {\n"
                         "    \"total_size\": 16\n"
                         "  },\n"
                         "  \"weight_map\": {\n"
                         "    \"A\\\"q\": \"model-00004-of-00004.safetensors\",\n"
                         "    \"b\\\\n\": \"model-00003-of-00004.safetensors\",\n"
                         "    \"z\\u00e9\": \"model-00001-of-00004.safetensors\",\n"
                         "    \"\\ud83d\\ude00\": \"model-00002-of-00004.safetensors\"\n"
                         "  }\n"
                         "}\n");
  free(index);
  /* and kaun reads the names back whole */
  kaun_flat *back;
  ASSERT_OK(kaun_checkpoint_load_flat(NULL, dir, KAUN_LOAD_COPY, &back, &err), err);
  assert_same_flat(f, back);
  kaun_flat_free(back);
  kaun_flat_free(f);
}

/* ---- a model that fits, read-back, parallel shards ------------------------------------ */

static void test_fits_one_file(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_ptree *t = five();
  const char *dir = tmp("fits");
  mkdir(dir, 0777);
  /* an earlier save's index and shards; and files that are not kaun's */
  const char *earlier[] = {"model.safetensors.index.json", "model-00001-of-00002.safetensors",
                           "model-00002-of-00002.safetensors", "model-00001-of-00002.bin",
                           "notes.txt"};
  for (int i = 0; i < 5; i++) {
    FILE *stale = fopen(tmp("fits/%s", earlier[i]), "w");
    fputs("{\"weight_map\": {}}", stale);
    fclose(stale);
  }
  kaun_save_options o = save_opts(272); /* exactly the model */
  ASSERT_OK(kaun_checkpoint_save_ex(NULL, dir, t, &o, &err), err);
  char names[4096];
  listing(dir, names, sizeof names);
  CU_ASSERT_STRING_EQUAL(names, "model-00001-of-00002.bin,model.safetensors,notes.txt,");
  /* in shards again, with another count: the two-shard files are gone */
  o = save_opts(100);
  ASSERT_OK(kaun_checkpoint_save_ex(NULL, dir, t, &o, &err), err);
  FILE *old = fopen(tmp("fits/model-00002-of-00009.safetensors"), "w");
  fclose(old);
  o = save_opts(150);
  ASSERT_OK(kaun_checkpoint_save_ex(NULL, dir, t, &o, &err), err);
  listing(dir, names, sizeof names);
  CU_ASSERT_PTR_NULL(strstr(names, "-of-00009"));
  CU_ASSERT_PTR_NOT_NULL(strstr(names, "notes.txt"));
  kaun_flat *back;
  ASSERT_OK(kaun_checkpoint_load_flat(NULL, dir, KAUN_LOAD_COPY, &back, &err), err);
  CU_ASSERT_EQUAL(kaun_flat_count(back), 5);
  kaun_flat_free(back);
  o = save_opts(272);
  ASSERT_OK(kaun_checkpoint_save_ex(NULL, dir, t, &o, &err), err);
  listing(dir, names, sizeof names);
  CU_ASSERT_STRING_EQUAL(names, "model-00001-of-00002.bin,model.safetensors,notes.txt,");
  /* the same bytes as a plain save */
  ASSERT_OK(kaun_checkpoint_save(NULL, tmp("plain.safetensors"), t, NULL, &err), err);
  CU_ASSERT(same_file(tmp("fits/model.safetensors"), tmp("plain.safetensors")));
  /* no limit: one file at the URI itself, as kaun_checkpoint_save */
  o = save_opts(0);
  ASSERT_OK(kaun_checkpoint_save_ex(NULL, tmp("nolimit.safetensors"), t, &o, &err), err);
  CU_ASSERT(same_file(tmp("nolimit.safetensors"), tmp("plain.safetensors")));
  ASSERT_OK(kaun_checkpoint_save_ex(NULL, tmp("nolimit2.safetensors"), t, NULL, &err), err);
  CU_ASSERT(same_file(tmp("nolimit2.safetensors"), tmp("plain.safetensors")));
  kaun_ptree_free(t);
}

static void test_read_back_parallel(void) {
  kaun_error err = KAUN_ERROR_INIT;
  /* 60 tensors of every size and a few dtypes, 8 shards written at once */
  kaun_ptree *t;
  ASSERT_OK(kaun_ptree_new_record(&t, &err), err);
  const kaun_dtype dts[] = {KAUN_DTYPE_F32, KAUN_DTYPE_BF16, KAUN_DTYPE_I64, KAUN_DTYPE_U8};
  for (unsigned i = 0; i < 60; i++) {
    char name[64];
    snprintf(name, sizeof name, "layers.%u.w%u", i / 3, i % 3);
    ASSERT_OK(kaun_ptree_set(t, name, pattern(dts[i % 4], 1 + (i * 37) % 1500, i), &err), err);
  }
  kaun_flat *meta;
  ASSERT_OK(kaun_flat_new(&meta, &err), err);
  ASSERT_OK(kaun_flat_set_metadata(meta, "format", "pt", &err), err);
  const char *dir = tmp("parallel");
  mkdir(dir, 0777);
  FILE *stale = fopen(tmp("parallel/model.safetensors"), "w"); /* would be read instead */
  fputs("stale", stale);
  fclose(stale);
  kaun_save_options o = save_opts(4096);
  o.metadata = meta;
  o.threads = 8;
  ASSERT_OK(kaun_checkpoint_save_ex(NULL, dir, t, &o, &err), err);
  CU_ASSERT(!exists(tmp("parallel/model.safetensors")));
  CU_ASSERT(exists(tmp("parallel/model.safetensors.index.json")));
  kaun_flat *want = leaves(t), *got;
  ASSERT_OK(kaun_checkpoint_load_flat(NULL, dir, KAUN_LOAD_COPY, &got, &err), err);
  assert_same_flat(want, got);
  /* every shard carries the metadata */
  CU_ASSERT_EQUAL(kaun_flat_metadata_count(got), 1);
  kaun_reader *r;
  ASSERT_OK(kaun_reader_open(NULL, dir, &r, &err), err);
  for (size_t i = 0; i < kaun_reader_count(r); i++) {
    kaun_reader_tensor info;
    kaun_reader_info(r, i, &info);
    kaun_reader *one;
    ASSERT_OK(kaun_reader_open(NULL, info.uri, &one, &err), err);
    CU_ASSERT_EQUAL(kaun_reader_metadata_count(one), 1);
    CU_ASSERT(kaun_reader_data_bytes(one) <= 4096 || kaun_reader_count(one) == 1);
    kaun_reader_close(one);
  }
  kaun_reader_close(r);
  kaun_flat_free(got);
  kaun_flat_free(want);
  kaun_flat_free(meta);
  kaun_ptree_free(t);
}

/* ---- failures and cancels --------------------------------------------------------------- */

static void test_failure_half_way(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_ptree *t = five();
  const char *dir = tmp("half");
  mkdir(dir, 0777);
  /* the second shard cannot be stored: a folder has its name */
  mkdir(tmp("half/model-00002-of-00003.safetensors"), 0777);
  kaun_save_options o = save_opts(96);
  kaun_error_clear(&err);
  int rc = kaun_checkpoint_save_ex(NULL, dir, t, &o, &err);
  CU_ASSERT(rc != KAUN_OK);
  CU_ASSERT_EQUAL(err.code, rc);
  if (!strstr(err.message, "model-00002-of-00003.safetensors"))
    CU_FAIL("the error does not name the shard that failed");
  /* no index, and the shards this save wrote are gone */
  char names[4096];
  listing(dir, names, sizeof names);
  CU_ASSERT_STRING_EQUAL(names, "model-00002-of-00003.safetensors,");
  kaun_ptree_free(t);
}

static void test_failure_testmem(void) {
  char path[8192];
  snprintf(path, sizeof path, "%s:%s", getenv("KAUN_TEST_PLUGINS"), getenv("KAUN_BUILT_PLUGINS"));
  setenv("KAUN_PLUGIN_PATH", path, 1);
  kaun_ptree *t = five();
  for (int fail_at = 1; fail_at <= 4; fail_at++) {
    kaun_error err = KAUN_ERROR_INIT;
    const char *dir = tmp("mem%d", fail_at);
    mkdir(dir, 0777);
    const char *config = tmp("mem%d.json", fail_at);
    FILE *f = fopen(config, "w");
    fprintf(
        f, "{\"backends\": {\"mem\": {\"plugin\": \"testmem\", \"dir\": \"%s\", \"fail_at\": %d}}}",
        dir, fail_at);
    fclose(f);
    kaun_context *ctx;
    ASSERT_OK(kaun_context_new(config, &ctx, &err), err);
    kaun_save_options o = save_opts(96);
    o.threads = 1; /* puts in order: call N is shard N, call 4 the index */
    char want[128];
    snprintf(want, sizeof want, "%s", fail_at == 4 ? "model.safetensors.index.json" : "model-0000");
    ASSERT_FAILS(kaun_checkpoint_save_ex(ctx, "mem://", t, &o, &err), err, KAUN_EIO, want);
    if (fail_at < 4) {
      snprintf(want, sizeof want, "model-%05d-of-00003.safetensors", fail_at);
      if (!strstr(err.message, want)) CU_FAIL("the error does not name the shard that failed");
    }
    CU_ASSERT(strstr(err.message, "injected failure") != NULL);
    /* never an index (testmem cannot remove: the shards written stay) */
    CU_ASSERT(!exists(tmp("mem%d/model.safetensors.index.json", fail_at)));
    if (fail_at < 4) /* the shard that failed was not stored */
      CU_ASSERT(!exists(tmp("mem%d/model-%05d-of-00003.safetensors", fail_at, fail_at)));
    kaun_context_free(ctx);
  }
  kaun_ptree_free(t);
}

static int cancel_after_first(const kaun_progress *p, void *user) {
  int *calls = user;
  (void)p;
  return ++*calls >= 2;
}

static void test_cancel(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_ptree *t = five();
  const char *dir = tmp("cancel");
  mkdir(dir, 0777);
  int calls = 0;
  kaun_io *io;
  ASSERT_OK(kaun_io_new(cancel_after_first, &calls, &io, &err), err);
  kaun_save_options o = save_opts(96);
  o.io = io;
  o.threads = 1;
  ASSERT_FAILS(kaun_checkpoint_save_ex(NULL, dir, t, &o, &err), err, KAUN_ECANCELED, "cancel");
  CU_ASSERT(calls >= 2);
  char names[4096];
  listing(dir, names, sizeof names);
  CU_ASSERT_STRING_EQUAL(names, ""); /* no index, no shard, no temporary */
  kaun_io_free(io);
  /* canceled before it starts: nothing at all */
  ASSERT_OK(kaun_io_new(NULL, NULL, &io, &err), err);
  kaun_io_cancel(io);
  o.io = io;
  o.threads = 4;
  ASSERT_FAILS(kaun_checkpoint_save_ex(NULL, dir, t, &o, &err), err, KAUN_ECANCELED, "model-0000");
  listing(dir, names, sizeof names);
  CU_ASSERT_STRING_EQUAL(names, "");
  kaun_io_free(io);
  kaun_ptree_free(t);
}

static int count_progress(const kaun_progress *p, void *user) {
  kaun_progress *last = user;
  *last = *p;
  return 0;
}

static void test_progress(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_ptree *t = five();
  const char *dir = tmp("progress");
  mkdir(dir, 0777);
  kaun_progress last;
  memset(&last, 0, sizeof last);
  kaun_io *io;
  ASSERT_OK(kaun_io_new(count_progress, &last, &io, &err), err);
  kaun_save_options o = save_opts(96);
  o.io = io;
  ASSERT_OK(kaun_checkpoint_save_ex(NULL, dir, t, &o, &err), err);
  /* every byte of the three shards and the index, against a total that adds up */
  struct stat a, b, c, d;
  stat(tmp("progress/model-00001-of-00003.safetensors"), &a);
  stat(tmp("progress/model-00002-of-00003.safetensors"), &b);
  stat(tmp("progress/model-00003-of-00003.safetensors"), &c);
  stat(tmp("progress/model.safetensors.index.json"), &d);
  uint64_t bytes = (uint64_t)(a.st_size + b.st_size + c.st_size + d.st_size);
  CU_ASSERT_EQUAL(last.done, bytes);
  CU_ASSERT_EQUAL(last.total, bytes);
  kaun_io_free(io);
  kaun_ptree_free(t);
}

static void test_bad_arguments(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_ptree *t = five();
  kaun_save_options o = save_opts(96);
  const char *file = tmp("x.safetensors");
  ASSERT_FAILS(kaun_checkpoint_save_ex(NULL, file, t, &o, &err), err, KAUN_EINVAL, "x.safetensors");
  CU_ASSERT(strstr(err.message, "folder") != NULL);
  CU_ASSERT(!exists(file));
  kaun_tensor *leaf = pattern(KAUN_DTYPE_U8, 2, 0);
  kaun_ptree *root;
  ASSERT_OK(kaun_ptree_new_leaf(leaf, &root, &err), err);
  ASSERT_FAILS(kaun_checkpoint_save_ex(NULL, tmp("root"), root, &o, &err), err, KAUN_EINVAL,
               "root");
  kaun_ptree_free(root);
  /* a plain path's folder must exist (as for any save) */
  ASSERT_FAILS(kaun_checkpoint_save_ex(NULL, tmp("missing/dir"), t, &o, &err), err, KAUN_ENOENT,
               "missing/dir");
  kaun_ptree_free(t);
}

/* ---- whole-model copies ----------------------------------------------------------------- */

static kaun_copy_options copy_opts(void) {
  kaun_copy_options o;
  memset(&o, 0, sizeof o);
  o.struct_size = sizeof o;
  return o;
}

/* The shared sharded fixture's folder in `out`; false (the test says
 * SKIPPED) when the fixtures are absent (a distcheck of its own). */
static bool fixture(char *out, size_t size) {
  struct stat sb;
  snprintf(out, size, "%s/safetensors/fluxml_sharded", getenv("KAUN_FIXTURES"));
  if (stat(out, &sb) == 0) return true;
  fprintf(stderr, "SKIPPED (no shared fixtures at %s) ", out);
  return false;
}

static void test_copy_shards_byte_for_byte(void) {
  kaun_error err = KAUN_ERROR_INIT;
  char src[4096];
  if (!fixture(src, sizeof src)) return;
  kaun_reader *r;
  ASSERT_OK(kaun_reader_open(NULL, src, &r, &err), err);
  CU_ASSERT_EQUAL(kaun_reader_is_sharded(r), 1);
  const char *dst = tmp("copy");
  mkdir(dst, 0777);
  FILE *stale = fopen(tmp("copy/model.safetensors"), "w");
  fputs("stale", stale);
  fclose(stale);
  kaun_copy_options o = copy_opts();
  o.threads = 3;
  ASSERT_OK(kaun_reader_copy_model(r, dst, &o, &err), err);
  kaun_reader_close(r);
  char names[4096];
  listing(dst, names, sizeof names);
  CU_ASSERT_STRING_EQUAL(names,
                         "model-00001-of-00006.safetensors,model-00002-of-00006.safetensors,"
                         "model-00003-of-00006.safetensors,model-00004-of-00006.safetensors,"
                         "model-00005-of-00006.safetensors,model-00006-of-00006.safetensors,"
                         "model.safetensors.index.json,");
  const char *files[] = {"model-00001-of-00006.safetensors", "model-00002-of-00006.safetensors",
                         "model-00003-of-00006.safetensors", "model-00004-of-00006.safetensors",
                         "model-00005-of-00006.safetensors", "model-00006-of-00006.safetensors",
                         "model.safetensors.index.json"};
  for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
    char a[8400];
    snprintf(a, sizeof a, "%s/%s", src, files[i]);
    if (!same_file(a, tmp("copy/%s", files[i]))) CU_FAIL(files[i]);
  }
  /* a single-file destination still means one file */
  ASSERT_OK(kaun_reader_open(NULL, src, &r, &err), err);
  ASSERT_OK(kaun_reader_copy_model(r, tmp("one.safetensors"), NULL, &err), err);
  kaun_reader_close(r);
  kaun_flat *a, *b;
  ASSERT_OK(kaun_checkpoint_load_flat(NULL, src, KAUN_LOAD_COPY, &a, &err), err);
  ASSERT_OK(kaun_checkpoint_load_flat(NULL, tmp("one.safetensors"), KAUN_LOAD_COPY, &b, &err), err);
  assert_same_flat(a, b);
  kaun_flat_free(b);
  /* re-saved in shards, and cast: one shard read at a time */
  ASSERT_OK(kaun_reader_open(NULL, src, &r, &err), err);
  o = copy_opts();
  o.max_shard_size = 600;
  mkdir(tmp("resharded"), 0777);
  ASSERT_OK(kaun_reader_copy_model(r, tmp("resharded"), &o, &err), err);
  kaun_reader_close(r);
  ASSERT_OK(kaun_checkpoint_load_flat(NULL, tmp("resharded"), KAUN_LOAD_COPY, &b, &err), err);
  assert_same_flat(a, b);
  kaun_flat_free(b);
  ASSERT_OK(kaun_reader_open(NULL, src, &r, &err), err);
  o.cast = 1;
  o.dtype = KAUN_DTYPE_F32;
  mkdir(tmp("cast"), 0777);
  ASSERT_OK(kaun_reader_copy_model(r, tmp("cast"), &o, &err), err);
  kaun_reader_close(r);
  ASSERT_OK(kaun_checkpoint_load_flat(NULL, tmp("cast"), KAUN_LOAD_COPY, &b, &err), err);
  CU_ASSERT_EQUAL(kaun_flat_count(a), kaun_flat_count(b));
  for (size_t i = 0; i < kaun_flat_count(a); i++) {
    const kaun_tensor *x = kaun_flat_tensor(a, i);
    const kaun_tensor *y = kaun_flat_find(b, kaun_flat_name(a, i));
    CU_ASSERT_PTR_NOT_NULL_FATAL(y);
    kaun_dtype dt = kaun_tensor_dtype(x);
    bool floating = kaun_dtype_is_float(dt) && kaun_dtype_can_cast(dt);
    CU_ASSERT_EQUAL(kaun_tensor_dtype(y), floating ? KAUN_DTYPE_F32 : dt);
    kaun_tensor *c;
    ASSERT_OK(kaun_tensor_cast(x, kaun_tensor_dtype(y), &c, &err), err);
    CU_ASSERT(memcmp(kaun_tensor_data(c), kaun_tensor_data(y), kaun_tensor_nbytes(c)) == 0);
    kaun_tensor_free(c);
  }
  kaun_flat_free(b);
  /* cast without a shard size: shard by shard, the source's grouping kept */
  ASSERT_OK(kaun_reader_open(NULL, src, &r, &err), err);
  o = copy_opts();
  o.cast = 1;
  o.dtype = KAUN_DTYPE_F32;
  mkdir(tmp("cast-kept"), 0777);
  ASSERT_OK(kaun_reader_copy_model(r, tmp("cast-kept"), &o, &err), err);
  kaun_reader *from = r, *to;
  ASSERT_OK(kaun_reader_open(NULL, tmp("cast-kept"), &to, &err), err);
  CU_ASSERT_TRUE(kaun_reader_is_sharded(to));
  CU_ASSERT_EQUAL(kaun_reader_count(to), kaun_reader_count(from));
  for (size_t i = 0; i < kaun_reader_count(from); i++) {
    kaun_reader_tensor x, y;
    kaun_reader_info(from, i, &x);
    long j = kaun_reader_find(to, x.name);
    CU_ASSERT_FATAL(j >= 0);
    kaun_reader_info(to, (size_t)j, &y);
    /* model-0000K-of-00006 in, model-0000K-of-00006 out */
    const char *xs = strrchr(x.uri, '/'), *ys = strrchr(y.uri, '/');
    CU_ASSERT_STRING_EQUAL(xs, ys);
  }
  kaun_reader_close(to);
  kaun_reader_close(from);
  ASSERT_OK(kaun_checkpoint_load_flat(NULL, tmp("cast-kept"), KAUN_LOAD_COPY, &b, &err), err);
  CU_ASSERT_EQUAL(kaun_flat_count(a), kaun_flat_count(b));
  kaun_flat_free(b);
  kaun_flat_free(a);
}

static void test_copy_failure(void) {
  kaun_error err = KAUN_ERROR_INIT;
  char src[4096];
  if (!fixture(src, sizeof src)) return;
  const char *dst = tmp("copyfail");
  mkdir(dst, 0777);
  mkdir(tmp("copyfail/model-00004-of-00006.safetensors"), 0777);
  kaun_reader *r;
  ASSERT_OK(kaun_reader_open(NULL, src, &r, &err), err);
  kaun_error_clear(&err);
  int rc = kaun_reader_copy_model(r, dst, NULL, &err);
  CU_ASSERT(rc != KAUN_OK);
  CU_ASSERT_EQUAL(err.code, rc);
  if (!strstr(err.message, "model-00004-of-00006.safetensors"))
    CU_FAIL("the error does not name the shard that failed");
  char names[4096];
  listing(dst, names, sizeof names);
  CU_ASSERT_STRING_EQUAL(names, "model-00004-of-00006.safetensors,");
  /* canceled: nothing left */
  rmdir(tmp("copyfail/model-00004-of-00006.safetensors"));
  kaun_io *io;
  ASSERT_OK(kaun_io_new(NULL, NULL, &io, &err), err);
  kaun_io_cancel(io);
  kaun_copy_options o = copy_opts();
  o.io = io;
  ASSERT_FAILS(kaun_reader_copy_model(r, dst, &o, &err), err, KAUN_ECANCELED, "canceled");
  listing(dst, names, sizeof names);
  CU_ASSERT_STRING_EQUAL(names, "");
  kaun_io_free(io);
  /* a dtype that is not a float */
  o = copy_opts();
  o.cast = 1;
  o.dtype = KAUN_DTYPE_I32;
  ASSERT_FAILS(kaun_reader_copy_model(r, dst, &o, &err), err, KAUN_EINVAL, "I32");
  kaun_reader_close(r);
}

int main(void) {
  char tmpl[] = "/tmp/kaun-shard-XXXXXX";
  if (!mkdtemp(tmpl)) return 1;
  snprintf(tmp_root, sizeof tmp_root, "%s", tmpl);
  if (!getenv("KAUN_FIXTURES")) setenv("KAUN_FIXTURES", "../shared/fixtures", 1);
  if (CU_initialize_registry() != CUE_SUCCESS) return 1;
  CU_pSuite s = CU_add_suite("sharded saves", NULL, NULL);
  CU_add_test(s, "split points", test_split_points);
  CU_add_test(s, "index names escaped as json.dumps", test_index_names_escaped);
  CU_add_test(s, "a model that fits is one file", test_fits_one_file);
  CU_add_test(s, "read back, parallel shards", test_read_back_parallel);
  CU_add_test(s, "failure half-way", test_failure_half_way);
  CU_add_test(s, "failure on the Nth put (testmem)", test_failure_testmem);
  CU_add_test(s, "cancel", test_cancel);
  CU_add_test(s, "progress", test_progress);
  CU_add_test(s, "bad arguments", test_bad_arguments);
  CU_pSuite c = CU_add_suite("whole-model copies", NULL, NULL);
  CU_add_test(c, "shards byte for byte, re-sharded, cast", test_copy_shards_byte_for_byte);
  CU_add_test(c, "failure and cancel", test_copy_failure);
  int rc = check_run_all();
  check_remove_tree(tmp_root);
  return rc;
}
