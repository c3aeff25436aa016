"""``fetch_missing`` against a plain range server that never refuses (a CDN stand-in): a stop
signalled while a chunk is in flight ends the download after that chunk, with exactly the
chunks written so far recorded in the part file, and a later fetch asks only for the rest.
This is what lets the agent drop an HTTP download for a cancel or a superseding instruction
when nothing on the server side cuts it off."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from device_agent.http_fetch import fetch_missing
from ota.chunks import ChunkAssembler, file_chunk_hashes, file_sha256

CHUNK = 4096


class RangeServer:
    """Serves one file with ``Range``; records every range asked for."""

    def __init__(self, path: Path) -> None:
        self.data = path.read_bytes()
        self.asked: list[int] = []
        self.on_request = lambda: None
        rig = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                m = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
                assert m is not None
                start, end = int(m[1]), int(m[2])
                rig.asked.append(start // CHUNK)
                rig.on_request()
                body = rig.data[start:end + 1]
                self.send_response(206)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/bundle"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    path = tmp_path / "bundle.efb"
    path.write_bytes(os.urandom(CHUNK * 10 + 123))
    return path


@pytest.fixture
def server(bundle: Path) -> Iterator[RangeServer]:
    s = RangeServer(bundle)
    yield s
    s.close()


def assembler(bundle: Path, part: Path) -> ChunkAssembler:
    return ChunkAssembler(part, sha256=file_sha256(bundle), size=bundle.stat().st_size,
                          chunk_size=CHUNK, chunk_hashes=file_chunk_hashes(bundle, CHUNK))


def test_stop_signalled_during_a_chunk_ends_the_download_after_that_chunk(
        tmp_path: Path, bundle: Path, server: RangeServer) -> None:
    cancel = threading.Event()
    server.on_request = lambda: cancel.set() if len(server.asked) == 4 else None
    asm = assembler(bundle, tmp_path / "dl" / "b.part")

    fetched = fetch_missing(asm, server.url, device_id="d", secret="s",
                            should_stop=cancel.is_set)

    assert fetched == 4  # the chunk in flight when the stop came was still written
    assert server.asked == [0, 1, 2, 3]  # and nothing was asked for after it
    assert [asm.has(i) for i in range(11)] == [True] * 4 + [False] * 7
    assert not asm.complete

    again = assembler(bundle, tmp_path / "dl" / "b.part")  # e.g. after a restart
    assert fetch_missing(again, server.url, device_id="d", secret="s") == 7
    assert server.asked[4:] == list(range(4, 11))
    out = again.finalize(tmp_path / "b.efb")
    assert out.read_bytes() == bundle.read_bytes()


def test_stop_before_the_first_chunk_fetches_nothing(
        tmp_path: Path, bundle: Path, server: RangeServer) -> None:
    asm = assembler(bundle, tmp_path / "dl" / "b.part")
    assert fetch_missing(asm, server.url, device_id="d", secret="s",
                         should_stop=lambda: True) == 0
    assert server.asked == []
    assert asm.missing() == list(range(11))
