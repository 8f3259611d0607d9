/* The lazy reader: a checkpoint (file, index or folder, any backend) opened
 * by its headers alone; tensors, slices and many tensors at once read
 * straight into their final memory, or viewed in a mapping.  The loads of
 * checkpoint.c are built on it. */
#include "index.h"
#include "json.h"
#include "shards.h"
#include "storage_internal.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define INDEX_NAME "model.safetensors.index.json"
#define SINGLE_NAME "model.safetensors"
#define MAX_INDEX_BYTES (64u << 20)
#define MAX_THREADS 64
#define MAX_SHARDS 10000                           /* distinct shard files of one index */
#define MAX_SHARD_HEADER_BYTES ((uint64_t)1 << 30) /* header bytes read for them all */

typedef struct shard {
  char *uri;
  kaun_object *obj;
  kaun_safetensors *st;
  pthread_mutex_t lock; /* guards the mapping attempt */
  int map_state;        /* 0 untried, 1 mapped, -1 reads */
  kaun_buffer *map;     /* the whole object, when mapped */
  uint64_t chunk;
  unsigned inflight;
} shard;

typedef struct entry {
  size_t shard;
  size_t tensor;
} entry;

struct kaun_reader {
  kaun_context *own_ctx;
  kaun_context *ctx;
  char *uri;
  shard *shards;
  size_t nshards;
  entry *entries;
  char **names;
  size_t *name_lens; /* names may hold NUL bytes */
  size_t count;
  kaun__index index;
  kaun__json_doc *doc;
  /* a sharded checkpoint's index: its URI and the bytes read and validated
   * (whole-model copies write these, see kaun__reader_index) */
  char *index_uri;
  char *index_text;
  size_t index_len;
};

/* ---- opening -------------------------------------------------------------- */

/* Header reads of an object; those of an index's shards count against a
 * budget for them all (`left`; NULL: none). */
typedef struct header_source {
  kaun_object *obj;
  uint64_t *left;
  bool over; /* a read went past the budget */
} header_source;

static int object_read(void *source, uint64_t offset, void *dst, size_t len, kaun_error *err) {
  header_source *h = source;
  if (h->left && len > *h->left) {
    h->over = true;
    return kaun__error_set(err, KAUN_EINDEX, "its shards' headers add up to more than %u MiB",
                           (unsigned)(MAX_SHARD_HEADER_BYTES >> 20));
  }
  if (h->left) *h->left -= len;
  return kaun_object_read(h->obj, offset, dst, len, err);
}

/* Opens (or adopts `obj`) and reads one shard's header: ranged reads
 * only, within `budget` (may be NULL); *over tells a budget overrun. */
static int shard_open(kaun_context *ctx, shard *sh, kaun_object *obj, uint64_t *budget, bool *over,
                      kaun_error *err) {
  int rc = obj ? KAUN_OK : kaun_object_open(ctx, sh->uri, &obj, err);
  if (rc) return rc;
  sh->obj = obj;
  kaun_object_hints(obj, &sh->chunk, &sh->inflight);
  kaun_stat st = {.struct_size = sizeof st};
  if ((rc = kaun_object_stat(obj, &st, err))) return rc;
  header_source h = {obj, budget, false};
  rc = kaun__safetensors_read_via(object_read, &h, st.size, sh->uri, &sh->st, err);
  if (over) *over = h.over;
  return rc;
}

/* The shard's mapping, tried once: NULL means "read instead". */
static kaun_buffer *shard_map(shard *sh) {
  pthread_mutex_lock(&sh->lock);
  if (sh->map_state == 0) {
    kaun_error ignored = KAUN_ERROR_INIT;
    uint64_t size = kaun_safetensors_file_size(sh->st);
    sh->map_state = kaun_object_map_range(sh->obj, 0, size, &sh->map, &ignored) == KAUN_OK ? 1 : -1;
    kaun_stat st = {.struct_size = sizeof st};
    if (sh->map_state < 0 && kaun_object_stat(sh->obj, &st, &ignored) == KAUN_OK &&
        st.local_path[0] && st.size == size &&
        kaun_buffer_map_file(st.local_path, &sh->map, &ignored) == KAUN_OK) {
      /* a remote object with a local copy (a cache entry it was fetched
       * into): views of that file, as for a local one */
      if (kaun_buffer_size(sh->map) == size) {
        sh->map_state = 1;
      } else {
        kaun_buffer_unref(sh->map);
        sh->map = NULL;
      }
    }
  }
  kaun_buffer *m = sh->map;
  pthread_mutex_unlock(&sh->lock);
  return m;
}

/* "BASE/NAME" for a URI or path (a stacked URI joins on its left side). */
static char *join_uri(const char *base, size_t base_len, const char *name, const char *tail) {
  size_t n = base_len + strlen(name) + strlen(tail) + 2;
  char *p = malloc(n);
  if (p)
    snprintf(p, n, "%.*s%s%s%s", (int)base_len, base,
             base_len && base[base_len - 1] == '/' ? "" : "/", name, tail);
  return p;
}

char *kaun__child_uri(const char *uri, const char *name) {
  const char *chain = kaun__stack_chain(uri);
  size_t left = chain ? (size_t)(chain - uri) : strlen(uri);
  return join_uri(uri, left, name, chain ? chain : "");
}

/* The URI of `name` beside the object at `uri`. */
static char *sibling_uri(const char *uri, const char *name) {
  const char *chain = kaun__stack_chain(uri);
  size_t left = chain ? (size_t)(chain - uri) : strlen(uri);
  const char *scheme_end = strstr(uri, "://");
  size_t floor = scheme_end && scheme_end < uri + left ? (size_t)(scheme_end - uri) + 3 : 0;
  size_t dir = left;
  while (dir > floor && uri[dir - 1] != '/') dir--;
  if (dir == 0) return join_uri(".", 1, name, chain ? chain : "");
  return join_uri(uri, dir, name, chain ? chain : "");
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A shard named by URI ("SCHEME://..."): followed only where the config
 * allows it (see open_index). */
static bool is_uri(const char *s) {
  const char *sep = strstr(s, "://"), *slash = strchr(s, '/');
  return sep && sep > s && (!slash || slash > sep);
}

/* A shard that is a file beside the index, normalised into `out` (room
 * for strlen(s) + 1): "." components dropped; false when it is not one:
 * absolute, an empty or ".." component, "::" (which would stack the
 * index's URI on another object), or a character a server could decode
 * into another name or read as the end of the path ('%', '?', '#', '\\',
 * control characters). */
static bool shard_name(const char *s, char *out) {
  if (!*s || s[0] == '/' || strstr(s, "::")) return false;
  for (const unsigned char *c = (const unsigned char *)s; *c; c++)
    if (*c < 0x20 || *c == 0x7f || *c == '%' || *c == '?' || *c == '#' || *c == '\\') return false;
  size_t o = 0;
  for (const char *p = s; *p;) {
    const char *slash = strchr(p, '/');
    size_t n = slash ? (size_t)(slash - p) : strlen(p);
    if (n == 0 || (n == 2 && p[0] == '.' && p[1] == '.')) return false;
    if (!(n == 1 && p[0] == '.')) {
      if (o) out[o++] = '/';
      memcpy(out + o, p, n);
      o += n;
    }
    if (!slash) break;
    p = slash + 1;
  }
  out[o] = '\0';
  return o > 0;
}

static int add_entry(kaun_reader *r, size_t s, size_t t, size_t cap, kaun_error *err) {
  kaun_safetensors_info in;
  kaun_safetensors_info_at(r->shards[s].st, t, &in);
  if (r->count >= cap) return kaun__error_set(err, KAUN_EINDEX, "%s: too many tensors", r->uri);
  if (!r->name_lens && !(r->name_lens = calloc(cap + 1, sizeof *r->name_lens)))
    return kaun__error_nomem(err, "opening a checkpoint");
  r->entries[r->count] = (entry){s, t};
  r->names[r->count] = (char *)in.name;
  r->name_lens[r->count] = kaun_safetensors_name_length(r->shards[s].st, t);
  r->count++;
  if (!kaun__index_add_n(&r->index, r->names, r->name_lens, r->count, r->count - 1))
    return kaun__error_nomem(err, "opening a checkpoint");
  return KAUN_OK;
}

static shard *new_shards(size_t n) {
  shard *s = calloc(n ? n : 1, sizeof *s);
  for (size_t i = 0; s && i < n; i++) pthread_mutex_init(&s[i].lock, NULL);
  return s;
}

/* The whole index object, NUL-terminated; closes `obj`. */
static int read_index(kaun_object *obj, const char *index_uri, char **text, size_t *len,
                      kaun_error *err) {
  kaun_stat st = {.struct_size = sizeof st};
  int rc = kaun_object_stat(obj, &st, err);
  if (!rc && st.size > MAX_INDEX_BYTES)
    rc =
        kaun__error_set(err, KAUN_EINDEX, "%s is %llu bytes, more than the %u allowed for an index",
                        index_uri, (unsigned long long)st.size, MAX_INDEX_BYTES);
  if (!rc && !(*text = malloc((size_t)st.size + 1)))
    rc = kaun__error_nomem(err, "reading a sharded index");
  if (!rc && (rc = kaun_object_read(obj, 0, *text, (size_t)st.size, err))) {
    free(*text);
    *text = NULL;
  }
  kaun_object_close(obj);
  if (rc) return rc;
  (*text)[st.size] = '\0';
  *len = (size_t)st.size;
  return KAUN_OK;
}

/* A distinct shard name, the URI it resolves to and the shard it is. */
typedef struct shard_ref {
  char *uri;
  size_t at;    /* its place among the names, sorted */
  size_t first; /* the place of the first name with the same URI */
  size_t shard;
} shard_ref;

static int cmp_ref_uri(const void *a, const void *b) {
  const shard_ref *x = a, *y = b;
  int c = strcmp(x->uri, y->uri);
  return c ? c : (x->at > y->at) - (x->at < y->at);
}

static int cmp_ref_at(const void *a, const void *b) {
  const shard_ref *x = a, *y = b;
  return (x->at > y->at) - (x->at < y->at);
}

/* Reads the index at `index_uri` (`obj`, opened from it; closed here) and
 * opens its shards.  Shards are files beside the index; a shard named by
 * URI is followed only when the config allows it for the backend that
 * served the index (backends.NAME.index_shard_uris), else KAUN_EACCESS:
 * an index is untrusted input, and a URI would let its author make kaun
 * read any local file or bucket with the user's credentials.  Names that
 * resolve to one object open it once, and the shards, their number and
 * their headers' bytes are bounded (MAX_SHARDS, MAX_SHARD_HEADER_BYTES). */
static int open_index(kaun_reader *r, const char *index_uri, kaun_object *obj, kaun_error *err) {
  char *text = NULL, **names = NULL, **sorted = NULL, *normal = NULL;
  size_t len, *wm_shard = NULL, distinct = 0;
  shard_ref *refs = NULL;
  char backend[256];
  snprintf(backend, sizeof backend, "%s", kaun__object_backend(obj));
  bool uris_allowed = kaun__index_shard_uris(r->ctx, backend);
  int rc = read_index(obj, index_uri, &text, &len, err);
  if (rc) return rc;
  rc = kaun__json_parse(text, len, index_uri, KAUN_EINDEX, &r->doc, err);
  if (rc == KAUN_EHEADER_UTF8 || rc == KAUN_EDUPLICATE) {
    rc = KAUN_EINDEX; /* the index is at fault, whatever the JSON rule */
    if (err) err->code = rc;
  }
  if (rc) goto done;
  kaun__json *wm = kaun__json_get(kaun__json_root(r->doc), "weight_map");
  if (!wm || wm->type != KAUN__JSON_OBJECT) {
    rc = kaun__error_set(err, KAUN_EINDEX,
                         "%s: there is no \"weight_map\" object mapping tensor names to shard "
                         "files",
                         index_uri);
    goto done;
  }
  names = calloc(wm->count + 1, sizeof *names);
  sorted = calloc(wm->count + 1, sizeof *sorted);
  wm_shard = calloc(wm->count + 1, sizeof *wm_shard);
  normal = malloc(len + 1); /* the names normalised: they fit in the index's text */
  if (!names || !sorted || !wm_shard || !normal) {
    rc = kaun__error_nomem(err, "reading a sharded index");
    goto done;
  }
  size_t i = 0, used = 0;
  for (kaun__json *m = wm->child; m; m = m->next, i++) {
    bool uri = m->type == KAUN__JSON_STRING && is_uri(m->text);
    if (uri && !uris_allowed) {
      const char *cfg = kaun_context_config_path(r->ctx);
      rc = kaun__error_set(err, KAUN_EACCESS,
                           "%s: line %u: the shard of tensor '%.200s%s' is the URI '%.300s%s', "
                           "which is not followed: an index served by the '%s' backend may name "
                           "only files beside it; set backends.%s.index_shard_uris to true in %s "
                           "to follow shard URIs",
                           index_uri, m->line, m->key, strlen(m->key) > 200 ? "..." : "", m->text,
                           m->text_len > 300 ? "..." : "", backend, backend,
                           cfg ? cfg : "a config file");
      goto done;
    }
    bool ok = m->type == KAUN__JSON_STRING && !memchr(m->text, '\0', m->text_len) &&
              used + m->text_len <= len && (uri || shard_name(m->text, normal + used));
    if (!ok) {
      char shown[KAUN__SHOWN];
      rc = kaun__error_set(
          err, KAUN_EINDEX,
          "%s: line %u: the shard of tensor '%s' must be a file name relative to the index (not "
          "absolute; no '..' component; no '::', '%%', '?', '#', '\\' or control characters)%s, "
          "not '%s'",
          index_uri, m->line, m->key, uris_allowed ? ", or a URI" : "",
          m->type == KAUN__JSON_STRING ? kaun__str_escape(m->text, m->text_len, shown, sizeof shown)
                                       : "(not a string)");
      goto done;
    }
    if (uri) {
      names[i] = (char *)m->text;
    } else {
      names[i] = normal + used;
      used += strlen(names[i]) + 1;
    }
  }
  /* distinct names, sorted so shards load in their numbered order */
  memcpy(sorted, names, wm->count * sizeof *names);
  qsort(sorted, wm->count, sizeof *sorted, cmp_str);
  for (i = 0; i < wm->count; i++)
    if (!distinct || strcmp(sorted[distinct - 1], sorted[i]) != 0) sorted[distinct++] = sorted[i];
  if (distinct > MAX_SHARDS) {
    rc = kaun__error_set(err, KAUN_EINDEX,
                         "%s names %zu shard files, more than the %u kaun opens for one index",
                         index_uri, distinct, (unsigned)MAX_SHARDS);
    goto done;
  }
  /* one shard per object: names that resolve to one URI share the first's */
  if (!(refs = calloc(distinct + 1, sizeof *refs))) {
    rc = kaun__error_nomem(err, "reading a sharded index");
    goto done;
  }
  for (i = 0; i < distinct; i++) {
    refs[i].at = i;
    refs[i].uri = is_uri(sorted[i]) ? strdup(sorted[i]) : sibling_uri(index_uri, sorted[i]);
    if (!refs[i].uri) {
      rc = kaun__error_nomem(err, "reading a sharded index");
      goto done;
    }
  }
  qsort(refs, distinct, sizeof *refs, cmp_ref_uri);
  for (i = 0; i < distinct; i++)
    refs[i].first = i && strcmp(refs[i - 1].uri, refs[i].uri) == 0 ? refs[i - 1].first : refs[i].at;
  qsort(refs, distinct, sizeof *refs, cmp_ref_at);
  size_t nshards = 0;
  for (i = 0; i < distinct; i++)
    refs[i].shard = refs[i].first == i ? nshards++ : refs[refs[i].first].shard;
  if (!(r->shards = new_shards(nshards))) {
    rc = kaun__error_nomem(err, "reading a sharded index");
    goto done;
  }
  r->nshards = nshards;
  for (i = 0; i < distinct; i++)
    if (refs[i].first == i) {
      r->shards[refs[i].shard].uri = refs[i].uri;
      refs[i].uri = NULL;
    }
  uint64_t budget = MAX_SHARD_HEADER_BYTES;
  for (size_t s = 0; s < nshards; s++) {
    shard *sh = &r->shards[s];
    bool over = false;
    if ((rc = shard_open(r->ctx, sh, NULL, &budget, &over, err))) {
      if (over)
        rc = kaun__error_set(err, KAUN_EINDEX,
                             "%s: the headers of its %zu shard files add up to more than the %u "
                             "MiB kaun reads for one index (it stopped at '%s')",
                             index_uri, nshards, (unsigned)(MAX_SHARD_HEADER_BYTES >> 20), sh->uri);
      else
        kaun__error_prefix(err, "shard of %s: ", index_uri);
      goto done;
    }
  }
  /* each weight_map entry's shard, and the tensor must be there */
  i = 0;
  for (kaun__json *m = wm->child; m; m = m->next, i++) {
    char **found = bsearch(&names[i], sorted, distinct, sizeof *sorted, cmp_str);
    wm_shard[i] = refs[found - sorted].shard;
    if (kaun_safetensors_find_n(r->shards[wm_shard[i]].st, m->key, m->key_len) < 0) {
      rc = kaun__error_set(err, KAUN_EINDEX,
                           "%s: line %u: the index puts tensor '%s' in '%s', but that shard does "
                           "not contain it",
                           index_uri, m->line, m->key, r->shards[wm_shard[i]].uri);
      goto done;
    }
  }
  /* the reader's tensors: shard by shard, in file order, as the index maps them */
  r->entries = calloc(wm->count + 1, sizeof *r->entries);
  r->names = calloc(wm->count + 1, sizeof *r->names);
  if (!r->entries || !r->names) {
    rc = kaun__error_nomem(err, "reading a sharded index");
    goto done;
  }
  kaun__index wm_index = {0};
  char **wm_names = calloc(wm->count + 1, sizeof *wm_names);
  size_t *wm_lens = calloc(wm->count + 1, sizeof *wm_lens); /* names may hold NUL bytes */
  i = 0;
  for (kaun__json *m = wm->child; wm_names && wm_lens && m; m = m->next, i++) {
    wm_names[i] = (char *)m->key;
    wm_lens[i] = m->key_len;
    if (!kaun__index_add_n(&wm_index, wm_names, wm_lens, i + 1, i)) break;
  }
  if (!wm_names || !wm_lens || i != wm->count) {
    rc = kaun__error_nomem(err, "reading a sharded index");
  } else {
    for (size_t s = 0; s < r->nshards && !rc; s++) {
      kaun_safetensors *st = r->shards[s].st;
      for (size_t t = 0; t < kaun_safetensors_count(st) && !rc; t++) {
        kaun_safetensors_info in;
        kaun_safetensors_info_at(st, t, &in);
        long w = kaun__index_find_n(&wm_index, wm_names, wm_lens, in.name,
                                    kaun_safetensors_name_length(st, t));
        if (w >= 0 && wm_shard[w] == s) rc = add_entry(r, s, t, wm->count, err);
      }
    }
  }
  kaun__index_free(&wm_index);
  free(wm_names);
  free(wm_lens);
  if (!rc && !(r->index_uri = strdup(index_uri)))
    rc = kaun__error_nomem(err, "reading a sharded index");
  if (!rc) { /* kept for whole-model copies: the version validated */
    r->index_text = text;
    r->index_len = len;
    text = NULL;
  }
done:
  for (size_t k = 0; refs && k < distinct; k++) free(refs[k].uri);
  free(refs);
  free(text);
  free(names);
  free(sorted);
  free(normal);
  free(wm_shard);
  return rc;
}

static int open_single(kaun_reader *r, const char *uri, kaun_object *obj, kaun_error *err) {
  if (!(r->shards = new_shards(1)) || !(r->shards[0].uri = strdup(uri))) {
    kaun_object_close(obj);
    return kaun__error_nomem(err, "opening a checkpoint");
  }
  r->nshards = 1;
  int rc = shard_open(r->ctx, &r->shards[0], obj, NULL, NULL, err);
  if (rc) return rc;
  size_t n = kaun_safetensors_count(r->shards[0].st);
  r->entries = calloc(n + 1, sizeof *r->entries);
  r->names = calloc(n + 1, sizeof *r->names);
  if (!r->entries || !r->names) return kaun__error_nomem(err, "opening a checkpoint");
  for (size_t t = 0; t < n && !rc; t++) rc = add_entry(r, 0, t, n, err);
  return rc;
}

/* Opens "the model at `uri`": a file, an index, or a folder holding
 * model.safetensors or, else, the index. */
static int reader_open(kaun_reader *r, const char *uri, kaun_error *err) {
  kaun_context *ctx = r->ctx;
  kaun_object *obj = NULL;
  int rc = kaun_object_open(ctx, uri, &obj, err);
  bool looks_like_file = kaun__ends_with(uri, ".safetensors") || kaun__ends_with(uri, ".json");
  if (rc == KAUN_ENOENT && kaun__uri_chain(uri) && !kaun__stack_chain(uri))
    return kaun__error_set(err, KAUN_ENOENT,
                           "'%s' does not exist (a path is one file name, '::' included; a "
                           "member of an archive is tar://MEMBER::ARCHIVE)",
                           uri);
  if (rc == KAUN_OK) {
    if (kaun__ends_with(uri, ".json")) return open_index(r, uri, obj, err);
    return open_single(r, uri, obj, err);
  }
  if (rc != KAUN_EISDIR && !(rc == KAUN_ENOENT && !looks_like_file)) return rc;
  kaun_error first = err ? *err : (kaun_error)KAUN_ERROR_INIT;
  char *single = kaun__child_uri(uri, SINGLE_NAME), *index = kaun__child_uri(uri, INDEX_NAME);
  if (!single || !index) {
    rc = kaun__error_nomem(err, "opening a checkpoint");
  } else if ((rc = kaun_object_open(ctx, single, &obj, err)) == KAUN_OK) {
    rc = open_single(r, single, obj, err);
  } else if (rc != KAUN_ECANCELED) {
    /* no single file, or none that could be reached (mirrors: a bucket
     * without it, then a Hub that is down): the index may still be there */
    kaun_error single_err = err ? *err : (kaun_error)KAUN_ERROR_INIT;
    int single_rc = rc;
    if ((rc = kaun_object_open(ctx, index, &obj, err)) == KAUN_OK) {
      rc = open_index(r, index, obj, err);
    } else if (rc == KAUN_ENOENT && single_rc == KAUN_ENOENT) { /* neither is there */
      if (first.code == KAUN_EISDIR)
        rc = kaun__error_set(err, KAUN_ENOENT,
                             "'%s' is a directory without " SINGLE_NAME " or " INDEX_NAME, uri);
      else if (err)
        *err = first;               /* nothing there at all: say so as the backend did */
    } else if (rc == KAUN_ENOENT) { /* no index: what kept the single file away is the news */
      rc = single_rc;
      if (err) *err = single_err;
    }
  }
  free(single);
  free(index);
  return rc;
}

int kaun_reader_open_io(kaun_context *ctx, const char *uri, kaun_io *io, kaun_reader **out,
                        kaun_error *err) {
  kaun_io *outer = io ? kaun__opening_io_swap(io) : NULL;
  int rc = kaun_reader_open(ctx, uri, out, err);
  if (io) kaun__opening_io_swap(outer);
  return rc;
}

int kaun_reader_open(kaun_context *ctx, const char *uri, kaun_reader **out, kaun_error *err) {
  *out = NULL;
  kaun_reader *r = calloc(1, sizeof *r);
  if (!r || !(r->uri = strdup(uri))) {
    free(r);
    return kaun__error_nomem(err, "opening a checkpoint");
  }
  int rc = KAUN_OK;
  if (!ctx) rc = kaun_context_new(NULL, &r->own_ctx, err);
  r->ctx = ctx ? ctx : r->own_ctx;
  if (!rc) rc = reader_open(r, uri, err);
  if (rc) {
    kaun_reader_close(r);
    return rc;
  }
  *out = r;
  return KAUN_OK;
}

void kaun_reader_close(kaun_reader *r) {
  if (!r) return;
  for (size_t i = 0; i < r->nshards; i++) {
    shard *sh = &r->shards[i];
    free(sh->uri);
    kaun_safetensors_free(sh->st);
    kaun_buffer_unref(sh->map);
    kaun_object_close(sh->obj);
    pthread_mutex_destroy(&sh->lock);
  }
  free(r->shards);
  free(r->entries);
  free(r->names);
  free(r->name_lens);
  kaun__index_free(&r->index);
  kaun__json_free(r->doc);
  free(r->index_uri);
  free(r->index_text);
  kaun_context_free(r->own_ctx);
  free(r->uri);
  free(r);
}

/* ---- what it holds -------------------------------------------------------------- */

const char *kaun_reader_uri(const kaun_reader *r) { return r->uri; }
size_t kaun_reader_count(const kaun_reader *r) { return r->count; }

long kaun_reader_find_n(const kaun_reader *r, const char *name, size_t len) {
  return kaun__index_find_n(&r->index, r->names, r->name_lens, name, len);
}

long kaun_reader_find(const kaun_reader *r, const char *name) {
  return kaun_reader_find_n(r, name, strlen(name));
}

size_t kaun_reader_name_length(const kaun_reader *r, size_t i) {
  return i < r->count ? r->name_lens[i] : 0;
}

int kaun_reader_info(const kaun_reader *r, size_t i, kaun_reader_tensor *out) {
  if (i >= r->count) return KAUN_EINVAL;
  const shard *sh = &r->shards[r->entries[i].shard];
  kaun_safetensors_info in;
  kaun_safetensors_info_at(sh->st, r->entries[i].tensor, &in);
  *out = (kaun_reader_tensor){in.name, in.dtype, in.ndim, in.shape, in.end - in.begin, sh->uri};
  return KAUN_OK;
}

static const kaun_safetensors *first_header(const kaun_reader *r) {
  return r->nshards ? r->shards[0].st : NULL;
}

long kaun_reader_metadata_count(const kaun_reader *r) {
  return first_header(r) ? kaun_safetensors_metadata_count(first_header(r)) : -1;
}
const char *kaun_reader_metadata_key(const kaun_reader *r, size_t i) {
  return kaun_safetensors_metadata_key(first_header(r), i);
}
const char *kaun_reader_metadata_value(const kaun_reader *r, size_t i) {
  return kaun_safetensors_metadata_value(first_header(r), i);
}
size_t kaun_reader_metadata_key_length(const kaun_reader *r, size_t i) {
  return kaun_safetensors_metadata_key_length(first_header(r), i);
}
size_t kaun_reader_metadata_value_length(const kaun_reader *r, size_t i) {
  return kaun_safetensors_metadata_value_length(first_header(r), i);
}

uint64_t kaun_reader_data_bytes(const kaun_reader *r) {
  uint64_t n = 0;
  for (size_t i = 0; i < r->count; i++) {
    kaun_reader_tensor t;
    kaun_reader_info(r, i, &t);
    n += t.nbytes;
  }
  return n;
}

/* ---- reading: tasks into final memory ------------------------------------------ */

/* The runs of a slice of an object that is read, not mapped: `runs` runs
 * of `run` bytes; run k (its index in the run dimensions, last fastest)
 * is at base + sum idx[d] * stride[d] and lands at dst + k * run.  Work
 * is cut from it as it is claimed, so planning costs the same whatever
 * the number of runs: runs close together (gaps up to `max_gap`) are read
 * as one span of at most `chunk` bytes and scattered; a run longer than
 * `chunk` is read in pieces. */
typedef struct slice_runs {
  size_t ndim;
  uint64_t shape[KAUN_MAX_DIMS], stride[KAUN_MAX_DIMS];
  uint64_t run, runs, max_gap;
  pthread_mutex_t lock; /* guards the cursor below */
  uint64_t next, piece; /* the next run to claim, and the next piece of it */
  uint64_t off;         /* the offset of run `next` */
  uint64_t idx[KAUN_MAX_DIMS];
} slice_runs;

/* One output's reads: `len` bytes at `offset` into `dst` (for a cast,
 * into scratch memory then converted into `dst`; a NULL `dst` reads and
 * keeps nothing), cut into `units` reads of `chunk` bytes taken in turn
 * through `next`; or, with `slice`, its runs. */
typedef struct task {
  shard *sh;
  size_t out; /* the output tensor it fills, or NO_OUTPUT */
  char *dst;
  uint64_t offset, len, chunk, units;
  _Atomic uint64_t next;
  bool cast;
  kaun_dtype from, to;
  slice_runs *slice;
} task;

#define NO_OUTPUT SIZE_MAX
/* the scratch memory of a whole-file check (kaun_reader_check_data) */
#define CHECK_MEMORY ((uint64_t)32 << 20)
#define NEAR_GAP ((uint64_t)64 << 10) /* a gap read through rather than a new request */

/* What a worker claimed from a task: `len` bytes at `offset`, read into
 * `dst`, or (count > 0) a span holding runs first..first+count-1 of a
 * slice, whose first index is idx, scattered from scratch memory. */
typedef struct unit {
  uint64_t offset;
  size_t len;
  char *dst;
  uint64_t first, count;
  uint64_t bytes; /* of the output it fills */
  uint64_t idx[KAUN_MAX_DIMS];
} unit;

typedef struct plan {
  task *tasks;
  size_t ntasks, cap;
  uint64_t bytes;
  size_t scratch; /* the largest read that goes through scratch memory */
  uint64_t units; /* an upper bound on the reads, for the number of threads */
  unsigned threads;
  bool all_mapped;
} plan;

typedef struct run_state {
  plan *p;
  atomic_int failed;           /* the stop flag: set by the first failure */
  kaun_error error;            /* that failure, written once */
  _Atomic uint64_t *remaining; /* bytes left per output tensor */
  kaun_tensor **out;
  const char *const *names;
  const kaun_load_options *opts;
  kaun_io *io;
  bool own_io; /* io is this call's, not the caller's: canceling it is ours to do */
  pthread_mutex_t cb_lock;
} run_state;

static void plan_free(plan *p) {
  for (size_t i = 0; i < p->ntasks; i++)
    if (p->tasks[i].slice) {
      pthread_mutex_destroy(&p->tasks[i].slice->lock);
      free(p->tasks[i].slice);
    }
  free(p->tasks);
}

static uint64_t sat_add(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }

/* Adds a task (taking `slice`, which is freed on failure). */
static int plan_add(plan *p, const task *t, slice_runs *slice, kaun_error *err) {
  if (p->ntasks == p->cap) {
    size_t cap = p->cap ? p->cap * 2 : 16;
    task *grown = realloc(p->tasks, cap * sizeof *grown);
    if (!grown) {
      free(slice);
      return kaun__error_nomem(err, "planning reads");
    }
    p->tasks = grown;
    p->cap = cap;
  }
  task *n = &p->tasks[p->ntasks++];
  n->sh = t->sh;
  n->out = t->out;
  n->dst = t->dst;
  n->offset = t->offset;
  n->len = t->len;
  n->chunk = t->chunk;
  n->units = t->units;
  atomic_init(&n->next, 0);
  n->cast = t->cast;
  n->from = t->from;
  n->to = t->to;
  n->slice = slice;
  if (slice) pthread_mutex_init(&slice->lock, NULL);
  p->bytes += t->len;
  p->units = sat_add(p->units, t->units);
  if (t->sh->inflight > p->threads) p->threads = t->sh->inflight;
  if (t->sh->map_state != 1) p->all_mapped = false;
  return KAUN_OK;
}

static uint64_t shard_chunk(const shard *sh) { return sh->chunk ? sh->chunk : ((uint64_t)8 << 20); }

/* Plans `len` bytes at `offset`, read in chunk-sized pieces (whole
 * elements) when the task runs. */
static int plan_range(plan *p, shard *sh, uint64_t offset, uint64_t len, char *dst, size_t out,
                      kaun_dtype from, kaun_dtype to, kaun_error *err) {
  if (!len) return KAUN_OK;
  bool cast = from != to;
  unsigned in_elem = kaun_dtype_bits(from) / 8;
  uint64_t chunk = shard_chunk(sh);
  if (!dst && sh->inflight) { /* read to be checked, not kept: memory is threads x chunk */
    uint64_t cap = CHECK_MEMORY / sh->inflight;
    if (cap < ((uint64_t)1 << 20)) cap = (uint64_t)1 << 20;
    if (chunk > cap) chunk = cap;
  }
  if (chunk > SIZE_MAX / 2) chunk = SIZE_MAX / 2;
  if (in_elem > 1) chunk -= chunk % in_elem;
  if (!chunk) chunk = in_elem ? in_elem : 1;
  task t = {.sh = sh,
            .out = out,
            .dst = dst,
            .offset = offset,
            .len = len,
            .chunk = chunk,
            .units = len / chunk + (len % chunk != 0),
            .cast = cast,
            .from = from,
            .to = to};
  if ((cast || !dst) && (len < chunk ? len : chunk) > p->scratch)
    p->scratch = (size_t)(len < chunk ? len : chunk);
  return plan_add(p, &t, NULL, err);
}

/* The next run of a slice: its index and offset. */
static void next_run(const slice_runs *s, uint64_t *idx, uint64_t *off) {
  for (size_t d = s->ndim; d-- > 0;) {
    *off += s->stride[d];
    if (++idx[d] < s->shape[d]) return;
    *off -= s->shape[d] * s->stride[d];
    idx[d] = 0;
  }
}

/* Claims the next read of a task; false when it has none left. */
static bool claim(run_state *rs, task *t, unit *u) {
  u->count = 0;
  if (!t->slice) {
    if (atomic_load(&t->next) >= t->units) return false;
    uint64_t i = atomic_fetch_add(&t->next, 1);
    if (i >= t->units) return false;
    uint64_t done = i * t->chunk, n = t->len - done < t->chunk ? t->len - done : t->chunk;
    unsigned in_elem = kaun_dtype_bits(t->from) / 8, out_elem = kaun_dtype_bits(t->to) / 8;
    uint64_t dst_at = t->cast && in_elem ? done / in_elem * out_elem : done;
    u->offset = t->offset + done;
    u->len = (size_t)n;
    u->dst = t->dst ? t->dst + dst_at : NULL;
    u->bytes = n;
    return true;
  }
  slice_runs *s = t->slice;
  uint64_t gap_bytes = 0;
  pthread_mutex_lock(&s->lock);
  if (s->next >= s->runs) {
    pthread_mutex_unlock(&s->lock);
    return false;
  }
  uint64_t k = s->next;
  if (s->run > t->chunk) { /* a long run, in pieces */
    uint64_t at = s->piece * t->chunk, n = s->run - at < t->chunk ? s->run - at : t->chunk;
    u->offset = s->off + at;
    u->len = (size_t)n;
    u->dst = t->dst + k * s->run + at;
    u->bytes = n;
    if (++s->piece * t->chunk >= s->run) {
      s->piece = 0;
      s->next++;
      next_run(s, s->idx, &s->off);
    }
  } else { /* this run, and the next ones while the span stays small */
    uint64_t start = s->off, end = s->off + s->run;
    memcpy(u->idx, s->idx, s->ndim * sizeof *s->idx);
    s->next++;
    next_run(s, s->idx, &s->off);
    while (s->next < s->runs && s->off - end <= s->max_gap && s->off + s->run - start <= t->chunk) {
      end = s->off + s->run;
      s->next++;
      next_run(s, s->idx, &s->off);
    }
    u->offset = start;
    u->len = (size_t)(end - start);
    u->bytes = (s->next - k) * s->run;
    if (s->next - k == 1) {
      u->dst = t->dst + k * s->run;
    } else {
      u->dst = NULL;
      u->first = k;
      u->count = s->next - k;
      gap_bytes = u->len - u->bytes;
    }
  }
  pthread_mutex_unlock(&s->lock);
  if (gap_bytes) kaun_io_expect(rs->io, gap_bytes); /* read through, so counted */
  return true;
}

/* Hands a finished tensor to the streaming callback. */
static int deliver(run_state *rs, size_t out, kaun_error *err) {
  if (!rs->opts || !rs->opts->on_tensor) return KAUN_OK;
  pthread_mutex_lock(&rs->cb_lock);
  int stop = rs->opts->on_tensor(rs->names[out], rs->out[out], rs->opts->user);
  pthread_mutex_unlock(&rs->cb_lock);
  if (stop)
    return kaun__error_set(err, KAUN_ECANCELED, "canceled by the tensor callback at '%s'",
                           rs->names[out]);
  return KAUN_OK;
}

/* Records the first failure and stops the other workers between reads.
 * Transfers in flight stop too when the io is this call's own; the
 * caller's io is left as it was (it may serve later calls). */
static void fail(run_state *rs, const kaun_error *e) {
  int zero = 0;
  if (atomic_compare_exchange_strong(&rs->failed, &zero, 1)) rs->error = *e;
  if (rs->own_io) kaun_io_cancel(rs->io);
}

/* Does one claimed read: into place, or via scratch memory for a cast, a
 * check or a span of runs. */
static int run_unit(run_state *rs, const task *t, const unit *u, char **scratch, kaun_error *e) {
  if (kaun_io_canceled(rs->io))
    return kaun__error_set(e, KAUN_ECANCELED, "%s: canceled", t->sh->uri);
  bool to_scratch = t->cast || !u->dst;
  if (to_scratch && !*scratch && !(*scratch = malloc(rs->p->scratch ? rs->p->scratch : 1)))
    return kaun__error_nomem(e, "reading tensors");
  int rc =
      kaun_object_read_io(t->sh->obj, u->offset, to_scratch ? *scratch : u->dst, u->len, rs->io, e);
  if (!rc && t->cast) {
    unsigned bits = kaun_dtype_bits(t->from);
    rc = kaun_cast(t->from, *scratch, t->to, u->dst, bits ? u->len * 8 / bits : 0, e);
  }
  if (!rc && u->count) { /* scatter the runs out of the span */
    const slice_runs *s = t->slice;
    uint64_t idx[KAUN_MAX_DIMS], off = u->offset;
    memcpy(idx, u->idx, s->ndim * sizeof *idx);
    for (uint64_t k = u->first; k < u->first + u->count; k++) {
      memcpy(t->dst + k * s->run, *scratch + (off - u->offset), (size_t)s->run);
      next_run(s, idx, &off);
    }
  }
  return rc;
}

static void *worker(void *arg) {
  run_state *rs = arg;
  plan *p = rs->p;
  char *scratch = NULL;
  unit u;
  for (size_t i = 0; i < p->ntasks && !atomic_load(&rs->failed);) {
    task *t = &p->tasks[i];
    if (!claim(rs, t, &u)) {
      i++;
      continue;
    }
    kaun_error e = KAUN_ERROR_INIT;
    int rc = run_unit(rs, t, &u, &scratch, &e);
    if (!rc && t->out != NO_OUTPUT && atomic_fetch_sub(&rs->remaining[t->out], u.bytes) == u.bytes)
      rc = deliver(rs, t->out, &e);
    if (rc) fail(rs, &e);
  }
  free(scratch);
  return NULL;
}

static int run_plan(run_state *rs, kaun_error *err) {
  plan *p = rs->p;
  if (!p->ntasks) return KAUN_OK;
  kaun_io_expect(rs->io, p->bytes);
  unsigned n = p->threads ? p->threads : 1;
  if (n > MAX_THREADS) n = MAX_THREADS;
  if (n > p->units) n = (unsigned)p->units;
  uint64_t chunk = p->tasks[0].sh->chunk;
  if (p->all_mapped && p->bytes < 2 * chunk) n = 1; /* the page cache: threads cost more */
  pthread_t threads[MAX_THREADS];
  unsigned started = 0;
  for (unsigned i = 1; i < n; i++) {
    if (pthread_create(&threads[started], NULL, worker, rs) != 0) break;
    started++;
  }
  worker(rs);
  for (unsigned i = 0; i < started; i++) pthread_join(threads[i], NULL);
  if (atomic_load(&rs->failed)) {
    if (err) *err = rs->error;
    return rs->error.code ? rs->error.code : KAUN_EIO;
  }
  return KAUN_OK;
}

/* A request for one output: a whole tensor (nranges 0) or a slice. */
typedef struct request {
  size_t entry;
  kaun_dtype dtype;
  size_t nranges;
  const kaun_range *ranges;
} request;

static bool is_aligned(const void *p, kaun_dtype dt) {
  unsigned elem = kaun_dtype_bits(dt) / 8;
  return elem <= 1 || (uintptr_t)p % elem == 0;
}

/* Plans a whole tensor: a view, a cast of mapped bytes, or reads. */
static int plan_whole(kaun_reader *r, const request *q, unsigned flags, plan *p, size_t out,
                      kaun_tensor **t, kaun_error *err) {
  shard *sh = &r->shards[r->entries[q->entry].shard];
  kaun_safetensors_info in;
  kaun_safetensors_info_at(sh->st, r->entries[q->entry].tensor, &in);
  uint64_t offset = kaun_safetensors_data_start(sh->st) + in.begin;
  size_t nbytes = (size_t)(in.end - in.begin);
  bool copy = (flags & KAUN_LOAD_COPY) != 0;
  kaun_buffer *map = (!copy || q->dtype != in.dtype) && nbytes ? shard_map(sh) : NULL;
  const char *bytes = map ? (const char *)kaun_buffer_data(map) + offset : NULL;
  int rc;
  if (map && q->dtype == in.dtype && is_aligned(bytes, in.dtype))
    return kaun__tensor_view_unchecked(in.dtype, in.ndim, in.shape, map, (size_t)offset, nbytes, t,
                                       err);
  if (map && q->dtype == in.dtype)
    return kaun_tensor_new_copy(in.dtype, in.ndim, in.shape, bytes, nbytes, t, err);
  if ((rc = kaun__tensor_new_uninit(q->dtype, in.ndim, in.shape, t, err))) return rc;
  void *dst;
  if ((rc = kaun_tensor_data_mut(*t, &dst, err))) return rc;
  if (map) { /* a cast of mapped bytes */
    uint64_t count = 1;
    for (size_t d = 0; d < in.ndim; d++) count *= in.shape[d];
    rc = kaun_cast(in.dtype, bytes, q->dtype, dst, (size_t)count, err);
    if (rc) kaun__error_prefix(err, "tensor '%s' in '%s': ", in.name, sh->uri);
    return rc;
  }
  if (q->dtype != in.dtype && (kaun_dtype_bits(in.dtype) % 8 || kaun_dtype_bits(q->dtype) % 8 ||
                               !kaun_dtype_can_cast(in.dtype) || !kaun_dtype_can_cast(q->dtype)))
    return kaun__error_set(err, KAUN_ENOTSUP, "tensor '%s' in '%s': kaun cannot cast %s to %s",
                           in.name, sh->uri, kaun_dtype_name(in.dtype), kaun_dtype_name(q->dtype));
  return plan_range(p, sh, offset, nbytes, dst, out, in.dtype, q->dtype, err);
}

/* Plans a slice's contiguous runs, as one task whatever their number (a
 * view when it is one run of a mapping, copies from a mapping, else
 * reads cut as the task runs). */
static int plan_slice(kaun_reader *r, const request *q, unsigned flags, plan *p, size_t out,
                      kaun_tensor **t, kaun_error *err) {
  shard *sh = &r->shards[r->entries[q->entry].shard];
  kaun_safetensors_info in;
  kaun_safetensors_info_at(sh->st, r->entries[q->entry].tensor, &in);
  if (q->nranges > in.ndim)
    return kaun__error_set(err, KAUN_EINVAL, "%s: tensor '%s' has %zu dimensions; %zu ranges given",
                           r->uri, in.name, in.ndim, q->nranges);
  unsigned bits = kaun_dtype_bits(in.dtype);
  if (bits % 8)
    return kaun__error_set(
        err, KAUN_ENOTSUP,
        "%s: tensor '%s' is %s, narrower than a byte: kaun slices whole bytes only", r->uri,
        in.name, kaun_dtype_name(in.dtype));
  uint64_t shape[KAUN_MAX_DIMS], start[KAUN_MAX_DIMS];
  for (size_t d = 0; d < in.ndim; d++) {
    kaun_range g = d < q->nranges ? q->ranges[d] : (kaun_range){0, in.shape[d]};
    if (g.start > g.stop || g.stop > in.shape[d])
      return kaun__error_set(
          err, KAUN_EINVAL, "%s: tensor '%s': range %llu:%llu is outside dimension %zu (size %llu)",
          r->uri, in.name, (unsigned long long)g.start, (unsigned long long)g.stop, d,
          (unsigned long long)in.shape[d]);
    start[d] = g.start;
    shape[d] = g.stop - g.start;
  }
  /* runs: dimensions from `inner` on are taken whole after the first */
  size_t elem = bits / 8, inner = in.ndim;
  while (inner > 0 && shape[inner - 1] == in.shape[inner - 1]) inner--;
  uint64_t run = elem; /* bytes per run */
  size_t first = inner ? inner - 1 : 0;
  for (size_t d = first; d < in.ndim; d++) run *= shape[d];
  uint64_t runs = 1, total = 1;
  for (size_t d = 0; d < first && in.ndim; d++) runs *= shape[d];
  for (size_t d = 0; d < in.ndim; d++) total *= shape[d];
  uint64_t stride[KAUN_MAX_DIMS]; /* bytes per step along each dimension in the file */
  for (size_t d = in.ndim; d-- > 0;)
    stride[d] = d + 1 < in.ndim ? stride[d + 1] * in.shape[d + 1] : elem;
  uint64_t base = kaun_safetensors_data_start(sh->st) + in.begin;
  bool copy = (flags & KAUN_LOAD_COPY) != 0;
  kaun_buffer *map = total ? shard_map(sh) : NULL;
  uint64_t off0 = base;
  for (size_t d = 0; d < in.ndim; d++) off0 += start[d] * stride[d];
  int rc;
  if (map && runs == 1 && !copy && q->dtype == in.dtype &&
      is_aligned((const char *)kaun_buffer_data(map) + off0, in.dtype))
    return kaun__tensor_view_unchecked(in.dtype, in.ndim, shape, map, (size_t)off0,
                                       (size_t)(total * elem), t, err);
  kaun_tensor *raw = NULL;
  if ((rc = kaun__tensor_new_uninit(in.dtype, in.ndim, shape, &raw, err))) return rc;
  char *dst;
  if ((rc = kaun_tensor_data_mut(raw, (void **)&dst, err))) goto fail;
  if (total && !map && runs == 1) {
    rc = plan_range(p, sh, off0, run, dst, out, in.dtype, in.dtype, err);
  } else if (total && !map) {
    slice_runs *s = calloc(1, sizeof *s);
    if (!s) {
      rc = kaun__error_nomem(err, "planning reads");
      goto fail;
    }
    s->ndim = first;
    uint64_t span = run;
    for (size_t d = 0; d < first; d++) {
      s->shape[d] = shape[d];
      s->stride[d] = stride[d];
      span += (shape[d] - 1) * stride[d];
    }
    s->run = run;
    s->runs = runs;
    s->max_gap = run > NEAR_GAP ? run : NEAR_GAP;
    s->off = off0;
    uint64_t chunk = shard_chunk(sh), pieces = run > chunk ? run / chunk + (run % chunk != 0) : 1;
    task tk = {.sh = sh,
               .out = out,
               .dst = dst,
               .len = runs * run,
               .chunk = chunk,
               .units = runs > UINT64_MAX / pieces ? UINT64_MAX : runs * pieces,
               .from = in.dtype,
               .to = in.dtype};
    uint64_t scratch = span < chunk ? span : chunk; /* a span of runs */
    if (run < chunk && scratch > p->scratch) p->scratch = (size_t)scratch;
    rc = plan_add(p, &tk, s, err);
  } else if (total) { /* copies out of the mapping */
    uint64_t idx[KAUN_MAX_DIMS] = {0}, off = off0;
    const char *src = (const char *)kaun_buffer_data(map);
    slice_runs geometry = {.ndim = first};
    for (size_t d = 0; d < first; d++) {
      geometry.shape[d] = shape[d];
      geometry.stride[d] = stride[d];
    }
    for (uint64_t k = 0; k < runs; k++) {
      memcpy(dst + k * run, src + off, (size_t)run);
      next_run(&geometry, idx, &off);
    }
  }
  if (rc) goto fail;
  if (q->dtype == in.dtype) {
    *t = raw;
    return KAUN_OK;
  }
  if (!map) { /* a cast after the reads: cast_later */
    *t = raw;
    return KAUN_OK;
  }
  rc = kaun_tensor_cast(raw, q->dtype, t, err);
fail:
  kaun_tensor_free(raw);
  return rc;
}

/* Loads every request into out[], with ranged reads in parallel. */
static int materialize(kaun_reader *r, const request *reqs, size_t n, const char *const *names,
                       const kaun_load_options *opts, kaun_tensor **out, kaun_error *err) {
  unsigned flags = opts ? opts->flags : 0;
  plan p = {.all_mapped = true};
  run_state rs = {
      .p = &p, .out = out, .names = names, .opts = opts, .cb_lock = PTHREAD_MUTEX_INITIALIZER};
  atomic_init(&rs.failed, 0);
  kaun_io *own_io = NULL;
  int rc = KAUN_OK;
  for (size_t i = 0; i < n; i++) out[i] = NULL;
  rs.io = opts ? opts->io : NULL;
  if (!rs.io && (rc = kaun_context_new_io(r->ctx, &own_io, err))) return rc;
  if (!rs.io) rs.io = own_io;
  rs.own_io = own_io != NULL;
  rs.remaining = calloc(n + 1, sizeof *rs.remaining);
  if (!rs.remaining) rc = kaun__error_nomem(err, "loading tensors");
  for (size_t i = 0; i < n && !rc; i++) atomic_init(&rs.remaining[i], 0);
  for (size_t i = 0; i < n && !rc; i++)
    rc = reqs[i].nranges || reqs[i].ranges ? plan_slice(r, &reqs[i], flags, &p, i, &out[i], err)
                                           : plan_whole(r, &reqs[i], flags, &p, i, &out[i], err);
  for (size_t k = 0; k < p.ntasks && !rc; k++)
    atomic_fetch_add(&rs.remaining[p.tasks[k].out], p.tasks[k].len);
  for (size_t i = 0; i < n && !rc; i++) /* tensors that needed no reads are ready now */
    if (atomic_load(&rs.remaining[i]) == 0) rc = deliver(&rs, i, err);
  if (!rc) rc = run_plan(&rs, err);
  /* slices of unmapped objects that want a cast: convert now that the bytes are in */
  for (size_t i = 0; i < n && !rc; i++)
    if (out[i] && kaun_tensor_dtype(out[i]) != reqs[i].dtype) {
      kaun_tensor *c;
      if (!(rc = kaun_tensor_cast(out[i], reqs[i].dtype, &c, err))) {
        kaun_tensor_free(out[i]);
        out[i] = c;
      }
    }
  if (rc == KAUN_ECANCELED && err && !strstr(err->message, r->uri))
    kaun__error_prefix(err, "loading %s: ", r->uri);
  free(rs.remaining);
  plan_free(&p);
  kaun_io_free(own_io);
  pthread_mutex_destroy(&rs.cb_lock);
  if (rc)
    for (size_t i = 0; i < n; i++) {
      kaun_tensor_free(out[i]);
      out[i] = NULL;
    }
  return rc;
}

/* ---- the getters ------------------------------------------------------------------ */

static int lookup(const kaun_reader *r, const char *name, size_t len, size_t *entry_out,
                  kaun_error *err) {
  long i = kaun_reader_find_n(r, name, len);
  if (i < 0) {
    char shown[KAUN__SHOWN];
    return kaun__error_set(err, KAUN_EKEY, "%s: no tensor '%s'", r->uri,
                           kaun__str_escape(name, len, shown, sizeof shown));
  }
  *entry_out = (size_t)i;
  return KAUN_OK;
}

static kaun_dtype stored_dtype(const kaun_reader *r, size_t e) {
  kaun_reader_tensor t;
  kaun_reader_info(r, e, &t);
  return t.dtype;
}

int kaun_reader_get_many_n(kaun_reader *r, size_t n, const char *const *names, const size_t *lens,
                           const kaun_dtype *dtypes, const kaun_load_options *opts,
                           kaun_tensor **out, kaun_error *err) {
  request *reqs = calloc(n + 1, sizeof *reqs);
  if (!reqs) return kaun__error_nomem(err, "loading tensors");
  int rc = KAUN_OK;
  for (size_t i = 0; i < n && !rc; i++) {
    out[i] = NULL;
    size_t len = lens ? lens[i] : strlen(names[i]);
    if (!(rc = lookup(r, names[i], len, &reqs[i].entry, err)))
      reqs[i].dtype =
          dtypes && dtypes[i] < KAUN_DTYPE_COUNT_ ? dtypes[i] : stored_dtype(r, reqs[i].entry);
  }
  if (!rc) rc = materialize(r, reqs, n, names, opts, out, err);
  free(reqs);
  return rc;
}

int kaun_reader_get_many(kaun_reader *r, size_t n, const char *const *names,
                         const kaun_dtype *dtypes, const kaun_load_options *opts, kaun_tensor **out,
                         kaun_error *err) {
  return kaun_reader_get_many_n(r, n, names, NULL, dtypes, opts, out, err);
}

int kaun_reader_get(kaun_reader *r, const char *name, kaun_dtype dtype,
                    const kaun_load_options *opts, kaun_tensor **out, kaun_error *err) {
  return kaun_reader_get_many(r, 1, &name, &dtype, opts, out, err);
}

int kaun_reader_get_slice(kaun_reader *r, const char *name, size_t nranges,
                          const kaun_range *ranges, const kaun_load_options *opts,
                          kaun_tensor **out, kaun_error *err) {
  *out = NULL;
  static const kaun_range none[1] = {{0, 0}};
  request q = {0, KAUN_DTYPE_COUNT_, nranges, nranges ? ranges : none};
  int rc = lookup(r, name, strlen(name), &q.entry, err);
  if (rc) return rc;
  q.dtype = stored_dtype(r, q.entry);
  return materialize(r, &q, 1, &name, opts, out, err);
}

/* ---- reading every byte once --------------------------------------------------------- */

/* The SHA-256 an etag states, as 64 lowercase hex digits, or false: bare
 * or quoted ("..."), not weak (W/"..." promises no byte identity). */
static bool etag_sha256(const char *etag, char out[65]) {
  size_t n = strlen(etag);
  if (n == 66 && etag[0] == '"' && etag[65] == '"') etag++, n -= 2;
  if (n != 64) return false;
  for (size_t i = 0; i < 64; i++) {
    char c = etag[i];
    if (c >= 'A' && c <= 'F') c = (char)(c - 'A' + 'a');
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
    out[i] = c;
  }
  out[64] = '\0';
  return true;
}

/* Streams a whole object through SHA-256 and compares with `want`. */
static int check_sha256(shard *sh, const char *want, kaun_io *io, kaun_error *err) {
  uint64_t size = kaun_safetensors_file_size(sh->st), chunk = sh->chunk;
  char *buf = malloc((size_t)chunk);
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  int rc = buf && md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1
               ? KAUN_OK
               : kaun__error_nomem(err, "hashing a file");
  for (uint64_t off = 0; !rc && off < size; off += chunk) {
    size_t n = size - off < chunk ? (size_t)(size - off) : (size_t)chunk;
    if (!(rc = kaun_object_read_io(sh->obj, off, buf, n, io, err)) &&
        EVP_DigestUpdate(md, buf, n) != 1)
      rc = kaun__error_nomem(err, "hashing a file");
  }
  unsigned char digest[32];
  unsigned len = 0;
  if (!rc && EVP_DigestFinal_ex(md, digest, &len) != 1) rc = kaun__error_nomem(err, "hashing");
  if (!rc) {
    char hex[65];
    for (unsigned i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", digest[i]);
    if (strcmp(hex, want) != 0)
      rc = kaun__error_set(err, KAUN_ECHECKSUM,
                           "%s: its bytes hash to sha256 %s, but the backend says %s", sh->uri, hex,
                           want);
  }
  EVP_MD_CTX_free(md);
  free(buf);
  return rc;
}

int kaun_reader_check_data(kaun_reader *r, const kaun_load_options *opts, kaun_error *err) {
  plan p = {0};
  run_state rs = {.p = &p, .cb_lock = PTHREAD_MUTEX_INITIALIZER};
  atomic_init(&rs.failed, 0);
  kaun_io *own_io = NULL;
  int rc = KAUN_OK;
  rs.io = opts ? opts->io : NULL;
  if (!rs.io && (rc = kaun_context_new_io(r->ctx, &own_io, err))) return rc;
  if (!rs.io) rs.io = own_io;
  rs.own_io = own_io != NULL;
  /* one task per shard, cut into chunks as workers take them: memory is
   * threads x chunk, whatever size the objects claim */
  for (size_t s = 0; s < r->nshards && !rc; s++) {
    shard *sh = &r->shards[s];
    kaun_stat st = {.struct_size = sizeof st};
    if ((rc = kaun_object_stat(sh->obj, &st, err))) break;
    char want[65];
    if (etag_sha256(st.etag, want)) { /* a checksum is known: hash while reading */
      kaun_io_expect(rs.io, kaun_safetensors_file_size(sh->st));
      rc = check_sha256(sh, want, rs.io, err);
      continue;
    }
    uint64_t start = kaun_safetensors_data_start(sh->st);
    uint64_t len = kaun_safetensors_file_size(sh->st) - start;
    rc = plan_range(&p, sh, start, len, NULL, NO_OUTPUT, KAUN_DTYPE_U8, KAUN_DTYPE_U8, err);
  }
  if (!rc) rc = run_plan(&rs, err);
  plan_free(&p);
  kaun_io_free(own_io);
  pthread_mutex_destroy(&rs.cb_lock);
  return rc;
}

/* ---- is the file what kaun would write? ------------------------------------------------ */

int kaun__reader_copy_metadata(const kaun_reader *r, kaun_flat *flat, kaun_error *err) {
  long md = kaun_reader_metadata_count(r);
  if (md < 0) return KAUN_OK; /* none: the flat list has none either */
  kaun__flat_mark_metadata(flat);
  int rc = KAUN_OK;
  for (long i = 0; i < md && !rc; i++)
    rc = kaun_flat_set_metadata_n(flat, kaun_reader_metadata_key(r, (size_t)i),
                                  kaun_reader_metadata_key_length(r, (size_t)i),
                                  kaun_reader_metadata_value(r, (size_t)i),
                                  kaun_reader_metadata_value_length(r, (size_t)i), err);
  return rc;
}

/* For whole-model copies (copy.c): the index and the shards as opened. */
const char *kaun__reader_index(const kaun_reader *r, const char **text, size_t *len) {
  if (text) *text = r->index_text;
  if (len) *len = r->index_len;
  return r->index_uri;
}

size_t kaun__reader_shard_count(const kaun_reader *r) { return r->nshards; }
kaun_context *kaun__reader_context(const kaun_reader *r) { return r->ctx; }

kaun_object *kaun__reader_shard(const kaun_reader *r, size_t i, const char **uri) {
  if (i >= r->nshards) return NULL;
  if (uri) *uri = r->shards[i].uri;
  return r->shards[i].obj;
}

int kaun_reader_copy(kaun_reader *r, const char *dst_uri, kaun_io *io, kaun_error *err) {
  if (r->nshards != 1)
    return kaun__error_set(err, KAUN_EINVAL,
                           "%s is a sharded checkpoint: it has no one file to copy byte for byte",
                           r->uri);
  return kaun_object_copy(r->ctx, r->shards[0].obj, dst_uri, io, err);
}

int kaun_reader_is_canonical(kaun_reader *r, kaun_error *err) {
  if (r->nshards != 1) return 0;
  shard *sh = &r->shards[0];
  kaun_flat *flat = NULL;
  kaun_buffer *dummy = NULL;
  char *header = NULL, *original = NULL;
  size_t header_size = 0;
  uint64_t data_size = 0;
  static const char byte = 0;
  /* views of nothing: the serializer reads names, dtypes and shapes only */
  int rc = kaun__flat_new_borrowed(&flat, err);
  if (!rc) rc = kaun_buffer_wrap(&byte, 1, NULL, NULL, &dummy, err);
  kaun_tensor **views = calloc(r->count + 1, sizeof *views);
  if (!rc && !views) rc = kaun__error_nomem(err, "checking a header");
  for (size_t i = 0; i < r->count && !rc; i++) {
    kaun_reader_tensor t;
    kaun_reader_info(r, i, &t);
    rc = kaun__tensor_view_unchecked(t.dtype, t.ndim, t.shape, dummy, 0, (size_t)t.nbytes,
                                     &views[i], err);
    if (!rc) rc = kaun_flat_add_n(flat, t.name, kaun_reader_name_length(r, i), views[i], err);
  }
  if (!rc) rc = kaun__reader_copy_metadata(r, flat, err);
  if (!rc)
    rc = kaun_safetensors_serialize_header(flat, &header, &header_size, &data_size, NULL, err);
  int same = 0;
  if (!rc && header_size == kaun_safetensors_data_start(sh->st) &&
      header_size + data_size == kaun_safetensors_file_size(sh->st)) {
    if (!(original = malloc(header_size)))
      rc = kaun__error_nomem(err, "checking a header");
    else if (!(rc = kaun_object_read(sh->obj, 0, original, header_size, err)))
      same = memcmp(original, header, header_size) == 0;
  }
  kaun_flat_free(flat);
  for (size_t i = 0; views && i < r->count; i++) kaun_tensor_free(views[i]);
  free(views);
  kaun_buffer_unref(dummy);
  free(header);
  free(original);
  return rc ? rc : same;
}

/* ---- slices as text ----------------------------------------------------------------- */

/* An index as in Python: N, or -N counting from the end of a dimension of
 * `size` (then clamped at 0 by the caller's bounds check). */
static bool parse_index(const char *s, size_t n, uint64_t size, uint64_t *out, bool *negative) {
  *negative = n > 0 && s[0] == '-';
  if (*negative) s++, n--;
  if (!n) return false;
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9' || v > (UINT64_MAX - 9) / 10) return false;
    v = v * 10 + (uint64_t)(s[i] - '0');
  }
  *out = *negative ? (v > size ? UINT64_MAX : size - v) : v;
  return true;
}

int kaun_slice_parse(const char *text, size_t ndim, const uint64_t *shape, kaun_range *ranges,
                     size_t max, size_t *out_count, kaun_error *err) {
  size_t k = 0;
  for (const char *p = text; *p || k == 0;) {
    const char *comma = strchr(p, ',');
    size_t len = comma ? (size_t)(comma - p) : strlen(p);
    if (k >= ndim || k >= max)
      return kaun__error_set(err, KAUN_EINVAL, "slice '%s' has more parts than the %zu dimensions",
                             text, ndim);
    const char *colon = memchr(p, ':', len);
    kaun_range g = {0, shape[k]};
    bool ok = true, neg = false;
    if (!colon) {
      ok = parse_index(p, len, shape[k], &g.start, &neg);
      g.stop = g.start == UINT64_MAX ? UINT64_MAX : g.start + 1;
    } else {
      size_t a = (size_t)(colon - p), b = len - a - 1;
      if (a) ok = parse_index(p, a, shape[k], &g.start, &neg);
      if (ok && b) ok = parse_index(colon + 1, b, shape[k], &g.stop, &neg);
    }
    if (!ok)
      return kaun__error_set(err, KAUN_EINVAL,
                             "slice '%s': part %zu ('%.*s') is not START:STOP, START or ':' "
                             "(negative numbers count from the end)",
                             text, k + 1, (int)len, p);
    if (g.start == UINT64_MAX || g.stop == UINT64_MAX || g.stop > shape[k] || g.start > shape[k])
      return kaun__error_set(err, KAUN_EINVAL,
                             "slice '%s': part %zu ('%.*s') is outside dimension %zu of size %llu",
                             text, k + 1, (int)len, p, k, (unsigned long long)shape[k]);
    if (g.start > g.stop)
      return kaun__error_set(
          err, KAUN_EINVAL, "slice '%s': part %zu ('%.*s') stops before it starts (%llu > %llu)",
          text, k + 1, (int)len, p, (unsigned long long)g.start, (unsigned long long)g.stop);
    ranges[k++] = g;
    if (!comma) break;
    p = comma + 1;
  }
  *out_count = k;
  return KAUN_OK;
}
