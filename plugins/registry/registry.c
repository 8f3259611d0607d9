/* registry: an in-house model registry as a kaun plugin — the extension
 * story, and a useful one.
 *
 *   registry://NAME[@VERSION][/PATH]
 *
 * resolves through an index, a JSON document at any URI (option `index`):
 *
 *   {"bert": {"1.2":  {"model.safetensors": {"uri": "s3://weights/bert-1.2.st",
 *                                             "sha256": "9f2c..."}},
 *             "1.10": {...}}}
 *
 * Without a version the latest is used (versions compare numerically,
 * component by component: 1.10 > 1.9).  Without a PATH the URI names a
 * folder, so kaun looks for model.safetensors, then the sharded index, in
 * it.  The sha256, when given, is verified when an object is opened
 * (option `verify`, default true).  The files themselves can live on any
 * backend kaun has.
 *
 * This plugin uses only <kaun/plugin.h> (and json-c for the index). */
#include <kaun/hash.h>
#include <kaun/plugin.h>

#include <json-c/json.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct registry {
  kaun_context *ctx;
  char *name;
  char *index_uri;
  int verify;
  pthread_mutex_t lock;
  json_object *index; /* loaded on first open */
} registry;

typedef struct entry {
  kaun_object *inner;
  char uri[1024];
} entry;

static const kaun_option_spec options[] = {
    {"index", KAUN_OPTION_STRING, NULL, 1, 0,
     "the URI of the registry's JSON index (name -> version -> file -> {uri, sha256})"},
    {"verify", KAUN_OPTION_BOOL, "true", 0, 0, "check each file's sha256 when it is opened"},
    {NULL, 0, NULL, 0, 0, NULL}};

static int r_create(kaun_context *ctx, const char *instance, const kaun_options *opts, void **out,
                    kaun_error *err) {
  registry *r = calloc(1, sizeof *r);
  if (!r) return kaun_error_set(err, KAUN_ENOMEM, "registry: out of memory");
  r->ctx = ctx;
  r->name = strdup(instance);
  r->index_uri = strdup(kaun_options_get(opts, "index"));
  r->verify = kaun_options_get_bool(opts, "verify", 1);
  pthread_mutex_init(&r->lock, NULL);
  if (!r->name || !r->index_uri) {
    free(r->name);
    free(r->index_uri);
    free(r);
    return kaun_error_set(err, KAUN_ENOMEM, "registry: out of memory");
  }
  *out = r;
  return KAUN_OK;
}

static void r_destroy(void *be) {
  registry *r = be;
  if (r->index) json_object_put(r->index);
  pthread_mutex_destroy(&r->lock);
  free(r->name);
  free(r->index_uri);
  free(r);
}

/* Loads the index once.  It is read without holding the lock: the index
 * may be served through another backend, even this one or a registry that
 * refers back to it (a cycle the core reports), and no lock may be held
 * while another URI opens.  Two threads loading at once both read it; the
 * first to finish publishes its copy, the other discards its own. */
static int load_index(registry *r, kaun_error *err) {
  pthread_mutex_lock(&r->lock);
  int loaded = r->index != NULL;
  pthread_mutex_unlock(&r->lock);
  if (loaded) return KAUN_OK;
  char *text;
  size_t len;
  int rc = kaun_storage_read_all(r->ctx, r->index_uri, 64u << 20, &text, &len, err);
  if (rc) return rc;
  json_tokener *tok = json_tokener_new();
  if (!tok) {
    free(text);
    return kaun_error_set(err, KAUN_ENOMEM, "registry: out of memory");
  }
  json_object *doc = json_tokener_parse_ex(tok, text, (int)len);
  enum json_tokener_error jerr = json_tokener_get_error(tok);
  if (!doc || jerr != json_tokener_success || !json_object_is_type(doc, json_type_object)) {
    rc = kaun_error_set(
        err, KAUN_EINVAL, "registry '%s': the index %s is not a JSON object of models (%s)",
        r->name, r->index_uri,
        jerr != json_tokener_success ? json_tokener_error_desc(jerr) : "wrong shape");
    if (doc) json_object_put(doc);
    doc = NULL;
  }
  json_tokener_free(tok);
  free(text);
  if (rc) return rc;
  pthread_mutex_lock(&r->lock);
  if (!r->index) {
    r->index = doc; /* published once, never changed: read without the lock after */
    doc = NULL;
  }
  pthread_mutex_unlock(&r->lock);
  if (doc) json_object_put(doc); /* another thread published first */
  return KAUN_OK;
}

/* Compares dotted versions numerically ("1.10" > "1.9"). */
static int version_cmp(const char *a, const char *b) {
  while (*a || *b) {
    char *ea, *eb;
    unsigned long x = strtoul(a, &ea, 10), y = strtoul(b, &eb, 10);
    if (x != y) return x < y ? -1 : 1;
    if (ea == a || eb == b) return strcmp(a, b); /* not numeric: text order */
    a = *ea == '.' ? ea + 1 : ea;
    b = *eb == '.' ? eb + 1 : eb;
  }
  return 0;
}

static void list_keys(json_object *o, char *out, size_t size) {
  size_t n = 0;
  out[0] = '\0';
  json_object_object_foreach(o, key, val) {
    (void)val;
    int w = snprintf(out + n, size - n, "%s%s", n ? ", " : "", key);
    if (w < 0 || (size_t)w >= size - n) break;
    n += (size_t)w;
  }
}

/* Hashes the inner object with bounded memory: through its mapping when
 * its backend maps, else in 8 MiB reads. */
static int sha256_of(kaun_object *inner, char got[KAUN_SHA256_HEX_SIZE], kaun_error *err) {
  kaun_stat st = {.struct_size = sizeof st};
  int rc = kaun_object_stat(inner, &st, err);
  if (rc) return rc;
  kaun_buffer *map = NULL;
  kaun_error ignored = KAUN_ERROR_INIT;
  if (kaun_object_map_range(inner, 0, st.size, &map, &ignored) == KAUN_OK) {
    rc = kaun_sha256_hex(kaun_buffer_data(map), kaun_buffer_size(map), got, err);
    kaun_buffer_unref(map);
    return rc;
  }
  enum { CHUNK = 8 << 20 };
  unsigned char *buf = malloc(CHUNK);
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  if (!buf || !md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1)
    rc = kaun_error_set(err, KAUN_ENOMEM, "registry: out of memory hashing");
  for (uint64_t off = 0; !rc && off < st.size; off += CHUNK) {
    size_t n = st.size - off < CHUNK ? (size_t)(st.size - off) : CHUNK;
    if (!(rc = kaun_object_read(inner, off, buf, n, err)) && EVP_DigestUpdate(md, buf, n) != 1)
      rc = kaun_error_set(err, KAUN_ENOMEM, "registry: hashing failed");
  }
  unsigned char digest[32];
  unsigned len = 0;
  if (!rc && EVP_DigestFinal_ex(md, digest, &len) != 1)
    rc = kaun_error_set(err, KAUN_ENOMEM, "registry: hashing failed");
  for (unsigned i = 0; !rc && i < 32; i++) snprintf(got + 2 * i, 3, "%02x", digest[i]);
  EVP_MD_CTX_free(md);
  free(buf);
  return rc;
}

static int sha256_check(registry *r, entry *e, const char *path, const char *want,
                        kaun_error *err) {
  char got[KAUN_SHA256_HEX_SIZE];
  int rc = sha256_of(e->inner, got, err);
  if (rc) return rc;
  if (strcmp(got, want) != 0)
    return kaun_error_set(err, KAUN_ECHECKSUM,
                          "%s://%s: the sha256 of %s is %s, but the registry's index says %s; "
                          "the file was changed or corrupted",
                          r->name, path, e->uri, got, want);
  return KAUN_OK;
}

static int r_open(void *be, const char *path, kaun_object *inner, void **out, kaun_error *err) {
  (void)inner;
  registry *r = be;
  int rc = load_index(r, err);
  if (rc) return rc;
  /* NAME[@VERSION][/PATH] */
  char name[256], version[128] = "", file[1024] = "";
  const char *slash = strchr(path, '/');
  size_t head = slash ? (size_t)(slash - path) : strlen(path);
  const char *at = memchr(path, '@', head);
  size_t nlen = at ? (size_t)(at - path) : head;
  if (nlen == 0 || nlen >= sizeof name)
    return kaun_error_set(err, KAUN_EURI, "%s://%s: want %s://NAME[@VERSION][/PATH]", r->name, path,
                          r->name);
  memcpy(name, path, nlen);
  name[nlen] = '\0';
  if (at) snprintf(version, sizeof version, "%.*s", (int)(head - nlen - 1), at + 1);
  if (slash) snprintf(file, sizeof file, "%s", slash + 1);
  char known[512];
  json_object *model, *ver = NULL, *files, *item, *uri, *sha;
  if (!json_object_object_get_ex(r->index, name, &model) ||
      !json_object_is_type(model, json_type_object)) {
    list_keys(r->index, known, sizeof known);
    return kaun_error_set(err, KAUN_ENOENT, "%s://%s: no model '%s' in %s (it has: %s)", r->name,
                          path, name, r->index_uri, known);
  }
  if (!*version) { /* the latest */
    const char *best = NULL;
    json_object_object_foreach(model, key, val) {
      (void)val;
      if (!best || version_cmp(key, best) > 0) best = key;
    }
    if (!best)
      return kaun_error_set(err, KAUN_ENOENT, "%s://%s: model '%s' has no versions", r->name, path,
                            name);
    snprintf(version, sizeof version, "%s", best);
  }
  if (!json_object_object_get_ex(model, version, &ver) ||
      !json_object_is_type(ver, json_type_object)) {
    list_keys(model, known, sizeof known);
    return kaun_error_set(err, KAUN_ENOENT, "%s://%s: model '%s' has no version '%s' (it has: %s)",
                          r->name, path, name, version, known);
  }
  files = ver;
  if (!*file)
    return kaun_error_set(err, KAUN_EISDIR, "%s://%s is a model, a folder of files", r->name, path);
  if (!json_object_object_get_ex(files, file, &item) ||
      !json_object_object_get_ex(item, "uri", &uri) ||
      !json_object_is_type(uri, json_type_string)) {
    list_keys(files, known, sizeof known);
    return kaun_error_set(err, KAUN_ENOENT, "%s://%s: %s@%s has no file '%s' (it has: %s)", r->name,
                          path, name, version, file, known);
  }
  entry *e = calloc(1, sizeof *e);
  if (!e) return kaun_error_set(err, KAUN_ENOMEM, "registry: out of memory");
  snprintf(e->uri, sizeof e->uri, "%s", json_object_get_string(uri));
  rc = kaun_object_open(r->ctx, e->uri, &e->inner, err);
  if (!rc && r->verify && json_object_object_get_ex(item, "sha256", &sha))
    rc = sha256_check(r, e, path, json_object_get_string(sha), err);
  if (rc) {
    kaun_object_close(e->inner);
    free(e);
    return rc;
  }
  *out = e;
  return KAUN_OK;
}

static void r_close(void *obj) {
  entry *e = obj;
  kaun_object_close(e->inner);
  free(e);
}

static int r_stat(void *obj, kaun_stat *out, kaun_error *err) {
  entry *e = obj;
  return kaun_object_stat(e->inner, out, err);
}

static int r_read(void *obj, uint64_t off, void *dst, size_t len, kaun_error *err) {
  entry *e = obj;
  return kaun_object_read(e->inner, off, dst, len, err);
}

static int r_read_io(void *obj, uint64_t off, void *dst, size_t len, kaun_io *io, kaun_error *err) {
  entry *e = obj;
  return kaun_object_read_io(e->inner, off, dst, len, io, err);
}

/* The bytes through the inner object's own mapping (zero copy when the
 * file lives on a backend that maps; KAUN_ENOTSUP, "read instead", when
 * it does not). */
static int r_map_range(void *obj, uint64_t off, uint64_t len, const void **data, void **cookie,
                       kaun_error *err) {
  entry *e = obj;
  kaun_buffer *b = NULL;
  int rc = kaun_object_map_range(e->inner, off, len, &b, err);
  if (rc) return rc;
  *data = kaun_buffer_data(b);
  *cookie = b;
  return KAUN_OK;
}

static int r_map(void *obj, const void **data, size_t *size, void **cookie, kaun_error *err) {
  entry *e = obj;
  kaun_stat st = {.struct_size = sizeof st};
  int rc = kaun_object_stat(e->inner, &st, err);
  if (!rc) rc = r_map_range(obj, 0, st.size, data, cookie, err);
  if (!rc) *size = (size_t)st.size;
  return rc;
}

static void r_unmap(void *be, void *cookie) {
  (void)be;
  kaun_buffer_unref(cookie);
}

static const kaun_plugin descriptor = {
    .abi_major = KAUN_PLUGIN_ABI_MAJOR,
    .abi_minor = KAUN_PLUGIN_ABI_MINOR,
    .struct_size = sizeof(kaun_plugin),
    .name = "registry",
    .version = "1.0",
    .description = "an in-house model registry: names and versions resolved through an index",
    .options = options,
    .capabilities = KAUN_CAP_READ | KAUN_CAP_MAP,
    .read_io = r_read_io,
    .map_range = r_map_range,
    .create = r_create,
    .destroy = r_destroy,
    .open = r_open,
    .close = r_close,
    .stat = r_stat,
    .read = r_read,
    .map = r_map,
    .unmap = r_unmap,
};

KAUN_PLUGIN_DEFINE(descriptor)
