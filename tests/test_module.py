"""One real Lightning step on a peft LoRA policy: first DPO term is log 2, only LoRA parameters move."""

import copy
import math

import lightning as L
import pytest
import torch
from peft import get_peft_model

from lutra.config import MethodConfig
from lutra.policy.logprobs import reference_logps
from lutra.policy.models import lora_config
from lutra.policy.prompts import format_prompt
from lutra.training.data import PreferenceDataModule, encode_pairs, ordered_batches
from lutra.training.module import PolicyModule


class Capture(L.Callback):
    def __init__(self):
        self.first = None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.first is None:
            self.first = {k: float(v) for k, v in trainer.callback_metrics.items()}


def _pairs(tokenizer, model_cfg):
    prompt = format_prompt(tokenizer, "Which singers are from France?", model_cfg)
    return [{"prompt": prompt, "chosen": "SELECT name FROM singer WHERE country = 'France'",
             "rejected": "SELECT name FROM singer"},
            {"prompt": format_prompt(tokenizer, "How many singers are older than 30?", model_cfg),
             "chosen": "SELECT COUNT(*) FROM singer WHERE age > 30", "rejected": "SELECT COUNT(*) FROM singer"}]


def _policy(small_model, model_cfg, *, perturb: bool, device: str = "cpu"):
    """A peft LoRA policy on a copy of the model; `perturb`: non-zero LoRA B, so the adapter changes the output."""
    policy = get_peft_model(copy.deepcopy(small_model), lora_config(model_cfg)).to(device)
    if perturb:
        with torch.no_grad():
            for n, p in policy.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.02)
    return policy


def _one_step(policy, enc, ref, pad_id, method, **trainer_kwargs) -> dict:
    """The logged metrics of one Lightning training step (CPU unless trainer_kwargs say otherwise)."""
    cap = Capture()
    kw = {"accelerator": "cpu", "enable_progress_bar": False, **trainer_kwargs}
    trainer = L.Trainer(**kw, max_steps=1, logger=False, enable_checkpointing=False, enable_model_summary=False,
                        callbacks=[cap])
    trainer.fit(PolicyModule(policy, method, lr=1e-2, total_steps=1),
                datamodule=PreferenceDataModule(enc, ref, batch_size=2, pad_id=pad_id, seed=0))
    return cap.first


@pytest.mark.parametrize("reference", ["previous", "base"])
def test_first_step_dpo_is_log2_and_only_lora_moves(tokenizer, small_model, model_cfg, reference):
    torch.manual_seed(0)
    model_cfg.lora_dropout = 0.3  # dropout must be off during preference training regardless
    policy = _policy(small_model, model_cfg, perturb=True)  # so `base` and `previous` differ
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    method = MethodConfig(name="codelutra", beta=0.1, nll_weight=1.0, batch_size=2, reference=reference)
    enc = encode_pairs(tokenizer, _pairs(tokenizer, model_cfg), model_cfg)
    ref = reference_logps(policy, ordered_batches(enc, 2, tokenizer.pad_token_id), use_base=reference == "base",
                          progress=False)
    assert ref.shape == (2, 2)
    first = _one_step(policy, enc, ref, tokenizer.pad_token_id, method)
    if reference == "previous":
        assert first["train/loss/dpo"] == pytest.approx(math.log(2), abs=1e-5)
        assert first["train/rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    else:
        assert first["train/loss/dpo"] != pytest.approx(math.log(2), abs=1e-4)
    moved = {n for n, p in policy.named_parameters() if not torch.equal(p.detach(), before[n])}
    lora = {n for n, p in policy.named_parameters() if "lora_" in n}
    assert moved, "nothing was trained"
    assert moved <= lora, f"non-LoRA parameters changed: {sorted(moved - lora)[:3]}"
    assert moved == lora, f"LoRA parameters that did not move: {sorted(lora - moved)[:3]}"


def test_shared_prefix_logps_equal_plain_forward(tokenizer, small_model, model_cfg):
    from lutra.policy.logprobs import completion_logps, shared_prefix_len
    from lutra.training.data import collate
    from lutra.training.loss import sequence_logps

    enc = encode_pairs(tokenizer, _pairs(tokenizer, model_cfg), model_cfg)
    items = [{"i": i, "prompt": enc.prompts[i], "chosen": enc.chosen[i], "rejected": enc.rejected[i]} for i in range(2)]
    one_pair, two_prompts = collate(items[:1], tokenizer.pad_token_id), collate(items, tokenizer.pad_token_id)
    assert shared_prefix_len(one_pair["input_ids"], one_pair["loss_mask"]) == len(enc.prompts[0]) - 1
    assert shared_prefix_len(two_prompts["input_ids"], two_prompts["loss_mask"]) < 8  # falls back: plain forward
    for batch in (one_pair, two_prompts):
        shared, lengths = completion_logps(small_model, batch)
        logits = small_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        plain = sequence_logps(logits, batch["labels"], batch["loss_mask"])
        torch.testing.assert_close(shared, plain, atol=1e-4, rtol=1e-5)
        assert lengths.tolist() == batch["loss_mask"].sum(-1).tolist()


def _first_dpo_under(precision: str, accelerator: str, tokenizer, small_model, model_cfg, matched: bool) -> float:
    """First step's DPO term when fit runs in `precision` and the reference was computed under the loop's autocast
    for that precision (matched) or in plain fp32 (not matched)."""
    from lutra.config import TrainerConfig
    from lutra.training import strategies

    device = "cuda" if accelerator == "gpu" else "cpu"
    torch.manual_seed(0)
    policy = _policy(small_model, model_cfg, perturb=True, device=device)
    tcfg = TrainerConfig(accelerator=accelerator, devices=1, precision=precision, enable_progress_bar=False)
    enc = encode_pairs(tokenizer, _pairs(tokenizer, model_cfg), model_cfg)
    ctx = strategies.autocast(tcfg, device) if matched else torch.autocast(device, enabled=False)
    with ctx:
        ref = reference_logps(policy, ordered_batches(enc, 2, tokenizer.pad_token_id), use_base=False, progress=False)
    method = MethodConfig(name="codelutra", beta=0.1, nll_weight=1.0, batch_size=2)
    return _one_step(policy, enc, ref, tokenizer.pad_token_id, method,
                     **strategies.trainer_kwargs(tcfg))["train/loss/dpo"]


def test_reference_under_fit_precision_keeps_first_step_log2(tokenizer, small_model, model_cfg):
    """bf16-mixed fit: a reference computed in fp32 is off by bf16 rounding; the loop's autocast makes it exact."""
    args = ("bf16-mixed", "cpu", tokenizer, small_model, model_cfg)
    assert _first_dpo_under(*args, matched=True) == pytest.approx(math.log(2), abs=1e-6)
    # small here (a 2-layer model, ~10-token completions: 3.7e-5), it grows with depth and completion length
    assert abs(_first_dpo_under(*args, matched=False) - math.log(2)) > 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_reference_under_fit_precision_keeps_first_step_log2_on_gpu(tokenizer, small_model, model_cfg):
    args = ("bf16-mixed", "gpu", tokenizer, small_model, model_cfg)
    assert _first_dpo_under(*args, matched=True) == pytest.approx(math.log(2), abs=1e-6)


@pytest.mark.parametrize("checkpointing", [True, False])
def test_gradient_checkpointing_runs_in_preference_training(tokenizer, small_model, model_cfg, checkpointing):
    """PolicyModule turns dropout off with eval(); transformers checkpoints a layer only in train mode, so the
    checkpointed layers must be put back: each layer's attention then runs twice a step (forward, and the recompute
    in backward), and the first DPO term is still exactly log 2 (dropout off)."""
    torch.manual_seed(0)
    model_cfg.lora_dropout = 0.3
    base = copy.deepcopy(small_model)
    if checkpointing:
        base.gradient_checkpointing_enable()
        base.config.use_cache = False
    policy = get_peft_model(base, lora_config(model_cfg))
    calls = []  # counted on each layer's attention: a checkpointed layer's own hooks may sit outside the checkpoint
    layers = [m.self_attn for m in policy.modules() if type(m).__name__.endswith("DecoderLayer")]
    assert layers
    for m in layers:
        m.register_forward_hook(lambda *a: calls.append(1))
    enc = encode_pairs(tokenizer, _pairs(tokenizer, model_cfg), model_cfg)
    ref = reference_logps(policy, ordered_batches(enc, 2, tokenizer.pad_token_id), use_base=False, progress=False)
    calls.clear()
    first = _one_step(policy, enc, ref, tokenizer.pad_token_id,
                      MethodConfig(name="codelutra", beta=0.1, nll_weight=1.0, batch_size=2))
    assert len(calls) == len(layers) * (2 if checkpointing else 1)
    assert first["train/loss/dpo"] == pytest.approx(math.log(2), abs=1e-5)
    # gradients reach the LoRA weights inside the checkpointed layers (B starts at zero: only a gradient moves it)
    lora_b = [p for n, p in policy.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.detach().abs().sum() > 0 for p in lora_b)
    dropouts = [m for m in policy.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and not any(m.training for m in dropouts)
