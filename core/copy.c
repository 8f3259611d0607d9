/* Byte-for-byte copies between URIs: the source object, read through the
 * storage layer, is put at the destination.  A backend's put may
 * recognise the source (kaun__copy_source) and copy from the object in
 * its own way: the file backend copies local files inside the kernel. */
#include <kaun/copy.h>

#include "storage_internal.h"

typedef struct copy_source {
  kaun_object *obj;
  const char *uri; /* the source URI, as given: progress is reported under it */
  uint64_t size;
  kaun_io *io;
} copy_source;

/* Progress and cancellation come with the read (under the URI asked for). */
static int copy_read(void *context, uint64_t offset, void *dst, size_t len, kaun_error *err) {
  copy_source *cs = context;
  return kaun_object_read_io(cs->obj, offset, dst, len, cs->io, err);
}

bool kaun__copy_source(const kaun_put_source *src, kaun_object **object, kaun_io **io,
                       const char **uri) {
  if (!src || src->read != copy_read) return false;
  const copy_source *cs = src->context;
  *object = cs->obj;
  *io = cs->io;
  *uri = cs->uri;
  return true;
}

int kaun_storage_copy(kaun_context *ctx, const char *src_uri, const char *dst_uri, kaun_io *io,
                      kaun_error *err) {
  if (!src_uri || !dst_uri)
    return kaun__error_set(err, KAUN_EINVAL, "a copy needs a source and a destination URI");
  kaun_context *own = NULL;
  int rc;
  if (!ctx) {
    if ((rc = kaun_context_new(NULL, &own, err))) return rc;
    ctx = own;
  }
  kaun_object *obj;
  if (!(rc = kaun_object_open(ctx, src_uri, &obj, err))) {
    rc = kaun_object_copy(ctx, obj, dst_uri, io, err);
    kaun_object_close(obj);
  }
  kaun_context_free(own);
  return rc;
}

int kaun_object_copy(kaun_context *ctx, kaun_object *obj, const char *dst_uri, kaun_io *io,
                     kaun_error *err) {
  if (!obj || !dst_uri)
    return kaun__error_set(err, KAUN_EINVAL, "a copy needs a source object and a destination URI");
  const char *src_uri = kaun_object_uri(obj);
  kaun_stat st = {.struct_size = sizeof st};
  int rc = kaun_object_stat(obj, &st, err);
  if (rc) return rc;
  copy_source cs = {obj, src_uri, st.size, io};
  const kaun_put_source src = {st.size, copy_read, NULL, &cs};
  kaun_io_expect(io, st.size);
  /* the object's size, for progress; the bytes are counted as they are
   * read (or copied), once: the put gets no io of its own */
  if (kaun_io_add(io, src_uri, st.size, 0) != KAUN_OK)
    return kaun__error_set(err, KAUN_ECANCELED, "%s: canceled", src_uri);
  return kaun_storage_put(ctx, dst_uri, &src, err);
}
