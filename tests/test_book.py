"""The course site builds offline with warnings as errors, and shows what it promises."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"


@pytest.fixture(scope="module")
def site():
    """Build the site once (cached execution: only changed chapters re-run)."""
    jb = Path(sys.executable).parent / "jupyter-book"
    proc = subprocess.run([str(jb), "build", "-W", "--keep-going", str(ROOT)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"jupyter-book build failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
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
    for lab in ["lab01_number_formats", "lab02_kmeans_huffman", "lab03_linear_quantization",
                "lab04_ptq_granularity", "lab05_calibration", "lab06_integer_inference", "lab07_qat",
                "lab08_binary_mixed"]:
        assert lab in text, lab


def test_chapter_shows_computed_results_and_figures(site):
    text = (site / "book" / "03_linear_quantization.html").read_text()
    assert text.count("<img") >= 3
    assert "2.28" in text and "2.08" in text  # the lecture's Frobenius errors, computed on the page
    assert "Traceback" not in text


@pytest.mark.parametrize("lab", ["lab01_number_formats", "lab02_kmeans_huffman", "lab03_linear_quantization",
                                 "lab04_ptq_granularity", "lab05_calibration", "lab06_integer_inference",
                                 "lab07_qat", "lab08_binary_mixed"])
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
