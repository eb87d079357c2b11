"""The study as a user of pgn: built through its public API only, its numbers the library's, its command pgn's kind."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import spec

import pgn_study
from pgn import PGNError
from pgn_study.cli import as_flags, build_parser
from pgn_study.comparison import ComparisonConfig, accuracy_table, run_root


def test_the_demo_builds_through_the_public_api_what_the_comparison_builds(embedded):
    """So the seed study's records (run through pgn_study.comparison) are the demo's runs, seed for seed."""
    from pgn.data import DataSpec
    from pgn.demo import demo_model
    from pgn.model import PromptedClassifier
    from pgn_study.comparison import method_config

    data = DataSpec(name="elpv", class_names=["functional", "defective"], train=None, test=None)
    for method in ("pgn", "linear"):
        cfg, model = demo_model(method, embedded, data, seed=4)
        reference = method_config(method, embedded, data, 112)
        assert cfg == reference
        a = model.trainable_modules().state_dict()
        b = PromptedClassifier.from_config(reference, embedded, seed=4).trainable_modules().state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_comparison_keys_and_reports_name_the_precision_of_each_run(tmp_path):
    data = spec()
    fp32 = run_root(ComparisonConfig(runs=tmp_path), "random", data)
    bf16 = run_root(ComparisonConfig(runs=tmp_path, precision="bf16"), "random", data)
    assert fp32 != bf16 and bf16.name == fp32.name + "-bf16"  # a cached fp32 run is never read as bf16
    with pytest.raises(PGNError, match="resolve 'auto'"):
        ComparisonConfig(precision="auto")
    summary = {"mean": 0.5, "std": 0.0, "test_top1": [0.5], "lr": 0.1, "trainable_parameters": 10,
               "train_sizes": [4, 4]}
    rows = accuracy_table({"random": {"linear": {**summary, "precision": "fp32"},
                                      "pgn": {**summary, "precision": "bf16"}}}, methods=("linear", "pgn"))
    assert "| precision, random | fp32 | bf16 |" in rows


def test_the_study_imports_no_private_name_of_pgn():
    """The study builds on pgn as any user would: nothing `_`-prefixed, and not the pgn command's own module."""
    imported = []
    for path in Path(pgn_study.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "pgn":
                imported += [(path.name, node.module, alias.name) for alias in node.names]
            elif isinstance(node, ast.Import):
                imported += [(path.name, alias.name, "") for alias in node.names if alias.name.split(".")[0] == "pgn"]
    assert imported  # the walk found the study's imports
    private = [i for i in imported if any(part.startswith("_") for part in [*i[1].split("."), i[2]] if part)]
    assert not private, private
    assert not [i for i in imported if i[1].startswith("pgn.cli")], "the study has its own command line"


def _bench(*args):
    return subprocess.run([sys.executable, "-m", "pgn_study", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("args, message", [
    (["--epochs", "many"], "invalid int value: 'many'"),  # argparse's own errors
    (["--precision", "fp16"], "invalid choice: 'fp16'"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--subset", "fashion-mnist=1000"], "NAME=TRAINxTEST"),  # the study's, raised as PGNError
    (["--rate", "lora=0.1"], "unknown method 'lora'"),
])
def test_pgn_bench_errors_are_one_line_with_exit_status_2(args, message, tmp_path):
    r = _bench(*args, "--runs", tmp_path / "runs")
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("pgn-bench: error:"), r.stderr
    assert message in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()


def test_pgn_bench_help_and_its_precision_aliases():
    r = _bench("--help")
    assert r.returncode == 0 and "--precision {auto,fp32,bf16}" in r.stdout and "--bf16" in r.stdout
    parser = build_parser()
    assert parser.parse_args([]).precision == "auto"
    assert parser.parse_args(["--bf16"]).precision == "bf16" and parser.parse_args(["--fp32"]).precision == "fp32"


def test_library_messages_name_pgn_benchs_flags():
    parser = build_parser()
    assert as_flags("pass `weights=PATH`, raise `img_size`, or fix `root`; workers: `num_workers=2`", parser) == \
        "pass --weights PATH, raise --img-size, or fix --data-root; workers: --workers 2"
    assert as_flags("`no_such_setting=3` and `val_epochs`", parser) == "no_such_setting=3 and --val-epochs"
    assert as_flags("`on_device` and `backbone_weights=W`", parser) == "--preprocess-on-device and --weights W"
