"""Chunk frames and the resumable ChunkAssembler, against real files on disk."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest

from ota.chunks import (
    MAGIC,
    ChunkAssembler,
    decode_chunk_frame,
    encode_chunk_frame,
    file_chunk_hashes,
    read_chunk,
    request_ranges,
)
from ota.errors import ChunkError

CHUNK = 1000
SIZE = 4500  # five chunks, the last one 500 bytes


@pytest.fixture()
def bundle(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "bundle.efb"
    path.parent.mkdir()
    path.write_bytes(random.Random(7).randbytes(SIZE))
    return path


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def new_assembler(bundle: Path, part: Path, *, whole_sha: str | None = None) -> ChunkAssembler:
    return ChunkAssembler(
        part,
        sha256=whole_sha or sha(bundle.read_bytes()),
        size=SIZE,
        chunk_size=CHUNK,
        chunk_hashes=file_chunk_hashes(bundle, CHUNK),
    )


# ---- reading and frames -----------------------------------------------------------------------


def test_chunk_hashes_and_reads_cover_the_file(bundle: Path) -> None:
    data = bundle.read_bytes()
    hashes = file_chunk_hashes(bundle, CHUNK)
    assert len(hashes) == 5
    chunks = [read_chunk(bundle, i, CHUNK) for i in range(5)]
    assert b"".join(chunks) == data
    assert [sha(c) for c in chunks] == hashes
    assert len(chunks[-1]) == 500
    with pytest.raises(ChunkError):
        read_chunk(bundle, 5, CHUNK)


def test_chunk_frame_round_trips(bundle: Path) -> None:
    data = read_chunk(bundle, 3, CHUNK)
    frame = encode_chunk_frame("a" * 64, 3, 5, data)
    assert frame.startswith(MAGIC)
    header, got = decode_chunk_frame(frame, CHUNK)
    assert (header.sha256, header.index, header.total) == ("a" * 64, 3, 5)
    assert got == data


def _frame(header: bytes, data: bytes = b"x") -> bytes:
    return MAGIC + len(header).to_bytes(2, "big") + header + data


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"EFC",
        b"EFC2" + b"\x00\x02{}x",
        _frame(b'{"sha256": "' + b"a" * 64 + b'", "index": 0, "total": 1}')[:-20],  # cut header
        _frame(b"not json"),
        _frame(b"[]"),
        _frame(b'{"sha256": "' + b"a" * 64 + b'", "index": 5, "total": 5}'),
        _frame(b'{"sha256": "' + b"a" * 64 + b'", "index": "0", "total": 5}'),
        _frame(b'{"sha256": "nothex", "index": 0, "total": 5}'),
        _frame(b'{"sha256": "' + b"a" * 64 + b'", "index": 0, "total": 5}', b""),  # no data
        MAGIC + b"\xff\xff" + b"{}" * 10,  # header length beyond the cap
        b"\x00" * 64,
    ],
)
def test_truncated_or_garbage_frames_raise_chunk_error(frame: bytes) -> None:
    with pytest.raises(ChunkError):
        decode_chunk_frame(frame, CHUNK)


def test_frame_with_chunk_over_the_limit_is_refused() -> None:
    frame = encode_chunk_frame("a" * 64, 0, 1, b"x" * (CHUNK + 1))
    with pytest.raises(ChunkError, match="exceeds limit"):
        decode_chunk_frame(frame, CHUNK)


def test_request_ranges_groups_contiguous_indexes() -> None:
    assert request_ranges([0, 1, 2, 5, 7, 8]) == [(0, 3), (5, 1), (7, 2)]
    assert request_ranges([]) == []


# ---- assembler --------------------------------------------------------------------------------


def test_in_order_chunks_complete_and_finalize_to_the_original(
    bundle: Path, tmp_path: Path
) -> None:
    part = tmp_path / "dl" / "x.part"
    asm = new_assembler(bundle, part)
    assert asm.missing() == [0, 1, 2, 3, 4] and asm.progress == 0.0
    for i in range(5):
        assert asm.accept(i, read_chunk(bundle, i, CHUNK)) is True
    assert asm.complete and asm.progress == 1.0 and asm.missing() == []
    dest = asm.finalize(tmp_path / "out" / "bundle.efb")
    assert dest.read_bytes() == bundle.read_bytes()
    assert not part.exists() and not asm.have_path.exists()


def test_out_of_order_chunks_complete(bundle: Path, tmp_path: Path) -> None:
    asm = new_assembler(bundle, tmp_path / "x.part")
    for i in [4, 1, 3, 0]:
        asm.accept(i, read_chunk(bundle, i, CHUNK))
    assert not asm.complete and asm.missing() == [2] and asm.progress == pytest.approx(0.8)
    asm.accept(2, read_chunk(bundle, 2, CHUNK))
    assert asm.complete
    assert asm.finalize(tmp_path / "b.efb").read_bytes() == bundle.read_bytes()


def test_duplicate_chunk_is_reported_and_changes_nothing(bundle: Path, tmp_path: Path) -> None:
    asm = new_assembler(bundle, tmp_path / "x.part")
    chunk = read_chunk(bundle, 1, CHUNK)
    assert asm.accept(1, chunk) is True
    before = (asm.part_path.read_bytes(), asm.have_path.read_bytes())
    assert asm.accept(1, chunk) is False
    assert (asm.part_path.read_bytes(), asm.have_path.read_bytes()) == before
    assert asm.missing() == [0, 2, 3, 4]


def test_chunk_with_wrong_hash_is_rejected_without_being_written(
    bundle: Path, tmp_path: Path
) -> None:
    asm = new_assembler(bundle, tmp_path / "x.part")
    asm.accept(0, read_chunk(bundle, 0, CHUNK))
    before = (asm.part_path.read_bytes(), asm.have_path.read_bytes())
    evil = bytes(b ^ 0xFF for b in read_chunk(bundle, 2, CHUNK))
    with pytest.raises(ChunkError, match="does not match its signed hash"):
        asm.accept(2, evil)
    assert (asm.part_path.read_bytes(), asm.have_path.read_bytes()) == before
    assert asm.missing() == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("index", "length"),
    [(0, CHUNK + 1), (4, 501), (4, CHUNK), (0, CHUNK - 1)],
)
def test_chunk_of_the_wrong_length_is_refused_never_written(
    bundle: Path, tmp_path: Path, index: int, length: int
) -> None:
    asm = new_assembler(bundle, tmp_path / "x.part")
    before = asm.part_path.read_bytes()
    real = read_chunk(bundle, index, CHUNK)
    data = (real + b"\x00" * CHUNK)[:length]
    with pytest.raises(ChunkError, match="expected"):
        asm.accept(index, data)
    assert asm.part_path.read_bytes() == before
    assert asm.part_path.stat().st_size == SIZE
    assert asm.missing() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("index", [-1, 5, 1000])
def test_chunk_index_out_of_range_is_refused(bundle: Path, tmp_path: Path, index: int) -> None:
    asm = new_assembler(bundle, tmp_path / "x.part")
    with pytest.raises(ChunkError, match="out of range"):
        asm.accept(index, b"x" * CHUNK)
    assert asm.missing() == [0, 1, 2, 3, 4]


def test_restart_resumes_and_refetches_only_the_missing_chunks(
    bundle: Path, tmp_path: Path
) -> None:
    part = tmp_path / "x.part"
    first = new_assembler(bundle, part)
    for i in [0, 1, 3]:
        first.accept(i, read_chunk(bundle, i, CHUNK))
    del first  # simulated crash: only what is on disk survives

    second = new_assembler(bundle, part)
    assert second.missing() == [2, 4]
    assert second.next_request(8) == [2, 4]
    assert second.next_request(1) == [2]
    fetched = []
    while not second.complete:
        for i in second.next_request(8):
            fetched.append(i)
            second.accept(i, read_chunk(bundle, i, CHUNK))
    assert fetched == [2, 4]
    assert second.finalize(tmp_path / "b.efb").read_bytes() == bundle.read_bytes()


def test_leftover_part_of_another_bundle_is_discarded_on_start(
    bundle: Path, tmp_path: Path
) -> None:
    part = tmp_path / "x.part"
    first = new_assembler(bundle, part, whole_sha="9" * 64)
    first.accept(0, read_chunk(bundle, 0, CHUNK))
    second = new_assembler(bundle, part)  # different sha256: not the same download
    assert second.missing() == [0, 1, 2, 3, 4]
    assert json.loads(second.have_path.read_bytes())["sha256"] == sha(bundle.read_bytes())


def test_corrupt_bitmap_starts_the_download_over(bundle: Path, tmp_path: Path) -> None:
    part = tmp_path / "x.part"
    first = new_assembler(bundle, part)
    first.accept(0, read_chunk(bundle, 0, CHUNK))
    first.have_path.write_bytes(b"{torn")
    second = new_assembler(bundle, part)
    assert second.missing() == [0, 1, 2, 3, 4]
    assert part.stat().st_size == SIZE


def test_finalize_detects_a_wrong_whole_file_hash_and_deletes_the_part(
    bundle: Path, tmp_path: Path
) -> None:
    asm = new_assembler(bundle, tmp_path / "x.part", whole_sha="0" * 64)
    for i in range(5):
        asm.accept(i, read_chunk(bundle, i, CHUNK))
    dest = tmp_path / "b.efb"
    with pytest.raises(ChunkError, match="expected 4500"):
        asm.finalize(dest)
    assert not dest.exists()
    assert not asm.part_path.exists() and not asm.have_path.exists()


def test_finalize_before_complete_is_a_bug(bundle: Path, tmp_path: Path) -> None:
    asm = new_assembler(bundle, tmp_path / "x.part")
    with pytest.raises(RuntimeError):
        asm.finalize(tmp_path / "b.efb")
    assert asm.part_path.exists()


def test_discard_removes_part_and_bitmap(bundle: Path, tmp_path: Path) -> None:
    asm = new_assembler(bundle, tmp_path / "x.part")
    asm.accept(0, read_chunk(bundle, 0, CHUNK))
    asm.discard()
    asm.discard()
    assert not asm.part_path.exists() and not asm.have_path.exists()
    assert list(tmp_path.glob("x.part*")) == []
