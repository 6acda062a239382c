"""AlertTracker + AlertmanagerClient against a real Prometheus Alertmanager (API v2)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from alerts.alertmanager import AlertmanagerClient, AlertTracker, Firing, guardrail_alert
from alerts.errors import AlertmanagerError
from streams.embedded import free_port
from tests.integration.servers import Alertmanager

pytestmark = pytest.mark.integration

# every filter on: an alert missing from this listing is not firing in any state
ALL_STATES = {"active": "true", "silenced": "true", "inhibited": "true", "unprocessed": "true"}


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[Alertmanager]:
    with Alertmanager(tmp_path) as am:
        yield am


def breach(experiment: str = "checkout.v2") -> Firing:
    return guardrail_alert(
        experiment=experiment,
        stage=5,
        guardrail="error_session",
        variant="treatment",
        metric="error_session",
        effect=0.021,
        lower=0.012,
        upper=math.inf,
        margin=0.005,
        runbook_url="https://runbooks.example.com/rampmon#guardrail",
        generator_url="http://rampmon.example.com:6066/metrics",
    )


async def listed(
    session: aiohttp.ClientSession, am: Alertmanager, experiment: str
) -> list[dict[str, Any]]:
    """Our alerts for ``experiment`` in any state, as Alertmanager lists them."""
    async with session.get(f"{am.url}/api/v2/alerts", params=ALL_STATES) as response:
        assert response.status == 200
        alerts: list[dict[str, Any]] = await response.json()
    return [a for a in alerts if a["labels"].get("experiment") == experiment]


async def wait_listed(
    session: aiohttp.ClientSession, am: Alertmanager, experiment: str, count: int
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10.0
    while True:
        found = await listed(session, am, experiment)
        if len(found) == count or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


def test_firing_then_resolved_round_trip(alertmanager: Alertmanager) -> None:
    tracker = AlertTracker(resend_seconds=1.0)

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            client = AlertmanagerClient(session, [alertmanager.url], timeout=5.0)
            t0 = time.time()
            (firing,) = tracker.update([breach()], t0)
            await client.push([firing])

            (shown,) = await wait_listed(session, alertmanager, "checkout.v2", 1)
            assert shown["status"]["state"] == "active"
            assert shown["labels"] == dict(breach().labels)
            assert shown["annotations"] == dict(breach().annotations)
            assert shown["generatorURL"] == "http://rampmon.example.com:6066/metrics"
            assert shown["startsAt"] == firing.to_dict()["startsAt"]
            assert shown["endsAt"] == firing.to_dict()["endsAt"]

            # a re-send extends endsAt and keeps startsAt (one alert, one start)
            (resent,) = tracker.update([breach()], t0 + 1.0)
            await client.push([resent])
            (shown,) = await wait_listed(session, alertmanager, "checkout.v2", 1)
            assert shown["startsAt"] == firing.to_dict()["startsAt"]
            assert shown["endsAt"] == resent.to_dict()["endsAt"] > firing.to_dict()["endsAt"]
            assert shown["fingerprint"]

            # no longer firing: sent once with endsAt = now, and Alertmanager drops it
            (resolved,) = tracker.update([], time.time())
            assert resolved.ends_at is not None and resolved.ends_at <= time.time()
            await client.push([resolved])
            assert await wait_listed(session, alertmanager, "checkout.v2", 0) == []
            # the default listing (active only) agrees
            async with session.get(f"{alertmanager.url}/api/v2/alerts") as response:
                assert not [
                    a for a in await response.json() if a["labels"].get("source") == "rampmon"
                ]
            assert (client.pushed, client.failed) == (3, 0)
            assert tracker.update([], time.time()) == []

    asyncio.run(scenario())


def test_resolve_all_for_an_experiment_leaves_the_others(alertmanager: Alertmanager) -> None:
    tracker = AlertTracker()

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            client = AlertmanagerClient(session, [alertmanager.url], timeout=5.0)
            await client.push(tracker.update([breach("moved.away"), breach("kept")], time.time()))
            assert len(await wait_listed(session, alertmanager, "moved.away", 1)) == 1
            gone = tracker.resolve_all(
                time.time(), where=lambda labels: labels["experiment"] == "moved.away"
            )
            await client.push(gone)
            assert await wait_listed(session, alertmanager, "moved.away", 0) == []
            (kept,) = await listed(session, alertmanager, "kept")
            assert kept["status"]["state"] == "active"

    asyncio.run(scenario())


def test_push_goes_to_every_alertmanager_and_reports_failures_without_paths(
    alertmanager: Alertmanager,
) -> None:
    refused = f"http://127.0.0.1:{free_port()}/s3cret-token"  # nothing listens: refused
    wrong_prefix = f"{alertmanager.url}/s3cret-prefix"  # Alertmanager answers 404

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            client = AlertmanagerClient(session, [refused, alertmanager.url, wrong_prefix], 5.0)
            alerts = AlertTracker().update([breach()], time.time())
            with pytest.raises(AlertmanagerError) as raised:
                await client.push(alerts)
            assert (client.pushed, client.failed) == (1, 2)
            error = raised.value
            assert len(error.failures) == 2
            assert "ClientConnectorError" in str(error)
            assert f"{alertmanager.url} answered 404" in str(error)
            assert "s3cret" not in str(error)
            # the healthy one got the alert anyway
            assert len(await wait_listed(session, alertmanager, "checkout.v2", 1)) == 1
            await client.push([])  # nothing to send: no request, no count
            assert (client.pushed, client.failed) == (1, 2)

    asyncio.run(scenario())
