"""Log-prob primitives shared by sampling, the tiny warm start, the reference pass and training.

A prompt prefix that every row shares (a pair's chosen and rejected; problems on one database) runs once and its KV
cache is repeated; the LM head runs on completion positions only.
"""

from __future__ import annotations

import inspect
from contextlib import nullcontext

import torch
from tqdm.auto import tqdm


def shared_prefix_len(input_ids: torch.Tensor, loss_mask: torch.Tensor) -> int:
    """Length of the token prefix common to every row and ending before the first loss position."""
    same = (input_ids == input_ids[:1]).all(0).long().cumprod(0).sum().item()
    loss_cols = loss_mask.any(0).nonzero()
    first_loss = loss_cols[0].item() if loss_cols.numel() else input_ids.shape[1]
    return int(min(same, first_loss))


def body_and_head(model):
    """(decoder, LM head, config) of a causal LM, peft-wrapped or not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings(), base.config


def cache_kwarg(module) -> str:
    """The name of `module.forward`'s KV-cache argument: transformers >= 5.2x renamed `past_key_values` to `cache`."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def prefix_forward(body, ids: torch.Tensor, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder hidden states of `ids` (rows, T) whose first `p` tokens are the same in every row: the prefix runs
    once (row 0) and its KV cache is repeated for the rest. Returns (prefix states (p, H), rest (rows, T - p, H))."""
    from transformers import DynamicCache  # start-up: transformers' cache classes cost ~1.5 s to import

    cache, kw = DynamicCache(), cache_kwarg(body)
    h_prefix = body(input_ids=ids[:1, :p], use_cache=True, **{kw: cache}).last_hidden_state[0]
    cache.batch_repeat_interleave(ids.shape[0])
    pos = torch.arange(p, ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
    return h_prefix, body(input_ids=ids[:, p:], position_ids=pos, use_cache=True, **{kw: cache}).last_hidden_state


def completion_logps(model, batch: dict, *, share_prefix: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs (rows,) and completion lengths for a collated batch.

    - Right padding: the causal mask alone keeps real tokens from attending to padding, so no attention mask
      is passed (identical log-probs on real tokens, and SDPA's fast causal path).
    - Shared prefix: rows that start with the same tokens (a pair's chosen and rejected; problems on one
      database, whose schema opens the prompt) have that prefix run once and its KV cache repeated: the same
      arithmetic on far fewer tokens. LoRA layers are injected in place, so the decoder call trains them too.
    - The LM head runs only on completion positions: prompt logits are never needed.
    """
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["loss_mask"]
    body, head, config = body_and_head(model)
    p = shared_prefix_len(ids, mask) if share_prefix and ids.shape[0] > 1 else 0
    if p >= 8 and not getattr(body, "gradient_checkpointing", False):
        _, hidden = prefix_forward(body, ids, p)
        labels, mask_s = labels[:, p:], mask[:, p:]
    else:
        hidden = body(input_ids=ids).last_hidden_state
        mask_s = mask
    keep = mask_s.bool()
    logits = head(hidden[keep]).float()
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    token_logps = torch.log_softmax(logits, -1).gather(1, labels[keep].unsqueeze(1)).squeeze(1)
    rows = torch.arange(ids.shape[0], device=ids.device).unsqueeze(1).expand_as(keep)[keep]
    sums = torch.zeros(ids.shape[0], device=ids.device, dtype=token_logps.dtype).index_add(0, rows, token_logps)
    return sums, mask.sum(-1)


@torch.inference_mode()
def reference_logps(model, batches, *, use_base: bool, progress: bool = True) -> torch.Tensor:
    """(N, 2) chosen/rejected log-probs of the starting policy (eval mode), or of the base with adapters off."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    ctx = model.disable_adapter() if use_base else nullcontext()
    with ctx:
        for batch in tqdm(batches, desc="reference log-probs", disable=not progress, leave=False):
            batch = {k: v.to(device) for k, v in batch.items()}
            logps, _ = completion_logps(model, batch)
            b = batch["index"].numel()
            out.append(torch.stack([logps[:b], logps[b:]], dim=-1).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 2)
