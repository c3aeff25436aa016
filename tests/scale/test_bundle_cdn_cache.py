"""Bundle bytes through a real caching proxy (nginx): the second device's download is served
from the cache, the fleet server is not asked again, and the device verifies and installs
the bytes the cache gave it."""

from __future__ import annotations

from pathlib import Path

import httpx

from device_agent.http_fetch import fetch_missing
from model_bundles.verify import extract_verified
from ota.chunks import ChunkAssembler

from .conftest import Device, Fleet
from .nginx_cache import NginxCache


def download(device: Device, base: str, part: Path) -> ChunkAssembler:
    ref = device.ref
    asm = ChunkAssembler(part, sha256=ref.sha256, size=ref.size, chunk_size=ref.chunk_size,
                         chunk_hashes=ref.chunk_hashes)
    # the agent's URL: the authenticated route, which redirects to the content-addressed one
    url = f"{base}/api/v1/bundles/{ref.sha256}/download"
    fetch_missing(asm, url, device_id=device.device_id, secret=device.secret)
    assert asm.complete
    return asm


def test_second_device_gets_the_bundle_from_the_cache_and_installs_it(
        tmp_path: Path, fleet: Fleet, nginx: NginxCache) -> None:
    first, second = fleet.devices
    assert first.ref.sha256 == second.ref.sha256
    sha = first.ref.sha256
    blob_uri = f"/api/v1/bundles/by-hash/{sha}.efb"

    download(first, nginx.url, tmp_path / "first.part")
    served_by_origin = fleet.by_hash_answers()
    assert served_by_origin >= 1, nginx.access_log()
    before = len(nginx.access_log())

    asm = download(second, nginx.url, tmp_path / "second.part")
    assert fleet.by_hash_answers() == served_by_origin  # the origin was not asked again
    second_rows = nginx.access_log()[before:]
    blob_rows = [(status, cache) for uri, status, cache in second_rows if uri == blob_uri]
    assert len(blob_rows) == len(second.ref.chunk_hashes) > 1, second_rows
    assert set(blob_rows) == {(206, "HIT")}, second_rows
    probe = httpx.get(nginx.url + blob_uri, headers={"Range": "bytes=0-15"})
    assert probe.status_code == 206 and probe.headers["x-cache-status"] == "HIT"
    assert probe.headers["etag"] == f'"{sha}"'
    assert "immutable" in probe.headers["cache-control"]

    bundle = asm.finalize(tmp_path / "second.efb")
    installed = tmp_path / "slot-a"
    verified = extract_verified(bundle, installed, [fleet.publisher.public_key()])
    assert verified.manifest.name == "sample" and verified.manifest.version == "1.0.0"
    assert sorted(p.name for p in installed.iterdir()) == sorted(
        Path(f.path).parts[0] for f in verified.manifest.files)
