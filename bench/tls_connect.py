"""What TLS costs a connection: MQTT CONNECT -> CONNACK on a real fleet server's embedded
broker, plain (``--insecure``, password) against TLS (device certificate from the fleet CA,
Ed25519 key as the agent's), and the same for one HTTPS ``GET /api/v1/health`` against
plain HTTP, each on a fresh connection, interleaved rounds.

    python -m bench.tls_connect [--connects 50] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fleet_server.ca import FleetCA
from fleet_server.config import ServerSettings
from fleet_server.registry import hash_secret
from fleet_server.serve import RunningServer, start_server
from model_bundles import keys as mb_keys
from tests.security.tls_certs import ClientCert, issue

DEVICE, SECRET = "bench-dev", "bench-secret"  # noqa: S105 - a throwaway bench fleet


def _mqtt_connect_ms(server: RunningServer, cert: ClientCert | None) -> float:
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=DEVICE, clean_session=True)
    client.on_connect = lambda *a: done.set()
    if cert is None:
        client.username_pw_set(DEVICE, SECRET)
    else:
        assert server.ca_bundle is not None
        client.tls_set_context(cert.link_tls(server.ca_bundle).context())
    t0 = time.perf_counter()
    client.connect(server.services.mqtt_host, server.services.mqtt_port or 0, keepalive=30)
    while not done.is_set():
        client.loop(0.01)
    elapsed = (time.perf_counter() - t0) * 1000
    client.disconnect()
    return elapsed


def _http_ms(server: RunningServer) -> float:
    verify = True if server.ca_bundle is None else str(server.ca_bundle)
    t0 = time.perf_counter()
    with httpx.Client(verify=verify) as client:  # a fresh connection each time
        client.get(f"{server.http_url}/api/v1/health").raise_for_status()
    return (time.perf_counter() - t0) * 1000


def _fleet(root: Path, insecure: bool) -> tuple[RunningServer, ClientCert | None]:
    server = start_server(ServerSettings(data_dir=root, port=0, mqtt_port=0, insecure=insecure))
    cert = None
    if not insecure:
        cert = issue(FleetCA.load_or_create(root), root / "bench-certs", DEVICE)
        public = mb_keys.public_key_pem(cert.private_key.public_key())
    else:
        public = mb_keys.public_key_pem(mb_keys.generate_private_key_file(
            root / "bench.key").public_key())
    server.services.registry.add_device(device_id=DEVICE, group="default", public_key=public,
                                        mqtt_secret_hash=hash_secret(SECRET))
    return server, cert


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connects", type=int, default=50, help="connections per round and side")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        plain, _ = _fleet(Path(tmp) / "plain", insecure=True)
        tls, cert = _fleet(Path(tmp) / "tls", insecure=False)
        try:
            rows: dict[str, list[float]] = {k: [] for k in
                                            ("mqtt plain", "mqtt tls", "http", "https")}
            for _ in range(args.rounds):
                for _ in range(args.connects):
                    rows["mqtt plain"].append(_mqtt_connect_ms(plain, None))
                    rows["mqtt tls"].append(_mqtt_connect_ms(tls, cert))
                    rows["http"].append(_http_ms(plain))
                    rows["https"].append(_http_ms(tls))
        finally:
            plain.stop()
            tls.stop()
    print(f"{'connection':<12} {'p50 ms':>8} {'p95 ms':>8}  (n={args.rounds * args.connects})")
    for name, values in rows.items():
        q = statistics.quantiles(values, n=20)
        print(f"{name:<12} {statistics.median(values):>8.2f} {q[18]:>8.2f}")
    for a, b in (("mqtt plain", "mqtt tls"), ("http", "https")):
        print(f"{b} - {a}: +{statistics.median(rows[b]) - statistics.median(rows[a]):.2f} ms p50")


if __name__ == "__main__":
    main()
