"""One DPO+NLL training step: lutra vs TRL's DPOTrainer on the same model, batch, LoRA config and precision.

    python bench/train_step.py [--models tiny,large] [--steps 8] [--warmup 2] [--large-steps 4]
    # writes bench/results/train_step.json

Batch: 8 preference pairs as one lutra round builds them (4 pairs for each of 2 mini_sql train problems on one
database, schema prompts of ~210 tokens, completions of ~30), token ids identical for both (TRL is handed lutra's
encoded ids, so tokenization differences cannot enter). fp32, LoRA r16 on every projection, AdamW lr 1e-3,
grad-norm clip 1.0, beta 0.1, NLL weight 1 with TRL's reduction (token_mean), gradient checkpointing off.

1. Agreement: with the same LoRA weights (B perturbed so policy != reference), TRL's compute_loss and lutra's
   completion_logps + dpo_nll_loss give the same loss and the same LoRA gradients.
2. Speed and memory: each implementation runs in its own process (peak RSS is per process) for warmup + steps
   optimizer steps over the same batch; time per step is the median gap between step ends (data collation,
   forward, backward, clip, AdamW, framework hooks). Peak RSS = the process's high-water mark while stepping;
   "step mem" = that peak minus the RSS just before the first step (the memory the step itself needs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402

IMPLS = {
    "trl": "TRL DPOTrainer, reference forward every step (adapter disabled)",
    "trl_precomputed": "TRL DPOTrainer, precompute_ref_log_probs=True",
    "lutra": "lutra PolicyModule + Lightning Trainer (the loop's path), shared prefix",
    "lutra_noshare": "lutra PolicyModule + Lightning, share_prefix=False",
    "lutra_raw": "lutra completion_logps + dpo_nll_loss + AdamW, plain loop, shared prefix",
    "lutra_raw_noshare": "same plain loop, share_prefix=False",
}
LR, BETA, CLIP = 1e-3, 0.1, 1.0


def _encoded(pairs: int):
    from lutra.training.data import encode_pairs

    tok = common.tokenizer()
    records = common.preference_records(n_problems=max(1, pairs // 4), pairs_per_problem=min(4, pairs))
    return tok, encode_pairs(tok, records, common.model_cfg())


def _trl_trainer(model, tok, enc, *, batch: int, precompute: bool, steps: int, out_dir: str, callbacks=()):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    class PreTokenized(DPOTrainer):
        """DPOTrainer fed lutra's token ids: its own prompt/completion tokenization is the only step skipped."""

        def _prepare_dataset(self, dataset, *args, **kwargs):
            return dataset

    ds = Dataset.from_dict({"prompt_ids": enc.prompts, "chosen_ids": enc.chosen, "rejected_ids": enc.rejected})
    args = DPOConfig(
        output_dir=out_dir, per_device_train_batch_size=batch, max_steps=steps,
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, optim="adamw_torch",
        max_grad_norm=CLIP, beta=BETA, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 1.0],
        precompute_ref_log_probs=precompute, max_length=None, gradient_checkpointing=False, bf16=False, fp16=False,
        use_cpu=True, report_to=[], logging_steps=5, save_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0, train_sampling_strategy="sequential", seed=0,
    )
    return PreTokenized(model=model, args=args, train_dataset=ds, processing_class=tok,
                        peft_config=common.lora_config(), callbacks=list(callbacks))


# -- 1. agreement -----------------------------------------------------------------------------------------------
def agreement(size: str, pairs: int) -> dict:
    import torch

    from lutra.policy.logprobs import completion_logps, reference_logps
    from lutra.training.data import PairDataset, collate
    from lutra.training.loss import dpo_nll_loss

    common.setup()
    tok, enc = _encoded(pairs)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trl_trainer(common.llama(size), tok, enc, batch=pairs, precompute=True, steps=1, out_dir=tmp)
    policy = trainer.model
    with torch.no_grad():  # the reference was taken at B = 0; a non-zero B makes the policy differ from it
        g = torch.Generator().manual_seed(1)
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    params = [p for p in policy.parameters() if p.requires_grad]
    policy.train()
    inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(len(enc.prompts))])
    loss_trl = trainer.compute_loss(policy, inputs)
    grads_trl = torch.autograd.grad(loss_trl, params)

    from lutra.training.data import ordered_batches

    ref = reference_logps(policy, ordered_batches(enc, len(enc.prompts), tok.pad_token_id), use_base=True,
                          progress=False)
    ds = PairDataset(enc, ref)
    batch = collate([ds[i] for i in range(len(ds))], tok.pad_token_id)
    b = len(ds)
    out = {"model": size, "pairs": b, "parameters": sum(p.numel() for n, p in policy.named_parameters()
                                                        if "lora_" not in n),
           "lora_parameters": sum(p.numel() for p in params),
           "ref_logps_max_abs_diff": float((ref - torch.stack([inputs["ref_chosen_logps"],
                                                               inputs["ref_rejected_logps"]], -1)).abs().max()),
           "loss_trl": float(loss_trl)}
    for share in (True, False):
        logps, lengths = completion_logps(policy, batch, share_prefix=share)
        loss, metrics = dpo_nll_loss(logps[:b], logps[b:], ref[:, 0], ref[:, 1], lengths[:b], beta=BETA,
                                     nll_reduction="token_mean")
        grads = torch.autograd.grad(loss, params)
        key = "shared" if share else "plain"
        out[f"loss_lutra_{key}"] = float(loss)
        out[f"loss_abs_diff_{key}"] = abs(float(loss) - float(loss_trl))
        scale = max(float(g.abs().max()) for g in grads_trl)
        out[f"grad_max_abs_diff_{key}"] = max(float((a - c).abs().max()) for a, c in zip(grads, grads_trl))
        out[f"grad_rel_diff_{key}"] = out[f"grad_max_abs_diff_{key}"] / scale
        out["dpo_term"], out["nll_term"] = float(metrics["loss/dpo"]), float(metrics["loss/nll"])
    out["agree_1e-5"] = out["loss_abs_diff_shared"] < 1e-5 and out["loss_abs_diff_plain"] < 1e-5
    return out


# -- 2. timing workers (one process each) -----------------------------------------------------------------------
def _summary(ends: list[float], start: float, warmup: int, monitor, rss_before: int) -> dict:
    gaps = [b - a for a, b in zip([start] + ends[:-1], ends)][warmup:]
    peak = monitor.stop()
    return {"step_s_median": statistics.median(gaps), "step_s_mean": statistics.mean(gaps),
            "step_s_all": [round(x, 4) for x in gaps], "peak_rss_mb": peak / 2**20,
            "step_mem_mb": (peak - rss_before) / 2**20, "process_max_rss_mb": common.max_rss() / 2**20}


def run_trl(size: str, pairs: int, steps: int, warmup: int, precompute: bool) -> dict:
    from transformers import TrainerCallback

    common.setup()
    tok, enc = _encoded(pairs)
    total = steps + warmup
    mon = common.PeakRSS()
    ends: list[float] = []
    state = {}

    class Timer(TrainerCallback):
        def on_train_begin(self, args, st, control, **kw):
            state["rss"], state["t0"] = mon.reset(), time.perf_counter()

        def on_step_end(self, args, st, control, **kw):
            ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        trainer = _trl_trainer(common.llama(size), tok, common.repeat_pairs(enc, total), batch=pairs,
                               precompute=precompute, steps=total, out_dir=tmp, callbacks=[Timer()])
        setup_s = time.perf_counter() - t
        trainer.train()
    return {**_summary(ends, state["t0"], warmup, mon, state["rss"]), "setup_s": setup_s}


def run_lutra(size: str, pairs: int, steps: int, warmup: int, share: bool, lightning: bool) -> dict:
    import torch
    from peft import get_peft_model
    from torch.utils.data import DataLoader

    from lutra.policy.logprobs import completion_logps, reference_logps
    from lutra.training.data import PairDataset, collate, ordered_batches
    from lutra.training.loss import dpo_nll_loss

    common.setup()
    tok, enc = _encoded(pairs)
    total = steps + warmup
    mon = common.PeakRSS()
    t = time.perf_counter()
    torch.manual_seed(0)
    policy = get_peft_model(common.llama(size), common.lora_config())
    ref = reference_logps(policy, ordered_batches(enc, pairs, tok.pad_token_id), use_base=False, progress=False)
    setup_s = time.perf_counter() - t
    ds = PairDataset(common.repeat_pairs(enc, total), ref.repeat(total, 1))
    loader = DataLoader(ds, batch_size=pairs, shuffle=False, collate_fn=lambda b: collate(b, tok.pad_token_id))
    ends: list[float] = []
    if lightning:
        import lightning as L

        from lutra.config import MethodConfig
        from lutra.training.module import PolicyModule

        if not share:  # PolicyModule has no switch for it: its module-level completion_logps is swapped
            import functools

            import lutra.training.module as M

            M.completion_logps = functools.partial(M.completion_logps, share_prefix=False)

        class Timer(L.Callback):
            def on_train_start(self, trainer, module):
                state["rss"], state["t0"] = mon.reset(), time.perf_counter()

            def on_train_batch_end(self, *a, **k):
                ends.append(time.perf_counter())

        state: dict = {}
        method = MethodConfig(name="codelutra", beta=BETA, nll_weight=1.0, nll_reduction="token_mean",
                              batch_size=pairs)
        trainer = L.Trainer(accelerator="cpu", precision="32-true", max_steps=total, gradient_clip_val=CLIP,
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0, callbacks=[Timer()])
        trainer.fit(PolicyModule(policy, method, lr=LR, total_steps=total), train_dataloaders=loader)
        return {**_summary(ends, state["t0"], warmup, mon, state["rss"]), "setup_s": setup_s}
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    policy.eval()  # dropout off, as PolicyModule does
    rss, t0 = mon.reset(), time.perf_counter()
    for batch in loader:
        logps, lengths = completion_logps(policy, batch, share_prefix=share)
        b = batch["index"].numel()
        loss, _ = dpo_nll_loss(logps[:b], logps[b:], batch["ref"][:, 0], batch["ref"][:, 1], lengths[:b], beta=BETA,
                               nll_reduction="token_mean")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
        ends.append(time.perf_counter())
    return {**_summary(ends, t0, warmup, mon, rss), "setup_s": setup_s}


def worker(spec: dict) -> dict:
    impl, kw = spec["impl"], {k: spec[k] for k in ("size", "pairs")}
    if impl == "agree":
        return agreement(**kw)
    kw.update(steps=spec["steps"], warmup=spec["warmup"])
    if impl.startswith("trl"):
        return run_trl(**kw, precompute=impl == "trl_precomputed")
    return run_lutra(**kw, share="noshare" not in impl, lightning="raw" not in impl)


def _spawn(spec: dict) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        r = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec), "--out", f.name],
                           capture_output=True, text=True)
        if r.returncode != 0:
            return {"error": (r.stderr or r.stdout)[-2000:]}
        return json.loads(Path(f.name).read_text())


def batch_shape(pairs: int) -> dict:
    from lutra.policy.logprobs import shared_prefix_len
    from lutra.training.data import collate

    tok, enc = _encoded(pairs)
    items = [{"i": i, "prompt": p, "chosen": c, "rejected": r}
             for i, (p, c, r) in enumerate(zip(enc.prompts, enc.chosen, enc.rejected))]
    batch = collate(items, tok.pad_token_id)
    real = int(batch["attention_mask"].sum())
    p = shared_prefix_len(batch["input_ids"], batch["loss_mask"])
    rows, width = batch["input_ids"].shape
    return {"pairs": pairs, "rows": rows, "width": width, "real_tokens": real,
            "completion_tokens": int(batch["loss_mask"].sum()), "shared_prefix": p,
            "tokens_with_shared_prefix": p + real - rows * p,
            "prompt_lens": sorted({len(x) for x in enc.prompts})}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="tiny,large")
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--large-steps", type=int, default=4, help="steps for the large model (seconds each)")
    ap.add_argument("--large-warmup", type=int, default=1)
    ap.add_argument("--worker")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.worker:
        Path(args.out).write_text(json.dumps(worker(json.loads(args.worker))))
        return
    common.setup()
    shape = batch_shape(args.pairs)
    print(f"batch: {shape}")
    res = {"machine": common.machine(), "batch": shape, "settings": {
        "pairs": args.pairs, "steps": args.steps, "warmup": args.warmup, "large_steps": args.large_steps,
        "large_warmup": args.large_warmup, "lr": LR, "beta": BETA, "clip": CLIP,
        "lora": common.LORA, "precision": "fp32", "models": {m: common.MODELS[m] for m in args.models.split(",")},
        "nll_reduction": "token_mean"}, "impls": IMPLS, "agreement": [], "timing": []}
    for size in args.models.split(","):
        a = _spawn({"impl": "agree", "size": size, "pairs": args.pairs})
        print(f"[{size}] agreement: {a}")
        res["agreement"].append(a)
        rows = []
        for impl in args.impls.split(","):
            steps, warmup = (args.large_steps, args.large_warmup) if size == "large" else (args.steps, args.warmup)
            r = _spawn({"impl": impl, "size": size, "pairs": args.pairs, "steps": steps, "warmup": warmup})
            r.update(model=size, impl=impl)
            rows.append(r)
            print(f"[{size}] {impl}: {r.get('step_s_median', r.get('error'))}", flush=True)
        base = {k: next((r for r in rows if r["impl"] == k and "error" not in r), None)
                for k in ("trl", "trl_precomputed")}
        for r in rows:
            for k, b in base.items():
                if b and "error" not in r:
                    r[f"time_vs_{k}"] = r["step_s_median"] / b["step_s_median"]
                    r[f"mem_vs_{k}"] = r["peak_rss_mb"] / b["peak_rss_mb"]
        res["timing"] += rows
    cols = ["model", "impl", "step_s_median", "time_vs_trl", "time_vs_trl_precomputed", "peak_rss_mb",
            "mem_vs_trl_precomputed", "step_mem_mb"]
    print(common.table(res["timing"], cols))
    print(f"wrote {common.write_result('train_step', res)}")


if __name__ == "__main__":
    main()
