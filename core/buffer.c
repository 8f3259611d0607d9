/* Reference-counted buffers: caller memory or file mappings. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct kaun_buffer {
  atomic_size_t refs;
  const void *data;
  size_t size;
  kaun_buffer_release_fn release;
  void *context;
};

int kaun_buffer_wrap(const void *data, size_t size, kaun_buffer_release_fn release, void *context,
                     kaun_buffer **out, kaun_error *err) {
  *out = NULL;
  kaun_buffer *b = malloc(sizeof *b);
  if (!b) return kaun__error_nomem(err, "creating a buffer");
  atomic_init(&b->refs, 1);
  b->data = data;
  b->size = size;
  b->release = release;
  b->context = context;
  *out = b;
  return KAUN_OK;
}

static void unmap_release(void *data, size_t size, void *context) {
  (void)context;
  if (size) munmap(data, size);
}

int kaun_buffer_map_file(const char *path, kaun_buffer **out, kaun_error *err) {
  *out = NULL;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    return kaun__error_sys(err, e == ENOENT ? KAUN_ENOENT : KAUN_EIO, e, "cannot open '%s'", path);
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    close(fd);
    return kaun__error_sys(err, KAUN_EIO, e, "cannot stat '%s'", path);
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return kaun__error_set(err, KAUN_EINVAL, "'%s' is not a regular file", path);
  }
  size_t size = (size_t)st.st_size;
  void *data = NULL;
  if (size > 0) {
    data = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (data == MAP_FAILED) {
      int e = errno;
      close(fd);
      return kaun__error_sys(err, KAUN_EIO, e, "cannot map '%s'", path);
    }
  }
  close(fd);
  int rc = kaun_buffer_wrap(data, size, unmap_release, NULL, out, err);
  if (rc != KAUN_OK && size) munmap(data, size);
  return rc;
}

kaun_buffer *kaun_buffer_ref(kaun_buffer *b) {
  if (b) atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);
  return b;
}

void kaun_buffer_unref(kaun_buffer *b) {
  if (!b) return;
  if (atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) != 1) return;
  if (b->release) b->release((void *)b->data, b->size, b->context);
  free(b);
}

const void *kaun_buffer_data(const kaun_buffer *b) { return b ? b->data : NULL; }

size_t kaun_buffer_size(const kaun_buffer *b) { return b ? b->size : 0; }
