/* kaun — status codes and the caller-owned error record.
 *
 * Every fallible kaun function returns an int: KAUN_OK (0) on success, or
 * one of the negative KAUN_E* codes below.  When the caller passes a
 * kaun_error, the library fills it with the same code, the system errno
 * when one was involved, and a one-sentence message that names the object
 * at fault (file, tensor, key) and, where it can, says what to do.
 *
 * The list only ever grows: codes are never renumbered or reused.
 */
#ifndef KAUN_ERROR_H
#define KAUN_ERROR_H

#include <kaun/common.h>

KAUN_BEGIN_DECLS

/* X(NAME, value, description).  Append new codes at the end only. */
#define KAUN_STATUS_MAP(X)                                                     \
  X(OK, 0, "success")                                                          \
  X(EINVAL, -1, "invalid argument")                                            \
  X(ENOMEM, -2, "out of memory")                                               \
  X(EIO, -3, "storage input/output error")                                     \
  X(ENOENT, -4, "no such file or object")                                      \
  X(ENOTSUP, -5, "operation not supported")                                    \
  X(EHEADER_TOO_SMALL, -6, "file too small to hold a SafeTensors header")      \
  X(EHEADER_TOO_LARGE, -7, "SafeTensors header larger than 100,000,000 bytes") \
  X(EHEADER_LENGTH, -8, "SafeTensors header length exceeds the file")          \
  X(EHEADER_UTF8, -9, "SafeTensors header is not valid UTF-8")                 \
  X(EHEADER_JSON, -10, "SafeTensors header is not a valid JSON object")        \
  X(EDTYPE, -11, "unknown dtype")                                              \
  X(EOVERFLOW, -12, "shape and dtype size overflow")                           \
  X(EOFFSET, -13, "tensor data offsets are invalid")                           \
  X(ESIZE, -14, "tensor byte size does not match its shape and dtype")         \
  X(EINCOMPLETE, -15, "tensor data does not cover the file exactly")           \
  X(EMETADATA, -16, "__metadata__ is not a map of strings to strings")         \
  X(EDUPLICATE, -17, "duplicate name")                                         \
  X(EMISALIGNED, -18, "tensor size is not a whole number of bytes")            \
  X(EKEY, -19, "key not found")                                                \
  X(ESHAPE, -20, "shape mismatch")                                             \
  X(EINDEX, -21, "sharded checkpoint index is invalid")                        \
  X(EBADKEY, -22, "invalid key or path")                                       \
  X(EKIND, -23, "wrong kind of tree node")                                     \
  X(EURI, -24, "malformed URI")                                                \
  X(ECONFIG, -25, "invalid configuration")                                     \
  X(EPLUGIN, -26, "plugin cannot be loaded")                                   \
  X(EABI, -27, "plugin built for an incompatible ABI")                         \
  X(EBACKEND, -28, "no backend for this URI scheme")                           \
  X(EISDIR, -29, "object is a directory")                                      \
  X(ECHECKSUM, -30, "checksum mismatch")                                       \
  X(EACCESS, -31, "access outside the allowed root")                           \
  X(ETRANSIENT, -32, "temporary failure: retrying later may succeed")          \
  X(EAUTH, -33, "authentication or permission refused")                        \
  X(ECHANGED, -34, "object changed while it was being read")                   \
  X(ECANCELED, -35, "operation canceled")

typedef enum kaun_status {
#define KAUN_STATUS_ENUM_(name, value, text) KAUN_##name = (value),
  KAUN_STATUS_MAP(KAUN_STATUS_ENUM_)
#undef KAUN_STATUS_ENUM_
} kaun_status;

/* Size of the message buffer in kaun_error. */
#define KAUN_ERROR_MESSAGE_MAX 1024

/* The caller-owned error record.  Zero it (KAUN_ERROR_INIT) before use; a
 * successful call leaves it untouched.  Not shared between threads. */
typedef struct kaun_error {
  int code;         /* a kaun_status */
  int sys_errno;    /* errno of the failed system call, or 0 */
  long http_status; /* HTTP status of a failed transfer, or 0 */
  char message[KAUN_ERROR_MESSAGE_MAX];
} kaun_error;

#define KAUN_ERROR_INIT \
  {                     \
    0, 0, 0, { 0 }      \
  }

/* The name of a status code: "KAUN_EDTYPE".  Unknown codes give
 * "KAUN_E(unknown)".  Static storage; thread-safe. */
KAUN_API const char *kaun_status_name(int code);

/* A short description of a status code ("unknown dtype").  Static
 * storage; thread-safe. */
KAUN_API const char *kaun_strerror(int code);

/* Resets an error record to the KAUN_OK state.  Accepts NULL. */
KAUN_API void kaun_error_clear(kaun_error *err);

KAUN_END_DECLS

#endif
