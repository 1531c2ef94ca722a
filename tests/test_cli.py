"""The entry point behaves as Hydra users expect: --help, --cfg job, and exit code 2 for bad values."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lutra_train(*args):
    return subprocess.run([sys.executable, "-m", "lutra.train", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_help_lists_groups_and_examples():
    p = lutra_train("--help")
    assert p.returncode == 0
    for text in ("Config groups", "method:", "*codelutra", "model:", "llama3_8b", "trainer:", "*auto",
                 "python -m lutra.train benchmark=bird model=llama3_8b", "+preset:", "smoke"):
        assert text in p.stdout, text
    assert "_schema" not in p.stdout  # the ConfigStore entries that type-check the YAML are no options


def test_cfg_job_prints_composed_config_without_running(tmp_path):
    p = lutra_train("method=dpo", "seed=3", f"hydra.run.dir={tmp_path / 'never'}", "--cfg", "job")
    assert p.returncode == 0
    assert "name: dpo" in p.stdout and "nll_weight: 0.0" in p.stdout and "seed: 3" in p.stdout
    assert not (tmp_path / "never").exists()


def test_out_of_range_value_exits_2_naming_key(tmp_path):
    p = lutra_train("method.samples_per_problem=0", f"hydra.run.dir={tmp_path / 'run'}")
    assert p.returncode == 2 and "method.samples_per_problem" in p.stdout + p.stderr
