"""The instructor's report of one lab: ``python -m qlib.grading.course report LAB``.

One self-contained HTML page (figures embedded as PNG, no external link) that
answers the questions an instructor has after grading:

* how did the class do: submissions graded, missing and crashed, mean and
  median score, pass rate, and a histogram of the scores;
* which questions were hard: the pass rate of each autograded test cell, and
  the most frequent failure hints of each (numbers are masked before counting,
  so one mistake made on different values counts once);
* what went wrong in grading: time per submission, and every submission that
  crashed, timed out or killed its kernel;
* what is left for a person: answers nbgrader marks ``needs_manual_grade``, with each written
  answer's rubric from the instructor's source notebook.

Sources, read only: nbgrader's gradebook (scores, roster, submission times),
the grading records (:mod:`qlib.grading.records`: outcome, seconds, each
failed check's message), and, for a submission graded without a record, the
error outputs of its autograded notebook.
"""
from __future__ import annotations

import base64
import io
import re
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import nbformat

from qlib.grading.records import RECORDS_DIRECTORY, GradingRecord, read_records
from qlib.grading.sealed import is_test_cell, nbgrader_metadata

TEMPLATES = Path(__file__).parent / "templates"
FAILURE_NAMES = ("GradingFailure", "GradingError", "TimeoutError", "DeadKernelError")
INCIDENT_NAMES = {"TimeoutError": "timed out", "DeadKernelError": "kernel died"}
INCIDENT_STATUSES = {"timeout": "timed out", "died": "kernel died"}


# --- what the report is made of ------------------------------------------------------------------------

@dataclass
class Question:
    """An autograded test cell and its points."""

    grade_id: str
    points: float


@dataclass
class Incident:
    """A submission whose grading crashed, or one of its cells that timed out or killed the kernel."""

    student: str
    what: str  # "grading crashed", "not graded", "timed out", "kernel died"
    where: str  # the cell, or "" for the whole submission
    detail: str


@dataclass
class Submission:
    """One student's submission: its scores (gradebook) and what happened while grading it."""

    student: str
    submitted_at: datetime | None = None
    late: bool = False
    scores: dict[str, float | None] = field(default_factory=dict)  # grade_id -> score (None: never scored)
    manual: list[str] = field(default_factory=list)  # grade_ids that need a person
    record: GradingRecord | None = None
    failures: dict[str, str] = field(default_factory=dict)  # grade_id -> failure message
    incidents: list[Incident] = field(default_factory=list)

    @property
    def crashed(self) -> bool:
        return any(i.what in ("grading crashed", "not graded") for i in self.incidents)

    @property
    def total(self) -> float:
        return sum(s or 0.0 for s in self.scores.values())


@dataclass
class Lab:
    """Everything the report shows about one lab, read from the course directory."""

    name: str
    questions: list[Question]
    max_score: float
    roster: list[str]
    submissions: dict[str, Submission]

    @property
    def graded(self) -> list[Submission]:
        return [s for s in self.submissions.values() if not s.crashed]

    @property
    def missing(self) -> list[str]:
        return [s for s in self.roster if s not in self.submissions]


# --- reading the gradebook ----------------------------------------------------------------------------

def _is_test_cell(grade_cell, solution_names: set[str]) -> bool:
    """An autograded test cell: a code grade cell that is not also an answer."""
    return grade_cell.cell_type == "code" and grade_cell.name not in solution_names


def _gradebook_questions(assignment) -> tuple[list[Question], float]:
    questions, max_score = [], 0.0
    for notebook in assignment.notebooks:
        solutions = {c.name for c in notebook.solution_cells}
        for cell in notebook.grade_cells:
            max_score += cell.max_score
            if _is_test_cell(cell, solutions):
                questions.append(Question(cell.name, cell.max_score))
    return questions, max_score


def _gradebook_submission(submitted) -> Submission:
    sub = Submission(submitted.student.id, submitted.timestamp, submitted.total_seconds_late > 0)
    for notebook in submitted.notebooks:
        for grade in notebook.grades:
            scored = grade.auto_score is not None or grade.manual_score is not None
            sub.scores[grade.name] = grade.score if scored else None
            if grade.needs_manual_grade:
                sub.manual.append(grade.name)
    return sub


def read_gradebook(course: Path, lab: str) -> Lab:
    """The lab's questions, roster and submissions with their scores, from ``gradebook.db``."""
    from nbgrader.api import Gradebook, MissingEntry

    path = course / "gradebook.db"
    if not path.exists():
        raise FileNotFoundError(f"no gradebook at {path}: is {course} the course directory?")
    with Gradebook(f"sqlite:///{path}") as gb:
        try:
            assignment = gb.find_assignment(lab)
        except MissingEntry:
            raise LookupError(f"{lab} is not in the gradebook {path}: has it been autograded?") from None
        questions, max_score = _gradebook_questions(assignment)
        roster = sorted(s.id for s in gb.students)
        submissions = {s.student.id: _gradebook_submission(s) for s in gb.assignment_submissions(lab)}
    return Lab(lab, questions, max_score, roster, submissions)


# --- what happened while grading: records, or the autograded notebook -----------------------------------

def _cell_name(grade_id: str | None, kind: str) -> str:
    return grade_id or ("a cell the student added" if kind == "student" else "an unnamed cell")


def apply_record(sub: Submission, record: GradingRecord) -> None:
    """Failures and incidents of ``sub`` as its grading record tells them."""
    sub.record = record
    if record.outcome == "crashed":
        sub.incidents.append(Incident(sub.student, "grading crashed", "", record.error))
    for cell in record.cells:
        if cell.kind == "test" and cell.status == "failed" and cell.message:
            sub.failures[cell.grade_id] = cell.message
        if cell.status in INCIDENT_STATUSES:
            sub.incidents.append(Incident(sub.student, INCIDENT_STATUSES[cell.status],
                                          _cell_name(cell.grade_id, cell.kind), cell.message))


def _errors(cell) -> list[tuple[str, str]]:
    return [(o.get("ename", ""), str(o.get("evalue", ""))) for o in cell.get("outputs", [])
            if o.get("output_type") == "error"]


def apply_notebook(sub: Submission, nb: nbformat.NotebookNode) -> None:
    """Failures and incidents of ``sub`` read from the error outputs of its autograded notebook."""
    for cell in (c for c in nb.cells if c.cell_type == "code"):
        meta, is_test = nbgrader_metadata(cell), is_test_cell(cell)
        for ename, evalue in _errors(cell):
            if is_test and ename in FAILURE_NAMES:
                sub.failures.setdefault(meta["grade_id"], f"{ename}: {evalue}")
            if ename in INCIDENT_NAMES:
                where = _cell_name(meta.get("grade_id"), "solution" if meta else "student")
                sub.incidents.append(Incident(sub.student, INCIDENT_NAMES[ename], where, f"{ename}: {evalue}"))


def autograded_notebooks(course: Path, lab: str, student: str) -> list[Path]:
    return sorted((course / "autograded" / student / lab).glob("*.ipynb"))


def add_grading_details(lab: Lab, course: Path) -> None:
    """Attach each submission's record (or, without one, its autograded notebook's errors)."""
    for student, record in read_records(course, lab.name).items():
        lab.submissions.setdefault(student, Submission(student)).record = record
    for sub in lab.submissions.values():
        if sub.record is not None:
            apply_record(sub, sub.record)
        else:
            for path in autograded_notebooks(course, lab.name, sub.student):
                apply_notebook(sub, nbformat.read(path, as_version=4))
        tested = [sub.scores.get(q.grade_id) for q in lab.questions]
        if not sub.crashed and all(s is None for s in tested):
            sub.incidents.append(Incident(sub.student, "not graded", "",
                                          "the gradebook holds no autograded score for this submission"))


def read_lab(course: Path | str, lab: str) -> Lab:
    """Everything the report shows, read from the course directory ``course``."""
    course = Path(course)
    data = read_gradebook(course, lab)
    add_grading_details(data, course)
    return data


# --- the numbers ---------------------------------------------------------------------------------------

NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
NUMBER_RUN = re.compile(r"#(?:[\s,;]*#)*")


ERROR_NAME = re.compile(r"^(?:%s): " % "|".join(FAILURE_NAMES))


def hint_of(message: str) -> str:
    """The hint of a failure message (what follows its last "Hint:"), or the whole message."""
    text = ERROR_NAME.sub("", " ".join(message.split()))
    _, found, hint = text.rpartition("Hint:")
    return hint.strip() if found else text


def mistake_key(message: str) -> str:
    """The hint with every number masked: the same mistake on other values gives the same key."""
    return NUMBER_RUN.sub("#", NUMBER.sub("#", hint_of(message)))


def passed(sub: Submission, question: Question) -> bool:
    """Full points on the question (nbgrader gives partial points only when a test prints a number)."""
    score = sub.scores.get(question.grade_id)
    return score is not None and score >= question.points


def summary(lab: Lab, pass_mark: float) -> dict:
    graded = lab.graded
    totals = [s.total for s in graded]
    times = [s.submitted_at for s in lab.submissions.values() if s.submitted_at]
    return {
        "roster": len(lab.roster), "received": len(lab.submissions), "graded": len(graded),
        "crashed": sum(s.crashed for s in lab.submissions.values()), "missing": lab.missing,
        "interrupted": sum(bool(s.incidents) for s in graded),
        "without_record": sorted(s.student for s in lab.submissions.values() if s.record is None),
        "late": sum(s.late for s in lab.submissions.values()),
        "first": min(times, default=None), "last": max(times, default=None),
        "max_score": lab.max_score, "pass_points": pass_mark * lab.max_score, "pass_mark": pass_mark,
        "mean": statistics.fmean(totals) if totals else None,
        "median": statistics.median(totals) if totals else None,
        "passed": sum(t >= pass_mark * lab.max_score for t in totals),
    }


@dataclass
class Mistake:
    """One frequent failure of a question: its hint, how many submissions, one example message."""

    hint: str
    count: int
    example: str  # a whole message ("" when the hint is the whole message)
    student: str


@dataclass
class QuestionStats:
    question: Question
    passed: int
    graded: int
    mistakes: list[Mistake]
    other_failures: int  # failures beyond the listed mistakes
    unexplained: int  # failures without a message (no record, no autograded notebook)

    @property
    def rate(self) -> float:
        return self.passed / self.graded if self.graded else 0.0


def _mistake(messages: list[tuple[str, str]]) -> Mistake:
    """One mistake made by several submissions: its hint, numbers shown as "…" where they differ."""
    hints = {hint_of(m) for _, m in messages}
    hint = hints.pop() if len(hints) == 1 else NUMBER_RUN.sub("…", NUMBER.sub("#", hint_of(messages[0][1])))
    student, example = messages[0]
    return Mistake(hint, len(messages), example if "Hint:" in example else "", student)


def question_stats(lab: Lab, question: Question, top: int = 5) -> QuestionStats:
    graded = lab.graded
    failed = [s for s in graded if not passed(s, question)]
    groups: dict[str, list[tuple[str, str]]] = {}
    for sub in (s for s in failed if question.grade_id in s.failures):
        message = sub.failures[question.grade_id]
        groups.setdefault(mistake_key(message), []).append((sub.student, message))
    ranked = sorted(groups.values(), key=len, reverse=True)
    explained = sum(len(g) for g in ranked)
    mistakes = [_mistake(g) for g in ranked[:top]]
    return QuestionStats(question, len(graded) - len(failed), len(graded), mistakes,
                         explained - sum(m.count for m in mistakes), len(failed) - explained)


def slowest(lab: Lab, n: int = 5) -> list[GradingRecord]:
    timed = [s.record for s in lab.submissions.values() if s.record is not None]
    return sorted(timed, key=lambda r: r.seconds, reverse=True)[:n]


def incidents(lab: Lab) -> list[dict]:
    rows = []
    for sub in sorted(lab.submissions.values(), key=lambda s: s.student):
        for incident in sub.incidents:
            rows.append({"incident": incident, "score": None if sub.crashed else sub.total,
                         "seconds": sub.record.seconds if sub.record else None})
    return rows


def manual_answers(lab: Lab) -> list[tuple[str, str]]:
    """(student, grade_id) of every answer of a graded submission that nbgrader leaves to a person."""
    return [(s.student, g) for s in sorted(lab.graded, key=lambda s: s.student) for g in s.manual]


def rubrics(course: Path, lab: Lab, grade_ids) -> dict[str, str]:
    """grade_id -> the rubric of each written answer in ``grade_ids``, from the instructor's source notebook.

    A written answer's source cell holds a model answer and a paragraph that starts ``**Rubric``;
    the rubric runs from there to the end of the cell. Empty when the source notebook is not there.
    """
    path = course / "solutions" / lab.name / f"{lab.name}.ipynb"
    if not path.exists():
        return {}
    found = {}
    for cell in nbformat.read(path, as_version=4).cells:
        grade_id = nbgrader_metadata(cell).get("grade_id")
        if grade_id in grade_ids and "**Rubric" in cell.source:
            found[grade_id] = cell.source[cell.source.index("**Rubric"):].strip()
    return found


# --- figures -------------------------------------------------------------------------------------------

INK, ACCENT, PASS, FAIL, MUTED = "#1f2933", "#3b6ea8", "#4c9a6a", "#c8553d", "#9aa5b1"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
                         "axes.edgecolor": MUTED, "axes.labelcolor": INK, "xtick.color": INK,
                         "ytick.color": INK, "axes.titlesize": 10, "svg.fonttype": "none"})
    return plt


def png_data_uri(fig) -> str:
    """``fig`` as a ``data:image/png;base64,...`` URI (the page needs no other file)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=150, bbox_inches="tight", facecolor="white")
    _pyplot().close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def score_histogram(totals: list[float], max_score: float, pass_points: float) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 2.2))
    width = max(1.0, max_score / 24)
    edges = [i * width for i in range(int(max_score / width) + 2)]
    ax.hist(totals, bins=edges, color=ACCENT, edgecolor="white", align="left" if width == 1 else "mid")
    ax.axvline(pass_points, color=FAIL, linestyle="--", linewidth=1)
    ax.annotate(f"pass mark {pass_points:g}", (pass_points, 1), xycoords=("data", "axes fraction"),
                xytext=(4, -10), textcoords="offset points", color=FAIL, fontsize=8)
    ax.set(xlabel=f"score (points out of {max_score:g})", ylabel="submissions", xlim=(-width, max_score + width))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.yaxis.get_major_locator().set_params(integer=True)
    return png_data_uri(fig)


def pass_rate_chart(stats: list[QuestionStats]) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.42 * len(stats) + 0.8))
    labels = [f"{s.question.grade_id} ({s.question.points:g} pt)" for s in stats]
    rates = [100 * s.rate for s in stats]
    ax.barh(labels, [100] * len(stats), color="#eef1f4")
    ax.barh(labels, rates, color=[PASS if r >= 50 else FAIL for r in rates])
    for y, s in enumerate(stats):
        ax.text(101, y, f"{100 * s.rate:.0f}%  ({s.passed}/{s.graded})", va="center", fontsize=8, color=INK)
    ax.set(xlim=(0, 125), xlabel="submissions with full points (%)")
    ax.set_xticks([0, 25, 50, 75, 100])
    ax.spines["bottom"].set_bounds(0, 100)
    ax.invert_yaxis()
    return png_data_uri(fig)


def grading_time_chart(records: list[GradingRecord]) -> str:
    plt = _pyplot()
    ranked = sorted(records, key=lambda r: r.seconds, reverse=True)
    fig, ax = plt.subplots(figsize=(7, 2.4))
    x = range(len(ranked))
    ax.bar(x, [r.execute_seconds for r in ranked], color=ACCENT, label="running the cells")
    ax.bar(x, [max(r.seconds - r.execute_seconds, 0) for r in ranked],
           bottom=[r.execute_seconds for r in ranked], color=MUTED, label="the rest of grading")
    ax.axhline(statistics.median(r.seconds for r in ranked), color=INK, linewidth=0.8, linestyle=":")
    if len(ranked) <= 30:
        ax.set_xticks(list(x), [r.student for r in ranked], rotation=60, ha="right", fontsize=7)
    else:
        ax.set_xticks([])
        ax.set_xlabel("submissions, slowest first")
    ax.set_ylabel("seconds")
    ax.legend(frameon=False, fontsize=8)
    return png_data_uri(fig)


# --- the page ------------------------------------------------------------------------------------------

def context(lab: Lab, course: Path, pass_mark: float) -> dict:
    """Every value the template shows."""
    stats = [question_stats(lab, q) for q in lab.questions]
    records = [s.record for s in lab.submissions.values() if s.record is not None]
    head = summary(lab, pass_mark)
    return {
        "lab": lab.name, "course": course.resolve(), "summary": head, "questions": stats,
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "histogram": score_histogram([s.total for s in lab.graded], lab.max_score, head["pass_points"])
        if lab.graded else None,
        "pass_chart": pass_rate_chart(stats) if stats and lab.graded else None,
        "time_chart": grading_time_chart(records) if records else None,
        "slowest": slowest(lab), "median_seconds": statistics.median(r.seconds for r in records) if records else None,
        "incidents": incidents(lab), "manual": manual_answers(lab),
        "rubrics": rubrics(course, lab, {cell for _, cell in manual_answers(lab)}),
        "records_dir": f"{RECORDS_DIRECTORY}/{lab.name}",
    }


def render(values: dict) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html.j2").render(**values)


def write_report(course_root: Path | str, lab: str, out: Path | str | None = None, pass_mark: float = 0.5) -> Path:
    """Write the report of ``lab`` (default ``<course_root>/reports/<lab>.html``); returns its path.

    ``pass_mark`` is the share of the lab's points a submission needs to pass.
    """
    course = Path(course_root)
    out = Path(out) if out is not None else course / "reports" / f"{lab}.html"
    html = render(context(read_lab(course, lab), course, pass_mark))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    return out


def register(commands) -> None:
    cmd = commands.add_parser("report", help="the instructor's HTML report of one lab",
                              description=__doc__.split("\n\n")[0])
    cmd.add_argument("lab", help="the lab, e.g. lab03_linear_quantization")
    cmd.add_argument("-o", "--output", type=Path, default=None,
                     help="the HTML file to write (default: reports/LAB.html in the course directory)")
    cmd.add_argument("--course", type=Path, default=Path("."), help="course directory (default: here)")
    cmd.add_argument("--pass-mark", type=float, default=0.5,
                     help="share of the lab's points needed to pass (default 0.5)")
    cmd.set_defaults(run=_run)


def _run(args) -> int:
    try:
        path = write_report(args.course, args.lab, args.output, args.pass_mark)
    except (FileNotFoundError, LookupError) as err:
        print(f"report: {err}")
        return 1
    print(f"{args.lab}: report written to {path}")
    return 0
