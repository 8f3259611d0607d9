/* Local file helpers: full reads and writes, atomic replacement. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
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

/* Creates "DIR/.BASE.kaun-tmp-XXXXXXXX" with O_EXCL, so the umask applies
 * as for any new file (mkstemp would force mode 0600). */
static int create_temp(const char *path, char **tmp_out, kaun_error *err) {
  char *dcopy = strdup(path), *bcopy = strdup(path);
  if (!dcopy || !bcopy) {
    free(dcopy);
    free(bcopy);
    return kaun__error_nomem(err, "naming a temporary file");
  }
  const char *dir = dirname(dcopy), *base = basename(bcopy);
  size_t cap = strlen(dir) + strlen(base) + 48;
  char *tmp = malloc(cap);
  int rc = KAUN_OK;
  if (!tmp) {
    rc = kaun__error_nomem(err, "naming a temporary file");
    goto done;
  }
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  uint64_t seed = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)getpid() ^ (uint64_t)(uintptr_t)tmp;
  for (int attempt = 0; attempt < 100; attempt++) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    snprintf(tmp, cap, "%s/.%s.kaun-tmp-%08llx", dir, base,
             (unsigned long long)(seed >> 32) & 0xffffffffull);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0) {
      *tmp_out = tmp;
      tmp = NULL;
      rc = fd;
      goto done;
    }
    if (errno != EEXIST) {
      int e = errno;
      rc = kaun__error_sys(err, e == ENOENT ? KAUN_ENOENT : KAUN_EIO, e,
                           "cannot create a temporary file in '%s' to save '%s'", dir, path);
      goto done;
    }
  }
  rc = kaun__error_set(err, KAUN_EIO, "cannot find a free temporary name in '%s'", dir);
done:
  free(tmp);
  free(dcopy);
  free(bcopy);
  return rc;
}

int kaun__atomic_write(const char *path, kaun__write_fn write_fn, void *context, kaun_error *err) {
  char *tmp = NULL;
  int fd = create_temp(path, &tmp, err);
  if (fd < 0) return fd;
  int rc = write_fn(fd, tmp, context, err);
  if (!rc && fsync(fd) != 0)
    rc = kaun__error_sys(err, KAUN_EIO, errno, "cannot flush '%s' to disk", tmp);
  if (close(fd) != 0 && !rc) rc = kaun__error_sys(err, KAUN_EIO, errno, "cannot close '%s'", tmp);
  if (!rc && rename(tmp, path) != 0)
    rc = kaun__error_sys(err, KAUN_EIO, errno, "cannot rename '%s' to '%s'", tmp, path);
  if (rc) {
    unlink(tmp);
    kaun__error_prefix(err, "saving '%s' failed and left it unchanged: ", path);
  } else {
    /* make the rename itself durable */
    char *dcopy = strdup(path);
    if (dcopy) {
      int dfd = open(dirname(dcopy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
      }
      free(dcopy);
    }
  }
  free(tmp);
  return rc;
}

int kaun__read_small_file(const char *path, size_t max, char **out, size_t *out_len,
                          kaun_error *err) {
  *out = NULL;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    return kaun__error_sys(err, e == ENOENT ? KAUN_ENOENT : KAUN_EIO, e, "cannot open '%s'", path);
  }
  struct stat sb;
  int rc = KAUN_OK;
  char *buf = NULL;
  if (fstat(fd, &sb) != 0) {
    rc = kaun__error_sys(err, KAUN_EIO, errno, "cannot stat '%s'", path);
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
