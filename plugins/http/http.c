/* kaun's HTTP backend: objects served by any HTTP server that honours
 * Range (a static file server, a CDN, an artifact store).
 *
 *   http://HOST[:PORT]/PATH, https://...   the default instances
 *   NAME://PATH                             an instance with "url": the
 *                                           base URL PATH is appended to
 *
 * open is a HEAD (size, ETag); reads are ranged GETs checked against that
 * ETag, so an object replaced during a load is KAUN_ECHANGED, not a mix
 * of two files; put is a PUT, remove a DELETE; fetch downloads into the
 * shared cache (ROOT/kaun/http).  Everything goes through <kaun/http.h>
 * and <kaun/cache.h>: retries, resumes, progress and cancellation come
 * from there.  ABI 1.1. */
#include <kaun/cache.h>
#include <kaun/hash.h>
#include <kaun/http.h>
#include <kaun/plugin.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct backend {
  char *name;
  char *base; /* URL prefix; NULL: the instance name is the URL scheme */
  char *token;
  kaun_http *http;
  kaun_context *ctx;
} backend;

typedef struct object {
  backend *be;
  char *url;
  char *uri; /* for messages: NAME://PATH */
  uint64_t size;
  char etag[256];
  int64_t mtime;
  pthread_mutex_t lock; /* guards local */
  char local[4096];     /* the cache entry, once fetched ("" before) */
  atomic_int no_ranges; /* the server answered a Range with the whole object */
} object;

static const kaun_option_spec options[] = {
    {"url", KAUN_OPTION_STRING, NULL, 0, 0,
     "base URL the object path is appended to (default: the scheme is http or https)"},
    {"token", KAUN_OPTION_STRING, NULL, 0, 1,
     "bearer token, sent only to the base URL's own origin"},
    {"ca_file", KAUN_OPTION_STRING, NULL, 0, 0,
     "PEM bundle of CAs to trust (default: the system's)"},
    {"insecure_skip_tls_verify", KAUN_OPTION_BOOL, "false", 0, 0,
     "do not verify TLS certificates: for self-signed test servers only"},
    {"max_attempts", KAUN_OPTION_INT, "5", 0, 0, "tries per request, the first included"},
    {"retry_base_ms", KAUN_OPTION_INT, "250", 0, 0, "first retry delay (doubles each time)"},
    {"retry_max_ms", KAUN_OPTION_INT, "30000", 0, 0, "longest retry delay, Retry-After included"},
    {"connect_timeout_ms", KAUN_OPTION_INT, "10000", 0, 0, "connection timeout"},
    {"stall_ms", KAUN_OPTION_INT, "30000", 0, 0,
     "a transfer with no progress for this long is retried"},
    {NULL, 0, NULL, 0, 0, NULL}};

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

static void h_destroy(void *b) {
  backend *be = b;
  if (!be) return;
  kaun_http_free(be->http);
  if (be->token) {
    memset(be->token, 0, strlen(be->token));
    free(be->token);
  }
  free(be->base);
  free(be->name);
  free(be);
}

static int h_create(kaun_context *ctx, const char *instance, const kaun_options *opts, void **out,
                    kaun_error *err) {
  backend *be = calloc(1, sizeof *be);
  if (!be) return kaun_error_set(err, KAUN_ENOMEM, "http: out of memory");
  be->ctx = ctx;
  be->name = strdup(instance);
  be->base = dup_or_null(kaun_options_get(opts, "url"));
  be->token = dup_or_null(kaun_options_get(opts, "token"));
  if (!be->name) {
    h_destroy(be);
    return kaun_error_set(err, KAUN_ENOMEM, "http: out of memory");
  }
  if (!be->base && strcmp(instance, "http") != 0 && strcmp(instance, "https") != 0) {
    h_destroy(be);
    return kaun_error_set(err, KAUN_ECONFIG,
                          "the http backend '%s' needs a base URL: set backends.%s.url", instance,
                          instance);
  }
  if (be->base && strncmp(be->base, "http://", 7) != 0 && strncmp(be->base, "https://", 8) != 0) {
    h_destroy(be);
    return kaun_error_set(err, KAUN_ECONFIG,
                          "backends.%s.url must start with http:// or https:// (it is '%s')",
                          instance, kaun_options_get(opts, "url"));
  }
  kaun_http_options ho = {.struct_size = sizeof ho};
  ho.ca_file = kaun_options_get(opts, "ca_file");
  ho.insecure_skip_tls_verify = kaun_options_get_bool(opts, "insecure_skip_tls_verify", 0);
  ho.max_attempts = (unsigned)kaun_options_get_int(opts, "max_attempts", 5);
  ho.retry_base_ms = (long)kaun_options_get_int(opts, "retry_base_ms", 250);
  ho.retry_max_ms = (long)kaun_options_get_int(opts, "retry_max_ms", 30000);
  ho.connect_timeout_ms = (long)kaun_options_get_int(opts, "connect_timeout_ms", 10000);
  ho.stall_ms = (long)kaun_options_get_int(opts, "stall_ms", 30000);
  int rc = kaun_http_new(&ho, &be->http, err);
  if (rc) {
    h_destroy(be);
    return rc;
  }
  *out = be;
  return KAUN_OK;
}

/* The URL of `path`: the base URL and the path, or SCHEME://PATH. */
static char *url_of(const backend *be, const char *path) {
  const char *base = be->base ? be->base : be->name;
  const char *sep = be->base ? (base[strlen(base) - 1] == '/' || !*path ? "" : "/") : "://";
  while (be->base && *path == '/') path++;
  size_t n = strlen(base) + strlen(sep) + strlen(path) + 1;
  char *url = malloc(n);
  if (url) snprintf(url, n, "%s%s%s", base, sep, path);
  return url;
}

static void h_close(void *o) {
  object *obj = o;
  if (!obj) return;
  pthread_mutex_destroy(&obj->lock);
  free(obj->url);
  free(obj->uri);
  free(obj);
}

/* Fills `req` with what every request of this backend carries. */
static void base_request(const object *o, kaun_http_request *req, kaun_http_method m, kaun_io *io) {
  memset(req, 0, sizeof *req);
  req->struct_size = sizeof *req;
  req->method = m;
  req->url = o->url;
  req->io = io;
  req->progress_uri = o->uri;
}

/* Sets up the Authorization value for a request (the token is kept raw). */
static const char *bearer(const backend *be, char *buf, size_t size) {
  if (!be->token) return NULL;
  snprintf(buf, size, "Bearer %s", be->token);
  return buf;
}

static int fetch_locked(object *o, kaun_io *io, kaun_error *err);

static int h_open(void *b, const char *path, kaun_object *inner, void **out, kaun_error *err) {
  (void)inner;
  backend *be = b;
  size_t plen = strlen(path);
  if (plen == 0 || path[plen - 1] == '/' || (!be->base && !strchr(path, '/')))
    return kaun_error_set(err, KAUN_EISDIR, "%s://%s names a folder, not an object", be->name,
                          path);
  object *o = calloc(1, sizeof *o);
  if (!o) return kaun_error_set(err, KAUN_ENOMEM, "http: out of memory");
  o->be = be;
  pthread_mutex_init(&o->lock, NULL);
  atomic_init(&o->no_ranges, 0);
  o->url = url_of(be, path);
  size_t n = strlen(be->name) + strlen(path) + 4;
  o->uri = malloc(n);
  if (!o->url || !o->uri) {
    h_close(o);
    return kaun_error_set(err, KAUN_ENOMEM, "http: out of memory");
  }
  snprintf(o->uri, n, "%s://%s", be->name, path);
  /* messages name it without a password or a query (a signature) */
  kaun_http_redact_url(o->uri, o->uri, n);
  char auth[4096];
  kaun_http_request req;
  base_request(o, &req, KAUN_HTTP_HEAD, NULL);
  req.authorization = bearer(be, auth, sizeof auth);
  kaun_http_response *resp = NULL;
  int rc = kaun_http_perform(be->http, &req, &resp, err);
  memset(auth, 0, sizeof auth);
  if (rc == KAUN_EAUTH && err) { /* say how to give credentials */
    char why[KAUN_ERROR_MESSAGE_MAX];
    long status = err->http_status;
    snprintf(why, sizeof why, "%s", err->message);
    if (be->token)
      kaun_error_set(err, rc, "%s (the token was refused: check backends.%s.token)", why, be->name);
    else if (be->base)
      kaun_error_set(err, rc, "%s (set a bearer token as backends.%s.token)", why, be->name);
    else
      kaun_error_set(err, rc,
                     "%s (a bare URL carries no credentials: configure a backend with "
                     "\"plugin\": \"http\", \"url\" and \"token\")",
                     why);
    err->http_status = status;
  }
  if (!rc) {
    int64_t size = kaun_http_response_content_length(resp);
    const char *etag = kaun_http_response_header(resp, "ETag");
    if (size < 0)
      rc = kaun_error_set(err, KAUN_EIO, "%s: the server gave no Content-Length for it", o->uri);
    o->size = (uint64_t)(size < 0 ? 0 : size);
    if (etag) snprintf(o->etag, sizeof o->etag, "%s", etag);
  }
  kaun_http_response_free(resp);
  if (rc) {
    h_close(o);
    return rc;
  }
  *out = o;
  return KAUN_OK;
}

static int h_stat(void *ob, kaun_stat *st, kaun_error *err) {
  (void)err;
  object *o = ob;
  st->size = o->size;
  st->mtime = o->mtime;
  pthread_mutex_lock(&o->lock);
  snprintf(st->local_path, sizeof st->local_path, "%s", o->local);
  pthread_mutex_unlock(&o->lock);
  kaun_http_etag_value(o->etag, st->etag, sizeof st->etag);
  return KAUN_OK;
}

/* Reads from the cache entry (an object fetched before). */
static int read_local(object *o, const char *local, uint64_t offset, void *dst, size_t len,
                      kaun_io *io, kaun_error *err) {
  int fd = open(local, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return kaun_error_set(err, KAUN_EIO, "%s: cannot open its cache entry %s", o->uri, local);
  size_t done = 0;
  while (done < len) {
    ssize_t n = pread(fd, (char *)dst + done, len - done, (off_t)(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += (size_t)n;
  }
  close(fd);
  if (done < len)
    return kaun_error_set(err, KAUN_EIO, "%s: its cache entry %s is short", o->uri, local);
  if (kaun_io_add(io, o->uri, o->size, len) == KAUN_ECANCELED)
    return kaun_error_set(err, KAUN_ECANCELED, "%s: canceled", o->uri);
  return KAUN_OK;
}

static int h_read_io(void *ob, uint64_t offset, void *dst, size_t len, kaun_io *io,
                     kaun_error *err) {
  object *o = ob;
  if (offset > o->size || len > o->size - offset)
    return kaun_error_set(err, KAUN_EIO, "%s: bytes %llu..%llu are past its end (%llu bytes)",
                          o->uri, (unsigned long long)offset, (unsigned long long)(offset + len),
                          (unsigned long long)o->size);
  char local[sizeof o->local];
  pthread_mutex_lock(&o->lock);
  memcpy(local, o->local, sizeof local);
  pthread_mutex_unlock(&o->lock);
  if (!local[0] && atomic_load(&o->no_ranges)) {
    /* the server ignores Range: one download into the cache, then local
     * reads (else every read would stream the object from its start) */
    pthread_mutex_lock(&o->lock);
    int rc = fetch_locked(o, io, err);
    memcpy(local, o->local, sizeof local);
    pthread_mutex_unlock(&o->lock);
    if (rc) return rc;
  }
  if (local[0]) return read_local(o, local, offset, dst, len, io, err);
  char auth[4096], if_match[300];
  const char *headers[] = {if_match, NULL};
  snprintf(if_match, sizeof if_match, "If-Match: %s", o->etag);
  kaun_http_request req;
  base_request(o, &req, KAUN_HTTP_GET, io);
  req.authorization = bearer(o->be, auth, sizeof auth);
  if (o->etag[0] && strncmp(o->etag, "W/", 2) != 0) req.headers = headers; /* a 412: changed */
  req.range_offset = offset;
  req.range_length = len;
  req.body_to = KAUN_HTTP_BODY_BUFFER;
  req.buffer = dst;
  req.buffer_size = len;
  kaun_http_response *resp = NULL;
  int rc = kaun_http_perform(o->be->http, &req, &resp, err);
  memset(auth, 0, sizeof auth);
  if (!rc && kaun_http_response_status(resp) == 200 && len < o->size)
    atomic_store(&o->no_ranges, 1);
  if (rc == KAUN_ECHANGED)
    rc = kaun_error_set(err, KAUN_ECHANGED,
                        "%s changed while it was being read (its ETag is no longer %s): load it "
                        "again",
                        o->uri, o->etag);
  if (!rc && o->etag[0]) {
    const char *now = kaun_http_response_header(resp, "ETag");
    if (now && strcmp(now, o->etag) != 0)
      rc = kaun_error_set(err, KAUN_ECHANGED,
                          "%s changed while it was being read (ETag %s, now %s): load it again",
                          o->uri, o->etag, now);
  }
  kaun_http_response_free(resp);
  return rc;
}

static int h_read(void *ob, uint64_t offset, void *dst, size_t len, kaun_error *err) {
  return h_read_io(ob, offset, dst, len, NULL, err);
}

/* A request on `path` without a response body: PUT (with `src`), DELETE. */
static int bodiless(backend *be, const char *path, kaun_http_method m, const kaun_put_source *src,
                    kaun_io *io, kaun_error *err) {
  object o = {.be = be, .url = url_of(be, path)};
  if (!o.url) return kaun_error_set(err, KAUN_ENOMEM, "http: out of memory");
  char auth[4096];
  kaun_http_request req;
  base_request(&o, &req, m, io);
  req.progress_uri = NULL;
  req.authorization = bearer(be, auth, sizeof auth);
  req.body_source = src;
  int rc = kaun_http_perform(be->http, &req, NULL, err);
  memset(auth, 0, sizeof auth);
  free(o.url);
  return rc;
}

static int h_put_io(void *b, const char *path, const kaun_put_source *src, kaun_io *io,
                    kaun_error *err) {
  return bodiless(b, path, KAUN_HTTP_PUT, src, io, err);
}

static int h_put(void *b, const char *path, const kaun_put_source *src, kaun_error *err) {
  return bodiless(b, path, KAUN_HTTP_PUT, src, NULL, err);
}

static int h_remove(void *b, const char *path, kaun_error *err) {
  return bodiless(b, path, KAUN_HTTP_DELETE, NULL, NULL, err);
}

/* ---- fetch: the shared cache ---------------------------------------------------- */

typedef struct fill_ctx {
  object *o;
  kaun_io *io;
} fill_ctx;

/* The object's bytes into the entry: exactly `size` of them (the writer
 * refuses more, so a lying server cannot fill the disk), of the version
 * the open saw (If-Match, and its ETag checked), or nothing is kept. */
static int fill(kaun_cache_writer *w, void *user, kaun_error *err) {
  kaun_cache_writer_set_io(w, NULL); /* progress rides on the GET */
  fill_ctx *f = user;
  object *o = f->o;
  char auth[4096], if_match[300];
  const char *headers[] = {if_match, NULL};
  snprintf(if_match, sizeof if_match, "If-Match: %s", o->etag);
  kaun_http_request req;
  base_request(o, &req, KAUN_HTTP_GET, f->io);
  req.authorization = bearer(o->be, auth, sizeof auth);
  if (o->etag[0] && strncmp(o->etag, "W/", 2) != 0) req.headers = headers;
  if (o->size) { /* a checked range: never more than the object */
    req.range_offset = 0;
    req.range_length = o->size;
  }
  req.body_to = KAUN_HTTP_BODY_CALLBACK;
  req.write_fn = kaun_cache_writer_sink;
  req.write_user = w;
  kaun_http_response *resp = NULL;
  int rc = kaun_http_perform(o->be->http, &req, &resp, err);
  memset(auth, 0, sizeof auth);
  const char *now = rc ? NULL : kaun_http_response_header(resp, "ETag");
  if (!rc && o->etag[0] && now && strcmp(now, o->etag) != 0)
    rc = kaun_error_set(err, KAUN_ECHANGED,
                        "%s changed while it was downloaded (ETag %s, now %s): nothing was cached",
                        o->uri, o->etag, now);
  else if (rc == KAUN_ECHANGED)
    rc = kaun_error_set(err, KAUN_ECHANGED,
                        "%s changed while it was downloaded (its ETag is no longer %s): nothing "
                        "was cached",
                        o->uri, o->etag);
  kaun_http_response_free(resp);
  return rc;
}

/* The cache entry and lock of this version of the object. */
static int entry_paths(object *o, char *final_path, size_t fsize, char *lock_path, size_t lsize,
                       kaun_error *err) {
  char dir[4096], key_text[8192], key[KAUN_SHA256_HEX_SIZE];
  int rc = kaun_cache_dir(o->be->ctx, "kaun/http", dir, sizeof dir, err);
  if (rc) return rc;
  /* an entry never changes meaning: its key is the URL and the version */
  snprintf(key_text, sizeof key_text, "%s\n%s\n%llu", o->url, o->etag, (unsigned long long)o->size);
  if ((rc = kaun_sha256_hex(key_text, strlen(key_text), key, err))) return rc;
  snprintf(final_path, fsize, "%s/%s", dir, key);
  snprintf(lock_path, lsize, "%s/.locks/%s.lock", dir, key);
  return KAUN_OK;
}

/* Downloads the object into the cache (once) and records the entry in
 * o->local; the caller holds o->lock. */
static int fetch_locked(object *o, kaun_io *io, kaun_error *err) {
  if (o->local[0]) return KAUN_OK;
  char final_path[4300], lock_path[4400];
  int rc = entry_paths(o, final_path, sizeof final_path, lock_path, sizeof lock_path, err);
  if (rc) return rc;
  if (strlen(final_path) >= sizeof o->local)
    return kaun_error_set(err, KAUN_EINVAL, "%s: the cache path %s is too long", o->uri,
                          final_path);
  /* progress and cancel ride on the GET (the HTTP layer reports the body):
   * the cache writer reports nothing (fill says so), or every byte would
   * count twice; the io still cancels a wait for the entry's lock */
  fill_ctx f = {o, io};
  rc = kaun_cache_get_or_fill(final_path, lock_path, o->size, KAUN_CACHE_HASH_NONE, NULL,
                              KAUN_CACHE_LOCK_WAIT_MS, fill, &f, io, o->uri, err);
  if (!rc) memcpy(o->local, final_path, strlen(final_path) + 1);
  return rc;
}

static int h_fetch_io(void *ob, char *path_out, size_t path_size, kaun_io *io, kaun_error *err) {
  object *o = ob;
  pthread_mutex_lock(&o->lock);
  int rc = fetch_locked(o, io, err);
  if (!rc && strlen(o->local) >= path_size)
    rc = kaun_error_set(err, KAUN_EINVAL, "%s: the cache path does not fit in %zu bytes", o->uri,
                        path_size);
  if (!rc) memcpy(path_out, o->local, strlen(o->local) + 1);
  pthread_mutex_unlock(&o->lock);
  return rc;
}

static int h_fetch(void *ob, char *path_out, size_t path_size, kaun_error *err) {
  return h_fetch_io(ob, path_out, path_size, NULL, err);
}

static const kaun_plugin http_plugin = {
    .abi_major = KAUN_PLUGIN_ABI_MAJOR,
    .abi_minor = KAUN_PLUGIN_ABI_MINOR,
    .struct_size = sizeof(kaun_plugin),
    .name = "http",
    .version = "1.0",
    .description = "objects on any HTTP server that honours Range",
    .options = options,
    .capabilities = KAUN_CAP_READ | KAUN_CAP_PUT | KAUN_CAP_REMOVE | KAUN_CAP_FETCH,
    .create = h_create,
    .destroy = h_destroy,
    .open = h_open,
    .close = h_close,
    .stat = h_stat,
    .read = h_read,
    .put = h_put,
    .remove = h_remove,
    .fetch = h_fetch,
    .read_io = h_read_io,
    .fetch_io = h_fetch_io,
    .put_io = h_put_io,
    .read_chunk = (uint64_t)8 << 20,
    .read_inflight = 16,
};

KAUN_PLUGIN_DEFINE(http_plugin)
