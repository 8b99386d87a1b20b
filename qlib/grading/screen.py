"""Screen a submission's solution cells before the autograder runs them.

An nbgrader preprocessor, run in the grader's own process (out of reach of the
notebook), after nbgrader has restored the locked cells. A solution cell is
not run, and is replaced by a cell that raises an error explaining why, if it:

* imports ``qlib`` or uses the grading objects of the set-up cell (the lab's
  answers must be the student's own);
* assigns to, or deletes, an attribute of an imported module
  (``torch.equal = ...``, ``np.allclose = ...``): checks must not be patched;
* reaches for the interpreter's machinery (``setattr``, ``exec``, ``eval``,
  ``globals``, ``sys``, ``importlib``, ``__dict__`` and the like), or imports
  a module outside the short list that the labs need.

The questions whose functions lived in a rejected cell then fail their tests
with a "not defined" error; every other question is graded as usual.
"""
from __future__ import annotations

import ast

from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import List, Unicode

ALLOWED_IMPORTS = ("math", "numpy", "torch", "copy", "itertools", "functools", "collections",
                   "typing", "numbers", "dataclasses", "matplotlib", "heapq", "statistics", "fractions")
FORBIDDEN_NAMES = ("qlib", "grader", "setattr", "delattr", "exec", "eval", "compile", "globals", "locals",
                   "vars", "__import__", "__builtins__", "get_ipython", "sys", "importlib", "builtins",
                   "gc", "inspect", "ctypes", "open", "breakpoint")
FORBIDDEN_ATTRIBUTES = ("__dict__", "__code__", "__globals__", "__setattr__", "__delattr__", "__builtins__",
                        "__closure__", "__wrapped__", "__subclasses__", "__import__", "__func__", "__self__",
                        "f_globals", "f_locals", "f_back")


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _imported_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.update(a.asname or a.name for a in node.names)
    return names


def python_source(cell_source: str) -> str:
    """The cell as plain Python (IPython magics become ``get_ipython()`` calls)."""
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(cell_source)


def problems(source: str, module_names: set[str]) -> list[str]:
    """Why a solution cell may not run; empty when it is fine.

    ``module_names`` are the names bound by imports anywhere in the notebook.
    """
    try:
        tree = ast.parse(python_source(source))
    except SyntaxError:
        return []  # Python itself will report the syntax error when the cell runs
    found = []
    modules = module_names | _imported_names(tree)
    for node in ast.walk(tree):
        line = getattr(node, "lineno", "?")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for mod in mods:
                if mod.split(".")[0] not in ALLOWED_IMPORTS:
                    found.append(f"line {line} imports {mod}: solution cells may import only "
                                 f"{', '.join(ALLOWED_IMPORTS)}")
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES:
            found.append(f"line {line} uses {node.id}")
        elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_ATTRIBUTES:
            found.append(f"line {line} uses .{node.attr}")
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for target in targets:
                for t in ast.walk(target):
                    if isinstance(t, (ast.Attribute, ast.Subscript)) and _root_name(t) in modules:
                        found.append(f"line {line} changes {ast.unparse(t)}, part of the library "
                                     f"{_root_name(t)}")
                        break
    return found


class ScreenSubmission(NbGraderPreprocessor):
    """Replace solution cells that would tamper with grading by a cell that explains why."""

    message = Unicode(
        "raise RuntimeError({text!r})",
        help="Source of the replacement cell; {text} is the explanation.",
    ).tag(config=True)
    extra_module_names = List(Unicode(), default_value=[], help="Names always treated as modules.").tag(config=True)

    def preprocess(self, nb, resources):
        modules = set(self.extra_module_names)
        for cell in nb.cells:
            if cell.cell_type == "code":
                try:
                    modules |= _imported_names(ast.parse(python_source(cell.source)))
                except SyntaxError:
                    pass
        for cell in nb.cells:
            meta = cell.metadata.get("nbgrader", {})
            if cell.cell_type != "code" or not meta.get("solution", False):
                continue
            found = problems(cell.source, modules)
            if found:
                text = ("The autograder did not run this cell: " + "; ".join(dict.fromkeys(found))
                        + ". Write the answer with your own code (torch, numpy, math), then resubmit.")
                self.log.warning("cell %s rejected: %s", meta.get("grade_id"), text)
                cell.source = self.message.format(text=text)
        return nb, resources
