"""An on-disk outbox for QoS 1 publications that must survive restarts and outages.

One file per record in ``DIR/outbox/``, named by a zero-padded outbox sequence number,
holding the topic, a newline and the payload. A record put with a ``key`` (the report's
message seq) is deleted only when the server confirms that it stored that seq
(``confirm``, from a ``ReportAck``); its file is named ``SEQ-KEY.msg``. A record without a
key is deleted when the broker acknowledges it (``ack``). Over the byte budget the oldest
records are dropped and the drops counted (persisted in ``DIR/outbox/dropped``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
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
    key: int | None = None
    """The seq the server confirms, or None (deleted on the broker's acknowledgement)."""


def _parse_name(stem: str) -> tuple[int, int | None]:
    seq, sep, key = stem.partition("-")
    return int(seq), (int(key) if sep else None)


class Outbox:
    def __init__(self, directory: Path, budget_bytes: int = 50 * 1024 * 1024) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.budget_bytes = budget_bytes
        self._lock = threading.Lock()
        self._sizes: dict[int, int] = {}
        self._keys: dict[int, int | None] = {}  # outbox seq -> key
        self._by_key: dict[int, int] = {}  # key -> outbox seq
        for p in self.dir.glob(f"*{_SUFFIX}"):
            try:
                seq, key = _parse_name(p.stem)
                self._sizes[seq] = p.stat().st_size
            except (ValueError, OSError):
                continue
            self._index(seq, key)
        self._total = sum(self._sizes.values())
        self._next = max(self._sizes, default=0) + 1
        self._dropped_path = self.dir / "dropped"
        try:
            self.dropped = int(self._dropped_path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            self.dropped = 0

    def _index(self, seq: int, key: int | None) -> None:
        self._keys[seq] = key
        if key is not None:
            self._by_key[key] = seq

    def _path(self, seq: int) -> Path:
        key = self._keys.get(seq)
        return self.dir / (f"{seq:020d}{_SUFFIX}" if key is None
                           else f"{seq:020d}-{key}{_SUFFIX}")

    def put(self, topic: str, payload: bytes, key: int | None = None) -> int:
        """Store a record durably and return its outbox sequence number."""
        data = topic.encode() + b"\n" + payload
        with self._lock:
            seq = self._next
            self._next += 1
            self._index(seq, key)
            atomic_write_bytes(self._path(seq), data, mode=0o600)
            self._sizes[seq] = len(data)
            self._total += len(data)
            dropped = 0
            while self._total > self.budget_bytes and len(self._sizes) > 1:
                self._delete(min(self._sizes))
                dropped += 1
            if dropped:
                self.dropped += dropped
                atomic_write_bytes(self._dropped_path, str(self.dropped).encode())
            return seq

    def seqs(self) -> list[int]:
        """Outbox seqs of the records held, oldest first."""
        with self._lock:
            return sorted(self._sizes)

    def read(self, seq: int) -> OutboxRecord | None:
        with self._lock:
            if seq not in self._sizes:
                return None
            path, key = self._path(seq), self._keys.get(seq)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        topic, _, payload = raw.partition(b"\n")
        return OutboxRecord(seq, topic.decode(errors="replace"), payload, key)

    def pending(self) -> list[OutboxRecord]:
        """Every record not yet acknowledged or confirmed, oldest first."""
        return [r for r in (self.read(seq) for seq in self.seqs()) if r is not None]

    def ack(self, seq: int) -> None:
        """The broker acknowledged record ``seq`` (one without a key): delete it."""
        with self._lock:
            self._delete(seq)

    def confirm(self, keys: Iterable[int]) -> list[int]:
        """The server stored these keys: delete their records; returns their outbox seqs."""
        done = []
        with self._lock:
            for key in keys:
                seq = self._by_key.get(key)
                if seq is not None:
                    self._delete(seq)
                    done.append(seq)
        return done

    def _delete(self, seq: int) -> None:
        if seq not in self._sizes:
            return
        try:
            os.unlink(self._path(seq))
        except FileNotFoundError:
            pass
        self._total -= self._sizes.pop(seq)
        key = self._keys.pop(seq, None)
        if key is not None and self._by_key.get(key) == seq:
            del self._by_key[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._sizes)

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return self._total
