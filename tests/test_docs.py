"""The front door: the README's shape (short, install and quickstart first, no lab notebook), the docs site's
navigation (every page in it, the guide apart from the studies), and the guide's own code."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_the_readme_is_short_with_install_and_quickstart_first():
    raw = README.read_bytes()
    text = raw.decode()
    assert len(raw) <= 12_000, len(raw)
    first = raw[:2_500].decode(errors="ignore")
    assert "pip install" in first
    quickstart = text[text.index("## Quickstart"):text.index("\n## ", text.index("## Quickstart") + 3)]
    assert quickstart.count("```") == 4 and quickstart in first  # the Python example and the CLI block, whole
    assert len(re.findall(r"^pgn ", quickstart, re.M)) == 4


def test_the_readme_keeps_no_lab_notebook():
    """Per-machine timings and development diaries belong in docs/development.md and the studies."""
    text = re.sub(r"<!-- figures:.*?<!-- /figures:[\w-]+ -->", "", README.read_text(), flags=re.S)  # (names its machines)
    for word in ("EPYC", "Xeon", "AVX", "AMX", "oneDNN", "at commit", "threads", "passed in"):
        assert word not in text, word
    assert not re.search(r"\b\d+ min \d+ s\b|\(\d[\d,]* s\)", text)


def _nav_pages(nav) -> list[str]:
    out = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        out += _nav_pages(value) if isinstance(value, list) else [value]
    return out


def test_every_docs_page_is_in_the_site_and_the_guide_is_apart_from_the_studies():
    yaml = pytest.importorskip("yaml")
    cfg = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert cfg["strict"] is True
    pages = _nav_pages(cfg["nav"])
    on_disk = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")
               if "records" not in p.parts}
    assert set(pages) == on_disk, (set(pages) ^ on_disk)
    sections = {next(iter(item)): item for item in cfg["nav"] if isinstance(item, dict)}
    guide = set(_nav_pages(sections["User guide"]["User guide"]))
    studies = set(_nav_pages(sections["Studies"]["Studies"]))
    assert not guide & studies and "results.md" in studies and "guide/quickstart.md" in guide
    assert {"index.md", "api.md", "development.md"} <= set(pages)
    assert "::: pgn.api" in (ROOT / "docs" / "api.md").read_text()  # the reference is generated, not written


def test_the_readme_links_only_to_files_that_exist():
    for target in re.findall(r"\]\(([^)#\s]+)", README.read_text()):
        if not target.startswith(("http://", "https://")):
            assert (ROOT / target).exists(), target


def test_the_extending_page_registers_a_method_that_trains_and_predicts():
    import torch

    import pgn
    from pgn import methods

    code = re.search(r"```python\n(.*?)```", (ROOT / "docs" / "guide" / "extending.md").read_text(), re.S).group(1)
    try:
        exec(compile(code, "extending.md", "exec"), {})
        model = pgn.create_model("test-vit-timm", "shift", classes=["a", "b"], img_size=64, start=0.5)
        model.eval()
        with torch.inference_mode():
            assert model(torch.randn(2, 3, 64, 64)).shape == (2, 2)
        assert [n for n, p in model.named_parameters() if p.requires_grad and "shift" in n]
    finally:
        methods._REGISTRY.pop("shift", None)
