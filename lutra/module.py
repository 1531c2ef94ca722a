"""The LightningModule: policy log-probs of a batch of pairs, the CodeLutra loss, TRL-style metric names.

The reference log-probs come precomputed with the batch (`ref_logps`, computed once per round before the first
update), so no second model is held in memory. Dropout stays off during preference training (the policy is kept
in eval mode; gradients still flow), which makes the first step's DPO term exactly log 2.
"""

from __future__ import annotations

import lightning as L
import torch

from lutra.loss import dpo_nll_loss, sequence_logps, sft_loss


def completion_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs (2B or B,) and completion lengths for a collated batch."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    mask = batch["loss_mask"]
    return sequence_logps(logits, batch["labels"], mask), mask.sum(-1)


@torch.inference_mode()
def reference_logps(model, batches, *, use_base: bool, progress: bool = True) -> torch.Tensor:
    """(N, 2) chosen/rejected log-probs of the starting policy (eval mode), or of the base with adapters off."""
    from contextlib import nullcontext

    from tqdm.auto import tqdm

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


class PolicyModule(L.LightningModule):
    def __init__(self, model, method_cfg, lr: float, total_steps: int):
        super().__init__()
        self.model = model
        self.method = method_cfg
        self.lr = lr
        self.total_steps = max(1, total_steps)

    def on_train_epoch_start(self) -> None:
        self.model.eval()  # dropout off; Lightning switched the module to train mode

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        m = self.method
        logps, lengths = completion_logps(self.model, batch)
        b = batch["index"].numel()
        if m.loss == "sft":
            loss, metrics = sft_loss(logps, lengths, nll_reduction=m.nll_reduction)
        else:
            ref = batch["ref"]
            loss, metrics = dpo_nll_loss(
                logps[:b], logps[b:], ref[:, 0], ref[:, 1], lengths[:b], beta=m.beta, dpo_weight=m.dpo_weight,
                nll_weight=m.nll_weight, nll_reduction=m.nll_reduction,
            )
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=b, sync_dist=True)
        self.log_dict({f"train/{k}": v for k, v in metrics.items()}, batch_size=b, sync_dist=True)
        return loss

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.method.weight_decay)
        warm = self.method.warmup_steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
