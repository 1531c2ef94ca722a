"""The documented `model=tiny` bases, and what a new build is compared with.

The warm start is chaotic in floating point, so a build on another CPU type (or another torch) gives another base,
and the README's numbers belong to the bases measured here. Each record below is one measured build: its recipe
(`tiny_cache.recipe_fingerprint`: the cache key with the warm start's arithmetic resolved), the digest of its
weights (`tiny.weights_sha256`) and what the loop did from it. After a build, `compare` says whether the result is
one of them (then the README's round-0 EX and gain for that base are what to expect) or not (then the spread over
all measured bases is), and the build logs it and writes it to `lutra_build.json` (`documented_base`).

A change to the recipe (conf/model/tiny.yaml, the benchmark's generator) makes every record undocumented, and
tests/test_tiny_bases.py fails until the bases are rebuilt, measured and recorded again.
"""

from __future__ import annotations

import dataclasses
import statistics


@dataclasses.dataclass(frozen=True)
class DocumentedBase:
    name: str
    recipe: str  # tiny_cache.recipe_fingerprint
    weights_sha256: str
    torch: str
    cpu_capability: str  # torch.backends.cpu.get_cpu_capability() during the build
    warm_start_dtype: str
    stop_step: int
    round0_ex: float
    gains: tuple[float, ...]  # eval EX after 4 rounds minus round 0, codelutra defaults, loop seeds 0, 1, 2


BASES = (
    DocumentedBase("avx512 (AVX512-BF16 CPU), bf16 autocast", "1f6996c1b097",
                   "a83f26dc7cb775bc6484de3c86b2786a8f43d18e10cdaf7801c14ed5b98ff4eb", "2.13.0+cpu", "AVX512",
                   "bfloat16", 500, 38.4, (11.4, 11.6, 12.2)),
    DocumentedBase("avx2 (simulated on the AVX512 CPU), float32", "ba865c22776f",
                   "7e7f72fb5b3cf6886a71071ff62a83869b1f5763a4186af00742222acac7ee02", "2.13.0+cpu", "AVX2",
                   "float32", 400, 44.6, (10.2, 8.2, 8.4)),
    DocumentedBase("default / SSE4.2 (simulated on the AVX512 CPU), float32", "ba865c22776f",
                   "a3a5d4f8c1d444128e4a47b6d5ed0f8c3c80ed9835656234da0e6002d9b24943", "2.13.0+cpu", "DEFAULT",
                   "float32", 450, 45.2, (9.0, 9.4, 9.4)),
)
OTHER_SEED_GAINS = (7.4, 5.6)
"""Warm-start seeds 1 and 2 of the avx512 recipe (loop seed 0): also bases a user may get, so part of the spread."""


def _pm(xs) -> str:
    return f"{statistics.mean(xs):+.1f} +- {statistics.stdev(xs):.1f}" if len(xs) > 1 else f"{xs[0]:+.1f}"


def expected_spread() -> str:
    gains = [g for b in BASES for g in b.gains] + list(OTHER_SEED_GAINS)
    return (f"round-0 EX about 35-55% and a 4-round gain of {_pm(gains)} EX "
            f"(from {min(gains):+.1f} to {max(gains):+.1f} over {len(gains)} runs on {len(BASES) + len(OTHER_SEED_GAINS)} "
            f"measured bases, README Results)")


def compare(build: dict, recipe: str, bases=BASES) -> dict:
    """build: lutra_build.json's fields (weights_sha256, cpu_capability, warm_start_dtype, torch).

    Returns {"status": "match" | "differs" | "undocumented", "name": str | None, "message": str}."""
    same_recipe = [b for b in bases if b.recipe == recipe]
    if not same_recipe:
        return {"status": "undocumented", "name": None,
                "message": "no documented base for this recipe (an override or a code change made it another): "
                           "the README's numbers do not apply"}
    for b in same_recipe:
        if b.weights_sha256 == build.get("weights_sha256"):
            return {"status": "match", "name": b.name,
                    "message": f"the documented {b.name} base (weights_sha256 {b.weights_sha256[:12]}): expect "
                               f"round-0 EX {b.round0_ex}% and a 4-round gain of {_pm(b.gains)} EX (loop seeds 0-2)"}
    seen = "; ".join(f"{b.cpu_capability} {b.warm_start_dtype} torch {b.torch}" for b in same_recipe)
    this = f"{build.get('cpu_capability')} {build.get('warm_start_dtype')} torch {build.get('torch')}"
    return {"status": "differs", "name": None,
            "message": f"not a documented base: weights_sha256 {str(build.get('weights_sha256'))[:12]} differs from "
                       f"the {len(same_recipe)} recorded for this recipe ({seen}; this build: {this}). Another CPU "
                       f"type or torch builds another base; expect {expected_spread()}"}
