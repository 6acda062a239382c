"""Stripe-style HMAC-SHA256 signatures for outgoing webhooks.

Every webhook carries ``X-Rampmon-Signature: t=<unix seconds>,v1=<hex>`` where ``<hex>`` is
``HMAC-SHA256(secret, b"<t>." + raw_body)``. Signing the timestamp with the body lets a
receiver refuse replays of an old, captured request; the idempotency key (the same for every
retry of one decision) lets it drop duplicates inside the tolerance window. Deduplicate on
the key *in the verified body* (``idempotency_key``, a CloudEvent's ``id``): the
``Idempotency-Key`` header carries the same value but is not signed, so a replay may change it.
Several ``v1=`` entries may appear (secret rotation): a receiver accepts any that matches.
Unknown schemes (``v0=``, a future ``v2=``) must be ignored.

Receiver example (Python standard library only; verify the raw body before parsing it)::

    import hashlib, hmac, time

    def verify_rampmon(secret: bytes, body: bytes, header: str, tolerance: int = 300) -> bool:
        parts = [p.split("=", 1) for p in header.split(",") if "=" in p]
        ts = [v for k, v in parts if k == "t"]
        if len(ts) != 1 or not (ts[0].isascii() and ts[0].isdigit() and len(ts[0]) <= 15):
            return False
        if abs(time.time() - int(ts[0])) > tolerance:
            return False
        mac = hmac.new(secret, ts[0].encode() + b"." + body, hashlib.sha256)
        expected = mac.hexdigest().encode()
        return any(hmac.compare_digest(expected, v.encode()) for k, v in parts if k == "v1")

Answer 2xx only after the body is stored: anything else (or no answer) is retried.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from alerts.errors import SignatureError

__all__ = ["SIGNATURE_HEADER", "sign", "verify"]

SIGNATURE_HEADER = "X-Rampmon-Signature"


def _digest(secret: bytes, timestamp: str, body: bytes) -> str:
    return hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The ``X-Rampmon-Signature`` header value for ``body`` sent at ``timestamp``."""
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise ValueError(f"timestamp must be a non-negative int of unix seconds, got {timestamp!r}")
    return f"t={timestamp},v1={_digest(secret, str(timestamp), body)}"


def verify(
    secret: bytes,
    body: bytes,
    header: str,
    *,
    tolerance_seconds: int = 300,
    now: float | None = None,
) -> None:
    """Raise :class:`SignatureError` unless ``header`` signs ``body`` with ``secret`` recently.

    "Recently" is symmetric: a timestamp too far in the future is as suspicious as an old one.
    """
    if not header:
        raise SignatureError("missing signature header")
    timestamps: list[str] = []
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise SignatureError("malformed signature header")
        if key == "t":
            timestamps.append(value)
        elif key == "v1":
            signatures.append(value)
    # int() of over 4300 digits raises ValueError (Python 3.11); no unix time needs 16
    if len(timestamps) != 1 or not (
        timestamps[0].isascii() and timestamps[0].isdigit() and len(timestamps[0]) <= 15
    ):
        raise SignatureError("signature header needs exactly one numeric t=")
    if not signatures:
        raise SignatureError("signature header has no v1= signature")
    current = time.time() if now is None else now
    if abs(current - int(timestamps[0])) > tolerance_seconds:
        raise SignatureError("signature timestamp outside tolerance")
    expected = _digest(secret, timestamps[0], body).encode()
    # bytes, not str: compare_digest raises TypeError on non-ASCII str, and a hostile header
    # must end as SignatureError, never as a crash
    if not any(hmac.compare_digest(expected, c.encode()) for c in signatures):
        raise SignatureError("signature does not match")
