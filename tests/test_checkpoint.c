/* Checkpoints: templates, casts, sharding, zero copy, atomic saves. */
#include <dirent.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "unit.h"

static kaun_tensor *filled(kaun_dtype d, size_t ndim, const uint64_t *shape, float start) {
  kaun_tensor *f, *t;
  if (kaun_tensor_new(KAUN_DTYPE_F32, ndim, shape, &f, NULL)) abort();
  float *v;
  if (kaun_tensor_data_mut(f, (void **)&v, NULL)) abort();
  for (uint64_t i = 0; i < kaun_tensor_numel(f); i++) v[i] = start + (float)i;
  if (kaun_tensor_cast(f, d, &t, NULL)) abort();
  kaun_tensor_free(f);
  return t;
}

/* params: {w: F32[2,3], layers: [{b: F32[3]}, {b: F32[3]}], step: I64[1]} */
static kaun_ptree *make_tree(void) {
  kaun_ptree *t;
  const uint64_t s23[] = {2, 3}, s3[] = {3}, s1[] = {1};
  if (kaun_ptree_new_record(&t, NULL)) abort();
  if (kaun_ptree_set(t, "w", filled(KAUN_DTYPE_F32, 2, s23, 0.5f), NULL)) abort();
  if (kaun_ptree_set(t, "layers.0.b", filled(KAUN_DTYPE_F32, 1, s3, 10), NULL)) abort();
  if (kaun_ptree_set(t, "layers.1.b", filled(KAUN_DTYPE_F32, 1, s3, 20), NULL)) abort();
  if (kaun_ptree_set(t, "step", filled(KAUN_DTYPE_I64, 1, s1, 7), NULL)) abort();
  return t;
}

static const kaun_tensor *at(const kaun_ptree *t, const char *path) {
  kaun_ptree *n;
  if (kaun_ptree_get(t, path, &n, NULL)) return NULL;
  return kaun_ptree_tensor(n);
}

static void test_save_load_with_template(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_ptree *tree = make_tree(), *out;
  const char *path = tmp_path("params.safetensors");
  ASSERT_OK(kaun_checkpoint_save(NULL, path, tree, NULL, &err), err);
  ASSERT_OK(kaun_checkpoint_load(NULL, path, tree, 0, &out, &err), err);
  const kaun_tensor *w = at(out, "w");
  CU_ASSERT_PTR_NOT_NULL_FATAL(w);
  CU_ASSERT_TRUE(kaun_tensor_is_view(w)); /* same dtype: zero copy */
  CU_ASSERT_EQUAL(((const float *)kaun_tensor_data(w))[5], 5.5f);
  CU_ASSERT_EQUAL(kaun_ptree_kind_of(kaun_ptree_find(out, "layers")), KAUN_PTREE_LIST);
  CU_ASSERT_EQUAL(((const float *)kaun_tensor_data(at(out, "layers.1.b")))[2], 22.0f);
  CU_ASSERT_EQUAL(*(const int64_t *)kaun_tensor_data(at(out, "step")), 7);
  kaun_ptree_free(out);
  /* KAUN_LOAD_COPY gives owned memory with the same bytes */
  ASSERT_OK(kaun_checkpoint_load(NULL, path, tree, KAUN_LOAD_COPY, &out, &err), err);
  CU_ASSERT_FALSE(kaun_tensor_is_view(at(out, "w")));
  CU_ASSERT_EQUAL(memcmp(kaun_tensor_data(at(out, "w")), kaun_tensor_data(at(tree, "w")), 24), 0);
  kaun_ptree_free(out);
  kaun_ptree_free(tree);
}

static void test_template_casts_and_ignores_extras(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_ptree *tree = make_tree(), *like, *out;
  const char *path = tmp_path("cast.safetensors");
  ASSERT_OK(kaun_checkpoint_save(NULL, path, tree, NULL, &err), err);
  const uint64_t s23[] = {2, 3};
  ASSERT_OK(kaun_ptree_new_record(&like, &err), err);
  ASSERT_OK(kaun_ptree_set(like, "w", filled(KAUN_DTYPE_BF16, 2, s23, 0), &err), err);
  ASSERT_OK(kaun_checkpoint_load(NULL, path, like, 0, &out, &err), err);
  const kaun_tensor *w = at(out, "w");
  CU_ASSERT_EQUAL(kaun_tensor_dtype(w), KAUN_DTYPE_BF16);
  CU_ASSERT_FALSE(kaun_tensor_is_view(w));
  CU_ASSERT_EQUAL(((const uint16_t *)kaun_tensor_data(w))[0], 0x3F00); /* 0.5 */
  CU_ASSERT_EQUAL(kaun_ptree_count(out), 1); /* extras in the file are ignored */
  kaun_ptree_free(out);
  kaun_ptree_free(like);
  kaun_ptree_free(tree);
}

static void test_template_errors(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_ptree *tree = make_tree(), *like, *out;
  const char *path = tmp_path("errors.safetensors");
  ASSERT_OK(kaun_checkpoint_save(NULL, path, tree, NULL, &err), err);
  const uint64_t s32[] = {3, 2}, s1[] = {1};
  ASSERT_OK(kaun_ptree_new_record(&like, &err), err);
  ASSERT_OK(kaun_ptree_set(like, "w", filled(KAUN_DTYPE_F32, 2, s32, 0), &err), err);
  ASSERT_FAILS(kaun_checkpoint_load(NULL, path, like, 0, &out, &err), err, KAUN_ESHAPE,
               "tensor 'w' has shape [2, 3] in the file but [3, 2] in the template");
  CU_ASSERT_PTR_NULL(out);
  kaun_ptree_free(like);
  ASSERT_OK(kaun_ptree_new_record(&like, &err), err);
  ASSERT_OK(kaun_ptree_set(like, "missing.a", filled(KAUN_DTYPE_F32, 1, s1, 0), &err), err);
  ASSERT_FAILS(kaun_checkpoint_load(NULL, path, like, 0, &out, &err), err, KAUN_EKEY,
               "tensor 'missing.a' is not in the checkpoint");
  ASSERT_OK(kaun_ptree_set(like, "missing.b", filled(KAUN_DTYPE_F32, 1, s1, 0), &err), err);
  ASSERT_OK(kaun_ptree_set(like, "missing.c", filled(KAUN_DTYPE_F32, 1, s1, 0), &err), err);
  ASSERT_FAILS(kaun_checkpoint_load(NULL, path, like, 0, &out, &err), err, KAUN_EKEY,
               "and 2 more are missing");
  kaun_ptree_free(like);
  /* a cast kaun cannot do names the tensor and the file */
  ASSERT_OK(kaun_ptree_new_record(&like, &err), err);
  const uint64_t s23[] = {2, 3};
  kaun_tensor *odd;
  ASSERT_OK(kaun_tensor_new(KAUN_DTYPE_C64, 2, s23, &odd, &err), err);
  ASSERT_OK(kaun_ptree_set(like, "w", odd, &err), err);
  ASSERT_FAILS(kaun_checkpoint_load(NULL, path, like, 0, &out, &err), err, KAUN_ENOTSUP,
               "tensor 'w' in '");
  kaun_ptree_free(like);
  ASSERT_OK(kaun_ptree_new_leaf(filled(KAUN_DTYPE_F32, 1, s1, 0), &like, &err), err);
  ASSERT_FAILS(kaun_checkpoint_load(NULL, path, like, 0, &out, &err), err, KAUN_EINVAL, "root");
  ASSERT_FAILS(kaun_checkpoint_save(NULL, path, like, NULL, &err), err, KAUN_EINVAL, "root");
  ASSERT_FAILS(kaun_checkpoint_load(NULL, "/nonexistent/ckpt", tree, 0, &out, &err), err,
               KAUN_ENOENT, "/nonexistent/ckpt");
  kaun_ptree_free(like);
  kaun_ptree_free(tree);
}

/* A name map (kaun_load_options.names) fills a template whose paths are
 * not the file's names, reading only the tensors it maps to. */
static void test_template_with_name_map(void) {
  kaun_error err = KAUN_ERROR_INIT;
  const uint64_t s23[] = {2, 3}, s4[] = {4};
  kaun_ptree *file, *like, *out;
  ASSERT_OK(kaun_ptree_new_record(&file, &err), err);
  ASSERT_OK(kaun_ptree_set(file, "bert.encoder.layer.0.attention.self.query.weight",
                           filled(KAUN_DTYPE_F32, 2, s23, 1), &err),
            err);
  ASSERT_OK(kaun_ptree_set(file, "bert.encoder.layer.0.attention.self.key.weight",
                           filled(KAUN_DTYPE_F32, 2, s23, 100), &err),
            err);
  ASSERT_OK(kaun_ptree_set(file, "cls.bias", filled(KAUN_DTYPE_F32, 1, s4, 0), &err), err);
  const char *path = tmp_path("bert.safetensors");
  ASSERT_OK(kaun_checkpoint_save(NULL, path, file, NULL, &err), err);
  kaun_ptree_free(file);

  ASSERT_OK(kaun_ptree_new_record(&like, &err), err);
  ASSERT_OK(kaun_ptree_set(like, "encoder.layers.0.query.weight",
                           filled(KAUN_DTYPE_BF16, 2, s23, 0), &err),
            err);
  ASSERT_OK(
      kaun_ptree_set(like, "encoder.layers.0.key.weight", filled(KAUN_DTYPE_F32, 2, s23, 0), &err),
      err);
  const kaun_rename renames[] = {{"encoder.layer.", "encoder.layers."}, {".attention.self.", "."}};
  kaun_name_map map = {sizeof map, "bert.", NULL, renames, 2};
  kaun_load_options o = {.struct_size = sizeof o, .names = &map};
  ASSERT_OK(kaun_checkpoint_load_ex(NULL, path, like, &o, &out, &err), err);
  const kaun_tensor *q = at(out, "encoder.layers.0.query.weight");
  const kaun_tensor *k = at(out, "encoder.layers.0.key.weight");
  CU_ASSERT_PTR_NOT_NULL_FATAL(q);
  CU_ASSERT_PTR_NOT_NULL_FATAL(k);
  CU_ASSERT_EQUAL(kaun_tensor_dtype(q), KAUN_DTYPE_BF16); /* cast to the template's dtype */
  CU_ASSERT_EQUAL(((const uint16_t *)kaun_tensor_data(q))[1], 0x4000); /* 2.0 */
  CU_ASSERT_EQUAL(((const float *)kaun_tensor_data(k))[5], 105.0f);
  CU_ASSERT_EQUAL(kaun_ptree_count(out), 1); /* "encoder" only: cls.bias is not asked for */
  kaun_ptree_free(out);

  /* a flat load returns the mapped names */
  kaun_flat *flat;
  ASSERT_OK(kaun_checkpoint_load_flat_ex(NULL, path, &o, &flat, &err), err);
  CU_ASSERT_PTR_NOT_NULL(kaun_flat_find(flat, "encoder.layers.0.query.weight"));
  CU_ASSERT_PTR_NOT_NULL(kaun_flat_find(flat, "cls.bias")); /* no rule applies: as it is */
  CU_ASSERT_PTR_NULL(kaun_flat_find(flat, "bert.encoder.layer.0.attention.self.query.weight"));
  kaun_flat_free(flat);

  /* a template path no tensor maps to names the closest mapped names and
   * the file names they came from */
  ASSERT_OK(kaun_ptree_set(like, "encoder.layers.0.value.weight", filled(KAUN_DTYPE_F32, 2, s23, 0),
                           &err),
            err);
  ASSERT_FAILS(kaun_checkpoint_load_ex(NULL, path, like, &o, &out, &err), err, KAUN_EKEY,
               "no tensor maps to the template's 'encoder.layers.0.value.weight'");
  CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "(from 'bert.encoder.layer.0.attention.self."));
  CU_ASSERT_PTR_NULL(out);
  /* without a map (or from code built before the field existed: a
   * struct_size that stops short of it), the file's own names count */
  o.struct_size = offsetof(kaun_load_options, names);
  ASSERT_FAILS(kaun_checkpoint_load_ex(NULL, path, like, &o, &out, &err), err, KAUN_EKEY,
               "the template's tensor 'encoder.layers.0.query.weight' is not in the checkpoint");
  CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "(and 2 more are missing); the closest are '"));
  kaun_ptree_free(like);

  /* two file names sent to one template path: refused, both named */
  const kaun_rename clash[] = {{"query", "qk"}, {"key", "qk"}};
  kaun_name_map bad = {sizeof bad, "bert.", NULL, clash, 2};
  kaun_load_options ob = {.struct_size = sizeof ob, .names = &bad};
  ASSERT_OK(kaun_ptree_new_record(&like, &err), err);
  ASSERT_OK(kaun_ptree_set(like, "encoder.layer.0.attention.self.qk.weight",
                           filled(KAUN_DTYPE_F32, 2, s23, 0), &err),
            err);
  ASSERT_FAILS(kaun_checkpoint_load_ex(NULL, path, like, &ob, &out, &err), err, KAUN_EINVAL,
               "sends both 'bert.encoder.layer.0.attention.self.key.weight' and "
               "'bert.encoder.layer.0.attention.self.query.weight'");
  kaun_ptree_free(like);
}

/* Names with a NUL byte map to nothing (never cut at the NUL); a flat load
 * whose map sends two names to one is refused naming both; a shape error
 * under a map names the file's name too. */
static void test_name_map_edges(void) {
  kaun_error err = KAUN_ERROR_INIT;
  const uint64_t s4[] = {4}, s2[] = {2};
  kaun_flat *file;
  ASSERT_OK(kaun_flat_new(&file, &err), err);
  ASSERT_OK(kaun_flat_add_n(file, "bert.w\0evil", 11, filled(KAUN_DTYPE_F32, 1, s4, 100), &err),
            err);
  ASSERT_OK(kaun_flat_add(file, "bert.w", filled(KAUN_DTYPE_F32, 1, s4, 1), &err), err);
  ASSERT_OK(kaun_flat_add(file, "other.w", filled(KAUN_DTYPE_F32, 1, s4, 7), &err), err);
  const char *path = tmp_path("nul-names.safetensors");
  ASSERT_OK(kaun_safetensors_save(NULL, path, file, &err), err);
  kaun_flat_free(file);
  kaun_name_map strip = {sizeof strip, "bert.", NULL, NULL, 0};
  kaun_load_options o = {.struct_size = sizeof o, .names = &strip};
  /* the template's "w" is bert.w, not the name with a NUL */
  kaun_ptree *like, *out;
  ASSERT_OK(kaun_ptree_new_record(&like, &err), err);
  ASSERT_OK(kaun_ptree_set(like, "w", filled(KAUN_DTYPE_F32, 1, s4, 0), &err), err);
  ASSERT_OK(kaun_checkpoint_load_ex(NULL, path, like, &o, &out, &err), err);
  CU_ASSERT_EQUAL(((const float *)kaun_tensor_data(at(out, "w")))[0], 1.0f);
  kaun_ptree_free(out);
  kaun_ptree_free(like);
  /* a flat load keeps the NUL name whole */
  kaun_flat *flat;
  ASSERT_OK(kaun_checkpoint_load_flat_ex(NULL, path, &o, &flat, &err), err);
  CU_ASSERT_EQUAL(kaun_flat_count(flat), 3);
  bool whole = false;
  for (size_t i = 0; i < kaun_flat_count(flat); i++)
    whole |= kaun_flat_name_length(flat, i) == 11 &&
             memcmp(kaun_flat_name(flat, i), "bert.w\0evil", 11) == 0;
  CU_ASSERT_TRUE(whole);
  kaun_flat_free(flat);
  /* two names mapped to one: the flat load says which */
  const kaun_rename both[] = {{"other.", "bert."}};
  kaun_name_map clash = {sizeof clash, NULL, NULL, both, 1};
  o.names = &clash;
  ASSERT_FAILS(kaun_checkpoint_load_flat_ex(NULL, path, &o, &flat, &err), err, KAUN_EINVAL,
               "sends both 'bert.w' and 'other.w' to 'bert.w'");
  /* a shape that differs, under a map: both names */
  o.names = &strip;
  ASSERT_OK(kaun_ptree_new_record(&like, &err), err);
  ASSERT_OK(kaun_ptree_set(like, "w", filled(KAUN_DTYPE_F32, 1, s2, 0), &err), err);
  ASSERT_FAILS(kaun_checkpoint_load_ex(NULL, path, like, &o, &out, &err), err, KAUN_ESHAPE,
               "tensor 'w' (the file's 'bert.w') has shape [4]");
  kaun_ptree_free(like);
}

/* Params and optimizer state go to two files; a training run resumes from
 * them and its updates never touch the files. */
static void test_params_and_state_resume(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_ptree *params = make_tree(), *state, *p2, *s2;
  const uint64_t s23[] = {2, 3};
  ASSERT_OK(kaun_ptree_new_record(&state, &err), err);
  ASSERT_OK(kaun_ptree_set(state, "adam.m.w", filled(KAUN_DTYPE_F32, 2, s23, 0), &err), err);
  ASSERT_OK(kaun_ptree_set(state, "adam.v.w", filled(KAUN_DTYPE_F32, 2, s23, 1), &err), err);
  kaun_flat *meta;
  ASSERT_OK(kaun_flat_new(&meta, &err), err);
  ASSERT_OK(kaun_flat_set_metadata(meta, "epoch", "3", &err), err);
  const char *pp = tmp_path("resume-params.safetensors"),
             *sp = tmp_path("resume-state.safetensors");
  ASSERT_OK(kaun_checkpoint_save(NULL, pp, params, meta, &err), err);
  ASSERT_OK(kaun_checkpoint_save(NULL, sp, state, NULL, &err), err);
  ASSERT_OK(kaun_checkpoint_load(NULL, pp, params, 0, &p2, &err), err);
  ASSERT_OK(kaun_checkpoint_load(NULL, sp, state, 0, &s2, &err), err);
  kaun_flat *flat;
  ASSERT_OK(kaun_checkpoint_load_flat(NULL, pp, 0, &flat, &err), err);
  CU_ASSERT_STRING_EQUAL(kaun_flat_metadata_get(flat, "epoch"), "3");
  kaun_flat_free(flat);
  /* one "training step" on the loaded, zero-copy weights */
  kaun_ptree *wnode;
  ASSERT_OK(kaun_ptree_get(p2, "w", &wnode, &err), err);
  float *w;
  ASSERT_OK(kaun_tensor_data_mut(kaun_ptree_tensor(wnode), (void **)&w, &err), err);
  w[0] = -100.0f;
  ASSERT_OK(kaun_checkpoint_save(NULL, tmp_path("resume-step2.safetensors"), p2, NULL, &err), err);
  kaun_ptree *orig;
  ASSERT_OK(kaun_checkpoint_load(NULL, pp, params, 0, &orig, &err), err);
  CU_ASSERT_EQUAL(((const float *)kaun_tensor_data(at(orig, "w")))[0], 0.5f);
  kaun_ptree *step2;
  ASSERT_OK(
      kaun_checkpoint_load(NULL, tmp_path("resume-step2.safetensors"), params, 0, &step2, &err),
      err);
  CU_ASSERT_EQUAL(((const float *)kaun_tensor_data(at(step2, "w")))[0], -100.0f);
  CU_ASSERT_EQUAL(((const float *)kaun_tensor_data(at(s2, "adam.v.w")))[5], 6.0f);
  kaun_ptree_free(orig);
  kaun_ptree_free(step2);
  kaun_ptree_free(p2);
  kaun_ptree_free(s2);
  kaun_ptree_free(params);
  kaun_ptree_free(state);
  kaun_flat_free(meta);
}

/* Views keep the file mapped after the list and the source are gone. */
static void test_views_outlive_their_load(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_ptree *tree = make_tree(), *loaded;
  const char *path = tmp_path("outlive.safetensors");
  ASSERT_OK(kaun_checkpoint_save(NULL, path, tree, NULL, &err), err);
  kaun_flat *flat;
  ASSERT_OK(kaun_checkpoint_load_flat(NULL, path, 0, &flat, &err), err);
  size_t wi = 0;
  for (size_t i = 0; i < kaun_flat_count(flat); i++)
    if (strcmp(kaun_flat_name(flat, i), "w") == 0) wi = i;
  kaun_tensor *w = kaun_flat_take(flat, wi);
  kaun_flat_free(flat);
  unlink(path); /* even the file name may go */
  CU_ASSERT_EQUAL(((const float *)kaun_tensor_data(w))[1], 1.5f);
  kaun_tensor_free(w);
  ASSERT_OK(kaun_checkpoint_save(NULL, path, tree, NULL, &err), err);
  ASSERT_OK(kaun_checkpoint_load_tree(NULL, path, 0, &loaded, &err), err);
  CU_ASSERT_EQUAL(kaun_ptree_kind_of(kaun_ptree_find(loaded, "layers")), KAUN_PTREE_LIST);
  kaun_ptree_free(tree);
  CU_ASSERT_EQUAL(((const float *)kaun_tensor_data(at(loaded, "layers.0.b")))[0], 10.0f);
  kaun_ptree_free(loaded);
}

/* A header whose length is not a multiple of 8 leaves data unaligned:
 * the loader copies instead of handing out a misaligned view. */
static void test_unaligned_data_is_copied(void) {
  kaun_error err = KAUN_ERROR_INIT;
  const char *hdr = "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
  size_t len;
  unsigned char *b = make_st(hdr, 8, &len);
  CU_ASSERT_NOT_EQUAL(strlen(hdr) % 4, 0);
  const float v[] = {1.25f, -2.0f};
  memcpy(b + len - 8, v, 8);
  const char *path = tmp_path("unaligned.safetensors");
  write_all(path, b, len);
  free(b);
  kaun_flat *flat;
  ASSERT_OK(kaun_checkpoint_load_flat(NULL, path, 0, &flat, &err), err);
  const kaun_tensor *x = kaun_flat_tensor(flat, 0);
  CU_ASSERT_EQUAL((uintptr_t)kaun_tensor_data(x) % 4, 0);
  CU_ASSERT_EQUAL(memcmp(kaun_tensor_data(x), v, 8), 0);
  kaun_flat_free(flat);
}

/* Large enough that the copy path splits into chunks over threads. */
static void test_parallel_copy_load(void) {
  kaun_error err = KAUN_ERROR_INIT;
  const uint64_t shape[] = {6 * 1024 * 1024 + 3}; /* 24 MiB + 12 bytes of F32 */
  kaun_ptree *tree;
  ASSERT_OK(kaun_ptree_new_record(&tree, &err), err);
  ASSERT_OK(kaun_ptree_set(tree, "big", filled(KAUN_DTYPE_F32, 1, shape, 0), &err), err);
  const char *path = tmp_path("big.safetensors");
  ASSERT_OK(kaun_checkpoint_save(NULL, path, tree, NULL, &err), err);
  kaun_ptree *out;
  ASSERT_OK(kaun_checkpoint_load(NULL, path, tree, KAUN_LOAD_COPY, &out, &err), err);
  const kaun_tensor *a = at(tree, "big"), *b = at(out, "big");
  CU_ASSERT_FALSE(kaun_tensor_is_view(b));
  CU_ASSERT_EQUAL(memcmp(kaun_tensor_data(a), kaun_tensor_data(b), kaun_tensor_nbytes(a)), 0);
  kaun_ptree_free(out);
  kaun_ptree_free(tree);
}

static bool dir_has_temp_files(const char *dir) {
  DIR *d = opendir(dir);
  struct dirent *e;
  bool found = false;
  while (d && (e = readdir(d)))
    if (strstr(e->d_name, ".kaun-tmp-")) found = true;
  if (d) closedir(d);
  return found;
}

/* A write that fails half-way (file size limit, as on a full disk)
 * reports the error and leaves the previous file intact. */
static void test_atomic_save_on_write_failure(void) {
  kaun_error err = KAUN_ERROR_INIT;
  const char *dir = tmp_path("atomic");
  mkdir(dir, 0755);
  char path[4200];
  snprintf(path, sizeof path, "%s/model.safetensors", dir);
  kaun_ptree *small = make_tree(), *big;
  ASSERT_OK(kaun_checkpoint_save(NULL, path, small, NULL, &err), err);
  size_t before_len;
  unsigned char *before = read_all(path, &before_len);
  ASSERT_OK(kaun_ptree_new_record(&big, &err), err);
  const uint64_t shape[] = {1 << 20};
  ASSERT_OK(kaun_ptree_set(big, "x", filled(KAUN_DTYPE_F32, 1, shape, 0), &err), err);
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit rl = {64 * 1024, 64 * 1024};
    setrlimit(RLIMIT_FSIZE, &rl);
    kaun_error e = KAUN_ERROR_INIT;
    int rc = kaun_checkpoint_save(NULL, path, big, NULL, &e);
    bool ok = rc == KAUN_EIO && e.code == KAUN_EIO && strstr(e.message, path) &&
              strstr(e.message, "left it unchanged");
    if (!ok) fprintf(stderr, "\n  child: rc=%d message=%s\n", rc, e.message);
    _exit(ok ? 0 : 1);
  }
  int status;
  waitpid(pid, &status, 0);
  CU_ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  size_t after_len;
  unsigned char *after = read_all(path, &after_len);
  CU_ASSERT_EQUAL(before_len, after_len);
  CU_ASSERT_TRUE(after && memcmp(before, after, before_len) == 0);
  CU_ASSERT_FALSE(dir_has_temp_files(dir));
  free(before);
  free(after);
  /* saving into a directory that does not exist */
  ASSERT_FAILS(kaun_checkpoint_save(NULL, "/nonexistent-dir/m.safetensors", small, NULL, &err), err,
               KAUN_ENOENT, "/nonexistent-dir");
  /* saving to a directory writes model.safetensors inside it */
  ASSERT_OK(kaun_checkpoint_save(NULL, dir, big, NULL, &err), err);
  kaun_flat *flat;
  ASSERT_OK(kaun_checkpoint_load_flat(NULL, path, 0, &flat, &err), err);
  CU_ASSERT_PTR_NOT_NULL(kaun_flat_find(flat, "x"));
  kaun_flat_free(flat);
  kaun_ptree_free(small);
  kaun_ptree_free(big);
}

static void write_text(const char *path, const char *text) { write_all(path, text, strlen(text)); }

/* A sharded checkpoint made here: two shards and an index. */
static const char *make_sharded(const char *name) {
  kaun_error err = KAUN_ERROR_INIT;
  const char *dir = tmp_path(name);
  mkdir(dir, 0755);
  const uint64_t s2[] = {2};
  char p[4200];
  for (int k = 0; k < 2; k++) {
    kaun_ptree *t;
    if (kaun_ptree_new_record(&t, &err)) abort();
    kaun_ptree_set(t, k ? "b" : "a", filled(KAUN_DTYPE_F32, 1, s2, (float)k * 10), &err);
    snprintf(p, sizeof p, "%s/part-%d.safetensors", dir, k);
    if (kaun_checkpoint_save(NULL, p, t, NULL, &err)) abort();
    kaun_ptree_free(t);
  }
  return dir;
}

static void test_sharded_index_errors(void) {
  kaun_error err = KAUN_ERROR_INIT;
  const char *dir = make_sharded("shards");
  char index[4200];
  snprintf(index, sizeof index, "%s/model.safetensors.index.json", dir);
  kaun_flat *flat;
  write_text(index,
             "{\"weight_map\": {\"a\": \"part-0.safetensors\", \"b\": \"part-1.safetensors\"}}");
  ASSERT_OK(kaun_checkpoint_load_flat(NULL, dir, 0, &flat, &err), err);
  CU_ASSERT_EQUAL(kaun_flat_count(flat), 2);
  CU_ASSERT_EQUAL(((const float *)kaun_tensor_data(kaun_flat_find(flat, "b")))[1], 11.0f);
  kaun_flat_free(flat);
  write_text(index, "{\"metadata\": {}}");
  ASSERT_FAILS(kaun_checkpoint_load_flat(NULL, dir, 0, &flat, &err), err, KAUN_EINDEX,
               "weight_map");
  write_text(index, "{\"weight_map\": {\"a\": \"part-1.safetensors\"}}");
  ASSERT_FAILS(kaun_checkpoint_load_flat(NULL, dir, 0, &flat, &err), err, KAUN_EINDEX,
               "puts tensor 'a' in");
  write_text(index, "{\"weight_map\": {\"a\": \"../part-0.safetensors\"}}");
  ASSERT_FAILS(kaun_checkpoint_load_flat(NULL, index, 0, &flat, &err), err, KAUN_EINDEX,
               "line 1: the shard of tensor 'a'");
  write_text(index, "{\"weight_map\": {\"a\": \"gone.safetensors\"}}");
  ASSERT_FAILS(kaun_checkpoint_load_flat(NULL, index, 0, &flat, &err), err, KAUN_ENOENT,
               "gone.safetensors");
  write_text(index, "{\"weight_map\": {\"a\": \"part-0.safetensors\",\n\"a\": \"x\"}}");
  ASSERT_FAILS(kaun_checkpoint_load_flat(NULL, index, 0, &flat, &err), err, KAUN_EINDEX,
               "line 2: duplicate key");
  write_text(index, "{\"weight_map\": [}");
  ASSERT_FAILS(kaun_checkpoint_load_flat(NULL, index, 0, &flat, &err), err, KAUN_EINDEX,
               "model.safetensors.index.json: line 1");
  const char *empty = tmp_path("empty-dir");
  mkdir(empty, 0755);
  ASSERT_FAILS(kaun_checkpoint_load_flat(NULL, empty, 0, &flat, &err), err, KAUN_ENOENT,
               "is a directory without model.safetensors");
  /* a corrupt shard is reported with the index that led to it */
  write_text(index,
             "{\"weight_map\": {\"a\": \"part-0.safetensors\", \"b\": \"bad.safetensors\"}}");
  char bad[4200];
  snprintf(bad, sizeof bad, "%s/bad.safetensors", dir);
  write_all(bad, "\x10\0\0\0\0\0\0\0{}", 10);
  ASSERT_FAILS(kaun_checkpoint_load_flat(NULL, index, 0, &flat, &err), err, KAUN_EHEADER_LENGTH,
               "bad.safetensors");
  CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "shard of"));
}

void register_checkpoint_tests(void) {
  static const unit_test tests[] = {
      {"save, then load with the tree as template", test_save_load_with_template},
      {"templates cast dtypes and ignore extra tensors", test_template_casts_and_ignores_extras},
      {"missing keys, shape mismatches and bad casts", test_template_errors},
      {"a name map fills a template with other names", test_template_with_name_map},
      {"name maps: NUL names, clashes in flat loads, shapes", test_name_map_edges},
      {"params and state in two files, then resume", test_params_and_state_resume},
      {"views outlive the load that made them", test_views_outlive_their_load},
      {"unaligned data is copied, not viewed", test_unaligned_data_is_copied},
      {"large copy loads read in parallel", test_parallel_copy_load},
      {"a failed save leaves the old file intact", test_atomic_save_on_write_failure},
      {"sharded indexes and their errors", test_sharded_index_errors},
      {NULL, NULL}};
  add_suite("checkpoint", tests);
}
