#!/usr/bin/env python3
"""gen-corpus.py OUTDIR - write hand-made NBD client sessions (seed corpus).

Each file is the complete byte stream of one client, as the fuzz target
feeds it to the server: client flags, options, and in transmission the
requests with their WRITE payloads.  They cover what the recorded real
clients (make-corpus.sh) do not send: EXPORT_NAME with and without
NO_ZEROES, simple replies, STARTTLS, ABORT, PEEK_EXPORT, unknown options
and commands, every command flag, requests the server must refuse, and
traffic after DISC.  Export names and offsets match the fuzz target's
exports ("fuzz", default, read-write, and "ro", read-only, 4 MiB each;
"big", read-write, 64 MiB, for requests over the 32 MiB payload limit).
"""
import os
import struct
import sys

OPTS_MAGIC = 0x49484156454F5054
REQ_MAGIC = 0x25609513

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_PEEK, OPT_STARTTLS = 1, 2, 3, 4, 5
OPT_INFO, OPT_GO, OPT_SR, OPT_LIST_META, OPT_SET_META, OPT_EXT_HDR = 6, 7, 8, 9, 10, 11

CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE = 0, 1, 2, 3, 4, 5
CMD_WZ, CMD_BS, CMD_RESIZE = 6, 7, 8

F_FUA, F_NO_HOLE, F_DF, F_REQ_ONE, F_FAST_ZERO = 1, 2, 4, 8, 16

INFO_EXPORT, INFO_NAME, INFO_DESC, INFO_BLOCK = 0, 1, 2, 3

SIZE = 4 * 1024 * 1024
MAX_PAYLOAD = 32 * 1024 * 1024


def flags(f=3):
    """Client flags: FIXED_NEWSTYLE | NO_ZEROES by default."""
    return struct.pack(">I", f)


def opt(o, data=b""):
    return struct.pack(">QII", OPTS_MAGIC, o, len(data)) + data


def name_info(name, reqs=()):
    n = name.encode()
    return struct.pack(">I", len(n)) + n + struct.pack(">H", len(reqs)) + \
        b"".join(struct.pack(">H", r) for r in reqs)


def meta(name, queries):
    n = name.encode()
    out = struct.pack(">I", len(n)) + n + struct.pack(">I", len(queries))
    for q in queries:
        q = q.encode()
        out += struct.pack(">I", len(q)) + q
    return out


def go(name="fuzz", reqs=()):
    return opt(OPT_GO, name_info(name, reqs))


_cookie = [0]


def req(cmd, off=0, length=0, fl=0, payload=None):
    _cookie[0] += 1
    out = struct.pack(">IHHQQI", REQ_MAGIC, fl, cmd, _cookie[0], off, length)
    if cmd == CMD_WRITE:
        if payload is None:
            payload = bytes((i * 13 + _cookie[0]) & 0xff for i in range(length))
        out += payload
    return out


def disc():
    return req(CMD_DISC)


SR = opt(OPT_SR)
BOTH_CTX = opt(OPT_SET_META, meta("fuzz", ["base:allocation", "qemu:allocation-depth"]))

SESSIONS = {
    # --- handshake variants ---
    "gen-export-name-nozeroes": flags(3) + opt(OPT_EXPORT_NAME, b"fuzz") +
    req(CMD_READ, 0, 4096) + disc(),
    "gen-export-name-zeroes": flags(1) + opt(OPT_EXPORT_NAME, b"") +
    req(CMD_READ, 4096, 8192) + req(CMD_FLUSH) + disc(),
    "gen-export-name-unknown": flags(3) + opt(OPT_EXPORT_NAME, b"nosuch"),
    "gen-bad-client-flags": flags(0xffff) + opt(OPT_LIST),
    "gen-info-then-go": flags() + opt(OPT_INFO, name_info("ro", [INFO_NAME, INFO_DESC, INFO_BLOCK])) +
    opt(OPT_INFO, name_info("nosuch")) + go("fuzz", [INFO_EXPORT, INFO_NAME, 77]) +
    req(CMD_READ, 0, 512) + disc(),
    "gen-list-and-misc": flags() + opt(OPT_LIST) + opt(OPT_LIST, b"junk") + opt(OPT_PEEK) +
    opt(OPT_EXT_HDR) + opt(0x1234, b"x" * 10) + opt(OPT_SR, b"z") + go("") + disc(),
    "gen-starttls": flags() + opt(OPT_STARTTLS) + opt(OPT_STARTTLS, b"data") + SR +
    opt(OPT_STARTTLS) + BOTH_CTX + go() + req(CMD_BS, 0, SIZE) + disc(),
    "gen-abort": flags() + opt(OPT_LIST) + opt(OPT_ABORT) + opt(OPT_LIST),
    "gen-abort-data": flags() + opt(OPT_ABORT, b"ignored"),
    "gen-malformed-go": flags() + opt(OPT_GO, struct.pack(">I", 0xffffffff) + b"fuzz") +
    opt(OPT_GO, struct.pack(">I", 4) + b"fuzz" + struct.pack(">H", 3)) +
    opt(OPT_INFO, b"\0\0") + go(),
    "gen-meta-list": flags() + opt(OPT_LIST_META, meta("fuzz", [])) + SR +
    opt(OPT_LIST_META, meta("fuzz", [])) +
    opt(OPT_LIST_META, meta("", ["base:", "qemu:", "other:x", "base:allocation"])) +
    opt(OPT_LIST_META, meta("fuzz", ["nocolon"])) +
    opt(OPT_LIST_META, meta("nosuch", ["base:allocation"])) + opt(OPT_ABORT),
    "gen-meta-set-other-export": flags() + SR +
    opt(OPT_SET_META, meta("ro", ["base:allocation"])) + go("fuzz") +
    req(CMD_BS, 0, 65536) + disc(),
    "gen-too-many-options": flags() + opt(OPT_LIST) * 40,
    "gen-option-too-long": flags() + struct.pack(">QII", OPTS_MAGIC, OPT_LIST, 70000) +
    b"\0" * 70000 + go() + disc(),
    "gen-bad-option-magic": flags() + struct.pack(">QII", 0x1122334455667788, OPT_GO, 0),
    # --- transmission, simple replies ---
    "gen-simple-io": flags() + go() + req(CMD_WRITE, 0, 4096) + req(CMD_READ, 0, 4096) +
    req(CMD_WRITE, 8192 + 100, 300, F_FUA) + req(CMD_TRIM, 65536, 65536) +
    req(CMD_WZ, 1048576, 8192) + req(CMD_WZ, 2097152, 4096, F_NO_HOLE) +
    req(CMD_WZ, 3145728, 4096, F_FAST_ZERO) + req(CMD_CACHE, 0, 65536) +
    req(CMD_FLUSH) + req(CMD_READ, 0, 0) + req(CMD_WRITE, 0, 0) + disc(),
    "gen-simple-errors": flags() + go() + req(CMD_READ, SIZE - 512, 1024) +
    req(CMD_WRITE, SIZE, 512) + req(CMD_READ, 0, 512, F_DF) + req(CMD_BS, 0, 4096) +
    req(CMD_FLUSH, 1, 1) + req(CMD_RESIZE, 0, 0) + req(0x55, 0, 0) +
    req(CMD_READ, 0, 512, 0x8000) + req(CMD_TRIM, 0xffffffffffff0000, 0x20000) + disc(),
    "gen-ro-export": flags() + go("ro") + req(CMD_READ, 0, 8192) + req(CMD_WRITE, 0, 512) +
    req(CMD_TRIM, 0, 4096) + req(CMD_WZ, 0, 4096) + req(CMD_FLUSH) + disc(),
    "gen-after-disc": flags() + go() + req(CMD_READ, 0, 512) + disc() +
    req(CMD_WRITE, 0, 4096) + req(CMD_READ, 0, 4096) + b"garbage",
    "gen-bad-request-magic": flags() + go() + struct.pack(">IHHQQI", 0xdeadbeef, 0, 0, 1, 0, 512),
    "gen-write-truncated": flags() + go() + req(CMD_WRITE, 0, 65536)[:28 + 1000],
    # --- transmission, structured replies and block status ---
    "gen-structured-io": flags() + SR + BOTH_CTX + go() +
    req(CMD_READ, 0, 3 * 4096 * 4) + req(CMD_READ, 4096, 4096, F_DF) +
    req(CMD_READ, SIZE - 1024, 4096) + req(CMD_READ, 0, 0) +
    req(CMD_WRITE, 2097152 + 8192 + 7, 5000) + req(CMD_BS, 0, SIZE) +
    req(CMD_BS, 4096, 1, F_REQ_ONE) + req(CMD_BS, 0, 0xffffffff) + req(CMD_BS, SIZE, 1) +
    req(CMD_BS, 0, 0) + req(CMD_WZ, 4096, 4096 * 3, F_FAST_ZERO) + req(CMD_FLUSH) + disc(),
    "gen-structured-errors": flags() + SR + go() + req(CMD_BS, 0, 4096) +
    req(CMD_READ, 0, 33 * 1024 * 1024) + req(CMD_READ, SIZE, 1) + req(CMD_WRITE, SIZE - 1, 2) +
    disc(),
    "gen-meta-base-only": flags() + SR +
    opt(OPT_SET_META, meta("fuzz", ["base:allocation", "base:"])) + go() +
    req(CMD_BS, 1048576, 1048576) + req(CMD_BS, 0, SIZE, F_REQ_ONE) + disc(),
    "gen-meta-depth-only": flags() + SR +
    opt(OPT_SET_META, meta("", ["qemu:allocation-depth"])) + go("") +
    req(CMD_BS, 2097152, 65536) + disc(),
    # --- the 64 MiB export: the payload limit, not the size, decides ---
    "gen-big-oversized-structured": flags() + SR + go("big") +
    req(CMD_READ, 0, MAX_PAYLOAD + 1) + req(CMD_READ, 0, MAX_PAYLOAD + 1, F_DF) +
    req(CMD_READ, 48 * 1024 * 1024, 8192) + req(CMD_WZ, 0, 0xffffffff) + req(CMD_TRIM, 0, 0xffffffff) +
    disc(),
    "gen-big-oversized-simple": flags() + go("big") + req(CMD_READ, 0, MAX_PAYLOAD + 1) +
    req(CMD_READ, 60 * 1024 * 1024, 4096) + req(CMD_WRITE, 0, 2048) +
    struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_WRITE, 99, 0, MAX_PAYLOAD + 1) + b"\0" * 64,
    "gen-pipelined-writes": flags() + SR + go() +
    b"".join(req(CMD_WRITE, (i * 4096 * 5) % SIZE, 512) for i in range(70)) +
    b"".join(req(CMD_READ, (i * 4096 * 5) % SIZE, 4096) for i in range(20)) + disc(),
}


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for name, data in sorted(SESSIONS.items()):
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    print("wrote %d sessions to %s" % (len(SESSIONS), out))


if __name__ == "__main__":
    main()
