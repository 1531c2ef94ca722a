"""SQLite execution (minimal first version; hardened in the execution-engine issue)."""

from __future__ import annotations

import sqlite3
import time

from tqdm.auto import tqdm

from lutra.execution import Verdict
from lutra.execution.compare import results_equal

_DENY_ALL_BUT_READ = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}


def _authorizer(action, arg1, arg2, db, trigger):
    return sqlite3.SQLITE_OK if action in _DENY_ALL_BUT_READ else sqlite3.SQLITE_DENY


def run(db_path: str, sql: str, timeout_s: float = 5.0, max_rows: int = 10_000):
    """Run one query read-only; returns (status, rows, seconds, error)."""
    t0 = time.perf_counter()
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, check_same_thread=False)
    try:
        con.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        con.set_authorizer(_authorizer)
        deadline = t0 + timeout_s
        con.set_progress_handler(lambda: int(time.perf_counter() > deadline), 10_000)
        cur = con.execute(sql)
        rows = cur.fetchmany(max_rows + 1)
        if len(rows) > max_rows:
            return "too_large", None, time.perf_counter() - t0, f"more than {max_rows} rows"
        return "ok", rows, time.perf_counter() - t0, ""
    except sqlite3.OperationalError as e:
        status = "timeout" if "interrupted" in str(e) else "error"
        return status, None, time.perf_counter() - t0, str(e)[-300:]
    except Exception as e:  # noqa: BLE001 - any failure of a generated program is a verdict, not a crash
        return "error", None, time.perf_counter() - t0, f"{type(e).__name__}: {e}"[-300:]
    finally:
        con.close()


def judge(items, cfg, *, progress=True, desc="execute", for_training=False) -> list[Verdict]:
    gold_cache: dict = {}
    pred_cache: dict = {}
    out = []
    for problem, program in tqdm(items, desc=desc, disable=not progress, leave=False):
        gkey = (problem.db_path, problem.gold)
        if gkey not in gold_cache:
            gold_cache[gkey] = run(problem.db_path, problem.gold, cfg.timeout_s)
        pkey = (problem.db_path, problem.gold, program)
        if pkey not in pred_cache:
            gstatus, grows, _, gerr = gold_cache[gkey]
            status, rows, secs, err = run(problem.db_path, program, cfg.timeout_s)
            if gstatus != "ok":
                correct = None
            else:
                correct = status == "ok" and results_equal(rows, grows, cfg.comparison, problem.gold)
            pred_cache[pkey] = Verdict(status, correct, secs, err)
        out.append(pred_cache[pkey])
    return out
