/* kaun — copying objects byte for byte between URIs.
 *
 * A copy reads the source object and stores it at the destination with
 * kaun_storage_put, so it is atomic like any put: readers of the
 * destination see the old object or the whole copy.  Backends may take a
 * shorter way: the built-in file backend copies one local file to another
 * inside the kernel (a reflink where the file system can share extents,
 * else copy_file_range), so the bytes never pass through user memory.
 *
 * The bytes are not interpreted: copying a SafeTensors file this way does
 * not validate it (kaun_safetensors_read does, in two small reads).
 */
#ifndef KAUN_COPY_H
#define KAUN_COPY_H

#include <kaun/common.h>
#include <kaun/error.h>
#include <kaun/io.h>
#include <kaun/storage.h>

KAUN_BEGIN_DECLS

/* Copies the object at `src_uri` to `dst_uri`, byte for byte.  Progress
 * is reported to `io` (may be NULL) under the source object's URI, with
 * the object's size as its total; cancelling through `io` stops the copy
 * with KAUN_ECANCELED and leaves the destination untouched.  `ctx` may be
 * NULL (a context from the default config is made for the call).  Both
 * URIs name objects, not folders (kaun_safetensors_save's "the model
 * there" is the caller's business).  Errors: as kaun_object_open for the
 * source (KAUN_EISDIR for a folder) and kaun_storage_put for the
 * destination, KAUN_ECHANGED (a local source file changed while it was
 * copied), KAUN_ECANCELED. */
KAUN_API int kaun_storage_copy(kaun_context *ctx, const char *src_uri, const char *dst_uri,
                               kaun_io *io, kaun_error *err);

/* As kaun_storage_copy, from an object already open: the copy reads the
 * version that was opened (a remote object replaced since fails with
 * KAUN_ECHANGED rather than copying other bytes).  `ctx` is the context
 * the destination is resolved through (NULL: the default config's). */
KAUN_API int kaun_object_copy(kaun_context *ctx, kaun_object *src, const char *dst_uri, kaun_io *io,
                              kaun_error *err);

KAUN_END_DECLS

#endif
