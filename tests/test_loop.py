"""The whole entry point on a reduced embedded default: one full round, resume, kill-and-resume, refusals."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# A reduced default: tiny warm start, few problems, gold-as-chosen so the round always has pairs to train on. The
# warm start's lr is high enough that 8 steps teach the model to stop: a sample without EOS within 24 tokens is a
# rejected program too long to train on (dropped and counted), so a model that never stops would train nothing.
REDUCED = [
    "benchmark.n_train=24", "benchmark.n_eval=24", "benchmark.n_warmup=200", "model.tiny.warm_start_steps=8",
    "model.tiny.warm_start_lr=1e-2",
    "model.tiny.hidden_size=64", "model.tiny.intermediate_size=128", "model.tiny.num_layers=2",
    "model.tiny.num_heads=4", "model.tiny.num_kv_heads=2", "model.tiny.vocab_size=600",
    "method.samples_per_problem=3", "method.gold_as_chosen=true", "method.batch_size=8",
    "method.max_steps_per_round=3", "model.max_completion_len=24", "trainer=cpu", "logger=csv",
    "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
]


def train(run_dir, *extra, check=True, models=None, **kw):
    cmd = [sys.executable, "-m", "lutra.train", f"hydra.run.dir={run_dir}", *REDUCED, *extra]
    e = {**os.environ, "LUTRA_MODELS": str(models or Path(run_dir).parent / "models")}
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=e, timeout=600, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def manifest(run_dir):
    return json.loads((Path(run_dir) / "manifest.json").read_text())


def test_one_full_round_writes_every_artifact_and_resumes(tmp_path):
    run = tmp_path / "run"
    train(run, "rounds=1", f"benchmark.data_dir={tmp_path / 'data'}")
    m = manifest(run)
    for stage in ("round_0/evaluate", "round_1/sample", "round_1/execute", "round_1/pair", "round_1/ref_logps",
                  "round_1/train", "round_1/evaluate"):
        assert stage in m["stages"], stage
    r1 = run / "round_1"
    samples = [json.loads(x) for x in (r1 / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 24 * 3
    pairs = [json.loads(x) for x in (r1 / "pairs.jsonl").read_text().splitlines()]
    assert pairs and m["stages"]["round_1/pair"]["pairs"] == len(pairs)
    assert m["stages"]["round_1/train"]["steps"] >= 1
    ref = torch.load(r1 / "ref_logps.pt")
    used = m["stages"]["round_1/train"]["pairs_used"]
    assert 1 <= used <= len(pairs) and ref["logps"].shape == (used, 2)
    assert used + m["stages"]["round_1/train"]["dropped_completion_too_long"] == len(pairs)  # counted, not cut
    metrics = json.loads((r1 / "metrics.json").read_text())
    assert metrics["round"] == 1 and 0 <= metrics["exec_acc"] <= 100 and metrics["n"] == 24
    assert "tier" in metrics["groups"] and "rare" in metrics["groups"]
    # the held-out database is scored on its own (n_eval caps it too) and never enters eval's EX
    held = metrics["held_out"]
    assert held["n"] == 24 and 0 <= held["exec_acc"] <= 100 and "held_out" not in metrics["groups"]
    assert len((r1 / "held_out" / "verdicts.jsonl").read_text().splitlines()) == 24
    assert m["stages"]["round_1/evaluate"]["held_out_acc"] == held["exec_acc"]
    rounds_csv = (run / "rounds.csv").read_text()
    assert rounds_csv.count("\n") == 3 and "eval/held_out/exec_acc" in rounds_csv  # header + rounds 0 and 1
    assert (run / "logs" / "metrics.csv").exists()  # Lightning's CSV logger: per-step train metrics
    # the adapter is a real peft adapter, loadable by PeftModel.from_pretrained on the base directory
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_dir = next((tmp_path / "models").iterdir())
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), r1 / "adapter")
    assert any("lora_" in n for n, _ in model.named_parameters())
    # same command again: everything is done, nothing recomputed
    before = {k: v["sha256"] for k, v in m["stages"].items()}
    t0 = time.time()
    train(run, "rounds=1", f"benchmark.data_dir={tmp_path / 'data'}")
    assert {k: v["sha256"] for k, v in manifest(run)["stages"].items()} == before
    assert time.time() - t0 < 60
    # more rounds extend the same run
    train(run, "rounds=2", f"benchmark.data_dir={tmp_path / 'data'}")
    assert "round_2/evaluate" in manifest(run)["stages"]


def test_changed_config_refused_naming_keys(tmp_path):
    run = tmp_path / "run"
    train(run, "rounds=0", f"benchmark.data_dir={tmp_path / 'data'}")
    p = train(run, "rounds=0", f"benchmark.data_dir={tmp_path / 'data'}", "method.beta=0.2", "seed=3", check=False)
    assert p.returncode == 2
    out = p.stdout + p.stderr
    assert "method.beta" in out and "seed" in out and "resume=force" in out


def test_second_process_on_same_run_dir_refused(tmp_path):
    from lutra.artifacts import RunLock

    run = tmp_path / "run"
    with RunLock(run):
        p = train(run, "rounds=0", f"benchmark.data_dir={tmp_path / 'data'}", check=False)
    assert p.returncode != 0 and "in use by another process" in p.stdout + p.stderr and "pid" in p.stdout + p.stderr


def test_bad_override_fails_before_any_model_loads(tmp_path):
    run = tmp_path / "run"
    p = train(run, "method.beta=0", check=False)
    assert p.returncode == 2 and "method.beta" in p.stdout + p.stderr
    assert not (tmp_path / "models").exists() and not (run / "manifest.json").exists()


def _kill_during(run, stage_marker, data_dir, models):
    """Start a run, SIGKILL it once `stage_marker` (a file under the run dir) appears."""
    cmd = [sys.executable, "-m", "lutra.train", f"hydra.run.dir={run}", *REDUCED, "rounds=2",
           f"benchmark.data_dir={data_dir}"]
    env = {**os.environ, "LUTRA_MODELS": str(models)}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while not (Path(run) / stage_marker).exists():
        assert proc.poll() is None, "run ended before the kill point"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("uninterrupted")
    train(root / "ref", "rounds=2", f"benchmark.data_dir={root / 'data'}", models=root / "models")
    return root


@pytest.mark.parametrize("marker", ["round_1/samples.jsonl", "round_1/ref_logps.pt", "round_2/pairs.jsonl"])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, uninterrupted, marker):
    data, models, ref_run = uninterrupted / "data", uninterrupted / "models", uninterrupted / "ref"
    killed = tmp_path / "killed"
    _kill_during(killed, marker, data, models)
    train(killed, "rounds=2", f"benchmark.data_dir={data}", models=models)
    for k in (0, 1, 2):
        a = json.loads((ref_run / f"round_{k}" / "metrics.json").read_text())
        b = json.loads((killed / f"round_{k}" / "metrics.json").read_text())
        assert a["exec_acc"] == b["exec_acc"] and a["correct"] == b["correct"], k
    for k in (1, 2):
        assert (ref_run / f"round_{k}/pairs.jsonl").read_text() == (killed / f"round_{k}/pairs.jsonl").read_text()
    assert not list(killed.rglob(".tmp-*"))


@pytest.mark.slow
def test_replay_rounds_trains_on_earlier_rounds_pairs_too(tmp_path):
    """method.replay_rounds=1: round 2 trains on its own pairs plus round 1's own ones, each pair once."""
    run = tmp_path / "run"
    train(run, "rounds=2", "method.replay_rounds=1", f"benchmark.data_dir={tmp_path / 'data'}")
    m = manifest(run)
    r1, r2 = ([json.loads(x) for x in (run / f"round_{k}" / "pairs.jsonl").read_text().splitlines()] for k in (1, 2))
    assert {p["round"] for p in r1} == {1} and {p["round"] for p in r2} == {1, 2}
    keys = [(p["problem_id"], p["chosen"], p["rejected"]) for p in r2]
    assert len(keys) == len(set(keys))
    own = [p for p in r2 if p["round"] == 2]
    assert m["stages"]["round_2/pair"]["pairs"] == len(own) and m["stages"]["round_2/pair"]["replayed"] == len(r2) - len(own)
    assert {(p["problem_id"], p["chosen"], p["rejected"]) for p in r1} <= set(keys)
    assert m["stages"]["round_2/train"]["pairs_used"] + m["stages"]["round_2/train"]["dropped_completion_too_long"] == len(r2)


def _jsonl(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def test_bootstrap_round_trains_on_golds_then_the_method_samples(tmp_path):
    """method.bootstrap_rounds=1: round 1 samples nothing and trains on every train problem's gold (SFT, its own
    step count); round 2 is the method's own round from round 1's adapter."""
    run = tmp_path / "run"
    train(run, "rounds=2", "method.bootstrap_rounds=1", "method.bootstrap_steps=2", "method.gold_as_chosen=false",
          "method.bootstrap_lr=3e-3", "method.lr=2e-4", f"benchmark.data_dir={tmp_path / 'data'}")
    m = manifest(run)
    assert (run / "round_1" / "samples.jsonl").read_text() == ""
    assert m["stages"]["round_1/sample"]["bootstrap"] is True
    golds = _jsonl(run / "round_1" / "pairs.jsonl")
    assert len(golds) == 24 and all(p["rejected"] is None for p in golds)
    assert m["stages"]["round_1/pair"]["own_chosen"] == 0
    assert "round_1/ref_logps" not in m["stages"]  # SFT needs no reference
    assert m["stages"]["round_1/train"]["steps"] == 2
    assert m["stages"]["round_1/train"]["lr"] == 3e-3  # bootstrap_lr in the bootstrap round, method.lr afterwards
    assert m["stages"]["round_2/train"]["lr"] == 2e-4
    assert len(_jsonl(run / "round_2" / "samples.jsonl")) == 24 * 3
    pairs = _jsonl(run / "round_2" / "pairs.jsonl")
    assert all(p["rejected"] is not None for p in pairs)  # the method's own pairs again
    assert m["stages"]["round_2/pair"]["own_chosen"] == len(pairs)  # gold_as_chosen off: every chosen is a sample
    assert "round_2/ref_logps" in m["stages"] or not pairs
    csv_text = (run / "rounds.csv").read_text()
    assert "pairs/own_chosen" in csv_text.splitlines()[0]


@pytest.mark.slow
def test_bootstrap_round_is_the_same_starting_point_for_every_method(tmp_path):
    """Same seed, codelutra and sft: the bootstrap round's adapter is bit-identical, so their own rounds start from
    one policy (what the pretrained-model recipe compares)."""
    import hashlib

    shas = []
    for method in ("codelutra", "sft"):
        run = tmp_path / method
        train(run, "rounds=1", f"method={method}", "method.bootstrap_rounds=1", "method.bootstrap_steps=2",
              "method.batch_size=8", "model.max_completion_len=24", f"benchmark.data_dir={tmp_path / 'data'}",
              models=tmp_path / "models")
        # the weights (adapter_config.json lists peft's target-module set in hash order, which varies by process)
        shas.append(hashlib.sha256((run / "round_1" / "adapter" / "adapter_model.safetensors").read_bytes()).digest())
    assert shas[0] == shas[1]
