"""mini_sql's join and nested templates, and `TEMPLATES`: every template with its tier and whether it is rare."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import NamedTuple

from lutra.benchmarks.mini_sql.databases import _Db
from lutra.benchmarks.mini_sql.schema import Col, Table
from lutra.benchmarks.mini_sql.templates import (
    Draft,
    _a,
    _cond,
    _project,
    _say,
    aggregate,
    between,
    count_where,
    distinct,
    group_count,
    group_having,
    order_limit,
    where_and,
    where_eq,
    where_num,
)


def _join(parent: Table, child: Table, f: Col) -> str:
    return f"FROM {parent.name} AS T1 JOIN {child.name} AS T2 ON T1.{f.name} = T2.{f.name}"


def join_filter(rng, db: _Db) -> Draft | None:
    p, ch, f = rng.choice(db.d.links())
    proj = ch.name_col or rng.choice(ch.of("cat", "num"))
    c = _cond(rng, db, p)
    if c is None:
        return None
    q = _say(rng, ("List the {Qs} of {cpl} {prep} {ppl} {cond}.", "What is the {Q} of each {csg} {prep} {ap} {cond}?",
                   "Show the {Q} of every {csg} {prep} {ap} {cond}."),
             Qs=proj.words_pl, Q=proj.words, cpl=ch.pl, csg=ch.sg, prep=f.prep, ppl=p.pl, ap=_a(p.sg),
             cond=c.text(rng))
    sql = f"SELECT T2.{proj.name} {_join(p, ch, f)} WHERE {c.sql('T1.')}"
    return Draft((ch.name, f.name, proj.name) + c.key, q, sql)


def join_group(rng, db: _Db) -> Draft | None:
    p, ch, f = rng.choice(db.d.links())
    c = _cond(rng, db, ch)
    if c is None:
        return None
    n = p.name_col
    q = _say(rng, ("For each {psg}, give the {N} and the number of {cpl} {cond}.",
                   "Show the {N} of each {psg} together with the number of its {cpl} {cond}.",
                   "How many {cpl} {cond} does each {psg} have? List the {N} and the count."),
             psg=p.sg, N=n.words, cpl=ch.pl, cond=c.text(rng))
    sql = f"SELECT T1.{n.name}, COUNT(*) {_join(p, ch, f)} WHERE {c.sql('T2.')} GROUP BY T1.{n.name}"
    return Draft((ch.name, f.name) + c.key, q, sql)


def nested_avg(rng, db: _Db) -> Draft | None:
    t = db.table(rng, "name", "num")
    col = rng.choice(t.of("num"))
    op = rng.choice("<>")
    cols, words = _project(rng, t)
    q = _say(rng, ("List the {P} of {pl} whose {c} is {cmp} the average.",
                   "Which {pl} have {c} {cmp} the average {c}? Give their {P}.",
                   "Find the {P} of {pl} with {c} {cmp} the average {c} of all {pl}."),
             P=words, pl=t.pl, c=col.words, cmp=rng.choice(("above", "greater than") if op == ">" else ("below", "less than")))
    sql = f"SELECT {cols} FROM {t.name} WHERE {col.name} {op} (SELECT AVG({col.name}) FROM {t.name})"
    return Draft((t.name, cols, col.name, op), q, sql)


def _nested(rng, db: _Db, negate: bool) -> Draft | None:
    p, ch, f = rng.choice(db.d.links())
    c = _cond(rng, db, ch)
    if c is None:
        return None
    if negate:
        wordings = ("List the {P} of {ppl} that have no {csg} {cond}.",
                    "Which {ppl} do not have any {csg} {cond}? Give their {P}.",
                    "Find the {P} of every {psg} without {ac} {cond}.")
    else:
        wordings = ("List the {P} of {ppl} that have {ac} {cond}.",
                    "Which {ppl} have at least one {csg} {cond}? Give their {P}.",
                    "Find the {P} of every {psg} with {ac} {cond}.")
    q = _say(rng, wordings, P=p.name_col.words_pl, ppl=p.pl, psg=p.sg, csg=ch.sg, ac=_a(ch.sg), cond=c.text(rng))
    sql = (f"SELECT {p.name_col.name} FROM {p.name} WHERE {f.name} {'NOT IN' if negate else 'IN'} "
           f"(SELECT {f.name} FROM {ch.name} WHERE {c.sql()})")
    return Draft((ch.name, f.name) + c.key, q, sql)


def nested_in(rng, db: _Db) -> Draft | None:
    return _nested(rng, db, negate=False)


def not_in(rng, db: _Db) -> Draft | None:
    return _nested(rng, db, negate=True)


class Template(NamedTuple):
    name: str
    tier: str
    """Spider-style hardness: easy | medium | hard | extra."""
    rare: bool
    """Seen only rarely by the tiny model's warm start (the builder filters; this module does not)."""
    shape: str
    make: Callable[[random.Random, _Db], Draft | None]


TEMPLATES: tuple[Template, ...] = (
    Template("where_eq", "easy", False, "SELECT name FROM t WHERE cat = 'v'", where_eq),
    Template("where_num", "easy", False, "SELECT name FROM t WHERE num > v", where_num),
    Template("between", "easy", True, "SELECT name FROM t WHERE num BETWEEN a AND b", between),
    Template("count_where", "easy", False, "SELECT COUNT(*) FROM t WHERE col = v", count_where),
    Template("distinct", "easy", True, "SELECT DISTINCT cat FROM t WHERE col > v", distinct),
    Template("aggregate", "medium", False, "SELECT AVG|MAX|MIN|SUM(num) FROM t WHERE col = v", aggregate),
    Template("where_and", "medium", True, "SELECT name FROM t WHERE cat = 'v' AND num > w", where_and),
    Template("group_count", "medium", False, "SELECT cat, COUNT(*) FROM t WHERE col > v GROUP BY cat", group_count),
    Template("join_filter", "medium", False, "SELECT T2.col FROM p AS T1 JOIN c AS T2 ON ... WHERE T1.col = v",
             join_filter),
    Template("order_limit", "medium", False, "SELECT name FROM t ORDER BY num DESC|ASC LIMIT n", order_limit),
    Template("group_having", "hard", False, "SELECT cat FROM t GROUP BY cat HAVING COUNT(*) > n", group_having),
    Template("nested_in", "hard", False, "SELECT name FROM p WHERE id IN (SELECT id FROM c WHERE col = v)",
             nested_in),
    Template("join_group", "hard", False,
             "SELECT T1.name, COUNT(*) FROM p AS T1 JOIN c AS T2 ON ... WHERE T2.col = v GROUP BY T1.name", join_group),
    Template("nested_avg", "extra", True, "SELECT name FROM t WHERE num > (SELECT AVG(num) FROM t)", nested_avg),
    Template("not_in", "extra", True, "SELECT name FROM p WHERE id NOT IN (SELECT id FROM c WHERE col = v)", not_in),
)
RARE_TEMPLATES = frozenset(t.name for t in TEMPLATES if t.rare)
