"""DS-1000 (Lai et al. 2022), the current simplified release: one record per problem with `prompt`,
`reference_code`, `code_context` and `metadata` (problem_id, library_problem_id, library, test_case_cnt,
perturbation_type, perturbation_origin_id).

Where the records come from (`options.source`):
  auto  benchmark.data_dir (default $LUTRA_DATA/ds1000) is a .jsonl/.jsonl.gz file, or a folder holding
        `data/ds1000.jsonl.gz` (the official repository's layout) or `ds1000.jsonl(.gz)`;
  hub   `datasets.load_dataset(options.hf_dataset, split=options.hf_split, revision=options.hf_revision)`, the
        copy the DS-1000 authors publish on the Hugging Face hub.

Splits: `all` (1000 problems), `train` and `eval`: options.train_size (500) problems and the rest, split by
perturbation group so a problem and its perturbed variants are on one side (PAPER.md §8). A group is
(library, perturbation_origin_id): the origin id counts within a library (it is a library_problem_id).
Each library gets its share of train (stratified), filled with its groups in an order seeded by
options.split_seed while they fit.
Problem id = str(metadata.problem_id); meta: library, perturbation_type, perturbation_origin_id.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from pathlib import Path

from lutra.artifacts import json_lines
from lutra.benchmarks import BenchmarkError, Problem
from lutra.benchmarks.sql_schema import data_root, field

SPLITS = ("all", "train", "eval")
META_INT = ("problem_id", "library_problem_id", "perturbation_origin_id")


def find_file(root: Path) -> Path:
    if root.is_file():
        return root
    tried = [root / "data" / "ds1000.jsonl.gz", root / "ds1000.jsonl.gz", root / "ds1000.jsonl"]
    for path in tried:
        if path.is_file():
            return path
    raise BenchmarkError(f"ds1000: no problems file; looked for {[str(p) for p in tried]} (run "
                         "`python -m lutra.prepare benchmark=ds1000`, set benchmark.data_dir, or "
                         "benchmark.options.source=hub)")


def read_jsonl(path: Path) -> list[tuple[str, dict]]:
    """(where, record) per non-empty line; errors name the file and line."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise BenchmarkError(f"{path}: cannot read ({e})") from None
    out = []
    lines = raw.decode("utf-8", errors="strict").splitlines()
    if lines:
        lines[0] = lines[0].lstrip("\ufeff")
    for n, rec, bad, last in json_lines(lines):
        where = f"{path}:{n}"
        if bad is not None:
            raise BenchmarkError(f"{where}: invalid JSON: {bad.msg}{' (truncated last line?)' if last else ''}") from None
        if not isinstance(rec, dict):
            raise BenchmarkError(f"{where}: expected an object, got {type(rec).__name__}")
        out.append((where, rec))
    return out


def _records(cfg) -> list[tuple[str, dict]]:
    source = cfg.options.get("source", "auto")
    if source == "hub":
        from datasets import load_dataset

        name = cfg.options.get("hf_dataset", "xlangai/DS-1000")
        ds = load_dataset(name, split=cfg.options.get("hf_split", "test"), revision=cfg.options.get("hf_revision"))
        return [(f"{name} row {i}", dict(r)) for i, r in enumerate(ds)]
    if source != "auto":
        raise BenchmarkError(f"benchmark.options.source: must be auto or hub, got {source!r}")
    return read_jsonl(find_file(data_root(cfg)))


def _problem(where: str, rec: dict) -> Problem:
    prompt = field(rec, "prompt", str, where)
    gold = field(rec, "reference_code", str, where)
    context = field(rec, "code_context", str, where)
    meta = field(rec, "metadata", dict, where)
    for key in META_INT:
        field(meta, key, int, f"{where}: metadata")
    for key in ("library", "perturbation_type"):
        field(meta, key, str, f"{where}: metadata")
    return Problem(id=str(meta["problem_id"]), question=prompt, context="", gold=gold, language="python",
                   test_context=context, meta={
                       "library": meta["library"], "perturbation_type": meta["perturbation_type"],
                       "perturbation_origin_id": meta["perturbation_origin_id"],
                       "library_problem_id": meta["library_problem_id"]})


def split_groups(problems: list[Problem], train_size: int, seed: int) -> tuple[set, set]:
    """(train ids, eval ids): whole perturbation groups; each library gets its share of train_size (largest
    remainder), filled with its groups in a seeded order while they fit, then any shortfall from the rest."""
    groups: dict[tuple, list[str]] = {}
    for p in problems:
        groups.setdefault((p.meta["library"], p.meta["perturbation_origin_id"]), []).append(p.id)
    keys = sorted(groups)
    random.Random(f"{seed}/ds1000-split").shuffle(keys)
    sizes: dict[str, int] = {}
    for p in problems:
        sizes[p.meta["library"]] = sizes.get(p.meta["library"], 0) + 1
    exact = {lib: n * train_size / len(problems) for lib, n in sizes.items()}
    quota = {lib: int(x) for lib, x in exact.items()}
    for lib in sorted(exact, key=lambda k: (int(exact[k]) - exact[k], k))[: train_size - sum(quota.values())]:
        quota[lib] += 1
    train: set = set()
    taken = {lib: 0 for lib in sizes}
    for k in keys:
        if taken[k[0]] + len(groups[k]) <= quota[k[0]]:
            train.update(groups[k])
            taken[k[0]] += len(groups[k])
    for k in keys:
        if not train.issuperset(groups[k]) and len(train) + len(groups[k]) <= train_size:
            train.update(groups[k])
    return train, {p.id for p in problems} - train


def load(cfg, split: str) -> list[Problem]:
    if split not in SPLITS:
        raise BenchmarkError(f"ds1000: unknown split {split!r}; choose one of {list(SPLITS)}")
    problems, seen = [], {}
    for where, rec in _records(cfg):
        p = _problem(where, rec)
        if p.id in seen:
            raise BenchmarkError(f"{where}: duplicate metadata.problem_id {p.id} (first at {seen[p.id]})")
        seen[p.id] = where
        problems.append(p)
    if split == "all":
        return problems
    train_size = int(cfg.options.get("train_size", 500))
    if not 0 < train_size < len(problems):
        raise BenchmarkError(f"benchmark.options.train_size: must be in (0, {len(problems)}), got {train_size}")
    train, _ = split_groups(problems, train_size, int(cfg.options.get("split_seed", 0)))
    return [p for p in problems if (p.id in train) == (split == "train")]


def user_message(problem: Problem) -> str:
    # The prompt ends where the solution goes (`BEGIN SOLUTION\n<code>`); the official harness inserts the
    # completion as is, so the model is asked for that code alone.
    return ("Complete the Python code below. Reply with only the code that goes after BEGIN SOLUTION "
            "(no explanation, no test code).\n\n" + problem.question)


# ------------------------------------------------------------------------------------------ the environment

LIBRARIES = {"Pandas": ("pandas",), "Numpy": ("numpy",), "Scipy": ("scipy",), "Sklearn": ("sklearn",),
             "Matplotlib": ("matplotlib", "seaborn"), "Pytorch": ("torch",), "Tensorflow": ("tensorflow",)}
"""What each DS-1000 library's records import (a few also need statsmodels, gensim or xgboost)."""
EXTRAS = {"tensorflow": "ds1000-tf", "torch": "the core install (torch)"}
PINS = {"numpy": "1.26.4", "pandas": "1.5.3", "scipy": "1.12.0", "sklearn": "1.4.0", "matplotlib": "3.8.4",
        "seaborn": "0.13.2", "tensorflow": "2.16.1"}
"""The documented environment (DS-1000's own pins; torch any 2.x): every reference passes under it."""
_PROBE = ("import importlib, json, sys\nout = {}\nfor m in sys.argv[1:]:\n    try:\n"
          "        out[m] = getattr(importlib.import_module(m), '__version__', '?')\n"
          "    except Exception as e:\n        out[m] = None\nprint(json.dumps(out))")


def interpreter(cfg) -> str:
    import sys

    return str(cfg.options.get("python") or sys.executable)


def environment(cfg, libraries=None) -> dict[str, str | None]:
    """{module: version or None} in the interpreter the executor runs (benchmark.options.python), for the modules
    of `libraries` (default: all seven, plus statsmodels, gensim and xgboost)."""
    import subprocess

    libs = set(libraries) if libraries else set(LIBRARIES)
    extra = {"statsmodels", "gensim", "xgboost"} if libs >= {"Sklearn", "Pytorch"} else set()
    mods = sorted({m for lib in libs for m in LIBRARIES.get(lib, ())} | extra)
    try:
        r = subprocess.run([interpreter(cfg), "-I", "-c", _PROBE, *mods], capture_output=True, text=True,
                           timeout=300, env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"})
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired) as e:
        raise BenchmarkError(f"benchmark.options.python={interpreter(cfg)}: cannot run it ({e})") from None


def check_environment(cfg, problems: list[Problem] | None = None) -> list[str]:
    """Before any model loads: the libraries the chosen problems need. Raises BenchmarkError when a core one is
    missing; returns warnings (optional libraries missing, versions that differ from the documented pins)."""
    libs = {p.meta["library"] for p in problems} if problems else set(LIBRARIES)
    found = environment(cfg, libs)
    need = {m for lib in libs for m in LIBRARIES.get(lib, ())}
    core = sorted(m for m in need - {"tensorflow", "torch"} if found.get(m) is None)
    if core:
        raise BenchmarkError(
            f"ds1000: {core} cannot be imported by {interpreter(cfg)}, so their references would fail: install "
            "the DS-1000 environment (`pip install 'lutra[ds1000]'`, README 'DS-1000 environment') or point "
            "benchmark.options.python at an interpreter that has it")
    warnings = []
    for m in sorted(need & {"tensorflow", "torch"}):
        if found.get(m) is None:
            n = sum(1 for p in problems or [] if m in LIBRARIES[p.meta["library"]])
            warnings.append(f"ds1000: {m} is not installed: its {n or 'all'} problems are scored env_error "
                            f"(unknown, no training pairs); install {EXTRAS[m]}")
    off = {m: v for m, v in found.items() if m in PINS and v not in (None, PINS[m]) and m in need}
    if off:
        warnings.append(f"ds1000: versions differ from the documented environment {PINS}: {off}; some "
                        "references may fail (run `python -m lutra.prepare benchmark=ds1000` to list them)")
    return warnings


def check_references(cfg, problems: list[Problem], *, progress: bool = True, refresh: bool = False) -> dict:
    """Run every reference once in the sandbox; cache the result per (records, environment) in
    options.datasets_dir; returns {"libraries": {lib: [passed, n]}, "failures": {id: (status, reason)}, ...}."""
    import hashlib

    from lutra.execution import judge
    from lutra.execution.python import DATASETS_DIR

    env = environment(cfg, {p.meta["library"] for p in problems})
    harness = hashlib.sha256(b"".join(f.read_bytes() for f in sorted(
        (Path(__file__).parents[1] / "execution").glob("*.py")))).hexdigest()  # a changed sandbox re-checks
    key = hashlib.sha256(json.dumps([sorted((p.id, p.gold, p.test_context) for p in problems), env,
                                     interpreter(cfg), harness]).encode()).hexdigest()[:16]
    cache = Path(str(cfg.options.get("datasets_dir") or DATASETS_DIR)).expanduser() / f"references-{key}.json"
    if cache.is_file() and not refresh:
        return json.loads(cache.read_text())
    fill_datasets(cfg, problems)
    verdicts = judge([(p, p.gold) for p in problems], cfg, progress=progress, desc="references")
    libs: dict[str, list[int]] = {}
    failures = {}
    for p, v in zip(problems, verdicts, strict=True):
        row = libs.setdefault(p.meta["library"], [0, 0])
        row[0] += v.correct is True
        row[1] += 1
        if v.correct is not True:
            failures[p.id] = (v.status, v.error.strip().splitlines()[-1][:200] if v.error.strip() else "")
    out = {"libraries": dict(sorted(libs.items())), "failures": failures, "environment": env,
           "python": interpreter(cfg), "passed": sum(r[0] for r in libs.values()), "n": len(problems)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(out, indent=1))
    out["cache"] = str(cache)
    return out


def reference_table(report: dict) -> str:
    """The per-library table and each failure, as prepare prints them."""
    lines = [f"{'library':<12} {'passed':>7} {'of':>5}"]
    lines += [f"{lib:<12} {a:>7} {n:>5}" for lib, (a, n) in report["libraries"].items()]
    lines.append(f"{'total':<12} {report['passed']:>7} {report['n']:>5}")
    for pid, (status, why) in sorted(report["failures"].items(), key=lambda kv: int(kv[0])):
        lines.append(f"  {pid}: {status}: {why}")
    return "\n".join(lines)


SEABORN_SETS = re.compile(r"""load_dataset\(\s*["']([\w-]+)["']""")


def fill_datasets(cfg, problems: list[Problem]) -> dict[str, str]:
    """Cache the seaborn datasets (and sklearn's California housing) the chosen records download, into
    options.datasets_dir, which the sandbox binds read-only (programs have no network). {name: status}."""
    from lutra.execution.python import DATASETS_DIR

    root = Path(str(cfg.options.get("datasets_dir") or DATASETS_DIR)).expanduser()
    (root / "seaborn-data").mkdir(parents=True, exist_ok=True)
    (root / "scikit_learn_data").mkdir(parents=True, exist_ok=True)
    names = sorted({m for p in problems for m in SEABORN_SETS.findall(p.test_context or "")})
    need_housing = any("fetch_california_housing" in (p.test_context or "") for p in problems)
    code = ("import sys, seaborn, sklearn.datasets as d\nfor n in sys.argv[2:]:\n    try:\n"
            "        seaborn.load_dataset(n, data_home=sys.argv[1] + '/seaborn-data'); print(n, 'ok')\n"
            "    except Exception as e:\n        print(n, type(e).__name__)\n"
            + ("try:\n    d.fetch_california_housing(data_home=sys.argv[1] + '/scikit_learn_data'); print('housing ok')\n"
               "except Exception as e:\n    print('housing', type(e).__name__)\n" if need_housing else ""))
    import subprocess

    try:
        r = subprocess.run([interpreter(cfg), "-I", "-c", code, str(root), *names], capture_output=True, text=True,
                           timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": str(e)}
    return dict(line.split(" ", 1) for line in r.stdout.splitlines() if " " in line)


def prepare_environment(cfg, split: str | None = None, *, progress: bool = True) -> dict:
    """`python -m lutra.prepare benchmark=ds1000`: check the libraries, cache the datasets, run every reference of
    `split` (options.reference_split, default all) once and log the per-library pass counts and each failure."""
    import logging

    log = logging.getLogger(__name__)
    problems = load(cfg, split or str(cfg.options.get("reference_split", "all")))
    for w in check_environment(cfg, problems):
        log.warning("%s", w)
    report = check_references(cfg, problems, progress=progress)
    log.info("DS-1000 references in %s (cached in %s):\n%s", report["python"], report.get("cache", "the cache"),
             reference_table(report))
    return {"passed": report["passed"], "n": report["n"], "libraries": report["libraries"],
            "failures": report["failures"]}
