/* kaun — a strict, small JSON reader (RFC 8259) used for SafeTensors
 * headers and index files.  Private to libkaun.
 *
 * Why not json-c: SafeTensors needs duplicate keys rejected, offsets read
 * as exact unsigned 64-bit integers, and the line of every value for
 * messages; json-c silently keeps the last duplicate and converts large
 * numbers to doubles.  See docs/design-notes.md. */
#ifndef KAUN_JSON_H
#define KAUN_JSON_H

#ifndef KAUN_BUILDING_LIBRARY
#error "core/json.h is private to libkaun"
#endif

#include "internal.h"

typedef enum kaun__json_type {
  KAUN__JSON_NULL,
  KAUN__JSON_FALSE,
  KAUN__JSON_TRUE,
  KAUN__JSON_NUMBER,
  KAUN__JSON_STRING,
  KAUN__JSON_ARRAY,
  KAUN__JSON_OBJECT
} kaun__json_type;

typedef struct kaun__json kaun__json;
struct kaun__json {
  kaun__json_type type;
  unsigned line; /* 1-based line where the value starts */
  /* Strings carry their length: a decoded "\u0000" is a NUL byte inside
   * them.  Both are also NUL-terminated, for messages and old callers. */
  const char *key; /* member name when inside an object */
  size_t key_len;
  const char *text; /* string contents (decoded) or number text */
  size_t text_len;
  size_t count;      /* members of an array or object */
  kaun__json *child; /* first member */
  kaun__json *next;  /* next sibling */
};

typedef struct kaun__json_doc kaun__json_doc;

/* Parses `len` bytes.  The text must be valid UTF-8 (checked).  On
 * failure returns KAUN_EHEADER_UTF8 or `syntax_code`, with a message
 * "NAME: line L, column C: what" (NAME may be NULL).  Duplicate keys in an
 * object are rejected with KAUN_EDUPLICATE. */
int kaun__json_parse(const char *text, size_t len, const char *name, int syntax_code,
                     kaun__json_doc **out, kaun_error *err);
void kaun__json_free(kaun__json_doc *doc);
kaun__json *kaun__json_root(kaun__json_doc *doc);

/* Member of an object by name, or NULL. */
kaun__json *kaun__json_get(const kaun__json *obj, const char *key);
/* True when member `m`'s name is exactly `key` (length included: a key
 * "__metadata__\u0000x" is not "__metadata__"). */
bool kaun__json_key_is(const kaun__json *m, const char *key);
/* Parses a number as an unsigned 64-bit integer: digits only, no sign,
 * fraction or exponent.  Returns false when it is not one or overflows. */
bool kaun__json_u64(const kaun__json *v, uint64_t *out);
/* The JSON type's name, for messages ("a string"). */
const char *kaun__json_type_name(kaun__json_type t);

/* `n` bytes of a name from a file, made safe to quote in a message: bytes
 * below 0x20, DEL, C1 controls and invalid UTF-8 become \n, \t, \r, \0 or
 * \xHH, a backslash \\; the rest (valid UTF-8) is kept.  Written to `buf`
 * (always NUL-terminated; cut with "..." when longer than `size` allows).
 * Returns `buf`. */
const char *kaun__str_escape(const char *s, size_t n, char *buf, size_t size);
/* The buffer size kaun__str_escape is usually given in messages. */
#define KAUN__SHOWN 256

/* Checks UTF-8 (no overlongs, no surrogates, <= U+10FFFF).  Returns the
 * offset of the first bad byte, or `len` when all is well. */
size_t kaun__utf8_check(const char *s, size_t len);

#endif
