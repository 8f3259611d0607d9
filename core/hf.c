/* kaun — the HuggingFace Hub: downloads into the shared cache in
 * huggingface_hub's layout (include/kaun/hf.h, docs/hub.md).
 *
 * Resolution (../shared/HUB_PROTOCOL.md section 4): a cached commit never
 * touches the network; offline, refs/ answers; online, a HEAD on the
 * resolve URL (relative redirects followed, absolute ones read) gives the
 * commit, etag and size; the blob is filled once through
 * kaun_cache_get_or_fill (lock, temporary, size + hash check, rename),
 * then linked from snapshots/ and recorded in refs/.  Every request goes
 * through <kaun/http.h>. */
#include "internal.h"
#include "hf_internal.h"

#include <kaun/hf.h>

#include <ctype.h>
#include <dirent.h>
#include <json-c/json.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define HF_DEFAULT_ENDPOINT "https://huggingface.co"
#define HF_PATH_MAX 4096
#define HF_PARALLEL 8
#define EMPTY_SHA1 "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
#define EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

/* ---- names ---------------------------------------------------------------------- */

static int is_hex(const char *s, size_t n) {
  if (strlen(s) != n) return 0;
  for (size_t i = 0; i < n; i++)
    if (!isxdigit((unsigned char)s[i])) return 0;
  return 1;
}

static int is_commit(const char *rev) { return rev && is_hex(rev, 40); }

static int valid_repo_part(const char *s, size_t n) {
  if (n == 0 || n > 96) return 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!isalnum((unsigned char)c) && c != '_' && c != '.' && c != '-') return 0;
    if (i + 1 < n && ((c == '-' && s[i + 1] == '-') || (c == '.' && s[i + 1] == '.'))) return 0;
  }
  if (s[0] == '-' || s[0] == '.' || s[n - 1] == '-' || s[n - 1] == '.') return 0;
  if (n >= 4 && memcmp(s + n - 4, ".git", 4) == 0) return 0;
  return 1;
}

static int check_repo_id(const char *id, kaun_error *err) {
  const char *slash = id ? strchr(id, '/') : NULL;
  int ok = id && *id;
  if (ok && slash)
    ok = !strchr(slash + 1, '/') && valid_repo_part(id, (size_t)(slash - id)) &&
         valid_repo_part(slash + 1, strlen(slash + 1));
  else if (ok)
    ok = valid_repo_part(id, strlen(id));
  if (!ok)
    return kaun_error_set(err, KAUN_EINVAL,
                          "hf: '%.200s' is not a valid repo id: NAME or ORG/NAME, with letters, "
                          "digits, '_', '.' and '-' (at most 96 each, no '--' or '..', not "
                          "starting or ending with '-' or '.', not ending in .git)",
                          id ? id : "(null)");
  return KAUN_OK;
}

/* A relative path without empty, "." or ".." components. */
static int safe_relative(const char *p) {
  if (!p || !*p || *p == '/') return 0;
  const char *s = p;
  while (*s) {
    const char *e = strchr(s, '/');
    size_t n = e ? (size_t)(e - s) : strlen(s);
    if (n == 0 || (n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.')) return 0;
    if (memchr(s, '\\', n)) return 0;
    if (!e) break;
    s = e + 1;
    if (!*s) return 0; /* a trailing slash */
  }
  return 1;
}

static int check_filename(const char *repo, const char *f, kaun_error *err) {
  if (!safe_relative(f))
    return kaun_error_set(err, KAUN_EINVAL,
                          "hf: %s: the file name '%.300s' is refused: it must be a relative path "
                          "without '.' or '..' components (nothing was requested)",
                          repo, f ? f : "(null)");
  return KAUN_OK;
}

static int check_revision(const char *repo, const char *rev, kaun_error *err) {
  if (!safe_relative(rev))
    return kaun_error_set(err, KAUN_EINVAL,
                          "hf: %s: the revision '%.200s' is refused: a branch, tag or commit "
                          "without '.' or '..' components",
                          repo, rev ? rev : "(null)");
  return KAUN_OK;
}

static const char *type_prefix(const kaun_hf_options *o, int folder) {
  const char *t = o && o->repo_type ? o->repo_type : "model";
  if (strcmp(t, "dataset") == 0) return folder ? "datasets--" : "datasets/";
  if (strcmp(t, "space") == 0) return folder ? "spaces--" : "spaces/";
  return folder ? "models--" : "";
}

/* Percent-encodes `s`; '/' stays when keep_slash. */
static char *quote(const char *s, int keep_slash) {
  size_t n = strlen(s);
  char *out = malloc(n * 3 + 1), *p = out;
  if (!out) return NULL;
  for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
    if (isalnum(*c) || *c == '-' || *c == '_' || *c == '.' || *c == '~' ||
        (keep_slash && *c == '/'))
      *p++ = (char)*c;
    else
      p += sprintf(p, "%%%02X", *c);
  }
  *p = 0;
  return out;
}

/* ---- settings -------------------------------------------------------------------- */

static int env_true(const char *name) {
  const char *v = getenv(name);
  return v && (strcmp(v, "1") == 0 || strcasecmp(v, "on") == 0 || strcasecmp(v, "yes") == 0 ||
               strcasecmp(v, "true") == 0);
}

static int is_offline(const kaun_hf_options *o) {
  return (o && o->offline) || env_true("HF_HUB_OFFLINE");
}

static const char *nonempty(const char *s) { return s && *s ? s : NULL; }

static void endpoint_of(const kaun_hf_options *o, char *out, size_t size) {
  const char *e = nonempty(o ? o->endpoint : NULL);
  if (!e) e = nonempty(getenv("HF_ENDPOINT"));
  if (!e) e = HF_DEFAULT_ENDPOINT;
  snprintf(out, size, "%s", e);
  size_t n = strlen(out);
  while (n > 0 && out[n - 1] == '/') out[--n] = 0;
}

/* The token, whitespace stripped, into `out` ("" when none). */
static void token_of(const kaun_hf_options *o, char *out, size_t size) {
  out[0] = 0;
  const char *t = o ? o->token : NULL;
  if (!t) t = nonempty(getenv("HF_TOKEN"));
  if (!t) t = nonempty(getenv("HUGGING_FACE_HUB_TOKEN"));
  if (t) {
    snprintf(out, size, "%s", t);
  } else {
    char path[HF_PATH_MAX];
    const char *home = nonempty(getenv("HF_HOME"));
    if (home)
      snprintf(path, sizeof path, "%s/token", home);
    else if (nonempty(getenv("HOME")))
      snprintf(path, sizeof path, "%s/.cache/huggingface/token", getenv("HOME"));
    else
      return;
    FILE *f = fopen(path, "re");
    if (!f) return;
    size_t n = fread(out, 1, size - 1, f);
    out[n] = 0;
    fclose(f);
  }
  char *s = out;
  while (isspace((unsigned char)*s)) s++;
  memmove(out, s, strlen(s) + 1);
  size_t n = strlen(out);
  while (n > 0 && isspace((unsigned char)out[n - 1])) out[--n] = 0;
}

static int norm_options(const kaun_hf_options *o, kaun_hf_options *local, kaun_error *err);

int kaun_hf_cache_dir(const kaun_hf_options *given, char *out, size_t size, kaun_error *err) {
  kaun_hf_options local;
  int nrc = norm_options(given, &local, err);
  if (nrc) return nrc;
  const kaun_hf_options *o = &local;
  const char *dir = nonempty(o ? o->cache_dir : NULL);
  if (dir) {
    if ((size_t)snprintf(out, size, "%s", dir) >= size)
      return kaun_error_set(err, KAUN_EINVAL, "hf: the cache folder %.200s... is too long", dir);
    return KAUN_OK;
  }
  char root[HF_PATH_MAX];
  int rc = kaun_cache_root(o ? o->ctx : NULL, root, sizeof root, err);
  if (rc) return rc;
  if ((size_t)snprintf(out, size, "%s/huggingface", root) >= size)
    return kaun_error_set(err, KAUN_EINVAL, "hf: the cache folder %.200s... is too long", root);
  return KAUN_OK;
}

/* ---- one call's state -------------------------------------------------------------- */

typedef struct call {
  const kaun_hf_options *o;
  const char *repo, *file, *rev;
  char root[HF_PATH_MAX];
  char repo_dir[HF_PATH_MAX + 400];
  char lock_dir[HF_PATH_MAX + 400];
  char endpoint[2048];
  char token[1024];
  char auth[1100];
  kaun_http *http;
  kaun_io *io;
  int not_there; /* the Hub says the file is absent, or offline and not cached */
} call;

static int path_fmt(char *out, size_t size, kaun_error *err, const char *fmt, ...)
    KAUN_PRINTF(4, 5);
static int path_fmt(char *out, size_t size, kaun_error *err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(out, size, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= size)
    return kaun_error_set(err, KAUN_EINVAL, "hf: a cache path for %.200s is too long", out);
  return KAUN_OK;
}

static int file_exists(const char *path, uint64_t *size) {
  struct stat sb;
  if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) return 0;
  if (size) *size = (uint64_t)sb.st_size;
  return 1;
}

/* Reads refs/REV into `commit` (41 bytes): 1 when it holds a commit. */
static int read_ref(const call *c, const char *rev, char *commit) {
  char path[HF_PATH_MAX * 2];
  if (snprintf(path, sizeof path, "%s/refs/%s", c->repo_dir, rev) >= (int)sizeof path) return 0;
  FILE *f = fopen(path, "re");
  if (!f) return 0;
  char buf[64] = {0};
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  while (n > 0 && isspace((unsigned char)buf[n - 1])) buf[--n] = 0;
  if (!is_commit(buf)) return 0;
  memcpy(commit, buf, 41);
  return 1;
}

static void random_suffix(char *out, size_t size) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  static _Atomic unsigned counter;
  snprintf(out, size, "%ld.%lx%x", (long)getpid(), (unsigned long)ts.tv_nsec, counter++);
}

/* Removes "BASE.PID.X.tmp" in `dir` left by a writer `PID` that died
 * between writing a temporary and renaming it (kill -9). */
static void remove_dead_temps(const char *dir, const char *base) {
  DIR *d = opendir(dir);
  if (!d) return;
  size_t bl = strlen(base);
  struct dirent *e;
  while ((e = readdir(d))) {
    const char *n = e->d_name;
    size_t nl = strlen(n);
    if (nl <= bl + 5 || strncmp(n, base, bl) != 0 || n[bl] != '.' ||
        strcmp(n + nl - 4, ".tmp") != 0)
      continue;
    char *end;
    long pid = strtol(n + bl + 1, &end, 10);
    if (end == n + bl + 1 || *end != '.' || pid <= 0) continue;
    if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue; /* alive: its own business */
    char full[HF_PATH_MAX * 2 + 300];
    if ((size_t)snprintf(full, sizeof full, "%s/%s", dir, n) < sizeof full) unlink(full);
  }
  closedir(d);
}

/* Writes refs/REV = commit atomically (temporary + rename), no newline. */
static int write_ref(const call *c, const char *rev, const char *commit, kaun_error *err) {
  char path[HF_PATH_MAX * 2], tmp[HF_PATH_MAX * 2 + 128], rnd[64], have[41];
  int rc = path_fmt(path, sizeof path, err, "%s/refs/%s", c->repo_dir, rev);
  if (rc) return rc;
  char *slash = strrchr(path, '/');
  *slash = 0;
  remove_dead_temps(path, slash + 1); /* a writer killed before its rename */
  *slash = '/';
  if (read_ref(c, rev, have) && strcmp(have, commit) == 0) return KAUN_OK;
  *slash = 0;
  rc = kaun_cache_mkdirs(path, err);
  *slash = '/';
  if (rc) return rc;
  random_suffix(rnd, sizeof rnd);
  snprintf(tmp, sizeof tmp, "%s.%s.tmp", path, rnd);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return kaun_error_set(err, KAUN_EIO, "hf: cannot write %s: %s", tmp, strerror(errno));
  int bad = write(fd, commit, 40) != 40;
  bad |= close(fd) != 0;
  if (bad || rename(tmp, path) != 0) {
    int e = errno;
    unlink(tmp);
    return kaun_error_set(err, KAUN_EIO, "hf: cannot write %s: %s", path, strerror(e));
  }
  return KAUN_OK;
}

/* Fills `out` from snapshots/COMMIT/FILE when it exists. */
static int snapshot_hit(const call *c, const char *commit, kaun_hf_file *out) {
  char path[sizeof out->path];
  if (snprintf(path, sizeof path, "%s/snapshots/%s/%s", c->repo_dir, commit, c->file) >=
      (int)sizeof path)
    return 0;
  uint64_t size;
  if (!file_exists(path, &size)) return 0;
  memcpy(out->path, path, sizeof path);
  snprintf(out->commit, sizeof out->commit, "%s", commit);
  out->size = size;
  out->etag[0] = 0;
  char link[HF_PATH_MAX];
  ssize_t n = readlink(path, link, sizeof link - 1);
  if (n > 0) {
    link[n] = 0;
    const char *base = strrchr(link, '/');
    snprintf(out->etag, sizeof out->etag, "%.64s", base ? base + 1 : link);
  }
  return 1;
}

/* The cache's answer without the network (offline, or the Hub failed). */
static int cached(const call *c, kaun_hf_file *out) {
  char commit[41];
  if (is_commit(c->rev))
    snprintf(commit, sizeof commit, "%s", c->rev);
  else if (!read_ref(c, c->rev, commit))
    return 0;
  return snapshot_hit(c, commit, out);
}

/* snapshots/COMMIT/FILE -> ../../blobs/ETAG (one more ../ per folder). */
static int link_snapshot(const call *c, const char *commit, const char *etag, kaun_hf_file *out,
                         kaun_error *err) {
  char path[sizeof out->path], target[HF_PATH_MAX], tmp[sizeof path + 128], rnd[64];
  int rc = path_fmt(path, sizeof path, err, "%s/snapshots/%s/%s", c->repo_dir, commit, c->file);
  if (rc) return rc;
  size_t depth = 0, len = 0;
  for (const char *p = c->file; *p; p++) depth += *p == '/';
  for (size_t i = 0; i < depth + 2; i++)
    len += (size_t)snprintf(target + len, sizeof target - len, "../");
  snprintf(target + len, sizeof target - len, "blobs/%s", etag);
  char *slash = strrchr(path, '/');
  *slash = 0;
  rc = kaun_cache_mkdirs(path, err);
  *slash = '/';
  if (rc) return rc;
  /* made whole in one call, so a kill leaves nothing half-done; only a
   * link that points elsewhere is replaced, through a temporary */
  if (symlink(target, path) == 0) {
    memcpy(out->path, path, sizeof path);
    return KAUN_OK;
  }
  char have[HF_PATH_MAX];
  ssize_t n = errno == EEXIST ? readlink(path, have, sizeof have - 1) : -1;
  if (n >= 0) have[n] = '\0';
  if (n < 0 || strcmp(have, target) != 0) {
    random_suffix(rnd, sizeof rnd);
    snprintf(tmp, sizeof tmp, "%s.%s.tmp", path, rnd);
    if (symlink(target, tmp) != 0 || rename(tmp, path) != 0) {
      int e = errno;
      unlink(tmp);
      return kaun_error_set(err, KAUN_EIO, "hf: cannot link %s to %s: %s", path, target,
                            strerror(e));
    }
  }
  memcpy(out->path, path, sizeof path);
  return KAUN_OK;
}

/* ---- the Hub's answers ---------------------------------------------------------------- */

typedef kaun__hf_head meta; /* core/hf_internal.h */

/* Turns a failed HEAD into the message the user should read. */
static int hub_error(const call *c, int rc, kaun_http_response *resp, kaun_error *err) {
  long status = err ? err->http_status : 0;
  if (!resp) return rc; /* network: the layer's message names the URL */
  const char *code = kaun_http_response_header(resp, "X-Error-Code");
  const char *xmsg = kaun_http_response_header(resp, "X-Error-Message");
  const char *rid = kaun_http_response_request_id(resp);
  const char *retry = kaun_http_response_header(resp, "Retry-After");
  char why[KAUN_ERROR_MESSAGE_MAX];
  char server[600] = "";
  if (xmsg || rid)
    snprintf(server, sizeof server, " (the Hub said: %.300s%s%.100s)", xmsg ? xmsg : "-",
             rid ? "; request id " : "", rid ? rid : "");
  char r[100], f[300], v[100], ep[160]; /* bounded, so the message fits */
  snprintf(r, sizeof r, "%.99s", c->repo);
  snprintf(f, sizeof f, "%.299s", c->file ? c->file : ""); /* NULL: a whole repo */
  snprintf(v, sizeof v, "%.99s", c->rev);
  snprintf(ep, sizeof ep, "%.159s", c->endpoint);
  if (code && strcmp(code, "RepoNotFound") == 0 && status == 401)
    snprintf(why, sizeof why,
             "hf: repository %s not found, or private: set HF_TOKEN (or pass a token) if you "
             "have access to it",
             r),
        rc = KAUN_EAUTH;
  else if (code && strcmp(code, "RepoNotFound") == 0)
    snprintf(why, sizeof why,
             "hf: repository %s not found (or this token has no access to it): check the "
             "repo id",
             r),
        rc = KAUN_ENOENT;
  else if (code && strcmp(code, "GatedRepo") == 0)
    snprintf(why, sizeof why,
             "hf: %s is gated: accept its terms on its page (%s/%s), then use a token of that "
             "account",
             r, ep, r),
        rc = KAUN_EAUTH;
  else if (code && strcmp(code, "RevisionNotFound") == 0)
    snprintf(why, sizeof why, "hf: %s has no revision '%s': check the branch, tag or commit", r, v),
        rc = KAUN_ENOENT;
  else if (code && strcmp(code, "EntryNotFound") == 0)
    snprintf(why, sizeof why, "hf: %s has no file '%s' at revision '%s'", r, f, v),
        rc = KAUN_ENOENT;
  else if (status == 401)
    snprintf(why, sizeof why,
             "hf: the token was rejected by %s while asking for %s@%s/%s: check HF_TOKEN (or "
             "the token given)",
             ep, r, v, f),
        rc = KAUN_EAUTH;
  else if (status == 403)
    snprintf(why, sizeof why, "hf: access to %s@%s/%s was refused (403)", r, v, f), rc = KAUN_EAUTH;
  else if (status == 429)
    snprintf(why, sizeof why,
             "hf: rate limited by %s while asking for %s@%s/%s: retry after %s s (or use a "
             "token: limits are higher)",
             ep, r, v, f, retry ? retry : "a few"),
        rc = KAUN_ETRANSIENT;
  else {
    if (err) kaun__error_prefix(err, "hf: %s@%s/%s: ", r, v, f);
    return rc;
  }
  kaun_error_set(err, rc, "%s%s", why, server);
  if (err) err->http_status = status;
  return rc;
}

static const char *unquote_etag(const char *e, char *out, size_t size) {
  if (!e) return NULL;
  kaun_http_etag_value(e, out, size);
  return out;
}

static int same_origin(const char *a, const char *b) {
  /* scheme://host[:port] with the default ports made explicit */
  char oa[512], ob[512];
  const char *in[2] = {a, b};
  char *out[2] = {oa, ob};
  for (int i = 0; i < 2; i++) {
    const char *s = in[i], *sep = strstr(s, "://");
    if (!sep) return 0;
    const char *host = sep + 3, *end = host + strcspn(host, "/?#");
    const char *at = memchr(host, '@', (size_t)(end - host));
    if (at) host = at + 1;
    int https = strncasecmp(s, "https", 5) == 0;
    const char *colon = memchr(host, ':', (size_t)(end - host));
    if (colon)
      snprintf(out[i], 512, "%.*s://%.*s", (int)(sep - s), s, (int)(end - host), host);
    else
      snprintf(out[i], 512, "%.*s://%.*s:%s", (int)(sep - s), s, (int)(end - host), host,
               https ? "443" : "80");
  }
  return strcasecmp(oa, ob) == 0;
}

static const char *accept_identity[] = {"Accept-Encoding: identity", NULL};

static const char *response_header(const void *resp, const char *name) {
  return kaun_http_response_header(resp, name);
}

/* HEAD on the resolve URL; on success fills `m`. */
static int head(call *c, meta *m, kaun_hf_file *out, kaun_error *err) {
  char *qrev = quote(c->rev, 0), *qfile = quote(c->file, 1);
  size_t n = strlen(c->endpoint) + strlen(c->repo) + (qrev ? strlen(qrev) : 0) +
             (qfile ? strlen(qfile) : 0) + 64;
  char *url = malloc(n);
  if (!qrev || !qfile || !url) {
    free(qrev);
    free(qfile);
    free(url);
    return kaun_error_set(err, KAUN_ENOMEM, "hf: out of memory");
  }
  snprintf(url, n, "%s/%s%s/resolve/%s/%s", c->endpoint, type_prefix(c->o, 0), c->repo, qrev,
           qfile);
  free(qrev);
  free(qfile);
  kaun_http_request req = KAUN_HTTP_REQUEST_INIT;
  req.method = KAUN_HTTP_HEAD;
  req.url = url;
  req.headers = accept_identity;
  req.authorization = c->auth[0] ? c->auth : NULL;
  req.redirect = KAUN_HTTP_REDIRECT_RELATIVE;
  kaun_http_response *resp = NULL;
  out->from_network = 1;
  int rc = kaun_http_perform(c->http, &req, &resp, err);
  if (rc) {
    const char *code = resp ? kaun_http_response_header(resp, "X-Error-Code") : NULL;
    const char *commit = resp ? kaun_http_response_header(resp, "X-Repo-Commit") : NULL;
    if (code && strcmp(code, "EntryNotFound") == 0 && commit && is_commit(commit)) {
      /* remember the absence, as huggingface_hub does */
      char marker[HF_PATH_MAX * 2];
      if (!path_fmt(marker, sizeof marker, NULL, "%s/.no_exist/%s/%s", c->repo_dir, commit,
                    c->file)) {
        char *slash = strrchr(marker, '/');
        *slash = 0;
        int ok = kaun_cache_mkdirs(marker, NULL) == KAUN_OK;
        *slash = '/';
        int fd = ok ? open(marker, O_WRONLY | O_CREAT | O_CLOEXEC, 0644) : -1;
        if (fd >= 0) close(fd);
      }
      snprintf(m->commit, sizeof m->commit, "%s", commit);
    }
    rc = hub_error(c, rc, resp, err);
    kaun_http_response_free(resp);
    free(url);
    return rc;
  }
  char red[512];
  kaun_http_redact_url(url, red, sizeof red);
  rc = kaun__hf_parse_head(kaun_http_response_status(resp), response_header, resp,
                           kaun_http_response_content_length(resp),
                           kaun_http_response_effective_url(resp), red, c->endpoint, m, err);
  kaun_http_response_free(resp);
  free(url);
  return rc;
}

int kaun__hf_parse_head(long status, kaun__hf_header_fn header, const void *answer,
                        int64_t content_length, const char *effective_url, const char *red,
                        const char *endpoint, meta *m, kaun_error *err) {
  int rc = KAUN_OK;
  int redirect = status >= 300 && status < 400;
  const char *commit = header(answer, "X-Repo-Commit");
  char etag_buf[256];
  const char *etag = unquote_etag(header(answer, "X-Linked-Etag"), etag_buf, sizeof etag_buf);
  if (!etag) etag = unquote_etag(header(answer, "ETag"), etag_buf, sizeof etag_buf);
  const char *lsize = header(answer, "X-Linked-Size");
  int64_t size = -1;
  if (lsize)
    size = strtoll(lsize, NULL, 10);
  else if (!redirect)
    size = content_length;
  const char *loc = redirect ? header(answer, "Location") : NULL;
  if (!loc) loc = effective_url;
  const char *missing = !commit || !is_commit(commit) ? "X-Repo-Commit (a 40-hex commit)"
                        : !etag || !*etag             ? "an ETag or X-Linked-Etag"
                        : size < 0                    ? "X-Linked-Size or Content-Length"
                        : !loc                        ? "a location"
                                                      : NULL;
  if (missing)
    rc = kaun_error_set(err, KAUN_EIO,
                        "hf: HEAD %s answered %ld without %s: is %s a Hub-compatible server?", red,
                        status, missing, endpoint);
  else if (strlen(etag) >= sizeof((kaun_hf_file *)NULL)->etag || strchr(etag, '/') ||
           strcmp(etag, ".") == 0 || strcmp(etag, "..") == 0)
    rc = kaun_error_set(err, KAUN_EIO, "hf: HEAD %s gave an unusable etag '%.100s'", red, etag);
  else if (size == 0 && strcmp(etag, EMPTY_SHA1) != 0 && strcmp(etag, EMPTY_SHA256) != 0)
    rc = kaun_error_set(err, KAUN_EIO,
                        "hf: HEAD %s announced 0 bytes for a file whose etag %s is not the empty "
                        "file's: is %s a Hub-compatible server?",
                        red, etag, endpoint);
  if (!rc) {
    snprintf(m->commit, sizeof m->commit, "%s", commit);
    snprintf(m->etag, sizeof m->etag, "%s", etag);
    for (char *p = m->etag; *p; p++) *p = (char)tolower((unsigned char)*p);
    m->size = (uint64_t)size;
    if (!(m->location = strdup(loc))) rc = kaun_error_set(err, KAUN_ENOMEM, "hf: out of memory");
  }
  return rc;
}

typedef struct fill_job {
  call *c;
  const meta *m;
} fill_job;

/* A request for the file's bytes, from the CDN (or the endpoint). */
static void file_request(const fill_job *j, kaun_http_request *req, const char *uri) {
  req->method = KAUN_HTTP_GET;
  req->url = j->m->location;
  req->headers = accept_identity;
  /* a token never leaves for another origin (a CDN's URL is pre-signed) */
  req->authorization =
      j->c->auth[0] && same_origin(j->m->location, j->c->endpoint) ? j->c->auth : NULL;
  req->io = j->c->io;
  req->progress_uri = uri;
}

/* Large files come as HF_PART ranged GETs, HF_CONNECTIONS at a time
 * (kaun_http_get_parts), each written at its place while the cache writer
 * hashes the file's written start (one connection is held back by the
 * sender's pace, not the link: 4 shards in parallel ran 3.6x faster than
 * one file here).  The first part goes alone: it says whether ranges
 * work, the size and the version (ETag) the others are pinned to with
 * If-Match.  A part not answered with exactly its range (a 200, a 206
 * around it) stops at once, and the file then comes as one request. */
#define HF_PART ((uint64_t)8 << 20)
#define HF_CONNECTIONS 4

static uint64_t part_size(const call *c) {
  return c->o && c->o->part_size ? c->o->part_size : HF_PART;
}

static unsigned connections(const call *c) {
  return c->o && c->o->connections ? c->o->connections : HF_CONNECTIONS;
}

/* Each answer's object size against the one the Hub announced. */
static int check_size(void *job, const kaun_http_response *resp, kaun_error *err) {
  const fill_job *j = job;
  int64_t got = kaun_http_response_object_size(resp);
  if (got >= 0 && (uint64_t)got != j->m->size)
    return kaun_error_set(err, KAUN_EIO, "the file has %lld bytes where the Hub said %llu",
                          (long long)got, (unsigned long long)j->m->size);
  return KAUN_OK;
}

static int fill_parts(kaun_cache_writer *w, const fill_job *j, const char *uri, kaun_error *err) {
  kaun_cache_part whole = {w, 0}; /* the parts' bytes come with their offset in the file */
  kaun_http_request req = KAUN_HTTP_REQUEST_INIT;
  file_request(j, &req, uri);
  req.body_to = KAUN_HTTP_BODY_CALLBACK;
  req.write_fn = kaun_cache_writer_part_sink;
  req.write_user = &whole;
  kaun_http_parts_options po = KAUN_HTTP_PARTS_OPTIONS_INIT;
  po.part_size = part_size(j->c);
  po.connections = connections(j->c);
  po.pin_first = 1;
  po.check = check_size;
  po.check_user = (void *)j;
  return kaun_http_get_parts(j->c->http, &req, j->m->size, &po, NULL, err);
}

static int fill(kaun_cache_writer *w, void *user, kaun_error *err) {
  fill_job *j = user;
  kaun_cache_writer_set_io(w, NULL); /* progress rides on the requests */
  char uri[600];
  snprintf(uri, sizeof uri, "hf://%s@%s/%s", j->c->repo, j->c->rev, j->c->file);
  int rc;
  /* in parts only when a hash checks the whole: parts of two versions of
   * a file must not pass for one */
  bool hashed = is_hex(j->m->etag, 64) || is_hex(j->m->etag, 40);
  if (hashed && connections(j->c) > 1 && j->m->size / 4 >= part_size(j->c)) {
    rc = fill_parts(w, j, uri, err);
  } else {
    kaun_http_request req = KAUN_HTTP_REQUEST_INIT;
    file_request(j, &req, uri);
    req.body_to = KAUN_HTTP_BODY_CALLBACK;
    req.write_fn = kaun_cache_writer_sink; /* hashed as it streams */
    req.write_user = w;
    rc = kaun_http_perform(j->c->http, &req, NULL, err);
  }
  if (rc && rc != KAUN_ECANCELED && err) kaun__error_prefix(err, "hf: downloading %s: ", uri);
  return rc;
}

static int resolve(call *c, kaun_hf_file *out, kaun_error *err) {
  /* 1. a cached commit: no network */
  if (is_commit(c->rev) && snapshot_hit(c, c->rev, out)) return KAUN_OK;
  /* 2. offline */
  if (is_offline(c->o)) {
    if (cached(c, out)) return KAUN_OK;
    c->not_there = 1;
    return kaun_error_set(err, KAUN_ENOENT,
                          "hf: %s@%s/%s is not in the cache %s (offline mode): download it once "
                          "online, or unset HF_HUB_OFFLINE",
                          c->repo, c->rev, c->file, c->repo_dir);
  }
  /* 3. HEAD */
  meta m = {{0}, {0}, 0, NULL};
  kaun_error herr = KAUN_ERROR_INIT;
  int rc = head(c, &m, out, &herr);
  if (rc) {
    const int entry_missing = rc == KAUN_ENOENT && m.commit[0];
    if (!entry_missing && rc != KAUN_EINVAL && cached(c, out)) return KAUN_OK;
    c->not_there = entry_missing;
    if (err) *err = herr;
    return rc;
  }
  /* 4. already there */
  if (snapshot_hit(c, m.commit, out)) {
    free(m.location);
    if (!is_commit(c->rev) || strcmp(c->rev, m.commit) != 0)
      return write_ref(c, c->rev, m.commit, err);
    return KAUN_OK;
  }
  /* 5. the blob, once */
  char blob[HF_PATH_MAX + 600], lock[HF_PATH_MAX + 600];
  rc = path_fmt(blob, sizeof blob, err, "%s/blobs/%s", c->repo_dir, m.etag);
  if (!rc) rc = path_fmt(lock, sizeof lock, err, "%s/%s.lock", c->lock_dir, m.etag);
  kaun_cache_hash kind = is_hex(m.etag, 64)   ? KAUN_CACHE_HASH_SHA256
                         : is_hex(m.etag, 40) ? KAUN_CACHE_HASH_GIT_SHA1
                                              : KAUN_CACHE_HASH_NONE;
  if (!rc) {
    fill_job job = {c, &m};
    long wait = c->o && c->o->lock_timeout_ms ? c->o->lock_timeout_ms : KAUN_CACHE_LOCK_WAIT_MS;
    char uri[600];
    snprintf(uri, sizeof uri, "hf://%s@%s/%s", c->repo, c->rev, c->file);
    kaun_io_expect(c->io, m.size); /* a progress bar knows the total */
    rc = kaun_cache_get_or_fill(blob, lock, m.size, kind,
                                kind == KAUN_CACHE_HASH_NONE ? NULL : m.etag, wait, fill, &job,
                                c->io, uri, err);
    if (rc && err && !strstr(err->message, uri)) kaun__error_prefix(err, "%s: ", uri);
  }
  if (!rc) rc = link_snapshot(c, m.commit, m.etag, out, err);
  if (!rc) {
    snprintf(out->commit, sizeof out->commit, "%s", m.commit);
    snprintf(out->etag, sizeof out->etag, "%.64s", m.etag);
    out->size = m.size;
    if (!is_commit(c->rev) || strcmp(c->rev, m.commit) != 0)
      rc = write_ref(c, c->rev, m.commit, err);
  }
  free(m.location);
  return rc;
}

static int call_init(call *c, const char *repo, const char *file, const kaun_hf_options *o,
                     kaun_error *err) {
  memset(c, 0, sizeof *c);
  c->o = o;
  c->repo = repo;
  c->file = file;
  c->rev = o && nonempty(o->revision) ? o->revision : "main";
  c->io = o ? o->io : NULL;
  int rc = check_repo_id(repo, err);
  if (!rc && file) rc = check_filename(repo, file, err);
  if (!rc) rc = check_revision(repo, c->rev, err);
  if (!rc) rc = kaun_hf_cache_dir(o, c->root, sizeof c->root, err);
  if (rc) return rc;
  char flat[300];
  snprintf(flat, sizeof flat, "%s%s", type_prefix(o, 1), repo);
  for (char *p = flat; *p; p++)
    if (*p == '/') {
      memmove(p + 2, p + 1, strlen(p + 1) + 1);
      p[0] = p[1] = '-';
    }
  snprintf(c->repo_dir, sizeof c->repo_dir, "%s/%s", c->root, flat);
  snprintf(c->lock_dir, sizeof c->lock_dir, "%s/.locks/%s", c->root, flat);
  endpoint_of(o, c->endpoint, sizeof c->endpoint);
  token_of(o, c->token, sizeof c->token);
  if (c->token[0]) snprintf(c->auth, sizeof c->auth, "Bearer %s", c->token);
  return KAUN_OK;
}

static void call_wipe(call *c) {
  memset(c->token, 0, sizeof c->token);
  memset(c->auth, 0, sizeof c->auth);
}

static int new_client(const kaun_hf_options *o, kaun_http **out, kaun_error *err) {
  kaun_http_options ho = KAUN_HTTP_OPTIONS_INIT;
  ho.user_agent_suffix = "hf";
  ho.stall_ms = 10000;
  /* the Hub clients' backoff: 1, 2, 4, 8, 8 s */
  ho.retry_base_ms = o && o->retry_base_ms ? o->retry_base_ms : 1000;
  ho.retry_max_ms = o && o->retry_max_ms ? o->retry_max_ms : 8000;
  if (o) ho.max_attempts = o->max_attempts;
  return kaun_http_new(&ho, out, err);
}

/* The caller's options in a struct of today's size: fields beyond its
 * struct_size (an older caller) read as zero, the default. */
void kaun_hf_options_from(const kaun_options *o, kaun_hf_options *out) {
  kaun_hf_options init = KAUN_HF_OPTIONS_INIT;
  *out = init;
  out->endpoint = kaun_options_get(o, "endpoint");
  out->token = kaun_options_get(o, "token");
  out->revision = kaun_options_get(o, "revision");
  out->cache_dir = kaun_options_get(o, "cache_dir");
  out->repo_type = kaun_options_get(o, "repo_type");
  out->offline = kaun_options_get_bool(o, "offline", 0);
  out->max_attempts = (unsigned)kaun_options_get_int(o, "max_attempts", 0);
  out->retry_base_ms = (long)kaun_options_get_int(o, "retry_base_ms", 0);
  out->retry_max_ms = (long)kaun_options_get_int(o, "retry_max_ms", 0);
  out->lock_timeout_ms = (long)kaun_options_get_int(o, "lock_timeout_ms", 0);
  int64_t part = kaun_options_get_int(o, "part_size", 0),
          conns = kaun_options_get_int(o, "connections", 0);
  out->part_size = part > 0 ? (uint64_t)part : 0;
  out->connections = conns > 0 ? (unsigned)conns : 0;
}

int kaun_hf_options_from_context(kaun_context *ctx, const char *scheme, kaun_hf_options *out,
                                 kaun_error *err) {
  kaun_hf_options init = KAUN_HF_OPTIONS_INIT;
  *out = init;
  out->ctx = ctx;
  if (!ctx) return KAUN_OK;
  const char *name = scheme ? scheme : "hf";
  const kaun_options *o = NULL;
  kaun_error e = KAUN_ERROR_INIT;
  int rc = kaun_context_backend_options(ctx, name, &o, &e);
  if (rc) { /* a configured backend must work; an absent one means the defaults */
    if (!kaun__context_has_backend(ctx, name)) return KAUN_OK;
    if (err) *err = e;
    return rc;
  }
  kaun_hf_options_from(o, out);
  out->ctx = ctx;
  return KAUN_OK;
}

static int norm_options(const kaun_hf_options *o, kaun_hf_options *local, kaun_error *err) {
  kaun_hf_options init = KAUN_HF_OPTIONS_INIT;
  *local = init;
  if (!o) return KAUN_OK;
  if (o->struct_size < sizeof(size_t))
    return kaun_error_set(err, KAUN_EINVAL,
                          "hf: kaun_hf_options.struct_size is not set: start from "
                          "KAUN_HF_OPTIONS_INIT");
  memcpy(local, o, o->struct_size < sizeof *local ? o->struct_size : sizeof *local);
  local->struct_size = sizeof *local;
  return KAUN_OK;
}

static int download(const char *repo_id, const char *filename, const kaun_hf_options *given,
                    kaun_hf_file *out, int *not_there, kaun_error *err) {
  kaun_hf_options local;
  int nrc = norm_options(given, &local, err);
  if (nrc) return nrc;
  const kaun_hf_options *o = &local;
  if (!out) return kaun_error_set(err, KAUN_EINVAL, "hf: no kaun_hf_file to fill");
  memset(out, 0, sizeof *out);
  call *c = malloc(sizeof *c);
  if (!c) return kaun_error_set(err, KAUN_ENOMEM, "hf: out of memory");
  int rc = call_init(c, repo_id, filename, o, err);
  if (!rc && !filename) rc = check_filename(repo_id, filename, err);
  kaun_http *own = NULL;
  if (!rc) {
    c->http = o && o->http ? o->http : NULL;
    if (!c->http && !(rc = new_client(o, &own, err))) c->http = own;
  }
  if (!rc) rc = resolve(c, out, err);
  if (not_there) *not_there = c->not_there;
  kaun_http_free(own);
  call_wipe(c);
  free(c);
  return rc;
}

int kaun_hf_download_file(const char *repo_id, const char *filename, const kaun_hf_options *o,
                          kaun_hf_file *out, kaun_error *err) {
  return download(repo_id, filename, o, out, NULL, err);
}

/* ---- many files at one commit --------------------------------------------------------- */

typedef struct many {
  const char *repo;
  const char *const *files;
  size_t n;
  kaun_hf_options o;
  kaun_hf_file *out;
  int *rcs;
  kaun_error *errs;
  pthread_mutex_t lock;
  size_t next;
} many;

static void *many_worker(void *arg) {
  many *m = arg;
  for (;;) {
    pthread_mutex_lock(&m->lock);
    size_t i = m->next++;
    pthread_mutex_unlock(&m->lock);
    if (i >= m->n) return NULL;
    m->rcs[i] = kaun_hf_download_file(m->repo, m->files[i], &m->o, &m->out[i], &m->errs[i]);
  }
}

int kaun_hf_download_files(const char *repo_id, const char *const *files, size_t n,
                           const kaun_hf_options *o, kaun_hf_file *out, kaun_error *err) {
  if (n == 0) return KAUN_OK;
  if (!files || !out) return kaun_error_set(err, KAUN_EINVAL, "hf: no files to download");
  many m = {.repo = repo_id, .files = files, .n = n, .out = out};
  int rc = norm_options(o, &m.o, err);
  if (rc) return rc;
  kaun_http *own = NULL;
  if (!m.o.http) {
    if ((rc = new_client(&m.o, &own, err))) return rc;
    m.o.http = own;
  }
  /* the first file fixes the commit */
  rc = kaun_hf_download_file(repo_id, files[0], &m.o, &out[0], err);
  if (rc || n == 1) {
    kaun_http_free(own);
    return rc;
  }
  char commit[41];
  snprintf(commit, sizeof commit, "%s", out[0].commit);
  m.o.revision = commit;
  m.files = files + 1;
  m.out = out + 1;
  m.n = n - 1;
  m.rcs = calloc(m.n, sizeof *m.rcs);
  m.errs = calloc(m.n, sizeof *m.errs);
  if (!m.rcs || !m.errs) {
    free(m.rcs);
    free(m.errs);
    kaun_http_free(own);
    return kaun_error_set(err, KAUN_ENOMEM, "hf: out of memory");
  }
  pthread_mutex_init(&m.lock, NULL);
  pthread_t th[HF_PARALLEL];
  size_t started = 0;
  for (; started < HF_PARALLEL && started < m.n; started++)
    if (pthread_create(&th[started], NULL, many_worker, &m) != 0) break;
  if (started == 0) many_worker(&m);
  for (size_t i = 0; i < started; i++) pthread_join(th[i], NULL);
  pthread_mutex_destroy(&m.lock);
  for (size_t i = 0; i < m.n && !rc; i++)
    if (m.rcs[i]) {
      rc = m.rcs[i];
      if (err) *err = m.errs[i];
    }
  free(m.rcs);
  free(m.errs);
  kaun_http_free(own);
  return rc;
}

/* ---- housekeeping ---------------------------------------------------------------------- */

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb;
  (void)ftw;
  return (flag == FTW_DP ? rmdir(path) : unlink(path)) == 0 || errno == ENOENT ? 0 : -1;
}

static int rm_tree(const char *path, kaun_error *err) {
  struct stat sb;
  if (lstat(path, &sb) != 0) return KAUN_OK;
  if (nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS) != 0)
    return kaun_error_set(err, KAUN_EIO, "hf: cannot remove %s: %s", path, strerror(errno));
  return KAUN_OK;
}

/* Removes every repo's entry under `dir` (models--*, datasets--*,
 * spaces--*: the names huggingface_hub gives repos) and nothing else: a
 * cache folder shared with other tools keeps their files. */
static int rm_repos(const char *dir, kaun_error *err) {
  DIR *d = opendir(dir);
  if (!d) return KAUN_OK; /* nothing there */
  int rc = KAUN_OK;
  struct dirent *e;
  while (!rc && (e = readdir(d))) {
    if (strncmp(e->d_name, "models--", 8) != 0 && strncmp(e->d_name, "datasets--", 10) != 0 &&
        strncmp(e->d_name, "spaces--", 8) != 0)
      continue;
    char path[HF_PATH_MAX + 600];
    rc = path_fmt(path, sizeof path, err, "%s/%s", dir, e->d_name);
    if (!rc) rc = rm_tree(path, err);
  }
  closedir(d);
  return rc;
}

int kaun_hf_clear_cache(const char *repo_id, const kaun_hf_options *given, kaun_error *err) {
  kaun_hf_options local;
  int nrc = norm_options(given, &local, err);
  if (nrc) return nrc;
  const kaun_hf_options *o = &local;
  call *c = malloc(sizeof *c);
  if (!c) return kaun_error_set(err, KAUN_ENOMEM, "hf: out of memory");
  int rc = repo_id ? call_init(c, repo_id, NULL, o, err)
                   : kaun_hf_cache_dir(o, c->root, sizeof c->root, err);
  if (!rc) rc = repo_id ? rm_tree(c->repo_dir, err) : rm_repos(c->root, err);
  /* locks go only from a real .locks folder: one that is a link leads
   * outside the cache */
  char locks[HF_PATH_MAX + 16];
  struct stat lsb;
  if (!rc && !path_fmt(locks, sizeof locks, err, "%s/.locks", c->root) && lstat(locks, &lsb) == 0 &&
      S_ISDIR(lsb.st_mode))
    rc = repo_id ? rm_tree(c->lock_dir, err) : rm_repos(locks, err);
  call_wipe(c);
  free(c);
  return rc;
}

/* ---- hf:// paths ------------------------------------------------------------------------ */

static char *decode(const char *s, size_t n) {
  char *out = malloc(n + 1), *p = out;
  if (!out) return NULL;
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '%' && i + 2 < n && isxdigit((unsigned char)s[i + 1]) &&
        isxdigit((unsigned char)s[i + 2])) {
      char hex[3] = {s[i + 1], s[i + 2], 0};
      *p++ = (char)strtol(hex, NULL, 16);
      i += 2;
    } else {
      *p++ = s[i];
    }
  }
  *p = 0;
  return out;
}

int kaun_hf_parse_path(const char *path, char **repo_id, char **revision, char **file,
                       kaun_error *err) {
  *repo_id = *revision = *file = NULL;
  if (!path || !*path || *path == '/')
    return kaun_error_set(err, KAUN_EURI,
                          "hf://%s: expected hf://ORG/NAME[/FILE] or hf://REPO_ID@REVISION[/FILE]",
                          path ? path : "");
  const char *at = strchr(path, '@');
  const char *repo_end, *rest;
  if (at) {
    repo_end = at;
    const char *rev = at + 1, *slash = strchr(rev, '/');
    size_t rn = slash ? (size_t)(slash - rev) : strlen(rev);
    if (rn == 0)
      return kaun_error_set(err, KAUN_EURI, "hf://%s: the revision after '@' is empty", path);
    *revision = decode(rev, rn);
    rest = slash ? slash + 1 : NULL;
  } else {
    const char *s1 = strchr(path, '/');
    const char *s2 = s1 ? strchr(s1 + 1, '/') : NULL;
    repo_end = s2 ? s2 : path + strlen(path);
    rest = s2 ? s2 + 1 : NULL;
  }
  *repo_id = strndup(path, (size_t)(repo_end - path));
  if (rest && *rest) *file = decode(rest, strlen(rest));
  if (!*repo_id || (at && !*revision) || (rest && *rest && !*file)) {
    free(*repo_id);
    free(*revision);
    free(*file);
    *repo_id = *revision = *file = NULL;
    return kaun_error_set(err, KAUN_ENOMEM, "hf: out of memory");
  }
  return KAUN_OK;
}

/* ---- configs and weights ------------------------------------------------------------------ */

static int parse_file(const char *path, const char *what, json_object **out, kaun_error *err) {
  FILE *fp = fopen(path, "re");
  if (!fp) return kaun_error_set(err, KAUN_EIO, "hf: cannot open %s: %s", path, strerror(errno));
  char *text = NULL;
  size_t len = 0, cap = 0;
  for (;;) {
    if (len + 65536 + 1 > cap) {
      char *more = cap >= (64u << 20) ? NULL : realloc(text, cap = cap ? cap * 2 : 65536 * 2);
      if (!more) {
        free(text);
        fclose(fp);
        return kaun_error_set(err, KAUN_EIO, "hf: %s (%s) is larger than 64 MiB, or memory ran out",
                              what, path);
      }
      text = more;
    }
    size_t got = fread(text + len, 1, 65536, fp);
    len += got;
    if (got < 65536) break;
  }
  fclose(fp);
  text[len] = 0;
  json_tokener *tok = json_tokener_new();
  if (!tok || len > INT_MAX) {
    if (tok) json_tokener_free(tok);
    free(text);
    return kaun_error_set(err, KAUN_ENOMEM, "hf: cannot parse %s (%s): out of memory", what, path);
  }
  json_object *doc = json_tokener_parse_ex(tok, text, (int)len);
  enum json_tokener_error jerr = json_tokener_get_error(tok);
  json_tokener_free(tok);
  free(text);
  if (jerr != json_tokener_success || !json_object_is_type(doc, json_type_object)) {
    json_object_put(doc);
    return kaun_error_set(
        err, KAUN_EIO, "hf: %s (%s) is not a JSON object: %s", what, path,
        jerr != json_tokener_success ? json_tokener_error_desc(jerr) : "another JSON value");
  }
  *out = doc;
  return KAUN_OK;
}

int kaun_hf_load_config(const char *repo_id, const kaun_hf_options *o, struct json_object **out,
                        kaun_error *err) {
  kaun_hf_file f;
  int rc = kaun_hf_download_file(repo_id, "config.json", o, &f, err);
  if (rc) return rc;
  char what[300];
  snprintf(what, sizeof what, "%.200s's config.json", repo_id);
  return parse_file(f.path, what, out, err);
}

#define SINGLE_NAME "model.safetensors"
#define INDEX_NAME "model.safetensors.index.json"

int kaun_hf_load_weights(const char *repo_id, const kaun_hf_options *o, kaun_flat **out,
                         kaun_error *err) {
  kaun_hf_file f;
  int not_there = 0;
  kaun_error first = KAUN_ERROR_INIT;
  int rc = download(repo_id, SINGLE_NAME, o, &f, &not_there, &first);
  if (!rc) return kaun_checkpoint_load_flat(o ? o->ctx : NULL, f.path, 0, out, err);
  if (rc != KAUN_ENOENT || !not_there) {
    if (err) *err = first;
    return rc;
  }
  rc = download(repo_id, INDEX_NAME, o, &f, &not_there, err);
  if (rc) {
    if (rc == KAUN_ENOENT && not_there)
      kaun__error_prefix(err, "hf: %s has neither %s nor %s: ", repo_id, SINGLE_NAME, INDEX_NAME);
    return rc;
  }
  json_object *doc = NULL, *wm = NULL;
  char what[300];
  snprintf(what, sizeof what, "%.200s's index", repo_id);
  if ((rc = parse_file(f.path, what, &doc, err))) return rc;
  if (!json_object_object_get_ex(doc, "weight_map", &wm) ||
      !json_object_is_type(wm, json_type_object)) {
    json_object_put(doc);
    return kaun_error_set(err, KAUN_EINDEX, "hf: %s (%s) has no \"weight_map\" object", what,
                          f.path);
  }
  size_t cap = (size_t)json_object_object_length(wm), n = 0;
  const char **names = calloc(cap + 1, sizeof *names);
  kaun_hf_file *files = calloc(cap + 1, sizeof *files);
  if (!names || !files) rc = kaun_error_set(err, KAUN_ENOMEM, "hf: out of memory");
  json_object_object_foreach(wm, key, val) {
    (void)key;
    if (rc) break;
    if (!json_object_is_type(val, json_type_string)) {
      rc = kaun_error_set(err, KAUN_EINDEX, "hf: %s (%s): the shard of '%.200s' is not a string",
                          what, f.path, key);
      break;
    }
    const char *s = json_object_get_string(val);
    size_t i = 0;
    while (i < n && strcmp(names[i], s) != 0) i++;
    if (i == n) names[n++] = s;
  }
  if (!rc) {
    /* the shards at the index's commit: a branch that moves meanwhile
     * cannot mix two commits (names are checked by download) */
    kaun_hf_options at;
    rc = norm_options(o, &at, err);
    at.revision = f.commit;
    if (!rc) rc = kaun_hf_download_files(repo_id, names, n, &at, files, err);
  }
  json_object_put(doc);
  free(names);
  free(files);
  if (rc) return rc;
  /* the index in the snapshot: its shards are the links beside it */
  return kaun_checkpoint_load_flat(o ? o->ctx : NULL, f.path, 0, out, err);
}

/* ---- name mapping ------------------------------------------------------------------------ */

char *kaun_hf_map_name(const kaun_hf_name_map *map, const char *name) {
  return kaun_name_map_apply(map, name);
}

static int missing_key(const char *path, const kaun_flat *weights, char **mapped, kaun_error *err) {
  size_t n = kaun_flat_count(weights);
  const char **orig = calloc(n + 1, sizeof *orig);
  if (!orig) return kaun_error_set(err, KAUN_ENOMEM, "hf: out of memory");
  for (size_t i = 0; i < n; i++) orig[i] = kaun_flat_name(weights, i);
  char near[700];
  kaun__names_closest(path, (const char *const *)mapped, orig, n, near, sizeof near);
  free(orig);
  return kaun_error_set(err, KAUN_EKEY,
                        "no weight maps to the template's '%.200s'%s%s: add a prefix or rename "
                        "rule",
                        path, n ? "; the closest are " : " (there are no weights)", near);
}

int kaun_hf_fill_template(const kaun_flat *weights, const kaun_hf_name_map *map,
                          const kaun_ptree *like, kaun_ptree **out, kaun_error *err) {
  if (!weights || !like || !out)
    return kaun_error_set(err, KAUN_EINVAL,
                          "hf: kaun_hf_fill_template needs weights, a template "
                          "and an output");
  *out = NULL;
  size_t n = kaun_flat_count(weights);
  char **mapped = calloc(n + 1, sizeof *mapped);
  kaun_flat *tmpl = NULL, *filled = NULL;
  int rc = mapped ? KAUN_OK : kaun_error_set(err, KAUN_ENOMEM, "hf: out of memory");
  for (size_t i = 0; !rc && i < n; i++)
    if (!(mapped[i] = kaun_hf_map_name(map, kaun_flat_name(weights, i))))
      rc = kaun_error_set(err, KAUN_ENOMEM, "hf: out of memory");
  if (!rc) rc = kaun_ptree_flatten(like, &tmpl, err);
  if (!rc) rc = kaun_flat_new(&filled, err);
  for (size_t t = 0; !rc && t < kaun_flat_count(tmpl); t++) {
    const char *path = kaun_flat_name(tmpl, t);
    const kaun_tensor *want = kaun_flat_tensor(tmpl, t);
    size_t i = 0;
    while (i < n && strcmp(mapped[i], path) != 0) i++;
    if (i == n) {
      rc = missing_key(path, weights, mapped, err);
      break;
    }
    const kaun_tensor *have = kaun_flat_tensor(weights, i);
    size_t nd = kaun_tensor_ndim(want);
    if (nd != kaun_tensor_ndim(have) ||
        memcmp(kaun_tensor_shape(want), kaun_tensor_shape(have), nd * sizeof(uint64_t)) != 0) {
      char a[256], b[256];
      kaun_shape_format(nd, kaun_tensor_shape(want), a, sizeof a);
      kaun_shape_format(kaun_tensor_ndim(have), kaun_tensor_shape(have), b, sizeof b);
      rc = kaun_error_set(err, KAUN_ESHAPE,
                          "the template's '%.200s' is %s but the weight '%.200s' is %s", path, a,
                          kaun_flat_name(weights, i), b);
      break;
    }
    kaun_tensor *t2 = NULL;
    rc = kaun_tensor_cast(have, kaun_tensor_dtype(want), &t2, err);
    if (!rc) rc = kaun_flat_add(filled, path, t2, err);
  }
  if (!rc) rc = kaun_ptree_unflatten(filled, out, err);
  for (size_t i = 0; mapped && i < n; i++) free(mapped[i]);
  free(mapped);
  kaun_flat_free(tmpl);
  kaun_flat_free(filled);
  return rc;
}

/* ---- the files of a repo ------------------------------------------------------------- */

typedef struct walk_acc {
  char **files;
  size_t n, cap;
  size_t skip; /* the snapshot folder's length + 1 */
  int failed;
} walk_acc;

static _Thread_local walk_acc *walking; /* nftw passes no context; one walk per thread */

static int add_name(walk_acc *w, const char *name) {
  if (w->n == w->cap) {
    size_t cap = w->cap ? w->cap * 2 : 32;
    char **grown = realloc(w->files, cap * sizeof *grown);
    if (!grown) return -1;
    w->files = grown;
    w->cap = cap;
  }
  if (!(w->files[w->n] = strdup(name))) return -1;
  w->n++;
  return 0;
}

static int walk_one(const char *path, const struct stat *sb, int type, struct FTW *ftw) {
  (void)sb, (void)ftw;
  if (type != FTW_F && type != FTW_SL) return 0;
  if (strlen(path) <= walking->skip) return 0;
  if (add_name(walking, path + walking->skip)) walking->failed = 1;
  return walking->failed;
}

static int cmp_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

void kaun_hf_free_list(char **files, size_t n) {
  for (size_t i = 0; files && i < n; i++) free(files[i]);
  free(files);
}

int kaun_hf_list_files(const char *repo_id, const kaun_hf_options *given, char ***out_files,
                       size_t *out_n, char commit_out[41], kaun_error *err) {
  *out_files = NULL;
  *out_n = 0;
  kaun_hf_options o;
  int rc = norm_options(given, &o, err);
  if (rc) return rc;
  call c;
  if ((rc = call_init(&c, repo_id, NULL, &o, err))) return rc;
  walk_acc acc = {0};
  char commit[41] = "";
  if (is_offline(&o)) { /* what the cache holds for the revision */
    if (is_commit(c.rev))
      snprintf(commit, sizeof commit, "%s", c.rev);
    else if (!read_ref(&c, c.rev, commit))
      return kaun_error_set(err, KAUN_ENOENT,
                            "hf: %s@%s is not in the cache (offline): download it once online",
                            repo_id, c.rev);
    char snap[HF_PATH_MAX * 2];
    if ((rc = path_fmt(snap, sizeof snap, err, "%s/snapshots/%s", c.repo_dir, commit))) return rc;
    acc.skip = strlen(snap) + 1;
    walking = &acc;
    int walked = nftw(snap, walk_one, 16, FTW_PHYS);
    walking = NULL;
    if (walked != 0 || acc.failed) {
      kaun_hf_free_list(acc.files, acc.n);
      return acc.failed ? kaun_error_set(err, KAUN_ENOMEM, "hf: out of memory")
                        : kaun_error_set(err, KAUN_ENOENT,
                                         "hf: %s@%s (commit %s) is not in the cache (offline)",
                                         repo_id, c.rev, commit);
    }
  } else { /* the repo info: its commit and every file's name */
    kaun_http *own = NULL;
    if (!o.http && (rc = new_client(&o, &own, err))) return rc;
    char *qrev = quote(c.rev, 0);
    size_t n = strlen(c.endpoint) + strlen(repo_id) + (qrev ? strlen(qrev) : 0) + 64;
    char *url = malloc(n);
    if (!qrev || !url) {
      free(qrev);
      free(url);
      kaun_http_free(own);
      return kaun_error_set(err, KAUN_ENOMEM, "hf: out of memory");
    }
    const char *t = o.repo_type ? o.repo_type : "model";
    snprintf(url, n, "%s/api/%ss/%s/revision/%s", c.endpoint, t, repo_id, qrev);
    free(qrev);
    kaun_http_request req = KAUN_HTTP_REQUEST_INIT;
    req.url = url;
    req.authorization = c.auth[0] ? c.auth : NULL;
    req.redirect = KAUN_HTTP_REDIRECT_RELATIVE;
    req.body_to = KAUN_HTTP_BODY_ALLOC;
    kaun_http_response *resp = NULL;
    rc = kaun_http_perform(o.http ? o.http : own, &req, &resp, err);
    const char *code = rc && resp ? kaun_http_response_header(resp, "X-Error-Code") : NULL;
    if (code && (strcmp(code, "RepoNotFound") == 0 || strcmp(code, "RevisionNotFound") == 0 ||
                 strcmp(code, "GatedRepo") == 0)) {
      rc = hub_error(&c, rc, resp, err); /* what the Hub said, as for a file */
    } else if (rc == KAUN_ENOENT || rc == KAUN_EAUTH) {
      char why[KAUN_ERROR_MESSAGE_MAX];
      long status = err ? err->http_status : 0;
      snprintf(why, sizeof why, "%s", err ? err->message : "");
      kaun_error_set(err, rc, "hf: cannot list %s@%s: %s%s", repo_id, c.rev, why,
                     rc != KAUN_EAUTH ? ""
                     : c.auth[0]      ? " (the token was rejected, or it does not open this "
                                        "private or gated repo: check it)"
                                      : " (a private or gated repo: give a token, HF_TOKEN)");
      if (err) err->http_status = status;
    }
    size_t len = 0;
    const char *body = rc ? NULL : kaun_http_response_body(resp, &len);
    json_object *doc = body ? json_tokener_parse(body) : NULL;
    json_object *sha = NULL, *siblings = NULL;
    if (!rc && (!doc || !json_object_object_get_ex(doc, "sha", &sha) ||
                !json_object_object_get_ex(doc, "siblings", &siblings) ||
                !json_object_is_type(siblings, json_type_array) ||
                !is_commit(json_object_get_string(sha))))
      rc = kaun_error_set(err, KAUN_EIO,
                          "hf: %s answered %s@%s's repo info without a commit and a file list",
                          c.endpoint, repo_id, c.rev);
    if (!rc) {
      snprintf(commit, sizeof commit, "%s", json_object_get_string(sha));
      for (size_t i = 0; !rc && i < json_object_array_length(siblings); i++) {
        json_object *f = json_object_array_get_idx(siblings, i), *name = NULL;
        if (json_object_object_get_ex(f, "rfilename", &name) &&
            json_object_is_type(name, json_type_string) &&
            add_name(&acc, json_object_get_string(name)))
          rc = kaun_error_set(err, KAUN_ENOMEM, "hf: out of memory");
      }
    }
    if (doc) json_object_put(doc);
    kaun_http_response_free(resp);
    free(url);
    kaun_http_free(own);
    /* the branch or tag now points at this commit, as huggingface_hub's
     * snapshot_download records it: offline use of the revision finds it */
    if (!rc && strcmp(c.rev, commit) != 0) rc = write_ref(&c, c.rev, commit, err);
    if (rc) {
      kaun_hf_free_list(acc.files, acc.n);
      return rc;
    }
  }
  qsort(acc.files, acc.n, sizeof *acc.files, cmp_names);
  *out_files = acc.files;
  *out_n = acc.n;
  if (commit_out) snprintf(commit_out, 41, "%s", commit);
  return KAUN_OK;
}
