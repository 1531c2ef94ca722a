"""python -m lutra.train [group=option ...] [key=value ...]

Runs CodeLutra: round 0 evaluates the base model, then each round samples, executes, pairs, trains and
evaluates. Config groups: benchmark (mini_sql|spider|bird|ds1000), model, method (codelutra|dpo|sft|...),
trainer (auto|cpu|gpu|ddp|...), logger (csv|wandb|none), and +preset=smoke (a 2-minute demo round). `--help`
shows every key with its meaning, `--cfg job` prints the composed config, `-m` sweeps. Returns the final eval
execution accuracy (what a Hydra sweeper optimises).

Before any work, `model.path` and the benchmark's data root are checked (lutra.preflight): a missing model or
data folder is one line naming the key and the fix, exit 2, and the run directory Hydra made is removed. Ctrl-C
prints where the run stopped and exits 130; re-running the same command resumes there.

Under torchrun or srun every rank runs this entry point (data-parallel rounds, `lutra.distributed`): Hydra composes
the same config on each, and only rank 0 writes `.hydra/` and `train.log` or removes a fresh run directory; the other
ranks log warnings and errors to the console, prefixed with their rank.
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from lutra import cli_help, preflight
from lutra.config import ConfigError, TrainConfig, register_configs, to_object

register_configs()
log = logging.getLogger("lutra")

HELP = cli_help.Command(
    name="lutra.train", config_name="train", schema=TrainConfig, register=register_configs,
    summary="CodeLutra refinement rounds. Round 0 evaluates the base model; each round then samples programs for "
            "the train problems, executes them, pairs correct with incorrect ones, trains the LoRA adapter with "
            "DPO + lambda * NLL and evaluates greedily. Re-running the same command resumes its run directory.",
    groups={"benchmark": "the task: data, splits, executor, comparison rule",
            "model": "the base model (hub id or local dir), lengths, chat template, LoRA",
            "method": "the loss and its data: samples per problem, pairs, beta, lambda, reference policy",
            "trainer": "Lightning Trainer arguments: device, precision, strategy",
            "logger": "experiment logging",
            "+preset": "a set of overrides, added with +preset=NAME"},
    notes="Every value is typed and checked before anything loads: a misspelt key or method.beta=0 fails naming "
          "the key. Run directory: outputs/runs/<benchmark>-<model>-<method>-s<seed> (hydra.run.dir=...).",
)
# libraries that add their own console handler and also propagate to Hydra's: every line came out twice
OWN_HANDLERS = ("lightning.pytorch", "lightning.fabric", "lightning", "huggingface_hub", "transformers")


def route_library_logs() -> None:
    """Library messages once, through Hydra's handlers (console + train.log), without Lightning's advertising
    tip or its Ctrl-C banner (the interrupt gets lutra's one line). Lightning adds its handler on import, so it is
    imported first."""
    import lightning  # noqa: F401

    for name in OWN_HANDLERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    try:  # transformers keeps a flag of its own that re-disables propagation when its logging is reconfigured
        from transformers.utils import logging as hf_logging

        hf_logging.disable_default_handler()
        hf_logging.enable_propagation()
    except ImportError:
        pass
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: not any(s in record.getMessage() for s in ("litlogger", "Detected KeyboardInterrupt")))


class _Interrupt:
    """SIGINT: the first one raises KeyboardInterrupt where the run is (and is remembered, since Lightning turns
    it into sys.exit(1) inside fit); a second one exits at once (every artifact is written atomically)."""

    seen = False
    cfg = None  # the typed config once it is built: where_stopped reads its run's manifest

    @classmethod
    def handler(cls, signum, frame):
        if cls.seen:
            import os

            os._exit(130)
        cls.seen = True
        raise KeyboardInterrupt


def where_stopped(cfg) -> str:
    """`round k <stage>`: the first stage the manifest does not record as done (the one that was running)."""
    from lutra.artifacts import read_json
    from lutra.loop import STAGES

    mpath = Path(cfg.run_dir) / "manifest.json"
    done = read_json(mpath).get("stages", {}) if mpath.is_file() else {}
    if not done and cfg.model.build == "tiny" and cfg.model.path is None:
        from lutra.policy.shipped import find
        from lutra.policy.tiny_cache import tiny_dir

        if find(cfg.model, cfg.benchmark) is None and not (tiny_dir(cfg.model, cfg.benchmark) / "config.json").exists():
            return "the tiny model's build (before round 0)"
    for k in range(cfg.rounds + 1):
        stages = ("evaluate",) if k == 0 else STAGES
        for stage in stages:
            if stage == "ref_logps" and (cfg.method.loss == "sft" or done.get(f"round_{k}/pair", {}).get("pairs") == 0):
                continue
            if f"round_{k}/{stage}" not in done:
                return f"round {k} {stage}"
    return f"round {cfg.rounds} (after its last stage)"


def _fail(run_dir: str | None, message) -> None:
    log.error("%s", message)
    if run_dir and _rank() == 0:
        preflight.discard_fresh_run_dir(run_dir)
    raise SystemExit(2)


def _rank() -> int:
    from lutra.distributed import rank_from_env

    return rank_from_env()


def _quiet_peer(rank: int) -> None:
    """A data-parallel rank other than 0: no train.log (rank 0 writes it), warnings and errors on the console with
    the rank in front. Hydra's own outputs on these ranks are turned off by `main` (torchrun, srun); inside a
    submitit task, which calls Hydra's job itself, its file handler is dropped here."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
        elif handler.formatter is not None:
            handler.setFormatter(logging.Formatter(f"[rank {rank}]" + handler.formatter._fmt))
    logging.getLogger("lutra").setLevel(logging.WARNING)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def _main(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    run_dir = HydraConfig.get().runtime.output_dir
    rank = _rank()
    if rank:
        _quiet_peer(rank)
    signal.signal(signal.SIGINT, _Interrupt.handler)
    try:
        return _run(cfg, run_dir)
    except (KeyboardInterrupt, SystemExit):  # Lightning turns Ctrl-C inside fit into sys.exit(1)
        if not _Interrupt.seen:
            raise
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        typed = _Interrupt.cfg
        where = where_stopped(typed) if typed is not None else "start-up (before round 0)"
        log.warning("interrupted in %s; re-run the same command to resume", where)
        if rank == 0:
            preflight.discard_fresh_run_dir(run_dir)  # a run with no finished stage has nothing to resume
        raise SystemExit(130) from None


def _run(cfg: DictConfig, run_dir: str) -> float:
    try:
        typed = to_object(cfg)  # validates every value before anything heavy is imported or loaded
    except (ConfigError, ValueError) as e:
        _fail(run_dir, f"invalid config: {e}")
    _Interrupt.cfg = typed
    logging.getLogger().setLevel(typed.log_level)
    try:
        preflight.check_model_path(typed.model)  # seconds, where a missing model took a minute of hub retries
        preflight.check_data(typed.benchmark)
    except ConfigError as e:
        _fail(run_dir, e)
    log.info("run directory: %s", typed.run_dir)
    log.debug("config:\n%s", OmegaConf.to_yaml(cfg))
    # start-up: the loop imports torch, transformers and Lightning (~10 s); a config error is reported before that
    route_library_logs()
    from lutra.artifacts import RunLockedError
    from lutra.benchmarks import BenchmarkError
    from lutra.distributed import PeerError
    from lutra.loop import run

    try:
        return run(typed)
    except (ConfigError, BenchmarkError, RunLockedError) as e:
        _fail(run_dir, preflight.with_data_hint(e, typed.benchmark))
    except PeerError as e:  # another rank failed and printed why; this one stops with one line
        log.warning("%s", e)
        raise SystemExit(1) from None


def main() -> float | None:
    """The `lutra-train` / `python -m lutra.train` entry point: lutra's --help, else Hydra."""
    if cli_help.requested(sys.argv[1:]):
        sys.exit(cli_help.main(HELP, sys.argv[1:]))
    if _rank():  # a data-parallel rank other than 0: rank 0 alone writes .hydra/ and train.log in the run directory
        sys.argv += ["hydra.output_subdir=null", "hydra.job_logging.root.handlers=[console]"]
    return _main()


if __name__ == "__main__":
    sys.exit(main() and 0)
