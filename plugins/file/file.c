/* "SafeTensors local files": the file backend.
 *
 * file:///abs/path, plain paths, and named instances with a `root`
 * directory (models:///bert/model.safetensors = ROOT/bert/...).  An
 * instance with a root holds a descriptor of the root open and resolves
 * every path from it, component by component, so that no path — through
 * "..", a symbolic link, or a link swapped in while it is being resolved —
 * reaches outside the root: openat2(RESOLVE_BENEATH) where the kernel has
 * it, else a walk with openat(O_NOFOLLOW) that reads each symbolic link
 * itself (docs/config.md, "Confinement"; docs/design-notes.md).
 * Objects are mapped (zero copy) and read with pread; puts are atomic.
 *
 * This backend is compiled into libkaun and registered through the same
 * descriptor checks as any dlopen'd plugin, so plain paths work without a
 * plugin directory. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#ifdef __linux__
#include <linux/fs.h> /* FICLONE */
#if defined(__has_include)
#if __has_include(<linux/openat2.h>)
#include <linux/openat2.h> /* struct open_how, RESOLVE_* */
#endif
#endif
#endif
#if defined(SYS_openat2) && defined(RESOLVE_BENEATH) && defined(RESOLVE_NO_MAGICLINKS)
#define HAVE_OPENAT2 1
#endif

#include "../../core/storage_internal.h"

typedef struct file_backend {
  char *name;
  char *root;       /* realpath of the root, or NULL */
  int root_fd;      /* the root, held open (O_PATH): every path resolves from it; -1 */
  bool use_openat2; /* false: always walk (KAUN_TEST_NO_OPENAT2, for the tests) */
} file_backend;

typedef struct file_object {
  int fd;
  char *path;    /* for messages: ROOT/PATH, or the plain path */
  bool confined; /* opened beneath a root: local_path is what fd has open */
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
  b->root_fd = -1;
  const char *root = kaun_options_get(opts, "root");
  if (root && *root) {
    b->root = realpath(root, NULL);
    if (!b->root || (b->root_fd = open(b->root, O_PATH | O_DIRECTORY | O_CLOEXEC)) < 0) {
      int e = errno;
      free(b->root);
      free(b->name);
      free(b);
      return kaun__error_sys(err, KAUN_ECONFIG, e,
                             "the root '%s' of backend '%s' is not a directory", root, instance);
    }
    const char *no = getenv("KAUN_TEST_NO_OPENAT2");
    b->use_openat2 = !(no && *no && strcmp(no, "0") != 0);
  }
  *out = b;
  return KAUN_OK;
}

static void file_destroy(void *backend) {
  file_backend *b = backend;
  if (b->root_fd >= 0) close(b->root_fd);
  free(b->root);
  free(b->name);
  free(b);
}

static int sys_code(int e) { return e == ENOENT ? KAUN_ENOENT : KAUN_EIO; }

/* The instance path `path` relative to the root (`*rel`, pointing into
 * `path`) and the local path that names it in messages (`*full`,
 * malloc'd: ROOT/REL, or `path` itself without a root).  A ".."
 * component is refused outright. */
static int locate(const file_backend *b, const char *path, const char **rel, char **full,
                  kaun_error *err) {
  *full = NULL;
  *rel = path;
  if (!b->root) {
    if (!*path) return kaun__error_set(err, KAUN_EURI, "an empty path names no file");
    return (*full = strdup(path)) ? KAUN_OK : kaun__error_nomem(err, "resolving a path");
  }
  const char *r = path;
  while (*r == '/') r++;
  for (const char *p = r; *p;) { /* no ".." component */
    const char *slash = strchr(p, '/');
    size_t n = slash ? (size_t)(slash - p) : strlen(p);
    if (n == 2 && p[0] == '.' && p[1] == '.')
      return kaun__error_set(err, KAUN_EACCESS, "%s://%s: '..' would leave the backend's root %s",
                             b->name, path, b->root);
    if (!slash) break;
    p = slash + 1;
  }
  size_t len = strlen(b->root) + strlen(r) + 2;
  if (!(*full = malloc(len))) return kaun__error_nomem(err, "resolving a path");
  snprintf(*full, len, "%s%s%s", b->root, *r && strcmp(b->root, "/") != 0 ? "/" : "", r);
  *rel = r;
  return KAUN_OK;
}

/* ---- confinement: every path of a rooted instance resolves from the root's descriptor --------
 *
 * The kernel's openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS) when it
 * has it: one call, and the kernel refuses any step out of the root,
 * races included.  It also refuses absolute links, even to a place inside
 * the root, and says only EXDEV: so whenever it fails the walk below
 * decides, with its own message.  The walk opens one component at a time
 * relative to the folder opened before it, with O_NOFOLLOW: what it opens
 * is what it checks.  A symbolic link is opened itself (O_PATH), and the
 * link it holds is read from that descriptor (readlinkat(fd, "")), never
 * by name again; its target is spliced in front of the rest of the path:
 * a relative one continues from the link's folder, ".." pops a folder the
 * walk holds (never the kernel's ".." of a folder that may have moved), a
 * ".." above the root or an absolute target that does not name the root's
 * real path is refused. */

#define MAX_LINKS 40  /* symbolic links followed in one path: the kernel's MAXSYMLINKS */
#define MAX_RACES 100 /* retries when a component changes while it is being opened */

#ifdef HAVE_OPENAT2
static atomic_bool openat2_missing; /* the kernel answered ENOSYS once */
#endif

typedef struct walk {
  const file_backend *b;
  int *dirs; /* descriptors of the folders below the root, outermost first */
  size_t n, cap;
} walk;

static int walk_top(const walk *w) { return w->n ? w->dirs[w->n - 1] : w->b->root_fd; }

static void walk_clear(walk *w) {
  while (w->n) close(w->dirs[--w->n]);
}

static bool walk_push(walk *w, int fd) {
  if (w->n == w->cap) {
    size_t cap = w->cap ? 2 * w->cap : 16;
    int *d = realloc(w->dirs, cap * sizeof *d);
    if (!d) return false;
    w->dirs = d;
    w->cap = cap;
  }
  w->dirs[w->n++] = fd;
  return true;
}

static int escape_error(const file_backend *b, const char *path, const char *link,
                        const char *target, kaun_error *err) {
  return kaun__error_set(err, KAUN_EACCESS,
                         "%s://%s: a symbolic link leads outside the backend's root %s ('%s' -> "
                         "'%s'); kaun does not follow it",
                         b->name, path, b->root, link, target);
}

/* Whether the absolute `target` is the root or inside it; `*rest` is then
 * what follows the root in it. */
static bool names_root(const char *root, const char *target, const char **rest) {
  size_t n = strlen(root);
  if (n == 1) { /* the root is "/" */
    *rest = target;
    return true;
  }
  if (strncmp(root, target, n) != 0 || (target[n] != '/' && target[n] != '\0')) return false;
  *rest = target + n;
  return true;
}

/* Resolves `rel` beneath the root without leaving it.  `want_file`: opens
 * the last component for reading (O_RDONLY | O_NONBLOCK: a FIFO cannot
 * block; the caller checks what it got); else the last component must be
 * a folder, returned as an O_PATH descriptor, and with `create` missing
 * folders are made (mkdirat, 0777 less the umask).  `path` (the instance
 * path) and `full` name the object in messages; `what` says what failed
 * ("open", "list"...). */
static int walk_path(const file_backend *b, const char *path, const char *full, const char *rel,
                     bool want_file, bool create, const char *what, int *out, kaun_error *err) {
  walk w = {.b = b};
  char *p = strdup(rel);
  if (!p) return kaun__error_nomem(err, "resolving a path");
  char comp[NAME_MAX + 1], link[NAME_MAX + 1] = "", target[PATH_MAX] = "";
  size_t pos = 0;
  unsigned links = 0, races = 0;
  int rc = KAUN_OK, fd = -1;
  for (;;) {
    while (p[pos] == '/') pos++;
    if (!p[pos]) { /* the path ends at the folder the walk is in */
      if (want_file)
        fd = openat(walk_top(&w), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      else if (w.n)
        fd = w.dirs[--w.n];
      else
        fd = fcntl(b->root_fd, F_DUPFD_CLOEXEC, 0);
      if (fd < 0) rc = kaun__error_sys(err, KAUN_EIO, errno, "cannot %s '%s'", what, full);
      break;
    }
    size_t end = pos;
    while (p[end] && p[end] != '/') end++;
    size_t next = end;
    while (p[next] == '/') next++;
    bool last = !p[next];
    if (end - pos > NAME_MAX) {
      rc = kaun__error_sys(err, KAUN_EIO, ENAMETOOLONG, "cannot %s '%s'", what, full);
      break;
    }
    memcpy(comp, p + pos, end - pos);
    comp[end - pos] = '\0';
    if (strcmp(comp, ".") == 0) {
      pos = next;
      continue;
    }
    if (strcmp(comp, "..") == 0) { /* only from a link: the user's path has none */
      if (!w.n) {
        rc = escape_error(b, path, link, target, err);
        break;
      }
      close(w.dirs[--w.n]);
      pos = next;
      continue;
    }
    int top = walk_top(&w);
    if (last && want_file) {
      fd = openat(top, comp, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
      if (fd >= 0) break;
      if (errno != ELOOP) { /* ELOOP: a symbolic link, read below */
        rc = kaun__error_sys(err, sys_code(errno), errno, "cannot %s '%s'", what, full);
        break;
      }
    }
    int cur = openat(top, comp, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (cur < 0) {
      int e = errno;
      if (e == ENOENT && create && !want_file) {
        if (mkdirat(top, comp, 0777) != 0 && errno != EEXIST) {
          e = errno;
          rc = kaun__error_sys(err, sys_code(e), e, "cannot create the folders of '%s'", full);
          break;
        }
        if (races++ < MAX_RACES) continue; /* open what is there now */
      } else if (e == ENOENT && last && want_file && races++ < MAX_RACES) {
        continue; /* the link went away: open the name again */
      }
      rc = kaun__error_sys(err, sys_code(e), e, "cannot %s '%s'", what, full);
      break;
    }
    struct stat sb;
    if (fstat(cur, &sb) != 0) {
      rc = kaun__error_sys(err, KAUN_EIO, errno, "cannot %s '%s'", what, full);
      close(cur);
      break;
    }
    if (S_ISDIR(sb.st_mode) && !(last && want_file)) {
      if (!walk_push(&w, cur)) {
        close(cur);
        rc = kaun__error_nomem(err, "resolving a path");
        break;
      }
      pos = next;
      continue;
    }
    if (!S_ISLNK(sb.st_mode)) {
      close(cur);
      if (last && want_file && races++ < MAX_RACES) continue; /* a link replaced: open again */
      rc = kaun__error_sys(err, KAUN_EIO, ENOTDIR, "cannot %s '%s'", what, full);
      break;
    }
    /* a symbolic link: the one this descriptor holds, not whatever the name holds now */
    ssize_t tn = readlinkat(cur, "", target, sizeof target);
    int e = errno;
    close(cur);
    if (tn < 0 || (size_t)tn >= sizeof target) {
      rc = kaun__error_sys(err, KAUN_EIO, tn < 0 ? e : ENAMETOOLONG, "cannot %s '%s'", what, full);
      break;
    }
    target[tn] = '\0';
    snprintf(link, sizeof link, "%s", comp);
    if (++links > MAX_LINKS) {
      rc = kaun__error_sys(err, KAUN_EIO, ELOOP, "cannot %s '%s'", what, full);
      break;
    }
    const char *t = target;
    if (target[0] == '/') {
      if (!names_root(b->root, target, &t)) {
        rc = escape_error(b, path, link, target, err);
        break;
      }
      walk_clear(&w); /* continue from the root */
    }
    size_t tl = strlen(t), rl = strlen(p + next);
    char *np = malloc(tl + rl + 2);
    if (!np) {
      rc = kaun__error_nomem(err, "resolving a path");
      break;
    }
    memcpy(np, t, tl);
    np[tl] = '/';
    memcpy(np + tl + 1, p + next, rl + 1);
    free(p);
    p = np;
    pos = 0;
  }
  walk_clear(&w);
  free(w.dirs);
  free(p);
  if (rc) {
    if (fd >= 0) close(fd);
    return rc;
  }
  *out = fd;
  return KAUN_OK;
}

/* As walk_path: the kernel's openat2 first, the walk when it fails. */
static int confined_open(const file_backend *b, const char *path, const char *full, const char *rel,
                         bool want_file, bool create, const char *what, int *out, kaun_error *err) {
#ifdef HAVE_OPENAT2
  if (b->use_openat2 && !atomic_load_explicit(&openat2_missing, memory_order_relaxed)) {
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = want_file ? (O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)
                          : (O_PATH | O_DIRECTORY | O_CLOEXEC);
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
    long fd = syscall(SYS_openat2, b->root_fd, *rel ? rel : ".", &how, sizeof how);
    if (fd >= 0) {
      *out = (int)fd;
      return KAUN_OK;
    }
    if (errno == ENOSYS) atomic_store_explicit(&openat2_missing, true, memory_order_relaxed);
    /* anything else (a folder to create, a link refused: absolute or out
     * of the root, EAGAIN after a rename, a missing file) the walk decides */
  }
#endif
  return walk_path(b, path, full, rel, want_file, create, what, out, err);
}

/* Splits `rel` into its folder (malloc'd, "" for the root) and its last
 * component (`*name`, pointing into `rel`; "" when `rel` ends with '/'). */
static char *split_parent(const char *rel, const char **name) {
  const char *slash = strrchr(rel, '/');
  *name = slash ? slash + 1 : rel;
  size_t n = slash ? (size_t)(slash - rel) : 0;
  char *dir = malloc(n + 1);
  if (dir) {
    memcpy(dir, rel, n);
    dir[n] = '\0';
  }
  return dir;
}

/* The folder of `rel` beneath the root (O_PATH, made when `create`) and
 * the name in it; a name that is no file name is KAUN_EISDIR. */
static int confined_parent(const file_backend *b, const char *path, const char *full,
                           const char *rel, bool create, const char *what, int *dir_fd,
                           const char **name, kaun_error *err) {
  char *dir = split_parent(rel, name);
  if (!dir) return kaun__error_nomem(err, "resolving a path");
  int rc;
  if (!**name || strcmp(*name, ".") == 0)
    rc = kaun__error_set(err, KAUN_EISDIR, "'%s' is a directory", full);
  else
    rc = confined_open(b, path, full, dir, false, create, what, dir_fd, err);
  free(dir);
  return rc;
}

/* ---- objects ----------------------------------------------------------------------------- */

static int file_open(void *backend, const char *path, kaun_object *inner, void **out,
                     kaun_error *err) {
  (void)inner;
  file_backend *b = backend;
  char *full;
  const char *rel;
  int rc = locate(b, path, &rel, &full, err);
  if (rc) return rc;
  int fd = -1;
  if (b->root) {
    rc = confined_open(b, path, full, rel, true, false, "open", &fd, err);
  } else if ((fd = open(full, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)) < 0) {
    int e = errno;
    rc = kaun__error_sys(err, sys_code(e), e, "cannot open '%s'", full);
  }
  struct stat sb;
  if (!rc && fstat(fd, &sb) != 0)
    rc = kaun__error_sys(err, KAUN_EIO, errno, "cannot open '%s'", full);
  else if (!rc && S_ISDIR(sb.st_mode))
    rc = kaun__error_set(err, KAUN_EISDIR, "'%s' is a directory", full);
  else if (!rc && !S_ISREG(sb.st_mode))
    rc = kaun__error_set(err, KAUN_EINVAL, "'%s' is not a regular file", full);
  int fl;
  if (!rc && (fl = fcntl(fd, F_GETFL)) >= 0) (void)fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
  file_object *o = NULL;
  if (!rc && !(o = calloc(1, sizeof *o))) rc = kaun__error_nomem(err, "opening a file");
  if (rc) {
    if (fd >= 0) close(fd);
    free(full);
    return rc;
  }
  o->fd = fd;
  o->path = full;
  o->confined = b->root != NULL;
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

/* The path of the file `fd` has open, as the kernel names it; "" when it
 * has none any more (removed or replaced since) or /proc cannot say. */
static void open_file_path(int fd, char *out, size_t size) {
  char proc[64];
  snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(proc, out, size - 1);
  struct stat sb;
  if (n <= 0 || (size_t)n >= size - 1 || out[0] != '/' || fstat(fd, &sb) != 0 || sb.st_nlink == 0)
    n = 0;
  out[n] = '\0';
}

static int file_stat(void *object, kaun_stat *out, kaun_error *err) {
  file_object *o = object;
  (void)err;
  /* the file as it is now (a rewrite in place shows), the size it was opened with */
  struct stat now;
  const struct stat *sb = fstat(o->fd, &now) == 0 ? &now : &o->sb;
  out->size = o->size;
  out->mtime = (int64_t)sb->st_mtime;
  /* inode, size, modification and change times: changes whenever the
   * content can (the change time cannot be set back by a user) */
  snprintf(out->etag, sizeof out->etag, "%llx-%llx-%llx.%09ld-%llx.%09ld",
           (unsigned long long)sb->st_ino, (unsigned long long)sb->st_size,
           (unsigned long long)sb->st_mtim.tv_sec, (long)sb->st_mtim.tv_nsec,
           (unsigned long long)sb->st_ctim.tv_sec, (long)sb->st_ctim.tv_nsec);
  if (o->confined) {
    /* the file this object has open, not what its name leads to now:
     * resolving the name again could leave the root */
    open_file_path(o->fd, out->local_path, sizeof out->local_path);
    return KAUN_OK;
  }
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

/* The size of the entry `name` of the listed folder `dfd` (`rel`, beneath
 * the root) when it is a regular file: a symbolic link is followed as
 * an open would follow it, so one that leads out is not listed. */
static bool confined_entry_size(const file_backend *b, int dfd, const char *rel, const char *name,
                                uint64_t *size) {
  struct stat sb;
  if (fstatat(dfd, name, &sb, AT_SYMLINK_NOFOLLOW) != 0) return false;
  if (S_ISLNK(sb.st_mode)) {
    size_t n = strlen(rel) + strlen(name) + 2;
    char *p = malloc(n);
    if (!p) return false;
    snprintf(p, n, "%s%s%s", rel, *rel ? "/" : "", name);
    kaun_error ignored = KAUN_ERROR_INIT;
    int fd;
    bool ok = confined_open(b, p, p, p, true, false, "open", &fd, &ignored) == KAUN_OK;
    free(p);
    if (!ok) return false;
    ok = fstat(fd, &sb) == 0;
    close(fd);
    if (!ok) return false;
  }
  if (!S_ISREG(sb.st_mode)) return false;
  *size = (uint64_t)sb.st_size;
  return true;
}

static int file_list(void *backend, const char *prefix, kaun_list_fn fn, void *context,
                     kaun_error *err) {
  file_backend *b = backend;
  char *full;
  const char *rel;
  int rc = locate(b, *prefix || b->root ? prefix : ".", &rel, &full, err);
  if (rc) return rc;
  DIR *d = NULL;
  if (b->root) {
    int pfd, dfd = -1;
    rc = confined_open(b, prefix, full, rel, false, false, "list", &pfd, err);
    if (!rc) {
      dfd = openat(pfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      close(pfd);
    }
    if (!rc && (dfd < 0 || !(d = fdopendir(dfd)))) {
      int e = errno;
      if (dfd >= 0) close(dfd);
      rc = kaun__error_sys(err, sys_code(e), e, "cannot list '%s'", full);
    }
  } else if (!(d = opendir(full))) {
    int e = errno;
    rc = kaun__error_sys(err, sys_code(e), e, "cannot list '%s'", full);
  }
  if (rc) {
    free(full);
    return rc;
  }
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    uint64_t size;
    if (b->root) {
      if (!confined_entry_size(b, dirfd(d), rel, e->d_name, &size)) continue;
    } else {
      char p[PATH_MAX];
      snprintf(p, sizeof p, "%s/%s", full, e->d_name);
      struct stat sb;
      if (stat(p, &sb) != 0 || !S_ISREG(sb.st_mode)) continue;
      size = (uint64_t)sb.st_size;
    }
    if (fn(e->d_name, size, context)) break;
  }
  closedir(d);
  free(full);
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
  int fd = open(st->local_path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
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

/* A copy from a remote object (one whose backend reads many ranges at
 * once: kaun_object_hints) into a local file, the way loads read: as many
 * threads as the backend has requests in flight, each reading one chunk
 * (one ranged request) and writing it at its place.  Memory: a chunk per
 * thread, at most 64 MiB in all. */
#define REMOTE_STEP_MAX ((uint64_t)32 << 20)
#define REMOTE_WORKERS_MAX 8
#define REMOTE_MEMORY_MAX ((uint64_t)64 << 20)

typedef struct remote_copy {
  kaun_object *obj;
  kaun_io *io;
  uint64_t size, step;
  unsigned workers;
  int out;
  const char *tmp_path;
  pthread_mutex_t mu;
  uint64_t next; /* the next step to claim */
  int rc;
  kaun_error err;
} remote_copy;

static int pwrite_all(int fd, const char *buf, size_t n, uint64_t off) {
  while (n) {
    ssize_t w = pwrite(fd, buf, n, (off_t)off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    buf += w;
    n -= (size_t)w;
    off += (uint64_t)w;
  }
  return 0;
}

static void *remote_copy_worker(void *arg) {
  remote_copy *rc = arg;
  char *buf = malloc((size_t)rc->step);
  kaun_error e = KAUN_ERROR_INIT;
  int r = buf ? KAUN_OK : kaun__error_nomem(&e, "copying a remote object");
  for (;;) {
    pthread_mutex_lock(&rc->mu);
    if (r && !rc->rc) {
      rc->rc = r;
      rc->err = e;
    }
    uint64_t off = rc->next;
    bool done = rc->rc || off >= rc->size;
    if (!done) rc->next += rc->step;
    pthread_mutex_unlock(&rc->mu);
    if (done) break;
    size_t n = (size_t)(rc->size - off < rc->step ? rc->size - off : rc->step);
    r = kaun_object_read_io(rc->obj, off, buf, n, rc->io, &e);
    if (!r && pwrite_all(rc->out, buf, n, off) != 0)
      r = kaun__error_sys(&e, KAUN_EIO, errno, "writing '%s' failed", rc->tmp_path);
  }
  free(buf);
  return NULL;
}

static int remote_copy_write(int out, const char *tmp_path, void *context, kaun_error *err) {
  remote_copy *rc = context;
  rc->out = out;
  rc->tmp_path = tmp_path;
  pthread_t th[REMOTE_WORKERS_MAX];
  unsigned started = 0;
  for (; started < rc->workers; started++)
    if (pthread_create(&th[started], NULL, remote_copy_worker, rc) != 0) break;
  if (!started) remote_copy_worker(rc);
  for (unsigned i = 0; i < started; i++) pthread_join(th[i], NULL);
  if (rc->rc && err) *err = rc->err;
  return rc->rc;
}

/* Whether `src` copies a remote object that reads ranges in parallel;
 * fills `rc` for remote_copy_write. */
static bool remote_source(const kaun_put_source *src, remote_copy *rc) {
  kaun_object *from;
  const char *uri;
  kaun_io *io;
  if (!kaun__copy_source(src, &from, &io, &uri)) return false;
  uint64_t chunk = 0;
  unsigned inflight = 0;
  kaun_object_hints(from, &chunk, &inflight);
  if (inflight < 2 || chunk == 0 || src->size <= chunk) return false;
  memset(rc, 0, sizeof *rc);
  rc->obj = from;
  rc->io = io;
  rc->size = src->size;
  rc->step = chunk < REMOTE_STEP_MAX ? chunk : REMOTE_STEP_MAX;
  rc->workers = inflight < REMOTE_WORKERS_MAX ? inflight : REMOTE_WORKERS_MAX;
  while (rc->workers > 1 && rc->workers * rc->step > REMOTE_MEMORY_MAX) rc->workers--;
  return true;
}

static int file_put(void *backend, const char *path, const kaun_put_source *src, kaun_error *err) {
  file_backend *b = backend;
  char *full;
  const char *rel, *name = NULL;
  int rc = locate(b, path, &rel, &full, err);
  if (rc) return rc;
  /* an instance with a root behaves as an object store: keys need no
   * folders made first (made beneath the root, from its descriptor);
   * plain paths keep file semantics */
  int dir_fd = -1;
  if (b->root && (rc = confined_parent(b, path, full, rel, true, "save", &dir_fd, &name, err))) {
    free(full);
    return rc;
  }
  /* kaun_storage_copy from a local file: the kernel copies, the bytes
   * never pass through this process; the put stays atomic */
  kaun_object *from;
  local_copy lc = {.in = -1};
  remote_copy remote;
  kaun_stat st;
  if (kaun__copy_source(src, &from, &lc.io, &lc.uri) &&
      open_local_source(from, src->size, &lc, &st) >= 0) {
    rc = dir_fd >= 0 ? kaun__atomic_write_at(dir_fd, name, full, local_copy_write, &lc, err)
                     : kaun__atomic_write(full, local_copy_write, &lc, err);
    close(lc.in);
  } else if (remote_source(src, &remote)) {
    pthread_mutex_init(&remote.mu, NULL);
    rc = dir_fd >= 0 ? kaun__atomic_write_at(dir_fd, name, full, remote_copy_write, &remote, err)
                     : kaun__atomic_write(full, remote_copy_write, &remote, err);
    pthread_mutex_destroy(&remote.mu);
  } else {
    rc = dir_fd >= 0 ? kaun__atomic_put_at(dir_fd, name, full, src, err)
                     : kaun_file_put_atomic(full, src, err);
  }
  if (dir_fd >= 0) close(dir_fd);
  free(full);
  return rc;
}

static int file_remove(void *backend, const char *path, kaun_error *err) {
  file_backend *b = backend;
  char *full;
  const char *rel, *name;
  int rc = locate(b, path, &rel, &full, err);
  if (rc) return rc;
  int dir_fd = AT_FDCWD;
  if (b->root) { /* the entry itself goes, in the folder the walk found */
    rc = confined_parent(b, path, full, rel, false, "remove", &dir_fd, &name, err);
  } else {
    name = full;
  }
  if (!rc && unlinkat(dir_fd, name, 0) != 0) {
    int e = errno;
    rc = kaun__error_sys(err, sys_code(e), e, "cannot remove '%s'", full);
  }
  if (dir_fd >= 0) close(dir_fd);
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
