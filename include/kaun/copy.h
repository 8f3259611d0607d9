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
#include <kaun/reader.h>
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

/* Options of a whole-model copy.  Zero-initialise, set struct_size, then
 * what you need; fields may be added at the end. */
typedef struct kaun_copy_options {
  size_t struct_size;      /* sizeof(kaun_copy_options) */
  kaun_io *io;             /* progress and cancellation; NULL: the context's callback */
  uint64_t max_shard_size; /* re-save in shards of at most this many bytes of tensor data
                              (see kaun_checkpoint_save_ex); 0: keep the source's files */
  int cast;                /* nonzero: cast floating-point tensors to `dtype` */
  kaun_dtype dtype;        /* F64, F32, F16, BF16, F8_E4M3 or F8_E5M2 */
  unsigned threads;        /* files copied at once; 0: 4 (at most 16) */
} kaun_copy_options;

/* Copies the checkpoint `r` opened (a file, or an index and its shards,
 * on any backend) to `dst_uri`:
 * - with opts->max_shard_size: re-saved into the folder `dst_uri` as
 *   kaun_checkpoint_save_ex does, reading one shard's tensors at a time
 *   (memory: about one shard, whatever the model's size);
 * - else a sharded checkpoint, without a cast, whose `dst_uri` does not
 *   end in .safetensors: its shards and then its index, byte for byte, into the
 *   folder `dst_uri` (shards in parallel, through the objects the reader
 *   validated: a source replaced since fails with KAUN_ECHANGED; the
 *   index is the bytes the reader read, written last); on a failure no
 *   index is written and the shards copied are removed; an index naming
 *   its shards by URI is refused (KAUN_EINVAL: give a max_shard_size);
 * - else a sharded checkpoint with a cast, whose `dst_uri` does not end in
 *   .safetensors: cast shard by shard into the folder `dst_uri`, each new
 *   shard holding the tensors one source shard held (memory: about one
 *   shard), then the index;
 * - else one file at `dst_uri` (model.safetensors inside it when it is a
 *   folder): byte for byte when no cast is asked and kaun's writer would
 *   write the same bytes, else loaded and saved.
 * Errors: the reader's, the backends', KAUN_ECANCELED. */
KAUN_API int kaun_reader_copy_model(kaun_reader *r, const char *dst_uri,
                                    const kaun_copy_options *opts, kaun_error *err);

/* 1 when `r` opened a sharded checkpoint (an index), else 0. */
KAUN_API int kaun_reader_is_sharded(const kaun_reader *r);

KAUN_END_DECLS

#endif
