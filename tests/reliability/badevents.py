"""Malformed events, each with the one dead-letter reason the worker must give it.

Every kind the reliability issue lists: wrong types, missing fields, NaN and infinity,
negative or absurd values, future and ancient timestamps, oversized payloads, non-UTF-8
bytes, unknown experiments, variants and metrics. :func:`bad_event` derives one from a good
event with a seeded ``random.Random``; the hypothesis strategy draws the same kinds.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from hypothesis import strategies as st

__all__ = ["KINDS", "BadEvent", "bad_event", "bad_events"]

#: the worker's RAMPMON_MAX_MESSAGE_BYTES in these tests: oversized payloads stay cheap
MAX_MESSAGE_BYTES = 16_384
DAY = 86_400.0


@dataclass(frozen=True)
class BadEvent:
    topic: str  # "exposures" or "telemetry"
    raw: bytes
    reason: str
    kind: str


Good = Mapping[str, Any]
Maker = Callable[[random.Random, Good, Good, float], tuple[str, bytes, str]]


def _dump(doc: Any) -> bytes:
    return orjson.dumps(doc)


def _name(rng: random.Random) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(3, 20)))


def _truncated(rng: random.Random, e: Good, t: Good, now: float) -> tuple[str, bytes, str]:
    raw = _dump(t)
    return "telemetry", raw[: rng.randint(1, len(raw) - 1)], "bad_json"


def _not_utf8(rng: random.Random, e: Good, t: Good, now: float) -> tuple[str, bytes, str]:
    # a byte UTF-8 never uses (0xFE, 0xFF), a lone continuation byte or a broken pair
    invalid = rng.choice([b"\xff", b"\xfe", b"\x80", b"\xbf", b"\xc3\x28", b"\xe2\x28\xa1"])
    junk = bytes(rng.randint(0x61, 0x7A) for _ in range(rng.randint(0, 20))) + invalid
    return rng.choice(["telemetry", "exposures"]), b'{"event_id": "' + junk + b'"}', "bad_json"


def _not_object(rng: random.Random, e: Good, t: Good, now: float) -> tuple[str, bytes, str]:
    raw = rng.choice([b"42", b'"text"', b"null", b"true", b"-1.5"])
    return rng.choice(["telemetry", "exposures"]), raw, "not_an_object"


def _missing(rng: random.Random, e: Good, t: Good, now: float) -> tuple[str, bytes, str]:
    topic, doc = rng.choice([("telemetry", t), ("exposures", e)])
    required = ["event_id", "ts", "unit_id"] + (
        ["metric", "value"] if topic == "telemetry" else ["experiment", "variant"]
    )
    drop = rng.choice(required)
    return topic, _dump({k: v for k, v in doc.items() if k != drop}), "missing_field"


def _wrong_type(rng: random.Random, e: Good, t: Good, now: float) -> tuple[str, bytes, str]:
    field, value = rng.choice(
        [("value", "many"), ("value", [1]), ("value", {"a": 1}), ("ts", [now]),
         ("unit_id", 17), ("metric", 3.5), ("value", True)]
    )  # fmt: skip
    return "telemetry", _dump({**t, field: value}), "wrong_type"


def _non_finite(rng: random.Random, e: Good, t: Good, now: float) -> tuple[str, bytes, str]:
    literal = rng.choice(["1e999", "-1e999", "2e400"])
    if rng.random() < 0.5:
        raw = _dump({**t, "value": 0}).replace(b'"value":0', f'"value":{literal}'.encode())
        return "telemetry", raw, "non_finite"
    doc = {**e, "covariates": {"pre_tasks_28": 0}}
    raw = _dump(doc).replace(b'"pre_tasks_28":0', f'"pre_tasks_28":{literal}'.encode())
    return "exposures", raw, "non_finite"


def _bad_time(rng: random.Random, e: Good, t: Good, now: float) -> tuple[str, bytes, str]:
    ts = rng.choice(
        [0, -5.0, "2026-01-01T00:00:00", now + rng.uniform(1, 365) * DAY,
         now - rng.uniform(31, 3650) * DAY, "not a date"]
    )  # fmt: skip
    topic, doc = rng.choice([("telemetry", t), ("exposures", e)])
    return topic, _dump({**doc, "ts": ts}), "bad_timestamp"


def _absurd(rng: random.Random, e: Good, t: Good, now: float) -> tuple[str, bytes, str]:
    metric, value = rng.choice(
        [("latency_ms", -rng.uniform(0.001, 1e6)), ("latency_ms", rng.uniform(6e5 + 1, 1e12)),
         ("error_session", rng.uniform(1.001, 1e6)), ("tasks", -rng.uniform(1, 1e3)),
         ("revenue", rng.choice([1e7, -1e9, 1e300]))]
    )  # fmt: skip
    return "telemetry", _dump({**t, "metric": metric, "value": value}), "invalid_value"


def _invalid(rng: random.Random, e: Good, t: Good, now: float) -> tuple[str, bytes, str]:
    topic, doc = rng.choice([("telemetry", t), ("exposures", e)])
    field, value = rng.choice([("unit_id", ""), ("event_id", ""), ("unit_id", "u" * 300)])
    if topic == "exposures" and rng.random() < 0.3:
        field, value = "stage", rng.choice([0, 33, 99.5])
    return topic, _dump({**doc, field: value}), "invalid_value"


def _unknown(rng: random.Random, e: Good, t: Good, now: float) -> tuple[str, bytes, str]:
    which = rng.choice(["experiment", "variant", "metric", "tagged_experiment"])
    if which == "experiment":
        return "exposures", _dump({**e, "experiment": _name(rng)}), "unknown_experiment"
    if which == "variant":
        return "exposures", _dump({**e, "variant": _name(rng)}), "unknown_variant"
    if which == "metric":
        return "telemetry", _dump({**t, "metric": _name(rng)}), "unknown_metric"
    return "telemetry", _dump({**t, "experiment": _name(rng)}), "unknown_experiment"


def _oversized(rng: random.Random, e: Good, t: Good, now: float) -> tuple[str, bytes, str]:
    padding = "x" * (MAX_MESSAGE_BYTES + rng.randint(1, 4096))
    return "telemetry", _dump({**t, "padding": padding}), "too_large"


KINDS: dict[str, Maker] = {
    "truncated_json": _truncated,
    "non_utf8": _not_utf8,
    "not_an_object": _not_object,
    "missing_field": _missing,
    "wrong_type": _wrong_type,
    "non_finite": _non_finite,
    "bad_timestamp": _bad_time,
    "absurd_value": _absurd,
    "invalid_value": _invalid,
    "unknown_name": _unknown,
    "oversized": _oversized,
}


def bad_event(
    kind: str, rng: random.Random, exposure: Good, telemetry: Good, now: float
) -> BadEvent:
    topic, raw, reason = KINDS[kind](rng, exposure, telemetry, now)
    return BadEvent(topic, raw, reason, kind)


def bad_events(
    n: int, seed: int, exposures: list[Good], telemetry: list[Good], now: float
) -> list[BadEvent]:
    """``n`` bad events cycling through every kind, derived from random good events."""
    rng = random.Random(seed)
    kinds = sorted(KINDS)
    return [
        bad_event(kinds[i % len(kinds)], rng, rng.choice(exposures), rng.choice(telemetry), now)
        for i in range(n)
    ]


def strategy(exposure: Good, telemetry: Good, now: float) -> st.SearchStrategy[BadEvent]:
    """Hypothesis draws a kind and a seed; the maker does the rest."""
    return st.builds(
        lambda kind, seed: bad_event(kind, random.Random(seed), exposure, telemetry, now),
        st.sampled_from(sorted(KINDS)),
        st.integers(0, 2**32 - 1),
    )
