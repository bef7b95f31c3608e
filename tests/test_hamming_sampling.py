"""The walk on Hamming circuits: the exact field, the exact output law and every sampler backend.

The slot machinery (:mod:`ecd2g_fast.circuit_base`) is checked against the dense circuit it
generalises; the exact field's bidirectional law is checked against ``q`` to 1e-12; each backend's
samples are checked against the exact law by a chi-square test; the compiled ``hamming_move`` op is
checked against exact one-move probabilities.
"""

from __future__ import annotations

import pytest
import torch

import ecd2g_fast as E
from ecd2g_fast import _extension, backends
from ecd2g_fast.hamming import HammingCircuit

from .test_sampler_backends import TablePotential
from .testing import (
    assert_close_to_reference,
    assert_samples_follow,
    devices,
    dirichlet_pair,
    total_variation,
)

requires_extension = pytest.mark.skipif(not _extension.available(), reason="extension not built")


def sparse_pair(M: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A source and a target pmf with zeros (every third target state), (M,) float64 each."""
    p, q = dirichlet_pair(M, seed)
    q = q.clone()
    q[::3] = 0
    return p, q / q.sum()


#: (K, D, L): binary and non-binary, L below and above D, one layer.
SHAPES = [(2, 6, 3), (3, 4, 2), (2, 8, 5), (4, 3, 1), (2, 5, 12)]


@pytest.mark.parametrize("K,D,L", SHAPES)
def test_exact_field_transports_p_to_q_exactly(K, D, L):
    c = HammingCircuit(K, D, L)
    p, q = sparse_pair(c.num_states, seed=K * 100 + D * 10 + L)
    out = E.exact_output_distribution(E.ExactField(c, p, q), p)
    assert total_variation(out.pmf, q) <= 1e-12
    assert out.stranded_mass == 0.0
    assert out.expected_moves >= L


def test_forward_walk_is_biased_and_stops_at_layer_L():
    c = HammingCircuit(2, 6, 3)
    p, q = sparse_pair(c.num_states, seed=1)
    out = E.exact_output_distribution(E.ExactField(c, p, q), p, "forward")
    assert out.expected_moves == pytest.approx(3.0)
    assert total_variation(out.pmf, q) > 0.05


@pytest.mark.parametrize("K,D,L", [(2, 6, 3), (3, 3, 2)])
def test_field_currents_are_the_circuits_currents(K, D, L):
    """Over slots, the exact field's currents are HammingCircuit.currents (docs/hamming.md §2), and
    the sink currents from Kirchhoff's law at layer L are q."""
    c = HammingCircuit(K, D, L)
    p, q = sparse_pair(c.num_states, seed=3)
    field = E.ExactField(c, p, q)
    expected = c.currents(p, q)
    states = torch.arange(c.num_states)
    N = c.num_neighbours
    for l in range(L):
        layer = torch.full_like(states, l)
        assert_close_to_reference(
            field.currents_to_next(layer, states, 0, N), expected[l], rtol=1e-12, scale=1.0
        )
        # the current arriving at (l+1, z) from its slot k is the current of (l, w_k) in the slot of z
        arriving = field.currents_from_prev(layer + 1, states, 1, N)
        heads = c.neighbour_states(states, 1, N)
        for k in range(N - 1):
            back = c.neighbour_states(heads[:, k], 0, N)
            slot = (back == states[:, None]).int().argmax(1)
            assert_close_to_reference(arriving[:, k], expected[l][heads[:, k], slot], rtol=1e-12, scale=1.0)
    inflow = c.last_layer_inflow(field.potential_table())
    assert_close_to_reference(inflow, q, rtol=1e-12, scale=1.0)


def test_slots_generalise_the_complete_circuit():
    """The generic slot forms of CircuitBase give what the complete circuit's fast overrides give."""
    c = E.Circuit(4, 2, 3)
    p, q = dirichlet_pair(c.num_states, seed=5)
    phi = c.potentials(p, q)
    z = torch.tensor([0, 5, 15, 7])
    layer = torch.tensor([0, 1, 2, 3])
    base = E.CircuitBase
    for start, stop in [(0, 16), (3, 9)]:
        fast = c.ohm(phi, layer.clamp_max(2), z, layer.clamp_max(2) + 1, start, stop)
        generic = base.ohm(c, phi, layer.clamp_max(2), z, layer.clamp_max(2) + 1, start, stop)
        assert_close_to_reference(fast, generic, rtol=1e-13, scale=1.0)
    assert_close_to_reference(c.last_layer_inflow(phi), base.last_layer_inflow(c, phi), rtol=1e-12, scale=1.0)
    mass = torch.rand(2, 16, dtype=torch.float64)
    probabilities = torch.rand(2, 16, 16, dtype=torch.float64)
    assert_close_to_reference(c.push(mass, probabilities), base.push(c, mass, probabilities), rtol=1e-13)


def test_neighbour_at_inverts_itself_through_the_symmetric_slot():
    c = HammingCircuit(3, 4, 2)
    states = torch.arange(c.num_states)
    heads = c.neighbour_states(states, 0, c.num_neighbours)
    assert torch.equal(heads, c.neighbours())
    for k in range(1, c.num_neighbours):
        back = c.neighbour_states(heads[:, k], 0, c.num_neighbours)
        assert bool((back == states[:, None]).any(1).all())
    assert torch.equal(c.neighbour_at(torch.tensor([5]), torch.tensor([0])), torch.tensor([5]))


def test_slot_of_inverts_apply_slot_for_every_slot():
    """slot_of(z, coordinate, value) is the slot apply_slot reads back, for every slot of random
    states (K = 3 and 2), and the stay slot where the value is already there; reverse_slot leads
    back."""
    for K in (3, 2):
        c = HammingCircuit(K, 4, 2)
        N = c.num_neighbours
        z = torch.randint(0, K, (N, 4), generator=torch.Generator().manual_seed(K))
        slot = torch.arange(N)
        w = c.apply_slot(z, slot)
        coordinate = torch.where(slot == 0, 0, (slot - 1) // (K - 1))
        value = w.gather(1, coordinate[:, None]).squeeze(1)
        assert torch.equal(c.slot_of(z, coordinate, value), slot)
        # (n, E) coordinates, as the kernel queries ask
        both = torch.stack([coordinate, torch.zeros_like(coordinate)], 1)
        values = torch.stack([value, z[:, 0]], 1)
        assert torch.equal(c.slot_of(z, both, values), torch.stack([slot, torch.zeros_like(slot)], 1))
        # reverse_slot leads back from every neighbour (the stay slot to itself)
        back = c.reverse_slot(z, w)
        assert torch.equal(c.apply_slot(w, back), z)
        assert torch.equal(back == 0, slot == 0)


def start_states(c: HammingCircuit, p: torch.Tensor, B: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator(p.device).manual_seed(seed)
    return c.index_state(torch.multinomial(p, B, replacement=True, generator=g))


#: Backends that take a potential field on a Hamming circuit ("potential*" need the complete circuit).
HAMMING_BACKENDS = ["torch", "cpp", "auto"]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("mode", ["bidirectional", "forward"])
@pytest.mark.parametrize("K,D,L", [(2, 6, 3), (3, 3, 4)])
@pytest.mark.parametrize("backend", HAMMING_BACKENDS)
def test_backend_follows_the_exact_output_law(backend, K, D, L, mode, device):
    if backend == "cpp" and not _extension.has_device_kernels(torch.device(device)):
        pytest.skip(f"extension has no {device} kernels")
    c = HammingCircuit(K, D, L)
    p, q = sparse_pair(c.num_states, seed=7)
    field = E.ExactField(c, p.to(device), q.to(device))
    expected = E.exact_output_distribution(field, p.to(device), mode).pmf
    out = E.sample(field, start_states(c, p.to(device), 12_000), mode, backend=backend, generator=2024)
    assert_samples_follow(torch.bincount(c.state_index(out), minlength=c.num_states).cpu(), expected.cpu())


@requires_extension
def test_hamming_move_draws_the_exact_one_move_probabilities():
    """Many walkers at a few vertices, one move each: the outlet frequencies of ``hamming_move``
    follow the normalised positive out-currents, over the 2 (1 + D (K-1)) slots and the sink."""
    c = HammingCircuit(3, 3, 3)
    p, q = sparse_pair(c.num_states, seed=9)
    field = E.ExactField(c, p, q)
    phi, sink = field.potential_table(), field.sink_table()
    N = c.num_neighbours
    for l, z in [(0, 4), (1, 13), (2, 26), (3, 5)]:
        layer, state = torch.tensor([l]), torch.tensor([z])
        weights = torch.zeros(2 * N + 1, dtype=torch.float64)
        if l < c.num_layers:
            weights[:N] = field.currents_to_next(layer, state, 0, N)[0].clamp_min(0)
        if l > 0:
            weights[N : 2 * N] = (-field.currents_from_prev(layer, state, 0, N)[0]).clamp_min(0)
        if l == c.num_layers:
            weights[2 * N] = sink[z]
        B = 40_000
        outlet, status = _extension.ops().hamming_move(
            phi, sink, layer.expand(B), state.expand(B), 3, 3, c.g, c.G, True, 100 + l, 7
        )
        assert int(status.abs().sum()) == 0
        assert_samples_follow(torch.bincount(outlet, minlength=2 * N + 1), weights / weights.sum())


@requires_extension
def test_same_seed_same_samples_and_thread_independence():
    c = HammingCircuit(2, 6, 3)
    p, q = sparse_pair(c.num_states, seed=2)
    field = E.ExactField(c, p, q)
    x0 = start_states(c, p, 3000)
    threads = torch.get_num_threads()
    try:
        a = E.sample(field, x0, backend="cpp", generator=5)
        torch.set_num_threads(2)
        b = E.sample(field, x0, backend="cpp", generator=5)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(a, b)
    assert not torch.equal(a, E.sample(field, x0, backend="cpp", generator=6))


def test_backend_selection_on_a_hamming_circuit():
    c = HammingCircuit(2, 4, 2)
    p, q = sparse_pair(c.num_states, seed=4)
    field = E.ExactField(c, p, q)
    with pytest.raises(ValueError, match="on a complete Circuit"):
        E.sample(field, start_states(c, p, 10), backend="potential")
    chosen = backends.select("sample", "auto", torch.device("cpu"), subject=field).name
    assert chosen == ("cpp" if _extension.available() else "torch")


def test_state_field_needs_the_complete_circuit():
    with pytest.raises(TypeError, match="StateField evaluates all M states"):
        E.StateField(HammingCircuit(2, 3, 2), lambda layer, z, w: torch.zeros(len(z), len(w)))


def test_a_dead_end_is_named_on_a_hamming_circuit():
    """A potential table whose vertex (1, 0) is a strict minimum of its neighbourhood strands the walk."""

    c = HammingCircuit(2, 3, 2)
    table = -torch.arange(3, dtype=torch.float64)[:, None].expand(3, 8).clone()
    table[1, 0] = -10.0  # below everything in layers 0 and 2: no positive outflow
    table[0, :] = 0.0
    x0 = torch.zeros(50, 3, dtype=torch.int64)
    for backend in ["torch"] + (["cpp"] if _extension.available() else []):
        with pytest.raises(E.FieldError, match=r"no positive outflow at layer 1, state \(0, 0, 0\)"):
            E.sample(TablePotential(c, table), x0, backend=backend, generator=0)
