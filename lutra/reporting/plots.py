"""The report's figures, one per question: EX per round, EX by template group, pairs per round, train loss and
reward accuracy over steps; each variant a line (mean over seeds) with a min-max band."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib
from matplotlib.ticker import MaxNLocator

from lutra.reporting.runs import summarize

BAND = "line: mean over seeds; band: min–max across seeds"


def _pyplot():
    # imported here: the headless backend must be chosen before pyplot loads, and only by a report that plots,
    # never as a side effect of importing lutra.report
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(variants: list[str]) -> dict:
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
