/* libFuzzer target: any bytes as a sharded checkpoint's index
 * (model.safetensors.index.json), read through the reader and the file
 * backend: a context whose backend "m" has a temporary folder as its root,
 * holding the fuzzed index and two small valid shards (with names that
 * differ only after a NUL byte).  An index the reader refuses must say
 * why; one it accepts must list tensors that its lookups find again by
 * their whole names, and whose bytes load.
 * Build and run: scripts/dev.sh fuzz [SECONDS] [index]. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../core/storage_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[64];
static char root[96];
static char index_path[160];
static kaun_context *ctx;

static void put(const char *path, const void *data, size_t size) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0 || (size && write(fd, data, size) != (ssize_t)size) || close(fd) != 0) abort();
}

/* A SafeTensors file of U8 tensors, one byte each, header as given. */
static void put_shard(const char *name, const char *header, size_t ntensors) {
  char path[256], buf[1024];
  size_t n = strlen(header), padded = (n + 7) / 8 * 8;
  if (8 + padded + ntensors > sizeof buf) abort();
  for (int i = 0; i < 8; i++) buf[i] = (char)((padded >> (8 * i)) & 0xff);
  memcpy(buf + 8, header, n);
  memset(buf + 8 + n, ' ', padded - n);
  for (size_t i = 0; i < ntensors; i++) buf[8 + padded + i] = (char)i;
  snprintf(path, sizeof path, "%s/%s", root, name);
  put(path, buf, 8 + padded + ntensors);
}

static void cleanup(void) {
  static const char *const files[] = {"model-00001-of-00002.safetensors",
                                      "model-00002-of-00002.safetensors",
                                      "model.safetensors.index.json"};
  char path[256];
  kaun_context_free(ctx);
  for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
    snprintf(path, sizeof path, "%s/%s", root, files[i]);
    unlink(path);
  }
  rmdir(root);
  snprintf(path, sizeof path, "%s/kaun.json", dir);
  unlink(path);
  rmdir(dir);
}

static void setup(void) {
  char tmpl[] = "/tmp/kaun-fuzz-index-XXXXXX";
  if (!mkdtemp(tmpl)) abort();
  snprintf(dir, sizeof dir, "%s", tmpl);
  snprintf(root, sizeof root, "%s/root", dir);
  snprintf(index_path, sizeof index_path, "%s/model.safetensors.index.json", root);
  if (mkdir(root, 0700) != 0) abort();
#define U8(name, b, e) \
  "\"" name "\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[" #b "," #e "]}"
  put_shard("model-00001-of-00002.safetensors",
            "{\"__metadata__\":{\"format\":\"pt\"}," U8("a", 0, 1) "," U8("b\\u0000c", 1, 2) "," U8(
                "b\\u0000d", 2, 3) "}",
            3);
  put_shard("model-00002-of-00002.safetensors",
            "{" U8("__metadata__\\u0000", 0, 1) "," U8("e.weight", 1, 2) "}", 2);
  char config[256], path[128];
  snprintf(config, sizeof config,
           "{\"backends\": {\"m\": {\"plugin\": \"file\", \"root\": \"%s\"}}}", root);
  snprintf(path, sizeof path, "%s/kaun.json", dir);
  put(path, config, strlen(config));
  unsetenv("KAUN_PLUGIN_PATH");
  kaun_error err = KAUN_ERROR_INIT;
  if (kaun_context_new(path, &ctx, &err) != KAUN_OK) {
    fprintf(stderr, "fuzz_index: %s\n", err.message);
    abort();
  }
  atexit(cleanup);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!ctx) setup();
  put(index_path, data, size);
  kaun_error err = KAUN_ERROR_INIT;
  kaun_reader *r;
  int rc = kaun_reader_open(ctx, "m://model.safetensors.index.json", &r, &err);
  if (rc) {
    if (rc >= 0 || err.code != rc || !err.message[0]) abort(); /* every failure explains itself */
    return 0;
  }
  size_t n = kaun_reader_count(r);
  if (n > 5) abort(); /* the shards hold five tensors */
  const char *names[5];
  size_t lens[5];
  kaun_tensor *t[5];
  for (size_t i = 0; i < n; i++) {
    kaun_reader_tensor info;
    if (kaun_reader_info(r, i, &info) != KAUN_OK) abort();
    names[i] = info.name;
    lens[i] = kaun_reader_name_length(r, i);
    if (kaun_reader_find_n(r, names[i], lens[i]) != (long)i) abort();
    if (info.nbytes != 1) abort();
  }
  if (kaun_reader_get_many_n(r, n, names, lens, NULL, NULL, t, &err) != KAUN_OK) abort();
  for (size_t i = 0; i < n; i++) kaun_tensor_free(t[i]);
  if (kaun_reader_is_canonical(r, &err) < 0) abort();
  kaun_reader_close(r);
  return 0;
}
