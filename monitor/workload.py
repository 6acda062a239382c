"""The seed notebook's generative model, as a workload for tests, benchmarks and ``simulate``.

Source: ``shared/seeds/000_12107a7addc70fe3.txt``, section 3 "Running Example: Workflow
Assistant Launch" (``simulate_feature_experiment(n=80_000, seed=501)``); the published readout
is in sections 5 (``diff_in_means``) and 6 (CUPED), copied into :data:`SEED_EFFECTS`.

* :func:`simulate_units` transcribes the notebook's draw order exactly, so
  ``simulate_units(80_000, seed=501)`` reproduces the notebook's columns bit for bit.
  ``regression`` injects a harm into the treatment arm only, using a separate child generator,
  so the notebook's columns (and the control arm) never change.
* :func:`to_events` turns units into exposure and telemetry events (the event contract);
  :func:`unit_totals` folds events back into per-unit values the way a consumer does.
* :class:`RampTraffic` produces batches of such events for ``rampmon simulate``.

Pure numpy: no pandas, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "METRICS",
    "METRIC_AGGREGATION",
    "REGRESSION_KEYS",
    "SEED_EFFECTS",
    "RampTraffic",
    "UnitData",
    "UnitTotals",
    "simulate_units",
    "to_events",
    "unit_totals",
]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
StrArray = NDArray[np.str_]

#: Per-unit outcome metrics of the notebook, in readout order (section 5).
METRICS: tuple[str, ...] = ("tasks", "revenue", "latency_ms", "error_session", "support_ticket")

#: How a consumer folds a unit's events: ``sum`` adds values, ``any`` is 1 on any non-zero value.
METRIC_AGGREGATION: dict[str, str] = {
    "tasks": "sum",
    "revenue": "sum",
    "latency_ms": "sum",
    "error_session": "any",
    "support_ticket": "any",
}

#: Keys accepted by ``simulate_units(regression=...)``. Binary metrics take an absolute change of
#: probability (0.02 = +2 pp); continuous metrics take an additive shift in metric units.
REGRESSION_KEYS: tuple[str, ...] = METRICS

#: The notebook's published readout for ``seed=501``, 80,000 users (treatment minus control,
#: ``se = sqrt(var_t/n_t + var_c/n_c)`` with ``ddof=1``). CUPED: ``theta = cov(tasks, pre_tasks_28)
#: / var(pre_tasks_28)`` on pooled data (``ddof=1``); values rounded as printed.
SEED_EFFECTS: dict[str, Any] = {
    "n": 80_000,
    "seed": 501,
    "n_control": 40_063,
    "n_treatment": 39_937,
    "treatment_share": 0.499,
    "metrics": {
        "tasks": {
            "effect": 0.274331,
            "se": 0.013701,
            "control_mean": 4.850285,
            "treatment_mean": 5.124616,
        },
        "revenue": {
            "effect": 1.628659,
            "se": 0.199102,
            "control_mean": 51.087258,
            "treatment_mean": 52.715917,
        },
        "latency_ms": {
            "effect": 21.748171,
            "se": 0.363369,
            "control_mean": 276.814430,
            "treatment_mean": 298.562601,
        },
        "error_session": {
            "effect": 0.003198,
            "se": 0.000863,
            "control_mean": 0.013529,
            "treatment_mean": 0.016726,
        },
        "support_ticket": {
            "effect": 0.001193,
            "se": 0.001025,
            "control_mean": 0.020892,
            "treatment_mean": 0.022085,
        },
    },
    "cuped": {
        "metric": "tasks",
        "covariate": "pre_tasks_28",
        "theta": 0.238,
        "effect": 0.286,
        "se": 0.010,
        "se_reduction": 0.262,
    },
}

_COVARIATES = ("pre_tasks_28", "pre_revenue_28", "pre_workflow_entries", "tenure_days")
_BINARY = ("error_session", "support_ticket")


@dataclass(frozen=True, eq=False)
class UnitData:
    """One row per user, as parallel numpy arrays (the notebook's observed columns).

    ``treatment`` is an int 0/1 array; ``error_session``/``support_ticket`` are float 0.0/1.0;
    the covariates and other outcomes are float64.
    """

    user_id: IntArray
    segment: StrArray
    device: StrArray
    region: StrArray
    pre_tasks_28: FloatArray
    pre_revenue_28: FloatArray
    pre_workflow_entries: FloatArray
    tenure_days: FloatArray
    treatment: IntArray
    tasks: FloatArray
    revenue: FloatArray
    latency_ms: FloatArray
    error_session: FloatArray
    support_ticket: FloatArray

    def __len__(self) -> int:
        return int(self.user_id.shape[0])

    def take(self, mask: NDArray[Any]) -> UnitData:
        """The units selected by a boolean mask or an index array."""
        return UnitData(**{f.name: getattr(self, f.name)[mask] for f in fields(self)})

    def outcome(self, metric: str) -> FloatArray:
        """The per-unit values of one of :data:`METRICS`."""
        if metric not in METRICS:
            raise KeyError(metric)
        value: FloatArray = getattr(self, metric)
        return value


def _shift_binary(
    x: NDArray[np.int64], p: FloatArray, delta: float, u: FloatArray
) -> NDArray[np.int64]:
    """Move ``P(x=1)`` from ``p`` to ``clip(p + delta, 0, 1)`` by flipping with uniforms ``u``.

    ``delta >= 0`` flips 0 -> 1 with probability ``delta / (1 - p)``; ``delta < 0`` flips
    1 -> 0 with probability ``-delta / p``. Units only move in the direction of ``delta``, and
    for fixed ``u`` a larger ``|delta|`` flips a superset of units (exact nesting).
    """
    if delta == 0:
        return x
    with np.errstate(divide="ignore", invalid="ignore"):
        if delta > 0:
            q = np.where(p < 1, delta / (1 - p), 1.0)
            return np.where((x == 0) & (u < q), 1, x)
        q = np.where(p > 0, -delta / p, 1.0)
        return np.where((x == 1) & (u < q), 0, x)


def simulate_units(
    n: int,
    *,
    seed: int | np.random.Generator,
    treatment_share: float = 0.5,
    regression: Mapping[str, float] | None = None,
    regression_rng: np.random.Generator | None = None,
) -> UnitData:
    """Draw ``n`` users from the notebook's model (section 3), in the notebook's draw order.

    With ``treatment_share=0.5`` and no regression this is ``simulate_feature_experiment(n,
    seed)`` exactly; ``seed`` may be a Generator, which then advances exactly as the notebook's
    ``local_rng`` (the post-trigger draws are made and discarded for that reason).

    ``regression`` (keys in :data:`REGRESSION_KEYS`) changes the treatment arm's potential
    outcomes only, after the notebook's draws: continuous metrics get ``+ delta`` (no clipping,
    so the true shift is exactly ``delta``); binary metrics move each treated unit's probability
    by ``delta`` via :func:`_shift_binary` with one uniform per unit from ``regression_rng``
    (default: a child spawned from ``seed``). The main stream is never touched, so all other
    columns and the whole control arm equal the no-regression draw.
    """
    if not 0.0 <= treatment_share <= 1.0:
        raise ValueError(f"treatment_share must be in [0, 1], got {treatment_share}")
    regression = dict(regression or {})
    unknown = sorted(set(regression) - set(REGRESSION_KEYS))
    if unknown:
        raise ValueError(f"unknown regression keys {unknown}; expected {REGRESSION_KEYS}")
    local_rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    segments = local_rng.choice(
        ["new_user", "casual", "power_user", "enterprise"],
        size=n,
        p=[0.26, 0.36, 0.26, 0.12],
    )
    device = local_rng.choice(["desktop", "mobile"], size=n, p=[0.68, 0.32])
    region = local_rng.choice(["NA", "EU", "APAC", "LATAM"], size=n, p=[0.48, 0.24, 0.20, 0.08])

    tenure_days = np.clip(local_rng.gamma(shape=2.4, scale=70, size=n), 1, 900)
    base_activity = (
        2.2
        + 1.0 * (segments == "power_user")
        + 0.7 * (segments == "enterprise")
        - 0.6 * (segments == "new_user")
        + 0.35 * (device == "desktop")
    )
    pre_tasks_28 = local_rng.poisson(np.clip(base_activity * 6.0, 0.5, None), size=n)
    pre_revenue_28 = local_rng.gamma(shape=1.8 + 0.04 * pre_tasks_28, scale=12.0)
    pre_revenue_28 *= np.where(segments == "enterprise", 2.2, 1.0)
    pre_workflow_entries = local_rng.poisson(
        np.clip(0.18 * pre_tasks_28 + 0.8 * (segments == "power_user"), 0.1, None)
    )

    treatment = local_rng.binomial(1, treatment_share, size=n)

    baseline_tasks = (
        1.8
        + 0.18 * pre_tasks_28
        + 0.9 * (segments == "power_user")
        + 0.45 * (segments == "enterprise")
        - 0.35 * (segments == "new_user")
        + local_rng.normal(0, 1.35, size=n)
    )
    tasks0 = np.clip(baseline_tasks, 0, None)

    true_task_effect = (
        0.16
        + 0.20 * (segments == "new_user")
        + 0.24 * (segments == "power_user")
        + 0.05 * (segments == "casual")
        - 0.08 * (segments == "enterprise")
        + 0.025 * np.log1p(pre_workflow_entries)
        - 0.05 * (device == "mobile")
    )
    true_task_effect = np.clip(true_task_effect, -0.18, 0.70)
    tasks1 = np.clip(tasks0 + true_task_effect + local_rng.normal(0, 0.42, size=n), 0, None)

    revenue0 = np.clip(
        0.58 * pre_revenue_28 + 6.5 * tasks0 + local_rng.normal(0, 18, size=n),
        0,
        None,
    )
    revenue_effect = (
        5.0 * true_task_effect + 1.8 * (segments == "enterprise") - 1.0 * (device == "mobile")
    )
    revenue1 = np.clip(revenue0 + revenue_effect + local_rng.normal(0, 10, size=n), 0, None)

    latency0 = np.clip(
        local_rng.normal(260, 45, size=n)
        + 42 * (device == "mobile")
        + 28 * (segments == "enterprise"),
        120,
        None,
    )
    latency1 = (
        latency0
        + 18
        + 9 * (device == "mobile")
        + 8 * (segments == "enterprise")
        + local_rng.normal(0, 10, size=n)
    )

    error_prob0 = np.clip(
        0.011 + 0.006 * (device == "mobile") + 0.005 * (segments == "enterprise"), 0, 0.08
    )
    error_prob1 = np.clip(error_prob0 + 0.0025 + 0.002 * (device == "mobile"), 0, 0.10)
    error0 = local_rng.binomial(1, error_prob0)
    error1 = local_rng.binomial(1, error_prob1)

    support_prob0 = np.clip(
        0.018 + 0.008 * (segments == "new_user") + 0.006 * (segments == "enterprise"), 0, 0.12
    )
    support_prob1 = np.clip(
        support_prob0
        + 0.0015
        + 0.002 * (segments == "enterprise")
        - 0.001 * (segments == "power_user"),
        0,
        0.14,
    )
    support0 = local_rng.binomial(1, support_prob0)
    support1 = local_rng.binomial(1, support_prob1)

    # Post-trigger draws (notebook section 7): not part of UnitData, drawn so that a shared
    # Generator ends in the same state as the notebook's.
    post_trigger_prob0 = np.clip(
        0.18 + 0.03 * pre_workflow_entries + 0.10 * (segments == "power_user"), 0, 0.92
    )
    post_trigger_prob1 = np.clip(
        post_trigger_prob0 + 0.08 + 0.05 * (segments == "new_user"), 0, 0.97
    )
    local_rng.binomial(1, post_trigger_prob0)
    local_rng.binomial(1, post_trigger_prob1)

    if regression:
        extra = regression_rng if regression_rng is not None else local_rng.spawn(1)[0]
        # Always two uniforms per unit, in this order, whatever keys are present: the flips
        # for a metric do not depend on which other metrics regress.
        u_error = extra.random(n)
        u_support = extra.random(n)
        tasks1 = tasks1 + regression.get("tasks", 0.0)
        revenue1 = revenue1 + regression.get("revenue", 0.0)
        latency1 = latency1 + regression.get("latency_ms", 0.0)
        error1 = _shift_binary(error1, error_prob1, regression.get("error_session", 0.0), u_error)
        support1 = _shift_binary(
            support1, support_prob1, regression.get("support_ticket", 0.0), u_support
        )

    treated = treatment == 1
    return UnitData(
        user_id=np.arange(n, dtype=np.int64),
        segment=segments,
        device=device,
        region=region,
        pre_tasks_28=pre_tasks_28.astype(np.float64),
        pre_revenue_28=pre_revenue_28.astype(np.float64),
        pre_workflow_entries=pre_workflow_entries.astype(np.float64),
        tenure_days=tenure_days.astype(np.float64),
        treatment=treatment.astype(np.int64),
        tasks=np.where(treated, tasks1, tasks0).astype(np.float64),
        revenue=np.where(treated, revenue1, revenue0).astype(np.float64),
        latency_ms=np.where(treated, latency1, latency0).astype(np.float64),
        error_session=np.where(treated, error1, error0).astype(np.float64),
        support_ticket=np.where(treated, support1, support0).astype(np.float64),
    )


# ---------------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------------


def _split_exact(values: FloatArray, k: NDArray[np.int64], cuts: FloatArray) -> FloatArray:
    """Split each value into ``k`` (1-3) parts whose in-order float sum from 0.0 is the value.

    ``cuts`` holds two sorted fractions per unit. Three parts are ``v*c1``, ``v*(c2-c1)`` and
    the remainder ``v - (p1 + p2)``; two parts are ``v*c1`` and ``v - p1``. Wherever the
    in-order sum ``((0.0 + p1) + p2) + last`` differs from ``v`` in IEEE float64 (the same
    arithmetic as Python's), fewer parts are used, down to one part (always exact).
    Returns an ``(n, 3)`` array with NaN marking unused parts.
    """
    n = values.shape[0]
    out = np.full((n, 3), np.nan)
    p1 = values * cuts[:, 0]
    p2 = values * (cuts[:, 1] - cuts[:, 0])
    three_last = values - ((0.0 + p1) + p2)
    ok3 = (k == 3) & ((((0.0 + p1) + p2) + three_last) == values)
    two_last = values - (0.0 + p1)
    ok2 = (k >= 2) & ~ok3 & (((0.0 + p1) + two_last) == values)
    one = ~ok3 & ~ok2
    out[ok3, 0], out[ok3, 1], out[ok3, 2] = p1[ok3], p2[ok3], three_last[ok3]
    out[ok2, 0], out[ok2, 1] = p1[ok2], two_last[ok2]
    out[one, 0] = values[one]
    return out


def _build_events(
    units: UnitData,
    *,
    experiment: str,
    unit_ids: list[str],
    exposure_ts: FloatArray,
    max_delay: FloatArray,
    variants: Sequence[str],
    rng: np.random.Generator,
    stage: float | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Exposures at ``exposure_ts``; telemetry strictly after, within ``max_delay`` seconds.
    ``stage``: the ramp percent the exposures were assigned under, stamped on each."""
    n = len(units)
    if len(variants) != 2:
        raise ValueError("variants must be (control_name, treatment_name)")
    variant_names = np.asarray(variants, dtype=object)[units.treatment]

    covs = {name: getattr(units, name).tolist() for name in _COVARIATES}
    exposures: list[dict[str, Any]] = [
        {
            "event_id": f"{experiment}:{uid}:exposure",
            "ts": ts,
            "experiment": experiment,
            "unit_id": uid,
            "variant": var,
            "attributes": {"segment": seg, "device": dev, "region": reg},
            "covariates": {
                "pre_tasks_28": c1,
                "pre_revenue_28": c2,
                "pre_workflow_entries": c3,
                "tenure_days": c4,
            },
        }
        for uid, ts, var, seg, dev, reg, c1, c2, c3, c4 in zip(
            unit_ids,
            exposure_ts.tolist(),
            variant_names.tolist(),
            units.segment.tolist(),
            units.device.tolist(),
            units.region.tolist(),
            covs["pre_tasks_28"],
            covs["pre_revenue_28"],
            covs["pre_workflow_entries"],
            covs["tenure_days"],
            strict=True,
        )
    ]
    if stage is not None:
        for exposure in exposures:
            exposure["stage"] = float(stage)

    # Per metric: an (n, 3) array of parts (NaN = no event). Zero-valued sum metrics and
    # binary metrics without an event emit nothing (a consumer counts them as 0).
    parts: dict[str, FloatArray] = {}
    for metric, max_parts in (("tasks", 3), ("revenue", 2)):
        values = units.outcome(metric)
        k = rng.integers(1, max_parts + 1, size=n)
        cuts = np.sort(rng.uniform(0.05, 0.95, size=(n, 2)), axis=1)
        split = _split_exact(values, k, cuts)
        split[values == 0, :] = np.nan
        parts[metric] = split
    for metric in ("latency_ms", *_BINARY):
        values = units.outcome(metric)
        split = np.full((n, 3), np.nan)
        keep = values != 0 if metric in _BINARY else np.ones(n, bool)
        split[keep, 0] = values[keep]
        parts[metric] = split

    unit_idx: list[NDArray[np.intp]] = []
    metric_of: list[str] = []
    part_of: list[int] = []
    value_chunks: list[FloatArray] = []
    ts_chunks: list[FloatArray] = []
    floor = np.nextafter(exposure_ts, np.inf)
    for metric, split in parts.items():
        # Sorted fractions: part j's ts is non-decreasing in j, and the construction order
        # (part-major) breaks ties, so every consumer sees a unit's parts in order.
        fractions = np.sort(rng.random((n, 3)), axis=1)
        for j in range(3):
            present = ~np.isnan(split[:, j])
            idx = np.flatnonzero(present)
            ts = np.maximum(exposure_ts[idx] + max_delay[idx] * fractions[idx, j], floor[idx])
            unit_idx.append(idx)
            metric_of.extend([metric] * idx.size)
            part_of.extend([j] * idx.size)
            value_chunks.append(split[idx, j])
            ts_chunks.append(ts)

    all_units = np.concatenate(unit_idx) if unit_idx else np.zeros(0, np.intp)
    all_values = np.concatenate(value_chunks) if value_chunks else np.zeros(0)
    all_ts = np.concatenate(ts_chunks) if ts_chunks else np.zeros(0)
    order = np.lexsort((np.arange(all_ts.size), all_ts))
    telemetry: list[dict[str, Any]] = [
        {
            "event_id": f"{experiment}:{unit_ids[u]}:{metric_of[i]}:{part_of[i]}",
            "ts": ts,
            "unit_id": unit_ids[u],
            "metric": metric_of[i],
            "value": value,
        }
        for i, u, ts, value in zip(
            order.tolist(),
            all_units[order].tolist(),
            all_ts[order].tolist(),
            all_values[order].tolist(),
            strict=True,
        )
    ]
    return exposures, telemetry


def to_events(
    units: UnitData,
    *,
    experiment: str,
    start_ts: float,
    duration_s: float,
    seed: int,
    variants: Sequence[str] = ("control", "treatment"),
    unit_prefix: str = "u",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Exposure and telemetry events (JSON-ready dicts) for ``units``.

    Exposure ts are uniform on ``[start_ts, start_ts + duration_s / 2]``; each telemetry event
    is strictly after its unit's exposure and no later than ``start_ts + duration_s``.
    ``tasks`` becomes 1-3 events, ``revenue`` 1-2 (none when the value is 0), ``latency_ms``
    one, ``error_session``/``support_ticket`` one event of 1.0 only for units with an
    error/ticket. Summing a unit's events in event order from 0.0 reproduces its value
    exactly (see :func:`_split_exact`). Telemetry is sorted by ts. Event ids are
    ``{experiment}:{unit_id}:exposure`` and ``{experiment}:{unit_id}:{metric}:{part}``.
    """
    if duration_s <= 0:
        raise ValueError("duration_s must be positive")
    rng = np.random.default_rng(seed)
    n = len(units)
    exposure_ts = start_ts + rng.uniform(0.0, duration_s * 0.5, size=n)
    max_delay = (start_ts + duration_s) - exposure_ts
    unit_ids = [f"{unit_prefix}{u}" for u in units.user_id.tolist()]
    return _build_events(
        units,
        experiment=experiment,
        unit_ids=unit_ids,
        exposure_ts=exposure_ts,
        max_delay=max_delay,
        variants=variants,
        rng=rng,
    )


@dataclass(frozen=True, eq=False)
class UnitTotals:
    """Per-unit values recomputed from events, in first-exposure order."""

    unit_id: list[str]
    variant: NDArray[np.str_]
    values: dict[str, FloatArray]


def unit_totals(
    exposures: Sequence[Mapping[str, Any]],
    telemetry: Sequence[Mapping[str, Any]],
    metrics: Sequence[str] = METRICS,
    aggregation: Mapping[str, str] | None = None,
) -> UnitTotals:
    """Fold events into per-unit values as a streaming consumer does.

    ``sum`` metrics add event values in event order with Python floats starting from 0.0;
    ``any`` metrics are 1.0 once any event has a non-zero value. Every exposed unit counts
    (0.0 without events); the first exposure of a unit wins; telemetry for units never
    exposed, or for metrics not in ``metrics``, is ignored.
    """
    agg = dict(METRIC_AGGREGATION if aggregation is None else aggregation)
    index: dict[str, int] = {}
    variant: list[str] = []
    for event in exposures:
        uid = event["unit_id"]
        if uid not in index:
            index[uid] = len(variant)
            variant.append(event["variant"])
    running = {m: [0.0] * len(variant) for m in metrics}
    for event in telemetry:
        metric = event["metric"]
        i = index.get(event["unit_id"])
        if i is None or metric not in running:
            continue
        column = running[metric]
        value = float(event["value"])
        if agg.get(metric, "sum") == "sum":
            column[i] = column[i] + value
        else:
            column[i] = 1.0 if (column[i] or value) else 0.0
    return UnitTotals(
        unit_id=list(index),
        variant=np.asarray(variant, dtype=np.str_),
        values={m: np.asarray(v, dtype=np.float64) for m, v in running.items()},
    )


class RampTraffic:
    """Endless batches of exposure + telemetry events from the notebook's model.

    Each batch draws fresh units from :func:`simulate_units` with an advancing generator and
    the requested treatment share; exposures are at ``now`` and telemetry within 1 s after.
    Unit ids ``u{id}`` are unique across batches, counting from ``start_user_id``. With the
    same ``seed``, a traffic with a regression draws the same units as one without (the
    regression uses its own generator), differing only in the injected treatment harm.
    """

    def __init__(
        self,
        experiment: str,
        *,
        seed: int,
        regression: Mapping[str, float] | None = None,
        start_user_id: int = 0,
    ) -> None:
        units_ss, timing_ss, regression_ss = np.random.SeedSequence(seed).spawn(3)
        self.experiment = experiment
        self.regression = dict(regression or {})
        self._units_rng = np.random.default_rng(units_ss)
        self._timing_rng = np.random.default_rng(timing_ss)
        self._regression_rng = np.random.default_rng(regression_ss)
        self._next_user_id = start_user_id
        self.units_emitted = 0

    def next_batch(
        self, n_units: int, treatment_share: float, now: float, *, stage: float | None = None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """``n_units`` new units exposed at ``now``; their telemetry within the next second.
        ``stage`` (percent), when given, is stamped on the exposures, as a flag service would."""
        if n_units <= 0:
            return [], []
        units = simulate_units(
            n_units,
            seed=self._units_rng,
            treatment_share=treatment_share,
            regression=self.regression or None,
            regression_rng=self._regression_rng,
        )
        first = self._next_user_id
        self._next_user_id += n_units
        self.units_emitted += n_units
        unit_ids = [f"u{first + i}" for i in range(n_units)]
        return _build_events(
            units,
            experiment=self.experiment,
            unit_ids=unit_ids,
            exposure_ts=np.full(n_units, float(now)),
            max_delay=np.full(n_units, 0.999),
            variants=("control", "treatment"),
            rng=self._timing_rng,
            stage=stage,
        )
