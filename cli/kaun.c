/* kaun — the command-line tool.
 *
 * Exit status: 0 success, 1 bad input (malformed file, missing key, bad
 * value), 2 usage error, 3 storage or network failure.  Errors go to
 * stderr as one sentence naming the file; data goes to stdout. */
#include <kaun.h>

#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <ftw.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { EXIT_OKAY = 0, EXIT_INPUT = 1, EXIT_USAGE = 2, EXIT_STORAGE = 3 };

/* The config file given with --config (NULL: the default search). */
static const char *config_file;
/* -q: no progress bar. */
static bool quiet;

/* ---- the progress bar (stderr, when it is a terminal) ---------------------------- */

typedef struct progress_bar {
  double start, last;
  bool drawn;
} progress_bar;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void human_bytes(double b, char *out, size_t size) {
  static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    u++;
  }
  snprintf(out, size, u ? "%.1f %s" : "%.0f %s", b, units[u]);
}

static int draw_progress(const kaun_progress *p, void *user) {
  progress_bar *bar = user;
  double t = now_s();
  if (bar->start == 0) bar->start = t;
  bool done = p->total && p->done >= p->total;
  if (!done && t - bar->last < 0.1) return 0;
  if (!done && !bar->drawn && t - bar->start < 0.5) return 0; /* quick ones stay quiet */
  bar->last = t;
  bar->drawn = true;
  char d[32], tot[32], rate[32];
  human_bytes((double)p->done, d, sizeof d);
  human_bytes((double)p->total, tot, sizeof tot);
  double secs = t - bar->start > 1e-3 ? t - bar->start : 1e-3;
  human_bytes((double)p->done / secs, rate, sizeof rate);
  fprintf(stderr, "\r\033[K%s / %s  %s/s", d, p->total ? tot : "?", rate);
  if (p->total && p->done && !done) {
    double eta = secs * (double)(p->total - p->done) / (double)p->done;
    fprintf(stderr, "  ETA %d:%02d", (int)eta / 60, (int)eta % 60);
  }
  if (p->total) fprintf(stderr, "  %3.0f%%", 100.0 * (double)p->done / (double)p->total);
  fflush(stderr);
  return 0;
}

static progress_bar the_bar;

static void end_progress(void) {
  if (the_bar.drawn) fputs("\r\033[K", stderr);
  the_bar.drawn = false;
}

/* Makes the context every command works through; prints why it cannot. */
static kaun_context *open_context(int *status) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx;
  if (kaun_context_new(config_file, &ctx, &err) != KAUN_OK) {
    fprintf(stderr, "kaun: %s\n", err.message);
    *status = EXIT_INPUT;
    return NULL;
  }
  if (!quiet && isatty(STDERR_FILENO)) {
    the_bar.start = now_s(); /* rates and ETAs count from the command's start */
    kaun_context_set_progress(ctx, draw_progress, &the_bar);
    atexit(end_progress);
  }
  return ctx;
}

typedef struct command {
  const char *name;
  const char *summary;
  const char *usage; /* full --help text */
  int (*run)(int argc, char **argv);
} command;

/* ---- strings from files, shown safely ------------------------------------------ */

/* The length of the valid UTF-8 sequence at s (at most `avail` bytes), or 0
 * when it is not one; C1 controls (U+0080..U+009F) count as not one. */
static size_t utf8_len(const unsigned char *s, size_t avail) {
  unsigned char c = s[0];
  size_t n = c < 0x80                 ? 1
             : c >= 0xC2 && c <= 0xDF ? 2
             : c >= 0xE0 && c <= 0xEF ? 3
             : c >= 0xF0 && c <= 0xF4 ? 4
                                      : 0;
  if (!n || n > avail) return 0;
  for (size_t k = 1; k < n; k++)
    if ((s[k] & 0xC0) != 0x80) return 0;
  if ((c == 0xE0 && s[1] < 0xA0) || (c == 0xED && s[1] >= 0xA0) || /* overlong, surrogate */
      (c == 0xF0 && s[1] < 0x90) || (c == 0xF4 && s[1] >= 0x90) || /* overlong, > U+10FFFF */
      (c == 0xC2 && s[1] < 0xA0))                                  /* C1 control */
    return 0;
  return n;
}

/* Writes `n` bytes of `s` for a human reader, as `ls` and `git` quote
 * names: control characters become \n, \t, \r, \0 or \xHH, and so do DEL,
 * C1 controls and bytes that are not UTF-8, so that a name from a file can
 * neither forge output rows nor send escape sequences to a terminal.  With
 * `backslash` a backslash is doubled, so that the escapes read back
 * unambiguously (names in listings). */
static void put_escaped(FILE *out, const char *str, size_t n, bool backslash) {
  const unsigned char *s = (const unsigned char *)str;
  for (size_t i = 0; i < n;) {
    unsigned char c = s[i];
    size_t len = utf8_len(s + i, n - i);
    if (c == '\\' && backslash) {
      fputs("\\\\", out);
    } else if (c == '\n' || c == '\t' || c == '\r' || c == 0) {
      fprintf(out, "\\%c", c == '\n' ? 'n' : c == '\t' ? 't' : c == '\r' ? 'r' : '0');
    } else if (c < 0x20 || c == 0x7F || len == 0) {
      fprintf(out, "\\x%02x", c);
    } else {
      fwrite(s + i, 1, len, out);
      i += len;
      continue;
    }
    i++;
  }
}

/* A JSON string literal of the `n` bytes at `s` (UTF-8, NUL bytes
 * included): exact, and safe on a terminal (controls, DEL and C1 controls
 * as \u escapes, bytes that are not UTF-8 (never in a validated header)
 * as U+FFFD). */
static void print_json_string(FILE *out, const char *str, size_t n) {
  const unsigned char *s = (const unsigned char *)str;
  fputc('"', out);
  for (size_t i = 0; i < n;) {
    unsigned char c = s[i];
    size_t len = utf8_len(s + i, n - i);
    if (c == '"' || c == '\\') {
      fprintf(out, "\\%c", c);
    } else if (c == '\n') {
      fputs("\\n", out);
    } else if (c == '\t') {
      fputs("\\t", out);
    } else if (c < 0x20 || c == 0x7F) {
      fprintf(out, "\\u%04x", c);
    } else if (c == 0xC2 && n - i >= 2 && s[i + 1] >= 0x80 && s[i + 1] < 0xA0) {
      fprintf(out, "\\u%04x", s[i + 1]); /* a C1 control */
      i += 2;
      continue;
    } else if (len == 0) {
      fputs("\\ufffd", out);
    } else {
      fwrite(s + i, 1, len, out);
      i += len;
      continue;
    }
    i++;
  }
  fputc('"', out);
}

static int fail(const kaun_error *err) {
  end_progress();
  /* messages quote names and values from files: escaped, one line */
  fputs("kaun: ", stderr);
  put_escaped(stderr, err->message, strlen(err->message), false);
  fputc('\n', stderr);
  switch (err->code) {
    case KAUN_EIO:
    case KAUN_ENOMEM:
    case KAUN_ETRANSIENT:
    case KAUN_EAUTH:
    case KAUN_ECHANGED:
    case KAUN_ECANCELED: return EXIT_STORAGE;
    default: return EXIT_INPUT;
  }
}

static int usage_error(const char *cmd, const char *fmt, const char *arg) {
  char *shown = NULL;
  size_t size = 0;
  FILE *m = open_memstream(&shown, &size);
  if (m) {
    put_escaped(m, arg, strlen(arg), false);
    if (fclose(m) != 0) {
      free(shown);
      shown = NULL;
    }
  }
  fprintf(stderr, "kaun%s%s: ", cmd ? " " : "", cmd ? cmd : "");
  fprintf(stderr, fmt, shown ? shown : "?");
  fprintf(stderr, "\nTry 'kaun %s%s--help'.\n", cmd ? cmd : "", cmd ? " " : "");
  free(shown);
  return EXIT_USAGE;
}

static bool is_help(const char *a) { return strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0; }

/* Splits argv into options (handled by `opt`) and positional arguments.
 * Returns -1 when --help was asked for, -2 on a usage error, else the
 * number of positionals (moved to the front of argv). */
typedef int (*option_fn)(const char *opt, const char *value, void *ctx);

static int parse_args(const char *cmd, int argc, char **argv, const char *const *value_opts,
                      const char *const *flag_opts, option_fn opt, void *ctx) {
  int npos = 0;
  bool only_pos = false;
  for (int i = 1; i < argc; i++) {
    char *a = argv[i];
    if (!only_pos && strcmp(a, "--") == 0) {
      only_pos = true;
      continue;
    }
    if (!only_pos && a[0] == '-' && a[1] != '\0') {
      if (is_help(a)) return -1;
      char *eq = strchr(a, '=');
      size_t len = eq ? (size_t)(eq - a) : strlen(a);
      bool known = false;
      for (const char *const *v = value_opts; v && *v; v++) {
        if (strlen(*v) == len && strncmp(*v, a, len) == 0) {
          const char *value = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
          if (!value) {
            usage_error(cmd, "option '%s' needs a value", *v);
            return -2;
          }
          if (opt(*v, value, ctx) != 0) return -2;
          known = true;
        }
      }
      for (const char *const *f = flag_opts; !known && f && *f; f++) {
        if (strcmp(*f, a) == 0) {
          if (opt(*f, NULL, ctx) != 0) return -2;
          known = true;
        }
      }
      if (!known) {
        usage_error(cmd, "unknown option '%s'", a);
        return -2;
      }
      continue;
    }
    argv[npos++] = a;
  }
  return npos;
}

static void print_shape(FILE *out, size_t ndim, const uint64_t *shape, const char *sep) {
  fputc('[', out);
  for (size_t i = 0; i < ndim; i++)
    fprintf(out, "%s%llu", i ? sep : "", (unsigned long long)shape[i]);
  fputc(']', out);
}

/* ---- ls ------------------------------------------------------------------------ */

typedef struct ls_opts {
  bool json, members;
} ls_opts;

static int ls_option(const char *opt, const char *value, void *ctx) {
  (void)value;
  if (strcmp(opt, "--json") == 0) ((ls_opts *)ctx)->json = true;
  if (strcmp(opt, "--members") == 0) ((ls_opts *)ctx)->members = true;
  return 0;
}

static int print_member(const char *name, uint64_t size, void *ctx) {
  (void)ctx;
  put_escaped(stdout, name, strlen(name), true);
  printf("\t%llu\n", (unsigned long long)size);
  return 0;
}

/* kaun ls --members ARCHIVE-URI: the members of a tarball or zip anywhere */
static int ls_members(const char *archive) {
  kaun_error err = KAUN_ERROR_INIT;
  int status;
  kaun_context *ctx = open_context(&status);
  if (!ctx) return status;
  size_t n = strlen(archive) + sizeof "tar://::";
  char *uri = malloc(n);
  int rc = uri ? KAUN_OK : kaun_error_set(&err, KAUN_ENOMEM, "out of memory");
  if (uri) snprintf(uri, n, "tar://::%s", archive);
  if (!rc) rc = kaun_storage_list(ctx, uri, print_member, NULL, &err);
  free(uri);
  kaun_context_free(ctx);
  return rc ? fail(&err) : EXIT_OKAY;
}

static int cmd_ls(int argc, char **argv) {
  static const char *const flags[] = {"--json", "--members", NULL};
  ls_opts o = {false, false};
  int n = parse_args("ls", argc, argv, NULL, flags, ls_option, &o);
  if (n == -1) return -1;
  if (n < 0) return EXIT_USAGE;
  if (n != 1) return usage_error("ls", "expected one checkpoint%s", n ? ", got more" : "");
  if (o.members) return ls_members(argv[0]);
  kaun_error err = KAUN_ERROR_INIT;
  kaun_reader *r;
  int status;
  kaun_context *ctx = open_context(&status);
  if (!ctx) return status;
  /* headers only: listing a remote checkpoint reads a few KiB */
  int rc = kaun_reader_open(ctx, argv[0], &r, &err);
  if (rc) {
    kaun_context_free(ctx);
    return fail(&err);
  }
  size_t count = kaun_reader_count(r);
  if (o.json) printf("[");
  for (size_t i = 0; i < count; i++) {
    kaun_reader_tensor t;
    kaun_reader_info(r, i, &t);
    const char *dt = kaun_dtype_name(t.dtype);
    size_t name_len = kaun_reader_name_length(r, i);
    if (o.json) {
      printf("%s\n  {\"name\": ", i ? "," : "");
      print_json_string(stdout, t.name, name_len);
      printf(", \"dtype\": \"%s\", \"shape\": ", dt);
      print_shape(stdout, t.ndim, t.shape, ", ");
      printf(", \"bytes\": %llu}", (unsigned long long)t.nbytes);
    } else {
      /* one line per tensor, whatever its name holds */
      put_escaped(stdout, t.name, name_len, true);
      printf("\t%s\t", dt);
      print_shape(stdout, t.ndim, t.shape, ",");
      printf("\t%llu\n", (unsigned long long)t.nbytes);
    }
  }
  if (o.json) printf("%s]\n", count ? "\n" : "");
  kaun_reader_close(r);
  kaun_context_free(ctx);
  return EXIT_OKAY;
}

/* ---- inspect ------------------------------------------------------------------- */

static int no_option(const char *opt, const char *value, void *ctx) {
  (void)opt;
  (void)value;
  (void)ctx;
  return 0;
}

static int cmd_inspect(int argc, char **argv) {
  int n = parse_args("inspect", argc, argv, NULL, NULL, no_option, NULL);
  if (n == -1) return -1;
  if (n < 0) return EXIT_USAGE;
  if (n != 1)
    return usage_error("inspect", "expected one SafeTensors file%s", n ? ", got more" : "");
  kaun_error err = KAUN_ERROR_INIT;
  kaun_safetensors *st;
  int status;
  kaun_context *ctx = open_context(&status);
  if (!ctx) return status;
  int rc = kaun_safetensors_read(ctx, argv[0], &st, &err);
  kaun_context_free(ctx);
  if (rc == KAUN_EISDIR) {
    char was[KAUN_ERROR_MESSAGE_MAX];
    snprintf(was, sizeof was, "%s", err.message);
    kaun_error_set(&err, KAUN_EISDIR,
                   "%.900s (inspect reads one file: kaun ls lists a folder's model)", was);
  }
  if (rc) return fail(&err);
  printf("{\n  \"metadata\": ");
  long md = kaun_safetensors_metadata_count(st);
  if (md < 0) {
    printf("null");
  } else {
    printf("{");
    for (long i = 0; i < md; i++) {
      printf("%s", i ? ", " : "");
      print_json_string(stdout, kaun_safetensors_metadata_key(st, (size_t)i),
                        kaun_safetensors_metadata_key_length(st, (size_t)i));
      printf(": ");
      print_json_string(stdout, kaun_safetensors_metadata_value(st, (size_t)i),
                        kaun_safetensors_metadata_value_length(st, (size_t)i));
    }
    printf("}");
  }
  printf(",\n  \"tensors\": {");
  for (size_t i = 0; i < kaun_safetensors_count(st); i++) {
    kaun_safetensors_info in;
    kaun_safetensors_info_at(st, i, &in);
    printf("%s\n    ", i ? "," : "");
    print_json_string(stdout, in.name, kaun_safetensors_name_length(st, i));
    printf(": {\"dtype\": \"%s\", \"shape\": ", kaun_dtype_name(in.dtype));
    print_shape(stdout, in.ndim, in.shape, ", ");
    printf(", \"data_offsets\": [%llu, %llu]}", (unsigned long long)in.begin,
           (unsigned long long)in.end);
  }
  printf("%s}\n}\n", kaun_safetensors_count(st) ? "\n  " : "");
  kaun_safetensors_free(st);
  return EXIT_OKAY;
}

/* ---- cp ---------------------------------------------------------------------------- */

typedef struct cp_opts {
  bool cast;
  kaun_dtype dtype;
  uint64_t max_shard_size; /* 0: keep the source's files */
  bool all;                /* every object of the source folder or repo */
} cp_opts;

/* A size as transformers' convert_file_size_to_int reads it: plain bytes,
 * or a whole number with KB/MB/GB (powers of 10) or KiB/MiB/GiB (powers of
 * 2), any case; a final lowercase 'b' after K/M/G means bits ("5Gb" is
 * 5*10^9/8 bytes).  False when it is none of these, 0 or too large. */
static bool parse_size(const char *text, uint64_t *out) {
  static const struct {
    const char *unit;
    uint64_t scale;
    bool bits_possible;
  } units[] = {{"GIB", (uint64_t)1 << 30, false},
               {"MIB", (uint64_t)1 << 20, false},
               {"KIB", (uint64_t)1 << 10, false},
               {"GB", 1000000000, true},
               {"MB", 1000000, true},
               {"KB", 1000, true},
               {"", 1, false}};
  size_t digits = strspn(text, "0123456789");
  if (!digits || digits > 19) return false;
  const char *unit = text + digits;
  for (size_t u = 0; u < sizeof units / sizeof *units; u++) {
    if (strcasecmp(unit, units[u].unit) != 0) continue;
    uint64_t n = strtoull(text, NULL, 10), bytes;
    if (__builtin_mul_overflow(n, units[u].scale, &bytes)) return false;
    if (units[u].bits_possible && unit[strlen(unit) - 1] == 'b') bytes /= 8;
    if (!bytes) return false;
    *out = bytes;
    return true;
  }
  return false;
}

static int cp_option(const char *opt, const char *value, void *ctx) {
  cp_opts *o = ctx;
  if (strcmp(opt, "--all") == 0) {
    o->all = true;
    return 0;
  }
  if (strcmp(opt, "--max-shard-size") == 0) {
    if (parse_size(value, &o->max_shard_size)) return 0;
    usage_error("cp",
                "--max-shard-size must be a size in bytes, or with KB, MB, GB, KiB, MiB or GiB, "
                "such as 5GB or 500MiB (got '%s')",
                value);
    return 1;
  }
  char upper[32]; /* bf16 as BF16, as --max-shard-size takes any case */
  size_t n = strlen(value) < sizeof upper - 1 ? strlen(value) : sizeof upper - 1;
  for (size_t i = 0; i < n; i++) upper[i] = (char)toupper((unsigned char)value[i]);
  upper[n] = '\0';
  if (kaun_dtype_from_name(upper, n, &o->dtype) != KAUN_OK || strlen(value) != n ||
      !kaun_dtype_is_float(o->dtype) || !kaun_dtype_can_cast(o->dtype)) {
    usage_error("cp", "--dtype must be one of F64, F32, F16, BF16, F8_E4M3, F8_E5M2 (got '%s')",
                value);
    return 1;
  }
  o->cast = true;
  return 0;
}

static void make_parents(const char *dst);

/* A copy that writes a folder (shards and an index, or DST/ for one file)
 * into a local path that is not there yet makes it first, with its
 * parents, as save_pretrained does; other backends need no folders made. */
static int make_local_folder(const char *dst, kaun_error *err) {
  const char *path = strncmp(dst, "file://", 7) == 0 ? dst + 7 : strstr(dst, "://") ? NULL : dst;
  struct stat sb;
  if (!path || stat(path, &sb) == 0 || errno != ENOENT) return KAUN_OK;
  make_parents(path);
  if (mkdir(path, 0777) != 0 && errno != EEXIST)
    return kaun_error_set(err, errno == ENOENT ? KAUN_ENOENT : KAUN_EIO,
                          "cannot make the folder '%s': %s", path, strerror(errno));
  return KAUN_OK;
}

/* "BASE/NAME" (no doubled '/'); malloc'd. */
static char *join_path(const char *base, const char *name) {
  size_t n = strlen(base) + strlen(name) + 2;
  char *p = malloc(n);
  if (p) snprintf(p, n, "%s%s%s", base, *base && base[strlen(base) - 1] == '/' ? "" : "/", name);
  return p;
}

typedef struct name_list {
  char **names;
  size_t n, cap;
} name_list;

static int add_name(const char *name, uint64_t size, void *ctx) {
  name_list *l = ctx;
  (void)size;
  if (l->n == l->cap) {
    size_t cap = l->cap ? 2 * l->cap : 16;
    char **more = realloc(l->names, cap * sizeof *more);
    if (!more) return 1;
    l->names = more;
    l->cap = cap;
  }
  if (!(l->names[l->n] = strdup(name))) return 1;
  l->n++;
  return 0;
}

static void free_names(name_list *l) {
  for (size_t i = 0; i < l->n; i++) free(l->names[i]);
  free(l->names);
}

/* The objects of the folder or Hub repo `src`: `*base` (malloc'd) is what
 * their names are relative to, a Hub repo pinned at the commit listed. */
/* A local folder's files, in its subfolders too ("sub/notes.txt"), as an
 * object store lists them (the file backend's list is one level). */
static _Thread_local name_list *walking_list; /* nftw passes no context */
static _Thread_local size_t walking_skip;

static int walk_file(const char *path, const struct stat *sb, int type, struct FTW *ftw) {
  (void)sb;
  (void)ftw;
  if (type != FTW_F) return 0;
  const char *rel = path + walking_skip;
  for (const char *p = rel; *p; p++) /* hidden files and folders stay, as in the listing */
    if (*p == '.' && (p == rel || p[-1] == '/')) return 0;
  return add_name(rel, 0, walking_list);
}

static int list_local(const char *path, name_list *l, kaun_error *err) {
  size_t len = strlen(path);
  while (len > 1 && path[len - 1] == '/') len--;
  walking_list = l;
  walking_skip = len + 1;
  int rc = nftw(path, walk_file, 16, FTW_PHYS);
  walking_list = NULL;
  if (rc != 0)
    return kaun_error_set(err, rc > 0 ? KAUN_ENOMEM : KAUN_EIO, "--all: cannot list '%s'%s%s", path,
                          rc > 0 ? "" : ": ", rc > 0 ? "" : strerror(errno));
  return KAUN_OK;
}

static int list_source(kaun_context *ctx, const char *src, char **base, name_list *l,
                       kaun_error *err) {
  *base = NULL;
  if (strncmp(src, "hf://", 5) != 0) {
    kaun_object *probe;
    kaun_error ignored = KAUN_ERROR_INIT;
    if (kaun_object_open(ctx, src, &probe, &ignored) == KAUN_OK) {
      kaun_object_close(probe);
      return kaun_error_set(err, KAUN_EINVAL, "--all: %s names a file, not a folder", src);
    }
    if (!(*base = strdup(src))) return kaun_error_set(err, KAUN_ENOMEM, "out of memory");
    const char *local = strncmp(src, "file://", 7) == 0 ? src + 7 : strstr(src, "://") ? NULL : src;
    if (local) return list_local(local, l, err);
    int rc = kaun_storage_list(ctx, src, add_name, l, err);
    if (rc == KAUN_ENOTSUP)
      kaun_error_set(err, rc, "--all: %s cannot be listed (its backend has no list)", src);
    return rc;
  }
  char *repo = NULL, *rev = NULL, *file = NULL;
  int rc = kaun_hf_parse_path(src + 5, &repo, &rev, &file, err);
  if (!rc && file && *file)
    rc = kaun_error_set(err, KAUN_EINVAL, "--all: %s names a file, not a repo", src);
  char **files = NULL, commit[41] = "";
  size_t n = 0;
  kaun_hf_options ho = KAUN_HF_OPTIONS_INIT;
  if (!rc) rc = kaun_hf_options_from_context(ctx, "hf", &ho, err);
  if (!rc && rev) ho.revision = rev;
  if (!rc) rc = kaun_hf_list_files(repo, &ho, &files, &n, commit, err);
  for (size_t i = 0; i < n && !rc; i++)
    if (add_name(files[i], 0, l)) rc = kaun_error_set(err, KAUN_ENOMEM, "out of memory");
  if (!rc) { /* every file, and the model, at the commit listed */
    size_t len = strlen(repo) + 48;
    if ((*base = malloc(len))) snprintf(*base, len, "hf://%s@%s", repo, commit);
    if (!*base) rc = kaun_error_set(err, KAUN_ENOMEM, "out of memory");
  }
  kaun_hf_free_list(files, n);
  free(repo);
  free(rev);
  free(file);
  return rc;
}

/* Makes the folders of a local `path`'s parents (mkdir -p of its dirname). */
static void make_parents(const char *dst) {
  const char *path = strncmp(dst, "file://", 7) == 0 ? dst + 7 : strstr(dst, "://") ? NULL : dst;
  if (!path) return;
  char *p = strdup(path);
  for (char *s = p ? strchr(p + 1, '/') : NULL; s; s = strchr(s + 1, '/')) {
    *s = '\0';
    mkdir(p, 0777);
    *s = '/';
  }
  free(p);
}

/* --all: every object of the source but the model's files, byte for byte,
 * before the model itself (whose index comes last). */
static int copy_others(kaun_context *ctx, kaun_reader *r, const char *base, const name_list *l,
                       const char *dst, kaun_error *err) {
  kaun_io *io = NULL;
  int rc = kaun_context_new_io(ctx, &io, err);
  for (size_t i = 0; i < l->n && !rc; i++) {
    char *from = join_path(base, l->names[i]), *to = join_path(dst, l->names[i]);
    bool model = !from || !to;
    if (kaun_reader_is_sharded(r) && strcmp(l->names[i], "model.safetensors.index.json") == 0)
      model = true;
    for (size_t t = 0; !model && t < kaun_reader_count(r); t++) {
      kaun_reader_tensor info;
      kaun_reader_info(r, t, &info);
      model = strcmp(info.uri, from) == 0;
    }
    if (!from || !to) {
      rc = kaun_error_set(err, KAUN_ENOMEM, "out of memory");
    } else if (!model) {
      make_parents(to);
      rc = kaun_storage_copy(ctx, from, to, io, err);
    }
    free(from);
    free(to);
  }
  kaun_io_free(io);
  return rc;
}

static int cmd_cp(int argc, char **argv) {
  static const char *const values[] = {"--dtype", "--max-shard-size", NULL};
  static const char *const flags[] = {"--all", NULL};
  cp_opts o = {false, KAUN_DTYPE_F32, 0, false};
  int n = parse_args("cp", argc, argv, values, flags, cp_option, &o);
  if (n == -1) return -1;
  if (n < 0) return EXIT_USAGE;
  if (n != 2) return usage_error("cp", "expected SRC and DST%s", "");
  kaun_error err = KAUN_ERROR_INIT;
  int status;
  kaun_context *ctx = open_context(&status);
  if (!ctx) return status;
  name_list others = {NULL, 0, 0};
  char *base = NULL;
  int rc = o.all ? list_source(ctx, argv[0], &base, &others, &err) : KAUN_OK;
  /* opening validates the source's headers (and index): a bad one fails here */
  kaun_reader *r = NULL;
  if (!rc) rc = kaun_reader_open(ctx, base ? base : argv[0], &r, &err);
  const char *dst = argv[1];
  size_t dlen = strlen(dst);
  bool to_folder = o.all || o.max_shard_size || (dlen && dst[dlen - 1] == '/') ||
                   (!rc && kaun_reader_is_sharded(r) &&
                    !(dlen >= 12 && strcmp(dst + dlen - 12, ".safetensors") == 0));
  if (!rc && to_folder) rc = make_local_folder(dst, &err);
  if (!rc && o.all) rc = copy_others(ctx, r, base, &others, dst, &err);
  if (!rc) {
    kaun_copy_options co = {.struct_size = sizeof co,
                            .max_shard_size = o.max_shard_size,
                            .cast = o.cast,
                            .dtype = o.dtype};
    rc = kaun_reader_copy_model(r, dst, &co, &err);
  }
  kaun_reader_close(r);
  free_names(&others);
  free(base);
  kaun_context_free(ctx);
  return rc ? fail(&err) : EXIT_OKAY;
}

/* ---- verify ------------------------------------------------------------------------ */

typedef struct verify_opts {
  bool data;
} verify_opts;

static int verify_option(const char *opt, const char *value, void *ctx) {
  (void)opt;
  (void)value;
  ((verify_opts *)ctx)->data = true;
  return 0;
}

static int cmd_verify(int argc, char **argv) {
  static const char *const flags[] = {"--data", NULL};
  verify_opts o = {false};
  int n = parse_args("verify", argc, argv, NULL, flags, verify_option, &o);
  if (n == -1) return -1;
  if (n < 0) return EXIT_USAGE;
  if (n != 1) return usage_error("verify", "expected one checkpoint%s", n ? ", got more" : "");
  kaun_error err = KAUN_ERROR_INIT;
  kaun_reader *r;
  int status;
  kaun_context *ctx = open_context(&status);
  if (!ctx) return status;
  /* opening validates every header, the index and the sizes */
  int rc = kaun_reader_open(ctx, argv[0], &r, &err);
  if (!rc && o.data) rc = kaun_reader_check_data(r, NULL, &err);
  if (rc) {
    kaun_reader_close(r);
    kaun_context_free(ctx);
    return fail(&err);
  }
  end_progress();
  put_escaped(stdout, argv[0], strlen(argv[0]), false);
  printf(": OK, %zu tensors, %llu bytes of data (%s)\n", kaun_reader_count(r),
         (unsigned long long)kaun_reader_data_bytes(r),
         o.data ? "every byte read, and checked where the backend states a SHA-256 (the Hub's "
                  "files)"
                : "headers and sizes checked; --data reads every byte");
  kaun_reader_close(r);
  kaun_context_free(ctx);
  return EXIT_OKAY;
}

/* ---- cat ----------------------------------------------------------------------------- */

typedef struct cat_opts {
  const char *slice;
  const char *output;
  long limit;
} cat_opts;

static int cat_option(const char *opt, const char *value, void *ctx) {
  cat_opts *o = ctx;
  if (strcmp(opt, "--slice") == 0) {
    o->slice = value;
  } else if (strcmp(opt, "-o") == 0 || strcmp(opt, "--output") == 0) {
    o->output = value;
  } else {
    char *end;
    o->limit = strtol(value, &end, 10);
    if (*end || o->limit < 0) {
      usage_error("cat", "--limit wants a count of values (got '%s')", value);
      return 1;
    }
  }
  return 0;
}

/* Prints the values as text: one line per innermost row. */
static int print_values(const kaun_tensor *t, long limit, kaun_error *err) {
  kaun_dtype dt = kaun_tensor_dtype(t);
  size_t ndim = kaun_tensor_ndim(t), count = 1;
  for (size_t d = 0; d < ndim; d++) count *= (size_t)kaun_tensor_shape(t)[d];
  size_t row = ndim ? (size_t)kaun_tensor_shape(t)[ndim - 1] : 1;
  size_t shown = limit && (size_t)limit < count ? (size_t)limit : count;
  bool is_float = kaun_dtype_is_float(dt), is_u64 = dt == KAUN_DTYPE_U64;
  kaun_dtype as = is_float ? KAUN_DTYPE_F64 : is_u64 ? KAUN_DTYPE_U64 : KAUN_DTYPE_I64;
  const unsigned char *src = kaun_tensor_data(t);
  unsigned elem_bits = kaun_dtype_bits(dt);
  for (size_t i = 0; i < shown; i++) {
    unsigned char v[8];
    int rc = kaun_cast(dt, src + i * elem_bits / 8, as, v, 1, err);
    if (rc) return rc;
    if (is_float) {
      double x;
      memcpy(&x, v, 8);
      printf("%s%.9g", i % row ? " " : "", x);
    } else if (is_u64) {
      uint64_t x;
      memcpy(&x, v, 8);
      printf("%s%llu", i % row ? " " : "", (unsigned long long)x);
    } else {
      int64_t x;
      memcpy(&x, v, 8);
      printf("%s%lld", i % row ? " " : "", (long long)x);
    }
    if ((i + 1) % row == 0 || i + 1 == shown) putchar('\n');
  }
  if (shown < count)
    printf("... (%zu more values; --limit 0 shows all, -o FILE writes them)\n", count - shown);
  return KAUN_OK;
}

static int cmd_cat(int argc, char **argv) {
  static const char *const values[] = {"--slice", "-o", "--output", "--limit", NULL};
  cat_opts o = {NULL, NULL, 1000};
  int n = parse_args("cat", argc, argv, values, NULL, cat_option, &o);
  if (n == -1) return -1;
  if (n < 0) return EXIT_USAGE;
  if (n != 2) return usage_error("cat", "expected CHECKPOINT and a tensor NAME%s", "");
  kaun_error err = KAUN_ERROR_INIT;
  kaun_reader *r = NULL;
  kaun_tensor *t = NULL;
  int status;
  kaun_context *ctx = open_context(&status);
  if (!ctx) return status;
  int rc = kaun_reader_open(ctx, argv[0], &r, &err);
  long at = rc ? -1 : kaun_reader_find(r, argv[1]);
  if (!rc && at < 0)
    rc = kaun_error_set(&err, KAUN_EKEY, "%s has no tensor '%s' (kaun ls %s lists them)", argv[0],
                        argv[1], argv[0]);
  if (!rc) {
    kaun_reader_tensor info;
    kaun_reader_info(r, (size_t)at, &info);
    if (o.slice) {
      kaun_range ranges[KAUN_MAX_DIMS];
      size_t nr;
      rc = kaun_slice_parse(o.slice, info.ndim, info.shape, ranges, KAUN_MAX_DIMS, &nr, &err);
      if (rc) {
        char why[KAUN_ERROR_MESSAGE_MAX];
        snprintf(why, sizeof why, "%s", err.message);
        kaun_error_set(&err, rc, "%s, tensor '%s': %s", argv[0], argv[1], why);
      }
      if (!rc) rc = kaun_reader_get_slice(r, argv[1], nr, ranges, NULL, &t, &err);
    } else {
      rc = kaun_reader_get(r, argv[1], info.dtype, NULL, &t, &err);
    }
  }
  end_progress();
  if (!rc && o.output) {
    FILE *f = strcmp(o.output, "-") == 0 ? stdout : fopen(o.output, "wb");
    if (!f) {
      rc = kaun_error_set(&err, KAUN_EIO, "cannot write '%s'", o.output);
    } else {
      if (fwrite(kaun_tensor_data(t), 1, kaun_tensor_nbytes(t), f) != kaun_tensor_nbytes(t) ||
          (f != stdout && fclose(f) != 0) || (f == stdout && fflush(f) != 0))
        rc = kaun_error_set(&err, KAUN_EIO, "cannot write '%s'", o.output);
    }
  } else if (!rc) {
    put_escaped(stdout, argv[1], strlen(argv[1]), true);
    printf("\t%s\t", kaun_dtype_name(kaun_tensor_dtype(t)));
    print_shape(stdout, kaun_tensor_ndim(t), kaun_tensor_shape(t), ",");
    putchar('\n');
    rc = print_values(t, o.limit, &err);
  }
  kaun_tensor_free(t);
  kaun_reader_close(r);
  kaun_context_free(ctx);
  return rc ? fail(&err) : EXIT_OKAY;
}

/* ---- get, load, cache: the Hub and any backend's local copies ---------------------- */

typedef struct get_opts {
  const char *revision, *token;
  char token_buf[1024]; /* --token's value, kept out of the process's arguments */
  bool offline;
  const char *include[32];
  size_t ninclude;
} get_opts;

static int get_option(const char *opt, const char *value, void *ctx) {
  get_opts *o = ctx;
  if (strcmp(opt, "--revision") == 0) {
    o->revision = value;
  } else if (strcmp(opt, "--token") == 0) {
    /* "-": the first line of standard input; else the value, which is then
     * blanked in argv so that ps and /proc/PID/cmdline stop showing it */
    if (strcmp(value, "-") == 0) {
      if (!fgets(o->token_buf, sizeof o->token_buf, stdin)) o->token_buf[0] = '\0';
      o->token_buf[strcspn(o->token_buf, "\r\n")] = '\0';
    } else {
      snprintf(o->token_buf, sizeof o->token_buf, "%s", value);
      memset((char *)value, '*', strlen(value));
    }
    if (!o->token_buf[0]) {
      usage_error("get", "--token is empty%s",
                  strcmp(value, "-") == 0 ? " (nothing on stdin)" : "");
      return 1;
    }
    o->token = o->token_buf;
  } else if (strcmp(opt, "--offline") == 0) {
    o->offline = true;
  } else if (o->ninclude < sizeof o->include / sizeof *o->include) {
    o->include[o->ninclude++] = value;
  } else {
    usage_error("get", "at most 32 --include patterns (got more at '%s')", value);
    return 1;
  }
  return 0;
}

static bool included(const get_opts *o, const char *name) {
  if (!o->ninclude) return true;
  for (size_t i = 0; i < o->ninclude; i++)
    if (fnmatch(o->include[i], name, 0) == 0) return true;
  return false;
}

/* A whole Hub repo: every file (or the --include ones) at one commit, in
 * parallel; prints the snapshot folder. */
static int get_repo(kaun_context *ctx, const char *repo, const kaun_hf_options *ho,
                    const get_opts *o, kaun_error *err) {
  char **files = NULL, commit[41];
  size_t n = 0;
  int rc = kaun_hf_list_files(repo, ho, &files, &n, commit, err);
  if (rc) return rc;
  (void)ctx;
  const char **want = calloc(n + 1, sizeof *want);
  kaun_hf_file *got = calloc(n + 1, sizeof *got);
  size_t k = 0;
  if (!want || !got) rc = kaun_error_set(err, KAUN_ENOMEM, "out of memory");
  for (size_t i = 0; !rc && i < n; i++)
    if (included(o, files[i])) want[k++] = files[i];
  if (!rc && !k)
    rc = kaun_error_set(err, KAUN_ENOENT, "hf://%s@%s: no file matches the --include patterns",
                        repo, commit);
  kaun_hf_options at = *ho;
  at.revision = commit; /* every file at the commit the listing saw */
  if (!rc) rc = kaun_hf_download_files(repo, want, k, &at, got, err);
  if (!rc) {
    end_progress();
    char *snap = got[0].path, *end = strstr(snap, commit);
    printf("%.*s\n", end ? (int)(end - snap + 40) : (int)strlen(snap), snap);
  }
  free(want);
  free(got);
  kaun_hf_free_list(files, n);
  return rc;
}

static int cmd_get(int argc, char **argv) {
  static const char *const values[] = {"--revision", "--token", "--include", NULL};
  static const char *const flags[] = {"--offline", NULL};
  get_opts o = {0};
  int n = parse_args("get", argc, argv, values, flags, get_option, &o);
  if (n == -1) return -1;
  if (n < 0) return EXIT_USAGE;
  if (n != 1) return usage_error("get", "expected one URI%s", n ? ", got more" : "");
  kaun_error err = KAUN_ERROR_INIT;
  int status;
  kaun_context *ctx = open_context(&status);
  if (!ctx) return status;
  int rc;
  if (strncmp(argv[0], "hf://", 5) == 0) {
    char *repo = NULL, *rev = NULL, *file = NULL;
    rc = kaun_hf_parse_path(argv[0] + 5, &repo, &rev, &file, &err);
    kaun_hf_options ho =
        KAUN_HF_OPTIONS_INIT; /* the config's hf backend: its endpoint, token, cache... */
    if (!rc) rc = kaun_hf_options_from_context(ctx, "hf", &ho, &err);
    if (o.revision || rev) ho.revision = o.revision ? o.revision : rev;
    if (o.token) ho.token = o.token;
    if (o.offline) ho.offline = 1;
    kaun_io *io = NULL;
    if (!rc) rc = kaun_context_new_io(ctx, &io, &err);
    ho.io = io;
    if (!rc && file && *file) {
      kaun_hf_file got;
      if (!(rc = kaun_hf_download_file(repo, file, &ho, &got, &err))) {
        end_progress();
        printf("%s\n", got.path);
      }
    } else if (!rc) {
      rc = get_repo(ctx, repo, &ho, &o, &err);
    }
    kaun_io_free(io);
    free(repo);
    free(rev);
    free(file);
  } else { /* any backend: its local copy (a file's own path, or its cache) */
    kaun_object *obj;
    char path[4096];
    kaun_io *io = NULL;
    rc = kaun_context_new_io(ctx, &io, &err);
    if (!rc && !(rc = kaun_object_open(ctx, argv[0], &obj, &err))) {
      rc = kaun_object_fetch(obj, io, path, sizeof path, &err);
      kaun_object_close(obj);
      if (!rc) {
        end_progress();
        printf("%s\n", path);
      }
    }
    kaun_io_free(io);
  }
  kaun_context_free(ctx);
  return rc ? fail(&err) : EXIT_OKAY;
}

static int cmd_load(int argc, char **argv) {
  int n = parse_args("load", argc, argv, NULL, NULL, no_option, NULL);
  if (n == -1) return -1;
  if (n < 0) return EXIT_USAGE;
  if (n != 1) return usage_error("load", "expected one checkpoint%s", n ? ", got more" : "");
  kaun_error err = KAUN_ERROR_INIT;
  int status;
  kaun_context *ctx = open_context(&status);
  if (!ctx) return status;
  double t0 = now_s();
  kaun_flat *flat;
  int rc = kaun_checkpoint_load_flat(ctx, argv[0], 0, &flat, &err);
  double secs = now_s() - t0;
  if (rc) {
    kaun_context_free(ctx);
    return fail(&err);
  }
  end_progress();
  uint64_t bytes = 0, params = 0, per_dtype[KAUN_DTYPE_COUNT_] = {0};
  size_t views = 0;
  for (size_t i = 0; i < kaun_flat_count(flat); i++) {
    const kaun_tensor *t = kaun_flat_tensor(flat, i);
    uint64_t elems = 1;
    for (size_t d = 0; d < kaun_tensor_ndim(t); d++) elems *= kaun_tensor_shape(t)[d];
    params += elems;
    bytes += kaun_tensor_nbytes(t);
    per_dtype[kaun_tensor_dtype(t)] += elems;
    views += kaun_tensor_is_view(t) != 0;
  }
  char b[32], rate[32];
  human_bytes((double)bytes, b, sizeof b);
  human_bytes(secs > 0 ? (double)bytes / secs : 0, rate, sizeof rate);
  printf("tensors     %zu (%zu zero-copy views)\n", kaun_flat_count(flat), views);
  printf("parameters  %llu\n", (unsigned long long)params);
  printf("bytes       %llu (%s)\n", (unsigned long long)bytes, b);
  printf("dtypes     ");
  for (int d = 0; d < KAUN_DTYPE_COUNT_; d++)
    if (per_dtype[d])
      printf(" %s:%llu", kaun_dtype_name((kaun_dtype)d), (unsigned long long)per_dtype[d]);
  printf("\ntime        %.3f s (%s/s)\n", secs, rate);
  kaun_flat_free(flat);
  kaun_context_free(ctx);
  return EXIT_OKAY;
}

/* kaun cache ls | rm [REPO]: the Hub cache (ROOT/huggingface) */
static uint64_t tree_bytes;
static int add_size(const char *path, const struct stat *sb, int type, struct FTW *ftw) {
  (void)path, (void)ftw;
  if (type == FTW_F) tree_bytes += (uint64_t)sb->st_size;
  return 0;
}

static int set_flag(const char *opt, const char *value, void *ctx) {
  (void)opt;
  (void)value;
  *(bool *)ctx = true;
  return 0;
}

static int cmd_cache(int argc, char **argv) {
  static const char *const flags[] = {"--all", NULL};
  bool all = false;
  int n = parse_args("cache", argc, argv, NULL, flags, set_flag, &all);
  if (n == -1) return -1;
  if (n < 0) return EXIT_USAGE;
  if (n < 1 || (strcmp(argv[0], "ls") != 0 && strcmp(argv[0], "rm") != 0) ||
      (strcmp(argv[0], "ls") == 0 && (n != 1 || all)) || n > 2)
    return usage_error("cache", "expected 'ls', 'rm REPO' or 'rm --all'%s", "");
  if (strcmp(argv[0], "rm") == 0 && (n == 2) == all)
    return usage_error("cache", "%s",
                       all ? "'rm --all' takes no REPO"
                           : "'rm' needs the repo to remove (ORG/NAME), or --all for every repo");
  kaun_error err = KAUN_ERROR_INIT;
  int status;
  kaun_context *ctx = open_context(&status);
  if (!ctx) return status;
  kaun_hf_options ho = KAUN_HF_OPTIONS_INIT; /* the cache the config's hf backend uses */
  char dir[4096];
  int rc = kaun_hf_options_from_context(ctx, "hf", &ho, &err);
  if (!rc) rc = kaun_hf_cache_dir(&ho, dir, sizeof dir, &err);
  if (!rc && strcmp(argv[0], "rm") == 0) {
    char folder[8400];
    int len = snprintf(folder, sizeof folder, "%s/models--", dir);
    for (const char *p = n == 2 ? argv[1] : ""; *p && len < (int)sizeof folder - 3; p++)
      len += *p == '/' ? snprintf(folder + len, sizeof folder - (size_t)len, "--")
                       : snprintf(folder + len, sizeof folder - (size_t)len, "%c", *p);
    struct stat sb;
    bool there = n != 2 || stat(folder, &sb) == 0;
    rc = kaun_hf_clear_cache(n == 2 ? argv[1] : NULL, &ho, &err);
    if (!rc && there) printf("removed %s from %s\n", n == 2 ? argv[1] : "every repo", dir);
    if (!rc && !there) printf("nothing to remove: %s is not in %s\n", argv[1], dir);
  } else if (!rc) {
    DIR *d = opendir(dir);
    printf("# %s\n", dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
      const char *kind = strncmp(e->d_name, "models--", 8) == 0      ? ""
                         : strncmp(e->d_name, "datasets--", 10) == 0 ? "dataset:"
                         : strncmp(e->d_name, "spaces--", 8) == 0    ? "space:"
                                                                     : NULL;
      if (!kind) continue;
      char repo[512], path[8400];
      snprintf(repo, sizeof repo, "%s", strstr(e->d_name, "--") + 2);
      for (char *p = strstr(repo, "--"); p; p = strstr(p + 1, "--")) {
        *p = '/';
        memmove(p + 1, p + 2, strlen(p + 2) + 1);
      }
      snprintf(path, sizeof path, "%s/%s/blobs", dir, e->d_name);
      tree_bytes = 0;
      nftw(path, add_size, 16, FTW_PHYS);
      char size[32];
      human_bytes((double)tree_bytes, size, sizeof size);
      printf("%s%s\t%s\t", kind, repo, size);
      snprintf(path, sizeof path, "%s/%s/refs", dir, e->d_name);
      DIR *refs = opendir(path);
      struct dirent *r;
      bool any = false;
      while (refs && (r = readdir(refs)))
        if (r->d_name[0] != '.') {
          printf("%s%s", any ? "," : "", r->d_name);
          any = true;
        }
      if (refs) closedir(refs);
      printf("%s\n", any ? "" : "(no refs)");
    }
    if (d) closedir(d);
  }
  kaun_context_free(ctx);
  return rc ? fail(&err) : EXIT_OKAY;
}

/* ---- plugins and config -------------------------------------------------------------- */

static int cmd_plugins(int argc, char **argv) {
  int n = parse_args("plugins", argc, argv, NULL, NULL, no_option, NULL);
  if (n == -1) return -1;
  if (n < 0) return EXIT_USAGE;
  if (n != 0) return usage_error("plugins", "takes no arguments%s", "");
  int status;
  kaun_context *ctx = open_context(&status);
  if (!ctx) return status;
  kaun_error err = KAUN_ERROR_INIT;
  char *text;
  int rc = kaun_plugins_describe(ctx, &text, &err);
  kaun_context_free(ctx);
  if (rc) return fail(&err);
  fputs(text, stdout);
  free(text);
  return EXIT_OKAY;
}

typedef struct config_opts {
  const char *check;
} config_opts;

static int config_option(const char *opt, const char *value, void *ctx) {
  (void)opt;
  ((config_opts *)ctx)->check = value;
  return 0;
}

static int cmd_config(int argc, char **argv) {
  static const char *const values[] = {"--check", NULL};
  config_opts o = {NULL};
  int n = parse_args("config", argc, argv, values, NULL, config_option, &o);
  if (n == -1) return -1;
  if (n < 0) return EXIT_USAGE;
  if (n != 0) return usage_error("config", "takes no arguments besides --check FILE%s", "");
  if (o.check) config_file = o.check;
  int status;
  kaun_context *ctx = open_context(&status);
  if (!ctx) return status;
  if (o.check) {
    kaun_error err = KAUN_ERROR_INIT;
    int rc = kaun_context_check(ctx, &err); /* each backend made: its option values checked */
    kaun_context_free(ctx);
    if (rc) return fail(&err);
    printf("%s: OK\n", o.check);
    return EXIT_OKAY;
  }
  kaun_error err = KAUN_ERROR_INIT;
  char *text;
  int rc = kaun_context_describe(ctx, &text, &err);
  kaun_context_free(ctx);
  if (rc) return fail(&err);
  fputs(text, stdout);
  free(text);
  return EXIT_OKAY;
}

/* ---- dispatch ---------------------------------------------------------------------- */

static const command commands[] = {
    {"ls", "list the tensors of a checkpoint",
     "Usage: kaun ls [--json] CHECKPOINT\n"
     "       kaun ls --members ARCHIVE\n"
     "\n"
     "List every tensor: name, dtype, shape and size in bytes, tab-separated,\n"
     "in file order.  CHECKPOINT is a .safetensors file, a\n"
     "model.safetensors.index.json, or a directory holding either.\n"
     "\n"
     "  --json      print a JSON array of {name, dtype, shape, bytes}\n"
     "  --members   list the members of a tar (.tar, .tar.gz, .tar.zst, .tar.xz,\n"
     "              .tar.bz2) or zip ARCHIVE stored anywhere: name and size\n",
     cmd_ls},
    {"inspect", "print a file's header as JSON",
     "Usage: kaun inspect FILE\n"
     "\n"
     "Print the validated header of a SafeTensors file as JSON:\n"
     "  {\"metadata\": {...} or null,\n"
     "   \"tensors\": {\"NAME\": {\"dtype\": \"F32\", \"shape\": [2, 3],\n"
     "                        \"data_offsets\": [0, 24]}, ...}}\n"
     "Only the header is read, so this is instant on files of any size.\n",
     cmd_inspect},
    {"cp", "copy a checkpoint or a whole sharded model, optionally casting or sharding it",
     "Usage: kaun cp [--dtype DT] [--max-shard-size SIZE] [--all] SRC DST\n"
     "\n"
     "Copy SRC (a file, an index or a folder, on any backend) to DST, every\n"
     "file written atomically.  Metadata is kept.\n"
     "  - a sharded SRC: its shards, then its index, byte for byte, into the\n"
     "    folder DST (made when it is a local path), shards in parallel; on\n"
     "    a failure no index is written and the copied shards are removed;\n"
     "    with --dtype each shard is cast into one that holds the same tensors,\n"
     "    one shard in memory at a time\n"
     "  - a single file, or DST ending in .safetensors: one file DST (or\n"
     "    DST/model.safetensors when DST is a folder)\n"
     "\n"
     "  --dtype DT             cast every floating-point tensor to DT (F64, F32,\n"
     "                         F16, BF16, F8_E4M3 or F8_E5M2); others are copied\n"
     "  --max-shard-size SIZE  re-save into the folder DST in shards of at most\n"
     "                         SIZE bytes of tensors, with an index written last\n"
     "                         (model.safetensors when it all fits), reading one\n"
     "                         shard at a time; SIZE as in transformers: 5GB\n"
     "                         (10^9), 500MiB (2^20), 1000000 (bytes)\n"
     "  --all                  also copy every other object of the folder or Hub\n"
     "                         repo SRC (config.json, tokenizer files: what a\n"
     "                         mirror needs), byte for byte, before the model\n",
     cmd_cp},
    {"verify", "validate a checkpoint",
     "Usage: kaun verify [--data] CHECKPOINT\n"
     "\n"
     "Validate the header of every file, the index of a sharded checkpoint,\n"
     "and that each file's size matches its header: a few small reads,\n"
     "whatever the size.  Exit 0 when valid, 1 when the checkpoint is\n"
     "malformed, 3 when it cannot be read.\n"
     "\n"
     "  --data   also read every byte once, with bounded memory, and check\n"
     "           the SHA-256 when the backend knows it (Hub LFS files)\n",
     cmd_verify},
    {"cat", "print or write one tensor, or a slice of it",
     "Usage: kaun cat [--slice S] [--limit N] [-o FILE] CHECKPOINT NAME\n"
     "\n"
     "Read one tensor (only its bytes) and print its name, dtype and shape,\n"
     "then its values, one line per innermost row.\n"
     "\n"
     "  --slice S    only part of it, START:STOP per leading dimension:\n"
     "               \"0:4,:\" takes rows 0-3, \":,2:8\" columns 2-7, \"3\" row 3\n"
     "               (kept as a dimension of 1); a bound past the end is an\n"
     "               error, not clamped; only the bytes the slice covers are\n"
     "               read\n"
     "  --limit N    print at most N values (default 1000; 0 = all)\n"
     "  -o FILE      write the raw little-endian bytes to FILE ('-' = stdout)\n"
     "               instead of printing (also --output FILE)\n",
     cmd_cat},
    {"get", "download a file or a whole Hub repo; print the local path",
     "Usage: kaun get [--revision R] [--token T] [--offline] [--include GLOB]... URI\n"
     "\n"
     "hf://ORG/NAME/FILE: download FILE into the Hub cache (or find it there) and\n"
     "print its path.  hf://ORG/NAME[@REV]: download every file of the repo at\n"
     "one commit, in parallel (only those matching an --include glob, when\n"
     "given), and print the snapshot folder, as `hf download` does.  Any other\n"
     "URI: print a local file holding the object (its own path, or the copy\n"
     "its backend keeps in the cache).\n"
     "\n"
     "  --revision R   branch, tag or commit (default main, or URI's @REV)\n"
     "  --token T      Hub token (default $HF_TOKEN, $HUGGING_FACE_HUB_TOKEN, the\n"
     "                 token file); sent only to the Hub endpoint.  T = - reads it\n"
     "                 from standard input; a token given as T is blanked in the\n"
     "                 process's arguments once read, but prefer - or $HF_TOKEN\n"
     "  --offline      use the cache only (also HF_HUB_OFFLINE=1)\n"
     "  --include GLOB only files matching GLOB (repeatable)\n",
     cmd_get},
    {"load", "load a whole checkpoint and print a summary",
     "Usage: kaun load CHECKPOINT\n"
     "\n"
     "Load every tensor (a sharded model's shards included) and print the\n"
     "number of tensors, parameters and bytes, the dtypes, the time taken and\n"
     "the throughput.\n",
     cmd_load},
    {"cache", "list or clear the Hub cache",
     "Usage: kaun cache ls | kaun cache rm REPO | kaun cache rm --all\n"
     "\n"
     "ls: every repo in the Hub cache (the config's cache_dir, else\n"
     "$RAVEN_CACHE_ROOT, $XDG_CACHE_HOME/raven or ~/.cache/raven, then\n"
     "huggingface/) with the size of its blobs and its refs.  rm: remove one\n"
     "repo (ORG/NAME), or with --all every repo (models--*, datasets--*,\n"
     "spaces--* and their locks; other files in the folder stay).\n",
     cmd_cache},
    {"plugins", "list the storage plugins kaun can find",
     "Usage: kaun plugins\n"
     "\n"
     "Print the plugin search path (KAUN_PLUGIN_PATH, the config's plugin_dirs,\n"
     "the install directory) and every plugin found: name, version, ABI,\n"
     "capabilities, the URI schemes it serves and the file it was loaded\n"
     "from.  A plugin that cannot be loaded is listed as BROKEN with why.\n",
     cmd_plugins},
    {"config", "show the effective configuration, or check a config file",
     "Usage: kaun config [--check FILE]\n"
     "\n"
     "Print every setting in effect, one per line, with where it came from\n"
     "(file and line, environment, default).  Secrets are masked.\n"
     "\n"
     "  --check FILE   validate FILE (syntax, keys, types, plugins and their\n"
     "                 options) and exit 0 when it is valid, 1 when not\n",
     cmd_config},
};

static void print_main_help(FILE *out) {
  fprintf(out,
          "Usage: kaun [--config FILE] [-q] [--version] [--help] COMMAND [ARGS]\n"
          "\n"
          "Save, load and inspect model weights in the SafeTensors format, from\n"
          "any storage kaun has a backend for.  Every CHECKPOINT, FILE, SRC and\n"
          "DST is a URI: a path, file:///path, SCHEME://... for a configured\n"
          "backend, or SCHEME://MEMBER::OUTER-URI for a backend that reads through\n"
          "another (a tarball's member: tar://model.safetensors::s3://b/m.tar).\n"
          "\n"
          "Commands:\n");
  for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
    fprintf(out, "  %-9s %s\n", commands[i].name, commands[i].summary);
  fprintf(out,
          "\n"
          "Run 'kaun COMMAND --help' for a command's options.\n"
          "--config FILE uses FILE instead of $KAUN_CONFIG or the default config.\n"
          "-q hides the progress bar drawn on a terminal for long transfers.\n"
          "Exit status: 0 success, 1 bad input, 2 usage error, 3 storage failure.\n");
}

int main(int argc, char **argv) {
  /* this process may hold tokens and secret keys: no core file of it
   * (KAUN_CORE_DUMPS=1 keeps the limit as it is, for debugging; any other
   * value, 0 included, does not) */
  const char *dumps = getenv("KAUN_CORE_DUMPS");
  if (!dumps || strcmp(dumps, "1") != 0) {
    struct rlimit none = {0, 0};
    (void)setrlimit(RLIMIT_CORE, &none);
  }
  while (argc > 2 && (strncmp(argv[1], "--config", 8) == 0 || strcmp(argv[1], "-q") == 0 ||
                      strcmp(argv[1], "--quiet") == 0)) {
    if (argv[1][1] != '-' || strcmp(argv[1], "--quiet") == 0) {
      quiet = true;
      argv++;
      argc--;
    } else if (argv[1][8] == '=') {
      config_file = argv[1] + 9;
      argv++;
      argc--;
    } else if (argv[1][8] == '\0') {
      config_file = argv[2];
      argv += 2;
      argc -= 2;
    } else {
      break;
    }
  }
  if (config_file && !*config_file)
    return usage_error(NULL, "option '%s' needs a FILE, not an empty string", "--config");
  if (argc == 2 && (strcmp(argv[1], "--config") == 0 || strcmp(argv[1], "-q") == 0))
    return usage_error(NULL,
                       strcmp(argv[1], "-q") == 0 ? "'%s' needs a COMMAND after it"
                                                  : "option '%s' needs a FILE and a COMMAND",
                       argv[1]);
  if (argc < 2) {
    print_main_help(stderr);
    return EXIT_USAGE;
  }
  if (is_help(argv[1]) || strcmp(argv[1], "help") == 0) {
    if (argc > 2)
      for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        if (strcmp(commands[i].name, argv[2]) == 0) {
          fputs(commands[i].usage, stdout);
          return EXIT_OKAY;
        }
    print_main_help(stdout);
    return EXIT_OKAY;
  }
  if (strcmp(argv[1], "--version") == 0) {
    printf("kaun %s\n", kaun_version_string());
    return EXIT_OKAY;
  }
  for (size_t i = 0; i < sizeof commands / sizeof *commands; i++) {
    if (strcmp(commands[i].name, argv[1]) == 0) {
      int rc = commands[i].run(argc - 1, argv + 1);
      if (rc == -1) {
        fputs(commands[i].usage, stdout);
        return EXIT_OKAY;
      }
      return rc;
    }
  }
  return usage_error(NULL, "unknown command '%s'", argv[1]);
}
