"""Noise-to-data fields on Hamming circuits given by a log-density (docs/hamming.md §8).

``LogField`` returns every current of a vertex divided by ``rho_l(z)``; with ``S`` the exact
``log rho`` it must be the exact field's currents to rounding, its walk exact, and the walk on
state vectors (any ``D``) must follow the same law as the walk on flat indices.
"""

from __future__ import annotations

import math

import pytest
import torch

import ecd2g_fast as E
from ecd2g_fast import _extension
from ecd2g_fast.hamming import HammingCircuit
from ecd2g_fast.hamming.log_field import DataLogField

from .testing import assert_close_to_reference, assert_samples_follow, dirichlet_pair, total_variation


def noise_to_data(K: int, D: int, L: int, seed: int = 0):
    """A Hamming circuit, the uniform source, a target pmf with zeros, and both fields."""
    c = HammingCircuit(K, D, L)
    M = c.num_states
    p = torch.full((M,), 1.0 / M, dtype=torch.float64)
    _, q = dirichlet_pair(M, seed)
    q = q.clone()
    q[::3] = 0
    q /= q.sum()
    exact = E.ExactField(c, p, q)
    log_field = DataLogField(c, c.unflatten(torch.arange(M)), q)
    return c, p, q, exact, log_field


@pytest.mark.parametrize("K,D,L", [(2, 6, 3), (3, 3, 4), (2, 5, 8)])
def test_log_field_currents_are_the_exact_currents_over_rho(K, D, L):
    c, p, q, exact, log_field = noise_to_data(K, D, L)
    states = torch.arange(c.num_states)
    vectors = c.unflatten(states)
    N = c.num_neighbours
    for l in range(L + 1):
        layer = torch.full_like(states, l)
        rho = torch.exp(log_field.log_field(layer, vectors))
        if l < L:
            expected = exact.currents_to_next(layer, states, 0, N)
            got = log_field.currents_to_next(layer, states, 0, N) * rho[:, None]
            assert_close_to_reference(got, expected, rtol=1e-12, scale=float(expected.abs().max()))
        if l > 0:
            expected = exact.currents_from_prev(layer, states, 0, N)
            got = log_field.currents_from_prev(layer, states, 0, N) * rho[:, None]
            assert_close_to_reference(got, expected, rtol=1e-12, scale=float(expected.abs().max()))
    rho_last = torch.exp(log_field.log_field(torch.full_like(states, L), vectors))
    assert_close_to_reference(log_field.sink_currents(states) * rho_last, q, rtol=1e-12, scale=1.0)


def test_layer_means_of_rho_are_the_closed_form_normalisers():
    """mean_z rho_l(z) = alpha*_{L-l}: the log-normaliser a learned field keeps outside its network."""
    c, p, q, exact, log_field = noise_to_data(2, 6, 5)
    vectors = c.unflatten(torch.arange(c.num_states))
    for l in range(c.num_layers + 1):
        layer = torch.full((c.num_states,), l)
        mean = torch.logsumexp(log_field.log_field(layer, vectors), 0) - math.log(c.num_states)
        assert float(mean) == pytest.approx(float(log_field.tables.log_norm[l]), abs=1e-12)


@pytest.mark.parametrize("K,D,L", [(2, 6, 3), (3, 3, 4)])
def test_log_field_walk_is_exact(K, D, L):
    c, p, q, exact, log_field = noise_to_data(K, D, L)
    law = E.exact_output_distribution(log_field, p)
    assert total_variation(law.pmf, q) <= 1e-12
    forward = E.exact_output_distribution(log_field, p, "forward")
    assert total_variation(forward.pmf, E.exact_output_distribution(exact, p, "forward").pmf) <= 1e-12


@pytest.mark.parametrize("mode", ["bidirectional", "forward"])
@pytest.mark.parametrize("backend", ["torch", "cpp", "auto"])
def test_state_vector_walk_follows_the_exact_law(backend, mode):
    """The walk on (B, D) state vectors, one outlet_currents call per move, follows the exact law."""
    if backend == "cpp" and not _extension.available():
        pytest.skip("extension not built")
    c, p, q, exact, log_field = noise_to_data(2, 5, 3, seed=4)
    expected = E.exact_output_distribution(log_field, p, mode).pmf
    g = torch.Generator().manual_seed(0)
    x0 = c.unflatten(torch.multinomial(p, 6000, replacement=True, generator=g))
    out, moves = E.sample(log_field, x0, mode, backend=backend, generator=3, return_moves=True)
    assert out.shape == x0.shape and out.dtype == torch.int64
    assert_samples_follow(torch.bincount(c.state_index(out), minlength=c.num_states), expected)
    if mode == "forward":
        assert bool((moves == c.num_layers).all())


def test_exact_field_of_samples_memorises_at_high_dimension():
    """At D = 96 (M = 2**96, no flat indices) the exact field of 5 samples carries uniform noise onto them."""
    c = HammingCircuit(2, 96, 40)
    g = torch.Generator().manual_seed(1)
    data = torch.randint(0, 2, (5, 96), generator=g)
    field = DataLogField(c, data)
    x0 = torch.randint(0, 2, (40, 96), generator=g)
    out, moves = E.sample(field, x0, generator=5, return_moves=True)
    distance = (out[:, None, :] != data[None]).sum(-1).min(1).values
    assert bool((distance == 0).all())
    assert float(moves.double().mean()) >= c.num_layers


def test_log_field_rejects_a_complete_circuit_and_bad_weights():
    with pytest.raises(TypeError, match="circuit must be an ecd2g_fast.HammingCircuit"):
        DataLogField(E.Circuit(2, 2, 2), torch.zeros(1, 2, dtype=torch.int64))
    c = HammingCircuit(2, 3, 2)
    with pytest.raises(ValueError, match="weights must be finite and non-negative"):
        DataLogField(c, torch.zeros(2, 3, dtype=torch.int64), torch.tensor([1.0, -1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="states must hold"):
        DataLogField(c, torch.full((2, 3), 5))


def test_unfinished_walkers_can_be_kept_and_are_marked():
    c, p, q, exact, log_field = noise_to_data(2, 5, 6, seed=2)
    x0 = c.unflatten(torch.zeros(50, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="did not terminate within max_moves=3"):
        E.sample(log_field, x0, max_moves=3)
    out, moves = E.sample(log_field, x0, max_moves=3, unfinished="keep", return_moves=True, generator=0)
    assert bool((moves == -1).all()) and out.shape == x0.shape  # L = 6 needs at least 6 moves
    with pytest.raises(ValueError, match="unfinished must be one of"):
        E.sample(log_field, x0, unfinished="drop")


@pytest.mark.parametrize("K,D,L", [(2, 6, 3), (3, 4, 2)])
def test_product_mixture_field_is_the_data_field_of_its_pmf(K, D, L):
    """The Poisson-binomial field of a product mixture equals the exact field of its pmf."""
    from ecd2g_fast.hamming.log_field import ProductMixtureLogField

    c = HammingCircuit(K, D, L)
    g = torch.Generator().manual_seed(K * D)
    exponentials = -torch.log(torch.rand(3, D, K, generator=g, dtype=torch.float64))
    probabilities = exponentials / exponentials.sum(-1, keepdim=True)  # Dirichlet(1, ..., 1)
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    states = c.unflatten(torch.arange(c.num_states))
    onehot = torch.nn.functional.one_hot(states, K).to(torch.float64)  # (M, D, K)
    log_pmf = torch.logsumexp(
        torch.log(weights) + torch.einsum("mdk,cdk->mc", onehot, torch.log(probabilities)), dim=1
    )
    data = DataLogField(c, states, torch.exp(log_pmf))
    mixture = ProductMixtureLogField(c, probabilities, weights)
    for l in range(L + 1):
        layer = torch.full((c.num_states,), l)
        torch.testing.assert_close(
            mixture.log_field(layer, states), data.log_field(layer, states), rtol=0, atol=1e-11
        )
    with pytest.raises(ValueError, match="probabilities"):
        ProductMixtureLogField(c, probabilities[:, :-1], weights)
    with pytest.raises(ValueError, match="weights"):
        ProductMixtureLogField(c, probabilities, weights[:2])
