"""The adapter reaches the model through the servers people run: a real KServe process speaking the Open
Inference Protocol on loopback, and a plain Python callable. Only canvases cross; answers equal the latent model's."""
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from helpers import free_port, pgn, start_kserve, stop_server

from pgn import PGNError
from pgn.client import RemoteClassifier
from pgn.client.endpoints import CallableEndpoint, OpenInferenceEndpoint
from pgn.data import build_dataset
from pgn.input_adapter import export_adapter

SERVER = Path(__file__).parent / "servers" / "kserve_vit.py"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A frame-layout PGN with a pixel library on the tiny timm ViT, trained one epoch, exported."""
    root = tmp_path_factory.mktemp("oip")
    r = pgn("train", "--backbone", "test-vit-timm", "--dataset", "digits", "--img-size", 64, "--layout", "frame",
            "--library-space", "pixel", "-K", 4, "-N", 8, "--generator-size", 32, "--epochs", 1, "--train-limit", 64,
            "--test-limit", 48, "--out", root / "run", "--no-progress", "--precision", "fp32")
    assert r.returncode == 0, r.stderr
    export_adapter(root / "run", root / "export")
    from pgn.model import PromptedClassifier

    model = PromptedClassifier.from_pretrained(root / "run")
    cfg = model.config
    data = build_dataset("digits", img_size=64, mean=cfg.mean, std=cfg.std, test_limit=48)
    x = torch.stack([data.test[i][0] for i in range(len(data.test))])
    with torch.inference_mode():
        latent = model.eval()(x)
    return {"root": root, "export": root / "export", "x": x, "latent": latent, "model": model}


@pytest.fixture(scope="module")
def kserve_server(exported):
    proc, url = start_kserve("test-vit-timm", "vit", "embeddings")
    yield url
    stop_server(proc)


def test_a_real_kserve_server_reproduces_the_latent_model_through_the_protocol(exported, kserve_server):
    """fp32, 8-bit canvases: every prediction equal to the latent model's, scores within uint8 rounding."""
    meta = httpx.get(kserve_server + "/v2/models/vit").json()
    assert meta["name"] == "vit"  # a KServe model answering the protocol's metadata route
    endpoint = OpenInferenceEndpoint(kserve_server, "vit", input_name="input", tensor_format="uint8-hwc")
    with RemoteClassifier(exported["export"], endpoint) as remote:
        api = remote.logits(list(exported["x"]))
    latent = exported["latent"]
    assert torch.equal(api.argmax(-1), latent.argmax(-1))  # every test image
    assert (api - latent).abs().max() < 1e-2 * latent.abs().max()  # only the canvases' 8-bit rounding differs

    r = pgn("eval", exported["export"], "--api", kserve_server, "--api-kind", "oip", "--api-model", "vit",
            "--test-limit", 48)
    assert r.returncode == 0, r.stderr
    through_api = json.loads(r.stdout.strip().splitlines()[-1])
    data = build_dataset("digits", img_size=64, test_limit=48)
    acc = float((latent.argmax(-1) == torch.as_tensor(data.test.targets)).float().mean())
    assert through_api["n"] == 48 and through_api["top1"] == pytest.approx(acc)


def test_protocol_errors_are_one_line(exported, kserve_server):
    with pytest.raises(PGNError, match="answered 404"):
        OpenInferenceEndpoint(kserve_server, "no-such-model").embeddings(np.zeros((1, 64, 64, 3), np.uint8))
    with pytest.raises(PGNError, match="is not reachable; start the inference server"):
        OpenInferenceEndpoint(f"http://127.0.0.1:{free_port()}", "vit").embeddings(np.zeros((1, 64, 64, 3), np.uint8))
    r = pgn("eval", exported["export"], "--api", kserve_server, "--api-kind", "oip", "--test-limit", 8)
    assert r.returncode == 2 and "--api-model" in r.stderr


def test_any_python_callable_is_an_endpoint(exported):
    """A vendor's API in a few lines: canvases (B, H, W, 3) uint8 -> embeddings; the same answers."""
    from pgn.backbones import create_backbone
    from pgn.pixels import from_uint8

    vit = create_backbone("test-vit-timm").eval()
    seen = []

    def vendor_api(canvases: np.ndarray) -> np.ndarray:
        seen.append(canvases.dtype == np.uint8 and canvases.shape[1:] == (64, 64, 3))
        with torch.inference_mode():
            return vit(from_uint8(canvases, vit.preprocessing.mean, vit.preprocessing.std)).numpy()

    with RemoteClassifier(exported["export"], CallableEndpoint(vendor_api, answers="embeddings")) as remote:
        api = remote.logits(list(exported["x"][:16]))
    assert all(seen) and torch.equal(api.argmax(-1), exported["latent"][:16].argmax(-1))


@pytest.fixture(scope="module")
def cnn_server():
    """The tiny timm CNN on a real KServe server, answering its own 1000 scores and nothing else."""
    proc, url = start_kserve("test-cnn-timm", "cnn", "scores")
    yield url
    stop_server(proc)


# The forms a PGN takes on a scores-only model, each with its head: (CLI options, tensors the export holds
# besides the generator's). The label mapping travels as its mapping; the learned readout as its BatchNorm
# statistics and linear map; a shared frame as its four strips.
SCORES_ONLY_FORMS = {
    "frame, label mapping": (["--layout", "frame", "--head", "labelmap-flm"], ["head.fitted", "head.mapping"]),
    "overlay + shared frame, readout": (
        ["--layout", "overlay", "--shared-frame", 6, "--head", "linear"],
        ["head.fc.bias", "head.fc.weight", "head.norm.num_batches_tracked", "head.norm.running_mean",
         "head.norm.running_var", "input_prompt.bottom", "input_prompt.left", "input_prompt.right", "input_prompt.top"]),
}


@pytest.mark.parametrize("form", list(SCORES_ONLY_FORMS))
def test_a_classifier_that_answers_only_its_own_scores_is_adapted_through_the_protocol(form, cnn_server, tmp_path):
    """The hosted-classifier setting: a CNN on KServe answers its 1000 scores; the adapter sends canvases and
    reads its task's classes from those scores with the head it exported (a label mapping, or a learned linear
    readout applied on the client). Every prediction equals the latent model's."""
    options, head_tensors = SCORES_ONLY_FORMS[form]
    r = pgn("train", "--backbone", "test-cnn-timm", "--dataset", "digits", "--img-size", 64, *options,
            "--library-space", "pixel", "-K", 4, "-N", 8, "--generator-size", 32,
            "--epochs", 1, "--lr", 0.5, "--train-limit", 64, "--test-limit", 48, "--out", tmp_path / "run",
            "--no-progress", "--precision", "fp32")
    assert r.returncode == 0, r.stderr
    export_adapter(tmp_path / "run", tmp_path / "export")
    exported = json.loads((tmp_path / "export" / "adapter_config.json").read_text())
    from pgn.model import PromptedClassifier

    model = PromptedClassifier.from_pretrained(tmp_path / "run")
    cfg = model.config
    assert exported["deploy"] == {"canvas_size": [64, 64], "patch_size": 8, "answers": "scores", "outputs": 1000}
    from safetensors.torch import load_file

    exported_tensors = load_file(str(tmp_path / "export" / "adapter.safetensors"))
    trained = {f"{k}": v for k, v in model.trainable_modules().state_dict().items()}
    for key in head_tensors:  # the head (and a shared frame) travel as trained
        assert torch.equal(exported_tensors[key], trained[key]), key
    # Nothing of the hosted model: a pixel library needs no patch embedding.
    assert sorted(k for k in exported_tensors if not k.startswith("prompts.")) == head_tensors
    data = build_dataset("digits", img_size=64, mean=cfg.mean, std=cfg.std, test_limit=48)
    x = torch.stack([data.test[i][0] for i in range(len(data.test))])
    with torch.inference_mode():
        latent = model.eval()(x)
    endpoint = OpenInferenceEndpoint(cnn_server, "cnn", answers="scores")
    with RemoteClassifier(tmp_path / "export", endpoint) as remote:
        api = remote.logits(list(x))
    assert api.shape == latent.shape == (48, 10)
    assert torch.equal(api.argmax(-1), latent.argmax(-1))  # every test image
    assert (api - latent).abs().max() < 1e-3 * latent.abs().max()  # the canvases are 8-bit exact
    r = pgn("eval", tmp_path / "export", "--api", cnn_server, "--api-kind", "oip", "--api-model", "cnn",
            "--test-limit", 48)
    assert r.returncode == 0, r.stderr
    acc = float((latent.argmax(-1) == torch.as_tensor(data.test.targets)).float().mean())
    answer = json.loads(r.stdout.strip().splitlines()[-1])
    assert answer["top1"] == pytest.approx(acc)
    assert ("readout" in answer["head"]) == ("readout" in form)
    # Another model behind the URL: its 10 scores are not the 1000 the adapter's head reads.
    with pytest.raises(PGNError, match="answered 10 scores .*head reads.* but this adapter reads 1000"):
        RemoteClassifier(tmp_path / "export", CallableEndpoint(lambda c: np.zeros((len(c), 10), np.float32)))\
            .logits(list(x[:2]))
