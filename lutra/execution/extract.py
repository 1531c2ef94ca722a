"""The program inside a model's answer.

Instruct models (Llama-3-Instruct, Qwen2.5-Coder-Instruct, ...) wrap code in markdown fences and often add prose
around it; base models and the tiny model answer with the bare program. Reasoning models (Qwen3, DeepSeek-R1,
QwQ) first think inside `<think>...</think>`; that block often quotes draft code, so it goes before the fences are
read. Execution needs the program alone.
"""

from __future__ import annotations

import re

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
# a reasoning block, closed, or opened and cut off by max_new_tokens (then nothing after it is an answer)
_THINK = re.compile(r"<think>.*?(?:</think>|\Z)", re.DOTALL)
_TAGS = {"sql": {"sql", "sqlite", "sqlite3", "postgresql", "mysql"}, "python": {"python", "py", "python3"}}


def extract_program(text: str, language: str = "sql") -> str:
    """The first fenced block tagged with `language` (```sql / ```python, aliases accepted), else the first
    fenced block of any tag; text without a fence comes back unchanged. A fence that was opened and never closed
    (the answer cut at max_new_tokens) yields everything after its opening line. `<think>...</think>` blocks are
    dropped first; so is a lone `</think>` and what precedes it (chat templates that open the block in the prompt,
    as Qwen3's does with thinking enabled, leave only its end in the completion)."""
    if "</think>" in text or "<think>" in text:
        text = _THINK.sub("", text)
        text = text.rsplit("</think>", 1)[-1].strip()
    blocks = _FENCE.findall(text)
    if not blocks:
        return text
    tags = _TAGS.get(language, {language})
    for tag, body in blocks:
        if tag.lower() in tags:
            return body.strip("\n")
    return blocks[0][1].strip("\n")
