"""ecd2g_fast.metrics: distances with known answers, smoothing, noise floors, input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ecd2g_fast import metrics as M


# ---------------------------------------------------------------------------- total variation
@pytest.mark.parametrize(
    "p, q, expected",
    [
        pytest.param([1, 0, 0], [0, 0, 1], 1.0, id="disjoint-points"),
        pytest.param([0.5, 0.5, 0, 0], [0, 0, 0.3, 0.7], 1.0, id="disjoint-supports"),
        pytest.param([0.2, 0.3, 0.5], [0.2, 0.3, 0.5], 0.0, id="identical"),
        pytest.param([0.5, 0.5, 0.0], [0.25, 0.25, 0.5], 0.5, id="hand"),
        pytest.param([2, 2, 0], [1, 1, 2], 0.5, id="counts-normalised"),
        pytest.param([0.1, 0.9], [0.4, 0.6], 0.3, id="two-cells"),
    ],
)
def test_total_variation_known_values(p, q, expected):
    assert M.total_variation(p, q) == pytest.approx(expected, abs=1e-15)
    assert M.total_variation(q, p) == pytest.approx(expected, abs=1e-15)


def test_total_variation_accepts_torch_and_numpy():
    p = torch.tensor([3, 1], dtype=torch.int64)
    q = np.array([0.5, 0.5])
    assert M.total_variation(p, q) == pytest.approx(0.25)


# ---------------------------------------------------------------------------- KL and smoothing
def test_kl_hand_computed():
    # KL([1/2, 1/2] || [1/4, 3/4]) = 1/2 ln 2 + 1/2 ln(2/3)
    expected = 0.5 * math.log(2.0) + 0.5 * math.log(2.0 / 3.0)
    assert M.kl_divergence([0.5, 0.5], [0.25, 0.75]) == pytest.approx(expected, rel=1e-14)
    assert M.kl_divergence([0.3, 0.7], [0.3, 0.7]) == 0.0


def test_kl_ignores_cells_outside_p_and_is_infinite_on_missing_support():
    assert M.kl_divergence([1.0, 0.0], [0.5, 0.5]) == pytest.approx(math.log(2.0))
    assert M.kl_divergence([0.5, 0.5], [1.0, 0.0]) == math.inf


def test_additive_smoothing_hand_computed():
    np.testing.assert_allclose(
        M.additive_smoothing([3, 0, 1], 0.5), np.array([3.5, 0.5, 1.5]) / 5.5, rtol=1e-15
    )
    np.testing.assert_allclose(M.additive_smoothing([3, 0, 1], 1.0), np.array([4, 1, 2]) / 7.0, rtol=1e-15)
    np.testing.assert_allclose(M.additive_smoothing([3, 0, 1], 0.0), np.array([3, 0, 1]) / 4.0, rtol=1e-15)


def test_smoothed_kl_hand_computed():
    # target [1/2, 1/2, 0], generated counts [4, 0, 0] with alpha 1 -> [5/7, 1/7, 1/7]
    expected = 0.5 * math.log(0.5 / (5 / 7)) + 0.5 * math.log(0.5 / (1 / 7))
    assert M.smoothed_kl([0.5, 0.5, 0.0], [4, 0, 0], alpha=1.0) == pytest.approx(expected, rel=1e-14)
    assert math.isfinite(M.smoothed_kl([0.5, 0.5, 0.0], [4, 0, 0]))


# ---------------------------------------------------------------------------- Jensen-Shannon
def test_js_known_values_in_bits():
    assert M.js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    assert M.js_divergence([0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]) == pytest.approx(1.0)
    assert M.js_divergence([0.2, 0.8], [0.2, 0.8]) == 0.0
    # p = [1, 0], q = [1/2, 1/2], m = [3/4, 1/4]
    kl_pm = math.log2(1 / 0.75)
    kl_qm = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    assert M.js_divergence([1, 0], [0.5, 0.5]) == pytest.approx(0.5 * (kl_pm + kl_qm), rel=1e-14)


def test_js_is_symmetric():
    rng = np.random.default_rng(0)
    p, q = rng.dirichlet(np.ones(7)), rng.dirichlet(np.ones(7))
    assert M.js_divergence(p, q) == pytest.approx(M.js_divergence(q, p), rel=1e-14)


# ---------------------------------------------------------------------------- histograms, support
def test_histogram_uses_row_major_order():
    states = np.array([[0, 1], [1, 0], [1, 0], [2, 2]])
    counts = M.histogram(states, 3)
    expected = np.zeros(9, dtype=np.int64)
    expected[[1, 3, 8]] = [1, 2, 1]
    np.testing.assert_array_equal(counts, expected)
    np.testing.assert_array_equal(M.histogram(torch.tensor([0, 2, 2]), 3), [1, 0, 2])


def test_occupied_cells():
    pmf = [0.05, 0.5, 0.15, 0.3]
    assert M.occupied_cells(pmf, 0.8) == 2
    assert M.occupied_cells(pmf, 0.9) == 3
    assert M.occupied_cells(pmf, 1.0) == 4
    assert M.occupied_cells([0.0, 1.0, 0.0], 0.99) == 1


# ---------------------------------------------------------------------------- noise floors
def test_tv_floor_matches_its_normal_approximation():
    # E|Binomial(n, p)/n - p| ~ sqrt(2 p (1 - p) / (pi n)); TV = half the sum over cells
    m, n = 100, 20_000
    pmf = np.full(m, 1.0 / m)
    approx = 0.5 * m * math.sqrt(2 * (1 / m) * (1 - 1 / m) / (math.pi * n))
    rng = np.random.default_rng(1)
    floor = M.tv_floor(pmf, n, rng, repeats=20)
    assert floor == pytest.approx(approx, rel=0.05)
    assert M.tv_floor_two_sample(pmf, n, rng, repeats=20) == pytest.approx(math.sqrt(2) * approx, rel=0.05)


def test_kl_and_js_floors_are_small_and_positive():
    rng = np.random.default_rng(2)
    pmf = rng.dirichlet(np.ones(50))
    assert 0 < M.smoothed_kl_floor(pmf, 100_000, rng) < 1e-3
    assert 0 < M.js_floor(pmf, 100_000, rng) < 1e-3


# ---------------------------------------------------------------------------- input checks
@pytest.mark.parametrize(
    "call, match",
    [
        pytest.param(lambda: M.total_variation([1, -1], [1, 1]), "p must be non-negative", id="negative"),
        pytest.param(lambda: M.total_variation([0, 0], [1, 1]), "p must have a positive sum", id="zero-sum"),
        pytest.param(lambda: M.total_variation([1, 1], [1, 1, 1]), "same number of cells", id="sizes"),
        pytest.param(lambda: M.js_divergence([1, math.nan], [1, 1]), "p must be finite", id="nan"),
        pytest.param(lambda: M.additive_smoothing([1, 2], -1.0), "alpha", id="alpha"),
        pytest.param(lambda: M.histogram(np.array([[0.5, 1.0]]), 3), "integers", id="float-states"),
        pytest.param(lambda: M.histogram(np.array([[0, 3]]), 3), r"\[0, 3\)", id="out-of-range"),
        pytest.param(lambda: M.tv_floor([1.0], 0, np.random.default_rng()), "num_samples", id="floor-n"),
        pytest.param(lambda: M.occupied_cells([1.0], 0.0), "mass", id="mass"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


# ---------------------------------------------------------------------------- chi-square test
@pytest.mark.parametrize(
    "dof, exact, rel",
    [(1, 23.9281, 0.15), (10, 46.8630, 0.024), (100, 182.1268, 0.0016), (1000, 1227.1524, 1e-4)],
)
def test_chi_square_critical_is_a_slightly_conservative_quantile(dof, exact, rel):
    # exact: the 1 - 1e-6 quantile of chi-square(dof) (regularised upper incomplete gamma, mpmath);
    # Wilson-Hilferty lies above it, so the false-failure rate is at most 1e-6
    assert exact < M.chi_square_critical(dof) < exact * (1 + rel)
    assert M.chi_square_critical(dof, z=0.0) == pytest.approx(dof * (1 - 2 / (9 * dof)) ** 3)


def test_pooled_cells_neighbours_and_together():
    expected = [10.0, 1.0, 2.0, 3.0, 7.0, 1.0, 1.0, 0.5]
    # big cells 0 and 4 keep labels 0, 1; the small ones form runs 1+2+3 (closed at 6) and
    # 1+1+0.5 (short: joins the run before)
    np.testing.assert_array_equal(M.pooled_cells(expected), [0, 2, 2, 2, 1, 2, 2, 2])
    np.testing.assert_array_equal(M.pooled_cells(expected[:7]), [0, 2, 2, 2, 1, 2, 2])
    np.testing.assert_array_equal(M.pooled_cells([3.0, 3.0, 9.0, 4.0, 1.0]), [1, 1, 0, 2, 2])
    np.testing.assert_array_equal(M.pooled_cells(expected, pooling="together"), [0, 2, 2, 2, 1, 2, 2, 2])
    np.testing.assert_array_equal(M.pooled_cells([6.0, 6.0], pooling="together"), [0, 1])
    assert M.pooled_cells([1.0, 1.0, 1.0, 1.0, 1.0, 1.0], min_expected=2.0).tolist() == [0, 0, 1, 1, 2, 2]


def test_chi_square_test_hand_computed_statistic():
    # n = 100, expected 50, 30, 20; observed 55, 25, 20: (25 + 25) / 50 + 25 / 30 ... by hand
    result = M.chi_square_test(torch.tensor([55, 25, 20]), np.array([0.5, 0.3, 0.2]))
    assert result.statistic == pytest.approx(25 / 50 + 25 / 30 + 0.0)
    assert result.dof == 2 and result.samples == 100 and result.passed
    assert result.critical == pytest.approx(M.chi_square_critical(2))
    assert "dof 2, n 100" in str(result) and "<=" in str(result)


def test_chi_square_test_accepts_its_law_and_rejects_another():
    rng = np.random.default_rng(3)
    pmf = rng.dirichlet(np.ones(200))
    pmf[:50] *= 1e-4  # a tail of small expected counts, pooled
    pmf /= pmf.sum()
    counts = rng.multinomial(20_000, pmf)
    for pooling in ("neighbours", "together"):
        assert M.chi_square_test(counts, pmf, pooling=pooling).passed
    shifted = np.roll(pmf, 1)
    failed = M.chi_square_test(counts, shifted)
    assert not failed.passed and ">" in str(failed)


def test_chi_square_test_rejects_samples_of_probability_zero_and_handles_one_cell():
    impossible = M.chi_square_test([5, 1], [1.0, 0.0])
    assert not impossible.passed and impossible.impossible == 1 and "probability 0" in str(impossible)
    single = M.chi_square_test([0, 7], [0.0, 1.0])
    assert single.passed and single.dof == 0 and "nothing to test" in str(single)


@pytest.mark.parametrize(
    "call, match",
    [
        pytest.param(lambda: M.chi_square_critical(0), "dof", id="dof"),
        pytest.param(lambda: M.chi_square_test([1, 2], [0.5, 0.25, 0.25]), "same number", id="sizes"),
        pytest.param(
            lambda: M.chi_square_test([1, -2], [0.5, 0.5]), "counts must be non-negative", id="counts"
        ),
        pytest.param(lambda: M.pooled_cells([1.0], pooling="nearest"), "pooling", id="pooling"),
    ],
)
def test_chi_square_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()
