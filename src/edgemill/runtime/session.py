"""A loaded model: verified package, checked inputs, one backend session."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import BackendError
from ..monitoring.features import Baseline, parse_baseline
from ..package.layout import BASELINE
from ..package.store import TrustedKeys, read_verified_model
from ..package.verify import VerifiedPackage
from ..pipeline.images import decode_inputs
from ..pipeline.stages import PipelineLayout, PipelineRunner
from ..targets import host
from ..tensors import TensorSpec
from .backends import open_session
from .validate import InputChecker


class Model:
    """A compiled model ready to run. Thread-safe for concurrent :meth:`run` calls."""

    def __init__(self, verified: VerifiedPackage, files: dict[str, bytes], threads: int | None) -> None:
        manifest = verified.manifest
        _check_cpu(manifest.backend_options)
        self.package_id = verified.package_id
        self.manifest = manifest
        self.signed_by = verified.signed_by.short_id if verified.signed_by else None
        self.inputs: list[TensorSpec] = list(manifest.inputs)
        self.outputs: list[TensorSpec] = list(manifest.outputs)
        self._output_names = [s.name for s in self.outputs]
        self._checker = InputChecker(self.inputs)
        if threads is None:  # the thread count tuning found fastest for this target, if it measured one
            threads = manifest.backend_options.get("threads")
        self.threads = threads
        self.pipeline = PipelineLayout.from_dict(manifest.pipeline) if manifest.pipeline is not None else None
        if self.pipeline is None:
            model_outputs = self._output_names
        elif self.pipeline.fused:  # the model graph holds the stages: frames in, decoded outputs out
            model_outputs = self.pipeline.fused_outputs()
        else:
            model_outputs = [s.name for s in self.pipeline.model_outputs]
        self._session = open_session(manifest.backend, manifest.entrypoint, files, model_outputs, threads,
                                     manifest.backend_options)
        # A backend that names its outputs itself saves the list-then-dict step on every call.
        run_named = getattr(self._session, "run_named", None)
        # Frame inputs that may come as JPEG/PNG bytes: name -> (pre-processing spec, channels).
        self._images: dict[str, tuple[dict[str, Any], int]] = {}
        self._model_call = run_named or (lambda feed: dict(zip(model_outputs, self._session.run(feed))))
        self._call = self._model_call  # checked inputs -> outputs by name
        if self.pipeline is not None:  # frames in, names out: the stages wrap the model's own call
            self._call = PipelineRunner(self.pipeline, files, self._model_call, threads, self._output_names).run
            specs = {s.name: s for s in self.inputs}
            self._images = {p.input: (p.spec, _frame_channels(specs[p.input], p.spec)) for p in self.pipeline.preprocess}
        self._baseline_bytes = files.get(BASELINE)  # verified with the rest; parsed when asked for

    @property
    def baseline(self) -> Baseline | None:
        """The drift baseline the package carries (None for a package compiled before there were any).
        ``ValueError`` if it is malformed (it is signed: only a broken compiler writes one so)."""
        return parse_baseline(self._baseline_bytes) if self._baseline_bytes is not None else None

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def backend(self) -> str:
        return self.manifest.backend

    @property
    def image_inputs(self) -> list[str]:
        """Inputs that take camera frames (``--preprocess``): raw pixels, or JPEG/PNG bytes."""
        return list(self._images)

    def run(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run the model on ``inputs`` (name -> array); returns outputs by name. An input that takes
        camera frames also accepts the encoded image (``bytes``, or an object array of them per frame)."""
        return self._call(self.checked(inputs))  # type: ignore[no-any-return]

    def checked(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """``inputs`` as :meth:`run` hands them to the backend: encoded frames decoded, names, dtypes
        and shapes checked (:class:`InputMismatchError` naming the tensor otherwise)."""
        if self._images:
            inputs = decode_inputs(inputs, self._images)
        return self._checker.check(inputs)  # type: ignore[no-any-return]

    def run_checked(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """:meth:`run` on inputs :meth:`checked` already returned (the agent's batcher checks each
        request on its own, then runs them stacked)."""
        return self._call(inputs)  # type: ignore[no-any-return]

    def run_model(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model alone, without the package's pre- and post-processing: the model's own inputs
        (``pipeline.model_inputs``) to its own outputs, unchecked. For a package without a pipeline, the
        same as :meth:`run` minus the input check. A package whose stages are merged into its model
        (``pipeline.fused``: onnxruntime and OpenVINO packages by default) has no model alone to run: :class:`BackendError`."""
        if self.pipeline is not None and self.pipeline.fused:
            raise BackendError(f"package {self.name} runs its pre/post-processing inside its model graph, so there is "
                               "no model alone to run", value="run_model",
                               fix="call run() with frames; or compile with --no-fuse-pipeline to keep the stages apart")
        return self._model_call(inputs)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"<edgemill Model {self.name} {self.version} [{self.backend}] id={self.package_id[:12]}>"


def _frame_channels(frame: TensorSpec, pre: Mapping[str, Any]) -> int:
    return int(frame.shape[-1] if pre.get("layout", "NHWC") == "NHWC" else frame.shape[1])


def _check_cpu(options: Mapping[str, Any]) -> None:
    required = set(options.get("requires_cpu_features", ()))
    missing = sorted(required - set(host().cpu_features))
    if missing:
        raise BackendError(
            "package was compiled for a CPU with features this machine lacks", value=", ".join(missing),
            fix="compile for a portable target (e.g. -t x86_64-avx2 or -t aarch64) or for -t host on this device",
        )


def load(
    path: str | os.PathLike[str],
    trusted_keys: TrustedKeys | None = None,
    threads: int | None = None,
    installed_version: str | None = None,
    allow_rollback: bool = False,
) -> Model:
    """Verify the package at ``path``, then load it.

    ``trusted_keys``: public keys (paths, PEM bytes or :class:`PublicKey`); when given, the package
    must be signed by one of them. When ``None``, only its integrity against its manifest is checked.
    ``threads``: intra-op threads for the backend (default: the backend's choice, usually the core count).
    """
    verified, files = read_verified_model(path, trusted_keys, installed_version, allow_rollback)
    return Model(verified, files, threads)
