"""Result comparison rules, each reproducing an official evaluator, plus the official query rewrites.

Rules (`BenchmarkConfig.comparison`):

- `spider_ts`: taoyds/test-suite-sql-eval `exec_eval.result_eq` (Spider test-suite execution accuracy).
  Rows form a multiset; order matters only when the (rewritten) gold contains the substring `order by`;
  columns may be permuted; Python equality (`1 == 1.0`), no float tolerance. Official quirks reproduced:
  * two empty results are equal whatever their column counts; otherwise row counts and the first rows'
    widths must agree;
  * `quick_rej`: each row is first sorted by the key `str(x) + str(type(x))` and the sorted rows compared
    (as a set, or as a list when ordered), so `(1, 1.5)` vs `(1.0, 1.5)` is *wrong* because the two rows sort
    differently;
  * the column-permutation search: the official code samples rows to prune (sound) and then enumerates
    permutations, factorial in the worst case (142 s at 9 columns). lutra finds the same answer (does *some*
    permutation make the results equal?) exactly, by backtracking over columns whose value bags match and
    pruning on projected row bags, with a node budget and a deadline; running out raises `CompareBudget`
    (the verdict is then wrong, status ok, error `compare_budget`).
  Query rewrites (`prepare`): `postprocess` (`> =` -> `>=`, `< =`, `! =`), `evaluation.py`'s
  `p_str.replace("value", "1")` on the prediction only (every occurrence of the substring, case-sensitive, inside
  identifiers and strings too: `AS value,` becomes `AS 1,`, `t.values` becomes `t.1s`), `remove_distinct` (every DISTINCT token dropped, even inside
  `COUNT(DISTINCT x)`, and only the first statement kept; done with sqlglot's tokenizer, so strings, quoted
  identifiers and comments that contain the word are left alone, as sqlparse does), and
  `replace_cur_year` (`YEAR(CURDATE())` -> `2020`). Text is decoded with invalid UTF-8 dropped.
- `bird_set`: BIRD `evaluation.py` / mini_dev `calculate_ex`: `set(pred) == set(gold)`; row order and
  duplicates ignored, column order strict. No rewrites; invalid UTF-8 in a result is an error.
- `strict`: the row lists are equal (order, duplicates and column order all matter). No rewrites.
"""

from __future__ import annotations

import re
import time
from collections import Counter

RULES = ("spider_ts", "bird_set", "strict")


class CompareBudget(Exception):
    """The exact column-permutation search ran out of nodes or time."""


# ----------------------------------------------------------------------------- official query rewrites

def _postprocess(q: str) -> str:
    return q.replace("> =", ">=").replace("< =", "<=").replace("! =", "!=")


def _replace_cur_year(q: str) -> str:
    # The official regex, verbatim (exec_eval.replace_cur_year).
    return re.sub(r"YEAR\s*\(\s*CURDATE\s*\(\s*\)\s*\)\s*", "2020", q, flags=re.IGNORECASE)


def remove_distinct(q: str) -> str:
    """Official `remove_distinct`: keep the first statement, drop every DISTINCT keyword token.

    sqlparse's first statement includes its `;`; so does ours. Text that sqlglot cannot tokenize (an
    unterminated string, say) is returned unchanged: SQLite will reject it anyway.
    """
    from sqlglot import tokenize
    from sqlglot.tokens import TokenType

    try:
        tokens = tokenize(q, read="sqlite")
    except Exception:  # noqa: BLE001 - a malformed query is left for SQLite to reject
        return q
    out, pos = [], 0
    for tok in tokens:
        if tok.token_type == TokenType.DISTINCT:
            out.append(q[pos:tok.start])
            pos = tok.end + 1
        elif tok.token_type == TokenType.SEMICOLON:
            out.append(q[pos:tok.end + 1])
            return "".join(out)
    out.append(q[pos:])
    return "".join(out)


def prepare(sql: str, rule: str, is_gold: bool) -> str:
    """The text the official evaluator of `rule` actually executes for this query."""
    if rule != "spider_ts":
        return sql
    if not is_gold:
        sql = sql.replace("value", "1")  # evaluation.py: every occurrence, case-sensitive, even inside a word
    return _replace_cur_year(remove_distinct(_postprocess(sql)))


def order_matters(prepared_gold: str) -> bool:
    """Official rule: the substring `order by` anywhere in the (rewritten) gold, subqueries included."""
    return "order by" in prepared_gold.lower()


# ----------------------------------------------------------------------------- comparisons

def _unorder_row(row: tuple) -> tuple:
    return tuple(sorted(row, key=lambda x: str(x) + str(type(x))))


def _quick_rej(gold: list, pred: list, ordered: bool) -> bool:
    s1 = [_unorder_row(r) for r in gold]
    s2 = [_unorder_row(r) for r in pred]
    return s1 == s2 if ordered else set(s1) == set(s2)


def spider_ts_equal(gold: list, pred: list, ordered: bool, *, max_nodes: int = 200_000,
                    deadline: float | None = None) -> bool:
    """Official `result_eq(gold, pred, order_matters)`, with an exact, bounded permutation search."""
    if not gold and not pred:
        return True
    if len(gold) != len(pred):
        return False
    k = len(gold[0])
    if len(pred[0]) != k:
        return False
    if not _quick_rej(gold, pred, ordered):
        return False
    if k == 1:
        return gold == pred if ordered else Counter(gold) == Counter(pred)

    def column(rows, i):
        col = [r[i] for r in rows]
        return col if ordered else Counter(col)

    gcols = [column(gold, j) for j in range(k)]
    pcols = [column(pred, c) for c in range(k)]
    cands = [[c for c in range(k) if pcols[c] == gcols[j]] for j in range(k)]
    if any(not c for c in cands):
        return False
    order = sorted(range(k), key=lambda j: len(cands[j]))  # most constrained gold column first
    nodes = 0

    def bag(rows, cols):
        proj = [tuple(r[c] for c in cols) for r in rows]
        return proj if ordered else Counter(proj)

    def search(depth: int, used: list[int]) -> bool:
        nonlocal nodes
        if depth == k:
            return True
        j = order[depth]
        gsub = bag(gold, order[: depth + 1])
        for c in cands[j]:
            if c in used:
                continue
            nodes += 1
            if nodes > max_nodes or (deadline is not None and nodes % 64 == 0 and time.monotonic() > deadline):
                raise CompareBudget(f"permutation search exceeded {max_nodes} nodes or the deadline")
            if bag(pred, used + [c]) == gsub and search(depth + 1, used + [c]):
                return True
        return False

    return search(0, [])


def results_equal(pred: list, gold: list, rule: str, gold_sql: str = "", *, deadline: float | None = None,
                  max_nodes: int = 200_000) -> bool:
    """Is `pred` correct against `gold` (lists of row tuples) under `rule`?

    gold_sql: the gold text as the rule executes it (`prepare(gold, rule, True)`), for spider_ts's ORDER BY test.
    """
    if rule == "bird_set":
        return set(pred) == set(gold)
    if rule == "strict":
        return list(pred) == list(gold)
    if rule == "spider_ts":
        return spider_ts_equal(gold, pred, order_matters(gold_sql), deadline=deadline, max_nodes=max_nodes)
    raise ValueError(f"unknown comparison rule {rule!r}; choose one of {list(RULES)}")
