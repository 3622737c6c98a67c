"""Runs inside an emulated device: open a candidate's model files with the device's own runtime and
write its outputs for the check feeds. Started by :mod:`edgemill.emulation.gate` as
``python -m edgemill.emulation.worker JOB_DIR`` with the host's edgemill source first on ``PYTHONPATH``;
it imports only the runtime (numpy and the backend's library: what a device has).

``JOB_DIR/job.json``: backend, entrypoint, files (names under ``JOB_DIR/files``), output_names, threads,
backend_options. ``JOB_DIR/feeds.npz``: ``<feed index>/<input name>``. Writes ``JOB_DIR/outputs.npz``
(``<feed index>/<output index>``) or ``JOB_DIR/error.json`` ({"type", "message"}).
``--probe`` prints a JSON object: the machine, library versions and the backends this device lacks.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path


def probe() -> dict[str, object]:
    from edgemill.runtime.backends import missing_library, names

    versions: dict[str, str] = {}
    for module in ("numpy", "onnxruntime"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            pass
    return {"machine": platform.machine(), "python": platform.python_version(), "versions": versions,
            "missing": {name: missing for name in names() if (missing := missing_library(name))}}


def run_job(job_dir: Path) -> None:
    import numpy as np

    from edgemill.runtime.backends import open_session

    job = json.loads((job_dir / "job.json").read_text())
    files = {name: (job_dir / "files" / str(index)).read_bytes() for index, name in enumerate(job["files"])}
    with np.load(job_dir / "feeds.npz") as stored:
        feeds: dict[int, dict[str, np.ndarray]] = {}
        for key in stored.files:
            index, _, name = key.partition("/")
            feeds.setdefault(int(index), {})[name] = stored[key]
    session = open_session(job["backend"], job["entrypoint"], files, job["output_names"], job["threads"],
                           job["backend_options"])
    outputs: dict[str, np.ndarray] = {}
    for index in sorted(feeds):
        for position, value in enumerate(session.run(feeds[index])):
            outputs[f"{index}/{position}"] = np.asarray(value)
    np.savez(job_dir / "outputs.npz", **outputs)


def main(argv: list[str]) -> int:
    if argv == ["--probe"]:
        print(json.dumps(probe()))
        return 0
    job_dir = Path(argv[0])
    try:
        run_job(job_dir)
    except Exception as exc:  # noqa: BLE001 - reported to the host, which drops the candidate with it
        (job_dir / "error.json").write_text(json.dumps({"type": type(exc).__name__, "message": str(exc)[:4000]}))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
