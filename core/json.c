/* A strict JSON reader with an arena, line numbers and duplicate checks. */
#include "json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 128

typedef struct arena_block {
  struct arena_block *next;
  size_t used, cap;
  max_align_t data[];
} arena_block;

struct kaun__json_doc {
  arena_block *blocks;
  kaun__json *root;
};

typedef struct parser {
  const char *s, *end, *p;
  const char *name;
  int syntax_code;
  unsigned line;
  const char *line_start;
  kaun__json_doc *doc;
  kaun_error *err;
  int rc;
} parser;

static void *arena_alloc(kaun__json_doc *doc, size_t size) {
  size = (size + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);
  arena_block *b = doc->blocks;
  if (!b || b->cap - b->used < size) {
    size_t cap = size > 65536 ? size : 65536;
    b = malloc(sizeof *b + cap);
    if (!b) return NULL;
    b->next = doc->blocks;
    b->used = 0;
    b->cap = cap;
    doc->blocks = b;
  }
  void *p = (char *)b->data + b->used;
  b->used += size;
  return p;
}

void kaun__json_free(kaun__json_doc *doc) {
  if (!doc) return;
  arena_block *b = doc->blocks;
  while (b) {
    arena_block *n = b->next;
    free(b);
    b = n;
  }
  free(doc);
}

kaun__json *kaun__json_root(kaun__json_doc *doc) { return doc->root; }

static int fail(parser *ps, const char *what) {
  if (ps->rc) return ps->rc;
  unsigned col = (unsigned)(ps->p - ps->line_start) + 1;
  ps->rc = kaun__error_set(ps->err, ps->syntax_code, "%s%sline %u, column %u: %s",
                           ps->name ? ps->name : "", ps->name ? ": " : "", ps->line, col, what);
  return ps->rc;
}

static int nomem(parser *ps) {
  if (!ps->rc) ps->rc = kaun__error_nomem(ps->err, "parsing JSON");
  return ps->rc;
}

static void skip_ws(parser *ps) {
  while (ps->p < ps->end) {
    char c = *ps->p;
    if (c == '\n') {
      ps->line++;
      ps->line_start = ps->p + 1;
    } else if (c != ' ' && c != '\t' && c != '\r') {
      break;
    }
    ps->p++;
  }
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static bool read_hex4(parser *ps, unsigned *out) {
  if (ps->end - ps->p < 4) return false;
  unsigned v = 0;
  for (int i = 0; i < 4; i++) {
    int h = hexval(ps->p[i]);
    if (h < 0) return false;
    v = v * 16 + (unsigned)h;
  }
  ps->p += 4;
  *out = v;
  return true;
}

static size_t put_utf8(char *o, unsigned cp) {
  if (cp < 0x80) {
    o[0] = (char)cp;
    return 1;
  }
  if (cp < 0x800) {
    o[0] = (char)(0xC0 | (cp >> 6));
    o[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    o[0] = (char)(0xE0 | (cp >> 12));
    o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
  }
  o[0] = (char)(0xF0 | (cp >> 18));
  o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
  o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
  o[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

/* Parses a string at ps->p (the opening quote); decoded bytes go to the
 * arena.  Escapes never grow the text, so the raw length bounds it. */
static int parse_string(parser *ps, const char **out, size_t *out_len) {
  ps->p++; /* opening quote */
  const char *start = ps->p;
  bool escaped = false;
  while (ps->p < ps->end && *ps->p != '"') {
    unsigned char c = (unsigned char)*ps->p;
    if (c < 0x20) return fail(ps, "control character in a string (it must be escaped)");
    if (c == '\\') {
      escaped = true;
      ps->p++;
      if (ps->p >= ps->end) break;
    }
    ps->p++;
  }
  if (ps->p >= ps->end) return fail(ps, "unterminated string");
  size_t raw = (size_t)(ps->p - start);
  char *o = arena_alloc(ps->doc, raw + 1);
  if (!o) return nomem(ps);
  if (!escaped) {
    memcpy(o, start, raw);
    o[raw] = '\0';
    *out = o;
    *out_len = raw;
    ps->p++;
    return 0;
  }
  const char *close = ps->p;
  ps->p = start;
  size_t n = 0;
  while (ps->p < close) {
    char c = *ps->p;
    if (c != '\\') {
      o[n++] = c;
      ps->p++;
      continue;
    }
    ps->p++;
    char e = *ps->p++;
    switch (e) {
      case '"': o[n++] = '"'; break;
      case '\\': o[n++] = '\\'; break;
      case '/': o[n++] = '/'; break;
      case 'b': o[n++] = '\b'; break;
      case 'f': o[n++] = '\f'; break;
      case 'n': o[n++] = '\n'; break;
      case 'r': o[n++] = '\r'; break;
      case 't': o[n++] = '\t'; break;
      case 'u': {
        unsigned cp;
        if (!read_hex4(ps, &cp)) return fail(ps, "bad \\u escape");
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          unsigned lo;
          if (ps->p + 2 > close || ps->p[0] != '\\' || ps->p[1] != 'u')
            return fail(ps, "lone leading surrogate in a \\u escape");
          ps->p += 2;
          if (!read_hex4(ps, &lo) || lo < 0xDC00 || lo > 0xDFFF)
            return fail(ps, "lone leading surrogate in a \\u escape");
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
          return fail(ps, "lone trailing surrogate in a \\u escape");
        }
        n += put_utf8(o + n, cp);
        break;
      }
      default: ps->p--; return fail(ps, "invalid escape in a string");
    }
  }
  o[n] = '\0';
  *out = o;
  *out_len = n;
  ps->p = close + 1;
  return 0;
}

static int parse_number(parser *ps, kaun__json *v) {
  const char *start = ps->p;
  if (ps->p < ps->end && *ps->p == '-') ps->p++;
  if (ps->p >= ps->end) return fail(ps, "invalid number");
  if (*ps->p == '0') {
    ps->p++;
  } else if (*ps->p >= '1' && *ps->p <= '9') {
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
  } else {
    return fail(ps, "invalid number");
  }
  if (ps->p < ps->end && *ps->p == '.') {
    ps->p++;
    if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') return fail(ps, "invalid number");
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
  }
  if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
    ps->p++;
    if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-')) ps->p++;
    if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') return fail(ps, "invalid number");
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
  }
  v->type = KAUN__JSON_NUMBER;
  v->text = start;
  v->text_len = (size_t)(ps->p - start);
  return 0;
}

static int key_cmp(const void *a, const void *b) {
  const kaun__json *x = *(kaun__json *const *)a, *y = *(kaun__json *const *)b;
  size_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
  int c = memcmp(x->key, y->key, n);
  if (c) return c;
  return (x->key_len > y->key_len) - (x->key_len < y->key_len);
}

static int check_duplicates(parser *ps, kaun__json *obj) {
  if (obj->count < 2) return 0;
  kaun__json *dup = NULL;
  if (obj->count <= 16) {
    for (kaun__json *a = obj->child; a && !dup; a = a->next)
      for (kaun__json *b = a->next; b; b = b->next)
        if (a->key_len == b->key_len && memcmp(a->key, b->key, a->key_len) == 0) {
          dup = b;
          break;
        }
  } else {
    kaun__json **v = malloc(obj->count * sizeof *v);
    if (!v) return nomem(ps);
    size_t i = 0;
    for (kaun__json *a = obj->child; a; a = a->next) v[i++] = a;
    qsort(v, obj->count, sizeof *v, key_cmp);
    for (i = 1; i < obj->count; i++)
      if (key_cmp(&v[i - 1], &v[i]) == 0) {
        dup = v[i]->line > v[i - 1]->line ? v[i] : v[i - 1];
        break;
      }
    free(v);
  }
  if (!dup) return 0;
  char shown[KAUN__SHOWN];
  ps->rc = kaun__error_set(ps->err, KAUN_EDUPLICATE, "%s%sline %u: duplicate key \"%s\"",
                           ps->name ? ps->name : "", ps->name ? ": " : "", dup->line,
                           kaun__str_escape(dup->key, dup->key_len, shown, sizeof shown));
  return ps->rc;
}

static int parse_value(parser *ps, kaun__json *v, int depth);

static int parse_container(parser *ps, kaun__json *v, int depth, bool object) {
  if (depth >= MAX_DEPTH) return fail(ps, "nesting deeper than 128 levels");
  v->type = object ? KAUN__JSON_OBJECT : KAUN__JSON_ARRAY;
  char close = object ? '}' : ']';
  ps->p++;
  skip_ws(ps);
  if (ps->p < ps->end && *ps->p == close) {
    ps->p++;
    return 0;
  }
  kaun__json **tail = &v->child;
  for (;;) {
    kaun__json *m = arena_alloc(ps->doc, sizeof *m);
    if (!m) return nomem(ps);
    memset(m, 0, sizeof *m);
    skip_ws(ps);
    if (object) {
      if (ps->p >= ps->end || *ps->p != '"') return fail(ps, "expected a string key");
      m->line = ps->line;
      if (parse_string(ps, &m->key, &m->key_len)) return ps->rc;
      skip_ws(ps);
      if (ps->p >= ps->end || *ps->p != ':') return fail(ps, "expected ':' after a key");
      ps->p++;
    }
    if (parse_value(ps, m, depth + 1)) return ps->rc;
    *tail = m;
    tail = &m->next;
    v->count++;
    skip_ws(ps);
    if (ps->p >= ps->end) return fail(ps, object ? "unterminated object" : "unterminated array");
    if (*ps->p == ',') {
      ps->p++;
      continue;
    }
    if (*ps->p == close) {
      ps->p++;
      break;
    }
    return fail(ps, object ? "expected ',' or '}'" : "expected ',' or ']'");
  }
  return object ? check_duplicates(ps, v) : 0;
}

static bool literal(parser *ps, const char *word) {
  size_t n = strlen(word);
  if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0) return false;
  ps->p += n;
  return true;
}

static int parse_value(parser *ps, kaun__json *v, int depth) {
  skip_ws(ps);
  if (ps->p >= ps->end) return fail(ps, "unexpected end of JSON");
  unsigned key_line = v->line;
  v->line = ps->line;
  if (!key_line) key_line = v->line;
  char c = *ps->p;
  int rc;
  switch (c) {
    case '{': rc = parse_container(ps, v, depth, true); break;
    case '[': rc = parse_container(ps, v, depth, false); break;
    case '"':
      v->type = KAUN__JSON_STRING;
      rc = parse_string(ps, &v->text, &v->text_len);
      break;
    case 't':
      v->type = KAUN__JSON_TRUE;
      rc = literal(ps, "true") ? 0 : fail(ps, "invalid literal");
      break;
    case 'f':
      v->type = KAUN__JSON_FALSE;
      rc = literal(ps, "false") ? 0 : fail(ps, "invalid literal");
      break;
    case 'n':
      v->type = KAUN__JSON_NULL;
      rc = literal(ps, "null") ? 0 : fail(ps, "invalid literal");
      break;
    default:
      if (c == '-' || (c >= '0' && c <= '9'))
        rc = parse_number(ps, v);
      else
        rc = fail(ps, "expected a JSON value");
  }
  /* members report the line of their key: that is what a reader looks for */
  if (v->key) v->line = key_line;
  return rc;
}

/* The length of the valid UTF-8 sequence at s[0] (no overlongs, no
 * surrogates, <= U+10FFFF), or 0.  `avail` bytes may be read. */
static size_t utf8_seq(const unsigned char *s, size_t avail) {
  unsigned char c = s[0];
  if (c < 0x80) return 1;
  size_t n;
  unsigned cp;
  if (c >= 0xC2 && c <= 0xDF) {
    n = 1;
    cp = c & 0x1F;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 2;
    cp = c & 0x0F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 3;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (avail <= n) return 0;
  for (size_t k = 1; k <= n; k++) {
    if ((s[k] & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (s[k] & 0x3F);
  }
  if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10FFFF ||
      (cp >= 0xD800 && cp <= 0xDFFF))
    return 0;
  return n + 1;
}

size_t kaun__utf8_check(const char *str, size_t len) {
  const unsigned char *s = (const unsigned char *)str;
  size_t i = 0;
  while (i < len) {
    if (s[i] < 0x80) {
      i++;
      continue;
    }
    size_t n = utf8_seq(s + i, len - i);
    if (!n) return i;
    i += n;
  }
  return len;
}

const char *kaun__str_escape(const char *str, size_t n, char *buf, size_t size) {
  static const char hex[] = "0123456789abcdef";
  const unsigned char *s = (const unsigned char *)str;
  size_t o = 0, cut = 0;
  if (size < 4) {
    if (size) buf[0] = '\0';
    return buf;
  }
  for (size_t i = 0; i < n;) {
    char piece[8];
    size_t len = 0, used = 1;
    unsigned char c = s[i];
    size_t seq = c >= 0x80 ? utf8_seq(s + i, n - i) : 1;
    /* C1 controls (U+0080..U+009F, C2 80..C2 9F) act on some terminals */
    if (seq == 2 && c == 0xC2 && s[i + 1] < 0xA0) seq = 0;
    if (c == '\\' || c == '\n' || c == '\t' || c == '\r' || c == 0) {
      piece[len++] = '\\';
      piece[len++] = c == '\\' ? '\\' : c == '\n' ? 'n' : c == '\t' ? 't' : c == '\r' ? 'r' : '0';
    } else if (c < 0x20 || c == 0x7F || seq == 0) {
      piece[len++] = '\\';
      piece[len++] = 'x';
      piece[len++] = hex[c >> 4];
      piece[len++] = hex[c & 15];
    } else {
      used = seq;
      memcpy(piece, s + i, seq);
      len = seq;
    }
    if (o + len + 1 > size) { /* cut after the last piece that leaves room for "..." */
      memcpy(buf + cut, "...", 4);
      return buf;
    }
    memcpy(buf + o, piece, len);
    o += len;
    i += used;
    if (o + 4 <= size) cut = o;
  }
  buf[o] = '\0';
  return buf;
}

int kaun__json_parse(const char *text, size_t len, const char *name, int syntax_code,
                     kaun__json_doc **out, kaun_error *err) {
  *out = NULL;
  size_t bad = kaun__utf8_check(text, len);
  if (bad != len)
    return kaun__error_set(err, KAUN_EHEADER_UTF8, "%s%sinvalid UTF-8 at byte %zu",
                           name ? name : "", name ? ": " : "", bad);
  kaun__json_doc *doc = calloc(1, sizeof *doc);
  if (!doc) return kaun__error_nomem(err, "parsing JSON");
  parser ps = {text, text + len, text, name, syntax_code, 1, text, doc, err, 0};
  kaun__json *root = arena_alloc(doc, sizeof *root);
  if (!root) {
    kaun__json_free(doc);
    return kaun__error_nomem(err, "parsing JSON");
  }
  memset(root, 0, sizeof *root);
  if (parse_value(&ps, root, 0) == 0) {
    skip_ws(&ps);
    if (ps.p != ps.end) fail(&ps, "unexpected data after the JSON value");
  }
  if (ps.rc) {
    kaun__json_free(doc);
    return ps.rc;
  }
  doc->root = root;
  *out = doc;
  return KAUN_OK;
}

bool kaun__json_key_is(const kaun__json *m, const char *key) {
  size_t n = strlen(key);
  return m->key && m->key_len == n && memcmp(m->key, key, n) == 0;
}

kaun__json *kaun__json_get(const kaun__json *obj, const char *key) {
  if (!obj || obj->type != KAUN__JSON_OBJECT) return NULL;
  size_t n = strlen(key);
  for (kaun__json *m = obj->child; m; m = m->next)
    if (m->key_len == n && memcmp(m->key, key, n) == 0) return m;
  return NULL;
}

bool kaun__json_u64(const kaun__json *v, uint64_t *out) {
  if (v->type != KAUN__JSON_NUMBER || v->text_len == 0) return false;
  uint64_t x = 0;
  for (size_t i = 0; i < v->text_len; i++) {
    char c = v->text[i];
    if (c < '0' || c > '9') return false;
    if (kaun__mul_overflow(x, 10, &x) || kaun__add_overflow(x, (uint64_t)(c - '0'), &x))
      return false;
  }
  *out = x;
  return true;
}

const char *kaun__json_type_name(kaun__json_type t) {
  switch (t) {
    case KAUN__JSON_NULL: return "null";
    case KAUN__JSON_FALSE:
    case KAUN__JSON_TRUE: return "a boolean";
    case KAUN__JSON_NUMBER: return "a number";
    case KAUN__JSON_STRING: return "a string";
    case KAUN__JSON_ARRAY: return "an array";
    case KAUN__JSON_OBJECT: return "an object";
  }
  return "a value";
}
