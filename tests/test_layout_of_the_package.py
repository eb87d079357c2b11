"""The package tree says what runs where: server/ (next to the model) and client/ (on the client) never import
each other, no capability of a model is probed by attribute guessing, and each family declares its own."""
import ast
import re
from pathlib import Path

import pytest

import pgn
from pgn.backbones import FrozenBackbone, FrozenModel, create_backbone

SRC = Path(pgn.__file__).parent


def _imports(path: Path) -> set[str]:
    """The pgn modules ``path`` imports (relative imports resolved)."""
    package = path.relative_to(SRC.parent).with_suffix("").parts[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = list(package[:len(package) - node.level + 1]) if node.level else []
            out.add(".".join(base + ([node.module] if node.module else [])))
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return out


@pytest.mark.parametrize("side, other", [("server", "pgn.client"), ("client", "pgn.server")])
def test_the_two_sides_of_the_wire_never_import_each_other(side, other):
    files = sorted((SRC / side).glob("*.py"))
    assert files
    for f in files:
        bad = sorted(m for m in _imports(f) if m == other or m.startswith(other + "."))
        assert not bad, f"{f.name} imports {bad}"


def test_no_capability_is_probed_by_attribute_guessing():
    for f in SRC.rglob("*.py"):
        text = f.read_text()
        assert "pixel_only" not in text, f
        assert not re.search(r"hasattr\([^)]*(zero_shot|pixel|library|coefficients|scores_of|\"fc\")", text), f


@pytest.mark.parametrize("name, tokens, zero_shot", [("test-vit-timm", True, False), ("test-vit-clip", True, True),
                                                     ("test-vit-torchvision", True, False),
                                                     ("test-cnn-timm", False, False)])
def test_each_family_declares_what_it_takes_and_whether_it_has_a_zero_shot_head(name, tokens, zero_shot):
    bb = create_backbone(name)
    assert isinstance(bb, FrozenModel) and bb.takes_tokens is tokens and bb.has_zero_shot_head is zero_shot
    assert isinstance(bb, FrozenBackbone) is tokens  # a pixel-only model is not a ViT with stubs
    embedding = bb.patch_embedding()
    assert embedding.patch_size == bb.patch_size and embedding.preprocessing == bb.preprocessing
    if zero_shot:
        assert bb.zero_shot_head(["a", "b"], "a photo of a {}.").num_classes == 2
    else:
        with pytest.raises(pgn.PGNError, match="no text tower"):
            bb.zero_shot_head(["a"], "{}")
