/* The SafeTensors codec: header validation and the reference writer. */
#include "index.h"
#include "json.h"
#include "shards.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Names and metadata keep their length: a JSON "\u0000" is a NUL byte
 * inside them, and two names that differ after it are two names. */
typedef struct tensor_rec {
  kaun_safetensors_info info;
  size_t name_len;
} tensor_rec;

struct kaun_safetensors {
  uint64_t header_length;
  uint64_t file_size;
  size_t count;
  tensor_rec *infos; /* in offset order */
  char **names;      /* infos[i].info.name, for the index */
  size_t *name_lens;
  uint64_t *shapes;
  kaun__index index;
  long md_count;         /* -1: none */
  const kaun__json **md; /* the members of __metadata__ */
  kaun__json_doc *doc;   /* owns the strings */
};

void kaun_safetensors_free(kaun_safetensors *st) {
  if (!st) return;
  free(st->infos);
  free(st->names);
  free(st->name_lens);
  free(st->shapes);
  free(st->md);
  kaun__index_free(&st->index);
  kaun__json_free(st->doc);
  free(st);
}

#define NAME_OR_DEFAULT(name) ((name) ? (name) : "SafeTensors data")

/* What a file that is not SafeTensors seems to be, from its first bytes
 * and its name: a hint for the message ("" when nothing is recognised).
 * `json`: whether JSON is a possible answer (only when the 8 bytes read
 * as a length are over the limit, as any JSON text's are; a truncated
 * file's length may start with '{' by chance). */
static const char *looks_like(const unsigned char *b, const char *name, bool json) {
  static const char archive[] =
      " (it looks like an archive: list its members with kaun ls "
      "--members, open one as tar://MEMBER::ARCHIVE)";
  size_t i = 0;
  while (i < 7 && (b[i] == ' ' || b[i] == '\n' || b[i] == '\r' || b[i] == '\t')) i++;
  if (json && (b[i] == '{' || b[i] == '['))
    return " (it starts like JSON: a sharded model's index is read through its folder or a "
           "name ending in .json, by ls, load or cp, not inspect)";
  if ((b[0] == 0x1f && b[1] == 0x8b) || memcmp(b, "\x28\xb5\x2f\xfd", 4) == 0 ||
      memcmp(b,
             "\xfd"
             "7zXZ",
             5) == 0 ||
      memcmp(b, "BZh", 3) == 0 || memcmp(b, "PK\x03\x04", 4) == 0)
    return archive;
  /* compressed archives and zip are known by their bytes above; a plain
   * tar starts with a member's name, so by its own */
  if (name && kaun__ends_with(name, ".tar")) return archive;
  return "";
}

int kaun_safetensors_header_length(const void *first8, size_t avail, uint64_t file_size,
                                   const char *name, uint64_t *out_length, kaun_error *err) {
  if (avail < 8 || file_size < 8)
    return kaun__error_set(err, KAUN_EHEADER_TOO_SMALL,
                           "%s: %llu bytes is too small to be a SafeTensors file (the header "
                           "length alone takes 8)",
                           NAME_OR_DEFAULT(name), (unsigned long long)file_size);
  const unsigned char *b = first8;
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = (n << 8) | b[i];
  if (n > KAUN_SAFETENSORS_MAX_HEADER)
    return kaun__error_set(err, KAUN_EHEADER_TOO_LARGE,
                           "%s: the header claims %llu bytes, more than the limit of 100000000; "
                           "this is not a SafeTensors file, or it is corrupt%s",
                           NAME_OR_DEFAULT(name), (unsigned long long)n, looks_like(b, name, true));
  if (n + 8 > file_size)
    return kaun__error_set(err, KAUN_EHEADER_LENGTH,
                           "%s: the header claims %llu bytes but the file holds only %llu after "
                           "the length field; the file is truncated or corrupt%s",
                           NAME_OR_DEFAULT(name), (unsigned long long)n,
                           (unsigned long long)(file_size - 8), looks_like(b, name, false));
  *out_length = n;
  return KAUN_OK;
}

static int by_offsets(const void *a, const void *b) {
  const kaun_safetensors_info *x = &((const tensor_rec *)a)->info;
  const kaun_safetensors_info *y = &((const tensor_rec *)b)->info;
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  if (x->end != y->end) return x->end < y->end ? -1 : 1;
  return 0;
}

static int parse_metadata(kaun_safetensors *st, const kaun__json *md, const char *name,
                          kaun_error *err) {
  if (md->type == KAUN__JSON_NULL) return KAUN_OK;
  if (md->type != KAUN__JSON_OBJECT)
    return kaun__error_set(err, KAUN_EMETADATA,
                           "%s: line %u: __metadata__ is %s; it must be an object of strings", name,
                           md->line, kaun__json_type_name(md->type));
  st->md = malloc((md->count + 1) * sizeof *st->md);
  if (!st->md) return kaun__error_nomem(err, "reading __metadata__");
  st->md_count = 0;
  for (const kaun__json *m = md->child; m; m = m->next) {
    char shown[KAUN__SHOWN];
    if (m->type != KAUN__JSON_STRING)
      return kaun__error_set(err, KAUN_EMETADATA,
                             "%s: line %u: __metadata__ key \"%s\" is %s; metadata values must "
                             "be strings",
                             name, m->line,
                             kaun__str_escape(m->key, m->key_len, shown, sizeof shown),
                             kaun__json_type_name(m->type));
    st->md[st->md_count++] = m;
  }
  return KAUN_OK;
}

/* Reads one tensor entry into `rec` (shape goes to `shape`).  The name
 * may hold any character, NUL included (as the reference allows). */
static int parse_entry(const kaun__json *e, const char *name, tensor_rec *rec, uint64_t *shape,
                       kaun_error *err) {
  kaun_safetensors_info *info = &rec->info;
  char shown[KAUN__SHOWN];
#define SHOWN_NAME kaun__str_escape(e->key, e->key_len, shown, sizeof shown) /* on failure only */
  if (e->type != KAUN__JSON_OBJECT)
    return kaun__error_set(err, KAUN_EHEADER_JSON,
                           "%s: line %u: the entry for tensor '%s' is %s, not an object", name,
                           e->line, SHOWN_NAME, kaun__json_type_name(e->type));
  const kaun__json *dt = kaun__json_get(e, "dtype");
  const kaun__json *sh = kaun__json_get(e, "shape");
  const kaun__json *off = kaun__json_get(e, "data_offsets");
  const char *missing = !dt ? "dtype" : !sh ? "shape" : !off ? "data_offsets" : NULL;
  if (missing)
    return kaun__error_set(err, KAUN_EHEADER_JSON, "%s: line %u: tensor '%s' has no \"%s\"", name,
                           e->line, SHOWN_NAME, missing);
  if (dt->type != KAUN__JSON_STRING)
    return kaun__error_set(err, KAUN_EHEADER_JSON,
                           "%s: line %u: the dtype of tensor '%s' is %s, not a string", name,
                           dt->line, SHOWN_NAME, kaun__json_type_name(dt->type));
  if (kaun_dtype_from_name(dt->text, dt->text_len, &info->dtype)) {
    char dshown[64];
    return kaun__error_set(err, KAUN_EDTYPE, "%s: line %u: tensor '%s' has unknown dtype \"%s\"",
                           name, dt->line, SHOWN_NAME,
                           kaun__str_escape(dt->text, dt->text_len, dshown, sizeof dshown));
  }
  if (sh->type != KAUN__JSON_ARRAY)
    return kaun__error_set(err, KAUN_EHEADER_JSON,
                           "%s: line %u: the shape of tensor '%s' is %s, not an array", name,
                           sh->line, SHOWN_NAME, kaun__json_type_name(sh->type));
  if (sh->count > KAUN_MAX_DIMS)
    return kaun__error_set(err, KAUN_ENOTSUP,
                           "%s: tensor '%s' has %zu dimensions, more than kaun's limit of %d", name,
                           SHOWN_NAME, sh->count, KAUN_MAX_DIMS);
  size_t d = 0;
  for (const kaun__json *x = sh->child; x; x = x->next, d++) {
    if (!kaun__json_u64(x, &shape[d]))
      return kaun__error_set(err, KAUN_EHEADER_JSON,
                             "%s: line %u: dimension %zu of tensor '%s' is not an unsigned "
                             "64-bit integer",
                             name, x->line, d, SHOWN_NAME);
  }
  info->ndim = d;
  info->shape = shape;
  if (off->type != KAUN__JSON_ARRAY || off->count != 2 ||
      !kaun__json_u64(off->child, &info->begin) || !kaun__json_u64(off->child->next, &info->end))
    return kaun__error_set(err, KAUN_EHEADER_JSON,
                           "%s: line %u: data_offsets of tensor '%s' must be two unsigned "
                           "64-bit integers [begin, end]",
                           name, off->line, SHOWN_NAME);
  info->name = e->key;
  rec->name_len = e->key_len;
  return KAUN_OK;
#undef SHOWN_NAME
}

/* The reference's Metadata::validate, in its order of checks. */
static int validate_layout(kaun_safetensors *st, const char *name, kaun_error *err) {
  qsort(st->infos, st->count, sizeof *st->infos, by_offsets);
  uint64_t expected = 0;
  for (size_t i = 0; i < st->count; i++) {
    const kaun_safetensors_info *in = &st->infos[i].info;
    char shown[KAUN__SHOWN];
#define SHOWN_NAME kaun__str_escape(in->name, st->infos[i].name_len, shown, sizeof shown)
    if (in->begin != expected || in->end < in->begin) {
      if (in->end < in->begin)
        return kaun__error_set(
            err, KAUN_EOFFSET, "%s: tensor '%s' ends (%llu) before it begins (%llu)", name,
            SHOWN_NAME, (unsigned long long)in->end, (unsigned long long)in->begin);
      return kaun__error_set(err, KAUN_EOFFSET,
                             "%s: tensor '%s' begins at %llu but the data before it ends at %llu: "
                             "tensors must be contiguous, with no gap or overlap",
                             name, SHOWN_NAME, (unsigned long long)in->begin,
                             (unsigned long long)expected);
    }
    expected = in->end;
    uint64_t size;
    kaun_error sub = KAUN_ERROR_INIT;
    int rc = kaun_tensor_size_bytes(in->dtype, in->ndim, in->shape, &size, &sub);
    if (rc) return kaun__error_set(err, rc, "%s: tensor '%s': %s", name, SHOWN_NAME, sub.message);
    if (in->end - in->begin != size) {
      char shape[128];
      return kaun__error_set(err, KAUN_ESIZE,
                             "%s: tensor '%s' (%s %s) needs %llu bytes but its data_offsets "
                             "[%llu, %llu] hold %llu",
                             name, SHOWN_NAME, kaun_dtype_name(in->dtype),
                             kaun_shape_format(in->ndim, in->shape, shape, sizeof shape),
                             (unsigned long long)size, (unsigned long long)in->begin,
                             (unsigned long long)in->end,
                             (unsigned long long)(in->end - in->begin));
    }
  }
#undef SHOWN_NAME
  uint64_t data_size = st->file_size - 8 - st->header_length;
  if (expected != data_size)
    return kaun__error_set(err, KAUN_EINCOMPLETE,
                           "%s: the tensors cover %llu bytes of data but the file holds %llu "
                           "after the header; the file is truncated or has trailing bytes",
                           name, (unsigned long long)expected, (unsigned long long)data_size);
  return KAUN_OK;
}

int kaun_safetensors_parse_header(const void *header, size_t length, uint64_t file_size,
                                  const char *name, kaun_safetensors **out, kaun_error *err) {
  *out = NULL;
  name = NAME_OR_DEFAULT(name);
  if (length > KAUN_SAFETENSORS_MAX_HEADER || length + 8 > file_size)
    return kaun__error_set(err, KAUN_EHEADER_LENGTH,
                           "%s: a header of %zu bytes does not fit a file of %llu bytes", name,
                           length, (unsigned long long)file_size);
  kaun_safetensors *st = calloc(1, sizeof *st);
  if (!st) return kaun__error_nomem(err, "reading a SafeTensors header");
  st->header_length = length;
  st->file_size = file_size;
  st->md_count = -1;
  int rc = kaun__json_parse(header, length, name, KAUN_EHEADER_JSON, &st->doc, err);
  if (rc) goto fail;
  kaun__json *root = kaun__json_root(st->doc);
  if (root->type != KAUN__JSON_OBJECT) {
    rc = kaun__error_set(err, KAUN_EHEADER_JSON, "%s: the header is %s, not a JSON object", name,
                         kaun__json_type_name(root->type));
    goto fail;
  }
  size_t dims = 0, n = 0;
  for (kaun__json *m = root->child; m; m = m->next) {
    if (kaun__json_key_is(m, "__metadata__")) continue; /* not "__metadata__\u0000x" */
    n++;
    if (m->type == KAUN__JSON_OBJECT) {
      kaun__json *sh = kaun__json_get(m, "shape");
      if (sh && sh->type == KAUN__JSON_ARRAY) dims += sh->count;
    }
  }
  st->infos = calloc(n ? n : 1, sizeof *st->infos);
  st->names = calloc(n ? n : 1, sizeof *st->names);
  st->name_lens = calloc(n ? n : 1, sizeof *st->name_lens);
  st->shapes = calloc(dims ? dims : 1, sizeof *st->shapes);
  if (!st->infos || !st->names || !st->name_lens || !st->shapes) {
    rc = kaun__error_nomem(err, "reading a SafeTensors header");
    goto fail;
  }
  uint64_t *shape = st->shapes;
  for (kaun__json *m = root->child; m; m = m->next) {
    if (kaun__json_key_is(m, "__metadata__")) {
      if ((rc = parse_metadata(st, m, name, err))) goto fail;
      continue;
    }
    if ((rc = parse_entry(m, name, &st->infos[st->count], shape, err))) goto fail;
    shape += st->infos[st->count].info.ndim;
    st->count++;
  }
  if ((rc = validate_layout(st, name, err))) goto fail;
  for (size_t i = 0; i < st->count; i++) {
    st->names[i] = (char *)st->infos[i].info.name;
    st->name_lens[i] = st->infos[i].name_len;
    if (!kaun__index_add_n(&st->index, st->names, st->name_lens, i + 1, i)) {
      rc = kaun__error_nomem(err, "indexing tensor names");
      goto fail;
    }
  }
  *out = st;
  return KAUN_OK;
fail:
  kaun_safetensors_free(st);
  return rc;
}

int kaun_safetensors_parse(const void *bytes, size_t size, const char *name, kaun_safetensors **out,
                           kaun_error *err) {
  *out = NULL;
  uint64_t n;
  int rc = kaun_safetensors_header_length(bytes, size, size, name, &n, err);
  if (rc) return rc;
  return kaun_safetensors_parse_header((const char *)bytes + 8, (size_t)n, size, name, out, err);
}

int kaun__safetensors_read_via(kaun__read_fn read, void *source, uint64_t size, const char *name,
                               kaun_safetensors **out, kaun_error *err) {
  *out = NULL;
  /* one read that holds most headers (remote: one request), a second
   * only for the rest of a larger one */
  size_t first = size < KAUN__HEADER_PROBE ? (size_t)size : KAUN__HEADER_PROBE;
  unsigned char *buf = malloc(first ? first : 1);
  if (!buf) return kaun__error_nomem(err, "reading a SafeTensors header");
  uint64_t n = 0;
  int rc = read(source, 0, buf, first, err);
  if (!rc) rc = kaun_safetensors_header_length(buf, first, size, name, &n, err);
  if (rc) {
    free(buf);
    return rc;
  }
  if (8 + n <= first) {
    rc = kaun_safetensors_parse_header(buf + 8, (size_t)n, size, name, out, err);
    free(buf);
    return rc;
  }
  char *header = malloc(n ? (size_t)n : 1);
  if (!header) {
    free(buf);
    return kaun__error_nomem(err, "reading a SafeTensors header");
  }
  memcpy(header, buf + 8, first - 8);
  free(buf);
  if (!(rc = read(source, first, header + (first - 8), (size_t)n - (first - 8), err)))
    rc = kaun_safetensors_parse_header(header, (size_t)n, size, name, out, err);
  free(header);
  return rc;
}

typedef struct local_file {
  int fd;
  const char *path;
} local_file;

static int local_read(void *source, uint64_t offset, void *dst, size_t len, kaun_error *err) {
  local_file *f = source;
  if (len && kaun__pread_full(f->fd, dst, len, offset) != 0)
    return kaun__error_sys(err, KAUN_EIO, errno, "cannot read '%s'", f->path);
  return KAUN_OK;
}

int kaun_safetensors_read_file(const char *path, kaun_safetensors **out, kaun_error *err) {
  *out = NULL;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    return kaun__error_sys(err, e == ENOENT ? KAUN_ENOENT : KAUN_EIO, e, "cannot open '%s'", path);
  }
  int rc;
  struct stat sb;
  if (fstat(fd, &sb) != 0) {
    rc = kaun__error_sys(err, KAUN_EIO, errno, "cannot stat '%s'", path);
  } else if (!S_ISREG(sb.st_mode)) {
    rc = kaun__error_set(err, KAUN_EINVAL, "'%s' is not a regular file", path);
  } else {
    local_file f = {fd, path};
    rc = kaun__safetensors_read_via(local_read, &f, (uint64_t)sb.st_size, path, out, err);
  }
  close(fd);
  return rc;
}

uint64_t kaun_safetensors_data_start(const kaun_safetensors *st) { return 8 + st->header_length; }
uint64_t kaun_safetensors_file_size(const kaun_safetensors *st) { return st->file_size; }
size_t kaun_safetensors_count(const kaun_safetensors *st) { return st->count; }

int kaun_safetensors_info_at(const kaun_safetensors *st, size_t i, kaun_safetensors_info *out) {
  if (i >= st->count) return KAUN_EINVAL;
  *out = st->infos[i].info;
  return KAUN_OK;
}

size_t kaun_safetensors_name_length(const kaun_safetensors *st, size_t i) {
  return i < st->count ? st->infos[i].name_len : 0;
}

long kaun_safetensors_find_n(const kaun_safetensors *st, const char *name, size_t len) {
  return kaun__index_find_n(&st->index, st->names, st->name_lens, name, len);
}

long kaun_safetensors_find(const kaun_safetensors *st, const char *name) {
  return kaun_safetensors_find_n(st, name, strlen(name));
}

long kaun_safetensors_metadata_count(const kaun_safetensors *st) { return st->md_count; }

static const kaun__json *md_at(const kaun_safetensors *st, size_t i) {
  return st && st->md_count >= 0 && i < (size_t)st->md_count ? st->md[i] : NULL;
}

const char *kaun_safetensors_metadata_key(const kaun_safetensors *st, size_t i) {
  return md_at(st, i) ? md_at(st, i)->key : NULL;
}

const char *kaun_safetensors_metadata_value(const kaun_safetensors *st, size_t i) {
  return md_at(st, i) ? md_at(st, i)->text : NULL;
}

size_t kaun_safetensors_metadata_key_length(const kaun_safetensors *st, size_t i) {
  return md_at(st, i) ? md_at(st, i)->key_len : 0;
}

size_t kaun_safetensors_metadata_value_length(const kaun_safetensors *st, size_t i) {
  return md_at(st, i) ? md_at(st, i)->text_len : 0;
}

/* ---- writing ------------------------------------------------------------ */

typedef struct sort_item {
  const char *name;
  size_t len;
  unsigned rank;
  size_t index;
} sort_item;

static int writer_order(const void *a, const void *b) {
  const sort_item *x = a, *y = b;
  if (x->rank != y->rank) return x->rank > y->rank ? -1 : 1; /* descending dtype */
  /* then name, bytewise (as Rust orders Strings: a prefix first) */
  int c = memcmp(x->name, y->name, x->len < y->len ? x->len : y->len);
  if (c) return c;
  return (x->len > y->len) - (x->len < y->len);
}

/* Refuses what the reader would refuse back: kaun never writes a file it
 * cannot read.  Strings keep their length (NUL bytes are written as
 * "\u0000", as serde_json does) but must be UTF-8, and no tensor may be
 * called "__metadata__". */
static int check_string(const char *what, const char *s, size_t n, kaun_error *err) {
  if (kaun__utf8_check(s, n) == n) return KAUN_OK;
  char shown[KAUN__SHOWN];
  return kaun__error_set(err, KAUN_EINVAL,
                         "%s '%s' is not valid UTF-8, which a SafeTensors header must be", what,
                         kaun__str_escape(s, n, shown, sizeof shown));
}

int kaun_safetensors_serialize_header(const kaun_flat *flat, char **out, size_t *out_size,
                                      uint64_t *out_data_size, size_t **order, kaun_error *err) {
  *out = NULL;
  if (order) *order = NULL;
  size_t n = kaun_flat_count(flat);
  sort_item *items = malloc((n ? n : 1) * sizeof *items);
  if (!items) return kaun__error_nomem(err, "writing a SafeTensors header");
  int rc = KAUN_OK;
  for (size_t i = 0; i < n && !rc; i++) {
    items[i].name = kaun_flat_name(flat, i);
    items[i].len = kaun_flat_name_length(flat, i);
    items[i].rank = kaun_dtype_rank(kaun_tensor_dtype(kaun_flat_tensor(flat, i)));
    items[i].index = i;
    rc = check_string("the tensor name", items[i].name, items[i].len, err);
    if (!rc && items[i].len == 12 && memcmp(items[i].name, "__metadata__", 12) == 0)
      rc = kaun__error_set(err, KAUN_EINVAL,
                           "a tensor cannot be called '__metadata__': that key holds the metadata");
  }
  for (size_t i = 0; i < kaun_flat_metadata_count(flat) && !rc; i++) {
    rc = check_string("the metadata key", kaun_flat_metadata_key(flat, i),
                      kaun_flat_metadata_key_length(flat, i), err);
    if (!rc)
      rc = check_string("the metadata value", kaun_flat_metadata_value(flat, i),
                        kaun_flat_metadata_value_length(flat, i), err);
  }
  if (rc) {
    free(items);
    return rc;
  }
  qsort(items, n, sizeof *items, writer_order);
  kaun__strbuf sb = {0};
  kaun__strbuf_append(&sb, "\0\0\0\0\0\0\0\0{", 9);
  bool first = true;
  if (kaun_flat_has_metadata(flat)) {
    kaun__strbuf_puts(&sb, "\"__metadata__\":{");
    for (size_t i = 0; i < kaun_flat_metadata_count(flat); i++) {
      if (i) kaun__strbuf_append(&sb, ",", 1);
      kaun__strbuf_json_string(&sb, kaun_flat_metadata_key(flat, i),
                               kaun_flat_metadata_key_length(flat, i));
      kaun__strbuf_append(&sb, ":", 1);
      kaun__strbuf_json_string(&sb, kaun_flat_metadata_value(flat, i),
                               kaun_flat_metadata_value_length(flat, i));
    }
    kaun__strbuf_append(&sb, "}", 1);
    first = false;
  }
  uint64_t offset = 0;
  for (size_t i = 0; i < n; i++) {
    const kaun_tensor *t = kaun_flat_tensor(flat, items[i].index);
    if (!first) kaun__strbuf_append(&sb, ",", 1);
    first = false;
    kaun__strbuf_json_string(&sb, items[i].name, items[i].len);
    kaun__strbuf_printf(&sb, ":{\"dtype\":\"%s\",\"shape\":[",
                        kaun_dtype_name(kaun_tensor_dtype(t)));
    const uint64_t *shape = kaun_tensor_shape(t);
    for (size_t d = 0; d < kaun_tensor_ndim(t); d++)
      kaun__strbuf_printf(&sb, "%s%llu", d ? "," : "", (unsigned long long)shape[d]);
    uint64_t end = offset + kaun_tensor_nbytes(t);
    kaun__strbuf_printf(&sb, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)offset,
                        (unsigned long long)end);
    offset = end;
  }
  kaun__strbuf_append(&sb, "}", 1);
  while ((sb.len - 8) % 8) kaun__strbuf_append(&sb, " ", 1);
  if (sb.failed) {
    kaun__strbuf_free(&sb);
    free(items);
    return kaun__error_nomem(err, "writing a SafeTensors header");
  }
  uint64_t hl = sb.len - 8;
  for (int i = 0; i < 8; i++) sb.data[i] = (char)((hl >> (8 * i)) & 0xFF);
  if (order) {
    *order = malloc((n ? n : 1) * sizeof **order);
    if (!*order) {
      kaun__strbuf_free(&sb);
      free(items);
      return kaun__error_nomem(err, "writing a SafeTensors header");
    }
    for (size_t i = 0; i < n; i++) (*order)[i] = items[i].index;
  }
  free(items);
  *out = sb.data;
  *out_size = sb.len;
  *out_data_size = offset;
  return KAUN_OK;
}
