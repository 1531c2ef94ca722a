"""The tiny bases lutra ships: the default recipe and the smoke preset find theirs, the files are checked by sha256
before anything loads them, a changed recipe builds its own, and a rebuild says whether it is bit-identical."""

import json
import shutil

import pytest

# tests/ is on sys.path (rootdir conftest): one way to compose the shipped configs, test_config's
from test_config import _compose

from lutra.config import to_object
from lutra.policy import shipped
from lutra.policy.tiny_cache import cache_key

LIMIT_MIB = 20  # the package's model assets, all shipped bases together


def _cfg(overrides=()):
    return to_object(_compose(overrides))


@pytest.mark.parametrize(("overrides", "name"), [((), "mini_sql-tiny"), (("+preset=smoke",), "mini_sql-tiny-smoke")])
def test_the_default_recipe_and_the_smoke_preset_have_a_shipped_base(overrides, name):
    cfg = _cfg(overrides)
    path = shipped.find(cfg.model, cfg.benchmark)
    assert path is not None and path.name == name, (
        f"the recipe of {overrides or 'the default'} changed (cache key {cache_key(cfg.model, cfg.benchmark)}) and "
        f"lutra/bases/ has no base for it: build it, ship it (python -m lutra.policy.shipped), measure the loop "
        f"from it and update the README's Results")
    record = shipped.verify(path)
    assert record["shipped"]["cache_key"] == cache_key(cfg.model, cfg.benchmark)
    assert record["warm_start_seed"] == 0 and record["threads"] == 2  # the shipping rule (lutra.policy.shipped)


def test_shipped_bases_stay_small_and_in_safetensors():
    total = sum(f.stat().st_size for f in shipped.BASES_DIR.rglob("*") if f.is_file())
    assert total <= LIMIT_MIB * 2**20, total
    for key, path in shipped.shipped_bases().items():
        files = json.loads((path / "lutra_build.json").read_text())["shipped"]["files"]
        assert "model.safetensors" in files and "tokenizer.json" in files and "config.json" in files, path
        assert not list(path.glob("*.bin")) and len(key) == 12


def test_an_override_of_the_recipe_or_shipped_false_builds_instead():
    assert shipped.find(_cfg(["model.tiny.warm_start_seed=1"]).model, _cfg().benchmark) is None
    cfg = _cfg(["model.tiny.shipped=false"])
    assert shipped.find(cfg.model, cfg.benchmark) is None
    # `shipped` picks where the base comes from, not what the recipe builds: the same cache key either way
    assert cache_key(cfg.model, cfg.benchmark) == cache_key(_cfg().model, _cfg().benchmark)


def test_a_damaged_or_missing_file_is_refused_by_name(tmp_path):
    src = shipped.BASES_DIR / "mini_sql-tiny-smoke"
    bad = tmp_path / "bases" / "b"
    shutil.copytree(src, bad)
    shipped.verify(bad)  # an intact copy passes
    shipped._verified.clear()
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (bad / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(shipped.ShippedBaseError, match=r"model\.safetensors has sha256 .* its record says"):
        shipped.verify(bad)
    shutil.copy(src / "model.safetensors", bad / "model.safetensors")
    (bad / "tokenizer.json").unlink()
    with pytest.raises(shipped.ShippedBaseError, match=r"tokenizer\.json is missing"):
        shipped.verify(bad)


def test_a_rebuild_is_compared_with_the_shipped_base():
    cfg = _cfg()
    key = cache_key(cfg.model, cfg.benchmark)
    ref = json.loads((shipped.BASES_DIR / "mini_sql-tiny" / "lutra_build.json").read_text())
    same = shipped.compare({"weights_sha256": ref["shipped"]["weights_sha256"]}, key)
    assert same["status"] == "identical" and same["shipped"] == "mini_sql-tiny"
    other = shipped.compare({"weights_sha256": "0" * 64, "cpu_capability": "AVX512", "warm_start_dtype": "bfloat16",
                             "threads": 4, "torch": "2.11.0+cu128"}, key)
    assert other["status"] == "differs" and "AVX512 bfloat16 4 threads torch 2.11.0+cu128" in other["message"]
    assert "still loads the shipped one" in other["message"]
    # a base shipped in bf16 is compared by the rebuild's bf16-rounded digest
    smoke = _cfg(["+preset=smoke"])
    sref = json.loads((shipped.BASES_DIR / "mini_sql-tiny-smoke" / "lutra_build.json").read_text())
    assert sref["shipped"]["dtype"] == "bfloat16"
    got = shipped.compare({"weights_sha256_bfloat16": sref["shipped"]["weights_sha256"]},
                          cache_key(smoke.model, smoke.benchmark))
    assert got["status"] == "identical"
    assert shipped.compare({"weights_sha256": "0" * 64}, "0" * 12)["status"] == "unshipped"


def test_the_loop_loads_the_shipped_base_with_from_pretrained(tmp_path, monkeypatch):
    """ensure_tiny returns the shipped directory (no build: LUTRA_MODELS stays empty) and transformers loads it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lutra.policy.models import resolve_path
    from lutra.policy.tiny import ensure_tiny, weights_sha256

    monkeypatch.setenv("LUTRA_MODELS", str(tmp_path / "models"))
    cfg = _cfg(["+preset=smoke"])
    path = ensure_tiny(cfg)
    assert path == shipped.BASES_DIR / "mini_sql-tiny-smoke" and resolve_path(cfg.model, cfg.benchmark) == str(path)
    assert not (tmp_path / "models").exists()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path)
    assert weights_sha256(model) == shipped.verify(path)["shipped"]["weights_sha256"]
    assert tok.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True, tokenize=False)


def test_prepare_model_tiny_rebuilds_and_says_how_it_compares(tmp_path):
    """`python -m lutra.prepare model=tiny benchmark=mini_sql` with a small recipe (the default's rebuild takes
    minutes: the slow tests/test_tiny_build.py builds it): it builds into the cache and says it has no shipped base."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    small = ["model.tiny.vocab_size=400", "model.tiny.hidden_size=32", "model.tiny.intermediate_size=64",
             "model.tiny.num_layers=1", "model.tiny.num_heads=2", "model.tiny.num_kv_heads=1",
             "model.tiny.warm_start_steps=2", "model.tiny.warm_start_batch_size=4", "benchmark.n_warmup=100"]
    env = {**os.environ, "LUTRA_MODELS": str(tmp_path / "models")}
    p = subprocess.run([sys.executable, "-m", "lutra.prepare", "model=tiny", "benchmark=mini_sql",
                        f"benchmark.data_dir={tmp_path / 'data'}", *small], cwd=root, env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "tiny base rebuilt from the recipe into" in p.stdout and "no shipped base for this recipe" in p.stdout
    (build,) = (tmp_path / "models").glob("tiny-mini_sql-*/lutra_build.json")
    assert json.loads(build.read_text())["against_shipped"]["status"] == "unshipped"
