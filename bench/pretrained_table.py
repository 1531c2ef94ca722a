"""The table of bench/pretrained_recipe.sh: EX per round, the share of pairs whose chosen program is the model's own
sample, and the seconds per stage, for every run directory under OUT; JSON next to it.

    python bench/pretrained_table.py outputs/recipe bench/results/pretrained_recipe.json
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path

STAGES = ("sample", "execute", "pair", "ref_logps", "train", "evaluate")


def read_run(d: Path) -> dict:
    rows = sorted(csv.DictReader(open(d / "rounds.csv")), key=lambda r: int(r["round"]))
    stages = json.loads((d / "manifest.json").read_text())["stages"]
    rounds = []
    for r in rows:
        k = int(r["round"])
        pairs = float(r.get("pairs/pairs") or 0)
        own = r.get("pairs/own_chosen")
        rounds.append({
            "round": k, "exec_acc": float(r["eval/exec_acc"]), "pairs": int(pairs),
            "own_chosen_share": (float(own) / pairs) if own not in (None, "") and pairs else None,
            "seconds": {s: stages.get(f"round_{k}/{s}", {}).get("seconds") for s in STAGES},
            "sample_accuracy": stages.get(f"round_{k}/execute", {}).get("sample_accuracy"),
        })
    return {"run": d.name, "rounds": rounds}


def main(out: str, json_path: str) -> None:
    runs = [read_run(d) for d in sorted(Path(out).iterdir()) if (d / "rounds.csv").exists() and not d.name.startswith("boot")]
    n = max((len(r["rounds"]) for r in runs), default=0)
    head = "| run | " + " | ".join(f"round {k}" for k in range(n)) + " | gain over round 1 | own-chosen share per round |"
    print(head + "\n|" + "---|" * (n + 3))
    by_method: dict[str, list[float]] = {}
    for r in runs:
        ex = [x["exec_acc"] for x in r["rounds"]]
        gain = ex[-1] - ex[1] if len(ex) > 2 else float("nan")
        by_method.setdefault(r["run"].rsplit("-s", 1)[0], []).append(gain)
        share = ", ".join("-" if x["own_chosen_share"] is None else f"{100 * x['own_chosen_share']:.0f}%" for x in r["rounds"][1:])
        print(f"| {r['run']} | " + " | ".join(f"{e:.1f}" for e in ex) + f" | {gain:+.1f} | {share} |")
    print()
    for m, g in by_method.items():
        sd = statistics.stdev(g) if len(g) > 1 else 0.0
        print(f"{m}: gain over the bootstrap round {statistics.mean(g):+.1f} +- {sd:.1f} ({len(g)} seeds)")
    Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    Path(json_path).write_text(json.dumps({"runs": runs}, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:3])
