"""report.csv (one row per run and round) and report.md (per-variant summary, then every run)."""

from __future__ import annotations

import csv
from pathlib import Path

from lutra.reporting.runs import GROUP_COLUMNS, ROUND_COLUMNS, summarize


def _fmt(x, digits=1) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def write_csv(rows: list[dict], path: Path) -> None:
    fixed = ["variant", "method", "seed", "round", "exec_acc"]
    extra = sorted({k for r in rows for k in r if k.startswith("ex_")})
    fields = fixed + extra + [c for c in ROUND_COLUMNS] + ["run"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def write_markdown(runs: list[dict], rows: list[dict], variants: list[str], plots: list[str], path: Path) -> None:
    ex = summarize(rows, "exec_acc")
    max_round = max((r["round"] for r in rows), default=0)
    lines = ["# lutra report", "",
             f"{len(runs)} runs, {len(variants)} variants. EX = greedy execution accuracy (%) on the eval split; "
             "round 0 is the base model. Cells: mean ± sd over seeds (n seeds).", "",
             "## EX per round", "",
             "| variant | " + " | ".join(f"round {k}" for k in range(max_round + 1)) + " | final - base |",
             "|---|" + "---:|" * (max_round + 2)]
    for v in variants:
        s = ex.get(v, {})
        cells = [f"{m:.1f} ± {sd:.1f} ({n})" if k in s else "" for k in range(max_round + 1)
                 for (m, sd, _, _, n) in [s.get(k, (0, 0, 0, 0, 0))]]
        last = max(s) if s else None
        delta = _fmt(s[last][0] - s[0][0]) if s and 0 in s and last else ""
        lines.append(f"| {v} | " + " | ".join(cells) + f" | {delta} |")
    group_cols = [c for c in GROUP_COLUMNS.values() if c != "ex_seen_dbs" and any(c in r for r in rows)]
    heads = [c.removeprefix("ex_").replace("_", " ").replace("held out", "held-out") for c in group_cols]
    lines += ["", "## Last round by problem group (mean over seeds, min–max; every group in report.csv)", "",
              "| variant | round | EX | " + " | ".join(heads) + " | pairs | no pair | train steps |",
              "|---|---:|---:|" + "---:|" * (len(group_cols) + 3)]
    for v in variants:
        last = max((r["round"] for r in rows if r["variant"] == v), default=None)
        if last is None:
            continue
        cells = []
        for col in ["exec_acc", *group_cols, "pairs", "no_pair", "train_steps"]:
            s = summarize([r for r in rows if r["round"] == last], col).get(v, {}).get(last)
            digits = 0 if col in ("pairs", "no_pair", "train_steps") else 1
            cells.append("" if s is None else f"{s[0]:.{digits}f} ({s[2]:.{digits}f}–{s[3]:.{digits}f})")
        lines.append(f"| {v} | {last} | " + " | ".join(cells) + " |")
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    lines += ["", "## Every run and round", "",
              "| variant | seed | round | EX | sample acc | pairs | no pair | train steps | run |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['seed']} | {r['round']} | {_fmt(r['exec_acc'])} | "
                     f"{_fmt(r.get('sample_acc'))} | {_fmt(r.get('pairs'), 0)} | {_fmt(r.get('no_pair'), 0)} | "
                     f"{_fmt(r.get('train_steps'), 0)} | {Path(r['run']).name} |")
    path.write_text("\n".join(lines) + "\n")
