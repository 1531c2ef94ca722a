"""Prompts, token boundaries and the per-round preference data.

Boundary rules (tested in tests/test_data.py and tests/test_chat_templates.py):
- the prompt is rendered once (chat template when the tokenizer has one) and tokenized without adding special
  tokens, then exactly one BOS is ensured at the front when the tokenizer uses one;
- a completion is the chat template's own rendering of the assistant turn: what follows the generation prompt,
  up to and including the token that closes the turn (`CompletionLayout`, derived once per tokenizer from the
  template: `<end_of_turn>` for Gemma, `\\n...\\n<|EOT|>` for DeepSeek-Coder); without a template, the answer + EOS.
  It is tokenized after the prompt, so the prompt ids are an exact prefix of every training sequence and the
  boundary is the one generation sees (sampling feeds the same prompt ids and stops at the same token);
- a pair whose prompt or completion exceeds the model's limits is dropped and counted, never truncated.
"""

from __future__ import annotations

import logging
import random
import weakref
from dataclasses import dataclass, field

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger(__name__)


def _uses_template(tokenizer, model_cfg=None) -> bool:
    return (model_cfg is None or model_cfg.use_chat_template) and bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer, user_message: str, model_cfg) -> str:
    """The prompt text for one problem: the chat template's rendering when available, else the raw message.

    A template that rejects the system role (Gemma) gets the system prompt at the top of the user turn instead.
    """
    if _uses_template(tokenizer, model_cfg):
        from jinja2.exceptions import TemplateError

        user = {"role": "user", "content": user_message}
        render = lambda msgs: tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)  # noqa: E731
        if not model_cfg.system_prompt:
            return render([user])
        try:
            return render([{"role": "system", "content": model_cfg.system_prompt}, user])
        except TemplateError:
            return render([{"role": "user", "content": f"{model_cfg.system_prompt}\n\n{user_message}"}])
    return user_message.rstrip() + "\n"


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer's own encoding starts with BOS (Llama-style), which lutra then guarantees once."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("x", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if adds_bos(tokenizer):
        while ids and ids[0] == bos:  # a template that already wrote BOS: keep exactly one
            ids = ids[1:]
        ids = [bos] + ids
    return ids


@dataclass(frozen=True)
class CompletionLayout:
    """How an answer becomes a training completion: `prefix + answer + suffix`, then the `stop_id` token.

    Derived from the chat template (`completion_layout`): `prefix` is what the template writes between the
    generation prompt and the answer, `suffix + <stop>` what closes the turn up to its first special token.
    Gemma: "", "", <end_of_turn>; DeepSeek-Coder: "\\n", "\\n", <|EOT|>; Llama-3: "", "", <|eot_id|>.
    Without a template: "", "", EOS. Generation stops at `stop_id` (lutra.sampling, lutra.vllm_backend).
    """

    prefix: str = ""
    suffix: str = ""
    stop_id: int | None = None


_PROBE_QUESTION = "lutra probe question"
_PROBE_ANSWER = "lutra_probe_answer_2f9c"
_LAYOUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> (chat_template, layout)


def _special_tokens(tokenizer) -> set[str]:
    out = {str(t) for t in getattr(tokenizer, "all_special_tokens", [])}
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    out |= {t.content for t in added.values() if getattr(t, "special", False)}
    return {t for t in out if t}


def _derive_layout(tokenizer) -> CompletionLayout | None:
    """The assistant turn as the template renders it, from a conversation whose answer is a probe string:
    the text after the rendered generation prompt, split around the probe and cut after the first special
    token. None (with a warning) where the template does not render that way."""
    user = [{"role": "user", "content": _PROBE_QUESTION}]
    try:
        gen = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": _PROBE_ANSWER}],
                                             tokenize=False)
    except Exception as e:  # noqa: BLE001 - any template error: fall back to answer + EOS
        log.warning("chat template cannot render an assistant turn (%s): completions end with EOS", e)
        return None
    if not full.startswith(gen) or _PROBE_ANSWER not in full[len(gen) :]:
        log.warning("chat template's assistant turn does not follow its generation prompt: completions end with EOS")
        return None
    prefix, after = full[len(gen) :].split(_PROBE_ANSWER, 1)
    hits = [(after.find(t), -len(t), t) for t in _special_tokens(tokenizer) if t in after]
    if not hits:
        log.warning("chat template closes an assistant turn with no special token: completions end with EOS")
        return None
    pos, _, stop = min(hits)  # the first special token after the answer (the longest where several start there)
    return CompletionLayout(prefix, after[:pos], tokenizer.convert_tokens_to_ids(stop))


def completion_layout(tokenizer, model_cfg=None) -> CompletionLayout:
    """The tokenizer's completion layout (cached per tokenizer and template); answer + EOS where no chat template
    is used (none on the tokenizer, or model_cfg.use_chat_template false)."""
    eos = CompletionLayout(stop_id=getattr(tokenizer, "eos_token_id", None))
    if not _uses_template(tokenizer, model_cfg):
        return eos
    template = tokenizer.chat_template
    try:
        cached = _LAYOUTS.get(tokenizer)
    except TypeError:  # not weak-referenceable: derive every time
        cached = None
    if cached is not None and cached[0] == template:
        return cached[1]
    layout = _derive_layout(tokenizer) or eos
    try:
        _LAYOUTS[tokenizer] = (template, layout)
    except TypeError:
        pass
    return layout


def encode_completion(tokenizer, completion: str, prompt: str | None = None,
                      layout: CompletionLayout | None = None) -> list[int]:
    """Ids of the assistant turn `layout.prefix + completion + layout.suffix`, then `layout.stop_id` (default
    layout: the tokenizer's own, `completion_layout(tokenizer)`; answer + EOS without a template). The stop token
    is special, so text never merges across it: appending its id equals tokenizing the whole rendered turn.
    With the prompt text, the ids are those of the turn inside prompt+turn tokenized as one text (what the model
    reads after the prompt): SentencePiece tokenizers with a dummy prefix tokenize a text alone differently at
    its start. Falls back to the turn alone when the joint tokenization does not keep the prompt's ids as a
    prefix (a merge across the boundary)."""
    layout = layout if layout is not None else completion_layout(tokenizer)
    text = layout.prefix + completion + layout.suffix
    if prompt is not None:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        joint = tokenizer(prompt + text, add_special_tokens=False)["input_ids"]
        if joint[: len(p)] == p:
            return joint[len(p) :] + [layout.stop_id]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids + [layout.stop_id]


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

    def __getitem__(self, i: int) -> dict:
        item = {"i": i, "prompt": self.enc.prompts[i], "chosen": self.enc.chosen[i], "rejected": self.enc.rejected[i]}
        if self.ref is not None:
            item["ref"] = self.ref[i]
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
    (lutra.module.completion_logps). Stateful (epoch + position): a resumed epoch
    neither repeats nor skips batches.
    """

    def __init__(self, keys: list, batch_size: int, seed: int):
        self.keys, self.batch_size, self.seed = keys, batch_size, seed
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
        if world > 1:  # every rank draws the same global order (same seed) and takes every world-th batch;
            # cycling pads the list so all ranks take the same number of steps (DDP would hang otherwise)
            n = -(-len(batches) // world) * world
            batches = [batches[i % len(batches)] for i in range(n)][rank::world]
        return batches

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
        return -(-((len(self.keys) + self.batch_size - 1) // self.batch_size) // self._world()[0])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]


class PreferenceDataModule(L.LightningDataModule):
    """Serves one round's encoded pairs (rebuilt every round), with the reference log-probs attached."""

    def __init__(self, enc: EncodedPairs, ref: torch.Tensor | None, batch_size: int, pad_id: int, seed: int):
        super().__init__()
        self.dataset = PairDataset(enc, ref)
        self.sampler = BucketSampler([bucket_key(p) for p in enc.prompts], batch_size, seed)
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
