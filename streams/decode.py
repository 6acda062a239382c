"""Bytes from Kafka to validated events, with a reason for everything rejected.

A message carries one JSON event, a JSON array of events, or newline-delimited JSON. The
common case (all events valid) is one typed msgspec decode of the whole message, straight
into the :mod:`monitor.events` structs, and one screen of the events' values; only a
message that fails it is re-examined event by event, so one bad event costs its own
dead letter and never its neighbours.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, NamedTuple, TypeVar

import msgspec

from monitor.config import RampmonConfig
from monitor.events import Exposure, Telemetry, Text

__all__ = ["DecodedRun", "Decoder", "RejectReason", "Rejected"]

RejectReason = Literal[
    "too_large",
    "bad_json",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "invalid_value",
    "non_finite",
    "bad_timestamp",
    "unknown_experiment",
    "unknown_variant",
    "unknown_metric",
    "misrouted",
    # not the event's fault: processing it raised (a bug; streams.ingest.Ingest.isolate)
    "processing_error",
]

Timestamp = float | datetime

#: the largest finite float: ``x <= FLOAT_MAX`` is false for infinity and NaN
FLOAT_MAX = sys.float_info.max

#: JSON to Python objects for the event-by-event path. msgspec refuses a float literal out
#: of range (``1e999``) while parsing, which would make a whole array one dead letter; as
#: ``float`` it is infinity, and only its own event is rejected (non_finite)
_UNTYPED = msgspec.json.Decoder(float_hook=float)


# The wire types: what a message may hold beyond the event structs themselves, an RFC 3339
# time. A message of events with epoch times decodes into the structs directly.
class _WireExposure(msgspec.Struct):
    event_id: Text
    ts: Timestamp
    experiment: Text
    unit_id: Text
    variant: Text
    attributes: Annotated[dict[Text, Text], msgspec.Meta(max_length=32)] = {}
    covariates: Annotated[dict[Text, float], msgspec.Meta(max_length=64)] = {}
    stage: float | None = None


class _WireTelemetry(msgspec.Struct):
    event_id: Text
    ts: Timestamp
    unit_id: Text
    metric: Text
    value: float
    experiment: Text | None = None
    variant: Text | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """A rejected event: why, and its bytes, whole (the message's own for a message
    rejected as one). Its dead letter embeds at most the first 64 KiB of them."""

    reason: RejectReason
    detail: str
    index: int | None
    raw: bytes


W = TypeVar("W", _WireExposure, _WireTelemetry)
V = TypeVar("V", Exposure, Telemetry)


class DecodedRun(NamedTuple, Generic[V]):
    """A run of messages, decoded: every good event, in message order, with the index of
    its message in the run and its position in that message; and every rejection with
    the index of its message.

    An event's position is its element of a JSON array or its line of NDJSON (0 for a
    message that is one object), numbered as the message's rejections' ``index`` is: a
    dead letter's ``source`` (topic, partition, offset, index) then names one event.
    """

    events: list[V]
    origin: list[int]
    position: list[int]
    rejected: list[tuple[int, Rejected]]

    def by_message(self, messages: int) -> list[tuple[list[V], list[Rejected]]]:
        """Per message, its events and rejections: what decoding it alone gives."""
        out: list[tuple[list[V], list[Rejected]]] = [([], []) for _ in range(messages)]
        for event, i in zip(self.events, self.origin, strict=True):
            out[i][0].append(event)
        for i, rejected in self.rejected:
            out[i][1].append(rejected)
        return out


def _epoch(ts: Timestamp) -> float | None:
    if isinstance(ts, datetime):
        return None if ts.tzinfo is None else ts.timestamp()
    return float(ts)


class Decoder:
    """Decodes and validates both event kinds against the experiment configuration."""

    def __init__(
        self,
        config: RampmonConfig,
        *,
        max_message_bytes: int = 1_048_576,
        max_age_seconds: float | None = None,
        max_future_seconds: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``max_age_seconds`` / ``max_future_seconds`` bound event times against ``clock``
        (a live worker: an ancient event is a replayed backfill or a broken clock, one from
        the future a skewed clock); ``None`` for offline replays of any age."""
        self.max_message_bytes = max_message_bytes
        self._max_age = max_age_seconds
        self._max_future = max_future_seconds
        self._clock = clock
        self._bounds = _metric_bounds(config)
        #: the same with infinite limits made the largest finite floats, for the screen
        self._finite_bounds = {
            m: (max(low, -FLOAT_MAX), min(high, FLOAT_MAX))
            for m, (low, high) in self._bounds.items()
        }
        self._variants = {e.name: frozenset(e.variants) for e in config.experiments}
        self._stages = {e.name: tuple(e.stages) for e in config.experiments}
        # typed first (the structs themselves), then the wire types (RFC 3339 times)
        self._exp_fast = (
            msgspec.json.Decoder(list[Exposure] | Exposure),
            msgspec.json.Decoder(list[_WireExposure] | _WireExposure),
        )
        self._tel_fast = (
            msgspec.json.Decoder(list[Telemetry] | Telemetry),
            msgspec.json.Decoder(list[_WireTelemetry] | _WireTelemetry),
        )
        self._exp_lines = (msgspec.json.Decoder(Exposure), msgspec.json.Decoder(_WireExposure))
        self._tel_lines = (msgspec.json.Decoder(Telemetry), msgspec.json.Decoder(_WireTelemetry))
        self._encode = msgspec.json.Encoder()
        #: what _decode takes after the message, per event kind
        self._exposure_kind = (
            self._exp_fast,
            _WireExposure,
            self._screen_exposures,
            self._check_exposure,
        )
        self._telemetry_kind = (
            self._tel_fast,
            _WireTelemetry,
            self._screen_telemetry,
            self._check_telemetry,
        )

    def exposures(self, raw: bytes) -> tuple[list[Exposure], list[Rejected]]:
        good, _, bad = self._decode(raw, *self._exposure_kind)
        return good, bad

    def telemetry(self, raw: bytes) -> tuple[list[Telemetry], list[Rejected]]:
        good, _, bad = self._decode(raw, *self._telemetry_kind)
        return good, bad

    def exposures_run(self, raws: Sequence[bytes]) -> DecodedRun[Exposure]:
        """A run of messages' exposures: :meth:`exposures` of each, in one call if it can."""
        return self._decode_run(raws, self._exp_lines, *self._exposure_kind)

    def telemetry_run(self, raws: Sequence[bytes]) -> DecodedRun[Telemetry]:
        """A run of messages' telemetry: :meth:`telemetry` of each, in one call if it can."""
        return self._decode_run(raws, self._tel_lines, *self._telemetry_kind)

    def _decode_run(
        self,
        raws: Sequence[bytes],
        lines: tuple[msgspec.json.Decoder[Any], msgspec.json.Decoder[Any]],
        fast: tuple[msgspec.json.Decoder[Any], msgspec.json.Decoder[Any]],
        wire_type: type[W],
        screen: Callable[[list[V], float], list[int]],
        check: Callable[[Any, float], V | tuple[RejectReason, str]],
    ) -> DecodedRun[V]:
        """Producers that send one event per message would pay a message's Python overhead
        per event; a run of such messages is decoded as one newline-joined buffer.

        The joined decode maps events to messages one to one only when every message is a
        single JSON object with no newline. Such a message cannot yield zero events, and no
        value can run on into the next one (strings hold no raw newline, and after a
        closing ``}`` JSON allows no ``{``), so a message that yields two shows up as a
        count mismatch. The framing is checked on the joined buffer, in C: ``n - 1``
        newlines, each between a ``}`` and a ``{``. Any doubt, any non-ASCII byte, oversized
        message, decode or validation error: the messages are decoded one by one, exactly
        as :meth:`telemetry` / :meth:`exposures` would, and lose nothing.
        """
        run: DecodedRun[V] = DecodedRun([], [], [], [])
        n = len(raws)
        joined = b"\n".join(raws)
        if (
            n > 1
            and joined[:1] == b"{"
            and joined[-1:] == b"}"
            and joined.count(b"\n") == n - 1
            and joined.count(b"}\n{") == n - 1
            and joined.isascii()
            and max(map(len, raws)) <= self.max_message_bytes
        ):
            wires, typed = _first_decode(lines, joined, lines=True)
            if len(wires) == n:
                events, origin, failed = self._settle(wires, typed, screen, check)
                rejected = [(i, Rejected(why[0], why[1], None, raws[i])) for i, why in failed]
                return DecodedRun(events, origin, [0] * len(events), rejected)
        for i, raw in enumerate(raws):
            good, index, bad = self._decode(raw, fast, wire_type, screen, check)
            run.events.extend(good)
            run.origin.extend([i] * len(good))
            run.position.extend(index)
            run.rejected.extend((i, b) for b in bad)
        return run

    def _now(self) -> float:
        # one clock read per message or run, not per event: the bounds are minutes wide
        return self._clock() if self._max_age is not None or self._max_future is not None else 0.0

    def _settle(
        self,
        items: list[Any],
        typed: bool,
        screen: Callable[[list[V], float], list[int]],
        check: Callable[[Any, float], V | tuple[RejectReason, str]],
    ) -> tuple[list[V], list[int], list[tuple[int, tuple[RejectReason, str]]]]:
        """The good events among ``items``, their positions, and each rejected position
        with its reason. Typed items (event structs) that pass the screen are good as
        they are; only the rest take the full check, which gives the reason."""
        now = self._now()
        suspects = screen(items, now) if typed else range(len(items))
        if not suspects:
            return items, list(range(len(items))), []
        events: list[V] = []
        origin: list[int] = []
        bad: list[tuple[int, tuple[RejectReason, str]]] = []
        doubt = set(suspects)
        for i, item in enumerate(items):
            checked = check(item, now) if i in doubt else item
            if isinstance(checked, tuple):
                bad.append((i, checked))
            else:
                events.append(checked)
                origin.append(i)
        return events, origin, bad

    def _ts_window(self, now: float) -> tuple[float, float]:
        """``low <= ts <= high`` is the time check of :meth:`_check_common`, for a float:
        positive, finite, and inside the live limits."""
        low = 5e-324  # the smallest positive float: ``ts >= low`` is ``ts > 0``
        if self._max_age is not None:
            low = max(low, now - self._max_age)
        # capped: an infinite limit must not let an infinite time through
        high = FLOAT_MAX if self._max_future is None else min(FLOAT_MAX, now + self._max_future)
        return low, high

    def _screen_telemetry(self, events: list[Telemetry], now: float) -> list[int]:
        """Positions of the events the full check must see: any that might fail it, and
        tagged ones. One comprehension, no call per event: this runs for every event."""
        low, high = self._ts_window(now)
        bounds = self._finite_bounds
        no = (FLOAT_MAX, -FLOAT_MAX)  # an unknown metric: no value passes
        return [
            i
            for i, e in enumerate(events)
            if not (
                low <= e.ts <= high
                and (b := bounds.get(e.metric, no))[0] <= e.value <= b[1]
                and e.experiment is None
                and e.variant is None
            )
        ]

    def _screen_exposures(self, events: list[Exposure], now: float) -> list[int]:
        """As :meth:`_screen_telemetry`, for exposures."""
        low, high = self._ts_window(now)
        variants, stages = self._variants, self._stages
        return [
            i
            for i, e in enumerate(events)
            if not (
                low <= e.ts <= high
                and e.variant in variants.get(e.experiment, ())
                and (e.stage is None or e.stage in stages[e.experiment])
                and (not e.covariates or all(map(math.isfinite, e.covariates.values())))
            )
        ]

    def _decode(
        self,
        raw: bytes,
        fast: tuple[msgspec.json.Decoder[Any], msgspec.json.Decoder[Any]],
        wire_type: type[W],
        screen: Callable[[list[V], float], list[int]],
        check: Callable[[Any, float], V | tuple[RejectReason, str]],
    ) -> tuple[list[V], list[int], list[Rejected]]:
        """One message's good events, each one's index in the message, and its rejections."""
        if len(raw) > self.max_message_bytes:
            detail = f"message is {len(raw)} bytes, limit {self.max_message_bytes}"
            # whole: the dead letter embeds the head of it (streams.deadletter)
            return [], [], [Rejected("too_large", detail, None, raw)]
        good: list[V] = []
        bad: list[Rejected] = []
        try:
            # msgspec checks UTF-8 inside strings lazily and raises UnicodeDecodeError, not
            # a DecodeError: a stray byte in a string would otherwise crash the agent.
            # ASCII (most JSON) is UTF-8, and isascii() allocates nothing
            raw.isascii() or raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return [], [], [Rejected("bad_json", f"not UTF-8: {exc.reason} at byte {exc.start}",
                                     None, raw)]  # fmt: skip
        decoded, typed = _first_decode(fast, raw, lines=False)
        if isinstance(decoded, list):
            good, indexes, rejected = self._settle(decoded, typed, screen, check)
            for i, (reason, detail) in rejected:
                bad.append(Rejected(reason, detail, i, self._encode.encode(decoded[i])))
            return good, indexes, bad
        if decoded is not None:
            # one event: the full check straight away, a screen would only add calls
            checked = check(decoded, self._now())
            if isinstance(checked, tuple):
                return [], [], [Rejected(checked[0], checked[1], None, raw)]
            return [checked], [0], []
        items = self._slow_items(raw, wire_type, bad)
        now = self._now()
        indexes = []
        for index, wire in items:
            checked = check(wire, now)
            if isinstance(checked, tuple):
                original = raw if index is None else self._encode.encode(wire)
                bad.append(Rejected(checked[0], checked[1], index, original))
            else:
                good.append(checked)
                indexes.append(0 if index is None else index)
        return good, indexes, bad

    def _slow_items(
        self, raw: bytes, wire_type: type[W], bad: list[Rejected]
    ) -> list[tuple[int | None, Any]]:
        """Find the bad events one by one; keep every good one."""
        try:
            doc: Any = _UNTYPED.decode(raw)
            elements: list[tuple[int | None, Any]] = (
                list(enumerate(doc)) if isinstance(doc, list) else [(None, doc)]
            )
        except (msgspec.DecodeError, RecursionError) as exc:
            lines = raw.splitlines()
            if len(lines) < 2:
                bad.append(Rejected(_json_reason(exc), _json_detail(exc), None, raw))
                return []
            elements = []
            for i, line in enumerate(lines):
                if not line.strip():
                    continue
                try:
                    elements.append((i, _UNTYPED.decode(line)))
                except (msgspec.DecodeError, RecursionError) as line_exc:
                    bad.append(Rejected(_json_reason(line_exc), _json_detail(line_exc), i, line))
        items: list[tuple[int | None, Any]] = []
        for index, element in elements:
            if not isinstance(element, dict):
                bad.append(Rejected("not_an_object", type(element).__name__, index, _dump(element)))
                continue
            try:
                items.append((index, msgspec.convert(element, wire_type)))
            except msgspec.ValidationError as exc:
                message = str(exc)
                reason: RejectReason = (
                    "missing_field"
                    if "missing required field" in message
                    else "wrong_type"
                    # "Expected `str` of length >= 1" is a bad value of the right type
                    if message.startswith("Expected") and "length" not in message
                    # a string that is no RFC 3339 time
                    else "bad_timestamp"
                    if message.endswith("`$.ts`")
                    else "invalid_value"
                )
                bad.append(Rejected(reason, message, index, _dump(element)))
        return items

    def _check_common(
        self, ts: Timestamp, finite: bool, now: float
    ) -> float | tuple[RejectReason, str]:
        epoch = _epoch(ts)
        if epoch is None:
            return "bad_timestamp", "RFC 3339 timestamps need a UTC offset"
        if not math.isfinite(epoch) or epoch <= 0:
            return "bad_timestamp", f"ts {epoch!r} is not a positive finite epoch"
        if self._max_age is not None or self._max_future is not None:
            if self._max_future is not None and epoch > now + self._max_future:
                ahead = epoch - now
                return (
                    "bad_timestamp",
                    f"ts is {ahead:.0f} s in the future (limit {self._max_future:g} s)",
                )
            if self._max_age is not None and epoch < now - self._max_age:
                age = now - epoch
                return "bad_timestamp", f"ts is {age:.0f} s old (limit {self._max_age:g} s)"
        if not finite:
            return "non_finite", "values must be finite (no NaN or infinity)"
        return epoch

    def _check_exposure(
        self, w: _WireExposure | Exposure, now: float
    ) -> Exposure | tuple[RejectReason, str]:
        epoch = self._check_common(w.ts, all(map(math.isfinite, w.covariates.values())), now)
        if isinstance(epoch, tuple):
            return epoch
        variants = self._variants.get(w.experiment)
        if variants is None:
            return "unknown_experiment", f"experiment {w.experiment!r} is not configured"
        if w.variant not in variants:
            return "unknown_variant", f"variant {w.variant!r} is not in {w.experiment!r}"
        if w.stage is not None and w.stage not in self._stages[w.experiment]:
            # not finite, 0 (off: nobody is assigned) or a percent the ramp never uses
            stages = self._stages[w.experiment]
            return (
                "invalid_value",
                f"stage {w.stage!r} is not a stage of {w.experiment!r}: {stages}",
            )
        if type(w) is Exposure:
            return w
        return Exposure(
            w.event_id,
            epoch,
            w.experiment,
            w.unit_id,
            w.variant,
            w.attributes,
            w.covariates,
            None if w.stage is None else float(w.stage),
        )

    def _check_telemetry(
        self, w: _WireTelemetry | Telemetry, now: float
    ) -> Telemetry | tuple[RejectReason, str]:
        epoch = self._check_common(w.ts, math.isfinite(w.value), now)
        if isinstance(epoch, tuple):
            return epoch
        bounds = self._bounds.get(w.metric)  # every declared metric has bounds
        if bounds is None:
            return "unknown_metric", f"metric {w.metric!r} is not declared by any experiment"
        low, high = bounds
        if not low <= w.value <= high:
            return "invalid_value", f"{w.metric} value {w.value!r} outside [{low:g}, {high:g}]"
        if w.experiment is not None:
            variants = self._variants.get(w.experiment)
            if variants is None:
                return "unknown_experiment", f"experiment {w.experiment!r} is not configured"
            if w.variant is not None and w.variant not in variants:
                return "unknown_variant", f"variant {w.variant!r} is not in {w.experiment!r}"
        elif w.variant is not None:
            return "invalid_value", "variant given without experiment"
        if type(w) is Telemetry:
            return w
        return Telemetry(w.event_id, epoch, w.unit_id, w.metric, w.value, w.experiment, w.variant)


def _first_decode(
    decoders: tuple[msgspec.json.Decoder[Any], msgspec.json.Decoder[Any]],
    raw: bytes,
    *,
    lines: bool,
) -> tuple[Any, bool]:
    """``raw`` decoded by the first of (typed, wire) decoders that takes it, and whether
    that was the typed one; ``(None, False)`` if neither (``[]`` with ``lines``).

    Called once per message or run: written out, not looped, to keep its calls few."""
    typed, wire = decoders
    try:
        return (typed.decode_lines(raw) if lines else typed.decode(raw)), True
    except msgspec.ValidationError:
        pass  # e.g. an RFC 3339 time: the wire type takes it
    except (msgspec.DecodeError, RecursionError):
        # malformed JSON (or nested too deeply for msgspec): no type will take it
        return ([] if lines else None), False
    try:
        return (wire.decode_lines(raw) if lines else wire.decode(raw)), False
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return ([] if lines else None), False


def _metric_bounds(config: RampmonConfig) -> dict[str, tuple[float, float]]:
    """Each metric's plausible range; a metric several experiments declare gets the
    narrowest (every experiment's statistics must be protected)."""
    out: dict[str, tuple[float, float]] = {}
    for e in config.experiments:
        for m in e.metrics:
            low, high = out.get(m.name, (-math.inf, math.inf))
            if m.min_value is not None:
                low = max(low, m.min_value)
            if m.max_value is not None:
                high = min(high, m.max_value)
            out[m.name] = (low, high)
    return out


def _json_reason(exc: msgspec.DecodeError | RecursionError) -> RejectReason:
    # msgspec refuses 1e999 while parsing: it is an infinity, not broken JSON
    return "non_finite" if "out of range" in str(exc) else "bad_json"


def _json_detail(exc: msgspec.DecodeError | RecursionError) -> str:
    # msgspec raises RecursionError, not a DecodeError, for JSON nested ~1000 deep (a
    # 2 KB message): rejected like any malformed JSON, or it would crash the ingest agent
    if isinstance(exc, RecursionError):
        return "JSON is nested too deeply"
    return str(exc)


def _dump(obj: Any) -> bytes:
    try:
        return msgspec.json.encode(obj)
    except (TypeError, ValueError):  # pragma: no cover - decoded JSON always re-encodes
        return repr(obj).encode()
