"""A running server's TLS listeners follow a CA rollover without a restart: after
``fleet-server ca rotate`` the refresher (hourly in a server; called directly here) loads
the re-issued server certificate into the live HTTPS and embedded-broker contexts, so a
client pinning only the new CA reaches both, a device certificate of the new CA is
accepted by the broker, and one of the old CA still is during the overlap. Before the
refresh the same new-CA device is refused: what changed is the live listeners."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from fleet_server.ca import FleetCA
from fleet_server.cli import main as fleet_cli
from fleet_server.config import ServerSettings
from fleet_server.serve import start_server
from tests.identity.revocation_rig import DeviceConnection
from tests.security.tls_certs import ClientCert, issue


def served_cert(port: int, cafile: Path) -> x509.Certificate:
    """The certificate the HTTPS listener presents, verified against ``cafile`` alone."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_listeners_take_the_reissued_certificate_after_a_ca_rollover_without_a_restart(
        tmp_path: Path) -> None:
    data = tmp_path / "fleet"
    with start_server(ServerSettings(data_dir=data, port=0, mqtt_port=0)) as server:
        services = server.services
        assert services.tls_refresher is not None and services.mqtt_port is not None
        assert services.tls is not None
        http_port = int(server.http_url.rsplit(":", 1)[1])
        old_bundle = tmp_path / "old-ca.pem"
        old_bundle.write_bytes(Path(services.tls.ca_bundle).read_bytes())
        before = served_cert(http_port, old_bundle)
        old_device = issue(FleetCA.load_or_create(data), tmp_path / "certs", "dev-old")
        services.registry.add_device(device_id="dev-old", group="g", mqtt_secret_hash="-",
                                     public_key="-")
        services.registry.add_device(device_id="dev-new", group="g", mqtt_secret_hash="-",
                                     public_key="-")

        assert fleet_cli(["ca", "rotate", "--data", str(data), "--overlap-days", "14"]) == 0
        ca = FleetCA.load_or_create(data)
        new_only = ca.dir / "ca.crt"  # the new CA alone
        new_device = issue(ca, tmp_path / "certs", "dev-new")

        def mqtt(device_id: str, cert: ClientCert, bundle: Path) -> str:
            conn = DeviceConnection("127.0.0.1", services.mqtt_port or 0, device_id,
                                    cert, bundle)
            try:
                return conn.outcome()
            finally:
                conn.close()

        bundle = ca.trust_bundle_path()
        # the live listeners still hold what they loaded at start
        assert served_cert(http_port, old_bundle).serial_number == before.serial_number
        with pytest.raises(ssl.SSLCertVerificationError):
            served_cert(http_port, new_only)
        assert mqtt("dev-new", new_device, bundle) != "accepted"

        assert services.tls_refresher.refresh() == 2  # HTTPS and the broker's listener
        after = served_cert(http_port, new_only)  # chains to the new CA
        assert after.serial_number != before.serial_number
        assert mqtt("dev-new", new_device, bundle) == "accepted"
        assert mqtt("dev-old", old_device, bundle) == "accepted"  # the overlap
        assert services.tls_refresher.refresh() == 0  # nothing changed: nothing reloaded
