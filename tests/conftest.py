"""Shared fixtures: a tokenizer trained here and a randomly initialised small Llama (no hub, no network)."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

TEXTS = [
    "CREATE TABLE singer (singer_id INTEGER PRIMARY KEY, name TEXT, country TEXT, age INTEGER);",
    'Which singers are from "France"? Give their names.',
    "SELECT name FROM singer WHERE country = 'France'",
    "SELECT COUNT(*) FROM singer WHERE age > 30",
    "How many singers are older than 30?",
    "SELECT country, COUNT(*) FROM singer GROUP BY country HAVING COUNT(*) > 2",
] * 20


@pytest.fixture(scope="session")
def tokenizer():
    from lutra.policy.tiny import train_tokenizer

    return train_tokenizer(TEXTS, 400)


@pytest.fixture(scope="session")
def small_model(tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture
def model_cfg():
    from lutra.config import ModelConfig, TinyModelConfig

    return ModelConfig(name="t", build="tiny", tiny=TinyModelConfig(), max_prompt_len=200, max_completion_len=40)
