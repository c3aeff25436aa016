"""Common mistakes with the three console scripts: one clear line, a non-zero exit, no traceback.

Every command runs as a real process (the installed ``model-bundle``, ``fleet-server`` and
``device-agent``) against a real ``fleet-server serve`` shared by the module, or against a
port nothing listens on. Exit statuses: 1 error or refused, 2 usage (README, "Exit status").
Each case also checks that the mistake changed nothing (no file written, no row added).
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleet_server.api_client import FleetClient
from tests.e2e.harness import Fleet, run_cli


@dataclass(frozen=True)
class World:
    fleet: Fleet
    tmp: Path
    key: Path
    pub: Path
    bundle: Path
    model: Path
    closed: str  # http URL of a port nothing listens on

    def fill(self, text: str) -> str:
        return text.format(srv=self.fleet.url, tok=self.fleet.token, closed=self.closed,
                           tmp=self.tmp, key=self.key, pub=self.pub, bundle=self.bundle,
                           model=self.model, cahash=_ca_hash(self.fleet.url))

    def counts(self) -> dict[str, int]:
        with FleetClient(self.fleet.url, self.fleet.token) as c:
            return {"bundles": len(c.list_bundles()), "publishers": len(c.list_publishers()),
                    "deployments": len(c.list_deployments()), "rollouts": len(c.list_rollouts()),
                    "devices": len(c.list_devices())}


@functools.cache
def _ca_hash(server: str) -> str:
    """The fleet CA hash an enrolment token pins (public route, not verified: a test read)."""
    return str(httpx.get(f"{server}/api/v1/ca", verify=False).json()["ca_hash"])  # noqa: S501


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sample_onnx: Path) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("cli-errors")
    (tmp / "fleet").mkdir()
    fleet = Fleet(tmp / "fleet")
    try:
        bundle, pub = fleet.build_bundle(sample_onnx, "sample", "1.0.0")
        fleet.cli("fleet-server", "publishers", "add", str(pub))
        fleet.cli("model-bundle", "publish", str(bundle))
        (tmp / "not-onnx.onnx").write_text("hello, I am not a model\n")
        (tmp / "bad-plan.json").write_text("{stages: [")
        (tmp / "a-file").write_text("")
        yield World(fleet, tmp, pub.parent / "publisher.key", pub, bundle, sample_onnx,
                    f"http://127.0.0.1:{_closed_port()}")
    finally:
        fleet.stop()


# (case id, argv with {placeholders}, exit status, expected part of the message,
#  a path that must not exist afterwards)
CASES: list[tuple[str, str, int, str, str | None]] = [
    # a missing file
    ("build-missing-model",
     "model-bundle build {tmp}/nope.onnx --name a --version 1.0.0 --key {key} --out {tmp}/o1.efb",
     1, "model file {tmp}/nope.onnx does not exist", "{tmp}/o1.efb"),
    ("build-missing-key",
     "model-bundle build {tmp}/not-onnx.onnx --name a --version 1.0.0 --key {tmp}/nope.key "
     "--out {tmp}/o2.efb", 1, "bad key file: {tmp}/nope.key", "{tmp}/o2.efb"),
    ("inspect-missing", "model-bundle inspect {tmp}/nope.efb", 1,
     "model-bundle: error: {tmp}/nope.efb: No such file or directory", None),
    ("verify-missing", "model-bundle verify {tmp}/nope.efb --trust {pub}", 1,
     "model-bundle: error: {tmp}/nope.efb: No such file or directory", None),
    ("verify-missing-trust-key", "model-bundle verify {bundle} --trust {tmp}/nope.pub", 1,
     "bad key file: {tmp}/nope.pub", None),
    ("publish-missing", "model-bundle publish {tmp}/nope.efb --server {srv} --token {tok}", 1,
     "model-bundle: error: {tmp}/nope.efb: No such file or directory", None),
    ("publishers-add-missing", "fleet-server publishers add {tmp}/nope.pub --server {srv} "
     "--token {tok}", 1, "fleet-server: {tmp}/nope.pub: No such file or directory", None),
    ("rollout-plan-missing", "fleet-server rollout create sample@1.0.0 --group g "
     "--plan {tmp}/nope.json --server {srv} --token {tok}", 1,
     "fleet-server: {tmp}/nope.json: No such file or directory", None),
    ("rollout-plan-not-json", "fleet-server rollout create sample@1.0.0 --group g "
     "--plan {tmp}/bad-plan.json --server {srv} --token {tok}", 1,
     "plan {tmp}/bad-plan.json is not JSON", None),
    ("status-not-enrolled", "device-agent status --dir {tmp}/no-agent", 1,
     "this directory is not enrolled (run device-agent install)", None),
    ("run-not-enrolled", "device-agent run --dir {tmp}/no-agent", 1,
     "this directory is not enrolled (run device-agent install)", "{tmp}/no-agent"),
    ("trust-init-root-keys-under-a-file", "fleet-server trust init --data {tmp}/trust-data "
     "--root-keys {tmp}/a-file/keys", 1, "{tmp}/a-file/keys: Not a directory", None),
    ("trust-show-no-repository", "fleet-server trust show --data {tmp}/no-data", 1,
     "no TUF repository in {tmp}/no-data/trust", None),
    # a file that is not an ONNX model
    ("build-not-onnx", "model-bundle build {tmp}/not-onnx.onnx --name a --version 1.0.0 "
     "--key {key} --out {tmp}/o3.efb", 1, "is not a readable ONNX model", "{tmp}/o3.efb"),
    ("quantize-not-onnx", "model-bundle quantize {tmp}/not-onnx.onnx --out {tmp}/q.onnx", 1,
     "is not a readable ONNX model", "{tmp}/q.onnx"),
    ("inspect-not-a-bundle", "model-bundle inspect {tmp}/not-onnx.onnx", 1,
     "malformed archive", None),
    # a bad version string
    ("build-bad-version", "model-bundle build {model} --name a "
     "--version 1.x --key {key} --out {tmp}/o4.efb", 1, "bad version '1.x'", "{tmp}/o4.efb"),
    # an unknown bundle, device, rollout or deployment
    ("deploy-unknown-bundle", "fleet-server deploy nosuch@1.0.0 --device d1 --server {srv} "
     "--token {tok}", 1, "fleet-server: HTTP 404: no bundle nosuch@1.0.0", None),
    ("deploy-unknown-device", "fleet-server deploy sample@1.0.0 --device nosuch --server {srv} "
     "--token {tok}", 1, "fleet-server: HTTP 404: no device nosuch", None),
    ("rollout-show-unknown", "fleet-server rollout show 999 --server {srv} --token {tok}", 1,
     "fleet-server: HTTP 404: no rollout 999", None),
    ("rollout-pause-unknown", "fleet-server rollout pause 999 --server {srv} --token {tok}", 1,
     "fleet-server: HTTP 404: no rollout 999", None),
    ("cancel-unknown", "fleet-server cancel 999 --server {srv} --token {tok}", 1,
     "fleet-server: HTTP 404: no deployment 999", None),
    # a wrong token
    ("devices-wrong-token", "fleet-server devices --server {srv} --token wrong-token", 1,
     "fleet-server: HTTP 401: invalid admin token", None),
    ("deploy-wrong-token", "fleet-server deploy sample@1.0.0 --group g --server {srv} "
     "--token wrong-token", 1, "fleet-server: HTTP 401: invalid admin token", None),
    ("publishers-add-wrong-token", "fleet-server publishers add {pub} --server {srv} "
     "--token wrong-token", 1, "fleet-server: HTTP 401: invalid admin token", None),
    ("enrol-token-wrong-token", "fleet-server enrol-token --server {srv} --token wrong-token", 1,
     "fleet-server: HTTP 401: invalid admin token", None),
    ("rollout-create-wrong-token", "fleet-server rollout create sample@1.0.0 --group g "
     "--server {srv} --token wrong-token", 1, "fleet-server: HTTP 401: invalid admin token",
     None),
    ("publish-wrong-token", "model-bundle publish {bundle} --server {srv} --token wrong-token", 1,
     "model-bundle: error: publish failed: HTTP 401: invalid admin token", None),
    ("install-token-without-ca-hash", "device-agent install --server {srv} --token wrong-token "
     "--device-id d6 --dir {tmp}/agent-d6", 1,
     "device-agent: the token carries no fleet CA hash and no --ca-hash was given",
     "{tmp}/agent-d6"),
    ("install-unknown-enrol-token", "device-agent install --server {srv} --token "
     "wrong-token.{cahash} --device-id d9 --dir {tmp}/agent-d9", 1,
     "device-agent: enrol refused (403): enrolment token is unknown, already used or expired",
     "{tmp}/agent-d9/config.json"),
    ("install-too-short-enrol-token", "device-agent install --server {srv} --token short "
     "--ca-hash {cahash} --device-id d8 --dir {tmp}/agent-d8", 1,
     "device-agent: enrol refused (422): body.token: String should have at least 8 characters",
     "{tmp}/agent-d8/config.json"),
    # a server that is not running
    ("devices-server-down", "fleet-server devices --server {closed} --token {tok}", 1,
     "fleet-server: cannot reach fleet server: [Errno 111] Connection refused", None),
    ("enrol-token-server-down", "fleet-server enrol-token --server {closed} --token {tok}", 1,
     "fleet-server: cannot reach fleet server", None),
    ("publishers-add-server-down", "fleet-server publishers add {pub} --server {closed} "
     "--token {tok}", 1, "fleet-server: cannot reach fleet server", None),
    ("rollout-list-server-down", "fleet-server rollout list --server {closed} --token {tok}", 1,
     "fleet-server: cannot reach fleet server", None),
    ("publish-server-down", "model-bundle publish {bundle} --server {closed} --token {tok}", 1,
     "model-bundle: error: publish failed: cannot reach fleet server", None),
    ("install-server-down", "device-agent install --server {closed} --token some-enrol-token "
     "--ca-hash {cahash} --device-id d7 --dir {tmp}/agent-d7", 1,
     "device-agent: cannot reach {closed}/api/v1/ca",
     "{tmp}/agent-d7/config.json"),
    # usage: a server URL without a scheme, no server at all
    ("devices-server-url-without-scheme", "fleet-server devices --server localhost:8080 "
     "--token {tok}", 2, "fleet-server: bad server URL 'localhost:8080': want http://HOST:PORT",
     None),
    ("publish-server-url-without-scheme", "model-bundle publish {bundle} --server localhost:8080 "
     "--token {tok}", 2, "bad server URL 'localhost:8080'", None),
]


def _run(world: World, argv: str, env: dict[str, str] | None = None) -> Any:
    args = [world.fill(a) for a in argv.split()]
    return run_cli(*args, env={"EDGEFLEET_SERVER": "", "EDGEFLEET_TOKEN": "", **(env or {})},
                   check=False, timeout=60)


def _assert_one_clean_line(proc: Any, status: int, message: str) -> None:
    assert proc.returncode == status, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert proc.stderr.endswith("\n") and proc.stderr.count("\n") == 1, repr(proc.stderr)
    assert message in proc.stderr, proc.stderr


@pytest.mark.parametrize(("argv", "status", "message", "absent"),
                         [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_common_mistake_gets_one_line_and_exit_status(world: World, argv: str, status: int,
                                                      message: str, absent: str | None) -> None:
    before = world.counts()
    proc = _run(world, argv)
    _assert_one_clean_line(proc, status, world.fill(message))
    assert proc.stdout == ""
    assert world.counts() == before  # nothing added on the server
    if absent is not None:
        assert not Path(world.fill(absent)).exists()


@pytest.mark.parametrize("argv", [
    "model-bundle inspect",
    "fleet-server deploy sample@1.0.0",
    "device-agent install --server {srv}",
])
def test_usage_error_exits_2_with_argparse_message(world: World, argv: str) -> None:
    proc = _run(world, argv)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.endswith("\n") and ": error: " in proc.stderr.splitlines()[-1]


@pytest.mark.parametrize(("argv", "message"), [
    ("fleet-server devices", "fleet-server: no server: pass --server URL or set EDGEFLEET_SERVER"),
    ("model-bundle publish {bundle}", "no server: pass --server URL or set EDGEFLEET_SERVER"),
])
def test_admin_command_without_server_is_a_usage_error(world: World, argv: str,
                                                       message: str) -> None:
    _assert_one_clean_line(_run(world, argv), 2, message)
