/* Casting: rounding, specials, overflow, and exhaustive round trips. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "unit.h"

static float f32(uint32_t bits) {
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

static uint32_t bits32(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

/* Casts one F32 value to a 16-bit dtype and returns the bits. */
static uint16_t to16(float x, kaun_dtype d) {
  uint16_t out = 0xDEAD;
  CU_ASSERT_EQUAL(kaun_cast(KAUN_DTYPE_F32, &x, d, &out, 1, NULL), KAUN_OK);
  return out;
}

static uint8_t to8(double x, kaun_dtype d) {
  uint8_t out = 0xAA;
  CU_ASSERT_EQUAL(kaun_cast(KAUN_DTYPE_F64, &x, d, &out, 1, NULL), KAUN_OK);
  return out;
}

static void test_bf16_rounding(void) {
  CU_ASSERT_EQUAL(to16(1.0f, KAUN_DTYPE_BF16), 0x3F80);
  CU_ASSERT_EQUAL(to16(f32(0x3F808000), KAUN_DTYPE_BF16), 0x3F80); /* tie to even (down) */
  CU_ASSERT_EQUAL(to16(f32(0x3F818000), KAUN_DTYPE_BF16), 0x3F82); /* tie to even (up) */
  CU_ASSERT_EQUAL(to16(f32(0x3F808001), KAUN_DTYPE_BF16), 0x3F81); /* above the tie */
  CU_ASSERT_EQUAL(to16(f32(0x7F7FFFFF), KAUN_DTYPE_BF16), 0x7F80); /* FLT_MAX rounds to Inf */
  CU_ASSERT_EQUAL(to16(-INFINITY, KAUN_DTYPE_BF16), 0xFF80);
  CU_ASSERT_EQUAL(to16(NAN, KAUN_DTYPE_BF16), 0x7FC0); /* PyTorch's canonical NaN */
  CU_ASSERT_EQUAL(to16(-0.0f, KAUN_DTYPE_BF16), 0x8000);
  CU_ASSERT_EQUAL(to16(f32(0x00010000), KAUN_DTYPE_BF16), 0x0001); /* subnormal kept */
  /* the same through the generic path (from F64) */
  double x = 1.0 + 3.0 / 256.0; /* exactly between 0x3F81 and 0x3F82 */
  uint16_t b;
  CU_ASSERT_EQUAL(kaun_cast(KAUN_DTYPE_F64, &x, KAUN_DTYPE_BF16, &b, 1, NULL), KAUN_OK);
  CU_ASSERT_EQUAL(b, 0x3F82);
  x = 1e300;
  CU_ASSERT_EQUAL(kaun_cast(KAUN_DTYPE_F64, &x, KAUN_DTYPE_BF16, &b, 1, NULL), KAUN_OK);
  CU_ASSERT_EQUAL(b, 0x7F80);
}

static void test_f16_rounding(void) {
  CU_ASSERT_EQUAL(to16(1.0f, KAUN_DTYPE_F16), 0x3C00);
  CU_ASSERT_EQUAL(to16(65504.0f, KAUN_DTYPE_F16), 0x7BFF);
  CU_ASSERT_EQUAL(to16(65519.0f, KAUN_DTYPE_F16), 0x7BFF);
  CU_ASSERT_EQUAL(to16(65520.0f, KAUN_DTYPE_F16), 0x7C00); /* the tie goes to Inf (even) */
  CU_ASSERT_EQUAL(to16(-1e9f, KAUN_DTYPE_F16), 0xFC00);
  CU_ASSERT_EQUAL(to16(ldexpf(1, -24), KAUN_DTYPE_F16), 0x0001);
  CU_ASSERT_EQUAL(to16(ldexpf(1, -25), KAUN_DTYPE_F16), 0x0000); /* tie to even: 0 */
  CU_ASSERT_EQUAL(to16(ldexpf(3, -26), KAUN_DTYPE_F16), 0x0001);
  CU_ASSERT_EQUAL(to16(ldexpf(3, -25), KAUN_DTYPE_F16), 0x0002);    /* 1.5 ulp ties to 2 */
  CU_ASSERT_EQUAL(to16(ldexpf(1023, -24), KAUN_DTYPE_F16), 0x03FF); /* largest subnormal */
  CU_ASSERT_EQUAL(to16(ldexpf(2047, -25), KAUN_DTYPE_F16), 0x0400); /* rounds up to normal */
  CU_ASSERT_EQUAL(to16(-NAN, KAUN_DTYPE_F16), 0xFE00);              /* sign kept */
}

static void test_f16_payload_widening(void) {
  const uint16_t h[] = {0x7E01, 0xFC00, 0x0001, 0x8000};
  float f[4];
  CU_ASSERT_EQUAL(kaun_cast(KAUN_DTYPE_F16, h, KAUN_DTYPE_F32, f, 4, NULL), KAUN_OK);
  CU_ASSERT_EQUAL(bits32(f[0]), 0x7FC02000u); /* payload shifted, not replaced */
  CU_ASSERT_TRUE(isinf(f[1]) && f[1] < 0);
  CU_ASSERT_EQUAL(f[2], ldexpf(1, -24));
  CU_ASSERT_EQUAL(bits32(f[3]), 0x80000000u);
  const uint16_t b[] = {0x7FC1};
  float g;
  CU_ASSERT_EQUAL(kaun_cast(KAUN_DTYPE_BF16, b, KAUN_DTYPE_F32, &g, 1, NULL), KAUN_OK);
  CU_ASSERT_EQUAL(bits32(g), 0x7FC10000u);
}

static void test_f8(void) {
  /* E4M3 ("fn"): max 448, no Inf, NaN = S.1111.111, overflow -> NaN (PyTorch) */
  CU_ASSERT_EQUAL(to8(448.0, KAUN_DTYPE_F8_E4M3), 0x7E);
  CU_ASSERT_EQUAL(to8(464.0, KAUN_DTYPE_F8_E4M3), 0x7E); /* tie to even stays finite */
  CU_ASSERT_EQUAL(to8(465.0, KAUN_DTYPE_F8_E4M3), 0x7F);
  CU_ASSERT_EQUAL(to8(1e6, KAUN_DTYPE_F8_E4M3), 0x7F);
  CU_ASSERT_EQUAL(to8(INFINITY, KAUN_DTYPE_F8_E4M3), 0x7F);
  CU_ASSERT_EQUAL(to8(-INFINITY, KAUN_DTYPE_F8_E4M3), 0xFF);
  CU_ASSERT_EQUAL(to8(NAN, KAUN_DTYPE_F8_E4M3), 0x7F);
  CU_ASSERT_EQUAL(to8(1.0, KAUN_DTYPE_F8_E4M3), 0x38);
  CU_ASSERT_EQUAL(to8(ldexp(1, -9), KAUN_DTYPE_F8_E4M3), 0x01); /* smallest subnormal */
  CU_ASSERT_EQUAL(to8(ldexp(1, -10), KAUN_DTYPE_F8_E4M3), 0x00);
  CU_ASSERT_EQUAL(to8(-0.0, KAUN_DTYPE_F8_E4M3), 0x80);
  /* E5M2: IEEE-like, max 57344 */
  CU_ASSERT_EQUAL(to8(57344.0, KAUN_DTYPE_F8_E5M2), 0x7B);
  CU_ASSERT_EQUAL(to8(61440.0, KAUN_DTYPE_F8_E5M2), 0x7C); /* tie rounds to Inf */
  CU_ASSERT_EQUAL(to8(61439.0, KAUN_DTYPE_F8_E5M2), 0x7B);
  CU_ASSERT_EQUAL(to8(INFINITY, KAUN_DTYPE_F8_E5M2), 0x7C);
  CU_ASSERT_EQUAL(to8(-NAN, KAUN_DTYPE_F8_E5M2), 0xFF);
  CU_ASSERT_EQUAL(to8(1.0, KAUN_DTYPE_F8_E5M2), 0x3C);
  CU_ASSERT_EQUAL(to8(ldexp(1, -16), KAUN_DTYPE_F8_E5M2), 0x01);
}

/* Every pattern of a narrow dtype survives widening and narrowing back. */
static void round_trip_all(kaun_dtype d, unsigned bits, kaun_dtype wide) {
  size_t n = (size_t)1 << bits, ws = kaun_dtype_bits(wide) / 8, bs = bits / 8;
  unsigned char *src = malloc(n * bs), *back = malloc(n * bs), *mid = malloc(n * ws);
  for (size_t i = 0; i < n; i++) memcpy(src + i * bs, &i, bs);
  CU_ASSERT_EQUAL(kaun_cast(d, src, wide, mid, n, NULL), KAUN_OK);
  CU_ASSERT_EQUAL(kaun_cast(wide, mid, d, back, n, NULL), KAUN_OK);
  size_t bad = 0;
  for (size_t i = 0; i < n; i++) {
    double v;
    CU_ASSERT_EQUAL(kaun_cast(wide, mid + i * ws, KAUN_DTYPE_F64, &v, 1, NULL), KAUN_OK);
    if (isnan(v)) continue; /* NaNs come back as a NaN, checked elsewhere */
    if (memcmp(src + i * bs, back + i * bs, bs) != 0) bad++;
  }
  CU_ASSERT_EQUAL(bad, 0);
  free(src);
  free(back);
  free(mid);
}

static void test_exhaustive_round_trips(void) {
  round_trip_all(KAUN_DTYPE_F8_E4M3, 8, KAUN_DTYPE_F32);
  round_trip_all(KAUN_DTYPE_F8_E4M3, 8, KAUN_DTYPE_F16);
  round_trip_all(KAUN_DTYPE_F8_E4M3, 8, KAUN_DTYPE_BF16);
  round_trip_all(KAUN_DTYPE_F8_E5M2, 8, KAUN_DTYPE_F16);
  round_trip_all(KAUN_DTYPE_F8_E5M2, 8, KAUN_DTYPE_F64);
  round_trip_all(KAUN_DTYPE_F16, 16, KAUN_DTYPE_F32);
  round_trip_all(KAUN_DTYPE_F16, 16, KAUN_DTYPE_F64);
  round_trip_all(KAUN_DTYPE_BF16, 16, KAUN_DTYPE_F32);
  round_trip_all(KAUN_DTYPE_BF16, 16, KAUN_DTYPE_F64);
}

static void test_integers_to_floats(void) {
  /* 2^63 + 2^55 + 1: naive double rounding would give 2^63 (0x5F00) */
  uint64_t u = (1ull << 63) + (1ull << 55) + 1;
  uint16_t b;
  CU_ASSERT_EQUAL(kaun_cast(KAUN_DTYPE_U64, &u, KAUN_DTYPE_BF16, &b, 1, NULL), KAUN_OK);
  CU_ASSERT_EQUAL(b, 0x5F01);
  int64_t i = -((int64_t)1 << 62) - ((int64_t)1 << 54) - 1;
  CU_ASSERT_EQUAL(kaun_cast(KAUN_DTYPE_I64, &i, KAUN_DTYPE_BF16, &b, 1, NULL), KAUN_OK);
  CU_ASSERT_EQUAL(b, 0xDE81);
  int32_t big = 70000;
  CU_ASSERT_EQUAL(kaun_cast(KAUN_DTYPE_I32, &big, KAUN_DTYPE_F16, &b, 1, NULL), KAUN_OK);
  CU_ASSERT_EQUAL(b, 0x7C00); /* beyond F16: Inf */
  int64_t exact = (1ll << 53) + 1;
  double d;
  CU_ASSERT_EQUAL(kaun_cast(KAUN_DTYPE_I64, &exact, KAUN_DTYPE_F64, &d, 1, NULL), KAUN_OK);
  CU_ASSERT_EQUAL(d, 9007199254740992.0); /* tie to even */
  uint8_t flag = 1;
  float f;
  CU_ASSERT_EQUAL(kaun_cast(KAUN_DTYPE_BOOL, &flag, KAUN_DTYPE_F32, &f, 1, NULL), KAUN_OK);
  CU_ASSERT_EQUAL(f, 1.0f);
}

static void test_floats_to_integers(void) {
  const float in[] = {3.7f, -3.7f, NAN, 1e10f, -1e10f, INFINITY, -0.5f};
  int32_t out[7];
  CU_ASSERT_EQUAL(kaun_cast(KAUN_DTYPE_F32, in, KAUN_DTYPE_I32, out, 7, NULL), KAUN_OK);
  CU_ASSERT_EQUAL(out[0], 3);
  CU_ASSERT_EQUAL(out[1], -3);
  CU_ASSERT_EQUAL(out[2], 0);
  CU_ASSERT_EQUAL(out[3], INT32_MAX);
  CU_ASSERT_EQUAL(out[4], INT32_MIN);
  CU_ASSERT_EQUAL(out[5], INT32_MAX);
  CU_ASSERT_EQUAL(out[6], 0);
  uint8_t u8[7];
  CU_ASSERT_EQUAL(kaun_cast(KAUN_DTYPE_F32, in, KAUN_DTYPE_U8, u8, 7, NULL), KAUN_OK);
  CU_ASSERT_EQUAL(u8[0], 3);
  CU_ASSERT_EQUAL(u8[1], 0);
  CU_ASSERT_EQUAL(u8[3], 255);
  int64_t i64[7];
  CU_ASSERT_EQUAL(kaun_cast(KAUN_DTYPE_F32, in, KAUN_DTYPE_I64, i64, 7, NULL), KAUN_OK);
  CU_ASSERT_EQUAL(i64[3], 10000000000ll);
  CU_ASSERT_EQUAL(i64[5], INT64_MAX);
  uint64_t u64[7];
  CU_ASSERT_EQUAL(kaun_cast(KAUN_DTYPE_F32, in, KAUN_DTYPE_U64, u64, 7, NULL), KAUN_OK);
  CU_ASSERT_EQUAL(u64[5], UINT64_MAX);
  uint8_t bools[7];
  CU_ASSERT_EQUAL(kaun_cast(KAUN_DTYPE_F32, in, KAUN_DTYPE_BOOL, bools, 7, NULL), KAUN_OK);
  CU_ASSERT_EQUAL(bools[2], 1); /* NaN is true, as in PyTorch */
  float zeros[] = {0.0f, -0.0f};
  CU_ASSERT_EQUAL(kaun_cast(KAUN_DTYPE_F32, zeros, KAUN_DTYPE_BOOL, bools, 2, NULL), KAUN_OK);
  CU_ASSERT_EQUAL(bools[0], 0);
  CU_ASSERT_EQUAL(bools[1], 0);
}

static void test_integer_wrap(void) {
  const int32_t in[] = {300, -1, 128};
  int8_t i8[3];
  CU_ASSERT_EQUAL(kaun_cast(KAUN_DTYPE_I32, in, KAUN_DTYPE_I8, i8, 3, NULL), KAUN_OK);
  CU_ASSERT_EQUAL(i8[0], 44);
  CU_ASSERT_EQUAL(i8[1], -1);
  CU_ASSERT_EQUAL(i8[2], -128);
  uint16_t u16[3];
  CU_ASSERT_EQUAL(kaun_cast(KAUN_DTYPE_I32, in, KAUN_DTYPE_U16, u16, 3, NULL), KAUN_OK);
  CU_ASSERT_EQUAL(u16[1], 65535);
  const uint8_t b[] = {0, 7};
  uint8_t bb[2];
  CU_ASSERT_EQUAL(kaun_cast(KAUN_DTYPE_U8, b, KAUN_DTYPE_BOOL, bb, 2, NULL), KAUN_OK);
  CU_ASSERT_EQUAL(bb[0], 0);
  CU_ASSERT_EQUAL(bb[1], 1);
}

static void test_unsupported(void) {
  kaun_error err = KAUN_ERROR_INIT;
  uint8_t x = 0;
  float f;
  ASSERT_FAILS(kaun_cast(KAUN_DTYPE_F8_E8M0, &x, KAUN_DTYPE_F32, &f, 1, &err), err, KAUN_ENOTSUP,
               "F8_E8M0 to F32");
  ASSERT_FAILS(kaun_cast(KAUN_DTYPE_F32, &f, KAUN_DTYPE_C64, &x, 1, &err), err, KAUN_ENOTSUP,
               "F32 to C64");
  ASSERT_FAILS(kaun_cast(KAUN_DTYPE_F4, &x, KAUN_DTYPE_F16, &f, 1, &err), err, KAUN_ENOTSUP,
               "F4 to F16");
  const uint64_t shape[] = {2};
  kaun_tensor *t, *c;
  ASSERT_OK(kaun_tensor_new(KAUN_DTYPE_F8_E4M3FNUZ, 1, shape, &t, &err), err);
  ASSERT_FAILS(kaun_tensor_cast(t, KAUN_DTYPE_F32, &c, &err), err, KAUN_ENOTSUP, "F8_E4M3FNUZ");
  CU_ASSERT_PTR_NULL(c);
  kaun_tensor_free(t);
}

static void test_tensor_cast(void) {
  kaun_error err = KAUN_ERROR_INIT;
  const uint64_t shape[] = {2, 2};
  const float v[] = {1.0f, 2.5f, -3.0f, 65536.0f};
  kaun_tensor *t, *h, *same;
  ASSERT_OK(kaun_tensor_new_copy(KAUN_DTYPE_F32, 2, shape, v, sizeof v, &t, &err), err);
  ASSERT_OK(kaun_tensor_cast(t, KAUN_DTYPE_F16, &h, &err), err);
  CU_ASSERT_EQUAL(kaun_tensor_dtype(h), KAUN_DTYPE_F16);
  CU_ASSERT_EQUAL(kaun_tensor_nbytes(h), 8);
  CU_ASSERT_EQUAL(kaun_tensor_shape(h)[1], 2);
  const uint16_t *hv = kaun_tensor_data(h);
  CU_ASSERT_EQUAL(hv[0], 0x3C00);
  CU_ASSERT_EQUAL(hv[1], 0x4100);
  CU_ASSERT_EQUAL(hv[2], 0xC200);
  CU_ASSERT_EQUAL(hv[3], 0x7C00);
  ASSERT_OK(kaun_tensor_cast(t, KAUN_DTYPE_F32, &same, &err), err);
  CU_ASSERT_EQUAL(memcmp(kaun_tensor_data(same), v, sizeof v), 0);
  kaun_tensor_free(t);
  kaun_tensor_free(h);
  kaun_tensor_free(same);
}

void register_cast_tests(void) {
  static const unit_test tests[] = {
      {"F32 to BF16 rounds to nearest even", test_bf16_rounding},
      {"F32 to F16 rounds, overflows and underflows", test_f16_rounding},
      {"widening keeps NaN payloads", test_f16_payload_widening},
      {"F8 E4M3 and E5M2 follow PyTorch", test_f8},
      {"every narrow pattern round-trips", test_exhaustive_round_trips},
      {"64-bit integers round once", test_integers_to_floats},
      {"floats to integers truncate and saturate", test_floats_to_integers},
      {"integers wrap between widths", test_integer_wrap},
      {"unsupported casts are errors", test_unsupported},
      {"tensor casts keep shape", test_tensor_cast},
      {NULL, NULL}};
  add_suite("cast", tests);
}
