/* kaun — sharded saves and whole-model copies: what checkpoint.c, copy.c,
 * reader.c and shards.c share.  Private to libkaun. */
#ifndef KAUN_SHARDS_H
#define KAUN_SHARDS_H

#ifndef KAUN_BUILDING_LIBRARY
#error "core/shards.h is private to libkaun"
#endif

#include <kaun/checkpoint.h>
#include <kaun/copy.h>
#include <stdatomic.h>

#include "storage_internal.h"

#define KAUN__SINGLE_NAME "model.safetensors"
#define KAUN__INDEX_NAME "model.safetensors.index.json"

/* ---- reader.c: a checkpoint as the reader opened it ------------------------------ */

/* The URI of the index the reader opened, with the bytes it read and
 * validated (`text`, `len`); NULL for a single file. */
const char *kaun__reader_index(const kaun_reader *r, const char **text, size_t *len);
/* The files of the checkpoint (1 for a single file), and file `i`'s URI
 * and open object (NULL when out of range). */
size_t kaun__reader_shard_count(const kaun_reader *r);
kaun_object *kaun__reader_shard(const kaun_reader *r, size_t i, const char **uri);

/* The context it was opened through. */
kaun_context *kaun__reader_context(const kaun_reader *r);

/* ---- checkpoint.c: one SafeTensors object ------------------------------------------- */

/* Writes `flat` as one SafeTensors object at exactly `uri` (no "folder
 * means the model there"), atomically.  Progress goes to `io` (may be
 * NULL) under `uri`, as the bytes are handed to the backend; the put
 * stops with KAUN_ECANCELED when `io` is canceled or `*stop` (may be
 * NULL) becomes nonzero. */
int kaun__safetensors_put(kaun_context *ctx, const char *uri, const kaun_flat *flat, kaun_io *io,
                          const atomic_int *stop, kaun_error *err);

/* ---- shards.c ------------------------------------------------------------------------ */

/* `in` (may be NULL, or an older, shorter struct) with every field, the
 * missing ones 0. */
void kaun__save_options_get(const kaun_save_options *in, kaun_save_options *out);

/* Threads for `jobs` jobs when `asked` (0: 4; at most 16, at most jobs). */
unsigned kaun__threads(unsigned asked, size_t jobs);

/* Runs fn(state, 0..n-1, err) on up to `threads` threads (see
 * kaun__threads).  The first failure sets *stop, cancels `cancel` (may be
 * NULL: an io the caller owns, so that transfers in flight stop too) and
 * no further job starts; it is returned with its error (later failures,
 * its consequences, are not).  done[k] (may be NULL) is set for each job
 * that succeeded. */
typedef int (*kaun__job_fn)(void *state, size_t job, kaun_error *err);
int kaun__run_jobs(size_t n, unsigned threads, kaun__job_fn fn, void *state, atomic_int *stop,
                   kaun_io *cancel, bool *done, kaun_error *err);

/* Stores `len` bytes at `uri` (atomically, as any put). */
int kaun__put_bytes(kaun_context *ctx, const char *uri, const char *data, size_t len,
                    kaun_error *err);

/* Removes uris[i] for each written[i] (best effort: errors are ignored). */
void kaun__remove_written(kaun_context *ctx, char *const *uris, const bool *written, size_t n);

/* True when `uri` ends in `suffix`; for a stacked URI (SCHEME://PATH::OUTER)
 * when PATH does. */
bool kaun__ends_with(const char *uri, const char *suffix);

/* Saves the tensors of `flat` (its metadata, or opts->metadata when set)
 * at `uri` following `opts` (complete, see kaun__save_options_get; as
 * kaun_checkpoint_save_ex): one file without a max_shard_size, else
 * shards and an index in the folder `uri`, or model.safetensors there
 * when they fit. */
int kaun__save_flat(kaun_context *ctx, const char *uri, const kaun_flat *flat,
                    const kaun_save_options *opts, kaun_error *err);

/* Re-saves the checkpoint `r` opened into the folder `uri` in shards of
 * at most `max_shard_size` (0: a shard for each run of tensors the
 * source keeps in one file, so a sharded source keeps its grouping),
 * reading one shard's tensors at a time (memory: about one shard),
 * floating-point ones cast to `dtype` when `cast`. */
int kaun__save_from_reader(kaun_reader *r, const char *uri, uint64_t max_shard_size, bool cast,
                           kaun_dtype dtype, kaun_io *io, kaun_error *err);

#endif
