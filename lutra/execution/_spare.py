"""The spare: a clean child the zygote forks before it reads a task, which then confines itself and runs the
program (or a DS-1000 solution), talking only over its socket and answering only in bytes (see _zygote)."""

from __future__ import annotations

import os
import socket
import struct
import sys
import tempfile
import time
import traceback
from multiprocessing.connection import Connection

from lutra.execution import _codec, _ds1000_check, sandbox

TAIL = 4096


class Spare:
    """A clean forked child waiting for its first message on a socket."""

    def __init__(self, root: str, uid, isolation: str):
        self.dir = tempfile.mkdtemp(prefix="task-", dir=root)
        os.chmod(self.dir, 0o711)
        for d in ("work", "shm"):  # the program's /tmp and /dev/shm under a mount namespace
            os.mkdir(os.path.join(self.dir, d), 0o700)
            if uid is not None:
                os.chown(os.path.join(self.dir, d), uid, uid)
        self.out, self.err = os.path.join(self.dir, "stdout"), os.path.join(self.dir, "stderr")
        fds = [os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600) for p in (self.out, self.err)]
        mine, theirs = socket.socketpair()
        self.pid = os.fork()
        if self.pid == 0:  # ------------------------------------------------------------- the spare
            try:
                os.setsid()
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.dup2(fds[0], 1)
                os.dup2(fds[1], 2)
                keep = theirs.detach()
                os.dup2(keep, 3)
                os.closerange(4, 65536)
                _spare_main(3, self.dir, uid, isolation)
            finally:
                os._exit(70)
        for fd in fds:
            os.close(fd)
        theirs.close()
        self.sock = mine
        self.conn = Connection(mine.detach())

    def wait(self, timeout: float):
        """(exited, status) after up to `timeout` seconds."""
        end = time.monotonic() + timeout
        while True:
            pid, st = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return True, st
            if time.monotonic() >= end:
                return False, None
            time.sleep(0.005)


def _spare_main(fd: int, task_dir: str, uid, isolation: str) -> None:
    conn = Connection(fd)
    first = conn.recv()  # trusted side -> here: pickle is fine in this direction
    sandbox.confine(task_dir, uid, first["cpu_s"], first["memory_mb"], isolation)
    sys.argv = ["program"]
    import builtins

    def send(payload: bytes, _w=os.write, _pack=struct.pack, _len=len, _fd=fd) -> None:
        # Connection's framing by hand, with functions bound now: the program may rebind len, os or the
        # Connection class, and must not be able to wedge the zygote's read by doing so
        buf = _pack("!i", _len(payload)) + payload
        while buf:
            buf = buf[_w(_fd, buf):]

    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            os._exit(0)
        kind = msg["kind"]
        try:
            if kind == "program":
                g = {"__name__": "__main__", "__builtins__": builtins}
                exec(compile(msg["code"], "<program>", "exec"), g)
                _flush()
                send(b'{"done": true}')
                os._exit(0)
            elif kind == "case":
                for name, data in (msg.get("files") or {}).items():
                    if "/" not in name and name not in (".", ".."):
                        with open(name, "wb") as f:
                            f.write(data)
                blob = msg.get("input_codec")
                env = {"test_input": _codec.decode(blob) if blob is not None else msg["input"]}
                exec(msg["code"], env)
                result = _ds1000_check.figures_reply(env["result"]) if msg.get("figures") else env["result"]
                send(b"R" + _codec.encode(result))
        except SystemExit as e:
            if kind == "program" and e.code in (None, 0):
                _flush()
                send(b'{"done": true}')
                os._exit(0)
            send(b"E" + f"SystemExit({e.code!r})".encode())
            os._exit(1)
        except MemoryError:
            send(b"M")
            os._exit(1)
        except BaseException:  # noqa: BLE001 - reported to the trusted side as text
            tb = traceback.format_exc()
            try:
                sys.stderr.write(tb)
            except BaseException:  # noqa: BLE001 - stderr may be full (FSIZE) or replaced
                pass
            send(b"E" + tb[-TAIL:].encode(errors="replace"))
            if kind == "program":
                os._exit(1)


def _flush() -> None:
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except Exception:  # noqa: BLE001 - the program may have replaced or closed them
            pass
