"""The README's table of qlib's modules matches the code: every module has a row, and every name a row shows exists."""
from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import qlib

README = Path(__file__).resolve().parents[1] / "README.md"
ROW = re.compile(r"^\| (`qlib[^|]*`) \| (.*) \|$")


def _rows() -> list[tuple[list[str], str]]:
    rows = []
    for line in README.read_text().splitlines():
        match = ROW.match(line)
        if match:
            rows.append((re.findall(r"`(qlib[\w.]*)`", match.group(1)), match.group(2)))
    return rows


def test_every_public_module_of_qlib_has_a_row():
    named = {m for modules, _ in _rows() for m in modules}
    public = {f"qlib.{m.name}" for m in pkgutil.iter_modules(qlib.__path__) if not m.name.startswith("_")}
    assert public - named == set(), "modules the README's table leaves out"
    assert named - public == set(), "rows for modules that do not exist"


def test_every_name_a_row_shows_exists_in_its_modules():
    for modules, description in _rows():
        loaded = [importlib.import_module(m) for m in modules]
        for code in re.findall(r"`([^`]+)`", description):
            name = re.match(r"[A-Za-z_][\w]*", code)
            if not name or code.startswith(("python", "qlib")) or not re.match(r"^[\w]+(\(.*\))?$", code):
                continue  # a command, a module path or a piece of notation, not a name
            assert any(hasattr(m, name.group(0)) for m in loaded), f"{name.group(0)} is not in {', '.join(modules)}"


def test_signatures_the_table_shows_have_those_parameters():
    import inspect

    for modules, description in _rows():
        loaded = [importlib.import_module(m) for m in modules]
        for name, params in re.findall(r"`(\w+)\(([^`)]*)\)`", description):
            fn = next(getattr(m, name) for m in loaded if hasattr(m, name))
            shown = [p.split("=")[0].strip() for p in params.split(",") if p.strip() and not p.strip().startswith('"')]
            if shown and all(p.isidentifier() for p in shown):
                actual = list(inspect.signature(fn).parameters)
                assert shown == actual[:len(shown)], f"{name}({', '.join(actual)}) is shown as {name}({params})"
