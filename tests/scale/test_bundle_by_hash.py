"""``GET /api/v1/bundles/by-hash/{sha256}.efb``: immutable, cacheable, ranged bundle bytes,
public only when the server is set so; the authenticated download route redirects devices
there; bad names, bad ranges and wrong credentials are refused and change nothing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest

from fleet_server.config import ServerSettings, SettingsError
from tests.fleet_server.bundle_helpers import make_bundle

from .conftest import Fleet


def blob_url(fleet: Fleet, sha: str | None = None) -> str:
    sha = sha or fleet.devices[0].ref.sha256
    return f"{fleet.server.http_url}/api/v1/bundles/by-hash/{sha}.efb"


def stored(fleet: Fleet) -> bytes:
    sha = fleet.devices[0].ref.sha256
    return fleet.server.services.data_dir.bundle_path(sha).read_bytes()


def test_public_url_serves_the_whole_bundle_with_a_strong_etag_and_immutable_caching(
        fleet: Fleet) -> None:
    r = httpx.get(blob_url(fleet))
    sha = fleet.devices[0].ref.sha256
    assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == sha
    assert r.headers["etag"] == f'"{sha}"'
    assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert r.headers["accept-ranges"] == "bytes"
    head = httpx.head(blob_url(fleet))
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len(r.content)


def test_ranges_single_multiple_and_out_of_bounds(fleet: Fleet) -> None:
    data = stored(fleet)
    one = httpx.get(blob_url(fleet), headers={"Range": "bytes=10-19"})
    assert one.status_code == 206 and one.content == data[10:20]
    assert one.headers["content-range"] == f"bytes 10-19/{len(data)}"
    many = httpx.get(blob_url(fleet), headers={"Range": "bytes=0-3,100-103"})
    assert many.status_code == 206
    assert many.headers["content-type"].startswith("multipart/byteranges")
    assert data[0:4] in many.content and data[100:104] in many.content
    beyond = httpx.get(blob_url(fleet), headers={"Range": f"bytes={len(data)}-{len(data) + 9}"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{len(data)}"


def test_if_none_match_gives_304_and_if_range_honours_the_etag(fleet: Fleet) -> None:
    sha = fleet.devices[0].ref.sha256
    data = stored(fleet)
    same = httpx.get(blob_url(fleet), headers={"If-None-Match": f'W/"x", "{sha}"'})
    assert same.status_code == 304 and same.content == b""
    assert same.headers["etag"] == f'"{sha}"'
    other = httpx.get(blob_url(fleet), headers={"If-None-Match": '"0000"'})
    assert other.status_code == 200 and other.content == data
    ranged = httpx.get(blob_url(fleet), headers={"Range": "bytes=0-9", "If-Range": f'"{sha}"'})
    assert ranged.status_code == 206 and ranged.content == data[:10]
    stale = httpx.get(blob_url(fleet), headers={"Range": "bytes=0-9", "If-Range": '"0000"'})
    assert stale.status_code == 200 and stale.content == data


@pytest.mark.parametrize("name", ["0" * 64, "ABC", "../../etc/passwd", "A" * 64])
def test_unknown_or_malformed_hash_is_a_404_and_counts_nothing(fleet: Fleet,
                                                               name: str) -> None:
    before = fleet.by_hash_answers()
    r = httpx.get(blob_url(fleet, name))
    assert r.status_code == 404
    assert fleet.by_hash_answers() == before


def test_device_on_the_authenticated_route_is_redirected_to_the_public_url(
        fleet: Fleet) -> None:
    dev = fleet.devices[0]
    url = f"{fleet.server.http_url}/api/v1/bundles/{dev.ref.sha256}/download"
    r = httpx.get(url, auth=(dev.device_id, dev.secret))
    assert r.status_code == 307
    assert r.headers["location"] == f"/api/v1/bundles/by-hash/{dev.ref.sha256}.efb"
    assert httpx.get(url, auth=(dev.device_id, "wrong")).status_code == 401


@pytest.mark.parametrize("fleet", [{"public_bundle_urls": True,
                                    "bundle_base_url": "https://cdn.example.com/edge/"}],
                         indirect=True)
def test_redirect_goes_to_the_configured_cdn_origin(fleet: Fleet) -> None:
    dev = fleet.devices[0]
    r = httpx.get(f"{fleet.server.http_url}/api/v1/bundles/{dev.ref.sha256}/download",
                  auth=(dev.device_id, dev.secret))
    assert r.status_code == 307
    assert r.headers["location"] == (
        f"https://cdn.example.com/edge/api/v1/bundles/by-hash/{dev.ref.sha256}.efb")


@pytest.mark.parametrize("fleet", [{"public_bundle_urls": False}], indirect=True)
def test_without_public_urls_the_bytes_need_credentials_and_are_private(fleet: Fleet) -> None:
    dev = fleet.devices[0]
    assert httpx.get(blob_url(fleet)).status_code == 401
    assert httpx.get(blob_url(fleet), auth=(dev.device_id, "wrong")).status_code == 401
    r = httpx.get(blob_url(fleet), auth=(dev.device_id, dev.secret),
                  headers={"Range": "bytes=0-9"})
    assert r.status_code == 206 and r.content == stored(fleet)[:10]
    assert r.headers["cache-control"] == "private, max-age=31536000, immutable"
    admin = httpx.get(blob_url(fleet),
                      headers={"Authorization": f"Bearer {fleet.server.admin_token}"})
    assert admin.status_code == 200
    download = httpx.get(f"{fleet.server.http_url}/api/v1/bundles/{dev.ref.sha256}/download",
                         auth=(dev.device_id, dev.secret), headers={"Range": "bytes=0-9"})
    assert download.status_code == 206  # bytes, not a redirect


@pytest.mark.parametrize("base", ["cdn.example.com", "ftp://cdn.example.com", "https://"])
def test_bundle_base_url_must_be_an_http_origin(tmp_path: object, base: str) -> None:
    with pytest.raises(SettingsError, match="bundle_base_url"):
        ServerSettings(data_dir=tmp_path, bundle_base_url=base)  # type: ignore[arg-type]


@pytest.mark.parametrize("fleet", [{"public_bundle_urls": False}], indirect=True)
def test_without_public_urls_a_device_cannot_fetch_a_bundle_not_in_its_instruction(
        fleet: Fleet, tmp_path: Path, sample_onnx: Path) -> None:
    other = fleet.client.upload_bundle(make_bundle(tmp_path / "other.efb", sample_onnx,
                                                   fleet.publisher, version="2.0.0"))
    dev = fleet.devices[0]
    before = fleet.by_hash_answers()
    r = httpx.get(blob_url(fleet, other["id"]), auth=(dev.device_id, dev.secret))
    assert r.status_code == 404 and "for this device" in r.text
    assert fleet.by_hash_answers() == before
