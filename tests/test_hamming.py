"""Hamming circuit: potentials and currents against a dense solve, Kirchhoff, kernel tables against
exact arithmetic, tables against potentials, extremes, bad input (docs/hamming.md)."""

from __future__ import annotations

import dataclasses
import decimal
import itertools
import math
from decimal import Decimal
from fractions import Fraction

import pytest
import torch

from ecd2g_fast import Circuit
from ecd2g_fast.hamming import HammingCircuit, distance_histogram

from .testing import assert_close_to_reference, assert_equal_to_reference


def random_pmf(m: int, seed: int) -> torch.Tensor:
    w = torch.rand(m, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) ** 3
    return w / w.sum()


def all_states(K: int, D: int) -> torch.Tensor:
    """``(M, D)`` row-major, written out without the package's codec."""
    return torch.tensor(list(itertools.product(range(K), repeat=D)), dtype=torch.int64).reshape(-1, D)


def conductance_matrix(c: HammingCircuit) -> torch.Tensor:
    """``(M, M)``: ``g`` on the diagonal, ``G`` between states one coordinate apart, 0 elsewhere."""
    states = all_states(c.num_categories, c.dim)
    distance = (states[:, None, :] != states[None, :, :]).sum(-1)
    values = torch.tensor([c.g, c.G, 0.0], dtype=torch.float64)
    return values[distance.clamp(max=2)]


def dense_potentials(c: HammingCircuit, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Node-voltage equations ``Lap phi = injection`` of the whole circuit, grounded at the last
    vertex; independent of the package's formulas. ``(L+1, M)`` in the gauge of the solve."""
    M, L = c.num_states, c.num_layers
    C = conductance_matrix(c)
    lap = torch.zeros((L + 1) * M, (L + 1) * M, dtype=torch.float64)
    for l in range(L):
        a, b = slice(l * M, (l + 1) * M), slice((l + 1) * M, (l + 2) * M)
        lap[a, b] -= C
        lap[b, a] -= C.T
    lap -= torch.diag(lap.sum(1))
    injection = torch.zeros((L + 1) * M, dtype=torch.float64)
    injection[:M] += p
    injection[-M:] -= q
    phi = torch.zeros((L + 1) * M, dtype=torch.float64)
    phi[:-1] = torch.linalg.solve(lap[:-1, :-1], injection[:-1])
    # one step of iterative refinement with the residual of the exact circuit in rationals (the
    # conductances are exact floats; the rounded diagonal of lap is not): the float64 solve alone
    # errs by (condition number) x eps, up to 1e-11 here
    rows, cols = torch.nonzero(lap - torch.diag(lap.diag()), as_tuple=True)
    exact = [Fraction(v) for v in phi.tolist()]
    residual = [Fraction(v) for v in injection.tolist()]
    for i, j, a in zip(rows.tolist(), cols.tolist(), lap[rows, cols].tolist()):
        residual[i] += Fraction(a) * (exact[i] - exact[j])
    correction = torch.linalg.solve(
        lap[:-1, :-1], torch.tensor([float(v) for v in residual[:-1]], dtype=torch.float64)
    )
    phi[:-1] += correction
    return phi.reshape(L + 1, M)


# (K, D, L, r, R); R = None is the default r D (K-1)
CIRCUITS = [
    (2, 2, 1, 0.1, None),
    (2, 3, 4, 0.1, None),
    (2, 5, 6, 0.5, 2.0),
    (3, 2, 3, 0.1, None),
    (3, 3, 5, 1.0, 0.3),
    (2, 4, 2, 0.01, 1000.0),
    (3, 4, 6, 0.2, 7.0),
    (3, 5, 2, 0.1, None),
]
IDS = [f"K{k}-D{d}-L{l}-r{r}-R{R}" for k, d, l, r, R in CIRCUITS]


@pytest.mark.parametrize("K,D,L,r,R", CIRCUITS, ids=IDS)
def test_potentials_and_currents_match_dense_solve(K, D, L, r, R):
    c = HammingCircuit(K, D, L, r, R)
    p, q = random_pmf(c.num_states, K + D), random_pmf(c.num_states, 10 * L + 1)
    phi = c.potentials(p, q)
    direct = dense_potentials(c, p, q)
    direct += phi.mean() - direct.mean()
    assert_close_to_reference(phi, direct, rtol=1e-12, scale=float(direct.max() - direct.min()))
    # a current is a difference of nearly equal potentials: compared at the scale of its terms,
    # C (|phi_l(z)| + |phi_{l+1}(w)|), which bounds the rounding of any evaluation (docs/theory.md §7)
    heads = c.neighbours()
    C = conductance_matrix(c)[torch.arange(c.num_states)[:, None], heads]
    ohm = C * (direct[:-1, :, None] - direct[1:, heads])
    scale = C * (direct[:-1, :, None].abs() + direct[1:, heads].abs())
    assert_close_to_reference(c.currents(p, q), ohm, rtol=1e-12, scale=scale)


def test_defaults_config_and_gauge():
    c = HammingCircuit(3, 4, 5)
    assert c.R == c.r * 4 * 2 and abs(c.lateral_share - 0.5) < 1e-15
    assert (c.num_states, c.num_neighbours, c.d) == (81, 9, c.g + 8 * c.G)
    assert HammingCircuit(**dataclasses.asdict(c.config)).config == c.config
    assert HammingCircuit(2, 3, 1, R=5.0).config.R == 5.0
    p, q = random_pmf(81, 0), random_pmf(81, 1)
    means = c.potentials(p, q).mean(dim=1)
    assert_close_to_reference(means, -torch.arange(6, dtype=torch.float64) * c.s, rtol=1e-15, scale=c.s)
    huge = HammingCircuit(256, 4096, 3)
    assert huge.num_states == 256**4096 and huge.s == 0.0
    assert abs(huge.log_s + 4096 * math.log(256) + huge.log_d) < 1e-9


def test_one_coordinate_is_the_complete_circuit():
    """At D = 1 every pair of different states is one coordinate apart: the Hamming circuit is the
    complete circuit of docs/theory.md, with A_l(h) = a_l ([h = 0] - 1/M)."""
    hamming, complete = HammingCircuit(50, 1, 10, 0.1, 100.0), Circuit(50, 1, 10, 0.1, 100.0)
    p, q = random_pmf(50, 11), random_pmf(50, 12)
    reference = complete.potentials(p, q)
    spread = float(reference.max() - reference.min())
    assert_close_to_reference(hamming.potentials(p, q), reference, rtol=1e-12, scale=spread)
    kernel = hamming.kernel_tables().kernel.to_float()
    assert_close_to_reference(kernel[:, 0] - kernel[:, 1], complete.a, rtol=1e-12)


def test_state_codec_is_the_circuits():
    h, c = HammingCircuit(3, 4, 2), Circuit(3, 4, 2)
    states = all_states(3, 4)
    assert_equal_to_reference(h.state_index(states), torch.arange(81))
    assert_equal_to_reference(h.index_state(torch.arange(81)), c.index_state(torch.arange(81)))
    assert_equal_to_reference(h.flatten(states.to(torch.int32).long()), c.flatten(states))
    with pytest.raises(ValueError, match="z must hold states"):
        h.state_index(states + 1)
    with pytest.raises(ValueError, match="idx must hold indices"):
        h.index_state(torch.tensor([81]))


def test_neighbours_are_the_one_coordinate_changes_in_the_documented_order():
    K, D = 3, 3
    c = HammingCircuit(K, D, 1)
    states = all_states(K, D).tolist()
    index = {tuple(z): i for i, z in enumerate(states)}
    expected = [
        [i] + [index[tuple(z[:k] + [v] + z[k + 1 :])] for k in range(D) for v in range(K) if v != z[k]]
        for i, z in enumerate(states)
    ]
    neighbours = c.neighbours()
    assert_equal_to_reference(neighbours, torch.tensor(expected))
    assert_equal_to_reference(c.neighbours(torch.tensor([[5, 7]])), neighbours[[5, 7]].unsqueeze(0))


KIRCHHOFF = [(2, 6, 7, 0.1, None), (3, 4, 10, 0.5, 0.2), (5, 2, 3, 0.1, None), (2, 8, 40, 0.1, 3.0)]


@pytest.mark.parametrize("K,D,L,r,R", KIRCHHOFF, ids=[f"K{k}-D{d}-L{l}-R{R}" for k, d, l, r, R in KIRCHHOFF])
def test_kirchhoff_and_unit_cut_current(K, D, L, r, R):
    c = HammingCircuit(K, D, L, r, R)
    p, q = random_pmf(c.num_states, 3), random_pmf(c.num_states, 4)
    currents = c.currents(p, q)
    heads = c.neighbours().reshape(-1)
    net_out = torch.zeros(L + 1, c.num_states, dtype=torch.float64)
    net_out[:-1] += currents.sum(2)
    net_out[1:] -= torch.zeros(L, c.num_states, dtype=torch.float64).index_add_(
        1, heads, currents.reshape(L, -1)
    )
    injection = torch.zeros_like(net_out)
    injection[0], injection[-1] = p, -q
    assert_close_to_reference(net_out, injection, rtol=1e-12, scale=1.0)
    assert_close_to_reference(currents.sum((1, 2)), torch.ones(L, dtype=torch.float64), rtol=1e-12)


# ---------------------------------------------------------------- kernel tables (docs/hamming.md §3-5)
def exact_kernel(c: HammingCircuit, digits: int) -> list[list[Decimal]]:
    """``A_l(h) = (1/M) sum_{j=1..D} K_j(h) G_j(l, 0)`` in decimal arithmetic with ``digits``
    significant digits, from the exact binary values of ``g`` and ``G``: exact integer Krawtchouk
    values, and ``G_j(l, 0) = lambda_j^l phi_{l+1} / phi_0`` from the trailing minors ``phi`` of the
    tridiagonal layer matrix, as the continued fraction ``phi_{i+1} / phi_i = 1 / (a_i -
    lambda_j^2 phi_{i+2} / phi_{i+1})``. Independent of the package's formulas."""
    K, D, L = c.num_categories, c.dim, c.num_layers
    kraw = [[1] * (D + 1), [(K - 1) * D - K * h for h in range(D + 1)]]
    for j in range(1, D):
        row = [
            ((D - j) * (K - 1) + j - K * h) * kraw[j][h] - (K - 1) * (D - j + 1) * kraw[j - 1][h]
            for h in range(D + 1)
        ]
        kraw.append([v // (j + 1) for v in row])
    with decimal.localcontext(decimal.Context(prec=digits)):
        g, G = Decimal(c.g), Decimal(c.G)
        d = g + G * (D * (K - 1))
        diagonal = [d] + [2 * d] * (L - 1) + [d]
        green = []
        for j in range(1, D + 1):
            lam = g + G * ((K - 1) * D - K * j)
            ratio = [Decimal(0)] * (L + 2)
            ratio[L] = 1 / diagonal[L]
            for i in range(L - 1, -1, -1):
                ratio[i] = 1 / (diagonal[i] - lam * lam * ratio[i + 1])
            column, value = [], Decimal(1)
            for l in range(L + 1):
                value *= ratio[l] * (lam if l else 1)
                column.append(value)
            green.append(column)
        M = Decimal(K**D)
        return [
            [sum(kraw[j][h] * green[j - 1][l] for j in range(1, D + 1)) / M for h in range(D + 1)]
            for l in range(L + 1)
        ]


def decimal_of(m: float, e: int) -> Decimal:
    return Decimal(m) * Decimal(2) ** e


# (K, D, L, r, R): L = 200 > N = 120 reaches layers the head never visits; R = 1.1 with r = 1
# makes the lateral share 0.97 and x_j < 0 for j > 16 (oscillating modes)
TABLES = [
    (2, 32, 1, 0.1, None),
    (2, 32, 40, 0.1, None),
    (2, 32, 200, 0.1, None),
    (2, 32, 30, 1.0, 1.1),
    (5, 32, 60, 0.1, None),
    (2, 64, 150, 0.1, None),
    (17, 64, 100, 0.1, None),
    (256, 64, 20, 0.1, None),
    pytest.param(3, 128, 300, 0.1, None, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("K,D,L,r,R", TABLES, ids=lambda v: str(v))
def test_tables_match_exact_arithmetic_at_every_layer_and_distance(K, D, L, r, R):
    c = HammingCircuit(K, D, L, r, R)
    tables = c.kernel_tables()
    # the reference's Krawtchouk sum cancels by up to about M = K**D (terms n_j G_j / M, results
    # near 1/M): log10(M) digits, and 40 to spare
    digits = 40 + int(c.log_num_states / 2.3)
    exact = exact_kernel(c, digits)
    shifted = physical = Decimal(0)
    with decimal.localcontext(decimal.Context(prec=digits)):
        for l in range(L + 1):
            alpha = decimal_of(tables.alpha_star.mantissa[l].item(), tables.alpha_star.exponent[l].item())
            for h in range(D + 1):
                got = decimal_of(tables.mantissa[l, h].item(), tables.exponent[l, h].item())
                shifted = max(shifted, abs(got / (exact[l][h] + alpha) - 1))
                if abs(exact[l][h]) >= alpha / 1000:  # not dominated by cancellation
                    physical = max(physical, abs((got - alpha) / exact[l][h] - 1))
    assert shifted <= Decimal("1e-12"), f"A + alpha* relative error {shifted:.3e}"
    assert physical <= Decimal("1e-10"), f"A relative error {physical:.3e}"
    assert tables is c.kernel_tables()  # cached


SMALL = [(2, 5, 4, 0.1, None), (3, 3, 5, 1.0, 0.3), (4, 2, 1, 0.1, None), (2, 4, 6, 0.1, 100.0)]


@pytest.mark.parametrize("K,D,L,r,R", SMALL, ids=[f"K{k}-D{d}-L{l}-R{R}" for k, d, l, r, R in SMALL])
def test_tables_reproduce_potentials_and_currents(K, D, L, r, R):
    c = HammingCircuit(K, D, L, r, R)
    tables, M = c.kernel_tables(), c.num_states
    kernel = tables.physical().to_float()
    gross = tables.kernel.to_float() + tables.alpha_star.to_float()[:, None]
    states = all_states(K, D)
    layers = torch.arange(L + 1)[:, None]
    drift = layers.to(torch.float64) * c.s
    for x, y in [(0, M - 1), (M // 3, M // 3), (1, M // 2)]:
        p, q = torch.zeros(M, dtype=torch.float64), torch.zeros(M, dtype=torch.float64)
        p[x], q[y] = 1.0, 1.0
        hx, hy = (states != states[x]).sum(1), (states != states[y]).sum(1)
        phi = kernel[layers, hx] - kernel[L - layers, hy] - drift
        reference = c.potentials(p, q)
        # A = Ã - alpha* is accurate to a few ulps of Ã + alpha*, the scale of its terms
        scale = torch.clamp(
            gross[layers, hx] + gross[L - layers, hy], min=float(reference.max() - reference.min())
        )
        assert_close_to_reference(phi, reference, rtol=1e-12, scale=scale)
    # any pmfs, by superposition: drops from distance histograms, currents = C * drop
    p, q = random_pmf(M, 5), random_pmf(M, 6)
    hist_p, hist_q = distance_histogram(states, states, p), distance_histogram(states, states, q)
    heads = c.neighbours()
    layer = torch.arange(L)[:, None, None].expand(L, M, c.num_neighbours).reshape(-1)
    tails = torch.arange(M)[None, :, None].expand(L, M, c.num_neighbours).reshape(-1)
    heads_all = heads.expand(L, M, c.num_neighbours).reshape(-1)
    drop = tables.edge_drop(
        layer, hist_p[tails], hist_p[heads_all], hist_q[tails], hist_q[heads_all]
    ).to_float()
    conductance = torch.tensor([c.g] + [c.G] * (c.num_neighbours - 1), dtype=torch.float64)
    currents = c.currents(p, q)
    phi = c.potentials(p, q)
    scale = conductance * (phi[:-1, :, None].abs() + phi[1:, heads].abs())
    assert_close_to_reference(conductance * drop.reshape(currents.shape), currents, rtol=1e-12, scale=scale)


EXTREMES = [(2, 784, 6), (2, 1024, 6), (256, 64, 30), pytest.param(256, 1024, 40, marks=pytest.mark.slow)]


@pytest.mark.parametrize("K,D,L", EXTREMES, ids=lambda v: str(v))
def test_tables_stay_finite_at_the_extremes(K, D, L):
    """Entries from 1 down to ``1/M`` (``2**-8192`` at ``K = 256``, ``D = 1024``): every one
    non-zero with a normalized mantissa and a finite log; no inf, nan or flushed zero."""
    c = HammingCircuit(K, D, L)
    tables = c.kernel_tables()
    for values in (tables.kernel, tables.alpha_star, tables.drift):
        assert bool(((values.mantissa >= 0.5) & (values.mantissa < 1)).all())
        assert bool(torch.isfinite(values.log()).all())
    assert tables.exponent.min().item() < -0.99 * c.log_num_states / math.log(2)  # down to about 1/M
    log_kernel = tables.log_kernel()
    assert bool((log_kernel[0, :-1] > log_kernel[0, 1:]).all())  # the source's kernel falls with h
    delta = tables.delta()
    assert bool(torch.isfinite(delta.mantissa).all()) and bool((delta.exponent < 0).all())
    one_hot = torch.zeros(1, D + 1, dtype=torch.float64)
    one_hot[0, 0] = 1.0
    far = torch.zeros(1, D + 1, dtype=torch.float64)
    far[0, D] = 1.0
    drop = tables.edge_drop(0, one_hot, one_hot, far, far)  # the stay edge at the source
    assert drop.mantissa.item() > 0 and torch.isfinite(drop.log()).all()


def test_potential_table_takes_batches_and_log_kernel_gathers():
    c = HammingCircuit(3, 2, 4)
    p = torch.stack([random_pmf(9, 7), random_pmf(9, 8)])
    q = torch.stack([random_pmf(9, 9), random_pmf(9, 10)])
    batch = c.potential_table(p, q)
    assert batch.shape == (2, 5, 9)
    for i in range(2):
        assert_close_to_reference(batch[i], c.potentials(p[i], q[i]), rtol=1e-15, scale=1.0)
    tables = c.kernel_tables()
    layer, distance = torch.tensor([0, 4, 2]), torch.tensor([2, 0, 1])
    assert_equal_to_reference(tables.log_kernel(layer, distance), tables.log_kernel()[layer, distance])


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="num_categories"):
        HammingCircuit(2.0, 3, 1)
    with pytest.raises(ValueError, match="dim"):
        HammingCircuit(2, 0, 1)
    with pytest.raises(ValueError, match="num_layers"):
        HammingCircuit(2, 3, 0)
    with pytest.raises(TypeError, match="r must be a real number"):
        HammingCircuit(2, 3, 1, r="1")
    for bad in (-1.0, math.inf):
        with pytest.raises(ValueError, match="R must be finite"):
            HammingCircuit(2, 3, 1, R=bad)
    with pytest.raises(ValueError, match=r"2\*\*24"):
        HammingCircuit(2, 25, 1).potentials(torch.ones(1), torch.ones(1))
    with pytest.raises(ValueError, match=r"2\*\*24"):
        HammingCircuit(2, 25, 1).neighbours()
    with pytest.raises(ValueError, match=r"2\*\*28"):
        HammingCircuit(2, 20, 300).currents(torch.ones(1), torch.ones(1))
    c = HammingCircuit(2, 3, 2)
    with pytest.raises(ValueError, match="p must sum to 1"):
        c.potentials(torch.ones(8, dtype=torch.float64), random_pmf(8, 0))
    with pytest.raises(ValueError, match=r"q must have shape \(8,\)"):
        c.currents(random_pmf(8, 0), random_pmf(9, 0))
    tables, hist = c.kernel_tables(), torch.ones(1, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"layer must hold edge layers in \[0, 2\)"):
        tables.edge_drop(2, hist, hist, hist, hist)
    with pytest.raises(TypeError, match="layer must be an int"):
        tables.edge_drop(torch.tensor([0.5]), hist, hist, hist, hist)
    with pytest.raises(ValueError, match=r"source_tail must have shape \(E, 4\)"):
        tables.edge_drop(0, hist[:, :3], hist, hist, hist)
    with pytest.raises(ValueError, match="target_head must be finite and non-negative"):
        tables.edge_drop(0, hist, hist, hist, -hist)
    with pytest.raises(TypeError, match="source_head must be a floating-point tensor"):
        tables.edge_drop(0, hist, hist.long(), hist, hist)
    with pytest.raises(ValueError, match="same number of rows"):
        tables.edge_drop(0, hist, hist, hist, hist.repeat(2, 1))
    with pytest.raises(ValueError, match="mixes too slowly"):
        HammingCircuit(2, 3, 1, r=1.0, R=1e9).kernel_tables()
