"""A small httpx client for the REST API (used by the CLIs and by tests)."""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

ProgressCallback = Callable[[int, int], None]
"""``progress(bytes_sent, total_bytes)``."""

UPLOAD_BLOCK = 1024 * 1024


class FleetApiError(Exception):
    """The server answered with an error (``status`` 0: it could not be reached)."""

    def __init__(self, status: int, detail: str) -> None:
        detail = " ".join(str(detail).split())  # one line, whatever the server sent
        super().__init__(f"HTTP {status}: {detail}" if status else detail)
        self.status = status
        self.detail = detail


class FleetClient:
    """``FleetClient(server, token)``: one method per REST route; a context manager."""

    def __init__(self, server: str, token: str | None = None, *, timeout_s: float = 60.0,
                 transport: httpx.BaseTransport | None = None,
                 ca_bundle: Path | str | None = None) -> None:
        """``ca_bundle``: the fleet CA (PEM) an https server must chain to; default
        ``$EDGEFLEET_CA``, else the system's CAs (a proxy with a public certificate)."""
        ca_bundle = ca_bundle or os.environ.get("EDGEFLEET_CA") or None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(ca_bundle)) if ca_bundle else True)
        self._http = httpx.Client(base_url=server.rstrip("/") + "/api/v1", headers=headers,
                                  timeout=timeout_s, transport=transport, verify=verify)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise _unreachable(e) from e
        if response.status_code >= 400:
            raise FleetApiError(response.status_code, _detail(response))
        if not response.content:
            return None
        return response.json()

    # -- routes -----------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health")

    def upload_bundle(self, path: Path | str,
                      progress: ProgressCallback | None = None) -> dict[str, Any]:
        """Stream a ``.efb`` file to the server; returns the stored bundle summary."""
        path = Path(path)
        total = path.stat().st_size

        def body() -> Iterator[bytes]:
            sent = 0
            with path.open("rb") as f:
                while block := f.read(UPLOAD_BLOCK):
                    sent += len(block)
                    yield block
                    if progress is not None:
                        progress(sent, total)

        return self._request("POST", "/bundles", content=body(), headers={
            "Content-Type": "application/octet-stream", "Content-Length": str(total)})

    def list_bundles(self) -> list[dict[str, Any]]:
        return self._request("GET", "/bundles")

    def get_bundle(self, key: str) -> dict[str, Any]:
        return self._request("GET", f"/bundles/{key}")

    def download_bundle(self, key: str, dest: Path | str) -> Path:
        dest = Path(dest)
        try:
            with self._http.stream("GET", f"/bundles/{key}/download") as response:
                if response.status_code >= 400:
                    response.read()
                    raise FleetApiError(response.status_code, _detail(response))
                with dest.open("wb") as f:
                    for block in response.iter_bytes():
                        f.write(block)
        except httpx.HTTPError as e:
            raise _unreachable(e) from e
        return dest

    def add_publisher(self, public_key_pem: str, name: str = "") -> dict[str, Any]:
        return self._request("POST", "/publishers",
                             json={"public_key": public_key_pem, "name": name})

    def list_publishers(self) -> list[dict[str, Any]]:
        return self._request("GET", "/publishers")

    def create_enrolment_token(self, group: str = "default",
                               ttl_s: int = 86400) -> dict[str, Any]:
        return self._request("POST", "/enrolment-tokens", json={"group": group, "ttl_s": ttl_s})

    def enrol(self, token: str, device_id: str, public_key_pem: str) -> dict[str, Any]:
        return self._request("POST", "/enrol", json={
            "token": token, "device_id": device_id, "public_key": public_key_pem})

    def list_devices(self, group: str | None = None, **filters: Any) -> list[dict[str, Any]]:
        """Devices; ``filters`` are GET /api/v1/devices parameters (None values are left out)."""
        params = {k: v for k, v in {"group": group, **filters}.items() if v is not None}
        return self._request("GET", "/devices", params=params or None)

    def get_device(self, device_id: str) -> dict[str, Any]:
        return self._request("GET", f"/devices/{device_id}")

    def revoke_device(self, device_id: str) -> dict[str, Any]:
        return self._request("POST", f"/devices/{device_id}/revoke")

    def device_telemetry(self, device_id: str, limit: int = 100) -> list[dict[str, Any]]:
        return self._request("GET", f"/devices/{device_id}/telemetry", params={"limit": limit})

    def device_events(self, device_id: str, limit: int = 100) -> list[dict[str, Any]]:
        return self._request("GET", f"/devices/{device_id}/events", params={"limit": limit})

    def deploy(self, bundle: str, *, device_id: str | None = None,
               group: str | None = None, delegate: str | None = None,
               variant: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"bundle": bundle}
        if delegate is not None or variant is not None:
            body["delegate_override"] = {"delegate": delegate, "variant": variant}
        if device_id is not None:
            body["device_id"] = device_id
        if group is not None:
            body["group"] = group
        return self._request("POST", "/deployments", json=body)

    def list_deployments(self) -> list[dict[str, Any]]:
        return self._request("GET", "/deployments")

    def get_deployment(self, deployment_id: str) -> dict[str, Any]:
        return self._request("GET", f"/deployments/{deployment_id}")

    def cancel_deployment(self, deployment_id: str) -> dict[str, Any]:
        return self._request("POST", f"/deployments/{deployment_id}/cancel")


    # -- rollouts and audit ---------------------------------------------------------------
    def create_rollout(self, bundle: str, *, group: str | None = None,
                       devices: list[str] | None = None,
                       plan: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"bundle": bundle, "group": group, "devices": devices,
                                "plan": plan}
        return self._request("POST", "/rollouts", json=body)

    def list_rollouts(self) -> list[dict[str, Any]]:
        return self._request("GET", "/rollouts")

    def get_rollout(self, rollout_id: str) -> dict[str, Any]:
        return self._request("GET", f"/rollouts/{rollout_id}")

    def rollout_action(self, rollout_id: str, action: str) -> dict[str, Any]:
        """``action``: pause, resume, abort or promote."""
        return self._request("POST", f"/rollouts/{rollout_id}/{action}")

    def rollout_comparison(self, rollout_id: str) -> dict[str, Any]:
        return self._request("GET", f"/rollouts/{rollout_id}/comparison")

    def audit(self, limit: int = 200, before: int | None = None) -> list[dict[str, Any]]:
        """Newest first; the next page is ``before=<the last entry's id>``."""
        params = {"limit": limit, **({"before": before} if before is not None else {})}
        return self._request("GET", "/audit", params=params)

    # -- people and API tokens (admin) ----------------------------------------------------
    def whoami(self) -> dict[str, Any]:
        return self._request("GET", "/me")

    def list_users(self) -> list[dict[str, Any]]:
        return self._request("GET", "/users")

    def add_user(self, username: str, password: str, role: str) -> dict[str, Any]:
        return self._request("POST", "/users", json={"username": username,
                                                     "password": password, "role": role})

    def update_user(self, username: str, **changes: Any) -> dict[str, Any]:
        """``changes``: role, disabled, password."""
        return self._request("PATCH", f"/users/{username}", json=changes)

    def list_tokens(self) -> list[dict[str, Any]]:
        return self._request("GET", "/tokens")

    def create_token(self, name: str, role: str, expires_in_s: int) -> dict[str, Any]:
        return self._request("POST", "/tokens", json={"name": name, "role": role,
                                                      "expires_in_s": expires_in_s})

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        return self._request("DELETE", f"/tokens/{token_id}")

def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list):  # pydantic validation errors
        detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}"
                           for d in detail if isinstance(d, dict))
    return str(detail or response.text[:200] or response.reason_phrase)


def _unreachable(e: httpx.HTTPError) -> FleetApiError:
    if "CERTIFICATE_VERIFY_FAILED" in str(e):
        return FleetApiError(0, "the fleet server's certificate is not trusted: give the "
                             "fleet CA with --cacert or EDGEFLEET_CA (the server's "
                             f"DATA/ca/bundle.pem) ({e})")
    return FleetApiError(0, f"cannot reach fleet server: {e}")
