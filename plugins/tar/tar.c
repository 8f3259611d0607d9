/* kaun's tarball backend: members of an archive that any other backend
 * serves, read in place through libarchive.
 *
 *   tar://MEMBER::OUTER-URI     a member (a file, or a folder: "the model there")
 *   tar://[FOLDER]::OUTER-URI   kaun_storage_list: the members (under FOLDER)
 *
 * open scans the archive's headers once per archive object (the index is
 * kept by the instance, keyed by the outer URI, size, mtime and etag),
 * refusing archives with unsafe names, then resolves the member (links
 * followed inside the archive only).  An uncompressed tar's members are
 * byte ranges of the outer object: map_range hands out zero-copy views
 * when the outer maps, reads are ranged reads of the member's bytes.
 * Compressed archives and zip members are decoded in one forward pass
 * straight into the caller's buffers.  Detection is by content.  ABI 1.1. */
#include <kaun/plugin.h>

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define INDEX_CACHE 8          /* archive indexes an instance keeps */
#define SCAN_BLOCK (16 << 10)  /* read size while scanning an uncompressed archive */
#define STREAM_BLOCK (1 << 20) /* read size while decoding */
#define MAX_HOPS 32            /* links followed before calling it a loop */
#define BOMB_SLACK (1 << 20)   /* decoded bytes allowed before the ratio applies */
#define WINDOW (256 << 10)     /* decoded bytes kept behind the decoder */

enum kind { K_FILE, K_DIR, K_SYMLINK, K_HARDLINK, K_OTHER, K_SPARSE };

typedef struct member {
  char *name; /* normalised */
  char *raw;  /* as written in the archive (messages) */
  char *link; /* symlink target as written, or hardlink target normalised */
  uint64_t size;
  uint64_t data_off; /* in the outer object (uncompressed tar only) */
  int64_t mtime;
  size_t ordinal; /* the entry's position in the archive */
  int kind;
} member;

typedef struct tindex {
  int refs; /* guarded by the backend's lock */
  char *key;
  char *outer; /* the outer URI (messages) */
  char format[64];
  int raw;     /* uncompressed tar: members are byte ranges of the outer object */
  int partial; /* a compressed tar scanned up to one member only (not cached) */
  member *m;
  size_t n;
} tindex;

typedef struct backend {
  kaun_context *ctx;
  uint64_t max_ratio;
  pthread_mutex_t lock;
  tindex *cache[INDEX_CACHE];
  size_t ncache;
} backend;

/* The outer object seen by libarchive. */
typedef struct source {
  kaun_object *inner;
  uint64_t size, pos;
  size_t block;
  char *buf;
  struct archive *a;
  uint64_t max_ratio;
  const char *outer;
  kaun_error err; /* why a callback failed */
} source;

typedef struct object {
  backend *be;
  kaun_object *inner;
  tindex *ix;
  const member *mem; /* after links */
  char *uri;         /* tar://PATH::OUTER, for messages and progress */
  /* decoding state (compressed archives, zip) */
  pthread_mutex_t lock;
  pthread_cond_t moved;
  source src;
  uint64_t pos;   /* decoded bytes of the member delivered so far */
  int open;       /* src.a is positioned in the member */
  int check_rest; /* the headers after the member are still to be checked */
  char *win;      /* the last win_len decoded bytes, ending at pos: a read that */
  size_t win_len; /* starts a little behind (a header read ran past) costs no restart */
} object;

static const kaun_option_spec options[] = {
    {"max_ratio", KAUN_OPTION_INT, "10000", 0, 0,
     "decompression bomb limit: decoded bytes may exceed 1 MiB + this many times the compressed "
     "bytes read"},
    {NULL, 0, NULL, 0, 0, NULL}};

/* ---- names ----------------------------------------------------------------------------- */

/* Normalises a slash-separated path: drops "", "." components and a
 * trailing slash.  With `allow_up`, ".." removes the previous component
 * (returns -2 when it would leave the root); without, any ".." is -2.  An
 * absolute path is -1.  `*out` is malloc'd ("" for the root). */
static int normalise(const char *in, int allow_up, char **out) {
  *out = NULL;
  if (in[0] == '/') return -1;
  size_t n = strlen(in);
  char *o = malloc(n + 1);
  if (!o) return -3;
  size_t len = 0;
  const char *p = in;
  while (*p) {
    const char *e = strchr(p, '/');
    size_t c = e ? (size_t)(e - p) : strlen(p);
    if (c == 0 || (c == 1 && p[0] == '.')) {
    } else if (c == 2 && p[0] == '.' && p[1] == '.') {
      if (!allow_up || len == 0) {
        free(o);
        return -2;
      }
      while (len > 0 && o[len - 1] != '/') len--;
      if (len > 0) len--; /* the slash before it */
    } else {
      if (len) o[len++] = '/';
      memcpy(o + len, p, c);
      len += c;
    }
    p += c;
    if (*p == '/') p++;
  }
  o[len] = '\0';
  *out = o;
  return 0;
}

static int cmp_member(const void *a, const void *b) {
  return strcmp(((const member *)a)->name, ((const member *)b)->name);
}

static const member *find(const tindex *ix, const char *name) {
  member key = {.name = (char *)name};
  if (!ix->n) return NULL; /* ix->m is NULL: not for bsearch */
  return bsearch(&key, ix->m, ix->n, sizeof *ix->m, cmp_member);
}

/* Whether `name` lies under the folder `dir`. */
static int is_under(const char *name, const char *dir) {
  size_t d = strlen(dir);
  return strncmp(name, dir, d) == 0 && name[d] == '/';
}

/* Whether some member lies under `dir` (""= the root): the first name
 * not below "dir/" in the sorted table starts with it, if any does. */
static int has_children(const tindex *ix, const char *dir) {
  size_t d = strlen(dir);
  if (d == 0) return ix->n > 0;
  size_t lo = 0, hi = ix->n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = strncmp(ix->m[mid].name, dir, d);
    if (c < 0 || (c == 0 && (unsigned char)ix->m[mid].name[d] < '/'))
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < ix->n && is_under(ix->m[lo].name, dir);
}

/* ---- libarchive over a kaun object ----------------------------------------------------- */

/* A decompression bomb: more decoded bytes than 1 MiB + max_ratio times
 * the compressed bytes read so far.  Checked as input is read, after each
 * header and after each block of member data. */
static int bomb_check(source *s) {
  if (s->err.code) return s->err.code;
  if (!s->max_ratio || !s->a || archive_filter_count(s->a) < 2) return KAUN_OK;
  int64_t dec = archive_filter_bytes(s->a, 0), comp = archive_filter_bytes(s->a, -1);
  if (dec > 0 && comp >= 0 && (uint64_t)dec > BOMB_SLACK + s->max_ratio * (uint64_t)comp)
    return kaun_error_set(&s->err, KAUN_EIO,
                          "%s: decompression bomb: %lld bytes decoded from %lld compressed bytes, "
                          "more than the limit of %llu times (option max_ratio)",
                          s->outer, (long long)dec, (long long)comp,
                          (unsigned long long)s->max_ratio);
  return KAUN_OK;
}

static la_ssize_t src_read(struct archive *a, void *c, const void **out) {
  source *s = c;
  size_t n = s->size - s->pos < s->block ? (size_t)(s->size - s->pos) : s->block;
  *out = s->buf;
  if (n == 0) return 0;
  if (bomb_check(s)) {
    archive_set_error(a, EIO, "decompression bomb");
    return -1;
  }
  if (kaun_object_read_io(s->inner, s->pos, s->buf, n, NULL, &s->err)) {
    archive_set_error(a, EIO, "%s", s->err.message);
    return -1;
  }
  s->pos += n;
  return (la_ssize_t)n;
}

static la_int64_t src_skip(struct archive *a, void *c, la_int64_t request) {
  (void)a;
  source *s = c;
  if (request <= 0) return 0;
  uint64_t left = s->size - s->pos;
  uint64_t n = (uint64_t)request < left ? (uint64_t)request : left;
  s->pos += n;
  return (la_int64_t)n;
}

static la_int64_t src_seek(struct archive *a, void *c, la_int64_t offset, int whence) {
  (void)a;
  source *s = c;
  int64_t base = whence == SEEK_SET ? 0 : whence == SEEK_CUR ? (int64_t)s->pos : (int64_t)s->size;
  int64_t to = base + offset;
  if (to < 0 || (uint64_t)to > s->size) return ARCHIVE_FATAL;
  s->pos = (uint64_t)to;
  return to;
}

static int archive_failure(source *s, const char *what, kaun_error *err);

static void src_close(source *s) {
  if (s->a) archive_read_free(s->a);
  s->a = NULL;
  free(s->buf);
  s->buf = NULL;
}

/* Opens libarchive on the outer object: tar and zip, the usual filters,
 * nothing that runs an external program. */
static int src_open(source *s, kaun_object *inner, uint64_t size, size_t block, uint64_t ratio,
                    const char *outer, kaun_error *err) {
  memset(s, 0, sizeof *s);
  s->inner = inner;
  s->size = size;
  s->block = block;
  s->max_ratio = ratio;
  s->outer = outer;
  s->err = (kaun_error)KAUN_ERROR_INIT;
  if (!(s->buf = malloc(STREAM_BLOCK)) || !(s->a = archive_read_new())) {
    src_close(s);
    return kaun_error_set(err, KAUN_ENOMEM, "%s: out of memory opening the archive", outer);
  }
  struct archive *a = s->a;
  archive_read_support_format_tar(a);
  archive_read_support_format_zip(a);
  archive_read_support_filter_gzip(a);
  archive_read_support_filter_bzip2(a);
  archive_read_support_filter_xz(a);
  archive_read_support_filter_lzma(a);
  archive_read_support_filter_zstd(a);
  archive_read_support_filter_lz4(a);
  archive_read_set_read_callback(a, src_read);
  archive_read_set_skip_callback(a, src_skip);
  archive_read_set_seek_callback(a, src_seek);
  archive_read_set_callback_data(a, s);
  if (archive_read_open1(a) != ARCHIVE_OK) {
    int rc = archive_failure(s, "opening the archive", err);
    src_close(s);
    return rc;
  }
  return KAUN_OK;
}

/* The error for a failed libarchive call: the outer object's own error
 * when a callback failed, else libarchive's message. */
static int archive_failure(source *s, const char *what, kaun_error *err) {
  if (s->err.code) return kaun_error_set(err, s->err.code, "%s", s->err.message);
  const char *why = archive_error_string(s->a);
  if (!why) why = "unknown error";
  if (strstr(why, "Unrecognized archive format") || strstr(why, "Missing type keyword"))
    return kaun_error_set(err, KAUN_EINVAL, /* the wrong file given: bad input */
                          "%s is not an archive kaun can read (tar, tar.gz, tar.zst, tar.xz, "
                          "tar.bz2, zip): %s",
                          s->outer, why);
  return kaun_error_set(err, KAUN_EIO, "%s: %s: %s (a truncated or corrupt archive)", s->outer,
                        what, why);
}

/* Whether archive_read_next_header's answer `r` (not EOF) is a failure:
 * anything but OK and WARN, and a WARN about damage ("Damaged tar
 * archive", a bad checksum: libarchive would resynchronise at the next
 * header that looks valid; kaun refuses instead).  Other warnings (a name
 * that does not convert to the locale's charset) are fine. */
static int damaged(struct archive *a, int r) {
  if (r == ARCHIVE_OK) return 0;
  if (r != ARCHIVE_WARN) return 1; /* ARCHIVE_RETRY (a bad header), FAILED, FATAL */
  const char *why = archive_error_string(a);
  return why && (strstr(why, "amaged") || strstr(why, "runcated") || strstr(why, "hecksum"));
}

/* ---- the index ------------------------------------------------------------------------- */

static void index_free(tindex *ix) {
  if (!ix) return;
  for (size_t i = 0; i < ix->n; i++) {
    free(ix->m[i].name);
    free(ix->m[i].raw);
    free(ix->m[i].link);
  }
  free(ix->m);
  free(ix->key);
  free(ix->outer);
  free(ix);
}

static void index_unref(backend *be, tindex *ix) {
  if (!ix) return;
  pthread_mutex_lock(&be->lock);
  int last = --ix->refs == 0;
  pthread_mutex_unlock(&be->lock);
  if (last) index_free(ix);
}

static int add_member(tindex *ix, size_t *cap, struct archive *a, struct archive_entry *e,
                      size_t ordinal, kaun_error *err) {
  const char *raw = archive_entry_pathname(e);
  if (!raw) raw = archive_entry_pathname_utf8(e);
  if (!raw || !raw[0])
    return kaun_error_set(err, KAUN_EIO, "%s: entry %zu has no readable name", ix->outer, ordinal);
  char *name = NULL;
  int bad = normalise(raw, 0, &name);
  if (bad == -3) return kaun_error_set(err, KAUN_ENOMEM, "%s: out of memory", ix->outer);
  if (bad == -1)
    return kaun_error_set(err, KAUN_EACCESS,
                          "%s: member '%s' has an absolute name: kaun refuses the archive",
                          ix->outer, raw);
  if (bad == -2)
    return kaun_error_set(err, KAUN_EACCESS,
                          "%s: member '%s' has a '..' component: kaun refuses the archive",
                          ix->outer, raw);
  if (!name[0]) { /* "./" itself */
    free(name);
    return KAUN_OK;
  }
  if (ix->n == *cap) {
    size_t ncap = *cap ? *cap * 2 : 64;
    member *m = realloc(ix->m, ncap * sizeof *m);
    if (!m) {
      free(name);
      return kaun_error_set(err, KAUN_ENOMEM, "%s: out of memory", ix->outer);
    }
    ix->m = m;
    *cap = ncap;
  }
  member *m = &ix->m[ix->n];
  memset(m, 0, sizeof *m);
  m->name = name;
  m->ordinal = ordinal;
  m->mtime = archive_entry_mtime(e);
  m->size = archive_entry_size_is_set(e) && archive_entry_size(e) > 0
                ? (uint64_t)archive_entry_size(e)
                : 0;
  m->data_off = (uint64_t)archive_filter_bytes(a, 0);
  const char *hard = archive_entry_hardlink(e);
  unsigned type = archive_entry_filetype(e);
  const char *target = NULL;
  if (hard) {
    m->kind = K_HARDLINK;
    target = hard;
  } else if (type == AE_IFREG) {
    m->kind = archive_entry_sparse_reset(e) > 0 ? K_SPARSE : K_FILE;
    if (!archive_entry_size_is_set(e)) m->kind = K_OTHER;
  } else if (type == AE_IFDIR) {
    m->kind = K_DIR;
  } else if (type == AE_IFLNK) {
    m->kind = K_SYMLINK;
    target = archive_entry_symlink(e);
    if (!target) target = "";
  } else {
    m->kind = K_OTHER;
  }
  ix->n++;
  if (!(m->raw = strdup(raw)) || (target && !(m->link = strdup(target))))
    return kaun_error_set(err, KAUN_ENOMEM, "%s: out of memory", ix->outer);
  return KAUN_OK;
}

/* Reads every header of the archive. */
/* Reads every header of the archive into `ix`, through `src` (closed
 * after, unless it stops early).  With `stop_at`, a compressed tar's scan
 * stops at that member when it is a regular file, leaving `src`
 * positioned at its data: one decoding pass serves the scan and the read
 * (`*stopped` = 1, `ix->partial`); the names before it are checked now,
 * the ones after it when its last byte is read (check_rest). */
static int scan(backend *be, kaun_object *inner, const kaun_stat *st, tindex *ix,
                const char *stop_at, source *src, int *stopped, kaun_error *err) {
  *stopped = 0;
  int uncompressed_hint = 1;
  int rc = src_open(src, inner, st->size, SCAN_BLOCK, be->max_ratio, ix->outer, err);
  if (rc) return rc;
#define s (*src)
  size_t cap = 0;
  for (size_t ordinal = 0;; ordinal++) {
    struct archive_entry *e;
    int r = archive_read_next_header(s.a, &e);
    if (r >= ARCHIVE_WARN && (rc = bomb_check(&s))) {
      kaun_error_set(err, rc, "%s", s.err.message);
      break;
    }
    if (r == ARCHIVE_EOF) break;
    if (damaged(s.a, r)) {
      rc = archive_failure(&s, ordinal ? "reading the headers" : "reading the first header", err);
      break;
    }
    if (ordinal == 0) {
      uncompressed_hint =
          archive_filter_count(s.a) == 1 && archive_filter_code(s.a, 0) == ARCHIVE_FILTER_NONE;
      if (!uncompressed_hint) s.block = STREAM_BLOCK; /* decoding: read bigger blocks */
    }
    if ((rc = add_member(ix, &cap, s.a, e, ordinal, err))) break;
    const member *m = ix->n ? &ix->m[ix->n - 1] : NULL;
    if (m && m->ordinal == ordinal && uncompressed_hint &&
        (archive_format(s.a) & ARCHIVE_FORMAT_BASE_MASK) == ARCHIVE_FORMAT_TAR &&
        m->kind == K_FILE && (m->data_off > st->size || m->size > st->size - m->data_off)) {
      rc =
          kaun_error_set(err, KAUN_EIO,
                         "%s: member '%s' claims %llu bytes but the archive ends %llu bytes "
                         "into them (a truncated archive)",
                         ix->outer, m->raw, (unsigned long long)m->size,
                         (unsigned long long)(st->size > m->data_off ? st->size - m->data_off : 0));
      break;
    }
    if (stop_at && m && m->ordinal == ordinal && m->kind == K_FILE && !uncompressed_hint &&
        (archive_format(s.a) & ARCHIVE_FORMAT_BASE_MASK) == ARCHIVE_FORMAT_TAR &&
        strcmp(m->name, stop_at) == 0) {
      for (size_t i = 0; !rc && i + 1 < ix->n; i++) {
        const member *p = &ix->m[i];
        if (strcmp(p->name, m->name) == 0)
          rc = kaun_error_set(err, KAUN_EDUPLICATE,
                              "%s: member '%s' appears twice (as '%s' and '%s'): kaun refuses "
                              "the archive rather than pick one",
                              ix->outer, m->name, p->raw, m->raw);
        else if (is_under(p->name, m->name) || (p->kind != K_DIR && is_under(m->name, p->name)))
          rc = kaun_error_set(err, KAUN_EDUPLICATE,
                              "%s: member '%s' is both a file and a folder of other members",
                              ix->outer, is_under(p->name, m->name) ? m->raw : p->raw);
      }
      if (rc) break;
      snprintf(ix->format, sizeof ix->format, "%s + %s", archive_format_name(s.a),
               archive_filter_name(s.a, 0));
      ix->partial = 1;
      *stopped = 1;
      return KAUN_OK;
    }
  }
#undef s
  if (!rc) {
    snprintf(ix->format, sizeof ix->format, "%s%s%s", archive_format_name(src->a),
             archive_filter_count(src->a) > 1 ? " + " : "",
             archive_filter_count(src->a) > 1 ? archive_filter_name(src->a, 0) : "");
    ix->raw = uncompressed_hint &&
              (archive_format(src->a) & ARCHIVE_FORMAT_BASE_MASK) == ARCHIVE_FORMAT_TAR;
  }
  src_close(src);
  if (rc) return rc;
  if (ix->n) qsort(ix->m, ix->n, sizeof *ix->m, cmp_member); /* no members: m is NULL */
  for (size_t i = 1; i < ix->n; i++) {
    const member *a = &ix->m[i - 1], *b = &ix->m[i];
    if (strcmp(a->name, b->name) == 0 && !(a->kind == K_DIR && b->kind == K_DIR))
      return kaun_error_set(err, KAUN_EDUPLICATE,
                            "%s: member '%s' appears twice (as '%s' and '%s'): kaun refuses the "
                            "archive rather than pick one",
                            ix->outer, a->name, a->raw, b->raw);
  }
  for (size_t i = 0; i < ix->n; i++) { /* a file cannot also be a folder */
    const member *m = &ix->m[i];
    if (m->kind != K_DIR && has_children(ix, m->name))
      return kaun_error_set(err, KAUN_EDUPLICATE,
                            "%s: member '%s' is both a file and a folder of other members",
                            ix->outer, m->raw);
  }
  for (size_t i = 0; i < ix->n; i++) { /* hardlink targets, normalised */
    member *m = &ix->m[i];
    if (m->kind != K_HARDLINK) continue;
    char *t = NULL;
    int bad = normalise(m->link, 0, &t);
    if (bad == -3) return kaun_error_set(err, KAUN_ENOMEM, "%s: out of memory", ix->outer);
    if (bad)
      return kaun_error_set(err, KAUN_EACCESS,
                            "%s: hard link '%s' points outside the archive ('%s')", ix->outer,
                            m->raw, m->link);
    free(m->link);
    m->link = t;
  }
  return KAUN_OK;
}

/* The index of the archive `inner`: the instance's, or scanned now
 * through `src` (see scan for `stop_at` and `*stopped`; a partial index
 * is the caller's alone). */
static int get_index(backend *be, kaun_object *inner, const char *stop_at, source *src,
                     int *stopped, tindex **out, kaun_error *err) {
  *stopped = 0;
  kaun_stat st = {.struct_size = sizeof st};
  int rc = kaun_object_stat(inner, &st, err);
  if (rc) return rc;
  const char *outer = kaun_object_uri(inner);
  size_t klen = strlen(outer) + strlen(st.etag) + 64;
  char *key = malloc(klen);
  if (!key) return kaun_error_set(err, KAUN_ENOMEM, "%s: out of memory", outer);
  snprintf(key, klen, "%s\n%llu\n%lld\n%s", outer, (unsigned long long)st.size, (long long)st.mtime,
           st.etag);
  pthread_mutex_lock(&be->lock);
  for (size_t i = 0; i < be->ncache; i++)
    if (strcmp(be->cache[i]->key, key) == 0) {
      *out = be->cache[i];
      (*out)->refs++;
      pthread_mutex_unlock(&be->lock);
      free(key);
      return KAUN_OK;
    }
  pthread_mutex_unlock(&be->lock);
  tindex *ix = calloc(1, sizeof *ix);
  if (!ix || !(ix->outer = strdup(outer))) {
    free(ix);
    free(key);
    return kaun_error_set(err, KAUN_ENOMEM, "%s: out of memory", outer);
  }
  ix->key = key;
  ix->refs = 1;
  if ((rc = scan(be, inner, &st, ix, stop_at, src, stopped, err))) {
    index_free(ix);
    return rc;
  }
  if (*stopped) {
    *out = ix;
    return KAUN_OK;
  }
  tindex *evicted = NULL;
  pthread_mutex_lock(&be->lock);
  if (be->ncache == INDEX_CACHE) {
    evicted = be->cache[0];
    memmove(be->cache, be->cache + 1, (INDEX_CACHE - 1) * sizeof *be->cache);
    be->ncache--;
  }
  be->cache[be->ncache++] = ix;
  ix->refs++; /* the cache's */
  pthread_mutex_unlock(&be->lock);
  index_unref(be, evicted);
  *out = ix;
  return KAUN_OK;
}

/* Follows symlinks (in any component) and hardlinks inside the archive.
 * `*out` is the member, or NULL for a folder (explicit or implied). */
static int resolve(const tindex *ix, const char *asked, const member **out, kaun_error *err) {
  *out = NULL;
  char *path = NULL;
  int bad = normalise(asked, 0, &path);
  if (bad == -3) return kaun_error_set(err, KAUN_ENOMEM, "out of memory");
  if (bad)
    return kaun_error_set(err, KAUN_EACCESS,
                          "tar://%s::%s: a member name may not be absolute or contain '..'", asked,
                          ix->outer);
  for (int hops = 0;; hops++) {
    if (hops > MAX_HOPS) {
      free(path);
      return kaun_error_set(err, KAUN_EIO, "%s: member '%s': more than %d links (a link loop)",
                            ix->outer, asked, MAX_HOPS);
    }
    /* a symlink in a leading component, or the whole path */
    const member *link = NULL;
    size_t cut = 0;
    for (size_t i = 0; !link; i++) {
      if (path[i] == '/' || path[i] == '\0') {
        char save = path[i];
        path[i] = '\0';
        const member *m = path[0] ? find(ix, path) : NULL;
        path[i] = save;
        if (m && m->kind == K_SYMLINK) {
          link = m;
          cut = i;
        }
        if (!save) break;
      }
    }
    if (link) {
      if (link->link[0] == '/') {
        int rc = kaun_error_set(err, KAUN_EACCESS,
                                "%s: member '%s' is a link to '%s', outside the archive", ix->outer,
                                link->raw, link->link);
        free(path);
        return rc;
      }
      const char *slash = strrchr(link->name, '/');
      size_t dir = slash ? (size_t)(slash - link->name) + 1 : 0;
      size_t n = dir + strlen(link->link) + strlen(path + cut) + 2;
      char *joined = malloc(n);
      if (!joined) {
        free(path);
        return kaun_error_set(err, KAUN_ENOMEM, "out of memory");
      }
      snprintf(joined, n, "%.*s%s%s", (int)dir, link->name, link->link, path + cut);
      free(path);
      path = NULL;
      bad = normalise(joined, 1, &path);
      free(joined);
      if (bad == -3) return kaun_error_set(err, KAUN_ENOMEM, "out of memory");
      if (bad)
        return kaun_error_set(err, KAUN_EACCESS,
                              "%s: member '%s' is a link to '%s', outside the archive", ix->outer,
                              link->raw, link->link);
      continue;
    }
    const member *m = path[0] ? find(ix, path) : NULL;
    if (m && m->kind == K_HARDLINK) {
      free(path);
      if (!(path = strdup(m->link))) return kaun_error_set(err, KAUN_ENOMEM, "out of memory");
      continue;
    }
    int rc = KAUN_OK;
    if (m && m->kind == K_FILE) {
      *out = m;
    } else if (m && m->kind == K_SPARSE) {
      rc = kaun_error_set(err, KAUN_ENOTSUP, "%s: member '%s' is a sparse file: not supported",
                          ix->outer, m->raw);
    } else if (m && m->kind == K_OTHER) {
      rc = kaun_error_set(err, KAUN_EACCESS,
                          "%s: member '%s' is not a regular file (a device, FIFO or socket): "
                          "kaun does not read it",
                          ix->outer, m->raw);
    } else if ((m && m->kind == K_DIR) || has_children(ix, path)) {
      rc = kaun_error_set(err, KAUN_EISDIR, "tar://%s::%s is a folder of the archive", asked,
                          ix->outer);
    } else {
      rc = kaun_error_set(err, KAUN_ENOENT, "%s has no member '%s'", ix->outer, asked);
    }
    free(path);
    return rc;
  }
}

/* ---- the backend ----------------------------------------------------------------------- */

static int t_create(kaun_context *ctx, const char *instance, const kaun_options *opts, void **out,
                    kaun_error *err) {
  int64_t ratio = kaun_options_get_int(opts, "max_ratio", 10000);
  if (ratio < 0)
    return kaun_error_set(err, KAUN_ECONFIG, "%s: max_ratio must be 0 (no limit) or more",
                          instance);
  backend *be = calloc(1, sizeof *be);
  if (!be) return kaun_error_set(err, KAUN_ENOMEM, "%s: out of memory", instance);
  be->ctx = ctx;
  be->max_ratio = (uint64_t)ratio;
  pthread_mutex_init(&be->lock, NULL);
  *out = be;
  return KAUN_OK;
}

static void t_destroy(void *b) {
  backend *be = b;
  for (size_t i = 0; i < be->ncache; i++) index_unref(be, be->cache[i]);
  pthread_mutex_destroy(&be->lock);
  free(be);
}

static void t_close(void *o);

static int t_open(void *b, const char *path, kaun_object *inner, void **out, kaun_error *err) {
  backend *be = b;
  if (!inner)
    return kaun_error_set(err, KAUN_EURI,
                          "tar://%s: name the archive after '::' (tar://MEMBER::OUTER-URI)", path);
  object *o = calloc(1, sizeof *o);
  if (!o) return kaun_error_set(err, KAUN_ENOMEM, "tar://%s: out of memory", path);
  pthread_mutex_init(&o->lock, NULL);
  pthread_cond_init(&o->moved, NULL);
  o->be = be;
  o->inner = inner;
  const char *outer = kaun_object_uri(inner);
  size_t n = strlen(path) + strlen(outer) + 16;
  int rc = KAUN_OK;
  if (!(o->uri = malloc(n)))
    rc = kaun_error_set(err, KAUN_ENOMEM, "tar://%s: out of memory", path);
  else
    snprintf(o->uri, n, "tar://%s::%s", path, outer);
  char *want = NULL;
  int stopped = 0;
  if (!rc && normalise(path, 0, &want) == -3)
    rc = kaun_error_set(err, KAUN_ENOMEM, "tar://%s: out of memory", path);
  if (!rc) rc = get_index(be, inner, want, &o->src, &stopped, &o->ix, err);
  free(want);
  if (!rc && stopped) { /* a compressed tar, positioned at the member */
    o->mem = &o->ix->m[o->ix->n - 1];
    o->open = 1;
    o->check_rest = 1;
  } else if (!rc) {
    rc = resolve(o->ix, path, &o->mem, err);
  }
  if (!rc && !o->ix->raw) o->win = malloc(WINDOW); /* NULL only costs restarts */
  if (rc) {
    t_close(o);
    return rc;
  }
  *out = o;
  return KAUN_OK;
}

static void t_close(void *ob) {
  object *o = ob;
  src_close(&o->src);
  free(o->win);
  index_unref(o->be, o->ix);
  pthread_cond_destroy(&o->moved);
  pthread_mutex_destroy(&o->lock);
  free(o->uri);
  free(o);
}

static int t_stat(void *ob, kaun_stat *st, kaun_error *err) {
  (void)err;
  object *o = ob;
  st->size = o->mem->size;
  st->mtime = o->mem->mtime;
  st->etag[0] = '\0';
  st->local_path[0] = '\0';
  return KAUN_OK;
}

static int check_range(const object *o, uint64_t offset, uint64_t len, kaun_error *err) {
  if (offset > o->mem->size || len > o->mem->size - offset)
    return kaun_error_set(err, KAUN_EIO, "%s: bytes %llu..%llu are past its end (%llu bytes)",
                          o->uri, (unsigned long long)offset, (unsigned long long)(offset + len),
                          (unsigned long long)o->mem->size);
  return KAUN_OK;
}

/* Positions a fresh decoder at the start of the member's data. */
static int stream_start(object *o, kaun_error *err) {
  src_close(&o->src);
  o->open = 0;
  kaun_stat st = {.struct_size = sizeof st};
  int rc = kaun_object_stat(o->inner, &st, err);
  if (rc) return rc;
  if ((rc =
           src_open(&o->src, o->inner, st.size, STREAM_BLOCK, o->be->max_ratio, o->ix->outer, err)))
    return rc;
  for (size_t ordinal = 0; ordinal <= o->mem->ordinal; ordinal++) {
    struct archive_entry *e;
    int r = archive_read_next_header(o->src.a, &e);
    if (r == ARCHIVE_EOF)
      return kaun_error_set(err, KAUN_ECHANGED, "%s: the archive ended before member '%s'",
                            o->ix->outer, o->mem->raw);
    if (damaged(o->src.a, r)) return archive_failure(&o->src, "reading the headers", err);
    if (ordinal == o->mem->ordinal) {
      const char *raw = archive_entry_pathname(e);
      if (!raw) raw = archive_entry_pathname_utf8(e);
      if (!raw || strcmp(raw, o->mem->raw) != 0)
        return kaun_error_set(err, KAUN_ECHANGED, "%s: member '%s' moved in the archive",
                              o->ix->outer, o->mem->raw);
    }
  }
  o->pos = 0;
  o->open = 1;
  o->win_len = 0;
  return KAUN_OK;
}

/* Appends decoded bytes to the window behind the decoder. */
static void window_add(object *o, const char *p, size_t n) {
  if (!o->win) return;
  if (n >= WINDOW) {
    memcpy(o->win, p + n - WINDOW, WINDOW);
    o->win_len = WINDOW;
    return;
  }
  size_t keep = o->win_len + n > WINDOW ? WINDOW - n : o->win_len;
  memmove(o->win, o->win + o->win_len - keep, keep);
  memcpy(o->win + keep, p, n);
  o->win_len = keep + n;
}

/* Decodes `len` bytes of the member into `dst` (NULL: discard). */
static int stream_take(object *o, char *dst, uint64_t len, kaun_io *io, kaun_error *err) {
  char *scratch = NULL;
  while (len) {
    if (kaun_io_canceled(io)) {
      free(scratch);
      return kaun_error_set(err, KAUN_ECANCELED, "%s: canceled", o->uri);
    }
    size_t want = len < STREAM_BLOCK ? (size_t)len : STREAM_BLOCK;
    char *to = dst;
    if (!to && !scratch && !(scratch = malloc(STREAM_BLOCK)))
      return kaun_error_set(err, KAUN_ENOMEM, "%s: out of memory", o->uri);
    if (!to) to = scratch;
    la_ssize_t n = archive_read_data(o->src.a, to, want);
    if (n <= 0) {
      o->open = 0;
      int rc = n == 0 ? kaun_error_set(err, KAUN_EIO,
                                       "%s: member '%s' ends %llu bytes short of its declared "
                                       "%llu (a truncated archive)",
                                       o->ix->outer, o->mem->raw,
                                       (unsigned long long)(o->mem->size - o->pos),
                                       (unsigned long long)o->mem->size)
                      : archive_failure(&o->src, "decoding member", err);
      if (n < 0 && !o->src.err.code && err && !strstr(err->message, o->mem->raw)) {
        char msg[KAUN_ERROR_MESSAGE_MAX];
        snprintf(msg, sizeof msg, "%s", err->message);
        kaun_error_set(err, rc, "%s (member '%s')", msg, o->mem->raw);
      }
      free(scratch);
      return rc;
    }
    int rc = bomb_check(&o->src);
    if (rc) {
      free(scratch);
      return kaun_error_set(err, rc, "%s", o->src.err.message);
    }
    window_add(o, to, (size_t)n);
    o->pos += (uint64_t)n;
    len -= (uint64_t)n;
    if (dst) {
      dst += n;
      if (kaun_io_add(io, o->uri, o->mem->size, (uint64_t)n) == KAUN_ECANCELED) {
        free(scratch);
        return kaun_error_set(err, KAUN_ECANCELED, "%s: canceled", o->uri);
      }
    }
  }
  free(scratch);
  return KAUN_OK;
}

/* After the last byte of a member found by a stopped scan: the headers
 * after it, for a name that repeats it or is unsafe. */
static int check_rest(object *o, kaun_error *err) {
  int rc = KAUN_OK;
  while (!rc) {
    struct archive_entry *e;
    int r = archive_read_next_header(o->src.a, &e);
    if (r >= ARCHIVE_WARN && (rc = bomb_check(&o->src)))
      return kaun_error_set(err, rc, "%s", o->src.err.message);
    if (r == ARCHIVE_EOF) break;
    if (damaged(o->src.a, r)) return archive_failure(&o->src, "reading the headers", err);
    const char *raw = archive_entry_pathname(e);
    if (!raw) raw = archive_entry_pathname_utf8(e);
    if (!raw) raw = "";
    char *name = NULL;
    int bad = normalise(raw, 0, &name);
    if (bad == -3)
      rc = kaun_error_set(err, KAUN_ENOMEM, "%s: out of memory", o->ix->outer);
    else if (bad == -1)
      rc = kaun_error_set(err, KAUN_EACCESS,
                          "%s: member '%s' has an absolute name: kaun refuses the archive",
                          o->ix->outer, raw);
    else if (bad == -2)
      rc = kaun_error_set(err, KAUN_EACCESS,
                          "%s: member '%s' has a '..' component: kaun refuses the archive",
                          o->ix->outer, raw);
    else if (strcmp(name, o->mem->name) == 0)
      rc = kaun_error_set(err, KAUN_EDUPLICATE,
                          "%s: member '%s' appears twice (as '%s' and '%s'): kaun refuses the "
                          "archive rather than pick one",
                          o->ix->outer, o->mem->name, o->mem->raw, raw);
    else if (is_under(name, o->mem->name))
      rc = kaun_error_set(err, KAUN_EDUPLICATE,
                          "%s: member '%s' is both a file and a folder of other members",
                          o->ix->outer, o->mem->raw);
    free(name);
  }
  o->check_rest = 0;
  o->open = 0; /* at the end: a later read starts again */
  return rc;
}

static int t_read_io(void *ob, uint64_t offset, void *dst, size_t len, kaun_io *io,
                     kaun_error *err) {
  object *o = ob;
  int rc = check_range(o, offset, len, err);
  if (rc || !len) return rc;
  if (o->ix->raw)
    return kaun_object_read_io(o->inner, o->mem->data_off + offset, dst, len, io, err);
  pthread_mutex_lock(&o->lock);
  /* loads read in file order from several threads: give an earlier read
   * that is on its way a moment to take its turn before skipping past it */
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_nsec += 50 * 1000 * 1000;
  if (until.tv_nsec >= 1000000000) until.tv_sec++, until.tv_nsec -= 1000000000;
  while (o->open && o->pos < offset)
    if (pthread_cond_timedwait(&o->moved, &o->lock, &until) == ETIMEDOUT) break;
  if (o->open && offset < o->pos && o->pos - offset <= o->win_len) { /* behind, in the window */
    size_t from = o->win_len - (size_t)(o->pos - offset);
    size_t n = len < o->win_len - from ? len : o->win_len - from;
    memcpy(dst, o->win + from, n);
    dst = (char *)dst + n;
    offset += n;
    len -= n;
    if (kaun_io_add(io, o->uri, o->mem->size, n) == KAUN_ECANCELED)
      rc = kaun_error_set(err, KAUN_ECANCELED, "%s: canceled", o->uri);
  }
  if (!rc && len && (!o->open || offset < o->pos)) rc = stream_start(o, err);
  if (!rc && len) rc = stream_take(o, NULL, offset - o->pos, io, err);
  if (!rc && len) rc = stream_take(o, dst, len, io, err);
  if (!rc && o->check_rest && o->pos == o->mem->size) rc = check_rest(o, err);
  if (rc) src_close(&o->src), o->open = 0;
  pthread_cond_broadcast(&o->moved);
  pthread_mutex_unlock(&o->lock);
  return rc;
}

static int t_read(void *ob, uint64_t offset, void *dst, size_t len, kaun_error *err) {
  return t_read_io(ob, offset, dst, len, NULL, err);
}

static int t_map_range(void *ob, uint64_t offset, uint64_t len, const void **out_data,
                       void **out_cookie, kaun_error *err) {
  object *o = ob;
  int rc = check_range(o, offset, len, err);
  if (rc) return rc;
  if (!o->ix->raw)
    return kaun_error_set(err, KAUN_ENOTSUP, "%s: a compressed member is read, not mapped", o->uri);
  kaun_buffer *buf;
  if ((rc = kaun_object_map_range(o->inner, o->mem->data_off + offset, len, &buf, err))) return rc;
  *out_data = kaun_buffer_data(buf);
  *out_cookie = buf;
  return KAUN_OK;
}

static int t_map(void *ob, const void **out_data, size_t *out_size, void **out_cookie,
                 kaun_error *err) {
  object *o = ob;
  *out_size = (size_t)o->mem->size;
  return t_map_range(ob, 0, o->mem->size, out_data, out_cookie, err);
}

static void t_unmap(void *b, void *cookie) {
  (void)b;
  kaun_buffer_unref(cookie);
}

/* list: the core passes no inner object to list, so the archive comes
 * in the path: "PREFIX::OUTER-URI", written tar://PREFIX\::OUTER-URI. */
static int t_list(void *b, const char *prefix, kaun_list_fn fn, void *context, kaun_error *err) {
  backend *be = b;
  const char *sep = strstr(prefix, "::");
  if (!sep || !sep[2])
    return kaun_error_set(err, KAUN_EURI,
                          "tar://%s: to list an archive's members write "
                          "tar://FOLDER\\::OUTER-URI (or tar://\\::OUTER-URI for all)",
                          prefix);
  char *dir = NULL;
  char *want = strndup(prefix, (size_t)(sep - prefix));
  if (!want) return kaun_error_set(err, KAUN_ENOMEM, "out of memory");
  int bad = normalise(want, 0, &dir);
  free(want);
  if (bad == -3) return kaun_error_set(err, KAUN_ENOMEM, "out of memory");
  if (bad)
    return kaun_error_set(err, KAUN_EACCESS,
                          "tar://%s: a folder name may not be absolute or contain '..'", prefix);
  kaun_object *inner;
  int rc = kaun_object_open(be->ctx, sep + 2, &inner, err);
  tindex *ix = NULL;
  source src;
  int stopped;
  if (!rc) rc = get_index(be, inner, NULL, &src, &stopped, &ix, err);
  kaun_object_close(inner);
  size_t d = dir ? strlen(dir) : 0;
  for (size_t i = 0; !rc && i < ix->n; i++) {
    const member *m = &ix->m[i];
    if (m->kind == K_DIR) continue;
    if (d && !(strncmp(m->name, dir, d) == 0 && m->name[d] == '/')) continue;
    const member *target = m;
    kaun_error ignored = KAUN_ERROR_INIT;
    if (m->kind == K_SYMLINK || m->kind == K_HARDLINK) {
      if (resolve(ix, m->name, &target, &ignored) || !target) continue; /* dangling: skip */
    } else if (m->kind != K_FILE) {
      continue;
    }
    if (fn(m->name + (d ? d + 1 : 0), target->size, context)) break;
  }
  if (!rc && d && !has_children(ix, dir))
    rc = kaun_error_set(err, KAUN_ENOENT, "%s has no folder '%s'", ix->outer, dir);
  index_unref(be, ix);
  free(dir);
  return rc;
}

static const kaun_plugin tar_plugin = {
    .abi_major = KAUN_PLUGIN_ABI_MAJOR,
    .abi_minor = KAUN_PLUGIN_ABI_MINOR,
    .struct_size = sizeof(kaun_plugin),
    .name = "tar",
    .version = "1.0",
    .description =
        "members of tar, tar.gz, tar.zst, tar.xz, tar.bz2 and zip archives stored "
        "anywhere: tar://MEMBER::OUTER-URI",
    .options = options,
    .capabilities = KAUN_CAP_READ | KAUN_CAP_MAP | KAUN_CAP_LIST | KAUN_CAP_STACKED,
    .create = t_create,
    .destroy = t_destroy,
    .open = t_open,
    .close = t_close,
    .stat = t_stat,
    .read = t_read,
    .map = t_map,
    .unmap = t_unmap,
    .list = t_list,
    .read_io = t_read_io,
    .map_range = t_map_range,
    .read_chunk = 8 << 20,
    .read_inflight = 8,
};

KAUN_PLUGIN_DEFINE(tar_plugin)
