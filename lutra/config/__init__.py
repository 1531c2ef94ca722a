"""Typed configuration: one dataclass schema per Hydra config group, one module per group.

Each schema is registered in Hydra's ConfigStore and named in the defaults list of every YAML of its group, so a
misspelt key or a wrong type fails while Hydra composes the config, and `__post_init__` range checks fail when
`to_object` builds the dataclasses, both before any model loads. The error names the offending key.

    benchmark.py  BenchmarkConfig            conf/benchmark/*.yaml
    model.py      ModelConfig (+ TinyModelConfig, GGUFSourceConfig, FewShotExample)   conf/model/*.yaml
    method.py     MethodConfig               conf/method/*.yaml
    trainer.py    TrainerConfig              conf/trainer/*.yaml
    logger.py     LoggerConfig               conf/logger/*.yaml
    train.py      TrainConfig: the groups + the run's own keys (conf/train.yaml)
    _checks.py    ConfigError and the checks every schema uses
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from lutra.config._checks import ConfigError, _check, _one_of
from lutra.config.benchmark import BenchmarkConfig
from lutra.config.logger import LoggerConfig
from lutra.config.method import MethodConfig
from lutra.config.model import FewShotExample, GGUFSourceConfig, ModelConfig, TinyModelConfig
from lutra.config.train import TrainConfig
from lutra.config.trainer import TrainerConfig

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")
"""The YAML config groups every entry point composes (train, evaluate, prepare)."""

__all__ = [
    "CONF_DIR", "BenchmarkConfig", "ConfigError", "FewShotExample", "GGUFSourceConfig", "LoggerConfig",
    "MethodConfig", "ModelConfig", "TinyModelConfig", "TrainConfig", "TrainerConfig", "_check", "_one_of",
    "register_configs", "to_dict", "to_object",
]

GROUP_SCHEMAS: dict[str, type] = {
    "benchmark": BenchmarkConfig,
    "model": ModelConfig,
    "method": MethodConfig,
    "trainer": TrainerConfig,
    "logger": LoggerConfig,
}
"""Config group -> its schema, registered as `<group>/<group>_schema` (each YAML's defaults list names it)."""


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    for group, schema in GROUP_SCHEMAS.items():
        cs.store(group=group, name=f"{group}_schema", node=schema)


def to_object(cfg: DictConfig, schema: type = TrainConfig) -> Any:
    """Resolve and validate a composed config into dataclasses, failing with a key-naming ConfigError."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"missing required config values: {missing}")
    merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
    return OmegaConf.to_object(merged)


def to_dict(cfg: Any) -> dict:
    """A plain (JSON-able) dict of a config object or DictConfig."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.structured(cfg)
    return OmegaConf.to_container(cfg, resolve=True)
