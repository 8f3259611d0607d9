/* kaun — saving and loading parameter trees.
 *
 * A checkpoint is a SafeTensors file, or a sharded set of them described
 * by a "model.safetensors.index.json" (HuggingFace layout: a "weight_map"
 * from tensor name to shard file).  Paths may name a file, an index, or a
 * directory, which means "the model there": model.safetensors, else
 * model.safetensors.index.json and its shards.
 *
 * Every function takes a URI (see storage.h: a plain path is a URI) and a
 * context.  Pass NULL for the context to use one made from the default
 * config file for the duration of the call; pass your own to reuse its
 * backends and read the config once.
 */
#ifndef KAUN_CHECKPOINT_H
#define KAUN_CHECKPOINT_H

#include <kaun/common.h>
#include <kaun/error.h>
#include <kaun/ptree.h>
#include <kaun/reader.h>
#include <kaun/storage.h>

KAUN_BEGIN_DECLS

/* Load flags. */
enum {
  /* Copy tensor bytes into memory the tensors own (parallel reads)
   * instead of returning zero-copy views of a file mapping. */
  KAUN_LOAD_COPY = 1u << 0
};

/* Saves every leaf of `tree` under its dotted path, with optional string
 * metadata (`metadata` may be NULL; only its metadata is used).  The save
 * is atomic (see kaun_safetensors_save).  Thread-safe for distinct paths.
 * Errors: KAUN_EINVAL (root is a leaf), KAUN_EIO, KAUN_ENOENT, KAUN_ENOMEM. */
KAUN_API int kaun_checkpoint_save(kaun_context *ctx, const char *uri, const kaun_ptree *tree,
                                  const kaun_flat *metadata, kaun_error *err);

/* Options of one save.  Zero-initialise, set struct_size, then what you
 * need; fields may be added at the end. */
typedef struct kaun_save_options {
  size_t struct_size;        /* sizeof(kaun_save_options) */
  const kaun_flat *metadata; /* string metadata (only its metadata is used); NULL: none (the
                                flat variant: the list's own) */
  uint64_t max_shard_size;   /* bytes of tensor data per file; 0: one file */
  kaun_io *io;               /* progress and cancellation of this call; NULL: the context's
                                progress callback, if any */
  unsigned threads;          /* shards written at once; 0: 4 (at most 16) */
} kaun_save_options;

/* As kaun_checkpoint_save, with options (`opts` may be NULL).  With
 * opts->max_shard_size, `uri` names a folder (KAUN_EINVAL when it ends in
 * .safetensors or .json) and a model whose tensors hold more bytes than
 * that is saved as HuggingFace's save_pretrained does:
 * model-00001-of-0000N.safetensors ... and model.safetensors.index.json
 * ({"metadata": {"total_size": BYTES}, "weight_map": {NAME: FILE}}, keys
 * sorted, indented by 2).  Tensors go to the shards in tree order; a new
 * shard starts when the next tensor would take the current one over the
 * limit, so a tensor larger than it has a shard of its own.  Each shard
 * holds the metadata.  Shards are written in parallel (opts->threads),
 * each atomically, and the index last, once every shard is stored; then a
 * model.safetensors left in the folder by an earlier save is removed (it
 * would be read instead), and so are shards of an earlier save with
 * another count (model-0000K-of-0000M.safetensors that the new index does
 * not name: nothing else; where the backend can list).  A model that fits
 * is written as model.safetensors in the folder (and an earlier index and
 * its shards removed).
 * On a failure or a cancel no index is written and the shards this call
 * wrote are removed (where the backend can remove); the message names the
 * shard at fault.  Errors: as kaun_checkpoint_save, KAUN_ECANCELED. */
KAUN_API int kaun_checkpoint_save_ex(kaun_context *ctx, const char *uri, const kaun_ptree *tree,
                                     const kaun_save_options *opts, kaun_error *err);
/* The same for a flat list of tensors (kaun_safetensors_save's input),
 * with its own metadata unless opts->metadata is set. */
KAUN_API int kaun_checkpoint_save_flat_ex(kaun_context *ctx, const char *uri, const kaun_flat *flat,
                                          const kaun_save_options *opts, kaun_error *err);

/* Loads the tensors of `like` from `path`.  `like` is a template: it gives
 * the structure, shapes and dtypes.  Every leaf path must be in the file
 * with the same shape; tensors are cast to the template's dtype; extra
 * tensors in the file are ignored.  When the dtype matches, local files
 * give zero-copy views (unless KAUN_LOAD_COPY).  `*out` is a new tree of
 * the same structure.  Errors: KAUN_EKEY (missing path, named, with how
 * many more are missing), KAUN_ESHAPE (names the path and both shapes),
 * KAUN_ENOTSUP (a cast kaun cannot do), and the codec's errors. */
KAUN_API int kaun_checkpoint_load(kaun_context *ctx, const char *uri, const kaun_ptree *like,
                                  unsigned flags, kaun_ptree **out, kaun_error *err);

/* Loads every tensor, in file order (shard by shard for a sharded
 * checkpoint), with the file's metadata.  Errors: the codec's errors,
 * KAUN_EINDEX (bad index), KAUN_EACCESS (an index's shard URI the config
 * does not allow: backends.NAME.index_shard_uris), KAUN_ENOENT, KAUN_EIO. */
KAUN_API int kaun_checkpoint_load_flat(kaun_context *ctx, const char *uri, unsigned flags,
                                       kaun_flat **out, kaun_error *err);

/* As kaun_checkpoint_load and kaun_checkpoint_load_flat, with options:
 * progress and cancellation (opts->io), a callback that receives each
 * tensor as soon as its bytes are in (opts->on_tensor), flags.  `opts`
 * may be NULL.  Only the template's tensors are read: a template of 10
 * tensors out of 1,000 reads those 10 (and the headers). */
KAUN_API int kaun_checkpoint_load_ex(kaun_context *ctx, const char *uri, const kaun_ptree *like,
                                     const kaun_load_options *opts, kaun_ptree **out,
                                     kaun_error *err);
KAUN_API int kaun_checkpoint_load_flat_ex(kaun_context *ctx, const char *uri,
                                          const kaun_load_options *opts, kaun_flat **out,
                                          kaun_error *err);

/* Loads every tensor and rebuilds the tree from the dotted names (see
 * kaun_ptree_unflatten). */
KAUN_API int kaun_checkpoint_load_tree(kaun_context *ctx, const char *uri, unsigned flags,
                                       kaun_ptree **out, kaun_error *err);

KAUN_END_DECLS

#endif
