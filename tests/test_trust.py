"""Nothing pgn reads is trusted blindly: a run is read at its commit point and resumes only itself, data folders
stay inside their root, images are bounded after resizing, and every number a user gives is checked."""
import shutil
from pathlib import Path

import pytest
import torch
from helpers import adapter_cfg, quiet, spec

import pgn
from pgn.model import PromptedClassifier
from pgn.training import run_training

pytestmark = pytest.mark.fp32_only


def _weights(model) -> dict:
    return {k: v.clone() for k, v in model.trainable_modules().state_dict().items()}


def test_a_run_killed_before_publishing_its_checkpoint_is_read_at_that_checkpoint(tiny_vit, tmp_path):
    acfg = adapter_cfg("pgn", tiny_vit)
    run = tmp_path / "run"
    run_training(PromptedClassifier.from_config(acfg, tiny_vit), acfg, spec(), quiet(epochs=1), run, log=lambda *_: None)
    shutil.copytree(run / "checkpoints" / "epoch-0001", tmp_path / "epoch1")  # the adapter of epoch 1, kept aside
    run_training(PromptedClassifier.from_config(acfg, tiny_vit), acfg, spec(), quiet(epochs=2), run, resume=True,
                 log=lambda *_: None)
    epoch2 = _weights(PromptedClassifier.from_pretrained(run / "checkpoints" / "epoch-0002", tiny_vit))
    epoch1 = _weights(PromptedClassifier.from_pretrained(tmp_path / "epoch1", tiny_vit))
    assert any(not torch.equal(epoch1[k], epoch2[k]) for k in epoch1)
    # A kill between epoch 2's checkpoint (the commit) and the copy of its adapter to the run's top level:
    for name in ("adapter.safetensors", "adapter_config.json"):
        shutil.copyfile(tmp_path / "epoch1" / name, run / name)
    loaded = _weights(pgn.load(run, backbone=tiny_vit))
    assert all(torch.equal(loaded[k], epoch2[k]) for k in epoch2)  # epoch 2, not the stale top-level epoch 1
    # An empty epoch folder (a disk that filled, a hand-made folder) is not a checkpoint.
    (run / "checkpoints" / "epoch-0003").mkdir()
    loaded = _weights(pgn.load(run, backbone=tiny_vit))
    assert all(torch.equal(loaded[k], epoch2[k]) for k in epoch2)


def test_a_folder_dataset_refuses_links_to_folders(tmp_path):
    import numpy as np
    from PIL import Image

    from pgn import PGNError
    from pgn.data import build_dataset

    root = tmp_path / "data"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((8, 8, 3), 30 * i, np.uint8)).save(root / c / f"{i}.png")
    assert len(build_dataset(f"folder:{root}", img_size=16).class_names) == 2
    (root / "dog" / "up").symlink_to(root)  # a link to the parent: before, 10 images became hundreds, relabelled
    with pytest.raises(PGNError, match="is a link to a folder") as e:
        build_dataset(f"folder:{root}", img_size=16)
    assert "\n" not in str(e.value)


def test_a_checkpoint_resumes_only_the_run_it_belongs_to(tiny_vit, tmp_path):
    import json

    from pgn import PGNError

    acfg = adapter_cfg("pgn", tiny_vit)
    runs = {}
    for name, lr in (("a", 0.01), ("b", 0.02)):
        runs[name] = tmp_path / name
        run_training(PromptedClassifier.from_config(acfg, tiny_vit), acfg, spec(), quiet(epochs=1, lr=lr), runs[name],
                     log=lambda *_: None)
    # Resuming with more epochs (what a resume may change) keeps working, and so does a second resume.
    run_training(PromptedClassifier.from_config(acfg, tiny_vit), acfg, spec(), quiet(epochs=2), runs["a"], resume=True,
                 log=lambda *_: None)
    # Another run's checkpoint of the same shapes, copied in: refused.
    shutil.rmtree(runs["a"] / "checkpoints")
    shutil.copytree(runs["b"] / "checkpoints", runs["a"] / "checkpoints")
    with pytest.raises(PGNError, match="written by another run, or its config.json was edited"):
        run_training(PromptedClassifier.from_config(acfg, tiny_vit), acfg, spec(), quiet(epochs=3), runs["a"],
                     resume=True, log=lambda *_: None)
    # Its own checkpoint with an edited seed in config.json: refused too.
    config = json.loads((runs["b"] / "config.json").read_text())
    config["train"]["seed"] = 7
    (runs["b"] / "config.json").write_text(json.dumps(config))
    with pytest.raises(PGNError, match="config.json was edited"):
        run_training(PromptedClassifier.from_config(acfg, tiny_vit), acfg, spec(), quiet(epochs=2), runs["b"],
                     resume=True, log=lambda *_: None)


def test_images_are_bounded_after_resizing_and_special_files_refused(tmp_path):
    import os

    from PIL import Image

    from pgn import PGNError
    from pgn.data import eval_transform, load_image

    wide = tmp_path / "wide.png"
    Image.new("RGB", (100000, 1)).save(wide)  # 2 KB on disk, within the budget as a file
    with pytest.raises(PGNError, match="would be resized to 1,254,400,000 pixels"):
        eval_transform(112)(load_image(wide))
    assert eval_transform(112)(Image.new("RGB", (300, 200))).shape == (3, 112, 112)  # an ordinary shape passes
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(PGNError, match="special file"):  # before: open() blocked for ever
        load_image(fifo)
    with pytest.raises(PGNError, match="is a folder"):
        load_image(tmp_path)


def test_numbers_out_of_range_are_one_line_errors_naming_the_flag():
    from helpers import one_line_error, pgn

    for flag, value in (("--seed", -1), ("--seed", 2**64), ("--warmup-epochs", "inf"), ("--warmup-epochs", "1e309")):
        line = one_line_error(pgn("train", "--dataset", "digits", flag, value, "--epochs", 1))
        assert flag in line and "must be" in line, line


def test_the_python_predict_validates_like_the_cli(tiny_vit, tmp_path):
    import numpy as np
    from PIL import Image

    from pgn import PGNError

    model = pgn.create_model(tiny_vit, "linear", classes=["a", "b"], img_size=64)
    good = model.transform(Image.new("RGB", (80, 70), (120, 30, 200)))
    want = model.predict(Image.new("RGB", (80, 70), (120, 30, 200)))
    assert model.predict(good) == want and model.predict([good]) == want  # (3, S, S) alone or in a list
    cases = [([], "at least one image"), (None, "not NoneType"), (np.zeros((64, 64, 3), np.uint8), "not ndarray"),
             ((good * 255).to(torch.uint8), "float32"), (good.double(), "float32"), (good[:1], r"\(3, 64, 64\)"),
             (torch.zeros(3, 32, 32), r"\(3, 64, 64\)"), (torch.full((3, 64, 64), float("nan")), "NaN"),
             (good * 255, "outside normalised pixels"), (Image.new("RGB", (0, 0)), "no pixels")]
    for images, message in cases:
        with pytest.raises(PGNError, match=message):
            model.predict(images)
    for top_k in (0, -1, 1.5, True):
        with pytest.raises(PGNError, match="top_k"):
            model.predict(good, top_k=top_k)
    with pytest.raises(PGNError, match="string 'ab'"):
        pgn.create_model(tiny_vit, "linear", classes="ab", img_size=64)


def test_a_run_recorded_before_data_recipes_resumes_from_its_dataset_name(tmp_path):
    """Runs of earlier versions have no 'data' section in config.json and no fingerprint in their checkpoints:
    they resume from the dataset's name and split sizes (before: a TypeError)."""
    import glob
    import json

    from helpers import pgn as cli

    run = tmp_path / "run"
    r = cli("train", "--backbone", "test-vit-timm", "--dataset", "digits", "--img-size", 32, "--epochs", 1,
            "--train-limit", 32, "--test-limit", 16, "-K", 2, "-N", 4, "--generator-size", 32, "--out", run,
            "--no-progress")
    assert r.returncode == 0, r.stderr
    config = json.loads((run / "config.json").read_text())
    del config["data"]
    (run / "config.json").write_text(json.dumps(config))
    state_path = sorted(glob.glob(str(run / "checkpoints" / "epoch-*" / "trainer_state.pt")))[-1]
    state = torch.load(state_path, weights_only=True)
    del state["run_fingerprint"]
    torch.save(state, state_path)
    r = cli("train", "--resume", "--out", run, "--epochs", 2, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["epoch"] == 2


def test_cli_messages_say_what_to_do(tmp_path, tiny_weights):
    import json
    import os

    from helpers import one_line_error
    from helpers import pgn as cli

    line = one_line_error(cli("train", "--dataset", "digits", "--train-limit", 1, "--backbone", "test-vit-timm",
                              "--img-size", 32))
    assert "raise --train-limit to at least 10" in line
    assert "give --backbone too" in one_line_error(cli("predict", "--adapter", tmp_path, "--weights", "w.pt", "x.png"))
    export = Path(__file__).parent / "fixtures" / "export-v1-labelmap"
    assert "must start with http://" in one_line_error(cli("predict", "--adapter", export, "--api", "", "x.png"))
    # A relative --weights is recorded by its absolute path: the run loads from any folder.
    os.symlink(tiny_weights, tmp_path / "w.safetensors")
    r = cli("train", "--backbone", "timm:test_vit", "--weights", "w.safetensors", "--dataset", "digits", "--img-size", 32,
            "--epochs", 1, "--train-limit", 20, "--test-limit", 10, "--method", "linear", "--out", "run", "--no-progress",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    recorded = json.loads((tmp_path / "run" / "adapter_config.json").read_text())["backbone_weights"]
    assert Path(recorded).is_absolute() and Path(recorded) == (tmp_path / "w.safetensors").resolve()
