"""Every shipped config composes and validates; bad values fail before any model loads, naming the key."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import open_dict

from lutra.config import ConfigError, register_configs, to_object

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
GROUPS = ("benchmark", "model", "method", "trainer", "logger")
register_configs()


def _compose(overrides=(), name="train"):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.run_dir = "/tmp/lutra-test-run"  # the ${hydra:...} interpolation needs a live HydraConfig
        del cfg["hydra"]
    return cfg


def shipped_group_options():
    files = sorted(p for p in CONF.rglob("*.yaml") if p.parent != CONF)
    return [(p.parent.relative_to(CONF).as_posix(), p.stem) for p in files]


def test_enough_configs_are_shipped():
    opts = shipped_group_options()
    assert len(opts) >= 13, opts  # found recursively: a new file is composed below without editing this test
    for g in GROUPS:
        assert any(grp == g for grp, _ in opts), f"no config in conf/{g}/"


@pytest.mark.parametrize(("group", "option"), shipped_group_options())
def test_every_group_option_composes_and_validates(group, option):
    if group not in GROUPS:
        pytest.skip(f"conf/{group} is composed by its own entry point's test")
    cfg = _compose([f"{group}={option}"])
    typed = to_object(cfg)
    assert getattr(typed, group) is not None


def test_default_is_the_embedded_benchmark():
    typed = to_object(_compose())
    assert (typed.benchmark.name, typed.model.name, typed.method.name) == ("mini_sql", "tiny", "codelutra")
    assert typed.trainer.accelerator == "auto" and typed.logger.name == "csv"


@pytest.mark.parametrize(("override", "key"), [
    ("method.beta=0", "method.beta"),
    ("method.beta=-1", "method.beta"),
    ("method.samples_per_problem=0", "method.samples_per_problem"),
    ("method.nll_weight=-0.5", "method.nll_weight"),
    ("method.replay_rounds=-1", "method.replay_rounds"),
    ("method.nll_reduction=mean", "method.nll_reduction"),
    ("method.temperature=0", "method.temperature"),
    ("method.reference=ref", "method.reference"),
    ("model.lora_r=0", "model.lora_r"),
    ("model.dtype=fp8", "model.dtype"),
    ("benchmark.comparison=fuzzy", "benchmark.comparison"),
    ("benchmark.timeout_s=0", "benchmark.timeout_s"),
    ("rounds=-1", "rounds"),
])
def test_out_of_range_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        to_object(_compose([override]))


@pytest.mark.parametrize("override", ["method.bta=0.1", "model.lora_rank=8", "benchmark.n_trian=5", "sed=1"])
def test_misspelt_keys_fail_at_composition(override):
    with pytest.raises(ConfigCompositionException) as e:
        _compose([override])
    assert override.split("=")[0].split(".")[-1] in str(e.value.__cause__ or e.value)


def test_wrong_type_fails_at_composition():
    with pytest.raises(ConfigCompositionException):
        _compose(["method.beta=abc"])


def test_unknown_group_option_fails():
    with pytest.raises(ConfigCompositionException):
        _compose(["method=codelutraa"])


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF / "preset").glob("*.yaml")))
def test_every_preset_composes_and_validates(preset):
    typed = to_object(_compose([f"+preset={preset}"]))
    assert typed.rounds >= 1 and typed.method is not None


@pytest.mark.parametrize("method", ["codelutra", "sft", "sft_gold"])
def test_pretrained_recipe_bootstraps_every_method_alike(method):
    """conf/preset/smollm2_sql.yaml: a method chosen on the command line keeps the preset's bootstrap round and its
    optimizer settings, so codelutra, sft and sft_gold start their own rounds from one adapter."""
    typed = to_object(_compose([f"method={method}", "+preset=smollm2_sql"]))
    assert typed.model.name == "smollm2_135m" and typed.method.name == method
    assert (typed.method.bootstrap_rounds, typed.method.bootstrap_steps) == (1, 16)
    assert (typed.method.lr, typed.method.bootstrap_lr) == (1.0e-4, 5.0e-4)
    assert (typed.method.batch_size, typed.method.samples_per_problem) == (8, 4)
    assert typed.rounds > typed.method.bootstrap_rounds  # the method has rounds of its own
