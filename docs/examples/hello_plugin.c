/* hello: a complete, minimal kaun storage plugin.
 *
 * It serves one object, hello://greeting.safetensors: a SafeTensors file
 * holding a tensor "greeting" = [value, -value] (F32), where `value` is
 * the instance's option.  Build it out of tree and load it:
 *
 *   cc -shared -fPIC -o hello.so hello_plugin.c $(pkg-config --cflags --libs kaun)
 *
 *   config.json: {"plugin_dirs": ["/opt/greet-plugins"],
 *                 "backends": {"greet": {"plugin": "hello", "value": "2.5"}}}
 *
 *   kaun --config config.json ls greet://greeting.safetensors
 */
#include <kaun/plugin.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One instance: the bytes of the one object it serves. */
typedef struct hello {
  unsigned char *bytes;
  size_t size;
} hello;

static const kaun_option_spec hello_options[] = {
    {"value", KAUN_OPTION_STRING, "1.0", 0, 0, "the number the greeting tensor holds"},
    {NULL, 0, NULL, 0, 0, NULL}};

static int hello_create(kaun_context *ctx, const char *instance, const kaun_options *options,
                        void **out, kaun_error *err) {
  (void)ctx;
  float v = strtof(kaun_options_get(options, "value"), NULL);
  float data[2] = {v, -v};
  static const char header[] =
      "{\"greeting\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
  size_t n = (sizeof header - 1 + 7) / 8 * 8; /* the header is padded to 8 bytes */
  hello *h = calloc(1, sizeof *h);
  if (h) h->bytes = malloc(8 + n + sizeof data);
  if (!h || !h->bytes) {
    free(h);
    return kaun_error_set(err, KAUN_ENOMEM, "hello backend '%s': out of memory", instance);
  }
  for (int i = 0; i < 8; i++) h->bytes[i] = (unsigned char)((uint64_t)n >> (8 * i));
  memset(h->bytes + 8, ' ', n);
  memcpy(h->bytes + 8, header, sizeof header - 1);
  memcpy(h->bytes + 8 + n, data, sizeof data); /* little-endian, as the format wants */
  h->size = 8 + n + sizeof data;
  *out = h;
  return KAUN_OK;
}

static void hello_destroy(void *backend) {
  hello *h = backend;
  free(h->bytes);
  free(h);
}

/* Objects are just the instance: there is only one. */
static int hello_open(void *backend, const char *path, kaun_object *inner, void **out,
                      kaun_error *err) {
  (void)inner;
  if (strcmp(path, "") == 0)
    return kaun_error_set(err, KAUN_EISDIR, "hello:// is a folder holding greeting.safetensors");
  if (strcmp(path, "greeting.safetensors") != 0)
    return kaun_error_set(err, KAUN_ENOENT, "hello://%s: only greeting.safetensors is here", path);
  *out = backend;
  return KAUN_OK;
}

static void hello_close(void *object) { (void)object; }

static int hello_stat(void *object, kaun_stat *out, kaun_error *err) {
  (void)err;
  out->size = ((hello *)object)->size;
  return KAUN_OK;
}

static int hello_read(void *object, uint64_t offset, void *dst, size_t len, kaun_error *err) {
  hello *h = object;
  if (offset > h->size || len > h->size - offset)
    return kaun_error_set(err, KAUN_EIO, "hello: read past the end of greeting.safetensors");
  memcpy(dst, h->bytes + offset, len);
  return KAUN_OK;
}

/* Zero copy: hand out the instance's bytes; nothing to undo in unmap. */
static int hello_map(void *object, const void **data, size_t *size, void **cookie,
                     kaun_error *err) {
  (void)err;
  hello *h = object;
  *data = h->bytes;
  *size = h->size;
  *cookie = NULL;
  return KAUN_OK;
}

static void hello_unmap(void *backend, void *cookie) { (void)backend, (void)cookie; }

static const kaun_plugin hello_plugin = {
    .abi_major = KAUN_PLUGIN_ABI_MAJOR,
    .abi_minor = KAUN_PLUGIN_ABI_MINOR,
    .struct_size = sizeof(kaun_plugin),
    .name = "hello",
    .version = "1.0",
    .description = "serves one greeting tensor",
    .options = hello_options,
    .capabilities = KAUN_CAP_READ | KAUN_CAP_MAP,
    .create = hello_create,
    .destroy = hello_destroy,
    .open = hello_open,
    .close = hello_close,
    .stat = hello_stat,
    .read = hello_read,
    .map = hello_map,
    .unmap = hello_unmap,
};

KAUN_PLUGIN_DEFINE(hello_plugin)
