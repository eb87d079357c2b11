"""``pgn export-model``: the unmodified model as ONNX in a Triton/KServe model repository, checked with ONNX Runtime."""
import json

import numpy as np
import pytest
import torch
from helpers import one_line_error, pgn

import pgn as pgn_lib
from pgn import PGNError
from pgn.backbones import create_backbone
from pgn.client import RemoteClassifier
from pgn.client.endpoints import CallableEndpoint
from pgn.input_adapter import export_adapter
from pgn.pixels import from_uint8
from pgn.server.model_repository import TOLERANCE, export_model, read_model_info

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (the test extras install it)")


def _session(model_dir):
    return ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name, size", [("test-vit-timm", 64), ("test-cnn-timm", None), ("test-vit-clip", None),
                                        ("test-vit-torchvision", None)])
def test_onnx_runtime_answers_what_the_model_answers_on_real_canvases(name, size, tmp_path):
    out = export_model(name, tmp_path / "repo", img_size=size)
    bb = create_backbone(name)
    info = read_model_info(out)
    side = info["img_size"]
    assert out == tmp_path / "repo" / name and (out / "1" / "model.onnx").is_file()
    config = (out / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config and f"dims: [ -1, {side}, {side}, 3 ]" in config
    assert info["output"] == ("scores" if name == "test-cnn-timm" else "embeddings")
    assert info["onnx_vs_torch_relative_error"] <= TOLERANCE
    # Canvases that are not the export's own check: smooth photos-like images, 8-bit, a batch of another size.
    yy, xx = np.mgrid[0:side, 0:side] / side
    canvases = np.stack([np.stack([(np.sin(6 * xx * (i + 1)) + 1) * 127, yy * 255, (xx * yy) * 255], -1)
                         for i in range(3)]).astype(np.uint8)
    got = _session(out).run(None, {"input": canvases})[0]
    with torch.inference_mode():
        want = bb(from_uint8(canvases, bb.preprocessing.mean, bb.preprocessing.std)).numpy()
    assert got.shape == want.shape == (3, info["output_width"])
    # Measured relative error of float32 ONNX Runtime against PyTorch: about 1e-6 on these models.
    assert np.abs(got - want).max() <= TOLERANCE * np.abs(want).max()


def test_an_adapter_reaches_the_exported_model_through_onnx_runtime_and_predicts_as_the_latent_model(tmp_path):
    """The deployment as a user runs it: the model as ONNX on the server side, only canvases cross."""
    model = pgn_lib.create_model("test-vit-timm", "pgn", classes=["a", "b", "c"], img_size=64, num_prompts=4,
                                 library_size=8, widths=(4, 4, 4, 4), layout="frame", library_space="pixel", seed=1)
    torch.nn.init.normal_(model.head.fc.weight, std=0.5)
    with torch.no_grad():
        model.head(torch.randn(64, 64) * 3)  # BatchNorm running statistics that are not the identity
    model.eval().save_pretrained(tmp_path / "adapter")
    export_adapter(tmp_path / "adapter", tmp_path / "export")
    session = _session(export_model("test-vit-timm", tmp_path / "repo", img_size=64))
    endpoint = CallableEndpoint(lambda canvases: session.run(None, {"input": canvases})[0], answers="embeddings")
    x = torch.randn(12, 3, 64, 64).clamp(-2, 2)
    with RemoteClassifier(tmp_path / "export", endpoint) as remote, torch.inference_mode():
        through_onnx = remote.logits(list(x))
        latent = model(x)
    assert torch.equal(through_onnx.argmax(-1), latent.argmax(-1))
    assert (through_onnx - latent).abs().max() < 1e-2 * latent.abs().max()  # the canvases' 8-bit rounding


def test_an_existing_model_is_never_overwritten_and_a_failed_export_leaves_nothing(tmp_path):
    export_model("test-cnn-timm", tmp_path / "repo")
    before = (tmp_path / "repo" / "test-cnn-timm" / "1" / "model.onnx").read_bytes()
    with pytest.raises(PGNError, match="exists already"):
        export_model("test-cnn-timm", tmp_path / "repo")
    assert (tmp_path / "repo" / "test-cnn-timm" / "1" / "model.onnx").read_bytes() == before
    with pytest.raises(PGNError, match=r"relative error .* it was not written"):
        export_model("test-cnn-timm", tmp_path / "repo", name="strict", tolerance=0.0)
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["test-cnn-timm"]  # no temporary folder left
    with pytest.raises(PGNError, match="not a positive multiple"):
        export_model("test-vit-timm", tmp_path / "repo", img_size=60)


def test_the_command_line_writes_the_repository_and_words_errors_in_one_line(tmp_path):
    r = pgn("export-model", "test-cnn-timm", "-o", tmp_path / "repo", "--name", "cnn")
    assert r.returncode == 0, r.stderr
    assert "cnn/1/model.onnx" in r.stdout and "'scores'" in r.stdout
    info = json.loads((tmp_path / "repo" / "cnn" / "pgn_model.json").read_text())
    assert info["backbone"] == "test-cnn-timm" and info["input_layout"] == "uint8-hwc"
    assert "--name" in one_line_error(pgn("export-model", "test-cnn-timm", "-o", tmp_path / "repo", "--name", "cnn"))
