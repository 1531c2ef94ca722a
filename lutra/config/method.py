"""The `method` group's schema (conf/method/*.yaml): sampling, pairing, the loss and each round's fit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING

from lutra.config._checks import _check, _one_of


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
    bootstrap_lr: Optional[float] = None
    """Learning rate of the bootstrap rounds (null: the method's lr): a short warm-up on the golds can need a larger
    step than the method's own rounds, whose DPO term drifts at it."""
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
        _check(self.bootstrap_lr is None or self.bootstrap_lr > 0, "method.bootstrap_lr", "must be > 0 or null")
        _check(self.loss == "sft" or self.dpo_weight > 0 or self.nll_weight > 0, "method.nll_weight",
               "dpo_weight and nll_weight are both 0: nothing to train")
