"""The method comparison (``pgn-bench``): protocol, per-run cache, backbone restored, report."""
import json

import pytest
import torch
from helpers import make_tiny_vit

from pgn.data import build_dataset
from pgn.errors import PGNError
from pgn_study import comparison
from pgn_study.cli import main

METHODS = ("linear", "pgn", "finetune")  # a head alone, a generator, the whole backbone


@pytest.fixture(scope="module")
def digits():
    vit = make_tiny_vit()
    pre = vit.preprocessing
    return build_dataset("digits", img_size=32, mean=pre.mean, std=pre.std, train_limit=60, test_limit=30)


def _cfg(tmp_path, **kw):
    return comparison.ComparisonConfig(methods=METHODS, epochs=1, seeds=2, img_size=32, runs=tmp_path / "runs",
                                       candidates={**comparison.CANDIDATES, "linear": [0.01, 0.1], "pgn": [0.01, 0.1],
                                                   "finetune": [1e-4, 1e-3]}, **kw)


@pytest.fixture(scope="module")
def compared(tmp_path_factory, digits):
    """One comparison shared by the tests below: (backbone, its weights before, config, result, log)."""
    vit = make_tiny_vit()
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    logged = []
    cfg = _cfg(tmp_path_factory.mktemp("bench"))
    first = comparison.compare(vit, {"digits": digits}, cfg, log=logged.append)
    return vit, before, cfg, first, logged


def test_compare_chooses_lr_on_validation_caches_every_run_and_restores_the_backbone(compared, digits):
    vit, before, cfg, first, logged = compared
    res = first["results"]["digits"]
    assert set(res) == set(METHODS)
    for method, r in res.items():
        assert r["lr"] in cfg.candidates[method] and set(r["val_top1_by_lr"]) == set(cfg.candidates[method])
        assert len(r["test_top1"]) == 2 and r["train_sizes"] == [60, 30]
        assert r["mean"] == pytest.approx(sum(r["test_top1"]) / 2)
    # one cache file per (method, lr, seed): 2 validation rates + 2 seeds each
    root = cfg.runs / "digits-60x30-32px-e1"
    for method in METHODS:
        assert len(list((root / method).glob("val-lr*.json"))) == 2
        assert len(list((root / method).glob("test-lr*-seed*.json"))) == 2
    assert first["runs_trained"] == len(logged) == 4 * len(METHODS)
    # one rate for everything PGN trains; fine-tuning's head takes the rate the linear probe chose
    assert res["pgn"]["head_lr"] == res["pgn"]["lr"]
    assert res["finetune"]["head_lr"] == res["linear"]["lr"] != res["finetune"]["lr"]
    # parameter counts are the methods' own: linear head < PGN; fine-tuning = backbone + head
    p = {m: res[m]["trainable_parameters"] for m in METHODS}
    assert p["linear"] < p["pgn"]
    assert p["finetune"] == sum(t.numel() for t in vit.parameters()) + p["linear"]
    # full fine-tuning trained the shared backbone; the pretrained weights are back and frozen
    for k, v in vit.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not any(t.requires_grad for t in vit.parameters())
    # a second call trains nothing and reports the same numbers
    again = comparison.compare(vit, {"digits": digits}, cfg, log=logged.append)
    assert again["runs_trained"] == 0 and again["results"] == first["results"]


def test_lr_reused_from_a_task_with_the_same_images(tmp_path, digits):
    vit = make_tiny_vit()
    cfg = _cfg(tmp_path)
    cfg.methods = ("linear",)
    out = comparison.compare(vit, {"elpv": digits, "elpv4": digits}, cfg, log=lambda *_: None)["results"]
    assert out["elpv4"]["linear"]["lr"] == out["elpv"]["linear"]["lr"]
    assert out["elpv4"]["linear"]["val_top1_by_lr"] == {}
    assert out["elpv4"]["linear"]["lr_chosen_on"] == "elpv validation split"


def test_a_task_reusing_rates_takes_the_probes_rate_for_vp_without_training_the_probe(tmp_path, digits):
    """ELPV-4 reuses ELPV's rates: a call that trains VP there (not the probe) gives VP's head the rate
    ELPV's probe chose, from ELPV's validation runs, and never asks ELPV-4 for a validation split."""
    vit = make_tiny_vit()
    cfg = _cfg(tmp_path)
    cfg.methods, cfg.seeds = ("vp",), 1
    cfg.candidates = {**cfg.candidates, "vp": [1.0]}
    out = comparison.compare(vit, {"elpv": digits, "elpv4": digits}, cfg, log=lambda *_: None)["results"]
    cfg.methods = ("linear",)
    probe = comparison.compare(vit, {"elpv": digits}, cfg, log=lambda *_: None)["results"]["elpv"]["linear"]
    assert out["elpv4"]["vp"]["head_lr"] == out["elpv"]["vp"]["head_lr"] == probe["lr"]
    assert out["elpv4"]["vp"]["lr_chosen_on"] == "elpv validation split"


def test_report_tables(tmp_path, compared):
    comp = compared[3]
    meta = {"command": "pgn-bench", "seconds": 1, "machine": "m", "precision": "fp32", "backbone": "timm:test_vit",
            "img_size": 32, "epochs": 1, "seeds": 2, "json": "results.json", "seconds_of_all_runs": 1234,
            "runs_trained_this_call": 0}
    speed = {"meta": {"command": "python benchmarks/throughput.py", "seconds": 3, "machine": "m", "precision": "fp32"},
             "results": [{"size": 112, "batch": 32, "flops_per_image": {"generator_share": 0.01},
                          "train": {"floor": {"images_per_s": 40.0, "ratio_to_floor": 1.0},
                                    "pgn": {"images_per_s": 38.0, "ratio_to_floor": 1.05}}}]}
    comparison.write_report(tmp_path / "results.md", comp, meta, speed)
    text = (tmp_path / "results.md").read_text()
    res = comp["results"]["digits"]
    assert f"| digits (60/30) | {100 * res['linear']['mean']:.2f} ± {100 * res['linear']['std']:.2f} |" in text
    assert f"| digits | {100 * (res['pgn']['mean'] - res['linear']['mean']):+.2f} |" in text
    assert "| 112 px | 40.0 | 1.05 | 1.00 % |" in text
    # PGN's runs measured their input dependence: the table carries the mean drops, the others a dash
    drops = res["pgn"]["input_dependence"]
    assert len(drops["mean_mixture"]) == len(drops["shuffled"]) == 2 and res["linear"]["input_dependence"]["shuffled"] == []
    means = " / ".join(f"{100 * sum(drops[k]) / 2:+.2f}" for k in ("mean_mixture", "shuffled"))
    assert f"| input dependence, digits: drop with mean / shuffled mixtures (points) | - | {means} | - |" in text
    assert "| pgn against | tasks ahead (mean) |" in text
    assert "took 1,234 s" in text and "trained 0 of them" in text  # a re-render reports the runs' time, not its own


def _cell(mean, std):
    return {"mean": mean, "std": std}


def test_standing_counts_the_tasks_ahead_and_those_beyond_the_seeds_spread():
    results = {
        "a": {"pgn": _cell(0.80, 0.03), "linear": _cell(0.70, 0.04), "vp": _cell(0.79, 0.01)},  # +10 > 5; +1 < 3.2
        "b": {"pgn": _cell(0.60, 0.00), "linear": _cell(0.65, 0.01), "vp": _cell(None, 0.0)},  # behind; vp diverged
        "c": {"linear": _cell(0.9, 0.0)},  # no PGN cell: not compared
    }
    s = comparison.standing(results)
    assert set(s) == {"linear", "vp"}  # iip was never run
    assert (s["linear"]["tasks"], s["linear"]["ahead"], s["linear"]["ahead_beyond_spread"]) == (2, 1, 1)
    assert (s["vp"]["tasks"], s["vp"]["ahead"], s["vp"]["ahead_beyond_spread"]) == (1, 1, 0)
    assert s["linear"]["per_task"]["a"]["spread"] == pytest.approx(0.05)
    assert s["linear"]["per_task"]["b"]["difference"] == pytest.approx(-0.05)
    table = "\n".join(comparison.standing_table(results))
    assert "| linear | 1 of 2 | 1 of 2 | +10.00 ± 5.00 | -5.00 ± 1.00 | n/a |" in table
    assert "| vp | 1 of 1 | 0 of 1 | +1.00 ± 3.16 | n/a | n/a |" in table
    assert comparison.standing(results, "pgn-frame") == {}


def test_bad_requests_fail_clearly(tmp_path, capsys):
    with pytest.raises(PGNError, match="unknown method"):
        comparison.ComparisonConfig(methods=("pgn", "lora"))
    assert main(["--subset", "fashion-mnist=1000", "--runs", str(tmp_path)]) == 2
    assert "NAME=TRAINxTEST" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
    vit = make_tiny_vit()
    tiny = build_dataset("digits", img_size=32, train_limit=30, test_limit=10)
    with pytest.raises(PGNError, match="validation split"):
        comparison.compare(vit, {"digits": tiny}, _cfg(tmp_path), log=lambda *_: None)


def test_a_diverging_rate_loses_the_selection_instead_of_crashing(tmp_path, digits):
    vit = make_tiny_vit()
    cfg = comparison.ComparisonConfig(methods=("linear",), epochs=1, seeds=1, img_size=32, runs=tmp_path,
                                      candidates={"linear": [0.01, 1e38]})
    res = comparison.compare(vit, {"digits": digits}, cfg, log=lambda *_: None)["results"]["digits"]["linear"]
    assert res["val_top1_by_lr"][1e38] is None and res["lr"] == 0.01
    cached = json.loads(next(tmp_path.rglob("val-lr1e+38.json")).read_text())
    assert cached["top1"] is None and cached["diverged"].startswith("loss became")


def test_render_only_reports_the_cache_and_trains_nothing(compared, digits, tmp_path):
    vit, _, cfg, first, _ = compared
    logged = []
    # Another batch size is another cache folder: nothing of it is cached, so nothing is reported.
    other = _cfg(cfg.runs.parent, render_only=True, batch_size=16)
    empty = comparison.compare(vit, {"digits": digits}, other, log=logged.append)
    assert empty == {"results": {}, "runs_trained": 0}
    assert len(logged) == len(METHODS) and all("not in the cache" in line for line in logged)
    assert not (cfg.runs / "digits-60x30-32px-e1-b16").exists()
    # The batch of the cached runs: everything comes back, and nothing is trained.
    same = _cfg(cfg.runs.parent, render_only=True)
    again = comparison.compare(vit, {"digits": digits}, same, log=logged.append)
    assert again["runs_trained"] == 0 and again["results"] == first["results"]
    assert {r["batch_size"] for r in again["results"]["digits"].values()} == {32}


def test_rate_and_batch_flags_fail_clearly(tmp_path, capsys):
    assert main(["--rate", "lora=0.1", "--runs", str(tmp_path)]) == 2
    assert "unknown method 'lora'" in capsys.readouterr().err
    assert main(["--rate", "pgn=fast", "--runs", str(tmp_path)]) == 2
    assert "METHOD=LR" in capsys.readouterr().err
    with pytest.raises(PGNError, match="batch size"):
        comparison.ComparisonConfig(batch_size=0)


def test_validation_at_a_shorter_budget_is_cached_with_that_budget(tmp_path, digits):
    vit = make_tiny_vit()
    cfg = comparison.ComparisonConfig(methods=("linear",), epochs=2, val_epochs=1, seeds=1, img_size=32, runs=tmp_path,
                                      candidates={"linear": [0.01, 0.1]})
    logged = []
    res = comparison.compare(vit, {"digits": digits}, cfg, log=logged.append)["results"]["digits"]["linear"]
    # the two validation runs trained one epoch, in the 1-epoch folder; the test run two, in the 2-epoch folder
    val_runs = sorted((tmp_path / "digits-60x30-32px-e1" / "linear").glob("val-lr*/metrics.jsonl"))
    assert len(val_runs) == 2 and all(len(p.read_text().splitlines()) == 1 for p in val_runs)
    test_run = tmp_path / "digits-60x30-32px-e2" / "linear" / f"test-lr{res['lr']}-seed0" / "metrics.jsonl"
    assert len(test_run.read_text().splitlines()) == 2
    assert not list((tmp_path / "digits-60x30-32px-e2").rglob("val-*"))
    # a comparison at the 1-epoch budget finds those validation runs and trains only its test run
    one = comparison.ComparisonConfig(methods=("linear",), epochs=1, seeds=1, img_size=32, runs=tmp_path,
                                      candidates={"linear": [0.01, 0.1]})
    again = comparison.compare(vit, {"digits": digits}, one, log=lambda *_: None)
    assert again["runs_trained"] == 1
    assert again["results"]["digits"]["linear"]["val_top1_by_lr"] == res["val_top1_by_lr"]


def test_the_record_alone_resumes_a_comparison(tmp_path, digits):
    vit = make_tiny_vit()
    cfg = comparison.ComparisonConfig(methods=("linear",), epochs=1, seeds=2, img_size=32, runs=tmp_path / "runs",
                                      record=tmp_path / "record", candidates={"linear": [0.01, 0.1]})
    first = comparison.compare(vit, {"digits": digits}, cfg, log=lambda *_: None)
    # the record holds one small JSON per run (2 validation rates + 2 seeds) and no weights
    recorded = sorted(p.relative_to(cfg.record) for p in cfg.record.rglob("*") if p.is_file())
    assert len(recorded) == 4 and all(p.suffix == ".json" for p in recorded)
    assert all((cfg.runs / p).is_file() for p in recorded)  # laid out like the cache
    # a fresh clone: no run cache at all; the record answers and nothing is trained
    import shutil

    shutil.rmtree(cfg.runs)
    again = comparison.compare(vit, {"digits": digits}, cfg, log=lambda *_: None)
    assert again["runs_trained"] == 0 and again["results"] == first["results"]
