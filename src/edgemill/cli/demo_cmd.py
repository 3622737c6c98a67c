"""`edgemill demo`: the whole flow on embedded defaults, one step at a time, with timings."""

from __future__ import annotations

import argparse
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .output import emit_json

T = TypeVar("T")


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("demo", parents=[common], help="run the whole flow on a small model built here, fleet included",
                       description="Train a small classifier, compile it, sign it, verify it, refuse a tampered "
                                   "copy, load it with the runtime and predict; then start a control plane and two "
                                   "agents on 127.0.0.1, push, deploy, predict and capture on both, and print the "
                                   "dashboard's address. Each step is printed with its time.")
    p.add_argument("--workdir", default="edgemill-demo", help="where to write the files (default: ./edgemill-demo)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import onnx

    from .. import compile as compile_model
    from ..demo.fleet import SERVER_EXTRA_HINT, run_fleet, server_extra_missing
    from ..demo.train import make_dataset, train_mlp
    from ..demo.zoo import mlp
    from ..errors import VerificationError
    from ..package import open_verified, sign_package
    from ..package.keys import PRIVATE_KEY_NAME, PUBLIC_KEY_NAME, write_keypair
    from ..runtime import load

    # The demo's agents run in this process while the next version compiles, and compiling starts
    # measuring subprocesses: without this, gRPC logs a line for every fork that it does not need (the
    # children exec at once and never use gRPC).
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    steps: list[dict[str, Any]] = []
    quiet = args.json

    def step(title: str, fn: Callable[[], T], describe: Callable[[T], str]) -> T:
        start = time.perf_counter()
        value = fn()
        seconds = time.perf_counter() - start
        text = describe(value)
        steps.append({"step": title, "seconds": round(seconds, 4), "result": text})
        if not quiet:
            print(f"[{len(steps):>2}] {title:<40} {seconds * 1000:8.1f} ms  {text}", flush=True)
        return value

    data = step("make a dataset (synthetic, seeded)", lambda: make_dataset(),
                lambda d: f"{len(d.y_train)} train / {len(d.y_test)} held-out samples, {d.x_train.shape[1]} features")
    trained = step("train an MLP classifier (NumPy)", lambda: train_mlp(data),
                   lambda m: f"held-out accuracy {m.accuracy(data.x_test, data.y_test):.3f}")
    model_path = work / "classifier.onnx"
    step("export it to ONNX", lambda: onnx.save(
        mlp(batch="batch", features=data.x_train.shape[1], hidden=(trained.layers[0][0].shape[0],),
            classes=trained.layers[-1][0].shape[0], weights=trained.layers), str(model_path)),
         lambda _: f"{model_path} ({model_path.stat().st_size} bytes, dynamic batch)")
    package = work / "classifier.emp"
    typical = work / "typical-inputs.npz"  # the training inputs: the drift baseline the package carries
    np.savez(typical, features=data.x_train)
    result = step("compile for this machine (-t host)", lambda: compile_model(
        model_path, target="host", output=package, name="classifier", version="1.0.0", baseline=typical),
        lambda r: f"{r.path} id {r.package_id[:12]}, max rel err {r.manifest.accuracy['value']:.1e}")
    keys = work / "keys"
    step("generate a signing key pair", lambda: write_keypair(keys, force=True),
         lambda k: f"{k[0]} (secret), {k[1]}")
    step("sign the package", lambda: sign_package(package, keys / PRIVATE_KEY_NAME),
         lambda h: f"OpenSSF model-signing bundle, key {h[:16]}")
    public = keys / PUBLIC_KEY_NAME

    def verify() -> str:
        reader, verified = open_verified(package, [public])
        reader.close()
        return verified.package_id
    step("verify signature and file hashes", verify, lambda pid: f"ok, id {pid[:12]}")

    def tamper() -> str:
        import tarfile

        bad = work / "classifier-tampered.emp"
        shutil.copy(package, bad)
        with tarfile.open(bad, "r:") as tar:
            member = tar.getmember("model/model.onnx")
        with open(bad, "r+b") as f:  # flip one byte of the model's weights inside the tar
            f.seek(member.offset_data + member.size // 2)
            byte = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([byte[0] ^ 0xFF]))
        try:
            load(bad, trusted_keys=[public])
        except VerificationError as exc:
            return f"refused as expected: {exc.reason.value}"
        raise AssertionError("a tampered package was loaded")
    step("load a tampered copy (must be refused)", tamper, lambda text: text)
    model = step("load with the runtime (verifies first)", lambda: load(package, trusted_keys=[public], threads=2),
                 lambda m: f"{m!r}")
    outputs = step("predict the held-out set", lambda: model.run({"features": data.x_test}),
                   lambda o: f"logits {list(o['logits'].shape)}")
    missing = server_extra_missing()
    fleet: dict[str, Any] | None = None
    if missing is None:
        def recompile(dataset: Path) -> Path:  # the next version, checked on the labeled field captures
            nxt = compile_model(model_path, target="host", output=work / "classifier-1.1.0.emp", name="classifier",
                                version="1.1.0", baseline=typical, validation=dataset).path
            sign_package(nxt, keys / PRIVATE_KEY_NAME)
            return nxt

        fleet = run_fleet(step, work, package, public, data.x_test, outputs["logits"], data.y_test, recompile)
    elif not quiet:
        print(f"     skipped: {SERVER_EXTRA_HINT} (missing: {missing})", flush=True)
    labels = outputs["logits"].argmax(1)
    agree = float((labels == trained.logits(data.x_test).argmax(1)).mean())
    accuracy = float((labels == data.y_test).mean())
    fleet_ok = fleet is None or (fleet["fleet_predictions_agree"] and fleet["deployment"]["state"] == "succeeded")
    summary: dict[str, Any] = {"package": str(package), "package_id": result.package_id,
                               "held_out_accuracy": accuracy, "agreement_with_numpy_model": agree,
                               "workdir": str(work)}
    if fleet is not None:
        summary["fleet"] = fleet
    else:
        summary["fleet"] = None
        summary["fleet_skipped"] = f"{SERVER_EXTRA_HINT} (missing: {missing})"
    if quiet:
        emit_json({"steps": steps, **summary})
        return 0 if agree == 1.0 and fleet_ok else 1
    print(f"\npackage {package}: held-out accuracy {accuracy:.3f}, predictions agree with the NumPy model on "
          f"{agree * 100:.1f}% of samples.")
    if fleet is not None:
        d = fleet["deployment"]
        print(f"fleet: {fleet['devices_online']} devices online ({', '.join(fleet['devices'])}); deployment {d['id']} "
              f"{d['state']} in {d['seconds']:.1f} s over {d['waves']} waves; "
              f"agents' predictions {'equal' if fleet['fleet_predictions_agree'] else 'DIFFER from'} the runtime's.\n"
              f"data loop: {fleet['live_accuracy']['samples']} captured predictions labeled (live top-1 "
              f"{fleet['live_accuracy']['top1']:.3f}), exported to {fleet['exported']['path']}, "
              f"{fleet['next_version']['version']} compiled and validated on them and pushed.\n"
              f"data: {fleet['database']} (SQLite) and {fleet['store']} (packages, captures); "
              f"operator key in {fleet['operator_key_file']}.\n"
              f"dashboard: the demo's server has stopped, its data persists (the devices go offline). To look at it, "
              f"run\n  {fleet['view_later']}\nand open {fleet['view_later_url']}")
    agents = f"; the agents' configs are in {work / 'agents'}" if fleet is not None else ""
    print(f"Next: `edgemill inspect {package}`, `edgemill bench {package}`{agents} (docs/agent.md, docs/server.md).")
    return 0 if agree == 1.0 and fleet_ok else 1
