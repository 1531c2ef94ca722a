"""Data-parallel rounds: every process a launcher started runs the loop and computes its shard of each stage.

    torchrun --nproc-per-node=N [--nnodes=M --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT] -m lutra.train ...
    srun --ntasks-per-node=N python -m lutra.train ...          (inside an sbatch allocation)

Without a launcher the world is one process (`World()`) and nothing here runs a collective: every helper then calls
its function and returns, so the one-process loop is the code path it always was.

The engine is torch.distributed. `init` joins the process group from the launcher's environment (torchrun's RANK /
WORLD_SIZE / MASTER_ADDR; under srun, Lightning's SLURMEnvironment reads SLURM_PROCID / SLURM_NTASKS and the first
host of SLURM_NODELIST), nccl on GPUs and gloo on CPUs, plus a gloo group that carries Python objects (samples,
verdicts, predictions) so they never touch GPU memory. Lightning's Trainer then finds the group initialised and
trains DDP / FSDP over the same ranks (`lutra.training.fit.train_round`).

Every collective here has an error channel: a rank whose function raised sends its exception instead of a result,
and every rank raises (the failing rank its own exception, the others `PeerError` naming it), so one rank's error
stops the run on all of them instead of leaving the others waiting in a collective. A rank that dies outright
(SIGKILL, OOM) is the launcher's to handle: torchrun stops the other ranks and exits non-zero, and srun does with
`--kill-on-bad-exit=1`.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from dataclasses import dataclass
from datetime import timedelta

log = logging.getLogger(__name__)

TIMEOUT = timedelta(hours=2)
"""A collective waits this long for the slowest rank (a 7-8B rank loading its base, a long execution shard)."""
_OBJECTS = None  # the gloo group object collectives use (None: the default group, gloo itself on CPUs)


class PeerError(RuntimeError):
    """Raised on every rank when another rank's shard of a collective step failed (its error is in the message)."""


@dataclass(frozen=True)
class World:
    """This process's place among the ranks a launcher started (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    node_rank: int = 0
    launcher: str = "none"
    """none | torchrun | slurm"""

    @property
    def nodes(self) -> int:
        return self.size // self.local_size

    @property
    def main(self) -> bool:
        return self.rank == 0

    def __str__(self) -> str:
        return (f"rank {self.rank} of {self.size} ({self.launcher}: node {self.node_rank} of {self.nodes}, "
                f"local rank {self.local_rank} of {self.local_size})")


def _leading_int(value: str) -> int:
    m = re.match(r"\d+", value or "")
    return int(m.group()) if m else 0


def launched() -> World:
    """The world the launcher announces in this process's environment; no process group is created here.

    torchrun sets TORCHELASTIC_RUN_ID with RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE / GROUP_RANK; srun sets
    SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID / SLURM_NODEID / SLURM_NTASKS_PER_NODE (an interactive job named
    `bash` or `interactive` is not a launcher, as in Lightning's SLURMEnvironment).
    """
    env = os.environ
    if "TORCHELASTIC_RUN_ID" in env and "WORLD_SIZE" in env:
        world = World(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]),
                      int(env["LOCAL_WORLD_SIZE"]), int(env.get("GROUP_RANK", "0")), "torchrun")
    elif (int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env
          and env.get("SLURM_JOB_NAME") not in ("bash", "interactive")):
        size = int(env["SLURM_NTASKS"])
        per_node = _leading_int(env.get("SLURM_NTASKS_PER_NODE", "")) or _leading_int(env.get("SLURM_TASKS_PER_NODE", ""))
        world = World(int(env["SLURM_PROCID"]), size, int(env.get("SLURM_LOCALID", "0")), per_node or size,
                      int(env.get("SLURM_NODEID", "0")), "slurm")
    else:
        return World()
    if world.size % world.local_size:
        raise RuntimeError(f"{world.launcher} started {world.size} ranks, {world.local_size} on this node: lutra needs "
                           "the same number of ranks on every node (torchrun --nproc-per-node, srun --ntasks-per-node)")
    return world


def rank_from_env() -> int:
    """This process's global rank as the launcher announces it (0 without one), without importing torch."""
    try:
        return launched().rank
    except (RuntimeError, ValueError, KeyError):
        return 0


def check_config(cfg, world: World) -> None:
    """What a data-parallel world needs of the config, and what trainer.num_nodes > 1 needs of the launcher (the
    loop's check before anything loads)."""
    from lutra.config import ConfigError

    t = cfg.trainer
    if world.size == 1:
        if t.num_nodes > 1:
            raise ConfigError(
                f"trainer.num_nodes: {t.num_nodes} needs ranks started on every node, and this process has none: launch "
                f"it with torchrun on each node (torchrun --nnodes={t.num_nodes} --nproc-per-node=<GPUs per node> "
                "--rdzv-backend=c10d --rdzv-endpoint=<host>:<port> -m lutra.train ...) or with srun (--nodes="
                f"{t.num_nodes} --ntasks-per-node=<GPUs per node>): no RANK / WORLD_SIZE (torchrun) or SLURM_NTASKS > 1 "
                "(srun) in its environment. See docs/gpu.md, \"Data-parallel rounds\".")
        return
    if t.num_nodes not in (1, world.nodes):
        raise ConfigError(f"trainer.num_nodes: {t.num_nodes}, but {world.launcher} started {world.nodes} node(s) "
                          f"({world.size} ranks, {world.local_size} per node): drop the key or set it to {world.nodes}")
    b = cfg.method.batch_size
    if b % world.size:
        raise ConfigError(f"method.batch_size: {b} pairs is the global batch of a data-parallel round and must split "
                          f"evenly over the {world.size} ranks; use a multiple of {world.size}")
    tp = cfg.vllm_tensor_parallel_size or 1
    if cfg.sampler != "hf" and world.local_size % tp:
        raise ConfigError(f"vllm_tensor_parallel_size: {tp} must divide the {world.local_size} ranks per node (one "
                          "engine spans GPUs of one node)")


def cluster_environment(world: World):
    """Lightning's own ClusterEnvironment for the launcher that started `world` (its ranks come from the environment,
    so Lightning starts no processes of its own)."""
    if world.launcher == "torchrun":
        from lightning.pytorch.plugins.environments import TorchElasticEnvironment

        return TorchElasticEnvironment()
    if world.launcher == "slurm":
        from lightning.pytorch.plugins.environments import SLURMEnvironment

        # lutra resumes from its manifest; Lightning's SIGUSR1 requeue would write its own checkpoint instead
        return SLURMEnvironment(auto_requeue=False)
    raise ValueError(f"no cluster environment for a world started by {world.launcher!r}")


def init(world: World, device: str) -> None:
    """Join `world`'s process group (nothing for one process): nccl on `device` cuda, else gloo."""
    global _OBJECTS
    import torch
    import torch.distributed as dist

    if world.size == 1 or dist.is_initialized():
        return
    cuda = device == "cuda"
    if cuda:
        torch.cuda.set_device(world.local_rank)
    env = cluster_environment(world)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = env.main_address, str(env.main_port)
    log.info("joining %d ranks at %s:%s as %s", world.size, os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"], world)
    dist.init_process_group("nccl" if cuda else "gloo", rank=world.rank, world_size=world.size, timeout=TIMEOUT)
    _OBJECTS = dist.new_group(backend="gloo", timeout=TIMEOUT) if cuda else None


def close(world: World) -> None:
    """Leave the process group `init` joined (a local call: safe when another rank has died)."""
    global _OBJECTS
    import torch.distributed as dist

    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
    _OBJECTS = None


def _portable(exc: BaseException, rank: int) -> BaseException:
    """`exc` if it survives pickling, else a PeerError with its type and message."""
    try:
        return pickle.loads(pickle.dumps(exc))
    except Exception:
        return PeerError(f"rank {rank}: {type(exc).__name__}: {exc}")


def _peer(rank: int, exc: BaseException) -> PeerError:
    return PeerError(f"stopped because rank {rank} failed: {type(exc).__name__}: {exc}")


def all_gather(world: World, fn) -> list:
    """fn() on every rank; every rank gets the list of all ranks' results, in rank order ([fn()] for one process)."""
    if world.size == 1:
        return [fn()]
    import torch.distributed as dist

    err = None
    try:
        mine = ("ok", fn())
    except Exception as e:
        err, mine = e, ("err", _portable(e, world.rank))
    parts: list = [None] * world.size
    dist.all_gather_object(parts, mine, group=_OBJECTS)
    if err is not None:
        raise err
    for r, (tag, value) in enumerate(parts):
        if tag == "err":
            raise _peer(r, value)
    return [value for _, value in parts]


def on_main(world: World, fn):
    """fn() on rank 0 alone; its result is broadcast to every rank (fn() itself for one process)."""
    if world.size == 1:
        return fn()
    import torch.distributed as dist

    box, err = [None], None
    if world.main:
        try:
            box[0] = ("ok", fn())
        except Exception as e:
            err, box[0] = e, ("err", _portable(e, 0))
    dist.broadcast_object_list(box, src=0, group=_OBJECTS)
    if err is not None:
        raise err
    tag, value = box[0]
    if tag == "err":
        raise _peer(0, value)
    return value


def barrier(world: World) -> None:
    all_gather(world, lambda: None)


def merge(world: World, fn) -> list:
    """fn() returns a list with None where another rank computes the item; every rank gets the filled list."""
    parts = all_gather(world, fn)
    if world.size == 1:
        return parts[0]
    return [next((p[i] for p in parts if p[i] is not None), None) for i in range(len(parts[0]))]


def split_map(world: World, items: list, fn, key=None) -> list:
    """fn(list of items) -> their results, in order, run by each rank on its share of `items`; every rank gets all
    results in the order of `items`. key(item): items with one key go to one rank (e.g. a problem's samples, which
    the executor deduplicates); groups are dealt out in order of first appearance. One process: fn(items)."""
    if world.size == 1:
        return fn(items)
    group: dict = {}
    owner = [group.setdefault(key(it) if key else i, len(group)) % world.size for i, it in enumerate(items)]
    mine = [i for i, r in enumerate(owner) if r == world.rank]

    def part():
        out = fn([items[i] for i in mine])
        if len(out) != len(mine):
            raise RuntimeError(f"split_map: {len(out)} results for {len(mine)} items")
        return mine, out

    results: list = [None] * len(items)
    for idx, out in all_gather(world, part):
        for i, v in zip(idx, out):
            results[i] = v
    return results
