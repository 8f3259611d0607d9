/* libFuzzer target: any bytes as a config file.  The reader must refuse
 * what is not a valid config with a message (KAUN_ECONFIG) and free
 * everything on every path; a config it accepts whose backends all use
 * the built-in file plugin also goes through kaun_context_new (the file
 * plugin's options, mirrors) and kaun_context_describe.  Other plugins are
 * never loaded: a fuzzed config must not dlopen what it names.
 * Build and run: scripts/dev.sh fuzz [SECONDS] [config]. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../core/storage_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char config_path[64];

static void remove_config(void) {
  unlink(config_path);
  *strrchr(config_path, '/') = '\0';
  rmdir(config_path);
}

static const char *write_config(const uint8_t *data, size_t size) {
  if (!config_path[0]) {
    char dir[] = "/tmp/kaun-fuzz-config-XXXXXX";
    if (!mkdtemp(dir)) abort();
    snprintf(config_path, sizeof config_path, "%s/kaun.json", dir);
    atexit(remove_config);
    unsetenv("KAUN_PLUGIN_PATH");
  }
  int fd = open(config_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0 || (size && write(fd, data, size) != (ssize_t)size) || close(fd) != 0) abort();
  return config_path;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *path = write_config(data, size);
  kaun_error err = KAUN_ERROR_INIT;
  kaun__config c;
  int rc = kaun__config_read(path, "fuzz", &c, &err);
  if (rc) {
    if (rc != KAUN_ECONFIG || err.code != rc || !err.message[0]) abort();
    return 0;
  }
  bool only_file = true;
  for (size_t i = 0; i < c.nbackends; i++) {
    if (!c.backends[i].name || !c.backends[i].plugin) abort();
    if (strcmp(c.backends[i].plugin, "file") != 0) only_file = false;
  }
  kaun__config_free(&c);
  if (!only_file) return 0;
  kaun_context *ctx;
  rc = kaun_context_new(path, &ctx, &err);
  if (rc) {
    if (rc >= 0 || err.code != rc || !err.message[0]) abort();
    return 0;
  }
  char *text;
  if (kaun_context_describe(ctx, &text, &err) != KAUN_OK) abort();
  free(text);
  kaun_context_free(ctx);
  return 0;
}
