/* What the fuzz targets that read files share: a context with the file
 * backend only, and a memfd to hold the input (no temporary files are
 * left between runs or after a crash). */
#ifndef KAUN_FUZZ_COMMON_H
#define KAUN_FUZZ_COMMON_H

#include <kaun.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

/* A context from an empty config (no plugin path: nothing is loaded), and
 * a memfd named `who`; aborts when either cannot be made. */
static inline kaun_context *fuzz_context_and_memfd(const char *who, int *fd) {
  kaun_error err = KAUN_ERROR_INIT;
  char config[] = "/tmp/kaun-fuzz-XXXXXX";
  int cfd = mkstemp(config);
  if (cfd < 0 || write(cfd, "{}", 2) != 2 || close(cfd) != 0) abort();
  unsetenv("KAUN_PLUGIN_PATH");
  kaun_context *ctx = NULL;
  int rc = kaun_context_new(config, &ctx, &err);
  unlink(config);
  if (rc != KAUN_OK) {
    fprintf(stderr, "%s: %s\n", who, err.message);
    abort();
  }
  if ((*fd = memfd_create(who, MFD_CLOEXEC)) < 0) abort();
  return ctx;
}

#endif
