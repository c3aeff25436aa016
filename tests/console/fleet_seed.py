"""A 10,000-device fleet written straight into the registry's SQLite file in one transaction
(executemany), with telemetry windows, shadow reports with drift and install troubles.

``SeedDevice`` records what each device was given, so tests compute the expected answer of
every filter from the seed itself instead of hard-coding counts.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet_server.registry import hash_secret
from model_bundles import keys as mb_keys

DEVICE_KEY = Ed25519PrivateKey.generate()
"""The device key every seeded row names: a test publishing a device's report signs with it."""

N_DEVICES = 10_000
BUNDLES = ("vision@1.0.0", "vision@1.1.0", "audio@2.0.0")
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
SHA = "ab" * 32


@dataclass(frozen=True)
class SeedDevice:
    id: str
    group: str
    status: str  # online | offline | never
    bundle: str | None
    delegate: str | None
    install: str | None  # failed | rolled_back | committed | None
    fallback: bool
    drift: bool
    windows: tuple[tuple[float, int, int, float | None], ...]  # (age_s, inferences, errors, p95)

    @property
    def secret(self) -> str:
        return f"secret-{self.id}"


def _device(i: int) -> SeedDevice:
    never = i % 50 == 1
    status = "never" if never else ("online" if i % 3 == 0 else "offline")
    bundle = None if never else BUNDLES[i % 4 % 3]
    # windows: 2 minutes and 1 minute ago busy, the last one idle, one an hour ago (outside
    # the 15-minute window); tests compare with the windows still inside it when they ask
    busy = (i % 13 + 1) * 10
    windows = () if never else (
        (3600.0, 500, 9, 900.0), (120.0, busy, i % 3, 10.0 + i % 17),
        (60.0, 2 * busy, i % 5, 20.0 + i % 11), (10.0, 0, 0, None))
    if i == N_DEVICES - 1:  # one device with a single window: its charts show one point
        windows = ((60.0, 40, 1, 25.0),)
    return SeedDevice(
        id=f"dev-{i:05d}", group="lab" if i % 10 == 0 else ("store-a" if i % 10 < 6 else "store-b"),
        status=status, bundle=bundle, delegate=None if never else (CUDA if i % 5 == 0 else CPU),
        install=None if never else ("failed" if i % 97 == 0 else
                                    "rolled_back" if i % 89 == 0 else "committed"),
        fallback=not never and i % 83 == 0, drift=not never and i % 101 == 0, windows=windows)


FLEET = tuple(_device(i) for i in range(N_DEVICES))


def _state(d: SeedDevice, now: float) -> str | None:
    if d.status == "never":
        return None
    name, _, version = (d.bundle or "@").partition("@")
    execution = {"requested": d.delegate, "choice": "ran on the requested delegate",
                 "node_counts": {d.delegate: 12}, "variant": "onnx-fp32",
                 "fallback": d.fallback,
                 **({"fallback_reason": "CUDA: libcudart missing"} if d.fallback else {})}
    return json.dumps({
        "device_id": d.id, "status": d.status, "ts": now - 30, "agent_version": "0.1.0",
        "applied_seq": 1,
        "active": {"name": name, "version": version, "sha256": SHA, "slot": "a",
                   "delegate": d.delegate, "execution": execution},
        "install": {"seq": 1, "sha256": SHA, "state": d.install,
                    "error": "verify: bad chunk" if d.install == "failed" else None,
                    "progress": 1.0}})


def seed(registry_path: Path, now: float) -> None:
    """Write ``FLEET`` into the registry file (the server must have created the schema)."""
    conn = sqlite3.connect(registry_path, timeout=30)
    pem = mb_keys.public_key_pem(DEVICE_KEY)
    try:
        with conn:
            conn.executemany(
                "INSERT INTO devices (id, group_name, public_key, mqtt_secret_hash, enrolled_at,"
                " online, last_seen, state, active_bundle, delegate, telemetry_summary,"
                " last_issued_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
                [(d.id, d.group, pem, hash_secret(d.secret), now - 86400, int(d.status == "online"),
                  None if d.status == "never" else now - 60 - (int(d.id[4:]) % 600),
                  _state(d, now), d.bundle, d.delegate, None) for d in FLEET])
            conn.executemany(
                "INSERT INTO telemetry (device_id, seq, ts, data) VALUES (?, ?, ?, ?)",
                [(d.id, seq, now - age, json.dumps({
                    "device_id": d.id, "seq": seq, "ts": now - age, "window_s": 60.0,
                    "bundle": d.bundle, "delegate": d.delegate, "inferences": n, "errors": e,
                    "total_inferences": n, "total_errors": e,
                    "latency_ms": None if p95 is None else
                    {"p50": p95 / 2, "p95": p95, "p99": p95 * 1.5}}))
                 for d in FLEET for seq, (age, n, e, p95) in enumerate(d.windows, 1)])
            conn.executemany(
                "INSERT INTO shadow_reports (device_id, seq, ts, candidate_sha256, received_at,"
                " data) VALUES (?, ?, ?, ?, ?, ?)",
                [(d.id, 10, now - 120, SHA, now - 120, json.dumps({"drift": {
                    "features": {"psi": 0.35, "ks_stat": 0.3, "ks_pvalue": 0.001,
                                 "drifted": True},
                    "extra": {"psi": 0.02, "ks_stat": 0.05, "ks_pvalue": 0.8,
                              "drifted": False}}}))
                 for d in FLEET if d.drift])
    finally:
        conn.close()


def window_p95(d: SeedDevice, window_s: float = 900.0) -> float | None:
    """The request-count-weighted p95 the console should show for the last ``window_s``
    (pass ``900 - seconds since seeding`` to follow the seed's ageing)."""
    ws = [(n, p) for age, n, _, p in d.windows if age <= window_s and n and p is not None]
    total = sum(n for n, _ in ws)
    return sum(n * p for n, p in ws) / total if total else None


def window_errors(d: SeedDevice, window_s: float = 900.0) -> int:
    return sum(e for age, _, e, _ in d.windows if age <= window_s)
