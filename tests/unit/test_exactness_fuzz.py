"""Random crash points against an oracle that processes every event once (review harness,
tests/unit/fuzzlib.py): the statistics, windows, watermark, ``seq`` and unit records of
a worker that crashes at random points -- a random prefix of each changelog partition's
batches kept, split runs included -- and is redelivered from a commit point equal those
of a worker that processed every run once. A few seeds each; raise ``SEEDS`` to search."""

from __future__ import annotations

import random

import pytest

from tests.unit import fuzzlib as F

SEEDS = 6


def _check(oracle: object, worker: object, notes: list[str]) -> None:
    bad = F.diff(F.snapshot_state(oracle), F.snapshot_state(worker))
    bad += [n for n in notes if n.startswith("rebuild")]
    assert not bad, (notes, bad[:5])


@pytest.mark.parametrize("seed", range(SEEDS))
def test_same_runs_with_lateness_and_expiry(seed: int) -> None:
    """The same runs redelivered, lateness and expiry live; a rebuild from the batches
    after every run equals the live worker."""
    rng = random.Random(seed)
    cfg = F.config(two=seed % 2 == 1, size=5.0, lateness=3.0, expires=20.0)
    msgs = F.stream(seed, cfg, n_messages=100, per_message=8, jitter=30.0, ts_spread=150.0)
    runs = F.runs_of(msgs, rng)
    worker, notes = F.crashing2(cfg, runs, rng, batch_bytes=800 + (seed % 5) * 400,
                                crashes=2, check_rebuild=True)  # fmt: skip
    _check(F.oracle(cfg, runs), worker, notes)


@pytest.mark.parametrize("seed", range(SEEDS))
def test_runs_cut_anew_and_poison_messages(seed: int) -> None:
    """No event late: the redelivery cuts the runs anew, and two messages raise (a bug)
    wherever the seed puts the raise, as the agent isolates them."""
    rng = random.Random(seed)
    cfg = F.config(two=seed % 2 == 1)
    msgs = F.stream(seed, cfg, n_messages=100, per_message=8)
    runs = F.runs_of(msgs, rng)
    good = [m for m in msgs if m[3] != b"{broken"]
    poison = {m[:3] for m in rng.sample(good, 2)}
    where = ["start", "attrib", "apply", "expire", "split"][seed % 5]
    F.DEAD.clear()
    worker, notes = F.crashing2(cfg, runs, rng, batch_bytes=800 + (seed % 5) * 400,
                                crashes=2, poison=poison, where=where, resplit=True)  # fmt: skip
    kept = [(t, p, [r for r in rs if (t, p, r.offset) not in F.DEAD]) for t, p, rs in runs]
    _check(F.oracle(cfg, [r for r in kept if r[2]]), worker, notes)


@pytest.mark.parametrize("seed", range(SEEDS))
def test_one_experiment_redelivered_in_another_topic_order(seed: int) -> None:
    """One experiment, no event late: per topic partition commit points and a random
    interleaving of the topics after each crash change nothing."""
    rng = random.Random(seed)
    cfg = F.config()
    msgs = F.stream(seed, cfg, n_messages=120, per_message=6)
    worker, notes = F.crashing_reordered(cfg, msgs, rng, batch_bytes=800 + (seed % 5) * 400)
    _check(F.oracle(cfg, F.runs_of(msgs, random.Random(seed + 1))), worker, notes)
