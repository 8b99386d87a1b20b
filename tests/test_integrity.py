"""The integrity report (``python -m qlib.grading.course integrity LAB``) on made-up submissions.

Built from the released notebook of lab 3: two students who share code under other names, one
who pasted qlib's reference function, one who wrote the same tasks another way, and two who
handed in the untouched stubs (with a provided cell copied into a cell of their own).
"""
from __future__ import annotations

import ast
import hashlib
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import nbformat
import pytest

from qlib.grading import course as course_cli
from qlib.grading import integrity
from tests import nbgrader_course as course

LAB = "lab03_linear_quantization"
TASKS = ("integer_range", "asymmetric_qparams", "quantize_per_channel")

# Short enough that anyone writes it so: Ana and Dee, who work alone, both hand it in.
SHORT = '''def quantize(x, scale, zero_point, qmin, qmax):
    q = torch.round(x / scale) + zero_point
    return torch.clamp(q, qmin, qmax).to(torch.int64)
'''

ANA = {
    "quantize": SHORT,
    "integer_range": '''def integer_range(bits, signed=True, narrow=False):
    levels = 1 << bits
    low = -(levels // 2) if signed else 0
    high = low + levels - 1
    if narrow:
        low = low + 1
    return int(low), int(high)
''',
    "asymmetric_qparams": '''def asymmetric_qparams(rmin, rmax, qmin, qmax):
    lo = min(rmin, 0.0)
    hi = max(rmax, 0.0)
    step = (hi - lo) / (qmax - qmin)
    if step < torch.finfo(torch.float32).eps:
        step = torch.finfo(torch.float32).eps
    zp = int(round(qmin - lo / step))
    return step, zp
''',
    "quantize_per_channel": '''def quantize_per_channel(x, axis, qmin, qmax, symmetric=False):
    moved = x.transpose(0, axis)
    count = moved.shape[0]
    scales, zeros = [], []
    for index in range(count):
        lo, hi = channel_range(moved[index])
        if symmetric:
            s, z = symmetric_qparams(lo, hi, qmin, qmax)
        else:
            s, z = asymmetric_qparams(lo, hi, qmin, qmax)
        scales.append(s)
        zeros.append(z)
    scale = torch.tensor(scales, dtype=torch.float32)
    zero_point = torch.tensor(zeros, dtype=torch.int64)
    view = [1] * x.dim()
    view[axis] = count
    q = quantize(x, scale.view(view), zero_point.view(view), qmin, qmax)
    return q, scale, zero_point


def channel_range(row):
    return float(row.min()), float(row.max())
''',
}
# Ben's names for Ana's; his helper goes into a cell of his own, below the task's test cell.
RENAMED = {"levels": "n_levels", "low": "a", "high": "b", "lo": "mn", "hi": "mx", "step": "delta",
           "zp": "offset", "moved": "xt", "count": "n", "scales": "s_list", "zeros": "z_list",
           "index": "c", "channel_range": "minmax", "row": "r", "view": "shp"}

DEE = {  # correct, and written another way, but for the one short function
    "quantize": SHORT,
    "integer_range": '''def integer_range(bits, signed=True, narrow=False):
    if not signed:
        lo, hi = 0, 2 ** bits - 1
    else:
        half = 2 ** (bits - 1)
        lo, hi = -half, half - 1
    return (lo + 1 if narrow else lo), hi
''',
    "asymmetric_qparams": '''def asymmetric_qparams(rmin, rmax, qmin, qmax):
    eps = torch.finfo(torch.float32).eps
    span = max(rmax, 0.0) - min(rmin, 0.0)
    scale = max(span / (qmax - qmin), eps)
    return scale, round(qmin - min(rmin, 0.0) / scale)
''',
    "quantize_per_channel": '''def quantize_per_channel(x, axis, qmin, qmax, symmetric=False):
    perm = [axis] + [d for d in range(x.dim()) if d != axis]
    flat = x.permute(perm).reshape(x.shape[axis], -1)
    mins = flat.min(dim=1).values
    maxs = flat.max(dim=1).values
    pick = symmetric_qparams if symmetric else asymmetric_qparams
    pairs = [pick(a.item(), b.item(), qmin, qmax) for a, b in zip(mins, maxs)]
    scale = torch.tensor([p[0] for p in pairs], dtype=torch.float32)
    zero_point = torch.tensor([int(p[1]) for p in pairs])
    shape = [-1 if d == axis else 1 for d in range(x.dim())]
    return quantize(x, scale.reshape(shape), zero_point.reshape(shape), qmin, qmax), scale, zero_point
''',
}


def rename(code: str) -> str:
    for old, new in RENAMED.items():
        code = re.sub(rf"\b{old}\b", new, code)
    return code


def qlib_source(*names: str) -> str:
    """The source of functions of qlib/linear.py, as a student would paste them."""
    text = (integrity.QLIB / "linear.py").read_text()
    found = {n.name: ast.get_source_segment(text, n) for n in ast.parse(text).body if isinstance(n, ast.FunctionDef)}
    return "\n\n\n".join(found[n] for n in names)


def added_cell(source: str):
    return nbformat.v4.new_code_cell(source)  # no nbgrader metadata: a cell the student added


def insert_after(nb, grade_id: str, cell) -> None:
    at = next(i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)
    nb.cells.insert(at + 1, cell)


@pytest.fixture(scope="module")
def course_dir(tmp_path_factory):
    root = course.make_course(tmp_path_factory.mktemp("integrity"), LAB)
    released = course.read_notebook(course.notebook_path(root, "labs", LAB))
    course.submit(root, LAB, "ana", course.fill(released, ANA))

    ben_code = {t: rename(code) for t, code in ANA.items()}
    solution, helper = ben_code["quantize_per_channel"].split("\n\n\ndef minmax")
    ben_code["quantize_per_channel"] = "# my own loop over the channels\n" + solution
    ben = course.fill(released, ben_code)
    insert_after(ben, "test_quantize_per_channel", added_cell("def minmax" + helper))
    course.submit(root, LAB, "ben", ben)

    pasted = qlib_source("_real_range", "_finite_scale", "asymmetric_qparams")
    course.submit(root, LAB, "cai", course.fill(released, {"asymmetric_qparams": pasted}))
    course.submit(root, LAB, "dee", course.fill(released, DEE))

    provided = next(c.source for c in released.cells
                    if c.metadata.get("nbgrader", {}).get("grade_id") == "experiment")
    for student in ("eve", "fay"):
        nb = course.fill(released, {})
        insert_after(nb, "fake_quantize_weights", added_cell(provided))
        course.submit(root, LAB, student, nb)
    return root


@pytest.fixture(scope="module")
def result(course_dir):
    return integrity.survey(course_dir, LAB)


def pairs_of(pairs, student):
    return [p for p in pairs if student in (p.first.owner, p.second.owner)]


def test_shared_code_with_renamed_variables_is_flagged(result):
    found = {p.task: p for p in result.pairs if {p.first.owner, p.second.owner} == {"ana", "ben"}}
    assert sorted(found) == sorted(TASKS), f"ana and ben share code in {TASKS}; flagged: {sorted(found)}"
    assert all(p.similarity >= 0.9 for p in found.values()), {t: p.similarity for t, p in found.items()}
    # Ben's helper lives in a cell he added after the test cell; it belongs to the task and matches.
    ben = result.pieces["ben"]["quantize_per_channel"]
    pair = found["quantize_per_channel"]
    spans = pair.matches[[pair.first.owner, pair.second.owner].index("ben")]
    start, end = ben.code.index("def minmax"), len(ben.code)
    covered = sum(max(0, min(b, end) - max(a, start)) for a, b in spans)
    assert covered >= 0.8 * (end - start), "the helper in ben's added cell is not matched"


def test_pasted_qlib_function_is_flagged_against_qlib(result):
    found = [p for p in pairs_of(result.pairs, "cai") if p.second.owner == "qlib.linear"]
    assert [p.task for p in found] == ["asymmetric_qparams"], [(p.task, p.second.owner) for p in found]
    pair = found[0]
    assert pair.similarity >= 0.9
    body = pair.second.code.index("def asymmetric_qparams")
    assert any(start <= body + 30 < end for start, end in pair.matches[1]), "qlib's function is not highlighted"


def test_independent_solutions_are_not_flagged(course_dir, result):
    assert all(result.pieces["dee"][t].tokens >= result.min_tokens for t in TASKS), "dee's answers were not compared"
    assert pairs_of(result.pairs, "dee") == []
    # Measured, not just unlisted: every pair of dee's stays well below the threshold.
    everything = integrity.survey(course_dir, LAB, threshold=1e-9)
    assert max((p.similarity for p in pairs_of(everything.pairs, "dee")), default=0.0) < 0.4


def test_short_pieces_are_never_flagged(course_dir, result):
    assert result.pieces["ana"]["quantize"].tokens < result.min_tokens
    assert [p for p in result.pairs if p.task == "quantize"] == []
    # Identical answers: only their length keeps them off the list.
    unlimited = integrity.survey(course_dir, LAB, min_tokens=0)
    assert ("ana", "dee") in [(p.first.owner, p.second.owner) for p in unlimited.pairs if p.task == "quantize"]


def test_untouched_stub_and_provided_code_are_not_flagged(course_dir):
    # No minimum length and any similarity at all: what was given to everyone must match nothing.
    everything = integrity.survey(course_dir, LAB, threshold=1e-9, min_tokens=0)
    for student in ("eve", "fay"):
        assert pairs_of(everything.pairs, student) == [], [(p.task, p.first.owner, p.second.owner, p.similarity)
                                                            for p in pairs_of(everything.pairs, student)]
        assert {p.tokens for p in everything.pieces[student].values()} == {0}


def test_no_pair_below_the_threshold_is_listed(course_dir, tmp_path):
    everything = integrity.survey(course_dir, LAB, threshold=1e-9, min_tokens=0)
    values = sorted({p.similarity for p in everything.pairs})
    assert len(values) >= 3, values
    for threshold in (values[1], values[len(values) // 2], 0.5):
        expected = sorted((p.task, p.first.owner, p.second.owner)
                          for p in everything.pairs if p.similarity >= threshold)
        got = integrity.flagged_pairs(course_dir, LAB, threshold=threshold, min_tokens=0)
        assert sorted((p.task, p.first.owner, p.second.owner) for p in got) == expected
        assert all(p.similarity >= threshold for p in got)
        path, _ = integrity.write_report(course_dir, LAB, tmp_path / "r.html", threshold=threshold, min_tokens=0)
        listed = [float(row.get("data-similarity")) for row in ET.parse(path).iter(f"{XHTML}tr")
                  if row.get("class") == "pair"]
        assert len(listed) == len(expected) and min(listed) >= threshold


XHTML = "{http://www.w3.org/1999/xhtml}"


def test_report_renders_and_says_no_automatic_penalty(course_dir, tmp_path, capsys):
    gradebook = hashlib.sha256((course_dir / "gradebook.db").read_bytes()).hexdigest()
    files_before = sorted(p for p in course_dir.rglob("*") if p.is_file())
    out = tmp_path / "report.html"
    assert course_cli.main(["integrity", LAB, "--course", str(course_dir), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ana ~ ben" in printed and "cai ~ qlib.linear" in printed
    assert course_cli.main(["integrity", "lab99_missing", "--course", str(course_dir), "-o", str(out)]) == 1

    page = ET.parse(out).getroot()  # well-formed XHTML, or this raises
    statement = "".join(next(e for e in page.iter() if e.get("id") == "statement").itertext())
    assert "never a verdict" in statement and "no automatic penalty" in statement
    rows = [r for r in page.iter(f"{XHTML}tr") if r.get("class") == "pair"]
    sections = [s for s in page.iter(f"{XHTML}section") if s.get("class") == "pair"]
    assert len(rows) == len(sections) == len(integrity.flagged_pairs(course_dir, LAB)) > 0
    for section in sections:  # side by side, matching passages highlighted on both sides
        blocks = list(section.iter(f"{XHTML}pre"))
        assert len(blocks) == 2 and all(list(b.iter(f"{XHTML}mark")) for b in blocks)
    # The length of every piece, short ones included.
    lengths = next(t for t in page.iter(f"{XHTML}table") if t.get("id") == "lengths")
    rows = {r[0].text: [c.text for c in r[1:]] for r in lengths.iter(f"{XHTML}tr") if r[0].tag == f"{XHTML}td"}
    assert sorted(rows) == ["ana", "ben", "cai", "dee", "eve", "fay"]
    result = integrity.survey(course_dir, LAB)
    assert rows["ana"] == [str(result.pieces["ana"][t].tokens) for t in result.tasks]
    assert set(result.course_solution) == set(result.tasks)  # the scale column: solutions/ is in the course
    # Reads only: the gradebook and every course file are as they were.
    assert hashlib.sha256((course_dir / "gradebook.db").read_bytes()).hexdigest() == gradebook
    assert sorted(p for p in course_dir.rglob("*") if p.is_file()) == files_before


def test_same_page_in_every_run(course_dir, tmp_path):
    """Python salts ``hash`` per process; the page must not depend on it."""
    pages = []
    for seed in ("1", "2"):
        out = tmp_path / f"{seed}.html"
        code = ("from qlib.grading.integrity import write_report; "
                f"write_report({str(course_dir)!r}, {LAB!r}, {str(out)!r})")
        subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONHASHSEED": seed})
        pages.append(out.read_bytes())
    assert pages[0] == pages[1]
