"""Scoring programs against a split: execution accuracy overall and per group, the verdicts and summary files.

`score_predictions` is what the training loop's per-round evaluation and `python -m lutra.evaluate` both call;
`read_predictions` checks a predictions file line by line; `check_gold` runs every gold program once.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from lutra.artifacts import json_lines, write_json, write_jsonl
from lutra.benchmarks import Problem
from lutra.benchmarks.sql_schema import check_databases
from lutra.execution import Verdict, judge

log = logging.getLogger(__name__)

GROUP_KEYS = ("tier", "difficulty", "library", "perturbation_type", "held_out", "rare", "template")
"""Problem.meta keys reported as per-group EX when present."""
ORDER = {v: i for i, v in enumerate(("easy", "medium", "hard", "extra", "simple", "moderate", "challenging"))}


class PredictionsError(ValueError):
    """A malformed predictions file; the message names the file and line."""


def _natural(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def read_predictions(path: str | Path, known_ids: set[str], *, split: str = "") -> dict[str, str]:
    """{id: prediction} from a JSONL file; every malformed line, duplicate or unknown id is a named error."""
    path = Path(path)
    if not path.is_file():
        raise PredictionsError(f"{path}: predictions file not found")
    try:
        lines = path.read_bytes().decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise PredictionsError(f"{path}: not UTF-8 text ({e})") from None
    out: dict[str, str] = {}
    first_line: dict[str, int] = {}
    errors = []
    for n, rec, bad, last in json_lines(lines):
        where = f"{path}:{n}"
        if bad is not None:
            errors.append(f"{where}: invalid JSON ({bad.msg}){' - truncated last line?' if last else ''}")
            continue
        if not isinstance(rec, dict):
            errors.append(f"{where}: expected an object with keys id and prediction, got {type(rec).__name__}")
            continue
        missing = [k for k in ("id", "prediction") if k not in rec]
        if missing:
            errors.append(f"{where}: missing key(s) {missing}")
            continue
        pid, pred = rec["id"], rec["prediction"]
        if isinstance(pid, bool) or not isinstance(pid, (str, int)):
            errors.append(f"{where}: id must be a string (or an integer), got {type(pid).__name__} {pid!r:.40}")
            continue
        if not isinstance(pred, str):
            errors.append(f"{where}: id {pid}: prediction must be a string, got {type(pred).__name__}")
            continue
        pid = str(pid)
        if pid in first_line:
            errors.append(f"{where}: duplicate id {pid!r} (first on line {first_line[pid]})")
            continue
        if pid not in known_ids:
            example = min(known_ids, key=_natural) if known_ids else "-"
            errors.append(f"{where}: unknown id {pid!r}: not a problem of {split or 'the split'} (ids look like "
                          f"{example!r})")
            continue
        first_line[pid] = n
        out[pid] = pred
    if errors:
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise PredictionsError(f"{len(errors)} bad line(s) in {path}:\n  " + "\n  ".join(errors[:10]) + more)
    return out


def _acc(correct: float, n: float) -> float:
    return round(100.0 * correct / n, 4) if n else 0.0


def summarize(problems: list[Problem], verdicts: list, *, exclude_broken_gold: bool = False,
              broken_gold: dict[str, str] | None = None) -> dict[str, Any]:
    """EX overall and per group (meta keys in GROUP_KEYS), status counts and the broken-gold list.

    A verdict is correct only when `correct is True`: errors, timeouts and unknown (broken-gold) verdicts count
    as wrong. Broken gold = verdict.correct is None, or an id in `broken_gold` (from check_gold); those leave
    the denominator only with exclude_broken_gold. A problem with meta `copies` (a record the official file
    repeats) weighs that many times, as the official position-based scripts count it.
    """
    if len(problems) != len(verdicts):
        raise ValueError(f"{len(problems)} problems but {len(verdicts)} verdicts")
    broken = dict(broken_gold or {})
    for p, v in zip(problems, verdicts, strict=True):
        if v.correct is None and p.id not in broken:
            broken[p.id] = v.error or "gold failed"
    n = correct = 0
    status: dict[str, int] = {}
    groups: dict[str, dict[str, dict]] = {}
    for p, v in zip(problems, verdicts, strict=True):
        status[v.status] = status.get(v.status, 0) + 1
        if exclude_broken_gold and p.id in broken:
            continue
        w = int(p.meta.get("copies", 1))
        ok = w if v.correct is True else 0
        n, correct = n + w, correct + ok
        for key in GROUP_KEYS:
            if key in p.meta:
                g = groups.setdefault(key, {}).setdefault(str(p.meta[key]), {"n": 0, "correct": 0})
                g["n"] += w
                g["correct"] += ok
    for per_key in groups.values():
        for g in per_key.values():
            g["exec_acc"] = _acc(g["correct"], g["n"])
    return {
        "n": n, "correct": correct, "exec_acc": _acc(correct, n), "n_problems": len(problems),
        "status": dict(sorted(status.items())),
        "groups": {k: dict(sorted(v.items(), key=lambda kv: (ORDER.get(kv[0], len(ORDER)), _natural(kv[0]))))
                   for k, v in groups.items()},
        "broken_gold": {i: broken[i] for i in sorted(broken, key=_natural)},
        "n_broken_gold": len(broken), "exclude_broken_gold": exclude_broken_gold,
    }


def flat_metrics(summary: dict, prefix: str = "eval") -> dict[str, float]:
    """`eval/exec_acc`, `eval/difficulty/easy`, ...: the summary's numbers under wandb-style names."""
    out = {f"{prefix}/exec_acc": summary["exec_acc"], f"{prefix}/n": summary["n"]}
    for key, per in summary["groups"].items():
        for value, g in per.items():
            out[f"{prefix}/{key}/{value}"] = g["exec_acc"]
    return out


def check_gold(problems: list[Problem], bench_cfg, *, progress: bool = True) -> dict[str, str]:
    """Run every gold program as a prediction, once; {id: why} for those that are not judged correct."""
    verdicts = judge([(p, p.gold) for p in problems], bench_cfg, progress=progress, desc="gold")
    broken = {p.id: f"{v.status}: {v.error}".strip(": ")
              for p, v in zip(problems, verdicts, strict=True) if v.correct is not True}
    if broken:
        ids = sorted(broken, key=_natural)
        log.warning("%d of %d gold programs fail (%s): %s%s", len(ids), len(problems), bench_cfg.name,
                    "; ".join(f"{i}: {broken[i][:120]}" for i in ids[:5]), " ..." if len(ids) > 5 else "")
    return broken


def score_predictions(problems: list[Problem], predictions: dict[str, str], bench_cfg, out_dir: str | Path, *,
                      subset: bool = False, progress: bool = True, broken_gold: dict[str, str] | None = None,
                      skipped: dict[str, str] | None = None, judge_items=judge) -> dict[str, Any]:
    """Judge `predictions` ({id: program}) against `problems`; write verdicts.jsonl and summary.json to out_dir
    (None: write nothing, as on a data-parallel rank other than 0).

    Ids of `problems` without a prediction are listed and scored wrong (status `missing`, or the reason given
    in `skipped`, e.g. prompt_too_long), unless subset=True, which scores only the ids present.
    judge_items: `lutra.execution.judge` or a function of the same signature (the loop's shards it over ranks).
    """
    known = {p.id for p in problems}
    unknown = sorted(set(predictions) - known, key=_natural)
    if unknown:
        raise PredictionsError(f"predictions for ids not in the split: {unknown[:10]}")
    if subset:
        problems = [p for p in problems if p.id in predictions]
    judged = [p for p in problems if p.id in predictions]
    check_databases(judged)
    found = judge_items([(p, predictions[p.id]) for p in judged], bench_cfg, progress=progress, desc="score")
    by_id = dict(zip((p.id for p in judged), found, strict=True))
    skipped = skipped or {}
    verdicts = [by_id.get(p.id) or Verdict(skipped.get(p.id, "missing"), False, 0.0, "no prediction")
                for p in problems]
    if out_dir is not None:
        write_jsonl(Path(out_dir) / "verdicts.jsonl", [
            {"id": p.id, "status": v.status, "correct": v.correct, "seconds": round(v.seconds, 4), "error": v.error,
             "prediction": predictions.get(p.id)} for p, v in zip(problems, verdicts, strict=True)])
    summary = summarize(problems, verdicts, broken_gold=broken_gold,
                        exclude_broken_gold=bool(bench_cfg.options.get("exclude_broken_gold", False)))
    missing = sorted((p.id for p in problems if p.id not in predictions), key=_natural)
    summary.update(benchmark=bench_cfg.name, comparison=bench_cfg.comparison, subset=subset,
                   n_missing=len(missing), missing=missing)
    if out_dir is not None:
        write_json(Path(out_dir) / "summary.json", summary)
    return summary
