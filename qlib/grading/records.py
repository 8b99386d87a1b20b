"""The record of one graded submission: data the instructor's report reads.

Whoever grades a submission (``nbgrader autograde`` through
:class:`~qlib.grading.sealed.SealedExecute`, or a worker of
:mod:`qlib.grading.classroom`) describes what happened in a
:class:`GradingRecord`, written as JSON beside a plain-text log::

    <course>/grading_records/<lab>/<student>.json
    <course>/grading_records/<lab>/<student>.log

Scores are not in the record: nbgrader's gradebook holds them. The record says
how each cell ran (status and seconds), the first line of each failed check's
message (its hint), and how long the submission took to grade.
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket
from datetime import datetime, timezone
from dataclasses import dataclass, field
from pathlib import Path

RECORDS_DIRECTORY = "grading_records"

CELL_STATUSES = ("ok", "error", "timeout", "died", "passed", "failed")
OUTCOMES = ("graded", "crashed")


@dataclass
class CellRecord:
    """One code cell of a graded notebook.

    ``kind`` is ``"test"`` (an autograded test cell, evaluated by the grader),
    ``"solution"`` (an answer cell), ``"student"`` (a cell the student added)
    or ``"locked"`` (set-up and experiment cells). ``status`` is ``passed`` /
    ``failed`` for test cells and the kernel's ``ok`` / ``error`` / ``timeout``
    / ``died`` for the others. ``message`` is the failure's message (a test cell)
    or the error's name and value (another cell), empty when it passed.
    """

    grade_id: str | None
    kind: str
    status: str
    seconds: float
    message: str = ""


@dataclass
class GradingRecord:
    """What happened when one submission of one lab was graded.

    ``outcome`` is ``"graded"`` (the gradebook has its scores) or ``"crashed"``
    (the grading itself failed, ``error`` says why; the submission needs a
    person). ``seconds`` is the wall-clock time of the whole grading,
    ``execute_seconds`` the part spent running the notebook's cells.
    """

    lab: str
    student: str
    notebook: str
    outcome: str
    seconds: float
    execute_seconds: float = 0.0
    cells: list[CellRecord] = field(default_factory=list)
    error: str = ""
    submitted_at: str | None = None
    graded_at: str = ""
    worker: str = ""

    @property
    def timeouts(self) -> int:
        return sum(c.status == "timeout" for c in self.cells)

    @property
    def kernel_deaths(self) -> int:
        return sum(c.status == "died" for c in self.cells)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "GradingRecord":
        data = json.loads(text)
        data["cells"] = [CellRecord(**c) for c in data.get("cells", [])]
        return cls(**data)


def record_path(course: Path | str, lab: str, student: str, suffix: str = ".json") -> Path:
    return Path(course) / RECORDS_DIRECTORY / lab / f"{student}{suffix}"


def write_record(course: Path | str, record: GradingRecord, log: str = "") -> Path:
    """Write ``record`` (and its log, if any) under ``course``; returns the JSON path."""
    path = record_path(course, record.lab, record.student)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(record.to_json())
    if log:
        record_path(course, record.lab, record.student, ".log").write_text(log)
    return path


def read_records(course: Path | str, lab: str) -> dict[str, GradingRecord]:
    """student -> record, for every submission of ``lab`` graded so far."""
    folder = Path(course) / RECORDS_DIRECTORY / lab
    return {p.stem: GradingRecord.from_json(p.read_text()) for p in sorted(folder.glob("*.json"))}


def now() -> str:
    """The current time, ISO 8601 in UTC (the records' clock)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def worker_name() -> str:
    """``host:pid`` of the process that graded a submission."""
    return f"{socket.gethostname()}:{os.getpid()}"
