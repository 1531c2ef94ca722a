"""A run directory: lock, manifest of finished stages, config check on resume.

    run_dir/
      manifest.json         config hash, versions, seeds, capabilities, finished stages with artifact sha256
      config.json           the resolved config the run started with
      .lock                 flock held by the running process (names its pid)
      round_0/metrics.json  the base model's evaluation
      round_k/{samples,verdicts,pairs}.jsonl, ref_logps.pt, adapter/, eval/, metrics.json

A restart with the same run directory skips finished stages (after re-checking their artifacts' sha256) and
redoes the first unfinished one; a changed config is refused with the keys that differ.
"""

from __future__ import annotations

import logging
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

from lutra.artifacts import (
    RunLock,
    clean_temp,
    fingerprint,
    read_json,
    read_jsonl,
    sha256_dir,
    sha256_file,
    write_json,
    write_jsonl,
)
from lutra.config import ConfigError, to_dict

log = logging.getLogger(__name__)

# keys that may change between a run and its resumption: they do not change what the run computes
RESUMABLE_KEYS = ("run_dir", "resume", "log_level", "rounds", "logger", "trainer.enable_progress_bar",
                  "benchmark.workers")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def comparable_config(cfg_dict: dict) -> dict:
    flat = _flatten(cfg_dict)
    return {k: v for k, v in flat.items() if not any(k == r or k.startswith(r + ".") for r in RESUMABLE_KEYS)}


def versions() -> dict:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("lutra", "torch", "transformers", "peft", "lightning", "hydra-core", "tokenizers", "sqlglot"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


class Run:
    def __init__(self, cfg):
        self.cfg = cfg
        self.dir = Path(cfg.run_dir)
        self.lock = RunLock(self.dir)
        self.manifest: dict = {}

    def open(self) -> Run:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        stray = clean_temp(self.dir)
        if stray:
            log.info("removed %d stray temp files left by an interrupted write", stray)
        cfg_dict = to_dict(self.cfg)
        current = comparable_config(cfg_dict)
        mpath = self.dir / "manifest.json"
        if mpath.exists():
            self.manifest = read_json(mpath)
            before = comparable_config(self.manifest["config"])
            diff = sorted(k for k in set(before) | set(current) if before.get(k) != current.get(k))
            if diff and self.cfg.resume != "force":
                shown = ", ".join(f"{k}: {before.get(k)!r} -> {current.get(k)!r}" for k in diff[:10])
                raise ConfigError(
                    f"run directory {self.dir} holds a run with a different config ({len(diff)} keys differ: "
                    f"{shown}). Use another run_dir (hydra.run.dir=...) or resume=force to continue anyway."
                )
            self._verify_artifacts()
            log.info("resuming run in %s (%d stages done)", self.dir, len(self.manifest["stages"]))
        else:
            self.manifest = {"config": cfg_dict, "config_hash": fingerprint(current), "created": time.time(),
                             "stages": {}, "rounds": {}, "seeds": {"seed": self.cfg.seed}}
        self.manifest["versions"] = versions()
        self.manifest["config"] = cfg_dict
        write_json(self.dir / "config.json", cfg_dict)
        self.save()
        return self

    def close(self) -> None:
        self.lock.release()

    def save(self) -> None:
        write_json(self.dir / "manifest.json", self.manifest)

    def round_dir(self, k: int) -> Path:
        d = self.dir / f"round_{k}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    @staticmethod
    def _sha(path: Path) -> str:
        return sha256_dir(path) if path.is_dir() else sha256_file(path)

    def _verify_artifacts(self) -> None:
        for key, rec in list(self.manifest["stages"].items()):
            path = self.dir / rec["artifact"]
            if not path.exists() or self._sha(path) != rec["sha256"]:
                log.warning("artifact of stage %s is missing or corrupt: redoing it", key)
                del self.manifest["stages"][key]

    def done(self, k: int, stage: str) -> bool:
        return f"round_{k}/{stage}" in self.manifest["stages"]

    def mark(self, k: int, stage: str, artifact: Path, seconds: float, **info) -> None:
        rel = str(Path(artifact).relative_to(self.dir))
        self.manifest["stages"][f"round_{k}/{stage}"] = {"artifact": rel, "sha256": self._sha(Path(artifact)),
                                                         "seconds": round(seconds, 2), **info}
        self.save()

    def stage_info(self, k: int, stage: str) -> dict:
        return self.manifest["stages"].get(f"round_{k}/{stage}", {})

    def cached_jsonl(self, k: int, stage: str, name: str, compute) -> list[dict]:
        """round_k/`name` (JSON lines) of `stage`: read back when the stage is done, else made by `compute`."""
        return self._cached(k, stage, name, compute, read_jsonl, write_jsonl)

    def cached_json(self, k: int, stage: str, name: str, compute) -> dict:
        return self._cached(k, stage, name, compute, read_json, write_json)

    def _cached(self, k: int, stage: str, name: str, compute, read, write):
        """`compute()` returns (artifact, manifest info) or (artifact, info, after): the artifact is written
        atomically, the stage marked done with its time and info, then `after()` runs (a logger call, so it runs
        once per finished stage, never for a stage read back on resume)."""
        path = self.round_dir(k) / name
        if self.done(k, stage):
            return read(path)
        t0 = time.time()
        out, info, *after = compute()
        write(path, out)
        self.mark(k, stage, path, time.time() - t0, **info)
        for fn in after:
            fn()
        return out

