"""lutra.policy.vllm without vLLM: import-safe, the hf fallback decision, and the record conversion.

The vLLM path itself needs a CUDA GPU and the extra; its test is marked gpu and skips elsewhere.
"""

import sys
from types import SimpleNamespace

import pytest

from lutra.policy import vllm as vb


def test_importing_the_backend_does_not_import_vllm():
    assert vb.installed() or "vllm" not in sys.modules


@pytest.mark.parametrize(("requested", "installed", "cuda", "expected", "why"), [
    ("hf", True, True, "hf", "sampler=hf"),
    ("vllm", False, True, "hf", "not installed"),
    ("auto", False, False, "hf", "not installed"),
    ("vllm", True, False, "hf", "no CUDA device"),
    ("auto", True, True, "vllm", "vLLM 9.9"),
    ("vllm", True, True, "vllm", "on CUDA"),
])
def test_fallback_decision(monkeypatch, requested, installed, cuda, expected, why):
    import torch

    monkeypatch.setattr(vb, "installed", lambda: installed)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(vb.metadata, "version", lambda name: "9.9")
    backend, reason = vb.resolve(requested)
    assert backend == expected and why in reason
    if expected == "hf" and requested != "hf":
        assert "falling back to HF generate" in reason


def test_unknown_sampler_is_refused():
    with pytest.raises(ValueError, match="sampler"):
        vb.resolve("sglang")


def test_generate_without_vllm_names_the_install_command(monkeypatch, tokenizer):
    monkeypatch.setitem(sys.modules, "vllm", None)  # what `import vllm` meets when the extra is absent
    with pytest.raises(ImportError, match=r"pip install -e '\.\[vllm\]'"):
        vb.generate("some/model", None, tokenizer, ["q"], n=2, temperature=0.8, top_p=0.95, max_new_tokens=8, seed=0)


def test_seed_per_prompt_does_not_depend_on_batching_and_differs_by_round():
    assert vb.request_seeds(3, 5)[:2] == vb.request_seeds(3, 2)
    assert len(set(vb.request_seeds(3, 100) + vb.request_seeds(4, 100))) == 200


def test_lora_rank_rounds_up_to_a_supported_rank():
    assert [vb.lora_rank(r) for r in (1, 8, 16, 24, 64)] == [8, 8, 16, 32, 64]
    with pytest.raises(ValueError):
        vb.lora_rank(1024)


def test_sampling_kwargs_greedy_and_sampled():
    g = vb.sampling_kwargs(n=1, temperature=0.0, top_p=0.95, max_new_tokens=64, seed=7, stop_token_ids=[5, 2])
    assert (g["temperature"], g["top_p"], g["stop_token_ids"], g["max_tokens"]) == (0.0, 1.0, [2, 5], 64)
    s = vb.sampling_kwargs(n=8, temperature=0.8, top_p=0.95, max_new_tokens=64, seed=7, stop_token_ids=[2])
    assert (s["n"], s["temperature"], s["top_p"], s["seed"]) == (8, 0.8, 0.95, 7)


def test_records_match_the_hf_sampler_contract(tokenizer):
    sql = tokenizer("SELECT name FROM singer", add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    outs = [SimpleNamespace(outputs=[SimpleNamespace(token_ids=sql + [eos], finish_reason="stop"),
                                     SimpleNamespace(token_ids=sql[:2], finish_reason="length")]),
            SimpleNamespace(outputs=[SimpleNamespace(token_ids=[eos], finish_reason="stop"),
                                     SimpleNamespace(token_ids=sql, finish_reason="stop")])]
    texts, finished = vb.to_records(outs, tokenizer, {eos})
    assert texts == [["SELECT name FROM singer", tokenizer.decode(sql[:2], skip_special_tokens=True).strip()],
                     ["", "SELECT name FROM singer"]]
    assert finished == [[True, False], [True, True]]


def test_stop_ids_include_the_generation_config_eos(tokenizer, tmp_path):
    from transformers import GenerationConfig

    GenerationConfig(eos_token_id=[tokenizer.eos_token_id, 7]).save_pretrained(tmp_path)
    assert vb.stop_token_ids(tokenizer, str(tmp_path)) == {tokenizer.eos_token_id, 7}
    assert vb.stop_token_ids(tokenizer, str(tmp_path / "missing")) == {tokenizer.eos_token_id}


def test_manifest_description_says_not_bit_reproducible():
    d = vb.describe(temperature=0.8, top_p=0.95)
    assert d["backend"] == "vllm" and d["bit_reproducible"] is False and d["temperature"] == 0.8


@pytest.mark.gpu
@pytest.mark.skipif(not vb.available(), reason="needs vLLM and a CUDA device")
def test_vllm_generates_records_with_a_lora_adapter(tokenizer, small_model, model_cfg, tmp_path):
    from peft import get_peft_model

    from lutra.policy.models import lora_config
    from lutra.policy.prompts import format_prompt

    small_model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    get_peft_model(small_model, lora_config(model_cfg)).save_pretrained(tmp_path / "adapter")
    prompts = [format_prompt(tokenizer, q, model_cfg) for q in ("How many singers?", "Which singers are French?")]
    texts, finished = vb.generate(str(tmp_path / "base"), str(tmp_path / "adapter"), tokenizer, prompts, n=3,
                                  temperature=0.8, top_p=0.95, max_new_tokens=16, seed=0, dtype="float32",
                                  lora_r=model_cfg.lora_r, max_model_len=512)
    assert [len(t) for t in texts] == [3, 3] and [len(f) for f in finished] == [3, 3]
