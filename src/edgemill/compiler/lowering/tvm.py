"""TVM artifacts: the fp32 graph compiled ahead of time by Apache TVM (Relax) into a shared library for
the target's LLVM triple and CPU (``model/model.so``), so the device needs only the TVM runtime.

TVM's generated code is only as good as its schedules: untuned, it runs about 100x slower than
onnxruntime on this kind of CPU. So before compiling, the schedules are searched with MetaSchedule for
at most ``--tune-budget`` seconds (in a child process stopped at the deadline), and the best schedule
found for each task (fused operator) is applied. The search database is kept in the tuning cache (keyed
by model, target and TVM version), so compiling the same model again applies the schedules found
without searching.

Only targets this machine can run are built: a library for another architecture could not be checked
against the accuracy gate here, and would need that architecture's cross toolchain.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from ...errors import BackendError, first_line
from ..graph import graph_inputs
from . import MODEL_DIR, Artifact, Candidate

if TYPE_CHECKING:
    from ..context import CompileContext

ENTRYPOINT = f"{MODEL_DIR}/model.so"
TRIAL_SECONDS_GUESS = 1.0  # one MetaSchedule trial (build + run) on a 2-core x86 machine, roughly
MIN_TRIALS_PER_TASK = 16  # the search aims at this many trials per task; the deadline may stop it first
MAX_TRIALS_PER_TASK = 256
AUTO_MIN_BUDGET_S = 300.0  # below this, --backend auto leaves TVM out: the search cannot catch up with onnxruntime


def llvm_target(cores: int | None) -> dict[str, Any]:
    """This machine's LLVM target in the dict form TVM 0.27 takes (it no longer parses "llvm -mcpu=...")."""
    import tvm

    target: dict[str, Any] = {"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()}
    if cores:
        target["num-cores"] = int(cores)
    return target


def build(model: onnx.ModelProto, candidate: Candidate, ctx: CompileContext) -> Artifact:
    try:
        import tvm
        from tvm import relax
        from tvm.relax.frontend.onnx import from_onnx
    except ImportError:
        raise BackendError("TVM is not installed", value="apache-tvm", fix="pip install 'edgemill[tvm]'") from None
    if candidate.precision != "fp32":
        raise BackendError("edgemill's TVM lowering builds fp32 only", value=candidate.precision,
                           fix="use --backend onnxruntime or openvino for reduced precision")
    target_dict = llvm_target(ctx.target.cores)
    target = tvm.target.Target(target_dict)
    try:
        mod = from_onnx(model, keep_params_in_input=False)
        mod = relax.transform.DecomposeOpsForInference()(mod)
        with target:
            mod = relax.get_pipeline("zero")(mod)
    except Exception as exc:  # the Relax importer raises many kinds of errors for unsupported operators
        raise BackendError("TVM cannot import the model", value=first_line(exc)[:300],
                           fix="compile with --backend onnxruntime or openvino") from None

    notes: dict[str, Any] = {"tvm": tvm.__version__, "llvm_target": target_dict}
    database = None
    if ctx.options.measure:
        database, search = _search(mod, target, model, target_dict, ctx)
        notes["search"] = search
    try:
        if database is not None:
            with target, database, tvm.transform.PassContext(opt_level=3):
                mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
        executable = tvm.compile(mod, target=target)
        with tempfile.TemporaryDirectory(prefix="edgemill-tvm-") as folder:
            path = os.path.join(folder, "model.so")
            executable.export_library(path)
            library = Path(path).read_bytes()
    except Exception as exc:
        raise BackendError("TVM cannot compile the model", value=first_line(exc)[:300],
                           fix="compile with --backend onnxruntime or openvino") from None
    inputs = [i.name for i in graph_inputs(model)]
    return Artifact(candidate, ENTRYPOINT, {ENTRYPOINT: library}, {"inputs": inputs}, notes)


def _search(mod: Any, target: Any, model: onnx.ModelProto, target_dict: dict[str, Any],
            ctx: CompileContext) -> tuple[Any, dict[str, Any]]:
    """MetaSchedule search for at most the tuning budget; returns (database, what was done).

    MetaSchedule has no time limit of its own, and one round can take many times longer than planned
    (cost-model training, compiling each trial). So the search runs in a child process
    (``tvm_search``) against a JSON database on disk, and is killed at the deadline: every trial it
    finished is already in the database."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from ..tuning import cache_dir, cache_key

    # The tuning cache's key: the model, the target, and the library versions (TVM's among them).
    key = cache_key(model.SerializeToString(deterministic=True), {"tvm_target": target_dict})
    work_dir = cache_dir() / "tvm" / key[:32]
    work_dir.mkdir(parents=True, exist_ok=True)
    workloads, records = work_dir / "workloads.json", work_dir / "records.json"
    tasks = ms.relax_integration.extract_tasks(mod, target)
    record: dict[str, Any] = {"tasks": len(tasks), "budget_s": ctx.options.tune_budget}
    budget = ctx.options.tune_budget
    searched = _searched_seconds(work_dir)
    if records.exists() and (searched >= budget or (work_dir / "done").exists()):
        # An earlier compile searched this model for this target at least as long: apply what it found.
        record.update(cached=str(work_dir), searched_s=searched)
        return ms.database.JSONDatabase(str(workloads), str(records)), record
    per_task = max(MIN_TRIALS_PER_TASK, min(MAX_TRIALS_PER_TASK, int(budget / (TRIAL_SECONDS_GUESS * max(len(tasks), 1)))))
    (work_dir / "module.json").write_text(tvm.ir.save_json(mod))
    ctx.progress("lower-tvm", f"TVM schedule search: up to {budget:g} s for {len(tasks)} tasks "
                 f"(log: {work_dir / 'search.log'})", None)
    started = time.perf_counter()
    with open(work_dir / "search.log", "ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "edgemill.compiler.lowering.tvm_search", str(work_dir), json.dumps(target_dict),
             str(per_task * len(tasks)), str(per_task)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            finished = child.wait(timeout=budget) == 0
        except subprocess.TimeoutExpired:
            finished = False
            os.killpg(child.pid, signal.SIGKILL)  # the builder and runner pools die with it
            child.wait()
    record["seconds"] = round(time.perf_counter() - started, 1)
    record["finished"] = finished
    _drop_torn_lines(workloads)
    _drop_torn_lines(records)
    trials = sum(1 for _ in records.open()) if records.exists() else 0
    record["trials"] = trials
    if finished:
        (work_dir / "done").touch()
    (work_dir / "searched_s").write_text(f"{searched + record['seconds']:.1f}")  # more budget later continues it
    if trials == 0:
        record["untuned"] = (f"no schedule was measured within {budget:g} s ({len(tasks)} tasks): the library is "
                             "untuned; pass a larger --tune-budget")
        return None, record
    return ms.database.JSONDatabase(str(workloads), str(records)), record


def _searched_seconds(work_dir: Path) -> float:
    try:
        return float((work_dir / "searched_s").read_text())
    except (OSError, ValueError):
        return 0.0


def _drop_torn_lines(path: Path) -> None:
    """A search killed mid-write can leave half a JSON line; keep only the complete ones."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            continue
        kept.append(line)
    if len(kept) != len(lines):
        path.write_text("".join(f"{line}\n" for line in kept))
