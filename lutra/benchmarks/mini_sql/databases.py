"""mini_sql's SQLite databases: rows drawn from a seed, written atomically, reused while their fingerprint matches;
`_Db` answers the value and result checks the templates make while drafting."""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import tempfile
from contextlib import closing
from functools import cache
from pathlib import Path

from lutra.benchmarks import BenchmarkError
from lutra.benchmarks.mini_sql.schema import Col, Domain, Table

GENERATOR_VERSION = "3"
MAX_ROWS = 300


def fingerprint(seed: int) -> str:
    """Short hash of the generator version and seed: names the default data dir, stamps each database."""
    return hashlib.sha256(f"mini_sql/{GENERATOR_VERSION}/{seed}".encode()).hexdigest()[:12]


def _ro_uri(path: Path) -> str:
    return Path(path).resolve().as_uri() + "?mode=ro"


def _create_sql(t: Table) -> str:
    types = {"pk": "INTEGER PRIMARY KEY", "name": "TEXT", "cat": "TEXT"}
    parts = []
    for c in t.cols:
        if c.role == "fk":
            parts.append(f"{c.name} INTEGER REFERENCES {c.parent}({c.name})")
        else:
            parts.append(f"{c.name} {types.get(c.role) or ('REAL' if c.real else 'INTEGER')}")
    return f"CREATE TABLE {t.name} ({', '.join(parts)})"


def _rows(d: Domain, seed: int) -> dict[str, list[tuple]]:
    rng = random.Random(f"mini_sql/{seed}/{d.db_id}")
    sizes = {t.name: t.rows for t in d.tables}
    out = {}
    for t in d.tables:
        seen: set = set()
        rows = []
        for i in range(1, t.rows + 1):
            row: list = []
            for c in t.cols:
                if c.role == "pk":
                    v = i
                elif c.role == "fk":
                    v = rng.randint(1, sizes[c.parent])
                else:
                    v = c.gen(rng)
                    while c.role == "name" and v in seen:  # names are unique: GROUP BY name is per row
                        v = c.gen(rng)
                    seen.add(v)
                row.append(v)
            rows.append(tuple(row))
        out[t.name] = rows
    return out


def _build(path: Path, d: Domain, seed: int) -> None:
    """Write `d`'s database to `path` atomically, unless a database of this fingerprint is already there."""
    stamp = int(fingerprint(seed)[:7], 16)
    if path.is_file():
        try:
            with closing(sqlite3.connect(_ro_uri(path), uri=True)) as con:
                if con.execute("PRAGMA user_version").fetchone()[0] == stamp:
                    return
        except sqlite3.Error:
            pass  # unreadable: rebuilt below
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{d.db_id}.", suffix=".tmp")
    os.close(fd)
    try:
        rows = _rows(d, seed)
        with closing(sqlite3.connect(tmp)) as con:
            for t in d.tables:
                con.execute(_create_sql(t))
                con.executemany(f"INSERT INTO {t.name} VALUES ({', '.join('?' * len(t.cols))})", rows[t.name])
            con.execute(f"PRAGMA user_version = {stamp}")
            con.commit()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@cache
def _schema(db_path: str) -> str:
    """The CREATE TABLE statements of a database, as Spider prompts show them (seed-independent text)."""
    try:
        with closing(sqlite3.connect(_ro_uri(Path(db_path)), uri=True)) as con:
            rows = con.execute("SELECT sql FROM sqlite_master WHERE type = 'table' ORDER BY rowid").fetchall()
    except sqlite3.Error as e:
        raise BenchmarkError(f"{db_path}: cannot read the schema ({e})") from e
    return "\n".join(r[0] + ";" for r in rows)


class _Db:
    """One domain's database in memory: slot values are drawn from its rows and every gold is run on it."""

    def __init__(self, d: Domain, path: Path):
        self.d, self.path = d, path
        self.con = sqlite3.connect(":memory:")
        with closing(sqlite3.connect(_ro_uri(path), uri=True)) as disk:
            disk.backup(self.con)
        self.schema = _schema(str(path))
        self._memo: dict[str, list] = {}

    def query(self, sql: str) -> list:
        if sql not in self._memo:
            self._memo[sql] = self.con.execute(sql).fetchall()
        return self._memo[sql]

    def values(self, t: Table, c: Col) -> list:
        return [r[0] for r in self.query(f"SELECT DISTINCT {c.name} FROM {t.name} ORDER BY {c.name}")]

    def table(self, rng: random.Random, *roles: str) -> Table | None:
        ts = [t for t in self.d.tables if all(t.of(r) for r in roles)]
        return rng.choice(ts) if ts else None

    def accept(self, sql: str) -> bool:
        """The gold is non-degenerate: 1..MAX_ROWS rows, no all-NULL row, not a zero count."""
        try:
            rows = self.con.execute(sql).fetchmany(MAX_ROWS + 1)
        except sqlite3.Error as e:
            raise BenchmarkError(f"mini_sql/{self.d.db_id}: generated gold fails ({e}): {sql}") from e
        return 0 < len(rows) <= MAX_ROWS and rows != [(0,)] and all(any(v is not None for v in r) for r in rows)
