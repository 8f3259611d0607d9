/* Header validation, rule by rule, and the reference writer. */
#include <stdlib.h>
#include <string.h>

#include "unit.h"

/* Parses header text followed by data_len bytes. */
static int parse_text(const char *header, size_t data_len, kaun_safetensors **st, kaun_error *err) {
  size_t len;
  unsigned char *b = make_st(header, data_len, &len);
  int rc = kaun_safetensors_parse(b, len, "model.safetensors", st, err);
  free(b);
  return rc;
}

#define T(name, dtype, shape, b, e) \
  "\"" name "\":{\"dtype\":\"" dtype "\",\"shape\":" shape ",\"data_offsets\":[" #b "," #e "]}"

static void test_valid(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_safetensors *st;
  ASSERT_OK(parse_text("{" T("b", "F32", "[2,2]", 16, 32) "," T(
                           "a", "I8", "[16]", 0, 16) ",\"__metadata__\":{\"k\":\"v\"}}",
                       32, &st, &err),
            err);
  CU_ASSERT_EQUAL(kaun_safetensors_count(st), 2);
  kaun_safetensors_info in;
  CU_ASSERT_EQUAL(kaun_safetensors_info_at(st, 0, &in), KAUN_OK);
  CU_ASSERT_STRING_EQUAL(in.name, "a"); /* offset order */
  CU_ASSERT_EQUAL(in.dtype, KAUN_DTYPE_I8);
  CU_ASSERT_EQUAL(kaun_safetensors_find(st, "b"), 1);
  CU_ASSERT_EQUAL(kaun_safetensors_find(st, "c"), -1);
  CU_ASSERT_EQUAL(kaun_safetensors_info_at(st, 2, &in), KAUN_EINVAL);
  CU_ASSERT_EQUAL(kaun_safetensors_metadata_count(st), 1);
  CU_ASSERT_STRING_EQUAL(kaun_safetensors_metadata_value(st, 0), "v");
  kaun_safetensors_free(st);
  /* leading whitespace, null metadata, no tensors, a scalar, an empty tensor */
  ASSERT_OK(parse_text(" \n\t{\"__metadata__\":null}", 0, &st, &err), err);
  CU_ASSERT_EQUAL(kaun_safetensors_metadata_count(st), -1);
  CU_ASSERT_EQUAL(kaun_safetensors_count(st), 0);
  kaun_safetensors_free(st);
  ASSERT_OK(
      parse_text("{" T("s", "F64", "[]", 0, 8) "," T("e", "F32", "[0,3]", 0, 0) "}", 8, &st, &err),
      err);
  kaun_safetensors_free(st);
  /* unknown fields inside an entry are ignored, as by the reference */
  ASSERT_OK(parse_text("{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],"
                       "\"extra\":1}}",
                       1, &st, &err),
            err);
  kaun_safetensors_free(st);
}

static void test_length_rules(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_safetensors *st;
  unsigned char tiny[5] = {0};
  ASSERT_FAILS(kaun_safetensors_parse(tiny, 5, "tiny.safetensors", &st, &err), err,
               KAUN_EHEADER_TOO_SMALL, "tiny.safetensors");
  unsigned char big[16] = {0x01, 0xE1, 0xF5, 0x05}; /* 100,000,001 */
  ASSERT_FAILS(kaun_safetensors_parse(big, 16, "big.safetensors", &st, &err), err,
               KAUN_EHEADER_TOO_LARGE, "big.safetensors");
  unsigned char lie[16] = {100};
  ASSERT_FAILS(kaun_safetensors_parse(lie, 16, "lie.safetensors", &st, &err), err,
               KAUN_EHEADER_LENGTH, "lie.safetensors");
  unsigned char huge[16] = {0, 0, 0, 0, 0, 0, 0, 0xFF};
  ASSERT_FAILS(kaun_safetensors_parse(huge, 16, "huge", &st, &err), err, KAUN_EHEADER_TOO_LARGE,
               "huge");
}

static void test_header_rules(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_safetensors *st;
  ASSERT_FAILS(parse_text("{\"a\xff\":1}", 0, &st, &err), err, KAUN_EHEADER_UTF8,
               "model.safetensors");
  ASSERT_FAILS(parse_text("[]", 0, &st, &err), err, KAUN_EHEADER_JSON, "not a JSON object");
  ASSERT_FAILS(parse_text("{\"a\":", 0, &st, &err), err, KAUN_EHEADER_JSON,
               "model.safetensors: line 1");
  ASSERT_FAILS(parse_text("{\"w\":[]}", 0, &st, &err), err, KAUN_EHEADER_JSON,
               "tensor 'w' is an array");
  ASSERT_FAILS(parse_text("{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, &st, &err), err,
               KAUN_EHEADER_JSON, "'w' has no \"data_offsets\"");
  ASSERT_FAILS(parse_text("{" T("w", "F7", "[1]", 0, 4) "}", 4, &st, &err), err, KAUN_EDTYPE,
               "tensor 'w' has unknown dtype \"F7\"");
  ASSERT_FAILS(
      parse_text("{\"w\":{\"dtype\":32,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, &st, &err), err,
      KAUN_EHEADER_JSON, "dtype of tensor 'w'");
  ASSERT_FAILS(parse_text("{" T("w", "F32", "[-1]", 0, 4) "}", 4, &st, &err), err,
               KAUN_EHEADER_JSON, "dimension 0 of tensor 'w'");
  ASSERT_FAILS(parse_text("{" T("w", "F32", "[1.5]", 0, 4) "}", 4, &st, &err), err,
               KAUN_EHEADER_JSON, "tensor 'w'");
  ASSERT_FAILS(
      parse_text("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4, &st, &err),
      err, KAUN_EHEADER_JSON, "data_offsets of tensor 'w'");
  ASSERT_FAILS(
      parse_text("{" T("w", "F32", "[1]", 0, 4) "," T("w", "F32", "[1]", 4, 8) "}", 8, &st, &err),
      err, KAUN_EDUPLICATE, "\"w\"");
}

static void test_layout_rules(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_safetensors *st;
  ASSERT_FAILS(parse_text("{" T("big", "F32", "[4294967296,4294967296]", 0, 4) "}", 4, &st, &err),
               err, KAUN_EOVERFLOW, "tensor 'big'");
  ASSERT_FAILS(parse_text("{" T("big", "F64", "[2305843009213693952]", 0, 4) "}", 4, &st, &err),
               err, KAUN_EOVERFLOW, "tensor 'big'");
  ASSERT_FAILS(parse_text("{" T("half", "F4", "[3]", 0, 2) "}", 2, &st, &err), err,
               KAUN_EMISALIGNED, "tensor 'half'");
  ASSERT_FAILS(parse_text("{" T("w", "F32", "[2]", 0, 4) "}", 4, &st, &err), err, KAUN_ESIZE,
               "tensor 'w' (F32 [2]) needs 8 bytes");
  ASSERT_FAILS(
      parse_text("{" T("a", "U8", "[4]", 0, 4) "," T("gap", "U8", "[4]", 8, 12) "}", 12, &st, &err),
      err, KAUN_EOFFSET, "tensor 'gap' begins at 8");
  ASSERT_FAILS(
      parse_text("{" T("a", "U8", "[4]", 0, 4) "," T("lap", "U8", "[4]", 2, 6) "}", 6, &st, &err),
      err, KAUN_EOFFSET, "tensor 'lap'");
  ASSERT_FAILS(parse_text("{" T("back", "U8", "[0]", 4, 0) "}", 4, &st, &err), err, KAUN_EOFFSET,
               "tensor 'back'");
  ASSERT_FAILS(parse_text("{" T("late", "U8", "[4]", 4, 8) "}", 8, &st, &err), err, KAUN_EOFFSET,
               "tensor 'late' begins at 4");
  ASSERT_FAILS(parse_text("{" T("w", "U8", "[4]", 0, 4) "}", 5, &st, &err), err, KAUN_EINCOMPLETE,
               "trailing bytes");
  ASSERT_FAILS(parse_text("{" T("w", "U8", "[4]", 0, 4) "}", 3, &st, &err), err, KAUN_EINCOMPLETE,
               "holds 3");
  ASSERT_FAILS(parse_text("{\"__metadata__\":{\"k\":1}}", 0, &st, &err), err, KAUN_EMETADATA,
               "key \"k\" is a number");
  ASSERT_FAILS(parse_text("{\"__metadata__\":[\"k\"]}", 0, &st, &err), err, KAUN_EMETADATA,
               "__metadata__ is an array");
}

/* A file holding one tensor of every dtype keeps each one's bytes. */
static void test_every_dtype_round_trips(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_flat *flat;
  ASSERT_OK(kaun_flat_new(&flat, &err), err);
  for (int d = 0; d < KAUN_DTYPE_COUNT_; d++) {
    const uint64_t shape[] = {2, 4}; /* 8 elements: whole bytes even for F4 and F6 */
    uint64_t n;
    ASSERT_OK(kaun_tensor_size_bytes((kaun_dtype)d, 2, shape, &n, &err), err);
    unsigned char bytes[64];
    for (uint64_t i = 0; i < n; i++) bytes[i] = (unsigned char)(d * 31 + i * 7);
    kaun_tensor *t;
    ASSERT_OK(kaun_tensor_new_copy((kaun_dtype)d, 2, shape, bytes, n, &t, &err), err);
    ASSERT_OK(kaun_flat_add(flat, kaun_dtype_name((kaun_dtype)d), t, &err), err);
  }
  const char *path = tmp_path("every.safetensors");
  ASSERT_OK(kaun_safetensors_save(NULL, path, flat, &err), err);
  kaun_flat *back;
  ASSERT_OK(kaun_checkpoint_load_flat(NULL, path, 0, &back, &err), err);
  CU_ASSERT_EQUAL(kaun_flat_count(back), KAUN_DTYPE_COUNT_);
  /* the writer's order: highest dtype rank first */
  CU_ASSERT_STRING_EQUAL(kaun_flat_name(back, 0), "U64");
  CU_ASSERT_STRING_EQUAL(kaun_flat_name(back, KAUN_DTYPE_COUNT_ - 1), "BOOL");
  for (size_t i = 0; i < kaun_flat_count(flat); i++) {
    const kaun_tensor *a = kaun_flat_tensor(flat, i);
    const kaun_tensor *b = kaun_flat_find(back, kaun_flat_name(flat, i));
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_EQUAL(kaun_tensor_dtype(a), kaun_tensor_dtype(b));
    CU_ASSERT_EQUAL(kaun_tensor_nbytes(a), kaun_tensor_nbytes(b));
    CU_ASSERT_EQUAL(memcmp(kaun_tensor_data(a), kaun_tensor_data(b), kaun_tensor_nbytes(a)), 0);
  }
  /* saving what was loaded reproduces the file byte for byte */
  const char *again = tmp_path("every-again.safetensors");
  ASSERT_OK(kaun_safetensors_save(NULL, again, back, &err), err);
  size_t la, lb;
  unsigned char *fa = read_all(path, &la), *fb = read_all(again, &lb);
  CU_ASSERT_EQUAL(la, lb);
  CU_ASSERT_EQUAL(memcmp(fa, fb, la), 0);
  free(fa);
  free(fb);
  kaun_flat_free(back);
  kaun_flat_free(flat);
}

static void test_writer_format(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_flat *flat;
  ASSERT_OK(kaun_flat_new(&flat, &err), err);
  const uint64_t s1[] = {1};
  const uint64_t s2[] = {2};
  kaun_tensor *t;
  ASSERT_OK(kaun_tensor_new(KAUN_DTYPE_U8, 1, s1, &t, &err), err);
  ASSERT_OK(kaun_flat_add(flat, "z", t, &err), err);
  ASSERT_OK(kaun_tensor_new(KAUN_DTYPE_F32, 1, s2, &t, &err), err);
  ASSERT_OK(kaun_flat_add(flat, "q\"\n\x01/\xc3\xa9", t, &err), err);
  ASSERT_OK(kaun_tensor_new(KAUN_DTYPE_F32, 1, s1, &t, &err), err);
  ASSERT_OK(kaun_flat_add(flat, "a", t, &err), err);
  ASSERT_OK(kaun_flat_set_metadata(flat, "format", "pt", &err), err);
  char *hdr;
  size_t size;
  uint64_t data;
  size_t *order;
  ASSERT_OK(kaun_safetensors_serialize_header(flat, &hdr, &size, &data, &order, &err), err);
  const char *want =
      "{\"__metadata__\":{\"format\":\"pt\"},"
      "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
      "\"q\\\"\\n\\u0001/\xc3\xa9\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]},"
      "\"z\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[12,13]}";
  CU_ASSERT_EQUAL((size - 8) % 8, 0);
  CU_ASSERT_EQUAL(memcmp(hdr + 8, want, strlen(want)), 0);
  CU_ASSERT_EQUAL(hdr[8 + strlen(want)], '}');
  for (size_t i = 8 + strlen(want) + 1; i < size; i++) CU_ASSERT_EQUAL(hdr[i], ' ');
  CU_ASSERT_EQUAL((unsigned char)hdr[0], size - 8);
  CU_ASSERT_EQUAL(data, 13);
  CU_ASSERT_EQUAL(order[0], 2);
  CU_ASSERT_EQUAL(order[2], 0);
  kaun_safetensors *st;
  ASSERT_OK(kaun_safetensors_parse_header(hdr + 8, size - 8, size + data, "w", &st, &err), err);
  CU_ASSERT_EQUAL(kaun_safetensors_find(st, "q\"\n\x01/\xc3\xa9"), 1);
  kaun_safetensors_free(st);
  free(hdr);
  free(order);
  kaun_flat_free(flat);
}

static void test_read_file(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_safetensors *st;
  ASSERT_FAILS(kaun_safetensors_read_file("/nonexistent/x.safetensors", &st, &err), err,
               KAUN_ENOENT, "/nonexistent/x.safetensors");
  const char *p = tmp_path("short.safetensors");
  write_all(p, "abc", 3);
  ASSERT_FAILS(kaun_safetensors_read_file(p, &st, &err), err, KAUN_EHEADER_TOO_SMALL,
               "short.safetensors");
  ASSERT_FAILS(kaun_safetensors_read_file("/tmp", &st, &err), err, KAUN_EINVAL,
               "not a regular file");
}

void register_safetensors_tests(void) {
  static const unit_test tests[] = {
      {"valid headers parse", test_valid},
      {"header length limits", test_length_rules},
      {"header JSON rules name the tensor", test_header_rules},
      {"layout rules: overflow, sizes, offsets, coverage", test_layout_rules},
      {"every dtype keeps its bytes through save and load", test_every_dtype_round_trips},
      {"the writer's order, escaping and padding", test_writer_format},
      {"reading a file's header reports file errors", test_read_file},
      {NULL, NULL}};
  add_suite("safetensors", tests);
}
