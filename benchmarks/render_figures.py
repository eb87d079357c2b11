"""Render every figure block of the README and the study pages from docs/records (pgn_study.figures).

    python benchmarks/render_figures.py           # rewrite the blocks (idempotent)
    python benchmarks/render_figures.py --check   # exit 1, naming the files, where a block differs from the records
"""
import argparse
import sys

from pgn_study.figures import render


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare only; change nothing")
    args = ap.parse_args()
    changed = render(check=args.check)
    for rel in changed:
        print(f"{rel}: {'differs from the records' if args.check else 'rendered from the records'}")
    return 1 if changed and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
