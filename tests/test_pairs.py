from lutra.benchmarks import Problem
from lutra.pairs import build_pairs, sft_targets


def _problems(*ids):
    return {i: Problem(id=i, question="q", context="c", gold=f"GOLD {i}") for i in ids}


def _s(pid, text, correct):
    return {"problem_id": pid, "text": text, "correct": correct}


def test_pairs_only_from_mixed_problems_and_stats():
    probs = _problems("a", "b", "c", "d", "e")
    samples = [
        _s("a", "A1", True), _s("a", "A1", True), _s("a", "A2", False), _s("a", "A3", False),  # mixed
        _s("b", "B1", True), _s("b", "B2", True),  # all correct
        _s("c", "C1", False),  # all wrong
        _s("d", "D1", None), _s("d", "D2", None),  # gold broken -> unknown
    ]  # e: no samples at all
    pairs, st = build_pairs(samples, probs, pairs_per_problem=4, gold_as_chosen=False, seed=0, round_idx=1)
    assert {(p["chosen"], p["rejected"]) for p in pairs} == {("A1", "A2"), ("A1", "A3")}  # distinct texts
    assert st == {"problems": 5, "with_pairs": 1, "all_correct": 1, "all_wrong": 1, "unknown_gold": 1, "pairs": 2,
                  "own_chosen": 2}


def test_pairs_capped_distinct_and_seeded():
    probs = _problems("a")
    samples = [_s("a", f"C{i}", True) for i in range(3)] + [_s("a", f"W{i}", False) for i in range(3)]
    p1, _ = build_pairs(samples, probs, pairs_per_problem=4, gold_as_chosen=False, seed=7, round_idx=2)
    p2, _ = build_pairs(samples, probs, pairs_per_problem=4, gold_as_chosen=False, seed=7, round_idx=2)
    p3, _ = build_pairs(samples, probs, pairs_per_problem=4, gold_as_chosen=False, seed=8, round_idx=2)
    assert p1 == p2 and len(p1) == 4
    assert len({(p["chosen"], p["rejected"]) for p in p1}) == 4
    assert p1 != p3  # another seed draws other pairs (9 choose 4 makes a tie unlikely)


def test_gold_as_chosen_pairs_all_wrong_problems():
    probs = _problems("c")
    pairs, st = build_pairs([_s("c", "C1", False)], probs, pairs_per_problem=4, gold_as_chosen=True, seed=0,
                            round_idx=1)
    assert pairs == [{"problem_id": "c", "chosen": "GOLD c", "rejected": "C1"}]
    assert st["all_wrong"] == 1 and st["with_pairs"] == 1
    assert st["own_chosen"] == 0  # the gold is not the model's own program


def test_own_chosen_counts_sampled_chosen_next_to_the_gold():
    probs = _problems("a")
    samples = [_s("a", "A1", True), _s("a", "W1", False), _s("a", "W2", False)]
    pairs, st = build_pairs(samples, probs, pairs_per_problem=4, gold_as_chosen=True, seed=0, round_idx=1)
    assert len(pairs) == 4 and st["own_chosen"] == 2  # A1 x {W1, W2} own; GOLD a x {W1, W2} not


def test_sft_targets_correct_samples_and_gold():
    probs = _problems("a", "b")
    samples = [_s("a", "A1", True), _s("a", "A1", True), _s("a", "A2", False), _s("b", "B1", False)]
    t, st = sft_targets(samples, probs, per_problem=4, use_gold=False, seed=0, round_idx=1)
    assert [x["chosen"] for x in t] == ["A1"] and st["with_pairs"] == 1 and st["all_wrong"] == 1
    assert st["own_chosen"] == 1
    g, gst = sft_targets(samples, probs, per_problem=4, use_gold=True, seed=0, round_idx=1)
    assert [x["chosen"] for x in g] == ["GOLD a", "GOLD b"] and gst["own_chosen"] == 0
