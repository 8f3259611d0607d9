/* Growable strings and the JSON string escaper. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void kaun__strbuf_free(kaun__strbuf *sb) {
  free(sb->data);
  sb->data = NULL;
  sb->len = sb->cap = 0;
}

static bool reserve(kaun__strbuf *sb, size_t extra) {
  if (sb->failed) return false;
  size_t need;
  if (__builtin_add_overflow(sb->len, extra + 1, &need)) {
    sb->failed = true;
    return false;
  }
  if (need <= sb->cap) return true;
  size_t cap = sb->cap ? sb->cap : 64;
  while (cap < need) {
    if (cap > SIZE_MAX / 2) {
      cap = need;
      break;
    }
    cap *= 2;
  }
  char *p = realloc(sb->data, cap);
  if (!p) {
    sb->failed = true;
    return false;
  }
  sb->data = p;
  sb->cap = cap;
  return true;
}

void kaun__strbuf_append(kaun__strbuf *sb, const char *s, size_t n) {
  if (!reserve(sb, n)) return;
  if (n) memcpy(sb->data + sb->len, s, n);
  sb->len += n;
  sb->data[sb->len] = '\0';
}

void kaun__strbuf_puts(kaun__strbuf *sb, const char *s) { kaun__strbuf_append(sb, s, strlen(s)); }

void kaun__strbuf_printf(kaun__strbuf *sb, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  va_list ap2;
  va_copy(ap2, ap);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n >= 0 && reserve(sb, (size_t)n)) {
    vsnprintf(sb->data + sb->len, (size_t)n + 1, fmt, ap2);
    sb->len += (size_t)n;
  }
  va_end(ap2);
}

void kaun__strbuf_json_string(kaun__strbuf *sb, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  kaun__strbuf_append(sb, "\"", 1);
  size_t start = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    const char *esc = NULL;
    char ubuf[7];
    switch (c) {
      case '"': esc = "\\\""; break;
      case '\\': esc = "\\\\"; break;
      case '\b': esc = "\\b"; break;
      case '\f': esc = "\\f"; break;
      case '\n': esc = "\\n"; break;
      case '\r': esc = "\\r"; break;
      case '\t': esc = "\\t"; break;
      default:
        if (c < 0x20) {
          ubuf[0] = '\\';
          ubuf[1] = 'u';
          ubuf[2] = '0';
          ubuf[3] = '0';
          ubuf[4] = hex[c >> 4];
          ubuf[5] = hex[c & 15];
          ubuf[6] = '\0';
          esc = ubuf;
        }
    }
    if (esc) {
      kaun__strbuf_append(sb, s + start, i - start);
      kaun__strbuf_puts(sb, esc);
      start = i + 1;
    }
  }
  kaun__strbuf_append(sb, s + start, n - start);
  kaun__strbuf_append(sb, "\"", 1);
}
