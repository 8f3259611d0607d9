/* Sharded saves, as HuggingFace's save_pretrained(max_shard_size=...)
 * writes them: model-0000K-of-0000N.safetensors files, in parallel, each
 * atomic, then model.safetensors.index.json last, so that no reader ever
 * sees an index naming a shard not yet stored.  A failure or a cancel
 * writes no index and removes the shards the call wrote. */
#include "shards.h"
#include "storage_internal.h"

#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_THREADS 4
#define MAX_THREADS 16

void kaun__save_options_get(const kaun_save_options *in, kaun_save_options *out) {
  memset(out, 0, sizeof *out);
  out->struct_size = sizeof *out;
  if (!in) return;
  size_t have = in->struct_size < sizeof *out ? in->struct_size : sizeof *out;
  if (have > sizeof out->struct_size)
    memcpy((char *)out + sizeof out->struct_size, (const char *)in + sizeof in->struct_size,
           have - sizeof out->struct_size);
  out->struct_size = sizeof *out;
}

bool kaun__ends_with(const char *uri, const char *suffix) {
  size_t n = strlen(uri), m = strlen(suffix);
  /* a stacked URI (SCHEME://PATH::OUTER): PATH is the object's own name */
  const char *chain = kaun__stack_chain(uri);
  if (chain) n = (size_t)(chain - uri);
  return n >= m && memcmp(uri + n - m, suffix, m) == 0;
}

unsigned kaun__threads(unsigned asked, size_t jobs) {
  unsigned t = asked ? asked : DEFAULT_THREADS;
  if (t > MAX_THREADS) t = MAX_THREADS;
  if (jobs < t) t = jobs ? (unsigned)jobs : 1;
  return t;
}

/* ---- jobs on a few threads ---------------------------------------------------------- */

typedef struct jobs {
  size_t n;
  kaun__job_fn fn;
  void *state;
  atomic_int *stop;
  kaun_io *cancel; /* canceled on the first failure (may be NULL) */
  bool *done;
  atomic_size_t next;
  pthread_mutex_t lock;
  int rc;
  kaun_error err;
} jobs;

static void *job_worker(void *arg) {
  jobs *j = arg;
  while (!atomic_load(j->stop)) {
    size_t k = atomic_fetch_add(&j->next, 1);
    if (k >= j->n) break;
    kaun_error e = KAUN_ERROR_INIT;
    int rc = j->fn(j->state, k, &e);
    if (rc) {
      pthread_mutex_lock(&j->lock);
      if (!j->rc) { /* the first failure; the others are its consequences */
        j->rc = rc;
        j->err = e;
        atomic_store(j->stop, 1);
        kaun_io_cancel(j->cancel);
      }
      pthread_mutex_unlock(&j->lock);
    } else if (j->done) {
      j->done[k] = true;
    }
  }
  return NULL;
}

int kaun__run_jobs(size_t n, unsigned threads, kaun__job_fn fn, void *state, atomic_int *stop,
                   kaun_io *cancel, bool *done, kaun_error *err) {
  jobs j = {.n = n, .fn = fn, .state = state, .stop = stop, .cancel = cancel, .done = done};
  atomic_init(&j.next, 0);
  pthread_mutex_init(&j.lock, NULL);
  unsigned t = kaun__threads(threads, n);
  pthread_t tids[MAX_THREADS];
  unsigned started = 0;
  while (started + 1 < t && pthread_create(&tids[started], NULL, job_worker, &j) == 0) started++;
  job_worker(&j); /* this thread is one of them (the only one if none could start) */
  for (unsigned i = 0; i < started; i++) pthread_join(tids[i], NULL);
  pthread_mutex_destroy(&j.lock);
  if (j.rc && err) *err = j.err;
  return j.rc;
}

/* ---- the plan: which tensors go to which shard --------------------------------------- */

/* Splits `n` tensors of `sizes` bytes, in order: a new shard starts when
 * the next tensor would take the current one over `max` (a tensor larger
 * than `max` thus has a shard of its own).  first[s] is shard s's first
 * tensor, first[count] = n; returns the count (0 for no tensors). */
static size_t plan_shards(const uint64_t *sizes, size_t n, uint64_t max, size_t *first) {
  size_t count = 0;
  uint64_t used = 0;
  for (size_t i = 0; i < n; i++) {
    if (count == 0 || (i > first[count - 1] && (sizes[i] > max || used > max - sizes[i]))) {
      first[count++] = i;
      used = 0;
    }
    used += sizes[i];
  }
  first[count] = n;
  return count;
}

/* plan_shards for a re-save that keeps the source's grouping: a shard for
 * each run of tensors the reader `r` finds in one file. */
static size_t plan_by_file(kaun_reader *r, size_t n, size_t *first) {
  size_t count = 0;
  const char *prev = NULL;
  for (size_t i = 0; i < n; i++) {
    kaun_reader_tensor t;
    kaun_reader_info(r, i, &t);
    if (!prev || strcmp(t.uri, prev) != 0) first[count++] = i;
    prev = t.uri;
  }
  first[count] = n;
  return count;
}

/* "model-00001-of-00003.safetensors" */
static char *shard_file(size_t k, size_t count) {
  char name[96];
  snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", k + 1, count);
  return strdup(name);
}

/* ---- the index, as huggingface_hub writes it ----------------------------------------- */

/* One code point of UTF-8 at s (n bytes left), or -1. */
static long utf8_decode(const unsigned char *s, size_t n, size_t *used) {
  unsigned char c = s[0];
  size_t len = c < 0x80             ? 1
               : (c & 0xE0) == 0xC0 ? 2
               : (c & 0xF0) == 0xE0 ? 3
               : (c & 0xF8) == 0xF0 ? 4
                                    : 0;
  if (!len || len > n) return -1;
  long cp = len == 1 ? c : len == 2 ? c & 0x1F : len == 3 ? c & 0x0F : c & 0x07;
  for (size_t k = 1; k < len; k++) {
    if ((s[k] & 0xC0) != 0x80) return -1;
    cp = (cp << 6) | (s[k] & 0x3F);
  }
  *used = len;
  return cp;
}

/* A JSON string as Python's json.dumps writes it (ensure_ascii): control
 * characters, DEL and everything beyond ASCII as \uXXXX (surrogate pairs
 * above U+FFFF). */
static void json_ascii(kaun__strbuf *sb, const char *str, size_t n) {
  const unsigned char *s = (const unsigned char *)str;
  kaun__strbuf_append(sb, "\"", 1);
  for (size_t i = 0; i < n;) {
    unsigned char c = s[i];
    size_t used = 1;
    if (c == '"' || c == '\\') {
      kaun__strbuf_printf(sb, "\\%c", c);
    } else if (c == '\n' || c == '\r' || c == '\t' || c == '\b' || c == '\f') {
      kaun__strbuf_printf(sb, "\\%c",
                          c == '\n'   ? 'n'
                          : c == '\r' ? 'r'
                          : c == '\t' ? 't'
                          : c == '\b' ? 'b'
                                      : 'f');
    } else if (c >= 0x20 && c < 0x7F) {
      kaun__strbuf_append(sb, (const char *)s + i, 1);
    } else {
      long cp = utf8_decode(s + i, n - i, &used);
      if (cp < 0) {
        cp = c; /* not UTF-8 (the writer refuses such names before the index) */
        used = 1;
      }
      if (cp > 0xFFFF) {
        cp -= 0x10000;
        kaun__strbuf_printf(sb, "\\u%04lx\\u%04lx", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
      } else {
        kaun__strbuf_printf(sb, "\\u%04lx", cp);
      }
    }
    i += used;
  }
  kaun__strbuf_append(sb, "\"", 1);
}

typedef struct name_ref {
  const char *name;
  size_t len;
  size_t shard;
} name_ref;

static int cmp_name(const void *a, const void *b) {
  const name_ref *x = a, *y = b;
  int c = memcmp(x->name, y->name, x->len < y->len ? x->len : y->len);
  return c ? c : (x->len > y->len) - (x->len < y->len);
}

/* {"metadata": {"total_size": N}, "weight_map": {NAME: FILE, ...}} with
 * sorted keys, an indent of 2 and a final newline: json.dumps(index,
 * indent=2, sort_keys=True) + "\n", as transformers and huggingface_hub
 * write it.  NAME order is by code point (UTF-8 bytes compare the same). */
static int index_json(name_ref *refs, size_t n, char *const *files, uint64_t total,
                      kaun__strbuf *sb, kaun_error *err) {
  qsort(refs, n, sizeof *refs, cmp_name);
  kaun__strbuf_printf(sb, "{\n  \"metadata\": {\n    \"total_size\": %llu\n  },\n",
                      (unsigned long long)total);
  kaun__strbuf_puts(sb, n ? "  \"weight_map\": {\n" : "  \"weight_map\": {}\n");
  for (size_t i = 0; i < n; i++) {
    kaun__strbuf_puts(sb, "    ");
    json_ascii(sb, refs[i].name, refs[i].len);
    kaun__strbuf_puts(sb, ": ");
    json_ascii(sb, files[refs[i].shard], strlen(files[refs[i].shard]));
    kaun__strbuf_puts(sb, i + 1 < n ? ",\n" : "\n");
  }
  kaun__strbuf_puts(sb, n ? "  }\n}\n" : "}\n");
  if (sb->failed) return kaun__error_nomem(err, "writing an index");
  return KAUN_OK;
}

typedef struct bytes_source {
  const char *data;
} bytes_source;

static int bytes_read(void *c, uint64_t off, void *dst, size_t len, kaun_error *err) {
  (void)err;
  memcpy(dst, ((bytes_source *)c)->data + off, len);
  return KAUN_OK;
}

int kaun__put_bytes(kaun_context *ctx, const char *uri, const char *data, size_t len,
                    kaun_error *err) {
  bytes_source bs = {data};
  kaun_put_source src = {len, bytes_read, NULL, &bs};
  return kaun_storage_put(ctx, uri, &src, err);
}

/* Removes what an earlier save left in the folder that would be read
 * instead of what this one wrote (best effort: an absent object, or a
 * backend that cannot remove, is not an error). */
static void remove_stale(kaun_context *ctx, const char *folder, const char *name) {
  char *uri = kaun__child_uri(folder, name);
  kaun_error ignored = KAUN_ERROR_INIT;
  if (uri) kaun_storage_remove(ctx, uri, &ignored);
  free(uri);
}

/* Shards of an earlier save into the same folder with another count
 * ("model-00001-of-00003.safetensors" once the save wrote "-of-00002"):
 * the new index does not name them, and they would only take space (as
 * transformers' save_pretrained, kaun removes them).  Nothing else is
 * touched; a backend that cannot list keeps them. */
typedef struct old_shards {
  kaun_context *ctx;
  const char *folder;
  size_t count;
} old_shards;

static int remove_old_shard(const char *name, uint64_t size, void *context) {
  (void)size;
  const old_shards *o = context;
  unsigned k, total;
  int end = 0;
  if (strchr(name, '/') || strlen(name) != 32 ||
      sscanf(name, "model-%5u-of-%5u.safetensors%n", &k, &total, &end) != 2 || end != 32 ||
      total == o->count || k == 0 || k > total)
    return 0;
  remove_stale(o->ctx, o->folder, name);
  return 0;
}

static void remove_old_shards(kaun_context *ctx, const char *folder, size_t count) {
  old_shards o = {ctx, folder, count};
  kaun_error ignored = KAUN_ERROR_INIT;
  (void)kaun_storage_list(ctx, folder, remove_old_shard, &o, &ignored);
}

void kaun__remove_written(kaun_context *ctx, char *const *uris, const bool *written, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (written[i] && uris[i]) {
      kaun_error ignored = KAUN_ERROR_INIT;
      kaun_storage_remove(ctx, uris[i], &ignored);
    }
}

/* ---- the sharded writer ------------------------------------------------------------- */

/* Where a save's tensors come from: a list in memory, or a reader. */
typedef struct save_input {
  size_t n;
  const char **names;
  size_t *lens;
  uint64_t *sizes; /* bytes as saved */
  /* the tensors [first, first + count) as a list with the metadata */
  int (*load)(struct save_input *in, size_t first, size_t count, kaun_flat **out, kaun_error *err);
  const kaun_flat *flat; /* in memory (borrowed tensors) */
  const kaun_flat *meta; /* the metadata to write */
  kaun_reader *reader;   /* or a reader */
  bool cast;
  kaun_dtype dtype;
  kaun_io *read_io; /* silent: reads are not the save's progress */
} save_input;

static int copy_metadata(const kaun_flat *from, kaun_flat *to, kaun_error *err) {
  if (!from || !kaun_flat_has_metadata(from)) return KAUN_OK;
  kaun__flat_mark_metadata(to);
  int rc = KAUN_OK;
  for (size_t i = 0; i < kaun_flat_metadata_count(from) && !rc; i++)
    rc = kaun_flat_set_metadata_n(
        to, kaun_flat_metadata_key(from, i), kaun_flat_metadata_key_length(from, i),
        kaun_flat_metadata_value(from, i), kaun_flat_metadata_value_length(from, i), err);
  return rc;
}

static int load_from_flat(save_input *in, size_t first, size_t count, kaun_flat **out,
                          kaun_error *err) {
  kaun_flat *f;
  int rc = kaun__flat_new_borrowed(&f, err);
  for (size_t i = first; i < first + count && !rc; i++)
    rc = kaun_flat_add_n(f, in->names[i], in->lens[i], (kaun_tensor *)kaun_flat_tensor(in->flat, i),
                         err);
  if (!rc) rc = copy_metadata(in->meta, f, err);
  if (rc) {
    kaun_flat_free(f);
    return rc;
  }
  *out = f;
  return KAUN_OK;
}

static bool converts(kaun_dtype dt) { return kaun_dtype_is_float(dt) && kaun_dtype_can_cast(dt); }

/* One shard's tensors read from the reader into memory of their own (no
 * mapping kept: memory is this shard's, freed once it is stored).  With
 * a cast, one tensor at a time is read and cast, so that memory is the
 * cast shard and one tensor as stored, not the shard as stored. */
static int load_from_reader(save_input *in, size_t first, size_t count, kaun_flat **out,
                            kaun_error *err) {
  kaun_load_options o = {.struct_size = sizeof o, .flags = KAUN_LOAD_COPY, .io = in->read_io};
  kaun_tensor **ts = calloc(count + 1, sizeof *ts);
  kaun_flat *f = NULL;
  if (!ts) return kaun__error_nomem(err, "copying a checkpoint");
  int rc = KAUN_OK;
  if (!in->cast)
    rc = kaun_reader_get_many_n(in->reader, count, in->names + first, in->lens + first, NULL, &o,
                                ts, err);
  for (size_t i = 0; in->cast && i < count && !rc; i++) {
    kaun_tensor *t;
    rc = kaun_reader_get_many_n(in->reader, 1, in->names + first + i, in->lens + first + i, NULL,
                                &o, &t, err);
    if (!rc && converts(kaun_tensor_dtype(t)) && kaun_tensor_dtype(t) != in->dtype) {
      rc = kaun_tensor_cast(t, in->dtype, &ts[i], err);
      kaun_tensor_free(t);
    } else if (!rc) {
      ts[i] = t;
    }
  }
  if (!rc) rc = kaun_flat_new(&f, err);
  for (size_t i = 0; i < count && !rc; i++) {
    rc = kaun_flat_add_n(f, in->names[first + i], in->lens[first + i], ts[i], err);
    ts[i] = NULL;
  }
  if (!rc) rc = kaun__reader_copy_metadata(in->reader, f, err);
  for (size_t i = 0; i < count; i++) kaun_tensor_free(ts[i]);
  free(ts);
  if (rc) {
    kaun_flat_free(f);
    return rc;
  }
  *out = f;
  return KAUN_OK;
}

typedef struct shard_save {
  kaun_context *ctx;
  save_input *in;
  const size_t *first;
  char **uris;
  kaun_io *io;
  atomic_int stop;
} shard_save;

static int save_one(void *state, size_t k, kaun_error *err) {
  shard_save *s = state;
  if (kaun_io_canceled(s->io))
    return kaun__error_set(err, KAUN_ECANCELED, "%s: canceled", s->uris[k]);
  kaun_flat *f;
  int rc = s->in->load(s->in, s->first[k], s->first[k + 1] - s->first[k], &f, err);
  if (rc) return rc;
  rc = kaun__safetensors_put(s->ctx, s->uris[k], f, s->io, &s->stop, err);
  kaun_flat_free(f);
  return rc;
}

/* Saves `in` into the folder `uri`: shards and an index, or
 * model.safetensors when it all fits in one. */
static int save_sharded(kaun_context *ctx, const char *uri, save_input *in, uint64_t max,
                        unsigned threads, kaun_io *io, kaun_io *own_io, kaun_error *err) {
  if (kaun__ends_with(uri, ".safetensors") || kaun__ends_with(uri, ".json"))
    return kaun__error_set(err, KAUN_EINVAL,
                           "cannot save '%s' in shards: a sharded save writes into a folder, and "
                           "this names a file (give the folder, e.g. without the file name)",
                           uri);
  size_t *first = calloc(in->n + 2, sizeof *first);
  if (!first) return kaun__error_nomem(err, "saving in shards");
  size_t count = max || !in->reader ? plan_shards(in->sizes, in->n, max, first)
                                    : plan_by_file(in->reader, in->n, first);
  uint64_t total = 0;
  for (size_t i = 0; i < in->n; i++) total += in->sizes[i];
  kaun_io_expect(io, total); /* the headers are added as each is made */
  int rc = KAUN_OK;
  if (count <= 1) { /* it fits: model.safetensors, as without a limit */
    char *target = kaun__child_uri(uri, KAUN__SINGLE_NAME);
    kaun_flat *f = NULL;
    if (!target) rc = kaun__error_nomem(err, "saving");
    if (!rc) rc = in->load(in, 0, in->n, &f, err);
    if (!rc) rc = kaun__safetensors_put(ctx, target, f, io, NULL, err);
    if (!rc) remove_stale(ctx, uri, KAUN__INDEX_NAME);
    if (!rc) remove_old_shards(ctx, uri, 0); /* every earlier shard: none is ours */
    kaun_flat_free(f);
    free(target);
    free(first);
    return rc;
  }
  char **files = calloc(count, sizeof *files), **uris = calloc(count, sizeof *uris);
  bool *written = calloc(count, sizeof *written);
  name_ref *refs = calloc(in->n, sizeof *refs);
  char *index_uri = kaun__child_uri(uri, KAUN__INDEX_NAME);
  kaun__strbuf text = {0};
  if (!files || !uris || !written || !refs || !index_uri)
    rc = kaun__error_nomem(err, "saving in shards");
  for (size_t k = 0; k < count && !rc; k++)
    if (!(files[k] = shard_file(k, count)) || !(uris[k] = kaun__child_uri(uri, files[k])))
      rc = kaun__error_nomem(err, "saving in shards");
  if (!rc) {
    shard_save s = {ctx, in, first, uris, io, 0};
    atomic_init(&s.stop, 0);
    rc = kaun__run_jobs(count, threads, save_one, &s, &s.stop, own_io, written, err);
  }
  /* the index last, once every shard is stored */
  for (size_t k = 0; k < count && !rc; k++)
    for (size_t i = first[k]; i < first[k + 1]; i++)
      refs[i] = (name_ref){in->names[i], in->lens[i], k};
  if (!rc) rc = index_json(refs, in->n, files, total, &text, err);
  if (!rc && kaun_io_canceled(io))
    rc = kaun__error_set(err, KAUN_ECANCELED, "%s: canceled", index_uri);
  if (!rc) {
    kaun_io_expect(io, text.len); /* the index's bytes count too */
    rc = kaun__put_bytes(ctx, index_uri, text.data, text.len, err);
  }
  if (!rc) (void)kaun_io_add(io, index_uri, text.len, text.len); /* done: a cancel now is late */
  if (!rc) {
    remove_stale(ctx, uri, KAUN__SINGLE_NAME); /* it would be read instead of the index */
    remove_old_shards(ctx, uri, count);
  } else if (written)
    kaun__remove_written(ctx, uris, written, count);
  kaun__strbuf_free(&text);
  for (size_t k = 0; k < count; k++) {
    if (files) free(files[k]);
    if (uris) free(uris[k]);
  }
  free(files);
  free(uris);
  free(written);
  free(refs);
  free(index_uri);
  free(first);
  return rc;
}

/* The io of a save: the caller's, else one from the context's callback. */
static int save_io(kaun_context *ctx, kaun_io *given, kaun_io **own, kaun_io **use,
                   kaun_error *err) {
  *own = NULL;
  *use = given;
  if (given) return KAUN_OK;
  int rc = kaun_context_new_io(ctx, own, err);
  *use = *own;
  return rc;
}

int kaun__save_flat(kaun_context *ctx, const char *uri, const kaun_flat *flat,
                    const kaun_save_options *opts, kaun_error *err) {
  size_t n = kaun_flat_count(flat);
  for (size_t i = 0; i < n; i++)
    if (!kaun_flat_tensor(flat, i))
      return kaun__error_set(err, KAUN_EINVAL,
                             "cannot save '%s': tensor '%s' was taken out of the list", uri,
                             kaun_flat_name(flat, i));
  kaun_context *own = NULL;
  if (!ctx) {
    int rc = kaun_context_new(NULL, &own, err);
    if (rc) return rc;
    ctx = own;
  }
  kaun_io *own_io, *io;
  int rc = save_io(ctx, opts->io, &own_io, &io, err);
  save_input in = {
      .n = n, .load = load_from_flat, .flat = flat, .meta = opts->metadata ? opts->metadata : flat};
  if (!rc) {
    in.names = calloc(n + 1, sizeof *in.names);
    in.lens = calloc(n + 1, sizeof *in.lens);
    in.sizes = calloc(n + 1, sizeof *in.sizes);
    if (!in.names || !in.lens || !in.sizes) rc = kaun__error_nomem(err, "saving");
  }
  for (size_t i = 0; i < n && !rc; i++) {
    in.names[i] = kaun_flat_name(flat, i);
    in.lens[i] = kaun_flat_name_length(flat, i);
    in.sizes[i] = kaun_tensor_nbytes(kaun_flat_tensor(flat, i));
  }
  if (!rc && opts->max_shard_size) {
    rc = save_sharded(ctx, uri, &in, opts->max_shard_size, opts->threads, io, own_io, err);
  } else if (!rc) { /* one file: a folder means the model there */
    kaun_flat *f = NULL;
    char *target = NULL;
    kaun_object *probe;
    kaun_error ignored = KAUN_ERROR_INIT;
    int probe_rc = kaun_object_open(ctx, uri, &probe, &ignored);
    if (probe_rc == KAUN_OK) kaun_object_close(probe);
    if (probe_rc == KAUN_EISDIR && !(target = kaun__child_uri(uri, KAUN__SINGLE_NAME)))
      rc = kaun__error_nomem(err, "saving");
    if (!rc) rc = load_from_flat(&in, 0, n, &f, err);
    if (!rc) {
      const char *to = target ? target : uri;
      for (size_t i = 0; i < n; i++) kaun_io_expect(io, in.sizes[i]);
      rc = kaun__safetensors_put(ctx, to, f, io, NULL, err);
    }
    kaun_flat_free(f);
    free(target);
  }
  free(in.names);
  free(in.lens);
  free(in.sizes);
  kaun_io_free(own_io);
  kaun_context_free(own);
  return rc;
}

int kaun_checkpoint_save_flat_ex(kaun_context *ctx, const char *uri, const kaun_flat *flat,
                                 const kaun_save_options *opts, kaun_error *err) {
  kaun_save_options o;
  kaun__save_options_get(opts, &o);
  return kaun__save_flat(ctx, uri, flat, &o, err);
}

int kaun__save_from_reader(kaun_reader *r, const char *uri, uint64_t max_shard_size, bool cast,
                           kaun_dtype dtype, kaun_io *given_io, kaun_error *err) {
  kaun_context *ctx = kaun__reader_context(r);
  size_t n = kaun_reader_count(r);
  save_input in = {.n = n, .load = load_from_reader, .reader = r, .cast = cast, .dtype = dtype};
  kaun_io *own_io, *io;
  int rc = save_io(ctx, given_io, &own_io, &io, err);
  if (!rc) rc = kaun_io_new(NULL, NULL, &in.read_io, err);
  if (!rc) {
    in.names = calloc(n + 1, sizeof *in.names);
    in.lens = calloc(n + 1, sizeof *in.lens);
    in.sizes = calloc(n + 1, sizeof *in.sizes);
    if (!in.names || !in.lens || !in.sizes) rc = kaun__error_nomem(err, "copying a checkpoint");
  }
  for (size_t i = 0; i < n && !rc; i++) {
    kaun_reader_tensor t;
    kaun_reader_info(r, i, &t);
    in.names[i] = t.name;
    in.lens[i] = kaun_reader_name_length(r, i);
    in.sizes[i] = t.nbytes;
    if (cast && converts(t.dtype) && t.dtype != dtype) /* whole bytes per element both sides */
      in.sizes[i] = t.nbytes / (kaun_dtype_bits(t.dtype) / 8) * (kaun_dtype_bits(dtype) / 8);
  }
  /* one shard in memory at a time: the shards' reads are parallel already */
  if (!rc) rc = save_sharded(ctx, uri, &in, max_shard_size, 1, io, own_io, err);
  free(in.names);
  free(in.lens);
  free(in.sizes);
  kaun_io_free(in.read_io);
  kaun_io_free(own_io);
  return rc;
}
