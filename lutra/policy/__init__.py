"""The policy: loading a base through `from_pretrained` with a LoRA adapter (`models`), building the tiny base
(`tiny`, cached by `tiny_cache`), the tiny bases lutra ships (`shipped`), prompts and token boundaries
(`prompts`), log-prob primitives (`logprobs`), sampling with HF (`sampling`) or vLLM (`vllm`), and process-wide
torch settings (`device`)."""
