"""Keeping a running server's TLS listeners on current certificates, without a restart.

The server's certificate lives 90 days and is re-issued by the fleet CA when close to
expiry or after a CA rollover (``FleetCA.server_cert_files``); a rollover also adds the new
CA to the trust bundle. A listener's ``SSLContext`` read its files once, so
``TlsRefresher`` re-asks the CA for the files every ``interval_s`` (default one hour) and,
when they changed, loads them into every live listener context of this server
(``load_cert_chain``, ``load_verify_locations``): each new handshake then presents the new
certificate and accepts client certificates of the new CA. Connections already open keep
the session they negotiated.

Which contexts: the embedded broker's (``tls.server_context`` registers each it builds)
and the HTTPS one uvicorn builds (registered by ``serve``), keyed by the certificate file
they were loaded from, so two servers in one process never touch each other's.

What a reload cannot do: remove a CA from a context's trust store (OpenSSL has no call
for it). When a rollover's overlap ends, certificates of the old CA are refused by renewal,
but the HTTPS and embedded-broker handshakes keep accepting them until the server restarts
(docs/operations.md says to restart then).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from fleet_server.tls import ServerTls, listeners_loaded_from

__all__ = ["TlsRefresher"]

log = logging.getLogger(__name__)


class TlsRefresher:
    """``refresh`` once now; ``start``/``stop`` a thread doing it every ``interval_s``."""

    def __init__(self, make: Callable[[], ServerTls], *, interval_s: float = 3600.0) -> None:
        self._make = make  # re-issues the files when due (fleet_server.tls.fleet_server_tls)
        self.interval_s = interval_s
        self._stamp: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> int:
        """Load changed files into this server's live listener contexts; how many."""
        tls = self._make()
        stamp = _stamp(tls)
        if stamp == self._stamp:
            return 0
        contexts = listeners_loaded_from(Path(tls.cert))
        for ctx in contexts:
            ctx.load_cert_chain(str(tls.cert), str(tls.key))
            ctx.load_verify_locations(cafile=str(tls.ca_bundle))
        first, self._stamp = self._stamp is None, stamp
        if not first:
            log.warning("TLS certificate or trust bundle changed: %d listener(s) reloaded",
                        len(contexts))
        return 0 if first else len(contexts)

    def start(self) -> None:
        self.refresh()  # the files as the listeners loaded them
        self._thread = threading.Thread(target=self._run, name="tls-refresh", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.refresh()
            except Exception:  # a bad file must not end the loop: logged, tried again
                log.exception("TLS refresh failed; the listeners keep their certificates")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


def _stamp(tls: ServerTls) -> str:
    h = hashlib.sha256()
    for path in (tls.cert, tls.key, tls.ca_bundle):
        h.update(Path(path).read_bytes())
    return h.hexdigest()
