#!/usr/bin/env python3
"""kaun's Hub-compatible test server: the Hub's download protocol and cache-facing answers, on 127.0.0.1.

    python3 hub.py --root DIR [--host 127.0.0.1] [--port 0] [--port-file F]
                   [--verbose]

Two listeners share one state: the Hub (--port) and a "CDN" (a free port,
written as the second line of --port-file).  Built on httpd.py (its
counters, fault rules, Range parser and body sender).  Standard library
only; SIGTERM and SIGINT exit.

Repositories (re-read on every request, so a test moves a branch by
rewriting repo.json):

  DIR/tokens.json                  ["hf_good", ...]: the tokens the Hub knows
  DIR/repos/ORG/NAME/repo.json     {"refs": {"main": "<40 hex>", "v1": ...},
                                    "private": false, "gated": false,
                                    "tokens": ["hf_good"]   (who may read it),
                                    "lfs": ["*.safetensors", "*.bin"]}
  DIR/repos/ORG/NAME/<commit>/PATH the files of each commit
  DIR/repos/datasets/ORG/NAME/...  datasets (URLs under /datasets/)

Hub
  HEAD/GET /REPO/resolve/REV/PATH   REV is a branch or tag of "refs" (percent-
      encoded: refs%2Fpr%2F1) or a commit folder.  Regular files: a relative
      307 to /api/resolve-cache/models/REPO/COMMIT/PATH, which answers 200
      with ETag "<git blob sha1>", X-Repo-Commit, Content-Length,
      Accept-Ranges.  LFS files (names matching "lfs"): 302 to
      http://127.0.0.1:CDN/cdn/<sha256>?sig=... with X-Linked-Etag
      "<sha256>", X-Linked-Size, X-Repo-Commit and a Content-Length that is
      the redirect body's.
  Errors as the Hub sends them (X-Error-Code, X-Error-Message):
      unknown token 401 (no code); missing or private repo 401 RepoNotFound
      without a token, 404 with one; gated repo 401 (no token) or 403
      GatedRepo; 404 RevisionNotFound; 404 EntryNotFound with X-Repo-Commit.
  GET /api/models/REPO/revision/REV  {"id", "sha", "siblings": [{"rfilename"}]}
  GET /api/models/REPO/tree/REV[/PATH]?recursive=true[&cursor=N]
      [{"type", "path", "size", "oid", "lfs": {"oid", "size"}}], 2 entries a
      page, Link: <absolute url>; rel="next"
CDN
  HEAD/GET /cdn/<sha256>  whole files and ranges (206, 416); any request with
      an Authorization header is refused (403).

Control (on either port, never counted): GET /__stats, POST /__reset,
POST /__faults, GET /__seen as in httpd.py.  Fault rules match the decoded
URL path with shell wildcards ("/org/m/resolve/*", "/cdn/*"), and besides
httpd.py's effects ("status" with "retry_after", "reset_after",
"truncate_after", "ignore_range", "drip_bytes"/"drip_interval", "delay",
"record") accept:
  "error_code": "X"      with "status": an X-Error-Code header
  "wrong_hash": true     the body's first byte is changed
  "etag": "\"...\""       the CDN's ETag for the blob (an If-Match that names
                         another one is answered 412)
  "no_commit": true      no X-Repo-Commit
  "size_zero": true      X-Linked-Size / Content-Length 0 in the metadata
  "no_linked": true      an LFS redirect without X-Linked-Etag and X-Linked-Size
and a rule with "skip": N lets its first N matching requests through.
A repo.json with "moved_to": "ORG/NAME" answers every resolve with a
relative 307 to that repo (a renamed repo).
"""

import argparse
import fnmatch
import hashlib
import io
import json
import os
import signal
import sys
import threading
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import httpd  # noqa: E402


class HubState(httpd.State):
    def __init__(self, root):
        super().__init__(root)
        self.hashes = {}  # (path, size, mtime_ns) -> (sha1 git, sha256)
        self.blobs = {}  # sha256 -> path
        self.cdn_port = 0

    def match(self, method, path):
        effects = {}
        with self.lock:
            self.requests += 1
            self.counter += 1
            self.paths[path] = self.paths.get(path, 0) + 1
            for rule in self.faults:
                if rule.get("count", 1) == 0:
                    continue
                pat = rule.get("path", "*")
                if pat != "*" and not fnmatch.fnmatchcase(path, pat):
                    continue
                if rule.get("method") and rule["method"].upper() != method:
                    continue
                if rule.get("skip", 0) > 0:  # let the first N matches through
                    rule["skip"] -= 1
                    continue
                if rule.get("count", 1) > 0:
                    rule["count"] = rule.get("count", 1) - 1
                for k, v in rule.items():
                    if k not in ("path", "method", "count", "skip"):
                        effects.setdefault(k, v)
            return effects, self.counter

    def digest(self, full):
        info = os.stat(full)
        key = (full, info.st_size, info.st_mtime_ns)
        with self.lock:
            got = self.hashes.get(key)
        if got:
            return got
        s1 = hashlib.sha1(b"blob %d\0" % info.st_size)
        s256 = hashlib.sha256()
        with open(full, "rb") as f:
            while True:
                b = f.read(httpd.CHUNK)
                if not b:
                    break
                s1.update(b)
                s256.update(b)
        got = (s1.hexdigest(), s256.hexdigest())
        with self.lock:
            self.hashes[key] = got
            self.blobs[got[1]] = full
        return got


class FlippedFile(io.RawIOBase):
    """A file whose first byte reads changed (a body that fails its hash)."""

    def __init__(self, f):
        self.f = f

    def seek(self, pos, whence=0):
        return self.f.seek(pos, whence)

    def read(self, n=-1):
        pos = self.f.tell()
        b = self.f.read(n)
        if pos == 0 and b:
            b = bytes([b[0] ^ 0xFF]) + b[1:]
        return b


class HubHandler(httpd.Handler):
    server_version = "kaun-test-hub/1"
    cdn = False

    def record_extra(self):
        return {"port": self.server.server_address[1]}

    def fault_headers(self, fx):
        return [("X-Error-Code", fx["error_code"])] if "error_code" in fx else []

    def serve(self, method, url, path, fx):
        if method not in ("GET", "HEAD"):
            return self.reply(405, b"read only\n")
        if self.cdn:
            return self.serve_cdn(method, path, fx)
        return self.serve_hub(method, url, path, fx)

    # ---- the CDN ------------------------------------------------------------

    def serve_cdn(self, method, path, fx):
        if self.headers.get("Authorization"):
            return self.reply(403, b"the CDN refuses requests that carry Authorization\n")
        sha = path[len("/cdn/"):] if path.startswith("/cdn/") else ""
        with self.server.state.lock:
            full = self.server.state.blobs.get(sha)
        if not full:
            return self.reply(404, b"no such blob\n")
        return self.serve_blob(method, full, fx, [("ETag", '"%s"' % sha)])

    def serve_blob(self, method, full, fx, meta):
        if fx.get("etag"):  # another version's ETag (If-Match compares with it)
            meta = [(k, v) for k, v in meta if k != "ETag"] + [("ETag", fx["etag"])]
        etag = dict(meta).get("ETag")
        im = self.headers.get("If-Match")
        if im and etag and im.strip() != "*" and etag not in [t.strip() for t in im.split(",")]:
            return self.reply(412, b"precondition failed\n", meta)
        with open(full, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if fx.get("wrong_hash"):  # the body's first byte changed, sent in 1 MiB pieces
                fx = dict(fx)
                fx.setdefault("drip_bytes", 1 << 20)
                fx.setdefault("drip_interval", 0)
                f = FlippedFile(f)
            return self.send_ranged(method, f, size, list(meta) + [("Accept-Ranges", "bytes")], fx)

    # ---- the Hub --------------------------------------------------------------

    def error(self, status, code, message, extra=()):
        headers = [("X-Error-Message", message)] + list(extra)
        if code:
            headers.append(("X-Error-Code", code))
        body = json.dumps({"error": message}).encode()
        return self.reply(status, body, headers, content_type="application/json")

    def repo_dir(self, kind, repo):
        base = os.path.join(self.server.state.root, "repos")
        if kind == "dataset":
            base = os.path.join(base, "datasets")
        return os.path.join(base, repo)

    def check_access(self, kind, repo):
        """(repo.json dict, folder) or None once an error was sent."""
        root = self.server.state.root
        auth = self.headers.get("Authorization") or ""
        token = auth[7:].strip() if auth.startswith("Bearer ") else None
        try:
            with open(os.path.join(root, "tokens.json")) as f:
                known = json.load(f)
        except (OSError, ValueError):
            known = []
        if token is not None and token not in known:
            self.error(401, None, "Invalid credentials in Authorization header")
            return None
        folder = self.repo_dir(kind, repo)
        try:
            with open(os.path.join(folder, "repo.json")) as f:
                info = json.load(f)
        except (OSError, ValueError):
            info = None
        allowed = info is not None and token in info.get("tokens", [])
        if info is None or (info.get("private") and not allowed):
            msg = "Repository Not Found for url: %s." % self.path
            self.error(404 if token else 401, "RepoNotFound", msg)
            return None
        if info.get("gated") and not allowed:
            msg = "Access to model %s is restricted. You must have access to it." % repo
            self.error(403 if token else 401, "GatedRepo", msg)
            return None
        return info, folder

    def commit_of(self, info, folder, rev):
        commit = info.get("refs", {}).get(rev)
        if commit:
            return commit
        if len(rev) == 40 and os.path.isdir(os.path.join(folder, rev)):
            return rev
        return None

    def split_repo(self, rest):
        kind = "model"
        if rest.startswith("datasets/"):
            kind, rest = "dataset", rest[len("datasets/"):]
        return kind, rest

    def serve_hub(self, method, url, path, fx):
        raw = url.path
        if raw.startswith("/api/resolve-cache/"):
            return self.resolve_cache(method, raw, fx)
        if raw.startswith("/api/models/") or raw.startswith("/api/datasets/"):
            return self.api(raw, url.query)
        if "/resolve/" not in raw:
            return self.reply(404, b"not found\n")
        head, tail = raw.split("/resolve/", 1)
        kind, repo = self.split_repo(urllib.parse.unquote(head.lstrip("/")))
        if "/" not in tail:
            return self.reply(404, b"not found\n")
        rev_raw, file_raw = tail.split("/", 1)
        rev = urllib.parse.unquote(rev_raw)
        filename = urllib.parse.unquote(file_raw)
        got = self.check_access(kind, repo)
        if not got:
            return
        info, folder = got
        if info.get("moved_to"):  # a renamed repo: a relative redirect
            loc = "/%s%s/resolve/%s" % ("datasets/" if kind == "dataset" else "", info["moved_to"], tail)
            return self.reply(307, b"", [("Location", loc)])
        commit = self.commit_of(info, folder, rev)
        if not commit:
            return self.error(404, "RevisionNotFound", "Invalid rev id: %s" % rev)
        full = os.path.join(folder, commit, filename)
        if ".." in filename.split("/") or not os.path.isfile(full):
            return self.error(
                404,
                "EntryNotFound",
                "%s does not exist on %s" % (filename, rev),
                [("X-Repo-Commit", commit)],
            )
        lfs = any(fnmatch.fnmatchcase(filename, p) for p in info.get("lfs", ["*.safetensors", "*.bin"]))
        sha1, sha256 = self.server.state.digest(full)
        size = os.path.getsize(full)
        commit_hdr = [] if fx.get("no_commit") else [("X-Repo-Commit", commit)]
        if not lfs:
            prefix = "datasets/" if kind == "dataset" else "models/"
            loc = "/api/resolve-cache/%s%s/%s/%s" % (
                prefix,
                repo,
                commit,
                urllib.parse.quote(filename),
            )
            return self.reply(307, b"", [("Location", loc)] + commit_hdr)
        loc = "http://127.0.0.1:%d/cdn/%s?sig=%s" % (self.server.state.cdn_port, sha256, "s1gn3d")
        body = b"Found. Redirecting to the CDN\n"
        meta = [
            ("Location", loc),
            ("X-Linked-Etag", '"%s"' % sha256),
            ("X-Linked-Size", "0" if fx.get("size_zero") else str(size)),
            ("ETag", '"%s"' % sha1),
        ] + commit_hdr
        if fx.get("no_linked"):
            meta = [m for m in meta if not m[0].startswith("X-Linked")]
        return self.reply(302, body, meta)

    def resolve_cache(self, method, raw, fx):
        parts = raw[len("/api/resolve-cache/"):]
        kind, rest = ("dataset", parts[len("datasets/"):]) if parts.startswith("datasets/") else (
            "model",
            parts[len("models/"):],
        )
        segs = urllib.parse.unquote(rest).split("/")
        idx = next((i for i, s in enumerate(segs) if len(s) == 40 and i > 0), None)
        if idx is None:
            return self.reply(404, b"not found\n")
        repo, commit, filename = "/".join(segs[:idx]), segs[idx], "/".join(segs[idx + 1:])
        got = self.check_access(kind, repo)
        if not got:
            return
        info, folder = got
        full = os.path.join(folder, commit, filename)
        if ".." in segs or not os.path.isfile(full):
            return self.error(404, "EntryNotFound", "%s does not exist" % filename,
                              [("X-Repo-Commit", commit)])
        sha1, _ = self.server.state.digest(full)
        meta = [("ETag", '"%s"' % sha1)]
        if not fx.get("no_commit"):
            meta.append(("X-Repo-Commit", commit))
        if fx.get("size_zero") and method == "HEAD":
            self.send_response(200)
            self.send_header("Content-Length", "0")
            for k, v in meta:
                self.send_header(k, v)
            self.end_headers()
            return
        return self.serve_blob(method, full, fx, meta)

    def api(self, raw, query):
        kind = "dataset" if raw.startswith("/api/datasets/") else "model"
        rest = urllib.parse.unquote(raw.split("/", 3)[3])
        for op in ("/revision/", "/tree/"):
            if op in rest:
                repo, tail = rest.split(op, 1)
                break
        else:
            return self.reply(404, b"not found\n")
        got = self.check_access(kind, repo)
        if not got:
            return
        info, folder = got
        rev, _, sub = tail.partition("/")
        commit = self.commit_of(info, folder, rev)
        if not commit:
            return self.error(404, "RevisionNotFound", "Invalid rev id: %s" % rev)
        base = os.path.join(folder, commit)
        files = []
        for d, _, names in os.walk(base):
            for n in names:
                files.append(os.path.relpath(os.path.join(d, n), base))
        files.sort()
        if op == "/revision/":
            doc = {"id": repo, "sha": commit, "siblings": [{"rfilename": f} for f in files]}
            return self.reply(200, json.dumps(doc).encode(), content_type="application/json")
        if sub:
            files = [f for f in files if f == sub or f.startswith(sub.rstrip("/") + "/")]
        lfs_pats = info.get("lfs", ["*.safetensors", "*.bin"])
        entries = []
        for f in files:
            full = os.path.join(base, f)
            sha1, sha256 = self.server.state.digest(full)
            e = {"type": "file", "path": f, "size": os.path.getsize(full), "oid": sha1}
            if any(fnmatch.fnmatchcase(f, p) for p in lfs_pats):
                e["lfs"] = {"oid": sha256, "size": e["size"]}
            entries.append(e)
        q = urllib.parse.parse_qs(query)
        cursor = int(q.get("cursor", ["0"])[0])
        page = entries[cursor:cursor + 2]
        headers = []
        if cursor + 2 < len(entries):
            nxt = "http://127.0.0.1:%d%s?recursive=true&cursor=%d" % (
                self.server.server_address[1],
                raw,
                cursor + 2,
            )
            headers.append(("Link", '<%s>; rel="next"' % nxt))
        return self.reply(200, json.dumps(page).encode(), headers, content_type="application/json")


class CdnHandler(HubHandler):
    cdn = True


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()

    def bye(signum, frame):
        os._exit(0)

    signal.signal(signal.SIGTERM, bye)
    signal.signal(signal.SIGINT, bye)

    state = HubState(args.root)
    hub = httpd.Server((args.host, args.port), HubHandler)
    cdn = httpd.Server((args.host, 0), CdnHandler)
    for s in (hub, cdn):
        s.state = state
        s.verbose = args.verbose
    state.cdn_port = cdn.server_address[1]
    threading.Thread(target=cdn.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True).start()
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n%d\n" % (hub.server_address[1], state.cdn_port))
        os.replace(tmp, args.port_file)
    hub.serve_forever(poll_interval=0.5)


if __name__ == "__main__":
    main()
