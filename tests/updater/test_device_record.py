"""The device record (``DIR/state/device.json``) is a declared model: a good record round-
trips, and a damaged or hostile one is refused with an error naming the field, so the
agent's state store starts afresh instead of acting on it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ota.errors import ProtocolError
from ota.install import InstallState, Journal
from ota.updater.record import DeviceRecord, ShadowRecord

REF = {"name": "m", "version": "1.0.0", "sha256": "a" * 64, "size": 10, "chunk_size": 10,
       "chunk_hashes": ["b" * 64], "publisher_key_id": "c" * 64,
       "publisher_public_key": "-----BEGIN PUBLIC KEY-----\nx\n-----END PUBLIC KEY-----\n"}


def _good() -> dict[str, Any]:
    j = Journal().with_state(InstallState.OFFERED, instruction_seq=4, sha256="a" * 64) \
        .with_state(InstallState.DOWNLOADING)
    return {"format_version": 1, "journal": j.to_dict(), "applied_seq": 4, "bundle": dict(REF),
            "shadow": {"ref": dict(REF), "rate": 0.5, "failed": None, "pace": 30.0},
            "delegate_override": {"delegate": "cpu", "junk": 1}}


def test_a_record_round_trips_through_its_bytes() -> None:
    record = DeviceRecord.from_bytes(json.dumps(_good()).encode())
    assert record.applied_seq == 4 and record.journal.state is InstallState.DOWNLOADING
    assert record.shadow == ShadowRecord(record.bundle, 0.5, None, 30.0)  # type: ignore[arg-type]
    assert record.delegate_override == {"delegate": "cpu"}  # only the known string keys
    assert DeviceRecord.from_bytes(record.to_bytes()) == record


@pytest.mark.parametrize(("path", "value", "error"), [
    (("applied_seq",), True, "device record: 'applied_seq' must be an integer, got bool"),
    (("applied_seq",), -1, "device record: applied_seq must be >= 0, got -1"),
    (("applied_seq",), "4", "device record: 'applied_seq' must be an integer, got str"),
    (("journal",), [], "device record: 'journal' must be an object, got list"),
    (("journal", "instruction_seq"), "4",
     "device record: journal 'instruction_seq' must be an integer, got str"),
    (("journal", "format_version"), 9, "device record: journal unsupported format_version 9"),
    (("shadow", "rate"), 1.5, "device record: shadow.rate must be <= 1.0, got 1.5"),
    (("shadow", "pace"), 0, "device record: shadow.pace must be > 0.0, got 0"),
    (("shadow", "failed"), 3, "device record.shadow: 'failed' must be a string, got int"),
    (("shadow", "ref", "sha256"), "nothex",
     "device record: shadow.ref.sha256 must be 64 lower-case hex characters"),
    (("bundle", "size"), False, "device record.bundle: 'size' must be an integer, got bool"),
    (("format_version",), 2, "device record: unsupported format_version 2"),
])
def test_a_damaged_record_is_refused_naming_the_field(
        path: tuple[str, ...], value: Any, error: str) -> None:
    obj = _good()
    target = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ProtocolError) as e:
        DeviceRecord.from_bytes(json.dumps(obj).encode())
    assert str(e.value).startswith(error), str(e.value)


@pytest.mark.parametrize(("data", "error"), [
    (b"[1]", "device record: unsupported format_version None"),
    (b'{"format_version": 1, "applied_seq": 0}', "device record: missing 'journal'"),
    (b"{not json", "device record: payload is not valid JSON"),
    (b" " * (256 * 1024 + 1), "device record: payload of 262145 bytes exceeds limit"),
])
def test_a_record_that_is_not_one_is_refused(data: bytes, error: str) -> None:
    with pytest.raises(ProtocolError, match="^" + error):
        DeviceRecord.from_bytes(data)
