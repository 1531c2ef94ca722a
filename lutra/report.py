"""python -m lutra.report RUN_OR_SWEEP_DIR... [--out DIR]

Compares finished (or running) runs: every directory given is searched for run directories (those holding a
manifest.json), so a sweep directory, a single run or several of either work. Writes into --out:

    report.md    summary per variant (mean ± sd over seeds per round), then every run and round
    report.csv   one row per run and round: variant, method, seed, EX overall / by template rarity / held-out
                 db, sample accuracy, pairs built, problems without a pair, train steps
    ex_per_round.png, ex_by_group.png, pairs_per_round.png, train_loss.png, reward_accuracy.png

A variant is what the runs' configs differ in, apart from the seed (e.g. the method in the loss ablation,
method.beta in the beta sweep); seeds of one variant are averaged, and the plots show the spread across them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lutra.reporting.plots import plot_all
from lutra.reporting.runs import _variant_key, find_runs, label_runs, load_run, summarize, table_rows
from lutra.reporting.tables import write_csv, write_markdown

__all__ = ["build", "find_runs", "label_runs", "load_run", "main", "summarize", "table_rows"]


def build(paths: list[str], out: Path) -> dict:
    """Read the runs under `paths`, write report.md, report.csv and the plots into `out`; returns what it found."""
    dirs = find_runs(paths)
    if not dirs:
        raise FileNotFoundError(f"no run directory (one holding manifest.json) under: {', '.join(paths)}")
    runs = [load_run(d) for d in dirs]
    label_runs(runs)
    variants = sorted({r["variant"] for r in runs}, key=lambda v: _variant_key(v, runs))
    rows = table_rows(runs)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "report.csv")
    plots = plot_all(runs, rows, variants, out)
    write_markdown(runs, rows, variants, plots, out / "report.md")
    return {"runs": len(runs), "variants": variants, "plots": plots, "out": str(out)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lutra.report", description=__doc__.split("\n\n")[1])
    ap.add_argument("paths", nargs="+", metavar="RUN_OR_SWEEP_DIR")
    ap.add_argument("--out", help="output directory (default: <dir>/report for one dir, else outputs/report)")
    a = ap.parse_args(argv)
    out = Path(a.out) if a.out else (Path(a.paths[0]) / "report" if len(a.paths) == 1 else Path("outputs/report"))
    try:
        info = build(a.paths, out)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{info['runs']} runs, variants: {', '.join(info['variants'])}")
    print(f"wrote {out / 'report.md'}, {out / 'report.csv'} and {len(info['plots'])} plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
