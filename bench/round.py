"""Seconds per stage of one CodeLutra round on CPU, from the run's manifest.json, plus a cProfile of the same round.

    python bench/round.py [--n-train 100] [--n-eval 100] [--samples 8] [--model-path DIR] [--no-profile]

Runs `python -m lutra.train rounds=1 trainer=cpu logger=none` on mini_sql with the codelutra method's defaults
(8 samples per problem, 4 pairs per problem, batch 8, one epoch) on fewer problems than the default run (600 train,
500 eval) so it takes minutes. Round 0 is the base model's evaluation; round 1 does sample, execute, pair,
ref_logps, train, evaluate. The model is a built tiny model (`--model-path`, default: the most trained
outputs/models/tiny-mini_sql-* there is; without one, `python -m lutra.train` builds the default first, ~15+ min).
The profile is a second, identical round under cProfile (its overhead inflates Python-heavy stages); its top
functions by own time and by cumulative time are kept. Writes bench/results/round.json.
"""

from __future__ import annotations

import argparse
import io
import json
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402

STAGES = ("sample", "execute", "pair", "ref_logps", "train", "evaluate")


def default_model() -> str | None:
    best = None
    for d in sorted((common.ROOT / "outputs" / "models").glob("tiny-mini_sql-*")):
        info = d / "lutra_build.json"
        if info.exists() and (d / "config.json").exists():
            steps = json.loads(info.read_text()).get("steps", 0)
            if best is None or steps > best[0]:
                best = (steps, str(d))
    return best[1] if best else None


# `python -m lutra.train` with a variant applied to the loop's generate (sampling) and greedy (evaluation) first
# (bench.common: merged_generate = sample/evaluate on a LoRA-merged copy; concat_cache_generate = the KV cache
# concatenated per step, as before the fix)
PATCHED = ("import runpy, sys; sys.path.insert(0, {root!r}); import lutra.loop as L; from bench import common; "
           "L.generate = common.{patch}(L.generate); L.greedy = common.{patch}(L.greedy); sys.argv[0] = 'lutra.train'; "
           "runpy.run_module('lutra.train', run_name='__main__', alter_sys=True)")


def run_round(n_train: int, n_eval: int, samples: int, model_path: str | None, profile: str | None = None,
              extra: tuple[str, ...] = (), patch: str | None = None, launcher: tuple[str, ...] = ()) -> dict:
    """One `python -m lutra.train rounds=1` in a fresh run directory; the manifest's stage seconds and wall time.
    launcher: arguments between the interpreter and `-m lutra.train`, e.g. ("-m", "torch.distributed.run",
    "--standalone", "--nproc-per-node=2") for a data-parallel round."""
    with tempfile.TemporaryDirectory(prefix="bench-round-") as run_dir:
        entry = ["-c", PATCHED.format(root=str(common.ROOT), patch=patch)] if patch else ["-m", "lutra.train"]
        cmd = [sys.executable, *launcher] + (["-m", "cProfile", "-o", profile] if profile else []) + entry + [
            "rounds=1", "trainer=cpu", "logger=none", f"benchmark.n_train={n_train}",
            f"benchmark.n_eval={n_eval}", f"method.samples_per_problem={samples}", f"hydra.run.dir={run_dir}",
            "trainer.enable_progress_bar=false", *([f"model.path={model_path}"] if model_path else []), *extra]
        t = time.perf_counter()
        r = subprocess.run(cmd, cwd=common.ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
        m = json.loads((Path(run_dir) / "manifest.json").read_text())
        work = _work(Path(run_dir), model_path)
    st = m["stages"]
    out = {"n_train": n_train, "n_eval": n_eval, "samples_per_problem": samples, "wall_s": wall,
           "round0_evaluate_s": st["round_0/evaluate"]["seconds"]}
    for s in STAGES:
        info = st.get(f"round_1/{s}", {})
        out[f"{s}_s"] = info.get("seconds", 0.0)
        out.update({f"{s}/{k}": v for k, v in info.items() if isinstance(v, (int, float)) and k != "seconds"})
    out["round1_s"] = sum(out[f"{s}_s"] for s in STAGES)
    out["outside_stages_s"] = wall - out["round1_s"] - out["round0_evaluate_s"]
    out["command"] = " ".join(cmd[1:])
    out.update(work)
    return out


def _work(run_dir: Path, model_path: str | None) -> dict:
    """Token counts behind the stage times: sampled tokens and prompt tokens (the model's own tokenizer)."""
    from transformers import AutoTokenizer

    from lutra.artifacts import read_jsonl

    samples, pairs = run_dir / "round_1" / "samples.jsonl", run_dir / "round_1" / "pairs.jsonl"
    if not model_path or not samples.exists():
        return {}
    tok = AutoTokenizer.from_pretrained(model_path)
    recs = read_jsonl(samples)
    lens = [len(tok(r["text"], add_special_tokens=False)["input_ids"]) + 1 for r in recs]  # + EOS
    out = {"sampled_tokens": sum(lens), "sample_tokens_mean": sum(lens) / max(1, len(lens)),
           "samples_unfinished": sum(not r["finished"] for r in recs)}
    if pairs.exists():
        prs = read_jsonl(pairs)
        prompts = {r["prompt"] for r in prs}
        out["pair_prompt_tokens_mean"] = (sum(len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts)
                                          / max(1, len(prompts)))
    return out


def top_functions(prof: str, n: int = 25) -> dict:
    stats = pstats.Stats(prof)
    total = stats.total_tt

    def rows(key):
        stats.sort_stats(key)
        out = []
        for func in stats.fcn_list[:n]:
            cc, nc, tt, ct, _ = stats.stats[func]
            out.append({"function": f"{Path(func[0]).name}:{func[1]}({func[2]})", "calls": nc,
                        "own_s": round(tt, 3), "cumulative_s": round(ct, 3)})
        return out

    return {"total_s": total, "by_own_time": rows("tottime"), "by_cumulative": rows("cumulative")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-train", type=int, default=100)
    ap.add_argument("--n-eval", type=int, default=100)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--model-path", default=default_model())
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--patches", default="concat_cache_generate,merged_generate",
                    help="variants of the loop's generate (bench.common functions) to run a round with; '' = none")
    ap.add_argument("--out", default="round", help="results file name under bench/results/")
    ap.add_argument("extra", nargs="*", help="further lutra.train overrides")
    args = ap.parse_args()
    res = {"machine": common.machine(), "model_path": args.model_path}
    r = run_round(args.n_train, args.n_eval, args.samples, args.model_path, extra=tuple(args.extra))
    res["round"] = r
    print(common.table([{"stage": s, "seconds": r[f"{s}_s"]} for s in STAGES]
                       + [{"stage": "round 1 total", "seconds": r["round1_s"]},
                          {"stage": "round 0 evaluate (+ model load)", "seconds": r["round0_evaluate_s"]},
                          {"stage": "outside stages (imports, data, setup)", "seconds": r["outside_stages_s"]}],
                       ["stage", "seconds"], "{:.1f}"))
    for patch in [x for x in args.patches.split(",") if x]:
        p = run_round(args.n_train, args.n_eval, args.samples, args.model_path, extra=tuple(args.extra), patch=patch)
        res.setdefault("patched_rounds", {})[patch] = p
        print(f"lutra as is vs the variant {patch}:")
        print(common.table([{"stage": s, "lutra_s": r[f"{s}_s"], "variant_s": p[f"{s}_s"]} for s in STAGES]
                           + [{"stage": "round 1 total", "lutra_s": r["round1_s"], "variant_s": p["round1_s"]},
                              {"stage": "round 0 evaluate", "lutra_s": r["round0_evaluate_s"],
                               "variant_s": p["round0_evaluate_s"]}], ["stage", "lutra_s", "variant_s"], "{:.1f}"))
    if not args.no_profile:
        with tempfile.TemporaryDirectory() as tmp:
            prof = str(Path(tmp) / "round.prof")
            res["profiled_round"] = run_round(args.n_train, args.n_eval, args.samples, args.model_path, profile=prof,
                                              extra=tuple(args.extra))
            res["profile"] = top_functions(prof)
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(20)
            print(buf.getvalue()[-6000:])
    print(f"wrote {common.write_result(args.out, res)}")


if __name__ == "__main__":
    main()
