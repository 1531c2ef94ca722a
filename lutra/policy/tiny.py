"""Building `model=tiny`: a small Llama trained here (`ensure_tiny`, called by the loop and evaluate before anything
loads it), then saved and loaded like any hub model (`lutra.policy.models`).

1. Tokenizer: byte-level BPE (the `tokenizers` library) trained on the benchmark's own text. Pre-tokens are
   words, whole numbers and single punctuation marks, each carrying the space before it (`PRE_TOKENS`), so a
   number (`than 30` / `> 30`) and a quoted text value (`is "France"` / `= 'France'`) are the same token
   sequence in the question and in the SQL literal: copying values stays learnable. A normalizer puts a space
   after a qualifier's dot (`T1.credits` -> `T1. credits`, `QUALIFIER_DOT`), so a column is the same token in the
   question, the schema and a qualified reference: copying column names into joins stays learnable too.
   Saved as a `PreTrainedTokenizerFast` with BOS/EOS/PAD and a chat template.
2. Model: `LlamaForCausalLM` from a `LlamaConfig`, dropout 0, tied embeddings.
3. Warm start: a short supervised fine-tuning (all weights) on the benchmark's `warmup` split, gold programs
   disjoint from train and eval, with a language-model loss on prompt and program, program tokens weighted.
   The benchmark's `rare` templates appear at `tiny.rare_templates_keep` times a common template's count, so
   the base is capable (SQL syntax, schema reading, value copying) but weak on some of the target task's own
   patterns: the paper's regime, where refinement has something to learn.
The recipe's default (and the smoke preset's) is not built at all: lutra ships that build (`lutra.policy.shipped`,
lutra/bases/), since another CPU would build another base. The directory is written atomically; `lutra_build.json` records the recipe, data counts, the warm-start loss
curve, its arithmetic and CPU path, and a digest of the weights (`weights_sha256`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
import types
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lutra import benchmarks
from lutra.artifacts import atomic_dir, write_json
from lutra.policy import shipped
from lutra.policy.device import fast_bf16
from lutra.policy.logprobs import body_and_head, prefix_forward
from lutra.policy.prompts import encode_completion, encode_prompt, format_prompt
from lutra.policy.tiny_cache import cache_key, recipe_fingerprint, tiny_dir, tiny_seed
from lutra.training.data import BucketSampler, bucket_key, collate

log = logging.getLogger(__name__)

PRE_TOKENS = r" ?[A-Za-z_]+| ?[0-9]+(?:\.[0-9]+)?| ?[^\sA-Za-z0-9_]|\s+"
"""GPT-2-like pre-tokens: a word, a whole number (decimals included) or one punctuation mark, each with the space
before it; whitespace runs alone. A space joins the next token (about 40% fewer tokens than isolated spaces), and
a number or a quoted value is the same tokens in a question (`than 37000`, `"New York"`) and in SQL (`> 37000`,
`'New York'`). A number is one pre-token, so BPE merges the numbers the databases use into single tokens (96% of
the numbers in eval questions, measured): copying `37000` is one token to copy, where single digits gave a 3M
model digit slips (`3707`, `BETWEEN 1987 AND 1974`) on ~8% of eval problems."""
QUALIFIER_DOT = r"(?<=[A-Za-z0-9_])\.(?=[A-Za-z_])"
"""A dot between a table (alias) and a column, not a decimal point: the normalizer writes it `. ` (`T1. credits`,
valid SQL with the same meaning). Without it BPE gives `T1.credits` a bare `credits` token while the question and
the CREATE TABLE statement have ` credits` (with its space): two unrelated embeddings per column, a mapping the
3M model learned for only some columns. Measured on the mini_sql v3 base (600 warm-start steps, seed 0): JOIN with
a filter 57.6% EX, and every wrong answer of the 8 inspected had the right join and a wrong condition column
(`T1.capacity` for "credits"); the same columns unqualified (`WHERE credits > 2`) were right on 97-100%. Decoding
gives the spaced form back, so generated programs read `T1. credits`."""
SPECIAL = ["<|pad|>", "<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import (  # start-up: only a tiny build trains a tokenizer
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast  # start-up: only a tiny build needs it

    tk = Tokenizer(models.BPE())
    tk.normalizer = normalizers.Replace(Regex(QUALIFIER_DOT), ". ")
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRE_TOKENS), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(texts, trainer)
    bos = tk.token_to_id("<|bos|>")
    tk.post_processor = processors.TemplateProcessing(single="<|bos|> $A", pair="<|bos|> $A $B",
                                                      special_tokens=[("<|bos|>", bos)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|bos|>", eos_token="<|eos|>",
                                  pad_token="<|pad|>", clean_up_tokenization_spaces=False)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _warmup_problems(bench_cfg, keep_rare: float, seed: int) -> list:
    """The warm-up set: every common problem, and each rare template at `keep_rare` times the mean count of a
    common template. Some rare templates have few distinct warm-up problems (HAVING, ORDER BY ... LIMIT and nested
    AVG run out of slot combinations near 100), so a fraction of their own count would leave them ~50x rarer than
    a common template, not 4x; those are repeated (each at most ceil(target / count) times) to reach the share."""
    rng = random.Random(seed)
    common, rare_by_template = [], {}
    for p in benchmarks.load(bench_cfg, "warmup"):
        if p.meta.get("rare"):
            rare_by_template.setdefault(p.meta.get("template", ""), []).append(p)
        else:
            common.append(p)
    n_common_templates = len({p.meta.get("template", "") for p in common}) or 1
    target = round(keep_rare * len(common) / n_common_templates)
    rare = []
    for name in sorted(rare_by_template):
        pool = rare_by_template[name]
        rare += rng.sample(pool, target) if target < len(pool) else (pool * -(-target // len(pool)))[:target]
    return common + rare  # the warm start draws its batches with a seeded BucketSampler, not in this order


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits  # fp64 stays fp64


def _rms_norm(self, hidden: torch.Tensor) -> torch.Tensor:
    return self.weight * (hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def _rope(self, x: torch.Tensor, position_ids: torch.Tensor):
    freqs = position_ids[..., None].to(x.dtype) * self.inv_freq.to(x.dtype)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling


@contextlib.contextmanager
def float64_llama(model):
    """The model in float64 for the block, back in float32 after it. transformers' Llama computes RMSNorm and the
    rotary angles in float32 whatever the weights' dtype (an upcast for bf16, a downcast here), so for the block
    those modules compute in the weights' dtype; the rotary frequencies are recomputed in float64 too (a
    non-persistent buffer: a later from_pretrained computes its own). Without this every layer would round to
    float32 on the way, and float32 results differ between SIMD paths (the point of the float64 build)."""
    patched = []
    model.to(torch.float64)
    for m in model.modules():
        name = type(m).__name__
        if name.endswith("RMSNorm"):
            m.forward = types.MethodType(_rms_norm, m)
            patched.append(m)
        elif name.endswith("RotaryEmbedding"):
            rope = getattr(model.config, "rope_parameters", None) or {}
            dim, theta = m.inv_freq.numel() * 2, rope.get("rope_theta", getattr(model.config, "rope_theta", None))
            inv = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
            m.register_buffer("inv_freq", inv, persistent=False)
            m.forward = types.MethodType(_rope, m)
            patched.append(m)
    try:
        yield model
    finally:
        for m in patched:
            del m.forward  # the class's own forward again
        model.to(torch.float32)
        for m in patched:
            if hasattr(m, "original_inv_freq"):
                m.register_buffer("inv_freq", m.original_inv_freq.float(), persistent=False)


def resolved_dtype(tiny_cfg) -> str:
    """`auto`: bf16 autocast on a CPU with native bf16 (AVX512-BF16 / AMX: 1.7x faster than float32 there), else
    float32 (emulated bf16 took 5.9x float32's time on the AVX2 path). Measured: docs/results/bases_and_warm_start.md."""
    if tiny_cfg.warm_start_dtype != "auto":
        return tiny_cfg.warm_start_dtype
    return "bfloat16" if fast_bf16("cpu") else "float32"


def lm_loss(model, batch: dict, pad_id: int, program_weight: float = 1.0) -> torch.Tensor:
    """Language-model loss on every real token (schema, question and program), the prompt prefix that all rows
    share (a database's schema) run once and counted once per row; a program token weighs `program_weight`
    prompt tokens (a weighted mean over tokens).

    Predicting the question's table, column and value words from the schema above them exercises the reading
    the programs need, but the prompt outnumbers the program ~6:1 in tokens; weighting program tokens 16x
    (conf/model/tiny.yaml) took a 600-step base from 6.8% to 28.4%+ EX (measured, mini_sql seed 0).
    """
    ids, labels = batch["input_ids"], batch["labels"]
    body, head, _ = body_and_head(model)
    rows = ids.shape[0]
    valid = labels != pad_id
    weight = (1.0 + (program_weight - 1.0) * batch["loss_mask"].float()) * valid
    # the prefix's inputs and its labels (the next tokens) must be the same in every row
    same = int((ids == ids[:1]).all(0).long().cumprod(0).sum().item())
    p = min(same - 1, int(valid.sum(-1).min().item()))
    total, count = 0.0, 0.0
    if p >= 8 and rows > 1:
        h_prefix, hidden = prefix_forward(body, ids, p)
        nll = torch.nn.functional.cross_entropy(_upcast(head(h_prefix)), labels[0, :p], reduction="none")
        total, count = (nll * weight[0, :p]).sum() * rows, weight[0, :p].sum() * rows
        labels, valid, weight = labels[:, p:], valid[:, p:], weight[:, p:]
    else:
        hidden = body(input_ids=ids).last_hidden_state
    nll = torch.nn.functional.cross_entropy(_upcast(head(hidden[valid])), labels[valid], reduction="none")
    return (total + (nll * weight[valid]).sum()) / (count + weight[valid].sum())


def greedy_ex(model, tok, model_cfg, bench_cfg, problems: list) -> float:
    """Greedy execution accuracy (%) of `model` on `problems`, float32, as the loop's evaluation decodes."""
    from lutra.execution import judge
    from lutra.policy.sampling import greedy

    prompts = [format_prompt(tok, benchmarks.user_message(bench_cfg, p), model_cfg) for p in problems]
    outs = greedy(model, tok, prompts, max_new_tokens=model_cfg.max_completion_len, progress=False,
                  desc="warm-start check")
    verdicts = judge(list(zip(problems, outs, strict=True)), bench_cfg, progress=False)
    return 100.0 * sum(bool(v.correct) for v in verdicts) / max(1, len(problems))


def warm_start(model, tok, model_cfg, bench_cfg, problems: list, *, seed: int = 0, check_problems: list = (),
               on_check=None) -> dict:
    """Supervised training of all weights on (prompt, gold) pairs; returns loss statistics.

    With `tiny.warm_start_target_ex`, greedy EX on `check_problems` is measured every `warm_start_check_every`
    steps from `warm_start_check_from` on, and training stops at the first check that reaches the target (the
    lr schedule stays the one of `warm_start_steps`). `on_check(step, ex, model)` sees every check."""
    t = model_cfg.tiny
    records = []
    for p in problems:
        prompt = encode_prompt(tok, format_prompt(tok, benchmarks.user_message(bench_cfg, p), model_cfg))
        comp = encode_completion(tok, p.gold)
        if len(prompt) <= model_cfg.max_prompt_len and len(comp) <= model_cfg.max_completion_len + 1:
            records.append({"prompt": prompt, "chosen": comp, "rejected": None})
    opt = torch.optim.AdamW(model.parameters(), lr=t.warm_start_lr, weight_decay=0.01, betas=(0.9, 0.98))
    steps = t.warm_start_steps
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(1, steps))))
    sampler = BucketSampler([bucket_key(r["prompt"]) for r in records], t.warm_start_batch_size, seed)
    dtype = resolved_dtype(t)
    bf16 = dtype == "bfloat16"
    model.train()
    losses = []
    batches = iter(())
    bar = tqdm(range(steps), desc="warm start", leave=False)
    exact = float64_llama(model) if dtype == "float64" else contextlib.nullcontext()
    checks: list[dict] = []
    check = t.warm_start_target_ex is not None and len(check_problems) > 0

    def reached(step: int) -> bool:
        """Check the model after `step` steps; True when it reaches the target."""
        ex = greedy_ex(model, tok, model_cfg, bench_cfg, check_problems)
        checks.append({"step": step, "ex": round(ex, 2)})
        log.info("warm start: step %d, greedy EX %.1f%% on %d train problems (target %.1f%%)",
                 step, ex, len(check_problems), t.warm_start_target_ex)
        if on_check is not None:
            on_check(step, ex, model)
        return ex >= t.warm_start_target_ex

    with exact:
        for step in bar:
            due = step >= t.warm_start_check_from and (step - t.warm_start_check_from) % t.warm_start_check_every == 0
            if check and due:
                if reached(step):
                    break
                model.train()
            idx = next(batches, None)
            if idx is None:
                batches = iter(sampler)
                idx = next(batches)
            batch = collate([{"i": i, **records[i]} for i in idx], tok.pad_token_id)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # fp32 master weights, bf16 matmuls
                loss = lm_loss(model, batch, tok.pad_token_id, t.warm_start_program_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    model.eval()
    # a build shorter than warm_start_check_from is never checked (the tests' small builds)
    if check and len(losses) >= t.warm_start_check_from and (not checks or checks[-1]["ex"] < t.warm_start_target_ex):
        if not reached(len(losses)):
            log.info("warm start: all %d steps, target %.1f%% not reached", len(losses), t.warm_start_target_ex)
    return {"examples": len(records), "steps": len(losses), "checks": checks, "first_loss": losses[0] if losses else None,
            "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])), "loss_curve": losses}


def weights_sha256(model, rounded_to: torch.dtype | None = None) -> str:
    """A digest of the float32 weights: equal digests, equal models (the build's fingerprint of its result).
    `rounded_to`: of the weights as saved in that dtype and loaded back (the model itself is left as it is)."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach() if rounded_to is None else tensor.detach().to(rounded_to)
        h.update(name.encode())
        h.update(t.float().contiguous().numpy().tobytes())
    return h.hexdigest()


def build_tiny(model_cfg, bench_cfg, out_dir: Path, *, on_check=None) -> dict:
    # start-up: only a build needs the model classes
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    t, t0 = model_cfg.tiny, time.time()
    seed, dtype = tiny_seed(t, bench_cfg), resolved_dtype(t)
    log.info("building tiny model for %s into %s (warm start in %s, seed %d)", bench_cfg.name, out_dir, dtype, seed)
    torch.manual_seed(seed)
    warmup = _warmup_problems(bench_cfg, t.rare_templates_keep, seed)
    train = benchmarks.load(bench_cfg, bench_cfg.train_split)
    evals = [p for split in benchmarks.evaluated_splits(bench_cfg) for p in benchmarks.load(bench_cfg, split)]
    # the tokenizer sees warm-up and train text and the evaluated schemas, never an evaluated gold program
    texts = [benchmarks.user_message(bench_cfg, p) + "\n" + p.gold for p in warmup + train]
    texts += sorted({p.context for p in evals})
    tok = train_tokenizer(texts, t.vocab_size)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads, num_key_value_heads=t.num_kv_heads,
        max_position_embeddings=t.max_position_embeddings, tie_word_embeddings=True, attention_dropout=0.0,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        rope_theta=10000.0,
    )
    # float64 initial weights: float32 normal_ has a SIMD kernel per CPU path, so its draws differ in the last bit
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if dtype == "float64" else torch.float32)
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    check_problems = random.Random(seed).sample(train, min(len(train), t.warm_start_check_problems))
    stats = warm_start(model, tok, model_cfg, bench_cfg, warmup, seed=seed, check_problems=check_problems,
                       on_check=on_check)
    model.to(torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id, do_sample=False)
    # what another machine's build is compared by: equal digests, the same base
    key = cache_key(model_cfg, bench_cfg)
    result = {"warm_start_dtype": dtype, "warm_start_seed": seed, "weights_sha256": weights_sha256(model),
              # what a base shipped in bf16 is compared by
              "weights_sha256_bfloat16": weights_sha256(model, rounded_to=torch.bfloat16),
              "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "threads": torch.get_num_threads(), "cache_key": key,
              "recipe_fingerprint": recipe_fingerprint(model_cfg, bench_cfg, dtype)}
    against_shipped = shipped.compare(result, key)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        write_json(Path(tmp) / "lutra_build.json", {
            "recipe": "tiny", "benchmark": bench_cfg.name, "parameters": sum(p.numel() for p in model.parameters()),
            "vocab_size": len(tok), "warmup_problems": len(warmup),
            "warmup_rare": sum(bool(p.meta.get("rare")) for p in warmup), "seconds": round(time.time() - t0, 1),
            **result, "against_shipped": against_shipped, **stats,
        })
    log.info("tiny model built in %.0f s (%s)", time.time() - t0, {k: v for k, v in stats.items() if k != "loss_curve"})
    # a differing rebuild is the expected case on another CPU type, not an error: say what it means instead
    (log.warning if against_shipped["status"] == "differs" else log.info)("tiny base: %s", against_shipped["message"])
    return against_shipped


def ensure_tiny(cfg) -> Path | None:
    """The directory `model=tiny` loads from (None for any other model): the base lutra ships for this recipe
    (lutra/bases/, its sha256 checked; nothing is built), else a build cached under outputs/models/, built here
    when absent. The one place a base model is trained: loading (`lutra.policy.models`) only reads."""
    if cfg.model.build != "tiny" or cfg.model.path is not None:
        return None
    ship = shipped.find(cfg.model, cfg.benchmark)
    if ship is not None:
        shipped.verify(ship)
        log.info("tiny base: the shipped base %s (sha256 checked; nothing to build)", ship.name)
        return ship
    path = tiny_dir(cfg.model, cfg.benchmark)
    if not (path / "config.json").exists():
        build_tiny(cfg.model, cfg.benchmark, path)
    return path


def rebuild(model_cfg, bench_cfg, *, force: bool = False) -> dict:
    """Build the recipe into its cache directory (kept when built already, unless `force`) and compare the result
    with the shipped base of the same recipe: {"path", "status", "shipped", "message"} (`shipped.compare`)."""
    import shutil

    from lutra.artifacts import read_json

    path = tiny_dir(model_cfg, bench_cfg)
    if force and path.exists():
        shutil.rmtree(path)
    if (path / "config.json").exists():
        verdict = shipped.compare(read_json(path / "lutra_build.json"), cache_key(model_cfg, bench_cfg))
    else:
        verdict = build_tiny(model_cfg, bench_cfg, path)
    return {"path": str(path), **verdict}
