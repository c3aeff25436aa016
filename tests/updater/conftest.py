"""A real agent (in process, not started: no broker) that serves sample@1.0.0 installed
through a signed instruction and chunks, with the fleet and publisher keys at hand."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_agent.agent import Agent
from device_agent.config import AgentConfig
from model_bundles import keys
from model_bundles.builder import build_bundle
from ota.chunks import encode_chunk_frame, file_chunk_hashes, read_chunk
from ota.install import InstallState
from ota.instructions import BundleRef, Instruction, chunk_count, sign_instruction

DEVICE = "dev-1"
CHUNK = 4096


@dataclass
class Rig:
    tmp: Path
    sample_onnx: Path
    fleet_key: Ed25519PrivateKey
    publisher_key: Path
    agent_dir: Path
    agent: Agent
    seq: int = 0

    def build(self, version: str, *, key_path: Path | None = None,
              model: Path | None = None) -> tuple[Path, BundleRef]:
        out = self.tmp / f"sample-{version}.efb"
        build_bundle([model or self.sample_onnx], name="sample", version=version,
                     key_path=key_path or self.publisher_key, out=out, task="classifier")
        pub = keys.load_private_key(self.publisher_key).public_key()
        data = out.read_bytes()
        ref = BundleRef(name="sample", version=version, sha256=hashlib.sha256(data).hexdigest(),
                        size=len(data), chunk_size=CHUNK,
                        chunk_hashes=tuple(file_chunk_hashes(out, CHUNK)),
                        publisher_key_id=keys.key_id(pub),
                        publisher_public_key=keys.public_key_pem(pub))
        return out, ref

    def instruction(self, bundle: BundleRef | None, *, shadow: BundleRef | None = None,
                    rate: float = 0.0, pace: float | None = None) -> bytes:
        self.seq += 1
        now = time.time()
        return sign_instruction(Instruction(
            device_id=DEVICE, seq=self.seq, issued_at=now - 60, expires_at=now + 3600,
            deployment_id="d-1", bundle=bundle, shadow=shadow, shadow_sample_rate=rate,
            shadow_samples_per_minute=pace), self.fleet_key)

    def deliver(self, path: Path, ref: BundleRef) -> None:
        total = chunk_count(ref.size, CHUNK)
        for i in range(total):
            self.agent._handle_chunk(encode_chunk_frame(ref.sha256, i, total,
                                                        read_chunk(path, i, CHUNK)))

    def restart(self) -> Agent:
        self.agent.shadow.stop()
        self.agent = Agent(self.agent_dir)
        self.agent.recover()
        return self.agent

    def errors(self) -> list[str]:
        return [r.payload.decode() for r in self.agent.outbox.pending()
                if b'"kind":"error"' in r.payload]


@pytest.fixture
def rig(tmp_path: Path, sample_onnx: Path) -> Rig:
    fleet_key = Ed25519PrivateKey.generate()
    publisher, _ = keys.generate_keypair(tmp_path / "publisher")
    agent_dir = tmp_path / "agent"
    AgentConfig(device_id=DEVICE, server_url="http://fleet.invalid",
                mqtt_url="mqtt://127.0.0.1:1", mqtt_username=DEVICE, mqtt_password="x",
                fleet_public_key=keys.public_key_pem(fleet_key.public_key()),
                preferred_delegates=("cpu",)).save(agent_dir)
    r = Rig(tmp=tmp_path, sample_onnx=sample_onnx, fleet_key=fleet_key,
            publisher_key=publisher, agent_dir=agent_dir, agent=Agent(agent_dir))
    path, ref = r.build("1.0.0")
    r.agent._handle_desired(r.instruction(ref))
    r.deliver(path, ref)
    assert r.agent.journal.state is InstallState.COMMITTED, r.agent.journal
    return r
