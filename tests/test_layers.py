"""The layers of qlib, as its package docstring lists them, kept on the import graph.

Two rules, read from ``qlib/__init__.py`` and checked on every ``import`` of every module (parsed
with ``ast``, imports inside functions included):

* a module imports only from its own layer, the layers listed before it, and the shared helpers;
* a private name (``_x``) is imported across modules only from the shared helpers, or from a
  module in :data:`SHARED_PRIVATE`, the few private helpers that one family of modules shares.
"""
from __future__ import annotations

import ast
import pkgutil
import re
import textwrap
from pathlib import Path

import qlib

ROOT = Path(qlib.__file__).resolve().parent

#: Private helpers that a family of modules shares (exporting module -> names), and why.
SHARED_PRIVATE = {
    # the affine map's checks of a scale and a zero point, for every quantizer built on it
    # (qlib.ste, qlib.lsq, qlib.pact, qlib.stochastic_rounding)
    "qlib.linear": {"_scale_tensor", "_zero_point_tensor"},
    # integer arithmetic's check of an integer tensor and of a zero point, and the multiply of
    # multiply_by_quantized_multiplier without its checks: for the integer layers and shift scaling
    "qlib.requantize": {"_int_tensor", "_check_zero_point", "_mbqm"},
    # one family: ternary weights reuse the binary module's shape check; SAT extends DoReFa;
    # two-level scales extend scale storage; AdaRound visits the layers in PTQ's order
    "qlib.binary": {"_check_shape"},
    "qlib.dorefa": {"_checked_bits", "_float32"},
    "qlib.scale_storage": {"_check_shape"},
    "qlib.ptq": {"_layers_in_call_order"},
    # the grader installs stand-ins for earlier tasks the same way in-process and in the kernel
    "qlib.grading.kernel_side": {"_stand_ins_installed"},
}


def modules() -> dict[str, Path]:
    """Every module of the qlib package, by dotted name, and its file."""
    found = {"qlib": ROOT / "__init__.py"}
    for info in pkgutil.walk_packages([str(ROOT)], "qlib."):
        path = ROOT.joinpath(*info.name.split(".")[1:])
        found[info.name] = path / "__init__.py" if info.ispkg else path.with_suffix(".py")
    return found


MODULES = modules()


def layers_of(docstring: str) -> dict[str, int]:
    """``{listed module: layer}`` from a docstring: 0 for the shared helpers, then ``Layer n, ...:``."""
    layers, current = {}, None
    for line in docstring.splitlines():
        heading = re.match(r"(Shared helpers|Layer (\d+)),", line)
        if heading:
            current = int(heading[2] or 0)
        for name in re.findall(r"^\* :mod:`(qlib[\w.]*)`", line):
            assert current is not None, f"{name} is listed before the first layer"
            assert name not in layers, f"{name} is listed twice"
            layers[name] = current
    return layers


LAYERS = layers_of(qlib.__doc__)


def layer(module: str, layers: dict[str, int] = LAYERS) -> int:
    """The layer of ``module``: its own entry, or its package's (``qlib.grading`` covers its modules)."""
    if module == "qlib":  # the package re-exports the affine map and granularity
        return layers["qlib.granularity"]
    for name in sorted(layers, key=len, reverse=True):
        if module == name or module.startswith(name + "."):
            return layers[name]
    raise KeyError(module)


def imports(source: str, module: str) -> list[tuple[int, str, str | None]]:
    """``(line, imported module, imported name or None)`` for every qlib import in ``source``."""
    found = []
    package = module if MODULES.get(module, Path()).name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, None) for a in node.names if a.name.split(".")[0] == "qlib"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            if base.split(".")[0] != "qlib":
                continue
            for alias in node.names:
                if f"{base}.{alias.name}" in MODULES:  # ``from qlib import lsq``: the module itself
                    found.append((node.lineno, f"{base}.{alias.name}", None))
                else:
                    found.append((node.lineno, base, alias.name))
    return sorted(found, key=lambda f: f[0])


def violations(module: str, source: str, layers: dict[str, int] = LAYERS) -> list[str]:
    """Where ``module`` (its ``source``) breaks the layer order or imports another module's private name."""
    found = []
    for line, target, name in imports(source, module):
        if target == module:
            continue
        if layer(target, layers) > layer(module, layers):
            found.append(f"line {line}: imports {target} (layer {layer(target, layers)}) "
                         f"from layer {layer(module, layers)}")
        if name and name.startswith("_") and layer(target, layers) != 0 \
                and name not in SHARED_PRIVATE.get(target, ()):
            found.append(f"line {line}: imports the private {target}.{name}")
    return found


# --- the docstring -------------------------------------------------------------------------------------

def test_every_module_has_exactly_one_layer_in_the_package_docstring():
    assert set(LAYERS.values()) == set(range(7)), LAYERS
    listed = {name for name in LAYERS if name in MODULES}
    assert listed == set(LAYERS), f"listed but not a module: {sorted(set(LAYERS) - listed)}"
    unlisted = []
    for module in MODULES:
        try:
            layer(module)
        except KeyError:
            unlisted.append(module)
    assert not unlisted, f"add these modules to a layer of qlib/__init__.py's docstring: {unlisted}"


def test_the_shared_helpers_import_nothing_from_qlib():
    for name, level in LAYERS.items():
        if level == 0:
            assert imports(MODULES[name].read_text(), name) == [], name


def test_the_shared_private_helpers_exist():
    for module, names in SHARED_PRIVATE.items():
        tree = ast.parse(MODULES[module].read_text())
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        assert names <= defined, f"{module} no longer defines {sorted(names - defined)}: update SHARED_PRIVATE"


# --- the import graph ----------------------------------------------------------------------------------

def test_no_module_imports_from_a_higher_layer_or_another_module_s_private_names():
    found = {m: v for m in MODULES if (v := violations(m, MODULES[m].read_text()))}
    assert not found, found


def test_the_check_sees_an_upward_import_and_a_private_import():
    layers = {"qlib._checks": 0, "qlib.linear": 2, "qlib.observers": 3, "qlib.weights": 4, "qlib.granularity": 2,
              "qlib.grading": 6}
    source = textwrap.dedent('''
        from qlib._checks import as_float_tensor
        from qlib.linear import quantize, _scale_tensor, _finite_scale
        import qlib.observers

        def lazily():
            from qlib.weights import quantized_layers
            from qlib import grading
    ''')
    assert violations("qlib.granularity", source, layers) == [
        "line 3: imports the private qlib.linear._finite_scale",
        "line 4: imports qlib.observers (layer 3) from layer 2",
        "line 7: imports qlib.weights (layer 4) from layer 2",
        "line 8: imports qlib.grading (layer 6) from layer 2",
    ]
    assert violations("qlib.weights", source, layers) == [
        "line 3: imports the private qlib.linear._finite_scale",
        "line 8: imports qlib.grading (layer 6) from layer 4",
    ]
