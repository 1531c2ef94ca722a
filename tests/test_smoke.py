"""`python -m lutra.train +preset=smoke` from a fresh clone (no cached model or data): one round of the real loop.
Part of the default test command (README, Usage; docs/usage.md, Presets). The smoke preset's base is shipped (lutra/bases/
mini_sql-tiny-smoke, nothing is built), so round 0 decodes the same weights on every CPU; the round's training is
float32 arithmetic whose rounding differs by CPU, so no test here asserts a number that rounding decides (an EX that
must move): the checks are structural (own correct samples paired, steps taken, the adapter changes predictions).
Whether the loop learns is measured from the shipped base in the README's Results, with its spread.

The same run checks what a user reads afterwards: samples.jsonl carries each sample's prompt, and the round's
adapter loads with AutoPeftModelForCausalLM from another working directory (its base is recorded by absolute path,
with the base's fingerprint).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    env = {**os.environ, "LUTRA_MODELS": str(root / "models")}
    cmd = [sys.executable, "-m", "lutra.train", "+preset=smoke", f"hydra.run.dir={root / 'run'}",
           f"benchmark.data_dir={root / 'data'}", "trainer.enable_progress_bar=false"]
    t0 = time.monotonic()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return {"run": root / "run", "models": root / "models", "out": p.stdout + p.stderr,
            "seconds": time.monotonic() - t0, "root": root}


def test_smoke_round_trains_and_changes_the_policy(smoke):
    run = smoke["run"]
    r1 = run / "round_1"
    pairs = jsonl(r1 / "pairs.jsonl")
    assert pairs, "the round built no pair"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["round_1/train"]["steps"] >= 2
    rounds = list(csv.DictReader((run / "rounds.csv").open()))
    assert [r["round"] for r in rounds] == ["0", "1"]
    # the trained adapter answers differently from the base on some eval problems
    before = {v["id"]: v["prediction"] for v in jsonl(run / "round_0" / "eval" / "verdicts.jsonl")}
    after = {v["id"]: v["prediction"] for v in jsonl(r1 / "eval" / "verdicts.jsonl")}
    assert sum(before[i] != after[i] for i in before) > 0
    assert "round 1: eval EX" in smoke["out"]
    print(f"\nsmoke: {smoke['seconds']:.0f} s; EX {rounds[0]['eval/exec_acc']} -> {rounds[1]['eval/exec_acc']}; "
          f"{len(pairs)} pairs")


def test_smoke_round_learns_from_its_own_samples(smoke):
    r1 = smoke["run"] / "round_1"
    samples, verdicts = jsonl(r1 / "samples.jsonl"), jsonl(r1 / "verdicts.jsonl")
    correct = {(s["problem_id"], s["text"]) for s, v in zip(samples, verdicts, strict=True) if v["correct"]}
    assert correct, "the smoke base solved none of its samples: no pair can come from its own programs"
    own = [p for p in jsonl(r1 / "pairs.jsonl") if (p["problem_id"], p["chosen"]) in correct]
    assert own, "no pair has one of the model's own correct programs as chosen"


def test_smoke_loads_the_shipped_base_and_builds_nothing(smoke):

    assert "the shipped base mini_sql-tiny-smoke" in smoke["out"]
    assert not smoke["models"].exists() or not any(smoke["models"].iterdir()), "a model was built"


def test_smoke_report_plots_more_than_one_point(smoke):
    out = smoke["root"] / "report"
    p = subprocess.run([sys.executable, "-m", "lutra.report", str(smoke["run"]), "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    for name in ("ex_per_round.png", "train_loss.png"):
        assert (out / name).stat().st_size > 0, name
    steps = list(csv.DictReader((smoke["run"] / "logs" / "metrics.csv").open()))
    assert sum(1 for r in steps if r.get("train/loss")) >= 2  # a loss curve, not a dot


def test_samples_carry_their_prompt(smoke):
    r1 = smoke["run"] / "round_1"
    prompts = {p["problem_id"]: p["prompt"] for p in jsonl(r1 / "pairs.jsonl")}
    samples = jsonl(r1 / "samples.jsonl")
    assert all(s["prompt"] for s in samples)
    assert all(s["prompt"] == prompts[s["problem_id"]] for s in samples if s["problem_id"] in prompts)


def test_adapter_loads_from_another_directory(smoke, tmp_path):
    adapter = smoke["run"] / "round_1" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    base = Path(config["base_model_name_or_path"])
    from lutra.policy.shipped import BASES_DIR

    assert base.is_absolute() and (base / "config.json").is_file() and base == BASES_DIR / "mini_sql-tiny-smoke"
    record = json.loads((adapter / "lutra_base.json").read_text())
    assert record["base_model_name_or_path"] == str(base) and len(record["fingerprint"]) >= 16
    code = ("import sys; from peft import AutoPeftModelForCausalLM\n"
            "m = AutoPeftModelForCausalLM.from_pretrained(sys.argv[1])\n"
            "print(type(m).__name__, sum('lora_' in n for n, _ in m.named_parameters()))")
    p = subprocess.run([sys.executable, "-c", code, str(adapter)], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    kind, n_lora = p.stdout.split()
    assert kind == "PeftModelForCausalLM" and int(n_lora) > 0
