"""N samples per prompt on CPU: lutra.policy.sampling.generate (prompt KV computed once, repeated N times, finished rows
pruned) vs HF `model.generate(num_return_sequences=N, do_sample=True, top_k=0)` (every prompt copied N times
before the prefill), same prompts, same sampling settings (temperature 0.8, top-p 0.95: the codelutra config).

    python bench/sampling.py [--n 1,4,8,16] [--prompts 8] [--max-new 64] [--model random --model PATH]

`random`: the tiny shape, randomly initialised (it almost never emits EOS, so every row decodes max-new tokens:
pure decoding throughput). PATH: a saved model directory (e.g. a built outputs/models/tiny-mini_sql-*), whose
samples stop at EOS at realistic lengths. Prompts: the first mini_sql train problems (schema prompts, ~210
tokens). Tokens/s = generated tokens (EOS excluded) / wall seconds of the whole call, decoding to text included.
Writes bench/results/sampling.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402

TEMPERATURE, TOP_P = 0.8, 0.95


def _load(which: str):
    if which == "random":
        return common.llama("tiny"), common.tokenizer()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(which).eval(), AutoTokenizer.from_pretrained(which)


def run_lutra(model, tok, prompts, n, max_new) -> tuple[float, int]:
    import lutra.policy.sampling as S

    counted = [0]
    orig = S._generate_batch

    def counting(*a, **k):  # the public generate() calls this per batch; count the tokens it returns
        toks, fin = orig(*a, **k)
        counted[0] += sum(len(t) for t in toks)
        return toks, fin

    S._generate_batch = counting
    try:
        t = time.perf_counter()
        S.generate(model, tok, prompts, n=n, temperature=TEMPERATURE, top_p=TOP_P, max_new_tokens=max_new,
                   batch_size=len(prompts), seed=0, progress=False)
        return time.perf_counter() - t, counted[0]
    finally:
        S._generate_batch = orig


def run_hf(model, tok, prompts, n, max_new) -> tuple[float, int]:
    import torch

    from lutra.policy.prompts import encode_prompt

    ids = [encode_prompt(tok, p) for p in prompts]  # the same prompt ids lutra feeds
    width = max(map(len, ids))
    pad = tok.pad_token_id
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for i, p in enumerate(ids):  # left padding, as generation needs
        input_ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    torch.manual_seed(0)
    t = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=True, top_k=0, top_p=TOP_P,
                             temperature=TEMPERATURE, max_new_tokens=max_new, num_return_sequences=n,
                             pad_token_id=pad, eos_token_id=tok.eos_token_id)
    gen = out[:, width:]
    tok.batch_decode(gen, skip_special_tokens=True)
    seconds = time.perf_counter() - t
    done = (gen == tok.eos_token_id).int().cumsum(1) > 0  # EOS and everything after it (padding)
    return seconds, int((~done).sum())


def lora_rows(model, tok, prompts, args, which, plen) -> list[dict]:
    """The loop samples from a peft policy (LoRA r16 on every projection, unmerged). Measured: that policy as is,
    the same with its adapter merged into a copy (bench.common.merged_generate), and HF generate on it."""
    from peft import get_peft_model

    if not args.lora_n:
        return []
    policy = get_peft_model(model, common.lora_config()).eval()
    merged = common.merged_generate(lambda m, *a, **k: run_lutra(m, *a, **k))
    concat = common.concat_cache_generate(run_lutra)
    out = []
    for n in map(int, args.lora_n.split(",")):
        row = {"model": ("random tiny" if which == "random" else Path(which).name) + " + LoRA",
               "prompt_tokens": round(plen), "prompts": len(prompts), "n": n}
        for impl, fn in (("lutra", run_lutra), ("lutra_merged", merged), ("lutra_concat", concat), ("hf", run_hf)):
            s, k = min((fn(policy, tok, prompts, n, args.max_new) for _ in range(args.repeats)),
                       key=lambda r: r[0] / max(1, r[1]))
            row.update({f"{impl}_s": s, f"{impl}_tokens": k, f"{impl}_tok_s": k / s})
        row["speedup"] = row["lutra_tok_s"] / row["hf_tok_s"]
        row["merged_speedup"] = row["lutra_merged_tok_s"] / row["lutra_tok_s"]
        row["growcache_speedup"] = row["lutra_tok_s"] / row["lutra_concat_tok_s"]
        import lutra.policy.sampling as S

        kw = dict(n=n, temperature=TEMPERATURE, top_p=TOP_P, max_new_tokens=args.max_new, seed=0, progress=False)
        row["growcache_same_texts"] = (S.generate(policy, tok, prompts, **kw)
                                       == common.concat_cache_generate(S.generate)(policy, tok, prompts, **kw))
        out.append(row)
        print(common.table([row], list(row)), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", default="1,4,8,16")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--model", action="append", default=None)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--lora-n", default="8", help="N values for the LoRA variants ('' = none)")
    ap.add_argument("--n-plain", default=None, help="N values without LoRA (default: --n; '' = none)")
    ap.add_argument("--out", default="sampling", help="results file name under bench/results/")
    args = ap.parse_args()
    common.setup()
    _, splits = common.mini_sql()
    rows = []
    for which in args.model or ["random"]:
        model, tok = _load(which)
        from lutra import benchmarks
        from lutra.policy.prompts import encode_prompt, format_prompt

        cfg, _ = common.mini_sql()
        prompts = [format_prompt(tok, benchmarks.user_message(cfg, p), common.model_cfg())
                   for p in splits["train"][: args.prompts]]
        plen = sum(len(encode_prompt(tok, p)) for p in prompts) / len(prompts)
        run_lutra(model, tok, prompts[:2], 2, 4)  # warm-up: first-call allocations, lazy imports
        run_hf(model, tok, prompts[:2], 2, 4)
        plain = args.n if args.n_plain is None else args.n_plain
        for n in [int(x) for x in plain.split(",") if x]:
            best = {}
            for impl, fn in (("lutra", run_lutra), ("hf", run_hf)):
                runs = [fn(model, tok, prompts, n, args.max_new) for _ in range(args.repeats)]
                best[impl] = min(runs, key=lambda r: r[0] / max(1, r[1]))
            row = {"model": "random tiny" if which == "random" else Path(which).name, "prompt_tokens": round(plen),
                   "prompts": len(prompts), "n": n, "lutra_s": best["lutra"][0], "lutra_tokens": best["lutra"][1],
                   "lutra_tok_s": best["lutra"][1] / best["lutra"][0], "hf_s": best["hf"][0],
                   "hf_tokens": best["hf"][1], "hf_tok_s": best["hf"][1] / best["hf"][0]}
            row["speedup"] = row["lutra_tok_s"] / row["hf_tok_s"]
            rows.append(row)
            print(common.table([row], list(row)), flush=True)
        rows += lora_rows(model, tok, prompts, args, which, plen)
    print(common.table(rows, ["model", "prompt_tokens", "n", "lutra_tok_s", "hf_tok_s", "speedup", "lutra_tokens",
                              "hf_tokens", "lutra_merged_tok_s", "merged_speedup", "lutra_concat_tok_s",
                              "growcache_speedup"]))
    path = common.write_result(args.out, {
        "machine": common.machine(), "settings": {"temperature": TEMPERATURE, "top_p": TOP_P, "top_k_hf": 0,
                                                  "max_new_tokens": args.max_new, "prompts": args.prompts,
                                                  "repeats": args.repeats}, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
