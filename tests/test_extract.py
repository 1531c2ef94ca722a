"""Programs inside instruct-model answers: fences and prose stripped before execution, bare programs untouched."""

import sqlite3

import pytest

from lutra.execution.extract import extract_program

SQL = "SELECT name FROM singer WHERE country = 'France'"


@pytest.mark.parametrize("text, language, want", [
    (SQL, "sql", SQL),                                                       # base model: bare program
    ("x = '```'", "python", "x = '```'"),                                   # a lone backtick run is not a fence
    (f"```sql\n{SQL}\n```", "sql", SQL),
    (f"Here is the query:\n\n```sqlite\n{SQL};\n```\nIt filters by country.", "sql", SQL + ";"),
    (f"```\n{SQL}\n```", "sql", SQL),                                         # untagged fence
    (f"```sql\n{SQL}", "sql", SQL),                                           # cut at max_new_tokens: never closed
    ("```text\nnot code\n```\n```sql\nSELECT 1\n```", "sql", "SELECT 1"),     # the language's block wins
    ("```python\nimport numpy as np\nresult = np.zeros(3)\n```", "python", "import numpy as np\nresult = np.zeros(3)"),
    ("```py\nresult = 1\n```\n```python\nresult = 2\n```", "python", "result = 1"),  # the first matching block
    # reasoning models: the <think> block (which may quote draft code) is not the answer
    (f"<think>\nTry ```sql\nSELECT 1\n``` first.\n</think>\n\n```sql\n{SQL}\n```", "sql", SQL),
    (f"<think>the singer table has a country column</think>\n{SQL}", "sql", SQL),
    (f"Need the country filter.\n</think>\n\n{SQL}", "sql", SQL),        # template opened <think> in the prompt
    ("<think>\nStill thinking about SELECT name FROM", "sql", ""),          # cut off while thinking: no answer
])
def test_extract_program(text, language, want):
    assert extract_program(text, language) == want


@pytest.fixture
def singer(tmp_path):
    """(problem, benchmark config, database path): the two-row singer table and SQL as its gold."""
    from lutra.benchmarks import Problem
    from lutra.config import BenchmarkConfig

    db = tmp_path / "concert.sqlite"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE singer (name TEXT, country TEXT)")
        con.executemany("INSERT INTO singer VALUES (?, ?)", [("Ann", "France"), ("Bo", "Chile")])
    p = Problem(id="t/0", question="Singers from France?", context="", gold=SQL, language="sql", db_path=str(db))
    return p, BenchmarkConfig(name="mini_sql", comparison="spider_ts", timeout_s=5.0, workers=1), db


def test_judge_executes_the_fenced_program(singer):
    from lutra.execution import judge

    p, cfg, _ = singer
    answers = [f"```sql\n{SQL}\n```", "Sure! ```sql\nSELECT name FROM singer\n```"]
    assert [v.correct for v in judge([(p, a) for a in answers], cfg, progress=False)] == [True, False]


# small instruct models (SmolLM2-135M-Instruct's real answers, abridged): SQL inside prose, several statements,
# the schema written back. The first statement is the answer; the executor judges it.
@pytest.mark.parametrize("text, want", [
    ("SELECT * FROM singers WHERE name LIKE '%France%';\n\nThis SQL statement will return a list of all singers.",
     "SELECT * FROM singers WHERE name LIKE '%France%';"),
    ("Here is the query: SELECT a FROM t WHERE b = 'x;y'; it returns a.", "SELECT a FROM t WHERE b = 'x;y';"),
    ("SELECT 'it''s; fine' FROM t; SELECT 2", "SELECT 'it''s; fine' FROM t;"),      # quote escaped by doubling
    ('SELECT "a;b" FROM t -- a; comment\n; more', 'SELECT "a;b" FROM t -- a; comment\n;'),
    ("SELECT a /* ; */ FROM t;", "SELECT a /* ; */ FROM t;"),
    ("You can use `SELECT count(*) FROM t` to count them.", "SELECT count(*) FROM t"),  # an inline code span
    ("SELECT `name` FROM t", "SELECT `name` FROM t"),                                 # backtick-quoted identifier
    ("select a from t\n\nThis returns a.", "select a from t"),                        # a blank line ends it
    ("SELECT a\nFROM t\nWHERE b > 1", "SELECT a\nFROM t\nWHERE b > 1"),                 # bare multi-line program
    ("With this query you get it:\nWITH x AS (SELECT 1) SELECT * FROM x;", "WITH x AS (SELECT 1) SELECT * FROM x;"),
    ("The answer is:\n\nCREATE TABLE t (a INT);\nSELECT a FROM t;", "CREATE TABLE t (a INT);"),
    ("```sql\nSELECT 1;\nSELECT 2;\n```", "SELECT 1;"),                                # fenced: first statement too
    ("The answer is 42.", "The answer is 42."),                                       # no SQL: left to fail
    ("SELECT a FROM t WHERE b = 'never closed", "SELECT a FROM t WHERE b = 'never closed"),
])
def test_first_statement_out_of_prose(text, want):
    assert extract_program(text, "sql") == want


def test_python_is_not_cut_at_semicolons():
    code = "import numpy as np; result = np.zeros(3)\n\nprint(result)"
    assert extract_program(code, "python") == code


def test_refused_statements_are_wrong_answers_not_harness_errors(singer):
    from lutra.execution import judge

    p, cfg, db = singer
    answers = ["CREATE TABLE singer (name TEXT, country TEXT);\nSELECT name FROM singer WHERE country = 'France';",
               "DROP TABLE singer;", "Sure:\nDELETE FROM singer; SELECT 1", f"The query is {SQL}; it filters.",
               "The singers from France are Ann."]
    verdicts = judge([(p, a) for a in answers], cfg, progress=False)
    assert [v.correct for v in verdicts] == [False, False, False, True, False]
    assert [v.status for v in verdicts] == ["error", "error", "error", "ok", "error"]
    assert all("not authorized" in v.error for v in verdicts[:3])
    with sqlite3.connect(db) as con:  # and nothing was written
        assert con.execute("SELECT count(*) FROM singer").fetchone() == (2,)
