"""Preference pairs from labelled samples (pure functions: no model, no I/O).

Per problem, distinct correct programs are the chosen set and distinct incorrect ones the rejected set. Up to K
distinct (chosen, rejected) pairs are drawn from their product with a seed derived from the run's seed, the round
and the problem id. A problem with no correct or no incorrect sample gives no pair (unless `gold_as_chosen` adds
the ground truth to the chosen set); a problem whose gold could not be run (verdict `None`) gives none either and
is counted as unknown. `own_chosen` counts the pairs whose chosen program is one of the model's own samples (not
the ground truth).
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict


def _groups(samples: list[dict], problems: dict) -> dict[str, dict]:
    g: dict[str, dict] = defaultdict(lambda: {"correct": [], "wrong": [], "unknown": False})
    for s in samples:
        grp = g[s["problem_id"]]
        if s["correct"] is None:
            grp["unknown"] = True
            continue
        bucket = grp["correct"] if s["correct"] else grp["wrong"]
        if s["text"] not in bucket:  # distinct programs, first-seen order (deterministic)
            bucket.append(s["text"])
    for pid in problems:
        g[pid]  # problems whose samples were all dropped still count
    return g


def build_pairs(samples: list[dict], problems: dict, *, pairs_per_problem: int, gold_as_chosen: bool, seed: int,
                round_idx: int) -> tuple[list[dict], dict]:
    """samples: [{problem_id, text, correct: bool|None}], problems: {id: Problem}.

    Returns (pairs [{problem_id, chosen, rejected}], stats).
    """
    pairs, stats = [], {"problems": len(problems), "with_pairs": 0, "all_correct": 0, "all_wrong": 0,
                        "unknown_gold": 0, "pairs": 0, "own_chosen": 0}
    for pid, grp in sorted(_groups(samples, problems).items()):
        if grp["unknown"]:
            stats["unknown_gold"] += 1
            continue
        if not grp["correct"] and not grp["wrong"]:
            continue  # no labelled sample at all
        chosen = list(grp["correct"])
        if gold_as_chosen and problems[pid].gold not in chosen:
            chosen.append(problems[pid].gold)
        if not grp["wrong"]:
            stats["all_correct"] += 1
            continue
        if not grp["correct"]:
            stats["all_wrong"] += 1
        if not chosen:
            continue
        combos = list(itertools.product(chosen, grp["wrong"]))
        rng = random.Random(f"{seed}/{round_idx}/{pid}")
        picked = rng.sample(combos, min(pairs_per_problem, len(combos)))
        pairs += [{"problem_id": pid, "chosen": c, "rejected": r} for c, r in picked]
        stats["own_chosen"] += sum(c in grp["correct"] for c, _ in picked)
        stats["with_pairs"] += 1
    stats["pairs"] = len(pairs)
    return pairs, stats


def sft_targets(samples: list[dict], problems: dict, *, per_problem: int, use_gold: bool, seed: int,
                round_idx: int) -> tuple[list[dict], dict]:
    """Supervised targets: distinct correct samples (rejection-sampling SFT) or the gold programs."""
    if use_gold:
        targets = [{"problem_id": pid, "chosen": p.gold, "rejected": None} for pid, p in sorted(problems.items())]
        return targets, {"problems": len(problems), "with_pairs": len(targets), "pairs": len(targets),
                         "own_chosen": 0}
    targets, stats = [], {"problems": len(problems), "with_pairs": 0, "all_correct": 0, "all_wrong": 0,
                          "unknown_gold": 0, "pairs": 0, "own_chosen": 0}
    for pid, grp in sorted(_groups(samples, problems).items()):
        if grp["unknown"]:
            stats["unknown_gold"] += 1
            continue
        stats["all_correct"] += int(bool(grp["correct"]) and not grp["wrong"])
        stats["all_wrong"] += int(not grp["correct"])
        if grp["correct"]:
            rng = random.Random(f"{seed}/{round_idx}/{pid}")
            keep = rng.sample(grp["correct"], min(per_problem, len(grp["correct"])))
            targets += [{"problem_id": pid, "chosen": c, "rejected": None} for c in keep]
            stats["with_pairs"] += 1
    stats["pairs"] = stats["own_chosen"] = len(targets)
    return targets, stats
