"""The detection benchmark's readout figures: read from the worker's counters, rendered."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from alerts.receiver import Delivery, WebhookReceiver
from alerts.webhook import post_signed
from bench.detection import SECRET, _labelled, note_rollbacks, render_markdown, ticks_until

RESULTS = Path(__file__).parents[2] / "bench" / "results"


def test_a_counter_is_read_for_its_trigger_only() -> None:
    metrics = {
        ("rampmon_readouts_total", frozenset({("trigger", "arrival")})): 90.0,
        ("rampmon_readouts_total", frozenset({("trigger", "periodic")})): 4.0,
        ("rampmon_readout_seconds_total", frozenset({("trigger", "arrival")})): 0.2,
    }
    assert _labelled(metrics, "rampmon_readouts_total", "arrival") == 90.0
    assert _labelled(metrics, "rampmon_readouts_total", "periodic") == 4.0
    assert _labelled(metrics, "rampmon_readout_seconds_total", "periodic") == 0.0


def test_results_with_readouts_render_their_share_and_older_ones_render_as_before() -> None:
    old = json.loads((RESULTS / "detection-2026-12-04.json").read_text())
    assert "Readouts" not in render_markdown(old)
    new = {
        **old,
        "readouts": {
            "arrival": {"per_second": 45.8, "share": 0.104},
            "periodic": {"per_second": 1.1, "share": 0.0024},
        },
        "readout_budget_wait_share": 0.0,
    }
    line = render_markdown(new).splitlines()[-1]
    assert line.startswith("- Readouts: 45.8/s on arrival, taking 10.4% of the worker's")
    assert "1.1/s periodic (0.2%)" in line and "budget 0.0% of the time" in line


@pytest.mark.parametrize("name", ["detection-2026-12-04.json", "detection-2026-12-03.json"])
def test_every_kept_result_still_renders(name: str) -> None:
    assert "p50 target" in render_markdown(json.loads((RESULTS / name).read_text()))


def _delivery(experiment: str, decision: str, received_at: float) -> Delivery:
    payload = {"experiment": experiment, "decision": decision, "decided_at": received_at - 0.05}
    return Delivery(payload, b"", "", f"{experiment}:{decision}", None, received_at)


def test_a_webhook_arrives_when_the_receiver_took_it_not_when_the_loop_looked() -> None:
    # the loop reads its clock, scrapes /metrics (0.1-0.5 s with 20 experiments), then
    # reads the receiver: a webhook taken during the scrape used to get the earlier time
    arrived: dict[str, float] = {}
    decided: dict[str, float] = {}
    note_rollbacks(
        [_delivery("a", "pause", 9.0), _delivery("a", "rollback", 10.3)], arrived, decided
    )
    note_rollbacks(
        [_delivery("a", "rollback", 11.0), _delivery("b", "rollback", 10.4)], arrived, decided
    )
    assert arrived == {"a": 10.3, "b": 10.4}
    assert decided == pytest.approx({"a": 10.25, "b": 10.35})


def test_the_reference_receiver_stamps_each_delivery_as_it_takes_it() -> None:
    receiver = WebhookReceiver(SECRET)
    body = orjson.dumps({"experiment": "x", "decision": "rollback", "decided_at": 1.0})

    async def post() -> tuple[float, float]:
        await receiver.start()
        try:
            async with aiohttp.ClientSession() as session:
                before = time.time()
                await post_signed(
                    session, receiver.url, body, secret=SECRET, idempotency_key="k", timeout=5.0
                )
                return before, time.time()
        finally:
            await receiver.stop()

    before, after = asyncio.run(post())
    (delivery,) = receiver.accepted
    assert before <= delivery.received_at <= after


def test_enough_units_is_looked_for_in_the_ticks_sent_before_the_webhook_only() -> None:
    ticks = [(10.0, b"[]", b"[]"), (10.1, b"[]", b"[]"), (10.2, b"[]", b"[]")]
    assert ticks_until(ticks, 10.1) == ticks[:2]
    assert ticks_until(ticks, 9.9) == []
