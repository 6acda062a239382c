"""The decision notice: what a rollback, pause, advance or resolution tells webhooks, Kafka
and the flag service."""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from alerts.keys import stage_token

__all__ = ["PAYLOAD_VERSION", "DecisionNotice"]

# bumped on any incompatible change to the JSON body; receivers can branch on it
PAYLOAD_VERSION = 1

_FORBIDDEN = frozenset(":|")  # separators of keys and of the idempotency-key preimage


@dataclass(frozen=True, slots=True)
class DecisionNotice:
    """One decision about one experiment at one ramp stage.

    ``stage`` is the percent of traffic in force; ``effect`` with ``[lower, upper]`` is the
    guardrail estimate and its anytime-valid interval, ``margin`` the tolerated harm.

    ``episode`` tells apart the times a stage was in force: the number of stage changes
    recorded when the decision was made (the length of ``rampmon:stage_history``), so a
    ramp that returns to a stage starts a new episode there, and a decision is sent once
    per episode, not once per stage for ever. A ``resolved`` notice carries the episode of
    the decision it ends, and ``resolves`` names that decision (``pause`` or
    ``rollback``).
    """

    experiment: str
    stage: float
    decision: str
    guardrail: str
    metric: str
    variant: str
    effect: float
    lower: float
    upper: float
    margin: float
    decided_at: float
    reason: str
    episode: int = 0
    resolves: str = ""

    def __post_init__(self) -> None:
        # an int stage (5) and a float stage (5.0) must yield the same idempotency key
        object.__setattr__(self, "stage", float(self.stage))
        for name in ("experiment", "decision"):
            value = getattr(self, name)
            if not value or _FORBIDDEN & set(value):
                raise ValueError(f"{name} must be non-empty without ':' or '|', got {value!r}")
        if _FORBIDDEN & set(self.resolves):
            raise ValueError(f"resolves must not contain ':' or '|', got {self.resolves!r}")
        if self.episode < 0:
            raise ValueError(f"episode counts stage changes, got {self.episode}")
        if not 0.0 <= self.stage <= 100.0:
            raise ValueError(f"stage is a percent in [0, 100], got {self.stage}")

    @property
    def idempotency_key(self) -> str:
        """Same for every retry, worker and restart deciding this (experiment, stage,
        episode, decision, and for a resolution the decision it ends)."""
        preimage = (
            f"{self.experiment}|{stage_token(self.stage)}|{self.episode}|{self.decision}"
            f"|{self.resolves}"
        )
        return hashlib.sha256(preimage.encode()).hexdigest()[:32]

    @property
    def decided_at_iso(self) -> str:
        moment = datetime.fromtimestamp(self.decided_at, tz=UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["idempotency_key"] = self.idempotency_key
        body["decided_at_iso"] = self.decided_at_iso
        body["version"] = PAYLOAD_VERSION
        return body

    def to_json(self) -> bytes:
        """Sorted-key JSON. JSON has no infinity: a non-finite number is written as ``null``
        (an unbounded ``lower``/``upper`` side of a one-sided interval)."""
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, data: bytes | str) -> DecisionNotice:
        """Inverse of :meth:`to_json`; derived and unknown fields are ignored."""
        raw = orjson.loads(data)
        return cls(
            experiment=raw["experiment"],
            stage=float(raw["stage"]),
            decision=raw["decision"],
            guardrail=raw["guardrail"],
            metric=raw["metric"],
            variant=raw["variant"],
            effect=_number(raw["effect"], math.nan),
            lower=_number(raw["lower"], -math.inf),
            upper=_number(raw["upper"], math.inf),
            margin=_number(raw["margin"], math.nan),
            decided_at=float(raw["decided_at"]),
            reason=raw["reason"],
            # bodies written before episodes have neither
            episode=int(raw.get("episode", 0)),
            resolves=raw.get("resolves", ""),
        )


def _number(value: float | None, if_null: float) -> float:
    return if_null if value is None else float(value)
