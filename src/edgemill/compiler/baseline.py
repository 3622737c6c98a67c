"""The drift baseline a package carries (``monitoring/baseline.json``, hashed and signed like every file):
the features of the model's inputs and outputs (``edgemill.monitoring.features``), binned and counted
over reference data run through the packaged model itself.

Which data: ``--baseline DATA.npz`` if given, else ``--validation``, else ``--calibration``, else the
generated check inputs. The last is marked synthetic: random inputs say little about what a camera or a
sensor will send, so drift against them is weak evidence (the dashboard says so).
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from ..errors import first_line
from ..monitoring.features import build_features
from ..package.layout import BASELINE
from . import calibration as data_files
from . import sample_inputs
from .context import CompileContext
from .lowering import Artifact

FORMAT = "edgemill.baseline/1"
SYNTHETIC_SAMPLES = 64
SYNTHETIC_SECONDS = 3.0


def load(ctx: CompileContext, bound: dict[str, Any]) -> list[dict[str, np.ndarray]] | None:
    """The ``--baseline`` file's feeds, checked against the inputs before anything is built."""
    if ctx.options.baseline is None:
        return None
    feeds, _ = data_files.load_validation(ctx.options.baseline, ctx.inputs, bound, role="baseline")
    for feed in feeds:  # dimensions too: a baseline of the wrong size would fail only after every candidate
        data_files.check_arrays(feed, ctx.inputs, "baseline file")
    return feeds


def build_or_explain(ctx: CompileContext, artifact: Artifact, check_feeds: list[dict[str, np.ndarray]],
                     output_names: list[str], baseline_feeds: list[dict[str, np.ndarray]] | None, bound: dict[str, Any],
                     session: Any = None) -> tuple[dict[str, bytes], dict[str, Any]]:
    """:func:`build`, except that a model the baseline cannot be counted for (its outputs refuse the
    generated inputs, say) still gets its package: without a baseline, and a warning that says why.
    A ``--baseline`` file the user gave is checked before any candidate is built (:func:`load`)."""
    try:
        return build(ctx, artifact, check_feeds, output_names, baseline_feeds, bound, session)
    except Exception as exc:  # noqa: BLE001 - monitoring is an addition: it must not cost the user the package
        reason = f"{type(exc).__name__}: {first_line(exc)}"[:300]
        ctx.warnings.append(f"no drift baseline in the package ({reason}); the fleet shows its drift as 'no baseline'")
        return {}, {"summary": f"no baseline: {reason}", "error": reason}


def build(ctx: CompileContext, artifact: Artifact, check_feeds: list[dict[str, np.ndarray]], output_names: list[str],
          baseline_feeds: list[dict[str, np.ndarray]] | None, bound: dict[str, Any], session: Any = None
          ) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The package file (path -> bytes) and what the compile report says about it. ``session``: what runs
    the package's inputs to its outputs (default: the artifact alone; a package with a pipeline passes
    its stages around the artifact, and a ``ctx`` whose inputs and outputs are the package's)."""
    from .candidates import open_artifact

    o = ctx.options
    session = session or open_artifact(artifact, output_names, o.check_threads)
    synthetic = False
    if baseline_feeds is not None and o.baseline is not None:
        feeds, data = baseline_feeds, f"baseline file {o.baseline.name}"
    elif o.validation is not None:
        feeds, data = check_feeds, f"validation file {o.validation.name}"
    elif ctx.calibration is not None and o.calibration is not None:
        feeds, data = ctx.calibration, f"calibration data {o.calibration.name}"
    else:
        feeds, data, synthetic = [], "generated inputs", True
    if synthetic:
        feeds, results = _synthetic(ctx, session, bound)
    else:
        results = [list(session.run(feed)) for feed in feeds]
    outputs = [dict(zip(output_names, r)) for r in results]
    features = build_features([(s.name, s.dtype, list(s.shape)) for s in ctx.inputs if s.value is None],
                              [(s.name, s.dtype, list(s.shape)) for s in ctx.outputs], feeds, outputs)
    samples = max((sum(f.baseline) for f in features), default=0)
    doc = {"format": FORMAT, "data": data, "synthetic": synthetic, "samples": samples,
           "features": [f.to_dict() for f in features]}
    summary = (f"{len(features)} feature(s) over {samples} sample(s) of {data}"
               + (" (synthetic: pass --baseline DATA.npz with real inputs for a useful baseline)" if synthetic else ""))
    record = {"data": data, "synthetic": synthetic, "samples": samples, "features": len(features), "summary": summary}
    return {BASELINE: json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()}, record


def _synthetic(ctx: CompileContext, session: Any, bound: dict[str, Any]
               ) -> tuple[list[dict[str, np.ndarray]], list[list[np.ndarray]]]:
    """About SYNTHETIC_SAMPLES generated samples (fewer for a slow model: at most SYNTHETIC_SECONDS)."""
    dynamic = sample_inputs.has_dynamic_batch(ctx.inputs)
    batch = SYNTHETIC_SAMPLES if dynamic else 1
    feeds: list[dict[str, np.ndarray]] = []
    results: list[list[np.ndarray]] = []
    samples, deadline = 0, time.monotonic() + SYNTHETIC_SECONDS
    while samples < SYNTHETIC_SAMPLES and (not feeds or time.monotonic() < deadline):
        feed = sample_inputs.generate(ctx.inputs, batch, ctx.options.seed + 1000 + len(feeds), bound)
        results.append(list(session.run(feed)))
        feeds.append(feed)
        first = next((v for v in feed.values() if np.ndim(v)), None)
        samples += int(first.shape[0]) if first is not None else 1
    return feeds, results
