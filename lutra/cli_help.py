"""`--help` of lutra's commands: what the command does, its config groups with one line per option, every key it
reads with its current value and the docstring of its dataclass field (lutra/config/), and examples.

Hydra's own `--help` lists every group under conf/ (evaluate and prepare read two of them), the `*_schema`
entries lutra registers to type-check the YAML, and never a key's meaning. This one is composed with the command
line's overrides, so `python -m lutra.train model=llama3_8b --help` shows llama3_8b's values. `--hydra-help` is
still Hydra's.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import shutil
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from lutra.config import CONF_DIR

HELP_FLAGS = ("--help", "-h")


@dataclass
class Command:
    name: str
    """Module name, e.g. lutra.train."""
    config_name: str
    """The YAML under conf/ it composes (train, evaluate, prepare)."""
    summary: str
    schema: type
    """The command's top-level dataclass; its fields that are dataclasses are the config groups."""
    groups: dict[str, str] = field(default_factory=dict)
    """Group -> what choosing an option sets (the groups this command reads)."""
    register: Callable[[], None] | None = None
    """Registers the schemas in Hydra's ConfigStore before composing."""
    notes: str | Callable[[dict], str] = ""
    """Closing paragraphs (newline-separated); a callable gets the composed config."""


def requested(argv: list[str]) -> bool:
    return any(a in HELP_FLAGS for a in argv)


@cache
def field_docs(cls: type) -> dict[str, str]:
    """{field: docstring} from the string literal right under each field in the class body (not kept at runtime)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for stmt, nxt in zip(body, body[1:]):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def _options(group: str) -> list[tuple[str, str]]:
    """(option, the first sentence of its YAML's header comment) for every conf/<group>/*.yaml."""
    out = []
    for path in sorted(Path(CONF_DIR, group).glob("*.yaml")):
        head = []
        for ln in path.read_text().splitlines():
            if not ln.startswith("#") or ln.startswith("#   ") or ln.startswith("# @") or not ln[1:].strip():
                if head:
                    break
                continue
            head.append(ln[1:].strip())
        text = " ".join(head)
        end = re.search(r"(?<!\bal)(?<!e\.g)(?<!i\.e)(?<!\bvs)\.(\s|$)", text)
        out.append((path.stem, text[: end.start() + 1] if end else text))
    return out


def _examples(config_name: str) -> list[str]:
    """The `python -m lutra...` example lines of conf/<config_name>.yaml's header comment."""
    lines = Path(CONF_DIR, f"{config_name}.yaml").read_text().splitlines()
    return [ln.lstrip("# ").rstrip() for ln in lines if ln.lstrip("# ").startswith("python -m lutra.")]


def _value(v) -> str:
    if isinstance(v, dict):
        inner = ", ".join(f"{k}: {'{...}' if isinstance(x, dict) else _value(x)}" for k, x in v.items())
        return "{" + inner + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def _key_lines(schema: type, values: dict, prefix: str, width: int, skip: set[str] = frozenset()) -> list[str]:
    docs, lines = field_docs(schema), []
    for name in (f.name for f in dataclasses.fields(schema)):
        if name in skip or name not in values:
            continue
        sub = _nested_schema(schema, name)
        if sub is not None and isinstance(values[name], dict):
            lines += _key_lines(sub, values[name], f"{prefix}{name}.", width)
            continue
        key = f"  {prefix}{name}={_value(values[name])}"
        doc = docs.get(name, "")
        if len(key) > 38 or not doc:
            lines.append(key[:width])
            if doc:
                lines += textwrap.wrap(doc, width, initial_indent=" " * 6, subsequent_indent=" " * 6)
        else:
            lines += textwrap.wrap(doc, width, initial_indent=key.ljust(40), subsequent_indent=" " * 40)
    return lines


def _nested_schema(schema: type, name: str) -> type | None:
    """The dataclass a field holds (a group, or model.tiny), from its annotation string."""
    import typing

    try:
        hint = typing.get_type_hints(schema)[name]
    except Exception:  # noqa: BLE001 - a forward reference help cannot resolve is shown as a plain value
        return None
    for t in (hint, *typing.get_args(hint)):
        if dataclasses.is_dataclass(t):
            return t
    return None


def _compose(cmd: Command, overrides: list[str]) -> tuple[dict, dict]:
    """(the composed config, unresolved; {group: option chosen}) for the command line's overrides."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    if cmd.register:
        cmd.register()
    with initialize_config_dir(CONF_DIR, version_base=None, job_name=cmd.name):
        cfg = compose(cmd.config_name, overrides=overrides, return_hydra_config=True)
    values = OmegaConf.to_container(cfg, resolve=False)
    return values, values.pop("hydra")["runtime"]["choices"]


def render(cmd: Command, overrides: list[str], width: int | None = None) -> str:
    width = width or min(120, max(80, shutil.get_terminal_size((100, 24)).columns))
    values, choices = _compose(cmd, overrides)
    out = textwrap.wrap(f"{cmd.name}: {' '.join(cmd.summary.split())}", width)
    out += ["", f"usage: python -m {cmd.name} [group=option ...] [key=value ...]"]
    out += ["", "Config groups (group=option; * marks the one in use):"]
    for group, what in cmd.groups.items():
        chosen = choices.get(group.lstrip("+"))
        out.append(f"  {group}: {what}")
        for opt, first in _options(group.lstrip("+")):
            mark = "*" if opt == chosen else " "
            out += textwrap.wrap(first, width, initial_indent=f"    {mark}{opt:<22}", subsequent_indent=" " * 28) or \
                [f"    {mark}{opt}"]
    out += ["", "Keys (key=value; the value composed for this command line, then what it does):"]
    out += _key_lines(cmd.schema, values, "", width, skip={g.lstrip("+") for g in cmd.groups})
    for group in cmd.groups:
        sub = _nested_schema(cmd.schema, group)
        if sub is not None and isinstance(values.get(group), dict):
            out += ["", f"  {group}.* ({group}={choices.get(group, '?')}):"]
            out += _key_lines(sub, values[group], f"{group}.", width, skip={"name"})
    notes = cmd.notes(values) if callable(cmd.notes) else cmd.notes
    if notes.strip():
        out.append("")
        for para in notes.strip("\n").split("\n"):
            out += textwrap.wrap(para, width, subsequent_indent="      " if para.startswith("  ") else "") or [""]
    out += ["", "Examples:"] + [f"  {ln}" for ln in _examples(cmd.config_name)]
    out += ["", "--cfg job prints the composed config and runs nothing; --hydra-help is Hydra's own help."]
    return "\n".join(out) + "\n"


def main(cmd: Command, argv: list[str]) -> int:
    """Print `cmd`'s help for the overrides in argv; 2 (with one line naming the problem) if they do not compose."""
    overrides = [a for a in argv if a not in HELP_FLAGS and not a.startswith("-")]
    try:
        text = render(cmd, overrides)
    except Exception as e:  # noqa: BLE001 - Hydra's override / composition errors have many types; one line is enough
        print(f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0
