"""Run directories as rows: each run's config, rounds and logged metrics, its variant (what its config differs in,
apart from the seed), and per-variant mean and spread over seeds."""

from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path

METHOD_ORDER = ("codelutra", "dpo", "sft", "sft_gold", "sft_gold_epoch", "nll_only")
# keys that never make two runs different variants (paths, logging, seeds, how long the run was asked to go)
IGNORED = ("run_dir", "seed", "logger", "log_level", "resume", "rounds", "trainer.enable_progress_bar",
           "benchmark.data_dir", "benchmark.workers")
# eval/groups/<group>/<value>/exec_acc -> report column (mini_sql's groups; other groups keep a generic name). Runs
# before mini_sql's generator version 3 had the held-out database inside eval (group held_out); now it is its own
# split, logged as eval/held_out/exec_acc
GROUP_COLUMNS = {("rare", "False"): "ex_common_templates", ("rare", "True"): "ex_rare_templates",
                 ("held_out", "False"): "ex_seen_dbs", ("held_out", "True"): "ex_held_out_db"}
ROUND_COLUMNS = ("pairs", "problems", "with_pairs", "no_pair", "all_correct", "all_wrong", "sample_acc",
                 "train_steps", "pairs_used")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def find_runs(paths: list[str]) -> list[Path]:
    runs = set()
    for p in map(Path, paths):
        if (p / "manifest.json").exists():
            runs.add(p.resolve())
        elif p.is_dir():
            runs.update(m.parent.resolve() for m in p.rglob("manifest.json") if "round_" not in m.parent.name)
    return sorted(runs)


def load_run(d: Path) -> dict:
    manifest = json.loads((d / "manifest.json").read_text())
    cfg = manifest.get("config") or json.loads((d / "config.json").read_text())
    stages = manifest.get("stages", {})
    rounds = []
    for r in _read_csv(d / "rounds.csv"):
        k = int(r["round"])
        row = {"round": k, "exec_acc": _num(r.get("eval/exec_acc"))}
        for key, v in r.items():
            parts = key.split("/")
            if len(parts) == 5 and parts[:2] == ["eval", "groups"] and parts[4] == "exec_acc" and parts[2] != "template":
                row[GROUP_COLUMNS.get((parts[2], parts[3]), f"ex_{parts[2]}_{parts[3]}")] = _num(v)
            elif key == "eval/held_out/exec_acc":  # benchmark.held_out_split, scored apart from eval
                row["ex_held_out_db"] = _num(v)
        for key in ("pairs", "problems", "with_pairs", "all_correct", "all_wrong"):
            row[key] = _num(r.get(f"pairs/{key}"))
        if row["problems"] is not None and row["with_pairs"] is not None:
            row["no_pair"] = row["problems"] - row["with_pairs"]
        row["sample_acc"] = _num(stages.get(f"round_{k}/execute", {}).get("sample_accuracy"))
        row["train_steps"] = _num(stages.get(f"round_{k}/train", {}).get("steps"))
        row["pairs_used"] = _num(stages.get(f"round_{k}/train", {}).get("pairs_used"))
        rounds.append(row)
    steps: dict[int, dict] = {}
    for r in _read_csv(d / "logs" / "metrics.csv"):  # Lightning's CSVLogger: one row per logged step
        s = _num(r.get("step"))
        if s is not None:
            steps.setdefault(int(s), {}).update({k: _num(v) for k, v in r.items() if k.startswith("train/") and v})
    return {"dir": d, "config": cfg, "flat": _flatten(cfg), "method": cfg["method"]["name"], "seed": cfg["seed"],
            "rounds": sorted(rounds, key=lambda r: r["round"]), "steps": dict(sorted(steps.items()))}


def label_runs(runs: list[dict]) -> None:
    """Set run['variant']: the config values that differ between runs, seed excluded."""
    keys = sorted({k for r in runs for k in r["flat"]})
    varying = [k for k in keys if not any(k == i or k.startswith(i + ".") for i in IGNORED)
               and len({json.dumps(r["flat"].get(k), sort_keys=True) for r in runs}) > 1]
    named = {k.split(".")[0] for k in varying if k.endswith(".name") and k.count(".") == 1}
    shown = [k for k in varying if k.split(".")[0] not in named or k == k.split(".")[0] + ".name"]
    for r in runs:
        parts = [str(r["flat"].get(k)) if k.endswith(".name") else f"{k.split('.')[-1]}={r['flat'].get(k)}"
                 for k in shown]
        r["variant"] = " ".join(parts) or r["method"]


def _variant_key(label: str, runs: list[dict]):
    method = next(r["method"] for r in runs if r["variant"] == label)
    order = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    nums = [_num(p.split("=")[-1]) for p in label.split()]
    return order, [n if n is not None else float("inf") for n in nums], label


def table_rows(runs: list[dict]) -> list[dict]:
    rows = []
    for r in runs:
        for rd in r["rounds"]:
            rows.append({"variant": r["variant"], "method": r["method"], "seed": r["seed"], "run": str(r["dir"]),
                         **rd})
    return rows


def summarize(rows: list[dict], metric: str) -> dict:
    """{variant: {round: (mean, sd, min, max, n)}} of `metric` across seeds."""
    vals: dict = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row.get(metric) is not None:
            vals[row["variant"]][row["round"]].append(row[metric])
    out = {}
    for v, by_round in vals.items():
        out[v] = {k: (statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0, min(xs), max(xs),
                      len(xs)) for k, xs in sorted(by_round.items())}
    return out
