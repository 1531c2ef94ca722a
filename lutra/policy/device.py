"""Process-wide torch settings and what the device is fast at, read by the loop, the tiny build and the workers."""

from __future__ import annotations

import torch


def setup_torch(threads: int | None = None) -> None:
    # Denormals made the tiny model's CPU training and decoding ~4x slower in the prototype.
    torch.set_flush_denormal(True)
    if threads:
        torch.set_num_threads(threads)


def fast_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether bf16 autocast speeds this device up: a bf16-capable GPU, or a CPU with AVX512-BF16 / AMX."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
