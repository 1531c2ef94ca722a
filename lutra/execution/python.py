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
- damage outside the scratch dir and reading what is not its business: a private read-only root or Landlock
  (sandbox.py lists what each covers); as root also an unprivileged uid; a network namespace has no route out;
  the environment is an allow-list (no API keys, CUDA hidden). No isolation at all: refuse (fail closed);
- the kernel's riskiest syscalls (io_uring, new namespaces, mounts, bpf, perf, keyrings, ptrace, vsock...): a
  seccomp filter in the program's process and in the DS-1000 checker (lutra.execution._seccomp, docs/sandbox.md);
- forged verdicts: exit codes, stdout text and `os._exit(0)` never mean pass. For DS-1000 records the
  expected answers and `exec_test` live in a separate trusted checker process; the solution's process gets
  only the test inputs and returns `result` in a safe format (lutra.execution._codec: JSON + raw arrays, never
  pickle), so rebinding `np.testing`, walking frames or gc for the expected answer, `__eq__` that is always
  true, poisoning the oracle, or exiting 0 cannot make a wrong answer pass. Results that cannot be
  represented are wrong. Test inputs travel the other way as codec bytes when those rebuild them
  faithfully (fresh constructions, as in the official harness), else as pickle (trusted -> solution only).
- No same-process path: every DS-1000 verdict is computed in the checker from data that crossed the codec. The
  codec rebuilds allow-listed library objects (scipy.sparse matrices, fitted estimators, scipy results, whole
  Matplotlib figures) as real objects in the checker, where the record's `exec_test` runs unchanged; `ans.png`
  is drawn by the checker and never sent, the solution's `output.png` comes back as bytes. A record whose expected
  answer cannot cross is `unverifiable` (correct=None: excluded from pairs and, with exclude_broken_gold, from EX),
  never judged where the solution ran (docs/ds1000.md).
- environment errors: a record that fails because a DS-1000 library is missing (or a dataset it downloads
  is not cached) is `env_error` with correct=None, never a rejected sample.

What it does not protect against: kernel exploits through the syscalls the seccomp filter allows (or through any,
where libseccomp is missing: `capabilities()["seccomp"]`); reading world-readable system files (inside the private
root, read-only); without a PID namespace, a daemon that leaves its session can outlive the task; a weakness of
a record's own exec_test (one that accepts a wrong answer, which the official harness accepts too).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import threading
from dataclasses import dataclass

from lutra.execution import Verdict
from lutra.execution.pool import _PKG_PARENT, WorkerPool, default_workers
from lutra.execution.sandbox import capabilities, require_isolation, require_seccomp, uid_drop_blocker

PRELOAD = ("numpy", "pandas", "matplotlib", "matplotlib.pyplot", "scipy", "scipy.stats", "sklearn", "PIL.Image")
"""Imported once in every zygote (torch and tensorflow are not: they start threads that do not survive fork)."""
MEMORY_MB = 4096
DATASETS_DIR = "~/.cache/lutra/ds1000"
"""Default benchmark.options.datasets_dir: seaborn-data/ and scikit_learn_data/ caches that DS-1000 records read
(bound read-only into the sandbox; `python -m lutra.prepare benchmark=ds1000` fills them when online)."""
GRACE_S = 5.0
_BOOT = "import sys; sys.path.insert(0, {root!r}); from lutra.execution._zygote import main; main(sys.argv[1:])"
_POOLS: dict = {}
_LOCK = threading.Lock()
last_stats: dict = {}


@dataclass
class PyResult:
    status: str
    """ok | error | timeout | oom | killed | output_flood | tamper | env_error | unverifiable."""
    seconds: float = 0.0
    error: str = ""
    stdout: str = ""
    """Last 4 KiB of stdout."""
    stderr: str = ""
    passed: bool | None = None
    """DS-1000 records: the trusted checker's verdict (None for plain programs)."""
    path: str = ""
    """DS-1000 records: `isolated` (checker in its own process) or `unverifiable` (not judged: passed None)."""


@dataclass(frozen=True)
class Setup:
    """How the zygotes start: which interpreter (the DS-1000 environment may be its own venv), extra read-only
    paths and environment variables for programs (dataset caches), and the fail-closed override."""
    interpreter: str = ""
    read: tuple = ()
    env: tuple = ()
    allow_unisolated: bool = False
    isolation: str = ""
    """"": what capabilities() found; `none` / `landlock` force a weaker layer (bench/execution.py compares them)."""
    seccomp: bool = True
    """False: no syscall filter even where it loads (bench/execution.py measures its cost)."""
    require_seccomp: bool = False
    """benchmark.options.require_seccomp: refuse to run where the filter cannot be loaded."""

    @classmethod
    def from_options(cls, options) -> Setup:
        """benchmark.options: python (interpreter), datasets_dir (seaborn / sklearn caches), allow_unisolated,
        require_seccomp."""
        read, env = [], []
        d = options.get("datasets_dir") or DATASETS_DIR
        if d:
            d = os.path.abspath(os.path.expanduser(str(d)))
            if d.startswith(("/tmp/", "/dev/shm/")):  # each program gets its own /tmp and /dev/shm
                raise ValueError(f"benchmark.options.datasets_dir={d}: must not lie under /tmp or /dev/shm, "
                                 "which the sandbox replaces by the program's own scratch dir; use e.g. "
                                 "~/.cache/lutra/ds1000")
            if os.path.isdir(d):
                read.append(d)
            env += [("SEABORN_DATA", os.path.join(d, "seaborn-data")),
                    ("SCIKIT_LEARN_DATA", os.path.join(d, "scikit_learn_data"))]
        return cls(str(options.get("python") or ""), tuple(read), tuple(env),
                   bool(options.get("allow_unisolated", False)),
                   require_seccomp=bool(options.get("require_seccomp", False)))


def pool(workers: int | None = None, preload: tuple = PRELOAD, setup: Setup = Setup()) -> WorkerPool:
    n = workers or default_workers()
    key = (n, tuple(preload), setup)
    with _LOCK:
        if key not in _POOLS:
            caps = capabilities()
            iso = setup.isolation or require_isolation(setup.allow_unisolated)
            seccomp = require_seccomp(setup.require_seccomp) and setup.seccomp
            for p in _POOLS.values():
                p.close()
            _POOLS.clear()
            prefix = caps["unshare_argv"]
            if iso != "mount_namespace":  # the PID and network namespaces alone, as before mount isolation
                prefix = [a for a in prefix if a != "--mount"]
            drop = caps["uid_drop"] and (iso == "mount_namespace" or uid_drop_blocker() is None)
            base = caps["sandbox_uid_base"] if drop else None
            boot = _BOOT.format(root=_PKG_PARENT)
            extra = json.dumps({"read": list(setup.read), "env": dict(setup.env), "seccomp": seccomp})
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "MPLBACKEND": "Agg",
                   "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                   "CUDA_VISIBLE_DEVICES": "", "PYTHONDONTWRITEBYTECODE": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
            python = setup.interpreter or sys.executable
            _POOLS[key] = WorkerPool(
                "python", n, env=env,
                argv=lambda slot: prefix + [python, "-I", "-c", boot, str(slot), ",".join(preload), iso,
                                            "-" if base is None else str(base + slot), extra])
        return _POOLS[key]


ENV_LIBS = frozenset({"numpy", "pandas", "scipy", "sklearn", "matplotlib", "seaborn", "torch", "tensorflow", "keras",
                      "statsmodels", "gensim", "xgboost", "PIL", "tf_keras"})
"""Libraries of the DS-1000 environment: a solution failing to import one of them (when it is not installed)
is the environment's fault (`env_error`, unknown label), not the program's."""
_NO_MODULE = re.compile(r"No module named '([\w.]+)'")
_NETWORK = ("urlopen error", "Temporary failure in name resolution", "Network is unreachable")


def env_error(r: dict, context: str = "") -> str | None:
    """Why a failed DS-1000 run is the environment's fault (a missing library, a dataset download), or None."""
    if r.get("status") == "env_error":
        return r.get("error") or "environment"
    if r.get("status") not in ("error", "ok") or r.get("passed"):
        return None
    err = r.get("error", "")
    m = _NO_MODULE.search(err)
    if m and m.group(1) in ENV_LIBS:  # the top-level package itself (a missing submodule is the program's fault)
        return f"library {m.group(1)!r} is not installed (see the README's DS-1000 environment)"
    cache_miss = "Read-only file system" in err  # the dataset loader tried to create its (absent) cache dir
    if (cache_miss or any(n in err for n in _NETWORK)) and ("load_dataset(" in context or "fetch_" in context):
        return "the record downloads a dataset and there is no network and no cached copy (benchmark.options." \
               "datasets_dir; `python -m lutra.prepare benchmark=ds1000` fills it)"
    return None


def _result(r: dict, context: str = "") -> PyResult:
    why = env_error(r, context) if context else None
    if why:
        r = dict(r, status="env_error", error=why + "\n" + r.get("error", ""), passed=None)
    return PyResult(r.get("status", "killed"), r.get("seconds", 0.0), r.get("error", ""), r.get("stdout", ""),
                    r.get("stderr", ""), r.get("passed"), r.get("path", ""))


def run(program: str, timeout_s: float = 10.0, memory_mb: int = MEMORY_MB, *, preload: tuple = PRELOAD,
        setup: Setup = Setup()) -> PyResult:
    """Run one program to completion in the sandbox. status ok = it finished (exit 0 / fell off the end)."""
    task = {"op": "program", "code": program, "timeout_s": timeout_s, "memory_mb": memory_mb}
    [(_, r)] = list(pool(preload=preload, setup=setup).map([(task, timeout_s + GRACE_S)], workers=1))
    return _result(r)


def run_ds1000(code_context: str, solution: str, timeout_s: float = 120.0, memory_mb: int = MEMORY_MB, *,
               setup: Setup = Setup()) -> PyResult:
    """One DS-1000 record as the official harness defines it (test_execution + test_string), checked trustedly."""
    task = {"op": "ds1000", "code_context": code_context, "solution": solution, "timeout_s": timeout_s,
            "memory_mb": memory_mb}
    [(_, r)] = list(pool(setup=setup).map([(task, timeout_s + GRACE_S)], workers=1))
    return _result(r, code_context)


def judge(items, cfg, *, progress=True, desc="execute", for_training=False) -> list[Verdict]:
    """Verdicts for [(Problem, solution), ...]: DS-1000 records when Problem.test_context is set, else programs.

    A DS-1000 record that fails because this environment lacks one of its libraries (or a dataset it
    downloads) gets status `env_error` and correct=None: unknown, never a rejected sample.
    """
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
    p = pool(cfg.workers, setup=Setup.from_options(cfg.options))
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
        why = env_error(r, t["code_context"]) if t["op"] == "ds1000" else None
        if r.get("status") == "unverifiable":
            verdicts[k] = Verdict("unverifiable", None, r.get("seconds", 0.0), r.get("error", "")[-500:])
            continue
        if why:
            verdicts[k] = Verdict("env_error", None, r.get("seconds", 0.0), (why + ": " + r.get("error", ""))[-500:])
            continue
        ok = r.get("status") == "ok"
        correct = bool(r.get("passed")) and ok if t["op"] == "ds1000" else ok
        verdicts[k] = Verdict(r.get("status", "killed"), correct, r.get("seconds", 0.0), r.get("error", "")[-500:])
    last_stats.clear()
    last_stats.update(items=len(items), executed=len(todo), retried=len(again),
                      tamper=sum(v.status == "tamper" for v in verdicts.values()),
                      env_error=sum(v.status == "env_error" for v in verdicts.values()),
                      isolated=sum(r.get("path") == "isolated" for r in results),
                      unverifiable=sum(v.status == "unverifiable" for v in verdicts.values()))
    return [verdicts[k] for k in keys]
