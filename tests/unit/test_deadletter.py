"""Dead letters: the reason, the source, and as much of the event as fits a request."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from streams.app import PRODUCER_MAX_REQUEST_BYTES
from streams.cli import DEFAULT_CONFIG, load_config
from streams.deadletter import DEAD_LETTER_EVENT_BYTES, dead_letter
from streams.decode import Decoder, Rejected

MIB = 1_048_576
SOURCE = ("telemetry", 3)


def _letter(raw: bytes, reason: Any = "bad_json", index: int | None = None) -> Any:
    return orjson.loads(dead_letter(*SOURCE, 41, Rejected(reason, "why", index, raw)))


@pytest.mark.parametrize(
    ("raw", "encoding"),
    [
        (b"\x01" * MIB, "utf-8"),  # the worst case: JSON escapes each byte as six
        (b"[" + b'{"event_id":"e1","value":1},' * 36_000, "utf-8"),  # a cut envelope
        (b"\xff" * MIB, "base64"),  # not UTF-8
        ("é".encode() * (MIB // 2), "utf-8"),
    ],
)
def test_regression_a_dead_letter_fits_the_producer_request_whatever_its_event(
    raw: bytes, encoding: str
) -> None:
    """A message under RAMPMON_MAX_MESSAGE_BYTES (1 MiB) rejected as a whole was embedded
    whole, escaped or base64: its dead letter passed the producer's max request size, the
    send raised, the dead letter was lost and the ingest agent crashed. It embeds the
    first 64 KiB now, says it is cut and how long the event was, and keeps the rest."""
    letter = dead_letter(*SOURCE, 41, Rejected("bad_json", "why", 7, raw))
    assert len(letter) < PRODUCER_MAX_REQUEST_BYTES // 2
    doc = orjson.loads(letter)
    assert doc["truncated"] is True and doc["event_bytes"] == len(raw)
    assert doc["encoding"] == encoding
    event = doc["event"].encode() if encoding == "utf-8" else base64.b64decode(doc["event"])
    assert raw.startswith(event)
    assert DEAD_LETTER_EVENT_BYTES - 4 < len(event) <= DEAD_LETTER_EVENT_BYTES
    assert (doc["reason"], doc["detail"]) == ("bad_json", "why")
    assert doc["source"] == {"topic": "telemetry", "partition": 3, "offset": 41, "index": 7}


def test_a_cut_inside_a_utf8_character_keeps_the_event_text() -> None:
    """Cut mid-character, the head is still UTF-8 up to that character: not base64."""
    raw = b"x" * (DEAD_LETTER_EVENT_BYTES - 1) + "€".encode() * 10
    doc = _letter(raw)
    assert (doc["encoding"], doc["event"]) == ("utf-8", "x" * (DEAD_LETTER_EVENT_BYTES - 1))
    assert doc["truncated"] is True and doc["event_bytes"] == len(raw)


def test_a_small_event_is_dead_lettered_whole() -> None:
    assert _letter(b'{"event_id": "broken')["event"] == '{"event_id": "broken'
    assert _letter(b'{"event_id": "broken')["truncated"] is False
    exact = _letter(b"x" * DEAD_LETTER_EVENT_BYTES)
    assert exact["truncated"] is False and exact["event_bytes"] == DEAD_LETTER_EVENT_BYTES
    # a message that ends inside a character is not UTF-8: every byte kept, in base64
    doc = _letter(b'{"a": "\xe2\x82')
    assert doc["encoding"] == "base64" and doc["truncated"] is False
    assert base64.b64decode(doc["event"]) == b'{"a": "\xe2\x82'


def test_a_too_large_message_is_dead_lettered_with_its_length() -> None:
    """The decoder keeps a too_large message whole; its dead letter gives its length."""
    decoder = Decoder(load_config(DEFAULT_CONFIG), max_message_bytes=1024)
    raw = b'{"event_id": "' + b"x" * 200_000 + b'"}'
    (rejected,) = decoder.telemetry(raw)[1]
    doc = orjson.loads(dead_letter(*SOURCE, 41, rejected))
    assert doc["reason"] == "too_large" and doc["detail"].startswith("message is 200016 bytes")
    assert doc["truncated"] is True and doc["event_bytes"] == len(raw)
    assert doc["event"] == raw[:DEAD_LETTER_EVENT_BYTES].decode()
