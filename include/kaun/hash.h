/* kaun — hashing helpers (SHA-256 through OpenSSL's libcrypto). */
#ifndef KAUN_HASH_H
#define KAUN_HASH_H

#include <kaun/common.h>
#include <kaun/error.h>

KAUN_BEGIN_DECLS

#define KAUN_SHA256_HEX_SIZE 65 /* 64 hex digits and a NUL */

/* SHA-256 of `size` bytes, as lowercase hex.  Thread-safe.
 * Errors: KAUN_ENOMEM. */
KAUN_API int kaun_sha256_hex(const void *data, size_t size, char out[KAUN_SHA256_HEX_SIZE],
                             kaun_error *err);

KAUN_END_DECLS

#endif
