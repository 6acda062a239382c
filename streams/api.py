"""The control API on the worker's web server, for rollout controllers and on-call.

- ``GET /experiments`` and ``GET /experiments/{experiment}``: decision, stage and every
  guardrail's effect and anytime-valid interval, as JSON.
- ``GET|POST /experiments/{experiment}/gate``: 200 to proceed, 409 to halt (rollback, pause,
  iterate, ramp off, or an operator's override), 503 when the answer is unknown (no or stale
  evaluation, Redis unreachable), 404 for an unknown experiment. Argo Rollouts' ``web``
  metric provider and Flagger's webhook gates both treat non-2xx as "do not proceed"; the
  body's ``proceed`` field is there for Argo's ``successCondition``. The gate fails closed.
- ``POST /experiments/{experiment}/override`` with ``Authorization: Bearer <RAMPMON_API_TOKEN>``:
  ``acknowledge`` a decision, ``override`` it at the current stage, or ``clear`` an override;
  each is written to the experiment's audit stream in Redis.

Only the worker that owns an experiment's partials partition evaluates it; it also writes
its status to Redis every evaluation, so any worker's API answers for every experiment.
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.asyncio import Redis

from alerts import keys
from alerts.audit import AUDIT_MAXLEN, audit_fields, read_audit
from monitor.config import RampmonConfig
from monitor.decision import Decision
from streams.evaluator import Evaluator, Status

__all__ = ["MAX_BODY_BYTES", "ExperimentsAPI", "OverrideRequest", "gate_answer", "status_doc"]

#: a control request is a few hundred bytes; anything far larger is refused unread
MAX_BODY_BYTES = 16_384
#: the evaluating worker's Redis copy of a status outlives a few missed evaluations
STATUS_TTL_SECONDS = 60
_PROCEED: frozenset[str] = frozenset({"continue", "advance", "ship"})

Response = tuple[int, dict[str, Any]]
GateVerdict = Literal["proceed", "halt", "unknown"]
_GATE_STATUS: dict[GateVerdict, int] = {"proceed": 200, "halt": 409, "unknown": 503}


class OverrideRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    action: Literal["acknowledge", "override", "clear"]
    by: str = Field(min_length=1, max_length=128)
    reason: str = Field(default="", max_length=2048)
    #: the decision in force instead of the engine's (``override`` only)
    decision: Decision | None = None


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def status_doc(status: Status) -> dict[str, Any]:
    """The JSON of one experiment's status: what ``GET /experiments/{id}`` answers."""
    r = status.readout
    return {
        "experiment": r.experiment,
        "stage_percent": status.percent,
        "evaluated_stage_percent": r.stage,
        "decision": status.decision,
        "engine_decision": r.decision,
        "reason": r.reason,
        "evaluated_at": status.evaluated_at,
        "ready": r.progress.ready,
        "srm_mismatch": r.srm_mismatch,
        "guardrails": [
            {
                "guardrail": g.guardrail,
                "metric": g.metric,
                "variant": g.variant,
                "verdict": g.verdict,
                "reason": g.reason,
                "effect": _finite(g.effect),
                "lower": _finite(g.lower),
                "upper": _finite(g.upper),
                "margin": g.margin,
                "harmful_direction": g.harmful_direction,
                "p_value": _finite(g.p_value),
                "alpha": g.alpha,
                # JSON has no infinity: an effect of +inf (a relative guardrail whose control
                # mean is 0) is null here, and the method and counts tell it from no data
                "method": g.method,
                "n_treatment": g.n_treatment,
                "n_control": g.n_control,
            }
            for g in r.guardrails
        ],
        "primary": None
        if r.primary is None
        else {
            "metric": r.primary.metric,
            "variant": r.primary.variant,
            "effect": _finite(r.primary.effect),
            "lower": _finite(r.primary.lower),
            "upper": _finite(r.primary.upper),
        },
    }


def gate_answer(
    doc: Mapping[str, Any] | None,
    override: Mapping[str, str],
    *,
    now: float,
    stale_after: float,
) -> tuple[GateVerdict, str | None, str]:
    """Proceed only on a fresh evaluation whose decision in force allows it; ``unknown``
    (no or stale evaluation) is not a decision, and the HTTP layer fails closed on it.

    Returns the verdict, the decision it rests on (an operator's override of the stage in
    force wins over the evaluation's) and why."""
    if doc is None:
        return "unknown", None, "no evaluation yet"
    decision = str(doc["decision"])
    age = now - float(doc["evaluated_at"])
    if age > stale_after:
        return "unknown", decision, f"evaluation is {age:.0f} s old"
    percent = float(doc["stage_percent"])
    if percent == 0.0:
        return "halt", decision, "ramp is off (stage 0)"
    why = f"decision {decision} ({doc.get('reason', '')})"
    if override.get("decision") and float(override.get("stage", "nan")) == percent:
        decision = override["decision"]
        why = f"override by {override.get('by', '?')}: {decision}"
    return ("proceed" if decision in _PROCEED else "halt"), decision, why


class ExperimentsAPI:
    """The endpoints as plain coroutines returning ``(status code, JSON body)``; the Faust
    views in :func:`register` only translate HTTP."""

    def __init__(
        self,
        config: RampmonConfig,
        evaluator: Evaluator,
        redis: Redis,
        *,
        token: str,
        stale_after: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._evaluator = evaluator
        self._redis = redis
        self._token = token.encode()
        self._stale_after = stale_after
        self._clock = clock

    def _known(self, experiment: str) -> bool:
        return any(e.name == experiment for e in self._config.experiments)

    async def publish(self, status: Status) -> None:
        """Write an evaluated status to Redis for the other workers' APIs."""
        doc = orjson.dumps(status_doc(status))
        await self._redis.set(keys.readout(status.readout.experiment), doc, ex=STATUS_TTL_SECONDS)

    async def _doc(self, experiment: str) -> dict[str, Any] | None:
        local = self._evaluator.status.get(experiment)
        if local is not None:
            return status_doc(local)
        raw = await self._redis.get(keys.readout(experiment))
        return None if raw is None else dict(orjson.loads(raw))

    async def _override(self, experiment: str) -> dict[str, str]:
        raw = await self._redis.hgetall(keys.override(experiment))
        return {_text(k): _text(v) for k, v in raw.items()}

    async def list(self) -> Response:
        out = []
        for cfg in self._config.experiments:
            doc = await self._doc(cfg.name)
            out.append(doc or {"experiment": cfg.name, "decision": None})
        return 200, {"experiments": out}

    async def get(self, experiment: str) -> Response:
        if not self._known(experiment):
            return 404, {"error": f"unknown experiment {experiment!r}"}
        doc = await self._doc(experiment)
        if doc is None:
            return 503, {"experiment": experiment, "error": "no evaluation yet"}
        override = await self._override(experiment)
        doc["override"] = override or None
        entries = await read_audit(self._redis, experiment, count=20)
        doc["audit"] = [
            {"id": e.id, "action": e.action, "by": e.by, "at": e.at, **e.fields} for e in entries
        ]
        return 200, doc

    async def gate(self, experiment: str) -> Response:
        if not self._known(experiment):
            return 404, {"experiment": experiment, "proceed": False, "error": "unknown experiment"}
        try:
            doc = await self._doc(experiment)
            override = await self._override(experiment)
        except (OSError, TimeoutError) as exc:  # redis-py's ConnectionError is an OSError
            return 503, {"experiment": experiment, "proceed": False, "reason": f"redis: {exc}"}
        except Exception as exc:  # RedisError: fail closed, never 500
            return 503, {"experiment": experiment, "proceed": False, "reason": type(exc).__name__}
        verdict, decision, why = gate_answer(
            doc, override, now=self._clock(), stale_after=self._stale_after
        )
        body = {
            "experiment": experiment,
            "proceed": verdict == "proceed",
            # what the answer rests on: a halting override with "continue" here read as a
            # contradiction to a controller logging the body
            "decision": decision,
            "evaluated_decision": None if doc is None else doc["decision"],
            "stage": None if doc is None else doc["stage_percent"],
            "reason": why,
        }
        return _GATE_STATUS[verdict], body

    def authorized(self, header: str | None) -> bool:
        if not self._token or not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[len("Bearer ") :].strip().encode(), self._token)

    async def post_override(
        self, experiment: str, authorization: str | None, body: bytes
    ) -> Response:
        if not self._token:
            return 403, {"error": "write API disabled: set RAMPMON_API_TOKEN"}
        if not self.authorized(authorization):
            return 401, {"error": "missing or wrong bearer token"}
        if not self._known(experiment):
            return 404, {"error": f"unknown experiment {experiment!r}"}
        if len(body) > MAX_BODY_BYTES:
            return 413, {"error": f"body over {MAX_BODY_BYTES} bytes"}
        try:
            req = OverrideRequest.model_validate_json(body)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
            )
            return 422, {"error": problems}
        if (req.action == "override") != (req.decision is not None):
            return 422, {"error": "decision: required for override, and only for override"}
        now = self._clock()
        doc = await self._doc(experiment)
        percent = None if doc is None else float(doc["stage_percent"])
        if req.action == "override" and percent is None:
            return 409, {"error": "no evaluation yet: the stage to override is unknown"}
        entry = audit_fields(
            req.action,
            req.by,
            now,
            stage=None if percent is None else keys.stage_token(percent),
            decision=req.decision if req.action == "override" else (doc or {}).get("decision"),
            reason=req.reason or None,
        )
        async with self._redis.pipeline(transaction=True) as pipe:
            if req.action == "override":
                assert percent is not None and req.decision is not None
                pipe.delete(keys.override(experiment))
                pipe.hset(
                    keys.override(experiment),
                    mapping={
                        "decision": req.decision,
                        "stage": keys.stage_token(percent),
                        "by": req.by,
                        "reason": req.reason,
                        "at": repr(now),
                    },
                )
            elif req.action == "clear":
                pipe.delete(keys.override(experiment))
            pipe.xadd(keys.audit(experiment), entry, maxlen=AUDIT_MAXLEN, approximate=True)  # type: ignore[arg-type]
            results = await pipe.execute()
        audit_id = _text(results[-1])
        return 200, {"experiment": experiment, "action": req.action, "audit_id": audit_id}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def register(app: Any, api: ExperimentsAPI) -> None:
    """Add the views to a Faust app's web server."""
    import faust

    def reply(view: Any, answer: Response) -> Any:
        status, body = answer
        return view.bytes(orjson.dumps(body), content_type="application/json", status=status)

    @app.page("/experiments")
    class Experiments(faust.web.View):
        async def get(self, request: Any) -> Any:
            return reply(self, await api.list())

    @app.page("/experiments/{experiment}")
    class Experiment(faust.web.View):
        async def get(self, request: Any, experiment: str) -> Any:
            return reply(self, await api.get(experiment))

    @app.page("/experiments/{experiment}/gate")
    class Gate(faust.web.View):
        async def get(self, request: Any, experiment: str) -> Any:
            return reply(self, await api.gate(experiment))

        async def post(self, request: Any, experiment: str) -> Any:
            # Flagger POSTs its canary metadata; the answer does not depend on it
            return reply(self, await api.gate(experiment))

    @app.page("/experiments/{experiment}/override")
    class Override(faust.web.View):
        async def post(self, request: Any, experiment: str) -> Any:
            length = request.content_length
            if length is not None and length > MAX_BODY_BYTES:
                return reply(self, (413, {"error": f"body over {MAX_BODY_BYTES} bytes"}))
            body = await request.content.read(MAX_BODY_BYTES + 1)
            answer = await api.post_override(experiment, request.headers.get("Authorization"), body)
            return reply(self, answer)
