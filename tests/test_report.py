"""The instructor's report of one lab (qlib/grading/report.py), on a small course made by hand.

The course: a gradebook filled through nbgrader's API, grading records written
with qlib.grading.records, and one autograded notebook for the student graded
without a record. Every number the tests expect is worked out below from those
data, not from the report's code. The page is then opened in headless Chromium.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest
from bs4 import BeautifulSoup

from qlib.grading import course as course_cli
from qlib.grading import report
from qlib.grading.records import CellRecord, GradingRecord, write_record

LAB = "lab99_made_up"
CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")  # nbgrader's add_submission

# (grade_id, points, cell type); "explain" is a written answer that a person grades.
CELLS = [("test_range", 2, "code"), ("test_scale", 3, "code"), ("test_quantize", 5, "code"), ("explain", 2, "markdown")]
SIGN = "Hint: the zero point has the wrong sign: Z = round(qmin - rmin / scale)."
MESSAGES = {
    ("ben", "test_scale"): f"GradingFailure: asymmetric_qparams(-1.0, 3.0, qmin=-128, qmax=127): expected "
                           f"zero_point -64, got 64. {SIGN}",
    ("cy", "test_scale"): f"GradingFailure: asymmetric_qparams(-2.5, 0.5, qmin=0, qmax=255): expected "
                          f"zero_point 213, got -213. {SIGN}",
    ("cy", "test_quantize"): "GradingFailure: quantize: x = 0.5 should give 0, got 1. "
                             "Hint: x = 0.5 lies halfway between 0 and 1: round half to even, not up.",
    ("dee", "test_quantize"): "GradingFailure: quantize: x = -2.5 should give -2, got -3. "
                              "Hint: x = -2.5 lies halfway between -3 and -2: round half to even, not up.",
    ("gil", "test_quantize"): "GradingError: the grader could not check this answer (TypeError). Check the "
                              "type and shape of what your function returns.",
}
RANGE_FAILURE = "integer_range(8, signed=False): expected (0, 255), got (0, 256). Hint: qmax = 2**bits - 1."

# student -> (scores of the three tests, written answer: "manual" or 0 (left blank), timestamp, record seconds)
STUDENTS = {
    "ada": ((2, 3, 5), "manual", "2025-03-01 10:00:00", 10.0),
    "ben": ((2, 0, 5), "manual", "2025-03-01 11:00:00", 12.0),
    "cy": ((2, 0, 0), 0, "2025-03-01 12:00:00", 15.0),
    "dee": ((2, 3, 0), 0, "2025-03-02 09:00:00", 130.0),  # late; its answer cell "quantize" timed out
    "eli": (None, None, "2025-03-01 13:00:00", 3.0),  # grading crashed: no score at all
    "fin": ((0, 2.5, 5), 0, "2025-03-01 14:00:00", None),  # graded before records existed; partial points
    "gil": ((2, 3, 0), 0, "2025-03-01 15:00:00", 40.0),  # its kernel died in "dequantize"
}
ROSTER = sorted(STUDENTS) + ["hal"]  # hal never submitted

# Worked out by hand. Lab total 2 + 3 + 5 + 2 = 12 points; graded: ada 10, ben 7, cy 2, dee 5, fin 7.5, gil 5.
GRADED, MISSING, CRASHED, INTERRUPTED, LATE = 6, 1, 1, 3, 1  # interrupted: dee, fin (timeouts), gil (died)
MEAN, MEDIAN = "6.08", "6"  # 36.5 / 6; (5 + 7) / 2
PASSED = 3  # at least 6 points (50%): ada, ben, fin
RATES = {"test_range": "83%", "test_scale": "50%", "test_quantize": "50%"}  # 5/6, 3/6 (fin's 2.5 of 3 fails), 3/6
HINT_COUNTS = {"test_range": [1], "test_scale": [2], "test_quantize": [2, 1]}


# --- the course --------------------------------------------------------------------------------------

def fill_gradebook(course: Path) -> None:
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        gb.add_assignment(LAB, duedate="2025-03-01 23:59:00")
        gb.add_notebook(LAB, LAB)
        gb.add_solution_cell("explain", LAB, LAB)
        for name, points, kind in CELLS:
            gb.add_grade_cell(name, LAB, LAB, max_score=points, cell_type=kind)
        for student in ROSTER:
            gb.add_student(student)
        for student, (tests, written, stamp, _) in STUDENTS.items():
            gb.add_submission(LAB, student, timestamp=stamp)
            if tests is None:
                continue  # crashed: the grades stay as nbgrader creates them (no score)
            for (name, _, _), score in zip(CELLS, [*tests, written]):
                grade = gb.find_grade(name, LAB, LAB, student)
                grade.auto_score = None if score == "manual" else score
                grade.needs_manual_grade = score == "manual"
        gb.db.commit()


def write_records(course: Path) -> None:
    for student, (tests, _, _, seconds) in STUDENTS.items():
        if seconds is None:
            continue
        rec = GradingRecord(LAB, student, LAB, "graded" if tests else "crashed", seconds, seconds * 0.8,
                            worker="grader-1")
        if tests is None:
            rec.error = "SandboxUnavailable: bwrap is not installed"
        for (name, _, kind), score in zip(CELLS, tests or ()):
            failed = score == 0
            rec.cells.append(CellRecord(name, "test", "failed" if failed else "passed", 0.1,
                                        MESSAGES.get((student, name), "") if failed else ""))
        if student == "dee":
            rec.cells.insert(2, CellRecord("quantize", "solution", "timeout", 120.0, "TimeoutError: stopped"))
        if student == "gil":
            rec.cells.insert(2, CellRecord("dequantize", "solution", "died", 1.0, "DeadKernelError: stopped"))
        write_record(course, rec)


def write_autograded_notebook(course: Path) -> None:
    """fin's autograded notebook: its answer cell timed out, so its test cell failed."""
    def error(ename, evalue):
        return nbformat.v4.new_output("error", ename=ename, evalue=evalue, traceback=[])

    answer = nbformat.v4.new_code_cell("def integer_range(bits, signed=True): ...", outputs=[
        error("TimeoutError", "This cell did not finish within 120 s and was stopped.")])
    answer.metadata["nbgrader"] = {"grade": False, "solution": True, "locked": False, "grade_id": "integer_range"}
    test = nbformat.v4.new_code_cell("grader.check_integer_range(integer_range)",
                                     outputs=[error("GradingFailure", RANGE_FAILURE)])
    test.metadata["nbgrader"] = {"grade": True, "solution": False, "locked": True, "grade_id": "test_range",
                                 "points": 2}
    path = course / "autograded" / "fin" / LAB / f"{LAB}.ipynb"
    path.parent.mkdir(parents=True)
    nbformat.write(nbformat.v4.new_notebook(cells=[answer, test]), path)


RUBRIC = "**Rubric (2 points).** 1 point: says the range is widened to contain 0. 1 point: says why."


def write_source_notebook(course: Path) -> None:
    """The instructor's source notebook, whose written answer holds a model answer and its rubric."""
    answer = nbformat.v4.new_markdown_cell(f"The range must contain 0 because ...\n\n{RUBRIC}")
    answer.metadata["nbgrader"] = {"grade": True, "solution": True, "locked": False, "grade_id": "explain",
                                   "points": 2}
    path = course / "solutions" / LAB / f"{LAB}.ipynb"
    path.parent.mkdir(parents=True)
    nbformat.write(nbformat.v4.new_notebook(cells=[answer]), path)


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("course")
    fill_gradebook(root)
    write_records(root)
    write_autograded_notebook(root)
    write_source_notebook(root)
    return root


@pytest.fixture(scope="module")
def page(course) -> Path:
    """The report, made through the instructor's command line."""
    out = course / "reports" / "lab.html"
    assert course_cli.main(["report", LAB, "--course", str(course), "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def soup(page) -> BeautifulSoup:
    return BeautifulSoup(page.read_text(), "html.parser")


def text(node) -> str:
    return " ".join(node.get_text(" ").split())


# --- the numbers -------------------------------------------------------------------------------------

def test_summary_counts_and_scores(soup):
    values = {key: text(soup.find(id=key)).split()[0] for key in
              ("graded", "missing", "crashed", "interrupted", "mean", "median", "pass-rate", "late")}
    assert values == {"graded": str(GRADED), "missing": str(MISSING), "crashed": str(CRASHED),
                      "interrupted": str(INTERRUPTED), "mean": MEAN, "median": MEDIAN,
                      "pass-rate": "50%", "late": str(LATE)}
    assert f"{PASSED} of {GRADED}" in text(soup.find(id="pass-rate"))
    summary = text(soup.find(id="summary"))
    assert "no submission): hal." in summary
    assert "Graded without a grading record: fin." in summary


def test_pass_mark_is_a_share_of_the_points(course):
    lab = report.read_lab(course, LAB)
    assert report.summary(lab, 0.75)["passed"] == 1  # 9 of 12 points: ada only
    assert report.summary(lab, 7 / 12)["passed"] == 3  # 7 points: ada, ben (exactly 7), fin
    assert report.summary(lab, 0.0)["passed"] == GRADED


def test_pass_rate_of_each_question(soup):
    rates = {span["data-question"]: span.get_text(strip=True) for span in soup.select("span.rate")}
    assert rates == RATES


def test_hints_are_counted_once_per_mistake_whatever_the_numbers(soup):
    counts = {}
    for row in soup.select("table.mistakes tr[data-question]"):
        counts.setdefault(row["data-question"], []).append(int(text(row.select_one("td.count"))))
    assert counts == HINT_COUNTS
    hints = [text(h) for h in soup.select("#questions .hint")]
    assert "the zero point has the wrong sign: Z = round(qmin - rmin / scale)." in hints
    assert "qmax = 2**bits - 1." in hints  # from fin's autograded notebook: fin has no record
    assert any(h.startswith("the grader could not check this answer (TypeError)") for h in hints)
    assert "x = … lies halfway between … and …: round half to even, not up." in hints  # numbers that differ


def test_mistake_key_masks_numbers_only():
    a = report.mistake_key(MESSAGES[("cy", "test_quantize")])
    assert a == report.mistake_key(MESSAGES[("dee", "test_quantize")])
    assert a != report.mistake_key("Hint: x = 0.5 lies halfway between 0 and 1: round half away from zero.")
    assert report.mistake_key("Hint: use int8 and float32, not [1, 2, 3]") == "use int8 and float32, not [#]"


def test_incidents_table(soup):
    rows = [[text(td) for td in tr.find_all("td")] for tr in soup.select("tr.incident")]
    assert sorted((r[0], r[1], r[2]) for r in rows) == [
        ("dee", "timed out", "quantize"), ("eli", "grading crashed", "whole submission"),
        ("fin", "timed out", "integer_range"), ("gil", "kernel died", "dequantize")]
    crashed = next(r for r in rows if r[0] == "eli")
    assert "bwrap is not installed" in crashed[3] and crashed[4] == "needs a person"


def test_slowest_submissions_and_manual_answers(soup):
    slowest = [[text(td) for td in tr.find_all("td")] for tr in soup.select("#slowest tr")[1:]]
    assert [r[0] for r in slowest] == ["dee", "gil", "cy", "ben", "ada"]
    assert slowest[0][1:3] == ["130.0", "104.0"]
    manual = [tuple(text(td) for td in tr.find_all("td")) for tr in soup.select("tr.manual")]
    assert manual == [("ada", "explain"), ("ben", "explain")]  # eli crashed: listed with the crashes instead
    # the rubric to grade them by, from the source notebook, without the model answer
    assert [text(div) for div in soup.select("div.rubric")] == [f"explain {RUBRIC}"]


def test_page_is_self_contained(page, soup):
    html = page.read_text()
    assert "http://" not in html and "https://" not in html
    sources = [tag.get("src") or tag.get("href") for tag in soup.find_all(["img", "script", "link", "a"])]
    assert len(sources) == 3 and all(s.startswith("data:image/png;base64,") for s in sources)


def test_works_from_the_gradebook_alone(course, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(course / "gradebook.db", bare / "gradebook.db")
    soup = BeautifulSoup(report.write_report(bare, LAB, bare / "r.html").read_text(), "html.parser")
    # eli has no score at all: not graded, record or not; the numbers stay those of the gradebook
    assert [text(soup.find(id=k)).split()[0] for k in ("graded", "crashed", "mean")] == [str(GRADED), "1", MEAN]
    assert {s["data-question"]: s.get_text(strip=True) for s in soup.select("span.rate")} == RATES
    assert "No grading record under" in text(soup.find(id="time"))
    assert "1 failure without a failure message" in text(soup.find(id="q-test_range").find_next("p"))
    assert not soup.select("table.mistakes")


def test_command_line_says_what_is_missing(tmp_path, capsys):
    assert course_cli.main(["report", LAB, "--course", str(tmp_path)]) == 1
    assert "no gradebook" in capsys.readouterr().out


# --- the page in a browser ---------------------------------------------------------------------------

def chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: the report's rendering test needs it (apt-get install chromium)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp / 'profile'}"]
    return subprocess.run([str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=60)


PROBE = """<script>addEventListener('load', () => {
  const whole = [...document.images].filter(img => {
    if (!img.complete || !img.naturalWidth) return false;
    const canvas = Object.assign(document.createElement('canvas'), {width: img.naturalWidth, height: img.naturalHeight});
    const g = canvas.getContext('2d');
    g.drawImage(img, 0, 0);
    const rgba = g.getImageData(0, 0, canvas.width, canvas.height).data;
    for (let k = 3; k < rgba.length; k += 4) if (rgba[k] !== 255) return false;
    return true;
  });
  document.body.setAttribute('data-decoded', whole.length + '/' + document.images.length);
});</script>"""


def test_page_renders_in_a_browser(page, tmp_path):
    # A copy of the page with a script that writes, once loaded, how many images decoded whole: drawn on a
    # canvas, every pixel is opaque (the figures have a white background; an undecoded part is transparent).
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = chromium("--virtual-time-budget=5000", "--dump-dom", probe.as_uri(), tmp=tmp_path).stdout
    assert 'data-decoded="3/3"' in dom, dom[:500]

    shot = tmp_path / "report.png"
    chromium(f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri(), tmp=tmp_path)
    assert shot.exists(), "Chromium wrote no screenshot"
    from PIL import Image

    grey = Image.open(shot).convert("L").resize((160, 300))
    inked = sum(grey.histogram()[:200]) / (160 * 300)
    assert 0.02 < inked < 0.6, f"the screenshot looks blank or wrong ({inked:.1%} of it is ink)"
    shutil.copy(shot, page.with_suffix(".png"))
