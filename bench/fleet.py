"""The control plane under heartbeat load: latency of one heartbeat, and a fleet checking in at once.

    python bench/fleet.py [--devices 200] [--rounds 5] [--concurrency 16] [--db URL]

Starts `edgemill server` (SQLite in a temporary folder unless --db names PostgreSQL), registers
``--devices`` simulated devices, each reporting one loaded model with cumulative metrics, and sends
``--rounds`` heartbeats per device from ``--concurrency`` client threads (stdlib HTTP, keep-alive).
Reports p50/p95/p99 of one heartbeat (request sent → desired state received) and heartbeats per
second, with the background tick (rollouts, alerts, webhooks) running. Figures from this run only;
clients and server share this machine's cores.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests._fleet import ServerProcess  # noqa: E402


def _post(conn: http.client.HTTPConnection, path: str, body: dict, headers: dict) -> tuple[int, dict]:  # type: ignore[type-arg]
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json", **headers})
    response = conn.getresponse()
    return response.status, json.loads(response.read() or b"{}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--db", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ServerProcess(Path(tmp), None, db=args.db) as server:
        api = server.client()
        run_id = uuid.uuid4().hex[:8]  # a --db may hold earlier runs' fleets and devices
        api.request("POST", "/api/v1/fleets", body={"name": f"bench-{run_id}"})
        token = api.request("POST", f"/api/v1/fleets/bench-{run_id}/registration-tokens", body={"uses": args.devices})["token"]
        host, port = "127.0.0.1", server.port
        credentials: list[tuple[str, str]] = []
        conn = http.client.HTTPConnection(host, port, timeout=30)
        t0 = time.perf_counter()
        for i in range(args.devices):
            status, body = _post(conn, "/api/v1/agent/register", {"token": token, "device": f"dev-{run_id}-{i:05d}"}, {})
            assert status == 201, body
            credentials.append((body["device"], body["credential"]))
        register_s = time.perf_counter() - t0
        latencies: list[float] = []
        lock = threading.Lock()
        failures: list[str] = []

        def worker(chunk: list[tuple[str, str]]) -> None:
            c = http.client.HTTPConnection(host, port, timeout=30)
            mine: list[float] = []
            for rnd in range(1, args.rounds + 1):
                for device, credential in chunk:
                    body = {"device": device, "seq": rnd,
                            "models": [{"name": "detector", "version": "1.0.0", "package_id": "p" * 64}],
                            "metrics": {"detector": {"requests": 100 * rnd, "errors": rnd,
                                                     "latency_ms": {"p50": 1.2, "p95": 3.4, "p99": 5.6}}}}
                    start = time.perf_counter()
                    status, answer = _post(c, "/api/v1/agent/heartbeat", body, {"Authorization": f"Bearer {credential}"})
                    mine.append(time.perf_counter() - start)
                    if status != 200:
                        failures.append(f"{status} {answer}")
            with lock:
                latencies.extend(mine)

        chunks = [credentials[i::args.concurrency] for i in range(args.concurrency)]
        threads = [threading.Thread(target=worker, args=(c,)) for c in chunks if c]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        ms = sorted(x * 1e3 for x in latencies)

        def pct(q: float) -> float:
            return ms[min(len(ms) - 1, int(q / 100 * len(ms)))]

        print(f"database: {args.db or 'SQLite (embedded default)'}; {args.devices} devices, {args.rounds} rounds, "
              f"{args.concurrency} client threads")
        print(f"registration: {args.devices / register_s:.0f} devices/s (one client)")
        print(f"heartbeat latency ms: p50 {pct(50):.1f}  p95 {pct(95):.1f}  p99 {pct(99):.1f}  "
              f"mean {statistics.fmean(ms):.1f}")
        print(f"throughput: {len(latencies) / elapsed:.0f} heartbeats/s ({len(latencies)} in {elapsed:.1f} s); "
              f"failures: {len(failures)}" + (f" e.g. {failures[0]}" if failures else ""))
        return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
