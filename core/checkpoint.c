/* Checkpoints: save a tree, load with or without a template, follow
 * sharded indexes.  Local files are mapped; matching dtypes are returned
 * as zero-copy views, or copied with parallel preads on request. */
#include "index.h"
#include "json.h"
#include "storage_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define INDEX_NAME "model.safetensors.index.json"
#define SINGLE_NAME "model.safetensors"
#define MAX_INDEX_BYTES (64u << 20)

typedef struct shard {
  char *uri;
  kaun_object *obj;
  kaun_safetensors *st;
  kaun_buffer *map;
} shard;

typedef struct source {
  kaun_context *ctx;
  shard *shards;
  size_t nshards;
  bool sharded;
  /* sharded: the weight map */
  size_t wm_count;
  char **wm_names;
  size_t *wm_shard;
  kaun__index wm_index;
  kaun__json_doc *doc;
} source;

static void source_close(source *src) {
  for (size_t i = 0; i < src->nshards; i++) {
    free(src->shards[i].uri);
    kaun_safetensors_free(src->shards[i].st);
    kaun_buffer_unref(src->shards[i].map);
    kaun_object_close(src->shards[i].obj);
  }
  free(src->shards);
  free(src->wm_names);
  free(src->wm_shard);
  kaun__index_free(&src->wm_index);
  kaun__json_free(src->doc);
  memset(src, 0, sizeof *src);
}

/* Opens (or adopts `obj`) and parses one shard. */
static int shard_open(kaun_context *ctx, shard *sh, kaun_object *obj, kaun_error *err) {
  int rc = obj ? KAUN_OK : kaun_object_open(ctx, sh->uri, &obj, err);
  if (rc) return rc;
  sh->obj = obj;
  if ((rc = kaun_object_map(obj, &sh->map, err))) return rc;
  return kaun_safetensors_parse(kaun_buffer_data(sh->map), kaun_buffer_size(sh->map), sh->uri,
                                &sh->st, err);
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

static char *child_uri(const char *uri, const char *name) {
  const char *chain = strstr(uri, "::");
  size_t left = chain ? (size_t)(chain - uri) : strlen(uri);
  return join_uri(uri, left, name, chain ? chain : "");
}

/* The URI of `name` beside the object at `uri`. */
static char *sibling_uri(const char *uri, const char *name) {
  const char *chain = strstr(uri, "::");
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

static bool safe_shard_name(const char *s) {
  if (strstr(s, "://")) return true; /* an explicit URI: the index author chose it */
  if (!*s || s[0] == '/') return false;
  for (const char *p = s; *p;) {
    const char *slash = strchr(p, '/');
    size_t n = slash ? (size_t)(slash - p) : strlen(p);
    if (n == 0 || (n == 2 && p[0] == '.' && p[1] == '.')) return false;
    if (!slash) break;
    p = slash + 1;
  }
  return true;
}

static int open_index(const char *index_uri, source *src, kaun_error *err) {
  char *text = NULL, **names = NULL;
  size_t len;
  int rc = kaun_storage_read_all(src->ctx, index_uri, MAX_INDEX_BYTES, &text, &len, err);
  if (rc) return rc;
  src->sharded = true;
  rc = kaun__json_parse(text, len, index_uri, KAUN_EINDEX, &src->doc, err);
  if (rc == KAUN_EHEADER_UTF8 || rc == KAUN_EDUPLICATE) {
    rc = KAUN_EINDEX; /* the index is at fault, whatever the JSON rule */
    if (err) err->code = rc;
  }
  if (rc) goto done;
  kaun__json *root = kaun__json_root(src->doc);
  kaun__json *wm = kaun__json_get(root, "weight_map");
  if (!wm || wm->type != KAUN__JSON_OBJECT) {
    rc = kaun__error_set(err, KAUN_EINDEX,
                         "%s: there is no \"weight_map\" object mapping tensor names to shard "
                         "files",
                         index_uri);
    goto done;
  }
  src->wm_count = wm->count;
  src->wm_names = calloc(wm->count + 1, sizeof *src->wm_names);
  src->wm_shard = calloc(wm->count + 1, sizeof *src->wm_shard);
  names = calloc(wm->count + 1, sizeof *names);
  if (!src->wm_names || !src->wm_shard || !names) {
    rc = kaun__error_nomem(err, "reading a sharded index");
    goto done;
  }
  size_t i = 0;
  for (kaun__json *m = wm->child; m; m = m->next, i++) {
    if (m->type != KAUN__JSON_STRING || !safe_shard_name(m->text)) {
      rc = kaun__error_set(err, KAUN_EINDEX,
                           "%s: line %u: the shard of tensor '%s' must be a file name relative to "
                           "the index (no '..'), or a URI",
                           index_uri, m->line, m->key);
      goto done;
    }
    src->wm_names[i] = (char *)m->key;
    names[i] = (char *)m->text;
    if (!kaun__index_add(&src->wm_index, src->wm_names, i + 1, i)) {
      rc = kaun__error_nomem(err, "reading a sharded index");
      goto done;
    }
  }
  /* distinct shard files, sorted so shards load in their numbered order */
  qsort(names, wm->count, sizeof *names, cmp_str);
  size_t distinct = 0;
  for (i = 0; i < wm->count; i++)
    if (!distinct || strcmp(names[distinct - 1], names[i]) != 0) names[distinct++] = names[i];
  src->shards = calloc(distinct + 1, sizeof *src->shards);
  if (!src->shards) {
    rc = kaun__error_nomem(err, "reading a sharded index");
    goto done;
  }
  for (i = 0; i < distinct; i++) {
    shard *sh = &src->shards[src->nshards++];
    sh->uri = strstr(names[i], "://") ? strdup(names[i]) : sibling_uri(index_uri, names[i]);
    if (!sh->uri) {
      rc = kaun__error_nomem(err, "reading a sharded index");
      goto done;
    }
    if ((rc = shard_open(src->ctx, sh, NULL, err))) {
      kaun__error_prefix(err, "shard of %s: ", index_uri);
      goto done;
    }
  }
  /* map each weight_map entry to its shard and check the tensor is there */
  i = 0;
  for (kaun__json *m = wm->child; m; m = m->next, i++) {
    char *key = (char *)m->text;
    char **found = bsearch(&key, names, distinct, sizeof *names, cmp_str);
    size_t s = (size_t)(found - names);
    src->wm_shard[i] = s;
    if (kaun_safetensors_find(src->shards[s].st, m->key) < 0) {
      rc = kaun__error_set(err, KAUN_EINDEX,
                           "%s: line %u: the index puts tensor '%s' in '%s', but that shard does "
                           "not contain it",
                           index_uri, m->line, m->key, src->shards[s].uri);
      goto done;
    }
  }
done:
  free(text);
  free(names);
  return rc;
}

static int open_single(const char *uri, kaun_object *obj, source *src, kaun_error *err) {
  src->shards = calloc(1, sizeof *src->shards);
  if (!src->shards || !(src->shards[0].uri = strdup(uri))) {
    kaun_object_close(obj);
    return kaun__error_nomem(err, "opening a checkpoint");
  }
  src->nshards = 1;
  return shard_open(src->ctx, &src->shards[0], obj, err);
}

/* Opens "the model at `uri`": a file, an index, or a folder holding
 * model.safetensors or, else, the index. */
static int source_open(kaun_context *ctx, const char *uri, source *src, kaun_error *err) {
  memset(src, 0, sizeof *src);
  src->ctx = ctx;
  kaun_object *obj = NULL;
  int rc = kaun_object_open(ctx, uri, &obj, err);
  bool looks_like_file = ends_with(uri, ".safetensors") || ends_with(uri, ".json");
  if (rc == KAUN_OK) {
    if (ends_with(uri, ".json")) {
      kaun_object_close(obj);
      rc = open_index(uri, src, err);
    } else {
      rc = open_single(uri, obj, src, err);
    }
  } else if (rc == KAUN_EISDIR || (rc == KAUN_ENOENT && !looks_like_file)) {
    kaun_error first = err ? *err : (kaun_error)KAUN_ERROR_INIT;
    char *single = child_uri(uri, SINGLE_NAME), *index = child_uri(uri, INDEX_NAME);
    if (!single || !index) {
      rc = kaun__error_nomem(err, "opening a checkpoint");
    } else if ((rc = kaun_object_open(ctx, single, &obj, err)) == KAUN_OK) {
      rc = open_single(single, obj, src, err);
    } else if (rc == KAUN_ENOENT && (rc = kaun_object_open(ctx, index, &obj, err)) == KAUN_OK) {
      kaun_object_close(obj);
      rc = open_index(index, src, err);
    } else if (rc == KAUN_ENOENT) {
      if (first.code == KAUN_EISDIR)
        rc = kaun__error_set(err, KAUN_ENOENT,
                             "'%s' is a directory without " SINGLE_NAME " or " INDEX_NAME, uri);
      else if (err)
        *err = first; /* nothing there at all: say so as the backend did */
    }
    free(single);
    free(index);
  }
  if (rc) source_close(src);
  return rc;
}

/* Where a tensor lives: false when the checkpoint does not have it. */
static bool source_lookup(const source *src, const char *name, size_t *sh, size_t *idx) {
  size_t s = 0;
  if (src->sharded) {
    long w = kaun__index_find(&src->wm_index, src->wm_names, name, strlen(name));
    if (w < 0) return false;
    s = src->wm_shard[w];
  }
  long t = kaun_safetensors_find(src->shards[s].st, name);
  if (t < 0) return false;
  *sh = s;
  *idx = (size_t)t;
  return true;
}

/* ---- materialising tensors ------------------------------------------------ */

typedef struct request {
  size_t shard;
  size_t tensor;
  kaun_dtype dtype; /* wanted */
} request;

typedef struct read_job {
  kaun_object *obj;
  uint64_t offset;
  char *dst;
  size_t len;
} read_job;

typedef struct read_pool {
  read_job *jobs;
  size_t njobs;
  atomic_size_t next;
  atomic_int failed;
  kaun_error error; /* the first failure, written once */
} read_pool;

#define CHUNK_BYTES ((size_t)8 << 20)

static void *read_worker(void *arg) {
  read_pool *pool = arg;
  for (;;) {
    size_t i = atomic_fetch_add(&pool->next, 1);
    if (i >= pool->njobs || atomic_load(&pool->failed)) break;
    read_job *j = &pool->jobs[i];
    kaun_error e = KAUN_ERROR_INIT;
    if (kaun_object_read(j->obj, j->offset, j->dst, j->len, &e) != KAUN_OK) {
      int zero = 0;
      if (atomic_compare_exchange_strong(&pool->failed, &zero, 1)) pool->error = e;
    }
  }
  return NULL;
}

static int run_reads(read_job *jobs, size_t njobs, uint64_t total, kaun_error *err) {
  read_pool pool = {jobs, njobs, 0, 0, KAUN_ERROR_INIT};
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  size_t nthreads = total < 2 * CHUNK_BYTES ? 1 : (size_t)(cpus < 1 ? 1 : cpus > 8 ? 8 : cpus);
  if (nthreads > njobs) nthreads = njobs ? njobs : 1;
  pthread_t threads[8];
  size_t started = 0;
  for (size_t i = 1; i < nthreads; i++) {
    if (pthread_create(&threads[started], NULL, read_worker, &pool) != 0) break;
    started++;
  }
  read_worker(&pool);
  for (size_t i = 0; i < started; i++) pthread_join(threads[i], NULL);
  if (atomic_load(&pool.failed)) {
    if (err) *err = pool.error;
    return pool.error.code ? pool.error.code : KAUN_EIO;
  }
  return KAUN_OK;
}

static int materialize(source *src, const request *reqs, size_t n, unsigned flags,
                       kaun_tensor **out, kaun_error *err) {
  int rc = KAUN_OK;
  read_job *jobs = NULL;
  size_t njobs = 0, cap = 0;
  uint64_t total = 0;
  for (size_t i = 0; i < n; i++) out[i] = NULL;
  for (size_t i = 0; i < n && !rc; i++) {
    shard *sh = &src->shards[reqs[i].shard];
    bool copy = (flags & KAUN_LOAD_COPY) != 0;
    kaun_safetensors_info in;
    kaun_safetensors_info_at(sh->st, reqs[i].tensor, &in);
    size_t offset = (size_t)(kaun_safetensors_data_start(sh->st) + in.begin);
    size_t nbytes = (size_t)(in.end - in.begin);
    const unsigned char *bytes = (const unsigned char *)kaun_buffer_data(sh->map) + offset;
    unsigned elem = kaun_dtype_bits(in.dtype) / 8;
    bool aligned = elem == 0 || ((uintptr_t)bytes % elem) == 0;
    if (reqs[i].dtype == in.dtype && !(flags & KAUN_LOAD_COPY) && aligned) {
      rc = kaun__tensor_view_unchecked(in.dtype, in.ndim, in.shape, sh->map, offset, nbytes,
                                       &out[i], err);
    } else if (reqs[i].dtype == in.dtype && copy) {
      rc = kaun__tensor_new_uninit(in.dtype, in.ndim, in.shape, &out[i], err);
      void *dst;
      if (!rc) rc = kaun_tensor_data_mut(out[i], &dst, err);
      for (size_t done = 0; !rc && done < nbytes; done += CHUNK_BYTES) {
        if (njobs == cap) {
          cap = cap ? cap * 2 : 64;
          read_job *nj = realloc(jobs, cap * sizeof *nj);
          if (!nj) {
            rc = kaun__error_nomem(err, "planning reads");
            break;
          }
          jobs = nj;
        }
        size_t len = nbytes - done < CHUNK_BYTES ? nbytes - done : CHUNK_BYTES;
        jobs[njobs++] = (read_job){sh->obj, offset + done, (char *)dst + done, len};
        total += len;
      }
    } else {
      kaun_tensor *view;
      rc = kaun__tensor_view_unchecked(in.dtype, in.ndim, in.shape, sh->map, offset, nbytes, &view,
                                       err);
      if (!rc) {
        rc = reqs[i].dtype == in.dtype
                 ? kaun_tensor_new_copy(in.dtype, in.ndim, in.shape, bytes, nbytes, &out[i], err)
                 : kaun_tensor_cast(view, reqs[i].dtype, &out[i], err);
        kaun_tensor_free(view);
        if (rc) kaun__error_prefix(err, "tensor '%s' in '%s': ", in.name, sh->uri);
      }
    }
  }
  if (!rc && njobs) rc = run_reads(jobs, njobs, total, err);
  free(jobs);
  if (rc)
    for (size_t i = 0; i < n; i++) {
      kaun_tensor_free(out[i]);
      out[i] = NULL;
    }
  return rc;
}

/* ---- loading ---------------------------------------------------------------- */

/* Uses `ctx`, or makes a context from the default config for one call. */
static int context_or_default(kaun_context *ctx, kaun_context **own, kaun_context **use,
                              kaun_error *err) {
  *own = NULL;
  *use = ctx;
  if (ctx) return KAUN_OK;
  int rc = kaun_context_new(NULL, own, err);
  *use = *own;
  return rc;
}

int kaun_checkpoint_load_flat(kaun_context *ctx, const char *path, unsigned flags, kaun_flat **out,
                              kaun_error *err) {
  *out = NULL;
  kaun_context *own, *use;
  int rc = context_or_default(ctx, &own, &use, err);
  if (rc) return rc;
  source src;
  rc = source_open(use, path, &src, err);
  if (rc) {
    kaun_context_free(own);
    return rc;
  }
  size_t total = 0;
  for (size_t s = 0; s < src.nshards; s++) total += kaun_safetensors_count(src.shards[s].st);
  request *reqs = malloc((total ? total : 1) * sizeof *reqs);
  kaun_tensor **tensors = calloc(total ? total : 1, sizeof *tensors);
  const char **names = malloc((total ? total : 1) * sizeof *names);
  kaun_flat *flat = NULL;
  size_t n = 0;
  if (!reqs || !tensors || !names) {
    rc = kaun__error_nomem(err, "loading a checkpoint");
    goto done;
  }
  for (size_t s = 0; s < src.nshards; s++) {
    kaun_safetensors *st = src.shards[s].st;
    for (size_t t = 0; t < kaun_safetensors_count(st); t++) {
      kaun_safetensors_info in;
      kaun_safetensors_info_at(st, t, &in);
      size_t ws, wt;
      if (src.sharded && (!source_lookup(&src, in.name, &ws, &wt) || ws != s)) continue;
      reqs[n] = (request){s, t, in.dtype};
      names[n++] = in.name;
    }
  }
  if ((rc = materialize(&src, reqs, n, flags, tensors, err))) goto done;
  if ((rc = kaun_flat_new(&flat, err))) goto done;
  for (size_t i = 0; i < n && !rc; i++) {
    rc = kaun_flat_add(flat, names[i], tensors[i], err);
    tensors[i] = NULL;
  }
  kaun_safetensors *first = src.nshards ? src.shards[0].st : NULL;
  if (!rc && first && kaun_safetensors_metadata_count(first) >= 0) {
    kaun__flat_mark_metadata(flat);
    for (long i = 0; i < kaun_safetensors_metadata_count(first) && !rc; i++)
      rc = kaun_flat_set_metadata(flat, kaun_safetensors_metadata_key(first, (size_t)i),
                                  kaun_safetensors_metadata_value(first, (size_t)i), err);
  }
done:
  for (size_t i = 0; i < n; i++) kaun_tensor_free(tensors[i]);
  free(reqs);
  free(tensors);
  free(names);
  source_close(&src);
  kaun_context_free(own);
  if (rc) {
    kaun_flat_free(flat);
    return rc;
  }
  *out = flat;
  return KAUN_OK;
}

int kaun_checkpoint_load_tree(kaun_context *ctx, const char *path, unsigned flags, kaun_ptree **out,
                              kaun_error *err) {
  *out = NULL;
  kaun_flat *flat;
  int rc = kaun_checkpoint_load_flat(ctx, path, flags, &flat, err);
  if (rc) return rc;
  rc = kaun_ptree_unflatten(flat, out, err);
  if (rc) kaun__error_prefix(err, "%s: ", path);
  kaun_flat_free(flat);
  return rc;
}

typedef struct template_ctx {
  kaun_flat *leaves; /* borrowed tensors */
  kaun_error *err;
  int rc;
} template_ctx;

static int collect_leaf(const char *path, kaun_tensor *t, void *c) {
  template_ctx *tc = c;
  tc->rc = kaun_flat_add(tc->leaves, path, t, tc->err);
  return tc->rc ? 1 : 0;
}

/* A new tree shaped like `like`, whose leaves take tensors[*next...]. */
static int build_like(const kaun_ptree *like, kaun_tensor **tensors, size_t *next, kaun_ptree **out,
                      kaun_error *err) {
  kaun_ptree_kind kind = kaun_ptree_kind_of(like);
  if (kind == KAUN_PTREE_TENSOR) {
    kaun_tensor *t = tensors[*next];
    tensors[(*next)++] = NULL;
    return kaun_ptree_new_leaf(t, out, err);
  }
  int rc =
      kind == KAUN_PTREE_RECORD ? kaun_ptree_new_record(out, err) : kaun_ptree_new_list(out, err);
  for (size_t i = 0; !rc && i < kaun_ptree_count(like); i++) {
    kaun_ptree *child;
    rc = build_like(kaun_ptree_child(like, i), tensors, next, &child, err);
    if (!rc)
      rc = kind == KAUN_PTREE_RECORD
               ? kaun_ptree_record_add(*out, kaun_ptree_key(like, i), child, err)
               : kaun_ptree_list_append(*out, child, err);
  }
  if (rc) {
    kaun_ptree_free(*out);
    *out = NULL;
  }
  return rc;
}

int kaun_checkpoint_load(kaun_context *ctx, const char *path, const kaun_ptree *like,
                         unsigned flags, kaun_ptree **out, kaun_error *err) {
  *out = NULL;
  if (kaun_ptree_kind_of(like) == KAUN_PTREE_TENSOR)
    return kaun__error_set(err, KAUN_EINVAL,
                           "the template's root is a tensor, which has no name to load by");
  template_ctx tc = {NULL, err, 0};
  int rc = kaun__flat_new_borrowed(&tc.leaves, err);
  if (rc) return rc;
  if (kaun_ptree_foreach(like, collect_leaf, &tc)) {
    rc = tc.rc ? tc.rc : kaun__error_nomem(err, "walking the template");
    kaun_flat_free(tc.leaves);
    return rc;
  }
  kaun_context *own, *use;
  if ((rc = context_or_default(ctx, &own, &use, err))) {
    kaun_flat_free(tc.leaves);
    return rc;
  }
  source src;
  if ((rc = source_open(use, path, &src, err))) {
    kaun_flat_free(tc.leaves);
    kaun_context_free(own);
    return rc;
  }
  size_t n = kaun_flat_count(tc.leaves);
  request *reqs = NULL;
  kaun_tensor **tensors = NULL;
  reqs = calloc(n ? n : 1, sizeof *reqs);
  tensors = calloc(n ? n : 1, sizeof *tensors);
  if (!reqs || !tensors) {
    rc = kaun__error_nomem(err, "loading a checkpoint");
    goto done;
  }
  size_t missing = 0;
  const char *first_missing = NULL;
  for (size_t i = 0; i < n; i++) {
    const char *name = kaun_flat_name(tc.leaves, i);
    const kaun_tensor *want = kaun_flat_tensor(tc.leaves, i);
    size_t s, t;
    if (!source_lookup(&src, name, &s, &t)) {
      if (!missing++) first_missing = name;
      continue;
    }
    kaun_safetensors_info in;
    kaun_safetensors_info_at(src.shards[s].st, t, &in);
    if (in.ndim != kaun_tensor_ndim(want) ||
        memcmp(in.shape, kaun_tensor_shape(want), in.ndim * sizeof(uint64_t)) != 0) {
      char a[128], b[128];
      rc = kaun__error_set(
          err, KAUN_ESHAPE, "%s: tensor '%s' has shape %s in the file but %s in the template",
          src.shards[s].uri, name, kaun_shape_format(in.ndim, in.shape, a, sizeof a),
          kaun_shape_format(kaun_tensor_ndim(want), kaun_tensor_shape(want), b, sizeof b));
      goto done;
    }
    reqs[i] = (request){s, t, kaun_tensor_dtype(want)};
  }
  if (missing) {
    if (missing == 1)
      rc =
          kaun__error_set(err, KAUN_EKEY, "%s: the template's tensor '%s' is not in the checkpoint",
                          path, first_missing);
    else
      rc = kaun__error_set(err, KAUN_EKEY,
                           "%s: the template's tensor '%s' is not in the checkpoint (and %zu "
                           "more are missing)",
                           path, first_missing, missing - 1);
    goto done;
  }
  if ((rc = materialize(&src, reqs, n, flags, tensors, err))) goto done;
  size_t next = 0;
  rc = build_like(like, tensors, &next, out, err);
done:
  if (tensors)
    for (size_t i = 0; i < n; i++) kaun_tensor_free(tensors[i]);
  free(tensors);
  free(reqs);
  source_close(&src);
  kaun_context_free(own);
  kaun_flat_free(tc.leaves);
  return rc;
}

/* ---- saving ----------------------------------------------------------------- */

/* The header, then each tensor's bytes in on-disk order, as one stream. */
typedef struct save_stream {
  const kaun_flat *flat;
  const char *header;
  size_t header_size;
  const size_t *order;
  uint64_t *starts; /* stream offset of each tensor in on-disk order */
  size_t count;
  uint64_t size;
} save_stream;

static size_t segment_at(const save_stream *ss, uint64_t off) {
  size_t lo = 0, hi = ss->count; /* last tensor whose start <= off */
  while (hi - lo > 1) {
    size_t mid = (lo + hi) / 2;
    if (ss->starts[mid] <= off)
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}

static int stream_view(void *c, uint64_t off, const void **ptr, size_t *len) {
  const save_stream *ss = c;
  if (off < ss->header_size) {
    *ptr = ss->header + off;
    *len = ss->header_size - (size_t)off;
    return KAUN_OK;
  }
  if (!ss->count) return KAUN_EINVAL;
  size_t i = segment_at(ss, off);
  const kaun_tensor *t = kaun_flat_tensor(ss->flat, ss->order[i]);
  uint64_t within = off - ss->starts[i];
  if (within >= kaun_tensor_nbytes(t)) { /* an empty tensor: look further */
    while (i + 1 < ss->count && ss->starts[i + 1] <= off) i++;
    t = kaun_flat_tensor(ss->flat, ss->order[i]);
    within = off - ss->starts[i];
    if (within >= kaun_tensor_nbytes(t)) return KAUN_EINVAL;
  }
  *ptr = (const char *)kaun_tensor_data(t) + within;
  *len = kaun_tensor_nbytes(t) - (size_t)within;
  return KAUN_OK;
}

static int stream_read(void *c, uint64_t off, void *dst, size_t len, kaun_error *err) {
  char *d = dst;
  while (len) {
    const void *p;
    size_t n;
    if (stream_view(c, off, &p, &n) != KAUN_OK)
      return kaun__error_set(err, KAUN_EINVAL, "read past the end of a save stream");
    if (n > len) n = len;
    memcpy(d, p, n);
    d += n;
    off += n;
    len -= n;
  }
  return KAUN_OK;
}

int kaun_safetensors_save(kaun_context *ctx, const char *uri, const kaun_flat *flat,
                          kaun_error *err) {
  for (size_t i = 0; i < kaun_flat_count(flat); i++)
    if (!kaun_flat_tensor(flat, i))
      return kaun__error_set(err, KAUN_EINVAL,
                             "cannot save '%s': tensor '%s' was taken out of the list", uri,
                             kaun_flat_name(flat, i));
  kaun_context *own, *use;
  int rc = context_or_default(ctx, &own, &use, err);
  if (rc) return rc;
  save_stream ss = {flat, NULL, 0, NULL, NULL, kaun_flat_count(flat), 0};
  char *header = NULL, *target = NULL;
  size_t *order = NULL;
  uint64_t data_size;
  rc = kaun_safetensors_serialize_header(flat, &header, &ss.header_size, &data_size, &order, err);
  if (rc) goto done;
  ss.header = header;
  ss.order = order;
  ss.starts = malloc((ss.count ? ss.count : 1) * sizeof *ss.starts);
  if (!ss.starts) {
    rc = kaun__error_nomem(err, "saving");
    goto done;
  }
  uint64_t off = ss.header_size;
  for (size_t i = 0; i < ss.count; i++) {
    ss.starts[i] = off;
    off += kaun_tensor_nbytes(kaun_flat_tensor(flat, order[i]));
  }
  ss.size = off;
  /* a folder means the model there */
  kaun_object *probe;
  kaun_error ignored = KAUN_ERROR_INIT;
  int probe_rc = kaun_object_open(use, uri, &probe, &ignored);
  if (probe_rc == KAUN_OK) kaun_object_close(probe);
  if (probe_rc == KAUN_EISDIR && !(target = child_uri(uri, SINGLE_NAME))) {
    rc = kaun__error_nomem(err, "saving");
    goto done;
  }
  kaun_put_source src = {ss.size, stream_read, stream_view, &ss};
  rc = kaun_storage_put(use, target ? target : uri, &src, err);
done:
  free(target);
  free(ss.starts);
  free(header);
  free(order);
  kaun_context_free(own);
  return rc;
}

int kaun_checkpoint_save(kaun_context *ctx, const char *uri, const kaun_ptree *tree,
                         const kaun_flat *metadata, kaun_error *err) {
  if (kaun_ptree_kind_of(tree) == KAUN_PTREE_TENSOR)
    return kaun__error_set(err, KAUN_EINVAL,
                           "cannot save '%s': the tree's root is a tensor, which has no name", uri);
  template_ctx tc = {NULL, err, 0};
  int rc = kaun__flat_new_borrowed(&tc.leaves, err);
  if (rc) return rc;
  if (kaun_ptree_foreach(tree, collect_leaf, &tc)) {
    rc = tc.rc ? tc.rc : kaun__error_nomem(err, "walking the tree");
    goto done;
  }
  if (metadata && kaun_flat_has_metadata(metadata)) {
    kaun__flat_mark_metadata(tc.leaves);
    for (size_t i = 0; i < kaun_flat_metadata_count(metadata) && !rc; i++)
      rc = kaun_flat_set_metadata(tc.leaves, kaun_flat_metadata_key(metadata, i),
                                  kaun_flat_metadata_value(metadata, i), err);
    if (rc) goto done;
  }
  rc = kaun_safetensors_save(ctx, uri, tc.leaves, err);
done:
  kaun_flat_free(tc.leaves);
  return rc;
}

static int object_read(void *obj, uint64_t offset, void *dst, size_t len, kaun_error *err) {
  return kaun_object_read(obj, offset, dst, len, err);
}

int kaun_safetensors_read(kaun_context *ctx, const char *uri, kaun_safetensors **out,
                          kaun_error *err) {
  *out = NULL;
  kaun_context *own, *use;
  int rc = context_or_default(ctx, &own, &use, err);
  if (rc) return rc;
  kaun_object *obj;
  if (!(rc = kaun_object_open(use, uri, &obj, err))) {
    kaun_stat st = {.struct_size = sizeof st};
    if (!(rc = kaun_object_stat(obj, &st, err)))
      rc = kaun__safetensors_read_via(object_read, obj, st.size, uri, out, err);
    kaun_object_close(obj);
  }
  kaun_context_free(own);
  return rc;
}
