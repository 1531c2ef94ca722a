"""The `logger` group's schema (conf/logger/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from lutra.config._checks import _check, _one_of


@dataclass
class LoggerConfig:
    name: str = "csv"
    """csv | wandb | none."""
    project: str = "lutra"
    """wandb project."""
    entity: Optional[str] = None
    """wandb entity (user or team); null: your default."""
    group: Optional[str] = None
    """wandb group; sweeps set it to the sweep name."""
    job_type: Optional[str] = None
    """wandb job_type; defaults to the method name."""
    mode: Optional[str] = None
    """wandb mode: online | offline | disabled; None follows WANDB_MODE."""
    tags: list[str] = field(default_factory=list)
    """wandb tags."""
    log_samples: bool = True
    """Log a table of sampled pairs each round."""

    def __post_init__(self) -> None:
        _one_of(self.name, "logger.name", ("csv", "wandb", "none"))
        _check(self.mode in (None, "online", "offline", "disabled"), "logger.mode", f"invalid: {self.mode!r}")
