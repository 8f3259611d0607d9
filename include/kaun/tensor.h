/* kaun — dtypes, reference-counted buffers and tensors.
 *
 * A tensor is a dtype, a shape and a byte range.  Its bytes are either
 * owned by the tensor or a view into a kaun_buffer: a reference-counted
 * block of memory (a file mapping, a downloaded blob, memory the caller
 * hands over).  A view keeps its buffer alive, so tensors, trees and the
 * objects they were loaded from can be freed in any order.
 *
 * All data is little-endian, as in SafeTensors files.
 */
#ifndef KAUN_TENSOR_H
#define KAUN_TENSOR_H

#include <kaun/common.h>
#include <kaun/error.h>

KAUN_BEGIN_DECLS

/* Every dtype the reference SafeTensors implementation knows.  Values are
 * stable and only ever appended; they do not encode the on-disk order
 * (see kaun_dtype_rank). */
typedef enum kaun_dtype {
  KAUN_DTYPE_BOOL = 0,
  KAUN_DTYPE_F4, /* 4-bit float, E2M1 */
  KAUN_DTYPE_F6_E2M3,
  KAUN_DTYPE_F6_E3M2,
  KAUN_DTYPE_U8,
  KAUN_DTYPE_I8,
  KAUN_DTYPE_F8_E5M2, /* IEEE-like: has Inf and NaN */
  KAUN_DTYPE_F8_E4M3, /* "e4m3fn": no Inf, NaN = S.1111.111, max 448 */
  KAUN_DTYPE_F8_E8M0,
  KAUN_DTYPE_F8_E4M3FNUZ,
  KAUN_DTYPE_F8_E5M2FNUZ,
  KAUN_DTYPE_I16,
  KAUN_DTYPE_U16,
  KAUN_DTYPE_F16,
  KAUN_DTYPE_BF16,
  KAUN_DTYPE_I32,
  KAUN_DTYPE_U32,
  KAUN_DTYPE_F32,
  KAUN_DTYPE_C64, /* complex: two F32 */
  KAUN_DTYPE_F64,
  KAUN_DTYPE_I64,
  KAUN_DTYPE_U64,
  KAUN_DTYPE_COUNT_ /* not a dtype: the number of dtypes */
} kaun_dtype;

/* The SafeTensors name ("BF16"), or NULL for an out-of-range value. */
KAUN_API const char *kaun_dtype_name(kaun_dtype dtype);

/* Looks up a dtype by its SafeTensors name (case-sensitive, as in files).
 * `len` is the name's length (the name need not be NUL-terminated).
 * Returns KAUN_OK, or KAUN_EDTYPE when the name is unknown. */
KAUN_API int kaun_dtype_from_name(const char *name, size_t len, kaun_dtype *out);

/* Bits per element: 1..64 (BOOL is 8 bits, F4 is 4, F6_* are 6).
 * 0 for an out-of-range value. */
KAUN_API unsigned kaun_dtype_bits(kaun_dtype dtype);

/* The position of a dtype in the reference's Dtype enum.  The SafeTensors
 * writer orders tensors by descending rank, then by name. */
KAUN_API unsigned kaun_dtype_rank(kaun_dtype dtype);

/* 1 when kaun_cast can convert from and to this dtype: BOOL, the integer
 * types, F16, BF16, F32, F64, F8_E4M3, F8_E5M2.  Other dtypes are carried
 * byte for byte but not converted. */
KAUN_API int kaun_dtype_can_cast(kaun_dtype dtype);

/* 1 for the floating-point dtypes (F4..F64, the F8 family, not C64). */
KAUN_API int kaun_dtype_is_float(kaun_dtype dtype);

/* ---- buffers ---------------------------------------------------------- */

/* A reference-counted, read-only block of bytes.  Reference counting is
 * atomic: references may be taken and dropped from any thread. */
typedef struct kaun_buffer kaun_buffer;

/* Called once, when the last reference is dropped. */
typedef void (*kaun_buffer_release_fn)(void *data, size_t size, void *context);

/* Wraps memory the caller already has.  `release` (may be NULL) is called
 * with `data`, `size` and `context` when the last reference goes.  On
 * failure `release` is not called and the caller still owns `data`.
 * Errors: KAUN_ENOMEM. */
KAUN_API int kaun_buffer_wrap(const void *data, size_t size, kaun_buffer_release_fn release,
                              void *context, kaun_buffer **out, kaun_error *err);

/* Maps a whole file read-only (an empty file gives an empty buffer).
 * Errors: KAUN_ENOENT (no such file), KAUN_EIO (open, fstat or mmap
 * failed; sys_errno set), KAUN_EINVAL (not a regular file). */
KAUN_API int kaun_buffer_map_file(const char *path, kaun_buffer **out, kaun_error *err);

/* Takes one more reference and returns `buffer`.  Accepts NULL. */
KAUN_API kaun_buffer *kaun_buffer_ref(kaun_buffer *buffer);

/* Drops one reference; the last one releases the memory.  Accepts NULL. */
KAUN_API void kaun_buffer_unref(kaun_buffer *buffer);

/* The bytes and their size (NULL and 0 for NULL). */
KAUN_API const void *kaun_buffer_data(const kaun_buffer *buffer);
KAUN_API size_t kaun_buffer_size(const kaun_buffer *buffer);

/* ---- tensors ---------------------------------------------------------- */

typedef struct kaun_tensor kaun_tensor;

/* Maximum number of dimensions a tensor may have. */
#define KAUN_MAX_DIMS 64

/* The number of bytes `ndim`/`shape` of `dtype` occupy, checking for
 * overflow.  Errors: KAUN_EOVERFLOW (element count or bytes do not fit
 * in 64 bits), KAUN_EMISALIGNED (sub-byte dtype whose bits do not make
 * whole bytes), KAUN_EDTYPE, KAUN_EINVAL (ndim > KAUN_MAX_DIMS). */
KAUN_API int kaun_tensor_size_bytes(kaun_dtype dtype, size_t ndim, const uint64_t *shape,
                                    uint64_t *out_bytes, kaun_error *err);

/* A new tensor owning zero-filled memory.  `shape` may be NULL when
 * ndim is 0 (a scalar).  Errors: as kaun_tensor_size_bytes, KAUN_ENOMEM. */
KAUN_API int kaun_tensor_new(kaun_dtype dtype, size_t ndim, const uint64_t *shape,
                             kaun_tensor **out, kaun_error *err);

/* A new tensor owning a copy of `nbytes` bytes at `data`; `nbytes` must
 * equal the size of the shape.  Errors: KAUN_ESIZE, and as
 * kaun_tensor_new. */
KAUN_API int kaun_tensor_new_copy(kaun_dtype dtype, size_t ndim, const uint64_t *shape,
                                  const void *data, size_t nbytes, kaun_tensor **out,
                                  kaun_error *err);

/* A new tensor viewing `nbytes` bytes of `buffer` from `offset`: no copy.
 * Takes its own reference to `buffer`.  Errors: KAUN_ESIZE (nbytes does
 * not match the shape), KAUN_EOFFSET (range outside the buffer). */
KAUN_API int kaun_tensor_new_view(kaun_dtype dtype, size_t ndim, const uint64_t *shape,
                                  kaun_buffer *buffer, size_t offset, size_t nbytes,
                                  kaun_tensor **out, kaun_error *err);

/* Frees a tensor (and drops its buffer reference).  Accepts NULL. */
KAUN_API void kaun_tensor_free(kaun_tensor *tensor);

/* A new tensor with the same dtype, shape and bytes.  A view's clone is a
 * view of the same buffer (no copy); an owned tensor's clone owns a copy.
 * Errors: KAUN_ENOMEM. */
KAUN_API int kaun_tensor_clone(const kaun_tensor *tensor, kaun_tensor **out, kaun_error *err);

/* Accessors: constant time, thread-safe while nobody writes the tensor. */
KAUN_API kaun_dtype kaun_tensor_dtype(const kaun_tensor *tensor);
KAUN_API size_t kaun_tensor_ndim(const kaun_tensor *tensor);
/* The shape: ndim entries, owned by the tensor. */
KAUN_API const uint64_t *kaun_tensor_shape(const kaun_tensor *tensor);
/* The number of elements (1 for a scalar, 0 when a dimension is 0). */
KAUN_API uint64_t kaun_tensor_numel(const kaun_tensor *tensor);
KAUN_API size_t kaun_tensor_nbytes(const kaun_tensor *tensor);
/* Read-only bytes.  Valid while the tensor lives. */
KAUN_API const void *kaun_tensor_data(const kaun_tensor *tensor);
/* 1 when the tensor is a zero-copy view into a shared buffer. */
KAUN_API int kaun_tensor_is_view(const kaun_tensor *tensor);

/* Writable bytes.  A view is first copied into memory the tensor owns
 * (copy-on-write), so writing never changes a file or another tensor.
 * Errors: KAUN_ENOMEM. */
KAUN_API int kaun_tensor_data_mut(kaun_tensor *tensor, void **out, kaun_error *err);

/* Formats the shape as "[2, 3]" into `out` (always NUL-terminated,
 * truncated with "..." when `size` is too small).  Returns `out`. */
KAUN_API char *kaun_shape_format(size_t ndim, const uint64_t *shape, char *out, size_t size);

/* ---- casting ---------------------------------------------------------- */

/* Converts `count` elements from `src` (of `src_dtype`) into `dst` (of
 * `dst_dtype`).  Both dtypes must satisfy kaun_dtype_can_cast.  The
 * regions must not overlap.  Rules (see docs/checkpoints.md):
 *  - exact when the value is representable in the target;
 *  - float targets round to nearest, ties to even;
 *  - F16, BF16, F32, F64, F8_E5M2: overflow gives +/-Inf;
 *    F8_E4M3 has no Inf: overflow and Inf give NaN (as PyTorch);
 *  - NaN stays NaN; widening F16/BF16 to F32/F64 keeps its payload;
 *  - float to integer truncates toward zero, saturates at the target's
 *    range, and maps NaN to 0;
 *  - integer to integer wraps (two's complement), as C and PyTorch do;
 *  - to BOOL: nonzero (NaN included) is 1; from BOOL: 0 or 1.
 * Errors: KAUN_ENOTSUP naming both dtypes. */
KAUN_API int kaun_cast(kaun_dtype src_dtype, const void *src, kaun_dtype dst_dtype, void *dst,
                       size_t count, kaun_error *err);

/* A new tensor holding `tensor` converted to `dtype`.  With the same
 * dtype this is kaun_tensor_clone (a view stays a view).  Errors:
 * KAUN_ENOTSUP, KAUN_ENOMEM. */
KAUN_API int kaun_tensor_cast(const kaun_tensor *tensor, kaun_dtype dtype, kaun_tensor **out,
                              kaun_error *err);

KAUN_END_DECLS

#endif
