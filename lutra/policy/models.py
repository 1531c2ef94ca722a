"""Loading the policy: tokenizer + base model through `from_pretrained`, LoRA through peft.

A loader only: `model=tiny` (a small Llama built once by `lutra.policy.tiny.ensure_tiny`: tokenizer trained on the
benchmark's text, random init, short supervised warm start on generated gold pairs disjoint from train and eval)
is saved with `save_pretrained` under outputs/models/ and from then on loaded exactly as a hub model is:
`AutoTokenizer.from_pretrained` and `AutoModelForCausalLM.from_pretrained` on that directory.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from lutra.policy.tiny_cache import tiny_dir

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_path(model_cfg, bench_cfg) -> str:
    """The directory or hub id to load. `model=tiny` resolves to its cache directory, which
    `lutra.policy.tiny.ensure_tiny` builds (the loop, prepare and evaluate call it first): loading never trains.
    `model.gguf_file` resolves to its converted directory in the model cache, converted on first use."""
    if model_cfg.build == "tiny" and model_cfg.path is None:
        from lutra.policy import shipped  # the recipe's shipped base when lutra has one, else its build

        ship = shipped.find(model_cfg, bench_cfg)
        if ship is not None:
            shipped.verify(ship)
            return str(ship)
        path = tiny_dir(model_cfg, bench_cfg)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"model=tiny: no built model at {path} (model.tiny and benchmark "
                                    f"{bench_cfg.name!r} select it); build it first with "
                                    "lutra.policy.tiny.ensure_tiny(cfg), which `python -m lutra.train` and "
                                    "`python -m lutra.prepare` call")
        return str(path)
    if getattr(model_cfg, "gguf_file", None):
        from lutra.policy.gguf import ensure_converted  # a GGUF: converted once, then a plain HF directory

        return str(ensure_converted(model_cfg.gguf_file))
    return model_cfg.path


def load_tokenizer(path: str, model_cfg):
    from transformers import AutoTokenizer  # start-up: heavy imports only when a model loads

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base(path: str, model_cfg, device: str | torch.device = "cpu"):
    from transformers import AutoModelForCausalLM  # start-up: heavy imports only when a model loads

    kwargs = {"dtype": DTYPES[model_cfg.dtype], "trust_remote_code": model_cfg.trust_remote_code}
    if model_cfg.load_in_4bit:
        from transformers import BitsAndBytesConfig  # optional dependency (bitsandbytes, the qlora extra)

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        )
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if not model_cfg.load_in_4bit:
        model.to(device)
    if model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    return model


def lora_config(model_cfg):
    # start-up: peft takes ~10 s to import (measured on this machine under load); a config error comes first
    from peft import LoraConfig

    return LoraConfig(
        r=model_cfg.lora_r,
        lora_alpha=model_cfg.lora_alpha,
        lora_dropout=model_cfg.lora_dropout,
        target_modules=list(model_cfg.lora_target_modules),
        task_type="CAUSAL_LM",
    )


def new_adapter(base, model_cfg, seed: int):
    """`base` with a new LoRA adapter, initialised right after seeding with `seed`: its weights do not depend on
    what ran before in the process (building the tiny model, for one), so a resumed run gets the same adapter."""
    from peft import get_peft_model  # start-up: see lora_config

    torch.manual_seed(seed)
    return get_peft_model(base, lora_config(model_cfg))


def load_policy(model_cfg, bench_cfg, adapter: str | None = None, *, trainable: bool = False, device="cpu",
                seed: int = 0):
    """(peft model, tokenizer): the base with `adapter` loaded, or with a new adapter (`new_adapter`, seeded
    with `seed`) when adapter is None."""
    from peft import PeftModel  # start-up: see lora_config

    path = resolve_path(model_cfg, bench_cfg)
    tok = load_tokenizer(path, model_cfg)
    base = load_base(path, model_cfg, device)
    if adapter is not None:
        model = PeftModel.from_pretrained(base, adapter, is_trainable=trainable)
    else:
        model = new_adapter(base, model_cfg, seed)
        if not trainable:
            model.requires_grad_(False)
    return model, tok


def load(model_cfg, bench_cfg, adapter: str | None = None, device="cpu"):
    """(model, tokenizer) for inference: the base alone, or with a trained adapter. Used by lutra.evaluate."""
    if adapter is None:
        path = resolve_path(model_cfg, bench_cfg)
        model = load_base(path, model_cfg, device)
        model.eval()
        return model, load_tokenizer(path, model_cfg)
    model, tok = load_policy(model_cfg, bench_cfg, adapter, device=device)
    model.eval()
    return model, tok


def policy_at(cfg, adapters: list[str], device="cpu"):
    """(trainable peft model, tokenizer): the policy after the rounds whose adapters are `adapters` (oldest first;
    empty: base + a new adapter seeded with cfg.seed). `method.adapter=continue` loads the newest adapter onto the
    base; `fresh` merges every round's adapter into the base, in order, and adds a new one."""
    if cfg.method.adapter != "fresh" or not adapters:
        return load_policy(cfg.model, cfg.benchmark, adapters[-1] if adapters else None, trainable=True,
                           device=device, seed=cfg.seed)
    from peft import PeftModel  # start-up: see lora_config

    path = resolve_path(cfg.model, cfg.benchmark)
    base = load_base(path, cfg.model, device)
    for a in adapters:
        base = PeftModel.from_pretrained(base, a).merge_and_unload()
    return new_adapter(base, cfg.model, cfg.seed), load_tokenizer(path, cfg.model)


BASE_RECORD = "lutra_base.json"
"""Written beside adapter_config.json: the base the adapter was trained on and that base's fingerprint."""


def base_fingerprint(path: str) -> dict:
    """What identifies a base model: a hub id's commit in the HF cache, or a local directory's files (their full
    sha256 up to 2 GiB of weights; above that, config.json's sha256 plus each file's name and size)."""
    from lutra.artifacts import fingerprint, sha256_file

    local = Path(path)
    if not local.is_dir():
        try:
            from huggingface_hub import snapshot_download

            local = Path(snapshot_download(path, local_files_only=True))
        except Exception:  # noqa: BLE001 - not in the cache (vLLM-only or a custom loader): recorded as unknown
            return {"fingerprint": None, "kind": "hub id not in the HF cache"}
        return {"fingerprint": local.name, "kind": "hub commit"}
    files = sorted(p for p in local.iterdir() if p.is_file() and p.suffix in (".json", ".safetensors", ".bin",
                                                                              ".model", ".txt"))
    weights = sum(p.stat().st_size for p in files if p.suffix in (".safetensors", ".bin"))
    if weights <= 2 << 30:
        return {"fingerprint": fingerprint({p.name: sha256_file(p) for p in files}), "kind": "sha256 of files"}
    return {"fingerprint": fingerprint({p.name: sha256_file(p) if p.suffix == ".json" else p.stat().st_size
                                        for p in files}), "kind": "json sha256 + weight file sizes"}


def record_base(adapter_dir: str | Path, base_path: str) -> None:
    """Make a saved adapter loadable from any working directory: peft writes `base_model_name_or_path` as the
    path the base was loaded from, relative for model=tiny (outputs/models/...), so AutoPeftModelForCausalLM
    failed anywhere but the repo root. A local base is recorded by absolute path, a hub id as it is, and
    BASE_RECORD adds the base's fingerprint."""
    import json

    from lutra.artifacts import atomic_write_text, write_json

    adapter_dir = Path(adapter_dir)
    base = str(Path(base_path).resolve()) if Path(base_path).is_dir() else base_path
    cfg_path = adapter_dir / "adapter_config.json"
    config = json.loads(cfg_path.read_text())
    config["base_model_name_or_path"] = base
    atomic_write_text(cfg_path, json.dumps(config, indent=2, sort_keys=True) + "\n")
    write_json(adapter_dir / BASE_RECORD, {"base_model_name_or_path": base, **base_fingerprint(base)})
