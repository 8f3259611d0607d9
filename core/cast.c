/* Casting between the numeric dtypes.
 *
 * Every conversion goes through a correctly rounded path: integers and
 * floats are widened to double exactly (64-bit integers through
 * round-to-odd, which makes the second rounding correct), then narrowed
 * with one round-to-nearest-even step.  The common pairs have direct bit
 * loops so that large casts run at memory speed. */
#include "internal.h"

#include <math.h>
#include <string.h>

/* A narrow binary float format. */
typedef struct narrow_format {
  unsigned exp_bits;
  unsigned man_bits;
  int bias;
  bool has_inf;        /* IEEE: all-ones exponent is Inf/NaN; else e4m3fn style */
  uint32_t nan_code;   /* the NaN produced by a cast, without sign */
  bool nan_keeps_sign; /* the cast NaN copies the sign of the source */
} narrow_format;

static const narrow_format fmt_f16 = {5, 10, 15, true, 0x7E00, true};
static const narrow_format fmt_bf16 = {8, 7, 127, true, 0x7FC0, false};
static const narrow_format fmt_e5m2 = {5, 2, 15, true, 0x7F, true};
static const narrow_format fmt_e4m3 = {4, 3, 7, false, 0x7F, true};

static uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

static float f32_from_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* Encodes a double in a narrow format, rounding to nearest even. */
static uint32_t narrow_encode(double x, const narrow_format *f) {
  const unsigned total = f->exp_bits + f->man_bits;
  const uint32_t sign = signbit(x) ? (1u << total) : 0;
  if (isnan(x)) return f->nan_code | (f->nan_keeps_sign ? sign : 0);
  const uint32_t inf_code = ((1u << f->exp_bits) - 1u) << f->man_bits;
  const uint32_t overflow = f->has_inf ? inf_code : f->nan_code;
  if (isinf(x)) return overflow | sign;
  double ax = fabs(x);
  if (ax == 0.0) return sign;
  const int emin = 1 - f->bias;
  int e = ilogb(ax);
  if (e > f->bias + 2) return overflow | sign; /* far beyond the largest finite value */
  int e_eff = e < emin ? emin : e;
  double q = ldexp(ax, (int)f->man_bits - e_eff); /* exact: a power-of-two scaling */
  double r = floor(q);
  double frac = q - r;
  if (frac > 0.5 || (frac == 0.5 && fmod(r, 2.0) != 0.0)) r += 1.0;
  uint64_t code = ((uint64_t)(e_eff - emin) << f->man_bits) + (uint64_t)r;
  if (code >= overflow) return overflow | sign; /* rounding carried past the largest value */
  return (uint32_t)code | sign;
}

static double narrow_decode(uint32_t code, const narrow_format *f) {
  const unsigned total = f->exp_bits + f->man_bits;
  const bool neg = (code >> total) & 1u;
  const uint32_t mag = code & ((1u << total) - 1u);
  const uint32_t exp_all = (1u << f->exp_bits) - 1u;
  const uint32_t e = mag >> f->man_bits;
  const uint32_t m = mag & ((1u << f->man_bits) - 1u);
  double v;
  if (f->has_inf && e == exp_all) {
    v = m ? NAN : INFINITY;
  } else if (!f->has_inf && mag == f->nan_code) {
    v = NAN;
  } else if (e == 0) {
    v = ldexp((double)m, 1 - f->bias - (int)f->man_bits);
  } else {
    v = ldexp((double)((1u << f->man_bits) | m), (int)e - f->bias - (int)f->man_bits);
  }
  return neg ? -v : v;
}

/* F16 -> F32 keeping NaN payloads, as the reference converters do. */
static float f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
  if (e == 0x1F) return f32_from_bits(sign | 0x7F800000u | (m << 13));
  if (e) return f32_from_bits(sign | ((e + 112u) << 23) | (m << 13));
  float v = (float)m * 0x1p-24f;
  return sign ? -v : v;
}

static uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if (isnan(f)) return 0x7FC0;
  u += 0x7FFFu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

/* A double that rounds like `mag` would: exact below 2^53, otherwise
 * rounded to odd, so that narrowing it again is correctly rounded. */
static double u64_to_double_odd(uint64_t mag) {
  if (mag < (1ull << 53)) return (double)mag;
  int shift = 64 - __builtin_clzll(mag) - 53;
  uint64_t kept = mag >> shift;
  if (mag & ((1ull << shift) - 1)) kept |= 1;
  return ldexp((double)kept, shift);
}

/* ---- the generic element path ----------------------------------------- */

typedef enum { VAL_FLOAT, VAL_SIGNED, VAL_UNSIGNED } value_kind;

typedef struct value {
  value_kind kind;
  double f;
  int64_t i;
  uint64_t u;
} value;

#define DEFINE_LOAD(name, type)                     \
  static inline type name(const unsigned char *p) { \
    type v;                                         \
    memcpy(&v, p, sizeof v);                        \
    return v;                                       \
  }
DEFINE_LOAD(load_u16, uint16_t)
DEFINE_LOAD(load_u32, uint32_t)
DEFINE_LOAD(load_u64, uint64_t)
DEFINE_LOAD(load_i16, int16_t)
DEFINE_LOAD(load_i32, int32_t)
DEFINE_LOAD(load_i64, int64_t)
DEFINE_LOAD(load_f32, float)
DEFINE_LOAD(load_f64, double)

static value load(kaun_dtype dt, const unsigned char *p) {
  value v = {VAL_SIGNED, 0, 0, 0};
  switch (dt) {
    case KAUN_DTYPE_BOOL:
      v.kind = VAL_UNSIGNED;
      v.u = p[0] != 0;
      break;
    case KAUN_DTYPE_U8:
      v.kind = VAL_UNSIGNED;
      v.u = p[0];
      break;
    case KAUN_DTYPE_U16:
      v.kind = VAL_UNSIGNED;
      v.u = load_u16(p);
      break;
    case KAUN_DTYPE_U32:
      v.kind = VAL_UNSIGNED;
      v.u = load_u32(p);
      break;
    case KAUN_DTYPE_U64:
      v.kind = VAL_UNSIGNED;
      v.u = load_u64(p);
      break;
    case KAUN_DTYPE_I8: v.i = (int8_t)p[0]; break;
    case KAUN_DTYPE_I16: v.i = load_i16(p); break;
    case KAUN_DTYPE_I32: v.i = load_i32(p); break;
    case KAUN_DTYPE_I64: v.i = load_i64(p); break;
    case KAUN_DTYPE_F16:
      v.kind = VAL_FLOAT;
      v.f = f16_to_f32(load_u16(p));
      break;
    case KAUN_DTYPE_BF16:
      v.kind = VAL_FLOAT;
      v.f = f32_from_bits((uint32_t)load_u16(p) << 16);
      break;
    case KAUN_DTYPE_F32:
      v.kind = VAL_FLOAT;
      v.f = load_f32(p);
      break;
    case KAUN_DTYPE_F64:
      v.kind = VAL_FLOAT;
      v.f = load_f64(p);
      break;
    case KAUN_DTYPE_F8_E4M3:
      v.kind = VAL_FLOAT;
      v.f = narrow_decode(p[0], &fmt_e4m3);
      break;
    case KAUN_DTYPE_F8_E5M2:
      v.kind = VAL_FLOAT;
      v.f = narrow_decode(p[0], &fmt_e5m2);
      break;
    default: break; /* excluded by kaun_dtype_can_cast */
  }
  return v;
}

/* The value as a double that narrows correctly (see u64_to_double_odd). */
static double value_to_double_for_narrowing(value v) {
  switch (v.kind) {
    case VAL_FLOAT: return v.f;
    case VAL_UNSIGNED: return u64_to_double_odd(v.u);
    case VAL_SIGNED:
      return v.i < 0 ? -u64_to_double_odd(0 - (uint64_t)v.i) : u64_to_double_odd((uint64_t)v.i);
  }
  return 0;
}

/* Integer bits of the value, for an integer target of `bits` width. */
static uint64_t value_to_int_bits(value v, unsigned bits, bool is_signed) {
  if (v.kind == VAL_SIGNED) return (uint64_t)v.i; /* wraps when stored */
  if (v.kind == VAL_UNSIGNED) return v.u;
  double f = v.f;
  if (isnan(f)) return 0;
  f = trunc(f);
  if (is_signed) {
    double lo = -ldexp(1.0, (int)bits - 1);
    double hi = ldexp(1.0, (int)bits - 1);                /* exclusive */
    if (f <= lo) return (uint64_t)1 << (bits - 1);        /* min: sign bit only */
    if (f >= hi) return ((uint64_t)1 << (bits - 1)) - 1u; /* max */
    return (uint64_t)(int64_t)f;
  }
  double hi = ldexp(1.0, (int)bits);
  if (f <= 0) return 0;
  if (f >= hi) return bits == 64 ? UINT64_MAX : ((uint64_t)1 << bits) - 1u;
  return (uint64_t)f;
}

static bool value_nonzero(value v) {
  switch (v.kind) {
    case VAL_FLOAT: return v.f != 0.0 || isnan(v.f);
    case VAL_SIGNED: return v.i != 0;
    case VAL_UNSIGNED: return v.u != 0;
  }
  return false;
}

#define STORE_AS(type, p, x)   \
  do {                         \
    type v_ = (type)(x);       \
    memcpy(p, &v_, sizeof v_); \
  } while (0)

static void store(kaun_dtype dt, unsigned char *p, value v) {
  switch (dt) {
    case KAUN_DTYPE_BOOL: p[0] = value_nonzero(v); break;
    case KAUN_DTYPE_U8: p[0] = (uint8_t)value_to_int_bits(v, 8, false); break;
    case KAUN_DTYPE_I8: p[0] = (uint8_t)value_to_int_bits(v, 8, true); break;
    case KAUN_DTYPE_U16: STORE_AS(uint16_t, p, value_to_int_bits(v, 16, false)); break;
    case KAUN_DTYPE_I16: STORE_AS(uint16_t, p, value_to_int_bits(v, 16, true)); break;
    case KAUN_DTYPE_U32: STORE_AS(uint32_t, p, value_to_int_bits(v, 32, false)); break;
    case KAUN_DTYPE_I32: STORE_AS(uint32_t, p, value_to_int_bits(v, 32, true)); break;
    case KAUN_DTYPE_U64: STORE_AS(uint64_t, p, value_to_int_bits(v, 64, false)); break;
    case KAUN_DTYPE_I64: STORE_AS(uint64_t, p, value_to_int_bits(v, 64, true)); break;
    case KAUN_DTYPE_F64:
      if (v.kind == VAL_FLOAT)
        STORE_AS(double, p, v.f);
      else if (v.kind == VAL_SIGNED)
        STORE_AS(double, p, (double)v.i);
      else
        STORE_AS(double, p, (double)v.u);
      break;
    case KAUN_DTYPE_F32:
      if (v.kind == VAL_FLOAT)
        STORE_AS(float, p, (float)v.f);
      else if (v.kind == VAL_SIGNED)
        STORE_AS(float, p, (float)v.i);
      else
        STORE_AS(float, p, (float)v.u);
      break;
    case KAUN_DTYPE_F16:
      STORE_AS(uint16_t, p, narrow_encode(value_to_double_for_narrowing(v), &fmt_f16));
      break;
    case KAUN_DTYPE_BF16:
      STORE_AS(uint16_t, p, narrow_encode(value_to_double_for_narrowing(v), &fmt_bf16));
      break;
    case KAUN_DTYPE_F8_E4M3:
      p[0] = (uint8_t)narrow_encode(value_to_double_for_narrowing(v), &fmt_e4m3);
      break;
    case KAUN_DTYPE_F8_E5M2:
      p[0] = (uint8_t)narrow_encode(value_to_double_for_narrowing(v), &fmt_e5m2);
      break;
    default: break;
  }
}

/* ---- fast loops --------------------------------------------------------- */

static bool cast_fast(kaun_dtype s, const unsigned char *src, kaun_dtype d, unsigned char *dst,
                      size_t n) {
  if (s == KAUN_DTYPE_BF16 && d == KAUN_DTYPE_F32) {
    for (size_t i = 0; i < n; i++) {
      uint32_t u = (uint32_t)load_u16(src + 2 * i) << 16;
      memcpy(dst + 4 * i, &u, 4);
    }
    return true;
  }
  if (s == KAUN_DTYPE_F16 && d == KAUN_DTYPE_F32) {
    for (size_t i = 0; i < n; i++) STORE_AS(float, dst + 4 * i, f16_to_f32(load_u16(src + 2 * i)));
    return true;
  }
  if (s == KAUN_DTYPE_F32 && d == KAUN_DTYPE_BF16) {
    for (size_t i = 0; i < n; i++)
      STORE_AS(uint16_t, dst + 2 * i, f32_to_bf16(load_f32(src + 4 * i)));
    return true;
  }
  if (s == KAUN_DTYPE_F32 && d == KAUN_DTYPE_F64) {
    for (size_t i = 0; i < n; i++) STORE_AS(double, dst + 8 * i, (double)load_f32(src + 4 * i));
    return true;
  }
  if (s == KAUN_DTYPE_F64 && d == KAUN_DTYPE_F32) {
    for (size_t i = 0; i < n; i++) STORE_AS(float, dst + 4 * i, (float)load_f64(src + 8 * i));
    return true;
  }
  return false;
}

int kaun_cast(kaun_dtype src_dtype, const void *src, kaun_dtype dst_dtype, void *dst, size_t count,
              kaun_error *err) {
  if (!kaun_dtype_can_cast(src_dtype) || !kaun_dtype_can_cast(dst_dtype)) {
    const char *sn = kaun_dtype_name(src_dtype), *dn = kaun_dtype_name(dst_dtype);
    return kaun__error_set(err, KAUN_ENOTSUP,
                           "kaun cannot cast %s to %s: casts are supported between BOOL, the "
                           "integer types, F16, BF16, F32, F64, F8_E4M3 and F8_E5M2",
                           sn ? sn : "(invalid dtype)", dn ? dn : "(invalid dtype)");
  }
  const unsigned char *s = src;
  unsigned char *d = dst;
  if (src_dtype == dst_dtype) {
    if (count) memcpy(d, s, count * (kaun_dtype_bits(src_dtype) / 8));
    return KAUN_OK;
  }
  if (cast_fast(src_dtype, s, dst_dtype, d, count)) return KAUN_OK;
  const size_t ss = kaun_dtype_bits(src_dtype) / 8, ds = kaun_dtype_bits(dst_dtype) / 8;
  for (size_t i = 0; i < count; i++) store(dst_dtype, d + i * ds, load(src_dtype, s + i * ss));
  return KAUN_OK;
}

int kaun_tensor_cast(const kaun_tensor *t, kaun_dtype dtype, kaun_tensor **out, kaun_error *err) {
  *out = NULL;
  kaun_dtype from = kaun_tensor_dtype(t);
  if (from == dtype) return kaun_tensor_clone(t, out, err);
  kaun_tensor *r;
  int rc = kaun__tensor_new_uninit(dtype, kaun_tensor_ndim(t), kaun_tensor_shape(t), &r, err);
  if (rc) return rc;
  void *dst;
  rc = kaun_tensor_data_mut(r, &dst, err);
  if (!rc) rc = kaun_cast(from, kaun_tensor_data(t), dtype, dst, (size_t)kaun_tensor_numel(t), err);
  if (rc) {
    kaun_tensor_free(r);
    return rc;
  }
  *out = r;
  return KAUN_OK;
}
