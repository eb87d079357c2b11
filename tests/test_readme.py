"""The README runs as written: its Python example and every command of the README and of the guide pages
it sends a newcomer to (:data:`SOURCES`), in order, in a fresh copy of the checkout, as a newcomer would.

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
# (file, section): every bash block of each, in this order (later commands use what earlier ones made).
SOURCES = (("README.md", "## Quickstart"), ("README.md", "## Deploy as pixels to an unmodified model"),
           ("README.md", "## When you can only query the model"),
           ("README.md", "## Reproducing the paper"), ("docs/guide/quickstart.md", "## More commands"),
           ("docs/guide/deployment.md", "## The model servers people already run"),
           ("docs/guide/deployment.md", "## The black-box flow, as a person sees it"),
           ("docs/guide/deployment.md", "## A real hosted classifier, scores only"))
QUICKSTART = SOURCES[0]

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


def section(name: str, path: str = "README.md") -> str:
    text = (ROOT / path).read_text()
    start = text.index(name)
    level = name.split(" ")[0]
    rest = text[start + len(name):]
    end = re.search(rf"^#{{1,{len(level)}}} ", rest, re.M)
    return rest[:end.start()] if end else rest


def quickstart_example(path: str = "README.md", name: str = "## Quickstart") -> str:
    return re.search(r"```python\n(.*?)```", section(name, path), re.S).group(1)


def commands(path: str, name: str) -> list[str]:
    """The command lines of the section's bash blocks."""
    text = section(name, path)
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


def run_example(checkout: Path, python: str, env: dict) -> None:
    """The quickstart's Python example, as written, with ``python``; its printout is checked."""
    example = quickstart_example()
    # imports, create, train, save, load, an image, predict: short, and nothing prepared for it
    assert len([line for line in example.splitlines() if line.strip()]) <= 10
    (checkout / "example.py").write_text(example)
    r = subprocess.run([python, "example.py"], cwd=checkout, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    printed = ast.literal_eval(r.stdout.strip().splitlines()[-1])
    assert len(printed[0]) == 2 and printed[0][0][0] in ("functional", "defective") and printed[0][0][1] >= 0.5
    assert (checkout / "runs" / "elpv-py" / "metrics.jsonl").read_text().count("\n") == 1  # one epoch trained


def run_commands(checkout: Path, python: str, env: dict, sources=SOURCES) -> tuple[int, list[str]]:
    """Every command of ``sources`` in order (servers started, waited for, stopped); (ran, skipped)."""
    skipped, ran = [], 0
    for path, name in sources:
        servers = []
        try:
            for line in commands(path, name):
                argv, background, need = parse(line)
                if need and not NEEDS.get(need, lambda: False)():
                    skipped.append(f"{line.strip()} [{need}]")
                    continue
                assert argv[0] in ("pgn", "pgn-bench"), f"a command that is not pgn: {line}"
                cmd = [python, "-m", "pgn" if argv[0] == "pgn" else "pgn_study", *argv[1:]]
                if background:
                    proc = subprocess.Popen(cmd, cwd=checkout, env=env, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True)
                    servers.append(proc)
                    port = argv[argv.index("--port") + 1] if "--port" in argv else ("7860" if argv[1] == "app"
                                                                                     else "8000")
                    _wait_until_up(proc, f"http://127.0.0.1:{port}/" + ("health" if argv[1] == "serve" else ""), line)
                else:
                    r = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True, timeout=900)
                    assert r.returncode == 0, f"{path} command failed: {line}\n{r.stderr[-3000:]}"
                ran += 1
        finally:
            for proc in servers:  # stopped by PID
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return ran, skipped


@pytest.mark.once
def test_the_readme_runs_as_written(checkout):
    pytest.importorskip("elpv_dataset")
    pytest.importorskip("onnx")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run_example(checkout, sys.executable, env)
    ran, skipped = run_commands(checkout, sys.executable, env)
    assert ran >= 15, (ran, skipped)
    assert all("needs" in s for s in skipped)
    print("skipped: " + "; ".join(skipped))


def test_the_quickstart_runs_from_the_wheel(checkout):
    """CI's wheel check (.ci/wheel-check): the quickstart with the Python of a fresh environment holding only the
    built wheel (PGN_WHEEL_PYTHON), never this checkout's sources."""
    python = os.environ.get("PGN_WHEEL_PYTHON")
    if not python:
        pytest.skip("PGN_WHEEL_PYTHON is not set: run by .ci/wheel-check (make wheel-check)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    where = subprocess.run([python, "-c", "import pgn; print(pgn.__file__)"], cwd=checkout, capture_output=True,
                           text=True, env=env, check=True).stdout.strip()
    assert "site-packages" in where and not where.startswith(str(ROOT)), where  # the wheel's pgn, not a checkout's
    run_example(checkout, python, env)
    ran, skipped = run_commands(checkout, python, env, (QUICKSTART,))
    assert ran == 4 and not skipped, (ran, skipped)


def test_the_guide_shows_the_readmes_quickstart_and_deployment():
    """The guide repeats the README's example and command blocks (run once, from the README); they may not drift."""
    assert quickstart_example("docs/guide/quickstart.md", "## From Python") == quickstart_example()
    assert commands("docs/guide/quickstart.md", "## From the command line") == commands(*QUICKSTART)
    deploy = ("README.md", "## Deploy as pixels to an unmodified model")
    assert commands("docs/guide/deployment.md", "## Deploy in six commands") == commands(*deploy) and deploy in SOURCES


def test_a_broken_readme_command_would_fail_this_test():
    """What the runner above reads: every command, its substitutions, its marks."""
    lines = [ln for path, name in SOURCES for ln in commands(path, name)]
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
