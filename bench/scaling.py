"""How each stage of a round grows with train problems and samples per problem, and a Llama-3-8B round estimate.

    python bench/scaling.py [--problems 100,250,500,1000] [--samples 4,8,16] [--budget-s 900] [--model-path DIR]

Each point is one `python -m lutra.train rounds=1` (bench/round.py's run_round) on mini_sql with the tiny model on
this CPU; eval stays at --n-eval problems (evaluation does not depend on the train set). Problems are varied at 8
samples, samples at the smallest problem count. Above mini_sql's 600-problem train pool the pool is enlarged
(benchmark.options.n_train_pool). Points whose projected time would overrun --budget-s are skipped and said so.
Per stage, a least-squares line seconds = a + b * problems gives the marginal cost; the stage with the largest
share of round time at the largest size measured is the one that dominates.

The Llama-3-8B estimate (`estimate_8b`) combines this run's measured work per problem (sampled tokens per sample,
pairs per problem, execution seconds per sample) with GPU throughput ASSUMPTIONS (named in the output), at the
paper's sizes (500 train problems, M = 8, K = 4, four rounds). It is arithmetic, not a measurement.
Writes bench/results/scaling.json.

    python bench/scaling.py --ranks 1,2 [--n-train 64] [--n-eval 64] [--samples 4]

Data-parallel rounds (lutra.distributed): the same round in one process and under `torchrun --standalone
--nproc-per-node=R` on this machine, seconds per stage from each manifest, then `estimate_world`'s per-stage model
for 8 GPUs (RANK_ASSUMPTIONS) applied to the default command's per-stage seconds measured on one H200 (docs/gpu.md)
and to the 8B estimate above (bench/results/scaling.json). Ranks on this CPU share its cores, so the measured rows
compare one process with R ranks at equal cores (each rank cores / R threads), apart from one process on torch's
default threads. Writes bench/results/scaling_ranks.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402
from bench.round import STAGES, default_model, run_round  # noqa: E402

POOL = 600  # mini_sql's default train pool

# GPU assumptions for the 8B estimate (one H100 80GB SXM, bf16). Stated, not measured here.
GPU = {
    "name": "1x H100 80GB SXM, bf16",
    "peak_tflops": 989.0,          # dense bf16 tensor-core peak
    "train_mfu": 0.40,             # LoRA fwd+bwd with gradient checkpointing: typical 35-45% MFU
    "infer_mfu": 0.50,             # reference log-probs / prefill: forward only, large batches
    "hbm_tb_s": 3.35,              # HBM3 bandwidth
    "vllm_bw_eff": 0.70,           # fraction of bandwidth vLLM's decode reaches (paged attention, CUDA graphs)
    "vllm_concurrency": 256,       # sequences decoded together
    "hf_step_overhead_s": 0.030,   # eager PyTorch, 32 layers: per-decode-step launch/Python floor
    "hf_rows": 32,                 # docs/gpu.md: method.sample_batch_size=4 prompts x 8 samples on one 80 GB card
    "hf_steps_over_mean": 2.0,     # a static batch decodes until its longest row ends: steps ~ 2x the mean length
}
LLAMA3_8B = {"params": 8.03e9, "kv_bytes_per_token": 32 * 2 * 1024 * 2, "weight_bytes": 16.1e9}
PAPER = {"problems": 500, "samples": 8, "pairs_per_problem_max": 4, "rounds": 4, "eval_problems": 1034,
         "prompt_tokens": 1000, "gold_tokens": 60}  # Spider-like: ~1k-token schema prompts, SQL of ~60 tokens


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    n = len(xs)
    if n < 2:
        return 0.0, ys[0] / xs[0] if xs and xs[0] else 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(1e-12, sum((x - mx) ** 2 for x in xs))
    return my - b * mx, b


def gold_tokens_mean(model_path: str | None) -> float:
    """Mean mini_sql train gold length (+ EOS) in the model's tokenizer: the yardstick for sample lengths."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path) if model_path else common.tokenizer()
    golds = [p.gold for p in common.mini_sql()[1]["train"]]
    return sum(len(tok(g, add_special_tokens=False)["input_ids"]) + 1 for g in golds) / len(golds)


def estimate_8b(rows: list[dict], gold_tiny: float) -> dict:
    """Seconds per stage of one Llama-3-8B round on one GPU, sampling with vLLM vs with HF-style generate."""
    ref = max((r for r in rows if r["samples_per_problem"] == 8), key=lambda r: r["n_train"], default=rows[0])
    samples = PAPER["problems"] * PAPER["samples"]
    # measured on the tiny model: how long samples run relative to the gold, how many pairs a problem yields
    len_ratio = ref.get("sample_tokens_mean", gold_tiny) / gold_tiny
    pairs_per_problem = ref.get("pair/pairs", 0) / ref["n_train"] if ref.get("pair/pairs") else 2.0
    exec_per_sample = ref["execute_s"] / (ref["n_train"] * ref["samples_per_problem"])
    lc = PAPER["gold_tokens"] * len_ratio  # sampled completion tokens per sample
    lp = PAPER["prompt_tokens"]
    pairs = PAPER["problems"] * pairs_per_problem
    n = LLAMA3_8B["params"]
    train_flops = pairs * 2 * (lp + lc) * 6 * n  # fwd + checkpoint recompute + input-grad bwd = 6N per token
    ref_flops = pairs * 2 * (lp + lc) * 2 * n
    t = {}
    t["execute"] = samples * exec_per_sample
    t["ref_logps"] = ref_flops / (GPU["peak_tflops"] * 1e12 * GPU["infer_mfu"])
    t["train"] = train_flops / (GPU["peak_tflops"] * 1e12 * GPU["train_mfu"])
    # vLLM: prompt prefilled once per problem (n=8 shares it), decode bound by weights + KV bytes per step
    prefill = PAPER["problems"] * lp * 2 * n / (GPU["peak_tflops"] * 1e12 * GPU["infer_mfu"])
    conc = GPU["vllm_concurrency"]
    step_bytes = LLAMA3_8B["weight_bytes"] + conc * (lp + lc / 2) * LLAMA3_8B["kv_bytes_per_token"]
    step_s = step_bytes / (GPU["hbm_tb_s"] * 1e12 * GPU["vllm_bw_eff"])
    t["sample_vllm"] = prefill + samples * lc / conc * step_s
    # HF generate: every sample re-prefills its prompt; static batches of hf_rows decode until the longest row ends
    rows_ = GPU["hf_rows"]
    hf_step = max(GPU["hf_step_overhead_s"], (LLAMA3_8B["weight_bytes"] + rows_ * (lp + lc) *
                                              LLAMA3_8B["kv_bytes_per_token"]) / (GPU["hbm_tb_s"] * 1e12 * 0.6))
    hf_prefill = samples * lp * 2 * n / (GPU["peak_tflops"] * 1e12 * GPU["infer_mfu"])
    hf_decode = samples / rows_ * lc * GPU["hf_steps_over_mean"] * hf_step
    t["sample_hf"] = hf_prefill + hf_decode
    t["sample_lutra"] = prefill + hf_decode  # lutra.policy.sampling: same eager decode, prompt prefilled once per problem
    ev = PAPER["eval_problems"]
    ev_prefill = ev * lp * 2 * n / (GPU["peak_tflops"] * 1e12 * GPU["infer_mfu"])
    t["evaluate_vllm"] = ev_prefill + ev * PAPER["gold_tokens"] / conc * step_s
    t["evaluate_hf"] = ev_prefill + ev / 64 * PAPER["gold_tokens"] * GPU["hf_steps_over_mean"] * hf_step
    common_s = t["execute"] + t["ref_logps"] + t["train"]
    total = {"vllm": common_s + t["sample_vllm"] + t["evaluate_vllm"],
             "hf": common_s + t["sample_hf"] + t["evaluate_hf"]}
    return {"assumptions": {"gpu": GPU, "model": LLAMA3_8B, "workload": PAPER,
                            "from_this_run": {"sample_len_over_gold": len_ratio, "pairs_per_problem": pairs_per_problem,
                                              "execute_s_per_sample": exec_per_sample}},
            "derived": {"gold_tokens_tiny": gold_tiny, "sampled_tokens_per_sample": lc, "pairs": pairs, "train_tflop": train_flops / 1e12,
                        "vllm_decode_step_s": step_s, "hf_decode_step_s": hf_step},
            "seconds": {k: round(v, 1) for k, v in t.items()},
            "round_s": {k: round(v, 1) for k, v in total.items()},
            "four_rounds_h": {k: round(4 * v / 3600, 2) for k, v in total.items()}}


RANK_ASSUMPTIONS = {
    "sample, ref_logps, evaluate": "divide into their batches (sample: ceil(problems / method.sample_batch_size), "
                                   "ref_logps: ceil(pairs / method.batch_size), evaluate: ceil(n / eval_batch_size) "
                                   "per split); a rank decodes every R-th batch, all batches cost the same, so a stage "
                                   "takes ceil(batches / R) batch times; each rank has its own device",
    "execute": "CPU sandbox workers share one node's cores (each rank gets cores / ranks per node): divides by nodes",
    "pair": "rank 0 alone (milliseconds)",
    "train": "same steps (global batch method.batch_size); a step's compute divides by R in the share c of the step "
             "that is per-pair work, the rest is fixed; plus one ring all-reduce of the LoRA gradients per step",
    "gather": "samples, verdicts and predictions cross as pickles over gloo: megabytes a round, neglected",
}
H200_DEFAULT = {"sample": 5.0, "execute": 0.0, "pair": 0.0, "ref_logps": 1.5, "train": 12.0, "evaluate": 3.0}
"""The default command's round on one H200 (docs/gpu.md: sample 5 s, reference 1-2 s, train 7-17 s, evaluate 3 s)."""
H200_8B_STEP_S = {1: 0.66, 2: 1.28, 8: 5.0}
"""Measured LoRA step at Llama-3-8B's shape and 2048 + 512 tokens on one H200 (docs/gpu.md), pairs per step -> s."""
LORA_GRAD_BYTES = 41.9e6 * 4  # r16 on all seven projections of Llama-3-8B, fp32 gradients
NVLINK_BUS_GB_S = 300.0  # NCCL all-reduce bus bandwidth within an 8-GPU NVLink node (assumption)


def estimate_world(stage_s: dict, units: dict, ranks: int, *, nodes: int = 1, train_compute: float = 1.0,
                   steps: int = 0, allreduce_s: float = 0.0) -> dict:
    """Seconds per stage on `ranks` data-parallel ranks from one rank's (RANK_ASSUMPTIONS). units: batches per
    stage; train_compute: the per-pair share c of a one-rank step; allreduce_s: one gradient all-reduce."""
    out = {}
    for stage, t in stage_s.items():
        if stage in ("sample", "ref_logps", "evaluate"):
            u = max(1, units.get(stage, 1))
            out[stage] = t * math.ceil(u / ranks) / u
        elif stage == "execute":
            out[stage] = t / nodes
        elif stage == "train":
            out[stage] = t * (train_compute / ranks + 1 - train_compute) + steps * allreduce_s
        else:
            out[stage] = t
    return {k: round(v, 2) for k, v in out.items()}


def _ring_allreduce_s(ranks: int) -> float:
    return 2 * (ranks - 1) / ranks * LORA_GRAD_BYTES / (NVLINK_BUS_GB_S * 1e9)


def main_ranks(args) -> None:
    import os

    ranks = [int(x) for x in args.ranks.split(",")]
    cores = len(os.sched_getaffinity(0))
    # one process on one thread, then every rank count with cores / ranks threads a rank (1 process: every core;
    # torchrun's own default is 1 a rank): the data-parallel gain at one thread a rank, and at equal cores
    plan = [(1, 1)] + [(r, max(1, cores // r)) for r in ranks if (r, max(1, cores // r)) != (1, 1)]
    rows, keys = {}, []
    for r, threads in plan:
        launcher = () if r == 1 else ("-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={r}")
        extra = ("method.sample_batch_size=8", "method.eval_batch_size=16", "benchmark.held_out_split=null")
        before = os.environ.get("OMP_NUM_THREADS")
        if threads:
            os.environ["OMP_NUM_THREADS"] = str(threads)
        else:
            os.environ.pop("OMP_NUM_THREADS", None)
        try:
            row = run_round(args.n_train, args.n_eval, args.samples, None, extra=extra, launcher=launcher)
        finally:
            os.environ.pop("OMP_NUM_THREADS", None)
            if before is not None:
                os.environ["OMP_NUM_THREADS"] = before
        key = f"{r}x{threads or 'default'}"
        row.update(ranks=r, threads_per_rank=threads or "default")
        rows[key] = row
        keys.append(key)
        print(f"{r} rank(s) x {threads or 'default'} thread(s): " + " ".join(f"{s}={row[f'{s}_s']:.1f}s" for s in STAGES)
              + f" round={row['round1_s']:.1f}s wall={row['wall_s']:.0f}s", flush=True)
    # the default command on one H200: 600 problems / 32, 500 + 100 eval / 64, ~700 pairs / 8; a tiny-model step is
    # launch-bound on a GPU (c = 0: a 1-pair step costs what an 8-pair one does)
    h200_units = {"sample": 19, "evaluate": 8 + 2, "ref_logps": 88}
    default_8 = estimate_world(H200_DEFAULT, h200_units, 8, train_compute=0.0)
    # Llama-3-8B at the paper's sizes: the per-pair share of a step from the measured 1- and 8-pair steps
    # step(b) = fixed + b * per_pair: c = 8 * per_pair / step(8)
    c = 8 * (H200_8B_STEP_S[8] - H200_8B_STEP_S[1]) / 7 / H200_8B_STEP_S[8]
    est = json.loads((common.RESULTS / "scaling.json").read_text())["estimate_llama3_8b"]  # `python bench/scaling.py`
    e = est["seconds"]
    paper_1 = {"sample": e["sample_lutra"], "execute": e["execute"], "pair": 0.0, "ref_logps": e["ref_logps"],
               "train": e["train"], "evaluate": e["evaluate_hf"]}
    pairs = est["derived"]["pairs"]
    paper_units = {"sample": math.ceil(PAPER["problems"] / 4), "evaluate": math.ceil(PAPER["eval_problems"] / 64),
                   "ref_logps": math.ceil(pairs / 8)}
    paper_8 = estimate_world(paper_1, paper_units, 8, train_compute=c, steps=math.ceil(pairs / 8),
                             allreduce_s=_ring_allreduce_s(8))
    table = [{"case": f"this CPU, measured, {rows[k]['threads_per_rank']} thread(s) a rank", "ranks": rows[k]["ranks"],
              **{s: rows[k][f"{s}_s"] for s in STAGES}, "round": rows[k]["round1_s"]} for k in keys]
    for name, one_s, eight in (("default command, 1 H200 (measured)", H200_DEFAULT, None),
                               ("default command, 8 GPUs (est.)", None, default_8),
                               ("Llama-3-8B paper round, 1 GPU (est.)", paper_1, None),
                               ("Llama-3-8B paper round, 8 GPUs (est.)", None, paper_8)):
        d = eight or one_s
        table.append({"case": name, "ranks": 8 if eight else 1, **d, "round": round(sum(d.values()), 1)})
    print(common.table(table, ["case", "ranks", *STAGES, "round"], "{:.1f}"))
    print(f"per-pair share of an 8B step c = {c:.3f}; all-reduce of the LoRA gradients on 8 GPUs: "
          f"{1000 * _ring_allreduce_s(8):.2f} ms a step")
    path = common.write_result("scaling_ranks", {
        "machine": common.machine(), "rows": rows, "table": table,
        "assumptions": {**RANK_ASSUMPTIONS, "h200_default_round_s": H200_DEFAULT, "h200_8b_step_s": H200_8B_STEP_S,
                        "train_compute_8b": c, "nvlink_bus_gb_s": NVLINK_BUS_GB_S, "lora_grad_bytes": LORA_GRAD_BYTES}})
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", default=None, help="data-parallel rounds on these rank counts, e.g. 1,2")
    ap.add_argument("--n-train", type=int, default=64)
    ap.add_argument("--problems", default="100,250,500,1000")
    ap.add_argument("--samples", default="4,8,16")
    ap.add_argument("--n-eval", type=int, default=100)
    ap.add_argument("--budget-s", type=float, default=900.0)
    ap.add_argument("--model-path", default=default_model())
    args = ap.parse_args()
    if args.ranks:
        args.samples = int(args.samples.split(",")[0])
        return main_ranks(args)
    problems = [int(x) for x in args.problems.split(",")]
    sample_grid = [int(x) for x in args.samples.split(",")]
    plan = [(p, 8) for p in problems] + [(problems[0], m) for m in sample_grid if m != 8]
    plan.sort(key=lambda x: x[0] * x[1])  # cheapest first, so the fit can project the rest
    t_start, rows, skipped = time.perf_counter(), [], []
    for p, m in plan:
        if rows:  # project this point's wall time from the per-(problem x sample) rate measured so far
            a, b = fit([r["n_train"] * r["samples_per_problem"] for r in rows], [r["wall_s"] for r in rows])
            projected = a + b * p * m if len(rows) > 1 else rows[0]["wall_s"] * p * m / (rows[0]["n_train"] *
                                                                                       rows[0]["samples_per_problem"])
            if time.perf_counter() - t_start + projected > args.budget_s:
                skipped.append({"n_train": p, "samples": m, "projected_s": round(projected)})
                print(f"skip n_train={p} samples={m}: projected {projected:.0f} s overruns the budget", flush=True)
                continue
        extra = (f"+benchmark.options.n_train_pool={p}",) if p > POOL else ()
        try:
            r = run_round(p, args.n_eval, m, args.model_path, extra=extra)
        except RuntimeError as e:
            skipped.append({"n_train": p, "samples": m, "error": str(e)[-1500:]})
            print(f"n_train={p} samples={m} failed: {str(e)[-500:]}", flush=True)
            continue
        rows.append(r)
        print(f"n_train={p} samples={m}: " + " ".join(f"{s}={r[f'{s}_s']:.1f}s" for s in STAGES)
              + f" wall={r['wall_s']:.0f}s", flush=True)
    by_p = sorted((r for r in rows if r["samples_per_problem"] == 8), key=lambda r: r["n_train"])
    fits = {}
    for s in STAGES:
        if len(by_p) >= 2:
            a, b = fit([r["n_train"] for r in by_p], [r[f"{s}_s"] for r in by_p])
            fits[s] = {"fixed_s": a, "s_per_problem": b}
    top = by_p[-1] if by_p else rows[-1]
    shares = {s: top[f"{s}_s"] / top["round1_s"] for s in STAGES}
    est = estimate_8b(rows, gold_tokens_mean(args.model_path))
    cols = ["n_train", "samples_per_problem"] + [f"{s}_s" for s in STAGES] + ["round1_s", "pair/pairs",
                                                                             "sample_tokens_mean"]
    print(common.table(sorted(rows, key=lambda r: (r["samples_per_problem"], r["n_train"])), cols, "{:.1f}"))
    print("marginal seconds per train problem (8 samples):",
          {s: round(f["s_per_problem"], 4) for s, f in fits.items()})
    print(f"shares at n_train={top['n_train']}:", {s: round(v, 3) for s, v in shares.items()},
          "-> dominates:", max(shares, key=shares.get))
    print("Llama-3-8B round estimate (s):", est["seconds"], "round:", est["round_s"])
    path = common.write_result("scaling", {
        "machine": common.machine(), "model_path": args.model_path, "rows": rows, "skipped": skipped,
        "fits": fits, "shares_at_largest": shares, "dominant_stage": max(shares, key=shares.get),
        "estimate_llama3_8b": est})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
