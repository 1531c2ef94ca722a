"""Sandboxed Python: single programs and DS-1000 records, run from pre-imported zygotes (fork servers).

Each worker slot is a zygote (`lutra.execution._zygote`) with numpy / pandas / matplotlib (Agg) / scipy /
sklearn already imported and thread variables set to 1, so a DS-1000 program costs a fork, not the ~1.9 s of a
fresh interpreter importing the stack. Every program runs in a forked child that was made *before* its task
was read (so no reference code or expected answer is in its memory), in a new session, confined by
`lutra.execution.sandbox` (see `capabilities()` for what is in force here).

What it protects against, when the capability is present (tests/test_execution_python.py has one test per
row of reliability.md 5.3):
- runaway programs: CPU and wall deadlines enforced from outside (SIGKILL of the process group; PID-namespace
  `kill(-1)` reaps double-forked daemons), `input()` gets EOF, output goes to files capped by RLIMIT_FSIZE
  (`output_flood`), RLIMIT_AS (`oom`), NPROC/NOFILE for fork and fd bombs;
- damage outside the temp dir: as root the child runs as an unprivileged uid (root-owned files stay intact);
  a network namespace has no route out; the environment is an allow-list (no API keys, CUDA hidden);
- forged verdicts: exit codes, stdout text and `os._exit(0)` never mean pass. For DS-1000 records the
  expected answers and `exec_test` live in a separate trusted checker process; the solution's process gets
  only the test inputs and returns `result` in a safe format (lutra.execution._codec: JSON + raw arrays, never
  pickle), so rebinding `np.testing`, walking frames or gc for the expected answer, `__eq__` that is always
  true, poisoning the oracle, or exiting 0 cannot make a wrong answer pass. Results that cannot be
  represented are wrong.
- The documented exception: records whose expected answer cannot be represented faithfully (Matplotlib
  figures checked through `plt.gca()`, ans.png, sklearn/scipy objects...) run the official harness in the
  solution's process with tamper detection: identities of the comparison functions before and after, the
  hash of `ans.png` before each `exec_test`, and a nonce-carrying report after the checks. That stops
  learned or accidental tampering (verdict `tamper`, counted), not a determined attacker in the same process.

What it does not protect against: kernel exploits; reading world-readable files of the host (there is no
mount namespace or chroot); without a PID namespace, a daemon that leaves its session can outlive the task;
without root, no uid drop (the program can delete what the calling user can); network access when no
network namespace is available (reported as `net_namespace: False`).
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from dataclasses import dataclass

from lutra.execution import Verdict
from lutra.execution.pool import _PKG_PARENT, WorkerPool, default_workers
from lutra.execution.sandbox import capabilities, require_isolation

PRELOAD = ("numpy", "pandas", "matplotlib", "matplotlib.pyplot", "scipy", "scipy.stats", "sklearn", "PIL.Image")
"""Imported once in every zygote (torch and tensorflow are not: they start threads that do not survive fork)."""
MEMORY_MB = 4096
GRACE_S = 5.0
_BOOT = "import sys; sys.path.insert(0, {root!r}); from lutra.execution._zygote import main; main(sys.argv[1:])"
_POOLS: dict = {}
_LOCK = threading.Lock()
last_stats: dict = {}


@dataclass
class PyResult:
    status: str
    """ok | error | timeout | oom | killed | output_flood | tamper."""
    seconds: float = 0.0
    error: str = ""
    stdout: str = ""
    """Last 4 KiB of stdout."""
    stderr: str = ""
    passed: bool | None = None
    """DS-1000 records: the trusted checker's verdict (None for plain programs)."""
    path: str = ""
    """DS-1000 records: `isolated` (checker in its own process) or `inproc` (tamper-detected exception)."""


def pool(workers: int | None = None, preload: tuple = PRELOAD) -> WorkerPool:
    n = workers or default_workers()
    key = (n, tuple(preload))
    with _LOCK:
        if key not in _POOLS:
            for p in _POOLS.values():
                p.close()
            _POOLS.clear()
            caps = capabilities()
            iso = require_isolation()
            prefix = caps["unshare_argv"] if iso == "mount_namespace" or "--mount" not in caps["unshare_argv"] else []
            base = caps["sandbox_uid_base"] if caps["uid_drop"] else None
            boot = _BOOT.format(root=_PKG_PARENT)
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "MPLBACKEND": "Agg",
                   "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                   "CUDA_VISIBLE_DEVICES": "", "PYTHONDONTWRITEBYTECODE": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
            _POOLS[key] = WorkerPool(
                "python", n, env=env,
                argv=lambda slot: prefix + [sys.executable, "-I", "-c", boot, str(slot), ",".join(preload), iso,
                                            "-" if base is None else str(base + slot)])
        return _POOLS[key]


def _result(r: dict) -> PyResult:
    return PyResult(r.get("status", "killed"), r.get("seconds", 0.0), r.get("error", ""), r.get("stdout", ""),
                    r.get("stderr", ""), r.get("passed"), r.get("path", ""))


def run(program: str, timeout_s: float = 10.0, memory_mb: int = MEMORY_MB, *, preload: tuple = PRELOAD) -> PyResult:
    """Run one program to completion in the sandbox. status ok = it finished (exit 0 / fell off the end)."""
    task = {"op": "program", "code": program, "timeout_s": timeout_s, "memory_mb": memory_mb}
    [(_, r)] = list(pool(preload=preload).map([(task, timeout_s + GRACE_S)], workers=1))
    return _result(r)


def run_ds1000(code_context: str, solution: str, timeout_s: float = 120.0, memory_mb: int = MEMORY_MB) -> PyResult:
    """One DS-1000 record as the official harness defines it (test_execution + test_string), checked trustedly."""
    task = {"op": "ds1000", "code_context": code_context, "solution": solution, "timeout_s": timeout_s,
            "memory_mb": memory_mb}
    [(_, r)] = list(pool().map([(task, timeout_s + GRACE_S)], workers=1))
    return _result(r)


def judge(items, cfg, *, progress=True, desc="execute", for_training=False) -> list[Verdict]:
    """Verdicts for [(Problem, solution), ...]: DS-1000 records when Problem.test_context is set, else programs."""
    from tqdm.auto import tqdm

    timeout, memory = float(cfg.timeout_s), int(cfg.options.get("memory_mb", MEMORY_MB))
    keys, first = [], {}
    for i, (p, prog) in enumerate(items):
        k = (hashlib.sha256((p.test_context or "").encode()).hexdigest(), prog)
        keys.append(k)
        first.setdefault(k, i)
    todo = list(first)
    tasks = []
    for k in todo:
        p, prog = items[first[k]]
        prog = prog if isinstance(prog, str) else ""
        if p.test_context:
            tasks.append({"op": "ds1000", "code_context": p.test_context, "solution": prog, "timeout_s": timeout,
                          "memory_mb": memory})
        else:
            tasks.append({"op": "program", "code": prog, "timeout_s": timeout, "memory_mb": memory})
    p = pool(cfg.workers)
    results: list = [None] * len(tasks)
    with tqdm(total=len(tasks), desc=desc, disable=not progress, leave=False) as bar:
        for i, r in p.map([(t, timeout + GRACE_S) for t in tasks], workers=cfg.workers):
            results[i] = r
            bar.update(1)
        again = [i for i, r in enumerate(results) if r["status"] in ("timeout", "killed")] if for_training else []
        for i, r in p.map([(tasks[i], timeout + GRACE_S) for i in again], workers=1):
            results[again[i]] = r
    verdicts = {}
    for k, t, r in zip(todo, tasks, results, strict=True):
        ok = r.get("status") == "ok"
        correct = bool(r.get("passed")) and ok if t["op"] == "ds1000" else ok
        verdicts[k] = Verdict(r.get("status", "killed"), correct, r.get("seconds", 0.0), r.get("error", "")[-500:])
    last_stats.clear()
    last_stats.update(items=len(items), executed=len(todo), retried=len(again),
                      tamper=sum(v.status == "tamper" for v in verdicts.values()),
                      isolated=sum(r.get("path") == "isolated" for r in results))
    return [verdicts[k] for k in keys]
