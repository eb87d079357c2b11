"""The paper's comparison on three tasks at the CPU's 10-epoch budget (issue: finish the comparison on three tasks).

ELPV (binary), ELPV-4 (the 4-class defect grades) and the Fashion-MNIST subset, each at 1,000 training
images (stratified, seed 0; ELPV's 656 test images, Fashion-MNIST 1,000); linear probe, IIP, VP, PGN (append
and frame) and full fine-tuning; every method's rate chosen on a 20 % validation split from the same grid
({0.01, 0.1}; VP's pixels {1, 10, 40}; fine-tuning's backbone {1e-4, 1e-3}) with 3-epoch validation runs,
then 3 seeds of 10 epochs, fp32. ELPV-4 labels ELPV's images by defect grade and reuses ELPV's choice of
rate (``pgn_study.comparison.LR_FROM``); its 1,000 training images are stratified on its own four labels, so
528 of them are in ELPV's subset (the 656 test images are the same). Every run is cached under runs/recipe-study and recorded in
docs/records/recipe-study (committed), which the ELPV comparison at this budget shares, so the study resumes
from a fresh clone: run the same command again. About a day of a 2-core CPU in all.

Writes docs/comparison-e10.md (per-task table, differences, and where PGN is ahead of each baseline) and
docs/comparison-e10.json (raw, with the ``standing`` summary). Any option of ``pgn-bench`` can be added,
e.g. ``--render-only`` (report what is finished, train nothing) or ``--methods linear pgn`` /
``--datasets fashion-mnist`` (train only those; the report still covers the whole protocol).

    python benchmarks/comparison_e10.py
"""
import sys
import tempfile

from pgn_study.cli import main

PROTOCOL = ["--datasets", "elpv", "fashion-mnist", "elpv4",
            "--subset", "elpv=1000x656", "--subset", "fashion-mnist=1000x1000", "--subset", "elpv4=1000x656",
            "--runs", "runs/recipe-study", "--record", "docs/records/recipe-study",
            "--epochs", "10", "--val-epochs", "3", "--seeds", "3", "--precision", "fp32",
            "--rate", "linear=0.01,0.1", "--rate", "iip=0.01,0.1", "--rate", "pgn=0.01,0.1",
            "--rate", "pgn-frame=0.01,0.1",
            "--methods", "linear", "pgn", "iip", "vp", "pgn-frame", "finetune",
            "--out", "docs/comparison-e10"]
COMMAND = "python benchmarks/comparison_e10.py"
NARROWING = ("--datasets", "--methods")  # what a call may train; the report always covers the protocol


def _without(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """``argv`` less the named options and their values."""
    kept, skipping = [], False
    for a in argv:
        if a.startswith("--"):
            skipping = a in flags
        if not skipping:
            kept.append(a)
    return kept


def run(argv: list[str]) -> int:
    """Train what ``argv`` asks for, then write the report of the whole protocol from what is finished.

    A call narrowed by ``--datasets`` or ``--methods`` trains only those, with its own partial report kept
    out of docs/; the protocol's report is then rendered from the cache and the records, so it never loses
    a task or a method that this call did not train.
    """
    if not any(a in NARROWING for a in argv):
        return main([*PROTOCOL, "--report-command", " ".join([COMMAND, *argv]), *argv])
    with tempfile.TemporaryDirectory() as tmp:
        rc = main([*PROTOCOL, "--report-command", COMMAND, *argv, "--out", f"{tmp}/partial"])
    if rc:
        return rc
    rest = _without(argv, (*NARROWING, "--render-only", "--out"))
    return main([*PROTOCOL, "--report-command", " ".join([COMMAND, *rest]), *rest, "--render-only"])


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
