"""Generating programs: N samples per prompt with the prompt's KV cache computed once and shared.

HF `generate(num_return_sequences=N)` runs every prompt N times through the model. Here each batch of prompts is
encoded once (left-padded, explicit attention mask and positions), its KV cache is repeated N times in place, and
decoding continues token by token with temperature / top-p (or greedy), pruning finished rows from the cache.
The cache writes each step's keys and values into preallocated buffers instead of
concatenating the whole cache per step (`_growing_cache_class`; bench/sampling.py measured 1.2-1.4x at N=8-16
on ~30-token programs, within noise on today's ~19-token mini_sql programs).
Seeded per batch, so a stage re-run after a crash draws the same samples on the same hardware.

`shard=(rank, world)` decodes only every world-th batch of that same batching (batch b on rank b % world): each
batch keeps its prompts, its padding and its seed, so the ranks' union is bit-identical to the one-process run on
the same hardware (`lutra.distributed`). A per-prompt seed alone would fix the draws but not the arithmetic: a
prompt batched with other prompts is padded and reduced differently.
"""

from __future__ import annotations

import functools

import torch
from tqdm.auto import tqdm

from lutra.policy.logprobs import cache_kwarg
from lutra.policy.prompts import completion_layout, encode_prompt


def _sample_next(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # smallest set whose mass reaches top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter_(-1, idx, sorted_p)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


@functools.cache
def _growing_cache_class():
    """A transformers DynamicCache whose layers append into buffers grown 128 positions at a time: O(T) copying
    per sequence instead of one torch.cat of the whole cache per decoding step. Attention reads views of the
    filled part, so the arithmetic is unchanged. Falls back to DynamicCache where the layer API differs."""
    from transformers import DynamicCache  # start-up: transformers' cache classes cost ~1.5 s to import

    try:
        from transformers.cache_utils import Cache, DynamicLayer
    except ImportError:  # transformers < 4.56: no per-layer cache classes
        return DynamicCache

    class GrowingLayer(DynamicLayer):
        chunk = 128

        def _view(self) -> None:
            self.keys, self.values = self._k[:, :, : self._n], self._v[:, :, : self._n]

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                self._k, self._v, self._n = key_states[:, :, :0], value_states[:, :, :0], 0
            t = key_states.shape[2]
            if self._n + t > self._k.shape[2]:
                cap = self._n + t + self.chunk
                k = self._k.new_empty(*self._k.shape[:2], cap, self._k.shape[3])
                v = self._v.new_empty(*self._v.shape[:2], cap, self._v.shape[3])
                k[:, :, : self._n], v[:, :, : self._n] = self._k[:, :, : self._n], self._v[:, :, : self._n]
                self._k, self._v = k, v
            self._k[:, :, self._n : self._n + t] = key_states
            self._v[:, :, self._n : self._n + t] = value_states
            self._n += t
            self._view()
            return self.keys, self.values

        def get_seq_length(self, *args) -> int:
            return self._n if self.is_initialized else 0

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self.get_seq_length() > 0:
                self._k, self._v = self._k.repeat_interleave(repeats, 0), self._v.repeat_interleave(repeats, 0)
                self._view()

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self.get_seq_length() > 0:
                self._k, self._v = self._k[indices], self._v[indices]
                self._view()

    class GrowingCache(DynamicCache):
        def __init__(self) -> None:
            Cache.__init__(self, layer_class_to_replicate=GrowingLayer)

    return GrowingCache


def _cache_kw(model) -> str:
    return cache_kwarg(model.get_base_model() if hasattr(model, "get_base_model") else model)


@torch.inference_mode()
def _generate_batch(model, prompt_ids, *, n, temperature, top_p, max_new_tokens, eos_ids, pad_id, gen, device):
    width = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
    for i, p in enumerate(prompt_ids):  # left padding: every prompt ends at the last column
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    cache, kw = _growing_cache_class()(), _cache_kw(model)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1,
                **{kw: cache})
    # the cache object is filled in place (reading out.past_key_values warns on transformers 5.2x)
    logits = out.logits[:, -1]
    if n > 1:
        cache.batch_repeat_interleave(n)
        logits = logits.repeat_interleave(n, 0)
        mask = mask.repeat_interleave(n, 0)
        pos = pos.repeat_interleave(n, 0)
    rows = logits.shape[0]
    alive = torch.arange(rows, device=device)  # original row of each live cache row
    next_pos = pos[:, -1] + 1
    tokens: list[list[int]] = [[] for _ in range(rows)]
    eos = torch.tensor(sorted(eos_ids), device=device)
    for step in range(max_new_tokens):
        nxt = _sample_next(logits, temperature, top_p, gen)
        done = torch.isin(nxt, eos)
        for r, t, d in zip(alive.tolist(), nxt.tolist(), done.tolist()):
            if not d:
                tokens[r].append(t)
        if step == max_new_tokens - 1:
            break
        keep = (~done).nonzero().squeeze(-1)
        if keep.numel() == 0:
            break
        if keep.numel() < alive.numel():
            cache.batch_select_indices(keep)
            alive, nxt, mask, next_pos = alive[keep], nxt[keep], mask[keep], next_pos[keep]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=next_pos[:, None], use_cache=True,
                    **{kw: cache})
        logits = out.logits[:, -1]
        next_pos = next_pos + 1
    finished = [True] * rows
    for r in alive.tolist():  # rows still alive after the loop never emitted EOS
        if len(tokens[r]) >= max_new_tokens:
            finished[r] = False
    return tokens, finished


def generate(model, tokenizer, prompts: list[str], *, n: int = 1, temperature: float = 0.0, top_p: float = 1.0,
             max_new_tokens: int = 128, batch_size: int = 32, seed: int = 0, progress: bool = True,
             desc: str = "sample", return_finished: bool = False, shard: tuple[int, int] = (0, 1)):
    """n completions (text, EOS stripped) for each prompt string; temperature 0 = greedy.

    With return_finished, also a parallel list of flags: False where a sample hit max_new_tokens without EOS
    (lutra labels such samples as truncated instead of executing a cut-off program).
    shard=(rank, world): only the batches b with b % world == rank; the other prompts' entries are None.
    """
    rank, world = shard
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))  # similar lengths share a batch
    eos_ids = {tokenizer.eos_token_id, completion_layout(tokenizer).stop_id}  # + the template's turn end
    eos_ids.discard(None)
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if gen_eos is not None:
        eos_ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    starts = list(enumerate(range(0, len(order), batch_size)))[rank::world]
    texts: list = [[] if world == 1 else None for _ in prompts]
    flags: list = [[] if world == 1 else None for _ in prompts]
    total = sum(len(order[start : start + batch_size]) for _, start in starts) * n
    bar = tqdm(total=total, desc=desc, disable=not progress, unit="seq", leave=False)
    for b, start in starts:
        idx = order[start : start + batch_size]
        for i in idx:
            texts[i], flags[i] = [], []
        gen = torch.Generator(device="cpu" if device.type != "cuda" else device).manual_seed(seed * 1_000_003 + b)
        toks, fin = _generate_batch(model, [encoded[i] for i in idx], n=n, temperature=temperature, top_p=top_p,
                                    max_new_tokens=max_new_tokens, eos_ids=eos_ids, pad_id=pad_id, gen=gen,
                                    device=device)
        for j, i in enumerate(idx):
            for k in range(n):
                texts[i].append(tokenizer.decode(toks[j * n + k], skip_special_tokens=True).strip())
                flags[i].append(fin[j * n + k])
        bar.update(len(idx) * n)
    bar.close()
    model.train(was_training)
    return (texts, flags) if return_finished else texts


def greedy(model, tokenizer, prompts: list[str], *, max_new_tokens: int, batch_size: int = 32, progress: bool = True,
           desc: str = "greedy", shard: tuple[int, int] = (0, 1)) -> list:
    """One greedy completion per prompt: the decoding of every evaluation (the loop's rounds, `lutra.evaluate`,
    the tiny warm start's checks). Greedy draws no random numbers, so no seed. `shard` as in `generate` (None
    where another rank decodes)."""
    outs = generate(model, tokenizer, prompts, n=1, temperature=0.0, max_new_tokens=max_new_tokens,
                    batch_size=batch_size, progress=progress, desc=desc, shard=shard)
    return [None if o is None else o[0] for o in outs]
