"""Execution benchmarks: prints a table, writes bench/results/execution.json.

    python bench/execution.py [--items 5000] [--baseline 200]

1. SQL verdicts/s on a duplicate-heavy candidate stream (as sampling produces: 8 samples per problem drawn from
   a few distinct programs), lutra's judge() vs one fresh Python process per (gold, prediction) pair (how the
   official scripts are usually driven), in the same run. Uses the Spider dev DBs when ../shared/data/spider
   exists, else a generated SQLite DB.
2. DS-1000-style Python programs/s: pre-imported zygote vs a fresh interpreter importing the stack.
3. False-timeout rate: programs using ~25% of the timeout in CPU, at workers = cores and 2 x cores, before and
   after the serial re-run that training labels get.
4. The seccomp filter's cost, on vs off (`--only seccomp` runs just this and fork + confine): per empty program,
   per DS-style program, per syscall.
5. `--ds1000 N`: the cost of one DS-1000 record (its reference, checker + solution process), per library and per
   path, optionally against a baseline checkout run first (`--ds1000-baseline ROOT`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402
from lutra.benchmarks import Problem  # noqa: E402
from lutra.config import BenchmarkConfig  # noqa: E402
from lutra.execution import capabilities, sql  # noqa: E402
from lutra.execution import python as P  # noqa: E402
from lutra.execution.pool import default_workers  # noqa: E402

SPIDER = Path(__file__).resolve().parents[2] / "shared" / "data" / "spider"
if not SPIDER.is_dir():
    SPIDER = Path("/work/shared/data/spider")

ONE_PROCESS = r"""
import sqlite3, sys, json
from collections import Counter
db, gold, pred = json.loads(sys.stdin.read())
def run(q):
    con = sqlite3.connect(db)
    con.text_factory = lambda b: b.decode(errors="ignore")
    try:
        return con.execute(q).fetchall()
    finally:
        con.close()
g = run(gold)
try:
    p = run(pred)
    ok = Counter(p) == Counter(g) if "order by" not in gold.lower() else p == g
except Exception:
    ok = False
print(int(ok))
"""


def _variants(gold: str) -> list[str]:
    return [gold, gold, gold.replace("SELECT", "SELECT DISTINCT", 1), gold + " LIMIT 1",
            gold.replace("=", "!=", 1), "SELECT * FROM nope", gold.rstrip(";") + " ;", "SELEC 1"]


def _problems(n: int, tmp: str) -> list[Problem]:
    if (SPIDER / "dev.json").exists():
        dev = json.loads((SPIDER / "dev.json").read_text())
        out = []
        for i, ex in enumerate(dev):
            path = SPIDER / "database" / ex["db_id"] / f"{ex['db_id']}.sqlite"
            if path.exists():
                out.append(Problem(id=f"dev/{i}", question="", context="", gold=ex["query"], db_path=str(path)))
        return random.Random(0).sample(out, min(n, len(out)))
    path = os.path.join(tmp, "bench.sqlite")
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t (a INTEGER, b TEXT)")
    con.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"n{i % 13}") for i in range(2000)])
    con.commit()
    con.close()
    return [Problem(id=str(k), question="", context="", gold=f"SELECT b, count(*) FROM t WHERE a > {k * 10} GROUP BY b",
                    db_path=path) for k in range(n)]


def bench_sql(n_items: int, n_baseline: int, tmp: str) -> dict:
    rng = random.Random(1)
    problems = _problems(max(1, n_items // 8), tmp)
    items = [(p, rng.choice(_variants(p.gold))) for p in problems for _ in range(8)][:n_items]
    cfg = BenchmarkConfig(name="spider", comparison="spider_ts", timeout_s=5.0)
    sql._GOLD.clear()
    sql._VERDICTS.clear()
    sql.pool(cfg.workers).map([({"op": "run", "db": items[0][0].db_path, "sql": "SELECT 1", "timeout_s": 1.0}, 5)])
    t0 = time.perf_counter()
    verdicts = sql.judge(items, cfg, progress=False)
    cold = time.perf_counter() - t0
    stats = dict(sql.last_stats)
    t0 = time.perf_counter()
    sql.judge(items, cfg, progress=False)
    warm = time.perf_counter() - t0
    sub = items[:n_baseline]
    t0 = time.perf_counter()
    base_ok = []
    for p, pred in sub:
        r = subprocess.run([sys.executable, "-c", ONE_PROCESS], input=json.dumps([p.db_path, p.gold, pred]),
                           capture_output=True, text=True, timeout=120)
        base_ok.append(r.stdout.strip() == "1")
    base = time.perf_counter() - t0
    agree = sum(bool(v.correct) == b for v, b in zip(verdicts[:n_baseline], base_ok, strict=True))
    return {"items": len(items), "distinct_executed": stats["executed"], "lutra_s": cold,
            "lutra_verdicts_per_s": len(items) / cold, "lutra_cached_rerun_per_s": len(items) / warm,
            "baseline_items": len(sub), "baseline_s": base, "baseline_verdicts_per_s": len(sub) / base,
            "speedup": (len(items) / cold) / (len(sub) / base), "agreement_with_baseline": agree / max(1, len(sub)),
            "workers": default_workers(), "data": "spider dev" if (SPIDER / "dev.json").exists() else "generated"}


DS_PROGRAM = ("import numpy as np, pandas as pd, matplotlib.pyplot as plt\n"
              "df = pd.DataFrame({'a': np.arange(100), 'b': np.arange(100) % 7})\n"
              "r = df.groupby('b').a.sum()\nplt.plot(r.values); plt.savefig('out.png'); plt.close('all')\n")


def bench_python(n: int) -> dict:
    P.run("pass")  # start the zygotes
    t0 = time.perf_counter()
    res = [P.run(DS_PROGRAM, timeout_s=30) for _ in range(n)]
    zyg = (time.perf_counter() - t0) / n
    env = {"PATH": os.environ.get("PATH", ""), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    fresh_ok = 0
    with tempfile.TemporaryDirectory() as d:
        for _ in range(max(3, n // 4)):
            fresh_ok += subprocess.run([sys.executable, "-I", "-c", DS_PROGRAM], cwd=d, env=env,
                                       capture_output=True).returncode == 0
    fresh = (time.perf_counter() - t0) / max(3, n // 4)
    return {"programs": n, "zygote_s_per_program": zyg, "zygote_programs_per_s": 1 / zyg,
            "zygote_ok": sum(r.status == "ok" for r in res), "fresh_s_per_program": fresh,
            "fresh_programs_per_s": 1 / fresh, "speedup": fresh / zyg, "fresh_ok": fresh_ok}


_CONFINE = r"""
import os, sys, time, json
sys.path.insert(0, {root!r})
from lutra.execution import _isolate, _seccomp, sandbox
iso, n, sandbox.SECCOMP = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
if sandbox.SECCOMP:
    _seccomp.prepare()  # as the zygote does: built once, loaded by each child
if iso == "mount_namespace":
    _isolate.private_tmp()
    _isolate.build_root(_isolate.keep_paths())
root = "/sbx" if iso == "mount_namespace" else __import__("tempfile").mkdtemp()
times = []
for i in range(n):
    d = os.path.join(root, f"t{{i}}")
    for sub in ("", "/work", "/shm"):
        os.mkdir(d + sub)
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        sandbox.confine(d, None, 5, 512, iso)
        os._exit(0)
    os.waitpid(pid, 0)
    times.append(time.perf_counter() - t0)
times.sort()
print(json.dumps({{"median_ms": 1000 * times[n // 2], "p90_ms": 1000 * times[int(n * 0.9)]}}))
"""


def bench_confine(n: int = 200) -> dict:
    """fork + confine + exit + wait for each isolation, the part of a program's cost that isolation adds, timed
    without the program (so other load on the machine does not drown the difference)."""
    from lutra.execution.pool import _PKG_PARENT

    caps = capabilities()
    out = {}
    isos = ["none"] + (["landlock"] if caps["landlock_abi"] else []) + (
        ["mount_namespace"] if caps["isolation"] == "mount_namespace" else [])
    for iso, sec in [(i, False) for i in isos] + ([(isos[-1], True)] if caps["seccomp"] else []):
        prefix = caps["unshare_argv"] if iso == "mount_namespace" else []
        r = subprocess.run(prefix + [sys.executable, "-I", "-c", _CONFINE.format(root=_PKG_PARENT), iso, str(n),
                                     "1" if sec else "0"], capture_output=True, text=True, timeout=300)
        out[iso + ("+seccomp" if sec else "")] = (json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0
                                                  else {"error": r.stderr[-300:]})
    return out


def bench_isolation(n: int, rounds: int = 3) -> dict:
    """Per-program cost of each filesystem isolation on the zygote path, same program, interleaved rounds (so
    load from other processes hits every mode alike); the median of the rounds' means."""
    caps = capabilities()
    modes = ["none"] + (["landlock"] if caps["landlock_abi"] else []) + (
        ["mount_namespace"] if caps["isolation"] == "mount_namespace" else [])
    per: dict[str, list[float]] = {m: [] for m in modes}
    empty: dict[str, list[float]] = {m: [] for m in modes}
    ok: dict[str, int] = {m: 0 for m in modes}
    for _ in range(rounds):
        for m in modes:
            setup = P.Setup(isolation=m, allow_unisolated=True)
            P.run("pass", setup=setup)  # start (or restart) this mode's zygotes outside the timing
            t0 = time.perf_counter()
            res = [P.run(DS_PROGRAM, timeout_s=30, setup=setup) for _ in range(n)]
            per[m].append((time.perf_counter() - t0) / n)
            ok[m] += sum(r.status == "ok" for r in res)
            t0 = time.perf_counter()  # the empty program: the sandbox's own cost, end to end
            for _ in range(3 * n):
                P.run("pass", setup=setup)
            empty[m].append((time.perf_counter() - t0) / (3 * n))
    med = {m: sorted(v)[len(v) // 2] for m, v in per.items()}
    emp = {m: sorted(v)[len(v) // 2] for m, v in empty.items()}
    return {"programs_per_round": n, "rounds": rounds, "ms_per_program": {m: v * 1000 for m, v in med.items()},
            "added_ms_vs_none": {m: (v - med["none"]) * 1000 for m, v in med.items()},
            "empty_program_ms": {m: v * 1000 for m, v in emp.items()},
            "empty_added_ms_vs_none": {m: (v - emp["none"]) * 1000 for m, v in emp.items()},
            "ok": ok, "runs": {m: [x * 1000 for x in v] for m, v in per.items()},
            "empty_runs": {m: [x * 1000 for x in v] for m, v in empty.items()}}


SYSCALLS = ("import os, time\nt = time.perf_counter()\nfor _ in range(200_000):\n    os.getppid()\n"
            "print((time.perf_counter() - t) / 200_000 * 1e9)")


_LOAD = r"""
import json, os, sys, time
sys.path.insert(0, {root!r})
from lutra.execution import _seccomp
_seccomp.prepare()  # as the zygote does
def child(w, calls):
    t0 = time.perf_counter()
    for _ in range(calls):
        os.getppid()
    _seccomp._LOADED["libc"].prctl(39, 0, 0, 0, 0)  # a first ctypes call, as confine() makes before install()
    t1 = time.perf_counter()
    _seccomp.install()
    t2 = time.perf_counter()
    for _ in range(calls):
        os.getppid()
    t3 = time.perf_counter()
    os.write(w, json.dumps([t2 - t1, (t3 - t2 - (t1 - t0)) / calls if calls else 0]).encode())
    os._exit(0)
out = {{}}
for name, n, calls in (("load", 200, 0), ("syscall", 15, 300_000)):
    got = []
    for _ in range(n):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            child(w, calls)
        os.close(w)
        got.append(json.loads(os.read(r, 200)))
        os.close(r)
        os.waitpid(pid, 0)
    col = sorted(g[0 if name == "load" else 1] for g in got)
    out[name] = {{"median": col[len(col) // 2], "p90": col[int(len(col) * 0.9)]}}
print(json.dumps(out))
"""


def bench_seccomp_load() -> dict:
    """The filter's own cost, without the program around it: `_seccomp.install()` timed in 200 freshly forked
    children of a process that prepared it (as each spare does, after confine's other ctypes calls), and getppid timed 300k times before and after
    the install in the same child (the difference per call: what the BPF adds to every syscall)."""
    from lutra.execution.pool import _PKG_PARENT

    r = subprocess.run([sys.executable, "-I", "-c", _LOAD.format(root=_PKG_PARENT)], capture_output=True, text=True,
                       timeout=300)
    if r.returncode != 0:
        return {"error": r.stderr[-300:]}
    d = json.loads(r.stdout.strip().splitlines()[-1])
    return {"install_us": {k: v * 1e6 for k, v in d["load"].items()},
            "per_syscall_ns": {k: v * 1e9 for k, v in d["syscall"].items()}}


def bench_seccomp(n: int, rounds: int = 3) -> dict:
    """The syscall filter's cost, on vs off on the same zygote path, interleaved rounds (so other load hits both
    alike), medians of the rounds: an empty program, the DS-style program, and a cheap syscall (getppid, timed
    200k times inside the program: what every syscall pays for the filter's BPF)."""
    caps = capabilities()
    if not caps["seccomp"]:
        return {"skipped": caps["seccomp_blocker"]}
    modes = {"on": P.Setup(), "off": P.Setup(seccomp=False)}
    empty: dict[str, list[float]] = {m: [] for m in modes}
    ds: dict[str, list[float]] = {m: [] for m in modes}
    ns: dict[str, list[float]] = {m: [] for m in modes}
    ok = {m: 0 for m in modes}
    for _ in range(rounds):
        for m, setup in modes.items():
            P.run("pass", setup=setup)  # start (or restart) this mode's zygotes outside the timing
            t0 = time.perf_counter()
            for _ in range(3 * n):
                ok[m] += P.run("pass", setup=setup).status == "ok"
            empty[m].append((time.perf_counter() - t0) / (3 * n) * 1000)
            t0 = time.perf_counter()
            for _ in range(n):
                ok[m] += P.run(DS_PROGRAM, timeout_s=30, setup=setup).status == "ok"
            ds[m].append((time.perf_counter() - t0) / n * 1000)
            ns[m].append(float(P.run(SYSCALLS, timeout_s=30, setup=setup).stdout.strip() or "nan"))
    med = {k: {m: sorted(v)[len(v) // 2] for m, v in d.items()} for k, d in
           (("empty_program_ms", empty), ("ds_program_ms", ds), ("getppid_ns", ns))}
    return {**med, "added": {k: v["on"] - v["off"] for k, v in med.items()}, "load": bench_seccomp_load(),
            "rounds": rounds,
            "programs_per_round": n, "ok": ok, "of": rounds * 4 * n,
            "runs": {"empty_program_ms": empty, "ds_program_ms": ds, "getppid_ns": ns}}


def bench_false_timeouts(n: int = 16, timeout_s: float = 1.0) -> dict:
    loops = 1
    while True:  # calibrate a busy loop to ~25% of the timeout in CPU
        t0 = time.process_time()
        sum(range(loops))
        if time.process_time() - t0 > 0.05:
            break
        loops *= 2
    loops = int(loops * 0.25 * timeout_s / (time.process_time() - t0))
    prog = f"sum(range({loops}))"
    out = {}
    cores = default_workers()
    for workers in (cores, 2 * cores):
        pool = P.pool(workers)
        task = {"op": "program", "code": prog, "timeout_s": timeout_s, "memory_mb": 1024}
        list(pool.map([(task, timeout_s + 5)] * workers, workers=workers))  # warm every zygote
        res = dict(pool.map([(task, timeout_s + 5)] * n, workers=workers))
        first = sum(r["status"] == "timeout" for r in res.values())
        again = [i for i, r in res.items() if r["status"] == "timeout"]
        after = sum(r["status"] == "timeout" for _, r in pool.map([(task, timeout_s + 5)] * len(again), workers=1))
        out[f"workers={workers}"] = {"programs": n, "timeouts": first, "timeouts_after_serial_rerun": after}
    P.pool()  # back to the default size
    return {"cpu_fraction_of_timeout": 0.25, "timeout_s": timeout_s, **out}


def _confine_rows(cf: dict) -> list[tuple]:
    return [(f"fork + confine + exit, {m}", f"{v.get('median_ms', float('nan')):.2f}", f"ms median, p90 "
             f"{v.get('p90_ms', float('nan')):.2f}") for m, v in cf.items()]


def _seccomp_rows(sc: dict) -> list[tuple]:
    if "skipped" in sc:
        return [("seccomp filter", "n/a", sc["skipped"])]
    unit = {"empty_program_ms": "ms", "ds_program_ms": "ms", "getppid_ns": "ns"}
    return [(f"seccomp {k.rsplit('_', 1)[0].replace('_', ' ')}: filter on / off", f"{v['on']:.3f} / {v['off']:.3f}",
             f"{unit[k]}; {sc['added'][k]:+.3f} {unit[k]} with it, {sc['ok']['on']}/{sc['of']} and {sc['ok']['off']}/{sc['of']} ok")
            for k, v in ((k, sc[k]) for k in unit)] + [
        ("seccomp: install() in a fresh fork", f"{sc['load'].get('install_us', {}).get('median', float('nan')):.1f}",
         f"us median, p90 {sc['load'].get('install_us', {}).get('p90', float('nan')):.1f}"),
        ("seccomp: added per syscall (same process)",
         f"{sc['load'].get('per_syscall_ns', {}).get('median', float('nan')):.1f}",
         f"ns median of 15 forks, p90 {sc['load'].get('per_syscall_ns', {}).get('p90', float('nan')):.1f}")]


DS1000 = Path(__file__).resolve().parents[2] / "shared" / "data" / "ds1000" / "data" / "ds1000.jsonl.gz"
if not DS1000.is_file():
    DS1000 = Path("/work/shared/data/ds1000/data/ds1000.jsonl.gz")
_DS_COST = r"""
import sys, json, gzip, time
sys.path.insert(0, sys.argv[1])
from lutra.execution import python as P
recs = [json.loads(line) for line in gzip.open(sys.argv[2], "rt")]
ids, setup = set(json.loads(sys.argv[3])), P.Setup(interpreter=sys.argv[4])
tasks = [(r, {"op": "ds1000", "code_context": r["code_context"], "solution": r["reference_code"],
              "timeout_s": 120.0, "memory_mb": 4096}) for r in recs if r["metadata"]["problem_id"] in ids]
pool = P.pool(1, setup=setup)
pool.map([(dict(tasks[0][1], solution="result = None"), 125.0)], workers=1)  # zygote warm
out = []
for r, t in tasks:
    t0 = time.perf_counter()
    [(_, res)] = list(pool.map([(t, 125.0)], workers=1))
    out.append({"id": r["metadata"]["problem_id"], "lib": r["metadata"]["library"], "path": res.get("path", ""),
                "passed": res.get("passed"), "s": time.perf_counter() - t0})
print(json.dumps(out))
"""


def bench_ds1000(per_lib: int, python: str, baseline_root: str | None) -> dict:
    """Cost of one DS-1000 record (its reference solution, checker + solution process, one worker): the first
    `per_lib` records of each library that need no download, wall seconds per record by library and by path.
    With `baseline_root` (another checkout of lutra, e.g. `git worktree add /tmp/before <commit>`) the same
    records run there first, so both columns come from one machine and one run."""
    recs = [json.loads(line) for line in __import__("gzip").open(DS1000, "rt")]
    downloads = {519, 539, 565, 566, 567, 577, 598, 624, 629, 650, 654, 655, 656, 661, 819}
    ids, seen = [], {}
    for r in recs:
        lib, pid = r["metadata"]["library"], r["metadata"]["problem_id"]
        if pid not in downloads and seen.get(lib, 0) < per_lib:
            seen[lib] = seen.get(lib, 0) + 1
            ids.append(pid)
    roots = ([("before", baseline_root)] if baseline_root else []) + [("after", str(Path(__file__).resolve().parents[1]))]
    res = {"records": len(ids), "per_lib": per_lib, "python": python}
    for name, root in roots:
        r = subprocess.run([sys.executable, "-c", _DS_COST, root, str(DS1000), json.dumps(ids), python],
                           capture_output=True, text=True, timeout=3600)
        if r.returncode != 0:
            res[name] = {"error": r.stderr[-500:]}
            continue
        rows = json.loads(r.stdout.strip().splitlines()[-1])
        by = {}
        for row in rows:
            for key in (f"lib {row['lib']}", f"path {row['path']}", "all"):
                by.setdefault(key, []).append(row["s"])
        res[name] = {"root": root, "rows": rows, "passed": sum(bool(x["passed"]) for x in rows),
                     "s_per_record": {k: sum(v) / len(v) for k, v in sorted(by.items())},
                     "n": {k: len(v) for k, v in sorted(by.items())}}
    return res


def _ds1000_rows(d: dict) -> list[tuple]:
    rows = []
    keys = sorted({k for side in ("before", "after") for k in d.get(side, {}).get("s_per_record", {})})
    for k in keys:
        vals = [d.get(side, {}).get("s_per_record", {}).get(k) for side in ("before", "after")]
        ns = [d.get(side, {}).get("n", {}).get(k, 0) for side in ("before", "after")]
        rows.append((f"DS-1000 s/record, {k}", " / ".join("-" if v is None else f"{v:.2f}" for v in vals),
                     f"before / after, n = {ns[0]} / {ns[1]}"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=5000)
    ap.add_argument("--baseline", type=int, default=200)
    ap.add_argument("--python", type=int, default=20)
    ap.add_argument("--only", choices=["seccomp"], help="seccomp: only the filter's cost (and fork + confine)")
    ap.add_argument("--ds1000", type=int, default=0, metavar="N",
                    help="only the cost per DS-1000 record: N references per library (needs ../shared/data)")
    ap.add_argument("--ds1000-python", default=sys.executable, help="the DS-1000 environment's interpreter")
    ap.add_argument("--ds1000-baseline", default=None, metavar="ROOT", help="a checkout to run first (before)")
    args = ap.parse_args()
    if args.ds1000:
        res = bench_ds1000(args.ds1000, args.ds1000_python, args.ds1000_baseline)
        for row in _ds1000_rows(res):
            print(f"{row[0]:<44}  {row[1]:>12}  {row[2]}")
        print(f"wrote {common.write_result('execution_ds1000', {'machine': common.machine(), **res})}")
        return
    if args.only == "seccomp":
        res = {"capabilities": capabilities(), "seccomp": bench_seccomp(args.python), "confine": bench_confine()}
        for row in _seccomp_rows(res["seccomp"]) + _confine_rows(res["confine"]):
            print(f"{row[0]:<46}  {row[1]:>17}  {row[2]}")
        print(f"wrote {common.write_result('execution_seccomp', {'machine': common.machine(), **res})}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        res = {"machine": common.machine(), "capabilities": capabilities(), "sql": bench_sql(args.items, args.baseline, tmp),
               "python": bench_python(args.python), "isolation": bench_isolation(args.python), "confine": bench_confine(),
               "seccomp": bench_seccomp(args.python), "false_timeouts": bench_false_timeouts()}
    s, p, f, iso, cf = res["sql"], res["python"], res["false_timeouts"], res["isolation"], res["confine"]
    rows = [
        ("SQL verdicts/s, lutra (cold caches)", f"{s['lutra_verdicts_per_s']:.0f}",
         f"{s['items']} items, {s['distinct_executed']} distinct, {s['workers']} workers, {s['data']}"),
        ("SQL verdicts/s, lutra (cached re-run)", f"{s['lutra_cached_rerun_per_s']:.0f}", ""),
        ("SQL verdicts/s, fresh process per query", f"{s['baseline_verdicts_per_s']:.1f}",
         f"{s['baseline_items']} items"),
        ("SQL speedup", f"{s['speedup']:.1f}x", f"agreement {s['agreement_with_baseline']:.3f} (official quirks differ)"),
        ("Python programs/s, zygote", f"{p['zygote_programs_per_s']:.1f}", f"{p['zygote_s_per_program']*1000:.0f} ms each"),
        ("Python programs/s, fresh interpreter", f"{p['fresh_programs_per_s']:.2f}",
         f"{p['fresh_s_per_program']*1000:.0f} ms each"),
        ("Python speedup", f"{p['speedup']:.1f}x", ""),
    ] + [(f"isolation {m}: ms per program", f"{v:.1f}", f"{iso['added_ms_vs_none'][m]:+.1f} ms vs none, "
          f"{iso['ok'][m]}/{iso['rounds'] * iso['programs_per_round']} ok") for m, v in iso["ms_per_program"].items()
         ] + [(f"isolation {m}: empty program, ms", f"{v:.1f}", f"{iso['empty_added_ms_vs_none'][m]:+.1f} ms vs none")
              for m, v in iso["empty_program_ms"].items()
         ] + _confine_rows(cf) + _seccomp_rows(res["seccomp"]) + [(f"false timeouts, {k}", f"{v['timeouts']}/{v['programs']}",
          f"{v['timeouts_after_serial_rerun']} after serial re-run")
         for k, v in f.items() if k.startswith("workers")]
    w = max(len(r[0]) for r in rows)
    for name, val, note in rows:
        print(f"{name:<{w}}  {val:>10}  {note}")
    print(f"wrote {common.write_result('execution', res)}")


if __name__ == "__main__":
    main()
