"""How fast a revocation cuts a connected device off, on both brokers: a real fleet server
(HTTPS, TLS MQTT with client certificates) on its embedded broker, then on a real
Mosquitto from ``fleet-server mosquitto-config`` (dynamic-security plugin). Per device:
connect with its certificate, then ``POST /api/v1/devices/ID/revoke``; measured from the
request to the moment the device's MQTT client sees its connection closed, and to the
API's answer. Baseline in the same run: the same device's plain TLS connect (handshake,
CONNECT, CONNACK) on that broker, and ``GET /api/v1/health`` (one HTTPS request).

    python -m bench.revocation [--devices 20]
"""

from __future__ import annotations

import argparse
import ssl
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from tests.identity.revocation_rig import Fleet, run_fleet


def _p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def measure(kind: str, devices: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"connect": [], "health": [], "answer": [], "closed": []}
    with tempfile.TemporaryDirectory() as tmp, run_fleet(kind, Path(tmp)) as fleet:
        verify = ssl.create_default_context(cafile=str(fleet.server.ca_bundle))
        with httpx.Client(base_url=fleet.server.http_url, verify=verify, timeout=30,
                          headers={"Authorization": f"Bearer {fleet.server.admin_token}"}) as api:
            for i in range(devices):
                _one(fleet, api, f"bench-{i}", out)
    return out


def _one(fleet: Fleet, api: httpx.Client, device_id: str, out: dict[str, list[float]]) -> None:
    cert = fleet.enrol(device_id)
    t0 = time.perf_counter()
    api.get("/api/v1/health").raise_for_status()
    out["health"].append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter()
    warm = fleet.connect(device_id, cert)  # baseline: a plain reconnect
    assert warm.outcome() == "accepted"
    out["connect"].append((time.perf_counter() - t0) * 1000)
    warm.close()
    conn = fleet.connect(device_id, cert)
    assert conn.outcome() == "accepted"
    t0_mono, t0 = time.monotonic(), time.perf_counter()
    r = api.post(f"/api/v1/devices/{device_id}/revoke")
    out["answer"].append((time.perf_counter() - t0) * 1000)
    assert r.status_code == 200 and r.json()["disconnected"], r.text
    assert conn.closed.wait(10), f"{device_id} was not disconnected"
    assert conn.closed_at is not None
    out["closed"].append((conn.closed_at - t0_mono) * 1000)
    conn.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=20)
    args = ap.parse_args(argv)
    print(f"{args.devices} devices per broker; ms, p50 / p95; ratio = p50 / p50 of the "
          "plain TLS connect on the same broker")
    print("| broker | TLS connect (baseline) | HTTPS health | revoke -> connection closed "
          "| revoke -> API answer | closed / connect |")
    print("|---|---|---|---|---|---|")
    for kind in ("embedded", "mosquitto"):
        m = measure(kind, args.devices)
        cell = {k: f"{statistics.median(v):.1f} / {_p(v, 95):.1f}" for k, v in m.items()}
        ratio = statistics.median(m["closed"]) / statistics.median(m["connect"])
        print(f"| {kind} | {cell['connect']} | {cell['health']} | {cell['closed']} "
              f"| {cell['answer']} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
