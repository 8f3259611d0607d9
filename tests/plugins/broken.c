/* Broken test plugins, one per way a plugin can be wrong.  Built several
 * times with a different BROKEN_* macro; each .so is loaded by the tests
 * and must be refused with a precise error. */
#include <kaun/plugin.h>

#include <stdlib.h>

/* each variant leaves some operations out on purpose */
#pragma GCC diagnostic ignored "-Wunused-function"

static int b_create(kaun_context *c, const char *i, const kaun_options *o, void **out,
                    kaun_error *err) {
  (void)c, (void)i, (void)o, (void)err;
  *out = NULL;
  return KAUN_OK;
}
static void b_destroy(void *b) { (void)b; }
static int b_open(void *b, const char *p, kaun_object *in, void **out, kaun_error *err) {
  (void)b, (void)in, (void)out;
  return kaun_error_set(err, KAUN_ENOENT, "broken://%s: nothing here", p);
}
static void b_close(void *o) { (void)o; }
static int b_stat(void *o, kaun_stat *s, kaun_error *err) {
  (void)o, (void)s, (void)err;
  return KAUN_OK;
}
static int b_read(void *o, uint64_t off, void *d, size_t n, kaun_error *err) {
  (void)o, (void)off, (void)d, (void)n, (void)err;
  return KAUN_OK;
}

#if defined(BROKEN_ABI_MAJOR)
#define NAME "abimajor"
#define MAJOR 2
#elif defined(BROKEN_ABI_MINOR)
#define NAME "abiminor"
#define MINOR 99
#define SIZE (sizeof(kaun_plugin) + 64) /* a newer, larger descriptor */
#elif defined(BROKEN_NO_READ)
#define NAME "noread"
#define NO_READ
#elif defined(BROKEN_TINY)
#define NAME "tiny"
#define SIZE 16
#elif defined(BROKEN_SHORT_1_2)
#define NAME "short12"
#define SIZE KAUN_PLUGIN_SIZE_1_1 /* says 1.2, has 1.1's fields only */
#elif defined(BROKEN_DUPLICATE)
#define NAME "testmem" /* already taken by the good test plugin */
#endif
#ifndef MAJOR
#define MAJOR KAUN_PLUGIN_ABI_MAJOR
#endif
#ifndef MINOR
#define MINOR KAUN_PLUGIN_ABI_MINOR
#endif
#ifndef SIZE
#define SIZE sizeof(kaun_plugin)
#endif

static const struct {
  kaun_plugin d;
  char room[64]; /* so a "newer" descriptor's extra bytes are readable */
} descriptor = {{
                    .abi_major = MAJOR,
                    .abi_minor = MINOR,
                    .struct_size = SIZE,
                    .name = NAME,
                    .version = "broken-1",
                    .capabilities = KAUN_CAP_READ,
                    .create = b_create,
                    .destroy = b_destroy,
                    .open = b_open,
                    .close = b_close,
                    .stat = b_stat,
#ifndef NO_READ
                    .read = b_read,
#endif
                },
                {0}};

KAUN_PLUGIN_DEFINE(descriptor.d)
