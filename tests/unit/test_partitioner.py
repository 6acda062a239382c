"""The numpy murmur2 against aiokafka's pure-Python one (the Java client's function)."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import murmur2
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.partitioner import murmur2_many, partitions_of
from streams.producer import partition_of


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=70), max_size=40))
def test_murmur2_many_is_aiokafkas_murmur2_of_each_key(keys: list[bytes]) -> None:
    assert murmur2_many(keys).tolist() == [murmur2(k) for k in keys]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=8), max_size=30), st.lists(st.binary(max_size=1100), max_size=3))
def test_long_keys_among_short_ones_hash_in_their_own_width_group(
    short: list[bytes], long: list[bytes]
) -> None:
    """Keys are padded per width group (review: one 512-byte id padded a whole run)."""
    keys = [*short[:15], *long, *short[15:]]
    assert murmur2_many(keys).tolist() == [murmur2(k) for k in keys]


@pytest.mark.parametrize(
    "keys",
    [
        [],
        [b""],
        [b"a", b"ab", b"abc", b"abcd", b"abcde"],  # every tail length, in one call
        [b"\xff" * 33, b""],  # high bytes, and a short key beside a long one
        [b"x" * n for n in (1023, 1024, 1025, 4, 8, 9)],  # across the width groups' edges
    ],
)
def test_murmur2_many_edges(keys: list[bytes]) -> None:
    assert murmur2_many(keys).tolist() == [murmur2(k) for k in keys]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=30), max_size=30), st.integers(1, 64))
def test_partitions_of_agrees_with_the_producer(unit_ids: list[str], partitions: int) -> None:
    assert partitions_of(unit_ids, partitions) == [partition_of(u, partitions) for u in unit_ids]
