"""Figures cannot drift from their records: every marked block of the README and the study pages equals what
``pgn_study.figures`` renders from docs/records, and the README states no accuracy outside such a block."""
import json
import re
import shutil

import pytest

from pgn_study import figures
from pgn_study.comparison import standing

ROOT = figures.ROOT


def test_every_figure_block_equals_what_the_records_give():
    differing = figures.render(ROOT, check=True)
    assert not differing, f"re-render with `python benchmarks/render_figures.py`: {differing}"
    for rel, names in (("README.md", {"readme-results", "readme-hosted"}),
                       ("docs/results.md", {"results-standing", "demo-seed-steps", "results-hosted"})):
        assert names <= set(figures.blocks_in((ROOT / rel).read_text())), (rel, names)


def test_a_hand_edited_figure_is_caught_and_rendered_back():
    text = (ROOT / "README.md").read_text()
    body = figures.blocks_in(text)["readme-results"]
    number = re.search(r"\d+\.\d\d ± \d+\.\d\d", body).group(0)
    edited = text.replace(body, body.replace(number, "99.99 ± 0.01", 1))
    assert edited != text and figures.render_text(edited) == figures.render_text(text)


@pytest.fixture()
def records(tmp_path):
    """A copy of the records the README's table reads, to change."""
    for study in ("recipe-study", "generator-study"):
        shutil.copytree(figures.RECORDS / study, tmp_path / study)
    return tmp_path


def test_a_changed_or_missing_record_changes_the_table(records):
    before = figures.readme_results(records)
    assert before == figures.readme_results(figures.RECORDS)
    cell = records / "recipe-study" / "elpv4-1000x656-112px-e10" / "linear"
    seed0 = sorted(cell.glob("test-*-seed0.json"))[0]
    run = json.loads(seed0.read_text())
    run["top1"] -= 0.05
    seed0.write_text(json.dumps(run))
    changed = figures.readme_results(records)
    assert changed != before
    seed0.unlink()  # a seed not yet recorded: the cell is pending, never filled from elsewhere
    assert "pending (2 of 3 seeds)" in figures.readme_results(records).splitlines()[4]


def test_a_cell_reads_its_seeds_and_names_what_they_ran_on(tmp_path):
    for seed, top1 in enumerate((0.80, 0.82, 0.84)):
        run = {"top1": top1, "device": "CPU (AMD EPYC, x86_64, 1 threads)"} | ({"precision": "bf16"} if seed else {})
        (tmp_path / f"test-lr0.01-seed{seed}.json").write_text(json.dumps(run))
    cell = figures.read_cell(tmp_path)
    assert cell.complete and cell.text() == "82.00 ± 2.00"
    assert cell.precisions == ("bf16", "not recorded")  # a record without a precision is not shown as fp32
    assert figures.provenance([cell]) == "precision bf16 and not recorded; machines: AMD EPYC, 1 thread"
    (tmp_path / "test-lr0.1-seed0.json").write_text(json.dumps({"top1": 0.5}))
    with pytest.raises(ValueError, match="more than one rate"):
        figures.read_cell(tmp_path)


def test_a_standing_uses_the_comparisons_rule():
    def cell(*top1):
        return figures.Cell(top1=top1, seeds=len(top1), precisions=("fp32",), devices=("x",))

    a, b = cell(0.86, 0.86, 0.87), cell(0.85, 0.85, 0.86)
    s = standing({"t": {"a": a.summary(), "b": b.summary()}}, "a", ("b",))["b"]["per_task"]["t"]
    assert figures.compare_cells(a, b) == f"{100 * s['difference']:+.2f} ± {100 * s['spread']:.2f} (ahead, beyond the spread)"
    assert figures.compare_cells(cell(0.80, 0.90, 0.85), b).endswith("(behind, within the spread)")
    assert figures.compare_cells(figures.Cell((0.80, 0.90), 3, ("fp32",), ("x",)), b) == "pending"  # a seed short


def _prose(text: str) -> str:
    """``text`` less fenced code and rendered blocks."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.sub(r"<!-- figures:.*?<!-- /figures:[\w-]+ -->", "", text, flags=re.S)


def test_the_readme_states_no_figure_outside_a_rendered_block():
    prose = _prose((ROOT / "README.md").read_text())
    assert not re.findall(r"\d+\.\d+ ?%|±|\b\d{2}\.\d{2}\b", prose)


def test_the_hosted_block_reads_the_chosen_head_and_the_black_box_study_at_its_largest_budget(tmp_path):
    """The README's hosted table: a method's cell is the head folder holding its test seeds; a black-box row is
    its largest budget; a prompt is compared with the readout alone by the comparison's rule."""
    device = "CPU (AMD EPYC, x86_64, 1 threads)"
    hosted = tmp_path / "hosted-classifier" / "elpv"
    for method, head, tops in (("readout", "readout", (0.80, 0.82, 0.84)), ("pgn-overlay", "readout", (0.70, 0.71, 0.72))):
        (hosted / method / "flm").mkdir(parents=True)  # validation only: not the chosen head
        (hosted / method / "flm" / "val-lr0.1-seed0.json").write_text(json.dumps({"top1": 0.99}))
        (hosted / method / head).mkdir(parents=True, exist_ok=True)
        for seed, top1 in enumerate(tops):
            (hosted / method / head / f"test-lr0.1-seed{seed}.json").write_text(json.dumps({"top1": top1, "device": device}))
    bb = tmp_path / "blackbox-study" / "elpv"
    for method, budget, tops in (("readout", None, (0.8, 0.8, 0.8)), ("zo-vp", 2500, (0.5, 0.5, 0.5)),
                                 ("zo-vp", 5000, (0.9, 0.9, 0.92))):
        (bb / method).mkdir(parents=True, exist_ok=True)
        for seed, top1 in enumerate(tops):
            (bb / method / f"seed{seed}-q{budget or 0}.json").write_text(json.dumps(
                {"budget": budget, "seed": seed, "test_top1": top1, "images_sent": 4900 + seed, "device": device}))
    text = figures.readme_hosted(tmp_path)
    assert "| readout, no prompt | 82.00 ± 2.00 |" in text
    assert "| PGN, overlay | 71.00 ± 1.00 [-11.00 ± 2.24, beyond] |" in text
    assert "Every prompt's head (chosen on validation): the readout." in text
    # A prompt whose validation chose the label mapping: each cell then names its head; +0.67 within 3.61.
    (hosted / "vp" / "flm").mkdir(parents=True)
    for seed, top1 in enumerate((0.80, 0.83, 0.86)):
        (hosted / "vp" / "flm" / f"test-lr1.0-seed{seed}.json").write_text(json.dumps({"top1": top1, "device": device}))
    text = figures.readme_hosted(tmp_path)
    assert "| VP | 83.00 ± 3.00 (flm) [+1.00 ± 3.61, within] |" in text
    assert "| PGN, overlay | 71.00 ± 1.00 (readout) [-11.00 ± 2.24, beyond] |" in text
    # the warm start's images (the readout's) counted; against the readout alone, as the table's rows are
    assert "bounded VP + readout 90.67 ± 1.15 (9,802) [+10.67 ± 1.15, beyond]" in text


def test_the_hosted_block_names_pgns_form_chosen_on_validation_and_where_it_stands(tmp_path):
    """The form whose chosen rate has the best validation top-1 (read at the rate its test runs took, not the
    best of its grid), then each other prompt grouped by where the form stands against it."""
    hosted = tmp_path / "hosted-classifier" / "elpv"

    def method(name, tops, val=None, lr=0.1, extra_val=None):
        folder = hosted / name / "readout"
        folder.mkdir(parents=True)
        for seed, top1 in enumerate(tops):
            (folder / f"test-lr{lr}-head1.0-seed{seed}.json").write_text(json.dumps({"top1": top1}))
        if val is not None:
            (folder / f"val-lr{lr}-head1.0-seed0.json").write_text(json.dumps({"top1": val}))
        for other_lr, top1 in (extra_val or {}).items():  # validation points the form did not choose
            (folder / f"val-lr{other_lr}-head1.0-seed0.json").write_text(json.dumps({"top1": top1}))

    method("readout", (0.80, 0.82, 0.84))
    method("vp", (0.75, 0.77, 0.79))
    method("pgn-overlay", (0.70, 0.71, 0.72), val=0.80)
    method("pgn-frame", (0.60, 0.61, 0.62), val=0.85, extra_val={1.0: 0.95})
    assert figures.hosted_chosen_form(tmp_path, "elpv") is None  # one form has no test runs yet
    assert "chosen on validation, against" not in figures.readme_hosted(tmp_path)
    method("pgn-overlay-frame", (0.75, 0.76, 0.77), val=0.90)
    assert figures.hosted_chosen_form(tmp_path, "elpv") == "pgn-overlay-frame"
    assert ("PGN's form chosen on validation, against the other prompts: ELPV, overlay + frame: ahead of PGN-frame "
            "and PGN-overlay beyond the spread, within the spread of VP.") in figures.readme_hosted(tmp_path)
