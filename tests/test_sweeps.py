"""Every sweep under sweeps/ composes, and every job it expands to validates; one job runs in the fast suite,
one job of each sweep (and a small Optuna study) in the slow one, all on the reduced embedded default."""

import importlib.util
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict

from lutra.config import register_configs, to_object

ROOT = Path(__file__).resolve().parents[1]
CONF, SWEEPS = ROOT / "conf", ROOT / "sweeps"
SWEEP_FILES = sorted(SWEEPS.rglob("*.yaml"))
def _has(module: str) -> bool:
    try:  # find_spec raises when the parent package (hydra_plugins) is not installed at all
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


HAS_OPTUNA = _has("hydra_plugins.hydra_optuna_sweeper")
register_configs()

# The reduced embedded default of tests/test_loop.py (tiny warm start, few problems, gold-as-chosen so a round
# always has pairs), with a step logged every step so logs/metrics.csv has rows for the report.
REDUCED = [
    "benchmark=mini_sql", "model=tiny", "benchmark.n_train=16", "benchmark.n_eval=16", "benchmark.n_warmup=200",
    "model.tiny.warm_start_steps=8", "model.tiny.warm_start_lr=1e-2", "model.tiny.hidden_size=64",
    "model.tiny.intermediate_size=128",
    "model.tiny.num_layers=2", "model.tiny.num_heads=4", "model.tiny.num_kv_heads=2", "model.tiny.vocab_size=600",
    "method.samples_per_problem=3", "method.gold_as_chosen=true", "method.batch_size=8",
    "method.max_steps_per_round=3", "model.max_completion_len=24", "trainer=cpu", "logger=csv",
    "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "rounds=1",
]


def shared_cache(tmp_path_factory) -> Path:
    """One model + data cache for every test of the session: the tiny model is built once."""
    d = tmp_path_factory.getbasetemp() / "lutra-cache"
    d.mkdir(exist_ok=True)
    return d


def lutra(cache: Path, *args, env=None, timeout=600, check=True):
    """Run `python -m lutra.train ARGS` (or another module) from the repo root with the shared caches."""
    cmd = [sys.executable, "-m", *args]
    e = {**os.environ, "LUTRA_MODELS": str(cache / "models"), "OMP_NUM_THREADS": "1", **(env or {})}
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=e, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd[:6])} ... exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def reduced(cache: Path) -> list[str]:
    return [*REDUCED, f"benchmark.data_dir={cache / 'data'}"]


def _compose(name: str, overrides=()):
    with initialize_config_dir(config_dir=str(SWEEPS), version_base="1.3"):
        return compose(config_name=name, overrides=[f"hydra.searchpath=[file://{CONF}]", *overrides],
                       return_hydra_config=True)


def expand(params) -> list[list[str]]:
    """The jobs a basic sweeper launches for `hydra.sweeper.params` (Hydra's own override parser)."""
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    axes = [[f"{o.key_or_group}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
            else [f"{o.key_or_group}={o.get_value_element_as_str()}"] for o in parsed]
    return [list(job) for job in itertools.product(*axes)]


def is_optuna(path: Path) -> bool:
    return "hydra/sweeper: optuna" in path.read_text()


def _needs_plugin(path: Path):
    if is_optuna(path) and not HAS_OPTUNA:
        pytest.skip("hydra-optuna-sweeper not installed (pip install -e '.[sweeps]')")


def test_enough_sweeps_are_shipped():
    names = {p.stem for p in SWEEP_FILES}
    assert len(SWEEP_FILES) >= 9, names  # found recursively: a new sweep is composed below without editing this
    for required in ("main_table", "loss_ablation", "nll_weight", "beta", "train_size", "samples_per_problem",
                     "reference", "rounds", "optuna_beta_nll"):
        assert required in names
    for p in SWEEP_FILES:  # the header says how to launch it
        assert f"python -m lutra.train -m -cd sweeps -cn {p.stem}" in p.read_text(), p


def covering_jobs(params) -> list[list[str]]:
    """The first job, then each other value of each swept key with the rest at their first values: every value of
    the sweep is composed once (the full product of the main table would be 18 compositions for the same checks)."""
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    axes = [[f"{o.key_or_group}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
            else [f"{o.key_or_group}={o.get_value_element_as_str()}"] for o in parsed]
    first = [a[0] for a in axes]
    return [first] + [first[:i] + [v] + first[i + 1:] for i, a in enumerate(axes) for v in a[1:]]


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_every_value_of_every_sweep_composes_and_validates(path):
    _needs_plugin(path)
    name = path.stem
    cfg = _compose(name)
    h = cfg.hydra
    assert cfg.logger.group == name  # one wandb group per sweep
    assert h.sweep.dir.startswith(f"outputs/sweeps/{name}")
    params = OmegaConf.to_container(h.sweeper.params)
    assert params, "a sweep sweeps something"
    if is_optuna(path):
        assert h.sweeper.direction == "maximize"
        jobs = [[f"{k}=0.1" for k in params]]  # a point of the search space: the schema checks the keys
    else:
        jobs = covering_jobs(params)
        assert len(jobs) >= 2
    subdirs = []
    for job in jobs:
        c = _compose(name, job)
        if not is_optuna(path):
            subdirs.append(c.hydra.sweep.subdir)  # resolves ${method.name}, ${seed}, ... for this job
        with open_dict(c):
            del c["hydra"]
            c.run_dir = "/tmp/lutra-test-run"
        typed = to_object(c)
        assert OmegaConf.select(c, "logger.job_type") == typed.method.name  # job_type per method
    # every swept value changes the run directory's name: no two jobs of the sweep share a run directory
    assert len(set(subdirs)) == len(subdirs), subdirs


def test_sweep_sizes_match_their_headers():
    sizes = {p.stem: len(expand(OmegaConf.to_container(_compose(p.stem).hydra.sweeper.params)))
             for p in SWEEP_FILES if not is_optuna(p)}
    assert sizes["loss_ablation"] == 18 and sizes["main_table"] == 18 and sizes["reference"] == 6
    methods = {j[0] for j in expand(OmegaConf.to_container(_compose("loss_ablation").hydra.sweeper.params))}
    assert methods == {f"method={m}" for m in ("codelutra", "dpo", "sft", "sft_gold", "sft_gold_epoch", "nll_only")}


def test_baseline_methods_isolate_one_change():
    def method(name):
        c = _compose("loss_ablation", [f"method={name}"])
        with open_dict(c):
            del c["hydra"]
            c.run_dir = "/tmp/x"
        return OmegaConf.to_container(c.method)

    def diff(a, b):
        return {k for k in a if a[k] != b[k]} - {"name"}

    assert diff(method("nll_only"), method("codelutra")) == {"dpo_weight"}
    assert method("nll_only")["dpo_weight"] == 0 and method("nll_only")["nll_weight"] == 1
    assert diff(method("sft_gold"), method("sft")) == {"sft_data", "epochs_per_round", "max_steps_per_round"}
    assert diff(method("sft_gold_epoch"), method("sft")) == {"sft_data"}
    assert method("sft_gold_epoch")["epochs_per_round"] == 1 and method("sft_gold_epoch")["max_steps_per_round"] is None


def _check_run(run_dir: Path, rounds: int = 1) -> dict:
    m = json.loads((run_dir / "manifest.json").read_text())
    for k in range(1, rounds + 1):
        assert f"round_{k}/evaluate" in m["stages"] and f"round_{k}/train" in m["stages"], sorted(m["stages"])
    assert (run_dir / "rounds.csv").read_text().count("\n") == rounds + 2  # header, round 0 (base), rounds 1..k
    return m


def test_one_sweep_job_runs_through_hydra_multirun(tmp_path, tmp_path_factory):
    """The reference sweep's base-reference job, launched by Hydra's basic sweeper (-m) on the reduced default."""
    cache = shared_cache(tmp_path_factory)
    sweep_dir = tmp_path / "sweep"
    p = lutra(cache, "lutra.train", "-m", "-cd", "sweeps", "-cn", "reference", f"hydra.sweep.dir={sweep_dir}",
              "method.reference=base", "seed=0", *reduced(cache))
    assert "Launching 1 jobs locally" in p.stdout + p.stderr
    run = sweep_dir / "ref-base-s0"
    m = _check_run(run)
    assert m["config"]["method"]["reference"] == "base" and m["config"]["logger"]["group"] == "reference"
    assert m["stages"]["round_1/ref_logps"]["pairs"] > 0
    multirun = yaml.safe_load((sweep_dir / "multirun.yaml").read_text())
    assert multirun["hydra"]["sweeper"]["params"]["method.reference"] == "previous,base"


def _first_job(path: Path) -> list[str]:
    job = expand(OmegaConf.to_container(_compose(path.stem).hydra.sweeper.params))[0]
    # the paper's benchmarks and 7-8B models do not run on a CPU test: the tiny default stands in (REDUCED)
    return [o for o in job if o.split("=")[0] not in ("benchmark", "model")]


@pytest.mark.slow
@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_one_job_of_each_sweep_runs(path, tmp_path, tmp_path_factory):
    _needs_plugin(path)
    cache = shared_cache(tmp_path_factory)
    sweep_dir = tmp_path / "sweep"
    if is_optuna(path):  # one small study: 2 trials, the best written to optimization_results.yaml
        lutra(cache, "lutra.train", "-m", "-cd", "sweeps", "-cn", path.stem, f"hydra.sweep.dir={sweep_dir}",
              "hydra.sweeper.n_trials=2", *reduced(cache))
        best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
        assert set(best["best_params"]) == {"method.beta", "method.nll_weight"}
        assert 0 <= best["best_value"] <= 100
        for trial in ("trial0", "trial1"):
            _check_run(sweep_dir / trial)
        return
    job = _first_job(path)
    lutra(cache, "lutra.train", "-m", "-cd", "sweeps", "-cn", path.stem, f"hydra.sweep.dir={sweep_dir}", *job,
          *reduced(cache))
    runs = [d for d in sweep_dir.iterdir() if (d / "manifest.json").exists()]
    assert len(runs) == 1, runs
    m = _check_run(runs[0])
    assert m["config"]["logger"]["group"] == path.stem
