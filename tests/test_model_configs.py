"""The hub model configs (conf/model/*.yaml but tiny): sane values, and LoRA targets that exist in the architecture.

No hub access: each architecture is built from its transformers config class, with random tiny dims to apply
LoRA and run a forward pass, and with the checkpoint's real dims on the meta device to check parameter counts
(the numbers docs/gpu.md computes memory from).
"""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from transformers import AutoModelForCausalLM, GemmaConfig, LlamaConfig, Qwen2Config, Starcoder2Config

from lutra.config import register_configs, to_object
from lutra.policy.models import lora_config

CONF = Path(__file__).resolve().parents[1] / "conf"
register_configs()

# architecture of each shipped hub config: (config class, the checkpoint's dims, published parameter count);
# a new conf/model file must be added here
ARCH = {
    "llama3_8b": (LlamaConfig, dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                                    tie_word_embeddings=False), 8.03e9),
    "gemma_7b": (GemmaConfig, dict(vocab_size=256000, hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,
                                   num_attention_heads=16, num_key_value_heads=16, head_dim=256,
                                   max_position_embeddings=8192, tie_word_embeddings=True), 8.54e9),
    "starcoder2_7b": (Starcoder2Config, dict(vocab_size=49152, hidden_size=4608, intermediate_size=18432,
                                             num_hidden_layers=32, num_attention_heads=36, num_key_value_heads=4,
                                             max_position_embeddings=16384, tie_word_embeddings=True), 7.17e9),
    "qwen25_coder_7b": (Qwen2Config, dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                                          num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                                          max_position_embeddings=32768, tie_word_embeddings=False), 7.62e9),
    "deepseek_coder_6_7b": (LlamaConfig, dict(vocab_size=32256, hidden_size=4096, intermediate_size=11008,
                                              num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                                              max_position_embeddings=16384, tie_word_embeddings=False), 6.74e9),
    "qwen25_coder_0_5b": (Qwen2Config, dict(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                                            num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                                            max_position_embeddings=32768, tie_word_embeddings=True), 0.494e9),
    # the CPU-sized real model (prepared from a GGUF, lutra.policy.gguf)
    "smollm2_135m": (LlamaConfig, dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                       num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                                       tie_word_embeddings=True), 0.1345e9),
}
ARCH["llama3_8b_qlora"] = ARCH["llama3_8b"]
ARCH["smollm2_135m_fewshot"] = ARCH["smollm2_135m"]
CPU = {"smollm2_135m", "smollm2_135m_fewshot"}  # run the loop on CPU: float32 (bf16 is slow there), short answers
HUB = sorted(p.stem for p in (CONF / "model").glob("*.yaml") if p.stem != "tiny")


def model_config(option: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={option}"])
    with open_dict(cfg):
        cfg.run_dir = "/tmp/lutra-test-run"
    return to_object(cfg).model


def tiny_dims(option: str) -> dict:
    cls, real, _ = ARCH[option]
    heads, kv = 4, (4 if real["num_key_value_heads"] == real["num_attention_heads"] else 2)
    kw = dict(real, vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=256)
    if "head_dim" in real:
        kw["head_dim"] = 8
    return cls, kw


def test_every_hub_config_has_an_architecture_entry():
    assert len(HUB) >= 7 and set(HUB) == set(ARCH)


@pytest.mark.parametrize("option", HUB)
def test_values_are_sane(option):
    m = model_config(option)
    _, real, _ = ARCH[option]
    assert m.name == option and m.build is None and m.tiny is None
    assert m.path and m.path.count("/") == 1, "a hub id owner/name"
    assert m.dtype == ("float32" if option in CPU else "bfloat16")
    assert 1024 <= m.max_prompt_len and (128 if option in CPU else 256) <= m.max_completion_len
    assert m.max_prompt_len + m.max_completion_len <= real["max_position_embeddings"]
    assert m.lora_alpha == 2 * m.lora_r and 8 <= m.lora_r <= 64
    assert m.lora_dropout == 0.0  # preference training runs with dropout off; a value would only mislead
    assert 5e-6 <= m.lr <= 1e-4
    assert not m.trust_remote_code
    assert m.gradient_checkpointing == (real["hidden_size"] >= 3000)  # 7-8B yes, the 0.5B check model no


def test_smaller_models_take_larger_steps():
    lrs = {o: model_config(o).lr for o in HUB}
    small = {o for o in HUB if ARCH[o][2] < 1e9}
    assert {"qwen25_coder_0_5b", "smollm2_135m"} <= small
    assert min(lrs[o] for o in small) > max(v for k, v in lrs.items() if k not in small)
    assert lrs["smollm2_135m"] >= lrs["qwen25_coder_0_5b"]


def test_chat_template_use_and_system_prompts_follow_the_checkpoint():
    assert not model_config("starcoder2_7b").use_chat_template  # a base model without a template
    for o in HUB:
        if o != "starcoder2_7b":
            assert model_config(o).use_chat_template, o
        assert model_config(o).system_prompt is None  # Gemma's template raises on one; others keep their default


def test_qlora_is_llama3_8b_with_a_4bit_base():
    a, b = model_config("llama3_8b"), model_config("llama3_8b_qlora")
    assert b.load_in_4bit and not a.load_in_4bit
    diff = {k for k in vars(a) if getattr(a, k) != getattr(b, k)}
    assert diff == {"name", "load_in_4bit"}


@pytest.mark.parametrize("option", HUB)
def test_lora_targets_exist_and_only_lora_trains(option):
    from peft import get_peft_model

    m = model_config(option)
    cls, kw = tiny_dims(option)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(cls(**kw))
    linear = [n for n, mod in base.named_modules() if isinstance(mod, torch.nn.Linear)]
    for target in m.lora_target_modules:
        hits = [n for n in linear if n.split(".")[-1] == target]
        assert len(hits) == kw["num_hidden_layers"], f"{option}: {target} matches {hits}"
    covered = {n.split(".")[-1] for n in linear if ".layers." in n}
    assert covered == set(m.lora_target_modules), f"{option}: projections left without LoRA: {covered}"
    policy = get_peft_model(base, lora_config(m))
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    out = policy(input_ids=torch.tensor([[1, 2, 3, 4]])).logits
    assert out.shape == (1, 4, kw["vocab_size"]) and torch.isfinite(out).all()


@pytest.mark.parametrize("option", sorted(set(ARCH) - {"llama3_8b_qlora"}))
def test_real_dims_give_the_published_parameter_count(option):
    cls, real, published = ARCH[option]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cls(**real))
    total = sum(p.numel() for p in model.parameters())
    assert total == pytest.approx(published, rel=0.01)
