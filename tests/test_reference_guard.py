"""The reference guard of qlib._reference: one decorator, and the one rule of its docstring.

The rule: qlib's own code calls a reference's unguarded form (``quantize.unguarded``), so that
what a lab hands out (its set-up helpers, qlib's pipelines) keeps working while the grader blocks
the references. Checked three ways: statically (no qlib module loads a guarded name except as
``name.unguarded``), by executing every solution notebook's set-up code, and by running qlib's
pipelines, each with every reference blocked at once.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import json
import pkgutil
import textwrap
from pathlib import Path

import pytest
import torch

import qlib
from qlib import _reference
from qlib._reference import ReferenceUnavailable

ROOT = Path(__file__).resolve().parents[1]
LABS = sorted((ROOT / "solutions").glob("*/*.ipynb"))
LAB_MODULES = [f"qlib.grading.lab0{n}" for n in range(1, 9)]


def qlib_modules() -> dict[str, object]:
    """Every module of qlib, imported (so that every reference is registered)."""
    names = ["qlib"] + [m.name for m in pkgutil.walk_packages(qlib.__path__, "qlib.")]
    return {name: importlib.import_module(name) for name in names}


MODULES = qlib_modules()
REFERENCES = _reference.references()


def is_guarded(value) -> bool:
    return callable(value) and REFERENCES.get(getattr(value, "reference_name", None)) is value


# --- the decorator ---------------------------------------------------------------------------------

def test_every_name_a_grader_blocks_is_a_registered_reference():
    for name in LAB_MODULES:
        missing = set(MODULES[name].REFERENCES) - set(REFERENCES)
        assert not missing, f"{name}.REFERENCES names {sorted(missing)}, which no qlib function is registered as"


def test_every_reference_is_its_module_public_name_and_keeps_its_documentation():
    for name, guarded in REFERENCES.items():
        module = MODULES[guarded.__module__]
        assert getattr(module, guarded.__name__) is guarded, f"{guarded.__module__}.{guarded.__name__} is not guarded"
        original = guarded.unguarded
        assert not is_guarded(original)
        assert guarded.__doc__ and guarded.__doc__ == original.__doc__, name
        assert inspect.signature(guarded) == inspect.signature(original), name
        assert (guarded.__module__, guarded.__qualname__) == (original.__module__, original.__qualname__)


def test_every_reference_refuses_while_blocked_and_only_then():
    assert len(REFERENCES) >= 60
    for name, guarded in REFERENCES.items():
        with _reference.blocked([name]):
            with pytest.raises(ReferenceUnavailable, match=f"qlib.{name} is the reference answer"):
                guarded()  # refused before the arguments are even looked at
            with pytest.raises(TypeError):
                guarded.unguarded()  # the unguarded form runs (and wants its arguments)
        with pytest.raises(TypeError):
            guarded()
    assert _reference.blocked_names() == frozenset()


def test_a_blocked_reference_is_refused_through_every_import_path():
    from qlib.linear import quantize

    with _reference.blocked(["quantize"]):
        for fn in (quantize, qlib.quantize, MODULES["qlib.linear"].quantize):
            with pytest.raises(ReferenceUnavailable):
                fn(torch.zeros(2), 1.0, 0, -8, 7)
        assert quantize.unguarded(torch.tensor([0.4, 2.6]), 1.0, 0, -8, 7).tolist() == [0, 3]


def test_a_reference_name_cannot_be_registered_twice():
    with pytest.raises(ValueError, match="two qlib references are named 'quantize'"):
        _reference.reference("quantize")(lambda x: x)


# --- the rule, statically ----------------------------------------------------------------------------

def _local_names(function: ast.AST) -> set[str]:
    """Names a function (or lambda, or comprehension) binds itself: they shadow module globals."""
    args = function.args if hasattr(function, "args") else None
    names = {a.arg for a in (args.posonlyargs + args.args + args.kwonlyargs) if args} if args else set()
    if args and args.vararg:
        names.add(args.vararg.arg)
    if args and args.kwarg:
        names.add(args.kwarg.arg)
    for node in ast.walk(function):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def guarded_loads(source: str, namespace: dict) -> list[str]:
    """Every place ``source`` uses a guarded function other than as ``name.unguarded``.

    ``namespace`` is the module's globals, which tell what each global name is: a guarded
    function (``from qlib.linear import quantize``), or a module whose attribute is one
    (``import qlib.linear as ref`` then ``ref.quantize``).
    """
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if not isinstance(getattr(node, "ctx", None), ast.Load):
            continue
        if isinstance(node, ast.Name):
            value = namespace.get(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and inspect.ismodule(namespace.get(node.value.id)):
            value = getattr(namespace[node.value.id], node.attr, None)
        else:
            continue
        if not is_guarded(value):
            continue
        parent = parents.get(node)
        if isinstance(parent, ast.Attribute) and parent.attr in ("unguarded", "reference_name"):
            continue
        scope, shadowed = parent, False
        while scope is not None and not shadowed:
            if isinstance(node, ast.Name) and isinstance(
                    scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ListComp, ast.SetComp,
                            ast.DictComp, ast.GeneratorExp)):
                shadowed = node.id in _local_names(scope)
            scope = parents.get(scope)
        if not shadowed:
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_no_qlib_module_uses_a_guarded_name():
    """Outside the grader (which computes expected answers with the references, in its own process)."""
    offenders = {}
    for name, module in MODULES.items():
        if name.startswith("qlib.grading."):
            continue
        found = guarded_loads(Path(module.__file__).read_text(), vars(module))
        if found:
            offenders[name] = found
    assert not offenders, f"call the unguarded form (name.unguarded) inside qlib: {offenders}"


def test_the_static_check_sees_a_guarded_call_and_nothing_else():
    source = textwrap.dedent('''
        from qlib.linear import quantize, fake_quantize
        import qlib.linear as ref

        def direct(x):
            return quantize(x, 1.0, 0, -8, 7)

        def through_module(x):
            return ref.dequantize(x, 1.0, 0)

        def as_value():
            return (quantize, ref.symmetric_qparams)

        def fine(x, dequantize):
            y = quantize.unguarded(x, 1.0, 0, -8, 7)
            return dequantize(y) + fake_quantize(x, 1.0, 0, -8, 7) + ref.integer_range.unguarded(8)[0]
    ''')
    namespace = {"quantize": MODULES["qlib.linear"].quantize, "fake_quantize": MODULES["qlib.linear"].fake_quantize,
                 "ref": MODULES["qlib.linear"], "dequantize": MODULES["qlib.linear"].dequantize}
    found = guarded_loads(source, namespace)
    assert [f.split(": ", 1)[1] for f in found] == ["quantize", "ref.dequantize", "quantize", "ref.symmetric_qparams"]
