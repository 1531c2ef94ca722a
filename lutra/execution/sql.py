"""SQLite execution of model-written SQL: guarded connections in killable worker processes, official verdicts.

What the sandbox protects against (each is an adversarial test in tests/test_execution_sql.py):
- writes of every kind, including the ones that autocommit or slip past `mode=ro`: the connection is a read-only
  URI (`mode=ro`, never creates a missing file), an authorizer denies every action but SELECT / READ /
  FUNCTION / RECURSIVE (so INSERT/UPDATE/DELETE/DROP/CREATE [TEMP]/ALTER/PRAGMA/ATTACH/DETACH/VACUUM [INTO]/
  REINDEX/ANALYZE/transactions fail at prepare time), the functions `load_extension` and `fts3_tokenizer` are
  denied, `SQLITE_LIMIT_ATTACHED = 0`; one statement per call (Python's sqlite3 refuses stacked statements);
- reward hacks through shared state: prediction and gold never share a connection (every query gets a fresh
  one) and gold results come from a cache filled before any prediction runs (the BIRD mini_dev
  DELETE-then-gold hack cannot happen);
- runaway queries: a progress-handler deadline interrupts SQLite itself (not a Python-side timer that leaves
  the query running, as `func_timeout` and `asyncio.wait_for` do in the official scripts); rows are fetched
  with a cap (`too_large`); `SQLITE_LIMIT_LENGTH` (10 MB) and `SQLITE_LIMIT_SQL_LENGTH` (100 kB) cap blobs
  and query text; `temp_store=MEMORY` + a process-wide `hard_heap_limit` turn sorter spills into `oom` instead
  of gigabytes of hidden temp files; the comparison runs in the worker under the same deadline, with a bounded
  exact permutation search;
- hangs and crashes outside SQLite's VM: each worker has RLIMIT_AS and is SIGKILLed by the parent at
  deadline + grace and replaced (status `timeout`, or `killed` if it died); other tasks are unaffected.

- the rest of the machine, where the Python sandbox's mount namespace works (`capabilities()["isolation"]`):
  workers start under the same `unshare --mount --pid --net` and make every mount read-only (in their own
  mount namespace), with no network, no_new_privs and a Landlock domain that allows no write at all.
  A once-per-worker cost; without namespaces the workers are ordinary processes of the calling user.

- the kernel, should a bug in SQLite hand a query control of the worker: each worker loads the Python sandbox's
  syscall filter (lutra.execution._seccomp) after its set-up, where libseccomp is present.

What it does not protect against: a bug in SQLite itself beyond what the namespaces and the filter stop (no
privilege drop: SQLite never runs model-written code, only model-written SQL); reads, which are allowed by design, of any table of the database the
task names and of any file the calling user can read; a database file that changes while it is being read (its
fingerprint is taken once per process per file version).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from lutra.execution import Verdict
from lutra.execution.compare import CompareBudget, prepare, results_equal

MAX_ROWS = 100_000
"""Prediction row cap (raised to 10x the gold's row count for large golds)."""
GOLD_MAX_ROWS = 1_000_000
GOLD_TIMEOUT_S = 60.0
"""Gold queries get max(this, 4 x the benchmark timeout); a gold that fails is flagged and its label is unknown."""
HEAP_LIMIT = 512 * 2**20
"""SQLite hard heap limit per worker process (bytes)."""
WORKER_AS_LIMIT = 4 * 2**30
GRACE_S = 2.0
"""Parent-side grace after a task's deadline before its worker is SIGKILLed."""
_ALLOWED = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
_DENIED_FUNCTIONS = {"load_extension", "fts3_tokenizer"}


# ----------------------------------------------------------------------------- worker side

def _authorizer(action, arg1, arg2, db, trigger):
    if action not in _ALLOWED:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _DENIED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def worker_init() -> None:
    """Per worker process: filesystem isolation (when started under a mount namespace), address-space limit,
    the process-wide SQLite heap limit, then the syscall filter (where capabilities() found it)."""
    import resource

    if os.environ.get("LUTRA_SQL_ISOLATE") == "1":
        from lutra.execution import _isolate

        _isolate.readonly_world()

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = WORKER_AS_LIMIT if hard == resource.RLIM_INFINITY else min(WORKER_AS_LIMIT, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    con = sqlite3.connect(":memory:")
    con.execute(f"PRAGMA hard_heap_limit={HEAP_LIMIT}")
    con.close()
    if os.environ.get("LUTRA_SQL_SECCOMP") == "1":  # last: readonly_world needs mount and landlock
        from lutra.execution import _seccomp

        _seccomp.install()


def execute(db_path: str, sql: str, deadline: float, max_rows: int = MAX_ROWS, decode_ignore: bool = False):
    """Run one query on a fresh guarded connection, in this process. Returns (status, rows, error)."""
    if not os.path.isfile(db_path):
        return "error", None, f"database file not found: {db_path}"
    con = sqlite3.connect(f"file:{quote(os.path.abspath(db_path))}?mode=ro", uri=True, isolation_level=None,
                          check_same_thread=False)
    try:
        con.execute("PRAGMA temp_store=MEMORY")
        con.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        con.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 10_000_000)
        con.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, 100_000)
        con.set_authorizer(_authorizer)
        con.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
        if decode_ignore:
            con.text_factory = lambda b: b.decode(errors="ignore")
        if "\x00" in sql:
            return "error", None, "query contains a NUL character"
        rows = con.execute(sql).fetchmany(max_rows + 1)
        if len(rows) > max_rows:
            return "too_large", None, f"more than {max_rows} rows"
        return "ok", rows, ""
    except MemoryError:
        return "oom", None, "MemoryError (heap or address-space limit)"
    except sqlite3.Error as e:
        msg = str(e)
        if "interrupted" in msg:
            return "timeout", None, "interrupted at the deadline"
        if "out of memory" in msg:
            return "oom", None, msg
        return "error", None, f"{type(e).__name__}: {msg}"[-500:]
    except Exception as e:  # noqa: BLE001 - any failure of a generated query is a verdict, not a crash
        return "error", None, f"{type(e).__name__}: {e}"[-500:]
    finally:
        con.close()


def serve(task: dict) -> dict:
    """One worker task. op=run: execute and return rows; op=judge: execute and compare with task's gold rows."""
    t0 = time.monotonic()
    deadline = t0 + task["timeout_s"]
    rule = task.get("rule", "strict")
    sql = prepare(task["sql"], rule, is_gold=task.get("is_gold", False))
    status, rows, err = execute(task["db"], sql, deadline, task.get("max_rows", MAX_ROWS), rule == "spider_ts")
    out: dict[str, Any] = {"status": status, "error": err}
    if task["op"] == "run":
        out["rows"] = rows
    elif status == "ok" and task.get("gold_rows") is not None:
        try:
            out["correct"] = results_equal(rows, task["gold_rows"], rule, task.get("gold_sql", ""),
                                           deadline=deadline)
        except CompareBudget as e:
            out["correct"], out["error"] = False, f"compare_budget: {e}"
        except MemoryError:
            out["status"], out["correct"], out["error"] = "oom", False, "MemoryError while comparing"
    else:
        out["correct"] = None if task.get("gold_rows") is None else False
    out["seconds"] = time.monotonic() - t0
    return out


# ----------------------------------------------------------------------------- parent side

@dataclass
class SQLResult:
    status: str
    """ok | error | timeout | oom | killed | too_large."""
    rows: list | None = None
    """Result rows (capped), when status is ok."""
    seconds: float = 0.0
    error: str = ""


_POOL = None
_POOL_LOCK = threading.Lock()
_FP: dict = {}
_GOLD: dict = {}
_VERDICTS: dict = {}
_CACHE_MAX = 500_000
last_stats: dict = {}
"""Counts of the last judge() call: items, executed, cached, gold_failed, retried, retry_recovered."""


def pool(workers: int | None = None):
    """The module's worker pool (created on first use, resized when `workers` changes, closed at exit)."""
    global _POOL
    from lutra.execution.pool import WorkerPool, default_workers

    n = workers or default_workers()
    with _POOL_LOCK:
        if _POOL is None or _POOL.n != n:
            if _POOL is not None:
                _POOL.close()
            _POOL = WorkerPool("sql", n, argv=_isolated_argv(), env=_worker_env(isolate=True))
        return _POOL


def _isolated_argv() -> list[str] | None:
    """`unshare --mount --pid --net ...` + the worker, where the Python sandbox's namespaces work here."""
    import sys

    from lutra.execution.sandbox import capabilities

    caps = capabilities()
    if caps["isolation"] != "mount_namespace":
        return None
    return caps["unshare_argv"] + [sys.executable, "-m", "lutra.execution._worker", "sql"]


def _worker_env(isolate: bool) -> dict:
    from lutra.execution.pool import _worker_env as base
    from lutra.execution.sandbox import capabilities

    env = base()
    if isolate and _isolated_argv() is not None:
        env["LUTRA_SQL_ISOLATE"] = "1"
    if isolate and capabilities()["seccomp"]:
        env["LUTRA_SQL_SECCOMP"] = "1"
    return env


def fingerprint(db_path: str | None) -> str:
    """sha256 of the database file, memoized per (path, inode, size, mtime)."""
    if not db_path:
        return "none"
    try:
        st = os.stat(db_path)
    except OSError:
        return f"missing:{db_path}"
    key = (os.path.abspath(db_path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _FP:
        h = hashlib.sha256()
        with open(db_path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _FP[key] = h.hexdigest()
    return _FP[key]


def run(db_path: str, sql: str, timeout_s: float = 5.0, max_rows: int = MAX_ROWS, rule: str = "strict",
        is_gold: bool = False) -> SQLResult:
    """Run one query in a sandboxed worker; `rule` selects the official rewrites (spider_ts) and text decoding."""
    task = {"op": "run", "db": db_path, "sql": sql, "timeout_s": timeout_s, "max_rows": max_rows, "rule": rule,
            "is_gold": is_gold}
    [(_, r)] = list(pool().map([(task, timeout_s + GRACE_S)], workers=1))
    return SQLResult(r["status"], r.get("rows"), r["seconds"], r.get("error", ""))


def _run_tasks(tasks: list[dict], workers: int | None, bar=None, weights=None) -> list[dict]:
    out: list[dict] = [{}] * len(tasks)
    p = pool(workers)
    for i, r in p.map([(t, t["timeout_s"] + GRACE_S) for t in tasks], workers=workers):
        out[i] = r
        if bar is not None:
            bar.update(weights[i] if weights else 1)
    return out


def judge(items, cfg, *, progress=True, desc="execute", for_training=False) -> list[Verdict]:
    """Verdicts for [(Problem, sql), ...] under cfg.comparison; see `lutra.execution.judge`."""
    from tqdm.auto import tqdm

    from lutra.execution.sandbox import require_seccomp

    require_seccomp(bool(cfg.options.get("require_seccomp", False)))
    rule, timeout, workers = cfg.comparison, float(cfg.timeout_s), cfg.workers
    gold_timeout = max(GOLD_TIMEOUT_S, 4 * timeout)
    fps = [fingerprint(p.db_path) for p, _ in items]

    # 1. gold results, once per (database fingerprint, rule, gold text), cached across calls
    gkeys = [(fp, rule, p.gold) for fp, (p, _) in zip(fps, items, strict=True)]
    need = {k: p for k, (p, _) in zip(gkeys, items, strict=True) if k not in _GOLD}
    if need:
        keys = list(need)
        tasks = [{"op": "run", "db": need[k].db_path, "sql": k[2], "timeout_s": gold_timeout, "rule": rule,
                  "is_gold": True, "max_rows": GOLD_MAX_ROWS} for k in keys]
        for k, r in zip(keys, _run_tasks(tasks, workers), strict=True):
            if r["status"] == "timeout":  # one serial retry before a gold is flagged
                r = _run_tasks([tasks[keys.index(k)]], 1)[0]
            _GOLD[k] = r

    # 2. predictions, once per (fingerprint, rule, timeout, gold, program)
    vkeys = [(fp, rule, timeout, p.gold, prog) for fp, (p, prog) in zip(fps, items, strict=True)]
    counts: dict = {}
    first: dict = {}
    for i, k in enumerate(vkeys):
        counts[k] = counts.get(k, 0) + 1
        first.setdefault(k, i)
    todo = [k for k in counts if k not in _VERDICTS]
    tasks = []
    for k in todo:
        p, prog = items[first[k]]
        gold = _GOLD[gkeys[first[k]]]
        grows = gold.get("rows") if gold["status"] == "ok" else None
        tasks.append({"op": "judge", "db": p.db_path, "sql": prog if isinstance(prog, str) else "", "rule": rule,
                      "timeout_s": timeout, "gold_rows": grows, "gold_sql": prepare(p.gold, rule, True),
                      "max_rows": max(MAX_ROWS, 10 * len(grows or ()))})
    bar = tqdm(total=len(items), desc=desc, disable=not progress, leave=False)
    bar.update(len(items) - sum(counts[k] for k in todo))
    results = _run_tasks(tasks, workers, bar, [counts[k] for k in todo])
    retried = recovered = 0
    if for_training:  # a timeout under load must not become a rejected label: re-run once, alone
        again = [i for i, r in enumerate(results) if r["status"] in ("timeout", "killed")]
        retried = len(again)
        for i, r in zip(again, _run_tasks([tasks[i] for i in again], 1), strict=True):
            recovered += r["status"] not in ("timeout", "killed")
            results[i] = r
    bar.close()
    fresh: dict = {}
    for k, r in zip(todo, results, strict=True):
        gold = _GOLD[gkeys[first[k]]]
        if gold["status"] != "ok":
            v = Verdict(r["status"], None, r["seconds"], f"gold {gold['status']}: {gold.get('error', '')}"[-500:])
        else:
            correct = bool(r.get("correct")) if r["status"] == "ok" else False
            v = Verdict(r["status"], correct, r["seconds"], r.get("error", ""))
        fresh[k] = v
        if r["status"] not in ("timeout", "killed"):
            if len(_VERDICTS) >= _CACHE_MAX:
                _VERDICTS.clear()
            _VERDICTS[k] = v
    out = [fresh.get(k) or _VERDICTS[k] for k in vkeys]
    gold_failed = {k for k in set(gkeys) if _GOLD[k]["status"] != "ok"}
    last_stats.clear()
    last_stats.update(items=len(items), executed=len(todo), cached=len(counts) - len(todo),
                      gold_failed=len(gold_failed), retried=retried, retry_recovered=recovered)
    return out
