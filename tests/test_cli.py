"""The command line, run as a user runs it: subprocesses, real files, exit codes."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import OFFICIAL, needs_official, one_line_error, pgn
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, tiny_weights):
    run = tmp_path_factory.mktemp("runs") / "digits"
    r = pgn("train", "--backbone", "timm:test_vit", "--weights", tiny_weights, "--dataset", "digits",
            "--img-size", 32, "--epochs", 1, "--train-limit", 64, "--test-limit", 32, "-K", 2, "-N", 8,
            "--generator-size", 32, "--out", run, "--no-progress")
    assert r.returncode == 0, r.stderr
    return run


def test_train_writes_run_directory(digits_run):
    names = {p.name for p in digits_run.iterdir()}
    assert {"adapter.safetensors", "adapter_config.json", "config.json", "metrics.jsonl", "checkpoints"} <= names
    assert {p.name for p in (digits_run / "checkpoints" / "epoch-0001").iterdir()} == {
        "adapter.safetensors", "adapter_config.json", "trainer_state.pt", "metrics.json"}
    rows = [json.loads(line) for line in (digits_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1]


def test_eval_predict_info(digits_run, tmp_path):
    import pgn as lib

    r = pgn("eval", digits_run, "--test-limit", 32)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["n"] == 32 and out["dataset"] == "digits"
    # The saved adapter scores what training measured after its last epoch, on the same 32 test images.
    rows = [json.loads(line) for line in (digits_run / "metrics.jsonl").read_text().splitlines()]
    assert out["top1"] == pytest.approx(rows[-1]["test_top1"]) and out["loss"] == pytest.approx(rows[-1]["test_loss"])
    img = tmp_path / "seven.png"
    Image.fromarray((np.random.RandomState(0).rand(8, 8) * 255).astype("uint8"), "L").save(img)
    r = pgn("predict", "--adapter", digits_run, img, "--top-k", 2, "--json")
    assert r.returncode == 0, r.stderr
    pred = json.loads(r.stdout.strip().splitlines()[-1])
    want = lib.load(digits_run).predict([img], top_k=2)[0]  # the Python API on the same file
    assert [t["label"] for t in pred["top"]] == [label for label, _ in want]
    assert [t["score"] for t in pred["top"]] == pytest.approx([p for _, p in want])
    r = pgn("info", "--adapter", digits_run)
    assert r.returncode == 0, r.stderr
    assert '"trainable_parameters"' in r.stdout


def test_analyze(digits_run, tmp_path):
    r = pgn("analyze", digits_run, "-o", tmp_path, "--max-images", 40)
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "analysis.json").read_text())
    dep = result["input_dependence"]
    assert dep["total"] > 0 and dep["within_class"] > 0  # a PGN's prompts depend on the input
    assert {"curves.png", "token_usage.png", "prompt_patches.png"} <= {p.name for p in tmp_path.iterdir()}
    assert "inversion_residual_max" in result  # latent library: patches come from inversion
    assert 0 < result["mixture_sharpness"]["entropy"] <= 1


def test_input_dependence_is_zero_for_identical_prompts():
    import torch

    from pgn.analysis import input_dependence

    same = torch.ones(6, 2, 4)
    assert input_dependence(same, torch.tensor([0, 0, 1, 1, 2, 2]))["total"] == 0


def test_mixture_sharpness_spans_uniform_to_one_token():
    import torch

    from pgn.analysis import mixture_sharpness

    uniform = mixture_sharpness(torch.full((3, 2, 8), 1 / 8))
    assert abs(uniform["entropy"] - 1) < 1e-9 and abs(uniform["max_coefficient"] - 1 / 8) < 1e-9
    one_hot = mixture_sharpness(torch.nn.functional.one_hot(torch.tensor([[1, 5]]), 8).float())
    assert one_hot["entropy"] < 1e-9 and one_hot["max_coefficient"] == 1


def test_resume_from_cli(digits_run, tiny_weights):
    r = pgn("train", "--backbone", "timm:test_vit", "--weights", tiny_weights, "--dataset", "digits",
            "--epochs", 2, "--train-limit", 64, "--test-limit", 32, "--out", digits_run, "--resume", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert len((digits_run / "metrics.jsonl").read_text().splitlines()) == 2


def test_bad_inputs_exit_nonzero_with_one_line(digits_run, tmp_path):
    assert "unknown backbone" in one_line_error(pgn("train", "--backbone", "nope", "--dataset", "digits"))
    assert "does not exist" in one_line_error(pgn("info", "--backbone", "timm:test_vit", "--weights", "/no/file"))
    assert "unknown dataset" in one_line_error(pgn("eval", digits_run, "--dataset", "imagenet-zzz"))
    assert "does not exist" in one_line_error(pgn("predict", "--adapter", digits_run, tmp_path / "missing.png"))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    assert "corrupt.png" in one_line_error(pgn("predict", "--adapter", digits_run, corrupt))
    assert "no adapter" in one_line_error(pgn("predict", "--adapter", tmp_path, corrupt))
    assert "not a readable" in one_line_error(pgn("info", "--official", corrupt))


def test_checkpoint_for_another_width(digits_run):
    # The digits adapter was trained on a width-64 ViT; the embedded backbone has width 384.
    msg = one_line_error(pgn("eval", digits_run, "--backbone", "dinov2-s14-imgfocus"))
    assert "width 64" in msg and "384" in msg


@needs_official
def test_official_checkpoint_info():
    r = pgn("info", "--official", OFFICIAL / "pgn_dino_cifar100.pt")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["parameters"] == 620_656


def test_embedded_backbone_end_to_end_on_real_images(tmp_path):
    """A few real ELPV images through the real embedded backbone: train, evaluate, predict."""
    pytest.importorskip("elpv_dataset")
    run = tmp_path / "elpv"
    r = pgn("train", "--dataset", "elpv", "--epochs", 1, "--train-limit", 32, "--test-limit", 16, "--out", run,
            "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "trainable parameters: 621,426" in r.stdout  # resnet10 K16 N128 on width 384 + a 2-class head
    from elpv_dataset.utils import load_dataset

    img = tmp_path / "cell.png"
    Image.fromarray(load_dataset()[0][0]).save(img)  # a real 300x300 grey solar-cell image
    r = pgn("predict", "--adapter", run, img, "--json")
    assert r.returncode == 0, r.stderr
    import pgn as lib

    want = lib.load(run).predict([img])[0][0]
    got = json.loads(r.stdout.strip().splitlines()[-1])["top"][0]
    assert got["label"] == want[0] and got["score"] == pytest.approx(want[1])


class _Reached(Exception):
    """Raised by the recording forward below: the devices are known, nothing more needs to run."""


def test_device_flag_moves_model_and_inputs(digits_run, tiny_weights, tmp_path, monkeypatch):
    """--device meta on eval, predict and serve: the model's weights and its inputs both land there."""
    import torch

    from pgn.cli.main import main
    from pgn.model import PromptedClassifier
    from pgn.server import models

    seen = []

    def recording_forward(self, images):
        seen.append((next(self.parameters()).device.type, images.device.type))
        raise _Reached

    monkeypatch.setattr(PromptedClassifier, "forward", recording_forward)
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(img)
    for argv in (["eval", str(digits_run), "--test-limit", "8", "--device", "meta"],
                 ["predict", "--adapter", str(digits_run), str(img), "--device", "meta"]):
        with pytest.raises(_Reached):
            main(argv)
    assert seen == [("meta", "meta"), ("meta", "meta")]

    served = {}

    def recording_embed(self, x):
        served["devices"] = (next(self.backbone.parameters()).device.type, x.device.type)
        raise _Reached

    monkeypatch.setattr(models.ServedModel, "embed", recording_embed)
    import uvicorn

    def run_once(self, sockets=None):  # instead of serving forever: one forward through the app's batcher
        app = self.config.app
        with pytest.raises(_Reached):
            app.state.batcher.forward("embed", torch.zeros(1, 3, 32, 32))
        app.state.batcher.close()

    monkeypatch.setattr(uvicorn.Server, "run", run_once)
    assert main(["serve", "--backbone", "timm:test_vit", "--weights", str(tiny_weights), "--port", "0",
                 "--device", "meta"]) == 0
    assert served["devices"] == ("meta", "meta")


def test_resume_takes_the_runs_own_settings_and_refuses_others(tmp_path, tiny_weights):
    """The README's form, `pgn train --out RUN --resume --epochs N`, continues that run exactly."""
    common = ["--backbone", "timm:test_vit", "--weights", tiny_weights, "--dataset", "digits", "--img-size", 32,
              "-K", 2, "-N", 8, "--generator-size", 32, "--no-progress", "--precision", "fp32"]
    data = ["--train-limit", 64, "--test-limit", 32, "--batch-size", 16, "--lr", 0.05, "--seed", 3]
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert pgn("train", *common, *data, "--epochs", 2, "--out", whole).returncode == 0
    assert pgn("train", *common, *data, "--epochs", 1, "--out", part).returncode == 0
    r = pgn("train", "--out", part, "--resume", "--epochs", 2, "--no-progress")  # nothing else given
    assert r.returncode == 0, r.stderr
    config = json.loads((part / "config.json").read_text())
    assert (config["dataset"]["train_size"], config["dataset"]["test_size"]) == (64, 32)
    assert (config["train"]["batch_size"], config["train"]["lr"], config["train"]["seed"]) == (16, 0.05, 3)
    # Extended to 2 epochs, it is configured as the run that asked for 2 from the start (the data it draws,
    # the batch, the rates, the seed); that a resume then continues bit for bit is tests/test_faults.py's.
    reference = json.loads((whole / "config.json").read_text())
    for section in ("train", "data", "dataset", "adapter"):
        assert config[section] == reference[section], section
    for flag, value, named in (("--lr", 0.5, "--lr"), ("--train-limit", 100, "--train-limit"),
                               ("--batch-size", 32, "--batch-size"), ("-K", 4, "--num-prompts"),
                               ("--generator-widths", "8,8,8,8", "--generator-widths")):
        r = pgn("train", "--out", part, "--resume", "--epochs", 3, flag, value, "--no-progress")
        line = one_line_error(r)
        # the library names its setting; the line names the flag that sets it
        assert r.returncode == 2 and "keeps its own settings" in line and f"with {named} " in line, line
    assert json.loads((part / "config.json").read_text())["train"]["epochs"] == 2  # nothing was rewritten
    # How often the test split is scored changes nothing that is trained: a resume may set it.
    r = pgn("train", "--out", part, "--resume", "--epochs", 4, "--eval-every", 0, "--no-progress")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (part / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows if "test_top1" in row] == [1, 2, 4]


def _foreign_dir(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "config.json").write_text('{"my": "settings"}')
    (d / ".notes.tmp").write_text("keep me")
    return d


def _adapter_without(tmp_path, digits_run, key=None, change=None):
    import shutil

    d = tmp_path / "adapter"
    shutil.copytree(digits_run, d, ignore=shutil.ignore_patterns("checkpoints", ".pgn.lock"))
    cfg = json.loads((d / "adapter_config.json").read_text())
    if key:
        cfg.pop(key)
    cfg.update(change or {})
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    return d


# Each case: the arguments (built from tmp_path and the digits run), then what the one line must say.
MISUSE = {
    "out names a file": (lambda t, r, w: ["train", "--out", _file(t), *_tiny(w)], "is a file"),
    "out holds foreign files": (lambda t, r, w: ["train", "--out", _foreign_dir(t), *_tiny(w)], "pgn did not write"),
    "generator widths not numbers": (lambda t, r, w: ["train", "--generator-widths", "a,b", *_tiny(w)],
                                     "comma-separated stage widths"),
    "top-k negative": (lambda t, r, w: ["predict", "--adapter", r, _file(t), "--top-k", "-3"], "at least 1"),
    "eval batch size 0": (lambda t, r, w: ["eval", r, "--batch-size", "0"], "at least 1"),
    "port too large": (lambda t, r, w: ["serve", "--port", "70000"], "a port is 0 to 65535"),
    "port negative": (lambda t, r, w: ["serve", "--port", "-1"], "a port is 0 to 65535"),
    "adapter without img_size": (lambda t, r, w: ["eval", _adapter_without(t, r, "img_size"), "--test-limit", "8"],
                                 "'img_size' is missing"),
    "adapter without mean": (lambda t, r, w: ["eval", _adapter_without(t, r, "mean"), "--test-limit", "8"],
                             "'mean' is missing"),
    "adapter with std 0": (lambda t, r, w: ["eval", _adapter_without(t, r, change={"std": [0, 0, 0]}),
                                            "--test-limit", "8"], "std finite and positive"),
    "adapter img_size huge": (lambda t, r, w: ["eval", _adapter_without(t, r, change={"img_size": 16_000_000_000}),
                                               "--test-limit", "8"], "bound of 4096"),
    # Numbers that would wreck a run, refused before any file is written; a run that diverges anyway stops.
    "grad clip negative": (lambda t, r, w: ["train", "--grad-clip", "-1", "--out", t / "run", *_tiny(w)],
                           "grad_clip must be a positive number"),
    "weight decay negative": (lambda t, r, w: ["train", "--weight-decay", "-1", "--out", t / "run", *_tiny(w)],
                              "weight decay must be >= 0"),
    "workers negative": (lambda t, r, w: ["train", "--workers", "-1", "--out", t / "run", *_tiny(w)],
                         "workers must be >= 0"),
    "lr infinite": (lambda t, r, w: ["train", "--lr", "inf", "--out", t / "run", *_tiny(w)],
                    "lr must be a positive finite number"),
    "lr that diverges": (lambda t, r, w: ["train", "--lr", "1e6", "--epochs", "6", "--batch-size", "16",
                                          "--precision", "fp32", "--out", t / "run", *_tiny(w)], "diverged"),
    # Devices this machine lacks; weights that are not weights.
    "device absent": (lambda t, r, w: ["eval", r, "--device", "mps", "--test-limit", "8"], "MPS is not available"),
    "device unknown": (lambda t, r, w: ["eval", r, "--device", "nonsense", "--test-limit", "8"],
                       "unknown device 'nonsense'"),
    "weights file corrupt": (lambda t, r, w: ["train", *_tiny(_garbage(t)), "--out", t / "run"], "garbage.safetensors"),
    "weights file missing": (lambda t, r, w: ["train", *_tiny(t / "nope.safetensors"), "--out", t / "run"],
                             "does not exist"),
    # The library names its settings; the line names the flags that set them.
    "option of another method": (lambda t, r, w: ["train", *_tiny(w), "--method", "linear", "--out", t / "run"],
                                 "--generator-size, --library-size, --num-prompts do not apply to --method linear; it takes --head-norm"),
    "train device absent": (lambda t, r, w: ["train", *_tiny(w), "--device", "mps", "--out", t / "run"],
                            "MPS is not available"),
    "resume without out": (lambda t, r, w: ["train", "--resume", "--epochs", "2"], "--resume needs --out"),
}


def _garbage(tmp_path):
    f = tmp_path / "garbage.safetensors"
    f.write_bytes(b"{}not a safetensors file")
    return f


def _file(tmp_path):
    f = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(f)
    return f


def _tiny(weights):
    return ["--backbone", "timm:test_vit", "--weights", weights, "--dataset", "digits", "--img-size", 32, "--epochs", 1,
            "--train-limit", 32, "--test-limit", 16, "-K", 2, "-N", 8, "--generator-size", 32, "--no-progress"]


@pytest.mark.parametrize("case", sorted(MISUSE))
def test_misuse_is_one_line_and_exit_2(case, digits_run, tiny_weights, tmp_path):
    build, message = MISUSE[case]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    r = pgn(*build(tmp_path, digits_run, tiny_weights))
    line = one_line_error(r)
    assert r.returncode == 2 and message in line and "Traceback" not in r.stderr, line
    for path, content in before.items():  # nothing of the user's was changed or removed
        assert path.read_bytes() == content, path


def test_a_state_dict_mismatch_names_the_key_and_both_shapes(digits_run, tmp_path):
    from safetensors.torch import load_file, save_file

    d = _adapter_without(tmp_path, digits_run)
    state = load_file(str(d / "adapter.safetensors"))
    key = next(k for k in state if state[k].ndim == 2)
    state[key] = torch.zeros(state[key].shape[0] + 1, state[key].shape[1])
    save_file(state, str(d / "adapter.safetensors"))
    line = one_line_error(pgn("eval", d, "--test-limit", 8))
    assert repr(key) in line and "has shape" in line and "this model's is" in line


def test_a_finished_run_says_so_on_resume(digits_run):
    r = pgn("train", "--out", digits_run, "--resume", "--no-progress")
    assert r.returncode == 0 and "has finished all" in r.stdout and "/1" not in r.stdout.split("finished")[0]


@pytest.mark.parametrize("backbone, name, content", [
    ("timm:test_vit", "truncated.safetensors", "truncate"),
    ("vit-b32", "foreign.pth", b"\x80\x04not a pickle at all"),
    ("clip-vit-b32", "foreign.safetensors", b"{}garbage"),
    ("vit-b32", "empty.pth", b""),
])
def test_corrupt_or_foreign_weights_files_are_one_line(tmp_path, tiny_weights, backbone, name, content):
    path = tmp_path / name
    path.write_bytes(tiny_weights.read_bytes()[:200] if content == "truncate" else content)
    r = pgn("info", "--backbone", backbone, "--weights", path)
    line = one_line_error(r)
    assert r.returncode == 2 and "Traceback" not in r.stderr and (str(path) in line or "weights" in line), line


def test_zero_shot_eval_is_one_library_call_and_says_its_size():
    r = pgn("eval", "--method", "zeroshot", "--backbone", "test-vit-clip", "--dataset", "digits", "--test-limit", 8,
            "--precision", "fp32")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "--img-size 96: test-vit-clip's native input (a smaller one trains faster on a CPU)"
    out = json.loads(lines[-1])
    assert (out["dataset"], out["method"], out["n"], out["precision"]) == ("digits", "zeroshot", 8, "fp32")
    assert 0 <= out["top1"] <= 1 and out["top5"] >= out["top1"]


def test_predict_takes_precision_as_every_command_does(digits_run, tmp_path):
    img = tmp_path / "seven.png"
    Image.fromarray((np.random.RandomState(1).rand(8, 8) * 255).astype("uint8"), "L").save(img)
    for flags, want in (((), "fp32"), (("--precision", "bf16"), "bf16"), (("--fp32",), "fp32")):
        r = pgn("predict", "--adapter", digits_run, img, "--json", "--device", "cpu", *flags)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout.strip().splitlines()[-1])["precision"] == want, flags


def test_library_setting_names_reach_the_user_as_flags():
    """The library's message names `num_prompts` and `method=linear`; the command line's, their flags."""
    line = one_line_error(pgn("train", "--method", "linear", "-K", 4))
    assert line.startswith("pgn: error: --num-prompts does not apply to --method linear"), line
    assert "pgn: error: pgn" not in line
    from pgn.cli.main import as_flags, build_parser

    assert as_flags("`head_lr`, `train_limit=5`, `progress` and `arch`", build_parser()) == \
        "--head-lr, --train-limit 5, --no-progress and --generator"


def test_the_options_given_are_found_without_argparse_internals():
    from pgn.cli.main import given_options

    assert given_options(["train"]) == set()
    assert given_options(["train", "--ep", "3", "--no-prog", "-K", "4", "--bf16", "--generator", "resnet18",
                          "--lr=0.1"]) == {"epochs", "no_progress", "num_prompts", "precision", "arch", "lr"}
    source = (ROOT / "src" / "pgn" / "cli" / "main.py").read_text()
    assert "_actions" not in source and "_SubParsersAction" not in source


def test_resume_lets_through_what_the_library_lets_change():
    from pgn.api import RESUMABLE
    from pgn.cli.main import _resume_free

    assert _resume_free() == {"no_progress" if n == "progress" else n for n in RESUMABLE} | {"out", "resume"}


def test_help_lists_the_registries():
    from pgn.backbones import list_backbones
    from pgn.methods import list_methods

    train = pgn("train", "--help").stdout
    assert "efficientnet-lite0" in " ".join(train.split()).replace("- ", "-")
    top = " ".join(pgn("--help").stdout.split())
    assert all(m in top for m in list_methods() if m != "zeroshot") and "linear probe)" not in top
    assert "info --backbones" not in pgn("export-model", "--help").stdout
    assert list_backbones()
