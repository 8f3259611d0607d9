/* kaun — common definitions shared by every public header.
 *
 * Not meant to be included on its own: include <kaun.h> or one of the
 * per-concept headers under <kaun/>.
 */
#ifndef KAUN_COMMON_H
#define KAUN_COMMON_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define KAUN_API __declspec(dllexport)
#elif defined(__GNUC__)
#define KAUN_API __attribute__((visibility("default")))
#else
#define KAUN_API
#endif

#ifdef __cplusplus
#define KAUN_BEGIN_DECLS extern "C" {
#define KAUN_END_DECLS }
#else
#define KAUN_BEGIN_DECLS
#define KAUN_END_DECLS
#endif

#define KAUN_VERSION_MAJOR 0
#define KAUN_VERSION_MINOR 1
#define KAUN_VERSION_PATCH 0
#define KAUN_VERSION_STRING "0.1.0"
/* One number that grows with every release: MAJOR*10000 + MINOR*100 + PATCH. */
#define KAUN_VERSION_NUMBER \
  (KAUN_VERSION_MAJOR * 10000 + KAUN_VERSION_MINOR * 100 + KAUN_VERSION_PATCH)

KAUN_BEGIN_DECLS

/* The version of the library actually loaded, as KAUN_VERSION_NUMBER would
 * say it.  Compare with KAUN_VERSION_NUMBER to detect a header/library
 * mismatch.  Thread-safe. */
KAUN_API int kaun_version(void);

/* The same, as a string ("0.1.0").  Static storage; never free it. */
KAUN_API const char *kaun_version_string(void);

KAUN_END_DECLS

#endif
