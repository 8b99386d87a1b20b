"""The syllabus on the site's first page states each lab's points as its notebook counts them, and its expected
time as scripts/lab_effort.py estimates it; the points follow the time."""
from __future__ import annotations

import importlib
import re
import statistics
from pathlib import Path

import nbformat

from tests import load_script

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| (\d+) \|.*\[`(lab\d\d_\w+)`\].*\| (\d+)(?: \((\d+) by hand\))? \| about [\d.]+ h \|$")
TIME = re.compile(r"^\|.*\[`(lab\d\d_\w+)`\].*\| about ([\d.]+) h \|$")


def lab_points(lab: str) -> tuple[int, int]:
    """(all points, points graded by hand) of a lab's source notebook."""
    nb = nbformat.read(ROOT / "solutions" / lab / f"{lab}.ipynb", as_version=4)
    graded = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
    total = sum(c.metadata["nbgrader"].get("points", 0) for c in graded)
    by_hand = sum(c.metadata["nbgrader"].get("points", 0) for c in graded if c.cell_type == "markdown")
    return int(total), int(by_hand)


def test_every_lab_is_in_the_syllabus_with_its_points():
    rows = [ROW.match(line) for line in (ROOT / "book" / "intro.md").read_text().splitlines()]
    rows = [m for m in rows if m]
    header = next(line for line in (ROOT / "book" / "intro.md").read_text().splitlines() if line.startswith("| # |"))
    for m in rows:  # every row has the header's columns (an empty cell would shift points into "Time")
        cells = [cell.strip() for cell in m.group(0).strip("|").split("|")]
        assert len(cells) == header.count("|") - 1 and all(cells), m.group(0)
    labs = sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir() and p.name.startswith("lab"))
    assert [m.group(2) for m in rows] == labs
    for m in rows:
        total, by_hand = lab_points(m.group(2))
        assert (int(m.group(3)), int(m.group(4) or 0)) == (total, by_hand), f"{m.group(2)}: {total} ({by_hand} by hand)"


def _lab_effort():
    return load_script("lab_effort")


def test_every_lab_states_its_expected_time():
    effort = _lab_effort()
    rows = [TIME.match(line) for line in (ROOT / "book" / "intro.md").read_text().splitlines()]
    stated = {m.group(1): float(m.group(2)) for m in rows if m}
    assert stated == {lab: effort.lab_effort(lab).hours for lab in effort.labs()}


def test_points_follow_the_expected_time():
    # every lab earns within a factor 1.5 of the course's median points per hour
    effort = _lab_effort()
    rates = {lab: e.points / e.minutes for lab in effort.labs() for e in [effort.lab_effort(lab)]}
    median = statistics.median(rates.values())
    for lab, rate in rates.items():
        assert median / 1.5 <= rate <= median * 1.5, f"{lab}: {rate * 60:.1f} points an hour, median {median * 60:.1f}"


def test_the_estimate_counts_each_labs_design_tasks():
    # a design is a task whose test declares a design short of its target (tests/lab_grading.py PARTIAL)
    from tests.lab_grading import LabGradingTests

    effort = _lab_effort()
    for lab in effort.labs():
        module = importlib.import_module(f"tests.test_{lab[:5]}_grading")
        cls = next(c for c in vars(module).values()
                   if isinstance(c, type) and issubclass(c, LabGradingTests) and c is not LabGradingTests)
        assert effort.lab_effort(lab).designs == len({p.question for p in cls.PARTIAL.values()}), lab


def test_the_course_does_not_open_with_its_heaviest_labs():
    # labs 1 and 2 introduce the course: each takes less than lab 3 (linear quantization, the foundation
    # of every later lab) and less than the longest lab after them
    effort = _lab_effort()
    minutes = [effort.lab_effort(lab).minutes for lab in effort.labs()]
    assert max(minutes[:2]) < minutes[2] <= max(minutes[2:]), [round(m) for m in minutes]
