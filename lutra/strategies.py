"""Lightning Trainer arguments from `conf/trainer/*.yaml`: accelerator, precision and strategy resolution."""

from __future__ import annotations

import torch


def device_for(tcfg) -> str:
    if tcfg.accelerator in ("gpu", "cuda") or (tcfg.accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def trainer_kwargs(tcfg) -> dict:
    precision = tcfg.precision
    if precision == "auto":
        precision = "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    strategy = tcfg.strategy
    if strategy == "deepspeed" and tcfg.deepspeed_stage:
        strategy = f"deepspeed_stage_{tcfg.deepspeed_stage}"
    return {"accelerator": tcfg.accelerator, "devices": tcfg.devices, "strategy": strategy, "precision": precision,
            "num_nodes": tcfg.num_nodes, "accumulate_grad_batches": tcfg.accumulate_grad_batches,
            "gradient_clip_val": tcfg.gradient_clip_val, "log_every_n_steps": tcfg.log_every_n_steps,
            "enable_progress_bar": tcfg.enable_progress_bar}
