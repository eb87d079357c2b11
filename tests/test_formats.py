"""Every saved format keeps loading: adapters of formats 1 and 2 (committed fixtures), exports written by
pgn 0.1 (``deploy_config.json``), and today's one format for both (format 3, an export being an adapter
with a ``deploy`` section).

The fixtures and their expected outputs were recorded on another machine: float32 tolerances
(assert_close's defaults) for what passes through a convolution or a GEMM; 8-bit canvases may differ
by one level where a value sat on a rounding boundary there (bounded below)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_tiny_vit, one_line_error, pgn

import pgn as pgn_lib
from pgn import PGNError
from pgn.adapter_format import FORMAT_VERSION
from pgn.client import CallableEndpoint, RemoteClassifier
from pgn.input_adapter import InputAdapter, export_adapter

FIXTURES = Path(__file__).parent / "fixtures"
pytestmark = pytest.mark.fp32_only


def _close_u8(got: np.ndarray, want: np.ndarray) -> None:
    """Two 8-bit canvases from two machines: at most one level apart, and equal almost everywhere."""
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert got.shape == want.shape and diff.max() <= 1 and (diff == 0).mean() > 0.99, (diff.max(), (diff == 0).mean())


def test_a_format_2_adapter_loads_and_computes_what_it_computed():
    expected = torch.load(FIXTURES / "adapter-v2-expected.pt", weights_only=True)
    model = pgn_lib.load(FIXTURES / "adapter-v2", backbone=make_tiny_vit())
    assert model.config.layout == "frame" and model.config.deploy is None
    with torch.no_grad():
        torch.testing.assert_close(model.prompts(expected["x"]), expected["prompts"])
        torch.testing.assert_close(model.head(expected["features"]), expected["head"])
        torch.testing.assert_close(model(expected["x"]), expected["logits"])


def test_an_export_of_pgn_0_1_with_a_latent_library_loads_as_an_input_adapter():
    expected = torch.load(FIXTURES / "adapter-v2-expected.pt", weights_only=True)
    exported = InputAdapter.from_pretrained(FIXTURES / "export-v1-latent")
    assert exported.deploy.answers == "embeddings" and exported.deploy.outputs == 64
    assert exported.deploy.canvas_size == (64, 64) and not exported.reads_scores
    assert exported.embedding.width == 64  # the model's patch embedding travelled for the inversion
    _close_u8(exported.canvases(expected["x"]), expected["canvas_u8"].numpy())
    torch.testing.assert_close(exported.logits(expected["features"]), expected["export_logits"])


def test_an_export_of_pgn_0_1_with_a_label_mapping_classifies_through_an_endpoint():
    expected = torch.load(FIXTURES / "export-v1-labelmap-expected.pt", weights_only=True)
    exported = InputAdapter.from_pretrained(FIXTURES / "export-v1-labelmap")
    assert exported.reads_scores and exported.label_map.tolist() == [7, 2, 11] and exported.deploy.outputs == 1000
    canvases = exported.canvases(expected["x"])
    _close_u8(canvases, expected["canvas_u8"].numpy())
    cnn = pgn_lib.create_model("test-cnn-timm", "linear", classes=["a", "b", "c"], img_size=64).backbone

    def hosted(u8):  # the unmodified classifier behind an API: 8-bit canvases in, its 1000 scores out
        with torch.inference_mode():
            return cnn(exported.from_uint8(u8)).numpy()

    with RemoteClassifier(exported, CallableEndpoint(hosted)) as remote:
        got = remote.scores_of_canvases(expected["canvas_u8"].numpy())
    torch.testing.assert_close(got, expected["logits"])  # the old model's answer, read through the old mapping


def test_an_export_is_an_adapter_with_a_deploy_section_and_round_trips(tmp_path):
    model = pgn_lib.create_model(make_tiny_vit(), "pgn", classes=["a", "b"], img_size=64, num_prompts=2,
                                 library_size=4, widths=(4, 4, 4, 4), layout="frame", seed=3)
    model.eval().save_pretrained(tmp_path / "run")
    out = export_adapter(tmp_path / "run", tmp_path / "export", backbone=model.backbone)
    raw = json.loads((out / "adapter_config.json").read_text())
    assert raw["format_version"] == FORMAT_VERSION == 3 and raw["method"] == "pgn"
    assert raw["deploy"] == {"canvas_size": [64, 64], "patch_size": 16, "answers": "embeddings", "outputs": 64}
    assert "deploy" not in json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    exported = InputAdapter.from_pretrained(out)
    assert torch.equal(exported.embedding.weight, model.backbone.patch_embed_weight())  # W travels for the inversion
    x = torch.randn(3, 3, 64, 64)
    # Loaded from disk, it composes what the trained model's own deployable part composes, bit for bit.
    assert np.array_equal(exported.canvases(x), model.deployable().canvases(x))
    with torch.no_grad():
        feats = model.backbone(x)
        assert torch.equal(exported.logits(feats), model.head(feats))
    # Saved again, it is the same adapter, tensor for tensor.
    exported.save_pretrained(tmp_path / "again")
    again = InputAdapter.from_pretrained(tmp_path / "again")
    for k, v in exported.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    assert np.array_equal(again.canvases(x), exported.canvases(x))
    # An export is not a run: loading it on a backbone says what to do instead.
    with pytest.raises(PGNError, match="export for input-space deployment"):
        pgn_lib.load(out, backbone=model.backbone)
    with pytest.raises(PGNError, match="not an export"):
        InputAdapter.from_pretrained(tmp_path / "run")


def test_a_deploy_section_out_of_bounds_is_one_line(tmp_path):
    model = pgn_lib.create_model(make_tiny_vit(), "pgn", classes=["a", "b"], img_size=64, num_prompts=2,
                                 library_size=4, widths=(4, 4, 4, 4), layout="frame", seed=3)
    model.eval().save_pretrained(tmp_path / "run")
    out = export_adapter(tmp_path / "run", tmp_path / "export", backbone=model.backbone)
    path = out / "adapter_config.json"
    good = json.loads(path.read_text())
    for deploy, message in [({"canvas_size": [64000, 64000]}, "larger than"), ({"patch_size": 0}, "must be positive"),
                            ({"answers": "tokens"}, "answers"), ({"canvas_size": [64, 60]}, "multiple of patch_size"),
                            ({"answers": "scores"}, "linear head on a model with tokens reads embeddings")]:
        path.write_text(json.dumps({**good, "deploy": {**good["deploy"], **deploy}}))
        with pytest.raises(PGNError, match=message) as e:
            InputAdapter.from_pretrained(out)
        assert "\n" not in str(e.value)
    path.write_text(json.dumps({**good, "class_names": ["a", "a"]}))
    with pytest.raises(PGNError, match="more than once"):
        InputAdapter.from_pretrained(out)


def test_a_pixel_library_export_sent_as_8_bit_pixels_is_what_the_latent_model_computes(tmp_path):
    model = pgn_lib.create_model(make_tiny_vit(), "pgn", classes=["a", "b"], img_size=64, num_prompts=2,
                                 library_size=4, widths=(4, 4, 4, 4), layout="frame", library_space="pixel", seed=3)
    model.eval().save_pretrained(tmp_path / "run")
    exported = InputAdapter.from_pretrained(export_adapter(tmp_path / "run", tmp_path / "export", backbone=model.backbone))
    assert exported.embedding.width == 1  # a pixel library needs nothing of the model
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():  # the unmodified model's own forward on the decoded PNG pixels, then the exported head
        through_input = exported.logits(model.backbone(exported.from_uint8(exported.canvases(x))))
        torch.testing.assert_close(through_input, model(x), rtol=0, atol=1e-4)  # float32 sums in another order


@pytest.mark.once
def test_pgn_compose_takes_old_and_new_exports(tmp_path):
    from PIL import Image

    img = tmp_path / "cell.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(img)
    for name in ("export-v1-latent", "export-v1-labelmap"):
        r = pgn("compose", "--adapter", FIXTURES / name, img, "--out", tmp_path / f"{name}.png")
        assert r.returncode == 0, r.stderr
        assert Image.open(tmp_path / f"{name}.png").size == (64, 64)
    assert "not an exported adapter" in one_line_error(pgn("compose", "--adapter", tmp_path, img, "--out", tmp_path / "x.png"))


def _export_fixture(tmp_path, seed):
    model = pgn_lib.create_model(make_tiny_vit(), "pgn", classes=["a", "b"], img_size=64, num_prompts=2,
                                 library_size=4, widths=(4, 4, 4, 4), layout="frame", library_space="pixel", seed=seed)
    model.eval().save_pretrained(tmp_path / f"run{seed}")
    return tmp_path / f"run{seed}", model.backbone


def test_an_export_is_replaced_as_one_unit_and_a_crash_leaves_the_previous_one(tmp_path, monkeypatch):
    import os
    import stat

    from safetensors.torch import load_file

    run1, bb = _export_fixture(tmp_path, 1)
    run2, _ = _export_fixture(tmp_path, 2)
    out = export_adapter(run1, tmp_path / "export", backbone=bb)
    first = load_file(str(out / "adapter.safetensors"))
    assert stat.S_IMODE(os.stat(out).st_mode) & 0o055 == 0o055  # readable by a server running as another user

    def crash(self, directory, extra_state=None):  # dies after the weights, before the config
        from pgn.files import save_safetensors

        save_safetensors({k: v.contiguous() for k, v in self.state_dict().items()}, Path(directory) / "adapter.safetensors")
        raise KeyboardInterrupt

    monkeypatch.setattr(InputAdapter, "save_pretrained", crash)
    with pytest.raises(KeyboardInterrupt):
        export_adapter(run2, tmp_path / "export", backbone=bb)
    monkeypatch.undo()
    kept = load_file(str(out / "adapter.safetensors"))
    assert all(torch.equal(kept[k], first[k]) for k in first)  # the previous export, whole
    InputAdapter.from_pretrained(out)
    # A kill (no unwinding) leaves the partial folder; the next export of that name removes it.
    partial = tmp_path / ".export.x1y2.pgn-partial"
    (partial / "junk").mkdir(parents=True)
    export_adapter(run2, tmp_path / "export", backbone=bb)
    assert not partial.exists() and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    second = load_file(str(out / "adapter.safetensors"))
    assert any(not torch.equal(second[k], first[k]) for k in first)  # now the new one


def test_weights_with_nan_are_refused_in_one_line(tmp_path):
    from safetensors.torch import load_file, save_file

    run, bb = _export_fixture(tmp_path, 1)
    out = export_adapter(run, tmp_path / "export", backbone=bb)
    state = load_file(str(out / "adapter.safetensors"))
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key].clone().fill_(float("nan"))
    save_file(state, str(out / "adapter.safetensors"))
    with pytest.raises(PGNError, match=f"{key}.*NaN or infinite") as e:
        InputAdapter.from_pretrained(out)
    assert "\n" not in str(e.value)
