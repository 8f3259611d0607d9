#!/usr/bin/env python3
"""kaun's fault-injecting HTTP proxy, for servers that cannot misbehave by
themselves (the S3 test servers).

    python3 faultproxy.py --upstream http://127.0.0.1:PORT [--host 127.0.0.1]
                          [--port 0] [--port-file F] [--verbose]

A reverse proxy: every request is sent on to the upstream server as it
came, the Host header and the body byte for byte (SigV4 signatures cover
both), and the answer is sent back, with faults applied.  Only an
"Expect: 100-continue" is answered here and not passed on.  Keep-alive,
HTTP/1.1, one thread per connection; SIGTERM and SIGINT exit.  Standard
library only; built on httpd.py (its counters, fault rules, control
endpoints and body sender).

Control (never counted, never faulted, never forwarded): GET /__stats,
POST /__reset, POST /__faults, GET /__seen, as in httpd.py.  The counters
are the proxy's: requests, and body bytes sent to the client; /__stats
adds "path_bytes": {"/p": N, ...}, the body bytes sent per path.

Fault rules are httpd.py's ({"path": "/bucket/key" or "*", "method",
"count", effects}); every matching rule applies.  Effects:
  "status": N, "retry_after": "S"  answer N here (not forwarded)
  "delay": S                     wait S seconds first
  "record": true                 record the request's headers (GET /__seen)
  "s3_error": "CODE"             answer 503 (SlowDown) or "s3_status" with
                                 S3's XML error document for CODE
  "ignore_range": true           forward without Range: the upstream's 200
                                 with the whole body goes back
  "content_range_shift": N       a 206's Content-Range moved by N bytes
  "reset_after": B               B body bytes, then a TCP reset
  "truncate_after": B            B body bytes with the full Content-Length,
                                 then close
  "drip_bytes": B, "drip_interval": S   the body B bytes every S seconds
  "wrong_hash": true             the body's first byte changed (headers,
                                 ETag included, as the upstream sent them)
"""

import argparse
import http.client
import json
import os
import signal
import socket
import struct
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import httpd  # noqa: E402

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
       "proxy-connection", "expect"}
S3_MESSAGES = {
    "SlowDown": "Please reduce your request rate.",
    "InternalError": "We encountered an internal error. Please try again.",
    "ServiceUnavailable": "Please reduce your request rate.",
}


class ProxyState(httpd.State):
    def reset(self):
        super().reset()
        self.path_bytes = {}

    def sent_for(self, path, n):
        with self.lock:
            self.bytes_sent += n
            self.path_bytes[path] = self.path_bytes.get(path, 0) + n


class ProxyHandler(httpd.Handler):
    server_version = "kaun-test-faultproxy/1"

    def control(self, method, path):
        st = self.server.state
        if method == "GET" and path == "/__stats":
            with st.lock:
                doc = {
                    "requests": st.requests,
                    "connections": st.connections,
                    "bytes_sent": st.bytes_sent,
                    "paths": dict(st.paths),
                    "path_bytes": dict(st.path_bytes),
                }
            return self.reply(200, json.dumps(doc).encode(), content_type="application/json")
        return super().control(method, path)

    def serve(self, method, url, path, fx):
        self.counted_path = path
        body = self.read_body()
        if "s3_error" in fx:
            code = str(fx["s3_error"])
            doc = (
                '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>%s</Code>'
                "<Message>%s</Message><Resource>%s</Resource><RequestId>%s</RequestId></Error>"
                % (code, S3_MESSAGES.get(code, code), path, self.request_id)
            ).encode()
            headers = [("x-amz-request-id", self.request_id)]
            if "retry_after" in fx:
                headers.append(("Retry-After", str(fx["retry_after"])))
            return self.reply(int(fx.get("s3_status", 503)), doc, headers, "application/xml")
        up = http.client.HTTPConnection(self.server.upstream_host, self.server.upstream_port,
                                        timeout=60)
        try:
            up.putrequest(method, self.path, skip_host=True, skip_accept_encoding=True)
            for k, v in self.headers.items():
                lk = k.lower()
                if lk in HOP or lk == "content-length":
                    continue
                if lk == "range" and fx.get("ignore_range"):
                    continue
                up.putheader(k, v)
            if body or method in ("PUT", "POST"):
                up.putheader("Content-Length", str(len(body)))
            up.endheaders(body if body else None)
            resp = up.getresponse()
            return self.relay(method, resp, fx)
        finally:
            up.close()

    def relay(self, method, resp, fx):
        headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP]
        length = resp.getheader("Content-Length")
        if method == "HEAD" or resp.status in (204, 304) or resp.status < 200:
            payload, stream = b"", None
        elif length is None:  # chunked or to the close: read it all, send it sized
            payload, stream = resp.read(), None
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Content-Length", str(len(payload))))
        else:
            payload, stream = None, resp
        shift = int(fx.get("content_range_shift", 0))
        if shift and resp.status == 206:
            fixed = []
            for k, v in headers:
                if k.lower() == "content-range":
                    unit, _, rest = v.partition(" ")
                    span, _, total = rest.partition("/")
                    a, _, b = span.partition("-")
                    v = "%s %d-%d/%s" % (unit, int(a) + shift, int(b) + shift, total)
                fixed.append((k, v))
            headers = fixed
        self.send_response_only(resp.status, resp.reason)
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.flush()
        if stream is None:
            if payload:
                self.send_bytes(iter([payload]), len(payload), fx)
            return None
        total = int(length)
        return self.send_bytes(chunks(stream, total), total, fx)

    def send_bytes(self, pieces, total, fx):
        """The body from `pieces` (bytes objects, `total` in all), with the
        body faults applied."""
        limit, after = total, None
        if "reset_after" in fx:
            limit, after = min(total, int(fx["reset_after"])), "reset"
        elif "truncate_after" in fx:
            limit, after = min(total, int(fx["truncate_after"])), "close"
        step = int(fx.get("drip_bytes") or 0)
        interval = float(fx.get("drip_interval", 0.1))
        flip = bool(fx.get("wrong_hash"))
        sock, sent = self.connection, 0
        for piece in pieces:
            if sent >= limit:
                break
            piece = piece[: limit - sent]
            if flip and sent == 0 and piece:
                piece = bytes([piece[0] ^ 0xFF]) + piece[1:]
            if step:
                for i in range(0, len(piece), step):
                    sock.sendall(piece[i : i + step])
                    self.server.state.sent_for(self.counted_path, len(piece[i : i + step]))
                    if sent + i + step < limit:
                        time.sleep(interval)
            else:
                sock.sendall(piece)
                self.server.state.sent_for(self.counted_path, len(piece))
            sent += len(piece)
        if after == "close" or sent < total:
            self.close_connection = True
        if after == "reset":
            time.sleep(0.05)  # let the client read what was sent first
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            os.close(sock.detach())
            self.close_connection = True


def chunks(resp, total):
    left = total
    while left > 0:
        b = resp.read(min(left, 256 << 10))
        if not b:
            raise ConnectionError("the upstream cut the body")
        left -= len(b)
        yield b


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--upstream", required=True, help="http://HOST:PORT")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    up = urllib.parse.urlsplit(args.upstream)
    if up.scheme != "http" or not up.hostname:
        ap.error("--upstream must be http://HOST:PORT")

    def bye(signum, frame):
        os._exit(0)

    signal.signal(signal.SIGTERM, bye)
    signal.signal(signal.SIGINT, bye)

    server = httpd.Server((args.host, args.port), ProxyHandler)
    server.state = ProxyState(os.getcwd())
    server.verbose = args.verbose
    server.upstream_host, server.upstream_port = up.hostname, up.port or 80
    port = server.server_address[1]
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % port)
        os.replace(tmp, args.port_file)
    if args.verbose:
        sys.stderr.write("faultproxy: %s:%d -> %s\n" % (args.host, port, args.upstream))
    server.serve_forever(poll_interval=0.5)


if __name__ == "__main__":
    main()
