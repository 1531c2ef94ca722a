"""Benchmarks: every one turns its data into a list of `Problem`s and says how to prompt for them.

A benchmark module exposes `load(cfg: BenchmarkConfig, split: str) -> list[Problem]` and
`user_message(problem: Problem) -> str` (the text of the user turn: instructions, context, question).
`load` raises `BenchmarkError` naming the file, line or problem id for bad input, before any model loads.
"""

from __future__ import annotations

import importlib
import random
from dataclasses import dataclass, field
from typing import Any, Optional

BENCHMARKS = ("mini_sql", "spider", "bird", "ds1000")


class BenchmarkError(ValueError):
    """Malformed or missing benchmark data. The message names the file, line or problem id."""


@dataclass(frozen=True)
class Problem:
    id: str
    """Stable id (e.g. `dev/17` for Spider, question_id for BIRD, metadata.problem_id for DS-1000)."""
    question: str
    """The natural-language request."""
    context: str
    """What the model needs besides the question: CREATE TABLE statements, a DS-1000 prompt, BIRD evidence..."""
    gold: str
    """The ground-truth program."""
    language: str = "sql"
    """sql | python."""
    db_path: Optional[str] = None
    """SQLite database file (SQL benchmarks)."""
    test_context: Optional[str] = None
    """DS-1000 `code_context` (Python benchmarks)."""
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    """Reporting fields: difficulty, template, db_id, library, held_out, ..."""


def _module(name: str):
    if name not in BENCHMARKS:
        raise BenchmarkError(f"benchmark.name: unknown benchmark {name!r}; choose one of {list(BENCHMARKS)}")
    return importlib.import_module(f"lutra.benchmarks.{name}")


def evaluated_splits(cfg) -> tuple[str, ...]:
    """The splits scored after every round: eval_split, then held_out_split when one is set."""
    return (cfg.eval_split, cfg.held_out_split) if cfg.held_out_split else (cfg.eval_split,)


def load(cfg, split: str) -> list[Problem]:
    """Problems of `split`, subsampled (seeded by cfg.subsample_seed) to n_train, or n_eval for eval / held-out."""
    problems = _module(cfg.name).load(cfg, split)
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise BenchmarkError(f"{cfg.name}/{split}: duplicate problem ids {dup}")
    limit = cfg.n_train if split == cfg.train_split else cfg.n_eval if split in evaluated_splits(cfg) else None
    if limit is not None and limit < len(problems):
        rng = random.Random(f"{cfg.subsample_seed}/{split}")
        keep = set(rng.sample(range(len(problems)), limit))
        problems = [p for i, p in enumerate(problems) if i in keep]
    return problems


def user_message(cfg, problem: Problem) -> str:
    return _module(cfg.name).user_message(problem)
