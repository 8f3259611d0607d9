/* The lazy reader: a checkpoint (file, index or folder, any backend) opened
 * by its headers alone; tensors, slices and many tensors at once read
 * straight into their final memory, or viewed in a mapping.  The loads of
 * checkpoint.c are built on it. */
#include "index.h"
#include "json.h"
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
};

/* ---- opening -------------------------------------------------------------- */

static int object_read(void *obj, uint64_t offset, void *dst, size_t len, kaun_error *err) {
  return kaun_object_read(obj, offset, dst, len, err);
}

/* Opens (or adopts `obj`) and reads one shard's header: ranged reads only. */
static int shard_open(kaun_context *ctx, shard *sh, kaun_object *obj, kaun_error *err) {
  int rc = obj ? KAUN_OK : kaun_object_open(ctx, sh->uri, &obj, err);
  if (rc) return rc;
  sh->obj = obj;
  kaun_object_hints(obj, &sh->chunk, &sh->inflight);
  kaun_stat st = {.struct_size = sizeof st};
  if ((rc = kaun_object_stat(obj, &st, err))) return rc;
  return kaun__safetensors_read_via(object_read, obj, st.size, sh->uri, &sh->st, err);
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

static bool ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), m = strlen(suffix);
  return n >= m && strcmp(s + n - m, suffix) == 0;
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
  const char *chain = kaun__uri_chain(uri);
  size_t left = chain ? (size_t)(chain - uri) : strlen(uri);
  return join_uri(uri, left, name, chain ? chain : "");
}

/* The URI of `name` beside the object at `uri`. */
static char *sibling_uri(const char *uri, const char *name) {
  const char *chain = kaun__uri_chain(uri);
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

/* A file beside the index: relative, no empty or ".." component, no "::"
 * (which would stack the index's URI on another object). */
static bool safe_shard_name(const char *s) {
  if (!*s || s[0] == '/' || strstr(s, "::")) return false;
  for (const char *p = s; *p;) {
    const char *slash = strchr(p, '/');
    size_t n = slash ? (size_t)(slash - p) : strlen(p);
    if (n == 0 || (n == 2 && p[0] == '.' && p[1] == '.')) return false;
    if (!slash) break;
    p = slash + 1;
  }
  return true;
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

/* Reads the index at `index_uri` (`obj`, opened from it; closed here) and
 * opens its shards.  Shards are files beside the index; a shard named by
 * URI is followed only when the config allows it for the backend that
 * served the index (backends.NAME.index_shard_uris), else KAUN_EACCESS:
 * an index is untrusted input, and a URI would let its author make kaun
 * read any local file or bucket with the user's credentials. */
static int open_index(kaun_reader *r, const char *index_uri, kaun_object *obj, kaun_error *err) {
  char *text = NULL, **names = NULL;
  size_t len, *wm_shard = NULL;
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
  wm_shard = calloc(wm->count + 1, sizeof *wm_shard);
  if (!names || !wm_shard) {
    rc = kaun__error_nomem(err, "reading a sharded index");
    goto done;
  }
  size_t i = 0;
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
    if (m->type != KAUN__JSON_STRING || memchr(m->text, '\0', m->text_len) ||
        (!uri && !safe_shard_name(m->text))) {
      rc = kaun__error_set(err, KAUN_EINDEX,
                           "%s: line %u: the shard of tensor '%s' must be a file name relative to "
                           "the index (not absolute, no '..', no '::')%s",
                           index_uri, m->line, m->key, uris_allowed ? ", or a URI" : "");
      goto done;
    }
    names[i] = (char *)m->text;
  }
  /* distinct shard files, sorted so shards load in their numbered order */
  qsort(names, wm->count, sizeof *names, cmp_str);
  size_t distinct = 0;
  for (i = 0; i < wm->count; i++)
    if (!distinct || strcmp(names[distinct - 1], names[i]) != 0) names[distinct++] = names[i];
  if (!(r->shards = new_shards(distinct))) {
    rc = kaun__error_nomem(err, "reading a sharded index");
    goto done;
  }
  r->nshards = distinct;
  for (i = 0; i < distinct; i++) {
    shard *sh = &r->shards[i];
    sh->uri = is_uri(names[i]) ? strdup(names[i]) : sibling_uri(index_uri, names[i]);
    if (!sh->uri) {
      rc = kaun__error_nomem(err, "reading a sharded index");
      goto done;
    }
    if ((rc = shard_open(r->ctx, sh, NULL, err))) {
      kaun__error_prefix(err, "shard of %s: ", index_uri);
      goto done;
    }
  }
  /* each weight_map entry's shard, and the tensor must be there */
  i = 0;
  for (kaun__json *m = wm->child; m; m = m->next, i++) {
    char *key = (char *)m->text;
    char **found = bsearch(&key, names, distinct, sizeof *names, cmp_str);
    wm_shard[i] = (size_t)(found - names);
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
done:
  free(text);
  free(names);
  free(wm_shard);
  return rc;
}

static int open_single(kaun_reader *r, const char *uri, kaun_object *obj, kaun_error *err) {
  if (!(r->shards = new_shards(1)) || !(r->shards[0].uri = strdup(uri))) {
    kaun_object_close(obj);
    return kaun__error_nomem(err, "opening a checkpoint");
  }
  r->nshards = 1;
  int rc = shard_open(r->ctx, &r->shards[0], obj, err);
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
  bool looks_like_file = ends_with(uri, ".safetensors") || ends_with(uri, ".json");
  if (rc == KAUN_OK) {
    if (ends_with(uri, ".json")) return open_index(r, uri, obj, err);
    return open_single(r, uri, obj, err);
  }
  if (rc != KAUN_EISDIR && !(rc == KAUN_ENOENT && !looks_like_file)) return rc;
  kaun_error first = err ? *err : (kaun_error)KAUN_ERROR_INIT;
  char *single = kaun__child_uri(uri, SINGLE_NAME), *index = kaun__child_uri(uri, INDEX_NAME);
  if (!single || !index) {
    rc = kaun__error_nomem(err, "opening a checkpoint");
  } else if ((rc = kaun_object_open(ctx, single, &obj, err)) == KAUN_OK) {
    rc = open_single(r, single, obj, err);
  } else if (rc == KAUN_ENOENT && (rc = kaun_object_open(ctx, index, &obj, err)) == KAUN_OK) {
    rc = open_index(r, index, obj, err);
  } else if (rc == KAUN_ENOENT) {
    if (first.code == KAUN_EISDIR)
      rc = kaun__error_set(err, KAUN_ENOENT,
                           "'%s' is a directory without " SINGLE_NAME " or " INDEX_NAME, uri);
    else if (err)
      *err = first; /* nothing there at all: say so as the backend did */
  }
  free(single);
  free(index);
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

/* ---- reading: jobs into final memory ------------------------------------------- */

/* One ranged read: `len` bytes of the shard at `offset` into `dst`, or,
 * for a cast, into scratch memory then converted into `dst`. */
typedef struct job {
  shard *sh;
  uint64_t offset;
  size_t len;
  char *dst;
  size_t out; /* the output tensor it fills */
  bool cast;
  kaun_dtype from, to;
} job;

typedef struct plan {
  job *jobs;
  size_t njobs, cap;
  uint64_t bytes;
  size_t scratch; /* the largest cast job */
  unsigned threads;
  bool all_mapped;
} plan;

typedef struct run_state {
  plan *p;
  atomic_size_t next;
  atomic_int failed;
  kaun_error error;         /* the first failure, written once */
  atomic_size_t *remaining; /* jobs left per output tensor */
  kaun_tensor **out;
  const char *const *names;
  const kaun_load_options *opts;
  kaun_io *io;
  pthread_mutex_t cb_lock;
} run_state;

static int plan_add(plan *p, const job *j, kaun_error *err) {
  if (p->njobs == p->cap) {
    size_t cap = p->cap ? p->cap * 2 : 64;
    job *grown = realloc(p->jobs, cap * sizeof *grown);
    if (!grown) return kaun__error_nomem(err, "planning reads");
    p->jobs = grown;
    p->cap = cap;
  }
  p->jobs[p->njobs++] = *j;
  p->bytes += j->len;
  if ((j->cast || !j->dst) && j->len > p->scratch) p->scratch = j->len;
  if (j->sh->inflight > p->threads) p->threads = j->sh->inflight;
  if (j->sh->map_state != 1) p->all_mapped = false;
  return KAUN_OK;
}

/* Splits `len` bytes at `offset` into chunk-sized jobs (whole elements). */
static int plan_range(plan *p, shard *sh, uint64_t offset, size_t len, char *dst, size_t out,
                      kaun_dtype from, kaun_dtype to, kaun_error *err) {
  bool cast = from != to;
  unsigned in_elem = kaun_dtype_bits(from) / 8, out_elem = kaun_dtype_bits(to) / 8;
  uint64_t chunk = sh->chunk ? sh->chunk : ((uint64_t)8 << 20);
  if (in_elem > 1) chunk -= chunk % in_elem;
  if (!chunk) chunk = in_elem ? in_elem : 1;
  for (size_t done = 0; done < len;) {
    size_t n = len - done < chunk ? len - done : (size_t)chunk;
    size_t dst_at = cast && in_elem ? done / in_elem * out_elem : done;
    job j = {sh, offset + done, n, dst ? dst + dst_at : NULL, out, cast, from, to};
    int rc = plan_add(p, &j, err);
    if (rc) return rc;
    done += n;
  }
  return KAUN_OK;
}

/* Hands a finished tensor to the streaming callback. */
static int deliver(run_state *rs, size_t out, kaun_error *err) {
  if (!rs->opts || !rs->opts->on_tensor) return KAUN_OK;
  pthread_mutex_lock(&rs->cb_lock);
  int stop = rs->opts->on_tensor(rs->names[out], rs->out[out], rs->opts->user);
  pthread_mutex_unlock(&rs->cb_lock);
  if (stop) {
    kaun_io_cancel(rs->io);
    return kaun__error_set(err, KAUN_ECANCELED, "canceled by the tensor callback at '%s'",
                           rs->names[out]);
  }
  return KAUN_OK;
}

static void *worker(void *arg) {
  run_state *rs = arg;
  char *scratch = NULL;
  for (;;) {
    size_t i = atomic_fetch_add(&rs->next, 1);
    if (i >= rs->p->njobs || atomic_load(&rs->failed)) break;
    job *j = &rs->p->jobs[i];
    kaun_error e = KAUN_ERROR_INIT;
    int rc = KAUN_OK;
    bool to_scratch = j->cast || !j->dst; /* a cast, or a check that keeps nothing */
    if (to_scratch && !scratch && !(scratch = malloc(rs->p->scratch ? rs->p->scratch : 1)))
      rc = kaun__error_nomem(&e, "reading tensors");
    if (!rc)
      rc = kaun_object_read_io(j->sh->obj, j->offset, to_scratch ? scratch : j->dst, j->len, rs->io,
                               &e);
    if (!rc && j->cast) {
      unsigned bits = kaun_dtype_bits(j->from);
      rc = kaun_cast(j->from, scratch, j->to, j->dst, bits ? j->len * 8 / bits : 0, &e);
    }
    if (!rc && atomic_fetch_sub(&rs->remaining[j->out], 1) == 1) rc = deliver(rs, j->out, &e);
    if (rc) {
      int zero = 0;
      if (atomic_compare_exchange_strong(&rs->failed, &zero, 1)) rs->error = e;
      kaun_io_cancel(rs->io); /* the other threads' transfers stop too */
    }
  }
  free(scratch);
  return NULL;
}

static int run_plan(run_state *rs, kaun_error *err) {
  plan *p = rs->p;
  if (!p->njobs) return KAUN_OK;
  kaun_io_expect(rs->io, p->bytes);
  unsigned n = p->threads ? p->threads : 1;
  if (n > MAX_THREADS) n = MAX_THREADS;
  if (n > p->njobs) n = (unsigned)p->njobs;
  uint64_t chunk = p->jobs[0].sh->chunk;
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

/* Plans a slice: one read per contiguous run (a view when it is one run
 * of a mapping). */
static int plan_slice(kaun_reader *r, const request *q, unsigned flags, plan *p, size_t out,
                      kaun_tensor **t, kaun_error *err) {
  shard *sh = &r->shards[r->entries[q->entry].shard];
  kaun_safetensors_info in;
  kaun_safetensors_info_at(sh->st, r->entries[q->entry].tensor, &in);
  if (q->nranges > in.ndim)
    return kaun__error_set(err, KAUN_EINVAL, "tensor '%s' has %zu dimensions; %zu ranges given",
                           in.name, in.ndim, q->nranges);
  unsigned bits = kaun_dtype_bits(in.dtype);
  if (bits % 8)
    return kaun__error_set(err, KAUN_ENOTSUP,
                           "tensor '%s' is %s, narrower than a byte: kaun slices whole bytes only",
                           in.name, kaun_dtype_name(in.dtype));
  uint64_t shape[KAUN_MAX_DIMS], start[KAUN_MAX_DIMS];
  for (size_t d = 0; d < in.ndim; d++) {
    kaun_range g = d < q->nranges ? q->ranges[d] : (kaun_range){0, in.shape[d]};
    if (g.start > g.stop || g.stop > in.shape[d])
      return kaun__error_set(err, KAUN_EINVAL,
                             "tensor '%s': range %llu:%llu is outside dimension %zu (size %llu)",
                             in.name, (unsigned long long)g.start, (unsigned long long)g.stop, d,
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
  uint64_t idx[KAUN_MAX_DIMS] = {0};
  for (uint64_t k = 0; k < runs && total; k++) {
    uint64_t off = base;
    for (size_t d = 0; d < in.ndim; d++) off += (start[d] + (d < first ? idx[d] : 0)) * stride[d];
    char *at = dst + k * run;
    if (map) {
      memcpy(at, (const char *)kaun_buffer_data(map) + off, (size_t)run);
    } else if ((rc = plan_range(p, sh, off, (size_t)run, at, out, in.dtype, in.dtype, err))) {
      goto fail;
    }
    for (size_t d = first; d-- > 0;) { /* the next index, last dimension fastest */
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
  }
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
  plan p = {NULL, 0, 0, 0, 0, 0, true};
  run_state rs = {&p,    0,    0,    KAUN_ERROR_INIT,          NULL, out,
                  names, opts, NULL, PTHREAD_MUTEX_INITIALIZER};
  kaun_io *own_io = NULL;
  int rc = KAUN_OK;
  for (size_t i = 0; i < n; i++) out[i] = NULL;
  rs.io = opts ? opts->io : NULL;
  if (!rs.io && (rc = kaun_context_new_io(r->ctx, &own_io, err))) return rc;
  if (!rs.io) rs.io = own_io;
  size_t *first_job = calloc(n + 1, sizeof *first_job);
  rs.remaining = calloc(n + 1, sizeof *rs.remaining);
  if (!first_job || !rs.remaining) rc = kaun__error_nomem(err, "loading tensors");
  for (size_t i = 0; i < n && !rc; i++) {
    first_job[i] = p.njobs;
    rc = reqs[i].nranges || reqs[i].ranges ? plan_slice(r, &reqs[i], flags, &p, i, &out[i], err)
                                           : plan_whole(r, &reqs[i], flags, &p, i, &out[i], err);
  }
  if (!rc) {
    first_job[n] = p.njobs;
    for (size_t i = 0; i < n; i++) atomic_init(&rs.remaining[i], first_job[i + 1] - first_job[i]);
    for (size_t i = 0; i < n && !rc; i++) /* tensors that needed no reads are ready now */
      if (first_job[i + 1] == first_job[i]) rc = deliver(&rs, i, err);
  }
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
  free(first_job);
  free(rs.remaining);
  free(p.jobs);
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
  plan p = {NULL, 0, 0, 0, 0, 0, false};
  run_state rs = {&p,   0,    0,    KAUN_ERROR_INIT,          NULL, NULL,
                  NULL, NULL, NULL, PTHREAD_MUTEX_INITIALIZER};
  kaun_io *own_io = NULL;
  int rc = KAUN_OK;
  rs.io = opts ? opts->io : NULL;
  if (!rs.io && (rc = kaun_context_new_io(r->ctx, &own_io, err))) return rc;
  if (!rs.io) rs.io = own_io;
  atomic_size_t remaining = 0;
  rs.remaining = &remaining;
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
    if (len > SIZE_MAX) {
      rc = kaun__error_set(err, KAUN_ENOMEM, "%s is too large for this machine", sh->uri);
      break;
    }
    rc = plan_range(&p, sh, start, (size_t)len, NULL, 0, KAUN_DTYPE_U8, KAUN_DTYPE_U8, err);
  }
  atomic_store(&remaining, p.njobs + 1); /* never reaches 0: no tensor to hand over */
  if (!rc) rc = run_plan(&rs, err);
  free(p.jobs);
  kaun_io_free(own_io);
  pthread_mutex_destroy(&rs.cb_lock);
  return rc;
}

/* ---- is the file what kaun would write? ------------------------------------------------ */

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
  long md = kaun_reader_metadata_count(r);
  if (!rc && md >= 0) {
    kaun__flat_mark_metadata(flat);
    for (long i = 0; i < md && !rc; i++)
      rc = kaun_flat_set_metadata_n(flat, kaun_reader_metadata_key(r, (size_t)i),
                                    kaun_reader_metadata_key_length(r, (size_t)i),
                                    kaun_reader_metadata_value(r, (size_t)i),
                                    kaun_reader_metadata_value_length(r, (size_t)i), err);
  }
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
