"""The evaluating worker's readout schedule: on arrival, longest unread first, within a budget."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection

import pytest
from prometheus_client import CollectorRegistry

from monitor.config import RampmonConfig, parse_config
from monitor.readout import Readout
from streams.evaluator import Evaluator
from streams.metrics import Metrics
from streams.partials import Partial
from streams.readouts import ReadoutBudget, ReadoutSchedule
from streams.stagecache import StageCache
from streams.wakeup import Wakeup
from tests.unit.test_evaluator import stats

NAMES = ("e0", "e1", "e2")
CONFIG = parse_config(
    "experiments:\n"
    + "".join(
        f"""
  - name: {name}
    variants: [control, treatment]
    control: control
    stages: [10, 50]
    metrics: [{{name: err, aggregation: any}}]
    guardrails: [{{metric: err, harmful_direction: increase, margin: 0.005}}]
    sequential: {{tuning_units: 2000, min_units_per_variant: 100}}
"""
        for name in NAMES
    )
)


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class CostlyEvaluator(Evaluator):
    """The real evaluator, whose readouts take ``cost`` seconds of a fake monotonic clock."""

    def __init__(self, config: RampmonConfig, metrics: Metrics, clock: Clock, cost: float) -> None:
        stages = StageCache(config)
        for name in NAMES:
            stages.set_history(name, [(0.0, 50.0)])
        super().__init__(config, metrics, stages, partitions=1)
        self.clock, self.cost = clock, cost

    def evaluate(self, now: float, only: Collection[str] | None = None) -> list[Readout]:
        out = super().evaluate(now, only)
        self.clock.t += self.cost * len(out)
        return out


def readouts(
    share: float, burst: float, cost: float, gap: float = 0.1
) -> tuple[CollectorRegistry, ReadoutSchedule, list[str], Clock, Clock]:
    registry, wall, mono = CollectorRegistry(), Clock(1000.0), Clock(50.0)
    ev = CostlyEvaluator(CONFIG, Metrics(registry), mono, cost)
    acted: list[str] = []

    async def act(experiment: str, now: float) -> None:
        acted.append(experiment)

    r = ReadoutSchedule(
        ev, act, ev.metrics, ReadoutBudget(share, burst, mono()), gap, clock=wall, monotonic=mono
    )
    return registry, r, acted, wall, mono


#: built once: a snapshot's statistics take milliseconds to compute
STATS = stats(0.02)


def arrive(ev: Evaluator, seq: int, names: Collection[str] = NAMES) -> None:
    for name in names:
        ev.accept(Partial(name, 0, seq, STATS))


# -- the budget --------------------------------------------------------------------------


def test_a_fresh_budget_allows_its_burst_then_refills_at_its_share() -> None:
    b = ReadoutBudget(0.25, 0.1, now=0.0)
    assert b.rest(0.0) == 0.0
    b.spend(0.0, 0.1)
    assert b.rest(0.0) == 0.0  # spent exactly: the balance is 0, not negative
    b.spend(0.0, 0.05)
    assert b.rest(0.0) == pytest.approx(0.2)  # 0.05 owed, refilled at 0.25 s a second
    assert b.rest(0.1) == pytest.approx(0.1)
    assert b.rest(0.2) == 0.0
    assert b.rest(100.0) == 0.0
    b.spend(100.0, 0.1)  # refilled up to the burst only, not 100 s worth
    b.spend(100.0, 0.1)
    assert b.rest(100.0) == pytest.approx(0.4)


def test_share_one_never_holds_a_readout() -> None:
    b = ReadoutBudget(1.0, 0.1, now=0.0)
    b.spend(0.0, 10.0)
    assert b.rest(0.0) == 0.0


def test_a_clock_that_goes_back_refills_nothing() -> None:
    b = ReadoutBudget(0.5, 0.1, now=10.0)
    b.spend(10.0, 0.2)
    assert b.rest(5.0) == pytest.approx(0.2)


def test_readouts_that_do_not_wait_leave_a_debt_of_at_most_the_burst() -> None:
    """Found in review of 9af46a2: periodic readouts, which spend without waiting, could
    run the balance down without end and stop the readouts on arrival for good."""
    b = ReadoutBudget(0.1, 0.25, now=0.0)
    for _ in range(100):
        b.spend(0.0, 0.1)
    assert b.rest(0.0) == pytest.approx(0.25 / 0.1)


@pytest.mark.parametrize(("share", "burst"), [(0.0, 0.1), (1.5, 0.1), (0.5, 0.0), (-0.1, 1.0)])
def test_a_budget_out_of_range_is_refused(share: float, burst: float) -> None:
    with pytest.raises(ValueError, match=r"^(share|burst) must be"):
        ReadoutBudget(share, burst, now=0.0)


@pytest.mark.parametrize("share", [0.1, 0.25, 0.5])
@pytest.mark.parametrize("cost", [0.002, 0.005, 0.03])
def test_readouts_that_wait_for_the_budget_take_at_most_their_share(
    share: float, cost: float
) -> None:
    """Endless demand, as from many workers: over any span T the readouts take at most
    share * T + burst (+ the one readout that overdraws), and the budget is used."""
    burst, now, spent = 0.05, 0.0, 0.0
    b = ReadoutBudget(share, burst, now)
    while now < 100.0:
        now += b.rest(now)
        now += cost
        b.spend(now, cost)
        spent += cost
    assert spent <= share * now + burst + cost
    assert spent >= share * now - cost


# -- the loop ------------------------------------------------------------------------------


def test_the_longest_unread_experiment_is_read_out_first() -> None:
    _, r, acted, wall, _ = readouts(share=1.0, burst=1.0, cost=0.005)
    ev = r.evaluator
    arrive(ev, 1, ["e0", "e2"])
    ev.evaluate(wall() - 5.0, only={"e0"})  # e0 read out 5 s ago, e2 10 s ago
    ev.evaluate(wall() - 10.0, only={"e2"})
    arrive(ev, 2)
    asyncio.run(r.read_out_changed())
    assert acted == ["e1", "e2", "e0"]  # e1 never read out
    assert ev.changed == set()


def test_a_spent_budget_leaves_the_rest_changed_for_a_later_pass() -> None:
    registry, r, acted, _, mono = readouts(share=0.5, burst=0.01, cost=0.01)
    arrive(r.evaluator, 1)
    asyncio.run(r.read_out_changed())
    # the first readout spends the burst, the second overdraws it by half its 0.01 s (the
    # other half refilled while it ran): the third waits until that is refilled
    assert acted == ["e0", "e1"] and r.evaluator.changed == {"e2"}
    assert r.budget.rest(mono()) == pytest.approx(0.01)
    mono.t += 0.01
    asyncio.run(r.read_out_changed())
    assert acted == ["e0", "e1", "e2"] and r.evaluator.changed == set()
    arrivals = registry.get_sample_value("rampmon_readouts_total", {"trigger": "arrival"})
    seconds = registry.get_sample_value("rampmon_readout_seconds_total", {"trigger": "arrival"})
    assert arrivals == 3.0 and seconds == pytest.approx(0.03)


def test_a_periodic_readout_spends_the_budget_too_and_is_counted_apart() -> None:
    registry, r, acted, _, mono = readouts(share=0.5, burst=0.01, cost=0.02)
    arrive(r.evaluator, 1, ["e0"])
    asyncio.run(r.read_out("e0", "periodic"))
    assert acted == ["e0"] and r.budget.rest(mono()) == pytest.approx(0.02)
    assert registry.get_sample_value("rampmon_readouts_total", {"trigger": "periodic"}) == 1.0
    # both series exist from the start, so a rate() over them is never empty
    assert registry.get_sample_value("rampmon_readouts_total", {"trigger": "arrival"}) == 0.0


def test_regression_the_periodic_pass_stamps_the_evaluation_with_no_experiment() -> None:
    """Found in review of 9af46a2: the periodic pass read out each due experiment, and only
    a readout stamped rampmon_last_evaluation_timestamp_seconds, so a worker that evaluates
    no experiment (compose's second worker) paged RampmonEvaluationStalled."""
    registry, r, acted, wall, _ = readouts(share=1.0, burst=1.0, cost=0.0)
    asyncio.run(r.read_out_due(1.0))
    assert acted == []
    assert registry.get_sample_value("rampmon_last_evaluation_timestamp_seconds") == wall()


def test_the_periodic_pass_reads_out_what_is_due() -> None:
    registry, r, acted, wall, _ = readouts(share=1.0, burst=1.0, cost=0.0)
    arrive(r.evaluator, 1)
    r.evaluator.evaluate(wall() - 0.2, only={"e1"})  # within half the interval
    asyncio.run(r.read_out_due(1.0))
    assert acted == ["e0", "e2"]
    assert registry.get_sample_value("rampmon_readouts_total", {"trigger": "periodic"}) == 2.0


def test_a_pass_skips_what_the_other_loop_read_out_while_it_waited_on_an_action() -> None:
    registry, r, acted, wall, _ = readouts(share=1.0, burst=1.0, cost=0.0)
    arrive(r.evaluator, 1)
    periodic = asyncio.Event()

    async def act(experiment: str, now: float) -> None:
        acted.append(experiment)
        if experiment == "e0" and not periodic.is_set():
            periodic.set()
            wall.t += 0.001
            await r.read_out("e1", "periodic")  # the timer's pass, run meanwhile

    r.act = act
    wall.t += 0.001
    asyncio.run(r.read_out_changed())
    assert acted == ["e0", "e1", "e2"]  # e1 once, by the periodic readout
    assert registry.get_sample_value("rampmon_readouts_total", {"trigger": "arrival"}) == 2.0


class RecordingWakeup(Wakeup):
    """Records each wait's timeout; arrives at once while ``arrivals`` last."""

    def __init__(self, arrivals: int) -> None:
        super().__init__()
        self.timeouts: list[float] = []
        self.arrivals = arrivals

    async def wait(self, timeout: float) -> bool:
        self.timeouts.append(timeout)
        await asyncio.sleep(0)
        self.arrivals -= 1
        return True


def run_briefly(r: ReadoutSchedule, wakeup: RecordingWakeup) -> None:
    """The loop until the wake-up's arrivals are used up; a loop that stops waiting for
    them (e.g. sleeps on the budget for ever) fails instead of hanging the suite."""
    asyncio.run(asyncio.wait_for(r.run(wakeup, lambda: wakeup.arrivals < 0), 5.0))


def test_the_loop_waits_for_an_arrival_no_longer_than_the_held_experiment_needs() -> None:
    _, r, acted, wall, _ = readouts(share=1.0, burst=1.0, cost=0.0, gap=0.1)
    arrive(r.evaluator, 1, ["e0"])
    wakeup = RecordingWakeup(arrivals=2)

    async def act(experiment: str, now: float) -> None:
        acted.append(experiment)
        wall.t += 0.03
        arrive(r.evaluator, len(acted) + 1, ["e0"])  # the next snapshot, 0.03 s later

    r.act = act
    run_briefly(r, wakeup)
    # first a whole gap; then e0, read out 0.03 s before, is ready in 0.07 s
    assert wakeup.timeouts[:2] == [0.1, pytest.approx(0.07)]


def test_an_overdrawn_budget_with_nothing_changed_waits_for_an_arrival_not_the_budget() -> None:
    registry, r, _, _, mono = readouts(share=0.5, burst=0.01, cost=0.0)
    r.budget.spend(mono(), 1.0)  # periodic readouts overdrew it
    wakeup = RecordingWakeup(arrivals=1)
    run_briefly(r, wakeup)
    assert wakeup.timeouts == [0.1, 0.1]
    assert registry.get_sample_value("rampmon_readout_budget_wait_seconds_total") == 0.0


def test_an_experiment_held_by_its_gap_is_waited_for_until_it_is_ready() -> None:
    """Before: the loop waited a whole gap after any wake-up, so a snapshot that came just
    after its experiment's readout waited up to two gaps."""
    _, r, _, wall, _ = readouts(share=1.0, burst=1.0, cost=0.0, gap=0.1)
    assert r.next_wait() == 0.1  # nothing changed: wait for an arrival
    arrive(r.evaluator, 1, ["e0"])
    asyncio.run(r.read_out_changed())
    wall.t += 0.03
    arrive(r.evaluator, 2, ["e0"])
    asyncio.run(r.read_out_changed())  # read out 0.03 s ago: held
    assert r.evaluator.changed == {"e0"}
    assert r.next_wait() == pytest.approx(0.07)
    wall.t += 0.07
    assert r.next_wait() == 0.0


def test_held_until_is_none_without_changes_and_zero_when_one_is_ready() -> None:
    _, r, _, wall, _ = readouts(share=1.0, burst=1.0, cost=0.0)
    ev = r.evaluator
    assert ev.held_until(wall(), 0.1) is None
    arrive(ev, 1, ["e0", "e1"])
    ev.evaluate(wall(), only={"e0"})
    arrive(ev, 2, ["e0", "e1"])
    assert ev.held_until(wall(), 0.1) == 0.0  # e1 was never read out
    ev.evaluate(wall() - 0.04, only={"e1"})
    arrive(ev, 3, ["e0", "e1"])
    assert ev.held_until(wall(), 0.1) == pytest.approx(0.06)  # e1's gap ends first
    assert ev.held_until(wall() - 60.0, 0.1) == 0.0  # a clock stepped back: not recent


def test_the_loop_keeps_readouts_within_their_share_under_endless_arrivals() -> None:
    """The real loop on the real clock: snapshots of every experiment arrive every
    millisecond and each readout blocks the event loop for 5 ms, as a computation does."""
    registry = CollectorRegistry()

    class Blocking(CostlyEvaluator):
        def evaluate(self, now: float, only: Collection[str] | None = None) -> list[Readout]:
            out = super().evaluate(now, only)
            time.sleep(0.005)
            return out

    ev = Blocking(CONFIG, Metrics(registry), Clock(0.0), cost=0.0)

    async def act(experiment: str, now: float) -> None:
        pass

    share, burst, span = 0.2, 0.02, 1.5
    r = ReadoutSchedule(ev, act, ev.metrics, ReadoutBudget(share, burst, time.monotonic()), 0.01)

    async def main() -> float:
        arrived, stop = Wakeup(), False
        started = time.monotonic()

        async def publish() -> None:
            seq = 0
            while time.monotonic() - started < span:
                seq += 1
                arrive(ev, seq)
                arrived.set()
                await asyncio.sleep(0.001)

        loop = asyncio.create_task(r.run(arrived, lambda: stop))
        await publish()
        stop = True
        await loop
        return time.monotonic() - started

    elapsed = asyncio.run(main())
    spent = registry.get_sample_value("rampmon_readout_seconds_total", {"trigger": "arrival"})
    assert spent is not None
    # unbounded, the readouts would take about 3 x 5 ms every 10 ms gap: 1.5 s of 1.5 s
    assert spent <= share * elapsed + burst + 0.1
    assert spent >= share * elapsed / 2
    waited = registry.get_sample_value("rampmon_readout_budget_wait_seconds_total")
    assert waited is not None and waited > 0
