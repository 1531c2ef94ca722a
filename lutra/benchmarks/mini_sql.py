"""mini_sql: the embedded text-to-SQL benchmark, generated deterministically from a seed (no download).

Why it exists: the default run trains a ~4M-parameter Llama built locally, so the benchmark must be small, fast
to execute and learnable by such a model, while keeping the structure of Spider: SQLite databases, schema-only
prompts made of CREATE TABLE statements, gold queries compared by execution.

Databases. Five domains (music, school, shop, library, hospital), 3-4 tables each with primary and foreign
keys and 20-80 rows of realistic values (names, cities, years, prices) drawn from fixed word lists by a
`random.Random` seeded with `subsample_seed`. Each is written atomically (temp file + `os.replace`) under
`data_dir` (default `outputs/data/mini_sql/<fingerprint>/`) and reused when its `PRAGMA user_version` matches the
fingerprint (generator version + seed); an explicit `data_dir` holds one seed at a time (another seed rebuilds
the files). `hospital` is held out: it has its own split, `held_out` (100 problems, every template), and never
appears in `eval`, `train` or `warmup`, so transfer to an unseen schema is measured and reported separately
(benchmark.held_out_split) and does not dilute eval's EX. Until generator version 3 the hospital problems were 18%
of `eval`; no method ever solved one (a 3M model trained on four schemas does not read a fifth), so they capped eval
at 82% and shrank every difference by 18%.

Templates. Fifteen question templates (`TEMPLATES`) cover projection with WHERE on a text value, numeric
comparisons, BETWEEN, AND, COUNT, AVG/MAX/MIN/SUM, DISTINCT, GROUP BY, HAVING, ORDER BY ... LIMIT, JOIN with a
filter, JOIN + GROUP BY and nested IN / NOT IN / AVG subqueries. They are schema-driven: every table declares
its name, category (text) and numeric columns and its foreign keys, so every template instantiates on every
domain. Each has 3-4 paraphrased wordings and exactly one canonical SQL style (uppercase keywords, single spaces,
`T1`/`T2` aliases in joins). Values are copied verbatim: `... whose country is "France"` -> `country = 'France'`,
`... greater than 30` -> `age > 30`. Slot values are drawn from the database rows and every gold is executed at
generation: it returns 1-300 rows, no all-NULL row, no zero count, no tie within or at a LIMIT. Tiers follow
Spider's hardness (easy / medium / hard / extra) by the number of SQL components.

Rare templates. Five templates (BETWEEN, DISTINCT, AND, nested AVG, NOT IN) are flagged rare. This module does not
filter; the tiny model's builder gives each rare template only a fraction of a common template's share of the warm
start (`model.tiny.rare_templates_keep`). That mirrors the paper's regime: a base that has seen SQL syntax, schema
reading and value copying, but is weak on some of the target task's own patterns, so preference refinement on
`train` has something to learn, visible per template and tier in eval. The five are each one step from common
templates (a new keyword, a second condition, NOT before IN), so sampling writes them "now and then" and the loop
can learn them. Until tiny recipe 6 the set was HAVING, ORDER BY ... LIMIT, JOIN + GROUP BY, nested AVG, NOT IN:
there JOIN + GROUP BY stayed at ~20% for every method (ground truth included), and bases that wrote `ASC` for
"highest" or `>` for "at least" rarely sampled the other (no correct sample in 8 on 24 of 40 ORDER BY ... LIMIT
training problems), so many of those problems gave no pairs.

Splits. `eval` (500) is generated first, then `held_out` (100, the hospital database only), `train` (600), then
`warmup` (`n_warmup`, 16,000 in conf/benchmark/mini_sql.yaml), each cycling over templates x domains so templates
appear in equal proportion. A
problem's key (template, db_id, slot values) and its question text are never reused, so the splits are disjoint and
eval asks only unseen combinations. eval and train do not depend on `n_warmup`. A template x domain whose
combinations run out (in warmup: where_eq, HAVING, nested AVG, ORDER BY ... LIMIT) passes its turn to the others.
Options (benchmark.options): `n_train_pool` (600), `n_eval_pool` (500), `n_held_out_pool` (100),
`rare_templates` (default: the five above; which templates the tiny model's warm start keeps rare; the questions
drawn do not change).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import sqlite3
import tempfile
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import NamedTuple

from lutra.benchmarks import BenchmarkError, Problem

GENERATOR_VERSION = "3"
SPLITS = ("eval", "held_out", "train", "warmup")
"""Generation order: eval first, so its combinations are reserved before the others draw theirs."""
N_TRAIN_POOL = 600
N_EVAL_POOL = 500
N_HELD_OUT_POOL = 100
MAX_ROWS = 300
ATTEMPTS = 200
"""Draws of one (template, domain) before it counts as exhausted (every new key already used)."""
INSTRUCTION = "Answer with one SQLite query."


# ---------------------------------------------------------------- schema description


@dataclass(frozen=True)
class Col:
    name: str
    role: str
    """pk | name (unique text naming a row) | cat (text category) | num (number) | fk (to `parent`'s pk)."""
    gen: Callable[[random.Random], object] | None = None
    plural: str = ""
    """Plural of the column's words in questions (default: English rules on its name with spaces)."""
    real: bool = False
    year: bool = False
    """A year: never summed."""
    parent: str = ""
    prep: str = ""
    """fk: preposition from the child's rows to the parent's ('concerts by singers')."""

    @property
    def words(self) -> str:
        return self.name.replace("_", " ")

    @property
    def words_pl(self) -> str:
        w = self.words
        if self.plural:
            return self.plural
        if w.endswith("y") and w[-2] not in "aeiou":
            return w[:-1] + "ies"
        return w + ("es" if w.endswith(("s", "ch")) else "s")


@dataclass(frozen=True)
class Table:
    name: str
    sg: str
    pl: str
    rows: int
    cols: tuple[Col, ...]

    def of(self, *roles: str) -> list[Col]:
        return [c for c in self.cols if c.role in roles]

    @property
    def name_col(self) -> Col | None:
        return next(iter(self.of("name")), None)


@dataclass(frozen=True)
class Domain:
    db_id: str
    tables: tuple[Table, ...]
    held_out: bool = False

    def links(self) -> list[tuple[Table, Table, Col]]:
        """(parent, child, fk column) for every foreign key."""
        by_name = {t.name: t for t in self.tables}
        return [(by_name[c.parent], t, c) for t in self.tables for c in t.of("fk")]


def _pick(words: str) -> Callable[[random.Random], str]:
    ws = words.split(",")
    return lambda rng: rng.choice(ws)


def _two(first: str, second: str) -> Callable[[random.Random], str]:
    a, b = first.split(","), second.split(",")
    return lambda rng: f"{rng.choice(a)} {rng.choice(b)}"


def pk(name: str) -> Col:
    return Col(name, "pk")


def named(col: str, gen, plural: str = "") -> Col:
    return Col(col, "name", gen, plural=plural)


def cat(col: str, words: str, plural: str = "") -> Col:
    return Col(col, "cat", _pick(words), plural=plural)


def num(col: str, lo, hi, step: int = 1, digits: int = 0, year: bool = False, plural: str = "") -> Col:
    if digits:
        return Col(col, "num", lambda rng: round(rng.uniform(lo, hi), digits), plural=plural, real=True)
    return Col(col, "num", lambda rng: rng.randrange(lo, hi + 1, step), plural=plural, year=year)


def fk(col: str, parent: str, prep: str) -> Col:
    return Col(col, "fk", parent=parent, prep=prep)


PERSON = _two("Anna,Ben,Carla,David,Elena,Felix,Grace,Hugo,Iris,Jonas,Karen,Leo,Maya,Nina,Oscar,Paula,Quinn,"
              "Rosa,Sam,Tara,Uma,Victor,Wendy,Yara,Zoe,Liam,Omar,Chloe,Ivan,Mira",
              "Adams,Baker,Clark,Diaz,Evans,Fischer,Garcia,Hughes,Ito,Jensen,Kim,Lopez,Moreau,Novak,Olsen,"
              "Patel,Rossi,Silva,Tanaka,Weber,Young,Khan,Murphy,Costa,Berg,Larsen,Wright,Moreno,Schmidt,Brooks")
CITIES = "Paris,Berlin,Madrid,Tokyo,Toronto,Chicago,Sydney,Lisbon,Dublin,Vienna,Oslo,Denver"

DOMAINS: tuple[Domain, ...] = (
    Domain("concert_singer", (
        Table("singer", "singer", "singers", 40, (
            pk("singer_id"), named("name", PERSON),
            cat("country", "France,Germany,Japan,Brazil,Canada,Italy,Spain,Mexico,Australia,Sweden"),
            cat("genre", "Pop,Rock,Jazz,Country,Folk,Blues,Soul,Hip Hop"),
            num("age", 19, 70), num("album_count", 1, 20))),
        Table("stadium", "stadium", "stadiums", 20, (
            pk("stadium_id"),
            named("name", _two("North,Grand,Royal,Lakeside,Victory,Union,Harbor,Summit,Liberty,Eagle",
                              "Arena,Stadium,Park,Dome,Field")),
            cat("city", CITIES), num("capacity", 5000, 90000, 500),
            num("opening_year", 1950, 2020, year=True))),
        Table("concert", "concert", "concerts", 70, (
            pk("concert_id"),
            named("theme", _two("Summer,Electric,Golden,Midnight,Wild,Silver,Neon,Acoustic,Crystal,Velvet,Northern,"
                               "Urban", "Nights,Dreams,Echoes,Waves,Lights,Roads,Hearts,Skies,Voices,Rhythms")),
            cat("season", "Spring,Summer,Autumn,Winter"), num("year", 2008, 2023, year=True),
            num("attendance", 800, 60000), fk("singer_id", "singer", "by"), fk("stadium_id", "stadium", "at"))),
    )),
    Domain("school", (
        Table("student", "student", "students", 60, (
            pk("student_id"), named("name", PERSON),
            cat("major", "Biology,History,Physics,Economics,Music,Chemistry,Mathematics,Philosophy"),
            cat("hometown", CITIES), num("age", 17, 29), num("gpa", 2.0, 4.0, digits=2))),
        Table("course", "course", "courses", 30, (
            pk("course_id"),
            named("title", _two("Introduction to,Advanced,Applied,Modern,Topics in,Foundations of",
                               "Algebra,Genetics,Poetry,Robotics,Statistics,Ethics,Painting,Marketing,Ecology,"
                               "Databases")),
            cat("department", "Science,Arts,Engineering,Business,Humanities,Law"),
            num("credits", 1, 6, plural="credits"), num("capacity", 15, 250))),
        Table("enrollment", "enrollment", "enrollments", 80, (
            pk("enrollment_id"), cat("semester", "Fall,Spring,Summer"), num("year", 2015, 2024, year=True),
            num("grade", 40, 100), fk("student_id", "student", "of"), fk("course_id", "course", "in"))),
    )),
    Domain("shop", (
        Table("customer", "customer", "customers", 50, (
            pk("customer_id"), named("name", PERSON), cat("city", CITIES),
            cat("membership", "Gold,Silver,Bronze,Basic"), num("age", 18, 80))),
        Table("product", "product", "products", 40, (
            pk("product_id"),
            named("name", _two("Classic,Smart,Compact,Deluxe,Eco,Pro,Mini,Ultra",
                              "Lamp,Kettle,Backpack,Chair,Blender,Speaker,Tent,Jacket,Watch,Drone")),
            cat("category", "Kitchen,Garden,Toys,Sports,Electronics,Clothing,Office"),
            num("price", 2, 400, digits=2), num("stock", 0, 500, plural="stock"))),
        Table("orders", "order", "orders", 80, (
            pk("order_id"), cat("status", "shipped,pending,cancelled,delivered"),
            num("quantity", 1, 12), num("order_year", 2016, 2024, year=True),
            fk("customer_id", "customer", "by"), fk("product_id", "product", "for"))),
    )),
    Domain("library", (
        Table("author", "author", "authors", 30, (
            pk("author_id"), named("name", PERSON),
            cat("nationality", "American,British,French,Irish,Canadian,Indian,Nigerian,Chilean"),
            num("birth_year", 1920, 1995, year=True), num("awards", 0, 15, plural="awards"))),
        Table("book", "book", "books", 60, (
            pk("book_id"),
            named("title", _two("The Silent,The Lost,The Hidden,The Last,The Broken,The Golden,The Distant,The Secret,"
                               "The Winter,The Burning", "Garden,River,Kingdom,Letter,Harbor,Mirror,Forest,Island,"
                               "Promise,Voyage,Tower,Shadow")),
            cat("genre", "Mystery,Fantasy,Romance,History,Poetry,Science,Thriller"),
            num("pages", 80, 900, plural="pages"), num("publication_year", 1950, 2023, year=True),
            fk("author_id", "author", "by"))),
        Table("member", "member", "members", 40, (
            pk("member_id"), named("name", PERSON), cat("city", CITIES), num("age", 16, 85),
            num("join_year", 2005, 2024, year=True))),
        Table("loan", "loan", "loans", 80, (
            pk("loan_id"), cat("branch", "Central,North,East,Riverside,Harbor"),
            num("loan_year", 2015, 2024, year=True), num("days_borrowed", 1, 60, plural="days borrowed"),
            fk("book_id", "book", "of"), fk("member_id", "member", "by"))),
    )),
    Domain("hospital", (
        Table("doctor", "doctor", "doctors", 25, (
            pk("doctor_id"), named("name", PERSON),
            cat("specialty", "Cardiology,Neurology,Pediatrics,Oncology,Dermatology,Surgery"),
            num("experience_years", 1, 40, plural="experience years"), num("salary", 60000, 300000, 1000))),
        Table("patient", "patient", "patients", 60, (
            pk("patient_id"), named("name", PERSON), cat("city", CITIES),
            cat("insurance", "Public,Private,Corporate", "insurance types"), num("age", 1, 95), num("weight", 4, 120))),
        Table("appointment", "appointment", "appointments", 80, (
            pk("appointment_id"), cat("visit_type", "checkup,surgery,consultation,emergency,therapy"),
            num("year", 2015, 2024, year=True), num("cost", 40, 2500),
            fk("patient_id", "patient", "of"), fk("doctor_id", "doctor", "with"))),
    ), held_out=True),
)


# ---------------------------------------------------------------- databases


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


# ---------------------------------------------------------------- templates


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


def distinct(rng, db: _Db) -> Draft | None:
    t = db.table(rng, "cat")
    k = rng.choice(t.of("cat"))
    c = _cond(rng, db, t, skip=[k])
    if c is None:
        return None
    q = _say(rng, ("List the distinct {K} of {pl} {cond}.", "What are the different {K} of {pl} {cond}?",
                   "Show all unique {K} among {pl} {cond}."), K=k.words_pl, pl=t.pl, cond=c.text(rng))
    return Draft((t.name, k.name) + c.key, q, f"SELECT DISTINCT {k.name} FROM {t.name} WHERE {c.sql()}")


def group_count(rng, db: _Db) -> Draft | None:
    t = db.table(rng, "cat")
    k = rng.choice(t.of("cat"))
    c = _cond(rng, db, t, skip=[k])
    if c is None:
        return None
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


# ---------------------------------------------------------------- splits


class _Generator:
    """Databases of one seed and the splits drawn from them, in SPLITS order (each only when first asked for)."""

    def __init__(self, root: Path, seed: int, sizes: dict[str, int]):
        self.seed, self.sizes = seed, sizes
        self.dbs = []
        for d in DOMAINS:
            path = root / f"{d.db_id}.sqlite"
            _build(path, d, seed)
            self.dbs.append(_Db(d, path))
        self.keys: set = set()
        self.questions: set = set()
        self.done: dict[str, list[Problem]] = {}

    def split(self, split: str) -> list[Problem]:
        for s in SPLITS[: SPLITS.index(split) + 1]:
            if s not in self.done:
                self.done[s] = self._draw(s)
        return self.done[split]

    def _draw(self, split: str) -> list[Problem]:
        dbs = [db for db in self.dbs if db.d.held_out == (split == "held_out")]
        rng = random.Random(f"mini_sql/{self.seed}/{split}")
        drawn: list[tuple[Template, _Db, Draft]] = []
        exhausted: set = set()
        i = 0
        while len(drawn) < self.sizes[split]:
            if len(exhausted) == len(TEMPLATES) * len(dbs):
                raise BenchmarkError(f"mini_sql/{split}: only {len(drawn)} distinct problems left for "
                                     f"{self.sizes[split]} asked; lower the split's size")
            tmpl, db = TEMPLATES[i % len(TEMPLATES)], dbs[(i // len(TEMPLATES)) % len(dbs)]
            i += 1
            if (tmpl.name, db.d.db_id) in exhausted:
                continue
            for _ in range(ATTEMPTS):
                dr = tmpl.make(rng, db)
                if dr is None:
                    continue
                key = (tmpl.name, db.d.db_id) + dr.key
                if key in self.keys or dr.question in self.questions or not db.accept(dr.sql):
                    continue
                self.keys.add(key)
                self.questions.add(dr.question)
                drawn.append((tmpl, db, dr))
                break
            else:
                exhausted.add((tmpl.name, db.d.db_id))
        rng.shuffle(drawn)
        return [Problem(id=f"{split}/{j}", question=dr.question, context=db.schema, gold=dr.sql, language="sql",
                        db_path=str(db.path),
                        meta={"db_id": db.d.db_id, "template": tmpl.name, "tier": tmpl.tier, "rare": tmpl.rare})
                for j, (tmpl, db, dr) in enumerate(drawn)]


_GENERATORS: dict[tuple, _Generator] = {}
OPTIONS = {"n_train_pool": N_TRAIN_POOL, "n_eval_pool": N_EVAL_POOL, "n_held_out_pool": N_HELD_OUT_POOL,
           "rare_templates": sorted(RARE_TEMPLATES)}


def _generator(cfg) -> _Generator:
    opts = dict(cfg.options or {})
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        raise BenchmarkError(f"benchmark.options: unknown mini_sql option(s) {unknown}; known: {sorted(OPTIONS)}")
    sizes = {"eval": opts.get("n_eval_pool", N_EVAL_POOL), "held_out": opts.get("n_held_out_pool", N_HELD_OUT_POOL),
             "train": opts.get("n_train_pool", N_TRAIN_POOL), "warmup": cfg.n_warmup}
    for split, n in sizes.items():
        if not isinstance(n, int) or isinstance(n, bool) or n < (0 if split == "warmup" else 1):
            raise BenchmarkError(f"mini_sql: size of split {split!r} must be a positive integer, got {n!r}")
    seed = cfg.subsample_seed
    root = Path(cfg.data_dir).expanduser() if cfg.data_dir else Path("outputs/data/mini_sql") / fingerprint(seed)
    key = (str(root.resolve()), seed, tuple(sizes.items()))
    if key not in _GENERATORS:
        _GENERATORS[key] = _Generator(root.resolve(), seed, sizes)
    return _GENERATORS[key]


def load(cfg, split: str) -> list[Problem]:
    """All problems of `split` (train | eval | held_out | warmup); lutra.benchmarks.load subsamples them."""
    if split not in SPLITS:
        raise BenchmarkError(f"mini_sql: unknown split {split!r}; choose one of {sorted(SPLITS)}")
    problems = list(_generator(cfg).split(split))
    rare = (cfg.options or {}).get("rare_templates")
    if rare is None:
        return problems
    names = {t.name for t in TEMPLATES}
    if isinstance(rare, str) or not all(isinstance(r, str) and r in names for r in rare):
        raise BenchmarkError(f"benchmark.options.rare_templates: a list of template names from {sorted(names)}, "
                             f"got {rare!r}")
    rare = set(rare)
    return [dataclasses.replace(p, meta={**p.meta, "rare": p.meta["template"] in rare}) for p in problems]


def user_message(problem: Problem) -> str:
    """Schema (CREATE TABLE statements), question, one-line instruction."""
    schema = _schema(problem.db_path) if problem.db_path else problem.context
    return f"{schema}\n\nQuestion: {problem.question}\n{INSTRUCTION}"
