"""The tiny model's warm-start loss: the shared-prefix forward and the program weighting against a plain forward."""

import pytest
import torch

from lutra.data import collate, encode_completion, encode_prompt, format_prompt
from lutra.tiny import lm_loss

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
