"""The tiny model's warm-start loss: the shared-prefix forward and the program weighting against a plain forward."""

import pytest
import torch

from lutra.policy.prompts import encode_completion, encode_prompt, format_prompt
from lutra.policy.tiny import lm_loss
from lutra.training.data import collate

SCHEMA = "CREATE TABLE singer (singer_id INTEGER PRIMARY KEY, name TEXT, country TEXT, age INTEGER);\n"
ROWS = [('Which singers are from "France"?', "SELECT name FROM singer WHERE country = 'France'"),
        ("How many singers are older than 30?", "SELECT COUNT(*) FROM singer WHERE age > 30"),
        ("Count the singers per country.", "SELECT country, COUNT(*) FROM singer GROUP BY country")]


def _batch(tokenizer, model_cfg, schema=SCHEMA):
    items = []
    for i, (q, sql) in enumerate(ROWS):
        prompt = encode_prompt(tokenizer, format_prompt(tokenizer, schema + q, model_cfg))
        items.append({"i": i, "prompt": prompt, "chosen": encode_completion(tokenizer, sql), "rejected": None})
    return collate(items, tokenizer.pad_token_id)


def _plain(model, batch, pad_id, w):
    logits = model(input_ids=batch["input_ids"]).logits.float()
    labels = batch["labels"]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
    valid = (labels != pad_id).float()
    weight = valid * (1 + (w - 1) * batch["loss_mask"].float())
    return (nll * weight).sum() / weight.sum()


@pytest.mark.parametrize("w", [1.0, 4.0])
@pytest.mark.parametrize("shared", [True, False])
def test_lm_loss_equals_weighted_mean_of_a_plain_forward(tokenizer, small_model, model_cfg, w, shared):
    # rows of one schema share a long prefix (computed once); a different opening per row gives no shared prefix
    batch = _batch(tokenizer, model_cfg) if shared else _batch(tokenizer, model_cfg, schema="")
    with torch.no_grad():
        got = lm_loss(small_model, batch, tokenizer.pad_token_id, program_weight=w)
        want = _plain(small_model, batch, tokenizer.pad_token_id, w)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_program_weight_moves_the_loss_toward_the_program_tokens(tokenizer, small_model, model_cfg):
    batch = _batch(tokenizer, model_cfg)
    with torch.no_grad():
        losses = [lm_loss(small_model, batch, tokenizer.pad_token_id, program_weight=w).item() for w in (1, 4, 1e6)]
        program_only = _plain(small_model, {**batch, "labels": batch["labels"].masked_fill(
            batch["loss_mask"] == 0, tokenizer.pad_token_id)}, tokenizer.pad_token_id, 1.0).item()
    assert losses[0] != pytest.approx(losses[1])
    assert losses[2] == pytest.approx(program_only, rel=1e-3)  # a huge weight leaves the program's mean NLL


def test_rare_templates_get_their_share_of_the_warm_start(tmp_path):
    """Each rare template gets `keep` x a common template's mean count, repeating its problems when it has fewer
    (HAVING / ORDER BY ... LIMIT / nested AVG run out of slot combinations), never more; common ones all stay."""
    from collections import Counter

    from lutra.benchmarks import mini_sql
    from lutra.config import BenchmarkConfig
    from lutra.policy.tiny import _warmup_problems

    cfg = BenchmarkConfig(name="mini_sql", executor="sql", data_dir=str(tmp_path), n_warmup=3000)
    every = mini_sql.load(cfg, "warmup")
    have = Counter(p.meta["template"] for p in every)
    common = {t: n for t, n in have.items() if t not in mini_sql.RARE_TEMPLATES}
    for keep in (0.0, 0.1, 0.5):
        got = Counter(p.meta["template"] for p in _warmup_problems(cfg, keep, seed=0))
        target = round(keep * sum(common.values()) / len(common))
        assert {t: got[t] for t in common} == common
        assert all(got[t] == target for t in mini_sql.RARE_TEMPLATES), (keep, target, got)
        if keep == 0.5:  # a target above what a template has: its problems repeat, each at most ceil(target/n) times
            short = [t for t in mini_sql.RARE_TEMPLATES if have[t] < target]
            assert short, have
            reps = Counter(p.id for p in _warmup_problems(cfg, keep, seed=0) if p.meta["template"] == short[0])
            assert max(reps.values()) - min(reps.values()) <= 1 and len(reps) == have[short[0]]


def test_a_qualified_column_is_the_same_token_as_in_the_question_and_still_runs():
    import sqlite3

    from lutra.policy.tiny import train_tokenizer

    texts = ["Show the names of singers whose country is France.",
             "CREATE TABLE singer (singer_id INTEGER PRIMARY KEY, name TEXT, country TEXT, gpa REAL);",
             "SELECT T1.name FROM singer AS T1 WHERE T1.country = 'France' AND T1.gpa > 3.25"] * 30
    tok = train_tokenizer(texts, 400)

    def pieces(text):
        return tok.convert_ids_to_tokens(tok(text, add_special_tokens=False).input_ids)

    sql = "SELECT T1.name FROM singer AS T1 WHERE T1.country = 'France' AND T1.gpa > 3.25"
    ids = pieces(sql)
    assert pieces(" country")[0] in ids and pieces(" name")[0] in ids  # the spaced word, as in the question
    assert "country" not in ids and "name" not in ids
    assert pieces(" 3.25") == pieces("> 3.25")[1:]  # a decimal point is not a qualifier: no space inserted
    decoded = tok.decode(tok(sql, add_special_tokens=False).input_ids)
    assert decoded == sql.replace("T1.", "T1. ")
    with sqlite3.connect(":memory:") as db:
        db.execute("CREATE TABLE singer (singer_id INTEGER PRIMARY KEY, name TEXT, country TEXT, gpa REAL)")
        db.executemany("INSERT INTO singer VALUES (?, ?, ?, ?)", [(1, "Ana", "France", 3.5), (2, "Bo", "France", 3.0)])
        assert db.execute(decoded).fetchall() == db.execute(sql).fetchall() == [("Ana",)]


def test_the_cached_base_is_keyed_by_the_default_rare_set(model_cfg, monkeypatch):
    from lutra.benchmarks import mini_sql
    from lutra.config import BenchmarkConfig
    from lutra.policy.tiny_cache import tiny_dir

    bench = BenchmarkConfig(name="mini_sql")
    before = tiny_dir(model_cfg, bench)
    assert tiny_dir(model_cfg, bench) == before
    monkeypatch.setattr(mini_sql, "RARE_TEMPLATES", frozenset({"order_limit", "not_in"}))
    assert tiny_dir(model_cfg, bench) != before  # a code change of the default set must not reuse the old base


def _fresh_model(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, rope_theta=10000.0)
    return LlamaForCausalLM(cfg).eval()


def test_float64_llama_runs_every_layer_in_float64_and_gives_back_the_stock_float32_model(tokenizer, model_cfg):
    """RMSNorm and the rotary angles, which transformers computes in float32 whatever the weights' dtype, run in
    float64 inside the block (a float32 round trip would bring back the SIMD-path-dependent rounding the float64
    build exists to avoid); the function is the same, and afterwards the model is float32 with its own forwards."""
    from lutra.policy.tiny import float64_llama

    model = _fresh_model(tokenizer)
    ids = _batch(tokenizer, model_cfg)["input_ids"]
    with torch.no_grad():
        want = model(input_ids=ids).logits
        seen = []
        hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o[0].dtype if isinstance(o, tuple) else o.dtype))
                 for m in model.modules() if type(m).__name__.endswith(("RMSNorm", "RotaryEmbedding"))]
        with float64_llama(model):
            assert {p.dtype for p in model.parameters()} == {torch.float64}
            got = model(input_ids=ids).logits
        for h in hooks:
            h.remove()
        assert got.dtype == torch.float64 and set(seen) == {torch.float64}, seen
        torch.testing.assert_close(got.float(), want, rtol=1e-4, atol=1e-4)
        assert {p.dtype for p in model.parameters()} == {torch.float32}
        assert not any("forward" in vars(m) for m in model.modules())
        assert torch.equal(model(input_ids=ids).logits, want)  # float32 -> float64 -> float32 weights are exact


def test_warm_start_dtype_and_seed_are_validated_and_key_the_cache(model_cfg):
    import dataclasses

    from lutra.config import BenchmarkConfig, ConfigError, TinyModelConfig
    from lutra.policy.tiny_cache import tiny_dir

    with pytest.raises(ConfigError, match="model.tiny.warm_start_dtype"):
        TinyModelConfig(warm_start_dtype="float16")
    bench = BenchmarkConfig(name="mini_sql")
    dirs = {tiny_dir(dataclasses.replace(model_cfg, tiny=TinyModelConfig(**kw)), bench)
            for kw in ({}, {"warm_start_dtype": "float32"}, {"warm_start_seed": 1}, {"warm_start_seed": 0})}
    assert len(dirs) == 3  # seed 0 is the benchmark's own: the default base


def _small_build(tmp_path, model_cfg, **tiny):
    import dataclasses

    from lutra.config import BenchmarkConfig, TinyModelConfig

    t = TinyModelConfig(vocab_size=400, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                        num_kv_heads=1, warm_start_steps=12, warm_start_batch_size=4, warm_start_check_from=4,
                        warm_start_check_every=4, warm_start_check_problems=6, **tiny)
    bench = BenchmarkConfig(name="mini_sql", executor="sql", data_dir=str(tmp_path / "data"), n_warmup=200,
                            workers=1)
    return dataclasses.replace(model_cfg, tiny=t, max_prompt_len=768, max_completion_len=24), bench


def test_warm_start_checks_the_base_and_runs_on_when_the_target_is_not_reached(tmp_path, model_cfg):
    """Real checks: greedy decoding of train problems by the model being built, judged by the SQL executor."""
    import json

    from lutra.policy.tiny import build_tiny

    cfg, bench = _small_build(tmp_path, model_cfg, warm_start_target_ex=100.0)
    seen = []
    build_tiny(cfg, bench, tmp_path / "m", on_check=lambda step, ex, model: seen.append((step, ex, model.training)))
    build = json.loads((tmp_path / "m" / "lutra_build.json").read_text())
    assert build["steps"] == len(build["loss_curve"]) == 12
    # steps 4 and 8 while training, then the finished model (step 12) once
    assert [c["step"] for c in build["checks"]] == [s for s, _, _ in seen] == [4, 8, 12]
    assert all(0.0 <= c["ex"] < 100.0 for c in build["checks"])
    # a small recipe has no shipped base, and the build says so rather than comparing digests
    assert build["against_shipped"]["status"] == "unshipped" and len(build["recipe_fingerprint"]) == 12


def test_warm_start_stops_at_the_first_check_that_reaches_the_target(tmp_path, model_cfg, monkeypatch):
    import json

    from lutra.policy import tiny

    levels = iter([10.0, 55.0, 90.0])
    monkeypatch.setattr(tiny, "greedy_ex", lambda *a, **k: next(levels))  # the trajectory is the point here
    cfg, bench = _small_build(tmp_path, model_cfg, warm_start_target_ex=50.0)
    tiny.build_tiny(cfg, bench, tmp_path / "m")
    build = json.loads((tmp_path / "m" / "lutra_build.json").read_text())
    assert build["checks"] == [{"step": 4, "ex": 10.0}, {"step": 8, "ex": 55.0}]
    assert build["steps"] == len(build["loss_curve"]) == 8  # the 8 steps before the check that reached it


def test_a_warm_start_shorter_than_check_from_is_never_checked(tmp_path, model_cfg, monkeypatch):
    import json

    from lutra.policy import tiny

    def never(*a, **k):
        raise AssertionError("checked a build shorter than warm_start_check_from")

    monkeypatch.setattr(tiny, "greedy_ex", never)
    cfg, bench = _small_build(tmp_path, model_cfg, warm_start_target_ex=50.0)
    cfg.tiny.warm_start_check_from = 20  # past the 12 steps
    tiny.build_tiny(cfg, bench, tmp_path / "m")
    build = json.loads((tmp_path / "m" / "lutra_build.json").read_text())
    assert build["checks"] == [] and build["steps"] == 12


def test_warm_start_target_is_validated():
    from lutra.config import ConfigError, TinyModelConfig

    for bad in (0.0, 120.0):
        with pytest.raises(ConfigError, match="model.tiny.warm_start_target_ex"):
            TinyModelConfig(warm_start_target_ex=bad)
    with pytest.raises(ConfigError, match="model.tiny.warm_start_check_every"):
        TinyModelConfig(warm_start_check_every=0)
