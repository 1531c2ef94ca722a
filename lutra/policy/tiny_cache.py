"""Where a `model=tiny` build is cached: a directory keyed by everything that changes what the build produces."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from lutra.artifacts import fingerprint

TINY_VERSION = 6  # bump when the tiny build recipe changes: the cache key changes with it


def tiny_seed(tiny_cfg, bench_cfg) -> int:
    """The warm start's seed (initial weights, rare draw, batch order): its own, else the benchmark's."""
    return bench_cfg.subsample_seed if tiny_cfg.warm_start_seed is None else tiny_cfg.warm_start_seed


def _key(model_cfg, bench_cfg) -> dict:
    bench_module = importlib.import_module(f"lutra.benchmarks.{bench_cfg.name}")
    return {
        "v": TINY_VERSION,
        "bench_version": getattr(bench_module, "GENERATOR_VERSION", None),
        # null warm_start_seed is the benchmark's seed: the same base, so the same key
        # `shipped` picks where the base comes from (lutra/bases/ or a build), not what the recipe builds
        "tiny": {k: getattr(model_cfg.tiny, k) for k in vars(model_cfg.tiny) if k != "shipped"}
        | {"warm_start_seed": tiny_seed(model_cfg.tiny, bench_cfg)},
        "bench": bench_cfg.name,
        "seed": bench_cfg.subsample_seed,
        "n_warmup": bench_cfg.n_warmup,
        "options": dict(bench_cfg.options),
        "rare": sorted(getattr(bench_module, "RARE_TEMPLATES", ())),  # the default set lives in code, not config
        "max_completion_len": model_cfg.max_completion_len,
    }


def cache_key(model_cfg, bench_cfg) -> str:
    """The recipe's key: a build is cached under it, and a shipped base (lutra.policy.shipped) is found by it."""
    return fingerprint(_key(model_cfg, bench_cfg), 12)


def tiny_dir(model_cfg, bench_cfg) -> Path:
    root = Path(os.environ.get("LUTRA_MODELS", "outputs/models"))
    return root / f"tiny-{bench_cfg.name}-{cache_key(model_cfg, bench_cfg)}"


def recipe_fingerprint(model_cfg, bench_cfg, dtype: str) -> str:
    """The build's recipe with the warm start's arithmetic as resolved (`auto` -> bfloat16 or float32): what
    a build records (and `lutra.policy.shipped` reports) next to its cache key. Equal recipes on another CPU may still build
    another base; unequal ones always do."""
    key = _key(model_cfg, bench_cfg)
    key["tiny"] = key["tiny"] | {"warm_start_dtype": dtype}
    return fingerprint(key, 12)
