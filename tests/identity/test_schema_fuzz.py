"""Schemathesis against a live ``fleet-server serve``: every operation of the OpenAPI schema
gets generated requests, once with an admin token and once with a viewer token. No answer
may be a 5xx, and every answer whose status the schema documents must match its schema."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.harness import Fleet

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
)

pytestmark = pytest.mark.e2e

MAX_EXAMPLES = 12
"""Per operation and token: ~30 operations x 2 tokens x 12 stays well under a minute."""
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fleet, dict[str, str]]]:
    fleet = Fleet(tmp_path_factory.mktemp("fuzz"))
    try:
        tokens = {}
        with httpx.Client(base_url=f"{fleet.url}/api/v1",
                          headers={"Authorization": f"Bearer {fleet.token}"}) as admin:
            for role in ("admin", "viewer"):
                r = admin.post("/tokens", json={"name": f"fuzz-{role}", "role": role})
                assert r.status_code == 201, r.text
                tokens[role] = r.json()["token"]
        yield fleet, tokens
    finally:
        fleet.stop()


def _fuzz(url: str, token: str) -> tuple[int, list[str]]:
    """Run every operation; returns (cases run, failures as one line each)."""
    from hypothesis import HealthCheck, Phase, given, settings

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    headers = {"Authorization": f"Bearer {token}"}
    cases, failures = 0, []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                  phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        def run(case: object) -> None:
            nonlocal cases
            cases += 1
            response = case.call(base_url=url, headers=headers)
            try:
                case.validate_response(response, checks=CHECKS)
            except (Exception, BaseExceptionGroup) as e:  # collected, reported below
                failures.append(f"{case.method} {case.formatted_path} -> "
                                f"{response.status_code}: {' '.join(str(e).split())[:400]}")

        run()
    return cases, failures


@pytest.mark.parametrize("role", ["admin", "viewer"])
def test_fuzzed_api_has_no_server_errors_and_conforms_to_its_schema(
        live: tuple[Fleet, dict[str, str]], role: str, record_property: object) -> None:
    fleet, tokens = live
    started = time.monotonic()
    cases, failures = _fuzz(fleet.url, tokens[role])
    record_property("cases", cases)  # type: ignore[operator]
    print(f"schemathesis as {role}: {cases} cases in {time.monotonic() - started:.1f} s")
    assert cases >= 100
    assert failures == [], "\n".join(sorted(set(failures)))
    assert fleet.server.alive()
