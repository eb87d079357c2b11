"""The GPU protocol (benchmarks/gpu_protocol.py) starts and finishes: its dry run, every stage on the CPU.

A lent GPU session is 15 minutes; a script that breaks in its first minute wastes it. The dry run takes the
same path (loader speed against step speed, then pgn-bench seed by seed with on-device preprocessing) at toy
size on the test backbone.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("linear", "pgn", "iip", "vp", "pgn-frame")


def test_the_gpu_protocol_dry_run_measures_both_speeds_and_records_every_method(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_protocol.py"), "--out", str(tmp_path),
                           "--dry-run"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    speed = json.loads((tmp_path / "speed.json").read_text())
    assert speed["loader_images"] == 64 and speed["loader_images_per_s"] > 0 and speed["pgn_step_images_per_s"] > 0
    assert speed["precision"] == "fp32"
    # one fp32 folder (no "-bf16" suffix, whatever the CPU), a finished test run of every method
    (root,) = (tmp_path / "records").iterdir()
    assert root.name == "fashion-mnist-80x32-80px-e1-b16"
    for method in METHODS:
        (result,) = (root / method).glob("test-*-seed0.json")
        assert json.loads(result.read_text())["top1"] is not None, method
    report = (tmp_path / "comparison.md").read_text()
    assert "| fashion-mnist (80/32) |" in report and "| pgn against | tasks ahead (mean) |" in report
