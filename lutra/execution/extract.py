"""The program inside a model's answer.

Instruct models (Llama-3-Instruct, Qwen2.5-Coder-Instruct, SmolLM2-Instruct, ...) wrap code in markdown fences and
often add prose around it; small ones also answer in prose with the query inline ("Here is the query: SELECT ...;
This returns ..."), or write several statements. Base models and the tiny model answer with the bare program.
Reasoning models (Qwen3, DeepSeek-R1, QwQ) first think inside `<think>...</think>`; that block often quotes draft
code, so it goes before the fences are read. Execution needs the program alone, and SQL one statement: Python's
sqlite3 refuses a second one, and the answer is the first.

What SQL is taken, in order: the first ```sql block (else the first fenced block), else the text from the first
statement keyword on; then that text up to the end of its first statement (the first `;` outside quotes and
comments, kept; unfenced, also a blank line or the closing backtick of an inline `code span`). A statement lutra's
executor refuses (CREATE, DROP, INSERT, ...) is still passed on as written: it runs, is denied, and counts as
wrong, like any other wrong answer.
"""

from __future__ import annotations

import re

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
# a reasoning block, closed, or opened and cut off by max_new_tokens (then nothing after it is an answer)
_THINK = re.compile(r"<think>.*?(?:</think>|\Z)", re.DOTALL)
_TAGS = {"sql": {"sql", "sqlite", "sqlite3", "postgresql", "mysql"}, "python": {"python", "py", "python3"}}
# keywords a SQL statement starts with. WITH only as a CTE ("WITH x AS (" / "WITH RECURSIVE"), so prose that opens
# with "With this query ..." is not taken for one
_KEYWORDS = (r"(?:SELECT|WITH\s+RECURSIVE|WITH\s+\w+(?:\s*\([^)]*\))?\s+AS\s*\(|INSERT|UPDATE|DELETE|REPLACE|CREATE"
             r"|DROP|ALTER|PRAGMA|ATTACH|DETACH|VACUUM|EXPLAIN|VALUES)\b")
_START_UPPER = re.compile(r"\b" + _KEYWORDS)  # SQL in prose is written in capitals ...
_START_LINE = re.compile(r"^[ \t]*(?=" + _KEYWORDS + ")", re.IGNORECASE | re.MULTILINE)  # ... or on a line of its own
_LEADING = re.compile(r"\s*" + _KEYWORDS, re.IGNORECASE)
_BLANK = re.compile(r"\n[ \t]*\n")
_QUOTES = {"'": "'", '"': '"', "`": "`", "[": "]"}


def first_statement(sql: str, *, prose: bool = False, code_span: bool = False) -> str:
    """`sql` up to and including the first `;` outside string literals, quoted identifiers and comments; all of it
    when there is none. `prose` (SQL found in running text): a blank line also ends it; `code_span` (it opened an
    inline `code span`): so does the next backtick."""
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c == ";":
            return sql[: i + 1].strip()
        if c == "`" and code_span:
            return sql[:i].strip()
        if prose and _BLANK.match(sql, i):
            return sql[:i].strip()
        if c in _QUOTES:
            close, j = _QUOTES[c], i + 1
            while True:
                j = sql.find(close, j)
                if j < 0:
                    return sql.strip()  # an unterminated literal: left for SQLite to reject
                if close != "]" and sql.startswith(close, j + 1):  # a doubled quote inside a literal is escaped
                    j += 2
                    continue
                break
            i = j + 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j < 0 else j + 2
        else:
            i += 1
    return sql.strip()


def _sql_in_prose(text: str) -> str:
    if _LEADING.match(text):
        return first_statement(text, prose=True)
    hits = [m.start() for m in (_START_UPPER.search(text), _START_LINE.search(text)) if m]
    if not hits:
        return text
    start = min(hits)
    code_span = text[start - 1 : start] == "`" and text[start - 2 : start] != "``"
    return first_statement(text[start:], prose=True, code_span=code_span)


def extract_program(text: str, language: str = "sql") -> str:
    """The program in `text` (see the module docstring). For any language: `<think>...</think>` blocks are dropped
    first (and a lone `</think>` with what precedes it: chat templates that open the block in the prompt, as
    Qwen3's does with thinking enabled, leave only its end in the completion); then the first fenced block tagged
    with `language` (```sql / ```python, aliases accepted), else the first fenced block of any tag; a fence opened
    and never closed (cut at max_new_tokens) yields everything after its opening line. Unfenced Python comes back
    unchanged; unfenced SQL from its first statement keyword on. SQL is then cut after its first statement."""
    if "</think>" in text or "<think>" in text:
        text = _THINK.sub("", text)
        text = text.rsplit("</think>", 1)[-1].strip()
    blocks = _FENCE.findall(text)
    if not blocks:
        return _sql_in_prose(text) if language == "sql" else text
    tags = _TAGS.get(language, {language})
    body = next((b for tag, b in blocks if tag.lower() in tags), blocks[0][1]).strip("\n")
    return first_statement(body) if language == "sql" else body
