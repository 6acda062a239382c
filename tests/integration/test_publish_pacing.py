"""A worker that works off a backlog publishes its statistics at once (streams.pacing)."""

from __future__ import annotations

import time

import pytest

from streams.workerproc import sample as value
from tests.integration.checks import assert_matches_numpy, processed, seed_events
from tests.integration.stack import EXPERIMENT, Stack, wait_for

pytestmark = pytest.mark.integration


def test_a_worked_off_backlog_is_published_without_waiting_out_the_interval(
    stack: Stack,
) -> None:
    # an interval longer than the test: only the publish on catching up can bring the
    # backlog's statistics to the evaluator
    stack.env["RAMPMON_PUBLISH_INTERVAL_SECONDS"] = "300"
    exposures, telemetry = seed_events(stack, 4_000, 17, duration=600)
    stack.produce("exposures", exposures)
    stack.produce("telemetry", telemetry)
    worker = stack.start_worker()
    total = len(exposures) + len(telemetry)
    wait_for(lambda: processed(stack, worker) >= total, 180, f"{total} events processed")
    drained = time.monotonic()

    def exposed() -> float:
        m = worker.metrics()
        return sum(
            value(m, "rampmon_exposures", experiment=EXPERIMENT, variant=v, stage="50")
            for v in ("control", "treatment")
        )

    wait_for(lambda: exposed() == len(exposures), 30, "the backlog's statistics", step=0.1)
    assert time.monotonic() - drained < 30
    assert_matches_numpy(worker.metrics(), exposures, telemetry, stage="50")
