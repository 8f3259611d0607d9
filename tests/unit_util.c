#include "unit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void add_suite(const char *name, const unit_test *tests) {
  CU_pSuite s = CU_add_suite(name, NULL, NULL);
  for (const unit_test *t = tests; t->name; t++) CU_add_test(s, t->name, t->fn);
}

const char *fixtures_dir(const char *test) {
  const char *d = getenv("KAUN_FIXTURES");
  struct stat sb;
  if (d && stat(d, &sb) == 0 && S_ISDIR(sb.st_mode)) return d;
  fprintf(stderr, "\n  SKIPPED %s: the shared fixtures folder (%s) is absent\n", test,
          d ? d : "KAUN_FIXTURES unset");
  return NULL;
}

const char *fixture(const char *rel) {
  static char buf[4][4096];
  static int k;
  char *b = buf[k++ % 4];
  snprintf(b, 4096, "%s/safetensors/%s", getenv("KAUN_FIXTURES"), rel);
  return b;
}

static char tmp_root[4096];

const char *tmp_path(const char *name) {
  static char buf[8][8300];
  static int k;
  if (!tmp_root[0]) {
    const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(tmp_root, sizeof tmp_root, "%s/kaun-unit-XXXXXX", base);
    if (!mkdtemp(tmp_root)) {
      perror("mkdtemp");
      exit(1);
    }
  }
  char *b = buf[k++ % 8];
  snprintf(b, 8300, "%s/%s", tmp_root, name);
  return b;
}

void remove_tmp_root(void);
void remove_tmp_root(void) {
  if (!tmp_root[0]) return;
  char cmd[4200];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_root);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmp_root);
}

unsigned char *read_all(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *b = malloc((size_t)n + 1);
  if (fread(b, 1, (size_t)n, f) != (size_t)n) {
    free(b);
    fclose(f);
    return NULL;
  }
  fclose(f);
  *len = (size_t)n;
  return b;
}

void write_all(const char *path, const void *data, size_t len) {
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(data, 1, len, f) != len) {
    perror(path);
    exit(1);
  }
  fclose(f);
}

unsigned char *make_st(const char *header, size_t data_len, size_t *out_len) {
  size_t n = strlen(header);
  unsigned char *b = malloc(8 + n + data_len + 1);
  for (int i = 0; i < 8; i++) b[i] = (unsigned char)(((uint64_t)n >> (8 * i)) & 0xff);
  memcpy(b + 8, header, n);
  for (size_t i = 0; i < data_len; i++) b[8 + n + i] = (unsigned char)(i & 0xff);
  *out_len = 8 + n + data_len;
  return b;
}
