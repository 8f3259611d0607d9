/* A stacked test plugin: passthru://ANYTHING::INNER-URI serves the inner
 * object unchanged, reading through it (the shape of a tar or
 * decompression backend, as SQLite's shim VFSes sit on another VFS). */
#include <kaun/plugin.h>

#include <stdlib.h>

static int p_create(kaun_context *c, const char *i, const kaun_options *o, void **out,
                    kaun_error *err) {
  (void)c, (void)i, (void)o, (void)err;
  *out = NULL;
  return KAUN_OK;
}
static void p_destroy(void *b) { (void)b; }
static int p_open(void *b, const char *path, kaun_object *inner, void **out, kaun_error *err) {
  (void)b;
  if (!inner)
    return kaun_error_set(err, KAUN_EURI, "passthru://%s: want passthru://NAME::INNER-URI", path);
  *out = inner; /* the core keeps the inner object open while ours is */
  return KAUN_OK;
}
static void p_close(void *o) { (void)o; }
static int p_stat(void *o, kaun_stat *st, kaun_error *err) { return kaun_object_stat(o, st, err); }
/* read_io alone (ABI 1.1): no read; progress and cancel pass through */
static int p_read_io(void *o, uint64_t off, void *d, size_t n, kaun_io *io, kaun_error *err) {
  return kaun_object_read_io(o, off, d, n, io, err);
}

static const kaun_plugin descriptor = {
    .abi_major = KAUN_PLUGIN_ABI_MAJOR,
    .abi_minor = KAUN_PLUGIN_ABI_MINOR,
    .struct_size = sizeof(kaun_plugin),
    .name = "passthru",
    .version = "test-1",
    .description = "test plugin: reads through an inner object",
    .capabilities = KAUN_CAP_READ | KAUN_CAP_STACKED,
    .create = p_create,
    .destroy = p_destroy,
    .open = p_open,
    .close = p_close,
    .stat = p_stat,
    .read_io = p_read_io,
};

KAUN_PLUGIN_DEFINE(descriptor)
