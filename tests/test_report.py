"""lutra.report: tables and plots from run directories, on hand-made runs (arithmetic) and on real runs produced
here by the loss-ablation sweep on the reduced embedded default."""

import csv
import json
import math
import random
from pathlib import Path

import pytest
from test_sweeps import lutra, reduced, shared_cache

from lutra import report

# -- hand-made run directories ------------------------------------------------------------------------------------


def fake_run(root: Path, method: str, seed: int, ex: list[float], *, beta: float = 0.1, steps_per_round: int = 40,
             loss: str = "dpo_nll", problems: int = 600) -> Path:
    """A run directory as lutra.loop leaves it: manifest.json, rounds.csv, logs/metrics.csv."""
    d = root / f"{method}-b{beta}-s{seed}"
    (d / "logs").mkdir(parents=True)
    rng = random.Random(f"{method}{seed}{beta}")
    cfg = {"method": {"name": method, "loss": loss, "beta": beta}, "seed": seed, "run_dir": str(d),
           "benchmark": {"name": "mini_sql", "data_dir": None}, "model": {"name": "tiny"}, "logger": {"name": "csv"}}
    stages, rows, steps = {}, [], []
    for k, acc in enumerate(ex):
        row = {"round": k, "eval/exec_acc": acc, "eval/groups/rare/False/exec_acc": acc + 5,
               "eval/groups/rare/True/exec_acc": acc - 20, "eval/held_out/exec_acc": acc - 10,
               "eval/groups/template/not_in/exec_acc": acc}
        if k:
            with_pairs = 400 - 40 * k + rng.randint(-10, 10)
            row.update({"pairs/problems": problems, "pairs/with_pairs": with_pairs, "pairs/pairs": 4 * with_pairs,
                        "pairs/all_correct": problems - with_pairs - 20, "pairs/all_wrong": 20})
            stages[f"round_{k}/execute"] = {"sample_accuracy": acc - 8}
            stages[f"round_{k}/train"] = {"steps": steps_per_round, "pairs_used": 4 * with_pairs}
            for s in range(steps_per_round):
                step = (k - 1) * steps_per_round + s
                m = {"step": step, "epoch": 0, "train/loss": 1.5 * math.exp(-step / 60) + 0.2 + rng.random() * 0.1}
                if loss == "dpo_nll":
                    m["train/rewards/accuracies"] = min(1.0, 0.5 + step / 200 + rng.random() * 0.1)
                steps.append(m)
        rows.append(row)
    (d / "manifest.json").write_text(json.dumps({"config": cfg, "stages": stages}))
    for path, recs in ((d / "rounds.csv", rows), (d / "logs" / "metrics.csv", steps)):
        fields = sorted({key for r in recs for key in r}, key=lambda s: (s not in ("round", "step"), s))
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(recs)
    return d


EX = {"codelutra": [[60.6, 70.0, 73.6], [60.6, 71.0, 75.6], [60.6, 69.0, 74.0]],
      "sft_gold_epoch": [[60.6, 75.0, 79.4], [60.6, 76.0, 78.0], [60.6, 74.0, 80.0]]}


@pytest.fixture
def ablation(tmp_path):
    for method, per_seed in EX.items():
        for seed, ex in enumerate(per_seed):
            fake_run(tmp_path / "sweep", method, seed, ex, loss="sft" if method.startswith("sft") else "dpo_nll")
    return tmp_path / "sweep"


def test_means_and_spread_across_seeds_by_hand(ablation, tmp_path):
    info = report.build([str(ablation)], tmp_path / "out")
    assert info["runs"] == 6 and info["variants"] == ["codelutra", "sft_gold_epoch"]  # paper's order first
    rows = list(csv.DictReader(open(tmp_path / "out" / "report.csv")))
    assert len(rows) == 6 * 3
    r = next(r for r in rows if r["variant"] == "codelutra" and r["seed"] == "1" and r["round"] == "2")
    assert float(r["exec_acc"]) == 75.6 and float(r["ex_rare_templates"]) == pytest.approx(55.6)
    assert float(r["ex_common_templates"]) == pytest.approx(80.6)
    assert float(r["no_pair"]) == float(r["problems"]) - float(r["with_pairs"])
    md = (tmp_path / "out" / "report.md").read_text()
    # codelutra round 2: mean (73.6 + 75.6 + 74.0) / 3 = 74.4, sample sd 1.058..., n = 3; final - base = 13.8
    assert "| codelutra | 60.6 ± 0.0 (3) | 70.0 ± 1.0 (3) | 74.4 ± 1.1 (3) | 13.8 |" in md
    # sft_gold_epoch round 2: (79.4 + 78.0 + 80.0) / 3 = 79.13, sd 1.03
    assert "| sft_gold_epoch | 60.6 ± 0.0 (3) | 75.0 ± 1.0 (3) | 79.1 ± 1.0 (3) | 18.5 |" in md
    assert "73.6–75.6" in md  # min–max of the last round
    for png in info["plots"]:
        assert f"![{png}]({png})" in md


def test_summarize_arithmetic():
    rows = [{"variant": "a", "round": 1, "x": v} for v in (1.0, 2.0, 6.0)] + [{"variant": "a", "round": 2, "x": None}]
    mean, sd, lo, hi, n = report.summarize(rows, "x")["a"][1]
    assert (mean, lo, hi, n) == (3.0, 1.0, 6.0, 3) and sd == pytest.approx(math.sqrt(7.0))
    assert 2 not in report.summarize(rows, "x")["a"]


def test_variant_is_what_the_configs_differ_in(tmp_path):
    for beta in (0.05, 0.2):
        for seed in (0, 1):
            fake_run(tmp_path / "beta", "codelutra", seed, [60.0, 65.0], beta=beta)
    runs = [report.load_run(d) for d in report.find_runs([str(tmp_path / "beta")])]
    report.label_runs(runs)
    assert sorted({r["variant"] for r in runs}) == ["beta=0.05", "beta=0.2"]  # seed and run_dir are not variants


def test_plots_are_labelled(ablation, tmp_path, monkeypatch):
    """Every figure has a title, every axes x and y labels, and a legend naming the variants."""
    import matplotlib.figure

    seen = {}
    orig = matplotlib.figure.Figure.savefig

    def spy(fig, path, *a, **kw):
        seen[Path(path).name] = fig
        assert all(ax.get_xlabel() for ax in fig.axes), (path, "x label")
        assert any(ax.get_ylabel() for ax in fig.axes), (path, "y label")  # shared y: on the first panel
        assert all(ax.get_title() or fig.get_suptitle() for ax in fig.axes), (path, "title")
        assert len(fig.legends) == 1, (path, "one legend, under the axes")
        names = {t.get_text().split(" (")[0] for t in fig.legends[0].get_texts()}
        assert names == ({"codelutra"} if "reward" in str(path) else {"codelutra", "sft_gold_epoch"}), path
        return orig(fig, path, *a, **kw)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    info = report.build([str(ablation)], tmp_path / "out")
    assert set(seen) == {"ex_per_round.png", "ex_by_group.png", "pairs_per_round.png", "train_loss.png",
                         "reward_accuracy.png"} == set(info["plots"])
    ylabels = {name: [ax.get_ylabel() for ax in fig.axes] for name, fig in seen.items()}
    assert "(%)" in ylabels["ex_per_round.png"][0] and "0–1" in ylabels["reward_accuracy.png"][0]
    for png in info["plots"]:
        data = (tmp_path / "out" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_cli_without_runs_names_the_directory(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 2
    assert str(tmp_path) in capsys.readouterr().err


# -- real run directories: the loss-ablation sweep, 2 methods x 2 seeds, one round, reduced default ------------


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory):
    cache = shared_cache(tmp_path_factory)
    sweep = tmp_path_factory.mktemp("report") / "sweep"
    lutra(cache, "lutra.train", "-m", "-cd", "sweeps", "-cn", "loss_ablation", f"hydra.sweep.dir={sweep}",
          "method=codelutra,sft_gold_epoch", "seed=0,1", *reduced(cache))
    return sweep


def test_report_on_real_runs(real_sweep, tmp_path_factory):
    cache = shared_cache(tmp_path_factory)
    p = lutra(cache, "lutra.report", str(real_sweep))  # default --out: <dir>/report
    out = real_sweep / "report"
    assert "4 runs" in p.stdout
    rows = list(csv.DictReader(open(out / "report.csv")))
    assert len(rows) == 4 * 2  # rounds 0 and 1
    assert {(r["variant"], r["seed"]) for r in rows} == {(m, s) for m in ("codelutra", "sft_gold_epoch")
                                                          for s in ("0", "1")}
    for r in rows:
        run = Path(r["run"])
        metrics = json.loads((run / f"round_{r['round']}" / "metrics.json").read_text())
        assert float(r["exec_acc"]) == pytest.approx(metrics["exec_acc"])
        assert float(r["ex_rare_templates"]) == pytest.approx(metrics["groups"]["rare"]["True"]["exec_acc"])
        assert float(r["ex_held_out_db"]) == pytest.approx(metrics["held_out"]["exec_acc"])
        if r["round"] == "1":
            stage = json.loads((run / "manifest.json").read_text())["stages"]
            assert float(r["pairs"]) == stage["round_1/pair"]["pairs"]
            assert float(r["no_pair"]) == stage["round_1/pair"]["problems"] - stage["round_1/pair"]["with_pairs"]
            assert float(r["train_steps"]) == stage["round_1/train"]["steps"] >= 1
    gold = [r for r in rows if r["variant"] == "sft_gold_epoch" and r["round"] == "1"]
    assert all(float(r["pairs"]) == 16 and float(r["no_pair"]) == 0 for r in gold)  # one gold per train problem
    md = (out / "report.md").read_text()
    assert "| codelutra |" in md and "| sft_gold_epoch |" in md
    for png in ("ex_per_round.png", "ex_by_group.png", "pairs_per_round.png", "train_loss.png",
                "reward_accuracy.png"):
        assert (out / png).stat().st_size > 10_000, png


def test_report_on_single_runs_and_several_dirs(real_sweep, tmp_path):
    runs = sorted(d for d in real_sweep.iterdir() if (d / "manifest.json").exists())
    info = report.build([str(runs[0]), str(runs[-1])], tmp_path / "two")
    assert info["runs"] == 2 and len(info["variants"]) == 2
    assert report.build([str(runs[0])], tmp_path / "one")["runs"] == 1
