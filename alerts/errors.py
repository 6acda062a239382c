"""Exceptions raised by the alerting layer: signing, outbox, delivery, CloudEvents, Alertmanager."""

from __future__ import annotations

__all__ = [
    "AlertmanagerError",
    "AlertsError",
    "CloudEventError",
    "DeliveryError",
    "SignatureError",
]


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


class CloudEventError(AlertsError, ValueError):
    """A body is not a valid CloudEvents 1.0 structured-mode JSON event (or cannot be one)."""


class AlertmanagerError(AlertsError):
    """A push to one or more Alertmanagers failed (non-2xx answer, timeout, refused).

    ``failures`` names each failed Alertmanager by scheme, host and port only, with the
    reason; the alerts may still have reached the others (every push goes to all of them).
    """

    def __init__(self, message: str, *, failures: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.failures = failures
