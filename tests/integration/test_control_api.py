"""The control API, decision firing and the audit stream against a real redis-server."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from alerts import keys
from alerts.audit import read_audit
from alerts.cloudevents import cloudevent_renderer
from alerts.outbox import Outbox, Target
from alerts.payloads import DecisionNotice
from alerts.stages import current_stage, set_stage, stage_history
from streams.api import ExperimentsAPI
from streams.decisions import DecisionFirer
from streams.embedded import EmbeddedRedis
from streams.evaluator import Evaluator
from streams.metrics import Metrics
from streams.partials import Partial
from streams.stagecache import StageCache
from tests.unit.test_decisions import AUTO

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token"


def _config():  # type: ignore[no-untyped-def]
    from monitor.config import RampmonConfig

    return RampmonConfig(experiments=[AUTO])


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


class World:
    """One worker's evaluator, firer and API over a real Redis, with a settable clock."""

    def __init__(self, url: str) -> None:
        self.redis = aioredis.from_url(url)
        self.config = _config()
        self.registry = CollectorRegistry()
        self.stages = StageCache(self.config)
        self.evaluator = Evaluator(self.config, Metrics(self.registry), self.stages, partitions=1)
        self.fired: list[DecisionNotice] = []
        self.moved: list[DecisionNotice] = []
        self.firer = DecisionFirer(
            self.redis,
            [Target("kafka", "decisions")],
            render=cloudevent_renderer("/rampmon/test"),
            on_fired=self.fired.append,
            on_stage_moved=self.moved.append,
        )
        self.now = 1000.0
        self.api = ExperimentsAPI(
            self.config, self.evaluator, self.redis, token=TOKEN, clock=lambda: self.now
        )

    async def evaluate(
        self,
        stage: float,
        rate_t: float,
        seq: int,
        *,
        refresh: bool = True,
        n_c: int | None = None,
    ) -> None:
        """Feed the statistics of ``stage``, evaluate, act, publish: one evaluation tick
        (``refresh=False``: on the stage history as last read, as a worker between refreshes;
        ``n_c``: that many control units, a sample-ratio mismatch)."""
        if refresh:
            await self.stages.refresh(self.redis)
        self.evaluator.accept(Partial("e", 0, seq, _stats_of(stage, rate_t, n_c)))
        self.evaluator.evaluate(self.now)
        status = self.evaluator.status["e"]
        await self.firer.step(
            AUTO,
            status.readout,
            status.percent,
            self.now,
            stage_token=status.stage_token,
            episode=status.stage_episode,
        )
        await self.api.publish(self.evaluator.status["e"])


def _stats_of(stage: float, rate_t: float, n_c: int | None = None):  # type: ignore[no-untyped-def]
    import numpy as np

    from monitor.layout import ExperimentLayout
    from monitor.unitstate import Assignment
    from monitor.unitstats import UnitDeltas, UnitStatsAggregation

    layout = ExperimentLayout(AUTO)
    rng = np.random.default_rng(0)
    si = AUTO.stage_index(stage)
    n_t = 6000
    counts = {0: round(n_t * (100 - stage) / stage) if n_c is None else n_c, 1: n_t}
    rows = [
        Assignment(v, si, 0.0, [float(rng.random() < (rate_t if v else 0.02))])
        for v in (0, 1) for _ in range(counts[v])
    ]  # fmt: skip
    agg = UnitStatsAggregation(layout)
    return agg.update(agg.initialize(), UnitDeltas.exposed(layout, rows))


def test_gate_auto_advance_rollback_and_resolution(redis_server: EmbeddedRedis) -> None:
    async def scenario() -> None:
        w = World(redis_server.url)
        # no evaluation yet: the gate fails closed, and says why
        code, body = await w.api.gate("e")
        assert (code, body["proceed"]) == (503, False)
        assert (await w.api.gate("nope"))[0] == 404

        await set_stage(w.redis, "e", 10.0, now=w.now - 7200, by="alice")
        await w.evaluate(10.0, 0.02, seq=1)
        # a healthy stage that is ready: advance, and auto_advance moved the ramp to 50
        assert [n.decision for n in w.fired] == ["advance"]
        assert await current_stage(w.redis, "e") == 50.0
        code, body = await w.api.gate("e")
        assert (code, body["proceed"], body["decision"]) == (200, True, "advance")

        w.now += 5
        await w.evaluate(10.0, 0.02, seq=2)  # the same decision again: claimed, not re-sent
        assert [n.decision for n in w.fired] == ["advance"]

        # a regression at 50%: rollback, kill switch, ramp to 0, gate 409
        w.now += 3600
        await w.evaluate(50.0, 0.10, seq=3)
        assert [n.decision for n in w.fired] == ["advance", "rollback"]
        assert await current_stage(w.redis, "e") == 0.0
        switch = await w.redis.hgetall(keys.killswitch("e"))
        assert switch[b"decision"] == b"rollback" and switch[b"guardrail"] == b"err"
        code, body = await w.api.gate("e")
        assert (code, body["proceed"], body["decision"]) == (409, False, "rollback")

        # off: nothing new is sent; the decision in force stays rollback
        w.now += 5
        await w.evaluate(10.0, 0.02, seq=4)
        assert [n.decision for n in w.fired] == ["advance", "rollback"]
        assert w.evaluator.status["e"].decision == "rollback"
        assert (await w.api.gate("e"))[0] == 409

        # the fix ships; the operator ramps to 10% again: the rollback is resolved once
        w.now += 60
        await set_stage(w.redis, "e", 10.0, now=w.now, by="bob")
        await w.evaluate(10.0, 0.02, seq=5)
        assert [n.decision for n in w.fired][:3] == ["advance", "rollback", "resolved"]
        switch = await w.redis.hgetall(keys.killswitch("e"))
        assert switch[b"decision"] == b"resolved"
        assert await w.redis.exists(keys.active("e")) == 0

        # every stage change is in the history and the audit stream, with who made it
        history = await stage_history(w.redis, "e")
        assert [p for _, p in history] == [10.0, 50.0, 0.0, 10.0]
        audit = [(e.action, e.by, e.fields.get("percent")) for e in await read_audit(w.redis, "e")]
        assert audit == [
            ("stage", "alice", "10.0"),
            ("stage", "rampmon:auto_advance", "50.0"),
            ("stage", "rampmon:rollback", "0.0"),
            ("stage", "bob", "10.0"),
        ]
        # CloudEvents bodies in the outbox, one per decision and target
        jobs = await Outbox(w.redis).list_pending()
        types = sorted(json.loads(j.body)["type"] for j in jobs)
        assert types == [f"io.rampmon.decision.{d}" for d in ("advance", "resolved", "rollback")]

        # a restarted worker (empty memory) does not re-send anything
        again = World(redis_server.url)
        again.now = w.now + 1
        await again.evaluate(10.0, 0.02, seq=6)
        assert [n.decision for n in again.fired] in ([], ["advance"])
        await w.redis.aclose()
        await again.redis.aclose()

    run(scenario())


def test_regression_a_decision_on_a_stale_stage_view_is_not_claimed(
    redis_server: EmbeddedRedis,
) -> None:
    """Issue #5's Redis-outage test in CI: the worker read the history before any stage was
    set, the ramp went to 50%, and Redis stopped before the worker saw it. It decided a
    rollback at the first stage (the default), claimed it once Redis answered -- turning the
    ramp off -- then rolled back at 50% and sent a ``resolved``: three notices for one
    regression, one of them rewriting the kill switch. Claims are now fenced on the stage
    in force: the stale one is dropped, and the next evaluation decides on the real stage."""

    async def scenario() -> None:
        w = World(redis_server.url)
        first = AUTO.stages[0]
        await w.stages.refresh(w.redis)  # nothing set yet: the first stage by default
        await set_stage(w.redis, "e", 50.0, now=w.now - 7200, by="alice")
        await w.evaluate(first, 0.10, seq=1, refresh=False)
        assert w.evaluator.status["e"].readout.decision == "rollback"  # on the stale view
        assert w.fired == [] and [(n.decision, n.stage) for n in w.moved] == [("rollback", first)]
        assert await current_stage(w.redis, "e") == 50.0  # the ramp was not touched
        assert await w.redis.exists(keys.killswitch("e"), keys.active("e")) == 0
        assert await Outbox(w.redis).pending_count() == 0

        for seq in (2, 3):  # refreshed: one rollback, at the stage in force
            w.now += 1
            await w.evaluate(50.0, 0.10, seq=seq)
        assert [(n.decision, n.stage) for n in w.fired] == [("rollback", 50.0)]
        assert await current_stage(w.redis, "e") == 0.0
        assert (await w.redis.hgetall(keys.killswitch("e")))[b"decision"] == b"rollback"
        await w.redis.aclose()

    run(scenario())


def test_regression_a_ramp_back_to_a_rolled_back_stage_rolls_back_again(
    redis_server: EmbeddedRedis,
) -> None:
    """Claims were once per (experiment, stage, decision) for ever. After a rollback at 50%
    and its resolution at 10%, a ramp back to 50% (Argo Rollouts retrying its steps does
    this) where the evidence still said rollback found the old claim taken: no kill switch
    (it still read ``resolved``), no ramp to 0, no notice. The gate alone said 409. Claims
    are now per stage episode."""

    async def scenario() -> None:
        w = World(redis_server.url)
        await set_stage(w.redis, "e", 50.0, now=w.now - 3600, by="alice")
        await w.evaluate(50.0, 0.10, seq=1)
        w.now += 60
        await set_stage(w.redis, "e", 10.0, now=w.now, by="bob")
        await w.evaluate(10.0, 0.02, seq=2)
        assert (await w.redis.hgetall(keys.killswitch("e")))[b"decision"] == b"resolved"

        w.now += 60
        await set_stage(w.redis, "e", 50.0, now=w.now, by="argo")
        await w.evaluate(50.0, 0.10, seq=3)
        fired = [(n.decision, n.stage, n.episode) for n in w.fired]
        assert fired == [("rollback", 50.0, 1), ("resolved", 50.0, 1), ("rollback", 50.0, 4)]
        assert await current_stage(w.redis, "e") == 0.0
        switch = await w.redis.hgetall(keys.killswitch("e"))
        assert switch[b"decision"] == b"rollback"
        assert switch[b"idempotency_key"] == w.fired[-1].idempotency_key.encode()
        assert len({n.idempotency_key for n in w.fired}) == 3
        # a restarted worker on the same episode sends nothing again
        again = World(redis_server.url)
        again.now = w.now + 1
        await again.evaluate(50.0, 0.10, seq=4)
        assert again.fired == []
        await w.redis.aclose()
        await again.redis.aclose()

    run(scenario())


def test_regression_a_rollback_after_a_cleared_pause_is_resolved(
    redis_server: EmbeddedRedis,
) -> None:
    """A pause's resolution and a later rollback's resolution at the same stage shared one
    claim: after a pause at 50% cleared and a rollback followed there, ramping on to 10%
    found the claim taken, and the kill switch kept ``rollback`` (the feature stayed off)
    with no ``resolved`` notice. A resolution is now claimed per decision it ends."""

    async def scenario() -> None:
        w = World(redis_server.url)
        await set_stage(w.redis, "e", 50.0, now=w.now - 3600, by="alice")
        await w.evaluate(50.0, 0.02, seq=1, n_c=7000)  # a sample-ratio mismatch
        w.now += 5
        await w.evaluate(50.0, 0.02, seq=2)  # it clears
        w.now += 5
        await w.evaluate(50.0, 0.10, seq=3)  # a regression
        w.now += 60
        await set_stage(w.redis, "e", 10.0, now=w.now, by="bob")
        await w.evaluate(10.0, 0.02, seq=4)
        fired = [(n.decision, n.resolves) for n in w.fired]
        assert fired == [
            ("pause", ""),
            ("resolved", "pause"),
            ("rollback", ""),
            ("resolved", "rollback"),
        ]
        assert (await w.redis.hgetall(keys.killswitch("e")))[b"decision"] == b"resolved"
        assert await w.redis.exists(keys.active("e")) == 0
        await w.redis.aclose()

    run(scenario())


def test_regression_a_worker_given_an_experiment_back_reads_its_rollback_afresh(
    redis_server: EmbeddedRedis,
) -> None:
    """The firer loaded an experiment's active decision from Redis once and kept it. A
    worker that evaluated an experiment, lost it to another worker that rolled it back,
    and got it back after the ramp moved on still believed nothing was active: no
    ``resolved``, and the kill switch kept ``rollback``."""

    async def scenario() -> None:
        a, b = World(redis_server.url), World(redis_server.url)
        await set_stage(a.redis, "e", 50.0, now=a.now - 3600, by="alice")
        await a.evaluate(50.0, 0.02, seq=1)  # healthy: a remembers no active decision
        assert a.firer.active["e"] is None
        # the partials partition moves to b, as app.py's on_assigned hands it over
        a.firer.forget(a.evaluator.release([0]))
        b.now = a.now + 5
        await b.evaluate(50.0, 0.10, seq=2)
        assert [n.decision for n in b.fired] == ["rollback"]
        a.now = b.now + 60
        await set_stage(a.redis, "e", 10.0, now=a.now, by="bob")
        await a.evaluate(10.0, 0.02, seq=3)  # a has it back
        assert [(n.decision, n.resolves) for n in a.fired] == [("resolved", "rollback")]
        assert (await a.redis.hgetall(keys.killswitch("e")))[b"decision"] == b"resolved"
        await a.redis.aclose()
        await b.redis.aclose()

    run(scenario())


def test_stale_evaluation_closes_the_gate(redis_server: EmbeddedRedis) -> None:
    async def scenario() -> None:
        w = World(redis_server.url)
        await set_stage(w.redis, "e", 50.0, now=w.now - 7200)
        await w.evaluate(50.0, 0.02, seq=1)
        assert (await w.api.gate("e"))[0] == 200
        w.now += 31
        code, body = await w.api.gate("e")
        assert code == 503 and "old" in body["reason"]
        await w.redis.aclose()

    run(scenario())


def test_another_worker_answers_from_redis(redis_server: EmbeddedRedis) -> None:
    async def scenario() -> None:
        owner, other = World(redis_server.url), World(redis_server.url)
        await set_stage(owner.redis, "e", 50.0, now=owner.now - 7200)
        await owner.evaluate(50.0, 0.02, seq=1)
        other.now = owner.now
        code, doc = await other.api.get("e")
        assert code == 200 and doc["decision"] == owner.evaluator.status["e"].decision
        g = doc["guardrails"][0]
        assert g["guardrail"] == "err" and g["lower"] < g["effect"] < g["upper"]
        assert g["method"] == "asymptotic_cs" and min(g["n_treatment"], g["n_control"]) > 0
        code, listing = await other.api.list()
        assert [d["experiment"] for d in listing["experiments"]] == ["e"]
        await owner.redis.aclose()
        await other.redis.aclose()

    run(scenario())


def test_override_needs_the_token_is_audited_and_steers_the_gate(
    redis_server: EmbeddedRedis,
) -> None:
    async def scenario() -> None:
        w = World(redis_server.url)
        await set_stage(w.redis, "e", 50.0, now=w.now - 7200)
        await w.evaluate(50.0, 0.02, seq=1)
        assert (await w.api.gate("e"))[0] == 200
        body = json.dumps({"action": "override", "decision": "pause", "by": "carol",
                           "reason": "marketing freeze"}).encode()  # fmt: skip
        assert (await w.api.post_override("e", None, body))[0] == 401
        assert (await w.api.post_override("e", "Bearer wrong", body))[0] == 401
        assert (await w.api.post_override("e", f"Bearer {TOKEN}", b"{"))[0] == 422
        bad = json.dumps({"action": "override", "by": "carol"}).encode()
        assert (await w.api.post_override("e", f"Bearer {TOKEN}", bad))[0] == 422
        assert (await w.api.post_override("e", f"Bearer {TOKEN}", b"x" * 20_000))[0] == 413
        code, answer = await w.api.post_override("e", f"Bearer {TOKEN}", body)
        assert code == 200 and answer["audit_id"]
        code, gate = await w.api.gate("e")
        assert (code, gate["proceed"]) == (409, False) and "override by carol" in gate["reason"]
        # regression: the body said "decision": "ship" beside its 409
        assert (gate["decision"], gate["evaluated_decision"]) == ("pause", "ship")
        ack = json.dumps({"action": "acknowledge", "by": "dave"}).encode()
        assert (await w.api.post_override("e", f"Bearer {TOKEN}", ack))[0] == 200
        clear = json.dumps({"action": "clear", "by": "carol"}).encode()
        assert (await w.api.post_override("e", f"Bearer {TOKEN}", clear))[0] == 200
        assert (await w.api.gate("e"))[0] == 200
        entries = await read_audit(w.redis, "e")
        assert [(e.action, e.by) for e in entries][-3:] == [
            ("override", "carol"),
            ("acknowledge", "dave"),
            ("clear", "carol"),
        ]
        assert entries[-3].fields["reason"] == "marketing freeze"
        # an override binds to its stage: a new stage is judged by the engine again
        await w.redis.hset(keys.override("e"), mapping={"decision": "pause", "stage": "10.0"})
        assert (await w.api.gate("e"))[0] == 200
        await w.redis.aclose()

    run(scenario())


def test_write_api_is_disabled_without_a_token(redis_server: EmbeddedRedis) -> None:
    async def scenario() -> None:
        w = World(redis_server.url)
        api = ExperimentsAPI(w.config, w.evaluator, w.redis, token="")
        body = json.dumps({"action": "acknowledge", "by": "x"}).encode()
        assert (await api.post_override("e", "Bearer ", body))[0] == 403
        await w.redis.aclose()

    run(scenario())


def test_regression_a_step_waiting_on_redis_when_its_experiment_is_handed_over_keeps_nothing(
    redis_server: EmbeddedRedis,
) -> None:
    """forget() ran while a step waited on Redis (loading the active marker, or claiming),
    and the step then stored what it had read: the worker that got the experiment back
    still believed it (review finding). A step now keeps nothing once forgotten."""

    async def scenario() -> None:
        w = World(redis_server.url)
        await set_stage(w.redis, "e", 50.0, now=w.now - 3600, by="alice")
        await w.stages.refresh(w.redis)
        w.evaluator.accept(Partial("e", 0, 1, _stats_of(50.0, 0.02)))
        w.evaluator.evaluate(w.now)
        status = w.evaluator.status["e"]
        original = w.redis.hgetall

        async def slow_hgetall(*args: object, **kwargs: object) -> object:
            result = await original(*args, **kwargs)  # type: ignore[arg-type]
            w.firer.forget(["e"])  # the partition moves on meanwhile
            return result

        w.redis.hgetall = slow_hgetall  # type: ignore[method-assign]
        view = {"stage_token": status.stage_token, "episode": status.stage_episode}
        await w.firer.step(AUTO, status.readout, status.percent, w.now, **view)  # type: ignore[arg-type]
        assert "e" not in w.firer.active
        w.redis.hgetall = original  # type: ignore[method-assign]
        await w.redis.aclose()

    run(scenario())


def test_regression_an_override_set_before_a_rollback_does_not_open_the_gate_after_it(
    redis_server: EmbeddedRedis,
) -> None:
    """Review (decide path): an override binds to a stage *percent*, so one an operator set
    before a rollback at that stage still matched when the ramp came back to it (an Argo
    retry, a hand move): the gate answered 200 "override by carol: continue" while the
    decision in force was the rollback."""

    async def scenario() -> None:
        w = World(redis_server.url)
        await set_stage(w.redis, "e", 10.0, now=w.now - 7200, by="alice")
        # an operator lets the 10% stage through the gate (say, past an earlier pause)
        await w.redis.hset(
            keys.override("e"),
            mapping={"decision": "continue", "stage": "10.0", "by": "carol", "at": "0"},
        )
        w.now += 1
        await w.evaluate(10.0, 0.10, seq=1)  # a breach at 10%: rollback, ramp to 0
        assert [n.decision for n in w.fired] == ["rollback"]
        w.now += 1
        await w.evaluate(10.0, 0.10, seq=2)
        assert (await w.api.gate("e"))[0] == 409  # off

        # the ramp comes back to 10% (a new episode); the stage is not ready yet, so the
        # engine says continue, and the rollback stays in force at its stage
        w.now += 60
        await set_stage(w.redis, "e", 10.0, now=w.now, by="argo")
        await w.evaluate(10.0, 0.02, seq=3)
        assert w.evaluator.status["e"].decision == "rollback"
        code, body = await w.api.gate("e")
        assert (code, body["proceed"]) == (409, False), body
        await w.redis.aclose()

    run(scenario())


def test_regression_a_rollback_that_redis_lost_is_claimed_again(
    redis_server: EmbeddedRedis,
) -> None:
    """Review (decide path): the firer remembered every claim key it had claimed or found
    taken (``DecisionFirer._done``) for the life of the process and never asked Redis
    again. A Redis that loses the claim's writes -- a Sentinel failover to a replica the
    script had not reached (asynchronous replication), a crash inside ``appendfsync
    everysec`` -- comes back with the ramp at the stage and no kill switch, and the worker
    kept deciding the same rollback at the same (stage, episode) and skipping it: no kill
    switch, no ramp to 0, no webhook, until a restart."""

    async def scenario() -> None:
        w = World(redis_server.url)
        await set_stage(w.redis, "e", 10.0, now=w.now - 7200, by="alice")
        await w.evaluate(10.0, 0.10, seq=1)
        assert [n.decision for n in w.fired] == ["rollback"]

        # failover to a replica that never got the claim script's effects
        claim = keys.claim("e", 10.0, 1, "rollback")
        assert await w.redis.exists(claim) == 1
        await w.redis.delete(
            claim, keys.killswitch("e"), keys.active("e"), keys.outbox_jobs(), keys.outbox_due()
        )
        await w.redis.hset(keys.stage("e"), "percent", "10.0")
        await w.redis.rpop(keys.stage_history("e"))

        w.now += 5
        await w.evaluate(10.0, 0.10, seq=2)  # the breach still stands at 10%, episode 1
        w.now += 30
        await w.evaluate(10.0, 0.10, seq=3)
        switch = await w.redis.hgetall(keys.killswitch("e"))
        assert switch.get(b"decision") == b"rollback"
        assert await current_stage(w.redis, "e") == 0.0
        assert len(await Outbox(w.redis).list_pending()) == 1
        await w.redis.aclose()

    run(scenario())
