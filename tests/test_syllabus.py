"""The syllabus on the site's first page states each lab's points as its notebook counts them."""
from __future__ import annotations

import re
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| (\d+) \|.*\[`(lab\d\d_\w+)`\].*\| (\d+)(?: \((\d+) by hand\))? \|$")


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
    labs = sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir() and p.name.startswith("lab"))
    assert [m.group(2) for m in rows] == labs
    for m in rows:
        total, by_hand = lab_points(m.group(2))
        assert (int(m.group(3)), int(m.group(4) or 0)) == (total, by_hand), f"{m.group(2)}: {total} ({by_hand} by hand)"
