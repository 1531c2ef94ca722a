"""lutra against what a user would otherwise run, in one run: the README's Performance table.

    pip install -e '.[bench]'            # TRL, the training peer
    python bench/peers.py                # runs train_step.py, sampling.py and execution.py now, then the table
    python bench/peers.py --table-only   # the table from the JSONs already in bench/results/ (each row dated)

Each script compares lutra with its peer side by side on the same work (bench/README.md says how); this runs them
back to back on one machine and prints one Markdown table from the JSONs they wrote, with the machine and the date
of each row, and writes bench/results/peers.json. On a 2-core machine anything else running changes the numbers
several-fold: run it idle (~10 minutes on 2 quiet cores).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SHIPPED_BASE = ROOT / "lutra" / "bases" / "mini_sql-tiny"

RUNS = [  # (script, arguments): the peer comparisons the table is built from
    ("train_step.py", []),
    ("sampling.py", ["--model", str(SHIPPED_BASE), "--n", "8", "--lora-n", "8"]),
    ("execution.py", []),
]


def _load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def _date(name: str, payload: dict) -> str:
    """The run's date: the JSON's own, else the last commit of the file."""
    date = (payload.get("machine") or {}).get("date")
    if date:
        return str(date)[:10]
    out = subprocess.run(["git", "log", "-1", "--format=%as", "--", f"bench/results/{name}.json"], cwd=ROOT,
                         capture_output=True, text=True)
    return out.stdout.strip() or "?"


def rows() -> list[dict]:
    step, samp, ex = _load("train_step"), _load("sampling"), _load("execution")
    t = {(r["model"], r["impl"]): r for r in step["timing"]}
    agree = {a["model"]: a for a in step["agreement"]}
    lens = step["batch"]["prompt_lens"]
    out = []
    for model, label in (("tiny", "tiny (3.1M)"), ("large", "55M Llama")):
        peer, ours = t[(model, "trl_precomputed")], t[(model, "lutra")]
        out.append({
            "what": f"one DPO+NLL step, {label}, 8 pairs (prompts {min(lens)}-{max(lens)} tokens), LoRA r16",
            "peer": f"TRL DPOTrainer (precomputed reference): {peer['step_s_median']:.2f} s, "
                    f"{peer['peak_rss_mb']:.0f} MB",
            "lutra": f"{ours['step_s_median']:.2f} s, {ours['peak_rss_mb']:.0f} MB",
            "ratio": f"{ours['step_s_median'] / peer['step_s_median']:.2f}x time, "
                     f"{ours['peak_rss_mb'] / peer['peak_rss_mb']:.2f}x memory "
                     f"(loss within {agree[model]['loss_abs_diff_shared']:.1e})",
            "date": _date("train_step", step)})
    for r in samp["rows"]:
        if r["n"] == 8:
            lora = " + LoRA" in r["model"]
            out.append({
                "what": f"8 samples per mini_sql prompt ({r['prompt_tokens']} tokens), trained tiny"
                        + (" + LoRA (the loop's policy)" if lora else ""),
                "peer": f"HF generate(num_return_sequences=8): {r['hf_tok_s']:.0f} tokens/s",
                "lutra": f"{r['lutra_tok_s']:.0f} tokens/s", "ratio": f"{r['speedup']:.2f}x tokens/s",
                "date": _date("sampling", samp)})
    s, p = ex["sql"], ex["python"]
    out.append({"what": f"SQL verdicts, a duplicate-heavy stream of {s['items']:,} ({s['data']})",
                "peer": f"a fresh process per query: {s['baseline_verdicts_per_s']:.0f}/s",
                "lutra": f"{s['lutra_verdicts_per_s']:,.0f}/s", "ratio": f"{s['speedup']:.0f}x",
                "date": _date("execution", ex)})
    out.append({"what": "a DS-1000-style Python program (numpy, pandas)",
                "peer": f"a fresh interpreter: {p['fresh_s_per_program'] * 1000:,.0f} ms",
                "lutra": f"zygote: {p['zygote_s_per_program'] * 1000:,.0f} ms", "ratio": f"{p['speedup']:.1f}x",
                "date": _date("execution", ex)})
    return out


def markdown(table: list[dict]) -> str:
    cols = ["what", "peer", "lutra", "ratio", "date"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r[c] for c in cols) + " |" for r in table]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--table-only", action="store_true", help="build the table from bench/results/ as it is")
    args = ap.parse_args()
    if not args.table_only:
        for script, extra in RUNS:
            print(f"== python bench/{script} {' '.join(extra)}", flush=True)
            subprocess.run([sys.executable, str(ROOT / "bench" / script), *extra], cwd=ROOT, check=True)
    table = rows()
    text = markdown(table)
    print(text)
    if not args.table_only:
        machine = _load("train_step").get("machine")
        (RESULTS / "peers.json").write_text(json.dumps({"machine": machine, "rows": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
