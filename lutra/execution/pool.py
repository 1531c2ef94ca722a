"""A pool of long-lived, killable worker processes (never `multiprocessing.Pool`, which hangs when a worker dies).

Each worker is a subprocess in its own session, started once and reused, talking to the parent over two pipes
with length-prefixed messages (`multiprocessing.connection.Connection`). One parent thread drives one worker:
it sends a task and waits for the answer until the task's hard deadline. A worker that misses the deadline is
SIGKILLed (its whole process group) and replaced, and the task gets status `timeout`; a worker that dies (OOM
killer, segfault) gives `killed`; the pool carries on either way. Workers exit on their own when the parent's
pipe closes, and every live pool is closed at interpreter exit.

The parent unpickles what workers send back, so a worker must never run untrusted *Python*: the SQL worker
runs untrusted SQL inside SQLite only, and the Python sandbox's zygote returns JSON built by trusted code.
"""

from __future__ import annotations

import atexit
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

_PKG_PARENT = str(Path(__file__).resolve().parents[2])
START_TIMEOUT_S = 60.0
_LIVE: weakref.WeakSet[WorkerPool] = weakref.WeakSet()


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


class _Worker:
    def __init__(self, argv: list[str], env: dict):
        r_task, w_task = os.pipe()
        r_res, w_res = os.pipe()
        self.proc = subprocess.Popen(
            argv + [str(r_task), str(w_res)], pass_fds=(r_task, w_res), stdin=subprocess.DEVNULL,
            start_new_session=True, env=env, close_fds=True)
        os.close(r_task)
        os.close(w_res)
        self.send = Connection(w_task, readable=False)
        self.recv = Connection(r_res, writable=False)
        self.hello = self.recv.recv() if self.recv.poll(START_TIMEOUT_S) else None
        if not (self.hello == "ready" or (isinstance(self.hello, dict) and self.hello.get("ready"))):
            self.kill()
            raise OSError(f"worker {argv[:4]} did not start within {START_TIMEOUT_S} s")

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.close()
        self.proc.wait()

    def close(self) -> None:
        for c in (self.send, self.recv):
            try:
                c.close()
            except OSError:
                pass


class WorkerPool:
    """`n` workers each running `python -m <module> <task_fd> <result_fd>` (see `lutra.execution._worker`).

    argv: command prefix for one worker (default `[python, -m, lutra.execution._worker, kind]`), or a function
    of the worker's slot number returning it.
    """

    def __init__(self, kind: str, n: int, *, argv: list[str] | Callable[[int], list[str]] | None = None,
                 env: dict | None = None):
        self.kind, self.n = kind, n
        default = [sys.executable, "-m", "lutra.execution._worker", kind]
        self.argv_for = argv if callable(argv) else (lambda slot: argv or default)
        self.env = env if env is not None else _worker_env()
        self._slots: list[_Worker | None] = [None] * n
        self._lock = threading.Lock()
        self.spawned = 0
        _LIVE.add(self)

    def _worker(self, slot: int) -> _Worker:
        w = self._slots[slot]
        if w is None or w.proc.poll() is not None:
            if w is not None:
                w.kill()
            w = self._slots[slot] = _Worker(self.argv_for(slot), self.env)
            self.spawned += 1
        return w

    def _call(self, slot: int, payload: Any, hard_s: float) -> dict:
        t0 = time.monotonic()
        try:
            w = self._worker(slot)
            w.send.send(payload)
            if w.recv.poll(hard_s):
                return w.recv.recv()
            status, err = "timeout", f"no answer within {hard_s:.1f} s: worker killed"
        except (EOFError, OSError, BrokenPipeError) as e:
            status, err = "killed", f"worker died ({type(e).__name__}); replaced"
        w = self._slots[slot]
        if w is not None:
            w.kill()
            code = w.proc.returncode
            if status == "killed" and code is not None and code < 0:
                err = f"worker died (signal {-code}); replaced"
        self._slots[slot] = None
        return {"status": status, "seconds": time.monotonic() - t0, "error": err}

    def map(self, tasks: list[tuple[Any, float]], workers: int | None = None) -> Iterator[tuple[int, dict]]:
        """Run [(payload, hard_deadline_s), ...]; yields (index, result) as tasks finish."""
        n = max(1, min(workers or self.n, self.n, len(tasks)))
        todo: queue.Queue = queue.Queue()
        for i, t in enumerate(tasks):
            todo.put((i, t))
        done: queue.Queue = queue.Queue()

        def drive(slot: int) -> None:
            while True:
                try:
                    i, (payload, hard_s) = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    done.put((i, self._call(slot, payload, hard_s)))
                except BaseException as e:  # noqa: BLE001 - never lose a task's slot in the output
                    done.put((i, {"status": "killed", "seconds": 0.0, "error": f"pool: {e!r}"}))

        with self._lock:
            threads = [threading.Thread(target=drive, args=(s,), daemon=True) for s in range(n)]
            for t in threads:
                t.start()
            for _ in range(len(tasks)):
                yield done.get()
            for t in threads:
                t.join()

    def hellos(self) -> list:
        return [w.hello for w in self._slots if w is not None]

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._slots if w is not None and w.proc.poll() is None]

    def close(self) -> None:
        for w in self._slots:
            if w is not None:
                w.close()  # EOF on the task pipe: the worker exits by itself
        deadline = time.monotonic() + 1.0
        for s, w in enumerate(self._slots):
            if w is not None:
                try:
                    w.proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
                w.kill()
                self._slots[s] = None


def _worker_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR")}
    env["PYTHONPATH"] = _PKG_PARENT + os.pathsep + os.environ.get("PYTHONPATH", "")
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    return env


@atexit.register
def close_all() -> None:
    for p in list(_LIVE):
        p.close()
