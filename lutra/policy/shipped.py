"""The tiny bases lutra ships (lutra/bases/), and how a build is compared with them.

The warm start of `model=tiny` is chaotic in floating point: the same recipe on another CPU type, thread count or
torch builds another base, and the loop's numbers follow the base. So the base is an artifact, like a hub model:
built once by the recipe (lutra.policy.tiny), saved with `save_pretrained`, and shipped inside the package. A
shipped base is found by the recipe's cache key (`tiny_cache.cache_key`: the same key a build is cached under), its
files are checked against the sha256 that its `lutra_build.json` records, and then it is loaded with
`from_pretrained` like any other directory. A changed recipe (any `model.tiny.*` key, the benchmark's generator)
has another key: it has no shipped base and is built as before. `model.tiny.shipped=false` builds the default
recipe too, and `python -m lutra.prepare model=tiny` rebuilds it and says whether the rebuild is bit-identical.

Which build is shipped is fixed by a rule chosen before any loop result was looked at: the recipe's seed-0 build
made by the default command on the machine of the session that ships it, native kernel path, 2 torch threads
(what `python -m lutra.train` runs on 2 cores), saved in float32 for the default recipe and rounded to bfloat16 for
the smoke preset's (whose role is a check, not a result; the package's model assets stay under 20 MiB).

To ship a new build (after a recipe change): `python -m lutra.policy.shipped <build dir> lutra/bases/<name>
[--dtype bfloat16]`, then measure the loop from it and update the README's Results.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
from pathlib import Path

from lutra.policy.tiny_cache import cache_key

log = logging.getLogger(__name__)

BASES_DIR = Path(__file__).resolve().parents[1] / "bases"
BUILD_JSON = "lutra_build.json"
_verified: set[Path] = set()


class ShippedBaseError(RuntimeError):
    """A shipped base whose files do not match their recorded sha256 (or are missing); the message names the file."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _record(path: Path) -> dict:
    return json.loads((path / BUILD_JSON).read_text())


def shipped_bases(root: Path = BASES_DIR) -> dict[str, Path]:
    """{cache key: directory} of every shipped base."""
    out = {}
    for build in sorted(root.glob(f"*/{BUILD_JSON}")):
        key = json.loads(build.read_text()).get("shipped", {}).get("cache_key")
        if key:
            out[key] = build.parent
    return out


def find(model_cfg, bench_cfg, root: Path = BASES_DIR) -> Path | None:
    """The shipped base of this recipe, or None (another recipe, or `model.tiny.shipped=false`)."""
    if not getattr(model_cfg.tiny, "shipped", True):
        return None
    return shipped_bases(root).get(cache_key(model_cfg, bench_cfg))


def verify(path: Path) -> dict:
    """Check every file of a shipped base against its recorded sha256 (once per process); returns its record."""
    path = Path(path).resolve()
    record = _record(path)
    if path in _verified:
        return record
    files = record.get("shipped", {}).get("files") or {}
    if not files:
        raise ShippedBaseError(f"{path / BUILD_JSON}: records no files (shipped.files): not a shipped base")
    for name, want in sorted(files.items()):
        f = path / name
        if not f.is_file():
            raise ShippedBaseError(f"shipped base {path}: {name} is missing (reinstall lutra, or `git checkout "
                                   f"lutra/bases`; model.tiny.shipped=false builds the recipe instead)")
        got = _sha256(f)
        if got != want:
            raise ShippedBaseError(f"shipped base {path}: {name} has sha256 {got[:16]}..., its record says "
                                   f"{want[:16]}...: the file was changed or damaged (reinstall lutra, or `git "
                                   f"checkout lutra/bases`; model.tiny.shipped=false builds the recipe instead)")
    _verified.add(path)
    return record


def compare(build: dict, key: str, root: Path = BASES_DIR) -> dict:
    """Compare a build (its lutra_build.json fields) with the shipped base of the same recipe.

    Returns {"status": "identical" | "differs" | "unshipped", "shipped": name | None, "message": str}."""
    path = shipped_bases(root).get(key)
    if path is None:
        return {"status": "unshipped", "shipped": None,
                "message": "no shipped base for this recipe (an override or a code change made it another): this "
                           "build is the base, and the README's numbers, which belong to the shipped base, do not apply"}
    ref = _record(path)
    dtype = ref["shipped"]["dtype"]
    mine = build.get("weights_sha256" if dtype == "float32" else f"weights_sha256_{dtype}")
    name = path.name
    if mine == ref["shipped"]["weights_sha256"]:
        return {"status": "identical", "shipped": name,
                "message": f"bit-identical to the shipped base {name} (weights_sha256 {mine[:12]}, {dtype})"}
    this = (f"{build.get('cpu_capability')} {build.get('warm_start_dtype')} {build.get('threads')} threads "
            f"torch {build.get('torch')}")
    made = (f"{ref.get('cpu_capability')} {ref.get('warm_start_dtype')} {ref.get('threads')} threads "
            f"torch {ref.get('torch')}")
    return {"status": "differs", "shipped": name,
            "message": f"not bit-identical to the shipped base {name}: weights_sha256 {str(mine)[:12]} (this build: "
                       f"{this}) against {ref['shipped']['weights_sha256'][:12]} (built on {made}). The warm start "
                       f"is chaotic in floating point, so another CPU path, thread count or torch builds another "
                       f"base; `python -m lutra.train` still loads the shipped one (model.path=<this build's "
                       f"directory> trains from this one)"}


def ship(build_dir: Path, dest: Path, dtype: str = "float32", key: str | None = None) -> dict:
    """Save a build as a shipped base: weights in `dtype` (safetensors), tokenizer, config and a record with each
    file's sha256. The record keeps the build's own fields (recipe, warm-start curve, CPU path, digest)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lutra.policy.tiny import weights_sha256

    build_dir, dest = Path(build_dir), Path(dest)
    record = _record(build_dir)
    key = record.get("cache_key") or key
    if not key:
        raise ShippedBaseError(f"{build_dir / BUILD_JSON}: no cache_key (built before lutra shipped bases): rebuild it")
    model = AutoModelForCausalLM.from_pretrained(build_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(build_dir)
    if dest.exists():
        shutil.rmtree(dest)
    model.to(getattr(torch, dtype)).save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)
    digest = weights_sha256(AutoModelForCausalLM.from_pretrained(dest, dtype=torch.float32))
    record.pop("documented_base", None)
    record["shipped"] = {
        "cache_key": key, "dtype": dtype, "weights_sha256": digest,
        "rule": "the recipe's seed-0 build by the default command on the shipping session's machine (native "
                "kernel path, 2 torch threads)",
        "files": {f.name: _sha256(f) for f in sorted(dest.iterdir()) if f.is_file()},
    }
    (dest / BUILD_JSON).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record["shipped"]


def main(argv: list[str]) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m lutra.policy.shipped", description=ship.__doc__)
    p.add_argument("build_dir")
    p.add_argument("dest")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    a = p.parse_args(argv)
    print(json.dumps(ship(Path(a.build_dir), Path(a.dest), a.dtype), indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
