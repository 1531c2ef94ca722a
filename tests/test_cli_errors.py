"""The failures a new user meets first: each is one line that names the key and the fix, exits 2, leaves
no run directory behind, and comes before any work; Ctrl-C says where the run stopped; --help documents keys."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once


def lutra(cmd: str, *args: str, env: dict | None = None, timeout: float = 120, cwd: Path = ROOT):
    """Run `python -m lutra.<cmd>`; an env value of None unsets that variable."""
    full = {**os.environ, **(env or {})}
    full = {k: v for k, v in full.items() if v is not None}
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", f"lutra.{cmd}", *args], cwd=cwd, capture_output=True, text=True,
                       env=full, timeout=timeout)
    p.seconds = time.monotonic() - t0
    p.out = p.stdout + p.stderr
    return p


def no_hub(tmp_path: Path) -> dict:
    """An empty HF cache and a hub that cannot be reached, as on a compute node without network."""
    return {"HF_HUB_CACHE": str(tmp_path / "hf-cache"), "HF_ENDPOINT": UNREACHABLE, "HF_TOKEN": None,
            "HF_HUB_OFFLINE": None}


def one_error_line(out: str) -> str:
    assert "Traceback" not in out, out
    errors = [ln for ln in out.splitlines() if "ERROR" in ln or ln.startswith("error:")]
    assert len(errors) == 1, out
    return errors[0]


# -- model.path ----------------------------------------------------------------------------------------------------
def test_unreachable_hub_fails_fast_naming_model_path(tmp_path):
    run = tmp_path / "run"
    p = lutra("train", "model=llama3_8b", "rounds=0", f"hydra.run.dir={run}", env=no_hub(tmp_path), timeout=60)
    assert p.returncode == 2, p.out
    line = one_error_line(p.out)
    for text in ("model.path", "meta-llama/Meta-Llama-3-8B-Instruct", "neither a local directory nor in the HF cache", "unreachable",
                 "model.path=/local/copy", "HF_TOKEN", "HF_HUB_OFFLINE=1"):
        assert text in line, text
    assert p.seconds < 10, p.seconds
    assert not run.exists(), sorted(str(x) for x in run.rglob("*"))


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1) for a network namespace")
def test_no_network_at_all_fails_fast(tmp_path):
    """A real network namespace with no interface (DNS fails), the hub at its default address."""
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unprivileged network namespaces unavailable: {probe.stderr.decode().strip()}")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hf-cache")}
    env.pop("HF_ENDPOINT", None)
    env.pop("HF_HUB_OFFLINE", None)
    t0 = time.monotonic()
    p = subprocess.run(["unshare", "-rn", sys.executable, "-m", "lutra.train", "model=qwen25_coder_7b", "rounds=0",
                        f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True, env=env,
                       timeout=60)
    assert p.returncode == 2 and time.monotonic() - t0 < 10, p.stdout + p.stderr
    assert "model.path" in one_error_line(p.stdout + p.stderr)
    assert not (tmp_path / "run").exists()


def test_offline_and_not_cached_names_the_cache(tmp_path):
    env = {**no_hub(tmp_path), "HF_HUB_OFFLINE": "1"}
    p = lutra("train", "model=qwen25_coder_0_5b", f"hydra.run.dir={tmp_path / 'run'}", env=env, timeout=60)
    assert p.returncode == 2
    line = one_error_line(p.out)
    assert "model.path" in line and "HF_HUB_OFFLINE=1" in line and str(tmp_path / "hf-cache") in line


def test_missing_local_model_dir(tmp_path):
    p = lutra("evaluate", "model=llama3_8b", f"model.path={tmp_path / 'no-such-model'}",
              f"hydra.run.dir={tmp_path / 'ev'}", env=no_hub(tmp_path), timeout=60)
    assert p.returncode == 2
    assert "model.path" in one_error_line(p.out) and "does not exist" in p.out


def test_cached_model_with_hub_unreachable_goes_offline(tmp_path, monkeypatch):
    """A hub id whose files are in the HF cache loads from there, without a minute of retries."""
    from huggingface_hub import constants

    from lutra import preflight
    from lutra.config import ModelConfig

    snap = tmp_path / "hf-cache" / "models--org--cached-model" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (snap / "model.safetensors").write_bytes(b"")
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "ENDPOINT", UNREACHABLE)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    t0 = time.monotonic()
    preflight.check_model_path(ModelConfig(name="m", path="org/cached-model"))
    assert time.monotonic() - t0 < 5 and os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(preflight.ConfigError, match="model.path: org/other"):
        preflight.check_model_path(ModelConfig(name="m", path="org/other"))


def test_bad_config_leaves_no_run_dir(tmp_path):
    p = lutra("train", "method.beta=0", f"hydra.run.dir={tmp_path / 'run'}")
    assert p.returncode == 2 and "method.beta" in one_error_line(p.out)
    assert not (tmp_path / "run").exists()


# -- data ----------------------------------------------------------------------------------------------------------
def test_missing_data_dir_names_key_and_prepare(tmp_path):
    p = lutra("train", "benchmark=spider", f"benchmark.data_dir={tmp_path / 'nope'}", "rounds=0",
              f"hydra.run.dir={tmp_path / 'run'}")
    assert p.returncode == 2
    line = one_error_line(p.out)
    assert "benchmark.data_dir" in line and "python -m lutra.prepare benchmark=spider" in line
    assert not (tmp_path / "run").exists()


def test_missing_file_in_data_dir_names_key_and_prepare(tmp_path):
    (tmp_path / "spider").mkdir()  # a root without the official files
    p = lutra("evaluate", "benchmark=spider", f"predictions={tmp_path / 'p.jsonl'}",
              f"hydra.run.dir={tmp_path / 'ev'}", env={"LUTRA_DATA": str(tmp_path)})
    assert p.returncode == 2
    line = one_error_line(p.out)
    assert "not found" in line and "benchmark.data_dir" in line and "lutra.prepare benchmark=spider" in line


def test_prepare_offline_says_how_to_download_by_hand(tmp_path):
    p = lutra("prepare", "benchmark=spider", f"benchmark.data_dir={tmp_path / 'spider'}",
              f"url={UNREACHABLE}/spider_data.zip")
    assert p.returncode == 2
    line = one_error_line(p.out)
    for text in ("cannot download", "by hand", "yale-lily.github.io/spider", "url=file:///",
                 "archives=[spider]"):
        assert text in line, text


# -- Ctrl-C ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("logger", ["csv", "wandb"])
def test_ctrl_c_prints_where_and_resume_finishes(tmp_path, logger):
    from test_loop import REDUCED

    run = tmp_path / "run"
    env = {**os.environ, "LUTRA_MODELS": str(tmp_path / "models"), "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "lutra.train", f"hydra.run.dir={run}", f"benchmark.data_dir={tmp_path / 'data'}",
           *REDUCED, "rounds=1", f"logger={logger}"]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                         start_new_session=True)
    deadline = time.monotonic() + 300
    while not (run / "round_1" / "pairs.jsonl").exists():
        assert p.poll() is None and time.monotonic() < deadline, p.stdout.read() if p.poll() is not None else ""
        time.sleep(0.02)
    os.killpg(p.pid, signal.SIGINT)  # as a terminal's Ctrl-C does: the whole foreground process group
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 130, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    stopped = [ln for ln in out.splitlines() if "interrupted in" in ln]
    assert len(stopped) == 1 and "re-run the same command to resume" in stopped[0], out
    assert "interrupted in round 1 " in stopped[0], stopped
    assert "wandb: Run history" not in out and "wandb: Run summary" not in out
    resumed = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert (run / "round_1" / "metrics.json").exists()


# -- logs ------------------------------------------------------------------------------------------------------------
def test_library_log_lines_are_printed_once():
    """huggingface_hub and transformers add their own console handler and also propagate to Hydra's."""
    code = (
        "import logging, sys\n"
        "logging.basicConfig(stream=sys.stderr, format='[%(name)s] %(message)s')\n"
        "import huggingface_hub, transformers\n"
        "from huggingface_hub.utils import logging as hub_logging\n"
        "hub_logging._configure_library_root_logger()\n"
        "from lutra.train import route_library_logs\n"
        "route_library_logs()\n"
        "logging.getLogger('huggingface_hub.utils._http').warning('hub says hello')\n"
        "transformers.utils.logging.get_logger('transformers.modeling_utils').warning('transformers says hello')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stderr.count("hub says hello") == 1 and p.stderr.count("transformers says hello") == 1, p.stderr
    assert "[huggingface_hub.utils._http] hub says hello" in p.stderr  # through the root (Hydra's) handlers
