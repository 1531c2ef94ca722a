"""The documented tiny bases: their records stay the default recipe's, and a build says whether it is one of them."""

# tests/ is on sys.path (rootdir conftest): one way to compose the shipped configs, test_config's
from test_config import _compose

from lutra.config import to_object
from lutra.policy.tiny_bases import BASES, compare, expected_spread
from lutra.policy.tiny_cache import recipe_fingerprint


def _default_cfg(overrides=()):
    return to_object(_compose(overrides))


def test_every_record_is_the_default_recipe():
    cfg = _default_cfg()
    for b in BASES:
        got = recipe_fingerprint(cfg.model, cfg.benchmark, b.warm_start_dtype)
        assert got == b.recipe, (
            f"the default tiny recipe changed ({b.name}: recorded {b.recipe}, now {got}): rebuild the bases, measure "
            "the loop on them and record them again in lutra/policy/tiny_bases.py (and the README's Results)")
    # `auto` resolves per CPU, so the recipe follows the arithmetic, not the config's spelling
    assert recipe_fingerprint(cfg.model, cfg.benchmark, "float32") == recipe_fingerprint(
        _default_cfg(["model.tiny.warm_start_dtype=float32"]).model, cfg.benchmark, "float32")


def test_an_override_makes_the_recipe_undocumented():
    cfg = _default_cfg(["model.tiny.warm_start_seed=1"])
    recipe = recipe_fingerprint(cfg.model, cfg.benchmark, "bfloat16")
    assert recipe not in {b.recipe for b in BASES}
    got = compare({"weights_sha256": BASES[0].weights_sha256}, recipe)
    assert got["status"] == "undocumented" and got["name"] is None  # even with a recorded digest: not that recipe


def test_a_recorded_digest_matches_and_names_its_numbers():
    b = BASES[1]
    got = compare({"weights_sha256": b.weights_sha256, "cpu_capability": "AVX2", "warm_start_dtype": "float32",
                   "torch": b.torch}, b.recipe)
    assert got["status"] == "match" and got["name"] == b.name
    assert f"round-0 EX {b.round0_ex}%" in got["message"] and "+7.9 +- 0.9" in got["message"]  # 7.6, 9.0, 7.2


def test_another_digest_of_the_same_recipe_differs_and_says_what_to_expect():
    b = BASES[0]
    build = {"weights_sha256": "0" * 64, "cpu_capability": "AVX2", "warm_start_dtype": "bfloat16", "threads": 2,
             "torch": "2.11.0+cu128"}
    got = compare(build, b.recipe)
    assert got["status"] == "differs" and got["name"] is None
    assert "AVX2 bfloat16 2 threads torch 2.11.0+cu128" in got["message"] and expected_spread() in got["message"]
    assert "AVX512 bfloat16 1/2 threads torch 2.13.0+cpu" in got["message"]  # what was recorded, threads included
    # the spread is over every measured base: 12 runs on 4 recorded bases and 2 warm-start seeds
    assert "+13.5 +- 5.8" in expected_spread() and "from +7.2 to +23.8 over 14 runs on 6" in expected_spread()


def test_a_float32_build_names_its_thread_count():
    avx2 = [b for b in BASES if b.cpu_capability == "AVX2"]
    assert sorted(b.threads for b in avx2) == [(1,), (2,)] and len({b.weights_sha256 for b in avx2}) == 2
    got = compare({"weights_sha256": "f" * 64, "cpu_capability": "AVX2", "warm_start_dtype": "float32", "threads": 4,
                   "torch": "2.13.0+cpu"}, avx2[0].recipe)
    assert got["status"] == "differs" and "this build: AVX2 float32 4 threads torch 2.13.0+cpu" in got["message"]
    assert "AVX2 float32 1 thread torch" in got["message"] and "AVX2 float32 2 threads torch" in got["message"]


def test_records_are_well_formed():
    assert len({b.weights_sha256 for b in BASES}) == len(BASES)
    for b in BASES:
        assert len(b.weights_sha256) == 64 and int(b.weights_sha256, 16) >= 0
        assert len(b.gains) == 3 and 35.0 <= b.round0_ex <= 55.0
        assert b.stop_step % 50 == 0
        assert b.threads and all(t >= 1 for t in b.threads)
