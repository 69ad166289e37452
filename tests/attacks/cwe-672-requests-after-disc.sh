#!/bin/bash
# CWE-672 class (operation on a resource after its release): requests that
# follow NBD_CMD_DISC in the same stream.  No NBD CVE is named for it; the
# danger is a server that keeps parsing, or writing to the image, for a
# session the client has ended (and whose state it may be tearing down).
#
# The spec: on NBD_CMD_DISC the server MUST handle all outstanding
# requests, and then close the connection; DISC itself gets no reply, and
# a client MUST NOT send anything after it.  Checked, with everything sent
# in one segment so that it is all in the server's buffer at once:
#   - a WRITE before DISC is answered and lands; WRITEs, TRIMs, READs and
#     garbage after it get no reply and never reach the image;
#   - a 1 MiB READ before DISC is answered completely before the close;
#   - 64 pipelined WRITEs then DISC, with structured replies: 64 replies,
#     then the close;
#   - DISC with junk fields (flags, offset, length) still ends the session.
. "$top_srcdir/tests/attacks/attack-common.sh"
exec "$PY" - <<'PY'
import os, struct, sys
from attacklib import *


def drain_replies(c, n_expected, what):
    """Read simple replies until the server closes: returns {cookie: error}."""
    got = {}
    while True:
        try:
            h = c.reply_header()
        except Closed:
            break
        check(h[0] == "simple", "%s: unexpected reply %r" % (what, h))
        got[h[2]] = h[1]
        check(len(got) <= n_expected, "%s: reply for cookie %d, after DISC" % (what, h[2]))
    return got


def test(srv):
    img = srv.make_image("disk.qed", 64 * MiB)
    srv.start([img])

    a, b = os.urandom(4096), os.urandom(4096)
    c = Client(srv)
    c.greet()
    c.negotiate("")
    stream = req_bytes(CMD_WRITE, 1 * MiB, 4096, cookie=1, payload=a)
    stream += req_bytes(CMD_DISC, cookie=2)
    stream += req_bytes(CMD_WRITE, 1 * MiB, 4096, cookie=3, payload=b)      # over A
    stream += req_bytes(CMD_WRITE, 2 * MiB, 4096, cookie=4, payload=b)      # on zeros
    stream += req_bytes(CMD_READ, 0, 4096, cookie=5)
    stream += req_bytes(CMD_FLUSH, cookie=6)
    stream += req_bytes(CMD_WRITE_ZEROES, 1 * MiB, 4096, cookie=7)
    stream += b"\xde\xad\xbe\xef" * 64
    c.try_send(stream)
    got = drain_replies(c, 1, "WRITE, DISC, more")
    log("  WRITE + DISC + 5 requests + garbage: replies %s" % sorted(got.items()))
    check(got == {1: 0}, "expected exactly one reply (cookie 1, success), got %r" % got)
    c.close()

    c = Client(srv)
    c.greet()
    c.negotiate("")
    err, data = c.read(1 * MiB, 4096)
    check(err == 0 and data == a, "the WRITE before DISC did not land, or one after it did")
    err, data = c.read(2 * MiB, 4096)
    check(err == 0 and data == bytes(4096), "a WRITE sent after DISC reached the image")
    log("  the image has the WRITE before DISC and none of those after it")

    # A large READ before DISC is answered in full, then the close.
    c.try_send(req_bytes(CMD_READ, 1 * MiB - 4096, MiB, cookie=50) +
               req_bytes(CMD_DISC, cookie=51) + req_bytes(CMD_READ, 0, 512, cookie=52))
    err, data = c.simple_reply(50, MiB)
    check(err == 0 and data[4096:8192] == a, "READ before DISC: error %d or wrong data" % err)
    rest = c.wait_closed(10)
    check(rest == b"", "%d bytes after the READ reply: a request after DISC was served" % len(rest))
    c.close()
    log("  1 MiB READ + DISC: complete reply, then the close")

    # Pipelined structured session.
    c = Client(srv)
    c.greet()
    c.negotiate("", structured=True)
    stream = b"".join(req_bytes(CMD_WRITE, 8 * MiB + i * 4096, 4096, cookie=100 + i,
                                payload=bytes([i]) * 4096) for i in range(64))
    stream += req_bytes(CMD_DISC, cookie=999)
    stream += b"".join(req_bytes(CMD_WRITE, 8 * MiB + i * 4096, 4096, cookie=200 + i,
                                 payload=b"\xff" * 4096) for i in range(64))
    c.try_send(stream)
    seen = set()
    while True:
        try:
            h = c.reply_header()
        except Closed:
            break
        cookie = h[2] if h[0] == "simple" else h[3]
        if h[0] == "chunk":
            c.recv_exact(h[4])
        check(100 <= cookie < 164, "reply for cookie %d: after DISC" % cookie)
        seen.add(cookie)
    check(len(seen) == 64, "%d of the 64 WRITEs before DISC answered" % len(seen))
    c.close()
    c = Client(srv)
    c.greet()
    c.negotiate("")
    err, data = c.read(8 * MiB, 64 * 4096)
    check(err == 0 and data == b"".join(bytes([i]) * 4096 for i in range(64)),
          "the 64 WRITEs before DISC did not land as sent, or later ones did")
    log("  64 pipelined WRITEs + DISC + 64 more: 64 replies, only the first 64 landed")

    # DISC with junk in its fields still ends the session.
    c.try_send(req_bytes(CMD_DISC, offset=12345, length=999, flags=0, cookie=77) +
               req_bytes(CMD_WRITE, 8 * MiB, 4096, cookie=78, payload=b"\x01" * 4096))
    rest = c.wait_closed(10)
    check(rest == b"", "requests after a DISC with junk fields were answered")
    c.close()

    check_alive(srv)
    srv.stop()


sys.exit(run(test, "CWE-672 class: requests after DISC"))
PY
