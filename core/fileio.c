/* Local file helpers: full reads and writes, atomic replacement, crash leftovers. */
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int kaun__pread_full(int fd, void *buf, size_t size, uint64_t offset) {
  char *p = buf;
  while (size) {
    ssize_t n = pread(fd, p, size > (1u << 30) ? (1u << 30) : size, (off_t)offset);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (n == 0) {
      errno = EIO; /* the file is shorter than it said */
      return -1;
    }
    p += n;
    size -= (size_t)n;
    offset += (uint64_t)n;
  }
  return 0;
}

int kaun__write_full(int fd, const void *buf, size_t size) {
  const char *p = buf;
  while (size) {
    ssize_t n = write(fd, p, size > (1u << 30) ? (1u << 30) : size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += n;
    size -= (size_t)n;
  }
  return 0;
}

/* ---- atomic writes ------------------------------------------------------------------------
 *
 * A save writes a temporary file in the target's folder, fsyncs it and
 * puts it in place with one rename (or link), then fsyncs the folder.
 * The temporary is unnamed where the file system can (O_TMPFILE): a
 * crash at any moment of the write leaves nothing, since the kernel
 * frees an unnamed file with its last descriptor.  An unnamed file is
 * given its name with linkat; linkat cannot replace, so a new file is
 * linked straight to its name, and an existing one gets a temporary name
 * first, renamed over it at once: only that instant can leave a name.
 * Elsewhere the temporary is named from the start.  Named temporaries are
 * ".NAME.kaun-tmp-PID-WHERE-RANDOM": the writer's pid, and a tag of the
 * host and pid namespace the pid means something in.  Every save removes
 * the temporaries in its folder whose writer is dead (kill(PID, 0) says
 * ESRCH), that were made here (same WHERE) and that have not been touched
 * for TEMP_STALE_S seconds.  docs/design-notes.md, "Crash leftovers". */

#define TEMP_TAG ".kaun-tmp-"
#define TEMP_STALE_S 5

static uint32_t fnv1a(uint32_t h, const char *s) {
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
  return h;
}

/* The host and pid namespace this process runs in, as 32 bits: a pid in
 * a temporary's name is checked only where it was taken (a folder may be
 * shared with another machine or container, whose pids mean nothing
 * here). */
static uint32_t where_tag(void) {
  char host[256] = "", ns[64] = "";
  if (gethostname(host, sizeof host - 1) != 0) host[0] = '\0';
  host[sizeof host - 1] = '\0';
  ssize_t n = readlink("/proc/self/ns/pid", ns, sizeof ns - 1);
  ns[n > 0 ? n : 0] = '\0';
  return fnv1a(fnv1a(fnv1a(2166136261u, host), "\n"), ns);
}

/* A fresh temporary name for `base` in `out` (at most NAME_MAX bytes: a
 * long base is cut, the parts after it never are). */
static void temp_name(char *out, const char *base, uint32_t where, uint64_t *seed) {
  *seed = *seed * 6364136223846793005ull + 1442695040888963407ull;
  char suffix[64];
  int sn = snprintf(suffix, sizeof suffix, TEMP_TAG "%ld-%08lx-%08lx", (long)getpid(),
                    (unsigned long)where, (unsigned long)((*seed >> 32) & 0xffffffffu));
  size_t room = NAME_MAX - 1 - (size_t)sn, bl = strlen(base);
  snprintf(out, NAME_MAX + 1, ".%.*s%s", (int)(bl < room ? bl : room), base, suffix);
}

static bool parse_hex8(const char *s, uint32_t *out) {
  uint32_t v = 0;
  for (int i = 0; i < 8; i++) {
    char c = s[i];
    if (c >= '0' && c <= '9')
      v = v << 4 | (uint32_t)(c - '0');
    else if (c >= 'a' && c <= 'f')
      v = v << 4 | (uint32_t)(c - 'a' + 10);
    else
      return false;
  }
  *out = v;
  return true;
}

/* Parses ".NAME.kaun-tmp-PID-WHERE-RANDOM". */
static bool parse_temp_name(const char *name, pid_t *pid, uint32_t *where) {
  if (name[0] != '.') return false;
  const char *tag = NULL;
  for (const char *p = name + 1; (p = strstr(p, TEMP_TAG)); p++) tag = p;
  if (!tag) return false;
  const char *s = tag + strlen(TEMP_TAG);
  long v = 0;
  int digits = 0;
  for (; *s >= '0' && *s <= '9'; s++, digits++) {
    if (digits == 10) return false;
    v = v * 10 + (*s - '0');
  }
  uint32_t random;
  if (!digits || v <= 0 || v > INT_MAX || s[0] != '-' || !parse_hex8(s + 1, where) || s[9] != '-' ||
      !parse_hex8(s + 10, &random) || s[18] != '\0')
    return false;
  *pid = (pid_t)v;
  return true;
}

/* Removes the temporaries of dead writers from the folder `dir_fd`
 * (best effort: a folder it cannot read is left alone). */
static void remove_stale_temps(int dir_fd) {
  int fd = openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  DIR *d = fdopendir(fd);
  if (!d) {
    close(fd);
    return;
  }
  const pid_t self = getpid();
  const uint32_t here = where_tag();
  const time_t now = time(NULL);
  struct dirent *e;
  while ((e = readdir(d))) {
    pid_t pid;
    uint32_t where;
    struct stat sb;
    if (!parse_temp_name(e->d_name, &pid, &where) || where != here || pid == self) continue;
    if (fstatat(fd, e->d_name, &sb, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(sb.st_mode) ||
        sb.st_mtime > now - TEMP_STALE_S)
      continue;
    if (kill(pid, 0) == 0 || errno != ESRCH) continue; /* alive, or not ours to ask */
    (void)unlinkat(fd, e->d_name, 0);
  }
  closedir(d);
}

static bool env_set(const char *name) {
  const char *v = getenv(name);
  return v && *v && strcmp(v, "0") != 0;
}

/* An unnamed temporary in `dir_fd`, or -1 where the file system has none
 * or it could not be given a name afterwards (linkat needs /proc, or
 * CAP_DAC_READ_SEARCH for AT_EMPTY_PATH).  KAUN_TEST_NO_O_TMPFILE turns
 * it off, for the tests of named temporaries. */
static int open_unnamed(int dir_fd) {
#ifdef O_TMPFILE
  if (env_set("KAUN_TEST_NO_O_TMPFILE")) return -1;
  int fd = openat(dir_fd, ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, 0666);
  if (fd < 0) return -1;
  char proc[64];
  snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
  struct stat a, b;
  if (fstat(fd, &a) != 0 || stat(proc, &b) != 0 || a.st_dev != b.st_dev || a.st_ino != b.st_ino) {
    close(fd);
    return -1;
  }
  return fd;
#else
  (void)dir_fd;
  return -1;
#endif
}

/* Gives the unnamed file `fd` the name `name` in `dir_fd`; fails with
 * EEXIST when the name is taken (linkat never replaces). */
static int link_unnamed(int fd, int dir_fd, const char *name) {
  if (linkat(fd, "", dir_fd, name, AT_EMPTY_PATH) == 0) return 0;
  if (errno == EEXIST) return -1;
  char proc[64];
  snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
  return linkat(AT_FDCWD, proc, dir_fd, name, AT_SYMLINK_FOLLOW);
}

int kaun__atomic_write_at(int dir_fd, const char *name, const char *path, kaun__write_fn write_fn,
                          void *context, kaun_error *err) {
  if (!*name || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
    return kaun__error_set(err, KAUN_EISDIR, "'%s' is a directory", path);
  remove_stale_temps(dir_fd);
  const char *slash = strrchr(path, '/');
  size_t dir_len = slash ? (size_t)(slash - path) + 1 : 0;
  char tmp_name[NAME_MAX + 1];
  char *tmp = malloc(dir_len + sizeof tmp_name);
  if (!tmp) return kaun__error_nomem(err, "naming a temporary file");
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  uint64_t seed = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)getpid() ^ (uint64_t)(uintptr_t)tmp;
  const uint32_t where = where_tag();
  temp_name(tmp_name, name, where, &seed);
  snprintf(tmp, dir_len + sizeof tmp_name, "%.*s%s", (int)dir_len, path, tmp_name);

  int rc = KAUN_OK;
  bool named = false; /* tmp_name exists in the folder and must go on failure */
  int fd = open_unnamed(dir_fd);
  const bool unnamed = fd >= 0;
  for (int attempt = 0; fd < 0 && attempt < 100; attempt++) {
    fd = openat(dir_fd, tmp_name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
    if (fd >= 0) {
      named = true;
    } else if (errno == EEXIST) {
      temp_name(tmp_name, name, where, &seed);
      snprintf(tmp, dir_len + sizeof tmp_name, "%.*s%s", (int)dir_len, path, tmp_name);
    } else {
      int e = errno;
      if (dir_len)
        rc = kaun__error_sys(err, e == ENOENT ? KAUN_ENOENT : KAUN_EIO, e,
                             "cannot create a temporary file in '%.*s' to save '%s'",
                             (int)(dir_len > 1 ? dir_len - 1 : 1), path, path);
      else
        rc = kaun__error_sys(err, e == ENOENT ? KAUN_ENOENT : KAUN_EIO, e,
                             "cannot create a temporary file in '.' to save '%s'", path);
      break;
    }
  }
  if (fd < 0 && !rc)
    rc = kaun__error_set(err, KAUN_EIO, "cannot find a free temporary name to save '%s'", path);
  if (!rc) rc = write_fn(fd, tmp, context, err);
  if (!rc && fsync(fd) != 0)
    rc = kaun__error_sys(err, KAUN_EIO, errno, "cannot flush '%s' to disk", tmp);
  if (unnamed && !rc && link_unnamed(fd, dir_fd, name) != 0) {
    /* the name exists: link under a temporary name, then rename over it */
    int e = errno;
    for (int attempt = 0; e == EEXIST && attempt < 100; attempt++) {
      if (link_unnamed(fd, dir_fd, tmp_name) == 0) {
        named = true;
        break;
      }
      if ((e = errno) == EEXIST) {
        temp_name(tmp_name, name, where, &seed);
        snprintf(tmp, dir_len + sizeof tmp_name, "%.*s%s", (int)dir_len, path, tmp_name);
      }
    }
    if (!named)
      rc = kaun__error_sys(err, KAUN_EIO, e, "cannot give the temporary file of '%s' a name", path);
  }
  if (fd >= 0 && close(fd) != 0 && !rc && !unnamed)
    rc = kaun__error_sys(err, KAUN_EIO, errno, "cannot close '%s'", tmp);
  if (!rc && named && renameat(dir_fd, tmp_name, dir_fd, name) != 0)
    rc = kaun__error_sys(err, KAUN_EIO, errno, "cannot rename '%s' to '%s'", tmp, path);
  if (rc) {
    if (named) (void)unlinkat(dir_fd, tmp_name, 0);
    kaun__error_prefix(err, "saving '%s' failed and left it unchanged: ", path);
  } else {
    /* make the rename (or link) itself durable */
    int dfd = openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      (void)fsync(dfd);
      close(dfd);
    }
  }
  free(tmp);
  return rc;
}

int kaun__atomic_write(const char *path, kaun__write_fn write_fn, void *context, kaun_error *err) {
  char *dcopy = strdup(path), *bcopy = strdup(path);
  int rc = KAUN_OK;
  if (!dcopy || !bcopy) {
    rc = kaun__error_nomem(err, "naming a temporary file");
  } else {
    const char *dir = dirname(dcopy), *base = basename(bcopy);
    int dir_fd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd < 0) {
      int e = errno;
      rc = kaun__error_sys(err, e == ENOENT ? KAUN_ENOENT : KAUN_EIO, e,
                           "cannot create a temporary file in '%s' to save '%s'", dir, path);
      kaun__error_prefix(err, "saving '%s' failed and left it unchanged: ", path);
    } else {
      rc = kaun__atomic_write_at(dir_fd, base, path, write_fn, context, err);
      close(dir_fd);
    }
  }
  free(dcopy);
  free(bcopy);
  return rc;
}

int kaun__read_small_file(const char *path, size_t max, char **out, size_t *out_len,
                          kaun_error *err) {
  *out = NULL;
  /* O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below) */
  int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    return kaun__error_sys(err, e == ENOENT ? KAUN_ENOENT : KAUN_EIO, e, "cannot open '%s'", path);
  }
  struct stat sb;
  int rc = KAUN_OK;
  char *buf = NULL;
  if (fstat(fd, &sb) != 0) {
    rc = kaun__error_sys(err, KAUN_EIO, errno, "cannot stat '%s'", path);
  } else if (S_ISDIR(sb.st_mode)) {
    rc = kaun__error_set(err, KAUN_EINVAL, "'%s' is a directory, not a file", path);
  } else if (!S_ISREG(sb.st_mode)) {
    rc = kaun__error_set(err, KAUN_EINVAL, "'%s' is not a regular file", path);
  } else if ((uint64_t)sb.st_size > max) {
    rc = kaun__error_set(err, KAUN_EINVAL, "'%s' is %lld bytes, more than the %zu allowed", path,
                         (long long)sb.st_size, max);
  } else if (!(buf = malloc((size_t)sb.st_size + 1))) {
    rc = kaun__error_nomem(err, "reading a file");
  } else if (kaun__pread_full(fd, buf, (size_t)sb.st_size, 0) != 0) {
    rc = kaun__error_sys(err, KAUN_EIO, errno, "cannot read '%s'", path);
  }
  close(fd);
  if (rc) {
    free(buf);
    return rc;
  }
  buf[sb.st_size] = '\0';
  *out = buf;
  *out_len = (size_t)sb.st_size;
  return KAUN_OK;
}

typedef struct put_ctx {
  const kaun_put_source *src;
} put_ctx;

static int put_write(int fd, const char *tmp_path, void *c, kaun_error *err) {
  const kaun_put_source *src = ((put_ctx *)c)->src;
  char *buf = NULL;
  const size_t chunk = (size_t)8 << 20;
  int rc = KAUN_OK;
  for (uint64_t off = 0; off < src->size && !rc;) {
    const void *p = NULL;
    size_t len = 0;
    if (!src->view || src->view(src->context, off, &p, &len) != KAUN_OK || !p || !len) {
      if (!buf && !(buf = malloc(chunk))) {
        rc = kaun__error_nomem(err, "writing a file");
        break;
      }
      len = src->size - off < chunk ? (size_t)(src->size - off) : chunk;
      if ((rc = src->read(src->context, off, buf, len, err))) break;
      p = buf;
    }
    if (len > src->size - off) len = (size_t)(src->size - off);
    if (kaun__write_full(fd, p, len) != 0)
      rc = kaun__error_sys(err, KAUN_EIO, errno, "writing '%s' failed", tmp_path);
    off += len;
  }
  free(buf);
  return rc;
}

int kaun_file_put_atomic(const char *path, const kaun_put_source *src, kaun_error *err) {
  put_ctx c = {src};
  return kaun__atomic_write(path, put_write, &c, err);
}

int kaun__atomic_put_at(int dir_fd, const char *name, const char *path, const kaun_put_source *src,
                        kaun_error *err) {
  put_ctx c = {src};
  return kaun__atomic_write_at(dir_fd, name, path, put_write, &c, err);
}
