"""The LightningModule: policy log-probs of a batch of pairs, the CodeLutra loss, TRL-style metric names.

The reference log-probs come precomputed with the batch (`ref_logps`, computed once per round before the first
update), so no second model is held in memory. Dropout stays off during preference training (the policy is kept
in eval mode; gradients still flow), which makes the first step's DPO term exactly log 2.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy

from lutra.policy.logprobs import completion_logps
from lutra.training.loss import dpo_nll_loss, sft_loss


class PolicyModule(L.LightningModule):
    def __init__(self, model, method_cfg, lr: float, total_steps: int):
        super().__init__()
        self.model = model
        self.method = method_cfg
        self.lr = lr
        self.total_steps = max(1, total_steps)

    def on_train_epoch_start(self) -> None:
        self.model.eval()  # dropout off; Lightning switched the module to train mode
        # transformers checkpoints a layer only while that layer is in train mode: put back those modules alone (not
        # their children, so every dropout stays off), or gradient checkpointing would silently be off in training
        for mod in self.model.modules():
            if getattr(mod, "gradient_checkpointing", False) is True:
                mod.training = True

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if gradient_clip_val and isinstance(self.trainer.strategy, FSDPStrategy):
            # Lightning's FSDP precision plugin refuses norm clipping (Lightning-AI/pytorch-lightning#19235); the
            # FSDP root module's clip_grad_norm_ takes the norm over every rank's shard
            self.trainer.model.clip_grad_norm_(gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        m = self.method
        logps, lengths = completion_logps(self.model, batch)
        b = batch["index"].numel()
        # a rank's slice of a data-parallel round's global batch (BucketSampler split) is weighted so that the mean
        # over ranks, which DDP's gradient averaging and sync_dist's metric averaging take, is the global batch's
        pairs, tokens = batch.get("scale", (1.0, 1.0))
        nll_scale = tokens if m.nll_reduction == "token_mean" else pairs
        if m.loss == "sft":
            loss, metrics = sft_loss(logps, lengths, nll_reduction=m.nll_reduction)
            if "scale" in batch:
                loss = loss * nll_scale
        else:
            ref = batch["ref"]
            loss, metrics = dpo_nll_loss(
                logps[:b], logps[b:], ref[:, 0], ref[:, 1], lengths[:b], beta=m.beta,
                dpo_weight=m.dpo_weight * pairs if "scale" in batch else m.dpo_weight,
                nll_weight=m.nll_weight * nll_scale if "scale" in batch else m.nll_weight,
                nll_reduction=m.nll_reduction,
            )
        if "scale" in batch:
            metrics = {k: v * (nll_scale if k == "loss/nll" else pairs) for k, v in metrics.items()}
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=b, sync_dist=True)
        self.log_dict({f"train/{k}": v for k, v in metrics.items()}, batch_size=b, sync_dist=True)
        return loss

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.method.weight_decay)
        warm = self.method.warmup_steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
