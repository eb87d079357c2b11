"""The Python API (pgn.create_model / train / load, model.predict / save_pretrained) on tiny real ViTs."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_tiny_vit, spec
from PIL import Image

import pgn
from pgn import PGNError

FIXTURES = Path(__file__).parent / "fixtures"


def _images(n=3, size=48):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)) for _ in range(n)]


def test_create_train_save_load_predict(tmp_path):
    bb = make_tiny_vit()
    model = pgn.create_model(bb, "pgn", classes=["a", "b", "c"], img_size=64, num_prompts=4, library_size=8)
    assert (model.config.mean, model.config.std) == (tuple(bb.preprocessing.mean), tuple(bb.preprocessing.std))
    assert model.config.num_prompts == model.config.generator["num_prompts"] == model.prompts.num_prompts == 4
    row = pgn.train(model, spec(), epochs=1, out=tmp_path / "run", batch_size=8, lr=0.05, progress=False)
    assert row["epoch"] == 1 and (tmp_path / "run" / "metrics.jsonl").is_file()
    model.save_pretrained(tmp_path / "adapter")
    loaded = pgn.load(tmp_path / "adapter", backbone=bb)
    assert not loaded.training and loaded.config == model.config
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)

    images = _images()
    preds = loaded.predict(images, top_k=2)
    with torch.no_grad():
        probs = loaded(torch.stack([loaded.transform(im) for im in images])).softmax(-1)
    for p, row_probs in zip(preds, probs):
        best = int(row_probs.argmax())
        assert p[0] == ("abc"[best], pytest.approx(float(row_probs[best]), abs=1e-6)) and len(p) == 2
        assert p[0][1] >= p[1][1]
    paths = []
    for i, im in enumerate(images):
        im.save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    assert loaded.predict(paths, top_k=2) == preds  # files read through the same preprocessing


def test_create_model_refuses_unknown_options():
    bb = make_tiny_vit()
    with pytest.raises(PGNError, match="`libary_size` does not apply to `method=pgn`"):
        pgn.create_model(bb, "pgn", classes=["a", "b"], img_size=64, libary_size=8)
    with pytest.raises(PGNError, match="classes is empty"):
        pgn.create_model(bb, "linear", img_size=64)
    with pytest.raises(PGNError, match="`library_size` does not apply to `method=linear`; it takes `head_norm`"):
        pgn.create_model(bb, "linear", classes=["a", "b"], img_size=64, library_size=8)
    with pytest.raises(PGNError, match="go into the method config"):
        pgn.create_model(bb, pgn.PGNConfig(), classes=["a", "b"], img_size=64, library_size=8)
    model = pgn.create_model(bb, "linear", classes=["a", "b", "c"], img_size=64)
    with pytest.raises(PGNError, match="unknown training option"):
        pgn.train(model, spec(), epochs=1, learning_rate=0.1)


def _fixture_model():
    torch.manual_seed(0)
    return pgn.create_model(make_tiny_vit(), "pgn", classes=["a", "b"], img_size=32, num_prompts=2, library_size=4,
                            widths=(4, 4, 4, 4), dataset="fixture")


# Committed adapters of every older format, each with the outputs recorded when it was written: adapter-v{N}/
# holds format N and is never rewritten (PGN_WRITE_FIXTURES adds a fixture of the current format, beside them).
COMMITTED = sorted(p for p in FIXTURES.glob("adapter-v*") if p.is_dir())
WRITE = bool(os.environ.get("PGN_WRITE_FIXTURES"))


@pytest.mark.skipif(not WRITE, reason="writes a new fixture only when asked: PGN_WRITE_FIXTURES=1 pytest tests/test_api.py")
def test_write_a_fixture_of_the_current_format(tmp_path):
    """Saves the fixture model in the current format to fixtures/adapter-v{N}/ (N: the format it was saved in),
    with its recorded outputs; refuses to replace a fixture that exists (committed fixtures are history)."""
    import json
    import shutil

    model = _fixture_model()
    with torch.no_grad():
        model.head(torch.randn(64, 64) * 40)  # non-trivial BatchNorm running statistics
    model.save_pretrained(tmp_path / "adapter")
    version = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["format_version"]
    target, expected = FIXTURES / f"adapter-v{version}", FIXTURES / f"adapter-v{version}-expected.pt"
    if target.exists() or expected.exists():
        pytest.fail(f"{target.name} exists: a committed fixture is never overwritten (delete it by hand only if "
                    "it was never committed)")
    model.eval()
    x, feats = torch.randn(2, 3, 32, 32), torch.randn(2, 64) * 40
    with torch.no_grad():
        record = {"x": x, "features": feats, "prompts": model.prompts(x), "head": model.head(feats)}
    shutil.copytree(tmp_path / "adapter", target)
    torch.save(record, expected)


@pytest.mark.skipif(WRITE, reason="PGN_WRITE_FIXTURES is set: a fixture is never compared with what this run "
                                  "wrote; run again without it to check every committed fixture")
@pytest.mark.parametrize("fixture", COMMITTED, ids=[p.name for p in COMMITTED])
def test_adapters_written_by_older_versions_keep_loading(fixture):
    """A committed adapter (format 1 was written by pgn 0.1.0): its stored tensors reproduce recorded outputs."""
    import json

    assert json.loads((fixture / "adapter_config.json").read_text())["format_version"] == int(fixture.name[9:])
    expected = torch.load(FIXTURES / f"{fixture.name}-expected.pt", weights_only=True)
    model = pgn.load(fixture, backbone=make_tiny_vit())
    assert model.config.head_norm == "batchnorm" and model.config.class_names == ["a", "b"]
    # Recorded on another machine: float32 tolerances (assert_close's defaults), since other CPUs run other
    # GEMM kernels (one ulp apart); exact equality holds only within one process on one machine.
    with torch.no_grad():
        torch.testing.assert_close(model.prompts(expected["x"]), expected["prompts"])
        torch.testing.assert_close(model.head(expected["features"]), expected["head"])


def test_the_format_1_fixture_is_committed():
    """The oldest format stays checked: its fixture (and the recording) must not go missing or be replaced."""
    assert FIXTURES / "adapter-v1" in COMMITTED and (FIXTURES / "adapter-v1-expected.pt").is_file()


def test_method_configs_are_the_typed_form_of_method_names():
    bb = make_tiny_vit()
    cases = [(pgn.PGNConfig(num_prompts=4, library_size=8, layout="frame", library_space="pixel"),
              dict(num_prompts=4, library_size=8, layout="frame", library_space="pixel")),
             (pgn.IIPConfig(num_prompts=3), dict(num_prompts=3)), (pgn.VPConfig(pad=6), dict(pad=6)),
             (pgn.LinearConfig(head_norm="none"), dict(head_norm="none")), (pgn.FinetuneConfig(), {})]
    for typed, options in cases:
        a = pgn.create_model(bb, typed, classes=["a", "b"], img_size=64)
        b = pgn.create_model(bb, typed.method, classes=["a", "b"], img_size=64, **options)
        assert a.config == b.config and a.config.method == typed.method
    assert pgn.create_model(bb, pgn.VPConfig(pad=6), classes=["a", "b"], img_size=64).config.method_config.pad == 6
    assert pgn.create_model(bb, "vp", classes=["a", "b"], img_size=224).config.method_config.pad == 30  # the paper's frame
    assert pgn.create_model(bb, pgn.PGNConfig(num_prompts=5), classes=["a", "b"], img_size=64).prompts.num_prompts == 5


def test_img_size_defaults_to_the_backbones_native_input_and_says_so():
    import logging

    bb = make_tiny_vit()
    native, patch = bb.preprocessing.input_size, bb.patch_size
    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    log = logging.getLogger("pgn")
    log.addHandler(handler)
    level, log_level = log.level, logging.INFO
    log.setLevel(log_level)
    try:
        model = pgn.create_model(bb, "linear", classes=["a", "b"])
        chosen = pgn.create_model(bb, "linear", classes=["a", "b"], img_size=native - patch)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    assert model.config.img_size == native and chosen.config.img_size == native - patch
    assert [line for line in lines if line.startswith("`img_size`")] == [
        f"`img_size` {native}: {bb.name}'s native input (a smaller one trains faster on a CPU)"]  # said once, not for the chosen one


def test_the_seed_builds_the_model_whatever_ran_before():
    bb = make_tiny_vit()
    kw = dict(classes=["a", "b"], img_size=32, num_prompts=2, library_size=4, widths=(4, 4, 4, 4))

    def weights(model):
        return model.trainable_modules().state_dict()

    torch.manual_seed(123)
    a = pgn.create_model(bb, "pgn", seed=5, **kw)
    torch.rand(1000)  # whatever ran before must not matter
    b = pgn.create_model(bb, "pgn", seed=5, **kw)
    c = pgn.create_model(bb, "pgn", seed=6, **kw)
    for key, value in weights(a).items():
        torch.testing.assert_close(weights(b)[key], value, rtol=0, atol=0)
    assert any(not torch.equal(weights(c)[k], v) for k, v in weights(a).items() if v.is_floating_point())
    state = torch.get_rng_state()
    pgn.create_model(bb, "linear", classes=["a", "b"], img_size=32, seed=1)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is left as it was


def test_demo_models_are_drawn_from_the_demo_seed(embedded):
    """make demo prints the same numbers twice: its models are bit-identical for one seed, not for two."""
    from pgn.data import DataSpec
    from pgn.demo import demo_model

    data = DataSpec(name="elpv", class_names=["functional", "defective"], train=None, test=None)
    for method in ("pgn", "linear"):
        a = demo_model(method, embedded, data, seed=0)[1].trainable_modules().state_dict()
        torch.rand(100)  # what ran before does not matter
        b = demo_model(method, embedded, data, seed=0)[1].trainable_modules().state_dict()
        c = demo_model(method, embedded, data, seed=1)[1].trainable_modules().state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point() and a[k].numel() > 1)


def test_classes_come_from_the_data_when_left_out():
    model = pgn.create_model(make_tiny_vit(), "linear", dataset="digits", img_size=32)
    assert model.config.class_names == [str(i) for i in range(10)] and model.config.dataset == "digits"


def test_the_command_line_and_the_api_are_one_tool_the_same_seed_giving_the_same_weights(tmp_path):
    """Two ``pgn train`` runs with one seed write bit-identical adapters, and ``pgn.train`` with the same seed
    and subset trains on the same images to the same weights (fp32, in one process: exact)."""
    from safetensors.torch import load_file

    from pgn.cli.main import main

    def cli(out, seed=1):
        assert main(["train", "--backbone", "test-vit-timm", "--dataset", "digits", "--img-size", "32", "--seed",
                     str(seed), "--train-limit", "100", "--test-limit", "20", "--epochs", "1", "-K", "2", "-N", "4",
                     "--generator-widths", "4,4,4,4", "--generator-size", "32", "--batch-size", "16",
                     "--out", str(out), "--no-progress", "--precision", "fp32", "--device", "cpu"]) == 0
        return load_file(str(out / "adapter.safetensors"))

    a, b, other = cli(tmp_path / "a"), cli(tmp_path / "b"), cli(tmp_path / "other", seed=2)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], other[k]) for k in a)
    model = pgn.create_model("test-vit-timm", "pgn", dataset="digits", img_size=32, num_prompts=2, library_size=4,
                             widths=(4, 4, 4, 4), generator_size=32, seed=1)
    pgn.train(model, "digits", epochs=1, train_limit=100, test_limit=20, seed=1, batch_size=16,
              out=tmp_path / "api", progress=False, precision="fp32", device="cpu")
    api = load_file(str(tmp_path / "api" / "adapter.safetensors"))
    assert api.keys() == a.keys() and all(torch.equal(api[k], a[k]) for k in a)
    assert pgn.load(tmp_path / "api", device="cpu").config == pgn.load(tmp_path / "a", device="cpu").config
