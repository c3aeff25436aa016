"""``fleet-server demo``: the main job on embedded defaults, in one command.

Starts a fleet server (embedded broker, console), builds the sample model into a signed
bundle, registers its publisher key, publishes it, enrols one local device agent (run as a
separate ``device-agent`` process, exactly as on a device), deploys the bundle to it, waits
until the device reports it active, and prints where to look. Re-running it with the same
data directory reuses the keys, the registry and the enrolled agent.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

from fleet_server.api_client import FleetApiError, FleetClient
from fleet_server.config import ServerSettings
from fleet_server.serve import RunningServer, start_server
from model_bundles.builder import build_bundle
from model_bundles.keys import generate_keypair
from model_bundles.progress import Steps, wanted
from model_bundles.samples import SAMPLE_FEATURES, SAMPLE_INPUT, write_sample_model

DEVICE_ID = "demo-device-1"
BUNDLE_NAME, BUNDLE_VERSION = "sample", "1.0.0"


class DemoError(Exception):
    """The demo could not reach its ready state."""


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _agent_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "device_agent", *args]


def _prepare_bundle(root: Path) -> tuple[Path, Path]:
    keys = root / "publisher"
    if not (keys / "publisher.key").exists():
        generate_keypair(keys)
    bundle = root / f"{BUNDLE_NAME}-{BUNDLE_VERSION}.efb"
    if not bundle.exists():
        model = write_sample_model(root / "sample.onnx")
        build_bundle([model], name=BUNDLE_NAME, version=BUNDLE_VERSION,
                     key_path=keys / "publisher.key", out=bundle, task="classifier",
                     dims={"batch": 1})
    return bundle, keys / "publisher.pub"


def _publish(client: FleetClient, bundle: Path, pub: Path) -> None:
    try:
        client.add_publisher(pub.read_text(), name="demo publisher")
    except FleetApiError as e:
        if e.status != 409:
            raise
    client.upload_bundle(bundle)


def _start_agent(client: FleetClient, agent_dir: Path, http_url: str, api_port: int,
                 log: Path) -> subprocess.Popen[bytes]:
    if not (agent_dir / "config.json").exists():
        token = client.create_enrolment_token(group="demo")["token"]
        subprocess.run(_agent_command("install", "--server", http_url, "--token", token,  # noqa: S603 - our own agent, sys.executable -m device_agent, no shell
                                      "--device-id", DEVICE_ID, "--dir", str(agent_dir)),
                       check=True, capture_output=True)
    fh = open(log, "ab")  # noqa: SIM115 - owned by the child process for its lifetime
    return subprocess.Popen(  # noqa: S603 - our own agent, sys.executable -m device_agent, no shell
        _agent_command("run", "--dir", str(agent_dir), "--api-port", str(api_port),
                       "--telemetry-interval", "5"),
        stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
    )


def _wait_active(client: FleetClient, agent: subprocess.Popen[bytes], timeout_s: float) -> dict:
    ref = f"{BUNDLE_NAME}@{BUNDLE_VERSION}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if agent.poll() is not None:
            raise DemoError(f"the device agent exited with status {agent.returncode}")
        device = client.get_device(DEVICE_ID)
        if device.get("online") and device.get("active_bundle") == ref:
            return device
        time.sleep(0.3)
    raise DemoError(f"{DEVICE_ID} did not report {ref} active within {timeout_s:.0f}s")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_demo(data: Path, *, port: int = 8080, api_port: int = 8765, exit_when_ready: bool = False,
             out: TextIO = sys.stdout, timeout_s: float = 120.0, insecure: bool = False) -> int:
    """Run the demo; blocks until Ctrl-C (or returns once ready with ``exit_when_ready``).
    TLS on every link unless ``insecure`` (the server's defaults, docs/security.md)."""
    data = Path(data).resolve()
    data.mkdir(parents=True, exist_ok=True)
    port = port if port == 0 or _port_free(port) else 0
    api_port = api_port if api_port == 0 or _port_free(api_port) else 0
    server: RunningServer | None = None
    agent: subprocess.Popen[bytes] | None = None
    try:
        with Steps("starting the demo", enabled=wanted()) as steps:  # progress on a TTY only
            steps.step("building the sample bundle")
            bundle, pub = _prepare_bundle(data / "publisher-workspace")
            steps.step("starting the fleet server and its MQTT broker")
            server = start_server(ServerSettings(data_dir=data / "server", port=port,
                                                 mqtt_port=0, insecure=insecure))
            with FleetClient(server.http_url, server.admin_token,
                             ca_bundle=server.ca_bundle) as client:
                steps.step("publishing the bundle")
                _publish(client, bundle, pub)
                agent_dir = data / "device"
                steps.step("enrolling and starting the device agent")
                agent = _start_agent(client, agent_dir, server.http_url, api_port,
                                     data / "agent.log")
                steps.step(f"deploying {BUNDLE_NAME}@{BUNDLE_VERSION}; waiting for the device")
                client.deploy(f"{BUNDLE_NAME}@{BUNDLE_VERSION}", device_id=DEVICE_ID)
                device = _wait_active(client, agent, timeout_s)
        api = json.loads((agent_dir / "state" / "api.json").read_text())
        example = json.dumps({"inputs": {SAMPLE_INPUT: [[round(0.1 * i, 1) for i in range(SAMPLE_FEATURES)]]}})
        ca = server.ca_bundle
        cacert = f"--cacert {ca} " if ca is not None else ""
        print("edgefleet demo is running" + (" (INSECURE: plain HTTP/MQTT)" if ca is None
                                             else " (TLS on every link)"), file=out)
        print(f"  console:   {server.http_url}/console/", file=out)
        if ca is not None:
            print(f"  fleet CA:  {ca}  (import it in your browser, or accept the warning)",
                  file=out)
        print(f"  admin token: {server.admin_token}  (also in {server.data_dir}/admin.token)", file=out)
        print(f"  broker:    {server.mqtt_url}", file=out)
        print(f"  device:    {DEVICE_ID} runs {device['active_bundle']} on {device.get('delegate')}", file=out)
        print("  predict:   curl -s -X POST "
              f"http://127.0.0.1:{api['port']}/v1/predict -H 'content-type: application/json' "
              f"-d '{example}'", file=out)
        print(f"  API:       curl -s {cacert}-H \"Authorization: Bearer $(cat "
              f"{server.data_dir}/admin.token)\" {server.http_url}/api/v1/devices", file=out)
        ca_env = f" EDGEFLEET_CA={ca}" if ca is not None else ""
        print(f"  CLI:       export EDGEFLEET_SERVER={server.http_url} "
              f"EDGEFLEET_TOKEN=$(cat {server.data_dir}/admin.token){ca_env}; "
              "fleet-server devices", file=out)
        print("Ctrl-C stops the server and the agent.", file=out)
        out.flush()
        if not exit_when_ready:
            signal.signal(signal.SIGTERM, _interrupt)
            try:
                while agent.poll() is None:
                    time.sleep(1.0)
                print(f"the device agent exited (status {agent.returncode}); see {data}/agent.log",
                      file=out)
                return 1
            except KeyboardInterrupt:
                print("stopping", file=out)
        return 0
    finally:
        if agent is not None and agent.poll() is None:
            agent.terminate()
            try:
                agent.wait(10)
            except subprocess.TimeoutExpired:
                agent.kill()
        if server is not None:
            server.stop()
