"""Trainer configs resolve to Lightning's own strategies, launched the way lutra's one-process loop needs."""

import copy
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lutra.config import ConfigError, TrainerConfig, register_configs
from lutra.training import strategies

CONF = Path(__file__).resolve().parents[1] / "conf"
register_configs()

# every shipped trainer option and how its fit processes start; a new file must be added here
LAUNCHERS = {"auto": "none", "cpu": "none", "gpu": "none", "ddp": "spawn", "ddp_cpu": "spawn",
             "fsdp": "relaunch", "deepspeed_zero2": "relaunch", "deepspeed_zero3": "relaunch"}


def trainer_cfg(option: str, **overrides) -> TrainerConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"trainer={option}"])
    tc = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainerConfig), cfg.trainer))
    for k, v in overrides.items():
        setattr(tc, k, v)
    return tc


def test_every_shipped_trainer_option_is_classified():
    assert {p.stem for p in (CONF / "trainer").glob("*.yaml")} == set(LAUNCHERS)


@pytest.mark.parametrize(("option", "mode"), sorted(LAUNCHERS.items()))
def test_launcher_of_each_option(option, mode):
    assert strategies.launcher(trainer_cfg(option)) == mode


@pytest.mark.parametrize("option", ["fsdp", "deepspeed_zero2", "deepspeed_zero3"])
def test_relaunching_strategies_refused_unless_the_caller_handles_worker_ranks(option):
    tc = trainer_cfg(option)
    with pytest.raises(ConfigError, match=r"trainer\.strategy"):
        strategies.trainer_kwargs(tc)
    kw = strategies.trainer_kwargs(tc, relaunch_ok=True)
    assert kw["precision"] == "bf16-mixed" and kw["accelerator"] == "gpu"


def test_several_devices_under_strategy_auto_or_nodes_relaunch():
    assert strategies.launcher(trainer_cfg("cpu", devices=2)) == "relaunch"  # Lightning picks popen ddp
    assert strategies.launcher(trainer_cfg("ddp_cpu", num_nodes=2)) == "relaunch"


def test_deepspeed_stages_map_to_lightning_registry_names():
    assert strategies.strategy(trainer_cfg("deepspeed_zero2")) == "deepspeed_stage_2"
    assert strategies.strategy(trainer_cfg("deepspeed_zero3")) == "deepspeed_stage_3"
    with pytest.raises(ConfigError, match="deepspeed_stage"):
        strategies.strategy(trainer_cfg("deepspeed_zero2", deepspeed_stage=None))


def test_fsdp_wraps_each_decoder_layer_and_keeps_original_params(small_model):
    from lightning.pytorch.strategies import FSDPStrategy

    s = strategies.strategy(trainer_cfg("fsdp"))
    assert isinstance(s, FSDPStrategy)
    assert s.kwargs["use_orig_params"] is True
    wrapped = [n for n, m in small_model.named_modules() if strategies.is_decoder_layer(m)]
    assert wrapped == [f"model.layers.{i}" for i in range(small_model.config.num_hidden_layers)]


def test_spawn_ddp_keeps_its_own_ranks_inside_a_slurm_job(monkeypatch):
    from lightning.pytorch.plugins.environments import LightningEnvironment, SLURMEnvironment

    # what submitit sets for a one-task job: Lightning would take every spawned rank from SLURM_PROCID (all 0)
    for k, v in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "lutra", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
                 "SLURM_NODEID": "0", "SLURM_JOB_ID": "1", "SLURM_NTASKS_PER_NODE": "1"}.items():
        monkeypatch.setenv(k, v)
    plain = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False, enable_checkpointing=False)
    assert isinstance(plain.strategy.cluster_environment, SLURMEnvironment)  # the pitfall
    ours = L.Trainer(**strategies.trainer_kwargs(trainer_cfg("ddp_cpu")), logger=False, enable_checkpointing=False)
    assert type(ours.strategy.cluster_environment) is LightningEnvironment
    assert strategies.launcher_of(ours) == "spawn" and ours.num_devices == 2


def test_precision_auto_and_data_sharding_left_to_lutra():
    kw = strategies.trainer_kwargs(trainer_cfg("auto"))
    assert kw["precision"] == ("bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported()
                               else "32-true")
    assert kw["use_distributed_sampler"] is False  # lutra's bucketing batch sampler splits batches itself
    assert strategies.trainer_kwargs(trainer_cfg("gpu"))["precision"] == "bf16-mixed"


def test_world_size_resolves_devices():
    assert strategies.world_size(trainer_cfg("ddp_cpu")) == 2
    assert strategies.world_size(trainer_cfg("ddp_cpu", devices="0,1,2")) == 3
    assert strategies.world_size(trainer_cfg("ddp_cpu", devices=[0, 1], num_nodes=2)) == 4
    expected = max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1
    assert strategies.world_size(trainer_cfg("ddp")) == expected


@pytest.mark.parametrize(("env", "rank"), [
    ({}, 0),
    ({"RANK": "3", "LOCAL_RANK": "1"}, 3),  # torchrun
    ({"LOCAL_RANK": "1", "NODE_RANK": "1", "LOCAL_WORLD_SIZE": "4"}, 5),  # Lightning's subprocess launcher
    ({"SLURM_NTASKS": "8", "SLURM_PROCID": "6"}, 6),  # srun with one task per GPU
    ({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, 0),  # a one-task submitit job
])
def test_process_rank_from_launcher_environment(monkeypatch, env, rank):
    for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "LOCAL_WORLD_SIZE", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert strategies.process_rank() == rank


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_bf16_fit_moves_fp32_lora_weights(tokenizer, small_model, model_cfg):
    from peft import get_peft_model

    from lutra.config import MethodConfig
    from lutra.policy.logprobs import reference_logps
    from lutra.policy.models import lora_config
    from lutra.policy.prompts import format_prompt
    from lutra.training.data import PreferenceDataModule, encode_pairs, ordered_batches
    from lutra.training.module import PolicyModule

    policy = get_peft_model(copy.deepcopy(small_model).to(torch.bfloat16), lora_config(model_cfg)).cuda()
    recs = [{"prompt": format_prompt(tokenizer, f"How many singers are older than {i}?", model_cfg),
             "chosen": f"SELECT COUNT(*) FROM singer WHERE age > {i}", "rejected": "SELECT 1"} for i in range(4)]
    enc = encode_pairs(tokenizer, recs, model_cfg)
    ref = reference_logps(policy, ordered_batches(enc, 2, tokenizer.pad_token_id), use_base=False, progress=False)
    before = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_" in n}
    assert all(p.dtype == torch.float32 for p in before.values())  # peft keeps adapters in fp32 on a bf16 base
    trainer = L.Trainer(**strategies.trainer_kwargs(trainer_cfg("gpu", enable_progress_bar=False)), max_steps=2,
                        logger=False, enable_checkpointing=False, enable_model_summary=False)
    steps = strategies.fit(trainer, PolicyModule(policy, MethodConfig(name="c", batch_size=2), lr=1e-3, total_steps=2),
                           PreferenceDataModule(enc, ref, 2, tokenizer.pad_token_id, 0))
    assert steps == 2 and torch.isfinite(trainer.callback_metrics["train/loss"])
    assert all(not torch.equal(p.detach(), before[n]) for n, p in policy.named_parameters() if "lora_" in n)
    # Lightning's teardown moves the module to the CPU; strategies.fit puts it back where the loop keeps it
    assert {p.device.type for p in policy.parameters()} == {"cuda"}


@pytest.mark.parametrize(("launcher", "target"), [("submitit_slurm", "SlurmLauncher"),
                                                  ("submitit_local", "LocalLauncher")])
def test_submitit_launchers_compose_with_trainer_ddp(launcher, target):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True, overrides=[
            f"hydra/launcher={launcher}", "trainer=ddp", "hydra.launcher.tasks_per_node=1",
            "hydra.launcher.timeout_min=720", "hydra.launcher.cpus_per_task=16",
            *(["hydra.launcher.gpus_per_node=4", "hydra.launcher.partition=gpu"] if launcher == "submitit_slurm" else [])])
    assert cfg.hydra.launcher._target_.endswith(target)
    assert cfg.hydra.launcher.tasks_per_node == 1  # one task per node: ddp_spawn starts the GPU workers itself
    assert strategies.launcher(trainer_cfg("ddp")) == "spawn"


@pytest.mark.parametrize("option", ["fsdp", "deepspeed_zero3", "ddp_cpu"])
def test_worker_mode_on_several_nodes_refused_before_any_model_loads(option, monkeypatch):
    """The loop's torchrun workers are single-node; several nodes would need srun to start them."""
    from lutra import loop
    from lutra.policy import models

    monkeypatch.setattr(models, "load_base", lambda *a, **k: pytest.fail("a model was loaded"))
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"trainer={option}", "trainer.num_nodes=2"])
    with pytest.raises(ConfigError, match=r"trainer\.num_nodes: 2"):
        loop.run(cfg)


def test_lora_state_keys_are_the_peft_models_own(small_model, model_cfg):
    """What rank 0 saves after a worker fit: only LoRA weights, keyed as peft's state dict keys them (so
    `save_pretrained(state_dict=...)` writes the same file as saving the model itself)."""
    from lutra.config import MethodConfig
    from lutra.policy.models import new_adapter
    from lutra.training.module import PolicyModule
    from lutra.training.worker import lora_state

    model = new_adapter(copy.deepcopy(small_model), model_cfg, seed=0)
    module = PolicyModule(model, MethodConfig(), lr=1e-3, total_steps=1)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    trainer.strategy.connect(module)
    state = lora_state(trainer, module)
    want = {n for n in model.state_dict() if "lora_" in n}
    assert set(state) == want and want
    for n, t in state.items():
        assert torch.equal(t, model.state_dict()[n])
