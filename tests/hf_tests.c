/* The HuggingFace Hub: kaun_hf_* (core/hf.c) and the hf backend
 * (plugins/hf) against tests/servers/hub.py, a Hub-compatible server with
 * a "CDN" port, on 127.0.0.1.  What is checked: the cache layout byte for
 * byte (blobs, relative snapshot links, refs without a newline, .no_exist,
 * .locks), what moves on the wire (a cached commit asks nothing, a branch
 * one HEAD), where the token goes, the Hub's errors, resumes and retries,
 * hashes, offline mode, kill -9, 8 processes, sharded models at one
 * commit, hf:// URIs.  Public API only. */
#include <CUnit/Basic.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <kaun.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "testserver.h"

#define COMMIT_A "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define COMMIT_B "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
#define COMMIT_C "cccccccccccccccccccccccccccccccccccccccc"
#define COMMIT_D "dddddddddddddddddddddddddddddddddddddddd"
#define BIG_SIZE (6u << 20)

static char work[4096], root[4200], config[4300];
static test_server server;
static int cdn_port;
static unsigned ncache;

#define SETUP_OK(call, err)                                                     \
  do {                                                                          \
    if ((call) != KAUN_OK) {                                                    \
      fprintf(stderr, "setup: %s:%d: %s\n", __FILE__, __LINE__, (err).message); \
      exit(1);                                                                  \
    }                                                                           \
  } while (0)

static const char *at_path(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *at_path(const char *fmt, ...) {
  static char buf[8][8400];
  static int k;
  char *b = buf[k++ % 8];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(b, 8400, fmt, ap);
  va_end(ap);
  return b;
}

static void write_text(const char *path, const char *text) {
  char dir[8400];
  snprintf(dir, sizeof dir, "%s", path);
  *strrchr(dir, '/') = 0;
  kaun_error err = KAUN_ERROR_INIT;
  SETUP_OK(kaun_cache_mkdirs(dir, &err), err);
  FILE *f = fopen(path, "w");
  fputs(text, f);
  fclose(f);
}

static char *read_text(const char *path) {
  char *text = NULL;
  size_t len;
  kaun_error err = KAUN_ERROR_INIT;
  if (kaun_storage_read_all(NULL, path, 64 << 20, &text, &len, &err)) return NULL;
  return text;
}

/* hex digest of a file: "sha256" or the git blob sha1 ("git") */
static void digest(const char *path, const char *kind, char *out) {
  FILE *f = fopen(path, "rb");
  struct stat sb;
  fstat(fileno(f), &sb);
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, strcmp(kind, "git") == 0 ? EVP_sha1() : EVP_sha256(), NULL);
  if (strcmp(kind, "git") == 0) {
    char head[64];
    int n = snprintf(head, sizeof head, "blob %lld", (long long)sb.st_size);
    EVP_DigestUpdate(ctx, head, (size_t)n + 1);
  }
  char buf[65536];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) EVP_DigestUpdate(ctx, buf, n);
  unsigned char md[64];
  unsigned len;
  EVP_DigestFinal_ex(ctx, md, &len);
  EVP_MD_CTX_free(ctx);
  fclose(f);
  for (unsigned i = 0; i < len; i++) sprintf(out + 2 * i, "%02x", md[i]);
}

/* A safetensors file of `n` F32[4] tensors PREFIX0.., element k = base + k. */
static void make_weights(const char *path, const char *prefix, int n, float base) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_flat *flat;
  SETUP_OK(kaun_flat_new(&flat, &err), err);
  const uint64_t shape[] = {4};
  for (int i = 0; i < n; i++) {
    float v[4] = {base + i * 10, base + i * 10 + 1, base + i * 10 + 2, base + i * 10 + 3};
    kaun_tensor *t;
    SETUP_OK(kaun_tensor_new_copy(KAUN_DTYPE_F32, 1, shape, v, sizeof v, &t, &err), err);
    char name[64];
    snprintf(name, sizeof name, "%s%d", prefix, i);
    SETUP_OK(kaun_flat_add(flat, name, t, &err), err);
  }
  char dir[8400];
  snprintf(dir, sizeof dir, "%s", path);
  *strrchr(dir, '/') = 0;
  SETUP_OK(kaun_cache_mkdirs(dir, &err), err);
  SETUP_OK(kaun_safetensors_save(NULL, path, flat, &err), err);
  kaun_flat_free(flat);
}

static void set_main(const char *repo, const char *commit) {
  write_text(at_path("%s/repos/%s/repo.json", root, repo),
             at_path("{\"refs\": {\"main\": \"%s\", \"v1\": \"%s\", \"refs/pr/1\": \"%s\"}}",
                     commit, COMMIT_A, COMMIT_B));
}

static void make_repos(void) {
  write_text(at_path("%s/tokens.json", root), "[\"hf_good\", \"hf_other\"]");
  /* org/model: two commits sharing model.safetensors */
  set_main("org/model", COMMIT_A);
  char m[4400];
  snprintf(m, sizeof m, "%s/repos/org/model", root);
  write_text(at_path("%s/%s/config.json", m, COMMIT_A), "{\"hidden_size\": 4}\n");
  write_text(at_path("%s/%s/config.json", m, COMMIT_B), "{\"hidden_size\": 8}\n");
  write_text(at_path("%s/%s/sub/dir/notes a#b.txt", m, COMMIT_A), "nested\n");
  make_weights(at_path("%s/%s/model.safetensors", m, COMMIT_A), "w", 3, 0);
  make_weights(at_path("%s/%s/model.safetensors", m, COMMIT_B), "w", 3, 0);
  /* private and gated */
  write_text(at_path("%s/repos/org/private/repo.json", root),
             "{\"private\": true, \"tokens\": [\"hf_good\"], \"refs\": {\"main\": \"" COMMIT_A
             "\"}}");
  make_weights(at_path("%s/repos/org/private/%s/model.safetensors", root, COMMIT_A), "p", 2, 100);
  write_text(at_path("%s/repos/org/private/%s/config.json", root, COMMIT_A), "{}\n");
  write_text(at_path("%s/repos/org/gated/repo.json", root),
             "{\"gated\": true, \"tokens\": [\"hf_good\"], \"refs\": {\"main\": \"" COMMIT_A
             "\"}}");
  write_text(at_path("%s/repos/org/gated/%s/config.json", root, COMMIT_A), "{}\n");
  /* a dataset */
  write_text(at_path("%s/repos/datasets/org/data/repo.json", root),
             "{\"refs\": {\"main\": \"" COMMIT_A "\"}}");
  write_text(at_path("%s/repos/datasets/org/data/%s/train.csv", root, COMMIT_A), "a,b\n1,2\n");
  /* a renamed repo: a relative redirect to org/model */
  write_text(at_path("%s/repos/org/old-name/repo.json", root), "{\"moved_to\": \"org/model\"}");
  /* a legacy id without an org */
  write_text(at_path("%s/repos/gpt9/repo.json", root), "{\"refs\": {\"main\": \"" COMMIT_A "\"}}");
  write_text(at_path("%s/repos/gpt9/%s/config.json", root, COMMIT_A), "{\"legacy\": true}\n");
  /* org/sharded: 3 shards at C; at D the shards hold other values */
  write_text(at_path("%s/repos/org/sharded/repo.json", root),
             "{\"refs\": {\"main\": \"" COMMIT_C "\"}}");
  const char *index =
      "{\"metadata\": {\"total_size\": 96},\n \"weight_map\": {\"a0\": "
      "\"model-00001-of-00003.safetensors\", \"a1\": \"model-00001-of-00003.safetensors\", "
      "\"b0\": \"model-00002-of-00003.safetensors\", \"b1\": "
      "\"model-00002-of-00003.safetensors\", \"c0\": \"model-00003-of-00003.safetensors\", "
      "\"c1\": \"model-00003-of-00003.safetensors\"}}\n";
  const char *commits[] = {COMMIT_C, COMMIT_D};
  for (int k = 0; k < 2; k++) {
    char d[4400];
    snprintf(d, sizeof d, "%s/repos/org/sharded/%s", root, commits[k]);
    write_text(at_path("%s/model.safetensors.index.json", d), index);
    write_text(at_path("%s/config.json", d), "[1, 2]\n");
    make_weights(at_path("%s/model-00001-of-00003.safetensors", d), "a", 2, k ? 500 : 0);
    make_weights(at_path("%s/model-00002-of-00003.safetensors", d), "b", 2, k ? 600 : 100);
    make_weights(at_path("%s/model-00003-of-00003.safetensors", d), "c", 2, k ? 700 : 200);
  }
  /* org/big: one 6 MiB LFS file */
  write_text(at_path("%s/repos/org/big/repo.json", root),
             "{\"refs\": {\"main\": \"" COMMIT_A "\"}}");
  char *big = malloc(BIG_SIZE);
  for (unsigned i = 0; i < BIG_SIZE; i++) big[i] = (char)((i * 2654435761u) >> 13);
  FILE *f = fopen(at_path("%s/repos/org/big/%s/weights.bin", root, COMMIT_A), "w");
  if (!f) {
    kaun_error err = KAUN_ERROR_INIT;
    SETUP_OK(kaun_cache_mkdirs(at_path("%s/repos/org/big/%s", root, COMMIT_A), &err), err);
    f = fopen(at_path("%s/repos/org/big/%s/weights.bin", root, COMMIT_A), "w");
  }
  fwrite(big, 1, BIG_SIZE, f);
  fclose(f);
  /* org/huge: 48 MiB, to measure memory */
  write_text(at_path("%s/repos/org/huge/repo.json", root),
             "{\"refs\": {\"main\": \"" COMMIT_A "\"}}");
  write_text(at_path("%s/repos/org/huge/%s/placeholder", root, COMMIT_A), "");
  f = fopen(at_path("%s/repos/org/huge/%s/huge.bin", root, COMMIT_A), "w");
  for (int k = 0; k < 8; k++) fwrite(big, 1, BIG_SIZE, f);
  fclose(f);
  free(big);
}

/* ---- the server --------------------------------------------------------------- */

static int hub_start(void) {
  const char *src = getenv("KAUN_SRCDIR");
  char script[4096], port_file[4200];
  snprintf(script, sizeof script, "%s/tests/servers/hub.py", src ? src : ".");
  snprintf(port_file, sizeof port_file, "%s/port", work);
  server.pid = fork();
  if (server.pid < 0) return -1;
  if (server.pid == 0) {
    execlp("python3", "python3", script, "--root", root, "--port", "0", "--port-file", port_file,
           (char *)NULL);
    _exit(127);
  }
  for (int i = 0; i < 200; i++) {
    FILE *f = fopen(port_file, "r");
    if (f) {
      int ok = fscanf(f, "%d %d", &server.port, &cdn_port) == 2;
      fclose(f);
      if (ok) {
        snprintf(server.url, sizeof server.url, "http://127.0.0.1:%d", server.port);
        return 0;
      }
    }
    struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  fprintf(stderr, "the Hub test server (%s) did not start\n", script);
  test_server_stop(&server);
  return -1;
}

/* How many requests the server saw for `path` since the last reset. */
static long long path_count(const char *path) {
  char body[65536], needle[1024];
  (void)test_server_stat(&server, "requests"); /* settle */
  if (test_server_control(&server, KAUN_HTTP_GET, "stats", NULL, body, sizeof body)) return -1;
  snprintf(needle, sizeof needle, "\"%s\": ", path);
  const char *p = strstr(body, needle);
  return p ? atoll(p + strlen(needle)) : 0;
}

/* A fresh cache folder (the name stays valid for the whole run). */
static const char *new_cache(void) {
  static char caches[64][4300];
  ++ncache;
  snprintf(caches[ncache % 64], sizeof caches[0], "%s/cache%u", work, ncache);
  return caches[ncache % 64];
}

static kaun_hf_options opts(const char *cache, const char *rev) {
  kaun_hf_options o = KAUN_HF_OPTIONS_INIT;
  o.endpoint = server.url;
  o.cache_dir = cache;
  o.revision = rev;
  o.token = "";
  o.max_attempts = 4;
  o.retry_base_ms = 5;
  o.retry_max_ms = 50;
  return o;
}

static int exists(const char *path) {
  struct stat sb;
  return lstat(path, &sb) == 0;
}

/* ---- layout ------------------------------------------------------------------------ */

static void test_layout(void) {
  kaun_error err = KAUN_ERROR_INIT;
  const char *cache = new_cache();
  kaun_hf_options o = opts(cache, NULL);
  kaun_hf_file f;
  char sha1[80], sha256[80], link[4096], repo[4400];
  snprintf(repo, sizeof repo, "%s/models--org--model", cache);
  /* a regular file: git blob sha1 */
  ASSERT_OK(kaun_hf_download_file("org/model", "config.json", &o, &f, &err), err);
  CU_ASSERT_STRING_EQUAL(f.path, at_path("%s/snapshots/%s/config.json", repo, COMMIT_A));
  CU_ASSERT_STRING_EQUAL(f.commit, COMMIT_A);
  digest(at_path("%s/repos/org/model/%s/config.json", root, COMMIT_A), "git", sha1);
  CU_ASSERT_STRING_EQUAL(f.etag, sha1);
  ssize_t n = readlink(f.path, link, sizeof link - 1);
  CU_ASSERT_FATAL(n > 0);
  link[n] = 0;
  CU_ASSERT_STRING_EQUAL(link, at_path("../../blobs/%s", sha1));
  char *text = read_text(f.path);
  CU_ASSERT_STRING_EQUAL(text, "{\"hidden_size\": 4}\n");
  free(text);
  text = read_text(at_path("%s/refs/main", repo));
  CU_ASSERT_STRING_EQUAL(text, COMMIT_A); /* no newline */
  free(text);
  CU_ASSERT(exists(at_path("%s/.locks/models--org--model/%s.lock", cache, sha1)));
  /* an LFS file: sha256 */
  ASSERT_OK(kaun_hf_download_file("org/model", "model.safetensors", &o, &f, &err), err);
  digest(at_path("%s/repos/org/model/%s/model.safetensors", root, COMMIT_A), "sha256", sha256);
  CU_ASSERT_STRING_EQUAL(f.etag, sha256);
  CU_ASSERT(exists(at_path("%s/blobs/%s", repo, sha256)));
  /* a nested file with characters to encode: one ../ per folder */
  ASSERT_OK(kaun_hf_download_file("org/model", "sub/dir/notes a#b.txt", &o, &f, &err), err);
  n = readlink(f.path, link, sizeof link - 1);
  CU_ASSERT_FATAL(n > 0);
  link[n] = 0;
  CU_ASSERT(strncmp(link, "../../../../blobs/", 18) == 0);
  text = read_text(f.path);
  CU_ASSERT_STRING_EQUAL(text, "nested\n");
  free(text);
  /* nothing left behind */
  char cmd[8400], out[64] = "";
  snprintf(cmd, sizeof cmd, "find '%s' -name '*incomplete*' -o -name '*.tmp' | wc -l", cache);
  FILE *p = popen(cmd, "r");
  CU_ASSERT_PTR_NOT_NULL(fgets(out, sizeof out, p));
  pclose(p);
  CU_ASSERT_EQUAL(atoi(out), 0);
}

/* A cached commit asks nothing; a branch asks one HEAD and downloads
 * nothing; two commits share a blob; refs/pr/1 nests; a branch moves. */
static void test_revisions(void) {
  kaun_error err = KAUN_ERROR_INIT;
  const char *cache = new_cache();
  kaun_hf_options o = opts(cache, NULL);
  kaun_hf_file f, g;
  ASSERT_OK(kaun_hf_download_file("org/model", "model.safetensors", &o, &f, &err), err);
  test_server_reset(&server);
  o.revision = COMMIT_A;
  ASSERT_OK(kaun_hf_download_file("org/model", "model.safetensors", &o, &g, &err), err);
  CU_ASSERT_EQUAL(test_server_stat(&server, "requests"), 0);
  CU_ASSERT_FALSE(g.from_network);
  CU_ASSERT_STRING_EQUAL(f.path, g.path);
  o.revision = "main";
  ASSERT_OK(kaun_hf_download_file("org/model", "model.safetensors", &o, &g, &err), err);
  CU_ASSERT_EQUAL(test_server_stat(&server, "requests"), 1); /* the HEAD only */
  CU_ASSERT_EQUAL(test_server_stat(&server, "bytes_sent"), 0);
  /* refs/pr/1 is commit B: same blob, a new snapshot, refs/refs/pr/1 */
  test_server_reset(&server);
  o.revision = "refs/pr/1";
  ASSERT_OK(kaun_hf_download_file("org/model", "model.safetensors", &o, &g, &err), err);
  CU_ASSERT_STRING_EQUAL(g.commit, COMMIT_B);
  CU_ASSERT_STRING_EQUAL(g.etag, f.etag);
  CU_ASSERT_EQUAL(test_server_stat(&server, "bytes_sent"), 0); /* the blob was there */
  CU_ASSERT_EQUAL(path_count("/org/model/resolve/refs/pr/1/model.safetensors"), 1);
  char *text = read_text(at_path("%s/models--org--model/refs/refs/pr/1", cache));
  CU_ASSERT_STRING_EQUAL(text, COMMIT_B);
  free(text);
  /* a tag */
  o.revision = "v1";
  ASSERT_OK(kaun_hf_download_file("org/model", "config.json", &o, &g, &err), err);
  CU_ASSERT_STRING_EQUAL(g.commit, COMMIT_A);
  /* main moves to B: re-checked, the new config */
  set_main("org/model", COMMIT_B);
  o.revision = NULL;
  ASSERT_OK(kaun_hf_download_file("org/model", "config.json", &o, &g, &err), err);
  CU_ASSERT_STRING_EQUAL(g.commit, COMMIT_B);
  text = read_text(g.path);
  CU_ASSERT_STRING_EQUAL(text, "{\"hidden_size\": 8}\n");
  free(text);
  text = read_text(at_path("%s/models--org--model/refs/main", cache));
  CU_ASSERT_STRING_EQUAL(text, COMMIT_B);
  free(text);
  set_main("org/model", COMMIT_A);
  /* a renamed repo: the relative 307 is followed by hand, to the same host */
  ASSERT_OK(kaun_hf_download_file("org/old-name", "config.json", &o, &g, &err), err);
  CU_ASSERT_STRING_EQUAL(g.commit, COMMIT_A);
  CU_ASSERT(strstr(g.path, "/models--org--old-name/snapshots/" COMMIT_A "/config.json") != NULL);
  /* a legacy id */
  ASSERT_OK(kaun_hf_download_file("gpt9", "config.json", &o, &g, &err), err);
  CU_ASSERT(strstr(g.path, "/models--gpt9/snapshots/" COMMIT_A "/config.json") != NULL);
}

static void test_offline(void) {
  kaun_error err = KAUN_ERROR_INIT;
  const char *cache = new_cache();
  kaun_hf_options o = opts(cache, NULL);
  kaun_hf_file f, g;
  ASSERT_OK(kaun_hf_download_file("org/model", "config.json", &o, &f, &err), err);
  test_server_reset(&server);
  o.offline = 1;
  ASSERT_OK(kaun_hf_download_file("org/model", "config.json", &o, &g, &err), err);
  CU_ASSERT_STRING_EQUAL(f.path, g.path);
  ASSERT_FAILS(kaun_hf_download_file("org/model", "model.safetensors", &o, &g, &err), err,
               KAUN_ENOENT, "org/model@main/model.safetensors is not in the cache");
  CU_ASSERT(strstr(err.message, "offline") != NULL);
  o.revision = "v1"; /* no refs/v1 */
  ASSERT_FAILS(kaun_hf_download_file("org/model", "config.json", &o, &g, &err), err, KAUN_ENOENT,
               "org/model@v1/config.json");
  o.offline = 0;
  o.revision = NULL;
  setenv("HF_HUB_OFFLINE", "1", 1);
  ASSERT_OK(kaun_hf_download_file("org/model", "config.json", &o, &g, &err), err);
  ASSERT_FAILS(kaun_hf_download_file("org/model", "model.safetensors", &o, &g, &err), err,
               KAUN_ENOENT, "offline");
  unsetenv("HF_HUB_OFFLINE");
  CU_ASSERT_EQUAL(test_server_stat(&server, "requests"), 0);
  /* the Hub down (5xx, then refused): the cache answers; what is not cached fails */
  test_server_faults(&server, "[{\"path\": \"*\", \"status\": 503, \"count\": -1}]");
  ASSERT_OK(kaun_hf_download_file("org/model", "config.json", &o, &g, &err), err);
  CU_ASSERT_STRING_EQUAL(f.path, g.path);
  ASSERT_FAILS(kaun_hf_download_file("org/model", "model.safetensors", &o, &g, &err), err,
               KAUN_ETRANSIENT, "503");
  test_server_reset(&server);
  o.endpoint = "http://127.0.0.1:1";
  ASSERT_OK(kaun_hf_download_file("org/model", "config.json", &o, &g, &err), err);
  /* a cache huggingface_hub wrote (refs, blobs, relative links) is read as is */
  const char *hub = new_cache();
  char dir[8400];
  snprintf(dir, sizeof dir, "%s/models--acme--tiny", hub);
  write_text(at_path("%s/refs/main", dir), COMMIT_B);
  write_text(at_path("%s/blobs/0123abcd", dir), "{\"from\": \"huggingface_hub\"}");
  kaun_cache_mkdirs(at_path("%s/snapshots/%s/sub", dir, COMMIT_B), &err);
  CU_ASSERT_EQUAL(
      symlink("../../../blobs/0123abcd", at_path("%s/snapshots/%s/sub/config.json", dir, COMMIT_B)),
      0);
  o = opts(hub, NULL);
  o.offline = 1;
  ASSERT_OK(kaun_hf_download_file("acme/tiny", "sub/config.json", &o, &g, &err), err);
  CU_ASSERT_STRING_EQUAL(g.commit, COMMIT_B);
  CU_ASSERT_STRING_EQUAL(g.etag, "0123abcd");
  char *text = read_text(g.path);
  CU_ASSERT_STRING_EQUAL(text, "{\"from\": \"huggingface_hub\"}");
  free(text);
}

static void test_errors(void) {
  kaun_error err = KAUN_ERROR_INIT;
  const char *cache = new_cache();
  kaun_hf_options o = opts(cache, NULL);
  kaun_hf_file f;
  test_server_reset(&server);
  /* refused before any request */
  ASSERT_FAILS(kaun_hf_download_file("org/model", "../x", &o, &f, &err), err, KAUN_EINVAL,
               "'../x' is refused");
  ASSERT_FAILS(kaun_hf_download_file("org/model", "/etc/passwd", &o, &f, &err), err, KAUN_EINVAL,
               "'/etc/passwd' is refused");
  ASSERT_FAILS(kaun_hf_download_file("org/model", "a/../../b", &o, &f, &err), err, KAUN_EINVAL,
               "refused");
  ASSERT_FAILS(kaun_hf_download_file("org/../model", "x", &o, &f, &err), err, KAUN_EINVAL,
               "not a valid repo id");
  ASSERT_FAILS(kaun_hf_download_file("a/b/c", "x", &o, &f, &err), err, KAUN_EINVAL,
               "'a/b/c' is not a valid repo id");
  o.revision = "../../etc";
  ASSERT_FAILS(kaun_hf_download_file("org/model", "x", &o, &f, &err), err, KAUN_EINVAL,
               "revision '../../etc' is refused");
  o.revision = NULL;
  CU_ASSERT_EQUAL(test_server_stat(&server, "requests"), 0);
  /* the Hub's errors */
  ASSERT_FAILS(kaun_hf_download_file("org/absent", "config.json", &o, &f, &err), err, KAUN_EAUTH,
               "repository org/absent not found, or private: set HF_TOKEN");
  CU_ASSERT_EQUAL(err.http_status, 401);
  CU_ASSERT(strstr(err.message, "request id req-") != NULL);
  ASSERT_FAILS(kaun_hf_download_file("org/private", "config.json", &o, &f, &err), err, KAUN_EAUTH,
               "org/private not found, or private");
  o.token = "hf_other";
  ASSERT_FAILS(kaun_hf_download_file("org/private", "config.json", &o, &f, &err), err, KAUN_ENOENT,
               "repository org/private not found (or this token has no access");
  CU_ASSERT_EQUAL(err.http_status, 404);
  ASSERT_FAILS(kaun_hf_download_file("org/gated", "config.json", &o, &f, &err), err, KAUN_EAUTH,
               "org/gated is gated: accept its terms");
  CU_ASSERT_EQUAL(err.http_status, 403);
  o.token = "";
  ASSERT_FAILS(kaun_hf_download_file("org/gated", "config.json", &o, &f, &err), err, KAUN_EAUTH,
               "is gated");
  o.token = "hf_bad";
  ASSERT_FAILS(kaun_hf_download_file("org/model", "config.json", &o, &f, &err), err, KAUN_EAUTH,
               "the token was rejected");
  CU_ASSERT(strstr(err.message, "hf_bad") == NULL); /* no secret in messages */
  o.token = "hf_good";
  ASSERT_OK(kaun_hf_download_file("org/private", "config.json", &o, &f, &err), err);
  ASSERT_OK(kaun_hf_download_file("org/gated", "config.json", &o, &f, &err), err);
  o.token = "";
  o.revision = "nope";
  ASSERT_FAILS(kaun_hf_download_file("org/model", "config.json", &o, &f, &err), err, KAUN_ENOENT,
               "org/model has no revision 'nope'");
  /* a whole repo's listing says what the Hub said, as a file's download */
  char **files = NULL;
  size_t nfiles = 0;
  ASSERT_FAILS(kaun_hf_list_files("org/model", &o, &files, &nfiles, NULL, &err), err, KAUN_ENOENT,
               "org/model has no revision 'nope'");
  o.revision = NULL;
  ASSERT_FAILS(kaun_hf_list_files("org/absent", &o, &files, &nfiles, NULL, &err), err, KAUN_EAUTH,
               "repository org/absent not found, or private: set HF_TOKEN");
  ASSERT_FAILS(kaun_hf_list_files("org/gated", &o, &files, &nfiles, NULL, &err), err, KAUN_EAUTH,
               "org/gated is gated: accept its terms");
  CU_ASSERT_PTR_NULL(files);
  ASSERT_FAILS(kaun_hf_download_file("org/model", "absent.json", &o, &f, &err), err, KAUN_ENOENT,
               "org/model has no file 'absent.json' at revision 'main'");
  CU_ASSERT(exists(at_path("%s/models--org--model/.no_exist/%s/absent.json", cache, COMMIT_A)));
  /* rate limited, for good: retried, then a message saying when to retry */
  test_server_reset(&server);
  test_server_faults(&server,
                     "[{\"path\": \"*\", \"status\": 429, \"retry_after\": \"7\", "
                     "\"count\": -1}]");
  ASSERT_FAILS(kaun_hf_download_file("org/model", "model.safetensors", &o, &f, &err), err,
               KAUN_ETRANSIENT, "rate limited");
  CU_ASSERT(strstr(err.message, "retry after 7 s") != NULL);
  CU_ASSERT_EQUAL(test_server_stat(&server, "requests"), 4); /* max_attempts */
  /* not a Hub: no X-Repo-Commit; a size of 0 */
  test_server_reset(&server);
  test_server_faults(&server, "[{\"path\": \"*\", \"no_commit\": true, \"count\": -1}]");
  ASSERT_FAILS(kaun_hf_download_file("org/model", "model.safetensors", &o, &f, &err), err, KAUN_EIO,
               "without X-Repo-Commit");
  /* an absolute redirect is read, not followed: without X-Linked-Size its
   * Content-Length (the redirect body's) is not taken for the file's */
  test_server_reset(&server);
  test_server_faults(&server, "[{\"path\": \"*\", \"no_linked\": true, \"count\": -1}]");
  ASSERT_FAILS(kaun_hf_download_file("org/model", "model.safetensors", &o, &f, &err), err, KAUN_EIO,
               "without X-Linked-Size or Content-Length");
  CU_ASSERT_EQUAL(test_server_stat(&server, "requests"), 1);
  test_server_reset(&server);
  test_server_faults(&server, "[{\"path\": \"*\", \"size_zero\": true, \"count\": -1}]");
  ASSERT_FAILS(kaun_hf_download_file("org/model", "model.safetensors", &o, &f, &err), err, KAUN_EIO,
               "announced 0 bytes");
  test_server_reset(&server);
}

/* The token goes to the Hub, never to the CDN (which refuses it). */
static void test_token_stays_on_origin(void) {
  kaun_error err = KAUN_ERROR_INIT;
  const char *cache = new_cache();
  kaun_hf_options o = opts(cache, NULL);
  o.token = "hf_good";
  kaun_hf_file f;
  test_server_reset(&server);
  test_server_faults(&server, "[{\"path\": \"*\", \"record\": true, \"count\": -1}]");
  ASSERT_OK(kaun_hf_download_file("org/private", "model.safetensors", &o, &f, &err), err);
  ASSERT_OK(kaun_hf_download_file("org/private", "config.json", &o, &f, &err), err);
  char seen[65536];
  test_server_control(&server, KAUN_HTTP_GET, "seen", NULL, seen, sizeof seen);
  /* requests to the CDN port carry no Authorization; the Hub's do */
  char cdn[64], hub[64];
  snprintf(cdn, sizeof cdn, "\"port\": %d", cdn_port);
  snprintf(hub, sizeof hub, "\"port\": %d", server.port);
  int cdn_requests = 0, hub_requests = 0;
  for (const char *p = strstr(seen, "{\"method\""); p; p = strstr(p + 1, "{\"method\"")) {
    const char *next = strstr(p + 1, "{\"method\"");
    size_t len = next ? (size_t)(next - p) : strlen(p);
    char entry[8192];
    snprintf(entry, sizeof entry, "%.*s", (int)(len < sizeof entry ? len : sizeof entry - 1), p);
    if (strstr(entry, cdn)) {
      cdn_requests++;
      CU_ASSERT(strstr(entry, "authorization") == NULL);
    } else if (strstr(entry, hub)) {
      hub_requests++;
      CU_ASSERT(strstr(entry, "\"authorization\": \"Bearer hf_good\"") != NULL);
      CU_ASSERT(strstr(entry, "\"accept-encoding\": \"identity\"") != NULL);
      CU_ASSERT(strstr(entry, "\"user-agent\": \"kaun/") != NULL);
    }
  }
  CU_ASSERT_EQUAL(cdn_requests, 1);
  CU_ASSERT(hub_requests >= 3); /* HEAD lfs, HEAD + 307 hop, GET of the regular file */
  test_server_reset(&server);
  /* where the token and endpoint come from: HF_TOKEN, then the token file;
   * HF_ENDPOINT (a trailing '/' dropped) */
  o = opts(new_cache(), NULL);
  o.token = NULL;
  o.endpoint = NULL;
  setenv("HF_ENDPOINT", at_path("%s/", server.url), 1);
  ASSERT_FAILS(kaun_hf_download_file("org/private", "config.json", &o, &f, &err), err, KAUN_EAUTH,
               "set HF_TOKEN");
  setenv("HF_TOKEN", "hf_good", 1);
  ASSERT_OK(kaun_hf_download_file("org/private", "config.json", &o, &f, &err), err);
  unsetenv("HF_TOKEN");
  o.cache_dir = new_cache();
  write_text(at_path("%s/hfhome/token", work), "  hf_good\n");
  setenv("HF_HOME", at_path("%s/hfhome", work), 1);
  ASSERT_OK(kaun_hf_download_file("org/private", "config.json", &o, &f, &err), err);
  setenv("HF_HOME", "/nonexistent-kaun-hf-home", 1);
  unsetenv("HF_ENDPOINT");
  /* a dataset */
  o = opts(new_cache(), NULL);
  o.repo_type = "dataset";
  ASSERT_OK(kaun_hf_download_file("org/data", "train.csv", &o, &f, &err), err);
  CU_ASSERT(strstr(f.path, "/datasets--org--data/snapshots/" COMMIT_A "/train.csv") != NULL);
}

/* Cuts, 5xx, ignored ranges, wrong bodies. */
static void test_transfers(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_hf_file f;
  char sha[80];
  digest(at_path("%s/repos/org/big/%s/weights.bin", root, COMMIT_A), "sha256", sha);
  /* a dropped connection resumes with Range */
  kaun_hf_options o = opts(new_cache(), NULL);
  test_server_reset(&server);
  test_server_faults(&server,
                     "[{\"path\": \"/cdn/*\", \"method\": \"GET\", \"reset_after\": "
                     "1000000, \"record\": true}, {\"path\": \"/cdn/*\", \"record\": "
                     "true, \"count\": -1}]");
  ASSERT_OK(kaun_hf_download_file("org/big", "weights.bin", &o, &f, &err), err);
  CU_ASSERT_EQUAL(f.size, BIG_SIZE);
  char seen[65536];
  test_server_control(&server, KAUN_HTTP_GET, "seen", NULL, seen, sizeof seen);
  CU_ASSERT(strstr(seen, "\"range\": \"bytes=") != NULL);
  long long sent = test_server_stat(&server, "bytes_sent");
  CU_ASSERT(sent >= BIG_SIZE && sent < BIG_SIZE + (2 << 20));
  /* 503 twice on the HEAD, and a server that ignores Range after a cut */
  o = opts(new_cache(), NULL);
  test_server_reset(&server);
  test_server_faults(&server,
                     "[{\"path\": \"/org/big/resolve/*\", \"status\": 503, \"count\": 2}, "
                     "{\"path\": \"/cdn/*\", \"method\": \"GET\", \"reset_after\": 500000}, "
                     "{\"path\": \"/cdn/*\", \"ignore_range\": true, \"count\": -1}]");
  ASSERT_OK(kaun_hf_download_file("org/big", "weights.bin", &o, &f, &err), err);
  char got[80];
  digest(f.path, "sha256", got);
  CU_ASSERT_STRING_EQUAL(got, sha);
  /* a resume answered 416: a clear error showing the range */
  o = opts(new_cache(), NULL);
  test_server_reset(&server);
  test_server_faults(&server,
                     "[{\"path\": \"/cdn/*\", \"method\": \"GET\", \"reset_after\": "
                     "500000}, {\"path\": \"/cdn/*\", \"method\": \"GET\", \"status\": 416, "
                     "\"skip\": 1, \"count\": -1}]");
  ASSERT_FAILS(kaun_hf_download_file("org/big", "weights.bin", &o, &f, &err), err, KAUN_EIO,
               "bytes=500000-");
  /* a body that is not what its etag says: an error, and nothing cached */
  const char *cache = new_cache();
  o = opts(cache, NULL);
  test_server_reset(&server);
  test_server_faults(&server, "[{\"path\": \"/cdn/*\", \"wrong_hash\": true, \"count\": -1}]");
  ASSERT_FAILS(kaun_hf_download_file("org/model", "model.safetensors", &o, &f, &err), err,
               KAUN_ECHECKSUM, "model.safetensors");
  test_server_reset(&server);
  test_server_faults(&server,
                     "[{\"path\": \"/api/resolve-cache/*\", \"method\": \"GET\", "
                     "\"wrong_hash\": true, \"count\": -1}]");
  ASSERT_FAILS(kaun_hf_download_file("org/model", "config.json", &o, &f, &err), err, KAUN_ECHECKSUM,
               "config.json");
  char cmd[8400], out[64] = "";
  snprintf(cmd, sizeof cmd, "find '%s' -path '*blobs*' -type f | wc -l", cache);
  FILE *p = popen(cmd, "r");
  CU_ASSERT_PTR_NOT_NULL(fgets(out, sizeof out, p));
  pclose(p);
  CU_ASSERT_EQUAL(atoi(out), 0);
  CU_ASSERT_FALSE(
      exists(at_path("%s/models--org--model/snapshots/%s/config.json", cache, COMMIT_A)));
  test_server_reset(&server);
}

/* kill -9 in the middle of a download leaves nothing served as complete;
 * a lock held by someone else is waited for, boundedly, naming them. */
static void test_kill_and_locks(void) {
  kaun_error err = KAUN_ERROR_INIT;
  const char *cache = new_cache();
  kaun_hf_options o = opts(cache, NULL);
  kaun_hf_file f;
  char sha[80];
  digest(at_path("%s/repos/org/big/%s/weights.bin", root, COMMIT_A), "sha256", sha);
  test_server_reset(&server);
  test_server_faults(&server,
                     "[{\"path\": \"/cdn/*\", \"drip_bytes\": 262144, "
                     "\"drip_interval\": 0.05, \"count\": 1}]");
  pid_t pid = fork();
  if (pid == 0) {
    kaun_error e = KAUN_ERROR_INIT;
    kaun_hf_file ff;
    _exit(kaun_hf_download_file("org/big", "weights.bin", &o, &ff, &e) ? 1 : 0);
  }
  for (int i = 0; i < 100 && test_server_stat(&server, "bytes_sent") < (1 << 20); i++) {
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  kill(pid, SIGKILL);
  int status;
  waitpid(pid, &status, 0);
  CU_ASSERT(WIFSIGNALED(status));
  CU_ASSERT_FALSE(exists(at_path("%s/models--org--big/blobs/%s", cache, sha)));
  CU_ASSERT_FALSE(exists(at_path("%s/models--org--big/snapshots/%s/weights.bin", cache, COMMIT_A)));
  ASSERT_OK(kaun_hf_download_file("org/big", "weights.bin", &o, &f, &err), err);
  char got[80];
  digest(f.path, "sha256", got);
  CU_ASSERT_STRING_EQUAL(got, sha);
  /* the killed writer's temporary was cleaned up under the lock */
  char cmd[8400], out[64] = "";
  snprintf(cmd, sizeof cmd, "find '%s' -name '*.incomplete' | wc -l", cache);
  FILE *p = popen(cmd, "r");
  CU_ASSERT_PTR_NOT_NULL(fgets(out, sizeof out, p));
  pclose(p);
  CU_ASSERT_EQUAL(atoi(out), 0);
  /* a lock held elsewhere: a bounded wait naming the holder */
  const char *cache2 = new_cache();
  o = opts(cache2, NULL);
  o.lock_timeout_ms = 300;
  struct kaun_cache_lock *lock;
  ASSERT_OK(
      kaun_cache_lock(at_path("%s/.locks/models--org--big/%s.lock", cache2, sha), 0, &lock, &err),
      err);
  char pidtext[32];
  snprintf(pidtext, sizeof pidtext, "pid %d", (int)getpid());
  ASSERT_FAILS(kaun_hf_download_file("org/big", "weights.bin", &o, &f, &err), err, KAUN_ETRANSIENT,
               pidtext);
  kaun_cache_unlock(lock);
  test_server_reset(&server);
}

/* Peak memory of a child that downloads `file` (NULL: does nothing). */
static long child_rss_kib(const char *cache, const char *file) {
  kaun_hf_options o = opts(cache, NULL);
  pid_t pid = fork();
  if (pid == 0) {
    kaun_error e = KAUN_ERROR_INIT;
    kaun_hf_file ff;
    _exit(file && kaun_hf_download_file("org/huge", file, &o, &ff, &e) ? 1 : 0);
  }
  int status;
  struct rusage ru;
  if (wait4(pid, &status, 0, &ru) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
    return -1;
  return ru.ru_maxrss;
}

/* Memory stays bounded whatever the size: 48 MiB stream to disk. */
static void test_memory_bounded(void) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  fprintf(stderr, "SKIPPED under a sanitizer (its shadow memory is not the program's) ");
  return;
#endif
  const char *cache = new_cache();
  long base = child_rss_kib(cache, NULL);
  long got = child_rss_kib(cache, "huge.bin");
  CU_ASSERT(base > 0 && got > 0);
  fprintf(stderr, "(peak RSS %ld KiB over a %ld KiB baseline, for a 49152 KiB file) ", got - base,
          base);
  CU_ASSERT(got - base < 16 << 10);
  CU_ASSERT(exists(at_path("%s/models--org--huge/snapshots/%s/huge.bin", cache, COMMIT_A)));
}

typedef struct seen_progress {
  uint64_t done, stop_after;
  int calls;
} seen_progress;

static int on_progress(const kaun_progress *p, void *user) {
  seen_progress *sp = user;
  sp->done = p->done;
  sp->calls++;
  return sp->stop_after && p->done >= sp->stop_after;
}

/* Progress reaches the caller's io; a cancel stops and leaves nothing. */
static void test_progress_and_cancel(void) {
  kaun_error err = KAUN_ERROR_INIT;
  const char *cache = new_cache();
  kaun_hf_options o = opts(cache, NULL);
  seen_progress sp = {0, 0, 0};
  kaun_io *io;
  ASSERT_OK(kaun_io_new(on_progress, &sp, &io, &err), err);
  o.io = io;
  kaun_hf_file f;
  ASSERT_OK(kaun_hf_download_file("org/big", "weights.bin", &o, &f, &err), err);
  CU_ASSERT_EQUAL(sp.done, BIG_SIZE);
  CU_ASSERT(sp.calls > 1);
  kaun_io_free(io);
  const char *cache2 = new_cache();
  o = opts(cache2, NULL);
  seen_progress stop = {0, 1u << 20, 0};
  ASSERT_OK(kaun_io_new(on_progress, &stop, &io, &err), err);
  o.io = io;
  test_server_faults(&server,
                     "[{\"path\": \"/cdn/*\", \"drip_bytes\": 262144, "
                     "\"drip_interval\": 0.02, \"count\": 1}]");
  ASSERT_FAILS(kaun_hf_download_file("org/big", "weights.bin", &o, &f, &err), err, KAUN_ECANCELED,
               "weights.bin");
  kaun_io_free(io);
  char cmd[8400], out[64] = "";
  snprintf(cmd, sizeof cmd, "find '%s' -type f ! -name '*.lock' | wc -l", cache2);
  FILE *p = popen(cmd, "r");
  CU_ASSERT_PTR_NOT_NULL(fgets(out, sizeof out, p));
  pclose(p);
  CU_ASSERT_EQUAL(atoi(out), 0);
  test_server_reset(&server);
}

/* Blobs of nothing but files under `cache`, counted (locks excluded). */
static int files_under(const char *cache, const char *what) {
  char cmd[8400], out[64] = "";
  snprintf(cmd, sizeof cmd, "find '%s' %s -type f ! -name '*.lock' | wc -l", cache, what);
  FILE *p = popen(cmd, "r");
  if (!p || !fgets(out, sizeof out, p)) out[0] = 0;
  if (p) pclose(p);
  return atoi(out);
}

/* Large files come as parallel ranged GETs, each written at its place and
 * hashed while the rest arrives; faults in one part are that part's to
 * retry; a server that ignores Range gets one more request, not one per
 * part; a wrong body or a cancel leaves nothing. */
/* Downloads org/big/weights.bin into a new cache with the fault `rules`
 * (NULL: none) armed; the file must hash to `sha`.  Returns the requests
 * the CDN saw for `cdn`. */
static long long parts_download(kaun_hf_options *o, const char *rules, const char *sha,
                                const char *cdn) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_hf_file f;
  char got[80];
  o->cache_dir = new_cache();
  test_server_reset(&server);
  if (rules) test_server_faults(&server, rules);
  ASSERT_OK(kaun_hf_download_file("org/big", "weights.bin", o, &f, &err), err);
  digest(f.path, "sha256", got);
  CU_ASSERT_STRING_EQUAL(got, sha);
  return path_count(cdn);
}

static void test_parallel_parts(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_hf_file f;
  char sha[80], cdn[200];
  digest(at_path("%s/repos/org/big/%s/weights.bin", root, COMMIT_A), "sha256", sha);
  snprintf(cdn, sizeof cdn, "/cdn/%s", sha);
  /* 6 parts of 1 MiB, 3 at a time */
  kaun_hf_options o = opts(NULL, NULL);
  o.part_size = 1u << 20;
  o.connections = 3;
  CU_ASSERT_EQUAL(parts_download(&o, NULL, sha, cdn), 6);
  CU_ASSERT_EQUAL(test_server_stat(&server, "bytes_sent"), BIG_SIZE);
  /* the third part's connection drops half-way: that part resumes */
  CU_ASSERT_EQUAL(parts_download(&o,
                                 "[{\"path\": \"/cdn/*\", \"method\": \"GET\", \"skip\": 2, "
                                 "\"reset_after\": 500000}]",
                                 sha, cdn),
                  7);
  /* a server that ignores Range: the first part's 200 says so, the rest
   * comes in one more request */
  CU_ASSERT_EQUAL(
      parts_download(&o, "[{\"path\": \"/cdn/*\", \"ignore_range\": true, \"count\": -1}]", sha,
                     cdn),
      2);
  /* ranges honoured for the first part only: the next parts stop at their
   * headers and the file comes once more in one stream (not once per part) */
  o.part_size = 256 << 10; /* 24 parts */
  parts_download(&o,
                 "[{\"path\": \"/cdn/*\", \"method\": \"GET\", \"skip\": 1, "
                 "\"ignore_range\": true, \"count\": -1}]",
                 sha, cdn);
  long long sent = test_server_stat(&server, "bytes_sent");
  fprintf(stderr, "(ranges once: %lld bytes sent for %u) ", sent, BIG_SIZE);
  CU_ASSERT(sent < 3LL * BIG_SIZE); /* cut down part by part: 12.5 times the file */
  /* a 206 around every range asked: the same */
  CU_ASSERT_EQUAL(
      parts_download(&o, "[{\"path\": \"/cdn/*\", \"whole_206\": true, \"count\": -1}]", sha, cdn),
      2);
  /* the CDN's file changes after the first part: the others are pinned to
   * its ETag (If-Match) and refused; nothing cached */
  const char *changed = new_cache();
  o.cache_dir = changed;
  test_server_reset(&server);
  test_server_faults(&server,
                     "[{\"path\": \"/cdn/*\", \"method\": \"GET\", \"skip\": 1, "
                     "\"etag\": \"\\\"another-version\\\"\", \"count\": -1}]");
  ASSERT_FAILS(kaun_hf_download_file("org/big", "weights.bin", &o, &f, &err), err, KAUN_ECHANGED,
               "weights.bin");
  CU_ASSERT_EQUAL(files_under(changed, ""), 0);
  o.part_size = 1u << 20;
  /* bytes that are not what the etag says (the server flips the first
   * one): KAUN_ECHECKSUM, nothing cached */
  const char *cache = new_cache();
  o.cache_dir = cache;
  test_server_reset(&server);
  test_server_faults(&server,
                     "[{\"path\": \"/cdn/*\", \"method\": \"GET\", \"wrong_hash\": true}]");
  ASSERT_FAILS(kaun_hf_download_file("org/big", "weights.bin", &o, &f, &err), err, KAUN_ECHECKSUM,
               "weights.bin");
  CU_ASSERT_EQUAL(files_under(cache, ""), 0);
  /* a part answered 416: a clear error naming its range, nothing cached */
  cache = new_cache();
  o.cache_dir = cache;
  test_server_reset(&server);
  test_server_faults(&server,
                     "[{\"path\": \"/cdn/*\", \"method\": \"GET\", \"skip\": 3, "
                     "\"status\": 416, \"count\": -1}]");
  ASSERT_FAILS(kaun_hf_download_file("org/big", "weights.bin", &o, &f, &err), err, KAUN_EIO,
               "bytes=");
  CU_ASSERT_EQUAL(files_under(cache, ""), 0);
  /* a cancel half-way through the parts */
  cache = new_cache();
  o.cache_dir = cache;
  kaun_io *io;
  seen_progress stop = {0, 2u << 20, 0};
  ASSERT_OK(kaun_io_new(on_progress, &stop, &io, &err), err);
  o.io = io;
  test_server_reset(&server);
  test_server_faults(&server,
                     "[{\"path\": \"/cdn/*\", \"drip_bytes\": 262144, "
                     "\"drip_interval\": 0.02, \"count\": -1}]");
  ASSERT_FAILS(kaun_hf_download_file("org/big", "weights.bin", &o, &f, &err), err, KAUN_ECANCELED,
               "weights.bin");
  kaun_io_free(io);
  CU_ASSERT_EQUAL(files_under(cache, ""), 0);
  test_server_reset(&server);
}

/* Retry-After is honoured (within retry_max_ms). */
static void test_retry_after(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_hf_options o = opts(new_cache(), NULL);
  o.retry_max_ms = 3000;
  kaun_hf_file f;
  test_server_reset(&server);
  test_server_faults(&server,
                     "[{\"path\": \"/org/model/resolve/*\", \"status\": 429, "
                     "\"retry_after\": \"1\"}]");
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  ASSERT_OK(kaun_hf_download_file("org/model", "config.json", &o, &f, &err), err);
  clock_gettime(CLOCK_MONOTONIC, &b);
  double s = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
  CU_ASSERT(s >= 0.9);
  test_server_reset(&server);
}

/* 8 processes at once: one transfer, 8 successes, one blob. */
static void test_eight_processes(void) {
  const char *cache = new_cache();
  kaun_hf_options o = opts(cache, NULL);
  char sha[80];
  digest(at_path("%s/repos/org/big/%s/weights.bin", root, COMMIT_A), "sha256", sha);
  test_server_reset(&server);
  test_server_faults(&server,
                     "[{\"path\": \"/cdn/*\", \"drip_bytes\": 1048576, "
                     "\"drip_interval\": 0.1, \"count\": -1}]");
  pid_t pids[8];
  for (int i = 0; i < 8; i++) {
    pids[i] = fork();
    if (pids[i] == 0) {
      kaun_error e = KAUN_ERROR_INIT;
      kaun_hf_file ff;
      int rc = kaun_hf_download_file("org/big", "weights.bin", &o, &ff, &e);
      if (rc) fprintf(stderr, "child: %s\n", e.message);
      _exit(rc ? 1 : 0);
    }
  }
  int ok = 0;
  for (int i = 0; i < 8; i++) {
    int status;
    waitpid(pids[i], &status, 0);
    ok += WIFEXITED(status) && WEXITSTATUS(status) == 0;
  }
  CU_ASSERT_EQUAL(ok, 8);
  CU_ASSERT_EQUAL(path_count(at_path("/cdn/%s", sha)), 1);
  CU_ASSERT(test_server_stat(&server, "bytes_sent") < 2 * (long long)BIG_SIZE);
  char cmd[8400], out[64] = "";
  snprintf(cmd, sizeof cmd, "ls -A '%s/models--org--big/blobs' | wc -l", cache);
  FILE *p = popen(cmd, "r");
  CU_ASSERT_PTR_NOT_NULL(fgets(out, sizeof out, p));
  pclose(p);
  CU_ASSERT_EQUAL(atoi(out), 1);
  test_server_reset(&server);
}

/* ---- the hf backend ------------------------------------------------------------------- */

static kaun_context *hub_context(const char *cache, const char *extra) {
  snprintf(config, sizeof config, "%s/config%u.json", work, ncache);
  FILE *f = fopen(config, "w");
  fprintf(f,
          "{\"backends\": {\"hf\": {\"plugin\": \"hf\", \"endpoint\": \"%s\", \"cache_dir\": "
          "\"%s\", \"retry_base_ms\": 5, \"retry_max_ms\": 50%s}}}\n",
          server.url, cache, extra);
  fclose(f);
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx = NULL;
  ASSERT_OK(kaun_context_new(config, &ctx, &err), err);
  return ctx;
}

static float at(const kaun_tensor *t, size_t i) { return ((const float *)kaun_tensor_data(t))[i]; }

static void test_backend(void) {
  kaun_error err = KAUN_ERROR_INIT;
  const char *cache = new_cache();
  kaun_context *ctx = hub_context(cache, "");
  kaun_flat *flat;
  ASSERT_OK(kaun_checkpoint_load_flat(ctx, "hf://org/model", 0, &flat, &err), err);
  CU_ASSERT_EQUAL(kaun_flat_count(flat), 3);
  CU_ASSERT_EQUAL(at(kaun_flat_find(flat, "w2"), 3), 23.0f);
  CU_ASSERT(kaun_tensor_is_view(kaun_flat_find(flat, "w2"))); /* zero-copy from the blob */
  kaun_flat_free(flat);
  ASSERT_OK(kaun_checkpoint_load_flat(ctx, "hf://org/model@v1/model.safetensors", 0, &flat, &err),
            err);
  kaun_flat_free(flat);
  kaun_object *obj;
  ASSERT_OK(kaun_object_open(ctx, "hf://gpt9@main/config.json", &obj, &err), err);
  kaun_stat st = {.struct_size = sizeof st};
  ASSERT_OK(kaun_object_stat(obj, &st, &err), err);
  CU_ASSERT(strstr(st.local_path, "/models--gpt9/snapshots/" COMMIT_A "/config.json") != NULL);
  char buf[8] = {0};
  ASSERT_OK(kaun_object_read(obj, 2, buf, 6, &err), err);
  CU_ASSERT_STRING_EQUAL(buf, "legacy");
  kaun_object_close(obj);
  ASSERT_FAILS(kaun_object_open(ctx, "hf://org/model/absent.bin", &obj, &err), err, KAUN_ENOENT,
               "no file 'absent.bin'");
  ASSERT_FAILS(kaun_object_open(ctx, "hf://org/model/../x", &obj, &err), err, KAUN_EINVAL,
               "refused");
  /* a sharded model: every shard at the index's commit, even if main moves */
  test_server_reset(&server);
  ASSERT_OK(kaun_checkpoint_load_flat(ctx, "hf://org/sharded", 0, &flat, &err), err);
  CU_ASSERT_EQUAL(kaun_flat_count(flat), 6);
  CU_ASSERT_EQUAL(at(kaun_flat_find(flat, "c1"), 0), 210.0f);
  kaun_flat_free(flat);
  CU_ASSERT_EQUAL(path_count("/org/sharded/resolve/" COMMIT_C "/model-00002-of-00003.safetensors"),
                  1);
  CU_ASSERT_EQUAL(path_count("/org/sharded/resolve/main/model-00002-of-00003.safetensors"), 0);
  /* main moves to D; a new context sees D everywhere */
  write_text(at_path("%s/repos/org/sharded/repo.json", root),
             "{\"refs\": {\"main\": \"" COMMIT_D "\"}}");
  kaun_context_free(ctx);
  ctx = hub_context(cache, "");
  ASSERT_OK(kaun_checkpoint_load_flat(ctx, "hf://org/sharded", 0, &flat, &err), err);
  CU_ASSERT_EQUAL(at(kaun_flat_find(flat, "c1"), 0), 710.0f);
  CU_ASSERT_EQUAL(at(kaun_flat_find(flat, "a0"), 0), 500.0f);
  kaun_flat_free(flat);
  write_text(at_path("%s/repos/org/sharded/repo.json", root),
             "{\"refs\": {\"main\": \"" COMMIT_C "\"}}");
  kaun_context_free(ctx);
  /* the CLI on Hub URIs */
  char cmd[16384], *text;
  snprintf(cmd, sizeof cmd, "\"%s\" --config \"%s\" ls hf://org/sharded > \"%s/ls.out\" 2>&1",
           getenv("KAUN_BIN"), config, work);
  CU_ASSERT_EQUAL(system(cmd), 0);
  text = read_text(at_path("%s/ls.out", work));
  CU_ASSERT_PTR_NOT_NULL(text);
  if (text) CU_ASSERT(strstr(text, "c1\tF32\t[4]") != NULL);
  if (text && !strstr(text, "c1\tF32\t[4]")) fprintf(stderr, "(kaun ls: %s) ", text);
  free(text);
  /* offline through the config */
  ctx = hub_context(cache, ", \"offline\": true");
  test_server_reset(&server);
  ASSERT_OK(kaun_checkpoint_load_flat(ctx, "hf://org/model", 0, &flat, &err), err);
  kaun_flat_free(flat);
  CU_ASSERT_EQUAL(test_server_stat(&server, "requests"), 0);
  kaun_context_free(ctx);
  /* clear one repo, then all */
  kaun_hf_options o = opts(cache, NULL);
  ASSERT_OK(kaun_hf_clear_cache("org/model", &o, &err), err);
  CU_ASSERT_FALSE(exists(at_path("%s/models--org--model", cache)));
  CU_ASSERT(exists(at_path("%s/models--org--sharded", cache)));
  FILE *keep = fopen(at_path("%s/version.txt", cache), "w"); /* another tool's file */
  CU_ASSERT_PTR_NOT_NULL_FATAL(keep);
  fclose(keep);
  CU_ASSERT(exists(at_path("%s/.locks/models--org--sharded", cache)));
  ASSERT_OK(kaun_hf_clear_cache(NULL, &o, &err), err);
  CU_ASSERT_FALSE(exists(at_path("%s/models--org--sharded", cache)));
  CU_ASSERT_FALSE(exists(at_path("%s/.locks/models--org--sharded", cache)));
  CU_ASSERT(exists(at_path("%s/version.txt", cache)));
  /* a .locks that is a link leads outside the cache: nothing is removed through it */
  char outside[4400];
  snprintf(outside, sizeof outside, "%s-outside", cache);
  CU_ASSERT_EQUAL_FATAL(mkdir(outside, 0755), 0);
  CU_ASSERT_EQUAL_FATAL(mkdir(at_path("%s/models--org--model", outside), 0755), 0);
  CU_ASSERT_EQUAL_FATAL(rename(at_path("%s/.locks", cache), at_path("%s/.locks-was", cache)), 0);
  CU_ASSERT_EQUAL_FATAL(symlink(outside, at_path("%s/.locks", cache)), 0);
  ASSERT_OK(kaun_hf_clear_cache(NULL, &o, &err), err);
  ASSERT_OK(kaun_hf_clear_cache("org/model", &o, &err), err);
  CU_ASSERT(exists(at_path("%s/models--org--model", outside)));
  ASSERT_FAILS(kaun_hf_clear_cache("bad//id", &o, &err), err, KAUN_EINVAL, "bad//id");
}

/* The backend downloads while it opens (ABI 1.2 open_io): the bytes reach
 * the context's progress callback, or the io given to kaun_object_open_io,
 * whose cancel stops the download and leaves nothing in the cache. */
static void test_backend_open_progress(void) {
  kaun_error err = KAUN_ERROR_INIT;
  const char *cache = new_cache();
  kaun_context *ctx = hub_context(cache, "");
  seen_progress sp = {0, 0, 0};
  kaun_context_set_progress(ctx, on_progress, &sp);
  kaun_object *obj;
  test_server_reset(&server);
  ASSERT_OK(kaun_object_open(ctx, "hf://org/big/weights.bin", &obj, &err), err);
  CU_ASSERT_EQUAL(sp.done, BIG_SIZE);
  CU_ASSERT(sp.calls > 1);
  kaun_object_close(obj);
  kaun_context_free(ctx);
  /* a cancel through the caller's io, half-way */
  const char *cache2 = new_cache();
  ctx = hub_context(cache2, ", \"part_size\": 1048576");
  seen_progress stop = {0, 2u << 20, 0};
  kaun_io *io;
  ASSERT_OK(kaun_io_new(on_progress, &stop, &io, &err), err);
  test_server_faults(&server,
                     "[{\"path\": \"/cdn/*\", \"drip_bytes\": 262144, "
                     "\"drip_interval\": 0.02, \"count\": -1}]");
  ASSERT_FAILS(kaun_object_open_io(ctx, "hf://org/big/weights.bin", io, &obj, &err), err,
               KAUN_ECANCELED, "weights.bin");
  CU_ASSERT_PTR_NULL(obj);
  CU_ASSERT(stop.done >= 2u << 20 && stop.done < BIG_SIZE);
  CU_ASSERT_EQUAL(files_under(cache2, ""), 0);
  kaun_io_free(io);
  kaun_context_free(ctx);
  test_server_reset(&server);
}

/* A load's io (kaun_load_options.io) sees the Hub download its open makes,
 * and canceling it stops that download, leaving nothing cached. */
static void test_load_io_reaches_download(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx = hub_context(new_cache(), "");
  seen_progress sp = {0, 0, 0};
  kaun_io *io;
  ASSERT_OK(kaun_io_new(on_progress, &sp, &io, &err), err);
  kaun_load_options o = {.struct_size = sizeof o, .io = io};
  kaun_flat *flat = NULL;
  ASSERT_OK(kaun_checkpoint_load_flat_ex(ctx, "hf://org/model", &o, &flat, &err), err);
  struct stat sb;
  CU_ASSERT_EQUAL(stat(at_path("%s/repos/org/model/%s/model.safetensors", root, COMMIT_A), &sb), 0);
  CU_ASSERT(sp.done >= (uint64_t)sb.st_size); /* the download, then the reads */
  kaun_flat_free(flat);
  kaun_io_free(io);
  kaun_context_free(ctx);
  const char *cache = new_cache();
  ctx = hub_context(cache, "");
  ASSERT_OK(kaun_io_new(NULL, NULL, &io, &err), err);
  kaun_io_cancel(io);
  o.io = io;
  ASSERT_FAILS(kaun_checkpoint_load_flat_ex(ctx, "hf://org/model", &o, &flat, &err), err,
               KAUN_ECANCELED, "org/model");
  CU_ASSERT_EQUAL(files_under(cache, "-path '*blobs*'"), 0);
  kaun_io_free(io);
  kaun_context_free(ctx);
}

static void test_api_loads(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_hf_options o = opts(new_cache(), NULL);
  struct json_object *cfg = NULL, *v;
  ASSERT_OK(kaun_hf_load_config("org/model", &o, &cfg, &err), err);
  CU_ASSERT_FATAL(json_object_object_get_ex(cfg, "hidden_size", &v));
  CU_ASSERT_EQUAL(json_object_get_int(v), 4);
  json_object_put(cfg);
  cfg = NULL;
  ASSERT_FAILS(kaun_hf_load_config("org/sharded", &o, &cfg, &err), err, KAUN_EIO,
               "org/sharded's config.json");
  CU_ASSERT_PTR_NULL(cfg);
  kaun_flat *flat = NULL;
  ASSERT_OK(kaun_hf_load_weights("org/model", &o, &flat, &err), err);
  CU_ASSERT_EQUAL(kaun_flat_count(flat), 3);
  kaun_flat_free(flat);
  test_server_reset(&server);
  ASSERT_OK(kaun_hf_load_weights("org/sharded", &o, &flat, &err), err);
  CU_ASSERT_EQUAL(kaun_flat_count(flat), 6);
  CU_ASSERT_EQUAL(((const float *)kaun_tensor_data(kaun_flat_find(flat, "b1")))[2], 112.0f);
  kaun_flat_free(flat);
  CU_ASSERT_EQUAL(path_count("/org/sharded/resolve/" COMMIT_C "/model-00003-of-00003.safetensors"),
                  1);
  flat = NULL;
  ASSERT_FAILS(kaun_hf_load_weights("gpt9", &o, &flat, &err), err, KAUN_ENOENT,
               "gpt9 has neither model.safetensors nor model.safetensors.index.json");
  CU_ASSERT_PTR_NULL(flat);
  /* offline: the sharded model from the cache alone */
  o.offline = 1;
  test_server_reset(&server);
  ASSERT_OK(kaun_hf_load_weights("org/sharded", &o, &flat, &err), err);
  CU_ASSERT_EQUAL(kaun_flat_count(flat), 6);
  kaun_flat_free(flat);
  CU_ASSERT_EQUAL(test_server_stat(&server, "requests"), 0);
}

static kaun_tensor *vec4(kaun_dtype dt, float base) {
  kaun_error err = KAUN_ERROR_INIT;
  const uint64_t shape[] = {4};
  float v[4] = {base, base + 1, base + 2, base + 3};
  kaun_tensor *t = NULL, *c = NULL;
  SETUP_OK(kaun_tensor_new_copy(KAUN_DTYPE_F32, 1, shape, v, sizeof v, &t, &err), err);
  SETUP_OK(kaun_tensor_cast(t, dt, &c, &err), err);
  kaun_tensor_free(t);
  return c;
}

/* Hub names onto the user's tree: strip a prefix, rename, cast; a
 * template key nothing maps to names the closest weights. */
static void test_name_mapping(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_flat *w;
  ASSERT_OK(kaun_flat_new(&w, &err), err);
  ASSERT_OK(kaun_flat_add(w, "bert.encoder.layer.0.attention.self.query.weight",
                          vec4(KAUN_DTYPE_F32, 1), &err),
            err);
  ASSERT_OK(kaun_flat_add(w, "bert.encoder.layer.0.attention.self.key.weight",
                          vec4(KAUN_DTYPE_F32, 10), &err),
            err);
  ASSERT_OK(kaun_flat_add(w, "bert.pooler.dense.weight", vec4(KAUN_DTYPE_F32, 20), &err), err);
  const kaun_hf_rename renames[] = {{"encoder.layer.", "encoder.layers."},
                                    {".attention.self.", "."}};
  kaun_hf_name_map map = {sizeof map, "bert.", NULL, renames, 2};
  char *name = kaun_hf_map_name(&map, "bert.encoder.layer.0.attention.self.query.weight");
  CU_ASSERT_STRING_EQUAL(name, "encoder.layers.0.query.weight");
  free(name);
  kaun_ptree *like, *got = NULL, *leaf;
  ASSERT_OK(kaun_ptree_new_record(&like, &err), err);
  ASSERT_OK(kaun_ptree_set(like, "encoder.layers.0.query.weight", vec4(KAUN_DTYPE_F64, 0), &err),
            err);
  ASSERT_OK(kaun_ptree_set(like, "encoder.layers.0.key.weight", vec4(KAUN_DTYPE_F32, 0), &err),
            err);
  ASSERT_OK(kaun_hf_fill_template(w, &map, like, &got, &err), err);
  ASSERT_OK(kaun_ptree_get(got, "encoder.layers.0.query.weight", &leaf, &err), err);
  CU_ASSERT_EQUAL(kaun_tensor_dtype(kaun_ptree_tensor(leaf)), KAUN_DTYPE_F64);
  CU_ASSERT_EQUAL(((const double *)kaun_tensor_data(kaun_ptree_tensor(leaf)))[2], 3.0);
  ASSERT_OK(kaun_ptree_get(got, "encoder.layers.0.key.weight", &leaf, &err), err);
  CU_ASSERT_EQUAL(((const float *)kaun_tensor_data(kaun_ptree_tensor(leaf)))[0], 10.0f);
  kaun_ptree_free(got);
  got = NULL;
  /* a key nothing maps to: the closest names, with where they came from */
  ASSERT_OK(kaun_ptree_set(like, "encoder.layers.0.value.weight", vec4(KAUN_DTYPE_F32, 0), &err),
            err);
  ASSERT_FAILS(
      kaun_hf_fill_template(w, &map, like, &got, &err), err, KAUN_EKEY,
      "no weight maps to the template's 'encoder.layers.0.value.weight'; the closest are "
      "'encoder.layers.0.query.weight' (from "
      "'bert.encoder.layer.0.attention.self.query.weight'), 'encoder.layers.0.key.weight'");
  CU_ASSERT_PTR_NULL(got);
  kaun_ptree_free(like);
  /* a shape that differs */
  ASSERT_OK(kaun_ptree_new_record(&like, &err), err);
  const uint64_t shape[] = {2, 2};
  kaun_tensor *t;
  ASSERT_OK(kaun_tensor_new(KAUN_DTYPE_F32, 2, shape, &t, &err), err);
  ASSERT_OK(kaun_ptree_set(like, "pooler.dense.weight", t, &err), err);
  ASSERT_FAILS(kaun_hf_fill_template(w, &map, like, &got, &err), err, KAUN_ESHAPE,
               "the template's 'pooler.dense.weight' is [2, 2] but the weight "
               "'bert.pooler.dense.weight' is [4]");
  kaun_ptree_free(like);
  kaun_flat_free(w);
}

/* The test server's JSON API (section 1): repo info, a paginated tree. */
static void test_server_api(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_http *http;
  ASSERT_OK(kaun_http_new(NULL, &http, &err), err);
  char url[512], *next = NULL;
  snprintf(url, sizeof url, "%s/api/models/org/sharded/revision/main", server.url);
  kaun_http_request r = KAUN_HTTP_REQUEST_INIT;
  r.url = url;
  r.body_to = KAUN_HTTP_BODY_ALLOC;
  kaun_http_response *resp = NULL;
  ASSERT_OK(kaun_http_perform(http, &r, &resp, &err), err);
  size_t len;
  const char *body = kaun_http_response_body(resp, &len);
  CU_ASSERT(strstr(body, "\"sha\": \"" COMMIT_C "\"") != NULL);
  CU_ASSERT(strstr(body, "model-00002-of-00003.safetensors") != NULL);
  kaun_http_response_free(resp);
  snprintf(url, sizeof url, "%s/api/models/org/sharded/tree/main?recursive=true", server.url);
  int pages = 0, lfs = 0;
  while (url[0] && pages < 10) {
    r.url = url;
    ASSERT_OK(kaun_http_perform(http, &r, &resp, &err), err);
    pages++;
    body = kaun_http_response_body(resp, &len);
    for (const char *p = strstr(body, "\"lfs\""); p; p = strstr(p + 1, "\"lfs\"")) lfs++;
    const char *link = kaun_http_response_header(resp, "Link");
    url[0] = 0;
    if (link && (next = strchr(link, '<')) && strchr(next, '>'))
      snprintf(url, sizeof url, "%.*s", (int)(strchr(next, '>') - next - 1), next + 1);
    kaun_http_response_free(resp);
  }
  CU_ASSERT_EQUAL(pages, 3); /* 5 files, 2 a page */
  CU_ASSERT_EQUAL(lfs, 3);
  kaun_http_free(http);
}

static void test_parse_path(void) {
  kaun_error err = KAUN_ERROR_INIT;
  char *repo, *rev, *file;
  ASSERT_OK(kaun_hf_parse_path("org/name/a/b.json", &repo, &rev, &file, &err), err);
  CU_ASSERT_STRING_EQUAL(repo, "org/name");
  CU_ASSERT_PTR_NULL(rev);
  CU_ASSERT_STRING_EQUAL(file, "a/b.json");
  free(repo), free(rev), free(file);
  ASSERT_OK(kaun_hf_parse_path("gpt2@refs%2Fpr%2F1/config.json", &repo, &rev, &file, &err), err);
  CU_ASSERT_STRING_EQUAL(repo, "gpt2");
  CU_ASSERT_STRING_EQUAL(rev, "refs/pr/1");
  CU_ASSERT_STRING_EQUAL(file, "config.json");
  free(repo), free(rev), free(file);
  ASSERT_OK(kaun_hf_parse_path("org/name", &repo, &rev, &file, &err), err);
  CU_ASSERT_PTR_NULL(file);
  free(repo), free(rev), free(file);
  ASSERT_FAILS(kaun_hf_parse_path("org/name@/x", &repo, &rev, &file, &err), err, KAUN_EURI,
               "revision after '@' is empty");
  ASSERT_FAILS(kaun_hf_parse_path("", &repo, &rev, &file, &err), err, KAUN_EURI, "hf://");
}

/* 8 processes run `kaun get` on the same sharded model (index, 3 shards,
 * config) with one shared cache: all succeed with the same snapshot, and
 * each blob crosses the wire once (the CDN counts each shard's GETs; the
 * small files' GETs are recorded). */
static void test_eight_processes_sharded(void) {
  /* the CLI's Hub cache is the config's cache_dir + /huggingface; the
   * endpoint comes from HF_ENDPOINT */
  const char *root_dir = new_cache();
  char cfg[4400], cache[4400];
  snprintf(cfg, sizeof cfg, "%s.json", root_dir);
  write_text(cfg, at_path("{\"cache_dir\": \"%s\"}\n", root_dir));
  snprintf(cache, sizeof cache, "%s/huggingface", root_dir);
  const char *shards[] = {"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                          "model-00003-of-00003.safetensors"};
  char cdn[3][128];
  for (int k = 0; k < 3; k++) {
    char sha[80];
    digest(at_path("%s/repos/org/sharded/%s/%s", root, COMMIT_C, shards[k]), "sha256", sha);
    snprintf(cdn[k], sizeof cdn[k], "/cdn/%s", sha);
  }
  /* each blob takes 300 ms to come: the 8 overlap */
  test_server_reset(&server);
  test_server_faults(&server,
                     "[{\"path\": \"/cdn/*\", \"method\": \"GET\", \"delay\": 0.3, "
                     "\"count\": -1}, {\"path\": \"/api/resolve-cache/*\", \"method\": "
                     "\"GET\", \"delay\": 0.3, \"count\": -1}, {\"path\": \"*\", "
                     "\"record\": true, \"count\": -1}]");
  const char *bin = getenv("KAUN_BIN");
  CU_ASSERT_PTR_NOT_NULL_FATAL(bin);
  const char *out = at_path("%s/get8.out", work);
  unlink(out);
  pid_t pids[8];
  for (int i = 0; i < 8; i++) {
    pids[i] = fork();
    if (pids[i] == 0) {
      int fd = open(out, O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) dup2(fd, 1);
      setenv("HF_ENDPOINT", server.url, 1);
      execl(bin, bin, "--config", cfg, "get", "hf://org/sharded", (char *)NULL);
      _exit(127);
    }
  }
  int ok = 0;
  for (int i = 0; i < 8; i++) {
    int status;
    waitpid(pids[i], &status, 0);
    ok += WIFEXITED(status) && WEXITSTATUS(status) == 0;
  }
  CU_ASSERT_EQUAL(ok, 8);
  /* 8 lines, one snapshot folder */
  char *text = read_text(out);
  CU_ASSERT_PTR_NOT_NULL_FATAL(text);
  int lines = 0, same = 1;
  const char *first = text;
  size_t len = strcspn(text, "\n");
  for (const char *p = text; *p; p += strcspn(p, "\n") + (p[strcspn(p, "\n")] != 0)) {
    lines++;
    same &= strcspn(p, "\n") == len && strncmp(p, first, len) == 0;
  }
  CU_ASSERT_EQUAL(lines, 8);
  CU_ASSERT(same);
  CU_ASSERT(strstr(text, "/models--org--sharded/snapshots/" COMMIT_C) != NULL);
  free(text);
  /* each blob once: the shards from the CDN, the index and config once each */
  for (int k = 0; k < 3; k++) CU_ASSERT_EQUAL(path_count(cdn[k]), 1);
  char *seen = malloc(1 << 20);
  CU_ASSERT_EQUAL(test_server_control(&server, KAUN_HTTP_GET, "seen", NULL, seen, 1 << 20), 0);
  const char *small[] = {"model.safetensors.index.json", "config.json"};
  for (int k = 0; k < 2; k++) {
    char needle[512];
    snprintf(needle, sizeof needle,
             "\"method\": \"GET\", \"path\": \"/api/resolve-cache/models/org/sharded/" COMMIT_C
             "/%s\"",
             small[k]);
    int gets = 0;
    for (const char *q = strstr(seen, needle); q; q = strstr(q + 1, needle)) gets++;
    if (gets != 1) fprintf(stderr, "\n  %s: %d GETs\n", small[k], gets);
    CU_ASSERT_EQUAL(gets, 1);
  }
  free(seen);
  /* 5 blobs, and the model loads from the cache alone */
  char cmd[8400], count[64] = "";
  snprintf(cmd, sizeof cmd, "ls -A '%s/models--org--sharded/blobs' | wc -l", cache);
  FILE *p = popen(cmd, "r");
  CU_ASSERT_PTR_NOT_NULL(fgets(count, sizeof count, p));
  pclose(p);
  CU_ASSERT_EQUAL(atoi(count), 5);
  kaun_error err = KAUN_ERROR_INIT;
  /* (at the commit: the whole-repo get does not write refs/main) */
  kaun_hf_options o = opts(cache, COMMIT_C);
  o.offline = 1;
  kaun_flat *flat = NULL;
  ASSERT_OK(kaun_hf_load_weights("org/sharded", &o, &flat, &err), err);
  CU_ASSERT_EQUAL(kaun_flat_count(flat), 6);
  kaun_flat_free(flat);
  test_server_reset(&server);
}

static int suite_init(void) {
  snprintf(work, sizeof work, "%s/kaun-hf-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  if (!mkdtemp(work)) return 1;
  snprintf(root, sizeof root, "%s/hub", work);
  make_repos();
  return hub_start() ? 1 : 0;
}

static int suite_clean(void) {
  test_server_stop(&server);
  char cmd[4200];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", work);
  return system(cmd) == 0 ? 0 : 1;
}

int main(void) {
  (void)test_server_start; /* hub.py starts differently: hub_start */
  char path[8192];
  snprintf(path, sizeof path, "%s:%s",
           getenv("KAUN_BUILT_PLUGINS") ? getenv("KAUN_BUILT_PLUGINS") : "",
           getenv("KAUN_TEST_PLUGINS") ? getenv("KAUN_TEST_PLUGINS") : "");
  setenv("KAUN_PLUGIN_PATH", path, 1);
  unsetenv("HF_TOKEN");
  unsetenv("HUGGING_FACE_HUB_TOKEN");
  unsetenv("HF_HUB_OFFLINE");
  unsetenv("HF_ENDPOINT");
  setenv("HF_HOME", "/nonexistent-kaun-hf-home", 1);
  if (CU_initialize_registry() != CUE_SUCCESS) return 1;
  CU_pSuite s = CU_add_suite("hf", suite_init, suite_clean);
  CU_add_test(s, "hf:// paths", test_parse_path);
  CU_add_test(s, "the test Hub's JSON API", test_server_api);
  CU_add_test(s, "the cache layout is huggingface_hub's", test_layout);
  CU_add_test(s, "commits, branches, tags, refs/pr, shared blobs", test_revisions);
  CU_add_test(s, "offline, and the Hub down: the cache answers", test_offline);
  CU_add_test(s, "errors: names, tokens, gates, revisions, files, 429", test_errors);
  CU_add_test(s, "the token never reaches the CDN", test_token_stays_on_origin);
  CU_add_test(s, "resumes, retries, ignored ranges, wrong hashes", test_transfers);
  CU_add_test(s, "kill -9 mid-download; bounded lock waits", test_kill_and_locks);
  CU_add_test(s, "8 processes: one transfer, one blob", test_eight_processes);
  CU_add_test(s, "a 48 MiB download stays within 16 MiB of memory", test_memory_bounded);
  CU_add_test(s, "Retry-After is honoured", test_retry_after);
  CU_add_test(s, "progress reaches the io; a cancel leaves nothing", test_progress_and_cancel);
  CU_add_test(s, "large files as parallel parts: faults, no Range, wrong bytes, cancel",
              test_parallel_parts);
  CU_add_test(s, "the backend's download while it opens: progress and cancel",
              test_backend_open_progress);
  CU_add_test(s, "a load's io reaches the download its open makes", test_load_io_reaches_download);
  CU_add_test(s, "kaun_hf_load_config, kaun_hf_load_weights", test_api_loads);
  CU_add_test(s, "Hub names mapped onto a template", test_name_mapping);
  CU_add_test(s, "hf:// backend: models, shards at one commit, offline", test_backend);
  CU_add_test(s, "8 processes x kaun get of a sharded model: one transfer per blob",
              test_eight_processes_sharded);
  return check_run_all();
}
