"""The framework benchmark's Faust child on a real broker: it reads the whole backlog
through the worker's consumer, decodes every event, and times from before the first fetch."""

from __future__ import annotations

from bench.framework import run_agent
from bench.throughput import ROOT, generate, prepare
from streams.embedded import EmbeddedBroker


def test_the_faust_agent_reads_and_decodes_the_whole_backlog(
    kafka_broker: EmbeddedBroker,
) -> None:
    exposures, telemetry, _ = generate(300, 11, 600.0)
    events = len(exposures) + len(telemetry)
    data_dirs = set(ROOT.glob("bench-framework-*-data"))
    backlog = prepare(kafka_broker, 100, exposures, telemetry, 4)
    r = run_agent(
        kafka_broker.bootstrap, backlog.topics, 4, backlog.messages, events, "decoder", 120.0
    )
    assert r["messages"] == backlog.messages
    assert r["events"] == events and r["rejected"] == 0
    # the clock ran over the fetch and the decode, and the process did the work
    assert r["seconds"] > 0 and r["cpu_seconds"] > 0
    assert r["events_per_second"] == events / r["seconds"]
    # Faust's data dir went to a temporary one, not the repository (where 70 of them
    # were once left behind)
    assert set(ROOT.glob("bench-framework-*-data")) == data_dirs
