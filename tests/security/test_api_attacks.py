"""Attacks on the fleet server's HTTP side: oversized bodies, a device-id oracle, cross-origin
requests riding the console cookie, readable registry files. Real server processes, real
SQLite, real broker; every test asserts the answer and that nothing changed."""

from __future__ import annotations

import json
import select
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from fleet_server.app import create_app
from fleet_server.config import ServerSettings
from model_bundles import keys
from ota.topics import DeviceTopics
from tests.e2e.harness import Fleet
from tests.fleet_server.bundle_helpers import make_bundle
from tests.fleet_server.mqtt_helpers import DeviceClient

MIB = 1024 * 1024
EVIL = "https://evil.example"


# -- helpers ------------------------------------------------------------------------------
@pytest.fixture()
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path)
    try:
        yield f
    finally:
        f.stop()


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _admin(fleet: Fleet) -> httpx.Client:
    return httpx.Client(base_url=fleet.url, headers={"Authorization": f"Bearer {fleet.token}"},
                        timeout=30)


def _pem() -> str:
    return keys.public_key_pem(Ed25519PrivateKey.generate())


def _raw_request(url: str, head: str, pieces: Iterator[bytes]) -> tuple[int, bytes]:
    """Send ``head`` then body ``pieces`` until the server answers (or stops reading);
    returns (status, response bytes). The server may answer long before the body ends."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as sock:
        sock.sendall(head.encode())
        for piece in pieces:
            if select.select([sock], [], [], 0)[0]:
                break  # the server has answered: stop sending
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
        data = b""
        try:
            while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            sock.settimeout(1)
            while chunk := sock.recv(65536):
                data += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    assert data.startswith(b"HTTP/1.1 "), data[:200]
    return int(data.split(b" ", 2)[1]), data


def _post_head(path: str, headers: dict[str, str]) -> str:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return "\r\n".join(lines) + "\r\n\r\n"


def _zeros(total: int, piece: int = MIB) -> Iterator[bytes]:
    block = b"0" * piece
    for _ in range(total // piece):
        yield block


def _chunked(total: int, piece: int = MIB) -> Iterator[bytes]:
    for block in _zeros(total, piece):
        yield f"{len(block):x}\r\n".encode() + block + b"\r\n"
    yield b"0\r\n\r\n"


# -- item 7: body size caps and a free event loop ------------------------------------------
def test_oversized_enrol_body_is_refused_before_parsing(fleet: Fleet) -> None:
    admin = _admin(fleet)
    token = admin.post("/api/v1/enrolment-tokens", json={"group": "lab"}).json()["token"]
    pid = fleet.server.proc.pid
    warm = httpx.post(f"{fleet.url}/api/v1/enrol", json={"token": "efe_not-a-token", "device_id": "w",
                                                        "public_key": _pem()})
    assert warm.status_code == 403
    before = _rss_bytes(pid)

    # 400 MB declared, 64 MiB actually sent: refused on the header, the body is never read.
    status, body = _raw_request(fleet.url, _post_head("/api/v1/enrol", {
        "Content-Type": "application/json", "Content-Length": str(400_000_000)}),
        _zeros(64 * MIB))
    assert status == 413, body[:300]
    # No Content-Length (chunked): counted as it streams and cut off at the cap.
    status, body = _raw_request(fleet.url, _post_head("/api/v1/enrol", {
        "Content-Type": "application/json", "Transfer-Encoding": "chunked"}),
        _chunked(64 * MIB))
    assert status == 413, body[:300]
    grown = _rss_bytes(pid) - before
    assert grown < 32 * MIB, f"server RSS grew by {grown / MIB:.1f} MiB on refused bodies"

    # Nothing changed: no device, and the token was not spent.
    assert admin.get("/api/v1/devices").json() == []
    ok = httpx.post(f"{fleet.url}/api/v1/enrol", json={"token": token, "device_id": "dev-1",
                                                      "public_key": _pem()})
    assert ok.status_code == 201, ok.text
    assert [d["id"] for d in admin.get("/api/v1/devices").json()] == ["dev-1"]


def test_broker_round_trip_works_while_a_large_upload_streams_in(fleet: Fleet) -> None:
    admin = _admin(fleet)
    token = admin.post("/api/v1/enrolment-tokens", json={}).json()["token"]
    creds = httpx.post(f"{fleet.url}/api/v1/enrol", json={
        "token": token, "device_id": "dev-1", "public_key": _pem()}).json()["mqtt"]
    client = DeviceClient(creds["url"], "dev-1", creds["password"])
    checks: list[tuple[bool, int]] = []
    total = 96 * MIB

    def upload() -> Iterator[bytes]:
        for i, block in enumerate(_zeros(total)):
            if i == 48:  # half way: the upload is in progress, the loop must still answer
                info = client.client.publish(DeviceTopics("dev-1").telemetry, b"{}", qos=1)
                info.wait_for_publish(30)
                checks.append((info.is_published(),
                               httpx.get(f"{fleet.url}/api/v1/health").status_code))
            yield block

    try:
        assert not client.wait_connack(30).is_failure
        status, body = _raw_request(fleet.url, _post_head("/api/v1/bundles", {
            "Authorization": f"Bearer {fleet.token}", "Content-Type": "application/octet-stream",
            "Content-Length": str(total)}), upload())
    finally:
        client.close()
    assert checks == [(True, 200)]  # PUBACK and a health answer arrived mid-upload
    assert status == 422 and b"bundle rejected" in body  # zeros are no bundle
    assert admin.get("/api/v1/bundles").json() == []
    assert [p.name for p in (fleet.data / "bundles").iterdir()] == []  # temp file removed


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(ServerSettings(data_dir=tmp_path / "fleet", port=0, mqtt_port=0))
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {app.state.services.data_dir.admin_token}"
        yield client


def test_only_the_bundle_upload_route_takes_a_large_body(api: TestClient, tmp_path: Path,
                                                        sample_onnx: Path) -> None:
    key = Ed25519PrivateKey.generate()
    assert api.post("/api/v1/publishers",
                    json={"public_key": keys.public_key_pem(key.public_key())}).status_code == 201
    bundle = make_bundle(tmp_path / "b.efb", sample_onnx, key, extra=b"n" * 300_000)
    assert bundle.stat().st_size > 64 * 1024
    r = api.post("/api/v1/bundles", content=bundle.read_bytes())
    assert r.status_code == 201, r.text
    big_json = json.dumps({"name": "x" * 100_000, "public_key": "y"})
    r = api.post("/api/v1/publishers", content=big_json,
                 headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert len(api.get("/api/v1/publishers").json()) == 1


# -- item 8: no device-id oracle ---------------------------------------------------------
def test_enrol_answer_does_not_reveal_existing_device_ids(api: TestClient) -> None:
    token = api.post("/api/v1/enrolment-tokens", json={}).json()["token"]
    assert api.post("/api/v1/enrol", json={"token": token, "device_id": "dev-1",
                                           "public_key": _pem()}).status_code == 201
    before = api.get("/api/v1/devices").json()

    answers = {}
    for device_id in ("dev-1", "dev-unknown"):
        r = api.post("/api/v1/enrol", headers={"Authorization": ""}, json={
            "token": "efe_bogus", "device_id": device_id, "public_key": _pem()})
        answers[device_id] = (r.status_code, r.json())
    assert answers["dev-1"] == answers["dev-unknown"]
    assert answers["dev-1"][0] == 403
    assert api.get("/api/v1/devices").json() == before

    # A real token on a taken id is a conflict and is not spent.
    token = api.post("/api/v1/enrolment-tokens", json={}).json()["token"]
    r = api.post("/api/v1/enrol", json={"token": token, "device_id": "dev-1",
                                        "public_key": _pem()})
    assert r.status_code == 409
    assert api.get("/api/v1/devices").json() == before
    assert api.post("/api/v1/enrol", json={"token": token, "device_id": "dev-2",
                                           "public_key": _pem()}).status_code == 201


# -- item 9: console cookie and cross-origin requests -------------------------------------
def _login(client: TestClient) -> None:
    token = client.app.state.services.data_dir.admin_token  # type: ignore[attr-defined]
    r = client.post("/console/login", data={"token": token}, follow_redirects=False,
                    headers={"Authorization": ""})
    assert r.status_code == 303, r.text
    client.headers.pop("Authorization", None)


def test_cross_origin_post_with_console_cookie_is_refused(api: TestClient) -> None:
    _login(api)
    pub = {"public_key": _pem(), "name": "attacker"}
    for headers in ({"Origin": EVIL}, {"Origin": "null"},
                    {"Referer": f"{EVIL}/page"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Origin": "http://testserver:8081"}):
        r = api.post("/api/v1/publishers", json=pub, headers=headers)
        assert r.status_code == 403, (headers, r.text)
        assert "cross-" in r.json()["detail"]
        r = api.post("/api/v1/enrolment-tokens", json={}, headers=headers)
        assert r.status_code == 403
    assert api.get("/api/v1/publishers").json() == []  # nothing was added

    csrf = api.get("/console/admin").text.split('name="csrf_token" value="')[1].split('"')[0]
    r = api.post("/console/publishers", headers={"Origin": EVIL},
                 data={"csrf_token": csrf, "public_key": pub["public_key"]})
    assert r.status_code == 403
    assert api.get("/api/v1/publishers").json() == []

    # The console's own pages (same origin) still work, with or without the headers.
    r = api.post("/api/v1/publishers", json=pub, headers={
        "Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"})
    assert r.status_code == 201, r.text
    assert [p["name"] for p in api.get("/api/v1/publishers").json()] == ["attacker"]


def test_bearer_token_requests_are_not_origin_checked(api: TestClient) -> None:
    r = api.post("/api/v1/publishers", json={"public_key": _pem()}, headers={"Origin": EVIL})
    assert r.status_code == 201
    assert len(api.get("/api/v1/publishers").json()) == 1


@pytest.mark.parametrize(("base_url", "proxy", "secure"), [
    ("http://testserver", False, False),
    ("https://testserver", False, True),
    ("http://testserver", True, True),
])
def test_console_cookie_is_httponly_strict_and_secure_over_tls(
        tmp_path: Path, base_url: str, proxy: bool, secure: bool) -> None:
    app = create_app(ServerSettings(data_dir=tmp_path / "fleet", port=0, mqtt_port=0,
                                    behind_tls_proxy=proxy))
    with TestClient(app, base_url=base_url) as client:
        token = app.state.services.data_dir.admin_token
        r = client.post("/console/login", data={"token": token}, follow_redirects=False)
        assert r.status_code == 303
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert ("secure" in cookie.split("; ")) is secure


# -- item 11: registry files readable by the server's user only ----------------------------
def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_registry_files_are_private(fleet: Fleet) -> None:
    admin = _admin(fleet)
    for _ in range(3):  # writes: the WAL and shared-memory files exist and grow
        assert admin.post("/api/v1/enrolment-tokens", json={}).status_code == 201
    data = fleet.data
    db_files = [data / n for n in ("registry.db", "registry.db-wal", "registry.db-shm")]
    assert all(p.exists() for p in db_files)
    assert {p.name: _mode(p) for p in db_files} == {p.name: 0o600 for p in db_files}
    assert _mode(data) == 0o700

    # A data dir left world-readable by an older version is tightened on the next start.
    fleet.server.stop()
    data.chmod(0o755)
    for p in db_files:
        if p.exists():
            p.chmod(0o644)
    (data / "ports.json").unlink()
    restarted = Fleet(fleet.root)
    try:
        assert _admin(restarted).post("/api/v1/enrolment-tokens", json={}).status_code == 201
        assert {p.name: _mode(p) for p in db_files if p.exists()} == {
            p.name: 0o600 for p in db_files if p.exists()}
        assert _mode(data) == 0o700
        assert len(_admin(restarted).get("/api/v1/devices").json()) == 0
    finally:
        restarted.stop()
