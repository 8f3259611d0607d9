#!/usr/bin/env python3
"""Seeds for the tar_names fuzz target: small archives, good and hostile.

usage: tar_seeds.py FOLDER

Writes plain, gzip, xz, bzip2 and zstd tars (zstd when the zstd command is
there) and a zip, with the names and links the tar plugin must handle:
a model beside a folder, `./a`, `a//b`, `../x`, `/abs`, symlinks inside
and outside, hard links, duplicates, a file that is also a folder, a
FIFO, a link loop.
"""
import io
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile

HEADER = b'{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}'
HEADER += b" " * (-len(HEADER) % 8)
MODEL = len(HEADER).to_bytes(8, "little") + HEADER + b"\x01\x02"


def tar_bytes(entries, fmt=tarfile.GNU_FORMAT):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as t:
        for name, kind, arg in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1700000000
            if kind == "file":
                info.size = len(arg)
                t.addfile(info, io.BytesIO(arg))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE,
                         "hard": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE}[kind]
            if kind in ("sym", "hard"):
                info.linkname = arg
            t.addfile(info)
    return out.getvalue()


SETS = {
    "model": [("model.safetensors", "file", MODEL), ("config.json", "file", b"{}")],
    "folder": [("m/", "dir", None), ("m/model.safetensors", "file", MODEL),
               ("./m/extra.json", "file", b"[]")],
    "dots": [("./a", "file", b"a"), ("a//b", "file", b"b"), ("c/./d/", "dir", None)],
    "up": [("ok", "file", b"x"), ("../x", "file", b"x")],
    "abs": [("/abs", "file", b"x")],
    "links": [("real/model.safetensors", "file", MODEL), ("model.safetensors", "sym",
              "real/model.safetensors"), ("alias", "sym", "real"), ("hard", "hard",
              "real/model.safetensors"), ("out", "sym", "../etc/passwd"), ("abs", "sym", "/etc")],
    "loop": [("a", "sym", "b"), ("b", "sym", "a"), ("c", "hard", "c")],
    "dup": [("model.safetensors", "file", MODEL), ("./model.safetensors", "file", MODEL)],
    "file-and-folder": [("a", "file", b"x"), ("a/b", "file", b"y")],
    "fifo": [("pipe", "fifo", None), ("model.safetensors", "hard", "pipe")],
}


def main():
    dest = sys.argv[1]
    os.makedirs(dest, exist_ok=True)
    zstd = shutil.which("zstd")
    for name, entries in SETS.items():
        raw = tar_bytes(entries)
        with open(os.path.join(dest, name + ".tar"), "wb") as f:
            f.write(raw)
    raw = tar_bytes(SETS["links"], tarfile.PAX_FORMAT)
    with open(os.path.join(dest, "links-pax.tar"), "wb") as f:
        f.write(raw)
    raw = tar_bytes(SETS["model"] + SETS["dots"])
    for ext, mode in (("gz", "w:gz"), ("xz", "w:xz"), ("bz2", "w:bz2")):
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode=mode) as t:
            for member in tarfile.open(fileobj=io.BytesIO(raw)):
                t.addfile(member, io.BytesIO(MODEL if member.isfile() else b""))
        with open(os.path.join(dest, "model.tar." + ext), "wb") as f:
            f.write(out.getvalue())
    if zstd:
        plain = os.path.join(dest, "folder.tar")
        subprocess.run([zstd, "-q", "-f", plain, "-o", plain + ".zst"], check=True)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("model.safetensors", MODEL)
        z.writestr("sub/../evil", b"x")
        z.writestr("d/", b"")
    with open(os.path.join(dest, "model.zip"), "wb") as f:
        f.write(out.getvalue())


if __name__ == "__main__":
    main()
