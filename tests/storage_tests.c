/* Storage: URIs, config files, the plugin loader with real test plugins,
 * the file backend's root, mixed storage, mirrors, the registry plugin.
 * Linked against libkaun.so and its public headers only. */
#include <CUnit/Basic.h>
#include <ctype.h>
#include <fcntl.h>
#include <kaun.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <pthread.h>
#include <unistd.h>

#include "check.h"
#include "testserver.h"

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
  /* stacking: KAUN_URI_MAX_DEPTH levels parse; more fail, however many
   * (150000 levels, 1 MB, overflowed the stack when parsing recursed) */
  size_t levels[] = {KAUN_URI_MAX_DEPTH, KAUN_URI_MAX_DEPTH + 1, 150000};
  for (int k = 0; k < 3; k++) {
    char *deep = malloc(levels[k] * 7 + 16);
    CU_ASSERT_FATAL(deep != NULL);
    size_t n = 0;
    for (size_t i = 1; i < levels[k]; i++) n += (size_t)sprintf(deep + n, "a://b::");
    sprintf(deep + n, "file:///x");
    if (k == 0) {
      ASSERT_OK(kaun_uri_parse(deep, &u, &err), err);
      kaun_uri_free(u);
    } else {
      ASSERT_FAILS(kaun_uri_parse(deep, &u, &err), err, KAUN_EURI,
                   "more than 16 URIs stacked with '::'");
      CU_ASSERT_PTR_NULL(u);
      CU_ASSERT(strlen(err.message) < 400); /* the URI is quoted cut short */
    }
    free(deep);
  }
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
  /* the plugin file itself instead of its folder (relative: beside the config) */
  write_text(tmp("hello.so"), "x");
  expect_config_error("{\"plugin_dirs\": [\n \"hello.so\"]}", KAUN_ECONFIG,
                      "line 2: plugin_dirs[0] '");
  expect_config_error("{\"plugin_dirs\": [\"hello.so\"]}", KAUN_ECONFIG,
                      "hello.so' is not a folder (give the folder that holds the plugin's .so");
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
  expect_config_error("{\"backends\": {\"m\": {\"plugin\": \"file\", \"index_shard_uris\": 1}}}",
                      KAUN_ECONFIG, "backends.m.index_shard_uris must be true or false");
  expect_config_error("{\"mirrors\": {\"hf://\": []}}", KAUN_ECONFIG, "mirrors.hf:// lists no");
  expect_config_error("{\"a\": 1, \"a\": 2}", KAUN_ECONFIG, "duplicate key");
  /* a NUL would make "backends\u0000" read as a second "backends" */
  expect_config_error("{\"backends\": {\"a\": {}}, \"backends\\u0000\": {\"b\": {}}}", KAUN_ECONFIG,
                      "line 1: a key contains a NUL byte");
  expect_config_error("{\"backends\": {\"m\": {\"plugin\": \"file\", \"root\": \"/a\\u0000b\"}}}",
                      KAUN_ECONFIG, "a string value contains a NUL byte");
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
               "describe.json: line 6: backends.envmem.token refers to the environment variable "
               "KAUN_TEST_TOKEN");
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
  /* a secret file that is missing, or a FIFO (refused at once, never waited on) */
  const char *fifo = tmp("token.fifo");
  unlink(fifo);
  CU_ASSERT_EQUAL_FATAL(mkfifo(fifo, 0600), 0);
  const char *bad[] = {tmp("no-such-token"), fifo};
  const char *why[] = {"No such file or directory", "is not a regular file"};
  for (int i = 0; i < 2; i++) {
    write_text(cfg,
               "{\"backends\": {\"m\": {\"plugin\": \"testmem\", \"dir\": \"%s\", \"token\": "
               "\"file:%s\"}}}",
               tmp("mem"), bad[i]);
    ASSERT_OK(kaun_context_new(cfg, &ctx, &err), err);
    char want[4400];
    snprintf(want, sizeof want, "backends.m.token refers to the file %s, which cannot be read",
             bad[i]);
    ASSERT_FAILS(kaun_object_open(ctx, "m://x", &o, &err), err, KAUN_ECONFIG, want);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, why[i]));
    kaun_context_free(ctx);
  }
  /* a FIFO given as the config file */
  ASSERT_FAILS(kaun_context_new(fifo, &ctx, &err), err, KAUN_ECONFIG, "is not a regular file");
  CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "token.fifo"));
  unlink(fifo);
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
  expect_plugin_error("abiminor", KAUN_EABI, "needs ABI 1.99, newer than this kaun's 1.2");
  expect_plugin_error("noentry", KAUN_ECONFIG, "no entry symbol kaun_plugin_entry");
  expect_plugin_error("noread", KAUN_ECONFIG,
                      "lacks the mandatory operation 'read (or, from ABI 1.1, read_io)'");
  expect_plugin_error("tiny", KAUN_EABI, "smaller than ABI 1.0");
  expect_plugin_error("short12", KAUN_EABI, "says ABI 1.2 but has a descriptor of");
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
  CU_ASSERT_PTR_NOT_NULL(strstr(text, "registry\t1.0\tABI 1.2\tread,map"));
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
             "    \"team\": {\"plugin\": \"file\", \"root\": \"%s\", \"index_shard_uris\": true},\n"
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

/* An index is untrusted input: its shards are files beside it, and a shard
 * URI is followed only when the config allows it for the backend that
 * served the index (backends.NAME.index_shard_uris). */
static void test_index_shard_uris(void) {
  set_plugin_path();
  kaun_error err = KAUN_ERROR_INIT;
  mkdir(tmp("guarded"), 0755);
  mkdir(tmp("guarded/m"), 0755);
  mkdir(tmp("guarded-mem"), 0755);
  char cfg[8300]; /* tmp()'s buffers are reused */
  snprintf(cfg, sizeof cfg, "%s", tmp("guarded.json"));
  write_text(cfg,
             "{\"backends\": {\n"
             "  \"team\": {\"plugin\": \"file\", \"root\": \"%s\"},\n"
             "  \"archive\": {\"plugin\": \"testmem\", \"dir\": \"%s\"}\n"
             "}}\n",
             tmp("guarded"), tmp("guarded-mem"));
  kaun_context *ctx;
  ASSERT_OK(kaun_context_new(cfg, &ctx, &err), err);
  save_model(ctx, "team://m/part-1.safetensors", 1);
  save_model(ctx, "archive://part-2.safetensors", 2);
  kaun_flat *flat;
  /* a local file outside every root */
  write_text(tmp("guarded/m/model.safetensors.index.json"),
             "{\"weight_map\": {\"w\": \"part-1.safetensors\",\n"
             "  \"b\": \"file:///etc/passwd\"}}");
  ASSERT_FAILS(kaun_checkpoint_load_flat(ctx, "team://m", 0, &flat, &err), err, KAUN_EACCESS,
               "team://m/model.safetensors.index.json: line 2: the shard of tensor 'b' is the URI "
               "'file:///etc/passwd', which is not followed");
  CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "set backends.team.index_shard_uris to true in"));
  CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "guarded.json"));
  /* the same backend by URI, and another configured backend */
  write_text(tmp("guarded/m/model.safetensors.index.json"),
             "{\"weight_map\": {\"w\": \"team://m/part-1.safetensors\"}}");
  ASSERT_FAILS(kaun_checkpoint_load_flat(ctx, "team://m", 0, &flat, &err), err, KAUN_EACCESS,
               "'team://m/part-1.safetensors', which is not followed");
  write_text(
      tmp("guarded/m/model.safetensors.index.json"),
      "{\"weight_map\": {\"w\": \"part-1.safetensors\", \"b\": \"archive://part-2.safetensors\"}}");
  kaun_reader *r;
  ASSERT_FAILS(kaun_reader_open(ctx, "team://m/model.safetensors.index.json", &r, &err), err,
               KAUN_EACCESS, "tensor 'b' is the URI 'archive://part-2.safetensors'");
  /* a file name that would stack the index's URI on another object */
  write_text(tmp("guarded/m/model.safetensors.index.json"),
             "{\"weight_map\": {\"w\": \"part-1.safetensors::/etc/passwd\"}}");
  ASSERT_FAILS(kaun_checkpoint_load_flat(ctx, "team://m", 0, &flat, &err), err, KAUN_EINDEX,
               "the shard of tensor 'w' must be a file name relative to the index");
  /* files beside the index are always fine */
  write_text(tmp("guarded/m/model.safetensors.index.json"),
             "{\"weight_map\": {\"w\": \"part-1.safetensors\", \"b\": \"part-1.safetensors\"}}");
  ASSERT_OK(kaun_checkpoint_load_flat(ctx, "team://m", 0, &flat, &err), err);
  CU_ASSERT_EQUAL(first_of(flat, "w"), 1.0f);
  kaun_flat_free(flat);
  kaun_context_free(ctx);
  /* a plain path is the built-in file backend: backends.file.index_shard_uris */
  mkdir(tmp("plain"), 0755);
  write_text(tmp("plain/model.safetensors.index.json"),
             "{\"weight_map\": {\"w\": \"team://m/part-1.safetensors\"}}");
  ASSERT_OK(kaun_context_new(cfg, &ctx, &err), err);
  ASSERT_FAILS(kaun_checkpoint_load_flat(ctx, tmp("plain"), 0, &flat, &err), err, KAUN_EACCESS,
               "set backends.file.index_shard_uris to true");
  kaun_context_free(ctx);
  ASSERT_FAILS(kaun_checkpoint_load_flat(NULL, tmp("plain"), 0, &flat, &err), err, KAUN_EACCESS,
               "set backends.file.index_shard_uris to true in a config file");
  /* allowed: per backend, whatever its plugin */
  write_text(
      cfg,
      "{\"backends\": {\n"
      "  \"file\": {\"index_shard_uris\": true},\n"
      "  \"team\": {\"plugin\": \"file\", \"root\": \"%s\", \"index_shard_uris\": true},\n"
      "  \"archive\": {\"plugin\": \"testmem\", \"dir\": \"%s\", \"index_shard_uris\": false}\n"
      "}}\n",
      tmp("guarded"), tmp("guarded-mem"));
  ASSERT_OK(kaun_context_new(cfg, &ctx, &err), err);
  write_text(
      tmp("guarded/m/model.safetensors.index.json"),
      "{\"weight_map\": {\"w\": \"part-1.safetensors\", \"b\": \"archive://part-2.safetensors\"}}");
  ASSERT_OK(kaun_checkpoint_load_flat(ctx, "team://m", 0, &flat, &err), err);
  CU_ASSERT_EQUAL(first_of(flat, "w"), 1.0f);
  CU_ASSERT_EQUAL(first_of(flat, "b"), -2.0f); /* from the other backend's shard */
  kaun_flat_free(flat);
  ASSERT_OK(kaun_checkpoint_load_flat(ctx, tmp("plain"), 0, &flat, &err), err);
  CU_ASSERT_EQUAL(first_of(flat, "w"), 1.0f);
  kaun_flat_free(flat);
  /* the same index served by a backend that does not allow it */
  mkdir(tmp("guarded-mem/m"), 0755);
  write_text(tmp("guarded-mem/m/model.safetensors.index.json"),
             "{\"weight_map\": {\"w\": \"team://m/part-1.safetensors\"}}");
  ASSERT_FAILS(
      kaun_checkpoint_load_flat(ctx, "archive://m/model.safetensors.index.json", 0, &flat, &err),
      err, KAUN_EACCESS, "set backends.archive.index_shard_uris to true");
  char *text;
  ASSERT_OK(kaun_context_describe(ctx, &text, &err), err);
  CU_ASSERT_PTR_NOT_NULL(strstr(text, "backends.team.index_shard_uris = true\t("));
  CU_ASSERT_PTR_NOT_NULL(strstr(text, "backends.archive.index_shard_uris = false\t("));
  free(text);
  kaun_context_free(ctx);
}

/* Through a mirror, the backend that served the index decides. */
static void test_index_shard_uris_mirrored(void) {
  set_plugin_path();
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx = mixed_context(); /* team allows shard URIs, archive does not */
  save_model(ctx, "team://mirror-part.safetensors", 4);
  mkdir(tmp("archive/mm"), 0755);
  write_text(tmp("archive/mm/model.safetensors.index.json"),
             "{\"weight_map\": {\"w\": \"team://mirror-part.safetensors\"}}");
  kaun_flat *flat;
  ASSERT_FAILS(kaun_checkpoint_load_flat(ctx, "hub://mm", 0, &flat, &err), err, KAUN_EACCESS,
               "an index served by the 'archive' backend");
  mkdir(tmp("team/missing"), 0755);
  mkdir(tmp("team/missing/mm"), 0755);
  write_text(tmp("team/missing/mm/model.safetensors.index.json"),
             "{\"weight_map\": {\"w\": \"team://mirror-part.safetensors\"}}");
  ASSERT_OK(kaun_checkpoint_load_flat(ctx, "hub://mm", 0, &flat, &err), err);
  CU_ASSERT_EQUAL(first_of(flat, "w"), 4.0f);
  kaun_flat_free(flat);
  kaun_context_free(ctx);
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

/* A registry with the index `json` (printf-style) over tmp("reg"), where
 * test_registry saved bert-1.9 and bert-1.10. */
static kaun_context *registry_with(const char *json, ...) __attribute__((format(printf, 1, 2)));
static kaun_context *registry_with(const char *json, ...) {
  char text[16384];
  va_list ap;
  va_start(ap, json);
  vsnprintf(text, sizeof text, json, ap);
  va_end(ap);
  write_text(tmp("reg/index3.json"), "%s", text);
  const char *cfg = tmp("registry3.json");
  write_text(cfg,
             "{\"backends\": {\n"
             "  \"store\": {\"plugin\": \"file\", \"root\": \"%s\"},\n"
             "  \"corp\": {\"plugin\": \"registry\", \"index\": \"store://index3.json\"}\n"
             "}}\n",
             tmp("reg"));
  kaun_context *ctx = NULL;
  kaun_error err = KAUN_ERROR_INIT;
  ASSERT_OK(kaun_context_new(cfg, &ctx, &err), err);
  return ctx;
}

#define REG_FILE(uri) "{\"model.safetensors\": {\"uri\": \"" uri "\"}}"

/* Versions: numbers by value at any length, a pre-release below its
 * release, and keys that are not versions (or the same one twice) are an
 * index error; nothing asked for is cut short. */
static void test_registry_versions(void) {
  set_plugin_path();
  kaun_error err = KAUN_ERROR_INIT;
  kaun_flat *flat = NULL;
  const char *v19 = REG_FILE("store://bert-1.9.safetensors");
  const char *v110 = REG_FILE("store://bert-1.10.safetensors");
  /* the release above its pre-releases; 1.10 above 1.9.9 */
  kaun_context *ctx = registry_with(
      "{\"bert\": {\"1.10-rc1\": %s, \"1.10\": %s, \"1.9.9\": %s, \"1.10-rc.2\": %s,"
      " \"1.10-beta\": %s}}",
      v19, v110, v19, v19, v19);
  ASSERT_OK(kaun_checkpoint_load_flat(ctx, "corp://bert", 0, &flat, &err), err);
  CU_ASSERT_EQUAL(first_of(flat, "w"), 110.0f);
  kaun_flat_free(flat);
  kaun_context_free(ctx);
  /* pre-releases only: SemVer order (rc.2 < rc1: numeric below alphanumeric, rc < rc1) */
  ctx = registry_with("{\"bert\": {\"2.0-rc.2\": %s, \"2.0-rc1\": %s, \"2.0-beta.11\": %s}}", v19,
                      v110, v19);
  ASSERT_OK(kaun_checkpoint_load_flat(ctx, "corp://bert", 0, &flat, &err), err);
  CU_ASSERT_EQUAL(first_of(flat, "w"), 110.0f);
  kaun_flat_free(flat);
  kaun_context_free(ctx);
  /* numbers past 64 bits do not tie */
  ctx = registry_with(
      "{\"bert\": {\"1.99999999999999999999999\": %s,"
      " \"1.100000000000000000000000\": %s, \"1.0000000000000000000000000009\": %s}}",
      v19, v110, v19);
  ASSERT_OK(kaun_checkpoint_load_flat(ctx, "corp://bert", 0, &flat, &err), err);
  CU_ASSERT_EQUAL(first_of(flat, "w"), 110.0f);
  kaun_flat_free(flat);
  kaun_context_free(ctx);
  /* not versions: an index error naming the key, for any open of the model */
  const char *bad[] = {"1.-1", "latest", "1..2", "v1", "1.0-", "1.0-rc..1", "", "1.0+build"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    ctx = registry_with("{\"bert\": {\"1.9\": %s, \"%s\": %s}}", v19, bad[i], v110);
    char want[200];
    snprintf(want, sizeof want, "gives model 'bert' a version '%s' that is not one", bad[i]);
    ASSERT_FAILS(kaun_checkpoint_load_flat(ctx, "corp://bert", 0, &flat, &err), err, KAUN_EINDEX,
                 want);
    ASSERT_FAILS(kaun_checkpoint_load_flat(ctx, "corp://bert@1.9", 0, &flat, &err), err,
                 KAUN_EINDEX, want);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "index3.json"));
    kaun_context_free(ctx);
  }
  ctx = registry_with("{\"bert\": {\"1.0\": %s, \"1\": %s}}", v19, v110);
  ASSERT_FAILS(kaun_checkpoint_load_flat(ctx, "corp://bert", 0, &flat, &err), err, KAUN_EINDEX,
               "which are the same version");
  kaun_context_free(ctx);
  /* the same, neither of them the latest, whichever is asked for */
  ctx = registry_with("{\"bert\": {\"2\": %s, \"1\": %s, \"1.0.0\": %s}}", v110, v19, v110);
  const char *asks[] = {"corp://bert", "corp://bert@1", "corp://bert@1.0.0", "corp://bert@2"};
  for (int i = 0; i < 4; i++)
    ASSERT_FAILS(kaun_checkpoint_load_flat(ctx, asks[i], 0, &flat, &err), err, KAUN_EINDEX,
                 "the versions '1' and '1.0.0', which are the same version");
  kaun_context_free(ctx);
  /* a version asked for is never cut: 127 characters were, serving another */
  char v127[128], asked[300];
  memset(v127, '0', 127);
  v127[0] = '1';
  v127[1] = '.';
  v127[127] = '\0';
  ctx = registry_with("{\"bert\": {\"%s\": %s}}", v127, v19);
  snprintf(asked, sizeof asked, "corp://bert@%s1", v127);
  ASSERT_FAILS(kaun_checkpoint_load_flat(ctx, asked, 0, &flat, &err), err, KAUN_ENOENT,
               "has no version");
  snprintf(asked, sizeof asked, "corp://bert@%s", v127);
  ASSERT_OK(kaun_checkpoint_load_flat(ctx, asked, 0, &flat, &err), err);
  kaun_flat_free(flat);
  ASSERT_FAILS(kaun_checkpoint_load_flat(ctx, "corp://bert@", 0, &flat, &err), err, KAUN_EURI,
               "want corp://NAME[@VERSION][/PATH]");
  kaun_context_free(ctx);
  /* nor a URI in the index: 1023 characters were */
  char deep[1400] = "", dir[1600];
  size_t at = 0;
  for (int i = 0; i < 6; i++) {
    at += (size_t)snprintf(deep + at, sizeof deep - at, "%s", i ? "/" : "");
    for (int k = 0; k < 180; k++) deep[at++] = (char)('a' + i);
    deep[at] = '\0';
  }
  snprintf(dir, sizeof dir, "store://%s/m.safetensors", deep);
  CU_ASSERT(strlen(dir) > 1023);
  ctx = registry_with("{\"long\": {\"1\": {\"model.safetensors\": {\"uri\": \"%s\"}}}}", dir);
  save_model(ctx, dir, 7);
  ASSERT_OK(kaun_checkpoint_load_flat(ctx, "corp://long", 0, &flat, &err), err);
  CU_ASSERT_EQUAL(first_of(flat, "w"), 7.0f);
  kaun_flat_free(flat);
  kaun_context_free(ctx);
}

/* The index is read strictly and whole: any mistake fails every open,
 * naming the entry (json-c alone would keep the last of two equal keys,
 * accept a trailing comma and ignore a misspelt "sha256"). */
static void test_registry_index_strict(void) {
  set_plugin_path();
  kaun_error err = KAUN_ERROR_INIT;
  kaun_flat *flat = NULL;
  const char *ok = "{\"uri\": \"store://bert-1.9.safetensors\"}";
  struct {
    const char *index, *says;
  } bad[] = {
      {"{\"bert\": {\"1.9\": {\"model.safetensors\": %s}, \"1.9\": {\"model.safetensors\": %s}}}",
       "has a key twice in one object"},
      {"{\"bert\": {\"1.9\": {\"model.safetensors\": %s, \"x\": %s,}}}", "not a JSON object"},
      {"{\"bert\": {\"1.9\": {\"model.safetensors\": %s, \"x\": %s}}} trailing",
       "is not a JSON object of models"},
      {"{\"bert\": {\"1.9\": {\"model.safetensors\": %s, \"x\": {\"uri\": \"/x\", \"sha\": "
       "\"ab\"}}}}",
       "gives bert@1.9/x the unknown key 'sha' (known: uri, sha256)"},
      {"{\"bert\": {\"1.9\": {\"model.safetensors\": %s, \"x\": {\"url\": \"/x\"}}}}",
       "gives bert@1.9/x no \"uri\" string"},
      {"{\"bert\": {\"1.9\": {\"model.safetensors\": %s, \"x\": {\"uri\": \"rel/x\"}}}}",
       "gives bert@1.9/x the relative uri 'rel/x'"},
      {"{\"bert\": {\"1.9\": {\"model.safetensors\": %s}}, \"gpt\": [%s]}",
       "gives model 'gpt' something that is not an object of versions"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    kaun_context *ctx = registry_with(bad[i].index, ok, ok);
    ASSERT_FAILS(kaun_checkpoint_load_flat(ctx, "corp://bert@1.9", 0, &flat, &err), err,
                 KAUN_EINDEX, bad[i].says);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "index3.json"));
    kaun_context_free(ctx);
  }
  /* the same entries, written right, load */
  kaun_context *ctx = registry_with(
      "{\"bert\": {\"1.9\": {\"model.safetensors\": %s, \"x\": {\"uri\": \"/x\"}}}}  \n", ok);
  ASSERT_OK(kaun_checkpoint_load_flat(ctx, "corp://bert@1.9", 0, &flat, &err), err);
  kaun_flat_free(flat);
  kaun_context_free(ctx);
}

/* Versions drawn at random as tuples (release numbers, then pre-release
 * identifiers: a number, or letters), compared as tuples here, written
 * out with leading zeros and trailing ".0"s that must not matter: the
 * registry's latest must be the tuple order's greatest, 40 times. */
typedef struct vtuple {
  unsigned rel[4];
  int npre; /* 0: a release */
  int pre_num[3];
  char pre_word[3][4]; /* "" when the identifier is numeric */
} vtuple;

static int vtuple_cmp(const vtuple *a, const vtuple *b) {
  for (int i = 0; i < 4; i++)
    if (a->rel[i] != b->rel[i]) return a->rel[i] < b->rel[i] ? -1 : 1;
  if (!a->npre || !b->npre) return (a->npre == 0) - (b->npre == 0);
  for (int i = 0; i < a->npre && i < b->npre; i++) {
    int wa = a->pre_word[i][0] != 0, wb = b->pre_word[i][0] != 0;
    if (wa != wb) return wa ? 1 : -1;
    int c = wa ? strcmp(a->pre_word[i], b->pre_word[i])
               : (a->pre_num[i] > b->pre_num[i]) - (a->pre_num[i] < b->pre_num[i]);
    if (c) return c < 0 ? -1 : 1;
  }
  return (a->npre > b->npre) - (a->npre < b->npre);
}

static void vtuple_text(const vtuple *v, char *out, size_t size) {
  int last = 3;
  while (last > 0 && v->rel[last] == 0 && rand() % 2) last--; /* "1.2" for 1.2.0.0 */
  size_t n = 0;
  for (int i = 0; i <= last; i++)
    n += (size_t)snprintf(out + n, size - n, "%s%s%u", i ? "." : "", rand() % 4 ? "" : "00",
                          v->rel[i]);
  for (int i = 0; i < v->npre; i++) {
    if (v->pre_word[i][0])
      n += (size_t)snprintf(out + n, size - n, "%s%s", i ? "." : "-", v->pre_word[i]);
    else
      n += (size_t)snprintf(out + n, size - n, "%s%d", i ? "." : "-", v->pre_num[i]);
  }
}

static void test_registry_versions_random(void) {
  set_plugin_path();
  kaun_error err = KAUN_ERROR_INIT;
  srand(20261130);
  enum { N = 12 };
  for (int round = 0; round < 40; round++) {
    vtuple v[N];
    memset(v, 0, sizeof v);
    for (int i = 0; i < N; i++) {
      for (int k = 0; k < 4; k++) v[i].rel[k] = (unsigned)(rand() % 3 ? rand() % 3 : rand());
      v[i].npre = rand() % 3 ? 0 : 1 + rand() % 3;
      for (int k = 0; k < v[i].npre; k++) {
        if (rand() % 2) {
          v[i].pre_num[k] = rand() % 12;
        } else {
          static const char *words[] = {"a", "alpha", "b", "beta", "rc", "rc1", "z9"};
          snprintf(v[i].pre_word[k], sizeof v[i].pre_word[k], "%.3s", words[rand() % 7]);
        }
      }
    }
    int best = 0, tie = 0;
    for (int i = 1; i < N; i++)
      if (vtuple_cmp(&v[i], &v[best]) > 0) best = i;
    /* ties are test_registry_versions' (JSON would merge equal keys) */
    for (int i = 0; i < N; i++)
      for (int k = 0; k < i; k++) tie |= vtuple_cmp(&v[i], &v[k]) == 0;
    if (tie) {
      round--;
      continue;
    }
    char index[16384], text[200];
    size_t n = (size_t)snprintf(index, sizeof index, "{\"bert\": {");
    for (int i = 0; i < N; i++) {
      vtuple_text(&v[i], text, sizeof text);
      n += (size_t)snprintf(index + n, sizeof index - n, "%s\"%s\": %s", i ? ", " : "", text,
                            i == best ? REG_FILE("store://bert-1.10.safetensors")
                                      : REG_FILE("store://bert-1.9.safetensors"));
    }
    snprintf(index + n, sizeof index - n, "}}");
    kaun_context *ctx = registry_with("%s", index);
    kaun_flat *flat = NULL;
    int rc = kaun_checkpoint_load_flat(ctx, "corp://bert", 0, &flat, &err);
    CU_ASSERT_EQUAL(rc, KAUN_OK);
    CU_ASSERT_EQUAL(first_of(flat, "w"), 110.0f);
    if (rc || first_of(flat, "w") != 110.0f) fprintf(stderr, "\n  index: %s\n", index);
    kaun_flat_free(flat);
    kaun_context_free(ctx);
  }
}

/* The sha256: hex in either case; anything else is an index error; a file
 * rewritten in place after the check is KAUN_ECHANGED, not served. */
static void test_registry_sha256(void) {
  set_plugin_path();
  kaun_error err = KAUN_ERROR_INIT;
  kaun_flat *flat = NULL;
  kaun_context *ctx = registry_with("{}");
  save_model(ctx, "store://victim.safetensors", 5);
  kaun_context_free(ctx);
  char sha[KAUN_SHA256_HEX_SIZE], upper[KAUN_SHA256_HEX_SIZE];
  sha_of(tmp("reg/victim.safetensors"), sha);
  for (int i = 0; i < KAUN_SHA256_HEX_SIZE; i++) upper[i] = (char)toupper((unsigned char)sha[i]);
  const char *fmt =
      "{\"v\": {\"1\": {\"model.safetensors\": {\"uri\": "
      "\"store://victim.safetensors\", \"sha256\": \"%s\"}}}}";
  ctx = registry_with(fmt, upper);
  ASSERT_OK(kaun_checkpoint_load_flat(ctx, "corp://v", 0, &flat, &err), err);
  CU_ASSERT_EQUAL(first_of(flat, "w"), 5.0f);
  kaun_flat_free(flat);
  kaun_context_free(ctx);
  ctx = registry_with(fmt, "sha256:abc");
  ASSERT_FAILS(kaun_checkpoint_load_flat(ctx, "corp://v", 0, &flat, &err), err, KAUN_EINDEX,
               "is not 64 hex digits: 'sha256:abc'");
  kaun_context_free(ctx);

  /* opened and verified, then rewritten in place (same size, same inode) */
  ctx = registry_with(fmt, sha);
  usleep(20000); /* the rewrite in a later clock tick than the save */
  kaun_object *o;
  ASSERT_OK(kaun_object_open(ctx, "corp://v@1/model.safetensors", &o, &err), err);
  unsigned char head[16];
  ASSERT_OK(kaun_object_read(o, 0, head, sizeof head, &err), err);
  int fd = open(tmp("reg/victim.safetensors"), O_WRONLY);
  CU_ASSERT_FATAL(fd >= 0);
  struct stat st;
  CU_ASSERT(fstat(fd, &st) == 0);
  CU_ASSERT(pwrite(fd, "\x7f", 1, st.st_size - 1) == 1);
  close(fd);
  ASSERT_FAILS(kaun_object_read(o, 0, head, sizeof head, &err), err, KAUN_ECHANGED,
               "corp://v@1/model.safetensors: store://victim.safetensors changed after its "
               "sha256 was checked");
  kaun_buffer *map = NULL;
  ASSERT_FAILS(kaun_object_map_range(o, 0, 8, &map, &err), err, KAUN_ECHANGED, "open it again");
  CU_ASSERT_PTR_NULL(map);
  kaun_object_close(o);
  ASSERT_FAILS(kaun_checkpoint_load_flat(ctx, "corp://v", 0, &flat, &err), err, KAUN_ECHECKSUM,
               "the sha256 of store://victim.safetensors is");
  kaun_context_free(ctx);
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

/* ---- cycles between backends fail fast, never deadlock -------------------------------------- */

typedef struct cycle_job {
  kaun_context *ctx;
  const char *uri;
  int rc;
  char message[KAUN_ERROR_MESSAGE_MAX];
} cycle_job;

static void *load_cycle(void *arg) {
  cycle_job *job = arg;
  kaun_error err = KAUN_ERROR_INIT;
  kaun_flat *flat = NULL;
  job->rc = kaun_checkpoint_load_flat(job->ctx, job->uri, 0, &flat, &err);
  snprintf(job->message, sizeof job->message, "%s", err.message);
  kaun_flat_free(flat);
  return NULL;
}

/* A registry whose index it serves itself, and two registries whose
 * indexes each live on the other, used to deadlock on the registry's
 * lock; now the core sees the URI come back and says so. */
static void test_registry_cycles(void) {
  set_plugin_path();
  alarm(60); /* a regression hangs: fail instead */
  kaun_error err = KAUN_ERROR_INIT;
  mkdir(tmp("regcycle"), 0755);
  char cfg[8300];
  snprintf(cfg, sizeof cfg, "%s", tmp("regcycle.json"));
  write_text(cfg,
             "{\"backends\": {\n"
             "  \"store\": {\"plugin\": \"file\", \"root\": \"%s\"},\n"
             "  \"self\": {\"plugin\": \"registry\", \"index\": \"self://idx@1/index.json\"},\n"
             "  \"rega\": {\"plugin\": \"registry\", \"index\": \"regb://idx@1/index.json\"},\n"
             "  \"regb\": {\"plugin\": \"registry\", \"index\": \"rega://idx@1/index.json\"},\n"
             "  \"good\": {\"plugin\": \"registry\", \"index\": \"store://index.json\"}\n"
             "}}\n",
             tmp("regcycle"));
  kaun_context *ctx;
  ASSERT_OK(kaun_context_new(cfg, &ctx, &err), err);
  save_model(ctx, "store://m.safetensors", 8);
  write_text(tmp("regcycle/index.json"),
             "{\"bert\": {\"1\": {\"model.safetensors\": {\"uri\": \"store://m.safetensors\"}}}}");
  kaun_flat *flat;
  ASSERT_FAILS(kaun_checkpoint_load_flat(ctx, "self://bert@1", 0, &flat, &err), err, KAUN_EURI,
               "'self://idx@1/index.json' leads back to itself: self://idx@1/index.json -> "
               "self://idx@1/index.json (reached from self://bert@1)");
  ASSERT_FAILS(kaun_checkpoint_load_flat(ctx, "rega://bert", 0, &flat, &err), err, KAUN_EURI,
               "'regb://idx@1/index.json' leads back to itself: regb://idx@1/index.json -> "
               "rega://idx@1/index.json -> regb://idx@1/index.json");
  ASSERT_FAILS(kaun_checkpoint_load_flat(ctx, "regb://bert", 0, &flat, &err), err, KAUN_EURI,
               "rega://idx@1/index.json -> regb://idx@1/index.json -> rega://idx@1/index.json");
  /* a registry that works still does, in the same context */
  ASSERT_OK(kaun_checkpoint_load_flat(ctx, "good://bert", 0, &flat, &err), err);
  CU_ASSERT_EQUAL(first_of(flat, "w"), 8.0f);
  kaun_flat_free(flat);
  kaun_context_free(ctx);
  /* from several threads at once, on a fresh context: each fails, none waits */
  ASSERT_OK(kaun_context_new(cfg, &ctx, &err), err);
  pthread_t th[6];
  cycle_job jobs[6];
  const char *uris[] = {"self://bert", "rega://bert", "regb://bert"};
  for (int i = 0; i < 6; i++) {
    jobs[i] = (cycle_job){ctx, uris[i % 3], 0, ""};
    pthread_create(&th[i], NULL, load_cycle, &jobs[i]);
  }
  for (int i = 0; i < 6; i++) {
    pthread_join(th[i], NULL);
    CU_ASSERT_EQUAL(jobs[i].rc, KAUN_EURI);
    if (!strstr(jobs[i].message, "leads back to itself")) {
      fprintf(stderr, "\n  %s: %s\n", jobs[i].uri, jobs[i].message);
      CU_FAIL("a cycle was not reported as one");
    }
  }
  kaun_context_free(ctx);
  alarm(0);
}

/* Backends whose creation opens a URI on the other: on one thread the
 * creation finds itself pending; on two threads, each waiting for the
 * other's creation, the second to wait sees the circle. */
static void test_create_cycles(void) {
  set_plugin_path();
  alarm(60);
  kaun_error err = KAUN_ERROR_INIT;
  mkdir(tmp("createcycle"), 0755);
  write_text(tmp("createcycle/f"), "x");
  write_text(tmp("createcycle/g"), "x");
  char cfg[8300];
  snprintf(cfg, sizeof cfg, "%s", tmp("createcycle.json"));
  write_text(cfg,
             "{\"backends\": {\n"
             "  \"cx\": {\"plugin\": \"testmem\", \"dir\": \"%s\", \"create_open\": \"cy://f\",\n"
             "         \"create_delay_ms\": 300},\n"
             "  \"cy\": {\"plugin\": \"testmem\", \"dir\": \"%s\", \"create_open\": \"cx://g\",\n"
             "         \"create_delay_ms\": 300}\n"
             "}}\n",
             tmp("createcycle"), tmp("createcycle"));
  kaun_context *ctx;
  ASSERT_OK(kaun_context_new(cfg, &ctx, &err), err);
  kaun_object *o;
  ASSERT_FAILS(kaun_object_open(ctx, "cx://f", &o, &err), err, KAUN_EURI,
               "creating the backend 'cx' needs the backend 'cx' itself: its options lead back "
               "to it: cx://f -> cy://f -> cx://g");
  kaun_context_free(ctx);
  int across = 0;
  for (int round = 0; round < 3; round++) {
    ASSERT_OK(kaun_context_new(cfg, &ctx, &err), err);
    pthread_t th[2];
    cycle_job jobs[2] = {{ctx, "cx://f", 0, ""}, {ctx, "cy://f", 0, ""}};
    for (int i = 0; i < 2; i++) pthread_create(&th[i], NULL, load_cycle, &jobs[i]);
    for (int i = 0; i < 2; i++) {
      pthread_join(th[i], NULL);
      CU_ASSERT_EQUAL(jobs[i].rc, KAUN_EURI);
      if (!strstr(jobs[i].message, " back to ")) {
        fprintf(stderr, "\n  %s: %s\n", jobs[i].uri, jobs[i].message);
        CU_FAIL("a cycle between two threads' creations was not reported as one");
      }
      across += strstr(jobs[i].message, "waits for creations on other threads") != NULL;
    }
    kaun_context_free(ctx);
  }
  CU_ASSERT(across >= 1); /* the circle of two waiting threads was seen */
  alarm(0);
}

/* ---- plugins are code: where they load from, and who may have changed them ---------------- */

/* Copies the test plugin testmem.so to `dst` with `mode`. */
static void copy_testmem(const char *dst, mode_t mode) {
  char src[4200];
  snprintf(src, sizeof src, "%s/testmem.so", getenv("KAUN_TEST_PLUGINS"));
  char *bytes;
  size_t len;
  kaun_error err = KAUN_ERROR_INIT;
  ASSERT_OK(kaun_storage_read_all(NULL, src, 64u << 20, &bytes, &len, &err), err);
  FILE *f = fopen(dst, "wb");
  CU_ASSERT_FATAL(f != NULL);
  CU_ASSERT_EQUAL(fwrite(bytes, 1, len, f), len);
  fclose(f);
  free(bytes);
  CU_ASSERT_EQUAL(chmod(dst, mode), 0);
}

/* Whether a file under `dir` is mapped into this process (dlopen'd). */
static int mapped_under(const char *dir) {
  FILE *f = fopen("/proc/self/maps", "r");
  if (!f) return 0;
  char line[8300];
  int found = 0;
  while (!found && fgets(line, sizeof line, f)) found = strstr(line, dir) != NULL;
  fclose(f);
  return found;
}

/* tmp() with the real path of the temporary folder (the loader names real paths) */
static const char *real_tmp(const char *name) {
  static char buf[4][8300];
  static int k;
  char root[4096];
  if (!realpath(tmp_root, root)) snprintf(root, sizeof root, "%s", tmp_root);
  char *b = buf[k++ % 4];
  snprintf(b, 8300, "%s/%s", root, name);
  return b;
}

/* Relative plugin_dirs and plugin paths in a config are its folder's, never
 * the working directory's. */
static void test_plugin_paths_beside_config(void) {
  unsetenv("KAUN_PLUGIN_PATH");
  kaun_error err = KAUN_ERROR_INIT;
  char cwd[4096];
  CU_ASSERT_FATAL(getcwd(cwd, sizeof cwd) != NULL);
  mkdir(tmp("cfgdir"), 0755);
  mkdir(tmp("cfgdir/plugins"), 0755);
  mkdir(tmp("cfgdir/mem"), 0755);
  mkdir(tmp("cfg2"), 0755);
  copy_testmem(tmp("cfgdir/plugins/testmem.so"), 0755);
  const char *cfg = tmp("cfgdir/kaun.json"), *cfg2 = tmp("cfg2/kaun.json");
  const char *forms[] = {
      "\"plugin_dirs\": [\"plugins\"], \"backends\": {\"m\": {\"plugin\": "
      "\"testmem\"",
      "\"backends\": {\"m\": {\"plugin\": \"plugins/testmem.so\"",
      "\"backends\": {\"m\": {\"plugin\": \"./plugins/testmem.so\""};
  CU_ASSERT_EQUAL_FATAL(chdir("/"), 0);
  for (size_t i = 0; i < sizeof forms / sizeof *forms; i++) {
    write_text(cfg, "{%s, \"dir\": \"%s\"}}}\n", forms[i], tmp("cfgdir/mem"));
    kaun_context *ctx;
    ASSERT_OK(kaun_context_new(cfg, &ctx, &err), err);
    char *text;
    ASSERT_OK(kaun_context_describe(ctx, &text, &err), err);
    if (!strstr(text, "loaded from ") || !strstr(text, "cfgdir/plugins/testmem.so")) {
      fprintf(stderr, "\n  form %zu: %s\n", i, text);
      CU_FAIL("the plugin was not loaded from the config's folder");
    }
    if (i == 0) {
      char want[8400];
      snprintf(want, sizeof want, "plugin_dirs[0] = %s\t", real_tmp("cfgdir/plugins"));
      CU_ASSERT_PTR_NOT_NULL(strstr(text, want));
    }
    free(text);
    save_model(ctx, "m://beside.safetensors", 4);
    kaun_context_free(ctx);
  }
  /* a relative config path: its folder is taken when the context is made */
  CU_ASSERT_EQUAL_FATAL(chdir(tmp_root), 0);
  write_text(cfg, "{%s, \"dir\": \"%s\"}}}\n", forms[0], tmp("cfgdir/mem"));
  kaun_context *ctx;
  ASSERT_OK(kaun_context_new("cfgdir/kaun.json", &ctx, &err), err);
  CU_ASSERT_EQUAL_FATAL(chdir("/"), 0);
  kaun_flat *flat;
  ASSERT_OK(kaun_checkpoint_load_flat(ctx, "m://beside.safetensors", 0, &flat, &err), err);
  CU_ASSERT_EQUAL(first_of(flat, "w"), 4.0f);
  kaun_flat_free(flat);
  char *text;
  ASSERT_OK(kaun_context_describe(ctx, &text, &err), err);
  char want[8400];
  snprintf(want, sizeof want, "plugin_dirs[0] = %s\t", real_tmp("cfgdir/plugins"));
  CU_ASSERT_PTR_NOT_NULL(strstr(text, want));
  free(text);
  kaun_context_free(ctx);
  /* the working directory holds plugins/testmem.so, the config's folder does not */
  CU_ASSERT_EQUAL_FATAL(chdir(tmp("cfgdir")), 0);
  write_text(cfg2,
             "{\"plugin_dirs\": [\"plugins\"], \"backends\": {\"m\": {\"plugin\": "
             "\"testmem\", \"dir\": \"/\"}}}\n");
  ASSERT_FAILS(kaun_context_new(cfg2, &ctx, &err), err, KAUN_ECONFIG, real_tmp("cfg2/plugins"));
  CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "no plugin 'testmem'"));
  write_text(cfg2,
             "{\"backends\": {\"m\": {\"plugin\": \"plugins/testmem.so\", \"dir\": \"/\"}}}\n");
  ASSERT_FAILS(kaun_context_new(cfg2, &ctx, &err), err, KAUN_ECONFIG,
               real_tmp("cfg2/plugins/testmem.so"));
  CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "cannot load plugin"));
  CU_ASSERT_EQUAL(chdir(cwd), 0);
}

/* A relative KAUN_PLUGIN_PATH entry is refused, naming it. */
static void test_plugin_path_env_relative(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx = NULL;
  const char *bad[] = {"plugins", ".", "./lib/kaun"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    char path[8400], needle[200];
    snprintf(path, sizeof path, "%s:%s", getenv("KAUN_TEST_PLUGINS"), bad[i]);
    setenv("KAUN_PLUGIN_PATH", path, 1);
    snprintf(needle, sizeof needle, "KAUN_PLUGIN_PATH: the entry '%s' is relative", bad[i]);
    ASSERT_FAILS(kaun_context_new(NULL, &ctx, &err), err, KAUN_ECONFIG, needle);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "use an absolute path"));
    CU_ASSERT_PTR_NULL(ctx);
  }
  /* empty entries mean nothing (not the working directory) */
  char path[8400];
  snprintf(path, sizeof path, ":%s::", getenv("KAUN_TEST_PLUGINS"));
  setenv("KAUN_PLUGIN_PATH", path, 1);
  ASSERT_OK(kaun_context_new(NULL, &ctx, &err), err);
  kaun_context_free(ctx);
  unsetenv("KAUN_PLUGIN_PATH");
}

/* Loads `so` as a backend's plugin through a config: expects `code`
 * (KAUN_OK, or the error naming `needle`), and that a refused file was
 * never dlopen'd. */
static void expect_trust(const char *so, int code, const char *needle) {
  const char *cfg = tmp("trust.json");
  write_text(cfg, "{\"backends\": {\"m\": {\"plugin\": \"%s\", \"dir\": \"/\"}}}", so);
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx = NULL;
  if (code == KAUN_OK) {
    ASSERT_OK(kaun_context_new(cfg, &ctx, &err), err);
    kaun_context_free(ctx);
    return;
  }
  ASSERT_FAILS(kaun_context_new(cfg, &ctx, &err), err, code, needle);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.message,
                                "kaun only loads plugins that only root or you can "
                                "change"));
  CU_ASSERT_FALSE(mapped_under(so));
}

/* Files and folders others could have changed are refused before dlopen:
 * through a config, by an unknown scheme, and by `kaun plugins`. */
static void test_plugin_trust(void) {
  unsetenv("KAUN_PLUGIN_PATH");
  mkdir(tmp("hostile"), 0755);
  copy_testmem(tmp("hostile/testmem.so"), 0755 | S_IWOTH);
  char needle[8400];
  snprintf(needle, sizeof needle, "%s is writable by others", real_tmp("hostile/testmem.so"));
  expect_trust(tmp("hostile/testmem.so"), KAUN_ECONFIG, needle);
  /* a folder on the way, writable by others */
  mkdir(tmp("open"), 0755);
  CU_ASSERT_EQUAL(chmod(tmp("open"), 0777), 0);
  mkdir(tmp("open/sub"), 0755);
  copy_testmem(tmp("open/sub/testmem.so"), 0755);
  snprintf(needle, sizeof needle, "%s is writable by others", real_tmp("open"));
  expect_trust(tmp("open/sub/testmem.so"), KAUN_ECONFIG, needle);
  /* a sticky folder (as /tmp) may be writable by anyone: its entries are safe */
  mkdir(tmp("sticky"), 0755);
  CU_ASSERT_EQUAL(chmod(tmp("sticky"), 01777), 0);
  mkdir(tmp("sticky/mine"), 0755);
  copy_testmem(tmp("sticky/mine/testmem.so"), 0755);
  expect_trust(tmp("sticky/mine/testmem.so"), KAUN_OK, NULL);
  /* a symbolic link is followed, and the file it leads to is checked */
  mkdir(tmp("links"), 0755);
  CU_ASSERT_EQUAL(symlink(tmp("hostile/testmem.so"), tmp("links/testmem.so")), 0);
  snprintf(needle, sizeof needle, "%s is writable by others", real_tmp("hostile/testmem.so"));
  expect_trust(tmp("links/testmem.so"), KAUN_ECONFIG, needle);
  CU_ASSERT_PTR_NOT_NULL(strstr(needle, "hostile"));
  /* another owner, a group that is not root's nor yours: root can make them */
  if (geteuid() == 0) {
    mkdir(tmp("owners"), 0755);
    copy_testmem(tmp("owners/theirs.so"), 0755);
    CU_ASSERT_EQUAL(chown(tmp("owners/theirs.so"), 65534, 0), 0);
    snprintf(needle, sizeof needle, "%s is owned by uid 65534, not by you (uid 0) or root",
             real_tmp("owners/theirs.so"));
    expect_trust(tmp("owners/theirs.so"), KAUN_ECONFIG, needle);
    copy_testmem(tmp("owners/group.so"), 0775);
    CU_ASSERT_EQUAL(chown(tmp("owners/group.so"), 0, 0), 0);
    expect_trust(tmp("owners/group.so"), KAUN_OK, NULL); /* root's group */
    CU_ASSERT_EQUAL(chown(tmp("owners/group.so"), 0, 65534), 0);
    CU_ASSERT_EQUAL(chmod(tmp("owners/group.so"), 0775), 0); /* chown drops nothing here */
    snprintf(needle, sizeof needle, "%s is writable by its group (gid 65534)",
             real_tmp("owners/group.so"));
    expect_trust(tmp("owners/group.so"), KAUN_ECONFIG, needle);
    CU_ASSERT_EQUAL(chmod(tmp("owners/group.so"), 0755), 0);
    expect_trust(tmp("owners/group.so"), KAUN_OK, NULL); /* not writable by the group */
    CU_ASSERT_EQUAL(chown(tmp("owners"), 65534, 65534), 0);
    snprintf(needle, sizeof needle, "%s is owned by uid 65534", real_tmp("owners"));
    expect_trust(tmp("owners/group.so"), KAUN_ECONFIG, needle);
    CU_ASSERT_EQUAL(chown(tmp("owners"), 0, 0), 0);
  } else {
    fprintf(stderr, "\n  (ownership cases skipped: they need root to chown)\n");
  }
  /* an unknown scheme finds hostile/testmem.so on the search path: refused */
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx;
  setenv("KAUN_PLUGIN_PATH", tmp("hostile"), 1);
  ASSERT_OK(kaun_context_new(NULL, &ctx, &err), err);
  kaun_object *o;
  snprintf(needle, sizeof needle, "%s is writable by others", real_tmp("hostile/testmem.so"));
  ASSERT_FAILS(kaun_object_open(ctx, "testmem://x", &o, &err), err, KAUN_EPLUGIN, needle);
  /* `kaun plugins` lists it as BROKEN, with why, without loading it; a
   * FIFO named like a plugin is not opened (it would block) */
  CU_ASSERT_EQUAL(mkfifo(tmp("hostile/fifo.so"), 0644), 0);
  char *text;
  ASSERT_OK(kaun_plugins_describe(ctx, &text, &err), err);
  char line[17000];
  snprintf(line, sizeof line, "BROKEN\t%s\t%s", tmp("hostile/testmem.so"), needle);
  if (!strstr(text, line)) {
    fprintf(stderr, "\n  wanted '%s' in:\n%s\n", line, text);
    CU_FAIL("kaun plugins does not list the refused file as BROKEN with why");
  }
  snprintf(line, sizeof line, "%s is not a regular file", real_tmp("hostile/fifo.so"));
  CU_ASSERT_PTR_NOT_NULL(strstr(text, line));
  free(text);
  CU_ASSERT_FALSE(mapped_under(tmp("hostile")));
  kaun_context_free(ctx);
  unsetenv("KAUN_PLUGIN_PATH");
}

/* A scheme no plugin can be named ('+', '.') never selects a file. */
static void test_plugin_scheme_names(void) {
  mkdir(tmp("dots"), 0755);
  copy_testmem(tmp("dots/a.b.so"), 0755);
  setenv("KAUN_PLUGIN_PATH", tmp("dots"), 1);
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx;
  ASSERT_OK(kaun_context_new(NULL, &ctx, &err), err);
  kaun_object *o;
  ASSERT_FAILS(kaun_object_open(ctx, "a.b://x", &o, &err), err, KAUN_EBACKEND,
               "no backend answers to 'a.b://'");
  CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "no plugin 'a.b': plugin names are"));
  CU_ASSERT_FALSE(mapped_under(tmp("dots")));
  kaun_context_free(ctx);
  unsetenv("KAUN_PLUGIN_PATH");
  const char *cfg = tmp("dots.json");
  write_text(cfg, "{\"plugin_dirs\": [\"%s\"], \"backends\": {\"a.b\": {}}}", tmp("dots"));
  ASSERT_FAILS(kaun_context_new(cfg, &ctx, &err), err, KAUN_ECONFIG,
               "backends.a.b.plugin: no plugin 'a.b'");
  CU_ASSERT_FALSE(mapped_under(tmp("dots")));
}

typedef struct model_job {
  kaun_context *ctx;
  const char *uri;
  float want;
  int loads, failures;
  char message[KAUN_ERROR_MESSAGE_MAX];
} model_job;

static void *load_model_loop(void *arg) {
  model_job *job = arg;
  for (int i = 0; i < 12; i++) {
    kaun_error err = KAUN_ERROR_INIT;
    kaun_flat *flat = NULL;
    int rc = kaun_checkpoint_load_flat(job->ctx, job->uri, i % 2 ? KAUN_LOAD_COPY : 0, &flat, &err);
    job->loads++;
    if (rc != KAUN_OK || first_of(flat, "w") != job->want || first_of(flat, "b") != -job->want) {
      job->failures++;
      snprintf(job->message, sizeof job->message, "%s", rc ? err.message : "wrong values");
    }
    kaun_flat_free(flat);
  }
  return NULL;
}

/* Four threads load four different models through one context, each from
 * another backend: a file root (zero-copy), a plugin (testmem), http://
 * (tests/servers/httpd.py) and a tar member read by range over http.
 * Backends are created under the race; scripts/dev.sh tsan runs this under
 * ThreadSanitizer. */
static void test_threads_four_models(void) {
  set_plugin_path();
  mkdir(tmp("web"), 0755);
  kaun_context *ctx = mixed_context();
  save_model(ctx, "team://four/t0.safetensors", 10);
  save_model(ctx, "archive://t1.safetensors", 20);
  save_model(NULL, tmp("web/t2.safetensors"), 30);
  save_model(NULL, tmp("web/t3.safetensors"), 40);
  kaun_context_free(ctx);
  char cmd[8600];
  snprintf(cmd, sizeof cmd, "tar cf '%s' -C '%s' t3.safetensors", tmp("web/bundle.tar"),
           tmp("web"));
  CU_ASSERT_EQUAL_FATAL(system(cmd), 0);
  test_server web;
  CU_ASSERT_EQUAL_FATAL(test_server_start(&web, tmp("web"), tmp("web.port")), 0);
  test_server_reset(&web);
  test_server_faults(&web, "{\"path\": \"*\", \"delay\": 0.002, \"count\": -1}"); /* overlap */
  char u2[128], u3[160];
  snprintf(u2, sizeof u2, "%s/t2.safetensors", web.url);
  snprintf(u3, sizeof u3, "tar://t3.safetensors::%s/bundle.tar", web.url);
  ctx = mixed_context(); /* fresh: no backend instance exists yet */
  model_job jobs[4] = {{ctx, "team://four/t0.safetensors", 10, 0, 0, ""},
                       {ctx, "archive://t1.safetensors", 20, 0, 0, ""},
                       {ctx, u2, 30, 0, 0, ""},
                       {ctx, u3, 40, 0, 0, ""}};
  pthread_t th[4];
  for (int i = 0; i < 4; i++) pthread_create(&th[i], NULL, load_model_loop, &jobs[i]);
  for (int i = 0; i < 4; i++) {
    pthread_join(th[i], NULL);
    if (jobs[i].failures) fprintf(stderr, "\n  %s: %s\n", jobs[i].uri, jobs[i].message);
    CU_ASSERT_EQUAL(jobs[i].failures, 0);
    CU_ASSERT_EQUAL(jobs[i].loads, 12);
  }
  kaun_context_free(ctx);
  CU_ASSERT(test_server_stat(&web, "requests") >= 24); /* both http models were read there */
  test_server_stop(&web);
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
  CU_add_test(s, "index shard URIs are followed only where the config allows",
              test_index_shard_uris);
  CU_add_test(s, "index shard URIs: the backend that served the index decides",
              test_index_shard_uris_mirrored);
  CU_add_test(s, "mirrors: the first that opens wins", test_mirrors);
  CU_add_test(s, "a stacked backend reads through another; list", test_stacked_and_list);
  CU_add_test(s, "threads share one context", test_threads_share_a_context);
  CU_add_test(s, "four threads' first use creates one instance", test_create_once);
  CU_add_test(s, "objects outlive the context they came from", test_context_outlived);
  CU_add_test(s, "the registry plugin resolves, picks latest, verifies", test_registry);
  CU_add_test(s, "saving needs a backend that can store", test_save_needs_put);
  CU_add_test(s, "registry versions: by value, pre-releases below, bad keys an index error",
              test_registry_versions);
  CU_add_test(s, "registry index: strict JSON, every entry checked, named",
              test_registry_index_strict);
  CU_add_test(s, "registry versions at random: the latest is the tuple order's greatest",
              test_registry_versions_random);
  CU_add_test(s, "registry sha256: either case; a file rewritten after the check is refused",
              test_registry_sha256);
  CU_add_test(s, "registries that lead back to themselves fail fast", test_registry_cycles);
  CU_add_test(s, "backends whose creations need each other fail fast", test_create_cycles);
  CU_add_test(s, "relative plugin paths in a config are its folder's",
              test_plugin_paths_beside_config);
  CU_add_test(s, "a relative KAUN_PLUGIN_PATH entry is refused", test_plugin_path_env_relative);
  CU_add_test(s, "plugins others could change are refused before dlopen", test_plugin_trust);
  CU_add_test(s, "a scheme no plugin can be named selects no file", test_plugin_scheme_names);
  CU_add_test(s, "four threads, four models, four backends, one context", test_threads_four_models);
  int rc = check_run_all();
  check_remove_tree(tmp_root);
  return rc;
}
