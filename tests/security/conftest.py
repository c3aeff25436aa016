"""The attack-test bench: a real server-side TUF repository, a real device agent (in
process, no broker) with a committed model, and an in-memory metadata source the attacker
can tamper with. Everything is real except the transport (bytes are handed over directly).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_agent.agent import Agent
from device_agent.config import AgentConfig
from device_agent.trust_store import TrustGate, TrustStore
from fleet_server import tuf_repo
from model_bundles import keys
from model_bundles.builder import build_bundle
from ota.chunks import encode_chunk_frame, file_chunk_hashes, read_chunk
from ota.install import InstallState
from ota.instructions import BundleRef, Instruction, chunk_count, sign_instruction

from .broker_fleet import MOSQUITTO, BrokerFleet, run_broker_fleet

DEVICE = "dev-1"
CHUNK = 64 * 1024


@dataclass
class Clock:
    """The TUF clock of server and device; tests move it to make metadata expire."""

    now: float = field(default_factory=time.time)

    def __call__(self) -> float:
        return self.now

    def dt(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.now, tz=datetime.UTC)


@dataclass
class Source:
    """The server's ``/api/v1/trust/`` in memory; ``override`` lets the attacker answer."""

    repo: tuf_repo.TufRepo
    bundles: list[dict[str, Any]] = field(default_factory=list)
    override: dict[str, bytes | None] = field(default_factory=dict)
    fetched: list[str] = field(default_factory=list)

    def fetch(self, name: str, max_length: int) -> bytes | None:
        self.fetched.append(name)
        if name in self.override:
            return self.override[name]
        return self.repo.metadata(name, bundles=self.bundles)


@dataclass
class Published:
    path: Path
    ref: BundleRef


@dataclass
class Bench:
    tmp: Path
    clock: Clock
    fleet_key: Ed25519PrivateKey
    publisher_key_path: Path
    data: Path
    root_keys: Path
    repo: tuf_repo.TufRepo
    source: Source
    agent_dir: Path
    sample_onnx: Path
    agent: Agent | None = None
    seq: int = 0

    # -- server side -----------------------------------------------------------------
    def build(self, version: str, *, key_path: Path | None = None) -> Path:
        out = self.tmp / f"sample-{version}.efb"
        build_bundle([self.sample_onnx], name="sample", version=version,
                     key_path=key_path or self.publisher_key_path, out=out, task="classifier")
        return out

    def ref_for(self, path: Path, version: str, *, key_path: Path | None = None) -> BundleRef:
        data = path.read_bytes()
        pub = keys.load_private_key(key_path or self.publisher_key_path).public_key()
        return BundleRef(name="sample", version=version, sha256=hashlib.sha256(data).hexdigest(),
                         size=len(data), chunk_size=CHUNK,
                         chunk_hashes=tuple(file_chunk_hashes(path, CHUNK)),
                         publisher_key_id=keys.key_id(pub), publisher_public_key=keys.public_key_pem(pub))

    def publish(self, version: str) -> Published:
        """What the server does for a stored bundle: it becomes a TUF target."""
        path = self.build(version)
        ref = self.ref_for(path, version)
        self.source.bundles.append({"id": ref.sha256, "name": ref.name, "version": ref.version,
                                    "size": ref.size, "publisher_key_id": ref.publisher_key_id})
        return Published(path, ref)

    def instruction(self, ref: BundleRef | None, *, device_id: str = DEVICE,
                    seq: int | None = None, ttl_s: float = 3600,
                    key: Ed25519PrivateKey | None = None) -> bytes:
        if seq is None:
            self.seq += 1
            seq = self.seq
        now = time.time()  # the agent checks instruction expiry against the wall clock
        instr = Instruction(device_id=device_id, seq=seq, issued_at=now - 3600,
                            expires_at=now + ttl_s, deployment_id="d-1", bundle=ref)
        return sign_instruction(instr, key or self.fleet_key)

    # -- device side -----------------------------------------------------------------
    def start_agent(self) -> Agent:
        """A fresh Agent object on the same directory (an agent restart)."""
        agent = Agent(self.agent_dir)
        agent.trust = TrustGate(TrustStore(self.agent_dir), self.source, clock=self.clock.dt)
        self.agent = agent
        return agent

    def offer(self, envelope: bytes) -> None:
        """The agent's worker handling a ``desired`` message (as from the broker)."""
        assert self.agent is not None
        self.agent._handle_desired(envelope)

    def deliver(self, pub: Published, *, extra: bytes = b"") -> None:
        """Stream the bundle's chunks as the server would (``extra`` appended to the last)."""
        assert self.agent is not None
        total = chunk_count(pub.ref.size, CHUNK)
        for i in range(total):
            data = read_chunk(pub.path, i, CHUNK)
            if i == total - 1:
                data += extra
            self.agent._handle_chunk(encode_chunk_frame(pub.ref.sha256, i, total, data))

    def install(self, pub: Published) -> None:
        self.offer(self.instruction(pub.ref))
        self.deliver(pub)

    # -- what must not change ----------------------------------------------------------
    def model_state(self) -> dict[str, Any]:
        """The active model: slot pointer and every file of the active slot, hashed."""
        assert self.agent is not None
        cur = self.agent.slots.current()
        files: dict[str, str] = {}
        if cur is not None:
            slot = self.agent.slots.path(cur.slot)
            for p in sorted(slot.rglob("*")):
                if p.is_file():
                    files[str(p.relative_to(slot))] = hashlib.sha256(p.read_bytes()).hexdigest()
        return {"current": cur, "files": files}

    @property
    def journal_state(self) -> InstallState:
        assert self.agent is not None
        return self.agent.journal.state


def _config(bench_dir: Path, fleet_key: Ed25519PrivateKey) -> AgentConfig:
    return AgentConfig(device_id=DEVICE, server_url="http://fleet.invalid",
                       mqtt_url="mqtt://127.0.0.1:1", mqtt_username=DEVICE, mqtt_password="x",
                       fleet_public_key=keys.public_key_pem(fleet_key.public_key()),
                       preferred_delegates=("cpu",))


@pytest.fixture(scope="session")
def publisher_key_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    priv, _ = keys.generate_keypair(tmp_path_factory.mktemp("publisher"))
    return priv


@pytest.fixture
def bench(tmp_path: Path, sample_onnx: Path, publisher_key_path: Path) -> Bench:
    """A device serving sample@1.0.0, installed through TUF-checked instructions."""
    clock = Clock()
    data, root_keys = tmp_path / "server", tmp_path / "offline-root-keys"
    tuf_repo.init_repo(data, root_keys, threshold=2, count=3, now=clock.now)
    repo = tuf_repo.TufRepo(data, clock=clock)
    fleet_key = Ed25519PrivateKey.generate()
    agent_dir = tmp_path / "agent"
    _config(agent_dir, fleet_key).save(agent_dir)
    TrustStore(agent_dir).install_initial_root(repo.root_bytes())
    b = Bench(tmp=tmp_path, clock=clock, fleet_key=fleet_key,
              publisher_key_path=publisher_key_path, data=data, root_keys=root_keys, repo=repo,
              source=Source(repo), agent_dir=agent_dir, sample_onnx=sample_onnx)
    b.start_agent()
    b.install(b.publish("1.0.0"))
    assert b.journal_state is InstallState.COMMITTED, b.agent.journal if b.agent else None
    assert b.model_state()["current"].version == "1.0.0"
    return b


BenchFactory = Callable[[], Bench]


# -- the broker attack bench (tests/security/test_broker_attacks.py) -----------------------

@pytest.fixture(params=["embedded", "mosquitto"])
def broker_fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BrokerFleet]:
    """A real server with ``dev-a`` and ``dev-b`` connected, on each kind of broker."""
    if request.param == "mosquitto" and not Path(MOSQUITTO).exists():
        if os.environ.get("CI"):
            pytest.fail("Mosquitto is required in CI (scripts/install-system-deps.sh installs it)")
        pytest.skip("mosquitto not installed (apt-get install mosquitto)")
    with run_broker_fleet(request.param, tmp_path) as f:
        yield f
