"""Similarity of a lab's submissions, for a person to review: ``python -m qlib.grading.course integrity LAB``.

Each student's answer to each task is compared with the same task of every other student and
with the source of the qlib modules the lab's checks are computed from. Pairs whose similarity
reaches the threshold are listed on one HTML page, with the matching code highlighted side by
side. Similarity is a reason to look, never a verdict: the command reads the submissions and
writes that page, nothing else; it never touches the gradebook.

What is compared (a *piece*: one student's code for one task)

A task's piece is its solution cell (``metadata.nbgrader.solution``, by ``grade_id``) followed by
every code cell the student added after it (cells without nbgrader metadata), up to the next
solution cell; cells added before the first task are a piece of their own. The code of the
released notebook ``labs/LAB/LAB.ipynb`` (stubs, docstrings, provided cells) is boilerplate, a
little stricter than copydetect's: no fingerprint that touches it counts as similarity, so an
untouched stub, or a provided cell pasted elsewhere, matches nothing. A piece's length counts the student's own tokens only: a token inside a run of
``GIVEN_RUN`` tokens found verbatim in the released code is given, not written. The qlib side is
every module the lab's checks (``qlib/grading/labNN.py``) import, with the qlib modules those
import in turn.

How (copydetect, winnowing as in MOSS)

The code is tokenized by copydetect (Pygments): every name becomes ``V``, function names ``F``,
class names ``O``, strings ``S``; comments and spaces vanish. So renaming variables or
rewording comments changes nothing. Every run of ``NOISE_CHARS`` characters of that filtered
text is hashed (a fingerprint); the share of a piece covered by fingerprints that the other
piece also has is its similarity. A student pair scores the larger of its two shares; a
student against qlib scores the student's share. ``WINDOW = 1`` keeps every fingerprint, so
every match of ``NOISE_CHARS`` or more is found (pieces are small, so winnowing need not thin
them), and the hash is blake2b rather than Python's salted ``hash``, so the same submissions
give the same page in every run.

Thresholds, and why (measured on this course's labs)

* ``--threshold 0.5``: half of a piece lies in passages the other piece also has. Code shared
  under other names scores 1.0. The differently written correct answers of the lab tests
  (``tests/test_lab0*_grading.py``) score at most 0.36 against the course's solution and 0.33
  against qlib. The course's own solution comes close to qlib on a few tasks (up to 0.89 on
  lab 7's ``FakeQuantSTE``), so a student who writes the natural answer there is listed too: the
  report shows that score beside each task, for scale.
* ``--min-tokens 40``: a piece with fewer tokens of the student's own code (names, numbers,
  operators, keywords; a string is one) is shown with its length and never listed. A short
  function can only be written a few ways: the course's ``dequantize`` is 15 tokens,
  ``requantize`` 26, ``quantize`` 30, ``symmetric_qparams`` 34; every other task's solution has 43
  or more.
* ``NOISE_CHARS = 25`` (copydetect's default): a match shorter than about a statement of filtered
  code (``V=V.V(V/V)+V`` is 12 characters) is coincidence.
* ``GIVEN_RUN = 10`` tokens, about one line: a run that long found in the released notebook is
  given code; a shorter one (``return q``) is the student's, even if the notebook has it too.
"""
from __future__ import annotations

import ast
import hashlib
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import numpy as np
from copydetect import __version__ as COPYDETECT_VERSION
from copydetect.detector import compare_files
from copydetect.utils import filter_code, get_token_coverage, highlight_overlap, winnow
from pygments import token as pygments_token
from pygments.lexers import PythonLexer

from qlib.grading.sealed import is_student_code, nbgrader_metadata

QLIB = Path(__file__).resolve().parents[1]
RELEASE = "labs"            # nbgrader_config.py: c.CourseDirectory.release_directory
SUBMITTED = "submitted"     # nbgrader's default submitted directory
SOURCE = "solutions"        # nbgrader_config.py: c.CourseDirectory.source_directory

THRESHOLD = 0.5
MIN_TOKENS = 40
NOISE_CHARS = 25
WINDOW = 1
GIVEN_RUN = 10
BEFORE_FIRST_TASK = "(before the first task)"
#: Lines of a qlib module shown around each matching passage.
CONTEXT_LINES = 3
#: Pairs shown side by side; beyond, the table still lists every pair (raise --threshold to see fewer).
MAX_SHOWN = 300

STATEMENT = (
    "Similarity is a reason to look, never a verdict. Nothing on this page changes a grade and "
    "there is no automatic penalty: the command writes this page and nothing else. Code can be "
    "alike for innocent reasons: the lecture's code, the formula in the docstring, a function "
    "short enough to be written only a few ways, collaboration the course allows. Read both "
    "pieces, and talk with the student, before concluding anything."
)


@dataclass(frozen=True)
class Piece:
    """One student's code for one task, or one qlib module's source."""

    owner: str      # the student id, or the module ("qlib.linear")
    task: str       # the task's grade_id; for a qlib module, its file name
    code: str       # the cells' source, as submitted
    tokens: int     # tokens the student wrote (given code, comments and spaces do not count)
    is_qlib: bool = False


@dataclass(frozen=True)
class Pair:
    """Two pieces with their similarity: ``first`` is a student's, ``second`` another's or qlib's."""

    task: str
    first: Piece
    second: Piece
    shares: tuple[float, float]          # share of each piece inside matching passages
    matches: tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]  # (start, end) in each code

    @property
    def similarity(self) -> float:
        """The student's share against qlib; the larger of the two shares between students."""
        return self.shares[0] if self.second.is_qlib else max(self.shares)


@dataclass
class Survey:
    """Everything the report shows: the pieces, the flagged pairs and the parameters."""

    lab: str
    tasks: list[str]
    pieces: dict[str, dict[str, Piece]]  # student -> task -> piece
    references: list[Piece]              # the qlib modules
    pairs: list[Pair]                    # flagged, most similar first
    threshold: float
    min_tokens: int
    unreadable: dict[str, str] = field(default_factory=dict)  # student -> why
    #: task -> (similarity, module) of the course's own solution against qlib, when solutions/ is here
    course_solution: dict[str, tuple[float, str]] = field(default_factory=dict)


# --- fingerprints (copydetect's, with a hash that is the same in every run) -----------------

def _stable_hash(text: str) -> int:
    # 52 bits: copydetect's winnowing keeps hashes in a float64 buffer, exact below 2**53.
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 12


def _kgram_hashes(filtered: str, k: int) -> np.ndarray:
    return np.array([_stable_hash(filtered[i:i + k]) for i in range(len(filtered) - k + 1)], dtype=np.int64)


class Fingerprint:
    """copydetect's ``CodeFingerprint`` of a string: the attributes ``compare_files`` reads.

    Built from copydetect's own steps (``filter_code``, ``winnow``, ``get_token_coverage``) with
    blake2b in place of Python's per-process ``hash``. Boilerplate is stricter than copydetect's,
    which drops a fingerprint only if the released code has the same one: here a fingerprint that
    touches released code in any character is dropped too. Otherwise the stub's signature and
    the first few characters of the student's code make a fingerprint of their own, and every
    answer that starts ``q = torch.round(`` would match every other.
    """

    def __init__(self, code: str, boilerplate: np.ndarray | None = None):
        filtered, offsets = filter_code(code, "piece.py", language="python")
        all_hashes = _kgram_hashes(filtered, NOISE_CHARS)
        given = np.zeros(len(filtered) + 1, dtype=np.int64)
        if boilerplate is not None and len(boilerplate):
            for i in np.flatnonzero(np.isin(all_hashes, boilerplate)):
                given[i:i + NOISE_CHARS] = 1
        touched = np.concatenate([[0], np.cumsum(given)])  # touched[j] - touched[i]: given in [i, j)
        hashes, idx = winnow(all_hashes, WINDOW, remove_duplicates=False)
        keep = touched[idx + NOISE_CHARS] == touched[idx]
        self.hash_idx: dict[int, list[int]] = {}
        for h, i in zip(hashes[keep].tolist(), idx[keep].tolist()):
            self.hash_idx.setdefault(h, []).append(i)
        self.hashes = set(self.hash_idx)
        self.raw_code, self.filtered_code, self.offsets, self.k = code, filtered, offsets, NOISE_CHARS
        self.token_coverage = get_token_coverage(self.hash_idx, NOISE_CHARS, len(filtered))


def boilerplate_hashes(cells: list[str]) -> np.ndarray:
    """Every fingerprint of the given code, cell by cell (copydetect's boilerplate: window 1)."""
    found = [_kgram_hashes(filter_code(src, "given.py", language="python")[0], NOISE_CHARS) for src in cells]
    return np.unique(np.concatenate(found)) if found else np.array([], dtype=np.int64)


def tokens(code: str) -> list[str]:
    """The tokens of ``code``: names, keywords, numbers, operators; a string is one; no comments or spaces."""
    out: list[str] = []
    in_string = False
    for kind, text in PythonLexer().get_tokens(code):
        if kind in pygments_token.Text or kind in pygments_token.Comment or not text.strip():
            in_string = False
        elif kind in pygments_token.Literal.String:
            if in_string:  # Pygments cuts one string into quote, content, quote
                out[-1] += text
            else:
                out.append(text)
            in_string = True
        else:
            out.append(text)
            in_string = False
    return out


def given_runs(cells: list[str]) -> set[tuple[str, ...]]:
    """Every run of ``GIVEN_RUN`` consecutive tokens of the released code, and every released cell shorter
    than that whole (an answer cell's bare stub)."""
    runs = set()
    for src in cells:
        t = tokens(src)
        runs.update(tuple(t[i:i + GIVEN_RUN]) for i in range(len(t) - GIVEN_RUN + 1))
        if 0 < len(t) < GIVEN_RUN:
            runs.add(tuple(t))
    return runs


def own_tokens(code: str, given: set[tuple[str, ...]]) -> int:
    """How many tokens of ``code`` lie in no run copied from the released code (see :func:`given_runs`)."""
    t = tokens(code)
    given_at = np.zeros(len(t), dtype=bool)
    for n in sorted({len(run) for run in given}):
        for i in range(len(t) - n + 1):
            if tuple(t[i:i + n]) in given:
                given_at[i:i + n] = True
    return int((~given_at).sum())


# --- pieces ----------------------------------------------------------------------------------

def released_notebook(course: Path, lab: str) -> nbformat.NotebookNode:
    path = Path(course) / RELEASE / lab / f"{lab}.ipynb"
    if not path.is_file():
        raise FileNotFoundError(f"no released notebook {path}: run `nbgrader generate_assignment {lab}` first")
    return nbformat.read(path, as_version=4)


def task_ids(released: nbformat.NotebookNode) -> list[str]:
    """The grade_ids of the released notebook's code solution cells, in order."""
    return [nbgrader_metadata(c)["grade_id"] for c in released.cells
            if c.cell_type == "code" and nbgrader_metadata(c).get("solution")]


def pieces_of(notebook: nbformat.NotebookNode) -> dict[str, str]:
    """task -> the code of its solution cell and of the cells the student added after it."""
    parts: dict[str, list[str]] = {}
    task = BEFORE_FIRST_TASK
    for cell in notebook.cells:
        meta = nbgrader_metadata(cell)
        if meta.get("solution"):
            task = meta.get("grade_id", task)
        # Locked cells of the release are left out: grading runs the course's copy of them.
        if is_student_code(cell) and cell.source.strip():
            parts.setdefault(task, []).append(cell.source.strip("\n"))
    return {t: "\n\n".join(p) for t, p in parts.items()}


def submissions(course: Path, lab: str) -> dict[str, Path]:
    """student -> ``submitted/<student>/<lab>/<lab>.ipynb``, sorted by student."""
    root = Path(course) / SUBMITTED
    found = sorted(root.glob(f"*/{lab}/{lab}.ipynb")) if root.is_dir() else []
    return {p.parents[1].name: p for p in found}


# --- the qlib side ---------------------------------------------------------------------------

def _qlib_imports(path: Path) -> set[str]:
    """Names of the qlib modules (outside qlib.grading) that the file imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[:1] == ["qlib"] and len(parts) > 1 and (QLIB / f"{parts[1]}.py").is_file():
                found.add(parts[1])  # qlib.grading is a package, not a module file: never found
    return found


def reference_modules(lab: str) -> list[str]:
    """The qlib modules the lab's checks import, with those they import; all of qlib without checks."""
    checks = QLIB / "grading" / f"{lab.split('_')[0]}.py"
    if not checks.is_file():
        return sorted(p.stem for p in QLIB.glob("*.py") if p.stem != "__init__")
    todo, seen = sorted(_qlib_imports(checks)), set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(sorted(_qlib_imports(QLIB / f"{name}.py") - seen))
    return sorted(seen)


# --- comparison ------------------------------------------------------------------------------

def _compare(task: str, a: Piece, fa: Fingerprint, b: Piece, fb: Fingerprint) -> Pair:
    _, shares, slices = compare_files(fa, fb)
    spans = tuple(tuple(zip(np.asarray(s[0], dtype=int).tolist(), np.asarray(s[1], dtype=int).tolist()))
                  if len(s) else () for s in slices)
    return Pair(task, a, b, (round(float(shares[0]), 4), round(float(shares[1]), 4)), spans)


def survey(course: Path | str, lab: str, threshold: float = THRESHOLD, min_tokens: int = MIN_TOKENS) -> Survey:
    """Compare every submission of ``lab`` in ``course``, task by task; keep the pairs at or above ``threshold``."""
    course = Path(course)
    released = released_notebook(course, lab)
    tasks = task_ids(released)
    released_code = [c.source for c in released.cells if c.cell_type == "code"]
    boilerplate, given = boilerplate_hashes(released_code), given_runs(released_code)

    pieces: dict[str, dict[str, Piece]] = {}
    unreadable: dict[str, str] = {}
    for student, path in submissions(course, lab).items():
        try:
            nb = nbformat.read(path, as_version=4)
        except Exception as err:  # a broken file is reported, not compared
            unreadable[student] = f"{type(err).__name__}: {err}".splitlines()[0][:200]
            continue
        pieces[student] = {t: Piece(student, t, code, own_tokens(code, given))
                           for t, code in pieces_of(nb).items()}
    for student_pieces in pieces.values():
        for t in student_pieces:
            if t not in tasks:
                tasks.append(t)  # only BEFORE_FIRST_TASK, or a grade_id the release lacks

    references = []
    for name in reference_modules(lab):
        source = (QLIB / f"{name}.py").read_text(encoding="utf-8")
        references.append(Piece(f"qlib.{name}", f"{name}.py", source, len(tokens(source)), is_qlib=True))
    ref_prints = [(r, Fingerprint(r.code, boilerplate)) for r in references]

    pairs: list[Pair] = []
    for task in tasks:
        entries = [(p, Fingerprint(p.code, boilerplate)) for s in sorted(pieces)
                   if (p := pieces[s].get(task)) is not None and p.tokens >= min_tokens]
        # Only pieces sharing a fingerprint can be alike: index them instead of trying every pair.
        holders: dict[int, list[int]] = {}
        for i, (_, fp) in enumerate(entries):
            for h in fp.hashes:
                holders.setdefault(h, []).append(i)
        candidates = sorted({(i, j) for ids in holders.values() for n, i in enumerate(ids) for j in ids[n + 1:]})
        for i, j in candidates:
            pairs.append(_compare(task, *entries[i], *entries[j]))
        for piece, fp in entries:
            for ref, rfp in ref_prints:
                if fp.hashes & rfp.hashes:
                    pairs.append(_compare(task, piece, fp, ref, rfp))
    order = {t: n for n, t in enumerate(tasks)}
    flagged = [p for p in pairs if p.similarity > 0 and p.similarity >= threshold]
    flagged.sort(key=lambda p: (-p.similarity, order[p.task], p.first.owner, p.second.owner))
    return Survey(lab, tasks, pieces, references, flagged, threshold, min_tokens, unreadable,
                  _course_solution_vs_qlib(course, lab, given, boilerplate, ref_prints))


def _course_solution_vs_qlib(course: Path, lab: str, given, boilerplate, ref_prints) -> dict[str, tuple[float, str]]:
    """task -> (similarity, module): how alike the course's own solution is to qlib, for scale."""
    path = course / SOURCE / lab / f"{lab}.ipynb"
    if not path.is_file():
        return {}
    out = {}
    for task, code in pieces_of(nbformat.read(path, as_version=4)).items():
        piece = Piece("course solution", task, code, own_tokens(code, given))
        fp = Fingerprint(code, boilerplate)
        scores = sorted((-_compare(task, piece, fp, ref, rfp).similarity, ref.owner) for ref, rfp in ref_prints)
        out[task] = (-scores[0][0], scores[0][1]) if scores and scores[0][0] < 0 else (0.0, "")
    return out


def flagged_pairs(course: Path | str, lab: str, threshold: float = THRESHOLD,
                  min_tokens: int = MIN_TOKENS) -> list[Pair]:
    """The pairs of pieces of ``lab`` whose similarity is at least ``threshold``, most similar first."""
    return survey(course, lab, threshold, min_tokens).pairs


# --- the page --------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 84em; padding: 0 1em; color: #222; }
.statement { border-left: 6px solid #2a6f97; background: #eef5fa; padding: 0.8em 1.2em; font-size: 1.05em; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.short { color: #999; }
.sides { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 1em; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
mark { background: #ffd166; }
section.pair { border-top: 1px solid #ccc; margin-top: 1.5em; }
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _highlighted(piece: Piece, spans) -> str:
    if not spans:
        return _e(piece.code)
    slices = np.array([[s for s, _ in spans], [e for _, e in spans]])
    code, _ = highlight_overlap(piece.code, slices, "<mark>", "</mark>",
                                truncate=CONTEXT_LINES if piece.is_qlib else -1, escape_html=True)
    return code


def _describe(piece: Piece) -> str:
    if piece.is_qlib:
        return f"{_e(piece.owner)} <small>(reference source; the lines around each match)</small>"
    return f"{_e(piece.owner)} <small>({piece.tokens} tokens of own code)</small>"


def render(s: Survey) -> str:
    """The report as one self-contained page (well-formed XHTML, no external resource)."""
    out = [
        "<!DOCTYPE html>",
        '<html xmlns="http://www.w3.org/1999/xhtml" lang="en"><head><meta charset="utf-8"/>',
        f"<title>Similarity of {_e(s.lab)}</title><style>{CSS}</style></head><body>",
        f"<h1>Similarity of the submissions of {_e(s.lab)}</h1>",
        f'<p class="statement" id="statement"><strong>{_e(STATEMENT)}</strong></p>',
        "<p>Each task's code (its solution cell and the cells the student added after it) is compared "
        "with the same task of every other submission, and with the source of "
        f"{_e(', '.join(r.owner for r in s.references))}. Variables may be renamed and comments "
        "reworded: the comparison sees only the shape of the code. The code given in the released "
        "notebook (stubs, docstrings, provided cells) never counts. Similarity is the share of a piece "
        "that lies in passages the other piece also contains (between two students, the larger of "
        f"the two shares). Listed: pairs at or above {s.threshold:.2f}. Pieces under {s.min_tokens} "
        "tokens of the student's own code are never listed: a short function can only be written "
        "a few ways.</p>",
    ]
    if s.unreadable:
        out.append("<h2>Submissions that could not be read</h2><ul>")
        out += [f"<li>{_e(st)}: {_e(why)}</li>" for st, why in sorted(s.unreadable.items())]
        out.append("</ul>")

    out.append(f"<h2>Pairs to review ({len(s.pairs)})</h2>")
    if s.pairs:
        out.append('<table id="pairs"><tr><th>#</th><th>similarity</th><th>task</th><th>student</th>'
                   "<th>tokens</th><th>compared with</th><th>tokens</th></tr>")
        for n, p in enumerate(s.pairs, 1):
            other_tokens = "" if p.second.is_qlib else p.second.tokens
            number = f'<a href="#pair{n}">{n}</a>' if n <= MAX_SHOWN else str(n)
            out.append(
                f'<tr class="pair" data-similarity="{p.similarity:.4f}"><td class="num">{number}</td>'
                f'<td class="num">{p.similarity:.2f}</td><td>{_e(p.task)}</td><td>{_e(p.first.owner)}</td>'
                f'<td class="num">{p.first.tokens}</td><td>{_e(p.second.owner)}</td>'
                f'<td class="num">{other_tokens}</td></tr>')
        out.append("</table>")
        if len(s.pairs) > MAX_SHOWN:
            out.append(f"<p>The first {MAX_SHOWN} pairs are shown side by side below; raise --threshold "
                       "to see the others.</p>")
    else:
        out.append("<p>No pair reaches the threshold.</p>")

    out.append("<h2>Tasks</h2>")
    out.append('<table id="tasks"><tr><th>task</th><th>answers written</th>'
               f"<th>compared (at least {s.min_tokens} tokens)</th><th>pairs listed</th>"
               "<th>the course's own solution against qlib</th></tr>")
    for t in s.tasks:
        lengths = [ps[t].tokens for ps in s.pieces.values() if t in ps and ps[t].tokens]
        listed = sum(p.task == t for p in s.pairs)
        base = s.course_solution.get(t)
        base_text = "" if base is None else f"{base[0]:.2f}" + (f" ({_e(base[1])})" if base[1] else "")
        out.append(f'<tr><td>{_e(t)}</td><td class="num">{len(lengths)}</td>'
                   f'<td class="num">{sum(n >= s.min_tokens for n in lengths)}</td>'
                   f'<td class="num">{listed}</td><td class="num">{base_text}</td></tr>')
    out.append("</table>")
    if s.course_solution:
        out.append("<p>The last column sets the scale for pairs with qlib: where even the course's own "
                   "solution is close to qlib, the natural answer is, and a high similarity means little.</p>")

    for n, p in enumerate(s.pairs[:MAX_SHOWN], 1):
        if p.second.is_qlib:
            what = f"{p.shares[0]:.0%} of the student's code lies in passages also found in {_e(p.second.owner)}"
            base = s.course_solution.get(p.task)
            if base:
                what += f"; the course's own solution scores {base[0]:.2f} against qlib on this task"
        else:
            what = (f"{p.shares[0]:.0%} of {_e(p.first.owner)}'s code and {p.shares[1]:.0%} of "
                    f"{_e(p.second.owner)}'s lie in passages both contain")
        out += [
            f'<section class="pair" id="pair{n}">'
            f"<h3>{n}. {_e(p.task)}: {_e(p.first.owner)} and {_e(p.second.owner)}</h3>",
            f"<p>Similarity {p.similarity:.2f}: {what}. Highlighted: the matching passages "
            "(names, strings and layout may differ).</p>",
            '<div class="sides">',
            f"<div><h4>{_describe(p.first)}</h4><pre>{_highlighted(p.first, p.matches[0])}</pre></div>",
            f"<div><h4>{_describe(p.second)}</h4><pre>{_highlighted(p.second, p.matches[1])}</pre></div>",
            "</div></section>",
        ]

    out.append("<h2>Length of every piece</h2>")
    out.append("<p>Tokens the student wrote for each task (names, numbers, operators, keywords; a string is "
               f"one; the released code, comments and spaces do not count). Grey: under {s.min_tokens}, "
               "not compared.</p>")
    out.append('<table id="lengths"><tr><th>student</th>' + "".join(f"<th>{_e(t)}</th>" for t in s.tasks) + "</tr>")
    for student in sorted(s.pieces):
        cells = []
        for t in s.tasks:
            n = s.pieces[student][t].tokens if t in s.pieces[student] else 0
            cells.append(f'<td class="num{" short" if n < s.min_tokens else ""}">{n}</td>')
        out.append(f"<tr><td>{_e(student)}</td>{''.join(cells)}</tr>")
    out.append("</table>")

    params = {"copydetect": COPYDETECT_VERSION, "noise_chars": NOISE_CHARS, "window": WINDOW,
              "given_run": GIVEN_RUN, "min_tokens": s.min_tokens, "threshold": s.threshold, "hash": "blake2b"}
    out.append(f"<p><small>Fingerprints: {_e(json.dumps(params))}.</small></p></body></html>")
    return "\n".join(out) + "\n"


def write_report(course: Path | str, lab: str, out: Path | str | None = None, threshold: float = THRESHOLD,
                 min_tokens: int = MIN_TOKENS) -> tuple[Path, Survey]:
    """Write the page of ``lab`` (default ``reports/LAB_integrity.html`` in the course); return its path."""
    result = survey(course, lab, threshold, min_tokens)
    return _write(result, out if out is not None else _default_output(course, lab)), result


def _default_output(course: Path | str, lab: str) -> Path:
    return Path(course) / "reports" / f"{lab}_integrity.html"


def _write(result: Survey, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(result), encoding="utf-8")
    return path


def register(commands) -> None:
    cmd = commands.add_parser("integrity", help="similarity of submissions, for a person to review",
                              description=__doc__.split("\n\n")[0])
    cmd.add_argument("lab", help="the lab, e.g. lab03_linear_quantization")
    cmd.add_argument("--threshold", type=float, default=THRESHOLD,
                     help=f"list pairs at or above this similarity (default {THRESHOLD})")
    cmd.add_argument("--min-tokens", type=int, default=MIN_TOKENS,
                     help=f"never flag a piece shorter than this many tokens (default {MIN_TOKENS})")
    cmd.add_argument("-o", "--output", type=Path, default=None,
                     help="the HTML file to write (default: reports/LAB_integrity.html in the course directory)")
    cmd.add_argument("--course", type=Path, default=Path("."), help="course directory (default: here)")
    cmd.set_defaults(run=_run)


def _run(args) -> int:
    if not 0 < args.threshold <= 1:
        print(f"integrity: --threshold must be in (0, 1], got {args.threshold}")
        return 1
    try:
        result = survey(args.course, args.lab, args.threshold, args.min_tokens)
    except FileNotFoundError as err:
        print(f"integrity: {err}")
        return 1
    if not result.pieces and not result.unreadable:
        print(f"integrity: no submission of {args.lab} in {Path(args.course) / SUBMITTED}")
        return 1
    path = _write(result, args.output if args.output is not None else _default_output(args.course, args.lab))
    print(f"{args.lab}: {len(result.pieces)} submissions, {len(result.tasks)} tasks; "
          f"pieces under {result.min_tokens} tokens are not compared.")
    for student, why in sorted(result.unreadable.items()):
        print(f"  unreadable: {student} ({why})")
    print(f"{len(result.pairs)} pairs at or above similarity {result.threshold:.2f}, for a person to review "
          "(a reason to look, never a verdict):")
    for p in result.pairs:
        if p.second.is_qlib:
            note = f"{p.first.tokens} tokens"
            if p.task in result.course_solution:
                note += f"; the course's solution scores {result.course_solution[p.task][0]:.2f} against qlib"
        else:
            note = f"{p.first.tokens} and {p.second.tokens} tokens"
        print(f"  {p.similarity:.2f}  {p.task:<28} {p.first.owner} ~ {p.second.owner}  ({note})")
    print(f"report: {path}")
    return 0
