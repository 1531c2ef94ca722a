"""`python -m lutra.training.worker RUN_DIR K`: one rank of round K's fit in worker mode (see lutra.training.fit).

torchrun starts one per device; each loads the round's starting policy, encodes the same pairs in the same order,
loads the cached reference log-probs and fits with the configured strategy. Rank 0 alone writes the adapter
(`ADAPTER_TMP`), the step count (`RESULT`) and its logged metrics (`METRICS`, `JsonlLogger`) for the loop.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import torch
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import OmegaConf

from lutra.artifacts import atomic_write_text, read_jsonl
from lutra.policy.device import setup_torch
from lutra.policy.models import policy_at
from lutra.training.data import encode_pairs
from lutra.training.fit import ADAPTER_TMP, JOB, METRICS, RESULT, fit_policy
from lutra.training.strategies import devices_per_node

log = logging.getLogger(__name__)


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
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))



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
    ap = argparse.ArgumentParser(prog="python -m lutra.training.worker",
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
