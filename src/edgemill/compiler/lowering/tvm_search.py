"""The TVM schedule search, in its own process so the compiler can stop it at the tuning deadline.

    python -m edgemill.compiler.lowering.tvm_search WORK_DIR TARGET_JSON MAX_TRIALS TRIALS_PER_TASK

Reads the Relax module from ``WORK_DIR/module.json`` and records every measured trial in the JSON
database ``WORK_DIR/workloads.json`` + ``WORK_DIR/records.json``, as it goes.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path


def main(argv: list[str]) -> int:
    work_dir, target_json, max_trials, per_task = Path(argv[0]), argv[1], int(argv[2]), int(argv[3])
    import tvm
    from tvm.s_tir import meta_schedule as ms

    mod = tvm.ir.load_json((work_dir / "module.json").read_text())
    target = tvm.target.Target(json.loads(target_json))
    database = ms.database.JSONDatabase(str(work_dir / "workloads.json"), str(work_dir / "records.json"))
    with tempfile.TemporaryDirectory(prefix="edgemill-ms-") as logs:
        ms.relax_integration.tune_relax(mod=mod, params={}, target=target, work_dir=logs, max_trials_global=max_trials,
                                        max_trials_per_task=per_task, num_trials_per_iter=8,
                                        database=database)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
