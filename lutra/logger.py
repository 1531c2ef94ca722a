"""Experiment logging: one logger per run (CSV, wandb or none), shared by every round's Trainer.

Train metrics are logged per optimizer step (continuing across rounds); round-level metrics (eval/*, pairs/*)
carry a `round` axis. With wandb, the run id is written to `<run_dir>/wandb_id` before training starts, so a
resumed run continues the same wandb run; `WANDB_MODE=offline` (or logger.mode=offline) needs no network.
CSV files are written whatever the logger; wandb also gets the resolved config and a samples table with verdicts.
"""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

from lutra.config import to_dict


def _flat_numbers(d: dict, prefix: str) -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, bool):
            out[key] = float(v)
        elif isinstance(v, (int, float)):
            out[key] = v
        elif isinstance(v, dict):
            out.update(_flat_numbers(v, key + "/"))
    return out


def _new_wandb_id() -> str:
    from wandb.sdk.lib.runid import generate_id  # wandb.util.generate_id is gone in wandb 0.31

    return generate_id()


def _verdict_text(v: dict | None) -> str:
    if v is None:
        return "gold"  # a chosen that is no sample: the ground truth (gold_as_chosen)
    if v.get("correct"):
        return "correct"
    err = (v.get("error") or "").strip().splitlines()
    return f"{v.get('status', 'wrong')}: {err[0][:200]}" if err else str(v.get("status", "wrong"))


class RunLogger:
    SAMPLES_PER_ROUND = 64

    def __init__(self, cfg, run):
        self.cfg, self.run, self._pl, self._wb = cfg, run, None, None
        self.kind = cfg.logger.name

    def lightning(self):
        """The Trainer's logger(s): CSV always (lutra.report reads it), plus wandb when chosen."""
        if self._pl is not None or self.kind == "none":
            return self._pl or False
        from lightning.pytorch.loggers import CSVLogger

        csv_logger = CSVLogger(save_dir=str(self.run.dir), name="logs", version="")
        if self.kind == "csv":
            self._pl = csv_logger
        else:
            self._wb = self._wandb()
            self._pl = [csv_logger, self._wb]
        return self._pl

    def _experiment(self):
        self.lightning()
        return self._wb.experiment

    def _wandb(self):
        from lightning.pytorch.loggers import WandbLogger

        lc = self.cfg.logger
        id_file = Path(self.run.dir) / "wandb_id"
        if id_file.exists():
            run_id = id_file.read_text().strip()
        else:
            run_id = _new_wandb_id()
            from lutra.artifacts import atomic_write_text

            atomic_write_text(id_file, run_id)
        if lc.mode:
            os.environ["WANDB_MODE"] = lc.mode
        logger = WandbLogger(
            project=lc.project, entity=lc.entity, group=lc.group, job_type=lc.job_type or self.cfg.method.name,
            tags=list(lc.tags), id=run_id, resume="allow", save_dir=str(self.run.dir),
            config=to_dict(self.cfg), name=Path(self.run.dir).name,
        )
        exp = logger.experiment
        exp.define_metric("round")
        for prefix in ("eval/*", "pairs/*", "round/*"):
            exp.define_metric(prefix, step_metric="round")
        return logger

    def _write_rounds_csv(self, k: int, row: dict) -> None:
        from io import StringIO

        from lutra.artifacts import atomic_write_text

        path = Path(self.run.dir) / "rounds.csv"
        rows = []
        if path.exists():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["round"]) != k]
        rows = sorted(rows + [{"round": k, **row}], key=lambda r: int(r["round"]))
        fields = sorted({key for r in rows for key in r}, key=lambda s: (s != "round", s))
        buf = StringIO()
        w = csv.DictWriter(buf, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(path, buf.getvalue())

    def log_eval(self, k: int, metrics: dict) -> None:
        nums = _flat_numbers({key: v for key, v in metrics.items() if key != "round"}, "eval/")
        self._merge_round(k, nums)

    def log_pairs(self, k: int, pairs: list[dict], stats: dict, samples: list[dict] = (),
                  verdicts: list[dict] = ()) -> None:
        """Round-level pair statistics; with wandb, a table of (problem, chosen, rejected, verdicts)."""
        self._merge_round(k, _flat_numbers(stats, "pairs/"))
        if self.kind == "wandb" and self.cfg.logger.log_samples and pairs:
            import wandb

            by_text = {(s["problem_id"], s["text"]): v for s, v in zip(samples, verdicts)}
            rows = random.Random(f"{self.cfg.seed}/{k}").sample(pairs, min(self.SAMPLES_PER_ROUND, len(pairs)))
            table = wandb.Table(columns=["round", "problem_id", "prompt", "chosen", "chosen_verdict", "rejected",
                                         "rejected_verdict"])
            for p in sorted(rows, key=lambda p: p["problem_id"]):
                rej = p.get("rejected")
                table.add_data(k, p["problem_id"], p.get("prompt", ""), p["chosen"],
                               _verdict_text(by_text.get((p["problem_id"], p["chosen"]))), rej,
                               None if rej is None else _verdict_text(by_text.get((p["problem_id"], rej))))
            self._experiment().log({"round": k, "samples/pairs": table})

    def _merge_round(self, k: int, metrics: dict) -> None:
        path = Path(self.run.dir) / "rounds.csv"
        prev = {}
        if path.exists():
            with open(path, newline="") as f:
                prev = next((r for r in csv.DictReader(f) if int(r["round"]) == k), {})
        merged = {key: v for key, v in prev.items() if key != "round" and v != ""}
        merged.update(metrics)
        self._write_rounds_csv(k, merged)
        if self.kind == "wandb":
            self._experiment().log({"round": k, **metrics})

    def finish(self) -> None:
        """Close wandb. When the run is stopping on Ctrl-C (or an error), its run summary (~40 lines) is not
        printed: it goes to <run_dir>/wandb_finish.log, and the run is marked failed (exit code 1)."""
        if self._wb is None:
            return
        import contextlib
        import io
        import sys

        import wandb

        if sys.exc_info()[0] is None:
            wandb.finish()
            return
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            try:
                wandb.finish(exit_code=1)
            except Exception as e:  # noqa: BLE001 - closing a logger must not hide why the run is stopping
                print(f"wandb.finish failed: {e!r}")
        (Path(self.run.dir) / "wandb_finish.log").write_text(buf.getvalue())


class NoLogger:
    """The logger of a data-parallel rank other than 0: rank 0 alone logs (one CSV, one wandb run)."""

    kind = "none"

    def lightning(self):
        return False

    def log_eval(self, k: int, metrics: dict) -> None:
        pass

    def log_pairs(self, *args, **kwargs) -> None:
        pass

    def finish(self) -> None:
        pass
