"""The paper's comparison on real data: linear probe, IIP, VP, PGN and full fine-tuning.

The embedded backbone at 112 px on ELPV (binary and 4-class, the full 1,968/656 split) and a
fixed Fashion-MNIST subset (1,000 train / 1,000 test, stratified, seed 0). Each method's
learning rate is chosen on a validation split carved from train, then trained with 3 seeds
at the same budget and tested (protocol: ``pgn_study.comparison``). Every run is cached under
runs/bench-compare, so an interrupted run resumes and a finished one re-renders instantly; each
run's result (a small JSON) is also recorded in docs/records/bench-compare, which is committed, so
the comparison resumes from a fresh clone too.
Writes docs/comparison.md (accuracy table plus the speed summary of docs/throughput.json) and
docs/comparison.json (raw). Any option of ``pgn-bench`` can be added.

    python benchmarks/compare_methods.py            # the full comparison
    python benchmarks/compare_methods.py --quick    # minutes: ELPV 400/200, 1 epoch, 1 seed
"""
import sys

from pgn_study.cli import main

if __name__ == "__main__":
    quick = "--quick" in sys.argv[1:]
    docs = ["--out", "docs/comparison-quick" if quick else "docs/comparison", "--throughput", "docs/throughput.json",
            *([] if quick else ["--record", "docs/records/bench-compare"]),
            "--report-command", " ".join(["python", "benchmarks/compare_methods.py", *sys.argv[1:]])]
    sys.exit(main([*docs, *sys.argv[1:]]))
