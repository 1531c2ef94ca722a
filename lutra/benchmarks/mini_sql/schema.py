"""mini_sql's schema description: columns, tables and the five domains, with the word lists their values
come from."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


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
