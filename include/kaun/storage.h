/* kaun — storage: contexts, URIs and objects.
 *
 * Weights live behind URIs.  A URI's scheme names a *backend*: a named,
 * configured instance of a storage plugin ("file", or "corp" = the
 * registry plugin with an index).  A kaun_context holds the configuration
 * (see docs/config.md) and the backend instances made from it; objects
 * are opened through a context.
 *
 *   /path/model.safetensors, ./rel, file:///abs     the built-in file backend
 *   SCHEME://REST                                   any backend instance
 *   SCHEME://PATH::INNER-URI                        a backend stacked on an
 *                                                   object of another (tar)
 *
 * Contexts are thread-safe: objects may be opened from many threads.  An
 * object is used by one thread at a time, except kaun_object_read, which
 * may run concurrently on one object.
 */
#ifndef KAUN_STORAGE_H
#define KAUN_STORAGE_H

#include <kaun/common.h>
#include <kaun/error.h>
#include <kaun/io.h>
#include <kaun/tensor.h>

KAUN_BEGIN_DECLS

typedef struct kaun_context kaun_context;
typedef struct kaun_object kaun_object;

/* ---- contexts ----------------------------------------------------------- */

/* A context from the config file at `config_path`, or, when NULL, from
 * $KAUN_CONFIG, else $XDG_CONFIG_HOME/kaun/config.json (or
 * ~/.config/kaun/config.json), else /etc/kaun/config.json; no file at
 * all means defaults.  The file is validated completely, loading the
 * plugins it names.  Errors: KAUN_ECONFIG (names the file, the key path
 * and, for malformed JSON, the line), KAUN_EPLUGIN, KAUN_EABI,
 * KAUN_ENOENT ($KAUN_CONFIG or `config_path` names no file). */
KAUN_API int kaun_context_new(const char *config_path, kaun_context **out, kaun_error *err);

/* Frees a context and its backend instances.  Objects and buffers
 * opened through it stay valid: they keep what they need alive. */
KAUN_API void kaun_context_free(kaun_context *ctx);

/* The progress callback for every operation through this context that
 * is not given its own (NULL: none).  Set it before sharing the context
 * between threads. */
KAUN_API void kaun_context_set_progress(kaun_context *ctx, kaun_progress_fn fn, void *user);

/* Overrides the backends' transfer hints for loads through this context:
 * bytes per ranged read and reads in flight (0 = the backend's hint). */
KAUN_API void kaun_context_set_io(kaun_context *ctx, uint64_t chunk_size, unsigned inflight);

/* A new I/O context carrying the context's progress callback (for
 * operations that take a kaun_io: cancel it from another thread). */
KAUN_API int kaun_context_new_io(kaun_context *ctx, kaun_io **out, kaun_error *err);

/* Creates every backend the config names now (instances are otherwise
 * made on first use): each plugin checks its options' values and looks up
 * its credentials.  `kaun config --check` calls it.  Errors: the first
 * plugin's, prefixed with the file, line and backends.NAME. */
KAUN_API int kaun_context_check(kaun_context *ctx, kaun_error *err);

/* The config file in use, or NULL when running on defaults. */
KAUN_API const char *kaun_context_config_path(const kaun_context *ctx);

/* Writes the effective configuration as text, one setting per line with
 * where it came from (file and line, environment, default); secret
 * options are masked.  `*out` is malloc'd; the caller frees it. */
KAUN_API int kaun_context_describe(const kaun_context *ctx, char **out, kaun_error *err);

/* ---- URIs ----------------------------------------------------------------- */

/* A parsed URI.  Strings are owned by the struct; free with kaun_uri_free. */
typedef struct kaun_uri {
  char *scheme;           /* "file" for plain paths */
  char *path;             /* what the backend gets: the rest after "SCHEME://" */
  struct kaun_uri *inner; /* "::INNER" of a stacked URI, or NULL */
} kaun_uri;

/* The most URIs one URI may stack with "::" (and the deepest that opening
 * a URI may lead through backends: an index naming an index...). */
#define KAUN_URI_MAX_DEPTH 16

/* Parses `text`.  "A::B" stacks: the object A is read through B.  A
 * literal "::" inside a path is written "\::" (the backslash is dropped).
 * Errors: KAUN_EURI naming the URI and what is wrong (empty, bad scheme
 * characters, "file://host/...", empty path, empty inner URI, more than
 * KAUN_URI_MAX_DEPTH levels). */
KAUN_API int kaun_uri_parse(const char *text, kaun_uri **out, kaun_error *err);
/* Frees a parsed URI and its inner URIs.  Accepts NULL. */
KAUN_API void kaun_uri_free(kaun_uri *uri);

/* ---- objects ---------------------------------------------------------------- */

/* What kaun_object_stat reports.  Set struct_size before the call. */
typedef struct kaun_stat {
  size_t struct_size; /* sizeof(kaun_stat) */
  uint64_t size;
  int64_t mtime;         /* seconds since the epoch, or 0 when unknown */
  char etag[256];        /* a version tag ("" when unknown) */
  char local_path[4096]; /* a local file with the bytes ("" when none) */
} kaun_stat;

/* Opens the object at `uri`, trying mirrors first when the config has
 * them for the URI's prefix (the first that opens wins).  `ctx` may be
 * NULL here and in kaun_storage_*: a context from the default config is
 * made for the call (and lives as long as the object).  Errors:
 * KAUN_EURI (also when opening leads back to a URI this thread is already
 * opening, e.g. a registry whose index it serves itself: the message names
 * the cycle), KAUN_EBACKEND (unknown scheme), KAUN_ENOENT, KAUN_EISDIR
 * (the URI names a folder), KAUN_EACCESS, the backend's errors. */
KAUN_API int kaun_object_open(kaun_context *ctx, const char *uri, kaun_object **out,
                              kaun_error *err);

/* Closes an object (a mapping taken from it stays valid).  Accepts NULL. */
KAUN_API void kaun_object_close(kaun_object *obj);

/* The URI the object was opened from (after mirror rewriting). */
KAUN_API const char *kaun_object_uri(const kaun_object *obj);

/* Fills `out` (set out->struct_size first; fields beyond it are left
 * alone).  Errors: the backend's. */
KAUN_API int kaun_object_stat(kaun_object *obj, kaun_stat *out, kaun_error *err);

/* Reads exactly `len` bytes at `offset`.  Thread-safe on one object.
 * Errors: KAUN_EIO (including a short object), the backend's errors;
 * the message starts with the URI asked for. */
KAUN_API int kaun_object_read(kaun_object *obj, uint64_t offset, void *dst, size_t len,
                              kaun_error *err);

/* As kaun_object_read, reporting progress to `io` and stopping with
 * KAUN_ECANCELED when it is canceled.  `io` may be NULL. */
KAUN_API int kaun_object_read_io(kaun_object *obj, uint64_t offset, void *dst, size_t len,
                                 kaun_io *io, kaun_error *err);

/* `len` bytes at `offset` as a zero-copy buffer, when the backend can map
 * this object; KAUN_ENOTSUP when it cannot (then read instead: nothing
 * is lost).  The buffer keeps the backend alive. */
KAUN_API int kaun_object_map_range(kaun_object *obj, uint64_t offset, uint64_t len,
                                   kaun_buffer **out, kaun_error *err);

/* As kaun_object_open, reporting to `io` (may be NULL) what the backend
 * transfers while it opens (the Hub downloads the file into its cache)
 * and stopping with KAUN_ECANCELED when `io` is canceled.  Without an io,
 * kaun_object_open reports to the context's progress callback, if set.
 * Backends without ABI 1.2's open_io transfer nothing while opening. */
KAUN_API int kaun_object_open_io(kaun_context *ctx, const char *uri, kaun_io *io, kaun_object **out,
                                 kaun_error *err);

/* The transfer hints for this object: bytes per read and reads in
 * flight (the context's overrides, else the backend's, else defaults). */
KAUN_API void kaun_object_hints(const kaun_object *obj, uint64_t *chunk_size, unsigned *inflight);

/* A local file holding the object's bytes: its own path when it is one
 * (stat's local_path), else the backend's cache (fetch), downloading it
 * once.  Errors: KAUN_ENOTSUP (the backend has neither), the backend's. */
KAUN_API int kaun_object_fetch(kaun_object *obj, kaun_io *io, char *path_out, size_t path_size,
                               kaun_error *err);

/* The whole object as a read-only buffer: zero-copy when the backend can
 * map it, otherwise read into memory.  The buffer keeps the object's
 * backend alive.  Errors: as kaun_object_read, KAUN_ENOMEM. */
KAUN_API int kaun_object_map(kaun_object *obj, kaun_buffer **out, kaun_error *err);

/* The bytes an object is written from: `size` bytes produced by `read`.
 * `view` (may be NULL) lets a writer skip the copy: it points `*ptr` at
 * the bytes from `offset` and sets `*len` to how many are contiguous. */
typedef struct kaun_put_source {
  uint64_t size;
  int (*read)(void *context, uint64_t offset, void *dst, size_t len, kaun_error *err);
  int (*view)(void *context, uint64_t offset, const void **ptr, size_t *len);
  void *context;
} kaun_put_source;

/* Stores an object atomically: readers see the old object or the whole
 * new one.  Errors: KAUN_ENOTSUP (the backend cannot store), KAUN_EIO... */
KAUN_API int kaun_storage_put(kaun_context *ctx, const char *uri, const kaun_put_source *src,
                              kaun_error *err);

/* As kaun_storage_put, with progress and cancellation (`io` may be NULL). */
KAUN_API int kaun_storage_put_io(kaun_context *ctx, const char *uri, const kaun_put_source *src,
                                 kaun_io *io, kaun_error *err);

/* Removes an object.  Errors: KAUN_ENOTSUP, KAUN_ENOENT, KAUN_EIO. */
KAUN_API int kaun_storage_remove(kaun_context *ctx, const char *uri, kaun_error *err);

/* Called for each object under a prefix: its path relative to the
 * prefix and its size.  Return nonzero to stop. */
typedef int (*kaun_list_fn)(const char *name, uint64_t size, void *context);

/* Lists the objects under `uri` (a folder).  Errors: KAUN_ENOTSUP... */
KAUN_API int kaun_storage_list(kaun_context *ctx, const char *uri, kaun_list_fn fn, void *context,
                               kaun_error *err);

/* Reads a whole object of at most `max` bytes into a NUL-terminated,
 * malloc'd string (for small documents: indexes, configs). */
KAUN_API int kaun_storage_read_all(kaun_context *ctx, const char *uri, size_t max, char **out,
                                   size_t *out_len, kaun_error *err);

KAUN_END_DECLS

#endif
