/* kaun — what a storage plugin author needs.
 *
 * A plugin is a shared object exporting one symbol, KAUN_PLUGIN_ENTRY
 * ("kaun_plugin_entry"), a function returning a pointer to a `static
 * const kaun_plugin` descriptor.  The descriptor starts with the ABI
 * version and its own size, so it can grow: the core copies it into a
 * record of its own, checks the version and size, and fills absent
 * optional operations with ones that return KAUN_ENOTSUP.  See
 * docs/plugins.md for a complete example.
 *
 * Rules for operations:
 *  - return KAUN_OK or a negative KAUN_E* code, and fill `err` with a
 *    message that says what failed (the core puts the URI the user asked
 *    for in front of it when the message does not already contain it);
 *  - never print, never exit;
 *  - `read` may be called concurrently on one object from several
 *    threads; every other operation on one object is serialised by the
 *    caller; distinct objects may be used concurrently;
 *  - memory is freed by the side that allocated it.
 */
#ifndef KAUN_PLUGIN_H
#define KAUN_PLUGIN_H

#include <kaun/common.h>
#include <kaun/error.h>
#include <kaun/io.h>
#include <kaun/storage.h>

KAUN_BEGIN_DECLS

#define KAUN_PLUGIN_ABI_MAJOR 1
#define KAUN_PLUGIN_ABI_MINOR 2
#define KAUN_PLUGIN_ENTRY "kaun_plugin_entry"

/* ---- options ---------------------------------------------------------------- */

typedef enum kaun_option_type {
  KAUN_OPTION_STRING = 0,
  KAUN_OPTION_INT = 1,
  KAUN_OPTION_BOOL = 2
} kaun_option_type;

/* One option a plugin accepts.  Arrays of these end with a {NULL} entry. */
typedef struct kaun_option_spec {
  const char *name;
  kaun_option_type type;
  const char *default_value; /* as text; NULL = no default */
  int required;              /* the config must give it */
  int secret;                /* masked in output; "env:NAME" / "file:PATH" references resolved */
  const char *help;
} kaun_option_spec;

/* The resolved options of one backend instance (secrets already read). */
typedef struct kaun_options kaun_options;

/* The option's value as text (the default when not configured), or NULL. */
KAUN_API const char *kaun_options_get(const kaun_options *opts, const char *name);
/* The option as an integer or boolean (0/1), or `fallback` when unset. */
KAUN_API int64_t kaun_options_get_int(const kaun_options *opts, const char *name, int64_t fallback);
KAUN_API int kaun_options_get_bool(const kaun_options *opts, const char *name, int fallback);

/* The options of the backend instance answering to `scheme` in `ctx`
 * (created on first use, as a URI would), for code that does the
 * backend's work outside its plugin (the CLI's Hub commands).  Valid until
 * the context is freed.  Errors: as opening a URI of that scheme
 * (KAUN_ECONFIG for a scheme no config entry or plugin answers). */
KAUN_API int kaun_context_backend_options(kaun_context *ctx, const char *scheme,
                                          const kaun_options **out, kaun_error *err);

/* ---- capabilities ------------------------------------------------------------- */

enum {
  KAUN_CAP_READ = 1u << 0,    /* open/stat/read: every backend */
  KAUN_CAP_MAP = 1u << 1,     /* map/unmap: zero-copy access */
  KAUN_CAP_LIST = 1u << 2,    /* list */
  KAUN_CAP_PUT = 1u << 3,     /* put (atomic) */
  KAUN_CAP_REMOVE = 1u << 4,  /* remove */
  KAUN_CAP_STACKED = 1u << 5, /* open() reads through an inner object (tar://M::URI) */
  KAUN_CAP_FETCH = 1u << 6    /* fetch: materialise into a local cache file */
};

/* ---- the descriptor ----------------------------------------------------------- */

typedef struct kaun_plugin {
  /* Version 1.0 fields.  Never reorder; new fields go at the end with a
   * minor version bump. */
  uint32_t abi_major;  /* KAUN_PLUGIN_ABI_MAJOR */
  uint32_t abi_minor;  /* KAUN_PLUGIN_ABI_MINOR */
  size_t struct_size;  /* sizeof(kaun_plugin) as the plugin was built */
  const char *name;    /* the plugin's name: [a-z][a-z0-9_-]* */
  const char *version; /* the plugin's own version, free text */
  const char *description;
  const kaun_option_spec *options; /* ends with {NULL}; NULL = none */
  uint32_t capabilities;           /* KAUN_CAP_* */

  /* Creates an instance.  `ctx` lets the instance open other URIs (an
   * index elsewhere, an inner object): it stays valid until this
   * instance's destroy has returned, even when the application has
   * called kaun_context_free (the context lives on while any instance,
   * object or mapping made from it does).  Do not free it.  `instance`
   * is the name it answers to.  Calls to create for one backend name are
   * serialised: a context creates each instance once, even when many
   * threads ask for it at the same time.  Mandatory. */
  int (*create)(kaun_context *ctx, const char *instance, const kaun_options *options,
                void **out_backend, kaun_error *err);
  /* Mandatory. */
  void (*destroy)(void *backend);

  /* Opens the object at `path` (the URI after "SCHEME://").  For a
   * stacked backend `inner` is the object to read through (else NULL);
   * the plugin does not close it.  A path naming a folder gives
   * KAUN_EISDIR, a missing object KAUN_ENOENT.  Mandatory. */
  int (*open)(void *backend, const char *path, kaun_object *inner, void **out_object,
              kaun_error *err);
  /* Mandatory. */
  void (*close)(void *object);
  /* Fills size (and mtime, etag, local_path when known).  Mandatory. */
  int (*stat)(void *object, kaun_stat *out, kaun_error *err);
  /* Reads exactly `len` bytes at `offset` into `dst`.  Mandatory, unless
   * the plugin gives read_io (ABI 1.1), which the core then calls instead. */
  int (*read)(void *object, uint64_t offset, void *dst, size_t len, kaun_error *err);

  /* Optional (KAUN_CAP_MAP): the whole object's bytes, valid until unmap
   * with the same cookie, even after close. */
  int (*map)(void *object, const void **out_data, size_t *out_size, void **out_cookie,
             kaun_error *err);
  void (*unmap)(void *backend, void *cookie);
  /* Optional (KAUN_CAP_LIST). */
  int (*list)(void *backend, const char *prefix, kaun_list_fn fn, void *context, kaun_error *err);
  /* Optional (KAUN_CAP_PUT): store `src` at `path` atomically. */
  int (*put)(void *backend, const char *path, const kaun_put_source *src, kaun_error *err);
  /* Optional (KAUN_CAP_REMOVE). */
  int (*remove)(void *backend, const char *path, kaun_error *err);
  /* Optional (KAUN_CAP_FETCH): make the object a local file (a cache
   * entry) and write its path into `path_out`. */
  int (*fetch)(void *object, char *path_out, size_t path_size, kaun_error *err);

  /* ---- version 1.1 fields (read only when abi_minor >= 1) ------------ */

  /* Called once when the plugin's file is loaded, before any create (set
   * up libraries: curl_global_init...), and once before it is unloaded,
   * after the last destroy.  Both optional.  A failing load refuses the
   * plugin with the message it gives. */
  int (*load)(kaun_error *err);
  void (*unload)(void);

  /* As read, with an I/O context (<kaun/io.h>): report bytes with
   * kaun_io_add as they arrive and stop with KAUN_ECANCELED when it says
   * so; read kaun_io_chunk_size/inflight as hints.  `io` may be NULL.
   * Optional: without it the core calls read and reports progress
   * itself, per call. */
  int (*read_io)(void *object, uint64_t offset, void *dst, size_t len, kaun_io *io,
                 kaun_error *err);
  /* Optional (KAUN_CAP_MAP): `len` bytes at `offset` of the object,
   * zero-copy, valid until unmap with the cookie (even after close).  Return
   * KAUN_ENOTSUP to say "use read" for this object or range (a
   * compressed member, a remote object): the core then reads instead.
   * Without it the core maps the whole object with map. */
  int (*map_range)(void *object, uint64_t offset, uint64_t len, const void **out_data,
                   void **out_cookie, kaun_error *err);
  /* As fetch and put, with an I/O context.  Optional: without them the
   * core calls fetch and put. */
  int (*fetch_io)(void *object, char *path_out, size_t path_size, kaun_io *io, kaun_error *err);
  int (*put_io)(void *backend, const char *path, const kaun_put_source *src, kaun_io *io,
                kaun_error *err);
  /* Transfer hints for loads from this backend: the bytes one read should
   * ask for, and how many reads are worth having in flight at once (a
   * page cache wants a few threads; a network wants 8-32 requests).
   * 0 = the core's defaults (8 MiB; 8 for a backend that maps, 16 for one
   * that does not).  A context can override both (kaun_context_set_io). */
  uint64_t read_chunk;
  uint32_t read_inflight;

  /* ---- version 1.2 fields (read only when abi_minor >= 2) ------------ */

  /* As open, with an I/O context: a backend that transfers while it opens
   * (the Hub downloads into its cache) reports those bytes with
   * kaun_io_add and stops with KAUN_ECANCELED when it says so.  `io` is
   * the caller's (kaun_object_open_io), else one reporting to the
   * context's progress callback, else NULL.  With it, open may be NULL
   * (the core calls only open_io); without it the core calls open. */
  int (*open_io)(void *backend, const char *path, kaun_object *inner, kaun_io *io, void **out,
                 kaun_error *err);
} kaun_plugin;

/* The size of the version 1.0 descriptor: the loader's minimum. */
#define KAUN_PLUGIN_SIZE_1_0 (offsetof(kaun_plugin, fetch) + sizeof(void (*)(void)))
/* The size of the version 1.1 descriptor. */
#define KAUN_PLUGIN_SIZE_1_1 (offsetof(kaun_plugin, read_inflight) + sizeof(uint32_t))
/* The size of the version 1.2 descriptor. */
#define KAUN_PLUGIN_SIZE_1_2 (offsetof(kaun_plugin, open_io) + sizeof(void (*)(void)))

/* The entry point's type: `const kaun_plugin *kaun_plugin_entry(void)`. */
typedef const kaun_plugin *(*kaun_plugin_entry_fn)(void);

/* Declares the entry point in a plugin: KAUN_PLUGIN_DEFINE(my_descriptor) */
#define KAUN_PLUGIN_DEFINE(descriptor)                 \
  KAUN_API const kaun_plugin *kaun_plugin_entry(void); \
  KAUN_API const kaun_plugin *kaun_plugin_entry(void) { return &(descriptor); }

/* ---- helpers for plugins -------------------------------------------------------- */

/* Fills `err` (when not NULL) with `code` and a printf-style message, and
 * returns `code`.  For plugins: the core's own error formatting.  It
 * resets err->sys_errno and err->http_status: set those after calling it. */
KAUN_API int kaun_error_set(kaun_error *err, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Writes `src` to the local file `path` atomically (temporary file in the
 * same directory, fsync, rename).  Errors: KAUN_EIO, KAUN_ENOENT. */
KAUN_API int kaun_file_put_atomic(const char *path, const kaun_put_source *src, kaun_error *err);

/* Describes the plugins that can be found: the search path in use and,
 * for each .so in it, its name, version, ABI, path, or why it cannot be
 * loaded.  Text, one plugin per line; `*out` is malloc'd. */
KAUN_API int kaun_plugins_describe(kaun_context *ctx, char **out, kaun_error *err);

KAUN_END_DECLS

#endif
