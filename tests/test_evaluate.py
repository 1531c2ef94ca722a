"""lutra.evaluate: the predictions-file reader's named errors, summarize's arithmetic, score_predictions' files,
the CLI in a subprocess, and the model path (greedy decoding) wired to models / data / sampling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_official import write_spider

from lutra import benchmarks
from lutra.benchmarks import Problem
from lutra.config import BenchmarkConfig, ModelConfig, TinyModelConfig
from lutra.evaluate import EvaluateConfig, evaluate
from lutra.execution import Verdict
from lutra.scoring import PredictionsError, flat_metrics, read_predictions, score_predictions, summarize

REPO = Path(__file__).resolve().parents[1]
IDS = {"dev/0", "dev/1", "dev/2", "dev/10"}


def _file(tmp_path, text: str | bytes, name="preds.jsonl"):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_read_predictions_joins_by_id_and_tolerates_bom(tmp_path):
    lines = [{"id": "dev/10", "prediction": "SELECT 1"}, {"id": "dev/0", "prediction": "SELECT 2", "db_id": "x"}]
    path = _file(tmp_path, b"\xef\xbb\xbf" + "\n".join(json.dumps(x) for x in lines).encode() + b"\n\n")
    assert read_predictions(path, IDS) == {"dev/10": "SELECT 1", "dev/0": "SELECT 2"}
    assert read_predictions(_file(tmp_path, '{"id": 7, "prediction": "x"}\n'), {"7"}) == {"7": "x"}  # BIRD ints


@pytest.mark.parametrize("text, pattern", [
    ('{"id": "dev/0", "prediction": "a"}\n{"id": "dev/1", "predic', r"preds\.jsonl:2: invalid JSON .* truncated last line"),
    ('{"id": "dev/0", "prediction": "a"\n{"id": "dev/1", "prediction": "b"}', r"preds\.jsonl:1: invalid JSON"),
    ('["dev/0", "a"]', r"preds\.jsonl:1: expected an object with keys id and prediction, got list"),
    ('{"id": "dev/0"}', r"preds\.jsonl:1: missing key\(s\) \['prediction'\]"),
    ('{"id": ["dev/0"], "prediction": "a"}', r"preds\.jsonl:1: id must be a string .* got list"),
    ('{"id": true, "prediction": "a"}', r"preds\.jsonl:1: id must be a string .* got bool"),
    ('{"id": "dev/0", "prediction": null}', r"preds\.jsonl:1: id dev/0: prediction must be a string, got NoneType"),
    ('{"id": "dev/0", "prediction": "a"}\n\n{"id": "dev/0", "prediction": "b"}',
     r"preds\.jsonl:3: duplicate id 'dev/0' \(first on line 1\)"),
    ('{"id": "17", "prediction": "a"}', r"preds\.jsonl:1: unknown id '17': not a problem of spider/dev \(ids look like 'dev/0'\)"),
])
def test_read_predictions_names_the_bad_line(tmp_path, text, pattern):
    with pytest.raises(PredictionsError, match=pattern):
        read_predictions(_file(tmp_path, text), IDS, split="spider/dev")


def test_read_predictions_missing_file_and_many_errors(tmp_path):
    with pytest.raises(PredictionsError, match="nope.jsonl: predictions file not found"):
        read_predictions(tmp_path / "nope.jsonl", IDS)
    bad = "\n".join(json.dumps({"id": f"x{i}", "prediction": "a"}) for i in range(15))
    with pytest.raises(PredictionsError, match=r"15 bad line\(s\)[\s\S]*and 5 more"):
        read_predictions(_file(tmp_path, bad), IDS)


def _p(i, **meta):
    return Problem(id=f"dev/{i}", question="q", context="", gold="SELECT 1", meta=meta)


def test_summarize_counts_errors_wrong_groups_and_broken_gold():
    problems = [_p(0, difficulty="easy"), _p(1, difficulty="easy"), _p(2, difficulty="hard", copies=2),
                _p(3, difficulty="hard"), _p(4, difficulty="medium")]
    verdicts = [Verdict("ok", True), Verdict("timeout", False, 5.0, "interrupted"), Verdict("ok", True),
                Verdict("error", None, 0.1, "gold error: no such table"), Verdict("ok", False)]
    s = summarize(problems, verdicts)
    assert (s["n"], s["correct"], s["exec_acc"], s["n_problems"]) == (6, 3, 50.0, 5)  # dev/2 weighs twice
    assert s["status"] == {"error": 1, "ok": 3, "timeout": 1}
    assert list(s["groups"]["difficulty"]) == ["easy", "medium", "hard"]  # the official order
    assert s["groups"]["difficulty"]["hard"] == {"n": 3, "correct": 2, "exec_acc": 66.6667}
    assert s["broken_gold"] == {"dev/3": "gold error: no such table"} and not s["exclude_broken_gold"]
    s = summarize(problems, verdicts, exclude_broken_gold=True, broken_gold={"dev/4": "reference fails"})
    assert (s["n"], s["correct"], s["n_broken_gold"]) == (4, 3, 2)
    assert flat_metrics(s)["eval/difficulty/hard"] == 100.0 and flat_metrics(s)["eval/exec_acc"] == 75.0
    with pytest.raises(ValueError, match="5 problems but 1 verdicts"):
        summarize(problems, verdicts[:1])


@pytest.fixture
def spider(tmp_path):
    return write_spider(tmp_path / "spider")


def _bench(root, **kw):
    kw.setdefault("eval_split", "dev")
    return BenchmarkConfig(name="spider", data_dir=str(root), workers=1, **kw)


def test_score_predictions_lists_missing_ids_and_subset_scores_only_present(spider, tmp_path):
    c = _bench(spider)
    problems = benchmarks.load(c, "dev")
    preds = {"dev/0": "SELECT count(*) FROM singer", "dev/4": "SELECT max(price) FROM item",
             "dev/5": "SELECT nme FROM student"}
    s = score_predictions(problems, preds, c, tmp_path / "full", progress=False)
    assert (s["n"], s["correct"], s["n_missing"]) == (6, 1, 3)
    assert s["missing"] == ["dev/1", "dev/2", "dev/3"] and s["status"]["missing"] == 3
    lines = [json.loads(x) for x in (tmp_path / "full" / "verdicts.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == [p.id for p in problems]
    assert set(lines[0]) == {"id", "status", "correct", "seconds", "error", "prediction"}
    assert lines[1]["status"] == "missing" and lines[1]["prediction"] is None
    assert lines[5]["status"] == "error" and "no such column" in lines[5]["error"]
    assert json.loads((tmp_path / "full" / "summary.json").read_text())["exec_acc"] == s["exec_acc"]
    s = score_predictions(problems, preds, c, tmp_path / "subset", subset=True, progress=False)
    assert (s["n"], s["correct"], s["n_missing"]) == (3, 1, 0)
    with pytest.raises(PredictionsError, match="not in the split"):
        score_predictions(problems, {"dev/99": "x"}, c, tmp_path / "x", progress=False)


def test_subset_needs_only_the_databases_it_uses(spider, tmp_path):
    (spider / "database" / "school" / "school.sqlite").unlink()
    c = _bench(spider)
    problems = benchmarks.load(c, "dev")
    s = score_predictions(problems, {"dev/0": "SELECT count(*) FROM singer"}, c, tmp_path, subset=True,
                          progress=False)
    assert s["correct"] == 1
    with pytest.raises(benchmarks.BenchmarkError, match=r"school\.sqlite - needed by dev/5"):
        score_predictions(problems, {"dev/5": "SELECT 1"}, c, tmp_path, progress=False)


def _cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO), HYDRA_FULL_ERROR="0")
    return subprocess.run([sys.executable, "-m", "lutra.evaluate", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_cli_scores_a_predictions_file_and_fails_cleanly_on_bad_input(spider, tmp_path):
    problems = benchmarks.load(_bench(spider), "dev")
    good = _file(tmp_path, "".join(json.dumps({"id": p.id, "prediction": p.gold}) + "\n" for p in problems))
    run = tmp_path / "run"
    r = _cli("benchmark=spider", f"benchmark.data_dir={spider}", f"predictions={good}", f"hydra.run.dir={run}",
             "benchmark.workers=1", "progress=false", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads((run / "summary.json").read_text())
    assert (s["exec_acc"], s["split"], s["model"]) == (100.0, "dev", None)
    assert len((run / "verdicts.jsonl").read_text().splitlines()) == 6
    bad = _file(tmp_path, '{"id": "dev/0", "prediction": "x"}\n{"id": "dev/0", "prediction": "y"}\n', "bad.jsonl")
    r = _cli("benchmark=spider", f"benchmark.data_dir={spider}", f"predictions={bad}",
             f"hydra.run.dir={tmp_path / 'run2'}", cwd=tmp_path)
    assert r.returncode == 2 and "bad.jsonl:2: duplicate id 'dev/0' (first on line 1)" in r.stderr
    assert "Traceback" not in r.stderr


def test_model_path_decodes_greedily_after_the_checks(spider, tmp_path, monkeypatch):
    """The wiring to models.load / prompts.format_prompt / sampling.generate, with the model replaced by a fake."""
    import lutra.policy.models
    import lutra.policy.prompts
    import lutra.policy.sampling

    calls = {}

    class Tok:
        chat_template = None

    def fake_load(model_cfg, bench_cfg, adapter=None, device="cpu"):
        calls["load"] = adapter
        return object(), Tok()

    def fake_generate(model, tok, prompts, **kw):
        calls["generate"] = kw
        return [["SELECT name FROM student"] for _ in prompts]

    monkeypatch.setattr(lutra.policy.models, "load", fake_load)
    monkeypatch.setattr(lutra.policy.sampling, "generate", fake_generate)
    monkeypatch.setattr(lutra.policy.prompts, "encode_prompt", lambda tok, text: text.split())
    model = ModelConfig(name="fake", path="nowhere", max_prompt_len=45, max_completion_len=17)
    cfg = EvaluateConfig(benchmark=_bench(spider), model=model, adapter="some/adapter", run_dir=str(tmp_path),
                         progress=False)
    s = evaluate(cfg)
    assert calls["load"] == "some/adapter"
    assert calls["generate"]["temperature"] == 0.0 and calls["generate"]["max_new_tokens"] == 17
    assert s["correct"] == 1 and s["model"] == "fake"
    assert s["status"].get("prompt_too_long") == 3  # the 3 concert prompts exceed 45 "tokens": counted wrong
    preds = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 3


def test_model_path_stops_before_loading_when_a_database_is_unusable(spider, tmp_path, monkeypatch):
    import lutra.policy.models

    (spider / "database" / "shop" / "shop.sqlite").write_bytes(b"")
    monkeypatch.setattr(lutra.policy.models, "load", lambda *a, **k: pytest.fail("model loaded before the checks"))
    cfg = EvaluateConfig(benchmark=_bench(spider), model=ModelConfig(name="m", path="x"), run_dir=str(tmp_path),
                         progress=False)
    with pytest.raises(benchmarks.BenchmarkError, match=r"empty \(0 bytes\).*needed by dev/3, dev/4"):
        evaluate(cfg)


@pytest.mark.slow
def test_model_path_with_a_tiny_model_built_for_spider(spider, tmp_path, monkeypatch):
    """The real chain: tiny model built for the fixture (warm start on its warmup split), greedy decoding."""
    monkeypatch.setenv("LUTRA_MODELS", str(tmp_path / "models"))
    bench = _bench(spider, options={"split_by_db": {"source": "dev", "eval_dbs": ["shop"]}}, eval_split="eval")
    tiny = TinyModelConfig(vocab_size=400, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                           num_kv_heads=2, warm_start_steps=20, warm_start_batch_size=4)
    model = ModelConfig(name="tiny", build="tiny", tiny=tiny, max_prompt_len=1024, max_completion_len=24)
    s = evaluate(EvaluateConfig(benchmark=bench, model=model, run_dir=str(tmp_path / "run"), progress=False))
    assert s["n"] == 2 and s["split"] == "eval" and s["n_missing"] == 0
    assert len((tmp_path / "run" / "predictions.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("entry", ["evaluate", "prepare"])
@pytest.mark.parametrize("bench", ["mini_sql", "spider", "bird", "ds1000"])
def test_entry_configs_compose_for_every_benchmark(entry, bench):
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from lutra.config import to_object
    from lutra.evaluate import CONF_DIR, _register
    from lutra.prepare import PrepareConfig, register

    _register()
    register()
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose(config_name=entry, overrides=[f"benchmark={bench}"])
    if entry == "evaluate":
        with open_dict(cfg):
            cfg.run_dir = "/tmp/lutra-test-eval"  # ${hydra:...} needs a live HydraConfig
        typed = to_object(cfg, EvaluateConfig)
        assert typed.benchmark.name == bench and typed.predictions is None and typed.model.name == "tiny"
    elif bench != "mini_sql":  # mini_sql generates its data: nothing to download
        typed = to_object(cfg, PrepareConfig)
        assert typed.benchmark.options["download"] and not typed.force
