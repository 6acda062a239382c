"""Decision notices as CloudEvents 1.0, JSON event format, HTTP structured content mode.

Receivers built on a CloudEvents SDK, or event routers (Knative, Azure Event Grid, AWS
EventBridge pipes), take a decision without a rampmon-specific parser. References are to
CloudEvents 1.0.2: the core spec (``spec.md``), the JSON event format (``json-format.md``)
and the HTTP protocol binding (``http-protocol-binding.md``).

One decision becomes one event (``spec.md``, "Context Attributes"):

``specversion``       ``"1.0"``
``id``                the notice's idempotency key. ``source`` + ``id`` identify an event and
                      consumers may drop a repeated pair as a duplicate ("REQUIRED Attributes"),
                      which is exactly the deduplication rampmon asks of receivers: every
                      retry, worker and restart sends the same pair.
``source``            chosen by the caller, a URI-reference such as ``/rampmon/<app id>``
``type``              ``io.rampmon.decision.<decision>`` (rollback, pause, advance, resolved,
                      ship, iterate): reverse-DNS prefixed, as the spec recommends
``subject``           the experiment, so routers can filter without reading ``data``
``time``              ``decided_at`` in RFC 3339, UTC, milliseconds
``datacontenttype``   ``application/json``
``data``              :meth:`DecisionNotice.to_dict`: the same fields as the plain JSON body
                      (a non-finite number is ``null``), so a receiver's payload code is shared

No extension attributes. The HTTP binding (§3) tells structured mode from binary mode by
``Content-Type`` alone: send these bodies with :data:`CLOUDEVENTS_CONTENT_TYPE`
(:func:`content_type_for` picks it per body). The ``X-Rampmon-Signature`` and
``Idempotency-Key`` headers stay as they are; they are not ``ce-`` headers, so no SDK mistakes
the request for binary mode.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson

from alerts.errors import CloudEventError
from alerts.outbox import Renderer, Target
from alerts.payloads import DecisionNotice
from alerts.webhook import JSON_CONTENT_TYPE

__all__ = [
    "CLOUDEVENTS_CONTENT_TYPE",
    "SPECVERSION",
    "TYPE_PREFIX",
    "cloudevent_renderer",
    "content_type_for",
    "event_type",
    "is_cloudevent_media_type",
    "parse_cloudevent",
    "to_cloudevent",
    "validate_cloudevent",
]

#: the JSON event format's media type (``json-format.md`` §3); the body is UTF-8 JSON
CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
SPECVERSION = "1.0"
TYPE_PREFIX = "io.rampmon.decision."

_MEDIA_TYPE = "application/cloudevents+json"
# the core context attributes of spec.md; every other attribute is an extension
_KNOWN = frozenset(
    {"specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dataschema"}
)
# members of the JSON object that carry the payload, not attributes (json-format.md §3.1)
_DATA_MEMBERS = frozenset({"data", "data_base64"})
# spec.md "Naming Conventions": attribute names are lower-case ASCII letters and digits
_ATTRIBUTE_NAME = re.compile(r"[a-z0-9]+")
# RFC 3986 characters (unreserved, reserved, percent-encoded); checked per character only
_URI_CHARS = re.compile(r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})+")
_URI_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
# RFC 3339 §5.6 date-time; the offset is mandatory (a local time is not a timestamp)
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})",
)
_MEDIA = re.compile(r"[A-Za-z0-9!#$&^_.+\-]+/[A-Za-z0-9!#$&^_.+\-]+(?:\s*;.*)?", re.DOTALL)
# spec.md "Type System": Integer is signed 32-bit; String excludes control characters
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_INT32 = (-(2**31), 2**31 - 1)


def event_type(decision: str) -> str:
    """The ``type`` attribute of a decision's event, e.g. ``io.rampmon.decision.rollback``."""
    return TYPE_PREFIX + decision


def to_cloudevent(notice: DecisionNotice, *, source: str) -> bytes:
    """``notice`` as one CloudEvent in the JSON event format, sorted keys, UTF-8.

    The same notice and source always give the same bytes: a body is rendered once, when the
    decision is claimed, and every retry must send (and sign) exactly it.
    Raises :class:`CloudEventError` if ``source`` is not a non-empty URI-reference.
    """
    envelope: dict[str, Any] = {
        "specversion": SPECVERSION,
        "id": notice.idempotency_key,
        "source": source,
        "type": event_type(notice.decision),
        "subject": notice.experiment,
        "time": notice.decided_at_iso,
        "datacontenttype": JSON_CONTENT_TYPE,
        "data": notice.to_dict(),
    }
    validate_cloudevent(envelope)
    # orjson writes NaN and +-inf as null: an unbounded interval side stays ``null``
    return orjson.dumps(envelope, option=orjson.OPT_SORT_KEYS)


def cloudevent_renderer(source: str) -> Renderer:
    """A :data:`alerts.outbox.Renderer` for :func:`alerts.outbox.claim_decision`.

    The source is checked here, once, so a bad ``source`` fails at start-up, not at the
    first decision.
    """
    _check_source(source)

    def render(notice: DecisionNotice, target: Target) -> bytes:
        return to_cloudevent(notice, source=source)

    return render


def is_cloudevent_media_type(content_type: str) -> bool:
    """True for ``application/cloudevents+json`` with any parameters (HTTP binding §3.2)."""
    return content_type.split(";", 1)[0].strip().lower() == _MEDIA_TYPE


def content_type_for(body: bytes) -> str:
    """The ``Content-Type`` a rendered body goes out with: CloudEvents or plain JSON.

    A structured CloudEvent is a JSON object with a ``specversion`` member; a plain notice
    never has one. Deciding per body keeps jobs rendered before a format change correct.
    """
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return JSON_CONTENT_TYPE
    if isinstance(parsed, dict) and "specversion" in parsed:
        return CLOUDEVENTS_CONTENT_TYPE
    return JSON_CONTENT_TYPE


def parse_cloudevent(body: bytes | str) -> dict[str, Any]:
    """Decode and validate one structured-mode JSON CloudEvent; return its members.

    Attributes whose value is ``null`` are left out: the JSON format (§2.2) says a decoder
    MUST treat them as unset. ``data`` is kept as it was, ``null`` included (§3.1).
    Raises :class:`CloudEventError` with the first problem found.
    """
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise CloudEventError(f"not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise CloudEventError("a structured CloudEvent is a JSON object")
    envelope = {k: v for k, v in raw.items() if v is not None or k in _DATA_MEMBERS}
    validate_cloudevent(envelope)
    return envelope


def validate_cloudevent(envelope: Mapping[str, Any]) -> None:
    """Raise :class:`CloudEventError` unless ``envelope`` is a valid CloudEvents 1.0 event.

    Checks what the core spec and the JSON format require: the REQUIRED attributes
    ``id``, ``source``, ``specversion`` (``"1.0"``), ``type`` as non-empty strings, ``source``
    a URI-reference and ``dataschema`` a URI (RFC 3986, character level), ``time`` an RFC 3339
    timestamp, ``subject`` and ``datacontenttype`` non-empty (the latter an RFC 2046 media
    type), attribute names of lower-case ASCII letters and digits, no control characters in
    strings, extension values of the CloudEvents types (Boolean, 32-bit Integer, String), and
    at most one of ``data`` and ``data_base64``.
    """
    for name in envelope:
        if name not in _DATA_MEMBERS and not _ATTRIBUTE_NAME.fullmatch(name):
            raise CloudEventError(
                f"attribute name {name!r} must be lower-case ASCII letters and digits only"
            )
    if "data" in envelope and "data_base64" in envelope:
        raise CloudEventError("data and data_base64 are mutually exclusive")
    for name in ("specversion", "id", "source", "type"):
        _non_empty_string(envelope, name, required=True)
    if envelope["specversion"] != SPECVERSION:
        raise CloudEventError(
            f"specversion must be {SPECVERSION!r}, got {envelope['specversion']!r}"
        )
    _check_source(envelope["source"])
    for name in ("subject", "datacontenttype", "dataschema", "time"):
        _non_empty_string(envelope, name, required=False)
    if "datacontenttype" in envelope and not _MEDIA.fullmatch(envelope["datacontenttype"]):
        raise CloudEventError(
            f"datacontenttype is not a media type: {envelope['datacontenttype']!r}"
        )
    schema = envelope.get("dataschema")
    if schema is not None and not (_URI_SCHEME.match(schema) and _URI_CHARS.fullmatch(schema)):
        raise CloudEventError(f"dataschema must be an absolute URI, got {schema!r}")
    if "time" in envelope:
        _check_time(envelope["time"])
    for name, value in envelope.items():
        if name in _DATA_MEMBERS:
            continue
        if isinstance(value, str) and _CONTROL.search(value):
            raise CloudEventError(f"attribute {name!r} holds a control character")
        if name in _KNOWN:
            continue
        if isinstance(value, bool | str):
            continue
        if isinstance(value, int) and _INT32[0] <= value <= _INT32[1]:
            continue
        raise CloudEventError(
            f"extension {name!r} must be a string, a boolean or a 32-bit integer, got {value!r}"
        )


def _non_empty_string(envelope: Mapping[str, Any], name: str, *, required: bool) -> None:
    if name not in envelope:
        if required:
            raise CloudEventError(f"required attribute {name!r} is missing")
        return
    value = envelope[name]
    if not isinstance(value, str) or not value:
        raise CloudEventError(f"attribute {name!r} must be a non-empty string, got {value!r}")


def _check_source(source: object) -> None:
    if (
        not isinstance(source, str)
        or not _URI_CHARS.fullmatch(source)  # also refuses ""
        or source.count("#") > 1  # at most one fragment
    ):
        raise CloudEventError(f"source must be a non-empty URI-reference, got {source!r}")


def _check_time(value: str) -> None:
    if not _RFC3339.fullmatch(value):
        raise CloudEventError(f"time must be an RFC 3339 timestamp, got {value!r}")
    try:
        datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError as exc:  # month 13, hour 25, ...
        raise CloudEventError(f"time must be an RFC 3339 timestamp, got {value!r}") from exc
