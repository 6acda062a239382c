"""Decoding: every malformed event gets a reason; good neighbours survive."""

from __future__ import annotations

import orjson
import pytest

from monitor.config import parse_config
from streams.decode import Decoder

DECODER = Decoder(
    parse_config(
        """
experiments:
  - {name: e, variants: [c, t], control: c, stages: [50], metrics: [{name: m}]}
"""
    ),
    max_message_bytes=4096,
)
GOOD = {"event_id": "1", "ts": 1.5, "unit_id": "u", "metric": "m", "value": 2}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{nope", "bad_json"),
        (b"\xff\xfe", "bad_json"),
        (b"7", "not_an_object"),
        (orjson.dumps({**GOOD, "value": "x"}), "wrong_type"),
        (orjson.dumps({**GOOD, "value": True}), "wrong_type"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "metric"}), "missing_field"),
        (b'{"event_id":"1","ts":1,"unit_id":"u","metric":"m","value":1e999}', "non_finite"),
        (orjson.dumps({**GOOD, "ts": "2026-01-01T00:00:00"}), "bad_timestamp"),
        (orjson.dumps({**GOOD, "ts": 0}), "bad_timestamp"),
        (orjson.dumps({**GOOD, "metric": "zzz"}), "unknown_metric"),
        (orjson.dumps({**GOOD, "experiment": "zzz"}), "unknown_experiment"),
        (orjson.dumps({**GOOD, "experiment": "e", "variant": "q"}), "unknown_variant"),
        (orjson.dumps({**GOOD, "unit_id": ""}), "invalid_value"),
        (b"[" + b",".join([orjson.dumps(GOOD)] * 200) + b"]", "too_large"),
    ],
)
def test_reasons(raw: bytes, reason: str) -> None:
    good, bad = DECODER.telemetry(raw)
    assert good == [] and [b.reason for b in bad] == [reason]
    assert bad[0].detail


EXPOSURE = {"event_id": "x", "ts": 1.5, "experiment": "e", "unit_id": "u", "variant": "t"}


@pytest.mark.parametrize(
    ("stage", "reason"), [(25, "invalid_value"), (0, "invalid_value"), ("50", "wrong_type")]
)
def test_an_exposure_stage_must_be_a_stage_of_the_experiment(stage: object, reason: str) -> None:
    good, bad = DECODER.exposures(orjson.dumps({**EXPOSURE, "stage": stage}))
    assert good == [] and [b.reason for b in bad] == [reason]


def test_an_exposure_stage_is_optional_and_kept() -> None:
    (with_stage,), _ = DECODER.exposures(orjson.dumps({**EXPOSURE, "stage": 50}))
    (without,), _ = DECODER.exposures(orjson.dumps(EXPOSURE))
    assert (with_stage.stage, without.stage) == (50.0, None)


def test_envelope_keeps_good_neighbours_and_ndjson_works() -> None:
    good, bad = DECODER.telemetry(orjson.dumps([GOOD, 5, {**GOOD, "event_id": "2"}]))
    assert [g.event_id for g in good] == ["1", "2"] and [b.index for b in bad] == [1]
    ndjson = orjson.dumps(GOOD) + b"\n{broken\n" + orjson.dumps({**GOOD, "event_id": "3"})
    good, bad = DECODER.telemetry(ndjson)
    assert [g.event_id for g in good] == ["1", "3"] and [b.reason for b in bad] == ["bad_json"]


def test_rfc3339_with_offset_is_epoch() -> None:
    good, _ = DECODER.telemetry(orjson.dumps({**GOOD, "ts": "2026-01-01T01:00:00+01:00"}))
    assert good[0].ts == 1767225600.0


LIVE = Decoder(
    parse_config(
        """
experiments:
  - {name: e, variants: [c, t], control: c, stages: [50],
     metrics: [{name: m, min_value: 0, max_value: 100}]}
  - {name: f, variants: [c, t], control: c, stages: [50],
     metrics: [{name: m, max_value: 10}, {name: free}]}
"""
    ),
    max_age_seconds=3600,
    max_future_seconds=60,
    clock=lambda: 1_000_000.0,
)


@pytest.mark.parametrize(
    ("ts", "value", "reason"),
    [
        (1_000_000.0 - 3601, 1, "bad_timestamp"),  # ancient
        (1_000_000.0 + 61, 1, "bad_timestamp"),  # from the future
        (1_000_000.0, -0.5, "invalid_value"),  # below e's minimum
        (1_000_000.0, 10.5, "invalid_value"),  # above f's maximum: the narrowest range wins
        (1_000_000.0 - 3599, 10, None),
        (1_000_000.0 + 59, 0, None),
    ],
)
def test_live_limits_on_time_and_value(ts: float, value: float, reason: str | None) -> None:
    good, bad = LIVE.telemetry(orjson.dumps({**GOOD, "ts": ts, "value": value}))
    assert [b.reason for b in bad] == ([] if reason is None else [reason])
    assert len(good) == (reason is None)
    if bad:
        assert bad[0].detail


def test_a_metric_without_bounds_takes_any_finite_value() -> None:
    good, bad = LIVE.telemetry(orjson.dumps({**GOOD, "metric": "free", "ts": 1e6, "value": -1e12}))
    assert len(good) == 1 and bad == []


def test_offline_decoding_has_no_time_limits() -> None:
    good, _ = DECODER.telemetry(orjson.dumps({**GOOD, "ts": 1.0}))
    assert len(good) == 1


def test_regression_a_non_utf8_byte_inside_a_string_is_a_dead_letter_not_a_crash() -> None:
    """Found by the reliability fuzz test: msgspec raises UnicodeDecodeError (not a
    DecodeError) for invalid UTF-8 inside a JSON string, which escaped the decoder and
    would have stopped the ingest agent."""
    good, bad = DECODER.telemetry(b'{"event_id": "ab\xffcd", "ts": 1, "unit_id": "u"}')
    assert good == [] and [b.reason for b in bad] == ["bad_json"]
    assert "UTF-8" in bad[0].detail


def test_non_ascii_utf8_is_decoded_and_kept_as_is() -> None:
    """ASCII skips the UTF-8 check (it is UTF-8); other valid UTF-8 still passes it."""
    good, bad = DECODER.telemetry(orjson.dumps({**GOOD, "unit_id": "caf\u00e9-\U0001f680"}))
    assert bad == [] and [e.unit_id for e in good] == ["caf\u00e9-\U0001f680"]


def test_a_timestamp_string_that_is_no_time_is_a_bad_timestamp() -> None:
    good, bad = DECODER.telemetry(orjson.dumps({**GOOD, "ts": "not a date"}))
    assert good == [] and [b.reason for b in bad] == ["bad_timestamp"]
