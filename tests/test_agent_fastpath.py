"""The local fast path (docs/fastpath.md) against the real agent process: the Python client uses it by
itself and gets what gRPC gives (results, errors, timing); the C example client in docs/examples gets
the same numbers; bad frames get an ERROR frame or a closed connection and never stop the agent."""

from __future__ import annotations

import os
import random
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest

import edgemill.runtime as rt
from edgemill.agent import fastwire as fw
from edgemill.client import AgentClient, AgentError, SharedTensor

from ._agent import AgentProcess
from .test_agent import agent_config, feed_for, signed  # noqa: F401 - the fixture

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "fastpath" / "predict.c"


@pytest.fixture(scope="module")
def agent(signed: dict[str, Path], keypair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("fast")
    models = tmp / "models"
    models.mkdir()
    shutil.copy(signed["mlp"], models / "mlp.emp")
    with AgentProcess(agent_config(tmp, keypair[1], models)) as process:
        process.sock = tmp / "agent.sock"  # type: ignore[attr-defined]
        process.fast = tmp / "agent.sock.fast"  # type: ignore[attr-defined]
        yield process


def test_the_client_takes_the_fast_path_and_gets_what_grpc_gives(agent: AgentProcess, signed: dict[str, Path],  # noqa: F811
                                                                 keypair: tuple[Path, Path]) -> None:
    assert f"fast:{agent.fast}" in agent.addresses  # type: ignore[attr-defined]
    local = rt.load(signed["mlp"], trusted_keys=[keypair[1]])
    with AgentClient(f"unix:{agent.sock}") as fast, AgentClient(f"unix:{agent.sock}", fast_path=False) as slow:  # type: ignore[attr-defined]
        assert fast.transport == "fast" and slow.transport == "grpc"
        for seed in range(5):
            feed = feed_for(local, batch=1, seed=seed)
            a, b = fast.predict("mlp", feed), slow.predict("mlp", feed)
            np.testing.assert_array_equal(a.outputs["logits"], b.outputs["logits"])
            np.testing.assert_allclose(a.outputs["logits"], local.run(feed)["logits"], rtol=1e-6)
            assert a.model_version == b.model_version and a.timing.total_us > 0 and a.timing.compute_us > 0
        assert fast.transport == "fast"  # still: nothing fell back
        for call in (lambda c: c.predict("nope", feed), lambda c: c.predict("mlp", {"features": np.zeros((1, 3), np.float32)}),
                     lambda c: c.predict("mlp", feed, outputs=["nothing"])):
            errors = []
            for client in (fast, slow):
                with pytest.raises(AgentError) as caught:
                    call(client)
                errors.append((caught.value.code, caught.value.message))
            assert errors[0] == errors[1], errors  # the same code and message on both paths
        assert errors[0][0] == grpc.StatusCode.INVALID_ARGUMENT


def test_shared_memory_inputs_on_the_fast_path(agent: AgentProcess, signed: dict[str, Path],  # noqa: F811
                                               keypair: tuple[Path, Path]) -> None:
    local = rt.load(signed["mlp"], trusted_keys=[keypair[1]])
    feed = feed_for(local, seed=9)
    spec = local.inputs[0]
    with AgentClient(f"unix:{agent.sock}") as client, SharedTensor(feed[spec.name].shape, feed[spec.name].dtype) as shm:  # type: ignore[attr-defined]
        shm.array[...] = feed[spec.name]
        result = client.predict("mlp", {spec.name: shm})
        assert client.transport == "fast"
        np.testing.assert_allclose(result.outputs["logits"], local.run(feed)["logits"], rtol=1e-6)


def test_without_a_fast_path_the_client_uses_grpc(signed: dict[str, Path], keypair: tuple[Path, Path],  # noqa: F811
                                                   tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(signed["mlp"], models / "mlp.emp")
    with AgentProcess(agent_config(tmp_path, keypair[1], models, listen={"fast_path": False})) as process:
        assert not (tmp_path / "agent.sock.fast").exists()
        with AgentClient(f"unix:{tmp_path / 'agent.sock'}") as client:
            assert client.transport == "grpc"
            assert client.predict("mlp", {"features": np.ones((1, 64), np.float32)}).outputs["logits"].shape == (1, 10)
        assert process.proc.poll() is None


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (cc) on this machine")
def test_the_c_example_client_gets_the_same_numbers(agent: AgentProcess, signed: dict[str, Path], tmp_path: Path,  # noqa: F811
                                                    keypair: tuple[Path, Path]) -> None:
    binary = tmp_path / "predict"
    built = subprocess.run(["cc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(binary), str(EXAMPLE)],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    local = rt.load(signed["mlp"], trusted_keys=[keypair[1]])
    feed = feed_for(local, seed=4)["features"]
    (tmp_path / "input.f32").write_bytes(feed.astype("<f4").tobytes())
    run = subprocess.run([str(binary), str(agent.fast), "mlp", "features", "1x64", str(tmp_path / "input.f32")],  # type: ignore[attr-defined]
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("version ") and lines[1].startswith("timing ")
    name, dtype, rest = lines[2].split(" ", 2)
    shape, values = rest.split(":")
    assert (name, dtype, shape) == ("logits", "1", "1x10")
    with AgentClient(f"unix:{agent.sock}", fast_path=False) as client:  # type: ignore[attr-defined]
        want = client.predict("mlp", {"features": feed}).outputs["logits"]
    np.testing.assert_array_equal(np.array(values.split(), dtype=np.float32).reshape(1, 10), want)
    refused = subprocess.run([str(binary), str(agent.fast), "nope", "features", "1x64", str(tmp_path / "input.f32")],  # type: ignore[attr-defined]
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode == 1 and refused.stderr.startswith("status 5:") and "nope" in refused.stderr


# --- bad frames ----------------------------------------------------------------------------------


def connect(agent: AgentProcess) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(10)
    conn.connect(str(agent.fast))  # type: ignore[attr-defined]
    return conn


def exchange(conn: socket.socket, frame: bytes) -> tuple[int, bytes] | None:
    """Send raw bytes; the answer's (type, payload), or None when the agent closed the connection."""
    conn.sendall(frame)
    head = b""
    while len(head) < fw.HEADER_SIZE:
        try:
            chunk = conn.recv(fw.HEADER_SIZE - len(head))
        except ConnectionResetError:  # closed with bytes of ours unread
            return None
        if not chunk:
            return None
        head += chunk
    magic, kind, _, _, _, length = fw.HEADER.unpack(head)
    assert magic == fw.MAGIC
    payload = b""
    while len(payload) < length:
        chunk = conn.recv(length - len(payload))
        assert chunk, "the agent closed mid-answer"
        payload += chunk
    return kind, payload


def good_frame(x: np.ndarray, request_id: int = 7) -> bytes:
    writer = fw.predict_request("mlp", {"features": x})
    return b"".join(bytes(p) for p in writer.frame(fw.PREDICT, request_id))


def still_serves(agent: AgentProcess, x: np.ndarray, want: np.ndarray) -> None:
    with connect(agent) as conn:
        answer = exchange(conn, good_frame(x))
    assert answer is not None and answer[0] == fw.PREDICT_OK
    np.testing.assert_array_equal(fw.read_predict_ok(answer[1]).outputs["logits"], want)
    assert agent.proc.poll() is None


def test_bad_frames_are_answered_or_closed_and_the_agent_keeps_serving(agent: AgentProcess) -> None:
    x = np.random.default_rng(0).normal(size=(1, 64)).astype(np.float32)
    with connect(agent) as conn:
        answer = exchange(conn, good_frame(x))
    assert answer is not None and answer[0] == fw.PREDICT_OK
    want = fw.read_predict_ok(answer[1]).outputs["logits"]
    body = good_frame(x)[fw.HEADER_SIZE:]

    with connect(agent) as conn:  # unknown type: answered, the connection stays
        kind, payload = exchange(conn, fw.header(9, 1, 3) + b"abc")  # type: ignore[misc]
        assert kind == fw.ERROR and fw.read_error(payload)[0] == "UNIMPLEMENTED"
        assert exchange(conn, fw.header(fw.PING, 2, 0)) == (fw.PONG, b"")
        kind, payload = exchange(conn, fw.header(fw.PREDICT, 3, len(body) - 5) + body[:-5])  # type: ignore[misc]
        assert kind == fw.ERROR and fw.read_error(payload)[0] == "INVALID_ARGUMENT"  # lies about its contents
        assert "ends inside" in fw.read_error(payload)[1]
        kind, payload = exchange(conn, good_frame(x))  # type: ignore[misc]
        assert kind == fw.PREDICT_OK
    with connect(agent) as conn:  # garbage: closed
        assert exchange(conn, b"GET / HTTP/1.1\r\n\r\n") is None
    with connect(agent) as conn:  # over the size limit: told, then closed
        answer = exchange(conn, fw.header(fw.PREDICT, 1, 2**31))
        assert answer is not None and fw.read_error(answer[1])[0] == "RESOURCE_EXHAUSTED"
        assert "max_message_mb" in fw.read_error(answer[1])[1]
    with connect(agent) as conn:  # a shared-memory region outside its segment
        path = Path("/dev/shm") / f"edgemill-fuzz-{os.getpid()}"
        path.write_bytes(b"\0" * 64)
        try:
            writer = fw.predict_request("mlp", {"features": x}, shared={"features": (path.name, 32, 256)})
            kind, payload = exchange(conn, b"".join(bytes(p) for p in writer.frame(fw.PREDICT, 4)))  # type: ignore[misc]
            assert kind == fw.ERROR and "beyond the segment" in fw.read_error(payload)[1]
        finally:
            path.unlink()
    with connect(agent) as conn:  # a frame that stops midway, then the client leaves
        conn.sendall(fw.header(fw.PREDICT, 5, len(body)) + body[:10])
    still_serves(agent, x, want)


def test_fuzzed_frames_never_crash_the_agent_or_change_a_good_answer(agent: AgentProcess) -> None:
    """Three hundred mutations of a valid frame (bytes flipped, cut, lengths rewritten), each on its own
    connection; every answer parses, and a well-formed request afterwards gets the right answer."""
    rng = random.Random(1)
    x = np.random.default_rng(1).normal(size=(1, 64)).astype(np.float32)
    with connect(agent) as conn:
        answer = exchange(conn, good_frame(x))
    assert answer is not None
    want = fw.read_predict_ok(answer[1]).outputs["logits"]
    body = bytearray(good_frame(x)[fw.HEADER_SIZE:])
    kinds: dict[str, int] = {}
    for _ in range(300):
        mutated = bytearray(body)
        for _ in range(rng.randint(1, 4)):
            if len(mutated) < 4:
                mutated += bytes(rng.randrange(256) for _ in range(4))
            choice = rng.random()
            if choice < 0.5:
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            elif choice < 0.7:
                del mutated[rng.randrange(1, len(mutated)):]
            elif choice < 0.85:
                at = rng.randrange(len(mutated) - 2)
                mutated[at:at + 2] = struct.pack("<H", rng.choice([0, 1, 0xFFFF, rng.randrange(0x10000)]))
            else:
                mutated += bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        with connect(agent) as conn:
            answer = exchange(conn, fw.header(fw.PREDICT, 1, len(mutated)) + bytes(mutated))
        assert answer is not None, "a well-framed payload must be answered"
        kind, payload = answer
        if kind == fw.ERROR:
            code, message = fw.read_error(payload)
            assert code in ("INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED"), message
            kinds[code] = kinds.get(code, 0) + 1
        else:
            assert kind == fw.PREDICT_OK
            fw.read_predict_ok(payload)  # parses
            kinds["ok"] = kinds.get("ok", 0) + 1
    assert kinds.get("INVALID_ARGUMENT", 0) > 100, kinds
    still_serves(agent, x, want)


def test_frames_carry_text_and_every_numeric_dtype_both_ways() -> None:
    """The codec alone: what a request or an answer carries comes back equal, text included."""
    tensors = {dtype: (np.arange(6) % 2 == 1) if dtype == "bool" else np.arange(6).astype(dtype).reshape(2, 3)
               for dtype in fw.CODE_BY_DTYPE}
    text = np.array([["héllo", ""], ["wörld", "x" * 300]], dtype=object)
    writer = fw.predict_request("m", {**tensors, "words": text}, outputs=["a", "b"], capture=True, capture_id="c-1")
    frame = fw.read_predict(b"".join(bytes(p) for p in writer.parts) + bytes(writer.buf))
    assert (frame.model, frame.capture, frame.capture_id, frame.outputs) == ("m", True, "c-1", ("a", "b"))
    got = {t.name: t.array for t in frame.inputs}
    for name, array in tensors.items():
        assert got[name].dtype == array.dtype and np.array_equal(got[name], array), name
    assert got["words"].tolist() == text.tolist()
    reply = fw.predict_response("1.2.0", "c-1", 3, 4, 0, {"words": text, "f": tensors["float32"]})
    reply.patch_u64(reply.total_at, 99)
    parsed = fw.read_predict_ok(b"".join(bytes(p) for p in reply.parts) + bytes(reply.buf))
    assert (parsed.version, parsed.capture_id, parsed.queue_us, parsed.compute_us, parsed.total_us) == ("1.2.0", "c-1", 3, 4, 99)
    assert parsed.outputs["words"].tolist() == text.tolist() and np.array_equal(parsed.outputs["f"], tensors["float32"])
    with pytest.raises(fw.FrameError, match="ends inside"):
        fw.read_predict(b"".join(bytes(p) for p in writer.parts)[:-3])
