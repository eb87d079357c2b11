"""Fault injection: kills at every write of the checkpoint path, concurrent writers, malformed configs and
checkpoints, decompression bombs, degenerate datasets. Each case checks the exact outcome: the exit code or
error, the one-line message, and that the run directory is still loadable and consistent."""
import importlib
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib

import httpx
import numpy as np
import pytest
import torch
from helpers import adapter_cfg, make_tiny_vit, one_line_error, pgn, quiet, spec
from PIL import Image

from pgn import PGNError
from pgn.data import DataSpec
from pgn.data.base import load_image
from pgn.model import PromptedClassifier
from pgn.training import read_metrics, run_training
from pgn.training.checkpoint import CHECKPOINTS, latest_checkpoint

EPOCHS = 3


class Killed(BaseException):
    """Stands for the process dying at this point: not an Exception, so nothing catches it on the way up."""


@pytest.fixture
def deterministic():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)


def _train(run, resume=False, epochs=EPOCHS, backbone=None):
    backbone = backbone or make_tiny_vit()
    acfg = adapter_cfg("pgn", backbone)
    torch.manual_seed(123)  # the caller's own init, as the CLI builds the model before training
    model = PromptedClassifier.from_config(acfg, backbone)
    run_training(model, acfg, spec(), quiet(epochs=epochs, lr=0.05), run, resume=resume, log=lambda *_: None)
    return model


def _weights(model):
    return {k: v.detach().clone() for k, v in model.trainable_modules().state_dict().items()}


def _count_replaces(tmp_path, monkeypatch):
    calls = []
    real = os.replace

    def counting(src, dst):
        calls.append(str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", counting)
    model = _train(tmp_path / "reference")
    monkeypatch.setattr(os, "replace", real)
    return _weights(model), calls


def test_killed_at_every_write_then_resumed_equals_uninterrupted(tmp_path, monkeypatch, deterministic):
    reference, calls = _count_replaces(tmp_path, monkeypatch)
    assert len(calls) >= 4 * EPOCHS  # checkpoint rename, adapter copies and metrics.jsonl per epoch at least
    real = os.replace
    for k in range(len(calls)):
        run = tmp_path / f"kill{k}"
        seen = []

        def dying(src, dst, k=k, seen=seen):
            seen.append(dst)
            if len(seen) == k + 1:
                raise Killed(f"killed before write {k}: {dst}")
            return real(src, dst)

        monkeypatch.setattr(os, "replace", dying)
        with pytest.raises(Killed):
            _train(run)
        monkeypatch.setattr(os, "replace", real)
        # Whatever the kill point, the directory is consistent: metrics.jsonl lists exactly the epochs of the
        # newest checkpoint after the next start repairs it, and a resume finishes the run bit for bit.
        checkpoint = latest_checkpoint(run)
        done = 0 if checkpoint is None else int(checkpoint.name.split("-")[1])
        if checkpoint is None:
            model = _train(run)  # nothing finished: a fresh start is allowed
        else:
            model = _train(run, resume=True)
        assert [r["epoch"] for r in read_metrics(run)] == list(range(1, EPOCHS + 1)), (k, calls[k], done)
        got = _weights(model)
        assert all(torch.equal(got[name], reference[name]) for name in reference), (k, calls[k])
        loaded = PromptedClassifier.from_pretrained(run, backbone=make_tiny_vit())
        saved = loaded.trainable_modules().state_dict()
        assert all(torch.equal(saved[name], reference[name]) for name in reference), (k, calls[k])
        assert [p.name for p in (run / CHECKPOINTS).iterdir()] == [f"epoch-{EPOCHS:04d}"]
        assert not list(run.rglob("*.tmp"))


def test_a_kill_inside_a_write_leaves_no_trace_after_restart(tmp_path):
    run = tmp_path / "run"
    _train(run, epochs=1)
    # What a SIGKILL in the middle of writes leaves: a temp file and a half-written checkpoint directory.
    (run / ".adapter.safetensors.abc123.tmp").write_bytes(b"half")
    half = run / CHECKPOINTS / ".epoch-0002.xyz.tmp"
    half.mkdir()
    (half / "adapter.safetensors").write_bytes(b"half")
    (run / "metrics.jsonl").write_text("")  # a metrics file that lost its rows
    _train(run, resume=True, epochs=2)
    assert not list(run.rglob("*.tmp"))
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]


def test_weights_and_state_can_never_disagree(tmp_path, monkeypatch):
    """The old layout wrote weights, then trainer state: a kill between them resumed epoch-2 weights with
    epoch-1 optimizer state. Now both live in one checkpoint directory, so a resume sees one epoch."""
    run = tmp_path / "run"
    real_save = torch.save

    def dying_save(obj, f, *a, **kw):
        if isinstance(obj, dict) and obj.get("epoch") == 1:  # the state of the second epoch
            raise Killed("killed while writing the trainer state")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(Killed):
        _train(run, epochs=2)
    monkeypatch.setattr(torch, "save", real_save)
    checkpoint = latest_checkpoint(run)
    assert checkpoint.name == "epoch-0001"
    state = torch.load(checkpoint / "trainer_state.pt", weights_only=True)
    assert state["epoch"] == 0 and [r["epoch"] for r in read_metrics(run)] == [1]
    top = PromptedClassifier.from_pretrained(run, backbone=make_tiny_vit()).trainable_modules().state_dict()
    mine = PromptedClassifier.from_pretrained(checkpoint, backbone=make_tiny_vit()).trainable_modules().state_dict()
    assert all(torch.equal(top[k], mine[k]) for k in mine)  # the run's adapter is epoch 1's


# ----------------------------------------------------------------------------------------- one writer per run

HOLD = """
import sys, time
from pgn.files import run_lock
with run_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def _holder(run):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_fails_at_once_naming_the_holder(tmp_path):
    run = tmp_path / "run"
    holder = _holder(run)
    try:
        t0 = time.perf_counter()
        with pytest.raises(PGNError, match=rf"in use by process {holder.pid}\b") as e:
            _train(run)
        assert time.perf_counter() - t0 < 1.0
        assert "\n" not in str(e.value)
        assert not (run / "metrics.jsonl").exists() and not (run / "config.json").exists()
    finally:
        holder.kill()
        holder.wait()


def test_second_writer_from_the_cli_exits_2(tmp_path, tiny_weights, monkeypatch):
    run = tmp_path / "run"
    holder = _holder(run)
    try:
        r = pgn("train", "--backbone", "timm:test_vit", "--weights", tiny_weights, "--dataset", "digits", "--img-size", 32, "--epochs", 1,
                "--train-limit", 32, "--test-limit", 16, "-K", 2, "-N", 4, "--generator-size", 32, "--out", run,
                "--no-progress")
        assert r.returncode == 2
        assert f"in use by process {holder.pid}" in one_line_error(r)
        # ... and at once: before any backbone or dataset is built.
        importlib.import_module("pgn.api")  # imported before the patches below, so that it binds the real functions
        from pgn.cli.main import main

        def no(*a, **k):
            raise AssertionError("built before the lock was checked")

        monkeypatch.setattr("pgn.backbones.create_backbone", no)
        monkeypatch.setattr("pgn.api.build_data", no)
        assert main(["train", "--out", str(run), "--epochs", "1", "--no-progress"]) == 2
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    run = tmp_path / "run"
    holder = _holder(run)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    _train(run, epochs=1)
    assert [r["epoch"] for r in read_metrics(run)] == [1]


# ----------------------------------------------------------------------------------------- typed configs

BAD_ADAPTER_CONFIGS = [
    ({"img_size": "big"}, "field 'img_size'"),
    ({"generator": "str"}, "unknown field 'generator'"),  # format 1's flat field, in a format-2 file
    ({"method_config": "str"}, "method_config"),
    ({"method_config": {"library_size": "many"}}, "field 'library_size'"),
    ({"mean": [0.5, 0.5]}, "field 'mean"),
    ({"img_size": 50}, "img_size 50 is not a positive multiple of"),
    ({"class_names": "ab"}, "field 'class_names'"),
    ({"unknown_field": 1}, "unknown field 'unknown_field'"),
    ({"method": "magic"}, "unknown method 'magic'"),
]


@pytest.fixture(scope="module")
def saved_adapter(tmp_path_factory):
    backbone = make_tiny_vit()
    acfg = adapter_cfg("pgn", backbone)
    path = tmp_path_factory.mktemp("adapter") / "a"
    PromptedClassifier.from_config(acfg, backbone).save_pretrained(path)
    return path


@pytest.mark.parametrize("change,message", BAD_ADAPTER_CONFIGS)
def test_malformed_adapter_config_is_one_line_naming_the_field(saved_adapter, tmp_path, change, message):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter.safetensors").write_bytes((saved_adapter / "adapter.safetensors").read_bytes())
    raw = json.loads((saved_adapter / "adapter_config.json").read_text())
    if isinstance(change.get("method_config"), dict):
        raw["method_config"] = {**raw["method_config"], **change["method_config"]}
    else:
        raw.update(change)
    (bad / "adapter_config.json").write_text(json.dumps(raw))
    with pytest.raises(PGNError) as e:
        PromptedClassifier.from_pretrained(bad, backbone=make_tiny_vit())
    assert message in str(e.value) and "\n" not in str(e.value)


def test_malformed_adapter_config_from_the_cli_exits_2_without_traceback(saved_adapter, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter.safetensors").write_bytes((saved_adapter / "adapter.safetensors").read_bytes())
    raw = json.loads((saved_adapter / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**raw, "img_size": "big"}))
    r = pgn("info", "--adapter", bad)
    assert r.returncode == 2 and "field 'img_size'" in one_line_error(r)


def _official_like(tmp_path, drop=None, change=None):
    from pgn.prompts import GeneratorConfig, PromptGenerator

    gen = PromptGenerator(GeneratorConfig(num_prompts=2, library_size=4, input_size=32, channels_last=False), 8)
    inverse = {"library.tokens": "tl_vectors"}
    raw = {}
    for k, v in gen.state_dict().items():
        if k in inverse:
            raw[inverse[k]] = v
        elif k.startswith("net.stem."):
            raw["model.input_net." + k[len("net.stem."):]] = v
        elif ".body." in k:
            i, rest = k[len("net.stages."):].split(".body.")
            raw[f"model.blocks.{i}.net.{rest}"] = v
        elif ".shortcut." in k:
            i, rest = k[len("net.stages."):].split(".shortcut.")
            raw[f"model.blocks.{i}.downsample.{rest}"] = v
        elif k.startswith("net.head.2."):
            raw["model.output_net.2." + k[len("net.head.2."):]] = v
    if drop:
        del raw[drop]
    raw.update(change or {})
    path = tmp_path / "official.pt"
    torch.save(raw, path)
    return path


@pytest.mark.parametrize("drop,change,message", [
    (None, None, None),
    (None, {"tl_vectors": torch.zeros(32)}, "tl_vectors has shape (32,)"),
    ("model.blocks.2.net.0.weight", None, "model.blocks.2.net.0.weight is missing"),
])
def test_malformed_official_checkpoint_is_one_line(tmp_path, drop, change, message):
    from pgn.prompts import load_official

    path = _official_like(tmp_path, drop, change)
    if message is None:
        assert load_official(path, input_size=32).config.library_size == 4  # the well-formed one loads
        return
    with pytest.raises(PGNError) as e:
        load_official(path, input_size=32)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_malformed_deploy_config_is_one_line(tmp_path):
    from pgn.input_adapter import InputAdapter

    (tmp_path / "deploy_config.json").write_text(json.dumps({"format": "pgn-deployable", "version": 1, "img_size": "x"}))
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "deploy.safetensors"))
    with pytest.raises(PGNError) as e:
        InputAdapter.from_pretrained(tmp_path)
    assert "field 'layout'" in str(e.value) or "field 'img_size'" in str(e.value)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------------------- honest NaN messages

def test_nan_in_the_first_epoch_says_no_checkpoint_exists(tmp_path):
    backbone = make_tiny_vit()
    acfg = adapter_cfg("pgn", backbone)
    with pytest.raises(PGNError, match="no epoch had finished, so no checkpoint was written"):
        run_training(PromptedClassifier.from_config(acfg, backbone), acfg, spec(poison=True), quiet(), tmp_path / "r", log=lambda *_: None)
    assert latest_checkpoint(tmp_path / "r") is None
    assert not (tmp_path / "r").exists()  # a new run that failed before its first epoch leaves nothing behind


def test_nan_later_names_the_checkpoint_that_exists(tmp_path):
    run = tmp_path / "r"
    _train(run, epochs=1)
    backbone = make_tiny_vit()
    acfg = adapter_cfg("pgn", backbone)
    with pytest.raises(PGNError, match=r"the checkpoint of epoch 1 in .* is kept"):
        run_training(PromptedClassifier.from_config(acfg, backbone), acfg, spec(poison=True), quiet(epochs=2), run, resume=True,
              log=lambda *_: None)
    assert latest_checkpoint(run).name == "epoch-0001"


# ----------------------------------------------------------------------------------------- decompression bombs

def _bomb(path, side=11200):
    """A small valid PNG header declaring side x side pixels (a few hundred bytes on disk)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = zlib.compress(b"\x00" * (side + 1) * 64)  # a few rows of zeros; the rest is missing
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
    path.write_bytes(png + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    return path


def test_bomb_is_refused_from_its_header(tmp_path):
    bomb = _bomb(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 20_000
    with pytest.raises(PGNError, match="declares 11200x11200 = 125,440,000 pixels, over the limit of 40,000,000"):
        load_image(bomb)


def test_pixel_budget_is_configurable(tmp_path, monkeypatch):
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(small)
    assert load_image(small).size == (40, 40)
    monkeypatch.setenv("PGN_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(PGNError, match="over the limit of 1,000"):
        load_image(small)


def test_the_pixel_budget_can_be_raised_past_pillows_own_limit(tmp_path, monkeypatch):
    """Raising PGN_MAX_IMAGE_PIXELS is what its message says to do: Pillow's own limit must not stop it."""
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((60, 50, 3), np.uint8)).save(big)  # 3,000 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow's limit, far below (its own error at 2x)
    monkeypatch.setenv("PGN_MAX_IMAGE_PIXELS", "10000")
    assert load_image(big).size == (50, 60)
    assert Image.MAX_IMAGE_PIXELS == 1000  # Pillow's setting is left as it was
    monkeypatch.setenv("PGN_MAX_IMAGE_PIXELS", "2000")
    with pytest.raises(PGNError, match="over the limit of 2,000"):  # pgn's budget, pgn's message
        load_image(big)


def test_bomb_in_the_cli_exits_2(saved_adapter, tiny_weights, tmp_path):
    r = pgn("predict", _bomb(tmp_path / "bomb.png"), "--adapter", saved_adapter, "--backbone", "timm:test_vit",
            "--weights", tiny_weights)
    assert r.returncode == 2
    assert "declares 11200x11200 = 125,440,000 pixels" in one_line_error(r)


def test_server_shares_the_pixel_budget(monkeypatch):
    from pgn.server import create_app
    from pgn.web.background import BackgroundServer

    monkeypatch.setenv("PGN_MAX_IMAGE_PIXELS", "1000")
    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(buf, format="PNG")
    png = buf.getvalue()
    with BackgroundServer(create_app(make_tiny_vit(), max_side=256)) as s:
        r = httpx.post(s.url + "/embed", files={"file": ("a.png", png, "image/png")}, timeout=30)
        assert r.status_code == 422 and "over the limit of 1,000" in r.json()["detail"]
        monkeypatch.delenv("PGN_MAX_IMAGE_PIXELS")
        r = httpx.post(s.url + "/embed", files={"file": ("a.png", png, "image/png")}, timeout=30)
        assert r.status_code == 200  # the server survived and serves normal images


# ----------------------------------------------------------------------------------------- degenerate datasets

def test_one_class_folder_dataset_is_an_error(tmp_path, tiny_weights):
    folder = tmp_path / "data" / "only"
    folder.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((32, 32, 3), i * 40, np.uint8)).save(folder / f"{i}.png")
    r = pgn("train", "--backbone", "timm:test_vit", "--weights", tiny_weights, "--dataset", f"folder:{tmp_path / 'data'}", "--img-size", 32,
            "--epochs", 1, "-K", 2, "-N", 4, "--generator-size", 32, "--out", tmp_path / "run", "--no-progress")
    assert r.returncode == 2
    assert "has 1 class (only); a classifier needs at least 2" in one_line_error(r)


def test_class_without_training_images_is_named(tmp_path):
    data = spec()
    keep = [i for i, t in enumerate(data.train.targets) if int(t) != 2]
    data = DataSpec(name="random", class_names=["a", "b", "c"], train=torch.utils.data.Subset(data.train, keep),
                    test=data.test)
    backbone = make_tiny_vit()
    acfg = adapter_cfg("pgn", backbone)
    with pytest.raises(PGNError, match="class 'c' has no training images"):
        run_training(PromptedClassifier.from_config(acfg, backbone), acfg, data, quiet(), tmp_path / "r", log=lambda *_: None)
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------------------- quiet wrong runs

@pytest.mark.parametrize("flag, value, message", [
    ("--grad-clip", "-1", "grad_clip must be a positive number"),
    ("--weight-decay", "-1", "weight decay must be >= 0"),
    ("--workers", "-1", "workers must be >= 0"),
    ("--lr", "inf", "lr must be a positive finite number"),
])
def test_numbers_that_would_wreck_a_run_are_refused_before_any_file(tmp_path, tiny_weights, flag, value, message):
    run = tmp_path / "run"
    r = pgn("train", "--backbone", "timm:test_vit", "--weights", tiny_weights, "--dataset", "digits", "--img-size", 32,
            "--epochs", 1, "--train-limit", 64, "--test-limit", 32, "-K", 2, "-N", 8, "--generator-size", 32,
            "--out", run, "--no-progress", "--precision", "fp32", flag, value)
    assert r.returncode == 2 and message in one_line_error(r)
    assert not run.exists()


def test_a_diverging_run_stops_and_leaves_no_non_finite_adapter(tmp_path, tiny_weights):
    """--lr 1e6: the loss may stay finite while BatchNorm's running variance overflows; the run must stop."""
    run = tmp_path / "run"
    r = pgn("train", "--backbone", "timm:test_vit", "--weights", tiny_weights, "--dataset", "digits", "--img-size", 32,
            "--epochs", 6, "--train-limit", 64, "--test-limit", 32, "-K", 2, "-N", 8, "--generator-size", 32,
            "--batch-size", 16, "--lr", "1e6", "--out", run, "--no-progress", "--precision", "fp32")
    line = one_line_error(r)
    assert r.returncode == 2 and ("diverged" in line or "loss became" in line), line
    from safetensors.torch import load_file

    for adapter in [run / "adapter.safetensors", *run.glob("checkpoints/*/adapter.safetensors")]:
        if adapter.exists():
            assert all(torch.isfinite(t).all() for t in load_file(str(adapter)).values() if t.is_floating_point())


def test_augmented_runs_with_workers_resume_bit_for_bit(tmp_path, monkeypatch):
    """--augment --workers 2: the workers' augmentation RNGs are seeded per epoch from checkpointed state."""
    from pgn.data import build_dataset
    from pgn.training import checkpoint as ckpt

    bb = make_tiny_vit()

    def run(path, resume=False):
        from pgn.adapter_format import adapter_config

        data = build_dataset("digits", img_size=64, mean=bb.preprocessing.mean, std=bb.preprocessing.std,
                             augment=True, train_limit=48, test_limit=16)
        acfg = adapter_config(bb, "pgn", data.class_names, img_size=64, num_prompts=4, library_size=8,
                              generator_size=32, dataset="digits")
        model = PromptedClassifier.from_config(acfg, bb, seed=0)
        run_training(model, acfg, data, quiet(epochs=2, lr=0.05, num_workers=2), path, resume=resume, log=lambda *_: None)
        return _weights(model)

    reference = run(tmp_path / "whole")
    real = ckpt.save_checkpoint

    def dying(run_dir, epoch, *args, **kw):
        real(run_dir, epoch, *args, **kw)
        if epoch == 1:
            raise Killed("killed after epoch 1")

    monkeypatch.setattr("pgn.training.trainer.save_checkpoint", dying)
    with pytest.raises(Killed):
        run(tmp_path / "part")
    monkeypatch.setattr("pgn.training.trainer.save_checkpoint", real)
    got = run(tmp_path / "part", resume=True)
    assert all(torch.equal(got[k], reference[k]) for k in reference)


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MB file system (tmpfs), mounted for the test: where the machine lets us (root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip()[:100]}); the disk-full case needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.parametrize("kind", ["full", "read-only"])
def test_disk_full_and_read_only_run_directories_are_one_line(small_disk, tiny_weights, kind):
    if kind == "read-only":
        r = subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot remount read-only here: {r.stderr.strip()[:100]}")
    r = pgn("train", "--backbone", "timm:test_vit", "--weights", tiny_weights, "--dataset", "digits", "--img-size", 32,
            "--epochs", 1, "--train-limit", 32, "--test-limit", 16, "-K", 2, "-N", 8, "--generator-size", 32,
            "--out", small_disk / "run", "--no-progress", "--precision", "fp32")
    line = one_line_error(r)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert ("no space left on the device" if kind == "full" else "read-only file system") in line, line


@pytest.mark.parametrize("damage, message", [
    (lambda ck: torch.save([1, 2, 3], ck / "trainer_state.pt"), "holds list, not a pgn trainer state"),
    (lambda ck: torch.save({"epoch": 0}, ck / "trainer_state.pt"), "without 'optimizer'"),
    (lambda ck: (ck / "metrics.json").write_text('{"epoch": 1}'), "must hold a list of metrics rows"),
])
def test_a_damaged_checkpoint_is_one_line_on_resume(tmp_path, damage, message):
    run = tmp_path / "r"
    _train(run, epochs=1)
    damage(latest_checkpoint(run))
    with pytest.raises(PGNError, match=message):
        _train(run, resume=True, epochs=2)


def test_a_bad_image_read_by_a_worker_process_is_one_line(tmp_path, tiny_weights):
    root = tmp_path / "images"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(root / cls / f"{i}.png")
    (root / "a" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    r = pgn("train", "--backbone", "timm:test_vit", "--weights", tiny_weights, "--dataset", f"folder:{root}",
            "--img-size", 32, "--epochs", 1, "--method", "linear", "--workers", 2, "--out", tmp_path / "run",
            "--no-progress", "--precision", "fp32")
    line = one_line_error(r)
    assert "Traceback" not in r.stderr and "0.png" in line, r.stderr


def test_embeddings_of_another_width_are_one_line(tmp_path):
    """A server whose model is not the adapter's (another width) is named, not a matmul traceback."""
    import pgn as pgn_lib
    from pgn.client import RemoteClassifier
    from pgn.client.endpoints import CallableEndpoint
    from pgn.input_adapter import export_adapter

    model = pgn_lib.create_model("test-vit-timm", "pgn", classes=["a", "b"], img_size=64, layout="frame",
                                 library_space="pixel", num_prompts=2, library_size=4, widths=(4, 4, 4, 4), seed=0)
    model.save_pretrained(tmp_path / "run")
    export = export_adapter(tmp_path / "run", tmp_path / "export")
    other = CallableEndpoint(lambda canvases: np.zeros((len(canvases), 32), np.float32), answers="embeddings")
    with RemoteClassifier(export, other) as remote, pytest.raises(PGNError, match=r"answered 32 embedding values .*reads 64"):
        remote.logits(list(torch.randn(2, 3, 64, 64)))
