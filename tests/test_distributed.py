"""Data-parallel rounds, piece by piece and without a launcher (the whole loop under torchrun: test_dp_rounds.py).

- the world a launcher announces (torchrun, srun) and what the loop refuses before anything loads;
- sharded sampling and greedy decoding: the ranks' union is bit-identical to one process;
- the split global batch: per-rank slices weighted so that the mean over ranks (DDP's gradient average, sync_dist's
  metric average) is the one-process batch's loss and gradient, short last batch and token_mean included;
- the collectives' error channel on two real gloo processes;
- vLLM's data-parallel share of the prompts and its engine arguments (a stand-in for vllm: no GPU here).
"""

import copy
import os
import socket
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir

from lutra import distributed
from lutra.config import ConfigError, MethodConfig, register_configs
from lutra.distributed import World

CONF = Path(__file__).resolve().parents[1] / "conf"
SLURM = {"SLURM_NTASKS": "8", "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
         "SLURM_NTASKS_PER_NODE": "4", "SLURM_JOB_NAME": "lutra", "SLURM_NODELIST": "gpu[3-4]"}
TORCHRUN = {"TORCHELASTIC_RUN_ID": "x", "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
            "GROUP_RANK": "1"}


@pytest.fixture
def clean_env(monkeypatch):
    for key in [*SLURM, *TORCHRUN]:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_world_from_the_launchers_environment(clean_env):
    assert distributed.launched() == World()
    for key, value in TORCHRUN.items():
        clean_env.setenv(key, value)
    assert distributed.launched() == World(3, 4, 1, 2, 1, "torchrun")
    for key in TORCHRUN:
        clean_env.delenv(key)
    for key, value in SLURM.items():
        clean_env.setenv(key, value)
    w = distributed.launched()
    assert w == World(5, 8, 1, 4, 1, "slurm") and w.nodes == 2 and not w.main
    assert distributed.cluster_environment(w).main_address == "gpu3"  # Lightning's SLURMEnvironment reads the nodelist
    clean_env.setenv("SLURM_JOB_NAME", "interactive")  # salloc + bash: not a launcher (Lightning's rule)
    assert distributed.launched() == World()
    clean_env.setenv("SLURM_JOB_NAME", "lutra")
    clean_env.setenv("SLURM_NTASKS_PER_NODE", "3")
    with pytest.raises(RuntimeError, match="same number of ranks on every node"):
        distributed.launched()


def _cfg(*overrides):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def test_several_nodes_without_a_launcher_name_what_is_missing():
    from lutra.loop import check_run_config

    with pytest.raises(ConfigError) as e:
        check_run_config(_cfg("trainer.num_nodes=2"), World())
    assert "torchrun --nnodes=2" in str(e.value) and "srun" in str(e.value) and "RANK" in str(e.value)
    check_run_config(_cfg("trainer.num_nodes=2", "method.batch_size=8"), World(0, 8, 0, 4, 0, "slurm"))
    with pytest.raises(ConfigError, match="started 2 node"):
        check_run_config(_cfg("trainer.num_nodes=3", "method.batch_size=8"), World(0, 8, 0, 4, 0, "slurm"))
    with pytest.raises(ConfigError, match=r"method\.batch_size: 6 .* multiple of 4"):
        check_run_config(_cfg("method.batch_size=6"), World(0, 4, 0, 4, 0, "torchrun"))
    with pytest.raises(ConfigError, match="vllm_tensor_parallel_size: 3"):
        check_run_config(_cfg("sampler=vllm", "vllm_tensor_parallel_size=3"), World(0, 4, 0, 4, 0, "torchrun"))


def _prompts(tokenizer, model_cfg, n=11):
    from lutra.policy.prompts import format_prompt

    return [format_prompt(tokenizer, f"How many singers are older than {i}?" + " Please." * (i % 4), model_cfg)
            for i in range(n)]


def test_sharded_sampling_is_the_one_process_sampling(tokenizer, small_model, model_cfg):
    """Every rank decodes whole batches of the one-process batching with their seeds: the union is bit-identical."""
    from lutra.policy.sampling import generate, greedy

    prompts = _prompts(tokenizer, model_cfg)
    kw = dict(n=3, temperature=1.0, top_p=0.95, max_new_tokens=12, batch_size=3, seed=7, progress=False,
              return_finished=True)
    whole = generate(small_model, tokenizer, prompts, **kw)
    for world in (2, 3):
        parts = [generate(small_model, tokenizer, prompts, shard=(r, world), **kw) for r in range(world)]
        for which in (0, 1):  # texts, finished flags
            got = [next(p[which][i] for p in parts if p[which][i] is not None) for i in range(len(prompts))]
            assert got == whole[which]
            assert all(sum(p[which][i] is not None for p in parts) == 1 for i in range(len(prompts)))
    one = greedy(small_model, tokenizer, prompts, max_new_tokens=12, batch_size=4, progress=False)
    halves = [greedy(small_model, tokenizer, prompts, max_new_tokens=12, batch_size=4, progress=False, shard=(r, 2))
              for r in range(2)]
    assert [a if a is not None else b for a, b in zip(*halves)] == one


def _pairs(tokenizer, model_cfg, n):
    from lutra.policy.prompts import format_prompt
    from lutra.training.data import encode_pairs

    records = [{"prompt": format_prompt(tokenizer, f"Singers older than {i}?", model_cfg),
                "chosen": f"SELECT COUNT(*) FROM singer WHERE age > {i}" + " AND age < 90" * (i % 3),
                "rejected": "SELECT COUNT(*) FROM singer" + " WHERE age < 30" * (i % 2)} for i in range(n)]
    return encode_pairs(tokenizer, records, model_cfg)


@pytest.mark.parametrize(("world", "loss", "reduction"), [(2, "dpo_nll", "seq_mean"), (3, "dpo_nll", "token_mean"),
                                                          (4, "sft", "seq_mean"), (2, "sft", "token_mean")])
def test_split_batch_mean_over_ranks_is_the_one_process_batch(tokenizer, small_model, model_cfg, world, loss,
                                                              reduction):
    """10 pairs in batches of 4 (the last one holds 2, so with 3 or 4 ranks a rank gets an empty slice): for every
    step, the mean over ranks of the weighted slice losses, gradients and logged metrics equals the global
    batch's, to float summation order. What DDP then averages is what one process steps with."""
    from peft import get_peft_model

    from lutra.policy.logprobs import reference_logps
    from lutra.policy.models import lora_config
    from lutra.training.data import BucketSampler, PairDataset, bucket_key, collate, ordered_batches
    from lutra.training.module import PolicyModule

    torch.manual_seed(0)
    policy = get_peft_model(copy.deepcopy(small_model), lora_config(model_cfg)).eval()  # dropout off, as in fit
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    sft = loss == "sft"
    enc = _pairs(tokenizer, model_cfg, 10)
    if sft:
        enc.rejected = [None] * len(enc.chosen)
    ref = None if sft else reference_logps(policy, ordered_batches(enc, 4, tokenizer.pad_token_id), use_base=True,
                                           progress=False)
    ds = PairDataset(enc, ref)
    module = PolicyModule(policy, MethodConfig(name=loss, loss=loss, nll_reduction=reduction, beta=0.5,
                                               dpo_weight=0.3, nll_weight=1.0), lr=1e-3, total_steps=1)
    keys, lengths = [bucket_key(p) for p in enc.prompts], [len(c) for c in enc.chosen]
    whole = BucketSampler(keys, 4, seed=3)
    ranks = []
    for r in range(world):
        s = BucketSampler(keys, 4, seed=3, split=True, lengths=lengths)
        s._world = lambda r=r: (world, r)
        ranks.append(s._batches())
    params = [p for n, p in policy.named_parameters() if "lora_" in n]

    def step(items):
        logged = {}
        module.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
        module.log_dict = lambda d, **kw: logged.update({k: float(v) for k, v in d.items()})
        policy.zero_grad()
        value = module.training_step(collate([ds[i] for i in items], tokenizer.pad_token_id), 0)
        value.backward()
        return float(value), [p.grad.clone() for p in params], logged

    batches = whole._batches()
    assert len(batches) == 3 and all(len(b) == len(batches) for b in ranks)  # every rank steps every time
    for b, batch in enumerate(batches):
        slices = [ranks[r][b] for r in range(world)]
        assert sorted(i for s in slices for i, *scale in s if scale[0] > 0) == sorted(batch)  # a partition
        g_loss, g_grads, g_logged = step(batch)
        parts = [step(s) for s in slices]
        torch.testing.assert_close(sum(p[0] for p in parts) / world, g_loss, rtol=1e-5, atol=1e-7)
        for j in range(len(params)):
            torch.testing.assert_close(sum(p[1][j] for p in parts) / world, g_grads[j], rtol=1e-4, atol=1e-7)
        for name, value in g_logged.items():
            torch.testing.assert_close(sum(p[2][name] for p in parts) / world, value, rtol=1e-5, atol=1e-7)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bad_key():
    raise ConfigError("bad key")


def _collectives(rank: int, port: int, out: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    world = World(rank, 2, rank, 2, 0, "torchrun")
    distributed.init(world, "cpu")
    got = {"gather": distributed.all_gather(world, lambda: rank * 10),
           "main": distributed.on_main(world, lambda: f"from {rank}"),
           "merge": distributed.merge(world, lambda: [i if i % 2 == rank else None for i in range(5)]),
           "split": distributed.split_map(world, list("abcdef"), lambda part: [(x, rank) for x in part],
                                          key=lambda x: x in "abc")}
    try:
        distributed.all_gather(world, lambda: 1 / 0 if rank == 1 else 1)
    except Exception as e:  # noqa: BLE001 - what each rank raised is the result
        got["peer"] = f"{type(e).__name__}: {e}"
    try:
        distributed.on_main(world, _bad_key)
    except Exception as e:  # noqa: BLE001
        got["main_error"] = f"{type(e).__name__}: {e}"
    torch.save(got, Path(out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_collectives_and_their_error_channel_on_two_gloo_processes(tmp_path):
    """Results arrive in order on every rank; a rank's failure stops the others with a PeerError naming it, and the
    failing rank raises its own exception (a ConfigError on rank 0 stays a ConfigError there)."""
    import torch.multiprocessing as mp

    mp.start_processes(_collectives, args=(_free_port(), str(tmp_path)), nprocs=2, start_method="spawn", join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for got in (r0, r1):
        assert got["gather"] == [0, 10] and got["main"] == "from 0" and got["merge"] == [0, 1, 2, 3, 4]
        # items with one key go to one rank, keys dealt out in order of first appearance (False first: "a" is in)
        assert got["split"] == [("a", 0), ("b", 0), ("c", 0), ("d", 1), ("e", 1), ("f", 1)]
    assert r1["peer"].startswith("ZeroDivisionError") and r0["peer"].startswith("PeerError: stopped because rank 1")
    assert r0["main_error"] == "ConfigError: bad key" and "rank 0 failed: ConfigError: bad key" in r1["main_error"]


class _FakeLLM:
    """What lutra.policy.vllm uses of vllm.LLM: each completion's tokens are its prompt's seed, so a record names the
    request it came from."""

    made: list = []

    def __init__(self, **kw):
        self.kw = kw
        _FakeLLM.made.append(kw)

    def generate(self, inputs, params, lora_request=None, use_tqdm=True):
        return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=[p.kw["seed"] % 300], finish_reason="stop")
                                         for _ in range(p.kw["n"])]) for p in params]


def test_vllm_engine_per_rank_samples_its_data_parallel_share(monkeypatch, tokenizer, tmp_path):
    from lutra.policy import vllm as vb

    fake = ModuleType("vllm")
    fake.LLM, fake.SamplingParams, fake.__version__ = _FakeLLM, lambda **kw: SimpleNamespace(kw=kw), "0.0"
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setattr(vb, "_ENGINES", {})
    prompts = [f"question {i}" for i in range(5)]
    kw = dict(n=2, temperature=0.8, top_p=0.95, max_new_tokens=4, seed=1)
    model = str(tmp_path)  # a directory without generation_config.json: no hub look-up for stop ids
    one, _ = vb.generate(model, None, tokenizer, prompts, **kw)
    assert _FakeLLM.made[-1]["tensor_parallel_size"] == 1 and "distributed_executor_backend" not in _FakeLLM.made[-1]
    texts = {}
    for rank in range(4):  # 4 ranks, 2 per engine: 2 engines, prompts dealt out by engine
        monkeypatch.setattr(vb, "_ENGINES", {})
        got, fin = vb.generate(model, None, tokenizer, prompts, world=World(rank, 4, rank, 4, 0, "torchrun"),
                               tensor_parallel_size=2, **kw)
        assert _FakeLLM.made[-1]["distributed_executor_backend"] == "external_launcher"
        assert _FakeLLM.made[-1]["data_parallel_size"] == 2
        assert [i for i, t in enumerate(got) if t is not None] == ([0, 2, 4] if rank < 2 else [1, 3])
        texts[rank] = got
    assert texts[0] == texts[1]  # one engine, one answer
    assert [texts[0][i] if i % 2 == 0 else texts[2][i] for i in range(5)] == one  # each prompt's own seed
    assert vb.engine_kwargs(1, 8) == {"tensor_parallel_size": 8}
    with pytest.raises(ValueError, match="must divide"):
        vb.engine_kwargs(8, 3)
