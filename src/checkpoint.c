/* Checkpoints: save a tree, load with or without a template, follow
 * sharded indexes.  Local files are mapped; matching dtypes are returned
 * as zero-copy views, or copied with parallel preads on request. */
#include "index.h"
#include "json.h"

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
  char *path;
  kaun_safetensors *st;
  kaun_buffer *map;
  int fd; /* for KAUN_LOAD_COPY, else -1 */
} shard;

typedef struct source {
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
    free(src->shards[i].path);
    kaun_safetensors_free(src->shards[i].st);
    kaun_buffer_unref(src->shards[i].map);
    if (src->shards[i].fd >= 0) close(src->shards[i].fd);
  }
  free(src->shards);
  free(src->wm_names);
  free(src->wm_shard);
  kaun__index_free(&src->wm_index);
  kaun__json_free(src->doc);
  memset(src, 0, sizeof *src);
}

static int shard_open(shard *sh, unsigned flags, kaun_error *err) {
  sh->fd = -1;
  int rc = kaun_buffer_map_file(sh->path, &sh->map, err);
  if (rc) return rc;
  rc = kaun_safetensors_parse(kaun_buffer_data(sh->map), kaun_buffer_size(sh->map), sh->path,
                              &sh->st, err);
  if (rc) return rc;
  if (flags & KAUN_LOAD_COPY) {
    sh->fd = open(sh->path, O_RDONLY | O_CLOEXEC);
    if (sh->fd < 0) return kaun__error_sys(err, KAUN_EIO, errno, "cannot open '%s'", sh->path);
  }
  return KAUN_OK;
}

static bool ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), m = strlen(suffix);
  return n >= m && strcmp(s + n - m, suffix) == 0;
}

static char *join_path(const char *dir, const char *name) {
  size_t n = strlen(dir) + strlen(name) + 2;
  char *p = malloc(n);
  if (p) snprintf(p, n, "%s/%s", dir, name);
  return p;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool safe_shard_name(const char *s) {
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

static int open_index(const char *index_path, unsigned flags, source *src, kaun_error *err) {
  char *text = NULL, *dir = NULL, **names = NULL;
  size_t len;
  int rc = kaun__read_small_file(index_path, MAX_INDEX_BYTES, &text, &len, err);
  if (rc) return rc;
  src->sharded = true;
  rc = kaun__json_parse(text, len, index_path, KAUN_EINDEX, &src->doc, err);
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
                         index_path);
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
                           "%s: line %u: the shard of tensor '%s' must be a relative file name "
                           "inside the index's directory",
                           index_path, m->line, m->key);
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
  dir = strdup(index_path);
  if (!src->shards || !dir) {
    rc = kaun__error_nomem(err, "reading a sharded index");
    goto done;
  }
  char *slash = strrchr(dir, '/');
  if (slash)
    *slash = '\0';
  else
    strcpy(dir, ".");
  for (i = 0; i < distinct; i++) {
    shard *sh = &src->shards[src->nshards++];
    sh->fd = -1;
    sh->path = join_path(dir, names[i]);
    if (!sh->path) {
      rc = kaun__error_nomem(err, "reading a sharded index");
      goto done;
    }
    if ((rc = shard_open(sh, flags, err))) {
      kaun__error_prefix(err, "shard of %s: ", index_path);
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
                           index_path, m->line, m->key, src->shards[s].path);
      goto done;
    }
  }
done:
  free(text);
  free(dir);
  free(names);
  return rc;
}

static int source_open(const char *path, unsigned flags, source *src, kaun_error *err) {
  memset(src, 0, sizeof *src);
  struct stat sb;
  if (stat(path, &sb) != 0) {
    int e = errno;
    return kaun__error_sys(err, e == ENOENT ? KAUN_ENOENT : KAUN_EIO, e, "cannot open '%s'", path);
  }
  int rc;
  if (S_ISDIR(sb.st_mode)) {
    char *single = join_path(path, SINGLE_NAME), *index = join_path(path, INDEX_NAME);
    if (!single || !index) {
      rc = kaun__error_nomem(err, "opening a checkpoint");
    } else if (access(single, F_OK) == 0) {
      rc = source_open(single, flags, src, err);
    } else if (access(index, F_OK) == 0) {
      rc = source_open(index, flags, src, err);
    } else {
      rc = kaun__error_set(err, KAUN_ENOENT,
                           "'%s' is a directory without " SINGLE_NAME " or " INDEX_NAME, path);
    }
    free(single);
    free(index);
    return rc;
  }
  if (ends_with(path, ".json")) {
    rc = open_index(path, flags, src, err);
  } else {
    src->shards = calloc(1, sizeof *src->shards);
    if (!src->shards) return kaun__error_nomem(err, "opening a checkpoint");
    src->nshards = 1;
    src->shards[0].fd = -1;
    src->shards[0].path = strdup(path);
    rc = src->shards[0].path ? shard_open(&src->shards[0], flags, err)
                             : kaun__error_nomem(err, "opening a checkpoint");
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
  int fd;
  const char *path;
  uint64_t offset;
  char *dst;
  size_t len;
} read_job;

typedef struct read_pool {
  read_job *jobs;
  size_t njobs;
  atomic_size_t next;
  atomic_int failed_errno;
  atomic_size_t failed_job;
} read_pool;

#define CHUNK_BYTES ((size_t)8 << 20)

static void *read_worker(void *arg) {
  read_pool *pool = arg;
  for (;;) {
    size_t i = atomic_fetch_add(&pool->next, 1);
    if (i >= pool->njobs || atomic_load(&pool->failed_errno)) break;
    read_job *j = &pool->jobs[i];
    if (kaun__pread_full(j->fd, j->dst, j->len, j->offset) != 0) {
      int zero = 0;
      if (atomic_compare_exchange_strong(&pool->failed_errno, &zero, errno ? errno : EIO))
        atomic_store(&pool->failed_job, i);
    }
  }
  return NULL;
}

static int run_reads(read_job *jobs, size_t njobs, uint64_t total, kaun_error *err) {
  read_pool pool = {jobs, njobs, 0, 0, 0};
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
  int e = atomic_load(&pool.failed_errno);
  if (e) {
    read_job *j = &jobs[atomic_load(&pool.failed_job)];
    return kaun__error_sys(err, KAUN_EIO, e, "reading %zu bytes at offset %llu of '%s' failed",
                           j->len, (unsigned long long)j->offset, j->path);
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
    } else if (reqs[i].dtype == in.dtype && sh->fd >= 0) {
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
        jobs[njobs++] = (read_job){sh->fd, sh->path, offset + done, (char *)dst + done, len};
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
        if (rc) kaun__error_prefix(err, "tensor '%s' in '%s': ", in.name, sh->path);
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

int kaun_checkpoint_load_flat(const char *path, unsigned flags, kaun_flat **out, kaun_error *err) {
  *out = NULL;
  source src;
  int rc = source_open(path, flags, &src, err);
  if (rc) return rc;
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
  if (rc) {
    kaun_flat_free(flat);
    return rc;
  }
  *out = flat;
  return KAUN_OK;
}

int kaun_checkpoint_load_tree(const char *path, unsigned flags, kaun_ptree **out, kaun_error *err) {
  *out = NULL;
  kaun_flat *flat;
  int rc = kaun_checkpoint_load_flat(path, flags, &flat, err);
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

int kaun_checkpoint_load(const char *path, const kaun_ptree *like, unsigned flags, kaun_ptree **out,
                         kaun_error *err) {
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
  source src;
  if ((rc = source_open(path, flags, &src, err))) {
    kaun_flat_free(tc.leaves);
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
          src.shards[s].path, name, kaun_shape_format(in.ndim, in.shape, a, sizeof a),
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
  kaun_flat_free(tc.leaves);
  return rc;
}

/* ---- saving ----------------------------------------------------------------- */

int kaun_checkpoint_save(const char *path, const kaun_ptree *tree, const kaun_flat *metadata,
                         kaun_error *err) {
  if (kaun_ptree_kind_of(tree) == KAUN_PTREE_TENSOR)
    return kaun__error_set(
        err, KAUN_EINVAL, "cannot save '%s': the tree's root is a tensor, which has no name", path);
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
  struct stat sb;
  char *target = NULL;
  if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
    target = join_path(path, SINGLE_NAME);
    if (!target) {
      rc = kaun__error_nomem(err, "saving a checkpoint");
      goto done;
    }
  }
  rc = kaun_safetensors_save(target ? target : path, tc.leaves, err);
  free(target);
done:
  kaun_flat_free(tc.leaves);
  return rc;
}
