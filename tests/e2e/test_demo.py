"""The README's first command, `./scripts/demo.sh`, as written: the main job on embedded
defaults, then Ctrl-C. The script installs edgefleet into its environment (EDGEFLEET_VENV)
and runs that install, so the script itself is what runs, not only `fleet-server demo`: a
venv of the test's own, layered on the packages the tests run with, so that the script's
`pip install -e .` never reinstalls edgefleet under the tests running beside it (xdist).
TLS is on: the console and API are https, verified against the fleet CA it prints, and
the printed curl line works as printed."""

from __future__ import annotations

import json
import re
import shlex
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from .harness import Process, wait_for

pytestmark = pytest.mark.e2e

DEMO_SH = Path(__file__).resolve().parents[2] / "scripts" / "demo.sh"


def _venv_over_the_test_packages(where: Path) -> Path:
    """A venv without pip whose site-packages reads the test environment's (a .pth line):
    pip, the dependencies and the interpreter are the tests' own; what the script installs
    lands in this venv (pip does not uninstall outside the environment it runs in)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True,
                   timeout=60)
    site_dir = next(where.glob("lib/python3*/site-packages"))
    (site_dir / "_edgefleet_test_packages.pth").write_text(
        "\n".join(p for p in sys.path if p.endswith("site-packages")) + "\n")
    return where


def test_demo_serves_the_sample_bundle_and_prints_how_to_use_it(tmp_path: Path) -> None:
    venv = _venv_over_the_test_packages(tmp_path / "venv")
    demo = Process([str(DEMO_SH), "--data", str(tmp_path / "demo"), "--port", "0",
                    "--api-port", "0"], tmp_path / "demo.log",
                   env={"EDGEFLEET_VENV": str(venv), "PYTHON": sys.executable})
    try:
        out = wait_for(lambda: "Ctrl-C stops" in (o := demo.output()) and o, 120,
                       "the demo to be ready", (demo,))
        # the script installed edgefleet into its environment and runs that install's command
        assert (venv / "bin" / "fleet-server").exists(), out
        console = re.search(r"console:\s+(\S+)", out).group(1)
        token = re.search(r"admin token: (\S+)", out).group(1)
        ca = re.search(r"fleet CA:\s+(\S+)", out).group(1)
        assert console.startswith("https://"), out
        assert "TLS on every link" in out and "INSECURE" not in out
        tls = ssl.create_default_context(cafile=ca)
        predict = re.search(r"curl -s -X POST (\S+) .* -d '(.+)'", out)
        assert predict, out

        # The printed predict call works and names the deployed bundle.
        resp = httpx.post(predict.group(1), json=json.loads(predict.group(2)), timeout=10)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["bundle"] == "sample@1.0.0"
        assert len(body["outputs"]["scores"][0]) == 4

        # The console URL asks for a login; the printed token opens the API.
        assert httpx.get(console, follow_redirects=True, verify=tls).url.path == "/console/login"
        base = console.split("/console")[0]
        devices = httpx.get(f"{base}/api/v1/devices", headers={"Authorization": f"Bearer {token}"},
                            verify=tls).json()
        assert [(d["id"], d["active_bundle"]) for d in devices] == [("demo-device-1", "sample@1.0.0")]

        # The printed curl line, run as printed by a shell: --cacert verifies the server.
        api_line = re.search(r"API:\s+(curl .+)", out).group(1)
        assert f"--cacert {ca}" in api_line and shlex.split(api_line)[-1].startswith("https://")
        listed = subprocess.run(["bash", "-c", api_line], capture_output=True, text=True,
                                timeout=30, check=True)
        assert [d["id"] for d in json.loads(listed.stdout)] == ["demo-device-1"]

        demo.proc.send_signal(signal.SIGINT)
        assert demo.proc.wait(30) == 0
    finally:
        demo.stop()
