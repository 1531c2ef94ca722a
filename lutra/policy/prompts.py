"""Prompts and token boundaries: one rendering shared by sampling, the tiny warm start and training.

Boundary rules (tested in tests/test_data.py and tests/test_chat_templates.py):
- the prompt is rendered once (chat template when the tokenizer has one) and tokenized without adding special
  tokens, then exactly one BOS is ensured at the front when the tokenizer uses one;
- a completion is the chat template's own rendering of the assistant turn: what follows the generation prompt,
  up to and including the token that closes the turn (`CompletionLayout`, derived once per tokenizer from the
  template: `<end_of_turn>` for Gemma, `\\n...\\n<|EOT|>` for DeepSeek-Coder); without a template, the answer + EOS.
  It is tokenized after the prompt, so the prompt ids are an exact prefix of every training sequence and the
  boundary is the one generation sees (sampling feeds the same prompt ids and stops at the same token);
- a pair whose prompt or completion exceeds the model's limits is dropped and counted, never truncated.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass

log = logging.getLogger(__name__)


def _uses_template(tokenizer, model_cfg=None) -> bool:
    return (model_cfg is None or model_cfg.use_chat_template) and bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer, user_message: str, model_cfg) -> str:
    """The prompt text for one problem: the chat template's rendering when available, else the raw message.

    A template that rejects the system role (Gemma) gets the system prompt at the top of the user turn instead.
    `model_cfg.few_shot` examples come first as finished user/assistant turns (without a template: each example's
    message and answer as plain text, before the message).
    """
    shots = list(getattr(model_cfg, "few_shot", None) or [])
    if _uses_template(tokenizer, model_cfg):
        from jinja2.exceptions import TemplateError  # transformers' template engine: only with a template

        turns = [m for ex in shots for m in ({"role": "user", "content": ex.user},
                                             {"role": "assistant", "content": ex.assistant})]
        user = {"role": "user", "content": user_message}
        render = lambda msgs: tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)  # noqa: E731
        if not model_cfg.system_prompt:
            return render(turns + [user])
        try:
            return render([{"role": "system", "content": model_cfg.system_prompt}, *turns, user])
        except TemplateError:
            if turns:
                turns[0] = {"role": "user", "content": f"{model_cfg.system_prompt}\n\n{turns[0]['content']}"}
                return render(turns + [user])
            return render([{"role": "user", "content": f"{model_cfg.system_prompt}\n\n{user_message}"}])
    return "".join(f"{ex.user.rstrip()}\n{ex.assistant.strip()}\n\n" for ex in shots) + user_message.rstrip() + "\n"


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer's own encoding starts with BOS (Llama-style), which lutra then guarantees once."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("x", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if adds_bos(tokenizer):
        while ids and ids[0] == bos:  # a template that already wrote BOS: keep exactly one
            ids = ids[1:]
        ids = [bos] + ids
    return ids


@dataclass(frozen=True)
class CompletionLayout:
    """How an answer becomes a training completion: `prefix + answer + suffix`, then the `stop_id` token.

    Derived from the chat template (`completion_layout`): `prefix` is what the template writes between the
    generation prompt and the answer, `suffix + <stop>` what closes the turn up to its first special token.
    Gemma: "", "", <end_of_turn>; DeepSeek-Coder: "\\n", "\\n", <|EOT|>; Llama-3: "", "", <|eot_id|>.
    Without a template: "", "", EOS. Generation stops at `stop_id` (lutra.policy.sampling, lutra.policy.vllm).
    """

    prefix: str = ""
    suffix: str = ""
    stop_id: int | None = None


_PROBE_QUESTION = "lutra probe question"
_PROBE_ANSWER = "lutra_probe_answer_2f9c"
_LAYOUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> (chat_template, layout)


def _special_tokens(tokenizer) -> set[str]:
    out = {str(t) for t in getattr(tokenizer, "all_special_tokens", [])}
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    out |= {t.content for t in added.values() if getattr(t, "special", False)}
    return {t for t in out if t}


def _derive_layout(tokenizer) -> CompletionLayout | None:
    """The assistant turn as the template renders it, from a conversation whose answer is a probe string:
    the text after the rendered generation prompt, split around the probe and cut after the first special
    token. None (with a warning) where the template does not render that way."""
    user = [{"role": "user", "content": _PROBE_QUESTION}]
    try:
        gen = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": _PROBE_ANSWER}],
                                             tokenize=False)
    except Exception as e:  # noqa: BLE001 - any template error: fall back to answer + EOS
        log.warning("chat template cannot render an assistant turn (%s): completions end with EOS", e)
        return None
    if not full.startswith(gen) or _PROBE_ANSWER not in full[len(gen) :]:
        log.warning("chat template's assistant turn does not follow its generation prompt: completions end with EOS")
        return None
    prefix, after = full[len(gen) :].split(_PROBE_ANSWER, 1)
    hits = [(after.find(t), -len(t), t) for t in _special_tokens(tokenizer) if t in after]
    if not hits:
        log.warning("chat template closes an assistant turn with no special token: completions end with EOS")
        return None
    pos, _, stop = min(hits)  # the first special token after the answer (the longest where several start there)
    return CompletionLayout(prefix, after[:pos], tokenizer.convert_tokens_to_ids(stop))


def completion_layout(tokenizer, model_cfg=None) -> CompletionLayout:
    """The tokenizer's completion layout (cached per tokenizer and template); answer + EOS where no chat template
    is used (none on the tokenizer, or model_cfg.use_chat_template false)."""
    eos = CompletionLayout(stop_id=getattr(tokenizer, "eos_token_id", None))
    if not _uses_template(tokenizer, model_cfg):
        return eos
    template = tokenizer.chat_template
    try:
        cached = _LAYOUTS.get(tokenizer)
    except TypeError:  # not weak-referenceable: derive every time
        cached = None
    if cached is not None and cached[0] == template:
        return cached[1]
    layout = _derive_layout(tokenizer) or eos
    try:
        _LAYOUTS[tokenizer] = (template, layout)
    except TypeError:
        pass
    return layout


def encode_completion(tokenizer, completion: str, prompt: str | None = None,
                      layout: CompletionLayout | None = None) -> list[int]:
    """Ids of the assistant turn `layout.prefix + completion + layout.suffix`, then `layout.stop_id` (default
    layout: the tokenizer's own, `completion_layout(tokenizer)`; answer + EOS without a template). The stop token
    is special, so text never merges across it: appending its id equals tokenizing the whole rendered turn.
    With the prompt text, the ids are those of the turn inside prompt+turn tokenized as one text (what the model
    reads after the prompt): SentencePiece tokenizers with a dummy prefix tokenize a text alone differently at
    its start. Falls back to the turn alone when the joint tokenization does not keep the prompt's ids as a
    prefix (a merge across the boundary)."""
    layout = layout if layout is not None else completion_layout(tokenizer)
    text = layout.prefix + completion + layout.suffix
    if prompt is not None:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        joint = tokenizer(prompt + text, add_special_tokens=False)["input_ids"]
        if joint[: len(p)] == p:
            return joint[len(p) :] + [layout.stop_id]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids + [layout.stop_id]
