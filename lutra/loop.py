"""The CodeLutra loop. Round 0 evaluates the base model; each round k >= 1 then does

    sample -> execute -> pair -> train (reference log-probs first) -> evaluate

Every stage writes its artifact atomically into round_k/ and is marked done in the manifest (`lutra.run.Run`), so
a restart skips finished stages and redoes only the unfinished one. The algorithm comes first; the policy cache,
the reference log-prob cache and the summary line follow it.

Started by torchrun or srun, every rank runs this loop (`lutra.distributed`): it samples, executes and evaluates its
shard (whole batches of the one-process batching, whole problems), rank 0 writes what the ranks gathered, and
training is DDP over the same ranks. One process is the world of one, and every shard is then the whole stage.
"""

from __future__ import annotations

import io
import logging
import time

import torch
from omegaconf import OmegaConf

from lutra import benchmarks, distributed, execution
from lutra.artifacts import atomic_write_bytes, fingerprint, read_jsonl, replace_dir, sha256_dir
from lutra.benchmarks.sql_schema import check_databases
from lutra.config import ConfigError
from lutra.execution.sandbox import require_seccomp
from lutra.logger import NoLogger, RunLogger
from lutra.pairs import build_pairs, sft_targets
from lutra.policy import vllm as vllm_backend
from lutra.policy.device import setup_torch
from lutra.policy.logprobs import reference_logps
from lutra.policy.models import policy_at, record_base, resolve_path
from lutra.policy.prompts import format_prompt
from lutra.policy.sampling import generate, greedy
from lutra.policy.tiny import ensure_tiny
from lutra.run import Run
from lutra.scoring import score_predictions
from lutra.training.data import encode_pairs, ordered_batches
from lutra.training.fit import ADAPTER_TMP, train_round
from lutra.training.strategies import autocast, device_for

log = logging.getLogger(__name__)
STAGES = ("sample", "execute", "pair", "ref_logps", "train", "evaluate")


def run(cfg, world: distributed.World | None = None) -> float:
    """Run (or resume) every round of `cfg`; returns the final eval execution accuracy (percent). `world`: the ranks
    a launcher started (default: read from the environment; one process without a launcher)."""
    world = distributed.launched() if world is None else world
    check_run_config(cfg, world)
    setup_torch()
    distributed.init(world, device_for(cfg.trainer))
    r = Loop(cfg, world)
    try:
        # model=tiny: build the base once (cached across runs) before any stage loads it; rank 0 first
        distributed.on_main(world, lambda: ensure_tiny(cfg) and None)
        if not world.main:
            ensure_tiny(cfg)
        acc = r.evaluate(0)
        for k in range(1, cfg.rounds + 1):
            acc = r.run_round(k)
        return acc
    finally:
        r.close()
        distributed.close(world)


class Loop:
    def __init__(self, cfg, world: distributed.World = distributed.World()):
        self.cfg, self.world = cfg, world
        self.run = Run(cfg, world).open()
        if world.local_size > 1 and cfg.benchmark.workers is None:  # the node's cores, shared by its ranks' sandboxes
            from lutra.execution.pool import default_workers

            cfg.benchmark.workers = max(1, default_workers() // world.local_size)
        # rank 0 loads (and, for mini_sql, generates) the data first; the other ranks get its problems
        self.train_problems, self.eval_problems, self.held_out_problems = distributed.on_main(world, self._load)
        self.by_id = {p.id: p for p in self.train_problems}
        # every rank executes programs: each checks its own sandbox, before any model loads
        self.capabilities = distributed.all_gather(world, self._sandbox)[0]
        self.run.manifest["capabilities"] = self.capabilities
        self.run.manifest["data"] = {"train": len(self.train_problems), "eval": len(self.eval_problems),
                                     "held_out": len(self.held_out_problems)}
        self.run.manifest["world"] = {"ranks": world.size, "nodes": world.nodes, "launcher": world.launcher}
        self.run.save()
        log.info("execution sandbox capabilities: %s", self.capabilities)
        self.logger = RunLogger(cfg, self.run) if world.main else NoLogger()
        self.model, self.tok, self._policy_round = None, None, None
        self.device = device_for(cfg.trainer)
        self.shard = (world.rank, world.size)  # the batches of sampling and decoding this rank computes

    def _load(self) -> tuple[list, list, list]:
        cfg = self.cfg
        train = benchmarks.load(cfg.benchmark, cfg.benchmark.train_split)
        evaluation = benchmarks.load(cfg.benchmark, cfg.benchmark.eval_split)
        held = cfg.benchmark.held_out_split
        held_out = benchmarks.load(cfg.benchmark, held) if held else []
        if cfg.benchmark.executor == "sql":  # a missing or corrupt database fails here, before any model loads
            check_databases(train + evaluation + held_out)
        if cfg.benchmark.name == "ds1000":  # its libraries too: a missing one names the extra to install
            from lutra.benchmarks.ds1000 import check_environment

            for warning in check_environment(cfg.benchmark, train + evaluation):
                log.warning("%s", warning)
        return train, evaluation, held_out

    def _sandbox(self) -> dict:
        caps = execution.capabilities()
        require_seccomp(bool(self.cfg.benchmark.options.get("require_seccomp", False)))
        return caps

    def judge(self, items: list, **kw) -> list:
        """`execution.judge` of (problem, program) items, each rank judging whole problems of its share."""
        return distributed.split_map(self.world, items, lambda part: execution.judge(part, **kw),
                                     key=lambda item: item[0].id)

    def run_round(self, k: int) -> float:
        t0 = time.time()
        samples = self.sample(k)
        verdicts = self.execute(k, samples)
        pairs = self.pair(k, samples, verdicts)
        self.train(k, pairs)
        acc = self.evaluate(k)
        self.summary_line(k, time.time() - t0)
        return acc

    def bootstrap(self, k: int) -> bool:
        """Round k is one of the first `method.bootstrap_rounds`: it trains on the golds and samples nothing."""
        return k <= self.cfg.method.bootstrap_rounds

    def round_cfg(self, k: int):
        """The config round k trains with: a bootstrap round is SFT on the gold programs (the method's optimizer
        settings at `bootstrap_lr`, `bootstrap_steps` steps), so every method with the same seed starts its own rounds from the same
        adapter; every other round is the run's config itself."""
        if not self.bootstrap(k):
            return self.cfg
        m = self.cfg.method
        steps = m.bootstrap_steps
        return OmegaConf.merge(self.cfg, {"method": {
            "loss": "sft", "sft_data": "gold", "max_steps_per_round": steps, "replay_rounds": 0,
            "lr": m.lr if m.bootstrap_lr is None else m.bootstrap_lr,
            "epochs_per_round": 1 if steps is None else 1000}})  # with a step count, the steps decide

    def sample(self, k: int) -> list[dict]:
        """samples.jsonl: `samples_per_problem` programs per train problem from the round's starting policy."""
        def compute():
            m = self.cfg.method
            if self.bootstrap(k):
                log.info("round %d: bootstrap round (method.bootstrap_rounds=%d): trains on the gold programs, "
                         "samples nothing", k, m.bootstrap_rounds)
                return [], {"samples": 0, "bootstrap": True}
            model, tok = self.policy(k - 1)
            prompts = [self.prompt(p) for p in self.train_problems]
            params = dict(n=m.samples_per_problem, temperature=m.temperature, top_p=m.top_p,
                          max_new_tokens=self.cfg.model.max_completion_len, seed=self.cfg.seed * 1000 + k)
            backend, why = vllm_backend.resolve(self.cfg.sampler)
            self.run.manifest.setdefault("sampler", {})[str(k)] = {"backend": backend, "reason": why, **params}

            def draw() -> list:  # this rank's share: (texts, finished) per prompt, None for the other ranks' ones
                if backend == "vllm":
                    adapter = str(self.run.round_dir(k - 1) / "adapter") if k > 1 else None
                    texts, finished = vllm_backend.generate(
                        resolve_path(self.cfg.model, self.cfg.benchmark), adapter, tok, prompts,
                        dtype=self.cfg.model.dtype, lora_r=self.cfg.model.lora_r,
                        gpu_memory_utilization=self.cfg.vllm_gpu_memory_utilization, world=self.world,
                        tensor_parallel_size=self.cfg.vllm_tensor_parallel_size or 1, progress=self.world.main,
                        **params)
                else:
                    texts, finished = generate(model, tok, prompts, batch_size=m.sample_batch_size,
                                               desc=f"round {k}: sample", return_finished=True, shard=self.shard,
                                               progress=self.world.main, **params)
                return [None if t is None else (t, f) for t, f in zip(texts, finished)]
            drawn = distributed.merge(self.world, draw)
            texts, finished = [d[0] for d in drawn], [d[1] for d in drawn]
            # each sample carries its prompt, as pairs.jsonl does: what was asked is readable next to the answer
            records = [{"problem_id": p.id, "idx": j, "prompt": prompt, "text": t, "finished": f}
                       for p, prompt, ts, fs in zip(self.train_problems, prompts, texts, finished)
                       for j, (t, f) in enumerate(zip(ts, fs))]
            return records, {"samples": len(records)}
        return self.run.cached_jsonl(k, "sample", "samples.jsonl", compute)

    def execute(self, k: int, samples: list[dict]) -> list[dict]:
        """verdicts.jsonl: each finished sample run in the sandbox against its gold; truncated ones are wrong."""
        def compute():
            if not samples:
                return [], {} if self.bootstrap(k) else {"sample_accuracy": 0.0}
            runnable = [s for s in samples if s["finished"]]
            verdicts = self.judge([(self.by_id[s["problem_id"]], s["text"]) for s in runnable], cfg=self.cfg.benchmark,
                                  desc=f"round {k}: execute", for_training=True, progress=self.world.main)
            by_key = {(s["problem_id"], s["idx"]): v for s, v in zip(runnable, verdicts)}
            records = []
            for s in samples:
                v = by_key.get((s["problem_id"], s["idx"]))
                rec = v.to_dict() if v else {"status": "truncated", "correct": False, "seconds": 0.0,
                                              "error": "no EOS within max_completion_len"}
                records.append({"problem_id": s["problem_id"], "idx": s["idx"], **rec})
            acc = sum(bool(r["correct"]) for r in records) / max(1, len(records))
            return records, {"sample_accuracy": round(100 * acc, 2)}
        return self.run.cached_jsonl(k, "execute", "verdicts.jsonl", compute)

    def pair(self, k: int, samples: list[dict], verdicts: list[dict]) -> list[dict]:
        """pairs.jsonl: (correct, wrong) pairs per problem (or SFT targets), plus replayed earlier rounds' pairs."""
        def compute():
            m = self.round_cfg(k).method
            labelled = [{**s, "correct": v["correct"]} for s, v in zip(samples, verdicts)]
            if m.loss == "sft":
                pairs, stats = sft_targets(labelled, self.by_id, per_problem=m.pairs_per_problem,
                                           use_gold=m.sft_data == "gold", seed=self.cfg.seed, round_idx=k)
            else:
                pairs, stats = build_pairs(labelled, self.by_id, pairs_per_problem=m.pairs_per_problem,
                                           gold_as_chosen=m.gold_as_chosen, seed=self.cfg.seed, round_idx=k)
            self.policy(k - 1)  # the tokenizer renders the prompts
            for pr in pairs:
                pr["prompt"] = self.prompt(self.by_id[pr["problem_id"]])
            new = pairs
            if m.replay_rounds:
                pairs = [{**pr, "round": k} for pr in pairs] + self._replayed(k, pairs)
                stats["replayed"] = len(pairs) - len(new)
            return pairs, stats, lambda: self.logger.log_pairs(k, new, stats, samples, verdicts)
        # rank 0 pairs alone: cheap, and one seeded draw broadcast leaves no room for ranks to disagree
        return self.run.cached_jsonl(k, "pair", "pairs.jsonl", compute, collective=False)

    def train(self, k: int, pairs: list[dict]) -> None:
        """adapter/: the LoRA adapter after round k's DPO + lambda*NLL (or SFT) fit on the round's pairs."""
        if self.run.done(k, "train"):
            return
        cfg = self.round_cfg(k)
        m, t0 = cfg.method, time.time()
        _, tok = self.policy(k - 1)
        enc = encode_pairs(tok, pairs, self.cfg.model, with_rejected=m.loss != "sft")
        ref = None if m.loss == "sft" or not enc.prompts else self.reference(k, enc)
        steps = self.run.manifest.setdefault("train_steps", {})
        offset = sum(v for kk, v in steps.items() if int(kk) < k)  # the logger's step axis continues
        stats = train_round(cfg, self.run.round_dir(k), k, offset, self.logger.lightning(), enc, ref,
                            policy=lambda: self.policy(k - 1), release=self._release_policy, world=self.world)
        if self.model is not None:  # trained in this process: the policy in memory is round k's
            self._policy_round = k
        steps[str(k)] = stats["steps"]
        adapter_dir = self.run.round_dir(k) / "adapter"
        if self.world.main:
            record_base(self.run.round_dir(k) / ADAPTER_TMP, resolve_path(self.cfg.model, self.cfg.benchmark))
            replace_dir(self.run.round_dir(k) / ADAPTER_TMP, adapter_dir)
        self.run.mark(k, "train", adapter_dir, time.time() - t0, **stats)

    def evaluate(self, k: int) -> float:
        """metrics.json: greedy EX of the round-k policy on the eval split (and the held-out split on its own)."""
        def compute():
            summary = self._score(k, self.eval_problems, "eval", f"round {k}: evaluate")
            metrics = {"round": k, **summary}
            if self.held_out_problems:  # reported on its own: never part of eval's EX
                held = self._score(k, self.held_out_problems, "held_out", f"round {k}: evaluate held-out")
                metrics["held_out"] = {key: held[key] for key in ("exec_acc", "correct", "n", "groups")}
            extra = {"held_out_acc": metrics["held_out"]["exec_acc"]} if "held_out" in metrics else {}
            if k == 0:
                log.info("round 0 (base model): eval EX %.1f%%%s", summary["exec_acc"], _held_text(extra))
            return metrics, {"exec_acc": summary["exec_acc"], **extra}, lambda: self.logger.log_eval(k, metrics)
        return self.run.cached_json(k, "evaluate", "metrics.json", compute)["exec_acc"]

    # -- the policy in memory, prompts, scoring ------------------------------------------------------------------
    def policy(self, k: int):
        """The policy at the end of round k (k = 0: base + a fresh LoRA adapter, seeded), loaded once per round."""
        if self._policy_round == k:
            return self.model, self.tok
        self.model, self.tok = None, None  # drop the old policy before loading the next one
        adapters = [str(self.run.round_dir(j) / "adapter") for j in range(1, k + 1)]
        self.model, self.tok = policy_at(self.cfg, adapters, device=self.device)
        self._policy_round = k
        return self.model, self.tok

    def _release_policy(self) -> None:
        self.model, self.tok, self._policy_round = None, None, None

    def prompt(self, p) -> str:
        return format_prompt(self.tok, benchmarks.user_message(self.cfg.benchmark, p), self.cfg.model)

    def _score(self, k: int, problems: list, name: str, desc: str) -> dict:
        model, tok = self.policy(k)
        preds = distributed.merge(self.world, lambda: greedy(
            model, tok, [self.prompt(p) for p in problems], max_new_tokens=self.cfg.model.max_completion_len,
            batch_size=self.cfg.method.eval_batch_size, desc=desc, shard=self.shard, progress=self.world.main))
        predictions = {p.id: t for p, t in zip(problems, preds, strict=True)}
        out = self.run.round_dir(k) / name if self.world.main else None
        return score_predictions(problems, predictions, self.cfg.benchmark, out, progress=self.world.main,
                                 judge_items=lambda items, cfg, **kw: self.judge(items, cfg=cfg, **kw))

    def _replayed(self, k: int, current: list[dict]) -> list[dict]:
        """The pairs rounds k-R .. k-1 built themselves (not those they replayed), minus repeats of `current`."""
        seen = {(p["problem_id"], p["chosen"], p.get("rejected")) for p in current}
        out = []
        first = self.cfg.method.bootstrap_rounds + 1  # bootstrap rounds' gold targets are not pairs
        for j in range(max(first, k - self.cfg.method.replay_rounds), k):
            for p in read_jsonl(self.run.round_dir(j) / "pairs.jsonl"):
                key = (p["problem_id"], p["chosen"], p.get("rejected"))
                if p.get("round", j) == j and key not in seen:
                    seen.add(key)
                    out.append({**p, "round": j})
        return out

    # -- the reference log-prob cache -----------------------------------------------------------------------------
    def reference(self, k: int, enc) -> torch.Tensor:
        """Reference log-probs of the round's pairs under the starting policy, computed once and cached."""
        path = self.run.round_dir(k) / "ref_logps.pt"
        prev = self.run.round_dir(k - 1) / "adapter"
        model, tok = self.policy(k - 1)
        fp = fingerprint({
            "pairs": self.run.stage_info(k, "pair").get("sha256"),
            "adapter": sha256_dir(prev) if prev.exists() else f"init-seed-{self.cfg.seed}",
            "tokenizer": fingerprint(tok.get_vocab()), "reference": self.cfg.method.reference,
        })
        if self.run.done(k, "ref_logps"):
            saved = distributed.on_main(self.world, lambda: torch.load(path))
            if saved["fingerprint"] == fp:
                return saved["logps"]
            log.warning("round %d: cached reference log-probs do not match the pairs/policy: recomputing", k)
        t0 = time.time()
        use_base = self.cfg.method.reference == "base"
        batches = ordered_batches(enc, self.cfg.method.batch_size, tok.pad_token_id)
        with autocast(self.cfg.trainer, self.device):  # the arithmetic `fit` will run the policy in
            if self.world.size == 1:
                logps = reference_logps(model, batches, use_base=use_base)
            else:  # each rank the same batches' log-probs as one process computes them: every size-th batch
                logps = torch.cat(distributed.split_map(self.world, list(batches), lambda part: [
                    reference_logps(model, [b], use_base=use_base, progress=False) for b in part]))
        if self.world.main:
            buf = io.BytesIO()
            torch.save({"fingerprint": fp, "logps": logps}, buf)
            atomic_write_bytes(path, buf.getvalue())
        self.run.mark(k, "ref_logps", path, time.time() - t0, pairs=int(logps.shape[0]))
        return logps

    # -- bookkeeping ----------------------------------------------------------------------------------------------
    def summary_line(self, k: int, seconds: float) -> None:
        st = {s: self.run.stage_info(k, s) for s in STAGES}
        pair = st["pair"]
        secs = " ".join(f"{s}={st[s].get('seconds', 0):.0f}s" for s in st)
        acc = st["execute"].get("sample_accuracy", float("nan"))
        sampled = "bootstrap round (gold targets)" if st["sample"].get("bootstrap") else f"sample acc {acc:.1f}%"
        log.info("round %d: eval EX %.1f%%%s | %s | pairs %d from %d/%d problems "
                 "(all-correct %d, all-wrong %d) | %s", k, st["evaluate"].get("exec_acc", float("nan")),
                 _held_text(st["evaluate"]), sampled, pair.get("pairs", 0),
                 pair.get("with_pairs", 0), pair.get("problems", 0), pair.get("all_correct", 0),
                 pair.get("all_wrong", 0), secs)

    def close(self) -> None:
        self.logger.finish()
        self.run.close()


def check_run_config(cfg, world: distributed.World = distributed.World()) -> None:
    """Cross-group checks of a train config against the launched world, before anything loads."""
    if cfg.method.reference == "base" and cfg.method.adapter == "fresh":
        raise ConfigError("method.reference: `base` needs method.adapter=continue (a fresh adapter on merged "
                          "weights has no adapter-free base to fall back to)")
    distributed.check_config(cfg, world)


def _held_text(info: dict) -> str:
    return f" (held-out split {info['held_out_acc']:.1f}%)" if "held_out_acc" in info else ""
