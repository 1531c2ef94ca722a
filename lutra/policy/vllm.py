"""Sampling with vLLM (the optional `vllm` extra): the round's LoRA adapter per request, a seed per prompt.

Same contract as `lutra.policy.sampling.generate`, so the loop writes the same records with either backend:
- prompts go in as the token ids `lutra.policy.prompts.encode_prompt` makes (one BOS, the template already rendered), so
  vLLM neither re-tokenizes nor adds a second BOS, and training sees exactly the prompt that was sampled from;
- completions are decoded with the same tokenizer (stop token dropped, special tokens skipped, stripped);
- `finished` is False exactly where a sample hit max_new_tokens without a stop token (vLLM's
  finish_reason "length"), which the loop labels truncated instead of executing.

Seeds: prompt i gets its own seed `seed * 1_000_003 + i`, whatever batch it lands in. That fixes the random
draws, not the arithmetic: vLLM batches requests dynamically (continuous batching, prefix caching, chunked
prefill), and a different batch composition or GPU changes the kernels' reduction order and so the logits in
their last bits. Batched vLLM sampling is therefore not bit-reproducible (vllm-project/vllm#17524, #1595); a
resumed run re-reads its samples.jsonl rather than regenerating it. HF sampling (lutra.policy.sampling) is.

Engine: one `vllm.LLM` per (model, dtype, lengths, LoRA rank) lives in the process across rounds; each round's
adapter is a `LoRARequest` with a stable integer id per directory. Between calls the engine sleeps (vLLM >= 0.7:
weights to CPU, KV cache freed) so training gets the GPU memory back; `gpu_memory_utilization` is the share of
the GPU the engine may take while awake, next to the policy the loop keeps for training. Adapters are applied
to the original base, so it serves `method.adapter=continue`; `fresh` (merged weights) would need the merged
base saved per round.

Several GPUs (docs/gpu.md, "vLLM on several GPUs"): `tensor_parallel_size` = t shards one engine's weights and KV
cache over t GPUs. In one process that is vLLM's own multiprocessing executor; in a data-parallel world (torchrun /
srun ranks, `lutra.distributed`) every rank builds its engine with `distributed_executor_backend="external_launcher"`
(vLLM's torchrun interface): t consecutive ranks form one engine, and the world holds size / t engines, each
sampling every (size / t)-th prompt with that prompt's own seed. Not run on a GPU yet (bench/gpu_check.sh).
"""

from __future__ import annotations

import importlib.util
import logging
from importlib import metadata

from lutra.policy.prompts import completion_layout, encode_prompt

log = logging.getLogger(__name__)

INSTALL_HINT = ("vLLM is not installed. Install the extra on a CUDA machine: pip install -e '.[vllm]'; "
                "or sample with HF generate (sampler=hf).")
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM's LoRA kernels accept
SEED_STRIDE = 1_000_003

_ENGINES: dict[tuple, dict] = {}
_ADAPTER_IDS: dict[str, int] = {}


def installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def available() -> bool:
    """Whether vLLM can sample here: installed (found without importing it) and a CUDA device present."""
    if not installed():
        return False
    import torch

    return torch.cuda.is_available()


def resolve(requested: str) -> tuple[str, str]:
    """(backend, reason) for `sampler: hf | vllm | auto`; vllm/auto fall back to HF when vLLM cannot run."""
    if requested == "hf":
        return "hf", "sampler=hf"
    if requested not in ("vllm", "auto"):
        raise ValueError(f"sampler must be one of ['hf', 'vllm', 'auto'], got {requested!r}")
    if available():
        return "vllm", f"sampler={requested}: vLLM {metadata.version('vllm')} on CUDA"
    why = "vLLM is not installed" if not installed() else "there is no CUDA device"
    return "hf", f"sampler={requested} but {why}: falling back to HF generate (same records)"


def describe(**params) -> dict:
    """What goes into the run manifest: backend, vLLM version, sampling parameters."""
    return {"backend": "vllm", "vllm": metadata.version("vllm") if installed() else None,
            "seed_per_prompt": f"seed * {SEED_STRIDE} + prompt index", "bit_reproducible": False, **params}


def request_seeds(seed: int, n_prompts: int) -> list[int]:
    return [seed * SEED_STRIDE + i for i in range(n_prompts)]


def lora_rank(r: int) -> int:
    """vLLM's `max_lora_rank` for an adapter of rank r: the smallest supported rank >= r."""
    for k in LORA_RANKS:
        if k >= r:
            return k
    raise ValueError(f"LoRA rank {r} is above vLLM's largest supported rank {LORA_RANKS[-1]}")


def sampling_kwargs(*, n: int, temperature: float, top_p: float, max_new_tokens: int, seed: int,
                    stop_token_ids: list[int]) -> dict:
    """Keyword arguments of one prompt's `vllm.SamplingParams` (temperature <= 0: greedy, as lutra.policy.sampling)."""
    greedy = temperature <= 0
    return {"n": n, "temperature": 0.0 if greedy else temperature, "top_p": 1.0 if greedy else top_p,
            "max_tokens": max_new_tokens, "seed": seed, "stop_token_ids": sorted(stop_token_ids),
            "skip_special_tokens": True, "detokenize": False}


def stop_token_ids(tokenizer, model_path: str | None = None) -> set[int]:
    """EOS of the tokenizer, the chat template's turn end (lutra.policy.prompts.completion_layout, e.g. Gemma's
    <end_of_turn>) and the checkpoint's generation_config eos ids (e.g. Llama-3's <|eot_id|>)."""
    ids = {tokenizer.eos_token_id, completion_layout(tokenizer).stop_id}
    if model_path is not None:
        try:
            from transformers import GenerationConfig  # start-up: not needed unless vLLM samples

            eos = GenerationConfig.from_pretrained(model_path).eos_token_id
            ids |= set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        except OSError:
            pass
    return {i for i in ids if i is not None}


def to_records(outputs, tokenizer, stop_ids: set[int]) -> tuple[list[list[str]], list[list[bool]]]:
    """(texts, finished) per prompt from vLLM RequestOutputs, decoded as lutra.policy.sampling decodes."""
    texts, finished = [], []
    for out in outputs:
        ts, fs = [], []
        for c in out.outputs:
            ids = list(c.token_ids)
            while ids and ids[-1] in stop_ids:
                ids.pop()
            ts.append(tokenizer.decode(ids, skip_special_tokens=True).strip())
            fs.append(c.finish_reason != "length")
        texts.append(ts)
        finished.append(fs)
    return texts, finished


def _import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return vllm


def engine_kwargs(world_size: int, tensor_parallel_size: int) -> dict:
    """vLLM's parallelism arguments: one process (vLLM starts its own tensor-parallel workers), or one engine per
    `tensor_parallel_size` ranks of a launched world (external_launcher: the ranks are the engine's workers)."""
    t = tensor_parallel_size
    if world_size == 1:
        return {"tensor_parallel_size": t}
    if world_size % t:
        raise ValueError(f"vllm_tensor_parallel_size={t} must divide the {world_size} launched ranks")
    return {"tensor_parallel_size": t, "data_parallel_size": world_size // t,
            "distributed_executor_backend": "external_launcher"}


def _engine(model_path: str, *, dtype: str, max_model_len: int | None, max_lora_rank: int, seed: int,
            gpu_memory_utilization: float, parallel: dict | None = None) -> dict:
    """{"llm": vllm.LLM, "sleeps": sleep mode on, "asleep": state}, created once per key."""
    parallel = parallel or {}
    key = (model_path, dtype, max_model_len, max_lora_rank, gpu_memory_utilization, tuple(sorted(parallel.items())))
    if key not in _ENGINES:
        vllm = _import_vllm()
        kw = {"model": model_path, "tokenizer": model_path, "dtype": dtype, "enable_lora": True,
              "max_lora_rank": max_lora_rank, "seed": seed, "gpu_memory_utilization": gpu_memory_utilization,
              "max_model_len": max_model_len, **parallel}
        sleeps = hasattr(vllm.LLM, "sleep")  # vLLM >= 0.7.3
        llm = vllm.LLM(**kw, enable_sleep_mode=True) if sleeps else vllm.LLM(**kw)
        _ENGINES[key] = {"llm": llm, "sleeps": sleeps, "asleep": False}
        log.info("vLLM %s engine for %s (%s, LoRA rank <= %d, sleep mode %s)", vllm.__version__, model_path, dtype,
                 max_lora_rank, sleeps)
    return _ENGINES[key]


def _lora_request(adapter_dir: str | None):
    if adapter_dir is None:
        return None
    from vllm.lora.request import LoRARequest

    aid = _ADAPTER_IDS.setdefault(str(adapter_dir), len(_ADAPTER_IDS) + 1)  # ids must be >= 1 and stable
    return LoRARequest(f"adapter-{aid}", aid, str(adapter_dir))


def generate(model_path: str, adapter_dir: str | None, tokenizer, prompts: list[str], *, n: int, temperature: float,
             top_p: float, max_new_tokens: int, seed: int, dtype: str = "bfloat16", max_model_len: int | None = None,
             lora_r: int = 16, gpu_memory_utilization: float = 0.5, progress: bool = True,
             world=None, tensor_parallel_size: int = 1):
    """n completions per prompt string with vLLM: (texts, finished), as lutra.policy.sampling.generate returns them.

    adapter_dir: a peft adapter saved with save_pretrained (None: the base alone).
    world: a launched `lutra.distributed.World` of several ranks: this rank's engine samples its data-parallel
    share of the prompts (the others' entries are None), each prompt still with its own seed.
    Raises ImportError with the install command when vLLM is absent.
    """
    _import_vllm()
    from vllm import SamplingParams  # optional dependency (the vllm extra)

    size = world.size if world is not None else 1
    engine = _engine(model_path, dtype=dtype, max_model_len=max_model_len, max_lora_rank=lora_rank(lora_r),
                     seed=seed, gpu_memory_utilization=gpu_memory_utilization,
                     parallel=engine_kwargs(size, tensor_parallel_size))
    dp_rank, dp_size = (world.rank // tensor_parallel_size, size // tensor_parallel_size) if size > 1 else (0, 1)
    mine = list(range(dp_rank, len(prompts), dp_size))
    stops = stop_token_ids(tokenizer, model_path)
    seeds = request_seeds(seed, len(prompts))
    params = [SamplingParams(**sampling_kwargs(n=n, temperature=temperature, top_p=top_p,
                                               max_new_tokens=max_new_tokens, seed=seeds[i],
                                               stop_token_ids=sorted(stops))) for i in mine]
    inputs = [{"prompt_token_ids": encode_prompt(tokenizer, prompts[i])} for i in mine]
    llm = engine["llm"]
    if engine["asleep"]:
        llm.wake_up()
        engine["asleep"] = False
    try:
        outputs = llm.generate(inputs, params, lora_request=_lora_request(adapter_dir), use_tqdm=progress)
    finally:
        if engine["sleeps"]:  # level 1: weights to CPU memory, KV cache dropped; training gets the GPU back
            llm.sleep(level=1)
            engine["asleep"] = True
    texts, finished = to_records(outputs, tokenizer, stops)
    if dp_size == 1:
        return texts, finished
    all_texts, all_finished = [None] * len(prompts), [None] * len(prompts)
    for j, i in enumerate(mine):
        all_texts[i], all_finished[i] = texts[j], finished[j]
    return all_texts, all_finished
