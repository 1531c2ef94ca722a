"""The KV-shared sampler against Hugging Face's own generate."""

import torch

from lutra.policy.prompts import encode_prompt, format_prompt
from lutra.policy.sampling import generate

PROMPTS = ["Which singers are from France?", "How many singers are older than 30?",
           "CREATE TABLE singer (singer_id INTEGER PRIMARY KEY, name TEXT);\nList all names."]


def test_greedy_matches_hf_generate(tokenizer, small_model, model_cfg):
    prompts = [format_prompt(tokenizer, q, model_cfg) for q in PROMPTS]
    ours = generate(small_model, tokenizer, prompts, n=1, temperature=0.0, max_new_tokens=12, batch_size=2,
                    progress=False)
    for prompt, out in zip(prompts, ours):
        ids = torch.tensor([encode_prompt(tokenizer, prompt)])
        ref = small_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                                   eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        text = tokenizer.decode(ref[0, ids.shape[1]:], skip_special_tokens=True).strip()
        assert out == [text]


def test_n_samples_seeded_and_shared_prefix_consistent(tokenizer, small_model, model_cfg):
    prompts = [format_prompt(tokenizer, q, model_cfg) for q in PROMPTS]
    a = generate(small_model, tokenizer, prompts, n=4, temperature=1.0, top_p=0.95, max_new_tokens=8, seed=3,
                 progress=False)
    b = generate(small_model, tokenizer, prompts, n=4, temperature=1.0, top_p=0.95, max_new_tokens=8, seed=3,
                 progress=False)
    assert a == b and all(len(x) == 4 for x in a)
    assert len({s for x in a for s in x}) > 3  # actually sampling, not greedy copies
    greedy = generate(small_model, tokenizer, prompts, n=3, temperature=0.0, max_new_tokens=8, progress=False)
    assert all(len(set(x)) == 1 for x in greedy)  # the shared cache gives every copy the same prefix state


def test_unfinished_samples_flagged(tokenizer, small_model, model_cfg):
    prompts = [format_prompt(tokenizer, PROMPTS[0], model_cfg)]
    _, fin = generate(small_model, tokenizer, prompts, n=2, temperature=1.0, max_new_tokens=2, progress=False,
                      return_finished=True)
    assert len(fin[0]) == 2 and all(isinstance(f, bool) for f in fin[0])
