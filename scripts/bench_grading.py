"""Throughput of grading a class: the serial ``nbgrader autograde`` against the class command.

    python scripts/bench_grading.py [--lab lab03_linear_quantization] [-n 16] [--workers 2] [--per-student]

Makes N synthetic submissions of a lab (about half correct, a third with one
wrong answer, the rest crashing: a cell that kills its kernel, or one that
raises), copies one course three ways and grades, in the same run:

* ``nbgrader autograde LAB``: nbgrader's own loop, one submission after another;
* ``nbgrader autograde LAB --student S`` once per student (``--per-student``):
  the loop an instructor writes in the shell;
* ``python -m qlib.grading.course grade LAB --workers W``.

It prints submissions per minute for each, the ratios, and the time per
submission beyond executing the notebook's cells (kernel start, rebuild,
gradebook), and checks that every path gave identical scores. Not a test:
figures depend on the machine; run it on a quiet one.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qlib.grading import records  # noqa: E402
from tests import nbgrader_course as course  # noqa: E402

WRONG = {  # lab 3: one wrong answer each
    "quantize": '''
def quantize(x, scale, zero_point, qmin, qmax):
    return torch.clamp(torch.floor(x / scale) + zero_point, qmin, qmax).to(torch.int64)
''',
    "integer_range": '''
def integer_range(bits, signed=True, narrow=False):
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1)) if signed else (0, 2 ** bits)
    return qmin + int(narrow), qmax
''',
}
CRASHING = {
    "dequantize": "import os\nos._exit(1)\n",  # kills its kernel: a fresh one replays the rest
    "quantize": "raise RuntimeError('unfinished')\n",
}


def submissions(lab: str, n: int, released, answers) -> dict:
    subs = {}
    for i in range(n):
        kind = ("correct", "correct", "correct", "wrong", "wrong", "crash")[i % 6]
        cell, code = None, None
        if kind == "wrong" and lab.startswith("lab03"):
            cell, code = list(WRONG.items())[i % len(WRONG)]
        elif kind == "crash" and lab.startswith("lab03"):
            cell, code = list(CRASHING.items())[i % len(CRASHING)]
        subs[f"{kind}{i:03d}"] = course.fill(released, {**answers, **({cell: code} if cell else {})})
    return subs


def timed(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=course.env(), capture_output=True, text=True)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def executing(course_dir: Path, lab: str) -> float:
    """Seconds spent in the notebooks' cells, summed over submissions."""
    return sum(r.execute_seconds for r in records.read_records(course_dir, lab).values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lab", default="lab03_linear_quantization")
    parser.add_argument("-n", type=int, default=16, help="number of submissions (default 16)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--per-student", action="store_true", help="also time one nbgrader call per student")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-grading-") as tmp:
        base = course.make_course(Path(tmp) / "base", args.lab)
        released = course.read_notebook(course.notebook_path(base, "labs", args.lab))
        answers = course.solution_code(course.read_notebook(ROOT / "solutions" / args.lab / f"{args.lab}.ipynb"))
        subs = submissions(args.lab, args.n, released, answers)
        for student, nb in subs.items():
            course.submit(base, args.lab, student, nb)
        paths = {"serial": ["nbgrader", "autograde", args.lab],
                 "class": [sys.executable, "-m", "qlib.grading.course", "grade", args.lab,
                           "--workers", str(args.workers), "--quiet"]}
        if args.per_student:
            paths["per-student"] = None
        seconds, scores, cells = {}, {}, {}
        for name, cmd in paths.items():
            here = Path(tmp) / name
            shutil.copytree(base, here)
            print(f"grading {args.n} submissions: {name} ...", flush=True)
            if cmd is None:
                seconds[name] = sum(timed([str(course.BIN / "nbgrader"), "autograde", args.lab, "--student", s],
                                          here) for s in subs)
            else:
                seconds[name] = timed([str(course.BIN / cmd[0]) if cmd[0] == "nbgrader" else cmd[0], *cmd[1:]],
                                      here)
            scores[name], cells[name] = course.scores(here, args.lab), executing(here, args.lab)

    n = args.n
    print(f"\n{n} submissions of {args.lab} ({sum(k.startswith('correct') for k in subs)} correct, "
          f"{sum(k.startswith('wrong') for k in subs)} with a wrong answer, "
          f"{sum(k.startswith('crash') for k in subs)} crashing)")
    print(f"{'path':<12} {'wall s':>8} {'subm/min':>9} {'s/subm':>7} {'cells s/subm':>13} {'overhead s/subm':>16}")
    for name, s in seconds.items():
        parallel = args.workers if name == "class" else 1
        run_cells = cells[name] / n / parallel
        print(f"{name:<12} {s:8.1f} {60 * n / s:9.1f} {s / n:7.2f} {run_cells:13.2f} {s / n - run_cells:16.2f}")
    for name in seconds:
        if name != "class":
            print(f"class command with {args.workers} workers: {seconds[name] / seconds['class']:.2f}x "
                  f"the throughput of {name}")
    same = all(v == scores["serial"] for v in scores.values())
    print("identical scores on every path:", "yes" if same else "NO")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
