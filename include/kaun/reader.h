/* kaun — the lazy reader: open a checkpoint once, read what you need.
 *
 * The counterpart of safetensors' `safe_open`.  Opening reads only the
 * headers (and the index of a sharded checkpoint): a few small ranged
 * reads, whatever the backend and the size of the files.  Then list the
 * tensors, get one (optionally cast), a slice of one, or many at once.
 * Only the bytes asked for are read: through a zero-copy mapping where
 * the backend can map (local files), else with ranged reads straight into
 * the tensors' memory, many in flight (the backend's hints, see
 * kaun_object_hints).
 *
 * A reader may be used from several threads at once.  Tensors it returns
 * stay valid after kaun_reader_close.
 */
#ifndef KAUN_READER_H
#define KAUN_READER_H

#include <kaun/common.h>
#include <kaun/error.h>
#include <kaun/io.h>
#include <kaun/names.h>
#include <kaun/ptree.h>
#include <kaun/storage.h>
#include <kaun/tensor.h>

KAUN_BEGIN_DECLS

typedef struct kaun_reader kaun_reader;

/* Called with each tensor as soon as its bytes are in (streaming loads:
 * upload it to a device while the rest arrives).  The tensor is borrowed:
 * the load still returns it.  Calls come one at a time, from any of the
 * load's threads, in no fixed order.  Return nonzero to cancel the load
 * (KAUN_ECANCELED). */
typedef int (*kaun_tensor_fn)(const char *name, const kaun_tensor *tensor, void *user);

/* Options of one load.  Zero-initialise, set struct_size, then what you
 * need; fields may be added at the end. */
typedef struct kaun_load_options {
  size_t struct_size;       /* sizeof(kaun_load_options) */
  unsigned flags;           /* KAUN_LOAD_COPY (see checkpoint.h) */
  kaun_io *io;              /* progress and cancellation of this call; NULL:
                               the context's progress callback, if any */
  kaun_tensor_fn on_tensor; /* streaming; NULL: none */
  void *user;               /* for on_tensor */
  /* How the file's tensor names become yours (names.h), for the
   * checkpoint loads: kaun_checkpoint_load_ex fills each template path
   * from the tensor whose mapped name it is; kaun_checkpoint_load_flat_ex
   * returns the mapped names.  NULL: names as they are.  The reader's own
   * calls (kaun_reader_get...) take the file's names and ignore it. */
  const kaun_name_map *names;
} kaun_load_options;

/* What the reader knows of one tensor.  Pointers are owned by the reader. */
typedef struct kaun_reader_tensor {
  const char *name;
  kaun_dtype dtype;
  size_t ndim;
  const uint64_t *shape;
  uint64_t nbytes;
  const char *uri; /* the file (shard) holding it */
} kaun_reader_tensor;

/* A range [start, stop) along one dimension. */
typedef struct kaun_range {
  uint64_t start;
  uint64_t stop;
} kaun_range;

/* Opens the checkpoint at `uri` (a file, an index, or a folder meaning the
 * model there), reading only headers.  `ctx` may be NULL (a context from
 * the default config, kept until close).  Errors: as kaun_object_open,
 * the codec's header errors, KAUN_EINDEX; KAUN_EACCESS for a shard named
 * by URI in an index whose backend's config does not set
 * index_shard_uris (shards are files beside the index by default). */
KAUN_API int kaun_reader_open(kaun_context *ctx, const char *uri, kaun_reader **out,
                              kaun_error *err);
/* As kaun_reader_open, reporting to `io` (may be NULL) what backends
 * transfer while they open the files (the Hub downloads them into its
 * cache) and stopping with KAUN_ECANCELED when `io` is canceled. */
KAUN_API int kaun_reader_open_io(kaun_context *ctx, const char *uri, kaun_io *io, kaun_reader **out,
                                 kaun_error *err);

/* Closes it.  Accepts NULL. */
KAUN_API void kaun_reader_close(kaun_reader *r);

/* The URI it was opened with. */
KAUN_API const char *kaun_reader_uri(const kaun_reader *r);
/* Number of tensors, in file order (shard by shard). */
KAUN_API size_t kaun_reader_count(const kaun_reader *r);
/* Describes tensor `index`.  Returns KAUN_OK or KAUN_EINVAL. */
KAUN_API int kaun_reader_info(const kaun_reader *r, size_t index, kaun_reader_tensor *out);
/* The index of the tensor `name`, or -1. */
KAUN_API long kaun_reader_find(const kaun_reader *r, const char *name);
/* Metadata of the (first) file: -1 when it has none, else the count. */
KAUN_API long kaun_reader_metadata_count(const kaun_reader *r);
KAUN_API const char *kaun_reader_metadata_key(const kaun_reader *r, size_t index);
KAUN_API const char *kaun_reader_metadata_value(const kaun_reader *r, size_t index);
/* The sum of the tensors' bytes. */
KAUN_API uint64_t kaun_reader_data_bytes(const kaun_reader *r);

/* Names and metadata may hold NUL bytes (JSON "\u0000"): the `name` of
 * kaun_reader_tensor and the strings above end at the first one, and
 * kaun_reader_find matches whole names only.  These give whole strings:
 * the length in bytes of name `index` (0 when out of range) and of
 * metadata key and value `index`, and a lookup by bytes and length. */
KAUN_API size_t kaun_reader_name_length(const kaun_reader *r, size_t index);
KAUN_API long kaun_reader_find_n(const kaun_reader *r, const char *name, size_t len);
KAUN_API size_t kaun_reader_metadata_key_length(const kaun_reader *r, size_t index);
KAUN_API size_t kaun_reader_metadata_value_length(const kaun_reader *r, size_t index);

/* Gets one tensor.  `dtype` casts it; pass the stored dtype (from
 * kaun_reader_info) or KAUN_DTYPE_COUNT_ to keep it.  A zero-copy view
 * when the backend maps, the dtype is kept and KAUN_LOAD_COPY is not
 * set; otherwise memory the tensor owns.  `opts` may be NULL.  Errors:
 * KAUN_EKEY (names the tensor and the checkpoint), KAUN_ENOTSUP (cast),
 * the backend's, KAUN_ECANCELED. */
KAUN_API int kaun_reader_get(kaun_reader *r, const char *name, kaun_dtype dtype,
                             const kaun_load_options *opts, kaun_tensor **out, kaun_error *err);

/* Gets the part of a tensor in `ranges` (one per leading dimension,
 * `nranges` <= ndim; dimensions after them are taken whole), reading only
 * the bytes it covers: rows as one ranged read, strided parts as one read
 * per contiguous run.  A slice that is one contiguous run of a mapped
 * file is a zero-copy view.  Errors: KAUN_EKEY, KAUN_EINVAL (a range out
 * of bounds or reversed, too many ranges: names the tensor, the
 * dimension and its size), KAUN_ENOTSUP (dtypes narrower than a byte). */
KAUN_API int kaun_reader_get_slice(kaun_reader *r, const char *name, size_t nranges,
                                   const kaun_range *ranges, const kaun_load_options *opts,
                                   kaun_tensor **out, kaun_error *err);

/* Gets `n` tensors at once, in parallel: out[i] is `names[i]` cast to
 * dtypes[i] (`dtypes` NULL: as stored).  On failure every out[i] is NULL.
 * With opts->on_tensor each tensor is handed over as soon as it is in. */
KAUN_API int kaun_reader_get_many(kaun_reader *r, size_t n, const char *const *names,
                                  const kaun_dtype *dtypes, const kaun_load_options *opts,
                                  kaun_tensor **out, kaun_error *err);
/* As kaun_reader_get_many, names[i] being lens[i] bytes (`lens` NULL:
 * strlen).  on_tensor still gets names[i] as a C string. */
KAUN_API int kaun_reader_get_many_n(kaun_reader *r, size_t n, const char *const *names,
                                    const size_t *lens, const kaun_dtype *dtypes,
                                    const kaun_load_options *opts, kaun_tensor **out,
                                    kaun_error *err);

/* Reads every byte of every file once, with bounded memory (reads in
 * flight x chunk size), keeping nothing: data that cannot be read is
 * found.  When the backend reports a SHA-256 (a 64-hex-digit etag, as the
 * Hub gives for LFS files), the bytes are hashed and compared.  Errors:
 * the backend's, KAUN_ECHECKSUM, KAUN_ECANCELED. */
KAUN_API int kaun_reader_check_data(kaun_reader *r, const kaun_load_options *opts, kaun_error *err);

/* 1 when the checkpoint is one file whose bytes kaun's writer would
 * reproduce exactly (its header is canonical: the reference's order and
 * padding), so copying its bytes equals loading and saving it; 0 when
 * not; a negative KAUN_E* code when the header cannot be read again. */
KAUN_API int kaun_reader_is_canonical(kaun_reader *r, kaun_error *err);

/* Copies the checkpoint's one file, byte for byte, to `dst_uri`, through
 * the object the reader opened and validated: the bytes of that version,
 * not of whatever the URI serves by now (KAUN_ECHANGED then).  KAUN_EINVAL
 * for a sharded checkpoint. */
KAUN_API int kaun_reader_copy(kaun_reader *r, const char *dst_uri, kaun_io *io, kaun_error *err);

/* Parses a slice written as in Python, one part per dimension, separated
 * by commas: "0:4,:", "10:20", "3", ":,2:8" ("3" means 3:4, a missing
 * bound the dimension's start or end).  Fills up to `max` ranges for a
 * tensor of shape `shape` (ndim dimensions).  Errors: KAUN_EINVAL naming
 * the part at fault. */
KAUN_API int kaun_slice_parse(const char *text, size_t ndim, const uint64_t *shape,
                              kaun_range *ranges, size_t max, size_t *out_count, kaun_error *err);

KAUN_END_DECLS

#endif
