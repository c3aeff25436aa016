"""The trust server goes away while an instruction is checked: the device keeps the
instruction, retries the TUF refresh with backoff over real HTTP, and installs once the
server is back, without a new instruction (no redeploy). A server that answers with a
refusal is not retried."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from device_agent.trust_store import HttpMetadataSource, TrustGate, TrustStore
from ota.install import InstallState

from .conftest import Bench

S = InstallState


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def trust_server(bench: Bench, port: int, status: int = 200) -> Iterator[list[str]]:
    """The server's ``/api/v1/trust/<name>`` over real HTTP on ``port``."""
    served: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            name = self.path.rsplit("/", 1)[-1]
            served.append(name)
            data = bench.source.fetch(name, 1 << 22) if status == 200 else b"{}"
            code = status if data is not None else 404
            self.send_response(code)
            self.send_header("Content-Length", str(len(data or b"")))
            self.end_headers()
            self.wfile.write(data or b"")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()


def _http_trust(bench: Bench, port: int) -> None:
    assert bench.agent is not None
    bench.agent.trust = TrustGate(TrustStore(bench.agent_dir),
                                  HttpMetadataSource(f"http://127.0.0.1:{port}", timeout_s=5),
                                  clock=bench.clock.dt)


def test_trust_check_recovers_after_a_trust_server_outage_without_a_redeploy(
        bench: Bench) -> None:
    agent = bench.agent
    assert agent is not None
    port = _free_port()
    _http_trust(bench, port)
    before = bench.model_state()
    pub = bench.publish("2.0.0")
    bench.offer(bench.instruction(pub.ref))  # nothing listens on the port: connection refused
    pending = agent.core.pending
    assert pending is not None and pending.retry_at is not None
    assert (agent.journal.state, agent.store.applied_seq) == (S.COMMITTED, 1)
    assert bench.model_state() == before and agent.rejected_messages == 0

    # still down at the first retry: the wait doubles
    first_wait = pending.retry_at - time.time()
    agent._run(agent.core.on_tick(pending.retry_at))
    assert pending.attempts == 2 and pending.retry_at - time.time() > first_wait
    assert agent.journal.state is S.COMMITTED

    with trust_server(bench, port) as served:  # the server is back
        agent._run(agent.core.on_tick(pending.retry_at))
        assert "timestamp.json" in served
    assert agent.core.pending is None
    assert agent.journal.state is S.DOWNLOADING and agent.store.applied_seq == 2
    bench.deliver(pub)
    assert agent.journal.state is S.COMMITTED
    assert bench.model_state()["current"].version == "2.0.0"


def test_a_trust_server_answering_a_client_error_is_not_retried(bench: Bench) -> None:
    agent = bench.agent
    assert agent is not None
    port = _free_port()
    _http_trust(bench, port)
    before = bench.model_state()
    with trust_server(bench, port, status=400):
        bench.offer(bench.instruction(bench.publish("2.0.0").ref))
    assert agent.core.pending is None and agent.rejected_messages == 1
    assert agent.core.on_tick(time.time() + 3600) == []
    assert bench.model_state() == before and agent.store.applied_seq == 1
