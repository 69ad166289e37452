#!/usr/bin/env python3
"""nbd-record.py - a recording proxy for NBD sessions (seed corpus tool).

Usage: nbd-record.py LISTEN_SOCKET SERVER_SOCKET OUTDIR

Listens on the Unix socket LISTEN_SOCKET; every client that connects is
forwarded to the NBD server listening on the Unix socket SERVER_SOCKET.
The bytes the client sends (client -> server only: that is what the fuzz
target feeds to the server) are saved, once the connection ends, in
OUTDIR/NAME, where NAME is read from the file OUTDIR/.next-name when it
exists (the driver script writes it before each client) or "conn-N".
Runs until SIGTERM/SIGINT.
"""
import os
import selectors
import signal
import socket
import sys


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    listen_path, server_path, outdir = sys.argv[1:]
    os.makedirs(outdir, exist_ok=True)
    if os.path.exists(listen_path):
        os.unlink(listen_path)
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(listen_path)
    lsock.listen(16)
    lsock.setblocking(False)

    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ, ("listen", None))
    count = [0]
    # session: dict(client, server, data, name, open_dirs)
    stop = [False]

    def on_signal(signum, frame):
        stop[0] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def finish(sess):
        for s in (sess["client"], sess["server"]):
            try:
                sel.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()
        path = os.path.join(outdir, sess["name"])
        with open(path, "wb") as f:
            f.write(bytes(sess["data"]))
        print("recorded %s (%d bytes)" % (path, len(sess["data"])), flush=True)

    while not stop[0]:
        for key, _ in sel.select(timeout=0.2):
            kind, sess = key.data
            if kind == "listen":
                try:
                    client, _ = lsock.accept()
                except BlockingIOError:
                    continue
                server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                server.connect(server_path)
                count[0] += 1
                name = "conn-%d" % count[0]
                nf = os.path.join(outdir, ".next-name")
                if os.path.exists(nf):
                    with open(nf) as f:
                        name = f.read().strip() or name
                    os.unlink(nf)
                sess = {"client": client, "server": server, "data": bytearray(),
                        "name": name, "done": False}
                sel.register(client, selectors.EVENT_READ, ("client", sess))
                sel.register(server, selectors.EVENT_READ, ("server", sess))
                continue
            if sess["done"]:
                continue
            src = key.fileobj
            dst = sess["server"] if kind == "client" else sess["client"]
            try:
                buf = src.recv(1 << 20)
            except OSError:
                buf = b""
            if not buf:
                # One side is gone: the session is over (NBD has no half-close use).
                sess["done"] = True
                finish(sess)
                continue
            if kind == "client":
                sess["data"] += buf
            try:
                dst.sendall(buf)
            except OSError:
                sess["done"] = True
                finish(sess)
    lsock.close()
    os.unlink(listen_path)


if __name__ == "__main__":
    main()
