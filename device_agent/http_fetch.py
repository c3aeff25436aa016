"""The HTTP(S) range path for large bundles: ``GET /api/v1/bundles/{sha256}/download`` one
chunk at a time with ``Range``, authenticated as the device (HTTP basic: device id and its
MQTT secret), each chunk checked by the same ``ChunkAssembler`` as over MQTT, so a restart
resumes from the part file and a bad chunk is refused before it is written.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from ota.chunks import ChunkAssembler

__all__ = ["HttpFetchError", "fetch_missing"]


class HttpFetchError(Exception):
    """The server did not answer a range request with the chunk asked for."""


def fetch_missing(asm: ChunkAssembler, url: str, *, device_id: str, secret: str,
                  on_chunk: Callable[[int], None] = lambda i: None,
                  should_stop: Callable[[], bool] = lambda: False,
                  timeout_s: float = 30.0) -> int:
    """Fetch and write every chunk ``asm`` still lacks; returns how many were fetched.

    Memory: one chunk. ``ChunkError`` for a chunk that fails its signed hash (nothing
    written), ``HttpFetchError`` for any other bad answer or network failure."""
    fetched = 0
    try:
        with httpx.Client(auth=(device_id, secret), timeout=timeout_s) as client:
            for index in asm.missing():
                if should_stop():
                    break
                start = index * asm.chunk_size
                end = start + asm.chunk_length(index) - 1
                data = _get_range(client, url, start, end)
                asm.accept(index, data)
                fetched += 1
                on_chunk(index)
    except httpx.HTTPError as e:
        raise HttpFetchError(f"range download from {url} failed: {e}") from e
    return fetched


def _get_range(client: httpx.Client, url: str, start: int, end: int) -> bytes:
    want = end - start + 1
    with client.stream("GET", url, headers={"Range": f"bytes={start}-{end}"}) as r:
        if r.status_code != 206:
            raise HttpFetchError(f"range {start}-{end} of {url}: HTTP {r.status_code}")
        data = bytearray()
        for block in r.iter_bytes():
            data += block
            if len(data) > want:  # endless data: cut at the declared length
                raise HttpFetchError(f"range {start}-{end} of {url}: more than {want} bytes")
    return bytes(data)
