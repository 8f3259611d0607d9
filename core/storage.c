/* Contexts, URIs, backend instances, objects and mirrors. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "storage_internal.h"

#ifndef KAUN_PLUGINDIR
#define KAUN_PLUGINDIR "/usr/local/lib/kaun/plugins"
#endif

#define MAX_NESTING KAUN_URI_MAX_DEPTH
#define KAUN__INNER_KEPT 8

/* A thread waiting in get_instance for another thread's creation. */
struct waiting {
  const char *name;
  pthread_t thread;
};

struct kaun_context {
  kaun__config cfg;
  size_t ndirs;
  char **dirs;
  char **dir_origins;
  kaun__plugin **plugins; /* one per configured backend */
  pthread_mutex_t lock;
  pthread_cond_t created; /* signalled when a pending creation ends */
  size_t ninstances;
  kaun__instance **instances;
  /* backend names being created, and by which thread (create is
   * serialised per name; a creation that needs itself is a cycle) */
  size_t npending;
  struct pending {
    char *name;
    pthread_t thread;
  } * pending;
  /* threads waiting for another thread's creation, and for which name (a
   * wait that would close a circle of creating threads is a cycle too) */
  size_t nwaiting;
  struct waiting *waiting;
  atomic_long refs; /* the application's, and one per instance */
  bool closed;      /* kaun_context_free was called */
  /* I/O settings */
  kaun_progress_fn progress;
  void *progress_user;
  /* inner objects of stacked URIs, kept open for the next member
   * (tar://a::X then tar://b::X open X once); guarded by lock */
  kaun_object *inner_kept[KAUN__INNER_KEPT];
  size_t ninner;
  uint64_t chunk_size;
  unsigned inflight;
};

struct kaun_object {
  kaun__instance *inst;
  void *handle;
  char *uri;
  kaun_object *inner;
  char *asked;      /* the URI the caller asked for (before mirror rewriting) */
  atomic_long refs; /* the caller's, and the context's when it is a kept inner object */
};

/* The URIs this thread is opening, outermost first (a backend opening
 * another URI while it opens one: a registry reading its index, a stacked
 * backend its inner object).  Opening a URI already there is a cycle and
 * fails at once; the stack is at most MAX_NESTING deep. */
static _Thread_local const char *open_stack[MAX_NESTING];
static _Thread_local int open_depth;
/* The I/O context of the kaun_object_open_io under way on this thread, for
 * backends that transfer while they open (ABI 1.2 open_io). */
static _Thread_local kaun_io *opening_io;

/* "A -> B -> C": the open stack's entries [from, to), then `last` if given. */
static void open_stack_text(kaun__strbuf *sb, int from, int to, const char *last) {
  for (int i = from; i < to; i++)
    kaun__strbuf_printf(sb, "%s%s", i > from ? " -> " : "", open_stack[i]);
  if (last) kaun__strbuf_printf(sb, "%s%s", to > from ? " -> " : "", last);
}

int kaun_error_set(kaun_error *err, int code, const char *fmt, ...) {
  if (!err) return code;
  va_list ap;
  va_start(ap, fmt);
  err->code = code;
  err->sys_errno = 0;
  err->http_status = 0;
  vsnprintf(err->message, sizeof err->message, fmt, ap);
  va_end(ap);
  return code;
}

/* ---- URIs ---------------------------------------------------------------------- */

void kaun_uri_free(kaun_uri *u) {
  while (u) {
    kaun_uri *inner = u->inner;
    free(u->scheme);
    free(u->path);
    free(u);
    u = inner;
  }
}

/* The first "::" of `text` not preceded by a backslash, or NULL. */
static const char *find_chain(const char *text) {
  for (const char *p = strstr(text, "::"); p; p = strstr(p + 1, "::"))
    if (p == text || p[-1] != '\\') return p;
  return NULL;
}

const char *kaun__uri_chain(const char *text) { return find_chain(text); }

const char *kaun__stack_chain(const char *text) {
  const char *sep = strstr(text, "://"), *slash = strchr(text, '/');
  if (!sep || sep == text || (slash && slash < sep)) return NULL; /* a plain path: whole */
  const char *chain = find_chain(text);
  return chain && chain > sep ? chain : NULL;
}

/* `n` bytes of `text` with every "\::" turned into "::". */
static char *unescape(const char *text, size_t n) {
  char *out = malloc(n + 1);
  if (!out) return NULL;
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    if (text[i] == '\\' && i + 2 < n && text[i + 1] == ':' && text[i + 2] == ':') continue;
    out[k++] = text[i];
  }
  out[k] = '\0';
  return out;
}

/* Parses one level: SCHEME://PATH or a plain path, up to `end`. */
static int parse_one(const char *text, const char *whole, kaun_uri *u, const char **chain,
                     kaun_error *err) {
  *chain = NULL;
  const char *sep = strstr(text, "://");
  const char *slash = strchr(text, '/');
  if (!sep || (slash && slash < sep)) {
    /* a plain path (/abs, ./rel, rel/ative): all of it, "::" included */
    u->scheme = strdup("file");
    u->path = strdup(text);
    if (!u->scheme || !u->path) return kaun__error_nomem(err, "parsing a URI");
    return KAUN_OK;
  }
  size_t slen = (size_t)(sep - text);
  bool ok = slen > 0 && text[0] >= 'a' && text[0] <= 'z';
  for (size_t i = 0; ok && i < slen; i++) {
    char c = text[i];
    ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.' ||
         c == '_';
  }
  if (!ok)
    return kaun__error_set(err, KAUN_EURI,
                           "'%s'%s%s%s: the scheme must be lowercase letters, digits, '+', '-', "
                           "'.' or '_', starting with a letter",
                           text, text != whole ? " (in '" : "", text != whole ? whole : "",
                           text != whole ? "')" : "");
  const char *rest = sep + 3;
  const char *next = find_chain(rest);
  size_t plen = next ? (size_t)(next - rest) : strlen(rest);
  u->scheme = strndup(text, slen);
  u->path = unescape(rest, plen);
  *chain = next;
  if (!u->scheme || !u->path) return kaun__error_nomem(err, "parsing a URI");
  if (strcmp(u->scheme, "file") == 0 && u->path[0] != '/')
    return kaun__error_set(err, KAUN_EURI,
                           "'%s': a file URI names an absolute path (file:///abs/path); "
                           "file://HOST/ is not supported",
                           whole);
  return KAUN_OK;
}

int kaun_uri_parse(const char *text, kaun_uri **out, kaun_error *err) {
  *out = NULL;
  if (!text || !*text) return kaun__error_set(err, KAUN_EURI, "an empty string is not a URI");
  kaun_uri *head = NULL, **tail = &head;
  const char *at = text;
  int rc = KAUN_OK;
  for (int depth = 0; at; depth++) {
    if (depth >= KAUN_URI_MAX_DEPTH) {
      rc = kaun__error_set(err, KAUN_EURI,
                           "'%.200s%s': more than %d URIs stacked with '::' (escape a literal "
                           "'::' in a path as '\\::')",
                           text, strlen(text) > 200 ? "..." : "", KAUN_URI_MAX_DEPTH);
      break;
    }
    kaun_uri *u = calloc(1, sizeof *u);
    if (!u) {
      rc = kaun__error_nomem(err, "parsing a URI");
      break;
    }
    *tail = u;
    tail = &u->inner;
    const char *chain;
    if ((rc = parse_one(at, text, u, &chain, err))) break;
    if (chain && !chain[2]) {
      rc = kaun__error_set(err, KAUN_EURI, "'%s': nothing follows '::' (want MEMBER::OUTER-URI)",
                           text);
      break;
    }
    at = chain ? chain + 2 : NULL;
  }
  if (rc) {
    kaun_uri_free(head);
    return rc;
  }
  *out = head;
  return KAUN_OK;
}

/* ---- options ------------------------------------------------------------------- */

const kaun_option_spec *kaun__option_spec(const kaun_option_spec *specs, const char *name) {
  for (const kaun_option_spec *s = specs; s && s->name; s++)
    if (strcmp(s->name, name) == 0) return s;
  return NULL;
}

void kaun__options_free(kaun_options *o) {
  for (size_t i = 0; i < o->count; i++) {
    free(o->names[i]);
    if (o->values[i]) {
      memset(o->values[i], 0, strlen(o->values[i])); /* secrets do not linger */
      free(o->values[i]);
    }
  }
  free(o->names);
  free(o->values);
  memset(o, 0, sizeof *o);
}

const char *kaun_options_get(const kaun_options *o, const char *name) {
  for (size_t i = 0; i < o->count; i++)
    if (strcmp(o->names[i], name) == 0) return o->values[i];
  const kaun_option_spec *s = kaun__option_spec(o->specs, name);
  return s ? s->default_value : NULL;
}

int64_t kaun_options_get_int(const kaun_options *o, const char *name, int64_t fallback) {
  const char *v = kaun_options_get(o, name);
  if (!v) return fallback;
  char *end;
  long long x = strtoll(v, &end, 10);
  return *end ? fallback : (int64_t)x;
}

int kaun_options_get_bool(const kaun_options *o, const char *name, int fallback) {
  const char *v = kaun_options_get(o, name);
  if (!v) return fallback;
  if (strcmp(v, "true") == 0 || strcmp(v, "1") == 0) return 1;
  if (strcmp(v, "false") == 0 || strcmp(v, "0") == 0) return 0;
  return fallback;
}

/* Reads "env:NAME" or "file:PATH" for a secret option; other text is the
 * value itself.  Messages name the key, never the secret. */
static int resolve_secret(const char *cfg_path, const char *key, const char *raw, char **out,
                          kaun_error *err) {
  if (strncmp(raw, "env:", 4) == 0) {
    const char *v = getenv(raw + 4);
    if (!v)
      return kaun__error_set(err, KAUN_ECONFIG,
                             "%s: %s refers to the environment variable %s, which is not set",
                             cfg_path, key, raw + 4);
    *out = strdup(v);
  } else if (strncmp(raw, "file:", 5) == 0) {
    size_t len;
    int rc = kaun__read_small_file(raw + 5, 1 << 20, out, &len, err);
    if (rc) {
      char why[KAUN_ERROR_MESSAGE_MAX];
      snprintf(why, sizeof why, "%s", err ? err->message : "");
      return kaun__error_set(err, KAUN_ECONFIG,
                             "%s: %s refers to the file %s, which cannot be read (%s)", cfg_path,
                             key, raw + 5, why);
    }
    while (len && ((*out)[len - 1] == '\n' || (*out)[len - 1] == '\r')) (*out)[--len] = '\0';
  } else {
    *out = strdup(raw);
  }
  return *out ? KAUN_OK : kaun__error_nomem(err, "reading a secret");
}

/* Checks a backend's settings against its plugin's options. */
static int validate_backend(const kaun__config *cfg, const kaun__backend_conf *b,
                            const kaun__plugin *p, kaun_error *err) {
  const kaun_option_spec *specs = p->ops.options;
  for (size_t i = 0; i < b->count; i++) {
    const kaun__setting *s = &b->settings[i];
    const kaun_option_spec *spec = kaun__option_spec(specs, s->key);
    if (!spec) {
      kaun__strbuf known = {0};
      for (const kaun_option_spec *o = specs; o && o->name; o++)
        kaun__strbuf_printf(&known, "%s%s", known.len ? ", " : "", o->name);
      kaun__error_set(err, KAUN_ECONFIG,
                      "%s: line %u: backends.%s.%s is not an option of the '%s' plugin (its "
                      "options: %s)",
                      cfg->path, s->line, b->name, s->key, p->ops.name,
                      known.len ? known.data : "none");
      kaun__strbuf_free(&known);
      return KAUN_ECONFIG;
    }
    if (spec->type != s->type) {
      static const char *names[] = {"a string", "an integer", "a boolean"};
      return kaun__error_set(err, KAUN_ECONFIG, "%s: line %u: backends.%s.%s must be %s", cfg->path,
                             s->line, b->name, s->key, names[spec->type]);
    }
    if (spec->type == KAUN_OPTION_INT && strpbrk(s->value, ".eE"))
      return kaun__error_set(err, KAUN_ECONFIG, "%s: line %u: backends.%s.%s must be an integer",
                             cfg->path, s->line, b->name, s->key);
  }
  for (const kaun_option_spec *o = specs; o && o->name; o++) {
    if (!o->required) continue;
    bool given = false;
    for (size_t i = 0; i < b->count; i++) given |= strcmp(b->settings[i].key, o->name) == 0;
    if (!given)
      return kaun__error_set(err, KAUN_ECONFIG,
                             "%s: line %u: backends.%s.%s is missing: the '%s' plugin needs it "
                             "(%s)",
                             cfg->path, b->line, b->name, o->name, p->ops.name,
                             o->help ? o->help : "no help");
  }
  return KAUN_OK;
}

/* ---- contexts ------------------------------------------------------------------- */

static int add_dir(kaun_context *ctx, const char *dir, const char *origin) {
  char **d = realloc(ctx->dirs, (ctx->ndirs + 1) * sizeof *d);
  if (!d) return KAUN_ENOMEM;
  ctx->dirs = d;
  char **o = realloc(ctx->dir_origins, (ctx->ndirs + 1) * sizeof *o);
  if (!o) return KAUN_ENOMEM;
  ctx->dir_origins = o;
  ctx->dirs[ctx->ndirs] = strdup(dir);
  ctx->dir_origins[ctx->ndirs] = strdup(origin);
  if (!ctx->dirs[ctx->ndirs] || !ctx->dir_origins[ctx->ndirs]) {
    free(ctx->dirs[ctx->ndirs]);
    free(ctx->dir_origins[ctx->ndirs]);
    return KAUN_ENOMEM;
  }
  ctx->ndirs++;
  return KAUN_OK;
}

static bool file_exists(const char *p) {
  struct stat sb;
  return stat(p, &sb) == 0;
}

/* Finds the config file: returns KAUN_OK with *path NULL for defaults. */
static int find_config(const char *explicit_path, char *path, size_t size, const char **origin,
                       kaun_error *err) {
  path[0] = '\0';
  const char *env = getenv("KAUN_CONFIG");
  if (explicit_path) {
    snprintf(path, size, "%s", explicit_path);
    *origin = "--config, or the program";
  } else if (env && *env) {
    if (!file_exists(env))
      return kaun__error_set(err, KAUN_ENOENT, "KAUN_CONFIG names '%s', which does not exist", env);
    snprintf(path, size, "%s", env);
    *origin = "$KAUN_CONFIG";
  } else {
    const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");
    if (xdg && *xdg)
      snprintf(path, size, "%s/kaun/config.json", xdg);
    else if (home && *home)
      snprintf(path, size, "%s/.config/kaun/config.json", home);
    *origin = xdg && *xdg ? "$XDG_CONFIG_HOME" : "~/.config";
    if (!path[0] || !file_exists(path)) {
      snprintf(path, size, "/etc/kaun/config.json");
      *origin = "/etc";
      if (!file_exists(path)) path[0] = '\0';
    }
  }
  return KAUN_OK;
}

int kaun_context_new(const char *config_path, kaun_context **out, kaun_error *err) {
  *out = NULL;
  kaun_context *ctx = calloc(1, sizeof *ctx);
  if (!ctx) return kaun__error_nomem(err, "creating a context");
  pthread_mutex_init(&ctx->lock, NULL);
  pthread_cond_init(&ctx->created, NULL);
  atomic_init(&ctx->refs, 1);
  char path[4096];
  const char *origin = NULL;
  int rc = find_config(config_path, path, sizeof path, &origin, err);
  if (!rc && path[0]) rc = kaun__config_read(path, origin, &ctx->cfg, err);
  if (rc) goto fail;
  /* the plugin search path: environment, config, install directory */
  const char *env = getenv("KAUN_PLUGIN_PATH");
  if (env) {
    char *copy = strdup(env), *save = NULL;
    if (!copy) rc = KAUN_ENOMEM;
    for (char *d = copy ? strtok_r(copy, ":", &save) : NULL; d && !rc;
         d = strtok_r(NULL, ":", &save))
      rc = d[0] == '/' /* never relative to the working directory: plugins are code */
               ? add_dir(ctx, d, "$KAUN_PLUGIN_PATH")
               : kaun__error_set(err, KAUN_ECONFIG,
                                 "KAUN_PLUGIN_PATH: the entry '%s' is relative: kaun does not "
                                 "load plugins from the working directory; use an absolute path",
                                 d);
    free(copy);
    if (rc == KAUN_ECONFIG) goto fail;
  }
  for (size_t i = 0; i < ctx->cfg.ndirs && !rc; i++) {
    char origin_text[4200];
    snprintf(origin_text, sizeof origin_text, "%s:%u", ctx->cfg.path, ctx->cfg.dir_lines[i]);
    rc = add_dir(ctx, ctx->cfg.plugin_dirs[i], origin_text);
  }
  if (!rc) rc = add_dir(ctx, KAUN_PLUGINDIR, "install directory");
  if (rc) {
    rc = kaun__error_nomem(err, "creating a context");
    goto fail;
  }
  /* load and validate every configured backend's plugin now */
  ctx->plugins = calloc(ctx->cfg.nbackends + 1, sizeof *ctx->plugins);
  if (!ctx->plugins) {
    rc = kaun__error_nomem(err, "creating a context");
    goto fail;
  }
  for (size_t i = 0; i < ctx->cfg.nbackends; i++) {
    kaun__backend_conf *b = &ctx->cfg.backends[i];
    rc = strchr(b->plugin, '/')
             ? kaun__plugin_by_path(b->plugin, &ctx->plugins[i], err)
             : kaun__plugin_by_name(b->plugin, ctx->dirs, ctx->ndirs, &ctx->plugins[i], err);
    if (rc) {
      kaun__error_prefix(err, "%s: line %u: backends.%s.plugin: ", ctx->cfg.path, b->line, b->name);
      if (rc == KAUN_EPLUGIN) rc = KAUN_ECONFIG; /* the config names a plugin that is not there */
      if (err) err->code = rc;
      goto fail;
    }
    if ((rc = validate_backend(&ctx->cfg, b, ctx->plugins[i], err))) goto fail;
  }
  *out = ctx;
  return KAUN_OK;
fail:
  kaun_context_free(ctx);
  return rc;
}

static void context_unref(kaun_context *ctx) {
  if (!ctx || atomic_fetch_sub(&ctx->refs, 1) != 1) return;
  for (size_t i = 0; i < ctx->cfg.nbackends; i++) kaun__plugin_unref(ctx->plugins[i]);
  free(ctx->plugins);
  for (size_t i = 0; i < ctx->ndirs; i++) {
    free(ctx->dirs[i]);
    free(ctx->dir_origins[i]);
  }
  free(ctx->dirs);
  free(ctx->dir_origins);
  free(ctx->pending);
  free(ctx->waiting);
  kaun__config_free(&ctx->cfg);
  pthread_cond_destroy(&ctx->created);
  pthread_mutex_destroy(&ctx->lock);
  free(ctx);
}

/* The application is done with the context: its instances go (each lives
 * on while an object or mapping of its own does, and keeps the context's
 * memory alive until then, so a plugin's `ctx` is valid until destroy). */
void kaun_context_free(kaun_context *ctx) {
  if (!ctx) return;
  pthread_mutex_lock(&ctx->lock);
  kaun__instance **instances = ctx->instances;
  size_t n = ctx->ninstances;
  ctx->instances = NULL;
  ctx->ninstances = 0;
  ctx->closed = true;
  kaun_object *kept[KAUN__INNER_KEPT];
  size_t nkept = ctx->ninner;
  memcpy(kept, ctx->inner_kept, nkept * sizeof *kept);
  ctx->ninner = 0;
  pthread_mutex_unlock(&ctx->lock);
  for (size_t i = 0; i < nkept; i++) kaun_object_close(kept[i]);
  for (size_t i = 0; i < n; i++) kaun__instance_unref(instances[i]);
  free(instances);
  context_unref(ctx);
}

void kaun_context_set_progress(kaun_context *ctx, kaun_progress_fn fn, void *user) {
  ctx->progress = fn;
  ctx->progress_user = user;
}

void kaun_context_set_io(kaun_context *ctx, uint64_t chunk_size, unsigned inflight) {
  ctx->chunk_size = chunk_size;
  ctx->inflight = inflight;
}

int kaun_context_new_io(kaun_context *ctx, kaun_io **out, kaun_error *err) {
  return kaun_io_new(ctx ? ctx->progress : NULL, ctx ? ctx->progress_user : NULL, out, err);
}

const char *kaun_context_config_path(const kaun_context *ctx) { return ctx->cfg.path; }

const char *kaun__context_cache_dir(const kaun_context *ctx) {
  return ctx ? ctx->cfg.cache_dir : NULL;
}

bool kaun__context_has_backend(const kaun_context *ctx, const char *name) {
  for (size_t i = 0; ctx && i < ctx->cfg.nbackends; i++)
    if (strcmp(ctx->cfg.backends[i].name, name) == 0) return true;
  return false;
}

bool kaun__index_shard_uris(const kaun_context *ctx, const char *name) {
  for (size_t i = 0; ctx && i < ctx->cfg.nbackends; i++)
    if (strcmp(ctx->cfg.backends[i].name, name) == 0) return ctx->cfg.backends[i].index_shard_uris;
  return false;
}

int kaun_context_describe(const kaun_context *ctx, char **out, kaun_error *err) {
  kaun__strbuf sb = {0};
  const kaun__config *c = &ctx->cfg;
  if (c->path)
    kaun__strbuf_printf(&sb, "config_file = %s\t(from %s)\n", c->path, c->origin);
  else
    kaun__strbuf_puts(&sb, "config_file = (none: defaults)\n");
  for (size_t i = 0; i < ctx->ndirs; i++)
    kaun__strbuf_printf(&sb, "plugin_dirs[%zu] = %s\t(%s)\n", i, ctx->dirs[i], ctx->dir_origins[i]);
  if (c->cache_dir)
    kaun__strbuf_printf(&sb, "cache_dir = %s\t(%s:%u)\n", c->cache_dir, c->path, c->cache_line);
  else {
    char root[4096];
    kaun_error ignored = KAUN_ERROR_INIT;
    if (kaun_cache_root(NULL, root, sizeof root, &ignored) == KAUN_OK)
      kaun__strbuf_printf(&sb,
                          "cache_dir = %s\t(default: $RAVEN_CACHE_ROOT, $XDG_CACHE_HOME/raven "
                          "or ~/.cache/raven)\n",
                          root);
    else
      kaun__strbuf_puts(&sb, "cache_dir = (none: no $HOME)\t(default)\n");
  }
  kaun__strbuf_puts(&sb, "backends.file.plugin = file\t(built-in)\n");
  for (size_t i = 0; i < c->nbackends; i++) {
    const kaun__backend_conf *b = &c->backends[i];
    const kaun__plugin *p = ctx->plugins[i];
    kaun__strbuf_printf(&sb, "backends.%s.plugin = %s\t(%s:%u; loaded from %s)\n", b->name,
                        p->ops.name, c->path, b->line, p->path);
    for (const kaun_option_spec *o = p->ops.options; o && o->name; o++) {
      const kaun__setting *s = NULL;
      for (size_t k = 0; k < b->count; k++)
        if (strcmp(b->settings[k].key, o->name) == 0) s = &b->settings[k];
      const char *value = s ? s->value : o->default_value;
      bool is_ref = value && (strncmp(value, "env:", 4) == 0 || strncmp(value, "file:", 5) == 0);
      if (o->secret && value && !is_ref) value = "********";
      if (s)
        kaun__strbuf_printf(&sb, "backends.%s.%s = %s\t(%s:%u)\n", b->name, o->name, value, c->path,
                            s->line);
      else
        kaun__strbuf_printf(&sb, "backends.%s.%s = %s\t(default)\n", b->name, o->name,
                            value ? value : "(unset)");
    }
    if (b->index_shard_uris_line)
      kaun__strbuf_printf(&sb, "backends.%s.index_shard_uris = %s\t(%s:%u)\n", b->name,
                          b->index_shard_uris ? "true" : "false", c->path,
                          b->index_shard_uris_line);
  }
  for (size_t i = 0; i < c->nmirrors; i++) {
    kaun__strbuf_printf(&sb, "mirrors.%s = ", c->mirrors[i].prefix);
    for (size_t k = 0; k < c->mirrors[i].count; k++)
      kaun__strbuf_printf(&sb, "%s%s", k ? ", " : "", c->mirrors[i].targets[k]);
    kaun__strbuf_printf(&sb, "\t(%s:%u)\n", c->path, c->mirrors[i].line);
  }
  if (sb.failed) {
    kaun__strbuf_free(&sb);
    return kaun__error_nomem(err, "describing the config");
  }
  *out = sb.data;
  return KAUN_OK;
}

/* ---- backend instances ------------------------------------------------------------ */

void kaun__instance_unref(kaun__instance *inst) {
  if (!inst || atomic_fetch_sub(&inst->refs, 1) != 1) return;
  if (inst->backend) inst->plugin->ops.destroy(inst->backend);
  context_unref(inst->ctx);
  kaun__options_free(&inst->options);
  kaun__plugin_unref(inst->plugin);
  free(inst->name);
  free(inst);
}

static int build_options(const kaun_context *ctx, const kaun__backend_conf *b,
                         const kaun__plugin *p, kaun_options *o, kaun_error *err) {
  o->specs = p->ops.options;
  size_t n = b ? b->count : 0;
  o->names = calloc(n + 1, sizeof *o->names);
  o->values = calloc(n + 1, sizeof *o->values);
  if (!o->names || !o->values) return kaun__error_nomem(err, "building options");
  for (size_t i = 0; i < n; i++) {
    const kaun__setting *s = &b->settings[i];
    const kaun_option_spec *spec = kaun__option_spec(p->ops.options, s->key);
    char key[512]; /* as other config errors: "line N: KEY PATH" */
    snprintf(key, sizeof key, "line %u: backends.%s.%s", s->line, b->name, s->key);
    if (!(o->names[o->count] = strdup(s->key))) return kaun__error_nomem(err, "building options");
    o->count++;
    int rc = spec && spec->secret
                 ? resolve_secret(ctx->cfg.path, key, s->value, &o->values[o->count - 1], err)
                 : ((o->values[o->count - 1] = strdup(s->value))
                        ? KAUN_OK
                        : kaun__error_nomem(err, "building options"));
    if (rc) return rc;
  }
  if (!b)
    for (const kaun_option_spec *s = p->ops.options; s && s->name; s++)
      if (s->required)
        return kaun__error_set(err, KAUN_ECONFIG,
                               "the '%s' backend needs the option '%s' (%s): add backends.%s.%s "
                               "to %s",
                               p->ops.name, s->name, s->help ? s->help : "no help", p->ops.name,
                               s->name, ctx->cfg.path ? ctx->cfg.path : "a config file");
  return KAUN_OK;
}

/* The instance answering to `scheme` among those made, with ctx->lock
 * held.  Takes a reference. */
static kaun__instance *find_instance(kaun_context *ctx, const char *scheme) {
  for (size_t i = 0; i < ctx->ninstances; i++)
    if (strcmp(ctx->instances[i]->name, scheme) == 0) {
      atomic_fetch_add(&ctx->instances[i]->refs, 1);
      return ctx->instances[i];
    }
  return NULL;
}

static long find_pending(const kaun_context *ctx, const char *scheme) {
  for (size_t i = 0; i < ctx->npending; i++)
    if (strcmp(ctx->pending[i].name, scheme) == 0) return (long)i;
  return -1;
}

/* Whether waiting for the creation pending[p] would wait for this thread:
 * its creator waits (maybe through other creators) for a name this thread
 * is creating.  `chain` gets the names along the way.  ctx->lock held. */
static bool waits_for_me(const kaun_context *ctx, long p, kaun__strbuf *chain) {
  kaun__strbuf_puts(chain, ctx->pending[p].name);
  for (size_t hops = 0; hops <= ctx->nwaiting; hops++) {
    if (pthread_equal(ctx->pending[p].thread, pthread_self())) return true;
    const char *next = NULL;
    for (size_t i = 0; i < ctx->nwaiting && !next; i++)
      if (pthread_equal(ctx->waiting[i].thread, ctx->pending[p].thread))
        next = ctx->waiting[i].name;
    if (!next || (p = find_pending(ctx, next)) < 0) return false;
    kaun__strbuf_printf(chain, " -> %s", next);
  }
  return false;
}

/* Makes the instance (the caller has claimed the name). */
static int create_instance(kaun_context *ctx, const char *scheme, kaun__instance **out,
                           kaun_error *err) {
  const kaun__backend_conf *conf = NULL;
  kaun__plugin *plugin = NULL;
  int rc;
  for (size_t i = 0; i < ctx->cfg.nbackends; i++)
    if (strcmp(ctx->cfg.backends[i].name, scheme) == 0) {
      conf = &ctx->cfg.backends[i];
      plugin = ctx->plugins[i];
    }
  if (plugin) {
    rc = strchr(conf->plugin, '/')
             ? kaun__plugin_by_path(conf->plugin, &plugin, err)
             : kaun__plugin_by_name(conf->plugin, ctx->dirs, ctx->ndirs, &plugin, err);
  } else {
    /* https:// is served by the http plugin's default instance */
    const char *pname = strcmp(scheme, "https") == 0 ? "http" : scheme;
    rc = kaun__plugin_by_name(pname, ctx->dirs, ctx->ndirs, &plugin, err);
    if (rc == KAUN_EPLUGIN && err && strstr(err->message, "no plugin '")) {
      char why[KAUN_ERROR_MESSAGE_MAX];
      snprintf(why, sizeof why, "%s", err->message);
      rc = kaun__error_set(err, KAUN_EBACKEND,
                           "no backend answers to '%s://': configure backends.%s in %s, or install "
                           "a plugin named '%s' (%s)",
                           scheme, scheme, ctx->cfg.path ? ctx->cfg.path : "a config file", scheme,
                           why);
    } else if (rc) { /* found, but refused (not trusted, or broken) */
      kaun__error_prefix(err,
                         "no backend is configured for '%s://', so it uses the plugin '%s' "
                         "from the plugin path: ",
                         scheme, pname);
    }
  }
  if (rc) return rc;
  kaun__instance *inst = calloc(1, sizeof *inst);
  if (!inst || !(inst->name = strdup(scheme))) {
    free(inst);
    kaun__plugin_unref(plugin);
    return kaun__error_nomem(err, "creating a backend");
  }
  inst->plugin = plugin;
  inst->ctx = ctx;
  atomic_fetch_add(&ctx->refs, 1);
  atomic_init(&inst->refs, 1);
  rc = build_options(ctx, conf, plugin, &inst->options, err);
  if (!rc) {
    rc = plugin->ops.create(ctx, scheme, &inst->options, &inst->backend, err);
    if (rc) {
      inst->backend = NULL;
      kaun__error_prefix(err, "backend '%s' (plugin %s): ", scheme, plugin->ops.name);
    }
  }
  if (rc) {
    kaun__instance_unref(inst);
    return rc;
  }
  *out = inst;
  return KAUN_OK;
}

static int get_instance(kaun_context *ctx, const char *scheme, kaun__instance **out,
                        kaun_error *err);

int kaun_context_backend_options(kaun_context *ctx, const char *scheme, const kaun_options **out,
                                 kaun_error *err) {
  *out = NULL;
  kaun__instance *inst;
  int rc = get_instance(ctx, scheme, &inst, err);
  if (rc) return rc;
  *out = &inst->options; /* the context keeps the instance until it is freed */
  kaun__instance_unref(inst);
  return KAUN_OK;
}

int kaun_context_check(kaun_context *ctx, kaun_error *err) {
  for (size_t i = 0; i < ctx->cfg.nbackends; i++) {
    kaun__instance *inst;
    int rc = get_instance(ctx, ctx->cfg.backends[i].name, &inst, err);
    if (rc) {
      if (ctx->cfg.path && err && !strstr(err->message, ctx->cfg.path))
        kaun__error_prefix(err, "%s: line %u: backends.%s: ", ctx->cfg.path,
                           ctx->cfg.backends[i].line, ctx->cfg.backends[i].name);
      return rc;
    }
    kaun__instance_unref(inst);
  }
  return KAUN_OK;
}

/* The instance answering to `scheme`, created on first use: once per
 * context, however many threads ask at the same time.  Takes a ref. */
static int get_instance(kaun_context *ctx, const char *scheme, kaun__instance **out,
                        kaun_error *err) {
  *out = NULL;
  pthread_mutex_lock(&ctx->lock);
  for (;;) {
    if ((*out = find_instance(ctx, scheme))) {
      pthread_mutex_unlock(&ctx->lock);
      return KAUN_OK;
    }
    long p = find_pending(ctx, scheme);
    if (p < 0) break;
    kaun__strbuf chain = {0};
    if (pthread_equal(ctx->pending[p].thread, pthread_self())) {
      pthread_mutex_unlock(&ctx->lock);
      open_stack_text(&chain, 0, open_depth, NULL);
      kaun__error_set(err, KAUN_EURI,
                      "creating the backend '%s' needs the backend '%s' itself: its options lead "
                      "back to it%s%s",
                      scheme, scheme, chain.len ? ": " : "", chain.len ? chain.data : "");
      kaun__strbuf_free(&chain);
      return KAUN_EURI;
    }
    if (waits_for_me(ctx, p, &chain)) {
      pthread_mutex_unlock(&ctx->lock);
      kaun__error_set(err, KAUN_EURI,
                      "creating the backend '%s' waits for creations on other threads that wait "
                      "for this one: %s -> %s (the backends' options lead back to each other)",
                      scheme, chain.data ? chain.data : scheme, scheme);
      kaun__strbuf_free(&chain);
      return KAUN_EURI;
    }
    kaun__strbuf_free(&chain);
    struct waiting *w = realloc(ctx->waiting, (ctx->nwaiting + 1) * sizeof *w);
    if (!w) {
      pthread_mutex_unlock(&ctx->lock);
      return kaun__error_nomem(err, "creating a backend");
    }
    ctx->waiting = w;
    ctx->waiting[ctx->nwaiting++] = (struct waiting){scheme, pthread_self()};
    pthread_cond_wait(&ctx->created, &ctx->lock); /* another thread is creating it */
    for (size_t i = 0; i < ctx->nwaiting; i++)
      if (pthread_equal(ctx->waiting[i].thread, pthread_self())) {
        ctx->waiting[i] = ctx->waiting[--ctx->nwaiting];
        break;
      }
  }
  struct pending *grown = realloc(ctx->pending, (ctx->npending + 1) * sizeof *grown);
  if (!grown) {
    pthread_mutex_unlock(&ctx->lock);
    return kaun__error_nomem(err, "creating a backend");
  }
  ctx->pending = grown;
  ctx->pending[ctx->npending].name = (char *)scheme;
  ctx->pending[ctx->npending].thread = pthread_self();
  ctx->npending++;
  pthread_mutex_unlock(&ctx->lock);

  kaun__instance *inst = NULL;
  int rc = create_instance(ctx, scheme, &inst, err);

  pthread_mutex_lock(&ctx->lock);
  long p = find_pending(ctx, scheme);
  ctx->pending[p] = ctx->pending[--ctx->npending];
  if (!rc && !ctx->closed) {
    kaun__instance **more = realloc(ctx->instances, (ctx->ninstances + 1) * sizeof *more);
    if (more) {
      ctx->instances = more;
      ctx->instances[ctx->ninstances++] = inst; /* the context's reference */
      atomic_fetch_add(&inst->refs, 1);         /* and the caller's */
    }                                           /* else: the caller's only; made again next time */
  }
  pthread_cond_broadcast(&ctx->created);
  pthread_mutex_unlock(&ctx->lock);
  *out = inst;
  return rc;
}

/* ---- objects --------------------------------------------------------------------- */

/* Puts the URI in front of a backend's message that does not name it. */
static int name_uri(kaun_error *err, int rc, const char *uri) {
  if (!rc || !err || !uri) return rc;
  /* a backend that named the URI itself knows how to show it (a registry's
   * NAME@VERSION is no user name) */
  if (strstr(err->message, uri)) return rc;
  /* never a password ("user:pw@host") or a query (a signature) in a message */
  char shown[1024];
  const char *sep = strstr(uri, "://"), *q = strchr(uri, '?');
  const char *host = sep ? sep + 3 : NULL;
  const char *slash = host ? strchr(host, '/') : NULL;
  const char *at = host ? strchr(host, '@') : NULL;
  if (at && slash && at > slash) at = NULL;
  if (at && q && at > q) at = NULL;
  if (at)
    snprintf(shown, sizeof shown, "%.*s%.*s", (int)(host - uri), uri,
             (int)(q ? q - at - 1 : (long)strlen(at + 1)), at + 1);
  else
    snprintf(shown, sizeof shown, "%.*s", (int)(q ? q - uri : (long)strlen(uri)), uri);
  if (q && strlen(shown) + 4 < sizeof shown) strcat(shown, "?...");
  if (!strstr(err->message, shown)) kaun__error_prefix(err, "%s: ", shown);
  return rc;
}

/* An inner object that changed is not kept: the next member opens it again
 * (and sees the new version) instead of failing with KAUN_ECHANGED for
 * the context's whole life. */
static void forget_inner(kaun_object *o) {
  kaun_context *ctx = o->inst->ctx;
  kaun_object *gone = NULL;
  pthread_mutex_lock(&ctx->lock);
  for (size_t i = 0; i < ctx->ninner; i++)
    if (ctx->inner_kept[i] == o) {
      gone = o;
      memmove(&ctx->inner_kept[i], &ctx->inner_kept[i + 1],
              (ctx->ninner - i - 1) * sizeof *ctx->inner_kept);
      ctx->ninner--;
      break;
    }
  pthread_mutex_unlock(&ctx->lock);
  kaun_object_close(gone); /* the context's reference */
}

/* The inner object of a stacked URI: one the context keeps from an
 * earlier member, or opened now and kept (the last KAUN__INNER_KEPT, until
 * the context is freed).  A kept object is shared: reads may run
 * concurrently, as always, and stat is read-only in every bundled plugin. */
static int open_inner(kaun_context *ctx, const char *uri, kaun_object **out, kaun_error *err) {
  pthread_mutex_lock(&ctx->lock);
  for (size_t i = 0; i < ctx->ninner; i++)
    if (strcmp(kaun_object_uri(ctx->inner_kept[i]), uri) == 0 ||
        (ctx->inner_kept[i]->asked && strcmp(ctx->inner_kept[i]->asked, uri) == 0)) {
      *out = ctx->inner_kept[i];
      atomic_fetch_add(&(*out)->refs, 1);
      pthread_mutex_unlock(&ctx->lock);
      return KAUN_OK;
    }
  pthread_mutex_unlock(&ctx->lock);
  int rc = kaun_object_open(ctx, uri, out, err);
  if (rc) return rc;
  kaun_object *evicted = NULL;
  pthread_mutex_lock(&ctx->lock);
  if (!ctx->closed) {
    if (ctx->ninner == KAUN__INNER_KEPT) { /* the oldest goes */
      evicted = ctx->inner_kept[0];
      memmove(ctx->inner_kept, ctx->inner_kept + 1, (KAUN__INNER_KEPT - 1) * sizeof evicted);
      ctx->ninner--;
    }
    ctx->inner_kept[ctx->ninner++] = *out;
    atomic_fetch_add(&(*out)->refs, 1); /* the context's */
  }
  pthread_mutex_unlock(&ctx->lock);
  kaun_object_close(evicted);
  return KAUN_OK;
}

static int open_parsed(kaun_context *ctx, const kaun_uri *u, const char *text, kaun_object **out,
                       kaun_error *err) {
  kaun_object *inner = NULL;
  int rc;
  if (u->inner && (rc = open_inner(ctx, kaun__uri_chain(text) + 2, &inner, err))) return rc;
  kaun__instance *inst;
  if ((rc = get_instance(ctx, u->scheme, &inst, err))) {
    kaun_object_close(inner);
    return rc;
  }
  if (inner && !(inst->plugin->ops.capabilities & KAUN_CAP_STACKED)) {
    kaun_object_close(inner);
    kaun__instance_unref(inst);
    return kaun__error_set(err, KAUN_EURI,
                           "'%s': the '%s' backend does not read through another object ('::')",
                           text, inst->name);
  }
  kaun_object *o = calloc(1, sizeof *o);
  if (!o || !(o->uri = strdup(text))) {
    free(o);
    kaun_object_close(inner);
    kaun__instance_unref(inst);
    return kaun__error_nomem(err, "opening an object");
  }
  o->inst = inst;
  o->inner = inner;
  atomic_init(&o->refs, 1);
  const kaun_plugin *ops = &inst->plugin->ops;
  rc = ops->open_io ? ops->open_io(inst->backend, u->path, inner, opening_io, &o->handle, err)
                    : ops->open(inst->backend, u->path, inner, &o->handle, err);
  if (rc) {
    o->handle = NULL;
    kaun_object_close(o);
    return name_uri(err, rc, text);
  }
  *out = o;
  return KAUN_OK;
}

static int open_direct(kaun_context *ctx, const char *uri, kaun_object **out, kaun_error *err) {
  kaun_uri *u;
  int rc = kaun_uri_parse(uri, &u, err);
  if (rc) return rc;
  int seen = -1;
  for (int i = 0; i < open_depth && seen < 0; i++)
    if (strcmp(open_stack[i], uri) == 0) seen = i;
  if (seen >= 0 || open_depth >= MAX_NESTING) {
    /* a cycle (a registry whose index it serves itself, two that refer to
     * each other), or a chain too long: fail now, never wait or recurse */
    kaun__strbuf chain = {0}, before = {0};
    open_stack_text(&chain, seen >= 0 ? seen : 0, open_depth, uri);
    if (seen > 0) open_stack_text(&before, 0, seen, NULL);
    if (chain.failed || before.failed)
      rc = kaun__error_nomem(err, "opening an object");
    else if (seen >= 0)
      rc = kaun__error_set(err, KAUN_EURI, "'%s' leads back to itself: %s%s%s%s", uri, chain.data,
                           seen > 0 ? " (reached from " : "", seen > 0 ? before.data : "",
                           seen > 0 ? ")" : "");
    else
      rc = kaun__error_set(err, KAUN_EURI,
                           "'%s': opening it leads through more than %d backends: %s", uri,
                           MAX_NESTING, chain.data);
    kaun__strbuf_free(&chain);
    kaun__strbuf_free(&before);
  } else {
    open_stack[open_depth++] = uri;
    rc = open_parsed(ctx, u, uri, out, err);
    open_depth--;
  }
  kaun_uri_free(u);
  return rc;
}

static const kaun__mirror *find_mirror(const kaun_context *ctx, const char *uri) {
  const kaun__mirror *best = NULL;
  for (size_t i = 0; i < ctx->cfg.nmirrors; i++) {
    const kaun__mirror *m = &ctx->cfg.mirrors[i];
    if (strncmp(uri, m->prefix, strlen(m->prefix)) == 0 &&
        (!best || strlen(m->prefix) > strlen(best->prefix)))
      best = m;
  }
  return best;
}

/* How much a failure says about the object: a mirror that has it but
 * fails says more than one that does not have it. */
static int failure_rank(int code) {
  return code == KAUN_ENOENT ? 0 : code == KAUN_EBACKEND ? 1 : 2;
}

static int open_mirrored(kaun_context *ctx, const char *uri, kaun_object **out, kaun_error *err);

int kaun_object_open_io(kaun_context *ctx, const char *uri, kaun_io *io, kaun_object **out,
                        kaun_error *err) {
  *out = NULL;
  kaun_context *own = NULL;
  kaun_io *mine = NULL;
  int rc = KAUN_OK;
  if (!ctx) { /* a context from the default config; the object keeps it alive */
    if ((rc = kaun_context_new(NULL, &own, err))) return rc;
    ctx = own;
  }
  kaun_io *outer = opening_io;
  /* no io of the caller's (nor of an open this one is nested in): the
   * context's progress callback, if it has one */
  if (!io && !outer && ctx->progress && kaun_context_new_io(ctx, &mine, NULL) == KAUN_OK) io = mine;
  if (io) opening_io = io;
  rc = open_mirrored(ctx, uri, out, err);
  opening_io = outer;
  kaun_io_free(mine);
  kaun_context_free(own);
  return rc;
}

kaun_io *kaun__opening_io_swap(kaun_io *io) {
  kaun_io *old = opening_io;
  opening_io = io;
  return old;
}

int kaun_object_open(kaun_context *ctx, const char *uri, kaun_object **out, kaun_error *err) {
  return kaun_object_open_io(ctx, uri, NULL, out, err);
}

static int open_mirrored(kaun_context *ctx, const char *uri, kaun_object **out, kaun_error *err) {
  const kaun__mirror *m = find_mirror(ctx, uri);
  if (!m) return open_direct(ctx, uri, out, err);
  kaun__strbuf why = {0};
  kaun_error worst = KAUN_ERROR_INIT;
  int rc = KAUN_ENOENT;
  for (size_t i = 0; i < m->count; i++) {
    kaun__strbuf cand = {0};
    kaun__strbuf_puts(&cand, m->targets[i]);
    kaun__strbuf_puts(&cand, uri + strlen(m->prefix));
    if (cand.failed) {
      kaun__strbuf_free(&cand);
      rc = kaun__error_nomem(err, "trying mirrors");
      break;
    }
    kaun_error e = KAUN_ERROR_INIT;
    rc = open_direct(ctx, cand.data, out, &e);
    if (rc == KAUN_OK) {
      kaun__strbuf_free(&cand);
      break;
    }
    kaun__strbuf_printf(&why, "%s%s (%s", why.len ? "; " : "", cand.data, kaun_status_name(rc));
    if (e.http_status) kaun__strbuf_printf(&why, ", HTTP %ld", e.http_status);
    const char *msg = e.message;
    if (strncmp(msg, cand.data, cand.len) == 0 && strncmp(msg + cand.len, ": ", 2) == 0)
      msg += cand.len + 2;
    kaun__strbuf_printf(&why, "): %s", msg);
    kaun__strbuf_free(&cand);
    if (!worst.code || failure_rank(rc) > failure_rank(worst.code)) worst = e;
    if (rc == KAUN_EISDIR) { /* a folder is an answer, not a failure to fall through */
      if (err) *err = e;
      break;
    }
    if (rc == KAUN_ECANCELED || rc == KAUN_ENOMEM) break;
  }
  if (rc && rc != KAUN_EISDIR && rc != KAUN_ENOMEM) {
    kaun__error_set(err, worst.code, "no mirror of '%s' could open it: %s", uri,
                    why.data ? why.data : "no mirrors");
    if (err) err->http_status = worst.http_status;
    rc = worst.code;
  }
  kaun__strbuf_free(&why);
  if (*out) {
    free((*out)->asked);
    (*out)->asked = strdup(uri);
  }
  return rc;
}

void kaun_object_close(kaun_object *o) {
  if (!o || atomic_fetch_sub(&o->refs, 1) != 1) return;
  if (o->handle) o->inst->plugin->ops.close(o->handle);
  kaun__instance_unref(o->inst);
  kaun_object_close(o->inner);
  free(o->uri);
  free(o->asked);
  free(o);
}

/* The URI the caller asked for (messages name it). */
static const char *asked_uri(const kaun_object *o) { return o->asked ? o->asked : o->uri; }

const char *kaun_object_uri(const kaun_object *o) { return o->uri; }

const char *kaun__object_backend(const kaun_object *o) { return o->inst->name; }

int kaun_object_stat(kaun_object *o, kaun_stat *out, kaun_error *err) {
  kaun_stat tmp;
  memset(&tmp, 0, sizeof tmp);
  tmp.struct_size = sizeof tmp;
  int rc = o->inst->plugin->ops.stat(o->handle, &tmp, err);
  if (rc) return name_uri(err, rc, asked_uri(o));
  size_t n = out->struct_size && out->struct_size < sizeof tmp ? out->struct_size : sizeof tmp;
  memcpy(out, &tmp, n);
  out->struct_size = n;
  return KAUN_OK;
}

int kaun_object_read(kaun_object *o, uint64_t offset, void *dst, size_t len, kaun_error *err) {
  return kaun_object_read_io(o, offset, dst, len, NULL, err);
}

int kaun_object_read_io(kaun_object *o, uint64_t offset, void *dst, size_t len, kaun_io *io,
                        kaun_error *err) {
  if (!len) return KAUN_OK;
  if (kaun_io_canceled(io))
    return kaun__error_set(err, KAUN_ECANCELED, "%s: canceled", asked_uri(o));
  const kaun_plugin *ops = &o->inst->plugin->ops;
  int rc;
  if (ops->read_io) {
    rc = ops->read_io(o->handle, offset, dst, len, io, err);
  } else {
    rc = ops->read(o->handle, offset, dst, len, err);
    if (!rc && kaun_io_add(io, asked_uri(o), 0, len) == KAUN_ECANCELED)
      rc = kaun__error_set(err, KAUN_ECANCELED, "%s: canceled", asked_uri(o));
  }
  if (rc == KAUN_ECHANGED) forget_inner(o);
  return name_uri(err, rc, asked_uri(o));
}

void kaun_object_hints(const kaun_object *o, uint64_t *chunk_size, unsigned *inflight) {
  const kaun_context *ctx = o->inst->ctx;
  const kaun_plugin *ops = &o->inst->plugin->ops;
  uint64_t chunk = ctx->chunk_size ? ctx->chunk_size : ops->read_chunk;
  unsigned n = ctx->inflight ? ctx->inflight : ops->read_inflight;
  if (!chunk) chunk = (uint64_t)8 << 20;
  if (!n) {
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    n = (ops->capabilities & KAUN_CAP_MAP) ? (unsigned)(cpus < 1 ? 1 : cpus > 8 ? 8 : cpus) : 16;
  }
  *chunk_size = chunk;
  *inflight = n;
}

int kaun_object_fetch(kaun_object *o, kaun_io *io, char *path_out, size_t path_size,
                      kaun_error *err) {
  kaun_stat st = {.struct_size = sizeof st};
  int rc = kaun_object_stat(o, &st, err);
  if (rc) return rc;
  if (st.local_path[0]) {
    if (strlen(st.local_path) >= path_size)
      return kaun__error_set(err, KAUN_EINVAL, "%s: its local path does not fit in %zu bytes",
                             asked_uri(o), path_size);
    memcpy(path_out, st.local_path, strlen(st.local_path) + 1);
    return KAUN_OK;
  }
  const kaun_plugin *ops = &o->inst->plugin->ops;
  if (!(ops->capabilities & KAUN_CAP_FETCH))
    return kaun__error_set(err, KAUN_ENOTSUP,
                           "%s: the '%s' backend keeps no local copy (no fetch); read it instead",
                           asked_uri(o), o->inst->name);
  rc = ops->fetch_io ? ops->fetch_io(o->handle, path_out, path_size, io, err)
                     : ops->fetch(o->handle, path_out, path_size, err);
  return name_uri(err, rc, asked_uri(o));
}

typedef struct mapping {
  kaun__instance *inst;
  void *cookie;
} mapping;

static void release_mapping(void *data, size_t size, void *context) {
  (void)data, (void)size;
  mapping *m = context;
  m->inst->plugin->ops.unmap(m->inst->backend, m->cookie);
  kaun__instance_unref(m->inst);
  free(m);
}

int kaun_object_map_range(kaun_object *o, uint64_t offset, uint64_t len, kaun_buffer **out,
                          kaun_error *err) {
  *out = NULL;
  const kaun_plugin *ops = &o->inst->plugin->ops;
  if (!(ops->capabilities & KAUN_CAP_MAP))
    return kaun__error_set(err, KAUN_ENOTSUP, "%s: the '%s' backend cannot map; read instead",
                           asked_uri(o), o->inst->name);
  mapping *m = calloc(1, sizeof *m);
  if (!m) return kaun__error_nomem(err, "mapping an object");
  const void *data;
  size_t size = 0;
  int rc;
  if (ops->map_range) {
    rc = ops->map_range(o->handle, offset, len, &data, &m->cookie, err);
    size = (size_t)len;
    offset = 0;
  } else {
    rc = ops->map(o->handle, &data, &size, &m->cookie, err);
  }
  if (rc) {
    free(m);
    return name_uri(err, rc, asked_uri(o));
  }
  m->inst = o->inst;
  atomic_fetch_add(&m->inst->refs, 1);
  if (offset > size || len > size - offset) {
    release_mapping(NULL, 0, m);
    return kaun__error_set(err, KAUN_EIO, "%s: bytes %llu..%llu are past its end (%zu bytes)",
                           asked_uri(o), (unsigned long long)offset,
                           (unsigned long long)(offset + len), size);
  }
  rc = kaun_buffer_wrap((const char *)data + offset, (size_t)len, release_mapping, m, out, err);
  if (rc) release_mapping(NULL, 0, m);
  return rc;
}

static void release_malloc(void *data, size_t size, void *context) {
  (void)size, (void)context;
  free(data);
}

int kaun_object_map(kaun_object *o, kaun_buffer **out, kaun_error *err) {
  *out = NULL;
  kaun_stat st = {.struct_size = sizeof st};
  int rc = kaun_object_stat(o, &st, err);
  if (rc) return rc;
  /* zero copy when the backend maps this object; else (a refused or
   * failed map included) the bytes are read into memory */
  kaun_error ignored = KAUN_ERROR_INIT;
  if (kaun_object_map_range(o, 0, st.size, out, &ignored) == KAUN_OK) return KAUN_OK;
  if (st.size > SIZE_MAX) return kaun__error_set(err, KAUN_ENOMEM, "'%s' is too large", o->uri);
  void *mem = malloc(st.size ? (size_t)st.size : 1);
  if (!mem)
    return kaun__error_set(err, KAUN_ENOMEM, "out of memory reading %llu bytes of '%s'",
                           (unsigned long long)st.size, o->uri);
  if ((rc = kaun_object_read(o, 0, mem, (size_t)st.size, err)) ||
      (rc = kaun_buffer_wrap(mem, (size_t)st.size, release_malloc, NULL, out, err)))
    free(mem);
  return rc;
}

/* ---- whole-URI operations ---------------------------------------------------------- */

/* Resolves a URI for put/remove/list: no stacking.  A NULL ctx means a
 * context from the default config, kept alive by the instance. */
static int backend_for(kaun_context *ctx, const char *uri, kaun__instance **inst, char **path,
                       kaun_error *err) {
  kaun_uri *u;
  int rc = kaun_uri_parse(uri, &u, err);
  if (rc) return rc;
  kaun_context *own = NULL;
  if (!ctx && !(rc = kaun_context_new(NULL, &own, err))) ctx = own;
  if (rc) {
  } else if (u->inner) {
    rc = kaun__error_set(err, KAUN_ENOTSUP, "'%s': objects inside another object are read-only",
                         uri);
  } else if (!(rc = get_instance(ctx, u->scheme, inst, err))) {
    *path = u->path;
    u->path = NULL;
  }
  kaun_context_free(own);
  kaun_uri_free(u);
  return rc;
}

int kaun_storage_put(kaun_context *ctx, const char *uri, const kaun_put_source *src,
                     kaun_error *err) {
  return kaun_storage_put_io(ctx, uri, src, NULL, err);
}

int kaun_storage_put_io(kaun_context *ctx, const char *uri, const kaun_put_source *src, kaun_io *io,
                        kaun_error *err) {
  kaun__instance *inst;
  char *path;
  int rc = backend_for(ctx, uri, &inst, &path, err);
  if (rc) return rc;
  const kaun_plugin *ops = &inst->plugin->ops;
  rc = ops->put_io ? ops->put_io(inst->backend, path, src, io, err)
                   : ops->put(inst->backend, path, src, err);
  rc = name_uri(err, rc, uri);
  free(path);
  kaun__instance_unref(inst);
  return rc;
}

int kaun_storage_remove(kaun_context *ctx, const char *uri, kaun_error *err) {
  kaun__instance *inst;
  char *path;
  int rc = backend_for(ctx, uri, &inst, &path, err);
  if (rc) return rc;
  rc = name_uri(err, inst->plugin->ops.remove(inst->backend, path, err), uri);
  free(path);
  kaun__instance_unref(inst);
  return rc;
}

/* A stacked backend lists what is inside another object: "tar://PREFIX::OUTER"
 * reaches its list as "PREFIX::OUTER", for it to open OUTER itself. */
static int list_stacked(kaun_context *ctx, const char *uri, kaun_list_fn fn, void *context,
                        kaun_error *err) {
  kaun_uri *u;
  int rc = kaun_uri_parse(uri, &u, err);
  if (rc) return rc;
  kaun_context *own = NULL;
  if (!ctx && !(rc = kaun_context_new(NULL, &own, err))) ctx = own;
  kaun__instance *inst = NULL;
  if (!rc) rc = get_instance(ctx, u->scheme, &inst, err);
  if (!rc && !(inst->plugin->ops.capabilities & KAUN_CAP_STACKED))
    rc = kaun__error_set(err, KAUN_EURI,
                         "'%s': the '%s' backend does not read through another object ('::')", uri,
                         inst->name);
  if (!rc)
    rc = name_uri(
        err, inst->plugin->ops.list(inst->backend, strstr(uri, "://") + 3, fn, context, err), uri);
  kaun__instance_unref(inst);
  kaun_context_free(own);
  kaun_uri_free(u);
  return rc;
}

int kaun_storage_list(kaun_context *ctx, const char *uri, kaun_list_fn fn, void *context,
                      kaun_error *err) {
  const char *sep = strstr(uri, "://");
  if (sep && kaun__uri_chain(sep + 3)) return list_stacked(ctx, uri, fn, context, err);
  kaun__instance *inst;
  char *path;
  int rc = backend_for(ctx, uri, &inst, &path, err);
  if (rc) return rc;
  rc = name_uri(err, inst->plugin->ops.list(inst->backend, path, fn, context, err), uri);
  free(path);
  kaun__instance_unref(inst);
  return rc;
}

int kaun_storage_read_all(kaun_context *ctx, const char *uri, size_t max, char **out,
                          size_t *out_len, kaun_error *err) {
  *out = NULL;
  kaun_object *o;
  int rc = kaun_object_open(ctx, uri, &o, err);
  if (rc) return rc;
  kaun_stat st = {.struct_size = sizeof st};
  char *buf = NULL;
  if (!(rc = kaun_object_stat(o, &st, err))) {
    if (st.size > max)
      rc = kaun__error_set(err, KAUN_EINVAL, "'%s' is %llu bytes, more than the %zu allowed", uri,
                           (unsigned long long)st.size, max);
    else if (!(buf = malloc((size_t)st.size + 1)))
      rc = kaun__error_nomem(err, "reading an object");
    else
      rc = kaun_object_read(o, 0, buf, (size_t)st.size, err);
  }
  kaun_object_close(o);
  if (rc) {
    free(buf);
    return rc;
  }
  buf[st.size] = '\0';
  *out = buf;
  *out_len = (size_t)st.size;
  return KAUN_OK;
}

/* ---- describing plugins ------------------------------------------------------------- */

static void describe_plugin(kaun__strbuf *sb, const kaun_context *ctx, const kaun__plugin *p) {
  static const struct {
    unsigned bit;
    const char *name;
  } caps[] = {{KAUN_CAP_MAP, "map"},         {KAUN_CAP_LIST, "list"},
              {KAUN_CAP_PUT, "put"},         {KAUN_CAP_REMOVE, "remove"},
              {KAUN_CAP_STACKED, "stacked"}, {KAUN_CAP_FETCH, "fetch"}};
  kaun__strbuf_printf(sb, "%s\t%s\tABI %u.%u\tread", p->ops.name,
                      p->ops.version ? p->ops.version : "?", p->ops.abi_major, p->ops.abi_minor);
  for (size_t i = 0; i < sizeof caps / sizeof *caps; i++)
    if (p->ops.capabilities & caps[i].bit) kaun__strbuf_printf(sb, ",%s", caps[i].name);
  kaun__strbuf_puts(sb, "\tschemes: ");
  bool any = false;
  if (strcmp(p->ops.name, "file") == 0) {
    kaun__strbuf_puts(sb, "file (and plain paths)");
    any = true;
  }
  for (size_t i = 0; i < ctx->cfg.nbackends; i++)
    if (ctx->plugins[i] == p) {
      kaun__strbuf_printf(sb, "%s%s", any ? ", " : "", ctx->cfg.backends[i].name);
      any = true;
    }
  if (!any) kaun__strbuf_printf(sb, "%s (default instance)", p->ops.name);
  kaun__strbuf_printf(sb, "\t%s\n", p->path);
}

static int cmp_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

#include <dirent.h>

int kaun_plugins_describe(kaun_context *ctx, char **out, kaun_error *err) {
  *out = NULL;
  kaun__strbuf sb = {0};
  kaun__plugin *file;
  kaun__plugin_by_name("file", NULL, 0, &file, NULL);
  kaun__strbuf_puts(&sb, "plugin path:\n");
  for (size_t i = 0; i < ctx->ndirs; i++)
    kaun__strbuf_printf(&sb, "  %s\t(%s)\n", ctx->dirs[i], ctx->dir_origins[i]);
  kaun__strbuf_puts(&sb, "plugins:\n  ");
  describe_plugin(&sb, ctx, file);
  for (size_t i = 0; i < ctx->ndirs; i++) {
    DIR *d = opendir(ctx->dirs[i]);
    if (!d) continue;
    char **names = NULL;
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
      size_t len = strlen(e->d_name);
      if (len < 4 || strcmp(e->d_name + len - 3, ".so") != 0) continue;
      char **grown = realloc(names, (n + 1) * sizeof *names);
      if (!grown) break;
      names = grown;
      if ((names[n] = strdup(e->d_name))) n++;
    }
    closedir(d);
    qsort(names, n, sizeof *names, cmp_names);
    for (size_t k = 0; k < n; k++) {
      char path[4200];
      snprintf(path, sizeof path, "%s/%s", ctx->dirs[i], names[k]);
      kaun__plugin *p;
      kaun_error e2 = KAUN_ERROR_INIT;
      if (kaun__plugin_by_path(path, &p, &e2) == KAUN_OK) {
        kaun__strbuf_puts(&sb, "  ");
        describe_plugin(&sb, ctx, p);
        kaun__plugin_unref(p);
      } else {
        kaun__strbuf_printf(&sb, "  BROKEN\t%s\t%s\n", path, e2.message);
      }
      free(names[k]);
    }
    free(names);
  }
  if (sb.failed) {
    kaun__strbuf_free(&sb);
    return kaun__error_nomem(err, "describing plugins");
  }
  *out = sb.data;
  return KAUN_OK;
}
