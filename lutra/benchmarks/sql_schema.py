"""Helpers shared by the SQL benchmarks in their official layouts (Spider, BIRD).

- reading the official JSON files with errors that name the file, line and record;
- the prompt's schema: CREATE TABLE statements read from the SQLite file (optionally a few rows per table), or,
  when the file is absent or unreadable, rebuilt from the benchmark's `tables.json` so the split still loads;
  `options.schema_format: compact` writes one `table(col PK, col, ...)` line per table instead (a named
  deviation, for small models whose context the DDL would fill);
- `database_problem` / `check_databases`: a missing, empty or corrupt database is an error only for the problems a
  run actually uses (Spider's wta_1 database is absent from the shared data);
- `carve_by_db`: `options.split_by_db`, train / eval / warmup parts of one official split, disjoint by database.
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lutra.benchmarks import BenchmarkError, Problem

SQLITE_MAGIC = b"SQLite format 3\x00"
CARVED = ("train", "eval", "warmup")  # split names options.split_by_db defines
FORMATS = ("ddl", "compact")  # options.schema_format: CREATE TABLE statements, or one line per table


def data_root(cfg) -> Path:
    """benchmark.data_dir, or $LUTRA_DATA/<name> (LUTRA_DATA defaults to outputs/data)."""
    if cfg.data_dir:
        return Path(cfg.data_dir).expanduser()
    return Path(os.environ.get("LUTRA_DATA", "outputs/data")).expanduser() / cfg.name


def read_json(path: Path) -> Any:
    """A JSON file (a UTF-8 BOM is tolerated); errors name the file, line and column."""
    if not path.is_file():
        raise BenchmarkError(f"{path}: file not found")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BenchmarkError(f"{path}: not UTF-8 text ({e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        hint = " (file truncated?)" if e.pos >= len(text.rstrip()) else ""
        raise BenchmarkError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}{hint}") from None


def read_records(path: Path) -> list[dict]:
    """The list of objects an official split file holds."""
    data = read_json(path)
    if not isinstance(data, list):
        raise BenchmarkError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise BenchmarkError(f"{path}: record {i}: expected an object, got {type(rec).__name__}")
    return data


def field(rec: dict, key: str, kind: type | tuple, where: str) -> Any:
    """rec[key], checked to be of `kind`; `where` names the file and record for the error."""
    if key not in rec:
        raise BenchmarkError(f"{where}: missing key {key!r}")
    value = rec[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        want = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise BenchmarkError(f"{where}: key {key!r} must be {want}, got {type(value).__name__} {value!r:.60}")
    return value


def read_tables(path: Path) -> dict[str, dict]:
    """tables.json (Spider, BIRD's dev_tables.json) by db_id; {} when the file is absent."""
    if not path.is_file():
        return {}
    out = {}
    for i, rec in enumerate(read_records(path)):
        where = f"{path}: record {i}"
        db_id = field(rec, "db_id", str, where)
        for key in ("table_names_original", "column_names_original", "column_types"):
            field(rec, key, list, f"{where} ({db_id})")
        out[db_id] = rec
    return out


def database_problem(db_path: str | None) -> str | None:
    """Why the SQLite file cannot be used (missing, empty, not SQLite, unreadable, no tables), or None."""
    if not db_path:
        return "no database"
    p = Path(db_path)
    if not p.is_file():
        return f"database file missing: {p}"
    if p.stat().st_size == 0:
        return f"database file is empty (0 bytes): {p}"
    with open(p, "rb") as f:
        if f.read(16) != SQLITE_MAGIC:
            return f"not an SQLite database (bad header): {p}"
    try:
        _tables(str(p))
    except sqlite3.Error as e:
        return f"database will not open: {p}: {e}"
    return None


def _connect(db_path: str) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)


@functools.lru_cache(maxsize=512)
def _tables(db_path: str) -> tuple[tuple[str, str], ...]:
    con = _connect(db_path)
    try:
        rows = con.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "AND sql IS NOT NULL ORDER BY rowid").fetchall()
    finally:
        con.close()
    if not rows:
        raise sqlite3.DatabaseError("the database has no tables")
    return tuple(rows)


def _compact(ddl: str) -> str:
    # the official DDL carries tabs, blank lines and trailing blanks: tokens a model would pay for in every prompt
    lines = [ln.strip() for ln in ddl.strip().splitlines() if ln.strip()]
    return "\n".join(lines if len(lines) == 1 else [lines[0]] + ["  " + ln for ln in lines[1:-1]] + [lines[-1]])


def _quote(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else '"' + name.replace('"', '""') + '"'


def _compact_table(name: str, cols: list[tuple[str, bool]], fks: list[tuple[str, str, str]]) -> str:
    """`name(col PK, col, ...)` and one `-- name.col = other.col` line per foreign key."""
    text = f"{_quote(name)}(" + ", ".join(_quote(c) + (" PK" if pk else "") for c, pk in cols) + ")"
    return text + "".join(f"\n-- {_quote(name)}.{_quote(a)} = {_quote(t)}.{_quote(b)}" for a, t, b in fks)


@functools.lru_cache(maxsize=512)
def schema_from_db(db_path: str, rows: int = 0, fmt: str = "ddl") -> str:
    """The tables of an SQLite file: CREATE TABLE statements as stored (fmt=ddl) or one line per table
    (fmt=compact), each followed by `rows` example rows as a comment."""
    parts = []
    con = _connect(db_path) if rows or fmt == "compact" else None
    try:
        for name, ddl in _tables(db_path):
            if fmt == "compact":
                info = con.execute(f"PRAGMA table_info({_quote(name)})").fetchall()
                fk = con.execute(f"PRAGMA foreign_key_list({_quote(name)})").fetchall()
                text = _compact_table(name, [(c[1], bool(c[5])) for c in info],
                                      [(f[3], f[2], f[4]) for f in fk if f[4] is not None])
            else:
                text = _compact(ddl) + ";"
            if rows:
                cur = con.execute(f"SELECT * FROM {_quote(name)} LIMIT {int(rows)}")
                cols = [d[0] for d in cur.description]
                body = "\n".join("\t".join(str(v) for v in r) for r in cur.fetchall())
                text += f"\n/*\n{rows} example rows from {name}:\n" + "\t".join(cols) + "\n" + body + "\n*/"
            parts.append(text)
    finally:
        if con is not None:
            con.close()
    return ("\n" if fmt == "compact" and not rows else "\n\n").join(parts)


def schema_from_tables(entry: dict, fmt: str = "ddl") -> str:
    """The schema rebuilt from a tables.json entry (names, types, primary and foreign keys), in `fmt`."""
    tables = entry["table_names_original"]
    cols = entry["column_names_original"]
    types = entry["column_types"]
    pks = set()
    for pk in entry.get("primary_keys", []):
        pks.update(pk if isinstance(pk, list) else [pk])
    fks: dict[int, list[tuple[int, int]]] = {}
    for a, b in entry.get("foreign_keys", []):
        fks.setdefault(cols[a][0], []).append((a, b))
    parts = []
    for t, tname in enumerate(tables):
        mine = [i for i, (ti, _) in enumerate(cols) if ti == t]
        if fmt == "compact":
            parts.append(_compact_table(tname, [(cols[i][1], i in pks) for i in mine],
                                        [(cols[a][1], tables[cols[b][0]], cols[b][1]) for a, b in fks.get(t, [])]))
            continue
        lines = [f"{_quote(cols[i][1])} {types[i]}" for i in mine]
        keys = [_quote(cols[i][1]) for i in mine if i in pks]
        if keys:
            lines.append(f"PRIMARY KEY ({', '.join(keys)})")
        for a, b in fks.get(t, []):
            lines.append(f"FOREIGN KEY ({_quote(cols[a][1])}) REFERENCES "
                         f"{_quote(tables[cols[b][0]])}({_quote(cols[b][1])})")
        parts.append(f"CREATE TABLE {_quote(tname)} (\n" + ",\n".join("  " + ln for ln in lines) + "\n);")
    return ("\n" if fmt == "compact" else "\n\n").join(parts)


class SchemaSource:
    """The schema text of each db_id: from its SQLite file when that opens, else from tables.json."""

    def __init__(self, db_dir: Path, tables: dict[str, dict], cfg, where: str):
        self.db_dir, self.tables, self.where = db_dir, tables, where
        self.rows, self.fmt = cfg.prompt_rows, cfg.options.get("schema_format", "ddl")
        if self.fmt not in FORMATS:
            raise BenchmarkError(f"benchmark.options.schema_format: must be one of {FORMATS}, got {self.fmt!r}")
        self._cache: dict[str, tuple[str, str, str | None]] = {}

    def get(self, db_id: str, record: str) -> tuple[str, str, str | None]:
        """(db_path, schema text, problem with the database or None); unknown db_id -> BenchmarkError."""
        if db_id not in self._cache:
            path = str(self.db_dir / db_id / f"{db_id}.sqlite")
            problem = database_problem(path)
            if problem is None:
                schema = schema_from_db(path, self.rows, self.fmt)
            elif db_id in self.tables:
                schema = schema_from_tables(self.tables[db_id], self.fmt)
            elif not (self.db_dir / db_id).is_dir():
                raise BenchmarkError(f"{record}: unknown db_id {db_id!r}: not in {self.where} and no "
                                     f"folder {self.db_dir / db_id}")
            else:
                schema = ""
            self._cache[db_id] = (path, schema, problem)
        return self._cache[db_id]


def check_databases(problems: list[Problem]) -> None:
    """Raise BenchmarkError naming every unusable database among `problems` and the problems that need it."""
    by_db: dict[str, list[str]] = {}
    for p in problems:
        if p.language == "sql":
            by_db.setdefault(p.db_path or "", []).append(p.id)
    errors = []
    for db, ids in sorted(by_db.items()):
        why = database_problem(db)
        if why:
            more = f", ... ({len(ids)} problems)" if len(ids) > 3 else ""
            errors.append(f"{why} - needed by {', '.join(ids[:3])}{more}")
    if errors:
        raise BenchmarkError("unusable databases for this run:\n  " + "\n  ".join(errors))


def carve_by_db(problems: list[Problem], spec: dict, split: str, seed: int) -> list[Problem]:
    """The `train`, `eval` or `warmup` part of `problems` (one official split) under options.split_by_db.

    eval gets `eval_dbs` (or eval_fraction of the databases, seeded), warmup gets `warmup_dbs` (or
    warmup_fraction), train the rest; `exclude_dbs` are in no part. Parts never share a database.
    """
    known = {"source", "eval_dbs", "eval_fraction", "warmup_dbs", "warmup_fraction", "exclude_dbs",
             "warmup_official_train"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise BenchmarkError(f"benchmark.options.split_by_db: unknown keys {unknown}; known: {sorted(known)}")
    dbs = sorted({p.meta["db_id"] for p in problems})
    for key in ("eval_dbs", "warmup_dbs", "exclude_dbs"):
        bad = sorted(set(spec.get(key) or []) - set(dbs))
        if bad:
            raise BenchmarkError(f"benchmark.options.split_by_db.{key}: {bad} are not databases of "
                                 f"{spec.get('source', 'dev')!r} (it has {dbs})")
    pool = [d for d in dbs if d not in set(spec.get("exclude_dbs") or [])]
    rng = random.Random(f"{seed}/split_by_db")
    drawn = pool[:]
    rng.shuffle(drawn)

    def part(key: str, frac_key: str, taken: set) -> set:
        if spec.get(key):
            return set(spec[key])
        frac = float(spec.get(frac_key) or 0.0)
        if not 0.0 <= frac < 1.0:
            raise BenchmarkError(f"benchmark.options.split_by_db.{frac_key}: must be in [0, 1), got {frac}")
        n = round(frac * len(pool))
        return set([d for d in drawn if d not in taken][: max(n, 1 if frac > 0 else 0)])

    eval_dbs = part("eval_dbs", "eval_fraction", set())
    warm_dbs = part("warmup_dbs", "warmup_fraction", eval_dbs)
    if eval_dbs & warm_dbs:
        raise BenchmarkError(f"benchmark.options.split_by_db: {sorted(eval_dbs & warm_dbs)} in both eval and warmup")
    train_dbs = set(pool) - eval_dbs - warm_dbs
    keep = {"train": train_dbs, "eval": eval_dbs, "warmup": warm_dbs}[split]
    return [p for p in problems if p.meta["db_id"] in keep]


def load_carved(cfg, split: str, spec: dict, official: Callable[[str], list[Problem]],
                official_train: Callable[[], list[Problem]]) -> list[Problem]:
    """A split carved by options.split_by_db; `warmup` adds the official train examples (unless
    warmup_official_train is false) whose database and gold text appear in neither train nor eval."""
    source = spec.get("source", "dev")
    everything = official(source)
    problems = carve_by_db(everything, spec, split, cfg.subsample_seed)
    if split == "warmup":
        if spec.get("warmup_official_train", True):
            used = carve_by_db(everything, spec, "train", cfg.subsample_seed)
            used += carve_by_db(everything, spec, "eval", cfg.subsample_seed)
            dbs, golds = {p.meta["db_id"] for p in used}, {_norm(p.gold) for p in used}
            problems += [p for p in official_train() if p.meta["db_id"] not in dbs and _norm(p.gold) not in golds]
        if not problems:
            raise BenchmarkError(f"{cfg.name}: the warmup split is empty: no split_by_db.warmup_dbs / "
                                 f"warmup_fraction and no official train file under {data_root(cfg)}")
        if cfg.n_warmup and cfg.n_warmup < len(problems):
            problems = random.Random(f"{cfg.subsample_seed}/warmup").sample(problems, cfg.n_warmup)
    if not problems:
        raise BenchmarkError(f"{cfg.name}: split {split!r} carved from {source!r} by database is empty ({spec})")
    return problems


def _norm(sql: str) -> str:
    return " ".join(sql.lower().split())


def user_message(problem: Problem) -> str:
    """The user turn for a text-to-SQL problem: instruction, schema (+ evidence), question."""
    text = ("Write one SQLite query that answers the question, using the database schema below. "
            "Reply with the SQL query only.\n\n" + problem.context)
    # warm-up golds from train_gold.sql come without a question: schema then SQL
    return text + "\n\nQuestion: " + problem.question if problem.question else text
