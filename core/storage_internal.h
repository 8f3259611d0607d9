/* kaun — private declarations of the storage layer: plugin registry,
 * configuration, backend instances.  Private to libkaun. */
#ifndef KAUN_STORAGE_INTERNAL_H
#define KAUN_STORAGE_INTERNAL_H

#ifndef KAUN_BUILDING_LIBRARY
#error "core/storage_internal.h is private to libkaun"
#endif

#include <kaun/plugin.h>
#include <stdatomic.h>

#include "internal.h"

/* ---- the plugin registry (the only process-wide mutable state) ---------- */

typedef struct kaun__plugin {
  kaun_plugin ops; /* the plugin's descriptor, copied, optional slots filled */
  char *path;      /* the .so, or "(built-in)" */
  void *dl;        /* dlopen handle; NULL for built-ins */
  atomic_long refs;
  struct kaun__plugin *next;
} kaun__plugin;

/* The plugin called `name`, loaded from the first directory of `dirs` that
 * has NAME.so (or already loaded).  Takes a reference.  Errors:
 * KAUN_EPLUGIN / KAUN_EABI naming the file, why and where it looked. */
int kaun__plugin_by_name(const char *name, char *const *dirs, size_t ndirs, kaun__plugin **out,
                         kaun_error *err);
/* The plugin in the file `path` (absolute).  Takes a reference.  Before
 * dlopen, the file and every folder of its real path must be owned by
 * root or the effective user and writable by no one else (plugins are
 * code; docs/plugins.md, "Trust"): else KAUN_EPLUGIN naming the path at
 * fault and why.  kaun__plugin_by_name loads through the same check. */
int kaun__plugin_by_path(const char *path, kaun__plugin **out, kaun_error *err);
void kaun__plugin_unref(kaun__plugin *p);
/* Validates a descriptor and copies it into `out` with defaults filled. */
int kaun__plugin_check(const kaun_plugin *desc, size_t reported_size, const char *path,
                       kaun_plugin *out, kaun_error *err);

/* The built-in local-file plugin (plugins/file/file.c). */
extern const kaun_plugin kaun__file_plugin;

/* ---- options ------------------------------------------------------------------- */

struct kaun_options {
  const kaun_option_spec *specs; /* the plugin's, may be NULL */
  size_t count;
  char **names;
  char **values; /* resolved (secrets read) */
};

/* Looks up a spec by name, or NULL. */
const kaun_option_spec *kaun__option_spec(const kaun_option_spec *specs, const char *name);
void kaun__options_free(kaun_options *o);

/* ---- configuration ---------------------------------------------------------------- */

typedef struct kaun__setting {
  char *key;   /* option name */
  char *value; /* as text, unresolved ("env:X" stays so) */
  unsigned line;
  kaun_option_type type; /* what the JSON value was */
} kaun__setting;

typedef struct kaun__backend_conf {
  char *name;
  char *plugin; /* a name or a path to a .so */
  unsigned line;
  size_t count;
  kaun__setting *settings;
  /* backends.NAME.index_shard_uris, a core key (not the plugin's): the
   * shards of an index this backend serves may be URIs */
  bool index_shard_uris;
  unsigned index_shard_uris_line; /* 0: not set */
} kaun__backend_conf;

typedef struct kaun__mirror {
  char *prefix;
  size_t count;
  char **targets;
  unsigned line;
} kaun__mirror;

typedef struct kaun__config {
  char *path;         /* NULL: defaults */
  const char *origin; /* how the file was found */
  size_t ndirs;
  char **plugin_dirs;
  unsigned *dir_lines;
  char *cache_dir;
  unsigned cache_line;
  size_t nbackends;
  kaun__backend_conf *backends;
  size_t nmirrors;
  kaun__mirror *mirrors;
} kaun__config;

/* Reads and checks the syntax and types of a config file (not the
 * plugins' options: the context does that once plugins are loaded). */
int kaun__config_read(const char *path, const char *origin, kaun__config *out, kaun_error *err);
void kaun__config_free(kaun__config *c);

/* ---- contexts and instances ------------------------------------------------------ */

typedef struct kaun__instance {
  kaun_context *ctx; /* holds a reference: ctx lives until destroy */
  char *name;
  kaun__plugin *plugin;
  void *backend;
  kaun_options options;
  atomic_long refs;
} kaun__instance;

void kaun__instance_unref(kaun__instance *inst);

/* The first "::" of a URI that stacks it (not an escaped "\\::"), or NULL. */
const char *kaun__uri_chain(const char *text);
/* As kaun__uri_chain, for a stacked URI only (SCHEME://PATH::OUTER): NULL
 * for a plain path, which is one name, "::" included. */
const char *kaun__stack_chain(const char *text);

/* "URI/NAME" (a stacked URI joins on its left side); malloc'd or NULL. */
char *kaun__child_uri(const char *uri, const char *name);

/* Copies the reader's (first file's) metadata into `flat`, marking it as
 * having metadata when the file has a "__metadata__" (even empty). */
int kaun__reader_copy_metadata(const kaun_reader *r, kaun_flat *flat, kaun_error *err);

/* The config's cache_dir, or NULL when the config has none. */
const char *kaun__context_cache_dir(const kaun_context *ctx);

/* The name of the backend instance that serves `o` (after mirror
 * rewriting: the mirror that answered; "file" for plain paths). */
const char *kaun__object_backend(const kaun_object *o);

/* Whether the config lets indexes served by the backend `name` name
 * their shards by URI (backends.NAME.index_shard_uris; off by default). */
bool kaun__index_shard_uris(const kaun_context *ctx, const char *name);

/* ---- copies (core/copy.c) ----------------------------------------------------------- */

/* True when `src` is the put source of kaun_storage_copy: the object it
 * reads from, the operation's io (may be NULL) and the source URI to
 * report progress under are then set.  A backend's put may copy from the
 * object its own way instead of calling src->read (the file backend:
 * copy_file_range between local files). */
bool kaun__copy_source(const kaun_put_source *src, kaun_object **object, kaun_io **io,
                       const char **uri);

#endif
