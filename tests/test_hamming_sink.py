"""The learned sink of Hamming log-field networks: where walkers leave the circuit at layer L."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ecd2g_fast as E
from ecd2g_fast.hamming import HammingCircuit, HammingMixer, HammingNet, HammingNetField
from ecd2g_fast.hamming.learning import (
    BregmanLogLoss,
    KernelQueries,
    WalkQueries,
    smoothed_data_pairs,
    smoothed_distance_laws,
)
from ecd2g_fast.hamming.log_field import DataLogField

from .testing import total_variation


def exact_posterior(field: DataLogField, log_q, z: torch.Tensor) -> torch.Tensor:
    """``log r(z) = log q(z) + log Ã_0(0) - S_L(z)``: ``(n,)`` float64 for ``(n, D)`` states."""
    L = field.circuit.num_layers
    layer = torch.full((z.shape[0],), L)
    return log_q(z) + field.tables.log_kernel[L, 0] - field.log_field(layer, z)


class ExactNet(nn.Module):
    """A 'network' whose ``f`` and sink logit are the exact ones of a pmf (float64)."""

    sink = "learned"

    def __init__(self, circuit: HammingCircuit, q: torch.Tensor) -> None:
        super().__init__()
        self.circuit, self.q = circuit, q
        self.exact = DataLogField(circuit, circuit.unflatten(torch.arange(circuit.num_states)), q)
        self.unused = nn.Parameter(torch.zeros(()))  # the field takes its device from a parameter

    def log_q(self, z):
        return self.q[self.circuit.flatten(z)].log()

    def forward(self, layer, z, sink_logit=False):
        f = self.exact.log_field(layer, z) - self.exact.tables.log_norm[layer]
        if not sink_logit:
            return f
        log_r = exact_posterior(self.exact, self.log_q, z)
        return f, log_r - torch.log(-torch.expm1(log_r))

    def outlet_values(self, layer, z):
        L, N, D = self.circuit.num_layers, self.circuit.num_neighbours, self.circuit.dim
        w = self.circuit.neighbour_vectors(z, 0, N).reshape(-1, D)
        up = (layer + 1).clamp_max(L).repeat_interleave(N)
        down = (layer - 1).clamp_min(0).repeat_interleave(N)
        return self(layer, z), self(up, w).view(-1, N), self(down, w).view(-1, N)


@pytest.mark.parametrize("K,D,L", [(2, 5, 3), (3, 3, 4)])
def test_the_exact_posterior_gives_the_exact_sink_and_output_law(K, D, L):
    """With the exact r the learned-sink formula r / Ã_0(0) is the exact field's Kirchhoff sink, and
    the walk's exact output law is q (a q with zeros included)."""
    c = HammingCircuit(K, D, L)
    g = torch.Generator().manual_seed(0)
    q = torch.rand(c.num_states, generator=g, dtype=torch.float64) ** 3
    q[::4] = 0.0
    q /= q.sum()
    net = ExactNet(c, q)
    learned, inflow = HammingNetField(net), HammingNetField(net, sink="inflow")
    assert learned.sink == "learned" and inflow.sink == "inflow"
    states = torch.arange(c.num_states)
    layer = torch.full_like(states, L)
    N = c.num_neighbours
    sink = learned.outlet_currents(layer, c.unflatten(states), "bidirectional")[:, 2 * N]
    kirchhoff = net.exact.outlet_currents(layer, c.unflatten(states), "bidirectional")[:, 2 * N]
    torch.testing.assert_close(sink, kirchhoff.clamp_min(0), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(learned.sink_currents(states), sink, rtol=1e-12, atol=0)
    below = learned.outlet_currents(torch.zeros_like(states), c.unflatten(states), "bidirectional")
    assert bool((below[:, 2 * N] == 0).all())  # no sink below layer L
    p = torch.full((c.num_states,), 1.0 / c.num_states, dtype=torch.float64)
    assert total_variation(E.exact_output_distribution(learned, p).pmf, q) < 1e-9


def test_sink_labels_average_to_the_exact_posterior():
    """Given a kernel query z of layer L, the label [z = anchor] is 1 with probability
    r(z) = q(z) Ã_0(0) / rho_L(z): the cross-entropy's minimiser is the exact sink. The posterior
    of another layer's kernel is seen as wrong."""
    c = HammingCircuit(2, 4, 3)
    L = c.num_layers
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 2, (6, 4), generator=g)
    data = torch.cat([data, data[:2]])  # repeats: an uneven empirical q
    field = DataLogField(c, data)
    q = torch.bincount(c.flatten(data), minlength=c.num_states).double() / data.shape[0]

    def log_q(z):
        return q[c.flatten(z)].log()

    n = 400_000
    z, anchor = smoothed_data_pairs(field.tables, torch.full((n,), L), data, 2, g)
    label = (z == anchor).all(1).double()
    index = c.flatten(z)
    counts = torch.bincount(index, minlength=c.num_states).double()
    mean = torch.bincount(index, weights=label, minlength=c.num_states) / counts.clamp_min(1)
    seen = counts > 1000
    states = c.unflatten(torch.arange(c.num_states))
    r = exact_posterior(field, log_q, states).exp()
    sd = (r * (1 - r) / counts.clamp_min(1)).sqrt()
    assert bool(((mean - r).abs() <= 5 * sd + 1e-12)[seen].all()), (mean[seen], r[seen])
    assert bool((r[seen] > 0).any()) and int(seen.sum()) > 8
    # the posterior of layer L-1's kernel is not what the labels average to
    wrong = (
        log_q(states) + field.tables.log_kernel[L - 1, 0] - field.log_field(torch.full((16,), L - 1), states)
    ).exp()
    assert bool(((mean - wrong).abs() > 5 * sd + 1e-12)[seen & (r > 0)].any())
    # the loss's sink terms: the cross-entropy at layer L only
    loss = BregmanLogLoss(c)
    layer = torch.tensor([L, L - 1, L])
    logit = torch.tensor([0.3, 0.3, -1.0], dtype=torch.float64)
    terms = loss.sink_terms(layer, z[:3], anchor[:3], logit)
    expected = nn.functional.binary_cross_entropy_with_logits(logit, label[:3], reduction="none")
    torch.testing.assert_close(terms, torch.where(layer == L, expected, 0.0))


def test_contrast_labels_are_minimised_by_the_exact_posterior():
    """The contrast of layer-L queries against their anchors, minimised over one free logit per
    state (the loss's own sink_terms), gives sigmoid(logit) = r(z) = q(z) Ã_0(0) / rho_L(z) where the
    queries are seen; and the BregmanLogLoss call feeds it the head's logits at the anchors."""
    c = HammingCircuit(2, 4, 3)
    L = c.num_layers
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 2, (6, 4), generator=g)
    data = torch.cat([data, data[:2]])
    field = DataLogField(c, data)
    q = torch.bincount(c.flatten(data), minlength=c.num_states).double() / data.shape[0]
    n = 200_000
    layer = torch.full((n,), L)
    z, anchor = smoothed_data_pairs(field.tables, layer, data, 2, g)
    loss = BregmanLogLoss(c, sink_labels="contrast")
    assert loss.log_stay == pytest.approx(float(smoothed_distance_laws(field.tables, 2)[L, 0].log()))
    clean = q > 0  # every other state is only ever a query (label 0): its logit falls without a bound
    free = torch.zeros(int(clean.sum()), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([free], max_iter=200, tolerance_grad=1e-12, line_search_fn="strong_wolfe")

    def objective():
        logit = torch.full((c.num_states,), -30.0, dtype=torch.float64).masked_scatter(clean, free)
        return loss.sink_terms(layer, z, anchor, logit[c.flatten(z)], logit[c.flatten(anchor)]).mean()

    def closure():
        optimiser.zero_grad()
        value = objective()
        value.backward()
        return value

    optimiser.step(closure)
    states = c.unflatten(torch.arange(c.num_states))
    r = exact_posterior(field, lambda s: q[c.flatten(s)].log(), states).exp()
    torch.testing.assert_close(torch.sigmoid(free.detach()), r[clean], rtol=0.02, atol=0)
    logit = torch.full((c.num_states,), -3.0, dtype=torch.float64, requires_grad=True)
    loss.sink_terms(layer, z, anchor, logit[c.flatten(z)], logit[c.flatten(anchor)]).sum().backward()
    assert bool((logit.grad[~clean] > 0).all()) and bool((~clean).any())  # pushed further down
    logit = logit.detach()
    # the posterior labels' minimiser is not this one's: their optimum is the per-state label mean
    # (tested above), and the contrast terms differ from the cross-entropy on [z = anchor]
    posterior = BregmanLogLoss(c).sink_terms(layer[:5], z[:5], anchor[:5], logit.detach()[c.flatten(z[:5])])
    contrast = loss.sink_terms(
        layer[:5], z[:5], anchor[:5], logit.detach()[c.flatten(z[:5])], logit.detach()[:5]
    )
    assert not torch.allclose(posterior, contrast)


def test_contrast_loss_reads_the_head_at_the_anchors_of_layer_L():
    """The loss with contrast labels evaluates the sink head at every layer-L query's anchor (one
    more network row each) and adds exactly those terms to the posterior-free loss."""
    c = HammingCircuit(2, 5, 3)
    L = c.num_layers
    torch.manual_seed(0)
    net = HammingNet(c, width=16, sink="learned")
    nn.init.normal_(net.sink_head.weight, std=0.5)
    data = torch.randint(0, 2, (32, 5), generator=torch.Generator().manual_seed(1))
    queries = KernelQueries(c, last_layer_fraction=0.5)(data, 64, torch.Generator().manual_seed(2))
    layer, z, anchor = queries[:3]
    last = layer == L
    assert 0 < int(last.sum()) < 64
    contrast, posterior = BregmanLogLoss(c, sink_labels="contrast"), BregmanLogLoss(c)
    with torch.no_grad():
        logit = net(layer, z, sink_logit=True)[1].double()
        clean = net(torch.full((int(last.sum()),), L), anchor[last], sink_logit=True)[1].double()
        difference = contrast(net, queries, None, data) - posterior(net, queries, None, data)
        expected = contrast.sink_terms(layer, z, anchor, logit, clean) - posterior.sink_terms(
            layer, z, anchor, logit
        )
    torch.testing.assert_close(difference, expected.sum(), rtol=1e-5, atol=1e-6)
    terms = contrast.sink_terms(layer, z, anchor, logit, clean)
    assert bool((terms[~last] == 0).all()) and bool((terms[last] > 0).all())
    with pytest.raises(ValueError, match="sink_labels"):
        BregmanLogLoss(c, sink_labels="anchor")


@pytest.mark.parametrize("network", [HammingNet, HammingMixer])
def test_sink_option_keeps_the_inflow_network_and_is_checked(network):
    c = HammingCircuit(2, 5, 3)
    small = {"width": 16} if network is HammingNet else {"width": 8, "token_hidden": 8, "channel_hidden": 8}
    torch.manual_seed(0)
    inflow = network(c, **small)
    torch.manual_seed(0)
    learned = network(c, **small, sink="learned")
    assert inflow.config()["sink"] == "inflow" and learned.config()["sink"] == "learned"
    # the sink head comes last: every other parameter is initialised as without it
    shared = learned.state_dict()
    for name, tensor in inflow.state_dict().items():
        assert torch.equal(shared.pop(name), tensor), name
    assert sorted(shared) == ["sink_head.bias", "sink_head.weight"]
    z = torch.randint(0, 2, (7, 5))
    layer = torch.full((7,), 3)
    with torch.no_grad():
        f, logit = learned(layer, z, sink_logit=True)
        torch.testing.assert_close(f, inflow(layer, z))
        assert bool((logit == 0).all())  # untrained: r = 1/2
        field = learned.eval().field()
        sink = field.outlet_currents(layer, z, "bidirectional")[:, -1]
        torch.testing.assert_close(
            sink, torch.full((7,), 0.5, dtype=torch.float64) / field.tables.log_kernel[3, 0].exp()
        )
        torch.testing.assert_close(
            HammingNetField(learned, sink="inflow").outlet_currents(layer, z, "bidirectional"),
            inflow.eval().field().outlet_currents(layer, z, "bidirectional"),
        )
    with pytest.raises(ValueError, match="sink"):
        network(c, **small, sink="outflow")
    with pytest.raises(ValueError, match="sink='learned'"):
        inflow(layer, z, sink_logit=True)
    with pytest.raises(ValueError, match="sink='learned' needs a network"):
        HammingNetField(inflow, sink="learned")
    with pytest.raises(ValueError, match="sink"):
        HammingNetField(learned, sink="data")


def test_a_learned_sink_needs_queries_it_can_learn_from():
    c = HammingCircuit(2, 5, 3)
    config = E.TrainConfig.recipe("default", model="hamming", model_kwargs={"sink": "learned", "width": 8})
    assert config.build_model(c).sink == "learned"
    for bad in ({"queries": "walk"}, {"queries": "data"}):
        with pytest.raises(ValueError, match="sink='learned' needs queries='kernel' or 'kernel-walk'"):
            config.replace(**bad).build_model(c)
    for good in ({"queries": "kernel-walk"}, {"query_kwargs": {"walk_fraction": 0.2}}):
        assert config.replace(**good).build_model(c).sink == "learned"
    assert config.replace(sink_labels="posterior").build_model(c).sink == "learned"
    # the labels are unused without a learned sink (as SGD's momentum is with Adam)
    assert config.replace(model_kwargs={"width": 8}).build_model(c).sink == "inflow"
    with pytest.raises(ValueError, match="sink_labels must be one of"):
        config.replace(sink_labels="anchor")
    net = config.build_model(c)
    with pytest.raises(ValueError, match="sink='learned' trains on kernel queries"):
        layer, z = WalkQueries(c)(torch.zeros(4, 5, dtype=torch.int64), 4, torch.Generator().manual_seed(0))
        BregmanLogLoss(c)(net, (layer, z), None, torch.zeros(4, 5, dtype=torch.int64))


@pytest.mark.parametrize("sink_labels", ["posterior", "contrast"])
def test_training_learns_the_sink_and_checkpoints_it(tmp_path, sink_labels):
    """300 steps on six data points at D = 6, with either labels: the learned r is closer to the
    exact posterior than the untrained 1/2 where the walk leaves, and the checkpoint keeps the head."""
    c = HammingCircuit(2, 6, 6)
    L = c.num_layers
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 2, (6, 6), generator=g)
    exact = DataLogField(c, data)
    q = torch.bincount(c.flatten(data), minlength=c.num_states).double() / data.shape[0]
    settings = dict(
        steps=300, batch_size=64, num_queries=256, progress=False, sink_labels=sink_labels,
        model_kwargs={"layer_encoding": "smooth", "sink": "learned", "width": 32, "depth": 2},
    )  # fmt: skip
    x = torch.randint(0, 2, (64, 6), generator=g)
    result = E.train(
        c, x, data[torch.randint(0, 6, (2000,), generator=g)], **settings, checkpoint_path=tmp_path / "ck.pt"
    )
    field = result.field
    assert field.sink == "learned"
    states = c.unflatten(torch.arange(c.num_states))
    r_exact = exact_posterior(exact, lambda z: q[c.flatten(z)].log(), states).exp()
    with torch.no_grad():
        r = field.learned_sink(states) * field.tables.log_kernel[L, 0].exp()
    weight = torch.exp(exact.log_field(torch.full((c.num_states,), L), states))  # rho_L: where the walk ends
    trained = float(((r - r_exact).abs() * weight).sum() / weight.sum())
    untrained = float(((0.5 - r_exact).abs() * weight).sum() / weight.sum())
    assert trained < 0.5 * untrained, (trained, untrained)
    reloaded = E.training.load_field(tmp_path / "ck.pt", "cpu")
    assert reloaded.sink == "learned"
    with torch.no_grad():
        torch.testing.assert_close(reloaded.learned_sink(states), field.learned_sink(states))


def test_last_layer_fraction_moves_that_share_of_the_queries_to_layer_L():
    from ecd2g_fast.hamming.learning import KernelQueries

    c = HammingCircuit(2, 6, 5)
    plain, moved = KernelQueries(c), KernelQueries(c, last_layer_fraction=0.25)
    expected = 0.75 * plain.layer_probabilities
    expected[-1] += 0.25
    torch.testing.assert_close(moved.layer_probabilities, expected, rtol=0, atol=1e-15)
    data = torch.randint(0, 2, (50, 6), generator=torch.Generator().manual_seed(0))
    layer = moved(data, 20_000, torch.Generator().manual_seed(1))[0]
    share = float((layer == c.num_layers).double().mean())
    assert abs(share - float(expected[-1])) < 5 * (share * (1 - share) / 20_000) ** 0.5
    with pytest.raises(ValueError, match="last_layer_fraction must be in"):
        KernelQueries(c, last_layer_fraction=1.0)


def test_walk_fraction_keeps_the_kernel_law_at_layer_L():
    """A learned sink's labels need the queries of layer L drawn from pi_L: with walk-occupancy
    distances mixed in below, the queries of layer L still follow the kernel's distance law, with
    weight 1."""
    c = HammingCircuit(2, 12, 4)
    data = torch.randint(0, 2, (6, 12), generator=torch.Generator().manual_seed(1))
    layer, z, anchor, _, _, weight = KernelQueries(c, walk_fraction=0.5)(
        data, 200_000, torch.Generator().manual_seed(0)
    )
    last = layer == c.num_layers
    assert bool((weight[last] == 1).all()) and bool((weight[~last] != 1).any())
    distance = (z[last] != anchor[last]).sum(1)
    observed = torch.bincount(distance, minlength=13).double() / distance.shape[0]
    expected = smoothed_distance_laws(DataLogField(c, data).tables, 2)[-1]
    assert float((observed - expected).abs().max()) < 0.01
