"""Result comparison rules (minimal first version; the official rules come with the execution-engine issue)."""

from __future__ import annotations

from collections import Counter


def results_equal(pred, gold, rule: str, gold_sql: str = "") -> bool:
    if rule == "bird_set":
        return set(pred) == set(gold)
    if rule == "strict":
        return pred == gold
    if "order by" in gold_sql.lower():
        return pred == gold
    return Counter(pred) == Counter(gold)
