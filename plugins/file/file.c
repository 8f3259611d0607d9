/* "SafeTensors local files": the file backend.
 *
 * file:///abs/path, plain paths, and named instances with a `root`
 * directory (models:///bert/model.safetensors = ROOT/bert/...).  Paths
 * that escape the root — through ".." or a symlink — are refused.
 * Objects are mapped (zero copy) and read with pread; puts are atomic.
 *
 * This backend is compiled into libkaun and registered through the same
 * descriptor checks as any dlopen'd plugin, so plain paths work without a
 * plugin directory. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef __linux__
#include <linux/fs.h> /* FICLONE */
#endif

#include "../../core/storage_internal.h"

typedef struct file_backend {
  char *name;
  char *root; /* realpath of the root, or NULL */
} file_backend;

typedef struct file_object {
  int fd;
  char *path;
  uint64_t size;
  struct stat sb;
} file_object;

typedef struct file_mapping {
  void *data;
  size_t size;
} file_mapping;

static const kaun_option_spec file_options[] = {
    {"root", KAUN_OPTION_STRING, NULL, 0, 0,
     "a directory; the instance's paths are relative to it and cannot leave it"},
    {NULL, 0, NULL, 0, 0, NULL}};

static int file_create(kaun_context *ctx, const char *instance, const kaun_options *opts,
                       void **out, kaun_error *err) {
  (void)ctx;
  file_backend *b = calloc(1, sizeof *b);
  if (!b || !(b->name = strdup(instance))) {
    free(b);
    return kaun__error_nomem(err, "creating a file backend");
  }
  const char *root = kaun_options_get(opts, "root");
  if (root && *root) {
    b->root = realpath(root, NULL);
    struct stat sb;
    if (!b->root || stat(b->root, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
      int e = errno;
      free(b->root);
      free(b->name);
      free(b);
      return kaun__error_sys(err, KAUN_ECONFIG, e,
                             "the root '%s' of backend '%s' is not a directory", root, instance);
    }
  }
  *out = b;
  return KAUN_OK;
}

static void file_destroy(void *backend) {
  file_backend *b = backend;
  free(b->root);
  free(b->name);
  free(b);
}

static bool inside(const char *root, const char *path) {
  size_t n = strlen(root);
  return strncmp(root, path, n) == 0 && (path[n] == '/' || path[n] == '\0' || n == 1);
}

/* The local path for `path`; with a root, checked to stay inside it.
 * `must_exist`: check the file itself (else its directory) for symlinks. */
static int resolve(const file_backend *b, const char *path, bool must_exist, char **out,
                   kaun_error *err) {
  *out = NULL;
  if (!b->root) {
    if (!*path) return kaun__error_set(err, KAUN_EURI, "an empty path names no file");
    return (*out = strdup(path)) ? KAUN_OK : kaun__error_nomem(err, "resolving a path");
  }
  const char *rel = path;
  while (*rel == '/') rel++;
  for (const char *p = rel; *p;) { /* no ".." component */
    const char *slash = strchr(p, '/');
    size_t n = slash ? (size_t)(slash - p) : strlen(p);
    if (n == 2 && p[0] == '.' && p[1] == '.')
      return kaun__error_set(err, KAUN_EACCESS, "%s://%s: '..' would leave the backend's root %s",
                             b->name, path, b->root);
    if (!slash) break;
    p = slash + 1;
  }
  size_t len = strlen(b->root) + strlen(rel) + 2;
  char *full = malloc(len);
  if (!full) return kaun__error_nomem(err, "resolving a path");
  snprintf(full, len, "%s%s%s", b->root, *rel ? "/" : "", rel);
  /* symlinks: the real location must still be inside the root */
  char *probe = strdup(full);
  if (!probe) {
    free(full);
    return kaun__error_nomem(err, "resolving a path");
  }
  char *real = realpath(probe, NULL);
  if (!real && !must_exist) {
    char *slash = strrchr(probe, '/');
    if (slash && slash != probe) *slash = '\0';
    real = realpath(probe, NULL);
  }
  free(probe);
  if (real && !inside(b->root, real)) {
    free(real);
    free(full);
    return kaun__error_set(err, KAUN_EACCESS,
                           "%s://%s: a symbolic link leads outside the backend's root %s", b->name,
                           path, b->root);
  }
  free(real);
  *out = full;
  return KAUN_OK;
}

static int file_open(void *backend, const char *path, kaun_object *inner, void **out,
                     kaun_error *err) {
  (void)inner;
  file_backend *b = backend;
  char *full;
  int rc = resolve(b, path, true, &full, err);
  if (rc) return rc;
  int fd = open(full, O_RDONLY | O_CLOEXEC);
  struct stat sb;
  if (fd < 0 || fstat(fd, &sb) != 0) {
    int e = errno;
    if (fd >= 0) close(fd);
    rc = kaun__error_sys(err, e == ENOENT ? KAUN_ENOENT : KAUN_EIO, e, "cannot open '%s'", full);
    free(full);
    return rc;
  }
  if (S_ISDIR(sb.st_mode)) {
    close(fd);
    rc = kaun__error_set(err, KAUN_EISDIR, "'%s' is a directory", full);
    free(full);
    return rc;
  }
  if (!S_ISREG(sb.st_mode)) {
    close(fd);
    rc = kaun__error_set(err, KAUN_EINVAL, "'%s' is not a regular file", full);
    free(full);
    return rc;
  }
  file_object *o = calloc(1, sizeof *o);
  if (!o) {
    close(fd);
    free(full);
    return kaun__error_nomem(err, "opening a file");
  }
  o->fd = fd;
  o->path = full;
  o->size = (uint64_t)sb.st_size;
  o->sb = sb;
  *out = o;
  return KAUN_OK;
}

static void file_close(void *object) {
  file_object *o = object;
  close(o->fd);
  free(o->path);
  free(o);
}

static int file_stat(void *object, kaun_stat *out, kaun_error *err) {
  file_object *o = object;
  (void)err;
  out->size = o->size;
  out->mtime = (int64_t)o->sb.st_mtime;
  /* inode, size and modification time: changes whenever the content can */
  snprintf(out->etag, sizeof out->etag, "%llx-%llx-%llx.%09ld", (unsigned long long)o->sb.st_ino,
           (unsigned long long)o->size, (unsigned long long)o->sb.st_mtim.tv_sec,
           (long)o->sb.st_mtim.tv_nsec);
  char *real = realpath(o->path, NULL);
  snprintf(out->local_path, sizeof out->local_path, "%s", real ? real : o->path);
  free(real);
  return KAUN_OK;
}

static int file_read(void *object, uint64_t offset, void *dst, size_t len, kaun_error *err) {
  file_object *o = object;
  if (offset > o->size || len > o->size - offset)
    return kaun__error_set(err, KAUN_EIO, "'%s' has %llu bytes; cannot read %zu at offset %llu",
                           o->path, (unsigned long long)o->size, len, (unsigned long long)offset);
  if (kaun__pread_full(o->fd, dst, len, offset) != 0)
    return kaun__error_sys(err, KAUN_EIO, errno, "reading %zu bytes at offset %llu of '%s' failed",
                           len, (unsigned long long)offset, o->path);
  return KAUN_OK;
}

static int file_map(void *object, const void **data, size_t *size, void **cookie, kaun_error *err) {
  file_object *o = object;
  file_mapping *m = calloc(1, sizeof *m);
  if (!m) return kaun__error_nomem(err, "mapping a file");
  m->size = (size_t)o->size;
  if (m->size) {
    m->data = mmap(NULL, m->size, PROT_READ, MAP_PRIVATE, o->fd, 0);
    if (m->data == MAP_FAILED) {
      int e = errno;
      free(m);
      return kaun__error_sys(err, KAUN_EIO, e, "cannot map '%s'", o->path);
    }
  }
  *data = m->data;
  *size = m->size;
  *cookie = m;
  return KAUN_OK;
}

static void file_unmap(void *backend, void *cookie) {
  (void)backend;
  file_mapping *m = cookie;
  if (m->size) munmap(m->data, m->size);
  free(m);
}

static int file_list(void *backend, const char *prefix, kaun_list_fn fn, void *context,
                     kaun_error *err) {
  file_backend *b = backend;
  char *full;
  int rc = resolve(b, *prefix || b->root ? prefix : ".", true, &full, err);
  if (rc) return rc;
  DIR *d = opendir(full);
  if (!d) {
    int e = errno;
    rc = kaun__error_sys(err, e == ENOENT ? KAUN_ENOENT : KAUN_EIO, e, "cannot list '%s'", full);
    free(full);
    return rc;
  }
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/%s", full, e->d_name);
    struct stat sb;
    if (stat(p, &sb) != 0 || !S_ISREG(sb.st_mode)) continue;
    if (fn(e->d_name, (uint64_t)sb.st_size, context)) break;
  }
  closedir(d);
  free(full);
  return KAUN_OK;
}

/* Creates the missing directories above `full` (inside a root only). */
static int make_parents(const file_backend *b, char *full, kaun_error *err) {
  for (char *p = full + strlen(b->root) + 1; (p = strchr(p, '/')); p++) {
    *p = '\0';
    int r = mkdir(full, 0777);
    int e = errno;
    *p = '/';
    if (r != 0 && e != EEXIST)
      return kaun__error_sys(err, e == ENOENT ? KAUN_ENOENT : KAUN_EIO, e,
                             "cannot create the directories of '%s'", full);
  }
  return KAUN_OK;
}

/* ---- put: from any source, or in the kernel from a local file ------------------------- */

/* kaun_storage_copy from a local file into the temporary file of a put. */
typedef struct local_copy {
  int in;
  const char *in_path;
  struct stat sb; /* the source as it was opened */
  uint64_t size;
  kaun_io *io;     /* may be NULL */
  const char *uri; /* what progress is reported under */
} local_copy;

/* copy_file_range calls: small enough for timely progress and
 * cancellation, large enough that the calls cost nothing. */
#define KERNEL_CHUNK ((size_t)64 << 20)
/* read/write, where the kernel cannot copy between the two files */
#define BUFFER_CHUNK ((size_t)8 << 20)

/* Opens the local file behind `obj` when it is the very file the object
 * has open: the object's stat names a local path, and the file there has
 * the same etag (inode, size, modification time) and `size` bytes.
 * Fills `lc` (the path points into `st`) and returns the descriptor, or
 * returns -1: then the copy reads through the object. */
static int open_local_source(kaun_object *obj, uint64_t size, local_copy *lc, kaun_stat *st) {
  kaun_error ignored = KAUN_ERROR_INIT;
  memset(st, 0, sizeof *st);
  st->struct_size = sizeof *st;
  if (kaun_object_stat(obj, st, &ignored) != KAUN_OK || !st->local_path[0] || st->size != size)
    return -1;
  int fd = open(st->local_path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  file_object probe = {.fd = fd, .path = st->local_path, .size = size};
  kaun_stat mine = {.struct_size = sizeof mine};
  if (fstat(fd, &probe.sb) != 0 || !S_ISREG(probe.sb.st_mode) ||
      (uint64_t)probe.sb.st_size != size || file_stat(&probe, &mine, &ignored) != KAUN_OK ||
      strcmp(mine.etag, st->etag) != 0) {
    close(fd);
    return -1;
  }
  lc->in = fd;
  lc->in_path = st->local_path;
  lc->sb = probe.sb;
  lc->size = size;
  return fd;
}

static int copy_progress(const local_copy *lc, uint64_t bytes, kaun_error *err) {
  if (kaun_io_add(lc->io, lc->uri, lc->size, bytes) != KAUN_OK)
    return kaun__error_set(err, KAUN_ECANCELED, "%s: canceled", lc->uri);
  return KAUN_OK;
}

#ifdef FICLONE
/* A reflink may not check RLIMIT_FSIZE; copy_file_range and write do, and
 * a put must fail the same way whichever path it takes. */
static bool within_file_size_limit(uint64_t size) {
  struct rlimit rl;
  return getrlimit(RLIMIT_FSIZE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY ||
         size <= (uint64_t)rl.rlim_cur;
}
#endif

/* Writes the temporary file: a reflink where the file system shares
 * extents, else copy_file_range, else read and write. */
static int local_copy_write(int out, const char *tmp_path, void *context, kaun_error *err) {
  local_copy *lc = context;
  uint64_t off = 0;
  int rc = KAUN_OK;
#ifdef FICLONE
  if (lc->size && within_file_size_limit(lc->size) && ioctl(out, FICLONE, lc->in) == 0) {
    struct stat sb;
    if (fstat(out, &sb) == 0 && (uint64_t)sb.st_size == lc->size) {
      off = lc->size;
      rc = copy_progress(lc, lc->size, err);
    } else if (ftruncate(out, 0) != 0) { /* the source changed size: copy what was asked */
      return kaun__error_sys(err, KAUN_EIO, errno, "writing '%s' failed", tmp_path);
    }
  }
#endif
  bool in_kernel = true;
  char *buf = NULL;
  while (!rc && off < lc->size) {
    uint64_t left = lc->size - off;
    ssize_t n;
    if (in_kernel) {
      loff_t in_off = (loff_t)off, out_off = (loff_t)off;
      n = copy_file_range(lc->in, &in_off, out, &out_off,
                          left < KERNEL_CHUNK ? (size_t)left : KERNEL_CHUNK, 0);
      if ((n < 0 &&
           (errno == EXDEV || errno == ENOSYS || errno == EINVAL || errno == EOPNOTSUPP)) ||
          n == 0) { /* not between these files (0: some file systems' way of saying so) */
        in_kernel = false;
        if (lseek(out, (off_t)off, SEEK_SET) < 0) {
          rc = kaun__error_sys(err, KAUN_EIO, errno, "writing '%s' failed", tmp_path);
          break;
        }
        continue;
      }
    } else {
      if (!buf && !(buf = malloc(BUFFER_CHUNK))) {
        rc = kaun__error_nomem(err, "copying a file");
        break;
      }
      n = pread(lc->in, buf, left < BUFFER_CHUNK ? (size_t)left : BUFFER_CHUNK, (off_t)off);
      if (n > 0 && kaun__write_full(out, buf, (size_t)n) != 0) {
        rc = kaun__error_sys(err, KAUN_EIO, errno, "writing '%s' failed", tmp_path);
        break;
      }
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0)
      rc = kaun__error_sys(err, KAUN_EIO, errno, "copying '%s' to '%s' failed", lc->in_path,
                           tmp_path);
    else if (n == 0)
      rc = kaun__error_set(err, KAUN_ECHANGED, "'%s' became shorter while it was being copied",
                           lc->in_path);
    else {
      off += (uint64_t)n;
      rc = copy_progress(lc, (uint64_t)n, err);
    }
  }
  free(buf);
  struct stat now;
  if (!rc && (fstat(lc->in, &now) != 0 || now.st_size != lc->sb.st_size ||
              now.st_mtim.tv_sec != lc->sb.st_mtim.tv_sec ||
              now.st_mtim.tv_nsec != lc->sb.st_mtim.tv_nsec))
    rc = kaun__error_set(err, KAUN_ECHANGED, "'%s' changed while it was being copied", lc->in_path);
  return rc;
}

static int file_put(void *backend, const char *path, const kaun_put_source *src, kaun_error *err) {
  file_backend *b = backend;
  char *full;
  int rc = resolve(b, path, false, &full, err);
  if (rc) return rc;
  /* an instance with a root behaves as an object store: keys need no
   * folders made first; plain paths keep file semantics */
  if (b->root && (rc = make_parents(b, full, err))) {
    free(full);
    return rc;
  }
  /* kaun_storage_copy from a local file: the kernel copies, the bytes
   * never pass through this process; the put stays atomic */
  kaun_object *from;
  local_copy lc = {.in = -1};
  kaun_stat st;
  if (kaun__copy_source(src, &from, &lc.io, &lc.uri) &&
      open_local_source(from, src->size, &lc, &st) >= 0) {
    rc = kaun__atomic_write(full, local_copy_write, &lc, err);
    close(lc.in);
  } else {
    rc = kaun_file_put_atomic(full, src, err);
  }
  free(full);
  return rc;
}

static int file_remove(void *backend, const char *path, kaun_error *err) {
  char *full;
  int rc = resolve(backend, path, true, &full, err);
  if (rc) return rc;
  if (unlink(full) != 0) {
    int e = errno;
    rc = kaun__error_sys(err, e == ENOENT ? KAUN_ENOENT : KAUN_EIO, e, "cannot remove '%s'", full);
  }
  free(full);
  return rc;
}

const kaun_plugin kaun__file_plugin = {
    .abi_major = KAUN_PLUGIN_ABI_MAJOR,
    .abi_minor = KAUN_PLUGIN_ABI_MINOR,
    .struct_size = sizeof(kaun_plugin),
    .name = "file",
    .version = KAUN_VERSION_STRING,
    .description = "SafeTensors local files",
    .options = file_options,
    .capabilities = KAUN_CAP_READ | KAUN_CAP_MAP | KAUN_CAP_LIST | KAUN_CAP_PUT | KAUN_CAP_REMOVE,
    .create = file_create,
    .destroy = file_destroy,
    .open = file_open,
    .close = file_close,
    .stat = file_stat,
    .read = file_read,
    .map = file_map,
    .unmap = file_unmap,
    .list = file_list,
    .put = file_put,
    .remove = file_remove,
};
