/* The dtype table. */
#include "internal.h"

#include <string.h>

typedef struct dtype_desc {
  const char *name;
  unsigned bits;
  unsigned rank; /* position in the reference's Dtype enum */
  bool castable;
  bool is_float;
} dtype_desc;

/* Indexed by kaun_dtype.  The reference enum order today is exactly our
 * numbering, but rank is kept apart so new reference dtypes inserted in the
 * middle of its enum do not force us to renumber ours. */
static const dtype_desc dtypes[KAUN_DTYPE_COUNT_] = {
    [KAUN_DTYPE_BOOL] = {"BOOL", 8, 0, true, false},
    [KAUN_DTYPE_F4] = {"F4", 4, 1, false, true},
    [KAUN_DTYPE_F6_E2M3] = {"F6_E2M3", 6, 2, false, true},
    [KAUN_DTYPE_F6_E3M2] = {"F6_E3M2", 6, 3, false, true},
    [KAUN_DTYPE_U8] = {"U8", 8, 4, true, false},
    [KAUN_DTYPE_I8] = {"I8", 8, 5, true, false},
    [KAUN_DTYPE_F8_E5M2] = {"F8_E5M2", 8, 6, true, true},
    [KAUN_DTYPE_F8_E4M3] = {"F8_E4M3", 8, 7, true, true},
    [KAUN_DTYPE_F8_E8M0] = {"F8_E8M0", 8, 8, false, true},
    [KAUN_DTYPE_F8_E4M3FNUZ] = {"F8_E4M3FNUZ", 8, 9, false, true},
    [KAUN_DTYPE_F8_E5M2FNUZ] = {"F8_E5M2FNUZ", 8, 10, false, true},
    [KAUN_DTYPE_I16] = {"I16", 16, 11, true, false},
    [KAUN_DTYPE_U16] = {"U16", 16, 12, true, false},
    [KAUN_DTYPE_F16] = {"F16", 16, 13, true, true},
    [KAUN_DTYPE_BF16] = {"BF16", 16, 14, true, true},
    [KAUN_DTYPE_I32] = {"I32", 32, 15, true, false},
    [KAUN_DTYPE_U32] = {"U32", 32, 16, true, false},
    [KAUN_DTYPE_F32] = {"F32", 32, 17, true, true},
    [KAUN_DTYPE_C64] = {"C64", 64, 18, false, false},
    [KAUN_DTYPE_F64] = {"F64", 64, 19, true, true},
    [KAUN_DTYPE_I64] = {"I64", 64, 20, true, false},
    [KAUN_DTYPE_U64] = {"U64", 64, 21, true, false},
};

static const dtype_desc *desc(kaun_dtype d) {
  return ((unsigned)d < KAUN_DTYPE_COUNT_) ? &dtypes[d] : NULL;
}

const char *kaun_dtype_name(kaun_dtype d) {
  const dtype_desc *p = desc(d);
  return p ? p->name : NULL;
}

int kaun_dtype_from_name(const char *name, size_t len, kaun_dtype *out) {
  for (unsigned i = 0; i < KAUN_DTYPE_COUNT_; i++) {
    if (strlen(dtypes[i].name) == len && memcmp(dtypes[i].name, name, len) == 0) {
      *out = (kaun_dtype)i;
      return KAUN_OK;
    }
  }
  return KAUN_EDTYPE;
}

unsigned kaun_dtype_bits(kaun_dtype d) {
  const dtype_desc *p = desc(d);
  return p ? p->bits : 0;
}

unsigned kaun_dtype_rank(kaun_dtype d) {
  const dtype_desc *p = desc(d);
  return p ? p->rank : 0;
}

int kaun_dtype_can_cast(kaun_dtype d) {
  const dtype_desc *p = desc(d);
  return p && p->castable;
}

int kaun_dtype_is_float(kaun_dtype d) {
  const dtype_desc *p = desc(d);
  return p && p->is_float;
}
