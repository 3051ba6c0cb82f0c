"""Schemathesis over the hub's own OpenAPI document: no generated request gets a 5xx.

The spec is :func:`hub.api.openapi_spec` (what ``/api/v1/openapi.json`` serves, generated from
the route table), so every route, also one added later, is fuzzed. Each operation is called
with a valid token of the strongest role it allows (platform-admin for platform routes, admin
of a tenant otherwise), with cases that fit the schema and cases that do not, on a live server
on 127.0.0.1. The number of cases is bounded so that the run stays well under a minute.
"""

from __future__ import annotations

import time
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from hub.api import openapi_spec
from hub.auth import PLATFORM_ADMIN, PLATFORM_TENANT

from .conftest import VICTIM, AttackRecorder, LiveHub

TOTAL_CASES = 800
"""Cases over all operations and both modes (split evenly, at least 10 each)."""
MIN_PER_OPERATION = 10


def _token(hub: LiveHub, definition: dict[str, Any]) -> dict[str, str]:
    role = definition.get("x-cairn-role")
    if role is None:
        return {}
    key = (PLATFORM_TENANT, PLATFORM_ADMIN) if role == PLATFORM_ADMIN else (VICTIM, "admin")
    return {"Authorization": f"Bearer {hub.parts.tokens[key]}"}


def test_no_generated_request_gets_a_server_error(
    live_hub: LiveHub, attack: AttackRecorder
) -> None:
    schema = schemathesis.openapi.from_dict(openapi_spec())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations
    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    per_run = max(MIN_PER_OPERATION, TOTAL_CASES // (len(operations) * len(modes)))
    cases = 0
    failures: list[str] = []
    started = time.monotonic()
    session = requests.Session()
    for operation in operations:
        headers = _token(live_hub, operation.definition.raw)
        for mode in modes:

            @settings(
                max_examples=per_run,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                nonlocal cases
                response = case.call(
                    base_url=live_hub.url,
                    session=session,
                    headers=headers,  # noqa: B023 - called before the loop moves on
                    timeout=10,
                )
                cases += 1
                if response.status_code >= 500:
                    failures.append(
                        f"{case.method} {case.formatted_path} {case.query!r}:"
                        f" {response.status_code} {response.text[:200]}"
                    )

            try:
                run()
            except Unsatisfiable:
                # Nothing to get wrong (no parameters, no body): no negative case exists.
                assert mode is GenerationMode.NEGATIVE, operation.label
    session.close()
    attack.note("fuzz", "cases", cases)
    attack.note("fuzz", "server errors", len(failures))
    with attack("fuzz", "schemathesis"):
        assert failures == [], failures[:10]
        assert cases >= len(operations) * len(modes)
    assert time.monotonic() - started < 60
