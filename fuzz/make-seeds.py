#!/usr/bin/env python3
"""Writes the seed corpus under fuzz/corpus/<target>/ (checked in; run again after changing it).

Real inputs where the repository has them (Docspell's published descriptors and fixtures, the
test addons' descriptors and Dockerfiles), hand-written ones for the rest: small, one file
per input, named for what it shows. scripts/fuzz copies them to a scratch dir before fuzzing.
"""
import io
import json
import os
import pathlib
import shutil
import tarfile
import zipfile

FUZZ = pathlib.Path(__file__).resolve().parent
REPO = FUZZ.parent
CORPUS = FUZZ / "corpus"


def put(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data.encode() if isinstance(data, str) else data)


def descriptors():
    for f in sorted((REPO / "descriptors/tests/fixtures/docspell").glob("*.yml")):
        put("descriptor", f"docspell-{f.name}", f.read_bytes())
    for name, f in [
        ("hello.yml", "examples/hello/docspell-addon.yml"),
        ("guile-addon.yml", "executor/tests/fixtures/guile-addon/docspell-addon.yml"),
        ("rotate-addon.yml", "executor/tests/fixtures/rotate-addon/docspell-addon.yml"),
    ]:
        put("descriptor", name, (REPO / f).read_bytes())
    put("descriptor", "json.json", json.dumps({
        "meta": {"name": "j", "version": "1.0"}, "triggers": ["scheduled", "existing-item"],
        "args": ["--x"], "runner": {"docker": {"enable": True, "image": "busybox:1.36"},
                                   "trivial": {"enable": True, "exec": "run.sh"}},
        "options": {"networking": False, "collectOutput": True}}))
    put("descriptor", "docker-build.yml",
        "meta:\n  name: d\n  version: '1'\nrunner:\n  docker:\n    enable: true\n    build: src/Dockerfile.alt\n")
    put("descriptor", "nix-auto.yml", "meta: {name: n, version: \"2\"}\nrunner:\n  nix:\n    enable: yes\n")
    put("descriptor", "bad-exec.yml",
        "meta:\n  name: x\n  version: 2.10\nrunner:\n  trivial:\n    enable: true\n    exec: out/etc/passwd\n")
    put("descriptor", "bad-image.yml",
        "meta: {name: x, version: '1'}\nrunner:\n  docker: {enable: true, image: 'docker-daemon:x:1'}\n"
        "triggers: [scheduled, scheduled, nope]\nunknown: 1\n")
    put("descriptor", "two-docs.yml", "meta: {name: a, version: '1'}\n---\nmeta: {}\n")
    put("descriptor", "syntax-error.yml", "meta:\n  name: [a\n\tversion: '1'\r")


def outputs():
    full = {
        "commands": [
            {"command": "item-update", "itemId": "item-1", "actions": [
                {"action": "add-tags", "tags": ["a", "b"]},
                {"action": "remove-tags-category", "categories": ["x"]},
                {"action": "set-folder", "folder": "f"},
                {"action": "set-conc-person"},
                {"action": "set-field", "field": "amount", "value": "12.50"},
                {"action": "add-notes", "notes": "more", "separator": "\n"},
                {"action": "set-date", "date": 1700000000000},
                {"action": "set-due-date", "dueDate": 1700000000001}]},
            {"command": "attachment-update", "itemId": "item-1", "attachId": "att.1@x",
             "actions": [{"action": "set-extracted-text", "text": "hello"}]}],
        "files": [
            {"itemId": "item-1", "textFiles": {"att1": "a.txt"}, "pdfFiles": {"att1": "sub/c.pdf"},
             "previewImages": {"att1": "sub/d.png"},
             "newFiles": [{"metadata": {"language": "deu", "skipDuplicate": True, "customData": {"k": [1, 2.5]}},
                           "file": "b.pdf"}]}],
        "newItems": [{"metadata": {"language": "eng", "direction": "incoming", "tags": ["t"]}, "files": ["a.txt"]}],
    }
    put("output", "full.json", json.dumps(full, indent=2))
    put("output", "empty.txt", "\n  \n")
    put("output", "lines.json", '{"newItems":\n\n [{"files": ["dlink/c.pdf"]}]}\n')
    put("output", "hello.json", '{"newItems": [{"metadata": {"tags": ["hello"]}, "files": ["hello.txt"]}]}')
    put("output", "escape.json", '{"files": [{"itemId": "x y", "textFiles": {"a": "../etc/passwd"}}]}')
    put("output", "through-link.json", '{"newItems": [{"files": ["out/hostname", "flink", "up/x"]}]}')


def dockerfiles():
    put("dockerfile", "guile-addon", (REPO / "executor/tests/fixtures/guile-addon/Dockerfile").read_bytes())
    put("dockerfile", "busybox",
        'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\nENV PATH=/bin\n'
        'COPY run.sh /run.sh\nENTRYPOINT ["/bin/sh", "/run.sh"]\n')
    put("dockerfile", "stages",
        "# escape=`\nARG TAG=bookworm-slim\nFROM debian:${TAG} AS build\nRUN make\nFROM build AS test\n"
        "FROM `\n  scratch\nFROM registry.example/tools:1 as tools\nCOPY --from=tools /a /b\n"
        "COPY --from=0 /c /d\nCOPY --from=busybox:1 /bin/busybox /bin/\nFROM debian:bookworm-slim\n")
    put("dockerfile", "mount-blank-line",
        "FROM scratch\nRUN \\\n\n  --mount=type=bind,source=hostlink,target=/h,rw cat /h/x\n")
    put("dockerfile", "mount-escape-crlf", "#escape = `\r\nFROM scratch\r\nRUN `  \r\n\r\n --mount=x y\r\n")
    put("dockerfile", "onbuild-network", "FROM scratch\nONBUILD RUN --network=host true\nRUN \\\n# c\n  --security=insecure x\n")
    put("dockerfile", "heredoc", "FROM scratch\nRUN <<EOF\nRUN --mount=type=bind,source=/,target=/h true\nEOF\n")
    put("dockerfile", "transports",
        "ARG B=containers-storage:[vfs@/x+/y]z\nFROM $B\nFROM ${C:-debian}\n"
        "COPY --from=docker-daemon:x:1 /a /b\nADD [\"https://example.org/x\", \"/x\"]\nADD git@example.org:x/y.git /s\n")
    put("dockerfile", "buildah-version",
        "Version:         1.28.2\nGo Version:      go1.19.8\nImage Spec:      1.1.0-rc2\n")
    put("dockerfile", "bom-directives", "\ufeff# syntax=docker/dockerfile:1\n# escape=\\\n# escape=`\nFROM a\n")


def handshakes():
    for name, line in [
        ("unix", "1|1|unix|/tmp/plugin123/plugin.sock|grpc\n"),
        ("tcp-cert", "1|1|tcp|127.0.0.1:1234|grpc|MIIBcert\n"),
        ("go-plugin-log", "1|1|unix|/tmp/p|grpc\n2024-01-01T00:00:00Z [INFO] plugin started\n"),
        ("netrpc", "1|1|unix|/p|netrpc\n"),
        ("versions", "2|2|udp||grpc\r\n"),
        ("not-a-plugin", "Usage: addon-runner-docker [OPTIONS]\n"),
    ]:
        put("handshake", name, line)


def tar_of(entries, end=True):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for e in entries:
            info = tarfile.TarInfo(e["name"])
            info.type = e.get("type", tarfile.REGTYPE)
            info.mode = e.get("mode", 0o644)
            info.linkname = e.get("link", "")
            data = e.get("data", b"")
            info.size = len(data) if info.type == tarfile.REGTYPE else 0
            t.addfile(info, io.BytesIO(data) if info.size else None)
    raw = buf.getvalue()
    if not end:
        raw = raw[: len(raw) - 1024 - (len(raw) % 10240 and 0)]
    # Trim tarfile's padding to the 10 KiB record: two zero blocks end an archive.
    body = raw.rstrip(b"\0")
    blocks = (len(body) + 511) // 512 * 512
    return raw[:blocks] + (b"\0" * 1024 if end else b"")


def tars():
    D, L = tarfile.DIRTYPE, tarfile.SYMTYPE
    tree = [{"name": "a", "type": D, "mode": 0o755}, {"name": "a/b", "type": D},
            {"name": "a/b/f", "data": b"hello", "mode": 0o4755}, {"name": "g", "data": b"x" * 600}]
    # The first byte is the policy: bit 0 symlinks, bit 1 a limit of 1000 bytes.
    put("copy_unpack", "tree-strict", b"\x02" + tar_of(tree))
    put("copy_unpack", "tree-lax", b"\x00" + tar_of(tree))
    links = [{"name": "l", "type": L, "link": "/etc"}, {"name": "l/escape", "data": b"x"},
             {"name": "m", "type": L, "link": "../.."}, {"name": "m", "data": b"over"}]
    put("copy_unpack", "links", b"\x01" + tar_of(links))
    put("copy_unpack", "links-kept", b"\x01" + tar_of([{"name": "d", "type": D}, {"name": "d/f", "data": b"f"},
                                                       {"name": "l", "type": L, "link": "d/f"},
                                                       {"name": "shadow", "type": L, "link": "/etc/shadow"}]))
    put("copy_unpack", "dotdot", b"\x01" + tar_of([{"name": "./ok", "data": b"1"}, {"name": "../escape", "data": b"x"}]))
    put("copy_unpack", "twice", b"\x03" + tar_of([{"name": "f", "data": b"1"}, {"name": "f", "data": b"2"}]))
    put("copy_unpack", "cut-short", b"\x00" + tar_of(tree, end=False))
    put("copy_unpack", "fifo-hardlink", b"\x01" + tar_of([{"name": "p", "type": tarfile.FIFOTYPE},
                                                          {"name": "f", "data": b"1"},
                                                          {"name": "h", "type": tarfile.LNKTYPE, "link": "f"}]))


def zips():
    def zip_of(entries):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data, mode in entries:
                info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED if data else zipfile.ZIP_STORED
                info.create_system = 3
                info.external_attr = mode << 16
                z.writestr(info, data)
        return buf.getvalue()

    desc = (REPO / "examples/hello/docspell-addon.yml").read_bytes()
    put("zip_extract", "github-top-dir.zip", zip_of([
        ("hello-1.0/", b"", 0o40755), ("hello-1.0/docspell-addon.yml", desc, 0o100644),
        ("hello-1.0/hello.sh", b"#!/bin/sh\necho hi\n", 0o100755)]))
    put("zip_extract", "links.zip", zip_of([
        ("src/", b"", 0o40755), ("src/run.sh", b"x", 0o100700), ("run", b"src/run.sh", 0o120777),
        ("s", b".", 0o120777), ("up", b"s/..", 0o120777)]))
    put("zip_extract", "links-inside.zip", zip_of([
        ("a/", b"", 0o40755), ("a/run.sh", b"#!/bin/sh\n", 0o100755), ("a/b/", b"", 0o40700),
        ("a/b/up", b"../run.sh", 0o120777), ("a/here", b"./b", 0o120777), ("a/x.txt", b"x", 0o100400)]))
    put("zip_extract", "slip.zip", zip_of([("ok", b"1", 0o100644), ("../escape", b"x", 0o100644)]))
    put("zip_extract", "below-link.zip", zip_of([("l", b"/etc", 0o120777), ("l/passwd", b"x", 0o100644)]))
    put("zip_extract", "bomb.zip", zip_of([("zeros", b"\0" * 200000, 0o100644)]))


if __name__ == "__main__":
    shutil.rmtree(CORPUS, ignore_errors=True)
    descriptors()
    outputs()
    dockerfiles()
    handshakes()
    tars()
    zips()
    total = sum(f.stat().st_size for f in CORPUS.rglob("*") if f.is_file())
    print(f"{sum(1 for f in CORPUS.rglob('*') if f.is_file())} seeds, {total} bytes, in {CORPUS}")
