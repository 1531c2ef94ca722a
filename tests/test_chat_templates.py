"""Token boundaries through lutra.policy.prompts for each chat-template family, on tokenizers built here (no hub).

Each family is a byte-level or SentencePiece-style BPE trained on a few lines, given its hub checkpoint's
special tokens, BOS/EOS settings and real chat template (transcribed from the tokenizer_config.json files
on the hub), saved with save_pretrained, and loaded back through lutra.policy.models.load_tokenizer as a hub
tokenizer is. The checks follow the anchors' checklist (research/anchors.md, B.5): the prompt is an exact prefix
of every training sequence, exactly one BOS, the completion is the template's own assistant turn and ends with
the token that closes it (EOS without a template), which is also where the sampler stops, the system prompt
appears once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from lutra.config import ModelConfig
from lutra.policy.models import load_tokenizer
from lutra.policy.prompts import encode_prompt, format_prompt
from lutra.training.data import collate, encode_pairs

QUESTION = "CREATE TABLE singer (singer_id INTEGER, name TEXT, country TEXT, age INTEGER);\nWhich singers are from France?"
CHOSEN = "SELECT name FROM singer WHERE country = 'France'"
REJECTED = "SELECT name FROM singer"
SYSTEM = "You write SQLite queries only."

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
QWEN25 = (  # Qwen2.5(-Coder)-Instruct; its `tools` branch is left out (lutra never passes tools)
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "{%- else %}\n"
    "    {{- '<|im_start|>system\\n" + QWEN_DEFAULT_SYSTEM + "<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)
DEEPSEEK_DEFAULT_SYSTEM = (
    "You are an AI programming assistant, utilizing the Deepseek Coder model, developed by Deepseek Company, and "
    "you only answer questions related to computer science. For politically sensitive questions, security and "
    "privacy issues, and other non-computer science questions, you will refuse to answer"
)
DEEPSEEK = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{%- set ns = namespace(found=false) -%}{%- for message in messages -%}{%- if message['role'] == 'system' -%}"
    "{%- set ns.found = true -%}{%- endif -%}{%- endfor -%}{{bos_token}}{%- if not ns.found -%}"
    "{{'" + DEEPSEEK_DEFAULT_SYSTEM + "\\n'}}{%- endif %}{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{{ message['content'] }}{%- else %}{%- if message['role'] == 'user' %}"
    "{{'### Instruction:\\n' + message['content'] + '\\n'}}{%- else %}"
    "{{'### Response:\\n' + message['content'] + '\\n<|EOT|>\\n'}}{%- endif %}{%- endif %}{%- endfor %}"
    "{% if add_generation_prompt %}{{'### Response:'}}{% endif %}"
)
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")


@dataclass
class Family:
    name: str
    pieces: str  # byte_level | metaspace (SentencePiece, no dummy prefix) | metaspace_prefix (dummy prefix)
    eos: str
    bos: str | None = None
    add_bos: bool = False  # the tokenizer itself (post-processor) puts BOS in front
    pad: str | None = None
    specials: list[str] = field(default_factory=list)
    template: str | None = None
    turn_end: str | None = None  # the token the template closes an assistant turn with
    split: str | None = None
    default_system: str | None = None


FAMILIES = {
    # meta-llama/Meta-Llama-3-8B-Instruct: eos <|eot_id|> (its tokenizer_config), no pad (lutra uses eos)
    "llama3": Family("llama3", "byte_level", "<|eot_id|>", "<|begin_of_text|>", True, None,
                     ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
                     LLAMA3, "<|eot_id|>", LLAMA3_SPLIT),
    # meta-llama/Meta-Llama-3-8B (base): same tokenizer, eos <|end_of_text|>, no chat template
    "llama3_base": Family("llama3_base", "byte_level", "<|end_of_text|>", "<|begin_of_text|>", True, None,
                          ["<|begin_of_text|>", "<|end_of_text|>"], None, None, LLAMA3_SPLIT),
    # google/gemma-7b-it: SentencePiece-style BPE without dummy prefix, eos <eos>, turns end with <end_of_turn>
    "gemma": Family("gemma", "metaspace", "<eos>", "<bos>", True, "<pad>",
                    ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"], GEMMA, "<end_of_turn>"),
    # Qwen/Qwen2.5-Coder-7B-Instruct: ChatML, no BOS, eos <|im_end|>, pad <|endoftext|>, default system message
    "chatml": Family("chatml", "byte_level", "<|im_end|>", None, False, "<|endoftext|>",
                     ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], QWEN25, "<|im_end|>", QWEN_SPLIT,
                     QWEN_DEFAULT_SYSTEM),
    # deepseek-ai/deepseek-coder-6.7b-instruct: BOS from both tokenizer and template, eos <|EOT|>
    "deepseek": Family("deepseek", "byte_level", "<|EOT|>", "<｜begin▁of▁sentence｜>", True, None,
                       ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<|EOT|>"], DEEPSEEK, "<|EOT|>", None,
                       DEEPSEEK_DEFAULT_SYSTEM),
    # bigcode/starcoder2-7b: base, no template, bos = eos = <|endoftext|> and no BOS added
    "starcoder2": Family("starcoder2", "byte_level", "<|endoftext|>", "<|endoftext|>", False, None,
                         ["<|endoftext|>"]),
    # Llama-2 / Mistral / CodeLlama base: SentencePiece with a dummy prefix ("▁" before the text), BOS <s>
    "sp_prefix_base": Family("sp_prefix_base", "metaspace_prefix", "</s>", "<s>", True, None,
                             ["<unk>", "<s>", "</s>"]),
}
CHAT = [n for n, f in FAMILIES.items() if f.template]


def _build(fam: Family, out_dir) -> None:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    unk = "<unk>" if "<unk>" in fam.specials else None
    tk = Tokenizer(models.BPE(unk_token=unk))
    if fam.pieces == "byte_level":
        split = pre_tokenizers.Split(Regex(fam.split), behavior="isolated") if fam.split else None
        bl = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split is None)
        tk.pre_tokenizer = pre_tokenizers.Sequence([split, bl]) if split else bl
        tk.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        scheme = "first" if fam.pieces == "metaspace_prefix" else "never"
        tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=True)
        tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=scheme)
        alphabet = sorted(set("".join(_texts())) | {"▁"})
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=fam.specials, initial_alphabet=alphabet,
                                  show_progress=False)
    tk.train_from_iterator(_texts(), trainer)
    if fam.add_bos:
        tk.post_processor = processors.TemplateProcessing(
            single=f"{fam.bos} $A", pair=f"{fam.bos} $A $B", special_tokens=[(fam.bos, tk.token_to_id(fam.bos))])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=fam.bos, eos_token=fam.eos, pad_token=fam.pad,
                                  unk_token=unk, clean_up_tokenization_spaces=False)
    if fam.template:
        tok.chat_template = fam.template
    tok.save_pretrained(out_dir)


def _texts() -> list[str]:
    lines = [QUESTION, CHOSEN, REJECTED, SYSTEM, QWEN_DEFAULT_SYSTEM, DEEPSEEK_DEFAULT_SYSTEM,
             "### Instruction:\n", "### Response:\n", "user\n", "model\n", "assistant\n", "system\n"]
    return lines * 10


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    out = {}
    for name, fam in FAMILIES.items():
        d = tmp_path_factory.mktemp(f"tok-{name}")
        _build(fam, d)
        out[name] = load_tokenizer(str(d), _model_cfg())  # AutoTokenizer.from_pretrained, pad fallback
    return out


def _model_cfg(**kw) -> ModelConfig:
    return ModelConfig(name="t", path="local", max_prompt_len=400, max_completion_len=60, **kw)


def _pairs(tok, cfg):
    prompt = format_prompt(tok, QUESTION, cfg)
    enc = encode_pairs(tok, [{"prompt": prompt, "chosen": CHOSEN, "rejected": REJECTED}], cfg)
    assert len(enc.prompts) == 1
    return prompt, enc


def _sequences(tok, enc) -> list[list[int]]:
    """The chosen and rejected training sequences as the model sees them, rebuilt from the collated batch."""
    b = collate([{"i": 0, "prompt": enc.prompts[0], "chosen": enc.chosen[0], "rejected": enc.rejected[0]}],
                tok.pad_token_id)
    full = torch.cat([b["input_ids"][:, :1], b["labels"]], dim=1)
    lengths = [len(enc.prompts[0]) + len(enc.chosen[0]), len(enc.prompts[0]) + len(enc.rejected[0])]
    return [full[i, :n].tolist() for i, n in enumerate(lengths)]


def _stop_id(tok, fam) -> int:
    """The token the template closes an assistant turn with; EOS for a model without a template."""
    return tok.convert_tokens_to_ids(fam.turn_end) if fam.template else tok.eos_token_id


@pytest.mark.parametrize("name", FAMILIES)
def test_template_is_used_exactly_when_the_tokenizer_has_one(tokenizers, name):
    tok, fam = tokenizers[name], FAMILIES[name]
    prompt = format_prompt(tok, QUESTION, _model_cfg())
    if fam.template:
        assert prompt == tok.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False,
                                                 add_generation_prompt=True)
    else:
        assert prompt == QUESTION + "\n"


@pytest.mark.parametrize("name", FAMILIES)
def test_prompt_ids_are_an_exact_prefix_of_every_training_sequence(tokenizers, name):
    tok = tokenizers[name]
    prompt, enc = _pairs(tok, _model_cfg())
    p = encode_prompt(tok, prompt)  # what the sampler feeds the model
    assert enc.prompts[0] == p
    for seq in _sequences(tok, enc):
        assert seq[: len(p)] == p
    # nothing of the rendered prompt is lost or altered by tokenization (BOS aside: lutra places it)
    body = p[1:] if p[0] == tok.bos_token_id else p
    assert tok.decode(body, skip_special_tokens=False) == prompt.removeprefix(tok.bos_token or "")


@pytest.mark.parametrize("name", FAMILIES)
def test_exactly_one_bos_where_the_model_uses_one(tokenizers, name):
    tok, fam = tokenizers[name], FAMILIES[name]
    _, enc = _pairs(tok, _model_cfg())
    for seq in _sequences(tok, enc):
        if fam.add_bos:  # Llama-3, Gemma and DeepSeek templates also write BOS themselves: still one
            assert seq[0] == tok.bos_token_id and seq.count(tok.bos_token_id) == 1
        elif fam.bos is not None and fam.bos == fam.eos:  # StarCoder2: <|endoftext|> only ends the completion
            assert seq.count(tok.bos_token_id) == 1 and seq[-1] == tok.bos_token_id
        else:
            assert tok.bos_token_id is None


@pytest.mark.parametrize("name", FAMILIES)
def test_turn_end_ends_every_completion_and_is_inside_the_loss(tokenizers, name):
    tok, fam = tokenizers[name], FAMILIES[name]
    stop = _stop_id(tok, fam)  # EOS, or the template's own turn end (Gemma: <end_of_turn>, not <eos>)
    _, enc = _pairs(tok, _model_cfg())
    for comp in (enc.chosen[0], enc.rejected[0]):
        assert comp[-1] == stop and comp.count(stop) == 1
    b = collate([{"i": 0, "prompt": enc.prompts[0], "chosen": enc.chosen[0], "rejected": enc.rejected[0]}],
                tok.pad_token_id)
    row = b["loss_mask"][0].nonzero().squeeze(-1)
    assert b["labels"][0, row[-1]].item() == stop  # the model is trained to stop
    assert len(row) == len(enc.chosen[0])


@pytest.mark.parametrize("name", CHAT)
def test_completion_is_the_templates_own_assistant_turn(tokenizers, name):
    """Training sequence == the template's rendering of the conversation with the answer, up to its turn end."""
    tok, fam = tokenizers[name], FAMILIES[name]
    cfg = _model_cfg()
    prompt, enc = _pairs(tok, cfg)
    user = [{"role": "user", "content": QUESTION}]
    full = tok.apply_chat_template(user + [{"role": "assistant", "content": CHOSEN}], tokenize=False)
    assert full.startswith(prompt)
    rest = tok(full[len(prompt):], add_special_tokens=False)["input_ids"]
    end = tok.convert_tokens_to_ids(fam.turn_end)
    assert end in rest
    assert enc.chosen[0] == rest[: rest.index(end) + 1]


@pytest.mark.parametrize("name", [
    *FAMILIES,
])
def test_completion_tokens_are_those_of_the_joint_text(tokenizers, name):
    """Completion ids equal the tail of tokenizing prompt + completion as one text (what the model reads); the
    completion text is the template's assistant turn up to its closing token (the answer alone without one)."""
    tok, fam = tokenizers[name], FAMILIES[name]
    prompt, enc = _pairs(tok, _model_cfg())
    turn = CHOSEN
    if fam.template:
        full = tok.apply_chat_template([{"role": "user", "content": QUESTION}, {"role": "assistant", "content": CHOSEN}],
                                       tokenize=False)
        turn = full[len(prompt):].split(fam.turn_end)[0]  # DeepSeek: "\n" + CHOSEN + "\n"
    joint = tok(prompt + turn, add_special_tokens=False)["input_ids"]
    alone_prompt = tok(prompt, add_special_tokens=False)["input_ids"]
    assert joint[: len(alone_prompt)] == alone_prompt
    assert enc.chosen[0][:-1] == joint[len(alone_prompt):]
    assert enc.chosen[0][-1] == _stop_id(tok, fam)


@pytest.mark.parametrize("name", CHAT)
def test_without_the_template_the_completion_is_the_answer_and_eos(tokenizers, name):
    """use_chat_template: false renders the raw message, so the template's turn layout must not leak in."""
    tok = tokenizers[name]
    cfg = _model_cfg(use_chat_template=False)
    prompt, enc = _pairs(tok, cfg)
    assert prompt == QUESTION + "\n"
    joint = tok(prompt + CHOSEN, add_special_tokens=False)["input_ids"]
    alone_prompt = tok(prompt, add_special_tokens=False)["input_ids"]
    assert enc.chosen[0] == joint[len(alone_prompt):] + [tok.eos_token_id]


class _Scripted(torch.nn.Module):
    """A causal LM stand-in that emits a fixed token sequence greedily, whatever it reads."""

    def __init__(self, script: list[int], vocab: int):
        super().__init__()
        self.script, self.vocab, self.calls = script, vocab, 0
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # a device for the sampler

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None, logits_to_keep=None,
                past_key_values=None):
        logits = torch.zeros(input_ids.shape[0], 1, self.vocab)
        logits[:, -1, self.script[min(self.calls, len(self.script) - 1)]] = 1.0
        self.calls += 1
        return type("Out", (), {"logits": logits})()


@pytest.mark.parametrize("name", FAMILIES)
def test_sampler_stops_where_the_trained_completion_stops(tokenizers, name):
    """A model that emits exactly the training completion, then more text, is decoded back to the answer: the
    sampler stops at the template's turn end (Gemma's <end_of_turn>, not only <eos>) and drops the layout's
    whitespace (DeepSeek's newlines). vLLM's stop list holds the same token."""
    from lutra.policy import vllm as vllm_backend
    from lutra.policy.sampling import generate

    tok, fam = tokenizers[name], FAMILIES[name]
    prompt, enc = _pairs(tok, _model_cfg())
    junk = tok("France", add_special_tokens=False)["input_ids"]
    model = _Scripted(enc.chosen[0] + junk * 8, len(tok))
    texts, finished = generate(model, tok, [prompt], n=1, temperature=0.0, max_new_tokens=len(enc.chosen[0]) + 8,
                               progress=False, return_finished=True)
    assert texts == [[CHOSEN]] and finished == [[True]]
    assert _stop_id(tok, fam) in vllm_backend.stop_token_ids(tok)


@pytest.mark.parametrize("name", ["llama3", "chatml", "deepseek"])
def test_system_prompt_rendered_once_never_beside_the_default(tokenizers, name):
    tok, fam = tokenizers[name], FAMILIES[name]
    plain = format_prompt(tok, QUESTION, _model_cfg())
    assert plain.count(fam.default_system) == 1 if fam.default_system else "system" not in plain
    custom = format_prompt(tok, QUESTION, _model_cfg(system_prompt=SYSTEM))
    assert custom.count(SYSTEM) == 1
    if fam.default_system:
        assert fam.default_system not in custom
    ids = encode_prompt(tok, custom)
    sys_ids = tok(SYSTEM, add_special_tokens=False)["input_ids"]
    hits = sum(ids[i : i + len(sys_ids)] == sys_ids for i in range(len(ids)))
    assert hits == 1


def test_gemma_system_prompt_folded_into_the_user_turn(tokenizers):
    tok = tokenizers["gemma"]
    prompt = format_prompt(tok, QUESTION, _model_cfg(system_prompt=SYSTEM))
    assert prompt.count(SYSTEM) == 1 and prompt.count("<start_of_turn>") == 2
