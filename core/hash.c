/* SHA-256 through libcrypto's EVP interface (uses SHA extensions/AVX2). */
#include "internal.h"

#include <openssl/evp.h>

int kaun_sha256_hex(const void *data, size_t size, char out[KAUN_SHA256_HEX_SIZE],
                    kaun_error *err) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!EVP_Digest(data, size, md, &len, EVP_sha256(), NULL))
    return kaun__error_set(err, KAUN_ENOMEM, "libcrypto could not compute a SHA-256 digest");
  static const char hex[] = "0123456789abcdef";
  for (unsigned i = 0; i < len; i++) {
    out[2 * i] = hex[md[i] >> 4];
    out[2 * i + 1] = hex[md[i] & 15];
  }
  out[2 * len] = '\0';
  return KAUN_OK;
}
