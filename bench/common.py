"""Helpers shared by the bench/ scripts: data, models, memory, timing, tables, results.

Everything is built locally (no hub): mini_sql problems generated into a temporary directory, a byte-level BPE
tokenizer trained on their text (lutra.policy.tiny.train_tokenizer), randomly initialised Llama models of two sizes.
"""

from __future__ import annotations

import json
import os
import platform
import random
import resource
import tempfile
import threading
import time
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

# Llama shapes: `tiny` is conf/model/tiny.yaml's (3.1M parameters); `large` is ~55M (12 layers, width 640)
MODELS = {
    "tiny": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                 num_key_value_heads=4),
    "large": dict(hidden_size=640, intermediate_size=1728, num_hidden_layers=12, num_attention_heads=10,
                  num_key_value_heads=5),
}
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def setup(threads: int | None = None) -> None:
    import torch

    from lutra.policy.device import setup_torch

    setup_torch(threads or int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1)))
    torch.manual_seed(0)


@cache
def mini_sql(n_warmup: int = 400):
    """(BenchmarkConfig, {split: problems}) for mini_sql generated into a temporary directory (seed 0)."""
    import atexit
    import shutil

    from lutra import benchmarks
    from lutra.config import BenchmarkConfig

    tmp = tempfile.mkdtemp(prefix="bench-mini_sql-")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    cfg = BenchmarkConfig(name="mini_sql", n_warmup=n_warmup, data_dir=tmp)
    return cfg, {s: benchmarks.load(cfg, s) for s in ("warmup", "train", "eval")}


def model_cfg():
    from lutra.config import ModelConfig, TinyModelConfig

    return ModelConfig(name="tiny", build="tiny", tiny=TinyModelConfig())


@cache
def tokenizer():
    """The tiny recipe's tokenizer, trained on mini_sql warm-up + train text (vocab ~1k: BPE runs out of merges)."""
    from lutra import benchmarks
    from lutra.policy.tiny import train_tokenizer

    cfg, splits = mini_sql()
    texts = [benchmarks.user_message(cfg, p) + "\n" + p.gold for p in splits["warmup"] + splits["train"]]
    return train_tokenizer(texts, 2048)


def prompt_text(problem) -> str:
    from lutra import benchmarks
    from lutra.policy.prompts import format_prompt

    cfg, _ = mini_sql()
    return format_prompt(tokenizer(), benchmarks.user_message(cfg, problem), model_cfg())


def llama(size: str, seed: int = 0):
    """A randomly initialised LlamaForCausalLM of `size` (MODELS) on the bench tokenizer, fp32, eval mode."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=1024, tie_word_embeddings=True,
                      attention_dropout=0.0, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, rope_theta=10000.0, **MODELS[size])
    model = LlamaForCausalLM(cfg).eval()
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id)
    return model


def repeat_pairs(enc, times: int):
    """`enc`'s pairs `times` over, in order (one copy per timed step, so every step sees the same batch)."""
    from lutra.training.data import EncodedPairs

    return EncodedPairs(prompts=enc.prompts * times, chosen=enc.chosen * times, rejected=enc.rejected * times,
                        index=list(range(len(enc.prompts) * times)))


def lora_config():
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", **LORA)


def merged_generate(generate):
    """`generate` run on a copy of a peft policy with its LoRA weights merged (W + BA): one matmul per projection
    instead of three, the same function. The copy leaves the training weights bit-for-bit untouched (an in-place
    merge_adapter/unmerge_adapter round trip would leave rounding residue in the base weights every round)."""
    import copy
    import functools

    @functools.wraps(generate)
    def wrapper(model, *args, **kwargs):
        if getattr(model, "peft_config", None):
            model = copy.deepcopy(model).merge_and_unload()
        return generate(model, *args, **kwargs)

    return wrapper


def concat_cache_generate(generate):
    """`generate` (lutra.policy.sampling.generate) with its growing KV cache swapped for transformers' DynamicCache,
    which concatenates the whole cache at every decoding step: the sampler as it was before the fix, for comparison."""
    import functools

    import transformers

    import lutra.policy.sampling as S

    @functools.wraps(generate)
    def wrapper(*args, **kwargs):
        orig = S._growing_cache_class
        S._growing_cache_class = lambda: transformers.DynamicCache
        try:
            return generate(*args, **kwargs)
        finally:
            S._growing_cache_class = orig

    return wrapper


def _mutate(sql: str, rng: random.Random) -> str:
    """A plausible wrong program: what a sampled incorrect query looks like (same length scale as the gold)."""
    edits = [lambda s: s.replace("SELECT", "SELECT DISTINCT", 1), lambda s: s.replace(">", "<", 1),
             lambda s: s.replace("COUNT(*)", "SUM(1) + 1", 1), lambda s: s + " LIMIT 3",
             lambda s: s.replace("WHERE", "WHERE NOT", 1), lambda s: s.replace("=", "!=", 1)]
    out = sql
    for e in rng.sample(edits, 2):
        out = e(out)
    return out if out != sql else sql + " ORDER BY 1"


def preference_records(n_problems: int = 2, pairs_per_problem: int = 4, seed: int = 0) -> list[dict]:
    """Pairs as one lutra round writes them: `pairs_per_problem` pairs for each of `n_problems` train problems on
    one database (what BucketSampler puts in one batch: the schema opens every prompt), chosen = the gold with a
    harmless variation, rejected = a wrong variant."""
    rng = random.Random(seed)
    _, splits = mini_sql()
    by_db: dict[str, list] = {}
    for p in splits["train"]:
        by_db.setdefault(p.meta["db_id"], []).append(p)
    problems = rng.sample(sorted(by_db.values(), key=len)[-1], n_problems)
    records = []
    for p in problems:
        chosen = [p.gold, p.gold + " ;", p.gold.replace(" FROM", "  FROM", 1), "  " + p.gold]
        for j in range(pairs_per_problem):
            records.append({"problem_id": p.id, "prompt": prompt_text(p), "chosen": chosen[j % len(chosen)],
                            "rejected": _mutate(p.gold, rng)})
    return records


class PeakRSS:
    """Polls this process's resident set size (every `interval` s) in a thread: peak since the last reset()."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(self.interval)

    def reset(self) -> int:
        self.peak = self.now()
        return self.peak

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self.now())


def max_rss() -> int:
    """The kernel's high-water mark of this process's RSS (bytes), over its whole life."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def machine() -> dict:
    import torch

    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for mod in ("torch", "transformers", "peft", "lightning", "trl", "vllm"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - absent or broken: just not listed
            pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "memory_gb": round(mem / 2**30, 1), "python": platform.python_version(), "versions": versions,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def table(rows: list[dict], cols: list[str], floatfmt: str = "{:.3g}") -> str:
    def fmt(v):
        return floatfmt.format(v) if isinstance(v, float) else ("" if v is None else str(v))

    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    line = lambda xs: "| " + " | ".join(x.ljust(w) for x, w in zip(xs, widths)) + " |"  # noqa: E731
    return "\n".join([line(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(x) for x in cells])


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path
