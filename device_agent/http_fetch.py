"""The HTTP(S) range path for large bundles: ``GET /api/v1/bundles/{sha256}/download`` one
chunk at a time with ``Range``, authenticated as the device (HTTP basic: device id and its
MQTT secret), each chunk checked by the same ``ChunkAssembler`` as over MQTT, so a restart
resumes from the part file and a bad chunk is refused before it is written.

A server with public bundle URLs redirects (307) to the bundle's content-addressed URL,
possibly on a CDN: the redirect is followed without the device's credentials (the URL is
the capability) and later chunks go straight there. A cache may answer a range with the
whole file (200): the chunk is then cut out of it, reading no further than its end.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

import httpx

from device_agent.server_tls import untrusted_server
from ota.chunks import ChunkAssembler

__all__ = ["HttpFetchError", "fetch_missing"]


class HttpFetchError(Exception):
    """The server did not answer a range request with the chunk asked for."""


def fetch_missing(asm: ChunkAssembler, url: str, *, device_id: str, secret: str,
                  on_chunk: Callable[[int], None] = lambda i: None,
                  should_stop: Callable[[], bool] = lambda: False,
                  timeout_s: float = 30.0, verify: ssl.SSLContext | bool = True) -> int:
    """Fetch and write every chunk ``asm`` still lacks; returns how many were fetched.

    Memory: one chunk. ``ChunkError`` for a chunk that fails its signed hash (nothing
    written), ``HttpFetchError`` for any other bad answer or network failure. ``verify``:
    the pinned fleet CA's context for an https server (``server_tls.http_verify``)."""
    fetched = 0
    try:
        with httpx.Client(timeout=timeout_s, verify=verify) as client:
            auth: tuple[str, str] | None = (device_id, secret)
            for index in asm.missing():
                if should_stop():
                    break
                start = index * asm.chunk_size
                end = start + asm.chunk_length(index) - 1
                data, moved = _get_range(client, url, start, end, auth)
                if moved is not None:  # the content-addressed URL: no credentials there
                    url, auth = moved, None
                asm.accept(index, data)
                fetched += 1
                on_chunk(index)
    except httpx.HTTPError as e:
        raise HttpFetchError(
            f"range download from {url} failed: {untrusted_server(e) or e}") from e
    return fetched


def _get_range(client: httpx.Client, url: str, start: int, end: int,
               auth: tuple[str, str] | None) -> tuple[bytes, str | None]:
    """The bytes ``start..end``, and the URL the server redirected to (None if it did not).
    Only the server (asked with credentials) may redirect, once."""
    want = end - start + 1
    with client.stream("GET", url, headers={"Range": f"bytes={start}-{end}"}, auth=auth) as r:
        if r.is_redirect and auth is not None and "location" in r.headers:
            moved = str(r.url.join(r.headers["location"]))
        elif r.status_code == 200:  # a cache that ignores Range: skip to the chunk
            return _slice_of_whole(r, start, want), None
        elif r.status_code != 206:
            raise HttpFetchError(f"range {start}-{end} of {url}: HTTP {r.status_code}")
        else:
            data = bytearray()
            for block in r.iter_bytes():
                data += block
                if len(data) > want:  # endless data: cut at the declared length
                    raise HttpFetchError(
                        f"range {start}-{end} of {url}: more than {want} bytes")
            return bytes(data), None
    return _get_range(client, moved, start, end, None)[0], moved


def _slice_of_whole(r: httpx.Response, start: int, want: int) -> bytes:
    data, seen = bytearray(), 0
    for block in r.iter_bytes():
        lo, hi = max(start - seen, 0), min(start + want - seen, len(block))
        if lo < hi:
            data += block[lo:hi]
        seen += len(block)
        if len(data) == want:
            return bytes(data)
    raise HttpFetchError(f"{r.url}: whole-file answer ended at byte {seen}, before the chunk")
