"""The reference guard of qlib._reference: one decorator, and the one rule of its docstring.

The rule: qlib's own code calls a reference's unguarded form (``quantize.unguarded``), so that
what a lab hands out (its set-up helpers, qlib's pipelines) keeps working while the grader blocks
the references. Checked three ways: statically (no qlib module loads a guarded name except as
``name.unguarded``), by executing every solution notebook (its set-up cells with the solution's
functions, test cells left out) and by running qlib's pipelines, both with every reference blocked.
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
LAB_MODULES = [f"qlib.grading.{path.parent.name[:5]}" for path in LABS]


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


# --- the rule, at work: what a lab hands out runs with every reference blocked ----------------------

def lab_cells(path: Path) -> list[tuple[str, str]]:
    """``(grade_id, source)`` of every code cell of a solution notebook but its test cells, in order.

    That is the set-up (locked cells that import qlib's tools and run the experiments) and the
    solution cells, which define the functions a student writes and the set-up then calls.
    """
    cells = []
    for cell in json.loads(path.read_text())["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if cell["cell_type"] == "code" and not meta.get("grade"):
            cells.append((meta.get("grade_id", "?"), "".join(cell["source"])))
    return cells


def imported_references(cells) -> set[str]:
    """The references a lab imports from qlib by name, as tools (lab 4 hands out lab 3's answers)."""
    names = set()
    for _, source in cells:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("qlib"):
                names.update(a.name for a in node.names if a.name in REFERENCES)
    return names


@pytest.fixture
def quiet_global_state(monkeypatch):
    """Figures not shown and closed; torch's and numpy's global random state as they were."""
    import matplotlib.pyplot as plt
    import numpy as np

    monkeypatch.setattr(plt, "show", lambda *args, **kwargs: None)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    yield
    plt.close("all")
    torch.set_rng_state(torch_state)
    np.random.set_state(numpy_state)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # matplotlib on numpy 2, in the labs' figures
def test_every_lab_runs_from_its_set_up_with_every_reference_blocked(quiet_global_state, capsys):
    """Each solution notebook, test cells left out, in a fresh namespace inside the full block.

    Its set-up cells call qlib's tools (the integer model, PTQ, mixed precision's weight
    quantizer, the grader's helpers) with the solution's functions: none may reach a reference.
    """
    assert len(LABS) == len([p for p in (ROOT / "solutions").iterdir() if p.is_dir()]) >= 9
    for path in LABS:
        cells = lab_cells(path)
        namespace = {"__name__": "__main__"}
        with _reference.blocked(set(REFERENCES) - imported_references(cells)):
            for grade_id, source in cells:
                try:
                    exec(compile(source, f"{path.name} [{grade_id}]", "exec"), namespace)  # noqa: S102
                except ReferenceUnavailable as err:
                    pytest.fail(f"{path.name}, cell {grade_id!r}, reached a blocked reference: {err}")


@pytest.fixture(scope="module")
def digits():
    from qlib.data import Digits, load_digits
    from qlib.models import load_pretrained

    train, test = load_digits("train"), load_digits("test")
    return load_pretrained("cnn"), Digits(train.images[:64], train.labels[:64]), Digits(test.images[:64],
                                                                                         test.labels[:64])


def pipelines(model, train, test):
    """qlib's pipelines that labs and chapters use, each run small."""
    import copy

    from qlib import adaround, calibration, integer_model, kmeans, logarithmic, low_bit_training
    from qlib import mixed_precision, per_vector_scales, pruning, ptq, qat, sat, stochastic_rounding, weights
    from qlib.microscaling import MXFP4_E2M1

    images = train.images
    schemes = [weights.WeightScheme("tensor", "tensor"), weights.WeightScheme("channel", "channel"),
               weights.WeightScheme("group", "group", 16, 16), weights.WeightScheme("mxint", "mx"),
               weights.WeightScheme("mxfp4", "mx", element=MXFP4_E2M1)]

    def qat_to_integer(method):
        q = qat.prepare_qat.unguarded(model, 4, 4, method)
        qat.calibrate_qat(q, train)
        q(images)
        return qat.to_integer_model(q.eval(), images)(images) if method != "lsq" else None

    def codebooks():
        m = copy.deepcopy(model)
        cq = kmeans.CodebookQuantizer(m, 2, masks=pruning.prune_model(m, 0.5))
        torch.nn.functional.cross_entropy(m(images), train.labels).backward()
        cq.set_codebook_grads()

    return {
        "weights.granularity_sweep": lambda: weights.granularity_sweep(model, test, [4], schemes),
        "ptq.quantize_static": lambda: [ptq.quantize_static(model, images, 4, 4, "channel", c)(images)
                                        for c in ("minmax", "percentile", "mse", "kl")],
        "ptq.quantize_dynamic": lambda: ptq.quantize_dynamic(model, 4, 4, "channel")(images),
        "ptq.quantize_n2d2": lambda: ptq.quantize_n2d2(model, images, 4, 4, "channel")[0](images),
        "integer_model": lambda: integer_model.fake_quantized_model(
            integer_model.convert_digits_cnn(model, images))(images),
        "qat (ste, pact, lsq) to the integer model": lambda: [qat_to_integer(m) for m in ("ste", "pact", "lsq")],
        "sat.prepare_sat": lambda: sat.prepare_sat(model, 4, 4)(images),
        "adaround": lambda: (adaround.adaround_model(model, images[:32], 4, n_steps=2),
                             adaround.nearest_model(model, 4)),
        "mixed_precision": lambda: mixed_precision.quantization_sensitivity.unguarded(model, test, [1, 2, 4]),
        "low_bit_training": lambda: low_bit_training.finetune_quantized(
            model, lambda w: mixed_precision.fake_quantize_any_width(w, 2), train, epochs=1, log=lambda line: None),
        "pruning and codebooks": codebooks,
        "pruning.sensitivity_scan": lambda: pruning.sensitivity_scan(model, test, (0.5,)),
        "logarithmic": lambda: logarithmic.pow2_fake_quantize_weights(model, 4)(images),
        "per_vector_scales": lambda: per_vector_scales.per_vector_fake_quantize(model.fc1.weight.detach(), 4),
        "calibration": lambda: [calibration.calibrate_threshold(images, 0, 15, c)
                                for c in ("minmax", "percentile", "mse", "kl")],
        "stochastic_rounding": lambda: stochastic_rounding.fake_quantize_stochastic(
            images, 0.1, 0, 0, 15, torch.Generator().manual_seed(0)),
    }


def test_qlib_pipelines_run_with_every_reference_blocked(digits, quiet_global_state):
    failed = {}
    with _reference.blocked(REFERENCES):
        for name, run in pipelines(*digits).items():
            try:
                run()
            except ReferenceUnavailable as err:
                failed[name] = str(err).split(" is the reference")[0]
    assert not failed, f"these pipelines reach a blocked reference: {failed}"
