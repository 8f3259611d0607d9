/* Storage: URIs, config files, the plugin loader with real test plugins,
 * the file backend's root, mixed storage, mirrors, the registry plugin.
 * Linked against libkaun.so and its public headers only. */
#include <CUnit/Basic.h>
#include <kaun.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <pthread.h>
#include <unistd.h>

#include "check.h"

static char tmp_root[4096];

static const char *tmp(const char *fmt, ...) {
  static char buf[8][8300];
  static int k;
  char name[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(name, sizeof name, fmt, ap);
  va_end(ap);
  char *b = buf[k++ % 8];
  snprintf(b, 8300, "%s/%s", tmp_root, name);
  return b;
}

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

static void set_plugin_path(void) {
  char path[8192];
  snprintf(path, sizeof path, "%s:%s", getenv("KAUN_TEST_PLUGINS"), getenv("KAUN_BUILT_PLUGINS"));
  setenv("KAUN_PLUGIN_PATH", path, 1);
}

/* A small model: {w: F32[2,2] = base + i, b: F32[2]} saved at `uri`. */
static void save_model(kaun_context *ctx, const char *uri, float base) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_ptree *t;
  ASSERT_OK(kaun_ptree_new_record(&t, &err), err);
  const uint64_t s22[] = {2, 2}, s2[] = {2};
  float w[4] = {base, base + 1, base + 2, base + 3}, b[2] = {-base, -base};
  kaun_tensor *tw, *tb;
  ASSERT_OK(kaun_tensor_new_copy(KAUN_DTYPE_F32, 2, s22, w, sizeof w, &tw, &err), err);
  ASSERT_OK(kaun_tensor_new_copy(KAUN_DTYPE_F32, 1, s2, b, sizeof b, &tb, &err), err);
  ASSERT_OK(kaun_ptree_set(t, "w", tw, &err), err);
  ASSERT_OK(kaun_ptree_set(t, "b", tb, &err), err);
  ASSERT_OK(kaun_checkpoint_save(ctx, uri, t, NULL, &err), err);
  kaun_ptree_free(t);
}

static float first_of(const kaun_flat *f, const char *name) {
  const kaun_tensor *t = kaun_flat_find(f, name);
  return t ? *(const float *)kaun_tensor_data(t) : -12345.0f;
}

/* ---- URIs ------------------------------------------------------------------- */

static void test_uris(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_uri *u;
  ASSERT_OK(kaun_uri_parse("/models/x.safetensors", &u, &err), err);
  CU_ASSERT_STRING_EQUAL(u->scheme, "file");
  CU_ASSERT_STRING_EQUAL(u->path, "/models/x.safetensors");
  kaun_uri_free(u);
  ASSERT_OK(kaun_uri_parse("./rel/x", &u, &err), err);
  CU_ASSERT_STRING_EQUAL(u->path, "./rel/x");
  kaun_uri_free(u);
  ASSERT_OK(kaun_uri_parse("file:///abs/x", &u, &err), err);
  CU_ASSERT_STRING_EQUAL(u->scheme, "file");
  CU_ASSERT_STRING_EQUAL(u->path, "/abs/x");
  kaun_uri_free(u);
  ASSERT_OK(kaun_uri_parse("hf://gpt2@main/config.json", &u, &err), err);
  CU_ASSERT_STRING_EQUAL(u->scheme, "hf");
  CU_ASSERT_STRING_EQUAL(u->path, "gpt2@main/config.json");
  kaun_uri_free(u);
  ASSERT_OK(kaun_uri_parse("tar://model.safetensors::s3://b/bundle.tar.zst", &u, &err), err);
  CU_ASSERT_STRING_EQUAL(u->scheme, "tar");
  CU_ASSERT_STRING_EQUAL(u->path, "model.safetensors");
  CU_ASSERT_PTR_NOT_NULL_FATAL(u->inner);
  CU_ASSERT_STRING_EQUAL(u->inner->scheme, "s3");
  CU_ASSERT_STRING_EQUAL(u->inner->path, "b/bundle.tar.zst");
  kaun_uri_free(u);
  ASSERT_OK(kaun_uri_parse("corp-s3://bucket/key", &u, &err), err);
  CU_ASSERT_STRING_EQUAL(u->scheme, "corp-s3");
  kaun_uri_free(u);
  ASSERT_FAILS(kaun_uri_parse("", &u, &err), err, KAUN_EURI, "empty");
  ASSERT_FAILS(kaun_uri_parse("://x", &u, &err), err, KAUN_EURI, "'://x'");
  ASSERT_FAILS(kaun_uri_parse("1x://y", &u, &err), err, KAUN_EURI, "'1x://y'");
  ASSERT_FAILS(kaun_uri_parse("Hf://org/m", &u, &err), err, KAUN_EURI, "lowercase");
  ASSERT_FAILS(kaun_uri_parse("file://host/x", &u, &err), err, KAUN_EURI, "file:///abs/path");
  ASSERT_FAILS(kaun_uri_parse("tar://m::", &u, &err), err, KAUN_EURI, "nothing follows '::'");
  ASSERT_FAILS(kaun_uri_parse("tar://m::Bad://x", &u, &err), err, KAUN_EURI, "'Bad://x'");
}

/* ---- config files --------------------------------------------------------------- */

static void expect_config_error(const char *text, int code, const char *needle) {
  const char *path = tmp("bad-config.json");
  write_text(path, "%s", text);
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx = NULL;
  ASSERT_FAILS(kaun_context_new(path, &ctx, &err), err, code, needle);
  CU_ASSERT_PTR_NULL(ctx);
  if (!strstr(err.message, "bad-config.json")) CU_FAIL("the message does not name the file");
}

static void test_config_errors(void) {
  set_plugin_path();
  expect_config_error("{\n  \"backends\": {\n    \"x\": {\"plugin\": \"file\",}\n  }\n}",
                      KAUN_ECONFIG, "line 3");
  expect_config_error("{\"plugin_dir\": []}", KAUN_ECONFIG, "unknown key 'plugin_dir'");
  expect_config_error("{\"plugin_dirs\": \"/x\"}", KAUN_ECONFIG, "plugin_dirs must be an array");
  expect_config_error("{\"plugin_dirs\": [1]}", KAUN_ECONFIG, "plugin_dirs[0]");
  expect_config_error("{\"cache_dir\": 3}", KAUN_ECONFIG, "cache_dir must be");
  expect_config_error("{\"backends\": []}", KAUN_ECONFIG, "backends must be an object");
  expect_config_error("{\"backends\": {\"Bad\": {}}}", KAUN_ECONFIG, "backends.Bad");
  expect_config_error("{\"backends\": {\"m\": 4}}", KAUN_ECONFIG, "backends.m must be an object");
  expect_config_error("{\"backends\": {\"m\": {\"plugin\": \"file\",\n \"rot\": \"/x\"}}}",
                      KAUN_ECONFIG, "line 2: backends.m.rot is not an option of the 'file' plugin");
  expect_config_error("{\"backends\": {\"m\": {\"plugin\": \"file\", \"root\": 7}}}", KAUN_ECONFIG,
                      "backends.m.root must be a string");
  expect_config_error(
      "{\"backends\": {\"m\": {\"plugin\": \"testmem\", \"dir\": \"/x\", "
      "\"fail_at\": \"2\"}}}",
      KAUN_ECONFIG, "backends.m.fail_at must be an integer");
  expect_config_error("{\"backends\": {\"m\": {\"plugin\": \"testmem\"}}}", KAUN_ECONFIG,
                      "backends.m.dir is missing");
  expect_config_error("{\"backends\": {\"m\": {\"plugin\": \"nosuch\"}}}", KAUN_ECONFIG,
                      "backends.m.plugin: no plugin 'nosuch'");
  expect_config_error("{\"backends\": {\"m\": {\"plugin\": \"abimajor\"}}}", KAUN_EABI,
                      "built for ABI 2, this kaun speaks ABI 1");
  expect_config_error("{\"mirrors\": {\"hf://\": []}}", KAUN_ECONFIG, "mirrors.hf:// lists no");
  expect_config_error("{\"a\": 1, \"a\": 2}", KAUN_ECONFIG, "duplicate key");
  expect_config_error("[]", KAUN_ECONFIG, "must be a JSON object");
  /* KAUN_CONFIG naming nothing is an error, not "defaults" */
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx;
  setenv("KAUN_CONFIG", tmp("nope.json"), 1);
  ASSERT_FAILS(kaun_context_new(NULL, &ctx, &err), err, KAUN_ENOENT, "nope.json");
  unsetenv("KAUN_CONFIG");
  ASSERT_FAILS(kaun_context_new(tmp("nope.json"), &ctx, &err), err, KAUN_ENOENT, "nope.json");
}

static void test_config_describe_and_secrets(void) {
  set_plugin_path();
  kaun_error err = KAUN_ERROR_INIT;
  mkdir(tmp("mem"), 0755);
  const char *cfg = tmp("describe.json");
  write_text(cfg,
             "{\n"
             "  \"cache_dir\": \"%s\",\n"
             "  \"backends\": {\n"
             "    \"mem\": {\"plugin\": \"testmem\", \"dir\": \"%s\",\n"
             "             \"token\": \"hunter2-inline\"},\n"
             "    \"envmem\": {\"plugin\": \"testmem\", \"dir\": \"%s\", \"token\": "
             "\"env:KAUN_TEST_TOKEN\"}\n"
             "  },\n"
             "  \"mirrors\": {\"hub://\": [\"mem://\"]}\n"
             "}\n",
             tmp("cache"), tmp("mem"), tmp("mem"));
  setenv("KAUN_CONFIG", cfg, 1);
  kaun_context *ctx;
  ASSERT_OK(kaun_context_new(NULL, &ctx, &err), err);
  unsetenv("KAUN_CONFIG");
  CU_ASSERT_STRING_EQUAL(kaun_context_config_path(ctx), cfg);
  char *text;
  ASSERT_OK(kaun_context_describe(ctx, &text, &err), err);
  CU_ASSERT_PTR_NULL(strstr(text, "hunter2")); /* the secret is masked */
  CU_ASSERT_PTR_NOT_NULL(strstr(text, "backends.mem.token = ********"));
  CU_ASSERT_PTR_NOT_NULL(strstr(text, "backends.envmem.token = env:KAUN_TEST_TOKEN"));
  CU_ASSERT_PTR_NOT_NULL(strstr(text, "describe.json:4"));
  CU_ASSERT_PTR_NOT_NULL(strstr(text, "backends.mem.fail_at = 0\t(default)"));
  CU_ASSERT_PTR_NOT_NULL(strstr(text, "mirrors.hub:// = mem://"));
  CU_ASSERT_PTR_NOT_NULL(strstr(text, "$KAUN_PLUGIN_PATH"));
  free(text);
  /* an unset secret is reported when the backend is first used, by key, not value */
  unsetenv("KAUN_TEST_TOKEN");
  kaun_object *o;
  ASSERT_FAILS(kaun_object_open(ctx, "envmem://x", &o, &err), err, KAUN_ECONFIG,
               "backends.envmem.token refers to the environment variable KAUN_TEST_TOKEN");
  kaun_context_free(ctx);
  /* a secret from a file */
  const char *secret = tmp("token.txt");
  write_text(secret, "bad\n");
  write_text(cfg,
             "{\"backends\": {\"m\": {\"plugin\": \"testmem\", \"dir\": \"%s\", \"token\": "
             "\"file:%s\"}}}",
             tmp("mem"), secret);
  ASSERT_OK(kaun_context_new(cfg, &ctx, &err), err);
  ASSERT_FAILS(kaun_object_open(ctx, "m://x", &o, &err), err, KAUN_ECONFIG,
               "backend 'm' (plugin testmem): testmem: the token was refused");
  kaun_context_free(ctx);
}

/* ---- the plugin loader --------------------------------------------------------------- */

static void expect_plugin_error(const char *so, int code, const char *needle) {
  const char *cfg = tmp("plugin-%s.json", so);
  write_text(cfg, "{\"backends\": {\"x\": {\"plugin\": \"%s/%s.so\"}}}",
             getenv("KAUN_TEST_PLUGINS"), so);
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx;
  ASSERT_FAILS(kaun_context_new(cfg, &ctx, &err), err, code, needle);
  if (!strstr(err.message, so)) CU_FAIL("the message does not name the plugin file");
}

static void test_plugin_loader_errors(void) {
  set_plugin_path();
  expect_plugin_error("abimajor", KAUN_EABI, "built for ABI 2, this kaun speaks ABI 1");
  expect_plugin_error("abiminor", KAUN_EABI, "needs ABI 1.99, newer than this kaun's 1.1");
  expect_plugin_error("noentry", KAUN_ECONFIG, "no entry symbol kaun_plugin_entry");
  expect_plugin_error("noread", KAUN_ECONFIG, "lacks the mandatory operation 'read'");
  expect_plugin_error("tiny", KAUN_EABI, "smaller than ABI 1.0");
  expect_plugin_error("missing", KAUN_ECONFIG, "cannot load plugin");
  /* two plugins may not share a name */
  const char *cfg = tmp("dup.json");
  write_text(cfg,
             "{\"backends\": {\"a\": {\"plugin\": \"testmem\", \"dir\": \"/\"},"
             " \"b\": {\"plugin\": \"%s/dup.so\", \"dir\": \"/\"}}}",
             getenv("KAUN_TEST_PLUGINS"));
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx;
  ASSERT_FAILS(kaun_context_new(cfg, &ctx, &err), err, KAUN_ECONFIG, "a name already taken");
  /* an unknown scheme says where it looked */
  ASSERT_OK(kaun_context_new(NULL, &ctx, &err), err);
  kaun_object *o;
  ASSERT_FAILS(kaun_object_open(ctx, "nosuch://a/b", &o, &err), err, KAUN_EBACKEND,
               "no backend answers to 'nosuch://'");
  if (!strstr(err.message, getenv("KAUN_TEST_PLUGINS"))) CU_FAIL("the search path is not named");
  /* a plugin found by scheme name on the search path, with a broken ABI */
  ASSERT_FAILS(kaun_object_open(ctx, "abiminor://a", &o, &err), err, KAUN_EABI, "abiminor.so");
  /* a plugin with a required option used without configuration */
  ASSERT_FAILS(kaun_object_open(ctx, "testmem://a", &o, &err), err, KAUN_ECONFIG,
               "needs the option 'dir'");
  char *text;
  ASSERT_OK(kaun_plugins_describe(ctx, &text, &err), err);
  CU_ASSERT_PTR_NOT_NULL(strstr(text, "testmem\ttest-1\tABI 1.0\tread,put"));
  CU_ASSERT_PTR_NOT_NULL(strstr(text, "registry\t1.0\tABI 1.1\tread,map"));
  CU_ASSERT_PTR_NOT_NULL(strstr(text, "BROKEN"));
  CU_ASSERT_PTR_NOT_NULL(strstr(text, "abimajor.so\tplugin"));
  CU_ASSERT_PTR_NOT_NULL(strstr(text, "file\t"));
  free(text);
  kaun_context_free(ctx);
}

/* ---- the file backend ---------------------------------------------------------------- */

static void test_file_backend_root(void) {
  set_plugin_path();
  kaun_error err = KAUN_ERROR_INIT;
  mkdir(tmp("root"), 0755);
  mkdir(tmp("root/sub"), 0755);
  write_text(tmp("outside.txt"), "secret");
  symlink(tmp("outside.txt"), tmp("root/link"));
  const char *cfg = tmp("root.json");
  write_text(cfg, "{\"backends\": {\"models\": {\"plugin\": \"file\", \"root\": \"%s\"}}}",
             tmp("root"));
  kaun_context *ctx;
  ASSERT_OK(kaun_context_new(cfg, &ctx, &err), err);
  save_model(ctx, "models://sub/m.safetensors", 1);
  struct stat sb;
  CU_ASSERT_EQUAL(stat(tmp("root/sub/m.safetensors"), &sb), 0);
  kaun_object *o;
  ASSERT_OK(kaun_object_open(ctx, "models:///sub/m.safetensors", &o, &err), err);
  kaun_stat st = {.struct_size = sizeof st};
  ASSERT_OK(kaun_object_stat(o, &st, &err), err);
  CU_ASSERT_EQUAL((off_t)st.size, sb.st_size);
  CU_ASSERT_PTR_NOT_NULL(strstr(st.local_path, "root/sub/m.safetensors"));
  CU_ASSERT_NOT_EQUAL(st.etag[0], '\0');
  char four[4];
  ASSERT_OK(kaun_object_read(o, 0, four, 4, &err), err);
  ASSERT_FAILS(kaun_object_read(o, st.size - 2, four, 4, &err), err, KAUN_EIO, "m.safetensors");
  kaun_object_close(o);
  ASSERT_FAILS(kaun_object_open(ctx, "models://../outside.txt", &o, &err), err, KAUN_EACCESS,
               "'..' would leave the backend's root");
  ASSERT_FAILS(kaun_object_open(ctx, "models://link", &o, &err), err, KAUN_EACCESS,
               "symbolic link leads outside");
  ASSERT_FAILS(kaun_object_open(ctx, "models://sub", &o, &err), err, KAUN_EISDIR, "is a directory");
  ASSERT_FAILS(kaun_object_open(ctx, "models://none", &o, &err), err, KAUN_ENOENT, "none");
  kaun_flat *flat;
  ASSERT_OK(kaun_checkpoint_load_flat(ctx, "models://sub/m.safetensors", 0, &flat, &err), err);
  CU_ASSERT_TRUE(kaun_tensor_is_view(kaun_flat_find(flat, "w"))); /* mapped: zero copy */
  kaun_flat_free(flat);
  ASSERT_OK(kaun_storage_remove(ctx, "models://sub/m.safetensors", &err), err);
  CU_ASSERT_NOT_EQUAL(stat(tmp("root/sub/m.safetensors"), &sb), 0);
  ASSERT_FAILS(kaun_storage_remove(ctx, "models://sub/m.safetensors", &err), err, KAUN_ENOENT,
               "m.safetensors");
  kaun_context_free(ctx);
  write_text(cfg, "{\"backends\": {\"models\": {\"plugin\": \"file\", \"root\": \"%s\"}}}",
             tmp("no-such-root"));
  ASSERT_OK(kaun_context_new(cfg, &ctx, &err), err);
  ASSERT_FAILS(kaun_object_open(ctx, "models://x", &o, &err), err, KAUN_ECONFIG, "no-such-root");
  kaun_context_free(ctx);
}

/* ---- failures propagate ------------------------------------------------------------------- */

static void test_injected_failures(void) {
  set_plugin_path();
  kaun_error err = KAUN_ERROR_INIT;
  mkdir(tmp("inject"), 0755);
  kaun_context *ctx;
  const char *cfg = tmp("inject.json");
  write_text(cfg, "{\"backends\": {\"mem\": {\"plugin\": \"testmem\", \"dir\": \"%s\"}}}",
             tmp("inject"));
  ASSERT_OK(kaun_context_new(cfg, &ctx, &err), err);
  save_model(ctx, "mem://m.safetensors", 5); /* through the plugin's put */
  kaun_flat *flat;
  ASSERT_OK(kaun_checkpoint_load_flat(ctx, "mem://m.safetensors", 0, &flat, &err), err);
  CU_ASSERT_EQUAL(first_of(flat, "w"), 5.0f);
  /* no map on this backend: each tensor is read straight into memory it owns */
  CU_ASSERT_FALSE(kaun_tensor_is_view(kaun_flat_find(flat, "w")));
  kaun_flat_free(flat);
  kaun_context_free(ctx);
  /* fail the 1st, 2nd, ... call until a load gets through: each failure
   * must surface with the plugin's own message, and nothing may leak */
  int failures = 0;
  for (int n = 1; n < 50; n++) {
    write_text(cfg,
               "{\"backends\": {\"mem\": {\"plugin\": \"testmem\", \"dir\": \"%s\", "
               "\"fail_at\": %d}}}",
               tmp("inject"), n);
    ASSERT_OK(kaun_context_new(cfg, &ctx, &err), err);
    kaun_error_clear(&err);
    int rc = kaun_checkpoint_load_flat(ctx, "mem://m.safetensors", KAUN_LOAD_COPY, &flat, &err);
    kaun_context_free(ctx);
    if (rc == KAUN_OK) {
      kaun_flat_free(flat);
      break;
    }
    failures++;
    CU_ASSERT_EQUAL(rc, KAUN_EIO);
    char want[64];
    snprintf(want, sizeof want, "injected failure on call %d", n);
    if (!strstr(err.message, want)) {
      fprintf(stderr, "\n  call %d: %s\n", n, err.message);
      CU_FAIL("the plugin's message was lost");
    }
  }
  CU_ASSERT_TRUE(failures >= 3); /* open, stat, read at least */
}

/* ---- mixed storage and mirrors ----------------------------------------------------------------
 */

static kaun_context *mixed_context(void) {
  mkdir(tmp("team"), 0755);
  mkdir(tmp("archive"), 0755);
  const char *cfg = tmp("mixed.json");
  write_text(cfg,
             "{\n"
             "  \"backends\": {\n"
             "    \"team\": {\"plugin\": \"file\", \"root\": \"%s\"},\n"
             "    \"archive\": {\"plugin\": \"testmem\", \"dir\": \"%s\"}\n"
             "  },\n"
             "  \"mirrors\": {\n"
             "    \"hub://\": [\"team://missing/\", \"archive://\"],\n"
             "    \"gone://\": [\"team://nothing/\", \"archive://nothing/\"]\n"
             "  }\n"
             "}\n",
             tmp("team"), tmp("archive"));
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx = NULL;
  if (kaun_context_new(cfg, &ctx, &err)) {
    fprintf(stderr, "%s\n", err.message);
    abort();
  }
  return ctx;
}

static void test_mixed_storage_sharded(void) {
  set_plugin_path();
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx = mixed_context();
  /* shard 1 on the file backend, shard 2 on the plugin; one index */
  kaun_ptree *t;
  const uint64_t s3[] = {3};
  float a[3] = {1, 2, 3}, b[3] = {4, 5, 6};
  kaun_tensor *ta, *tb;
  ASSERT_OK(kaun_tensor_new_copy(KAUN_DTYPE_F32, 1, s3, a, sizeof a, &ta, &err), err);
  ASSERT_OK(kaun_tensor_new_copy(KAUN_DTYPE_F32, 1, s3, b, sizeof b, &tb, &err), err);
  ASSERT_OK(kaun_ptree_new_record(&t, &err), err);
  ASSERT_OK(kaun_ptree_set(t, "enc.w", ta, &err), err);
  ASSERT_OK(kaun_checkpoint_save(ctx, "team://part-1.safetensors", t, NULL, &err), err);
  kaun_ptree_free(t);
  ASSERT_OK(kaun_ptree_new_record(&t, &err), err);
  ASSERT_OK(kaun_ptree_set(t, "dec.w", tb, &err), err);
  ASSERT_OK(kaun_checkpoint_save(ctx, "archive://part-2.safetensors", t, NULL, &err), err);
  kaun_ptree_free(t);
  mkdir(tmp("team/model"), 0755);
  write_text(
      tmp("team/model/model.safetensors.index.json"),
      "{\"metadata\": {\"total_size\": 24}, \"weight_map\": {"
      "\"enc.w\": \"team://part-1.safetensors\", \"dec.w\": \"archive://part-2.safetensors\"}}");
  kaun_ptree *tree;
  ASSERT_OK(kaun_checkpoint_load_tree(ctx, "team://model", 0, &tree, &err), err);
  kaun_ptree *n;
  ASSERT_OK(kaun_ptree_get(tree, "dec.w", &n, &err), err);
  CU_ASSERT_EQUAL(((const float *)kaun_tensor_data(kaun_ptree_tensor(n)))[2], 6.0f);
  ASSERT_OK(kaun_ptree_get(tree, "enc.w", &n, &err), err);
  CU_ASSERT_EQUAL(((const float *)kaun_tensor_data(kaun_ptree_tensor(n)))[0], 1.0f);
  CU_ASSERT_TRUE(kaun_tensor_is_view(kaun_ptree_tensor(n)));
  kaun_context_free(ctx); /* the views keep their mappings alive */
  CU_ASSERT_EQUAL(((const float *)kaun_tensor_data(kaun_ptree_tensor(n)))[1], 2.0f);
  kaun_ptree_free(tree);
}

static void test_mirrors(void) {
  set_plugin_path();
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx = mixed_context();
  save_model(ctx, "archive://mirrored.safetensors", 9);
  kaun_flat *flat;
  /* hub:// has no backend at all: the first mirror fails, the second wins */
  ASSERT_OK(kaun_checkpoint_load_flat(ctx, "hub://mirrored.safetensors", 0, &flat, &err), err);
  CU_ASSERT_EQUAL(first_of(flat, "w"), 9.0f);
  kaun_flat_free(flat);
  kaun_object *o;
  ASSERT_OK(kaun_object_open(ctx, "hub://mirrored.safetensors", &o, &err), err);
  CU_ASSERT_STRING_EQUAL(kaun_object_uri(o), "archive://mirrored.safetensors");
  kaun_object_close(o);
  ASSERT_FAILS(kaun_object_open(ctx, "gone://x.safetensors", &o, &err), err, KAUN_ENOENT,
               "no mirror of 'gone://x.safetensors' could open it: "
               "team://nothing/x.safetensors (KAUN_ENOENT): ");
  CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "; archive://nothing/x.safetensors (KAUN_ENOENT): "));
  kaun_context_free(ctx);
}

static int count_entry(const char *name, uint64_t size, void *c) {
  (void)size;
  if (strcmp(name, "mirrored.safetensors") == 0) ++*(int *)c;
  return 0;
}

static void test_stacked_and_list(void) {
  set_plugin_path();
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx = mixed_context();
  save_model(ctx, "team://stacked.safetensors", 3);
  kaun_flat *flat;
  ASSERT_OK(
      kaun_checkpoint_load_flat(ctx, "passthru://x::team://stacked.safetensors", 0, &flat, &err),
      err);
  CU_ASSERT_EQUAL(first_of(flat, "w"), 3.0f);
  kaun_flat_free(flat);
  ASSERT_FAILS(
      kaun_checkpoint_load_flat(ctx, "passthru://x::team://none.safetensors", 0, &flat, &err), err,
      KAUN_ENOENT, "none.safetensors");
  ASSERT_FAILS(kaun_checkpoint_load_flat(ctx, "passthru://x.safetensors", 0, &flat, &err), err,
               KAUN_EURI, "want passthru://NAME::INNER-URI");
  kaun_object *o;
  ASSERT_FAILS(kaun_object_open(ctx, "team://a::team://stacked.safetensors", &o, &err), err,
               KAUN_EURI, "does not read through another object");
  /* list: the file backend lists a folder of its root */
  save_model(ctx, "team://listed/mirrored.safetensors", 1);
  int seen = 0;
  ASSERT_OK(kaun_storage_list(ctx, "team://listed", count_entry, &seen, &err), err);
  CU_ASSERT_EQUAL(seen, 1);
  ASSERT_FAILS(kaun_storage_list(ctx, "archive://", count_entry, &seen, &err), err, KAUN_ENOTSUP,
               "cannot list");
  ASSERT_FAILS(kaun_storage_list(ctx, "team://nope", count_entry, &seen, &err), err, KAUN_ENOENT,
               "nope");
  kaun_context_free(ctx);
}

typedef struct load_job {
  kaun_context *ctx;
  const char *uri;
  int failures;
} load_job;

static void *load_many(void *arg) {
  load_job *job = arg;
  for (int i = 0; i < 25; i++) {
    kaun_error err = KAUN_ERROR_INIT;
    kaun_flat *flat;
    if (kaun_checkpoint_load_flat(job->ctx, job->uri, i % 2 ? KAUN_LOAD_COPY : 0, &flat, &err) !=
            KAUN_OK ||
        first_of(flat, "w") != 7.0f)
      job->failures++;
    else
      kaun_flat_free(flat);
  }
  return NULL;
}

/* One context shared by threads: backends are created once, under a race. */
static void test_threads_share_a_context(void) {
  set_plugin_path();
  kaun_context *ctx = mixed_context();
  save_model(ctx, "archive://threads.safetensors", 7);
  kaun_context_free(ctx);
  ctx = mixed_context(); /* fresh: no backend instance exists yet */
  pthread_t th[4];
  load_job jobs[4];
  for (int i = 0; i < 4; i++) {
    jobs[i] =
        (load_job){ctx, i % 2 ? "hub://threads.safetensors" : "archive://threads.safetensors", 0};
    pthread_create(&th[i], NULL, load_many, &jobs[i]);
  }
  for (int i = 0; i < 4; i++) {
    pthread_join(th[i], NULL);
    CU_ASSERT_EQUAL(jobs[i].failures, 0);
  }
  kaun_context_free(ctx);
}

static void *open_once(void *arg) {
  kaun_context *ctx = arg;
  kaun_object *o;
  kaun_error err = KAUN_ERROR_INIT;
  if (kaun_object_open(ctx, "slow://threads.safetensors", &o, &err) == KAUN_OK)
    kaun_object_close(o);
  else
    fprintf(stderr, "open_once: %s\n", err.message);
  return NULL;
}

/* Four threads' first use of a slow backend creates it once (it used to
 * create four and destroy three: four credential lookups for S3). */
static void test_create_once(void) {
  set_plugin_path();
  kaun_error err = KAUN_ERROR_INIT;
  mkdir(tmp("slow"), 0755);
  write_text(tmp("slow/threads.safetensors"), "x");
  const char *log = tmp("creates.log");
  unlink(log);
  const char *cfg = tmp("slow.json");
  write_text(cfg,
             "{\"backends\": {\"slow\": {\"plugin\": \"testmem\", \"dir\": \"%s\", "
             "\"create_log\": \"%s\", \"create_delay_ms\": 200}}}",
             tmp("slow"), log);
  kaun_context *ctx;
  ASSERT_OK(kaun_context_new(cfg, &ctx, &err), err);
  pthread_t th[4];
  for (int i = 0; i < 4; i++) pthread_create(&th[i], NULL, open_once, ctx);
  for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
  kaun_context_free(ctx);
  char *text;
  size_t len;
  ASSERT_OK(kaun_storage_read_all(NULL, log, 1024, &text, &len, &err), err);
  CU_ASSERT_STRING_EQUAL(text, "create\n");
  free(text);
}

/* A plugin's ctx stays valid until its destroy, even after the
 * application freed the context: an object keeps it alive. */
static void test_context_outlived(void) {
  set_plugin_path();
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx = mixed_context();
  save_model(ctx, "archive://outlive.safetensors", 3);
  kaun_object *o;
  ASSERT_OK(kaun_object_open(ctx, "hub://outlive.safetensors", &o, &err), err);
  kaun_context_free(ctx);
  float w;
  ASSERT_OK(kaun_object_read(o, 8 + 0, &w, 0, &err), err);
  kaun_stat st = {.struct_size = sizeof st};
  ASSERT_OK(kaun_object_stat(o, &st, &err), err);
  CU_ASSERT(st.size > 8);
  kaun_object_close(o);
}

/* ---- the registry plugin ----------------------------------------------------------------------
 */

static void sha_of(const char *path, char out[KAUN_SHA256_HEX_SIZE]) {
  FILE *f = fopen(path, "rb");
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *b = malloc((size_t)n);
  if (fread(b, 1, (size_t)n, f) != (size_t)n) abort();
  fclose(f);
  kaun_sha256_hex(b, (size_t)n, out, NULL);
  free(b);
}

static void test_registry(void) {
  set_plugin_path();
  kaun_error err = KAUN_ERROR_INIT;
  mkdir(tmp("reg"), 0755);
  const char *cfg = tmp("registry.json");
  write_text(cfg,
             "{\"backends\": {\n"
             "  \"store\": {\"plugin\": \"file\", \"root\": \"%s\"},\n"
             "  \"corp\": {\"plugin\": \"registry\", \"index\": \"store://index.json\"}\n"
             "}}\n",
             tmp("reg"));
  kaun_context *ctx;
  ASSERT_OK(kaun_context_new(cfg, &ctx, &err), err);
  save_model(ctx, "store://bert-1.9.safetensors", 19);
  save_model(ctx, "store://bert-1.10.safetensors", 110);
  char sha9[KAUN_SHA256_HEX_SIZE], sha10[KAUN_SHA256_HEX_SIZE];
  sha_of(tmp("reg/bert-1.9.safetensors"), sha9);
  sha_of(tmp("reg/bert-1.10.safetensors"), sha10);
  write_text(tmp("reg/index.json"),
             "{\"bert\": {\n"
             "  \"1.9\": {\"model.safetensors\": {\"uri\": \"store://bert-1.9.safetensors\", "
             "\"sha256\": \"%s\"}},\n"
             "  \"1.10\": {\"model.safetensors\": {\"uri\": \"store://bert-1.10.safetensors\", "
             "\"sha256\": \"%s\"}},\n"
             "  \"0.1\": {\"model.safetensors\": {\"uri\": \"store://bert-1.9.safetensors\", "
             "\"sha256\": \"%s\"}}\n"
             "}}\n",
             sha9, sha10, sha10 /* wrong on purpose */);
  kaun_flat *flat;
  ASSERT_OK(kaun_checkpoint_load_flat(ctx, "corp://bert@1.9", 0, &flat, &err), err);
  CU_ASSERT_EQUAL(first_of(flat, "w"), 19.0f);
  CU_ASSERT_TRUE(kaun_tensor_is_view(kaun_flat_find(flat, "w"))); /* zero copy through it */
  kaun_flat_free(flat);
  ASSERT_OK(kaun_checkpoint_load_flat(ctx, "corp://bert", 0, &flat, &err), err);
  CU_ASSERT_EQUAL(first_of(flat, "w"), 110.0f); /* latest: 1.10 > 1.9 */
  kaun_flat_free(flat);
  ASSERT_OK(kaun_checkpoint_load_flat(ctx, "corp://bert@1.9/model.safetensors", 0, &flat, &err),
            err);
  /* the registry .so must stay loaded while its mappings live: free the
   * context first, use the tensors, then free them (unmap runs in it) */
  kaun_context_free(ctx);
  CU_ASSERT_EQUAL(first_of(flat, "w"), 19.0f);
  kaun_flat_free(flat);
  ASSERT_OK(kaun_context_new(cfg, &ctx, &err), err);
  ASSERT_FAILS(kaun_checkpoint_load_flat(ctx, "corp://bert@0.1", 0, &flat, &err), err,
               KAUN_ECHECKSUM, "the sha256 of store://bert-1.9.safetensors is");
  ASSERT_FAILS(kaun_checkpoint_load_flat(ctx, "corp://gpt@1", 0, &flat, &err), err, KAUN_ENOENT,
               "no model 'gpt'");
  ASSERT_FAILS(kaun_checkpoint_load_flat(ctx, "corp://bert@2.0", 0, &flat, &err), err, KAUN_ENOENT,
               "no version '2.0' (it has: 1.9, 1.10, 0.1)");
  ASSERT_FAILS(kaun_checkpoint_load_flat(ctx, "corp://bert@1.9/tokenizer.json", 0, &flat, &err),
               err, KAUN_ENOENT, "has no file 'tokenizer.json'");
  kaun_context_free(ctx);
  /* the index option is required */
  write_text(cfg, "{\"backends\": {\"corp\": {\"plugin\": \"registry\"}}}");
  ASSERT_FAILS(kaun_context_new(cfg, &ctx, &err), err, KAUN_ECONFIG,
               "backends.corp.index is missing");
}

static void test_save_needs_put(void) {
  set_plugin_path();
  kaun_error err = KAUN_ERROR_INIT;
  const char *cfg = tmp("registry2.json");
  write_text(cfg, "{\"backends\": {\"corp\": {\"plugin\": \"registry\", \"index\": \"%s\"}}}",
             tmp("reg/index.json"));
  kaun_context *ctx;
  ASSERT_OK(kaun_context_new(cfg, &ctx, &err), err);
  kaun_flat *flat;
  ASSERT_OK(kaun_flat_new(&flat, &err), err);
  ASSERT_FAILS(kaun_safetensors_save(ctx, "corp://bert@9/model.safetensors", flat, &err), err,
               KAUN_ENOTSUP, "cannot store objects");
  kaun_flat_free(flat);
  kaun_context_free(ctx);
}

int main(void) {
  const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  snprintf(tmp_root, sizeof tmp_root, "%s/kaun-storage-XXXXXX", base);
  if (!mkdtemp(tmp_root) || !getenv("KAUN_TEST_PLUGINS") || !getenv("KAUN_BUILT_PLUGINS")) {
    fprintf(stderr, "storage_tests: run through 'make check' (KAUN_TEST_PLUGINS unset)\n");
    return 1;
  }
  unsetenv("KAUN_CONFIG");
  if (CU_initialize_registry() != CUE_SUCCESS) return 1;
  CU_pSuite s = CU_add_suite("storage", NULL, NULL);
  CU_add_test(s, "URIs parse, and malformed ones are named", test_uris);
  CU_add_test(s, "config errors name the file, key and line", test_config_errors);
  CU_add_test(s, "config describe masks secrets; references resolve",
              test_config_describe_and_secrets);
  CU_add_test(s, "the plugin loader refuses broken plugins precisely", test_plugin_loader_errors);
  CU_add_test(s, "the file backend stays inside its root", test_file_backend_root);
  CU_add_test(s, "a plugin failing on the Nth call: errors propagate", test_injected_failures);
  CU_add_test(s, "one index, shards in two backends", test_mixed_storage_sharded);
  CU_add_test(s, "mirrors: the first that opens wins", test_mirrors);
  CU_add_test(s, "a stacked backend reads through another; list", test_stacked_and_list);
  CU_add_test(s, "threads share one context", test_threads_share_a_context);
  CU_add_test(s, "four threads' first use creates one instance", test_create_once);
  CU_add_test(s, "objects outlive the context they came from", test_context_outlived);
  CU_add_test(s, "the registry plugin resolves, picks latest, verifies", test_registry);
  CU_add_test(s, "saving needs a backend that can store", test_save_needs_put);
  CU_basic_set_mode(CU_BRM_VERBOSE);
  CU_basic_run_tests();
  unsigned failed = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
  unsigned run = CU_get_number_of_tests_run();
  CU_cleanup_registry();
  char cmd[4200];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_root);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmp_root);
  return run && !failed ? 0 : 1;
}
