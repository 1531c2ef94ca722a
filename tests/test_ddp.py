"""DDP on the CPU: 2 spawned processes (gloo) fit a tiny LoRA policy through trainer=ddp_cpu's strategy.

One fit (module fixture) is checked from several sides: the gradient each rank steps with is the gradient of the
mean loss over every micro-batch of both ranks (DDP averaging + Lightning's 1/k accumulation scaling), the logged
loss is the mean over ranks, both ranks end with identical LoRA weights, and those weights are the ones the main
process holds after `fit` (the loop samples and evaluates with them). About 25 s on 2 cores.
"""

import copy
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from peft import get_peft_model

from lutra.config import MethodConfig, TrainerConfig, register_configs
from lutra.policy.logprobs import reference_logps
from lutra.policy.models import lora_config
from lutra.policy.prompts import format_prompt
from lutra.training import strategies
from lutra.training.data import PreferenceDataModule, collate, encode_pairs, ordered_batches
from lutra.training.module import PolicyModule

CONF = Path(__file__).resolve().parents[1] / "conf"
ACCUMULATE = 2


class Recorder(L.Callback):
    """Runs inside each spawned rank; writes what that rank saw to <out>/rank<r>.pt (module-level: picklable)."""

    def __init__(self, out: str):
        self.out, self.batches, self.losses, self.grads = out, [], [], None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.batches.append(batch["index"].tolist())

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]) * trainer.accumulate_grad_batches)  # undo Lightning's 1/k

    def on_before_optimizer_step(self, trainer, module, optimizer):
        if self.grads is None:  # after backward's all-reduce and the accumulation, before clipping and the step
            self.grads = {n: p.grad.detach().clone() for n, p in module.model.named_parameters() if p.grad is not None}

    def on_train_end(self, trainer, module):
        lora = {n: p.detach().clone() for n, p in module.model.named_parameters() if "lora_" in n}
        torch.save({"rank": trainer.global_rank, "world": trainer.world_size, "batches": self.batches,
                    "losses": self.losses, "grads": self.grads, "lora": lora}, Path(self.out) / f"rank{trainer.global_rank}.pt")


def _ddp_cpu_config() -> TrainerConfig:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["trainer=ddp_cpu"])
    from omegaconf import OmegaConf

    tc = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainerConfig), cfg.trainer))
    tc.accumulate_grad_batches, tc.enable_progress_bar = ACCUMULATE, False
    return tc


@pytest.fixture(scope="module")
def ddp_run(tokenizer, small_model, tmp_path_factory):
    from lutra.config import ModelConfig, TinyModelConfig

    out = tmp_path_factory.mktemp("ddp")
    model_cfg = ModelConfig(name="t", build="tiny", tiny=TinyModelConfig(), max_prompt_len=200, max_completion_len=40)
    torch.manual_seed(0)
    policy = get_peft_model(copy.deepcopy(small_model), lora_config(model_cfg))
    with torch.no_grad():  # non-zero B: gradients reach both LoRA matrices from the first step
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    records = [{"prompt": format_prompt(tokenizer, f"How many singers are older than {i}?", model_cfg),
                "chosen": f"SELECT COUNT(*) FROM singer WHERE age > {i}",
                "rejected": "SELECT COUNT(*) FROM singer" + " WHERE age < 30" * (i % 3)} for i in range(16)]
    enc = encode_pairs(tokenizer, records, model_cfg)
    ref = reference_logps(policy, ordered_batches(enc, 2, tokenizer.pad_token_id), use_base=False, progress=False)
    dm = PreferenceDataModule(enc, ref, batch_size=2, pad_id=tokenizer.pad_token_id, seed=0)
    method = MethodConfig(name="codelutra", batch_size=2)
    start = copy.deepcopy(policy)
    tcfg = _ddp_cpu_config()
    trainer = L.Trainer(**strategies.trainer_kwargs(tcfg), max_steps=1, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, callbacks=[Recorder(str(out))])
    steps = strategies.fit(trainer, PolicyModule(policy, method, lr=1e-2, total_steps=1), datamodule=dm)
    ranks = [torch.load(out / f"rank{r}.pt") for r in range(2)]
    return {"ranks": ranks, "policy": policy, "start": start, "dm": dm, "method": method, "steps": steps,
            "trainer": trainer, "pad": tokenizer.pad_token_id, "tcfg": tcfg}


def test_two_ranks_one_step_and_the_count_comes_back(ddp_run):
    assert [r["rank"] for r in ddp_run["ranks"]] == [0, 1] and ddp_run["ranks"][0]["world"] == 2
    assert strategies.launcher(ddp_run["tcfg"]) == "spawn"
    assert all(len(r["batches"]) == ACCUMULATE for r in ddp_run["ranks"])  # one optimizer step of k micro-batches
    assert ddp_run["trainer"].global_step == 0  # the main process's own fit loop never ran...
    assert ddp_run["steps"] == 1  # ...so strategies.fit reads the count rank 0 sent back


def test_ranks_train_on_different_pairs(ddp_run):
    seen = [{i for b in r["batches"] for i in b} for r in ddp_run["ranks"]]
    assert not seen[0] & seen[1]


def test_gradient_is_that_of_the_mean_loss_over_all_micro_batches_of_all_ranks(ddp_run):
    ranks, dm = ddp_run["ranks"], ddp_run["dm"]
    for n, g in ranks[0]["grads"].items():  # DDP all-reduce: every rank steps with the same gradient
        torch.testing.assert_close(ranks[1]["grads"][n], g, rtol=0, atol=0)
    micro = [b for r in ranks for b in r["batches"]]
    assert len(micro) == 2 * ACCUMULATE
    policy = copy.deepcopy(ddp_run["start"]).eval()
    for n, p in policy.named_parameters():
        p.requires_grad_("lora_" in n)
    module = PolicyModule(policy, ddp_run["method"], lr=1e-2, total_steps=1)
    total = 0.0
    for idx in micro:
        batch = collate([dm.dataset[i] for i in idx], ddp_run["pad"])
        total = total + module.training_step(batch, 0)
    (total / len(micro)).backward()
    expected = {n: p.grad for n, p in policy.named_parameters() if p.grad is not None}
    assert set(expected) == set(ranks[0]["grads"])
    for n, g in expected.items():
        torch.testing.assert_close(ranks[0]["grads"][n], g, rtol=1e-4, atol=1e-7)


def test_logged_loss_is_the_mean_over_ranks(ddp_run):
    last = [r["losses"][-1] for r in ddp_run["ranks"]]
    logged = float(ddp_run["trainer"].callback_metrics["train/loss"])  # sent back from rank 0, synced
    assert logged == pytest.approx(sum(last) / 2, rel=1e-5)


def test_lora_weights_identical_across_ranks_and_returned_to_the_main_process(ddp_run):
    r0, r1 = (r["lora"] for r in ddp_run["ranks"])
    main = {n: p.detach() for n, p in ddp_run["policy"].named_parameters() if "lora_" in n}
    start = {n: p.detach() for n, p in ddp_run["start"].named_parameters() if "lora_" in n}
    assert set(r0) == set(main) and main
    for n in main:
        assert torch.equal(r0[n], r1[n]), n
        assert torch.equal(main[n], r0[n]), n
    assert any(not torch.equal(main[n], start[n]) for n in main), "the main process still holds the initial adapter"


REDUCED = ["rounds=1", "benchmark.n_train=24", "benchmark.n_warmup=200", "model.tiny.warm_start_steps=8",
           "model.tiny.warm_start_lr=1e-2",
           "model.tiny.hidden_size=64", "model.tiny.intermediate_size=128", "model.tiny.num_layers=2",
           "model.tiny.num_heads=4", "model.tiny.num_kv_heads=2", "model.tiny.vocab_size=600",
           "model.max_completion_len=24", "method.samples_per_problem=2", "method.gold_as_chosen=true",
           "method.batch_size=2", "method.max_steps_per_round=2", "logger=csv", "trainer.enable_progress_bar=false",
           "trainer=ddp_cpu"]


def _train(tmp_path, *args):
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "lutra.train", *args, *REDUCED, f"benchmark.data_dir={tmp_path}/data"]
    env = {**os.environ, "LUTRA_MODELS": str(tmp_path / "models")}
    p = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, env=env,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


@pytest.mark.slow
def test_full_round_through_the_entry_point_with_ddp_cpu(tmp_path):
    """`python -m lutra.train trainer=ddp_cpu` on a reduced default: one Hydra run directory, one writer, and
    the adapter the spawned ranks trained is the one the main process saved (about 1 min on 2 cores)."""
    from safetensors.torch import load_file

    run = tmp_path / "run"
    p = _train(tmp_path, f"hydra.run.dir={run}", "benchmark.n_eval=8")
    assert "Starting with 2 processes" in p.stdout + p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == ["data", "models", "run"]  # no per-rank run dirs
    assert sorted(x.name for x in run.iterdir() if x.name.startswith("round_")) == ["round_0", "round_1"]
    assert not list(run.rglob("*ddp_process*"))  # Lightning's subprocess launcher would name its ranks so
    m = __import__("json").loads((run / "manifest.json").read_text())
    assert "round_1/evaluate" in m["stages"] and m["stages"]["round_1/train"]["pairs_used"] > 0
    lora_b = {k: v for k, v in load_file(run / "round_1" / "adapter" / "adapter_model.safetensors").items()
              if "lora_B" in k}
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b.values()), "saved adapter is still peft's zero-B init"
    assert m["stages"]["round_1/train"]["steps"] > 0  # lutra.training.strategies.fit: rank 0's count, sent back


@pytest.mark.slow
def test_ddp_inside_a_submitit_job(tmp_path):
    """Many runs at once: a Hydra multirun through submitit_local (SLURM's stand-in), each job training with
    ddp_spawn inside its own task (about 1 min on 2 cores)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    _train(tmp_path, "-m", "hydra/launcher=submitit_local", f"hydra.sweep.dir={tmp_path}/sweep",
           "hydra.launcher.timeout_min=10", "hydra.launcher.cpus_per_task=2", "seed=0", "benchmark.n_eval=4")
    jobs = [d for d in (tmp_path / "sweep").iterdir() if d.is_dir() and not d.name.startswith(".")]
    assert [d.name for d in jobs] == ["0-codelutra-s0"]
    m = __import__("json").loads((jobs[0] / "manifest.json").read_text())
    assert "round_1/evaluate" in m["stages"] and m["stages"]["round_1/train"]["pairs_used"] > 0
    logs = "".join(f.read_text() for f in (tmp_path / "sweep" / ".submitit").rglob("*_log.*"))
    assert "Starting with 2 processes" in logs


@pytest.mark.slow
def test_worker_mode_trains_the_same_adapter_as_spawn(tmp_path):
    """trainer.strategy=ddp (popen DDP: Lightning would re-run the command on every rank) trains in torchrun
    workers (lutra.training.worker), the path FSDP and DeepSpeed take on GPUs. Same seed, same 2 ranks, same batches:
    the adapter it saves equals the one ddp_spawn trains in memory, the loop evaluates with it, and the workers'
    logged losses reach the run's one CSV (about 2 min on 2 cores)."""
    import csv
    import json

    from safetensors.torch import load_file

    spawn, worker = tmp_path / "spawn", tmp_path / "worker"
    _train(tmp_path, f"hydra.run.dir={spawn}", "benchmark.n_eval=8", "trainer.log_every_n_steps=1")
    p = _train(tmp_path, f"hydra.run.dir={worker}", "benchmark.n_eval=8", "trainer.log_every_n_steps=1",
               "trainer.strategy=ddp")
    assert "torch.distributed.run" in p.stdout + p.stderr  # the loop says how it starts the workers
    assert sorted(x.name for x in tmp_path.iterdir()) == ["data", "models", "spawn", "worker"]
    a = load_file(spawn / "round_1" / "adapter" / "adapter_model.safetensors")
    b = load_file(worker / "round_1" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert any(v.abs().sum() > 0 for k, v in b.items() if "lora_B" in k), "the workers saved peft's zero-B init"
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    ms, mw = (json.loads((d / "manifest.json").read_text())["stages"] for d in (spawn, worker))
    assert mw["round_1/train"]["steps"] == ms["round_1/train"]["steps"] > 0
    assert mw["round_1/train"]["pairs_used"] == ms["round_1/train"]["pairs_used"]
    ex_s, ex_w = (json.loads((d / "round_1" / "metrics.json").read_text())["exec_acc"] for d in (spawn, worker))
    assert ex_w == ex_s  # same weights, same greedy decoding
    logged = []
    for d in (spawn, worker):
        with open(d / "logs" / "metrics.csv", newline="") as f:
            logged.append([(r["step"], float(r["train/loss"])) for r in csv.DictReader(f) if r.get("train/loss")])
    assert logged[1], "the workers' training metrics did not reach the run's CSV log"
    assert [s for s, _ in logged[1]] == [s for s, _ in logged[0]]
    assert [v for _, v in logged[1]] == pytest.approx([v for _, v in logged[0]], rel=1e-5)
    assert not (worker / ".hydra" / "multirun.yaml").exists() and len(list(tmp_path.rglob(".hydra"))) == 2
