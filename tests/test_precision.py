"""Precision is a named choice: resolved once, recorded, and never taken from the machine by accident.

Tests here that compare numbers state their precision. bf16 through a ViT is held to an honest
tolerance (cosine >= 0.999 with the fp32 output, argmax agreement only where the fp32 margin is
larger than the bf16 error), never to fp32's.
"""
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import adapter_cfg, make_tiny_vit, spec

from pgn import PGNError
from pgn.model import PromptedClassifier
from pgn.precision import OVERRIDE_ENV, autocast, native_bf16, resolve
from pgn.server import create_app
from pgn.training import TrainConfig, evaluate_loader, run_training


@pytest.fixture(params=["yes", "no"])
def detection(request, monkeypatch):
    """The CPU's native-bf16 detection answered both ways, whatever this machine is."""
    monkeypatch.setenv(OVERRIDE_ENV, "1" if request.param == "yes" else "0")
    return request.param == "yes"


def test_auto_is_bf16_only_on_a_cpu_or_gpu_that_runs_it_natively(detection):
    assert native_bf16("cpu") is detection
    assert resolve("auto", "cpu") == ("bf16" if detection else "fp32")
    for device in ("meta", "mps"):  # never guessed from the host CPU
        assert native_bf16(device) is False and resolve("auto", device) == "fp32"
    assert resolve("fp32", "meta") == "fp32" and resolve("bf16", "cpu") == "bf16"


def test_impossible_or_unknown_precisions_are_one_line_errors():
    with pytest.raises(PGNError, match="not available on device 'meta'"):
        resolve("bf16", "meta")
    with pytest.raises(PGNError, match="unknown precision 'fp16'"):
        resolve("fp16", "cpu")
    with pytest.raises(PGNError, match="unknown precision"):
        TrainConfig(precision="half")
    with pytest.raises(ValueError, match="resolved precision"):
        autocast("cpu", "auto")  # auto must be resolved where the run starts


def test_the_library_defaults_to_fp32(detection):
    assert TrainConfig().precision == "fp32"
    assert create_app(make_tiny_vit()).state.precision == "fp32"
    assert create_app(make_tiny_vit(), precision="auto").state.precision == ("bf16" if detection else "fp32")


def test_a_run_records_the_precision_that_ran(tmp_path, detection):
    bb = make_tiny_vit()
    acfg = adapter_cfg("iip", bb)
    model = PromptedClassifier.from_config(acfg, bb, seed=0)
    run_training(model, acfg, spec(), TrainConfig(epochs=1, batch_size=8, lr=0.05, progress=False, precision="auto"),
          tmp_path / "run")
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["train"]["precision"]
    assert recorded == ("bf16" if detection else "fp32")


def test_bf16_evaluation_is_close_to_fp32_by_an_honest_tolerance():
    """bf16 explicitly: cosine >= 0.999 with fp32 through the ViT, argmax equal wherever the margin allows."""
    bb = make_tiny_vit(num_classes=0)
    acfg = adapter_cfg("pgn", bb)
    model = PromptedClassifier.from_config(acfg, bb, seed=0).eval()
    x = torch.randn(16, 3, 64, 64)
    with torch.inference_mode():
        fp32 = model.features(x)
        with autocast("cpu", "bf16"):
            bf16 = model.features(x).float()
        assert not torch.equal(fp32, bf16)  # bf16 really ran
        assert F.cosine_similarity(fp32, bf16, dim=-1).min() >= 0.999
        logits32, logits16 = model.head(fp32), model.head(bf16)
    error = (logits32 - logits16).abs().max()
    top2 = logits32.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * error
    assert torch.equal(logits32.argmax(-1)[clear], logits16.argmax(-1)[clear])
    loader = torch.utils.data.DataLoader(spec().test, batch_size=4)
    a, b = (evaluate_loader(model, loader, precision=p, progress=False) for p in ("fp32", "bf16"))
    assert a["n"] == b["n"] == 8 and abs(a["loss"] - b["loss"]) < 5e-2 * max(1.0, a["loss"])


@pytest.mark.parametrize("argv, message", [
    (["serve", "--device", "mps"], "MPS is not available"),
    (["serve", "--device", "nonsense"], "unknown device 'nonsense'"),
    (["eval", "x", "--device", "cuda:7"], "cuda:7"),
    (["serve", "--device", "meta", "--precision", "bf16"], "not available on device 'meta'"),
])
def test_devices_and_precisions_this_machine_lacks_are_one_line_errors(argv, message, tiny_weights):
    if "cuda:7" in argv and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    if argv[0] == "serve":
        argv = argv + ["--backbone", "timm:test_vit", "--weights", str(tiny_weights), "--port", "0"]
    r = subprocess.run([sys.executable, "-m", "pgn", *argv], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_library_errors_name_python_settings_and_the_command_line_names_its_flags(tmp_path):
    """One error, two faces: the API's message names ``device=cpu``, the CLI's the flag ``--device cpu``."""
    import pgn
    from pgn import PGNError
    from pgn.cli.main import as_flags, build_parser

    with pytest.raises(PGNError, match="MPS is not available on this machine; use `device=cpu`$"):
        pgn.load(tmp_path, device="mps")
    r = subprocess.run([sys.executable, "-m", "pgn", "eval", "x", "--device", "mps"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().endswith("use --device cpu"), r.stderr
    parser = build_parser()
    assert as_flags("pass `weights=PATH`, raise `img_size`, or fix `root`; workers: `num_workers=2`", parser) == \
        "pass --weights PATH, raise --img-size, or fix --data-root; workers: --workers 2"
    assert as_flags("`no_such_setting=3` and `train_limit`", parser) == "no_such_setting=3 and --train-limit"
