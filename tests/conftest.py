"""Hooks and fixtures only: tiny random-init timm ViTs, the embedded backbone, an isolated PGN_HOME.

Shared plain helpers live in ``helpers.py``; test modules import them from there, never from this file.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on a hub in tests

import pytest  # noqa: E402
from helpers import make_tiny_vit  # noqa: E402

from pgn.backbones import TimmViT  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--assume-native-bf16", choices=("yes", "no"), default=None,
                     help="answer pgn's native-bfloat16 detection with this, whatever the CPU (PGN_NATIVE_BF16, so "
                          "the CLI's subprocesses see it too): the suite must pass with both answers")


def pytest_configure(config):
    config.addinivalue_line("markers", "once: long end-to-end tests that run in the CPU's own pass only (CI's "
                                       "second pass, with the other bf16 answer forced, leaves them out)")
    config.addinivalue_line("markers", "fp32_only: never asks the CPU whether it has native bf16 (the library's "
                                       "fp32 defaults): checked in the first pass, left out of the forced second")
    answer = config.getoption("--assume-native-bf16")
    if answer is not None:
        os.environ["PGN_NATIVE_BF16"] = "1" if answer == "yes" else "0"


def pytest_collection_modifyitems(config, items):
    if config.getoption("--assume-native-bf16") is None:
        return
    skip = pytest.mark.skip(reason="a long end-to-end test: it runs in the pass with the CPU's own bf16 answer")
    same = pytest.mark.skip(reason="fp32 by construction (checked in the first pass): the bf16 answer cannot change it")
    for item in items:
        if "once" in item.keywords:
            item.add_marker(skip)
        elif "fp32_only" in item.keywords:
            item.add_marker(same)


@pytest.fixture(autouse=True)
def _fp32_only_never_asks_for_bf16(request, monkeypatch):
    """A test marked ``fp32_only`` fails if anything in it resolves a precision from the CPU's bf16 answer:
    what makes leaving it out of the forced pass safe is checked on every run of the first pass."""
    if "fp32_only" in request.keywords:
        import pgn.precision

        def asked(*_a, **_k):
            raise AssertionError("a test marked fp32_only asked whether the CPU has native bf16; remove the mark")

        monkeypatch.setattr(pgn.precision, "native_bf16", asked)


def pytest_report_header(config):
    from pgn.precision import native_bf16

    forced = config.getoption("--assume-native-bf16")
    return f"pgn: native bf16 on this CPU: {native_bf16('cpu')}" + (f" (forced: {forced})" if forced else " (detected)")


@pytest.fixture(scope="session", autouse=True)
def _pgn_home(tmp_path_factory):
    # Converted weights are cached per test session, never in the user's home.
    os.environ.setdefault("PGN_HOME", str(tmp_path_factory.mktemp("pgn_home")))


@pytest.fixture
def tiny_vit() -> TimmViT:
    return make_tiny_vit()


@pytest.fixture(scope="session")
def embedded():
    pytest.importorskip("onnx")
    from pgn.backbones import create_backbone

    return create_backbone("dinov2-s14-imgfocus")


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """The tiny ViT's weights as a file, for commands that build the backbone by name (``--weights``)."""
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("w") / "test_vit.safetensors"
    save_file({k: v.contiguous() for k, v in make_tiny_vit().vit.state_dict().items()}, str(path))
    return path
