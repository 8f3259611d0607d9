/* Parameter trees and flat lists. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unit.h"

static kaun_tensor *scalar(float v) {
  kaun_tensor *t;
  const uint64_t shape[] = {1};
  if (kaun_tensor_new_copy(KAUN_DTYPE_F32, 1, shape, &v, sizeof v, &t, NULL)) abort();
  return t;
}

static float value_at(const kaun_ptree *tree, const char *path) {
  kaun_ptree *n;
  if (kaun_ptree_get(tree, path, &n, NULL) || !kaun_ptree_tensor(n)) return -1;
  return *(const float *)kaun_tensor_data(kaun_ptree_tensor(n));
}

static void test_build_and_get(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_ptree *root, *layers, *leaf;
  ASSERT_OK(kaun_ptree_new_record(&root, &err), err);
  ASSERT_OK(kaun_ptree_new_list(&layers, &err), err);
  for (int i = 0; i < 3; i++) {
    kaun_ptree *rec;
    ASSERT_OK(kaun_ptree_new_record(&rec, &err), err);
    ASSERT_OK(kaun_ptree_new_leaf(scalar((float)i), &leaf, &err), err);
    ASSERT_OK(kaun_ptree_record_add(rec, "weight", leaf, &err), err);
    ASSERT_OK(kaun_ptree_list_append(layers, rec, &err), err);
  }
  ASSERT_OK(kaun_ptree_record_add(root, "layers", layers, &err), err);
  CU_ASSERT_EQUAL(value_at(root, "layers.2.weight"), 2.0f);
  CU_ASSERT_EQUAL(kaun_ptree_kind_of(kaun_ptree_find(root, "layers")), KAUN_PTREE_LIST);
  kaun_ptree *n;
  ASSERT_OK(kaun_ptree_get(root, "", &n, &err), err);
  CU_ASSERT_PTR_EQUAL(n, root);
  ASSERT_FAILS(kaun_ptree_get(root, "layers.3.weight", &n, &err), err, KAUN_EKEY,
               "'layers.3.weight'");
  CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "no '3' under 'layers'"));
  ASSERT_FAILS(kaun_ptree_get(root, "layers.01.weight", &n, &err), err, KAUN_EKEY, "'01'");
  ASSERT_FAILS(kaun_ptree_get(root, "layers..weight", &n, &err), err, KAUN_EBADKEY,
               "layers..weight");
  /* keys are validated and unique */
  ASSERT_OK(kaun_ptree_new_leaf(scalar(0), &leaf, &err), err);
  ASSERT_FAILS(kaun_ptree_record_add(root, "a.b", leaf, &err), err, KAUN_EBADKEY, "'a.b'");
  ASSERT_OK(kaun_ptree_new_leaf(scalar(0), &leaf, &err), err);
  ASSERT_FAILS(kaun_ptree_record_add(root, "", leaf, &err), err, KAUN_EBADKEY, "empty");
  ASSERT_OK(kaun_ptree_new_leaf(scalar(0), &leaf, &err), err);
  ASSERT_FAILS(kaun_ptree_record_add(root, "layers", leaf, &err), err, KAUN_EDUPLICATE, "'layers'");
  ASSERT_OK(kaun_ptree_new_leaf(scalar(0), &leaf, &err), err);
  ASSERT_FAILS(kaun_ptree_list_append(root, leaf, &err), err, KAUN_EKIND, "not a list");
  ASSERT_FAILS(kaun_ptree_new_leaf(NULL, &leaf, &err), err, KAUN_EINVAL, "tensor");
  kaun_ptree_free(root);
  kaun_ptree_free(NULL);
}

static void test_set_by_path(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_ptree *root;
  ASSERT_OK(kaun_ptree_new_record(&root, &err), err);
  ASSERT_OK(kaun_ptree_set(root, "enc.layers.0.w", scalar(1), &err), err);
  ASSERT_OK(kaun_ptree_set(root, "enc.layers.1.w", scalar(2), &err), err);
  ASSERT_OK(kaun_ptree_set(root, "enc.norm", scalar(3), &err), err);
  ASSERT_OK(kaun_ptree_set(root, "enc.norm", scalar(4), &err), err); /* replaces */
  CU_ASSERT_EQUAL(value_at(root, "enc.norm"), 4.0f);
  kaun_ptree *layers;
  ASSERT_OK(kaun_ptree_get(root, "enc.layers", &layers, &err), err);
  CU_ASSERT_EQUAL(kaun_ptree_kind_of(layers), KAUN_PTREE_LIST);
  CU_ASSERT_EQUAL(kaun_ptree_count(layers), 2);
  ASSERT_FAILS(kaun_ptree_set(root, "enc.layers.5.w", scalar(0), &err), err, KAUN_EKEY, "index 5");
  ASSERT_FAILS(kaun_ptree_set(root, "enc.layers.x", scalar(0), &err), err, KAUN_EKIND,
               "'x' is not an index");
  ASSERT_FAILS(kaun_ptree_set(root, "enc.norm.deeper", scalar(0), &err), err, KAUN_EKIND,
               "'enc.norm' is a tensor");
  ASSERT_FAILS(kaun_ptree_set(root, "enc", scalar(0), &err), err, KAUN_EKIND, "record");
  ASSERT_FAILS(kaun_ptree_set(root, "", scalar(0), &err), err, KAUN_EBADKEY, "empty");
  ASSERT_FAILS(kaun_ptree_set(root, "a..b", scalar(0), &err), err, KAUN_EBADKEY, "a..b");
  kaun_ptree_free(root);
}

typedef struct visit_log {
  char text[512];
} visit_log;

static int log_visit(const char *path, kaun_tensor *t, void *ctx) {
  visit_log *log = ctx;
  size_t n = strlen(log->text);
  snprintf(log->text + n, sizeof log->text - n, "%s=%g;", path,
           (double)*(const float *)kaun_tensor_data(t));
  return 0;
}

static int stop_visit(const char *path, kaun_tensor *t, void *ctx) {
  (void)path;
  (void)t;
  return ++*(int *)ctx == 2 ? 7 : 0;
}

static void test_foreach_flatten_unflatten(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_ptree *root;
  ASSERT_OK(kaun_ptree_new_record(&root, &err), err);
  ASSERT_OK(kaun_ptree_set(root, "b", scalar(1), &err), err);
  ASSERT_OK(kaun_ptree_set(root, "a.0", scalar(2), &err), err);
  ASSERT_OK(kaun_ptree_set(root, "a.1", scalar(3), &err), err);
  visit_log log = {{0}};
  CU_ASSERT_EQUAL(kaun_ptree_foreach(root, log_visit, &log), 0);
  CU_ASSERT_STRING_EQUAL(log.text, "b=1;a.0=2;a.1=3;"); /* insertion order, depth first */
  int count = 0;
  CU_ASSERT_EQUAL(kaun_ptree_foreach(root, stop_visit, &count), 7);
  CU_ASSERT_EQUAL(count, 2);

  kaun_flat *flat;
  ASSERT_OK(kaun_ptree_flatten(root, &flat, &err), err);
  CU_ASSERT_EQUAL(kaun_flat_count(flat), 3);
  CU_ASSERT_STRING_EQUAL(kaun_flat_name(flat, 1), "a.0");
  kaun_ptree *back;
  ASSERT_OK(kaun_ptree_unflatten(flat, &back, &err), err);
  CU_ASSERT_EQUAL(kaun_ptree_kind_of(kaun_ptree_find(back, "a")), KAUN_PTREE_LIST);
  CU_ASSERT_EQUAL(value_at(back, "a.1"), 3.0f);
  CU_ASSERT_PTR_NULL(kaun_flat_tensor(flat, 0)); /* moved out */
  kaun_flat_free(flat);
  kaun_ptree_free(back);

  kaun_ptree *leaf;
  ASSERT_OK(kaun_ptree_new_leaf(scalar(0), &leaf, &err), err);
  ASSERT_FAILS(kaun_ptree_flatten(leaf, &flat, &err), err, KAUN_EINVAL, "root is a tensor");
  kaun_ptree_free(leaf);
  kaun_ptree_free(root);
}

static void test_unflatten_rules(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_flat *flat;
  kaun_ptree *tree;
  /* out-of-order indices still make a list; a gap keeps a record */
  ASSERT_OK(kaun_flat_new(&flat, &err), err);
  ASSERT_OK(kaun_flat_add(flat, "l.1", scalar(1), &err), err);
  ASSERT_OK(kaun_flat_add(flat, "l.0", scalar(0), &err), err);
  ASSERT_OK(kaun_flat_add(flat, "g.0", scalar(0), &err), err);
  ASSERT_OK(kaun_flat_add(flat, "g.2", scalar(2), &err), err);
  ASSERT_OK(kaun_flat_add(flat, "z.00", scalar(0), &err), err);
  ASSERT_OK(kaun_ptree_unflatten(flat, &tree, &err), err);
  CU_ASSERT_EQUAL(kaun_ptree_kind_of(kaun_ptree_find(tree, "l")), KAUN_PTREE_LIST);
  CU_ASSERT_EQUAL(value_at(tree, "l.0"), 0.0f);
  CU_ASSERT_EQUAL(kaun_ptree_kind_of(kaun_ptree_find(tree, "g")), KAUN_PTREE_RECORD);
  CU_ASSERT_EQUAL(kaun_ptree_kind_of(kaun_ptree_find(tree, "z")), KAUN_PTREE_RECORD);
  kaun_ptree_free(tree);
  kaun_flat_free(flat);
  /* a name that is a prefix of another cannot make a tree */
  ASSERT_OK(kaun_flat_new(&flat, &err), err);
  ASSERT_OK(kaun_flat_add(flat, "a", scalar(1), &err), err);
  ASSERT_OK(kaun_flat_add(flat, "a.b", scalar(2), &err), err);
  ASSERT_FAILS(kaun_ptree_unflatten(flat, &tree, &err), err, KAUN_EKIND, "'a.b'");
  CU_ASSERT_PTR_NULL(tree);
  kaun_flat_free(flat);
  ASSERT_OK(kaun_flat_new(&flat, &err), err);
  ASSERT_OK(kaun_flat_add(flat, "a.b", scalar(2), &err), err);
  ASSERT_OK(kaun_flat_add(flat, "a", scalar(1), &err), err);
  ASSERT_FAILS(kaun_ptree_unflatten(flat, &tree, &err), err, KAUN_EKIND, "'a'");
  kaun_flat_free(flat);
  ASSERT_OK(kaun_flat_new(&flat, &err), err);
  ASSERT_OK(kaun_flat_add(flat, "x..y", scalar(2), &err), err);
  ASSERT_FAILS(kaun_ptree_unflatten(flat, &tree, &err), err, KAUN_EBADKEY, "'x..y'");
  kaun_flat_free(flat);
}

static void test_flat_list(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_flat *flat;
  ASSERT_OK(kaun_flat_new(&flat, &err), err);
  char name[32];
  for (int i = 0; i < 20000; i++) {
    snprintf(name, sizeof name, "t%d", i);
    ASSERT_OK(kaun_flat_add(flat, name, scalar((float)i), &err), err);
  }
  CU_ASSERT_EQUAL(*(const float *)kaun_tensor_data(kaun_flat_find(flat, "t12345")), 12345.0f);
  CU_ASSERT_PTR_NULL(kaun_flat_find(flat, "t20000"));
  CU_ASSERT_PTR_NULL(kaun_flat_find(flat,
                                    "t1234"
                                    "5x"));
  ASSERT_FAILS(kaun_flat_add(flat, "t7", scalar(0), &err), err, KAUN_EDUPLICATE, "'t7'");
  CU_ASSERT_FALSE(kaun_flat_has_metadata(flat));
  ASSERT_OK(kaun_flat_set_metadata(flat, "format", "pt", &err), err);
  ASSERT_OK(kaun_flat_set_metadata(flat, "b", "1", &err), err);
  ASSERT_OK(kaun_flat_set_metadata(flat, "format", "np", &err), err);
  CU_ASSERT_EQUAL(kaun_flat_metadata_count(flat), 2);
  CU_ASSERT_STRING_EQUAL(kaun_flat_metadata_get(flat, "format"), "np");
  CU_ASSERT_STRING_EQUAL(kaun_flat_metadata_key(flat, 1), "b");
  CU_ASSERT_PTR_NULL(kaun_flat_metadata_get(flat, "nope"));
  kaun_flat_free(flat);
}

/* Many metadata keys: insertion order is kept, setting a key again replaces
 * its value in place, lookups find every key (the index, not a scan). */
static void test_flat_metadata_many(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_flat *flat;
  ASSERT_OK(kaun_flat_new(&flat, &err), err);
  enum { N = 30000 };
  char key[32], value[48];
  /* keys in an order that is neither sorted nor hash order */
  for (int i = 0; i < N; i++) {
    int k = (int)(((unsigned)i * 7919u) % N);
    snprintf(key, sizeof key, "k%d", k);
    snprintf(value, sizeof value, "v%d", k);
    ASSERT_OK(kaun_flat_set_metadata(flat, key, value, &err), err);
  }
  /* replace every third key, and one key twice */
  for (int k = 0; k < N; k += 3) {
    snprintf(key, sizeof key, "k%d", k);
    snprintf(value, sizeof value, "new%d", k);
    ASSERT_OK(kaun_flat_set_metadata(flat, key, value, &err), err);
  }
  ASSERT_OK(kaun_flat_set_metadata(flat, "k3", "newest", &err), err);
  ASSERT_OK(kaun_flat_set_metadata(flat, "", "empty key", &err), err);
  CU_ASSERT_EQUAL(kaun_flat_metadata_count(flat), N + 1);
  bool order_ok = true, values_ok = true, get_ok = true;
  for (int i = 0; i < N; i++) {
    int k = (int)(((unsigned)i * 7919u) % N);
    snprintf(key, sizeof key, "k%d", k);
    if (k == 3)
      snprintf(value, sizeof value, "newest");
    else
      snprintf(value, sizeof value, k % 3 ? "v%d" : "new%d", k);
    order_ok &= strcmp(kaun_flat_metadata_key(flat, (size_t)i), key) == 0;
    values_ok &= strcmp(kaun_flat_metadata_value(flat, (size_t)i), value) == 0;
    const char *got = kaun_flat_metadata_get(flat, key);
    get_ok &= got && strcmp(got, value) == 0;
  }
  CU_ASSERT_TRUE(order_ok);
  CU_ASSERT_TRUE(values_ok);
  CU_ASSERT_TRUE(get_ok);
  CU_ASSERT_STRING_EQUAL(kaun_flat_metadata_key(flat, N), "");
  CU_ASSERT_STRING_EQUAL(kaun_flat_metadata_get(flat, ""), "empty key");
  CU_ASSERT_PTR_NULL(kaun_flat_metadata_get(flat, "k30000"));
  CU_ASSERT_PTR_NULL(kaun_flat_metadata_get(flat, "k1x"));
  CU_ASSERT_PTR_NULL(kaun_flat_metadata_key(flat, N + 1));
  ASSERT_FAILS(kaun_flat_set_metadata(flat, NULL, "x", &err), err, KAUN_EINVAL, "key");
  CU_ASSERT_EQUAL(kaun_flat_metadata_count(flat), N + 1);
  kaun_flat_free(flat);
}

void register_ptree_tests(void) {
  static const unit_test tests[] = {
      {"records and lists build and resolve paths", test_build_and_get},
      {"set by path creates, replaces and refuses", test_set_by_path},
      {"foreach, flatten and unflatten agree", test_foreach_flatten_unflatten},
      {"unflatten makes lists and rejects collisions", test_unflatten_rules},
      {"flat lists index names and keep metadata", test_flat_list},
      {"many metadata keys keep their order and are replaced in place", test_flat_metadata_many},
      {NULL, NULL}};
  add_suite("ptree", tests);
}
