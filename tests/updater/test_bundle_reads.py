"""An install reads the bundle twice after its chunks arrived (ADR 0001): the finalize hash
and the one verify-and-extract pass. Counted by wrapping every file the install opens for
reading and adding up the bytes read from the bundle."""

from __future__ import annotations

import builtins
import os
from pathlib import Path
from typing import Any

import pytest

from ota.install import InstallState
from tests.faults.crash_helpers import wide_model

from .conftest import Rig


class _Counting:
    def __init__(self, inner: Any, counter: list[int]) -> None:
        self._inner, self._counter = inner, counter

    def read(self, *args: Any) -> bytes:
        data = self._inner.read(*args)
        self._counter[0] += len(data)
        return data

    def readinto(self, buf: Any) -> int:
        n = self._inner.readinto(buf)
        self._counter[0] += n or 0
        return n

    def __enter__(self) -> _Counting:
        return self

    def __exit__(self, *exc: object) -> None:
        self._inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_an_install_reads_the_bundle_twice_after_it_arrived(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    path, ref = rig.build("2.0.0", model=wide_model(rig.tmp / "wide.onnx"))  # ~1.5 MB
    downloads = rig.agent_dir / "downloads"
    read = [0]
    real_open, real_fdopen = builtins.open, os.fdopen

    def is_bundle(name: str) -> bool:
        p = Path(name)
        return p.parent == downloads and p.suffix in (".efb", ".part")

    def counting_open(file: Any, mode: str = "r", *args: Any, **kw: Any) -> Any:
        f = real_open(file, mode, *args, **kw)
        if "r" in mode and isinstance(file, str | Path) and is_bundle(os.fspath(file)):
            return _Counting(f, read)
        return f

    def counting_fdopen(fd: int, mode: str = "r", *args: Any, **kw: Any) -> Any:
        f = real_fdopen(fd, mode, *args, **kw)
        if "r" in mode and is_bundle(os.readlink(f"/proc/self/fd/{fd}")):
            return _Counting(f, read)
        return f

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(os, "fdopen", counting_fdopen)
    rig.agent._handle_desired(rig.instruction(ref))
    rig.deliver(path, ref)
    monkeypatch.undo()

    assert rig.agent.journal.state is InstallState.COMMITTED, rig.agent.journal
    passes = read[0] / ref.size
    print(f"bundle of {ref.size} bytes, {read[0]} bytes read: {passes:.2f} passes")
    # two full passes, plus the tar headers, manifest and signature (twice, a few KiB)
    assert 2.0 <= passes < 2.05, passes
