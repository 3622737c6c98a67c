"""Compile options, validated once at the edge so the pipeline can trust them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import FileNotFound, OptionError
from ..package.layout import SUFFIX
from ..package.manifest import is_semver
from ..targets import get_target
from ..pipeline.spec import PipelineSpec
from ..tensors import InputOverride, parse_input_override

PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")
BACKENDS = ("auto", "onnxruntime", "openvino", "tvm", "litert", "reference")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
DEFAULT_TUNE_BUDGET_S = 20.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def split_entry(path: Path | str) -> tuple[Path, str] | None:
    """``(Path("dir/model.py"), "factory")`` for a Python entry ``dir/model.py:factory``, else None."""
    file, sep, name = str(path).rpartition(":")
    if sep and file.lower().endswith(".py") and name.isidentifier():
        return Path(file), name
    return None


def split_member(path: Path | str) -> tuple[Path, str] | None:
    """``(Path("vad.jit"), "_model")`` for ``vad.jit:_model`` (a submodule of a TorchScript archive, a dotted
    path allowed), when the file exists and the whole path does not, else None."""
    file, sep, name = str(path).rpartition(":")
    if not sep or file.lower().endswith(".py") or Path(str(path)).exists() or not Path(file).is_file():
        return None
    return (Path(file), name) if all(part.isidentifier() for part in name.split(".")) else None


def merge_overrides(overrides: list[InputOverride]) -> tuple[InputOverride, ...]:
    """``--input sr:scalar --input sr=16000`` is ``--input sr:scalar=16000``: one entry per input. Two that
    both give a shape, or both a value, stay apart (and are refused as given twice)."""
    merged: list[InputOverride] = []
    for o in overrides:
        same = next((i for i, m in enumerate(merged) if m.name == o.name), None)
        if same is not None:
            m = merged[same]
            if (m.shape is None or o.shape is None) and (m.value is None or o.value is None) and \
                    (m.dtype is None or o.dtype is None or m.dtype == o.dtype):
                merged[same] = InputOverride(o.name, m.shape if o.shape is None else o.shape, m.dtype or o.dtype,
                                             m.value if o.value is None else o.value)
                continue
        merged.append(o)
    return tuple(merged)


@dataclass(frozen=True)
class CompileOptions:
    model: Path
    target: str = "host"
    output: Path | None = None
    framework: str | None = None
    inputs: tuple[InputOverride, ...] = ()
    precision: str = "auto"
    backend: str = "auto"
    name: str | None = None
    version: str = "0.1.0"
    tolerance: float = 1e-4  # max relative error accepted for a lossless compile
    validation: Path | None = None  # .npz of inputs (and optional labels) for the accuracy gate
    calibration: Path | None = None  # .npz or folder of .npy: representative inputs for static INT8
    calibration_method: str = "minmax"
    baseline: Path | None = None  # .npz of typical inputs: the drift baseline (else validation/calibration/generated)
    max_accuracy_drop: float = 0.0  # what a reduced-precision candidate may lose (0: nothing)
    measure: bool = True  # tune (measure candidates) when the target runs here
    tune_budget: float = DEFAULT_TUNE_BUDGET_S  # seconds of measuring, all candidates together
    seed: int = 0
    trust_pickle: bool = False  # unpickling runs code: only with the user's explicit consent
    check_threads: int = 1  # one thread makes the accuracy check, and so the manifest, deterministic
    extra_passes: tuple[str, ...] = field(default_factory=tuple)
    pipeline: PipelineSpec | None = None  # pre/post-processing compiled into the package (edgemill.pipeline)
    fuse_pipeline: bool = True  # merge the stage graphs into an onnxruntime model (one session runs them all)
    # Static INT8 that misses the allowance returns its most sensitive operators to FP32 until it passes
    # (compiler/mixed_precision.py), searching for at most tune_budget seconds.
    mixed_precision: bool = True

    @classmethod
    def create(
        cls,
        model: str | Path,
        target: str = "host",
        output: str | Path | None = None,
        inputs: list[str] | tuple[str | InputOverride, ...] = (),
        **kwargs: object,
    ) -> CompileOptions:
        """Build options from user-facing values (paths as text, ``--input`` strings), validated."""
        overrides = merge_overrides([i if isinstance(i, InputOverride) else parse_input_override(i) for i in inputs])
        opts = cls(
            model=Path(model),
            target=target,
            output=Path(output) if output is not None else None,
            inputs=overrides,
            **kwargs,  # type: ignore[arg-type]
        )
        opts.validate()
        return opts

    def validate(self) -> None:
        if not self.source_path.exists():
            raise FileNotFound("model file not found", value=str(self.source_path), fix="check the path")
        get_target(self.target)  # an unknown target fails here, before any work
        if self.precision not in PRECISIONS:
            raise OptionError("unknown precision", value=self.precision, expected=" | ".join(PRECISIONS),
                              fix="pass --precision fp32")
        if self.backend not in BACKENDS:
            raise OptionError("unknown backend", value=self.backend, expected=" | ".join(BACKENDS),
                              fix="pass --backend auto")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise OptionError("unknown calibration method", value=self.calibration_method,
                              expected=" | ".join(CALIBRATION_METHODS), fix="pass --calibration-method minmax")
        if not (0 <= self.max_accuracy_drop < 1):
            raise OptionError("--max-accuracy-drop out of range", value=self.max_accuracy_drop,
                              expected="0 <= drop < 1 (a fraction: 0.01 is one point of top-1)",
                              fix="pass e.g. --max-accuracy-drop 0.01")
        if not self.tune_budget > 0:
            raise OptionError("the tuning budget must be positive", value=self.tune_budget,
                              fix="pass e.g. --tune-budget 20, or --no-measure to skip tuning")
        if self.calibration is not None and not self.calibration.exists():
            raise FileNotFound("calibration data not found", value=str(self.calibration),
                               fix="pass --calibration DATA.npz (one array per input) or a folder of .npy samples")
        if self.baseline is not None and not self.baseline.exists():
            raise FileNotFound("baseline data not found", value=str(self.baseline),
                               fix="pass --baseline DATA.npz (one array per input, samples first)")
        if not is_semver(self.version):
            raise OptionError("version is not semantic", value=self.version, expected="MAJOR.MINOR.PATCH, e.g. 1.2.0",
                              fix="pass --version 1.0.0")
        if self.name is not None and not _NAME.match(self.name):
            raise OptionError("bad package name", value=self.name,
                              expected="letters, digits, '.', '_' or '-', starting with a letter or digit",
                              fix="pass --name my-model")
        if not (0 <= self.tolerance < 1):
            raise OptionError("tolerance out of range", value=self.tolerance, expected="0 <= tolerance < 1",
                              fix="pass e.g. --tolerance 1e-4")
        from ..captures.dataset import is_sharded  # numpy: not for every CLI start

        if self.validation is not None and not (self.validation.is_file() or is_sharded(self.validation)):
            raise FileNotFound("validation file not found", value=str(self.validation),
                               fix="pass an .npz with one array per model input (or a folder edgemill captures "
                                   "export wrote)")
        names = [o.name for o in self.inputs]
        if len(set(names)) != len(names):
            raise OptionError("the same input is given twice with --input", value=names, fix="give each input once")

    @property
    def source_path(self) -> Path:
        """The file or directory the model comes from (for ``model.py:factory``, the ``.py`` file)."""
        entry = split_entry(self.model) or split_member(self.model)
        return entry[0] if entry else self.model

    @property
    def package_name(self) -> str:
        if self.name:
            return self.name
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", self.source_path.stem).strip("-.") or "model"
        return stem[:128]

    @property
    def output_path(self) -> Path:
        if self.output is not None:
            return self.output
        return self.source_path.with_name(f"{self.package_name}-{self.target}{SUFFIX}")

