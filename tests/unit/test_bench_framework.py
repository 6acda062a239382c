"""The framework benchmark's pure parts: the bodies' event counts, the budget, the summary."""

from __future__ import annotations

import json

import pytest

from bench.framework import BODIES, body_of, budget, render_markdown, summarise
from bench.throughput import EXPERIMENT, event_counter
from monitor.workload import simulate_units, to_events

X, T = "x", "t"


@pytest.fixture(scope="module")
def runs() -> list[tuple[str, list[bytes]]]:
    exposures, telemetry = to_events(
        simulate_units(200, seed=3), experiment=EXPERIMENT, start_ts=1e9, duration_s=600, seed=3
    )
    out = []
    for topic, events in ((X, exposures), (T, telemetry)):
        singles = [json.dumps(e).encode() for e in events[:50]]
        envelopes = [json.dumps(events[i : i + 100]).encode() for i in range(0, len(events), 100)]
        out += [(topic, singles), (topic, envelopes)]
    return out


def test_bodies_count_what_the_baseline_counts(runs: list[tuple[str, list[bytes]]]) -> None:
    for topic, values in runs:
        count = event_counter("json", exposures=topic == X)
        want = sum(count(v)[0] for v in values)
        assert want > 0
        assert body_of("json", X)(topic, values) == (want, 0)
        assert body_of("decoder", X)(topic, values) == (want, 0)
        assert body_of("none", X)(topic, values) == (0, 0)


def test_the_decoder_body_counts_rejections() -> None:
    bad = [b"{not json", json.dumps([{"unit_id": "u"}]).encode()]
    assert body_of("decoder", X)(T, bad) == (0, 2)


def test_unknown_body() -> None:
    assert set(BODIES) == {"none", "json", "decoder"}
    with pytest.raises(ValueError, match="unknown body"):
        body_of("orjson", X)


def test_budget_is_the_time_an_event_left_at_the_target() -> None:
    # a baseline of 500,000 events/s allows 2.5 us an event at 80%
    assert budget(500_000, 1_000_000) == pytest.approx(2.5 - 1.0)
    assert budget(500_000, 400_000) == pytest.approx(2.5 - 2.5)
    assert budget(500_000, 250_000) == pytest.approx(2.5 - 4.0)
    assert budget(500_000, 500_000, target=1.0) == pytest.approx(0.0)


def _run(rate: float, cpu: float = 1.0, rss: int = 1 << 20) -> dict:
    return {"events_per_second": rate, "cpu_us_per_event": cpu, "peak_rss_bytes": rss}


def test_summary_takes_medians_and_pairs_each_round_with_its_own_baseline() -> None:
    rounds = [
        {"baseline": _run(400.0), "decoder": _run(800.0, 1.0, 5)},
        {"baseline": _run(500.0), "decoder": _run(500.0, 3.0, 9)},
        {"baseline": _run(600.0), "decoder": _run(900.0, 2.0, 7)},
    ]
    s = summarise(rounds, ["decoder"])
    assert s["baseline_events_per_second"] == 500.0
    d = s["bodies"]["decoder"]
    assert d["events_per_second"] == 800.0
    assert d["ratio"] == pytest.approx(1.6)
    assert d["paired_ratios"] == pytest.approx([2.0, 1.0, 1.5])
    assert d["paired_median"] == pytest.approx(1.5)
    assert d["cpu_us_per_event"] == 2.0
    assert d["peak_rss_bytes"] == 9
    assert d["budget_us_per_event"] == pytest.approx(budget(500.0, 800.0))


def test_render_has_the_baseline_and_one_row_per_body() -> None:
    rounds = [{"baseline": _run(500.0), "none": _run(900.0), "decoder": _run(600.0)}]
    results = {
        "date": "2026-12-06T06:00:00+00:00",
        "command": "python -m bench.framework",
        "code": {"commit": "0123456789abcdef", "dirty_files": []},
        "parameters": {
            "events": 1000,
            "messages": 10,
            "envelope": 100,
            "partitions": 4,
            "rounds": 1,
            "target": 0.8,
        },
        "runtime_seconds": 12.0,
        "summary": summarise(rounds, ["none", "decoder"]),
    }
    text = render_markdown(results)
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows[1:]] == [
        "aiokafka + json", "Faust + none", "Faust + decoder",
    ]  # fmt: skip
    assert "| Faust + decoder | 600 | 1.200 | 1.200 |" in text
    assert "(uncommitted changes)" not in text
