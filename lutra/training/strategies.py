"""Lightning Trainer arguments from `conf/trainer/*.yaml`: accelerator, precision and strategy resolution.

Only `trainer.fit` needs several processes; lutra's loop samples, executes, pairs and evaluates in the one process
that Hydra started. How a strategy creates its processes therefore decides whether it fits the loop (`launcher`):

- `spawn` (trainer=ddp, ddp_cpu: Lightning's `ddp_spawn`). The recommended multi-GPU path. Lightning's
  multiprocessing launcher starts one worker per device for the duration of `fit` only; the model, data module
  and callbacks reach the workers by pickling. When they join, rank 0's weights are loaded back into the main
  process's module (Lightning's `_MultiProcessingLauncher`), so the loop carries on with the trained adapter in
  memory. Hydra is never re-entered: spawned workers import `lutra.train` as `__mp_main__`, so its `if __name__ ==
  "__main__"` guard keeps `@hydra.main` from running. That means no second run directory, no re-composed config
  and no per-rank `.hydra/` (the pitfall of Lightning-AI#11617, lightning-hydra-template#393). Writes stay on one
  process by construction: the workers only log (Lightning loggers write on rank 0), and the main process saves
  the adapter after `fit`. Limits: one node; everything the module holds must pickle; every worker holds a full
  copy of the base, so the model must fit one device (8B bf16 LoRA does on 40 GB+ cards, docs/gpu.md).
  `LightningEnvironment` is passed explicitly because Lightning would otherwise detect SLURM (submitit sets
  SLURM_NTASKS) and take every spawned worker's rank from SLURM_PROCID/SLURM_LOCALID, which are 0 in all of them.
- `relaunch` (fsdp, deepspeed ZeRO-2/3, popen `ddp`, `strategy: auto` on several devices, num_nodes > 1).
  Lightning would start the other ranks by re-running the command line (`_SubprocessScriptLauncher`), so every rank
  would run `python -m lutra.train` from the top. The loop does not let it: it trains these in **worker mode**
  (`lutra.training.fit.train_round` starts `torchrun --standalone` workers, `lutra.training.worker`, for `fit`
  alone), which read the round's resolved config from the run directory; Lightning sees torchrun's environment and
  launches nothing itself. Rank 0 of the workers writes the adapter, the step count and the logged metrics; the
  loop moves the adapter into place and replays the metrics into its loggers. Single node (torchrun --standalone):
  num_nodes > 1 is refused by the loop. `trainer_kwargs` refuses these strategies unless its caller passes
  `relaunch_ok=True` (only the worker does), so no other code path can build a Trainer that would re-run the command.
- `none` (auto, cpu, gpu: one device): `fit` runs in the main process.

Data-parallel rounds (the loop itself started on every rank by torchrun or srun, `lutra.distributed`) are none of
these: every rank builds its Trainer with `relaunch_ok=True` and the launcher's cluster environment
(`cluster_environment=`: Lightning's TorchElasticEnvironment or SLURMEnvironment), finds the process group the loop
joined, and starts nothing (`lutra.training.fit.over_world`).

Rank-0-only writes: in `spawn` mode only the main process writes run artifacts; in worker mode only the loop and
rank 0 of the workers do (`process_rank() == 0` tells a rank before any process group exists).
"""

from __future__ import annotations

import functools
import os

import lightning as L
import torch
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher, _SubprocessScriptLauncher

from lutra.config import ConfigError

SPAWN_STRATEGIES = ("ddp_spawn", "ddp_fork", "ddp_notebook")
STEPS_KEY = "lutra/global_step"


def device_for(tcfg) -> str:
    if tcfg.accelerator in ("gpu", "cuda") or (tcfg.accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def devices_per_node(tcfg) -> int:
    """How many devices one node trains on, resolving `auto` / -1 the way Lightning does."""
    d = tcfg.devices
    if isinstance(d, (list, tuple)):
        return len(d)
    if isinstance(d, str) and d not in ("auto", "-1"):
        return len([x for x in d.split(",") if x.strip()]) if "," in d else int(d)
    if d in ("auto", -1, "-1"):
        return max(1, torch.cuda.device_count()) if device_for(tcfg) == "cuda" else 1
    return int(d)


def world_size(tcfg) -> int:
    """Processes in `fit`: data-parallel ranks, each of which gets its own share of the round's pairs."""
    return devices_per_node(tcfg) * tcfg.num_nodes


def launcher(tcfg) -> str:
    """`none` (fit in this process), `spawn` (fit-only workers) or `relaunch` (every rank runs the script)."""
    base = str(tcfg.strategy).split("_find_unused")[0]
    if tcfg.num_nodes > 1:
        return "relaunch"
    if base in SPAWN_STRATEGIES:
        return "spawn"
    if base.startswith(("fsdp", "deepspeed")) or base == "ddp":
        return "relaunch"
    return "relaunch" if world_size(tcfg) > 1 else "none"


def precision(tcfg) -> str:
    if tcfg.precision == "auto":
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    return str(tcfg.precision)


def autocast(tcfg, device: str | torch.device):
    """The autocast context Lightning runs `fit` under for this trainer config, for passes outside `fit`.

    The reference log-probs must be the starting policy under the same arithmetic as the training forward: one
    computed in fp32 against a bf16-mixed policy is off by bf16 rounding, and the first DPO step is then not log 2.
    """
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision(tcfg))
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)


def is_decoder_layer(module: torch.nn.Module) -> bool:
    """FSDP wrap unit: one transformer block (LlamaDecoderLayer, GemmaDecoderLayer, Qwen2DecoderLayer, ...)."""
    return type(module).__name__.endswith(("DecoderLayer", "Block"))


def sharded(tcfg) -> bool:
    """FSDP or DeepSpeed: the module's parameters (or their state) are split over the ranks."""
    return str(tcfg.strategy).startswith(("fsdp", "deepspeed"))


def strategy(tcfg, cluster_environment=None):
    """A Lightning strategy name or object for `tcfg.strategy` (Lightning's own strategies, configured).
    cluster_environment: the launcher's (data-parallel rounds); None lets Lightning pick, as before."""
    name = str(tcfg.strategy)
    env = {} if cluster_environment is None else {"cluster_environment": cluster_environment}
    if cluster_environment is not None and name.split("_find_unused")[0] == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(find_unused_parameters=name.endswith("_true"), **env)
    if name.split("_find_unused")[0] in SPAWN_STRATEGIES:
        from lightning.pytorch.plugins.environments import LightningEnvironment
        from lightning.pytorch.strategies import DDPStrategy

        start = {"ddp_spawn": "spawn", "ddp_fork": "fork", "ddp_notebook": "fork"}[name.split("_find_unused")[0]]
        return DDPStrategy(start_method=start, cluster_environment=LightningEnvironment(),
                           find_unused_parameters=name.endswith("_true"))
    if name == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy
        from torch.distributed.fsdp.wrap import lambda_auto_wrap_policy

        # use_orig_params: LoRA leaves most parameters frozen; FSDP's flat parameters need it to mix them
        return FSDPStrategy(auto_wrap_policy=functools.partial(lambda_auto_wrap_policy, lambda_fn=is_decoder_layer),
                            use_orig_params=True, sharding_strategy="FULL_SHARD", state_dict_type="full",
                            limit_all_gathers=True, **env)
    if name == "deepspeed":
        if tcfg.deepspeed_stage not in (1, 2, 3):
            raise ConfigError(f"trainer.deepspeed_stage: 1, 2 or 3 with strategy=deepspeed, got {tcfg.deepspeed_stage}")
        if env:
            from lightning.pytorch.strategies import DeepSpeedStrategy

            return DeepSpeedStrategy(stage=tcfg.deepspeed_stage, **env)
        return f"deepspeed_stage_{tcfg.deepspeed_stage}"  # Lightning's registry; needs `pip install deepspeed`
    return name


def trainer_kwargs(tcfg, *, relaunch_ok: bool = False, cluster_environment=None) -> dict:
    """Keyword arguments for `lightning.Trainer` from a TrainerConfig.

    relaunch_ok: the caller runs correctly when every rank executes the whole script (see the module docstring);
    without it a `relaunch` strategy raises ConfigError before any process starts.
    cluster_environment: the launcher's, for a strategy over ranks that already exist (see `strategy`).
    """
    mode = launcher(tcfg)
    if mode == "relaunch" and not relaunch_ok:
        raise ConfigError(
            f"trainer.strategy: {tcfg.strategy!r} on {world_size(tcfg)} device(s) x {tcfg.num_nodes} node(s) makes "
            "Lightning re-run the whole command on every rank; build its Trainer in lutra.training.worker (torchrun "
            "workers for fit alone, as the loop does), not in a process that runs the loop. See docs/gpu.md.")
    return {"accelerator": tcfg.accelerator, "devices": tcfg.devices, "strategy": strategy(tcfg, cluster_environment),
            "precision": precision(tcfg), "num_nodes": tcfg.num_nodes,
            "accumulate_grad_batches": tcfg.accumulate_grad_batches, "gradient_clip_val": tcfg.gradient_clip_val,
            "log_every_n_steps": tcfg.log_every_n_steps, "enable_progress_bar": tcfg.enable_progress_bar,
            # lutra's data module batches by length itself (a batch sampler Lightning cannot re-shard), so the
            # sampler splits the batches across ranks, not a DistributedSampler
            "use_distributed_sampler": False}


def process_rank() -> int:
    """Global rank of this process as launchers announce it before any process group exists (0 when alone).

    torchrun sets RANK; Lightning's subprocess launcher sets LOCAL_RANK and NODE_RANK on the ranks it starts; srun
    sets SLURM_PROCID when it starts several tasks. A spawned `fit` worker also sees LOCAL_RANK, but never runs
    loop code.
    """
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if "LOCAL_RANK" in os.environ:
        local = int(os.environ["LOCAL_RANK"])
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "0")) or (local + 1)
        return int(os.environ.get("NODE_RANK", "0")) * per_node + local
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return int(os.environ.get("SLURM_PROCID", "0"))
    return 0


class StepCount(L.Callback):
    """Reports the optimizer steps taken through callback_metrics, which spawn launchers send back."""

    def on_train_end(self, trainer, pl_module) -> None:
        trainer.callback_metrics[STEPS_KEY] = torch.tensor(float(trainer.global_step))


def fit(trainer, module, datamodule=None) -> int:
    """`trainer.fit`, returning the optimizer steps taken.

    Under a spawn launcher the main process's `trainer.global_step` stays 0 (its fit loop never ran); the count
    comes back from rank 0 instead. After a `relaunch` fit the process group Lightning created is torn down so the
    next round's Trainer starts a fresh one with its newly launched ranks rather than reusing the exited ones; a
    group that existed before `fit` (a data-parallel round's) is left alone. The module ends on the device it
    started on (Lightning's teardown moves it to the CPU).
    """
    owned = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    if launcher_of(trainer) == "spawn" and torch.cuda.is_available():
        torch.cuda.empty_cache()  # the workers need the memory the main process's sampler cached
    trainer.callbacks.append(StepCount())
    device = next(module.parameters()).device
    trainer.fit(module, datamodule=datamodule)
    module.to(device)  # Lightning's teardown leaves it on the CPU; the loop samples and evaluates with it next
    steps = trainer.global_step or int(trainer.callback_metrics.pop(STEPS_KEY, torch.tensor(0.0)).item())
    trainer.callback_metrics.pop(STEPS_KEY, None)
    if owned and launcher_of(trainer) == "relaunch" and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return steps


def launcher_of(trainer) -> str:
    """`launcher` for a constructed Trainer (from its strategy's launcher object)."""
    la = getattr(trainer.strategy, "launcher", None)
    if isinstance(la, _MultiProcessingLauncher):
        return "spawn"
    if isinstance(la, _SubprocessScriptLauncher) or trainer.world_size > 1:
        return "relaunch"
    return "none"
