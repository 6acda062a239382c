"""Secrets stay secret on a live worker; its write API needs the token."""

from __future__ import annotations

import orjson
import pytest

from tests.integration.checks import seed_events, settle
from tests.integration.stack import EXPERIMENT, SECRET, Stack

pytestmark = pytest.mark.integration

TOKEN = "api-token-5f1e0c9d"


def test_secrets_never_leave_the_worker_and_writes_need_the_token(stack: Stack) -> None:
    stack.env["RAMPMON_API_TOKEN"] = TOKEN
    stack.env["RAMPMON_LOG_LEVEL"] = "INFO"  # the most the worker ever says
    exposures, telemetry = seed_events(stack, 1_000, 3, duration=120)
    worker = stack.start_worker()
    stack.produce("exposures", exposures)
    stack.produce("telemetry", telemetry)
    settle(stack, worker, len(exposures) + len(telemetry), timeout=120)

    body = orjson.dumps({"action": "acknowledge", "by": "oncall", "reason": "seen"})
    path = f"/experiments/{EXPERIMENT}/override"
    assert worker.request(path, method="POST", body=body)[0] == 401
    wrong = {"Authorization": "Bearer not-the-token"}
    assert worker.request(path, method="POST", body=body, headers=wrong)[0] == 401
    right = {"Authorization": f"Bearer {TOKEN}"}
    status, answer = worker.request(path, method="POST", body=body, headers=right)
    assert status == 200 and orjson.loads(answer)["audit_id"]

    seen = [
        worker.request(p)[1]
        for p in ("/metrics", "/healthz", "/experiments", f"/experiments/{EXPERIMENT}",
                  f"/experiments/{EXPERIMENT}/gate")
    ]  # fmt: skip
    seen.append(answer)
    seen.append(worker.log_path.read_bytes())
    for secret in (TOKEN.encode(), SECRET):
        for text in seen:
            assert secret not in text
