"""Checks a command runs before any work, so the failures a new user meets first are one line naming the key and
the fix, not a traceback minutes in.

`check_model_path`: `model.path` must be a local model directory, a hub id in the Hugging Face cache, or a hub id
the hub answers for. Without it transformers retries the hub for about a minute (huggingface_hub's backoff) and
then raises from deep inside the loop. With the hub unreachable and the model cached, it sets HF_HUB_OFFLINE=1 so
the load skips those retries.

`check_data` / `with_data_hint`: a benchmark whose official files are downloaded (its YAML lists
`options.download`) names `benchmark.data_dir` and `python -m lutra.prepare` when its data root or a file in it is
missing, where the loader alone said "file not found".

`discard_fresh_run_dir`: a run that failed before its first stage leaves no directory behind, so the next command
does not resume a run that never started.
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from lutra.config import ConfigError

log = logging.getLogger(__name__)

HUB_TIMEOUT_S = 4.0
"""One request to the hub, no retries: a dropped connection fails the check in this long (a first run's failure should take under 10 s)."""
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
FRESH_FILES = (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "train.log", "manifest.json",
               "config.json", ".lock")


def _looks_local(path: str) -> bool:
    """A filesystem path, not a hub id (`org/name` or `name`)."""
    return path.startswith(("/", "./", "../", "~", ".")) or path.count("/") > 1 or "\\" in path


def _fixes(path: str) -> str:
    return (f"fix: model.path=/local/copy (a save_pretrained or hub snapshot folder); or download it where the hub "
            f"is reachable (`huggingface-cli download {path}`, HF_TOKEN=... for gated models) into the HF cache "
            "and run here with HF_HUB_OFFLINE=1")


def _cached(repo_id: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    def hit(name: str) -> bool:
        return isinstance(try_to_load_from_cache(repo_id, name, revision=revision), str)

    return hit("config.json") and any(hit(w) for w in WEIGHTS)


def _hub_status(repo_id: str, revision: str | None) -> tuple[int | None, str]:
    """(HTTP status of the repo's config.json on the hub, or None when unreachable; why)."""
    from huggingface_hub import constants, get_token

    url = f"{constants.ENDPOINT.rstrip('/')}/{repo_id}/resolve/{revision or 'main'}/config.json"
    req = urllib.request.Request(url, method="HEAD")
    token = get_token()
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=HUB_TIMEOUT_S) as r:
            return r.status, ""
    except urllib.error.HTTPError as e:
        return e.code, str(e.reason)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return None, f"{constants.ENDPOINT}: {getattr(reason, 'strerror', None) or reason}"


def check_model_path(model_cfg) -> None:
    """Raise a one-line ConfigError naming model.path unless the model can be loaded without a long hub timeout."""
    gguf_file = getattr(model_cfg, "gguf_file", None)
    if gguf_file:  # loaded instead of model.path (lutra.policy.gguf)
        if not Path(gguf_file).is_file():
            raise ConfigError(f"model.gguf_file: {gguf_file} does not exist; fix: python -m lutra.prepare "
                              f"model={model_cfg.name}, or model.gguf_file=null to load model.path ({model_cfg.path})")
        return
    path = model_cfg.path
    if path is None:  # built locally (model.build=tiny)
        return
    local = Path(path).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ConfigError(f"model.path: {local} is a directory without config.json (not a save_pretrained or hub "
                              "snapshot folder)")
        return
    if _looks_local(path) or local.exists():
        raise ConfigError(f"model.path: {path} does not exist (a local path: {local.resolve()}); {_fixes(path)}")
    from huggingface_hub import constants
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(path)
    except HFValidationError as e:
        raise ConfigError(f"model.path: {path!r} is neither a local directory nor a hub id ({e})") from None
    revision = getattr(model_cfg, "revision", None)
    cached = _cached(path, revision)
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        if not cached:
            raise ConfigError(f"model.path: {path} is not in the HF cache ({constants.HF_HUB_CACHE}) and "
                              f"HF_HUB_OFFLINE=1 forbids downloading it; {_fixes(path)}")
        return
    status, why = _hub_status(path, revision)
    if status is None:
        if cached:
            log.warning("model.path: the hub is unreachable (%s); loading %s from the HF cache (HF_HUB_OFFLINE=1)",
                        why, path)
            os.environ["HF_HUB_OFFLINE"] = "1"
            constants.HF_HUB_OFFLINE = True
            return
        raise ConfigError(f"model.path: {path} is neither a local directory nor in the HF cache "
                          f"({constants.HF_HUB_CACHE}), and the hub is unreachable ({why}); {_fixes(path)}")
    if status in (401, 403) and not cached:
        raise ConfigError(f"model.path: the hub refuses {path} (HTTP {status}: gated, private or misspelt); accept "
                          "its licence on huggingface.co and set HF_TOKEN=..., or use model.path=/local/copy")
    if status == 404 and not cached:
        raise ConfigError(f"model.path: {path} has no config.json on the hub (HTTP 404: misspelt id or revision?); "
                          "use a hub id like meta-llama/Meta-Llama-3-8B-Instruct or model.path=/local/copy")


def _data_where(bench_cfg) -> str:
    from lutra.benchmarks.sql_schema import data_root

    if bench_cfg.data_dir:
        return f"benchmark.data_dir={bench_cfg.data_dir}"
    return f"benchmark.data_dir=null: $LUTRA_DATA/{bench_cfg.name} = {data_root(bench_cfg)}"


def _data_fix(bench_cfg) -> str:
    extra = f" benchmark.data_dir={bench_cfg.data_dir}" if bench_cfg.data_dir else ""
    return (f"fetch the official files with `python -m lutra.prepare benchmark={bench_cfg.name}{extra}`, or set "
            f"benchmark.data_dir=/path/to/{bench_cfg.name} (a copy in the official layout)")


def _downloadable(bench_cfg) -> bool:
    return bool((bench_cfg.options or {}).get("download"))


def check_data(bench_cfg) -> None:
    """A downloaded benchmark's data root must exist (mini_sql generates its own)."""
    from lutra.benchmarks.sql_schema import data_root

    if not _downloadable(bench_cfg):
        return
    root = data_root(bench_cfg)
    if not root.exists():
        raise ConfigError(f"{_data_where(bench_cfg)} does not exist; {_data_fix(bench_cfg)}")


def with_data_hint(err: Exception, bench_cfg) -> str:
    """The error's message, plus where the data is looked for and how to get it when a file was not found."""
    msg = str(err)
    if _downloadable(bench_cfg) and "not found" in msg and "lutra.prepare" not in msg:
        return f"{msg} ({_data_where(bench_cfg)}); {_data_fix(bench_cfg)}"
    return msg


def discard_fresh_run_dir(run_dir: str | Path) -> bool:
    """Remove a run directory no stage has finished in; True if it is gone.

    Only what Hydra and lutra.run write before a first stage is deleted (.hydra/, train.log, manifest.json with no
    finished stage, config.json, .lock, empty round folders), and the directory only when that leaves it empty: a
    run_dir pointed at a folder that holds anything else is left as it is."""
    from lutra.artifacts import read_json

    root = Path(run_dir)
    manifest = root / "manifest.json"
    if not root.is_dir() or (manifest.is_file() and read_json(manifest).get("stages")):
        return False
    for handler in list(logging.getLogger().handlers):  # Hydra's <job>.log handler holds the file open
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == root.resolve():
            handler.close()
            logging.getLogger().removeHandler(handler)
            Path(handler.baseFilename).unlink(missing_ok=True)
    for name in FRESH_FILES:
        (root / name).unlink(missing_ok=True)
    for d in [*sorted(root.glob("round_*")), root / ".hydra", root]:
        try:
            d.rmdir()
        except OSError:
            if d == root:
                return False
    return True
