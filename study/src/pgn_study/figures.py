"""Figures rendered from the committed records, so the text around them cannot drift.

Every accuracy figure in the README's results table, and the headline figures of the study pages that
carry a marked block, is computed here from the result JSONs under ``docs/records`` (what
``pgn-bench --record`` keeps: one file per finished run). A block in a Markdown file is delimited by::

    <!-- figures:NAME (rendered by python benchmarks/render_figures.py; do not edit) -->
    ...
    <!-- /figures:NAME -->

``python benchmarks/render_figures.py`` rewrites every block from the records (idempotent: a second run
changes nothing); ``--check`` only compares, and tests/test_figures.py fails when a block differs from what
the records give. A cell whose seeds are not all recorded is shown as pending, never filled from elsewhere.

Standings use the comparison's own rule (:func:`pgn_study.comparison.standing`): a difference of mean test
top-1 counts as beyond the spread when its size exceeds ``sqrt(std_a^2 + std_b^2)`` of the two cells.
"""
from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[3]
RECORDS = ROOT / "docs" / "records"
SEEDS = 3

# The 10-epoch comparison (benchmarks/comparison_e10.py): its tasks, in the table's order.
E10_TASKS = {"elpv": ("ELPV", "elpv-1000x656-112px-e10", "1,000 / 656"),
             "fashion-mnist": ("Fashion-MNIST", "fashion-mnist-1000x1000-112px-e10", "1,000 / 1,000"),
             "elpv4": ("ELPV-4", "elpv4-1000x656-112px-e10", "1,000 / 656")}
E10_METHODS = {"linear": "linear probe", "vp": "VP", "iip": "IIP", "pgn": "PGN", "pgn-frame": "PGN, frame",
               "finetune": "fine-tuning"}
_SEED = re.compile(r"^test-(?P<key>.+)-seed(?P<seed>\d+)\.json$")


@dataclass(frozen=True)
class Cell:
    """One method on one task: the recorded seeds' test top-1 (fractions) and what they ran on."""

    top1: tuple[float, ...]
    seeds: int
    precisions: tuple[str, ...]
    devices: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return len(self.top1) >= self.seeds

    @property
    def mean(self) -> float:
        return statistics.mean(self.top1)

    @property
    def std(self) -> float:
        return statistics.stdev(self.top1) if len(self.top1) > 1 else 0.0

    def summary(self) -> dict:
        """The shape :func:`pgn_study.comparison.standing` reads."""
        return {"mean": self.mean, "std": self.std}

    def text(self) -> str:
        if not self.top1:
            return "pending"
        if not self.complete:
            return f"pending ({len(self.top1)} of {self.seeds} seeds)"
        return f"{100 * self.mean:.2f} ± {100 * self.std:.2f}"


def read_cell(folder: Path, seeds: int = SEEDS) -> Cell:
    """The test runs recorded in one method folder (``test-<rate>-seed<s>.json``; one rate per folder).

    A record written before precision was stored says nothing about it: it counts as "not recorded",
    never as a default.
    """
    found: dict[str, dict[int, dict]] = {}
    for path in sorted(folder.glob("test-*.json")) if folder.is_dir() else []:
        if m := _SEED.match(path.name):
            found.setdefault(m["key"], {})[int(m["seed"])] = json.loads(path.read_text())
    if len(found) > 1:
        raise ValueError(f"{folder}: test runs at more than one rate ({', '.join(sorted(found))}); a cell has one")
    runs = next(iter(found.values()), {})
    runs = {s: r for s, r in runs.items() if s < seeds and r.get("top1") is not None}
    return Cell(top1=tuple(runs[s]["top1"] for s in sorted(runs)), seeds=seeds,
                precisions=tuple(sorted({r.get("precision", "not recorded") for r in runs.values()})),
                devices=tuple(sorted({r.get("device", "not recorded") for r in runs.values()})))


def e10_cells(records: Path = RECORDS) -> dict[str, dict[str, Cell]]:
    """The 10-epoch comparison's cells as recorded now: ``{task: {method: Cell}}``."""
    return {task: {m: read_cell(records / "recipe-study" / folder / m) for m in E10_METHODS}
            for task, (_, folder, _) in E10_TASKS.items()}


def generator_recipe_cells(records: Path = RECORDS) -> dict[str, Cell]:
    """The generator study's recipe rows (PGN, the same protocol as the comparison's, seeded models)."""
    return {task: read_cell(records / "generator-study" / folder / "pgn")
            for task, (_, folder, _) in E10_TASKS.items() if (records / "generator-study" / folder).is_dir()}


def difference(a: Cell, b: Cell) -> tuple[float, float] | None:
    """(a minus b, combined seed spread) in points, by the comparison's rule; None while either is pending."""
    from pgn_study.comparison import standing

    if not (a.complete and b.complete):
        return None
    t = standing({"task": {"a": a.summary(), "b": b.summary()}}, "a", ("b",))["b"]["per_task"]["task"]
    return 100 * t["difference"], 100 * t["spread"]


def compare_cells(a: Cell, b: Cell) -> str:
    """'a minus b ± spread, where it stands' in points, by the comparison's rule; 'pending' when either is."""
    if (ds := difference(a, b)) is None:
        return "pending"
    d, s = ds
    where = ("ahead" if d > 0 else "behind" if d < 0 else "level") + (
        ", beyond the spread" if abs(d) > s else ", within the spread")
    return f"{d:+.2f} ± {s:.2f} ({where})"


def _short_device(device: str) -> str:
    m = re.match(r"(CPU|CUDA|GPU) \((?P<what>[^,]+)(?:, [^,]+)*?(?:, (?P<threads>\d+) threads?)?\)$", device)
    if not m:
        return device
    name = m["what"].replace("(R)", "").replace(" Processor", "").strip()
    return f"{name}" + (f", {m['threads']} thread{'s' if m['threads'] != '1' else ''}" if m["threads"] else "")


def provenance(cells: list[Cell]) -> str:
    """'fp32 on AMD EPYC, 1 thread and Intel Xeon, 1 thread': what the given cells' records name."""
    precisions = sorted({p for c in cells for p in c.precisions})
    devices = sorted({_short_device(d) for c in cells for d in c.devices})
    return f"precision {' and '.join(precisions) or 'not recorded'}; machines: {'; '.join(devices) or 'not recorded'}"


def readme_results(records: Path = RECORDS) -> str:
    """The README's results table: the 10-epoch comparison as recorded, and PGN's standing against the probe."""
    cells = e10_cells(records)
    gen = generator_recipe_cells(records)
    lines = ["| test top-1 (%), 3 seeds | " + " | ".join(E10_METHODS.values()) + " |",
             "|---|" + "---|" * len(E10_METHODS)]
    for task, (name, _, sizes) in E10_TASKS.items():
        lines.append(f"| {name} ({sizes}) | " + " | ".join(cells[task][m].text() for m in E10_METHODS) + " |")
    lines += ["", "PGN minus the linear probe, points (difference of means ± combined seed spread): " + "; ".join(
        f"{name} {compare_cells(cells[t]['pgn'], cells[t]['linear'])}" for t, (name, _, _) in E10_TASKS.items()) + "."]
    if gen:
        lines += ["The generator study's recipe rows (the same protocol, seeded models; docs/records/generator-study): "
                  "PGN " + ", ".join(f"{E10_TASKS[t][0]} {c.text()}" for t, c in gen.items())
                  + "; against the probe above: " + "; ".join(
                      f"{E10_TASKS[t][0]} {compare_cells(c, cells[t]['linear'])}" for t, c in gen.items()) + "."]
    every = [c for row in cells.values() for c in row.values() if c.top1] + [c for c in gen.values() if c.top1]
    pending = any(not c.complete for row in cells.values() for c in row.values())
    lines += [f"Records: {provenance(every)}. " + ("\"pending\": seeds being re-run under today's code " if pending else
              "Every run made before models were seeded was re-run under today's code ") +
              "(the unseeded runs are kept in docs/records/recipe-study-unseeded; no standing here uses them)."]
    return "\n".join(lines)


def results_standing(records: Path = RECORDS) -> str:
    """results.md's standing of PGN and PGN-frame against every other method, per task, as recorded."""
    cells = e10_cells(records)
    lines = []
    for method in ("pgn", "pgn-frame"):
        others = [m for m in E10_METHODS if m != method]
        lines += [f"| {E10_METHODS[method]} minus ... (points) | " + " | ".join(E10_METHODS[m] for m in others) + " |",
                  "|---|" + "---|" * len(others)]
        for task, (name, _, _) in E10_TASKS.items():
            lines.append(f"| {name} | " + " | ".join(compare_cells(cells[task][method], cells[task][m]) for m in others)
                         + " |")
        lines.append("")
    gen = generator_recipe_cells(records)
    if gen:
        others = [m for m in E10_METHODS if m != "pgn"]
        lines += ["The generator study's PGN recipe rows (seeded) against the comparison's cells:", "",
                  "| PGN (generator study) minus ... (points) | " + " | ".join(E10_METHODS[m] for m in others) + " |",
                  "|---|" + "---|" * len(others)]
        for task, c in gen.items():
            lines.append(f"| {E10_TASKS[task][0]} ({c.text()}) | "
                         + " | ".join(compare_cells(c, cells[task][m]) for m in others) + " |")
        lines.append("")
    every = [c for row in cells.values() for c in row.values() if c.top1] + [c for c in gen.values() if c.top1]
    lines.append(f"Records: {provenance(every)}.")
    return "\n".join(lines)


def demo_seed_steps(records: Path = RECORDS) -> str:
    """demo-seeds.md's headline: per precision, the largest library step of each seed and its ratio to the next."""
    lines = ["| precision | seed with the largest library step | its step | the next largest (seed) | ratio |",
             "|---|---|---|---|---|"]
    for folder in sorted((records / "demo-seeds").glob("elpv-*")):
        steps = {}
        for path in sorted((folder / "pgn").glob("test-*-seed*.json")):
            run = json.loads(path.read_text())
            seed = int(_SEED.match(path.name)["seed"])
            steps[seed] = max(e.get("update/library", 0.0) for e in run["epochs"])
        if len(steps) < 2:
            continue
        (s1, v1), (s2, v2) = sorted(steps.items(), key=lambda kv: -kv[1])[:2]
        precision = "bf16" if folder.name.endswith("-bf16") else "fp32"
        lines.append(f"| {precision} | {s1} | {v1:.2e} | {v2:.2e} ({s2}) | {v1 / v2:.1f}x |")
    return "\n".join(lines)


# The hosted study (benchmarks/hosted_classifier.py) and training through its endpoint (benchmarks/blackbox_study.py).
HOSTED_TASKS = {"elpv": "ELPV (500 / 656)", "fashion-mnist": "Fashion-MNIST (500 / 500)"}
HOSTED_METHODS = {"readout": "readout, no prompt", "zeroshot": "label mapping, no prompt",
                  "vp": "VP", "vp-bounded": "VP, bounded", "iip-frame": "IIP, frame", "pgn-frame": "PGN, frame",
                  "pgn-overlay": "PGN, overlay", "pgn-overlay-frame": "PGN, overlay + frame"}
HOSTED_SHORT = {"vp": "VP", "vp-bounded": "bounded VP", "iip-frame": "IIP-frame", "pgn-frame": "PGN-frame",
                "pgn-overlay": "PGN-overlay", "pgn-overlay-frame": "PGN-overlay+frame"}  # names without commas
BLACKBOX_METHODS = {"readout": "readout alone", "zo-vp": "bounded VP + readout", "zo-pgn": "PGN + readout",
                    "zo-vp-flm": "bounded VP + label mapping", "zo-pgn-flm": "PGN + label mapping"}


def hosted_cells(records: Path = RECORDS) -> dict[str, dict[str, tuple[str, Cell]]]:
    """``{task: {method: (head, Cell)}}``: each method's test seeds, under the head chosen on validation
    (the one head folder holding test runs). The label mapping alone has one seed: nothing in it is random."""
    out: dict = {}
    for task in HOSTED_TASKS:
        for method in HOSTED_METHODS:
            folder = records / "hosted-classifier" / task / method
            for head in sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []:
                cell = read_cell(folder / head, 1 if method == "zeroshot" else SEEDS)
                if cell.top1:
                    out.setdefault(task, {})[method] = (head, cell)
    return out


PGN_FORMS = ("pgn-frame", "pgn-overlay", "pgn-overlay-frame")  # the hosted study's order: ties go to the first


def hosted_chosen_form(records: Path, task: str) -> str | None:
    """The PGN form the hosted study chose for ``task``: the one whose chosen (head, rate) has the best validation
    top-1 (ties: the first form in the study's order), read from the validation record of the rate its test runs
    took; None until every form has its test runs."""
    best = None
    for form in PGN_FORMS:
        folder = records / "hosted-classifier" / task / form
        tests = sorted(folder.glob("*/test-*-seed0.json")) if folder.is_dir() else []
        if len(tests) != 1:
            return None
        val = tests[0].with_name(tests[0].name.replace("test-", "val-", 1))
        if not val.is_file():
            return None
        top1 = json.loads(val.read_text())["top1"]
        if best is None or top1 > best[1]:
            best = (form, top1)
    return best[0]


BLACKBOX_WARM = {"zo-vp": "readout"}  # rows warm-started from another row's run of the same seed


def blackbox_cells(records: Path = RECORDS) -> dict[str, tuple[int, float, Cell]]:
    """``{method: (budget, mean images sent, Cell)}`` of the black-box study at each method's largest budget; a
    warm-started row's images include those its warm start sent."""
    out = {}
    root = records / "blackbox-study" / "elpv"
    runs: dict[str, dict[int, list[dict]]] = {}
    for method in BLACKBOX_METHODS:
        for path in sorted((root / method).glob("seed*-q*.json")) if (root / method).is_dir() else []:
            r = json.loads(path.read_text())
            runs.setdefault(method, {}).setdefault(int(r["budget"] or 0), []).append(r)
    for method, by_budget in runs.items():
        budget = max(by_budget)
        rs = sorted(by_budget[budget], key=lambda r: r["seed"])[:SEEDS]
        warm = {r["seed"]: r["images_sent"] for b in runs.get(BLACKBOX_WARM.get(method), {}).values() for r in b}
        if all(r["seed"] in warm for r in rs) or method not in BLACKBOX_WARM:
            out[method] = (budget, statistics.mean(r["images_sent"] + warm.get(r["seed"], 0) for r in rs),
                           Cell(top1=tuple(r["test_top1"] for r in rs), seeds=SEEDS, precisions=("not recorded",),
                                devices=tuple(sorted({r["device"] for r in rs}))))
    return out


def _verdicts(mine: Cell, others: dict[str, Cell]) -> str:
    """'behind A and B beyond the spread, within it of C': ``others`` grouped by where ``mine`` stands."""
    groups: dict[str, list[str]] = {}
    for name, c in others.items():
        if (ds := difference(mine, c)) is not None:
            d, spread = ds
            groups.setdefault("within" if abs(d) <= spread else "ahead" if d > 0 else "behind", []).append(name)
    text = {"ahead": "ahead of {} beyond the spread", "behind": "behind {} beyond the spread",
            "within": "within the spread of {}"}
    return ", ".join(text[w].format(", ".join(groups[w][:-1]) + " and " * (len(groups[w]) > 1) + groups[w][-1])
                     for w in ("ahead", "behind", "within") if w in groups) or "pending"


def _bracket(c: Cell, readout: tuple | None, method: str) -> str:
    """' [minus the readout alone ± combined spread, beyond or within it]'; '' for the readout or while pending."""
    if method == "readout" or readout is None or (ds := difference(c, readout[-1])) is None:
        return ""
    d, spread = ds
    return f" [{d:+.2f} ± {spread:.2f}, {'beyond' if abs(d) > spread else 'within'}]"


def readme_hosted(records: Path = RECORDS) -> str:
    """The hosted table (README and docs/results.md): every method on the scores-only model, each against the
    readout alone, PGN's chosen form against the other prompts, and what training through the endpoint gives."""
    cells = hosted_cells(records)
    tasks = [t for t in HOSTED_TASKS if t in cells]
    heads = {head for t in tasks for m, (head, _) in cells[t].items() if m != "zeroshot"}
    lines = ["| test top-1 (%) through the endpoint, 3 seeds | "
             + " | ".join(HOSTED_TASKS[t] for t in tasks) + " |", "|---|" + "---|" * len(tasks)]

    def cell(task: str, method: str) -> str:
        head, c = cells[task].get(method, ("", None))
        if c is None:
            return "pending"
        if c.seeds == 1:
            return f"{100 * c.mean:.2f} (one run)"
        return c.text() + (f" ({head})" if len(heads) > 1 else "") + _bracket(c, cells[task].get("readout"), method)

    for method, name in HOSTED_METHODS.items():
        if any(method in cells[t] for t in tasks):
            lines.append(f"| {name} | " + " | ".join(cell(t, method) for t in tasks) + " |")
    lines += ["", "In brackets: minus the readout alone, points ± the combined seed spread, beyond or within it. "
              + (f"Every prompt's head (chosen on validation): the {heads.pop()}." if len(heads) == 1 else
                 "Each prompt's head (chosen on validation) in parentheses.")]
    chosen = {t: f for t in tasks if (f := hosted_chosen_form(records, t)) and f in cells[t]}
    if chosen:
        lines.append("PGN's form chosen on validation, against the other prompts: " + "; ".join(
            f"{HOSTED_TASKS[t].split(' (')[0]}, {HOSTED_METHODS[f].removeprefix('PGN, ')}: "
            + _verdicts(cells[t][f][1], {HOSTED_SHORT[m]: c for m, (_, c) in cells[t].items()
                                          if m not in ("readout", "zeroshot", f)}) for t, f in chosen.items()) + ".")
    bb = {m: v for m, v in blackbox_cells(records).items() if m in ("readout", "zo-vp", "zo-pgn")}  # the rest: its page
    if bb:
        lines += ["", "Trained through the endpoint, the weights never loaded (ELPV, `python benchmarks/blackbox_study.py`;"
                  " images sent, a warm start's included): " + "; ".join(
                      f"{BLACKBOX_METHODS[m]} {c.text()} ({sent:,.0f})" + _bracket(c, bb.get("readout"), m)
                      for m, (_, sent, c) in bb.items()) + "."]
    every = [c for row in cells.values() for _, c in row.values()] + [c for _, _, c in bb.values()]
    lines += [f"Records: machines {'; '.join(sorted({_short_device(d) for c in every for d in c.devices}))}."]
    return "\n".join(lines)


# Which block is rendered into which file.
BLOCKS: dict[str, tuple[str, Callable[[Path], str]]] = {
    "readme-results": ("README.md", readme_results),
    "readme-hosted": ("README.md", readme_hosted),
    "results-hosted": ("docs/results.md", readme_hosted),
    "results-standing": ("docs/results.md", results_standing),
    "demo-seed-steps": ("docs/results.md", demo_seed_steps),
}
_BLOCK = re.compile(r"(<!-- figures:(?P<name>[\w-]+) [^>]*-->\n)(?P<body>.*?)(<!-- /figures:(?P=name) -->)", re.S)


def render_text(text: str, records: Path = RECORDS) -> str:
    """``text`` with every marked block re-rendered from ``records``."""
    def fill(m: re.Match) -> str:
        return m.group(1) + BLOCKS[m["name"]][1](records) + "\n" + m.group(4)
    return _BLOCK.sub(fill, text)


def blocks_in(text: str) -> dict[str, str]:
    """``{name: body}`` of the marked blocks in ``text``."""
    return {m["name"]: m["body"] for m in _BLOCK.finditer(text)}


def render(root: Path = ROOT, check: bool = False) -> list[str]:
    """Rewrite (or, with ``check``, only compare) every block; returns the files that differ(ed)."""
    changed = []
    for rel in sorted({f for f, _ in BLOCKS.values()}):
        path = root / rel
        text = path.read_text()
        new = render_text(text, root / "docs" / "records")
        if new != text:
            changed.append(rel)
            if not check:
                path.write_text(new)
    return changed
