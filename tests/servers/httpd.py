#!/usr/bin/env python3
"""kaun's test HTTP/1.1 server: files, ranges, uploads, counters and faults.

    python3 httpd.py --root DIR [--host 127.0.0.1] [--port 0] [--port-file F]
                     [--cert PEM --key PEM] [--verbose]

Serves the files under DIR (keep-alive, HTTP/1.1, one thread per
connection).  With --port 0 the kernel picks the port; --port-file gets it
(written atomically) once the server listens.  With --cert and --key it
speaks HTTPS.  SIGTERM and SIGINT exit.  Standard library only.

Files
  GET, HEAD   Content-Length, ETag ("MTIMENS-SIZE" in hex), Last-Modified,
              Accept-Ranges; a single "Range: bytes=A-B", "bytes=A-" or
              "bytes=-N" gives 206 with Content-Range, an unsatisfiable one
              416 with "Content-Range: bytes */SIZE"; other Range forms are
              ignored (200).  If-Match (412) and If-None-Match (304).
              Bodies are streamed with sendfile: 1 GiB files are fine.
  PUT         stores the body atomically (temporary file + rename); folders
              are created; 201 Created (or 200 when it replaced a file).
  DELETE      204, or 404.
  POST        echoes the request body back (200).
  Paths never leave DIR; a folder or a missing file is 404.

Control (never counted, never faulted)
  GET  /__stats   {"requests": N, "connections": N, "bytes_sent": N,
                   "paths": {"/p": N, ...}}: requests and body bytes sent for
                   non-control requests, TCP connections accepted
  POST /__reset   zeroes the counters, drops the faults and what was seen
  POST /__faults  adds rules: a JSON object or a list of them
  GET  /__seen    the requests recorded by "record" rules, oldest first:
                  [{"method": M, "path": P, "headers": {lowercased: value}}]

Fault rules: {"path": "/f" (or "*"), "method": "GET" (optional), "count": K
(the next K matching requests, default 1, -1 = forever), and effects}:
  "status": N             answer N with a short body ("retry_after": "2" adds
                          a Retry-After header)
  "redirect": URL         answer "redirect_status" (302) with Location: URL
                          (relative or absolute, sent as given)
  "delay": S              wait S seconds before answering
  "ignore_range": true    answer 200 with the whole body
  "content_range_shift": N  a 206 whose Content-Range is off by N bytes
  "whole_206": true       answer a Range with a 206 carrying the whole object
                          (Content-Range bytes 0-LAST/SIZE), as some servers
                          answer bytes=0-0
  "reset_after": B        send B body bytes, then reset the connection (RST)
  "truncate_after": B     send B body bytes with the full Content-Length, close
  "drip_bytes": B, "drip_interval": S   send the body B bytes every S seconds
  "chunked_short": B      send the body chunked (no Content-Length), only
                          its first B bytes, properly ended: a short answer
                          nothing in the framing gives away
  "record": true          record the request's headers (GET /__seen)
  "etag": "\"...\""        use this ETag for the file (If-Match compares with it)
Every matching rule applies (each counts down); status and redirect answer
before the file is looked at.
"""

import argparse
import email.utils
import json
import os
import signal
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = 1 << 20
ECHO_MAX = 64 << 20
SEEN_MAX = 1000


class State:
    def __init__(self, root):
        self.root = os.path.realpath(root)
        self.lock = threading.Lock()
        self.counter = 0
        self.reset()

    def reset(self):
        self.requests = 0
        self.connections = 0
        self.bytes_sent = 0
        self.paths = {}
        self.faults = []
        self.seen = []

    def match(self, method, path):
        """Counts the request and returns the effects of the rules it matches."""
        effects = {}
        with self.lock:
            self.requests += 1
            self.counter += 1
            self.paths[path] = self.paths.get(path, 0) + 1
            for rule in self.faults:
                if rule.get("count", 1) == 0:
                    continue
                if rule.get("path", "*") not in ("*", path):
                    continue
                if rule.get("method") and rule["method"].upper() != method:
                    continue
                if rule.get("count", 1) > 0:
                    rule["count"] = rule.get("count", 1) - 1
                for k, v in rule.items():
                    if k not in ("path", "method", "count"):
                        effects.setdefault(k, v)
            return effects, self.counter

    def sent(self, n):
        with self.lock:
            self.bytes_sent += n


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (ConnectionError, socket.timeout, ssl.SSLError)):
            super().handle_error(request, client_address)

    def get_request(self):
        conn = super().get_request()
        # headers and body go out in separate writes: without this, Nagle and
        # the client's delayed ACK add 40 ms to every small answer
        conn[0].setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.state.lock:
            self.state.connections += 1
        return conn


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kaun-test-httpd/1"

    def handle_one_request(self):
        # clients that go away (canceled, stalled, reset on purpose) are normal here
        try:
            super().handle_one_request()
        except (ConnectionError, socket.timeout, ssl.SSLError):
            self.close_connection = True

    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write("httpd: %s\n" % (fmt % args))

    def do_GET(self):
        self.dispatch("GET")

    def do_HEAD(self):
        self.dispatch("HEAD")

    def do_PUT(self):
        self.dispatch("PUT")

    def do_POST(self):
        self.dispatch("POST")

    def do_DELETE(self):
        self.dispatch("DELETE")

    # ---- helpers ----------------------------------------------------------

    def reply(self, status, body=b"", headers=(), content_type="text/plain"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-request-id", self.request_id)
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def read_body(self, limit=None):
        """The request body (Content-Length only), or None when too large."""
        n = int(self.headers.get("Content-Length") or 0)
        if limit is not None and n > limit:
            self.discard_body()
            return None
        chunks = []
        while n > 0:
            b = self.rfile.read(min(n, CHUNK))
            if not b:
                raise ConnectionError("request body cut")
            chunks.append(b)
            n -= len(b)
        return b"".join(chunks)

    def discard_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        while n > 0:
            b = self.rfile.read(min(n, CHUNK))
            if not b:
                raise ConnectionError("request body cut")
            n -= len(b)

    def fs_path(self, path):
        rel = path.lstrip("/")
        if not rel or "\0" in rel:
            return None
        full = os.path.realpath(os.path.join(self.server.state.root, rel))
        root = self.server.state.root
        if full != root and not full.startswith(root + os.sep):
            return None
        return full

    # ---- dispatch ---------------------------------------------------------

    def dispatch(self, method):
        self.request_id = "-"
        try:
            url = urllib.parse.urlsplit(self.path)
            path = urllib.parse.unquote(url.path)
            if path.startswith("/__"):
                return self.control(method, path)
            st = self.server.state
            fx, number = st.match(method, path)
            self.request_id = "req-%d" % number
            if fx.get("record"):
                entry = {"method": method, "path": path}
                entry.update(self.record_extra())
                entry["headers"] = {k.lower(): v for k, v in self.headers.items()}
                with st.lock:
                    st.seen.append(entry)
                    del st.seen[:-SEEN_MAX]
            if fx.get("delay"):
                time.sleep(float(fx["delay"]))
            if "status" in fx or "redirect" in fx:
                if method in ("PUT", "POST"):
                    self.discard_body()
                if "status" in fx:
                    headers = []
                    if "retry_after" in fx:
                        headers.append(("Retry-After", str(fx["retry_after"])))
                    headers += self.fault_headers(fx)
                    return self.reply(int(fx["status"]), b"injected fault\n", headers)
                return self.reply(
                    int(fx.get("redirect_status", 302)), b"", [("Location", fx["redirect"])]
                )
            return self.serve(method, url, path, fx)
        except (ConnectionError, BrokenPipeError, socket.timeout, OSError):
            self.close_connection = True

    # Hooks for servers built on this one (hub.py): what a recorded request
    # adds, the headers of an injected fault, and the answer itself.
    def record_extra(self):
        return {}

    def fault_headers(self, fx):
        return []

    def serve(self, method, url, path, fx):
        st = self.server.state
        if method in ("GET", "HEAD"):
            return self.serve_file(method, path, fx)
        if method == "PUT":
            return self.put_file(path)
        if method == "DELETE":
            return self.delete_file(path)
        if method == "POST":
            body = self.read_body(ECHO_MAX)
            if body is None:
                return self.reply(413, b"too large\n")
            st.sent(len(body))
            return self.reply(200, body, content_type="application/octet-stream")
        return None

    def control(self, method, path):
        st = self.server.state
        if method == "GET" and path == "/__stats":
            with st.lock:
                doc = {
                    "requests": st.requests,
                    "connections": st.connections,
                    "bytes_sent": st.bytes_sent,
                    "paths": dict(st.paths),
                }
            return self.reply(200, json.dumps(doc).encode(), content_type="application/json")
        if method == "GET" and path == "/__seen":
            with st.lock:
                doc = list(st.seen)
            return self.reply(200, json.dumps(doc).encode(), content_type="application/json")
        if method == "POST" and path == "/__reset":
            self.discard_body()
            with st.lock:
                st.reset()
            return self.reply(200, b"{}", content_type="application/json")
        if method == "POST" and path == "/__faults":
            body = self.read_body(1 << 20)
            try:
                rules = json.loads(body or b"[]")
            except ValueError as e:
                return self.reply(400, ("bad JSON: %s\n" % e).encode())
            if isinstance(rules, dict):
                rules = [rules]
            if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
                return self.reply(400, b"a rule or a list of rules\n")
            with st.lock:
                st.faults.extend(rules)
            return self.reply(200, b"{}", content_type="application/json")
        if method in ("PUT", "POST"):
            self.discard_body()
        return self.reply(404, b"no such control endpoint\n")

    # ---- files ------------------------------------------------------------

    def serve_file(self, method, path, fx):
        full = self.fs_path(path)
        try:
            f = open(full, "rb") if full else None
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
            f = None
        if f is None:
            return self.reply(404, b"not found\n")
        with f:
            info = os.fstat(f.fileno())
            if not (info.st_mode & 0o170000 == 0o100000):
                return self.reply(404, b"not found\n")
            size = info.st_size
            etag = fx.get("etag") or '"%x-%x"' % (info.st_mtime_ns, size)
            meta = [
                ("ETag", etag),
                ("Last-Modified", email.utils.formatdate(info.st_mtime, usegmt=True)),
                ("Accept-Ranges", "bytes"),
            ]
            im = self.headers.get("If-Match")
            if im and im.strip() != "*" and etag not in [t.strip() for t in im.split(",")]:
                return self.reply(412, b"precondition failed\n", meta)
            inm = self.headers.get("If-None-Match")
            if inm and (inm.strip() == "*" or etag in [t.strip() for t in inm.split(",")]):
                return self.reply(304, b"", meta)
            return self.send_ranged(method, f, size, meta, fx)

    def send_ranged(self, method, f, size, meta, fx):
        """Answers with `f` (`size` bytes) or the part a Range asks for (206,
        416), applying the fault effects on ranges and bodies."""
        rng = None
        if not fx.get("ignore_range"):
            rng = parse_range(self.headers.get("Range"), size)
        if rng == "unsatisfiable":
            return self.reply(416, b"", meta + [("Content-Range", "bytes */%d" % size)])
        if rng and fx.get("whole_206") and size:
            rng = (0, size - 1)
        if rng:
            start, end = rng
            shift = int(fx.get("content_range_shift", 0))
            status = 206
            meta = meta + [("Content-Range", "bytes %d-%d/%d" % (start + shift, end + shift, size))]
        else:
            start, end, status = 0, size - 1, 200
        length = end - start + 1 if size else 0
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        if "chunked_short" in fx and method != "HEAD":
            n = min(length, int(fx["chunked_short"]))
            self.send_header("Transfer-Encoding", "chunked")
            for k, v in meta:
                self.send_header(k, v)
            self.end_headers()
            f.seek(start)
            b = f.read(n)
            if b:
                self.wfile.write(b"%x\r\n" % len(b) + b + b"\r\n")
                self.server.state.sent(len(b))
            self.wfile.write(b"0\r\n\r\n")
            return None
        self.send_header("Content-Length", str(length))
        self.send_header("x-request-id", self.request_id)
        for k, v in meta:
            self.send_header(k, v)
        self.end_headers()
        if method == "HEAD" or length == 0:
            return None
        return self.send_body(f, start, length, fx)

    def send_body(self, f, start, length, fx):
        limit, after = length, None
        if "reset_after" in fx:
            limit, after = min(length, int(fx["reset_after"])), "reset"
        elif "truncate_after" in fx:
            limit, after = min(length, int(fx["truncate_after"])), "close"
        sock = self.connection
        if fx.get("drip_bytes"):
            step = int(fx["drip_bytes"])
            interval = float(fx.get("drip_interval", 0.1))
            pos, left = start, limit
            while left > 0:
                f.seek(pos)
                b = f.read(min(step, left))
                if not b:
                    break
                sock.sendall(b)
                self.server.state.sent(len(b))
                pos += len(b)
                left -= len(b)
                if left:
                    time.sleep(interval)
        else:
            pos, left = start, limit
            while left > 0:
                n = sock.sendfile(f, pos, min(left, 64 * CHUNK))
                if not n:
                    break
                self.server.state.sent(n)
                pos += n
                left -= n
        if after == "close":
            self.close_connection = True
        elif after == "reset":
            time.sleep(0.05)  # let the client read what was sent first
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            os.close(sock.detach())
            self.close_connection = True

    def put_file(self, path):
        full = self.fs_path(path)
        if not full:
            self.discard_body()
            return self.reply(403, b"outside the root\n")
        if os.path.isdir(full):
            self.discard_body()
            return self.reply(409, b"a folder\n")
        folder = os.path.dirname(full)
        os.makedirs(folder, exist_ok=True)
        existed = os.path.exists(full)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".put-")
        try:
            with os.fdopen(fd, "wb") as out:
                n = int(self.headers.get("Content-Length") or 0)
                while n > 0:
                    b = self.rfile.read(min(n, CHUNK))
                    if not b:
                        raise ConnectionError("request body cut")
                    out.write(b)
                    n -= len(b)
            os.replace(tmp, full)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        info = os.stat(full)
        etag = '"%x-%x"' % (info.st_mtime_ns, info.st_size)
        return self.reply(200 if existed else 201, b"", [("ETag", etag)])

    def delete_file(self, path):
        full = self.fs_path(path)
        if not full or not os.path.isfile(full):
            return self.reply(404, b"not found\n")
        os.unlink(full)
        return self.reply(204)


def parse_range(value, size):
    """(start, end) for one satisfiable byte range, "unsatisfiable", or None."""
    if not value or not value.startswith("bytes="):
        return None
    spec = value[6:].strip()
    if "," in spec or "-" not in spec:
        return None
    a, b = spec.split("-", 1)
    a, b = a.strip(), b.strip()
    try:
        if a == "":
            if not b:
                return None
            n = int(b)
            if n == 0 or size == 0:
                return "unsatisfiable"
            return max(0, size - n), size - 1
        start = int(a)
        end = int(b) if b else size - 1
    except ValueError:
        return None
    if start < 0 or (b and end < start):
        return None
    if start >= size:
        return "unsatisfiable"
    return start, min(end, size - 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    ap.add_argument("--cert", help="PEM certificate chain: serve HTTPS")
    ap.add_argument("--key", help="PEM private key of --cert")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()

    def bye(signum, frame):
        os._exit(0)

    signal.signal(signal.SIGTERM, bye)
    signal.signal(signal.SIGINT, bye)

    server = Server((args.host, args.port), Handler)
    server.state = State(args.root)
    server.verbose = args.verbose
    if args.cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(args.cert, args.key)
        # the handshake happens in the connection's thread, not in accept()
        server.socket = tls.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
    port = server.server_address[1]
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % port)
        os.replace(tmp, args.port_file)
    if args.verbose:
        sys.stderr.write("httpd: serving %s on %s:%d\n" % (args.root, args.host, port))
    server.serve_forever(poll_interval=0.5)


if __name__ == "__main__":
    main()
