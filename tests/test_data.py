"""Prompt/completion token boundaries: what training sees is what generation sees."""

import torch

from lutra.policy.prompts import (
    CompletionLayout,
    completion_layout,
    encode_completion,
    encode_prompt,
    format_prompt,
)
from lutra.training.data import collate, encode_pairs

Q = "CREATE TABLE singer (singer_id INTEGER PRIMARY KEY, name TEXT, country TEXT);\nWhich singers are from France?"


def test_chat_template_prompt_one_bos_and_generation_header(tokenizer, model_cfg):
    prompt = format_prompt(tokenizer, Q, model_cfg)
    assert prompt.startswith("<|bos|><|user|>\n") and prompt.endswith("<|assistant|>\n")
    ids = encode_prompt(tokenizer, prompt)
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
    # a plain tokenizer call adds BOS by itself (post-processor), so lutra must not double it
    assert tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id


def test_no_template_falls_back_to_plain_text(tokenizer, model_cfg):
    model_cfg.use_chat_template = False
    prompt = format_prompt(tokenizer, Q, model_cfg)
    assert prompt == Q + "\n"
    ids = encode_prompt(tokenizer, prompt)
    assert ids.count(tokenizer.bos_token_id) == 1


def test_values_tokenize_the_same_in_question_and_sql(tokenizer):
    def toks(s):
        return tokenizer.convert_ids_to_tokens(tokenizer(s, add_special_tokens=False)["input_ids"])

    assert "France" in toks('singers from "France"?') and "France" in toks("WHERE country = 'France'")
    number = toks("older than 30?")[-2:-1]
    assert number == toks("WHERE age > 30")[-1:] == ["\u0120" + "30"]  # one token, the space joined to it
    assert toks("below 3.74?")[-2:-1] == toks("gpa < 3.74")[-1:]           # decimals too


def test_collate_prompt_is_exact_prefix_eos_present_mask_on_completion(tokenizer, model_cfg):
    prompt = format_prompt(tokenizer, Q, model_cfg)
    recs = [{"prompt": prompt, "chosen": "SELECT name FROM singer WHERE country = 'France'",
             "rejected": "SELECT name FROM singer"}]
    enc = encode_pairs(tokenizer, recs, model_cfg)
    p = encode_prompt(tokenizer, prompt)
    assert enc.prompts[0] == p
    assert enc.chosen[0][-1] == tokenizer.eos_token_id and enc.rejected[0][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(enc.chosen[0], skip_special_tokens=True) == recs[0]["chosen"]
    b = collate([{"i": 0, "prompt": enc.prompts[0], "chosen": enc.chosen[0], "rejected": enc.rejected[0]}],
                tokenizer.pad_token_id)
    full = torch.cat([b["input_ids"][0, :1], b["labels"][0]])  # reconstruct the chosen sequence
    n = len(p) + len(enc.chosen[0])
    assert full[: len(p)].tolist() == p
    assert full[len(p) : n].tolist() == enc.chosen[0]
    # labels[t] is token t+1: the mask is 1 exactly on the completion tokens (EOS included)
    assert b["loss_mask"][0].sum().item() == len(enc.chosen[0])
    assert b["loss_mask"][0, : len(p) - 1].sum().item() == 0
    assert b["loss_mask"][1].sum().item() == len(enc.rejected[0])


def test_over_length_pairs_dropped_and_counted_never_truncated(tokenizer, model_cfg):
    prompt = format_prompt(tokenizer, Q, model_cfg)
    long_sql = "SELECT name FROM singer WHERE " + " OR ".join(f"age = {i}" for i in range(40))
    recs = [{"prompt": prompt, "chosen": "SELECT 1", "rejected": "SELECT 2"},
            {"prompt": prompt, "chosen": long_sql, "rejected": "SELECT 2"},
            {"prompt": prompt + Q * 20, "chosen": "SELECT 1", "rejected": "SELECT 2"}]
    enc = encode_pairs(tokenizer, recs, model_cfg)
    assert enc.index == [0]
    assert enc.dropped_completion_too_long == 1 and enc.dropped_prompt_too_long == 1


def test_encode_completion_appends_eos_once(tokenizer):
    ids = encode_completion(tokenizer, "SELECT 1")
    assert ids[-1] == tokenizer.eos_token_id and ids.count(tokenizer.eos_token_id) == 1
    # the tiny template closes the assistant turn with EOS right after the answer: the answer's ids + EOS
    assert ids == tokenizer("SELECT 1", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def test_tiny_layout_is_answer_then_eos_with_or_without_the_template(tokenizer, model_cfg):
    assert completion_layout(tokenizer, model_cfg) == CompletionLayout("", "", tokenizer.eos_token_id)
    model_cfg.use_chat_template = False
    assert completion_layout(tokenizer, model_cfg) == CompletionLayout("", "", tokenizer.eos_token_id)


def _keys(n=37):
    return [(i % 3,) for i in range(n)]  # three prompt families


def test_bucket_sampler_epoch_covers_every_item_once_and_epochs_differ():
    from lutra.training.data import BucketSampler

    s = BucketSampler(_keys(), batch_size=4, seed=0)
    e1, e2 = list(s), list(s)
    for epoch in (e1, e2):
        assert sorted(i for b in epoch for i in b) == list(range(37)) and len(epoch) <= len(s) + 3
    assert e1 != e2


def test_bucket_sampler_next_epoch_when_the_iterator_is_dropped_after_its_last_batch():
    """Lightning stops an epoch after len(dataloader) batches without exhausting the sampler's iterator: the next
    iter() must still be a whole new epoch (it was empty, so epochs_per_round > 1 trained one epoch)."""
    import itertools

    from lutra.training.data import BucketSampler

    s = BucketSampler(_keys(32), batch_size=4, seed=0)  # 32 items in one chunk: exactly len(s) batches
    first = list(itertools.islice(iter(s), len(s)))
    second = list(itertools.islice(iter(s), len(s)))
    assert len(first) == len(second) == len(s) == 8
    assert sorted(i for b in second for i in b) == list(range(32)) and second != first


def test_bucket_sampler_resume_mid_epoch_neither_repeats_nor_skips():
    from lutra.training.data import BucketSampler

    s = BucketSampler(_keys(), batch_size=4, seed=1)
    it = iter(s)
    head = [next(it) for _ in range(3)]
    resumed = BucketSampler(_keys(), batch_size=4, seed=1)
    resumed.load_state_dict(s.state_dict())
    full = list(BucketSampler(_keys(), batch_size=4, seed=1))
    assert head + list(resumed) == full


def test_lightning_runs_every_epoch_of_the_bucket_sampler(tmp_path):
    import lightning as L
    from torch.utils.data import DataLoader

    from lutra.training.data import BucketSampler

    class Count(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen = []

        def training_step(self, batch, _):
            self.seen.append(batch.tolist())
            return (self.w * batch.float().mean()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    sampler = BucketSampler(_keys(32), batch_size=4, seed=0)
    module = Count()
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(module, DataLoader(list(range(32)), batch_sampler=sampler))
    assert trainer.global_step == 24 and len(module.seen) == 24
    for e in range(3):
        assert sorted(i for b in module.seen[8 * e : 8 * (e + 1)] for i in b) == list(range(32))
