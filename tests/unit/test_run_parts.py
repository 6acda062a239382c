"""split_run and PartSizer: the parts of a fetched run the ingest agent processes and
flushes in turn, each sized so that its changelog records fit one producer batch."""

from __future__ import annotations

import pytest

from streams.changelog import PartSizer
from streams.runs import OneRecord, split_run


def _run(sizes: list[int]) -> list[OneRecord]:
    return [OneRecord(i, None, b"x" * n) for i, n in enumerate(sizes)]


@pytest.mark.parametrize(
    ("sizes", "limit", "parts"),
    [
        ([10, 10, 10], 30, [[0, 1, 2]]),  # fits: the run itself
        ([10, 10, 10], 25, [[0, 1], [2]]),
        ([10, 10, 10], 10, [[0], [1], [2]]),
        ([50, 5, 5], 20, [[0], [1, 2]]),  # a record larger than the limit goes alone
        ([5, 50, 5], 20, [[0], [1], [2]]),
        ([1] * 7, 3, [[0, 1, 2], [3, 4, 5], [6]]),
    ],
)
def test_parts_are_consecutive_and_within_the_limit(
    sizes: list[int], limit: int, parts: list[list[int]]
) -> None:
    run = _run(sizes)
    got = [[r.offset for r in part] for part in split_run(run, lambda: limit)]
    assert got == parts
    assert [r for part in split_run(run, lambda: limit) for r in part] == run


def test_a_run_that_fits_is_handed_over_as_it_is() -> None:
    run = _run([10, 10])
    (only,) = split_run(run, lambda: 100)
    assert only is run


def test_the_limit_is_asked_anew_for_each_part_after_the_last_was_processed() -> None:
    limits = iter([25, 10, 100])
    asked: list[int] = []

    def limit() -> int:
        asked.append(1)
        return next(limits)

    parts = split_run(_run([10] * 6), limit)
    assert [r.offset for r in next(parts)] == [0, 1] and len(asked) == 1
    assert [r.offset for r in next(parts)] == [2] and len(asked) == 2
    assert [r.offset for r in next(parts)] == [3, 4, 5]
    assert next(parts, None) is None


def test_a_part_s_limit_follows_the_largest_recent_changelog_ratio() -> None:
    sizer = PartSizer(512 * 1024, headroom=2.0, first_ratio=4.0, remember=3, smallest=4096)
    assert sizer.limit() == 64 * 1024  # nothing seen yet
    sizer.observe(100_000, 130_000)
    assert sizer.limit() == 64 * 1024  # the first guess is still among the last three
    sizer.observe(100_000, 130_000)
    sizer.observe(100_000, 130_000)
    assert sizer.limit() == int(512 * 1024 / 2.6)
    sizer.observe(10_000, 80_000)  # busy units: 8 changelog bytes a source byte
    assert sizer.limit() == 512 * 1024 // 16
    sizer.observe(0, 500)  # a part of nothing, or one that wrote nothing, says nothing
    sizer.observe(500, 0)
    assert sizer.limit() == 512 * 1024 // 16
    sizer.observe(1, 1_000_000)
    assert sizer.limit() == 4096


def test_parts_sized_by_the_sizer_fit_a_batch_as_the_ratio_changes() -> None:
    """The agent's loop: parts whose changelog, at each part's own ratio, stays within
    the batch once the sizer has seen that ratio."""
    batch = 64 * 1024
    sizer = PartSizer(batch, first_ratio=1.0)
    run = _run([500] * 2000)
    ratio = {i: (1.0 if i < 1000 else 6.0) for i in range(2000)}
    over = 0
    for part in split_run(run, sizer.limit):
        source = sum(len(r.value) for r in part)
        changelog = int(sum(len(r.value) * ratio[r.offset] for r in part))
        over += changelog > batch
        sizer.observe(source, changelog)
    assert over == 1  # the part in which the ratio jumped past the headroom; none after
