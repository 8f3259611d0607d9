// A stand-in S3 server for tests/s3_tests.c that answers every request with
// the S3 error named by the key's first path segment after the bucket:
// /BUCKET/AccessDenied/x -> 403 <Error><Code>AccessDenied</Code>...
// (HEAD: the status alone, as S3 does); a listing uses its prefix's.  Counts requests per code at
// GET /__count/CODE.  Usage: node errors.js PORT
'use strict';
const http = require('node:http');
const statuses = {
  AccessDenied: 403,
  InvalidAccessKeyId: 403,
  SignatureDoesNotMatch: 403,
  RequestTimeTooSkewed: 403,
  NoSuchKey: 404,
  NoSuchBucket: 404,
  SlowDown: 503,
  InternalError: 500,
  PermanentRedirect: 301,
};
const counts = {};
const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  const parts = url.pathname.split('/');
  if (parts[1] === '__count') {
    res.end(String(counts[parts[2]] || 0));
    return;
  }
  // the key's first segment, or the listed prefix's
  const first = url.searchParams.has('prefix')
    ? url.searchParams.get('prefix').split('/')[0]
    : decodeURIComponent(parts[2] || '');
  const code = first in statuses ? first : 'NoSuchKey';
  counts[code] = (counts[code] || 0) + 1;
  const body =
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>' + code + '</Code><Message>' +
    'injected ' + code + '</Message><RequestId>req-' + code + '</RequestId></Error>';
  const headers = {'Content-Type': 'application/xml', 'x-amz-request-id': 'req-' + code};
  if (code === 'PermanentRedirect') headers['x-amz-bucket-region'] = 'eu-west-1';
  req.resume();
  res.writeHead(statuses[code], headers);
  res.end(req.method === 'HEAD' ? undefined : body);
});
server.listen(Number(process.argv[2]), '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));
