"""The top-level schema of `python -m lutra.train` (conf/train.yaml): one field per group, then the run's keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING

from lutra.config._checks import _check, _one_of
from lutra.config.benchmark import BenchmarkConfig
from lutra.config.logger import LoggerConfig
from lutra.config.method import MethodConfig
from lutra.config.model import ModelConfig
from lutra.config.trainer import TrainerConfig


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
    vllm_tensor_parallel_size: Optional[int] = None
    """GPUs one vLLM engine shards its weights and KV cache over (null: 1). One process: vLLM's own workers; under
    torchrun / srun: that many consecutive ranks of one node form one engine (docs/gpu.md)."""
    resume: str = "auto"
    """auto: resume a run dir with the same config, refuse a changed one; force: resume despite changes."""
    log_level: str = "INFO"
    """Python logging level of the console and train.log: DEBUG | INFO | WARNING."""

    def __post_init__(self) -> None:
        _check(self.rounds >= 0, "rounds", f"must be >= 0, got {self.rounds}")
        _one_of(self.resume, "resume", ("auto", "force"))
        _one_of(self.sampler, "sampler", ("hf", "vllm", "auto"))
        _check(self.vllm_tensor_parallel_size is None or self.vllm_tensor_parallel_size > 0,
               "vllm_tensor_parallel_size", "must be > 0 or null")
        _check(self.sampler == "hf" or self.method is MISSING or getattr(self.method, "adapter", "continue") == "continue",
               "sampler", "vllm needs method.adapter=continue (it loads one adapter on the base)")
