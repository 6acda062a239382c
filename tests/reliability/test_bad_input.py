"""Bad input at volume: every malformed event is dead-lettered with its reason, counted,
and changes nothing; the worker never stops and never grows label series for it."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings

from monitor.config import parse_config
from streams.decode import Decoder
from tests.integration.checks import assert_matches_numpy, seed_events, settle
from tests.integration.stack import EXPERIMENT, Stack, wait_for
from tests.reliability.badevents import MAX_MESSAGE_BYTES, BadEvent, bad_events, strategy

CONFIG = parse_config(
    (Path(__file__).resolve().parents[2] / "deploy" / "experiments.yaml").read_text()
)
NOW = 1_795_000_000.0
GOOD_EXPOSURE = {"event_id": "x1", "ts": NOW - 60, "experiment": EXPERIMENT, "unit_id": "u1",
                 "variant": "treatment", "stage": 50}  # fmt: skip
GOOD_TELEMETRY = {"event_id": "t1", "ts": NOW - 30, "unit_id": "u1", "metric": "latency_ms",
                  "value": 250.0}  # fmt: skip
DECODER = Decoder(
    CONFIG,
    max_message_bytes=MAX_MESSAGE_BYTES,
    max_age_seconds=30 * 86_400.0,
    max_future_seconds=300.0,
    clock=lambda: NOW,
)


def _decode(e: BadEvent) -> tuple[list, list]:
    return (DECODER.exposures if e.topic == "exposures" else DECODER.telemetry)(e.raw)


def test_the_good_events_the_bad_ones_come_from_are_good() -> None:
    """Otherwise a "bad" event could be rejected for its parent's fault."""
    good, bad = DECODER.exposures(orjson.dumps(GOOD_EXPOSURE))
    assert len(good) == 1 and bad == []
    good, bad = DECODER.telemetry(orjson.dumps(GOOD_TELEMETRY))
    assert len(good) == 1 and bad == []


@settings(max_examples=2_000, deadline=None)
@given(strategy(GOOD_EXPOSURE, GOOD_TELEMETRY, NOW))
def test_every_bad_event_gets_exactly_its_reason(event: BadEvent) -> None:
    good, bad = _decode(event)
    assert good == []
    assert [b.reason for b in bad] == [event.reason], event
    assert bad[0].detail and bad[0].raw


@pytest.mark.integration
def test_ten_thousand_bad_events_interleaved_with_good_ones(stack: Stack) -> None:
    exposures, telemetry = seed_events(stack, 3_000, 17, duration=300)
    bad = bad_events(10_000, 2026, exposures, telemetry, time.time())
    assert len({e.kind for e in bad}) == 11 and len(bad) == 10_000
    stack.env["RAMPMON_MAX_MESSAGE_BYTES"] = str(MAX_MESSAGE_BYTES)
    worker = stack.start_worker()
    # envelopes small enough for the lowered message limit (100 exposures are ~33 KB)
    stack.produce("exposures", exposures, batch=20)
    # good envelopes and bad single-event messages, interleaved on both topics
    chunks = 10
    for i in range(chunks):
        part = bad[i::chunks]
        for topic in ("exposures", "telemetry"):
            raw = [(f"bad-{j}".encode(), e.raw) for j, e in enumerate(part) if e.topic == topic]
            stack.produce_raw(topic, raw)
        stack.produce("telemetry", telemetry[i::chunks], batch=50)
    metrics = settle(stack, worker, len(exposures) + len(telemetry), timeout=300)

    counted: dict[tuple[str, str], float] = {}
    for (name, labels), v in metrics.items():
        if name == "rampmon_dead_letters_total" and v:  # the others are at 0 from the start
            key = (dict(labels)["topic"], dict(labels)["reason"])
            counted[key] = counted.get(key, 0) + v
    expected: dict[tuple[str, str], int] = {}
    for e in bad:
        key = (stack.topics[e.topic], e.reason)
        expected[key] = expected.get(key, 0) + 1
    assert counted == expected  # every bad event counted, under its own reason
    wait_for(lambda: len(stack.consume("deadletter", timeout=1)) >= len(bad), 60, "dead letters")
    letters = stack.consume("deadletter", timeout=3)
    assert len(letters) == len(bad)
    assert sorted(d["reason"] for d in letters) == sorted(e.reason for e in bad)
    assert all(d["detail"] and d["source"]["topic"] in stack.topics.values() for d in letters)
    # still alive, and the good statistics are exactly numpy's on the good events alone
    assert worker.proc is not None and worker.proc.poll() is None
    assert_matches_numpy(metrics, exposures, telemetry, stage="50")
    # thousands of unknown names on the wire, and no label series for any of them
    experiments = {dict(labels).get("experiment") for (_, labels) in metrics} - {None}
    assert experiments <= {EXPERIMENT, ""}
    metric_labels = {dict(labels).get("metric") for (_, labels) in metrics} - {None}
    assert metric_labels <= {m.name for m in CONFIG.experiments[0].metrics}


@pytest.mark.integration
def test_regression_a_big_malformed_message_is_dead_lettered_and_ingest_keeps_running(
    stack: Stack,
) -> None:
    """A message under RAMPMON_MAX_MESSAGE_BYTES (1 MiB) but rejected as a whole, here a
    ~900 KB truncated envelope, once made a dead letter over the producer's request limit
    (1,000,000 bytes): the send raised MessageSizeTooLargeError, the dead letter was
    counted but never written, the rejections after it in the run were lost too, and the
    ingest agent crashed. Its dead letter now embeds the first 64 KiB, marked truncated."""
    worker = stack.start_worker()
    one = b'{"event_id":"e1","ts":1795000000,"unit_id":"u1","metric":"tasks","value":1},'
    big = b"[" + one * (900_000 // len(one))  # a truncated envelope: bad_json
    assert 750_000 < len(big) < 1_048_576
    # the same key: one partition, so the small one follows the big one in its run
    stack.produce_raw("telemetry", [(b"k-big", big), (b"k-big", b'{"event_id": "cut')])
    time.sleep(2)
    stack.produce_raw("telemetry", [(b"k-later", b'{"event_id": "broken')])

    def counted() -> float:
        metrics = worker.metrics()
        return sum(v for (name, _), v in metrics.items() if name == "rampmon_dead_letters_total")

    wait_for(lambda: counted() >= 3, 60, "three dead letters counted")
    deadline = time.monotonic() + 20
    while len(letters := stack.consume("deadletter", timeout=1)) < 3:
        if time.monotonic() > deadline:
            break
    crashes = [line for line in worker.log_tail(400).splitlines() if "Error" in line]
    assert not crashes, crashes[:10]
    letters.sort(key=lambda d: -d["event_bytes"])
    assert worker.proc is not None and worker.proc.poll() is None
    assert counted() == len(letters) == 3
    first, *rest = letters
    assert first["reason"] == "bad_json" and first["detail"]
    assert first["source"]["topic"] == stack.topics["telemetry"]
    assert first["source"]["index"] is None and isinstance(first["source"]["offset"], int)
    assert first["truncated"] is True and first["event_bytes"] == len(big)
    assert first["encoding"] == "utf-8" and first["event"] == big[:65_536].decode()
    assert sorted(d["event"] for d in rest) == ['{"event_id": "broken', '{"event_id": "cut']
    assert not any(d["truncated"] for d in rest)
