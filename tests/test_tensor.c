/* dtypes, buffers, tensors and status codes. */
#include <stdlib.h>
#include <string.h>

#include "unit.h"

static void test_dtype_table(void) {
  static const struct {
    kaun_dtype d;
    const char *name;
    unsigned bits;
  } want[] = {
      {KAUN_DTYPE_BOOL, "BOOL", 8},
      {KAUN_DTYPE_F4, "F4", 4},
      {KAUN_DTYPE_F6_E2M3, "F6_E2M3", 6},
      {KAUN_DTYPE_F6_E3M2, "F6_E3M2", 6},
      {KAUN_DTYPE_U8, "U8", 8},
      {KAUN_DTYPE_I8, "I8", 8},
      {KAUN_DTYPE_F8_E5M2, "F8_E5M2", 8},
      {KAUN_DTYPE_F8_E4M3, "F8_E4M3", 8},
      {KAUN_DTYPE_F8_E8M0, "F8_E8M0", 8},
      {KAUN_DTYPE_F8_E4M3FNUZ, "F8_E4M3FNUZ", 8},
      {KAUN_DTYPE_F8_E5M2FNUZ, "F8_E5M2FNUZ", 8},
      {KAUN_DTYPE_I16, "I16", 16},
      {KAUN_DTYPE_U16, "U16", 16},
      {KAUN_DTYPE_F16, "F16", 16},
      {KAUN_DTYPE_BF16, "BF16", 16},
      {KAUN_DTYPE_I32, "I32", 32},
      {KAUN_DTYPE_U32, "U32", 32},
      {KAUN_DTYPE_F32, "F32", 32},
      {KAUN_DTYPE_C64, "C64", 64},
      {KAUN_DTYPE_F64, "F64", 64},
      {KAUN_DTYPE_I64, "I64", 64},
      {KAUN_DTYPE_U64, "U64", 64},
  };
  CU_ASSERT_EQUAL(sizeof want / sizeof *want, KAUN_DTYPE_COUNT_);
  for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
    CU_ASSERT_STRING_EQUAL(kaun_dtype_name(want[i].d), want[i].name);
    CU_ASSERT_EQUAL(kaun_dtype_bits(want[i].d), want[i].bits);
    /* the reference enum order, which the writer sorts by */
    CU_ASSERT_EQUAL(kaun_dtype_rank(want[i].d), i);
    kaun_dtype back;
    CU_ASSERT_EQUAL(kaun_dtype_from_name(want[i].name, strlen(want[i].name), &back), KAUN_OK);
    CU_ASSERT_EQUAL(back, want[i].d);
  }
  kaun_dtype d;
  CU_ASSERT_EQUAL(kaun_dtype_from_name("f32", 3, &d), KAUN_EDTYPE);
  CU_ASSERT_EQUAL(kaun_dtype_from_name("F32X", 4, &d), KAUN_EDTYPE);
  CU_ASSERT_EQUAL(kaun_dtype_from_name("F3", 2, &d), KAUN_EDTYPE);
  CU_ASSERT_PTR_NULL(kaun_dtype_name((kaun_dtype)99));
  CU_ASSERT_TRUE(kaun_dtype_can_cast(KAUN_DTYPE_F8_E4M3));
  CU_ASSERT_FALSE(kaun_dtype_can_cast(KAUN_DTYPE_F8_E8M0));
  CU_ASSERT_FALSE(kaun_dtype_can_cast(KAUN_DTYPE_C64));
  CU_ASSERT_TRUE(kaun_dtype_is_float(KAUN_DTYPE_BF16));
  CU_ASSERT_FALSE(kaun_dtype_is_float(KAUN_DTYPE_I32));
}

static void test_status_names(void) {
  for (int c = 0; c >= KAUN_EACCESS; c--) {
    CU_ASSERT_PTR_NOT_NULL(strstr(kaun_status_name(c), "KAUN_"));
    CU_ASSERT_STRING_NOT_EQUAL(kaun_strerror(c), "unknown error code");
  }
  CU_ASSERT_STRING_EQUAL(kaun_status_name(KAUN_EDTYPE), "KAUN_EDTYPE");
  CU_ASSERT_STRING_EQUAL(kaun_strerror(-12345), "unknown error code");
  CU_ASSERT_EQUAL(kaun_version(), KAUN_VERSION_NUMBER);
  CU_ASSERT_STRING_EQUAL(kaun_version_string(), KAUN_VERSION_STRING);
}

static void test_size_bytes(void) {
  kaun_error err = KAUN_ERROR_INIT;
  uint64_t bytes;
  const uint64_t s23[] = {2, 3};
  ASSERT_OK(kaun_tensor_size_bytes(KAUN_DTYPE_F32, 2, s23, &bytes, &err), err);
  CU_ASSERT_EQUAL(bytes, 24);
  ASSERT_OK(kaun_tensor_size_bytes(KAUN_DTYPE_F32, 0, NULL, &bytes, &err), err);
  CU_ASSERT_EQUAL(bytes, 4); /* a scalar */
  const uint64_t f4[] = {3};
  ASSERT_FAILS(kaun_tensor_size_bytes(KAUN_DTYPE_F4, 1, f4, &bytes, &err), err, KAUN_EMISALIGNED,
               "F4");
  const uint64_t f4ok[] = {4, 2};
  ASSERT_OK(kaun_tensor_size_bytes(KAUN_DTYPE_F4, 2, f4ok, &bytes, &err), err);
  CU_ASSERT_EQUAL(bytes, 4);
  const uint64_t big[] = {1ull << 40, 1ull << 40};
  ASSERT_FAILS(kaun_tensor_size_bytes(KAUN_DTYPE_U8, 2, big, &bytes, &err), err, KAUN_EOVERFLOW,
               "overflow");
  const uint64_t bits[] = {1ull << 62};
  ASSERT_FAILS(kaun_tensor_size_bytes(KAUN_DTYPE_F64, 1, bits, &bytes, &err), err, KAUN_EOVERFLOW,
               "F64");
  uint64_t many[KAUN_MAX_DIMS + 1];
  for (int i = 0; i <= KAUN_MAX_DIMS; i++) many[i] = 1;
  ASSERT_FAILS(kaun_tensor_size_bytes(KAUN_DTYPE_U8, KAUN_MAX_DIMS + 1, many, &bytes, &err), err,
               KAUN_EINVAL, "dimensions");
}

static int released;
static void count_release(void *data, size_t size, void *ctx) {
  (void)size;
  (void)ctx;
  free(data);
  released++;
}

static void test_tensor_views_and_ownership(void) {
  kaun_error err = KAUN_ERROR_INIT;
  float *mem = malloc(6 * sizeof(float));
  for (int i = 0; i < 6; i++) mem[i] = (float)i;
  kaun_buffer *buf;
  released = 0;
  ASSERT_OK(kaun_buffer_wrap(mem, 6 * sizeof(float), count_release, NULL, &buf, &err), err);
  const uint64_t shape[] = {2, 2};
  kaun_tensor *v, *v2, *c;
  ASSERT_FAILS(kaun_tensor_new_view(KAUN_DTYPE_F32, 2, shape, buf, 12, 16, &v, &err), err,
               KAUN_EOFFSET, "outside the buffer");
  ASSERT_FAILS(kaun_tensor_new_view(KAUN_DTYPE_F32, 2, shape, buf, 0, 12, &v, &err), err,
               KAUN_ESIZE, "needs 16");
  ASSERT_OK(kaun_tensor_new_view(KAUN_DTYPE_F32, 2, shape, buf, 8, 16, &v, &err), err);
  kaun_buffer_unref(buf); /* the view keeps it alive */
  CU_ASSERT_EQUAL(released, 0);
  CU_ASSERT_TRUE(kaun_tensor_is_view(v));
  CU_ASSERT_EQUAL(((const float *)kaun_tensor_data(v))[0], 2.0f);
  CU_ASSERT_EQUAL(kaun_tensor_numel(v), 4);
  ASSERT_OK(kaun_tensor_clone(v, &v2, &err), err);
  CU_ASSERT_TRUE(kaun_tensor_is_view(v2));
  CU_ASSERT_PTR_EQUAL(kaun_tensor_data(v2), kaun_tensor_data(v));
  /* writing to a view copies it first: the buffer and the other view keep their bytes */
  float *w;
  ASSERT_OK(kaun_tensor_data_mut(v, (void **)&w, &err), err);
  w[0] = 42.0f;
  CU_ASSERT_FALSE(kaun_tensor_is_view(v));
  CU_ASSERT_EQUAL(((const float *)kaun_tensor_data(v2))[0], 2.0f);
  ASSERT_OK(kaun_tensor_clone(v, &c, &err), err);
  CU_ASSERT_PTR_NOT_EQUAL(kaun_tensor_data(c), kaun_tensor_data(v));
  CU_ASSERT_EQUAL(((const float *)kaun_tensor_data(c))[0], 42.0f);
  kaun_tensor_free(v);
  CU_ASSERT_EQUAL(released, 0);
  kaun_tensor_free(v2);
  CU_ASSERT_EQUAL(released, 1); /* the last reference released the memory, once */
  kaun_tensor_free(c);
  kaun_tensor_free(NULL);
  kaun_buffer_unref(NULL);
  CU_ASSERT_EQUAL(released, 1);
}

static void test_tensor_new_copy(void) {
  kaun_error err = KAUN_ERROR_INIT;
  const uint64_t shape[] = {3};
  const int16_t data[] = {1, -2, 3};
  kaun_tensor *t;
  ASSERT_FAILS(kaun_tensor_new_copy(KAUN_DTYPE_I16, 1, shape, data, 4, &t, &err), err, KAUN_ESIZE,
               "needs 6");
  CU_ASSERT_PTR_NULL(t);
  ASSERT_OK(kaun_tensor_new_copy(KAUN_DTYPE_I16, 1, shape, data, 6, &t, &err), err);
  CU_ASSERT_EQUAL(memcmp(kaun_tensor_data(t), data, 6), 0);
  CU_ASSERT_FALSE(kaun_tensor_is_view(t));
  kaun_tensor_free(t);
  ASSERT_OK(kaun_tensor_new(KAUN_DTYPE_F64, 0, NULL, &t, &err), err);
  CU_ASSERT_EQUAL(kaun_tensor_nbytes(t), 8);
  CU_ASSERT_EQUAL(*(const double *)kaun_tensor_data(t), 0.0);
  kaun_tensor_free(t);
  const uint64_t empty[] = {0, 5};
  ASSERT_OK(kaun_tensor_new(KAUN_DTYPE_F32, 2, empty, &t, &err), err);
  CU_ASSERT_EQUAL(kaun_tensor_nbytes(t), 0);
  CU_ASSERT_EQUAL(kaun_tensor_numel(t), 0);
  CU_ASSERT_PTR_NOT_NULL(kaun_tensor_data(t));
  kaun_tensor_free(t);
}

static void test_shape_format(void) {
  char buf[64];
  const uint64_t s[] = {2, 3, 4};
  CU_ASSERT_STRING_EQUAL(kaun_shape_format(3, s, buf, sizeof buf), "[2, 3, 4]");
  CU_ASSERT_STRING_EQUAL(kaun_shape_format(0, s, buf, sizeof buf), "[]");
  char tiny[6];
  kaun_shape_format(3, s, tiny, sizeof tiny);
  CU_ASSERT_STRING_EQUAL(tiny, "[2...");
}

static void test_buffer_map_errors(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_buffer *b;
  ASSERT_FAILS(kaun_buffer_map_file("/nonexistent/kaun.safetensors", &b, &err), err, KAUN_ENOENT,
               "/nonexistent/kaun.safetensors");
  CU_ASSERT_NOT_EQUAL(err.sys_errno, 0);
  ASSERT_FAILS(kaun_buffer_map_file("/tmp", &b, &err), err, KAUN_EINVAL, "not a regular file");
  const char *p = tmp_path("empty.bin");
  write_all(p, "", 0);
  ASSERT_OK(kaun_buffer_map_file(p, &b, &err), err);
  CU_ASSERT_EQUAL(kaun_buffer_size(b), 0);
  kaun_buffer_unref(b);
}

void register_tensor_tests(void) {
  static const unit_test tests[] = {
      {"dtype table matches the reference", test_dtype_table},
      {"status codes have names and texts", test_status_names},
      {"size in bytes checks overflow and sub-byte dtypes", test_size_bytes},
      {"views share buffers and copy on write", test_tensor_views_and_ownership},
      {"owned tensors copy their data", test_tensor_new_copy},
      {"shapes format and truncate", test_shape_format},
      {"mapping a file reports missing and odd files", test_buffer_map_errors},
      {NULL, NULL}};
  add_suite("tensor", tests);
}
