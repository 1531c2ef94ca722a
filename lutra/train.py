"""python -m lutra.train [group=option ...] [key=value ...]

Runs CodeLutra: round 0 evaluates the base model, then each round samples, executes, pairs, trains and
evaluates. Config groups: benchmark (mini_sql|spider|bird|ds1000), model, method (codelutra|dpo|sft|...),
trainer (auto|cpu|gpu|ddp|...), logger (csv|wandb|none). `--help` lists them, `--cfg job` prints the composed
config, `-m` sweeps. Returns the final eval execution accuracy (what a Hydra sweeper optimises).
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from lutra.config import ConfigError, register_configs, to_object

register_configs()
log = logging.getLogger("lutra")


def _route_lightning_logs() -> None:
    """Lightning's messages once, through Hydra's handlers (console + train.log), without its advertising tip.

    Lightning adds its own console handler to the `lightning` logger on import, which also propagates to Hydra's:
    every line came out twice. Import it first, then route."""
    import lightning  # noqa: F401

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage())


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    try:
        typed = to_object(cfg)  # validates every value before anything heavy is imported or loaded
    except (ConfigError, ValueError) as e:
        log.error("invalid config: %s", e)
        raise SystemExit(2) from None
    logging.getLogger().setLevel(typed.log_level)
    _route_lightning_logs()
    log.info("run directory: %s", typed.run_dir)
    log.debug("config:\n%s", OmegaConf.to_yaml(cfg))
    # start-up: the loop imports torch, transformers and Lightning (~10 s); a config error is reported before that
    from lutra.artifacts import RunLockedError
    from lutra.benchmarks import BenchmarkError
    from lutra.loop import run

    try:
        return run(typed)
    except (ConfigError, BenchmarkError, RunLockedError) as e:
        log.error("%s", e)
        raise SystemExit(2) from None


if __name__ == "__main__":
    sys.exit(main() and 0)
