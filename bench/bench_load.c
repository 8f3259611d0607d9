/* kaun load benchmarks against the physical limits, in one run.
 *
 *   bench_load DIR [RUNS]
 *
 * Makes a 1 GiB F32 and a 1 GiB BF16 checkpoint in DIR (and a sparse
 * 10 GiB one), warms the page cache, then times each operation RUNS times
 * (default 5), each run in a fresh child process so that page faults on
 * fresh memory and peak RSS are measured as a real load would see them.
 * Prints a Markdown table: medians, ratio to the limit, peak RSS. */
#include <kaun.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define GIB (1024.0 * 1024.0 * 1024.0)

static char f32_path[4096], bf16_path[4096], sparse_path[4096];
static volatile uint64_t sink;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what, const kaun_error *err) {
  fprintf(stderr, "bench_load: %s: %s\n", what, err ? err->message : strerror(errno));
  exit(1);
}

static uint64_t touch(const void *p, size_t n) {
  const uint64_t *w = p;
  uint64_t s = 0;
  for (size_t i = 0; i < n / 8; i++) s += w[i];
  return s;
}

/* ---- the operations (each returns after doing the work once) ---------------- */

static void op_kaun_zero_copy(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_flat *flat;
  if (kaun_checkpoint_load_flat(NULL, f32_path, 0, &flat, &err)) die("load", &err);
  uint64_t s = 0;
  for (size_t i = 0; i < kaun_flat_count(flat); i++) {
    const kaun_tensor *t = kaun_flat_tensor(flat, i);
    s += touch(kaun_tensor_data(t), kaun_tensor_nbytes(t));
  }
  sink = s;
  kaun_flat_free(flat);
}

static void op_mmap_touch(void) {
  int fd = open(f32_path, O_RDONLY);
  struct stat sb;
  fstat(fd, &sb);
  void *p = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (p == MAP_FAILED) die("mmap", NULL);
  sink = touch(p, (size_t)sb.st_size);
  munmap(p, (size_t)sb.st_size);
  close(fd);
}

static void op_kaun_copy(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_flat *flat;
  if (kaun_checkpoint_load_flat(NULL, f32_path, KAUN_LOAD_COPY, &flat, &err)) die("load", &err);
  sink = kaun_flat_count(flat);
  kaun_flat_free(flat);
}

typedef struct pread_part {
  int fd;
  char *dst;
  size_t len;
  off_t off;
} pread_part;

static void *pread_worker(void *arg) {
  pread_part *p = arg;
  size_t done = 0;
  while (done < p->len) {
    ssize_t n = pread(p->fd, p->dst + done, p->len - done, p->off + (off_t)done);
    if (n <= 0) die("pread", NULL);
    done += (size_t)n;
  }
  return NULL;
}

static void op_two_thread_pread(void) {
  int fd = open(f32_path, O_RDONLY);
  struct stat sb;
  fstat(fd, &sb);
  size_t n = (size_t)sb.st_size;
  char *dst = malloc(n);
  pread_part parts[2] = {{fd, dst, n / 2, 0}, {fd, dst + n / 2, n - n / 2, (off_t)(n / 2)}};
  pthread_t t;
  pthread_create(&t, NULL, pread_worker, &parts[1]);
  pread_worker(&parts[0]);
  pthread_join(t, NULL);
  sink = (uint64_t)dst[n - 1];
  free(dst);
  close(fd);
}

static void op_kaun_cast(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_flat *flat;
  if (kaun_checkpoint_load_flat(NULL, bf16_path, 0, &flat, &err)) die("load", &err);
  kaun_tensor *out;
  if (kaun_tensor_cast(kaun_flat_tensor(flat, 0), KAUN_DTYPE_F32, &out, &err)) die("cast", &err);
  sink = kaun_tensor_nbytes(out);
  kaun_tensor_free(out);
  kaun_flat_free(flat);
}

/* Called through a volatile pointer so the compiler cannot elide the writes. */
static void *(*volatile fill)(void *, int, size_t) = memset;

static void op_fresh_write(void) {
  size_t n = (size_t)(2 * GIB);
  char *p = malloc(n);
  fill(p, 1, n);
  sink = (uint64_t)p[n - 1];
  free(p);
}

static void op_cat(void) {
  char cmd[4200];
  snprintf(cmd, sizeof cmd, "cat '%s' > /dev/null", f32_path);
  if (system(cmd) != 0) die("cat", NULL);
}

static void op_header_1g(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_safetensors *st;
  if (kaun_safetensors_read_file(f32_path, &st, &err)) die("header", &err);
  kaun_safetensors_free(st);
}

static void op_header_10g(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_safetensors *st;
  if (kaun_safetensors_read_file(sparse_path, &st, &err)) die("header", &err);
  kaun_safetensors_free(st);
}

static void op_open_10g(void) {
  kaun_error err = KAUN_ERROR_INIT;
  kaun_flat *flat;
  if (kaun_checkpoint_load_flat(NULL, sparse_path, 0, &flat, &err)) die("open", &err);
  kaun_flat_free(flat);
}

/* ---- measuring ------------------------------------------------------------------ */

typedef struct result {
  double median_s;
  double peak_rss_mib;
} result;

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* One run of `op` in a fresh child: its time and peak RSS. */
static void run_once(void (*op)(void), double *time_s, double *rss_mib) {
  int fds[2];
  if (pipe(fds) != 0) die("pipe", NULL);
  pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    double t0 = now();
    op();
    double dt = now() - t0;
    if (write(fds[1], &dt, sizeof dt) != sizeof dt) _exit(1);
    _exit(0);
  }
  close(fds[1]);
  double dt = 0;
  if (read(fds[0], &dt, sizeof dt) != sizeof dt) die("child", NULL);
  close(fds[0]);
  int status;
  struct rusage ru;
  wait4(pid, &status, 0, &ru);
  *time_s = dt;
  *rss_mib = (double)ru.ru_maxrss / 1024.0;
}

static result summarize(double *times, double *rss, int runs) {
  qsort(times, (size_t)runs, sizeof *times, cmp_double);
  qsort(rss, (size_t)runs, sizeof *rss, cmp_double);
  return (result){times[runs / 2], rss[runs - 1]};
}

static result measure(void (*op)(void), int runs) {
  double times[64], rss[64];
  for (int r = 0; r < runs; r++) run_once(op, &times[r], &rss[r]);
  return summarize(times, rss, runs);
}

/* kaun and its limit alternate run by run, so that a change in the
 * machine's load during the benchmark falls on both alike. */
static void measure_pair(void (*a)(void), void (*b)(void), int runs, result *ra, result *rb) {
  double ta[64], sa[64], tb[64], sb[64];
  for (int r = 0; r < runs; r++) {
    run_once(a, &ta[r], &sa[r]);
    run_once(b, &tb[r], &sb[r]);
  }
  *ra = summarize(ta, sa, runs);
  *rb = summarize(tb, sb, runs);
}

static void make_file(const char *path, kaun_dtype dtype, uint64_t bytes) {
  struct stat sb;
  if (stat(path, &sb) == 0) return;
  kaun_error err = KAUN_ERROR_INIT;
  const uint64_t shape[] = {bytes / (kaun_dtype_bits(dtype) / 8)};
  kaun_tensor *t;
  if (kaun_tensor_new(dtype, 1, shape, &t, &err)) die("tensor", &err);
  unsigned char *p;
  if (kaun_tensor_data_mut(t, (void **)&p, &err)) die("tensor", &err);
  for (uint64_t i = 0; i < bytes; i += 2) { /* plausible values: 0x3F.. patterns */
    p[i] = (unsigned char)(i * 2654435761u >> 24);
    p[i + 1] = 0x3F;
  }
  kaun_flat *flat;
  kaun_flat_new(&flat, &err);
  kaun_flat_add(flat, "weight", t, &err);
  if (kaun_safetensors_save(NULL, path, flat, &err)) die("save", &err);
  kaun_flat_free(flat);
}

/* A 10 GiB file whose data is a hole: the header is real. */
static void make_sparse(const char *path) {
  struct stat sb;
  if (stat(path, &sb) == 0) return;
  kaun_error err = KAUN_ERROR_INIT;
  const uint64_t bytes = 10ull << 30;
  char header[256];
  int n = snprintf(header, sizeof header,
                   "{\"weight\":{\"dtype\":\"F32\",\"shape\":[%llu],\"data_offsets\":[0,%llu]}}",
                   (unsigned long long)(bytes / 4), (unsigned long long)bytes);
  while (n % 8) header[n++] = ' ';
  unsigned char len[8];
  for (int i = 0; i < 8; i++) len[i] = (unsigned char)((uint64_t)n >> (8 * i));
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0 || write(fd, len, 8) != 8 || write(fd, header, (size_t)n) != n ||
      ftruncate(fd, (off_t)(8 + (uint64_t)n + bytes)) != 0)
    die("sparse file", NULL);
  close(fd);
  (void)err;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: bench_load DIR [RUNS]\n");
    return 2;
  }
  int runs = argc > 2 ? atoi(argv[2]) : 5;
  if (runs < 1 || runs > 64) runs = 5;
  mkdir(argv[1], 0755);
  snprintf(f32_path, sizeof f32_path, "%s/f32-1g.safetensors", argv[1]);
  snprintf(bf16_path, sizeof bf16_path, "%s/bf16-1g.safetensors", argv[1]);
  snprintf(sparse_path, sizeof sparse_path, "%s/sparse-10g.safetensors", argv[1]);
  make_file(f32_path, KAUN_DTYPE_F32, 1ull << 30);
  make_file(bf16_path, KAUN_DTYPE_BF16, 1ull << 30);
  make_sparse(sparse_path);
  op_cat(); /* warm the page cache */
  char cmd[4200];
  snprintf(cmd, sizeof cmd, "cat '%s' > /dev/null", bf16_path);
  if (system(cmd) != 0) die("cat", NULL);

  struct {
    const char *name;
    void (*kaun)(void);
    const char *limit_name;
    void (*limit)(void);
    double target;
  } rows[] = {
      {"(a) zero-copy load, every byte touched", op_kaun_zero_copy, "mmap + touch loop",
       op_mmap_touch, 1.10},
      {"(b) load into owned memory (KAUN_LOAD_COPY)", op_kaun_copy,
       "2 threads pread into fresh memory", op_two_thread_pread, 1.15},
      {"(c) BF16 -> F32 cast of 1 GiB", op_kaun_cast, "write 2 GiB of fresh memory", op_fresh_write,
       1.30},
      {"cat FILE > /dev/null (1 GiB, reference)", op_cat, NULL, NULL, 0},
  };
  printf("Runs per measurement: %d (median time; peak RSS is the largest over the runs)\n\n", runs);
  printf(
      "| operation | kaun | limit | limit loop | ratio | target | kaun peak RSS | limit peak RSS "
      "|\n");
  printf("|---|---|---|---|---|---|---|---|\n");
  for (size_t i = 0; i < sizeof rows / sizeof *rows; i++) {
    /* sub-0.1 s operations are noisy on shared machines: give them more runs */
    int n = i == 0 ? (runs * 3 > 64 ? 64 : runs * 3) : runs;
    result k, l;
    if (!rows[i].limit) {
      k = measure(rows[i].kaun, n);
      printf("| %s | %.3f s (%.2f GB/s) | | | | | %.0f MiB | |\n", rows[i].name, k.median_s,
             (double)(1ull << 30) / k.median_s / 1e9, k.peak_rss_mib);
      continue;
    }
    measure_pair(rows[i].kaun, rows[i].limit, n, &k, &l);
    printf("| %s | %.3f s | %.3f s | %s | %.2fx | <= %.2fx | %.0f MiB | %.0f MiB |\n", rows[i].name,
           k.median_s, l.median_s, rows[i].limit_name, k.median_s / l.median_s, rows[i].target,
           k.peak_rss_mib, l.peak_rss_mib);
  }
  result h1 = measure(op_header_1g, runs), h10 = measure(op_header_10g, runs);
  result o10 = measure(op_open_10g, runs);
  printf("\n| header | time |\n|---|---|\n");
  printf("| read + validate header, 1 GiB file | %.1f us |\n", h1.median_s * 1e6);
  printf("| read + validate header, 10 GiB file | %.1f us |\n", h10.median_s * 1e6);
  printf("| open 10 GiB file (map + parse, zero-copy views) | %.1f us |\n", o10.median_s * 1e6);
  return 0;
}
