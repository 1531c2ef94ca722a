"""BIRD (Li et al. 2023) in its official layout, dev and train releases and mini_dev.

    <dir>/dev.json + dev_tables.json + dev_databases/<db_id>/<db_id>.sqlite         (dev.zip, `dev_20240627/`)
    <dir>/train.json + train_tables.json + train_databases/<db_id>/<db_id>.sqlite   (train.zip, `train/`)
    <dir>/mini_dev_sqlite.json + dev_databases/...                                  (minidev.zip, `MINIDEV/`)

`<dir>` is the data root itself or, as the official archives unpack, a folder in it (FILES below); mini_dev
without its own dev_databases/ uses the dev release's. `lutra.prepare` unpacks a release's inner
`<x>_databases.zip`. Records: question_id, db_id, question, evidence, SQL,
difficulty. Problem id = str(question_id); a release without question ids (train.json, the May-2023 dev) uses
`<split>/<index in the file>`. The prompt includes the evidence. meta: db_id, difficulty, evidence, copies
(a record repeated whole in the file, as mini_dev repeats question_id 137 and 138, is one problem with
copies=2: lutra.evaluate weighs it twice, as the official position-based script counts it).
`options.split_by_db` carves a split by database as for Spider (see conf/benchmark/bird.yaml); its `warmup`
also takes train.json when the train release is there.
"""

from __future__ import annotations

from pathlib import Path

from lutra.benchmarks import BenchmarkError, Problem
from lutra.benchmarks import sql_schema as S

# split -> (questions file, folders to look in under the data root, tables file, databases folder)
FILES = {
    "dev": ("dev.json", ("", "dev", "dev_20240627"), "dev_tables.json", "dev_databases"),
    "train": ("train.json", ("", "train"), "train_tables.json", "train_databases"),
    "mini_dev": ("mini_dev_sqlite.json", ("", "mini_dev", "MINIDEV", "minidev/MINIDEV"), "dev_tables.json",
                 "dev_databases"),
}
DIFFICULTIES = ("simple", "moderate", "challenging")


def split_file(root: Path, split: str) -> Path:
    if split not in FILES:
        raise BenchmarkError(f"bird: unknown split {split!r}; official splits: {sorted(FILES)} "
                             "(train/eval/warmup are carved with benchmark.options.split_by_db)")
    name, folders = FILES[split][:2]
    tried = [root / sub / name for sub in folders]
    for path in tried:
        if path.is_file():
            return path
    raise BenchmarkError(f"bird/{split}: {name} not found; looked for {[str(p) for p in tried]} "
                         "(run `python -m lutra.prepare benchmark=bird` or set benchmark.data_dir)")


def _official(root: Path, split: str, cfg) -> list[Problem]:
    path = split_file(root, split)
    _, _, tables_name, db_folder = FILES[split]
    # mini_dev uses dev's databases: beside its own file, else where the dev release keeps them
    near = [path.parent] + ([root / sub for sub in FILES["dev"][1]] if split == "mini_dev" else [])
    db_dir = next((d / db_folder for d in near if (d / db_folder).is_dir()), path.parent / db_folder)
    tables_path = next((d / tables_name for d in near if (d / tables_name).is_file()), path.parent / tables_name)
    schemas = S.SchemaSource(db_dir, S.read_tables(tables_path), cfg, str(tables_path))
    records = S.read_records(path)
    with_ids = sum("question_id" in r for r in records)
    if 0 < with_ids < len(records):
        i = next(i for i, r in enumerate(records) if "question_id" not in r)
        raise BenchmarkError(f"{path}: record {i}: missing key 'question_id' (other records have one)")
    problems, seen, first_index = [], {}, {}
    for i, rec in enumerate(records):
        where = f"{path}: record {i}"
        if with_ids:
            qid = str(S.field(rec, "question_id", (int, str), where))
            where += f" (question_id {qid})"
            if qid in seen:
                first = seen[qid]
                if records[first] != rec:
                    raise BenchmarkError(f"{where}: duplicate question_id, also record {first} (different content)")
                # mini_dev_sqlite.json repeats two whole records (question_id 137 and 138); the official
                # script scores by position, so each counts twice in its EX: one problem with weight 2 here
                problems[first_index[qid]].meta["copies"] += 1
                continue
            seen[qid] = i
        else:
            qid = f"{split}/{i}"
        db_id = S.field(rec, "db_id", str, where)
        question = S.field(rec, "question", str, where)
        gold = S.field(rec, "SQL", str, where)
        evidence = S.field(rec, "evidence", str, where) if "evidence" in rec else ""
        db_path, schema, db_problem = schemas.get(db_id, where)
        meta = {"db_id": db_id, "evidence": evidence, "copies": 1}
        if "difficulty" in rec:
            meta["difficulty"] = S.field(rec, "difficulty", str, where)
            if meta["difficulty"] not in DIFFICULTIES:
                raise BenchmarkError(f"{where}: difficulty {meta['difficulty']!r} is not one of {DIFFICULTIES}")
        if db_problem:
            meta["db_problem"] = db_problem
        context = schema + (f"\n\n-- External knowledge: {evidence}" if evidence.strip() else "")
        first_index[qid] = len(problems)
        problems.append(Problem(id=qid, question=question, context=context, gold=gold, language="sql",
                                db_path=db_path, meta=meta))
    return problems


def _official_train(root: Path, cfg) -> list[Problem]:
    name, folders = FILES["train"][:2]
    if not any((root / sub / name).is_file() for sub in folders):
        return []
    return _official(root, "train", cfg)


def load(cfg, split: str) -> list[Problem]:
    root = S.data_root(cfg)
    spec = dict(cfg.options.get("split_by_db") or {})
    if not spec or split not in S.CARVED:
        return _official(root, split, cfg)
    return S.load_carved(cfg, split, spec, lambda s: _official(root, s, cfg), lambda: _official_train(root, cfg))


def user_message(problem: Problem) -> str:
    return S.user_message(problem)
