/* Endpoints that cannot be reached: a host name that does not resolve (the
 * reserved .invalid TLD, RFC 6761) and a port where nothing listens, for
 * http://, hf:// (endpoint option and HF_ENDPOINT) and s3:// (endpoint
 * option), through the library and the CLI.  Each ends in KAUN_ETRANSIENT
 * after the retries, with a message that names the URI and the host and
 * says what went wrong, in bounded time.  No server, no network: the name
 * never resolves and the port is closed.  Public API only. */
#include <CUnit/Basic.h>
#include <arpa/inet.h>
#include <kaun.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "testserver.h"

#define DNS_HOST "kaun-dns-test.invalid"
#define MAX_SECONDS                                                    \
  20.0 /* 5 attempts with backoff; a resolver that hangs is cut by the \
        * connect timeout, 10 s an attempt by default */

static char work[4096], config[4200];
static int closed_port;

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* A port of 127.0.0.1 nothing listens on (bound, then closed). */
#define free_port test_free_port

static kaun_context *ctx_new(void) {
  kaun_context *ctx = NULL;
  kaun_error err = KAUN_ERROR_INIT;
  if (kaun_context_new(config, &ctx, &err)) fprintf(stderr, "context: %s\n", err.message);
  return ctx;
}

/* Opens `uri` (and loads it, for a checkpoint): it must fail with
 * KAUN_ETRANSIENT naming the URI and saying `says`, within MAX_SECONDS. */
static void unreachable(kaun_context *ctx, const char *uri, const char *says) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_object *o = NULL;
  double t0 = now_s();
  ASSERT_FAILS(kaun_object_open(ctx, uri, &o, &err), err, KAUN_ETRANSIENT, uri);
  double took = now_s() - t0;
  if (!strstr(err.message, says)) fprintf(stderr, "\n  %s: %s\n", uri, err.message);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.message, says));
  CU_ASSERT(took < MAX_SECONDS);
  fprintf(stderr, "\n  %-60s %.2f s: %s", uri, took, err.message);
  kaun_flat *flat = NULL;
  ASSERT_FAILS(kaun_checkpoint_load_flat(ctx, uri, 0, &flat, &err), err, KAUN_ETRANSIENT, says);
  CU_ASSERT_PTR_NULL(flat);
}

#define RESOLVE "Could not resolve host: " DNS_HOST

static void test_dns_failure(void) {
  kaun_context *ctx = ctx_new();
  CU_ASSERT_PTR_NOT_NULL_FATAL(ctx);
  unreachable(ctx, "http://" DNS_HOST "/models/model.safetensors", RESOLVE);
  unreachable(ctx, "hfdns://org/model/model.safetensors", RESOLVE);
  unreachable(ctx, "s3dns://bucket/models/model.safetensors", RESOLVE);
  kaun_context_free(ctx);
  /* the Hub endpoint from HF_ENDPOINT (no hf backend in the config) */
  setenv("HF_ENDPOINT", "http://" DNS_HOST, 1);
  ctx = ctx_new();
  CU_ASSERT_PTR_NOT_NULL_FATAL(ctx);
  unreachable(ctx, "hf://org/model/model.safetensors", RESOLVE);
  unsetenv("HF_ENDPOINT");
  kaun_context_free(ctx);
}

static void test_connection_refused(void) {
  kaun_context *ctx = ctx_new();
  CU_ASSERT_PTR_NOT_NULL_FATAL(ctx);
  char uri[256], says[128];
  snprintf(says, sizeof says, "127.0.0.1 port %d", closed_port);
  snprintf(uri, sizeof uri, "http://127.0.0.1:%d/models/model.safetensors", closed_port);
  unreachable(ctx, uri, says);
  unreachable(ctx, "hfdead://org/model/model.safetensors", says);
  unreachable(ctx, "s3dead://bucket/models/model.safetensors", says);
  unreachable(ctx, "hfdead://org/model/model.safetensors", "is a server listening there?");
  unreachable(ctx, "s3dead://bucket/models/model.safetensors", "is a server listening there?");
  unreachable(ctx, uri, "is a server listening there?");
  kaun_context_free(ctx);
}

/* With no config (the default 5 attempts, 250 ms doubling): the time a
 * user waits for "no such host", measured. */
static void test_default_settings(void) {
  kaun_context *ctx = NULL;
  kaun_error err = KAUN_ERROR_INIT;
  ASSERT_OK(kaun_context_new(NULL, &ctx, &err), err);
  unreachable(ctx, "http://" DNS_HOST "/models/model.safetensors", RESOLVE);
  kaun_context_free(ctx);
}

/* The CLI: a non-zero exit and the same message on stderr. */
static void test_cli(void) {
  const char *bin = getenv("KAUN_BIN");
  CU_ASSERT_PTR_NOT_NULL_FATAL(bin);
  char cmd[16384], out[4400], line[2048] = "";
  snprintf(out, sizeof out, "%s/cli.err", work);
  const char *uris[] = {"http://" DNS_HOST "/m.safetensors", "hfdns://org/model",
                        "s3dns://bucket/m.safetensors"};
  for (size_t i = 0; i < sizeof uris / sizeof uris[0]; i++) {
    snprintf(cmd, sizeof cmd, "'%s' --config '%s' ls '%s' >/dev/null 2>'%s'", bin, config, uris[i],
             out);
    int st = system(cmd);
    CU_ASSERT(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) != 0);
    FILE *f = fopen(out, "r");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    if (!fgets(line, sizeof line, f)) line[0] = 0;
    fclose(f);
    if (!strstr(line, RESOLVE)) fprintf(stderr, "\n  kaun ls %s: %s", uris[i], line);
    CU_ASSERT_PTR_NOT_NULL(strstr(line, RESOLVE));
    CU_ASSERT_PTR_NOT_NULL(strstr(line, strchr(uris[i], ':') + 3)); /* the URI, less scheme */
  }
}

static int suite_init(void) {
  snprintf(work, sizeof work, "%s/kaun-netfail-XXXXXX",
           getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  if (!mkdtemp(work)) return 1;
  closed_port = free_port();
  snprintf(config, sizeof config, "%s/config.json", work);
  FILE *f = fopen(config, "w");
  if (!f) return 1;
  /* quick retries (5 attempts, 10 to 50 ms apart); test_default_settings
   * measures the defaults */
  const char *fast = "\"retry_base_ms\": 10, \"retry_max_ms\": 50";
  fprintf(f,
          "{\"cache_dir\": \"%s/cache\", \"backends\": {\n"
          " \"http\": {\"plugin\": \"http\", %s},\n"
          " \"hf\": {\"plugin\": \"hf\", %s},\n"
          " \"hfdns\": {\"plugin\": \"hf\", \"endpoint\": \"http://" DNS_HOST
          "\", %s},\n"
          " \"hfdead\": {\"plugin\": \"hf\", \"endpoint\": \"http://127.0.0.1:%d\", %s},\n"
          " \"s3dns\": {\"plugin\": \"s3\", \"endpoint\": \"http://" DNS_HOST
          "\", \"access_key_id\": \"K\", \"secret_access_key\": \"S\", %s},\n"
          " \"s3dead\": {\"plugin\": \"s3\", \"endpoint\": \"http://127.0.0.1:%d\", "
          "\"access_key_id\": \"K\", \"secret_access_key\": \"S\", %s}\n}}\n",
          work, fast, fast, fast, closed_port, fast, fast, closed_port, fast);
  fclose(f);
  return 0;
}

static int suite_clean(void) {
  check_remove_tree(work);
  return 0;
}

int main(void) {
  const char *plugins = getenv("KAUN_BUILT_PLUGINS");
  if (plugins) setenv("KAUN_PLUGIN_PATH", plugins, 1);
  unsetenv("HF_ENDPOINT");
  unsetenv("HF_TOKEN");
  unsetenv("HF_HUB_OFFLINE");
  setenv("HF_HOME", "/nonexistent-kaun-hf-home", 1);
  if (CU_initialize_registry() != CUE_SUCCESS) return 1;
  CU_pSuite s = CU_add_suite("unreachable endpoints", suite_init, suite_clean);
  CU_add_test(s, "a host that does not resolve: http, hf, s3", test_dns_failure);
  CU_add_test(s, "a port where nothing listens: http, hf, s3", test_connection_refused);
  CU_add_test(s, "the CLI says so and exits non-zero", test_cli);
  CU_add_test(s, "bounded with the default retries", test_default_settings);
  return check_run_all();
}
