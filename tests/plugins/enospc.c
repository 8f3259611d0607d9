/* A full disk, for the tests (LD_PRELOAD; no privileges needed).
 *
 *   KAUN_ENOSPC_DIR=/abs/dir   only files under this folder are affected
 *   KAUN_ENOSPC_AFTER=N        the process may write N bytes there in all;
 *                              the write that crosses it is cut short, the
 *                              next fails with ENOSPC, as on a full disk
 *   KAUN_ENOSPC_FSYNC=1        fsync/fdatasync of those files fail with
 *                              ENOSPC (NFS and thin volumes report it there)
 *
 * Intercepts what kaun writes files with: write, pwrite, pwrite64, writev,
 * copy_file_range and the FICLONE ioctl (refused with
 * EOPNOTSUPP, as most file systems do, so that the copy falls back to
 * calls that count).  A file is "under the folder" when
 * /proc/self/fd/FD says so (an O_TMPFILE file reads "DIR/#INODE
 * (deleted)").  The byte count is the one piece of process state a full
 * disk needs; it is atomic, for threaded writers.  Test-only: never installed. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

static _Atomic uint64_t written;

/* Whether fd is a file under $KAUN_ENOSPC_DIR. */
static int affected(int fd) {
  const char *dir = getenv("KAUN_ENOSPC_DIR");
  if (!dir || !*dir || fd < 0) return 0;
  char proc[64], path[4096];
  strcpy(proc, "/proc/self/fd/");
  char digits[16];
  int n = 0;
  unsigned v = (unsigned)fd;
  do digits[n++] = (char)('0' + v % 10);
  while ((v /= 10) && n < 15);
  size_t at = strlen(proc);
  while (n) proc[at++] = digits[--n];
  proc[at] = '\0';
  ssize_t len = readlink(proc, path, sizeof path - 1);
  if (len <= 0) return 0;
  path[len] = '\0';
  size_t dl = strlen(dir);
  while (dl > 1 && dir[dl - 1] == '/') dl--;
  return strncmp(path, dir, dl) == 0 && path[dl] == '/';
}

/* How many of `want` bytes may still be written to fd: want when it is
 * not affected, else what is left of the budget; 0 sets errno = ENOSPC. */
static size_t allowance(int fd, size_t want) {
  if (!want || !affected(fd)) return want;
  const char *s = getenv("KAUN_ENOSPC_AFTER");
  uint64_t budget = s && *s ? strtoull(s, NULL, 10) : UINT64_MAX;
  uint64_t used = atomic_load(&written);
  for (;;) {
    uint64_t left = used >= budget ? 0 : budget - used;
    uint64_t take = want < left ? want : left;
    if (!take) {
      errno = ENOSPC;
      return 0;
    }
    if (atomic_compare_exchange_weak(&written, &used, used + take)) return (size_t)take;
  }
}

/* The C library's functions, found before main (or at the first call, when
 * another library's constructor writes before ours ran). */
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static ssize_t (*real_copy_file_range)(int, off_t *, int, off_t *, size_t, unsigned);
static int (*real_ioctl)(int, unsigned long, ...);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);

#define FIND(name) *(void **)&real_##name = dlsym(RTLD_NEXT, #name)

__attribute__((constructor)) static void find_real(void) {
  if (real_fdatasync) return;
  FIND(write);
  FIND(pwrite);
  FIND(pwrite64);
  FIND(writev);
  FIND(copy_file_range);
  FIND(ioctl);
  FIND(fsync);
  FIND(fdatasync);
}

ssize_t write(int fd, const void *buf, size_t count) {
  find_real();
  size_t n = allowance(fd, count);
  return count && !n ? -1 : real_write(fd, buf, n);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
  find_real();
  size_t n = allowance(fd, count);
  return count && !n ? -1 : real_pwrite(fd, buf, n, offset);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset) {
  find_real();
  size_t n = allowance(fd, count);
  return count && !n ? -1 : real_pwrite64(fd, buf, n, offset);
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt) {
  find_real();
  size_t total = 0;
  for (int i = 0; i < iovcnt; i++) total += iov[i].iov_len;
  size_t n = allowance(fd, total);
  if (total && !n) return -1;
  if (n == total) return real_writev(fd, iov, iovcnt);
  /* cut short: the first iovecs' worth (a short write, as a full disk gives) */
  size_t done = 0;
  for (int i = 0; i < iovcnt && done < n; i++) {
    size_t part = iov[i].iov_len < n - done ? iov[i].iov_len : n - done;
    ssize_t w = real_write(fd, iov[i].iov_base, part);
    if (w < 0) return done ? (ssize_t)done : -1;
    done += (size_t)w;
    if ((size_t)w < part) break;
  }
  return (ssize_t)done;
}

ssize_t copy_file_range(int in, off_t *in_off, int out, off_t *out_off, size_t len,
                        unsigned flags) {
  find_real();
  size_t n = allowance(out, len);
  return len && !n ? -1 : real_copy_file_range(in, in_off, out, out_off, n, flags);
}

int ioctl(int fd, unsigned long request, ...) {
  find_real();
  va_list ap;
  va_start(ap, request);
  void *arg = va_arg(ap, void *);
  va_end(ap);
  if ((request == FICLONE || request == FICLONERANGE) && affected(fd)) {
    errno = EOPNOTSUPP;
    return -1;
  }
  return real_ioctl(fd, request, arg);
}

static int fsync_fails(int fd) {
  const char *s = getenv("KAUN_ENOSPC_FSYNC");
  if (!s || strcmp(s, "1") != 0 || !affected(fd)) return 0;
  errno = ENOSPC;
  return 1;
}

int fsync(int fd) {
  find_real();
  return fsync_fails(fd) ? -1 : real_fsync(fd);
}

int fdatasync(int fd) {
  find_real();
  return fsync_fails(fd) ? -1 : real_fdatasync(fd);
}
