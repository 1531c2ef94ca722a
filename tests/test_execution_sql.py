"""Hostile and pathological SQL against the SQLite sandbox (reliability.md 5.2), judge() caching and labels,
and every Spider dev gold scored against itself on the real databases (skipped when shared data is absent).

Every hostile program: the database file is byte-identical afterwards, no file appears next to it or in the
temp dir, the verdict arrives within timeout + 2 s, and no wrong program is labelled correct.
"""

import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path

import pytest

from lutra.benchmarks import Problem
from lutra.config import BenchmarkConfig
from lutra.execution import judge, sql

T = 1.0  # per-query timeout used by the hostile programs
SPIDER = Path(__file__).resolve().parents[2] / "shared" / "data" / "spider"
if not SPIDER.is_dir():
    SPIDER = Path("/work/shared/data/spider")


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    d = tmp_path_factory.mktemp("sqldb")
    path = d / "tiny.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t (a INTEGER, b TEXT, c REAL)")
    con.executemany("INSERT INTO t VALUES (?, ?, ?)", [(i, f"n{i % 7}", i / 4) for i in range(100)])
    con.execute("CREATE TABLE raw (x BLOB)")
    con.execute("INSERT INTO raw VALUES (CAST(X'61FF62' AS TEXT))")  # invalid UTF-8 stored as TEXT
    con.commit()
    con.close()
    return path


def _sha(p):
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


CROSS = "SELECT * FROM t a, t b, t c, t d"
# (sql, allowed statuses). Every one runs with timeout T and must leave the database untouched.
HOSTILE = [
    ("DROP TABLE t", {"error"}),
    ("DELETE FROM t", {"error"}),
    ("UPDATE t SET a = 0", {"error"}),
    ("INSERT INTO t VALUES (1, 'x', 1.0)", {"error"}),
    ("REPLACE INTO t VALUES (1, 'x', 1.0)", {"error"}),
    ("WITH x AS (SELECT 1) DELETE FROM t WHERE a < 50", {"error"}),
    ("WITH x AS (SELECT 1) UPDATE t SET b = 'p'", {"error"}),
    ("CREATE TABLE evil (a)", {"error"}),
    ("CREATE VIEW v AS SELECT * FROM t", {"error"}),
    ("CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END", {"error"}),
    ("CREATE INDEX ix ON t(a)", {"error"}),
    ("CREATE TEMP TABLE tmp (a)", {"error"}),
    ("ALTER TABLE t ADD COLUMN z", {"error"}),
    ("ALTER TABLE t RENAME TO u", {"error"}),
    ("REINDEX", {"error", "ok"}),  # no index in the tiny DB: nothing to authorize, nothing written
    ("ANALYZE", {"error"}),
    ("ATTACH DATABASE '{dir}/attached.db' AS x", {"error"}),
    ("ATTACH DATABASE 'file:{dir}/attached2.db?mode=rwc' AS y", {"error"}),
    ("VACUUM", {"error"}),
    ("VACUUM INTO '{dir}/copy.db'", {"error"}),
    ("PRAGMA journal_mode=WAL", {"error"}),
    ("PRAGMA user_version=7", {"error"}),
    ("PRAGMA writable_schema=ON", {"error"}),
    ("PRAGMA query_only=0", {"error"}),
    ("SELECT * FROM pragma_table_info('t')", {"error"}),
    ("BEGIN IMMEDIATE", {"error"}),
    ("SAVEPOINT s", {"error"}),
    ("SELECT load_extension('/lib/x.so')", {"error"}),
    ("SELECT fts3_tokenizer('simple')", {"error"}),
    ("SELECT 1; DROP TABLE t", {"error"}),
    ("SELECT 1 -- ; DROP TABLE t", {"ok"}),
    ("SELECT '" + "x" * 200_000 + "'", {"error"}),
    ("SELECT 1\x00; DROP TABLE t", {"error"}),
    ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c", {"timeout"}),
    ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 30000000) SELECT sum(x) FROM c",
     {"timeout"}),
    (CROSS, {"too_large"}),
    (CROSS + " ORDER BY random()", {"timeout", "oom"}),
    ("SELECT randomblob(200000000)", {"error"}),
    ("SELECT zeroblob(200000000)", {"error"}),
    ("SELECT printf('%.*c', 200000000, 'x')", {"ok", "error"}),
    ("SELECT replace(hex(zeroblob(1000000)), '0', '0000000000')", {"error"}),
    ("SELECT group_concat(hex(randomblob(1000))) FROM t a, t b, t c", {"error", "timeout"}),
    ("SELEC a FROM t", {"error"}),
    ("SELECT nope FROM t", {"error"}),
    ("SELECT a FROM missing_table", {"error"}),
    ("SELECT a FROM t WHERE", {"error"}),
    ("", {"ok", "error"}),
    ("   -- only a comment", {"ok", "error"}),
    ("SELECT x FROM raw", {"error"}),  # strict rule: invalid UTF-8 is an error (BIRD's default decoding)
    ("SELECT sqlite_version()", {"ok"}),
]


@pytest.mark.parametrize("i", range(len(HOSTILE)), ids=[h[0][:40] for h in HOSTILE])
def test_hostile_sql(db, i):
    query, allowed = HOSTILE[i]
    query = query.replace("{dir}", str(db.parent))
    before, listing = _sha(db), sorted(os.listdir(db.parent))
    t0 = time.monotonic()
    r = sql.run(str(db), query, timeout_s=T)
    assert time.monotonic() - t0 < T + 2
    assert r.status in allowed, (r.status, r.error)
    assert _sha(db) == before
    assert sorted(os.listdir(db.parent)) == listing
    assert all(os.path.exists(f"/proc/{pid}") for pid in sql.pool().pids())  # workers alive and reused


def test_hostile_count():
    assert len(HOSTILE) >= 40


def test_spider_rule_decodes_invalid_utf8_by_dropping_bytes(db):
    r = sql.run(str(db), "SELECT x FROM raw", rule="spider_ts")
    assert r.status == "ok" and r.rows == [("ab",)]


def test_missing_database_is_an_error_and_is_not_created(tmp_path):
    r = sql.run(str(tmp_path / "nope.sqlite"), "SELECT 1")
    assert r.status == "error" and not (tmp_path / "nope.sqlite").exists()


def test_killed_worker_is_replaced(db):
    """S21: a worker SIGKILLed mid-query gives `killed`, the pool goes on (the mp.Pool hang)."""
    p = sql.pool()
    import threading

    def kill_soon():
        time.sleep(0.3)
        for pid in p.pids():
            os.kill(pid, 9)

    threading.Thread(target=kill_soon).start()
    r = sql.run(str(db), HOSTILE[33][0], timeout_s=3)
    assert r.status in ("killed", "timeout")
    assert sql.run(str(db), "SELECT count(*) FROM t").rows == [(100,)]


def _cfg(rule="spider_ts", timeout=T, workers=2):
    return BenchmarkConfig(name="mini_sql", comparison=rule, timeout_s=timeout, workers=workers)


def _problem(db, gold, pid="p"):
    return Problem(id=pid, question="q", context="", gold=gold, db_path=str(db))


def test_judge_labels_caches_and_hacks(db):
    gold = "SELECT a FROM t WHERE a > 50"
    p = _problem(db, gold)
    items = [
        (p, gold),
        (p, "SELECT a FROM t WHERE a >= 51"),
        (p, "DELETE FROM t"),  # S3: the mini_dev DELETE-then-gold hack
        (p, "SELECT a FROM t WHERE a > 60"),
        (p, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"),
        (p, gold),
    ] * 3
    before = _sha(db)
    v = judge(items, _cfg(), progress=False)
    assert [x.correct for x in v[:6]] == [True, True, False, False, False, True]
    assert v[4].status == "timeout" and v[2].status == "error"
    assert v[:6] == v[6:12] == v[12:]
    assert sql.last_stats["executed"] <= 5
    assert _sha(db) == before
    v2 = judge(items[:4], _cfg(), progress=False)  # cached across calls
    assert sql.last_stats["executed"] == 0 and v2 == v[:4]


def test_failed_gold_gives_unknown_label(db):
    p = _problem(db, "SELECT nope FROM t", "bad")
    v = judge([(p, "SELECT a FROM t"), (p, "SELECT nope FROM t")], _cfg(), progress=False)
    assert [x.correct for x in v] == [None, None]
    assert sql.last_stats["gold_failed"] == 1


def test_bird_set_ignores_duplicates_and_strict_order(db):
    p = _problem(db, "SELECT b FROM t ORDER BY a")
    pred = "SELECT DISTINCT b FROM t"
    assert judge([(p, pred)], _cfg("bird_set"), progress=False)[0].correct is True
    # spider_ts removes DISTINCT from the prediction too, and the rows then come in the gold's order
    assert judge([(p, pred)], _cfg("spider_ts"), progress=False)[0].correct is True
    assert judge([(p, "SELECT b FROM t ORDER BY b")], _cfg("spider_ts"), progress=False)[0].correct is False
    assert judge([(p, "SELECT b FROM t ORDER BY b")], _cfg("bird_set"), progress=False)[0].correct is True
    assert judge([(p, "SELECT b FROM t ORDER BY a")], _cfg("strict"), progress=False)[0].correct is True


def test_for_training_reruns_timeouts(db):
    p = _problem(db, "SELECT 1", "tt")
    slow = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    v = judge([(p, slow)], _cfg(timeout=0.5), progress=False, for_training=True)
    assert v[0].status == "timeout" and v[0].correct is False
    assert sql.last_stats["retried"] == 1


def _spider_items():
    dev = json.loads((SPIDER / "dev.json").read_text())
    items = []
    for i, ex in enumerate(dev):
        path = SPIDER / "database" / ex["db_id"] / f"{ex['db_id']}.sqlite"
        if path.exists():
            items.append((Problem(id=f"dev/{i}", question=ex["question"], context="", gold=ex["query"],
                                  db_path=str(path)), ex["query"]))
    return items


@pytest.mark.skipif(not (SPIDER / "dev.json").exists(), reason="shared Spider data absent (../shared/data/spider)")
@pytest.mark.parametrize("rule", ["spider_ts", "bird_set"])
def test_every_spider_dev_gold_is_correct_against_itself(rule):
    items = _spider_items()
    assert len(items) >= 900
    shas = {p.db_path: _sha(p.db_path) for p, _ in items}
    v = judge(items, _cfg(rule, timeout=30.0), progress=False)
    bad = [(p.id, x) for (p, _), x in zip(items, v, strict=True) if x.correct is not True]
    assert not bad, bad[:5]
    assert all(_sha(path) == h for path, h in shas.items())


# evaluation.py (taoyds/test-suite-sql-eval) rewrites the prediction with p_str.replace("value", "1") before
# running it, blind to SQL: every occurrence of the substring, case-sensitive, even inside a word or a string. A
# column alias named value becomes `AS 1` (a syntax error), `values_n` becomes `1s_n` (an unrecognized token), and
# only a quoted alias survives (`AS "1"`), so the official verdict is wrong; `strict` runs the text as written.
VALUE_ALIAS = [
    ("SELECT count(*) AS value FROM t", False, True),
    ("SELECT count(*) AS value FROM t;", False, True),
    ("SELECT count(*) value FROM t", False, True),
    ("SELECT count(*) AS value FROM t WHERE b != 'value'", False, True),
    ("SELECT count(*) AS value\nFROM t", False, True),  # not only the space-padded word
    ('SELECT count(*) AS "value" FROM t', True, True),  # quoted: rewritten to "1", still a valid alias
    ("SELECT count(*) AS values_n FROM t", False, True),  # inside a word too
    ("SELECT count(*) AS Value FROM t", True, True),  # case-sensitive: Value is not rewritten
]


@pytest.mark.parametrize("pred, official, sensible", VALUE_ALIAS, ids=[v[0] for v in VALUE_ALIAS])
def test_value_alias_quirk(db, pred, official, sensible):
    gold = "SELECT count(*) FROM t"
    for rule, want in (("spider_ts", official), ("strict", sensible)):
        cfg = BenchmarkConfig(name="spider", comparison=rule, timeout_s=5.0, workers=1)
        [v] = judge([(Problem(id="v", question="", context="", gold=gold, db_path=str(db)), pred)], cfg,
                    progress=False)
        assert v.correct is want, (rule, pred, v)
        if rule == "spider_ts" and not want:
            assert v.status == "error" and ("syntax error" in v.error or "unrecognized token" in v.error), v
