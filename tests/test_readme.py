"""The README's Python example runs as it stands, in an empty directory (embedded backbone, real ELPV images)."""
import ast
import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def using_it_example() -> str:
    text = README.read_text()
    section = text[text.index("## Using it"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_runs_verbatim(tmp_path, monkeypatch):
    pytest.importorskip("elpv_dataset")
    pytest.importorskip("onnx")
    code = using_it_example()
    # imports, create, train, save, load, an image, predict: short, and nothing prepared for it here
    assert len([line for line in code.splitlines() if line.strip()]) <= 10
    monkeypatch.chdir(tmp_path)  # an empty directory: the block makes its own cell.png
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    printed = ast.literal_eval(out.getvalue().strip().splitlines()[-1])

    import pgn

    again = pgn.load("adapters/elpv").predict(["cell.png"], top_k=2)
    assert [label for label, _ in printed[0]] == [label for label, _ in again[0]]
    assert [p for _, p in printed[0]] == pytest.approx([p for _, p in again[0]])
    assert (tmp_path / "runs" / "elpv-py" / "metrics.jsonl").read_text().count("\n") == 1  # one epoch trained
