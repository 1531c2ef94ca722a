"""The program inside a model's answer.

Instruct models (Llama-3-Instruct, Qwen2.5-Coder-Instruct, ...) wrap code in markdown fences and often add prose
around it; base models and the tiny model answer with the bare program. Execution needs the program alone.
"""

from __future__ import annotations

import re

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_TAGS = {"sql": {"sql", "sqlite", "sqlite3", "postgresql", "mysql"}, "python": {"python", "py", "python3"}}


def extract_program(text: str, language: str = "sql") -> str:
    """The first fenced block tagged with `language` (```sql / ```python, aliases accepted), else the first
    fenced block of any tag; text without a fence comes back unchanged. A fence that was opened and never closed
    (the answer cut at max_new_tokens) yields everything after its opening line."""
    blocks = _FENCE.findall(text)
    if not blocks:
        return text
    tags = _TAGS.get(language, {language})
    for tag, body in blocks:
        if tag.lower() in tags:
            return body.strip("\n")
    return blocks[0][1].strip("\n")
