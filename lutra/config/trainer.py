"""The `trainer` group's schema (conf/trainer/*.yaml): plain Lightning Trainer arguments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from lutra.config._checks import _check


@dataclass
class TrainerConfig:
    """Plain Lightning Trainer arguments (see conf/trainer/*.yaml)."""

    accelerator: str = "auto"
    """cpu | gpu | auto (a GPU when there is one)."""
    devices: Any = "auto"
    """Devices for fit: a count, a list of ids, or auto."""
    strategy: Any = "auto"
    """Lightning strategy: auto | ddp_spawn | fsdp | deepspeed (conf/trainer/*.yaml set these)."""
    precision: Any = "32-true"
    """Lightning precision: 32-true | bf16-mixed | 16-mixed."""
    num_nodes: int = 1
    """Machines; lutra starts training workers on one node only."""
    accumulate_grad_batches: int = 1
    """Micro-batches per optimizer step."""
    gradient_clip_val: Optional[float] = 1.0
    """Gradient norm clip; null: none."""
    log_every_n_steps: int = 5
    """Training metrics are logged every this many optimizer steps."""
    enable_progress_bar: bool = True
    """Progress bars for sampling, execution, training and evaluation."""
    deepspeed_stage: Optional[int] = None
    """2 or 3 with strategy=deepspeed (ZeRO stage)."""

    def __post_init__(self) -> None:
        _check(self.accumulate_grad_batches > 0, "trainer.accumulate_grad_batches", "must be > 0")
        _check(self.num_nodes > 0, "trainer.num_nodes", "must be > 0")
        _check(self.log_every_n_steps > 0, "trainer.log_every_n_steps", "must be > 0")
