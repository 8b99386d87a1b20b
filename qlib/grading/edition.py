"""The student edition: ``python -m qlib.grading.course student-edition DEST``.

Writes into ``DEST`` the folder students get, ready to publish as a git repository of its own:

* ``book/``, ``_config.yml``, ``_toc.yml``: the website's sources; with ``--site`` (the default)
  also ``docs/``, the website built by ``jupyter-book build`` on the exported folder (offline,
  against the exported ``qlib``; ready for GitHub Pages' "deploy from /docs");
* ``labs/``: the released lab notebooks (nbgrader's release directory);
* ``qlib/``: the course library, with the student's side of grading only;
* ``requirements.txt``, ``pyproject.toml``: the pinned environment, which installs ``qlib`` from the folder;
* ``README.md`` (from ``qlib/grading/student_readme.md``, with the repository URL of ``_config.yml``)
  and a ``.gitignore``.

Nothing else of the course directory is copied: no ``solutions/``, no ``tests/``, no
``nbgrader_config.py``, no gradebook or submissions. Of ``qlib/grading`` the edition keeps
:data:`STUDENT_MODULES` (what ``python -m qlib.grading.check`` and the labs' test cells use)
and the modules they import; the course secret and the instructor's commands
(:data:`INSTRUCTOR_ONLY`) must not be among them, and the export stops if one is.

**Hidden cases.** Each lab module's ``check_*(fn, seed=None)`` runs the visible cases, or with a
seed the hidden cases drawn from it (a check of a question or a design has no hidden cases and
takes no seed). The edition keeps what runs when ``seed`` is None, and only
that (:func:`visible_cases_only`, a partial evaluation on the module's text that keeps its layout
and comments): ``seed is None`` is true in every check and in every helper that receives the
check's ``seed``; a branch, conditional expression or boolean operand it decides is replaced by
the visible side; code after a statement that always leaves (``return``, ``raise``, ``fail(...)``)
is dropped; top-level definitions that only the hidden side used are dropped. Each check then
starts by refusing a seed with a clear error, and the module says ``HIDDEN_CASES = False``.
The export stops if ``seed`` is still used in any other way: the labs write the choice as
``if seed is None: ... else: ...`` or ``... if seed is None else ...``.
"""
from __future__ import annotations

import argparse
import ast
import collections
import functools
import io
import itertools
import os
import re
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

import nbformat
import yaml

#: Modules of ``qlib/grading`` the student edition keeps, with everything they import from it at module level.
STUDENT_MODULES = ("__init__", "check", "harness", "kernel", "kernel_side", "remote", "sandbox", "sealed", "wire")
#: Modules that must never be in the student edition: the course secret and the instructor's tools.
INSTRUCTOR_ONLY = ("secret", "course", "classroom", "lms", "report", "integrity", "edition")
#: Definitions of kept modules that belong to the course's grader (nbgrader preprocessors, hidden seeds).
GRADER_ONLY_DEFINITIONS = {"sealed": ("seeds_of", "RebuildFromSource", "SealedExecute")}
SITE_SOURCES = ("book", "_config.yml", "_toc.yml")
ENVIRONMENT_FILES = ("requirements.txt", "pyproject.toml")
README_TEMPLATE = Path(__file__).with_name("student_readme.md")
LAB_MODULE = re.compile(r"lab\d\d")
SKIPPED = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints", ".pytest_cache", ".DS_Store")

STUDENT_GITIGNORE = """\
.venv/
_build/
__pycache__/
*.pyc
.ipynb_checkpoints/
*.egg-info/
"""

EDITION_NOTE = {
    "lab": "In the student edition of the course this module has the visible cases only: each ``check_*``\n"
           "refuses a ``seed``, because the hidden cases are drawn by the course's grader alone.",
    "sealed": "In the student edition of the course this module holds what ``python -m qlib.grading.check``\n"
              "uses (the rebuild and the run of a notebook); the nbgrader preprocessors and the hidden\n"
              "seeds belong to the course's grader.",
    "__init__": "In the student edition of the course the checks have their visible cases only, and the\n"
                "course's grading tools are left out.",
}

VISIBLE_ONLY_GUARD = '''

#: This copy of the checks has the visible cases only (see the module docstring).
HIDDEN_CASES = False


def _visible_cases_only(check: str, seed) -> None:
    """Refuse hidden cases: the course's grader alone draws them."""
    if seed is not None:
        raise RuntimeError(f"{check}(..., seed={seed!r}): the hidden cases are drawn only by the course's grader; "
                           f"this copy of qlib checks the visible cases. Call {check} without a seed.")

'''


class ExportError(RuntimeError):
    """The student edition cannot be made as things are (the message says what to change)."""


# --- where the course is -------------------------------------------------------------------------------

def course_settings(course_root: Path) -> dict:
    return yaml.safe_load((Path(course_root) / "_config.yml").read_text()) or {}


def repository_url(course_root: Path) -> str:
    """The URL of the student repository: ``repository: url:`` in ``_config.yml``."""
    url = (course_settings(course_root).get("repository") or {}).get("url")
    if not url:
        raise ExportError("_config.yml names no student repository: set `repository: url:` to the URL students "
                          "clone the course from.")
    return url.removesuffix("/")


# --- source text addressed by AST positions -------------------------------------------------------------

class _Text:
    """A module's text, with the AST's (line, byte column) positions turned into string offsets."""

    def __init__(self, source: str):
        self.source = source
        self.lines = source.split("\n")
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line) + 1)

    def offset(self, lineno: int, col: int) -> int:
        return self.starts[lineno - 1] + len(self.lines[lineno - 1].encode()[:col].decode())

    def span(self, node) -> tuple[int, int]:
        return self.offset(node.lineno, node.col_offset), self.offset(node.end_lineno, node.end_col_offset)

    def segment(self, node) -> str:
        start, end = self.span(node)
        return self.source[start:end]

    def line_span(self, first: int, last: int) -> tuple[int, int]:
        """Offsets of whole lines ``first`` .. ``last`` (1-based), newline included."""
        return self.starts[first - 1], min(self.starts[last], len(self.source))

    @functools.cached_property
    def string_interior_lines(self) -> set[int]:
        """Lines inside a multi-line string literal (their indentation belongs to the string)."""
        inside, fstrings = set(), []
        for tok in tokenize.generate_tokens(io.StringIO(self.source).readline):
            if tok.type == getattr(tokenize, "FSTRING_START", None):  # Python 3.12 splits f-strings up
                fstrings.append(tok.start[0])
            elif tok.type == getattr(tokenize, "FSTRING_END", None):
                inside.update(range(fstrings.pop() + 1, tok.end[0] + 1))
            elif tok.type == tokenize.STRING and tok.end[0] > tok.start[0]:
                inside.update(range(tok.start[0] + 1, tok.end[0] + 1))
        return inside

    def dedented(self, first: int, last: int, by: int) -> str:
        """Lines ``first`` .. ``last`` with ``by`` columns of indentation removed."""
        keep = self.string_interior_lines
        out = []
        for n in range(first, last + 1):
            line = self.lines[n - 1]
            if n not in keep:
                cut = min(by, len(line) - len(line.lstrip(" ")))
                line = line[cut:]
            out.append(line + "\n")
        return "".join(out)


def _is_seed(node) -> bool:
    return isinstance(node, ast.Name) and node.id == "seed"


def _is_const(node, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _parents(tree) -> dict:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _arg_names(fn) -> list[str]:
    return [a.arg for a in fn.args.posonlyargs + fn.args.args]


def _seed_default_is_none(fn) -> bool:
    names = _arg_names(fn)
    if "seed" not in names:
        return False
    defaults = fn.args.defaults
    index = names.index("seed") - (len(names) - len(defaults))
    return index >= 0 and _is_const(defaults[index], None)


def _seed_argument(call: ast.Call, fn):
    """What ``call`` passes for ``fn``'s ``seed`` parameter: a node, "default", or None if unknown."""
    for kw in call.keywords:
        if kw.arg == "seed":
            return kw.value
        if kw.arg is None:
            return None
    position = _arg_names(fn).index("seed")
    if any(isinstance(a, ast.Starred) for a in call.args[:position + 1]):
        return None
    if position < len(call.args):
        return call.args[position]
    return "default" if _seed_default_is_none(fn) else None


def _top_functions(tree) -> dict:
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}


def _enclosing_top(node, parents):
    while node in parents and not isinstance(parents[node], ast.Module):
        node = parents[node]
    return node if node in parents else None


def _folded_functions(tree, parents) -> set[str]:
    """Top-level functions whose ``seed`` is always None in the edition.

    Every public ``check_*`` (it refuses any other seed), and every function with a ``seed``
    parameter that is only ever called with None there, or with the ``seed`` of a folded function.
    """
    functions = {name: fn for name, fn in _top_functions(tree).items() if "seed" in _arg_names(fn)}
    folded = set(functions)
    uses: dict[str, list] = {name: [] for name in functions}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in functions and isinstance(node.ctx, ast.Load):
            uses[node.id].append(node)
    changed = True
    while changed:
        changed = False
        for name in sorted(folded):
            if name.startswith("check_"):
                continue
            for use in uses[name]:
                call = parents.get(use)
                ok = isinstance(call, ast.Call) and call.func is use
                if ok:
                    arg = _seed_argument(call, functions[name])
                    caller = getattr(_enclosing_top(call, parents), "name", None)
                    ok = arg == "default" or _is_const(arg, None) or (_is_seed(arg) and caller in folded)
                if not ok:
                    folded.discard(name)
                    changed = True
                    break
    return folded


def _scope(fn):
    """The nodes of ``fn``'s body in which ``seed`` is ``fn``'s (nested functions that rebind it are left out)."""
    todo = collections.deque(fn.body)
    while todo:
        node = todo.popleft()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and "seed" in _arg_names(node):
            continue
        yield node
        todo.extend(ast.iter_child_nodes(node))


def _statement_lists(node):
    for field in ("body", "orelse", "finalbody"):
        value = getattr(node, field, None)
        if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
            yield value
    for handler in getattr(node, "handlers", []):
        yield handler.body


def _in_test(node, parents) -> bool:
    """``node``'s value only matters as true or false (an ``if``/``while``/``assert`` test)."""
    parent = parents.get(node)
    if isinstance(parent, (ast.If, ast.While, ast.IfExp, ast.Assert)) and parent.test is node:
        return True
    if isinstance(parent, ast.BoolOp) or (isinstance(parent, ast.UnaryOp) and isinstance(parent.op, ast.Not)):
        return _in_test(parent, parents)
    return False


_LOW_PRECEDENCE = (ast.BoolOp, ast.IfExp, ast.Lambda, ast.NamedExpr)


def _wrapped(text: _Text, node) -> str:
    segment = text.segment(node)
    return f"({segment})" if isinstance(node, _LOW_PRECEDENCE) else segment


def _ifexp_side(text: _Text, node: ast.IfExp, keep_body: bool) -> str:
    """The text of one side of ``a if test else b``, with the parentheses it was written with."""
    start, end = text.span(node)
    test_start, test_end = text.span(node.test)
    if keep_body:
        match = re.fullmatch(r"(.*?)\s*(?:\\\n\s*)*if\s*", text.source[start:test_start], re.S)
        return match.group(1) if match else _wrapped(text, node.body)
    match = re.match(r"\s*(?:\\\n\s*)*else\b(?:\s|\\\n)*", text.source[test_end:end], re.S)
    return text.source[test_end + match.end():end] if match else _wrapped(text, node.orelse)


def _terminal(stmt, terminal_calls) -> bool:
    if isinstance(stmt, (ast.Return, ast.Raise, ast.Continue, ast.Break)):
        return True
    return (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
            and isinstance(stmt.value.func, ast.Name) and stmt.value.func.id in terminal_calls)


def _terminal_calls(tree) -> set[str]:
    """``fail`` when the module takes it from the harness (it always raises)."""
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "qlib.grading.harness":
            if any(alias.name == "fail" and alias.asname in (None, "fail") for alias in node.names):
                return {"fail"}
    return set()


def _expression_edit(node, text: _Text, parents):
    """(start, end, replacement) folding one expression of a check, or None."""
    if isinstance(node, ast.Compare) and _is_seed(node.left) and len(node.ops) == 1 \
            and _is_const(node.comparators[0], None) and isinstance(node.ops[0], (ast.Is, ast.IsNot)):
        return (*text.span(node), "True" if isinstance(node.ops[0], ast.Is) else "False")
    if isinstance(node, ast.IfExp) and isinstance(node.test, ast.Constant) and isinstance(node.test.value, bool):
        return (*text.span(node), _ifexp_side(text, node, node.test.value))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not) and isinstance(node.operand, ast.Constant) \
            and isinstance(node.operand.value, bool):
        return (*text.span(node), str(not node.operand.value))
    if isinstance(node, ast.BoolOp):
        is_and = isinstance(node.op, ast.And)
        values = node.values
        if _is_seed(values[0]) and not is_and:  # None or x  ->  x
            values = values[1:]
        elif isinstance(values[0], ast.Constant) and isinstance(values[0].value, bool) and values[0].value != is_and:
            return (*text.span(node), str(values[0].value))  # False and ..., True or ...
        else:
            neutral = [i for i, v in enumerate(values) if _is_const(v, is_and)]
            if neutral and neutral[-1] == len(values) - 1 and not _in_test(node, parents):
                neutral.pop()  # "x and True" is x only where just its truth counts
            if not neutral:
                return None
            values = [v for i, v in enumerate(values) if i not in neutral]
        if not values:
            return (*text.span(node), str(is_and))
        if len(values) == 1:
            return (*text.span(node), _wrapped(text, values[0]))
        return (*text.span(node), (" and " if is_and else " or ").join(_wrapped(text, v) for v in values))
    return None


def _if_edit(stmt: ast.If, text: _Text, parents, module: str):
    """(start, end, replacement) keeping the side of an ``if True:`` / ``if False:`` that runs."""
    indent = stmt.col_offset
    start, end = text.line_span(stmt.lineno, stmt.end_lineno)
    if stmt.body[0].lineno == stmt.test.end_lineno or text.lines[stmt.lineno - 1].lstrip().startswith("elif"):
        raise ExportError(f"{module}.py:{stmt.lineno}: write the choice between visible and hidden cases as an "
                          "`if seed is None:` of its own (not an `elif`), its body on lines of its own")
    if stmt.test.value:
        last = stmt.body[-1].end_lineno
        return start, end, text.dedented(stmt.test.end_lineno + 1, last, stmt.body[0].col_offset - indent)
    if not stmt.orelse:
        siblings = next(lst for lst in _statement_lists(parents[stmt]) if stmt in lst)
        return start, end, (" " * indent + "pass\n" if len(siblings) == 1 else "")
    first = stmt.orelse[0]
    if isinstance(first, ast.If) and text.lines[first.lineno - 1].lstrip().startswith("elif"):
        rest = text.dedented(first.lineno, stmt.end_lineno, 0)
        return start, end, rest.replace("elif", "if", 1)
    else_line = next(n for n in range(stmt.body[-1].end_lineno + 1, first.lineno)
                     if re.match(r"\s*else\s*:", text.lines[n - 1]))
    return start, end, text.dedented(else_line + 1, stmt.orelse[-1].end_lineno, first.col_offset - indent)


def _folds(tree, text: _Text, module: str) -> list:
    """Edits (start, end, replacement) that fold the checks one step: at most one per function."""
    parents = _parents(tree)
    folded = _folded_functions(tree, parents)
    terminal_calls = _terminal_calls(tree)
    edits = []
    for name, fn in _top_functions(tree).items():
        if name not in folded:
            continue
        for node in itertools.chain([fn], _scope(fn)):
            edit = _expression_edit(node, text, parents) if isinstance(node, ast.expr) else None
            if edit is None and isinstance(node, ast.If) and isinstance(node.test, ast.Constant) \
                    and isinstance(node.test.value, bool):
                edit = _if_edit(node, text, parents, module)
            if edit is None and isinstance(node, ast.stmt):
                for stmts in _statement_lists(node):
                    ends = [i for i, s in enumerate(stmts[:-1]) if _terminal(s, terminal_calls)]
                    if ends:
                        dead_from = stmts[ends[0] + 1]
                        if dead_from.lineno == stmts[ends[0]].end_lineno:
                            raise ExportError(f"{module}.py:{dead_from.lineno}: one statement per line, please")
                        edit = (*text.line_span(dead_from.lineno, stmts[-1].end_lineno), "")
                        break
            if edit is not None:
                edits.append(edit)
                break
    return edits


def _loads(tree) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            counts[node.id] = counts.get(node.id, 0) + 1
    return counts


def _definitions(tree) -> dict:
    """name -> top-level statement defining it (functions, classes, plain assignments)."""
    found = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if len(targets) == 1 and isinstance(targets[0], ast.Name):
                found[targets[0].id] = node
    return found


def _used_definitions(tree) -> set[str]:
    """Top-level names loaded somewhere outside their own definition."""
    everywhere = _loads(tree)
    return {name for name, node in _definitions(tree).items()
            if everywhere.get(name, 0) > _loads(node).get(name, 0)}


def remove_definitions(source: str, names) -> str:
    """``source`` without the top-level definitions of ``names`` (and the comment lines right above them)."""
    for name in names:
        tree = ast.parse(source)
        node = _definitions(tree).get(name)
        if node is None:
            continue
        text = _Text(source)
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        while first > 1 and text.lines[first - 2].startswith("#"):
            first -= 1
        last = node.end_lineno
        while last < len(text.lines) and not text.lines[last].strip():
            last += 1  # and the blank lines after it
        start, end = text.line_span(first, last)
        source = source[:start] + source[end:]
    return _tidy(source)


def _tidy(source: str) -> str:
    """At most two blank lines in a row, and no comment lines left dangling at the end."""
    source = re.sub(r"\n{4,}", "\n\n\n", source)
    lines = source.rstrip("\n").split("\n")
    while lines and (lines[-1].startswith("#") or not lines[-1].strip()):
        lines.pop()
    return "\n".join(lines) + "\n"


def _add_to_docstring(source: str, note: str) -> str:
    tree = ast.parse(source)
    doc = tree.body[0] if tree.body and isinstance(tree.body[0], ast.Expr) \
        and isinstance(tree.body[0].value, ast.Constant) and isinstance(tree.body[0].value.value, str) else None
    if doc is None:
        return f'"""{note}\n"""\n' + source
    text = _Text(source)
    start, end = text.span(doc)
    body, quotes = source[start:end - 3], source[end - 3:end]
    if quotes not in ('"""', "'''"):
        raise ExportError("a module docstring in triple quotes was expected")
    body = body + ("\n" if body.endswith("\n") else "\n\n") + note + "\n"
    return source[:start] + body + quotes + source[end:]


def visible_cases_only(source: str, module: str, used_elsewhere=frozenset()) -> str:
    """A lab module's text keeping only what its checks run without a seed (see the module docstring).

    ``used_elsewhere``: names other files take from the module (kept even if the module stops using them).
    """
    before = _used_definitions(ast.parse(source))
    while True:
        while edits := _folds(ast.parse(source), _Text(source), module):
            for start, end, replacement in sorted(edits, reverse=True):
                source = source[:start] + replacement + source[end:]
        tree = ast.parse(source)
        used = _used_definitions(tree)
        unused = [name for name in _definitions(tree) if name in before and name not in used
                  and not name.startswith("check_") and name not in used_elsewhere]
        if not unused:
            break
        source = remove_definitions(source, unused)
    _verify_visible_only(ast.parse(source), module)
    return _add_guards(_tidy(source), module)


def _verify_visible_only(tree, module: str) -> None:
    """Stop the export if anything but the visible side could still depend on ``seed``."""
    parents = _parents(tree)
    folded = _folded_functions(tree, parents)
    functions = _top_functions(tree)
    for name, fn in functions.items():
        if name not in folded:
            continue
        for node in ast.walk(fn):
            if not _is_seed(node) or not isinstance(node.ctx, ast.Load):
                continue
            call = parents.get(node)
            callee = getattr(getattr(call, "func", None), "id", None)
            if isinstance(call, ast.Call) and callee in folded and _seed_argument(call, functions[callee]) is node:
                continue
            raise ExportError(
                f"{module}.py:{node.lineno}: `seed` is used here in a way the student edition cannot separate from "
                "the visible cases. Write the choice as `if seed is None: <visible> else: <hidden>` or "
                "`<visible> if seed is None else <hidden>`.")
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and _is_seed(node.left):
            raise ExportError(f"{module}.py:{node.lineno}: a function called with a seed still chooses between "
                              "visible and hidden cases; give it the check's own `seed` (or None).")
    missing = [n for n, fn in functions.items() if n.startswith("check_") and "seed" in _arg_names(fn)
               and not _seed_default_is_none(fn)]
    if missing:
        raise ExportError(f"{module}.py: {', '.join(missing)} should take `seed=None`")


def _add_guards(source: str, module: str) -> str:
    """Each check refuses a seed first thing; the module says it has the visible cases only."""
    tree = ast.parse(source)
    text = _Text(source)
    inserts = []
    for name, fn in _top_functions(tree).items():
        if not name.startswith("check_") or "seed" not in _arg_names(fn):
            continue  # a question's check has no hidden cases: nothing to refuse
        first = fn.body[0]
        has_doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
            and isinstance(first.value.value, str)
        at = text.line_span(first.end_lineno + 1, first.end_lineno + 1)[0] if has_doc else \
            text.line_span(first.lineno, first.lineno)[0]
        indent = " " * (fn.body[1 if has_doc and len(fn.body) > 1 else 0].col_offset)
        inserts.append((at, f'{indent}_visible_cases_only("{name}", seed)\n'))
    last_import = None
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            last_import = node
        elif not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
            break
    if last_import is None:
        raise ExportError(f"{module}.py: no imports to put the edition's guard after")
    inserts.append((text.line_span(last_import.end_lineno, last_import.end_lineno)[1], VISIBLE_ONLY_GUARD))
    for at, insert in sorted(inserts, reverse=True):
        source = source[:at] + insert + source[at:]
    return _add_to_docstring(_tidy(source), EDITION_NOTE["lab"])


# --- which grading modules the edition holds ------------------------------------------------------------

def _grading_imports(source: str) -> set[str]:
    """``qlib.grading`` modules that ``source`` imports when it is imported (not inside a function)."""
    found = set()
    todo = list(ast.parse(source).body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.ImportFrom) and node.module == "qlib.grading":
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("qlib.grading."):
            found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[2] for a in node.names if a.name.startswith("qlib.grading."))
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(node))
    return found


def student_grading_modules(grading: Path) -> list[str]:
    """The ``qlib/grading`` modules of the edition: :data:`STUDENT_MODULES`, the labs, and what they import."""
    todo = list(STUDENT_MODULES) + sorted(p.stem for p in grading.glob("lab*.py") if LAB_MODULE.fullmatch(p.stem))
    kept: list[str] = []
    while todo:
        name = todo.pop(0)
        if name in kept:
            continue
        if name in INSTRUCTOR_ONLY:
            importer = next(k for k in kept if name in _grading_imports((grading / f"{k}.py").read_text()))
            raise ExportError(f"qlib/grading/{importer}.py imports {name} at module level, and {name} is not for "
                              "students: import it inside the function that needs it.")
        if not (grading / f"{name}.py").exists():
            raise ExportError(f"qlib/grading/{name}.py is missing")
        kept.append(name)
        todo.extend(sorted(_grading_imports((grading / f"{name}.py").read_text())))
    return kept


# --- the export ------------------------------------------------------------------------------------------

def _prepare(dest: Path, course_root: Path, force: bool) -> None:
    dest, course_root = dest.resolve(), course_root.resolve()
    if dest == course_root or dest in course_root.parents or course_root in dest.parents:
        raise ExportError(f"{dest} is not outside the course directory {course_root}; the student edition is a "
                          "repository of its own: choose a folder outside it")
    if dest.exists() and not dest.is_dir():
        raise ExportError(f"{dest} is a file")
    existing = [p for p in dest.iterdir() if p.name != ".git"] if dest.exists() else []
    if existing and not force:
        raise ExportError(f"{dest} is not empty; add --force to replace its contents (its .git is kept)")
    for path in existing:
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    dest.mkdir(parents=True, exist_ok=True)


def _copy_labs(course_root: Path, dest: Path) -> list[Path]:
    labs = sorted(p for p in (course_root / "labs").iterdir() if p.is_dir())
    copied = []
    for lab in labs:
        for notebook in sorted(lab.glob("*.ipynb")):
            nb = nbformat.read(notebook, as_version=4)
            for cell in nb.cells:
                if cell.cell_type == "code":
                    cell.outputs, cell.execution_count = [], None
            target = dest / "labs" / lab.name / notebook.name
            target.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, target)
            copied.append(target)
    return copied


def names_used_from(module: str, text: str) -> set[str]:
    """Names that ``text`` (notebooks, other modules) takes from ``qlib.grading.<module>``."""
    names = set(re.findall(rf"\b(?:grader|{module})\.(\w+)", text))
    for imported in re.findall(rf"from qlib\.grading\.{module} import (?:\(([^)]*)\)|([\w ,]+))", text):
        imported = "".join(imported)
        names.update(n.split(" as ")[0].strip() for n in imported.split(",") if n.strip())
    return names


def _copy_qlib(course_root: Path, dest: Path, mentioned: str, log) -> None:
    source, target = course_root / "qlib", dest / "qlib"
    target.mkdir(parents=True)
    for path in sorted(source.glob("*.py")):
        shutil.copy2(path, target / path.name)
    if (source / "checkpoints").is_dir():
        shutil.copytree(source / "checkpoints", target / "checkpoints", ignore=SKIPPED)
    grading = source / "grading"
    (target / "grading").mkdir()
    kept = student_grading_modules(grading)
    texts = {name: (grading / f"{name}.py").read_text() for name in kept}
    for name in kept:
        text = texts[name]
        if name in GRADER_ONLY_DEFINITIONS:
            text = _add_to_docstring(remove_definitions(text, GRADER_ONLY_DEFINITIONS[name]), EDITION_NOTE[name])
        if name == "__init__":
            text = _add_to_docstring(text, EDITION_NOTE[name])
        if LAB_MODULE.fullmatch(name):
            others = mentioned + "".join(t for n, t in texts.items() if n != name)
            text = visible_cases_only(text, name, names_used_from(name, others))
        compile(text, f"qlib/grading/{name}.py", "exec")
        (target / "grading" / f"{name}.py").write_text(text)
    left_out = sorted(p.stem for p in grading.glob("*.py") if p.stem not in kept)
    log(f"qlib/grading: {len(kept)} modules; left out: {', '.join(left_out)}")


def _pyproject(text: str) -> str:
    """``pyproject.toml`` without the course's own test settings."""
    return re.sub(r"\n\[tool\.pytest[^\]]*\]\n(?:(?!\[).*\n?)*", "\n", text).rstrip("\n") + "\n"


def _lab_titles(labs: list[Path]) -> list[tuple[str, str]]:
    titles = []
    for path in labs:
        nb = nbformat.read(path, as_version=4)
        heading = next((line for c in nb.cells if c.cell_type == "markdown" for line in c.source.splitlines()
                        if line.startswith("# ")), "# " + path.stem)
        titles.append((path.stem, heading[2:].strip()))
    return titles


def student_readme(course_root: Path, labs: list[Path], with_site: bool) -> str:
    """The student README, from :data:`README_TEMPLATE`."""
    settings = course_settings(course_root)
    table = "\n".join(f"| `{name}` | {title} | `labs/{name}/{name}.ipynb` |" for name, title in _lab_titles(labs))
    first = labs[0].stem if labs else "lab01"
    site = ("`docs/` holds the built website: open `docs/index.html` in a browser (it needs no network)."
            if with_site else "Build the website with `.venv/bin/jupyter-book build .` and open "
                              "`_build/html/index.html` in a browser (it needs no network).")
    values = {"title": settings.get("title", "The course"), "repository_url": repository_url(course_root),
              "labs_table": table, "first_lab": first, "website": site}
    text = README_TEMPLATE.read_text()
    for key, value in values.items():
        text = text.replace("{{ " + key + " }}", value)
    if "{{" in text:
        raise ExportError(f"{README_TEMPLATE.name}: unknown placeholder {re.search(r'{{.*?}}', text).group()}")
    return text


def build_website(dest: Path, log, course_root: Path | None = None) -> None:
    """``jupyter-book build`` on the exported folder (offline), the HTML moved to ``docs/``.

    The chapters run against the exported ``qlib``. When the course's own site has been built, its
    execution cache is reused: a chapter whose code has not changed is not run again.
    """
    if course_root is not None and (course_root / "_build" / ".jupyter_cache").is_dir():
        shutil.copytree(course_root / "_build" / ".jupyter_cache", dest / "_build" / ".jupyter_cache")
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(dest)] + os.environ.get("PYTHONPATH", "").split(
        os.pathsep)).rstrip(os.pathsep)}  # the chapters import the exported qlib
    log("building the website (several minutes) ...")
    done = subprocess.run([str(jupyter_book), "build", "-W", "--keep-going", str(dest)], env=env, cwd=dest,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise ExportError(f"the website did not build:\n{(done.stdout + done.stderr)[-4000:]}")
    shutil.move(str(dest / "_build" / "html"), str(dest / "docs"))
    (dest / "docs" / ".nojekyll").write_text("")  # GitHub Pages: serve _static/ and friends as they are
    shutil.rmtree(dest / "_build")


#: A solution or hidden-test region of a notebook cell: nbgrader's markers, each on a line of its own.
REGION_MARKER = re.compile(r'^[\s"]*### (?:BEGIN|END) (?:SOLUTION|HIDDEN TESTS)', re.M)


def audit(dest: Path) -> list[str]:
    """What should not be in a student edition, found in ``dest`` (empty when all is well)."""
    problems = []
    for name in ("solutions", "tests", "nbgrader_config.py", "gradebook.db", "submitted", "autograded",
                 "feedback", "grading_records", "grades.csv", "qlib/grading/secret.py"):
        if (dest / name).exists():
            problems.append(f"{name} is in the edition")
    for path in dest.rglob("*"):
        if ".git" in path.relative_to(dest).parts or not path.is_file() or path.suffix in (".pt", ".png", ".woff2"):
            continue
        text = path.read_bytes().decode(errors="ignore")
        if REGION_MARKER.search(text):
            problems.append(f"{path.relative_to(dest)} has a solution or hidden-test region")
        if path.suffix in (".ipynb", ".md") and "HIDDEN_SEED" in text:
            problems.append(f"{path.relative_to(dest)} calls a check with the hidden seed")
    return problems


def export_student_edition(course_root, dest, build_site: bool = True, force: bool = False, log=print) -> Path:
    """Write the student edition of the course at ``course_root`` into ``dest``; returns ``dest``."""
    course_root, dest = Path(course_root).resolve(), Path(dest).resolve()
    if not (course_root / "labs").is_dir() or not (course_root / "qlib" / "grading").is_dir():
        raise ExportError(f"{course_root} is not the course directory (no labs/ or qlib/grading/)")
    repository_url(course_root)
    _prepare(dest, course_root, force)
    for name in SITE_SOURCES + ENVIRONMENT_FILES:
        source = course_root / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=SKIPPED)
        else:
            shutil.copy2(source, dest / name)
    (dest / "pyproject.toml").write_text(_pyproject((dest / "pyproject.toml").read_text()))
    labs = _copy_labs(course_root, dest)
    mentioned = "".join(p.read_text() for p in labs) + "".join(p.read_text() for p in (dest / "book").rglob("*.md"))
    _copy_qlib(course_root, dest, mentioned, log)
    (dest / "README.md").write_text(student_readme(course_root, labs, build_site))
    (dest / ".gitignore").write_text(STUDENT_GITIGNORE)
    if build_site:
        build_website(dest, log, course_root)
    problems = audit(dest)
    if problems:
        raise ExportError("the student edition is not clean:\n  " + "\n  ".join(problems))
    log(f"student edition written to {dest}")
    return dest


# --- command line ----------------------------------------------------------------------------------------

def run(args) -> int:
    try:
        export_student_edition(args.course, args.dest, build_site=args.site, force=args.force)
    except ExportError as err:
        print(f"student-edition: {err}", file=sys.stderr)
        return 1
    return 0


def register(commands) -> None:
    cmd = commands.add_parser(
        "student-edition", help="the folder students get, without solutions",
        description="Write what students get (website, labs, qlib without hidden cases, README) into DEST, "
                    "ready to publish as its own git repository.")
    cmd.add_argument("dest", type=Path, help="the folder to write (e.g. a clone of the student repository)")
    cmd.add_argument("--course", type=Path, default=Path("."), help="course directory (default: here)")
    cmd.add_argument("--site", action=argparse.BooleanOptionalAction, default=True,
                     help="build the website into DEST/docs (default; takes several minutes)")
    cmd.add_argument("--force", action="store_true", help="replace the contents of DEST (its .git is kept)")
    cmd.set_defaults(run=run)
