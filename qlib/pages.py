"""What the course book's pages share: figure style, Markdown tables, numbers handed to the text.

Every chapter starts with one hidden cell::

    from qlib.pages import OKABE_ITO, glue_numbers, markdown_table, setup_page
    setup_page()

:func:`setup_page` applies the course's matplotlib style (``qlib/course.mplstyle``: white figure
background, so plots stay readable when the site is in dark mode; Okabe-Ito colours), asks for SVG
figures and runs torch on one thread (the book's tensors are small, and one thread is faster and
gives the same numbers on every machine). Chapters name their own colours for their own ideas,
always from :data:`OKABE_ITO`.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

STYLE = str(Path(__file__).with_name("course.mplstyle"))

#: The Okabe-Ito palette (colour-blind safe), plus grey for FP32 baselines.
OKABE_ITO = {
    "blue": "#0072B2", "vermillion": "#D55E00", "green": "#009E73", "orange": "#E69F00",
    "purple": "#CC79A7", "sky": "#56B4E9", "yellow": "#F0E442", "black": "#000000",
    "grey": "0.4",
}


def setup_page(threads: int = 1) -> None:
    """Apply the course figure style, SVG output and ``threads`` torch threads."""
    import matplotlib.pyplot as plt
    import torch
    from matplotlib_inline.backend_inline import set_matplotlib_formats

    plt.style.use(STYLE)
    set_matplotlib_formats("svg")
    torch.set_num_threads(threads)
    # torch's quantized dtypes are deprecated; the book uses them only as an outside reference.
    warnings.filterwarnings("ignore", message=".*quantized tensor creation")


def markdown_table(header, rows):
    """A Markdown table that the page renders: first column left-aligned, the others right-aligned."""
    from IPython.display import Markdown

    header = list(header)
    rows = [list(row) for row in rows]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"markdown_table: a row has {len(row)} cells, the header {len(header)}: {row}")
    lines = ["| " + " | ".join(map(str, header)) + " |",
             "|:---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return Markdown("\n".join(lines))


def plain_number(value):
    """A Python number for a numpy or 0-d torch scalar (``np.float64(0.5)`` -> ``0.5``); else ``value``."""
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


def glue_numbers(**values) -> None:
    """Hand computed values to the text of the page: ``{glue:text}`name``` shows ``values[name]``."""
    from myst_nb import glue

    for name, value in values.items():
        glue(name, plain_number(value), display=False)
