"""The README runs as written: its Python example and every command of "Using it", "Input-space
deployment" and "The black-box flow", in order, in a fresh copy of the checkout, as a newcomer would.

The test changes sizes only, through :data:`SUBSTITUTIONS` (fewer epochs and images); servers started
with ``&`` are started, waited for and stopped by PID. A line whose comment says ``(needs ...)`` is
skipped with that reason where this machine lacks it (:data:`NEEDS`). A README edit that breaks a
command fails here.
"""
import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SECTIONS = ("## Using it", "## Input-space deployment", "### The black-box flow", "### A real hosted classifier")

# The one substitution table: option -> the value the test uses, from the README's value. Options a
# command does not state are added where :data:`ADD` says (train and eval of a dataset), never to a
# resume, which must keep its run's own settings.
SUBSTITUTIONS = {
    "--epochs": lambda n: "1" if int(n) < 10 else "2",  # 2 where a resume extends a run to 10
    "--train-limit": lambda n: "64",
    "--test-limit": lambda n: "32",
}
ADD = {"train": ("--epochs", "--train-limit", "--test-limit"), "eval": ("--test-limit",)}
# What a "(needs ...)" line needs, and whether this machine has it.
NEEDS = {
    "needs your data": lambda: False,
    "needs the checkpoints": lambda: (ROOT.parent / "shared" / "official_pgn" / "pgn_dino_cifar100.pt").is_file(),
    "needs internet": lambda: False,
    "needs a GPU": lambda: False,
}


def section(name: str) -> str:
    text = README.read_text()
    start = text.index(name)
    level = name.split(" ")[0]
    rest = text[start + len(name):]
    end = re.search(rf"^#{{1,{len(level)}}} ", rest, re.M)
    return rest[:end.start()] if end else rest


def using_it_example() -> str:
    return re.search(r"```python\n(.*?)```", section("## Using it"), re.S).group(1)


def commands(name: str) -> list[str]:
    """The command lines of the section's bash blocks, outside its subsections' blocks."""
    text = section(name)
    if name == "## Input-space deployment":
        text = text[:text.index("### The black-box flow")]
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        lines += [ln for ln in block.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return lines


def substitute(argv: list[str]) -> list[str]:
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg in SUBSTITUTIONS:
            out[i + 1] = SUBSTITUTIONS[arg](out[i + 1])
    command = out[1] if len(out) > 1 else ""
    if "--resume" not in out:
        for opt in ADD.get(command, ()):
            if opt not in out:
                out += [opt, SUBSTITUTIONS[opt]("0")]
    return out


def parse(line: str) -> tuple[list[str], bool, str | None]:
    """(argv with sizes substituted, started in the background?, what it needs or None)."""
    code, _, comment = line.partition("  #")
    need = re.search(r"\((needs [^)]*)\)", comment)
    background = code.rstrip().endswith("&")
    argv = shlex.split(code.rstrip().rstrip("&"))
    return substitute(argv), background, need.group(1) if need else None


def _wait_until_up(proc, url: str, what: str) -> None:
    for _ in range(1200):
        if proc.poll() is not None:
            pytest.fail(f"{what} exited: {proc.stdout.read()[-2000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail(f"{what} did not come up on {url}")


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A fresh copy of the checkout (what git tracks, none of this machine's runs), next to ../shared."""
    base = tmp_path_factory.mktemp("readme")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    copy = base / "main"
    for f in files:
        if (ROOT / f).is_file():
            (copy / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, copy / f)
    if (ROOT.parent / "shared").is_dir():
        (base / "shared").symlink_to(ROOT.parent / "shared")
    return copy


@pytest.mark.once
def test_the_readme_runs_as_written(checkout):
    pytest.importorskip("elpv_dataset")
    pytest.importorskip("onnx")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    example = using_it_example()
    # imports, create, train, save, load, an image, predict: short, and nothing prepared for it
    assert len([line for line in example.splitlines() if line.strip()]) <= 10
    (checkout / "example.py").write_text(example)
    r = subprocess.run([sys.executable, "example.py"], cwd=checkout, capture_output=True, text=True, env=env,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    printed = ast.literal_eval(r.stdout.strip().splitlines()[-1])
    assert len(printed[0]) == 2 and printed[0][0][0] in ("functional", "defective") and printed[0][0][1] >= 0.5
    assert (checkout / "runs" / "elpv-py" / "metrics.jsonl").read_text().count("\n") == 1  # one epoch trained

    skipped, ran = [], 0
    for name in SECTIONS:
        servers = []
        try:
            for line in commands(name):
                argv, background, need = parse(line)
                assert argv[0] in ("pgn", "pgn-bench"), f"a README command that is not pgn: {line}"
                if need and not NEEDS.get(need, lambda: False)():
                    skipped.append(f"{line.strip()} [{need}]")
                    continue
                cmd = [sys.executable, "-m", "pgn" if argv[0] == "pgn" else "pgn_study", *argv[1:]]
                if background:
                    proc = subprocess.Popen(cmd, cwd=checkout, env=env, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True)
                    servers.append(proc)
                    port = argv[argv.index("--port") + 1] if "--port" in argv else ("7860" if argv[1] == "app"
                                                                                     else "8000")
                    _wait_until_up(proc, f"http://127.0.0.1:{port}/" + ("health" if argv[1] == "serve" else ""), line)
                else:
                    r = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True, timeout=900)
                    assert r.returncode == 0, f"README command failed: {line}\n{r.stderr[-3000:]}"
                ran += 1
        finally:
            for proc in servers:  # stopped by PID
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    assert ran >= 15, (ran, skipped)
    assert all("needs" in s for s in skipped)
    print("skipped: " + "; ".join(skipped))


def test_a_broken_readme_command_would_fail_this_test():
    """What the runner above reads: every command, its substitutions, its marks."""
    lines = [ln for name in SECTIONS for ln in commands(name)]
    assert any("--resume" in ln for ln in lines) and any(ln.rstrip().split("#")[0].rstrip().endswith("&")
                                                         for ln in lines)
    argv, background, need = parse("pgn train --dataset elpv --epochs 5 --out runs/x   # PGN")
    assert argv == ["pgn", "train", "--dataset", "elpv", "--epochs", "1", "--out", "runs/x", "--train-limit", "64",
                    "--test-limit", "32"] and not background and need is None
    argv, _, _ = parse("pgn train --out runs/x --resume --epochs 10   # continue")
    assert argv == ["pgn", "train", "--out", "runs/x", "--resume", "--epochs", "2"]  # nothing added to a resume
    _, background, need = parse("pgn serve --port 8000 &  # a server (needs internet)")
    assert background and need == "needs internet"
    r = subprocess.run([sys.executable, "-m", "pgn", "trian", "--epochs", "1"], capture_output=True, text=True)
    assert r.returncode == 2  # a mistyped command is a failure the runner sees
