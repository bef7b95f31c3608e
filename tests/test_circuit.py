"""Circuit: closed form vs a direct solve, Kirchhoff, superposition, numerics, states, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from ecd2g_fast import Circuit
from ecd2g_fast.circuit import currents_from_potentials

from .testing import assert_close_to_reference


def random_pmf(m: int, generator: torch.Generator, concentration: float = 1.0) -> torch.Tensor:
    gamma = torch.distributions.Gamma(torch.tensor(concentration, dtype=torch.float64), 1.0)
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
    w = gamma.sample((m,))
    return w / w.sum()


def conductance_matrix(c: Circuit) -> torch.Tensor:
    C = torch.full((c.num_states, c.num_states), c.G, dtype=torch.float64)
    C.fill_diagonal_(c.g)
    return C


def direct_potentials(c: Circuit, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Node-voltage equation ``Lap phi = injection``, grounded at the last vertex, then gauge-fixed
    to the closed form's mean. Independent of the package's formulas."""
    M, L = c.num_states, c.num_layers
    N = (L + 1) * M
    C = conductance_matrix(c)
    lap = torch.zeros(N, N, dtype=torch.float64)
    for l in range(L):
        a, b = slice(l * M, (l + 1) * M), slice((l + 1) * M, (l + 2) * M)
        lap[a, b] -= C
        lap[b, a] -= C.T
    lap -= torch.diag(lap.sum(1))
    injection = torch.zeros(N, dtype=torch.float64)
    injection[:M] += p
    injection[-M:] -= q
    phi = torch.zeros(N, dtype=torch.float64)
    phi[:-1] = torch.linalg.solve(lap[:-1, :-1], injection[:-1])
    return phi.reshape(L + 1, M)


CIRCUITS = [
    (2, 1, 1, 0.1, 100.0),
    (3, 1, 2, 0.1, 100.0),
    (7, 1, 7, 0.1, 100.0),
    (2, 2, 4, 0.5, 2.0),
    (3, 2, 5, 1.0, 1.5),
    (2, 3, 3, 0.01, 1000.0),
    (5, 1, 6, 0.3, 0.31),
]


@pytest.mark.parametrize(
    "K,D,L,r,R", CIRCUITS, ids=[f"K{k}-D{d}-L{l}-r{r}-R{R}" for k, d, l, r, R in CIRCUITS]
)
def test_closed_form_matches_direct_solve(K, D, L, r, R):
    g = torch.Generator().manual_seed(K * 100 + D * 10 + L)
    c = Circuit(K, D, L, r, R)
    p, q = random_pmf(c.num_states, g), random_pmf(c.num_states, g, 0.3)
    closed = c.potentials(p, q)
    direct = direct_potentials(c, p, q)
    direct += closed.mean() - direct.mean()
    # potential differences drive the currents: compare at the scale of the spread
    assert_close_to_reference(closed, direct, rtol=1e-10, scale=float(closed.max() - closed.min()))
    # and the currents themselves, elementwise at the scale of each edge's conductance x spread
    I_direct = currents_from_potentials(c, direct)
    assert_close_to_reference(c.currents(p, q), I_direct, rtol=1e-9, scale=float(I_direct.abs().max()))


def test_gauge_is_zero_and_matches_eq12():
    c = Circuit(4, 1, 3)
    g = torch.Generator().manual_seed(0)
    p, q = random_pmf(4, g), random_pmf(4, g)
    phi = c.potentials(p, q)
    # sum over states of the p and q terms vanishes: each layer's mean is exactly -l s
    assert_close_to_reference(phi.mean(1), -torch.arange(4, dtype=torch.float64) * c.s, rtol=1e-12, scale=c.s)
    l, z = 2, 1
    expected = -l * c.s + c.a[l] * (p[z] - 0.25) - c.b[l] * (q[z] - 0.25)
    assert float(phi[l, z]) == pytest.approx(float(expected), rel=1e-14)


@pytest.mark.parametrize("K,D,L", [(5, 1, 1), (3, 2, 6), (50, 1, 10)], ids=["K5-L1", "K3-D2-L6", "K50-L10"])
def test_kirchhoff_and_unit_cut_current(K, D, L):
    c = Circuit(K, D, L)
    g = torch.Generator().manual_seed(1)
    p, q = random_pmf(c.num_states, g), random_pmf(c.num_states, g)
    I = c.currents(p, q)
    net_out = torch.zeros(L + 1, c.num_states, dtype=torch.float64)
    net_out[:-1] += I.sum(2)
    net_out[1:] -= I.sum(1)
    injection = torch.zeros_like(net_out)
    injection[0], injection[-1] = p, -q
    assert_close_to_reference(net_out, injection, rtol=1e-12, scale=1.0)
    assert_close_to_reference(I.sum((1, 2)), torch.ones(L, dtype=torch.float64), rtol=1e-12)


def test_superposition_is_affine_in_the_marginals():
    c = Circuit(3, 2, 4)
    g = torch.Generator().manual_seed(2)
    p1, q1, p2, q2 = (random_pmf(9, g) for _ in range(4))
    alpha = 0.3
    mixed = c.currents(alpha * p1 + (1 - alpha) * p2, alpha * q1 + (1 - alpha) * q2)
    combined = alpha * c.currents(p1, q1) + (1 - alpha) * c.currents(p2, q2)
    assert_close_to_reference(mixed, combined, rtol=1e-12, scale=float(mixed.abs().max()))


def test_currents_do_not_depend_on_the_coupling():
    """Remark 3.4: superposing single source-sink circuits over any coupling of (p, q) gives the
    same currents. Checked with the direct solver for two different couplings."""
    c = Circuit(3, 1, 3)
    g = torch.Generator().manual_seed(3)
    p, q = random_pmf(3, g), random_pmf(3, g)
    independent = p[:, None] * q[None, :]
    # another coupling with the same marginals: move mass eps around a 2x2 cycle
    eps = 0.5 * float(torch.stack([independent[0, 0], independent[1, 1]]).min())
    shifted = independent.clone()
    shifted[0, 0] -= eps
    shifted[1, 1] -= eps
    shifted[0, 1] += eps
    shifted[1, 0] += eps
    expected = c.currents(p, q)
    for coupling in (independent, shifted):
        total = torch.zeros_like(expected)
        for x in range(3):
            for y in range(3):
                point_p = torch.nn.functional.one_hot(torch.tensor(x), 3).double()
                point_q = torch.nn.functional.one_hot(torch.tensor(y), 3).double()
                total += coupling[x, y] * currents_from_potentials(c, direct_potentials(c, point_p, point_q))
        assert_close_to_reference(total, expected, rtol=1e-10, scale=float(expected.abs().max()))


EXTREMES = [
    (256, 4096, 10_000),
    (2, 1, 10_000),
    (65_536, 1, 1),
    (256, 4096, 1),
    (2, 1, 1),
    (65_536, 64, 10_000),
]


@pytest.mark.parametrize("K,D,L", EXTREMES, ids=[f"K{k}-D{d}-L{l}" for k, d, l in EXTREMES])
def test_coefficients_are_finite_at_the_extremes(K, D, L):
    c = Circuit(K, D, L)
    for name in ("log_num_states", "log_d", "log_t", "theta", "log_s", "s", "e"):
        value = getattr(c, name)
        assert math.isfinite(value), f"{name} = {value}"
    assert c.theta > 0
    for name in ("a", "b", "log_a", "log_b"):
        t = getattr(c, name)
        assert t.shape == (L + 1,) and t.dtype == torch.float64
        assert bool(torch.isfinite(t).all()), f"{name} has inf/nan"
    assert bool((c.a >= 0).all()) and bool((c.b >= 0).all())
    # a_l = b_{L-l}, and a decays by exp(-theta) per layer away from layer 0 (away from layer L)
    assert torch.equal(c.log_a, c.log_b.flip(0))
    if L >= 4:
        step = c.log_a[L // 2] - c.log_a[L // 2 + 1]
        assert float(step) == pytest.approx(c.theta, rel=1e-9)
    # where the plain exponentials are representable, they agree with the log form
    finite = c.log_a > -700
    assert_close_to_reference(c.a[finite], torch.exp(c.log_a[finite]), rtol=1e-12)


@pytest.mark.parametrize("K,D,L", [(4, 1, 3), (30, 1, 10), (3, 3, 50), (2, 1, 700)], ids=str)
def test_coefficients_match_the_textbook_formula(K, D, L):
    c = Circuit(K, D, L)
    M = K**D
    d = c.g + (M - 1) * c.G
    t = d / c.e
    theta = math.acosh(t)
    assert c.theta == pytest.approx(theta, rel=1e-13)
    assert c.s == pytest.approx(1 / (M * d), rel=1e-15)
    den = c.e * math.sinh(theta) * math.sinh(L * theta)
    for l in (0, L // 2, L):
        assert float(c.a[l]) == pytest.approx(math.cosh((L - l) * theta) / den, rel=1e-11)
        assert float(c.b[l]) == pytest.approx(math.cosh(l * theta) / den, rel=1e-11)


def test_kirchhoff_holds_at_ten_thousand_layers():
    c = Circuit(3, 1, 10_000)
    p = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    q = torch.tensor([0.1, 0.1, 0.8], dtype=torch.float64)
    I = c.currents(p, q)
    assert bool(torch.isfinite(I).all())
    assert_close_to_reference(I.sum((1, 2)), torch.ones(10_000, dtype=torch.float64), rtol=1e-10)


def test_huge_state_space_constants():
    c = Circuit(256, 4096, 10)
    assert c.num_states == 256**4096
    assert c.log_num_states == pytest.approx(4096 * math.log(256), rel=1e-15)
    assert c.log_t == pytest.approx(c.log_num_states + math.log(c.G / c.e), rel=1e-12)
    assert c.theta == pytest.approx(c.log_t + math.log(2.0), rel=1e-12)
    with pytest.raises(OverflowError):
        c.d  # noqa: B018 - only log_d is representable here


def test_state_index_is_row_major_and_invertible():
    c = Circuit(5, 3, 2)
    z = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0], [4, 4, 4], [2, 3, 1]])
    assert c.state_index(z).tolist() == [0, 1, 5, 25, 124, 2 * 25 + 3 * 5 + 1]
    all_idx = torch.arange(c.num_states)
    assert torch.equal(c.state_index(c.index_state(all_idx)), all_idx)
    assert c.index_state(torch.tensor(2 * 25 + 3 * 5 + 1)).tolist() == [2, 3, 1]
    batched = torch.randint(0, 5, (4, 6, 3))
    assert c.state_index(batched).shape == (4, 6)


def test_unchecked_helpers_match_the_checked_methods():
    c = Circuit(5, 3, 2)
    all_idx = torch.arange(c.num_states)
    states = c.index_state(all_idx)
    assert torch.equal(c.unflatten(all_idx), states)
    assert torch.equal(c.flatten(states), all_idx)
    g = torch.Generator().manual_seed(3)
    p, q = random_pmf(c.num_states, g), random_pmf(c.num_states, g)
    assert torch.equal(c.potential_table(p, q), c.potentials(p, q))
    # any (..., M) batch of pairs: one (L+1, M) table per pair
    ps, qs = torch.stack([p, q]), torch.stack([q, p])
    tables = c.potential_table(ps, qs)
    assert tables.shape == (2, c.num_layers + 1, c.num_states)
    assert torch.equal(tables[1], c.potentials(q, p))


def test_coefficients_are_cached_per_device():
    c = Circuit(5, 3, 4)
    coefficients = c.coefficients(torch.device("cpu"))
    assert c.coefficients("cpu") is coefficients
    assert torch.equal(coefficients.a, c.a) and torch.equal(coefficients.b, c.b)
    scalars = [c.s, 1 / c.num_states, c.g, c.G]
    assert coefficients.scalars.dtype == torch.float64 and coefficients.scalars.tolist() == scalars
    assert torch.equal(coefficients.current_terms, c.current_terms)
    assert torch.equal(coefficients.potential_terms, c.potential_terms)


@pytest.mark.parametrize("K,D,L", EXTREMES + [(5, 2, 4), (50, 1, 10)], ids=str)
def test_target_scales_match_their_definitions(K, D, L):
    """docs/theory.md §5-6: sigma_l = s + (a_l + b_l + a_{l+1} + b_{l+1}) / M, tau_l = (a_l + b_l) / M,
    alpha_l = a_l / (a_l + b_l), beta_l = 1 - alpha_l, and the log-terms of the normalised targets:
    finite everywhere, equal to the plain formulas where those are representable."""
    c = Circuit(K, D, L)
    M = c.num_states
    for name, shape in [
        ("log_sigma", (L,)),
        ("log_tau", (L + 1,)),
        ("log_alpha", (L + 1,)),
        ("log_beta", (L + 1,)),
    ]:
        t = getattr(c, name)
        assert t.shape == shape and t.dtype == torch.float64 and bool(torch.isfinite(t).all()), name
    assert c.current_terms.shape == (L, 9) and bool(torch.isfinite(c.current_terms).all())
    assert c.potential_terms.shape == (L + 1, 4) and bool(torch.isfinite(c.potential_terms).all())
    torch.testing.assert_close(
        torch.exp(c.log_alpha) + torch.exp(c.log_beta), torch.ones(L + 1, dtype=torch.float64)
    )
    # s, b_l / M and a_{l+1} / M are parts of sigma_l
    assert bool((torch.logsumexp(c.current_terms[:, :3], 1) <= 1e-12).all())
    if M.bit_length() >= 1000 or not bool((c.a > 0).all() & (c.b > 0).all()):
        return
    a, b = c.a, c.b
    sigma = c.s + (a[:-1] + b[:-1] + a[1:] + b[1:]) / M
    assert_close_to_reference(torch.exp(c.log_sigma), sigma, rtol=1e-12)
    assert_close_to_reference(torch.exp(c.log_tau), (a + b) / M, rtol=1e-12)
    assert_close_to_reference(torch.exp(c.log_alpha), a / (a + b), rtol=1e-12)
    plain = (
        torch.stack(
            [
                torch.full((L,), c.s, dtype=torch.float64),
                b[:-1] / M,
                a[1:] / M,
                a[:-1],
                b[1:],
                a[:-1] / M,
                b[1:] / M,
                b[:-1],
                a[1:],
            ],
            1,
        )
        / sigma[:, None]
    )
    assert_close_to_reference(torch.exp(c.current_terms), plain, rtol=1e-12)
    alpha, beta = a / (a + b), b / (a + b)
    plain = torch.stack([beta, M * alpha, alpha, M * beta], 1)
    assert_close_to_reference(torch.exp(c.potential_terms), plain, rtol=1e-12)


def test_scale_methods():
    c = Circuit(6, 2, 4)
    layer = torch.tensor([0, 3, 3, 1])
    z = torch.tensor([[1, 2], [2, 2], [2, 2], [0, 5]])
    w = torch.tensor([[1, 2], [2, 2], [5, 2], [0, 4]])
    conductance = torch.tensor([c.g, c.g, c.G, c.G], dtype=torch.float64)
    want = torch.log(conductance) + c.log_sigma[layer]
    torch.testing.assert_close(c.log_current_scale(layer, z, w), want, rtol=1e-15, atol=0)
    torch.testing.assert_close(
        c.log_current_scale(layer, z.int(), w.to(torch.uint8)), want, rtol=1e-15, atol=0
    )
    top = torch.tensor([0, 4])
    torch.testing.assert_close(c.log_potential_scale(top), c.log_tau[top], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"layer must hold layer indices in \[0, 3\]"):
        c.log_current_scale(torch.full((4,), 4), z, w)
    with pytest.raises(ValueError, match=r"layer must hold layer indices in \[0, 4\]"):
        c.log_potential_scale(torch.tensor([5]))
    with pytest.raises(ValueError, match=r"w must hold states in \[0, 6\)"):
        c.log_current_scale(layer, z, w + 6)
    with pytest.raises(ValueError, match="w must have Q = 4 rows"):
        c.log_current_scale(layer, z, w[:2])
    with pytest.raises(ValueError, match=r"z must have shape \(B, 2\)"):
        c.log_current_scale(layer, z[:, :1], w)
    with pytest.raises(TypeError, match="layer must have dtype torch.int64"):
        c.log_potential_scale(top.float())
    with pytest.raises(ValueError, match=r"layer must have shape \(Q,\)"):
        c.log_potential_scale(top[:, None])
    with pytest.raises(TypeError, match="z must have dtype torch.int64"):
        c.log_current_scale(layer, z.float(), w)


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(num_categories=1, dim=1, num_layers=1), ValueError, "num_categories must be >= 2"),
        (dict(num_categories=2.0, dim=1, num_layers=1), TypeError, "num_categories must be an int"),
        (dict(num_categories=2, dim=0, num_layers=1), ValueError, "dim must be >= 1"),
        (dict(num_categories=2, dim=1, num_layers=0), ValueError, "num_layers must be >= 1"),
        (
            dict(num_categories=2, dim=1, num_layers=1, r=100.0, R=100.0),
            ValueError,
            "r must be smaller than R",
        ),
        (dict(num_categories=2, dim=1, num_layers=1, r=2.0, R=1.0), ValueError, "r must be smaller than R"),
        (dict(num_categories=2, dim=1, num_layers=1, r=-1.0), ValueError, "r must be finite and > 0"),
        (dict(num_categories=2, dim=1, num_layers=1, R=float("inf")), ValueError, "R must be finite"),
        (dict(num_categories=2, dim=1, num_layers=1, r="0.1"), TypeError, "r must be a real number"),
    ],
    ids=["K<2", "K-float", "D<1", "L<1", "r==R", "r>R", "r<0", "R-inf", "r-str"],
)
def test_circuit_rejects_bad_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        Circuit(**kwargs)


def test_pmf_validation():
    c = Circuit(3, 1, 2)
    good = torch.full((3,), 1 / 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"p must have shape \(3,\)"):
        c.potentials(torch.full((4,), 0.25), good)
    with pytest.raises(ValueError, match="q must be non-negative"):
        c.potentials(good, torch.tensor([1.5, -0.5, 0.0]))
    with pytest.raises(ValueError, match="p must sum to 1"):
        c.potentials(torch.tensor([0.5, 0.5, 0.5]), good)
    with pytest.raises(TypeError, match="p must be a floating-point tensor"):
        c.potentials(torch.tensor([1, 0, 0]), good)
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        c.potentials(good, [1 / 3] * 3)
    with pytest.raises(ValueError, match="p must be finite"):
        c.potentials(torch.tensor([float("nan"), 0.5, 0.5]), good)
    # within the stated tolerance (1e-6) a pmf is accepted
    c.potentials(good * (1 + 5e-7), good)


def test_enumeration_limits_are_explicit():
    big = Circuit(2, 25, 1)  # M = 2**25
    pmf = torch.zeros(1, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"M <= 16777216 \(2\*\*24\)"):
        big.potentials(pmf, pmf)
    dense = Circuit(2**13, 1, 10)  # L M^2 = 2**30
    uniform = torch.full((2**13,), 2.0**-13, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"at most 268435456 \(2\*\*28\)"):
        dense.currents(uniform, uniform)


def test_state_index_validation():
    c = Circuit(4, 2, 1)
    with pytest.raises(TypeError, match="z must have dtype torch.int64"):
        c.state_index(torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"z must have shape \(\.\.\., 2\)"):
        c.state_index(torch.zeros(3, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"z must hold states in \[0, 4\)"):
        c.state_index(torch.tensor([[0, 4]]))
    with pytest.raises(ValueError, match=r"idx must hold indices in \[0, 16\)"):
        c.index_state(torch.tensor([16]))
    with pytest.raises(ValueError, match="M = K\\*\\*D < 2\\*\\*63"):
        Circuit(2, 63, 1).state_index(torch.zeros(1, 63, dtype=torch.int64))


@pytest.mark.parametrize(("r", "R"), [(1e-12, 1e12), (1e-8, 1e8), (1e-6, 1e6)])
def test_resistances_whose_currents_break_kirchhoff_are_refused(r, R):
    with pytest.raises(ValueError, match=r"theta = .* < 0\.001.*Kirchhoff.*r/R >="):
        Circuit(8, 1, 10, r=r, R=R)


@pytest.mark.parametrize("value", [1e-310, 1e301])
def test_resistances_with_non_normal_conductances_are_refused(value):
    with pytest.raises(ValueError, match=r"r must lie in \[1e-300, 1e\+300\]"):
        Circuit(4, 1, 2, r=value, R=1e302 if value > 1 else 1.0)


@pytest.mark.parametrize(("K", "D", "L"), [(2, 1, 1), (8, 1, 10), (3, 2, 40), (50, 1, 300)])
def test_kirchhoff_holds_to_1e9_down_to_the_smallest_accepted_theta(K, D, L):
    """At the edge of the accepted range (theta just above MIN_THETA) Kirchhoff's law still holds to
    1e-9 of the total current, at every vertex."""
    from ecd2g_fast.circuit import MIN_THETA

    M = K**D
    ratio = MIN_THETA**2 / 2 / M * 1.05  # theta ~ sqrt(2 M r / R), just above the limit
    for r in (1e-6, 1.0, 1e3):
        c = Circuit(K, D, L, r=r, R=r / ratio)
        assert MIN_THETA <= c.theta < 1.2 * MIN_THETA
        g = torch.Generator().manual_seed(K + L)
        p, q = (torch.rand(M, generator=g, dtype=torch.float64) ** 4 for _ in range(2))
        p, q = p / p.sum(), q / q.sum()
        currents = c.currents(p, q)
        errors = [(currents[0].sum(1) - p).abs().max(), (currents[-1].sum(0) - q).abs().max()]
        if L > 1:
            errors.append((currents[:-1].sum(1) - currents[1:].sum(2)).abs().max())
        assert max(float(e) for e in errors) <= 1e-9


def test_dimension_is_bounded_before_the_state_count_is_computed():
    with pytest.raises(ValueError, match=r"dim must be <= 1048576"):
        Circuit(3, 10**8, 1)
