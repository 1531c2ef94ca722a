"""mini_sql's single-table question templates and the pieces every template drafts with (conditions, wordings)."""

from __future__ import annotations

import random
from typing import NamedTuple

from lutra.benchmarks.mini_sql.databases import _Db
from lutra.benchmarks.mini_sql.schema import Col, Table


class Draft(NamedTuple):
    key: tuple
    """Slot values (table, columns, operators, values): with template and db_id, the problem's identity."""
    question: str
    sql: str


_PHRASES = {
    "=": ("whose {c} is {v}", "with {c} {v}"),
    ">": ("whose {c} is greater than {v}", "whose {c} is more than {v}", "with {c} above {v}", "with {c} over {v}"),
    "<": ("whose {c} is less than {v}", "whose {c} is below {v}", "with {c} under {v}", "with {c} below {v}"),
}


class Cond(NamedTuple):
    col: Col
    op: str
    value: object

    def sql(self, alias: str = "") -> str:
        v = f"'{self.value}'" if isinstance(self.value, str) else str(self.value)
        return f"{alias}{self.col.name} {self.op} {v}"

    def text(self, rng: random.Random) -> str:
        v = f'"{self.value}"' if isinstance(self.value, str) else self.value  # quoted, as many Spider questions
        return rng.choice(_PHRASES[self.op]).format(c=self.col.words, v=v)

    @property
    def key(self) -> tuple:
        return (self.col.name, self.op, str(self.value))


def _cond(rng, db: _Db, t: Table, roles=("cat", "num"), skip=()) -> Cond | None:
    """A filter on one column of `t` that keeps some rows but not all: value from the data, verbatim."""
    cols = [c for c in t.of(*roles) if c not in skip]
    if not cols:
        return None
    c = rng.choice(cols)
    vals = db.values(t, c)
    if c.role == "cat":
        return Cond(c, "=", rng.choice(vals))
    op = rng.choice("<>")
    vals = vals[:-1] if op == ">" else vals[1:]
    return Cond(c, op, rng.choice(vals)) if vals else None


def _project(rng, t: Table, skip=()) -> tuple[str, str]:
    """The name column, half the time with one more column: (SQL select list, words)."""
    more = [c for c in t.of("cat", "num") if c not in skip]
    cols = [t.name_col] + ([rng.choice(more)] if more and rng.random() < 0.5 else [])
    return ", ".join(c.name for c in cols), " and ".join(c.words_pl for c in cols)


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _say(rng, wordings: tuple[str, ...], **slots) -> str:
    return rng.choice(wordings).format(**slots)


W_SELECT = ("List the {P} of {pl} {cond}.", "What are the {P} of the {pl} {cond}?",
            "Show the {P} of every {sg} {cond}.", "Find the {P} of all {pl} {cond}.")


def _select(rng, db: _Db, role: str) -> Draft | None:
    t = db.table(rng, "name", role)
    c = _cond(rng, db, t, (role,))
    if c is None:
        return None
    cols, words = _project(rng, t, [c.col])
    q = _say(rng, W_SELECT, P=words, pl=t.pl, sg=t.sg, cond=c.text(rng))
    return Draft((t.name, cols) + c.key, q, f"SELECT {cols} FROM {t.name} WHERE {c.sql()}")


def where_eq(rng, db: _Db) -> Draft | None:
    return _select(rng, db, "cat")


def where_num(rng, db: _Db) -> Draft | None:
    return _select(rng, db, "num")


def between(rng, db: _Db) -> Draft | None:
    t = db.table(rng, "name", "num")
    col = rng.choice(t.of("num"))
    vals = db.values(t, col)
    i, j = sorted(rng.sample(range(len(vals)), 2))
    if i == 0 and j == len(vals) - 1:
        return None  # every row
    cols, words = _project(rng, t, [col])
    q = _say(rng, ("List the {P} of {pl} whose {c} is between {a} and {b}.",
                   "Which {pl} have {c} between {a} and {b}? Give their {P}.",
                   "Find the {P} of {pl} with {c} from {a} to {b}."),
             P=words, pl=t.pl, c=col.words, a=vals[i], b=vals[j])
    sql = f"SELECT {cols} FROM {t.name} WHERE {col.name} BETWEEN {vals[i]} AND {vals[j]}"
    return Draft((t.name, cols, col.name, str(vals[i]), str(vals[j])), q, sql)


def where_and(rng, db: _Db) -> Draft | None:
    t = db.table(rng, "name", "cat", "num")
    k, n = rng.choice(t.of("cat")), rng.choice(t.of("num"))
    v, x = rng.choice(db.query(f"SELECT {k.name}, {n.name} FROM {t.name}"))
    op = rng.choice("<>")
    vals = [w for w in db.values(t, n) if (w < x if op == ">" else w > x)]  # the drawn row qualifies
    if not vals:
        return None
    c1, c2 = Cond(k, "=", v), Cond(n, op, rng.choice(vals))
    cols, words = _project(rng, t, [k, n])
    q = _say(rng, ("List the {P} of {pl} {c1} and {c2}.", "What are the {P} of the {pl} {c1} and {c2}?",
                   "Show the {P} of every {sg} {c1} and {c2}."),
             P=words, pl=t.pl, sg=t.sg, c1=c1.text(rng), c2=c2.text(rng))
    sql = f"SELECT {cols} FROM {t.name} WHERE {c1.sql()} AND {c2.sql()}"
    return Draft((t.name, cols) + c1.key + c2.key, q, sql)


def count_where(rng, db: _Db) -> Draft | None:
    t = rng.choice(db.d.tables)
    c = _cond(rng, db, t)
    if c is None:
        return None
    q = _say(rng, ("How many {pl} are there {cond}?", "Count the {pl} {cond}.", "What is the number of {pl} {cond}?"),
             pl=t.pl, cond=c.text(rng))
    return Draft((t.name,) + c.key, q, f"SELECT COUNT(*) FROM {t.name} WHERE {c.sql()}")


AGGS = {"AVG": ("average", "mean"), "MAX": ("maximum", "largest"), "MIN": ("minimum", "smallest"), "SUM": ("total",)}


def aggregate(rng, db: _Db) -> Draft | None:
    t = db.table(rng, "num")
    fn = rng.choice(sorted(AGGS))
    nums = [c for c in t.of("num") if not (fn == "SUM" and c.year)]
    if not nums:
        return None
    col = rng.choice(nums)
    c = _cond(rng, db, t, skip=[col])
    if c is None:
        return None
    q = _say(rng, ("What is the {A} {c} of {pl} {cond}?", "Find the {A} {c} among {pl} {cond}.",
                   "Give the {A} {c} of all {pl} {cond}."),
             A=rng.choice(AGGS[fn]), c=col.words, pl=t.pl, cond=c.text(rng))
    return Draft((t.name, fn, col.name) + c.key, q, f"SELECT {fn}({col.name}) FROM {t.name} WHERE {c.sql()}")


def _category_and_cond(rng, db: _Db):
    """A table with a category column k and a condition on another column: (table, k, cond), or None."""
    t = db.table(rng, "cat")
    k = rng.choice(t.of("cat"))
    c = _cond(rng, db, t, skip=[k])
    return None if c is None else (t, k, c)


def distinct(rng, db: _Db) -> Draft | None:
    if (drawn := _category_and_cond(rng, db)) is None:
        return None
    t, k, c = drawn
    q = _say(rng, ("List the distinct {K} of {pl} {cond}.", "What are the different {K} of {pl} {cond}?",
                   "Show all unique {K} among {pl} {cond}."), K=k.words_pl, pl=t.pl, cond=c.text(rng))
    return Draft((t.name, k.name) + c.key, q, f"SELECT DISTINCT {k.name} FROM {t.name} WHERE {c.sql()}")


def group_count(rng, db: _Db) -> Draft | None:
    if (drawn := _category_and_cond(rng, db)) is None:
        return None
    t, k, c = drawn
    q = _say(rng, ("For each {K}, how many {pl} are there {cond}?", "Count the {pl} {cond} for each {K}.",
                   "Show each {K} and the number of {pl} {cond}."), K=k.words, pl=t.pl, cond=c.text(rng))
    sql = f"SELECT {k.name}, COUNT(*) FROM {t.name} WHERE {c.sql()} GROUP BY {k.name}"
    return Draft((t.name, k.name) + c.key, q, sql)


def group_having(rng, db: _Db) -> Draft | None:
    t = db.table(rng, "cat")
    k = rng.choice(t.of("cat"))
    counts = sorted(n for _, n in db.query(f"SELECT {k.name}, COUNT(*) FROM {t.name} GROUP BY {k.name}"))
    op = rng.choice((">", ">="))
    lo, hi = (counts[0], counts[-1] - 1) if op == ">" else (counts[0] + 1, counts[-1])  # some groups, not all
    if max(lo, 2) > hi:
        return None
    n = rng.randint(max(lo, 2), hi)
    q = _say(rng, ("Which {Ks} have {cmp} {n} {pl}?", "List the {Ks} with {cmp} {n} {pl}.",
                   "Find every {K} that has {cmp} {n} {pl}."),
             Ks=k.words_pl, K=k.words, cmp="more than" if op == ">" else "at least", n=n, pl=t.pl)
    sql = f"SELECT {k.name} FROM {t.name} GROUP BY {k.name} HAVING COUNT(*) {op} {n}"
    return Draft((t.name, k.name, op, str(n)), q, sql)


def order_limit(rng, db: _Db) -> Draft | None:
    t = db.table(rng, "name", "num")
    col = rng.choice(t.of("num"))
    order = rng.choice(("DESC", "ASC"))
    n = rng.randint(2, 5)
    top = [r[0] for r in db.query(f"SELECT {col.name} FROM {t.name} ORDER BY {col.name} {order}")][: n + 1]
    if len(set(top)) < n + 1:
        return None  # a tie inside the top n or at its boundary: the answer would not be unique
    hi = rng.choice(("highest", "largest") if order == "DESC" else ("lowest", "smallest"))
    cols, words = _project(rng, t)
    q = _say(rng, ("List the {P} of the {n} {pl} with the {hi} {c}.", "Which {n} {pl} have the {hi} {c}? Give their {P}.",
                   "Sort the {pl} by {c}, {hi} first, and show the {P} of the first {n}."),
             P=words, n=n, pl=t.pl, hi=hi, c=col.words)
    sql = f"SELECT {cols} FROM {t.name} ORDER BY {col.name} {order} LIMIT {n}"
    return Draft((t.name, cols, col.name, order, str(n)), q, sql)
