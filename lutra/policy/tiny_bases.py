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
    threads: tuple[int, ...]  # torch threads of the builds that gave this digest (float32 reductions split by thread)
    stop_step: int
    round0_ex: float
    gains: tuple[float, ...]  # eval EX after 4 rounds minus round 0, codelutra defaults, loop seeds 0, 1, 2


BASES = (
    DocumentedBase("avx512 (AVX512-BF16 CPU), bf16 autocast", "4bfdab56f127",
                   "3ae60466e8bb894ba2c40b27c64a52b2e7a28bc0b94131970db2891bc6539d91", "2.13.0+cpu", "AVX512",
                   "bfloat16", (1, 2), 450, 41.6, (13.0, 12.8, 14.2)),
    DocumentedBase("avx2 (simulated on the AVX512 CPU, 1 thread), float32", "4d78bee87c7d",
                   "67d7bfd2e21bd5e5e0b111f80561107fc6ea039cb4860849b79be10ec91561bb", "2.13.0+cpu", "AVX2",
                   "float32", (1,), 500, 45.4, (7.6, 9.0, 7.2)),
    # 2 threads split the avx2 path's float32 reductions differently: another base (the one a 2-core AVX2 machine's
    # default command builds, if its kernels are the simulated ones), reproduced on two machines of this type
    DocumentedBase("avx2 (simulated on the AVX512 CPU, 2 threads), float32", "4d78bee87c7d",
                   "3aaa1568a3b047c3a53f4603cb81bf9a5091d3a0d229d61d2147b0a69fdffeaa", "2.13.0+cpu", "AVX2",
                   "float32", (2,), 550, 43.4, (22.6, 23.4, 23.8)),
    DocumentedBase("default / SSE4.2 (simulated on the AVX512 CPU, 1 or 2 threads), float32", "4d78bee87c7d",
                   "47d4ceafbcb6195f73420398ed2f9dcdd032c66d3d385c12852574121e0fb58e", "2.13.0+cpu", "DEFAULT",
                   "float32", (1, 2), 550, 44.8, (10.2, 11.8, 10.6)),
)
OTHER_SEED_GAINS = (14.2, 8.0)
"""Warm-start seeds 1 and 2 of the avx512 recipe (loop seed 0): also bases a user may get, so part of the spread."""


def _pm(xs) -> str:
    return f"{statistics.mean(xs):+.1f} +- {statistics.stdev(xs):.1f}" if len(xs) > 1 else f"{xs[0]:+.1f}"


def _threads(t) -> str:
    return "/".join(map(str, t)) + (" thread" if tuple(t) == (1,) else " threads")


def expected_spread() -> str:
    gains = [g for b in BASES for g in b.gains] + list(OTHER_SEED_GAINS)
    return (f"round-0 EX about 35-55% and a 4-round gain of {_pm(gains)} EX "
            f"(from {min(gains):+.1f} to {max(gains):+.1f} over {len(gains)} runs on {len(BASES) + len(OTHER_SEED_GAINS)} "
            f"measured bases, README Results)")


def compare(build: dict, recipe: str, bases=BASES) -> dict:
    """build: lutra_build.json's fields (weights_sha256, cpu_capability, warm_start_dtype, threads, torch).

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
    seen = "; ".join(f"{b.cpu_capability} {b.warm_start_dtype} {_threads(b.threads)} torch {b.torch}" for b in same_recipe)
    this = (f"{build.get('cpu_capability')} {build.get('warm_start_dtype')} {_threads([build.get('threads', '?')])} "
            f"torch {build.get('torch')}")
    return {"status": "differs", "name": None,
            "message": f"not a documented base: weights_sha256 {str(build.get('weights_sha256'))[:12]} differs from "
                       f"the {len(same_recipe)} recorded for this recipe ({seen}; this build: {this}). Another CPU "
                       f"type, thread count (float32) or torch builds another base; expect {expected_spread()}"}
