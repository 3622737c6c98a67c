"""The agent against calling the runtime in-process, and against a stock model server.

    python bench/agent.py [--mlserver-python /path/to/venv/bin/python] [--duration 10]

(a) Predict overhead: p50/p99 of ``AgentClient.predict`` over the local fast path, over gRPC on the
    Unix socket and over gRPC on TCP, minus ``model.run`` in-process, on a small MLP (batch 1, 1
    intra-op thread), one client, one call at a time; and the agent's own time per call (the
    response's ``timing.total_us``: from the decoded request to the encoded answer), apart from the
    transport's. gRPC is measured on both of grpcio's I/O cores (``[listen] grpc_io``: "iomgr", the
    agent's default, and "event-engine", grpcio's default).
    A Python thread echoing the same size of frame over a Unix socket, and a Python gRPC server whose
    handler does nothing (same payload size, on each I/O core), show the floor of each transport on
    this machine. Every path's calls are spread over interleaved rounds.
(b) Throughput: 8 client processes, each alternating between two models (the MLP and a small CNN),
    for ``--duration`` seconds, against
      - the edgemill agent through its KServe V2 service (tritonclient gRPC), on each gRPC I/O core,
      - the edgemill agent through edgemill.client on its Unix socket (which takes the fast path),
      - MLServer 1.x (its default settings) serving the same ONNX files through a ten-line onnxruntime
        runtime, through its KServe V2 gRPC (the same tritonclient load generator),
    all sessions with 1 intra-op thread. MLServer runs from ``--mlserver-python``, a venv made with
    ``pip install mlserver onnxruntime "uvloop<0.22"`` (MLServer 1.7's inference workers crash on
    uvloop 0.22 and newer); without one, (b) measures the agent only.
(c) Agent resident memory (VmRSS) at idle and with three models loaded (MLP, CNN, encoder).
(d) Dynamic batching: 8 client processes sending one row at a time to a model with a dynamic batch
    dimension (a 224x224 CNN, and a wide MLP whose weights dominate its cost), for ``--duration``
    seconds, against the agent without batching (each request runs alone, ``max_concurrency`` of them
    at once) and with ``[models.batching]`` (max_batch_size 8, max_queue_delay_us 2000): requests/s and
    the clients' p50/p99 latency; then each model's own session at batch 1 and 8, the most batching
    can gain.
(e) Cold start: a Predict on a model the memory budget evicted (``evict-lru``, room for one of the
    two CNNs), from the call to its answer, against the same Predict once loaded.

``--only a,d`` runs some of the sections.

Clients and servers share this machine's cores; every figure comes from this one run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _ort_baseline import time_calls  # noqa: E402
from _report import markdown_table  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def vm_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def percentiles(times_s: list[float]) -> dict[str, float]:
    import numpy as np

    arr = np.array(times_s) * 1e6
    return {"p50_us": float(np.percentile(arr, 50)), "p99_us": float(np.percentile(arr, 99)), "n": len(arr)}


# --- models -----------------------------------------------------------------------------------


def build_models(work: Path) -> dict[str, Path]:
    import onnx

    import edgemill
    from edgemill.demo import zoo

    models = {"mlp": zoo.mlp(), "cnn": zoo.cnn(), "encoder": zoo.encoder(seq=16, d_model=64, heads=4, d_ff=128, layers=2)}
    out: dict[str, Path] = {}
    (work / "onnx").mkdir()
    (work / "packages").mkdir()
    for name, proto in models.items():
        onnx.save(proto, str(work / "onnx" / f"{name}.onnx"))
        out[name] = edgemill.compile(work / "onnx" / f"{name}.onnx", output=work / "packages" / f"{name}.emp",
                                     measure=False).path
    return out


def feeds(package: Path) -> dict[str, Any]:
    import numpy as np

    import edgemill.runtime as rt

    model = rt.load(package)
    rng = np.random.default_rng(0)
    return {s.name: rng.standard_normal([d if isinstance(d, int) and d > 0 else 1 for d in s.shape]).astype(s.dtype)
            for s in model.inputs}


# --- the agent ----------------------------------------------------------------------------------


class Agent:
    def __init__(self, work: Path, threads: int = 1, concurrency: int = 4, budget_mb: float = 4096,
                 models_toml: str = "", standalone: bool = False, grpc_io: str = "iomgr") -> None:
        self.port, self.sock = free_port(), work / "agent.sock"
        config = work / "agent.toml"
        config.write_text(
            f'[listen]\naddress = "127.0.0.1:{self.port}"\nunix_socket = "{self.sock}"\nmetrics_address = ""\n'
            f'max_workers = 32\ngrpc_io = "{grpc_io}"\n[models]\nstandalone = {str(standalone).lower()}\ndirectory = "{work / "models"}"\n'
            f'allow_unsigned = true\nthreads = {threads}\n'
            f'max_concurrency = {concurrency}\nmemory_budget_mb = {budget_mb}\n{models_toml}'
            f'[capture]\ndirectory = "{work / "queue"}"\nstore = "file://{work / "store"}"\n')
        self.proc = subprocess.Popen([sys.executable, "-m", "edgemill", "agent", "--config", str(config),
                                      "--log-level", "warning"], stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if "serving on" not in line:
            raise SystemExit(f"agent did not start: {line!r}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


# --- (a) overhead -----------------------------------------------------------------------------


WARMUP = 200  # untimed calls per path before the rounds
ROUNDS = 10  # every path's calls are spread over this many rounds, the paths taking turns: slow drifts of
#            the machine (other guests on the host) fall on every path alike


def run_rounds(paths: list[tuple[str, Any]], calls: int) -> dict[str, list[float]]:
    """Seconds per call for each ``(label, call)``, measured in interleaved rounds after WARMUP calls each."""
    for _, call in paths:
        for _ in range(WARMUP):
            call()
    times: dict[str, list[float]] = {label: [] for label, _ in paths}
    for _ in range(ROUNDS):
        for label, call in paths:
            times[label] += time_calls(call, iterations=max(1, calls // ROUNDS), warmup=0)
    return times


def overhead(packages: dict[str, Path], work: Path, calls: int) -> list[list[str]]:
    """Rows of section (a): the agent's paths (on both of grpcio's I/O cores) and the bare transports."""
    import grpc

    import edgemill.runtime as rt
    from edgemill.agent.grpc_io import IOMGR_EXPERIMENTS, VARIABLE
    from edgemill.client import AgentClient

    feed = feeds(packages["mlp"])
    model = rt.load(packages["mlp"], threads=1)
    local = percentiles(time_calls(lambda: model.run(feed), iterations=calls, warmup=200))
    for io in ("iomgr", "event-engine"):
        (work / f"overhead-{io}").mkdir()
    agents = {io: Agent(work / f"overhead-{io}", threads=1, grpc_io=io) for io in ("iomgr", "event-engine")}
    echo_procs = {io: subprocess.Popen([sys.executable, "-c", ECHO_SERVER, str(work / f"echo-{io}.sock")],
                                       stdout=subprocess.PIPE, text=True,
                                       env={**os.environ, VARIABLE: IOMGR_EXPERIMENTS} if io == "iomgr" else None)
                  for io in ("iomgr", "event-engine")}
    framed = subprocess.Popen([sys.executable, "-c", FRAMED_ECHO_SERVER, str(work / "framed-echo.sock")],
                              stdout=subprocess.PIPE, text=True)
    closers: list[Any] = []
    try:
        ports = {io: int(proc.stdout.readline()) for io, proc in echo_procs.items()}  # type: ignore[union-attr]
        framed.stdout.readline()  # type: ignore[union-attr]
        own: dict[str, list[float]] = {}  # the agent's own time per call (timing.total_us): decode to encode
        paths: list[tuple[str, Any]] = []

        def agent_path(label: str, target: str, fast: bool) -> None:
            client = AgentClient(target, fast_path=fast)
            closers.append(client)
            client.predict("mlp", feed)  # connects (the model is loaded already)
            if fast:
                assert client.transport == "fast", "the agent offered no fast path"
            own[label] = []
            paths.append((label, lambda: own[label].append(client.predict("mlp", feed).timing.total_us / 1e6)))

        for agent in agents.values():
            with AgentClient(f"unix:{agent.sock}", fast_path=False) as loader:
                loader.load_model(str(packages["mlp"]), name="mlp")
        iomgr, event_engine = agents["iomgr"], agents["event-engine"]
        agent_path("agent, fast path (Unix socket)", f"unix:{iomgr.sock}", True)
        agent_path("agent, gRPC over the Unix socket (grpc_io iomgr, the default)", f"unix:{iomgr.sock}", False)
        agent_path("agent, gRPC over TCP 127.0.0.1 (grpc_io iomgr)", f"127.0.0.1:{iomgr.port}", False)
        agent_path("agent, gRPC over the Unix socket (grpc_io event-engine)", f"unix:{event_engine.sock}", False)
        agent_path("agent, gRPC over TCP 127.0.0.1 (grpc_io event-engine)", f"127.0.0.1:{event_engine.port}", False)
        payload = b"x" * (64 * 4)
        for io in ("iomgr", "event-engine"):
            for transport, target in (("Unix socket", f"unix:{work / f'echo-{io}.sock'}"),
                                      ("TCP", f"127.0.0.1:{ports[io]}")):
                channel = grpc.insecure_channel(target)
                closers.append(channel)
                echo = channel.unary_unary("/bench.Echo/Echo")
                paths.append((f"bare grpcio echo, {transport} (server on {io})", lambda echo=echo: echo(payload)))
        conn = socket.socket(socket.AF_UNIX)
        conn.connect(str(work / "framed-echo.sock"))
        closers.append(conn)
        frame = b"EMF1" + bytes(8) + (64 * 4 + 40).to_bytes(4, "little") + b"x" * (64 * 4 + 40)

        def framed_call() -> None:
            conn.sendall(frame)
            conn.recv(len(frame), socket.MSG_WAITALL)

        paths.append(("bare framed echo (Python), Unix socket", framed_call))
        times = run_rounds(paths, calls)
        rows = [["in-process `model.run`", f"{local['p50_us']:.0f}", f"{local['p99_us']:.0f}", "-", "-", "-"]]
        for label, _ in paths:
            stats = percentiles(times[label])
            if label in own:
                inside = percentiles(own[label][WARMUP:])
                rows.append([label, f"{stats['p50_us']:.0f}", f"{stats['p99_us']:.0f}",
                             f"{stats['p50_us'] - local['p50_us']:.0f}", f"{stats['p99_us'] - local['p99_us']:.0f}",
                             f"{inside['p50_us']:.0f}"])
            else:
                rows.append([label, f"{stats['p50_us']:.0f}", f"{stats['p99_us']:.0f}", "-", "-", "-"])
        return rows
    finally:
        for closer in closers:
            closer.close()
        for agent in agents.values():
            agent.stop()
        for proc in (*echo_procs.values(), framed):
            proc.kill()
            proc.wait(10)


ECHO_SERVER = """
import sys
from concurrent import futures
import grpc
handler = grpc.method_handlers_generic_handler(
    "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request)})
server = grpc.server(futures.ThreadPoolExecutor(16))
server.add_generic_rpc_handlers((handler,))
port = server.add_insecure_port("127.0.0.1:0")
server.add_insecure_port("unix:" + sys.argv[1])
server.start()
print(port, flush=True)
server.wait_for_termination()
"""


FRAMED_ECHO_SERVER = """
import socket, sys, threading
def serve(conn):
    while True:
        head = conn.recv(16, socket.MSG_WAITALL)
        if len(head) < 16:
            return
        body = conn.recv(int.from_bytes(head[12:16], "little"), socket.MSG_WAITALL)
        conn.sendall(head + body)
listener = socket.socket(socket.AF_UNIX)
listener.bind(sys.argv[1])
listener.listen(8)
print("ready", flush=True)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


# --- (b) throughput ---------------------------------------------------------------------------


def _v2_worker(address: str, models: list[str], inputs: dict[str, dict[str, Any]], duration: float, queue: Any) -> None:
    import tritonclient.grpc as triton
    from tritonclient.utils import np_to_triton_dtype

    client = triton.InferenceServerClient(url=address)
    prepared = {}
    for model in models:
        tensors = []
        for name, array in inputs[model].items():
            tensor = triton.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        prepared[model] = tensors
    queue.put(_count_calls(lambda model: client.infer(model, prepared[model]), models, duration))


def _edgemill_worker(address: str, models: list[str], inputs: dict[str, dict[str, Any]], duration: float, queue: Any) -> None:
    from edgemill.client import AgentClient

    client = AgentClient(address)
    queue.put(_count_calls(lambda model: client.predict(model, inputs[model]), models, duration))


def _count_calls(call: Any, models: list[str], duration: float) -> int:
    """One warm-up call per model, then calls alternating between the models for ``duration`` s."""
    for model in models:
        call(model)
    done, deadline = 0, time.perf_counter() + duration
    while time.perf_counter() < deadline:
        call(models[done % len(models)])
        done += 1
    return done


def drive(worker: Any, address: str, models: list[str], inputs: dict[str, dict[str, Any]], clients: int,
          duration: float) -> float:
    ctx = mp.get_context("spawn")  # a clean interpreter per client: no protobuf definitions shared
    queue = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(address, models, inputs, duration, queue)) for _ in range(clients)]
    for p in procs:
        p.start()
    total = sum(queue.get(timeout=duration + 120) for _ in procs)
    for p in procs:
        p.join(30)
    return total / duration


MLSERVER_RUNTIME = '''
import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxModel(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self._session = ort.InferenceSession(self.settings.parameters.uri, options, providers=["CPUExecutionProvider"])
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feed = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        results = self._session.run(self._outputs, feed)
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output(n, r) for n, r in zip(self._outputs, results)])
'''


def start_mlserver(python: str, work: Path, onnx_files: dict[str, Path]) -> tuple[subprocess.Popen[bytes], str]:
    root = work / "mlserver"
    root.mkdir()
    (root / "onnx_runtime.py").write_text(MLSERVER_RUNTIME)
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    (root / "settings.json").write_text(json.dumps({"host": "127.0.0.1", "http_port": http_port,
                                                    "grpc_port": grpc_port, "metrics_port": metrics_port}))
    for name, path in onnx_files.items():
        folder = root / name
        folder.mkdir()
        (folder / "model-settings.json").write_text(json.dumps(
            {"name": name, "implementation": "onnx_runtime.OnnxModel", "parameters": {"uri": str(path)}}))
    mlserver = str(Path(python).parent / "mlserver")
    log = open(work / "mlserver.log", "wb")
    proc = subprocess.Popen([mlserver, "start", str(root)], cwd=root, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(root)}, start_new_session=True)
    deadline = time.monotonic() + 120
    import urllib.request

    while time.monotonic() < deadline:
        try:
            ready = all(urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/models/{n}/ready", timeout=2).status == 200
                        for n in onnx_files)
            if ready:
                return proc, f"127.0.0.1:{grpc_port}"
        except OSError:
            pass
        time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)
    tail = (work / "mlserver.log").read_text(errors="replace")[-3000:]
    raise SystemExit("MLServer did not become ready in 120 s; its log ends with:\n" + tail)


def throughput(packages: dict[str, Path], work: Path, duration: float, clients: int,
               mlserver_python: str | None) -> list[list[str]]:
    from edgemill.client import AgentClient

    models = ["mlp", "cnn"]
    inputs = {m: feeds(packages[m]) for m in models}
    rows: list[list[str]] = []
    measured: dict[str, tuple[float, float]] = {}
    for io in ("iomgr", "event-engine"):  # the agent's default gRPC I/O core, and grpcio's own default
        (work / f"throughput-{io}").mkdir()
        agent = Agent(work / f"throughput-{io}", threads=1, concurrency=4, grpc_io=io)
        try:
            with AgentClient(f"127.0.0.1:{agent.port}") as client:
                for m in models:
                    client.load_model(str(packages[m]), name=m)
            v2 = drive(_v2_worker, f"127.0.0.1:{agent.port}", models, inputs, clients, duration)
            own = drive(_edgemill_worker, f"unix:{agent.sock}", models, inputs, clients, duration) if io == "iomgr" else 0.0
            measured[io] = (v2, own)
        finally:
            agent.stop()
    agent_v2, agent_own = measured["iomgr"]
    rows.append(["edgemill agent, KServe V2 gRPC (tritonclient)", f"{agent_v2:.0f}", "1.00"])
    rows.append(["edgemill agent, KServe V2 gRPC, grpc_io = event-engine", f"{measured['event-engine'][0]:.0f}",
                 f"{measured['event-engine'][0] / agent_v2:.2f}"])
    rows.append(["edgemill agent, edgemill.client on the Unix socket (fast path)", f"{agent_own:.0f}",
                 f"{agent_own / agent_v2:.2f}"])
    if mlserver_python:
        proc, address = start_mlserver(mlserver_python, work, {m: work / "onnx" / f"{m}.onnx" for m in models})
        try:
            ml = drive(_v2_worker, address, models, inputs, clients, duration)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        rows.append(["MLServer (defaults), KServe V2 gRPC (tritonclient)", f"{ml:.0f}", f"{ml / agent_v2:.2f}"])
    return rows


# --- (c) memory -------------------------------------------------------------------------------


def memory(packages: dict[str, Path], work: Path) -> list[list[str]]:
    from edgemill.client import AgentClient

    (work / "memory").mkdir()
    agent = Agent(work / "memory", threads=1)
    try:
        with AgentClient(f"unix:{agent.sock}") as client:
            client.wait_ready()
            time.sleep(1)
            idle = vm_rss_mib(agent.proc.pid)
            for name in ("mlp", "cnn", "encoder"):
                client.load_model(str(packages[name]), name=name)
                client.predict(name, feeds(packages[name]))
            time.sleep(1)
            loaded = vm_rss_mib(agent.proc.pid)
            accounted = sum(m["memory_bytes"] for m in client.list_models()) / 2**20
    finally:
        agent.stop()
    return [["idle, no models", f"{idle:.1f}", "-"],
            ["three models loaded (MLP, CNN, encoder), one call each", f"{loaded:.1f}", f"{accounted:.1f}"]]


# --- (d) dynamic batching ---------------------------------------------------------------------


def _latency_worker(address: str, model: str, feed: dict[str, Any], duration: float, queue: Any) -> None:
    from edgemill.client import AgentClient

    client = AgentClient(address)
    client.predict(model, feed)
    times: list[float] = []
    deadline = time.perf_counter() + duration
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        client.predict(model, feed)
        times.append(time.perf_counter() - start)
    queue.put(times)


def drive_latency(address: str, model: str, feed: dict[str, Any], clients: int, duration: float) -> tuple[float, dict]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_latency_worker, args=(address, model, feed, duration, queue)) for _ in range(clients)]
    for p in procs:
        p.start()
    times = [t for _ in procs for t in queue.get(timeout=duration + 120)]
    for p in procs:
        p.join(30)
    return len(times) / duration, percentiles(times)


def batch_cnn(work: Path) -> Path:
    import onnx

    import edgemill
    from edgemill.demo import zoo

    onnx.save(zoo.cnn(batch="batch", image=224), str(work / "onnx" / "cnn224.onnx"))
    return edgemill.compile(work / "onnx" / "cnn224.onnx", output=work / "packages" / "cnn224.emp", measure=False).path


def batch_mlp(work: Path) -> Path:
    """A wide MLP (512-2048-2048-10, 21 MB of weights): at batch 1 each call streams every weight once."""
    import onnx

    import edgemill
    from edgemill.demo import zoo

    onnx.save(zoo.mlp(batch="batch", features=512, hidden=(2048, 2048)), str(work / "onnx" / "mlpwide.onnx"))
    return edgemill.compile(work / "onnx" / "mlpwide.onnx", output=work / "packages" / "mlpwide.emp", measure=False).path


def backend_rows_per_s(package: Path, threads: int, batch: int, seconds: float = 2.0) -> float:
    """Rows per second of the package's own session at this batch size, in this process."""
    import numpy as np

    import edgemill.runtime as rt

    model = rt.load(package, threads=threads)
    feed = {n: np.repeat(a, batch, axis=0) for n, a in feeds(package).items()}
    model.run(feed)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.run(feed)
        done += 1
    return done * batch / (time.perf_counter() - start)


def batching(work: Path, package: Path, name: str, duration: float, clients: int) -> list[list[str]]:
    from edgemill.client import AgentClient

    feed = feeds(package)
    policy = f"[models.batching.{name}]\nmax_batch_size = 8\nmax_queue_delay_us = 2000\n"
    setups = [("no batching, 1 thread per request, max_concurrency 4", dict(threads=1, concurrency=4)),
              ("no batching, 2 threads per request, max_concurrency 1", dict(threads=2, concurrency=1)),
              ("batching (max 8 rows, 2000 µs), 2 threads per batch", dict(threads=2, models_toml=policy))]
    rows = []
    for i, (label, options) in enumerate(setups):
        folder = work / f"batching-{name}-{i}"
        folder.mkdir()
        agent = Agent(folder, **options)  # type: ignore[arg-type]
        try:
            with AgentClient(f"unix:{agent.sock}") as client:
                client.load_model(str(package), name=name)
            rate, stats = drive_latency(f"unix:{agent.sock}", name, feed, clients, duration)
        finally:
            agent.stop()
        rows.append([f"{name}: {label}", f"{rate:.0f}", f"{stats['p50_us'] / 1e3:.1f}", f"{stats['p99_us'] / 1e3:.1f}"])
    best_unbatched = max(float(r[1]) for r in rows[:-1])
    for r in rows:
        r.append(f"{float(r[1]) / best_unbatched:.2f}")
    return rows


# --- (e) cold start ----------------------------------------------------------------------------


def cold_start(work: Path, repeats: int = 5) -> list[list[str]]:
    """Each repeat a fresh agent whose models directory holds two CNNs (the same 224x224 CNN compiled as
    ``cold-a`` and ``cold-b``) and whose budget holds one: ``cold-a`` loads at start, ``cold-b`` is
    refused and remembered. ``cold-a`` is unloaded; the first Predict on ``cold-b`` loads it (the cold
    start), the second is warm. A repeat where both fitted after all is dropped, and counted."""
    import edgemill
    from edgemill.client import AgentClient

    if not (work / "onnx" / "cnn224.onnx").exists():
        batch_cnn(work)  # the ONNX file the two packages are compiled from
    made = {name: edgemill.compile(work / "onnx" / "cnn224.onnx", output=work / "packages" / f"{name}.emp",
                                   name=name, measure=False).path for name in ("cold-a", "cold-b")}
    (work / "cold-measure" / "models").mkdir(parents=True)
    shutil.copy(made["cold-a"], work / "cold-measure" / "models" / "cold-a.emp")
    agent = Agent(work / "cold-measure", threads=1, standalone=True)
    try:  # what the first model a fresh agent loads at start is charged (its files, or its resident growth)
        with AgentClient(f"unix:{agent.sock}") as client:
            client.wait_ready()
            first_mb = client.list_models()[0]["memory_bytes"] / 2**20
    finally:
        agent.stop()
    budget_mb = round(first_mb + made["cold-b"].stat().st_size / 2**20 / 2, 2)
    feed = feeds(made["cold-a"])
    cold, warm, dropped = [], [], 0
    for i in range(repeats):
        folder = work / f"cold-{i}"
        (folder / "models").mkdir(parents=True)
        for name, path in made.items():
            shutil.copy(path, folder / "models" / f"{name}.emp")
        agent = Agent(folder, threads=1, budget_mb=budget_mb, standalone=True)
        try:
            with AgentClient(f"unix:{agent.sock}") as client:
                client.wait_ready()
                if [m["name"] for m in client.list_models()] != ["cold-a"]:
                    dropped += 1
                    continue
                client.unload_model("cold-a")
                start = time.perf_counter()
                client.predict("cold-b", feed)
                cold.append(time.perf_counter() - start)
                start = time.perf_counter()
                client.predict("cold-b", feed)
                warm.append(time.perf_counter() - start)
        finally:
            agent.stop()
    if not cold:
        raise SystemExit(f"no repeat had cold-b refused at start (budget {budget_mb} MB): no figure")
    c, w = percentiles(cold), percentiles(warm)
    note = f" ({dropped} of {repeats} repeats dropped: both fitted)" if dropped else ""
    return [[f"first Predict on the model the budget left out (loads it, then answers){note}",
             f"{c['p50_us'] / 1e3:.1f}", f"{max(cold) * 1e3:.1f}", str(len(cold))],
            ["the next Predict on it", f"{w['p50_us'] / 1e3:.1f}", f"{max(warm) * 1e3:.1f}", str(len(warm))]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per throughput run")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--calls", type=int, default=3000, help="timed calls per overhead row")
    parser.add_argument("--mlserver-python", help="python of a venv with mlserver and onnxruntime installed")
    parser.add_argument("--only", default="a,b,c,d,e", help="sections to run, e.g. d,e")
    args = parser.parse_args()
    only = set(args.only.split(","))
    if args.mlserver_python and not (Path(args.mlserver_python).parent / "mlserver").exists():
        raise SystemExit(f"no mlserver next to {args.mlserver_python}; create one with: python3 -m venv V && "
                         "V/bin/pip install mlserver onnxruntime 'uvloop<0.22'")
    work = Path(tempfile.mkdtemp(prefix="edgemill-bench-agent-"))
    try:
        packages = build_models(work)
        if "a" in only:
            print("## (a) Predict overhead over in-process `model.run` (MLP, batch 1, 1 thread)\n")
            rows = overhead(packages, work, args.calls)
            print(markdown_table(rows, ["path", "p50 µs", "p99 µs", "overhead p50 µs", "overhead p99 µs",
                                        "agent's own p50 µs"]))
        if "b" in only:
            print(f"\n## (b) Throughput, {args.clients} client processes alternating MLP and CNN, {args.duration:g} s\n")
            print(markdown_table(throughput(packages, work, args.duration, args.clients, args.mlserver_python),
                                 ["server", "requests/s", "ratio to agent (V2)"]))
        if "c" in only:
            print("\n## (c) Agent memory (VmRSS)\n")
            print(markdown_table(memory(packages, work), ["state", "RSS MiB", "models' accounted MiB"]))
        if "d" in only:
            print(f"\n## (d) Dynamic batching: {args.clients} client processes, one row per request, "
                  f"{args.duration:g} s per row\n")
            made = {"cnn224": batch_cnn(work), "mlpwide": batch_mlp(work)}
            rows = [r for name, package in made.items()
                    for r in batching(work, package, name, args.duration, args.clients)]
            print(markdown_table(rows, ["agent", "requests/s", "p50 ms", "p99 ms", "ratio to best unbatched"]))
            print("\nThe backend alone, in this process (what batching can gain at most):\n")
            backend = [[name, str(threads), f"{backend_rows_per_s(package, threads, 1):.0f}",
                        f"{backend_rows_per_s(package, threads, 8):.0f}"]
                       for name, package in made.items() for threads in (1, 2)]
            for r in backend:
                r.append(f"{float(r[3]) / float(r[2]):.2f}")
            print(markdown_table(backend, ["model", "threads", "rows/s at batch 1", "rows/s at batch 8", "ratio"]))
        if "e" in only:
            print("\n## (e) Cold start (CNN 224x224, evict-lru budget for one of two)\n")
            print(markdown_table(cold_start(work), ["call", "p50 ms", "max ms", "calls"]))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
