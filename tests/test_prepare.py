"""lutra.prepare offline: archives in each official shape are built here and fetched through file:// URLs."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from fixtures_official import write_bird, write_ds1000, write_spider

from lutra.benchmarks import load
from lutra.config import BenchmarkConfig, ConfigError
from lutra.prepare import MARKER, PrepareConfig, PrepareError, prepare

REPO = Path(__file__).resolve().parents[1]


def _zip(path: Path, src: Path, top: str, extra: dict | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for f in sorted(src.rglob("*")):
            if f.is_file():
                z.write(f, f"{top}/{f.relative_to(src)}")
        z.writestr("__MACOSX/._dev.json", b"junk")  # as in the real spider_data.zip
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cfg(name, root, url, sha, **kw):
    bench = BenchmarkConfig(name=name, executor="python" if name == "ds1000" else "sql", data_dir=str(root),
                            options={"download": {name: {"url": url, "sha256": sha, "subdir": kw.pop("subdir", "")}}})
    return PrepareConfig(benchmark=bench, **kw)


@pytest.fixture
def spider_zip(tmp_path):
    return _zip(tmp_path / "spider_data.zip", write_spider(tmp_path / "src"), "spider_data")


def test_spider_archive_is_verified_unpacked_reported_and_then_left_alone(spider_zip, tmp_path, monkeypatch):
    root = tmp_path / "data" / "spider"
    cfg = _cfg("spider", root, spider_zip.as_uri(), _sha(spider_zip))
    out = prepare(cfg)
    assert (root / "dev.json").is_file() and (root / "database" / "shop" / "shop.sqlite").is_file()
    assert not (root / "__MACOSX").exists() and not (root / "spider_data").exists()  # top folder stripped
    assert out["splits"]["dev"] == {"problems": 6, "databases": 3, "unusable_databases": []}
    assert out["splits"]["train"]["problems"] == 2 and "absent" in out["splits"]["test"]
    assert out["archives"]["spider"]["verified"] and (root / MARKER).is_file()
    assert len(load(cfg.benchmark, "dev")) == 6
    (root / "dev.json").write_text("[]")  # a second run must not touch the root, nor download
    monkeypatch.setattr("lutra.prepare.download", lambda *a: pytest.fail("downloaded again"))
    prepare(cfg)
    assert (root / "dev.json").read_text() == "[]"


def test_wrong_or_missing_sha256_unpacks_nothing(spider_zip, tmp_path):
    root = tmp_path / "spider"
    with pytest.raises(PrepareError, match=r"sha256 mismatch .* expected 0+, got [0-9a-f]{64}"):
        prepare(_cfg("spider", root, spider_zip.as_uri(), "0" * 64))
    assert not root.exists()
    with pytest.raises(PrepareError, match=rf"no sha256 configured .* has sha256 {_sha(spider_zip)}"):
        prepare(_cfg("spider", root, spider_zip.as_uri(), None))
    assert not root.exists()
    out = prepare(_cfg("spider", root, spider_zip.as_uri(), None, allow_unverified=True))
    assert out["archives"]["spider"]["verified"] is False and (root / "dev.json").is_file()


def test_foreign_root_is_left_alone_unless_forced(spider_zip, tmp_path):
    root = tmp_path / "spider"
    root.mkdir()
    (root / "mine.txt").write_text("user data")
    prepare(_cfg("spider", root, spider_zip.as_uri(), _sha(spider_zip)))
    assert not (root / "dev.json").exists()
    prepare(_cfg("spider", root, spider_zip.as_uri(), _sha(spider_zip), force=True))
    assert (root / "dev.json").is_file() and (root / "mine.txt").is_file()


@pytest.mark.parametrize("member", ["../evil.txt", "/etc/evil.txt"])
def test_unsafe_archive_members_are_refused(tmp_path, member):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("ok.txt", b"x")
        z.writestr(member, b"x")
    root = tmp_path / "data" / "spider"
    with pytest.raises(PrepareError, match="unsafe member path"):
        prepare(_cfg("spider", root, bad.as_uri(), _sha(bad)))
    assert not root.exists() and not (tmp_path / "evil.txt").exists()


def test_tar_symlinks_are_refused(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as t:
        info = tarfile.TarInfo("dev.json")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        t.addfile(info)
    with pytest.raises(PrepareError, match="is a link or device"):
        prepare(_cfg("spider", tmp_path / "spider", bad.as_uri(), _sha(bad)))


def test_bird_tar_with_nested_databases_zip(tmp_path):
    src = write_bird(tmp_path / "src") / "dev"
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        for f in sorted((src / "dev_databases").rglob("*")):
            if f.is_file():
                z.write(f, f"dev_databases/{f.relative_to(src / 'dev_databases')}")
    archive = tmp_path / "dev.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        for name in ("dev.json", "dev_tables.json", "dev.sql"):
            t.add(src / name, f"dev_20240627/{name}")
        info = tarfile.TarInfo("dev_20240627/dev_databases.zip")
        info.size = len(inner.getvalue())
        t.addfile(info, io.BytesIO(inner.getvalue()))
    root = tmp_path / "bird"
    out = prepare(_cfg("bird", root, archive.as_uri(), _sha(archive), subdir="dev"))
    assert (root / "dev" / "dev_databases" / "shop" / "shop.sqlite").is_file()
    assert not (root / "dev" / "dev_databases.zip").exists()
    assert out["splits"]["dev"] == {"problems": 4, "databases": 2, "unusable_databases": []}


def test_ds1000_single_gz_file_and_cli(tmp_path):
    gz = write_ds1000(tmp_path / "src") / "data" / "ds1000.jsonl.gz"
    root = tmp_path / "ds1000"
    out = prepare(_cfg("ds1000", root, gz.as_uri(), _sha(gz), subdir="data"))
    assert out["splits"]["all"] == {"problems": 8, "libraries": {"Numpy": 4, "Pandas": 4}}
    with pytest.raises(ConfigError, match="archives: \\['nope'\\] not in"):
        prepare(_cfg("ds1000", root, gz.as_uri(), _sha(gz), archives=["nope"]))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cli = [sys.executable, "-m", "lutra.prepare", "benchmark=ds1000", f"benchmark.data_dir={tmp_path / 'cli'}",
           f"url={gz.as_uri()}", f"hydra.run.dir={tmp_path / 'log'}"]
    r = subprocess.run(cli + [f"sha256={'1' * 64}"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "sha256 mismatch" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(cli + [f"sha256={_sha(gz)}"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cli" / "data" / "ds1000.jsonl.gz").is_file()
