"""An on-disk outbox for QoS 1 publications that must survive restarts and outages.

One file per record in ``DIR/outbox/``, named by a zero-padded sequence number, holding
the topic, a newline and the payload. A record is deleted only when the broker has
acknowledged its publication. Over the byte budget, the oldest records are dropped and
the drops counted (persisted in ``DIR/outbox/dropped``).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from device_agent.persist import atomic_write_bytes

__all__ = ["Outbox", "OutboxRecord"]

_SUFFIX = ".msg"


@dataclass(frozen=True)
class OutboxRecord:
    seq: int
    topic: str
    payload: bytes


class Outbox:
    def __init__(self, directory: Path, budget_bytes: int = 50 * 1024 * 1024) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.budget_bytes = budget_bytes
        self._lock = threading.Lock()
        self._sizes: dict[int, int] = {}
        for p in self.dir.glob(f"*{_SUFFIX}"):
            try:
                self._sizes[int(p.stem)] = p.stat().st_size
            except (ValueError, OSError):
                continue
        self._next = max(self._sizes, default=0) + 1
        self._dropped_path = self.dir / "dropped"
        try:
            self.dropped = int(self._dropped_path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            self.dropped = 0

    def _path(self, seq: int) -> Path:
        return self.dir / f"{seq:020d}{_SUFFIX}"

    def put(self, topic: str, payload: bytes) -> int:
        """Store a record durably and return its outbox sequence number."""
        data = topic.encode() + b"\n" + payload
        with self._lock:
            seq = self._next
            self._next += 1
            atomic_write_bytes(self._path(seq), data, mode=0o600)
            self._sizes[seq] = len(data)
            dropped = 0
            while sum(self._sizes.values()) > self.budget_bytes and len(self._sizes) > 1:
                oldest = min(self._sizes)
                self._path(oldest).unlink(missing_ok=True)
                del self._sizes[oldest]
                dropped += 1
            if dropped:
                self.dropped += dropped
                atomic_write_bytes(self._dropped_path, str(self.dropped).encode())
            return seq

    def pending(self) -> list[OutboxRecord]:
        """Every record not yet acknowledged, oldest first."""
        out: list[OutboxRecord] = []
        with self._lock:
            seqs = sorted(self._sizes)
        for seq in seqs:
            try:
                raw = self._path(seq).read_bytes()
            except FileNotFoundError:
                continue
            topic, _, payload = raw.partition(b"\n")
            out.append(OutboxRecord(seq, topic.decode(errors="replace"), payload))
        return out

    def ack(self, seq: int) -> None:
        """The broker acknowledged record ``seq``: delete it."""
        with self._lock:
            self._sizes.pop(seq, None)
            try:
                os.unlink(self._path(seq))
            except FileNotFoundError:
                pass

    def __len__(self) -> int:
        with self._lock:
            return len(self._sizes)

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return sum(self._sizes.values())
