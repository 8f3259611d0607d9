/* Checkpoints: save a tree, load with or without a template, follow
 * sharded indexes.  Loads go through the lazy reader (reader.c): headers
 * by ranged reads, then only the tensors asked for, as zero-copy views of
 * a mapping or read straight into their memory. */
#include "shards.h"
#include "storage_internal.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SINGLE_NAME "model.safetensors"

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

static const kaun_load_options *flags_only(kaun_load_options *o, unsigned flags) {
  memset(o, 0, sizeof *o);
  o->struct_size = sizeof *o;
  o->flags = flags;
  return o;
}

/* The name map of `o`, when its struct is recent enough to carry one. */
static const kaun_name_map *opts_names(const kaun_load_options *o) {
  return o && o->struct_size >= offsetof(kaun_load_options, names) + sizeof o->names ? o->names
                                                                                     : NULL;
}

/* The reader's tensor names, and what `map` makes of them (the names
 * themselves without a map).  Free with free_names. */
typedef struct file_names {
  size_t n;
  const char **orig; /* borrowed from the reader */
  char **mapped;     /* NULL without a map */
  size_t *sorted;    /* indexes, by mapped name: names without NUL bytes only */
  size_t nsorted;
} file_names;

static void free_names(file_names *f) {
  for (size_t i = 0; f->mapped && i < f->n; i++) free(f->mapped[i]);
  free(f->mapped);
  free(f->orig);
  free(f->sorted);
}

static const char *mapped_name(const file_names *f, size_t i) {
  return f->mapped ? f->mapped[i] : f->orig[i];
}

static _Thread_local const file_names *sorting; /* qsort passes no context */

static int cmp_mapped(const void *a, const void *b) {
  return strcmp(mapped_name(sorting, *(const size_t *)a), mapped_name(sorting, *(const size_t *)b));
}

static int file_names_of(kaun_reader *r, const kaun_name_map *map, file_names *f, kaun_error *err) {
  memset(f, 0, sizeof *f);
  f->n = kaun_reader_count(r);
  f->orig = calloc(f->n + 1, sizeof *f->orig);
  f->sorted = calloc(f->n + 1, sizeof *f->sorted);
  if (map) f->mapped = calloc(f->n + 1, sizeof *f->mapped);
  if (!f->orig || !f->sorted || (map && !f->mapped)) return kaun__error_nomem(err, "name map");
  for (size_t i = 0; i < f->n; i++) {
    kaun_reader_tensor t;
    kaun_reader_info(r, i, &t);
    f->orig[i] = t.name;
    /* a name with a NUL byte is no template path: it maps to nothing (a
     * map works on whole C strings and would cut it) */
    bool whole = strlen(t.name) == kaun_reader_name_length(r, i);
    if (whole) f->sorted[f->nsorted++] = i;
    if (map && !(f->mapped[i] = kaun_name_map_apply(map, whole ? t.name : "")))
      return kaun__error_nomem(err, "name map");
  }
  sorting = f;
  qsort(f->sorted, f->nsorted, sizeof *f->sorted, cmp_mapped);
  sorting = NULL;
  return KAUN_OK;
}

/* The file tensor whose mapped name is `want`: its index, -1 when none,
 * -2 (with `err` set) when the map sends two names there. */
static long find_mapped(const file_names *f, const char *uri, const char *want, kaun_error *err) {
  size_t lo = 0, hi = f->nsorted;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (strcmp(mapped_name(f, f->sorted[mid]), want) < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  if (lo == f->nsorted || strcmp(mapped_name(f, f->sorted[lo]), want) != 0) return -1;
  if (lo + 1 < f->nsorted && strcmp(mapped_name(f, f->sorted[lo + 1]), want) == 0) {
    size_t a = f->sorted[lo], b = f->sorted[lo + 1];
    kaun__error_set(err, KAUN_EINVAL,
                    "%s: the name map sends both '%s' and '%s' to the template's '%s': make the "
                    "rules tell them apart",
                    uri, f->orig[a < b ? a : b], f->orig[a < b ? b : a], want);
    return -2;
  }
  return (long)f->sorted[lo];
}

int kaun_checkpoint_load_flat_ex(kaun_context *ctx, const char *uri, const kaun_load_options *opts,
                                 kaun_flat **out, kaun_error *err) {
  *out = NULL;
  kaun_reader *r;
  int rc = kaun_reader_open_io(ctx, uri, opts ? opts->io : NULL, &r, err);
  if (rc) return rc;
  size_t n = kaun_reader_count(r);
  /* names and metadata with their lengths: they may hold NUL bytes */
  const char **names = calloc(n + 1, sizeof *names);
  size_t *lens = calloc(n + 1, sizeof *lens);
  kaun_tensor **tensors = calloc(n + 1, sizeof *tensors);
  kaun_flat *flat = NULL;
  file_names files = {0, NULL, NULL, NULL, 0};
  if (!names || !lens || !tensors) {
    rc = kaun__error_nomem(err, "loading a checkpoint");
    goto done;
  }
  for (size_t i = 0; i < n; i++) {
    kaun_reader_tensor t;
    kaun_reader_info(r, i, &t);
    names[i] = t.name;
    lens[i] = kaun_reader_name_length(r, i);
  }
  const kaun_name_map *map = opts_names(opts);
  if (map) { /* the names it makes must differ: checked before anything is read */
    if ((rc = file_names_of(r, map, &files, err))) goto done;
    for (size_t k = 0; k + 1 < files.nsorted; k++) {
      size_t a = files.sorted[k], b = files.sorted[k + 1];
      if (strcmp(files.mapped[a], files.mapped[b]) == 0) {
        rc = kaun__error_set(err, KAUN_EINVAL,
                             "%s: the name map sends both '%s' and '%s' to '%s': make the rules "
                             "tell them apart",
                             uri, files.orig[a < b ? a : b], files.orig[a < b ? b : a],
                             files.mapped[a]);
        goto done;
      }
    }
  }
  if ((rc = kaun_reader_get_many_n(r, n, names, lens, NULL, opts, tensors, err))) goto done;
  if ((rc = kaun_flat_new(&flat, err))) goto done;
  for (size_t i = 0; i < n && !rc; i++) {
    if (map && strlen(names[i]) == lens[i]) /* a name with a NUL byte stays as it is */
      rc = kaun_flat_add_n(flat, files.mapped[i], strlen(files.mapped[i]), tensors[i], err);
    else
      rc = kaun_flat_add_n(flat, names[i], lens[i], tensors[i], err);
    tensors[i] = NULL;
  }
  if (!rc) rc = kaun__reader_copy_metadata(r, flat, err);
done:
  for (size_t i = 0; tensors && i < n; i++) kaun_tensor_free(tensors[i]);
  free(tensors);
  free(names);
  free(lens);
  free_names(&files);
  kaun_reader_close(r);
  if (rc) {
    kaun_flat_free(flat);
    return rc;
  }
  *out = flat;
  return KAUN_OK;
}

int kaun_checkpoint_load_flat(kaun_context *ctx, const char *uri, unsigned flags, kaun_flat **out,
                              kaun_error *err) {
  kaun_load_options o;
  return kaun_checkpoint_load_flat_ex(ctx, uri, flags_only(&o, flags), out, err);
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

int kaun_checkpoint_load_ex(kaun_context *ctx, const char *path, const kaun_ptree *like,
                            const kaun_load_options *opts, kaun_ptree **out, kaun_error *err) {
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
  kaun_reader *r;
  if ((rc = kaun_reader_open_io(ctx, path, opts ? opts->io : NULL, &r, err))) {
    kaun_flat_free(tc.leaves);
    return rc;
  }
  file_names files = {0, NULL, NULL, NULL, 0};
  size_t n = kaun_flat_count(tc.leaves);
  const char **names = calloc(n + 1, sizeof *names);
  kaun_dtype *dtypes = calloc(n + 1, sizeof *dtypes);
  kaun_tensor **tensors = calloc(n + 1, sizeof *tensors);
  if (!names || !dtypes || !tensors) {
    rc = kaun__error_nomem(err, "loading a checkpoint");
    goto done;
  }
  const kaun_name_map *map = opts_names(opts);
  if ((rc = file_names_of(r, map, &files, err))) goto done;
  size_t missing = 0;
  const char *first_missing = NULL;
  for (size_t i = 0; i < n; i++) {
    const char *name = kaun_flat_name(tc.leaves, i);
    const kaun_tensor *want = kaun_flat_tensor(tc.leaves, i);
    names[i] = name;
    dtypes[i] = kaun_tensor_dtype(want);
    long at = map ? find_mapped(&files, path, name, err) : kaun_reader_find(r, name);
    if (at == -2) {
      rc = KAUN_EINVAL;
      goto done;
    }
    if (at < 0) {
      if (!missing++) first_missing = name;
      continue;
    }
    names[i] = files.orig[at]; /* the file's name for it */
    kaun_reader_tensor in;
    kaun_reader_info(r, (size_t)at, &in);
    if (in.ndim != kaun_tensor_ndim(want) ||
        memcmp(in.shape, kaun_tensor_shape(want), in.ndim * sizeof(uint64_t)) != 0) {
      char a[128], b[128];
      bool renamed = strcmp(in.name, name) != 0;
      rc = kaun__error_set(
          err, KAUN_ESHAPE, "%s: tensor '%s'%s%s%s has shape %s in the file but %s in the template",
          in.uri, name, renamed ? " (the file's '" : "", renamed ? in.name : "",
          renamed ? "')" : "", kaun_shape_format(in.ndim, in.shape, a, sizeof a),
          kaun_shape_format(kaun_tensor_ndim(want), kaun_tensor_shape(want), b, sizeof b));
      goto done;
    }
  }
  if (missing) {
    char near[700], more[64] = "";
    const char **cand = calloc(2 * files.nsorted + 1, sizeof *cand);
    for (size_t k = 0; cand && k < files.nsorted; k++) {
      cand[k] = mapped_name(&files, files.sorted[k]);
      cand[files.nsorted + k] = files.orig[files.sorted[k]];
    }
    near[0] = '\0';
    if (cand)
      kaun__names_closest(first_missing, cand, cand + files.nsorted, files.nsorted, near,
                          sizeof near);
    free(cand);
    if (missing > 1) snprintf(more, sizeof more, " (and %zu more are missing)", missing - 1);
    if (map)
      rc = kaun__error_set(err, KAUN_EKEY,
                           "%s: no tensor maps to the template's '%s'%s%s%s: check the name "
                           "map's prefixes and renames",
                           path, first_missing, more,
                           files.n ? "; the closest are " : " (the checkpoint has no tensors)",
                           near);
    else
      rc = kaun__error_set(err, KAUN_EKEY,
                           "%s: the template's tensor '%s' is not in the checkpoint%s%s%s", path,
                           first_missing, more, files.n ? "; the closest are " : "", near);
    goto done;
  }
  if ((rc = kaun_reader_get_many(r, n, names, dtypes, opts, tensors, err))) goto done;
  size_t next = 0;
  rc = build_like(like, tensors, &next, out, err);
done:
  for (size_t i = 0; tensors && i < n; i++) kaun_tensor_free(tensors[i]);
  free(tensors);
  free(dtypes);
  free(names);
  free_names(&files);
  kaun_reader_close(r);
  kaun_flat_free(tc.leaves);
  return rc;
}

int kaun_checkpoint_load(kaun_context *ctx, const char *path, const kaun_ptree *like,
                         unsigned flags, kaun_ptree **out, kaun_error *err) {
  kaun_load_options o;
  return kaun_checkpoint_load_ex(ctx, path, like, flags_only(&o, flags), out, err);
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
  kaun_io *io;            /* progress, reported as bytes are handed over (may be NULL) */
  const char *uri;        /* reported under */
  const atomic_int *stop; /* nonzero: stop (another shard failed); may be NULL */
} save_stream;

/* Progress reports of at most this many bytes, so that they come often. */
#define SAVE_REPORT ((size_t)8 << 20)

static bool stream_stopped(const save_stream *ss) {
  return (ss->stop && atomic_load(ss->stop)) || kaun_io_canceled(ss->io);
}

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

static int segment_view(const save_stream *ss, uint64_t off, const void **ptr, size_t *len) {
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

/* A view fails when the save must stop: the writer then calls
 * stream_read, which says why. */
static int stream_view(void *c, uint64_t off, const void **ptr, size_t *len) {
  const save_stream *ss = c;
  if (stream_stopped(ss)) return KAUN_ECANCELED;
  int rc = segment_view(ss, off, ptr, len);
  if (rc || !ss->io) return rc;
  if (*len > SAVE_REPORT) *len = SAVE_REPORT;
  kaun_io_add(ss->io, ss->uri, ss->size, *len); /* a cancel is seen by the next call */
  return KAUN_OK;
}

static int stream_read(void *c, uint64_t off, void *dst, size_t len, kaun_error *err) {
  const save_stream *ss = c;
  if (stream_stopped(ss)) return kaun__error_set(err, KAUN_ECANCELED, "%s: canceled", ss->uri);
  char *d = dst;
  size_t total = len;
  while (len) {
    const void *p;
    size_t n;
    if (segment_view(ss, off, &p, &n) != KAUN_OK)
      return kaun__error_set(err, KAUN_EINVAL, "read past the end of a save stream");
    if (n > len) n = len;
    memcpy(d, p, n);
    d += n;
    off += n;
    len -= n;
  }
  if (kaun_io_add(ss->io, ss->uri, ss->size, total) != KAUN_OK)
    return kaun__error_set(err, KAUN_ECANCELED, "%s: canceled", ss->uri);
  return KAUN_OK;
}

int kaun__safetensors_put(kaun_context *ctx, const char *uri, const kaun_flat *flat, kaun_io *io,
                          const atomic_int *stop, kaun_error *err) {
  for (size_t i = 0; i < kaun_flat_count(flat); i++)
    if (!kaun_flat_tensor(flat, i))
      return kaun__error_set(err, KAUN_EINVAL,
                             "cannot save '%s': tensor '%s' was taken out of the list", uri,
                             kaun_flat_name(flat, i));
  save_stream ss = {flat, NULL, 0, NULL, NULL, kaun_flat_count(flat), 0, io, uri, stop};
  char *header = NULL;
  size_t *order = NULL;
  uint64_t data_size;
  int rc =
      kaun_safetensors_serialize_header(flat, &header, &ss.header_size, &data_size, &order, err);
  if (rc) goto done;
  ss.header = header;
  ss.order = order;
  kaun_io_expect(io, ss.header_size); /* the data's bytes are expected by the caller */
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
  kaun_put_source src = {ss.size, stream_read, stream_view, &ss};
  rc = kaun_storage_put(ctx, uri, &src, err);
  if (!rc && io) kaun_io_add(io, uri, ss.size, 0); /* the end of this object */
done:
  free(ss.starts);
  free(header);
  free(order);
  return rc;
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
  char *target = NULL;
  /* a folder means the model there */
  kaun_object *probe;
  kaun_error ignored = KAUN_ERROR_INIT;
  int probe_rc = kaun_object_open(use, uri, &probe, &ignored);
  if (probe_rc == KAUN_OK) kaun_object_close(probe);
  /* a folder, or one to make ("DST/"), as kaun_reader_copy_model decides it */
  if ((probe_rc == KAUN_EISDIR || kaun__ends_with(uri, "/")) &&
      !(target = kaun__child_uri(uri, SINGLE_NAME)))
    rc = kaun__error_nomem(err, "saving");
  if (!rc) rc = kaun__safetensors_put(use, target ? target : uri, flat, NULL, NULL, err);
  free(target);
  kaun_context_free(own);
  return rc;
}

/* A tree's leaves as a flat list with `metadata`, saved as one file
 * (`opts` NULL: kaun_checkpoint_save) or following `opts`. */
static int save_tree(kaun_context *ctx, const char *uri, const kaun_ptree *tree,
                     const kaun_flat *metadata, const kaun_save_options *opts, kaun_error *err) {
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
  rc = opts ? kaun__save_flat(ctx, uri, tc.leaves, opts, err)
            : kaun_safetensors_save(ctx, uri, tc.leaves, err);
done:
  kaun_flat_free(tc.leaves);
  return rc;
}

int kaun_checkpoint_save(kaun_context *ctx, const char *uri, const kaun_ptree *tree,
                         const kaun_flat *metadata, kaun_error *err) {
  return save_tree(ctx, uri, tree, metadata, NULL, err);
}

int kaun_checkpoint_save_ex(kaun_context *ctx, const char *uri, const kaun_ptree *tree,
                            const kaun_save_options *opts, kaun_error *err) {
  kaun_save_options o;
  kaun__save_options_get(opts, &o);
  const kaun_flat *metadata = o.metadata;
  o.metadata = NULL; /* it goes into the leaves' list */
  return save_tree(ctx, uri, tree, metadata, &o, err);
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
