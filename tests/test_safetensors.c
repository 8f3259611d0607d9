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
  /* what a file that is not SafeTensors looks like, said only when it can be so */
  const char json[] = "{\"weight_map\": {}}";
  ASSERT_FAILS(kaun_safetensors_parse(json, sizeof json - 1, "x.index.json", &st, &err), err,
               KAUN_EHEADER_TOO_LARGE, "it starts like JSON");
  unsigned char gz[16] = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0};
  ASSERT_FAILS(kaun_safetensors_parse(gz, 16, "packed.bin", &st, &err), err, KAUN_EHEADER_LENGTH,
               "it looks like an archive");
  /* a truncated file whose length starts with '{' (31520 = 0x7b20) is not called JSON */
  unsigned char cut[16] = {0x20, 0x7b};
  ASSERT_FAILS(kaun_safetensors_parse(cut, 16, "cut.safetensors", &st, &err), err,
               KAUN_EHEADER_LENGTH, "truncated or corrupt");
  CU_ASSERT_PTR_NULL(strstr(err.message, "JSON"));
  CU_ASSERT_PTR_NULL(strstr(err.message, "archive"));
  unsigned char plain[16] = {100};
  ASSERT_FAILS(kaun_safetensors_parse(plain, 16, "m.tar", &st, &err), err, KAUN_EHEADER_LENGTH,
               "it looks like an archive"); /* by its name */
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

/* ---- strings keep their length: NUL bytes (JSON "\u0000") in names and metadata ---- */

#define U8_AT(name, b, e) T(name, "U8", "[1]", b, e)

/* A header padded with spaces to a multiple of 8, as the writer pads. */
static unsigned char *make_padded(const char *header, size_t data_len, size_t *out_len) {
  size_t n = strlen(header), padded = (n + 7) / 8 * 8;
  char *h = malloc(padded + 1);
  memcpy(h, header, n);
  memset(h + n, ' ', padded - n);
  h[padded] = '\0';
  unsigned char *b = make_st(h, data_len, out_len);
  free(h);
  return b;
}

static void test_metadata_key_with_nul_is_a_tensor(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_safetensors *st;
  /* the name is "__metadata__", a NUL, "x": a tensor like any other (as in
   * the reference, which compares whole strings), not the metadata */
  ASSERT_OK(parse_text("{" U8_AT("__metadata__\\u0000x", 0, 1) "}", 1, &st, &err), err);
  CU_ASSERT_EQUAL(kaun_safetensors_count(st), 1);
  CU_ASSERT_EQUAL(kaun_safetensors_metadata_count(st), -1);
  CU_ASSERT_EQUAL(kaun_safetensors_name_length(st, 0), 14);
  kaun_safetensors_info in;
  ASSERT_OK(kaun_safetensors_info_at(st, 0, &in), err);
  CU_ASSERT_EQUAL(memcmp(in.name, "__metadata__\0x", 15), 0); /* NUL-terminated after it */
  CU_ASSERT_EQUAL(kaun_safetensors_find_n(st, "__metadata__\0x", 14), 0);
  CU_ASSERT_EQUAL(kaun_safetensors_find(st, "__metadata__"), -1);
  CU_ASSERT_EQUAL(kaun_safetensors_find_n(st, "__metadata__\0y", 14), -1);
  CU_ASSERT_EQUAL(kaun_safetensors_name_length(st, 1), 0);
  kaun_safetensors_free(st);
  /* with real metadata beside it: both kept, apart */
  ASSERT_OK(parse_text("{\"__metadata__\":{\"k\":\"v\"}," U8_AT("__metadata__\\u0000x", 0, 1) "}",
                       1, &st, &err),
            err);
  CU_ASSERT_EQUAL(kaun_safetensors_count(st), 1);
  CU_ASSERT_EQUAL(kaun_safetensors_metadata_count(st), 1);
  kaun_safetensors_free(st);
  /* two such keys holding metadata-like objects: once both were taken for
   * the metadata (and leaked); now they are tensors without a dtype, and
   * the message shows the whole name */
  ASSERT_FAILS(parse_text("{\"__metadata__\\u0000a\":{\"k\":\"v\"},"
                          "\"__metadata__\\u0000b\":{\"k\":\"w\"}}",
                          0, &st, &err),
               err, KAUN_EHEADER_JSON, "tensor '__metadata__\\0a' has no \"dtype\"");
  ASSERT_FAILS(parse_text("{\"__metadata__\\u0000\":[]}", 0, &st, &err), err, KAUN_EHEADER_JSON,
               "tensor '__metadata__\\0' is an array");
}

static void test_names_differing_after_nul(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_safetensors *st;
  ASSERT_OK(
      parse_text("{" U8_AT("a\\u0000x", 0, 1) "," U8_AT("a\\u0000y", 1, 2) "," U8_AT("a", 2, 3) "}",
                 3, &st, &err),
      err);
  CU_ASSERT_EQUAL(kaun_safetensors_count(st), 3);
  CU_ASSERT_EQUAL(kaun_safetensors_find_n(st, "a\0x", 3), 0);
  CU_ASSERT_EQUAL(kaun_safetensors_find_n(st, "a\0y", 3), 1);
  CU_ASSERT_EQUAL(kaun_safetensors_find(st, "a"), 2);
  CU_ASSERT_EQUAL(kaun_safetensors_find_n(st, "a\0", 2), -1);
  CU_ASSERT_EQUAL(kaun_safetensors_name_length(st, 0), 3);
  CU_ASSERT_EQUAL(kaun_safetensors_name_length(st, 2), 1);
  kaun_safetensors_free(st);
  /* the same name twice is still a duplicate, shown whole */
  ASSERT_FAILS(
      parse_text("{" U8_AT("a\\u0000x", 0, 1) "," U8_AT("a\\u0000x", 1, 2) "}", 2, &st, &err), err,
      KAUN_EDUPLICATE, "duplicate key \"a\\0x\"");
  /* layout errors show the whole name too, escaped: no raw control bytes */
  ASSERT_FAILS(parse_text("{" U8_AT("b\\u0000\\n\\u001b[31m", 1, 2) "}", 2, &st, &err), err,
               KAUN_EOFFSET, "tensor 'b\\0\\n\\x1b[31m' begins at 1");
}

static void test_metadata_with_nul(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_safetensors *st;
  ASSERT_OK(parse_text("{\"__metadata__\":{\"k\\u0000a\":\"v\\u0000w\",\"k\\u0000b\":\"\\u0000\"}}",
                       0, &st, &err),
            err);
  CU_ASSERT_EQUAL(kaun_safetensors_metadata_count(st), 2);
  CU_ASSERT_EQUAL(kaun_safetensors_metadata_key_length(st, 0), 3);
  CU_ASSERT_EQUAL(memcmp(kaun_safetensors_metadata_key(st, 0), "k\0a", 4), 0);
  CU_ASSERT_EQUAL(kaun_safetensors_metadata_value_length(st, 0), 3);
  CU_ASSERT_EQUAL(memcmp(kaun_safetensors_metadata_value(st, 0), "v\0w", 4), 0);
  CU_ASSERT_EQUAL(kaun_safetensors_metadata_key_length(st, 1), 3);
  CU_ASSERT_EQUAL(kaun_safetensors_metadata_value_length(st, 1), 1);
  CU_ASSERT_EQUAL(kaun_safetensors_metadata_key_length(st, 2), 0);
  kaun_safetensors_free(st);
  /* two keys differing after a NUL are two keys; the same one twice is not */
  ASSERT_FAILS(
      parse_text("{\"__metadata__\":{\"k\\u0000a\":\"1\",\"k\\u0000a\":\"2\"}}", 0, &st, &err), err,
      KAUN_EDUPLICATE, "duplicate key \"k\\0a\"");
  ASSERT_FAILS(parse_text("{\"__metadata__\":{\"k\\u0000a\":1}}", 0, &st, &err), err,
               KAUN_EMETADATA, "key \"k\\0a\" is a number");
}

/* What the writer makes of the list loaded from it: the same bytes. */
#define NUL_FILE                                                                      \
  "{\"__metadata__\":{\"k\\u0000a\":\"v\\u0000w\",\"format\":\"pt\"},"                \
  "\"__metadata__\\u0000x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}," \
  "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]},"                    \
  "\"a\\u0000x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[2,3]},"            \
  "\"a\\u0000y\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[3,4]}}"

static void test_nul_round_trip(void) {
  kaun_error err = KAUN_ERROR_INIT;
  size_t len;
  unsigned char *bytes = make_padded(NUL_FILE, 4, &len);
  const char *src = tmp_path("nul-src.safetensors");
  write_all(src, bytes, len);
  kaun_flat *flat;
  ASSERT_OK(kaun_checkpoint_load_flat(NULL, src, 0, &flat, &err), err);
  CU_ASSERT_EQUAL(kaun_flat_count(flat), 4);
  CU_ASSERT_EQUAL(kaun_flat_name_length(flat, 0), 14);
  CU_ASSERT_EQUAL(kaun_flat_name_length(flat, 2), 3);
  CU_ASSERT_PTR_NOT_NULL(kaun_flat_find_n(flat, "a\0y", 3));
  CU_ASSERT_EQUAL(*(const unsigned char *)kaun_tensor_data(kaun_flat_find_n(flat, "a\0y", 3)), 3);
  CU_ASSERT_PTR_NULL(kaun_flat_find(flat, "__metadata__"));
  CU_ASSERT_EQUAL(kaun_flat_metadata_count(flat), 2);
  size_t vlen = 0;
  const char *v = kaun_flat_metadata_get_n(flat, "k\0a", 3, &vlen);
  CU_ASSERT_TRUE(v && vlen == 3 && memcmp(v, "v\0w", 4) == 0);
  CU_ASSERT_PTR_NULL(kaun_flat_metadata_get(flat, "k")); /* "k" is not "k\0a" */
  const char *dst = tmp_path("nul-dst.safetensors");
  ASSERT_OK(kaun_safetensors_save(NULL, dst, flat, &err), err);
  size_t got_len;
  unsigned char *got = read_all(dst, &got_len);
  CU_ASSERT_EQUAL(got_len, len);
  CU_ASSERT_TRUE(got_len == len && memcmp(got, bytes, len) == 0);
  free(got);
  /* the reader sees the same names and calls the file canonical */
  kaun_reader *r;
  ASSERT_OK(kaun_reader_open(NULL, src, &r, &err), err);
  CU_ASSERT_EQUAL(kaun_reader_find_n(r, "a\0x", 3), 2);
  CU_ASSERT_EQUAL(kaun_reader_find(r, "a"), 1);
  CU_ASSERT_EQUAL(kaun_reader_name_length(r, 0), 14);
  CU_ASSERT_EQUAL(kaun_reader_metadata_key_length(r, 0), 3);
  CU_ASSERT_EQUAL(kaun_reader_metadata_value_length(r, 0), 3);
  CU_ASSERT_EQUAL(kaun_reader_is_canonical(r, &err), 1);
  const char *names[] = {"a\0x", "a\0y"};
  const size_t lens[] = {3, 3};
  kaun_tensor *t[2];
  ASSERT_OK(kaun_reader_get_many_n(r, 2, names, lens, NULL, NULL, t, &err), err);
  CU_ASSERT_EQUAL(*(const unsigned char *)kaun_tensor_data(t[0]), 2);
  CU_ASSERT_EQUAL(*(const unsigned char *)kaun_tensor_data(t[1]), 3);
  kaun_tensor_free(t[0]);
  kaun_tensor_free(t[1]);
  ASSERT_FAILS(kaun_reader_get_many_n(r, 1, names, (const size_t[]){2}, NULL, NULL, t, &err), err,
               KAUN_EKEY, "no tensor 'a\\0'");
  kaun_reader_close(r);
  /* a tree cannot hold such a name: said, not cut */
  kaun_ptree *tree;
  ASSERT_FAILS(kaun_ptree_unflatten(flat, &tree, &err), err, KAUN_EBADKEY,
               "'__metadata__\\0x' holds a NUL byte");
  kaun_flat_free(flat);
  free(bytes);
}

static void test_flat_lengths(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_flat *flat;
  ASSERT_OK(kaun_flat_new(&flat, &err), err);
  const uint64_t one[] = {1};
  kaun_tensor *t;
  ASSERT_OK(kaun_tensor_new(KAUN_DTYPE_U8, 1, one, &t, &err), err);
  ASSERT_OK(kaun_flat_add_n(flat, "w\0a", 3, t, &err), err);
  ASSERT_OK(kaun_tensor_new(KAUN_DTYPE_U8, 1, one, &t, &err), err);
  ASSERT_OK(kaun_flat_add_n(flat, "w\0b", 3, t, &err), err);
  ASSERT_OK(kaun_tensor_new(KAUN_DTYPE_U8, 1, one, &t, &err), err);
  ASSERT_OK(kaun_flat_add(flat, "w", t, &err), err);
  ASSERT_OK(kaun_tensor_new(KAUN_DTYPE_U8, 1, one, &t, &err), err);
  ASSERT_FAILS(kaun_flat_add_n(flat, "w\0b", 3, t, &err), err, KAUN_EDUPLICATE, "'w\\0b'");
  CU_ASSERT_EQUAL(kaun_flat_count(flat), 3);
  CU_ASSERT_STRING_EQUAL(kaun_flat_name(flat, 1), "w"); /* the old view: up to the NUL */
  CU_ASSERT_EQUAL(kaun_flat_name_length(flat, 1), 3);
  CU_ASSERT_EQUAL(kaun_flat_name_length(flat, 9), 0);
  CU_ASSERT_PTR_EQUAL(kaun_flat_find(flat, "w"), kaun_flat_tensor(flat, 2));
  CU_ASSERT_PTR_EQUAL(kaun_flat_find_n(flat, "w\0a", 3), kaun_flat_tensor(flat, 0));
  ASSERT_OK(kaun_flat_set_metadata_n(flat, "m\0", 2, "1\0", 2, &err), err);
  ASSERT_OK(kaun_flat_set_metadata(flat, "m", "2", &err), err);
  ASSERT_OK(kaun_flat_set_metadata_n(flat, "m\0", 2, "3", 1, &err), err); /* replaced in place */
  CU_ASSERT_EQUAL(kaun_flat_metadata_count(flat), 2);
  CU_ASSERT_EQUAL(kaun_flat_metadata_key_length(flat, 0), 2);
  CU_ASSERT_EQUAL(kaun_flat_metadata_value_length(flat, 0), 1);
  CU_ASSERT_STRING_EQUAL(kaun_flat_metadata_get(flat, "m"), "2");
  /* written whole: NUL as \u0000, names ordered bytewise (a prefix first) */
  char *hdr;
  size_t size, *order;
  uint64_t data;
  ASSERT_OK(kaun_safetensors_serialize_header(flat, &hdr, &size, &data, &order, &err), err);
  const char *want =
      "{\"__metadata__\":{\"m\\u0000\":\"3\",\"m\":\"2\"},"
      "\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
      "\"w\\u0000a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]},"
      "\"w\\u0000b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[2,3]}}";
  CU_ASSERT_TRUE(size - 8 >= strlen(want) && memcmp(hdr + 8, want, strlen(want)) == 0);
  CU_ASSERT_EQUAL(order[0], 2);
  free(hdr);
  free(order);
  /* what the reader would refuse is never written */
  ASSERT_OK(kaun_tensor_new(KAUN_DTYPE_U8, 1, one, &t, &err), err);
  ASSERT_OK(kaun_flat_add(flat, "__metadata__", t, &err), err);
  ASSERT_FAILS(kaun_safetensors_serialize_header(flat, &hdr, &size, &data, NULL, &err), err,
               KAUN_EINVAL, "cannot be called '__metadata__'");
  kaun_flat_free(flat);
  ASSERT_OK(kaun_flat_new(&flat, &err), err);
  ASSERT_OK(kaun_tensor_new(KAUN_DTYPE_U8, 1, one, &t, &err), err);
  ASSERT_OK(kaun_flat_add(flat, "bad\xff", t, &err), err);
  ASSERT_FAILS(kaun_safetensors_serialize_header(flat, &hdr, &size, &data, NULL, &err), err,
               KAUN_EINVAL, "'bad\\xff' is not valid UTF-8");
  kaun_flat_free(flat);
  ASSERT_OK(kaun_flat_new(&flat, &err), err);
  ASSERT_OK(kaun_flat_set_metadata(flat, "k", "\xc3", &err), err);
  ASSERT_FAILS(kaun_safetensors_serialize_header(flat, &hdr, &size, &data, NULL, &err), err,
               KAUN_EINVAL, "metadata value");
  kaun_flat_free(flat);
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
      {"\"__metadata__\\u0000x\" is a tensor, not the metadata",
       test_metadata_key_with_nul_is_a_tensor},
      {"names differing after a NUL are distinct", test_names_differing_after_nul},
      {"metadata keys and values keep their NUL bytes", test_metadata_with_nul},
      {"a file with NUL bytes in names loads and saves byte for byte", test_nul_round_trip},
      {"flat lists keep lengths; the writer refuses what it cannot read", test_flat_lengths},
      {NULL, NULL}};
  add_suite("safetensors", tests);
}
