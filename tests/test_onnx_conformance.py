"""ONNX operator conformance: every node test case shipped with the ``onnx`` package, through edgemill.

For each case from ``onnx.backend.test.case.node.collect_testcases()``:

1. not applicable: a graph input or output that a package cannot carry (sequence, optional, sparse,
   or an element type NumPy cannot represent: bfloat16, float8, int4, complex...), or a data set
   value that is not a tensor;
2. skipped: plain onnxruntime does not pass the case itself (cannot load it, fails to run it, or its
   outputs miss the expected ones): edgemill cannot do better than its backend;
3. otherwise: ``edgemill.compile`` (the case's own first inputs as the accuracy-check validation
   file) -> ``edgemill.runtime.load`` -> ``Model.run`` on every data set, compared with the case's
   expected outputs at the case's own ``rtol``/``atol``. Any error or mismatch is a failure.
   String inputs go into the validation file as fixed-width unicode arrays, the one form of string
   tensor that ``np.load(allow_pickle=False)`` (which edgemill uses, rightly) can read; ``Model.run``
   gets them as the cases hold them (object arrays).

Inputs are matched to the graph as onnx's own backend test runner and onnxruntime's backend do: the
data set's input list is aligned, in order, with the graph inputs that are not initializers.
"""

from __future__ import annotations

import re
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import edgemill
import edgemill.runtime as rt
from edgemill.tensors import ONNX_ELEM_TO_DTYPE

# Failures that are understood limitations rather than bugs: case name -> why. Each one is listed in the
# summary (never silently dropped), but does not fail the test.
KNOWN_LIMITATIONS: dict[str, str] = {}


@dataclass
class Tally:
    total: int = 0
    not_applicable: list[tuple[str, str]] = field(default_factory=list)
    ort_fails: list[tuple[str, str]] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    known: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"conformance: {self.total} cases, {len(self.not_applicable)} not applicable, "
            f"{len(self.ort_fails)} onnxruntime itself fails, {len(self.passed)} passed through edgemill, "
            f"{len(self.failed)} failed" + (f", {len(self.known)} known limitations" if self.known else "")
        ]
        if self.known:
            lines.append("known limitations (not counted as failures):")
            lines += [f"  {name}: {why}" for name, why in self.known]
        if self.failed:
            lines.append("failures:")
            lines += [f"  {name}: {why}" for name, why in self.failed]
        return "\n".join(lines)

    def details(self) -> str:
        """What was left out, and why, grouped: printed with -s, kept out of the failure message."""
        reasons = Counter(re.sub(r"'[^']*'", "X", why) for _, why in self.not_applicable)
        lines = ["not applicable, by reason:"] + [f"  {n:4d}  {why}" for why, n in reasons.most_common()]
        lines.append("onnxruntime itself fails (skipped):")
        lines += [f"  {name}: {why[:160]}" for name, why in self.ort_fails]
        return "\n".join(lines)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:400]}"


def _to_array(value: Any) -> np.ndarray | None:
    """A data set value as an ndarray (TensorProto and NumPy scalars normalized as onnx's runner and
    onnxruntime's backend do), or None when it is not a tensor (a sequence, an optional, None)."""
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, np.generic):
        return np.asarray(value)
    if isinstance(value, np.ndarray):
        return value
    return None


def _not_applicable(case: Any) -> str | None:
    """Why a package cannot carry this case, or None when it can."""
    graph = case.model.graph
    inits = {i.name for i in graph.initializer}
    for kind, values in (("input", [v for v in graph.input if v.name not in inits]), ("output", graph.output)):
        for v in values:
            which = v.type.WhichOneof("value")
            if which != "tensor_type":
                return f"graph {kind} {v.name!r} is {which}"
            elem = v.type.tensor_type.elem_type
            if elem not in ONNX_ELEM_TO_DTYPE:
                return f"graph {kind} {v.name!r} has element type {onnx.TensorProto.DataType.Name(elem)}"
    if not case.data_sets:
        return "no data sets"
    for inputs, outputs in case.data_sets:
        for value in list(inputs) + list(outputs):
            if _to_array(value) is None:
                return f"data set holds a {type(value).__name__}"
    return None


def _data_sets(case: Any) -> list[tuple[dict[str, np.ndarray], list[np.ndarray]]]:
    graph = case.model.graph
    inits = {i.name for i in graph.initializer}
    names = [v.name for v in graph.input if v.name not in inits]
    sets = []
    for inputs, outputs in case.data_sets:
        if len(inputs) > len(names):
            raise ValueError(f"data set has {len(inputs)} inputs, the graph {len(names)}")
        feed = {name: _to_array(x) for name, x in zip(names, inputs)}
        sets.append((feed, [_to_array(y) for y in outputs]))
    return sets


def _assert_close(actual: Any, expected: np.ndarray, rtol: float, atol: float, label: str) -> None:
    actual = np.asarray(actual)
    if actual.shape != expected.shape:
        raise AssertionError(f"{label}: shape {actual.shape}, expected {expected.shape}")
    if expected.dtype == object or expected.dtype.kind in "US":
        if not np.array_equal(actual.astype(object), expected.astype(object)):
            raise AssertionError(f"{label}: strings differ")
        return
    if actual.dtype != expected.dtype:
        raise AssertionError(f"{label}: dtype {actual.dtype}, expected {expected.dtype}")
    if expected.dtype.kind in "fc":
        try:
            np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)
        except AssertionError as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip().startswith(("Mismatched", "Max "))]
            raise AssertionError(f"{label}: not close (rtol={rtol}, atol={atol}): " + "; ".join(lines)) from None
    elif not np.array_equal(actual, expected):
        bad = int(np.sum(actual != expected))
        raise AssertionError(f"{label}: {bad} of {expected.size} values differ")


def _check_outputs(names: list[str], got: list[Any], want: list[np.ndarray], case: Any) -> None:
    if len(got) != len(want):
        raise AssertionError(f"{len(got)} outputs, expected {len(want)}")
    for name, g, w in zip(names, got, want):
        _assert_close(g, w, case.rtol, case.atol, f"output {name!r}")


def _ort_passes(case: Any, sets: list) -> str | None:
    """None when plain onnxruntime passes the case, else why not."""
    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(case.model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        return "load: " + _one_line(exc)
    names = [o.name for o in case.model.graph.output]
    try:
        for feed, want in sets:
            got = session.run(names[: len(want)], feed)
            _check_outputs(names, got, want, case)
    except Exception as exc:
        return "run: " + _one_line(exc)
    return None


def _npz_safe(x: np.ndarray) -> np.ndarray:
    """String tensors as fixed-width unicode: edgemill reads validation files with allow_pickle=False
    (rightly: a pickle can run code), so an object array of str, as the cases hold them, cannot be read."""
    if x.dtype == object:
        return np.asarray(x.tolist() if x.ndim else x.item(), dtype=str).reshape(x.shape)
    return x


def _through_edgemill(case: Any, sets: list, work: Path) -> None:
    """Compile, load and run the case through edgemill; raises on any error or mismatch."""
    model_path = work / "model.onnx"
    onnx.save(case.model, str(model_path))
    validation = work / "validation.npz"
    np.savez(validation, **{name: _npz_safe(x) for name, x in sets[0][0].items()})
    result = edgemill.compile(model_path, target="host", output=work / "model.emp", measure=False,
                              validation=validation, name=re.sub(r"[^A-Za-z0-9._-]", "-", case.name)[:128])
    model = rt.load(result.path, threads=1)
    out_names = [o.name for o in case.model.graph.output]
    if [s.name for s in model.outputs] != out_names:
        raise AssertionError(f"package outputs {[s.name for s in model.outputs]}, model outputs {out_names}")
    for i, (feed, want) in enumerate(sets):
        outputs = model.run(feed)
        try:
            _check_outputs(out_names[: len(want)], [outputs[n] for n in out_names[: len(want)]], want, case)
        except AssertionError as exc:
            raise AssertionError(f"data set {i}: {exc}") from None


@pytest.mark.slow
def test_onnx_node_conformance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from onnx.backend.test.case.node import collect_testcases

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the case generators overflow casts on purpose
        cases = collect_testcases()
    assert len(cases) > 1000, f"onnx shipped only {len(cases)} node test cases"

    tally = Tally(total=len(cases))
    for index, case in enumerate(cases):
        why = _not_applicable(case)
        if why is not None:
            tally.not_applicable.append((case.name, why))
            continue
        sets = _data_sets(case)
        why = _ort_passes(case, sets)
        if why is not None:
            tally.ort_fails.append((case.name, why))
            continue
        work = tmp_path / f"{index:04d}"
        work.mkdir()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _through_edgemill(case, sets, work)
        except Exception as exc:  # any error, edgemill's own or not, is a failure of this case
            if case.name in KNOWN_LIMITATIONS:
                tally.known.append((case.name, f"{KNOWN_LIMITATIONS[case.name]} [{_one_line(exc)}]"))
            else:
                tally.failed.append((case.name, _one_line(exc)))
        else:
            if case.name in KNOWN_LIMITATIONS:
                tally.failed.append((case.name, "listed as a known limitation but passes now: remove it from the list"))
            else:
                tally.passed.append(case.name)

    summary = tally.summary() + f"\n({time.perf_counter() - start:.1f} s)"
    with capsys.disabled():
        print("\n" + summary)
        print(tally.details())
    if tally.failed:
        pytest.fail(summary, pytrace=False)
