"""``device-agent install``: pin the fleet CA, make the device key here, enrol with a CSR,
keep the certificate, write config."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx

from device_agent import identity
from device_agent.config import AgentConfig, config_path
from device_agent.errors import EnrolError
from device_agent.persist import atomic_write_bytes
from device_agent.systemd import unit_text
from device_agent.trust_store import install_enrolment_root
from model_bundles import keys as mb_keys

__all__ = ["enrol", "systemd_unit"]

MAX_RESPONSE = 256 * 1024


def systemd_unit(agent_dir: Path) -> str:
    """The unit ``--systemd`` writes: this Python runs the agent (``device_agent.systemd``)."""
    return unit_text(agent_dir, sys.executable)


def enrol(
    *, server: str, token: str, device_id: str, agent_dir: Path, systemd: bool = False,
    timeout_s: float = 15.0, transport: httpx.BaseTransport | None = None,
    ca_hash: str | None = None,
) -> AgentConfig:
    """Enrol this device and write ``DIR/config.json``; refuses an enrolled ``DIR``.

    The fleet CA is pinned by the hash the token carries (or ``ca_hash``) and checked
    before anything is written or sent (``identity.pinned_ca``); the device key is made
    here, a CSR for it goes with the token, and the certificate and CA bundle the server
    answers are checked and kept in ``DIR/keys/`` (0600)."""
    agent_dir = Path(agent_dir)
    if config_path(agent_dir).exists():
        raise EnrolError(f"{agent_dir} is already enrolled ({config_path(agent_dir)} exists)")
    pin = identity.split_token(token, ca_hash)
    anchor = identity.pinned_ca(server, pin, timeout_s=timeout_s, transport=transport)
    keys_dir = agent_dir / "keys"
    key_path = keys_dir / "device.key"
    keys_dir.mkdir(parents=True, exist_ok=True)
    if key_path.exists():
        private = mb_keys.load_private_key(key_path)
    else:
        private = mb_keys.generate_private_key_file(key_path)
    body = {"token": token, "device_id": device_id,
            "public_key": mb_keys.public_key_pem(private),
            "csr": identity.make_csr(private, device_id)}
    url = server.rstrip("/") + "/api/v1/enrol"
    try:
        with identity.verified_client(server, anchor, timeout_s=timeout_s,
                                      transport=transport) as client:
            resp = client.post(url, json=body)
    except httpx.HTTPError as e:
        raise EnrolError(f"cannot reach {url}: {e}") from e
    if len(resp.content) > MAX_RESPONSE:
        raise EnrolError(f"enrol response of {len(resp.content)} bytes is too large")
    try:
        data = resp.json()
    except ValueError as e:
        raise EnrolError(f"enrol answered {resp.status_code} with non-JSON body") from e
    if resp.status_code != 201:
        detail = data.get("detail") if isinstance(data, dict) else data
        if isinstance(detail, list):  # request validation errors: "body.token: too short"
            detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}"
                               for d in detail if isinstance(d, dict))
        raise EnrolError(f"enrol refused ({resp.status_code}): {detail}")
    try:
        mqtt = data["mqtt"]
        cfg = AgentConfig(
            device_id=data["device_id"], server_url=data.get("server_url") or server,
            mqtt_url=mqtt["url"], mqtt_username=mqtt["username"],
            mqtt_password=mqtt["password"], fleet_public_key=data["fleet_public_key"],
            fleet_key_id=data.get("fleet_key_id", ""), group=data.get("group") or "",
        )
    except (KeyError, TypeError) as e:
        raise EnrolError(f"enrol response is missing {e}") from e
    if cfg.device_id != device_id:
        raise EnrolError(f"server enrolled {cfg.device_id!r}, asked for {device_id!r}")
    cert_pem, bundle_pem = data.get("certificate"), data.get("ca_bundle")
    if not isinstance(cert_pem, str) or not isinstance(bundle_pem, str):
        raise EnrolError("the server issued no device certificate for the CSR")
    identity.check_issued(cert_pem, bundle_pem, private, device_id, anchor)
    install_enrolment_root(agent_dir, data)  # TUF root of trust (trust_store.py)
    identity.store(agent_dir, cert_pem, bundle_pem)  # keys/device.crt, keys/ca-bundle.pem
    cfg.save(agent_dir)
    if systemd:
        atomic_write_bytes(agent_dir / "edgefleet-agent.service",
                           systemd_unit(agent_dir).encode())
    return cfg
