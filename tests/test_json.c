/* The strict JSON reader. */
#include <stdlib.h>
#include <string.h>

#include "../core/json.h"
#include "unit.h"

static int parse(const char *text, kaun__json_doc **doc, kaun_error *err) {
  return kaun__json_parse(text, strlen(text), "t.json", KAUN_EHEADER_JSON, doc, err);
}

static void test_values(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun__json_doc *doc;
  ASSERT_OK(parse(" {\"a\": [1, 2, 18446744073709551615], \"s\": \"x\\u00e9\\ud83d\\ude00\\n\","
                  " \"t\": true, \"n\": null, \"f\": -1.5e3}",
                  &doc, &err),
            err);
  kaun__json *root = kaun__json_root(doc);
  CU_ASSERT_EQUAL(root->type, KAUN__JSON_OBJECT);
  CU_ASSERT_EQUAL(root->count, 5);
  kaun__json *a = kaun__json_get(root, "a");
  uint64_t v;
  CU_ASSERT_TRUE(kaun__json_u64(a->child->next->next, &v));
  CU_ASSERT_EQUAL(v, UINT64_MAX);
  kaun__json *s = kaun__json_get(root, "s");
  CU_ASSERT_STRING_EQUAL(s->text, "x\xc3\xa9\xf0\x9f\x98\x80\n");
  CU_ASSERT_FALSE(kaun__json_u64(kaun__json_get(root, "f"), &v));
  CU_ASSERT_PTR_NULL(kaun__json_get(root, "missing"));
  kaun__json_free(doc);
}

static void test_u64_limits(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun__json_doc *doc;
  ASSERT_FAILS(parse("[007]", &doc, &err), err, KAUN_EHEADER_JSON, "expected ','");
  ASSERT_FAILS(parse("[1.]", &doc, &err), err, KAUN_EHEADER_JSON, "invalid number");
  ASSERT_OK(parse("[18446744073709551616, -0, 1e3]", &doc, &err), err);
  uint64_t v;
  kaun__json *c = kaun__json_root(doc)->child;
  CU_ASSERT_FALSE(kaun__json_u64(c, &v));             /* overflow */
  CU_ASSERT_FALSE(kaun__json_u64(c->next, &v));       /* a sign */
  CU_ASSERT_FALSE(kaun__json_u64(c->next->next, &v)); /* an exponent */
  kaun__json_free(doc);
}

static void test_errors_have_lines(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun__json_doc *doc;
  ASSERT_FAILS(parse("{\n\"a\": 1,\n\"b\": }", &doc, &err), err, KAUN_EHEADER_JSON,
               "t.json: line 3, column 6");
  ASSERT_FAILS(parse("{\"a\": 1} x", &doc, &err), err, KAUN_EHEADER_JSON, "after the JSON");
  ASSERT_FAILS(parse("{\"a\": \"\\ud800\"}", &doc, &err), err, KAUN_EHEADER_JSON, "surrogate");
  ASSERT_FAILS(parse("{\"a\": \"\\q\"}", &doc, &err), err, KAUN_EHEADER_JSON, "escape");
  ASSERT_FAILS(parse("{\"a\": \"tab\there\"}", &doc, &err), err, KAUN_EHEADER_JSON,
               "control character");
  ASSERT_FAILS(parse("{\"a\": tru}", &doc, &err), err, KAUN_EHEADER_JSON, "literal");
  ASSERT_FAILS(parse("{\"a\": 1,}", &doc, &err), err, KAUN_EHEADER_JSON, "string key");
  ASSERT_FAILS(parse("[1 2]", &doc, &err), err, KAUN_EHEADER_JSON, "expected ','");
  ASSERT_FAILS(parse("", &doc, &err), err, KAUN_EHEADER_JSON, "end of JSON");
  ASSERT_FAILS(parse("{\"a\": \"open", &doc, &err), err, KAUN_EHEADER_JSON, "unterminated");
  char deep[300];
  memset(deep, '[', 200);
  deep[200] = '\0';
  ASSERT_FAILS(parse(deep, &doc, &err), err, KAUN_EHEADER_JSON, "nesting");
}

static void test_duplicates(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun__json_doc *doc;
  ASSERT_FAILS(parse("{\"a\": 1,\n \"a\": 2}", &doc, &err), err, KAUN_EDUPLICATE,
               "line 2: duplicate key \"a\"");
  /* the sorted path for large objects */
  char big[4096] = "{";
  for (int i = 0; i < 40; i++) {
    char item[32];
    snprintf(item, sizeof item, "%s\"k%d\": %d", i ? "," : "", i, i);
    strcat(big, item);
  }
  strcat(big, ", \"k17\": 0}");
  ASSERT_FAILS(parse(big, &doc, &err), err, KAUN_EDUPLICATE, "\"k17\"");
  /* same key in different objects is fine */
  ASSERT_OK(parse("{\"a\": {\"x\": 1}, \"b\": {\"x\": 1}}", &doc, &err), err);
  kaun__json_free(doc);
}

static void test_utf8(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun__json_doc *doc;
  const char *bad[] = {"{\"a\": \"\xc0\xaf\"}",         /* overlong */
                       "{\"a\": \"\xed\xa0\x80\"}",     /* encoded surrogate */
                       "{\"a\": \"\xf4\x90\x80\x80\"}", /* beyond U+10FFFF */
                       "{\"a\": \"\xe2\x82\"}",         /* truncated */
                       "{\"a\": \"\xff\"}"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
    ASSERT_FAILS(parse(bad[i], &doc, &err), err, KAUN_EHEADER_UTF8, "t.json: invalid UTF-8");
  CU_ASSERT_EQUAL(kaun__utf8_check("\xe2\x82\xac ok", 6), 6);
}

/* "\u0000" decodes to a NUL byte inside the string: lengths say where it ends. */
static void test_nul_in_strings(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun__json_doc *doc;
  ASSERT_OK(parse("{\"a\\u0000b\": \"x\\u0000\", \"a\": \"\", \"a\\u0000c\": 1}", &doc, &err), err);
  kaun__json *m = kaun__json_root(doc)->child;
  CU_ASSERT_EQUAL(m->key_len, 3);
  CU_ASSERT_EQUAL(memcmp(m->key, "a\0b", 4), 0);
  CU_ASSERT_EQUAL(m->text_len, 2);
  CU_ASSERT_EQUAL(memcmp(m->text, "x\0", 3), 0);
  CU_ASSERT_FALSE(kaun__json_key_is(m, "a")); /* compared whole */
  CU_ASSERT_TRUE(kaun__json_key_is(m->next, "a"));
  CU_ASSERT_PTR_EQUAL(kaun__json_get(kaun__json_root(doc), "a"), m->next);
  kaun__json_free(doc);
  /* keys that differ only after a NUL are distinct; equal ones are not */
  ASSERT_FAILS(parse("{\"a\\u0000b\": 1, \"a\\u0000b\": 2}", &doc, &err), err, KAUN_EDUPLICATE,
               "duplicate key \"a\\0b\"");
  char big[4096] = "{";
  for (int i = 0; i < 40; i++) {
    char item[40];
    snprintf(item, sizeof item, "%s\"k\\u0000%d\": %d", i ? "," : "", i, i);
    strcat(big, item);
  }
  strcat(big, ", \"k\\u000017\": 0}");
  ASSERT_FAILS(parse(big, &doc, &err), err, KAUN_EDUPLICATE, "\"k\\017\"");
  /* a duplicate key with control characters is quoted escaped, on one line */
  ASSERT_FAILS(parse("{\"\\n\\u001b[2J\": 1, \"\\n\\u001b[2J\": 2}", &doc, &err), err,
               KAUN_EDUPLICATE, "duplicate key \"\\n\\x1b[2J\"");
}

static void test_escape_for_messages(void) {
  char buf[KAUN__SHOWN];
  CU_ASSERT_STRING_EQUAL(kaun__str_escape("plain.name", 10, buf, sizeof buf), "plain.name");
  CU_ASSERT_STRING_EQUAL(kaun__str_escape("a\0b\n\t\r\\", 7, buf, sizeof buf),
                         "a\\0b\\n\\t\\r\\\\");
  CU_ASSERT_STRING_EQUAL(kaun__str_escape("\x1b[31m\x7f", 6, buf, sizeof buf), "\\x1b[31m\\x7f");
  /* UTF-8 is kept; C1 controls and bytes that are not UTF-8 are not */
  CU_ASSERT_STRING_EQUAL(kaun__str_escape("\xc3\xa9\xe2\x82\xac", 5, buf, sizeof buf),
                         "\xc3\xa9\xe2\x82\xac");
  CU_ASSERT_STRING_EQUAL(kaun__str_escape("\xc2\x9b"
                                          "1m\xff\xe2\x82",
                                          7, buf, sizeof buf),
                         "\\xc2\\x9b1m\\xff\\xe2\\x82");
  /* cut with "..." when it does not fit, never in the middle of an escape */
  char small[8];
  CU_ASSERT_STRING_EQUAL(kaun__str_escape("abcdefgh", 8, small, sizeof small), "abcd...");
  CU_ASSERT_STRING_EQUAL(kaun__str_escape("abcdefg", 7, small, sizeof small), "abcdefg");
  CU_ASSERT_STRING_EQUAL(kaun__str_escape("ab\x1b"
                                          "cdefg",
                                          8, small, sizeof small),
                         "ab...");
  CU_ASSERT_STRING_EQUAL(kaun__str_escape("", 0, small, sizeof small), "");
}

void register_json_tests(void) {
  static const unit_test tests[] = {
      {"values, escapes and exact integers", test_values},
      {"u64 parsing refuses non-integers", test_u64_limits},
      {"syntax errors give line and column", test_errors_have_lines},
      {"duplicate keys are rejected", test_duplicates},
      {"invalid UTF-8 is rejected", test_utf8},
      {"strings keep NUL bytes and their length", test_nul_in_strings},
      {"names are escaped for messages", test_escape_for_messages},
      {NULL, NULL}};
  add_suite("json", tests);
}
