/* Byte-for-byte copies between URIs: the source object, read through the
 * storage layer, is put at the destination.  A backend's put may
 * recognise the source (kaun__copy_source) and copy from the object in
 * its own way: the file backend copies local files inside the kernel. */
#include <kaun/copy.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shards.h"
#include "storage_internal.h"

typedef struct copy_source {
  kaun_object *obj;
  const char *uri; /* the source URI, as given: progress is reported under it */
  uint64_t size;
  kaun_io *io;
} copy_source;

/* Progress and cancellation come with the read (under the URI asked for). */
static int copy_read(void *context, uint64_t offset, void *dst, size_t len, kaun_error *err) {
  copy_source *cs = context;
  return kaun_object_read_io(cs->obj, offset, dst, len, cs->io, err);
}

bool kaun__copy_source(const kaun_put_source *src, kaun_object **object, kaun_io **io,
                       const char **uri) {
  if (!src || src->read != copy_read) return false;
  const copy_source *cs = src->context;
  *object = cs->obj;
  *io = cs->io;
  *uri = cs->uri;
  return true;
}

int kaun_storage_copy(kaun_context *ctx, const char *src_uri, const char *dst_uri, kaun_io *io,
                      kaun_error *err) {
  if (!src_uri || !dst_uri)
    return kaun__error_set(err, KAUN_EINVAL, "a copy needs a source and a destination URI");
  kaun_context *own = NULL;
  int rc;
  if (!ctx) {
    if ((rc = kaun_context_new(NULL, &own, err))) return rc;
    ctx = own;
  }
  kaun_object *obj;
  if (!(rc = kaun_object_open(ctx, src_uri, &obj, err))) {
    rc = kaun_object_copy(ctx, obj, dst_uri, io, err);
    kaun_object_close(obj);
  }
  kaun_context_free(own);
  return rc;
}

int kaun_object_copy(kaun_context *ctx, kaun_object *obj, const char *dst_uri, kaun_io *io,
                     kaun_error *err) {
  if (!obj || !dst_uri)
    return kaun__error_set(err, KAUN_EINVAL, "a copy needs a source object and a destination URI");
  const char *src_uri = kaun_object_uri(obj);
  kaun_stat st = {.struct_size = sizeof st};
  int rc = kaun_object_stat(obj, &st, err);
  if (rc) return rc;
  copy_source cs = {obj, src_uri, st.size, io};
  const kaun_put_source src = {st.size, copy_read, NULL, &cs};
  kaun_io_expect(io, st.size);
  /* the object's size, for progress; the bytes are counted as they are
   * read (or copied), once: the put gets no io of its own */
  if (kaun_io_add(io, src_uri, st.size, 0) != KAUN_OK)
    return kaun__error_set(err, KAUN_ECANCELED, "%s: canceled", src_uri);
  return kaun_storage_put(ctx, dst_uri, &src, err);
}

/* ---- whole models ------------------------------------------------------------------- */

int kaun_reader_is_sharded(const kaun_reader *r) {
  return r && kaun__reader_index(r, NULL, NULL) ? 1 : 0;
}

static void copy_options_get(const kaun_copy_options *in, kaun_copy_options *out) {
  memset(out, 0, sizeof *out);
  if (in) {
    size_t have = in->struct_size < sizeof *out ? in->struct_size : sizeof *out;
    if (have > sizeof out->struct_size)
      memcpy((char *)out + sizeof out->struct_size, (const char *)in + sizeof in->struct_size,
             have - sizeof out->struct_size);
  }
  out->struct_size = sizeof *out;
}

static bool converts(kaun_dtype dt) { return kaun_dtype_is_float(dt) && kaun_dtype_can_cast(dt); }

/* The name of `shard_uri` relative to the folder of `index_uri` (malloc'd),
 * or NULL when the shard is not a file beside the index (a URI shard). */
static char *name_beside(const char *index_uri, const char *shard_uri, size_t *dir_out) {
  const char *ic = kaun__stack_chain(index_uri), *sc = kaun__stack_chain(shard_uri);
  size_t il = ic ? (size_t)(ic - index_uri) : strlen(index_uri);
  size_t sl = sc ? (size_t)(sc - shard_uri) : strlen(shard_uri);
  size_t dir = il;
  while (dir > 0 && index_uri[dir - 1] != '/') dir--;
  *dir_out = dir;
  if (strcmp(ic ? ic : "", sc ? sc : "") != 0) return NULL;
  const char *prefix = dir ? index_uri : "./"; /* a bare name's siblings are "./NAME" */
  size_t plen = dir ? dir : 2;
  if (sl <= plen || strncmp(shard_uri, prefix, plen) != 0) return NULL;
  char *name = malloc(sl - plen + 1);
  if (name) {
    memcpy(name, shard_uri + plen, sl - plen);
    name[sl - plen] = '\0';
  }
  return name;
}

typedef struct shard_copy {
  kaun_context *ctx;
  const kaun_reader *r;
  char **dst;
  kaun_io *io;
} shard_copy;

static int copy_one(void *state, size_t k, kaun_error *err) {
  shard_copy *c = state;
  return kaun_object_copy(c->ctx, kaun__reader_shard(c->r, k, NULL), c->dst[k], c->io, err);
}

/* The index's shards byte for byte, in parallel, then the index. */
static int copy_shards(kaun_reader *r, const char *dst, const kaun_copy_options *o, kaun_io *io,
                       kaun_io *own_io, kaun_error *err) {
  kaun_context *ctx = kaun__reader_context(r);
  const char *text;
  size_t len, dir = 0;
  const char *index_uri = kaun__reader_index(r, &text, &len);
  size_t n = kaun__reader_shard_count(r);
  char **dsts = calloc(n + 1, sizeof *dsts), *index_dst = NULL;
  bool *written = calloc(n + 1, sizeof *written);
  int rc = dsts && written ? KAUN_OK : kaun__error_nomem(err, "copying a checkpoint");
  for (size_t k = 0; k < n && !rc; k++) {
    const char *uri;
    kaun__reader_shard(r, k, &uri);
    char *name = name_beside(index_uri, uri, &dir);
    if (!name)
      rc = kaun__error_set(err, KAUN_EINVAL,
                           "%s names its shard '%s' by URI: a copy keeps only shards beside the "
                           "index byte for byte (re-save it in shards instead: a max shard size)",
                           index_uri, uri);
    else if (!(dsts[k] = kaun__child_uri(dst, name)))
      rc = kaun__error_nomem(err, "copying a checkpoint");
    free(name);
  }
  if (!rc) {
    const char *ic = kaun__stack_chain(index_uri);
    size_t il = ic ? (size_t)(ic - index_uri) : strlen(index_uri), d = il;
    while (d > 0 && index_uri[d - 1] != '/') d--;
    char base[4096];
    snprintf(base, sizeof base, "%.*s", (int)(il - d), index_uri + d);
    if (!(index_dst = kaun__child_uri(dst, base))) rc = kaun__error_nomem(err, "copying");
  }
  if (!rc) {
    shard_copy c = {ctx, r, dsts, io};
    atomic_int stop;
    atomic_init(&stop, 0);
    rc = kaun__run_jobs(n, o->threads, copy_one, &c, &stop, own_io, written, err);
  }
  /* the index last: the bytes the reader validated, once every shard is stored */
  if (!rc && kaun_io_canceled(io))
    rc = kaun__error_set(err, KAUN_ECANCELED, "%s: canceled", index_uri);
  if (!rc) rc = kaun__put_bytes(ctx, index_dst, text, len, err);
  if (!rc && kaun__ends_with(index_dst, "/" KAUN__INDEX_NAME)) {
    /* a model.safetensors left there would be read instead of the index */
    char *single = kaun__child_uri(dst, KAUN__SINGLE_NAME);
    kaun_error ignored = KAUN_ERROR_INIT;
    if (single) kaun_storage_remove(ctx, single, &ignored);
    free(single);
  }
  if (rc && written) kaun__remove_written(ctx, dsts, written, n);
  for (size_t k = 0; dsts && k < n; k++) free(dsts[k]);
  free(dsts);
  free(written);
  free(index_dst);
  return rc;
}

/* One file: loaded (cast where asked) and saved. */
static int resave_one(kaun_reader *r, const char *to, const kaun_copy_options *o, kaun_io *io,
                      kaun_error *err) {
  size_t n = kaun_reader_count(r);
  const char **names = calloc(n + 1, sizeof *names);
  size_t *lens = calloc(n + 1, sizeof *lens);
  kaun_dtype *dtypes = calloc(n + 1, sizeof *dtypes);
  kaun_tensor **ts = calloc(n + 1, sizeof *ts);
  kaun_flat *flat = NULL;
  int rc = names && lens && dtypes && ts ? KAUN_OK : kaun__error_nomem(err, "copying");
  uint64_t total = 0;
  for (size_t i = 0; i < n && !rc; i++) {
    kaun_reader_tensor t;
    kaun_reader_info(r, i, &t);
    names[i] = t.name;
    lens[i] = kaun_reader_name_length(r, i);
    dtypes[i] = o->cast && converts(t.dtype) ? o->dtype : t.dtype;
  }
  if (!rc) rc = kaun_reader_get_many_n(r, n, names, lens, dtypes, NULL, ts, err);
  if (!rc) rc = kaun_flat_new(&flat, err);
  for (size_t i = 0; i < n && !rc; i++) {
    total += kaun_tensor_nbytes(ts[i]);
    rc = kaun_flat_add_n(flat, names[i], lens[i], ts[i], err);
    ts[i] = NULL;
  }
  if (!rc) rc = kaun__reader_copy_metadata(r, flat, err);
  kaun_io_expect(io, total);
  if (!rc) rc = kaun__safetensors_put(kaun__reader_context(r), to, flat, io, NULL, err);
  for (size_t i = 0; ts && i < n; i++) kaun_tensor_free(ts[i]);
  kaun_flat_free(flat);
  free(ts);
  free(dtypes);
  free(lens);
  free(names);
  return rc;
}

int kaun_reader_copy_model(kaun_reader *r, const char *dst, const kaun_copy_options *opts,
                           kaun_error *err) {
  if (!r || !dst)
    return kaun__error_set(err, KAUN_EINVAL, "a copy needs a source checkpoint and a destination");
  kaun_copy_options o;
  copy_options_get(opts, &o);
  if (o.cast && !converts(o.dtype))
    return kaun__error_set(err, KAUN_EINVAL,
                           "copying %s: %s is not a floating-point dtype kaun can cast to",
                           kaun_reader_uri(r), kaun_dtype_name(o.dtype));
  if (o.max_shard_size)
    return kaun__save_from_reader(r, dst, o.max_shard_size, o.cast != 0, o.dtype, o.io, err);
  /* a sharded model cast into a folder: shard by shard, as the source groups them */
  if (o.cast && kaun_reader_is_sharded(r) && !kaun__ends_with(dst, ".safetensors"))
    return kaun__save_from_reader(r, dst, 0, true, o.dtype, o.io, err);
  kaun_context *ctx = kaun__reader_context(r);
  kaun_io *own_io = NULL, *io = o.io;
  int rc = io ? KAUN_OK : kaun_context_new_io(ctx, &own_io, err);
  if (!io) io = own_io;
  if (!rc && kaun_reader_is_sharded(r) && !o.cast && !kaun__ends_with(dst, ".safetensors")) {
    rc = copy_shards(r, dst, &o, io, own_io, err);
  } else if (!rc) { /* one file; DST naming a folder means DST/model.safetensors */
    int canonical = o.cast ? 0 : kaun_reader_is_canonical(r, err);
    char *target = NULL;
    kaun_object *probe;
    kaun_error ignored = KAUN_ERROR_INIT;
    int probe_rc = kaun_object_open(ctx, dst, &probe, &ignored);
    if (probe_rc == KAUN_OK) kaun_object_close(probe);
    if (canonical < 0)
      rc = canonical;
    else if ((probe_rc == KAUN_EISDIR || kaun__ends_with(dst, "/")) &&
             !(target = kaun__child_uri(dst, KAUN__SINGLE_NAME)))
      rc = kaun__error_nomem(err, "copying"); /* a folder, or one to make ("DST/") */
    else if (canonical) /* through the object the reader validated: the bytes of that version */
      rc = kaun_reader_copy(r, target ? target : dst, io, err);
    else
      rc = resave_one(r, target ? target : dst, &o, io, err);
    free(target);
  }
  kaun_io_free(own_io);
  return rc;
}
