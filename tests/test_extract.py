"""Programs inside instruct-model answers: fences and prose stripped before execution, bare programs untouched."""

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


def test_judge_executes_the_fenced_program(tmp_path):
    import sqlite3

    from lutra.benchmarks import Problem
    from lutra.config import BenchmarkConfig
    from lutra.execution import judge

    db = tmp_path / "concert.sqlite"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE singer (name TEXT, country TEXT)")
        con.executemany("INSERT INTO singer VALUES (?, ?)", [("Ann", "France"), ("Bo", "Chile")])
    p = Problem(id="t/0", question="Singers from France?", context="", gold=SQL, language="sql", db_path=str(db))
    cfg = BenchmarkConfig(name="mini_sql", comparison="spider_ts", timeout_s=5.0, workers=1)
    answers = [f"```sql\n{SQL}\n```", "Sure! ```sql\nSELECT name FROM singer\n```"]
    assert [v.correct for v in judge([(p, a) for a in answers], cfg, progress=False)] == [True, False]
