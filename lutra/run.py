"""A run directory: lock, manifest of finished stages, config check on resume.

    run_dir/
      manifest.json         config hash, versions, seeds, capabilities, finished stages with artifact sha256
      config.json           the resolved config the run started with
      .lock                 flock held by the running process (names its pid)
      round_0/metrics.json  the base model's evaluation
      round_k/{samples,verdicts,pairs}.jsonl, ref_logps.pt, adapter/, eval/, metrics.json

A restart with the same run directory skips finished stages (after re-checking their artifacts' sha256) and
redoes the first unfinished one; a changed config is refused with the keys that differ.

In a data-parallel world (`lutra.distributed`) rank 0 alone holds the lock and writes the directory; every rank
holds a copy of the manifest's stage records, which rank 0 broadcasts at each `mark`, so all ranks skip the same
stages. A stage every rank computes a shard of (`collective`) is then written by rank 0 and its artifact
broadcast; a stage read back on resume is read by rank 0 and broadcast. The directory must be on a file system
every node sees (the ranks load the rounds' adapters from it): `open` checks that.
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
from lutra.distributed import World, all_gather, on_main

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
    def __init__(self, cfg, world: World = World()):
        self.cfg, self.world = cfg, world
        self.dir = Path(cfg.run_dir)
        self.lock = RunLock(self.dir)
        self.manifest: dict = {}

    def open(self) -> Run:
        if self.world.size == 1:
            return self._open()
        self.manifest = on_main(self.world, lambda: self._open().manifest)
        all_gather(self.world, self._check_visible)
        return self

    def _check_visible(self) -> None:
        if not (self.dir / "manifest.json").is_file():
            import socket

            raise ConfigError(f"run_dir {self.dir.resolve()} is not visible from {socket.gethostname()} ({self.world}):"
                              " rank 0 wrote its manifest there. Put run_dir (hydra.run.dir) on a file system every"
                              " node shares, at the same path.")

    def _open(self) -> Run:
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
        if self.world.main:
            write_json(self.dir / "manifest.json", self.manifest)

    def round_dir(self, k: int) -> Path:
        d = self.dir / f"round_{k}"
        if self.world.main:
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
        """Record the stage done (rank 0 hashes the artifact and saves; every rank gets the stage records)."""
        self.manifest["stages"] = on_main(self.world, lambda: self._record(k, stage, artifact, seconds, **info))

    def _record(self, k: int, stage: str, artifact: Path, seconds: float, **info) -> dict:
        rel = str(Path(artifact).relative_to(self.dir))
        self.manifest["stages"][f"round_{k}/{stage}"] = {"artifact": rel, "sha256": self._sha(Path(artifact)),
                                                         "seconds": round(seconds, 2), **info}
        self.save()
        return self.manifest["stages"]

    def stage_info(self, k: int, stage: str) -> dict:
        return self.manifest["stages"].get(f"round_{k}/{stage}", {})

    def cached_jsonl(self, k: int, stage: str, name: str, compute, *, collective: bool = True) -> list[dict]:
        """round_k/`name` (JSON lines) of `stage`: read back when the stage is done, else made by `compute`."""
        return self._cached(k, stage, name, compute, read_jsonl, write_jsonl, collective)

    def cached_json(self, k: int, stage: str, name: str, compute, *, collective: bool = True) -> dict:
        return self._cached(k, stage, name, compute, read_json, write_json, collective)

    def _cached(self, k: int, stage: str, name: str, compute, read, write, collective: bool):
        """`compute()` returns (artifact, manifest info) or (artifact, info, after): the artifact is written
        atomically, the stage marked done with its time and info, then `after()` runs (a logger call, so it runs
        once per finished stage, never for a stage read back on resume). collective: every rank of a
        data-parallel world runs `compute` (its shard); else rank 0 alone. Either way rank 0 writes, and every
        rank returns rank 0's artifact."""
        path = self.round_dir(k) / name
        if self.done(k, stage):
            return on_main(self.world, lambda: read(path))
        t0 = time.time()
        made = compute() if collective else None

        def finish():
            out, info, *after = made if collective else compute()
            write(path, out)
            self._record(k, stage, path, time.time() - t0, **info)
            for fn in after:
                fn()
            return out, self.manifest["stages"]
        if self.world.size == 1:
            return finish()[0]
        out, self.manifest["stages"] = on_main(self.world, finish)
        return out

