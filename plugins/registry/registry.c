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
 * Without a version the latest is used.  A version is numbers joined by
 * dots, optionally followed by "-" and a pre-release (dot-joined
 * identifiers of letters, digits and '-'): numbers compare by value, of
 * any length (1.10 > 1.9), missing ones count as 0, and a pre-release
 * sorts below its release (2.0-rc1 < 2.0; pre-releases compare as SemVer
 * says: numeric identifiers by value and below alphanumeric ones).  A
 * model with a key that is not a version is an index error, as are two
 * keys that are the same version (1.0 and 1).  Without a PATH the URI
 * names a folder, so kaun looks for model.safetensors, then the sharded
 * index, in it.  The sha256 (hex, either case), when given, is verified
 * when an object is opened (option `verify`, default true), and every
 * read and mapping after that checks that the object is still the version
 * that was hashed (its backend's etag: a file's inode, size, mtime and
 * ctime), so a file rewritten in place is KAUN_ECHANGED, not served (a
 * best effort: writes through another process's shared mapping change no
 * timestamp; see docs/design-notes.md).  No
 * name, version, path or URI is ever cut short.  The files themselves can
 * live on any backend kaun has.
 *
 * This plugin uses only <kaun/plugin.h> (and json-c for the index). */
#include <kaun/hash.h>
#include <kaun/plugin.h>

#include <json-c/json.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

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
  char *uri;
  char *label;  /* REGISTRY://PATH, for messages */
  int verified; /* a sha256 was checked: `etag` is the version hashed */
  char etag[256];
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

/* Versions (see the top).  Numbers are compared as digit strings, so no
 * length makes two of them tie. */
static int is_digit(char c) { return c >= '0' && c <= '9'; }
static int is_ident(char c) {
  return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-';
}

/* 1 when `v` is a version: N(.N)*(-ID(.ID)*)? */
static int version_valid(const char *v) {
  const char *p = v;
  do {
    if (!is_digit(*p)) return 0;
    while (is_digit(*p)) p++;
  } while (*p == '.' && *++p);
  if (!*p) return p[-1] != '.';
  if (*p != '-' || !*++p) return 0;
  do {
    if (!is_ident(*p)) return 0;
    while (is_ident(*p)) p++;
  } while (*p == '.' && *++p);
  return !*p && p[-1] != '.';
}

/* Compares the digit strings [a, a + na) and [b, b + nb) by value. */
static int number_cmp(const char *a, size_t na, const char *b, size_t nb) {
  while (na > 1 && *a == '0') a++, na--;
  while (nb > 1 && *b == '0') b++, nb--;
  if (na != nb) return na < nb ? -1 : 1;
  int c = memcmp(a, b, na);
  return c < 0 ? -1 : c > 0;
}

static size_t span(const char *p, int (*ok)(char)) {
  size_t n = 0;
  while (ok(p[n])) n++;
  return n;
}

/* Valid versions only: <0, 0 (the same version), >0. */
static int version_cmp(const char *a, const char *b) {
  /* the release: numbers, a missing one is 0 */
  while (*a && *a != '-' && *b && *b != '-') {
    size_t na = span(a, is_digit), nb = span(b, is_digit);
    int c = number_cmp(a, na, b, nb);
    if (c) return c;
    a += na + (a[na] == '.');
    b += nb + (b[nb] == '.');
  }
  for (; *a && *a != '-'; a += span(a, is_digit) + (a[span(a, is_digit)] == '.'))
    if (number_cmp(a, span(a, is_digit), "0", 1)) return 1;
  for (; *b && *b != '-'; b += span(b, is_digit) + (b[span(b, is_digit)] == '.'))
    if (number_cmp(b, span(b, is_digit), "0", 1)) return -1;
  /* a pre-release sorts below its release */
  if (!*a || !*b) return !*a && !*b ? 0 : !*a ? 1 : -1;
  a++, b++;
  while (*a && *b) {
    size_t na = span(a, is_ident), nb = span(b, is_ident);
    int da = span(a, is_digit) == na, db = span(b, is_digit) == nb, c;
    if (da && db)
      c = number_cmp(a, na, b, nb);
    else if (da != db)
      c = da ? -1 : 1; /* numeric identifiers below alphanumeric ones */
    else {
      c = memcmp(a, b, na < nb ? na : nb);
      c = c ? (c < 0 ? -1 : 1) : na == nb ? 0 : na < nb ? -1 : 1;
    }
    if (c) return c;
    a += na + (a[na] == '.');
    b += nb + (b[nb] == '.');
  }
  return !*a && !*b ? 0 : !*a ? -1 : 1; /* more identifiers sort higher */
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
static int sha256_of(kaun_object *inner, uint64_t size, char got[KAUN_SHA256_HEX_SIZE],
                     kaun_error *err) {
  kaun_buffer *map = NULL;
  kaun_error ignored = KAUN_ERROR_INIT;
  int rc = KAUN_OK;
  if (kaun_object_map_range(inner, 0, size, &map, &ignored) == KAUN_OK) {
    rc = kaun_sha256_hex(kaun_buffer_data(map), kaun_buffer_size(map), got, err);
    kaun_buffer_unref(map);
    return rc;
  }
  enum { CHUNK = 8 << 20 };
  unsigned char *buf = malloc(CHUNK);
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  if (!buf || !md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1)
    rc = kaun_error_set(err, KAUN_ENOMEM, "registry: out of memory hashing");
  for (uint64_t off = 0; !rc && off < size; off += CHUNK) {
    size_t n = size - off < CHUNK ? (size_t)(size - off) : CHUNK;
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

/* After a verified open: the inner object must still be the version that
 * was hashed (a file rewritten in place has another etag). */
static int recheck(const entry *e, kaun_error *err) {
  if (!e->verified) return KAUN_OK;
  kaun_stat st = {.struct_size = sizeof st};
  int rc = kaun_object_stat(e->inner, &st, err);
  if (rc) return rc;
  if (strcmp(st.etag, e->etag) != 0)
    return kaun_error_set(err, KAUN_ECHANGED,
                          "%s: %s changed after its sha256 was checked (version %s, now %s): "
                          "open it again",
                          e->label, e->uri, e->etag, st.etag);
  return KAUN_OK;
}

static int is_sha256(const char *s) {
  size_t n = 0;
  for (; s[n]; n++)
    if (!strchr("0123456789abcdefABCDEF", s[n])) return 0;
  return n == 64;
}

static int sha256_check(registry *r, entry *e, const char *want, kaun_error *err) {
  if (!is_sha256(want))
    return kaun_error_set(err, KAUN_EINDEX,
                          "%s: the sha256 the registry's index %s gives for %s is not 64 hex "
                          "digits: '%.80s'",
                          e->label, r->index_uri, e->uri, want);
  kaun_stat st = {.struct_size = sizeof st};
  int rc = kaun_object_stat(e->inner, &st, err);
  if (rc) return rc;
  /* the version hashed: what every later read is checked against */
  snprintf(e->etag, sizeof e->etag, "%s", st.etag);
  char got[KAUN_SHA256_HEX_SIZE];
  if ((rc = sha256_of(e->inner, st.size, got, err))) return rc;
  if (strcasecmp(got, want) != 0)
    return kaun_error_set(err, KAUN_ECHECKSUM,
                          "%s: the sha256 of %s is %s, but the registry's index says %s; "
                          "the file was changed or corrupted",
                          e->label, e->uri, got, want);
  e->verified = st.etag[0] != '\0';
  return recheck(e, err); /* not changed while it was hashed */
}

static void entry_free(entry *e) {
  if (!e) return;
  kaun_object_close(e->inner);
  free(e->uri);
  free(e->label);
  free(e);
}

/* Version order, then text order (a message naming two equal versions
 * names them the same way every time). */
static int cmp_versions(const void *a, const void *b) {
  const char *x = *(const char *const *)a, *y = *(const char *const *)b;
  int c = version_cmp(x, y);
  return c ? c : strcmp(x, y);
}

/* The versions of `model`, checked (every key a version, no two the same
 * version, whatever their order), and the latest in *latest. */
static int check_versions(registry *r, const char *label, const char *name, json_object *model,
                          const char **latest, kaun_error *err) {
  *latest = NULL;
  size_t n = 0, count = (size_t)json_object_object_length(model);
  const char **keys = calloc(count + 1, sizeof *keys);
  if (!keys) return kaun_error_set(err, KAUN_ENOMEM, "registry: out of memory");
  int rc = KAUN_OK;
  json_object_object_foreach(model, key, val) {
    (void)val;
    if (!rc && !version_valid(key))
      rc = kaun_error_set(err, KAUN_EINDEX,
                          "%s: the registry's index %s gives model '%s' a version '%.100s' "
                          "that is not one (want numbers joined by dots, optionally "
                          "-PRERELEASE: 1.10, 2.0-rc1; a URI without @VERSION already means "
                          "the greatest)",
                          label, r->index_uri, name, key);
    if (n < count) keys[n++] = key;
  }
  if (!rc) qsort(keys, n, sizeof *keys, cmp_versions);
  for (size_t i = 1; !rc && i < n; i++)
    if (version_cmp(keys[i - 1], keys[i]) == 0)
      rc = kaun_error_set(err, KAUN_EINDEX,
                          "%s: the registry's index %s gives model '%s' the versions '%.100s' "
                          "and '%.100s', which are the same version",
                          label, r->index_uri, name, keys[i - 1], keys[i]);
  if (!rc && n) *latest = keys[n - 1];
  free(keys);
  return rc;
}

/* Key-value pairs in `o` and everything inside it. */
static size_t count_pairs(json_object *o) {
  size_t n = 0;
  if (json_object_is_type(o, json_type_object)) {
    json_object_object_foreach(o, key, val) {
      (void)key;
      n += 1 + count_pairs(val);
    }
  } else if (json_object_is_type(o, json_type_array)) {
    for (size_t i = 0; i < json_object_array_length(o); i++)
      n += count_pairs(json_object_array_get_idx(o, i));
  }
  return n;
}

/* Name separators (':' outside strings) in JSON text: one per pair written. */
static size_t count_colons(const char *t, size_t len) {
  size_t n = 0;
  int in_string = 0;
  for (size_t i = 0; i < len; i++) {
    if (in_string) {
      if (t[i] == '\\')
        i++;
      else if (t[i] == '"')
        in_string = 0;
    } else if (t[i] == '"') {
      in_string = 1;
    } else if (t[i] == ':') {
      n++;
    }
  }
  return n;
}

/* The whole index, once, when it is read: every model an object of
 * versions (each key a version, no two the same), every version an object
 * of files, every file {"uri": an absolute URI or path, "sha256": 64 hex
 * digits (optional)} and nothing else.  A mistake anywhere fails every
 * open, naming the entry: a registry never serves from an index it had to
 * guess about. */
static int check_index(registry *r, json_object *doc, kaun_error *err) {
  char label[300];
  snprintf(label, sizeof label, "registry '%s'", r->name);
  json_object_object_foreach(doc, name, model) {
    const char *latest;
    if (!json_object_is_type(model, json_type_object))
      return kaun_error_set(err, KAUN_EINDEX,
                            "%s: the index %s gives model '%.100s' something that is not an "
                            "object of versions",
                            label, r->index_uri, name);
    int rc = check_versions(r, label, name, model, &latest, err);
    if (rc) return rc;
    json_object_object_foreach(model, version, files) {
      if (!json_object_is_type(files, json_type_object))
        return kaun_error_set(err, KAUN_EINDEX,
                              "%s: the index %s gives %.100s@%.100s something that is not an "
                              "object of files",
                              label, r->index_uri, name, version);
      json_object_object_foreach(files, file, item) {
        json_object *uri = NULL;
        if (!json_object_is_type(item, json_type_object) ||
            !json_object_object_get_ex(item, "uri", &uri) ||
            !json_object_is_type(uri, json_type_string))
          return kaun_error_set(err, KAUN_EINDEX,
                                "%s: the index %s gives %.100s@%.100s/%.200s no \"uri\" string "
                                "(want {\"uri\": URI, \"sha256\": HEX})",
                                label, r->index_uri, name, version, file);
        const char *u = json_object_get_string(uri);
        if (u[0] != '/' && !strstr(u, "://"))
          return kaun_error_set(err, KAUN_EINDEX,
                                "%s: the index %s gives %.100s@%.100s/%.200s the relative uri "
                                "'%.200s': give a URI (scheme://...) or an absolute path",
                                label, r->index_uri, name, version, file, u);
        json_object_object_foreach(item, key, val) {
          if (strcmp(key, "uri") == 0) continue;
          if (strcmp(key, "sha256") != 0)
            return kaun_error_set(err, KAUN_EINDEX,
                                  "%s: the index %s gives %.100s@%.100s/%.200s the unknown key "
                                  "'%.100s' (known: uri, sha256)",
                                  label, r->index_uri, name, version, file, key);
          if (!json_object_is_type(val, json_type_string) ||
              !is_sha256(json_object_get_string(val)))
            return kaun_error_set(err, KAUN_EINDEX,
                                  "%s: the index %s gives %.100s@%.100s/%.200s a sha256 that is "
                                  "not 64 hex digits: '%.80s'",
                                  label, r->index_uri, name, version, file,
                                  json_object_get_string(val));
        }
      }
    }
  }
  return KAUN_OK;
}

/* Loads the index once.  It is read without holding the lock: the index
 * may be served through another backend, even this one or a registry that
 * refers back to it (a cycle the core reports), and no lock may be held
 * while another URI opens.  Two threads loading at once both read it; the
 * first to finish publishes its copy, the other discards its own.  The
 * JSON is read strictly (no trailing commas or text after it; a key twice
 * in one object is refused: json-c would keep the last without a word). */
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
  json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
  json_object *doc = len <= INT32_MAX ? json_tokener_parse_ex(tok, text, (int)len) : NULL;
  enum json_tokener_error jerr = json_tokener_get_error(tok);
  size_t end = jerr == json_tokener_success ? json_tokener_get_parse_end(tok) : len;
  while (end < len && strchr(" \t\r\n", text[end])) end++;
  if (!doc || jerr != json_tokener_success || end != len ||
      !json_object_is_type(doc, json_type_object)) {
    rc = kaun_error_set(err, KAUN_EINDEX,
                        "registry '%s': the index %s is not a JSON object of models (%s)", r->name,
                        r->index_uri,
                        jerr != json_tokener_success ? json_tokener_error_desc(jerr)
                        : end != len                 ? "text after the JSON"
                                                     : "wrong shape");
  } else if (count_pairs(doc) != count_colons(text, len)) {
    rc = kaun_error_set(err, KAUN_EINDEX,
                        "registry '%s': the index %s has a key twice in one object (which one "
                        "would be served is a guess): make each key unique",
                        r->name, r->index_uri);
  } else {
    rc = check_index(r, doc, err);
  }
  if (rc && doc) {
    json_object_put(doc);
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

static int r_open(void *be, const char *path, kaun_object *inner, void **out, kaun_error *err) {
  (void)inner;
  registry *r = be;
  int rc = load_index(r, err);
  if (rc) return rc;
  entry *e = calloc(1, sizeof *e);
  size_t label_size = strlen(r->name) + strlen(path) + 4;
  if (!e || !(e->label = malloc(label_size))) {
    free(e);
    return kaun_error_set(err, KAUN_ENOMEM, "registry: out of memory");
  }
  snprintf(e->label, label_size, "%s://%s", r->name, path);
  /* NAME[@VERSION][/PATH], none of it cut short */
  const char *slash = strchr(path, '/');
  size_t head = slash ? (size_t)(slash - path) : strlen(path);
  const char *at = memchr(path, '@', head);
  size_t nlen = at ? (size_t)(at - path) : head;
  char *name = strndup(path, nlen);
  char *version = at ? strndup(at + 1, head - nlen - 1) : NULL;
  const char *file = slash ? slash + 1 : "";
  char known[512];
  json_object *model, *ver = NULL, *item, *uri, *sha;
  const char *latest = NULL;
  if (!name || (at && !version)) {
    rc = kaun_error_set(err, KAUN_ENOMEM, "registry: out of memory");
  } else if (nlen == 0 || (at && !*version)) {
    rc = kaun_error_set(err, KAUN_EURI, "%s: want %s://NAME[@VERSION][/PATH]", e->label, r->name);
  } else if (!json_object_object_get_ex(r->index, name, &model) ||
             !json_object_is_type(model, json_type_object)) {
    list_keys(r->index, known, sizeof known);
    rc = kaun_error_set(err, KAUN_ENOENT, "%s: no model '%s' in %s (it has: %s)", e->label, name,
                        r->index_uri, known);
  } else if (!(rc = check_versions(r, e->label, name, model, &latest, err))) {
    const char *v = version ? version : latest;
    if (!v) {
      rc = kaun_error_set(err, KAUN_ENOENT, "%s: model '%s' has no versions", e->label, name);
    } else if (!json_object_object_get_ex(model, v, &ver) ||
               !json_object_is_type(ver, json_type_object)) {
      list_keys(model, known, sizeof known);
      rc = kaun_error_set(err, KAUN_ENOENT, "%s: model '%s' has no version '%s' (it has: %s)",
                          e->label, name, v, known);
    } else if (!*file) {
      rc = kaun_error_set(err, KAUN_EISDIR, "%s is a model, a folder of files", e->label);
    } else if (!json_object_object_get_ex(ver, file, &item) ||
               !json_object_object_get_ex(item, "uri", &uri) ||
               !json_object_is_type(uri, json_type_string)) {
      list_keys(ver, known, sizeof known);
      rc = kaun_error_set(err, KAUN_ENOENT, "%s: %s@%s has no file '%s' (it has: %s)", e->label,
                          name, v, file, known);
    } else if (!(e->uri = strdup(json_object_get_string(uri)))) {
      rc = kaun_error_set(err, KAUN_ENOMEM, "registry: out of memory");
    } else {
      rc = kaun_object_open(r->ctx, e->uri, &e->inner, err);
      if (!rc && r->verify && json_object_object_get_ex(item, "sha256", &sha)) {
        if (!json_object_is_type(sha, json_type_string))
          rc = kaun_error_set(err, KAUN_EINDEX,
                              "%s: the sha256 the registry's index %s gives for %s is not a "
                              "string",
                              e->label, r->index_uri, e->uri);
        else
          rc = sha256_check(r, e, json_object_get_string(sha), err);
      }
    }
  }
  free(name);
  free(version);
  if (rc) {
    entry_free(e);
    return rc;
  }
  *out = e;
  return KAUN_OK;
}

static void r_close(void *obj) { entry_free(obj); }

static int r_stat(void *obj, kaun_stat *out, kaun_error *err) {
  entry *e = obj;
  return kaun_object_stat(e->inner, out, err);
}

/* Reads, then checks: the bytes given are those of the version hashed. */
static int r_read(void *obj, uint64_t off, void *dst, size_t len, kaun_error *err) {
  entry *e = obj;
  int rc = kaun_object_read(e->inner, off, dst, len, err);
  return rc ? rc : recheck(e, err);
}

static int r_read_io(void *obj, uint64_t off, void *dst, size_t len, kaun_io *io, kaun_error *err) {
  entry *e = obj;
  int rc = kaun_object_read_io(e->inner, off, dst, len, io, err);
  return rc ? rc : recheck(e, err);
}

/* The bytes through the inner object's own mapping (zero copy when the
 * file lives on a backend that maps; KAUN_ENOTSUP, "read instead", when
 * it does not), checked once mapped: a view follows the file as mappings
 * do, so a rewrite after this point shows in it (kaun's own saves never
 * rewrite a file in place). */
static int r_map_range(void *obj, uint64_t off, uint64_t len, const void **data, void **cookie,
                       kaun_error *err) {
  entry *e = obj;
  kaun_buffer *b = NULL;
  int rc = kaun_object_map_range(e->inner, off, len, &b, err);
  if (!rc && (rc = recheck(e, err))) kaun_buffer_unref(b);
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
