"""mini_sql's splits: eval, held_out, train and warmup drawn in that order from one seed's databases, each
(template, domain) cycled and deduplicated; `load` and `user_message` are the benchmark interface."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

from lutra.benchmarks import BenchmarkError, Problem
from lutra.benchmarks.mini_sql.catalog import RARE_TEMPLATES, TEMPLATES, Template
from lutra.benchmarks.mini_sql.databases import _build, _Db, _schema, fingerprint
from lutra.benchmarks.mini_sql.schema import DOMAINS
from lutra.benchmarks.mini_sql.templates import Draft

SPLITS = ("eval", "held_out", "train", "warmup")
"""Generation order: eval first, so its combinations are reserved before the others draw theirs."""
N_TRAIN_POOL = 600
N_EVAL_POOL = 500
N_HELD_OUT_POOL = 100
ATTEMPTS = 200
"""Draws of one (template, domain) before it counts as exhausted (every new key already used)."""
INSTRUCTION = "Answer with one SQLite query."


class _Generator:
    """Databases of one seed and the splits drawn from them, in SPLITS order (each only when first asked for)."""

    def __init__(self, root: Path, seed: int, sizes: dict[str, int]):
        self.seed, self.sizes = seed, sizes
        self.dbs = []
        for d in DOMAINS:
            path = root / f"{d.db_id}.sqlite"
            _build(path, d, seed)
            self.dbs.append(_Db(d, path))
        self.keys: set = set()
        self.questions: set = set()
        self.done: dict[str, list[Problem]] = {}

    def split(self, split: str) -> list[Problem]:
        for s in SPLITS[: SPLITS.index(split) + 1]:
            if s not in self.done:
                self.done[s] = self._draw(s)
        return self.done[split]

    def _draw(self, split: str) -> list[Problem]:
        dbs = [db for db in self.dbs if db.d.held_out == (split == "held_out")]
        rng = random.Random(f"mini_sql/{self.seed}/{split}")
        drawn: list[tuple[Template, _Db, Draft]] = []
        exhausted: set = set()
        i = 0
        while len(drawn) < self.sizes[split]:
            if len(exhausted) == len(TEMPLATES) * len(dbs):
                raise BenchmarkError(f"mini_sql/{split}: only {len(drawn)} distinct problems left for "
                                     f"{self.sizes[split]} asked; lower the split's size")
            tmpl, db = TEMPLATES[i % len(TEMPLATES)], dbs[(i // len(TEMPLATES)) % len(dbs)]
            i += 1
            if (tmpl.name, db.d.db_id) in exhausted:
                continue
            for _ in range(ATTEMPTS):
                dr = tmpl.make(rng, db)
                if dr is None:
                    continue
                key = (tmpl.name, db.d.db_id) + dr.key
                if key in self.keys or dr.question in self.questions or not db.accept(dr.sql):
                    continue
                self.keys.add(key)
                self.questions.add(dr.question)
                drawn.append((tmpl, db, dr))
                break
            else:
                exhausted.add((tmpl.name, db.d.db_id))
        rng.shuffle(drawn)
        return [Problem(id=f"{split}/{j}", question=dr.question, context=db.schema, gold=dr.sql, language="sql",
                        db_path=str(db.path),
                        meta={"db_id": db.d.db_id, "template": tmpl.name, "tier": tmpl.tier, "rare": tmpl.rare})
                for j, (tmpl, db, dr) in enumerate(drawn)]


_GENERATORS: dict[tuple, _Generator] = {}
OPTIONS = {"n_train_pool": N_TRAIN_POOL, "n_eval_pool": N_EVAL_POOL, "n_held_out_pool": N_HELD_OUT_POOL,
           "rare_templates": sorted(RARE_TEMPLATES), "templates": None}
"""benchmark.options of mini_sql and their defaults. templates: only these templates' problems in every split
(null: all), e.g. a few easy ones for a smoke run whose short warm start must solve some; generation is the
same, so the problems kept are the full benchmark's."""


def _generator(cfg) -> _Generator:
    opts = dict(cfg.options or {})
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        raise BenchmarkError(f"benchmark.options: unknown mini_sql option(s) {unknown}; known: {sorted(OPTIONS)}")
    sizes = {"eval": opts.get("n_eval_pool", N_EVAL_POOL), "held_out": opts.get("n_held_out_pool", N_HELD_OUT_POOL),
             "train": opts.get("n_train_pool", N_TRAIN_POOL), "warmup": cfg.n_warmup}
    for split, n in sizes.items():
        if not isinstance(n, int) or isinstance(n, bool) or n < (0 if split == "warmup" else 1):
            raise BenchmarkError(f"mini_sql: size of split {split!r} must be a positive integer, got {n!r}")
    seed = cfg.subsample_seed
    root = Path(cfg.data_dir).expanduser() if cfg.data_dir else Path("outputs/data/mini_sql") / fingerprint(seed)
    key = (str(root.resolve()), seed, tuple(sizes.items()))
    if key not in _GENERATORS:
        _GENERATORS[key] = _Generator(root.resolve(), seed, sizes)
    return _GENERATORS[key]


def load(cfg, split: str) -> list[Problem]:
    """All problems of `split` (train | eval | held_out | warmup); lutra.benchmarks.load subsamples them."""
    if split not in SPLITS:
        raise BenchmarkError(f"mini_sql: unknown split {split!r}; choose one of {sorted(SPLITS)}")
    problems = list(_generator(cfg).split(split))
    keep = _template_names(cfg, "templates", nonempty=True)
    if keep is not None:
        problems = [p for p in problems if p.meta["template"] in keep]
    rare = _template_names(cfg, "rare_templates")
    if rare is None:
        return problems
    return [dataclasses.replace(p, meta={**p.meta, "rare": p.meta["template"] in rare}) for p in problems]


def _template_names(cfg, option: str, *, nonempty: bool = False) -> set[str] | None:
    names = (cfg.options or {}).get(option)
    if names is None:
        return None
    known = {t.name for t in TEMPLATES}
    if isinstance(names, str) or not all(isinstance(r, str) and r in known for r in names) or (nonempty and not names):
        raise BenchmarkError(f"benchmark.options.{option}: a list of template names from {sorted(known)}, "
                             f"got {names!r}")
    return set(names)


def user_message(problem: Problem) -> str:
    """Schema (CREATE TABLE statements), question, one-line instruction."""
    schema = _schema(problem.db_path) if problem.db_path else problem.context
    return f"{schema}\n\nQuestion: {problem.question}\n{INSTRUCTION}"
