"""Check your own lab notebook with the grader's own pipeline.

    python -m qlib.grading.check lab03_linear_quantization.ipynb

Your notebook is rebuilt on the released lab (its set-up and test cells), run
in the same sandbox the grader uses (or, on a machine without bubblewrap, in a
plain local kernel), and every test cell is evaluated the way grading
evaluates it, on the visible cases. For each task it prints the verdict and
the whole hint. Grading adds hidden cases, drawn afresh for each submission:
passing here means your function is right on the visible cases, not that you
have seen the graded inputs.

In the student edition of the course the lab checks have their visible cases
only. In the course's own repository, where they can draw hidden cases, each
test cell also runs on *practice* cases: drawn like the hidden ones, but from
public seeds.
"""
from __future__ import annotations

import argparse
import ast
import inspect
import os
import sys
import zlib
from pathlib import Path

import nbformat
from nbgrader.utils import determine_grade

from qlib.grading import sandbox, sealed


def _draws_cases(checks, name: str) -> bool:
    """Whether the check ``name`` draws cases from a seed (a question's check has no cases to draw)."""
    check = getattr(checks, name, None)
    return checks is None or check is not None and "seed" in inspect.signature(check).parameters


def practice_source(source: str, checks=None) -> str:
    """The test cell with each visible ``grader.check_*(...)`` call that draws cases run again on practice cases."""
    tree = ast.parse(source)
    body = []
    for stmt in tree.body:
        body.append(stmt)
        call = stmt.value if isinstance(stmt, ast.Expr) else None
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                and isinstance(call.func.value, ast.Name) and call.func.value.id == "grader"
                and call.func.attr.startswith("check_") and not any(k.arg == "seed" for k in call.keywords)
                and _draws_cases(checks, call.func.attr)):
            again = ast.Call(call.func, call.args, call.keywords + [
                ast.keyword("seed", ast.Name("HIDDEN_SEED", ast.Load()))])
            body.append(ast.Expr(again))
    return ast.unparse(ast.fix_missing_locations(ast.Module(body, [])))


def practice_seed(grade_id: str) -> int:
    """A public seed per test cell (the graded seeds are secret)."""
    return zlib.crc32(f"practice:{grade_id}".encode()) & 0x7FFFFFFF


def has_practice_cases(checks) -> bool:
    """Whether a lab's checks can draw cases from a seed (not in the student edition: ``HIDDEN_CASES = False``)."""
    return getattr(checks, "HIDDEN_CASES", True)


def released_notebook(lab: str) -> Path | None:
    """The released lab next to the installed ``qlib`` (a clone of the course repository), if there is one."""
    import qlib

    path = Path(qlib.__file__).resolve().parents[1] / "labs" / lab / f"{lab}.ipynb"
    return path if path.exists() else None


def _report(nb) -> tuple[int, int, list[str]]:
    lines, earned, total = [], 0, 0
    for cell in nb.cells:
        if not sealed.is_test_cell(cell):
            continue
        meta = cell.metadata["nbgrader"]
        points = int(meta.get("points", 0))
        total += points
        errors = [o for o in cell.outputs if o.output_type == "error"]
        printed = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
        got = 0 if errors else determine_grade(cell)[0]  # nbgrader's rule, partial credit included
        verdict = "FAIL" if errors else "pass" if got == points else "part"
        earned += got
        lines.append(f"[{verdict}] {meta['grade_id']} ({f'{got:g} of ' if verdict == 'part' else ''}"
                     f"{points} point{'s' if points != 1 else ''})")
        for text in [printed.rstrip()] + [str(o.get("evalue", "")) for o in errors]:
            text = text.replace("A hidden check failed", "A practice check failed").replace(
                "hidden checks passed", "practice checks passed")
            lines.extend("    " + line for line in text.splitlines() if line.strip())
    return earned, total, lines


def check(path: Path, lab: str | None = None) -> int:
    """Check the notebook at ``path``; prints the report and returns the number of failed tasks."""
    lab = lab or path.stem
    submitted = nbformat.read(path, as_version=4)
    source_path = released_notebook(lab)
    if source_path is None:
        print(f"(the released {lab} was not found beside qlib; using the test cells of your own notebook)")
    nb = sealed.rebuild(nbformat.read(source_path, as_version=4) if source_path else submitted, submitted)
    checks = sealed.lab_module(lab)
    practice = has_practice_cases(checks)
    if practice:
        for cell in nb.cells:
            if sealed.is_test_cell(cell):
                cell.source = practice_source(cell.source, checks)
    if not sandbox.unsandboxed() and not sandbox.bubblewrap_path():
        print("(bubblewrap is not installed: your notebook runs in a plain local kernel, which is fine for "
              "your own work)")
        os.environ[sandbox.UNSANDBOXED_ENV] = "1"
    cases = "visible and practice cases" if practice else "visible cases only"
    print(f"Checking {path} as {lab} ({cases}) ...", flush=True)
    sealed.run_notebook(nb, checks, practice_seed if practice else lambda grade_id: None)
    earned, total, lines = _report(nb)
    print("\n".join(lines))
    failed = sum(line.startswith("[FAIL]") for line in lines)
    print(f"\n{earned:g} of {total} points on these checks ({cases}); {failed} task{'s' if failed != 1 else ''} "
          "to fix.")
    if not practice:
        print("Grading also runs hidden cases, drawn afresh for each submission: make your functions right for "
              "every input the task describes, not only for these.")
    return failed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qlib.grading.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook", type=Path, help="your lab notebook, e.g. lab03_linear_quantization.ipynb")
    parser.add_argument("--lab", help="the lab's name, when the file was renamed (e.g. lab03_linear_quantization)")
    args = parser.parse_args(argv)
    if not args.notebook.exists():
        parser.error(f"{args.notebook} does not exist")
    return 1 if check(args.notebook, args.lab) else 0


if __name__ == "__main__":
    sys.exit(main())
