"""Spider 1.0 (Yu et al. 2018) in its official layout.

    <data_dir>/train_spider.json, train_others.json, dev.json, tables.json, train_gold.sql
    <data_dir>/database/<db_id>/<db_id>.sqlite       (test.json, test_tables.json, test_database/ for `test`)

Splits: the official files `train` (train_spider.json), `train_others`, `dev`, `test`, and `train_gold`
(train_gold.sql, `SQL<TAB>db_id` per line: gold programs without questions, for a warm start only).
Problem id = `<split>/<index in the file>` (`dev/17`); meta: db_id, difficulty (the official evaluator's
easy / medium / hard / extra, from the record's parsed `sql`).

`options.split_by_db` (see conf/benchmark/spider.yaml) carves one official split into `train`, `eval` and
`warmup` parts that share no database; `warmup` then also takes the official train examples
(train_spider.json + train_others.json, or train_gold.sql when only that is present) unless
`warmup_official_train: false`: their databases are Spider's train databases, disjoint from dev's.
Without split_by_db there is no `warmup` split (the official train split is the training data).
"""

from __future__ import annotations

from pathlib import Path

from lutra.benchmarks import BenchmarkError, Problem
from lutra.benchmarks import sql_schema as S

FILES = {  # split -> (questions file, database folder, tables file)
    "train": ("train_spider.json", "database", "tables.json"),
    "train_others": ("train_others.json", "database", "tables.json"),
    "dev": ("dev.json", "database", "tables.json"),
    "test": ("test.json", "test_database", "tables.json"),
}


def _official(root: Path, split: str, cfg) -> list[Problem]:
    if split == "train_gold":
        return _train_gold(root, cfg)
    if split not in FILES:
        raise BenchmarkError(f"spider: unknown split {split!r}; official splits: {sorted(FILES) + ['train_gold']}"
                             f" (train/eval/warmup are carved with benchmark.options.split_by_db)")
    name, db_folder, tables_name = FILES[split]
    path = root / name
    tables_path = root / ("test_tables.json" if split == "test" and (root / "test_tables.json").is_file()
                          else tables_name)
    schemas = S.SchemaSource(root / db_folder, S.read_tables(tables_path), cfg, str(tables_path))
    problems = []
    for i, rec in enumerate(S.read_records(path)):
        where = f"{path}: record {i}"
        db_id = S.field(rec, "db_id", str, where)
        question = S.field(rec, "question", str, where)
        gold = S.field(rec, "query", str, where)
        db_path, schema, db_problem = schemas.get(db_id, where)
        meta = {"db_id": db_id}
        if isinstance(rec.get("sql"), dict):
            meta["difficulty"] = hardness(rec["sql"])
        if db_problem:
            meta["db_problem"] = db_problem
        problems.append(Problem(id=f"{split}/{i}", question=question, context=schema, gold=gold,
                                language="sql", db_path=db_path, meta=meta))
    return problems


def _train_gold(root: Path, cfg) -> list[Problem]:
    path = root / "train_gold.sql"
    if not path.is_file():
        raise BenchmarkError(f"{path}: file not found")
    schemas = S.SchemaSource(root / "database", S.read_tables(root / "tables.json"), cfg, str(root / "tables.json"))
    problems = []
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        gold, sep, db_id = line.rstrip("\n").rpartition("\t")
        if not sep or not gold.strip() or not db_id.strip():
            raise BenchmarkError(f"{path}:{n}: expected `SQL<TAB>db_id`, got {line[:80]!r}")
        db_path, schema, db_problem = schemas.get(db_id.strip(), f"{path}:{n}")
        meta = {"db_id": db_id.strip(), "no_question": True}
        if db_problem:
            meta["db_problem"] = db_problem
        problems.append(Problem(id=f"train_gold/{n - 1}", question="", context=schema, gold=gold.strip(),
                                language="sql", db_path=db_path, meta=meta))
    return problems


def load(cfg, split: str) -> list[Problem]:
    root = S.data_root(cfg)
    spec = dict(cfg.options.get("split_by_db") or {})
    if not spec or split not in S.CARVED:
        return _official(root, split, cfg)
    return S.load_carved(cfg, split, spec, lambda s: _official(root, s, cfg), lambda: _official_train(root, cfg))


def _official_train(root: Path, cfg) -> list[Problem]:
    """Spider's own train examples (questions when train_spider.json is there, else train_gold.sql)."""
    if (root / FILES["train"][0]).is_file():
        out = _official(root, "train", cfg)
        if (root / FILES["train_others"][0]).is_file():
            out += _official(root, "train_others", cfg)
    elif (root / "train_gold.sql").is_file():
        out = _train_gold(root, cfg)
    else:
        return []
    return out


def user_message(problem: Problem) -> str:
    return S.user_message(problem)


# --- difficulty: the official evaluator's hardness rule (taoyds/spider evaluation.py, `eval_hardness`) ----------
# Reproduced with its quirks, as the official per-difficulty numbers depend on them: in the aggregate count a
# WHERE condition counts when its NOT flag is set and HAVING is counted over the and/or tokens too.
_LIKE, _NONE = 9, 0  # WHERE_OPS.index('like'), AGG_OPS.index('none')


def _has_agg(unit) -> bool:
    return unit[0] != _NONE


def _conds(sql) -> list:
    return sql["from"]["conds"][::2] + sql["where"][::2] + sql["having"][::2]


def _component1(sql) -> int:
    n = sum(1 for k in ("where", "groupBy", "orderBy") if len(sql[k]) > 0)
    n += sql["limit"] is not None
    n += max(len(sql["from"]["table_units"]) - 1, 0)
    n += sum(1 for t in sql["from"]["conds"][1::2] + sql["where"][1::2] + sql["having"][1::2] if t == "or")
    n += sum(1 for c in _conds(sql) if c[1] == _LIKE)
    return n


def _component2(sql) -> int:
    nested = sum(isinstance(v, dict) for c in _conds(sql) for v in (c[3], c[4]))
    return nested + sum(sql[k] is not None for k in ("intersect", "except", "union"))


def _others(sql) -> int:
    agg = sum(_has_agg(u) for u in sql["select"][1]) + sum(_has_agg(u) for u in sql["where"][::2])
    agg += sum(_has_agg(u) for u in sql["groupBy"])
    if len(sql["orderBy"]) > 0:
        units = [u[1] for u in sql["orderBy"][1] if u[1]] + [u[2] for u in sql["orderBy"][1] if u[2]]
        agg += sum(_has_agg(u) for u in units)
    agg += sum(_has_agg(u) for u in sql["having"])
    return (agg > 1) + (len(sql["select"][1]) > 1) + (len(sql["where"]) > 1) + (len(sql["groupBy"]) > 1)


def hardness(sql: dict) -> str:
    """easy | medium | hard | extra for a record's parsed `sql`, as the official evaluator classifies it."""
    c1, c2, o = _component1(sql), _component2(sql), _others(sql)
    if c1 <= 1 and o == 0 and c2 == 0:
        return "easy"
    if (o <= 2 and c1 <= 1 and c2 == 0) or (c1 <= 2 and o < 2 and c2 == 0):
        return "medium"
    if (o > 2 and c1 <= 2 and c2 == 0) or (2 < c1 <= 3 and o <= 2 and c2 == 0) or (c1 <= 1 and o == 0 and c2 <= 1):
        return "hard"
    return "extra"
