/* kaun's HuggingFace Hub backend: hf://ORG/NAME/PATH and
 * hf://REPO_ID@REVISION/PATH (a revision with '/' is percent-encoded:
 * hf://org/m@refs%2Fpr%2F1/config.json).
 *
 * open downloads the file into the Hub cache (ROOT/huggingface, in
 * huggingface_hub's layout) through kaun_hf_download_file (core/hf.c) and
 * serves reads from the cached blob.  Opening a sharded index
 * (*.safetensors.index.json) downloads its shards in parallel at the
 * commit the index resolved to, and pins them: within this backend
 * instance (one context), opening a shard of that index at that revision
 * reads it at the index's commit, so a branch that moves during a load
 * never mixes two commits.  ABI 1.1. */
#include <kaun/hf.h>
#include <kaun/plugin.h>

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define INDEX_SUFFIX ".safetensors.index.json"
#define INDEX_MAX (64u << 20)

typedef struct pin {
  struct pin *next;
  char *repo, *rev; /* as asked (rev NULL: the default) */
  char *dir;        /* the index's folder inside the repo, "" or "a/b/" */
  char commit[41];
  char **names;
  size_t n;
} pin;

typedef struct backend {
  char *name;
  kaun_context *ctx;
  kaun_http *http;
  kaun_hf_options base; /* from the options (kaun_hf_options_from); its
                           strings are the copies below */
  char *endpoint, *token, *revision, *cache_dir, *repo_type;
  pthread_mutex_t lock; /* guards pins */
  pin *pins;
} backend;

typedef struct object {
  backend *be;
  int fd;
  kaun_hf_file f;
} object;

static const kaun_option_spec options[] = {
    {"endpoint", KAUN_OPTION_STRING, NULL, 0, 0,
     "the Hub or a mirror (default: $HF_ENDPOINT, else https://huggingface.co)"},
    {"token", KAUN_OPTION_STRING, NULL, 0, 1,
     "access token (default: $HF_TOKEN, $HUGGING_FACE_HUB_TOKEN, then $HF_HOME/token); sent "
     "only to the endpoint's origin"},
    {"revision", KAUN_OPTION_STRING, "main", 0, 0,
     "branch, tag or commit when the URI gives none (hf://ID@REV/...)"},
    {"cache_dir", KAUN_OPTION_STRING, NULL, 0, 0,
     "the Hub cache folder (default: the cache root's huggingface/; a huggingface_hub cache "
     "such as ~/.cache/huggingface/hub works)"},
    {"repo_type", KAUN_OPTION_STRING, "model", 0, 0, "model, dataset or space"},
    {"offline", KAUN_OPTION_BOOL, "false", 0, 0,
     "the cache only, no network (also $HF_HUB_OFFLINE=1)"},
    {"max_attempts", KAUN_OPTION_INT, "5", 0, 0, "tries per request, the first included"},
    {"retry_base_ms", KAUN_OPTION_INT, "1000", 0, 0, "first retry delay (doubles each time)"},
    {"retry_max_ms", KAUN_OPTION_INT, "8000", 0, 0, "longest retry delay, Retry-After included"},
    {"lock_timeout_ms", KAUN_OPTION_INT, "600000", 0, 0,
     "how long to wait for another process downloading the same file"},
    {"part_size", KAUN_OPTION_INT, "8388608", 0, 0,
     "files of 4 parts or more download as parallel ranged GETs of this many bytes"},
    {"connections", KAUN_OPTION_INT, "4", 0, 0,
     "ranged GETs in flight for one file (1: one stream)"},
    {NULL, 0, NULL, 0, 0, NULL}};

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

static void pin_free(pin *p) {
  for (size_t i = 0; i < p->n; i++) free(p->names[i]);
  free(p->names);
  free(p->repo);
  free(p->rev);
  free(p->dir);
  free(p);
}

static void hf_destroy(void *b) {
  backend *be = b;
  if (!be) return;
  kaun_http_free(be->http);
  if (be->token) {
    memset(be->token, 0, strlen(be->token));
    free(be->token);
  }
  while (be->pins) {
    pin *p = be->pins;
    be->pins = p->next;
    pin_free(p);
  }
  pthread_mutex_destroy(&be->lock);
  free(be->endpoint);
  free(be->revision);
  free(be->cache_dir);
  free(be->repo_type);
  free(be->name);
  free(be);
}

static int hf_create(kaun_context *ctx, const char *instance, const kaun_options *opts, void **out,
                     kaun_error *err) {
  backend *be = calloc(1, sizeof *be);
  if (!be) return kaun_error_set(err, KAUN_ENOMEM, "hf: out of memory");
  pthread_mutex_init(&be->lock, NULL);
  be->ctx = ctx;
  be->name = strdup(instance);
  kaun_hf_options_from(opts, &be->base);
  be->base.endpoint = be->endpoint = dup_or_null(be->base.endpoint);
  be->base.token = be->token = dup_or_null(be->base.token);
  be->base.revision = be->revision = dup_or_null(be->base.revision);
  be->base.cache_dir = be->cache_dir = dup_or_null(be->base.cache_dir);
  be->base.repo_type = be->repo_type = dup_or_null(be->base.repo_type);
  be->base.ctx = ctx;
  int64_t part = kaun_options_get_int(opts, "part_size", 8 << 20),
          conns = kaun_options_get_int(opts, "connections", 4);
  if (part < 4096 || conns < 1 || conns > 64) {
    int rc = kaun_error_set(err, KAUN_ECONFIG,
                            part < 4096 ? "backends.%s.part_size must be at least 4096 (it is %lld)"
                                        : "backends.%s.connections must be between 1 and 64 (it is "
                                          "%lld)",
                            instance, (long long)(part < 4096 ? part : conns));
    hf_destroy(be);
    return rc;
  }
  if (!be->name) {
    hf_destroy(be);
    return kaun_error_set(err, KAUN_ENOMEM, "hf: out of memory");
  }
  const char *t = be->repo_type ? be->repo_type : "model";
  if (strcmp(t, "model") != 0 && strcmp(t, "dataset") != 0 && strcmp(t, "space") != 0) {
    int rc = kaun_error_set(err, KAUN_ECONFIG,
                            "backends.%s.repo_type must be model, dataset or space (it is '%s')",
                            instance, t);
    hf_destroy(be);
    return rc;
  }
  kaun_http_options ho = KAUN_HTTP_OPTIONS_INIT;
  ho.user_agent_suffix = "hf";
  ho.stall_ms = 10000;
  ho.max_attempts = be->base.max_attempts;
  ho.retry_base_ms = be->base.retry_base_ms;
  ho.retry_max_ms = be->base.retry_max_ms;
  int rc = kaun_http_new(&ho, &be->http, err);
  if (rc) {
    hf_destroy(be);
    return rc;
  }
  *out = be;
  return KAUN_OK;
}

static void options_for(const backend *be, const char *rev, kaun_hf_options *o) {
  *o = be->base;
  if (rev) o->revision = rev;
  o->http = be->http;
}

/* The commit an index pinned for this file, if any. */
static int pinned(backend *be, const char *repo, const char *rev, const char *file,
                  char commit[41]) {
  int found = 0;
  pthread_mutex_lock(&be->lock);
  for (pin *p = be->pins; p && !found; p = p->next) {
    if (strcmp(p->repo, repo) != 0 || (p->rev == NULL) != (rev == NULL) ||
        (rev && strcmp(p->rev, rev) != 0))
      continue;
    size_t dl = strlen(p->dir);
    if (strncmp(file, p->dir, dl) != 0) continue;
    for (size_t i = 0; i < p->n && !found; i++)
      if (strcmp(file + dl, p->names[i]) == 0) {
        memcpy(commit, p->commit, 41);
        found = 1;
      }
  }
  pthread_mutex_unlock(&be->lock);
  return found;
}

/* Downloads the shards an index names, at its commit, and pins them. */
static int prefetch_shards(backend *be, const char *repo, const char *rev, const char *index_file,
                           const object *o, kaun_io *io, kaun_error *err) {
  char uri[1024];
  snprintf(uri, sizeof uri, "hf://%s@%s/%s", repo, o->f.commit, index_file);
  if (o->f.size > INDEX_MAX)
    return kaun_error_set(err, KAUN_EINDEX, "%s: the index is larger than %u bytes", uri,
                          INDEX_MAX);
  char *text = malloc(o->f.size + 1);
  if (!text) return kaun_error_set(err, KAUN_ENOMEM, "hf: out of memory");
  size_t done = 0;
  while (done < o->f.size) {
    ssize_t n = pread(o->fd, text + done, o->f.size - done, (off_t)done);
    if (n <= 0) break;
    done += (size_t)n;
  }
  text[done] = 0;
  json_object *doc = json_tokener_parse(text);
  free(text);
  json_object *wm = NULL;
  if (!doc || !json_object_is_type(doc, json_type_object) ||
      !json_object_object_get_ex(doc, "weight_map", &wm) ||
      !json_object_is_type(wm, json_type_object)) {
    json_object_put(doc);
    /* the core reports a malformed index with its line; nothing to fetch */
    return KAUN_OK;
  }
  pin *p = calloc(1, sizeof *p);
  size_t cap = (size_t)json_object_object_length(wm) + 1;
  if (p) p->names = calloc(cap, sizeof *p->names);
  int rc = !p || !p->names ? kaun_error_set(err, KAUN_ENOMEM, "hf: out of memory") : KAUN_OK;
  json_object_object_foreach(wm, key, val) {
    (void)key;
    if (rc || !json_object_is_type(val, json_type_string)) continue;
    const char *s = json_object_get_string(val);
    size_t i = 0;
    while (i < p->n && strcmp(p->names[i], s) != 0) i++;
    if (i < p->n || strstr(s, "://")) continue; /* seen; a URI is the core's business */
    if (!(p->names[p->n] = strdup(s)))
      rc = kaun_error_set(err, KAUN_ENOMEM, "hf: out of memory");
    else
      p->n++;
  }
  json_object_put(doc);
  const char *slash = strrchr(index_file, '/');
  size_t dl = slash ? (size_t)(slash - index_file) + 1 : 0;
  if (!rc) {
    p->repo = strdup(repo);
    p->rev = dup_or_null(rev);
    p->dir = strndup(index_file, dl);
    memcpy(p->commit, o->f.commit, 41);
    if (!p->repo || (rev && !p->rev) || !p->dir)
      rc = kaun_error_set(err, KAUN_ENOMEM, "hf: out of memory");
  }
  char **paths = NULL;
  kaun_hf_file *files = NULL;
  if (!rc && p->n) {
    paths = calloc(p->n, sizeof *paths);
    files = calloc(p->n, sizeof *files);
    if (!paths || !files) rc = kaun_error_set(err, KAUN_ENOMEM, "hf: out of memory");
    for (size_t i = 0; !rc && i < p->n; i++) {
      size_t len = dl + strlen(p->names[i]) + 1;
      if (!(paths[i] = malloc(len)))
        rc = kaun_error_set(err, KAUN_ENOMEM, "hf: out of memory");
      else
        snprintf(paths[i], len, "%s%s", p->dir, p->names[i]);
    }
    if (!rc) {
      kaun_hf_options ho;
      options_for(be, p->commit, &ho);
      ho.io = io;
      rc = kaun_hf_download_files(repo, (const char *const *)paths, p->n, &ho, files, err);
      /* a shard the index names that is not in the repo: a bad index, not
       * a missing one (a reader would look for something else) */
      if (rc == KAUN_ENOENT) rc = KAUN_EINDEX;
      if (rc && err) {
        char why[KAUN_ERROR_MESSAGE_MAX];
        snprintf(why, sizeof why, "%s", err->message);
        long st = err->http_status;
        kaun_error_set(err, rc, "shards of %s: %s", uri, why);
        err->http_status = st;
      }
    }
  }
  if (paths)
    for (size_t i = 0; i < p->n; i++) free(paths[i]);
  free(paths);
  free(files);
  if (rc) {
    if (p) pin_free(p);
    return rc;
  }
  pthread_mutex_lock(&be->lock);
  p->next = be->pins;
  be->pins = p;
  pthread_mutex_unlock(&be->lock);
  return KAUN_OK;
}

static void hf_close(void *ob) {
  object *o = ob;
  if (!o) return;
  if (o->fd >= 0) close(o->fd);
  free(o);
}

static int hf_open_io(void *b, const char *path, kaun_object *inner, kaun_io *io, void **out,
                      kaun_error *err) {
  (void)inner;
  backend *be = b;
  char *repo, *rev, *file;
  int rc = kaun_hf_parse_path(path, &repo, &rev, &file, err);
  if (rc) return rc;
  if (!file || file[strlen(file) - 1] == '/') {
    rc = kaun_error_set(err, KAUN_EISDIR, "%s://%s names a repo or a folder, not a file", be->name,
                        path);
  }
  object *o = NULL;
  if (!rc && !(o = calloc(1, sizeof *o))) rc = kaun_error_set(err, KAUN_ENOMEM, "hf: oom");
  if (!rc) {
    o->fd = -1;
    o->be = be;
    char commit[41];
    kaun_hf_options ho;
    options_for(be, pinned(be, repo, rev, file, commit) ? commit : rev, &ho);
    ho.io = io; /* the download's progress and cancel */
    rc = kaun_hf_download_file(repo, file, &ho, &o->f, err);
  }
  if (!rc && (o->fd = open(o->f.path, O_RDONLY | O_CLOEXEC)) < 0)
    rc = kaun_error_set(err, KAUN_EIO, "%s://%s: cannot open its cache entry %s: %s", be->name,
                        path, o->f.path, strerror(errno));
  size_t fl = file ? strlen(file) : 0;
  if (!rc && fl > strlen(INDEX_SUFFIX) &&
      strcmp(file + fl - strlen(INDEX_SUFFIX), INDEX_SUFFIX) == 0)
    rc = prefetch_shards(be, repo, rev, file, o, io, err);
  free(repo);
  free(rev);
  free(file);
  if (rc) {
    hf_close(o);
    return rc;
  }
  *out = o;
  return KAUN_OK;
}

static int hf_open(void *b, const char *path, kaun_object *inner, void **out, kaun_error *err) {
  return hf_open_io(b, path, inner, NULL, out, err);
}

static int hf_stat(void *ob, kaun_stat *st, kaun_error *err) {
  (void)err;
  object *o = ob;
  st->size = o->f.size;
  st->mtime = 0;
  snprintf(st->etag, sizeof st->etag, "%s", o->f.etag);
  snprintf(st->local_path, sizeof st->local_path, "%s", o->f.path);
  return KAUN_OK;
}

static int hf_read_io(void *ob, uint64_t offset, void *dst, size_t len, kaun_io *io,
                      kaun_error *err) {
  object *o = ob;
  if (offset > o->f.size || len > o->f.size - offset)
    return kaun_error_set(err, KAUN_EIO, "%s: bytes %llu..%llu are past its end (%llu bytes)",
                          o->f.path, (unsigned long long)offset, (unsigned long long)(offset + len),
                          (unsigned long long)o->f.size);
  size_t done = 0;
  while (done < len) {
    ssize_t n = pread(o->fd, (char *)dst + done, len - done, (off_t)(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += (size_t)n;
  }
  if (done < len)
    return kaun_error_set(err, KAUN_EIO, "hf: the cache entry %s is short", o->f.path);
  if (kaun_io_add(io, o->f.path, o->f.size, len) == KAUN_ECANCELED)
    return kaun_error_set(err, KAUN_ECANCELED, "%s: canceled", o->f.path);
  return KAUN_OK;
}

static int hf_read(void *ob, uint64_t offset, void *dst, size_t len, kaun_error *err) {
  return hf_read_io(ob, offset, dst, len, NULL, err);
}

/* Zero-copy views of the cached blob (a mapping of pages around the range). */
typedef struct mapping {
  void *base;
  size_t len;
} mapping;

static int hf_map_range(void *ob, uint64_t offset, uint64_t len, const void **out_data,
                        void **out_cookie, kaun_error *err) {
  object *o = ob;
  if (offset > o->f.size || len > o->f.size - offset)
    return kaun_error_set(err, KAUN_EIO, "%s: bytes %llu..%llu are past its end (%llu bytes)",
                          o->f.path, (unsigned long long)offset, (unsigned long long)(offset + len),
                          (unsigned long long)o->f.size);
  if (len == 0) return kaun_error_set(err, KAUN_ENOTSUP, "%s: nothing to map", o->f.path);
  uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE), start = offset - offset % page;
  mapping *m = malloc(sizeof *m);
  if (!m) return kaun_error_set(err, KAUN_ENOMEM, "hf: out of memory");
  m->len = (size_t)(offset + len - start);
  m->base = mmap(NULL, m->len, PROT_READ, MAP_PRIVATE, o->fd, (off_t)start);
  if (m->base == MAP_FAILED) {
    int e = errno;
    free(m);
    return kaun_error_set(err, KAUN_ENOTSUP, "%s: cannot map it (%s): read instead", o->f.path,
                          strerror(e));
  }
  *out_data = (const char *)m->base + (offset - start);
  *out_cookie = m;
  return KAUN_OK;
}

static int hf_map(void *ob, const void **out_data, size_t *out_size, void **out_cookie,
                  kaun_error *err) {
  object *o = ob;
  *out_size = (size_t)o->f.size;
  return hf_map_range(ob, 0, o->f.size, out_data, out_cookie, err);
}

static void hf_unmap(void *be, void *cookie) {
  (void)be;
  mapping *m = cookie;
  if (!m) return;
  munmap(m->base, m->len);
  free(m);
}

static int hf_fetch(void *ob, char *path_out, size_t path_size, kaun_error *err) {
  object *o = ob;
  if (strlen(o->f.path) >= path_size)
    return kaun_error_set(err, KAUN_EINVAL, "hf: the cache path %s does not fit in %zu bytes",
                          o->f.path, path_size);
  memcpy(path_out, o->f.path, strlen(o->f.path) + 1);
  return KAUN_OK;
}

static int hf_fetch_io(void *ob, char *path_out, size_t path_size, kaun_io *io, kaun_error *err) {
  (void)io;
  return hf_fetch(ob, path_out, path_size, err);
}

static const kaun_plugin hf_plugin = {
    .abi_major = KAUN_PLUGIN_ABI_MAJOR,
    .abi_minor = KAUN_PLUGIN_ABI_MINOR,
    .struct_size = sizeof(kaun_plugin),
    .name = "hf",
    .version = "1.0",
    .description = "the HuggingFace Hub and its mirrors (huggingface_hub's cache)",
    .options = options,
    .capabilities = KAUN_CAP_READ | KAUN_CAP_MAP | KAUN_CAP_FETCH,
    .create = hf_create,
    .destroy = hf_destroy,
    .open = hf_open,
    .open_io = hf_open_io,
    .close = hf_close,
    .stat = hf_stat,
    .read = hf_read,
    .map = hf_map,
    .unmap = hf_unmap,
    .fetch = hf_fetch,
    .read_io = hf_read_io,
    .map_range = hf_map_range,
    .fetch_io = hf_fetch_io,
    .read_chunk = (uint64_t)8 << 20,
    .read_inflight = 8,
};

KAUN_PLUGIN_DEFINE(hf_plugin)
