/* Tensors: owned memory or views of a buffer. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct kaun_tensor {
  kaun_dtype dtype;
  size_t ndim;
  size_t nbytes;
  const unsigned char *data;
  void *owned;         /* malloc'd bytes, or NULL for a view */
  kaun_buffer *buffer; /* the viewed buffer, or NULL */
  uint64_t shape[];
};

/* Returned by kaun_tensor_data for an empty view, so data is never NULL. */
static const unsigned char empty_bytes[1];

int kaun_tensor_size_bytes(kaun_dtype dtype, size_t ndim, const uint64_t *shape,
                           uint64_t *out_bytes, kaun_error *err) {
  unsigned bits = kaun_dtype_bits(dtype);
  if (!bits) return kaun__error_set(err, KAUN_EDTYPE, "invalid dtype value %d", (int)dtype);
  if (ndim > KAUN_MAX_DIMS)
    return kaun__error_set(err, KAUN_EINVAL, "%zu dimensions is more than kaun's limit of %d", ndim,
                           KAUN_MAX_DIMS);
  uint64_t n = 1;
  for (size_t i = 0; i < ndim; i++) {
    if (kaun__mul_overflow(n, shape[i], &n))
      return kaun__error_set(err, KAUN_EOVERFLOW, "the element count of the shape overflows");
  }
  uint64_t total_bits;
  if (kaun__mul_overflow(n, bits, &total_bits))
    return kaun__error_set(err, KAUN_EOVERFLOW, "the byte size of %s x %llu elements overflows",
                           kaun_dtype_name(dtype), (unsigned long long)n);
  if (total_bits % 8)
    return kaun__error_set(
        err, KAUN_EMISALIGNED, "%llu elements of %s make %llu bits, not whole bytes",
        (unsigned long long)n, kaun_dtype_name(dtype), (unsigned long long)total_bits);
  *out_bytes = total_bits / 8;
  return KAUN_OK;
}

static int tensor_alloc(kaun_dtype dtype, size_t ndim, const uint64_t *shape, size_t *nbytes,
                        kaun_tensor **out, kaun_error *err) {
  *out = NULL;
  uint64_t bytes;
  int rc = kaun_tensor_size_bytes(dtype, ndim, shape, &bytes, err);
  if (rc) return rc;
  if (bytes > SIZE_MAX)
    return kaun__error_set(err, KAUN_EOVERFLOW, "a tensor of %llu bytes does not fit in memory",
                           (unsigned long long)bytes);
  kaun_tensor *t = malloc(sizeof *t + ndim * sizeof(uint64_t));
  if (!t) return kaun__error_nomem(err, "creating a tensor");
  t->dtype = dtype;
  t->ndim = ndim;
  t->nbytes = (size_t)bytes;
  t->data = empty_bytes;
  t->owned = NULL;
  t->buffer = NULL;
  if (ndim) memcpy(t->shape, shape, ndim * sizeof(uint64_t));
  *nbytes = (size_t)bytes;
  *out = t;
  return KAUN_OK;
}

static int tensor_with_memory(kaun_dtype dtype, size_t ndim, const uint64_t *shape, bool zero,
                              kaun_tensor **out, kaun_error *err) {
  size_t nbytes;
  int rc = tensor_alloc(dtype, ndim, shape, &nbytes, out, err);
  if (rc) return rc;
  void *mem = zero ? calloc(1, nbytes ? nbytes : 1) : malloc(nbytes ? nbytes : 1);
  if (!mem) {
    free(*out);
    *out = NULL;
    return kaun__error_set(err, KAUN_ENOMEM, "out of memory allocating a tensor of %zu bytes",
                           nbytes);
  }
  (*out)->owned = mem;
  (*out)->data = mem;
  return KAUN_OK;
}

int kaun_tensor_new(kaun_dtype dtype, size_t ndim, const uint64_t *shape, kaun_tensor **out,
                    kaun_error *err) {
  return tensor_with_memory(dtype, ndim, shape, true, out, err);
}

int kaun__tensor_new_uninit(kaun_dtype dtype, size_t ndim, const uint64_t *shape, kaun_tensor **out,
                            kaun_error *err) {
  return tensor_with_memory(dtype, ndim, shape, false, out, err);
}

int kaun_tensor_new_copy(kaun_dtype dtype, size_t ndim, const uint64_t *shape, const void *data,
                         size_t nbytes, kaun_tensor **out, kaun_error *err) {
  int rc = tensor_with_memory(dtype, ndim, shape, false, out, err);
  if (rc) return rc;
  if ((*out)->nbytes != nbytes) {
    size_t want = (*out)->nbytes;
    kaun_tensor_free(*out);
    *out = NULL;
    return kaun__error_set(err, KAUN_ESIZE, "%zu bytes given for a tensor that needs %zu", nbytes,
                           want);
  }
  if (nbytes) memcpy((*out)->owned, data, nbytes);
  return KAUN_OK;
}

int kaun__tensor_adopt(kaun_dtype dtype, size_t ndim, const uint64_t *shape, void *data,
                       size_t nbytes, kaun_tensor **out, kaun_error *err) {
  size_t want;
  int rc = tensor_alloc(dtype, ndim, shape, &want, out, err);
  if (rc) return rc;
  if (want != nbytes) {
    free(*out);
    *out = NULL;
    return kaun__error_set(err, KAUN_ESIZE, "%zu bytes given for a tensor that needs %zu", nbytes,
                           want);
  }
  (*out)->owned = data;
  (*out)->data = data;
  return KAUN_OK;
}

int kaun__tensor_view_unchecked(kaun_dtype dtype, size_t ndim, const uint64_t *shape,
                                kaun_buffer *buffer, size_t offset, size_t nbytes,
                                kaun_tensor **out, kaun_error *err) {
  size_t want;
  int rc = tensor_alloc(dtype, ndim, shape, &want, out, err);
  if (rc) return rc;
  (void)nbytes;
  (*out)->buffer = kaun_buffer_ref(buffer);
  const unsigned char *base = kaun_buffer_data(buffer);
  (*out)->data = base ? base + offset : empty_bytes;
  return KAUN_OK;
}

int kaun_tensor_new_view(kaun_dtype dtype, size_t ndim, const uint64_t *shape, kaun_buffer *buffer,
                         size_t offset, size_t nbytes, kaun_tensor **out, kaun_error *err) {
  *out = NULL;
  if (!buffer) return kaun__error_set(err, KAUN_EINVAL, "a view needs a buffer");
  size_t size = kaun_buffer_size(buffer);
  if (offset > size || nbytes > size - offset)
    return kaun__error_set(err, KAUN_EOFFSET,
                           "bytes [%zu, %zu) are outside the buffer of %zu bytes", offset,
                           offset + nbytes, size);
  uint64_t want;
  int rc = kaun_tensor_size_bytes(dtype, ndim, shape, &want, err);
  if (rc) return rc;
  if (want != nbytes)
    return kaun__error_set(err, KAUN_ESIZE, "%zu bytes given for a tensor that needs %llu", nbytes,
                           (unsigned long long)want);
  return kaun__tensor_view_unchecked(dtype, ndim, shape, buffer, offset, nbytes, out, err);
}

void kaun_tensor_free(kaun_tensor *t) {
  if (!t) return;
  free(t->owned);
  kaun_buffer_unref(t->buffer);
  free(t);
}

int kaun_tensor_clone(const kaun_tensor *t, kaun_tensor **out, kaun_error *err) {
  if (t->buffer)
    return kaun__tensor_view_unchecked(
        t->dtype, t->ndim, t->shape, t->buffer,
        (size_t)(t->data - (const unsigned char *)kaun_buffer_data(t->buffer)), t->nbytes, out,
        err);
  return kaun_tensor_new_copy(t->dtype, t->ndim, t->shape, t->data, t->nbytes, out, err);
}

kaun_dtype kaun_tensor_dtype(const kaun_tensor *t) { return t->dtype; }
size_t kaun_tensor_ndim(const kaun_tensor *t) { return t->ndim; }
const uint64_t *kaun_tensor_shape(const kaun_tensor *t) { return t->shape; }
size_t kaun_tensor_nbytes(const kaun_tensor *t) { return t->nbytes; }
const void *kaun_tensor_data(const kaun_tensor *t) { return t->data; }
int kaun_tensor_is_view(const kaun_tensor *t) { return t->buffer != NULL; }

uint64_t kaun_tensor_numel(const kaun_tensor *t) {
  uint64_t n = 1;
  for (size_t i = 0; i < t->ndim; i++) n *= t->shape[i]; /* checked at creation */
  return n;
}

int kaun_tensor_data_mut(kaun_tensor *t, void **out, kaun_error *err) {
  if (!t->owned) {
    void *mem = malloc(t->nbytes ? t->nbytes : 1);
    if (!mem)
      return kaun__error_set(err, KAUN_ENOMEM,
                             "out of memory copying a %zu-byte view before writing to it",
                             t->nbytes);
    if (t->nbytes) memcpy(mem, t->data, t->nbytes);
    kaun_buffer_unref(t->buffer);
    t->buffer = NULL;
    t->owned = mem;
    t->data = mem;
  }
  *out = t->owned;
  return KAUN_OK;
}

char *kaun_shape_format(size_t ndim, const uint64_t *shape, char *out, size_t size) {
  if (!size) return out;
  size_t len = 0;
  out[0] = '\0';
  int n = snprintf(out, size, "[");
  len = n > 0 ? (size_t)n : 0;
  for (size_t i = 0; i < ndim && len < size; i++) {
    n = snprintf(out + len, size - len, "%s%llu", i ? ", " : "", (unsigned long long)shape[i]);
    if (n < 0) break;
    len += (size_t)n;
  }
  if (len < size) {
    n = snprintf(out + len, size - len, "]");
    if (n > 0) len += (size_t)n;
  }
  if (len >= size && size >= 4) memcpy(out + size - 4, "...", 4);
  return out;
}
