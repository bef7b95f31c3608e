"""Monte-Carlo targets on the Hamming circuit (docs/hamming.md, "Monte-Carlo targets").

Tolerance. A target is a sum of terms of both signs (a difference of nearly equal potentials), so
``|reference|`` is no honest scale. Each comparison uses the sum of the absolute values of the
target's terms (``reference_drop(..., absolute=True)``: the five gauge terms and the ``2 (B +
B')`` sample terms), which bounds the rounding error of any evaluation order by a few ulps of
itself; 1e-12 of it leaves room for FMA contraction on a GPU. Normalised targets use the same
scale divided by ``sigma_l`` (``tau_l``), floored at 1e-290 (targets far from every sample at
large ``D`` underflow towards 0, and subnormals round absolutely). The Triton backend runs on CPU tensors through Triton's
interpreter (``TRITON_INTERPRET=1``, set per test) at tiny sizes.
"""

from __future__ import annotations

import contextlib
import importlib.util

import pytest
import torch

from ecd2g_fast import HammingCircuit, current_targets, potential_targets
from ecd2g_fast.hamming import targets as ht

RTOL = 1e-12

requires_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton is not installed"
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


def edges(c: HammingCircuit, Q: int, B: int, B2: int, seed: int, layer_max: int):
    """``(layer, z, w, x, y)``: a third of the tails are samples of ``x``, a quarter of ``y``;
    every fourth edge a stay edge, the others lateral, layers over ``[0, layer_max]``."""
    g = torch.Generator().manual_seed(seed)
    K, D = c.num_categories, c.dim
    x = torch.randint(0, K, (B, D), generator=g)
    y = torch.randint(0, K, (B2, D), generator=g)
    z = torch.randint(0, K, (Q, D), generator=g)
    z[: Q // 3] = x[torch.randint(0, B, (Q // 3,), generator=g)]
    z[Q // 3 : Q // 3 + Q // 4] = y[torch.randint(0, B2, (Q // 4,), generator=g)]
    w = z.clone()
    coord = torch.randint(0, D, (Q,), generator=g)
    shift = torch.randint(1, K, (Q,), generator=g)
    rows = torch.arange(Q)
    w[rows, coord] = (z[rows, coord] + shift) % K
    w[::4] = z[::4]
    layer = torch.randint(0, layer_max + 1, (Q,), generator=g)
    layer[:2] = torch.tensor([0, layer_max])
    return layer, z, w, x, y


def current_scale(c, layer, z, w, x, y, normalize):
    """Per target, the sum of its terms' absolute values in the target's units."""
    m, e = ht.reference_drop(c, layer, z, w, x, y, absolute=True)
    consts = ht.target_constants(c)
    if normalize:
        sm, se = consts.sigma
        return ht.ldexp(m / sm[layer], e - se[layer])
    conductance = torch.full_like(m, c.G).masked_fill_((z == w).all(1), c.g)
    return ht.ldexp(conductance * m, e)


def potential_scale(c, layer, z, x, y, normalize):
    m, e = ht.reference_potential(c, layer, z, x, y, normalize, absolute=True)
    if normalize:
        tm, te = ht.target_constants(c).tau
        return ht.ldexp(m / tm[layer], e - te[layer])
    return ht.ldexp(m, e)


def assert_close(out, expected, scale, what):
    assert out.dtype == torch.float64 and out.shape == expected.shape, what
    assert torch.isfinite(out).all(), what
    # normalised targets far from every sample underflow (|normalised| <= 1): below 1e-290
    # (and so in the subnormals, where rounding is absolute) they are compared absolutely
    error = ((out - expected).abs() / scale.clamp_min(1e-290)).max()
    assert error <= RTOL, f"{what}: error {float(error):.2e} of the terms' scale"


def check_backend(backend, c, Q, B, B2, seed):
    L = c.num_layers
    layer, z, w, x, y = edges(c, Q, B, B2, seed, L - 1)
    for normalize in (False, True):
        expected = current_targets(c, layer, z, w, x, y, backend="reference", normalize=normalize)
        out = current_targets(c, layer, z, w, x, y, backend=backend, normalize=normalize)
        scale = current_scale(c, layer, z, w, x, y, normalize)
        assert_close(out, expected, scale, f"{backend} currents normalize={normalize}")
    vertex = torch.cat([layer, torch.tensor([L])])
    zv = torch.cat([z, z[:1]])
    for normalize in (False, True):
        expected = potential_targets(c, vertex, zv, x, y, backend="reference", normalize=normalize)
        out = potential_targets(c, vertex, zv, x, y, backend=backend, normalize=normalize)
        scale = potential_scale(c, vertex, zv, x, y, normalize)
        assert_close(out, expected, scale, f"{backend} potentials normalize={normalize}")


# (K, D, L): K = 2 (bit-packed in Triton), K > 2 with 2-, 4-, 8- and 16-bit fields, L = 1.
TORCH_CASES = [(2, 8, 3), (2, 70, 6), (3, 5, 4), (16, 12, 5), (17, 6, 2), (256, 9, 3), (300, 3, 2), (2, 5, 1)]


@pytest.mark.parametrize("K,D,L", TORCH_CASES)
def test_torch_backend_matches_reference(K, D, L):
    check_backend("torch", HammingCircuit(K, D, L), Q=41, B=29, B2=23, seed=K + D + L)


@pytest.mark.parametrize("K,D,L", [(2, 8, 3), (5, 4, 2)])
def test_batch_of_one_sample(K, D, L):
    check_backend("torch", HammingCircuit(K, D, L), Q=12, B=1, B2=1, seed=3)


@requires_triton
@pytest.mark.parametrize("K,D,L", [(2, 40, 3), (3, 7, 2), (16, 9, 4), (300, 3, 2), (2, 3, 1)])
def test_triton_backend_matches_reference(K, D, L, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    check_backend("triton", HammingCircuit(K, D, L), Q=37, B=35, B2=1, seed=K * D)


def empirical(c: HammingCircuit, states: torch.Tensor) -> torch.Tensor:
    return torch.bincount(c.state_index(states), minlength=c.num_states).double() / states.shape[0]


@pytest.mark.parametrize("K,D,L,R", [(2, 4, 3, None), (3, 3, 4, None), (2, 5, 2, 0.3), (4, 2, 5, 7.0)])
def test_reference_is_the_closed_form_of_the_empirical_pmfs(K, D, L, R):
    """Every vertex and edge of an enumerable circuit: the targets are the potentials and
    currents of ``HammingCircuit.potentials`` / ``currents`` with the batches' frequencies as
    ``p`` and ``q`` (hence unbiased: both are affine in ``(p, q)``)."""
    c = HammingCircuit(K, D, L, R=R)
    g = torch.Generator().manual_seed(K * D * L)
    x, y = torch.randint(0, K, (9, D), generator=g), torch.randint(0, K, (6, D), generator=g)
    phi = c.potentials(empirical(c, x), empirical(c, y))
    currents = c.currents(empirical(c, x), empirical(c, y))
    M, N = c.num_states, c.num_neighbours
    states = c.index_state(torch.arange(M))
    layer = torch.arange(L + 1).repeat_interleave(M)
    for backend in ("reference", "torch"):
        out = potential_targets(c, layer, states.repeat(L + 1, 1), x, y, backend=backend)
        assert ((out - phi.reshape(-1)).abs() / phi.abs().max()).max() <= RTOL
        heads = c.neighbours()
        edge_layer = torch.arange(L).repeat_interleave(M * N)
        z = states.repeat_interleave(N, 0).repeat(L, 1)
        w = states[heads.reshape(-1)].repeat(L, 1)
        out = current_targets(c, edge_layer, z, w, x, y, backend=backend)
        conductance = torch.full((N,), c.G, dtype=torch.float64)
        conductance[0] = c.g
        scale = conductance * (phi[:-1, :, None].abs() + phi[1:][:, heads].abs())
        assert ((out - currents.reshape(-1)).abs() / scale.reshape(-1)).max() <= RTOL


@pytest.mark.parametrize("K,D,L", [(2, 6, 3), (7, 3, 2)])
def test_normalised_targets_times_their_scale_are_physical(K, D, L):
    c = HammingCircuit(K, D, L)
    layer, z, w, x, y = edges(c, 40, 17, 13, 11, L - 1)
    physical = current_targets(c, layer, z, w, x, y, backend="torch")
    normalised = current_targets(c, layer, z, w, x, y, backend="torch", normalize=True)
    scale = current_scale(c, layer, z, w, x, y, normalize=False)
    back = torch.exp(c.log_current_scale(layer, z, w)) * normalised
    assert ((back - physical).abs() / scale).max() <= RTOL
    assert normalised.abs().max() <= 1
    phi = potential_targets(c, layer, z, x, y, backend="torch")
    normalised = potential_targets(c, layer, z, x, y, backend="torch", normalize=True)
    back = -layer.double() * c.s + torch.exp(c.log_potential_scale(layer)) * normalised
    assert ((back - phi).abs() / potential_scale(c, layer, z, x, y, normalize=False)).max() <= RTOL
    assert normalised.abs().max() <= 1


def test_normalised_targets_are_finite_and_bounded_at_d784_k256():
    """``M = 256**784 = 2**6272``: the normalised targets are finite, bounded by 1, equal across
    backends and not all zero; the physical ones underflow to 0 far from the data and, where they
    are representable (near the data), equal ``exp(scale) * normalised``."""
    c = HammingCircuit(256, 784, 4)
    layer, z, w, x, y = edges(c, 24, 16, 16, 5, 3)
    # near the data: tails on samples of x at layer 0, heads one coordinate away
    z[-4:], w[-4:], layer[-4:] = x[:4], x[:4], 0
    w[-4:, 0] = (x[:4, 0] + 1) % 256
    cases = (
        (current_targets, (layer, z, w, x, y), lambda nrm: current_scale(c, layer, z, w, x, y, nrm)),
        (potential_targets, (layer, z, x, y), lambda nrm: potential_scale(c, layer, z, x, y, nrm)),
    )
    log_scales = (c.log_current_scale(layer, z, w), c.log_potential_scale(layer))
    for (fn, args, scale_fn), log_scale in zip(cases, log_scales):
        reference = fn(c, *args, backend="reference", normalize=True)
        out = fn(c, *args, backend="torch", normalize=True)
        assert torch.isfinite(out).all() and out.abs().max() <= 1 and out.abs().max() > 1e-3
        assert_close(out, reference, scale_fn(True), f"{fn.__name__} at D = 784")
        physical = fn(c, *args, backend="torch")
        assert torch.isfinite(physical).all() and (physical == 0).any()
        assert torch.isfinite(log_scale).all()
        normal = physical.abs() > 1e-290  # s = 1/(M d) underflows: phi = exp(scale) * normalised
        back = torch.exp(log_scale[normal]) * out[normal]
        assert normal.sum() >= 4 and ((back - physical[normal]).abs() / scale_fn(False)[normal]).max() <= RTOL


def test_stay_edges_and_end_layers():
    """Stay edges use ``g``, lateral ones ``G``; the first and last edge layers and vertex layers
    ``0`` and ``L`` are accepted; a tail equal to a sample dominates its layer-0 current."""
    c = HammingCircuit(2, 6, 3, R=2.0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 2, (5, 6), generator=g), torch.randint(0, 2, (4, 6), generator=g)
    z = x[:2].clone()
    w = z.clone()
    w[1, 2] = 1 - w[1, 2]
    layer = torch.tensor([0, 0])
    out = current_targets(c, layer, z, w, x, y, backend="reference")
    drop = ht.ldexp(*ht.reference_drop(c, layer, z, w, x, y))
    assert torch.allclose(out, torch.stack([c.g * drop[0], c.G * drop[1]]), rtol=1e-15, atol=0)
    assert (out > 0).all()
    last = current_targets(c, torch.tensor([2, 2]), z, w, x, y, backend="torch")
    assert torch.isfinite(last).all()
    phi = potential_targets(c, torch.tensor([0, 3]), z, x, y, backend="torch")
    assert torch.isfinite(phi).all()


def test_bad_inputs_name_the_argument():
    c = HammingCircuit(3, 4, 2)
    layer, z, w, x, y = edges(c, 6, 5, 5, 0, 1)
    far = z.clone()
    far[0, :2] = (far[0, :2] + 1) % 3
    with pytest.raises(ValueError, match="w must equal z or differ .* query 0 is at distance 2"):
        current_targets(c, layer, z, far, x, y)
    with pytest.raises(ValueError, match="w must equal z"):
        c.log_current_scale(layer, z, far)
    with pytest.raises(ValueError, match="layer must hold layer indices in \\[0, 1\\]"):
        current_targets(c, layer + 1, z, w, x, y)
    with pytest.raises(ValueError, match="x must hold states in \\[0, 3\\)"):
        potential_targets(c, layer, z, x + 1, y)
    with pytest.raises(ValueError, match="y must have shape"):
        potential_targets(c, layer, z, x, y[:, :2])
    with pytest.raises(TypeError, match="layer must have dtype torch.int64"):
        c.log_potential_scale(layer.int())
    with pytest.raises(ValueError, match="layer must hold layer indices in \\[0, 2\\]"):
        c.log_potential_scale(layer + 2)
    with pytest.raises(TypeError, match="circuit must be an ecd2g_fast.Circuit or HammingCircuit"):
        current_targets(object(), layer, z, w, x, y)
    with pytest.raises(ValueError, match="backend must be one of"):
        current_targets(c, layer, z, w, x, y, backend="fast")


def test_auto_backends_and_triton_without_interpreter(monkeypatch):
    from ecd2g_fast import backends

    assert backends.select("hamming_current_targets", "auto", torch.device("cpu")).name == "torch"
    assert backends.select("hamming_potential_targets", "auto", torch.device("cpu")).name == "torch"
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    knobs = None
    if importlib.util.find_spec("triton") is not None:
        import triton

        knobs = getattr(triton, "knobs", None)
    c = HammingCircuit(2, 4, 2)
    layer, z, w, x, y = edges(c, 4, 3, 3, 0, 1)
    # a knobs scope restores Triton's own state (an attribute set and reset would stay overridden)
    with knobs.runtime.scope() if knobs is not None else contextlib.nullcontext():
        if knobs is not None:
            knobs.runtime.interpret = False
        with pytest.raises(ValueError, match="backend 'triton' for hamming_current_targets is not available"):
            current_targets(c, layer, z, w, x, y, backend="triton")
