"""What drift counting adds to a Predict: the same agent with drift counting on and off, same run.

    python bench/drift_overhead.py [--seconds 3] [--rounds 5]

One in-process agent (edgemill.agent.daemon.Agent, no sockets: the transport would hide microseconds)
with ``[metrics] drift`` on loads each package; its calls to ``DataPlane.predict`` then alternate, call
by call, between the model with its drift window attached and the same model with it detached, so both
sides share the session, the caches and whatever else the machine is doing at that moment (two agents
timed in turns differed by more than the effect from one round to the next). Each round lasts
``--seconds``; printed: the median over rounds of each side's p50 and mean per call (the mean includes
the batched binning, which runs every few hundred calls), the difference and the ratio. Models: the
test MLP (1x64 -> 10, 34 features watched) and a MobileNetV2-style CNN at 1x3x224x224 (untrained: its
cost is what matters). Needs torch for the CNN export (the ``dev`` extra); without it only the MLP is
measured.
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


def _agent(folder: Path):  # type: ignore[no-untyped-def]
    from edgemill.agent.config import config_from_dict
    from edgemill.agent.daemon import Agent

    config = config_from_dict({
        "models": {"directory": str(folder / "models"), "allow_unsigned": True},
        "capture": {"directory": str(folder / "queue")},
        "listen": {"metrics_address": ""},
        "metrics": {"drift": True},
    }, folder / "agent.toml")
    return Agent(config)


def _packages(folder: Path, wanted: set[str]) -> dict[str, tuple[Path, dict[str, np.ndarray]]]:
    import onnx

    import edgemill
    from edgemill.demo import zoo

    rng = np.random.default_rng(0)
    out: dict[str, tuple[Path, dict[str, np.ndarray]]] = {}
    if "mlp" in wanted:
        onnx.save(zoo.mlp(), str(folder / "mlp.onnx"))
        np.savez(folder / "mlp-baseline.npz", features=rng.standard_normal((256, 64)).astype(np.float32))
        mlp = edgemill.compile(folder / "mlp.onnx", output=folder / "mlp.emp", measure=False,
                               baseline=folder / "mlp-baseline.npz").path
        out["mlp"] = (mlp, {"features": rng.standard_normal((1, 64)).astype(np.float32)})
    if "cnn224" not in wanted:
        return out
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


def _round(agent, name: str, feed: dict[str, np.ndarray], seconds: float) -> dict[str, list[float]]:  # type: ignore[no-untyped-def]
    """Seconds per call, drift on and off, alternating call by call for ``seconds``."""
    predict = agent.dataplane.predict
    loaded = agent.models.get(name)
    window = loaded.drift
    times: dict[str, list[float]] = {"on": [], "off": []}
    deadline = time.perf_counter() + seconds
    try:
        while len(times["off"]) < 50 or time.perf_counter() < deadline:
            for side in ("on", "off"):
                loaded.drift = window if side == "on" else None
                start = time.perf_counter()
                predict(name, feed, received=start, protocol="bench")
                times[side].append(time.perf_counter() - start)
    finally:
        loaded.drift = window
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--models", default="mlp,cnn224", help="comma-separated: mlp, cnn224")
    args = parser.parse_args(argv)
    wanted = set(args.models.split(","))
    if not wanted <= {"mlp", "cnn224"}:
        parser.error(f"--models {args.models!r}: choose from mlp, cnn224")
    with tempfile.TemporaryDirectory(prefix="edgemill-drift-") as tmp:
        folder = Path(tmp)
        packages = _packages(folder, wanted)
        agent = _agent(folder)
        for name, (path, _) in packages.items():
            agent.dataplane.load_model(str(path), name=name)
        for name, (_, feed) in packages.items():
            _round(agent, name, feed, 0.5)  # warm-up
            p50: dict[str, list[float]] = {"on": [], "off": []}
            mean: dict[str, list[float]] = {"on": [], "off": []}
            for _ in range(args.rounds):
                for side, times in _round(agent, name, feed, args.seconds).items():
                    p50[side].append(float(np.median(times)) * 1e6)
                    mean[side].append(float(np.mean(times)) * 1e6)
            on, off = statistics.median(p50["on"]), statistics.median(p50["off"])
            mean_on, mean_off = statistics.median(mean["on"]), statistics.median(mean["off"])
            features = len(agent.models.get(name).drift.features)  # type: ignore[union-attr]
            print(f"{name:<8} {features:>3} features watched   p50 drift on {on:9.1f} µs   off {off:9.1f} µs   "
                  f"+{on - off:6.2f} µs   ratio {on / off:.4f}   |   mean on {mean_on:9.1f} µs   off {mean_off:9.1f} µs   "
                  f"+{mean_on - mean_off:6.2f} µs   ratio {mean_on / mean_off:.4f}   |   round p50s on "
                  f"{[round(x, 1) for x in p50['on']]} off {[round(x, 1) for x in p50['off']]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
