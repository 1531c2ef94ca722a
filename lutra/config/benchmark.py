"""The `benchmark` group's schema (conf/benchmark/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from lutra.config._checks import _check, _one_of


@dataclass
class BenchmarkConfig:
    name: str = MISSING
    """Benchmark id: mini_sql | spider | bird | ds1000."""
    executor: str = "sql"
    """How a program is checked: `sql` (SQLite, result compared with gold's) or `python` (test harness)."""
    comparison: str = "spider_ts"
    """SQL result comparison rule: spider_ts | bird_set | strict (see lutra.execution.compare)."""
    data_dir: Optional[str] = None
    """Root of the benchmark's official files; None means $LUTRA_DATA/<name>. mini_sql generates its own."""
    train_split: str = "train"
    """Split the loop samples and trains on."""
    eval_split: str = "eval"
    """Split evaluated greedily after each round."""
    held_out_split: Optional[str] = None
    """A second split evaluated after each round (e.g. an unseen database), reported on its own as
    `eval/held_out/exec_acc` and never mixed into eval's EX; None: none."""
    n_train: Optional[int] = None
    """Subsample the train split to this many problems (seeded); None keeps all. The paper uses 500."""
    n_eval: Optional[int] = None
    """Subsample the eval split (and the held-out split, each to at most this many); None keeps all."""
    subsample_seed: int = 0
    """Seed of the n_train / n_eval subsampling and of generated benchmarks."""
    timeout_s: float = 5.0
    """Per-program execution deadline in seconds (timeout counts as wrong in reported EX)."""
    workers: Optional[int] = None
    """Executor worker processes; None = number of CPU cores."""
    n_warmup: int = 0
    """Problems (disjoint from train and eval) used to warm-start a locally built model; 0 = none."""
    prompt_rows: int = 0
    """Example rows per table shown in SQL prompts (0 = schema only)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Benchmark-specific settings (documented in the benchmark's module and YAML)."""

    def __post_init__(self) -> None:
        _one_of(self.executor, "benchmark.executor", ("sql", "python"))
        _one_of(self.comparison, "benchmark.comparison", ("spider_ts", "bird_set", "strict"))
        _check(self.timeout_s > 0, "benchmark.timeout_s", f"must be > 0, got {self.timeout_s}")
        for key in ("n_train", "n_eval"):
            v = getattr(self, key)
            _check(v is None or v > 0, f"benchmark.{key}", f"must be > 0 or null, got {v}")
        _check(self.workers is None or self.workers > 0, "benchmark.workers", "must be > 0 or null")
        _check(self.n_warmup >= 0, "benchmark.n_warmup", "must be >= 0")
        _check(self.prompt_rows >= 0, "benchmark.prompt_rows", "must be >= 0")
