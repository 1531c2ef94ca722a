"""One round's `fit`, shared by the in-process path and the worker mode that FSDP and DeepSpeed need.

`fit_policy` builds the round's data module, LightningModule and Trainer and fits the LoRA adapter. The loop calls
it in its own process for `trainer=auto/cpu/gpu` and the spawn strategies (`trainer=ddp`, `ddp_cpu`).

Strategies whose ranks must each run a script (`lutra.strategies.launcher(...) == "relaunch"`: fsdp, deepspeed
ZeRO-2/3, popen `ddp`) train in **worker mode**: the loop computes the reference log-probs, writes the round's job
(`round_k/fit_job.yaml`, the resolved config and the logger's step offset), frees its copy of the model and starts

    python -m torch.distributed.run --standalone --nproc-per-node=<devices> -m lutra.fit_worker <run_dir> <k>

torchrun starts one worker per device; Lightning sees torchrun's environment and starts no processes of its own.
Every worker loads the round's starting policy, encodes the same pairs in the same order, loads the cached reference
log-probs and fits with the configured strategy. Afterwards the strategy gathers the module's state dict (FSDP: a
full, unsharded one; DeepSpeed: its own gather), and rank 0 alone writes the adapter (`adapter.tmp-save`, peft
format), the step count (`fit_result.json`) and the logged metrics (`fit_log.jsonl`). The loop, which never left
its process, replays those metrics into its loggers (one CSV, one wandb run), moves the adapter into place and marks
the stage done. Hydra runs once, in the loop: the workers read a resolved config and write nothing else, so there is
one run directory and no per-rank `.hydra/`. A worker that fails makes torchrun exit non-zero; the loop then raises,
and a re-run resumes at this round's training with the reference log-probs already cached.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from lutra.data import PreferenceDataModule, encode_pairs
from lutra.module import PolicyModule
from lutra.strategies import devices_per_node, trainer_kwargs, world_size

log = logging.getLogger(__name__)

JOB, RESULT, METRICS = "fit_job.yaml", "fit_result.json", "fit_log.jsonl"
ADAPTER_TMP = "adapter.tmp-save"  # the adapter a fit writes, moved into round_k/adapter by the loop


class StepOffset(L.Callback):
    """Continue the logger's step count across rounds (each round has its own Trainer)."""

    def __init__(self, offset: int):
        self.offset = offset

    def on_train_start(self, trainer, pl_module) -> None:
        trainer.fit_loop.epoch_loop._batches_that_stepped = self.offset


class JsonlLogger(Logger):
    """Rank 0's logged metrics as JSON lines, for the loop to replay into its own loggers."""

    def __init__(self, path: Path):
        super().__init__()
        self.path, self.rows = Path(path), []

    @property
    def name(self) -> str:
        return "lutra-fit-worker"

    @property
    def version(self) -> str:
        return ""

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    @rank_zero_only
    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self.rows.append({"step": step, "metrics": {k: float(v) for k, v in metrics.items()}})

    @rank_zero_only
    def save(self) -> None:
        from lutra.artifacts import atomic_write_text

        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))


def fit_policy(cfg, model, tok, enc, ref, k: int, offset: int, logger, *, relaunch_ok: bool = False):
    """Set up round k's fit of `model`'s LoRA adapter on the encoded pairs `enc` (`lutra.data.encode_pairs`).
    `ref`: their reference log-probs (None for `loss: sft`); `offset`: optimizer steps of earlier rounds (the
    logger's step axis). Returns (trainer, module, datamodule, stats); trainer is None when there is nothing to fit."""
    m = cfg.method
    model.requires_grad_(False)
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.requires_grad_(True)
    stats = {"pairs_used": len(enc.prompts), "dropped_prompt_too_long": enc.dropped_prompt_too_long,
             "dropped_completion_too_long": enc.dropped_completion_too_long, "steps": 0}
    per_step = m.batch_size * cfg.trainer.accumulate_grad_batches * world_size(cfg.trainer)
    max_steps = -(-len(enc.prompts) // per_step) * m.epochs_per_round
    if m.max_steps_per_round:
        max_steps = min(max_steps, m.max_steps_per_round)
    if len(enc.prompts) == 0 or max_steps == 0:
        log.warning("round %d: no pairs to train on; the adapter is carried over unchanged", k)
        return None, None, None, stats
    dm = PreferenceDataModule(enc, ref, m.batch_size, tok.pad_token_id, seed=cfg.seed * 1000 + k)
    module = PolicyModule(model, m, lr=m.lr or cfg.model.lr, total_steps=max_steps)
    L.seed_everything(cfg.seed * 1000 + k, workers=True, verbose=False)
    trainer = L.Trainer(**trainer_kwargs(cfg.trainer, relaunch_ok=relaunch_ok), max_epochs=m.epochs_per_round,
                        max_steps=max_steps, logger=logger, enable_checkpointing=False,
                        callbacks=[StepOffset(offset)], default_root_dir=str(cfg.run_dir),
                        num_sanity_val_steps=0, enable_model_summary=False)
    return trainer, module, dm, stats


# -- the loop's side -------------------------------------------------------------------------------------------------
def launch(cfg, round_dir: Path, k: int, offset: int, logger) -> dict:
    """Run round k's fit in torchrun workers (blocking); returns the stats rank 0 wrote. The adapter is left in
    `round_dir/ADAPTER_TMP` for the caller to move into place; the workers' logged metrics go to `logger` (what a
    Trainer takes: a Lightning logger, a list of them, or False)."""
    from omegaconf import OmegaConf

    from lutra.artifacts import atomic_write_text

    for stale in (RESULT, METRICS):  # a failed earlier attempt's leftovers must not pass for this one's
        (round_dir / stale).unlink(missing_ok=True)
    shutil.rmtree(round_dir / ADAPTER_TMP, ignore_errors=True)
    atomic_write_text(round_dir / JOB, OmegaConf.to_yaml({"cfg": cfg, "round": k, "offset": offset}, resolve=True))
    n = devices_per_node(cfg.trainer)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
           "-m", "lutra.fit_worker", str(Path(cfg.run_dir).resolve()), str(k)]
    log.info("round %d: training in %d worker process(es) (trainer.strategy=%s): %s", k, n, cfg.trainer.strategy,
             " ".join(cmd))
    rc = subprocess.run(cmd, env=os.environ.copy()).returncode
    if rc != 0 or not (round_dir / RESULT).exists():
        raise RuntimeError(f"round {k}: the training workers failed (torchrun exit status {rc}; their output is "
                           f"above). Re-running the same command resumes at this round's training.")
    stats = json.loads((round_dir / RESULT).read_text())
    loggers = logger if isinstance(logger, list) else [logger] if logger else []
    for line in (round_dir / METRICS).read_text().splitlines() if (round_dir / METRICS).exists() else ():
        row = json.loads(line)
        for lg in loggers:
            lg.log_metrics(row["metrics"], step=row["step"])
    for lg in loggers:
        lg.save()
    return stats


def lora_state(trainer, module) -> dict:
    """The LoRA weights after fit, unsharded, keyed as in the peft model's own state dict. FSDP gathers a full state
    dict (Lightning's `state_dict_type="full"`); ZeRO-3 keeps parameters partitioned, so they are gathered here."""
    strat = trainer.strategy
    if getattr(strat, "zero_stage_3", False):
        import deepspeed

        params = {n: p for n, p in module.model.named_parameters() if "lora_" in n}
        with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None):
            return {n: p.detach().cpu().clone() for n, p in params.items()}
    state = strat.lightning_module_state_dict()
    return {n[len("model."):]: t for n, t in state.items() if n.startswith("model.") and "lora_" in n}


# -- the worker's side -----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    from omegaconf import OmegaConf

    from lutra.artifacts import atomic_write_text, read_jsonl
    from lutra.models import policy_at, setup_torch

    ap = argparse.ArgumentParser(prog="python -m lutra.fit_worker",
                                 description="One round's fit on this rank (started by the loop through torchrun).")
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("round", type=int)
    args = ap.parse_args(argv)
    rd = args.run_dir / f"round_{args.round}"
    job = OmegaConf.load(rd / JOB)
    cfg, k = job.cfg, int(job.round)
    setup_torch()
    if torch.cuda.is_available():  # a 4-bit base is placed on the current device by from_pretrained
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    cfg.trainer.devices = int(os.environ.get("LOCAL_WORLD_SIZE", devices_per_node(cfg.trainer)))
    adapters = [str(args.run_dir / f"round_{j}" / "adapter") for j in range(1, k)]
    model, tok = policy_at(cfg, adapters, device="cpu")  # the strategy moves (or shards) it onto this rank's device
    ref_path = rd / "ref_logps.pt"  # absent only when no pair survived encoding (then nothing is fitted)
    ref = torch.load(ref_path)["logps"] if cfg.method.loss != "sft" and ref_path.exists() else None
    logger = JsonlLogger(rd / METRICS)
    enc = encode_pairs(tok, read_jsonl(rd / "pairs.jsonl"), cfg.model, with_rejected=cfg.method.loss != "sft")
    trainer, module, dm, stats = fit_policy(cfg, model, tok, enc, ref, k, int(job.offset), logger, relaunch_ok=True)
    if trainer is not None:
        trainer.fit(module, datamodule=dm)
        stats["steps"] = int(trainer.global_step)
        state = lora_state(trainer, module)  # collective under FSDP / ZeRO-3: every rank calls it
        rank = trainer.global_rank
    else:
        state, rank = None, int(os.environ.get("RANK", "0"))
    if rank == 0:  # state None: nothing was fitted, the starting adapter is saved as it is
        model.save_pretrained(str(rd / ADAPTER_TMP), state_dict=state)
        atomic_write_text(rd / RESULT, json.dumps(stats))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    sys.exit(main())
