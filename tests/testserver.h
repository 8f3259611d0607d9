/* The tests' HTTP server (tests/servers/httpd.py) from C: start it on a
 * free port of 127.0.0.1, read its counters, set faults, stop it.
 * Header-only; each test program includes it once. */
#ifndef KAUN_TESTS_TESTSERVER_H
#define KAUN_TESTS_TESTSERVER_H

#include <arpa/inet.h>
#include <kaun.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct test_server {
  pid_t pid;
  int port;
  char url[64]; /* http://127.0.0.1:PORT */
} test_server;

/* A TCP port on 127.0.0.1 free now (for a server to bind, or to find
 * closed), or -1. */
static inline int test_free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  int port = -1;
  if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
      getsockname(fd, (struct sockaddr *)&a, &len) == 0)
    port = ntohs(a.sin_port);
  if (fd >= 0) close(fd);
  return port;
}

/* Starts the server on `root`; returns 0, or -1 with a message on stderr. */
static inline int test_server_start(test_server *s, const char *root, const char *port_file) {
  const char *src = getenv("KAUN_SRCDIR");
  char script[4096];
  snprintf(script, sizeof script, "%s/tests/servers/httpd.py", src ? src : ".");
  unlink(port_file);
  s->pid = fork();
  if (s->pid < 0) return -1;
  if (s->pid == 0) {
    execlp("python3", "python3", script, "--root", root, "--port", "0", "--port-file", port_file,
           (char *)NULL);
    _exit(127);
  }
  for (int i = 0; i < 200; i++) { /* up to 10 s */
    FILE *f = fopen(port_file, "r");
    if (f) {
      int ok = fscanf(f, "%d", &s->port) == 1;
      fclose(f);
      if (ok && s->port > 0) {
        snprintf(s->url, sizeof s->url, "http://127.0.0.1:%d", s->port);
        return 0;
      }
    }
    int status;
    if (waitpid(s->pid, &status, WNOHANG) == s->pid) break;
    struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  fprintf(stderr, "the test server (%s) did not start\n", script);
  kill(s->pid, SIGTERM);
  s->pid = 0;
  return -1;
}

static inline void test_server_stop(test_server *s) {
  if (s->pid <= 0) return;
  kill(s->pid, SIGTERM);
  int status;
  for (int i = 0; i < 100 && waitpid(s->pid, &status, WNOHANG) != s->pid; i++) {
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
    if (i == 99) {
      kill(s->pid, SIGKILL);
      waitpid(s->pid, &status, 0);
    }
  }
  s->pid = 0;
}

/* A control request (GET or POST to /__NAME) through kaun's own HTTP
 * client; the answer's body is copied to `out` (may be NULL). */
static inline int test_server_control(const test_server *s, kaun_http_method m, const char *what,
                                      const char *body, char *out, size_t size) {
  kaun_http *http;
  kaun_error err = KAUN_ERROR_INIT;
  kaun_http_options o = {.struct_size = sizeof o, .max_attempts = 1};
  if (kaun_http_new(&o, &http, &err)) return -1;
  char url[256];
  snprintf(url, sizeof url, "%s/__%s", s->url, what);
  kaun_http_request r = {.struct_size = sizeof r};
  r.method = m;
  r.url = url;
  r.body = body;
  r.body_size = body ? strlen(body) : 0;
  r.body_to = KAUN_HTTP_BODY_ALLOC;
  kaun_http_response *resp = NULL;
  int rc = kaun_http_perform(http, &r, &resp, &err);
  if (rc) fprintf(stderr, "test server control %s: %s\n", what, err.message);
  if (!rc && out) {
    size_t len;
    const char *b = kaun_http_response_body(resp, &len);
    snprintf(out, size, "%.*s", (int)len, b ? b : "");
  }
  kaun_http_response_free(resp);
  kaun_http_free(http);
  return rc;
}

static inline long long stat_once(const test_server *s, const char *key) {
  char body[65536], needle[64];
  if (test_server_control(s, KAUN_HTTP_GET, "stats", NULL, body, sizeof body)) return -1;
  snprintf(needle, sizeof needle, "\"%s\":", key);
  const char *p = strstr(body, needle);
  return p ? atoll(p + strlen(needle)) : -1;
}

/* A number from the stats: "requests", "connections" or "bytes_sent".
 * The server counts a response once it has sent it, which may be just
 * after the client has it all: read until two reads 30 ms apart agree. */
static inline long long test_server_stat(const test_server *s, const char *key) {
  long long last = stat_once(s, key);
  for (int i = 0; i < 50; i++) {
    struct timespec ts = {0, 30 * 1000 * 1000};
    nanosleep(&ts, NULL);
    long long now = stat_once(s, key);
    if (now == last) return now;
    last = now;
  }
  return last;
}

/* Zeroes the counters once what was sent before is counted (else bytes
 * of an earlier request could be counted after the reset). */
static inline void test_server_reset(const test_server *s) {
  (void)test_server_stat(s, "bytes_sent");
  test_server_control(s, KAUN_HTTP_POST, "reset", "", NULL, 0);
}

static inline void test_server_faults(const test_server *s, const char *json) {
  test_server_control(s, KAUN_HTTP_POST, "faults", json, NULL, 0);
}

#endif
