"""How long each lab takes a student: an estimate built from what the lab asks for, counted in its notebooks.

    python scripts/lab_effort.py        # one row per lab

A lab's work is counted in its source notebook (``solutions/``) and its release (``labs/``):

* the prose to read: the words of the release's markdown cells, at ``READING_WORDS_PER_MINUTE``;
* the given code to read: the release's code lines outside answer cells, at ``GIVEN_LINES_PER_MINUTE``;
* each function to write (a test cell that checks visible and hidden cases): ``MINUTES_PER_FUNCTION``
  to read its contract and plan it, and ``MINUTES_PER_LINE`` for each line of the reference answer
  (comments and blank lines left out): writing, running the visible checks, fixing;
* each question answered with a number or a letter: ``MINUTES_PER_QUESTION`` (most need a short
  computation or a look at a plot);
* each design graded in tiers: ``MINUTES_PER_DESIGN`` (trying configurations and reading their
  measurements);
* each written answer graded by hand: ``MINUTES_PER_WRITTEN_ANSWER``.

The rates are assumptions, stated here once and used for every lab alike, so the estimates compare the
labs fairly even where the absolute hours are off for a given student; an instructor who times a class
can set them from that. The syllabus on the site's first page states the estimate, rounded to the
half hour (tests/test_syllabus.py checks it), and the points of each lab follow it.
"""
from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import NamedTuple

import nbformat

ROOT = Path(__file__).resolve().parents[1]

READING_WORDS_PER_MINUTE = 120
GIVEN_LINES_PER_MINUTE = 10
MINUTES_PER_FUNCTION = 10
MINUTES_PER_LINE = 1.5
MINUTES_PER_QUESTION = 5
MINUTES_PER_DESIGN = 25
MINUTES_PER_WRITTEN_ANSWER = 15


class Effort(NamedTuple):
    """What a lab asks for, counted in its notebooks, and the minutes it takes at the stated rates."""

    words: int
    given_lines: int
    functions: int
    answer_lines: int
    questions: int
    designs: int
    written: int
    points: int

    @property
    def minutes(self) -> float:
        return (self.words / READING_WORDS_PER_MINUTE + self.given_lines / GIVEN_LINES_PER_MINUTE
                + self.functions * MINUTES_PER_FUNCTION + self.answer_lines * MINUTES_PER_LINE
                + self.questions * MINUTES_PER_QUESTION + self.designs * MINUTES_PER_DESIGN
                + self.written * MINUTES_PER_WRITTEN_ANSWER)

    @property
    def hours(self) -> float:
        """The estimate rounded to the half hour, as the syllabus states it."""
        return round(self.minutes / 30) / 2


def labs() -> list[str]:
    return sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir() and p.name.startswith("lab"))


def _code_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def _is_design(checks, name: str) -> bool:
    """A check that grades in tiers (through qlib.grading.answers.tiered or measured_design)."""
    source = inspect.getsource(getattr(checks, name))
    return "tiered(" in source or "measured_design(" in source


def lab_effort(lab: str) -> Effort:
    source = nbformat.read(ROOT / "solutions" / lab / f"{lab}.ipynb", as_version=4)
    release = nbformat.read(ROOT / "labs" / lab / f"{lab}.ipynb", as_version=4)
    checks = importlib.import_module(f"qlib.grading.{lab[:5]}")
    meta = [(c, c.metadata.get("nbgrader", {})) for c in source.cells]
    words = sum(len(re.findall(r"\w+", c.source)) for c in release.cells if c.cell_type == "markdown")
    given = sum(len(_code_lines(c.source)) for c in release.cells
                if c.cell_type == "code" and not c.metadata.get("nbgrader", {}).get("solution"))
    functions = questions = designs = 0
    for cell, m in meta:
        if cell.cell_type != "code" or not m.get("grade") or m.get("solution"):
            continue
        called = re.findall(r"grader\.(check_\w+)\(", cell.source)
        if any(_is_design(checks, name) for name in called):
            designs += 1
        elif len(called) > 1:  # the visible cases, then the hidden ones: a function to write
            functions += 1
        else:
            questions += 1
    answer_lines = sum(len(_code_lines(region)) for cell, m in meta if m.get("solution") and cell.cell_type == "code"
                       for region in re.findall(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", cell.source, re.S))
    written = sum(1 for cell, m in meta if m.get("solution") and cell.cell_type == "markdown")
    points = int(sum(m.get("points", 0) for _, m in meta if m.get("grade")))
    return Effort(words, given, functions, answer_lines, questions, designs, written, points)


def main() -> None:
    print(f"{'lab':28s} {'words':>6s} {'given':>6s} {'funcs':>6s} {'lines':>6s} {'quest':>6s} {'design':>6s} "
          f"{'written':>7s} {'minutes':>8s} {'hours':>6s} {'points':>6s} {'pts/h':>6s}")
    for lab in labs():
        e = lab_effort(lab)
        print(f"{lab:28s} {e.words:6d} {e.given_lines:6d} {e.functions:6d} {e.answer_lines:6d} {e.questions:6d} "
              f"{e.designs:6d} {e.written:7d} {e.minutes:8.0f} {e.hours:6.1f} {e.points:6d} {e.points * 60 / e.minutes:6.1f}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
