"""The CodeLutra objective as pure functions.

    L(theta) = -log sigma( beta * [log pi(y_c|x) - log pi_ref(y_c|x)] - beta * [log pi(y_r|x) - log pi_ref(y_r|x)] )
               + lambda * NLL(y_c | x)

the "dual loss" of Tao et al. (2024): DPO (Rafailov et al. 2023, eq. 7) on (correct, incorrect) program pairs plus a
likelihood term on the correct program, as in RPO / Iterative RPO (Pang et al. 2024). DPO log-probs are summed over
completion tokens; the NLL reduction is a choice (see `nll`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NLL_REDUCTIONS = ("seq_mean", "token_mean", "sum")


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed log-probabilities of `labels` under `logits` where `mask` is 1.

    logits: (B, T, V) predictions for positions 0..T-1 (already aligned: logits[:, t] predicts labels[:, t]).
    labels: (B, T) token ids; mask: (B, T) 1 on completion tokens, 0 on prompt and padding.
    Returns (B,) float32 sums.
    """
    logps = torch.log_softmax(logits.float(), dim=-1)
    token_logps = torch.gather(logps, 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (token_logps * mask).sum(-1)


def nll(chosen_logps: torch.Tensor, chosen_lengths: torch.Tensor, reduction: str = "seq_mean") -> torch.Tensor:
    """Negative log-likelihood of the chosen completions from their summed log-probs (B,) and token counts (B,).

    seq_mean: mean over sequences of the per-token mean NLL (Iterative RPO, OpenRLHF);
    token_mean: total NLL / total tokens in the batch (TRL's `"sft"` loss term);
    sum: mean over sequences of the summed NLL.
    """
    lengths = chosen_lengths.to(chosen_logps.dtype)
    if reduction == "seq_mean":
        return (-chosen_logps / lengths).mean()
    if reduction == "token_mean":
        return -chosen_logps.sum() / lengths.sum()
    if reduction == "sum":
        return (-chosen_logps).mean()
    raise ValueError(f"nll_reduction must be one of {NLL_REDUCTIONS}, got {reduction!r}")


def dpo_nll_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    chosen_lengths: torch.Tensor,
    *,
    beta: float = 0.1,
    dpo_weight: float = 1.0,
    nll_weight: float = 1.0,
    nll_reduction: str = "seq_mean",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO (sigmoid) + lambda * NLL on the chosen completion.

    All log-prob inputs are (B,) sums over completion tokens; chosen_lengths is (B,) token counts.
    Returns the scalar loss and detached metrics under TRL's names (rewards/*, logps/*) plus loss/dpo, loss/nll.
    """
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    logits = beta * (chosen_ratio - rejected_ratio)
    dpo = -F.logsigmoid(logits).mean()
    nll_term = nll(policy_chosen, chosen_lengths, nll_reduction)
    loss = dpo_weight * dpo + nll_weight * nll_term
    chosen_rewards = (beta * chosen_ratio).detach()
    rejected_rewards = (beta * rejected_ratio).detach()
    metrics = {
        "loss/dpo": dpo.detach(),
        "loss/nll": nll_term.detach(),
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
        "logps/chosen": policy_chosen.detach().mean(),
        "logps/rejected": policy_rejected.detach().mean(),
    }
    return loss, metrics


def sft_loss(
    logps: torch.Tensor, lengths: torch.Tensor, *, nll_reduction: str = "seq_mean"
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Supervised NLL on target completions (the `sft` and `sft_gold` baselines)."""
    loss = nll(logps, lengths, nll_reduction)
    return loss, {"loss/nll": loss.detach(), "logps/chosen": logps.detach().mean()}
