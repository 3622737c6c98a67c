"""What drift counting adds to a Predict: the same agent with ``[metrics] drift`` on and off, same run.

    python bench/drift_overhead.py [--seconds 3] [--rounds 5]

Two in-process agents (edgemill.agent.daemon.Agent, no sockets: the transport would hide microseconds)
load the same packages, one counting drift and one not; each round times ``DataPlane.predict`` on
each for ``--seconds``, alternating which goes first. Models: the test MLP (1x64 -> 10, 34 features
watched) and a MobileNetV2-style CNN at 1x3x224x224 (untrained: its cost is what matters). Prints p50
per call for both agents, the difference (MLP, in µs) and the ratio (CNN); the median over rounds.
Needs torch for the CNN export (the ``dev`` extra); without it only the MLP is measured.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))


def _agent(folder: Path, drift: bool):  # type: ignore[no-untyped-def]
    from edgemill.agent.config import config_from_dict
    from edgemill.agent.daemon import Agent

    config = config_from_dict({
        "models": {"directory": str(folder / "models"), "allow_unsigned": True},
        "capture": {"directory": str(folder / ("queue-on" if drift else "queue-off"))},
        "listen": {"metrics_address": ""},
        "metrics": {"drift": drift},
    }, folder / "agent.toml")
    return Agent(config)


def _packages(folder: Path) -> dict[str, tuple[Path, dict[str, np.ndarray]]]:
    import onnx

    import edgemill
    from edgemill.demo import zoo

    rng = np.random.default_rng(0)
    out: dict[str, tuple[Path, dict[str, np.ndarray]]] = {}
    onnx.save(zoo.mlp(), str(folder / "mlp.onnx"))
    np.savez(folder / "mlp-baseline.npz", features=rng.standard_normal((256, 64)).astype(np.float32))
    mlp = edgemill.compile(folder / "mlp.onnx", output=folder / "mlp.emp", measure=False,
                           baseline=folder / "mlp-baseline.npz").path
    out["mlp"] = (mlp, {"features": rng.standard_normal((1, 64)).astype(np.float32)})
    try:
        import torch
    except ImportError:
        print("torch is not installed: the CNN is left out", file=sys.stderr)
        return out
    from bench import _models

    net = _models.build_torch("mobilenet").eval()
    image = _models.example_input("mobilenet")
    torch.onnx.export(net, (torch.from_numpy(image),), str(folder / "cnn.onnx"), input_names=["input"],
                      output_names=["output"], opset_version=17, dynamo=False)
    cnn = edgemill.compile(folder / "cnn.onnx", output=folder / "cnn.emp", measure=False).path
    out["cnn224"] = (cnn, {"input": image})
    return out


def _p50_us(agent, name: str, feed: dict[str, np.ndarray], seconds: float) -> float:  # type: ignore[no-untyped-def]
    predict = agent.dataplane.predict
    for _ in range(20):
        predict(name, feed, received=time.perf_counter(), protocol="bench")
    times = []
    deadline = time.perf_counter() + seconds
    while len(times) < 50 or time.perf_counter() < deadline:
        start = time.perf_counter()
        predict(name, feed, received=start, protocol="bench")
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e6)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgemill-drift-") as tmp:
        folder = Path(tmp)
        packages = _packages(folder)
        agents = {"on": _agent(folder, True), "off": _agent(folder, False)}
        for agent in agents.values():
            for name, (path, _) in packages.items():
                agent.dataplane.load_model(str(path), name=name)
        for name, (_, feed) in packages.items():
            runs: dict[str, list[float]] = {"on": [], "off": []}
            for round_ in range(args.rounds):
                order = ("on", "off") if round_ % 2 == 0 else ("off", "on")
                for side in order:
                    runs[side].append(_p50_us(agents[side], name, feed, args.seconds))
            on, off = statistics.median(runs["on"]), statistics.median(runs["off"])
            features = len(agents["on"].models.get(name).drift.features)  # type: ignore[union-attr]
            print(f"{name:<8} {features:>3} features watched   p50 drift on {on:9.1f} µs   off {off:9.1f} µs   "
                  f"+{on - off:6.2f} µs   ratio {on / off:.4f}   rounds on {[round(x, 1) for x in runs['on']]} "
                  f"off {[round(x, 1) for x in runs['off']]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
