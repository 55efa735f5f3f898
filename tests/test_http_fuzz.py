"""The API's inputs fuzzed from its own OpenAPI document (schemathesis' strategies)
against a real ``tc run --http``: no 5xx ever, and a refused request (4xx) leaves
the journal as it was."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.generation.case import Case

from tests.helpers import make_app, project, submit, task
from tests.http_helpers import served
from trafficcontrol.api.app import OPENAPI_PATH
from trafficcontrol.domain.model import SimSettings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EXAMPLES = 40
"""Per operation and generation mode: bounded, so the test stays seconds long."""


def test_fuzzed_requests_never_fail_the_server_or_change_state_when_refused(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    app = make_app(home)
    long = SimSettings(duration_s=600.0, jitter=0.0)
    submit(
        app,
        [project(tmp_path / "p", sim=long)],
        [task("b"), task("d", deps=["b"])],
    )
    app.close()
    with served(home) as s, s.client() as client:
        document = client.get(OPENAPI_PATH).json()
        schema = schemathesis.openapi.from_dict(document)
        seen: dict[int, int] = {}
        for result in schema.get_all_operations():
            operation = result.ok()
            strategy = st.one_of(
                operation.as_strategy(GenerationMode.POSITIVE),
                operation.as_strategy(GenerationMode.NEGATIVE),
            )

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy)
            def check(case: Case) -> None:
                before = client.get("/api/status").json()["events"]
                answer = send(client, case)
                seen[answer.status_code] = seen.get(answer.status_code, 0) + 1
                assert answer.status_code < 500, (case.method, case.formatted_path, answer.text)
                if 400 <= answer.status_code < 500 and answer.status_code != 401:
                    body = answer.json()
                    assert body.get("error") or body.get("message"), answer.text
                    after = client.get("/api/status").json()["events"]
                    assert after == before, (case.method, case.formatted_path, answer.text)

            check()
    assert any(code >= 400 for code in seen), seen  # the fuzzing reached the refusals
    assert seen.get(200, 0) > 0, seen


def send(client: httpx.Client, case: Case) -> httpx.Response:
    kwargs = case.as_transport_kwargs(base_url=str(client.base_url))
    body = kwargs.get("json")
    return client.request(
        case.method,
        case.formatted_path,
        params=case.query or None,
        json=body,
        content=None if body is not None else kwargs.get("data"),
    )
