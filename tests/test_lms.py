"""The LMS round trip (qlib/grading/lms.py): class lists in, downloads collected, grades out, feedback.

The downloads are built here with the file names Canvas and Moodle give (see the module's
docstring for where each format comes from); the class lists are in tests/data/lms/. Grading is
the real ``nbgrader autograde`` of lab 3 in a temporary course: Jane Doe hands in the reference
solution, Bob Smith the untouched notebook (a zero), Alex Lee nothing (missing).
"""
from __future__ import annotations

import argparse
import csv
import re
import shutil
import zipfile
from pathlib import Path

import nbformat
import pytest

from qlib.grading import lms
from tests import nbgrader_course as course

LAB = "lab03_linear_quantization"
DATA = Path(__file__).parent / "data" / "lms"
CANVAS_ROSTER = DATA / "canvas_grades_export.csv"
MOODLE_ROSTER = DATA / "moodle_participants.csv"
MOODLE_WORKSHEET = DATA / "moodle_grading_worksheet.csv"
SOURCE = course.ROOT / "solutions" / LAB / f"{LAB}.ipynb"


@pytest.fixture(autouse=True)
def _course_secret(monkeypatch):
    monkeypatch.setenv("QLIB_GRADING_SECRET_FILE", str(course.SECRET))


def points_of_lab() -> dict[str, float]:
    """grade_id -> points, from the source notebook's nbgrader metadata (not from the gradebook)."""
    cells = course.read_notebook(SOURCE).cells
    return {c.metadata["nbgrader"]["grade_id"]: float(c.metadata["nbgrader"]["points"])
            for c in cells if c.metadata.get("nbgrader", {}).get("grade")}


def points_of_reference() -> dict[str, float]:
    """grade_id -> what the reference answers earn: every autograded point, 0 for a written answer left blank."""
    cells = {c.metadata["nbgrader"]["grade_id"]: c for c in course.read_notebook(SOURCE).cells
             if c.metadata.get("nbgrader", {}).get("grade")}
    return {g: 0.0 if c.cell_type == "markdown" else p for (g, c), p in zip(cells.items(), points_of_lab().values())}


def marked_notebook(mark: str) -> str:
    """A notebook whose one cell says ``mark``: which copy was collected is read back from it."""
    return nbformat.writes(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(mark)]))


def collected_mark(course_dir: Path, student: str) -> str:
    return course.read_notebook(course.notebook_path(course_dir, "submitted", LAB, student)).cells[0].source


def write_zip(path: Path, files: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


def empty_course(tmp: Path) -> Path:
    """A course directory with the configuration and nothing else (the gradebook appears on use)."""
    tmp.mkdir(parents=True, exist_ok=True)
    shutil.copy(course.ROOT / "nbgrader_config.py", tmp / "nbgrader_config.py")
    return tmp


def gradebook_students(course_dir: Path) -> dict[str, tuple]:
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course_dir / 'gradebook.db'}") as gb:
        return {s.id: (s.first_name, s.last_name, s.email, s.lms_user_id) for s in gb.students}


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


# --- class lists ----------------------------------------------------------------------------

def test_canvas_roster_keeps_the_canvas_id_and_skips_the_test_student(tmp_path):
    c = empty_course(tmp_path)
    kind, _ = lms.import_roster(c, CANVAS_ROSTER)
    assert kind == "canvas"
    assert gradebook_students(c) == {
        "jdoe": ("Jane", "Doe", None, "1001"),  # SIS Login ID is the course id
        "bsmith": ("Bob", "Smith", None, "1002"),
        "canvas1003": ("Alex", "Lee", None, "1003"),  # no SIS ids: the Canvas id
    }


def test_moodle_roster_keeps_the_email_and_only_students(tmp_path):
    c = empty_course(tmp_path)
    kind, _ = lms.import_roster(c, MOODLE_ROSTER)
    assert kind == "moodle"
    assert gradebook_students(c) == {
        "jdoe": ("Jane", "Doe", "jdoe@uni.example", "jdoe@uni.example"),
        "bsmith": ("Bob", "Smith", "bsmith@uni.example", "bsmith@uni.example"),
        "alee": ("Alex", "Lee", "alee@uni.example", "alee@uni.example"),
    }


def test_a_second_import_keeps_the_course_id_of_a_known_lms_id(tmp_path):
    c = empty_course(tmp_path)
    lms.import_roster(c, CANVAS_ROSTER)
    later = tmp_path / "later.csv"  # Jane got a SIS login meanwhile and changed her name
    later.write_text("Student,ID,SIS User ID,SIS Login ID,Section\n\"Doe-Ray, Jane\",1001,S0001,jdoe2,S1\n")
    lms.import_roster(c, later)
    assert gradebook_students(c)["jdoe"] == ("Jane", "Doe-Ray", None, "1001")
    assert "jdoe2" not in gradebook_students(c)


@pytest.mark.parametrize("header, words", [
    ("Student,ID,SIS Login ID\n", ["Canvas gradebook export", "'Section'"]),
    ("First name,Email address\n", ["Moodle participants", "'Last name'"]),
    ("Name,Mail\n", ["neither", "Student, ID, Section", "First name, Last name, Email address"]),
])
def test_an_unknown_class_list_is_refused_naming_the_missing_column(tmp_path, header, words):
    bad = tmp_path / "roster.csv"
    bad.write_text(header + "x,y,z\n")
    with pytest.raises(lms.RosterError) as err:
        lms.read_roster(bad)
    for w in words:
        assert w in str(err.value)


def test_two_lms_ids_that_would_share_a_course_id_are_refused(tmp_path):
    c = empty_course(tmp_path)
    roster = tmp_path / "participants.csv"
    roster.write_text("First name,Last name,Email address\nJane,Doe,jdoe@uni.example\nJim,Doe,jdoe@other.example\n")
    with pytest.raises(lms.RosterError, match="jdoe@uni.example and jdoe@other.example"):
        lms.import_roster(c, roster)
    assert gradebook_students(c) == {}


# --- collecting downloads -------------------------------------------------------------------

def test_canvas_download(tmp_path):
    c = empty_course(tmp_path / "c")
    archive = write_zip(tmp_path / "QUANT101-lab3 submissions.zip", {
        f"doejane_1001_5001_{LAB}.ipynb": marked_notebook("jane, first upload"),
        f"doejane_1001_5002_{LAB}-1.ipynb": marked_notebook("jane, uploaded again"),
        "doejane_1001_5003_screenshot.png": "not a notebook",
        f"smithbob_LATE_1002_5004_{LAB}.ipynb": marked_notebook("bob, late"),
        "leealex_1003_5005_Lab 3 answers.ipynb": marked_notebook("alex, other name"),
        f"strangerx_9999_5006_{LAB}.ipynb": marked_notebook("not in the class"),
    })
    report = lms.collect(c, LAB, "canvas", archive, roster=CANVAS_ROSTER)

    assert sorted(report.collected) == ["bsmith", "canvas1003", "jdoe"]
    assert collected_mark(c, "jdoe") == "jane, uploaded again"
    assert collected_mark(c, "bsmith") == "bob, late"
    assert collected_mark(c, "canvas1003") == "alex, other name"
    assert [s for s, got in report.collected.items() if got.late] == ["bsmith"]
    assert [Path(f).name for f in report.superseded] == [f"doejane_1001_5001_{LAB}.ipynb"]
    assert [Path(f).name for f in report.unknown] == [f"strangerx_9999_5006_{LAB}.ipynb"]
    assert not report.times_given  # Canvas gives no time: no timestamp.txt
    assert not list((c / "submitted").glob("*/*/timestamp.txt"))
    assert sorted(p.name for p in (c / "submitted" / "jdoe" / LAB).iterdir()) == [f"{LAB}.ipynb"]


MOODLE_DOWNLOAD = {
    f"Jane Doe_2001_assignsubmission_file_/{LAB}.ipynb": marked_notebook("jane, first upload"),
    f"Jane Doe_2001_assignsubmission_file_/{LAB} (1).ipynb": marked_notebook("jane, uploaded again"),
    f"Bob Smith_2002_assignsubmission_file_{LAB}.ipynb": marked_notebook("bob"),  # without folders
    "Bob Smith_2002_assignsubmission_onlinetext_/onlinetext.html": "<p>hello</p>",
    f"Zed Stranger_2999_assignsubmission_file_/{LAB}.ipynb": marked_notebook("not in the class"),
}


def test_moodle_download_matched_by_name(tmp_path):
    c = empty_course(tmp_path / "c")
    archive = write_zip(tmp_path / "QUANT101-Lab 3-17.zip", MOODLE_DOWNLOAD)
    report = lms.collect(c, LAB, "moodle", archive, roster=MOODLE_ROSTER)

    assert sorted(report.collected) == ["bsmith", "jdoe"]
    assert collected_mark(c, "jdoe") == "jane, uploaded again"
    assert collected_mark(c, "bsmith") == "bob"
    assert [Path(f).name for f in report.superseded] == [f"{LAB}.ipynb"]
    assert ["Zed Stranger_2999" in f for f in report.unknown] == [True]
    assert not report.times_given
    assert not list((c / "submitted").glob("*/*/timestamp.txt"))


def test_moodle_download_with_the_grading_worksheet_records_submission_times(tmp_path):
    c = empty_course(tmp_path / "c")
    lms.import_roster(c, MOODLE_ROSTER)
    archive = write_zip(tmp_path / "QUANT101-Lab 3-17.zip", MOODLE_DOWNLOAD)
    report = lms.collect(c, LAB, "moodle", archive, roster=MOODLE_WORKSHEET, tz="Europe/Paris")

    assert sorted(report.collected) == ["bsmith", "jdoe"]
    assert report.times_given
    stamps = {s: (c / "submitted" / s / LAB / "timestamp.txt").read_text() for s in report.collected}
    # the worksheet's local times (Paris, UTC+1 in March) in UTC
    assert stamps == {"jdoe": "2024-03-04 13:15:00", "bsmith": "2024-03-06 08:05:00"}


# --- grading, exports and feedback ----------------------------------------------------------

@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Lab 3 graded for the Canvas roster: Jane the reference, Bob the untouched notebook, Alex nothing."""
    mp = pytest.MonkeyPatch()
    mp.setenv("QLIB_GRADING_SECRET_FILE", str(course.SECRET))
    c = course.make_course(tmp_path_factory.mktemp("lms") / "course", LAB)
    lms.import_roster(c, CANVAS_ROSTER)
    released = course.read_notebook(course.notebook_path(c, "labs", LAB))
    course.submit(c, LAB, "jdoe", course.fill(released, course.solution_code(course.read_notebook(SOURCE))))
    (c / "submitted" / "jdoe" / LAB / "timestamp.txt").write_text("2024-03-04 14:15:00+00:00")
    course.submit(c, LAB, "bsmith", released)
    course.nbgrader("autograde", LAB, cwd=c)
    assert lms.regenerate_feedback(c, LAB) == ["bsmith", "jdoe"]
    yield c
    mp.undo()


def run_command(argv: list[str]) -> int:
    """The commands as ``python -m qlib.grading.course`` runs them (only this module's)."""
    top = argparse.ArgumentParser()
    lms.register(top.add_subparsers(dest="command", required=True))
    args = top.parse_args(argv)
    return args.run(args)


def test_canvas_export(graded, tmp_path):
    out = tmp_path / "canvas.csv"
    assert run_command(["lms-export", LAB, "--lms", "canvas", "-o", str(out), "--course", str(graded),
                        "--title", "Lab 3: Linear quantization (48213)"]) == 0
    points = points_of_lab()
    header, possible, *rows = read_csv(out)
    questions = [f"{LAB}: {g}" for g in points]  # in the notebook's order
    assert header == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section",
                      "Lab 3: Linear quantization (48213)", *questions,
                      f"{LAB}: submitted at (UTC)", f"{LAB}: status"]
    assert possible[0].strip() == "Points Possible"
    assert [float(p) for p in possible[5:-2]] == [sum(points.values()), *points.values()]
    by_id = {r[1]: r[5:] for r in rows}
    earned = points_of_reference()  # the written answer, left blank, is a 0 until a person grades it
    assert by_id["1001"] == [f"{sum(earned.values()):g}", *[f"{p:g}" for p in earned.values()],
                             "2024-03-04T14:15:00Z", "graded"]
    assert by_id["1002"] == ["0"] * (1 + len(points)) + ["", "graded"]  # a zero
    assert by_id["1003"] == [""] * (1 + len(points)) + ["", "missing"]  # no score: not a zero
    assert {r[0] for r in rows} == {"Doe, Jane", "Smith, Bob", "Lee, Alex"}


def test_moodle_export(graded, tmp_path):
    c = tmp_path / "course"
    shutil.copytree(graded, c)
    lms.import_roster(c, MOODLE_ROSTER)  # Jane and Bob by course id; Alex Lee is "alee" now
    out = lms.export_grades(c, LAB, "moodle")
    assert out == c / f"{LAB}_moodle_gradebook.csv"
    points = points_of_lab()
    header, *rows = read_csv(out)
    assert header == ["First name", "Last name", "Email address", f"{LAB} ({sum(points.values()):g} pts)",
                      *[f"{LAB}: {g} ({p:g} pts)" for g, p in points.items()],
                      f"{LAB}: submitted at (UTC)", f"{LAB}: status"]
    by_email = {r[2]: r[3:] for r in rows}
    assert by_email["jdoe@uni.example"][0] == f"{sum(points_of_reference().values()):g}"
    assert by_email["jdoe@uni.example"][-2:] == ["2024-03-04T14:15:00Z", "graded"]
    assert by_email["bsmith@uni.example"] == ["0"] * (1 + len(points)) + ["", "graded"]
    assert by_email["alee@uni.example"] == ["-"] * (1 + len(points)) + ["", "missing"]  # Moodle's "no grade"


def local_references(html: str) -> list[str]:
    return re.findall(r'<(?:script|link|img)[^>]*?(?:src|href)="([^"#]+)"', html)


def test_feedback_typesets_math_from_its_own_folder(graded):
    folder = graded / "feedback" / "jdoe" / LAB
    html = (folder / f"{LAB}.html").read_text()
    assert "$" in html  # the lab's math is there for MathJax to typeset
    assert not re.search(r"cdn|https?://[^\s\"']*\.js", html, re.I)
    refs = local_references(html)
    assert "mathjax/tex-svg.js" in refs
    for ref in refs:
        assert (folder / ref).is_file(), ref
    # the real MathJax, and the TeX extensions it loads on demand (textmacros is asked for)
    assert (folder / "mathjax" / "tex-svg.js").read_bytes() == (lms.MATHJAX / "tex-svg.js").read_bytes()
    assert (folder / "mathjax" / "input" / "tex" / "extensions" / "textmacros.js").is_file()


def test_feedback_after_a_regrade_is_the_new_grade(graded, tmp_path):
    c = tmp_path / "course"
    shutil.copytree(graded, c)
    feedback = c / "feedback" / "bsmith" / LAB / f"{LAB}.html"
    total, earned = sum(points_of_lab().values()), sum(points_of_reference().values())
    assert f"Score: 0.0 / {total}" in feedback.read_text()
    released = course.read_notebook(course.notebook_path(c, "labs", LAB))
    course.submit(c, LAB, "bsmith", course.fill(released, course.solution_code(course.read_notebook(SOURCE))))
    course.nbgrader("autograde", LAB, "--force", "--student", "bsmith", cwd=c)

    course.nbgrader("generate_feedback", LAB, cwd=c)  # nbgrader alone keeps the old feedback
    assert f"Score: 0.0 / {total}" in feedback.read_text()
    assert run_command(["feedback", LAB, "--student", "bsmith", "--course", str(c)]) == 0
    assert f"Score: {earned} / {total}" in feedback.read_text()
    assert (feedback.parent / "mathjax" / "tex-svg.js").is_file()
