/* libFuzzer target: any bytes as an S3 answer's XML body, through the s3
 * plugin's own readers (plugins/s3/s3.c is compiled into this file, so its
 * static functions are the ones tested): xml_text on the tags kaun reads
 * (entities and character references decoded), the error document
 * (s3_error_doc: Code and Message, for each kind of status), a
 * ListObjectsV2 page (list_page: Contents, Key, Size, IsTruncated,
 * NextContinuationToken) and an InitiateMultipartUploadResult's UploadId.
 * Decoded text is never longer than what it decodes; every error names
 * the object; list_page hands out only keys under the prefix.
 * Build and run: scripts/dev.sh fuzz [SECONDS] s3_xml. */
#include "../../plugins/s3/s3.c"
#include "../../plugins/s3/sigv4.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct listed {
  size_t n, stop_at;
} listed;

static int on_key(const char *name, uint64_t size, void *context) {
  (void)size;
  listed *l = context;
  if (!name[0]) abort(); /* the prefix itself is never listed */
  return ++l->n == l->stop_at;
}

/* Every <tag>...</tag> of `doc` in turn, bounded by `end` when given. */
static void every(const char *doc, const char *end, const char *tag) {
  const char *p = doc;
  size_t open = strlen(tag) + 2;
  for (;;) {
    const char *before = p;
    char *t = xml_text(&p, end, tag);
    if (!t) break;
    if (p <= before || (end && p > end + open + 1)) abort(); /* moves forward, stays in bounds */
    if (strlen(t) > (size_t)(p - before)) abort();           /* decoding never grows the text */
    free(t);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *doc = malloc(size + 1);
  if (!doc) return 0;
  memcpy(doc, data, size);
  doc[size] = '\0'; /* as the HTTP layer hands bodies over */

  static const char *const tags[] = {"Code", "Message", "Key", "Size", "UploadId", "IsTruncated"};
  for (size_t i = 0; i < sizeof tags / sizeof *tags; i++) every(doc, NULL, tags[i]);
  const char *mid = doc + size / 2;
  every(doc, mid, "Key");

  backend be = {0};
  be.name = "s3";
  be.endpoint = "http://127.0.0.1:9000";
  be.region = "us-east-1";
  snprintf(be.creds_from, sizeof be.creds_from, "%s", "the environment");
  static const long statuses[] = {0, 301, 403, 404, 500, 503};
  static const char what[] = "s3://bucket/some/key";
  for (size_t i = 0; i < sizeof statuses / sizeof *statuses; i++) {
    kaun_error err = KAUN_ERROR_INIT;
    kaun_error_set(&err, KAUN_EIO, "HTTP %ld from the server", statuses[i]);
    err.http_status = statuses[i];
    be.anonymous = (int)(i & 1);
    int rc = s3_error_doc(&be, KAUN_EIO, statuses[i], doc, size, i & 1 ? "REQ123" : NULL,
                          i & 2 ? "eu-west-1" : NULL, "bucket", what, &err);
    if (rc >= 0 || err.code != rc || strncmp(err.message, what, strlen(what)) != 0) abort();
  }

  static const size_t stops[] = {0, 1, 3};
  for (size_t i = 0; i < sizeof stops / sizeof *stops; i++) {
    listed l = {0, stops[i]};
    int stop = 0;
    char *token = NULL;
    kaun_error err = KAUN_ERROR_INIT;
    int rc = list_page(size ? doc : NULL, "dir/", on_key, &l, what, &stop, &token, &err);
    if (rc) {
      if (rc != KAUN_EIO || !strstr(err.message, what) || token) abort();
    } else if (!stop && !token) {
      abort(); /* either the listing ends or it says where it goes on */
    } else if (stop && token) {
      abort();
    }
    if (stops[i] && l.n > stops[i]) abort(); /* a stop is obeyed at once */
    free(token);
  }

  const char *p = doc;
  char *upload = xml_text(&p, NULL, "UploadId");
  if (upload) {
    char *encoded = s3_uri_encode(upload, 0); /* as multipart() puts it in the query */
    if (!encoded || strlen(encoded) < strlen(upload)) abort();
    free(encoded);
  }
  free(upload);
  free(doc);
  return 0;
}
