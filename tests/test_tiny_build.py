"""The default base, built under two SIMD kernel paths, lands in the round-0 EX range docs/results/ documents.

A warm start of up to 900 steps amplifies rounding differences, and float32 rounding differs between ATen's kernel
paths (`ATEN_CPU_CAPABILITY`), MKL's and oneDNN's instruction sets: another CPU builds another base. Running this
CPU under its own path and under the generic one is the closest this machine gets to a second machine; docs/results/
says what to expect on one, and this test holds it to that. Slow: two full builds plus their round-0 evaluation
(~5-7 min each on 2 idle cores).
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROUND0_EX = (35.0, 55.0)
"""Round-0 EX (%) docs/results/bases_and_warm_start.md documents for the default base, whose warm start stops at 38% greedy EX on 200 train
problems: 41.6 / 45.4 / 44.8 on the avx512 / avx2 / default paths (docs/results/bases_and_warm_start.md), with room for the check's coarseness
(a 50-step check can land 10-25 points past the target where EX climbs fastest) and the check set's sampling error
(train check 42.5% gave eval 41.6% on the avx512 path, 42.0% gave 45.4% on avx2)."""
SIMD_ENV = {
    # the generic path: ATen's scalar kernels, MKL and oneDNN at their oldest SIMD level, as on a CPU without AVX
    "default": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}


def _build(tmp_path: Path, path: str) -> tuple[float, dict]:
    env = {**os.environ, **SIMD_ENV.get(path, {}), "LUTRA_MODELS": str(tmp_path / f"models-{path}"),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    run = tmp_path / f"run-{path}"
    # `auto` reads /proc/cpuinfo, which the simulated path does not change: a CPU without native bf16 runs float32
    dtype = ["model.tiny.warm_start_dtype=float32"] if path in SIMD_ENV else []
    # model.tiny.shipped=false: build the recipe instead of loading the base lutra ships for it
    done = subprocess.run([sys.executable, "-m", "lutra.train", "rounds=0", f"hydra.run.dir={run}", *dtype,
                           "model.tiny.shipped=false",
                           f"benchmark.data_dir={tmp_path / 'data'}", "trainer.enable_progress_bar=false"],
                          env=env, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader((run / "rounds.csv").open()))
    (build,) = (tmp_path / f"models-{path}").glob("tiny-*/lutra_build.json")
    return float(rows[0]["eval/exec_acc"]), json.loads(build.read_text())


@pytest.mark.slow
def test_the_default_base_lands_in_the_documented_round0_range_under_two_kernel_paths(tmp_path):
    import torch

    native = torch.backends.cpu.get_cpu_capability().lower()
    other = "avx2" if native.startswith("avx512") else "default"
    results = {path: _build(tmp_path, path) for path in (native, other)}
    for path, (ex, build) in results.items():
        assert ROUND0_EX[0] <= ex <= ROUND0_EX[1], (path, ex, build["weights_sha256"])
        assert build["cpu_capability"].lower() == ("default" if path == "default" else path)
        # the native build is the default recipe's: it says whether it is bit-identical to the shipped base (the
        # simulated path's float32 override is another recipe, with no shipped base)
        want = ("identical", "differs") if path == native else ("identical", "differs", "unshipped")
        assert build["against_shipped"]["status"] in want, build["against_shipped"]
    (ex_a, a), (ex_b, b) = results.values()
    if a["warm_start_dtype"] == "float64":  # float64 keeps the paths' rounding differences from growing
        assert a["weights_sha256"] == b["weights_sha256"], (ex_a, ex_b)
