/* Status codes and error records. */
#include "internal.h"

#include <stdio.h>
#include <string.h>

const char *kaun_status_name(int code) {
  switch ((kaun_status)code) {
#define KAUN_STATUS_NAME_(name, value, text) \
  case KAUN_##name: return "KAUN_" #name;
    KAUN_STATUS_MAP(KAUN_STATUS_NAME_)
#undef KAUN_STATUS_NAME_
  }
  return "KAUN_E(unknown)";
}

const char *kaun_strerror(int code) {
  switch ((kaun_status)code) {
#define KAUN_STATUS_TEXT_(name, value, text) \
  case KAUN_##name: return text;
    KAUN_STATUS_MAP(KAUN_STATUS_TEXT_)
#undef KAUN_STATUS_TEXT_
  }
  return "unknown error code";
}

void kaun_error_clear(kaun_error *err) {
  if (err) memset(err, 0, sizeof *err);
}

static int error_vset(kaun_error *err, int code, int sys_errno, const char *fmt, va_list ap) {
  if (!err) return code;
  err->code = code;
  err->sys_errno = sys_errno;
  err->http_status = 0;
  int n = vsnprintf(err->message, sizeof err->message, fmt, ap);
  if (sys_errno && n >= 0 && (size_t)n < sizeof err->message) {
    snprintf(err->message + n, sizeof err->message - (size_t)n, ": %s", strerror(sys_errno));
  }
  return code;
}

int kaun__error_set(kaun_error *err, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  error_vset(err, code, 0, fmt, ap);
  va_end(ap);
  return code;
}

int kaun__error_sys(kaun_error *err, int code, int sys_errno, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  error_vset(err, code, sys_errno, fmt, ap);
  va_end(ap);
  return code;
}

int kaun__error_nomem(kaun_error *err, const char *what) {
  return kaun__error_set(err, KAUN_ENOMEM, "out of memory while %s", what);
}

void kaun__error_prefix(kaun_error *err, const char *fmt, ...) {
  if (!err) return;
  char prefix[KAUN_ERROR_MESSAGE_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(prefix, sizeof prefix, fmt, ap);
  va_end(ap);
  char old[KAUN_ERROR_MESSAGE_MAX];
  memcpy(old, err->message, sizeof old);
  size_t n = strlen(prefix);
  if (n >= sizeof err->message) n = sizeof err->message - 1;
  memcpy(err->message, prefix, n);
  size_t rest = strnlen(old, sizeof old);
  if (rest > sizeof err->message - 1 - n) rest = sizeof err->message - 1 - n;
  memcpy(err->message + n, old, rest);
  err->message[n + rest] = '\0';
}

int kaun_version(void) { return KAUN_VERSION_NUMBER; }

const char *kaun_version_string(void) { return KAUN_VERSION_STRING; }
