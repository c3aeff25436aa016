"""The device's trusted TUF metadata, persisted atomically in ``DIR/trust/``, and the gate
the agent calls before it downloads a bundle.

``TrustStore`` holds ``root.json`` (installed at enrolment, replaced only by a root that
verified through the chain), ``timestamp.json``, ``snapshot.json`` and ``targets.json``
(written only after ``ota.trust.refresh`` verified them; root first, so a crash leaves
a consistent older set or the newer root). ``TrustGate.check(ref)`` refreshes from the fleet
server's ``/api/v1/trust/`` and raises ``TrustError`` unless trusted targets metadata lists
the instruction's bundle (sha256, size, name, version, publisher key).
"""

from __future__ import annotations

import datetime
import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from device_agent.persist import atomic_write_bytes
from ota.trust import (
    DEFAULT_TRUST_LIMITS,
    MetadataSource,
    TrustedFiles,
    TrustError,
    TrustLimits,
    TrustUnavailableError,
    check_target,
    refresh,
)

if TYPE_CHECKING:  # httpx is imported when metadata is first fetched, not at start
    import httpx

__all__ = ["HttpMetadataSource", "TrustGate", "TrustStore"]

log = logging.getLogger(__name__)
ROLES = ("timestamp", "snapshot", "targets")


class TrustStore:
    """``DIR/trust/*.json``: the metadata bytes this device trusts."""

    def __init__(self, agent_dir: Path) -> None:
        self.dir = Path(agent_dir) / "trust"

    def _read(self, name: str) -> bytes | None:
        try:
            return (self.dir / name).read_bytes()
        except FileNotFoundError:
            return None

    @property
    def has_root(self) -> bool:
        return (self.dir / "root.json").exists()

    def install_initial_root(self, root_json: bytes | str) -> None:
        """Trust-on-enrolment: the root handed out with the MQTT credentials. Checked to be
        a self-signed root before it is written."""
        data = root_json.encode() if isinstance(root_json, str) else bytes(root_json)
        from tuf.ngclient._internal.trusted_metadata_set import TrustedMetadataSet
        from tuf.ngclient.config import EnvelopeType

        try:
            TrustedMetadataSet(data, EnvelopeType.METADATA)
        except Exception as e:
            raise TrustError(f"enrolment root is not a valid self-signed root: {e}") from e
        atomic_write_bytes(self.dir / "root.json", data)
        for role in ROLES:
            (self.dir / f"{role}.json").unlink(missing_ok=True)

    def load(self) -> TrustedFiles | None:
        root = self._read("root.json")
        if root is None:
            return None
        return TrustedFiles(root=root, timestamp=self._read("timestamp.json"),
                            snapshot=self._read("snapshot.json"),
                            targets=self._read("targets.json"))

    def save(self, old: TrustedFiles, new: TrustedFiles) -> None:
        """Persist what changed: root first, then targets, snapshot, timestamp."""
        if new.root != old.root:
            atomic_write_bytes(self.dir / "root.json", new.root)
        for role in ("targets", "snapshot", "timestamp"):
            data = getattr(new, role)
            if data is not None and data != getattr(old, role):
                atomic_write_bytes(self.dir / f"{role}.json", data)


class HttpMetadataSource:
    """``MetadataSource`` over the fleet server's public ``GET /api/v1/trust/<name>``."""

    def __init__(self, server_url: str, *, timeout_s: float = 15.0,
                 transport: httpx.BaseTransport | None = None,
                 verify: Callable[[], ssl.SSLContext | bool] = lambda: True) -> None:
        self.base = server_url.rstrip("/") + "/api/v1/trust/"
        self.timeout_s = timeout_s
        self.transport = transport
        self.verify = verify  # called per fetch: the pinned CA bundle as it is now

    def fetch(self, name: str, max_length: int) -> bytes | None:
        import httpx

        url = self.base + name
        try:
            with httpx.Client(timeout=self.timeout_s, transport=self.transport,
                              verify=self.verify()) as client, \
                    client.stream("GET", url) as resp:
                if resp.status_code in (403, 404):
                    return None
                if resp.status_code >= 500 or resp.status_code in (408, 429):
                    raise TrustUnavailableError(f"GET {url}: HTTP {resp.status_code}")
                if resp.status_code != 200:
                    raise TrustError(f"GET {url}: HTTP {resp.status_code}")
                buf = bytearray()
                for chunk in resp.iter_bytes():
                    buf += chunk
                    if len(buf) > max_length:  # endless data: cut at the bound
                        raise TrustError(f"GET {url}: more than {max_length} bytes")
                return bytes(buf)
        except httpx.HTTPError as e:  # refused, reset, timed out: the server is away
            raise TrustUnavailableError(f"GET {url}: {e}") from e


class TrustGate:
    """What the agent calls with a verified instruction's bundle before downloading it."""

    def __init__(self, store: TrustStore, source: MetadataSource, *,
                 clock: Callable[[], datetime.datetime] | None = None,
                 limits: TrustLimits = DEFAULT_TRUST_LIMITS) -> None:
        self.store = store
        self.source = source
        self.limits = limits
        self._clock = clock or (lambda: datetime.datetime.now(datetime.UTC))

    @classmethod
    def for_agent(cls, agent_dir: Path, server_url: str) -> TrustGate:
        from device_agent.server_tls import http_verify

        return cls(TrustStore(agent_dir),
                   HttpMetadataSource(server_url, verify=lambda: http_verify(agent_dir)))

    def check(self, *refs: Any) -> None:
        """Raise ``TrustError`` unless trusted metadata lists every one of ``refs``
        (``BundleRef``s: the instruction's bundle and its shadow candidate) after one
        refresh; ``TrustUnavailableError`` when the metadata could not be fetched (retry).

        A device without a trusted root (enrolled before the fleet had one) is checked by
        the instruction signature and the publisher signature only; it is logged."""
        refs = tuple(r for r in refs if r is not None)
        if not refs:
            return
        old = self.store.load()
        if old is None:
            log.warning("no trusted TUF root in %s: checking %s by signatures only",
                        self.store.dir, ", ".join(r.sha256[:12] for r in refs))
            return
        tms, new = refresh(old, self.source, now=self._clock(), limits=self.limits)
        self.store.save(old, new)
        for ref in refs:
            check_target(tms, sha256=ref.sha256, size=ref.size, name=ref.name,
                         version=ref.version, publisher_key_id=ref.publisher_key_id)


def install_enrolment_root(agent_dir: Path, response: dict[str, Any]) -> None:
    """Store the enrol response's ``trust_root`` (if the server sent one); ``EnrolError``
    if it is not a valid self-signed root."""
    root = response.get("trust_root")
    if not root:
        return
    from device_agent.errors import EnrolError

    if not isinstance(root, str):
        raise EnrolError("enrol response's trust_root is not a string")
    try:
        TrustStore(agent_dir).install_initial_root(root)
    except TrustError as e:
        raise EnrolError(str(e)) from e
