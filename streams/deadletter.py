"""The dead-letter topic's records: why an event was rejected, where it came from, and as
much of it as fits the producer's request limit."""

from __future__ import annotations

import base64
import time

import orjson

from streams.decode import Rejected

__all__ = ["DEAD_LETTER_DETAIL_CHARS", "DEAD_LETTER_EVENT_BYTES", "dead_letter"]

#: the most of a rejected event's bytes its dead letter embeds, for every reason. Embedded
#: whole, JSON-escaped (a control byte becomes six) or base64-encoded (4/3), an event of
#: 750 KB-1 MiB (RAMPMON_MAX_MESSAGE_BYTES) made a dead letter over the producer's request
#: limit (streams.app.PRODUCER_MAX_REQUEST_BYTES): the send raised, the dead letter was
#: lost and the ingest agent crashed. With 64 KiB, 6 x 64 KiB escaped and the capped
#: detail, a dead letter stays under 450 KB. One cut short says so (``truncated``,
#: ``event_bytes``) and its ``source`` names the whole event
DEAD_LETTER_EVENT_BYTES = 65_536
#: the most of a rejection's detail a dead letter embeds. The decoder's details are short
#: (names in them are at most 256 characters, monitor.events.Text); this keeps the bound
#: above a property of the dead letter alone
DEAD_LETTER_DETAIL_CHARS = 4_096


def dead_letter(topic: str, partition: int, offset: int, r: Rejected) -> bytes:
    """The rejection ``r`` of the event at ``r.index`` of message ``offset`` of ``topic`` /
    ``partition`` as the dead-letter topic's JSON. The event is embedded up to
    DEAD_LETTER_EVENT_BYTES of it, so that every dead letter fits the producer's request;
    ``truncated`` says it was cut, ``event_bytes`` is its whole length, and ``source`` names
    where the whole event is."""
    event, encoding = _event_text(r.raw[:DEAD_LETTER_EVENT_BYTES], whole=len(r.raw))
    return orjson.dumps(
        {
            "reason": r.reason,
            "detail": r.detail[:DEAD_LETTER_DETAIL_CHARS],
            "source": {
                "topic": topic,
                "partition": partition,
                "offset": offset,
                "index": r.index,
            },
            "event": event,
            "encoding": encoding,
            "truncated": len(r.raw) > DEAD_LETTER_EVENT_BYTES,
            "event_bytes": len(r.raw),
            "dead_lettered_at": time.time(),
        }
    )


def _event_text(head: bytes, *, whole: int) -> tuple[str, str]:
    """``head``, the first bytes of an event ``whole`` bytes long, as text and its encoding:
    UTF-8 as it is, anything else base64. A cut that splits a UTF-8 character drops the
    character's first bytes rather than turning the event into base64."""
    try:
        return head.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as exc:
        # the first invalid byte is where the cut ended a character: all before it is UTF-8
        if whole > len(head) and exc.reason == "unexpected end of data":
            return head[: exc.start].decode("utf-8"), "utf-8"
    return base64.b64encode(head).decode(), "base64"
