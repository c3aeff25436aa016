"""Revocation on a real Mosquitto: the listener's ``crlfile`` is the fleet CA's ``crl.pem``;
after a revocation rewrites it and Mosquitto reloads (SIGHUP), the revoked device's
certificate is refused on its next connection, and another device still connects."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from paho.mqtt.enums import CallbackAPIVersion

from fleet_server.ca import FleetCA
from fleet_server.revocations import RevocationList
from tests.faults.mqtt_tools import free_port, mosquitto_binary

from .test_fleet_ca import csr_for


def device_files(ca: FleetCA, out: Path, device_id: str) -> tuple[Path, Path]:
    key = ed25519.Ed25519PrivateKey.generate()
    cert, key_path = out / f"{device_id}.crt", out / f"{device_id}.key"
    cert.write_text(ca.issue_device_cert(csr_for(key, device_id), device_id))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert, key_path


def connect(port: int, ca: FleetCA, device_id: str, files: tuple[Path, Path]) -> str:
    """'connected', or how the attempt ended."""
    done, outcome = threading.Event(), []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id)
    client.tls_set(ca_certs=str(ca.trust_bundle_path()), certfile=str(files[0]),
                   keyfile=str(files[1]))
    client.on_connect = lambda c, u, f, reason, p: (
        outcome.append("refused" if reason.is_failure else "connected"), done.set())
    client.on_disconnect = lambda *a: (outcome.append("disconnected"), done.set())
    try:
        client.connect("127.0.0.1", port)
        client.loop_start()
        assert done.wait(20)
    except OSError as e:  # the TLS handshake failed inside connect()
        outcome.append(f"error: {e}")
    finally:
        client.disconnect()
        client.loop_stop()
    return outcome[0]


def test_mosquitto_refuses_a_revoked_certificate_after_the_crl_reload(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ca = FleetCA.load_or_create(data)
    revocations = RevocationList(data / "registry.db")
    cert, key = ca.server_cert_files(["localhost", "127.0.0.1"])
    revoked = device_files(ca, tmp_path, "dev-1")
    other = device_files(ca, tmp_path, "dev-2")
    port = free_port()
    conf, log = tmp_path / "mosquitto.conf", tmp_path / "mosquitto.log"
    conf.write_text("\n".join([
        f"listener {port} 127.0.0.1", "allow_anonymous false",
        f"cafile {ca.trust_bundle_path()}", f"certfile {cert}", f"keyfile {key}",
        "require_certificate true", "use_identity_as_username true",
        f"crlfile {ca.crl_path()}", "log_type all"]
        + (["user root"] if os.geteuid() == 0 else [])) + "\n")
    with open(log, "wb") as fh:
        proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=fh,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while "running" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert connect(port, ca, "dev-1", revoked) == "connected"
        revocations.revoke(device_id="dev-1", key_fingerprint=None, revoked_by="test")
        revocations.write_crl(ca)
        proc.send_signal(signal.SIGHUP)
        while "Reloading config" not in log.read_text() and time.monotonic() < deadline + 10:
            time.sleep(0.05)
        assert connect(port, ca, "dev-1", revoked) != "connected"
        assert "certificate verify failed" in log.read_text()
        assert connect(port, ca, "dev-2", other) == "connected"
    finally:
        proc.terminate()
        proc.wait(10)
