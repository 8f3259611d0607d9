/* The file backend's root: no path leaves it — through a symbolic link,
 * a folder made through one, ".." in a link's target, an absolute link,
 * or a link swapped while a path is resolved (a stress test bounded in
 * time) — and links that stay inside keep working.  Crash leftovers: a
 * save killed with SIGKILL leaves the old file and no temporary (or one
 * that the next save into the folder removes).
 *
 * Every confinement test runs twice: with the kernel's openat2 and with
 * the walk that replaces it where the kernel has none
 * (KAUN_TEST_NO_OPENAT2).  The crash tests run with unnamed temporaries
 * (O_TMPFILE) and with named ones (KAUN_TEST_NO_O_TMPFILE).  Linked
 * against libkaun.so and its public headers only. */
#include <CUnit/Basic.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <kaun.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

static char tmp_root[4096];

#define tmp(...) check_path(tmp_root, __VA_ARGS__)

static void write_text(const char *path, const char *fmt, ...) {
  FILE *f = fopen(path, "w");
  if (!f) {
    perror(path);
    exit(1);
  }
  va_list ap;
  va_start(ap, fmt);
  vfprintf(f, fmt, ap);
  va_end(ap);
  fclose(f);
}

/* The whole file, malloc'd (NULL when it cannot be read). */
static unsigned char *read_all(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  unsigned char *buf = NULL;
  size_t n = 0, cap = 0;
  for (;;) {
    if (n == cap) {
      cap = cap ? 2 * cap : 4096;
      unsigned char *p = realloc(buf, cap);
      if (!p) break;
      buf = p;
    }
    size_t r = fread(buf + n, 1, cap - n, f);
    if (!r) break;
    n += r;
  }
  fclose(f);
  *len = n;
  return buf;
}

static bool same_file(const char *a, const char *b) {
  size_t na, nb;
  unsigned char *pa = read_all(a, &na), *pb = read_all(b, &nb);
  bool same = pa && pb && na == nb && memcmp(pa, pb, na) == 0;
  free(pa);
  free(pb);
  return same;
}

static bool exists(const char *path) {
  struct stat sb;
  return lstat(path, &sb) == 0;
}

/* A small model {w: F32[2,2] = base.., b: F32[2]}, saved at `uri`: the
 * save's status (err filled). */
static int save_model(kaun_context *ctx, const char *uri, float base, kaun_error *err) {
  kaun_ptree *t;
  ASSERT_OK(kaun_ptree_new_record(&t, err), *err);
  const uint64_t s22[] = {2, 2}, s2[] = {2};
  float w[4] = {base, base + 1, base + 2, base + 3}, b[2] = {-base, -base};
  kaun_tensor *tw, *tb;
  ASSERT_OK(kaun_tensor_new_copy(KAUN_DTYPE_F32, 2, s22, w, sizeof w, &tw, err), *err);
  ASSERT_OK(kaun_tensor_new_copy(KAUN_DTYPE_F32, 1, s2, b, sizeof b, &tb, err), *err);
  ASSERT_OK(kaun_ptree_set(t, "w", tw, err), *err);
  ASSERT_OK(kaun_ptree_set(t, "b", tb, err), *err);
  kaun_error_clear(err);
  int rc = kaun_checkpoint_save(ctx, uri, t, NULL, err);
  kaun_ptree_free(t);
  return rc;
}

/* A model saved as a plain path. */
static void make_model(const char *path, float base) {
  kaun_error err = KAUN_ERROR_INIT;
  ASSERT_OK(save_model(NULL, path, base, &err), err);
}

/* The first value of `w` in the model at `uri`, or NAN-like -12345 when
 * it does not load (err filled). */
static float load_w(kaun_context *ctx, const char *uri, kaun_error *err) {
  kaun_flat *flat;
  kaun_error_clear(err);
  if (kaun_checkpoint_load_flat(ctx, uri, 0, &flat, err) != KAUN_OK) return -12345.0f;
  const kaun_tensor *t = kaun_flat_find(flat, "w");
  float v = t ? *(const float *)kaun_tensor_data(t) : -12345.0f;
  kaun_flat_free(flat);
  return v;
}

/* A context with one file backend "team" rooted at `root`; `walk`
 * selects the walk instead of openat2. */
static kaun_context *team_context(const char *root, bool walk) {
  if (walk)
    setenv("KAUN_TEST_NO_OPENAT2", "1", 1);
  else
    unsetenv("KAUN_TEST_NO_OPENAT2");
  const char *cfg = tmp("team-%d.json", (int)walk);
  write_text(cfg, "{\"backends\": {\"team\": {\"plugin\": \"file\", \"root\": \"%s\"}}}", root);
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx = NULL;
  if (kaun_context_new(cfg, &ctx, &err)) {
    fprintf(stderr, "%s\n", err.message);
    abort();
  }
  return ctx;
}

static const char *mode_name(bool walk) { return walk ? "walk" : "openat2"; }

/* Counts the entries below `dir` (not itself). */
static int tree_count;
static int count_one(const char *p, const struct stat *sb, int flag, struct FTW *f) {
  (void)p;
  (void)sb;
  (void)flag;
  if (f->level > 0) tree_count++;
  return 0;
}
static int count_tree(const char *dir) {
  tree_count = 0;
  nftw(dir, count_one, 16, FTW_PHYS);
  return tree_count;
}

/* Whether a temporary of a save (".kaun-tmp-") is anywhere below `dir`. */
static bool tree_has_temp;
static int find_temp(const char *p, const struct stat *sb, int flag, struct FTW *f) {
  (void)sb;
  (void)flag;
  if (strstr(p + f->base, ".kaun-tmp-")) tree_has_temp = true;
  return 0;
}
static bool has_temp(const char *dir) {
  tree_has_temp = false;
  nftw(dir, find_temp, 16, FTW_PHYS);
  return tree_has_temp;
}

static int count_entry(const char *name, uint64_t size, void *context) {
  (void)name;
  (void)size;
  (*(int *)context)++;
  return 0;
}

/* ---- confinement ------------------------------------------------------------------------------
 */

/* The attack: a folder of the key does not exist yet, and a symbolic link
 * above it leads out.  The save fails and creates nothing outside. */
static void test_save_through_symlinked_folder(void) {
  for (int walk = 0; walk < 2; walk++) {
    const char *root = tmp("save%d/root", walk), *out = tmp("save%d/outside", walk);
    mkdir(tmp("save%d", walk), 0755);
    mkdir(root, 0755);
    mkdir(out, 0755);
    CU_ASSERT_EQUAL(symlink(out, tmp("save%d/root/ldir", walk)), 0);
    CU_ASSERT_EQUAL(symlink("../outside", tmp("save%d/root/rdir", walk)), 0);
    kaun_context *ctx = team_context(root, walk);
    kaun_error err = KAUN_ERROR_INIT;
    static const char *const uris[] = {"team://ldir/newsub/deeper/x.safetensors",
                                       "team://rdir/newsub/deeper/x.safetensors",
                                       "team://ldir/x.safetensors", "team://rdir/x.safetensors"};
    for (size_t i = 0; i < sizeof uris / sizeof *uris; i++) {
      ASSERT_FAILS(save_model(ctx, uris[i], 1, &err), err, KAUN_EACCESS,
                   "a symbolic link leads outside the backend's root");
      CU_ASSERT_PTR_NOT_NULL(strstr(err.message, uris[i] + strlen("team://")));
      CU_ASSERT_PTR_NOT_NULL(strstr(err.message, root));
    }
    /* a put of raw bytes, and a copy (the kernel-copy path) */
    const char *src = tmp("save%d/src.safetensors", walk);
    make_model(src, 3);
    ASSERT_FAILS(kaun_storage_copy(ctx, src, "team://ldir/new/copy.safetensors", NULL, &err), err,
                 KAUN_EACCESS, "leads outside");
    CU_ASSERT_EQUAL(count_tree(out), 0);
    if (count_tree(out))
      fprintf(stderr, "\n  %s: a save wrote outside the root\n", mode_name(walk));
    /* the same keys without the link are fine */
    ASSERT_OK(save_model(ctx, "team://dir/newsub/deeper/x.safetensors", 1, &err), err);
    CU_ASSERT_TRUE(exists(tmp("save%d/root/dir/newsub/deeper/x.safetensors", walk)));
    kaun_context_free(ctx);
  }
}

/* A link in the middle of a path, to a folder outside: open, load, list,
 * remove and stat-through-open are all refused. */
static void test_symlink_in_the_middle(void) {
  for (int walk = 0; walk < 2; walk++) {
    mkdir(tmp("mid%d", walk), 0755);
    const char *root = tmp("mid%d/root", walk), *out = tmp("mid%d/outside", walk);
    mkdir(root, 0755);
    mkdir(tmp("mid%d/root/a", walk), 0755);
    mkdir(tmp("mid%d/root/a/b", walk), 0755);
    mkdir(out, 0755);
    make_model(tmp("mid%d/outside/secret.safetensors", walk), 2);
    CU_ASSERT_EQUAL(symlink(out, tmp("mid%d/root/a/b/mid", walk)), 0);
    kaun_context *ctx = team_context(root, walk);
    kaun_error err = KAUN_ERROR_INIT;
    kaun_object *o;
    ASSERT_FAILS(kaun_object_open(ctx, "team://a/b/mid/secret.safetensors", &o, &err), err,
                 KAUN_EACCESS, "a/b/mid/secret.safetensors: a symbolic link leads outside");
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "'mid' -> '"));
    CU_ASSERT_EQUAL(load_w(ctx, "team://a/b/mid/secret.safetensors", &err), -12345.0f);
    CU_ASSERT_EQUAL(err.code, KAUN_EACCESS);
    int seen = 0;
    ASSERT_FAILS(kaun_storage_list(ctx, "team://a/b/mid", count_entry, &seen, &err), err,
                 KAUN_EACCESS, "leads outside");
    CU_ASSERT_EQUAL(seen, 0);
    ASSERT_FAILS(kaun_storage_remove(ctx, "team://a/b/mid/secret.safetensors", &err), err,
                 KAUN_EACCESS, "leads outside");
    CU_ASSERT_TRUE(exists(tmp("mid%d/outside/secret.safetensors", walk)));
    CU_ASSERT_EQUAL(count_tree(out), 1);
    kaun_context_free(ctx);
  }
}

/* ".." in a link's target: out of the root is refused, even when the
 * path comes back in afterwards (as the kernel's RESOLVE_BENEATH does);
 * a ".." that stays inside is followed. */
static void test_dotdot_via_symlink(void) {
  for (int walk = 0; walk < 2; walk++) {
    mkdir(tmp("dots%d", walk), 0755);
    const char *root = tmp("dots%d/root", walk);
    mkdir(root, 0755);
    mkdir(tmp("dots%d/root/sub", walk), 0755);
    mkdir(tmp("dots%d/outside", walk), 0755);
    make_model(tmp("dots%d/outside/secret.safetensors", walk), 2);
    make_model(tmp("dots%d/root/sub/m.safetensors", walk), 1);
    CU_ASSERT_EQUAL(symlink("../..", tmp("dots%d/root/sub/up", walk)), 0);
    CU_ASSERT_EQUAL(symlink("../../root/sub", tmp("dots%d/root/sub/outin", walk)), 0);
    CU_ASSERT_EQUAL(symlink("..", tmp("dots%d/root/sub/parent", walk)), 0);
    CU_ASSERT_EQUAL(symlink("../sub/./m.safetensors", tmp("dots%d/root/sub/same", walk)), 0);
    kaun_context *ctx = team_context(root, walk);
    kaun_error err = KAUN_ERROR_INIT;
    kaun_object *o;
    ASSERT_FAILS(kaun_object_open(ctx, "team://sub/up/outside/secret.safetensors", &o, &err), err,
                 KAUN_EACCESS, "'up' -> '../..'");
    ASSERT_FAILS(kaun_object_open(ctx, "team://sub/outin/m.safetensors", &o, &err), err,
                 KAUN_EACCESS, "leads outside the backend's root");
    ASSERT_FAILS(save_model(ctx, "team://sub/up/outside/new/x.safetensors", 1, &err), err,
                 KAUN_EACCESS, "leads outside the backend's root");
    CU_ASSERT_FALSE(exists(tmp("dots%d/outside/new", walk)));
    /* the user's own ".." is refused before any link is looked at */
    ASSERT_FAILS(kaun_object_open(ctx, "team://sub/../sub/m.safetensors", &o, &err), err,
                 KAUN_EACCESS, "'..' would leave the backend's root");
    /* inside */
    CU_ASSERT_EQUAL(load_w(ctx, "team://sub/parent/sub/m.safetensors", &err), 1.0f);
    CU_ASSERT_EQUAL(load_w(ctx, "team://sub/same", &err), 1.0f);
    ASSERT_OK(save_model(ctx, "team://sub/parent/made/x.safetensors", 4, &err), err);
    CU_ASSERT_TRUE(exists(tmp("dots%d/root/made/x.safetensors", walk)));
    kaun_context_free(ctx);
  }
}

/* Absolute links: to anywhere outside, refused; to the root's real path
 * or below it, followed (the kernel's openat2 refuses every absolute
 * link; the walk then decides). */
static void test_absolute_symlinks(void) {
  for (int walk = 0; walk < 2; walk++) {
    mkdir(tmp("abs%d", walk), 0755);
    const char *root = tmp("abs%d/root", walk);
    mkdir(root, 0755);
    mkdir(tmp("abs%d/root/in", walk), 0755);
    mkdir(tmp("abs%d/outside", walk), 0755);
    make_model(tmp("abs%d/outside/secret.safetensors", walk), 2);
    make_model(tmp("abs%d/root/in/m.safetensors", walk), 1);
    CU_ASSERT_EQUAL(
        symlink(tmp("abs%d/outside/secret.safetensors", walk), tmp("abs%d/root/f", walk)), 0);
    CU_ASSERT_EQUAL(symlink("/", tmp("abs%d/root/slash", walk)), 0);
    CU_ASSERT_EQUAL(symlink(tmp("abs%d/root/in/m.safetensors", walk), tmp("abs%d/root/fin", walk)),
                    0);
    CU_ASSERT_EQUAL(symlink(tmp("abs%d/root/in", walk), tmp("abs%d/root/din", walk)), 0);
    CU_ASSERT_EQUAL(symlink(root, tmp("abs%d/root/self", walk)), 0);
    /* lexically under the root, but ".." takes it out */
    char sneaky[4400];
    snprintf(sneaky, sizeof sneaky, "%s/../outside", root);
    CU_ASSERT_EQUAL(symlink(sneaky, tmp("abs%d/root/sneaky", walk)), 0);
    kaun_context *ctx = team_context(root, walk);
    kaun_error err = KAUN_ERROR_INIT;
    kaun_object *o;
    ASSERT_FAILS(kaun_object_open(ctx, "team://f", &o, &err), err, KAUN_EACCESS,
                 "a symbolic link leads outside the backend's root");
    ASSERT_FAILS(kaun_object_open(ctx, "team://slash/etc/passwd", &o, &err), err, KAUN_EACCESS,
                 "'slash' -> '/'");
    ASSERT_FAILS(kaun_object_open(ctx, "team://sneaky/secret.safetensors", &o, &err), err,
                 KAUN_EACCESS, "leads outside");
    ASSERT_FAILS(save_model(ctx, "team://sneaky/x.safetensors", 1, &err), err, KAUN_EACCESS,
                 "leads outside");
    CU_ASSERT_EQUAL(count_tree(tmp("abs%d/outside", walk)), 1);
    CU_ASSERT_EQUAL(load_w(ctx, "team://fin", &err), 1.0f);
    CU_ASSERT_EQUAL(load_w(ctx, "team://din/m.safetensors", &err), 1.0f);
    CU_ASSERT_EQUAL(load_w(ctx, "team://self/self/in/m.safetensors", &err), 1.0f);
    ASSERT_OK(save_model(ctx, "team://din/new/x.safetensors", 5, &err), err);
    CU_ASSERT_TRUE(exists(tmp("abs%d/root/in/new/x.safetensors", walk)));
    kaun_context_free(ctx);
  }
}

/* Links that stay inside the root: a folder link (versions: cur -> v1),
 * a file link, listing through them, saving through them; stat's
 * local_path is the file actually open. */
static void test_symlinks_inside_are_followed(void) {
  for (int walk = 0; walk < 2; walk++) {
    mkdir(tmp("in%d", walk), 0755);
    const char *root = tmp("in%d/root", walk);
    mkdir(root, 0755);
    mkdir(tmp("in%d/root/v1", walk), 0755);
    mkdir(tmp("in%d/outside", walk), 0755);
    make_model(tmp("in%d/root/v1/m.safetensors", walk), 1);
    make_model(tmp("in%d/outside/secret.safetensors", walk), 2);
    CU_ASSERT_EQUAL(symlink("v1", tmp("in%d/root/cur", walk)), 0);
    CU_ASSERT_EQUAL(symlink("cur/m.safetensors", tmp("in%d/root/model.safetensors", walk)), 0);
    CU_ASSERT_EQUAL(
        symlink("../outside/secret.safetensors", tmp("in%d/root/out.safetensors", walk)), 0);
    kaun_context *ctx = team_context(root, walk);
    kaun_error err = KAUN_ERROR_INIT;
    CU_ASSERT_EQUAL(load_w(ctx, "team://cur/m.safetensors", &err), 1.0f);
    CU_ASSERT_EQUAL(load_w(ctx, "team://model.safetensors", &err), 1.0f);
    CU_ASSERT_EQUAL(load_w(ctx, "team:///cur//./m.safetensors", &err), 1.0f);
    kaun_object *o;
    ASSERT_OK(kaun_object_open(ctx, "team://model.safetensors", &o, &err), err);
    kaun_stat st = {.struct_size = sizeof st};
    ASSERT_OK(kaun_object_stat(o, &st, &err), err);
    char real[4096];
    CU_ASSERT_PTR_NOT_NULL_FATAL(realpath(tmp("in%d/root/v1/m.safetensors", walk), real));
    CU_ASSERT_STRING_EQUAL(st.local_path, real);
    kaun_object_close(o);
    ASSERT_OK(save_model(ctx, "team://cur/n.safetensors", 6, &err), err);
    CU_ASSERT_TRUE(exists(tmp("in%d/root/v1/n.safetensors", walk)));
    int seen = 0;
    ASSERT_OK(kaun_storage_list(ctx, "team://cur", count_entry, &seen, &err), err);
    CU_ASSERT_EQUAL(seen, 2);
    /* the root's files: model.safetensors (a link inside) is listed,
     * out.safetensors (a link out) is not */
    seen = 0;
    ASSERT_OK(kaun_storage_list(ctx, "team://", count_entry, &seen, &err), err);
    CU_ASSERT_EQUAL(seen, 1);
    /* removing a link removes the link, never what it points to */
    ASSERT_OK(kaun_storage_remove(ctx, "team://out.safetensors", &err), err);
    CU_ASSERT_TRUE(exists(tmp("in%d/outside/secret.safetensors", walk)));
    ASSERT_OK(kaun_storage_remove(ctx, "team://model.safetensors", &err), err);
    CU_ASSERT_TRUE(exists(tmp("in%d/root/v1/m.safetensors", walk)));
    kaun_context_free(ctx);
  }
}

/* Links in a loop end with an error, not a hang; a folder named as a file
 * and a missing file keep their codes. */
static void test_symlink_loops_and_codes(void) {
  for (int walk = 0; walk < 2; walk++) {
    mkdir(tmp("loop%d", walk), 0755);
    const char *root = tmp("loop%d/root", walk);
    mkdir(root, 0755);
    mkdir(tmp("loop%d/root/d", walk), 0755);
    CU_ASSERT_EQUAL(symlink("loop", tmp("loop%d/root/loop", walk)), 0);
    CU_ASSERT_EQUAL(symlink("l2", tmp("loop%d/root/l1", walk)), 0);
    CU_ASSERT_EQUAL(symlink("l1", tmp("loop%d/root/l2", walk)), 0);
    kaun_context *ctx = team_context(root, walk);
    kaun_error err = KAUN_ERROR_INIT;
    kaun_object *o;
    ASSERT_FAILS(kaun_object_open(ctx, "team://loop", &o, &err), err, KAUN_EIO, "loop");
    ASSERT_FAILS(kaun_object_open(ctx, "team://l1/x.safetensors", &o, &err), err, KAUN_EIO, "l1");
    ASSERT_FAILS(save_model(ctx, "team://l1/x.safetensors", 1, &err), err, KAUN_EIO, "l1");
    ASSERT_FAILS(kaun_object_open(ctx, "team://d", &o, &err), err, KAUN_EISDIR, "is a directory");
    ASSERT_FAILS(kaun_object_open(ctx, "team://d/none", &o, &err), err, KAUN_ENOENT, "none");
    ASSERT_FAILS(kaun_object_open(ctx, "team://nodir/none", &o, &err), err, KAUN_ENOENT, "none");
    kaun_context_free(ctx);
  }
}

/* A FIFO inside a root is refused at once (opening it must not block). */
static void test_fifo_in_root(void) {
  for (int walk = 0; walk < 2; walk++) {
    mkdir(tmp("fifo%d", walk), 0755);
    const char *root = tmp("fifo%d/root", walk);
    mkdir(root, 0755);
    CU_ASSERT_EQUAL(mkfifo(tmp("fifo%d/root/p.safetensors", walk), 0644), 0);
    kaun_context *ctx = team_context(root, walk);
    kaun_error err = KAUN_ERROR_INIT;
    kaun_object *o;
    ASSERT_FAILS(kaun_object_open(ctx, "team://p.safetensors", &o, &err), err, KAUN_EINVAL,
                 "is not a regular file");
    kaun_context_free(ctx);
  }
}

/* Plain paths (no root) keep today's behaviour: links are followed anywhere. */
static void test_plain_paths_follow_links(void) {
  mkdir(tmp("plain"), 0755);
  mkdir(tmp("plain/elsewhere"), 0755);
  make_model(tmp("plain/elsewhere/m.safetensors"), 7);
  CU_ASSERT_EQUAL(symlink(tmp("plain/elsewhere"), tmp("plain/link")), 0);
  kaun_error err = KAUN_ERROR_INIT;
  CU_ASSERT_EQUAL(load_w(NULL, tmp("plain/link/m.safetensors"), &err), 7.0f);
  ASSERT_OK(save_model(NULL, tmp("plain/link/n.safetensors"), 8, &err), err);
  CU_ASSERT_TRUE(exists(tmp("plain/elsewhere/n.safetensors")));
  ASSERT_FAILS(save_model(NULL, tmp("plain/nodir/n.safetensors"), 8, &err), err, KAUN_ENOENT,
               "nodir");
}

/* ---- the race: links swapped while paths resolve ----------------------------------------------
 */

typedef struct stress {
  kaun_context *ctx;
  const char *root;
  unsigned char *outside_bytes; /* the outside model */
  size_t outside_len;
  struct timespec deadline;
  atomic_int loads, refused, escapes, saves, lists;
  int id;
} stress;

static bool before(const struct timespec *deadline) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return now.tv_sec < deadline->tv_sec ||
         (now.tv_sec == deadline->tv_sec && now.tv_nsec < deadline->tv_nsec);
}

static const char *const stress_uris[] = {"team://flip/m.safetensors", "team://real/m.safetensors",
                                          "team://flop/m.safetensors"};

static void *stress_loader(void *arg) {
  stress *s = arg;
  unsigned char buf[4096];
  for (unsigned i = 0; before(&s->deadline); i++) {
    const char *uri = stress_uris[i % 3];
    kaun_error err = KAUN_ERROR_INIT;
    if (i & 1) { /* a load: zero-copy views of the mapped file */
      float w = load_w(s->ctx, uri, &err);
      if (w == 1.0f)
        atomic_fetch_add(&s->loads, 1);
      else if (w == 2.0f)
        atomic_fetch_add(&s->escapes, 1);
      else
        atomic_fetch_add(&s->refused, 1);
      continue;
    }
    kaun_object *o; /* raw bytes, compared with the outside file's */
    if (kaun_object_open(s->ctx, uri, &o, &err) != KAUN_OK) {
      atomic_fetch_add(&s->refused, 1);
      continue;
    }
    kaun_stat st = {.struct_size = sizeof st};
    if (kaun_object_stat(o, &st, &err) == KAUN_OK && st.size == s->outside_len &&
        st.size <= sizeof buf && kaun_object_read(o, 0, buf, st.size, &err) == KAUN_OK &&
        memcmp(buf, s->outside_bytes, st.size) == 0)
      atomic_fetch_add(&s->escapes, 1);
    else
      atomic_fetch_add(&s->loads, 1);
    kaun_object_close(o);
  }
  return NULL;
}

static void *stress_saver(void *arg) {
  stress *s = arg;
  static const char *const keys[] = {"team://flip/new/deep/s%d.safetensors",
                                     "team://flop/s%d.safetensors",
                                     "team://real/n/s%d.safetensors"};
  for (unsigned i = 0; before(&s->deadline); i++) {
    char uri[128];
    snprintf(uri, sizeof uri, keys[i % 3], s->id);
    kaun_error err = KAUN_ERROR_INIT;
    if (save_model(s->ctx, uri, 1, &err) == KAUN_OK) atomic_fetch_add(&s->saves, 1);
  }
  return NULL;
}

static int stress_list_entry(const char *name, uint64_t size, void *context) {
  (void)size;
  if (strcmp(name, "only-outside.safetensors") == 0) atomic_fetch_add((atomic_int *)context, 1);
  return 0;
}

static void *stress_lister(void *arg) {
  stress *s = arg;
  for (unsigned i = 0; before(&s->deadline); i++) {
    kaun_error err = KAUN_ERROR_INIT;
    if (kaun_storage_list(s->ctx, i & 1 ? "team://flip" : "team://flop", stress_list_entry,
                          &s->escapes, &err) == KAUN_OK)
      atomic_fetch_add(&s->lists, 1);
  }
  return NULL;
}

/* The attacker: swaps the real folder "real" and the link "flip" (to the
 * outside folder) with one atomic exchange, over and over, and points the
 * link "flop" in and out. */
static void swapper(const char *root, const char *outside) {
  char flip[4400], real[4400], flop[4400], flop_new[4400];
  snprintf(flip, sizeof flip, "%s/flip", root);
  snprintf(real, sizeof real, "%s/real", root);
  snprintf(flop, sizeof flop, "%s/flop", root);
  snprintf(flop_new, sizeof flop_new, "%s/flop.new", root);
  for (unsigned i = 0;; i++) {
    (void)renameat2(AT_FDCWD, flip, AT_FDCWD, real, RENAME_EXCHANGE);
    unlink(flop_new);
    if (symlink(i & 1 ? outside : "in2", flop_new) == 0) (void)rename(flop_new, flop);
  }
}

static void test_stress_swapped_links(void) {
  const char *root = tmp("race/root"), *out = tmp("race/outside");
  mkdir(tmp("race"), 0755);
  mkdir(root, 0755);
  mkdir(out, 0755);
  mkdir(tmp("race/root/real"), 0755);
  mkdir(tmp("race/root/in2"), 0755);
  make_model(tmp("race/root/real/m.safetensors"), 1);
  make_model(tmp("race/root/in2/m.safetensors"), 1);
  make_model(tmp("race/outside/m.safetensors"), 2);
  make_model(tmp("race/outside/only-outside.safetensors"), 2);
  CU_ASSERT_EQUAL(symlink(out, tmp("race/root/flip")), 0);
  CU_ASSERT_EQUAL(symlink("../outside", tmp("race/root/flop")), 0);
  size_t outside_len;
  unsigned char *outside_bytes = read_all(tmp("race/outside/m.safetensors"), &outside_len);
  CU_ASSERT_PTR_NOT_NULL_FATAL(outside_bytes);
  const int outside_entries = count_tree(out);
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    swapper(root, out);
    _exit(0);
  }
  CU_ASSERT_FATAL(pid > 0);
  for (int walk = 0; walk < 2; walk++) {
    kaun_context *ctx = team_context(root, walk);
    stress s[6];
    pthread_t threads[6];
    for (int i = 0; i < 6; i++) {
      memset(&s[i], 0, sizeof s[i]);
      s[i].ctx = ctx;
      s[i].root = root;
      s[i].outside_bytes = outside_bytes;
      s[i].outside_len = outside_len;
      s[i].id = i;
      clock_gettime(CLOCK_MONOTONIC, &s[i].deadline);
      s[i].deadline.tv_sec += 1; /* one second per mode: two in all */
      void *(*fn)(void *) = i < 3 ? stress_loader : i < 5 ? stress_saver : stress_lister;
      CU_ASSERT_EQUAL_FATAL(pthread_create(&threads[i], NULL, fn, &s[i]), 0);
    }
    int loads = 0, refused = 0, escapes = 0, saves = 0, lists = 0;
    for (int i = 0; i < 6; i++) {
      pthread_join(threads[i], NULL);
      loads += s[i].loads;
      refused += s[i].refused;
      escapes += s[i].escapes;
      saves += s[i].saves;
      lists += s[i].lists;
    }
    kaun_context_free(ctx);
    printf("\n    %s: %d reads inside, %d refused, %d outside; %d saves, %d lists ",
           mode_name(walk), loads, refused, escapes, saves, lists);
    CU_ASSERT_EQUAL(escapes, 0);
    CU_ASSERT_TRUE(loads > 0);   /* the race was run: some reads got in... */
    CU_ASSERT_TRUE(refused > 0); /* ...and some met the link */
    CU_ASSERT_TRUE(saves > 0);
    CU_ASSERT_EQUAL(count_tree(out), outside_entries); /* nothing written outside */
  }
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  CU_ASSERT_FALSE(has_temp(root));
  CU_ASSERT_FALSE(has_temp(out));
  free(outside_bytes);
}

/* ---- crash leftovers ------------------------------------------------------------------------ */

static bool tmpfile_supported(const char *dir) {
  int fd = open(dir, O_TMPFILE | O_WRONLY, 0600);
  if (fd < 0) return false;
  close(fd);
  return true;
}

static void set_named_temps(bool named) {
  if (named)
    setenv("KAUN_TEST_NO_O_TMPFILE", "1", 1);
  else
    unsetenv("KAUN_TEST_NO_O_TMPFILE");
}

/* The temporaries in `dir` (names with ".kaun-tmp-"), up to `max`. */
static int temps_in(const char *dir, char names[][512], int max) {
  DIR *d = opendir(dir);
  int n = 0;
  struct dirent *e;
  while (d && (e = readdir(d)))
    if (strstr(e->d_name, ".kaun-tmp-")) {
      if (n < max) snprintf(names[n], 512, "%s", e->d_name);
      n++;
    }
  if (d) closedir(d);
  return n;
}

/* A put source that writes a first chunk, then says so on a pipe and
 * sleeps: the writer is in the middle of its save when it is killed. */
typedef struct slow_source {
  int signal_fd;
} slow_source;

static int slow_read(void *context, uint64_t offset, void *dst, size_t len, kaun_error *err) {
  (void)err;
  slow_source *s = context;
  memset(dst, 'n', len);
  if (offset > 0) {
    if (write(s->signal_fd, "r", 1) != 1) _exit(3);
    sleep(60);
  }
  return KAUN_OK;
}

/* Forks a writer that saves `uri` through `ctx`'s config and is killed
 * with SIGKILL in the middle; returns its pid (reaped). */
static pid_t killed_save(const char *root, bool walk, const char *uri) {
  int fds[2];
  CU_ASSERT_FATAL(pipe(fds) == 0);
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    kaun_context *ctx = team_context(root, walk);
    slow_source s = {fds[1]};
    kaun_put_source src = {.size = ((uint64_t)8 << 20) + 4096, .read = slow_read, .context = &s};
    kaun_error err = KAUN_ERROR_INIT;
    kaun_storage_put(ctx, uri, &src, &err);
    _exit(2); /* never reached: killed while sleeping */
  }
  close(fds[1]);
  struct pollfd p = {.fd = fds[0], .events = POLLIN};
  char c;
  bool in_save = poll(&p, 1, 30000) == 1 && read(fds[0], &c, 1) == 1;
  CU_ASSERT_TRUE(in_save);
  kill(pid, SIGKILL);
  int status;
  waitpid(pid, &status, 0);
  CU_ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  close(fds[0]);
  return pid;
}

static void backdate(const char *path, int seconds) {
  struct timespec ts[2];
  clock_gettime(CLOCK_REALTIME, &ts[0]);
  ts[0].tv_sec -= seconds;
  ts[1] = ts[0];
  CU_ASSERT_EQUAL(utimensat(AT_FDCWD, path, ts, AT_SYMLINK_NOFOLLOW), 0);
}

/* SIGKILL in the middle of a save: the old file is intact; with unnamed
 * temporaries nothing is left at all, with named ones the temporary
 * carries the writer's pid and the next save into the folder removes
 * it. */
static void test_killed_save(void) {
  for (int named = 0; named < 2; named++) {
    const char *dir = tmp("crash%d", named);
    mkdir(dir, 0755);
    mkdir(tmp("crash%d/m", named), 0755);
    if (!named && !tmpfile_supported(dir)) {
      printf("\n    (no O_TMPFILE on this file system: unnamed temporaries not tested) ");
      continue;
    }
    set_named_temps(named);
    kaun_context *ctx = team_context(dir, named);
    kaun_error err = KAUN_ERROR_INIT;
    ASSERT_OK(save_model(ctx, "team://m/model.safetensors", 1, &err), err);
    size_t old_len;
    unsigned char *old = read_all(tmp("crash%d/m/model.safetensors", named), &old_len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(old);
    pid_t dead = killed_save(dir, named, "team://m/model.safetensors");
    size_t now_len;
    unsigned char *now = read_all(tmp("crash%d/m/model.safetensors", named), &now_len);
    CU_ASSERT_TRUE(now && now_len == old_len && memcmp(now, old, old_len) == 0);
    free(now);
    char names[4][512];
    int n = temps_in(tmp("crash%d/m", named), names, 4);
    if (!named) {
      CU_ASSERT_EQUAL(n, 0); /* an unnamed temporary dies with its writer */
    } else {
      CU_ASSERT_EQUAL_FATAL(n, 1);
      char want[64];
      snprintf(want, sizeof want, ".model.safetensors.kaun-tmp-%ld-", (long)dead);
      CU_ASSERT_EQUAL(strncmp(names[0], want, strlen(want)), 0);
      /* young: a writer that just died may be another's with the same
       * pid a moment ago; it is kept for a few seconds */
      ASSERT_OK(save_model(ctx, "team://m/other.safetensors", 2, &err), err);
      CU_ASSERT_EQUAL(temps_in(tmp("crash%d/m", named), names, 4), 1);
      backdate(tmp("crash%d/m/%s", named, names[0]), 60);
    }
    /* the next save into the folder (any file in it) cleans up */
    ASSERT_OK(save_model(ctx, "team://m/other.safetensors", 3, &err), err);
    CU_ASSERT_EQUAL(temps_in(tmp("crash%d/m", named), names, 4), 0);
    now = read_all(tmp("crash%d/m/model.safetensors", named), &now_len);
    CU_ASSERT_TRUE(now && now_len == old_len && memcmp(now, old, old_len) == 0);
    free(now);
    CU_ASSERT_EQUAL(load_w(ctx, "team://m/other.safetensors", &err), 3.0f);
    free(old);
    kaun_context_free(ctx);
  }
  set_named_temps(false);
}

/* Which temporaries a save removes: only a dead writer's, made on this
 * host (the tag after the pid), matching the pattern, and old. */
static void test_stale_temp_rules(void) {
  const char *dir = tmp("stale");
  mkdir(dir, 0755);
  set_named_temps(true);
  kaun_context *ctx = team_context(dir, false);
  kaun_error err = KAUN_ERROR_INIT;
  ASSERT_OK(save_model(ctx, "team://model.safetensors", 1, &err), err);
  pid_t dead = killed_save(dir, false, "team://model.safetensors");
  char names[4][512];
  CU_ASSERT_EQUAL_FATAL(temps_in(dir, names, 4), 1);
  /* ".model.safetensors.kaun-tmp-PID-WHERE-RANDOM": this host's tag */
  char where[16] = "";
  const char *p = strstr(names[0], ".kaun-tmp-");
  CU_ASSERT_FATAL(p && sscanf(p, ".kaun-tmp-%*d-%8[0-9a-f]-", where) == 1);
  unlink(tmp("stale/%s", names[0]));
  /* a live process that is not this one */
  pid_t live = fork();
  if (live == 0) {
    sleep(60);
    _exit(0);
  }
  struct {
    char name[128];
    bool removed;
  } files[] = {
      {"", true},                                  /* dead writer, this host, old */
      {"", false},                                 /* dead writer, this host, young */
      {"", false},                                 /* live writer */
      {"", false},                                 /* another host's or container's */
      {".x.safetensors.kaun-tmp-0123abcd", false}, /* an older kaun's: no pid */
      {".x.safetensors.kaun-tmp-1-2", false},
      {"x.kaun-tmp-1-00000000-00000000", false}, /* not hidden: not kaun's */
  };
  snprintf(files[0].name, sizeof files[0].name, ".a.safetensors.kaun-tmp-%ld-%s-00000001",
           (long)dead, where);
  snprintf(files[1].name, sizeof files[1].name, ".b.safetensors.kaun-tmp-%ld-%s-00000002",
           (long)dead, where);
  snprintf(files[2].name, sizeof files[2].name, ".c.safetensors.kaun-tmp-%ld-%s-00000003",
           (long)live, where);
  snprintf(files[3].name, sizeof files[3].name, ".d.safetensors.kaun-tmp-%ld-%08x-00000004",
           (long)dead, (unsigned)strtoul(where, NULL, 16) ^ 1u);
  size_t nfiles = sizeof files / sizeof *files;
  for (size_t i = 0; i < nfiles; i++) {
    write_text(tmp("stale/%s", files[i].name), "partial");
    if (i != 1) backdate(tmp("stale/%s", files[i].name), 60);
  }
  ASSERT_OK(save_model(ctx, "team://model.safetensors", 2, &err), err);
  for (size_t i = 0; i < nfiles; i++) {
    bool gone = !exists(tmp("stale/%s", files[i].name));
    if (gone != files[i].removed)
      fprintf(stderr, "\n  %s: %s\n", files[i].name, gone ? "removed" : "kept");
    CU_ASSERT_EQUAL(gone, files[i].removed);
    unlink(tmp("stale/%s", files[i].name));
  }
  kill(live, SIGKILL);
  waitpid(live, NULL, 0);
  kaun_context_free(ctx);
  set_named_temps(false);
}

/* A write that fails half-way (a file size limit, as a full disk) under a
 * root, with either kind of temporary: the error says so, the old file
 * stays, no temporary is left. */
static void test_failed_write_leaves_nothing(void) {
  for (int named = 0; named < 2; named++) {
    const char *dir = tmp("fsize%d", named);
    mkdir(dir, 0755);
    set_named_temps(named);
    kaun_context *ctx = team_context(dir, named);
    kaun_error err = KAUN_ERROR_INIT;
    ASSERT_OK(save_model(ctx, "team://sub/model.safetensors", 1, &err), err);
    size_t old_len;
    unsigned char *old = read_all(tmp("fsize%d/sub/model.safetensors", named), &old_len);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
      signal(SIGXFSZ, SIG_IGN);
      struct rlimit rl = {64 * 1024, 64 * 1024};
      setrlimit(RLIMIT_FSIZE, &rl);
      char *zeros = calloc(1, 1 << 20);
      kaun_error e = KAUN_ERROR_INIT;
      kaun_ptree *t;
      kaun_tensor *x;
      const uint64_t shape[] = {1 << 18};
      if (!zeros || kaun_ptree_new_record(&t, &e) ||
          kaun_tensor_new_copy(KAUN_DTYPE_F32, 1, shape, zeros, 1 << 20, &x, &e) ||
          kaun_ptree_set(t, "x", x, &e))
        _exit(4);
      int rc = kaun_checkpoint_save(ctx, "team://sub/model.safetensors", t, NULL, &e);
      bool ok = rc == KAUN_EIO && strstr(e.message, "left it unchanged") &&
                strstr(e.message, "sub/model.safetensors");
      if (!ok) fprintf(stderr, "\n  child: rc=%d message=%s\n", rc, e.message);
      _exit(ok ? 0 : 1);
    }
    int status;
    waitpid(pid, &status, 0);
    CU_ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    size_t now_len;
    unsigned char *now = read_all(tmp("fsize%d/sub/model.safetensors", named), &now_len);
    CU_ASSERT_TRUE(old && now && now_len == old_len && memcmp(now, old, old_len) == 0);
    char names[4][512];
    CU_ASSERT_EQUAL(temps_in(tmp("fsize%d/sub", named), names, 4), 0);
    free(old);
    free(now);
    kaun_context_free(ctx);
  }
  set_named_temps(false);
}

/* Saved files get 0666 less the umask with either kind of temporary, new
 * or replacing an older file, and a copy is byte for byte. */
static void test_saved_mode_and_copy(void) {
  mode_t old_mask = umask(027);
  for (int named = 0; named < 2; named++) {
    const char *dir = tmp("mode%d", named);
    mkdir(dir, 0755);
    set_named_temps(named);
    kaun_context *ctx = team_context(dir, named);
    kaun_error err = KAUN_ERROR_INIT;
    for (int round = 0; round < 2; round++) {
      ASSERT_OK(save_model(ctx, "team://m.safetensors", (float)round, &err), err);
      struct stat sb;
      CU_ASSERT_EQUAL(stat(tmp("mode%d/m.safetensors", named), &sb), 0);
      CU_ASSERT_EQUAL(sb.st_mode & 0777, 0640);
      CU_ASSERT_EQUAL(load_w(ctx, "team://m.safetensors", &err), (float)round);
      ASSERT_OK(
          kaun_storage_copy(ctx, "team://m.safetensors", "team://copies/c.safetensors", NULL, &err),
          err);
      CU_ASSERT_TRUE(
          same_file(tmp("mode%d/m.safetensors", named), tmp("mode%d/copies/c.safetensors", named)));
    }
    char names[4][512];
    CU_ASSERT_EQUAL(temps_in(dir, names, 4), 0);
    kaun_context_free(ctx);
  }
  set_named_temps(false);
  umask(old_mask);
}

/* Descriptors open in this process (the root descriptors of the
 * contexts above went with them; no walk or save leaks one). */
static int open_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  int n = 0;
  struct dirent *e;
  while (d && (e = readdir(d)))
    if (e->d_name[0] != '.') n++;
  if (d) closedir(d);
  return n;
}
static int fds_at_start;
static void test_no_descriptor_left(void) {
  if (open_fds() != fds_at_start) {
    fprintf(stderr, "\n  %d descriptors open, %d at the start:\n", open_fds(), fds_at_start);
    if (system("ls -l /proc/$PPID/fd >&2") != 0) fprintf(stderr, "  (cannot list them)\n");
  }
  CU_ASSERT_EQUAL(open_fds(), fds_at_start);
}

int main(void) {
  fds_at_start = open_fds();
  const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  char made[4096];
  snprintf(made, sizeof made, "%s/kaun-confine-XXXXXX", base);
  if (!mkdtemp(made) || !realpath(made, tmp_root)) {
    perror(made);
    return 1;
  }
  unsetenv("KAUN_CONFIG");
  unsetenv("KAUN_PLUGIN_PATH");
  if (CU_initialize_registry() != CUE_SUCCESS) return 1;
  CU_pSuite s = CU_add_suite("confine", NULL, NULL);
  CU_add_test(s, "a save through a symlinked folder out of the root fails, writes nothing",
              test_save_through_symlinked_folder);
  CU_add_test(s, "a link out in the middle of a path is refused", test_symlink_in_the_middle);
  CU_add_test(s, "'..' in a link's target cannot leave the root", test_dotdot_via_symlink);
  CU_add_test(s, "absolute links: out refused, to the root followed", test_absolute_symlinks);
  CU_add_test(s, "links inside the root are followed", test_symlinks_inside_are_followed);
  CU_add_test(s, "link loops fail; codes of folders and missing files",
              test_symlink_loops_and_codes);
  CU_add_test(s, "a FIFO in a root is refused without blocking", test_fifo_in_root);
  CU_add_test(s, "plain paths follow links anywhere, as before", test_plain_paths_follow_links);
  CU_add_test(s, "links swapped during loads, saves and lists never lead out (2 s)",
              test_stress_swapped_links);
  CU_add_test(s, "a save killed with SIGKILL: old file intact, no temporary left",
              test_killed_save);
  CU_add_test(s, "only dead writers' old temporaries of this host are removed",
              test_stale_temp_rules);
  CU_add_test(s, "a write failing half-way leaves no temporary", test_failed_write_leaves_nothing);
  CU_add_test(s, "saved files: mode 0666 less the umask; copies", test_saved_mode_and_copy);
  CU_add_test(s, "no descriptor is left open", test_no_descriptor_left);
  int rc = check_run_all();
  check_remove_tree(tmp_root);
  return rc;
}
