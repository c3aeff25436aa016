"""Two real device agents behind a real nginx cache, against a real ``fleet-server serve
--public-bundle-urls``: each fetches its bundle over HTTP from its authenticated route, is
redirected to the content-addressed URL, and the second agent's bytes come from the cache
(the server is not asked again); both verify, install and serve the bundle."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from model_bundles.samples import write_sample_model
from tests.e2e.harness import Fleet, Process, read_json, run_cli, wait_for

from .nginx_cache import NginxCache, nginx_binary

pytestmark = pytest.mark.e2e


def by_hash_answers(fleet: Fleet) -> float:
    text = httpx.get(f"{fleet.url}/metrics",
                     headers={"Authorization": f"Bearer {fleet.token}"}).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("edgefleet_bundle_http_responses_total{")
               and 'route="by_hash"' in line)


def agent_behind(fleet: Fleet, proxy: NginxCache, device_id: str) -> Process:
    """Enrol through the proxy (so the agent's server URL is the proxy) and fetch every
    bundle over HTTP."""
    token = json.loads(fleet.cli("fleet-server", "enrol-token", "--json").stdout)["token"]
    agent_dir = fleet.root / f"agent-{device_id}"
    run_cli("device-agent", "install", "--server", proxy.url, "--token", token,
            "--device-id", device_id, "--dir", str(agent_dir))
    config = json.loads((agent_dir / "config.json").read_text())
    assert config["server_url"] == proxy.url
    config["http_download_min_bytes"] = 1
    (agent_dir / "config.json").write_text(json.dumps(config))
    agent = Process(["device-agent", "run", "--dir", str(agent_dir), "--api-port", "0",
                     "--telemetry-interval", "1"], fleet.root / f"agent-{device_id}.log")
    fleet.agents.append(agent)
    wait_for(lambda: read_json(agent_dir / "state" / "api.json"), 60, "agent api.json",
             fleet.procs())
    return agent


def test_second_real_agent_installs_the_bundle_from_the_cache(tmp_path: Path) -> None:
    binary = nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx-light)")
    fleet = Fleet(tmp_path, serve_args=("--public-bundle-urls",))
    proxy = NginxCache(binary, tmp_path / "nginx", fleet.url)
    try:
        bundle, pub = fleet.build_bundle(write_sample_model(tmp_path / "m.onnx"), "cam", "1.0.0")
        fleet.cli("fleet-server", "publishers", "add", str(pub))
        fleet.cli("model-bundle", "publish", str(bundle))
        agent_behind(fleet, proxy, "edge-1")
        agent_behind(fleet, proxy, "edge-2")

        fleet.cli("fleet-server", "deploy", "cam@1.0.0", "--device", "edge-1")
        fleet.wait_active("edge-1", "cam@1.0.0")
        served = by_hash_answers(fleet)
        assert served >= 1
        seen = len(proxy.access_log())

        fleet.cli("fleet-server", "deploy", "cam@1.0.0", "--device", "edge-2")
        fleet.wait_active("edge-2", "cam@1.0.0")
        assert by_hash_answers(fleet) == served  # the server was not asked for the bytes
        rows = proxy.access_log()[seen:]
        blob = [(status, cache) for uri, status, cache in rows if "/by-hash/" in uri]
        assert blob and set(blob) == {(206, "HIT")}, rows
        assert any(uri.endswith("/download") and status == 307 for uri, status, _ in rows)
        assert fleet.device("edge-2")["state"]["install"]["state"] == "committed"
    finally:
        proxy.stop()
        fleet.stop()
