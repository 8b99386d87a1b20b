"""The course site builds offline with warnings as errors, and shows what it promises.

The site is built once, in the repository (`jupyter-book build -W`), started with the test session
(tests/conftest.py); with BOOK_BUILT_ROOT=DIR the tests read DIR/_build/html instead, a copy of the
repository built there beforehand.
"""
from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import nbformat
import pytest
import torch
from bs4 import BeautifulSoup

ROOT = Path(__file__).resolve().parents[1]
# BOOK_BUILT_ROOT names a copy of the repository already built with `jupyter-book build -W` (its
# _build/html is checked as it is); by default the repository itself is built here.
BUILT = Path(os.environ.get("BOOK_BUILT_ROOT", ROOT))
HTML = BUILT / "_build" / "html"
#: Every lab of the course, as the solutions folder holds them.
LABS = sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir())


def start_build(log: Path) -> subprocess.Popen | None:
    """Start building the site in the repository (cached execution: only changed chapters re-run), its
    output going to ``log``; ``None`` when BOOK_BUILT_ROOT names a site built beforehand.

    tests/conftest.py starts it with the session, so that the build runs beside the session's other
    tests; the ``site`` fixture waits for it.
    """
    if BUILT != ROOT:
        return None
    jb = Path(sys.executable).parent / "jupyter-book"
    with open(log, "w") as out:
        return subprocess.Popen([str(jb), "build", "-W", "--keep-going", str(ROOT)], cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def site(book_build):
    """The built site, once its build (started with the session, see tests/conftest.py) has ended."""
    if book_build is None:
        assert (HTML / "book" / "intro.html").exists(), f"BOOK_BUILT_ROOT={BUILT} holds no built site"
        return HTML
    process, log = book_build
    returncode = process.wait()
    assert returncode == 0, f"jupyter-book build failed:\n{log.read_text()[-9000:]}"
    return HTML


def test_every_page_loads_mathjax_from_the_site_itself(site):
    pages = list(site.rglob("*.html"))
    assert len(pages) >= 3
    for page in pages:
        text = page.read_text()
        srcs = re.findall(r'<script[^>]+src="([^"]+)"', text)
        remote = [s for s in srcs if s.startswith(("http:", "https:", "//"))]
        assert not remote, f"{page.name} loads scripts from the network: {remote}"
    chapter = (site / "book" / "03_linear_quantization.html").read_text()
    assert "tex-svg.js" in chapter


def test_landing_page_lists_the_whole_syllabus(site):
    text = (site / "book" / "intro.html").read_text()
    for lab in LABS:
        assert lab in text, lab


def test_chapter_shows_computed_results_and_figures(site):
    text = (site / "book" / "03_linear_quantization.html").read_text()
    assert text.count("<img") >= 3
    assert "2.28" in text and "2.08" in text  # the lecture's Frobenius errors, computed on the page
    assert "Traceback" not in text


@pytest.mark.parametrize("lab", LABS)
def test_lab_page_is_shown_not_executed(site, lab):
    text = (site / "labs" / lab / f"{lab}.html").read_text()
    assert "NotImplementedError" in text  # the student stubs are shown
    assert "visible cases passed" not in text  # and nothing was run
    assert (site / "_sources" / "labs" / lab / f"{lab}.ipynb").exists()  # the download button's file


@pytest.mark.parametrize("chapter, numbers", [
    ("01_number_formats", ["1 10000111 00111010101000000000000", "448", "57344"]),
    ("02_kmeans_huffman", ["3.2"]),
    ("04_ptq_granularity", ["2.28", "2.08", "0.1562", "4.256"]),
    ("05_calibration", ["112.37", "0.01647", "26.7%", "91.4%", "0.0630"]),
    ("06_integer_inference", ["136671", "2051462828"]),
    ("07_qat", ["73.33", "64.44", "53.61", "1157"]),
    ("08_binary_mixed", ["38,160", "42,064", "6 / 8 / 1 / 8", "22.5"]),
])
def test_other_chapters_show_their_worked_examples(site, chapter, numbers):
    text = (site / "book" / f"{chapter}.html").read_text()
    assert "Traceback" not in text
    for n in numbers:
        assert n in text, n


# --- the qlib API reference (book/api/) ------------------------------------------------------------

NOT_DOCUMENTED = {"qlib.grading", "qlib.pages"}  # the grader's machinery, and the pages' plumbing


def public_modules() -> list[str]:
    return sorted(f"qlib.{m.name}" for m in pkgutil.iter_modules([str(ROOT / "qlib")])
                  if not m.name.startswith("_") and f"qlib.{m.name}" not in NOT_DOCUMENTED)


def api_pages() -> dict[str, str]:
    """{module: the API page that documents it}, read from the qlib-api directives of book/api/*.md."""
    pages = {}
    for page in sorted((ROOT / "book" / "api").glob("*.md")):
        for block in re.findall(r"\.\. qlib-api::\n\n((?:   \S.*\n)+)", page.read_text()):
            for name in block.split():
                assert name not in pages, f"{name} is documented on both {pages[name]} and {page.stem}"
                pages[name] = page.stem
    return pages


def public_members(module_name: str) -> dict[str, object]:
    """The functions and classes a module defines and does not mark private (its __all__ if it has one)."""
    module = importlib.import_module(module_name)
    members = {name: obj for name, obj in vars(module).items()
               if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
               and obj.__module__ == module_name}
    listed = getattr(module, "__all__", None)
    return {n: o for n, o in members.items() if listed is None or n in listed}


def plain(text: str) -> str:
    """Text as a reader sees it: roles as their text (``:func:`~a.b``` as ``b``), no markup
    characters, no ``()`` (Sphinx adds them to function names), straight quotes, single spaces."""
    text = re.sub(r":[\w:]+:`([^`]*)`", lambda m: m[1].split(".")[-1] if m[1].startswith("~") else m[1], text)
    text = re.sub(r"[`*\\~]|\(\)", "", text).translate(str.maketrans("‘’“”", "''\"\""))
    return " ".join(text.split())


def test_every_public_module_has_one_place_in_the_api_reference():
    assert sorted(api_pages()) == public_modules()


def test_api_reference_shows_every_public_function_and_class_with_its_docstring(site):
    for module_name, page in api_pages().items():
        soup = BeautifulSoup((site / "book" / "api" / f"{page}.html").read_text(), "html.parser")
        assert soup.find(id=f"module-{module_name}"), f"{module_name} has no entry on book/api/{page}"
        members = public_members(module_name)
        for name, obj in members.items():
            entry = soup.find("dt", id=f"{module_name}.{name}")
            assert entry is not None, f"{module_name}.{name} is missing from book/api/{page}"
            doc = obj.__doc__ and inspect.cleandoc(obj.__doc__)
            assert doc, f"{module_name}.{name} has no docstring"
            shown = plain(entry.find_next_sibling("dd").get_text())
            assert plain(doc.splitlines()[0]) in shown, f"{module_name}.{name}: first line not shown"
        # nothing is described twice (the re-exports of qlib/__init__.py are not documented)
        ids = [dt["id"] for dt in soup.find_all("dt", id=True)]
        assert len(ids) == len(set(ids))
    assert not (site / "book" / "api" / "index.html").read_text().count('id="qlib.quantize"')


def test_chapters_link_qlib_names_to_the_api_reference(site):
    """Every {py:func}/{py:class}/{py:mod} role in a chapter resolves to an API entry."""
    for page in sorted((site / "book").glob("0*.html")):
        soup = BeautifulSoup(page.read_text(), "html.parser")
        broken = [code.get_text() for code in soup.select("article code.xref.py")
                  if code.find_parent("a") is None]
        assert not broken, f"{page.name} names qlib objects the API reference does not have: {broken}"


# --- numbering, order of pages ---------------------------------------------------------------------

def chapter_files() -> list[str]:
    import yaml

    toc = yaml.safe_load((BUILT / "_toc.yml").read_text())
    return [chapter["file"] for chapter in toc["parts"][0]["chapters"]]


def test_figures_and_equations_are_numbered_within_their_chapter(site):
    soup = BeautifulSoup((site / "book" / "03_linear_quantization.html").read_text(), "html.parser")
    figures = [s.get_text(strip=True) for s in soup.select("article span.caption-number")]
    equations = [s.get_text(strip=True) for s in soup.select("article span.eqno")]
    assert figures[0] == "Fig. 3.1", figures[:3]
    assert equations[0].startswith("(3.1)"), equations[:3]
    assert all(f.startswith("Fig. 3.") for f in figures) and all(e.startswith("(3.") for e in equations)
    for page in ("intro", "notation", "api/index"):
        title = BeautifulSoup((site / "book" / f"{page}.html").read_text(), "html.parser").find("h1")
        assert title.find(class_="section-number") is None, f"{page} is numbered"


@pytest.mark.parametrize("n", range(1, 9))
def test_next_after_a_chapter_leads_to_its_lab(site, n):
    page = site / f"{chapter_files()[n - 1]}.html"
    for _ in range(4):  # the chapter's own extra pages come before its lab
        link = BeautifulSoup(page.read_text(), "html.parser").select_one("a.right-next")
        page = (page.parent / link["href"].split("#")[0]).resolve()
        if "labs" in page.parts:
            break
    assert page.name == f"lab0{n}_{page.parent.name[6:]}.html" and page.parent.name.startswith(f"lab0{n}_")


# --- each chapter downloads as an executed notebook that shows its numbers -------------------------

sys.path.insert(0, str(ROOT / "book" / "_ext"))
from executed_notebooks import GlueError, paste_all_glue  # noqa: E402


def test_glue_roles_become_the_text_the_page_shows():
    glue = {"acc": {"data": {"text/plain": "97.25"}}, "n": {"data": {"text/plain": "1157"}},
            "layer": {"data": {"text/plain": "'fc1'"}}, "share": {"data": {"text/plain": "0.2671"}},
            "ratio": {"data": {"text/plain": "'6 | 8'"}}}
    text = ("{glue:text}`acc:.1f`, {glue:text}`n`, {glue:text}`layer`, {glue:text}`share:.1%`, "
            "{glue}`n`, {glue:}`n`, {glue:text}`ratio`, {eq}`eq-x` stays")
    # 97.25 is exact in binary, and format() rounds it half to even; '|' would end a table cell
    assert paste_all_glue(text, glue) == "97.2, 1157, fc1, 26.7%, 1157, 1157, 6 \\| 8, {eq}`eq-x` stays"
    with pytest.raises(GlueError, match="missing"):
        paste_all_glue("{glue:text}`missing`", glue)
    with pytest.raises(GlueError, match="another page"):
        paste_all_glue("{glue:text}`other.md::n`", glue)


@pytest.mark.parametrize("chapter", range(1, 9))
def test_chapter_downloads_as_an_executed_notebook_with_its_numbers(site, chapter):
    page = site / f"{chapter_files()[chapter - 1]}.html"
    soup = BeautifulSoup(page.read_text(), "html.parser")
    link = soup.select_one("a.btn-download-notebook-button")
    assert link is not None, "no .ipynb in the download menu"
    target = (page.parent / link["href"]).resolve()
    assert target == (site / "_sources" / f"{chapter_files()[chapter - 1]}.ipynb").resolve()
    nb = nbformat.read(target, as_version=4)
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for role in ("{glue", "{eq}", "{numref}", "{cite", "{doc}", "```{", ":::{"):
        assert role not in markdown, role  # Jupyter shows MyST roles and directives as raw text
    shown = [s.get_text() for s in soup.select("article span.pasted-text")]
    assert shown, "the page shows no glued number"
    unescaped = markdown.replace("\\", "")
    missing = [value for value in shown if value not in unescaped]
    assert not missing, f"glued values on the page but not in the notebook: {missing[:5]}"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "import" in code[0].source  # the hidden set-up cell is kept: it holds the imports
    assert sum(bool(c.get("outputs")) for c in code) >= len(code) // 2  # executed


# --- the notation page ---------------------------------------------------------------------------

def test_notation_page_gives_each_symbol_of_the_book_its_meaning(site):
    html = (site / "book" / "notation.html").read_text()
    for symbol in (r"\(S\)", r"\(Z\)", r"\(q\)", r"\(b\)", r"\(T\)", r"\(\alpha\)", r"\(\kappa\)",
                   r"\(\lambda\)", r"\(\Delta\)", r"\(\rho_c\)", r"\(X\)", r"\(M_0\)", r"\(\gamma_c\)",
                   r"\(\beta_c\)", r"q_\text{min}", r"\(S_0\)", r"\(d_i\)", r"\(t\)"):
        assert symbol in html, symbol
    text = BeautifulSoup(html, "html.parser").get_text()
    for row in ("2.5 → 2; −2.5 → −2", "2.5 → 3; −2.5 → −3", "1.5 → 2; −1.5 → −1", "2.5 → 3; −2.5 → −2",
                "1.0625 → 1; −1.1875 → −1.25", "0.75 → 1; −0.75 → −1"):
        assert row in text, row
    assert "Traceback" not in html


TIES = [Fraction(2 * k + 1, 2) for k in range(-5, 5)]  # -4.5, -3.5, ..., 4.5


def half_even(t: Fraction) -> int:
    return round(t)  # Python rounds a Fraction half to even


def half_away(t: Fraction) -> int:
    return int((abs(t) + Fraction(1, 2)) // 1) * (1 if t > 0 else -1)


def half_up(t: Fraction) -> int:
    return int((t + Fraction(1, 2)) // 1)


def test_rounding_rules_of_the_notation_page_hold_for_every_function_named():
    import ml_dtypes
    import numpy as np

    from qlib import (binary, fixed_point, floating_point, integer_layers, kmeans, linear, logarithmic,
                      requantize, rounding, shift_scaling, stochastic_rounding, ternary)

    x = torch.tensor([float(t) for t in TIES], dtype=torch.float64)
    twice = torch.tensor([int(2 * t) for t in TIES])            # integers whose half is a tie
    even, away, up = ([f(t) for t in TIES] for f in (half_even, half_away, half_up))
    # half to even
    assert rounding.round_half_to_even(x).tolist() == even
    assert linear.quantize(x.float(), 1.0, 0, -128, 127).tolist() == even
    assert integer_layers.quantize_bias(x, 1.0, 1.0).tolist() == even
    assert [fixed_point.encode_fixed(float(t) / 16, 8, 4) for t in TIES] == even
    for v in (1.0625, -1.1875, 1.3125, 0.0068359375):           # ties of FP8 E4M3, normal and subnormal
        ours = floating_point.decode_float(floating_point.encode_float(v, floating_point.FP8_E4M3),
                                           floating_point.FP8_E4M3)
        assert ours == float(np.float32(v).astype(ml_dtypes.float8_e4m3fn).astype(np.float32))
    # half away from zero
    assert rounding.round_half_away_from_zero(x).tolist() == away
    assert requantize.rounding_divide_by_pot(twice, 1).tolist() == away
    pairs = torch.tensor([[[[int(t - Fraction(1, 2)), int(t + Fraction(1, 2))]] for t in TIES]])
    assert integer_layers.integer_avg_pool2d(pairs, (1, 2)).reshape(-1).tolist() == away
    for f in (Fraction(1, 2) + Fraction(1, 2**32), Fraction(3, 4) + Fraction(1, 2**32)):
        m0, shift = requantize.quantize_multiplier(torch.tensor(float(f), dtype=torch.float64))
        assert (int(m0), int(shift)) == (half_away(f * 2**31), 0)  # f * 2^31 is a tie
    # half up (toward +infinity)
    assert requantize.saturating_rounding_doubling_high_mul(twice, torch.tensor(2**30)).tolist() == up
    assert requantize.multiply_by_quantized_multiplier_single_round(
        twice, torch.tensor(2**30), torch.tensor(0)).tolist() == up
    assert shift_scaling.single_shift_rescale(twice, 1).tolist() == up
    assert shift_scaling.fixed_point_rescale(twice, 1, 1).tolist() == up
    ints = torch.arange(-12, 13)
    assert shift_scaling.double_shift_rescale(ints, 1, 1).tolist() == [half_up(Fraction(3 * i, 4)) for i in ints.tolist()]
    assert shift_scaling.fixed_point_scaling(0.625, 3) == (3, 2)  # 0.625 * 2^2 = 2.5 -> 3
    # stochastic: only the two neighbours, half the time each
    draws = stochastic_rounding.round_stochastic(torch.full((20_000,), -2.5), torch.Generator().manual_seed(1))
    assert set(draws.tolist()) == {-3.0, -2.0} and abs(float(draws.mean()) + 2.5) < 0.02
    # floor
    assert rounding.round_with(x, "floor").tolist() == [int(t // 1) for t in TIES]
    # the grids with their own ties
    assert logarithmic.pow2_quantize(torch.tensor([0.75, -0.75, 0.125, -0.125]), 1.0, 3).tolist() == [3, -3, 1, -1]
    assert binary.binarize(torch.tensor([0.0, -0.0]), granularity="tensor")[0].tolist() == [1, 1]
    w = torch.tensor([0.7, 2.0, 1 - float(np.float32(0.7))])   # mean exactly 1: delta = fl(0.7) = w[0]
    codes, _, delta = ternary.ternarize(w, granularity="tensor")
    assert float(delta) == float(w[0]) and int(codes[0]) == 0
    assert kmeans.kmeans_quantize(torch.tensor([0.5]), torch.tensor([0.0, 1.0]), max_iter=0)[1].tolist() == [0]


def test_plain_text_docstrings_become_valid_restructuredtext():
    from qlib_api import plain_text_formulas

    lines = ["Scale and zero point:", "", "    scale = max|x| / qmax      (float32)", "", "Uses |x|, not ``|x|``.",
             "", "* first item continued", "               in a column", "* second"]
    assert plain_text_formulas(lines) == [
        "Scale and zero point:", "", ".. code-block:: text", "", "    scale = max|x| / qmax      (float32)", "",
        "Uses \\|x\\|, not ``|x|``.", "", "* first item continued", "  in a column", "* second"]
