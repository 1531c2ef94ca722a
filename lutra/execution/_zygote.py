"""The Python sandbox's zygote (fork server): one per worker slot, started by `lutra.execution.python`.

It imports the data-science stack once (thread variables pinned to 1, Agg backend), then for every task:
1. it has already forked a *spare*: a clean child made before the task was read, so the task (and a DS-1000
   record's reference code) was never in its memory. The spare confines itself (sandbox.confine) on its first
   message and then runs untrusted code, talking only over its socket and answering only in bytes (JSON or
   lutra's safe codec; the zygote and the trusted checker never unpickle what it sends);
2. for a DS-1000 record it forks a *trusted* child (the checker) that runs `code_context`, builds each test
   case, sends the inputs to the spare, decodes the spare's result and calls `exec_test` itself (it loads the
   same syscall filter as the spare before it runs the record's code);
3. at the deadline it kills the checker and the spare; afterwards it kills every process left in its PID
   namespace (`kill(-1)`, only when it is PID 1) or, without a namespace, the spare's process group and any
   orphan reparented to it (it is a child subreaper), removes the task dir and forks the next spare.
Results go to the parent as plain dicts built here (trusted code).
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import tempfile
import time
from multiprocessing.connection import Connection

from lutra.execution import _codec, _ds1000_check, _isolate, _seccomp, sandbox  # noqa: F401 - _codec: preloaded
from lutra.execution._spare import Spare

TAIL = 4096


def _preload(mods: list[str]) -> list[str]:
    os.environ.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg")
    done = []
    for m in mods:
        try:
            __import__(m)
            done.append(m)
        except Exception:  # noqa: BLE001 - a missing library only costs its import time later
            pass
    return done


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - TAIL))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


class _Late(Exception):
    pass


class _alarm:
    """Interrupt a blocking read of the zygote after `seconds` (SIGALRM; the zygote is single-threaded)."""

    def __init__(self, seconds: float):
        self.seconds = max(0.01, seconds)

    def __enter__(self):
        self.old = signal.signal(signal.SIGALRM, self._fire)
        signal.setitimer(signal.ITIMER_REAL, self.seconds)

    def __exit__(self, *exc):
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.old)

    @staticmethod
    def _fire(signum, frame):
        raise _Late


def _classify(st, answered: bool, timed_out: bool) -> tuple[str, str]:
    if timed_out:
        return "timeout", "deadline"
    if st is not None and os.WIFSIGNALED(st):
        sig = os.WTERMSIG(st)
        if sig == signal.SIGXFSZ:
            return "output_flood", "output or file size cap reached (SIGXFSZ)"
        if sig == signal.SIGXCPU:
            return "timeout", "CPU limit (SIGXCPU)"
        return ("killed" if sig == signal.SIGKILL else "error"), f"killed by signal {sig}"
    return "error", "exited before finishing (exit code %s)" % (os.WEXITSTATUS(st) if st is not None else "?")


class Zygote:
    def __init__(self, slot: int, isolation: str, uid: int | None):
        self.uid, self.isolation = uid, isolation
        if isolation == "mount_namespace":  # a tmpfs inside the private root, gone with the namespace
            self.root = _isolate.SBX
        else:
            self.root = tempfile.mkdtemp(prefix=f"lutra-sbx-{slot}-")
            os.chmod(self.root, 0o711)
        self.is_init = os.getpid() == 1
        if not self.is_init:  # orphans of our descendants come back to us, so we can kill them
            try:
                ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
            except (OSError, AttributeError):
                pass
        self.spare = Spare(self.root, self.uid, self.isolation)

    def cleanup(self, spare: Spare) -> None:
        try:
            os.killpg(spare.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.is_init:
            try:
                os.kill(-1, signal.SIGKILL)  # PID 1 of our own namespace: every other process in it
            except ProcessLookupError:
                pass
        else:
            me = str(os.getpid())
            for p in os.listdir("/proc"):
                if p.isdigit():
                    try:
                        with open(f"/proc/{p}/stat") as f:
                            if f.read().rsplit(")", 1)[1].split()[1] == me:
                                os.kill(int(p), signal.SIGKILL)
                    except (OSError, IndexError):
                        pass
        while True:
            try:
                if os.waitpid(-1, 0)[0] == 0:
                    break
            except ChildProcessError:
                break
        spare.conn.close()
        sandbox.rmtree(spare.dir)

    def handle(self, task: dict) -> dict:
        t0 = time.monotonic()
        spare, self.spare = self.spare, None
        try:
            if task["op"] == "program":
                r = self._program(spare, task)
            else:
                r = self._ds1000(spare, task)
        finally:
            r_out, r_err = _tail(spare.out), _tail(spare.err)
            try:
                self.cleanup(spare)
            finally:
                self.spare = Spare(self.root, self.uid, self.isolation)
        r.setdefault("stdout", r_out)
        r.setdefault("stderr", r_err)
        r["seconds"] = time.monotonic() - t0
        return r

    def _program(self, spare: Spare, task: dict) -> dict:
        deadline = time.monotonic() + task["timeout_s"]
        _ds1000_check.ship(spare.conn, {"cpu_s": task["timeout_s"], "memory_mb": task["memory_mb"]})
        _ds1000_check.ship(spare.conn, {"kind": "program", "code": task["code"]})
        data = None
        if spare.conn.poll(task["timeout_s"]):
            try:
                with _alarm(max(0.0, deadline - time.monotonic()) + 0.5):  # a header, then nothing: not our hang
                    data = spare.conn.recv_bytes(1 << 20)
            except (EOFError, OSError, _Late):
                pass
        exited, st = spare.wait(max(0.0, deadline - time.monotonic()) + 0.2)
        timed_out = time.monotonic() > deadline and data is None and not exited
        if data == b'{"done": true}':
            return {"status": "ok", "error": "", "exit_code": 0}
        if data and data[:1] == b"M":
            return {"status": "oom", "error": "MemoryError"}
        status, err = _classify(st, False, timed_out)
        if data and data[:1] == b"E":
            status, err = "error", data[1:].decode(errors="replace")
        if status == "error" and "MemoryError" in err:
            status = "oom"
        flooded = any(os.path.getsize(f) >= sandbox.OUTPUT_CAP for f in (spare.out, spare.err))
        if status == "error" and ("File too large" in err or flooded):  # Python ignores SIGXFSZ: EFBIG
            status = "output_flood"
        return {"status": status, "error": err[-TAIL:]}

    def _ds1000(self, spare: Spare, task: dict) -> dict:
        task = dict(task, dir=spare.dir)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # ---------------------------------------------------------------- the checker
            try:
                os.setsid()
                os.close(r)
                if sandbox.SECCOMP:  # it runs the record's code_context, as the zygote's user (root, as root)
                    try:
                        _seccomp.install()
                    except OSError as e:
                        os.write(w, json.dumps({"status": "error", "passed": False, "error": f"seccomp: {e}"}).encode())
                        raise
                _ds1000_check.trusted(spare.conn, task, w)
            finally:
                os._exit(0)
        os.close(w)
        end = time.monotonic() + task["timeout_s"] + 1.0
        buf = b""
        while time.monotonic() < end:
            ready, _, _ = select.select([r], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                break
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            buf += chunk
        os.close(r)
        try:
            out = json.loads(buf) if buf else {"status": "timeout", "passed": False, "error": "checker deadline"}
        except ValueError:
            out = {"status": "error", "passed": False, "error": "checker sent garbage"}
        if out["status"] in ("error", "timeout") and not out.get("passed"):
            exited, st = spare.wait(0.05)
            if exited and os.WIFSIGNALED(st):
                out["status"], out["error"] = _classify(st, False, False)
        return out


def main(argv: list[str]) -> None:
    slot, preload, isolation = int(argv[0]), [m for m in argv[1].split(",") if m], argv[2]
    uid = None if argv[3] == "-" else int(argv[3])
    extra = json.loads(argv[4])
    rfd, wfd = int(argv[5]), int(argv[6])
    sandbox.EXTRA_READ[:] = extra["read"]
    sandbox.EXTRA_ENV.update(extra["env"])
    sandbox.SECCOMP = bool(extra.get("seccomp"))
    if sandbox.SECCOMP:
        _seccomp.prepare()  # built once here; each spare and checker only loads it
    os.environ.update(extra["env"])  # the checker's dataset loads see the same caches
    if isolation == "mount_namespace":
        _isolate.private_tmp()  # before any import caches something in /tmp
    loaded = _preload(preload)
    recv, send = Connection(rfd, writable=False), Connection(wfd, readable=False)
    os.set_inheritable(rfd, False)
    os.set_inheritable(wfd, False)
    if isolation == "mount_namespace":
        _isolate.build_root(_isolate.keep_paths() + sandbox.EXTRA_READ)
    z = Zygote(slot, isolation, uid)
    send.send({"ready": True, "preloaded": loaded, "pid1": z.is_init})
    try:
        while True:
            try:
                task = recv.recv()
            except (EOFError, OSError):
                return
            try:
                send.send(z.handle(task))
            except Exception as e:  # noqa: BLE001 - the zygote keeps serving
                send.send({"status": "killed", "error": f"zygote: {type(e).__name__}: {e}"[-TAIL:],
                           "seconds": 0.0})
    finally:
        if z.spare is not None:
            z.cleanup(z.spare)
        if z.root != _isolate.SBX:
            sandbox.rmtree(z.root)
        os._exit(0)  # no atexit handlers: their paths (matplotlib's cache dir) lie in the root we left
