"""CurrentNet / PotentialNet: encodings, normalisation, the split first layer, the Field adapters."""

from __future__ import annotations

import pytest
import torch

import ecd2g_fast as E
import ecd2g_fast.models as models
from ecd2g_fast.models import CurrentNet, PotentialNet, StateEncoding
from ecd2g_fast.targets import current_targets

from .testing import assert_close_to_reference, devices, dirichlet_pair, discretised_gaussian, total_variation

pytestmark = pytest.mark.usefixtures("one_thread")


def seeded(cls, *args, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return cls(*args, **kwargs)


CIRCUITS = {
    "K7-D1-L3": lambda: E.Circuit(7, 1, 3),
    "K5-D2-L4": lambda: E.Circuit(5, 2, 4),
    "K3-D3-L1": lambda: E.Circuit(3, 3, 1),
}


class ExactCurrentNet(CurrentNet):
    """A CurrentNet whose network output is replaced by the exact normalised drop (test oracle)."""

    def __init__(self, circuit, p, q, **kwargs):
        super().__init__(circuit, **kwargs)
        self.exact = circuit.currents(p, q)  # (L, M, M) float64

    def _normalised(self, layer, z, w):
        c = self.circuit
        zi, wi = c.flatten(z), c.flatten(w)
        return self.exact[layer, zi, wi] / self.scale(layer, z, w)

    def forward(self, layer, z, w):
        return self._normalised(layer, z, w)

    def pairwise(self, layer, walkers, states, walker_is_tail, amp=False):
        B, S = walkers.shape[0], states.shape[0]
        lay = layer[:, None].expand(B, S).reshape(-1)
        D = walkers.shape[1]
        wk = walkers[:, None, :].expand(B, S, D).reshape(B * S, D)
        st = states[None, :, :].expand(B, S, D).reshape(B * S, D)
        z, w = (wk, st) if walker_is_tail else (st, wk)
        return self._normalised(lay, z, w).reshape(B, S)


def normalised_potentials(circuit: E.Circuit, layer: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """``(Q,)`` float32 ``(phi_l + l s) / tau_l``: physical potentials as PotentialNet's targets."""
    return ((phi + layer.double() * circuit.s) * torch.exp(-circuit.log_potential_scale(layer))).float()


class ExactPotentialNet(PotentialNet):
    """A PotentialNet whose (u, v) are the exact ``M p - 1``, ``M q - 1`` (test oracle)."""

    def __init__(self, circuit, p, q, **kwargs):
        super().__init__(circuit, **kwargs)
        M = circuit.num_states
        self.uv = torch.stack([M * p - 1, M * q - 1], dim=1)  # (M, 2) float64

    def densities(self, z):
        return self.uv[self.circuit.flatten(z)]


# ---------------------------------------------------------------------------- encodings
def test_scaled_encoding_spans_minus_one_to_one():
    enc = StateEncoding(5, 2, "scaled")
    z = torch.tensor([[0, 4], [2, 1]])
    out = enc(z)
    assert out.dtype == torch.float32 and out.shape == (2, 2)
    torch.testing.assert_close(out, torch.tensor([[-1.0, 1.0], [0.0, -0.5]]))


def test_onehot_encoding():
    enc = StateEncoding(3, 2, "onehot")
    out = enc(torch.tensor([[2, 0]]))
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0, 0.0]]))
    assert enc.features == 6


@pytest.mark.parametrize("bad", ["fourier", "", None])
def test_unknown_encoding_rejected(bad):
    with pytest.raises(ValueError, match="encoding"):
        CurrentNet(E.Circuit(4, 1, 2), encoding=bad)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"hidden": ()}, TypeError, "hidden"),
        ({"hidden": "128"}, TypeError, "hidden"),
        ({"hidden": (128, 0)}, ValueError, "hidden"),
        ({"hidden": (128.0,)}, TypeError, "hidden"),
    ],
    ids=["empty", "str", "zero", "float"],
)
@pytest.mark.parametrize("cls", [CurrentNet, PotentialNet])
def test_bad_hidden_rejected(cls, kwargs, error, match):
    with pytest.raises(error, match=match):
        cls(E.Circuit(4, 1, 2), **kwargs)


@pytest.mark.parametrize("cls", [CurrentNet, PotentialNet])
def test_circuit_type_checked(cls):
    with pytest.raises(TypeError, match="circuit"):
        cls("circuit")


# ---------------------------------------------------------------------------- CurrentNet
def all_edges(c: E.Circuit, device="cpu"):
    M, L = c.num_states, c.num_layers
    layer, z, w = torch.meshgrid(torch.arange(L), torch.arange(M), torch.arange(M), indexing="ij")
    layer, z, w = (t.reshape(-1).to(device) for t in (layer, z, w))
    return layer, c.unflatten(z), c.unflatten(w)


@pytest.mark.parametrize("encoding", ["scaled", "onehot"])
@pytest.mark.parametrize("name", list(CIRCUITS))
def test_current_net_paper_architecture(name, encoding):
    c = CIRCUITS[name]()
    net = seeded(CurrentNet, c, encoding=encoding)
    assert net.layer_embedding.num_embeddings == c.num_layers
    assert net.layer_embedding.embedding_dim == 2
    widths = [m.out_features for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [128, 128, 128, 1]
    assert all(isinstance(m, torch.nn.ReLU) for m in net.body[::2])
    layer, z, w = all_edges(c)
    out = net(layer, z, w)
    assert out.shape == layer.shape and out.dtype == torch.float32


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("name", list(CIRCUITS))
def test_pairwise_matches_forward(name, device, monkeypatch):
    """The split first layer (state part once per chunk, broadcast over walkers) is the MLP."""
    c = CIRCUITS[name]()
    net = seeded(CurrentNet, c, hidden=(32, 16)).to(device)
    M, L = c.num_states, c.num_layers
    g = torch.Generator().manual_seed(1)
    B = 11
    layer = torch.randint(L, (B,), generator=g).to(device)
    walkers = torch.randint(M, (B,), generator=g).to(device)
    states = torch.arange(M, device=device)
    zs, ss = c.unflatten(walkers), c.unflatten(states)
    # tiny blocks exercise the block loops over walkers and states
    monkeypatch.setattr(models, "PAIR_BLOCK_ROWS", 7)
    for tail in (True, False):
        got = net.pairwise(layer, zs, ss, walker_is_tail=tail)
        lay = layer[:, None].expand(B, M).reshape(-1)
        wk = zs[:, None].expand(B, M, -1).reshape(B * M, -1)
        st = ss[None].expand(B, M, -1).reshape(B * M, -1)
        want = net(lay, wk, st) if tail else net(lay, st, wk)
        assert_close_to_reference(got.reshape(-1), want.detach(), rtol=1e-5, scale=want.abs().max().detach())


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("name", list(CIRCUITS))
def test_current_field_matches_network(name, device):
    c = CIRCUITS[name]()
    net = seeded(CurrentNet, c).to(device)
    field = net.field(amp=False)
    assert field.device.type == torch.device(device).type
    M, L = c.num_states, c.num_layers
    states = torch.arange(M, device=device)
    start, stop = 1, M - 1  # an odd sub-range
    for l in range(L):
        layer = torch.full((M,), l, device=device)
        to_next = field.currents_to_next(layer, states, start, stop)
        assert to_next.dtype == torch.float64 and to_next.shape == (M, stop - start)
        z = c.unflatten(states[:, None].expand(M, stop - start).reshape(-1))
        w = c.unflatten(torch.arange(start, stop, device=device)[None].expand(M, -1).reshape(-1))
        lay = torch.full((z.shape[0],), l, device=device)
        want = net.currents(lay, z, w)
        assert_close_to_reference(to_next.reshape(-1), want, rtol=1e-5, scale=want.abs().max())
        # I_{l}(w, z) seen from (l+1, z)
        from_prev = field.currents_from_prev(layer + 1, states, start, stop)
        want = net.currents(lay, w, z)
        assert_close_to_reference(from_prev.reshape(-1), want, rtol=1e-5, scale=want.abs().max())
    # sink = clip(sum_w I_{L-1}(w, z), 0)
    layer = torch.full((M,), L, device=device)
    inflow = field.currents_from_prev(layer, states, 0, M).sum(1)
    sink = field.sink_currents(states)
    assert_close_to_reference(sink, inflow.clamp_min(0), rtol=1e-5, scale=inflow.abs().max())


def test_current_scale_is_conductance_times_layer_scale():
    c = E.Circuit(6, 1, 4)
    net = CurrentNet(c)
    layer = torch.tensor([0, 3, 3])
    z = torch.tensor([[1], [2], [2]])
    w = torch.tensor([[1], [2], [5]])
    M = c.num_states
    sigma = c.s + (c.a[:-1] + c.b[:-1] + c.a[1:] + c.b[1:]) / M
    want = torch.stack([c.g * sigma[0], c.g * sigma[3], c.G * sigma[3]])
    torch.testing.assert_close(net.scale(layer, z, w), want, rtol=1e-12, atol=0)
    torch.testing.assert_close(c.log_current_scale(layer, z, w), want.log(), rtol=1e-12, atol=0)
    # the normalised targets the network regresses, rescaled, are the physical ones
    x, y = torch.tensor([[1], [2], [2], [0]]), torch.tensor([[5], [1], [3]])
    targets = current_targets(c, layer, z, w, x, y)
    normalised = current_targets(c, layer, z, w, x, y, normalize=True)
    assert normalised.dtype == torch.float64
    torch.testing.assert_close(normalised * want, targets, rtol=1e-12, atol=0)


@pytest.mark.parametrize("K, D, L", [(50, 1, 10), (32, 2, 10), (64, 2, 10)], ids=["K50", "K32x32", "K64x64"])
def test_normalised_exact_targets_are_order_one(K, D, L):
    """The closed-form scales make smooth-pmf targets O(1) for the experiments' circuits.

    (They scale like ``max M q``: a target peaked on a few of many states gives larger values.)
    """
    c = E.Circuit(K, D, L)
    M = c.num_states
    grid = torch.stack(torch.meshgrid(*[torch.arange(K, dtype=torch.float64)] * D, indexing="ij"), -1)
    q = torch.exp(-0.5 * ((grid - (K - 1) / 2) / (K / 10)) ** 2).prod(-1).reshape(-1)
    q /= q.sum()
    p = torch.full((M,), 1.0 / M, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    Q = 4096
    layer = torch.randint(L, (Q,), generator=gen)
    zi = torch.randint(M, (Q,), generator=gen)
    wi = torch.where(torch.rand(Q, generator=gen) < 0.5, zi, torch.randint(M, (Q,), generator=gen))
    phi = c.potentials(p, q)
    z, w = c.unflatten(zi), c.unflatten(wi)
    currents = torch.where(zi == wi, c.g, c.G) * (phi[layer, zi] - phi[layer + 1, wi])
    y = (currents * torch.exp(-c.log_current_scale(layer, z, w))).abs()
    assert float(y.max()) < 20 and float(y.mean()) > 0.05
    layer = torch.randint(L + 1, (Q,), generator=gen)
    y = normalised_potentials(c, layer, phi[layer, zi]).abs()
    assert float(y.max()) < 50 and float(y.mean()) > 0.05


#: The circuits and pmf pairs of the exact-network tests.
EXACT_CASES = ["gauss-K50-L10", "dirichlet-K5-D2-L4"]


def exact_case(name: str) -> tuple[E.Circuit, torch.Tensor, torch.Tensor]:
    """``(circuit, p, q)`` of an :data:`EXACT_CASES` name."""
    if name == "gauss-K50-L10":
        return E.Circuit(50, 1, 10), torch.full((50,), 0.02, dtype=torch.float64), discretised_gaussian(50)
    return (E.Circuit(5, 2, 4), *dirichlet_pair(25, 3))


def output_tv(field, p: torch.Tensor, q: torch.Tensor) -> float:
    """Total variation between ``q`` and the exact output law of the walk from ``p``."""
    return total_variation(E.exact_output_distribution(field, p).pmf, q)


@pytest.mark.parametrize("name", EXACT_CASES)
def test_exact_current_net_field_reproduces_q(name):
    """With the exact normalised drop as network output, the adapter's currents, sink and walk are exact."""
    c, p, q = exact_case(name)
    net = ExactCurrentNet(c, p, q)
    field = net.field()
    M, L = c.num_states, c.num_layers
    states = torch.arange(M)
    exact = c.currents(p, q)
    table = torch.stack([field.currents_to_next(torch.full((M,), l), states, 0, M) for l in range(L)])
    assert_close_to_reference(table, exact, rtol=1e-12, scale=exact.abs().max())
    assert_close_to_reference(field.sink_currents(states), q, rtol=1e-12, scale=1.0)
    assert output_tv(field, p, q) < 1e-12


def test_current_sink_cache_follows_weights():
    c = E.Circuit(6, 1, 3)
    net = seeded(CurrentNet, c, hidden=(16,))
    field = net.field()
    states = torch.arange(6)
    first = field.sink_currents(states[:3]).clone()
    assert torch.equal(field.sink_currents(states[:3]), first)  # cached
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    net(torch.zeros(6, dtype=torch.int64), c.unflatten(states), c.unflatten(states)).sum().backward()
    opt.step()
    layer = torch.full((6,), c.num_layers)
    fresh = field.currents_from_prev(layer, states, 0, 6).sum(1).clamp_min(0)
    torch.testing.assert_close(field.sink_currents(states), fresh, rtol=1e-6, atol=1e-12)
    assert not torch.equal(field.sink_currents(states[:3]), first)


# ---------------------------------------------------------------------------- PotentialNet
@pytest.mark.parametrize("name", list(CIRCUITS))
def test_potential_net_structure(name):
    c = CIRCUITS[name]()
    net = seeded(PotentialNet, c)
    M, L = c.num_states, c.num_layers
    z = c.unflatten(torch.arange(M))
    uv = net.densities(z)
    assert uv.shape == (M, 2) and uv.dtype == torch.float32
    for l in range(L + 1):
        layer = torch.full((M,), l)
        want = net.alpha[l] * uv[:, 0] - net.beta[l] * uv[:, 1]
        torch.testing.assert_close(net(layer, z), want)
        # the physical potentials undo the normalisation of the targets
        phys = net.potentials(layer, z)
        torch.testing.assert_close(normalised_potentials(c, layer, phys), want.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(net.alpha + net.beta, torch.ones(L + 1))


@pytest.mark.parametrize("name", list(CIRCUITS))
def test_potential_table_centres_densities(name):
    c = CIRCUITS[name]()
    net = seeded(PotentialNet, c)
    field = net.field()
    M = c.num_states
    z = c.unflatten(torch.arange(M))
    table = field.potential_table()
    assert table.shape == (c.num_layers + 1, M) and table.dtype == torch.float64
    uv = net.densities(z).detach().double()
    uv = uv - uv.mean(0)
    # the table is eq. (12) for the pmfs (1 + u_c) / M, (1 + v_c) / M
    want = c.potential_table((1 + uv[:, 0]) / M, (1 + uv[:, 1]) / M)
    assert_close_to_reference(table, want, rtol=1e-12, scale=want.abs().max())


@pytest.mark.parametrize("name", EXACT_CASES)
def test_exact_potential_net_field_reproduces_q(name):
    c, p, q = exact_case(name)
    net = ExactPotentialNet(c, p, q)
    field = net.field()
    want = c.potentials(p, q)
    assert_close_to_reference(field.potential_table(), want, rtol=1e-12, scale=want.abs().max())
    # the normalised targets of the exact potentials are alpha u - beta v with the exact (u, v)
    M, L = c.num_states, c.num_layers
    z = c.unflatten(torch.arange(M))
    for l in range(L + 1):
        layer = torch.full((M,), l)
        y = normalised_potentials(c, layer, want[l])
        torch.testing.assert_close(y, net(layer, z).float(), rtol=1e-5, atol=1e-5)
    assert output_tv(field, p, q) < 1e-12


def test_potential_table_follows_weights():
    c = E.Circuit(6, 1, 3)
    net = seeded(PotentialNet, c, hidden=(16,))
    field = net.field()
    first = field.potential_table().clone()
    assert field.potential_table() is field.potential_table()  # cached
    with torch.no_grad():
        net.body[-1].bias.add_(torch.tensor([0.5, -0.25]))  # in place: bumps the version counter
    second = field.potential_table()
    # a constant shift of (u, v) is removed by the centring
    torch.testing.assert_close(second, first, rtol=1e-5, atol=1e-12)
    with torch.no_grad():
        net.input.weight.mul_(2.0)
    assert not torch.allclose(field.potential_table(), first)


@pytest.mark.parametrize("device", devices())
def test_current_field_amp(device):
    """The default field runs the hidden layers in bf16 on CUDA (float32 on CPU, where ``amp`` is
    ignored): close to float32 at bf16's precision, and still float64 currents."""
    c = E.Circuit(6, 2, 3)
    net = seeded(CurrentNet, c).to(device)
    M = c.num_states
    states = torch.arange(M, device=device)
    layer = torch.ones(M, dtype=torch.int64, device=device)
    exact = net.field(amp=False).currents_to_next(layer, states, 0, M)
    fast = net.field().currents_to_next(layer, states, 0, M)
    assert fast.dtype == torch.float64
    if device == "cpu":
        assert torch.equal(fast, exact)
        assert torch.equal(net.field(amp=True).currents_to_next(layer, states, 0, M), exact)
    else:
        assert not torch.equal(fast, exact)  # bf16 really ran
        assert_close_to_reference(fast, exact, rtol=3e-2, scale=exact.abs().max())
    with pytest.raises(TypeError, match="amp must be a bool or None"):
        net.field(amp="yes")


def test_first_layer_stays_float32_under_autocast():
    """bf16 cannot resolve neighbouring scaled coordinates of K = 256 states; the first layer must."""
    c = E.Circuit(256, 1, 2)
    net = seeded(CurrentNet, c, hidden=(8,))
    seen = {}
    net.input.register_forward_hook(lambda mod, args, out: seen.update(dtype=out.dtype))
    z = torch.tensor([[200], [201]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(torch.zeros(2, dtype=torch.int64), z, z)
        pnet_out = seeded(PotentialNet, c, hidden=(8,)).densities(z)
    assert seen["dtype"] == torch.float32
    assert out.dtype == torch.bfloat16 and pnet_out.dtype == torch.bfloat16


# ---------------------------------------------------------------------------- sampling the fields
@pytest.mark.parametrize("kind", ["current", "potential"])
def test_untrained_fields_plug_into_the_sampler(kind):
    c = E.Circuit(5, 2, 3)
    p, q = dirichlet_pair(25, 1)
    net = ExactCurrentNet(c, p, q) if kind == "current" else ExactPotentialNet(c, p, q)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randint(5, (64, 2), generator=gen)
    out, moves = E.sample(net.field(), x0, generator=gen, return_moves=True)
    assert out.shape == (64, 2) and out.dtype == torch.int64
    assert bool((moves >= c.num_layers).all())


def test_encoding_tables_are_bounded_before_allocation():
    from ecd2g_fast.models import StateEncoding

    with pytest.raises(ValueError, match="num_categories = 65536 needs a 32 GiB table.*encoding='scaled'"):
        StateEncoding(65536, 1, "onehot")
    with pytest.raises(ValueError, match="num_categories = 1099511627776"):
        StateEncoding(2**40, 1, "scaled")
