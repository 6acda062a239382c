"""Exceptions raised by the alerting layer (signing, outbox, delivery)."""

from __future__ import annotations

__all__ = ["AlertsError", "DeliveryError", "SignatureError"]


class AlertsError(Exception):
    """Root of every error raised by :mod:`alerts`."""


class SignatureError(AlertsError):
    """A signature header is missing, malformed, does not match, or is outside the tolerance."""


class DeliveryError(AlertsError):
    """One delivery attempt failed; the outbox retries it with backoff.

    ``status`` is the HTTP status when the receiver answered, ``None`` when it never did
    (connection refused, timeout), so callers can tell "down" from "said no".
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
