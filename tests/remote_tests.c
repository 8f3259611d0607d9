/* Loads over real HTTP: the http plugin against the tests' Range-capable
 * server on 127.0.0.1, which counts requests and bytes.  What is checked
 * is what moves on the wire: `kaun ls` of a 256 MiB object, a template of
 * 2 tensors out of 100, a slice, a whole load (each byte once), peak
 * memory, cancellation, retries, resumes, an object replaced mid-load,
 * fetch into the cache.  Public API only. */
#include <CUnit/Basic.h>
#include <fcntl.h>
#include <kaun.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "testserver.h"

#define BIG_TENSORS 16
#define BIG_ELEMS ((uint64_t)4 << 20)           /* F32: 16 MiB each */
#define BIG_BYTES (BIG_TENSORS * BIG_ELEMS * 4) /* 256 MiB */
#define SMALL_ROWS 128                          /* 100 F32[128,128]: 64 KiB each */

static char root[4200], work[4096];
static test_server server;
static char config[4300];

static const char *path_in(const char *dir, const char *name) {
  static char buf[4][8400];
  static int k;
  char *b = buf[k++ % 4];
  snprintf(b, 8400, "%s/%s", dir, name);
  return b;
}

static const char *web(const char *name) {
  static char buf[4][512];
  static int k;
  char *b = buf[k++ % 4];
  snprintf(b, 512, "web://%s", name);
  return b;
}

/* For setup code, outside any test: a failure ends the program. */
#define SETUP_OK(call, err)                                                     \
  do {                                                                          \
    if ((call) != KAUN_OK) {                                                    \
      fprintf(stderr, "setup: %s:%d: %s\n", __FILE__, __LINE__, (err).message); \
      exit(1);                                                                  \
    }                                                                           \
  } while (0)

/* 256 MiB written from one 16 MiB buffer viewed 16 times. */
static void make_big(const char *path) {
  kaun_error err = KAUN_ERROR_INIT;
  float *v = malloc(BIG_ELEMS * 4);
  for (uint64_t i = 0; i < BIG_ELEMS; i++) v[i] = (float)(i % 1000);
  kaun_buffer *buf;
  SETUP_OK(kaun_buffer_wrap(v, BIG_ELEMS * 4, NULL, NULL, &buf, &err), err);
  kaun_flat *flat;
  SETUP_OK(kaun_flat_new(&flat, &err), err);
  const uint64_t shape[] = {BIG_ELEMS};
  for (int i = 0; i < BIG_TENSORS; i++) {
    kaun_tensor *t;
    SETUP_OK(kaun_tensor_new_view(KAUN_DTYPE_F32, 1, shape, buf, 0, BIG_ELEMS * 4, &t, &err), err);
    char name[16];
    snprintf(name, sizeof name, "big%02d", i);
    SETUP_OK(kaun_flat_add(flat, name, t, &err), err);
  }
  SETUP_OK(kaun_safetensors_save(NULL, path, flat, &err), err);
  kaun_flat_free(flat);
  kaun_buffer_unref(buf);
  free(v);
}

/* 100 tensors t0..t99 of F32[128,128], element k of tensor i = 1000 i + k. */
static void make_small(const char *path, float bias) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_flat *flat;
  SETUP_OK(kaun_flat_new(&flat, &err), err);
  const uint64_t shape[] = {SMALL_ROWS, SMALL_ROWS};
  float *v = malloc(SMALL_ROWS * SMALL_ROWS * 4);
  for (int i = 0; i < 100; i++) {
    for (int k = 0; k < SMALL_ROWS * SMALL_ROWS; k++) v[k] = (float)(1000 * i + k) + bias;
    kaun_tensor *t;
    SETUP_OK(
        kaun_tensor_new_copy(KAUN_DTYPE_F32, 2, shape, v, SMALL_ROWS * SMALL_ROWS * 4, &t, &err),
        err);
    char name[16];
    snprintf(name, sizeof name, "t%d", i);
    SETUP_OK(kaun_flat_add(flat, name, t, &err), err);
  }
  free(v);
  SETUP_OK(kaun_safetensors_save(NULL, path, flat, &err), err);
  kaun_flat_free(flat);
}

static kaun_context *web_context(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx;
  ASSERT_OK(kaun_context_new(config, &ctx, &err), err);
  return ctx;
}

static float at(const kaun_tensor *t, size_t i) { return ((const float *)kaun_tensor_data(t))[i]; }

/* ---- what moves on the wire --------------------------------------------------- */

static void test_ls_reads_the_header_only(void) {
  test_server_reset(&server);
  char cmd[16384];
  snprintf(cmd, sizeof cmd, "\"%s\" --config \"%s\" ls web://big.safetensors > \"%s\" 2>&1",
           getenv("KAUN_BIN"), config, path_in(work, "ls.out"));
  CU_ASSERT_EQUAL(system(cmd), 0);
  long long sent = test_server_stat(&server, "bytes_sent");
  CU_ASSERT(sent > 0 && sent < (1 << 20));
  CU_ASSERT(test_server_stat(&server, "requests") <= 3); /* HEAD, one GET for the header */
  char *text;
  size_t len;
  kaun_error err = KAUN_ERROR_INIT;
  ASSERT_OK(kaun_storage_read_all(NULL, path_in(work, "ls.out"), 1 << 20, &text, &len, &err), err);
  CU_ASSERT_PTR_NOT_NULL(strstr(text, "big15\tF32\t[4194304]\t16777216"));
  free(text);
}

static void test_template_reads_its_tensors_only(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx = web_context();
  kaun_ptree *like, *got;
  ASSERT_OK(kaun_ptree_new_record(&like, &err), err);
  const uint64_t shape[] = {SMALL_ROWS, SMALL_ROWS};
  for (int i = 0; i < 2; i++) {
    kaun_tensor *t;
    ASSERT_OK(kaun_tensor_new(KAUN_DTYPE_F32, 2, shape, &t, &err), err);
    ASSERT_OK(kaun_ptree_set(like, i ? "t77" : "t3", t, &err), err);
  }
  test_server_reset(&server);
  ASSERT_OK(kaun_checkpoint_load(ctx, web("small.safetensors"), like, 0, &got, &err), err);
  long long sent = test_server_stat(&server, "bytes_sent");
  const long long tensor = SMALL_ROWS * SMALL_ROWS * 4;
  /* the two tensors, plus the header read (at most 64 KiB) */
  CU_ASSERT(sent >= 2 * tensor && sent <= 2 * tensor + (64 << 10));
  kaun_ptree *leaf;
  ASSERT_OK(kaun_ptree_get(got, "t77", &leaf, &err), err);
  CU_ASSERT_EQUAL(at(kaun_ptree_tensor(leaf), 5), 77005.0f);
  kaun_ptree_free(got);
  kaun_ptree_free(like);
  kaun_context_free(ctx);
}

static void test_slice_reads_its_rows_only(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx = web_context();
  kaun_reader *r;
  ASSERT_OK(kaun_reader_open(ctx, web("small.safetensors"), &r, &err), err);
  test_server_reset(&server);
  kaun_range rows[] = {{10, 20}};
  kaun_tensor *t;
  ASSERT_OK(kaun_reader_get_slice(r, "t42", 1, rows, NULL, &t, &err), err);
  CU_ASSERT_EQUAL(test_server_stat(&server, "bytes_sent"), 10 * SMALL_ROWS * 4);
  CU_ASSERT_EQUAL(test_server_stat(&server, "requests"), 1);
  CU_ASSERT_EQUAL(at(t, 0), 42000.0f + 10 * SMALL_ROWS);
  kaun_tensor_free(t);
  kaun_reader_close(r);
  kaun_context_free(ctx);
}

static void test_load_reads_each_byte_once(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx = web_context();
  test_server_reset(&server);
  kaun_flat *flat;
  ASSERT_OK(kaun_checkpoint_load_flat(ctx, web("small.safetensors"), 0, &flat, &err), err);
  struct stat sb;
  stat(path_in(root, "small.safetensors"), &sb);
  long long sent = test_server_stat(&server, "bytes_sent");
  /* the data once, and the first 64 KiB twice (the header read) */
  CU_ASSERT(sent >= (long long)sb.st_size && sent <= (long long)sb.st_size + (64 << 10));
  CU_ASSERT_EQUAL(kaun_flat_count(flat), 100);
  CU_ASSERT_EQUAL(at(kaun_flat_find(flat, "t99"), 16383), 99000.0f + 16383);
  CU_ASSERT_FALSE(kaun_tensor_is_view(kaun_flat_find(flat, "t0")));
  kaun_flat_free(flat);
  kaun_context_free(ctx);
}

/* Peak memory of a 256 MiB load, in a fresh process: the tensors plus a
 * bounded amount, never the object twice. */
static long child_maxrss_kib(const char *mode) {
  pid_t pid = fork();
  if (pid == 0) {
    execl("/proc/self/exe", "remote_tests", mode, config, (char *)NULL);
    _exit(127);
  }
  int status;
  struct rusage ru;
  if (wait4(pid, &status, 0, &ru) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
    return -1;
  return ru.ru_maxrss;
}

static int child_main(const char *mode, const char *cfg) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx;
  if (kaun_context_new(cfg, &ctx, &err)) return 2;
  kaun_reader *r;
  if (kaun_reader_open(ctx, "web://big.safetensors", &r, &err)) return 3;
  int rc = 0;
  if (strcmp(mode, "--check") == 0 && kaun_reader_check_data(r, NULL, &err)) {
    fprintf(stderr, "%s\n", err.message);
    rc = 6;
  }
  if (strcmp(mode, "--load") == 0) {
    kaun_flat *flat;
    kaun_reader_close(r);
    r = NULL;
    if (kaun_checkpoint_load_flat(ctx, "web://big.safetensors", 0, &flat, &err)) {
      fprintf(stderr, "%s\n", err.message);
      rc = 4;
    } else {
      if (kaun_flat_count(flat) != BIG_TENSORS || at(kaun_flat_find(flat, "big15"), 999) != 999.0f)
        rc = 5;
      kaun_flat_free(flat);
    }
  }
  kaun_reader_close(r);
  kaun_context_free(ctx);
  return rc;
}

static void test_peak_memory(void) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  fprintf(stderr, "SKIPPED under a sanitizer (its shadow memory is not the program's) ");
  return;
#endif
  long base = child_maxrss_kib("--open");
  long load = child_maxrss_kib("--load");
  CU_ASSERT(base > 0 && load > 0);
  long tensors = (long)(BIG_BYTES >> 10);
  fprintf(stderr, "(peak RSS %ld KiB over a %ld KiB baseline, for %ld KiB of tensors) ",
          load - base, base, tensors);
  CU_ASSERT(load - base <= tensors + (32 << 10));
  CU_ASSERT(load - base >= tensors); /* it did load them */
  /* checking every byte (kaun verify --data) keeps none of them */
  long check = child_maxrss_kib("--check");
  fprintf(stderr, "(a check of every byte: %ld KiB over the baseline) ", check - base);
  CU_ASSERT(check > 0 && check - base <= 48 << 10); /* was 140 MiB */
}

/* ---- cancellation, retries, changes ------------------------------------------------- */

typedef struct stop_at {
  uint64_t after;
  uint64_t seen;
} stop_at;

static int stop_after(const kaun_progress *p, void *user) {
  stop_at *s = user;
  s->seen = p->done;
  return p->done >= s->after;
}

static void test_cancel_stops_transfers(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx = web_context();
  stop_at s = {32u << 20, 0};
  kaun_context_set_progress(ctx, stop_after, &s);
  test_server_reset(&server);
  kaun_flat *flat = NULL;
  ASSERT_FAILS(kaun_checkpoint_load_flat(ctx, web("big.safetensors"), 0, &flat, &err), err,
               KAUN_ECANCELED, "web://big.safetensors");
  CU_ASSERT_PTR_NULL(flat);
  sleep(1); /* transfers the server had started finish or fail by now */
  long long sent = test_server_stat(&server, "bytes_sent");
  CU_ASSERT(sent < (long long)BIG_BYTES / 2);
  /* a fetch canceled half-way leaves nothing in the cache */
  kaun_object *o;
  ASSERT_OK(kaun_object_open(ctx, web("big.safetensors"), &o, &err), err);
  kaun_io *io;
  ASSERT_OK(kaun_io_new(stop_after, &s, &io, &err), err);
  s.after = 16u << 20;
  char local[4096];
  ASSERT_FAILS(kaun_object_fetch(o, io, local, sizeof local, &err), err, KAUN_ECANCELED,
               "big.safetensors");
  kaun_io_free(io);
  kaun_object_close(o);
  char cmd[8400], out[64] = "";
  snprintf(cmd, sizeof cmd, "find '%s/cache/kaun/http' -type f ! -name '*.lock' | wc -l", work);
  FILE *f = popen(cmd, "r");
  CU_ASSERT_PTR_NOT_NULL(fgets(out, sizeof out, f));
  pclose(f);
  CU_ASSERT_EQUAL(atoi(out), 0);
  kaun_context_free(ctx);
}

static void test_retries_and_resumes(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx = web_context();
  kaun_flat *flat;
  test_server_reset(&server);
  test_server_faults(&server,
                     "[{\"path\": \"/small.safetensors\", \"method\": \"GET\", "
                     "\"status\": 503, \"count\": 2}]");
  ASSERT_OK(kaun_checkpoint_load_flat(ctx, web("small.safetensors"), 0, &flat, &err), err);
  CU_ASSERT_EQUAL(at(kaun_flat_find(flat, "t1"), 1), 1001.0f);
  kaun_flat_free(flat);
  test_server_reset(&server);
  test_server_faults(&server,
                     "[{\"path\": \"/small.safetensors\", \"method\": \"GET\", "
                     "\"reset_after\": 1000, \"count\": 3}]");
  ASSERT_OK(kaun_checkpoint_load_flat(ctx, web("small.safetensors"), 0, &flat, &err), err);
  CU_ASSERT_EQUAL(at(kaun_flat_find(flat, "t50"), 100), 50100.0f);
  kaun_flat_free(flat);
  /* 503 for good: a transient error naming the URI and the status */
  test_server_reset(&server);
  test_server_faults(&server,
                     "[{\"path\": \"/small.safetensors\", \"status\": 503, \"count\": -1}]");
  ASSERT_FAILS(kaun_checkpoint_load_flat(ctx, web("small.safetensors"), 0, &flat, &err), err,
               KAUN_ETRANSIENT, "small.safetensors");
  CU_ASSERT_EQUAL(err.http_status, 503);
  test_server_reset(&server);
  ASSERT_FAILS(kaun_checkpoint_load_flat(ctx, web("absent.safetensors"), 0, &flat, &err), err,
               KAUN_ENOENT, "web://absent.safetensors");
  CU_ASSERT_EQUAL(err.http_status, 404);
  test_server_faults(&server, "[{\"path\": \"/small.safetensors\", \"status\": 401}]");
  ASSERT_FAILS(kaun_checkpoint_load_flat(ctx, web("small.safetensors"), 0, &flat, &err), err,
               KAUN_EAUTH, "set a bearer token as backends.web.token");
  CU_ASSERT_EQUAL(err.http_status, 401);
  kaun_context_free(ctx);
}

static void test_object_changed_mid_load(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx = web_context();
  make_small(path_in(root, "moving.safetensors"), 0);
  kaun_reader *r;
  ASSERT_OK(kaun_reader_open(ctx, web("moving.safetensors"), &r, &err), err);
  sleep(1);                                           /* a new mtime: a new ETag */
  make_small(path_in(root, "moving.safetensors"), 1); /* same size, other bytes */
  kaun_tensor *t = NULL;
  ASSERT_FAILS(kaun_reader_get(r, "t4", KAUN_DTYPE_COUNT_, NULL, &t, &err), err, KAUN_ECHANGED,
               "moving.safetensors changed while it was being read");
  CU_ASSERT_PTR_NULL(t);
  kaun_reader_close(r);
  kaun_context_free(ctx);
}

static void test_fetch_once(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx = web_context();
  kaun_object *o;
  ASSERT_OK(kaun_object_open(ctx, web("small.safetensors"), &o, &err), err);
  char local[4096], again[4096];
  test_server_reset(&server);
  ASSERT_OK(kaun_object_fetch(o, NULL, local, sizeof local, &err), err);
  struct stat a, b;
  CU_ASSERT_EQUAL(stat(local, &a), 0);
  stat(path_in(root, "small.safetensors"), &b);
  CU_ASSERT_EQUAL(a.st_size, b.st_size);
  CU_ASSERT(strstr(local, "/cache/kaun/http/") != NULL);
  long long first = test_server_stat(&server, "bytes_sent");
  CU_ASSERT_EQUAL(first, b.st_size);
  ASSERT_OK(kaun_object_fetch(o, NULL, again, sizeof again, &err), err);
  CU_ASSERT_STRING_EQUAL(local, again);
  CU_ASSERT_EQUAL(test_server_stat(&server, "bytes_sent"), first); /* served from the cache */
  kaun_stat st = {.struct_size = sizeof st};
  ASSERT_OK(kaun_object_stat(o, &st, &err), err);
  CU_ASSERT_STRING_EQUAL(st.local_path, local);
  char bytes[16];
  ASSERT_OK(kaun_object_read(o, 100, bytes, sizeof bytes, &err), err); /* from the entry */
  CU_ASSERT_EQUAL(test_server_stat(&server, "bytes_sent"), first);
  kaun_object_close(o);
  kaun_context_free(ctx);
}

/* A server that ignores Range: one download of the whole object, then
 * local reads (not one whole-object stream per ranged read). */
static void test_server_without_ranges(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx = web_context();
  test_server_reset(&server);
  test_server_faults(&server,
                     "[{\"path\": \"/small.safetensors\", \"ignore_range\": true, "
                     "\"count\": -1}]");
  kaun_context_set_io(ctx, 64 << 10, 4); /* 100 small reads if each were a request */
  kaun_flat *flat;
  ASSERT_OK(kaun_checkpoint_load_flat(ctx, web("small.safetensors"), 0, &flat, &err), err);
  CU_ASSERT_EQUAL(at(kaun_flat_find(flat, "t63"), 63), 63063.0f);
  kaun_flat_free(flat);
  struct stat sb;
  stat(path_in(root, "small.safetensors"), &sb);
  long long requests = test_server_stat(&server, "requests");
  CU_ASSERT(requests <= 4); /* HEAD, the header read, the download (and one more read at most) */
  if (requests > 4) fprintf(stderr, "(%lld requests) ", requests);
  kaun_context_free(ctx);
}

/* verify --data compares the SHA-256 a server states as its ETag (quoted,
 * as HTTP writes it): a match passes, a mismatch is KAUN_ECHECKSUM. */
static void test_check_data_sha256(void) {
  kaun_error err = KAUN_ERROR_INIT;
  char want[KAUN_SHA256_HEX_SIZE], rule[512];
  char *bytes;
  size_t len;
  ASSERT_OK(
      kaun_storage_read_all(NULL, path_in(root, "small.safetensors"), 8 << 20, &bytes, &len, &err),
      err);
  ASSERT_OK(kaun_sha256_hex(bytes, len, want, &err), err);
  free(bytes);
  kaun_context *ctx = web_context();
  for (int wrong = 0; wrong < 2; wrong++) {
    if (wrong) want[10] = want[10] == '0' ? '1' : '0';
    test_server_reset(&server);
    snprintf(rule, sizeof rule,
             "[{\"path\": \"/small.safetensors\", \"count\": -1, \"etag\": \"\\\"%s\\\"\"}]", want);
    test_server_faults(&server, rule);
    kaun_reader *r;
    ASSERT_OK(kaun_reader_open(ctx, web("small.safetensors"), &r, &err), err);
    if (!wrong)
      ASSERT_OK(kaun_reader_check_data(r, NULL, &err), err);
    else
      ASSERT_FAILS(kaun_reader_check_data(r, NULL, &err), err, KAUN_ECHECKSUM, want);
    kaun_reader_close(r);
  }
  test_server_reset(&server);
  kaun_context_free(ctx);
}

/* Members of one stacked object share it: the inner object is opened once
 * per context, however many members are read through it. */
static void test_stacked_inner_opened_once(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx = web_context();
  test_server_reset(&server);
  for (int i = 0; i < 3; i++) {
    kaun_object *o;
    ASSERT_OK(kaun_object_open(ctx, "passthru://m::web://big.safetensors", &o, &err), err);
    kaun_stat st = {.struct_size = sizeof st};
    ASSERT_OK(kaun_object_stat(o, &st, &err), err);
    kaun_object_close(o);
  }
  kaun_reader *r;
  ASSERT_OK(kaun_reader_open(ctx, "passthru://m::web://big.safetensors", &r, &err), err);
  kaun_reader_close(r);
  long long requests = test_server_stat(&server, "requests");
  if (requests != 2) fprintf(stderr, "(%lld requests) ", requests);
  CU_ASSERT_EQUAL(requests, 2); /* one HEAD, one header read */
  kaun_context_free(ctx);
}

/* Saves are PUTs, removes DELETEs; what is saved loads back. */
static void test_put_and_remove(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx = web_context();
  kaun_flat *flat, *back;
  ASSERT_OK(kaun_checkpoint_load_flat(ctx, web("small.safetensors"), 0, &flat, &err), err);
  ASSERT_OK(kaun_safetensors_save(ctx, web("up/copy.safetensors"), flat, &err), err);
  struct stat a, b;
  CU_ASSERT_EQUAL(stat(path_in(root, "up/copy.safetensors"), &a), 0);
  stat(path_in(root, "small.safetensors"), &b);
  CU_ASSERT_EQUAL(a.st_size, b.st_size);
  ASSERT_OK(kaun_checkpoint_load_flat(ctx, web("up/copy.safetensors"), 0, &back, &err), err);
  CU_ASSERT_EQUAL(at(kaun_flat_find(back, "t9"), 9), 9009.0f);
  kaun_flat_free(back);
  kaun_flat_free(flat);
  ASSERT_OK(kaun_storage_remove(ctx, web("up/copy.safetensors"), &err), err);
  CU_ASSERT_NOT_EQUAL(stat(path_in(root, "up/copy.safetensors"), &a), 0);
  ASSERT_FAILS(kaun_storage_remove(ctx, web("up/copy.safetensors"), &err), err, KAUN_ENOENT,
               "up/copy.safetensors");
  kaun_context_free(ctx);
}

/* A kept inner object that changed is dropped: after one KAUN_ECHANGED the
 * next member opens the new version (it failed for the context's life). */
static void test_changed_inner_is_dropped(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx = web_context();
  make_small(path_in(root, "inner.safetensors"), 0);
  const char *uri = "passthru://m::web://inner.safetensors";
  kaun_reader *r;
  kaun_tensor *t = NULL;
  ASSERT_OK(kaun_reader_open(ctx, uri, &r, &err), err);
  ASSERT_OK(kaun_reader_get(r, "t1", KAUN_DTYPE_COUNT_, NULL, &t, &err), err);
  kaun_tensor_free(t);
  t = NULL;
  kaun_reader_close(r);
  sleep(1); /* a new mtime: a new ETag */
  make_small(path_in(root, "inner.safetensors"), 1);
  int rc = kaun_reader_open(ctx, uri, &r, &err);
  if (!rc) {
    rc = kaun_reader_get(r, "t1", KAUN_DTYPE_COUNT_, NULL, &t, &err);
    kaun_reader_close(r);
  }
  CU_ASSERT_EQUAL(rc, KAUN_ECHANGED);
  kaun_tensor_free(t);
  t = NULL;
  ASSERT_OK(kaun_reader_open(ctx, "passthru://other::web://inner.safetensors", &r, &err), err);
  ASSERT_OK(kaun_reader_get(r, "t1", KAUN_DTYPE_COUNT_, NULL, &t, &err), err);
  CU_ASSERT_EQUAL(at(t, 0), 1001.0f); /* the new version */
  kaun_tensor_free(t);
  kaun_reader_close(r);
  kaun_context_free(ctx);
}

/* ---- strided slices and shard names ------------------------------------------------ */

/* U8[rows, cols], element k = k % 251, saved at `path`. */
static void make_u8(const char *path, uint64_t rows, uint64_t cols) {
  kaun_error err = KAUN_ERROR_INIT;
  unsigned char *v = malloc(rows * cols);
  for (uint64_t k = 0; k < rows * cols; k++) v[k] = (unsigned char)(k % 251);
  const uint64_t shape[] = {rows, cols};
  kaun_tensor *t;
  SETUP_OK(kaun_tensor_new_copy(KAUN_DTYPE_U8, 2, shape, v, rows * cols, &t, &err), err);
  free(v);
  kaun_flat *flat;
  SETUP_OK(kaun_flat_new(&flat, &err), err);
  SETUP_OK(kaun_flat_add(flat, "w", t, &err), err);
  SETUP_OK(kaun_safetensors_save(NULL, path, flat, &err), err);
  kaun_flat_free(flat);
}

/* Reads a slice of w in `name` (a new reader, so the context's chunk size
 * holds); returns the requests it took and checks what landed. */
static long long slice_requests(kaun_context *ctx, const char *name, uint64_t cols,
                                const kaun_range *g, long long *bytes) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_reader *r;
  ASSERT_OK(kaun_reader_open(ctx, web(name), &r, &err), err);
  test_server_reset(&server);
  kaun_tensor *t = NULL;
  ASSERT_OK(kaun_reader_get_slice(r, "w", 2, g, NULL, &t, &err), err);
  long long requests = test_server_stat(&server, "requests");
  *bytes = test_server_stat(&server, "bytes_sent");
  const unsigned char *v = t ? kaun_tensor_data(t) : NULL;
  uint64_t w = g[1].stop - g[1].start, bad = 0;
  for (uint64_t i = g[0].start; v && i < g[0].stop; i++)
    for (uint64_t j = g[1].start; j < g[1].stop; j++)
      bad += v[(i - g[0].start) * w + (j - g[1].start)] != (unsigned char)((i * cols + j) % 251);
  CU_ASSERT_PTR_NOT_NULL(v);
  CU_ASSERT_EQUAL(bad, 0);
  kaun_tensor_free(t);
  kaun_reader_close(r);
  return requests;
}

/* A strided slice is read in spans: runs close together in one request
 * (at most a chunk), runs far apart one each, a run longer than a chunk
 * in pieces; it used to be one request per run (a column of U8[65536,2]:
 * 65,536 requests). */
static void test_strided_slice_requests(void) {
  make_u8(path_in(root, "strided.safetensors"), 4096, 2);
  make_u8(path_in(root, "sparse.safetensors"), 8, 131072);
  kaun_context *ctx = web_context();
  long long bytes, n;
  const kaun_range column[] = {{0, 4096}, {0, 1}};
  n = slice_requests(ctx, "strided.safetensors", 2, column, &bytes);
  CU_ASSERT_EQUAL(n, 1); /* 4096 runs of one byte, one byte apart */
  CU_ASSERT_EQUAL(bytes, 2 * 4096 - 1);
  const kaun_range apart[] = {{0, 8}, {5, 6}};
  n = slice_requests(ctx, "sparse.safetensors", 131072, apart, &bytes);
  CU_ASSERT_EQUAL(n, 8); /* 128 KiB apart: one request each */
  CU_ASSERT_EQUAL(bytes, 8);
  kaun_context_set_io(ctx, 1024, 4);
  n = slice_requests(ctx, "strided.safetensors", 2, column, &bytes);
  CU_ASSERT_EQUAL(n, 8); /* spans of at most 1 KiB: 512 runs each */
  const kaun_range long_runs[] = {{1, 3}, {7, 3007}};
  n = slice_requests(ctx, "sparse.safetensors", 131072, long_runs, &bytes);
  CU_ASSERT_EQUAL(n, 6); /* 2 runs of 3000 bytes, in 1 KiB pieces */
  CU_ASSERT_EQUAL(bytes, 6000);
  kaun_context_free(ctx);
}

/* Names of one shard file open it once; a name a server would decode
 * into another path is refused before any request for it. */
static void test_index_shard_names_requests(void) {
  kaun_error err = KAUN_ERROR_INIT;
  mkdir(path_in(root, "idx"), 0755);
  make_small(path_in(root, "idx/s.safetensors"), 0);
  kaun_context *ctx = web_context();
  const char *index = path_in(root, "idx/model.safetensors.index.json");
  FILE *f = fopen(index, "w");
  fputs(
      "{\"weight_map\": {\"t0\": \"./s.safetensors\", \"t1\": \"s.safetensors\", "
      "\"t2\": \"././s.safetensors\", \"t3\": \"./././s.safetensors\"}}",
      f);
  fclose(f);
  test_server_reset(&server);
  kaun_reader *r;
  ASSERT_OK(kaun_reader_open(ctx, web("idx/model.safetensors.index.json"), &r, &err), err);
  kaun_reader_close(r);
  long long requests = test_server_stat(&server, "requests");
  if (requests > 4) fprintf(stderr, "(%lld requests) ", requests);
  CU_ASSERT(requests <= 4); /* the index and the shard: a HEAD and a GET each */
  f = fopen(index, "w");
  fputs("{\"weight_map\": {\"w\": \"%2e%2e/small.safetensors\"}}", f);
  fclose(f);
  test_server_reset(&server);
  ASSERT_FAILS(kaun_reader_open(ctx, web("idx/model.safetensors.index.json"), &r, &err), err,
               KAUN_EINDEX,
               "web://idx/model.safetensors.index.json: line 1: the shard of tensor 'w' must be "
               "a file name relative to the index");
  CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "not '%2e%2e/small.safetensors'"));
  CU_ASSERT(test_server_stat(&server, "requests") <= 2); /* the index only */
  kaun_context_free(ctx);
}

/* kaun cp's byte copy goes through the object the reader validated: the
 * bytes of that version, or KAUN_ECHANGED, never another file's bytes. */
static void test_reader_copy_is_pinned(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx = web_context();
  make_small(path_in(root, "pinned.safetensors"), 0);
  kaun_reader *r;
  ASSERT_OK(kaun_reader_open(ctx, web("pinned.safetensors"), &r, &err), err);
  ASSERT_OK(kaun_reader_copy(r, path_in(work, "copy1.safetensors"), NULL, &err), err);
  struct stat a, b;
  CU_ASSERT_EQUAL(stat(path_in(work, "copy1.safetensors"), &a), 0);
  stat(path_in(root, "pinned.safetensors"), &b);
  CU_ASSERT_EQUAL(a.st_size, b.st_size);
  sleep(1); /* a new mtime: a new ETag */
  make_small(path_in(root, "pinned.safetensors"), 1);
  ASSERT_FAILS(kaun_reader_copy(r, path_in(work, "copy2.safetensors"), NULL, &err), err,
               KAUN_ECHANGED, "pinned.safetensors");
  CU_ASSERT_NOT_EQUAL(stat(path_in(work, "copy2.safetensors"), &a), 0); /* nothing written */
  kaun_reader_close(r);
  kaun_context_free(ctx);
}

/* A remote object copied to a local file: read as parallel chunks, each
 * written at its place, each byte once on the wire; a chunk that fails for
 * good leaves no file and no temporary. */
static void test_copy_to_local_file(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx = web_context();
  const char *dst = path_in(work, "big-copy.safetensors");
  test_server_reset(&server);
  ASSERT_OK(kaun_storage_copy(ctx, web("big.safetensors"), dst, NULL, &err), err);
  struct stat src;
  CU_ASSERT_EQUAL_FATAL(stat(path_in(root, "big.safetensors"), &src), 0);
  /* the header once when the copy opened it, then every byte once */
  long long sent = test_server_stat(&server, "bytes_sent");
  CU_ASSERT(sent >= src.st_size && sent < src.st_size + (1 << 20));
  char cmd[20000];
  snprintf(cmd, sizeof cmd, "cmp -s '%s' '%s'", dst, path_in(root, "big.safetensors"));
  CU_ASSERT_EQUAL(system(cmd), 0);
  CU_ASSERT(test_server_stat(&server, "requests") >
            8); /* in chunks (the failure below needs them) */
  /* the 6th GET and every one after fail: an error naming the object */
  unlink(dst);
  test_server_reset(&server);
  test_server_faults(&server,
                     "[{\"path\": \"/big.safetensors\", \"method\": \"GET\", \"skip\": 5, "
                     "\"status\": 404, \"count\": -1}]");
  int rc = kaun_storage_copy(ctx, web("big.safetensors"), dst, NULL, &err);
  CU_ASSERT_NOT_EQUAL(rc, KAUN_OK);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "big.safetensors"));
  CU_ASSERT_NOT_EQUAL(stat(dst, &src), 0);
  snprintf(cmd, sizeof cmd, "test -z \"$(ls -A '%s' | grep -i tmp)\"", work);
  CU_ASSERT_EQUAL(system(cmd), 0);
  test_server_reset(&server);
  kaun_context_free(ctx);
}

static int suite_init(void) {
  snprintf(work, sizeof work, "%s/kaun-remote-XXXXXX",
           getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  if (!mkdtemp(work)) return 1;
  snprintf(root, sizeof root, "%s/www", work);
  mkdir(root, 0755);
  make_big(path_in(root, "big.safetensors"));
  make_small(path_in(root, "small.safetensors"), 0);
  if (test_server_start(&server, root, path_in(work, "port"))) return 1;
  snprintf(config, sizeof config, "%s/config.json", work);
  FILE *f = fopen(config, "w");
  fprintf(f,
          "{\"cache_dir\": \"%s/cache\",\n"
          " \"backends\": {\"web\": {\"plugin\": \"http\", \"url\": \"%s/\",\n"
          "   \"retry_base_ms\": 5, \"retry_max_ms\": 50, \"max_attempts\": 4}}}\n",
          work, server.url);
  fclose(f);
  return 0;
}

static int suite_clean(void) {
  test_server_stop(&server);
  char cmd[4200];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", work);
  return system(cmd) == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
  char path[8192];
  snprintf(path, sizeof path, "%s:%s",
           getenv("KAUN_BUILT_PLUGINS") ? getenv("KAUN_BUILT_PLUGINS") : "",
           getenv("KAUN_TEST_PLUGINS") ? getenv("KAUN_TEST_PLUGINS") : "");
  setenv("KAUN_PLUGIN_PATH", path, 1);
  if (argc == 3) return child_main(argv[1], argv[2]);
  if (CU_initialize_registry() != CUE_SUCCESS) return 1;
  CU_pSuite s = CU_add_suite("remote", suite_init, suite_clean);
  CU_add_test(s, "kaun ls of a 256 MiB object moves under 1 MiB", test_ls_reads_the_header_only);
  CU_add_test(s, "a template of 2 tensors out of 100 moves their bytes",
              test_template_reads_its_tensors_only);
  CU_add_test(s, "a slice of rows moves those rows", test_slice_reads_its_rows_only);
  CU_add_test(s, "a load moves each byte once", test_load_reads_each_byte_once);
  CU_add_test(s, "a 256 MiB load peaks at the tensors + 32 MiB; a check under 48 MiB",
              test_peak_memory);
  CU_add_test(s, "cancelling stops transfers and leaves nothing", test_cancel_stops_transfers);
  CU_add_test(s, "503s and dropped connections are retried", test_retries_and_resumes);
  CU_add_test(s, "an object replaced mid-load is KAUN_ECHANGED", test_object_changed_mid_load);
  CU_add_test(s, "fetch downloads into the cache once", test_fetch_once);
  CU_add_test(s, "saves are PUTs, removes DELETEs", test_put_and_remove);
  CU_add_test(s, "a server that ignores Range is read once", test_server_without_ranges);
  CU_add_test(s, "verify --data checks a SHA-256 stated as the ETag", test_check_data_sha256);
  CU_add_test(s, "a stacked URI's inner object is opened once", test_stacked_inner_opened_once);
  CU_add_test(s, "a strided slice is read in spans, not a request per run",
              test_strided_slice_requests);
  CU_add_test(s, "an index's names of one shard open it once; encoded '..' is refused",
              test_index_shard_names_requests);
  CU_add_test(s, "a changed inner object is dropped, then reopened", test_changed_inner_is_dropped);
  CU_add_test(s, "a byte copy is pinned to the validated version", test_reader_copy_is_pinned);
  CU_add_test(s, "a copy to a local file moves each byte once; a failing chunk leaves nothing",
              test_copy_to_local_file);
  return check_run_all();
}
