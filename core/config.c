/* The config file: JSON with plugin_dirs, cache_dir, backends, mirrors.
 * Every error names the file, the key path and the line. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <string.h>
#include <unistd.h>

#include "json.h"
#include "storage_internal.h"

#define MAX_CONFIG_BYTES (4u << 20)

void kaun__config_free(kaun__config *c) {
  for (size_t i = 0; i < c->ndirs; i++) free(c->plugin_dirs[i]);
  free(c->plugin_dirs);
  free(c->dir_lines);
  for (size_t i = 0; i < c->nbackends; i++) {
    kaun__backend_conf *b = &c->backends[i];
    for (size_t k = 0; k < b->count; k++) {
      free(b->settings[k].key);
      free(b->settings[k].value);
    }
    free(b->settings);
    free(b->name);
    free(b->plugin);
  }
  free(c->backends);
  for (size_t i = 0; i < c->nmirrors; i++) {
    for (size_t k = 0; k < c->mirrors[i].count; k++) free(c->mirrors[i].targets[k]);
    free(c->mirrors[i].targets);
    free(c->mirrors[i].prefix);
  }
  free(c->mirrors);
  free(c->cache_dir);
  free(c->path);
  memset(c, 0, sizeof *c);
}

static int type_error(kaun_error *err, const char *path, const kaun__json *v, const char *key,
                      const char *want) {
  return kaun__error_set(err, KAUN_ECONFIG, "%s: line %u: %s must be %s, not %s", path, v->line,
                         key, want, kaun__json_type_name(v->type));
}

static bool valid_scheme(const char *s) {
  if (!(*s >= 'a' && *s <= 'z')) return false;
  for (; *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '+' || *s == '-' ||
          *s == '.' || *s == '_'))
      return false;
  return true;
}

static int read_string_list(const char *path, const kaun__json *v, const char *key, char ***out,
                            unsigned **lines, size_t *count, kaun_error *err) {
  if (v->type != KAUN__JSON_ARRAY) return type_error(err, path, v, key, "an array of strings");
  *out = calloc(v->count + 1, sizeof **out);
  if (lines) *lines = calloc(v->count + 1, sizeof **lines);
  if (!*out || (lines && !*lines)) return kaun__error_nomem(err, "reading the config");
  size_t i = 0;
  for (const kaun__json *x = v->child; x; x = x->next, i++) {
    if (x->type != KAUN__JSON_STRING || !x->text_len)
      return kaun__error_set(err, KAUN_ECONFIG, "%s: line %u: %s[%zu] must be a non-empty string",
                             path, x->line, key, i);
    if (!((*out)[i] = strdup(x->text))) return kaun__error_nomem(err, "reading the config");
    if (lines) (*lines)[i] = x->line;
    (*count)++;
  }
  return KAUN_OK;
}

/* Config keys and values are C strings for everything that reads them: a
 * NUL inside one ("backends\u0000", "root\u0000") would make two keys
 * read as one.  Refused, wherever it is (nesting is bounded by the reader). */
static int refuse_nul(const char *path, const kaun__json *v, kaun_error *err) {
  if (v->key && strlen(v->key) != v->key_len)
    return kaun__error_set(err, KAUN_ECONFIG, "%s: line %u: a key contains a NUL byte (\\u0000)",
                           path, v->line);
  if (v->type == KAUN__JSON_STRING && strlen(v->text) != v->text_len)
    return kaun__error_set(err, KAUN_ECONFIG,
                           "%s: line %u: a string value contains a NUL byte (\\u0000)", path,
                           v->line);
  for (const kaun__json *c = v->child; c; c = c->next) {
    int rc = refuse_nul(path, c, err);
    if (rc) return rc;
  }
  return KAUN_OK;
}

static int read_backend(const char *path, const kaun__json *m, kaun__backend_conf *b,
                        kaun_error *err) {
  b->line = m->line;
  if (!(b->name = strdup(m->key))) return kaun__error_nomem(err, "reading the config");
  if (!valid_scheme(m->key))
    return kaun__error_set(err, KAUN_ECONFIG,
                           "%s: line %u: backends.%s: a backend's name is its URI scheme: "
                           "lowercase letters, digits, '+', '-', '.', '_', starting with a letter",
                           path, m->line, m->key);
  char key[512];
  snprintf(key, sizeof key, "backends.%s", m->key);
  if (m->type != KAUN__JSON_OBJECT) return type_error(err, path, m, key, "an object");
  b->settings = calloc(m->count + 1, sizeof *b->settings);
  if (!b->settings) return kaun__error_nomem(err, "reading the config");
  for (const kaun__json *o = m->child; o; o = o->next) {
    snprintf(key, sizeof key, "backends.%s.%s", m->key, o->key);
    if (strcmp(o->key, "plugin") == 0) {
      if (o->type != KAUN__JSON_STRING || !o->text_len)
        return type_error(err, path, o, key, "a plugin name or a path to a .so");
      if (!(b->plugin = strdup(o->text))) return kaun__error_nomem(err, "reading the config");
      continue;
    }
    if (strcmp(o->key, "index_shard_uris") == 0) { /* the core's, whatever the plugin */
      if (o->type != KAUN__JSON_TRUE && o->type != KAUN__JSON_FALSE)
        return type_error(err, path, o, key, "true or false");
      b->index_shard_uris = o->type == KAUN__JSON_TRUE;
      b->index_shard_uris_line = o->line;
      continue;
    }
    kaun__setting *s = &b->settings[b->count];
    s->line = o->line;
    switch (o->type) {
      case KAUN__JSON_STRING: s->type = KAUN_OPTION_STRING; break;
      case KAUN__JSON_NUMBER: s->type = KAUN_OPTION_INT; break;
      case KAUN__JSON_TRUE:
      case KAUN__JSON_FALSE: s->type = KAUN_OPTION_BOOL; break;
      default: return type_error(err, path, o, key, "a string, a number or a boolean");
    }
    const char *text = o->type == KAUN__JSON_TRUE    ? "true"
                       : o->type == KAUN__JSON_FALSE ? "false"
                                                     : o->text;
    size_t len =
        o->type == KAUN__JSON_STRING || o->type == KAUN__JSON_NUMBER ? o->text_len : strlen(text);
    s->key = strdup(o->key);
    s->value = strndup(text, len);
    if (!s->key || !s->value) return kaun__error_nomem(err, "reading the config");
    b->count++;
  }
  if (!b->plugin && !(b->plugin = strdup(m->key)))
    return kaun__error_nomem(err, "reading the config");
  return KAUN_OK;
}

static int read_mirror(const char *path, const kaun__json *m, kaun__mirror *mi, kaun_error *err) {
  char key[512];
  snprintf(key, sizeof key, "mirrors.%s", m->key);
  mi->line = m->line;
  if (!(mi->prefix = strdup(m->key))) return kaun__error_nomem(err, "reading the config");
  if (!*m->key)
    return kaun__error_set(err, KAUN_ECONFIG, "%s: line %u: a mirror's prefix cannot be empty",
                           path, m->line);
  int rc = read_string_list(path, m, key, &mi->targets, NULL, &mi->count, err);
  if (!rc && mi->count == 0)
    rc = kaun__error_set(err, KAUN_ECONFIG, "%s: line %u: %s lists no prefix to try", path, m->line,
                         key);
  return rc;
}

/* `*p` made absolute against the config file's folder when it is relative
 * (plugins are code: never found relative to the working directory).  The
 * folder is computed on first need into `*base`. */
static int beside_config(const char *path, char **base, char **p, kaun_error *err) {
  const char *rel = *p;
  if (rel[0] == '/') return KAUN_OK;
  if (!*base) {
    char cwd[PATH_MAX];
    if (path[0] != '/' && !getcwd(cwd, sizeof cwd))
      return kaun__error_sys(err, KAUN_ECONFIG, errno,
                             "%s: cannot resolve the relative plugin path '%s': no working "
                             "directory",
                             path, rel);
    if (asprintf(base, "%s%s%s", path[0] == '/' ? "" : cwd, path[0] == '/' ? "" : "/", path) < 0) {
      *base = NULL;
      return kaun__error_nomem(err, "reading the config");
    }
    char *slash = strrchr(*base, '/');  /* there is one: the path is absolute */
    slash[slash == *base] = '\0';       /* "/c.json" -> "/", "/a/c.json" -> "/a" */
    char *real = realpath(*base, NULL); /* "/a/b/../c.json": "/a", not "/a/b/.." */
    if (real) {
      free(*base);
      *base = real;
    }
  }
  while (rel[0] == '.' && rel[1] == '/') rel += 2;
  char *abs;
  if (asprintf(&abs, "%s%s%s", *base, strcmp(*base, "/") ? "/" : "", rel) < 0)
    return kaun__error_nomem(err, "reading the config");
  free(*p);
  *p = abs;
  return KAUN_OK;
}

/* Relative plugin_dirs entries and backends' plugin paths, against the
 * config file's folder. */
static int resolve_plugin_paths(const char *path, kaun__config *c, kaun_error *err) {
  char *base = NULL;
  int rc = KAUN_OK;
  for (size_t i = 0; i < c->ndirs && !rc; i++) {
    rc = beside_config(path, &base, &c->plugin_dirs[i], err);
    struct stat sb; /* a common slip: the plugin file itself */
    if (!rc && stat(c->plugin_dirs[i], &sb) == 0 && !S_ISDIR(sb.st_mode))
      rc = kaun__error_set(err, KAUN_ECONFIG,
                           "%s: line %u: plugin_dirs[%zu] '%s' is not a folder (give the folder "
                           "that holds the plugin's .so file)",
                           path, c->dir_lines[i], i, c->plugin_dirs[i]);
  }
  for (size_t i = 0; i < c->nbackends && !rc; i++)
    if (c->backends[i].plugin && strchr(c->backends[i].plugin, '/'))
      rc = beside_config(path, &base, &c->backends[i].plugin, err);
  free(base);
  return rc;
}

int kaun__config_read(const char *path, const char *origin, kaun__config *c, kaun_error *err) {
  memset(c, 0, sizeof *c);
  char *text = NULL;
  size_t len;
  kaun__json_doc *doc = NULL;
  int rc = kaun__read_small_file(path, MAX_CONFIG_BYTES, &text, &len, err);
  if (rc) {
    if (rc != KAUN_ENOENT) rc = KAUN_ECONFIG;
    if (err) err->code = rc;
    kaun__error_prefix(err, "config file: ");
    return rc;
  }
  c->origin = origin;
  if (!(c->path = strdup(path))) {
    rc = kaun__error_nomem(err, "reading the config");
    goto done;
  }
  rc = kaun__json_parse(text, len, path, KAUN_ECONFIG, &doc, err);
  if (rc) {
    rc = KAUN_ECONFIG; /* bad UTF-8 or a duplicate key is a config error too */
    if (err) err->code = rc;
    goto done;
  }
  const kaun__json *root = kaun__json_root(doc);
  if ((rc = refuse_nul(path, root, err))) goto done;
  if (root->type != KAUN__JSON_OBJECT) {
    rc = kaun__error_set(err, KAUN_ECONFIG, "%s: the config must be a JSON object, not %s", path,
                         kaun__json_type_name(root->type));
    goto done;
  }
  for (const kaun__json *m = root->child; m && !rc; m = m->next) {
    if (strcmp(m->key, "plugin_dirs") == 0) {
      rc = read_string_list(path, m, "plugin_dirs", &c->plugin_dirs, &c->dir_lines, &c->ndirs, err);
    } else if (strcmp(m->key, "cache_dir") == 0) {
      if (m->type != KAUN__JSON_STRING || !m->text_len) {
        rc = type_error(err, path, m, "cache_dir", "a non-empty string");
      } else if (!(c->cache_dir = strdup(m->text))) {
        rc = kaun__error_nomem(err, "reading the config");
      }
      c->cache_line = m->line;
    } else if (strcmp(m->key, "backends") == 0) {
      if (m->type != KAUN__JSON_OBJECT) {
        rc = type_error(err, path, m, "backends", "an object");
        break;
      }
      c->backends = calloc(m->count + 1, sizeof *c->backends);
      if (!c->backends) rc = kaun__error_nomem(err, "reading the config");
      for (const kaun__json *b = m->child; b && !rc; b = b->next)
        rc = read_backend(path, b, &c->backends[c->nbackends++], err);
    } else if (strcmp(m->key, "mirrors") == 0) {
      if (m->type != KAUN__JSON_OBJECT) {
        rc = type_error(err, path, m, "mirrors", "an object");
        break;
      }
      c->mirrors = calloc(m->count + 1, sizeof *c->mirrors);
      if (!c->mirrors) rc = kaun__error_nomem(err, "reading the config");
      for (const kaun__json *b = m->child; b && !rc; b = b->next)
        rc = read_mirror(path, b, &c->mirrors[c->nmirrors++], err);
    } else {
      rc = kaun__error_set(err, KAUN_ECONFIG,
                           "%s: line %u: unknown key '%s' (known: plugin_dirs, cache_dir, "
                           "backends, mirrors)",
                           path, m->line, m->key);
    }
  }
  if (!rc) rc = resolve_plugin_paths(path, c, err);
done:
  kaun__json_free(doc);
  free(text);
  if (rc) kaun__config_free(c);
  return rc;
}
