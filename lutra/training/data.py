"""The per-round preference data: encoded pairs, length-bucketed batches and the Lightning data module.

Token boundaries (one BOS, the chat template's own assistant turn, drop-and-count over the limits) are
lutra.policy.prompts'; this module encodes a round's pairs with them and batches them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from lutra.policy.prompts import completion_layout, encode_completion, encode_prompt


@dataclass
class EncodedPairs:
    """Token ids of a round's pairs (or SFT targets) with the drop counts."""

    prompts: list[list[int]] = field(default_factory=list)
    chosen: list[list[int]] = field(default_factory=list)
    rejected: list[list[int] | None] = field(default_factory=list)
    index: list[int] = field(default_factory=list)
    """Position of each kept pair in the round's pairs.jsonl."""
    dropped_prompt_too_long: int = 0
    dropped_completion_too_long: int = 0


def encode_pairs(tokenizer, records: list[dict], model_cfg, *, with_rejected: bool = True) -> EncodedPairs:
    out = EncodedPairs()
    prompt_cache: dict[str, list[int]] = {}
    layout = completion_layout(tokenizer, model_cfg)
    for i, r in enumerate(records):
        p = prompt_cache.get(r["prompt"])
        if p is None:
            p = prompt_cache[r["prompt"]] = encode_prompt(tokenizer, r["prompt"])
        if len(p) > model_cfg.max_prompt_len:
            out.dropped_prompt_too_long += 1
            continue
        c = encode_completion(tokenizer, r["chosen"], r["prompt"], layout)
        rj = encode_completion(tokenizer, r["rejected"], r["prompt"], layout) if with_rejected else None
        limit = model_cfg.max_completion_len + 1  # + the stop token (generation's max_new_tokens excludes it)
        if len(c) > limit or (rj is not None and len(rj) > limit):
            out.dropped_completion_too_long += 1
            continue
        out.prompts.append(p)
        out.chosen.append(c)
        out.rejected.append(rj)
        out.index.append(i)
    return out


class PairDataset(Dataset):
    def __init__(self, enc: EncodedPairs, ref: torch.Tensor | None = None):
        self.enc, self.ref = enc, ref

    def __len__(self) -> int:
        return len(self.enc.prompts)

    def __getitem__(self, i) -> dict:
        """Item i; i = (index, pair_scale, token_scale) from a split BucketSampler carries its slice's scales."""
        scale = None
        if isinstance(i, tuple):
            i, *scale = i
        item = {"i": i, "prompt": self.enc.prompts[i], "chosen": self.enc.chosen[i], "rejected": self.enc.rejected[i]}
        if self.ref is not None:
            item["ref"] = self.ref[i]
        if scale is not None:
            item["scale"] = tuple(scale)
        return item


def collate(items: list[dict], pad_id: int) -> dict:
    """Chosen and rejected sequences of B pairs stacked into one (2B, T) batch: one forward pass for both.

    labels are the next tokens, mask is 1 exactly on completion tokens (the stop token included).
    """
    seqs, masks = [], []
    for key in ("chosen", "rejected"):
        for it in items:
            if it[key] is None:
                continue
            seqs.append(it["prompt"] + it[key])
            masks.append([0] * len(it["prompt"]) + [1] * len(it[key]))
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    comp_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for j, (s, m) in enumerate(zip(seqs, masks)):
        input_ids[j, : len(s)] = torch.tensor(s)
        comp_mask[j, : len(m)] = torch.tensor(m)
        attn[j, : len(s)] = 1
    batch = {
        "input_ids": input_ids[:, :-1],
        "attention_mask": attn[:, :-1],
        "labels": input_ids[:, 1:],
        "loss_mask": comp_mask[:, 1:],
        "index": torch.tensor([it["i"] for it in items]),
    }
    if "ref" in items[0]:
        batch["ref"] = torch.stack([it["ref"] for it in items])  # (B, 2): chosen, rejected
    if "scale" in items[0]:
        batch["scale"] = items[0]["scale"]  # (pairs, tokens) weights of a rank's slice (BucketSampler, split)
    return batch


def bucket_key(prompt_ids: list[int], prefix: int = 128) -> tuple:
    """Sort key that groups rows by the opening of their prompt (a schema, a system prompt) and nothing finer:
    a batch then shares that prefix (computed once) yet still mixes templates and questions, which keeps
    the gradient diverse. Sorting by the whole prompt would fill a batch with near-identical questions."""
    return tuple(prompt_ids[:prefix])


class BucketSampler(torch.utils.data.Sampler):
    """Batches whose rows share a prompt prefix and have similar lengths, in a seeded order that changes per epoch.

    Items are shuffled, then stably sorted by `keys` (see `bucket_key`) within chunks of 32 batches, so a batch
    mostly holds one prompt family (one database's schema) in random order: its shared prefix is computed once
    (lutra.policy.logprobs.completion_logps). Stateful (epoch + position): a resumed epoch
    neither repeats nor skips batches.

    Under DDP every rank draws the same global order (same seed). By default each rank takes every world-th batch
    (`trainer=ddp`: batch_size pairs per rank). `split=True` (data-parallel rounds, `lutra.distributed`) keeps the
    one-process batches and gives each rank a 1/world slice of every one, so a step sees the same batch_size pairs
    on any number of ranks. Each slice carries weights (`_slice`) that make the mean over ranks, which DDP's
    gradient averaging takes, the global batch's loss: pairs share for the per-pair means (DPO, seq_mean NLL),
    completion-token share for token_mean NLL (`lengths`: completion tokens per item).
    """

    def __init__(self, keys: list, batch_size: int, seed: int, *, split: bool = False,
                 lengths: list[int] | None = None):
        self.keys, self.batch_size, self.seed = keys, batch_size, seed
        self.split, self.lengths = split, lengths
        self.epoch, self.position = 0, 0

    @staticmethod
    def _world() -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size(), torch.distributed.get_rank()
        return 1, 0

    def _batches(self) -> list[list[int]]:
        rng = random.Random(f"{self.seed}/{self.epoch}")
        order = list(range(len(self.keys)))
        rng.shuffle(order)
        chunk = self.batch_size * 32  # sort within chunks: keeps randomness, groups prefixes
        batches = []
        for s in range(0, len(order), chunk):
            part = sorted(order[s : s + chunk], key=lambda i: self.keys[i])
            batches += [part[j : j + self.batch_size] for j in range(0, len(part), self.batch_size)]
        rng.shuffle(batches)
        world, rank = self._world()
        if world > 1 and self.split:
            return [self._slice(b, world, rank) for b in batches]
        if world > 1:  # every rank draws the same global order (same seed) and takes every world-th batch;
            # cycling pads the list so all ranks take the same number of steps (DDP would hang otherwise)
            n = -(-len(batches) // world) * world
            batches = [batches[i % len(batches)] for i in range(n)][rank::world]
        return batches

    def _slice(self, batch: list[int], world: int, rank: int) -> list[tuple]:
        """This rank's contiguous slice of a global batch as (index, pair_scale, token_scale) items: scale =
        world * slice share, so a full batch split evenly has pair_scale exactly 1. A short last batch can leave a
        rank an empty slice: it gets the batch's first pair with scales 0 (DDP needs every rank to step)."""
        per = -(-len(batch) // world)
        part = batch[rank * per : (rank + 1) * per]
        if not part:
            return [(batch[0], 0.0, 0.0)]
        lengths = self.lengths or [1] * len(self.keys)
        tokens = sum(lengths[i] for i in batch)
        pair_scale = world * len(part) / len(batch)
        token_scale = world * sum(lengths[i] for i in part) / tokens
        return [(i, pair_scale, token_scale) for i in part]

    def __iter__(self):
        batches = self._batches()
        if self.position >= len(batches):  # the last epoch's iterator was dropped after its last batch, never
            self.epoch, self.position = self.epoch + 1, 0  # exhausted (Lightning stops at len()): start the next
            batches = self._batches()
        while self.position < len(batches):
            self.position += 1
            yield batches[self.position - 1]
        self.epoch, self.position = self.epoch + 1, 0

    def __len__(self) -> int:
        batches = (len(self.keys) + self.batch_size - 1) // self.batch_size
        return batches if self.split else -(-batches // self._world()[0])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]


class PreferenceDataModule(L.LightningDataModule):
    """Serves one round's encoded pairs (rebuilt every round), with the reference log-probs attached."""

    def __init__(self, enc: EncodedPairs, ref: torch.Tensor | None, batch_size: int, pad_id: int, seed: int, *,
                 split: bool = False):
        super().__init__()
        self.dataset = PairDataset(enc, ref)
        self.sampler = BucketSampler([bucket_key(p) for p in enc.prompts], batch_size, seed, split=split,
                                     lengths=[len(c) for c in enc.chosen])
        self.pad_id = pad_id

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_sampler=self.sampler, collate_fn=lambda b: collate(b, self.pad_id))

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


def ordered_batches(enc: EncodedPairs, batch_size: int, pad_id: int):
    """Deterministic, unshuffled batches (for computing reference log-probs once per round)."""
    ds = PairDataset(enc)
    for s in range(0, len(ds), batch_size):
        yield collate([ds[i] for i in range(s, min(s + batch_size, len(ds)))], pad_id)
