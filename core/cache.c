/* The download cache shared by every plugin: the root, per-entry locks,
 * verified atomic writes, the get-or-fill flow, stale temporaries. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "storage_internal.h"

#define TEMP_SUFFIX ".incomplete"
#define TEMP_BASE_MAX 200        /* bytes of NAME kept in a temporary's name */
#define STALE_OTHER_AGE_S 86400L /* other entries' temporaries: a day untouched */
#define HASH_HEX_MAX 65          /* SHA-256: 64 hex digits and a NUL */
#define READBACK_CHUNK ((size_t)1 << 20)
#define GATHER_SLOTS 8 /* runs of parallel writes gathered at once */

/* ---- small helpers ------------------------------------------------------------------ */

static int fail_nomem(kaun_error *err) { return kaun__error_nomem(err, "using the cache"); }

/* Length of `s` without its trailing slashes (but "/" stays "/"). */
static size_t trimmed_len(const char *s) {
  size_t n = strlen(s);
  while (n > 1 && s[n - 1] == '/') n--;
  return n;
}

/* Splits `path` into a malloc'd folder ("." when there is none) and a
 * pointer to its last component. */
static char *folder_of(const char *path, const char **base) {
  const char *slash = strrchr(path, '/');
  if (base) *base = slash ? slash + 1 : path;
  if (!slash) return strdup(".");
  size_t n = (size_t)(slash - path);
  if (n == 0) n = 1; /* "/x": the folder is "/" */
  return strndup(path, n);
}

static int pwrite_full(int fd, const void *buf, size_t size, uint64_t offset) {
  const char *p = buf;
  while (size) {
    ssize_t n = pwrite(fd, p, size > (1u << 30) ? (1u << 30) : size, (off_t)offset);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (n == 0) {
      errno = EIO; /* no progress: never loop forever */
      return -1;
    }
    p += n;
    size -= (size_t)n;
    offset += (uint64_t)n;
  }
  return 0;
}

static void fsync_folder(const char *folder) {
  int dfd = open(folder, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)fsync(dfd);
    close(dfd);
  }
}

static long elapsed_ms(const struct timespec *since) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (long)(now.tv_sec - since->tv_sec) * 1000L + (now.tv_nsec - since->tv_nsec) / 1000000L;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* ---- the root ------------------------------------------------------------------------ */

int kaun_cache_root(const kaun_context *ctx, char *out, size_t size, kaun_error *err) {
  if (!out || !size) return kaun__error_set(err, KAUN_EINVAL, "kaun_cache_root: no output buffer");
  const char *cfg = kaun__context_cache_dir(ctx);
  const char *raven = getenv("RAVEN_CACHE_ROOT");
  const char *xdg = getenv("XDG_CACHE_HOME");
  const char *home = getenv("HOME");
  const char *base, *tail, *origin;
  if (cfg && *cfg) {
    base = cfg, tail = "", origin = "the config's cache_dir";
  } else if (raven && *raven) {
    base = raven, tail = "", origin = "RAVEN_CACHE_ROOT";
  } else if (xdg && xdg[0] == '/') {
    base = xdg, tail = "/raven", origin = "XDG_CACHE_HOME";
  } else if (home && *home) {
    base = home, tail = "/.cache/raven", origin = "HOME";
  } else {
    return kaun__error_set(err, KAUN_ECONFIG,
                           "no cache folder: set cache_dir in the config, or RAVEN_CACHE_ROOT, "
                           "XDG_CACHE_HOME or HOME in the environment");
  }
  size_t n = trimmed_len(base);
  if (*tail && n == 1 && base[0] == '/') n = 0; /* "/" + "/raven" */
  int len = snprintf(out, size, "%.*s%s", (int)n, base, tail);
  if (len < 0 || (size_t)len >= size)
    return kaun__error_set(err, KAUN_EINVAL,
                           "the cache root from %s ('%s%s') is longer than the %zu bytes allowed",
                           origin, base, tail, size - 1);
  return KAUN_OK;
}

static bool relative_ok(const char *rel) {
  if (!rel || !*rel || rel[0] == '/') return false;
  for (const char *p = rel;;) {
    size_t n = strcspn(p, "/");
    if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.')) return false;
    if (!p[n]) return true;
    p += n + 1; /* an empty part after a trailing slash fails above */
  }
}

int kaun_cache_dir(const kaun_context *ctx, const char *relative, char *out, size_t size,
                   kaun_error *err) {
  if (!relative_ok(relative))
    return kaun__error_set(err, KAUN_EINVAL,
                           "cache folder '%s' must be a relative path without '.', '..' or empty "
                           "parts",
                           relative ? relative : "(null)");
  int rc = kaun_cache_root(ctx, out, size, err);
  if (rc) return rc;
  size_t n = strlen(out);
  if (n + 1 + strlen(relative) + 1 > size)
    return kaun__error_set(err, KAUN_EINVAL, "the cache folder '%s/%s' is longer than %zu bytes",
                           out, relative, size - 1);
  snprintf(out + n, size - n, "%s%s", n && out[n - 1] == '/' ? "" : "/", relative);
  return kaun_cache_mkdirs(out, err);
}

static int not_a_folder(kaun_error *err, const char *part, const char *path) {
  if (strcmp(part, path) == 0)
    return kaun__error_set(err, KAUN_EIO,
                           "cannot create the cache folder '%s': it exists and is "
                           "not a folder",
                           path);
  return kaun__error_set(err, KAUN_EIO,
                         "cannot create the cache folder '%s': '%s' exists and is "
                         "not a folder",
                         path, part);
}

int kaun_cache_mkdirs(const char *path, kaun_error *err) {
  if (!path || !*path) return kaun__error_set(err, KAUN_EINVAL, "empty cache folder path");
  struct stat sb;
  if (stat(path, &sb) == 0) return S_ISDIR(sb.st_mode) ? KAUN_OK : not_a_folder(err, path, path);
  char *copy = strdup(path);
  if (!copy) return fail_nomem(err);
  int rc = KAUN_OK;
  size_t len = strlen(copy);
  for (size_t i = 1; i <= len && !rc; i++) {
    if (copy[i] != '/' && copy[i] != '\0') continue;
    if (copy[i - 1] == '/') continue; /* "//" or a trailing slash */
    char saved = copy[i];
    copy[i] = '\0';
    if (mkdir(copy, 0755) != 0) {
      int e = errno;
      if (e == EEXIST || e == EISDIR) {
        if (stat(copy, &sb) != 0 || !S_ISDIR(sb.st_mode)) rc = not_a_folder(err, copy, path);
      } else if (!(e == EACCES && stat(copy, &sb) == 0 && S_ISDIR(sb.st_mode))) {
        rc = strcmp(copy, path) == 0
                 ? kaun__error_sys(err, KAUN_EIO, e, "cannot create the cache folder '%s'", path)
                 : kaun__error_sys(err, KAUN_EIO, e,
                                   "cannot create the cache folder '%s': creating '%s' failed",
                                   path, copy);
      }
    }
    copy[i] = saved;
  }
  free(copy);
  return rc;
}

/* ---- the per-entry lock ---------------------------------------------------------------- */

struct kaun_cache_lock {
  int fd;
  bool wrote; /* the holder line is ours to erase */
};

/* What the lock file says about its holder, in `out`. */
static void read_holder(int fd, char *out, size_t size) {
  char buf[320];
  ssize_t n;
  do n = pread(fd, buf, sizeof buf - 1, 0);
  while (n < 0 && errno == EINTR);
  if (n < 0) n = 0;
  buf[n] = '\0';
  buf[strcspn(buf, "\r\n")] = '\0';
  if (buf[0])
    snprintf(out, size, "%s", buf);
  else
    snprintf(out, size,
             "a process that has not written its name yet (or a client that writes "
             "none)");
}

int kaun_cache_lock(const char *lock_path, long timeout_ms, struct kaun_cache_lock **out,
                    kaun_error *err) {
  return kaun_cache_lock_io(lock_path, timeout_ms, NULL, out, err);
}

int kaun_cache_lock_io(const char *lock_path, long timeout_ms, kaun_io *io,
                       struct kaun_cache_lock **out, kaun_error *err) {
  if (out) *out = NULL;
  if (!lock_path || !*lock_path || !out)
    return kaun__error_set(err, KAUN_EINVAL, "kaun_cache_lock: no lock file or output");
  char *folder = folder_of(lock_path, NULL);
  if (!folder) return fail_nomem(err);
  int rc = kaun_cache_mkdirs(folder, err);
  free(folder);
  if (rc) {
    kaun__error_prefix(err, "cannot take the cache lock '%s': ", lock_path);
    return rc;
  }
  int fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  bool writable = fd >= 0;
  if (fd < 0 && (errno == EACCES || errno == EROFS))
    fd = open(lock_path, O_RDONLY | O_CLOEXEC); /* flock works on read-only files too */
  if (fd < 0)
    return kaun__error_sys(err, KAUN_EIO, errno, "cannot open the cache lock '%s'", lock_path);
  struct timespec start;
  clock_gettime(CLOCK_MONOTONIC, &start);
  long pause = 1;
  for (;;) {
    if (flock(fd, LOCK_EX | LOCK_NB) == 0) break;
    int e = errno;
    if (e == EINTR) continue;
    if (e != EWOULDBLOCK) {
      close(fd);
      return kaun__error_sys(err, KAUN_EIO, e, "cannot lock the cache lock '%s'", lock_path);
    }
    long waited = elapsed_ms(&start);
    if (kaun_io_canceled(io)) {
      close(fd);
      return kaun__error_set(err, KAUN_ECANCELED,
                             "canceled while waiting for the cache lock '%s' (another process is "
                             "filling this cache entry)",
                             lock_path);
    }
    if (timeout_ms >= 0 && waited >= timeout_ms) {
      char holder[400];
      read_holder(fd, holder, sizeof holder);
      close(fd);
      return kaun__error_set(err, KAUN_ETRANSIENT,
                             "timed out after %ld ms waiting for the cache lock '%s', held by %s: "
                             "another process is filling this cache entry; retry later or allow "
                             "a longer wait",
                             waited, lock_path, holder);
    }
    long nap = pause;
    if (timeout_ms >= 0 && nap > timeout_ms - waited) nap = timeout_ms - waited;
    sleep_ms(nap > 0 ? nap : 1);
    if (pause < 50) pause *= 2;
  }
  struct kaun_cache_lock *lk = malloc(sizeof *lk);
  if (!lk) {
    close(fd); /* releases the lock */
    return fail_nomem(err);
  }
  lk->fd = fd;
  lk->wrote = false;
  if (writable) {
    char host[256] = "unknown";
    if (gethostname(host, sizeof host) != 0) snprintf(host, sizeof host, "unknown");
    host[sizeof host - 1] = '\0';
    char line[320];
    int n = snprintf(line, sizeof line, "pid %ld on host %s\n", (long)getpid(), host);
    if (n > 0 && (size_t)n < sizeof line && ftruncate(fd, 0) == 0 &&
        pwrite_full(fd, line, (size_t)n, 0) == 0)
      lk->wrote = true;
  }
  *out = lk;
  return KAUN_OK;
}

void kaun_cache_unlock(struct kaun_cache_lock *lock) {
  if (!lock) return;
  if (lock->wrote) (void)ftruncate(lock->fd, 0); /* no stale holder for the next waiter */
  close(lock->fd);                               /* releases the flock */
  free(lock);
}

/* ---- writing an entry ---------------------------------------------------------------- */

struct kaun_cache_writer {
  char *final_path;
  char *folder;
  char *tmp_path;
  char *uri; /* for progress and messages */
  int fd;
  uint64_t expected_size;
  kaun_cache_hash kind;
  char expected_hex[HASH_HEX_MAX]; /* lowercase; "" = no check */
  kaun_io *io;
  EVP_MD_CTX *md;         /* streamed hash, or NULL */
  uint64_t pos;           /* next byte of kaun_cache_writer_write */
  atomic_bool sequential; /* only kaun_cache_writer_write so far */
  char *buf;              /* sequential writes gathered into large ones */
  size_t buf_len;         /* bytes in buf, which start at pos - buf_len */
  /* Parallel writes (kaun_cache_writer_pwrite) are hashed by a follower
   * thread that reads back the written prefix of the file while the rest
   * arrives, so the check costs little after the last byte. */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool follower_on;  /* started (join it) */
  bool follower_off; /* not to be started: no hash, unknown size, a failure */
  bool stop;
  bool read_failed;
  pthread_t follower;
  EVP_MD_CTX *pmd;
  uint64_t hashed; /* the follower's digest covers [0, hashed) */
  uint64_t *spans; /* written ranges, [start, end) pairs, sorted, merged */
  size_t nspans, span_cap;
  /* parallel writes gathered: one run of consecutive bytes per slot (an
   * HTTP body arrives in 16 KiB pieces; a part is 8 MiB) */
  struct gather {
    char *buf;
    uint64_t at;  /* file offset of buf[0] */
    size_t len;   /* 0: free */
    uint64_t use; /* last use, to pick the slot to flush */
  } slots[GATHER_SLOTS];
  uint64_t uses;
};

#define WRITE_GATHER ((size_t)1 << 20)

static const char *hash_name(kaun_cache_hash kind) {
  return kind == KAUN_CACHE_HASH_SHA256 ? "SHA-256"
         : kind == KAUN_CACHE_HASH_MD5  ? "MD5"
                                        : "git SHA-1";
}

static size_t hash_hex_len(kaun_cache_hash kind) {
  return kind == KAUN_CACHE_HASH_SHA256 ? 64 : kind == KAUN_CACHE_HASH_MD5 ? 32 : 40;
}

/* How many bytes of `base` go into a temporary's name: at most
 * TEMP_BASE_MAX, cut at a UTF-8 character boundary. */
static size_t temp_base_len(const char *base) {
  size_t n = strlen(base);
  if (n <= TEMP_BASE_MAX) return n;
  n = TEMP_BASE_MAX;
  while (n > 0 && ((unsigned char)base[n] & 0xC0) == 0x80) n--;
  return n;
}

static uint32_t random32(uint64_t *state) {
  uint32_t r;
  if (getrandom(&r, sizeof r, GRND_NONBLOCK) == (ssize_t)sizeof r) return r;
  *state = *state * 6364136223846793005ull + 1442695040888963407ull;
  return (uint32_t)(*state >> 32);
}

static void stop_follower(kaun_cache_writer *w) {
  if (!w->follower_on) return;
  pthread_mutex_lock(&w->mu);
  w->stop = true;
  pthread_cond_signal(&w->cv);
  pthread_mutex_unlock(&w->mu);
  pthread_join(w->follower, NULL);
  w->follower_on = false;
}

static void writer_free(kaun_cache_writer *w) {
  stop_follower(w);
  pthread_mutex_destroy(&w->mu);
  pthread_cond_destroy(&w->cv);
  EVP_MD_CTX_free(w->pmd);
  free(w->spans);
  for (int i = 0; i < GATHER_SLOTS; i++) free(w->slots[i].buf);
  free(w->buf);
  if (w->fd >= 0) close(w->fd);
  EVP_MD_CTX_free(w->md);
  free(w->final_path);
  free(w->folder);
  free(w->tmp_path);
  free(w->uri);
  free(w);
}

static int start_hash(kaun_cache_writer *w, EVP_MD_CTX **out, uint64_t size, kaun_error *err) {
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  int ok = md && EVP_DigestInit_ex(md,
                                   w->kind == KAUN_CACHE_HASH_SHA256 ? EVP_sha256()
                                   : w->kind == KAUN_CACHE_HASH_MD5  ? EVP_md5()
                                                                     : EVP_sha1(),
                                   NULL);
  if (ok && w->kind == KAUN_CACHE_HASH_GIT_SHA1) {
    char header[48];
    int n = snprintf(header, sizeof header, "blob %llu", (unsigned long long)size);
    ok = EVP_DigestUpdate(md, header, (size_t)n + 1); /* with its NUL */
  }
  if (!ok) {
    EVP_MD_CTX_free(md);
    return kaun__error_set(err, KAUN_ENOMEM, "libcrypto could not start a %s digest for '%s'",
                           hash_name(w->kind), w->final_path);
  }
  *out = md;
  return KAUN_OK;
}

static int finish_hash(kaun_cache_writer *w, EVP_MD_CTX *md, char out[HASH_HEX_MAX],
                       kaun_error *err) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  if (!EVP_DigestFinal_ex(md, digest, &len) || (size_t)2 * len >= HASH_HEX_MAX)
    return kaun__error_set(err, KAUN_ENOMEM, "libcrypto could not finish the %s digest of '%s'",
                           hash_name(w->kind), w->final_path);
  static const char hex[] = "0123456789abcdef";
  for (unsigned i = 0; i < len; i++) {
    out[2 * i] = hex[digest[i] >> 4];
    out[2 * i + 1] = hex[digest[i] & 15];
  }
  out[2 * len] = '\0';
  return KAUN_OK;
}

int kaun_cache_writer_open(const char *final_path, uint64_t expected_size,
                           kaun_cache_hash hash_kind, const char *expected_hex, kaun_io *io,
                           const char *progress_uri, kaun_cache_writer **out, kaun_error *err) {
  if (out) *out = NULL;
  if (!final_path || !*final_path || !out)
    return kaun__error_set(err, KAUN_EINVAL, "kaun_cache_writer_open: no final path or output");
  if (hash_kind != KAUN_CACHE_HASH_NONE && hash_kind != KAUN_CACHE_HASH_SHA256 &&
      hash_kind != KAUN_CACHE_HASH_GIT_SHA1 && hash_kind != KAUN_CACHE_HASH_MD5)
    return kaun__error_set(err, KAUN_EINVAL, "unknown cache hash kind %d for '%s'", (int)hash_kind,
                           final_path);
  const char *base;
  kaun_cache_writer *w = calloc(1, sizeof *w);
  if (!w) return fail_nomem(err);
  w->fd = -1;
  w->kind = hash_kind;
  w->io = io;
  w->expected_size = expected_size;
  atomic_init(&w->sequential, true);
  pthread_mutex_init(&w->mu, NULL);
  pthread_cond_init(&w->cv, NULL);
  if (!(w->final_path = strdup(final_path)) || !(w->folder = folder_of(final_path, &base)) ||
      !(w->uri = strdup(progress_uri ? progress_uri : final_path))) {
    writer_free(w);
    return fail_nomem(err);
  }
  int rc = KAUN_OK;
  if (!*base || strcmp(base, ".") == 0 || strcmp(base, "..") == 0) {
    rc = kaun__error_set(err, KAUN_EINVAL, "cache entry '%s' does not name a file", final_path);
    goto fail;
  }
  if (hash_kind != KAUN_CACHE_HASH_NONE && expected_hex) {
    size_t want = hash_hex_len(hash_kind), n = strlen(expected_hex);
    bool ok = n == want;
    for (size_t i = 0; ok && i < n; i++) {
      char c = expected_hex[i];
      if (c >= 'A' && c <= 'F') c = (char)(c - 'A' + 'a');
      ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
      w->expected_hex[i] = c;
    }
    if (!ok) {
      rc = kaun__error_set(err, KAUN_EINVAL,
                           "the expected %s of '%s' must be %zu hex digits, not '%s'",
                           hash_name(hash_kind), final_path, want, expected_hex);
      goto fail;
    }
    w->expected_hex[n] = '\0';
    /* a git blob id hashes the size first: stream only when it is known */
    if (hash_kind != KAUN_CACHE_HASH_GIT_SHA1 || expected_size != KAUN_CACHE_SIZE_UNKNOWN) {
      if ((rc = start_hash(w, &w->md, expected_size, err))) goto fail;
    }
  }
  size_t blen = temp_base_len(base), cap = strlen(w->folder) + blen + 64;
  if (!(w->tmp_path = malloc(cap))) {
    rc = fail_nomem(err);
    goto fail;
  }
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  uint64_t state = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)getpid() ^ (uint64_t)(uintptr_t)w;
  for (int attempt = 0; attempt < 100; attempt++) {
    snprintf(w->tmp_path, cap, "%s%s.%.*s.%ld.%08x" TEMP_SUFFIX, w->folder,
             strcmp(w->folder, "/") == 0 ? "" : "/", (int)blen, base, (long)getpid(),
             (unsigned)random32(&state));
    w->fd = open(w->tmp_path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (w->fd >= 0) break;
    int e = errno;
    if (e == EEXIST) continue;
    if (e == ENOENT)
      rc = kaun__error_sys(err, KAUN_ENOENT, e,
                           "cannot write the cache entry '%s': its folder '%s' does not exist",
                           final_path, w->folder);
    else
      rc = kaun__error_sys(err, KAUN_EIO, e, "cannot create the temporary file '%s' for '%s'",
                           w->tmp_path, final_path);
    goto fail;
  }
  if (w->fd < 0) {
    rc = kaun__error_set(err, KAUN_EIO, "cannot find a free temporary name in '%s' for '%s'",
                         w->folder, final_path);
    goto fail;
  }
  *out = w;
  return KAUN_OK;
fail:
  writer_free(w);
  return rc;
}

/* Checks that [offset, offset+len) stays within the expected size. */
static int check_range(kaun_cache_writer *w, uint64_t offset, size_t len, kaun_error *err) {
  uint64_t end;
  if (kaun__add_overflow(offset, len, &end) ||
      (w->expected_size != KAUN_CACHE_SIZE_UNKNOWN && end > w->expected_size))
    return kaun__error_set(err, KAUN_EIO,
                           "cache entry '%s' gets more data than its %llu expected bytes "
                           "(%zu bytes at offset %llu)",
                           w->final_path, (unsigned long long)w->expected_size, len,
                           (unsigned long long)offset);
  return KAUN_OK;
}

static int put_bytes(kaun_cache_writer *w, uint64_t offset, const void *data, size_t len,
                     kaun_error *err) {
  if (pwrite_full(w->fd, data, len, offset) != 0)
    return kaun__error_sys(err, KAUN_EIO, errno, "cannot write the cache file '%s'", w->tmp_path);
  return KAUN_OK;
}

static int report(kaun_cache_writer *w, size_t len, kaun_error *err) {
  uint64_t total = w->expected_size == KAUN_CACHE_SIZE_UNKNOWN ? 0 : w->expected_size;
  if (kaun_io_add(w->io, w->uri, total, len) == KAUN_ECANCELED)
    return kaun__error_set(err, KAUN_ECANCELED, "the transfer of '%s' was canceled", w->uri);
  return KAUN_OK;
}

/* Writes out what kaun_cache_writer_write gathered. */
static int flush_gathered(kaun_cache_writer *w, kaun_error *err) {
  if (!w->buf_len) return KAUN_OK;
  int rc = put_bytes(w, w->pos - w->buf_len, w->buf, w->buf_len, err);
  w->buf_len = 0;
  return rc;
}

int kaun_cache_writer_write(kaun_cache_writer *w, const void *data, size_t len, kaun_error *err) {
  if (!w || (len && !data))
    return kaun__error_set(err, KAUN_EINVAL, "kaun_cache_writer_write: no writer or data");
  int rc = check_range(w, w->pos, len, err);
  if (rc) return rc;
  if (!atomic_load(&w->sequential)) { /* after parallel writes: the follower does not see these */
    pthread_mutex_lock(&w->mu);
    w->read_failed = true;
    pthread_mutex_unlock(&w->mu);
  }
  /* small writes (an HTTP body arrives in 16 KiB pieces) are gathered into
   * 1 MiB ones: a syscall per piece cost a third of a download's time */
  if (!w->buf && len < WRITE_GATHER) w->buf = malloc(WRITE_GATHER);
  if (w->buf && len < WRITE_GATHER) {
    if (w->buf_len + len > WRITE_GATHER && (rc = flush_gathered(w, err))) return rc;
    memcpy(w->buf + w->buf_len, data, len);
    w->buf_len += len;
  } else {
    if ((rc = flush_gathered(w, err)) || (rc = put_bytes(w, w->pos, data, len, err))) return rc;
  }
  if (w->md && atomic_load(&w->sequential) && !EVP_DigestUpdate(w->md, data, len))
    return kaun__error_set(err, KAUN_ENOMEM, "libcrypto could not hash '%s'", w->final_path);
  w->pos += len;
  return report(w, len, err);
}

int kaun_cache_writer_sink(void *writer, uint64_t offset, const void *data, size_t len,
                           kaun_error *err) {
  kaun_cache_writer *w = writer;
  if (w && offset != w->pos)
    return kaun__error_set(err, KAUN_EIO,
                           "'%s': bytes arrived at %llu where %llu was next (a sink needs them in "
                           "order)",
                           w->uri, (unsigned long long)offset, (unsigned long long)w->pos);
  return kaun_cache_writer_write(w, data, len, err);
}

/* The end of the written prefix [0, end).  Under w->mu. */
static uint64_t prefix_end(const kaun_cache_writer *w) {
  return w->nspans && w->spans[0] == 0 ? w->spans[1] : 0;
}

/* Records [a, b) as written, merging it with its neighbours.  Under w->mu.
 * Returns false when out of memory. */
static bool add_span(kaun_cache_writer *w, uint64_t a, uint64_t b) {
  size_t i = 0;
  while (i < w->nspans && w->spans[2 * i + 1] < a) i++;
  /* spans i.. end at or after a: merge those that touch [a, b) */
  size_t j = i;
  while (j < w->nspans && w->spans[2 * j] <= b) {
    if (w->spans[2 * j] < a) a = w->spans[2 * j];
    if (w->spans[2 * j + 1] > b) b = w->spans[2 * j + 1];
    j++;
  }
  if (j == i) { /* a new span at i */
    if (w->nspans == w->span_cap) {
      size_t cap = w->span_cap ? 2 * w->span_cap : 16;
      uint64_t *s = realloc(w->spans, 2 * cap * sizeof *s);
      if (!s) return false;
      w->spans = s;
      w->span_cap = cap;
    }
    memmove(w->spans + 2 * (i + 1), w->spans + 2 * i, 2 * (w->nspans - i) * sizeof *w->spans);
    w->nspans++;
  } else if (j > i + 1) { /* spans i..j-1 become one */
    memmove(w->spans + 2 * (i + 1), w->spans + 2 * j, 2 * (w->nspans - j) * sizeof *w->spans);
    w->nspans -= j - i - 1;
  }
  w->spans[2 * i] = a;
  w->spans[2 * i + 1] = b;
  return true;
}

/* Whether [a, b) overlaps a written range or one waiting in a gather
 * slot.  Under w->mu. */
static bool overlaps(const kaun_cache_writer *w, uint64_t a, uint64_t b) {
  for (size_t i = 0; i < w->nspans; i++)
    if (w->spans[2 * i] < b && a < w->spans[2 * i + 1]) return true;
  for (int i = 0; i < GATHER_SLOTS; i++) {
    const struct gather *g = &w->slots[i];
    if (g->len && g->at < b && a < g->at + g->len) return true;
  }
  return false;
}

static void *follow(void *arg) {
  kaun_cache_writer *w = arg;
  char *buf = malloc(READBACK_CHUNK);
  pthread_mutex_lock(&w->mu);
  if (!buf) w->read_failed = true; /* never cleared: a writer may have set it already */
  while (!w->stop && !w->read_failed) {
    /* a chunk at a time: bytes arrive in pieces of 16 KiB */
    uint64_t end = prefix_end(w), from = w->hashed;
    if (end < from + READBACK_CHUNK) {
      pthread_cond_wait(&w->cv, &w->mu);
      continue;
    }
    pthread_mutex_unlock(&w->mu);
    bool ok = true;
    while (ok && from < end) {
      size_t n = end - from < READBACK_CHUNK ? (size_t)(end - from) : READBACK_CHUNK;
      ok = kaun__pread_full(w->fd, buf, n, from) == 0 && EVP_DigestUpdate(w->pmd, buf, n);
      from += ok ? n : 0;
    }
    pthread_mutex_lock(&w->mu);
    w->hashed = from;
    if (!ok) w->read_failed = true;
  }
  pthread_mutex_unlock(&w->mu);
  free(buf);
  return NULL;
}

/* Starts the follower on the first parallel write of a hashed entry of
 * known size.  Without one (no memory, no thread) the commit reads the
 * file back instead. */
static void start_follower(kaun_cache_writer *w) {
  if (w->follower_on || w->follower_off) return;
  w->follower_off = true;
  if (!w->expected_hex[0] || w->expected_size == KAUN_CACHE_SIZE_UNKNOWN || w->pos != 0) return;
  if (start_hash(w, &w->pmd, w->expected_size, NULL) != KAUN_OK) return;
  if (pthread_create(&w->follower, NULL, follow, w) != 0) return;
  w->follower_on = true;
  w->follower_off = false;
}

int kaun_cache_writer_part_sink(void *part, uint64_t offset, const void *data, size_t len,
                                kaun_error *err) {
  kaun_cache_part *p = part;
  uint64_t at;
  if (!p || kaun__add_overflow(p->offset, offset, &at))
    return kaun__error_set(err, KAUN_EINVAL, "kaun_cache_writer_part_sink: no part, or past 2^64");
  return kaun_cache_writer_pwrite(p->writer, at, data, len, err);
}

/* Writes [offset, offset + len) and records it for the follower.  Under w->mu. */
static int put_span(kaun_cache_writer *w, uint64_t offset, const void *data, size_t len,
                    kaun_error *err) {
  int rc = put_bytes(w, offset, data, len, err);
  if (rc || !len || !w->follower_on) return rc;
  /* bytes written twice may differ from those the follower hashed */
  if (overlaps(w, offset, offset + len)) w->read_failed = true;
  uint64_t before = prefix_end(w);
  if (!add_span(w, offset, offset + len)) {
    w->read_failed = true; /* the commit reads the file back */
    pthread_cond_signal(&w->cv);
  } else if (prefix_end(w) / READBACK_CHUNK > before / READBACK_CHUNK) {
    pthread_cond_signal(&w->cv); /* another whole chunk to hash */
  }
  return KAUN_OK;
}

static int flush_slot(kaun_cache_writer *w, struct gather *g, kaun_error *err) {
  if (!g->len) return KAUN_OK;
  size_t n = g->len;
  g->len = 0;
  return put_span(w, g->at, g->buf, n, err);
}

/* Writes out every gathered run.  Under w->mu. */
static int flush_slots(kaun_cache_writer *w, kaun_error *err) {
  int rc = KAUN_OK;
  for (int i = 0; i < GATHER_SLOTS; i++) {
    int r = flush_slot(w, &w->slots[i], err);
    if (!rc) rc = r;
  }
  return rc;
}

/* flush_slots for callers that do not hold w->mu. */
static int flush_all_slots(kaun_cache_writer *w, kaun_error *err) {
  pthread_mutex_lock(&w->mu);
  int rc = flush_slots(w, err);
  pthread_mutex_unlock(&w->mu);
  return rc;
}

/* Gathers [offset, offset + len) onto the run it continues, or starts a
 * run in a free slot (else the least recently used one, written out
 * first).  Large pieces are written at once.  Under w->mu. */
static int gather_at(kaun_cache_writer *w, uint64_t offset, const void *data, size_t len,
                     kaun_error *err) {
  struct gather *g = NULL, *pick = NULL;
  for (int i = 0; i < GATHER_SLOTS; i++) {
    struct gather *s = &w->slots[i];
    if (s->len && s->at + s->len == offset) g = s;
    if (!pick || (pick->len && (!s->len || s->use < pick->use))) pick = s;
  }
  int rc = KAUN_OK;
  if (len >= WRITE_GATHER / 2) {
    if (g) rc = flush_slot(w, g, err);
    return rc ? rc : put_span(w, offset, data, len, err);
  }
  if (g && g->len + len > WRITE_GATHER) {
    if ((rc = flush_slot(w, g, err))) return rc;
    g->at = offset;
  }
  if (!g) {
    g = pick;
    if ((rc = flush_slot(w, g, err))) return rc;
    if (!g->buf && !(g->buf = malloc(WRITE_GATHER))) return put_span(w, offset, data, len, err);
    g->at = offset;
  }
  memcpy(g->buf + g->len, data, len);
  g->len += len;
  g->use = ++w->uses;
  return KAUN_OK;
}

int kaun_cache_writer_pwrite(kaun_cache_writer *w, uint64_t offset, const void *data, size_t len,
                             kaun_error *err) {
  if (!w || (len && !data))
    return kaun__error_set(err, KAUN_EINVAL, "kaun_cache_writer_pwrite: no writer or data");
  int rc = check_range(w, offset, len, err);
  if (rc) return rc;
  pthread_mutex_lock(&w->mu);
  atomic_store(&w->sequential, false);
  start_follower(w);
  /* bytes written twice may differ from those the follower hashed */
  if (w->follower_on && len && overlaps(w, offset, offset + len)) w->read_failed = true;
  rc = flush_gathered(w, err);
  if (!rc && len) rc = gather_at(w, offset, data, len, err);
  pthread_mutex_unlock(&w->mu);
  return rc ? rc : report(w, len, err);
}

int kaun_cache_writer_fd(kaun_cache_writer *w) {
  if (!w) return -1;
  pthread_mutex_lock(&w->mu);
  atomic_store(&w->sequential, false);
  int rc = flush_gathered(w, NULL);
  if (!rc) rc = flush_slots(w, NULL);
  /* what the caller writes is not seen: the commit reads the file back */
  w->read_failed = true;
  w->follower_off = true;
  pthread_mutex_unlock(&w->mu);
  return rc ? -1 : w->fd;
}

void kaun_cache_writer_set_io(kaun_cache_writer *w, kaun_io *io) {
  if (w) w->io = io;
}

const char *kaun_cache_writer_temp_path(const kaun_cache_writer *w) {
  return w ? w->tmp_path : NULL;
}

/* The hash of the first `size` bytes of the temporary, read back: all of
 * them, or (`md` given) those from `from` on, added to `md`, which is then
 * freed. */
static int hash_file(kaun_cache_writer *w, EVP_MD_CTX *md, uint64_t from, uint64_t size,
                     char out[HASH_HEX_MAX], kaun_error *err) {
  int rc = md ? KAUN_OK : start_hash(w, &md, size, err);
  if (rc) return rc;
  char *buf = malloc(READBACK_CHUNK);
  if (!buf) rc = fail_nomem(err);
  for (uint64_t off = from; !rc && off < size;) {
    size_t n = size - off < READBACK_CHUNK ? (size_t)(size - off) : READBACK_CHUNK;
    if (kaun__pread_full(w->fd, buf, n, off) != 0)
      rc = kaun__error_sys(err, KAUN_EIO, errno, "cannot read back the cache file '%s'",
                           w->tmp_path);
    else if (!EVP_DigestUpdate(md, buf, n))
      rc = kaun__error_set(err, KAUN_ENOMEM, "libcrypto could not hash '%s'", w->final_path);
    off += n;
  }
  if (!rc) rc = finish_hash(w, md, out, err);
  free(buf);
  EVP_MD_CTX_free(md);
  return rc;
}

int kaun_cache_writer_commit(kaun_cache_writer *w, kaun_error *err) {
  if (!w) return kaun__error_set(err, KAUN_EINVAL, "kaun_cache_writer_commit: no writer");
  int rc = KAUN_OK;
  struct stat sb;
  if (kaun_io_canceled(w->io))
    rc = kaun__error_set(err, KAUN_ECANCELED, "the transfer of '%s' was canceled", w->uri);
  else if ((rc = flush_gathered(w, err)) || (rc = flush_all_slots(w, err)))
    ;
  else if (fsync(w->fd) != 0)
    rc = kaun__error_sys(err, KAUN_EIO, errno, "cannot flush the cache file '%s' to disk",
                         w->tmp_path);
  else if (fstat(w->fd, &sb) != 0)
    rc = kaun__error_sys(err, KAUN_EIO, errno, "cannot stat the cache file '%s'", w->tmp_path);
  else if (w->expected_size != KAUN_CACHE_SIZE_UNKNOWN && (uint64_t)sb.st_size != w->expected_size)
    rc = kaun__error_set(
        err, KAUN_EIO, "cache entry '%s' has the wrong size: expected %llu bytes, got %llu",
        w->final_path, (unsigned long long)w->expected_size, (unsigned long long)sb.st_size);
  if (!rc && w->expected_hex[0]) {
    char got[HASH_HEX_MAX];
    uint64_t size = (uint64_t)sb.st_size;
    stop_follower(w);
    if (w->md && atomic_load(&w->sequential) && w->pos == size) {
      rc = finish_hash(w, w->md, got, err);
    } else if (w->pmd && !w->read_failed && w->hashed <= size) {
      /* the follower's digest, and the bytes it had not reached yet */
      EVP_MD_CTX *md = w->pmd;
      w->pmd = NULL;
      rc = hash_file(w, md, w->hashed, size, got, err);
    } else {
      rc = hash_file(w, NULL, 0, size, got, err);
    }
    if (!rc && strcmp(got, w->expected_hex) != 0)
      rc = kaun__error_set(err, KAUN_ECHECKSUM,
                           "the bytes received for '%s' fail their %s check (expected %s, got "
                           "%s): nothing was cached; retry, and if it happens again the source "
                           "holds other bytes than it says",
                           w->final_path, hash_name(w->kind), w->expected_hex, got);
  }
  stop_follower(w); /* before its file is closed, whatever failed above */
  int fd = w->fd;
  w->fd = -1;
  if (close(fd) != 0 && !rc)
    rc = kaun__error_sys(err, KAUN_EIO, errno, "cannot close the cache file '%s'", w->tmp_path);
  if (!rc && rename(w->tmp_path, w->final_path) != 0)
    rc = kaun__error_sys(err, KAUN_EIO, errno, "cannot rename '%s' to the cache entry '%s'",
                         w->tmp_path, w->final_path);
  if (rc)
    unlink(w->tmp_path);
  else
    fsync_folder(w->folder);
  writer_free(w);
  return rc;
}

void kaun_cache_writer_abort(kaun_cache_writer *w) {
  if (!w) return;
  stop_follower(w); /* it reads the file */
  if (w->fd >= 0) {
    close(w->fd);
    w->fd = -1;
  }
  unlink(w->tmp_path);
  writer_free(w);
}

/* ---- the usual flow ---------------------------------------------------------------------- */

/* The entry is there, a regular file with the expected size. */
static bool entry_ready(const char *path, uint64_t size) {
  struct stat sb;
  return stat(path, &sb) == 0 && S_ISREG(sb.st_mode) &&
         (size == KAUN_CACHE_SIZE_UNKNOWN || (uint64_t)sb.st_size == size);
}

int kaun_cache_get_or_fill(const char *final_path, const char *lock_path, uint64_t size,
                           kaun_cache_hash kind, const char *hex, long lock_timeout_ms,
                           kaun_cache_fill_fn fill, void *user, kaun_io *io,
                           const char *progress_uri, kaun_error *err) {
  if (!final_path || !*final_path || !lock_path || !*lock_path || !fill)
    return kaun__error_set(err, KAUN_EINVAL,
                           "kaun_cache_get_or_fill: no entry, lock file or fill function");
  if (entry_ready(final_path, size)) return KAUN_OK;
  const char *base;
  char *folder = folder_of(final_path, &base);
  if (!folder) return fail_nomem(err);
  struct kaun_cache_lock *lock = NULL;
  kaun_cache_writer *w = NULL;
  int rc = kaun_cache_mkdirs(folder, err);
  if (!rc) rc = kaun_cache_lock_io(lock_path, lock_timeout_ms, io, &lock, err);
  if (rc || entry_ready(final_path, size)) goto done; /* filled while we waited */
  /* under the lock, this entry's temporaries belong to dead writers */
  kaun_error ignored = KAUN_ERROR_INIT;
  (void)kaun_cache_clean_stale(folder, base, 0, NULL, &ignored);
  (void)kaun_cache_clean_stale(folder, NULL, STALE_OTHER_AGE_S, NULL, &ignored);
  rc = kaun_cache_writer_open(final_path, size, kind, hex, io, progress_uri, &w, err);
  if (rc) goto done;
  rc = fill(w, user, err);
  if (rc) {
    if (err && err->code != rc)
      kaun__error_set(err, rc, "filling the cache entry '%s' failed (%s)", final_path,
                      kaun_status_name(rc));
    kaun_cache_writer_abort(w);
  } else {
    rc = kaun_cache_writer_commit(w, err);
  }
done:
  kaun_cache_unlock(lock);
  free(folder);
  return rc;
}

/* ---- housekeeping -------------------------------------------------------------------------- */

/* Parses ".NAME.PID.RANDOM.incomplete": the pid, and NAME's extent. */
static bool parse_temp(const char *name, long *pid, const char **entry, size_t *entry_len) {
  size_t n = strlen(name), slen = sizeof TEMP_SUFFIX - 1;
  if (n < 1 + slen + 4 || name[0] != '.' || strcmp(name + n - slen, TEMP_SUFFIX) != 0) return false;
  size_t end = n - slen; /* one past RANDOM */
  size_t r = end;
  while (r > 1 && name[r - 1] != '.') r--;
  if (r <= 1 || r == end) return false; /* RANDOM is empty, or there is no dot */
  for (size_t i = r; i < end; i++)
    if (!((name[i] >= '0' && name[i] <= '9') || (name[i] >= 'a' && name[i] <= 'f'))) return false;
  size_t p = r - 1; /* the dot before RANDOM */
  size_t q = p;
  while (q > 1 && name[q - 1] != '.') q--;
  if (q <= 1 || q == p) return false;
  long v = 0;
  for (size_t i = q; i < p; i++) {
    if (name[i] < '0' || name[i] > '9' || v > (LONG_MAX - 9) / 10) return false;
    v = v * 10 + (name[i] - '0');
  }
  if (v <= 0 || v > INT_MAX) return false;
  *pid = v;
  *entry = name + 1;
  *entry_len = q - 1 - 1; /* from after the leading dot to before the dot before PID */
  return *entry_len > 0;
}

int kaun_cache_clean_stale(const char *folder, const char *entry_name, long min_age_s,
                           unsigned *removed, kaun_error *err) {
  if (removed) *removed = 0;
  if (!folder || !*folder)
    return kaun__error_set(err, KAUN_EINVAL, "kaun_cache_clean_stale: no folder");
  DIR *d = opendir(folder);
  if (!d) {
    int e = errno;
    return kaun__error_sys(err, e == ENOENT ? KAUN_ENOENT : KAUN_EIO, e,
                           "cannot list the cache folder '%s'", folder);
  }
  size_t want_len = entry_name ? temp_base_len(entry_name) : 0;
  time_t now = time(NULL);
  int rc = KAUN_OK;
  unsigned count = 0;
  struct dirent *de;
  while ((de = readdir(d))) {
    long pid;
    const char *entry;
    size_t elen;
    if (!parse_temp(de->d_name, &pid, &entry, &elen)) continue;
    if (entry_name && (elen != want_len || memcmp(entry, entry_name, elen) != 0)) continue;
    if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue; /* alive, or not ours to ask */
    struct stat sb;
    if (fstatat(dirfd(d), de->d_name, &sb, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(sb.st_mode))
      continue;
    if (min_age_s > 0 && now - sb.st_mtime < min_age_s) continue;
    if (unlinkat(dirfd(d), de->d_name, 0) == 0)
      count++;
    else if (errno != ENOENT && !rc)
      rc = kaun__error_sys(err, KAUN_EIO, errno, "cannot remove the stale cache file '%s/%s'",
                           folder, de->d_name);
  }
  closedir(d);
  if (removed) *removed = count;
  return rc;
}
