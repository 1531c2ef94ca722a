"""One round's training: `train_round` is the loop's one call, whichever way the strategy starts its ranks.

`fit_policy` builds the round's data module, LightningModule and Trainer and fits the LoRA adapter. `train_round`
runs it in the loop's own process for `trainer=auto/cpu/gpu` and the spawn strategies (`trainer=ddp`, `ddp_cpu`).

Strategies whose ranks must each run a script (`lutra.training.strategies.launcher(...) == "relaunch"`: fsdp, deepspeed
ZeRO-2/3, popen `ddp`) train in **worker mode**: the loop computes the reference log-probs, writes the round's job
(`round_k/fit_job.yaml`, the resolved config and the logger's step offset), frees its copy of the model and starts

    python -m torch.distributed.run --standalone --nproc-per-node=<devices> -m lutra.training.worker <run_dir> <k>

torchrun starts one worker per device; Lightning sees torchrun's environment and starts no processes of its own.
Every worker loads the round's starting policy, encodes the same pairs in the same order, loads the cached reference
log-probs and fits with the configured strategy. Afterwards the strategy gathers the module's state dict (FSDP: a
full, unsharded one; DeepSpeed: its own gather), and rank 0 alone writes the adapter (`adapter.tmp-save`, peft
format), the step count (`fit_result.json`) and the logged metrics (`fit_log.jsonl`). The loop, which never left
its process, replays those metrics into its loggers (one CSV, one wandb run), moves the adapter into place and marks
the stage done. Hydra runs once, in the loop: the workers read a resolved config and write nothing else, so there is
one run directory and no per-rank `.hydra/`. A worker that fails makes torchrun exit non-zero; the loop then raises,
and a re-run resumes at this round's training with the reference log-probs already cached.

In a **data-parallel round** (the loop itself runs on every rank torchrun or srun started, `lutra.distributed`) no
process is started: every rank fits in place, with Lightning's DDP (or the configured FSDP / DeepSpeed) over the
process group the loop joined and the launcher's own cluster environment (`over_world`). `method.batch_size` is
then the global batch: each rank trains on a 1/world slice of every one-process batch (BucketSampler split), so a
round trains on the same batches on any number of ranks. Rank 0 saves the adapter.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch
from omegaconf import OmegaConf

from lutra.artifacts import atomic_write_text
from lutra.training.data import PreferenceDataModule
from lutra.training.module import PolicyModule
from lutra.training.strategies import devices_per_node, fit, launcher, sharded, trainer_kwargs, world_size

log = logging.getLogger(__name__)

JOB, RESULT, METRICS = "fit_job.yaml", "fit_result.json", "fit_log.jsonl"
ADAPTER_TMP = "adapter.tmp-save"  # the adapter a fit writes, moved into round_k/adapter by the loop


def train_round(cfg, round_dir: Path, k: int, offset: int, logger, enc, ref, *, policy, release,
                world=None) -> dict:
    """Fit round k's LoRA adapter on the encoded pairs `enc` (reference log-probs `ref`, None for `loss: sft`) and
    leave it in `round_dir/ADAPTER_TMP`; returns the fit's stats (`steps`: optimizer steps taken). `policy()` gives
    the round's starting (model, tokenizer), trained in place in this process; under a `relaunch` strategy
    `release()` is called instead, to free this process's copy for the torchrun workers, which load their own.
    world: the launched `lutra.distributed.World`; with several ranks, every rank fits over all of them."""
    if world is not None and world.size > 1:
        return _train_over_world(cfg, round_dir, k, offset, logger, enc, ref, world, policy, release)
    if launcher(cfg.trainer) == "relaunch":  # FSDP, DeepSpeed, popen DDP: torchrun workers (lutra.training.worker)
        release()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return launch(cfg, round_dir, k, offset, logger)
    model, tok = policy()
    trainer, module, dm, stats = fit_policy(cfg, model, tok, enc, ref, k, offset, logger)
    if trainer is not None:
        stats["steps"] = fit(trainer, module, dm)
    model.save_pretrained(str(round_dir / ADAPTER_TMP))
    return stats


def over_world(tcfg, world):
    """The trainer config of a data-parallel round: the launcher's ranks (devices per node, nodes) and DDP, unless
    the config shards (fsdp, deepspeed); a spawn strategy (trainer=ddp) becomes DDP over the ranks launched."""
    name = str(tcfg.strategy)
    strat = name if name.startswith(("fsdp", "deepspeed")) else "ddp"
    if name.endswith("find_unused_parameters_true"):
        strat = "ddp_find_unused_parameters_true"
    return OmegaConf.merge(OmegaConf.structured(tcfg), {"devices": world.local_size, "num_nodes": world.nodes,
                                                        "strategy": strat})


def _train_over_world(cfg, round_dir: Path, k: int, offset: int, logger, enc, ref, world, policy, release) -> dict:
    from lutra.distributed import cluster_environment
    from lutra.training.worker import lora_state

    cfg = OmegaConf.merge(cfg, {"trainer": over_world(cfg.trainer, world)})
    model, tok = policy()
    trainer, module, dm, stats = fit_policy(cfg, model, tok, enc, ref, k, offset, logger, relaunch_ok=True,
                                            world=world, cluster_environment=cluster_environment(world))
    state = None
    if trainer is not None:
        stats["steps"] = fit(trainer, module, dm)
        if sharded(cfg.trainer):  # collective: every rank gathers its shard of the LoRA weights
            state = lora_state(trainer, module)
    if world.main:
        model.save_pretrained(str(round_dir / ADAPTER_TMP), state_dict=state)
    if sharded(cfg.trainer):  # the module in memory is sharded: the next round loads this one's adapter from disk
        release()
    return stats


class StepOffset(L.Callback):
    """Continue the logger's step count across rounds (each round has its own Trainer)."""

    def __init__(self, offset: int):
        self.offset = offset

    def on_train_start(self, trainer, pl_module) -> None:
        trainer.fit_loop.epoch_loop._batches_that_stepped = self.offset



def fit_policy(cfg, model, tok, enc, ref, k: int, offset: int, logger, *, relaunch_ok: bool = False, world=None,
               cluster_environment=None):
    """Set up round k's fit of `model`'s LoRA adapter on the encoded pairs `enc` (`lutra.training.data.encode_pairs`).
    `ref`: their reference log-probs (None for `loss: sft`); `offset`: optimizer steps of earlier rounds (the
    logger's step axis). Returns (trainer, module, datamodule, stats); trainer is None when there is nothing to fit.
    world (several ranks): a data-parallel round, whose global batch is method.batch_size pairs split over them."""
    split = world is not None and world.size > 1
    m = cfg.method
    model.requires_grad_(False)
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.requires_grad_(True)
    stats = {"pairs_used": len(enc.prompts), "dropped_prompt_too_long": enc.dropped_prompt_too_long,
             "dropped_completion_too_long": enc.dropped_completion_too_long, "steps": 0, "lr": m.lr or cfg.model.lr}
    per_step = m.batch_size * cfg.trainer.accumulate_grad_batches * (1 if split else world_size(cfg.trainer))
    max_steps = -(-len(enc.prompts) // per_step) * m.epochs_per_round
    if m.max_steps_per_round:
        max_steps = min(max_steps, m.max_steps_per_round)
    if len(enc.prompts) == 0 or max_steps == 0:
        log.warning("round %d: no pairs to train on; the adapter is carried over unchanged", k)
        return None, None, None, stats
    dm = PreferenceDataModule(enc, ref, m.batch_size, tok.pad_token_id, seed=cfg.seed * 1000 + k, split=split)
    module = PolicyModule(model, m, lr=stats["lr"], total_steps=max_steps)
    L.seed_everything(cfg.seed * 1000 + k, workers=True, verbose=False)
    trainer = L.Trainer(**trainer_kwargs(cfg.trainer, relaunch_ok=relaunch_ok, cluster_environment=cluster_environment),
                        max_epochs=m.epochs_per_round,
                        max_steps=max_steps, logger=logger, enable_checkpointing=False,
                        callbacks=[StepOffset(offset)], default_root_dir=str(cfg.run_dir),
                        num_sanity_val_steps=0, enable_model_summary=False)
    return trainer, module, dm, stats


# -- the loop's side -------------------------------------------------------------------------------------------------
def launch(cfg, round_dir: Path, k: int, offset: int, logger) -> dict:
    """Run round k's fit in torchrun workers (blocking); returns the stats rank 0 wrote. The adapter is left in
    `round_dir/ADAPTER_TMP` for the caller to move into place; the workers' logged metrics go to `logger` (what a
    Trainer takes: a Lightning logger, a list of them, or False)."""
    for stale in (RESULT, METRICS):  # a failed earlier attempt's leftovers must not pass for this one's
        (round_dir / stale).unlink(missing_ok=True)
    shutil.rmtree(round_dir / ADAPTER_TMP, ignore_errors=True)
    atomic_write_text(round_dir / JOB, OmegaConf.to_yaml({"cfg": cfg, "round": k, "offset": offset}, resolve=True))
    n = devices_per_node(cfg.trainer)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
           "-m", "lutra.training.worker", str(Path(cfg.run_dir).resolve()), str(k)]
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
