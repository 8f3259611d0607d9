/* The plugin registry: loads plugins with dlopen, checks their ABI, and
 * keeps them loaded while any instance of theirs lives.  This is kaun's
 * only process-wide mutable state; a mutex guards it. */
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <grp.h>
#include <limits.h>
#include <pthread.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "storage_internal.h"

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static kaun__plugin *loaded; /* dlopen'd plugins */
static kaun__plugin builtin_file;
static bool builtin_ready;

/* Defaults for absent optional operations: "not supported", named. */
static int no_map(void *o, const void **d, size_t *s, void **c, kaun_error *err) {
  (void)o, (void)d, (void)s, (void)c;
  return kaun__error_set(err, KAUN_ENOTSUP, "this backend cannot map objects");
}
static void no_unmap(void *b, void *c) { (void)b, (void)c; }
static int no_list(void *b, const char *p, kaun_list_fn fn, void *ctx, kaun_error *err) {
  (void)b, (void)fn, (void)ctx;
  return kaun__error_set(err, KAUN_ENOTSUP, "this backend cannot list '%s'", p);
}
static int no_put(void *b, const char *p, const kaun_put_source *s, kaun_error *err) {
  (void)b, (void)s;
  return kaun__error_set(err, KAUN_ENOTSUP, "this backend cannot store objects ('%s')", p);
}
static int no_remove(void *b, const char *p, kaun_error *err) {
  (void)b;
  return kaun__error_set(err, KAUN_ENOTSUP, "this backend cannot remove objects ('%s')", p);
}
static int no_fetch(void *o, char *p, size_t n, kaun_error *err) {
  (void)o, (void)p, (void)n;
  return kaun__error_set(err, KAUN_ENOTSUP, "this backend has no local cache");
}

static bool valid_plugin_name(const char *s) {
  if (!s || !(*s >= 'a' && *s <= 'z')) return false;
  for (; *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_' || *s == '-'))
      return false;
  return true;
}

int kaun__plugin_check(const kaun_plugin *d, size_t reported_size, const char *path,
                       kaun_plugin *out, kaun_error *err) {
  (void)reported_size;
  if (d->abi_major != KAUN_PLUGIN_ABI_MAJOR)
    return kaun__error_set(err, KAUN_EABI,
                           "plugin '%s' was built for ABI %u, this kaun speaks ABI %u; rebuild "
                           "it against this kaun's <kaun/plugin.h>",
                           path, d->abi_major, KAUN_PLUGIN_ABI_MAJOR);
  if (d->abi_minor > KAUN_PLUGIN_ABI_MINOR)
    return kaun__error_set(err, KAUN_EABI,
                           "plugin '%s' needs ABI %u.%u, newer than this kaun's %u.%u; upgrade "
                           "kaun or use an older build of the plugin",
                           path, d->abi_major, d->abi_minor, KAUN_PLUGIN_ABI_MAJOR,
                           KAUN_PLUGIN_ABI_MINOR);
  if (d->struct_size < KAUN_PLUGIN_SIZE_1_0)
    return kaun__error_set(err, KAUN_EABI,
                           "plugin '%s' has a descriptor of %zu bytes, smaller than ABI 1.0's "
                           "%zu: it is corrupt or not a kaun plugin",
                           path, d->struct_size, (size_t)KAUN_PLUGIN_SIZE_1_0);
  if (!valid_plugin_name(d->name))
    return kaun__error_set(err, KAUN_EPLUGIN,
                           "plugin '%s' has an invalid name (lowercase letters, digits, '-' "
                           "and '_', starting with a letter)",
                           path);
  /* a 1.1 plugin may give read_io alone: the core only calls read when
   * there is no read_io */
  bool has_read_io = d->abi_minor >= 1 && d->struct_size >= KAUN_PLUGIN_SIZE_1_1 && d->read_io;
  /* and a 1.2 plugin open_io alone */
  bool has_open_io = d->abi_minor >= 2 && d->struct_size >= KAUN_PLUGIN_SIZE_1_2 && d->open_io;
  const char *missing = !d->create                 ? "create"
                        : !d->destroy              ? "destroy"
                        : !d->open && !has_open_io ? "open (or, from ABI 1.2, open_io)"
                        : !d->close                ? "close"
                        : !d->stat                 ? "stat"
                        : !d->read && !has_read_io ? "read (or, from ABI 1.1, read_io)"
                                                   : NULL;
  if (missing)
    return kaun__error_set(err, KAUN_EPLUGIN, "plugin '%s' (%s) lacks the mandatory operation '%s'",
                           path, d->name, missing);
  /* the fields of the minor it claims, at least */
  size_t need = d->abi_minor >= 2   ? KAUN_PLUGIN_SIZE_1_2
                : d->abi_minor == 1 ? KAUN_PLUGIN_SIZE_1_1
                                    : KAUN_PLUGIN_SIZE_1_0;
  if (d->struct_size < need)
    return kaun__error_set(err, KAUN_EABI,
                           "plugin '%s' says ABI %u.%u but has a descriptor of %zu bytes, smaller "
                           "than that version's %zu: rebuild it against this kaun's "
                           "<kaun/plugin.h>",
                           path, d->abi_major, d->abi_minor, d->struct_size, need);
  /* copy what this version of the struct has; newer fields we do not know,
   * and each version's fields only from a plugin that says it has them */
  size_t have = d->abi_minor >= 2   ? d->struct_size
                : d->abi_minor == 1 ? KAUN_PLUGIN_SIZE_1_1
                                    : KAUN_PLUGIN_SIZE_1_0;
  memset(out, 0, sizeof *out);
  memcpy(out, d, have < sizeof *out ? have : sizeof *out);
  out->struct_size = sizeof *out;
  if (!out->map || !(out->capabilities & KAUN_CAP_MAP)) out->map = no_map;
  if (!out->unmap) out->unmap = no_unmap;
  if (!out->list || !(out->capabilities & KAUN_CAP_LIST)) out->list = no_list;
  if (!out->put || !(out->capabilities & KAUN_CAP_PUT)) out->put = no_put;
  if (!out->remove || !(out->capabilities & KAUN_CAP_REMOVE)) out->remove = no_remove;
  if (!out->fetch || !(out->capabilities & KAUN_CAP_FETCH)) out->fetch = no_fetch;
  out->capabilities |= KAUN_CAP_READ;
  return KAUN_OK;
}

static kaun__plugin *builtin(void) {
  /* called with the lock held */
  if (!builtin_ready) {
    if (kaun__plugin_check(&kaun__file_plugin, sizeof kaun__file_plugin, "(built-in)",
                           &builtin_file.ops, NULL) != KAUN_OK)
      abort(); /* a bug in kaun itself */
    builtin_file.path = "(built-in)";
    builtin_ready = true;
  }
  return &builtin_file;
}

static kaun__plugin *find_loaded(const char *name) {
  if (strcmp(name, "file") == 0) return builtin();
  for (kaun__plugin *p = loaded; p; p = p->next)
    if (strcmp(p->ops.name, name) == 0) return p;
  return NULL;
}

/* ---- trust: plugins are code ----------------------------------------------------------
 * dlopen runs a file's constructors before kaun can look at it, so a file
 * is loaded only when nobody but root and the current user can have
 * changed it: the file and every folder above it (of its real path, from
 * / down) must be owned by root or the effective user and must not be
 * writable by others, nor by a group other than root's or the user's own
 * private group.  A folder with the sticky bit (as /tmp) may be writable
 * by anyone: others can add entries to it but cannot rename or remove
 * yours or root's, and the entry below it is checked in turn. */

/* Whether `gid` is the effective user's private group: the user's primary
 * group, named as the user, listing no other member (the user-private-
 * group scheme of Debian, Ubuntu and Fedora, where umask 002 makes a
 * user's files group-writable without giving anyone else access). */
static bool own_private_group(gid_t gid) {
  for (size_t size = 16384; size <= ((size_t)1 << 24); size *= 4) {
    char *buf = malloc(2 * size);
    if (!buf) return false;
    struct passwd pw, *pwp = NULL;
    struct group gr, *grp = NULL;
    int e = getpwuid_r(geteuid(), &pw, buf, size, &pwp);
    if (!e) e = getgrgid_r(gid, &gr, buf + size, size, &grp);
    if (e == ERANGE) {
      free(buf);
      continue;
    }
    bool own = !e && pwp && grp && pw.pw_gid == gid && strcmp(gr.gr_name, pw.pw_name) == 0;
    for (char **m = own ? gr.gr_mem : NULL; m && *m; m++)
      if (strcmp(*m, pw.pw_name) != 0) own = false;
    free(buf);
    return own;
  }
  return false;
}

/* Checks one component of a plugin's real path (`last`: the file). */
static int check_component(const char *plugin, const char *comp, bool last, kaun_error *err) {
  char whose[PATH_MAX + 32] = "";
  if (strcmp(plugin, comp) != 0) snprintf(whose, sizeof whose, " (plugin '%s')", plugin);
  struct stat st;
  if (lstat(comp, &st) != 0)
    return kaun__error_sys(err, KAUN_EPLUGIN, errno, "cannot check plugin '%s': %s", plugin, comp);
  if (S_ISLNK(st.st_mode))
    return kaun__error_set(err, KAUN_EPLUGIN,
                           "%s became a symbolic link while kaun checked it%s: not loaded", comp,
                           whose);
  if (last ? !S_ISREG(st.st_mode) : !S_ISDIR(st.st_mode))
    return kaun__error_set(err, KAUN_EPLUGIN, "%s is not a %s%s: not loaded", comp,
                           last ? "regular file" : "folder", whose);
  const char *why = "only root or you can change";
  uid_t me = geteuid();
  if (st.st_uid != 0 && st.st_uid != me)
    return kaun__error_set(err, KAUN_EPLUGIN,
                           "%s is owned by uid %lu, not by you (uid %lu) or root: kaun only loads "
                           "plugins that %s%s",
                           comp, (unsigned long)st.st_uid, (unsigned long)me, why, whose);
  if (S_ISDIR(st.st_mode) && (st.st_mode & S_ISVTX)) return KAUN_OK; /* as /tmp */
  if (st.st_mode & S_IWOTH)
    return kaun__error_set(err, KAUN_EPLUGIN,
                           "%s is writable by others: kaun only loads plugins that %s%s", comp, why,
                           whose);
  if ((st.st_mode & S_IWGRP) && st.st_gid != 0 && !own_private_group(st.st_gid))
    return kaun__error_set(err, KAUN_EPLUGIN,
                           "%s is writable by its group (gid %lu), which is neither root's nor "
                           "your own: kaun only loads plugins that %s%s",
                           comp, (unsigned long)st.st_gid, why, whose);
  return KAUN_OK;
}

/* Checks the file `real` (a real path: absolute, no symbolic link) and
 * every folder above it, from / down. */
static int check_trusted(const char *plugin, const char *real, kaun_error *err) {
  char comp[PATH_MAX];
  size_t n = strlen(real);
  if (real[0] != '/' || n >= sizeof comp)
    return kaun__error_set(err, KAUN_EPLUGIN, "cannot check plugin '%s': bad path '%s'", plugin,
                           real);
  memcpy(comp, real, n + 1);
  int rc = check_component(plugin, "/", n == 1, err);
  for (size_t k = 1; k <= n && !rc; k++) {
    if (k < n && comp[k] != '/') continue;
    comp[k] = '\0';
    rc = check_component(plugin, comp, k == n, err);
    comp[k] = real[k];
  }
  return rc;
}

/* Loads `path` with the lock held. */
static int load_locked(const char *path, kaun__plugin **out, kaun_error *err) {
  /* never relative to the working directory (the context makes every
   * configured path absolute and refuses relative KAUN_PLUGIN_PATH entries) */
  if (path[0] != '/')
    return kaun__error_set(err, KAUN_EPLUGIN,
                           "cannot load plugin '%s': a relative path; kaun loads plugins by "
                           "absolute path only",
                           path);
  char real[PATH_MAX];
  if (!realpath(path, real))
    return kaun__error_sys(err, KAUN_EPLUGIN, errno, "cannot load plugin '%s'", path);
  for (kaun__plugin *p = loaded; p; p = p->next)
    if (strcmp(p->path, real) == 0) {
      atomic_fetch_add(&p->refs, 1);
      *out = p;
      return KAUN_OK;
    }
  /* before dlopen, which runs the file's constructors */
  int trc = check_trusted(path, real, err);
  if (trc) return trc;
  dlerror();
  void *dl = dlopen(real, RTLD_NOW | RTLD_LOCAL);
  if (!dl) {
    const char *why = dlerror(); /* copied at once, before anything else runs */
    return kaun__error_set(err, KAUN_EPLUGIN, "cannot load plugin '%s': %s", path,
                           why ? why : "unknown dlopen error");
  }
  dlerror();
  void *sym = dlsym(dl, KAUN_PLUGIN_ENTRY);
  const char *why = dlerror();
  if (!sym || why) {
    dlclose(dl);
    return kaun__error_set(err, KAUN_EPLUGIN,
                           "'%s' is not a kaun plugin: no entry symbol " KAUN_PLUGIN_ENTRY, path);
  }
  kaun_plugin_entry_fn entry;
  memcpy(&entry, &sym, sizeof entry);
  const kaun_plugin *desc = entry();
  kaun__plugin *p = calloc(1, sizeof *p);
  int rc = KAUN_OK;
  if (!desc) {
    rc = kaun__error_set(err, KAUN_EPLUGIN, "plugin '%s' returned no descriptor", path);
  } else if (!p || !(p->path = strdup(real))) {
    rc = kaun__error_nomem(err, "loading a plugin");
  } else if ((rc = kaun__plugin_check(desc, desc->struct_size, path, &p->ops, err)) == KAUN_OK) {
    kaun__plugin *other = find_loaded(p->ops.name);
    if (other)
      rc = kaun__error_set(err, KAUN_EPLUGIN,
                           "plugin '%s' is named '%s', a name already taken by '%s'", path,
                           p->ops.name, other->path);
  }
  if (!rc && p->ops.load && (rc = p->ops.load(err)) != KAUN_OK)
    kaun__error_prefix(err, "plugin '%s' failed to initialise: ", path);
  if (rc) {
    if (p) free(p->path);
    free(p);
    dlclose(dl);
    return rc;
  }
  p->dl = dl;
  atomic_init(&p->refs, 1);
  p->next = loaded;
  loaded = p;
  *out = p;
  return KAUN_OK;
}

int kaun__plugin_by_path(const char *path, kaun__plugin **out, kaun_error *err) {
  pthread_mutex_lock(&registry_lock);
  int rc = load_locked(path, out, err);
  pthread_mutex_unlock(&registry_lock);
  return rc;
}

int kaun__plugin_by_name(const char *name, char *const *dirs, size_t ndirs, kaun__plugin **out,
                         kaun_error *err) {
  *out = NULL;
  pthread_mutex_lock(&registry_lock);
  kaun__plugin *p = find_loaded(name);
  if (p) {
    atomic_fetch_add(&p->refs, 1);
    pthread_mutex_unlock(&registry_lock);
    *out = p;
    return KAUN_OK;
  }
  if (!valid_plugin_name(name)) {
    /* no file is looked up for a name no plugin can have: a URI's scheme
     * (which may hold '+' and '.') selects only a plugin by its own name */
    pthread_mutex_unlock(&registry_lock);
    return kaun__error_set(err, KAUN_EPLUGIN,
                           "no plugin '%s': plugin names are lowercase letters, digits, '-' and "
                           "'_', starting with a letter; a path to a .so contains a '/'",
                           name);
  }
  kaun__strbuf looked = {0};
  int rc = KAUN_EPLUGIN;
  bool found = false;
  for (size_t i = 0; i < ndirs && !found; i++) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.so", dirs[i], name);
    kaun__strbuf_printf(&looked, "%s%s", looked.len ? ", " : "", dirs[i]);
    struct stat sb;
    if (stat(path, &sb) != 0) continue;
    found = true;
    rc = load_locked(path, out, err);
    if (rc == KAUN_OK && strcmp((*out)->ops.name, name) != 0) {
      rc = kaun__error_set(err, KAUN_EPLUGIN, "'%s' holds the plugin '%s', not '%s'", path,
                           (*out)->ops.name, name);
      p = *out;
      *out = NULL;
    }
  }
  pthread_mutex_unlock(&registry_lock);
  if (p) kaun__plugin_unref(p);
  if (!found)
    kaun__error_set(err, KAUN_EPLUGIN,
                    "no plugin '%s' (%s.so) in the plugin path: %s ($KAUN_PLUGIN_PATH or the "
                    "config's plugin_dirs add folders)",
                    name, name, looked.len ? looked.data : "(empty)");
  kaun__strbuf_free(&looked);
  return rc;
}

void kaun__plugin_unref(kaun__plugin *p) {
  if (!p || !p->dl) return; /* built-ins stay */
  pthread_mutex_lock(&registry_lock);
  if (atomic_fetch_sub(&p->refs, 1) == 1) {
    for (kaun__plugin **pp = &loaded; *pp; pp = &(*pp)->next)
      if (*pp == p) {
        *pp = p->next;
        break;
      }
    if (p->ops.unload) p->ops.unload();
    dlclose(p->dl);
    free(p->path);
    free(p);
  }
  pthread_mutex_unlock(&registry_lock);
}
