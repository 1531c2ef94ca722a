"""Small fixtures in each benchmark's official on-disk format, written into a test's tmp_path (no data checked in).

Spider: dev.json / train_spider.json / tables.json / train_gold.sql / database/<db>/<db>.sqlite (4 databases).
BIRD: dev/dev.json + dev_tables.json + dev_databases/<db>/<db>.sqlite, mini_dev/mini_dev_sqlite.json (with a
whole record repeated, as the real mini_dev repeats question_id 137 and 138), train/train.json (no ids).
DS-1000: data/ds1000.jsonl.gz, records with prompt / reference_code / code_context / metadata whose tests need
only the standard library.
"""

from __future__ import annotations

import gzip
import json
import sqlite3
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# db_id -> (CREATE TABLE statements, rows per table)
DATABASES = {
    "concert": (
        ["CREATE TABLE singer (\n\tsinger_id int PRIMARY KEY,\n\tname text,\n\tcountry text,\n\tage int\n)",
         "CREATE TABLE concert (concert_id int PRIMARY KEY, singer_id int REFERENCES singer(singer_id), year int)"],
        {"singer": [(1, "Ann", "France", 31), (2, "Bo", "Chile", 25), (3, "Cy", "France", 40)],
         "concert": [(1, 1, 2014), (2, 1, 2015), (3, 3, 2015)]}),
    "shop": (
        ["CREATE TABLE item (item_id int PRIMARY KEY, name text, price real)"],
        {"item": [(1, "pen", 1.5), (2, "ink", 3.0), (3, "pad", 2.25)]}),
    "zoo": (
        ["CREATE TABLE animal (animal_id int PRIMARY KEY, kind text, legs int)"],
        {"animal": [(1, "cat", 4), (2, "hen", 2), (3, "dog", 4)]}),
    "school": (
        ["CREATE TABLE student (student_id int PRIMARY KEY, name text, grade int)"],
        {"student": [(1, "Dee", 9), (2, "Eli", 10)]}),
}


def make_db(path: Path, db_id: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ddl, rows = DATABASES[db_id]
    con = sqlite3.connect(path)
    for stmt in ddl:
        con.execute(stmt)
    for table, values in rows.items():
        con.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(values[0]))})", values)
    con.commit()
    con.close()


def tables_entry(db_id: str) -> dict:
    """The tables.json entry of a fixture database (read back from SQLite, as Spider's were made)."""
    ddl, rows = DATABASES[db_id]
    con = sqlite3.connect(":memory:")
    for stmt in ddl:
        con.execute(stmt)
    tables = list(rows)
    cols = [[-1, "*"]]
    types = ["text"]
    pks = []
    for t, name in enumerate(tables):
        for _cid, cname, ctype, _, _, pk in con.execute(f"PRAGMA table_info({name})"):
            cols.append([t, cname])
            types.append("number" if ctype in ("int", "real") else "text")
            if pk:
                pks.append(len(cols) - 1)
    return {"db_id": db_id, "table_names_original": tables, "table_names": tables, "column_names_original": cols,
            "column_names": cols, "column_types": types, "primary_keys": pks, "foreign_keys": []}


def _sql_dict(where: list | None = None, order: list | None = None, limit=None) -> dict:
    """A record's parsed `sql` in Spider's format (enough structure for the hardness rule)."""
    return {"select": [False, [[0, [0, [0, 1, False], None]]]], "from": {"table_units": [["table_unit", 0]],
            "conds": []}, "where": where or [], "groupBy": [], "having": [], "orderBy": order or [],
            "limit": limit, "intersect": None, "union": None, "except": None}


SPIDER_DEV = [  # (db_id, question, gold)
    ("concert", "How many singers are there?", "SELECT count(*) FROM singer"),
    ("concert", "Names of singers from France, oldest first.",
     "SELECT name FROM singer WHERE country = 'France' ORDER BY age DESC"),
    ("concert", "Which years had concerts?", "SELECT DISTINCT year FROM concert"),
    ("shop", "What is the most expensive item?", "SELECT name FROM item ORDER BY price DESC LIMIT 1"),
    ("shop", "Average item price?", "SELECT avg(price) FROM item"),
    ("school", "List student names.", "SELECT name FROM student"),
]
SPIDER_TRAIN = [("zoo", "How many animals have four legs?", "SELECT count(*) FROM animal WHERE legs = 4"),
                ("zoo", "List the kinds of animal.", "SELECT kind FROM animal")]


def write_spider(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for db in DATABASES:
        make_db(root / "database" / db / f"{db}.sqlite", db)

    def records(rows):
        out = []
        for db, q, sql in rows:
            parsed = _sql_dict(where=[[False, 2, [0, [0, 3, False], None], '"France"', None]] if "WHERE" in sql
                               else None, order=["desc", [[0, [0, 4, False], None]]] if "ORDER" in sql else None,
                               limit=1 if "LIMIT" in sql else None)
            out.append({"db_id": db, "question": q, "query": sql, "query_toks": sql.split(),
                        "question_toks": q.split(), "sql": parsed})
        return out

    (root / "dev.json").write_text(json.dumps(records(SPIDER_DEV), indent=1))
    (root / "train_spider.json").write_text(json.dumps(records(SPIDER_TRAIN), indent=1))
    (root / "tables.json").write_text(json.dumps([tables_entry(db) for db in DATABASES]))
    (root / "dev_gold.sql").write_text("".join(f"{sql}\t{db}\n" for db, _, sql in SPIDER_DEV))
    (root / "train_gold.sql").write_text("".join(f"{sql}\t{db}\n" for db, _, sql in SPIDER_TRAIN))
    return root


BIRD_DEV = [  # question_id, db_id, question, evidence, SQL, difficulty
    (0, "concert", "How many French singers?", "French refers to country = 'France'",
     "SELECT COUNT(*) FROM singer WHERE country = 'France'", "simple"),
    (1, "concert", "Name the singers with a concert in 2015.", "",
     "SELECT T1.name FROM singer AS T1 JOIN concert AS T2 ON T1.singer_id = T2.singer_id WHERE T2.year = 2015",
     "moderate"),
    (2, "shop", "Price of the pen?", "pen refers to name = 'pen'", "SELECT price FROM item WHERE name = 'pen'",
     "simple"),
    (3, "shop", "Items dearer than the average, cheapest first.", "",
     "SELECT name FROM item WHERE price > (SELECT AVG(price) FROM item) ORDER BY price", "challenging"),
]


def _bird_record(row) -> dict:
    qid, db, q, ev, sql, diff = row
    return {"question_id": qid, "db_id": db, "question": q, "evidence": ev, "SQL": sql, "difficulty": diff}


def write_bird(root: Path) -> Path:
    dev = root / "dev"
    for db in ("concert", "shop"):
        make_db(dev / "dev_databases" / db / f"{db}.sqlite", db)
    (dev / "dev.json").write_text(json.dumps([_bird_record(r) for r in BIRD_DEV], indent=4))
    (dev / "dev_tables.json").write_text(json.dumps([tables_entry(db) for db in ("concert", "shop")]))
    (dev / "dev.sql").write_text("".join(f"{r[4]}\t{r[1]}\n" for r in BIRD_DEV))
    mini = root / "mini_dev"
    mini.mkdir(parents=True)
    recs = [_bird_record(r) for r in BIRD_DEV[:3]] + [_bird_record(BIRD_DEV[1])]  # a whole record repeated
    (mini / "mini_dev_sqlite.json").write_text(json.dumps(recs, indent=4))
    (mini / "dev_tables.json").write_text(json.dumps([tables_entry(db) for db in ("concert", "shop")]))
    train = root / "train"
    make_db(train / "train_databases" / "zoo" / "zoo.sqlite", "zoo")
    (train / "train.json").write_text(json.dumps([{"db_id": "zoo", "question": q, "evidence": "", "SQL": sql}
                                                   for _, q, sql in SPIDER_TRAIN]))
    return root


_CONTEXT = '''
def generate_test_case(test_case_id):
    x = [3, 1, 2] if test_case_id == 1 else [5, 4]
    return x, {expected}


exec_context = r"""
x = test_input
[insert]
"""


def test_execution(solution: str):
    code = exec_context.replace("[insert]", solution)
    for i in range(2):
        test_input, expected_result = generate_test_case(i + 1)
        test_env = {{"test_input": test_input}}
        exec(code, test_env)
        assert test_env["result"] == expected_result
'''
DS_TASKS = [  # (library, library_problem_id, perturbation_type, origin id, expected-result expression, reference)
    ("Pandas", 0, "Origin", 0, "sorted(x)", "result = sorted(x)"),
    ("Pandas", 1, "Semantic", 0, "sorted(x, reverse=True)", "result = sorted(x, reverse=True)"),
    ("Pandas", 2, "Origin", 2, "len(x)", "result = len(x)"),
    ("Pandas", 3, "Surface", 2, "len(x)", "result = len(x)"),
    ("Numpy", 0, "Origin", 0, "sum(x)", "result = sum(x)"),
    ("Numpy", 1, "Difficult-Rewrite", 0, "sum(x) * 2", "result = 2 * sum(x)"),
    ("Numpy", 2, "Origin", 2, "max(x)", "result = max(x)"),
    ("Numpy", 3, "Origin", 3, "min(x)", "result = min(x)"),
]


def ds1000_records() -> list[dict]:
    out = []
    for pid, (lib, lpid, ptype, origin, expected, ref) in enumerate(DS_TASKS):
        out.append({
            "prompt": f"Problem:\nI have a list x. Compute {expected}.\nA:\n<code>\nx = [3, 1, 2]\n</code>\n"
                      "result = ... # put solution in this variable\nBEGIN SOLUTION\n<code>\n",
            "reference_code": ref + "\n",
            "code_context": _CONTEXT.format(expected=expected),
            "metadata": {"problem_id": pid, "library_problem_id": lpid, "library": lib, "test_case_cnt": 2,
                         "perturbation_type": ptype, "perturbation_origin_id": origin},
        })
    return out


def write_ds1000(root: Path, records: list[dict] | None = None) -> Path:
    path = root / "data" / "ds1000.jsonl.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for rec in records if records is not None else ds1000_records():
            f.write(json.dumps(rec) + "\n")
    return root
