"""GPU memory and speed of one DPO+NLL step at a real model's shape: lutra vs TRL's DPOTrainer, same batch.

    python bench/gpu_memory.py [--shape llama3_8b] [--pairs 1,2,8] [--trl-pairs 2,8] [--steps 3]
    # writes bench/results/gpu_memory.json (or --out)

docs/gpu.md *computes* the memory of LoRA training on Llama-3-8B from tensor shapes. This measures it: a randomly
initialised model of conf/model/<shape>.yaml's architecture in the config's dtype (no hub download: the weights'
values do not change memory or speed), LoRA and gradient checkpointing as the model config sets them, pairs at
the config's maximum lengths (max_prompt_len prompt tokens, max_completion_len tokens for chosen and rejected:
the worst case the loop admits), random token ids.

- lutra: the loop's own training path: `reference_logps` once (no grad), then `PolicyModule` +
  `PreferenceDataModule` under a Lightning Trainer built by `lutra.training.strategies.trainer_kwargs` from
  `conf/trainer/gpu.yaml` (bf16-mixed).
- trl: `DPOTrainer(loss_type=["sigmoid", "sft"], precompute_ref_log_probs=True, bf16=True,
  gradient_checkpointing=True)` with the same peft LoRA config, fed the same token ids.

Each implementation runs in its own process, so torch.cuda.max_memory_allocated is that implementation's peak.
"step peak" is the peak while training, everything counted: weights, LoRA, optimizer state and activations.
Time per step is the median over `--steps` steps after one warm-up step.
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

GB = 1e9
# docs/gpu.md's computed totals for llama3_8b at 2048 + 512 tokens (LoRA, bf16 base, precomputed reference)
PREDICTED_GB = {1: 22.7, 2: 27.7, 8: 57.6}


def compose(shape: str, overrides: list[str] = ()):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    from lutra.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(common.ROOT / "conf"), version_base="1.3"):
        return hcompose(config_name="train", overrides=[f"model={shape}", "trainer=gpu", *overrides])


def build_model(shape: str, device: str):
    """Random-init model of `shape`'s architecture (a LlamaConfig from known shapes), in the config's dtype."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shapes = {
        "llama3_8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                          num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0,
                          max_position_embeddings=8192, tie_word_embeddings=False),
        # a shape that runs anywhere, for checking this script on a CPU
        "small": dict(vocab_size=4096, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=4096,
                      tie_word_embeddings=False),
    }
    cfg = compose("llama3_8b" if shape == "small" else shape)
    mcfg = cfg.model
    dtype = getattr(torch, mcfg.dtype)
    hf = LlamaConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0, attention_dropout=0.0, **shapes[shape])
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(hf, dtype=dtype)
    model.eval()
    if mcfg.gradient_checkpointing:  # as lutra.policy.models.load_base does
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    return model, cfg, hf.vocab_size


def encoded(pairs: int, prompt_len: int, completion_len: int, vocab: int, seed: int = 0):
    import torch

    from lutra.training.data import EncodedPairs

    g = torch.Generator().manual_seed(seed)

    def ids(n):
        return torch.randint(3, vocab, (n,), generator=g).tolist()

    return EncodedPairs(prompts=[[1] + ids(prompt_len - 1) for _ in range(pairs)],
                        chosen=[ids(completion_len - 1) + [2] for _ in range(pairs)],
                        rejected=[ids(completion_len - 1) + [2] for _ in range(pairs)], index=list(range(pairs)))


def run_lutra(shape: str, pairs_list: list[int], steps: int, device: str, lengths=None) -> list[dict]:
    import lightning as L
    import torch
    from omegaconf import OmegaConf

    from lutra.config import MethodConfig, TrainerConfig
    from lutra.policy.logprobs import reference_logps
    from lutra.policy.models import new_adapter
    from lutra.training.data import PreferenceDataModule, ordered_batches
    from lutra.training.module import PolicyModule
    from lutra.training.strategies import trainer_kwargs

    cuda = device == "cuda"
    t = time.perf_counter()
    model, cfg, vocab = build_model(shape, device)
    build_s = time.perf_counter() - t
    policy = new_adapter(model, cfg.model, 0)
    tcfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainerConfig), cfg.trainer))
    tcfg.enable_progress_bar = False
    if not cuda:
        tcfg.accelerator, tcfg.precision = "cpu", "32-true"
    plen, clen = lengths or (cfg.model.max_prompt_len, cfg.model.max_completion_len)
    weights = torch.cuda.memory_allocated() / GB if cuda else 0.0
    rows = []
    for pairs in pairs_list:
        enc = encoded(pairs, plen, clen, vocab)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        policy.to(device)  # the previous fit's teardown left it on the CPU
        t = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            ref = reference_logps(policy, ordered_batches(enc, pairs, 0), use_base=False, progress=False)
        ref_s = time.perf_counter() - t
        ref_peak = torch.cuda.max_memory_allocated() / GB if cuda else 0.0
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        ends: list[float] = []

        class Timer(L.Callback):
            def on_train_batch_end(self, *a, _ends=ends, **k):
                if cuda:
                    torch.cuda.synchronize()
                _ends.append(time.perf_counter())

        total = steps + 1
        method = MethodConfig(name="codelutra", batch_size=pairs, nll_reduction="token_mean")
        dm = PreferenceDataModule(common.repeat_pairs(enc, total), ref.repeat(total, 1), pairs, 0, seed=0)
        trainer = L.Trainer(**trainer_kwargs(tcfg), max_steps=total, logger=False, enable_checkpointing=False,
                            enable_model_summary=False, num_sanity_val_steps=0, callbacks=[Timer()])
        t0 = time.perf_counter()
        trainer.fit(PolicyModule(policy, method, lr=1e-5, total_steps=total), datamodule=dm)
        gaps = [b - a for a, b in zip([t0] + ends[:-1], ends)][1:]
        step_s = statistics.median(gaps)
        rows.append({"impl": "lutra", "pairs": pairs, "prompt_len": plen, "completion_len": clen,
                     "weights_gb": weights, "ref_peak_gb": ref_peak, "ref_s": ref_s,
                     "step_peak_gb": torch.cuda.max_memory_allocated() / GB if cuda else 0.0,
                     "step_reserved_gb": torch.cuda.max_memory_reserved() / GB if cuda else 0.0,
                     "step_s": step_s, "tokens_per_s": pairs * 2 * (plen + clen) / step_s,
                     "loss": float(trainer.callback_metrics["train/loss"]), "build_s": build_s,
                     "predicted_total_gb": PREDICTED_GB.get(pairs) if shape == "llama3_8b" else None})
        print(json.dumps(rows[-1]), flush=True)
        del trainer, dm
    return rows


def run_trl(shape: str, pairs_list: list[int], steps: int, device: str, lengths=None) -> list[dict]:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from lutra.policy.models import lora_config

    cuda = device == "cuda"
    model, cfg, vocab = build_model(shape, device)
    model.gradient_checkpointing_disable()  # TRL turns it on itself (gradient_checkpointing=True below)
    plen, clen = lengths or (cfg.model.max_prompt_len, cfg.model.max_completion_len)
    tok = common.tokenizer()  # only its pad id is used; the ids below are random
    weights = torch.cuda.memory_allocated() / GB if cuda else 0.0

    class PreTokenized(DPOTrainer):
        def _prepare_dataset(self, dataset, *args, **kwargs):
            return dataset

    rows = []
    for pairs in pairs_list:
        enc = common.repeat_pairs(encoded(pairs, plen, clen, vocab), steps + 1)
        ends: list[float] = []

        class Timer(TrainerCallback):
            def on_step_end(self, args, st, control, _ends=ends, **kw):
                if cuda:
                    torch.cuda.synchronize()
                _ends.append(time.perf_counter())

        with tempfile.TemporaryDirectory() as tmp:
            args = DPOConfig(output_dir=tmp, per_device_train_batch_size=pairs, max_steps=steps + 1,
                             learning_rate=1e-5, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                             optim="adamw_torch", max_grad_norm=1.0, beta=0.1, loss_type=["sigmoid", "sft"],
                             loss_weights=[1.0, 1.0], precompute_ref_log_probs=True,
                             precompute_ref_batch_size=pairs, max_length=None, gradient_checkpointing=True,
                             bf16=cuda, use_cpu=not cuda, report_to=[], save_strategy="no", disable_tqdm=True,
                             dataloader_num_workers=0, train_sampling_strategy="sequential", seed=0)
            ds = Dataset.from_dict({"prompt_ids": enc.prompts, "chosen_ids": enc.chosen,
                                    "rejected_ids": enc.rejected})
            trainer = PreTokenized(model=model, args=args, train_dataset=ds, processing_class=tok,
                                   peft_config=lora_config(cfg.model), callbacks=[Timer()])
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            trainer.train()
        gaps = [b - a for a, b in zip([t0] + ends[:-1], ends)][1:]
        step_s = statistics.median(gaps)
        rows.append({"impl": "trl_precomputed", "pairs": pairs, "prompt_len": plen, "completion_len": clen,
                     "weights_gb": weights,
                     "step_peak_gb": torch.cuda.max_memory_allocated() / GB if cuda else 0.0,
                     "step_reserved_gb": torch.cuda.max_memory_reserved() / GB if cuda else 0.0,
                     "step_s": step_s, "tokens_per_s": pairs * 2 * (plen + clen) / step_s,
                     "note": "peak includes TRL's reference precompute pass"})
        print(json.dumps(rows[-1]), flush=True)
        model = trainer.model.unload() if hasattr(trainer.model, "unload") else trainer.model
        del trainer
    return rows


def _spawn(spec: dict, timeout: float) -> list[dict]:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        try:
            r = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec), "--out", f.name],
                               timeout=timeout)
        except subprocess.TimeoutExpired:
            return [{"impl": spec["impl"], "error": f"timed out after {timeout:.0f} s"}]
        if r.returncode != 0:
            return [{"impl": spec["impl"], "error": f"exit {r.returncode}"}]
        return json.loads(Path(f.name).read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="llama3_8b", help="llama3_8b, or small (to check the script on a CPU)")
    ap.add_argument("--pairs", default="1,2,8", help="pairs per micro-batch for lutra")
    ap.add_argument("--trl-pairs", default="2,8", help="pairs per micro-batch for TRL ('' to skip TRL)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    ap.add_argument("--lengths", default=None, help="PROMPT,COMPLETION tokens (default: the model config's maxima)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--worker-timeout", type=float, default=600, help="seconds per implementation's process")
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker")
    args = ap.parse_args()
    lengths = tuple(int(x) for x in args.lengths.split(",")) if args.lengths else None
    if args.worker:
        spec = json.loads(args.worker)
        fn = run_lutra if spec["impl"] == "lutra" else run_trl
        rows = fn(spec["shape"], spec["pairs"], spec["steps"], spec["device"], spec["lengths"])
        Path(args.out).write_text(json.dumps(rows))
        return
    import torch

    res = {"machine": common.machine(), "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
           "shape": args.shape, "rows": []}

    def write() -> None:
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=1))
        else:
            common.write_result("gpu_memory", res)

    where = Path(args.out) if args.out else common.RESULTS / "gpu_memory.json"
    for impl, pl in (("lutra", args.pairs), ("trl", args.trl_pairs)):
        if pl:
            res["rows"] += _spawn({"impl": impl, "shape": args.shape, "pairs": [int(x) for x in pl.split(",")],
                                   "steps": args.steps, "device": args.device, "lengths": lengths},
                                  args.worker_timeout)
            write()  # after each implementation: a later one that hangs or is killed loses only its own rows
    print(common.table(res["rows"], ["impl", "pairs", "prompt_len", "weights_gb", "ref_peak_gb", "step_peak_gb",
                                     "step_reserved_gb", "predicted_total_gb", "step_s", "tokens_per_s", "error"]))
    print(f"wrote {where}")


if __name__ == "__main__":
    main()
