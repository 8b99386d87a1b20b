"""The round trip with a learning-management system (Canvas or Moodle) for a course run for credit.

``python -m qlib.grading.course COMMAND`` in the course directory (or with ``--course DIR``):

=============================================  ==================================================
``roster roster.csv``                          the class list into nbgrader's gradebook
``lms-collect LAB --lms canvas|moodle A.zip``  the LMS's download into ``submitted/``
``lms-export LAB --lms canvas|moodle``         a grades CSV the LMS imports
``feedback LAB [--student ID ...]``            feedback HTML, regenerated, with offline math
=============================================  ==================================================

**Identities.** The gradebook's student id is the course's; each student also keeps the id the LMS
knows them by in nbgrader's ``lms_user_id``: Canvas's numeric user ``ID`` (the number in its
download's file names and the key of its gradebook import), or for Moodle the email address (the
key its gradebook import maps on). A roster row whose LMS id is already in the gradebook updates
that student and keeps their course id; a new one gets ``SIS Login ID``, else ``SIS User ID``,
else ``canvas<ID>`` (Canvas), or ``Username``, else ``ID number``, else the email's local part
(Moodle).

**Downloads** (read from the LMSs' sources; the regular expressions are in ``nbgrader_config.py``
and nbgrader's ``zip_collect`` applies them through :class:`CanvasCollector` and
:class:`MoodleCollector`):

* Canvas, "Download Submissions" (``lib/content_zipper.rb``): one flat zip, a file per upload named
  ``<sortable name>[_LATE]_<user id>_<attachment id>_<file name>``, the name lower-cased without
  punctuation (``doejane``). A file uploaded again under the same name is stored as ``lab-1.ipynb``,
  ``lab-2.ipynb`` (``Attachment.make_unique_filename``). The zip holds each student's latest
  attempt and no submission time: the ``LATE`` mark is all it says about time.
* Moodle, "Download all submissions" (``mod/assign/classes/downloader.php``): a folder per student,
  ``<Full Name>_<participant id>_assignsubmission_file_/<file>`` (or, without folders, that prefix
  glued to the file name). The participant id is per assignment: only the assignment's grading
  worksheet ("Identifier" = ``Participant <id>``) says whose it is, and only the worksheet's
  "Last modified (submission)" says when. Given as ``--roster``, the worksheet maps ids exactly and
  dates the submissions; without it, folders are matched by full name against the roster and carry
  no time.

Of a student's notebooks the one named after the lab wins, then the latest (larger Canvas
attachment id, then larger ``-N`` or `` (N)`` copy number); it becomes
``submitted/<student>/<LAB>/<LAB>.ipynb``.
"""
from __future__ import annotations

import csv
import functools
import io
import os
import re
import shutil
import subprocess
import sys
import zipfile
import contextlib
from dataclasses import dataclass, field
from datetime import timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from jinja2 import DictLoader
from nbconvert.exporters import HTMLExporter
from nbgrader.api import Gradebook, MissingEntry
from nbgrader.plugins import FileNameCollectorPlugin
from traitlets import List, Unicode, default

LMS_NAMES = ("canvas", "moodle")


# ---------------------------------------------------------------------------------------------
# The roster
# ---------------------------------------------------------------------------------------------

# Columns each kind of class list must have (Canvas's gradebook importer needs the same three).
CANVAS_COLUMNS = ("Student", "ID", "Section")
MOODLE_COLUMNS = ("First name", "Last name", "Email address")  # "Surname" in Moodle before 3.x
WORKSHEET_COLUMNS = ("Identifier", "Full name", "Email address")


class RosterError(ValueError):
    """A class list this module cannot read; the message names the file and what is missing."""


@dataclass
class RosterEntry:
    """One student of a class list, as the LMS describes them."""

    lms_id: str
    first_name: str
    last_name: str
    email: str | None = None
    student_id: str = ""  # the course id to use for a student new to the gradebook
    participant: str | None = None  # Moodle grading worksheet: this assignment's participant id
    submitted: str | None = None  # Moodle grading worksheet: "Last modified (submission)"


def _safe_id(text: str) -> str:
    """A student id usable as a folder name: letters, digits and ``._@-``; others become ``_``."""
    return re.sub(r"[^A-Za-z0-9._@-]", "_", text.strip())


def read_roster(path: Path | str) -> tuple[str, list[RosterEntry]]:
    """``(kind, entries)`` of a class list; kind is ``canvas``, ``moodle`` or ``moodle-worksheet``.

    Canvas: the gradebook export (Grades, Export), with its ``Points Possible`` row and the
    ``Student, Test`` row of the student view skipped. Moodle: the participants page's download or
    a grades export (First name, Last name or Surname, Email address; rows whose Roles do not
    include Student skipped), or an assignment's grading worksheet.
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]

    def require(kind: str, columns: tuple[str, ...]) -> None:
        missing = [c for c in columns if c not in header]
        if missing:
            raise RosterError(f"{path}: read as a {kind}, but it has no column {', '.join(map(repr, missing))}")

    if "Student" in header or "ID" in header:
        require("Canvas gradebook export", CANVAS_COLUMNS)
        return "canvas", [_canvas_entry(r) for r in rows
                          if r["ID"] and "Points Possible" not in r["Student"] and r["Student"] != "Student, Test"]
    if "Identifier" in header:
        require("Moodle grading worksheet", WORKSHEET_COLUMNS)
        return "moodle-worksheet", [_worksheet_entry(r) for r in rows if r["Email address"]]
    if {"First name", "Last name", "Surname", "Email address"} & set(header):
        if "Surname" in header:
            rows = [dict(r, **{"Last name": r["Surname"]}) for r in rows]
            header = header + ["Last name"]
        require("Moodle participants or grades CSV", MOODLE_COLUMNS)
        return "moodle", [_moodle_entry(r) for r in rows
                          if r["Email address"] and ("Roles" not in r or "Student" in r["Roles"])]
    raise RosterError(
        f"{path}: neither a Canvas gradebook export (columns {', '.join(CANVAS_COLUMNS)}) nor a Moodle "
        f"participants or grades CSV (columns {', '.join(MOODLE_COLUMNS)}); its columns are {header}")


def _canvas_entry(r: dict) -> RosterEntry:
    last, _, first = r["Student"].partition(", ")  # Canvas's sortable name, "Last, First"
    course_id = r.get("SIS Login ID") or r.get("SIS User ID") or f"canvas{r['ID']}"
    return RosterEntry(lms_id=r["ID"], first_name=first, last_name=last, student_id=_safe_id(course_id))


def _moodle_entry(r: dict) -> RosterEntry:
    course_id = r.get("Username") or r.get("ID number") or r["Email address"].split("@")[0]
    return RosterEntry(lms_id=r["Email address"], first_name=r["First name"], last_name=r["Last name"],
                       email=r["Email address"], student_id=_safe_id(course_id))


def _worksheet_entry(r: dict) -> RosterEntry:
    first, _, last = r["Full name"].rpartition(" ")  # the worksheet has one name column
    participant = re.sub(r"\D", "", r["Identifier"])  # "Participant 1234567"
    submitted = r.get("Last modified (submission)", "")
    entry = _moodle_entry({"Email address": r["Email address"], "First name": first or last,
                           "Last name": last if first else "", "Username": r.get("Username", ""),
                           "ID number": r.get("ID number", "")})
    entry.participant = participant
    entry.submitted = None if submitted in ("", "-") else submitted
    return entry


def _gradebook(course: Path) -> Gradebook:
    return Gradebook(f"sqlite:///{Path(course).resolve() / 'gradebook.db'}")


def import_roster(course: Path | str, path: Path | str) -> tuple[str, list[RosterEntry]]:
    """Add or update every student of the class list in the gradebook; returns ``read_roster``'s value.

    A student is found by LMS id first (keeping the id the course already gave them), then by
    course id; each entry's ``student_id`` is set to the gradebook's.
    """
    kind, entries = read_roster(path)
    with _gradebook(Path(course)) as gb:
        by_lms = {s.lms_user_id: s.id for s in gb.students if s.lms_user_id}
        for e in entries:
            e.student_id = by_lms.get(e.lms_id, e.student_id)
        owners: dict[str, str] = {}
        for e in entries:
            if owners.setdefault(e.student_id, e.lms_id) != e.lms_id:
                raise RosterError(f"{path}: LMS ids {owners[e.student_id]} and {e.lms_id} would both be "
                                  f"student {e.student_id!r}; add them by hand (nbgrader db student add)")
        for e in entries:
            gb.update_or_create_student(e.student_id, first_name=e.first_name, last_name=e.last_name,
                                        email=e.email, lms_user_id=e.lms_id)
    return kind, entries


# ---------------------------------------------------------------------------------------------
# Collecting a download with nbgrader's zip_collect
# ---------------------------------------------------------------------------------------------

COPY_SUFFIX = re.compile(r"(?:-(\d+)| \((\d+)\))$")  # Canvas's "lab-2", Moodle's "lab (2)"


def _strip_copy_number(filename: str) -> tuple[str, int]:
    """``("lab.ipynb", 2)`` for ``lab-2.ipynb`` or ``lab (2).ipynb``; ``(filename, 0)`` otherwise."""
    stem, ext = os.path.splitext(filename)
    m = COPY_SUFFIX.search(stem)
    if not m:
        return filename, 0
    return stem[:m.start()] + ext, int(m.group(1) or m.group(2))


def _normal_name(name: str) -> str:
    return " ".join(name.casefold().split())


@dataclass
class Collected:
    """What ``lms-collect`` did with one student's download."""

    source: str
    late: bool = False
    timestamp: str | None = None
    renamed_from: str | None = None


@dataclass
class CollectReport:
    """Everything ``lms-collect`` found in a download."""

    lms: str
    collected: dict[str, Collected] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)  # files of nobody on the roster
    unmatched: list[str] = field(default_factory=list)  # notebooks whose name is not the LMS's format
    superseded: list[str] = field(default_factory=list)  # earlier copies of a kept notebook
    times_given: bool = False  # whether the LMS gave submission times


class LmsCollector(FileNameCollectorPlugin):
    """nbgrader's file-name collector, knowing an LMS's ids: maps them to students, keeps the latest.

    ``named_regexp`` (set per LMS in ``nbgrader_config.py``) names the LMS's id ``student_id`` and
    the uploaded file's name ``file_id``; ``name``, ``late`` and ``attachment`` are used when present.
    The whole download is planned on the first file nbgrader asks about, so that each student gets
    exactly one notebook, ``<LAB>.ipynb``; every other file is answered with None (skipped).
    """

    lms = ""
    worksheet = Unicode("", help="a Moodle grading worksheet: participant ids and submission times").tag(config=True)
    worksheet_tz = Unicode("UTC", help="time zone of the worksheet's times (its downloader's)").tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.report = CollectReport(self.lms)
        self._plan: dict[str, dict] | None = None

    def collect(self, submitted_file: str) -> dict | None:
        if self._plan is None:
            self._plan = self._make_plan()
        return self._plan.get(submitted_file)

    def _make_plan(self) -> dict[str, dict]:
        app = self.parent
        lab = app.coursedir.assignment_id
        root = Path(app._format_collect_path(app.extracted_directory))
        with Gradebook(app.coursedir.db_url) as gb:
            students = [(s.id, s.first_name or "", s.last_name or "", s.lms_user_id) for s in gb.students]
        who = self._identify(students)
        candidates: dict[str, list] = {}
        for path in sorted(str(p) for p in root.rglob("*") if p.is_file()):
            if os.path.splitext(path)[1] not in self.valid_ext:
                continue
            gd = self._match(path)
            if not gd:
                self.report.unmatched.append(path)
                continue
            student = who(gd)
            if student is None:
                self.report.unknown.append(path)
                continue
            name, copy = _strip_copy_number(gd["file_id"])
            rank = (name == f"{lab}.ipynb", int(gd.get("attachment") or 0), copy)
            candidates.setdefault(student, []).append((rank, path, gd, name))
        plan = {}
        for student, files in candidates.items():
            files.sort(key=lambda f: f[0])
            _, path, gd, name = files[-1]
            self.report.superseded += [f[1] for f in files[:-1]]
            info = {"student_id": student, "file_id": f"{lab}.ipynb"}
            stamp = self._timestamp(gd, student)
            if stamp:
                info["timestamp"] = stamp
            plan[path] = info
            self.report.collected[student] = Collected(
                path, late=bool(gd.get("late")), timestamp=stamp,
                renamed_from=None if name == f"{lab}.ipynb" else gd["file_id"])
        return plan

    def _identify(self, students):
        raise NotImplementedError

    def _timestamp(self, gd: dict, student: str) -> str | None:
        return None


class CanvasCollector(LmsCollector):
    """Canvas: ``student_id`` is the Canvas user id, the roster's ``lms_user_id``."""

    lms = "canvas"

    def _identify(self, students):
        by_id = {lms_id: sid for sid, _, _, lms_id in students if lms_id}
        return lambda gd: by_id.get(gd["student_id"])


class MoodleCollector(LmsCollector):
    """Moodle: ``student_id`` is the participant id; the worksheet maps it, else the folder's full name."""

    lms = "moodle"

    def _identify(self, students):
        by_email = {lms_id: sid for sid, _, _, lms_id in students if lms_id}
        self._sheet = {}
        if self.worksheet:
            kind, entries = read_roster(self.worksheet)
            if kind != "moodle-worksheet":
                raise RosterError(f"{self.worksheet}: not a Moodle grading worksheet")
            self._sheet = {e.participant: e for e in entries}
            self.report.times_given = True
        names: dict[str, list[str]] = {}
        for sid, first, last, _ in students:
            for full in {f"{first} {last}", f"{last} {first}"}:
                names.setdefault(_normal_name(full), []).append(sid)

        def who(gd):
            entry = self._sheet.get(gd["student_id"])
            if entry is not None:
                return by_email.get(entry.lms_id)
            found = set(names.get(_normal_name(gd.get("name") or ""), []))
            return found.pop() if len(found) == 1 else None  # two students of one name: nobody

        return who

    def _timestamp(self, gd, student):
        entry = self._sheet.get(gd["student_id"])
        if entry is None or not entry.submitted:
            return None
        import dateutil.parser

        when = dateutil.parser.parse(entry.submitted)  # e.g. "Monday, 4 March 2024, 2:15 PM"
        if when.tzinfo is None:
            when = when.replace(tzinfo=ZoneInfo(self.worksheet_tz))
        return when.astimezone(timezone.utc).isoformat(" ")


COLLECTORS = {"canvas": CanvasCollector, "moodle": MoodleCollector}


def collect(course: Path | str, lab: str, lms: str, archive: Path | str, roster: Path | str | None = None,
            tz: str = "UTC") -> CollectReport:
    """Unpack an LMS download into ``submitted/<student>/<lab>/<lab>.ipynb`` with ``nbgrader zip_collect``.

    The zip is copied to ``downloaded/<lab>/archive/`` (replacing an earlier download) and nbgrader
    extracts and collects it with :class:`CanvasCollector` or :class:`MoodleCollector`. A
    student's earlier ``submitted/`` folder is replaced; ``timestamp.txt`` is written only when the
    LMS gives a time. ``roster``, when given, is imported first (a Moodle grading worksheet is also
    used to map participant ids and times).
    """
    from nbgrader.apps import ZipCollectApp

    course = Path(course).resolve()
    if lms not in COLLECTORS:
        raise ValueError(f"unknown LMS {lms!r}: expected one of {', '.join(LMS_NAMES)}")
    if not zipfile.is_zipfile(archive):
        raise ValueError(f"{archive}: not a zip file")
    argv = [lab, f"--collector=qlib.grading.lms.{COLLECTORS[lms].__name__}", "--force", "--log-level=WARN"]
    if roster is not None:
        kind, _ = import_roster(course, roster)
        if kind == "moodle-worksheet" and lms == "moodle":
            argv += [f"--MoodleCollector.worksheet={Path(roster).resolve()}", f"--MoodleCollector.worksheet_tz={tz}"]
    incoming = course / "downloaded" / lab / "archive"
    shutil.rmtree(incoming, ignore_errors=True)
    incoming.mkdir(parents=True)
    shutil.copy(archive, incoming / Path(archive).name)
    with contextlib.chdir(course):
        app = ZipCollectApp()
        try:
            app.initialize(argv)
            app.start()
        except SystemExit as err:  # nbgrader's fail(): the reason is in its log
            raise RuntimeError(f"nbgrader zip_collect {lab} failed (exit {err.code}); see the messages above") from None
        return app.collector_plugin_inst.report


# ---------------------------------------------------------------------------------------------
# Grades for the LMS
# ---------------------------------------------------------------------------------------------

def _question_order(course: Path, lab: str, names: set[str]) -> list[str]:
    """The graded cells' grade ids in the order of the lab's source notebook (by name if it is absent)."""
    import nbformat
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config import PyFileConfigLoader

    with contextlib.chdir(course):
        config = PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config()
    cd = CourseDirectory(config=config, root=str(course))
    try:
        nb = nbformat.read(Path(cd.format_path(cd.source_directory, ".", lab)) / f"{lab}.ipynb", as_version=4)
        order = [c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells]
    except OSError:
        order = []
    known = [g for g in order if g in names]
    return known + sorted(names - set(known))


def _fmt(x: float) -> str:
    return f"{x:g}"


def grade_rows(course: Path | str, lab: str) -> tuple[list[tuple[str, float]], float, list[dict]]:
    """``(questions, max_total, rows)`` of a lab, read from the gradebook.

    ``questions`` is ``[(grade_id, points)]``; each row has the student's ``id``, names, ``email``,
    ``lms_id``, ``status`` (``graded``; ``ungraded``: in ``submitted/`` but not graded yet;
    ``missing``: no submission), ``scores`` ``{grade_id: points}`` and ``total`` (after nbgrader's
    late penalty; None unless graded) and ``submitted`` (ISO 8601 UTC, or None).
    """
    course = Path(course).resolve()
    with _gradebook(course) as gb:
        assignment = gb.find_assignment(lab)
        points = {c.name: c.max_score for nb in assignment.notebooks for c in nb.grade_cells}
        questions = [(g, points[g]) for g in _question_order(course, lab, set(points))]
        rows = []
        by_name = lambda s: ((s.last_name or "").casefold(), (s.first_name or "").casefold(), s.id)  # noqa: E731
        for s in sorted(gb.students, key=by_name):
            row = dict(id=s.id, first_name=s.first_name or "", last_name=s.last_name or "", email=s.email or "",
                       lms_id=s.lms_user_id or "", scores={}, total=None, submitted=None)
            try:
                sub = gb.find_submission(lab, s.id)
            except MissingEntry:
                handed_in = (course / "submitted" / s.id / lab / f"{lab}.ipynb").exists()
                row["status"] = "ungraded" if handed_in else "missing"
            else:
                row["status"] = "graded"
                row["scores"] = {g.name: g.score for nb in sub.notebooks for g in nb.grades}
                row["total"] = max(0.0, sub.score - (sub.late_submission_penalty or 0.0))
                if sub.timestamp is not None:
                    row["submitted"] = sub.timestamp.replace(tzinfo=timezone.utc).isoformat().replace("+00:00", "Z")
            rows.append(row)
        return questions, assignment.max_score, rows


def export_grades(course: Path | str, lab: str, lms: str, out: Path | str | None = None,
                  title: str | None = None) -> Path:
    """Write the lab's grades as a CSV that ``lms`` imports; returns its path.

    Columns: the LMS's student columns, the total (headed ``title``, default the lab's name: the
    name of the LMS's assignment, so that the import matches it), one column per graded cell
    (``<lab>: <grade_id>``), the submission time and a status (``graded``, ``ungraded``,
    ``missing``). A missing student is not a zero, and each file says so in the LMS's own terms:

    * **Canvas** (Grades, Import; ``app/models/gradebook_importer.rb``): the header must start
      ``Student, ID, SIS User ID, SIS Login ID, Section``; students are matched by the Canvas
      ``ID``; the second row, ``Points Possible``, gives each column's points. An empty cell is "no
      score" to the importer (as in Canvas's own export), so a missing student's cells are empty
      and the status column says ``missing``. Columns that match no assignment (the questions, the
      time, the status) are offered on the import page as "a new assignment" or "ignore it".
    * **Moodle** (Grades, Import, CSV file; ``grade/import/csv/classes/load_data.php``): map from
      ``Email address`` to the user's email, then map the total to the assignment; the other columns
      may be ignored or become new grade items. ``-`` is "no grade" (Moodle's export writes it, its
      importer reads it so), so a missing student's scores are ``-``. Points are in the headers.
    """
    if lms not in LMS_NAMES:
        raise ValueError(f"unknown LMS {lms!r}: expected one of {', '.join(LMS_NAMES)}")
    course = Path(course).resolve()
    questions, max_total, rows = grade_rows(course, lab)
    title = title or lab
    none = "" if lms == "canvas" else "-"
    time_col, status_col = f"{lab}: submitted at (UTC)", f"{lab}: status"

    def scores(row):
        if row["status"] != "graded":
            return [none] * (1 + len(questions))
        return [_fmt(row["total"])] + [_fmt(row["scores"].get(g, 0.0)) for g, _ in questions]

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if lms == "canvas":
        w.writerow(["Student", "ID", "SIS User ID", "SIS Login ID", "Section", title,
                    *[f"{lab}: {g}" for g, _ in questions], time_col, status_col])
        w.writerow(["    Points Possible", "", "", "", "", _fmt(max_total), *[_fmt(p) for _, p in questions], "", ""])
        for r in rows:
            name = f"{r['last_name']}, {r['first_name']}" if r["first_name"] else r["last_name"] or r["id"]
            w.writerow([name, r["lms_id"], "", "", "", *scores(r), r["submitted"] or "", r["status"]])
    else:
        w.writerow(["First name", "Last name", "Email address", f"{title} ({_fmt(max_total)} pts)",
                    *[f"{lab}: {g} ({_fmt(p)} pts)" for g, p in questions], time_col, status_col])
        for r in rows:
            w.writerow([r["first_name"], r["last_name"], r["email"] or r["lms_id"], *scores(r),
                        r["submitted"] or "", r["status"]])
    out = Path(out) if out else course / f"{lab}_{lms}_gradebook.csv"
    out.write_text(buf.getvalue(), encoding="utf-8")
    return out


# ---------------------------------------------------------------------------------------------
# Feedback that typesets its math offline
# ---------------------------------------------------------------------------------------------

# MathJax 3.2.2, the copy the course site ships (book/mathjax/SOURCE.txt): SVG output needs no
# fonts, and the TeX extensions it loads on demand sit beside it.
MATHJAX = Path(__file__).resolve().parents[2] / "book" / "mathjax"
MATHJAX_FOLDER = "mathjax"  # beside each feedback HTML file

# Replaces nbconvert's base/mathjax.html.j2 (a CDN script) for the feedback pages: the same TeX
# settings, in MathJax 3's terms, and the script from the feedback folder.
OFFLINE_MATHJAX_TEMPLATE = """{%- macro mathjax(url=None) -%}
{% raw %}<script>
window.MathJax = {
  loader: {load: ['[tex]/textmacros']},
  tex: {
    inlineMath: [['$', '$'], ['\\\\(', '\\\\)']],
    displayMath: [['$$', '$$'], ['\\\\[', '\\\\]']],
    processEscapes: true,
    processEnvironments: true,
    tags: 'ams',
    packages: {'[+]': ['textmacros']}
  }
};
</script>{% endraw %}
<script defer src="MATHJAX_FOLDER/tex-svg.js"></script>
{%- endmacro %}
""".replace("MATHJAX_FOLDER", MATHJAX_FOLDER)


@functools.cache
def mathjax_files() -> dict[str, bytes]:
    """``{path beside the HTML: bytes}`` of the MathJax a feedback page needs."""
    if not (MATHJAX / "tex-svg.js").is_file():
        raise FileNotFoundError(f"MathJax is missing: expected {MATHJAX / 'tex-svg.js'} (the course site's copy)")
    files = [MATHJAX / "tex-svg.js", MATHJAX / "LICENSE", *sorted((MATHJAX / "input").rglob("*.js"))]
    return {f"{MATHJAX_FOLDER}/{p.relative_to(MATHJAX).as_posix()}": p.read_bytes() for p in files}


class OfflineMathHTMLExporter(HTMLExporter):
    """nbconvert's HTML exporter whose pages load MathJax from a ``mathjax/`` folder written beside them.

    nbgrader's feedback template calls nbconvert's ``mathjax()`` macro, which loads MathJax 2 from
    a CDN; this exporter's template loader answers ``mathjax.html.j2`` first, and the MathJax files
    go into the output's resources, which nbconvert's writer puts next to the page. Used by
    ``nbgrader generate_feedback`` through ``GenerateFeedback.exporter_class`` in nbgrader_config.py.
    """

    extra_loaders = List()

    @default("extra_loaders")
    def _offline_mathjax_loader(self):
        return [DictLoader({"mathjax.html.j2": OFFLINE_MATHJAX_TEMPLATE})]

    def from_notebook_node(self, nb, resources=None, **kw):
        output, resources = super().from_notebook_node(nb, resources, **kw)
        resources.setdefault("outputs", {}).update(mathjax_files())
        return output, resources


def _nbgrader_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # nbgrader runs alembic
    return env


def regenerate_feedback(course_root: Path | str, lab: str, students: list[str] | None = None) -> list[str]:
    """Feedback HTML for every autograded student of ``lab`` (or those of ``students``), always anew.

    ``nbgrader generate_feedback`` skips a student whose feedback is as recent as the graded
    notebook's ``timestamp.txt``, and ``autograde --force`` keeps that timestamp, so a regrade
    would keep the old feedback: this always passes ``--force``. Returns the students whose
    feedback was written; the others asked for (never graded) are left out.
    """
    course = Path(course_root).resolve()
    graded = sorted(p.parent.name for p in (course / "autograded").glob(f"*/{lab}") if any(p.glob("*.ipynb")))
    wanted = graded if students is None else [s for s in graded if s in set(students)]
    if not wanted:
        return []
    args = [str(Path(sys.executable).parent / "nbgrader"), "generate_feedback", lab, "--force"]
    if len(wanted) == 1:
        args.append(f"--student={wanted[0]}")
    elif len(wanted) < len(graded):
        args.append(f"--CourseDirectory.student_id_exclude={','.join(sorted(set(graded) - set(wanted)))}")
    proc = subprocess.run(args, cwd=course, env=_nbgrader_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"nbgrader generate_feedback {lab} failed:\n{proc.stdout}\n{proc.stderr}")
    return [s for s in wanted if (course / "feedback" / s / lab / f"{lab}.html").is_file()]


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------

def _course(args) -> Path:
    return Path(args.course).resolve()


def run_roster(args) -> int:
    kind, entries = import_roster(_course(args), args.csv)
    print(f"{len(entries)} students from a {kind.replace('-', ' ')} CSV in the gradebook")
    return 0


def run_collect(args) -> int:
    report = collect(_course(args), args.lab, args.lms, args.archive, args.roster, args.timezone)
    print(f"{len(report.collected)} submissions collected into submitted/<student>/{args.lab}/")
    late = sorted(s for s, c in report.collected.items() if c.late)
    if late:
        print(f"marked late by {args.lms}: {', '.join(late)}")
    for s, c in sorted(report.collected.items()):
        if c.renamed_from:
            print(f"{s}: {c.renamed_from} collected as {args.lab}.ipynb")
    if not report.times_given:
        print(f"no submission times: {args.lms}'s download gives none, so no timestamp.txt was written"
              + (" (a Moodle grading worksheet as --roster gives them)" if args.lms == "moodle" else ""))
    for label, files in (("older copies skipped", report.superseded),
                         ("not on the roster (import it with `roster`), skipped", report.unknown),
                         (f"not named as {args.lms} names submissions, skipped", report.unmatched)):
        if files:
            print(f"{label}:\n  " + "\n  ".join(os.path.basename(f) for f in files))
    if any(os.path.basename(f).startswith("anon_") for f in report.unmatched):
        print("anon_...: Canvas's anonymous grading hides who is who; download after names are shown")
    return 1 if report.unknown or report.unmatched else 0


def run_export(args) -> int:
    out = export_grades(_course(args), args.lab, args.lms, args.output, args.title)
    print(f"wrote {out}")
    return 0


def run_feedback(args) -> int:
    done = regenerate_feedback(_course(args), args.lab, args.student)
    print(f"feedback for {len(done)} students in feedback/<student>/{args.lab}/")
    skipped = sorted(set(args.student or []) - set(done))
    if skipped:
        print(f"not graded, no feedback: {', '.join(skipped)}")
    return 1 if skipped else 0


def register(subparsers) -> None:
    """Add ``roster``, ``lms-collect``, ``lms-export`` and ``feedback`` to the course command line."""
    def command(name, help, run):
        p = subparsers.add_parser(name, help=help, description=help)
        p.add_argument("--course", default=".", help="the course directory (default: the current one)")
        p.set_defaults(run=run)
        return p

    p = command("roster", "import the class list (Canvas gradebook export, Moodle CSV) into the gradebook",
                run_roster)
    p.add_argument("csv", help="the class list CSV")

    p = command("lms-collect", "unpack a Canvas or Moodle download into submitted/", run_collect)
    p.add_argument("lab")
    p.add_argument("--lms", choices=LMS_NAMES, required=True)
    p.add_argument("archive", help="the zip the LMS downloaded")
    p.add_argument("--roster", help="a class list to import first (for Moodle, best its grading worksheet)")
    p.add_argument("--timezone", default="UTC", help="time zone of a Moodle worksheet's times (default UTC)")

    p = command("lms-export", "write a grades CSV that Canvas or Moodle imports", run_export)
    p.add_argument("lab")
    p.add_argument("--lms", choices=LMS_NAMES, required=True)
    p.add_argument("-o", "--output", help="the CSV to write (default <lab>_<lms>_gradebook.csv)")
    p.add_argument("--title", help="the LMS's name for the assignment (default: the lab's name)")

    p = command("feedback", "regenerate the feedback HTML of every graded student (math works offline)", run_feedback)
    p.add_argument("lab")
    p.add_argument("--student", nargs="+", help="only these students")
