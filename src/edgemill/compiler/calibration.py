"""Calibration data for static INT8 quantization, and the labelled data of the accuracy gate.

Calibration comes as ``--calibration DATA.npz`` (one array per model input, samples along the first
axis) or a folder of ``.npy`` files: either named after the inputs (``image.npy``, same layout as the
npz), or, for a one-input model, any names, each file one sample or a batch of samples. Everything
is checked against the model's inputs (names, dtypes, per-sample shapes) before quantization starts,
so a mistake costs seconds, not a failed quantization run.

A 0-d (scalar) input is not a batch of samples: its array is one value, used with every sample. An
input bound with ``--input NAME=VALUE`` may be left out of the file: it gets that value.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..captures.dataset import is_sharded, read_shards
from ..errors import FileNotFound, OptionError
from ..tensors import Scalar, TensorSpec, concrete_shape, dtype_name, numpy_dtype

LABEL_KEYS = ("labels", "label", "y")  # what the validation file may call its labels
MAX_CALIBRATION_SAMPLES = 512  # more adds time, not accuracy, for the calibrators we use


def _read_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    """One .npz, or a sharded export of captures (a folder of them: ``edgemill captures export``)."""
    if is_sharded(path):
        try:
            return read_shards(path)
        except (OSError, ValueError) as exc:
            raise OptionError(f"cannot read the {what} folder", value=str(path),
                              fix=f"export it again with edgemill captures export ({exc})") from None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise OptionError(f"cannot read the {what} file", value=str(path),
                          fix=f"save it with numpy.savez(path, **{{input_name: array}}) ({exc})") from None


def _read_folder(path: Path, specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    files = sorted(path.glob("*.npy"))
    if not files:
        raise OptionError("the calibration folder holds no .npy files", value=str(path),
                          fix="save samples with numpy.save(folder / 'sample0.npy', x), or pass an .npz")
    try:
        arrays = {f.stem: np.load(f, allow_pickle=False) for f in files}
    except (OSError, ValueError) as exc:
        raise OptionError("cannot read a calibration .npy file", value=str(path), fix=str(exc)) from None
    names = [s.name for s in specs]
    if set(names) <= set(arrays):
        return {n: arrays[n] for n in names}
    if len(specs) != 1:
        raise OptionError("a calibration folder for a model with several inputs needs one file per input",
                          value=", ".join(sorted(arrays)), expected=", ".join(f"{n}.npy" for n in names),
                          fix="name the files after the inputs, or pass an .npz with one array per input")
    spec = specs[0]
    per_sample = len(spec.shape) - 1
    samples = [a if a.ndim == per_sample + 1 else a[None] for a in arrays.values()]
    bad = next((f for f, a in zip(files, samples) if a.ndim != per_sample + 1), None)
    if bad is not None:
        raise OptionError(f"calibration file {bad.name} does not fit input {spec.name!r}",
                          value=list(np.load(bad).shape), expected=f"{spec.shape[1:]} or a batch of it",
                          fix="save one sample (or a batch of samples) per file")
    try:
        return {spec.name: np.concatenate(samples)}
    except ValueError:
        raise OptionError("calibration samples differ in shape", value=str(path),
                          fix=f"give every sample the shape {spec.shape[1:]}") from None


def check_arrays(arrays: dict[str, np.ndarray], specs: Sequence[TensorSpec], source: str) -> int:
    """Every input has its array, of its dtype, rank and fixed dimensions, with one sample count; returns it."""
    names = [s.name for s in specs]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise OptionError(f"the {source} lacks an array for input {missing[0]!r}", value=", ".join(sorted(arrays)),
                          expected="arrays named " + ", ".join(names), fix="save one array per model input, named after it")
    counts = set()
    for spec in specs:
        arr = arrays[spec.name]
        if not spec.shape:
            _check_scalar(arr, spec, source)
            continue
        if dtype_name(arr.dtype) != spec.dtype:
            raise OptionError(f"{source} array {spec.name!r} has the wrong dtype", value=dtype_name(arr.dtype),
                              expected=spec.dtype, fix=f"save it as {spec.dtype} (x.astype(np.{spec.dtype}))")
        if arr.ndim != len(spec.shape):
            raise OptionError(f"{source} array {spec.name!r} has the wrong number of dimensions",
                              value=list(arr.shape), expected=f"{len(spec.shape)} (samples first), like {list(spec.shape)}",
                              fix="stack the samples along the first axis")
        for axis, (got, want) in enumerate(zip(arr.shape[1:], spec.shape[1:]), start=1):
            if isinstance(want, int) and want > 0 and got != want:
                raise OptionError(f"{source} array {spec.name!r} does not fit the input's shape", value=list(arr.shape),
                                  expected=f"{list(spec.shape)} (dimension {axis} must be {want})",
                                  fix="resize or re-export the samples to the model's input shape")
        counts.add(arr.shape[0])
    if not counts:
        return 1  # only 0-d inputs: one call's worth
    if len(counts) != 1:
        raise OptionError(f"the {source} arrays hold different numbers of samples", value=sorted(counts),
                          fix="give every input the same number of samples")
    count = counts.pop()
    if count == 0:
        raise OptionError(f"the {source} is empty", value=0, expected="at least one sample",
                          fix="add samples (a few hundred representative inputs calibrate well)")
    return int(count)


def _check_scalar(arr: np.ndarray, spec: TensorSpec, source: str) -> None:
    if arr.ndim != 0:
        raise OptionError(f"{source} array {spec.name!r} is for a 0-d (scalar) input", value=list(arr.shape),
                          expected="a 0-d array: one value used with every sample",
                          fix=f"save it as numpy.asarray(value, dtype=numpy.{spec.dtype}), or bind it with "
                              f"--input {spec.name}=VALUE")


def _fill_bound(arrays: dict[str, np.ndarray], specs: Sequence[TensorSpec], bound: dict[str, Scalar] | None,
                source: str) -> None:
    """Inputs the file leaves out but ``--input NAME=VALUE`` binds: that value, one per sample."""
    per_sample = [a for s in specs if s.shape and s.name in arrays for a in [arrays[s.name]] if a.ndim]
    count = per_sample[0].shape[0] if per_sample else 1
    for spec in specs:
        if not bound or spec.name not in bound:
            continue
        if spec.name in arrays:
            if not np.all(arrays[spec.name] == bound[spec.name]):
                raise OptionError(f"the {source} gives input {spec.name!r} other values than --input binds",
                                  value=f"{spec.name}={bound[spec.name]}",
                                  expected=f"only {bound[spec.name]} in the file's {spec.name!r} array",
                                  fix=f"drop {spec.name!r} from the file (the bound value is used), or bind the value "
                                      "the file holds")
            continue
        shape = () if not spec.shape else concrete_shape(
            spec, count, f"give {spec.name!r} a static shape with --input {spec.name}:SHAPE={bound[spec.name]}")
        if spec.shape and isinstance(spec.shape[0], int) and spec.shape[0] > 0 and per_sample:
            shape = (count, *shape[1:])  # a static batch is cut from the samples later
        arrays[spec.name] = np.full(shape, bound[spec.name], dtype=numpy_dtype(spec.dtype))


def batches(arrays: dict[str, np.ndarray], specs: Sequence[TensorSpec], limit: int | None = None
            ) -> list[dict[str, np.ndarray]]:
    """Feeds of the model's batch size (1 when the batch is dynamic), in order. 0-d inputs go whole into
    every feed."""
    sampled = [s for s in specs if s.shape]
    count = arrays[sampled[0].name].shape[0] if sampled else 1
    if limit is not None:
        count = min(count, limit)
    first = sampled[0].shape[0] if sampled else 1
    size = first if isinstance(first, int) and first > 0 else 1
    return [{s.name: arrays[s.name][i:i + size] if s.shape else arrays[s.name] for s in specs}
            for i in range(0, count - size + 1, size)]


def load_calibration(path: Path, specs: Sequence[TensorSpec], bound: dict[str, Scalar] | None = None
                     ) -> list[dict[str, np.ndarray]]:
    if not path.exists():
        raise FileNotFound("calibration data not found", value=str(path),
                           fix="pass --calibration DATA.npz (one array per input) or a folder of .npy samples")
    sampled = [s for s in specs if s.name not in (bound or {})] or list(specs)
    arrays = _read_folder(path, sampled) if path.is_dir() and not is_sharded(path) else _read_npz(path, "calibration")
    _fill_bound(arrays, specs, bound, "calibration data")
    check_arrays(arrays, specs, "calibration data")
    feeds = batches(arrays, specs, MAX_CALIBRATION_SAMPLES)
    if not feeds:
        raise OptionError("the calibration data holds fewer samples than one batch of the model",
                          value=next(iter(arrays.values())).shape[0], expected=f"at least {specs[0].shape[0]}",
                          fix="add samples, or compile with a dynamic batch")
    return feeds


def load_validation(path: Path, specs: Sequence[TensorSpec], bound: dict[str, Scalar] | None = None,
                    role: str = "validation") -> tuple[list[dict[str, np.ndarray]], np.ndarray | None]:
    """The validation feeds and, when the file has them, the labels.

    The arrays are the model's inputs as they are (one feed), except that a set of samples larger than
    a static batch (e.g. 300 images for a ``1 x 3 x 224 x 224`` input) is cut into batches of it."""
    arrays = _read_npz(path, role)
    names = {s.name for s in specs}
    labels = next((arrays.pop(k) for k in LABEL_KEYS if k in arrays and k not in names), None)
    _fill_bound(arrays, specs, bound, f"{role} data")
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise OptionError(f"{role} file lacks an input", value=missing[0],
                          expected="arrays named " + ", ".join(s.name for s in specs),
                          fix="save one array per model input, named after it")
    for spec in specs:
        if dtype_name(arrays[spec.name].dtype) != spec.dtype:
            raise OptionError(f"{role} array {spec.name!r} has the wrong dtype", value=dtype_name(arrays[spec.name].dtype),
                              expected=spec.dtype, fix=f"save it as {spec.dtype}")
        if not spec.shape:
            _check_scalar(arrays[spec.name], spec, role)
        elif arrays[spec.name].ndim == 0:
            raise OptionError(f"{role} array {spec.name!r} is 0-d, but the input has dimensions",
                              value=spec.shape_text(), expected=f"an array of {len(spec.shape)} dimensions",
                              fix="save the input's samples, not a single value")
    feed = {s.name: arrays[s.name] for s in specs}
    sizes = {s.shape[0] for s in specs if s.shape}
    counts = {feed[s.name].shape[0] for s in specs if s.shape}
    batch = sizes.pop() if len(sizes) == 1 else None
    count = counts.pop() if len(counts) == 1 else None
    if isinstance(batch, int) and batch > 0 and isinstance(count, int) and count > batch and count % batch == 0:
        feeds = batches(feed, specs)
    else:
        feeds = [feed]
    if labels is not None:
        sampled = [s.name for s in specs if s.shape]
        samples = sum(f[sampled[0]].shape[0] for f in feeds) if sampled else 0
        if labels.ndim != 1 or labels.dtype.kind not in "iu" or labels.shape[0] != samples:
            raise OptionError(f"{role} labels must be one integer class per sample",
                              value=f"{labels.dtype}{list(labels.shape)}", expected=f"int array of shape [{samples}]",
                              fix="save labels=np.asarray(y, dtype=np.int64), one per input sample")
    return feeds, labels
