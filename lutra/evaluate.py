"""python -m lutra.evaluate: execution accuracy of a model (greedy decoding) or of a predictions file on a split.

    python -m lutra.evaluate benchmark=spider predictions=preds.jsonl [subset=true]
    python -m lutra.evaluate benchmark=bird model=llama3_8b [adapter=RUN_DIR/round_k/adapter]

A predictions file has one JSON object per line, `{"id": <problem id>, "prediction": <program text>}`, joined
with the split by id, never by position. The run dir gets `verdicts.jsonl` (one line per problem: id, status,
correct, seconds, error, prediction) and `summary.json` (overall and per difficulty / library EX).
Everything that can be checked before a model loads is: the predictions file, the databases the run uses,
and (with check_gold) every gold program, run once; broken golds are listed in the summary and leave the
denominator only with benchmark.options.exclude_broken_gold=true.
Scoring itself (`score_predictions`, `summarize`, `read_predictions`, `check_gold`) is lutra.scoring's.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from lutra import benchmarks
from lutra.artifacts import write_json, write_jsonl
from lutra.benchmarks import BenchmarkError, Problem
from lutra.benchmarks.sql_schema import check_databases
from lutra.config import CONF_DIR, BenchmarkConfig, ConfigError, ModelConfig
from lutra.scoring import PredictionsError, check_gold, read_predictions, score_predictions

log = logging.getLogger(__name__)

@dataclass
class EvaluateConfig:
    benchmark: BenchmarkConfig = MISSING
    model: ModelConfig = MISSING
    predictions: str | None = None
    """JSONL file of {"id", "prediction"} to score; null: decode with `model` (+ `adapter`)."""
    subset: bool = False
    """Score only the ids in the predictions file (others are not counted); false: missing ids are wrong."""
    adapter: str | None = None
    """LoRA adapter directory (a run's round_k/adapter) loaded on top of the model."""
    split: str | None = None
    """Split to evaluate; null: benchmark.eval_split."""
    seed: int = 0
    """Accepted so that `seed=` overrides shared with lutra.train compose; greedy decoding draws no random numbers."""
    batch_size: int = 16
    """Prompts per greedy decoding batch."""
    max_new_tokens: int | None = None
    """Generation cap; null: model.max_completion_len."""
    check_gold: bool | None = None
    """Run every gold once before scoring (before the model loads); null: only when decoding with a model."""
    run_dir: str = MISSING
    progress: bool = True
    log_level: str = "INFO"


def generate_predictions(problems: list[Problem], cfg: EvaluateConfig) -> tuple[dict[str, str], dict[str, str]]:
    """Greedy completions of `problems` by cfg.model (+ cfg.adapter): ({id: text}, {id: skip reason})."""
    # start-up: torch, transformers and Lightning (~4 s to import) only when a model decodes, never for a file
    import torch

    from lutra.policy import models, prompts, sampling
    from lutra.policy.tiny import ensure_tiny

    ensure_tiny(cfg)  # model=tiny: built once, cached
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok = models.load(cfg.model, cfg.benchmark, adapter=cfg.adapter, device=device)
    texts, ids, skipped = [], [], {}
    for p in problems:
        text = prompts.format_prompt(tok, benchmarks.user_message(cfg.benchmark, p), cfg.model)
        if len(prompts.encode_prompt(tok, text)) > cfg.model.max_prompt_len:
            skipped[p.id] = "prompt_too_long"  # never truncated: scored wrong and counted
            continue
        texts.append(text)
        ids.append(p.id)
    if skipped:
        log.warning("%d prompts longer than model.max_prompt_len=%d are scored wrong", len(skipped),
                    cfg.model.max_prompt_len)
    outs = sampling.greedy(model, tok, texts, max_new_tokens=cfg.max_new_tokens or cfg.model.max_completion_len,
                           batch_size=cfg.batch_size, progress=cfg.progress, desc="eval")
    return dict(zip(ids, outs, strict=True)), skipped


def evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    """One evaluation as configured; returns the summary (also written to cfg.run_dir)."""
    bench, run_dir = cfg.benchmark, Path(cfg.run_dir)
    split = cfg.split or bench.eval_split
    problems = benchmarks.load(bench, split)
    if cfg.predictions:
        full = benchmarks.load(dataclasses.replace(bench, n_train=None, n_eval=None), split)
        preds = read_predictions(cfg.predictions, {p.id for p in full}, split=f"{bench.name}/{split}")
        outside = [i for i in preds if i not in {p.id for p in problems}]
        for i in outside:  # in the split but not in its n_eval sample
            del preds[i]
        judged = [p for p in problems if p.id in preds]
        check_databases(judged)
        broken = check_gold(judged, bench, progress=cfg.progress) if cfg.check_gold else {}
        skipped: dict[str, str] = {}
    else:
        check_databases(problems)
        broken = check_gold(problems, bench, progress=cfg.progress) if cfg.check_gold is not False else {}
        preds, skipped = generate_predictions(problems, cfg)
        write_jsonl(run_dir / "predictions.jsonl", [{"id": i, "prediction": t} for i, t in preds.items()])
    summary = score_predictions(problems, preds, bench, run_dir, subset=cfg.subset, progress=cfg.progress,
                                broken_gold=broken, skipped=skipped)
    summary.update(split=split, predictions=cfg.predictions, adapter=cfg.adapter,
                   model=None if cfg.predictions else cfg.model.name)
    write_json(run_dir / "summary.json", summary)
    _report(summary)
    return summary


def _report(s: dict) -> None:
    log.info("%s/%s: EX %.2f%% (%d / %d)%s", s["benchmark"], s["split"], s["exec_acc"], s["correct"], s["n"],
             f", {s['n_missing']} missing" if s["n_missing"] else "")
    for key, per in s["groups"].items():
        log.info("  by %s: %s", key, ", ".join(f"{k} {g['exec_acc']:.2f} ({g['n']})" for k, g in per.items()))
    if s["n_broken_gold"]:
        log.warning("  %d broken gold: %s", s["n_broken_gold"], ", ".join(list(s["broken_gold"])[:10]))


def _register() -> None:
    from hydra.core.config_store import ConfigStore

    from lutra.config import register_configs

    register_configs()
    ConfigStore.instance().store(name="evaluate_schema", node=EvaluateConfig)


def _help():
    from lutra import cli_help

    return cli_help.Command(
        name="lutra.evaluate", config_name="evaluate", schema=EvaluateConfig, register=_register,
        summary="execution accuracy on one benchmark split, of a predictions file or of a model decoding greedily "
                "(optionally with a run's LoRA adapter). Writes verdicts.jsonl (one line per problem) and "
                "summary.json (overall and per difficulty / library EX) into its run dir.",
        groups={"benchmark": "the task: data, splits, executor, comparison rule",
                "model": "the model that decodes when predictions=null (hub id or local dir)"},
        notes='A predictions file has one JSON object per line, {"id": <problem id>, "prediction": <program>}, '
              "joined with the split by id. The file, the databases and (with check_gold) every gold program are "
              "checked before a model loads.")


def main() -> None:
    import hydra

    from lutra import cli_help, preflight
    from lutra.config import to_object

    if cli_help.requested(sys.argv[1:]):
        sys.exit(cli_help.main(_help(), sys.argv[1:]))
    _register()

    @hydra.main(version_base=None, config_path=CONF_DIR, config_name="evaluate")
    def _main(dcfg) -> float:
        from hydra.core.hydra_config import HydraConfig

        run_dir = HydraConfig.get().runtime.output_dir
        cfg = None
        try:
            cfg = to_object(dcfg, EvaluateConfig)
            logging.getLogger("lutra").setLevel(cfg.log_level)
            if not cfg.predictions:
                preflight.check_model_path(cfg.model)  # seconds, not a minute of hub retries
            preflight.check_data(cfg.benchmark)
            return evaluate(cfg)["exec_acc"]
        except (BenchmarkError, PredictionsError, ConfigError) as e:
            message = preflight.with_data_hint(e, cfg.benchmark) if cfg is not None else str(e)
            print(f"error: {message}", file=sys.stderr)
            preflight.discard_fresh_run_dir(run_dir)  # nothing was scored: no empty dated folder left behind
            sys.exit(2)

    _main()


if __name__ == "__main__":
    main()
