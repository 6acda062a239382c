"""Decoding: every malformed event gets a reason; good neighbours survive."""

from __future__ import annotations

import math
import sys
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.config import parse_config
from monitor.events import Exposure, Telemetry
from streams.decode import Decoder, _WireExposure, _WireTelemetry

DECODER_CONFIG = parse_config(
    """
experiments:
  - {name: e, variants: [c, t], control: c, stages: [50], metrics: [{name: m}]}
"""
)
DECODER = Decoder(DECODER_CONFIG, max_message_bytes=4096)
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


LIVE_CONFIG = parse_config(
    """
experiments:
  - {name: e, variants: [c, t], control: c, stages: [50],
     metrics: [{name: m, min_value: 0, max_value: 100}]}
  - {name: f, variants: [c, t], control: c, stages: [50],
     metrics: [{name: m, max_value: 10}, {name: free}]}
"""
)
LIVE = Decoder(
    LIVE_CONFIG,
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


# --- runs of messages ---------------------------------------------------------------------

#: messages a run may hold, good and bad; the adversarial ones try to make a newline-joined
#: decode map events to the wrong message (two values in one message, a value split across
#: two messages, an empty message that yields none)
RUN_MESSAGES = [
    orjson.dumps(GOOD),
    orjson.dumps({**GOOD, "event_id": "2", "value": 3.5}),
    orjson.dumps({**GOOD, "event_id": "3", "ts": "2026-01-01T01:00:00+01:00"}),
    orjson.dumps({**GOOD, "metric": "zzz"}),
    orjson.dumps({**GOOD, "ts": 0}),
    orjson.dumps({**GOOD, "value": "x"}),
    orjson.dumps([GOOD, {**GOOD, "event_id": "4"}]),
    orjson.dumps(GOOD) + b"\n" + orjson.dumps({**GOOD, "event_id": "5"}),
    orjson.dumps(GOOD) + b" " + orjson.dumps({**GOOD, "event_id": "6"}),
    b'{"event_id": "7", "ts": 1, "unit_id": "u", "metric": "m", "value": [',
    b"1]}",
    b'{"event_id": "8", "ts": 1, "unit_id": "u", "metric": "m", "value": 1, "x": {}',
    b"",
    b"   ",
    b"{nope}",
    b"{}",
    orjson.dumps({**GOOD, "unit_id": "caf\u00e9"}),
    b'{"event_id": "ab\xffcd", "ts": 1, "unit_id": "u"}',
    b"[" + b",".join([orjson.dumps(GOOD)] * 200) + b"]",
]


#: live limits and a small size limit, so time, value and size checks all take part
LIVE_RUN = Decoder(LIVE_CONFIG, max_message_bytes=4096, max_age_seconds=1e9, clock=lambda: 1e6)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(RUN_MESSAGES), max_size=12))
def test_a_run_decodes_exactly_as_its_messages_one_by_one(raws: list[bytes]) -> None:
    run = LIVE_RUN.telemetry_run(raws)
    assert run.by_message(len(raws)) == [LIVE_RUN.telemetry(raw) for raw in raws]
    assert sorted(run.origin) == run.origin and sorted(i for i, _ in run.rejected) == [
        i for i, _ in run.rejected
    ]


def test_a_run_of_exposures_decodes_exactly_as_its_messages_one_by_one() -> None:
    raws = [
        orjson.dumps({**EXPOSURE, "event_id": str(i), "stage": [50, None, 25][i % 3]})
        for i in range(9)
    ]
    for part in (raws, raws[:2], raws[:1], []):
        decoded = DECODER.exposures_run(part).by_message(len(part))
        assert decoded == [DECODER.exposures(raw) for raw in part]


def test_a_run_of_single_events_is_decoded_in_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one-call path is taken (the point of it), and reads the clock once."""
    reads: list[int] = []
    decoder = Decoder(
        LIVE_CONFIG, max_age_seconds=None, max_future_seconds=60,
        clock=lambda: reads.append(1) or 1_000_000.0,
    )  # fmt: skip
    monkeypatch.setattr(decoder, "_decode", lambda *_: pytest.fail("decoded one by one"))
    raws = [orjson.dumps({**GOOD, "event_id": str(i), "metric": "free"}) for i in range(5)]
    raws.append(orjson.dumps({**GOOD, "metric": "zzz"}))
    run = decoder.telemetry_run(raws)
    assert [e.event_id for e in run.events] == ["0", "1", "2", "3", "4"]
    assert run.origin == [0, 1, 2, 3, 4]
    assert [(i, b.reason, b.index, b.raw) for i, b in run.rejected] == [
        (5, "unknown_metric", None, raws[-1])
    ]
    assert len(reads) == 1


def test_a_message_with_two_values_takes_the_run_back_to_one_by_one() -> None:
    """Joined with newlines, ``{a} {b}`` plus an empty message would count one value per
    message; the empty message is not an object, so the run is decoded one by one."""
    two = orjson.dumps(GOOD) + b" " + orjson.dumps({**GOOD, "event_id": "2"})
    decoded = DECODER.telemetry_run([two, b"", orjson.dumps(GOOD)]).by_message(3)
    assert [[e.event_id for e in good] for good, _ in decoded] == [[], [], ["1"]]
    assert [[b.reason for b in bad] for _, bad in decoded] == [["bad_json"], ["bad_json"], []]


# --- the typed decode and its screen --------------------------------------------------------


@pytest.mark.parametrize(
    ("struct", "wire"), [(Telemetry, _WireTelemetry), (Exposure, _WireExposure)]
)
def test_the_event_structs_take_what_the_wire_types_take_but_rfc3339_times(
    struct: type, wire: type
) -> None:
    """Messages decode straight into the event structs, falling back to the wire types for
    RFC 3339 times: every other field must carry the same type and bounds in both."""
    ours, theirs = (
        msgspec.json.schema(t)["$defs"][t.__name__] for t in (struct, wire)
    )  # fmt: skip
    assert ours["required"] == theirs["required"]
    assert {k: v for k, v in ours["properties"].items() if k != "ts"} == {
        k: v for k, v in theirs["properties"].items() if k != "ts"
    }


NOW = 1_000_000.0
#: values at and around every edge the full check draws
EDGE_TS = st.sampled_from(
    [-1.0, 0.0, 5e-324, 1.0, NOW - 3600, NOW - 3600.0001, NOW + 60, NOW + 60.0001, NOW,
     math.inf, -math.inf, math.nan, sys.float_info.max]
)  # fmt: skip
EDGE_VALUE = st.sampled_from(
    [-0.5, -0.0, 0.0, 10.0, 10.5, 100.0, 100.5, -1e300, 1e300, math.inf, -math.inf, math.nan]
)
SCREENED = [
    Decoder(LIVE_CONFIG, max_age_seconds=3600, max_future_seconds=60, clock=lambda: NOW),
    Decoder(LIVE_CONFIG, max_age_seconds=None, max_future_seconds=60, clock=lambda: NOW),
    Decoder(LIVE_CONFIG),
    # limits that settings accept but that bound nothing (found by review: an infinite
    # future limit let an infinite time through the screen)
    Decoder(LIVE_CONFIG, max_age_seconds=math.inf, max_future_seconds=math.inf, clock=lambda: NOW),
]


EDGE_TELEMETRY = st.builds(
    Telemetry,
    event_id=st.just("1"),
    ts=EDGE_TS,
    unit_id=st.just("u"),
    metric=st.sampled_from(["m", "free", "zzz"]),
    value=EDGE_VALUE,
    experiment=st.sampled_from([None, "e", "zzz"]),
    variant=st.sampled_from([None, "c", "q"]),
)
EDGE_EXPOSURE = st.builds(
    Exposure,
    event_id=st.just("x"),
    ts=EDGE_TS,
    experiment=st.sampled_from(["e", "f", "zzz"]),
    unit_id=st.just("u"),
    variant=st.sampled_from(["c", "t", "q"]),
    covariates=st.dictionaries(st.sampled_from(["a", "b"]), EDGE_VALUE, max_size=2),
    stage=st.sampled_from([None, 50.0, 25.0, math.nan]),
)


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(SCREENED),
    st.lists(EDGE_TELEMETRY, max_size=8),
    st.lists(EDGE_EXPOSURE, max_size=8),
)
def test_the_screens_pass_only_what_the_full_checks_accept_as_is(
    decoder: Decoder, telemetry: list[Telemetry], exposures: list[Exposure]
) -> None:
    now = decoder._now()
    kinds: list[tuple[Any, Any, list[Any]]] = [
        (decoder._screen_telemetry, decoder._check_telemetry, telemetry),
        (decoder._screen_exposures, decoder._check_exposure, exposures),
    ]
    for screen, check, events in kinds:
        doubt = set(screen(events, now))
        passed = [e for i, e in enumerate(events) if i not in doubt]
        assert all(check(e, now) is e for e in passed)


def test_the_screen_lets_the_common_event_through_and_doubts_the_rest() -> None:
    """The screen is the fast path, so it must pass untagged, in-range events (a screen
    that doubted everything would pass the property test above)."""
    decoder = SCREENED[0]
    good = Telemetry("1", NOW, "u", "m", 5.0)
    doubted = [
        Telemetry("1", NOW, "u", "m", 5.0, "e"),  # tagged: the full check resolves it
        Telemetry("1", NOW + 61, "u", "m", 5.0),
        Telemetry("1", NOW, "u", "m", 10.5),
        Telemetry("1", NOW, "u", "zzz", 5.0),
    ]
    assert decoder._screen_telemetry([good, *doubted], NOW) == [1, 2, 3, 4]
    exposure = Exposure("x", NOW, "e", "u", "t", covariates={"a": 1.0}, stage=50.0)
    assert decoder._screen_exposures([exposure], NOW) == []


def test_a_message_of_rfc3339_times_and_one_of_epochs_decode_alike() -> None:
    """The typed decode refuses the RFC 3339 string; the wire type takes it, and the
    event is the same struct either way."""
    epoch = DECODER.telemetry(orjson.dumps({**GOOD, "ts": 1767225600.0}))
    text = DECODER.telemetry(orjson.dumps({**GOOD, "ts": "2026-01-01T00:00:00Z"}))
    run = DECODER.telemetry_run([orjson.dumps({**GOOD, "ts": "2026-01-01T00:00:00Z"})] * 2)
    assert epoch == text and type(epoch[0][0]) is Telemetry
    assert run.events == epoch[0] * 2 and run.rejected == []


def test_a_runs_events_carry_their_position_in_their_message() -> None:
    """Numbered as the message's rejections are: array element, NDJSON line, 0 for an
    object."""
    ndjson = orjson.dumps(GOOD) + b"\n{broken\n\n" + orjson.dumps({**GOOD, "event_id": "3"})
    raws = [
        orjson.dumps([GOOD, 5, {**GOOD, "event_id": "2"}]),
        ndjson,
        orjson.dumps(GOOD),
    ]
    run = DECODER.telemetry_run(raws)
    assert run.origin == [0, 0, 1, 1, 2] and run.position == [0, 2, 0, 3, 0]
    assert [(i, r.index) for i, r in run.rejected] == [(0, 1), (1, 1)]
    single = DECODER.telemetry_run([orjson.dumps(GOOD)] * 3)
    assert single.position == [0, 0, 0]


#: deeper than msgspec decodes (it raises RecursionError, not a DecodeError, past ~1000)
DEEP = b"[" * 2000 + b"]" * 2000


@pytest.mark.parametrize(
    "raw",
    [
        DEEP,
        b'{"event_id": ' + DEEP + b"}",
        b"[" + orjson.dumps(GOOD) + b"," + DEEP + b"]",
    ],
)
def test_regression_json_nested_too_deeply_is_a_dead_letter_not_a_crash(raw: bytes) -> None:
    decoder = Decoder(DECODER_CONFIG, max_message_bytes=1 << 20)
    good, bad = decoder.telemetry(raw)
    assert good == [] and [b.reason for b in bad] == ["bad_json"]
    assert "nested too deeply" in bad[0].detail and bad[0].raw == raw


def test_regression_a_deeply_nested_line_costs_only_its_own_dead_letter() -> None:
    decoder = Decoder(DECODER_CONFIG, max_message_bytes=1 << 20)
    ndjson = orjson.dumps(GOOD) + b"\n" + DEEP + b"\n" + orjson.dumps({**GOOD, "event_id": "3"})
    good, bad = decoder.telemetry(ndjson)
    assert [g.event_id for g in good] == ["1", "3"]
    assert [(b.reason, b.index) for b in bad] == [("bad_json", 1)]
    run = decoder.telemetry_run([orjson.dumps(GOOD), DEEP, orjson.dumps({**GOOD, "event_id": "2"})])
    assert [e.event_id for e in run.events] == ["1", "2"] and run.origin == [0, 2]
    assert [(i, r.reason) for i, r in run.rejected] == [(1, "bad_json")]


@pytest.mark.parametrize("literal", [b"1e999", b"-1e999", b"2e400"])
def test_regression_an_infinite_literal_costs_only_its_own_event(literal: bytes) -> None:
    # 1e999 is valid JSON that msgspec refuses while parsing: the whole array used to be one
    # non_finite dead letter (index None), its good events with it
    bad_event = orjson.dumps({**GOOD, "event_id": "2", "value": 0}).replace(
        b'"value":0', b'"value":' + literal
    )
    envelope = b"[" + orjson.dumps(GOOD) + b"," + bad_event + b"]"
    ndjson = orjson.dumps(GOOD) + b"\n" + bad_event
    for raw in (envelope, ndjson):
        good, bad = DECODER.telemetry(raw)
        assert [g.event_id for g in good] == ["1"]
        assert [(b.reason, b.index) for b in bad] == [("non_finite", 1)]
    (bad_alone,) = DECODER.telemetry(bad_event)[1]
    assert (bad_alone.reason, bad_alone.index, bad_alone.raw) == ("non_finite", None, bad_event)
