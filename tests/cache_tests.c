/* The download cache (<kaun/cache.h>): the root, folders, verified
 * atomic writes, locks between threads and processes, get-or-fill with
 * many processes, stale temporaries.  Public API only, through
 * libkaun.so. */
#include <CUnit/Basic.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <kaun.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

static char tmp_root[4096];

#define tmp(...) check_path(tmp_root, __VA_ARGS__)

static void write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  if (!f) {
    perror(path);
    exit(1);
  }
  fputs(text, f);
  fclose(f);
}

static bool exists(const char *path) {
  struct stat sb;
  return lstat(path, &sb) == 0;
}

/* The number of "*.incomplete" files in `folder`. */
static int count_temps(const char *folder) {
  DIR *d = opendir(folder);
  if (!d) return -1;
  int n = 0;
  struct dirent *de;
  while ((de = readdir(d))) {
    size_t len = strlen(de->d_name);
    if (len > 11 && strcmp(de->d_name + len - 11, ".incomplete") == 0) n++;
  }
  closedir(d);
  return n;
}

/* The whole file, malloc'd; *len gets its size.  NULL when absent. */
static char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  char *buf = NULL;
  size_t cap = 0, n = 0;
  for (;;) {
    if (n == cap) {
      cap = cap ? cap * 2 : 4096;
      char *grown = realloc(buf, cap);
      if (!grown) break;
      buf = grown;
    }
    size_t got = fread(buf + n, 1, cap - n, f);
    n += got;
    if (got == 0) break;
  }
  fclose(f);
  *len = n;
  return buf;
}

static bool file_is(const char *path, const void *data, size_t len) {
  size_t n = 0;
  char *got = slurp(path, &n);
  bool same = got && n == len && memcmp(got, data, len) == 0;
  free(got);
  return same;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

#define SHA256_ABC "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
#define GIT_HELLO "ce013625030ba8dba906f756967f9e9ca394464a"

/* ---- the root ------------------------------------------------------------------- */

static void set_env(const char *name, const char *value) {
  if (value)
    setenv(name, value, 1);
  else
    unsetenv(name);
}

static void test_root(void) {
  kaun_error err = KAUN_ERROR_INIT;
  char *saved[3];
  const char *names[3] = {"RAVEN_CACHE_ROOT", "XDG_CACHE_HOME", "HOME"};
  for (int i = 0; i < 3; i++) saved[i] = getenv(names[i]) ? strdup(getenv(names[i])) : NULL;
  char root[4096];

  set_env("RAVEN_CACHE_ROOT", "/r/root/");
  set_env("XDG_CACHE_HOME", "/x/cache");
  set_env("HOME", "/h/user");
  /* the config's cache_dir wins over everything */
  const char *cfg = tmp("cache-config.json");
  write_text(cfg, "{\n  \"cache_dir\": \"/from/config\"\n}\n");
  kaun_context *ctx = NULL;
  ASSERT_OK(kaun_context_new(cfg, &ctx, &err), err);
  ASSERT_OK(kaun_cache_root(ctx, root, sizeof root, &err), err);
  CU_ASSERT_STRING_EQUAL(root, "/from/config");
  kaun_context_free(ctx);
  /* a context without cache_dir falls through to the environment */
  const char *plain = tmp("plain-config.json");
  write_text(plain, "{}\n");
  ASSERT_OK(kaun_context_new(plain, &ctx, &err), err);
  ASSERT_OK(kaun_cache_root(ctx, root, sizeof root, &err), err);
  CU_ASSERT_STRING_EQUAL(root, "/r/root");
  kaun_context_free(ctx);

  ASSERT_OK(kaun_cache_root(NULL, root, sizeof root, &err), err);
  CU_ASSERT_STRING_EQUAL(root, "/r/root");
  set_env("RAVEN_CACHE_ROOT", ""); /* empty counts as unset */
  ASSERT_OK(kaun_cache_root(NULL, root, sizeof root, &err), err);
  CU_ASSERT_STRING_EQUAL(root, "/x/cache/raven");
  set_env("XDG_CACHE_HOME", "relative/cache"); /* the XDG spec ignores relative paths */
  ASSERT_OK(kaun_cache_root(NULL, root, sizeof root, &err), err);
  CU_ASSERT_STRING_EQUAL(root, "/h/user/.cache/raven");
  set_env("XDG_CACHE_HOME", NULL);
  set_env("HOME", "/h/other/");
  ASSERT_OK(kaun_cache_root(NULL, root, sizeof root, &err), err);
  CU_ASSERT_STRING_EQUAL(root, "/h/other/.cache/raven");
  set_env("HOME", NULL);
  ASSERT_FAILS(kaun_cache_root(NULL, root, sizeof root, &err), err, KAUN_ECONFIG,
               "RAVEN_CACHE_ROOT");
  set_env("RAVEN_CACHE_ROOT", "/a/rather/long/root");
  ASSERT_FAILS(kaun_cache_root(NULL, root, 8, &err), err, KAUN_EINVAL, "/a/rather/long/root");

  /* kaun_cache_dir: ROOT/relative, created */
  set_env("RAVEN_CACHE_ROOT", tmp("root"));
  ASSERT_OK(kaun_cache_dir(NULL, "kaun/s3", root, sizeof root, &err), err);
  CU_ASSERT_STRING_EQUAL(root, tmp("root/kaun/s3"));
  struct stat sb;
  CU_ASSERT(stat(root, &sb) == 0 && S_ISDIR(sb.st_mode));
  ASSERT_FAILS(kaun_cache_dir(NULL, "../escape", root, sizeof root, &err), err, KAUN_EINVAL,
               "../escape");
  ASSERT_FAILS(kaun_cache_dir(NULL, "/abs", root, sizeof root, &err), err, KAUN_EINVAL, "/abs");
  ASSERT_FAILS(kaun_cache_dir(NULL, "a//b", root, sizeof root, &err), err, KAUN_EINVAL, "a//b");
  ASSERT_FAILS(kaun_cache_dir(NULL, "a/", root, sizeof root, &err), err, KAUN_EINVAL, "a/");

  for (int i = 0; i < 3; i++) {
    set_env(names[i], saved[i]);
    free(saved[i]);
  }
}

static void test_mkdirs(void) {
  kaun_error err = KAUN_ERROR_INIT;
  ASSERT_OK(kaun_cache_mkdirs(tmp("mk/a/b/c/"), &err), err);
  struct stat sb;
  CU_ASSERT(stat(tmp("mk/a/b/c"), &sb) == 0 && S_ISDIR(sb.st_mode));
  ASSERT_OK(kaun_cache_mkdirs(tmp("mk/a/b/c"), &err), err); /* already there */
  write_text(tmp("mk/file"), "x");
  ASSERT_FAILS(kaun_cache_mkdirs(tmp("mk/file/sub"), &err), err, KAUN_EIO, tmp("mk/file"));
  CU_ASSERT(strstr(err.message, "not a folder") != NULL);
  ASSERT_FAILS(kaun_cache_mkdirs(tmp("mk/file"), &err), err, KAUN_EIO, tmp("mk/file"));
  ASSERT_FAILS(kaun_cache_mkdirs("", &err), err, KAUN_EINVAL, "empty");
}

/* ---- the writer ------------------------------------------------------------------- */

static void test_writer_sha256(void) {
  kaun_error err = KAUN_ERROR_INIT;
  const char *dir = tmp("w256");
  ASSERT_OK(kaun_cache_mkdirs(dir, &err), err);
  const char *final = tmp("w256/blob");
  kaun_cache_writer *w;
  ASSERT_OK(
      kaun_cache_writer_open(final, 3, KAUN_CACHE_HASH_SHA256, SHA256_ABC, NULL, NULL, &w, &err),
      err);
  const char *tp = kaun_cache_writer_temp_path(w);
  CU_ASSERT(strstr(tp, "/.blob.") != NULL && strstr(tp, ".incomplete") != NULL);
  CU_ASSERT(exists(tp));
  CU_ASSERT(!exists(final));
  ASSERT_OK(kaun_cache_writer_write(w, "a", 1, &err), err);
  ASSERT_OK(kaun_cache_writer_write(w, "bc", 2, &err), err);
  ASSERT_OK(kaun_cache_writer_commit(w, &err), err);
  CU_ASSERT(file_is(final, "abc", 3));
  CU_ASSERT_EQUAL(count_temps(dir), 0);
  struct stat sb;
  mode_t mask = umask(022);
  umask(mask);
  CU_ASSERT(stat(final, &sb) == 0 && (sb.st_mode & 0777) == (0644 & ~mask));

  /* unknown size, uppercase hex: still checked */
  char upper[65];
  for (int i = 0; i < 65; i++)
    upper[i] = (char)(SHA256_ABC[i] >= 'a' ? SHA256_ABC[i] - 32 : SHA256_ABC[i]);
  ASSERT_OK(kaun_cache_writer_open(tmp("w256/b2"), KAUN_CACHE_SIZE_UNKNOWN, KAUN_CACHE_HASH_SHA256,
                                   upper, NULL, NULL, &w, &err),
            err);
  ASSERT_OK(kaun_cache_writer_write(w, "abc", 3, &err), err);
  ASSERT_OK(kaun_cache_writer_commit(w, &err), err);
  CU_ASSERT(file_is(tmp("w256/b2"), "abc", 3));

  /* bad arguments */
  ASSERT_FAILS(
      kaun_cache_writer_open(final, 3, KAUN_CACHE_HASH_SHA256, "abc", NULL, NULL, &w, &err), err,
      KAUN_EINVAL, "64 hex digits");
  ASSERT_FAILS(
      kaun_cache_writer_open(final, 3, KAUN_CACHE_HASH_GIT_SHA1, SHA256_ABC, NULL, NULL, &w, &err),
      err, KAUN_EINVAL, "40 hex digits");
  ASSERT_FAILS(kaun_cache_writer_open(final, 3, (kaun_cache_hash)7, NULL, NULL, NULL, &w, &err),
               err, KAUN_EINVAL, "hash kind");
  ASSERT_FAILS(kaun_cache_writer_open(tmp("w256/nope/x"), 3, KAUN_CACHE_HASH_NONE, NULL, NULL, NULL,
                                      &w, &err),
               err, KAUN_ENOENT, tmp("w256/nope"));
  CU_ASSERT_EQUAL(count_temps(dir), 0);
}

static void test_writer_git_sha1(void) {
  kaun_error err = KAUN_ERROR_INIT;
  const char *dir = tmp("wgit");
  ASSERT_OK(kaun_cache_mkdirs(dir, &err), err);
  kaun_cache_writer *w;
  /* streamed: the size is known */
  ASSERT_OK(kaun_cache_writer_open(tmp("wgit/hello"), 6, KAUN_CACHE_HASH_GIT_SHA1, GIT_HELLO, NULL,
                                   NULL, &w, &err),
            err);
  ASSERT_OK(kaun_cache_writer_write(w, "hel", 3, &err), err);
  ASSERT_OK(kaun_cache_writer_write(w, "lo\n", 3, &err), err);
  ASSERT_OK(kaun_cache_writer_commit(w, &err), err);
  CU_ASSERT(file_is(tmp("wgit/hello"), "hello\n", 6));
  /* unknown size: hashed by reading the file back */
  ASSERT_OK(kaun_cache_writer_open(tmp("wgit/hello2"), KAUN_CACHE_SIZE_UNKNOWN,
                                   KAUN_CACHE_HASH_GIT_SHA1, GIT_HELLO, NULL, NULL, &w, &err),
            err);
  ASSERT_OK(kaun_cache_writer_write(w, "hello\n", 6, &err), err);
  ASSERT_OK(kaun_cache_writer_commit(w, &err), err);
  CU_ASSERT(file_is(tmp("wgit/hello2"), "hello\n", 6));
  /* the wrong content: both hashes named */
  ASSERT_OK(kaun_cache_writer_open(tmp("wgit/bad"), 6, KAUN_CACHE_HASH_GIT_SHA1, GIT_HELLO, NULL,
                                   NULL, &w, &err),
            err);
  ASSERT_OK(kaun_cache_writer_write(w, "hellO\n", 6, &err), err);
  ASSERT_FAILS(kaun_cache_writer_commit(w, &err), err, KAUN_ECHECKSUM, tmp("wgit/bad"));
  CU_ASSERT(strstr(err.message, GIT_HELLO) != NULL && strstr(err.message, "git SHA-1") != NULL);
  CU_ASSERT(!exists(tmp("wgit/bad")));
  CU_ASSERT_EQUAL(count_temps(dir), 0);
}

static void test_writer_failures(void) {
  kaun_error err = KAUN_ERROR_INIT;
  const char *dir = tmp("wfail");
  ASSERT_OK(kaun_cache_mkdirs(dir, &err), err);
  const char *final = tmp("wfail/entry");
  kaun_cache_writer *w;

  /* too short */
  ASSERT_OK(kaun_cache_writer_open(final, 10, KAUN_CACHE_HASH_NONE, NULL, NULL, NULL, &w, &err),
            err);
  ASSERT_OK(kaun_cache_writer_write(w, "abc", 3, &err), err);
  ASSERT_FAILS(kaun_cache_writer_commit(w, &err), err, KAUN_EIO, final);
  CU_ASSERT(strstr(err.message, "expected 10 bytes, got 3") != NULL);
  CU_ASSERT(!exists(final));
  CU_ASSERT_EQUAL(count_temps(dir), 0);

  /* too long: refused as it arrives */
  ASSERT_OK(kaun_cache_writer_open(final, 2, KAUN_CACHE_HASH_NONE, NULL, NULL, NULL, &w, &err),
            err);
  ASSERT_FAILS(kaun_cache_writer_write(w, "abc", 3, &err), err, KAUN_EIO, final);
  kaun_cache_writer_abort(w);
  CU_ASSERT(!exists(final));
  CU_ASSERT_EQUAL(count_temps(dir), 0);

  /* the wrong SHA-256 */
  ASSERT_OK(
      kaun_cache_writer_open(final, 3, KAUN_CACHE_HASH_SHA256, SHA256_ABC, NULL, NULL, &w, &err),
      err);
  ASSERT_OK(kaun_cache_writer_write(w, "abd", 3, &err), err);
  ASSERT_FAILS(kaun_cache_writer_commit(w, &err), err, KAUN_ECHECKSUM, final);
  CU_ASSERT(strstr(err.message, "expected " SHA256_ABC ", got ") != NULL);
  CU_ASSERT(!exists(final));
  CU_ASSERT_EQUAL(count_temps(dir), 0);

  /* abort */
  ASSERT_OK(
      kaun_cache_writer_open(final, 3, KAUN_CACHE_HASH_SHA256, SHA256_ABC, NULL, NULL, &w, &err),
      err);
  ASSERT_OK(kaun_cache_writer_write(w, "abc", 3, &err), err);
  CU_ASSERT_EQUAL(count_temps(dir), 1);
  kaun_cache_writer_abort(w);
  kaun_cache_writer_abort(NULL);
  CU_ASSERT(!exists(final));
  CU_ASSERT_EQUAL(count_temps(dir), 0);

  /* a failed commit leaves an existing entry as it was */
  write_text(final, "old");
  ASSERT_OK(
      kaun_cache_writer_open(final, 3, KAUN_CACHE_HASH_SHA256, SHA256_ABC, NULL, NULL, &w, &err),
      err);
  ASSERT_OK(kaun_cache_writer_write(w, "xyz", 3, &err), err);
  ASSERT_FAILS(kaun_cache_writer_commit(w, &err), err, KAUN_ECHECKSUM, final);
  CU_ASSERT(file_is(final, "old", 3));
  CU_ASSERT_EQUAL(count_temps(dir), 0);
}

typedef struct range_job {
  kaun_cache_writer *w;
  const char *data;
  uint64_t offset;
  size_t len;
  int rc;
} range_job;

static void *write_range(void *arg) {
  range_job *j = arg;
  kaun_error err = KAUN_ERROR_INIT;
  j->rc = kaun_cache_writer_pwrite(j->w, j->offset, j->data + j->offset, j->len, &err);
  return NULL;
}

/* Bytes the follower hashed and then overwritten (through the descriptor,
 * a slot still gathered under larger writes, a sequential write after
 * parallel ones) are never committed as the hash's: the commit reads the
 * file back and refuses it (from the attack review). */
static void test_writer_rewrites_after_follower(void) {
  kaun_error err = KAUN_ERROR_INIT;
  const char *dir = tmp("rewrites");
  ASSERT_OK(kaun_cache_mkdirs(dir, &err), err);
  enum { N = 4 << 20, MB = 1 << 20 };
  unsigned char *good = malloc(N), bad[16384];
  CU_ASSERT_FATAL(good != NULL);
  for (size_t i = 0; i < N; i++) good[i] = (unsigned char)(i * 131 + (i >> 12));
  memset(bad, 0xEE, sizeof bad);
  char hex[KAUN_SHA256_HEX_SIZE];
  ASSERT_OK(kaun_sha256_hex(good, N, hex, &err), err);
  for (int k = 0; k < 3; k++) {
    const char *name = tmp("rewrites/entry%d", k);
    kaun_cache_writer *w;
    ASSERT_OK(kaun_cache_writer_open(name, N, KAUN_CACHE_HASH_SHA256, hex, NULL, NULL, &w, &err),
              err);
    if (k == 1)
      ASSERT_OK(kaun_cache_writer_pwrite(w, 0, bad, sizeof bad, &err), err); /* gathered */
    for (size_t off = 0; off < N; off += MB)
      ASSERT_OK(kaun_cache_writer_pwrite(w, off, good + off, MB, &err), err);
    sleep_ms(100); /* the follower hashes the start */
    int rc = KAUN_OK;
    if (k == 0) CU_ASSERT_EQUAL(pwrite(kaun_cache_writer_fd(w), bad, sizeof bad, 0), sizeof bad);
    if (k == 2) rc = kaun_cache_writer_write(w, bad, sizeof bad, &err);
    if (rc == KAUN_OK)
      rc = kaun_cache_writer_commit(w, &err);
    else
      kaun_cache_writer_abort(w);
    CU_ASSERT_EQUAL(rc, KAUN_ECHECKSUM);
    CU_ASSERT(!exists(name));
  }
  CU_ASSERT_EQUAL(count_temps(dir), 0);
  free(good);
}

/* MD5 entries (an S3 ETag): checked streaming and from parallel parts; a
 * wrong one is KAUN_ECHECKSUM naming the kind and both hashes. */
static void test_writer_md5(void) {
  kaun_error err = KAUN_ERROR_INIT;
  const char *dir = tmp("md5");
  ASSERT_OK(kaun_cache_mkdirs(dir, &err), err);
  static const char md5_abc[] = "900150983cd24fb0d6963f7d28e17f72";
  kaun_cache_writer *w;
  ASSERT_OK(
      kaun_cache_writer_open(tmp("md5/abc"), 3, KAUN_CACHE_HASH_MD5, md5_abc, NULL, NULL, &w, &err),
      err);
  ASSERT_OK(kaun_cache_writer_write(w, "abc", 3, &err), err);
  ASSERT_OK(kaun_cache_writer_commit(w, &err), err);
  CU_ASSERT(file_is(tmp("md5/abc"), "abc", 3));
  ASSERT_OK(kaun_cache_writer_open(tmp("md5/parts"), 3, KAUN_CACHE_HASH_MD5, md5_abc, NULL, NULL,
                                   &w, &err),
            err);
  ASSERT_OK(kaun_cache_writer_pwrite(w, 1, "bc", 2, &err), err);
  ASSERT_OK(kaun_cache_writer_pwrite(w, 0, "a", 1, &err), err);
  ASSERT_OK(kaun_cache_writer_commit(w, &err), err);
  ASSERT_OK(
      kaun_cache_writer_open(tmp("md5/bad"), 3, KAUN_CACHE_HASH_MD5, md5_abc, NULL, NULL, &w, &err),
      err);
  ASSERT_OK(kaun_cache_writer_write(w, "abd", 3, &err), err);
  ASSERT_FAILS(kaun_cache_writer_commit(w, &err), err, KAUN_ECHECKSUM,
               "fail their MD5 check (expected 900150983cd24fb0d6963f7d28e17f72");
  CU_ASSERT(!exists(tmp("md5/bad")));
  ASSERT_FAILS(
      kaun_cache_writer_open(tmp("md5/short"), 3, KAUN_CACHE_HASH_MD5, "abc", NULL, NULL, &w, &err),
      err, KAUN_EINVAL, "MD5");
  CU_ASSERT_EQUAL(count_temps(dir), 0);
}

/* The sink an HTTP download streams into: in order, hashed as it goes; a
 * byte out of order is refused and nothing is committed. */
static void test_writer_sink(void) {
  kaun_error err = KAUN_ERROR_INIT;
  const char *dir = tmp("sink");
  ASSERT_OK(kaun_cache_mkdirs(dir, &err), err);
  static const char abc_sha[] = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
  kaun_cache_writer *w;
  ASSERT_OK(kaun_cache_writer_open(tmp("sink/abc"), 3, KAUN_CACHE_HASH_SHA256, abc_sha, NULL, NULL,
                                   &w, &err),
            err);
  ASSERT_OK(kaun_cache_writer_sink(w, 0, "ab", 2, &err), err);
  ASSERT_OK(kaun_cache_writer_sink(w, 2, "c", 1, &err), err);
  ASSERT_OK(kaun_cache_writer_commit(w, &err), err);
  struct stat sb;
  CU_ASSERT_EQUAL(stat(tmp("sink/abc"), &sb), 0);
  ASSERT_OK(kaun_cache_writer_open(tmp("sink/gap"), 3, KAUN_CACHE_HASH_NONE, NULL, NULL,
                                   "test://gap", &w, &err),
            err);
  ASSERT_OK(kaun_cache_writer_sink(w, 0, "a", 1, &err), err);
  ASSERT_FAILS(kaun_cache_writer_sink(w, 2, "c", 1, &err), err, KAUN_EIO,
               "bytes arrived at 2 where 1 was next");
  kaun_cache_writer_abort(w);
  CU_ASSERT_NOT_EQUAL(stat(tmp("sink/gap"), &sb), 0);
}

static void test_writer_pwrite_and_fd(void) {
  kaun_error err = KAUN_ERROR_INIT;
  const char *dir = tmp("wpw");
  ASSERT_OK(kaun_cache_mkdirs(dir, &err), err);
  enum { N = 300000, PARTS = 4 };
  char *data = malloc(N);
  CU_ASSERT_FATAL(data != NULL);
  for (size_t i = 0; i < N; i++) data[i] = (char)(i * 2654435761u >> 13);
  char hex[KAUN_SHA256_HEX_SIZE];
  ASSERT_OK(kaun_sha256_hex(data, N, hex, &err), err);

  /* four ranges written by four threads, in any order */
  kaun_cache_writer *w;
  ASSERT_OK(kaun_cache_writer_open(tmp("wpw/ranged"), N, KAUN_CACHE_HASH_SHA256, hex, NULL, NULL,
                                   &w, &err),
            err);
  pthread_t th[PARTS];
  range_job jobs[PARTS];
  for (int i = PARTS - 1; i >= 0; i--) {
    jobs[i] = (range_job){w, data, (uint64_t)i * (N / PARTS), N / PARTS, -99};
    pthread_create(&th[i], NULL, write_range, &jobs[i]);
  }
  for (int i = 0; i < PARTS; i++) {
    pthread_join(th[i], NULL);
    CU_ASSERT_EQUAL(jobs[i].rc, KAUN_OK);
  }
  ASSERT_OK(kaun_cache_writer_commit(w, &err), err);
  CU_ASSERT(file_is(tmp("wpw/ranged"), data, N));

  /* a range past the expected size is refused */
  ASSERT_OK(
      kaun_cache_writer_open(tmp("wpw/over"), N, KAUN_CACHE_HASH_NONE, NULL, NULL, NULL, &w, &err),
      err);
  ASSERT_FAILS(kaun_cache_writer_pwrite(w, N - 1, "ab", 2, &err), err, KAUN_EIO, tmp("wpw/over"));
  kaun_cache_writer_abort(w);

  /* a hole (a range never written) is caught by the hash */
  ASSERT_OK(
      kaun_cache_writer_open(tmp("wpw/hole"), N, KAUN_CACHE_HASH_SHA256, hex, NULL, NULL, &w, &err),
      err);
  ASSERT_OK(kaun_cache_writer_pwrite(w, N - 10, data + N - 10, 10, &err), err);
  ASSERT_FAILS(kaun_cache_writer_commit(w, &err), err, KAUN_ECHECKSUM, tmp("wpw/hole"));
  CU_ASSERT(!exists(tmp("wpw/hole")));

  /* sequential writes then a pwrite that rewrites a byte: hashed from the file */
  ASSERT_OK(kaun_cache_writer_open(tmp("wpw/mixed"), 3, KAUN_CACHE_HASH_SHA256, SHA256_ABC, NULL,
                                   NULL, &w, &err),
            err);
  ASSERT_OK(kaun_cache_writer_write(w, "abX", 3, &err), err);
  ASSERT_OK(kaun_cache_writer_pwrite(w, 2, "c", 1, &err), err);
  ASSERT_OK(kaun_cache_writer_commit(w, &err), err);
  CU_ASSERT(file_is(tmp("wpw/mixed"), "abc", 3));

  /* the caller writes the descriptor itself */
  ASSERT_OK(kaun_cache_writer_open(tmp("wpw/byfd"), 6, KAUN_CACHE_HASH_GIT_SHA1, GIT_HELLO, NULL,
                                   NULL, &w, &err),
            err);
  int fd = kaun_cache_writer_fd(w);
  CU_ASSERT(fd >= 0);
  CU_ASSERT_EQUAL(write(fd, "hello\n", 6), 6);
  ASSERT_OK(kaun_cache_writer_commit(w, &err), err);
  CU_ASSERT(file_is(tmp("wpw/byfd"), "hello\n", 6));
  CU_ASSERT_EQUAL(count_temps(dir), 0);
  free(data);
}

/* Parallel parts through kaun_cache_writer_part_sink, in the 16 KiB
 * pieces an HTTP body comes in, interleaved across more parts than the
 * writer gathers at once: the file and its hash (checked while the parts
 * arrive) come out right; bytes written twice are hashed as they end up;
 * one wrong byte is caught. */
static void test_writer_parts(void) {
  kaun_error err = KAUN_ERROR_INIT;
  const char *dir = tmp("parts");
  ASSERT_OK(kaun_cache_mkdirs(dir, &err), err);
  enum { N = 5 << 20, PARTS = 10, PIECE = 16 << 10 };
  const size_t part = N / PARTS;
  char *data = malloc(N), *junk = malloc(N);
  CU_ASSERT_FATAL(data && junk);
  for (size_t i = 0; i < N; i++) data[i] = (char)(i * 2654435761u >> 13), junk[i] = (char)~data[i];
  char hex[KAUN_SHA256_HEX_SIZE];
  ASSERT_OK(kaun_sha256_hex(data, N, hex, &err), err);
  for (int round = 0; round < 3; round++) {
    const char *name = round == 0   ? tmp("parts/clean")
                       : round == 1 ? tmp("parts/twice")
                                    : tmp("parts/wrong");
    kaun_cache_writer *w;
    ASSERT_OK(kaun_cache_writer_open(name, N, KAUN_CACHE_HASH_SHA256, hex, NULL, NULL, &w, &err),
              err);
    if (round == 1) { /* the first 2 MiB first as junk, then as they should be */
      kaun_cache_part p0 = {w, 0};
      for (size_t off = 0; off < (2u << 20); off += PIECE)
        ASSERT_OK(kaun_cache_writer_part_sink(&p0, off, junk + off, PIECE, &err), err);
      usleep(20000); /* the follower hashes what it can */
    }
    kaun_cache_part parts[PARTS];
    for (int i = 0; i < PARTS; i++) parts[i] = (kaun_cache_part){w, (uint64_t)i * part};
    /* round robin, last part first: every part's run is cut by the others */
    for (size_t off = 0; off < part; off += PIECE) {
      size_t n = part - off < PIECE ? part - off : PIECE;
      for (int i = PARTS - 1; i >= 0; i--) {
        const char *src = data + parts[i].offset + off;
        char flipped;
        if (round == 2 && i == 7 && off == PIECE) { /* one byte wrong */
          flipped = (char)~src[0];
          ASSERT_OK(kaun_cache_writer_part_sink(&parts[i], off, &flipped, 1, &err), err);
          ASSERT_OK(kaun_cache_writer_part_sink(&parts[i], off + 1, src + 1, n - 1, &err), err);
        } else {
          ASSERT_OK(kaun_cache_writer_part_sink(&parts[i], off, src, n, &err), err);
        }
      }
    }
    if (round < 2) {
      ASSERT_OK(kaun_cache_writer_commit(w, &err), err);
      CU_ASSERT(file_is(name, data, N));
    } else {
      ASSERT_FAILS(kaun_cache_writer_commit(w, &err), err, KAUN_ECHECKSUM, name);
      CU_ASSERT(!exists(name));
    }
  }
  CU_ASSERT_EQUAL(count_temps(dir), 0);
  free(data);
  free(junk);
}

/* ---- progress and cancellation --------------------------------------------------------- */

typedef struct progress_seen {
  int calls;
  uint64_t last_done, last_total;
  int cancel_after; /* calls; 0 = never */
  char uri[256];
} progress_seen;

static int on_progress(const kaun_progress *p, void *user) {
  progress_seen *s = user;
  s->calls++;
  s->last_done = p->object_done;
  s->last_total = p->object_total;
  snprintf(s->uri, sizeof s->uri, "%s", p->uri);
  return s->cancel_after && s->calls >= s->cancel_after;
}

static void test_progress_and_cancel(void) {
  kaun_error err = KAUN_ERROR_INIT;
  const char *dir = tmp("wcancel");
  ASSERT_OK(kaun_cache_mkdirs(dir, &err), err);
  enum { N = 200000 };
  char *data = calloc(1, N);
  CU_ASSERT_FATAL(data != NULL);

  progress_seen seen = {0};
  kaun_io *io;
  ASSERT_OK(kaun_io_new(on_progress, &seen, &io, &err), err);
  kaun_cache_writer *w;
  ASSERT_OK(kaun_cache_writer_open(tmp("wcancel/ok"), N, KAUN_CACHE_HASH_NONE, NULL, io,
                                   "hf://org/model/ok", &w, &err),
            err);
  for (size_t off = 0; off < N; off += 10000)
    ASSERT_OK(kaun_cache_writer_write(w, data + off, 10000, &err), err);
  ASSERT_OK(kaun_cache_writer_commit(w, &err), err);
  CU_ASSERT(seen.calls >= 2);
  CU_ASSERT_EQUAL(seen.last_done, N);
  CU_ASSERT_EQUAL(seen.last_total, N);
  CU_ASSERT_STRING_EQUAL(seen.uri, "hf://org/model/ok");
  kaun_io_free(io);

  /* the callback says stop: the write fails, nothing is left */
  progress_seen stop = {0};
  stop.cancel_after = 1;
  ASSERT_OK(kaun_io_new(on_progress, &stop, &io, &err), err);
  ASSERT_OK(kaun_cache_writer_open(tmp("wcancel/stopped"), N, KAUN_CACHE_HASH_NONE, NULL, io,
                                   "s3://bucket/stopped", &w, &err),
            err);
  /* the callback runs every 64 KiB: the cancel lands within the first 100 KB */
  size_t off = 0;
  int rc = KAUN_OK;
  for (; off < N && rc == KAUN_OK; off += 10000)
    rc = kaun_cache_writer_write(w, data + off, 10000, &err);
  CU_ASSERT_EQUAL(rc, KAUN_ECANCELED);
  CU_ASSERT(off <= 100000);
  CU_ASSERT(strstr(err.message, "s3://bucket/stopped") != NULL);
  /* a commit after the cancel fails too */
  ASSERT_FAILS(kaun_cache_writer_commit(w, &err), err, KAUN_ECANCELED, "s3://bucket/stopped");
  CU_ASSERT(!exists(tmp("wcancel/stopped")));
  CU_ASSERT_EQUAL(count_temps(dir), 0);
  kaun_io_free(io);
  free(data);
}

/* ---- locks ------------------------------------------------------------------------------- */

typedef struct lock_job {
  const char *path;
  long timeout_ms;
  int rc;
  long waited_ms;
  char message[KAUN_ERROR_MESSAGE_MAX];
} lock_job;

static long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void *take_lock(void *arg) {
  lock_job *j = arg;
  kaun_error err = KAUN_ERROR_INIT;
  struct kaun_cache_lock *lk = NULL;
  long t0 = now_ms();
  j->rc = kaun_cache_lock(j->path, j->timeout_ms, &lk, &err);
  j->waited_ms = now_ms() - t0;
  snprintf(j->message, sizeof j->message, "%s", err.message);
  kaun_cache_unlock(lk);
  return NULL;
}

static void test_lock_threads(void) {
  kaun_error err = KAUN_ERROR_INIT;
  const char *path = tmp("locks/sub/entry.lock"); /* its folder is created */
  struct kaun_cache_lock *lk;
  ASSERT_OK(kaun_cache_lock(path, 0, &lk, &err), err);
  char pidtext[64];
  snprintf(pidtext, sizeof pidtext, "pid %ld on host ", (long)getpid());

  /* another thread times out, naming the lock file and this process */
  lock_job j = {path, 100, 0, 0, {0}};
  pthread_t th;
  pthread_create(&th, NULL, take_lock, &j);
  pthread_join(th, NULL);
  CU_ASSERT_EQUAL(j.rc, KAUN_ETRANSIENT);
  CU_ASSERT(j.waited_ms >= 95); /* whole milliseconds on both sides */
  CU_ASSERT(strstr(j.message, path) != NULL);
  CU_ASSERT(strstr(j.message, pidtext) != NULL);
  if (!strstr(j.message, pidtext)) fprintf(stderr, "\n  lock message: %s\n", j.message);

  /* a zero timeout tries once */
  struct kaun_cache_lock *other = NULL;
  ASSERT_FAILS(kaun_cache_lock(path, 0, &other, &err), err, KAUN_ETRANSIENT, pidtext);
  CU_ASSERT_PTR_NULL(other);

  /* a waiting thread gets it once it is released */
  lock_job k = {path, 10000, -99, 0, {0}};
  pthread_create(&th, NULL, take_lock, &k);
  sleep_ms(150);
  kaun_cache_unlock(lk);
  pthread_join(th, NULL);
  CU_ASSERT_EQUAL(k.rc, KAUN_OK);
  CU_ASSERT(k.waited_ms >= 100);
  /* free again: no holder is left in the file */
  ASSERT_OK(kaun_cache_lock(path, 0, &lk, &err), err);
  kaun_cache_unlock(lk);
  kaun_cache_unlock(NULL);
  size_t n = 1;
  char *text = slurp(path, &n);
  CU_ASSERT(text != NULL && n == 0);
  free(text);
}

typedef struct cancel_job {
  const char *lock_path, *entry;
  kaun_io *io;
  int rc, lock_rc, filled;
  long waited_ms;
  char message[KAUN_ERROR_MESSAGE_MAX];
} cancel_job;

static int never_fill(kaun_cache_writer *w, void *user, kaun_error *err) {
  (void)w, (void)err;
  ((cancel_job *)user)->filled = 1;
  return KAUN_OK;
}

static void *wait_then_cancel(void *arg) {
  cancel_job *j = arg;
  kaun_error err = KAUN_ERROR_INIT;
  struct kaun_cache_lock *lk = NULL;
  long t0 = now_ms();
  j->lock_rc = kaun_cache_lock_io(j->lock_path, 60000, j->io, &lk, &err);
  kaun_cache_unlock(lk);
  j->rc = kaun_cache_get_or_fill(j->entry, j->lock_path, 3, KAUN_CACHE_HASH_NONE, NULL, 60000,
                                 never_fill, j, j->io, NULL, &err);
  j->waited_ms = now_ms() - t0;
  snprintf(j->message, sizeof j->message, "%s", err.message);
  return NULL;
}

/* A wait for a lock someone else holds stops when the io is canceled,
 * long before the timeout, naming the lock; nothing is filled. */
static void test_lock_wait_cancel(void) {
  kaun_error err = KAUN_ERROR_INIT;
  const char *path = tmp("lockcancel/entry.lock");
  struct kaun_cache_lock *lk;
  ASSERT_OK(kaun_cache_lock(path, 0, &lk, &err), err);
  kaun_io *io;
  ASSERT_OK(kaun_io_new(NULL, NULL, &io, &err), err);
  cancel_job j = {path, tmp("lockcancel/entry"), io, -99, -99, 0, 0, {0}};
  pthread_t th;
  pthread_create(&th, NULL, wait_then_cancel, &j);
  sleep_ms(150);
  kaun_io_cancel(io);
  pthread_join(th, NULL);
  CU_ASSERT_EQUAL(j.lock_rc, KAUN_ECANCELED);
  CU_ASSERT_EQUAL(j.rc, KAUN_ECANCELED);
  CU_ASSERT(j.waited_ms < 5000);
  CU_ASSERT_PTR_NOT_NULL(strstr(j.message, path));
  CU_ASSERT_EQUAL(j.filled, 0);
  kaun_cache_unlock(lk);
  kaun_io_free(io);
}

static void test_lock_killed_holder(void) {
  kaun_error err = KAUN_ERROR_INIT;
  const char *path = tmp("locks/killed.lock");
  int ready[2];
  CU_ASSERT_FATAL(pipe(ready) == 0);
  pid_t child = fork();
  CU_ASSERT_FATAL(child >= 0);
  if (child == 0) {
    close(ready[0]);
    struct kaun_cache_lock *lk;
    kaun_error cerr = KAUN_ERROR_INIT;
    char ok = kaun_cache_lock(path, 5000, &lk, &cerr) == KAUN_OK ? 'y' : 'n';
    if (write(ready[1], &ok, 1) != 1) _exit(2);
    for (;;) pause(); /* until SIGKILL: the lock is never released by hand */
  }
  close(ready[1]);
  char ok = 0;
  CU_ASSERT(read(ready[0], &ok, 1) == 1 && ok == 'y');
  close(ready[0]);

  char pidtext[64];
  snprintf(pidtext, sizeof pidtext, "pid %ld on host", (long)child);
  struct kaun_cache_lock *lk = NULL;
  ASSERT_FAILS(kaun_cache_lock(path, 50, &lk, &err), err, KAUN_ETRANSIENT, pidtext);
  CU_ASSERT(strstr(err.message, path) != NULL);

  kill(child, SIGKILL);
  int status;
  CU_ASSERT(waitpid(child, &status, 0) == child && WIFSIGNALED(status));
  ASSERT_OK(kaun_cache_lock(path, 5000, &lk, &err), err);
  kaun_cache_unlock(lk);
}

/* ---- get_or_fill ------------------------------------------------------------------------- */

typedef struct fill_ctx {
  const char *count_path; /* one line appended per call */
  const char *data;
  size_t len;
  long pause_ms; /* between chunks, to make the others wait */
  int fail_with; /* nonzero: fail after half the data */
} fill_ctx;

static int fill_entry(kaun_cache_writer *w, void *user, kaun_error *err) {
  fill_ctx *c = user;
  int fd = open(c->count_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0 || write(fd, "fill\n", 5) != 5) {
    if (fd >= 0) close(fd);
    return KAUN_EIO;
  }
  close(fd);
  const size_t chunk = 8192;
  if (c->fail_with) { /* half the data, then a failure */
    int rc = kaun_cache_writer_write(w, c->data, c->len / 2, err);
    if (rc) return rc;
    snprintf(err->message, sizeof err->message, "injected failure");
    err->code = c->fail_with;
    return c->fail_with;
  }
  for (size_t off = 0; off < c->len; off += chunk) {
    size_t n = c->len - off < chunk ? c->len - off : chunk;
    int rc = kaun_cache_writer_write(w, c->data + off, n, err);
    if (rc) return rc;
    if (c->pause_ms) sleep_ms(c->pause_ms);
  }
  return KAUN_OK;
}

static int count_lines(const char *path) {
  size_t n = 0;
  char *text = slurp(path, &n);
  int lines = 0;
  for (size_t i = 0; text && i < n; i++) lines += text[i] == '\n';
  free(text);
  return lines;
}

static void test_get_or_fill_processes(void) {
  kaun_error err = KAUN_ERROR_INIT;
  enum { N = 96 * 1024, PROCS = 8 };
  char *data = malloc(N);
  CU_ASSERT_FATAL(data != NULL);
  for (size_t i = 0; i < N; i++) data[i] = (char)(i * 7 + (i >> 9));
  char hex[KAUN_SHA256_HEX_SIZE];
  ASSERT_OK(kaun_sha256_hex(data, N, hex, &err), err);
  /* the folders do not exist yet: get_or_fill creates them */
  const char *final = tmp("gof/kaun/test/blobs/%s", hex);
  const char *lock = tmp("gof/.locks/kaun/test/%s.lock", hex);
  fill_ctx fc = {tmp("gof-count"), data, N, 3, 0};

  int go[2];
  CU_ASSERT_FATAL(pipe(go) == 0);
  pid_t kids[PROCS];
  for (int i = 0; i < PROCS; i++) {
    kids[i] = fork();
    CU_ASSERT_FATAL(kids[i] >= 0);
    if (kids[i] == 0) {
      close(go[1]);
      char c;
      if (read(go[0], &c, 1) != 0) _exit(3); /* all start when the pipe closes */
      kaun_error cerr = KAUN_ERROR_INIT;
      int rc = kaun_cache_get_or_fill(final, lock, N, KAUN_CACHE_HASH_SHA256, hex, 60000,
                                      fill_entry, &fc, NULL, NULL, &cerr);
      if (rc != KAUN_OK) {
        fprintf(stderr, "child %d: %s\n", i, cerr.message);
        _exit(1);
      }
      _exit(file_is(final, data, N) ? 0 : 2);
    }
  }
  close(go[0]);
  close(go[1]);
  for (int i = 0; i < PROCS; i++) {
    int status = -1;
    CU_ASSERT(waitpid(kids[i], &status, 0) == kids[i]);
    CU_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  CU_ASSERT_EQUAL(count_lines(fc.count_path), 1);
  CU_ASSERT(file_is(final, data, N));
  CU_ASSERT_EQUAL(count_temps(tmp("gof/kaun/test/blobs")), 0);

  /* present: fill is not called */
  ASSERT_OK(kaun_cache_get_or_fill(final, lock, N, KAUN_CACHE_HASH_SHA256, hex, 1000, fill_entry,
                                   &fc, NULL, NULL, &err),
            err);
  CU_ASSERT_EQUAL(count_lines(fc.count_path), 1);
  /* present with the wrong size (a truncated copy): filled again */
  CU_ASSERT(truncate(final, N / 3) == 0);
  ASSERT_OK(kaun_cache_get_or_fill(final, lock, N, KAUN_CACHE_HASH_SHA256, hex, 1000, fill_entry,
                                   &fc, NULL, NULL, &err),
            err);
  CU_ASSERT_EQUAL(count_lines(fc.count_path), 2);
  CU_ASSERT(file_is(final, data, N));
  free(data);
}

static void test_get_or_fill_failures(void) {
  kaun_error err = KAUN_ERROR_INIT;
  const char *blobs = tmp("goff/blobs");
  const char *final = tmp("goff/blobs/entry");
  const char *lock = tmp("goff/.locks/entry.lock");
  const char *text = "the content of the entry";
  fill_ctx fc = {tmp("goff-count"), text, strlen(text), 0, KAUN_ETRANSIENT};
  ASSERT_FAILS(kaun_cache_get_or_fill(final, lock, strlen(text), KAUN_CACHE_HASH_NONE, NULL, 1000,
                                      fill_entry, &fc, NULL, NULL, &err),
               err, KAUN_ETRANSIENT, "injected failure");
  CU_ASSERT(!exists(final));
  CU_ASSERT_EQUAL(count_temps(blobs), 0);

  /* the wrong hash: nothing under the final name */
  fc.fail_with = 0;
  ASSERT_FAILS(kaun_cache_get_or_fill(final, lock, strlen(text), KAUN_CACHE_HASH_SHA256, SHA256_ABC,
                                      1000, fill_entry, &fc, NULL, NULL, &err),
               err, KAUN_ECHECKSUM, final);
  CU_ASSERT(!exists(final));
  CU_ASSERT_EQUAL(count_temps(blobs), 0);

  /* canceled through the io */
  progress_seen stop = {0};
  stop.cancel_after = 1;
  kaun_io *io;
  ASSERT_OK(kaun_io_new(on_progress, &stop, &io, &err), err);
  ASSERT_FAILS(kaun_cache_get_or_fill(final, lock, strlen(text), KAUN_CACHE_HASH_NONE, NULL, 1000,
                                      fill_entry, &fc, io, "hf://org/m/entry", &err),
               err, KAUN_ECANCELED, "hf://org/m/entry");
  kaun_io_free(io);
  CU_ASSERT(!exists(final));
  CU_ASSERT_EQUAL(count_temps(blobs), 0);

  /* the lock is busy: a clear transient error, nothing written */
  struct kaun_cache_lock *lk;
  ASSERT_OK(kaun_cache_lock(lock, 0, &lk, &err), err);
  int before = count_lines(fc.count_path);
  ASSERT_FAILS(kaun_cache_get_or_fill(final, lock, strlen(text), KAUN_CACHE_HASH_NONE, NULL, 30,
                                      fill_entry, &fc, NULL, NULL, &err),
               err, KAUN_ETRANSIENT, lock);
  CU_ASSERT_EQUAL(count_lines(fc.count_path), before);
  kaun_cache_unlock(lk);
  ASSERT_OK(kaun_cache_get_or_fill(final, lock, strlen(text), KAUN_CACHE_HASH_NONE, NULL, 1000,
                                   fill_entry, &fc, NULL, NULL, &err),
            err);
  CU_ASSERT(file_is(final, text, strlen(text)));
}

/* ---- stale temporaries ---------------------------------------------------------------------- */

static pid_t dead_pid(void) {
  pid_t p = fork();
  if (p == 0) _exit(0);
  int status;
  waitpid(p, &status, 0);
  return p; /* reaped: kill(p, 0) now fails with ESRCH */
}

static void test_clean_stale(void) {
  kaun_error err = KAUN_ERROR_INIT;
  const char *dir = tmp("stale");
  ASSERT_OK(kaun_cache_mkdirs(dir, &err), err);
  pid_t dead = dead_pid();
  CU_ASSERT_FATAL(dead > 0);
  char name[512];
  snprintf(name, sizeof name, "stale/.entry.%ld.0badf00d.incomplete", (long)dead);
  write_text(tmp("%s", name), "partial");
  snprintf(name, sizeof name, "stale/.other.name.%ld.12345678.incomplete", (long)dead);
  write_text(tmp("%s", name), "partial");
  snprintf(name, sizeof name, "stale/.entry.%ld.0badf00d.incomplete", (long)getpid());
  write_text(tmp("%s", name), "ours: alive");
  write_text(tmp("stale/entry.incomplete"), "not a kaun temporary");
  write_text(tmp("stale/.entry.x.1234abcd.incomplete"), "no pid");
  write_text(tmp("stale/entry"), "an entry");

  unsigned removed = 99;
  /* a minimum age keeps fresh files */
  ASSERT_OK(kaun_cache_clean_stale(dir, NULL, 3600, &removed, &err), err);
  CU_ASSERT_EQUAL(removed, 0);
  /* only this entry's */
  ASSERT_OK(kaun_cache_clean_stale(dir, "entry", 0, &removed, &err), err);
  CU_ASSERT_EQUAL(removed, 1);
  CU_ASSERT_EQUAL(count_temps(dir), 4);
  /* every dead one */
  ASSERT_OK(kaun_cache_clean_stale(dir, NULL, 0, &removed, &err), err);
  CU_ASSERT_EQUAL(removed, 1);
  CU_ASSERT(exists(tmp("%s", name))); /* ours */
  CU_ASSERT(exists(tmp("stale/entry.incomplete")));
  CU_ASSERT(exists(tmp("stale/.entry.x.1234abcd.incomplete")));
  CU_ASSERT(exists(tmp("stale/entry")));
  ASSERT_FAILS(kaun_cache_clean_stale(tmp("stale/none"), NULL, 0, NULL, &err), err, KAUN_ENOENT,
               tmp("stale/none"));

  /* get_or_fill cleans a dead writer's temporary of the entry it fills */
  snprintf(name, sizeof name, "stale/.fresh.%ld.0000abcd.incomplete", (long)dead);
  write_text(tmp("%s", name), "half");
  fill_ctx fc = {tmp("stale-count"), "full", 4, 0, 0};
  ASSERT_OK(
      kaun_cache_get_or_fill(tmp("stale/fresh"), tmp("stale/.fresh.lock"), 4, KAUN_CACHE_HASH_NONE,
                             NULL, 1000, fill_entry, &fc, NULL, NULL, &err),
      err);
  CU_ASSERT(!exists(tmp("%s", name)));
  CU_ASSERT(file_is(tmp("stale/fresh"), "full", 4));
}

/* ---- no descriptor leaks ------------------------------------------------------------- */

static int open_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  if (!d) return -1;
  int n = 0;
  while (readdir(d)) n++;
  closedir(d);
  return n;
}

static int fds_at_start;

static void test_no_fd_left(void) {
  if (fds_at_start < 0) return; /* no /proc */
  CU_ASSERT_EQUAL(open_fds(), fds_at_start);
}

int main(void) {
  fds_at_start = open_fds();
  const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  snprintf(tmp_root, sizeof tmp_root, "%s/kaun-cache-XXXXXX", base);
  if (!mkdtemp(tmp_root)) {
    perror("mkdtemp");
    return 1;
  }
  unsetenv("KAUN_CONFIG");
  if (CU_initialize_registry() != CUE_SUCCESS) return 1;
  CU_pSuite s = CU_add_suite("cache", NULL, NULL);
  CU_add_test(s, "the root: cache_dir, RAVEN_CACHE_ROOT, XDG_CACHE_HOME, HOME", test_root);
  CU_add_test(s, "folders are made as mkdir -p, errors name the path", test_mkdirs);
  CU_add_test(s, "a writer checks SHA-256 and commits atomically", test_writer_sha256);
  CU_add_test(s, "a writer checks git blob ids, streamed or read back", test_writer_git_sha1);
  CU_add_test(s, "wrong size, wrong hash, abort: nothing left behind", test_writer_failures);
  CU_add_test(s, "ranged writes from threads, and writes through the fd",
              test_writer_pwrite_and_fd);
  CU_add_test(s, "parallel parts: gathered, hashed while they arrive, rewrites, a wrong byte",
              test_writer_parts);
  CU_add_test(s, "the HTTP sink: in order, hashed, out of order refused", test_writer_sink);
  CU_add_test(s, "MD5 entries: streamed, from parts, a wrong one refused", test_writer_md5);
  CU_add_test(s, "bytes rewritten after the follower hashed them are checked again",
              test_writer_rewrites_after_follower);
  CU_add_test(s, "progress is reported; a cancel leaves nothing", test_progress_and_cancel);
  CU_add_test(s, "locks exclude threads; a timeout names the holder", test_lock_threads);
  CU_add_test(s, "a holder killed with SIGKILL releases its lock", test_lock_killed_holder);
  CU_add_test(s, "a lock wait stops when its io is canceled", test_lock_wait_cancel);
  CU_add_test(s, "8 processes, one entry: one transfer, all see it whole",
              test_get_or_fill_processes);
  CU_add_test(s, "get_or_fill failures leave nothing behind", test_get_or_fill_failures);
  CU_add_test(s, "stale temporaries of dead processes are removed", test_clean_stale);
  CU_add_test(s, "every descriptor opened by the cache is closed", test_no_fd_left);
  int rc = check_run_all();
  check_remove_tree(tmp_root);
  return rc;
}
