/* kaun — the command-line tool.
 *
 * Exit status: 0 success, 1 bad input (malformed file, missing key, bad
 * value), 2 usage error, 3 storage or network failure.  Errors go to
 * stderr as one sentence naming the file; data goes to stdout. */
#include <kaun.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { EXIT_OKAY = 0, EXIT_INPUT = 1, EXIT_USAGE = 2, EXIT_STORAGE = 3 };

/* The config file given with --config (NULL: the default search). */
static const char *config_file;

/* Makes the context every command works through; prints why it cannot. */
static kaun_context *open_context(int *status) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_context *ctx;
  if (kaun_context_new(config_file, &ctx, &err) != KAUN_OK) {
    fprintf(stderr, "kaun: %s\n", err.message);
    *status = EXIT_INPUT;
    return NULL;
  }
  return ctx;
}

typedef struct command {
  const char *name;
  const char *summary;
  const char *usage; /* full --help text */
  int (*run)(int argc, char **argv);
} command;

static int fail(const kaun_error *err) {
  fprintf(stderr, "kaun: %s\n", err->message);
  switch (err->code) {
    case KAUN_EIO:
    case KAUN_ENOMEM: return EXIT_STORAGE;
    default: return EXIT_INPUT;
  }
}

static int usage_error(const char *cmd, const char *fmt, const char *arg) {
  fprintf(stderr, "kaun%s%s: ", cmd ? " " : "", cmd ? cmd : "");
  fprintf(stderr, fmt, arg);
  fprintf(stderr, "\nTry 'kaun %s%s--help'.\n", cmd ? cmd : "", cmd ? " " : "");
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

static void print_json_string(FILE *out, const char *s) {
  fputc('"', out);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p == '"' || *p == '\\')
      fprintf(out, "\\%c", *p);
    else if (*p < 0x20)
      fprintf(out, "\\u%04x", *p);
    else
      fputc(*p, out);
  }
  fputc('"', out);
}

/* ---- ls ------------------------------------------------------------------------ */

typedef struct ls_opts {
  bool json;
} ls_opts;

static int ls_option(const char *opt, const char *value, void *ctx) {
  (void)value;
  if (strcmp(opt, "--json") == 0) ((ls_opts *)ctx)->json = true;
  return 0;
}

static int cmd_ls(int argc, char **argv) {
  static const char *const flags[] = {"--json", NULL};
  ls_opts o = {false};
  int n = parse_args("ls", argc, argv, NULL, flags, ls_option, &o);
  if (n == -1) return -1;
  if (n < 0) return EXIT_USAGE;
  if (n != 1) return usage_error("ls", "expected one checkpoint%s", n ? ", got more" : "");
  kaun_error err = KAUN_ERROR_INIT;
  kaun_flat *flat;
  int status;
  kaun_context *ctx = open_context(&status);
  if (!ctx) return status;
  int rc = kaun_checkpoint_load_flat(ctx, argv[0], 0, &flat, &err);
  kaun_context_free(ctx);
  if (rc) return fail(&err);
  if (o.json) printf("[");
  for (size_t i = 0; i < kaun_flat_count(flat); i++) {
    const kaun_tensor *t = kaun_flat_tensor(flat, i);
    const char *dt = kaun_dtype_name(kaun_tensor_dtype(t));
    if (o.json) {
      printf("%s\n  {\"name\": ", i ? "," : "");
      print_json_string(stdout, kaun_flat_name(flat, i));
      printf(", \"dtype\": \"%s\", \"shape\": ", dt);
      print_shape(stdout, kaun_tensor_ndim(t), kaun_tensor_shape(t), ", ");
      printf(", \"bytes\": %zu}", kaun_tensor_nbytes(t));
    } else {
      printf("%s\t%s\t", kaun_flat_name(flat, i), dt);
      print_shape(stdout, kaun_tensor_ndim(t), kaun_tensor_shape(t), ",");
      printf("\t%zu\n", kaun_tensor_nbytes(t));
    }
  }
  if (o.json) printf("%s]\n", kaun_flat_count(flat) ? "\n" : "");
  kaun_flat_free(flat);
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
  if (rc) return fail(&err);
  printf("{\n  \"metadata\": ");
  long md = kaun_safetensors_metadata_count(st);
  if (md < 0) {
    printf("null");
  } else {
    printf("{");
    for (long i = 0; i < md; i++) {
      printf("%s", i ? ", " : "");
      print_json_string(stdout, kaun_safetensors_metadata_key(st, (size_t)i));
      printf(": ");
      print_json_string(stdout, kaun_safetensors_metadata_value(st, (size_t)i));
    }
    printf("}");
  }
  printf(",\n  \"tensors\": {");
  for (size_t i = 0; i < kaun_safetensors_count(st); i++) {
    kaun_safetensors_info in;
    kaun_safetensors_info_at(st, i, &in);
    printf("%s\n    ", i ? "," : "");
    print_json_string(stdout, in.name);
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
} cp_opts;

static int cp_option(const char *opt, const char *value, void *ctx) {
  cp_opts *o = ctx;
  (void)opt;
  if (kaun_dtype_from_name(value, strlen(value), &o->dtype) != KAUN_OK ||
      !kaun_dtype_is_float(o->dtype) || !kaun_dtype_can_cast(o->dtype)) {
    usage_error("cp", "--dtype must be one of F64, F32, F16, BF16, F8_E4M3, F8_E5M2 (got '%s')",
                value);
    return 1;
  }
  o->cast = true;
  return 0;
}

static int cmd_cp(int argc, char **argv) {
  static const char *const values[] = {"--dtype", NULL};
  cp_opts o = {false, KAUN_DTYPE_F32};
  int n = parse_args("cp", argc, argv, values, NULL, cp_option, &o);
  if (n == -1) return -1;
  if (n < 0) return EXIT_USAGE;
  if (n != 2) return usage_error("cp", "expected SRC and DST%s", "");
  kaun_error err = KAUN_ERROR_INIT;
  kaun_flat *in = NULL, *out = NULL;
  int status;
  kaun_context *ctx = open_context(&status);
  if (!ctx) return status;
  int rc = kaun_checkpoint_load_flat(ctx, argv[0], 0, &in, &err);
  if (!rc && o.cast) {
    rc = kaun_flat_new(&out, &err);
    if (!rc && kaun_flat_has_metadata(in)) {
      for (size_t i = 0; i < kaun_flat_metadata_count(in) && !rc; i++)
        rc = kaun_flat_set_metadata(out, kaun_flat_metadata_key(in, i),
                                    kaun_flat_metadata_value(in, i), &err);
    }
    for (size_t i = 0; i < kaun_flat_count(in) && !rc; i++) {
      const kaun_tensor *t = kaun_flat_tensor(in, i);
      kaun_dtype dt = kaun_tensor_dtype(t);
      kaun_tensor *c;
      bool convert = kaun_dtype_is_float(dt) && kaun_dtype_can_cast(dt);
      rc = kaun_tensor_cast(t, convert ? o.dtype : dt, &c, &err);
      if (!rc) rc = kaun_flat_add(out, kaun_flat_name(in, i), c, &err);
    }
  }
  if (!rc) rc = kaun_safetensors_save(ctx, argv[1], out ? out : in, &err);
  kaun_flat_free(in);
  kaun_flat_free(out);
  kaun_context_free(ctx);
  return rc ? fail(&err) : EXIT_OKAY;
}

/* ---- verify ------------------------------------------------------------------------ */

static int cmd_verify(int argc, char **argv) {
  int n = parse_args("verify", argc, argv, NULL, NULL, no_option, NULL);
  if (n == -1) return -1;
  if (n < 0) return EXIT_USAGE;
  if (n != 1) return usage_error("verify", "expected one checkpoint%s", n ? ", got more" : "");
  kaun_error err = KAUN_ERROR_INIT;
  kaun_flat *flat;
  int status;
  kaun_context *ctx = open_context(&status);
  if (!ctx) return status;
  /* KAUN_LOAD_COPY reads every byte, so unreadable data is caught too */
  int rc = kaun_checkpoint_load_flat(ctx, argv[0], KAUN_LOAD_COPY, &flat, &err);
  kaun_context_free(ctx);
  if (rc) return fail(&err);
  uint64_t bytes = 0;
  for (size_t i = 0; i < kaun_flat_count(flat); i++)
    bytes += kaun_tensor_nbytes(kaun_flat_tensor(flat, i));
  printf("%s: OK, %zu tensors, %llu bytes of data\n", argv[0], kaun_flat_count(flat),
         (unsigned long long)bytes);
  kaun_flat_free(flat);
  return EXIT_OKAY;
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
    printf("%s: OK\n", o.check);
    kaun_context_free(ctx);
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
     "\n"
     "List every tensor: name, dtype, shape and size in bytes, tab-separated,\n"
     "in file order.  CHECKPOINT is a .safetensors file, a\n"
     "model.safetensors.index.json, or a directory holding either.\n"
     "\n"
     "  --json   print a JSON array of {name, dtype, shape, bytes}\n",
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
    {"cp", "copy a checkpoint, optionally casting it",
     "Usage: kaun cp [--dtype DT] SRC DST\n"
     "\n"
     "Re-save SRC (a file, an index or a directory) as one SafeTensors file\n"
     "DST, written atomically.  Metadata is kept.\n"
     "\n"
     "  --dtype DT   cast every floating-point tensor to DT (F64, F32, F16,\n"
     "               BF16, F8_E4M3 or F8_E5M2); other tensors are copied\n",
     cmd_cp},
    {"verify", "validate a checkpoint completely",
     "Usage: kaun verify CHECKPOINT\n"
     "\n"
     "Validate the header of every file (and the index of a sharded\n"
     "checkpoint) and read every byte of data.  Exit 0 when valid, 1 when\n"
     "the checkpoint is malformed, 3 when it cannot be read.\n",
     cmd_verify},
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
          "Usage: kaun [--config FILE] [--version] [--help] COMMAND [ARGS]\n"
          "\n"
          "Save, load and inspect model weights in the SafeTensors format, from\n"
          "any storage kaun has a backend for.  Every CHECKPOINT, FILE, SRC and\n"
          "DST is a URI: a path, file:///path, SCHEME://... for a configured\n"
          "backend, or MEMBER::OUTER-URI for stacked backends.\n"
          "\n"
          "Commands:\n");
  for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
    fprintf(out, "  %-9s %s\n", commands[i].name, commands[i].summary);
  fprintf(out,
          "\n"
          "Run 'kaun COMMAND --help' for a command's options.\n"
          "--config FILE uses FILE instead of $KAUN_CONFIG or the default config.\n"
          "Exit status: 0 success, 1 bad input, 2 usage error, 3 storage failure.\n");
}

int main(int argc, char **argv) {
  while (argc > 2 && strncmp(argv[1], "--config", 8) == 0) {
    if (argv[1][8] == '=') {
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
