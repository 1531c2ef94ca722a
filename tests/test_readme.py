"""The README cannot drift from the code: its group table is `python -m lutra.train --help`'s groups and the config
store's options, every `python -m lutra.train` line it shows composes and validates, every relative link in it and
in docs/ points at a file that exists, and it stays a guide (at most ~250 lines), not a lab notebook."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from lutra import cli_help
from lutra.config import CONF_DIR, register_configs, to_object

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
MAX_LINES = 250


def readme_groups() -> dict[str, tuple[list[str], str | None, str]]:
    """{group: (options in the order shown, the one marked (default), what it sets)} from the README's table."""
    out = {}
    for line in README.splitlines():
        m = re.match(r"^\| `(\+?\w+)` \| (.+?) \| (.+?) \|$", line)
        if m:
            group, cell, what = m.groups()
            options = re.findall(r"`([\w./-]+)`", cell)
            default = re.findall(r"`([\w./-]+)` \(default\)", cell)
            out[group] = (options, default[0] if default else None, what)
    return out


def help_groups() -> dict[str, tuple[list[str], str | None, str]]:
    """The same, parsed from the text `python -m lutra.train --help` prints."""
    from lutra.train import HELP

    text = cli_help.render(HELP, [], width=200)
    section = text.split("Config groups", 1)[1].split("\nKeys", 1)[0]
    out, group = {}, None
    for line in section.splitlines():
        if m := re.match(r"^  (\+?\w+): (.*)$", line):
            group = m.group(1)
            out[group] = ([], None, m.group(2).strip())
        elif group and (m := re.match(r"^    ([ *])(\w+)", line)):
            out[group][0].append(m.group(2))
            if m.group(1) == "*":
                out[group] = (out[group][0], m.group(2), out[group][2])
    return out


def store_options(group: str) -> list[str]:
    """Options of a group as Hydra's config loader sees them (YAML files + ConfigStore), without lutra's schemas."""
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        names = GlobalHydra.instance().config_loader().get_group_options(group)
    return sorted(n for n in names if not n.endswith("_schema"))


def test_group_table_is_the_helps_and_the_config_stores():
    ours, theirs = readme_groups(), help_groups()
    assert len(ours) >= 6, f"the README's group table was not found or lost rows: {sorted(ours)}"
    assert list(ours) == list(theirs), "the README's groups differ from --help's (order included)"
    for group, (options, default, what) in ours.items():
        h_options, h_default, h_what = theirs[group]
        assert sorted(options) == sorted(h_options) == store_options(group.lstrip("+")), group
        assert len(options) == len(set(options)), f"{group}: an option listed twice"
        assert default == h_default, f"{group}: the README marks {default} as default, --help {h_default}"
        assert what == h_what, f"{group}: 'what it sets' should read as --help does: {h_what!r}"


def readme_train_commands() -> list[list[str]]:
    """Arguments of every `python -m lutra.train` in the README's bash blocks (a sweep's first value; -cd ones
    compose another config dir and are skipped)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&|;", line.split(" #", 1)[0]):
                words = shlex.split(part)  # also under a launcher: torchrun ... -m lutra.train, srun ... python -m
                at = next((i + 2 for i in range(len(words) - 1) if words[i:i + 2] == ["-m", "lutra.train"]), None)
                if at is None or "-cd" in words:
                    continue
                args, skip, sweep = [], False, "-m" in words[at:]
                for w in words[at:]:
                    if skip or w.startswith("-"):
                        skip = w == "--cfg"
                        continue
                    key, _, value = w.partition("=")
                    args.append(f"{key}={value.split(',')[0]}" if sweep else w)
                commands.append(args)
    return commands


def test_the_readme_shows_train_commands():
    assert len(readme_train_commands()) >= 8


@pytest.mark.parametrize("args", readme_train_commands(), ids=lambda a: " ".join(a) or "(defaults)")
def test_every_readme_train_command_composes_and_validates(args):
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=args)
    with open_dict(cfg):
        cfg.run_dir = "/tmp/lutra-test-run"
    to_object(cfg)


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), ROOT / "bench" / "README.md"]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        if not (path.parent / target.split("#", 1)[0]).exists():
            broken.append(target)
    assert not broken, f"{path.relative_to(ROOT)} links to missing files: {broken}"


def test_readme_stays_a_guide():
    n = len(README.splitlines())
    assert n <= MAX_LINES, f"README.md has {n} lines: move the record to docs/results/ (the README keeps one table a question)"
    for section in ("## Set-up", "## What the run prints", "## Usage", "## Real benchmarks", "## GPUs",
                    "## Architecture", "## Results", "## Performance", "## Tests"):
        assert section in README, section


def test_ci_runs_the_readmes_test_command():
    first = re.search(r"```bash\n(.*?)\n```", README, flags=re.S).group(1)
    assert "python -m pytest" in first and "python -m lutra.prepare model=smollm2_135m" in first
    ci = (ROOT / ".ci" / "run").read_text()
    assert f"{first} || status=$?" in ci, ".ci/run must run the README's first command verbatim"
