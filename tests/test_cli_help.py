"""Each command's --help says what it does, lists its own groups and keys with their docstrings, and examples."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def helptext(cmd: str, *args: str) -> str:
    p = subprocess.run([sys.executable, "-m", f"lutra.{cmd}", *args, "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.mark.parametrize("cmd", ["train", "evaluate", "prepare"])
def test_help_has_no_schema_entries_and_has_examples(cmd):
    text = helptext(cmd)
    assert "_schema" not in text and "powered by Hydra" not in text
    assert text.startswith(f"lutra.{cmd}: ")
    assert f"usage: python -m lutra.{cmd}" in text
    examples = text.split("Examples:\n", 1)[1]
    assert f"python -m lutra.{cmd}" in examples


def test_train_help_documents_keys_from_config_docstrings():
    from lutra.cli_help import field_docs
    from lutra.config import MethodConfig, TrainConfig

    text = " ".join(helptext("train").split())  # docstrings are wrapped to the terminal
    assert "Round 0 evaluates the base model" in text
    for group in ("benchmark:", "model:", "method:", "trainer:", "logger:", "+preset:"):
        assert group in text, group
    assert "*codelutra" in text and "smoke" in text
    assert f"rounds=4 {field_docs(TrainConfig)['rounds']}" in text
    assert f"method.nll_weight=1.0 {field_docs(MethodConfig)['nll_weight']}" in text
    assert "model.tiny.warm_start_steps=900" in text


def test_help_follows_the_command_line_overrides():
    text = helptext("train", "model=llama3_8b", "method=dpo")
    assert "model.path=meta-llama/Meta-Llama-3-8B-Instruct" in text and "method.nll_weight=0.0" in text
    assert "*llama3_8b" in text and "*dpo" in text


def test_evaluate_help_lists_only_its_groups_and_keys():
    text = " ".join(helptext("evaluate").split())
    assert "benchmark:" in text and "model:" in text
    assert "method:" not in text and "trainer:" not in text and "logger:" not in text
    assert "predictions=null JSONL file of" in text and "subset=false" in text and "adapter=null" in text


def test_prepare_help_shows_archives_and_what_is_verified():
    text = " ".join(helptext("prepare", "benchmark=bird").split())
    assert "benchmark:" in text and "method:" not in text and "trainer:" not in text
    assert "allow_unverified=false" in text and "archives=null" in text
    assert "dev" in text and "mini_dev" in text and "unverified" in text


def test_help_with_a_bad_override_is_one_line():
    p = subprocess.run([sys.executable, "-m", "lutra.train", "method=nope", "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "method" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
