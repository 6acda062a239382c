"""The audit stream: who changed a ramp, acknowledged or overrode a decision, and when.

A Redis stream per experiment (``rampmon:audit:{experiment}``), not a log line: entries are
ordered, timestamped by Redis, survive worker restarts and can be read by any tool
(``XRANGE``). Stage changes made by rampmon itself (rollback to 0, auto-advance) are written
in the same Lua script as the claim that caused them (:mod:`alerts.outbox`), so the stream
never misses an automatic change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from alerts import keys

__all__ = ["AUDIT_MAXLEN", "AuditEntry", "append_audit", "audit_fields", "read_audit"]

#: approximate cap (``MAXLEN ~``): an experiment's whole life fits, a runaway client cannot
#: grow the stream without bound
AUDIT_MAXLEN = 10_000


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: str
    action: str
    by: str
    at: float
    fields: Mapping[str, str]


def audit_fields(action: str, by: str, at: float, **fields: Any) -> dict[str, str]:
    """The flat string fields of one entry; ``None`` values are left out."""
    out = {"action": action, "by": by, "at": repr(float(at))}
    out.update({k: str(v) for k, v in fields.items() if v is not None})
    return out


async def append_audit(
    redis: Redis, experiment: str, action: str, *, by: str, at: float, **fields: Any
) -> str:
    entry = audit_fields(action, by, at, **fields)
    entry_id = await redis.xadd(
        keys.audit(experiment),
        entry,  # type: ignore[arg-type]
        maxlen=AUDIT_MAXLEN,
        approximate=True,
    )
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


async def read_audit(redis: Redis, experiment: str, *, count: int = 1000) -> list[AuditEntry]:
    """The newest ``count`` entries, oldest first."""
    raw = await redis.xrevrange(keys.audit(experiment), count=count)
    out = []
    for entry_id, data in reversed(raw or []):
        fields = {_text(k): _text(v) for k, v in (data or {}).items()}
        out.append(
            AuditEntry(
                id=_text(entry_id),
                action=fields.pop("action", ""),
                by=fields.pop("by", ""),
                at=float(fields.pop("at", "nan")),
                fields=fields,
            )
        )
    return out


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value
