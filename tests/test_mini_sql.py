"""mini_sql: deterministic, executable, disjoint splits, values copied verbatim, Spider-style prompts."""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from lutra.benchmarks import BenchmarkError, mini_sql
from lutra.config import BenchmarkConfig

SPLITS = ("train", "eval", "held_out", "warmup")


def _cfg(data_dir, **kw) -> BenchmarkConfig:
    return BenchmarkConfig(**{"name": "mini_sql", "n_warmup": 500, "data_dir": str(data_dir), **kw})


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    cfg = _cfg(tmp_path_factory.mktemp("mini_sql"))
    return cfg, {s: mini_sql.load(cfg, s) for s in SPLITS}


def _ro(path: str) -> sqlite3.Connection:
    return sqlite3.connect(Path(path).as_uri() + "?mode=ro", uri=True)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sizes_ids_and_fields(gen):
    _, splits = gen
    assert {s: len(ps) for s, ps in splits.items()} == {"train": 600, "eval": 500, "held_out": 100, "warmup": 500}
    for split, ps in splits.items():
        assert sorted(int(p.id.split("/")[1]) for p in ps) == list(range(len(ps)))
        for p in ps:
            assert p.id.startswith(f"{split}/") and p.language == "sql" and Path(p.db_path).is_absolute()
            assert p.context.startswith("CREATE TABLE")
            assert set(p.meta) == {"db_id", "template", "tier", "rare"}
            assert p.meta["tier"] in ("easy", "medium", "hard", "extra")
            assert p.meta["rare"] == (p.meta["template"] in mini_sql.RARE_TEMPLATES)


def test_deterministic_problems_and_database_bytes(tmp_path):
    runs = []
    for d in ("a", "b"):
        cfg = _cfg(tmp_path / d)
        ps = [mini_sql.load(cfg, s) for s in SPLITS]
        runs.append(([(p.id, p.question, p.context, p.gold, p.meta) for split in ps for p in split],
                     {f.name: _sha(f) for f in sorted((tmp_path / d).glob("*.sqlite"))}))
    assert runs[0] == runs[1]
    assert len(runs[0][1]) == len(mini_sql.DOMAINS)
    # a fresh process reuses the databases it finds with the right fingerprint
    stamp = {f: f.stat().st_mtime_ns for f in (tmp_path / "a").glob("*.sqlite")}
    mini_sql._GENERATORS.clear()
    assert mini_sql.load(_cfg(tmp_path / "a"), "eval")[0].gold == runs[0][0][600][3]
    assert {f: f.stat().st_mtime_ns for f in (tmp_path / "a").glob("*.sqlite")} == stamp
    # another seed: other problems, and the databases there are rebuilt for it
    other = mini_sql.load(_cfg(tmp_path / "a", subsample_seed=1), "eval")
    assert [p.gold for p in other] != [r[3] for r in runs[0][0][600:1100]]


def test_every_gold_executes_read_only_and_is_non_empty(gen):
    _, splits = gen
    cons: dict[str, sqlite3.Connection] = {}
    for ps in splits.values():
        for p in ps:
            con = cons.setdefault(p.db_path, _ro(p.db_path))
            rows = con.execute(p.gold).fetchall()
            assert 0 < len(rows) <= mini_sql.MAX_ROWS, p
            assert rows != [(0,)] and all(any(v is not None for v in r) for r in rows), p
    for con in cons.values():
        con.close()


def test_splits_disjoint(gen):
    _, splits = gen
    seen_keys: set = set()
    seen_questions: set = set()
    for ps in splits.values():
        keys = {(p.meta["template"], p.meta["db_id"], p.gold) for p in ps}
        questions = {p.question for p in ps}
        assert len(keys) == len(ps) and len(questions) == len(ps)
        assert not keys & seen_keys and not questions & seen_questions
        seen_keys |= keys
        seen_questions |= questions


def test_held_out_database_has_its_own_split(gen):
    _, splits = gen
    held = {d.db_id for d in mini_sql.DOMAINS if d.held_out}
    assert held
    assert {p.meta["db_id"] for p in splits["held_out"]} == held
    assert not any(p.meta["db_id"] in held for s in ("train", "eval", "warmup") for p in splits[s])
    assert {p.meta["template"] for p in splits["held_out"]} == {t.name for t in mini_sql.TEMPLATES}
    # eval keeps every seen database, so its EX measures new questions on known schemas
    assert {p.meta["db_id"] for p in splits["eval"]} == {d.db_id for d in mini_sql.DOMAINS if not d.held_out}


def test_held_out_split_is_subsampled_like_eval(tmp_path):
    from lutra import benchmarks

    cfg = _cfg(tmp_path, held_out_split="held_out", n_eval=7)
    assert len(benchmarks.load(cfg, "held_out")) == len(benchmarks.load(cfg, "eval")) == 7
    assert len(benchmarks.load(_cfg(tmp_path, n_eval=7), "held_out")) == 100  # not the configured held-out split


def test_templates_domains_and_balance(gen):
    _, splits = gen
    names = [t.name for t in mini_sql.TEMPLATES]
    assert len(set(names)) == len(names) >= 15
    assert len(mini_sql.RARE_TEMPLATES) >= 5 and mini_sql.RARE_TEMPLATES <= set(names)
    assert {t.tier for t in mini_sql.TEMPLATES} == {"easy", "medium", "hard", "extra"}
    assert len({p.meta["db_id"] for p in splits["train"]}) >= 4
    for split in ("train", "eval"):
        counts = Counter(p.meta["template"] for p in splits[split])
        assert set(counts) == set(names)
        assert max(counts.values()) <= 1.3 * min(counts.values()), counts
        # every template on every domain of the split
        cells = {(p.meta["template"], p.meta["db_id"]) for p in splits[split]}
        assert len(cells) == len(names) * len({p.meta["db_id"] for p in splits[split]})


def test_databases_have_tables_and_foreign_keys(gen):
    _, splits = gen
    for path in sorted({p.db_path for p in splits["eval"]}):
        with _ro(path) as con:
            tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            assert len(tables) >= 3
            fks = [fk for t in tables for fk in con.execute(f"PRAGMA foreign_key_list({t})")]
            assert fks, path
            assert con.execute("PRAGMA foreign_key_check").fetchall() == []
            for t in tables:
                assert 20 <= con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] <= 80


def test_values_copied_verbatim_from_question(gen):
    _, splits = gen
    for p in splits["train"] + splits["eval"]:
        for text in re.findall(r"'([^']*)'", p.gold):
            assert re.search(rf"\b{re.escape(text)}\b", p.question), p
        for number in re.findall(r"(?<![\w.])\d+(?:\.\d+)?", p.gold):
            assert re.search(rf"(?<![\w.]){re.escape(number)}(?![\d])", p.question), p


def test_user_message(gen):
    _, splits = gen
    p = splits["eval"][0]
    msg = mini_sql.user_message(p)
    assert msg.startswith("CREATE TABLE") and p.question in msg and msg.rstrip().endswith(mini_sql.INSTRUCTION)
    assert msg.count("CREATE TABLE") == p.context.count("CREATE TABLE") >= 3


def test_bad_split_and_option(gen):
    cfg, _ = gen
    with pytest.raises(BenchmarkError, match="dev"):
        mini_sql.load(cfg, "dev")
    with pytest.raises(BenchmarkError, match="n_train_pol"):
        mini_sql.load(_cfg(cfg.data_dir, options={"n_train_pol": 10}), "train")


def test_pool_options(tmp_path):
    cfg = _cfg(tmp_path, n_warmup=0, options={"n_train_pool": 30, "n_eval_pool": 45, "n_held_out_pool": 9})
    assert [len(mini_sql.load(cfg, s)) for s in SPLITS] == [30, 45, 9, 0]


def test_eval_and_train_do_not_depend_on_n_warmup(gen, tmp_path):
    _, splits = gen
    cfg = _cfg(tmp_path, n_warmup=0)
    for split in ("train", "eval"):
        assert [p.gold for p in mini_sql.load(cfg, split)] == [p.gold for p in splits[split]]


def test_rare_templates_option_moves_the_flag_not_the_questions(gen, tmp_path):
    cfg, splits = gen
    other = _cfg(cfg.data_dir, options={"rare_templates": ["distinct", "order_limit"]})
    moved = mini_sql.load(other, "train")
    assert [p.gold for p in moved] == [p.gold for p in splits["train"]]
    assert {p.meta["template"] for p in moved if p.meta["rare"]} == {"distinct", "order_limit"}
    assert {p.meta["template"] for p in splits["train"] if p.meta["rare"]} == set(mini_sql.RARE_TEMPLATES)
    for bad in (["no_such_template"], "order_limit"):
        with pytest.raises(BenchmarkError, match="rare_templates"):
            mini_sql.load(_cfg(cfg.data_dir, options={"rare_templates": bad}), "train")


def test_templates_option_keeps_only_those_templates_problems(gen):
    cfg, splits = gen
    keep = ["where_eq", "count_where"]
    for split in ("train", "eval", "warmup"):
        kept = mini_sql.load(_cfg(cfg.data_dir, options={"templates": keep}), split)
        # the same problems as the full benchmark's, in the same order, only those templates
        assert [p.id for p in kept] == [p.id for p in splits[split] if p.meta["template"] in keep]
        assert kept and {p.meta["template"] for p in kept} == set(keep)
    for bad in (["no_such_template"], "where_eq", []):
        with pytest.raises(BenchmarkError, match="options.templates"):
            mini_sql.load(_cfg(cfg.data_dir, options={"templates": bad}), "train")
