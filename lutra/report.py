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
import csv
import json
import statistics
import sys
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


# -- plots: one figure per question ------------------------------------------------------------------------------
BAND = "line: mean over seeds; band: min–max across seeds"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(variants: list[str]) -> dict:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(variants) <= 10 else "tab20"]
    return {v: cmap(i % cmap.N) for i, v in enumerate(variants)}


def _band(ax, summary: dict, variants: list[str], colors: dict) -> None:
    """Mean over seeds (line) and min–max across seeds (band) per variant; x offset a little to keep points apart."""
    for i, v in enumerate(variants):
        s = summary.get(v)
        if not s:
            continue
        dx = (i - (len(variants) - 1) / 2) * 0.02
        x = [k + dx for k in s]
        n = max(t[4] for t in s.values())
        ax.plot(x, [t[0] for t in s.values()], "o-", color=colors[v], lw=1.8, ms=4,
                label=f"{v} ({n} seed{'s' if n > 1 else ''})")
        if n > 1:
            ax.fill_between(x, [t[2] for t in s.values()], [t[3] for t in s.values()], color=colors[v], alpha=0.15,
                            lw=0)


def _binned(runs: list[dict], metric: str, bins: int = 60) -> tuple[list[float], list[float], list[float], list[float]]:
    """Per step bin: mean over the variant's seeds of each seed's bin mean, and the min–max of those seed means."""
    pts = [[(s, m[metric]) for s, m in r["steps"].items() if m.get(metric) is not None] for r in runs]
    pts = [p for p in pts if p]
    if not pts:
        return [], [], [], []
    top = max(s for p in pts for s, _ in p) + 1
    width = max(1, -(-top // bins))
    per_seed = []
    for p in pts:
        acc = defaultdict(list)
        for s, y in p:
            acc[s // width].append(y)
        per_seed.append({b: statistics.fmean(ys) for b, ys in acc.items()})
    xs, mean, lo, hi = [], [], [], []
    for b in sorted({b for d in per_seed for b in d}):
        ys = [d[b] for d in per_seed if b in d]
        xs.append(b * width + (width - 1) / 2)
        mean.append(statistics.fmean(ys))
        lo.append(min(ys))
        hi.append(max(ys))
    return xs, mean, lo, hi


def _save(fig, path: Path, legend_title: str = BAND) -> None:
    """Legend under the axes (never over the data), then save."""
    handles, labels = next((ax.get_legend_handles_labels() for ax in fig.axes if ax.get_legend_handles_labels()[0]),
                           ([], []))
    rows = -(-len(labels) // 3) if labels else 0
    bottom = (0.3 + 0.22 * rows) / fig.get_figheight() if rows else 0
    if labels:
        fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), title=legend_title, fontsize=9,
                   title_fontsize=9, frameon=False)
    for ax in fig.axes:
        ax.grid(alpha=0.3)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)


def _min_span(ax, span: float, lo: float | None = None, hi: float | None = None, axis: str = "y") -> None:
    """Widen a degenerate axis (one point, or flat at 0%) so its ticks read as values, not as noise around one."""
    a, b = ax.get_ylim() if axis == "y" else ax.get_xlim()
    if b - a < span:
        mid = (a + b) / 2
        a, b = mid - span / 2, mid + span / 2
        if lo is not None and a < lo:
            a, b = lo, lo + span
        if hi is not None and b > hi:
            a, b = hi - span, hi
        (ax.set_ylim if axis == "y" else ax.set_xlim)(a, b)


def _round_axis(ax, rows: list[dict]) -> None:
    ax.set_xticks(sorted({r["round"] for r in rows}))
    ax.set_xlabel("round (0 = base model, before any training)")


def plot_all(runs: list[dict], rows: list[dict], variants: list[str], out: Path) -> list[str]:
    plt, colors, made = _pyplot(), _colors(variants), []
    from matplotlib.ticker import MaxNLocator

    legend_h = 0.3 * -(-len(variants) // 3)

    fig, ax = plt.subplots(figsize=(8, 5 + legend_h))  # Q: does EX improve round over round, beyond seed noise?
    _band(ax, summarize(rows, "exec_acc"), variants, colors)
    _round_axis(ax, rows)
    ax.set_ylabel("eval execution accuracy (%)")
    _min_span(ax, 5.0, 0.0, 100.0)
    ax.set_title("Execution accuracy per round")
    _save(fig, out / "ex_per_round.png")
    made.append("ex_per_round.png")

    groups = [c for c in ("ex_common_templates", "ex_rare_templates", "ex_held_out_db") if any(c in r for r in rows)]
    if groups:  # Q: where do the gains come from: the patterns the base knew, the rare ones, an unseen database?
        fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 4.5 + legend_h), sharey=True,
                                 squeeze=False)
        for ax, col in zip(axes[0], groups):
            _band(ax, summarize(rows, col), variants, colors)
            _round_axis(ax, rows)
            ax.set_title(col.removeprefix("ex_").replace("_", " ").replace("db", "database"))
        axes[0][0].set_ylabel("eval execution accuracy (%)")
        _min_span(axes[0][0], 5.0, 0.0, 100.0)
        fig.suptitle("Execution accuracy per round by problem group")
        _save(fig, out / "ex_by_group.png")
        made.append("ex_by_group.png")

    trained = [r for r in rows if r["round"] > 0]
    if trained:  # Q: how much training signal does each round produce, and how many problems give none?
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5 + legend_h))
        _band(a1, summarize(trained, "pairs"), variants, colors)
        _band(a2, summarize(trained, "no_pair"), variants, colors)
        n = max((r["problems"] or 0) for r in trained)
        a1.set_ylabel("pairs built (sft methods: training targets)")
        a2.set_ylabel(f"problems without a pair (of {n:.0f} train problems)")
        a1.set_title("Pairs built per round")
        a2.set_title("Problems without a pair per round")
        for ax in (a1, a2):
            _round_axis(ax, trained)
        _save(fig, out / "pairs_per_round.png")
        made.append("pairs_per_round.png")

    for metric, name, ylabel, title in (  # Q: does training optimise what it should, step by step?
        ("train/loss", "train_loss.png", "training loss (nats)",
         "Training loss per optimizer step (DPO + λ·NLL; NLL for the sft methods)"),
        ("train/rewards/accuracies", "reward_accuracy.png", "reward accuracy (share of pairs, 0–1)",
         "DPO reward accuracy per optimizer step (share of pairs with chosen reward > rejected)"),
    ):
        fig, ax = plt.subplots(figsize=(8, 5 + legend_h))
        for v in variants:
            xs, mean, lo, hi = _binned([r for r in runs if r["variant"] == v], metric)
            if xs:
                n = sum(1 for r in runs if r["variant"] == v and any(metric in m for m in r["steps"].values()))
                ax.plot(xs, mean, "-", color=colors[v], lw=1.6, marker="o" if len(xs) <= 30 else "", ms=4,
                        label=f"{v} ({n} seed{'s' if n > 1 else ''})")
                ax.fill_between(xs, lo, hi, color=colors[v], alpha=0.15, lw=0)
        if not ax.lines:
            plt.close(fig)
            continue
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _min_span(ax, 4.0, lo=-0.5, axis="x")
        if metric.endswith("accuracies"):
            ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("optimizer step (counted across rounds)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=11)
        _save(fig, out / name, legend_title="line: mean over seeds of step-bin means; band: min–max across seeds")
        made.append(name)
    return made


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
