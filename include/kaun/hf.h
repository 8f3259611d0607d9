/* kaun — the HuggingFace Hub (and Hub-compatible mirrors): downloads into
 * the shared cache, in huggingface_hub's layout.
 *
 * The wire protocol, the cache layout and the resolution rules are those
 * of huggingface_hub (docs/hub.md): a HEAD on
 * ENDPOINT/REPO/resolve/REVISION/FILE gives the commit, the blob's etag
 * and size; the blob is downloaded once (a per-entry lock across
 * processes) into ROOT/models--ORG--NAME/blobs/ETAG, checked for size and
 * hash (SHA-256 for LFS files, git's blob SHA-1 for the others) and
 * linked from snapshots/COMMIT/FILE; refs/REVISION records the commit.
 * A commit hash that is cached never touches the network; a branch is
 * re-checked on every online call; offline (or when the Hub fails) the
 * cache answers through refs/.
 *
 * The `hf` backend (plugins/hf) answers hf://ORG/NAME/PATH and
 * hf://REPO_ID@REVISION/PATH with these functions.  Thread-safe. */
#ifndef KAUN_HF_H
#define KAUN_HF_H

#include <kaun/common.h>
#include <kaun/error.h>
#include <kaun/names.h>
#include <kaun/plugin.h>
#include <kaun/http.h>
#include <kaun/io.h>
#include <kaun/ptree.h>
#include <kaun/storage.h>

KAUN_BEGIN_DECLS

/* Options of one call.  Start from `kaun_hf_options o = KAUN_HF_OPTIONS_INIT;`:
 * every zero field means its default.  Fields may be added at the end. */
typedef struct kaun_hf_options {
  size_t struct_size;    /* sizeof(kaun_hf_options) */
  const char *token;     /* NULL: $HF_TOKEN, $HUGGING_FACE_HUB_TOKEN, then the file
                            $HF_HOME/token (~/.cache/huggingface/token); "" = none */
  const char *revision;  /* branch, tag or 40-hex commit; NULL = "main" */
  const char *endpoint;  /* NULL: $HF_ENDPOINT, else https://huggingface.co */
  const char *cache_dir; /* the Hub cache itself; NULL: kaun_cache_root(ctx)/huggingface */
  const char *repo_type; /* "model" (NULL), "dataset" or "space" */
  int offline;           /* nonzero: the cache only (also $HF_HUB_OFFLINE=1) */
  kaun_context *ctx;     /* the config's cache_dir; loads go through it (may be NULL) */
  kaun_http *http;       /* a client to use (NULL: one is made for the call) */
  kaun_io *io;           /* progress and cancel (may be NULL) */
  long lock_timeout_ms;  /* waiting for another downloader; 0 = 10 minutes */
  /* for the client made when `http` is NULL: 0 = the HTTP layer's defaults */
  unsigned max_attempts;
  long retry_base_ms;
  long retry_max_ms;
  /* Files of at least 4 parts download as parallel ranged GETs of
   * `part_size` bytes (0 = 8 MiB), `connections` at a time (0 = 4; 1 =
   * one stream).  The hash is checked either way. */
  uint64_t part_size;
  unsigned connections;
} kaun_hf_options;

#define KAUN_HF_OPTIONS_INIT \
  { .struct_size = sizeof(kaun_hf_options) }

/* Fills `out` (from KAUN_HF_OPTIONS_INIT) with the options of the Hub
 * backend instance `scheme` (NULL: "hf") in `ctx` — endpoint, token,
 * revision, cache_dir, repo_type, offline, retries, lock wait, part_size,
 * connections — as the hf:// backend uses them, and out->ctx = ctx: so a
 * download made through this API lands where loads of hf:// URIs look.
 * Strings point into the context (valid until it is freed).  When the
 * config has no such backend and no hf plugin can be found, the
 * defaults.  Errors: those of a backend whose options are wrong. */
KAUN_API int kaun_hf_options_from_context(kaun_context *ctx, const char *scheme,
                                          kaun_hf_options *out, kaun_error *err);

/* The same from a backend's resolved options (the hf plugin's create):
 * `out` gets KAUN_HF_OPTIONS_INIT and the options' values; its strings
 * are those of `opts`. */
KAUN_API void kaun_hf_options_from(const kaun_options *opts, kaun_hf_options *out);

/* What a download resolved to. */
typedef struct kaun_hf_file {
  char path[4096];  /* ROOT/models--ORG--NAME/snapshots/COMMIT/FILE (a symlink) */
  char commit[41];  /* the commit the revision resolved to */
  char etag[65];    /* the blob's name: SHA-256 (LFS) or git SHA-1 */
  uint64_t size;    /* bytes */
  int from_network; /* nonzero when the call asked the Hub (a HEAD at least) */
} kaun_hf_file;

/* Downloads FILE of REPO_ID (or finds it in the cache) and fills `out`.
 * `repo_id` is NAME or ORG/NAME ([A-Za-z0-9_.-], as the Hub validates);
 * `filename` is relative, without "." or ".." components.  `opts` may be
 * NULL (every default).
 * Errors (the message names the repo, revision and file, and says what
 * to do; the Hub's X-Error-Message and request id are added):
 *   KAUN_EINVAL   a bad repo id or filename (refused before any request);
 *   KAUN_ENOENT   no such repo (404 RepoNotFound with a token), revision
 *                 (RevisionNotFound) or file (EntryNotFound: a .no_exist
 *                 marker is written); offline and not in the cache;
 *   KAUN_EAUTH    a private repo without a token (401 RepoNotFound), a
 *                 gated repo (GatedRepo), a rejected token (401);
 *   KAUN_ETRANSIENT  rate limited (429, after the retries), 5xx, network
 *                 errors, a lock held too long — unless the cache has it;
 *   KAUN_EIO      not a Hub-compatible answer (no X-Repo-Commit, etag or
 *                 size), a 416, a short file; KAUN_ECHECKSUM a download
 *                 whose hash is not its etag (nothing enters the cache);
 *   KAUN_ECANCELED, KAUN_ECONFIG (no cache root), KAUN_ENOMEM. */
KAUN_API int kaun_hf_download_file(const char *repo_id, const char *filename,
                                   const kaun_hf_options *opts, kaun_hf_file *out, kaun_error *err);

/* Several files of one repo at one commit, in parallel (at most 8 at
 * once): the revision is resolved once (by the first file's HEAD), the
 * others are downloaded at that commit.  `out` is an array of `n`.
 * Errors: as kaun_hf_download_file, for the first file that failed. */
KAUN_API int kaun_hf_download_files(const char *repo_id, const char *const *filenames, size_t n,
                                    const kaun_hf_options *opts, kaun_hf_file *out,
                                    kaun_error *err);

/* The files of REPO_ID at the options' revision, sorted (the Hub's repo
 * info; offline: the cached snapshot's files), and the commit it resolved
 * to (`commit` may be NULL).  Free the list with kaun_hf_free_list.
 * Errors: KAUN_ENOENT (no such repo or revision; offline and not cached),
 * KAUN_EAUTH (private or gated), KAUN_EIO (not a Hub answer), as
 * kaun_hf_download_file otherwise. */
KAUN_API int kaun_hf_list_files(const char *repo_id, const kaun_hf_options *opts, char ***files,
                                size_t *n, char commit[41], kaun_error *err);
KAUN_API void kaun_hf_free_list(char **files, size_t n);

/* json-c's object (#include <json-c/json.h> to use it; link with -ljson-c). */
struct json_object;

/* Downloads config.json of REPO_ID (as kaun_hf_download_file) and parses
 * it: `*out` is a json-c object the caller releases with
 * json_object_put().  Errors: those of kaun_hf_download_file; KAUN_EIO
 * when config.json is not a JSON object (the message names the file and
 * json-c's reason). */
KAUN_API int kaun_hf_load_config(const char *repo_id, const kaun_hf_options *opts,
                                 struct json_object **out, kaun_error *err);

/* Loads a model's weights as a flat (name, tensor) list: model.safetensors,
 * else model.safetensors.index.json and its shards, all downloaded (in
 * parallel) at the one commit the index resolved to; every tensor the
 * index maps is checked present in its shard.  Free with kaun_flat_free.
 * Errors: those of kaun_hf_download_file (KAUN_ENOENT naming both names
 * when the repo has neither), of kaun_checkpoint_load_flat (KAUN_EINDEX
 * for a bad index or a missing tensor). */
KAUN_API int kaun_hf_load_weights(const char *repo_id, const kaun_hf_options *opts, kaun_flat **out,
                                  kaun_error *err);

/* ---- mapping Hub names onto your tree ---------------------------------------------- */

/* The Hub's names for the generic name map (names.h): strip or add a
 * prefix, then rename rules.  A kaun_hf_name_map can also be given to any
 * load as kaun_load_options.names. */
typedef kaun_rename kaun_hf_rename;
typedef kaun_name_map kaun_hf_name_map;

/* The name `name` maps to (malloc'd, the caller frees it), or NULL when
 * out of memory.  `map` may be NULL (the name itself). */
KAUN_API char *kaun_hf_map_name(const kaun_hf_name_map *map, const char *name);

/* Fills a new tree shaped as the template `like` from `weights` (a flat
 * list, e.g. from kaun_hf_load_weights) whose names go through `map`:
 * each template leaf gets the weight that maps to its path, cast to the
 * template's dtype (views stay views when the dtype matches); weights no
 * leaf asks for are ignored.  Free `*out` with kaun_ptree_free.
 * Errors: KAUN_EKEY naming the template path and the three closest mapped
 * weight names (with the file names they came from); KAUN_ESHAPE naming
 * the path and both shapes; KAUN_ENOTSUP (a cast), KAUN_EINVAL, KAUN_ENOMEM. */
KAUN_API int kaun_hf_fill_template(const kaun_flat *weights, const kaun_hf_name_map *map,
                                   const kaun_ptree *like, kaun_ptree **out, kaun_error *err);

/* The Hub cache's folder (cache_dir, else kaun_cache_root/huggingface),
 * written into `out`.  Errors: KAUN_ECONFIG, KAUN_EINVAL (too long). */
KAUN_API int kaun_hf_cache_dir(const kaun_hf_options *opts, char *out, size_t size,
                               kaun_error *err);

/* Removes one repo's cache (repo_id non-NULL: its models--ORG--NAME
 * folder and locks) or every repo's (repo_id NULL: each models--*,
 * datasets--* and spaces--* folder and their locks; other files in the
 * cache folder, which huggingface_hub may share, stay).  Nothing there
 * is fine.  Errors: KAUN_EINVAL (a bad repo id), KAUN_EIO naming what
 * could not be removed. */
KAUN_API int kaun_hf_clear_cache(const char *repo_id, const kaun_hf_options *opts, kaun_error *err);

/* Splits the path of an hf:// URI ("ORG/NAME/FILE", "ID@REV/FILE",
 * "ORG/NAME", "ID@REV") into malloc'd repo id, revision (NULL when not
 * given) and file (NULL when the URI names the repo).  Free each with
 * free().  Errors: KAUN_EURI naming the URI, KAUN_ENOMEM. */
KAUN_API int kaun_hf_parse_path(const char *path, char **repo_id, char **revision, char **file,
                                kaun_error *err);

KAUN_END_DECLS

#endif
