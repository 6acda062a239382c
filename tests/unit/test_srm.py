"""The sequential SRM test: oracles (savvi, the paper's formulas), error rates, edge cases."""

from __future__ import annotations

import inspect
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from savvi.multinomial import Multinomial
from scipy import stats
from scipy.special import gammaln

from monitor.srm import (
    DEFAULT_CONCENTRATION,
    expected_allocation,
    log_bayes_factor,
    log_bayes_factors,
    srm_test,
)

EPS = np.finfo(np.float64).eps


def float_budget(counts: list[int], k: float) -> float:
    """Absolute rounding budget of any double-precision gammaln evaluation of log BF.

    The formula subtracts lgamma terms of size ~ n log n (2.7e7 at n = 2e6) down to a result
    of order 1, so the last few ulps of the largest term -- 4e-9 there -- are noise in every
    implementation, savvi's included (both are ~1e-9 relative off an exact sum at n = 2e6).
    Negligible below ~1e4 units, where the 1e-9 relative criterion alone applies.
    """
    return 8 * EPS * (1.0 + abs(float(gammaln(k + sum(counts)))))


def tolerance(oracle: float, counts: list[int], k: float) -> float:
    return 1e-9 * abs(oracle) + float_budget(counts, k)


def close(actual: float, oracle: float, counts: list[int], k: float) -> bool:
    return abs(actual - oracle) <= tolerance(oracle, counts, k)


def paper_log_bf(x: list[int], theta_0: list[float], k: float) -> float:
    """Lindon & Malek (2022) Bayes factor, Dirichlet(alpha_0 = k theta_0) vs theta_0.

    log BF = log Gamma(sum alpha_0) - log Gamma(sum alpha_0 + n)
             + sum_i [log Gamma(alpha_0i + x_i) - log Gamma(alpha_0i)] - sum_i x_i log theta_0i
    """
    alpha_0 = [k * t for t in theta_0]
    n = sum(x)
    return (
        math.lgamma(sum(alpha_0))
        - math.lgamma(sum(alpha_0) + n)
        + sum(math.lgamma(a + xi) - math.lgamma(a) for a, xi in zip(alpha_0, x, strict=True))
        - sum(xi * math.log(t) for xi, t in zip(x, theta_0, strict=True))
    )


def paper_log_bf_sequential(x: list[int], theta_0: list[float], k: float) -> float:
    """The paper's one-unit-at-a-time update, summed exactly (fsum) as an accuracy reference.

    A unit in cell i multiplies the odds by (alpha_{t-1,i} / sum_j alpha_{t-1,j}) / theta_0i,
    and alpha_t gains 1 in that cell; units are exchangeable, so cell i's units contribute
    alpha_0i + 0, ..., alpha_0i + x_i - 1 to the numerators whatever the arrival order.
    """
    alpha_0 = [k * t for t in theta_0]
    terms: list[float] = []
    for a, xi, t in zip(alpha_0, x, theta_0, strict=True):
        terms += np.log(a + np.arange(xi)).tolist()
        terms += [-xi * math.log(t)]
    terms += (-np.log(sum(alpha_0) + np.arange(sum(x)))).tolist()
    return math.fsum(terms)


def savvi_odds(x: list[int], theta_0: list[float], k: float = 100) -> float:
    m = Multinomial(0.05, np.array(theta_0), k=k)
    m.update(np.array(x))
    return float(m.odds)


THIRD = [1 / 3, 1 / 3, 1 / 3]
# savvi's constructor requires theta_0.sum() == 1 exactly, which all of these satisfy
CASES: list[tuple[list[int], list[float]]] = [
    ([0, 0], [0.5, 0.5]),
    ([1, 0], [0.5, 0.5]),
    ([10, 12], [0.5, 0.5]),
    ([5_000, 5_100], [0.5, 0.5]),
    ([52_000, 48_000], [0.5, 0.5]),
    ([1_000_000, 1_001_500], [0.5, 0.5]),
    ([3, 997], [0.01, 0.99]),
    ([50, 9_950], [0.01, 0.99]),
    ([10_100, 989_900], [0.01, 0.99]),
    ([300_000, 2_700_000], [0.1, 0.9]),
    ([301_000, 2_699_000], [0.1, 0.9]),
    ([0, 0, 7], THIRD),
    ([330, 345, 325], THIRD),
    ([2_000_000, 2_001_000, 1_999_000], THIRD),
    ([1_000, 480, 520], [0.5, 0.25, 0.25]),
    ([5_000_000, 2_510_000, 2_490_000], [0.5, 0.25, 0.25]),
]


def case_id(case: tuple[list[int], list[float]]) -> str:
    return "-".join(map(str, case[0])) + "@" + "/".join(f"{p:.2g}" for p in case[1])


# --- 1. the reference implementation, savvi ------------------------------------------------


def test_default_concentration_is_savvis() -> None:
    assert inspect.signature(Multinomial).parameters["k"].default == DEFAULT_CONCENTRATION


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_savvi(case: tuple[list[int], list[float]]) -> None:
    x, p = case
    odds = savvi_odds(x, p)
    assert 0 < odds < math.inf, "pick cases whose odds savvi can represent"
    log_odds = math.log(odds)
    assert close(log_bayes_factor(x, p), log_odds, x, DEFAULT_CONCENTRATION)
    # an absolute error e in log BF is a relative error of about e in the p-value
    rel = 2 * tolerance(log_odds, x, DEFAULT_CONCENTRATION)
    assert srm_test(x, p).p_value == pytest.approx(min(1.0, 1 / odds), rel=rel, abs=0)


@pytest.mark.parametrize("k", [0.5, 10.0, 1_000.0, 1e5])
@pytest.mark.parametrize("case", CASES[2::3], ids=case_id)
def test_matches_savvi_at_other_concentrations(
    case: tuple[list[int], list[float]], k: float
) -> None:
    x, p = case
    assert close(log_bayes_factor(x, p, k), math.log(savvi_odds(x, p, k)), x, k)


def test_gross_mismatch_at_scale_matches_savvi_p_value_of_zero() -> None:
    x, p = [2_000_000, 1_000_000], [0.5, 0.5]
    # savvi keeps the odds on the linear scale, which overflows; the log scale does not
    with pytest.warns(RuntimeWarning, match="overflow"):
        assert savvi_odds(x, p) == math.inf
    result = srm_test(x, p)
    assert result.p_value == 0.0 and result.mismatch
    assert math.isfinite(result.log_bayes_factor) and result.log_bayes_factor > 1e5


@pytest.mark.parametrize("p", [[0.5, 0.5], [0.01, 0.99], THIRD])
def test_closed_form_equals_savvis_streamed_updates(p: list[float]) -> None:
    """savvi multiplies per-batch odds; our closed form on cumulative counts must agree."""
    rng = np.random.default_rng(7)
    m = Multinomial(0.05, np.array(p))
    cumulative = np.zeros(len(p), dtype=np.int64)
    for size in [1, 2, 5, 40, 300, 2_000, 20_000]:
        batch = rng.multinomial(size, p)
        m.update(batch)
        cumulative += batch
        x = cumulative.tolist()
        assert close(log_bayes_factor(x, p), math.log(m.odds), x, DEFAULT_CONCENTRATION)


def test_empty_zero_probability_cell_is_dropped_as_savvi_would_need() -> None:
    # savvi cannot take a zero cell (Gamma(0) is infinite); dropping it is the same test
    x, p = [400, 0, 610], [0.4, 0.0, 0.6]
    reduced = log_bayes_factor([400, 610], [0.4, 0.6])
    assert log_bayes_factor(x, p) == reduced
    assert reduced == pytest.approx(math.log(savvi_odds([400, 610], [0.4, 0.6])), rel=1e-9)


# --- 2. the paper's formula, transcribed -----------------------------------------------------


@pytest.mark.parametrize("k", [1.0, DEFAULT_CONCENTRATION, 5_000.0])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_paper_closed_form(case: tuple[list[int], list[float]], k: float) -> None:
    x, p = case
    assert close(log_bayes_factor(x, p, k), paper_log_bf(x, p, k), x, k)


# fsum over one log per unit: kept to <= 3e6 units so the file stays fast
@pytest.mark.parametrize("case", [c for c in CASES if sum(c[0]) <= 3_000_000], ids=case_id)
def test_matches_paper_sequential_update_summed_exactly(
    case: tuple[list[int], list[float]],
) -> None:
    x, p = case
    oracle = paper_log_bf_sequential(x, p, DEFAULT_CONCENTRATION)
    assert close(log_bayes_factor(x, p), oracle, x, DEFAULT_CONCENTRATION)


@pytest.mark.parametrize("p", [[0.3, 0.7], [0.2, 0.5, 0.3]])
@pytest.mark.parametrize("k", [2.0, DEFAULT_CONCENTRATION])
def test_bayes_factor_is_dirichlet_multinomial_over_multinomial(p: list[float], k: float) -> None:
    """A third, independent oracle: scipy's two pmfs (the multinomial coefficients cancel)."""
    rng = np.random.default_rng(3)
    for n in [0, 1, 17, 900]:
        x = rng.multinomial(n, p)
        oracle = stats.dirichlet_multinomial.logpmf(
            x, k * np.array(p), n
        ) - stats.multinomial.logpmf(x, n, p)
        assert log_bayes_factor(x, p, k) == pytest.approx(oracle, rel=1e-9, abs=1e-11)


@pytest.mark.parametrize("p", [[0.5, 0.5], [0.05, 0.95], [0.2, 0.5, 0.3]])
def test_bayes_factor_is_a_mean_one_martingale_under_the_null(p: list[float]) -> None:
    """The property Ville's inequality needs, checked exactly rather than by simulation."""
    d = len(p)
    n = 30
    outcomes = np.array(
        [c for c in itertools.product(range(n + 1), repeat=d) if sum(c) == n], dtype=np.int64
    )
    null_pmf = stats.multinomial.pmf(outcomes, n, p)
    assert np.sum(null_pmf * np.exp(log_bayes_factors(outcomes, p))) == pytest.approx(1, rel=1e-12)
    # one step: E[BF_{n+1} | x] = sum_i p_i BF(x + e_i) = BF(x), for every history x
    steps = outcomes[:, None, :] + np.eye(d, dtype=np.int64)
    next_bf = np.exp(log_bayes_factors(steps, p)) @ np.array(p)
    np.testing.assert_allclose(next_bf, np.exp(log_bayes_factors(outcomes, p)), rtol=1e-12)


# --- 3. type I error under continuous monitoring ---------------------------------------------

STREAMS, BATCH, LOOKS = 2_000, 50, 400  # 400 looks of 50 units: up to 20,000 units per stream


@pytest.mark.parametrize("p", [[0.1, 0.9], THIRD], ids=["10/90", "thirds"])
def test_aa_false_alarm_rate_holds_at_every_look_unlike_repeated_chi_square(
    p: list[float],
) -> None:
    alpha = 0.05
    rng = np.random.default_rng(2022)
    cumulative = rng.multinomial(BATCH, p, size=(STREAMS, LOOKS)).cumsum(axis=1)
    ever_srm = (log_bayes_factors(cumulative, p) >= math.log(1 / alpha)).any(axis=1).mean()
    se = math.sqrt(alpha * (1 - alpha) / STREAMS)
    assert ever_srm <= alpha + 3 * se

    n = cumulative.sum(axis=-1, keepdims=True)
    chi2 = stats.chisquare(cumulative, n * np.array(p), axis=-1).pvalue
    ever_chi2 = (chi2 <= alpha).any(axis=1).mean()
    # the baseline that motivates the whole module: peeking inflates a fixed-n test
    assert ever_chi2 > 2 * alpha
    assert ever_chi2 > 5 * ever_srm


# --- 4. power ---------------------------------------------------------------------------------


def test_one_point_imbalance_is_detected_by_100k_units() -> None:
    rng = np.random.default_rng(51)
    p0 = [0.5, 0.5]
    cumulative = rng.multinomial(1_000, [0.51, 0.49], size=(200, 100)).cumsum(axis=1)
    alpha = 0.001
    detected = (log_bayes_factors(cumulative, p0) >= math.log(1 / alpha)).any(axis=1)
    assert detected.mean() >= 0.8
    # the vectorised path and the scalar API agree on the last look
    last = [srm_test(c, p0, alpha=alpha) for c in cumulative[:20, -1]]
    lbf = log_bayes_factors(cumulative[:20, -1], p0)
    assert [r.mismatch for r in last] == (lbf >= math.log(1 / alpha)).tolist()


@pytest.mark.parametrize(
    ("p0", "half_lost"),
    [([0.5, 0.5], 1), (THIRD, 2), ([0.9, 0.1], 1)],
    ids=["50/50", "thirds", "10%-treatment"],
)
def test_variant_losing_half_its_traffic_is_detected_within_2000_units(
    p0: list[float], half_lost: int
) -> None:
    actual = np.array(p0)
    actual[half_lost] /= 2
    actual /= actual.sum()
    rng = np.random.default_rng(half_lost)
    cumulative = rng.multinomial(50, actual, size=(200, 40)).cumsum(axis=1)
    detected = (log_bayes_factors(cumulative, p0) >= math.log(1 / 0.001)).any(axis=1)
    assert detected.all()


# --- 5. edge cases and the API ----------------------------------------------------------------


@pytest.mark.parametrize("p", [[0.5, 0.5], [0.01, 0.99], THIRD, [0.0, 1.0]])
def test_no_units_means_no_evidence(p: list[float]) -> None:
    result = srm_test([0] * len(p), p)
    assert (result.log_bayes_factor, result.p_value) == (0.0, 1.0)
    assert (result.mismatch, result.reason) == (False, "ok")


def test_units_in_control_at_a_100_percent_stage_are_a_mismatch() -> None:
    p = expected_allocation(2, 100.0)
    assert p == (0.0, 1.0)
    result = srm_test([1, 5_000], p, min_units=1_000_000)
    assert result.log_bayes_factor == math.inf
    assert (result.p_value, result.mismatch, result.reason) == (0.0, True, "mismatch")
    # an empty control leaves one cell with probability 1: the data cannot be evidence
    clean = srm_test([0, 5_000], p)
    assert (clean.log_bayes_factor, clean.p_value, clean.mismatch) == (0.0, 1.0, False)


def test_min_units_suppresses_the_verdict_but_not_the_evidence() -> None:
    x, p = [0, 80], [0.5, 0.5]
    early = srm_test(x, p, min_units=81)
    assert early.p_value <= early.alpha, "the data alone would be a mismatch"
    assert (early.mismatch, early.reason) == (False, "too_few_units")
    due = srm_test(x, p, min_units=80)
    assert (due.mismatch, due.reason) == (True, "mismatch")
    assert due.p_value == early.p_value


def test_result_fields() -> None:
    result = srm_test(np.array([120, 80]), np.array([0.5, 0.5]), alpha=0.01)
    assert result.counts == (120, 80) and all(type(c) is int for c in result.counts)
    assert result.expected == (0.5, 0.5)
    assert result.alpha == 0.01
    assert result.p_value == pytest.approx(math.exp(-result.log_bayes_factor))
    with pytest.raises(AttributeError):
        result.mismatch = False  # type: ignore[misc]


@pytest.mark.parametrize(
    ("args", "want"),
    [
        ((2, 25.0), (0.75, 0.25)),
        ((2, 0.0), (1.0, 0.0)),
        ((3, 50.0), (0.5, 0.25, 0.25)),
        ((3, 10.0, 2), (0.05, 0.05, 0.9)),
        ((4, 100.0, 1), (1 / 3, 0.0, 1 / 3, 1 / 3)),
    ],
)
def test_expected_allocation(args: tuple[int, float, int], want: tuple[float, ...]) -> None:
    got = expected_allocation(*args)
    assert got == pytest.approx(want, abs=1e-15)
    assert math.fsum(got) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((1, 50.0), "n_variants"),
        ((2, -1.0), "treatment_percent"),
        ((2, 100.5), "treatment_percent"),
        ((2, math.nan), "treatment_percent"),
        ((2, 50.0, 2), "control_index"),
        ((2, 50.0, -1), "control_index"),
    ],
)
def test_expected_allocation_rejects(args: tuple[int, float, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        expected_allocation(*args)


@pytest.mark.parametrize(
    ("counts", "expected", "kwargs", "match"),
    [
        ([5, -1], [0.5, 0.5], {}, "non-negative"),
        ([5, 1.5], [0.5, 0.5], {}, "whole numbers"),
        (["5", "1"], [0.5, 0.5], {}, "integers"),
        ([], [], {}, "at least one variant"),
        ([[5, 1]], [0.5, 0.5], {}, "one-dimensional"),
        ([5, 1, 2], [0.5, 0.5], {}, "length mismatch"),
        ([5, 1], [0.5, 0.49], {}, "sum to 1"),
        ([5, 1], [0.5, 0.5 + 2e-9], {}, "sum to 1"),
        ([5, 1], [1.5, -0.5], {}, "non-negative"),
        ([5, 1], [[0.5, 0.5]], {}, "one-dimensional"),
        ([5, 1], [0.5, 0.5], {"alpha": 0.0}, "alpha"),
        ([5, 1], [0.5, 0.5], {"alpha": 1.0}, "alpha"),
        ([5, 1], [0.5, 0.5], {"concentration": 0.0}, "concentration"),
        ([5, 1], [0.5, 0.5], {"concentration": math.inf}, "concentration"),
        ([5, 1], [0.5, 0.5], {"min_units": -1}, "min_units"),
    ],
)
def test_srm_test_rejects(
    counts: list[int], expected: list[float], kwargs: dict[str, float], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        srm_test(counts, expected, **kwargs)  # type: ignore[arg-type]


def test_probabilities_within_tolerance_are_accepted_and_renormalised() -> None:
    result = srm_test([5, 1], [0.5, 0.5 + 5e-10])
    assert math.fsum(result.expected) == pytest.approx(1.0, abs=1e-15)


@st.composite
def experiments(draw: st.DrawFn) -> tuple[list[int], list[float], list[int]]:
    d = draw(st.integers(2, 5))
    weights = draw(st.lists(st.integers(0, 1_000), min_size=d, max_size=d).filter(any))
    p = [w / sum(weights) for w in weights]
    counts = [
        draw(st.integers(0, 10_000_000)) if w > 0 else draw(st.sampled_from([0, 0, 0, 3]))
        for w in weights
    ]
    return counts, p, draw(st.permutations(range(d)))


@settings(max_examples=300, deadline=None)
@given(experiments(), st.sampled_from([0.001, 0.05]))
def test_invariant_to_relabelling_variants(
    experiment: tuple[list[int], list[float], list[int]], alpha: float
) -> None:
    counts, p, order = experiment
    a = srm_test(counts, p, alpha=alpha)
    b = srm_test([counts[i] for i in order], [p[i] for i in order], alpha=alpha)
    assert 0.0 <= a.p_value <= 1.0
    assert a.mismatch == (a.p_value <= alpha)
    if math.isinf(a.log_bayes_factor):
        assert b.log_bayes_factor == math.inf
    else:
        # only the order of the per-cell sum changes: a few ulps of the largest term
        assert close(b.log_bayes_factor, a.log_bayes_factor, counts, DEFAULT_CONCENTRATION)
    assert (b.p_value == pytest.approx(a.p_value, rel=1e-6)) and b.reason == a.reason
