"""The instructor's command line: ``python -m qlib.grading.course COMMAND`` in the course directory.

Each command lives in the module of its idea; this file only gathers them:

=====================  ==========================================================================
``grade``              grade a whole class in parallel (:mod:`qlib.grading.classroom`)
``lms-collect``        unpack a Canvas or Moodle download into ``submitted/`` (:mod:`qlib.grading.lms`)
``roster``             import the class list from a CSV (:mod:`qlib.grading.lms`)
``lms-export``         gradebook CSVs for Canvas and Moodle (:mod:`qlib.grading.lms`)
``feedback``           feedback HTML for every graded student (:mod:`qlib.grading.lms`)
``report``             the instructor's HTML report of one lab (:mod:`qlib.grading.report`)
``integrity``          similarity of submissions, for a person to review (:mod:`qlib.grading.integrity`)
``student-edition``    the folder students get, without solutions (:mod:`qlib.grading.edition`)
=====================  ==========================================================================
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMAND_MODULES = ("classroom", "lms", "report", "integrity", "edition")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m qlib.grading.course", description=__doc__.splitlines()[0])
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"qlib.grading.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"qlib.grading.{name}":
                raise
            continue  # a module the student edition leaves out
        module.register(commands)
    return top


def main(argv: list[str] | None = None) -> int:
    # nbgrader runs `alembic` (installed beside this Python) to create a gradebook
    bin_dir = os.path.dirname(sys.executable)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])
    args = parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
