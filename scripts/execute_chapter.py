"""Run one chapter of the book as the site build does, and report what its text asks for but never gets.

    python scripts/execute_chapter.py book/05_calibration.md [--out executed.ipynb]

The chapter is executed in ``book/`` (like ``jupyter-book build``), then its Markdown is checked:
every ``{glue:text}`name``` / ``{glue:}`name``` must name a value the code glued. Prints the time
per cell above two seconds and the total. Exit 1 on an error or a missing glue name.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

GLUE_ROLE = re.compile(r"\{glue(?::\w+)?\}`([^`:<]+)")


def glued_names(nb) -> set[str]:
    """Names glued by the executed notebook (myst-nb stores them in each output's metadata)."""
    names = set()
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            scrap = output.get("metadata", {}).get("scrapbook", {})
            if "name" in scrap:
                names.add(scrap["name"])
    return names


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chapter", type=Path)
    parser.add_argument("--out", type=Path, help="write the executed notebook here")
    parser.add_argument("--timeout", type=int, default=900)
    args = parser.parse_args(argv)

    nb = jupytext.read(args.chapter)
    client = NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(args.chapter.resolve().parent)}})
    start = time.perf_counter()
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            t0 = time.perf_counter()
            try:
                client.execute_cell(cell, index)
            except Exception as error:  # noqa: BLE001 - report and stop, like the site build
                print(f"cell {index} failed:\n{error}", file=sys.stderr)
                return 1
            if time.perf_counter() - t0 > 2:
                first = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
                print(f"cell {index}: {time.perf_counter() - t0:6.1f} s  {first[:70]}")
    print(f"total: {time.perf_counter() - start:.1f} s")
    if args.out:
        nbformat.write(nb, args.out)

    have = glued_names(nb)
    wanted = {m for cell in nb.cells if cell.cell_type == "markdown"
              for m in GLUE_ROLE.findall(cell.source)}
    missing = sorted(wanted - have)
    if missing:
        print("glue names used in the text but never glued: " + ", ".join(missing), file=sys.stderr)
        return 1
    print(f"{len(wanted)} glue names used, all glued")
    return 0


if __name__ == "__main__":
    sys.exit(main())
