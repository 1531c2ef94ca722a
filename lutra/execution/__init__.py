"""Execution: run model-written programs against ground truth and return structured verdicts.

`judge(items, cfg)` is what the loop calls: it checks each (problem, program) pair with the benchmark's executor
(`sql` or `python`) and comparison rule and returns one `Verdict` per item, in order. Identical programs of one
problem are executed once; a program in a markdown fence is taken out of it first (`extract.extract_program`).
`capabilities()` says which isolation layers are in force on this machine (log it once per run and write it into
the manifest). What each sandbox stops, and what it does not, is in the
docstrings of `lutra.execution.sql` and `lutra.execution.python`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

STATUSES = ("ok", "error", "timeout", "oom", "killed", "too_large", "output_flood", "tamper", "env_error",
            "unverifiable")


@dataclass
class Verdict:
    status: str
    """ok | error | timeout | oom | killed | too_large | output_flood | tamper | env_error (how the program ran;
    env_error: this environment lacks a library or dataset the record needs, so correct is None; unverifiable: a
    DS-1000 record whose expected answer cannot cross the safe codec, never judged, so correct is None)."""
    correct: bool | None
    """True/False: matches the gold result (or passes the tests); None: unknown, the gold itself failed."""
    seconds: float = 0.0
    error: str = ""
    """Tail of the error message, empty when the program ran."""

    def to_dict(self) -> dict:
        return asdict(self)


def judge(items, cfg, *, progress: bool = True, desc: str = "execute", for_training: bool = False) -> list[Verdict]:
    """Verdicts for `items` = [(Problem, program text), ...] under benchmark config `cfg`.

    for_training: re-run timeouts once, serially, before labelling, so load does not create false rejections.
    A program wrapped in a markdown fence (instruct models) is executed without the fence and the prose around it.
    """
    from lutra.execution.extract import extract_program

    items = [(p, extract_program(text, p.language)) for p, text in items]
    if cfg.executor == "sql":
        from lutra.execution import sql

        return sql.judge(items, cfg, progress=progress, desc=desc, for_training=for_training)
    from lutra.execution import python

    return python.judge(items, cfg, progress=progress, desc=desc, for_training=for_training)


def capabilities() -> dict:
    """Isolation layers in force on this machine: `isolation` (mount_namespace | landlock | none), uid drop,
    PID/net namespaces, rlimits, `seccomp` (the syscall filter loads and refuses); see sandbox.py. The loop writes
    this into the run's manifest."""
    from lutra.execution.sandbox import capabilities as caps

    return caps()
