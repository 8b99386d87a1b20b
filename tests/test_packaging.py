"""The distribution that installs `qlib`: a name of the course's own, providing the `qlib` of this repository."""
from __future__ import annotations

import importlib.metadata
import json
import tomllib
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

import qlib

ROOT = Path(__file__).resolve().parents[1]


def distribution_name() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]


def test_distribution_name_is_the_courses_own():
    # `qlib` on the package index is an unrelated project, and Microsoft's `pyqlib` also installs `qlib`
    name = distribution_name()
    assert name.lower().replace("_", "-") not in {"qlib", "pyqlib"}, (
        f"pyproject.toml names the distribution {name!r}, which another project publishes; choose the course's own")


def installed(distributions) -> list:
    """Leave out the ``*.egg-info`` that building in the repository root leaves there: it installs nothing."""
    return [d for d in distributions if Path(str(d.locate_file(""))).resolve() != ROOT]


def test_the_distribution_provides_the_imported_qlib():
    name = distribution_name()
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"distribution {name!r} is not installed: run `pip install -e .` in the repository root")
    found = installed(importlib.metadata.distributions(name=name))
    assert len(found) == 1, f"{name} is installed {len(found)} times: {[str(d.locate_file('')) for d in found]}"
    dist = found[0]
    assert "qlib" in (dist.read_text("top_level.txt") or "").split(), f"{name} does not install the package qlib"
    assert Path(qlib.__file__).resolve() == ROOT / "qlib" / "__init__.py", (
        f"`import qlib` imports {qlib.__file__}, not this repository's qlib/: another qlib is installed")
    direct_url = json.loads(dist.read_text("direct_url.json") or "{}")
    assert direct_url.get("dir_info", {}).get("editable"), f"{name} is not installed in editable mode (pip install -e .)"
    assert Path(unquote(urlparse(direct_url["url"]).path)).resolve() == ROOT, (
        f"{name} is installed from {direct_url['url']}, not from {ROOT}")


def test_no_other_installed_distribution_claims_qlib():
    name = distribution_name()
    others = {d.metadata["Name"] for d in installed(importlib.metadata.distributions())
              if "qlib" in (d.read_text("top_level.txt") or "").split() and d.metadata["Name"] != name}
    assert not others, f"{sorted(others)} also install a package named qlib: pip uninstall {' '.join(sorted(others))}"
