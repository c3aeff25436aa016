"""``fleet-server users ...`` and ``fleet-server tokens ...`` against a real server."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet_server.api_client import FleetClient
from fleet_server.cli import main
from fleet_server.config import ServerSettings
from fleet_server.serve import RunningServer, start_server

from .conftest import PASSWORD


@pytest.fixture()
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningServer]:
    with start_server(ServerSettings(data_dir=tmp_path / "fleet", port=0, mqtt_port=0, insecure=True)) as s:
        monkeypatch.setenv("EDGEFLEET_SERVER", s.http_url)
        monkeypatch.setenv("EDGEFLEET_TOKEN", s.admin_token)
        yield s


def test_users_add_list_set_role_disable_through_the_cli(
        server: RunningServer, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert main(["users", "add", "alice", "--role", "viewer"]) == 0
    assert main(["users", "set-role", "alice", "operator"]) == 0
    assert main(["users", "disable", "alice"]) == 0
    capsys.readouterr()
    assert main(["users", "list", "--json"]) == 0
    users = json.loads(capsys.readouterr().out)
    assert [(u["username"], u["role"], u["disabled"]) for u in users] == [
        ("alice", "operator", True)]
    assert main(["users", "set-role", "nobody", "admin"]) == 1
    assert capsys.readouterr().err == "fleet-server: HTTP 404: no user nobody\n"
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["users", "add", "bob", "--role", "viewer"]) == 1
    assert "password" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # argparse: not a role
        main(["users", "add", "bob", "--role", "root"])
    assert usage.value.code == 2
    assert "invalid choice: 'root'" in capsys.readouterr().err


def test_tokens_create_list_revoke_through_the_cli(
        server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tokens", "create", "--name", "ci", "--role", "publisher",
                 "--expires-days", "1"]) == 0
    out = capsys.readouterr()
    secret = out.out.strip()
    assert secret.startswith("eft_") and "shown once" in out.err
    with FleetClient(server.http_url, secret) as ci:
        assert ci.whoami() == {"name": "token:ci", "role": "publisher", "kind": "token"}
    assert main(["tokens", "list", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert secret not in json.dumps(row)
    assert main(["tokens", "revoke", row["id"]]) == 0
    assert "revoked" in capsys.readouterr().out
    assert main(["devices", "--token", secret]) == 1
    assert "HTTP 401: API token is unknown, expired or revoked" in capsys.readouterr().err
